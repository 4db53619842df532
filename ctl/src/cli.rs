//! slipctl's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "slipctl",
    version,
    about = "Publish releases, deploy them, promote them to production, and see the fleet",
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 controller unreachable.\n\n\
Example:\n  export SLIPWAY_CONTROLLER=http://127.0.0.1:7400\n  slipctl publish ./build --app web --version 1.4.2\n  slipctl deploy web 1.4.2 --env preprod\n  slipctl promote web --from preprod --to prod\n  slipctl status"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Controller URL.
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_CONTROLLER",
        default_value = "http://127.0.0.1:7400"
    )]
    pub controller: String,
    /// Tenant to act on.
    #[arg(long, global = true, env = "SLIPWAY_TENANT", default_value = "default")]
    pub tenant: String,
}

/// `--wait`: follow the change until every connected host of the environment
/// runs it healthy (exit 0) or refused it (exit 1), for CI.
#[derive(Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Wait until connected hosts report the release healthy or rolled back.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300, requires = "wait")]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack DIR deterministically, upload it once, and register it as APP@VERSION.
    #[command(
        after_help = "Example:\n  slipctl publish ./build --app web --version 1.4.2\n\n\
DIR must hold slipway.toml. When DIR is in a git checkout, its commit is recorded and a dirty tree is refused unless --allow-dirty."
    )]
    Publish {
        /// Directory to release (its slipway.toml describes how it runs).
        dir: PathBuf,
        #[arg(long)]
        app: String,
        #[arg(long)]
        version: String,
        /// Publish even though the git checkout has uncommitted changes (no commit is recorded then).
        #[arg(long)]
        allow_dirty: bool,
    },
    /// Set the release APP should run in an environment.
    #[command(after_help = "Example:\n  slipctl deploy web 1.4.2 --env preprod --wait")]
    Deploy {
        app: String,
        version: String,
        #[arg(long)]
        env: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Copy the exact release (same digest) one environment runs to another.
    #[command(after_help = "Example:\n  slipctl promote web --from preprod --to prod")]
    Promote {
        app: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Go back to the previously desired release, or to --to VERSION.
    #[command(
        after_help = "Example:\n  slipctl rollback web --env prod\n  slipctl rollback web --env prod --to 1.4.1"
    )]
    Rollback {
        app: String,
        #[arg(long)]
        env: String,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Ask hosts that refused the current release to try it again.
    #[command(after_help = "Example:\n  slipctl retry web --env preprod")]
    Retry {
        app: String,
        #[arg(long)]
        env: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// List the published releases of APP, newest first.
    #[command(after_help = "Example:\n  slipctl releases web")]
    Releases {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Fleet table: what every host should run, runs, and how it is doing.
    #[command(
        after_help = "Example:\n  slipctl status --env prod\n  slipctl status --json | jq '.[] | select(.health != \"healthy\")'"
    )]
    Status {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Who changed what, when, from where (the audit log).
    #[command(after_help = "Example:\n  slipctl history web")]
    History {
        app: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// List the tenant's environments.
    #[command(after_help = "Example:\n  slipctl envs")]
    Envs,
}
