//! The operations of a differential sequence and how one runs against a mount.
//!
//! Every operation names its targets by paths relative to the mount root. They are resolved
//! without ever following a symlink: the parent directory is opened with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (a symlink among the parent components answers
//! `ELOOP`), and the last component is used with the `*at` call and its no-follow flag
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `l*xattr`). The layers hold symlinks to `/etc` and
//! `../../..`: nothing here may ever act outside the mount. Opens also carry `O_NONBLOCK` so
//! that opening a fifo never blocks.
//!
//! An operation's [`Outcome`] is its value (what a caller could observe) or its errno; the two
//! mounts must produce equal outcomes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use crate::common::{get_xattr, list_xattrs, remove_xattr};
use crate::runner::KnownDifference;

/// Modification times below this (2022-04-15) can only have been set explicitly: by the
/// generator (layer contents) or by a `utimes` operation. Only those are compared; a time set
/// by the clock (a write, a create) differs between the two mounts by nature.
pub const EXPLICIT_TIME_LIMIT: i64 = 1_650_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Omit,
    Now,
    At(i64, i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

/// One step of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `openat(O_CREAT | O_WRONLY [| O_EXCL])`; the value is the new file's `fstat`.
    Create {
        path: String,
        mode: u32,
        excl: bool,
    },
    /// `pwrite` of `len` pattern bytes at `offset` through an `O_WRONLY` open.
    Write {
        path: String,
        offset: u64,
        len: usize,
        fill: u8,
    },
    /// `write` through an `O_WRONLY | O_APPEND` open.
    Append {
        path: String,
        len: usize,
        fill: u8,
    },
    /// `truncate(2)` by path (`via_fd == false`) or `ftruncate` of an `O_WRONLY` open.
    Truncate {
        path: String,
        len: u64,
        via_fd: bool,
    },
    /// `pread` of up to `len` bytes at `offset`.
    Read {
        path: String,
        offset: u64,
        len: usize,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    /// `lchown`; `None` leaves that id.
    Chown {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `utimensat(AT_SYMLINK_NOFOLLOW)`.
    Utimes {
        path: String,
        atime: Time,
        mtime: Time,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        mode: RenameMode,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    /// `llistxattr` and `lgetxattr` of every listed name.
    GetXattrs {
        path: String,
    },
    /// `setfacl`: sets the access ACL (or with `default` the default ACL) to `entries`
    /// (`(tag, perm, id)` in the kernel's xattr form), or removes it when `entries` is empty.
    SetAcl {
        path: String,
        default: bool,
        entries: Vec<(u16, u16, u32)>,
    },
    /// `getfacl`: the access and default ACL xattrs, decoded.
    GetAcls {
        path: String,
    },
    /// The names, types and inode consistency of a directory listing.
    Readdir {
        path: String,
    },
    /// `lstat` (and `readlink` for a symlink).
    Stat {
        path: String,
    },
    /// Unmount both mounts and mount them again over the same directories.
    Remount,
    /// The layer lifecycle, read-only: unmount both mounts, mount each read-only with its upper
    /// as the top lower (`lowerdir=UPPER:LOWERS`, no upper, no workdir), compare the whole
    /// trees (and the kernel over ufs's layers the same way), then mount both writable again
    /// over the same directories as before.
    RemountReadOnly,
    /// The layer lifecycle, rotation: unmount both mounts and mount each again with its upper
    /// pushed into `lowerdir=` (the new top lower) under a new empty upper and workdir; the
    /// sequence goes on on the new stacks, so later operations copy up from the former upper.
    Rotate,
    /// The kernel forgets the dentries and inodes it can (`drop_caches` = 2) while the
    /// directory `pin` stays open on both mounts: names under it are then looked up again in a
    /// directory the filesystem still holds (with what it cached about it).
    Forget {
        pin: String,
    },
}

fn show(p: &str) -> String {
    format!("/{p}")
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { path, mode, excl } => {
                let x = if *excl { "|O_EXCL" } else { "" };
                write!(f, "create {} mode={mode:04o} O_CREAT{x}", show(path))
            }
            Op::Write {
                path,
                offset,
                len,
                fill,
            } => write!(
                f,
                "write {} offset={offset} len={len} fill={fill}",
                show(path)
            ),
            Op::Append { path, len, fill } => {
                write!(f, "append {} len={len} fill={fill}", show(path))
            }
            Op::Truncate { path, len, via_fd } => {
                let how = if *via_fd { "ftruncate" } else { "truncate" };
                write!(f, "{how} {} len={len}", show(path))
            }
            Op::Read { path, offset, len } => {
                write!(f, "read {} offset={offset} len={len}", show(path))
            }
            Op::Chmod { path, mode } => write!(f, "chmod {} {mode:04o}", show(path)),
            Op::Chown { path, uid, gid } => {
                let id = |v: &Option<u32>| v.map_or("-1".to_string(), |v| v.to_string());
                write!(f, "lchown {} {}:{}", show(path), id(uid), id(gid))
            }
            Op::Utimes { path, atime, mtime } => {
                write!(f, "utimes {} atime={atime:?} mtime={mtime:?}", show(path))
            }
            Op::Mkdir { path, mode } => write!(f, "mkdir {} {mode:04o}", show(path)),
            Op::Rmdir { path } => write!(f, "rmdir {}", show(path)),
            Op::Unlink { path } => write!(f, "unlink {}", show(path)),
            Op::Rename { from, to, mode } => {
                let m = match mode {
                    RenameMode::Plain => "",
                    RenameMode::NoReplace => " RENAME_NOREPLACE",
                    RenameMode::Exchange => " RENAME_EXCHANGE",
                };
                write!(f, "rename {} -> {}{m}", show(from), show(to))
            }
            Op::Link { from, to } => write!(f, "link {} -> {}", show(from), show(to)),
            Op::Symlink { target, path } => write!(f, "symlink {} -> {target:?}", show(path)),
            Op::Mkfifo { path, mode } => write!(f, "mkfifo {} {mode:04o}", show(path)),
            Op::SetXattr {
                path,
                name,
                value,
                mode,
            } => write!(
                f,
                "setxattr {} {name}={:?} {mode:?}",
                show(path),
                String::from_utf8_lossy(value)
            ),
            Op::RemoveXattr { path, name } => write!(f, "removexattr {} {name}", show(path)),
            Op::GetXattrs { path } => write!(f, "getxattrs {}", show(path)),
            Op::SetAcl {
                path,
                default,
                entries,
            } => write!(
                f,
                "setfacl {}{} {}",
                if *default { "-d " } else { "" },
                show(path),
                if entries.is_empty() {
                    "(remove)".to_string()
                } else {
                    show_acl(entries)
                }
            ),
            Op::GetAcls { path } => write!(f, "getfacl {}", show(path)),
            Op::Readdir { path } => write!(f, "readdir {}", show(path)),
            Op::Stat { path } => write!(f, "lstat {}", show(path)),
            Op::Remount => write!(f, "remount"),
            Op::RemountReadOnly => write!(
                f,
                "remount read-only with the upper as top lower, compare, remount writable"
            ),
            Op::Rotate => write!(
                f,
                "rotate: the upper becomes the top lower under a new upper"
            ),
            Op::Forget { pin } => write!(f, "forget (keeping {} open)", show(pin)),
        }
    }
}

impl Op {
    /// Whether the runner (not [`run`]) carries it out: it unmounts and mounts both sides.
    pub fn is_lifecycle(&self) -> bool {
        matches!(self, Op::Remount | Op::RemountReadOnly | Op::Rotate)
    }

    /// A short name of the operation's kind (for failure signatures and statistics).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Append { .. } => "append",
            Op::Truncate { .. } => "truncate",
            Op::Read { .. } => "read",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimes { .. } => "utimes",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Mkfifo { .. } => "mkfifo",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::GetXattrs { .. } => "getxattrs",
            Op::SetAcl { .. } => "setfacl",
            Op::GetAcls { .. } => "getfacl",
            Op::Readdir { .. } => "readdir",
            Op::Stat { .. } => "stat",
            Op::Remount => "remount",
            Op::RemountReadOnly => "remount-ro",
            Op::Rotate => "rotate",
            Op::Forget { .. } => "forget",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

/// An errno, printed by name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: &[(i32, &str)] = &[
            (libc::EPERM, "EPERM"),
            (libc::ENOENT, "ENOENT"),
            (libc::EIO, "EIO"),
            (libc::ENXIO, "ENXIO"),
            (libc::EBADF, "EBADF"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::EACCES, "EACCES"),
            (libc::EBUSY, "EBUSY"),
            (libc::EEXIST, "EEXIST"),
            (libc::EXDEV, "EXDEV"),
            (libc::ENOTDIR, "ENOTDIR"),
            (libc::EISDIR, "EISDIR"),
            (libc::EINVAL, "EINVAL"),
            (libc::EFBIG, "EFBIG"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::EROFS, "EROFS"),
            (libc::EMLINK, "EMLINK"),
            (libc::ERANGE, "ERANGE"),
            (libc::ENAMETOOLONG, "ENAMETOOLONG"),
            (libc::ENOSYS, "ENOSYS"),
            (libc::ENOTEMPTY, "ENOTEMPTY"),
            (libc::ELOOP, "ELOOP"),
            (libc::ENODATA, "ENODATA"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
            (libc::ESTALE, "ESTALE"),
        ];
        match NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => write!(f, "{name}"),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// What `lstat` (and `readlink`) show of one object, reduced to what both mounts must agree
/// on: no inode numbers, no ctime/atime, and for directories no size, link count or mtime
/// (DESIGN of the harness: those legitimately differ, see the module docs of `tree`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatInfo {
    pub kind: &'static str,
    pub perm: String,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub rdev: Option<u64>,
    /// Only a time below [`EXPLICIT_TIME_LIMIT`], and only for non-directories.
    pub mtime: Option<(i64, i64)>,
    pub target: Option<String>,
}

/// One name of a listing and its `d_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub d_type: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Done,
    Count(usize),
    Data { len: usize, hash: u64 },
    Stat(StatInfo),
    Listing(Vec<Listed>),
    Xattrs(BTreeMap<String, String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Value),
    Err(Errno),
    /// Not run on either mount, for the named reason.
    Skipped(KnownDifference),
}

impl From<io::Result<Value>> for Outcome {
    fn from(r: io::Result<Value>) -> Outcome {
        match r {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Err(Errno(e.raw_os_error().unwrap_or(-1))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Syscall helpers
// ---------------------------------------------------------------------------------------------

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("path without NUL")
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Wraps a descriptor the kernel just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `open(root, O_PATH | O_DIRECTORY)`.
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cpath(root);
    // SAFETY: `c` is NUL-terminated.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    Ok(owned(fd))
}

/// Opens the directory `rel` beneath `dir` without following any symlink.
pub fn open_beneath(dir: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let c = cstr(if rel.is_empty() { "." } else { rel });
    /// `struct open_how` of openat2(2) (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `c` is NUL-terminated and `how` is a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd as RawFd))
}

/// A path's parent directory, opened safely, and its last component.
pub struct Parent {
    pub fd: OwnedFd,
    pub name: CString,
    name_str: String,
}

impl Parent {
    /// `/proc/self/fd/N/NAME`: the entry through the already-resolved parent, for the calls
    /// that have no `*at` form (`l*xattr`). The magic link is the parent directory itself.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            self.fd.as_raw_fd(),
            self.name_str
        ))
    }
}

pub fn parent_of(root: &Path, path: &str) -> io::Result<Parent> {
    let rootfd = open_root(root)?;
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let fd = if dir.is_empty() {
        rootfd
    } else {
        open_beneath(&rootfd, dir)?
    };
    Ok(Parent {
        fd,
        name: cstr(name),
        name_str: name.to_string(),
    })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; an empty name stats `dir` itself.
pub fn lstat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = if name.as_bytes().is_empty() {
        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: `name` is NUL-terminated and `st` is writable.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `ENXIO` for a fifo, what a non-blocking open for writing answers when it has no reader.
/// Asked before opening, because whether it has one is not decided by the sequence: the
/// harness runs sequences on two threads, and a process forked by one (a mount helper) holds
/// copies of the other's fds until it execs, so a fifo a read op just closed may still have a
/// reader for a moment (the open then succeeds and the write fails with `ESPIPE`).
fn fifo_has_no_reader(p: &Parent) -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid `libc::stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the name is NUL-terminated and `st` is writable.
    let r = unsafe {
        libc::fstatat(
            p.fd.as_raw_fd(),
            p.name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
        return Err(io::Error::from_raw_os_error(libc::ENXIO));
    }
    Ok(())
}

fn open_at(p: &Parent, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: the name is NUL-terminated.
    let fd = cvt(unsafe {
        libc::openat(
            p.fd.as_raw_fd(),
            p.name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(owned(fd))
}

pub fn kind_of_mode(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFCHR => "chardev",
        libc::S_IFBLK => "blockdev",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

/// The comparable part of a stat; `readlink` is done through `p` for symlinks.
fn stat_info(st: &libc::stat, target: Option<String>) -> StatInfo {
    let kind = kind_of_mode(st.st_mode);
    let dir = kind == "dir";
    StatInfo {
        kind,
        perm: format!("{:04o}", st.st_mode & 0o7777),
        uid: st.st_uid,
        gid: st.st_gid,
        size: (!dir).then_some(st.st_size as u64),
        nlink: (!dir).then_some(st.st_nlink),
        rdev: matches!(kind, "chardev" | "blockdev").then_some(st.st_rdev),
        mtime: (!dir && st.st_mtime < EXPLICIT_TIME_LIMIT)
            .then_some((st.st_mtime, st.st_mtime_nsec)),
        target,
    }
}

fn readlink_at(p: &Parent) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: the name is NUL-terminated and `buf` is writable for its length.
    let n = cvt_size(unsafe {
        libc::readlinkat(
            p.fd.as_raw_fd(),
            p.name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The bytes a write of `len` with `fill` at `offset` puts in the file.
pub fn pattern(len: usize, fill: u8, offset: u64) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add(((offset as usize + i) % 251) as u8))
        .collect()
}

pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

fn timespec(t: Time) -> libc::timespec {
    match t {
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Time::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Time::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

fn setxattr_mode(p: &Path, name: &str, value: &[u8], mode: XattrMode) -> io::Result<()> {
    let flags = match mode {
        XattrMode::Any => 0,
        XattrMode::Create => libc::XATTR_CREATE,
        XattrMode::Replace => libc::XATTR_REPLACE,
    };
    let (c, n) = (cpath(p), cstr(name));
    // SAFETY: both strings are NUL-terminated; `value` is valid for its length.
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// A visible xattr map (values shown lossily, compared exactly through their text).
/// The xattr names of the access and default ACL.
pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

/// ACL entries as `getfacl` writes them (`u::rwx,u:1000:r--,g::...`).
pub fn show_acl(entries: &[(u16, u16, u32)]) -> String {
    entries
        .iter()
        .map(|&(tag, perm, id)| {
            let (t, named) = match tag {
                0x01 => ("u", false),
                0x02 => ("u", true),
                0x04 => ("g", false),
                0x08 => ("g", true),
                0x10 => ("m", false),
                0x20 => ("o", false),
                _ => ("?", true),
            };
            let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
                .iter()
                .map(|&(b, c)| if perm & b != 0 { c } else { '-' })
                .collect();
            if named {
                format!("{t}:{id}:{rwx}")
            } else {
                format!("{t}::{rwx}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The xattr value of an ACL.
pub fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// An ACL xattr value decoded for comparison (the raw bytes when it is not one).
fn decode_acl(v: &[u8]) -> String {
    let entries: Option<Vec<(u16, u16, u32)>> = v
        .get(4..)
        .filter(|b| v.get(..4) == Some(&2u32.to_le_bytes()[..]) && b.len() % 8 == 0)
        .map(|b| {
            b.chunks_exact(8)
                .map(|c| {
                    (
                        u16::from_le_bytes([c[0], c[1]]),
                        u16::from_le_bytes([c[2], c[3]]),
                        u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    )
                })
                .collect()
        });
    match entries {
        Some(e) => show_acl(&e),
        None => format!("{v:?}"),
    }
}

/// The access and default ACLs of `p`, each decoded or the errno of `lgetxattr`.
fn acl_map(p: &Path) -> BTreeMap<String, String> {
    [ACL_ACCESS, ACL_DEFAULT]
        .iter()
        .map(|name| {
            let v = match get_xattr(p, name) {
                Ok(v) => decode_acl(&v),
                Err(e) => format!("{:?}", Errno(e.raw_os_error().unwrap_or(0))),
            };
            (name.to_string(), v)
        })
        .collect()
}

pub fn xattr_map(p: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for name in list_xattrs(p)? {
        let v = get_xattr(p, &name)?;
        m.insert(name, format!("{:?}", v));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Running one operation
// ---------------------------------------------------------------------------------------------

/// Runs `op` (anything but [`Op::Remount`], [`Op::RemountReadOnly`] and [`Op::Rotate`]) on the mount at `root`. Also returns the names a
/// listing reported with a `d_ino` other than `lstat`'s `st_ino` (see `tree::Tree::ino_problems`
/// for why that is checked on ufs only).
pub fn run(root: &Path, op: &Op) -> (Outcome, Vec<String>) {
    let mut ino_problems = Vec::new();
    let outcome = run_inner(root, op, &mut ino_problems).into();
    (outcome, ino_problems)
}

fn run_inner(root: &Path, op: &Op, ino_problems: &mut Vec<String>) -> io::Result<Value> {
    match op {
        Op::Create { path, mode, excl } => {
            let p = parent_of(root, path)?;
            let excl = if *excl { libc::O_EXCL } else { 0 };
            let fd = open_at(&p, libc::O_CREAT | libc::O_WRONLY | excl, *mode)?;
            Ok(Value::Stat(stat_info(&fstat(&fd)?, None)))
        }
        Op::Write {
            path,
            offset,
            len,
            fill,
        } => {
            let p = parent_of(root, path)?;
            fifo_has_no_reader(&p)?;
            let fd = open_at(&p, libc::O_WRONLY, 0)?;
            let data = pattern(*len, *fill, *offset);
            // SAFETY: `data` is valid for its length; the fd is open.
            let n = cvt_size(unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    *offset as libc::off_t,
                )
            })?;
            Ok(Value::Count(n))
        }
        Op::Append { path, len, fill } => {
            let p = parent_of(root, path)?;
            fifo_has_no_reader(&p)?;
            let fd = open_at(&p, libc::O_WRONLY | libc::O_APPEND, 0)?;
            let data = pattern(*len, *fill, 0);
            // SAFETY: `data` is valid for its length; the fd is open.
            let n =
                cvt_size(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })?;
            Ok(Value::Count(n))
        }
        Op::Truncate { path, len, via_fd } => {
            let p = parent_of(root, path)?;
            if *via_fd {
                let fd = open_at(&p, libc::O_WRONLY, 0)?;
                // SAFETY: plain syscall on an open fd.
                cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), *len as libc::off_t) })?;
            } else {
                // truncate(2) follows a final symlink; through an O_PATH|O_NOFOLLOW descriptor
                // of the entry itself it cannot, and a symlink answers ELOOP as an O_NOFOLLOW
                // open would.
                let fd = open_at(&p, libc::O_PATH, 0)?;
                if kind_of_mode(fstat(&fd)?.st_mode) == "symlink" {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let c = cstr(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
                // SAFETY: `c` is NUL-terminated.
                cvt(unsafe { libc::truncate(c.as_ptr(), *len as libc::off_t) })?;
            }
            Ok(Value::Done)
        }
        Op::Read { path, offset, len } => {
            let p = parent_of(root, path)?;
            let fd = open_at(&p, libc::O_RDONLY, 0)?;
            let mut buf = vec![0u8; *len];
            let mut done = 0;
            while done < buf.len() {
                // SAFETY: `buf[done..]` is writable for the length passed.
                let n = cvt_size(unsafe {
                    libc::pread(
                        fd.as_raw_fd(),
                        buf[done..].as_mut_ptr().cast(),
                        buf.len() - done,
                        (*offset + done as u64) as libc::off_t,
                    )
                })?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            Ok(Value::Data {
                len: done,
                hash: hash_bytes(&buf),
            })
        }
        Op::Chmod { path, mode } => {
            let p = parent_of(root, path)?;
            // fchmodat2 (Linux 6.6) honours AT_SYMLINK_NOFOLLOW (EOPNOTSUPP on a symlink).
            // SAFETY: the name is NUL-terminated.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    p.fd.as_raw_fd(),
                    p.name.as_ptr(),
                    *mode as libc::c_uint,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Value::Done)
        }
        Op::Chown { path, uid, gid } => {
            let p = parent_of(root, path)?;
            // SAFETY: the name is NUL-terminated; -1 (as u32) leaves an id unchanged.
            cvt(unsafe {
                libc::fchownat(
                    p.fd.as_raw_fd(),
                    p.name.as_ptr(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Utimes { path, atime, mtime } => {
            let p = parent_of(root, path)?;
            let ts = [timespec(*atime), timespec(*mtime)];
            // SAFETY: the name is NUL-terminated; `ts` holds the two timespecs required.
            cvt(unsafe {
                libc::utimensat(
                    p.fd.as_raw_fd(),
                    p.name.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Mkdir { path, mode } => {
            let p = parent_of(root, path)?;
            // SAFETY: the name is NUL-terminated.
            cvt(unsafe { libc::mkdirat(p.fd.as_raw_fd(), p.name.as_ptr(), *mode) })?;
            Ok(Value::Done)
        }
        Op::Rmdir { path } | Op::Unlink { path } => {
            let p = parent_of(root, path)?;
            let flags = if matches!(op, Op::Rmdir { .. }) {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            // SAFETY: the name is NUL-terminated.
            cvt(unsafe { libc::unlinkat(p.fd.as_raw_fd(), p.name.as_ptr(), flags) })?;
            Ok(Value::Done)
        }
        Op::Rename { from, to, mode } => {
            let (a, b) = (parent_of(root, from)?, parent_of(root, to)?);
            let flags = match mode {
                RenameMode::Plain => 0,
                RenameMode::NoReplace => libc::RENAME_NOREPLACE,
                RenameMode::Exchange => libc::RENAME_EXCHANGE,
            };
            // SAFETY: both names are NUL-terminated.
            cvt(unsafe {
                libc::renameat2(
                    a.fd.as_raw_fd(),
                    a.name.as_ptr(),
                    b.fd.as_raw_fd(),
                    b.name.as_ptr(),
                    flags,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Link { from, to } => {
            let (a, b) = (parent_of(root, from)?, parent_of(root, to)?);
            // SAFETY: both names are NUL-terminated; flags 0 does not follow a final symlink.
            cvt(unsafe {
                libc::linkat(
                    a.fd.as_raw_fd(),
                    a.name.as_ptr(),
                    b.fd.as_raw_fd(),
                    b.name.as_ptr(),
                    0,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Symlink { target, path } => {
            let p = parent_of(root, path)?;
            let t = cstr(target);
            // SAFETY: both strings are NUL-terminated.
            cvt(unsafe { libc::symlinkat(t.as_ptr(), p.fd.as_raw_fd(), p.name.as_ptr()) })?;
            Ok(Value::Done)
        }
        Op::Mkfifo { path, mode } => {
            let p = parent_of(root, path)?;
            // SAFETY: the name is NUL-terminated.
            cvt(unsafe {
                libc::mknodat(p.fd.as_raw_fd(), p.name.as_ptr(), libc::S_IFIFO | *mode, 0)
            })?;
            Ok(Value::Done)
        }
        Op::SetXattr {
            path,
            name,
            value,
            mode,
        } => {
            let p = parent_of(root, path)?;
            setxattr_mode(&p.proc_path(), name, value, *mode)?;
            Ok(Value::Done)
        }
        Op::RemoveXattr { path, name } => {
            let p = parent_of(root, path)?;
            remove_xattr(&p.proc_path(), name)?;
            Ok(Value::Done)
        }
        Op::GetXattrs { path } => {
            let p = parent_of(root, path)?;
            Ok(Value::Xattrs(xattr_map(&p.proc_path())?))
        }
        Op::SetAcl {
            path,
            default,
            entries,
        } => {
            // The parent's fd must stay open while its magic link is used.
            let p = parent_of(root, path)?;
            let name = if *default { ACL_DEFAULT } else { ACL_ACCESS };
            if entries.is_empty() {
                remove_xattr(&p.proc_path(), name)?;
            } else {
                setxattr_mode(&p.proc_path(), name, &acl_value(entries), XattrMode::Any)?;
            }
            Ok(Value::Done)
        }
        Op::GetAcls { path } => {
            let p = parent_of(root, path)?;
            Ok(Value::Xattrs(acl_map(&p.proc_path())))
        }
        Op::Readdir { path } => {
            let p = parent_of(root, path)?;
            let dir = if path.is_empty() {
                p.fd
            } else {
                open_at(&p, libc::O_PATH | libc::O_DIRECTORY, 0)?
            };
            let mut v = Vec::new();
            for de in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
                let de = de?;
                let name = de.file_name();
                let ft = de.file_type()?;
                let st = lstat_at(&dir, &CString::new(name.as_bytes()).expect("no NUL"));
                let name = name.to_string_lossy().into_owned();
                if st.map(|s| s.st_ino != de.ino()).unwrap_or(false) {
                    ino_problems.push(format!(
                        "readdir {}: d_ino of {name:?} is not its st_ino",
                        show(path)
                    ));
                }
                v.push(Listed {
                    name,
                    d_type: kind_of_ft(ft),
                });
            }
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Value::Listing(v))
        }
        Op::Stat { path } => {
            if path.is_empty() {
                let fd = open_root(root)?;
                return Ok(Value::Stat(stat_info(&fstat(&fd)?, None)));
            }
            let p = parent_of(root, path)?;
            let st = lstat_at(&p.fd, &p.name)?;
            let target = if kind_of_mode(st.st_mode) == "symlink" {
                Some(readlink_at(&p)?)
            } else {
                None
            };
            Ok(Value::Stat(stat_info(&st, target)))
        }
        Op::Remount | Op::RemountReadOnly | Op::Rotate => {
            unreachable!("{op} is run by the runner")
        }
        Op::Forget { pin } => {
            forget(&[root], pin)?;
            Ok(Value::Done)
        }
    }
}

/// [`Op::Forget`] on the mounts at `roots` at once: `pin` (if it is a directory) stays open on
/// each while the kernel drops its dentries and inodes.
pub fn forget(roots: &[&Path], pin: &str) -> io::Result<()> {
    let pins: Vec<OwnedFd> = roots
        .iter()
        .filter_map(|root| {
            let rootfd = open_root(root).ok()?;
            if pin.is_empty() {
                Some(rootfd)
            } else {
                open_beneath(&rootfd, pin).ok()
            }
        })
        .collect();
    std::fs::write("/proc/sys/vm/drop_caches", "2")?;
    drop(pins);
    Ok(())
}

pub use crate::common::kind_of as kind_of_ft;
