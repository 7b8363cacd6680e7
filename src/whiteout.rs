//! Whiteouts and opaque markers: the names reserved for them, and how a real directory is
//! found opaque. Whiteouts are 0/0 character devices (the kernel's format, `sys::is_whiteout`)
//! or, in OCI layers and where `mknod` of one is refused, `.wh.NAME` files; opaque markers are
//! `overlay.opaque=y` in the mount's record namespace or a `.wh..wh..opq` entry. In lower
//! layers, the kernel's alternative whiteouts are read too (zero-size files with
//! `overlay.whiteout` in a directory marked `overlay.opaque=x`). Kernel
//! counterpart: `ovl_is_whiteout()`, `ovl_is_opaquedir()` and `ovl_whiteout()` in
//! `fs/overlayfs/`.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::Result;
use crate::records::{XattrNamespace, is_no_xattr};
use crate::sys;

/// Prefix of OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";

/// The OCI opaque marker's name.
pub const WH_OPAQUE: &CStr = c".wh..wh..opq";

/// Whether a name is reserved for whiteouts and so never visible or creatable.
pub fn is_hidden_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// `.wh.NAME`, or `None` when that would be too long to exist.
pub fn whiteout_name(name: &OsStr) -> Option<CString> {
    if name.len() + WH_PREFIX.len() > 255 {
        return None;
    }
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    CString::new(v).ok()
}

/// Whether the real directory `dir` is opaque (its marker in the mount's record namespace
/// `ns`, or an OCI `.wh..wh..opq` entry).
pub fn is_opaque(dir: BorrowedFd<'_>, ns: XattrNamespace) -> Result<bool> {
    match sys::getxattr(dir, ns.opaque()) {
        Ok(v) if v == b"y" => return Ok(true),
        Ok(_) => {}
        Err(e) if is_no_xattr(e.errno()) => {}
        Err(e) => return Err(e),
    }
    match sys::fstatat(dir, WH_OPAQUE) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the real directory `dir` of a lower layer may hold the kernel's alternative
/// whiteouts: its opaque marker is `x` (the kernel's `ovl_get_opaquedir_val()`; such a
/// directory is not opaque).
pub fn has_xwhiteouts(dir: BorrowedFd<'_>, ns: XattrNamespace) -> Result<bool> {
    match sys::getxattr(dir, ns.opaque()) {
        Ok(v) => Ok(v == b"x"),
        Err(e) if is_no_xattr(e.errno()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the entry `fd` (with `stat` `st`), in a lower directory that may hold them, is one
/// of the kernel's alternative whiteouts: a zero-size regular file with `overlay.whiteout`
/// (`ovl_path_check_xwhiteout_xattr()`). Overlays never create them; image tools do, and an
/// inner overlay shows its layers' escaped ones (`overlay.overlay.whiteout`) so to an outer one.
pub fn is_xwhiteout(fd: BorrowedFd<'_>, st: &libc::stat, ns: XattrNamespace) -> Result<bool> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        return Ok(false);
    }
    match sys::getxattr(fd, ns.xwhiteout()) {
        Ok(_) => Ok(true),
        Err(e) if is_no_xattr(e.errno()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `name` exists in `dir` (not following a symlink).
pub fn exists(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match sys::fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the OCI-format whiteout `.wh.NAME`, for when the kernel refuses `mknod` of a 0/0
/// character device (an unprivileged daemon on an older kernel).
pub fn make_wh_file(udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let wh = whiteout_name(name).ok_or(crate::error::ENAMETOOLONG)?;
    sys::openat(
        udir,
        &wh,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    )
    .map(drop)
}

/// Removes a `.wh.NAME` whiteout file once `NAME` itself stands in the upper directory.
pub fn remove_wh_file(udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let Some(wh) = whiteout_name(name) else {
        return Ok(());
    };
    match sys::unlinkat(udir, &wh, 0) {
        Err(e) if e.errno() == libc::ENOENT => Ok(()),
        other => other,
    }
}
