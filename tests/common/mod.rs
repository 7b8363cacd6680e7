//! Shared harness for the integration tests: skip logic, mount guards, a seeded layer-stack
//! model that can be materialized in ufs's marker formats or the kernel's, and tree snapshots
//! taken through a mount with a readable diff.
//!
//! Every mount is held by a guard whose `Drop` unmounts it and waits (with a bound) until
//! `/proc/self/mountinfo` no longer lists it, so a failing test never leaves a mount behind.
//! Nothing here sleeps to wait for a mount: all waits are bounded polls.
//!
//! Environment knobs (for developing the harness before ufs builds):
//! - `UFS_TEST_BIN`: run this binary instead of the crate's `ufs` (for example `fuse-overlayfs`).
//!   A binary whose file name is not `ufs` is a *stand-in*: it is mounted with form 2
//!   (`BIN -o OPTS MERGED`), the only form fuse-overlayfs accepts.
//! - `UFS_TEST_MOUNT_OPTS=passthrough=off`: options added to every ufs mount the harness makes
//!   with its standard form (the suite in another configuration).
//! - `UFS_TEST_KERNEL_MARKERS=1`: materialize the ufs side of oracle tests with kernel marker
//!   formats only (the stand-in does not read `.wh.NAME` files or `user.overlay.opaque`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long a mount may take to appear or disappear.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a ufs mount may live before the watchdog kills its daemon (turns a hang into a
/// failure instead of blocking the whole suite).
pub const WATCHDOG: Duration = Duration::from_secs(150);
/// Bound for CLI invocations that should return promptly.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Binary and skip logic
// ---------------------------------------------------------------------------------------------

/// The binary under test: `$UFS_TEST_BIN` if set, else the crate's `ufs`.
pub fn ufs_bin() -> PathBuf {
    match std::env::var_os("UFS_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_ufs")),
    }
}

/// True when the binary under test is a stand-in (not named `ufs`).
pub fn is_stand_in() -> bool {
    ufs_bin().file_name() != Some(OsStr::new("ufs"))
}

/// Why tests that mount cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if which("fusermount3").is_none() {
        return Some("no fusermount3 in PATH".into());
    }
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fss
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Some("kernel overlay not in /proc/filesystems".into());
    }
    None
}

/// Prints `SKIP <test>: <reason>` and returns true when the environment cannot run mount tests.
/// Written to the process's stderr directly: the test harness captures `eprintln!` of passing
/// tests, and a skip must never pass silently.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            say(&format!("SKIP {test}: {reason}"));
            true
        }
        None => false,
    }
}

/// A line on the real stderr, bypassing the test harness's output capture.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "{line}"); // nowhere else to report a failed write
}

pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A temp dir under /tmp (ext4 here) with mode 0755 so that other users can reach mounts in it.
pub fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .tempdir_in("/tmp")
        .expect("create temp dir");
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    t
}

pub fn mkdirs(p: &Path) -> PathBuf {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    p.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Polling and mountinfo
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 10 ms until it returns true or `timeout` passes. Returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// One line of /proc/self/mountinfo: mount point and filesystem type.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = post.next().unwrap_or("").to_string();
            Some(MountEntry {
                mount_point: unescape_mountinfo(mp),
                fstype,
                source,
            })
        })
        .collect()
}

/// The top-most mount at exactly `p`, if any.
pub fn mount_at(p: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == p)
}

pub fn is_mounted(p: &Path) -> bool {
    mount_at(p).is_some()
}

pub fn wait_mounted(p: &Path) -> bool {
    wait_until(MOUNT_TIMEOUT, || is_mounted(p))
}

pub fn wait_unmounted(p: &Path) -> bool {
    wait_until(MOUNT_TIMEOUT, || !is_mounted(p))
}

/// Unmounts every mount stacked at `p`: `fusermount3 -u` for FUSE mounts, `umount` otherwise,
/// then `umount -l` as a fallback, and waits until mountinfo no longer lists `p`.
/// Never panics (it runs from `Drop`); returns whether `p` is gone.
pub fn force_unmount(p: &Path) -> bool {
    let count = || mounts().iter().filter(|m| m.mount_point == p).count();
    // Bounded: a few mounts may be stacked at `p` (a failed test may have mounted twice).
    for _ in 0..8 {
        let before = count();
        let Some(m) = mount_at(p) else { return true };
        let ok = if m.fstype.starts_with("fuse") {
            quiet(Command::new("fusermount3").arg("-u").arg(p))
                || quiet(Command::new("umount").arg(p))
        } else {
            quiet(Command::new("umount").arg(p))
        };
        if !ok {
            eprintln!(
                "note: plain unmount of {} failed, using umount -l",
                p.display()
            );
            quiet(Command::new("umount").arg("-l").arg(p));
        }
        if !wait_until(MOUNT_TIMEOUT, || count() < before) {
            eprintln!("warning: {} is still mounted after cleanup", p.display());
            return false;
        }
    }
    !is_mounted(p)
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Running commands with a bound
// ---------------------------------------------------------------------------------------------

/// Result of a bounded command run. `status` is `None` when it was killed at the time limit.
#[derive(Debug)]
pub struct Run {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr into anonymous files (not pipes: a
/// daemon that keeps its inherited stderr open must not make us wait for its exit).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Run {
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if status.is_none() {
        eprintln!("command timed out after {timeout:?}: {cmd:?}");
        let _ = child.kill(); // the process may have exited meanwhile; wait() below reaps it
        let _ = child.wait();
    }
    let read = |f: &mut fs::File| {
        let mut s = String::new();
        f.rewind().expect("rewind");
        let mut b = Vec::new();
        f.read_to_end(&mut b).expect("read output");
        s.push_str(&String::from_utf8_lossy(&b));
        s
    };
    Run {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// Command for the binary under test, with a clean logging environment.
pub fn ufs_cmd() -> Command {
    let mut c = Command::new(ufs_bin());
    c.env_remove("RUST_LOG");
    c
}

/// The arguments of the project's standard mount form for `opts` and `mnt`
/// (`mount -o OPTS MNT` for ufs, `-o OPTS MNT` for a stand-in).
pub fn standard_mount_args(opts: &str, mnt: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    if !is_stand_in() {
        v.push("mount".into());
    }
    v.push("-o".into());
    match extra_mount_options() {
        Some(extra) => v.push(format!("{opts},{extra}").into()),
        None => v.push(opts.into()),
    }
    v.push(mnt.as_os_str().to_owned());
    v
}

/// `UFS_TEST_MOUNT_OPTS`: options added to every mount made with [`standard_mount_args`] (so
/// [`UfsMount::mount`]), for running the suite in another configuration, e.g.
/// `UFS_TEST_MOUNT_OPTS=passthrough=off cargo test --release`.
pub fn extra_mount_options() -> Option<String> {
    std::env::var("UFS_TEST_MOUNT_OPTS")
        .ok()
        .filter(|s| !s.trim().is_empty() && !is_stand_in())
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Pids (other than ours) whose command line has an argument containing `needle`.
pub fn pids_with_arg(needle: &Path) -> Vec<u32> {
    let me = std::process::id();
    let needle = needle.as_os_str().as_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle) && arg.len() >= needle.len())
        {
            out.push(pid);
        }
    }
    out
}

/// Whether a process is still running (exists and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

pub fn kill9(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid at worst yields ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Kills the daemons serving `mnt` if the guard is not dropped within `timeout`.
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(mnt: &Path, pid: Option<u32>, timeout: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let mnt = mnt.to_path_buf();
        let handle = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                let mut pids = pids_with_arg(&mnt);
                pids.extend(pid);
                eprintln!(
                    "WATCHDOG: mount {} lived longer than {timeout:?}; killing daemon pids {pids:?} \
                     so that blocked requests fail instead of hanging",
                    mnt.display()
                );
                for p in pids {
                    kill9(p);
                }
            }
        });
        Watchdog {
            tx: Some(tx),
            handle: Some(handle),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join(); // the thread only logs and kills; a panic there is not ours to report
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mount guards
// ---------------------------------------------------------------------------------------------

/// A live ufs (or stand-in) mount. `Drop` unmounts it and reaps a foreground child.
pub struct UfsMount {
    pub mnt: PathBuf,
    /// The foreground process (`-f`/`-d`), if this mount was started that way.
    pub child: Option<Child>,
    /// The daemon's pid: the child's, or found by scanning `/proc/*/cmdline` for `mnt`.
    pub pid: Option<u32>,
    /// Where a foreground child's stderr goes.
    pub stderr_path: Option<PathBuf>,
    /// Output of the launching command (daemonized forms).
    pub launch: Option<Run>,
    /// Daemonized forms: whether the mount was already live when the command returned.
    pub live_on_return: bool,
    watchdog: Option<Watchdog>,
}

impl UfsMount {
    /// Mounts with the standard form and panics (with the command's output) on failure.
    pub fn mount(opts: &str, mnt: &Path) -> UfsMount {
        match Self::try_args(&standard_mount_args(opts, mnt), mnt, None) {
            Ok(m) => m,
            Err(run) => panic!("mounting ufs -o {opts} {} failed:\n{run}", mnt.display()),
        }
    }

    /// Runs the binary with `args` (a daemonizing form), expects it to return once the mount is
    /// live. On failure returns the command's output (and unmounts anything it left).
    pub fn try_args(args: &[OsString], mnt: &Path, cwd: Option<&Path>) -> Result<UfsMount, Run> {
        let mut cmd = ufs_cmd();
        cmd.args(args);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let run = run_bounded(&mut cmd, CMD_TIMEOUT);
        if !run.success() {
            force_unmount(mnt);
            return Err(run);
        }
        let live_on_return = is_mounted(mnt);
        if !wait_mounted(mnt) {
            let mut run = run;
            run.stderr.push_str(
                "\n[harness] command succeeded but the mount never appeared in mountinfo",
            );
            return Err(run);
        }
        let pid = pids_with_arg(mnt).into_iter().find(|p| pid_alive(*p));
        Ok(UfsMount {
            mnt: mnt.to_path_buf(),
            child: None,
            pid,
            stderr_path: None,
            launch: Some(run),
            live_on_return,
            watchdog: Some(Watchdog::new(mnt, pid, WATCHDOG)),
        })
    }

    /// Starts a foreground form (`-f`/`-d` among `args`); stderr goes to `stderr_path`.
    /// Waits (bounded) until the mount appears. Panics with the stderr if it never does.
    pub fn spawn_foreground(args: &[OsString], mnt: &Path, stderr_path: &Path) -> UfsMount {
        let err = fs::File::create(stderr_path).expect("create stderr file");
        let child = ufs_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn ufs");
        let pid = child.id();
        let mut m = UfsMount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
            pid: Some(pid),
            stderr_path: Some(stderr_path.to_path_buf()),
            launch: None,
            live_on_return: false,
            watchdog: Some(Watchdog::new(mnt, Some(pid), WATCHDOG)),
        };
        let mut exited = None;
        let up = wait_until(MOUNT_TIMEOUT, || {
            if is_mounted(mnt) {
                return true;
            }
            exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            exited.is_some()
        });
        if !up || exited.is_some() {
            let log = fs::read_to_string(stderr_path).unwrap_or_default();
            panic!(
                "foreground ufs {args:?} did not mount {} (exited: {exited:?}):\n{log}",
                mnt.display()
            );
        }
        m
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_path
            .as_ref()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Unmounts now with `fusermount3 -u` (asserting it succeeds) and waits until it is gone.
    pub fn unmount(&mut self) {
        // A reference another test thread's child still holds for a moment makes the mount
        // busy; retry for a bounded time rather than fail on that.
        let deadline = Instant::now() + Duration::from_secs(5);
        let run = loop {
            let run = run_bounded(
                Command::new("fusermount3").arg("-u").arg(&self.mnt),
                CMD_TIMEOUT,
            );
            if run.success() || !run.to_string().contains("busy") || Instant::now() > deadline {
                break run;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            run.success(),
            "fusermount3 -u {} failed:\n{run}",
            self.mnt.display()
        );
        assert!(
            wait_unmounted(&self.mnt),
            "{} still mounted",
            self.mnt.display()
        );
    }

    /// Waits (bounded) for the daemon to exit; returns whether it did.
    pub fn wait_daemon_exit(&mut self, timeout: Duration) -> bool {
        if let Some(c) = self.child.as_mut() {
            return wait_until(timeout, || c.try_wait().ok().flatten().is_some());
        }
        match self.pid {
            Some(pid) => wait_until(timeout, || !pid_alive(pid)),
            None => true,
        }
    }
}

impl Drop for UfsMount {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
        if let Some(c) = self.child.as_mut()
            && !wait_until(MOUNT_TIMEOUT, || c.try_wait().ok().flatten().is_some())
        {
            eprintln!(
                "warning: ufs child {} did not exit after unmount; killing it",
                c.id()
            );
            let _ = c.kill(); // it may have exited just now; wait() reaps either way
            let _ = c.wait();
        }
        drop(self.watchdog.take());
    }
}

/// A kernel overlayfs mount (the oracle). `Drop` unmounts it.
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay overlay -o OPTS MNT`, run in `cwd` (so options may use short relative
    /// paths: the mount data is limited to one page).
    pub fn mount(opts: &str, mnt: &Path, cwd: &Path) -> KernelOverlay {
        let run = run_bounded(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", opts])
                .arg(mnt)
                .current_dir(cwd),
            CMD_TIMEOUT,
        );
        assert!(
            run.success(),
            "kernel overlay mount -o {opts} failed:\n{run}"
        );
        assert!(
            wait_mounted(mnt),
            "kernel overlay at {} not in mountinfo",
            mnt.display()
        );
        KernelOverlay {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
    }
}

/// Runs `f` on the kernel overlay and then on ufs, each over its own fresh stack under `base`
/// (`base/kernel` and `base/ufs`: a lower `l` filled by `fill`, an empty upper and workdir),
/// the kernel mounted with `kernel_features` added to its options (may be empty). Returns what
/// `f` returned on each, the kernel's first. Both mounts are gone when it returns.
pub fn on_kernel_and_ufs<T>(
    base: &Path,
    kernel_features: &str,
    fill: impl Fn(&Path),
    f: impl Fn(&Path) -> T,
) -> [T; 2] {
    let run = |side: &str| {
        let dir = mkdirs(&base.join(side));
        let l = mkdirs(&dir.join("l"));
        let up = mkdirs(&dir.join("up"));
        let wk = mkdirs(&dir.join("wk"));
        let m = mkdirs(&dir.join("m"));
        fill(&l);
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            up.display(),
            wk.display()
        );
        if side == "kernel" {
            let opts = if kernel_features.is_empty() {
                options
            } else {
                format!("{options},{kernel_features}")
            };
            let _k = KernelOverlay::mount(&opts, &m, &dir);
            f(&m)
        } else {
            let _u = UfsMount::mount(&options, &m);
            f(&m)
        }
    };
    let kernel = run("kernel");
    [kernel, run("ufs")]
}

/// A tmpfs mounted for a test. `Drop` unmounts it.
pub struct TmpfsMount {
    pub dir: PathBuf,
}

impl TmpfsMount {
    pub fn mount(dir: &Path, size_mib: u64) -> TmpfsMount {
        mkdirs(dir);
        let run = run_bounded(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size_mib}m,mode=755"),
                    "tmpfs",
                ])
                .arg(dir),
            CMD_TIMEOUT,
        );
        assert!(
            run.success(),
            "mount tmpfs on {} failed:\n{run}",
            dir.display()
        );
        assert!(wait_mounted(dir));
        TmpfsMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        force_unmount(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Small syscall helpers (xattrs, special files, times)
// ---------------------------------------------------------------------------------------------

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lsetxattr(2)`: never follows a final symlink.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: c and n are NUL-terminated; value is valid for value.len() bytes.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn remove_xattr(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// `lgetxattr(2)`.
pub fn get_xattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    loop {
        // SAFETY: a null buffer with size 0 asks for the value's size only.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: buf is valid for buf.len() writable bytes.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // the value grew between the two calls
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// `llistxattr(2)`, names in the order returned.
pub fn list_xattrs(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p);
    loop {
        // SAFETY: a null buffer with size 0 asks for the list's size only.
        let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: buf is valid for buf.len() writable bytes.
        let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect());
    }
}

/// A 0/0 character device: the kernel's whiteout.
pub fn mknod_whiteout(p: &Path) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is NUL-terminated; mknod has no other preconditions.
    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(0, 0)) })
}

pub fn mkfifo(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) })
}

/// Sets atime and mtime (seconds, nanoseconds) without following a final symlink.
pub fn set_times(p: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: c is NUL-terminated and ts points to two timespecs as utimensat requires.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and s is a valid, writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(
        r,
        0,
        "statvfs {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    s
}

/// Drops the page, dentry and inode caches so that the kernel forgets FUSE inodes.
pub fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches");
}

// ---------------------------------------------------------------------------------------------
// The layer-stack model
// ---------------------------------------------------------------------------------------------

/// Ownership, permissions, mtime and user xattrs of an entry.
#[derive(Clone, Debug)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    pub fn new(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: (1_600_000_000, 123_456_789),
            xattrs: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Node {
    File {
        meta: Meta,
        content: Vec<u8>,
    },
    Dir {
        meta: Meta,
        opaque: bool,
        children: BTreeMap<String, Node>,
    },
    Symlink {
        target: String,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
    },
    Fifo {
        meta: Meta,
    },
    /// A hard link to the regular file at `target` (a path relative to the layer root).
    HardLink {
        target: String,
    },
    Whiteout,
}

impl Node {
    pub fn file(content: &[u8]) -> Node {
        Node::File {
            meta: Meta::new(0o644),
            content: content.to_vec(),
        }
    }
    pub fn dir(children: BTreeMap<String, Node>) -> Node {
        Node::Dir {
            meta: Meta::new(0o755),
            opaque: false,
            children,
        }
    }
    pub fn opaque_dir(children: BTreeMap<String, Node>) -> Node {
        Node::Dir {
            meta: Meta::new(0o755),
            opaque: true,
            children,
        }
    }
    pub fn symlink(target: &str) -> Node {
        Node::Symlink {
            target: target.into(),
            uid: 0,
            gid: 0,
            mtime: (1_600_000_000, 0),
        }
    }
}

/// One layer: the metadata of its root and its entries.
#[derive(Clone, Debug)]
pub struct Layer {
    pub meta: Meta,
    pub entries: BTreeMap<String, Node>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer {
            meta: Meta::new(0o755),
            entries: BTreeMap::new(),
        }
    }
}

impl Layer {
    /// Inserts `node` at `path` (`a/b/c`), creating plain directories on the way.
    pub fn put(&mut self, path: &str, node: Node) {
        let mut parts: Vec<&str> = path.split('/').collect();
        let last = parts.pop().expect("non-empty path");
        let mut cur = &mut self.entries;
        for p in parts {
            let e = cur
                .entry(p.to_string())
                .or_insert_with(|| Node::dir(BTreeMap::new()));
            match e {
                Node::Dir { children, .. } => cur = children,
                other => panic!("{path}: {p} is not a directory in the model: {other:?}"),
            }
        }
        cur.insert(last.to_string(), node);
    }
}

/// Lowers top first, and an optional upper layer (with content).
#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub lowers: Vec<Layer>,
    pub upper: Option<Layer>,
}

/// Which marker formats to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Mixed formats ufs reads: whiteouts as 0/0 char devices or `.wh.NAME` files; opaque dirs
    /// by `trusted.overlay.opaque=y` or a `.wh..wh..opq` entry.
    Ufs,
    /// Only what kernel overlayfs reads: 0/0 char devices and `trusted.overlay.opaque=y`.
    Kernel,
}

/// Flavor to use for the ufs side of oracle tests (see `UFS_TEST_KERNEL_MARKERS`).
pub fn ufs_side_flavor() -> Flavor {
    if std::env::var_os("UFS_TEST_KERNEL_MARKERS").is_some_and(|v| v == "1") {
        Flavor::Kernel
    } else {
        Flavor::Ufs
    }
}

/// Directories of one materialized stack.
#[derive(Clone, Debug)]
pub struct StackDirs {
    pub base: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mnt: PathBuf,
}

impl StackDirs {
    fn opts(&self, f: impl Fn(&Path) -> String) -> String {
        let lower: Vec<String> = self.lowers.iter().map(|p| f(p)).collect();
        let mut s = format!("lowerdir={}", lower.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            s.push_str(&format!(",upperdir={},workdir={}", f(u), f(w)));
        }
        s
    }
    /// Options with absolute paths.
    pub fn options(&self) -> String {
        self.opts(|p| p.display().to_string())
    }
    /// Options for kernel overlayfs: paths relative to `base` (the mount data is limited to one
    /// page), and an empty bottom lower added when there is a single lower and no upper (the
    /// kernel needs at least two lowers then; an empty bottom layer changes nothing visible).
    pub fn kernel_options(&self) -> String {
        let mut dirs = self.clone();
        if dirs.lowers.len() == 1 && dirs.upper.is_none() {
            dirs.lowers.push(mkdirs(&self.base.join("l/empty")));
        }
        dirs.opts(|p| {
            p.strip_prefix(&self.base)
                .expect("under base")
                .display()
                .to_string()
        })
    }
}

impl Stack {
    /// Writes the stack under `base` (`l/0`, `l/1`, ..., `up`, `wk`, and the mount point `m`).
    pub fn materialize(&self, base: &Path, flavor: Flavor, seed: u64) -> StackDirs {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_f1a7);
        mkdirs(base);
        let mut lowers = Vec::new();
        for (i, layer) in self.lowers.iter().enumerate() {
            let d = base.join("l").join(i.to_string());
            materialize_layer(layer, &d, flavor, &mut rng);
            lowers.push(d);
        }
        let (upper, work) = match &self.upper {
            Some(layer) => {
                let u = base.join("up");
                materialize_layer(layer, &u, flavor, &mut rng);
                (Some(u), Some(mkdirs(&base.join("wk"))))
            }
            None => (None, None),
        };
        StackDirs {
            base: base.to_path_buf(),
            lowers,
            upper,
            work,
            mnt: mkdirs(&base.join("m")),
        }
    }
}

fn ctx<T>(r: io::Result<T>, what: &str, p: &Path) -> T {
    r.unwrap_or_else(|e| panic!("{what} {}: {e}", p.display()))
}

fn apply_meta(p: &Path, m: &Meta, xattrs_ok: bool) {
    ctx(
        std::os::unix::fs::lchown(p, Some(m.uid), Some(m.gid)),
        "chown",
        p,
    );
    // chmod after chown: chown clears setuid/setgid.
    ctx(
        fs::set_permissions(p, fs::Permissions::from_mode(m.mode)),
        "chmod",
        p,
    );
    if xattrs_ok {
        for (k, v) in &m.xattrs {
            ctx(set_xattr(p, k, v), "setxattr", p);
        }
    }
    ctx(set_times(p, m.mtime.0, m.mtime.1), "utimes", p);
}

/// Writes one layer into `dir` (created). Hard links are made after all other entries, and
/// directory metadata last (bottom-up) so that their mtimes are the model's.
pub fn materialize_layer(layer: &Layer, dir: &Path, flavor: Flavor, rng: &mut StdRng) {
    mkdirs(dir);
    let mut links = Vec::new();
    write_entries(&layer.entries, dir, "", flavor, rng, &mut links);
    for (path, target) in &links {
        ctx(
            fs::hard_link(dir.join(target), dir.join(path)),
            "link",
            &dir.join(path),
        );
    }
    finish_dirs(&layer.entries, dir);
    apply_meta(dir, &layer.meta, true);
}

fn write_entries(
    entries: &BTreeMap<String, Node>,
    dir: &Path,
    rel: &str,
    flavor: Flavor,
    rng: &mut StdRng,
    links: &mut Vec<(String, String)>,
) {
    for (name, node) in entries {
        let p = dir.join(name);
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        match node {
            Node::File { meta, content } => {
                ctx(fs::write(&p, content), "write", &p);
                apply_meta(&p, meta, true);
            }
            Node::Dir {
                opaque, children, ..
            } => {
                ctx(fs::create_dir(&p), "mkdir", &p);
                write_entries(children, &p, &r, flavor, rng, links);
                if *opaque {
                    let how = if flavor == Flavor::Kernel {
                        0
                    } else {
                        rng.random_range(0..3)
                    };
                    match how {
                        0 => ctx(
                            set_xattr(&p, "trusted.overlay.opaque", b"y"),
                            "setxattr",
                            &p,
                        ),
                        // A mount that uses `trusted.overlay.*` takes `user.overlay.opaque` as
                        // an ordinary xattr, as the kernel does: the OCI marker stands in.
                        _ => ctx(fs::write(p.join(".wh..wh..opq"), b""), "write", &p),
                    }
                }
            }
            Node::Symlink {
                target,
                uid,
                gid,
                mtime,
            } => {
                ctx(std::os::unix::fs::symlink(target, &p), "symlink", &p);
                ctx(
                    std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid)),
                    "lchown",
                    &p,
                );
                ctx(set_times(&p, mtime.0, mtime.1), "utimes", &p);
            }
            Node::Fifo { meta } => {
                ctx(mkfifo(&p, 0o600), "mkfifo", &p);
                // user.* xattrs are not allowed on fifos.
                apply_meta(&p, meta, false);
            }
            Node::HardLink { target } => links.push((r, target.clone())),
            Node::Whiteout => {
                if flavor == Flavor::Kernel || rng.random_bool(0.5) {
                    ctx(mknod_whiteout(&p), "mknod", &p);
                } else {
                    ctx(fs::write(dir.join(format!(".wh.{name}")), b""), "write", &p);
                }
            }
        }
    }
}

fn finish_dirs(entries: &BTreeMap<String, Node>, dir: &Path) {
    for (name, node) in entries {
        if let Node::Dir { meta, children, .. } = node {
            let p = dir.join(name);
            finish_dirs(children, &p);
            apply_meta(&p, meta, true);
        }
    }
}

// --- random generation ---

/// Names shared by all layers and levels, so that entries collide across layers.
pub const NAME_POOL: &[&str] = &["a", "b", "c", "d", "e", "f"];
const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000, 0o6711, 0o1644,
];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750, 0o000];
const OWNERS: &[(u32, u32)] = &[(0, 0), (0, 0), (1000, 1000), (65534, 65534), (1234, 5678)];
const LINK_TARGETS: &[&str] = &[
    "/etc",
    "../..",
    "a",
    "b/c",
    "../a",
    "/nonexistent/x",
    "../../../../../../etc/passwd",
    ".",
    "a b\tc",
];

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> &'a T {
    &v[rng.random_range(0..v.len())]
}

fn gen_meta(rng: &mut StdRng, dir: bool) -> Meta {
    let (uid, gid) = *pick(rng, OWNERS);
    let mode = *pick(rng, if dir { DIR_MODES } else { FILE_MODES });
    let mut xattrs = Vec::new();
    if rng.random_bool(0.3) {
        for _ in 0..rng.random_range(1..=2) {
            let k = format!("user.k{}", rng.random_range(0..3));
            if xattrs.iter().any(|(n, _)| *n == k) {
                continue;
            }
            let len = rng.random_range(0..12);
            let v: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect();
            xattrs.push((k, v));
        }
    }
    Meta {
        mode,
        uid,
        gid,
        mtime: (
            rng.random_range(1_000_000_000..1_700_000_000),
            rng.random_range(0..1_000_000_000),
        ),
        xattrs,
    }
}

fn gen_content(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..25) {
        0 => rng.random_range(100_000..300_000),
        1 => 0,
        _ => rng.random_range(1..200),
    };
    (0..len).map(|_| rng.random()).collect()
}

fn gen_node(rng: &mut StdRng, name: &str, depth: usize, max_depth: usize) -> Node {
    // The first half of the pool is mostly directories, so that directories of the same name
    // meet across layers and merge (several levels deep); the rest mostly non-directories.
    let dir_w = match depth < max_depth {
        false => 0,
        true if name < "d" => 70,
        true => 20,
    };
    let roll = rng.random_range(0..(dir_w + 30 + 12 + 10 + 5));
    if roll < dir_w {
        let meta = gen_meta(rng, true);
        let opaque = rng.random_bool(0.2);
        Node::Dir {
            meta,
            opaque,
            children: gen_entries(rng, depth + 1, max_depth),
        }
    } else if roll < dir_w + 30 {
        Node::File {
            meta: gen_meta(rng, false),
            content: gen_content(rng),
        }
    } else if roll < dir_w + 42 {
        Node::Whiteout
    } else if roll < dir_w + 52 {
        let (uid, gid) = *pick(rng, OWNERS);
        Node::Symlink {
            target: pick(rng, LINK_TARGETS).to_string(),
            uid,
            gid,
            mtime: (
                rng.random_range(1_000_000_000..1_700_000_000),
                rng.random_range(0..1_000_000_000),
            ),
        }
    } else {
        let mut meta = gen_meta(rng, false);
        meta.xattrs.clear();
        Node::Fifo { meta }
    }
}

fn gen_entries(rng: &mut StdRng, depth: usize, max_depth: usize) -> BTreeMap<String, Node> {
    let mut m = BTreeMap::new();
    for name in NAME_POOL {
        if rng.random_bool(0.6) {
            m.insert(name.to_string(), gen_node(rng, name, depth, max_depth));
        }
    }
    m
}

fn collect_paths(
    entries: &BTreeMap<String, Node>,
    rel: &str,
    files: &mut Vec<String>,
    dirs: &mut Vec<String>,
) {
    for (name, node) in entries {
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        match node {
            Node::File { .. } => files.push(r),
            Node::Dir { children, .. } => {
                dirs.push(r.clone());
                collect_paths(children, &r, files, dirs);
            }
            _ => {}
        }
    }
}

fn dir_entries_mut<'a>(
    entries: &'a mut BTreeMap<String, Node>,
    path: &str,
) -> &'a mut BTreeMap<String, Node> {
    if path.is_empty() {
        return entries;
    }
    let mut cur = entries;
    for p in path.split('/') {
        match cur.get_mut(p) {
            Some(Node::Dir { children, .. }) => cur = children,
            _ => panic!("model: {path} is not a directory"),
        }
    }
    cur
}

/// A random layer over [`NAME_POOL`], nested up to `max_depth` directory levels, with up to two
/// hard links to its own files.
pub fn gen_layer(rng: &mut StdRng, max_depth: usize) -> Layer {
    let mut layer = Layer {
        meta: Meta {
            mode: 0o755,
            ..gen_meta(rng, true)
        },
        entries: gen_entries(rng, 0, max_depth),
    };
    let (mut files, mut dirs) = (Vec::new(), vec![String::new()]);
    collect_paths(&layer.entries, "", &mut files, &mut dirs);
    if !files.is_empty() {
        for _ in 0..rng.random_range(0..=2) {
            let target = pick(rng, &files).clone();
            let dir = pick(rng, &dirs).clone();
            let name = *pick(rng, &["h1", "h2", "a", "b", "c", "d", "e", "f"]);
            let entries = dir_entries_mut(&mut layer.entries, &dir);
            if !entries.contains_key(name) {
                entries.insert(name.to_string(), Node::HardLink { target });
            }
        }
    }
    layer
}

/// A random stack for `seed`: 1 to 6 lowers, and an upper layer with content for even seeds.
pub fn gen_stack(seed: u64) -> Stack {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(1..=6);
    let lowers = (0..n).map(|_| gen_layer(&mut rng, 3)).collect();
    let upper = seed.is_multiple_of(2).then(|| gen_layer(&mut rng, 3));
    Stack { lowers, upper }
}

/// Counts, in the merged view the stack describes (evaluated by the lookup rules of
/// SEMANTICS.md), the situations the oracle is meant to exercise, so that a test can assert the
/// generator really produces them.
pub fn scenario_counts(stack: &Stack) -> BTreeMap<&'static str, usize> {
    let mut layers: Vec<&BTreeMap<String, Node>> = Vec::new();
    if let Some(u) = &stack.upper {
        layers.push(&u.entries);
    }
    layers.extend(stack.lowers.iter().map(|l| &l.entries));
    let mut counts = BTreeMap::new();
    count_scenarios(&layers, 0, &mut counts);
    counts
}

fn count_scenarios(
    layers: &[&BTreeMap<String, Node>],
    depth: usize,
    counts: &mut BTreeMap<&'static str, usize>,
) {
    let mut bump = |k: &'static str| *counts.entry(k).or_insert(0) += 1;
    let names: BTreeSet<&String> = layers.iter().flat_map(|l| l.keys()).collect();
    let mut subdirs = Vec::new();
    for name in names {
        let found: Vec<&Node> = layers.iter().filter_map(|l| l.get(name)).collect();
        let below_has_dir =
            |from: usize| found[from..].iter().any(|n| matches!(n, Node::Dir { .. }));
        match found[0] {
            Node::Whiteout => {
                if below_has_dir(1) {
                    bump("whiteout over dir");
                } else if found.len() > 1 {
                    bump("whiteout over non-dir");
                }
            }
            Node::Dir {
                opaque, children, ..
            } => {
                let mut merged = vec![children];
                if *opaque {
                    if below_has_dir(1) {
                        bump("opaque dir over dir");
                    }
                } else {
                    for n in &found[1..] {
                        match n {
                            Node::Dir {
                                opaque, children, ..
                            } => {
                                merged.push(children);
                                if *opaque {
                                    bump("opaque dir inside a merge");
                                    break;
                                }
                            }
                            Node::Whiteout => {
                                bump("dir over whiteout");
                                break;
                            }
                            _ => {
                                bump("dir over non-dir");
                                break;
                            }
                        }
                    }
                }
                if merged.len() > 1 {
                    bump(if depth == 0 {
                        "merged dir"
                    } else {
                        "nested merged dir"
                    });
                    if depth >= 2 {
                        bump("merged dir 3 levels deep");
                    }
                }
                subdirs.push(merged);
            }
            _ => {
                if below_has_dir(1) {
                    bump("non-dir over dir");
                } else if found.len() > 1 {
                    bump("non-dir over non-dir");
                }
            }
        }
    }
    for merged in subdirs {
        count_scenarios(&merged, depth + 1, counts);
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots through a mount
// ---------------------------------------------------------------------------------------------

/// What one path looks like through a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// Non-directories only.
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    /// Regular files only.
    pub content_hash: Option<u64>,
    pub link_target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Directories only: the listed names (`.` and `..` excluded).
    pub names: Option<BTreeSet<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Relative path (`""` for the root) to entry.
    pub entries: BTreeMap<String, Entry>,
    /// Names that readdir listed but `lstat` reported as nonexistent.
    pub phantoms: Vec<String>,
    /// Names from [`PROBE_NAMES`] that readdir did not list but `lstat` found.
    pub ghosts: Vec<String>,
}

/// Names looked up in every directory of a snapshot even when readdir does not list them:
/// lookup and readdir must agree (a name hidden by a whiteout or an opaque marker must not be
/// found by lookup either), and markers must not be reachable by name.
pub const PROBE_NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "h1",
    "h2",
    ".wh..wh..opq",
    ".wh.a",
    ".wh.b",
    ".wh.c",
    ".wh.d",
    ".wh.e",
    ".wh.f",
];

/// A short name for a file type (shared by the test targets).
pub fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else if ft.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn hash_file(p: &Path) -> io::Result<u64> {
    let mut f = fs::File::open(p)?;
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        buf[..n].hash(&mut h);
    }
    Ok(h.finish())
}

/// Walks `root` without following symlinks. Errors name the failing path.
pub fn try_snapshot(root: &Path) -> Result<Snapshot, String> {
    let mut s = Snapshot::default();
    walk(root, "", &mut s)?;
    Ok(s)
}

pub fn snapshot(root: &Path) -> Snapshot {
    try_snapshot(root).unwrap_or_else(|e| panic!("snapshot of {}: {e}", root.display()))
}

fn walk(root: &Path, rel: &str, s: &mut Snapshot) -> Result<(), String> {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let err = |what: &str, e: io::Error| format!("{what} {rel:?}: {e}");
    let md = fs::symlink_metadata(&p).map_err(|e| err("lstat", e))?;
    let kind = kind_of(md.file_type());
    let mut xattrs = BTreeMap::new();
    for name in list_xattrs(&p).map_err(|e| err("listxattr", e))? {
        let v = get_xattr(&p, &name).map_err(|e| err(&format!("getxattr {name}"), e))?;
        xattrs.insert(name, v);
    }
    let is_dir = kind == "dir";
    let mut entry = Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: (md.mtime(), md.mtime_nsec()),
        size: (!is_dir).then(|| md.size()),
        nlink: (!is_dir).then(|| md.nlink()),
        content_hash: None,
        link_target: None,
        xattrs,
        names: None,
    };
    match kind {
        "file" => entry.content_hash = Some(hash_file(&p).map_err(|e| err("read", e))?),
        "symlink" => entry.link_target = Some(fs::read_link(&p).map_err(|e| err("readlink", e))?),
        _ => {}
    }
    let mut children = Vec::new();
    if is_dir {
        let mut names = BTreeSet::new();
        for de in fs::read_dir(&p).map_err(|e| err("opendir", e))? {
            let de = de.map_err(|e| err("readdir", e))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let crel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            match fs::symlink_metadata(root.join(&crel)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => s.phantoms.push(crel),
                _ => {
                    if !names.insert(name.clone()) {
                        return Err(format!("readdir of {rel:?} listed {name:?} twice"));
                    }
                    children.push(crel);
                }
            }
        }
        for probe in PROBE_NAMES {
            if !names.contains(*probe) {
                let crel = if rel.is_empty() {
                    probe.to_string()
                } else {
                    format!("{rel}/{probe}")
                };
                if fs::symlink_metadata(root.join(&crel)).is_ok() {
                    s.ghosts.push(crel);
                }
            }
        }
        entry.names = Some(names);
    }
    s.entries.insert(rel.to_string(), entry);
    for c in children {
        walk(root, &c, s)?;
    }
    Ok(())
}

fn describe(e: &Entry) -> String {
    let mut s = format!("{} {:04o} {}:{}", e.kind, e.perm, e.uid, e.gid);
    if let Some(sz) = e.size {
        s.push_str(&format!(" size={sz}"));
    }
    if let Some(t) = &e.link_target {
        s.push_str(&format!(" -> {}", t.display()));
    }
    s
}

/// All differences between two snapshots, one readable line each.
pub fn diff_snapshots(a_label: &str, a: &Snapshot, b_label: &str, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let show = |p: &str| {
        if p.is_empty() {
            "/".to_string()
        } else {
            format!("/{p}")
        }
    };
    for (p, ea) in &a.entries {
        let Some(eb) = b.entries.get(p) else {
            out.push(format!("{}: only in {a_label} ({})", show(p), describe(ea)));
            continue;
        };
        if ea == eb {
            continue;
        }
        let mut d = Vec::new();
        macro_rules! field {
            ($f:ident, $fmt:expr) => {
                if ea.$f != eb.$f {
                    d.push(format!(
                        "{} {a_label}={} {b_label}={}",
                        stringify!($f),
                        $fmt(&ea.$f),
                        $fmt(&eb.$f)
                    ));
                }
            };
        }
        field!(kind, |v: &&str| v.to_string());
        field!(perm, |v: &u32| format!("{v:04o}"));
        field!(uid, |v: &u32| v.to_string());
        field!(gid, |v: &u32| v.to_string());
        field!(mtime, |v: &(i64, i64)| format!("{}.{:09}", v.0, v.1));
        field!(size, |v: &Option<u64>| format!("{v:?}"));
        field!(nlink, |v: &Option<u64>| format!("{v:?}"));
        field!(content_hash, |v: &Option<u64>| format!("{v:x?}"));
        field!(link_target, |v: &Option<PathBuf>| format!("{v:?}"));
        if ea.xattrs != eb.xattrs {
            let fmt = |m: &BTreeMap<String, Vec<u8>>| {
                m.iter()
                    .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            d.push(format!(
                "xattrs {a_label}={{{}}} {b_label}={{{}}}",
                fmt(&ea.xattrs),
                fmt(&eb.xattrs)
            ));
        }
        if ea.names != eb.names {
            let (na, nb) = (
                ea.names.clone().unwrap_or_default(),
                eb.names.clone().unwrap_or_default(),
            );
            let only_a: Vec<_> = na.difference(&nb).collect();
            let only_b: Vec<_> = nb.difference(&na).collect();
            d.push(format!(
                "names only in {a_label}: {only_a:?}, only in {b_label}: {only_b:?}"
            ));
        }
        out.push(format!("{}: {}", show(p), d.join("; ")));
    }
    for (p, eb) in &b.entries {
        if !a.entries.contains_key(p) {
            out.push(format!("{}: only in {b_label} ({})", show(p), describe(eb)));
        }
    }
    out
}

/// `Err` with the first few differences, readable.
pub fn compare(a_label: &str, a: &Snapshot, b_label: &str, b: &Snapshot) -> Result<(), String> {
    let d = diff_snapshots(a_label, a, b_label, b);
    if d.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{} difference(s) between {a_label} and {b_label}:\n",
        d.len()
    );
    for line in d.iter().take(8) {
        msg.push_str("  ");
        msg.push_str(line);
        msg.push('\n');
    }
    if d.len() > 8 {
        msg.push_str(&format!("  ... and {} more\n", d.len() - 8));
    }
    Err(msg)
}

/// Panics with a readable diff when the snapshots differ.
pub fn assert_same_tree(a_label: &str, a: &Snapshot, b_label: &str, b: &Snapshot, context: &str) {
    if let Err(msg) = compare(a_label, a, b_label, b) {
        panic!("{context}: {msg}");
    }
}

/// Names listed by `read_dir` (no `.`/`..`), sorted.
pub fn list_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A `CStr` view helper for libc dirent names.
pub fn cstr_to_string(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Running several cases and reporting every failure
// ---------------------------------------------------------------------------------------------

pub fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Runs `f`, turning a panic into `Err(message)` so that a test can go on with its other cases
/// and report all failures at once. Guards inside `f` are dropped (and unmount) on the way.
pub fn catch<F: FnOnce()>(label: &str, f: F) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|e| format!("[{label}] {}", panic_message(e.as_ref())))
}

/// Panics listing every failure, if any.
pub fn assert_no_failures(what: &str, total: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
