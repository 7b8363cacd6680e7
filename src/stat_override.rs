//! Stat overrides: owners and modes kept in an xattr instead of on the inode (fuse-overlayfs's
//! `xattr_permissions=`). No kernel counterpart: the kernel overlay always shows the real owner
//! and mode.
//!
//! containers/storage with `force_mask` stores every layer file with a forced mode and the
//! daemon's own owner, and puts the image's owner and mode in `user.containers.override_stat`
//! (`UID:GID:MODE[:TYPE]`, the mode in octal); it then mounts with `xattr_permissions=2`. With
//! `xattr_permissions=1` the record is `security.fuseoverlayfs.override_stat`, which only a
//! privileged process can write; fuse-overlayfs also reads `user.fuseoverlayfs.override_stat`.
//!
//! Invariants:
//! - Records are only read or written when the mount asks for them (`xattr_permissions=1|2`).
//!   fuse-overlayfs honours a lower layer's records whenever its root carries one; ufs does not,
//!   since a `user.*` record that anyone owning a layer can write would otherwise make a file of
//!   theirs setuid root in a privileged mount.
//! - A layer keeps its records under the one name its root carries (looked for in the order of
//!   [`NAMES`]); the upper uses `user.containers.override_stat` with `=2` (or
//!   `user.fuseoverlayfs.override_stat` when its root already has that one) and
//!   `security.fuseoverlayfs.override_stat` with `=1`. An upper root without a record gets the
//!   first lower root's record, else one made from its real attributes, at mount time.
//! - Only regular files and directories carry records (as in fuse-overlayfs): the permission
//!   bits and owner of a record replace the real ones; the file type always stays the real one.
//!   Their disk mode is `0755` (no set-id bits on disk), their disk owner the daemon's. Other
//!   kinds keep real owners and modes.
//! - A record that cannot be parsed is an error (`EIO`), never ignored: falling back to the
//!   forced disk mode could show a private file as readable by all.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{EIO, Result};
use crate::kind::Kind;
use crate::layer::LayerStack;
use crate::records::is_no_xattr;
use crate::sys;

/// containers/storage's record.
pub const CONTAINERS: &CStr = c"user.containers.override_stat";
/// fuse-overlayfs's unprivileged record.
pub const USER: &CStr = c"user.fuseoverlayfs.override_stat";
/// fuse-overlayfs's privileged record (`xattr_permissions=1`).
pub const PRIVILEGED: &CStr = c"security.fuseoverlayfs.override_stat";
/// Every record name, in the order a layer root is searched for one.
pub const NAMES: [&CStr; 3] = [PRIVILEGED, USER, CONTAINERS];

/// The mode on disk of a regular file or directory whose real mode lives in a record: the
/// daemon (its owner) can read, write and search it, and it is never set-id.
pub const DISK_MODE: u32 = 0o755;

/// Whether `name` (an xattr name asked for through the mount) is a stat record, hidden from the
/// mount's users when records are in use.
pub fn is_record_name(name: &[u8]) -> bool {
    NAMES.iter().any(|n| n.to_bytes() == name)
}

/// Whether objects of kind `kind` carry records.
pub fn applies_to(kind: Kind) -> bool {
    matches!(kind, Kind::Regular | Kind::Directory)
}

/// An owner and permission bits from a record. Ids are disk ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatOverride {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
}

impl StatOverride {
    /// The owner and permission bits of `st`.
    pub fn of_stat(st: &libc::stat) -> StatOverride {
        StatOverride {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
        }
    }

    /// Parses `UID:GID:MODE[:TYPE]` (ids in decimal, the mode in octal, perhaps with file-type
    /// bits, which are ignored like `TYPE`).
    pub fn parse(value: &[u8]) -> Option<StatOverride> {
        let text = std::str::from_utf8(value).ok()?;
        // fuse-overlayfs's own writer ends the value with nothing; some writers add a NUL.
        let text = text.trim_end_matches('\0');
        let mut fields = text.split(':');
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        if fields.count() > 1 {
            return None;
        }
        Some(StatOverride {
            uid,
            gid,
            mode: mode & 0o7777,
        })
    }

    /// The record for an object of file type `file_type` (`S_IFREG`, `S_IFDIR`), in
    /// fuse-overlayfs's form (`UID:GID:MODE` with the type bits in the mode), which every reader
    /// (fuse-overlayfs 1.x, containers/storage) parses.
    pub fn encode(&self, file_type: u32) -> Vec<u8> {
        format!(
            "{}:{}:{:o}",
            self.uid,
            self.gid,
            (file_type & libc::S_IFMT) | self.mode
        )
        .into_bytes()
    }

    /// Puts the owner and permission bits into `st`, keeping its file type.
    pub fn apply(&self, st: &mut libc::stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = (st.st_mode & libc::S_IFMT) | self.mode;
    }
}

/// The record `name` of the object behind `fd`, if it has one.
pub fn read(fd: BorrowedFd<'_>, name: &CStr) -> Result<Option<StatOverride>> {
    match sys::getxattr(fd, name) {
        Ok(v) => match StatOverride::parse(&v) {
            Some(o) => Ok(Some(o)),
            None => {
                log::warn!(
                    "malformed {} record {:?}",
                    name.to_string_lossy(),
                    String::from_utf8_lossy(&v)
                );
                Err(EIO.context("stat record"))
            }
        },
        Err(e) if is_no_xattr(e.errno()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes record `name` on the object behind `fd` (a regular file or directory).
pub fn write(fd: BorrowedFd<'_>, name: &CStr, o: &StatOverride, file_type: u32) -> Result<()> {
    sys::setxattr(fd, name, &o.encode(file_type), 0)
}

/// Replaces the owner and permission bits of `st` (the real attributes of an object of kind
/// `kind` behind `fd`) by its record `name`, when it has one.
pub fn apply(
    fd: BorrowedFd<'_>,
    name: Option<&CStr>,
    kind: Kind,
    st: &mut libc::stat,
) -> Result<()> {
    if let Some(name) = name
        && applies_to(kind)
        && let Some(o) = read(fd, name)?
    {
        o.apply(st);
    }
    Ok(())
}

/// Decides each layer's record name for `xattr_permissions=level` (1 or 2), and gives the upper
/// root a record when it has none (see the module's invariants). `upper_writable` is false for a
/// read-only mount, which writes nothing.
pub fn set_up(layers: &mut LayerStack, level: u8, upper_writable: bool) -> Result<()> {
    let found: Vec<Option<&'static CStr>> = layers
        .iter()
        .map(|(_, l)| root_record(l.root()))
        .collect::<Result<_>>()?;
    let upper = layers.upper();
    for (i, name) in found.iter().enumerate() {
        let chosen = if Some(i) == upper {
            Some(match (level, name) {
                (1, _) => PRIVILEGED,
                (_, Some(n)) if *n == USER => USER,
                _ => CONTAINERS,
            })
        } else {
            match (level, name) {
                // A privileged mount reads only records a privileged process wrote.
                (1, Some(n)) if *n == PRIVILEGED => Some(PRIVILEGED),
                (1, _) => None,
                (_, Some(n)) if *n != PRIVILEGED => Some(*n),
                _ => None,
            }
        };
        layers.set_stat_override(i, chosen);
    }
    if let (Some(u), true) = (upper, upper_writable) {
        let name = layers.stat_override(u).ok_or(EIO)?;
        let root = layers.get(u).root.clone();
        let root = root.as_fd();
        if read(root, name)?.is_none() {
            let from_lower = layers
                .iter()
                .filter(|(i, _)| *i != u)
                .find_map(|(i, l)| layers.stat_override(i).map(|n| (l.root(), n)))
                .map(|(fd, n)| read(fd, n))
                .transpose()?
                .flatten();
            let record = match from_lower {
                Some(o) => o,
                None => StatOverride::of_stat(&sys::fstat(root)?),
            };
            write(root, name, &record, libc::S_IFDIR)?;
        }
    }
    Ok(())
}

/// The record name the layer root `root` carries, if any.
fn root_record(root: BorrowedFd<'_>) -> Result<Option<&'static CStr>> {
    for name in NAMES {
        match sys::getxattr(root, name) {
            Ok(_) => return Ok(Some(name)),
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_writer_s_form() {
        let o = |uid, gid, mode| Some(StatOverride { uid, gid, mode });
        // containers/storage (older and newer), fuse-overlayfs 1.x (type bits in the mode).
        assert_eq!(StatOverride::parse(b"1000:1000:0600"), o(1000, 1000, 0o600));
        assert_eq!(StatOverride::parse(b"0:0:0755:dir"), o(0, 0, 0o755));
        assert_eq!(StatOverride::parse(b"5:6:100640"), o(5, 6, 0o640));
        assert_eq!(StatOverride::parse(b"0:0:104711"), o(0, 0, 0o4711));
        assert_eq!(StatOverride::parse(b"0:0:755\0"), o(0, 0, 0o755));
        for bad in [
            &b""[..],
            b"1:2",
            b"a:0:755",
            b"0:0:9",
            b"0:0:755:dir:x",
            b"-1:0:755",
        ] {
            assert_eq!(StatOverride::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_as_fuse_overlayfs_does_and_reads_back() {
        let o = StatOverride {
            uid: 5,
            gid: 6,
            mode: 0o2640,
        };
        assert_eq!(o.encode(libc::S_IFREG), b"5:6:102640");
        assert_eq!(StatOverride::parse(&o.encode(libc::S_IFDIR)), Some(o));
        let mut st = sys::zeroed_stat();
        st.st_mode = libc::S_IFDIR | 0o755;
        o.apply(&mut st);
        assert_eq!(
            (st.st_uid, st.st_gid, st.st_mode),
            (5, 6, libc::S_IFDIR | 0o2640)
        );
    }
}
