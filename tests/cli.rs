//! The command line: invocation forms, foreground and debug modes, every way to unmount,
//! option errors that must name the path, warnings for unknown options.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// How long the daemon may take to exit after its mount is gone ("about a second").
const EXIT_TIMEOUT: Duration = Duration::from_secs(3);

/// A small example stack: lowers `l1` (a, b/, c) over `l2` (c, d), upper `up` (e).
struct Example {
    t: tempfile::TempDir,
    l1: PathBuf,
    l2: PathBuf,
    up: PathBuf,
    wk: PathBuf,
}

const EXPECT: [&str; 5] = ["a", "b", "c", "d", "e"];

impl Example {
    fn new() -> Example {
        let t = tempdir();
        let b = t.path();
        let (l1, l2, up, wk) = (
            mkdirs(&b.join("l1")),
            mkdirs(&b.join("l2")),
            mkdirs(&b.join("up")),
            mkdirs(&b.join("wk")),
        );
        fs::write(l1.join("a"), "a").unwrap();
        mkdirs(&l1.join("b"));
        fs::write(l1.join("c"), "c from l1").unwrap();
        fs::write(l2.join("c"), "c from l2").unwrap();
        fs::write(l2.join("d"), "d").unwrap();
        fs::write(up.join("e"), "e").unwrap();
        Example { t, l1, l2, up, wk }
    }
    fn base(&self) -> &Path {
        self.t.path()
    }
    fn opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.l1.display(),
            self.l2.display(),
            self.up.display(),
            self.wk.display()
        )
    }
    fn mnt(&self, name: &str) -> PathBuf {
        mkdirs(&self.base().join(name))
    }
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn assert_shows_example(mnt: &Path, what: &str) {
    assert_eq!(list_names(mnt), EXPECT, "{what}: listing of the merged dir");
    assert_eq!(
        fs::read(mnt.join("c")).unwrap(),
        b"c from l1",
        "{what}: c comes from the top lower"
    );
}

#[test]
fn every_invocation_form_mounts_and_lists() {
    if skip("every_invocation_form_mounts_and_lists") {
        return;
    }
    let ex = Example::new();
    let opts = ex.opts();
    for (i, form) in ["mount -o OPTS MNT", "-o OPTS MNT", "SOURCE MNT -o OPTS"]
        .iter()
        .enumerate()
    {
        let mnt = ex.mnt(&format!("m{i}"));
        let m = mnt.to_str().unwrap();
        let args = match i {
            0 => os(&["mount", "-o", &opts, m]),
            1 => os(&["-o", &opts, m]),
            _ => os(&["overlay", m, "-o", &opts]),
        };
        let guard = UfsMount::try_args(&args, &mnt, None)
            .unwrap_or_else(|run| panic!("form `ufs {form}` failed:\n{run}"));
        assert!(
            guard.live_on_return,
            "form `ufs {form}` returned before the mount was live"
        );
        let fstype = mount_at(&mnt).map(|e| e.fstype).unwrap_or_default();
        if is_stand_in() {
            assert!(
                fstype.starts_with("fuse"),
                "form `ufs {form}`: mount type {fstype:?} is not FUSE"
            );
        } else {
            // The type `mount -t fuse.ufs` names, so that findmnt/umount -t find the mount.
            assert_eq!(fstype, "fuse.ufs", "form `ufs {form}`: mount type");
        }
        assert_shows_example(&mnt, form);
    }
}

#[test]
fn foreground_stays_until_unmounted() {
    if skip("foreground_stays_until_unmounted") {
        return;
    }
    let ex = Example::new();
    let mnt = ex.mnt("m");
    let args = os(&["-f", "-o", &ex.opts(), mnt.to_str().unwrap()]);
    let mut m = UfsMount::spawn_foreground(&args, &mnt, &ex.base().join("stderr"));
    assert_shows_example(&mnt, "-f");
    let child = m.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "-f must keep the process running while mounted"
    );
    m.unmount();
    assert!(
        m.wait_daemon_exit(EXIT_TIMEOUT),
        "-f process still running {EXIT_TIMEOUT:?} after unmount"
    );
    let status = m.child.as_mut().unwrap().wait().unwrap();
    assert!(
        status.success(),
        "-f process exited with {status} after a clean unmount:\n{}",
        m.stderr_text()
    );
}

fn unmount_with(method: &str, mnt: &Path) {
    let command = || {
        let mut cmd = match method {
            "ufs umount" => {
                let mut c = ufs_cmd();
                c.arg("umount");
                c
            }
            "umount" => Command::new("umount"),
            _ => {
                let mut c = Command::new("fusermount3");
                c.arg("-u");
                c
            }
        };
        cmd.arg(mnt);
        cmd
    };
    // A process another test thread is starting holds copies of this process's open files
    // until it execs, which can make the mount busy for that moment: try again, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let run = run_bounded(&mut command(), CMD_TIMEOUT);
        if run.success() {
            return;
        }
        let busy = run.stderr.contains("busy");
        assert!(
            busy && Instant::now() < deadline,
            "`{method} {}` failed:\n{run}",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_unmount_method_ends_the_daemon() {
    if skip("every_unmount_method_ends_the_daemon") {
        return;
    }
    let ex = Example::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for (i, method) in ["ufs umount", "umount", "fusermount3 -u"]
        .iter()
        .enumerate()
    {
        for foreground in [false, true] {
            total += 1;
            let what = format!("{method} ({})", if foreground { "-f" } else { "daemon" });
            let r = catch(&what, || {
                let mnt = ex.mnt(&format!("m{i}{}", if foreground { "f" } else { "d" }));
                let m = mnt.to_str().unwrap();
                let mut g = if foreground {
                    let err = ex.base().join(format!("err{i}"));
                    UfsMount::spawn_foreground(&os(&["-f", "-o", &ex.opts(), m]), &mnt, &err)
                } else {
                    UfsMount::mount(&ex.opts(), &mnt)
                };
                let pid = g
                    .pid
                    .unwrap_or_else(|| panic!("no process has {m} in its command line"));
                assert!(pid_alive(pid), "daemon {pid} not running while mounted");
                assert_shows_example(&mnt, &what);
                unmount_with(method, &mnt);
                assert!(wait_unmounted(&mnt), "still mounted");
                assert!(
                    g.wait_daemon_exit(EXIT_TIMEOUT),
                    "daemon {pid} still running {EXIT_TIMEOUT:?} after unmount"
                );
                let rest: Vec<u32> = pids_with_arg(&mnt)
                    .into_iter()
                    .filter(|p| pid_alive(*p))
                    .collect();
                assert!(rest.is_empty(), "processes for {m} still running: {rest:?}");
            });
            failures.extend(r.err());
        }
    }
    assert_no_failures("unmount methods", total, &failures);
}

#[test]
fn version_and_help_succeed() {
    let run = run_bounded(ufs_cmd().arg("--version"), CMD_TIMEOUT);
    assert!(run.success(), "ufs --version:\n{run}");
    assert!(
        run.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version:\n{run}"
    );
    let run = run_bounded(ufs_cmd().arg("--help"), CMD_TIMEOUT);
    assert!(run.success(), "ufs --help:\n{run}");
    assert!(
        run.stdout.to_lowercase().contains("usage"),
        "--help prints usage:\n{run}"
    );
    assert!(
        run.stdout.contains("mount"),
        "--help mentions mount:\n{run}"
    );
}

/// Runs the standard mount form and checks that it fails with one stderr line containing one of
/// `needles`, and that nothing got mounted.
fn assert_refused(what: &str, opts: &str, mnt: &Path, needles: &[&Path]) {
    let r = UfsMount::try_args(&standard_mount_args(opts, mnt), mnt, None);
    let run = match r {
        Ok(g) => {
            drop(g);
            panic!("{what}: mount -o {opts} succeeded but must be refused");
        }
        Err(run) => run,
    };
    assert!(
        run.status.is_some(),
        "{what}: command did not return:\n{run}"
    );
    assert!(!is_mounted(mnt), "{what}: failed but left a mount");
    let lines = run.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected exactly one line on stderr:\n{run}"
    );
    assert!(
        needles
            .iter()
            .any(|n| lines[0].contains(n.to_str().unwrap())),
        "{what}: the error line must name {needles:?}:\n{run}"
    );
}

#[test]
fn option_errors_exit_nonzero_naming_the_path() {
    if skip("option_errors_exit_nonzero_naming_the_path") {
        return;
    }
    let ex = Example::new();
    let b = ex.base().to_path_buf();
    let mnt = ex.mnt("m");
    let file = b.join("plainfile");
    fs::write(&file, "x").unwrap();
    let nope = b.join("nope");
    let tmpfs = TmpfsMount::mount(&b.join("tfs"), 8);
    let tup = mkdirs(&tmpfs.dir.join("up"));
    let up_in_wk = mkdirs(&b.join("wk2/up"));
    let wk2 = b.join("wk2");
    let wk_in_up = mkdirs(&b.join("up3/wk"));
    let up3 = b.join("up3");
    let l1_sub = mkdirs(&ex.l1.join("sub"));
    let wk4 = mkdirs(&b.join("wk4"));
    let (l1, l2, up, wk) = (&ex.l1, &ex.l2, &ex.up, &ex.wk);
    let d = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, String, Vec<&Path>)> = vec![
        (
            "missing lowerdir",
            format!("lowerdir={}:{}", d(l1), d(&nope)),
            vec![&nope],
        ),
        (
            "lowerdir is a file",
            format!("lowerdir={}", d(&file)),
            vec![&file],
        ),
        (
            "missing upperdir",
            format!("lowerdir={},upperdir={},workdir={}", d(l1), d(&nope), d(wk)),
            vec![&nope],
        ),
        (
            "missing workdir",
            format!("lowerdir={},upperdir={},workdir={}", d(l1), d(up), d(&nope)),
            vec![&nope],
        ),
        (
            "upperdir is a file",
            format!("lowerdir={},upperdir={},workdir={}", d(l1), d(&file), d(wk)),
            vec![&file],
        ),
        (
            "upper and work on different filesystems",
            format!("lowerdir={},upperdir={},workdir={}", d(l1), d(&tup), d(wk)),
            vec![&tup, wk],
        ),
        (
            "work inside upper",
            format!(
                "lowerdir={},upperdir={},workdir={}",
                d(l1),
                d(&up3),
                d(&wk_in_up)
            ),
            vec![&up3, &wk_in_up],
        ),
        (
            "upper inside work",
            format!(
                "lowerdir={},upperdir={},workdir={}",
                d(l1),
                d(&up_in_wk),
                d(&wk2)
            ),
            vec![&up_in_wk, &wk2],
        ),
        (
            "upper equal to a lower",
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                d(l1),
                d(l2),
                d(l2),
                d(&wk4)
            ),
            vec![l2],
        ),
        (
            "upper inside a lower",
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                d(l1),
                d(l2),
                d(&l1_sub),
                d(&wk4)
            ),
            vec![&l1_sub, l1],
        ),
    ];
    let mut failures = Vec::new();
    for (what, opts, needles) in &cases {
        failures.extend(catch(what, || assert_refused(what, opts, &mnt, needles)).err());
    }
    // A missing mount point is a missing directory too.
    let nomnt = b.join("nomnt");
    failures.extend(
        catch("missing mount point", || {
            assert_refused("missing mount point", &ex.opts(), &nomnt, &[&nomnt])
        })
        .err(),
    );
    assert_no_failures("option errors", cases.len() + 1, &failures);
}

#[test]
fn option_errors_without_a_path_exit_nonzero() {
    if skip("option_errors_without_a_path_exit_nonzero") {
        return;
    }
    let ex = Example::new();
    let mnt = ex.mnt("m");
    let d = |p: &Path| p.display().to_string();
    for (what, opts, needle) in [
        (
            "no lowerdir",
            format!("upperdir={},workdir={}", d(&ex.up), d(&ex.wk)),
            "lowerdir",
        ),
        (
            "upperdir without workdir",
            format!("lowerdir={},upperdir={}", d(&ex.l1), d(&ex.up)),
            "workdir",
        ),
        (
            "workdir without upperdir",
            format!("lowerdir={},workdir={}", d(&ex.l1), d(&ex.wk)),
            "upperdir",
        ),
    ] {
        let run = match UfsMount::try_args(&standard_mount_args(&opts, &mnt), &mnt, None) {
            Ok(g) => {
                drop(g);
                panic!("{what}: mount -o {opts} succeeded but must be refused");
            }
            Err(run) => run,
        };
        assert!(run.status.is_some() && !is_mounted(&mnt), "{what}:\n{run}");
        let lines = run.stderr_lines();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected one line on stderr:\n{run}"
        );
        assert!(
            lines[0].contains(needle),
            "{what}: the error must mention {needle}:\n{run}"
        );
    }
}

#[test]
fn same_workdir_twice_is_refused() {
    if skip("same_workdir_twice_is_refused") {
        return;
    }
    let ex = Example::new();
    let m1 = ex.mnt("m1");
    let m2 = ex.mnt("m2");
    let _first = UfsMount::mount(&ex.opts(), &m1);
    assert_refused("workdir already in use", &ex.opts(), &m2, &[&ex.wk, &ex.up]);
    assert_shows_example(&m1, "first mount after the refused second one");
}

#[test]
fn unknown_options_warn_and_mount() {
    if skip("unknown_options_warn_and_mount") {
        return;
    }
    let ex = Example::new();
    let mnt = ex.mnt("m1");
    let g = UfsMount::try_args(
        &standard_mount_args(&format!("{},nfs_export=on", ex.opts()), &mnt),
        &mnt,
        None,
    )
    .unwrap_or_else(|run| panic!("nfs_export=on must only warn:\n{run}"));
    assert_shows_example(&mnt, "nfs_export=on");
    let stderr = &g.launch.as_ref().unwrap().stderr;
    assert!(
        stderr.contains("nfs_export"),
        "a warning naming nfs_export=on is expected on stderr, got {stderr:?}"
    );
    drop(g);

    // SELinux labels come quoted, with colons and commas; they are consumed silently.
    let mnt = ex.mnt("m2");
    let opts = format!(
        "{},context=\"system_u:object_r:container_file_t:s0:c1022,c1023\"",
        ex.opts()
    );
    let g = UfsMount::try_args(&standard_mount_args(&opts, &mnt), &mnt, None)
        .unwrap_or_else(|run| panic!("context= must be accepted:\n{run}"));
    assert_shows_example(&mnt, "context=");
    let stderr = &g.launch.as_ref().unwrap().stderr;
    assert!(
        !stderr.contains("context") && !stderr.contains("c1023"),
        "context= must be accepted silently, stderr: {stderr:?}"
    );
    drop(g);

    // Options container tools and fuse-overlayfs users pass: none may make the mount fail.
    let mnt = ex.mnt("m3");
    let opts = format!(
        "{},nodev,nosuid,noatime,volatile,xino=off,redirect_dir=off,fsync=0,static_nlink,noacl,timeout=1,threaded=2,writeback=0",
        ex.opts()
    );
    let _g = UfsMount::try_args(&standard_mount_args(&opts, &mnt), &mnt, None)
        .unwrap_or_else(|run| panic!("container options must be accepted:\n{run}"));
    assert_shows_example(&mnt, "container options");
}

#[test]
fn debug_flag_logs_requests_and_stays_in_foreground() {
    if skip("debug_flag_logs_requests_and_stays_in_foreground") {
        return;
    }
    let ex = Example::new();
    let mnt = ex.mnt("m");
    let args = os(&["-d", "-o", &ex.opts(), mnt.to_str().unwrap()]);
    let mut m = UfsMount::spawn_foreground(&args, &mnt, &ex.base().join("stderr"));
    assert_shows_example(&mnt, "-d");
    fs::symlink_metadata(mnt.join("a")).unwrap();
    // A negative lookup always reaches the daemon (READDIRPLUS may have answered the one above).
    assert!(fs::symlink_metadata(mnt.join("no-such-name")).is_err());
    assert!(
        m.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "-d must stay in the foreground"
    );
    let logged = wait_until(MOUNT_TIMEOUT, || {
        m.stderr_text().to_lowercase().contains("lookup")
    });
    assert!(
        logged,
        "-d must log requests (a line with `lookup`); stderr:\n{}",
        m.stderr_text()
    );
    m.unmount();
    assert!(
        m.wait_daemon_exit(EXIT_TIMEOUT),
        "-d process still running after unmount"
    );
}

#[test]
fn relative_paths_and_escaped_separators() {
    if skip("relative_paths_and_escaped_separators") {
        return;
    }
    let ex = Example::new();
    let b = ex.base();
    let comma = mkdirs(&b.join("with,comma"));
    let colon = mkdirs(&b.join("with:colon"));
    fs::write(comma.join("from_comma"), "1").unwrap();
    fs::write(colon.join("from_colon"), "2").unwrap();
    let mnt = ex.mnt("m");
    // Relative lowerdir (resolved against the working directory), `\,` and `\:` escapes.
    let opts = format!("lowerdir=l1:{}:{}", r"with\,comma", r"with\:colon");
    let _g = UfsMount::try_args(&standard_mount_args(&opts, &mnt), &mnt, Some(b))
        .unwrap_or_else(|run| panic!("-o {opts} in {}:\n{run}", b.display()));
    assert_eq!(
        list_names(&mnt),
        ["a", "b", "c", "from_colon", "from_comma"]
    );
}

/// The per-mount flags and the super options of the mount at `mnt`, from mountinfo.
fn mount_options_at(mnt: &Path) -> Option<(Vec<String>, Vec<String>)> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_str()?;
    // The last line for a mount point is the top-most mount there.
    text.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        if fields.get(4) != Some(&want) {
            return None;
        }
        let split = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        Some((split(fields.get(5)?), split(right.split(' ').nth(2)?)))
    })
}

/// A setuid-root copy of `id` in the top lower, as `sub/id`.
fn setuid_id(ex: &Example) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let id = which("id")?;
    mkdirs(&ex.l1.join("sub"));
    let copy = ex.l1.join("sub/id");
    fs::copy(&id, &copy).ok()?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).ok()?;
    Some(copy)
}

/// `id -u` (the effective uid) of `prog` run as uid/gid 65534, or the failure.
fn effective_uid_as_nobody(prog: &Path) -> Result<String, String> {
    let run = run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(prog)
            .arg("-u"),
        CMD_TIMEOUT,
    );
    if run.success() {
        Ok(run.stdout.trim().to_string())
    } else {
        Err(run.to_string())
    }
}

/// Regression: as root ufs mounted `nosuid,nodev` without `allow_other` whatever `-o` said, so
/// containers running as another user could not use the mount (`podman run --user 1000`: "sh:
/// executable file not found") and setuid programs in images ran without their owner's uid.
/// fuse-overlayfs, run as uid 0, mounts `default_permissions,allow_other,suid` (and libfuse's
/// `nodev`), and applies `dev`, `nodev`, `suid`, `nosuid`, `exec`, `noexec`, `ro`, `rw`.
#[test]
fn root_mounts_with_fuse_overlayfs_defaults_and_the_flags_given() {
    if skip("root_mounts_with_fuse_overlayfs_defaults_and_the_flags_given") {
        return;
    }
    if which("setpriv").is_none() {
        say("SKIP root_mounts_with_fuse_overlayfs_defaults_and_the_flags_given: no setpriv");
        return;
    }
    let ex = Example::new();
    let Some(_) = setuid_id(&ex) else {
        say("SKIP root_mounts_with_fuse_overlayfs_defaults_and_the_flags_given: no id(1)");
        return;
    };
    // (extra options, per-mount flags that must be there, flags that must not, euid of the
    // setuid program run by uid 65534)
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        ("", &["rw", "nodev"], &["nosuid", "noexec"], "0"),
        ("nosuid", &["nosuid", "nodev"], &[], "65534"),
        ("dev,noexec", &["noexec"], &["nodev", "nosuid"], ""),
        ("nosuid,suid,noexec,exec", &[], &["nosuid", "noexec"], "0"),
        ("ro", &["ro", "nodev"], &["nosuid"], "0"),
        ("ro,rw", &["rw"], &["ro"], "0"),
    ];
    for (i, (extra, present, absent, euid)) in cases.iter().enumerate() {
        let mnt = ex.mnt(&format!("m{i}"));
        let opts = if extra.is_empty() {
            ex.opts()
        } else {
            format!("{},{extra}", ex.opts())
        };
        let m = UfsMount::mount(&opts, &mnt);
        let (flags, supers) = mount_options_at(&mnt).expect("the mount is in mountinfo");
        for flag in *present {
            assert!(
                flags.iter().any(|f| f == flag),
                "-o {extra}: {flag} missing from {flags:?}"
            );
        }
        for flag in *absent {
            assert!(
                !flags.iter().any(|f| f == flag),
                "-o {extra}: {flag} in {flags:?}"
            );
        }
        for opt in ["default_permissions", "allow_other"] {
            assert!(
                supers.iter().any(|o| o == opt),
                "-o {extra}: {opt} missing from {supers:?}"
            );
        }
        // allow_other: another user can use the mount.
        let listed = run_bounded(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
                .arg(&mnt),
            CMD_TIMEOUT,
        );
        assert!(
            listed.success(),
            "-o {extra}: uid 65534 cannot list the mount:\n{listed}"
        );
        let got = effective_uid_as_nobody(&mnt.join("sub/id"));
        if euid.is_empty() {
            assert!(
                got.is_err(),
                "-o {extra}: noexec let the program run: {got:?}"
            );
        } else {
            assert_eq!(
                got.as_deref(),
                Ok(*euid),
                "-o {extra}: effective uid of a setuid program"
            );
        }
        drop(m);
    }
}

/// Runs `script` with `sh` in a private mount namespace (nothing it mounts is seen outside, and
/// every mount in it goes when its last process exits) in which `/dev/fuse` is a node of mode
/// `mode`, whatever the host's node allows. `None` when the tools for it are missing.
fn in_private_dev_fuse(ex: &Example, mode: &str, script: &str) -> Option<Run> {
    for tool in ["unshare", "setpriv", "mknod"] {
        which(tool)?;
    }
    let node = ex.base().join("fuse-node");
    let full = format!(
        "set -e\nmknod -m {mode} {node} c 10 229\nmount --bind {node} /dev/fuse\n{script}",
        node = node.display()
    );
    Some(run_bounded(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(full),
        CMD_TIMEOUT,
    ))
}

/// A read-only union of `l1` that uid 65534 may mount on `m65534`.
fn nobody_mount_setup(ex: &Example) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let mnt = ex.mnt("m65534");
    std::os::unix::fs::chown(&mnt, Some(65534), Some(65534)).expect("chown");
    for dir in [ex.base(), &ex.l1] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    (mnt, format!("lowerdir={}", ex.l1.display()))
}

/// Regression: when `/dev/fuse` could not be opened the message was `mounting on "MERGED":
/// Permission denied`, which does not say what was denied.
#[test]
fn dev_fuse_that_cannot_be_opened_is_named_in_one_line() {
    if skip("dev_fuse_that_cannot_be_opened_is_named_in_one_line") {
        return;
    }
    let ex = Example::new();
    let (mnt, opts) = nobody_mount_setup(&ex);
    let script = format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups {} -o {opts} {}",
        ufs_bin().display(),
        mnt.display()
    );
    let Some(run) = in_private_dev_fuse(&ex, "600", &script) else {
        say("SKIP dev_fuse_that_cannot_be_opened_is_named_in_one_line: no unshare/setpriv/mknod");
        return;
    };
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "one line:\n{run}");
    assert!(
        lines[0].contains("/dev/fuse: Permission denied"),
        "the line names /dev/fuse and the cause:\n{run}"
    );
}

/// A user other than root mounts through the setuid `fusermount3` (Debian's opens `/dev/fuse`
/// with the user's own rights, hence the 0666 node), gets what it allows (`nosuid,nodev`, no
/// `allow_other`), and unmounts with `ufs umount`.
#[test]
fn non_root_mounts_through_fusermount3() {
    if skip("non_root_mounts_through_fusermount3") {
        return;
    }
    let ex = Example::new();
    let (mnt, opts) = nobody_mount_setup(&ex);
    let (ufs, m) = (ufs_bin(), mnt.display());
    let script = format!(
        "trap 'umount -l {m} 2>/dev/null || true' EXIT
as_nobody() {{ setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"; }}
as_nobody {ufs} -o {opts} {m}
grep ' {m} ' /proc/self/mountinfo
as_nobody cat {m}/a
echo
as_nobody {ufs} umount {m}
if grep ' {m} ' /proc/self/mountinfo; then echo still mounted; fi",
        ufs = ufs.display()
    );
    let Some(run) = in_private_dev_fuse(&ex, "666", &script) else {
        say("SKIP non_root_mounts_through_fusermount3: no unshare/setpriv/mknod");
        return;
    };
    assert!(run.success(), "{run}");
    let mut lines = run.stdout.lines();
    let info = lines.next().unwrap_or_default();
    let (left, right) = info.split_once(" - ").unwrap_or_default();
    let flags: Vec<&str> = left
        .split(' ')
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .collect();
    for flag in ["nosuid", "nodev"] {
        assert!(flags.contains(&flag), "{flag} missing:\n{run}");
    }
    if !is_stand_in() {
        assert!(right.starts_with("fuse.ufs "), "type fuse.ufs:\n{run}");
    }
    assert!(
        right.contains("user_id=65534"),
        "mounted by uid 65534:\n{run}"
    );
    assert!(!right.contains("allow_other"), "no allow_other:\n{run}");
    assert_eq!(lines.next(), Some("a"), "reads through the mount:\n{run}");
    assert_eq!(lines.next(), None, "unmounted:\n{run}");
}

/// The README's option table, `ufs --help` and the manual page (`ufs man`) name the same
/// options: every option of the table is in both, and every `-o` option `--help` lists is in
/// the manual page.
#[test]
fn readme_help_and_man_page_agree() {
    if is_stand_in() {
        say("SKIP readme_help_and_man_page_agree: the binary under test is a stand-in");
        return;
    }
    let run = |args: &[&str]| {
        let r = run_bounded(ufs_cmd().args(args), CMD_TIMEOUT);
        assert!(r.success(), "ufs {args:?}:\n{r}");
        r.stdout
    };
    let help = run(&["--help"]);
    let man = run(&["man"]);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("Main options:")
        .nth(1)
        .expect("the README's option table");
    let mut keys = Vec::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or_default();
        for quoted in first.split('`').skip(1).step_by(2) {
            for name in quoted.split('/') {
                let key = name.split('=').next().unwrap_or_default().trim();
                if !key.is_empty() && key != "option" {
                    keys.push(key.to_string());
                }
            }
        }
    }
    assert!(keys.len() > 20, "parsed the README's table: {keys:?}");
    for key in &keys {
        assert!(
            help.contains(key.as_str()),
            "--help lacks {key:?} (in the README)"
        );
        assert!(
            man.contains(key.as_str()),
            "the manual page lacks {key:?} (in the README)"
        );
    }
    let listed = help
        .split("Options for -o")
        .nth(1)
        .expect("--help lists the -o options");
    for line in listed
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
    {
        let word = line.split_whitespace().next().unwrap_or_default();
        let key = word.split(['=', ',']).next().unwrap_or_default();
        assert!(
            man.contains(key),
            "the manual page lacks {key:?} (in --help)"
        );
    }
}

/// `make install` puts the binary, the manual page and the three shells' completions where the
/// README says, generated from the binary being installed; `make uninstall` removes them.
/// `make install-docker` links `fuse-overlayfs` to ufs, never over a real file, and `make
/// uninstall` removes only that link.
#[test]
fn make_install_installs_binary_man_page_and_completions() {
    if is_stand_in() {
        say("SKIP make_install_installs_binary_man_page_and_completions: stand-in binary");
        return;
    }
    if which("make").is_none() {
        say("SKIP make_install_installs_binary_man_page_and_completions: no make in PATH");
        return;
    }
    let t = tempdir();
    let dest = t.path().join("pkg");
    let make = |target: &str| {
        let r = run_bounded(
            std::process::Command::new("make")
                .arg("-C")
                .arg(env!("CARGO_MANIFEST_DIR"))
                .arg(target)
                .arg("NO_BUILD=1")
                .arg(format!("UFS={}", ufs_bin().display()))
                .arg(format!("DESTDIR={}", dest.display()))
                .arg("PREFIX=/usr"),
            CMD_TIMEOUT,
        );
        assert!(r.success(), "make {target}:\n{r}");
    };
    make("install-fsck");
    let read = |rel: &str| {
        std::fs::read_to_string(dest.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let bin = dest.join("usr/bin/ufs");
    let meta = std::fs::metadata(&bin).expect("installed binary");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o755
    );
    assert!(read("usr/share/man/man8/ufs.8").starts_with(".ie \\n(.g .ds Aq"));
    assert!(read("usr/share/man/man8/ufs.8").contains(".TH ufs 8"));
    assert!(read("usr/share/bash-completion/completions/ufs").contains("complete"));
    assert!(read("usr/share/zsh/site-functions/_ufs").starts_with("#compdef ufs"));
    assert!(read("usr/share/fish/vendor_completions.d/ufs.fish").contains("complete -c ufs"));
    assert_eq!(
        std::fs::read_link(dest.join("usr/sbin/fsck.overlay")).expect("fsck.overlay link"),
        std::path::Path::new("/usr/bin/ufs")
    );
    make("install-docker");
    let docker_link = dest.join("usr/bin/fuse-overlayfs");
    assert_eq!(
        std::fs::read_link(&docker_link).expect("fuse-overlayfs link"),
        std::path::Path::new("/usr/bin/ufs")
    );
    make("uninstall");
    assert!(!bin.exists() && !dest.join("usr/share/man/man8/ufs.8").exists());
    assert!(
        std::fs::symlink_metadata(&docker_link).is_err(),
        "uninstall removes the fuse-overlayfs link to ufs"
    );
    // A fuse-overlayfs that is not ufs's link is neither replaced nor removed.
    std::fs::write(&docker_link, "a real fuse-overlayfs").expect("write a stand-in");
    let refused = run_bounded(
        std::process::Command::new("make")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .arg("install-docker")
            .arg("NO_BUILD=1")
            .arg(format!("UFS={}", ufs_bin().display()))
            .arg(format!("DESTDIR={}", dest.display()))
            .arg("PREFIX=/usr"),
        CMD_TIMEOUT,
    );
    assert!(
        !refused.success(),
        "make install-docker over a real file:
{refused}"
    );
    make("uninstall");
    assert_eq!(
        std::fs::read_to_string(&docker_link).expect("left in place"),
        "a real fuse-overlayfs"
    );
}

/// The README's pasteable session (mount, status, diff, check, repair) runs as written and
/// prints what the README shows (the status lines that depend on the kernel's caching by their
/// start only).
#[test]
fn the_readme_session_runs_as_shown() {
    if skip("the_readme_session_runs_as_shown") || is_stand_in() {
        return;
    }
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let block = readme
        .split("A session to paste")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's session");
    let t = tempdir();
    let dir = t.path().join("s");
    fs::create_dir(&dir).expect("mkdir");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            force_unmount(&self.0);
        }
    }
    let _guard = Unmount(dir.join("merged"));
    let bin_dir = ufs_bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("#   ") {
            Some(out) => steps
                .last_mut()
                .expect("output after a command")
                .1
                .push(out.replace("/tmp/s", &dir.display().to_string())),
            None => steps.push((line.to_string(), Vec::new())),
        }
    }
    assert!(steps.len() >= 10, "{steps:?}");
    for (cmd, expected) in steps {
        let run = run_bounded(
            Command::new("bash")
                .args(["-c", &cmd])
                .current_dir(&dir)
                .env("PATH", &path),
            CMD_TIMEOUT,
        );
        assert!(run.status.is_some(), "{cmd}: timed out");
        let got: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(got.len(), expected.len(), "{cmd}:\n{run}");
        for (g, e) in got.iter().zip(&expected) {
            if e.starts_with("errors:") || e.starts_with("open:") {
                let key = e.split(':').next().unwrap_or_default();
                assert!(g.starts_with(key), "{cmd}: {g:?} is not a {key:?} line");
            } else {
                assert_eq!(g, e, "{cmd}:\n{run}");
            }
        }
    }
}
