//! Read-side semantics of ufs, checked through real mounts: invisible markers (whiteouts,
//! opaque markers in every format, private `trusted.overlay.*` xattrs) in lowers and the upper.

mod common;

use std::fs;
use std::io;
use std::process::Command;

use common::*;

// ---------------------------------------------------------------------------------------------
// Markers
// ---------------------------------------------------------------------------------------------

#[test]
fn markers_are_invisible() {
    if skip("markers_are_invisible") {
        return;
    }
    let t = tempdir();
    let b = t.path();
    let top = mkdirs(&b.join("l0"));
    let low = mkdirs(&b.join("l1"));
    let up = mkdirs(&b.join("up"));
    let wk = mkdirs(&b.join("wk"));
    let mnt = mkdirs(&b.join("m"));
    // Bottom layer: things the markers above hide.
    for p in [
        "x", "y", "z", "o/hidden", "t/hidden", "u/hidden", "k/gone", "k/kept", "p/hidden",
    ] {
        let f = low.join(p);
        mkdirs(f.parent().unwrap());
        fs::write(&f, "low").unwrap();
    }
    // Top lower: one of each marker kind.
    fs::write(top.join(".wh.x"), "").unwrap();
    mknod_whiteout(&top.join("z")).unwrap();
    mkdirs(&top.join("o"));
    fs::write(top.join("o/.wh..wh..opq"), "").unwrap();
    fs::write(top.join("o/new"), "top").unwrap();
    mkdirs(&top.join("t"));
    set_xattr(&top.join("t"), "trusted.overlay.opaque", b"y").unwrap();
    mkdirs(&top.join("u"));
    set_xattr(&top.join("u"), "user.overlay.opaque", b"y").unwrap();
    mkdirs(&top.join("k"));
    fs::write(top.join("k/.wh.gone"), "").unwrap();
    fs::write(top.join("f"), "f").unwrap();
    set_xattr(&top.join("f"), "user.foo", b"bar").unwrap();
    set_xattr(&top.join("f"), "user.overlay.private", b"1").unwrap();
    set_xattr(&top.join("f"), "trusted.overlay.origin", b"\x00\x01").unwrap();
    mkdirs(&top.join("d"));
    set_xattr(&top.join("d"), "user.dirattr", b"dv").unwrap();
    // Upper: markers are read there too.
    fs::write(up.join(".wh.y"), "").unwrap();
    mkdirs(&up.join("p"));
    set_xattr(&up.join("p"), "user.overlay.opaque", b"y").unwrap();
    fs::write(up.join("p/mine"), "up").unwrap();

    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        top.display(),
        low.display(),
        up.display(),
        wk.display()
    );
    let _m = UfsMount::mount(&opts, &mnt);

    assert_eq!(
        list_names(&mnt),
        ["d", "f", "k", "o", "p", "t", "u"],
        "root listing"
    );
    assert_eq!(
        list_names(&mnt.join("o")),
        ["new"],
        ".wh..wh..opq makes o opaque"
    );
    assert!(
        list_names(&mnt.join("t")).is_empty(),
        "trusted.overlay.opaque makes t opaque"
    );
    // A root mount keeps its records in `trusted.overlay.*`: `user.overlay.opaque` is an
    // ordinary xattr there, as in the kernel, and hides nothing.
    assert_eq!(
        list_names(&mnt.join("u")),
        ["hidden"],
        "user.overlay.opaque must not make u opaque in a trusted mount"
    );
    assert_eq!(
        list_names(&mnt.join("p")),
        ["hidden", "mine"],
        "user.overlay.opaque in the upper of a trusted mount"
    );
    assert_eq!(
        list_names(&mnt.join("k")),
        ["kept"],
        ".wh.gone hides k/gone"
    );
    for hidden in [
        "x",
        "y",
        "z",
        ".wh.x",
        ".wh.y",
        "o/.wh..wh..opq",
        "k/.wh.gone",
        "k/gone",
        "o/hidden",
    ] {
        let r = fs::symlink_metadata(mnt.join(hidden));
        assert_eq!(
            r.as_ref().err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound),
            "{hidden} must not be visible: {r:?}"
        );
    }

    // Private xattrs: neither listed nor readable; user.* ones are.
    let run = run_bounded(
        Command::new("getfattr")
            .args(["-h", "-n", "trusted.overlay.opaque", "--absolute-names"])
            .arg(mnt.join("t")),
        CMD_TIMEOUT,
    );
    assert!(
        !run.success(),
        "getfattr -n trusted.overlay.opaque through the mount must fail:\n{run}"
    );
    assert_eq!(
        get_xattr(&mnt.join("u"), "user.overlay.opaque")
            .ok()
            .as_deref(),
        Some(&b"y"[..]),
        "user.overlay.opaque is an ordinary xattr in a trusted mount"
    );
    assert!(
        get_xattr(&mnt.join("f"), "trusted.overlay.origin").is_err(),
        "trusted.overlay.origin readable"
    );
    for p in ["", "d", "f", "k", "o", "p", "t", "u", "o/new", "p/mine"] {
        let names = list_xattrs(&mnt.join(p)).unwrap();
        let private: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with("trusted.overlay."))
            .collect();
        assert!(private.is_empty(), "/{p} lists private xattrs {private:?}");
    }
    let mut f_names = list_xattrs(&mnt.join("f")).unwrap();
    f_names.sort();
    assert_eq!(f_names, ["user.foo", "user.overlay.private"]);
    assert_eq!(get_xattr(&mnt.join("f"), "user.foo").unwrap(), b"bar");
    assert_eq!(get_xattr(&mnt.join("d"), "user.dirattr").unwrap(), b"dv");
    let dump = run_bounded(
        Command::new("getfattr")
            .args(["-h", "-d", "-m", "-", "--absolute-names"])
            .arg(mnt.join("f")),
        CMD_TIMEOUT,
    );
    assert!(
        dump.stdout.contains("user.foo=\"bar\""),
        "getfattr -d shows user.foo:\n{dump}"
    );
    assert!(
        !dump.stdout.contains("trusted.overlay"),
        "getfattr -d shows private names:\n{dump}"
    );
}
