//! The arguments of each subcommand, one struct or enum per command line
//! shape, every field with its help line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{StrategyArgs, Wait};
use crate::values::{self, Criticality, Label, Role};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Directory to release (its slipway.toml describes how it runs).
    pub dir: PathBuf,
    /// App the release belongs to.
    #[arg(long)]
    pub app: String,
    /// Version to publish it as; versions are immutable.
    #[arg(long)]
    pub version: String,
    /// Publish even though the git checkout has uncommitted changes (no commit is recorded then).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Sign the release with this publisher key (from `slipctl keys generate`).
    #[arg(long, value_name = "KEY_FILE")]
    pub sign: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// App to deploy.
    pub app: String,
    /// Published version to run.
    pub version: String,
    /// Environment to deploy to.
    #[arg(long)]
    pub env: String,
    /// Authorize an older release than hosts run, signed with this publisher key
    /// (one use, from what the environment runs now, valid for an hour).
    #[arg(long, value_name = "KEY_FILE")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub wait: Wait,
    /// Print the plan the controller would run (canary, batches, hosts held,
    /// migrations policy) after every check; change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// App to promote.
    pub app: String,
    /// Environment whose release is copied.
    #[arg(long)]
    pub from: String,
    /// Environment that gets it.
    #[arg(long)]
    pub to: String,
    /// Promote despite the soak and drift gates (promoter role; audited).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub wait: Wait,
    /// Print the plan the controller would run (canary, batches, hosts held,
    /// migrations policy) after every check; change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// App to roll back.
    pub app: String,
    /// Environment to roll back.
    #[arg(long)]
    pub env: String,
    /// Version to go back to (default: the previously desired one).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Sign the rollback with this publisher key: hosts that enforce release
    /// signatures refuse an older release without it. It allows this one rollback,
    /// from what the environment runs now, within the hour. Needs --to.
    #[arg(long, value_name = "KEY_FILE", requires = "to")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub wait: Wait,
    /// Print the plan the controller would run (canary, batches, hosts held,
    /// migrations policy) after every check; change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    /// App whose current release is rolled out again.
    pub app: String,
    /// Environment to retry in.
    #[arg(long)]
    pub env: String,
    #[command(flatten)]
    pub wait: Wait,
    /// Print the plan the controller would run (canary, batches, hosts held,
    /// migrations policy) after every check; change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    pub command: Option<ReleasesCommand>,
    /// App whose releases are listed.
    #[arg(required = true)]
    pub app: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ReleasesCommand {
    /// List the published releases of APP, newest first (yanked ones marked).
    #[command(after_help = "Example:\n  slipctl releases list web")]
    List {
        /// App whose releases are listed.
        app: String,
    },
    /// Withdraw a release (admin role; audited).
    ///
    /// It stays listed, marked yanked, is never deployed, promoted or rolled
    /// back to, and does not count for the next release counter (the way out of
    /// a counter published too high). Refused while an environment desires it.
    #[command(
        after_help = "Example:\n  slipctl releases yank web 9.9.9 --reason \"counter published by mistake\""
    )]
    Yank {
        /// App of the release.
        app: String,
        /// Version to yank.
        version: String,
        /// Why (one line, kept with the release and in the audit log).
        #[arg(long, value_parser = values::text)]
        reason: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// One row per host and app.
    #[arg(long)]
    pub hosts: bool,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only events of this app (default: all).
    pub app: Option<String>,
    /// At most this many events, newest first (fetched in pages).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The app.
    pub app: String,
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// Only this host (default: every connected host that runs the app).
    #[arg(long)]
    pub host: Option<String>,
    /// Only this process.
    #[arg(long)]
    pub process: Option<String>,
    /// Lines per process and host (at most 10000).
    #[arg(short = 'n', long = "lines", default_value_t = 200)]
    pub lines: u32,
    /// Keep printing what the app writes, until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written in this last while (30s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only lines matching this regular expression.
    #[arg(long, value_name = "RE")]
    pub grep: Option<String>,
}

#[derive(Args, Debug)]
pub struct AppsArgs {
    #[command(subcommand)]
    pub command: Option<AppsCommand>,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
}

#[derive(Args, Debug)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub command: Option<HostsCommand>,
    /// Only hosts of this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Only hosts with this label (repeat: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = values::label)]
    pub labels: Vec<Label>,
    /// Only hosts with this purpose.
    #[arg(long, value_parser = values::text)]
    pub purpose: Option<String>,
    /// Only hosts of this criticality.
    #[arg(long, value_enum)]
    pub criticality: Option<Criticality>,
    /// Only hosts that are offline (no session, or missed heartbeats).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Subcommand, Debug)]
pub enum HostsCommand {
    /// Register HOST in an environment and print its one-time join token.
    #[command(
        after_help = "Example:\n  slipctl hosts add web-1 --env prod --purpose web --criticality high --label zone=fsn1 --ttl 900"
    )]
    Add {
        /// Name of the new host (what its agent config calls it).
        host: String,
        /// Environment the host belongs to.
        #[arg(long)]
        env: String,
        /// Seconds the join token stays valid (default: the controller's, 1 h).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
        #[command(flatten)]
        inventory: HostInventory,
    },
    /// Change a host's purpose, criticality or labels.
    #[command(
        after_help = "Example:\n  slipctl hosts set web-1 --label canary=true --unlabel zone"
    )]
    Set {
        /// Host to change.
        host: String,
        #[command(flatten)]
        inventory: HostInventory,
        /// Remove this label (repeat).
        #[arg(long = "unlabel", value_name = "KEY", value_parser = values::label_key)]
        unlabel: Vec<String>,
    },
    /// Cut a host off: its certificate stops working on its next call.
    #[command(after_help = "Example:\n  slipctl hosts revoke web-1")]
    Revoke {
        /// Host to revoke.
        host: String,
    },
}

/// What the inventory says about a host.
#[derive(Args, Debug, Clone, Default)]
pub struct HostInventory {
    /// What the host is for (free text: web, db, worker…).
    #[arg(long, value_parser = values::text)]
    pub purpose: Option<String>,
    /// How much the host matters; canaries are picked among the least critical.
    #[arg(long, value_enum)]
    pub criticality: Option<Criticality>,
    /// KEY=VALUE (repeat); `canary=true` puts the host first in rollouts.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = values::label)]
    pub labels: Vec<Label>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show the latest rollout host by host, following it live until it ends.
    #[command(after_help = "Example:\n  slipctl rollout status web --env prod --wait")]
    Status {
        /// App whose rollout is shown.
        app: String,
        /// Environment of the rollout.
        #[arg(long)]
        env: String,
        /// Print the current state once instead of following.
        #[arg(long, conflicts_with = "wait")]
        once: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop admitting new batches (hosts already changed stay as they are; a
    /// failure among them still halts and reverts).
    #[command(after_help = "Example:\n  slipctl rollout pause web --env prod")]
    Pause(RolloutTarget),
    /// Continue a paused rollout.
    #[command(after_help = "Example:\n  slipctl rollout resume web --env prod")]
    Resume(RolloutTarget),
    /// Stop the rollout and put the previous release back on the hosts it changed.
    #[command(after_help = "Example:\n  slipctl rollout abort web --env prod\n\n\
Hosts that enforce publisher signatures refuse to go back to an older release without a\n\
signed rollback: use `slipctl rollback web --env prod --to VERSION --sign KEY` for them.")]
    Abort(RolloutTarget),
}

/// The rollout a pause, resume or abort acts on.
#[derive(Args, Debug)]
pub struct RolloutTarget {
    /// App whose rollout it is.
    pub app: String,
    /// Environment of the rollout.
    #[arg(long)]
    pub env: String,
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Declare APP in an environment: every host there (that the app's
    /// selector places it on, and whose accept_apps names it) runs it.
    #[command(
        after_help = "Examples:\n  slipctl apps add web --env prod --port 8080 --env-file /etc/web/env --user web\n  slipctl apps add web --env prod --host web-3 --port 9090   # one host's override\n\nWaits until every connected host took the settings and, when the environment\nhas a desired release of APP, runs it healthy. A host that cannot run them (an\nenv file or user missing there, a port another app holds) refuses them: the\nchange is then undone everywhere and slipctl exits 1 naming the host."
    )]
    Add {
        /// App to declare.
        app: String,
        /// Environment to declare it in.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        target: AppTarget,
        #[command(flatten)]
        settings: AppSettingsArgs,
    },
    /// Change some of APP's declared settings (the others stay).
    #[command(
        after_help = "Examples:\n  slipctl apps set web --env prod --keep 10\n  slipctl apps set web --env prod --unset user"
    )]
    Set {
        /// App to change.
        app: String,
        /// Environment it is declared in.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        target: AppTarget,
        #[command(flatten)]
        settings: AppSettingsArgs,
        /// Remove a setting (the host's default applies): port, backend,
        /// env-file, user, keep, activation, drain-timeout, stop-grace.
        #[arg(long = "unset", value_name = "KEY", value_parser = values::setting_key())]
        unset: Vec<String>,
    },
    /// Remove APP from an environment: every host stops it (with --host:
    /// remove only that host's override).
    #[command(after_help = "Example:\n  slipctl apps remove web --env preprod")]
    Remove {
        /// App to remove.
        app: String,
        /// Environment it is declared in.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        target: AppTarget,
    },
    /// APP's declared settings and, host by host, whether each took them.
    #[command(after_help = "Example:\n  slipctl apps show web --env prod")]
    Show {
        /// App to show.
        app: String,
        /// Environment it is declared in.
        #[arg(long)]
        env: String,
    },
    /// Place APP in an environment on the hosts whose labels match (none: every host).
    #[command(after_help = "Example:\n  slipctl apps place web --env prod --selector role=web")]
    Place {
        /// App to place.
        app: String,
        /// Environment to place it in.
        #[arg(long)]
        env: String,
        /// KEY=VALUE (repeat: all must match).
        #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = values::label)]
        selector: Vec<Label>,
    },
}

/// Which hosts an `apps` change is for, and whether slipctl waits for them.
#[derive(Args, Debug, Clone)]
pub struct AppTarget {
    /// Only this host: its override of the environment's settings.
    #[arg(long)]
    pub host: Option<String>,
    /// Return once the controller stored the change, without waiting for hosts.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting for hosts after this many seconds (exit 6).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

/// An app's host settings (the agent's `[apps.<app>]` keys).
#[derive(Args, Debug, Clone, Default)]
pub struct AppSettingsArgs {
    /// Port the app listens on: given to it as PORT, used for HTTP health.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// How the host runs the processes: the agent's supervisor, or systemd
    /// units installed on the host.
    #[arg(long, value_enum)]
    pub backend: Option<values::Backend>,
    /// Env file on the host, most shared first (repeat). Only the path
    /// travels; the file stays on the host.
    #[arg(long = "env-file", value_name = "PATH")]
    pub env_files: Vec<String>,
    /// Unix user the app runs as (must exist on the hosts).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Releases kept on disk per host (at least 2).
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,
    /// How a new release replaces the running one.
    #[arg(long, value_enum)]
    pub activation: Option<values::ActivationMode>,
    /// Seconds the old instance may take to finish its requests (proxy, socket).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping the app.
    #[arg(long, value_name = "SECS")]
    pub stop_grace: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Accept the drift hosts report now: it stops blocking promotion until it changes.
    #[command(after_help = "Example:\n  slipctl drift ack web --env prod --host web-3")]
    Ack {
        /// App whose drift is accepted.
        app: String,
        /// Environment of the drifted hosts.
        #[arg(long)]
        env: String,
        /// Only this host (default: every drifted host of the environment).
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvsCommand {
    /// Create or change an environment (admin).
    #[command(
        after_help = "Example:\n  slipctl envs set prod --soak 3600 --batch 2 --pause 30\n  slipctl envs set staging --create --production false"
    )]
    Set(EnvSetArgs),
}

#[derive(Args, Debug)]
pub struct EnvSetArgs {
    /// Environment to change.
    pub name: String,
    /// Create the environment when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Whether changes need the promoter role.
    #[arg(long, value_name = "BOOL")]
    pub production: Option<bool>,
    /// Seconds a release must run healthy on every host of the source
    /// environment before it may be promoted here.
    #[arg(long, value_name = "SECS")]
    pub soak: Option<u32>,
    /// Who applies a release's pending database migrations: the agent
    /// before the flip (auto), or a promoter with `slipctl migrate`
    /// (manual; the default of production environments).
    #[arg(long, value_enum)]
    pub migrations: Option<MigrationPolicy>,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationPolicy {
    Auto,
    Manual,
}

impl MigrationPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token; it is printed once and only its hash is kept.
    #[command(
        after_help = "Example:\n  slipctl tokens create ci --role publisher --role deployer --expires 90d"
    )]
    Create {
        /// Name of the token (unique in the tenant).
        name: String,
        /// What the token may do (repeat).
        #[arg(long = "role", required = true, value_enum)]
        roles: Vec<Role>,
        /// Lifetime (90d, 12h, 30m, 45s); default: the token never expires.
        #[arg(long, value_name = "LIFETIME", value_parser = crate::values::lifetime)]
        expires: Option<u64>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  slipctl tokens list -o json")]
    List,
    /// Revoke a token by name or id.
    #[command(after_help = "Example:\n  slipctl tokens revoke ci")]
    Revoke {
        /// Name or id of the token.
        token: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant with preprod and prod; prints its first admin token once.
    #[command(after_help = "Example:\n  slipctl tenants add acme")]
    Add {
        /// Name of the new tenant.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an ed25519 publisher key: the secret goes to --out (0600), the
    /// public key is printed for agents' `publisher_keys`.
    #[command(after_help = "Example:\n  slipctl keys generate --out release.key")]
    Generate {
        /// File the secret key is written to (never overwritten).
        #[arg(long, value_name = "KEY_FILE")]
        out: PathBuf,
    },
}
