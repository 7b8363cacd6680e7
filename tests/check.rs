//! `ufs check`: the offline checker of a layer stack. The cases of xfstests' `overlay/045`,
//! `046` and `056` (fsck.overlay's whiteout, redirect and impure tests), each with the exit code
//! and the repaired state those tests expect; repairs that keep the union's view are checked
//! with the kernel overlay before and after; stacks written by the kernel and by ufs check
//! clean; nothing changes without a repair; a stack in use is refused.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use common::*;

const OPAQUE: &str = "trusted.overlay.opaque";
const REDIRECT: &str = "trusted.overlay.redirect";
const IMPURE: &str = "trusted.overlay.impure";

/// A stack under test: `lower`, `lower2`, `upper`, `work` in a temporary directory.
struct Stack {
    _t: tempfile::TempDir,
    base: PathBuf,
}

impl Stack {
    fn new() -> Stack {
        let t = tempdir();
        let base = t.path().to_path_buf();
        for d in ["lower", "lower2", "upper", "work", "m"] {
            mkdirs(&base.join(d));
        }
        Stack { _t: t, base }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
    fn mkdir(&self, rel: &str) {
        mkdirs(&self.p(rel));
    }
    fn touch(&self, rel: &str) {
        let p = self.p(rel);
        mkdirs(p.parent().expect("parent"));
        fs::write(p, rel.as_bytes()).expect("write");
    }
    fn whiteout(&self, rel: &str) {
        mknod_whiteout(&self.p(rel)).expect("mknod whiteout");
    }
    fn opaque(&self, rel: &str) {
        self.mkdir(rel);
        set_xattr(&self.p(rel), OPAQUE, b"y").expect("setfattr opaque");
    }
    fn impure(&self, rel: &str) {
        self.mkdir(rel);
        set_xattr(&self.p(rel), IMPURE, b"y").expect("setfattr impure");
    }
    fn redirect(&self, rel: &str, to: &str) {
        self.mkdir(rel);
        set_xattr(&self.p(rel), REDIRECT, to.as_bytes()).expect("setfattr redirect");
    }
    fn lowers(&self, two: bool) -> String {
        if two {
            format!(
                "{}:{}",
                self.p("lower").display(),
                self.p("lower2").display()
            )
        } else {
            self.p("lower").display().to_string()
        }
    }
    /// `ufs check FLAGS -o lowerdir=... -o upperdir=... -o workdir=...`, as xfstests runs
    /// fsck.overlay.
    fn check(&self, two: bool, flags: &[&str]) -> Run {
        let mut cmd = ufs_cmd();
        cmd.arg("check").args(flags);
        cmd.arg("-o").arg(format!("lowerdir={}", self.lowers(two)));
        cmd.arg("-o")
            .arg(format!("upperdir={}", self.p("upper").display()));
        cmd.arg("-o")
            .arg(format!("workdir={}", self.p("work").display()));
        run_bounded(&mut cmd, CMD_TIMEOUT)
    }
    fn expect(&self, two: bool, flag: &str, code: i32) -> Run {
        let run = self.check(two, &[flag]);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(code),
            "ufs check {flag}: expected exit {code}\n{run}"
        );
        run
    }
    fn is_whiteout(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel))
            .map(|m| m.mode() & libc::S_IFMT == libc::S_IFCHR && m.rdev() == 0)
            .unwrap_or(false)
    }
    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }
    fn xattr(&self, rel: &str, name: &str) -> Option<Vec<u8>> {
        get_xattr(&self.p(rel), name).ok()
    }
    fn names(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p(rel))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    /// The union the kernel shows, read-only (`lowerdir=upper:lowers`): every path with its
    /// type and contents.
    fn kernel_view(&self, two: bool) -> BTreeMap<String, String> {
        let lowers = format!("{}:{}", self.p("upper").display(), self.lowers(two));
        let _k = KernelOverlay::mount(
            &format!("lowerdir={lowers},redirect_dir=follow"),
            &self.p("m"),
            &self.base,
        );
        let mut out = BTreeMap::new();
        walk(&self.p("m"), "", &mut out);
        out
    }
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    let dir = root.join(rel);
    for e in fs::read_dir(&dir).expect("readdir") {
        let e = e.expect("entry");
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        // An orphan whiteout in a directory the kernel does not merge is listed but cannot be
        // looked up: a phantom the repair removes; what can be opened is what counts.
        let m = match fs::symlink_metadata(e.path()) {
            Ok(m) => m,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("lstat {}: {err}", e.path().display()),
        };
        if m.is_dir() {
            out.insert(name.clone(), "dir".into());
            walk(root, name.trim_start_matches('/'), out);
        } else if m.is_file() {
            out.insert(name, fs::read_to_string(e.path()).expect("read"));
        } else {
            out.insert(name, format!("mode {:o}", m.mode()));
        }
    }
}

/// Every file, its type, size and xattrs, under `root` (for "nothing changed").
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn go(p: &Path, rel: String, out: &mut BTreeMap<String, String>) {
        let m = fs::symlink_metadata(p).expect("lstat");
        let mut xs: Vec<String> = list_xattrs(p)
            .unwrap_or_default()
            .into_iter()
            .map(|x| {
                let v = get_xattr(p, &x).unwrap_or_default();
                format!("{x}={}", String::from_utf8_lossy(&v))
            })
            .collect();
        xs.sort();
        out.insert(
            rel.clone(),
            format!("{:o} {} {} {:?}", m.mode(), m.size(), m.rdev(), xs),
        );
        if m.is_dir() {
            for e in fs::read_dir(p).expect("readdir") {
                let e = e.expect("entry");
                go(
                    &e.path(),
                    format!("{rel}/{}", e.file_name().to_string_lossy()),
                    out,
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, String::new(), &mut out);
    out
}

fn skip_check(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    if is_stand_in() {
        say(&format!("SKIP {test}: the binary under test is not ufs"));
        return true;
    }
    false
}

/// `overlay/045`: orphan whiteouts are removed (with `-p`, exit 1), valid ones kept (exit 0).
/// Removing an orphan changes nothing the kernel shows.
#[test]
fn whiteouts_as_fsck_overlay_checks_them() {
    if skip_check("whiteouts_as_fsck_overlay_checks_them") {
        return;
    }
    // Orphan whiteout: nothing below any of them.
    let s = Stack::new();
    for w in ["lower/foo", "upper/foo", "upper/bar"] {
        s.whiteout(w);
    }
    let before = s.kernel_view(false);
    s.expect(false, "-p", 1);
    assert!(s.names("lower").is_empty() && s.names("upper").is_empty());
    assert_eq!(s.kernel_view(false), before);

    // Valid whiteout: each hides a file in a layer below.
    let s = Stack::new();
    s.touch("lower2/foo");
    s.touch("lower2/bar");
    s.whiteout("upper/foo");
    s.whiteout("lower/bar");
    s.expect(true, "-p", 0);
    assert!(s.is_whiteout("upper/foo") && s.is_whiteout("lower/bar"));

    // Orphan whiteout (2): under an opaque directory.
    let s = Stack::new();
    s.touch("lower/testdir/foo");
    s.opaque("upper/testdir");
    s.whiteout("upper/testdir/foo");
    s.expect(false, "-p", 1);
    assert!(s.names("upper/testdir").is_empty());

    // Orphan whiteout (3): below a file, a whiteout, an opaque directory, and nothing.
    let s = Stack::new();
    for d in ["testdir1", "testdir2", "testdir3"] {
        s.touch(&format!("lower2/{d}/foo"));
    }
    for d in ["testdir1", "testdir2", "testdir3", "testdir4"] {
        s.mkdir(&format!("upper/{d}"));
    }
    s.touch("lower/testdir1");
    s.whiteout("lower/testdir2");
    s.opaque("lower/testdir3");
    for d in ["testdir1", "testdir2", "testdir3", "testdir4"] {
        s.whiteout(&format!("upper/{d}/foo"));
    }
    let before = s.kernel_view(true);
    s.expect(true, "-p", 1);
    for d in ["testdir1", "testdir2", "testdir3", "testdir4"] {
        assert!(s.names(&format!("upper/{d}")).is_empty(), "{d}");
    }
    assert_eq!(s.kernel_view(true), before);

    // Orphan whiteout (4): the parent is redirected elsewhere.
    let s = Stack::new();
    s.touch("lower/testdir/foo");
    s.mkdir("lower/origin");
    s.redirect("upper/testdir", "origin");
    s.whiteout("upper/testdir/foo");
    s.expect(false, "-p", 1);
    assert!(s.names("upper/testdir").is_empty());

    // Valid whiteout (2): below a redirected directory.
    let s = Stack::new();
    s.touch("lower/origin/foo");
    s.impure("upper");
    s.redirect("upper/testdir", "origin");
    s.whiteout("upper/origin");
    s.whiteout("upper/testdir/foo");
    s.expect(false, "-p", 0);
    assert!(s.is_whiteout("upper/testdir/foo"));

    // Valid whiteout (3): the redirect is in a lower layer.
    let s = Stack::new();
    s.touch("lower2/origin/subdir/foo");
    s.redirect("lower/testdir", "origin");
    s.mkdir("upper/testdir/subdir");
    s.whiteout("lower/origin");
    s.whiteout("upper/testdir/subdir/foo");
    s.impure("upper/testdir");
    s.impure("upper");
    s.expect(true, "-p", 0);
    assert!(s.is_whiteout("upper/testdir/subdir/foo"));

    // Orphan whiteout (5): opaque below a redirect.
    let s = Stack::new();
    s.touch("lower/origin/subdir/foo");
    s.redirect("upper/testdir", "origin");
    s.opaque("upper/testdir/subdir");
    s.whiteout("upper/testdir/subdir/foo");
    s.expect(false, "-p", 1);
    assert!(s.names("upper/testdir/subdir").is_empty());

    // Valid whiteout (4): an absolute redirect below an opaque directory.
    let s = Stack::new();
    s.touch("lower/origin/foo");
    s.opaque("upper/testdir");
    s.redirect("upper/testdir/subdir", "/origin");
    s.whiteout("upper/origin");
    s.whiteout("upper/testdir/subdir/foo");
    s.impure("upper/testdir");
    s.expect(false, "-p", 0);
    assert!(s.is_whiteout("upper/testdir/subdir/foo"));
}

/// `overlay/046`: redirects naming nothing or a file are removed (the directory made opaque
/// where its own name has a directory below); a visible origin gets a whiteout; duplicates
/// are left with `-p` (exit 4) and dropped with `-y`.
#[test]
fn redirects_as_fsck_overlay_checks_them() {
    if skip_check("redirects_as_fsck_overlay_checks_them") {
        return;
    }
    // Invalid redirect: to nothing.
    let s = Stack::new();
    s.redirect("upper/testdir", "invalid");
    s.touch("upper/testdir/f");
    let before = s.kernel_view(false);
    s.expect(false, "-p", 1);
    assert_eq!(s.xattr("upper/testdir", REDIRECT), None);
    assert_eq!(s.kernel_view(false), before);

    // Invalid redirect (2): to a file.
    let s = Stack::new();
    s.touch("lower/origin");
    s.redirect("upper/testdir", "origin");
    s.expect(false, "-p", 1);
    assert_eq!(s.xattr("upper/testdir", REDIRECT), None);

    // Valid redirect: relative, origin whited out.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.whiteout("upper/origin");
    s.redirect("upper/testdir", "origin");
    s.impure("upper");
    s.expect(false, "-p", 0);
    assert_eq!(
        s.xattr("upper/testdir", REDIRECT).as_deref(),
        Some(&b"origin"[..])
    );

    // Valid redirect (2): absolute.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.whiteout("upper/origin");
    s.redirect("upper/testdir1/testdir2", "/origin");
    s.impure("upper/testdir1");
    s.expect(false, "-p", 0);
    assert_eq!(
        s.xattr("upper/testdir1/testdir2", REDIRECT).as_deref(),
        Some(&b"/origin"[..])
    );

    // Missing whiteout: the origin is still visible at its own name.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.redirect("upper/testdir", "origin");
    s.expect(false, "-p", 1);
    assert_eq!(
        s.xattr("upper/testdir", REDIRECT).as_deref(),
        Some(&b"origin"[..])
    );
    assert!(s.is_whiteout("upper/origin"));

    // Valid redirect (3): two directories swapped.
    let s = Stack::new();
    s.mkdir("lower/testdir1");
    s.mkdir("lower/testdir2");
    s.redirect("upper/testdir1", "testdir2");
    s.redirect("upper/testdir2", "testdir1");
    s.impure("upper");
    s.expect(false, "-p", 0);

    // Invalid redirect (3): the directory's own name has a directory below: made opaque.
    let s = Stack::new();
    s.touch("lower/testdir/hidden");
    s.redirect("upper/testdir", "invalid");
    let before = s.kernel_view(false);
    s.expect(false, "-y", 1);
    assert_eq!(s.xattr("upper/testdir", REDIRECT), None);
    assert_eq!(s.xattr("upper/testdir", OPAQUE).as_deref(), Some(&b"y"[..]));
    assert_eq!(s.kernel_view(false), before, "the repair keeps the view");

    // Duplicate redirect: three directories redirected to one origin.
    let s = Stack::new();
    s.mkdir("lower2/origin");
    s.redirect("lower/testdir1", "origin");
    s.redirect("lower/testdir2", "origin");
    s.redirect("upper/testdir3", "origin");
    s.expect(true, "-p", 4);
    s.expect(true, "-y", 1);
    let kept = [
        s.xattr("lower/testdir1", REDIRECT),
        s.xattr("lower/testdir2", REDIRECT),
    ];
    assert_eq!(
        kept.iter().filter(|r| r.is_some()).count(),
        1,
        "exactly one of the two keeps its redirect: {kept:?}"
    );
    assert_eq!(s.xattr("upper/testdir3", REDIRECT), None);

    // Duplicate redirect (2): the origin is also a merged directory.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.mkdir("upper/origin");
    s.redirect("upper/testdir", "origin");
    s.expect(false, "-p", 4);
    assert!(s.xattr("upper/testdir", REDIRECT).is_some(), "-p leaves it");
    s.expect(false, "-y", 1);
    assert_eq!(s.xattr("upper/testdir", REDIRECT), None);

    // Duplicate redirect (3): invalid, over a merged origin.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.mkdir("lower/testdir");
    s.mkdir("upper/origin");
    s.redirect("upper/testdir", "invalid");
    s.expect(false, "-y", 1);
    assert_eq!(s.xattr("upper/testdir", REDIRECT), None);
    assert_eq!(s.xattr("upper/testdir", OPAQUE).as_deref(), Some(&b"y"[..]));

    // Malformed and escaping redirects are refused like names that lead nowhere.
    for bad in ["../../etc", "/a/../b", "a/b", "/a//b"] {
        let s = Stack::new();
        s.mkdir("lower/a/b");
        s.redirect("upper/x", bad);
        let run = s.expect(false, "-n", 4);
        assert!(run.stdout.contains("malformed"), "{bad}: {run}");
        assert!(s.xattr("upper/x", REDIRECT).is_some(), "-n changes nothing");
    }
}

/// `overlay/056`: a directory holding copied-up entries, redirected or merged directories
/// gets its `impure` marker back.
#[test]
fn impure_markers_as_fsck_overlay_checks_them() {
    if skip_check("impure_markers_as_fsck_overlay_checks_them") {
        return;
    }
    // Missing impure: entries copied up by the kernel overlay and by ufs (whose copies carry
    // an inode-number record instead of an origin), markers removed behind them.
    for side in ["kernel", "ufs"] {
        let s = Stack::new();
        s.touch("lower/testdir1/foo");
        s.mkdir("lower/testdir2/subdir");
        s.mkdir("upper/testdir1");
        s.mkdir("upper/testdir2");
        {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                s.p("lower").display(),
                s.p("upper").display(),
                s.p("work").display()
            );
            let (_k, _u);
            if side == "kernel" {
                _k = KernelOverlay::mount(&opts, &s.p("m"), &s.base);
            } else {
                _u = UfsMount::mount(&opts, &s.p("m"));
            }
            fs::write(s.p("m/testdir1/foo"), "x").expect("copy up foo");
            set_times(&s.p("m/testdir2/subdir"), 1, 0).expect("copy up subdir");
        }
        for d in ["upper/testdir1", "upper/testdir2"] {
            let _ = remove_xattr(&s.p(d), IMPURE);
        }
        s.expect(false, "-p", 1);
        for d in ["upper/testdir1", "upper/testdir2"] {
            assert_eq!(
                s.xattr(d, IMPURE).as_deref(),
                Some(&b"y"[..]),
                "{side}: {d}"
            );
        }
    }

    // Missing impure (2): a redirected directory.
    let s = Stack::new();
    s.mkdir("lower/origin");
    s.redirect("upper/testdir/subdir", "/origin");
    s.expect(false, "-p", 1);
    assert_eq!(s.xattr("upper/testdir", IMPURE).as_deref(), Some(&b"y"[..]));

    // Missing impure (3): a merged directory.
    let s = Stack::new();
    s.mkdir("lower/testdir");
    s.mkdir("upper/testdir");
    let before = s.kernel_view(false);
    s.expect(false, "-p", 1);
    assert_eq!(s.xattr("upper", IMPURE).as_deref(), Some(&b"y"[..]));
    assert_eq!(s.kernel_view(false), before);
}

/// Without a repair nothing changes, and the exit status says problems were found (1; 4 as
/// `fsck.overlay -n`); the lines name each problem's real path.
#[test]
fn without_repair_nothing_changes() {
    if skip_check("without_repair_nothing_changes") {
        return;
    }
    let s = Stack::new();
    s.whiteout("upper/orphan");
    s.redirect("upper/r", "nowhere");
    s.mkdir("lower/merged");
    s.mkdir("upper/merged");
    s.touch("upper/meta");
    set_xattr(&s.p("upper/meta"), "trusted.overlay.metacopy", b"").expect("metacopy");
    s.mkdir("work/work/#ufs.1.0");
    let before = snapshot(&s.base);
    let run = s.check(false, &[]);
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    for (path, what) in [
        ("upper/orphan", "orphan whiteout"),
        ("upper/r", "names nothing below"),
        ("upper", "missing impure"),
        ("upper/meta", "data cannot be found"),
        ("work/work/#ufs.1.0", "leftover"),
    ] {
        let p = s.p(path).display().to_string();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{p}: ")) && l.contains(what)),
            "no line for {path} ({what}):\n{}",
            run.stdout
        );
    }
    assert_eq!(
        snapshot(&s.base),
        before,
        "ufs check without --repair changed the stack"
    );
    let run = s.check(false, &["-n"]);
    assert_eq!(run.status.and_then(|s| s.code()), Some(4), "{run}");
    assert_eq!(snapshot(&s.base), before, "ufs check -n changed the stack");

    // --repair fixes what is safe; the copy without data stays, so problems remain.
    let run = s.check(false, &["--repair"]);
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    assert!(!s.exists("upper/orphan") && !s.exists("work/work/#ufs.1.0"));
    assert_eq!(s.xattr("upper/r", REDIRECT), None);
    let run = s.check(false, &[]);
    assert_eq!(run.stdout.lines().count(), 1, "{run}");
    assert!(run.stdout.contains("data cannot be found"), "{run}");
}

/// The index and the work directory: orphan index entries and leftovers are removed by a
/// repair; unreadable link-count records too; mixed whiteout formats are reported.
#[test]
fn index_workdir_and_formats() {
    if skip_check("index_workdir_and_formats") {
        return;
    }
    let s = Stack::new();
    s.mkdir("work/index");
    s.touch("work/index/00fb1d0001000000000000000000000000000000000011223344");
    s.touch("upper/linked");
    fs::hard_link(
        s.p("upper/linked"),
        s.p("work/index/00fb1d0001000000000000000000000000000000000055667788"),
    )
    .expect("link");
    set_xattr(&s.p("upper/linked"), "trusted.overlay.nlink", b"U+x").expect("nlink");
    s.whiteout("upper/gone");
    s.touch("lower/gone");
    s.touch("upper/.wh.other");
    s.touch("lower/other");
    let run = s.check(false, &["-p"]);
    assert_eq!(run.status.and_then(|s| s.code()), Some(4), "{run}");
    assert!(run.stdout.contains("orphan index entry"), "{run}");
    assert!(run.stdout.contains("link-count record"), "{run}");
    assert!(run.stdout.contains("mixes whiteout formats"), "{run}");
    assert!(!s.exists("work/index/00fb1d0001000000000000000000000000000000000011223344"));
    assert!(s.exists("work/index/00fb1d0001000000000000000000000000000000000055667788"));
    assert_eq!(s.xattr("upper/linked", "trusted.overlay.nlink"), None);
}

/// Stacks the kernel overlay and ufs wrote through a mount check clean: renames (redirects),
/// deletions, a directory made again over a whiteout, copy-ups, metadata-only copies and
/// hard links in the index.
#[test]
fn stacks_written_through_a_mount_check_clean() {
    if skip_check("stacks_written_through_a_mount_check_clean") {
        return;
    }
    let t = tempdir();
    let fill = |l: &Path| {
        for f in ["t1/foo", "t2/subdir/x", "d/e/f", "mv/x/y", "keep", "big"] {
            let p = l.join(f);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, f).expect("write");
        }
        fs::hard_link(l.join("keep"), l.join("keep2")).expect("link");
        symlink("/etc/passwd", l.join("link")).expect("symlink");
    };
    let change = |m: &Path| {
        fs::write(m.join("t1/foo"), "new").expect("write");
        set_times(&m.join("t2/subdir"), 1, 0).expect("utimes");
        fs::remove_dir_all(m.join("d")).expect("rm -rf");
        fs::create_dir(m.join("d")).expect("mkdir");
        fs::rename(m.join("mv"), m.join("moved")).expect("mv dir");
        fs::rename(m.join("moved/x"), m.join("t1/x2")).expect("mv subdir");
        fs::write(m.join("keep"), "changed").expect("write a hard link");
        std::os::unix::fs::chown(m.join("big"), Some(7), None).expect("chown (metacopy)");
        fs::create_dir_all(m.join("new/deep")).expect("mkdir");
        fs::remove_file(m.join("link")).expect("rm symlink");
    };
    on_kernel_and_ufs(
        t.path(),
        "redirect_dir=on,index=on,metacopy=on",
        fill,
        change,
    );
    for side in ["kernel", "ufs"] {
        let d = t.path().join(side);
        let mut cmd = ufs_cmd();
        cmd.arg("check").arg("-n").arg("-o").arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            d.join("l").display(),
            d.join("up").display(),
            d.join("wk").display()
        ));
        let run = run_bounded(&mut cmd, CMD_TIMEOUT);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(0),
            "the stack {side} wrote does not check clean:\n{run}"
        );
    }
}

/// A stack a live mount uses is not checked (2; 8 as fsck.overlay), by ufs or by the kernel;
/// run under the name `fsck.overlay`, ufs is the checker with fsck's command line.
#[test]
fn a_stack_in_use_is_refused_and_fsck_overlay_is_a_name_for_check() {
    if skip_check("a_stack_in_use_is_refused_and_fsck_overlay_is_a_name_for_check") {
        return;
    }
    let s = Stack::new();
    s.touch("lower/f");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.p("lower").display(),
        s.p("upper").display(),
        s.p("work").display()
    );
    let fsck = s.p("fsck.overlay");
    symlink(ufs_bin(), &fsck).expect("symlink");
    let fsck_run = || {
        run_bounded(
            std::process::Command::new(&fsck).args(["-n", "-o", &opts]),
            CMD_TIMEOUT,
        )
    };
    let code = |r: &Run| r.status.and_then(|s| s.code());
    assert_eq!(code(&fsck_run()), Some(0), "{}", fsck_run());
    {
        let _u = UfsMount::mount(&opts, &s.p("m"));
        let run = s.check(false, &[]);
        assert_eq!(
            code(&run),
            Some(2),
            "checked under a live ufs mount:\n{run}"
        );
        assert!(run.stderr.contains("in use"), "{run}");
        assert_eq!(code(&fsck_run()), Some(8));
    }
    {
        let _k = KernelOverlay::mount(&opts, &s.p("m"), &s.base);
        let run = s.check(false, &[]);
        assert_eq!(
            code(&run),
            Some(2),
            "checked under a live kernel mount:\n{run}"
        );
    }
    s.whiteout("upper/orphan");
    let run = fsck_run();
    assert_eq!(code(&run), Some(4), "{run}");
    let run = run_bounded(
        std::process::Command::new(&fsck).args(["-p", "-o", &opts]),
        CMD_TIMEOUT,
    );
    assert_eq!(code(&run), Some(1), "{run}");
    assert!(!s.exists("upper/orphan"));
}

/// The kernel's alternative whiteouts (an empty file with `overlay.whiteout` in a directory
/// marked `opaque=x`) hide what is below them, and `x` does not make a directory opaque.
#[test]
fn alternative_whiteouts_hide_and_x_is_not_opaque() {
    if skip_check("alternative_whiteouts_hide_and_x_is_not_opaque") {
        return;
    }
    let s = Stack::new();
    s.touch("lower2/d/foo");
    s.touch("lower2/d/bar");
    s.mkdir("lower/d");
    set_xattr(&s.p("lower/d"), OPAQUE, b"x").expect("opaque=x");
    fs::write(s.p("lower/d/foo"), "").expect("create");
    set_xattr(&s.p("lower/d/foo"), "trusted.overlay.whiteout", b"").expect("xwhiteout");
    s.mkdir("upper/d");
    s.impure("upper");
    s.whiteout("upper/d/foo");
    s.whiteout("upper/d/bar");
    let run = s.expect(true, "-n", 4);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{run}");
    assert!(
        lines[0].starts_with(&format!(
            "{}: orphan whiteout",
            s.p("upper/d/foo").display()
        )),
        "{run}"
    );
}

/// A metadata-only copy whose data is in a data-only layer (`lowerdir=L::D`) checks clean; the
/// same copy without its data is reported.
#[test]
fn data_in_data_only_layers_is_found() {
    if skip_check("data_in_data_only_layers_is_found") {
        return;
    }
    let s = Stack::new();
    s.touch("lower2/blobs/f");
    fs::write(s.p("lower/f"), "").expect("create");
    set_xattr(&s.p("lower/f"), "trusted.overlay.metacopy", b"").expect("metacopy");
    set_xattr(&s.p("lower/f"), REDIRECT, b"/blobs/f").expect("redirect");
    let check = || {
        let mut cmd = ufs_cmd();
        cmd.arg("check").arg("-o").arg(format!(
            "lowerdir={}::{},upperdir={},workdir={}",
            s.p("lower").display(),
            s.p("lower2").display(),
            s.p("upper").display(),
            s.p("work").display()
        ));
        run_bounded(&mut cmd, CMD_TIMEOUT)
    };
    let run = check();
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{run}");
    fs::remove_file(s.p("lower2/blobs/f")).expect("rm");
    let run = check();
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    assert!(run.stdout.contains("data cannot be found"), "{run}");
}

/// With the index, a hard-linked lower file keeps its index entry while any of its names is
/// left, lower-only ones included, and loses it with the last one, on the kernel and on ufs
/// alike (`overlay/003`'s `rm -rf` left ufs an orphan index entry); both stacks check clean.
#[test]
fn the_index_entry_goes_with_the_last_name() {
    if skip_check("the_index_entry_goes_with_the_last_name") {
        return;
    }
    let t = tempdir();
    let fill = |l: &Path| {
        fs::write(l.join("a"), "a").expect("write");
        fs::hard_link(l.join("a"), l.join("b")).expect("link");
        fs::hard_link(l.join("a"), l.join("c")).expect("link");
        fs::write(l.join("x"), "x").expect("write");
        fs::hard_link(l.join("x"), l.join("y")).expect("link");
    };
    let change = |m: &Path| {
        // a, b, c: one name removed, then (below) the rest; x, y: both removed.
        fs::remove_file(m.join("a")).expect("rm a");
        fs::remove_file(m.join("x")).expect("rm x");
        fs::remove_file(m.join("y")).expect("rm y");
    };
    on_kernel_and_ufs(t.path(), "index=on,redirect_dir=on", fill, change);
    let entries = |side: &str| -> usize {
        // Regular files only: the kernel also keeps its shared whiteout (`#N`) there.
        fs::read_dir(t.path().join(side).join("wk/index"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_file()))
                })
                .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(
        entries("kernel"),
        1,
        "the kernel keeps a, b, c's entry only"
    );
    assert_eq!(entries("ufs"), 1, "ufs keeps a, b, c's entry only");
    for side in ["kernel", "ufs"] {
        let d = t.path().join(side);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            d.join("l").display(),
            d.join("up").display(),
            d.join("wk").display()
        );
        {
            let m = d.join("m");
            let (_k, _u);
            if side == "kernel" {
                _k = KernelOverlay::mount(&format!("{opts},index=on,redirect_dir=on"), &m, &d);
            } else {
                _u = UfsMount::mount(&opts, &m);
            }
            assert_eq!(
                fs::read_to_string(m.join("b")).expect("read b"),
                "a",
                "{side}"
            );
            fs::remove_file(m.join("b")).expect("rm b");
            fs::remove_file(m.join("c")).expect("rm c");
        }
        assert_eq!(
            entries(side),
            0,
            "{side}: the last name took the index entry"
        );
        let run = run_bounded(ufs_cmd().args(["check", "-n", "-o", &opts]), CMD_TIMEOUT);
        assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{side}:\n{run}");
    }
}

/// The kernel overlay keeps one whiteout in `WORKDIR/work` (without the index) to link new
/// whiteouts to: part of a stack it wrote, not a leftover (every xfstests overlay test's layer
/// check failed on it). A lower layer that shows a directory at two names through a redirect
/// (an image made so, as `overlay/055` makes one) is not the upper's missing whiteout either.
#[test]
fn the_kernels_shared_whiteout_and_lower_redirects_check_clean() {
    if skip_check("the_kernels_shared_whiteout_and_lower_redirects_check_clean") {
        return;
    }
    let s = Stack::new();
    s.touch("lower/a");
    s.touch("lower/b");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.p("lower").display(),
        s.p("upper").display(),
        s.p("work").display()
    );
    {
        let _k = KernelOverlay::mount(&format!("{opts},index=off"), &s.p("m"), &s.base);
        fs::remove_file(s.p("m/a")).expect("rm a");
        fs::remove_file(s.p("m/b")).expect("rm b");
    }
    let shared = s
        .names("work/work")
        .into_iter()
        .any(|n| n.starts_with('#') && s.is_whiteout(&format!("work/work/{n}")));
    assert!(
        shared,
        "the kernel left no shared whiteout: {:?}",
        s.names("work/work")
    );
    s.expect(false, "-n", 0);

    let s = Stack::new();
    s.mkdir("lower2/origin/dir");
    s.redirect("lower/merged", "origin");
    s.expect(true, "-n", 0);
}
