//! The layer stack: one optional upper and one or more lowers, each held by a directory fd.
//!
//! Layers are indexed top-down: index 0 is the upper when there is one, then the lowers in the
//! order of `lowerdir=` (top first). Kernel counterparts: `struct ovl_layer` and
//! `ovl_get_lowerstack()` in `fs/overlayfs/super.c`, and the `xino` inode-number scheme of
//! `fs/overlayfs/inode.c` (`ovl_map_ino`).
//!
//! Inode numbers: when every layer sits on one filesystem, a real inode number is unique as it
//! is and is reported unchanged. Otherwise each distinct filesystem gets an index `f`, and the
//! reported number is `f << shift | real_ino`, with `shift` leaving room for the index in the top
//! bits (plus one bit reserved for numbers that do not fit). A real number too large to leave
//! room gets a number from a counter with the reserved bit set, remembered for the life of the
//! mount. This is unique within the mount and stable for as long as the mount lives.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::error::Result;
use crate::sys;
use crate::xattr::XattrNamespace;

/// Whether a layer can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Upper,
    Lower,
}

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub kind: LayerKind,
    /// `O_PATH` fd on the layer's root directory.
    pub root: Arc<OwnedFd>,
    /// The path given at mount time, for messages only: ufs never resolves it again.
    pub path: PathBuf,
    /// `st_dev` of the root.
    pub dev: u64,
    /// Index of this layer's filesystem among the distinct filesystems of the stack.
    pub fs_index: u64,
}

impl Layer {
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// The ordered layer stack.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    has_upper: bool,
    /// Bits the real inode number may use (64 when all layers share one filesystem).
    ino_bits: u32,
    /// Numbers given to real inodes too large for `ino_bits`, keyed by (dev, real ino).
    overflow: DashMap<(u64, u64), u64>,
    next_overflow: AtomicU64,
    /// Upper real inode number -> the number its object had before copy-up, so an object keeps
    /// its `st_ino` (in `stat` and in `readdir`) for the life of the mount.
    copied_up: DashMap<u64, u64>,
    /// The namespace of the records this mount reads and writes (see [`crate::xattr`]).
    ns: XattrNamespace,
    /// Whether redirect records and metadata-only copies are followed.
    follow_redirects: bool,
    follow_metacopy: bool,
}

impl LayerStack {
    /// Opens every layer root. `upper` comes first when present; `lowers` are top first.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> std::io::Result<LayerStack> {
        let mut layers = Vec::with_capacity(lowers.len() + 1);
        let mut devs: Vec<u64> = Vec::new();
        let paths = upper
            .map(|u| (LayerKind::Upper, u))
            .into_iter()
            .chain(lowers.iter().map(|l| (LayerKind::Lower, l.as_path())));
        for (kind, path) in paths {
            let root = sys::open_dir_path(path).map_err(|e| {
                std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("{} \"{}\": {}", kind_name(kind), path.display(), e),
                )
            })?;
            let st = sys::fstat(root.as_fd())?;
            let fs_index = match devs.iter().position(|&d| d == st.st_dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(st.st_dev);
                    (devs.len() - 1) as u64
                }
            };
            layers.push(Layer {
                kind,
                root: Arc::new(root),
                path: path.to_path_buf(),
                dev: st.st_dev,
                fs_index,
            });
        }
        let ino_bits = if devs.len() <= 1 {
            64
        } else {
            // Room for the filesystem index plus the reserved overflow bit.
            let index_bits = 64 - (devs.len() as u64 - 1).leading_zeros();
            64 - index_bits - 1
        };
        Ok(LayerStack {
            layers,
            has_upper: upper.is_some(),
            ino_bits,
            overflow: DashMap::new(),
            next_overflow: AtomicU64::new(1),
            copied_up: DashMap::new(),
            ns: XattrNamespace::for_daemon(),
            follow_redirects: true,
            follow_metacopy: true,
        })
    }

    /// The namespace of the records this mount reads and writes.
    pub fn ns(&self) -> XattrNamespace {
        self.ns
    }

    /// Sets the namespace of the records, once it is known (before the mount serves anything).
    pub fn set_ns(&mut self, ns: XattrNamespace) {
        self.ns = ns;
    }

    /// Sets whether redirect records and metadata-only copies are followed.
    pub fn set_follow(&mut self, redirects: bool, metacopy: bool) {
        self.follow_redirects = redirects;
        self.follow_metacopy = metacopy;
    }

    /// Whether redirect records are followed.
    pub fn follows_redirects(&self) -> bool {
        self.follow_redirects
    }

    /// Whether metadata-only copies are recognised.
    pub fn follows_metacopy(&self) -> bool {
        self.follow_metacopy
    }

    /// Whether `layer` is the bottom-most layer, below which nothing is searched.
    pub fn is_last(&self, layer: usize) -> bool {
        layer + 1 >= self.layers.len()
    }

    pub fn get(&self, index: usize) -> &Layer {
        &self.layers[index]
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().enumerate()
    }

    /// The upper layer's index (always 0), if there is an upper.
    pub fn upper(&self) -> Option<usize> {
        self.has_upper.then_some(0)
    }

    /// The number ufs reports for real inode `ino` of layer `layer`.
    ///
    /// 0 and 1 are never returned: FUSE reserves them (no entry, and the root's node id).
    pub fn map_ino(&self, layer: usize, ino: u64) -> u64 {
        let l = &self.layers[layer];
        let mapped = if self.ino_bits == 64 {
            ino
        } else if ino >> self.ino_bits == 0 {
            (l.fs_index << self.ino_bits) | ino
        } else {
            0
        };
        if mapped > 1 {
            return mapped;
        }
        let reserved = 1u64 << 63;
        *self
            .overflow
            .entry((l.dev, ino))
            .or_insert_with(|| reserved | self.next_overflow.fetch_add(1, Ordering::Relaxed))
    }

    /// Records that upper real inode `real` keeps reporting `st_ino` (copied up from it).
    pub fn remember_copy_up(&self, real: u64, st_ino: u64) {
        self.copied_up.insert(real, st_ino);
    }

    /// The number recorded for upper real inode `real`, if it was copied up in this mount.
    pub fn copied_up(&self, real: u64) -> Option<u64> {
        self.copied_up.get(&real).map(|v| *v)
    }

    /// Forgets the record of upper real inode `real`, whose object is gone.
    pub fn forget_copy_up(&self, real: u64) {
        self.copied_up.remove(&real);
    }

    /// `statvfs` of the filesystem the mount reports: the upper's, else the top lower's.
    pub fn statfs(&self) -> Result<libc::statvfs> {
        sys::fstatvfs(self.layers[0].root())
    }
}

fn kind_name(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::Upper => "upperdir",
        LayerKind::Lower => "lowerdir",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filesystem_keeps_real_numbers() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = LayerStack::open(None, &[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(s.map_ino(0, 12345), 12345);
        assert_eq!(s.map_ino(1, 12345), 12345);
    }
}
