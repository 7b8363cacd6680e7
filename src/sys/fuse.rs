//! The system calls that make a FUSE mount: opening `/dev/fuse`, `mount(2)` of type
//! `fuse.SUBTYPE`, and receiving the `/dev/fuse` descriptor that `fusermount3` sends back over a
//! socket (an `SCM_RIGHTS` message, libfuse's protocol).
//!
//! The decisions (which flags, which options, when to fall back to `fusermount3`) are made in
//! `crate::fuse_mount`; these wrappers only make the calls safe.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The FUSE device.
pub const DEV_FUSE: &CStr = c"/dev/fuse";

/// Opens `/dev/fuse` for reading and writing, close-on-exec.
pub fn open_dev_fuse() -> io::Result<OwnedFd> {
    // SAFETY: `DEV_FUSE` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(DEV_FUSE.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mount(source, target, fstype, flags, data)`.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: &CStr,
) -> io::Result<()> {
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; the kernel
    // copies them and keeps no reference.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Clears close-on-exec on `fd`, so that a child process started next inherits it (the socket
/// `fusermount3` answers on, named by `_FUSE_COMMFD`).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call; F_SETFD takes an
    // integer argument and touches no memory.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one descriptor sent with `SCM_RIGHTS` on the stream socket `sock`; `None` when the
/// peer closed the socket without sending one (`fusermount3` failed, and said why on its
/// stderr).
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    const FD_SIZE: u32 = std::mem::size_of::<libc::c_int>() as u32;
    // Room for one cmsghdr carrying one int, aligned as cmsghdr requires.
    let mut control = [MaybeUninit::<u64>::uninit(); 8];
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(FD_SIZE) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: `msg` points at `iov` (one byte of `byte`) and at `control` (`space` bytes),
        // all of which live until the call returns; MSG_CMSG_CLOEXEC makes any received
        // descriptor close-on-exec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: `msg` was filled in by a successful recvmsg; CMSG_FIRSTHDR reads only its
    // control fields, which point into `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    if cmsg.is_null() {
        return Ok(None);
    }
    // SAFETY: `cmsg` is non-null and points at a complete header inside `control` (the kernel
    // never reports a header it truncated: MSG_CTRUNC would be set and the length short).
    let header = unsafe { &*cmsg };
    // SAFETY: CMSG_LEN only computes a size.
    let want_len = unsafe { libc::CMSG_LEN(FD_SIZE) } as usize;
    if header.cmsg_level != libc::SOL_SOCKET
        || header.cmsg_type != libc::SCM_RIGHTS
        || header.cmsg_len < want_len
    {
        return Err(io::Error::other(
            "fusermount3 sent a message without a descriptor",
        ));
    }
    // SAFETY: the header is an SCM_RIGHTS message of at least one int; its data may be
    // unaligned for an int, hence read_unaligned.
    let fd = unsafe { libc::CMSG_DATA(cmsg).cast::<libc::c_int>().read_unaligned() };
    // SAFETY: the kernel installed `fd` in this process for this message; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
