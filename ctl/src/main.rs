//! `slipctl`: the operator's and CI's command line. Thin: parse, connect, run
//! the subcommand, map the error to its documented exit code (see `error::exit`).

#[macro_use]
mod output;
mod cli;
mod client;
mod commands;
mod context;
mod error;
mod values;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::from(error::exit::FAILED);
        }
    };
    match rt.block_on(commands::run(args)) {
        Ok(()) => ExitCode::from(error::exit::OK),
        Err(e) => {
            eprintln!("error: {}", output::escape(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}
