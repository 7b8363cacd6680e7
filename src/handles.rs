//! Open handles: directories (a listing read by the first `readdir`) and files (the real file,
//! its layer, and the upper copy that reads through a lower file's handle move to). Kernel
//! counterpart: `struct ovl_file` and `ovl_real_fdget()` (`fs/overlayfs/file.c`), which re-open
//! the real file after a copy-up, and `ovl_dir_open()`'s cached listing (`readdir.c`).
//!
//! Invariants: a handle number is never reused for the life of the mount; a handle holds its
//! own fd on the real file, so it keeps working after its name is unlinked or renamed; the
//! table holds one reference, and a request in flight may hold another past `release`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::{EBADF, Result};
use crate::listing::{DirEntry, EntryRef, Listing};

/// An open directory. Its listing is read by the first `readdir` (at offset 0), not by
/// `opendir`: the kernel keeps listings in its own cache and, while that is valid, opens and
/// releases the directory without ever reading it through ufs. A `readdir` at offset 0 again
/// (`rewinddir`) reads the directory's current listing, as `opendir` would have.
#[derive(Debug)]
pub struct DirHandle {
    pub node: u64,
    dots: [DirEntry; 2],
    merged: Mutex<Option<Arc<Listing>>>,
}

impl DirHandle {
    pub fn new(node: u64, dots: [DirEntry; 2]) -> DirHandle {
        DirHandle {
            node,
            dots,
            merged: Mutex::new(None),
        }
    }

    /// The listing read for this handle, reading it with `read` when there is none yet or
    /// `rewind` asks for the directory's current one.
    pub fn entries(
        self: Arc<Self>,
        rewind: bool,
        read: impl FnOnce() -> Result<Arc<Listing>>,
    ) -> Result<DirEntries> {
        let mut merged = self.merged.lock();
        let listing = match &*merged {
            Some(l) if !rewind => l.clone(),
            _ => {
                let l = read()?;
                *merged = Some(l.clone());
                l
            }
        };
        drop(merged);
        Ok(DirEntries {
            handle: self,
            merged: listing,
        })
    }
}

/// The entries of an open directory as one `readdir` sees them. Entry `i` is `.` and `..` for
/// 0 and 1, then the merged entries; offsets are these indexes.
#[derive(Debug)]
pub struct DirEntries {
    handle: Arc<DirHandle>,
    merged: Arc<Listing>,
}

impl DirEntries {
    /// The directory's node.
    pub fn node(&self) -> u64 {
        self.handle.node
    }

    pub fn len(&self) -> usize {
        self.merged.len() + 2
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn get(&self, i: usize) -> Option<EntryRef<'_>> {
        match i {
            0 | 1 => self.handle.dots.get(i).map(EntryRef::from),
            _ => self.merged.get(i - 2),
        }
    }
}

/// An open file.
#[derive(Debug)]
pub struct FileHandle {
    pub node: u64,
    /// The number reported when the kernel asks for attributes through this file: the
    /// node's, or for a file whose open broke its name away from a lower file's other names
    /// (see `Overlay::writable`), the copy's.
    pub ino: u64,
    pub file: OwnedFd,
    /// The layer of `file`.
    pub layer: usize,
    /// Opened for writing (so on the upper copy).
    pub writable: bool,
    /// Opened for reading on a lower layer: once the file is copied up, reads go to the copy
    /// (as the kernel re-resolves the real file on every read), through `upper_file`.
    pub from_lower: bool,
    pub upper_file: parking_lot::Mutex<Option<Arc<OwnedFd>>>,
}

/// The open handles of a mount, by number.
pub struct Handles {
    dirs: DashMap<u64, Arc<DirHandle>>,
    files: DashMap<u64, Arc<FileHandle>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            dirs: DashMap::new(),
            files: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }
}

impl Handles {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_file(&self, h: FileHandle) -> u64 {
        let fh = self.number();
        self.files.insert(fh, Arc::new(h));
        fh
    }

    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files.get(&fh).map(|h| h.clone()).ok_or(EBADF)
    }

    pub fn release_file(&self, fh: u64) {
        self.files.remove(&fh);
    }

    pub fn add_dir(&self, h: DirHandle) -> u64 {
        let fh = self.number();
        self.dirs.insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
        self.dirs.get(&fh).map(|h| h.clone()).ok_or(EBADF)
    }

    pub fn release_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }

    /// How many handles are open: (files, directories).
    pub fn counts(&self) -> (usize, usize) {
        (self.files.len(), self.dirs.len())
    }
}
