//! slipctl's errors and their exit codes: 1 the operation failed (refused, not
//! found, invalid), 2 usage (clap), 3 the controller could not be reached.

use std::fmt;

#[derive(Debug)]
pub enum CtlError {
    /// The controller answered and refused, or a local check failed.
    Failed(String),
    /// The controller could not be reached.
    Unreachable(String),
    /// Bad local setup or arguments (a missing CA file, a malformed token).
    Usage(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Failed(_) => 1,
            CtlError::Unreachable(_) => 3,
            CtlError::Usage(_) => 2,
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Failed(m) | CtlError::Unreachable(m) | CtlError::Usage(m) => f.write_str(m),
        }
    }
}

impl From<anyhow::Error> for CtlError {
    fn from(e: anyhow::Error) -> Self {
        CtlError::Failed(format!("{e:#}"))
    }
}

/// A gRPC status as one line: the controller's message, or "cannot reach" for
/// transport failures.
pub fn from_status(controller: &str, s: tonic::Status) -> CtlError {
    match s.code() {
        tonic::Code::Unavailable => CtlError::Unreachable(format!(
            "cannot reach controller at {controller}: {}",
            first_line(s.message())
        )),
        _ => CtlError::Failed(first_line(s.message()).to_string()),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

pub type Result<T> = std::result::Result<T, CtlError>;
