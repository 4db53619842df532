//! slipctl's command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "slipctl",
    version,
    about = "Publish releases, deploy them, promote them to production, and see the fleet",
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 controller unreachable.\n\n\
Example:\n  export SLIPWAY_CONTROLLER=https://127.0.0.1:7400 SLIPWAY_CA_CERT=ca.pem SLIPWAY_TOKEN=swt_…\n  slipctl publish ./build --app web --version 1.4.2\n  slipctl deploy web 1.4.2 --env preprod\n  slipctl promote web --from preprod --to prod\n  slipctl status"
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
        default_value = "https://127.0.0.1:7400"
    )]
    pub controller: String,
    /// The controller's CA certificate (its DATA_DIR/pki/ca.pem), for https.
    #[arg(long, global = true, env = "SLIPWAY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// File holding the API token (`$SLIPWAY_TOKEN` wins when set).
    #[arg(long, global = true, env = "SLIPWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Tenant to act on (default: the API token's).
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_TENANT",
        default_value = "",
        hide_default_value = true
    )]
    pub tenant: String,
}

/// `--wait`: follow the change's rollout live until it ends (exit 0 when it
/// succeeded, 1 when it halted, was reverted or aborted), for CI.
#[derive(Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Follow the rollout until it ends; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 1800, requires = "wait")]
    pub timeout: u64,
}

/// How the change reaches the environment's hosts; unset: the environment's strategy.
#[derive(Args, Debug, Clone, Default)]
pub struct StrategyArgs {
    /// Hosts changed first, alone; any failure there halts the rollout.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Hosts per batch after the canary: N, or N% of the environment's hosts.
    #[arg(long, value_name = "N|N%")]
    pub batch: Option<String>,
    /// Seconds a batch's hosts have to report healthy; later counts as failed.
    #[arg(long, value_name = "SECS")]
    pub batch_timeout: Option<u32>,
    /// Seconds to wait between batches.
    #[arg(long, value_name = "SECS")]
    pub pause: Option<u32>,
    /// Failed hosts tolerated before the rollout halts: N or N%.
    #[arg(long, value_name = "N|N%")]
    pub max_failures: Option<String>,
    /// On halt, put the previous release back on the hosts already changed.
    #[arg(long, value_name = "BOOL")]
    pub auto_revert: Option<bool>,
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
        /// Sign the release with this publisher key (from `slipctl keys generate`).
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
    },
    /// Set the release APP should run in an environment.
    #[command(after_help = "Example:\n  slipctl deploy web 1.4.2 --env preprod --wait")]
    Deploy {
        app: String,
        version: String,
        #[arg(long)]
        env: String,
        /// Authorize an older release than hosts run, signed with this publisher key.
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
        #[command(flatten)]
        strategy: StrategyArgs,
        #[command(flatten)]
        wait: Wait,
    },
    /// Copy the exact release (same digest) one environment runs to another.
    #[command(
        after_help = "Example:\n  slipctl promote web --from preprod --to prod --wait\n\n\
Refused until the release has run healthy on every host of --from for the soak time of --to,\n\
and while a host of either environment carries unacknowledged drift."
    )]
    Promote {
        app: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Promote despite the soak and drift gates (promoter role; audited).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        strategy: StrategyArgs,
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
        /// Sign the rollback with this publisher key: hosts that enforce release
        /// signatures refuse an older release without it. Needs --to.
        #[arg(long, value_name = "KEY_FILE", requires = "to")]
        sign: Option<PathBuf>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Roll the current release out again (new generation, canary and batches):
    /// hosts that refused it try once more, healthy ones just confirm it.
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
    /// The fleet: per environment and app, how many hosts run the desired
    /// release, are updating, failed, drifted or offline; --hosts for each host.
    #[command(
        after_help = "Example:\n  slipctl status --env prod\n  slipctl status --hosts --app web\n  slipctl status --json | jq '.hosts[] | select(.status != \"ok\")'"
    )]
    Status {
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// One row per host and app.
        #[arg(long)]
        hosts: bool,
        #[arg(long)]
        json: bool,
    },
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
    Apps {
        #[command(subcommand)]
        command: Option<AppsCommand>,
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Hand-made changes to running releases.
    #[command(after_help = "Example:\n  slipctl drift ack web --env prod --host web-3")]
    Drift {
        #[command(subcommand)]
        command: DriftCommand,
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
    /// The tenant's environments, their soak and rollout strategy; change one.
    #[command(
        after_help = "Example:\n  slipctl envs\n  slipctl envs set prod --soak 3600 --canary 1 --batch 25% --pause 60"
    )]
    Envs {
        #[command(subcommand)]
        command: Option<EnvsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Hosts of the tenant; add one (prints its join token) or revoke one.
    #[command(
        after_help = "Example:\n  slipctl hosts --env prod\n  slipctl hosts add web-1 --env prod\n  slipctl hosts revoke web-1"
    )]
    Hosts {
        #[command(subcommand)]
        command: Option<HostsCommand>,
        #[arg(long)]
        env: Option<String>,
        /// Only hosts with this label (repeat: all must match).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long)]
        criticality: Option<String>,
        /// Only hosts that are offline (no session, or missed heartbeats).
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        json: bool,
    },
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
}

#[derive(Subcommand, Debug)]
pub enum HostsCommand {
    /// Register HOST in an environment and print its one-time join token.
    #[command(
        after_help = "Example:\n  slipctl hosts add web-1 --env prod --purpose web --criticality high --label zone=fsn1 --ttl 900"
    )]
    Add {
        host: String,
        #[arg(long)]
        env: String,
        /// Seconds the join token stays valid (default: the controller's, 1 h).
        #[arg(long)]
        ttl: Option<u32>,
        #[command(flatten)]
        inventory: HostInventory,
    },
    /// Change a host's purpose, criticality or labels.
    #[command(
        after_help = "Example:\n  slipctl hosts set web-1 --label canary=true --unlabel zone"
    )]
    Set {
        host: String,
        #[command(flatten)]
        inventory: HostInventory,
        /// Remove this label (repeat).
        #[arg(long = "unlabel", value_name = "KEY")]
        unlabel: Vec<String>,
    },
    /// Cut a host off: its certificate stops working on its next call.
    #[command(after_help = "Example:\n  slipctl hosts revoke web-1")]
    Revoke { host: String },
}

/// What the inventory says about a host.
#[derive(Args, Debug, Clone, Default)]
pub struct HostInventory {
    /// What the host is for (free text: web, db, worker…).
    #[arg(long)]
    pub purpose: Option<String>,
    /// low, medium, high or critical; canaries are picked among the least critical.
    #[arg(long)]
    pub criticality: Option<String>,
    /// KEY=VALUE (repeat); `canary=true` puts the host first in rollouts.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show the latest rollout host by host, following it live until it ends.
    #[command(after_help = "Example:\n  slipctl rollout status web --env prod --wait")]
    Status {
        app: String,
        #[arg(long)]
        env: String,
        /// Print the current state once instead of following.
        #[arg(long, conflicts_with = "wait")]
        once: bool,
        #[arg(long, conflicts_with = "wait")]
        json: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop admitting new batches (hosts already changed stay as they are; a
    /// failure among them still halts and reverts).
    #[command(after_help = "Example:\n  slipctl rollout pause web --env prod")]
    Pause {
        app: String,
        #[arg(long)]
        env: String,
    },
    /// Continue a paused rollout.
    #[command(after_help = "Example:\n  slipctl rollout resume web --env prod")]
    Resume {
        app: String,
        #[arg(long)]
        env: String,
    },
    /// Stop the rollout and put the previous release back on the hosts it changed.
    #[command(after_help = "Example:\n  slipctl rollout abort web --env prod\n\n\
Hosts that enforce publisher signatures refuse to go back to an older release without a\n\
signed rollback: use `slipctl rollback web --env prod --to VERSION --sign KEY` for them.")]
    Abort {
        app: String,
        #[arg(long)]
        env: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Place APP in an environment on the hosts whose labels match (none: every host).
    #[command(after_help = "Example:\n  slipctl apps place web --env prod --selector role=web")]
    Place {
        app: String,
        #[arg(long)]
        env: String,
        /// KEY=VALUE (repeat: all must match).
        #[arg(long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DriftCommand {
    /// Accept the drift hosts report now: it stops blocking promotion until it changes.
    #[command(after_help = "Example:\n  slipctl drift ack web --env prod --host web-3")]
    Ack {
        app: String,
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
    Set {
        name: String,
        /// Create the environment when it does not exist.
        #[arg(long)]
        create: bool,
        #[arg(long, value_name = "BOOL")]
        production: Option<bool>,
        /// Seconds a release must run healthy on every host of the source
        /// environment before it may be promoted here.
        #[arg(long, value_name = "SECS")]
        soak: Option<u32>,
        #[command(flatten)]
        strategy: StrategyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token; it is printed once and only its hash is kept.
    #[command(
        after_help = "Roles: viewer (read), publisher (publish), deployer (non-production changes),\npromoter (production changes), admin (everything, tokens and hosts).\n\nExample:\n  slipctl tokens create ci --role publisher --role deployer"
    )]
    Create {
        name: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  slipctl tokens list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id.
    #[command(after_help = "Example:\n  slipctl tokens revoke ci")]
    Revoke { token: String },
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant with preprod and prod; prints its first admin token once.
    #[command(after_help = "Example:\n  slipctl tenants add acme")]
    Add { name: String },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an ed25519 publisher key: the secret goes to --out (0600), the
    /// public key is printed for agents' `publisher_keys`.
    #[command(after_help = "Example:\n  slipctl keys generate --out release.key")]
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}
