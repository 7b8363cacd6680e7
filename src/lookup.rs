//! The top-down walk that resolves one name in a merged directory.
//!
//! Rules (SEMANTICS.md, "Lookup"; kernel: `ovl_lookup()` in `fs/overlayfs/namei.c`): walk the
//! parent's real directories from the top. In the first layer that has the name, a whiteout means
//! "no such entry" and a non-directory is the answer. A directory starts a merge that takes the
//! same-named directories of the layers below until one is opaque (kept, then stop) or a layer
//! has a non-directory or a whiteout there (stop, not kept).
//!
//! Whiteouts are 0/0 character devices, or `.wh.NAME` files (OCI layers) in a layer that has no
//! `NAME` itself. Opaque markers are `trusted.overlay.opaque=y`, `user.overlay.opaque=y`, or a
//! `.wh..wh..opq` entry inside the directory.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::error::{ENOENT, Result};
use crate::inode::{Kind, RealEntry};
use crate::layer::LayerStack;
use crate::sys;

/// Prefix of OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The OCI opaque marker's name.
pub const WH_OPAQUE: &CStr = c".wh..wh..opq";
pub const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.overlay.opaque"];

/// What a name resolves to.
#[derive(Debug)]
pub struct Resolved {
    pub kind: Kind,
    /// `stat` of the winning (top-most) real entry.
    pub stat: libc::stat,
    /// Real entries, top-down; see [`crate::inode::Reals`].
    pub reals: Vec<RealEntry>,
}

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

/// Whether the real directory `dir` is opaque.
pub fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool> {
    for name in OPAQUE_XATTRS {
        match sys::getxattr(dir, name) {
            Ok(v) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::fstatat(dir, WH_OPAQUE) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Errors meaning "this xattr is not there" (or xattrs are not supported at all).
pub fn is_no_xattr(errno: i32) -> bool {
    errno == libc::ENODATA || errno == libc::EOPNOTSUPP || errno == libc::EPERM
}

/// Resolves `name` among `parents` (the merged directory's real directories, top-down).
pub fn lookup(layers: &LayerStack, parents: &[RealEntry], name: &OsStr) -> Result<Resolved> {
    if is_hidden_name(name) {
        return Err(ENOENT);
    }
    let cname = sys::cstr(name)?;
    let wh_name = whiteout_name(name);
    let mut found: Option<Resolved> = None;
    for parent in parents {
        let fd = match sys::open_path(parent.fd(), &cname) {
            Ok(fd) => fd,
            Err(e) if e.errno() == libc::ENOENT => {
                if let Some(wh) = &wh_name
                    && exists(parent.fd(), wh)?
                {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let st = sys::fstat(fd.as_fd())?;
        if sys::is_whiteout(&st) {
            break;
        }
        let Some(kind) = Kind::from_mode(st.st_mode) else {
            return Err(crate::error::EIO);
        };
        let entry = RealEntry::new(parent.layer, fd);
        match (&mut found, kind) {
            (None, Kind::Directory) => {
                let opaque = parent.layer + 1 < layers.len() && is_opaque(entry.fd())?;
                found = Some(Resolved {
                    kind,
                    stat: st,
                    reals: vec![entry],
                });
                if opaque {
                    break;
                }
            }
            (None, _) => {
                found = Some(Resolved {
                    kind,
                    stat: st,
                    reals: vec![entry],
                });
                break;
            }
            (Some(merged), Kind::Directory) => {
                let opaque = parent.layer + 1 < layers.len() && is_opaque(entry.fd())?;
                merged.reals.push(entry);
                if opaque {
                    break;
                }
            }
            (Some(_), _) => break,
        }
    }
    found.ok_or(ENOENT)
}

fn exists(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match sys::fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}
