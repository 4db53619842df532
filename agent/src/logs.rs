//! `slipway-agent logs APP [-f] [-n N] [--process P] [--grep RE]`: an app's
//! output on this host, without the controller. The supervise backend's
//! `logs/<process>.log` files (their last lines, then, with `-f`, what is
//! appended, across copy-and-truncate rotations); the systemd and command
//! backends' journal through `journalctl`. Every line is prefixed by its
//! process, has the host's env-file values masked (as hook output is) and its
//! control characters escaped, and is cut past `MAX_LINE_BYTES`.

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AgentConfig, AppConfig, Backend};
use crate::paths::AppPaths;

/// Most lines `-n` may ask for.
pub const MAX_LINES: usize = 10_000;
/// A longer line is cut (marked).
const MAX_LINE_BYTES: usize = 8 * 1024;
/// How far back from a log's end the last lines are looked for.
const MAX_TAIL_BYTES: u64 = 16 * 1024 * 1024;
/// Largest compiled `--grep` pattern.
const MAX_PATTERN_BYTES: usize = 1 << 20;
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no app {app:?} on this host (apps: {})", known.join(", "))]
    UnknownApp { app: String, known: Vec<String> },
    #[error("app {app} has no process {process:?} with a log (processes: {})", known.join(", "))]
    UnknownProcess {
        app: String,
        process: String,
        known: Vec<String>,
    },
    #[error("-n: at most {MAX_LINES} lines")]
    TooManyLines,
    #[error("--grep: {0}")]
    Pattern(String),
    /// Whoever reads the output went away (`| head`).
    #[error("output closed")]
    Closed,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogsError {
    let what = what.into();
    move |source| {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            LogsError::Closed
        } else {
            LogsError::Io { what, source }
        }
    }
}

/// What to show.
#[derive(Debug, Clone)]
pub struct Query {
    pub process: Option<String>,
    pub lines: usize,
    pub follow: bool,
    pub grep: Option<String>,
}

/// A compiled `--grep`: linear time (the `regex` crate), bounded size.
pub fn pattern(re: &str) -> Result<regex::Regex, LogsError> {
    regex::RegexBuilder::new(re)
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|e| {
            LogsError::Pattern(
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            )
        })
}

/// One line as shown: masked, escaped, cut.
fn shown(process: &str, line: &str, secrets: &[String]) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let masked = crate::envfile::redact(line, secrets.iter());
    let mut out = String::with_capacity(masked.len() + process.len() + 3);
    out.push('[');
    out.push_str(process);
    out.push_str("] ");
    for c in masked.chars() {
        if out.len() >= MAX_LINE_BYTES {
            out.push_str("…[cut]");
            break;
        }
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines of `path`, read from at most `MAX_TAIL_BYTES` before
/// its end; and the offset its end was at.
fn tail(path: &Path, n: usize) -> Result<(Vec<String>, u64), LogsError> {
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    let from = len.saturating_sub(MAX_TAIL_BYTES);
    f.seek(SeekFrom::Start(from))
        .map_err(io(format!("read {}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(len - from)
        .read_to_end(&mut bytes)
        .map_err(io(format!("read {}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // began mid-line
    }
    let skip = lines.len().saturating_sub(n);
    Ok((lines[skip..].iter().map(|l| l.to_string()).collect(), len))
}

/// The processes with a log file, by name.
fn log_files(paths: &AppPaths) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&paths.logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_name()?.to_str()?.strip_suffix(".log")?.to_string();
            Some((name, p))
        })
        .collect();
    out.sort();
    out
}

/// Prints the app's output to `out` per `q` (with `-f`, until `stop` is set
/// or `out` fails).
pub fn show(
    cfg: &AgentConfig,
    app: &str,
    q: &Query,
    out: &mut dyn Write,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), LogsError> {
    let Some(app_cfg) = cfg.apps.get(app) else {
        return Err(LogsError::UnknownApp {
            app: app.to_string(),
            known: cfg.apps.keys().cloned().collect(),
        });
    };
    if q.lines > MAX_LINES {
        return Err(LogsError::TooManyLines);
    }
    let grep = q.grep.as_deref().map(pattern).transpose()?;
    let paths = AppPaths::for_app(&cfg.state_dir, app, app_cfg);
    let secrets = crate::app::env_secrets(app_cfg, &paths);
    if app_cfg.service != Backend::Supervise {
        return journal(app, app_cfg, q, grep.as_ref(), &secrets, out);
    }
    let mut files = log_files(&paths);
    if let Some(p) = &q.process {
        let known: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        files.retain(|(n, _)| n == p);
        if files.is_empty() {
            return Err(LogsError::UnknownProcess {
                app: app.to_string(),
                process: p.clone(),
                known,
            });
        }
    }
    let keep = |line: &str| grep.as_ref().is_none_or(|re| re.is_match(line));
    let write = |out: &mut dyn Write, line: String| -> Result<(), LogsError> {
        writeln!(out, "{line}").map_err(io("write"))
    };
    let mut offsets = Vec::with_capacity(files.len());
    for (process, path) in &files {
        let (lines, end) = tail(path, if grep.is_some() { usize::MAX } else { q.lines })?;
        let matching: Vec<&String> = lines.iter().filter(|l| keep(l)).collect();
        let skip = matching.len().saturating_sub(q.lines);
        for l in &matching[skip..] {
            write(out, shown(process, l, &secrets))?;
        }
        offsets.push(end);
    }
    out.flush().map_err(io("write"))?;
    if !q.follow {
        return Ok(());
    }
    let mut partial: Vec<String> = vec![String::new(); files.len()];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (i, (process, path)) in files.iter().enumerate() {
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < offsets[i] {
                // Rotated (copied, then truncated): read it from the start.
                offsets[i] = 0;
                partial[i].clear();
            }
            if len == offsets[i] || f.seek(SeekFrom::Start(offsets[i])).is_err() {
                continue;
            }
            let mut reader = std::io::BufReader::new(f.take(MAX_TAIL_BYTES));
            let mut buf = Vec::new();
            loop {
                let n = read_line(&mut reader, &mut buf).map_err(io("read"))?;
                if n == 0 {
                    break;
                }
                offsets[i] += n as u64;
                let text = String::from_utf8_lossy(&buf);
                if !text.ends_with('\n') {
                    // A line still being written: kept up to what is shown.
                    if partial[i].len() < MAX_LINE_BYTES {
                        partial[i].push_str(&text);
                    }
                    continue;
                }
                let mut line = std::mem::take(&mut partial[i]);
                line.push_str(text.trim_end_matches('\n'));
                if keep(&line) {
                    write(out, shown(process, &line, &secrets))?;
                }
            }
        }
        out.flush().map_err(io("write"))?;
        std::thread::sleep(FOLLOW_POLL);
    }
    Ok(())
}

/// Reads one line into `buf`, keeping at most `MAX_LINE_BYTES` of it (the
/// rest is read and dropped, so a line without end never fills memory).
/// Returns the bytes consumed; `buf` ends with '\n' unless input ended.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    let mut consumed = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(consumed);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        if done && !buf.ends_with(b"\n") {
            buf.push(b'\n');
        }
        r.consume(take);
        consumed += take;
        if done {
            return Ok(consumed);
        }
    }
}

/// The journal of the app's units (systemd and command backends).
fn journal(
    app: &str,
    cfg: &AppConfig,
    q: &Query,
    grep: Option<&regex::Regex>,
    secrets: &[String],
    out: &mut dyn Write,
) -> Result<(), LogsError> {
    let processes: Vec<String> = match &q.process {
        Some(p) => vec![p.clone()],
        None if cfg.units.is_empty() => vec![String::from("*")],
        None => cfg.units.keys().cloned().collect(),
    };
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["--no-pager", "-o", "cat", "-n", &q.lines.to_string()]);
    for p in &processes {
        let unit = if p == "*" {
            format!("{app}-*.service")
        } else {
            cfg.unit(app, p)
        };
        cmd.arg("-u").arg(unit);
    }
    if q.follow {
        cmd.arg("-f");
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(io("run journalctl"))?;
    let stdout = child.stdout.take().expect("piped");
    let label = processes.join(",");
    let mut reader = std::io::BufReader::new(stdout);
    let mut buf = Vec::new();
    while read_line(&mut reader, &mut buf).map_err(io("read journalctl"))? > 0 {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches('\n');
        if grep.is_none_or(|re| re.is_match(line)) {
            writeln!(out, "{}", shown(&label, line, secrets)).map_err(io("write"))?;
        }
    }
    let _ = child.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_masked_escaped_and_cut() {
        let secrets = vec!["s3cr3t-value".to_string()];
        assert_eq!(
            shown("web", "db=s3cr3t-value \x1b[31mred\x07", &secrets),
            "[web] db=*** \\u{1b}[31mred\\u{7}"
        );
        let long = "x".repeat(MAX_LINE_BYTES * 2);
        let s = shown("web", &long, &[]);
        assert!(
            s.ends_with("…[cut]") && s.len() < MAX_LINE_BYTES + 16,
            "{}",
            s.len()
        );
    }

    #[test]
    fn a_line_without_end_is_read_whole_but_kept_bounded() {
        let long = format!("{}\nnext\n", "y".repeat(MAX_LINE_BYTES * 4));
        let mut r = std::io::BufReader::with_capacity(1024, long.as_bytes());
        let mut buf = Vec::new();
        let n = read_line(&mut r, &mut buf).unwrap();
        assert_eq!(n, MAX_LINE_BYTES * 4 + 1, "the whole line is consumed");
        assert!(buf.len() <= MAX_LINE_BYTES + 2 && buf.ends_with(b"\n"));
        read_line(&mut r, &mut buf).unwrap();
        assert_eq!(buf, b"next\n");
        assert_eq!(read_line(&mut r, &mut buf).unwrap(), 0);
    }

    #[test]
    fn the_last_lines_come_from_the_end_and_a_pattern_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("web.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        let (lines, end) = tail(&p, 3).unwrap();
        assert_eq!(lines, ["line 98", "line 99", "line 100"]);
        assert_eq!(end, text.len() as u64);
        assert!(pattern("line [0-9]+").is_ok());
        let e = pattern("(").unwrap_err().to_string();
        assert!(e.starts_with("--grep: "), "{e}");
        let e = pattern("(a{1000}){1000}").unwrap_err().to_string();
        assert!(e.contains("exceeds size limit"), "{e}");
    }
}
