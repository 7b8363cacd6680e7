//! A mount ends only its own life: an external unmount leaves the mounts below alone, signals
//! unmount cleanly, and a mount never starts on (or sweeps) another live mount's layers.
//!
//! Each test is a regression for one way the daemon used to hurt something that was not its own:
//! fuser unmounting MERGED by path after the kernel had already ended the session; a signal
//! killing the daemon and leaving a dead mount; a second mount emptying `UPPER/work` of the first.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use common::*;

/// How long a daemon may take to exit once its mount is gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// `lowerdir=L,upperdir=U,workdir=W` with absolute paths.
fn opts(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// A fresh set of layers under `base/name`: `l` (with the file `NAME`), `u`, `w`, and `m`.
struct Layers {
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

impl Layers {
    fn new(base: &Path, name: &str) -> Layers {
        let d = base.join(name);
        let layers = Layers {
            l: mkdirs(&d.join("l")),
            u: mkdirs(&d.join("u")),
            w: mkdirs(&d.join("w")),
            m: mkdirs(&d.join("m")),
        };
        fs::write(layers.l.join(name), name).unwrap();
        layers
    }
    fn opts(&self) -> String {
        opts(&self.l, &self.u, &self.w)
    }
}

fn foreground(layers: &Layers, stderr: &Path) -> UfsMount {
    let args: Vec<OsString> = vec![
        "-f".into(),
        "-o".into(),
        layers.opts().into(),
        layers.m.clone().into(),
    ];
    UfsMount::spawn_foreground(&args, &layers.m, stderr)
}

/// Waits (bounded) for a foreground daemon to exit and returns its status.
fn exit_status(m: &mut UfsMount) -> ExitStatus {
    assert!(
        m.wait_daemon_exit(EXIT_TIMEOUT),
        "daemon still running {EXIT_TIMEOUT:?} after its mount ended:\n{}",
        m.stderr_text()
    );
    m.child.as_mut().unwrap().wait().unwrap()
}

fn assert_exited_zero(status: ExitStatus, what: &str, m: &UfsMount) {
    assert!(
        status.code() == Some(0),
        "{what}: the daemon must exit 0, got {status} (signal {:?}):\n{}",
        status.signal(),
        m.stderr_text()
    );
}

fn send_signal(pid: u32, signal: &str) {
    let run = run_bounded(
        Command::new("kill").args(["-s", signal, &pid.to_string()]),
        CMD_TIMEOUT,
    );
    assert!(run.success(), "kill -s {signal} {pid}:\n{run}");
}

fn umount(p: &Path) {
    let run = run_bounded(Command::new("umount").arg(p), CMD_TIMEOUT);
    assert!(run.success(), "umount {}:\n{run}", p.display());
}

/// Every path under `root` with its kind and size, never following a symlink.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(format!("{rel} ({} bytes)", meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// 6. An external unmount: the daemon just exits
// ---------------------------------------------------------------------------------------------

/// Regression: after `umount MERGED`, the exiting daemon unmounted MERGED again, taking with it
/// whatever was mounted there below (one `umount` removed two stacked ufs mounts, or a tmpfs).
#[test]
fn external_umount_leaves_the_mount_below_alone() {
    if skip("external_umount_leaves_the_mount_below_alone") {
        return;
    }
    let t = tempdir();
    let mut failures = Vec::new();
    for below in ["ufs", "tmpfs"] {
        let r = catch(below, || {
            let top = Layers::new(t.path(), &format!("top-over-{below}"));
            let m = &top.m;
            // The mount below, with a file that tells it apart.
            let (_ufs_below, _tmpfs_below);
            let marker = match below {
                "ufs" => {
                    let under = Layers::new(t.path(), "below");
                    _ufs_below = UfsMount::mount(&opts(&under.l, &under.u, &under.w), m);
                    "below"
                }
                _ => {
                    _tmpfs_below = TmpfsMount::mount(m, 4);
                    fs::write(m.join("tmpfs-marker"), "x").unwrap();
                    "tmpfs-marker"
                }
            };
            let mut daemon = foreground(&top, &t.path().join(format!("err-{below}")));
            // `spawn_foreground` saw the mount below already; wait for the one on top.
            let stacked = || mounts().iter().filter(|e| e.mount_point == *m).count();
            assert!(
                wait_until(MOUNT_TIMEOUT, || stacked() == 2),
                "the top mount never appeared:\n{}",
                daemon.stderr_text()
            );
            assert_eq!(
                list_names(m),
                [format!("top-over-{below}")],
                "the top mount"
            );
            umount(m);
            let status = exit_status(&mut daemon);
            assert_exited_zero(status, "after an external umount", &daemon);
            let entry = mount_at(m).unwrap_or_else(|| {
                panic!("the {below} mount below was unmounted by the exiting daemon")
            });
            assert!(
                entry
                    .fstype
                    .starts_with(if below == "ufs" { "fuse" } else { "tmpfs" }),
                "the mount at {} is now {entry:?}",
                m.display()
            );
            assert_eq!(list_names(m), [marker], "the {below} mount below");
        });
        failures.extend(r.err());
    }
    assert_no_failures("mounts below an unmounted ufs", 2, &failures);
}

// ---------------------------------------------------------------------------------------------
// 7. Signals unmount cleanly
// ---------------------------------------------------------------------------------------------

/// Regression: SIGTERM, SIGINT and SIGHUP killed the daemon and left a dead mount ("Transport
/// endpoint is not connected"). They must unmount, keep what was written, and exit 0.
#[test]
fn signals_unmount_cleanly_and_exit_zero() {
    if skip("signals_unmount_cleanly_and_exit_zero") {
        return;
    }
    let t = tempdir();
    let mut failures = Vec::new();
    let cases = [
        ("TERM", true),
        ("INT", true),
        ("HUP", true),
        ("TERM", false),
    ];
    for (signal, in_foreground) in cases {
        let what = format!(
            "SIG{signal} ({})",
            if in_foreground { "-f" } else { "daemon" }
        );
        let r = catch(&what, || {
            let name = format!("{signal}-{in_foreground}");
            let layers = Layers::new(t.path(), &name);
            let mut m = if in_foreground {
                foreground(&layers, &t.path().join(format!("err-{name}")))
            } else {
                UfsMount::mount(&layers.opts(), &layers.m)
            };
            let pid = m.pid.expect("the daemon's pid");
            // A copy-up and a new file, both to be found in the upper afterwards.
            fs::write(layers.m.join(&name), "changed").unwrap();
            fs::write(layers.m.join("new"), "new").unwrap();
            send_signal(pid, signal);
            assert!(
                wait_unmounted(&layers.m),
                "{} is still mounted after SIG{signal}",
                layers.m.display()
            );
            fs::metadata(&layers.m).unwrap_or_else(|e| panic!("stat of the mount point: {e}"));
            if in_foreground {
                let status = exit_status(&mut m);
                assert_exited_zero(status, &what, &m);
            } else {
                assert!(
                    wait_until(EXIT_TIMEOUT, || !pid_alive(pid)),
                    "daemon {pid} still running after SIG{signal} unmounted it"
                );
            }
            assert_eq!(fs::read_to_string(layers.u.join(&name)).unwrap(), "changed");
            assert_eq!(fs::read_to_string(layers.u.join("new")).unwrap(), "new");
            assert_eq!(list_names(&layers.w.join("work")), Vec::<String>::new());
        });
        failures.extend(r.err());
    }
    assert_no_failures("signals", cases.len(), &failures);
}

/// A signal while a file is open in the mount detaches the mount at once, answers the file's
/// user until it lets go, and only then exits 0.
#[test]
fn signal_with_a_busy_mount_answers_its_users_then_exits() {
    if skip("signal_with_a_busy_mount_answers_its_users_then_exits") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path(), "busy");
    let mut m = foreground(&layers, &t.path().join("err"));
    let pid = m.pid.unwrap();
    let mut file = fs::File::open(layers.m.join("busy")).unwrap();
    send_signal(pid, "TERM");
    assert!(
        wait_unmounted(&layers.m),
        "the mount is still attached after SIGTERM"
    );
    let mut text = String::new();
    file.read_to_string(&mut text)
        .expect("a file open across the signal is still answered");
    assert_eq!(text, "busy");
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon exited while the detached mount was still in use"
    );
    drop(file);
    let status = exit_status(&mut m);
    assert_exited_zero(status, "after the last user let go", &m);
}

/// A signal to a daemon whose mount another mount covers leaves that mount alone.
#[test]
fn signal_leaves_a_mount_stacked_above_alone() {
    if skip("signal_leaves_a_mount_stacked_above_alone") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path(), "covered");
    let mut m = foreground(&layers, &t.path().join("err"));
    let pid = m.pid.unwrap();
    let tmpfs = TmpfsMount::mount(&layers.m, 4);
    fs::write(tmpfs.dir.join("marker"), "x").unwrap();
    send_signal(pid, "TERM");
    assert!(
        wait_until(MOUNT_TIMEOUT, || m
            .stderr_text()
            .contains("not this daemon's mount")),
        "the daemon must say it left the covering mount alone:\n{}",
        m.stderr_text()
    );
    assert_eq!(
        mount_at(&layers.m).map(|e| e.fstype),
        Some("tmpfs".to_string())
    );
    assert_eq!(list_names(&layers.m), ["marker"]);
    // A second signal ends the daemon even so.
    send_signal(pid, "TERM");
    let status = exit_status(&mut m);
    assert_exited_zero(status, "after a second signal", &m);
    assert_eq!(
        list_names(&layers.m),
        ["marker"],
        "the tmpfs after the exit"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Another live mount's layers
// ---------------------------------------------------------------------------------------------

/// Runs ufs with `options` and checks it is refused with exit status 1 and one line naming
/// `path` in the kernel's EBUSY words, with `untouched` exactly as before.
fn assert_busy(what: &str, options: &str, path: &Path, untouched: &[&Path], mnt: &Path) {
    let before: Vec<Vec<String>> = untouched.iter().map(|p| tree(p)).collect();
    let run = match UfsMount::try_args(&standard_mount_args(options, mnt), mnt, None) {
        Ok(g) => {
            drop(g);
            panic!("{what}: -o {options} mounted, but must be refused");
        }
        Err(run) => run,
    };
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{what}: exit status:\n{run}"
    );
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr:\n{run}");
    assert!(
        lines[0].contains(&format!("{path:?}")) && lines[0].contains("Device or resource busy"),
        "{what}: the line must name {path:?} and say busy:\n{run}"
    );
    for (dir, before) in untouched.iter().zip(before) {
        assert_eq!(tree(dir), before, "{what}: {} changed", dir.display());
    }
}

/// Regression: a second mount whose workdir was the first mount's upper emptied `UPPER/work`.
/// Every upper or workdir that is a layer of a live ufs mount is refused before anything is
/// created or removed.
#[test]
fn layers_of_a_live_ufs_mount_are_refused() {
    if skip("layers_of_a_live_ufs_mount_are_refused") {
        return;
    }
    let t = tempdir();
    let a = Layers::new(t.path(), "a");
    // The user's own files in the upper, at the name a workdir's scratch directory has.
    fs::create_dir(a.u.join("work")).unwrap();
    fs::write(a.u.join("work/keep"), "mine").unwrap();
    let _a = UfsMount::mount(&a.opts(), &a.m);
    let b = Layers::new(t.path(), "b");
    let cases: [(&str, String, &Path, Vec<&Path>); 4] = [
        (
            "workdir is its upper",
            opts(&b.l, &b.u, &a.u),
            &a.u,
            vec![&a.u, &b.u],
        ),
        (
            "the same upper, another workdir",
            opts(&b.l, &a.u, &b.w),
            &a.u,
            vec![&a.u, &b.w],
        ),
        (
            "upper is its workdir",
            opts(&b.l, &a.w, &b.w),
            &a.w,
            vec![&a.w, &b.w],
        ),
        (
            "upper is its lower",
            opts(&b.l, &a.l, &b.w),
            &a.l,
            vec![&a.l, &b.w],
        ),
    ];
    let mut failures = Vec::new();
    for (what, options, path, untouched) in &cases {
        failures.extend(catch(what, || assert_busy(what, options, path, untouched, &b.m)).err());
    }
    assert_no_failures("layers of a live ufs mount", cases.len(), &failures);
    assert_eq!(fs::read_to_string(a.u.join("work/keep")).unwrap(), "mine");
    assert_eq!(list_names(&a.m), ["a", "work"]);
}

/// The upper, work and lower directories of a live kernel overlay.
#[test]
fn layers_of_a_live_kernel_overlay_are_refused() {
    if skip("layers_of_a_live_kernel_overlay_are_refused") {
        return;
    }
    let t = tempdir();
    let k = Layers::new(t.path(), "k");
    let _k = KernelOverlay::mount(&k.opts(), &k.m, t.path());
    let b = Layers::new(t.path(), "b");
    let cases: [(&str, String, &Path, Vec<&Path>); 3] = [
        (
            "upper is its upper",
            opts(&b.l, &k.u, &b.w),
            &k.u,
            vec![&k.u, &b.w],
        ),
        (
            "workdir is its workdir",
            opts(&b.l, &b.u, &k.w),
            &k.w,
            vec![&b.u],
        ),
        (
            "upper is its lower",
            opts(&b.l, &k.l, &b.w),
            &k.l,
            vec![&k.l, &b.w],
        ),
    ];
    let mut failures = Vec::new();
    for (what, options, path, untouched) in &cases {
        failures.extend(catch(what, || assert_busy(what, options, path, untouched, &b.m)).err());
    }
    assert_no_failures("layers of a live kernel overlay", cases.len(), &failures);
}

/// The upper, work and lower directories of a live fuse-overlayfs mount, started with absolute
/// paths and with relative ones (which only its open directories reveal).
#[test]
fn layers_of_a_live_fuse_overlayfs_mount_are_refused() {
    if skip("layers_of_a_live_fuse_overlayfs_mount_are_refused") {
        return;
    }
    let Some(fuse_overlayfs) = which("fuse-overlayfs") else {
        say(
            "SKIP layers_of_a_live_fuse_overlayfs_mount_are_refused: no fuse-overlayfs in PATH \
             (apt-get install fuse-overlayfs)",
        );
        return;
    };
    let t = tempdir();
    let start = |layers: &Layers, options: &str, cwd: &Path| {
        let run = run_bounded(
            Command::new(&fuse_overlayfs)
                .args(["-o", options])
                .arg(&layers.m)
                .current_dir(cwd),
            CMD_TIMEOUT,
        );
        assert!(run.success(), "fuse-overlayfs -o {options}:\n{run}");
        assert!(wait_mounted(&layers.m), "fuse-overlayfs did not mount");
        FuseOverlayfs {
            mnt: layers.m.clone(),
        }
    };
    let f = Layers::new(t.path(), "f");
    let _f = start(&f, &f.opts(), t.path());
    let r = Layers::new(t.path(), "r");
    let _r = start(&r, "lowerdir=r/l,upperdir=r/u,workdir=r/w", t.path());
    let b = Layers::new(t.path(), "b");
    let cases: [(&str, String, &Path, Vec<&Path>); 5] = [
        (
            "upper is its upper",
            opts(&b.l, &f.u, &b.w),
            &f.u,
            vec![&f.u, &b.w],
        ),
        (
            "workdir is its workdir",
            opts(&b.l, &b.u, &f.w),
            &f.w,
            vec![&b.u],
        ),
        (
            "upper is its lower",
            opts(&b.l, &f.l, &b.w),
            &f.l,
            vec![&f.l, &b.w],
        ),
        (
            "upper is the upper of one started with relative paths",
            opts(&b.l, &r.u, &b.w),
            &r.u,
            vec![&r.u, &b.w],
        ),
        (
            "workdir is the workdir of one started with relative paths",
            opts(&b.l, &b.u, &r.w),
            &r.w,
            vec![&b.u],
        ),
    ];
    let mut failures = Vec::new();
    for (what, options, path, untouched) in &cases {
        failures.extend(catch(what, || assert_busy(what, options, path, untouched, &b.m)).err());
    }
    assert_no_failures(
        "layers of a live fuse-overlayfs mount",
        cases.len(),
        &failures,
    );
}

/// A fuse-overlayfs mount; `Drop` unmounts it (`fusermount3 -u`) on every way out of a test.
struct FuseOverlayfs {
    mnt: PathBuf,
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
    }
}

/// Regression: the sweep of `WORKDIR/work` at mount time removed everything in it. Only ufs's
/// own temporaries (`#ufs.PID.N`) go; anything else stays.
#[test]
fn the_sweep_removes_only_ufs_temporaries() {
    if skip("the_sweep_removes_only_ufs_temporaries") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path(), "s");
    let work = mkdirs(&layers.w.join("work"));
    fs::write(work.join("keep.txt"), "mine").unwrap();
    mkdirs(&work.join("dir/sub"));
    fs::write(work.join("#123"), "").unwrap();
    fs::write(work.join("#ufs.999999.1"), "half a copy").unwrap();
    mkdirs(&work.join("#ufs.999999.2/inner"));
    fs::write(work.join("#ufs.999999.2/inner/f"), "x").unwrap();
    let _m = UfsMount::mount(&layers.opts(), &layers.m);
    assert_eq!(list_names(&work), ["#123", "dir", "keep.txt"]);
    assert_eq!(fs::read_to_string(work.join("keep.txt")).unwrap(), "mine");
    assert!(work.join("dir/sub").is_dir());
}

/// Unmounts the filesystem at `p` once, returning whether it went (a busy one stays).
fn try_umount(p: &Path) -> bool {
    run_bounded(Command::new("umount").arg(p), CMD_TIMEOUT).success()
}

/// Regression (unionmount-testsuite failed at random with `umount /lower: target is busy`):
/// the daemon's fds pinned the mounts that hold the layers, so they could not be unmounted
/// until it had exited, which a FUSE unmount does not wait for. Like the kernel overlay, which
/// clones its layers' mounts, ufs now works on private clones: the filesystems holding the
/// layers unmount at once, even while the union is still mounted, and the union goes on
/// working.
#[test]
fn the_mounts_holding_the_layers_stay_unmountable() {
    if skip("the_mounts_holding_the_layers_stay_unmountable") {
        return;
    }
    let t = tempdir();
    let mut results = Vec::new();
    for side in ["kernel", "ufs"] {
        let base = mkdirs(&t.path().join(side));
        let fs_a = TmpfsMount::mount(&base.join("a"), 16);
        let fs_b = TmpfsMount::mount(&base.join("b"), 16);
        let l1 = mkdirs(&fs_a.dir.join("l1"));
        let l2 = mkdirs(&fs_b.dir.join("l2"));
        let up = mkdirs(&fs_b.dir.join("up"));
        let wk = mkdirs(&fs_b.dir.join("wk"));
        fs::write(l1.join("f"), "from l1\n").expect("write");
        fs::write(l2.join("g"), "from l2\n").expect("write");
        let m = mkdirs(&base.join("m"));
        let options = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            l1.display(),
            l2.display(),
            up.display(),
            wk.display()
        );
        let (a_gone, b_gone, after) = {
            let _k;
            let _u;
            if side == "kernel" {
                _k = KernelOverlay::mount(&options, &m, &base);
            } else {
                _u = UfsMount::mount(&options, &m);
            }
            let a_gone = try_umount(&fs_a.dir);
            let b_gone = try_umount(&fs_b.dir);
            let mut after = fs::read_to_string(m.join("f")).unwrap_or_else(|e| e.to_string());
            fs::write(m.join("new"), "new\n").expect("write through the union");
            after.push_str(&fs::read_to_string(m.join("g")).unwrap_or_else(|e| e.to_string()));
            after.push_str(&fs::read_to_string(m.join("new")).unwrap_or_else(|e| e.to_string()));
            (a_gone, b_gone, after)
        };
        // The guards unmount what is left (they look at mountinfo first).
        drop((fs_a, fs_b));
        results.push((side, a_gone, b_gone, after));
    }
    let (_, ka, kb, ref kafter) = results[0];
    if !(ka && kb) {
        say(&format!(
            "SKIP the_mounts_holding_the_layers_stay_unmountable: the kernel overlay keeps them \
             busy here too: {:?}",
            results[0]
        ));
        return;
    }
    let (_, ua, ub, ref uafter) = results[1];
    assert!(
        ua && ub,
        "ufs kept the layers' mounts busy: {:?}",
        results[1]
    );
    assert_eq!(uafter, kafter, "the union after its layers' mounts went");
}

/// Regression: ufs run under the name `fuse-overlayfs` (as docker's `fuse-overlayfs` storage
/// driver runs the program of that name from its `PATH`, from its layer store directory) took
/// its own process for a fuse-overlayfs mount of the same directories and refused every mount
/// as "in use ... Device or resource busy". Mounted, unmounted with `fusermount3 -u` and mounted
/// again at once (docker mounts a container's layers again for each `start`, `diff`, `commit`),
/// with absolute paths and with relative ones.
#[test]
fn ufs_named_fuse_overlayfs_mounts_and_mounts_again() {
    const TEST: &str = "ufs_named_fuse_overlayfs_mounts_and_mounts_again";
    if skip(TEST) || is_stand_in() {
        return;
    }
    let t = tempdir();
    let bin = mkdirs(&t.path().join("bin"));
    let named = bin.join("fuse-overlayfs");
    std::os::unix::fs::symlink(ufs_bin(), &named).expect("symlink fuse-overlayfs -> ufs");
    let a = Layers::new(t.path(), "a");
    for (round, options) in [
        a.opts(),
        "lowerdir=a/l,upperdir=a/u,workdir=a/w".to_string(),
    ]
    .iter()
    .cycle()
    .take(6)
    .enumerate()
    {
        let run = run_bounded(
            Command::new(&named)
                .args(["-o", options])
                .arg(&a.m)
                .current_dir(t.path()),
            CMD_TIMEOUT,
        );
        assert!(
            run.success(),
            "round {round}: fuse-overlayfs (ufs) -o {options}:\n{run}"
        );
        let mounted = FuseOverlayfs { mnt: a.m.clone() };
        let entry = mount_at(&a.m).expect("mounted");
        assert_eq!(
            entry.fstype, "fuse.ufs",
            "round {round}: the mount is ufs's"
        );
        let mut want = vec!["a".to_string()];
        want.extend((0..round).map(|r| format!("w{r}")));
        assert_eq!(list_names(&a.m), want, "round {round}: the merged view");
        fs::write(a.m.join(format!("w{round}")), "x").expect("write through the mount");
        let run = run_bounded(Command::new("fusermount3").arg("-u").arg(&a.m), CMD_TIMEOUT);
        assert!(run.success(), "round {round}: fusermount3 -u:\n{run}");
        assert!(wait_unmounted(&a.m), "round {round}: still mounted");
        drop(mounted);
    }
    assert_eq!(list_names(&a.u).len(), 6, "every round wrote its file");
}
