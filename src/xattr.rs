//! Which extended attributes are visible through the mount.
//!
//! Overlay-private names (`trusted.overlay.*`, `user.overlay.*`, and ufs's own `user.ufs.*` /
//! `trusted.ufs.*`) describe the layers to the overlay itself; they are hidden from listings and
//! cannot be read or written through the mount. Reading one answers `ENODATA`, as the kernel
//! does (`fs/overlayfs/xattrs.c`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

const PRIVATE_PREFIXES: [&[u8]; 4] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"trusted.ufs.",
    b"user.ufs.",
];

pub fn is_private(name: &OsStr) -> bool {
    let b = name.as_bytes();
    PRIVATE_PREFIXES.iter().any(|p| b.starts_with(p))
}

/// The NUL-separated list of the visible names among `names`.
pub fn visible_list(names: &[std::ffi::OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names.iter().filter(|n| !is_private(n)) {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_names() {
        for (name, private) in [
            ("trusted.overlay.opaque", true),
            ("user.overlay.redirect", true),
            ("user.ufs.origin", true),
            ("user.foo", false),
            ("trusted.overlayx", false),
            ("security.selinux", false),
        ] {
            assert_eq!(is_private(OsStr::new(name)), private, "{name}");
        }
    }

    #[test]
    fn list_filters_private() {
        let names = ["user.a", "trusted.overlay.opaque", "user.b"].map(std::ffi::OsString::from);
        assert_eq!(visible_list(&names), b"user.a\0user.b\0");
    }
}
