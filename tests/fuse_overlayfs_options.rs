//! fuse-overlayfs's options that its own tests (and xfstests setups made for it) use:
//! `static_nlink` and `noxattrs=1`. ufs accepted and ignored them with a warning.

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
