//! `slipway-searchbench`: the dashboard's log search at fleet size, with
//! real binaries (a controller and one `slipway-agent` process per host,
//! mTLS, this one machine). `SLIPWAY_BENCH_HOSTS` hosts (default 50) each
//! hold `SLIPWAY_BENCH_MB` MiB of log (default 50): the live log and its
//! rotated copies, as the agent keeps them; a rare string sits in the middle
//! of two hosts' logs (one in a rotated copy, one in a live log). The search goes through
//! the HTTPS listener as a browser's would (streamed), `SLIPWAY_BENCH_ROUNDS`
//! times (default 3), side by side with `grep -F` over the same files on this
//! machine (what an operator with a shell on every host runs, minus SSH):
//! time to the first result, to the complete answer, and the controller's
//! and the agents' resident memory during it.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::web::Https;
use integration_tests::{Agent, Controller, eventually, proc_kib, worker_fleet};

const NEEDLE: &str = "rare-needle-9c1e";

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A MiB of ordinary request lines.
fn block(seed: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = seed * 10_000;
    while out.len() < (1 << 20) - 200 {
        i += 1;
        writeln!(
            out,
            "2026-12-01T10:{:02}:{:02}Z INFO request id={i} method=GET path=/api/items/{} status=200 took={}ms user=u{}",
            (i / 60) % 60,
            i % 60,
            i % 9973,
            i % 97,
            i % 1000
        )
        .expect("write to memory");
    }
    out
}

/// Peak resident memory (KiB) of `pids` summed, and of the largest one,
/// sampled every 20 ms until `stop`.
fn sample(pids: Vec<u32>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut sum_peak, mut one_peak) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let each: Vec<u64> = pids.iter().map(|p| proc_kib(*p, "VmRSS:")).collect();
            sum_peak = sum_peak.max(each.iter().sum());
            one_peak = one_peak.max(each.iter().copied().max().unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        (sum_peak, one_peak)
    })
}

fn main() -> anyhow::Result<()> {
    let hosts = number("SLIPWAY_BENCH_HOSTS", 50);
    let mb = number("SLIPWAY_BENCH_MB", 50);
    let rounds = number("SLIPWAY_BENCH_ROUNDS", 3).max(1);
    let t = tempfile::tempdir()?;
    // Every host enrolls from this one address.
    let c = Controller::start_with(t.path(), &["--enrolls-per-minute", "1000"]);
    let agents = worker_fleet(&c, t.path(), hosts, 0);
    c.ctl(&[
        "apps",
        "add",
        "web",
        "--env",
        "preprod",
        "--stop-grace",
        "1",
    ])
    .ok();

    // The logs: MB MiB per host, the needle in the middle of two of them.
    let started = Instant::now();
    let with_needle = [hosts / 3, 2 * hosts / 3];
    let blocks: Vec<Vec<u8>> = (0..8).map(block).collect();
    let files: Vec<std::path::PathBuf> = agents
        .iter()
        .map(|a| a.state_dir.join("apps/web/logs/worker.log"))
        .collect();
    // As the agent keeps them: the live log under its rotation size (10 MiB),
    // older output in rotated copies (`worker.log.1`…).
    let rotated = (mb.max(1) - 1) / 10;
    for (i, f) in files.iter().enumerate() {
        eventually(Duration::from_secs(60), "the worker's log file", || {
            f.exists().then_some(())
        });
        for part in (0..=rotated).rev() {
            let path = if part == 0 {
                f.clone()
            } else {
                std::path::PathBuf::from(format!("{}.{part}", f.display()))
            };
            let size = if part == 0 { mb - 10 * rotated } else { 10 };
            let mut out = std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?,
            );
            for m in 0..size {
                out.write_all(&blocks[(i + m + part) % blocks.len()])?;
                let needle_here = (i == with_needle[0] && part == rotated / 2 && m == size / 2)
                    || (i == with_needle[1] && part == 0 && m == size / 2);
                if needle_here {
                    writeln!(
                        out,
                        "2026-12-01T10:30:00Z ERROR payment gateway timeout {NEEDLE} host={i}"
                    )?;
                }
            }
            out.flush()?;
        }
    }
    let files: Vec<std::path::PathBuf> = files
        .iter()
        .flat_map(|f| {
            (0..=rotated).map(move |part| match part {
                0 => f.clone(),
                n => std::path::PathBuf::from(format!("{}.{n}", f.display())),
            })
        })
        .collect();
    println!(
        "{hosts} hosts x {mb} MiB of log written in {:.1} s; the needle on hosts {with_needle:?}",
        started.elapsed().as_secs_f64()
    );

    let web = Https::new(&c);
    let session = web
        .sign_in(&c.token("looker", &["viewer"]))
        .map_err(|r| anyhow::anyhow!("sign in: {} {}", r.status, r.body))?;
    let url = format!(
        "{}/t/default/logs?app=web&env=preprod&q={NEEDLE}&since=24h",
        web.base
    );
    let mut pids: Vec<u32> = agents.iter().filter_map(Agent::pid).collect();
    let controller_pid = c.pid().expect("controller pid");
    for round in 0..rounds {
        // The search, streamed, as a browser reads it.
        let stop = Arc::new(AtomicBool::new(false));
        let agents_mem = sample(pids.clone(), stop.clone());
        let controller_mem = sample(vec![controller_pid], stop.clone());
        let first = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut curl = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "120", "--cacert"])
            .arg(c.ca_cert())
            .args(["-b", &session, &url])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdout = curl.stdout.take().expect("piped");
        let mut body = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stdout.read(&mut buf)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
            if first.load(Ordering::Relaxed) == 0
                && String::from_utf8_lossy(&body).contains("class=\"hit\"")
            {
                first.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
        curl.wait()?;
        let total = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let (agents_sum, agent_max) = agents_mem.join().expect("sampler");
        let (controller_peak, _) = controller_mem.join().expect("sampler");
        let body = String::from_utf8_lossy(&body);
        let found = body.matches("class=\"hit\" data-host").count();
        let summary = body
            .split_once("<div id=\"summary\"><p>")
            .and_then(|(_, s)| s.split_once("</p>"))
            .map(|(s, _)| s.to_string())
            .unwrap_or_default();

        // The same on this machine: grep -F over every file.
        let start = Instant::now();
        let grep = Command::new("grep")
            .args(["-F", "-h", NEEDLE])
            .args(&files)
            .output()?;
        let grep_secs = start.elapsed().as_secs_f64();
        let grep_found = String::from_utf8_lossy(&grep.stdout).lines().count();
        println!(
            "round {round}: search of {hosts} hosts x {mb} MiB: first result {:.3} s, complete {total:.3} s ({summary}; {found} lines shown); `grep -F` of the same files here: {grep_secs:.3} s ({grep_found} lines); ratio {:.1}x; controller RSS peak {} MiB; agents RSS peak {} MiB summed, {} MiB the largest",
            first.load(Ordering::Relaxed) as f64 / 1e6,
            total / grep_secs,
            controller_peak / 1024,
            agents_sum / 1024,
            agent_max / 1024,
        );
        pids.retain(|p| proc_kib(*p, "VmRSS:") > 0);
    }
    drop(agents);
    Ok(())
}
