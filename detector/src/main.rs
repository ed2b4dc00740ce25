use std::process::ExitCode;

use clap::Parser;
use detector::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version go to stdout as clap prints them.
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("detector: error: {}", one_line(&err.to_string()));
            return ExitCode::from(2);
        }
    };
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            // One line, no backtrace: this is read by admins and by scripts.
            eprintln!("detector: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message up to its first blank line (the part naming the problem), on one line,
/// without its "error: " prefix and the "For more information" footer.
fn one_line(rendered: &str) -> String {
    let text: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let joined = text.join(" ");
    joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string()
}
