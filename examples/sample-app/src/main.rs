//! A tiny HTTP app for Slipway's quickstart and tests (std only, no deps).
//!
//! Reads `sample.conf` from its working directory (the release dir):
//!   version=1.0.0     what `/` and `/health` report
//!   healthy=false     makes `/health` answer 503 (a broken release)
//! Listens on 127.0.0.1:$PORT. Routes:
//!   /health  200 {"version":..} or 503 when configured unhealthy
//!   /        "sample-app <version>"
//!   /data    500 unless DATABASE_URL is set: the route a 200 on /health hides
//!   POST /restart-warning  writes `restart-warned` in its working dir

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

struct Conf {
    version: String,
    healthy: bool,
}

fn load_conf() -> Conf {
    let mut conf = Conf {
        version: "unknown".into(),
        healthy: true,
    };
    if let Ok(text) = std::fs::read_to_string("sample.conf") {
        for line in text.lines() {
            match line.split_once('=') {
                Some(("version", v)) => conf.version = v.trim().to_string(),
                Some(("healthy", v)) => conf.healthy = v.trim() != "false",
                _ => {}
            }
        }
    }
    conf
}

fn respond(mut stream: TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(stream: TcpStream, conf: &Conf) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET");
    let path = parts.next().unwrap_or("/");
    eprintln!("{method} {path}");
    if method == "POST" && path == "/restart-warning" {
        // Leaves a trace in its release dir so tests and operators can see it.
        let ok = std::fs::write("restart-warned", "warned\n").is_ok();
        return respond(
            stream,
            if ok {
                "200 OK"
            } else {
                "500 Internal Server Error"
            },
            "noted\n",
        );
    }
    match path {
        "/health" if conf.healthy => respond(
            stream,
            "200 OK",
            &format!("{{\"version\":\"{}\"}}\n", conf.version),
        ),
        "/health" => respond(
            stream,
            "503 Service Unavailable",
            "unhealthy by configuration\n",
        ),
        "/data" if std::env::var_os("DATABASE_URL").is_some() => {
            respond(stream, "200 OK", "data ok\n")
        }
        "/data" => respond(
            stream,
            "500 Internal Server Error",
            "DATABASE_URL is not set\n",
        ),
        _ => respond(stream, "200 OK", &format!("sample-app {}\n", conf.version)),
    }
}

fn main() {
    let conf = std::sync::Arc::new(load_conf());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sample-app: listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("sample-app {} listening on 127.0.0.1:{port}", conf.version);
    for stream in listener.incoming().flatten() {
        let conf = conf.clone();
        std::thread::spawn(move || handle(stream, &conf));
    }
}
