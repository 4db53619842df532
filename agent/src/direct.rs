//! Downloads a blob straight from the bucket with a presigned URL the
//! controller handed out (`--presigned-downloads` there). What the bucket
//! sends is appended to the blob's partial file like the controller's bytes
//! and verified with them by sha256. A download resumes with a `Range`
//! header. Anything the bucket does wrong (unreachable, an expired or
//! refused URL, a redirect, a stall, a body cut short) is not an error of
//! the fetch: the rest comes through the controller, from where the bucket
//! stopped. The URL is a credential for its lifetime: it is never logged.

use std::sync::LazyLock;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::fetch::{FetchError, Partial, Source};
use crate::follow::Feed;

/// The longest URL taken from a controller (an S3 presigned URL is ~600 bytes).
const MAX_URL: usize = 8 * 1024;
/// A bucket that cannot be reached in this long is given up for this fetch.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A body that sends nothing for this long is given up (as the controller's).
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client; None (said once in the log) when it cannot be built.
static CLIENT: LazyLock<Option<reqwest::Client>> = LazyLock::new(|| {
    // reqwest's rustls takes the process's crypto provider: ring, as the
    // agent's sessions (a second install is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(STALL_TIMEOUT)
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "no HTTP client for bucket downloads"))
        .ok()
});

/// Why a URL from the controller is not followed.
#[derive(Debug, thiserror::Error)]
enum BadUrl {
    #[error("a URL of {0} bytes (at most {MAX_URL})")]
    TooLong(usize),
    #[error("not a URL: {0}")]
    Unparsable(String),
    #[error("a URL with scheme {0:?}")]
    Scheme(String),
}

/// Appends what the bucket answers at `url` to `part`. Only a local failure
/// (the cache cannot be written, more bytes than the blob has) is an error;
/// whatever the bucket did wrong is logged and leaves the rest to the
/// controller.
pub(crate) async fn download(url: &str, part: &mut Partial, feed: &Feed) -> Result<(), FetchError> {
    let from = part.have;
    match fetch(url, part, feed).await {
        Ok(()) => {
            tracing::info!(digest = %part.digest, bytes = part.have - from, "downloaded from the bucket");
            Ok(())
        }
        Err(Failed::Local(e)) => Err(e),
        Err(Failed::Bucket(why)) => {
            tracing::warn!(
                digest = %part.digest,
                got = part.have - from,
                "bucket download failed ({}); the rest comes through the controller",
                why.escape_debug()
            );
            Ok(())
        }
    }
}

enum Failed {
    Local(FetchError),
    Bucket(String),
}

async fn fetch(url: &str, part: &mut Partial, feed: &Feed) -> Result<(), Failed> {
    let url = checked(url).map_err(|e| Failed::Bucket(e.to_string()))?;
    let client = CLIENT
        .as_ref()
        .ok_or_else(|| Failed::Bucket("no HTTP client".into()))?;
    let mut req = client.get(url);
    if part.have > 0 {
        req = req.header(RANGE, format!("bytes={}-", part.have));
    }
    // Never the error's own text: it quotes the URL.
    let mut resp = req.send().await.map_err(|e| Failed::Bucket(describe(&e)))?;
    match resp.status() {
        StatusCode::OK if part.have == 0 => {}
        StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {}-", part.have)) {
                return Err(Failed::Bucket(format!(
                    "asked from byte {}, answered range {range:?}",
                    part.have
                )));
            }
        }
        other => return Err(Failed::Bucket(format!("answered {other}"))),
    }
    while part.have < part.size {
        match resp.chunk().await {
            Ok(Some(data)) if part.have + data.len() as u64 > part.size => {
                return Err(Failed::Bucket(format!(
                    "more than the blob's {} bytes",
                    part.size
                )));
            }
            Ok(Some(data)) => part
                .append(&data, feed, Source::Bucket)
                .await
                .map_err(Failed::Local)?,
            Ok(None) => {
                return Err(Failed::Bucket(format!(
                    "body ended at byte {} of {}",
                    part.have, part.size
                )));
            }
            Err(e) => return Err(Failed::Bucket(describe(&e))),
        }
    }
    // The blob is whole (its sha256 decides); a longer body is the
    // bucket's mistake, logged.
    match resp.chunk().await {
        Ok(Some(more)) if !more.is_empty() => Err(Failed::Bucket(format!(
            "more than the blob's {} bytes",
            part.size
        ))),
        _ => Ok(()),
    }
}

/// The URL, if it is one an agent may follow: http or https, and bounded.
fn checked(url: &str) -> Result<reqwest::Url, BadUrl> {
    if url.len() > MAX_URL {
        return Err(BadUrl::TooLong(url.len()));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| BadUrl::Unparsable(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(BadUrl::Scheme(other.to_string())),
    }
}

/// What went wrong with a request, without the URL it carried.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "body cut"
    } else {
        "request failed"
    };
    let mut cause = std::error::Error::source(e);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    match last {
        Some(c) => format!("{kind}: {c}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_http_urls_are_followed() {
        assert!(checked("https://bucket.example/sha256/ab?X-Amz-Signature=1").is_ok());
        assert!(checked("http://127.0.0.1:9000/b/sha256/ab").is_ok());
        for (url, why) in [
            ("file:///etc/shadow", "scheme \"file\""),
            ("ftp://host/x", "scheme \"ftp\""),
            ("not a url", "not a URL"),
        ] {
            let e = checked(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
        let long = format!("https://h/{}", "a".repeat(MAX_URL));
        assert!(checked(&long).unwrap_err().to_string().contains("at most"));
    }
}
