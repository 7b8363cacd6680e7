//! The core's error type: an errno, mapped to the FUSE reply in one place (`fs.rs`).
//!
//! Every core operation returns [`Result`]. An error is always an errno the kernel overlay
//! would return for the same request, so the glue only has to hand the number on.

use std::fmt;
use std::io;

/// An errno value (always positive).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error(i32);

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub const fn from_errno(errno: i32) -> Self {
        Error(errno)
    }

    pub fn errno(self) -> i32 {
        self.0
    }

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Self {
        io::Error::last_os_error().into()
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // An io::Error without an OS code comes from std itself (bad UTF-8, a short read and the
        // like); EIO is what the kernel answers for an internal failure it cannot name.
        Error(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::from_raw_os_error(e.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}

pub const ENOENT: Error = Error(libc::ENOENT);
pub const EROFS: Error = Error(libc::EROFS);
pub const EINVAL: Error = Error(libc::EINVAL);
pub const EIO: Error = Error(libc::EIO);
pub const EBADF: Error = Error(libc::EBADF);
pub const ENOTDIR: Error = Error(libc::ENOTDIR);
pub const EISDIR: Error = Error(libc::EISDIR);
pub const EACCES: Error = Error(libc::EACCES);
pub const EPERM: Error = Error(libc::EPERM);
pub const ERANGE: Error = Error(libc::ERANGE);
pub const ENODATA: Error = Error(libc::ENODATA);
pub const EOPNOTSUPP: Error = Error(libc::EOPNOTSUPP);
pub const EEXIST: Error = Error(libc::EEXIST);
pub const ENOTEMPTY: Error = Error(libc::ENOTEMPTY);
pub const EXDEV: Error = Error(libc::EXDEV);
pub const ENAMETOOLONG: Error = Error(libc::ENAMETOOLONG);
pub const ENOSYS: Error = Error(libc::ENOSYS);
pub const ESTALE: Error = Error(libc::ESTALE);
