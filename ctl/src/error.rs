//! slipctl's errors, the class each belongs to, and the documented exit code
//! of each class; the one place where gRPC status codes become classes.

use std::error::Error as _;

/// slipctl's exit codes, one per class of outcome (nextest-style): a script
/// can tell "the canary failed" from "my token lacks the role".
pub mod exit {
    /// Everything asked for was done.
    pub const OK: u8 = 0;
    /// Any other failure: the controller refused the request as invalid or in
    /// conflict (an immutable version, a promotion gate), or a local step failed.
    pub const FAILED: u8 = 1;
    /// Bad command line or local setup (flag values, CA file, token file),
    /// found before anything is sent.
    pub const USAGE: u8 = 2;
    /// The controller could not be reached or did not speak slipctl's protocol
    /// (connection refused, TLS failure, `http://` to the TLS port).
    pub const UNREACHABLE: u8 = 3;
    /// The controller refused who is asking: no token, an invalid or revoked
    /// token, or a token without the needed role.
    pub const PERMISSION_DENIED: u8 = 4;
    /// An app, version, environment, host, token or rollout does not exist.
    pub const NOT_FOUND: u8 = 5;
    /// A followed rollout (`--wait`) did not succeed: halted, reverted,
    /// aborted, superseded, or still running when `--timeout` passed.
    pub const ROLLOUT_FAILED: u8 = 6;
}

/// The exit-code table for `slipctl --help` and the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  failed: refused as invalid or in conflict, or a local step failed
  2  usage: bad flags or local setup, nothing was sent
  3  controller unreachable (connection, TLS, or protocol mismatch)
  4  permission denied: no token, invalid or revoked token, missing role
  5  not found: app, version, environment, host, token or rollout
  6  rollout failed: halted, reverted, aborted, superseded or timed out (--wait)";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad local setup or arguments (a missing CA file, a malformed token).
    #[error("{0}")]
    Usage(String),
    /// The controller could not be reached, or did not speak gRPC over the
    /// transport slipctl chose; the message names the address.
    #[error("{0}")]
    Unreachable(String),
    /// The controller refused the caller (authentication or authorization).
    #[error("{0}")]
    PermissionDenied(String),
    /// The controller does not know what was named.
    #[error("{0}")]
    NotFound(String),
    /// A followed rollout ended in anything but success, or the wait timed out.
    #[error("{0}")]
    Rollout(String),
    /// The controller refused the request for another reason.
    #[error("{0}")]
    Refused(String),
    /// A local step failed (packing, reading, writing).
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Another local failure, described.
    #[error("{0}")]
    Failed(String),
    #[error("encode json: {0}")]
    Json(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Unreachable(_) => exit::UNREACHABLE,
            CtlError::PermissionDenied(_) => exit::PERMISSION_DENIED,
            CtlError::NotFound(_) => exit::NOT_FOUND,
            CtlError::Rollout(_) => exit::ROLLOUT_FAILED,
            CtlError::Refused(_)
            | CtlError::Local { .. }
            | CtlError::Failed(_)
            | CtlError::Json(_) => exit::FAILED,
        }
    }

    pub fn local(what: impl Into<String>, source: std::io::Error) -> Self {
        CtlError::Local {
            what: what.into(),
            source,
        }
    }
}

/// A gRPC status as a classed error. A status the controller sent carries its
/// message; one made on this side from a transport failure (it has a source:
/// an h2, hyper or I/O error) means the controller was not reached properly.
pub fn from_status(url: &str, s: tonic::Status) -> CtlError {
    use tonic::Code;
    let msg = first_line(s.message()).to_string();
    let transport = s.source().is_some();
    match s.code() {
        Code::Unavailable => unreachable(url, &msg),
        Code::Unknown | Code::Internal | Code::Cancelled | Code::Unimplemented if transport => {
            unreachable(url, &msg)
        }
        Code::Unimplemented => CtlError::Unreachable(format!(
            "controller at {url}: {msg} (is it a slipway controller of the same version?)"
        )),
        Code::PermissionDenied | Code::Unauthenticated => CtlError::PermissionDenied(msg),
        Code::NotFound => CtlError::NotFound(msg),
        _ => CtlError::Refused(msg),
    }
}

fn unreachable(url: &str, msg: &str) -> CtlError {
    CtlError::Unreachable(format!(
        "cannot reach controller at {url}: {msg}{}",
        plaintext_hint(url, msg)
    ))
}

/// When `http://` reached a socket that does not speak plaintext gRPC (the
/// TLS port), say so: the error alone reads "transport error".
pub fn plaintext_hint(url: &str, msg: &str) -> &'static str {
    if url.starts_with("http://") && !msg.contains("refused") && !msg.contains("timed out") {
        " (a TLS port? use https:// and --ca-cert)"
    } else {
        ""
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

pub type Result<T> = std::result::Result<T, CtlError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_refusals_map_to_their_class() {
        let url = "https://127.0.0.1:7400";
        let cases = [
            (
                tonic::Status::permission_denied("x"),
                exit::PERMISSION_DENIED,
            ),
            (tonic::Status::unauthenticated("x"), exit::PERMISSION_DENIED),
            (tonic::Status::not_found("x"), exit::NOT_FOUND),
            (tonic::Status::unavailable("x"), exit::UNREACHABLE),
            (tonic::Status::unimplemented("x"), exit::UNREACHABLE),
            (tonic::Status::invalid_argument("x"), exit::FAILED),
            (tonic::Status::failed_precondition("x"), exit::FAILED),
            (tonic::Status::already_exists("x"), exit::FAILED),
            (tonic::Status::internal("x"), exit::FAILED),
        ];
        for (status, code) in cases {
            let c = status.code();
            assert_eq!(from_status(url, status).exit_code(), code, "{c:?}");
        }
    }

    #[test]
    fn a_transport_failure_is_unreachable_whatever_its_code() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let s = tonic::Status::from_error(Box::new(io));
        let e = from_status("http://127.0.0.1:7400", s);
        assert_eq!(e.exit_code(), exit::UNREACHABLE, "{e}");
    }

    #[test]
    fn every_exit_code_is_in_the_help_table() {
        let codes = [
            exit::OK,
            exit::FAILED,
            exit::USAGE,
            exit::UNREACHABLE,
            exit::PERMISSION_DENIED,
            exit::NOT_FOUND,
            exit::ROLLOUT_FAILED,
        ];
        for code in codes {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {code}  ")),
                "{code} missing from the help"
            );
        }
    }

    #[test]
    fn messages_are_one_line() {
        let s = tonic::Status::not_found("unknown app \"wbe\"\ndetails");
        assert_eq!(from_status("u", s).to_string(), "unknown app \"wbe\"");
    }
}
