//! Deploy benchmark (not a test): Slipway against the push script it replaces
//! (`tests/bench/deploy.sh`: tar + zstd, scp, unpack, `ln -sfn`, restart, curl)
//! and against plain tar + zstd, side by side in every round, on a real Python
//! tree (`tests/bench/python-tree.sh`). Prints a markdown table of medians over
//! the rounds, each ratio taken within its round. It drives only the release
//! binaries' CLIs and reads only what the agent writes (`status.json`,
//! `deploy.log`, `current`) and /proc, so it survives changes to the internals.
//!
//! Nothing is deleted until the bench ends (about 1.1 GiB of disk per
//! round): ext4 skips inodes freed in the last 60–300 s when it allocates
//! new ones, so whichever side ran right after a tree was deleted created
//! its files up to 10× slower (`recently_deleted` topped the kernel
//! profile), and the pairs compared the deletions, not the installs.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/slipway-deploybench            # 7 rounds
//! SLIPWAY_BENCH_ROUNDS=3 target/release/slipway-deploybench
//! SLIPWAY_BENCH_TREE=DIR target/release/slipway-deploybench   # any tree with a
//!     slipway.toml and a bin/serve that answers /health on $PORT
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use integration_tests::{Agent, Controller, free_port, proc_kib};

const ENV: &str = "preprod";
const APP: &str = "web";
/// The file the bench rewrites for "one file changed" (15 KB of text).
const CHANGE_FILE: &str = "bench-change.txt";
const CHANGE_BYTES: usize = 15_000;
/// Deadline of each `deploy --wait`.
const DEPLOY_TIMEOUT_SECS: &str = "600";

fn main() -> anyhow::Result<()> {
    let rounds = env_usize("SLIPWAY_BENCH_ROUNDS", 7)?.max(1);
    let installs = env_usize("SLIPWAY_BENCH_INSTALLS", 7)?.max(1);
    let target = target_dir()?;
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let tree = match std::env::var_os("SLIPWAY_BENCH_TREE") {
        Some(t) => PathBuf::from(t),
        None => {
            let tree = target.join("bench-tree");
            eprintln!(
                "building (or reusing) the Python tree at {}",
                tree.display()
            );
            let status = Command::new("bash")
                .arg(bench_dir.join("python-tree.sh"))
                .arg(&tree)
                .status()
                .context("run tests/bench/python-tree.sh")?;
            if !status.success() {
                bail!("tests/bench/python-tree.sh failed ({status})");
            }
            tree
        }
    };
    for need in ["slipway.toml", "bin/serve"] {
        if !tree.join(need).exists() {
            bail!(
                "bench tree {} has no {need} (the app must start with bin/serve and answer /health on $PORT)",
                tree.display()
            );
        }
    }

    let scratch = tempfile::Builder::new()
        .prefix("deploybench-")
        .tempdir_in(&target)
        .context("scratch dir under target/")?;
    // The bench changes one file per version: it works on its own copy.
    let work = scratch.path().join("work");
    sh("cp -a \"$1/.\" \"$2\"", &[&tree, &work]).context("copy the tree")?;
    write_change(&work, 0)?;
    let stats = TreeStats::of(&work)?;
    // Warm the page cache so the first measured read is not the only cold one.
    sh("tar -C \"$1\" -cf - . >/dev/null", &[&work])?;

    let load_before = load_average();
    let ssh = match Sshd::start(&scratch.path().join("sshd")) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "NOTE: no private sshd ({e:#}); the push script copies locally instead of scp/ssh"
            );
            None
        }
    };
    let script = Script {
        path: bench_dir.join("deploy.sh"),
        ssh: ssh.as_ref(),
    };

    eprintln!(
        "tree: {} in {} files ({} entries); {rounds} rounds",
        human(stats.bytes),
        stats.files,
        stats.entries
    );
    let mut all = Vec::new();
    let mut failed = None;
    for r in 0..rounds {
        let dir = scratch.path().join(format!("round-{r}"));
        std::fs::create_dir_all(&dir)?;
        match round(r, &dir, &work, &script) {
            Ok(fig) => {
                eprintln!("round {}: {}", r + 1, fig.summary());
                all.push(fig);
            }
            Err(e) => {
                failed = Some(e.context(format!("round {}", r + 1)));
                break;
            }
        }
    }
    let long = match failed {
        Some(_) => None,
        None => long_run(installs, &scratch.path().join("long"), &work)
            .map_err(|e| failed = Some(e.context("long run")))
            .ok(),
    };

    if !all.is_empty() {
        print_table(&all, long.as_ref(), &stats, all.len(), ssh.is_some());
    }
    // The machine is shared: say how busy it was.
    println!(
        "load average (1/5/15 min) at the start: {load_before}; at the end: {}.",
        load_average()
    );
    drop(ssh);
    if let Some(e) = failed {
        let kept = scratch.keep();
        eprintln!(
            "the bench failed; its files, with the controller and agent logs, are kept in {}",
            kept.display()
        );
        return Err(e);
    }
    Ok(())
}

/// What one round measured; times in seconds, sizes in bytes, RSS in KiB.
#[derive(Default)]
struct Round {
    publish: f64,
    publish_cpu: f64,
    pack_peer: f64,
    pack_peer_cpu: f64,
    deploy: f64,
    script: f64,
    install_full: Option<f64>,
    install_steps: String,
    unpack_peer: f64,
    tar_zst_bytes: u64,
    republish: f64,
    /// One file changed: publish + deploy --wait, and the push script
    /// shipping the same change.
    publish_one: f64,
    deploy_one: f64,
    script_one: f64,
    install_one: Option<f64>,
    one_steps: String,
    cpal_peer: f64,
    full_blob: Option<u64>,
    one_bytes: Option<(u64, &'static str)>,
    manifest: Option<(u64, u64)>,
    controller_hwm: u64,
    agent_hwm: u64,
}

impl Round {
    fn summary(&self) -> String {
        format!(
            "e2e {:.2} s vs script {:.2} s; one-file e2e {:.2} s vs script {:.2} s; publish {:.2} s vs tar|zstd {:.2} s; install {} [{}] vs unpack {:.2} s; republish {:.2} s; one file: {} [{}], {} vs cp -al {:.2} s; RSS {:.1}/{:.1} MiB",
            self.publish + self.deploy,
            self.script,
            self.publish_one + self.deploy_one,
            self.script_one,
            self.publish,
            self.pack_peer,
            opt_secs(self.install_full),
            self.install_steps,
            self.unpack_peer,
            self.republish,
            opt_secs(self.install_one),
            self.one_steps,
            self.one_bytes
                .map(|(b, src)| format!("{} ({src})", human(b)))
                .unwrap_or_else(|| "bytes n/a".into()),
            self.cpal_peer,
            self.controller_hwm as f64 / 1024.0,
            self.agent_hwm as f64 / 1024.0,
        )
    }
}

/// One round on a fresh controller and agent (a fresh host): full publish and
/// deploy, the unchanged republish, then one file changed.
fn round(r: usize, dir: &Path, work: &Path, script: &Script) -> anyhow::Result<Round> {
    let mut fig = Round::default();
    let c = Controller::start(dir);
    let agent = Agent::start(dir, &c, "bench-1", ENV, "");
    let app_dir = agent.app_dir();
    let full = format!("1.{r}.0");
    let same = format!("1.{r}.1");
    let one = format!("1.{r}.2");
    write_change(work, r * 10)?;
    let zst = dir.join("tree.tar.zst");
    let push_root = dir.join("push-host");

    let pack_peer = |fig: &mut Round| -> anyhow::Result<()> {
        let run = sh(
            "tar -C \"$1\" -cf - . | zstd -q -3 -T0 -o \"$2\"",
            &[work, &zst],
        )?;
        fig.pack_peer = run.secs;
        fig.pack_peer_cpu = run.cpu;
        fig.tar_zst_bytes = std::fs::metadata(&zst)?.len();
        Ok(())
    };
    let unpack_peer = |fig: &mut Round| -> anyhow::Result<()> {
        let out = dir.join("unpacked");
        let run = sh(
            "mkdir \"$2\" && zstd -q -dc \"$1\" | tar -xf - -C \"$2\"",
            &[&zst, &out],
        )?;
        fig.unpack_peer = run.secs;
        settle()
    };
    let deploy_full = |fig: &mut Round| -> anyhow::Result<()> {
        let w = Watch::start(&app_dir, &full);
        fig.deploy = deploy(&c, &full)?.secs;
        let (install, steps) = w.finish();
        fig.install_full = install;
        fig.install_steps = steps;
        Ok(())
    };

    // Each peer runs right next to the Slipway figure it is compared with;
    // the order alternates between rounds so neither side always goes first.
    if r.is_multiple_of(2) {
        pack_peer(&mut fig)?;
        (fig.publish, fig.publish_cpu) = publish(&c, work, &full)?;
        deploy_full(&mut fig)?;
        unpack_peer(&mut fig)?;
        fig.script = script.run(work, &push_root)?.secs;
        settle()?;
    } else {
        fig.script = script.run(work, &push_root)?.secs;
        settle()?;
        (fig.publish, fig.publish_cpu) = publish(&c, work, &full)?;
        pack_peer(&mut fig)?;
        unpack_peer(&mut fig)?;
        deploy_full(&mut fig)?;
    }
    fig.republish = publish(&c, work, &same)?.0;

    write_change(work, r * 10 + 1)?;
    fig.publish_one = publish(&c, work, &one)?.0;
    let w = Watch::start(&app_dir, &one);
    fig.deploy_one = deploy(&c, &one)?.secs;
    (fig.install_one, fig.one_steps) = w.finish();
    // The script knows no delta: it ships and unpacks the whole tree again.
    fig.script_one = script.run(work, &push_root)?.secs;
    settle()?;
    kill_push_app(&push_root);
    let cpal = dir.join("cp-al");
    fig.cpal_peer = sh("cp -al \"$1\" \"$2\"", &[work, &cpal])?.secs;
    settle()?;

    let releases = releases_json(&c);
    fig.full_blob = blob_size(&releases, &full);
    fig.one_bytes = wire_bytes(&app_dir, &one)
        .map(|b| (b, "wire_bytes"))
        .or_else(|| blob_size(&releases, &one).map(|b| (b, "blob size")));
    fig.manifest = manifest_size(&c.data_dir, &full, dir);
    fig.controller_hwm = c.pid().map_or(0, |p| proc_kib(p, "VmHWM:"));
    fig.agent_hwm = agent.pid().map_or(0, |p| proc_kib(p, "VmHWM:"));
    Ok(fig)
}

/// A long-running controller and agent: `installs` deploys one after another
/// (the first full, each next one with one file changed); RSS after each.
struct LongRun {
    agent_rss: Vec<u64>,
    agent_hwm: u64,
    controller_rss: Vec<u64>,
    controller_hwm: u64,
}

fn long_run(installs: usize, dir: &Path, work: &Path) -> anyhow::Result<LongRun> {
    std::fs::create_dir_all(dir)?;
    let c = Controller::start(dir);
    let agent = Agent::start(dir, &c, "bench-long", ENV, "");
    let (cpid, apid) = (c.pid().unwrap_or(0), agent.pid().unwrap_or(0));
    let mut long = LongRun {
        agent_rss: Vec::new(),
        agent_hwm: 0,
        controller_rss: Vec::new(),
        controller_hwm: 0,
    };
    for i in 0..installs {
        write_change(work, 1000 + i)?;
        let version = format!("9.0.{i}");
        publish(&c, work, &version)?;
        deploy(&c, &version)?;
        long.agent_rss.push(proc_kib(apid, "VmRSS:"));
        long.controller_rss.push(proc_kib(cpid, "VmRSS:"));
        eprintln!(
            "long run: install {} of {installs}: agent RSS {:.1} MiB, controller {:.1} MiB",
            i + 1,
            proc_kib(apid, "VmRSS:") as f64 / 1024.0,
            proc_kib(cpid, "VmRSS:") as f64 / 1024.0
        );
    }
    long.agent_hwm = proc_kib(apid, "VmHWM:");
    long.controller_hwm = proc_kib(cpid, "VmHWM:");
    Ok(long)
}

/// Wall time and the CPU time of the waited-for children (us included).
struct Run {
    secs: f64,
    cpu: f64,
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Run> {
    let cpu0 = children_cpu();
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect::<Vec<_>>();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(Run {
        secs,
        cpu: children_cpu() - cpu0,
    })
}

/// `sh -c SCRIPT sh ARGS...`.
/// Writes out what a peer left dirty (Slipway syncs its own installs; the
/// peers do not): without it the kernel wrote the peers' ~400 MiB back
/// during whatever Slipway measured next (an unchanged republish took 0.7 s
/// instead of 0.35 s after the push script and the unpack peer).
fn settle() -> anyhow::Result<()> {
    sh("sync", &[]).map(|_| ())
}

fn sh(script: &str, args: &[&Path]) -> anyhow::Result<Run> {
    run(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args),
        script,
    )
}

fn slipctl(c: &Controller) -> Command {
    let mut cmd = Command::new(integration_tests::bin("slipctl"));
    cmd.env("SLIPWAY_CONTROLLER", &c.url)
        .env("SLIPWAY_CA_CERT", c.ca_cert())
        .env("SLIPWAY_TOKEN", &c.admin_token);
    cmd
}

/// `slipctl publish`: wall time and CPU time (slipctl's plus the controller's).
fn publish(c: &Controller, dir: &Path, version: &str) -> anyhow::Result<(f64, f64)> {
    let ctl_cpu0 = c.pid().map_or(0.0, proc_cpu);
    let r = run(
        slipctl(c).arg("publish").arg(dir).args([
            "--app",
            APP,
            "--version",
            version,
            "--allow-dirty",
        ]),
        &format!("slipctl publish {version}"),
    )?;
    let ctl_cpu = c.pid().map_or(0.0, proc_cpu) - ctl_cpu0;
    Ok((r.secs, r.cpu + ctl_cpu))
}

fn deploy(c: &Controller, version: &str) -> anyhow::Result<Run> {
    run(
        slipctl(c).args([
            "deploy",
            APP,
            version,
            "--env",
            ENV,
            "--wait",
            "--timeout",
            DEPLOY_TIMEOUT_SECS,
        ]),
        &format!("slipctl deploy {version} --wait"),
    )
}

/// `slipctl releases web -o json`, or Null.
fn releases_json(c: &Controller) -> serde_json::Value {
    slipctl(c)
        .args(["releases", APP, "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn blob_size(releases: &serde_json::Value, version: &str) -> Option<u64> {
    let rows = releases
        .as_array()
        .or_else(|| releases["releases"].as_array())?;
    rows.iter()
        .find(|r| r["version"] == version)?
        .get("blob_size")?
        .as_u64()
}

/// `wire_bytes=N` from the detail of `version`'s `fetch` line in deploy.log.
fn wire_bytes(app_dir: &Path, version: &str) -> Option<u64> {
    let log = std::fs::read_to_string(app_dir.join("deploy.log")).ok()?;
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["version"] == version && v["step"] == "fetch")
        .filter_map(|v| {
            let detail = v["detail"].as_str()?.to_string();
            detail
                .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                .find_map(|w| w.strip_prefix("wire_bytes=")?.parse().ok())
        })
        .next()
}

/// The release's manifest, raw and `zstd -3`, read from the controller's
/// SQLite store with the sqlite3 CLI; None when that is not possible.
fn manifest_size(data_dir: &Path, version: &str, scratch: &Path) -> Option<(u64, u64)> {
    let db = data_dir.join("slipway.db");
    let out = scratch.join("manifest.bin");
    let query = format!(
        "SELECT writefile('{}', manifest) FROM releases WHERE app = '{APP}' AND version = '{version}';",
        out.display()
    );
    let ok = Command::new("sqlite3")
        .arg("-readonly")
        .arg(&db)
        .arg(query)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    let raw = std::fs::metadata(&out).ok().filter(|_| ok)?.len();
    let zst = scratch.join("manifest.zst");
    sh("zstd -q -3 -f \"$1\" -o \"$2\"", &[&out, &zst]).ok()?;
    Some((raw, std::fs::metadata(&zst).ok()?.len()))
}

/// Watches the agent's files while a deploy runs: when the deploy started on
/// the agent (status.json shows it, or deploy.log gets its first line), when
/// `current` changed, and when each deploy.log line appeared.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Seen>,
}

#[derive(Default)]
struct Seen {
    started: Option<Instant>,
    flipped: Option<Instant>,
    steps: Vec<(String, Instant)>,
}

impl Watch {
    fn start(app_dir: &Path, version: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (app_dir, version, flag) = (app_dir.to_path_buf(), version.to_string(), stop.clone());
        let log_path = app_dir.join("deploy.log");
        let status_path = app_dir.join("status.json");
        let current = app_dir.join("current");
        let mut log_offset = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let link0 = std::fs::read_link(&current).ok();
        let handle = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut last_status = None;
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                if seen.started.is_none() {
                    let meta = std::fs::metadata(&status_path).ok();
                    let key = meta.as_ref().map(|m| (m.len(), m.modified().ok()));
                    if key.is_some() && key != last_status {
                        last_status = key;
                        if status_shows_deploy(&status_path, &version) {
                            seen.started = Some(now);
                        }
                    }
                }
                if seen.flipped.is_none() {
                    let link = std::fs::read_link(&current).ok();
                    if link.is_some() && link != link0 {
                        seen.flipped = Some(now);
                    }
                }
                let len = std::fs::metadata(&log_path).map_or(0, |m| m.len());
                if len > log_offset {
                    for line in read_from(&log_path, log_offset).lines() {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                            continue;
                        };
                        if v["version"] != version.as_str() {
                            continue;
                        }
                        seen.started.get_or_insert(now);
                        let step = format!(
                            "{} {}",
                            v["step"].as_str().unwrap_or("?"),
                            v["outcome"].as_str().unwrap_or("?")
                        );
                        seen.steps.push((step, now));
                    }
                    log_offset = len;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        Watch { stop, handle }
    }

    /// Stops watching: the install time (deploy start → flip) and the times
    /// of the deploy.log lines since the start, e.g. `fetch ok +2.10`.
    fn finish(self) -> (Option<f64>, String) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.handle.join().unwrap_or_default();
        let Some(start) = seen.started else {
            return (None, "deploy start not seen".into());
        };
        let steps: Vec<String> = seen
            .steps
            .iter()
            .map(|(s, t)| format!("{s} +{:.2}", t.duration_since(start).as_secs_f64()))
            .collect();
        let install = seen.flipped.map(|f| f.duration_since(start).as_secs_f64());
        (install, steps.join(", "))
    }
}

fn status_shows_deploy(path: &Path, version: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let deploy = &v["deploy"];
    if deploy.is_object() {
        let target = &deploy["target"]["version"];
        return target.is_null() || target == version;
    }
    matches!(v["state"].as_str(), Some("fetching" | "installing"))
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The push script, over ssh to the private sshd (or locally).
struct Script<'a> {
    path: PathBuf,
    ssh: Option<&'a Sshd>,
}

impl Script<'_> {
    fn run(&self, src: &Path, root: &Path) -> anyhow::Result<Run> {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.path)
            .arg(src)
            .env("DEPLOY_ROOT", root)
            .env("DEPLOY_PORT", free_port().to_string());
        match self.ssh {
            Some(s) => cmd
                .env("DEPLOY_SERVER", format!("{}@127.0.0.1", s.user))
                .env("DEPLOY_SSH_OPTS", &s.opts),
            None => cmd.env("DEPLOY_LOCAL", "1"),
        };
        run(&mut cmd, "tests/bench/deploy.sh")
    }
}

fn kill_push_app(root: &Path) {
    if let Some(pid) = std::fs::read_to_string(root.join("app.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // The script starts the app with setsid: its pid is its group.
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}

/// A private sshd on 127.0.0.1 with a generated host key and client key,
/// for the push script's scp and ssh (bench only: host keys are not checked).
struct Sshd {
    child: Child,
    opts: String,
    user: String,
}

impl Sshd {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            bail!("/usr/sbin/sshd is missing (apt-get install openssh-server)");
        }
        std::fs::create_dir_all(dir)?;
        for key in ["host_key", "client_key"] {
            run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(key)),
                "ssh-keygen",
            )?;
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        // sshd's privilege separation dir.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nUseDNS no\nSubsystem sftp internal-sftp\n",
                d = dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start sshd")?;
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into());
        let s = Sshd {
            child,
            opts: format!(
                "-o Port={port} -i {}/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
                dir.display()
            ),
            user,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = Command::new("ssh")
                .args(s.opts.split_whitespace())
                .arg(format!("{}@127.0.0.1", s.user))
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if ok {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                bail!(
                    "ssh to the private sshd never worked; sshd said: {}",
                    log.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites the change file (temp + rename): a new 15 KB content per `seed`.
fn write_change(work: &Path, seed: usize) -> anyhow::Result<()> {
    let mut text = String::with_capacity(CHANGE_BYTES + 64);
    let mut i = 0;
    while text.len() < CHANGE_BYTES {
        text.push_str(&format!(
            "change {seed} line {i}: the one file a small release changes\n"
        ));
        i += 1;
    }
    let tmp = work.join(format!(".{CHANGE_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, work.join(CHANGE_FILE))?;
    Ok(())
}

struct TreeStats {
    bytes: u64,
    files: u64,
    entries: u64,
}

impl TreeStats {
    fn of(dir: &Path) -> anyhow::Result<Self> {
        let mut s = TreeStats {
            bytes: 0,
            files: 0,
            entries: 0,
        };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let m = e.path().symlink_metadata()?;
                s.entries += 1;
                if m.is_dir() {
                    stack.push(e.path());
                } else if m.is_file() {
                    s.files += 1;
                    s.bytes += m.len();
                }
            }
        }
        Ok(s)
    }
}

/// CPU seconds of this process's waited-for children (/proc/self/stat).
fn children_cpu() -> f64 {
    stat_ticks("self", 13) // cutime, cstime
}

/// CPU seconds a process used so far (utime + stime).
fn proc_cpu(pid: u32) -> f64 {
    stat_ticks(&pid.to_string(), 11)
}

/// Two consecutive /proc/<pid>/stat fields (counted after the command's
/// closing parenthesis) summed, in seconds (USER_HZ is 100 on Linux).
fn stat_ticks(pid: &str, first: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(first)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile = exe.parent().context("exe dir")?;
    Ok(profile.parent().context("target dir")?.to_path_buf())
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() < 2 {
        String::new()
    } else {
        format!(" ({lo:.2}–{hi:.2})")
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", mib(b))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |s| format!("{s:.2} s"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |s| format!("{s:.2} s"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |s| format!("{s:.2}×"))
}

fn print_table(all: &[Round], long: Option<&LongRun>, stats: &TreeStats, rounds: usize, ssh: bool) {
    let col = |f: &dyn Fn(&Round) -> f64| all.iter().map(f).collect::<Vec<f64>>();
    let colo = |f: &dyn Fn(&Round) -> Option<f64>| all.iter().filter_map(f).collect::<Vec<f64>>();
    let mbps = |secs: f64| mib(stats.bytes) / secs;

    let e2e = col(&|r| r.publish + r.deploy);
    let script = col(&|r| r.script);
    let e2e_ratio = col(&|r| (r.publish + r.deploy) / r.script);
    let publish = col(&|r| r.publish);
    let pack = col(&|r| r.pack_peer);
    let thr_ratio = col(&|r| r.pack_peer / r.publish);
    let install = colo(&|r| r.install_full);
    let unpack = col(&|r| r.unpack_peer);
    let install_ratio = colo(&|r| Some(r.install_full? / r.unpack_peer));
    let one_e2e = col(&|r| r.publish_one + r.deploy_one);
    let one_e2e_ratio = col(&|r| (r.publish_one + r.deploy_one) / r.script_one);
    let one_install = colo(&|r| r.install_one);
    let cpal = col(&|r| r.cpal_peer);
    let one_vs_limit = colo(&|r| Some(r.install_one? / r.unpack_peer));
    let one_vs_cpal = colo(&|r| Some(r.install_one? / r.cpal_peer));
    let one_pct = colo(&|r| Some(100.0 * r.one_bytes?.0 as f64 / r.full_blob? as f64));
    let one_bytes = colo(&|r| Some(r.one_bytes?.0 as f64));
    let full_blob = colo(&|r| Some(r.full_blob? as f64));
    let source = all
        .iter()
        .find_map(|r| r.one_bytes.map(|b| b.1))
        .unwrap_or("n/a");
    let zst = col(&|r| r.tar_zst_bytes as f64);
    let m = |v: &[f64]| median(v.to_vec());
    let mf = |v: &[f64], f: &dyn Fn(f64) -> String| m(v).map_or_else(|| "n/a".to_string(), f);

    println!();
    println!(
        "| what | Slipway | reference | Slipway ÷ reference (median of per-round ratios) | target |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| publish + deploy, end to end (fresh host; deploy --wait until healthy) | {} (publish {} + deploy {}) | push script `tests/bench/deploy.sh` (tar+zstd, {}, unpack, `ln -sfn`, restart, curl): {} | {}{} | ≤ 0.5× (2× faster) |",
        secs(m(&e2e)),
        secs(m(&publish)),
        secs(m(&col(&|r| r.deploy))),
        if ssh { "scp" } else { "local cp: no sshd" },
        secs(m(&script)),
        times(m(&e2e_ratio)),
        range(&e2e_ratio),
    );
    println!(
        "| publish (pack + upload), {} tree | {}, {} MiB/s, CPU {} | `tar -c \\| zstd -3 -T0` to a file: {}, {} MiB/s, CPU {} | throughput {}{} | ≥ 0.9× |",
        human(stats.bytes),
        secs(m(&publish)),
        mf(&publish, &|s| format!("{:.0}", mbps(s))),
        secs(m(&col(&|r| r.publish_cpu))),
        secs(m(&pack)),
        mf(&pack, &|s| format!("{:.0}", mbps(s))),
        secs(m(&col(&|r| r.pack_peer_cpu))),
        times(m(&thr_ratio)),
        range(&thr_ratio),
    );
    println!(
        "| republish of an unchanged tree (new version) | {}{} | — | — | ≤ 0.5 s |",
        secs(m(&col(&|r| r.republish))),
        range(&col(&|r| r.republish)),
    );
    println!(
        "| agent install (deploy starts on the agent → `current` flips) | {} | `zstd -d \\| tar -x` of the tree's tar.zst ({}): {} | {}{} | ≤ 1.15× |",
        secs(m(&install)),
        m(&zst).map_or("n/a".into(), |b| human(b as u64)),
        secs(m(&unpack)),
        times(m(&install_ratio)),
        range(&install_ratio),
    );
    println!(
        "| one file changed: bytes to the agent ({source}) | {} = {} of the full artifact ({}) | the changed file: {} | {} | ≤ 1% |",
        m(&one_bytes).map_or("n/a".into(), |b| human(b as u64)),
        mf(&one_pct, &|p| format!("{p:.1}%")),
        m(&full_blob).map_or("n/a".into(), |b| human(b as u64)),
        human(CHANGE_BYTES as u64),
        mf(&one_pct, &|p| format!("{p:.1}%")),
    );
    println!(
        "| one file changed: publish + deploy, end to end (the host runs the previous release) | {} (publish {} + deploy {}) | push script, same change (the whole tree again): {} | {}{} | ≤ 0.5× (2× faster) |",
        secs(m(&one_e2e)),
        secs(m(&col(&|r| r.publish_one))),
        secs(m(&col(&|r| r.deploy_one))),
        secs(m(&col(&|r| r.script_one))),
        times(m(&one_e2e_ratio)),
        range(&one_e2e_ratio),
    );
    println!(
        "| one file changed: install | {} | `cp -al` of the tree: {}; full unpack limit: {} | {}{} of the full unpack limit; {} of `cp -al` | ≤ 0.2× the full unpack limit |",
        secs(m(&one_install)),
        secs(m(&cpal)),
        secs(m(&unpack)),
        times(m(&one_vs_limit)),
        range(&one_vs_limit),
        times(m(&one_vs_cpal)),
    );
    let manifest = all.iter().find_map(|r| r.manifest);
    println!(
        "| manifest of the release ({} entries) | {} raw (in the controller's store; what a directive carries is not visible from outside) | zstd -3: {} | — | directive a few hundred bytes |",
        stats.entries,
        manifest.map_or("n/a".into(), |(raw, _)| human(raw)),
        manifest.map_or("n/a".into(), |(_, z)| human(z)),
    );
    let hwm_c = col(&|r| r.controller_hwm as f64 / 1024.0);
    let hwm_a = col(&|r| r.agent_hwm as f64 / 1024.0);
    println!(
        "| peak RSS (VmHWM), fresh controller / agent over a round (2 installs) | {} / {} MiB (max {:.1} / {:.1}) | — | — | < 64 MiB |",
        mf(&hwm_c, &|v| format!("{v:.1}")),
        mf(&hwm_a, &|v| format!("{v:.1}")),
        hwm_c.iter().copied().fold(0.0, f64::max),
        hwm_a.iter().copied().fold(0.0, f64::max),
    );
    let list = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    match long {
        Some(long) => println!(
            "| long-running agent: RSS after each of {} installs (first full, then one file changed each) | {} MiB (peak {:.1}); controller {} MiB (peak {:.1}) | — | — | < 64 MiB, stops growing |",
            long.agent_rss.len(),
            list(&long.agent_rss),
            long.agent_hwm as f64 / 1024.0,
            list(&long.controller_rss),
            long.controller_hwm as f64 / 1024.0,
        ),
        None => println!(
            "| long-running agent: RSS after each install | n/a (the long run failed) | — | — | < 64 MiB, stops growing |"
        ),
    }
    println!();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{rounds} round(s), medians (ranges in brackets), ratios taken pair by pair within each round; {cores} cores; tree: {} in {} files ({} entries); push script {}.",
        human(stats.bytes),
        stats.files,
        stats.entries,
        if ssh {
            "over ssh/scp to a private sshd on 127.0.0.1"
        } else {
            "WITHOUT ssh (no sshd could run: local cp instead of scp)"
        },
    );
}
