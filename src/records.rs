//! The overlay's records in extended attributes: their names in both namespaces, one reader
//! (with the one errno filter that says "not there"), the writers, and which xattrs are visible
//! through the mount. Kernel counterpart: `ovl_xattr()`, `ovl_getxattr_value()` and
//! `ovl_check_setxattr()` in `fs/overlayfs/util.c`, and `fs/overlayfs/xattrs.c`.
//!
//! A mount reads and writes its records in exactly one namespace (kernel: `ovl_xattr()` and
//! `ofs->config.userxattr` in `fs/overlayfs/`): `trusted.overlay.*` when the daemon may use
//! `trusted.*` names, else `user.overlay.*` (unprivileged, in a user namespace, or with
//! `-o userxattr`). Names of that namespace are private: hidden from listings, and never reached
//! through the mount, as in the kernel (`ovl_is_private_xattr`). Names of the other namespace are
//! ordinary xattrs: a `user.overlay.redirect` that anyone who owns a file can set is never taken
//! as a record by a mount that uses `trusted.overlay.*`.
//!
//! So that an overlay can be a layer of another overlay, names of the mount's namespace are
//! escaped, as the kernel (6.7+) escapes them (`ovl_xattr_escape_name()`, `ovl_listxattr()`,
//! Documentation/filesystems/overlayfs.rst, "Nesting overlayfs mounts"): a name
//! `PREFIX.overlay.NAME` asked through the mount (`PREFIX.overlay.` being `trusted.overlay.` or
//! `user.overlay.`) is `PREFIX.overlay.overlay.NAME` in the layers, and a layer's escaped
//! `PREFIX.overlay.overlay.NAME` is listed as `PREFIX.overlay.NAME`. Each mount removes one level,
//! so the records of an outer overlay stored through an inner one read as records again from
//! the inner's layers, and the inner's own records stay hidden from the outer.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::Result;
use crate::inode::RealEntry;
use crate::kind::Kind;
use crate::sys;

/// Which xattr namespace a mount's records live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`, read by the kernel by default; needs `CAP_SYS_ADMIN`.
    Trusted,
    /// `user.overlay.*`, read by the kernel with `-o userxattr`; for unprivileged mounts.
    User,
}

impl XattrNamespace {
    /// The marker of a directory that hides everything below it.
    pub fn opaque(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.opaque",
            XattrNamespace::User => c"user.overlay.opaque",
        }
    }

    /// The marker of the kernel's alternative whiteout: a zero-size regular file carrying it,
    /// in a lower directory whose opaque marker is `x`, is a whiteout
    /// (Documentation/filesystems/overlayfs.rst, "Whiteouts and opaque directories").
    pub fn xwhiteout(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.whiteout",
            XattrNamespace::User => c"user.overlay.whiteout",
        }
    }

    /// The kernel's marker on a directory holding entries copied up from elsewhere.
    pub fn impure(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.impure",
            XattrNamespace::User => c"user.overlay.impure",
        }
    }

    /// ufs's record of the inode number an object reports (kept across copy-up and remount).
    pub fn ino_record(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.ufs.ino",
            XattrNamespace::User => c"user.overlay.ufs.ino",
        }
    }

    /// The file handle of the lower object a copy was made from.
    pub fn origin(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.origin",
            XattrNamespace::User => c"user.overlay.origin",
        }
    }

    /// The marker of a metadata-only copy, whose data is still in a lower layer.
    pub fn metacopy(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.metacopy",
            XattrNamespace::User => c"user.overlay.metacopy",
        }
    }

    /// Where a renamed directory's (or a metadata-only copy's data's) lower parts are.
    pub fn redirect(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.redirect",
            XattrNamespace::User => c"user.overlay.redirect",
        }
    }

    /// The link-count record of an indexed copy (`U+N`).
    pub fn nlink(self) -> &'static CStr {
        match self {
            XattrNamespace::Trusted => c"trusted.overlay.nlink",
            XattrNamespace::User => c"user.overlay.nlink",
        }
    }
}

impl XattrNamespace {
    /// The prefix of every record name in this namespace.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            XattrNamespace::Trusted => b"trusted.overlay.",
            XattrNamespace::User => b"user.overlay.",
        }
    }

    /// The namespace an unprivileged or privileged daemon can use, without probing.
    pub fn for_daemon() -> Self {
        if crate::sys::euid_egid().0 == 0 {
            XattrNamespace::Trusted
        } else {
            XattrNamespace::User
        }
    }

    /// Whether `name`, as stored in a layer, is one of this namespace's records, hidden from
    /// the mount's users (and not copied up): a name of the namespace that is not escaped.
    pub fn is_private(self, name: &OsStr) -> bool {
        let n = name.as_bytes();
        n.starts_with(self.prefix()) && !self.is_escaped(n)
    }

    /// Whether a layer's xattr name is an escaped one (`PREFIX.overlay.overlay.NAME`).
    fn is_escaped(self, name: &[u8]) -> bool {
        name.strip_prefix(self.prefix())
            .is_some_and(|rest| rest.starts_with(ESCAPE))
    }

    /// The name in the layers of xattr `name` asked through the mount: one level of escaping
    /// added to a name of the namespace, any other name as it is. `EINVAL` for the bare prefix
    /// (the kernel's `xattr_resolve_name()`), `EOPNOTSUPP` when the escaped name would be longer
    /// than `XATTR_NAME_MAX` (as `ovl_xattr_escape_name()` answers).
    pub fn layer_name(self, name: &OsStr) -> Result<std::borrow::Cow<'_, OsStr>> {
        let n = name.as_bytes();
        let Some(rest) = n.strip_prefix(self.prefix()) else {
            return Ok(std::borrow::Cow::Borrowed(name));
        };
        if rest.is_empty() {
            return Err(crate::error::EINVAL);
        }
        if n.len() + ESCAPE.len() > XATTR_NAME_MAX {
            return Err(crate::error::EOPNOTSUPP);
        }
        let mut v = self.prefix().to_vec();
        v.extend_from_slice(ESCAPE);
        v.extend_from_slice(rest);
        Ok(std::borrow::Cow::Owned(std::ffi::OsString::from_vec(v)))
    }

    /// The name a layer's xattr `name` shows through the mount: `None` for a private one, one
    /// level of escaping removed from an escaped one, any other name as it is.
    pub fn mount_name(self, name: &OsStr) -> Option<std::borrow::Cow<'_, [u8]>> {
        let n = name.as_bytes();
        let Some(rest) = n.strip_prefix(self.prefix()) else {
            return Some(std::borrow::Cow::Borrowed(n));
        };
        let inner = rest.strip_prefix(ESCAPE)?;
        let mut v = self.prefix().to_vec();
        v.extend_from_slice(inner);
        Some(std::borrow::Cow::Owned(v))
    }

    /// The NUL-separated list of the names `names` (a layer's) show through the mount.
    pub fn visible_list(self, names: &[std::ffi::OsString]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in names.iter().filter_map(|n| self.mount_name(n)) {
            out.extend_from_slice(&n);
            out.push(0);
        }
        out
    }
}

/// What escapes one level of a record name: `PREFIX.overlay.overlay.NAME` in a layer is
/// `PREFIX.overlay.NAME` through the mount (the kernel's `OVL_XATTR_ESCAPE_PREFIX`).
const ESCAPE: &[u8] = b"overlay.";

/// The longest xattr name the kernel takes.
const XATTR_NAME_MAX: usize = 255;

/// Errors meaning "this xattr is not there" (or xattrs are not supported at all).
pub fn is_no_xattr(errno: i32) -> bool {
    errno == libc::ENODATA || errno == libc::EOPNOTSUPP || errno == libc::EPERM
}

/// Record `name` of the object behind `fd`: `None` when it is not there.
pub fn get(fd: BorrowedFd<'_>, name: &CStr) -> Result<Option<Vec<u8>>> {
    match sys::getxattr(fd, name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_no_xattr(e.errno()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Record `name` of real entry `entry`: `None` when it is not there (or the entry is gone).
pub fn get_entry(entry: &RealEntry, name: &CStr) -> Result<Option<Vec<u8>>> {
    match entry.getxattr(name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_no_xattr(e.errno()) || e.errno() == libc::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a regular file is a metadata-only copy (`overlay.metacopy` in the mount's record
/// namespace). Its block count cannot tell: a filesystem may count a block of xattrs in it.
pub fn is_metacopy(fd: BorrowedFd<'_>, ns: XattrNamespace) -> Result<bool> {
    Ok(get(fd, ns.metacopy())?.is_some())
}

/// The redirect record of real entry `fd` (a directory, or a metadata-only copy), if it has
/// one. An empty record is returned as it is: it is invalid, and
/// [`crate::redirect::Target::redirect`] says so.
pub fn redirect(fd: BorrowedFd<'_>, ns: XattrNamespace) -> Result<Option<Vec<u8>>> {
    get(fd, ns.redirect())
}

/// Writes the inode-number record on a copy. `user.*` xattrs cannot be set on symlinks and
/// special files: those keep no record in a rootless mount (see docs/DIFFERENCES.md).
pub fn set_ino_record(fd: BorrowedFd<'_>, ns: XattrNamespace, kind: Kind, ino: u64) -> Result<()> {
    if ns == XattrNamespace::User && !matches!(kind, Kind::Regular | Kind::Directory) {
        return Ok(());
    }
    sys::setxattr(fd, ns.ino_record(), ino.to_string().as_bytes(), 0)
}

/// The inode-number record of `entry` (with `stat` `st`), if it has one ufs may use.
///
/// In the upper every record counts. In a lower layer (an upper once), a record counts only
/// where no other object can share its number: the entry has one link and no origin handle. A
/// copy with several links, or one made into the index (it has an `overlay.origin`), may have
/// lower names that were never copied up and still report the lower file's number, which is
/// the number recorded; such a layer reports real numbers, as the kernel does for every lower.
///
/// `st` is the entry's `stat` when the caller has it; otherwise the entry is looked at only
/// when a record in a lower layer makes the link count matter.
pub fn recorded_ino(
    entry: &RealEntry,
    st: Option<&libc::stat>,
    in_upper: bool,
    ns: XattrNamespace,
) -> Result<Option<u64>> {
    let Some(v) = get_entry(entry, ns.ino_record())? else {
        return Ok(None);
    };
    let Some(ino) = parse_ino_record(&v) else {
        log::warn!("ignoring a malformed inode-number record {v:?}");
        return Ok(None);
    };
    if in_upper {
        return Ok(Some(ino));
    }
    let own;
    let st = match st {
        Some(st) => st,
        None => {
            own = entry.stat()?;
            &own
        }
    };
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if !is_dir && st.st_nlink != 1 {
        return Ok(None);
    }
    match get_entry(entry, ns.origin())? {
        Some(_) => Ok(None),
        None => Ok(Some(ino)),
    }
}

/// Parses an inode-number record.
pub fn parse_ino_record(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok().filter(|&n| n > 1)
}

/// The kernel's link-count record of an indexed copy (`overlay.nlink`): `U+N` means the
/// merged link count is the upper inode's plus N.
pub fn nlink_record(entry: &RealEntry, ns: XattrNamespace) -> Result<Option<i64>> {
    let Some(v) = get_entry(entry, ns.nlink())? else {
        return Ok(None);
    };
    let s = String::from_utf8_lossy(&v);
    let n = s.strip_prefix('U').and_then(|n| n.parse::<i64>().ok());
    if n.is_none() {
        log::warn!("ignoring a link-count record ufs cannot read: {s:?}");
    }
    Ok(n)
}

/// Writes the link-count record of an indexed copy: the merged count is the upper's plus `n`.
pub fn set_nlink_record(ns: XattrNamespace, entry: &RealEntry, n: i64) -> Result<()> {
    sys::setxattr(
        entry.fd()?.as_fd(),
        ns.nlink(),
        format!("U{n:+}").as_bytes(),
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_names_follow_the_namespace() {
        for (name, trusted, user) in [
            ("trusted.overlay.opaque", true, false),
            ("user.overlay.redirect", false, true),
            ("user.foo", false, false),
            ("trusted.overlayx", false, false),
            ("trusted.overlay.overlay.opaque", false, false),
            ("user.overlay.overlay.opaque", false, false),
            ("trusted.overlay.overlayx", true, false),
            ("security.selinux", false, false),
        ] {
            let n = OsStr::new(name);
            assert_eq!(XattrNamespace::Trusted.is_private(n), trusted, "{name}");
            assert_eq!(XattrNamespace::User.is_private(n), user, "{name}");
        }
    }

    #[test]
    fn list_filters_private() {
        let names = [
            "user.a",
            "trusted.overlay.opaque",
            "user.overlay.x",
            "user.b",
            "trusted.overlay.overlay.opaque",
            "user.overlay.overlay.overlay.x",
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            XattrNamespace::Trusted.visible_list(&names),
            &b"user.a\0user.overlay.x\0user.b\0trusted.overlay.opaque\0\
               user.overlay.overlay.overlay.x\0"[..]
        );
        assert_eq!(
            XattrNamespace::User.visible_list(&names),
            &b"user.a\0trusted.overlay.opaque\0user.b\0trusted.overlay.overlay.opaque\0\
               user.overlay.overlay.x\0"[..]
        );
    }

    #[test]
    fn names_of_the_namespace_are_escaped_one_level() {
        let t = XattrNamespace::Trusted;
        for (asked, stored) in [
            ("trusted.overlay.opaque", "trusted.overlay.overlay.opaque"),
            (
                "trusted.overlay.overlay.opaque",
                "trusted.overlay.overlay.overlay.opaque",
            ),
            ("trusted.overlayfsrz", "trusted.overlayfsrz"),
            ("user.overlay.opaque", "user.overlay.opaque"),
        ] {
            let got = t.layer_name(OsStr::new(asked)).unwrap();
            assert_eq!(got, OsStr::new(stored), "{asked}");
            if t.is_private(OsStr::new(stored)) {
                continue;
            }
            let back = t.mount_name(OsStr::new(stored)).unwrap();
            assert_eq!(&*back, asked.as_bytes(), "{stored}");
        }
        let u = XattrNamespace::User;
        assert_eq!(
            u.layer_name(OsStr::new("user.overlay.opaque")).unwrap(),
            OsStr::new("user.overlay.overlay.opaque")
        );
        assert_eq!(
            u.layer_name(OsStr::new("trusted.overlay.opaque")).unwrap(),
            OsStr::new("trusted.overlay.opaque")
        );
        assert_eq!(
            t.layer_name(OsStr::new("trusted.overlay."))
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        let long = format!("trusted.overlay.{}", "x".repeat(235));
        assert_eq!(
            t.layer_name(OsStr::new(&long)).unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
    }

    #[test]
    fn record_names() {
        assert_eq!(
            XattrNamespace::Trusted.redirect(),
            c"trusted.overlay.redirect"
        );
        assert_eq!(XattrNamespace::User.ino_record(), c"user.overlay.ufs.ino");
        assert_eq!(XattrNamespace::User.nlink(), c"user.overlay.nlink");
    }
}
