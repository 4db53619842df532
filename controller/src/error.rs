//! The controller's error type and its one mapping onto gRPC status codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Busy for now: the caller should try again.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    /// A fault of the controller itself (logged, never shown in detail).
    #[error("{0}")]
    Internal(String),
}

impl From<artifact::NameError> for ControllerError {
    fn from(e: artifact::NameError) -> Self {
        ControllerError::InvalidArgument(e.to_string())
    }
}

impl From<ControllerError> for Status {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::NotFound(m) => Status::not_found(m),
            ControllerError::AlreadyExists(m) => Status::already_exists(m),
            ControllerError::FailedPrecondition(m) => Status::failed_precondition(m),
            ControllerError::InvalidArgument(m) => Status::invalid_argument(m),
            ControllerError::PermissionDenied(m) => Status::permission_denied(m),
            ControllerError::Unavailable(m) => Status::unavailable(m),
            ControllerError::Store(crate::store::StoreError::Conflict(m)) => Status::aborted(m),
            ControllerError::Store(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "store unavailable");
                Status::unavailable("store unavailable: try again")
            }
            ControllerError::Blob(
                e @ (crate::blobs::BlobError::Mismatch { .. }
                | crate::blobs::BlobError::Size { .. }),
            ) => Status::invalid_argument(e.to_string()),
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal controller error (see the controller log)")
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, ControllerError>;
