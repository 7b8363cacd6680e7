//! Helpers for `tests/write_*.rs`: layer directories that can be mounted by ufs and by kernel
//! overlayfs, operations whose outcome (`ok` or the errno) is compared between the two, snapshot
//! normalization for timestamps that depend on when an operation ran, small syscall wrappers
//! (`renameat2`, `mknod`, `utimensat` with `UTIME_OMIT`, `fallocate`, `lseek`, `truncate`), a
//! deterministic data pattern for large files, and running shell commands as another user.
//!
//! Everything that mounts goes through the guards of `tests/common` (`UfsMount`,
//! `KernelOverlay`, `TmpfsMount`), so a failing test never leaves a mount behind.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

// ---------------------------------------------------------------------------------------------
// Layer directories
// ---------------------------------------------------------------------------------------------

/// Overlay features, passed explicitly and identically to ufs and to the kernel, so that like
/// is compared with like whatever either side's defaults are (the kernel's come from
/// `/sys/module/overlay/parameters/*`; here `redirect_dir`, `index` and `metacopy` are all off,
/// while ufs's own defaults have been changing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features(pub &'static str);

impl Features {
    /// The kernel's module defaults, except `redirect_dir=on`, which SEMANTICS.md ("Rename")
    /// requires: directories with lower parts must be renamable.
    pub const BASE: Features = Features("redirect_dir=on,index=off,metacopy=off");
    /// Everything on: metadata-only copy-up and the inode index (hard links kept on copy-up).
    pub const ALL_ON: Features = Features("redirect_dir=on,index=on,metacopy=on");
}

/// One set of layer directories under `base`: lowers `l1`, `l2`, ... (top first), `up`, `wk` and
/// the mount point `m`, mounted with `features`.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub base: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    pub features: Features,
}

impl Dirs {
    /// Creates `n_lowers` empty lowers, `up`, `wk` and `m` under `base`; [`Features::BASE`].
    pub fn new(base: &Path, n_lowers: usize) -> Dirs {
        mkdirs(base);
        Dirs {
            base: base.to_path_buf(),
            lowers: (1..=n_lowers)
                .map(|i| mkdirs(&base.join(format!("l{i}"))))
                .collect(),
            upper: mkdirs(&base.join("up")),
            work: mkdirs(&base.join("wk")),
            mnt: mkdirs(&base.join("m")),
            features: Features::BASE,
        }
    }

    /// Lower `i` (0 is the top one).
    pub fn lower(&self, i: usize) -> &Path {
        &self.lowers[i]
    }

    fn lowerdir(&self, f: impl Fn(&Path) -> String) -> String {
        self.lowers
            .iter()
            .map(|p| f(p))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// ufs options with absolute paths.
    pub fn ufs_opts(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={},{}",
            self.lowerdir(|p| p.display().to_string()),
            self.upper.display(),
            self.work.display(),
            self.features.0
        )
    }

    /// Kernel options relative to `base` (the mount data is limited to one page), with workdir
    /// `work` (a directory under `base`).
    pub fn kernel_opts(&self, work: &Path) -> String {
        let rel = |p: &Path| {
            p.strip_prefix(&self.base)
                .expect("under base")
                .display()
                .to_string()
        };
        format!(
            "lowerdir={},upperdir={},workdir={},{}",
            self.lowerdir(rel),
            rel(&self.upper),
            rel(work),
            self.features.0
        )
    }

    pub fn mount_ufs(&self) -> UfsMount {
        UfsMount::mount(&self.ufs_opts(), &self.mnt)
    }

    pub fn mount_ufs_with(&self, extra: &str) -> UfsMount {
        UfsMount::mount(&format!("{},{extra}", self.ufs_opts()), &self.mnt)
    }

    /// Kernel overlay on these layers with the workdir `wk`.
    pub fn mount_kernel(&self) -> KernelOverlay {
        KernelOverlay::mount(&self.kernel_opts(&self.work), &self.mnt, &self.base)
    }

    /// Kernel overlay on these layers with a fresh workdir `wk-NAME` (the kernel's own, so that
    /// ufs's workdir is left as it was).
    pub fn mount_kernel_fresh_work(&self, name: &str) -> KernelOverlay {
        let w = mkdirs(&self.base.join(format!("wk-{name}")));
        KernelOverlay::mount(&self.kernel_opts(&w), &self.mnt, &self.base)
    }

    /// Names in `WORKDIR/work` (where copies are built), empty when it does not exist.
    pub fn work_leftovers(&self) -> Vec<String> {
        work_leftovers(&self.work)
    }
}

/// Names in `workdir/work`, empty when it does not exist.
pub fn work_leftovers(workdir: &Path) -> Vec<String> {
    match fs::read_dir(workdir.join("work")) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// Unmounts `m` cleanly and waits (bounded) until its daemon has exited, so that the workdir
/// lock is free for the next mount.
pub fn unmount_and_wait(m: &mut UfsMount) {
    m.unmount();
    assert!(
        m.wait_daemon_exit(Duration::from_secs(10)),
        "ufs daemon for {} still running 10 s after unmount",
        m.mnt.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The time layer entries get unless a fixture set one explicitly.
pub const FIXED_TIME: (i64, i64) = (1_500_000_000, 111_222_333);

/// Gives every entry under `root` (and `root`) whose mtime is `>= since` the time
/// [`FIXED_TIME`] (atime and mtime), children before their directory, without following
/// symlinks. Entries whose times a fixture set to something older keep them.
pub fn settle_times(root: &Path, since: i64) {
    let md = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("lstat {}: {e}", root.display()));
    if md.is_dir() {
        for e in fs::read_dir(root).unwrap_or_else(|e| panic!("read_dir {}: {e}", root.display())) {
            settle_times(&e.expect("dir entry").path(), since);
        }
    }
    if md.mtime() >= since {
        set_times(root, FIXED_TIME.0, FIXED_TIME.1)
            .unwrap_or_else(|e| panic!("utimes {}: {e}", root.display()));
    }
}

/// A copy of `s` where every mtime at or after `since` (set by an operation of the test, so
/// different between two mounts that ran the same operation a few microseconds apart) reads
/// `(0, 0)`. Older mtimes come from the fixtures or from explicit `utimes` calls and must match
/// exactly (a copy-up must keep them).
pub fn blur_recent(s: &Snapshot, since: i64) -> Snapshot {
    let mut out = s.clone();
    for e in out.entries.values_mut() {
        if e.mtime.0 >= since {
            e.mtime = (0, 0);
        }
    }
    out
}

/// Panics when a ufs snapshot has names that readdir and lookup disagree on.
pub fn assert_consistent(s: &Snapshot, what: &str) {
    assert!(
        s.phantoms.is_empty(),
        "{what}: readdir lists names lookup cannot find: {:?}",
        s.phantoms
    );
    assert!(
        s.ghosts.is_empty(),
        "{what}: lookup finds names readdir does not list: {:?}",
        s.ghosts
    );
}

// ---------------------------------------------------------------------------------------------
// Outcomes and errno names
// ---------------------------------------------------------------------------------------------

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EBUSY => "EBUSY",
        libc::ERANGE => "ERANGE",
        libc::EDQUOT => "EDQUOT",
        libc::EFBIG => "EFBIG",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// `ok`, `ok: DETAIL`, or the errno's name.
pub fn outcome(r: &io::Result<String>) -> String {
    match r {
        Ok(s) if s.is_empty() => "ok".into(),
        Ok(s) => format!("ok: {s}"),
        Err(e) => match e.raw_os_error() {
            Some(n) => errno_name(n),
            None => format!("error: {e}"),
        },
    }
}

/// Discards a successful value: the outcome of an operation that returns nothing to compare.
pub fn done<T>(r: io::Result<T>) -> io::Result<String> {
    r.map(|_| String::new())
}

/// The errno of `r`, `None` when it succeeded.
pub fn errno_of<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

// ---------------------------------------------------------------------------------------------
// Operations compared between ufs and the kernel
// ---------------------------------------------------------------------------------------------

pub type OpFn = fn(&Path) -> io::Result<String>;

/// What to compare for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The outcome must equal the kernel's.
    Kernel,
    /// ufs deliberately differs from the kernel here (a difference written in
    /// docs/DIFFERENCES.md): the call runs on ufs only and must fail.
    UfsRefuses,
}

#[derive(Clone, Copy)]
pub struct Op {
    pub name: &'static str,
    pub run: OpFn,
    pub check: Check,
}

/// Runs `ops` alternately on the kernel mount `k` and the ufs mount `u` (same layers, same
/// order) and returns one line per disagreement.
pub fn run_ops_compared(ops: &[Op], k: &Path, u: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op.check {
            Check::Kernel => {
                let kr = outcome(&(op.run)(k));
                let ur = outcome(&(op.run)(u));
                if kr != ur {
                    bad.push(format!("op {i} `{}`: kernel {kr:?}, ufs {ur:?}", op.name));
                }
            }
            Check::UfsRefuses => {
                let r = (op.run)(u);
                if r.is_ok() {
                    bad.push(format!(
                        "op {i} `{}`: ufs accepted it, must refuse",
                        op.name
                    ));
                }
            }
        }
    }
    bad
}

/// Runs `ops` on one mount, ignoring outcomes (they are checked by `ops_match_kernel`).
/// Ops marked [`Check::UfsRefuses`] run only when `is_ufs`.
pub fn run_ops(ops: &[Op], mnt: &Path, is_ufs: bool) {
    for op in ops {
        if op.check == Check::Kernel || is_ufs {
            let _ = (op.run)(mnt); // outcomes are compared in ops_match_kernel; here only the state matters
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall wrappers
// ---------------------------------------------------------------------------------------------

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, flags)`.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both paths are NUL-terminated strings that live across the call.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// `mknod(p, mode, makedev(major, minor))`; `mode` includes the `S_IFMT` bits.
pub fn mknod(p: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is NUL-terminated; mknod has no other preconditions.
    cvt(unsafe {
        libc::mknod(
            c.as_ptr(),
            mode as libc::mode_t,
            libc::makedev(major, minor),
        )
    })
}

/// `utimensat` without following a final symlink; `None` is `UTIME_OMIT`.
pub fn utimens(p: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) -> io::Result<()> {
    let c = cpath(p);
    let ts = |t: Option<(i64, i64)>| match t {
        Some((s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: c is NUL-terminated and `times` holds the two timespecs utimensat reads.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fallocate(f: &fs::File, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: the fd is owned by `f`, which outlives the call.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) })
}

pub fn lseek(f: &fs::File, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: the fd is owned by `f`, which outlives the call.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `truncate(2)` by path.
pub fn truncate(p: &Path, len: i64) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is NUL-terminated.
    cvt(unsafe { libc::truncate(c.as_ptr(), len) })
}

/// `lgetxattr` as an outcome (`ok: VALUE` or the errno).
pub fn xattr_outcome(p: &Path, name: &str) -> io::Result<String> {
    get_xattr(p, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Sorted names in `p`, as an op result.
pub fn names_of(p: &Path) -> io::Result<String> {
    let mut v: Vec<String> = fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v.join(","))
}

/// `(major, minor)` of a device number.
pub fn dev_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

// ---------------------------------------------------------------------------------------------
// A deterministic data pattern for large files
// ---------------------------------------------------------------------------------------------

pub const MIB: u64 = 1 << 20;

/// Fills `buf` with the pattern of the `MIB`-sized chunk number `chunk` (never all zeros, so a
/// filesystem stores it as data).
pub fn pattern_chunk(chunk: u64, buf: &mut [u8]) {
    let mut x = chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buf.chunks_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        word.copy_from_slice(&b[..word.len()]);
    }
}

/// Writes `size` bytes of the pattern to a new file `p` and makes them durable.
pub fn write_pattern_file(p: &Path, size: u64) {
    use std::io::Write;
    let mut f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        pattern_chunk(off / MIB, &mut buf);
        f.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        off += n as u64;
    }
    f.sync_all().expect("fsync pattern file");
}

/// What a file holds compared with the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternCheck {
    /// Exactly the pattern of `size` bytes.
    Original,
    /// The pattern with the byte at the allowed offset replaced by the allowed value.
    Modified,
    WrongSize(u64),
    /// First differing offset.
    Differs(u64),
}

/// Compares the file `p` with `size` bytes of the pattern, allowing `patch = (offset, byte)`.
pub fn check_pattern(p: &Path, size: u64, patch: Option<(u64, u8)>) -> io::Result<PatternCheck> {
    let mut f = fs::File::open(p)?;
    let len = f.metadata()?.len();
    if len != size {
        return Ok(PatternCheck::WrongSize(len));
    }
    let mut want = vec![0u8; MIB as usize];
    let mut got = vec![0u8; MIB as usize];
    let mut patched = false;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        pattern_chunk(off / MIB, &mut want);
        f.read_exact(&mut got[..n])?;
        if got[..n] != want[..n] {
            for i in 0..n {
                if got[i] != want[i] {
                    let at = off + i as u64;
                    if patch == Some((at, got[i])) {
                        patched = true;
                    } else {
                        return Ok(PatternCheck::Differs(at));
                    }
                }
            }
        }
        off += n as u64;
    }
    Ok(if patched {
        PatternCheck::Modified
    } else {
        PatternCheck::Original
    })
}

// ---------------------------------------------------------------------------------------------
// Running as another user
// ---------------------------------------------------------------------------------------------

/// Runs `sh -c SCRIPT sh ARGS...` as uid/gid 65534 with no supplementary groups, in `cwd`.
pub fn run_as_nobody(script: &str, args: &[&Path], cwd: &Path) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .args(args)
    .current_dir(cwd);
    run_bounded(&mut cmd, CMD_TIMEOUT)
}

/// The errno a failed shell command reported, from its message (`touch`, `mkdir`, `chmod`, sh
/// redirections all print strerror).
pub fn shell_outcome(r: &Run) -> String {
    if r.success() {
        return "ok".into();
    }
    let table = [
        ("Permission denied", "EACCES"),
        ("Operation not permitted", "EPERM"),
        ("Read-only file system", "EROFS"),
        ("No such file or directory", "ENOENT"),
        ("File exists", "EEXIST"),
        ("No space left on device", "ENOSPC"),
    ];
    for (msg, name) in table {
        if r.stderr.contains(msg) {
            return name.into();
        }
    }
    format!("failed: {}", r.stderr.trim())
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// The path as a C string for ad hoc libc calls.
pub fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// `lstat` metadata or a panic naming the path.
pub fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}
