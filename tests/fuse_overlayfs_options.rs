//! fuse-overlayfs's options that its own tests (and xfstests setups made for it) use:
//! `static_nlink` and `noxattrs=1` (which ufs accepted and ignored with a warning), and how
//! `squash_to_*` answers a refused `chown`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

/// Regression: `static_nlink` was ignored (directories reported their real link count) and
/// `noxattrs=1` was ignored (xattrs worked). fuse-overlayfs reports 1 for every directory with
/// the first, and answers `ENOTSUP` for every xattr request with the second.
#[test]
fn static_nlink_and_noxattrs_take_effect() {
    if skip("static_nlink_and_noxattrs_take_effect") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    mkdirs(&l.join("d/sub1"));
    mkdirs(&l.join("d/sub2"));
    fs::write(l.join("f"), "f\n").expect("write");
    set_xattr(&l.join("f"), "user.a", b"1").expect("setxattr");
    let up = mkdirs(&base.join("up"));
    let wk = mkdirs(&base.join("wk"));
    let m = mkdirs(&base.join("m"));
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        up.display(),
        wk.display()
    );
    {
        let u = UfsMount::mount(&layers, &m);
        assert_eq!(fs::metadata(u.mnt.join("d")).expect("stat").nlink(), 4);
        assert_eq!(
            get_xattr(&u.mnt.join("f"), "user.a").expect("getxattr"),
            b"1"
        );
    }
    let u = UfsMount::mount(&format!("{layers},static_nlink,noxattrs=1"), &m);
    assert!(
        u.launch.as_ref().is_some_and(|r| r.stderr.is_empty()),
        "the options are known: {:?}",
        u.launch
    );
    assert_eq!(fs::metadata(u.mnt.join("d")).expect("stat").nlink(), 1);
    for r in [
        get_xattr(&u.mnt.join("f"), "user.a").map(drop),
        set_xattr(&u.mnt.join("f"), "user.b", b"2"),
        list_xattrs(&u.mnt.join("f")).map(drop),
    ] {
        assert_eq!(
            r.err().and_then(|e| e.raw_os_error()),
            Some(libc::EOPNOTSUPP),
            "noxattrs=1"
        );
    }
}

/// Regression: with `squash_to_*` a `chown` the upper refuses failed, where fuse-overlayfs
/// answers success (every owner shows as the squashed one anyway). An immutable upper file makes
/// the real `chown` fail with `EPERM` even for root.
#[test]
fn a_refused_chown_succeeds_under_squash() {
    if skip("a_refused_chown_succeeds_under_squash") {
        return;
    }
    let Some(chattr) = which("chattr") else {
        say("SKIP a_refused_chown_succeeds_under_squash: no chattr (apt-get install e2fsprogs)");
        return;
    };
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    let up = mkdirs(&base.join("up"));
    let wk = mkdirs(&base.join("wk"));
    let m = mkdirs(&base.join("m"));
    fs::write(up.join("f"), "f\n").expect("write");
    let set = |flag: &str| {
        std::process::Command::new(&chattr)
            .arg(flag)
            .arg(up.join("f"))
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set("+i") {
        say("SKIP a_refused_chown_succeeds_under_squash: the upper's filesystem has no chattr +i");
        return;
    }
    struct Mutable<F: Fn(&str) -> bool>(F);
    impl<F: Fn(&str) -> bool> Drop for Mutable<F> {
        fn drop(&mut self) {
            (self.0)("-i");
        }
    }
    let _mutable = Mutable(set);
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        up.display(),
        wk.display()
    );
    {
        let u = UfsMount::mount(&layers, &m);
        let e = std::os::unix::fs::lchown(u.mnt.join("f"), Some(5), None).expect_err("immutable");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "without squash");
    }
    let u = UfsMount::mount(&format!("{layers},squash_to_root"), &m);
    std::os::unix::fs::lchown(u.mnt.join("f"), Some(5), None).expect("chown under squash_to_root");
    assert_eq!(fs::metadata(u.mnt.join("f")).expect("stat").uid(), 0);
}
