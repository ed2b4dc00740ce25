//! `detector generate`: writes the man pages and shell completions (used by packaging).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Error;
use crate::cli::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write into (created if missing): man/*.1 and completions/*.
    #[arg(long, default_value = "target/dist")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> crate::Result<ExitCode> {
    let man_dir = args.out.join("man");
    let completion_dir = args.out.join("completions");
    for dir in [&man_dir, &completion_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let cmd = Cli::command();
    // One page for `detector` and one per subcommand (`detector-ban.1`, ...), as git does.
    clap_mangen::generate_to(cmd.clone(), &man_dir).map_err(|e| Error::io(&man_dir, e))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "detector", &completion_dir)
            .map_err(|e| Error::io(&completion_dir, e))?;
    }
    println!(
        "wrote {} and {}",
        man_dir.display(),
        completion_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
