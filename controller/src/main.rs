//! `slipway-controller`: parse flags, init logging, serve until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Slipway's controller: release store, desired state and agent sessions.
#[derive(Parser, Debug)]
#[command(
    version,
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
    /// Heartbeat interval the controller asks agents to keep.
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u32,
    /// Largest release blob accepted, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_blob_bytes: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
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
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        let config = controller::Config {
            data_dir: args.data_dir,
            heartbeat_secs: args.heartbeat_secs.max(1),
            max_blob_bytes: args.max_blob_bytes,
        };
        match controller::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "controller failed");
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        }
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// `SLIPWAY_LOG` filters (default info), `SLIPWAY_LOG_FORMAT=json` for JSON lines.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("SLIPWAY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
