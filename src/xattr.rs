//! Overlay records kept in extended attributes, and which xattrs are visible through the mount.
//!
//! A mount reads and writes its records in exactly one namespace (kernel: `ovl_xattr()` and
//! `ofs->config.userxattr` in `fs/overlayfs/`): `trusted.overlay.*` when the daemon may use
//! `trusted.*` names, else `user.overlay.*` (unprivileged, in a user namespace, or with
//! `-o userxattr`). Names of that namespace are private: hidden from listings, `ENODATA` to read
//! and `EPERM` to write through the mount, as the kernel does (`ovl_is_private_xattr`). Names of
//! the other namespace are ordinary xattrs: a `user.overlay.redirect` that anyone who owns a file
//! can set is never taken as a record by a mount that uses `trusted.overlay.*`.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

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

    /// Whether `name` is one of this namespace's records, hidden from the mount's users.
    pub fn is_private(self, name: &OsStr) -> bool {
        name.as_bytes().starts_with(self.prefix())
    }

    /// The NUL-separated list of the visible names among `names`.
    pub fn visible_list(self, names: &[std::ffi::OsString]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in names.iter().filter(|n| !self.is_private(n)) {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        out
    }
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
        ]
        .map(std::ffi::OsString::from);
        assert_eq!(
            XattrNamespace::Trusted.visible_list(&names),
            b"user.a\0user.overlay.x\0user.b\0"
        );
        assert_eq!(
            XattrNamespace::User.visible_list(&names),
            b"user.a\0trusted.overlay.opaque\0user.b\0"
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
