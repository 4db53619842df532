//! `slipctl`: the operator's and CI's command line. Thin: parse, dispatch, map the
//! error to a documented exit code (0 ok, 1 operation failed, 2 usage,
//! 3 controller unreachable).

/// `println!` that ends slipctl quietly when its reader goes away
/// (`slipctl history | head`) instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod admin;
mod cli;
mod client;
mod commands;
mod error;
mod publish;
mod rollout;
mod status;

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
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
