//! The edge every Slipway binary shares: the version line (`--version` and the
//! first log line name the git commit), tracing setup, the shutdown signal,
//! and man pages and completions (`docs`).

pub mod docs;

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

/// Bounds how much freed memory glibc keeps for a long-running daemon. By
/// default glibc raises its mmap threshold each time a large buffer is freed
/// (up to 32 MiB), after which 1 MiB stream and chunk buffers come from the
/// heap and stay there; with one arena per thread that retention repeats per
/// runtime thread. A fixed 128 KiB threshold returns every large buffer to
/// the kernel when freed, and two arenas keep small allocations together.
/// Called first thing in `main`, before any other thread exists.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any other thread runs, and its result (0 on failure) only means the
    // defaults stay.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

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
