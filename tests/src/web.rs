//! The controller's HTTPS listener from outside: `curl` against the real
//! listener (TLS checked against the controller's CA), and headless
//! `chromium` driven through `chromedriver` (WebDriver) for the dashboard.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Controller, eventually, free_port};

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The value of cookie `name` the answer sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("set-cookie").then_some(v.trim())
            })
            .filter_map(|v| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The value of the first hidden `csrf` field in the page.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

/// `curl` against a controller's HTTPS listener.
pub struct Https {
    pub base: String,
    ca: PathBuf,
}

impl Https {
    pub fn new(c: &Controller) -> Self {
        Https {
            base: format!("https://127.0.0.1:{}", c.http_port),
            ca: c.ca_cert(),
        }
    }

    fn run(&self, args: &[&str]) -> Reply {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-D", "-", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Reply {
            status,
            headers: headers.to_string(),
            body: body.to_string(),
        }
    }

    /// GET `path` with these cookies (`name=value`).
    pub fn get(&self, path: &str, cookies: &[String]) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut args = vec![url.as_str()];
        let jar = cookies.join("; ");
        if !cookies.is_empty() {
            args.extend(["-b", &jar]);
        }
        self.run(&args)
    }

    /// POST a form to `path` with these cookies and extra headers.
    pub fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        cookies: &[String],
        headers: &[&str],
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut args = vec![url.clone()];
        for (k, v) in form {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        if !cookies.is_empty() {
            args.push("-b".into());
            args.push(cookies.join("; "));
        }
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// Signs in with `token` as a browser would (the sign-in page's cookie
    /// and CSRF field, then the form): the session cookie (`name=value`).
    pub fn sign_in(&self, token: &str) -> Result<String, Reply> {
        let page = self.get("/sign-in", &[]);
        let pre = format!(
            "__Host-slipway-sign-in={}",
            page.cookie("__Host-slipway-sign-in")
                .expect("sign-in cookie")
        );
        let r = self.post(
            "/sign-in",
            &[("token", token), ("csrf", &page.csrf())],
            &[pre],
            &[&format!("Origin: {}", self.base)],
        );
        match r.cookie("__Host-slipway") {
            Some(id) if r.status == 303 => Ok(format!("__Host-slipway={id}")),
            _ => Err(r),
        }
    }
}

/// Headless chromium behind chromedriver, on a free port; stopped on drop.
pub struct Chrome {
    driver: Child,
    pub client: fantoccini::Client,
    /// Where screenshots go (`target/screenshots/<test>`).
    pub shots: PathBuf,
}

/// Whether chromium and chromedriver are installed (`.ci/run` installs them).
pub fn chrome_available() -> bool {
    ["chromium", "chromedriver"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Chrome {
    pub async fn start(test: &str) -> Chrome {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        eventually(Duration::from_secs(20), "chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Root in a container: chromium's sandbox needs user namespaces.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    // The controller's CA is not in chromium's store here; curl
                    // tests check the certificate against it (tests/tests/web.rs).
                    "--ignore-certificate-errors",
                    "--window-size=1280,900",
                ]
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver");
        let shots = crate::workspace_root()
            .join("target/screenshots")
            .join(test);
        std::fs::create_dir_all(&shots).expect("screenshots dir");
        Chrome {
            driver,
            client,
            shots,
        }
    }

    /// Saves a PNG of the page as `<name>.png`.
    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Prints what the page weighs on a first load: its HTML, stylesheet and
    /// script (bodies as sent, whether or not the browser had them cached;
    /// the live view's event stream left out).
    pub async fn weigh(&self, page: &str) {
        let kb = self
            .client
            .execute(
                "return performance.getEntriesByType('navigation')
                    .concat(performance.getEntriesByType('resource'))
                    .filter((e) => !e.name.endsWith('/live'))
                    .reduce((n, e) => n + (e.encodedBodySize || 0), 0) / 1024;",
                vec![],
            )
            .await
            .expect("performance entries")
            .as_f64()
            .unwrap_or(0.0);
        eprintln!("page weight, first load: {page}: {kb:.1} KB");
    }

    /// The page's text once `css` matches an element whose text contains
    /// `needle`, waiting up to `timeout`.
    pub async fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(el) = self.client.find(fantoccini::Locator::Css(css)).await
                && let Ok(text) = el.text().await
                && text.contains(needle)
            {
                return text;
            }
            if std::time::Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for {needle:?} in {css}; page:\n{page}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Chrome {
    /// Ends the browser session (chromium exits with it).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
