//! The layer stack: one optional upper and one or more lowers, each held by a directory fd.
//!
//! Layers are indexed top-down: index 0 is the upper when there is one, then the lowers in the
//! order of `lowerdir=` (top first), then the data-only layers (`lowerdir=...::DATA`,
//! `datadir+=`), which are never merged: [`LayerStack::len`] and [`LayerStack::iter`] cover the
//! merged layers only, and a data-only layer is reached only through
//! [`LayerStack::data_layers`], by the lookup of a metadata-only copy's data. Kernel counterparts: `struct ovl_layer` and
//! `ovl_get_lowerstack()` in `fs/overlayfs/super.c`, and the `xino` inode-number scheme of
//! `fs/overlayfs/inode.c` (`ovl_map_ino`).
//!
//! Inode numbers: when every layer sits on one filesystem, a real inode number is unique as it
//! is and is reported unchanged. Otherwise each distinct filesystem gets an index `f`, and the
//! reported number is `f << shift | real_ino`, with `shift` leaving room for the index in the top
//! bits (plus one bit reserved for numbers that do not fit). A real number too large to leave
//! room gets a number from a counter with the reserved bit set, remembered for the life of the
//! mount. This is unique within the mount and stable for as long as the mount lives.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::error::Result;
use crate::records::XattrNamespace;
use crate::sys;

/// Whether a layer can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Upper,
    Lower,
    /// A data-only lower layer: holds the data of metadata-only copies, never merged.
    Data,
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
    /// The xattr holding the owner and mode of its files, with `xattr_permissions=`
    /// ([`crate::stat_override`]).
    pub stat_override: Option<&'static CStr>,
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
    /// How many of `layers` are merged (the upper and the regular lowers); the data-only layers
    /// follow them.
    merged: usize,
    has_upper: bool,
    /// Bits the real inode number may use (64 when all layers share one filesystem).
    ino_bits: u32,
    /// Numbers given to real inodes too large for `ino_bits`, keyed by (dev, real ino).
    overflow: DashMap<(u64, u64), u64>,
    next_overflow: AtomicU64,
    /// Upper real inode number -> the number its object had before copy-up, so an object keeps
    /// its `st_ino` (in `stat` and in `readdir`) for the life of the mount.
    copied_up: DashMap<u64, u64>,
    /// The namespace of the records this mount reads and writes (see [`crate::records`]).
    ns: XattrNamespace,
    /// Whether redirect records and metadata-only copies are followed.
    follow_redirects: bool,
    follow_metacopy: bool,
}

/// A directory the user named for a mount, opened once by its path (following symlinks, as
/// mount options do). Every check on it and every clone of it is made on `fd`, so nothing can
/// swap another directory in between.
#[derive(Debug)]
pub struct NamedDir {
    /// The path as given, for messages.
    pub path: PathBuf,
    /// `O_PATH` fd on the directory.
    pub fd: OwnedFd,
    /// Where the directory is, from the fd (`/proc/self/fd/N`): absolute, no symlinks.
    pub canonical: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl NamedDir {
    /// Opens `path` (which must be a directory: `ENOTDIR` otherwise).
    pub fn open(path: &Path) -> Result<NamedDir> {
        let fd = sys::open_dir_path(path)?;
        let st = sys::fstat(fd.as_fd())?;
        let canonical = sys::fd_path(fd.as_fd())?;
        Ok(NamedDir {
            path: path.to_path_buf(),
            fd,
            canonical,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// The directories a mount's options name, each opened once ([`NamedDir`]).
#[derive(Debug, Default)]
pub struct NamedDirs {
    pub upper: Option<NamedDir>,
    pub work: Option<NamedDir>,
    /// Top first.
    pub lowers: Vec<NamedDir>,
    /// The data-only layers, in the order they are searched.
    pub data: Vec<NamedDir>,
}

impl NamedDirs {
    /// Opens the directories; an error names the option and the path.
    pub fn open(
        upper: Option<&Path>,
        work: Option<&Path>,
        lowers: &[PathBuf],
        data: &[PathBuf],
    ) -> std::io::Result<NamedDirs> {
        Self::open_with(upper, work, lowers, data, |option, path, e| {
            std::io::Error::new(
                std::io::Error::from(e.clone()).kind(),
                format!("{option} \"{}\": {e}", path.display()),
            )
        })
    }

    /// Opens the directories, lowers first (data-only layers last of them); a failure is turned
    /// into `E` by `failed`, given the option that named the directory (`"lowerdir"`,
    /// `"datadir"`, `"upperdir"`, `"workdir"`) and its path.
    pub fn open_with<E>(
        upper: Option<&Path>,
        work: Option<&Path>,
        lowers: &[PathBuf],
        data: &[PathBuf],
        failed: impl Fn(&'static str, &Path, crate::error::Error) -> E,
    ) -> std::result::Result<NamedDirs, E> {
        let open = |option, path: &Path| NamedDir::open(path).map_err(|e| failed(option, path, e));
        let open_all = |option, paths: &[PathBuf]| {
            paths
                .iter()
                .map(|l| open(option, l))
                .collect::<std::result::Result<Vec<_>, E>>()
        };
        let lowers = open_all("lowerdir", lowers)?;
        let data = open_all("datadir", data)?;
        Ok(NamedDirs {
            upper: upper.map(|p| open("upperdir", p)).transpose()?,
            work: work.map(|p| open("workdir", p)).transpose()?,
            lowers,
            data,
        })
    }

    /// Every lower directory: the regular ones, then the data-only ones.
    pub fn all_lowers(&self) -> impl Iterator<Item = &NamedDir> {
        self.lowers.iter().chain(&self.data)
    }
}

/// The directories of a mount, ready to serve from.
#[derive(Debug)]
pub struct LayerDirs {
    pub upper: Option<OwnedFd>,
    pub work: Option<OwnedFd>,
    /// Top first.
    pub lowers: Vec<OwnedFd>,
    /// The data-only layers, in search order.
    pub data: Vec<OwnedFd>,
}

/// The directories of a mount (the work directory only with `with_work`), each on a private
/// clone of its mount where the daemon may make one ([`sys::open_tree_clone_fd`], as the kernel
/// overlay clones its layers): the daemon's fds then keep no mount the user made busy, so the
/// filesystems holding the layers can be unmounted right after the union (a FUSE unmount
/// returns before the daemon has exited). The upper and the work directory must share one
/// clone (copies are renamed from one to the other): it is rooted at their closest common
/// directory, and each is opened beneath it with `openat2` and checked to be the directory
/// already opened. Without the privilege (an unprivileged daemon) the opened directories are
/// used as they are.
pub fn private_dirs(named: &NamedDirs, with_work: bool) -> std::io::Result<LayerDirs> {
    let work = named.work.as_ref().filter(|_| with_work);
    let dup = |d: &NamedDir| d.fd.try_clone();
    let (upper_fd, work_fd) = match (&named.upper, work) {
        (Some(u), Some(w)) => match private_pair(u, w) {
            Some((a, b)) => (Some(a), Some(b)),
            None => (Some(dup(u)?), Some(dup(w)?)),
        },
        (Some(u), None) => (Some(private_dir(u)?), None),
        (None, Some(w)) => (None, Some(private_dir(w)?)),
        (None, None) => (None, None),
    };
    let lowers = named
        .lowers
        .iter()
        .map(private_dir)
        .collect::<std::io::Result<_>>()?;
    let data = named
        .data
        .iter()
        .map(private_dir)
        .collect::<std::io::Result<_>>()?;
    Ok(LayerDirs {
        upper: upper_fd,
        work: work_fd,
        lowers,
        data,
    })
}

/// Opens the directories of a mount by their paths, then as [`private_dirs`] does.
pub fn open_dirs(
    upper: Option<&Path>,
    work: Option<&Path>,
    lowers: &[PathBuf],
) -> std::io::Result<LayerDirs> {
    private_dirs(&NamedDirs::open(upper, work, lowers, &[])?, work.is_some())
}

/// `dir` on a private clone of its mount, else the directory as opened.
fn private_dir(dir: &NamedDir) -> std::io::Result<OwnedFd> {
    match sys::open_tree_clone_fd(dir.fd.as_fd()) {
        Ok(fd) if same_dir(&fd, dir) => Ok(fd),
        Ok(_) => Err(crate::error::EIO.into()),
        Err(e) if matches!(e.errno(), libc::EPERM | libc::ENOSYS | libc::EINVAL) => {
            log::debug!(
                "no private clone of {:?} ({e}); using it as it is",
                dir.path
            );
            Ok(dir.fd.try_clone()?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `fd` is the directory `dir`.
fn same_dir(fd: &OwnedFd, dir: &NamedDir) -> bool {
    sys::fstat(fd.as_fd()).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFDIR && (st.st_dev, st.st_ino) == (dir.dev, dir.ino)
    })
}

/// The upper and work directories beneath one private clone of their closest common directory,
/// checked to be the very directories already opened; `None` where that cannot be done.
fn private_pair(upper: &NamedDir, work: &NamedDir) -> Option<(OwnedFd, OwnedFd)> {
    let (u, w) = (&upper.canonical, &work.canonical);
    let mut common = PathBuf::new();
    for (a, b) in u.components().zip(w.components()) {
        if a != b {
            break;
        }
        common.push(a);
    }
    let attempt = || -> Result<(OwnedFd, OwnedFd)> {
        let root = sys::open_tree_clone(&common)?;
        let open = |dir: &NamedDir| -> Result<OwnedFd> {
            let rel = dir
                .canonical
                .strip_prefix(&common)
                .map_err(|_| crate::error::EINVAL)?;
            let fd = if rel.as_os_str().is_empty() {
                root.try_clone()?
            } else {
                sys::open_beneath(root.as_fd(), rel)?
            };
            // The directory the user named, not one swapped in since it was opened.
            if !same_dir(&fd, dir) {
                return Err(crate::error::EIO);
            }
            Ok(fd)
        };
        Ok((open(upper)?, open(work)?))
    };
    match attempt() {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::debug!("no private clone of {common:?} ({e}); using the directories as opened");
            None
        }
    }
}

impl LayerStack {
    /// Opens every layer root (see [`open_dirs`]). `upper` comes first when present; `lowers`
    /// are top first.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> std::io::Result<LayerStack> {
        let dirs = open_dirs(upper, None, lowers)?;
        Self::from_dirs(upper, dirs.upper, lowers, dirs.lowers, &[], Vec::new())
    }

    /// The stack of directories already opened by [`open_dirs`]; the paths are kept for
    /// messages only.
    pub fn from_dirs(
        upper: Option<&Path>,
        upper_fd: Option<OwnedFd>,
        lowers: &[PathBuf],
        lower_fds: Vec<OwnedFd>,
        data: &[PathBuf],
        data_fds: Vec<OwnedFd>,
    ) -> std::io::Result<LayerStack> {
        let mut layers = Vec::with_capacity(lowers.len() + data.len() + 1);
        let mut devs: Vec<u64> = Vec::new();
        let upper_entry = match (upper, upper_fd) {
            (Some(p), Some(fd)) => Some((LayerKind::Upper, p, fd)),
            _ => None,
        };
        let has_upper = upper_entry.is_some();
        let merged = usize::from(has_upper) + lowers.len().min(lower_fds.len());
        let entries = upper_entry
            .into_iter()
            .chain(
                lowers
                    .iter()
                    .zip(lower_fds)
                    .map(|(p, fd)| (LayerKind::Lower, p.as_path(), fd)),
            )
            .chain(
                data.iter()
                    .zip(data_fds)
                    .map(|(p, fd)| (LayerKind::Data, p.as_path(), fd)),
            );
        for (kind, path, root) in entries {
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
                stat_override: None,
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
            merged,
            has_upper,
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

    /// Sets the stat record name of layer `layer` (see [`crate::stat_override::set_up`]).
    pub fn set_stat_override(&mut self, layer: usize, name: Option<&'static CStr>) {
        if let Some(l) = self.layers.get_mut(layer) {
            l.stat_override = name;
        }
    }

    /// The stat record name of layer `layer`, when the mount uses them.
    pub fn stat_override(&self, layer: usize) -> Option<&'static CStr> {
        self.layers.get(layer).and_then(|l| l.stat_override)
    }

    /// Whether redirect records are followed.
    pub fn follows_redirects(&self) -> bool {
        self.follow_redirects
    }

    /// Whether metadata-only copies are recognised.
    pub fn follows_metacopy(&self) -> bool {
        self.follow_metacopy
    }

    /// Whether `layer` is the bottom-most merged layer, below which no other merged layer is
    /// searched (true of the data-only layers too).
    pub fn is_last(&self, layer: usize) -> bool {
        layer + 1 >= self.merged
    }

    /// Whether the stack has data-only layers.
    pub fn has_data_layers(&self) -> bool {
        self.layers.len() > self.merged
    }

    /// The indices of the data-only layers, in search order.
    pub fn data_layers(&self) -> std::ops::Range<usize> {
        self.merged..self.layers.len()
    }

    /// Whether a regular file of merged layer `layer` may be a metadata-only copy whose data
    /// is in another layer: a merged layer below it, or a data-only layer.
    pub fn may_have_data_below(&self, layer: usize) -> bool {
        layer < self.merged && (!self.is_last(layer) || self.has_data_layers())
    }

    pub fn get(&self, index: usize) -> &Layer {
        &self.layers[index]
    }

    /// The number of merged layers (the data-only layers are not counted).
    pub fn len(&self) -> usize {
        self.merged
    }

    pub fn is_empty(&self) -> bool {
        self.merged == 0
    }

    /// The merged layers, top first (the data-only layers are not among them).
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().take(self.merged).enumerate()
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
