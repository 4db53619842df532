//! `slipway-agent`: load the config, init logging, run until SIGTERM/SIGINT.
//! Exits 64 on a bad config so systemd does not restart it in a loop.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Slipway's host agent: pulls, installs, activates and checks releases.
/// Without a subcommand it runs the agent; the subcommands work on this host's
/// state dir alone, with or without the controller.
#[derive(Parser, Debug)]
#[command(
    name = "slipway-agent",
    version = daemon::VERSION,
    about,
    after_help = "Example:\n  slipway-agent --config /etc/slipway/agent.toml\n  slipway-agent status\n  slipway-agent rollback web"
)]
struct Args {
    /// Agent config file (TOML).
    #[arg(
        long,
        short,
        global = true,
        env = "SLIPWAY_AGENT_CONFIG",
        default_value = "/etc/slipway/agent.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Local>,
}

#[derive(clap::Subcommand, Debug)]
enum Local {
    /// Run the agent (the default).
    Run,
    /// Join the fleet with a one-time token from `slipctl hosts add`: enroll,
    /// write the config from the certificate (host, tenant, environment) when
    /// there is none, enable and start the slipway-agent unit, and wait until
    /// the agent has connected. Running it again is harmless.
    #[command(
        after_help = "Example:\n  slipway-agent join https://mothership.internal:7400 swj_…\n  slipway-agent join swj_…   # the config names the controller"
    )]
    Join {
        /// The controller's URL (omit it when the config names one), then the
        /// join token (`-`: read it from stdin).
        #[arg(required = true, num_args = 1..=2, value_name = "URL] [TOKEN")]
        args: Vec<String>,
        /// Enroll and write the config only: do not touch the unit.
        #[arg(long)]
        no_start: bool,
        /// State dir of a config written by this join.
        #[arg(long, default_value = "/var/lib/slipway")]
        state_dir: PathBuf,
        /// Seconds to wait for the agent to connect once started.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// What each app on this host runs, and how it is doing.
    #[command(after_help = "Example:\n  slipway-agent status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The releases of APP kept on this host.
    #[command(after_help = "Example:\n  slipway-agent releases web")]
    Releases { app: String },
    /// Switch APP back to an earlier release kept on this host, health-checked.
    #[command(
        after_help = "Example:\n  slipway-agent rollback web\n  slipway-agent rollback web --to 1.4.1"
    )]
    Rollback {
        app: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// APP's output on this host: the last lines of each process, env-file
    /// values masked; -f follows what it writes.
    #[command(
        after_help = "Example:\n  slipway-agent logs web -n 50\n  slipway-agent logs web --process worker -f\n  slipway-agent logs web --grep 'ERROR|panic'"
    )]
    Logs {
        /// The app.
        app: String,
        /// Only this process.
        #[arg(long)]
        process: Option<String>,
        /// Lines per process (at most 10000).
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing what the app writes, until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Only lines matching this regular expression.
        #[arg(long, value_name = "RE")]
        grep: Option<String>,
        /// Only lines written in this last while (30s, 10m, 2h, 1d).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// Internal: print the man page or shell completions (for the package).
    #[command(hide = true)]
    Generate { doc: daemon::docs::Doc },
    /// Internal: unpack the blob on stdin against a manifest file into DEST.
    /// The agent runs this as the app's user, so archives are never read as root.
    #[command(hide = true)]
    Unpack {
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        dest: PathBuf,
        /// JSON list of files on this host to link instead of unpacking.
        #[arg(long)]
        local: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    daemon::tune_allocator();
    let args = Args::parse();
    if let Some(Local::Unpack {
        manifest,
        dest,
        local,
    }) = &args.command
    {
        // Runs as the app's user, before (and without) the agent's config.
        return match agent::install::unpack_child(manifest, dest, local.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Local::Generate { doc }) = &args.command {
        let cmd = <Args as clap::CommandFactory>::command();
        return match daemon::docs::print(cmd, *doc, 8) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    daemon::init_tracing();
    if let Some(Local::Join {
        args: words,
        no_start,
        state_dir,
        timeout,
    }) = args.command
    {
        return join(words, &args.config, no_start, state_dir, timeout);
    }
    let cfg = match agent::config::AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = match args.command {
        None | Some(Local::Run) => None,
        Some(cmd) => Some(cmd),
    };
    if let Some(cmd) = local {
        // The apps this host runs: its own and those the controller declared.
        let cfg = cfg.with_declared(&agent::declared::Declared::load(&cfg.state_dir));
        let result = match cmd {
            Local::Status { json } => agent::local::status(&cfg, json).map_err(|e| e.to_string()),
            Local::Releases { app } => {
                agent::local::releases(&cfg, &app).map_err(|e| e.to_string())
            }
            Local::Rollback { app, to } => {
                let actor = std::env::var("SUDO_USER")
                    .or_else(|_| std::env::var("USER"))
                    .unwrap_or_else(|_| format!("uid:{}", nix::unistd::getuid()));
                rt.block_on(agent::local::rollback(&cfg, &app, to, &actor))
                    .map_err(|e| e.to_string())
            }
            Local::Logs {
                app,
                process,
                lines,
                follow,
                grep,
                since,
            } => {
                // -f ends with the command (Ctrl-C) or its reader (a closed pipe).
                let stop = std::sync::atomic::AtomicBool::new(false);
                let q = agent::logs::Query {
                    process,
                    lines,
                    follow,
                    grep,
                    since,
                    until: None,
                    deadline: None,
                    deploy_log: false,
                    max_bytes: usize::MAX,
                };
                let mut out = std::io::stdout().lock();
                match agent::logs::show(&cfg, &app, &q, &mut out, &stop) {
                    Err(agent::logs::LogsError::Closed) => Ok(()),
                    r => r.map_err(|e| e.to_string()),
                }
            }
            Local::Run | Local::Join { .. } | Local::Generate { .. } | Local::Unpack { .. } => {
                Ok(())
            }
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"),
        commit = daemon::COMMIT, config = %args.config.display(), "slipway-agent starting");
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(daemon::cancel_on_signal(
            shutdown.clone(),
            "shutting down; apps keep running",
        ));
        match agent::run(cfg, Some(args.config.clone()), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "agent failed");
                ExitCode::from(1)
            }
        }
    })
}

/// `slipway-agent join`: see `agent::join`.
fn join(
    words: Vec<String>,
    config: &std::path::Path,
    no_start: bool,
    state_dir: PathBuf,
    timeout: u64,
) -> ExitCode {
    let (controller, token) = match words.as_slice() {
        [token] => (None, token.clone()),
        [url, token] => (Some(url.clone()), token.clone()),
        _ => unreachable!("clap takes one or two"),
    };
    let token = if token == "-" {
        let mut t = String::new();
        let _ = std::io::stdin().read_line(&mut t);
        t.trim().to_string()
    } else {
        token
    };
    let req = agent::join::JoinRequest {
        controller,
        token,
        config: config.to_path_buf(),
        state_dir,
        start: !no_start,
        timeout: std::time::Duration::from_secs(timeout),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(agent::join::join(&req)) {
        Ok(j) => {
            let id = &j.identity;
            if j.enrolled_now {
                println!(
                    "enrolled {} in {}/{}; certificate valid until {}",
                    id.host, id.tenant, id.environment, id.not_after
                );
            } else {
                println!(
                    "already enrolled as {} in {}/{}; the token was not used",
                    id.host, id.tenant, id.environment
                );
            }
            if j.config_written {
                println!("wrote {}", config.display());
            }
            match j.connected_after {
                Some(d) => println!("agent connected after {:.1}s", d.as_secs_f64()),
                None if no_start => {}
                None => println!(
                    "no systemd here: start the agent with `slipway-agent --config {}`",
                    config.display()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}
