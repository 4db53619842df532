//! slipctl's command line: global options, the subcommands, and what several
//! share (`--wait`, strategy flags); each subcommand's arguments are in `args`.
//! Every argument has a help line; flag values are typed (see `values`).

mod args;

pub use args::*;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::EXIT_CODES_HELP;
use crate::output::Format;
use crate::values::{self, Amount};

const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(
    name = "slipctl",
    version = daemon::VERSION,
    about = "Publish releases, deploy them, promote them to production, and see the fleet",
    after_help = top_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// `slipctl --help`'s epilogue: output formats, exit codes, an example.
fn top_help() -> String {
    format!(
        "Output: tables for people; -o json (or --json) prints one JSON document on stdout,\n\
with times in RFC 3339, for every command (progress then goes to stderr).\n\n\
{EXIT_CODES_HELP}\n\n\
Example:\n  export SLIPWAY_CONTROLLER=https://127.0.0.1:7400 SLIPWAY_CA_CERT=ca.pem SLIPWAY_TOKEN=swt_…\n  \
slipctl publish ./build --app web --version 1.4.2\n  slipctl deploy web 1.4.2 --env preprod\n  \
slipctl promote web --from preprod --to prod\n  slipctl status"
    )
}

#[derive(Args, Debug)]
pub struct Global {
    /// Named settings to use (`slipctl config`); default: the current context.
    #[arg(long, global = true, env = "SLIPWAY_CONTEXT", help_heading = GLOBAL)]
    pub context: Option<String>,
    /// Controller URL (default: the context's, else https://127.0.0.1:7400).
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_CONTROLLER",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub controller: Option<String>,
    /// The controller's CA certificate (its DATA_DIR/pki/ca.pem), for https.
    #[arg(long, global = true, env = "SLIPWAY_CA_CERT", hide_env_values = true, help_heading = GLOBAL)]
    pub ca_cert: Option<PathBuf>,
    /// File holding the API token (`$SLIPWAY_TOKEN` wins when set).
    #[arg(long, global = true, env = "SLIPWAY_TOKEN_FILE", hide_env_values = true, help_heading = GLOBAL)]
    pub token_file: Option<PathBuf>,
    /// Tenant to act on (default: the context's, else the API token's).
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_TENANT",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub tenant: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table,
        help_heading = GLOBAL
    )]
    pub output: Format,
    /// Same as `-o json`.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
}

impl Global {
    pub fn format(&self) -> Format {
        if self.json { Format::Json } else { self.output }
    }

    /// The global options as given, before a context fills the rest.
    pub fn given(&self) -> crate::context::Given {
        crate::context::Given {
            context: self.context.clone(),
            controller: self.controller.clone(),
            ca_cert: self.ca_cert.clone(),
            token_file: self.token_file.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

/// `--wait`: follow the change's rollout live until it ends, for CI.
#[derive(Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Follow the rollout until it ends; exit 6 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (exit 6).
    #[arg(long, value_name = "SECS", default_value_t = 1800, requires = "wait")]
    pub timeout: u64,
}

/// How the change reaches the environment's hosts; unset: the environment's strategy.
#[derive(Args, Debug, Clone, Default)]
pub struct StrategyArgs {
    /// Hosts changed first, alone; any failure there halts the rollout.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Hosts per batch after the canary: N, or N% of the environment's hosts.
    #[arg(long, value_name = "N|N%", value_parser = values::batch)]
    pub batch: Option<Amount>,
    /// Seconds a batch's hosts have to report healthy; later counts as failed.
    #[arg(long, value_name = "SECS")]
    pub batch_timeout: Option<u32>,
    /// Seconds to wait between batches.
    #[arg(long, value_name = "SECS")]
    pub pause: Option<u32>,
    /// Failed hosts tolerated before the rollout halts: N or N%.
    #[arg(long, value_name = "N|N%", value_parser = values::max_failures)]
    pub max_failures: Option<Amount>,
    /// On halt, put the previous release back on the hosts already changed.
    #[arg(long, value_name = "BOOL")]
    pub auto_revert: Option<bool>,
    /// Hosts offline in their step: fail them, wait for them (default), or skip them.
    #[arg(long, value_enum)]
    pub offline: Option<values::Offline>,
}

impl StrategyArgs {
    /// The strategy to send; None when no flag was given.
    pub fn to_proto(&self) -> Option<proto::v1::Strategy> {
        let s = proto::v1::Strategy {
            canary: self.canary,
            batch: self.batch.map(|a| a.to_string()).unwrap_or_default(),
            batch_timeout_secs: self.batch_timeout,
            pause_secs: self.pause,
            max_failures: self.max_failures.map(|a| a.to_string()).unwrap_or_default(),
            auto_revert: self.auto_revert,
            offline: self.offline.map_or(0, |o| o.to_proto() as i32),
        };
        (s != proto::v1::Strategy::default()).then_some(s)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack DIR deterministically, upload it once, and register it as APP@VERSION.
    #[command(
        after_help = "Example:\n  slipctl publish ./build --app web --version 1.4.2\n  slipctl publish ./build --app web --version 1.4.2 -o json | jq -r .release_digest\n\n\
DIR must hold slipway.toml. When DIR is in a git checkout, its commit is recorded and a dirty tree is refused unless --allow-dirty."
    )]
    Publish(PublishArgs),
    /// Set the release APP should run in an environment.
    #[command(after_help = "Example:\n  slipctl deploy web 1.4.2 --env preprod --wait")]
    Deploy(DeployArgs),
    /// Copy the exact release (same digest) one environment runs to another.
    #[command(
        after_help = "Example:\n  slipctl promote web --from preprod --to prod --wait\n\n\
Refused until the release has run healthy on every host of --from for the soak time of --to,\n\
and while a host of either environment carries unacknowledged drift."
    )]
    Promote(PromoteArgs),
    /// Go back to the previously desired release, or to --to VERSION.
    #[command(
        after_help = "Example:\n  slipctl rollback web --env prod\n  slipctl rollback web --env prod --to 1.4.1"
    )]
    Rollback(RollbackArgs),
    /// Roll the current release out again (new generation, canary and batches):
    /// hosts that refused it try once more, healthy ones just confirm it.
    #[command(after_help = "Example:\n  slipctl retry web --env preprod")]
    Retry(RetryArgs),
    /// Approve the pending migrations a host found in the release APP desires
    /// in ENV and roll it out again: the hosts of its first step apply them
    /// before their flip.
    #[command(after_help = "Example:\n  slipctl migrate web --env prod --wait\n\n\
In an environment whose migrations policy is manual (production's default, see\n\
`slipctl envs`), hosts refuse a release with pending migrations before anything stops,\n\
and the rollout waits, naming them; only that release is approved (refused when no\n\
rollout waits). Production needs the promoter role.")]
    Migrate(RetryArgs),
    /// List the published releases of APP, newest first.
    #[command(after_help = "Example:\n  slipctl releases web")]
    Releases(ReleasesArgs),
    /// The fleet: per environment and app, how many hosts run the desired
    /// release, are updating, failed, drifted or offline; --hosts for each host.
    #[command(
        after_help = "Example:\n  slipctl status --env prod\n  slipctl status --hosts --app web\n  slipctl status -o json | jq '.hosts[] | select(.status != \"ok\")'"
    )]
    Status(StatusArgs),
    /// Follow, pause, resume or abort the rollout of APP in an environment.
    #[command(
        after_help = "Example:\n  slipctl rollout status web --env prod --wait\n  slipctl rollout pause web --env prod\n  slipctl rollout abort web --env prod"
    )]
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Apps per environment: their label selector and the hosts it places them on.
    #[command(
        after_help = "Example:\n  slipctl apps --env prod\n  slipctl apps place web --env prod --selector role=web\n\n\
Without a selector, every host whose agent config lists the app runs it. With one, only\n\
matching hosts get its releases; matching hosts whose agent lacks the app are listed."
    )]
    Apps(AppsArgs),
    /// Hand-made changes to running releases.
    #[command(after_help = "Example:\n  slipctl drift ack web --env prod --host web-3")]
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
    },
    /// Who changed what, when, from where (the audit log).
    #[command(after_help = "Example:\n  slipctl history web --limit 20")]
    History(HistoryArgs),
    /// An app's output on the hosts that run it, each line named by its host.
    #[command(
        after_help = "Example:\n  slipctl logs web --env prod -n 50\n  slipctl logs web --env prod --host web-1 --process worker -f\n  slipctl logs web --env prod --since 10m --grep 'ERROR|panic'\n\n\
Lines come through each host's agent session: env-file values are masked, control\n\
characters escaped, lines past 8 KiB cut, and past 1000 lines a second per host the\n\
rest is dropped (a line says how many)."
    )]
    Logs(LogsArgs),
    /// The tenant's environments, their soak and rollout strategy; change one.
    #[command(
        after_help = "Example:\n  slipctl envs\n  slipctl envs set prod --soak 3600 --canary 1 --batch 25% --pause 60"
    )]
    Envs {
        #[command(subcommand)]
        command: Option<EnvsCommand>,
    },
    /// Hosts of the tenant; add one (prints its join token) or revoke one.
    #[command(
        after_help = "Example:\n  slipctl hosts --env prod\n  slipctl hosts add web-1 --env prod\n  slipctl hosts revoke web-1"
    )]
    Hosts(HostsArgs),
    /// API tokens of the tenant (admin).
    #[command(
        after_help = "Example:\n  slipctl tokens create ci --role publisher --role deployer\n  slipctl tokens list\n  slipctl tokens revoke ci"
    )]
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Tenants (operators: admins of tenant "default").
    #[command(
        after_help = "Example:\n  slipctl tenants add acme   # prints acme's first admin token"
    )]
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Which tenant, token and roles this slipctl acts as.
    #[command(after_help = "Example:\n  slipctl whoami")]
    Whoami,
    /// Publisher signing keys.
    #[command(after_help = "Example:\n  slipctl keys generate --out release.key")]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Contexts: named controller, CA certificate, token file and tenant.
    #[command(
        after_help = "Example:\n  slipctl config set-context prod --controller https://ctl.example:7400 --ca-cert ~/prod-ca.pem --token-file ~/.slipway/prod.token\n  slipctl config use-context prod\n  slipctl config get-contexts\n  SLIPWAY_CONTEXT=preprod slipctl status\n\n\
Kept in ~/.config/slipway/config.toml ($XDG_CONFIG_HOME, or $SLIPWAY_CONFIG for the file).\n\
A flag or its variable wins over the context; paths are stored absolute."
    )]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Shell completions for slipctl, on stdout.
    #[command(
        after_help = "Example:\n  slipctl completions bash > /etc/bash_completion.d/slipctl\n  slipctl completions zsh > \"${fpath[1]}/_slipctl\"\n  slipctl completions fish > ~/.config/fish/completions/slipctl.fish"
    )]
    Completions {
        /// The shell to complete for.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// The man page (roff), on stdout: what the package installs.
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Create or change context NAME from the global options given with it
    /// (--controller, --ca-cert, --token-file, --tenant).
    #[command(
        after_help = "Example:\n  slipctl config set-context prod --controller https://ctl.example:7400 --ca-cert prod-ca.pem --token-file prod.token"
    )]
    SetContext {
        /// Name of the context.
        name: String,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make NAME the context every command uses by default.
    #[command(after_help = "Example:\n  slipctl config use-context prod")]
    UseContext {
        /// Name of the context.
        name: String,
    },
    /// List the contexts; the current one is marked.
    #[command(after_help = "Example:\n  slipctl config get-contexts")]
    GetContexts,
    /// Print the current context's name.
    #[command(after_help = "Example:\n  slipctl config current-context")]
    CurrentContext,
    /// Remove context NAME.
    #[command(after_help = "Example:\n  slipctl config delete-context old")]
    DeleteContext {
        /// Name of the context.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_exit_code_table_is_in_the_top_help() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(EXIT_CODES_HELP), "{help}");
    }

    /// Every argument of every subcommand explains itself.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.get_help().is_none() && id != "help" && id != "version" {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "slipctl", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
