//! Nested overlays, compared with the kernel: an overlay whose merged directory is a lower layer
//! of another overlay (ufs over ufs, the kernel's over the kernel's), and the escaped
//! `overlay.overlay.*` xattr names that make it work (Documentation/filesystems/overlayfs.rst,
//! "Nesting overlayfs mounts"; xfstests `overlay/026` and `overlay/084`). The kernel refuses an
//! overlay as an upper directory, so only lowers are nested here.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Kernel,
    Ufs,
}

/// A live mount of either side; `Drop` unmounts it.
enum Mounted {
    Kernel(#[allow(dead_code)] KernelOverlay),
    Ufs(#[allow(dead_code)] UfsMount),
}

/// Mounts an overlay of `side` with `opts` (absolute paths) at `mnt`.
fn mount(side: Side, opts: &str, mnt: &Path) -> Mounted {
    match side {
        Side::Kernel => Mounted::Kernel(KernelOverlay::mount(opts, mnt, Path::new("/"))),
        Side::Ufs => Mounted::Ufs(UfsMount::mount(opts, mnt)),
    }
}

/// `ok:VALUE` or the errno: what the comparisons compare.
fn outcome(r: io::Result<String>) -> String {
    match r {
        Ok(v) => format!("ok:{v}"),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn get(p: &Path, name: &str) -> String {
    outcome(get_xattr(p, name).map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn set(p: &Path, name: &str, value: &str) -> String {
    outcome(set_xattr(p, name, value.as_bytes()).map(|()| String::new()))
}

fn remove(p: &Path, name: &str) -> String {
    outcome(remove_xattr(p, name).map(|()| String::new()))
}

/// Sorted xattr names of `p` (a listing through a mount shows no private name on either side).
fn names(p: &Path) -> String {
    outcome(list_xattrs(p).map(|mut v| {
        v.sort();
        v.join(",")
    }))
}

/// The xattrs of a real (layer) file whose names start with one of `prefixes`, with values.
fn raw(p: &Path, prefixes: &[&str]) -> String {
    let mut out = Vec::new();
    let mut all = list_xattrs(p).unwrap_or_default();
    all.sort();
    for n in all {
        if prefixes.iter().any(|pre| n.starts_with(pre)) {
            out.push(format!("{n}={}", get(p, &n)));
        }
    }
    out.join(",")
}

/// Every path below `root` (not following symlinks): kind, size, content and xattr names.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).collect(),
        Err(e) => {
            out.insert(rel(root, dir), format!("readdir: {e}"));
            return;
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let what = match fs::symlink_metadata(&p) {
            Err(e) => format!("lstat: {e}"),
            Ok(md) if md.is_dir() => format!("dir xattrs=[{}]", names(&p)),
            Ok(md) if md.is_file() => format!(
                "file {:?} xattrs=[{}]",
                String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()),
                names(&p)
            ),
            Ok(md) if md.file_type().is_char_device() => "chardev".to_string(),
            Ok(md) => format!("other {:?}", md.file_type()),
        };
        out.insert(rel(root, &p), what);
        if p.is_dir() && !p.is_symlink() {
            walk(root, &p, out);
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// The options of a writable mount of `lower` (the kernel's `index` is off: an overlay lower
/// would need `nfs_export` on it, as xfstests `overlay/084` says), plus `userxattr` for the
/// `user` prefix.
fn options(lower: &str, up: &Path, wk: &Path, prefix: &str) -> String {
    let mut o = format!(
        "lowerdir={lower},upperdir={},workdir={},index=off",
        up.display(),
        wk.display()
    );
    if prefix == "user" {
        o.push_str(",userxattr");
    }
    o
}

fn other(prefix: &str) -> &'static str {
    if prefix == "user" { "trusted" } else { "user" }
}

/// get/set/list/remove of escaped names through one mount, and what they leave in the upper.
fn escaped_names_on(side: Side, base: &Path, prefix: &str) -> Vec<String> {
    let dir = mkdirs(&base.join(format!("{side:?}-{prefix}")));
    let l = mkdirs(&dir.join("l"));
    let up = mkdirs(&dir.join("up"));
    let wk = mkdirs(&dir.join("wk"));
    let m = mkdirs(&dir.join("m"));
    fs::write(l.join("f"), "f").unwrap();
    mkdirs(&l.join("d"));
    let own = format!("{prefix}.overlay.");
    let oth = format!("{}.overlay.", other(prefix));
    // A lower layer that was the upper of an inner overlay: its escaped marker is an ordinary
    // xattr to this mount (shown unescaped, copied up as it is), not a marker.
    mkdirs(&l.join("e"));
    fs::write(l.join("e/x"), "x").unwrap();
    set_xattr(&l.join("e"), &format!("{own}overlay.opaque"), b"y").unwrap();
    let mut r = Vec::new();
    {
        let _m = mount(side, &options(&l.to_string_lossy(), &up, &wk, prefix), &m);
        let (d, f) = (m.join("d"), m.join("f"));
        r.push(format!(
            "get {own}opaque: {}",
            get(&d, &format!("{own}opaque"))
        ));
        r.push(format!(
            "set {own}opaque: {}",
            set(&d, &format!("{own}opaque"), "y")
        ));
        r.push(format!(
            "set {oth}opaque: {}",
            set(&d, &format!("{oth}opaque"), "y")
        ));
        r.push(format!(
            "get {own}opaque: {}",
            get(&d, &format!("{own}opaque"))
        ));
        r.push(format!(
            "get {oth}opaque: {}",
            get(&d, &format!("{oth}opaque"))
        ));
        r.push(format!("list d: {}", names(&d)));
        r.push(format!("get {own}fsz: {}", get(&f, &format!("{own}fsz"))));
        let near = format!("{}.overlayfsrz", prefix);
        r.push(format!("set {near}: {}", set(&f, &near, "n")));
        r.push(format!("get {near}: {}", get(&f, &near)));
        let twice = format!("{own}overlay.x");
        r.push(format!("set {twice}: {}", set(&f, &twice, "2")));
        r.push(format!("get {twice}: {}", get(&f, &twice)));
        r.push(format!("list f: {}", names(&f)));
        r.push(format!("remove {own}x: {}", remove(&f, &format!("{own}x"))));
        r.push(format!("set {own}y: {}", set(&f, &format!("{own}y"), "3")));
        r.push(format!("remove {own}y: {}", remove(&f, &format!("{own}y"))));
        r.push(format!("get {own}y: {}", get(&f, &format!("{own}y"))));
        r.push(format!("set {own}: {}", set(&f, &own, "1")));
        let long = format!("{own}{}", "x".repeat(250 - own.len()));
        r.push(format!("set long: {}", set(&f, &long, "1")));
        r.push(format!("list f: {}", names(&f)));
        let e = m.join("e");
        r.push(format!(
            "get e {own}opaque: {}",
            get(&e, &format!("{own}opaque"))
        ));
        r.push(format!("list e: {}", names(&e)));
        r.push(format!("e/x: {}", outcome(fs::read_to_string(e.join("x")))));
        r.push(format!(
            "touch e/new: {}",
            outcome(fs::write(e.join("new"), "n").map(|()| String::new()))
        ));
    }
    let keep = [
        format!("{own}overlay"),
        format!("{prefix}.overlayfs"),
        oth.clone(),
    ];
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    r.push(format!("upper d: {}", raw(&up.join("d"), &keep)));
    r.push(format!("upper f: {}", raw(&up.join("f"), &keep)));
    r.push(format!("upper e: {}", raw(&up.join("e"), &keep)));
    r
}

/// xfstests overlay/026 and the first part of overlay/084, kernel against ufs: names of the
/// mount's own namespace are escaped one level (stored as `PREFIX.overlay.overlay.NAME`), the
/// other namespace's are ordinary, escaped names in a layer are listed unescaped.
#[test]
fn escaped_xattr_names_match_the_kernel() {
    if skip("escaped_xattr_names_match_the_kernel") {
        return;
    }
    let t = tempdir();
    for prefix in ["trusted", "user"] {
        let k = escaped_names_on(Side::Kernel, t.path(), prefix);
        let u = escaped_names_on(Side::Ufs, t.path(), prefix);
        assert!(
            k.iter()
                .any(|l| l == &format!("set {prefix}.overlay.opaque: ok:")),
            "the kernel here does not escape xattr names (6.7+ does): {k:#?}"
        );
        let copied = format!("upper e: {prefix}.overlay.overlay.opaque=ok:y");
        assert!(
            k.contains(&copied),
            "the kernel copies an escaped name up as it is: {k:#?}"
        );
        assert_eq!(k, u, "{prefix}: kernel (left) and ufs (right) differ");
    }
}

/// One side of the nesting test: an inner overlay with a whiteout, an opaque directory and an
/// escaped opaque marker made through it, used as the lower of outer overlays of the same kind.
fn nested_on(
    side: Side,
    base: &Path,
    prefix: &str,
) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let dir = mkdirs(&base.join(format!("nested-{side:?}-{prefix}")));
    let il = mkdirs(&dir.join("il"));
    let iu = mkdirs(&dir.join("iu"));
    let iw = mkdirs(&dir.join("iw"));
    let im = mkdirs(&dir.join("im"));
    let ou = mkdirs(&dir.join("ou"));
    let ow = mkdirs(&dir.join("ow"));
    let om = mkdirs(&dir.join("om"));
    let nm = mkdirs(&dir.join("nm"));
    for (p, c) in [
        ("a", "a"),
        ("gone", "gone"),
        ("od/x", "x"),
        ("keep/k", "k"),
        ("layer1/dir/file", "file"),
        ("layer1/dir/also", "also"),
    ] {
        let f = il.join(p);
        mkdirs(f.parent().unwrap());
        fs::write(f, c).unwrap();
    }
    mkdirs(&il.join("layer2/dir"));
    let own = format!("{prefix}.overlay.");
    let mut r = Vec::new();
    let mut trees = Vec::new();
    let _inner = mount(side, &options(&il.to_string_lossy(), &iu, &iw, prefix), &im);
    // Through the inner mount: a whiteout, an opaque directory, an escaped opaque marker.
    r.push(format!(
        "rm gone: {}",
        outcome(fs::remove_file(im.join("gone")).map(|()| String::new()))
    ));
    r.push(format!(
        "rm -rf od: {}",
        outcome(fs::remove_dir_all(im.join("od")).map(|()| String::new()))
    ));
    r.push(format!(
        "mkdir od: {}",
        outcome(fs::create_dir(im.join("od")).map(|()| String::new()))
    ));
    r.push(format!(
        "write od/new: {}",
        outcome(fs::write(im.join("od/new"), "new").map(|()| String::new()))
    ));
    r.push(format!(
        "write a2: {}",
        outcome(fs::write(im.join("a2"), "a2").map(|()| String::new()))
    ));
    r.push(format!(
        "set opaque: {}",
        set(&im.join("layer2/dir"), &format!("{own}opaque"), "y")
    ));
    r.push(format!(
        "inner upper layer2/dir: {}",
        raw(&iu.join("layer2/dir"), &[&format!("{own}overlay")])
    ));
    trees.push(tree(&im));

    // Two directories of the inner mount as the lowers of a read-only outer one: the escaped
    // marker makes layer2/dir opaque to the outer mount.
    {
        let mut o = format!(
            "lowerdir={}:{}",
            im.join("layer2").display(),
            im.join("layer1").display()
        );
        if prefix == "user" {
            o.push_str(",userxattr");
        }
        let _n = mount(side, &o, &nm);
        r.push(format!(
            "nested dir/file: {}",
            outcome(fs::read_to_string(nm.join("dir/file")))
        ));
        r.push(format!("nested dir: {}", names_in(&nm.join("dir"))));
        trees.push(tree(&nm));
    }

    // The whole inner mount as the lower of a writable outer one.
    {
        let _o = mount(side, &options(&im.to_string_lossy(), &ou, &ow, prefix), &om);
        trees.push(tree(&om));
        r.push(format!(
            "outer get {own}opaque on layer2/dir: {}",
            get(&om.join("layer2/dir"), &format!("{own}opaque"))
        ));
        r.push(format!(
            "outer rm a: {}",
            outcome(fs::remove_file(om.join("a")).map(|()| String::new()))
        ));
        r.push(format!(
            "outer rm -rf keep: {}",
            outcome(fs::remove_dir_all(om.join("keep")).map(|()| String::new()))
        ));
        r.push(format!(
            "outer mkdir keep: {}",
            outcome(fs::create_dir(om.join("keep")).map(|()| String::new()))
        ));
        r.push(format!(
            "outer touch layer2/dir/other: {}",
            outcome(fs::write(om.join("layer2/dir/other"), "o").map(|()| String::new()))
        ));
        r.push(format!(
            "outer set {own}opaque on od: {}",
            set(&om.join("od"), &format!("{own}opaque"), "z")
        ));
        trees.push(tree(&om));
        // The outer's upper is a plain directory: its own markers there are real ones; an
        // escaped name set through the outer mount is stored escaped.
        r.push(format!(
            "outer upper keep: {}",
            raw(&ou.join("keep"), &[&own])
                .split(',')
                .filter(|s| s.contains("opaque"))
                .collect::<Vec<_>>()
                .join(",")
        ));
        r.push(format!(
            "outer upper a: {}",
            fs::symlink_metadata(ou.join("a"))
                .map(|m| if m.file_type().is_char_device() {
                    "whiteout"
                } else {
                    "other"
                })
                .unwrap_or("missing")
        ));
        r.push(format!(
            "outer upper od: {}",
            raw(&ou.join("od"), &[&format!("{own}overlay")])
        ));
    }
    trees.push(tree(&im));
    (r, trees)
}

fn names_in(p: &Path) -> String {
    outcome(fs::read_dir(p).and_then(|rd| {
        let mut v: Vec<String> = rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v.join(","))
    }))
}

/// xfstests overlay/084, nested: ufs over ufs behaves as the kernel's overlay over the kernel's.
#[test]
fn an_overlay_is_a_lower_layer_of_another() {
    if skip("an_overlay_is_a_lower_layer_of_another") {
        return;
    }
    let t = tempdir();
    for prefix in ["trusted", "user"] {
        let (kr, kt) = nested_on(Side::Kernel, t.path(), prefix);
        let (ur, ut) = nested_on(Side::Ufs, t.path(), prefix);
        assert!(
            kr.iter().any(|l| l.starts_with("nested dir/file: errno 2")),
            "the kernel's escaped opaque marker must hide layer1/dir/file: {kr:#?}"
        );
        assert_eq!(kr, ur, "{prefix}: kernel (left) and ufs (right) differ");
        for (i, (k, u)) in kt.iter().zip(&ut).enumerate() {
            assert_eq!(
                k, u,
                "{prefix}: tree {i}: kernel (left) and ufs (right) differ"
            );
        }
    }
}

/// xfstests overlay/084, `do_test_xwhiteout` in `base`: a layer whose root is marked
/// `overlay.opaque=x` and holds a zero-size file `hidden` with `overlay.whiteout`, above a
/// layer with `regular` and `hidden`, seen through a read-only mount of `side`.
fn xwhiteout_on(side: Side, base: &Path, prefix: &str, mnt: &Path) -> Vec<String> {
    let lower = mkdirs(&base.join("lower"));
    let upper = mkdirs(&base.join("upper"));
    fs::write(lower.join("regular"), "r").unwrap();
    fs::write(lower.join("hidden"), "h").unwrap();
    fs::write(upper.join("hidden"), "").unwrap();
    mkdirs(&lower.join("sub"));
    fs::write(lower.join("sub/gone"), "g").unwrap();
    fs::write(lower.join("sub/kept"), "k").unwrap();
    mkdirs(&upper.join("sub"));
    fs::write(upper.join("sub/gone"), "").unwrap();
    let mut r = vec![
        set(&upper, &format!("{prefix}.overlay.opaque"), "x"),
        set(
            &upper.join("hidden"),
            &format!("{prefix}.overlay.whiteout"),
            "y",
        ),
        set(&upper.join("sub"), &format!("{prefix}.overlay.opaque"), "x"),
        set(
            &upper.join("sub/gone"),
            &format!("{prefix}.overlay.whiteout"),
            "y",
        ),
    ];
    let mut o = format!("lowerdir={}:{}", upper.display(), lower.display());
    if prefix == "user" {
        o.push_str(",userxattr");
    }
    let _m = mount(side, &o, mnt);
    r.push(format!("ls: {}", names_in(mnt)));
    r.push(format!(
        "hidden: {}",
        outcome(fs::read_to_string(mnt.join("hidden")))
    ));
    r.push(format!("ls sub: {}", names_in(&mnt.join("sub"))));
    r.push(format!(
        "sub/gone: {}",
        outcome(fs::read_to_string(mnt.join("sub/gone")))
    ));
    r
}

/// xfstests overlay/084, the xwhiteout parts: the kernel's alternative whiteouts in a lower
/// layer, written directly and (escaped, `overlay.overlay.whiteout`) through an inner overlay
/// of the same kind whose directory holds the layers.
#[test]
fn alternative_whiteouts_hide_names_below_also_through_an_inner_overlay() {
    if skip("alternative_whiteouts_hide_names_below_also_through_an_inner_overlay") {
        return;
    }
    let t = tempdir();
    for prefix in ["trusted", "user"] {
        let mut results = Vec::new();
        for side in [Side::Kernel, Side::Ufs] {
            let dir = mkdirs(&t.path().join(format!("xwh-{side:?}-{prefix}")));
            let direct = xwhiteout_on(
                side,
                &mkdirs(&dir.join("direct")),
                prefix,
                &mkdirs(&dir.join("m1")),
            );
            let (l, u, w, n) = (
                mkdirs(&dir.join("l")),
                mkdirs(&dir.join("u")),
                mkdirs(&dir.join("w")),
                mkdirs(&dir.join("nested")),
            );
            let _inner = mount(side, &options(&l.to_string_lossy(), &u, &w, prefix), &n);
            let nested = xwhiteout_on(side, &n, prefix, &mkdirs(&dir.join("m2")));
            let escaped = raw(&u.join("upper/hidden"), &[&format!("{prefix}.overlay.")]);
            results.push((direct, nested, escaped));
        }
        let (k, u) = (&results[0], &results[1]);
        assert!(
            k.0.iter().any(|l| l == "ls: ok:regular,sub"),
            "the kernel reads alternative whiteouts: {k:#?}"
        );
        assert_eq!(k, u, "{prefix}: kernel (left) and ufs (right) differ");
    }
}
