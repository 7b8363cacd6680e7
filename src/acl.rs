//! POSIX ACLs of new entries: what a new file or directory inherits from its parent's default
//! ACL, and where the caller's umask applies instead.
//!
//! With FUSE's `POSIX_ACL` the kernel enforces ACLs itself, reading `system.posix_acl_access`
//! through `getxattr`, and leaves the umask and inheritance to the filesystem (`DONT_MASK`
//! hands ufs the mode unmasked, with the caller's umask). An entry made directly in its upper
//! parent inherits from that parent in the upper filesystem, as the kernel overlay's
//! `ovl_create_upper` relies on; one built in the work directory (which has no ACL) and renamed
//! into place is given here what the union parent's default ACL says, as the kernel's
//! `ovl_create_over_whiteout` does with `posix_acl_create()`. Kernel counterparts:
//! `posix_acl_create()` and `posix_acl_create_masq()` in `fs/posix_acl.c`; the xattr format is
//! `include/uapi/linux/posix_acl_xattr.h`.

use crate::error::{EIO, Result};

/// The access ACL xattr.
pub const ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
/// The default ACL xattr (directories only).
pub const DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One ACL entry: tag, permission bits (`rwx` as 4, 2, 1), qualifier (uid or gid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL decoded from its xattr value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    /// Decodes an xattr value; `EIO` for anything the kernel would not have written.
    pub fn parse(value: &[u8]) -> Result<Acl> {
        let (header, body) = value.split_at_checked(HEADER).ok_or(EIO)?;
        let version = u32::from_le_bytes(header.try_into().map_err(|_| EIO)?);
        if version != VERSION || !body.len().is_multiple_of(ENTRY) {
            return Err(EIO);
        }
        let entries = body
            .chunks_exact(ENTRY)
            .map(|c| {
                let (tag, rest) = c.split_at(2);
                let (perm, id) = rest.split_at(2);
                Ok(AclEntry {
                    tag: u16::from_le_bytes(tag.try_into().map_err(|_| EIO)?),
                    perm: u16::from_le_bytes(perm.try_into().map_err(|_| EIO)?),
                    id: u32::from_le_bytes(id.try_into().map_err(|_| EIO)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Acl { entries })
    }

    /// The xattr value.
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + ENTRY * self.entries.len());
        v.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// `posix_acl_create_masq()`: masks this (a copy of the parent's default ACL) with the
    /// requested `mode` and the mode with it. Returns the new mode and whether the ACL says more
    /// than the mode can (named entries or a mask), i.e. whether it must be kept.
    fn create_masq(&mut self, mode: u32) -> Result<(u32, bool)> {
        let mut m = mode & 0o777;
        let mut not_equiv = false;
        let (mut group_obj, mut mask_obj) = (None, None);
        for (i, e) in self.entries.iter_mut().enumerate() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) | !0o7) as u16;
                    m &= ((e.perm as u32) << 6) | !0o700;
                }
                USER | GROUP => not_equiv = true,
                GROUP_OBJ => group_obj = Some(i),
                OTHER => {
                    e.perm &= (m | !0o7) as u16;
                    m &= (e.perm as u32) | !0o7;
                }
                MASK => {
                    mask_obj = Some(i);
                    not_equiv = true;
                }
                _ => return Err(EIO),
            }
        }
        let e = self
            .entries
            .get_mut(mask_obj.or(group_obj).ok_or(EIO)?)
            .ok_or(EIO)?;
        e.perm &= ((m >> 3) | !0o7) as u16;
        m &= ((e.perm as u32) << 3) | !0o70;
        Ok(((mode & !0o777) | (m & 0o777), not_equiv))
    }
}

/// What a new entry gets from its parent: its mode, and the ACLs to set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The permission bits (with any set-id bits the caller asked for).
    pub mode: u32,
    /// The access ACL, when the parent's default ACL says more than the mode.
    pub access: Option<Vec<u8>>,
    /// The default ACL (a new directory inherits its parent's).
    pub default: Option<Vec<u8>>,
}

/// `posix_acl_create()`: what an entry created with `mode` in a directory whose default ACL is
/// `parent_default` gets. Without a default ACL the caller's `umask` applies; with one, the
/// umask does not, and the mode is masked by the ACL instead.
pub fn inherit(
    parent_default: Option<&[u8]>,
    mode: u32,
    is_dir: bool,
    umask: u32,
) -> Result<Inherited> {
    let mode = mode & 0o7777;
    let default = match parent_default {
        Some(v) => Some(Acl::parse(v)?).filter(|a| !a.entries.is_empty()),
        None => None,
    };
    let Some(default) = default else {
        return Ok(Inherited {
            mode: mode & !(umask & 0o777),
            access: None,
            default: None,
        });
    };
    let mut access = default.clone();
    let (mode, keep) = access.create_masq(mode)?;
    Ok(Inherited {
        mode,
        access: keep.then(|| access.to_xattr()),
        default: is_dir.then(|| default.to_xattr()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
                .collect(),
        }
        .to_xattr()
    }

    #[test]
    fn without_a_default_acl_the_umask_applies() {
        let i = inherit(None, 0o2666, false, 0o022).unwrap();
        assert_eq!(i.mode, 0o2644);
        assert_eq!((i.access, i.default), (None, None));
    }

    #[test]
    fn a_default_acl_masks_the_mode_and_becomes_the_access_acl() {
        // default: user::rwx, user:65534:rwx, group::r-x, mask::rwx, other::---
        let d = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let f = inherit(Some(&d), 0o666, false, 0o022).unwrap();
        assert_eq!(f.mode, 0o660, "no umask, masked by the ACL");
        let want = acl(&[
            (USER_OBJ, 6, u32::MAX),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 6, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        assert_eq!(f.access.as_deref(), Some(&want[..]));
        assert_eq!(f.default, None);
        let d2 = inherit(Some(&d), 0o777, true, 0o022).unwrap();
        assert_eq!(d2.mode, 0o770);
        assert_eq!(d2.default.as_deref(), Some(&d[..]));
    }

    #[test]
    fn a_minimal_default_acl_gives_only_a_mode() {
        let d = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 7, 0)]);
        let f = inherit(Some(&d), 0o666, false, 0o077).unwrap();
        assert_eq!(f.mode, 0o646);
        assert_eq!(f.access, None);
    }

    #[test]
    fn malformed_values_are_eio() {
        assert!(Acl::parse(b"\x02\0\0").is_err());
        assert!(Acl::parse(b"\x01\0\0\0").is_err());
        assert!(Acl::parse(b"\x02\0\0\0\x01\0").is_err());
        let d = acl(&[(USER_OBJ, 7, 0), (0x40, 7, 0)]);
        assert!(inherit(Some(&d), 0o666, false, 0).is_err());
    }
}
