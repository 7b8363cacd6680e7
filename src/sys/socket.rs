//! Unix-socket calls the standard library does not offer on stable Rust: the credentials of the
//! process at the other end of a connected socket (`SO_PEERCRED`), which the status socket
//! (`crate::status`) checks before it answers.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The effective uid of the process that connected the unix stream socket `fd`, as the kernel
/// recorded it at `connect` time (it cannot be forged by the peer).
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = MaybeUninit::<libc::ucred>::zeroed();
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is a valid descriptor for the borrow; `cred` is valid for writing `len`
    // bytes, and `len` is a valid place for the kernel to write the size it used.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            cred.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("SO_PEERCRED returned a short answer"));
    }
    // SAFETY: zero-initialized, and the kernel filled all of it (checked just above); every
    // bit pattern is a valid `ucred`.
    Ok(unsafe { cred.assume_init() }.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let (euid, _) = super::super::euid_egid();
        assert_eq!(peer_uid(a.as_fd()).expect("peer"), euid);
    }
}
