//! Continuous HTTP load for the cutover test and benchmark: a few client
//! threads, each sending GET / at a steady rate, over one kept-alive
//! connection (reconnecting when the server closes it) or a new connection
//! per request. Every request that gets no 200 counts as failed; every body
//! is counted, so a test can say which releases answered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub sent: u64,
    pub failed: u64,
    /// Bodies of 200 answers, counted.
    pub bodies: BTreeMap<String, u64>,
    /// The first failures, with when they happened.
    pub errors: Vec<String>,
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.sent += o.sent;
        self.failed += o.failed;
        for (b, n) in o.bodies {
            *self.bodies.entry(b).or_default() += n;
        }
        for e in o.errors {
            if self.errors.len() < 20 {
                self.errors.push(e);
            }
        }
        self.latencies.extend(o.latencies);
    }

    /// The `q` quantile of the latencies (0.5: median).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() - 1) as f64 * q).round() as usize]
    }
}

/// Running clients; `stop` ends them and sums what they saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Stats>>,
}

/// Starts `clients` threads sending `rate` requests a second each to
/// 127.0.0.1:`port`, kept alive or not.
pub fn start(port: u16, clients: usize, rate: u32, keep_alive: bool) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || client(port, rate, keep_alive, &stop))
        })
        .collect();
    Load { stop, clients }
}

impl Load {
    pub fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Release);
        let mut all = Stats::default();
        for c in self.clients {
            all.merge(c.join().expect("client thread"));
        }
        all
    }
}

fn client(port: u16, rate: u32, keep_alive: bool, stop: &AtomicBool) -> Stats {
    let mut stats = Stats::default();
    let every = Duration::from_secs(1) / rate.max(1);
    let begun = Instant::now();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let t0 = Instant::now();
        stats.sent += 1;
        match request(port, keep_alive, &mut conn) {
            Ok((200, body)) => {
                stats.latencies.push(t0.elapsed());
                *stats.bodies.entry(body.trim().to_string()).or_default() += 1;
            }
            Ok((status, body)) => {
                stats.failed += 1;
                if stats.errors.len() < 20 {
                    let at = begun.elapsed().as_secs_f64();
                    stats
                        .errors
                        .push(format!("{at:.2}s: status {status}: {}", body.trim()));
                }
            }
            Err(e) => {
                stats.failed += 1;
                conn = None;
                if stats.errors.len() < 20 {
                    let at = begun.elapsed().as_secs_f64();
                    stats.errors.push(format!("{at:.2}s: {e}"));
                }
            }
        }
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    stats
}

/// One GET /: (status, body).
fn request(
    port: u16,
    keep_alive: bool,
    conn: &mut Option<BufReader<TcpStream>>,
) -> std::io::Result<(u16, String)> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        unreachable!("connected above");
    };
    let close = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    r.get_mut()
        .write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}\r\n").as_bytes())?;
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut server_closes = !keep_alive;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
            if k == "connection" && v.eq_ignore_ascii_case("close") {
                server_closes = true;
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n.min(1 << 20), 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
            server_closes = true;
        }
    }
    if server_closes {
        *conn = None;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
