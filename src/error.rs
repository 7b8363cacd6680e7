//! The core's error type: an errno, mapped to the FUSE reply in one place (`fs.rs`).
//!
//! Every core operation returns [`Result`]. An error is always an errno the kernel overlay
//! would return for the same request, so the glue only has to hand the number on; it carries
//! what failed where the core knows it, and the glue logs every error that is not an ordinary
//! answer (`Error::is_ordinary`) when it replies.

use std::fmt;
use std::io;

/// An errno value (always positive), with what failed where the core knows it: the operation,
/// the entry's name and the layer. Two errors are equal when their errno is: the context is for the log.
#[derive(Clone)]
pub struct Error {
    errno: i32,
    what: Option<&'static str>,
    /// The layer's index, or [`NO_LAYER`] (an `Option<usize>` would make every `Result` of the
    /// core 8 bytes larger).
    layer: u32,
    /// The name the failing request was about (an entry of a directory).
    name: Option<std::sync::Arc<std::ffi::OsStr>>,
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Error::layer` when no layer is named.
const NO_LAYER: u32 = u32::MAX;

impl Error {
    pub const fn from_errno(errno: i32) -> Self {
        Error {
            errno,
            what: None,
            layer: NO_LAYER,
            name: None,
        }
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Self {
        io::Error::last_os_error().into()
    }

    /// Names what failed (`"copy-up"`, `"rename"`, ...), unless an inner step already did.
    pub fn context(mut self, what: &'static str) -> Self {
        self.what.get_or_insert(what);
        self
    }

    /// Names the entry the failing request was about, unless an inner step already did. Not
    /// for an ordinary answer (a missing name on every `create` and negative lookup): the request
    /// line logged at debug level names it already, and the copy would cost every such answer.
    pub fn named(mut self, name: &std::ffi::OsStr) -> Self {
        if self.name.is_none() && !self.is_ordinary() {
            self.name = Some(std::sync::Arc::from(name));
        }
        self
    }

    /// Names the layer the failing access was made in, unless an inner step already did.
    pub fn in_layer(mut self, layer: usize) -> Self {
        if self.layer == NO_LAYER {
            self.layer = u32::try_from(layer).unwrap_or(NO_LAYER);
        }
        self
    }

    /// Whether this is an ordinary answer to a request (no such name, exists, not empty,
    /// refused by the rules...) rather than a failure worth a user's attention.
    pub fn is_ordinary(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EINVAL
                | libc::EACCES
                | libc::EPERM
                | libc::ENODATA
                | libc::ERANGE
                | libc::EXDEV
                | libc::EROFS
                | libc::ENAMETOOLONG
                | libc::ENOSYS
                | libc::EOPNOTSUPP
                | libc::EBADF
                | libc::ELOOP
                | libc::EMLINK
                | libc::E2BIG
        )
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.errno == other.errno
    }
}

impl Eq for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Error::from_errno(n),
            // An io::Error without an OS code comes from std itself (bad UTF-8, a short read
            // and the like); EIO is what the kernel answers for an internal failure it cannot
            // name, and the cause is logged rather than lost.
            None => {
                log::warn!("internal failure answered as EIO: {e}");
                Error::from_errno(libc::EIO)
            }
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::from_raw_os_error(e.errno)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.what, &self.name) {
            (Some(what), Some(name)) => write!(f, "{what} {name:?}: ")?,
            (Some(what), None) => write!(f, "{what}: ")?,
            (None, Some(name)) => write!(f, "{name:?}: ")?,
            (None, None) => {}
        }
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if self.layer != NO_LAYER {
            write!(f, " (layer {})", self.layer)?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}

pub const ENOENT: Error = Error::from_errno(libc::ENOENT);
pub const EROFS: Error = Error::from_errno(libc::EROFS);
pub const EINVAL: Error = Error::from_errno(libc::EINVAL);
pub const EIO: Error = Error::from_errno(libc::EIO);
pub const EBADF: Error = Error::from_errno(libc::EBADF);
pub const ENOTDIR: Error = Error::from_errno(libc::ENOTDIR);
pub const EISDIR: Error = Error::from_errno(libc::EISDIR);
pub const EACCES: Error = Error::from_errno(libc::EACCES);
pub const EPERM: Error = Error::from_errno(libc::EPERM);
pub const ERANGE: Error = Error::from_errno(libc::ERANGE);
pub const ENODATA: Error = Error::from_errno(libc::ENODATA);
pub const EOPNOTSUPP: Error = Error::from_errno(libc::EOPNOTSUPP);
pub const EEXIST: Error = Error::from_errno(libc::EEXIST);
pub const ENOTEMPTY: Error = Error::from_errno(libc::ENOTEMPTY);
pub const EXDEV: Error = Error::from_errno(libc::EXDEV);
pub const ENAMETOOLONG: Error = Error::from_errno(libc::ENAMETOOLONG);
pub const ENOSYS: Error = Error::from_errno(libc::ENOSYS);
pub const ESTALE: Error = Error::from_errno(libc::ESTALE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_for_the_log_and_equality_is_by_errno() {
        let e = EIO.context("copy-up").in_layer(0).context("rename");
        assert_eq!(e, EIO);
        assert_ne!(e, ENOENT);
        let shown = e.to_string();
        assert!(shown.starts_with("copy-up: "), "{shown}");
        let named = EIO
            .context("rename")
            .named(std::ffi::OsStr::new("a b"))
            .in_layer(1);
        assert_eq!(
            named.to_string(),
            format!(
                "rename \"a b\": {} (layer 1)",
                std::io::Error::from_raw_os_error(libc::EIO)
            )
        );
        assert!(shown.ends_with("(layer 0)"), "{shown}");
        assert!(!EIO.is_ordinary() && ENOENT.is_ordinary() && ENOTEMPTY.is_ordinary());
    }

    #[test]
    fn an_error_without_an_os_code_is_eio() {
        let e: Error = io::Error::new(io::ErrorKind::InvalidData, "bad").into();
        assert_eq!(e.errno(), libc::EIO);
        let e: Error = io::Error::from_raw_os_error(libc::ENOSPC).into();
        assert_eq!(e.errno(), libc::ENOSPC);
    }
}
