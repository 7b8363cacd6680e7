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
use crate::inode::{Kind, RealEntry};
use crate::layer::LayerStack;
use crate::lookup::{WH_PREFIX, is_hidden_name};
use crate::sys;

/// One entry of a merged listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
    /// The `st_ino` that `stat` reports for this entry.
    pub ino: u64,
}

/// Lists a merged directory (without `.` and `..`).
pub fn merged_listing(layers: &LayerStack, reals: &[RealEntry]) -> Result<Vec<DirEntry>> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    for real in reals {
        let entries = sys::read_dir(real.fd())?;
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
                    let st = match sys::fstatat(real.fd(), &sys::cstr(&e.name)?) {
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
            out.push(DirEntry {
                ino: layers.map_ino(real.layer, e.ino),
                name: e.name.clone(),
                kind,
            });
            seen.insert(e.name);
        }
        // A `.wh.NAME` hides NAME in the layers below, but not a NAME in its own layer (which
        // was recorded above).
        seen.extend(whiteouts);
    }
    Ok(out)
}
