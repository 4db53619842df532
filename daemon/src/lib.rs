//! The edge every Slipway binary shares: the version line (`--version` and the
//! first log line name the git commit), tracing setup, and the shutdown signal.

use tokio_util::sync::CancellationToken;

/// `0.1.0 (commit 1a2b3c4d5e6f)`: what `--version` prints after the binary's name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLIPWAY_GIT_COMMIT"),
    ")"
);

/// The git commit alone, for the first log line.
pub const COMMIT: &str = env!("SLIPWAY_GIT_COMMIT");

/// Logs to stderr. `SLIPWAY_LOG` filters (default `info`),
/// `SLIPWAY_LOG_FORMAT=json` gives JSON lines. Colour only when stderr is a
/// terminal: the journal and log files get plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("SLIPWAY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT, logging `why` once.
pub async fn cancel_on_signal(shutdown: CancellationToken, why: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("{why}");
    shutdown.cancel();
}
