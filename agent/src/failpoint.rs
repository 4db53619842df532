//! Kill points for the crash tests: with the `failpoints` feature (turned on by
//! the `tests` crate, never in a package build), an agent started with
//! `SLIPWAY_FAILPOINT=<name>` sends itself SIGKILL when it reaches that point:
//! no destructor runs, no file is flushed, exactly as a `kill -9` or a power cut
//! would leave it. Without the feature `hit` is empty.
//!
//! Points: `step:<step>` (that deploy step is persisted, not yet run, e.g.
//! `step:flip`), `hook-started:<hook>` (a hook runs, its pid recorded),
//! `hook-spawned` (a hook runs, its pid not yet recorded), `rollback-flipped`
//! (`current` points back at the previous release), `supervisor-spawned`
//! (a process started, its pid not yet recorded), `fetch-streaming` (the first
//! bytes of the blob are written and the unpack follows them), `unpack-synced`
//! (the unpacked tree is on disk, not yet renamed into place) and
//! `traffic-moved` (the proxy's route names the new instance, the old one not
//! yet drained).

/// The environment variable naming the point to die at.
pub const VAR: &str = "SLIPWAY_FAILPOINT";

#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(VAR).ok());
    if armed.as_deref() == Some(point) {
        tracing::warn!(point, "failpoint reached: killing this agent");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}
