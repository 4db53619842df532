//! `slipway-agent logs APP [-f] [-n N] [--process P] [--grep RE]`: an app's
//! output on this host, without the controller. The supervise backend's
//! `logs/<process>.log` files (their last lines, then, with `-f`, what is
//! appended, across copy-and-truncate rotations); the systemd and command
//! backends' journal through `journalctl`. Every line is prefixed by its
//! process, has the host's env-file values masked (as hook output is) and its
//! control characters escaped, and is cut past `MAX_LINE_BYTES`.

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    #[error("--since: at most 90 days")]
    TooLongAgo,
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
    /// Only lines written in this last while (at the grain of the marks).
    pub since: Option<Duration>,
    /// Only lines written before this long ago (a search's time range).
    pub until: Option<Duration>,
    /// A search (`grep`, no `follow`) stops reading after this long and
    /// says so.
    pub deadline: Option<Duration>,
    /// The app's deploy log (its last `lines` steps) instead of its output.
    pub deploy_log: bool,
    /// Bytes of lines a search keeps at most (its newest matches).
    pub max_bytes: usize,
}

/// Longest a search may read a host's logs.
pub const MAX_SEARCH_TIME: Duration = Duration::from_secs(60);
/// What a search reads at once (a block without a match is skipped whole).
const SCAN_BLOCK: usize = 1 << 20;

/// Where `show` writes: lines, and for a search, when each was written.
pub trait Out: Write {
    /// When the next line was written (unix seconds, at the grain of the
    /// marks); an output without a place for it ignores it.
    fn stamp(&mut self, _at: u64) {}
}

impl Out for std::io::StdoutLock<'_> {}
impl Out for Vec<u8> {}

/// Longest `--since`.
pub const MAX_SINCE: Duration = Duration::from_secs(90 * 24 * 3600);
/// A marks file past this keeps its newer half.
const MAX_MARKS_BYTES: u64 = 64 * 1024;

fn marks_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_os_string();
    p.push(".marks");
    PathBuf::from(p)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The marks of a log: (unix seconds, the log's length then), oldest first.
fn read_marks(log: &Path) -> Vec<(u64, u64)> {
    let Ok(f) = std::fs::File::open(marks_path(log)) else {
        return Vec::new();
    };
    let mut text = String::new();
    let _ = f.take(MAX_MARKS_BYTES * 2).read_to_string(&mut text);
    text.lines()
        .filter_map(|l| {
            let (t, o) = l.split_once(' ')?;
            Some((t.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

/// Notes how long each of the app's process logs is now, when it grew: the
/// supervise backend's lines carry no time of their own, and `--since`
/// starts from the last mark before the time asked (so at the grain of the
/// monitor round). A log that shrank (rotated) starts its marks again.
pub fn mark(paths: &AppPaths) {
    for (_, log) in log_files(paths) {
        let Ok(log_meta) = std::fs::metadata(&log) else {
            continue;
        };
        let len = log_meta.len();
        let marks = marks_path(&log);
        let marks_meta = std::fs::metadata(&marks).ok();
        // Nothing written since the last mark: two stats, no read (this runs
        // every monitor round for every process).
        let modified = |m: &std::fs::Metadata| m.modified().ok();
        if let Some(mm) = &marks_meta
            && modified(&log_meta).is_some_and(|l| modified(mm).is_some_and(|m| l <= m))
        {
            continue;
        }
        let size = marks_meta.map_or(0, |m| m.len());
        let last = if size == 0 {
            None
        } else {
            read_marks(&log).last().copied()
        };
        if last.is_some_and(|(_, at)| at == len) {
            continue;
        }
        let mut kept: Vec<(u64, u64)> = match last {
            Some((_, at)) if at > len => Vec::new(),
            _ if size > MAX_MARKS_BYTES => {
                let all = read_marks(&log);
                all[all.len() / 2..].to_vec()
            }
            _ => {
                append_mark(&marks, unix_now(), len);
                continue;
            }
        };
        kept.push((unix_now(), len));
        let text: String = kept.iter().map(|(t, o)| format!("{t} {o}\n")).collect();
        let _ = std::fs::write(&marks, text);
    }
}

fn append_mark(marks: &Path, at: u64, len: u64) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marks)
    {
        let _ = writeln!(f, "{at} {len}");
    }
}

/// When `path` last changed (unix seconds; 0 when unknown).
fn modified_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Where lines written since `cutoff` (unix seconds) begin in `log`: None
/// when the log was not written since.
fn since_offset(log: &Path, cutoff: u64) -> Option<u64> {
    if modified_secs(log) < cutoff {
        return None;
    }
    Some(
        read_marks(log)
            .iter()
            .rev()
            .find(|(t, _)| *t <= cutoff)
            .map_or(0, |(_, o)| *o),
    )
}

/// The last `n` steps of the app's deploy log, one readable line each
/// (`step outcome version: detail`), stamped with when it was written.
fn deploy_steps(
    paths: &AppPaths,
    n: usize,
    secrets: &[String],
    out: &mut dyn Out,
) -> Result<(), LogsError> {
    if !paths.deploy_log.exists() {
        return out.flush().map_err(io("write"));
    }
    let (lines, _) = tail(&paths.deploy_log, n, 0)?;
    for line in lines {
        #[derive(serde::Deserialize)]
        struct Step {
            ts: i64,
            version: String,
            step: String,
            outcome: String,
            #[serde(default)]
            detail: String,
        }
        let Ok(step) = serde_json::from_str::<Step>(&line) else {
            continue;
        };
        let mut text = format!("{} {} {}", step.step, step.outcome, step.version);
        if !step.detail.is_empty() {
            text.push_str(": ");
            text.push_str(&step.detail);
        }
        out.stamp(u64::try_from(step.ts).unwrap_or(0));
        writeln!(out, "{}", shown("deploy", &text, secrets)).map_err(io("write"))?;
    }
    out.flush().map_err(io("write"))
}

/// Keeps the last `n` lines of `found`, and of those the newest that fit
/// in `max_bytes` (a search's answer keeps its last matches, not its first).
fn keep_last(found: &mut Vec<(u64, String)>, n: usize, max_bytes: usize) {
    let skip = found.len().saturating_sub(n);
    found.drain(..skip);
    let mut bytes = 0usize;
    let fits = found
        .iter()
        .rev()
        .take_while(|(_, l)| {
            bytes = bytes.saturating_add(l.len() + 64);
            bytes <= max_bytes
        })
        .count();
    let skip = found.len() - fits;
    found.drain(..skip);
}

/// The rotated copies of `log` (`<log>.1` newest … `<log>.N`), oldest first.
fn rotated_logs(log: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for n in 1..=100u32 {
        let p = PathBuf::from(format!("{}.{n}", log.display()));
        if !p.is_file() {
            break;
        }
        out.push(p);
    }
    out.reverse();
    out
}

/// Says that a search stopped at its deadline, in `process`'s log.
fn stopped(out: &mut dyn Out, process: &str, q: &Query) -> Result<(), LogsError> {
    writeln!(
        out,
        "[slipway] search stopped after {}s in {process}'s logs: narrow the time range",
        q.deadline.unwrap_or(MAX_SEARCH_TIME).as_secs()
    )
    .map_err(io("write"))
}

/// Where lines written before `until` (unix seconds) end in `log`: the
/// offset of the last mark at or before it (0 before every mark), or the
/// whole log when it was not written since.
fn until_offset(log: &Path, until: u64) -> u64 {
    if modified_secs(log) <= until {
        return u64::MAX;
    }
    read_marks(log)
        .iter()
        .rev()
        .find(|(t, _)| *t <= until)
        .map_or(0, |(_, o)| *o)
}

/// What a search found in one log: its last matching lines, each with when
/// it was written, and whether the deadline stopped it.
struct Found {
    lines: Vec<(u64, String)>,
    stopped: bool,
}

/// The last `n` lines of `path` between `start` and `end` whose masked
/// text matches `re`, read in blocks: a block where neither the pattern nor
/// an env-file value occurs is skipped without splitting it into lines, so
/// a rare string is found at the speed of the regex's literal scan. Memory
/// stays at a block and the lines kept.
#[expect(
    clippy::too_many_arguments,
    reason = "a search's every bound, named at its one call"
)]
fn search(
    path: &Path,
    start: u64,
    end: u64,
    re: &regex::Regex,
    secrets: &[String],
    n: usize,
    deadline: std::time::Instant,
    stop: &AtomicBool,
) -> Result<Found, LogsError> {
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    let end = end.min(len);
    let start = start.min(end);
    f.seek(SeekFrom::Start(start))
        .map_err(io(format!("read {}", path.display())))?;
    let mut reader = f.take(end - start);
    // Whether a block may hold a match, asked of the whole block: `^` and
    // `$` must match at its lines' ends too (a multi-line copy of the
    // pattern, only when it has them). A pattern anchored to the text's ends
    // (`\A`, `\z`) is checked line by line only.
    let pattern = re.as_str();
    let block_re = if pattern.contains("\\A") || pattern.contains("\\z") {
        None
    } else if pattern.contains('^') || pattern.contains('$') {
        regex::RegexBuilder::new(pattern)
            .multi_line(true)
            .size_limit(MAX_PATTERN_BYTES)
            .build()
            .ok()
    } else {
        Some(re.clone())
    };
    let mut kept: std::collections::VecDeque<(u64, String)> = std::collections::VecDeque::new();
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_BLOCK + MAX_LINE_BYTES);
    // Offset in the log of buf[0].
    let mut base = start;
    let mut stopped = false;
    loop {
        if std::time::Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            stopped = true;
            break;
        }
        let had = buf.len();
        buf.resize(had + SCAN_BLOCK, 0);
        let got = reader
            .read(&mut buf[had..])
            .map_err(io(format!("read {}", path.display())))?;
        buf.truncate(had + got);
        let done = got == 0;
        // Whole lines only, unless the log ends (or a line outgrows a block).
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            _ if done => buf.len(),
            Some(i) => i + 1,
            None if buf.len() >= SCAN_BLOCK => buf.len(),
            None => continue,
        };
        let block = String::from_utf8_lossy(&buf[..cut]);
        let candidate = block_re.as_ref().is_none_or(|b| b.is_match(&block))
            || secrets.iter().any(|v| block.contains(v.as_str()));
        if candidate {
            // Line by line on the raw bytes: offsets (and so times) stay
            // exact past invalid UTF-8.
            let mut at = base;
            for raw in buf[..cut].split_inclusive(|b| *b == b'\n') {
                at += raw.len() as u64;
                let line = String::from_utf8_lossy(raw);
                let text = line.strip_suffix('\n').unwrap_or(&line);
                if matches(Some(re), text, secrets) {
                    let mut text = text.to_string();
                    if text.len() > MAX_LINE_BYTES {
                        text.truncate(text.floor_char_boundary(MAX_LINE_BYTES));
                    }
                    kept.push_back((at, text));
                    if kept.len() > n {
                        kept.pop_front();
                    }
                }
            }
        }
        base += cut as u64;
        buf.drain(..cut);
        if done {
            break;
        }
    }
    let marks = read_marks(path);
    let modified = modified_secs(path);
    let lines = kept
        .into_iter()
        .map(|(line_end, text)| (written_by(&marks, line_end, modified), text))
        .collect();
    Ok(Found { lines, stopped })
}

/// When the bytes up to `offset` were on disk: the first mark that covers
/// them, or the log's last change when no mark does yet.
fn written_by(marks: &[(u64, u64)], offset: u64, modified: u64) -> u64 {
    marks
        .iter()
        .find(|(_, o)| *o >= offset)
        .map_or(modified, |(t, _)| *t)
}

/// Lines a second one remote query sends at most; past it lines are
/// dropped, and counted in a line of their own.
pub const MAX_REMOTE_RATE: u32 = 1000;
/// Lines sent together.
const BATCH_LINES: usize = 256;
/// Most bytes of lines a query may ask one answer to carry.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Where `show` writes for a remote query: its lines in batches into a
/// channel whose reader sends them on. The last lines asked for go whole
/// (`-n` bounds them); what follows them (`-f`, after `show`'s first flush)
/// at most `MAX_REMOTE_RATE` a second, the rest counted in a line of its
/// own. A closed channel reads as a closed pipe (`LogsError::Closed`).
pub struct Sink {
    tx: tokio::sync::mpsc::Sender<Batch>,
    partial: Vec<u8>,
    batch: Batch,
    /// When the next line was written (`Out::stamp`).
    next_at: u64,
    /// Bytes of lines the answer may still carry; past it lines are
    /// counted, not sent.
    budget: usize,
    over_budget: u64,
    /// Past the last lines: following.
    following: bool,
    window: std::time::Instant,
    in_window: u32,
    dropped: u64,
}

/// Lines sent together, and when each was written (0: not known).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub lines: Vec<String>,
    pub times: Vec<u64>,
}

impl Batch {
    fn push(&mut self, at: u64, line: String) {
        self.lines.push(line);
        self.times.push(at);
    }
}

impl Out for Sink {
    fn stamp(&mut self, at: u64) {
        self.next_at = at;
    }
}

impl Sink {
    /// A sink whose answer carries at most `max_bytes` of lines.
    pub fn new(tx: tokio::sync::mpsc::Sender<Batch>, max_bytes: usize) -> Self {
        Self {
            tx,
            partial: Vec::new(),
            batch: Batch::default(),
            next_at: 0,
            budget: max_bytes,
            over_budget: 0,
            following: false,
            window: std::time::Instant::now(),
            in_window: 0,
            dropped: 0,
        }
    }

    fn line(&mut self, line: String) -> std::io::Result<()> {
        let at = std::mem::take(&mut self.next_at);
        if line.len() > self.budget {
            self.over_budget += 1;
            return Ok(());
        }
        self.budget -= line.len();
        if self.following {
            if self.window.elapsed() >= Duration::from_secs(1) {
                self.window = std::time::Instant::now();
                self.in_window = 0;
                self.note_dropped();
            }
            if self.in_window >= MAX_REMOTE_RATE {
                self.dropped += 1;
                return Ok(());
            }
            self.in_window += 1;
        }
        self.batch.push(at, line);
        if self.batch.lines.len() >= BATCH_LINES {
            self.send()?;
        }
        Ok(())
    }

    fn note_dropped(&mut self) {
        if self.dropped > 0 {
            let n = std::mem::take(&mut self.dropped);
            self.batch.push(
                0,
                format!("[slipway] {n} lines dropped (over {MAX_REMOTE_RATE} lines/s)"),
            );
        }
        if self.over_budget > 0 {
            let n = std::mem::take(&mut self.over_budget);
            self.batch.push(
                0,
                format!("[slipway] {n} more lines left out: the answer reached its size bound"),
            );
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.batch.lines.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.tx
            .blocking_send(batch)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(data);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let rest = self.partial.split_off(i + 1);
            let line = std::mem::replace(&mut self.partial, rest);
            let text = String::from_utf8_lossy(&line[..i]).into_owned();
            self.line(text)?;
        }
        Ok(data.len())
    }

    /// Sends what is batched, saying first how many lines were dropped.
    /// `show` flushes once the last lines are out: what comes after is
    /// followed output, bounded in rate.
    fn flush(&mut self) -> std::io::Result<()> {
        self.note_dropped();
        self.following = true;
        self.send()
    }
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

/// Whether a line, masked, matches `--grep` (none: every line does).
fn matches(grep: Option<&regex::Regex>, line: &str, secrets: &[String]) -> bool {
    grep.is_none_or(|re| re.is_match(&crate::envfile::redact(line, secrets.iter())))
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
/// its end (and not before `start`); and the offset its end was at.
fn tail(path: &Path, n: usize, start: u64) -> Result<(Vec<String>, u64), LogsError> {
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    let from = len.saturating_sub(MAX_TAIL_BYTES).max(start.min(len));
    f.seek(SeekFrom::Start(from))
        .map_err(io(format!("read {}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(len - from)
        .read_to_end(&mut bytes)
        .map_err(io(format!("read {}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && from != start && !lines.is_empty() {
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
    out: &mut dyn Out,
    stop: &AtomicBool,
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
    if q.since.is_some_and(|d| d > MAX_SINCE) || q.until.is_some_and(|d| d > MAX_SINCE) {
        return Err(LogsError::TooLongAgo);
    }
    let grep = q.grep.as_deref().map(pattern).transpose()?;
    let paths = AppPaths::for_app(&cfg.state_dir, app, app_cfg);
    let secrets = crate::app::env_secrets(app_cfg, &paths);
    if q.deploy_log {
        return deploy_steps(&paths, q.lines, &secrets, out);
    }
    if app_cfg.service != Backend::Supervise {
        return journal(app, app_cfg, q, grep.as_ref(), &secrets, out, stop);
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
    // Matched against the line as shown (masked): a pattern must not probe
    // an env-file value character by character.
    let keep = |line: &str| matches(grep.as_ref(), line, &secrets);
    let write = |out: &mut dyn Out, line: String| -> Result<(), LogsError> {
        writeln!(out, "{line}").map_err(io("write"))
    };
    let cutoff = q.since.map(|d| unix_now().saturating_sub(d.as_secs()));
    if let Some(re) = grep.as_ref().filter(|_| !q.follow) {
        let until = q.until.map(|d| unix_now().saturating_sub(d.as_secs()));
        let deadline =
            std::time::Instant::now() + q.deadline.unwrap_or(MAX_SEARCH_TIME).min(MAX_SEARCH_TIME);
        'processes: for (process, path) in &files {
            // Rotated copies first (oldest first, whole: they have no
            // marks; a copy's lines were written after the older copy's last
            // change and by its own), then the live log from its marks.
            let mut found: Vec<(u64, String)> = Vec::new();
            let mut older = 0;
            for rotated in rotated_logs(path) {
                let modified = modified_secs(&rotated);
                let (from, to) = (older, modified);
                older = modified;
                if cutoff.is_some_and(|c| to < c) || until.is_some_and(|u| from >= u) {
                    continue;
                }
                let part = search(&rotated, 0, u64::MAX, re, &secrets, q.lines, deadline, stop)?;
                found.extend(part.lines.into_iter().map(|(_, l)| (modified, l)));
                keep_last(&mut found, q.lines, q.max_bytes);
                if part.stopped {
                    stopped(out, process, q)?;
                    break 'processes;
                }
            }
            let start = match cutoff {
                None => Some(0),
                Some(cutoff) => since_offset(path, cutoff),
            };
            let mut stop_here = false;
            if let Some(start) = start {
                let end = until.map_or(u64::MAX, |t| until_offset(path, t));
                let part = search(path, start, end, re, &secrets, q.lines, deadline, stop)?;
                found.extend(part.lines);
                keep_last(&mut found, q.lines, q.max_bytes);
                stop_here = part.stopped;
            }
            for (at, line) in found {
                out.stamp(at);
                write(out, shown(process, &line, &secrets))?;
            }
            if stop_here {
                stopped(out, process, q)?;
                break;
            }
        }
        return out.flush().map_err(io("write"));
    }
    let mut offsets = Vec::with_capacity(files.len());
    for (process, path) in &files {
        let start = match cutoff {
            None => 0,
            Some(cutoff) => since_offset(path, cutoff).unwrap_or(u64::MAX),
        };
        let (lines, end) = tail(
            path,
            if grep.is_some() { usize::MAX } else { q.lines },
            start,
        )?;
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
    while !stop.load(Ordering::Relaxed) {
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
    out: &mut dyn Out,
    stop: &AtomicBool,
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
    if let Some(d) = q.since {
        cmd.arg(format!("--since=-{}s", d.as_secs()));
    }
    if let Some(d) = q.until {
        cmd.arg(format!("--until=-{}s", d.as_secs()));
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
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let done = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        // `journalctl -f` waits for lines: stopped when the reader is.
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if stop.load(Ordering::Relaxed) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    return;
                }
                std::thread::sleep(FOLLOW_POLL);
            }
        });
        let r = copy_journal(stdout, &label, grep, secrets, out);
        done.store(true, Ordering::Relaxed);
        r
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn copy_journal(
    stdout: std::process::ChildStdout,
    label: &str,
    grep: Option<&regex::Regex>,
    secrets: &[String],
    out: &mut dyn Out,
) -> Result<(), LogsError> {
    let mut reader = std::io::BufReader::new(stdout);
    let mut buf = Vec::new();
    while read_line(&mut reader, &mut buf).map_err(io("read journalctl"))? > 0 {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches('\n');
        if matches(grep, line, secrets) {
            writeln!(out, "{}", shown(label, line, secrets)).map_err(io("write"))?;
        }
        if reader.buffer().is_empty() {
            out.flush().map_err(io("write"))?;
        }
    }
    out.flush().map_err(io("write"))
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
    fn a_remote_sink_sends_the_last_lines_whole_then_drops_past_its_rate_saying_how_many() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut sink = Sink::new(tx, usize::MAX);
        let received = |rx: &mut tokio::sync::mpsc::Receiver<Batch>| {
            let mut got: Vec<String> = Vec::new();
            while let Ok(batch) = rx.try_recv() {
                assert!(batch.lines.len() <= BATCH_LINES);
                assert_eq!(batch.lines.len(), batch.times.len());
                got.extend(batch.lines);
            }
            got
        };
        // The last lines asked for: all of them.
        for i in 0..MAX_REMOTE_RATE + 10 {
            writeln!(sink, "tail {i}").unwrap();
        }
        sink.flush().unwrap();
        assert_eq!(received(&mut rx).len(), MAX_REMOTE_RATE as usize + 10);
        // Followed: at most the rate; the flush says what was dropped.
        sink.window = std::time::Instant::now();
        for i in 0..MAX_REMOTE_RATE + 10 {
            writeln!(sink, "line {i}").unwrap();
        }
        sink.flush().unwrap();
        let got = received(&mut rx);
        assert_eq!(got.len(), MAX_REMOTE_RATE as usize + 1);
        assert_eq!(got[0], "line 0");
        assert_eq!(
            got.last().unwrap(),
            "[slipway] 10 lines dropped (over 1000 lines/s)"
        );
        drop(rx);
        writeln!(sink, "closed").unwrap();
        let e = sink.flush().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn since_starts_at_the_last_mark_before_it() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        std::fs::write(&log, "old\nnew\n").unwrap();
        let now = unix_now();
        std::fs::write(
            marks_path(&log),
            format!("{} 4\n{} 8\n", now - 600, now - 5),
        )
        .unwrap();
        assert_eq!(
            since_offset(&log, now - 60),
            Some(4),
            "from the mark 10 minutes ago"
        );
        assert_eq!(since_offset(&log, now - 3600), Some(0), "before every mark");
        assert_eq!(since_offset(&log, now + 60), None, "not written since");
        let (lines, _) = tail(&log, 10, 4).unwrap();
        assert_eq!(lines, ["new"]);
    }

    #[test]
    fn a_search_reads_blocks_keeps_the_last_masked_matches_and_finds_rotated_logs() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        std::fs::write(d.path().join("web.log.2"), "hit old\n").unwrap();
        std::fs::write(d.path().join("web.log.1"), "hit newer\n").unwrap();
        // Past a block of lines without a match, the needle; a line holding
        // an env-file value matches only on its masked text.
        let mut text = "filler line\n".repeat(200_000);
        text.push_str("needle one\nkey=s3cr3t needle two\nneedle three\n");
        std::fs::write(&log, &text).unwrap();
        assert_eq!(
            rotated_logs(&log),
            [d.path().join("web.log.2"), d.path().join("web.log.1")],
            "oldest first"
        );
        let far = std::time::Instant::now() + Duration::from_secs(60);
        let run = |re: &str, n: usize| {
            let found = search(
                &log,
                0,
                u64::MAX,
                &pattern(re).unwrap(),
                &["s3cr3t".to_string()],
                n,
                far,
                &AtomicBool::new(false),
            )
            .unwrap();
            assert!(!found.stopped);
            found.lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>()
        };
        assert_eq!(run("needle", 2), ["key=s3cr3t needle two", "needle three"]);
        // Anchors hold at every line, past the first block too.
        assert_eq!(run("^needle", 10), ["needle one", "needle three"]);
        assert_eq!(run("two$", 10), ["key=s3cr3t needle two"]);
        assert_eq!(run(r"\Aneedle t", 10), ["needle three"]);
        assert!(
            run("s3cr3t", 10).is_empty(),
            "a value cannot be searched for"
        );
        assert_eq!(run(r"key=\*\*\*", 10), ["key=s3cr3t needle two"]);
        // A range that ends before the needle's bytes: nothing.
        let found = search(
            &log,
            0,
            12,
            &pattern("needle").unwrap(),
            &[],
            10,
            far,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert!(found.lines.is_empty());
    }

    #[test]
    fn a_search_times_lines_by_exact_offsets_past_invalid_utf8() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("web.log");
        std::fs::write(&log, b"\xff\xff\xff bad\nneedle\nlater line here\n").unwrap();
        // The needle's line ends at byte 15; it was on disk by the mark at 200.
        std::fs::write(marks_path(&log), "100 8\n200 15\n300 31\n").unwrap();
        let found = search(
            &log,
            0,
            u64::MAX,
            &pattern("needle").unwrap(),
            &[],
            10,
            std::time::Instant::now() + Duration::from_secs(60),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(found.lines, [(200, "needle".to_string())]);
    }

    #[test]
    fn a_search_keeps_its_newest_lines_within_its_bounds() {
        let mut found: Vec<(u64, String)> = (0..10).map(|i| (i, format!("line {i}"))).collect();
        keep_last(&mut found, 5, usize::MAX);
        assert_eq!(found.first().unwrap().1, "line 5");
        keep_last(&mut found, 5, 2 * (6 + 64));
        let kept: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(kept, ["line 8", "line 9"], "the newest that fit");
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
        let (lines, end) = tail(&p, 3, 0).unwrap();
        assert_eq!(lines, ["line 98", "line 99", "line 100"]);
        assert_eq!(end, text.len() as u64);
        assert!(pattern("line [0-9]+").is_ok());
        let e = pattern("(").unwrap_err().to_string();
        assert!(e.starts_with("--grep: "), "{e}");
        let e = pattern("(a{1000}){1000}").unwrap_err().to_string();
        assert!(e.contains("exceeds size limit"), "{e}");
    }
}
