//! The FUSE glue: decode a request, call the core, encode the reply. Nothing else.
//!
//! Every handler logs the request at debug level (`-d`, `-o debug` or `RUST_LOG=debug`) and maps
//! a core error to its errno in `errno`. Requests are served by several threads, each with its
//! own cloned `/dev/fuse` fd (fuser's `n_threads` + `clone_fd`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};
use log::debug;

use crate::error::Error;
use crate::fuse_mount::{self, Access};
use crate::kind::Kind;
use crate::lifecycle::{self, OwnMount};
use crate::options::Options;
use crate::overlay::{Caller, Entry, NewEntry, Overlay, SetAttr, SetTime};
use crate::passthrough::{Mode, Passthrough, Want};
use crate::stats::{Op, Stats};
use crate::status;
use crate::sys::process;

/// Mounts `opts` at `mountpoint`, calls `on_ready` once the mount is live, and serves requests
/// until the filesystem is unmounted or a signal ends it (see `lifecycle`).
///
/// Blocks `SIGTERM`, `SIGINT` and `SIGHUP` for the rest of the process's life (a thread of its
/// own takes them), so call it before the process starts any other thread.
pub fn serve(opts: &Options, mountpoint: &Path, on_ready: impl FnOnce()) -> std::io::Result<()> {
    serve_dirs(opts, crate::setup::named_dirs(opts)?, mountpoint, on_ready)
}

/// [`serve`] on the directories of `opts` already opened (and checked) by the caller. They are
/// closed once the layers are set up: from then on the daemon holds only its private clones.
pub fn serve_dirs(
    opts: &Options,
    dirs: crate::layer::NamedDirs,
    mountpoint: &Path,
    on_ready: impl FnOnce(),
) -> std::io::Result<()> {
    // Before fuser starts its threads, which inherit the mask.
    let signals = lifecycle::block_end_signals()?;
    match crate::sys::raise_nofile_limit() {
        Ok(n) => debug!("open file limit: {n}"),
        Err(e) => log::warn!("cannot raise the open file limit: {e}"),
    }
    crate::sys::clear_umask();
    let overlay = Overlay::with_dirs(opts, &dirs)?;
    drop(dirs);
    let plan = fuse_mount::Plan::new(opts, overlay.is_read_only(), process::is_root());
    let acl = match plan.access {
        Access::Everyone => SessionACL::All,
        Access::RootAndOwner => SessionACL::RootAndOwner,
        Access::Owner => SessionACL::Owner,
    };
    let threads = opts.threads.unwrap_or_else(default_threads);
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(threads);
    config.clone_fd = true;
    let fs = UfsFs {
        ov: Arc::new(overlay),
        ttl: opts.timeout,
        want_passthrough: opts.passthrough,
        passthrough: Arc::new(Passthrough::default()),
        want_writeback: opts.writeback,
        writeback: false,
        want_acl: !opts.noacl,
        dont_mask: false,
    };
    let ov = fs.ov.clone();
    let passthrough = fs.passthrough.clone();
    // ufs mounts by itself (fuser's mount would add `nosuid,nodev` and drop the subtype) and
    // gives fuser the descriptor. fuser then holds no `Mount`, so nothing in it ever unmounts
    // MERGED by path: after an external `umount` that path may name another mount.
    let dev = fuse_mount::mount(&plan, mountpoint)?;
    // Right after mounting, while it is certainly the top-most mount there, and before any
    // request is read (an `O_PATH` open sends the filesystem no request).
    let own = Arc::new(OwnMount::record(mountpoint)?);
    let session = match fuser::Session::from_fd(fs, dev, acl, config) {
        Ok(session) => session,
        Err(e) => {
            if let Err(e) = own.release() {
                log::warn!("cannot unmount {}: {e}", mountpoint.display());
            }
            return Err(e);
        }
    };
    // Sent from the thread answering the request that made the change, before it answers, so
    // the change is visible when the caller's call returns. The kernel takes no lock for it that
    // a request in flight could hold: attributes are only marked stale, and contents are only
    // dropped for directories (a cached listing has no dirty pages to write back).
    let notifier = session.notifier();
    ov.set_invalidator(Box::new(move |node, contents| {
        let offset = if contents { 0 } else { -1 };
        if let Err(e) = notifier.inval_inode(INodeNo(node), offset, 0) {
            debug!("invalidating node {node}: {e}");
        }
    }));
    let background = session.spawn()?;
    let source = status_source(opts, &ov, passthrough, mountpoint, &own, threads);
    let server = source
        .as_ref()
        .and_then(|src| match status::Server::start(src.clone()) {
            Ok(server) => Some(Arc::new(server)),
            Err(e) => {
                // The mount works without it; only `ufs status` cannot reach it (SIGUSR1 can).
                // A directory the daemon may not create (root of a user namespace, which does
                // not own `/run`) is ordinary; one that exists with the wrong owner or mode is
                // worth a warning.
                let ordinary = matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ReadOnlyFilesystem
                );
                let level = if ordinary {
                    log::Level::Info
                } else {
                    log::Level::Warn
                };
                log::log!(level, "no status socket for {}: {e}", mountpoint.display());
                None
            }
        });
    let for_signals = own.clone();
    let actions = lifecycle::SignalActions {
        report: {
            let source = source.clone();
            Box::new(move || match &source {
                Some(src) => status::log_report(src),
                None => log::warn!("no status report: the mount's device is unknown"),
            })
        },
        before_exit: {
            let server = server.clone();
            Box::new(move || {
                if let Some(server) = &server {
                    server.remove();
                }
            })
        },
    };
    let spawned = std::thread::Builder::new()
        .name("ufs-signals".into())
        .spawn(move || lifecycle::end_on_signals(signals, &for_signals, &actions));
    if let Err(e) = spawned {
        // Nothing would end the mount on a signal; do not leave it behind unserved.
        if let Err(e) = own.release() {
            log::warn!("cannot unmount {}: {e}", mountpoint.display());
        }
        return Err(e);
    }
    on_ready();
    let result = match background.join() {
        // The kernel ends the connection with ENODEV (which fuser takes as the end), or, when
        // the last user of a detached mount lets go while a request is being read, with
        // ECONNABORTED (which fuser reports as an error): either way the mount is over.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::info!("the kernel ended the connection ({e})");
            Ok(())
        }
        other => other,
    };
    // The event loops end when the kernel ends the connection (the mount is gone, nothing to
    // do) or when they fail with the mount still attached: detach it then, if it is still ours.
    if let Err(e) = own.release() {
        log::warn!("cannot unmount {}: {e}", mountpoint.display());
    }
    if let Some(server) = &server {
        server.remove();
    }
    result
}

/// Request threads when `threaded=` is not given: two more than the CPUs, at least four. A
/// `close` sends its `RELEASE` in the background, so a caller's next request usually arrives
/// while a thread is still answering the last one, and threads beyond one per CPU pay off
/// there. Only two extra: each thread holds a cloned `/dev/fuse` fd and a request buffer, and
/// more than two per CPU was measured nowhere but on 2 CPUs. Measured on 2 CPUs
/// (`benches/README.md`, "Request threads"): a C loop of `open`+`close` over 4,000 lower files
/// took a median 53 µs per pair with 2 threads, 33 µs with 4 and 40 µs with 8, while one
/// synchronous request (`lgetxattr`) cost the same with 2 and 4.
fn default_threads() -> usize {
    threads_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn threads_for(cpus: usize) -> usize {
    cpus.saturating_add(2).max(4)
}

/// What the status report and socket need, once the mount is live: `None` (with a warning)
/// when the mount's line cannot be read from mountinfo.
fn status_source(
    opts: &Options,
    ov: &Arc<Overlay>,
    passthrough: Arc<Passthrough>,
    mountpoint: &Path,
    own: &OwnMount,
    threads: usize,
) -> Option<Arc<status::Source>> {
    let mount = match status::mount_line(own.mnt_id()) {
        Ok(line) => line,
        Err(e) => {
            log::warn!("no status report for {}: {e}", mountpoint.display());
            return None;
        }
    };
    Some(Arc::new(status::Source {
        overlay: ov.clone(),
        passthrough,
        mountpoint: mountpoint.to_path_buf(),
        mount,
        lowerdirs: opts.lowerdirs.clone(),
        upperdir: opts.upperdir.clone(),
        workdir: opts.workdir.clone(),
        options: status::option_words(opts, ov.is_read_only(), threads),
        started: std::time::Instant::now(),
    }))
}

struct UfsFs {
    ov: Arc<Overlay>,
    ttl: Duration,
    /// `passthrough=on`: ask the kernel for FUSE passthrough.
    want_passthrough: bool,
    /// Shared with the status socket, which reports its use.
    passthrough: Arc<Passthrough>,
    /// `writeback=1`: ask for the kernel's writeback cache where passthrough is not used.
    want_writeback: bool,
    /// The kernel agreed to the writeback cache: it may read through any handle open for
    /// writing (so real files are opened for reading too) and keeps the file position of
    /// `O_APPEND` writes itself (so real files are opened without it). See [`Self::io_flags`].
    writeback: bool,
    /// Not `noacl`: ask the kernel to enforce POSIX ACLs (FUSE's `POSIX_ACL`).
    want_acl: bool,
    /// The kernel agreed to `DONT_MASK`: it sends modes unmasked with the caller's umask, which
    /// ufs applies where no default ACL does (see [`crate::acl`]).
    dont_mask: bool,
}

/// The one reply sink for errors: the errno for the kernel, and a log line. Ordinary answers
/// (`ENOENT`, `EEXIST`, `ENOTEMPTY`, ...) are logged at debug level (`-d`), every other error at
/// warn level, with what failed and in which layer where the core said so.
fn errno(stats: &Stats, e: Error) -> Errno {
    stats.error(e.errno());
    if e.is_ordinary() {
        debug!("answering: {e}");
    } else {
        log::warn!("request failed: {e}");
    }
    Errno::from_i32(e.errno())
}

/// `st_dev`, `st_ino` of a handle's real file.
fn real_identity(h: &crate::overlay::FileHandle) -> Option<(u64, u64)> {
    crate::sys::fstat(h.file.as_fd())
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
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

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                SetTime::At(s, ns)
            }
        },
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

impl UfsFs {
    /// The one reply sink for errors, with the error counted (see [`errno`]).
    fn errno(&self, e: Error) -> Errno {
        errno(self.ov.stats(), e)
    }

    fn reply_empty(&self, res: crate::error::Result<()>, reply: ReplyEmpty) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    /// Answers an xattr request: the size when `size` is 0, the data when it fits, else `ERANGE`.
    fn reply_xattr(&self, value: crate::error::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
        match value {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => {
                self.ov.stats().error(libc::ERANGE);
                reply.error(Errno::ERANGE)
            }
            Err(e) => reply.error(self.errno(e)),
        }
    }
    /// How long the kernel may keep a node's attributes (`attr`, about to be sent) and the
    /// names that lead to it.
    fn ttls(&self, node: u64, attr: &libc::stat) -> (Duration, Duration) {
        let (attrs, names) = self.ov.volatile(node, attr);
        let attrs = attrs || self.passthrough.attrs_volatile(node);
        let ttl = |volatile: bool| if volatile { Duration::ZERO } else { self.ttl };
        (ttl(attrs), ttl(names))
    }

    fn attr_ttl(&self, node: u64, attr: &libc::stat) -> Duration {
        self.ttls(node, attr).0
    }

    fn entry(&self, e: &Entry, reply: ReplyEntry) {
        let (attr_ttl, entry_ttl) = self.ttls(e.node, &e.attr);
        reply.entry_with_ttls(&attr_ttl, &entry_ttl, &to_attr(&e.attr), Generation(0));
    }

    fn reply_entry(&self, res: crate::error::Result<Entry>, reply: ReplyEntry) {
        match res {
            Ok(e) => self.entry(&e, reply),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    /// The caller of a request that creates an entry, with the `umask` the kernel sent (which
    /// it has applied itself unless `DONT_MASK` was agreed).
    fn creator(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            umask: if self.dont_mask { umask & 0o777 } else { 0 },
            ..caller(req)
        }
    }

    /// The flags a real file is opened with for a handle opened with `flags`: as asked, but
    /// with the writeback cache `O_RDWR` for `O_WRONLY` (the kernel reads pages it writes
    /// partly through any handle open for writing) and no `O_APPEND` (the kernel gives every
    /// write its offset at the end of the file it caches; the real file's `O_APPEND` would
    /// put writes at the real end instead).
    fn io_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let flags = flags & !libc::O_APPEND;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }

    /// Runs `open` with [`Self::io_flags`] of `flags`; a file ufs may not read is opened
    /// write-only after all (a partial-page write to it then fails in the kernel, as on any
    /// FUSE mount with the writeback cache).
    fn open_real<T>(
        &self,
        flags: i32,
        open: impl Fn(i32) -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        let io = self.io_flags(flags);
        match open(io) {
            Err(e)
                if e.errno() == libc::EACCES && io & libc::O_ACCMODE != flags & libc::O_ACCMODE =>
            {
                open(io & !libc::O_ACCMODE | libc::O_WRONLY)
            }
            r => r,
        }
    }

    fn new_entry(
        &self,
        creator: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        what: NewEntry<'_>,
        reply: ReplyEntry,
    ) {
        let res = self
            .ov
            .create_entry(parent.0, name, mode, creator, what)
            .map(|(e, _)| e);
        self.reply_entry(res, reply);
    }
}

impl Filesystem for UfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _timed = self.ov.stats().timed(Op::Init);
        // ATOMIC_O_TRUNC: `open(O_TRUNC)` reaches ufs with the flag, so a lower file about to
        // be emptied is copied up without its data (else the kernel opens it for writing, which
        // copies the data, and truncates it afterwards).
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            // No file handles, as the kernel overlay without `nfs_export`: `name_to_handle_at`
            // answers EOPNOTSUPP instead of giving a handle `open_by_handle_at` cannot open
            // once the kernel has forgotten the inode (ufs cannot find a node by number alone).
            | InitFlags::FUSE_NO_EXPORT_SUPPORT
            // Handles answered with `FOPEN_DIRECT_IO` (`O_DIRECT`, and the passthrough
            // fallback) can still be mapped.
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if let Err(missing) = config.add_capabilities(wanted) {
            debug!("kernel lacks capabilities {missing:?}");
            // Ask for the ones the kernel has; these cannot be refused.
            if let Err(e) = config.add_capabilities(wanted & !missing) {
                log::warn!("kernel refused capabilities {e:?}");
            }
        }
        // The kernel enforces ACLs from `system.posix_acl_access` (served by `getxattr`) and
        // stops applying the umask: with `DONT_MASK` it sends it along, for ufs to apply only
        // where the parent has no default ACL, as `posix_acl_create()` does.
        if self.want_acl {
            match config.add_capabilities(InitFlags::FUSE_POSIX_ACL) {
                Ok(()) => {
                    self.dont_mask = config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_ok();
                    if !self.dont_mask {
                        debug!("kernel lacks DONT_MASK: it applies the umask itself");
                    }
                }
                Err(_) => debug!("kernel lacks FUSE POSIX ACL support"),
            }
        }
        // Passthrough needs a stacking depth of at least 1 (the real files' filesystems are
        // below this one) and the privilege to register backing files; the kernel allows
        // either it or the writeback cache, which a mount without passthrough asks for.
        let mut passthrough = false;
        if self.want_passthrough && crate::passthrough::may_register() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) if config.set_max_stack_depth(1).is_ok() => {
                    self.passthrough.offered();
                    passthrough = true;
                }
                Ok(()) => debug!("kernel refused a stacking depth of 1: no passthrough"),
                Err(_) => debug!("kernel lacks FUSE passthrough"),
            }
        }
        if !passthrough && self.want_writeback {
            match config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
                Ok(()) => {
                    self.writeback = true;
                    self.passthrough.writeback_cache_on();
                    self.ov.set_kernel_caches_writes();
                }
                Err(_) => debug!("kernel lacks the FUSE writeback cache"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timed = self.ov.stats().timed(Op::Lookup);
        debug!("lookup(parent={parent}, name={name:?})");
        match self.ov.lookup(parent.0, name) {
            Ok(e) => self.entry(&e, reply),
            // A negative entry (node id 0) lets the kernel cache the absence too; it drops it
            // when the name is created through the mount.
            Err(e) if e.errno() == libc::ENOENT => {
                self.ov.stats().error(libc::ENOENT);
                let mut attr = to_attr(&crate::sys::zeroed_stat());
                attr.ino = INodeNo(0);
                reply.entry(&self.ttl, &attr, Generation(0))
            }
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _timed = self.ov.stats().timed(Op::Forget);
        debug!("forget(ino={ino}, nlookup={nlookup})");
        self.ov.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timed = self.ov.stats().timed(Op::Getattr);
        debug!("getattr(ino={ino}, fh={fh:?})");
        match self.ov.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.attr_ttl(ino.0, &st), &to_attr(&st)),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _timed = self.ov.stats().timed(Op::Readlink);
        debug!("readlink(ino={ino})");
        match self.ov.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timed = self.ov.stats().timed(Op::Open);
        debug!("open(ino={ino}, flags={:#o})", flags.0);
        let o = match self.open_real(flags.0, |f| self.ov.open(ino.0, f)) {
            Ok(o) => o,
            Err(e) => return reply.error(self.errno(e)),
        };
        let handle = || self.ov.file(o.fh).map_err(std::io::Error::from);
        let want = Want {
            allowed: o.passthrough,
            direct: o.direct_io,
            writes: flags.0 & libc::O_ACCMODE != libc::O_RDONLY,
        };
        let mode = self.passthrough.choose(
            ino.0,
            o.fh,
            want,
            || real_identity(&*handle().ok()?),
            || reply.open_backing(handle()?.file.as_fd()),
        );
        match mode {
            Mode::Passthrough(id) => {
                if want.writes {
                    // The attributes the kernel holds were sent with the long timeout; from now
                    // on it must ask (see `Passthrough::attrs_volatile`).
                    self.ov.invalidate(ino.0, false);
                }
                reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id)
            }
            Mode::Direct => reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_DIRECT_IO),
            Mode::Refused => {
                self.ov.release(o.fh);
                self.ov.stats().error(libc::EBUSY);
                reply.error(Errno::EBUSY)
            }
            Mode::Cached if o.keep_cache => {
                reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Mode::Cached => reply.opened(FileHandle(o.fh), FopenFlags::empty()),
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
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _timed = self.ov.stats().timed(Op::Read);
        debug!("read(ino={ino}, fh={fh}, offset={offset}, size={size})");
        match self.ov.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Release);
        debug!("release(ino={ino}, fh={fh})");
        self.passthrough.release(fh.0);
        self.ov.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _timed = self.ov.stats().timed(Op::Opendir);
        debug!("opendir(ino={ino})");
        match self.ov.opendir(ino.0) {
            // The kernel may keep listings in its cache: every change to a directory goes
            // through ufs, and the kernel drops a directory's cache when it changes.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(self.errno(e)),
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
        let _timed = self.ov.stats().timed(Op::Readdir);
        debug!("readdir(ino={ino}, fh={fh}, offset={offset})");
        let h = match self.ov.dir_entries(fh.0, offset) {
            Ok(h) => h,
            Err(e) => return reply.error(self.errno(e)),
        };
        for i in offset as usize..h.len() {
            let Some(e) = h.get(i) else { break };
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), e.name) {
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
        let _timed = self.ov.stats().timed(Op::Readdirplus);
        debug!("readdirplus(ino={ino}, fh={fh}, offset={offset})");
        let h = match self.ov.dir_entries(fh.0, offset) {
            Ok(h) => h,
            Err(e) => return reply.error(self.errno(e)),
        };
        for i in offset as usize..h.len() {
            let Some(e) = h.get(i) else { break };
            let off = i as u64 + 1;
            if i < 2 {
                // `.` and `..` are not looked up by the kernel: no node id, no lookup count.
                let attr = match self.ov.getattr(h.node(), None) {
                    Ok(st) => to_attr(&st),
                    Err(err) => return reply.error(self.errno(err)),
                };
                let mut attr = attr;
                attr.ino = INodeNo(e.ino);
                if reply.add(
                    INodeNo(0),
                    off,
                    e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let entry = match self.ov.lookup(h.node(), e.name) {
                Ok(entry) => entry,
                // Gone since the directory was opened (or unreadable): leave it out; a lookup
                // of the name answers with the error.
                Err(err) => {
                    debug!("readdirplus: leaving out {:?}: {err}", e.name);
                    continue;
                }
            };
            let attr = to_attr(&entry.attr);
            if reply.add(
                INodeNo(entry.node),
                off,
                e.name,
                &self.attr_ttl(entry.node, &entry.attr),
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
        let _timed = self.ov.stats().timed(Op::Releasedir);
        debug!("releasedir(ino={ino}, fh={fh})");
        self.ov.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _timed = self.ov.stats().timed(Op::Statfs);
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
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _timed = self.ov.stats().timed(Op::Getxattr);
        debug!("getxattr(ino={ino}, name={name:?}, size={size})");
        self.reply_xattr(self.ov.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _timed = self.ov.stats().timed(Op::Listxattr);
        debug!("listxattr(ino={ino}, size={size})");
        self.reply_xattr(self.ov.listxattr(ino.0), size, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _timed = self.ov.stats().timed(Op::Setattr);
        debug!(
            "setattr(ino={ino}, mode={mode:?}, uid={uid:?}, gid={gid:?}, size={size:?}, \
             atime={atime:?}, mtime={mtime:?}, fh={fh:?})"
        );
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            fh: fh.map(|f| f.0),
        };
        match self.ov.setattr(ino.0, change) {
            Ok(st) => reply.attr(&self.attr_ttl(ino.0, &st), &to_attr(&st)),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _timed = self.ov.stats().timed(Op::Mknod);
        debug!(
            "mknod(parent={parent}, name={name:?}, mode={mode:#o}, umask={umask:#o}, rdev={rdev})"
        );
        let what = if mode & libc::S_IFMT == libc::S_IFREG {
            NewEntry::File {
                flags: libc::O_WRONLY,
            }
        } else {
            NewEntry::Node {
                file_type: mode & libc::S_IFMT,
                rdev: rdev as u64,
            }
        };
        self.new_entry(self.creator(req, umask), parent, name, mode, what, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _timed = self.ov.stats().timed(Op::Mkdir);
        debug!("mkdir(parent={parent}, name={name:?}, mode={mode:#o}, umask={umask:#o})");
        let creator = self.creator(req, umask);
        self.new_entry(creator, parent, name, mode, NewEntry::Directory, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timed = self.ov.stats().timed(Op::Unlink);
        debug!("unlink(parent={parent}, name={name:?})");
        self.reply_empty(self.ov.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timed = self.ov.stats().timed(Op::Rmdir);
        debug!("rmdir(parent={parent}, name={name:?})");
        self.reply_empty(self.ov.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _timed = self.ov.stats().timed(Op::Symlink);
        debug!("symlink(parent={parent}, name={link_name:?}, target={target:?})");
        let target = match crate::sys::cstr(target.as_os_str()) {
            Ok(t) => t,
            Err(e) => return reply.error(self.errno(e)),
        };
        let what = NewEntry::Symlink { target: &target };
        self.new_entry(caller(req), parent, link_name, 0o777, what, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Rename);
        debug!(
            "rename(parent={parent}, name={name:?}, newparent={newparent}, newname={newname:?}, flags={flags:?})"
        );
        self.reply_empty(
            self.ov
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _timed = self.ov.stats().timed(Op::Link);
        debug!("link(ino={ino}, newparent={newparent}, newname={newname:?})");
        self.reply_entry(self.ov.link(ino.0, newparent.0, newname), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _timed = self.ov.stats().timed(Op::Create);
        debug!(
            "create(parent={parent}, name={name:?}, mode={mode:#o}, umask={umask:#o}, flags={flags:#o})"
        );
        let creator = self.creator(req, umask);
        let (e, fh) =
            match self.open_real(flags, |f| self.ov.create(parent.0, name, mode, f, creator)) {
                Ok(created) => created,
                Err(e) => return reply.error(self.errno(e)),
            };
        let attr = to_attr(&e.attr);
        // A new file is in the upper layer: its handle may use passthrough.
        let handle = || self.ov.file(fh).map_err(std::io::Error::from);
        let want = Want {
            allowed: true,
            direct: flags & libc::O_DIRECT != 0,
            writes: flags & libc::O_ACCMODE != libc::O_RDONLY,
        };
        let mode = self.passthrough.choose(
            e.node,
            fh,
            want,
            || real_identity(&*handle().ok()?),
            || reply.open_backing(handle()?.file.as_fd()),
        );
        match mode {
            Mode::Passthrough(id) => {
                reply.created_passthrough(
                    &self.ttl,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    &id,
                );
                if want.writes {
                    // The reply has one timeout for the name and the attributes, and the name's
                    // must stay long; the attributes are made stale right after it (see
                    // `Passthrough::attrs_volatile`), before the caller can have mapped the file.
                    self.ov.invalidate(e.node, false);
                }
            }
            Mode::Direct => reply.created(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Mode::Cached => reply.created(
                &self.ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Mode::Refused => {
                self.ov.release(fh);
                self.ov.stats().error(libc::EBUSY);
                reply.error(Errno::EBUSY)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timed = self.ov.stats().timed(Op::Write);
        debug!(
            "write(ino={ino}, fh={fh}, offset={offset}, len={})",
            data.len()
        );
        match self.ov.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Flush);
        // close(2) on an overlay file does not sync either, so there is nothing to do; ENOSYS
        // tells the kernel not to send FLUSH again (one request less per close).
        debug!("flush(ino={ino}, fh={fh})");
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Fsync);
        debug!("fsync(ino={ino}, fh={fh}, datasync={datasync})");
        self.reply_empty(self.ov.fsync(fh.0, datasync), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Fsyncdir);
        debug!("fsyncdir(ino={ino}, fh={fh}, datasync={datasync})");
        self.reply_empty(self.ov.fsyncdir(ino.0), reply);
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Setxattr);
        debug!(
            "setxattr(ino={ino}, name={name:?}, len={}, flags={flags})",
            value.len()
        );
        self.reply_empty(
            self.ov.setxattr(ino.0, name, value, flags, caller(req)),
            reply,
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timed = self.ov.stats().timed(Op::Removexattr);
        debug!("removexattr(ino={ino}, name={name:?})");
        self.reply_empty(self.ov.removexattr(ino.0, name, caller(req)), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _timed = self.ov.stats().timed(Op::Fallocate);
        debug!("fallocate(ino={ino}, fh={fh}, offset={offset}, length={length}, mode={mode})");
        self.reply_empty(self.ov.fallocate(fh.0, offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _timed = self.ov.stats().timed(Op::Lseek);
        debug!("lseek(ino={ino}, fh={fh}, offset={offset}, whence={whence})");
        match self.ov.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _timed = self.ov.stats().timed(Op::CopyFileRange);
        debug!(
            "copy_file_range(ino_in={ino_in}, fh_in={fh_in}, off_in={offset_in}, \
             ino_out={ino_out}, fh_out={fh_out}, off_out={offset_out}, len={len})"
        );
        match self
            .ov
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _timed = self.ov.stats().timed(Op::Access);
        debug!("access(ino={ino}, mask={mask:?})");
        match self.ov.access(ino.0, mask.bits(), caller(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.errno(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threads_for;

    #[test]
    fn default_threads_are_two_more_than_the_cpus_and_at_least_four() {
        assert_eq!(threads_for(1), 4);
        assert_eq!(threads_for(2), 4);
        assert_eq!(threads_for(3), 5);
        assert_eq!(threads_for(16), 18);
        assert_eq!(threads_for(usize::MAX), usize::MAX);
    }
}
