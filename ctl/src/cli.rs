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
        /// Sign the rollback with this publisher key: hosts that enforce release
        /// signatures refuse an older release without it. Needs --to.
        #[arg(long, value_name = "KEY_FILE", requires = "to")]
        sign: Option<PathBuf>,
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
    /// Hosts of the tenant; add one (prints its join token) or revoke one.
    #[command(
        after_help = "Example:\n  slipctl hosts --env prod\n  slipctl hosts add web-1 --env prod\n  slipctl hosts revoke web-1"
    )]
    Hosts {
        #[command(subcommand)]
        command: Option<HostsCommand>,
        #[arg(long)]
        env: Option<String>,
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
    #[command(after_help = "Example:\n  slipctl hosts add web-1 --env prod --ttl 900")]
    Add {
        host: String,
        #[arg(long)]
        env: String,
        /// Seconds the join token stays valid (default: the controller's, 1 h).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Cut a host off: its certificate stops working on its next call.
    #[command(after_help = "Example:\n  slipctl hosts revoke web-1")]
    Revoke { host: String },
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
