use std::process::ExitCode;

use clap::Parser;
use detector::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            // One line, no backtrace: this is read by admins and by scripts.
            eprintln!("detector: error: {err}");
            ExitCode::FAILURE
        }
    }
}
