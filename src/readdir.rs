//! Merged directory listings.
//!
//! The listing of a merged directory is the union of the names of its real directories, each
//! taken from its top-most occurrence, without names whose top-most occurrence is a whiteout, and
//! without whiteout and opaque markers. Kernel counterpart: `ovl_dir_read_merged()` in
//! `fs/overlayfs/readdir.c`, which likewise builds the whole list when the directory is opened,
//! so offsets are plain indexes into a list that never changes for the life of the handle.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::error::Result;
use crate::inode::RealEntry;
use crate::kind::Kind;
use crate::layer::LayerStack;
use crate::listing::DirEntry;
use crate::records::{XattrNamespace, is_no_xattr, recorded_ino};
use crate::sys;
use crate::whiteout::{WH_PREFIX, has_xwhiteouts, is_hidden_name};

/// Lists a merged directory (without `.` and `..`).
///
/// `d_ino` must equal what `stat` reports: entries of a directory marked impure (it holds
/// copied-up entries) may carry an inode-number record, which is read for each of them, by the
/// rules of [`recorded_ino`] (which a lookup follows too).
pub fn merged_listing(
    layers: &LayerStack,
    reals: &[RealEntry],
    ns: XattrNamespace,
) -> Result<Vec<DirEntry>> {
    Ok(listing(layers, reals, ns)?.entries)
}

/// A merged listing, and whether its directory carries an impure marker that no entry needs.
pub struct Merged {
    pub entries: Vec<DirEntry>,
    /// The directory is in the upper only, marked `overlay.impure`, and no entry reports a
    /// number other than its real one: the marker can go, as the kernel removes it
    /// (`ovl_cache_get_impure()` in `fs/overlayfs/readdir.c`). The kernel's `d_ino` checks
    /// (xfstests `overlay/038`) take a marker that outlived its entries for an inconsistency.
    pub stale_impure: bool,
}

/// Whether entry `name` of the real directory `dir` is one of the kernel's alternative
/// whiteouts (false when it vanished since getdents).
fn is_xwhiteout_at(dir: &RealEntry, name: &std::ffi::OsStr, ns: XattrNamespace) -> Result<bool> {
    let cname = sys::cstr(name)?;
    let st = match sys::fstatat(dir.dir_fd()?, &cname) {
        Ok(st) => st,
        Err(e) if e.errno() == libc::ENOENT => return Ok(false),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        return Ok(false);
    }
    match sys::getxattr_at(dir.dir_fd()?, &cname, ns.xwhiteout()) {
        Ok(_) => Ok(true),
        Err(e) if is_no_xattr(e.errno()) || e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`merged_listing`], with what [`Merged::stale_impure`] says.
pub fn listing(layers: &LayerStack, reals: &[RealEntry], ns: XattrNamespace) -> Result<Merged> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    let upper_only = matches!(reals, [only] if Some(only.layer) == layers.upper());
    let mut marked = false;
    let mut needed = false;
    for real in reals {
        let entries = sys::read_dir(real.dir_fd()?)?;
        let in_upper = Some(real.layer) == layers.upper();
        let impure = match sys::getxattr(real.dir_fd()?, ns.impure()) {
            Ok(v) => v == b"y",
            Err(e) if is_no_xattr(e.errno()) => false,
            Err(e) => return Err(e),
        };
        marked |= impure;
        // The kernel's alternative whiteouts count in lower layers only, as in a lookup.
        let xwhiteouts = !in_upper && has_xwhiteouts(real.dir_fd()?, ns)?;
        let mut whiteouts = Vec::new();
        for e in entries {
            if is_hidden_name(&e.name) {
                let target = &e.name.as_bytes()[WH_PREFIX.len()..];
                // `.wh..wh..opq` is the opaque marker, not a whiteout of ".wh..opq".
                if target != b".wh..opq" {
                    whiteouts.push(OsString::from(std::ffi::OsStr::from_bytes(target)));
                }
                continue;
            }
            if seen.contains(&e.name) {
                continue;
            }
            let kind = match Kind::from_dtype(e.d_type) {
                Some(Kind::CharDevice) | None => {
                    let st = match sys::fstatat(real.dir_fd()?, &sys::cstr(&e.name)?) {
                        Ok(st) => st,
                        // Vanished since getdents: layers must not change under a mount, but
                        // a listing should not fail for it.
                        Err(err) if err.errno() == libc::ENOENT => continue,
                        Err(err) => return Err(err),
                    };
                    if sys::is_whiteout(&st) {
                        seen.insert(e.name);
                        continue;
                    }
                    match Kind::from_mode(st.st_mode) {
                        Some(k) => k,
                        None => continue,
                    }
                }
                Some(k) => k,
            };
            if xwhiteouts && kind == Kind::Regular && is_xwhiteout_at(real, &e.name, ns)? {
                seen.insert(e.name);
                continue;
            }
            let recorded = if impure
                && (ns == XattrNamespace::Trusted
                    || matches!(kind, Kind::Regular | Kind::Directory))
            {
                let entry =
                    RealEntry::named(real.layer, real.dir_arc()?.clone(), &sys::cstr(&e.name)?);
                // The entry is looked at only when it has a record (in a lower layer).
                match recorded_ino(&entry, None, in_upper, ns) {
                    Ok(r) => r,
                    // Vanished since getdents, as above.
                    Err(err) if err.errno() == libc::ENOENT => continue,
                    Err(err) => return Err(err),
                }
            } else {
                None
            };
            let in_mount = if in_upper {
                layers.copied_up(e.ino)
            } else {
                None
            };
            let real_ino = layers.map_ino(real.layer, e.ino);
            let ino = in_mount.or(recorded).unwrap_or(real_ino);
            needed |= ino != real_ino;
            out.push(DirEntry {
                ino,
                layer: real.layer,
                real_ino: e.ino,
                name: e.name.clone(),
                kind,
            });
            seen.insert(e.name);
        }
        // A `.wh.NAME` hides NAME in the layers below, but not a NAME in its own layer (which
        // was recorded above).
        seen.extend(whiteouts);
    }
    Ok(Merged {
        entries: out,
        stale_impure: upper_only && marked && !needed,
    })
}
