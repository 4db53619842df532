//! Memory benchmark (not a test): publishes and installs a large incompressible
//! artifact (default 250 MB, `SLIPWAY_BENCH_MB` to change) through the real
//! controller and agent, then prints both processes' peak RSS (VmHWM) and the
//! wall time of each phase. Figures are printed, never asserted.

use std::io::Write;
use std::time::Instant;

use integration_tests::{Agent, Controller, ReleaseOpts, sample_release};

fn peak_rss_kib(pid: u32) -> u64 {
    integration_tests::proc_kib(pid, "VmHWM:")
}

fn agent_pid(config: &std::path::Path) -> u32 {
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(format!("slipway-agent --config {}", config.display()))
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("agent pid")
}

fn main() -> anyhow::Result<()> {
    let mb: u64 = std::env::var("SLIPWAY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let t = tempfile::tempdir()?;
    let c = Controller::start(t.path());
    let agent = Agent::start(
        t.path(),
        &c,
        "bench-1",
        "preprod",
        "DATABASE_URL=postgres://bench\n",
    );
    let rel = sample_release(t.path(), &ReleaseOpts::new("1.0.0"));

    // Incompressible payload (xorshift), written in 1 MiB pieces.
    let mut f = std::io::BufWriter::new(std::fs::File::create(rel.join("payload.bin"))?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    drop(f);

    let start = Instant::now();
    let out = c
        .ctl(&[
            "publish",
            rel.to_str().unwrap_or_default(),
            "--app",
            "web",
            "--version",
            "1.0.0",
        ])
        .ok();
    let publish_secs = start.elapsed().as_secs_f64();
    print!("{}", out.stdout);
    let start = Instant::now();
    c.ctl(&[
        "deploy",
        "web",
        "1.0.0",
        "--env",
        "preprod",
        "--wait",
        "--timeout",
        "600",
    ])
    .ok();
    let deploy_secs = start.elapsed().as_secs_f64();
    agent.wait_serving("1.0.0");

    let controller_kib = peak_rss_kib(c.pid().unwrap_or(0));
    let agent_kib = peak_rss_kib(agent_pid(&agent.config));
    println!("artifact payload:          {mb} MiB (incompressible)");
    println!("publish (pack+upload):     {publish_secs:.1} s");
    println!("deploy (fetch..healthy):   {deploy_secs:.1} s");
    println!(
        "controller peak RSS:       {:.1} MiB",
        controller_kib as f64 / 1024.0
    );
    println!(
        "agent peak RSS:            {:.1} MiB",
        agent_kib as f64 / 1024.0
    );
    Ok(())
}
