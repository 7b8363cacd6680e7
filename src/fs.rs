//! The FUSE glue: decode a request, call the core, encode the reply. Nothing else.
//!
//! Every handler logs the request at debug level (`-d`, `-o debug` or `RUST_LOG=debug`) and maps
//! a core error to its errno in [`errno`]. Requests are served by several threads, each with its
//! own cloned `/dev/fuse` fd (fuser's `n_threads` + `clone_fd`).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request, SessionACL,
};
use log::debug;

use crate::error::Error;
use crate::inode::Kind;
use crate::options::Options;
use crate::overlay::{Caller, Overlay};

/// Mounts `opts` at `mountpoint`, calls `on_ready` once the mount is live, and serves requests
/// until the filesystem is unmounted.
pub fn serve(opts: &Options, mountpoint: &Path, on_ready: impl FnOnce()) -> std::io::Result<()> {
    match crate::sys::raise_nofile_limit() {
        Ok(n) => debug!("open file limit: {n}"),
        Err(e) => log::warn!("cannot raise the open file limit: {e}"),
    }
    let overlay = Overlay::new(opts)?;
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone().unwrap_or_else(|| "ufs".into())),
        MountOption::Subtype("ufs".into()),
        // The kernel checks permission bits against the attributes ufs reports, as it does for
        // an overlay mount; requests reach ufs only when they are allowed.
        MountOption::DefaultPermissions,
    ];
    if overlay.is_read_only() {
        mount_options.push(MountOption::RO);
    }
    for (on, opt) in [
        (opts.nodev, MountOption::NoDev),
        (opts.nosuid, MountOption::NoSuid),
        (opts.noexec, MountOption::NoExec),
        (opts.noatime, MountOption::NoAtime),
    ] {
        if on {
            mount_options.push(opt);
        }
    }
    let acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = acl;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    let fs = UfsFs {
        ov: Arc::new(overlay),
        ttl: opts.timeout,
    };
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    on_ready();
    session.run()
}

struct UfsFs {
    ov: Arc<Overlay>,
    ttl: Duration,
}

fn errno(e: Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Regular => FileType::RegularFile,
        Kind::Directory => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

/// Converts the core's `stat` to fuser's attributes.
pub fn to_attr(st: &libc::stat) -> FileAttr {
    let kind = Kind::from_mode(st.st_mode).map_or(FileType::RegularFile, file_type);
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl Filesystem for UfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        if let Err(missing) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {missing:?}");
            // Ask for the ones the kernel has.
            let _ = config.add_capabilities(wanted & !missing);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!("lookup(parent={parent}, name={name:?})");
        match self.ov.lookup(parent.0, name) {
            Ok(e) => reply.entry(&self.ttl, &to_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        debug!("forget(ino={ino}, nlookup={nlookup})");
        self.ov.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        debug!("getattr(ino={ino})");
        match self.ov.getattr(ino.0) {
            Ok(st) => reply.attr(&self.ttl, &to_attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        debug!("readlink(ino={ino})");
        match self.ov.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        debug!("open(ino={ino}, flags={:#o})", flags.0);
        match self.ov.open(ino.0, flags.0) {
            Ok(o) => {
                let f = if o.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(o.fh), f)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        debug!("read(ino={ino}, fh={fh}, offset={offset}, size={size})");
        match self.ov.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        debug!("release(ino={ino}, fh={fh})");
        self.ov.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        debug!("opendir(ino={ino})");
        match self.ov.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        debug!("readdir(ino={ino}, fh={fh}, offset={offset})");
        let h = match self.ov.dir_handle(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in h.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        debug!("readdirplus(ino={ino}, fh={fh}, offset={offset})");
        let h = match self.ov.dir_handle(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, e) in h.entries.iter().enumerate().skip(offset as usize) {
            let off = i as u64 + 1;
            if i < 2 {
                // `.` and `..` are not looked up by the kernel: no node id, no lookup count.
                let attr = match self.ov.getattr(h.node) {
                    Ok(st) => to_attr(&st),
                    Err(err) => return reply.error(errno(err)),
                };
                let mut attr = attr;
                attr.ino = INodeNo(e.ino);
                if reply.add(INodeNo(0), off, &e.name, &Duration::ZERO, &attr, Generation(0)) {
                    break;
                }
                continue;
            }
            let entry = match self.ov.lookup(h.node, &e.name) {
                Ok(entry) => entry,
                // Gone since the directory was opened: leave it out.
                Err(_) => continue,
            };
            let attr = to_attr(&entry.attr);
            if reply.add(
                INodeNo(entry.node),
                off,
                &e.name,
                &self.ttl,
                &attr,
                Generation(0),
            ) {
                // Did not fit: the kernel never saw this entry, so undo its lookup.
                self.ov.forget(entry.node, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        debug!("releasedir(ino={ino}, fh={fh})");
        self.ov.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        debug!("statfs(ino={ino})");
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        debug!("getxattr(ino={ino}, name={name:?}, size={size})");
        reply_xattr(self.ov.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        debug!("listxattr(ino={ino}, size={size})");
        reply_xattr(self.ov.listxattr(ino.0), size, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        debug!("access(ino={ino}, mask={mask:?})");
        match self.ov.access(ino.0, mask.bits(), caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Answers an xattr request: the size when `size` is 0, the data when it fits, else `ERANGE`.
fn reply_xattr(value: crate::error::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(errno(e)),
    }
}
