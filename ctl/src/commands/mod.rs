//! One module per subcommand, siblings: each exposes `run(args, &mut Clients,
//! Format)`. This file only connects and hands the parsed command to its module.

mod apps;
mod change;
mod config;
mod declare;
mod drift;
mod envs;
mod history;
mod hosts;
mod keys;
mod logs;
mod publish;
mod releases;
mod rollout;
mod status;
mod tenants;
mod tokens;
mod whoami;

use crate::cli::{Cli, Command};
use crate::client::connect;
use crate::error::Result;

pub async fn run(cli: Cli) -> Result<()> {
    let fmt = cli.global.format();
    // Local: no controller needed.
    match cli.command {
        Command::Keys { command } => return keys::run(command, fmt),
        Command::Completions { shell } => {
            let doc = match shell.as_str() {
                "zsh" => daemon::docs::Doc::Zsh,
                "fish" => daemon::docs::Doc::Fish,
                _ => daemon::docs::Doc::Bash,
            };
            return print_doc(doc);
        }
        Command::Man => return print_doc(daemon::docs::Doc::Man),
        Command::Config { command } => return config::run(command, &cli.global, fmt),
        _ => {}
    }
    let c = &mut connect(&cli.global).await?;
    match cli.command {
        Command::Publish(a) => publish::run(a, c, fmt).await,
        Command::Deploy(a) => change::deploy(a, c, fmt).await,
        Command::Promote(a) => change::promote(a, c, fmt).await,
        Command::Rollback(a) => change::rollback(a, c, fmt).await,
        Command::Retry(a) => change::retry(a, c, fmt).await,
        Command::Migrate(a) => change::migrate(a, c, fmt).await,
        Command::Releases(a) => releases::run(a, c, fmt).await,
        Command::Status(a) => status::run(a, c, fmt).await,
        Command::Rollout { command } => rollout::run(command, c, fmt).await,
        Command::Apps(a) => apps::run(a, c, fmt).await,
        Command::Drift { command } => drift::run(command, c, fmt).await,
        Command::History(a) => history::run(a, c, fmt).await,
        Command::Logs(a) => logs::run(a, c, fmt).await,
        Command::Envs { command } => envs::run(command, c, fmt).await,
        Command::Hosts(a) => hosts::run(a, c, fmt).await,
        Command::Tokens { command } => tokens::run(command, c, fmt).await,
        Command::Tenants { command } => tenants::run(command, c, fmt).await,
        Command::Whoami => whoami::run(c, fmt).await,
        Command::Keys { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Config { .. } => Ok(()),
    }
}

fn print_doc(doc: daemon::docs::Doc) -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    daemon::docs::print(cmd, doc, 1)
        .map_err(|e| crate::error::CtlError::Failed(format!("write: {e}")))
}
