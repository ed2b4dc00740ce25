//! `detector detach` (not implemented yet).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::Result<ExitCode> {
    Err(crate::Error::Usage("`detector detach` is not implemented yet".into()))
}
