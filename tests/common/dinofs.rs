//! A read-only passthrough FUSE filesystem, served from the test process, that mirrors a real
//! directory tree but lies in `readdir`: `lookup` and `getattr` report each object's real
//! `st_ino`, while the `d_ino` of every listed entry is wrong ([`DinoMode`]). fuse2fs gives
//! every entry 4294967295; a layer on such a filesystem shows whether a union takes `d_ino` as
//! an object's identity (it is a hint at most).
//!
//! Every access to the backing tree is relative to an `O_PATH | O_NOFOLLOW` descriptor of an
//! object in it, one name at a time (`openat`/`fstatat` with `O_NOFOLLOW` and
//! `AT_SYMLINK_NOFOLLOW`), so no symlink of the tree is ever followed and nothing above its root
//! is reached (`..` of the root is the root). Calls that need a path or a readable descriptor
//! (xattrs, reading a file or a directory) go through `/proc/self/fd/N` of that descriptor,
//! which names exactly the object (a symlink itself, for a symlink).
//!
//! A node's id is its real `st_ino` (fuser 0.18 sends `attr.ino` as the node id of an entry
//! reply), the root's is 1; the table maps ids to descriptors and never forgets one, so that the
//! kernel may look a node up again by id (`FUSE_EXPORT_SUPPORT`: the kernel overlay decodes
//! the file handles of its lowers with `index=on`, and looks up `.` and `..` for that).

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
    SessionACL,
};

/// The `d_ino` fuse2fs reports for every entry.
pub const SAME_D_INO: u64 = 4_294_967_295;

/// How `readdir` lies about `d_ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DinoMode {
    /// Every entry (`.` and `..` too) gets [`SAME_D_INO`], as on fuse2fs.
    Same,
    /// Each entry gets the real number of the next entry of the listing (the last one the
    /// first's; `.` and `..` are part of the listing): a number that belongs to another object
    /// of the same layer.
    Shifted,
}

impl DinoMode {
    pub fn name(self) -> &'static str {
        match self {
            DinoMode::Same => "same",
            DinoMode::Shifted => "shifted",
        }
    }
}

const TTL: Duration = Duration::from_secs(60);
const ROOT: u64 = 1;

struct Listing {
    /// (`d_ino` to report, type, name), `.` and `..` first.
    entries: Vec<(u64, FileType, OsString)>,
}

pub struct DinoFs {
    mode: DinoMode,
    /// `(st_dev, st_ino)` of the backing root.
    root_id: (u64, u64),
    nodes: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    files: Mutex<HashMap<u64, File>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; an O_PATH descriptor may be fstat'ed.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`: the entry itself, never what a symlink names.
fn open_path_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The magic link naming exactly the object of `fd`.
fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn attr_of(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The answer to a getxattr/listxattr of `size` bytes from the value the layer gave.
fn reply_sized(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl DinoFs {
    /// The passthrough of the directory `src` (opened here, once).
    pub fn new(src: &Path, mode: DinoMode) -> io::Result<DinoFs> {
        let c = CString::new(src.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is NUL-terminated.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(&root)?;
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Arc::new(root));
        Ok(DinoFs {
            mode,
            root_id: (st.st_dev, st.st_ino),
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<OwnedFd>, Errno> {
        self.nodes
            .lock()
            .expect("not poisoned")
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    /// The node id of the object `st` describes.
    fn id_of(&self, st: &libc::stat) -> Result<u64, Errno> {
        if (st.st_dev, st.st_ino) == self.root_id {
            return Ok(ROOT);
        }
        // Another filesystem mounted inside the tree is not part of it (and its numbers
        // could collide with the tree's).
        if st.st_dev != self.root_id.0 || st.st_ino <= ROOT {
            return Err(Errno::EXDEV);
        }
        Ok(st.st_ino)
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let dir = self.node(parent)?;
        let fd = match name.as_bytes() {
            b"." => return self.attr(parent.0, &dir),
            // `..` of the root is the root: nothing above the tree is ever reached.
            b".." if parent.0 == ROOT => return self.attr(ROOT, &dir),
            b if b.contains(&b'/') || b.is_empty() => return Err(Errno::EINVAL),
            _ => open_path_at(&dir, name).map_err(errno)?,
        };
        let st = fstat(&fd).map_err(errno)?;
        let id = self.id_of(&st)?;
        self.nodes
            .lock()
            .expect("not poisoned")
            .entry(id)
            .or_insert_with(|| Arc::new(fd));
        Ok(attr_of(id, &st))
    }

    fn attr(&self, id: u64, fd: &OwnedFd) -> Result<FileAttr, Errno> {
        Ok(attr_of(id, &fstat(fd).map_err(errno)?))
    }

    fn listing(&self, ino: INodeNo) -> Result<Listing, Errno> {
        let dir = self.node(ino)?;
        let st = fstat(&dir).map_err(errno)?;
        if kind_of(st.st_mode) != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let dotdot = if ino.0 == ROOT {
            st.st_ino
        } else {
            fstat(&open_path_at(&dir, OsStr::new("..")).map_err(errno)?)
                .map_err(errno)?
                .st_ino
        };
        let mut real: Vec<(u64, FileType, OsString)> = vec![
            (st.st_ino, FileType::Directory, ".".into()),
            (dotdot, FileType::Directory, "..".into()),
        ];
        let path = PathBuf::from(OsStr::from_bytes(proc_path(&dir).as_bytes()));
        for de in std::fs::read_dir(path).map_err(errno)? {
            let de = de.map_err(errno)?;
            let kind = de
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            real.push((de.ino(), kind, de.file_name()));
        }
        let n = real.len();
        let inos: Vec<u64> = real.iter().map(|e| e.0).collect();
        let entries = real
            .into_iter()
            .enumerate()
            .map(|(i, (_, kind, name))| {
                let d_ino = match self.mode {
                    DinoMode::Same => SAME_D_INO,
                    DinoMode::Shifted => inos[(i + 1) % n],
                };
                (d_ino, kind, name)
            })
            .collect();
        Ok(Listing { entries })
    }

    fn xattr_call(
        &self,
        ino: INodeNo,
        call: impl Fn(&CString, *mut libc::c_void, usize) -> isize,
    ) -> Result<Vec<u8>, Errno> {
        let fd = self.node(ino)?;
        let p = proc_path(&fd);
        loop {
            let size = call(&p, std::ptr::null_mut(), 0);
            if size < 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            let mut buf = vec![0u8; size as usize + 1];
            let got = call(&p, buf.as_mut_ptr().cast(), buf.len());
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue; // it grew between the calls
                }
                return Err(errno(e));
            }
            buf.truncate(got as usize);
            return Ok(buf);
        }
    }
}

impl Filesystem for DinoFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Without it the kernel overlay cannot decode this layer's file handles and runs
        // `index=on` mounts as `index=off` ("falling back to index=off").
        let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT); // best effort
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|fd| self.attr(ino.0, &fd)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.node(ino).and_then(|fd| {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: the empty path names the O_PATH descriptor's symlink; `buf` is writable.
            let n = unsafe {
                libc::readlinkat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            buf.truncate(n as usize);
            Ok(buf)
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let r = self.node(ino).and_then(|fd| {
            let st = fstat(&fd).map_err(errno)?;
            if kind_of(st.st_mode) != FileType::RegularFile {
                // Only regular files are reopened through their magic link.
                return Err(Errno::EINVAL);
            }
            // SAFETY: the path is NUL-terminated.
            let r = cvt(unsafe {
                libc::open(
                    proc_path(&fd).as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            })
            .map_err(errno)?;
            // SAFETY: `r` was just opened and is owned by nothing else.
            Ok(unsafe { File::from_raw_fd(r) })
        });
        match r {
            Ok(f) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.files.lock().expect("not poisoned").insert(fh, f);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let files = self.files.lock().expect("not poisoned");
        let Some(f) = files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().expect("not poisoned").remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.listing(ino) {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs
                    .lock()
                    .expect("not poisoned")
                    .insert(fh, Arc::new(l));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(l) = self.dirs.lock().expect("not poisoned").get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (d_ino, kind, name)) in l.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*d_ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("not poisoned").remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.node(INodeNo(ROOT)).and_then(|fd| {
            // SAFETY: an all-zero statfs is a valid value of this plain C struct.
            let mut s: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: `s` is writable; an O_PATH descriptor may be fstatfs'ed.
            cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) }).map_err(errno)?;
            Ok(s)
        });
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namelen as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Ok(n) = CString::new(name.as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        // getxattr (not lgetxattr) through the magic link: it names the object itself, a
        // symlink included, and follows nothing further.
        let r = self.xattr_call(ino, |p, buf, len| {
            // SAFETY: both strings are NUL-terminated; `buf` is null or writable for `len`.
            unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf, len) }
        });
        match r {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.xattr_call(ino, |p, buf, len| {
            // SAFETY: the path is NUL-terminated; `buf` is null or writable for `len`.
            unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) }
        });
        match r {
            Ok(v) => reply_sized(reply, size, &v),
            Err(e) => reply.error(e),
        }
    }
}

/// A live passthrough mount of a directory. `Drop` unmounts it (the mounts over it, a kernel
/// overlay or ufs with it as a lower, must be gone first) and waits until it is.
pub struct DinoMount {
    pub mnt: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl DinoMount {
    /// Serves the passthrough of `src` at `mnt` (an empty directory) from a thread of the test
    /// process, lying with `mode`; returns once the mount is live.
    pub fn serve(src: &Path, mnt: &Path, mode: DinoMode) -> io::Result<DinoMount> {
        let fs = DinoFs::new(src, mode)?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::RO,
            MountOption::FSName("dinofs".into()),
            MountOption::DefaultPermissions,
            MountOption::Dev,
            MountOption::Suid,
        ];
        // The ufs daemon and the kernel overlay reach it as root, but other users may look
        // through a union above it.
        config.acl = SessionACL::All;
        let session = fuser::spawn_mount(fs, mnt, &config)?;
        let m = DinoMount {
            mnt: mnt.to_path_buf(),
            session: Some(session),
        };
        if !crate::common::wait_mounted(mnt) {
            return Err(io::Error::other(format!(
                "the passthrough at {} never appeared in mountinfo",
                mnt.display()
            )));
        }
        Ok(m)
    }
}

impl Drop for DinoMount {
    fn drop(&mut self) {
        // fuser unmounts by path when the session is dropped; its serving thread ends when
        // the kernel ends the connection (when no mount of it is left, also in other mount
        // namespaces) and is not waited for.
        drop(self.session.take());
        crate::common::force_unmount(&self.mnt);
    }
}
