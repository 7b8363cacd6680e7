//! The snapshotter's error: one of containerd's error classes (`errdefs`), with a message.
//!
//! containerd turns a gRPC status code back into its error class (`errdefs.FromGRPC`) and acts
//! on the class: its unpacker treats `AlreadyExists` from Prepare or Commit as "another
//! unpacker got there first", its garbage collector skips `NotFound`, and so on. Each core
//! operation therefore answers with the class containerd's own bolt metastore returns for the
//! same case, and [`Error`] maps to exactly that code in one place.

use std::fmt;

use containerd_snapshots::tonic;

/// What went wrong, in containerd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    InvalidArgument(String),
    /// A system call or the store failed; containerd sees `Unknown`, as for any error of its
    /// own that carries no class.
    Unknown(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl fmt::Display) -> impl FnOnce(crate::error::Error) -> Error {
        move |err| Error::Unknown(format!("{what}: {err}"))
    }

    /// A store failure while doing `what`.
    pub fn store<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |err| Error::Unknown(format!("metadata store: {what}: {}", err.into()))
    }

    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::InvalidArgument(m)
            | Error::Unknown(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self {
            Error::NotFound(_) => "not found",
            Error::AlreadyExists(_) => "already exists",
            Error::FailedPrecondition(_) => "failed precondition",
            Error::InvalidArgument(_) => "invalid argument",
            Error::Unknown(_) => "unknown",
        };
        // containerd's own wording: "snapshot foo: already exists".
        write!(f, "{}: {class}", self.message())
    }
}

impl std::error::Error for Error {}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::Unknown(_) => tonic::Status::unknown(message),
        }
    }
}
