//! `slipway-controller`: parse flags, init logging, serve until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Slipway's controller: release store, desired state and agent sessions.
#[derive(Parser, Debug)]
#[command(
    name = "slipway-controller",
    version = daemon::VERSION,
    about,
    after_help = "Example:\n  slipway-controller --listen 127.0.0.1:7400 --data-dir /var/lib/slipway-controller"
)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// Directory for the SQLite database and the blob store.
    #[arg(
        long,
        env = "SLIPWAY_DATA_DIR",
        default_value = "/var/lib/slipway-controller"
    )]
    data_dir: PathBuf,
    /// The store: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (the
    /// password from PGPASSWORD or ~/.pgpass keeps it out of `ps`). Default:
    /// SQLite at DATA_DIR/slipway.db.
    #[arg(long, env = "SLIPWAY_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// Where release blobs live: a directory (several controllers of one
    /// store share it on a shared filesystem), or an S3-compatible bucket,
    /// `s3://BUCKET/PREFIX[?endpoint=URL&region=R]` (credentials from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; DATA_DIR/blobs caches
    /// it). Default: DATA_DIR/blobs.
    #[arg(long, env = "SLIPWAY_BLOBS", value_name = "DIR|URL")]
    blobs: Option<String>,
    /// With --blobs s3://…: agents download release blobs straight from the
    /// bucket, with presigned URLs valid this long (e.g. 5m; 10s to 12h),
    /// and fall back to the controller when the bucket cannot be reached
    /// from the host. They check every blob's sha256 either way.
    #[arg(long, env = "SLIPWAY_PRESIGNED_DOWNLOADS", value_name = "DURATION", value_parser = humantime::parse_duration)]
    presigned_downloads: Option<Duration>,
    /// Heartbeat interval the controller asks agents to keep.
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u32,
    /// Largest release blob accepted, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_blob_bytes: u64,
    /// A DNS name or IP the controller's certificate holds (repeatable; agents and
    /// slipctl connect by one of them). Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// With several controllers on one PostgreSQL: where the others reach
    /// this one (https://HOST:PORT), to relay a log query to the hosts it
    /// holds. Default: the --listen address, or this machine's hostname when
    /// listening on 0.0.0.0.
    #[arg(long, env = "SLIPWAY_ADVERTISE_ADDRESS", value_name = "URL")]
    advertise_address: Option<String>,
    /// Operator-provided CA certificate (PEM); default: a CA made under DATA_DIR/pki.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Key of --ca-cert (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    #[arg(long, default_value_t = 24 * 3600)]
    agent_cert_ttl_secs: u64,
    /// Default lifetime of join tokens from `slipctl hosts add`.
    #[arg(long, default_value_t = 3600)]
    join_token_ttl_secs: u64,
    /// How long a directive sent to a host stays valid for new installs.
    #[arg(long, default_value_t = 3600)]
    directive_ttl_secs: u64,
    /// Connections one IP address may hold open at once (agents behind one
    /// NAT address count together).
    #[arg(long, default_value_t = 64)]
    max_connections_per_ip: usize,
    /// Enrollment attempts one IP address may make per minute (and at once).
    #[arg(long, default_value_t = 30)]
    enrolls_per_minute: u32,
    /// An upload that sends nothing for this long is cut off.
    #[arg(long, default_value_t = 60)]
    upload_idle_secs: u64,
    /// Serve the dashboard, /healthz and /metrics over HTTPS (the controller's
    /// certificate) here; `off` for none. Loopback by default: put it behind
    /// your proxy or VPN, or name a public address deliberately.
    #[arg(
        long,
        env = "SLIPWAY_HTTP_LISTEN",
        value_name = "ADDR|off",
        default_value = "127.0.0.1:7480"
    )]
    http_listen: String,
    /// Also serve slipctl (not agents) in plaintext here; loopback addresses only.
    #[arg(long, value_name = "ADDR")]
    plaintext_listen: Option<String>,
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(clap::Subcommand, Debug)]
enum Internal {
    /// Copy every row of a store into a new, empty one (stop the controller
    /// first), e.g. from the embedded SQLite to PostgreSQL. Blobs are files:
    /// move or share the blob directory yourself.
    #[command(
        after_help = "Example:\n  slipway-controller migrate-store --from sqlite:///var/lib/slipway-controller/slipway.db \\\n    --to postgres://slipway@db.internal/slipway"
    )]
    MigrateStore {
        /// The store to copy: sqlite://PATH or postgres://…
        #[arg(long, value_name = "URL")]
        from: String,
        /// The new store: its schema is applied; it must hold nothing else.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Print the man page or shell completions (for the package).
    #[command(hide = true)]
    Generate { doc: daemon::docs::Doc },
}

/// `migrate-store`: opens both stores, copies, prints what moved.
async fn migrate_store(from: &str, to: &str) -> anyhow::Result<()> {
    use controller::store::{Store, redacted};
    anyhow::ensure!(from != to, "--from and --to name the same store");
    if let Some(path) = from.strip_prefix("sqlite://") {
        anyhow::ensure!(
            std::path::Path::new(path).is_file(),
            "--from {from}: no such SQLite file"
        );
    }
    let source = Store::open(from)
        .await
        .map_err(|e| anyhow::anyhow!("--from {}: {e}", redacted(from)))?;
    let target = Store::open(to)
        .await
        .map_err(|e| anyhow::anyhow!("--to {}: {e}", redacted(to)))?;
    let copied = source
        .copy_into(&target)
        .await
        .map_err(|e| anyhow::anyhow!("nothing was written to {}: {e}", redacted(to)))?;
    let total: i64 = copied.iter().map(|(_, n)| n).sum();
    for (table, n) in &copied {
        println!("{table:<22} {n:>9}");
    }
    println!(
        "copied {total} rows from {} to {}; every table counted on both sides",
        redacted(from),
        redacted(to)
    );
    Ok(())
}

fn main() -> ExitCode {
    daemon::tune_allocator();
    let args = Args::parse();
    match args.internal {
        Some(Internal::Generate { doc }) => {
            let cmd = <Args as clap::CommandFactory>::command();
            return match daemon::docs::print(cmd, doc, 8) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some(Internal::MigrateStore { from, to }) => {
            let done = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(migrate_store(&from, &to)));
            return match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    daemon::init_tracing();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = daemon::COMMIT,
        "slipway-controller starting"
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: listen on {}: {e}", args.listen);
                return ExitCode::from(64);
            }
        };
        let plaintext = match &args.plaintext_listen {
            None => None,
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) if l.local_addr().is_ok_and(|a| a.ip().is_loopback()) => Some(l),
                Ok(_) => {
                    eprintln!("error: --plaintext-listen {addr}: plaintext is allowed on loopback addresses only");
                    return ExitCode::from(64);
                }
                Err(e) => {
                    eprintln!("error: listen on {addr}: {e}");
                    return ExitCode::from(64);
                }
            },
        };
        let http = match args.http_listen.as_str() {
            "off" => None,
            addr => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: --http-listen {addr}: {e} (use another address, or `off`)");
                    return ExitCode::from(64);
                }
            },
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(daemon::cancel_on_signal(shutdown.clone(), "shutting down"));
        let mut config = controller::Config::new(args.data_dir);
        config.database = args.database;
        config.blobs = args.blobs;
        config.presigned_downloads = args.presigned_downloads;
        config.heartbeat_secs = args.heartbeat_secs.max(1);
        config.max_blob_bytes = args.max_blob_bytes;
        if !args.server_names.is_empty() {
            config.server_names = args.server_names;
        }
        config.advertise_address = args.advertise_address;
        config.ca = args.ca_cert.zip(args.ca_key);
        config.agent_cert_ttl = Duration::from_secs(args.agent_cert_ttl_secs.max(10));
        config.join_token_ttl = Duration::from_secs(args.join_token_ttl_secs.max(1));
        config.directive_ttl = Duration::from_secs(args.directive_ttl_secs.max(1));
        config.edge = controller::grpc::edge::Limits {
            connections_per_ip: args.max_connections_per_ip.max(1),
            enrolls_per_minute: args.enrolls_per_minute.max(1),
        };
        config.upload_idle_timeout = Duration::from_secs(args.upload_idle_secs.max(1));
        match controller::run(
            config,
            controller::Listeners {
                grpc: listener,
                plaintext,
                http,
            },
            shutdown,
        ).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Logged once, here; the journal and stderr both get it.
                tracing::error!(error = format!("{e:#}"), "controller failed");
                ExitCode::from(1)
            }
        }
    })
}
