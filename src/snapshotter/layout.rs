//! The snapshotter's directories, laid out as containerd's overlay snapshotter lays them out:
//!
//! ```text
//! ROOT/metadata.redb        the store (see store.rs)
//! ROOT/snapshots/<id>/fs    a snapshot's contents (an upper directory while active)
//! ROOT/snapshots/<id>/work  the work directory an active snapshot's mount needs
//! ROOT/snapshots/new-*      a snapshot being created, not yet named by the store
//! ROOT/snapshots/rm-<id>    a removed snapshot being deleted
//! ```
//!
//! Invariant (with the order of operations in mod.rs): every id the store names has its
//! directory; directories the store does not name are orphans of a crash or of a failed
//! delete, which only Cleanup removes. Every access goes through a descriptor of `snapshots/`
//! and single names beneath it (`*at` calls with `O_NOFOLLOW`), so nothing a container wrote
//! into a snapshot, symlinks included, can lead the snapshotter outside its root.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_snapshots::Usage;

use super::error::{Error, Result};
use crate::sys;

/// The mode of `fs` (as containerd's overlay: the root of a container's file system).
const FS_MODE: u32 = 0o755;
/// The mode of `work` (as containerd's overlay).
const WORK_MODE: u32 = 0o711;

/// `ROOT/snapshots/`, held open.
pub struct Layout {
    /// The absolute path of `ROOT/snapshots`, for the mount options only.
    path: PathBuf,
    /// `ROOT/snapshots`, open for reading (so that it can be fsynced too).
    dir: OwnedFd,
}

/// A snapshot directory's name for id `id`.
pub fn id_name(id: u64) -> CString {
    // A formatted integer holds no NUL byte.
    CString::new(id.to_string()).unwrap_or_default()
}

fn name_of(name: &OsStr) -> Result<CString> {
    sys::cstr(name).map_err(Error::io(format!("name {name:?}")))
}

impl Layout {
    /// Opens (creating them if needed) `root` and `root/snapshots`; `root` is absolute.
    pub fn open(root: &Path) -> Result<Layout> {
        let root_fd = sys::open_dir_path(root).map_err(Error::io(format!("opening {root:?}")))?;
        match sys::mkdirat(root_fd.as_fd(), c"snapshots", 0o700) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EEXIST => {}
            Err(e) => return Err(Error::io(format!("creating {root:?}/snapshots"))(e)),
        }
        let dir = sys::openat(
            root_fd.as_fd(),
            c"snapshots",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(Error::io(format!("opening {root:?}/snapshots")))?;
        Ok(Layout {
            path: root.join("snapshots"),
            dir,
        })
    }

    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// `ROOT/snapshots/<id>/fs`, for a mount option.
    pub fn fs_path(&self, id: u64) -> PathBuf {
        self.path.join(id.to_string()).join("fs")
    }

    /// `ROOT/snapshots/<id>/work`, for a mount option.
    pub fn work_path(&self, id: u64) -> PathBuf {
        self.path.join(id.to_string()).join("work")
    }

    /// Whether `snapshots/<name>` exists (as anything).
    pub fn exists(&self, name: &OsStr) -> Result<bool> {
        match sys::fstatat(self.dir(), &name_of(name)?) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == libc::ENOENT => Ok(false),
            Err(e) => Err(Error::io(format!("stat of snapshots/{name:?}"))(e)),
        }
    }

    /// The owner of `snapshots/<id>/fs`, which a child's `fs` takes (as containerd's overlay
    /// does, so that a container's root directory keeps its image's owner).
    pub fn fs_owner(&self, id: u64) -> Result<(u32, u32)> {
        let what = || format!("snapshots/{id}/fs");
        let snap = sys::open_path(self.dir(), &id_name(id)).map_err(Error::io(what()))?;
        let st = sys::fstatat(snap.as_fd(), c"fs").map_err(Error::io(what()))?;
        Ok((st.st_uid, st.st_gid))
    }

    /// Creates `snapshots/new-<id>-<n>` with `fs` (owned by `owner`) and, for an active
    /// snapshot, `work`; returns its name. A name left by an earlier crash is skipped.
    pub fn create_new(&self, id: u64, work: bool, owner: Option<(u32, u32)>) -> Result<OsString> {
        let mut n = 0u32;
        let name = loop {
            let name = CString::new(format!("new-{id}-{n}")).unwrap_or_default();
            match sys::mkdirat(self.dir(), &name, 0o700) {
                Ok(()) => break name,
                Err(e) if e.errno() == libc::EEXIST && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(format!("creating snapshots/{name:?}"))(e)),
            }
        };
        let built = self.fill_new(&name, work, owner);
        if built.is_err()
            && let Err(e) = remove_entry(self.dir(), &name)
        {
            log::warn!("cannot remove snapshots/{name:?} (Cleanup will retry): {e}");
        }
        built?;
        Ok(OsStr::from_bytes(name.as_bytes()).to_os_string())
    }

    fn fill_new(&self, name: &CString, work: bool, owner: Option<(u32, u32)>) -> Result<()> {
        let what = |sub: &str| format!("creating snapshots/{}/{sub}", name.to_string_lossy());
        let new = sys::open_path(self.dir(), name).map_err(Error::io(what("")))?;
        sys::mkdirat(new.as_fd(), c"fs", FS_MODE).map_err(Error::io(what("fs")))?;
        if let Some((uid, gid)) = owner {
            let fs = sys::open_path(new.as_fd(), c"fs").map_err(Error::io(what("fs")))?;
            sys::fchown(fs.as_fd(), Some(uid), Some(gid)).map_err(Error::io(what("fs")))?;
        }
        if work {
            sys::mkdirat(new.as_fd(), c"work", WORK_MODE).map_err(Error::io(what("work")))?;
        }
        Ok(())
    }

    /// Renames `snapshots/<from>` to `snapshots/<to>` (never over an existing entry) and makes
    /// the rename durable before the caller commits the store's side of it.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        let (f, t) = (name_of(from)?, name_of(to)?);
        sys::renameat2(self.dir(), &f, self.dir(), &t, libc::RENAME_NOREPLACE)
            .map_err(Error::io(format!("renaming snapshots/{from:?} to {to:?}")))?;
        sys::fsync(self.dir(), false).map_err(Error::io("syncing snapshots/"))
    }

    /// Every entry of `snapshots/`.
    pub fn entries(&self) -> Result<Vec<OsString>> {
        let entries = sys::read_dir(self.dir()).map_err(Error::io("listing snapshots/"))?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    /// Deletes `snapshots/<name>` and everything beneath it.
    pub fn remove_tree(&self, name: &OsStr) -> Result<()> {
        remove_entry(self.dir(), &name_of(name)?)
            .map_err(Error::io(format!("removing snapshots/{name:?}")))
    }

    /// What `snapshots/<id>/fs` uses, counted as containerd's `fs.DiskUsage`: every distinct
    /// inode once (the root included), and the bytes of its allocated blocks.
    pub fn disk_usage(&self, id: u64) -> Result<Usage> {
        let what = format!("measuring snapshots/{id}/fs");
        let snap = sys::open_path(self.dir(), &id_name(id)).map_err(Error::io(&what))?;
        let fs = sys::open_path(snap.as_fd(), c"fs").map_err(Error::io(&what))?;
        let st = sys::fstat(fs.as_fd()).map_err(Error::io(&what))?;
        let mut seen = HashSet::new();
        let mut usage = Usage::default();
        count(&st, &mut seen, &mut usage);
        walk_usage(fs.as_fd(), &mut seen, &mut usage).map_err(Error::io(&what))?;
        Ok(usage)
    }
}

fn count(st: &libc::stat, seen: &mut HashSet<(u64, u64)>, usage: &mut Usage) {
    if seen.insert((st.st_dev, st.st_ino)) {
        usage.inodes += 1;
        usage.size += st.st_blocks * 512;
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn walk_usage(
    dir: BorrowedFd<'_>,
    seen: &mut HashSet<(u64, u64)>,
    usage: &mut Usage,
) -> crate::error::Result<()> {
    for entry in sys::read_dir(dir)? {
        let name = sys::cstr(&entry.name)?;
        let st = sys::fstatat(dir, &name)?;
        count(&st, seen, usage);
        if is_dir(&st) {
            let sub = sys::openat(dir, &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            walk_usage(sub.as_fd(), seen, usage)?;
        }
    }
    Ok(())
}

/// Removes the entry `name` of `dir`, a directory with all its contents.
fn remove_entry(dir: BorrowedFd<'_>, name: &CString) -> crate::error::Result<()> {
    match sys::unlinkat(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if e.errno() == libc::EISDIR => {}
        Err(e) => return Err(e),
    }
    let sub = sys::openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for entry in sys::read_dir(sub.as_fd())? {
        let child = sys::cstr(&entry.name)?;
        remove_entry(sub.as_fd(), &child)?;
    }
    sys::unlinkat(dir, name, libc::AT_REMOVEDIR)
}

/// Whether a name in `snapshots/` is one a snapshot of the store would have.
pub fn parse_id(name: &OsStr) -> Option<u64> {
    let s = std::str::from_utf8(name.as_bytes()).ok()?;
    // "007" is no snapshot's name: ids are written without leading zeros.
    if s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}
