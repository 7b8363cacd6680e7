//! Data-only lower layers (`lowerdir=l1:l2::d1::d2`, `lowerdir+=`, `datadir+=`), against the
//! kernel overlay on the same layers.
//!
//! The layers are built the way composefs builds them: the regular lowers hold metadata-only
//! copies (`trusted.overlay.metacopy`) whose absolute `trusted.overlay.redirect` names a path in
//! the data-only layers, which hold the full files and names that must never appear in the union.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The files of the union that the tests compare.
const FILES: &[&str] = &["fa", "fb", "fc", "dir/fd", "plain", "norm"];

fn write(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(p, content).unwrap();
}

/// A metadata-only copy at `p` of size `size` whose data is at `redirect`.
fn metacopy(p: &Path, size: u64, redirect: &str) {
    write(p, b"");
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(size)
        .unwrap();
    set_xattr(p, "trusted.overlay.metacopy", b"").unwrap();
    set_xattr(p, "trusted.overlay.redirect", redirect.as_bytes()).unwrap();
}

/// Builds `base/{l1,l2,d1,d2}`.
fn build(base: &Path) {
    let (l1, l2, d1, d2) = (
        base.join("l1"),
        base.join("l2"),
        base.join("d1"),
        base.join("d2"),
    );
    write(&d1.join("blobs/a"), b"data-a\n");
    write(&d2.join("blobs/b"), b"data-b-from-d2\n");
    write(&d1.join("blobs/c"), b"data-c-from-d1\n");
    write(&d2.join("blobs/c"), b"data-c-from-d2, hidden by d1\n");
    write(&d1.join("blobs/sub/d"), b"data-d\n");
    write(&d1.join("onlydata"), b"a data-only name\n");
    write(&d2.join("dir/onlydata2"), b"another\n");
    metacopy(&l1.join("fa"), 7, "/blobs/a");
    fs::set_permissions(l1.join("fa"), fs::Permissions::from_mode(0o640)).unwrap();
    metacopy(&l2.join("fb"), 15, "/blobs/b");
    metacopy(&l2.join("fc"), 15, "/blobs/c");
    metacopy(&l1.join("dir/fd"), 7, "/blobs/sub/d");
    write(&l2.join("plain"), b"a plain file\n");
    // A redirect on a file that is not a metadata-only copy leads nowhere: it is its own data.
    write(&l1.join("norm"), b"");
    set_xattr(&l1.join("norm"), "trusted.overlay.redirect", b"/blobs/a").unwrap();
    // A relative redirect never reaches the data-only layers.
    metacopy(&l1.join("rel"), 7, "a");
    for f in ["fa", "fb", "fc", "dir/fd", "plain", "norm"] {
        let p = [&l1, &l2]
            .iter()
            .map(|l| l.join(f))
            .find(|p| p.exists())
            .unwrap();
        set_times(&p, 1_600_000_000, 123_456_789).unwrap();
    }
}

fn opts_lowerdir(base: &Path, extra: &str) -> String {
    let b = base.display();
    format!("{extra}lowerdir={b}/l1:{b}/l2::{b}/d1::{b}/d2")
}

fn opts_plus(base: &Path, extra: &str) -> String {
    let b = base.display();
    format!("{extra}lowerdir+={b}/l1,lowerdir+={b}/l2,datadir+={b}/d1,datadir+={b}/d2")
}

/// One file: name, content, mode, size, link count, inode number, mtime (s, ns).
type FileView = (String, Vec<u8>, u32, u64, u64, u64, i64, i64);

/// What one union shows: per file, content and attributes (no `st_dev`: each mount has its
/// own); the listings of `/` and `/dir` (the names that can be looked up: ufs leaves a name
/// whose lookup fails out of a listing, where the kernel lists it; docs/DIFFERENCES.md); and the
/// errno of names that must not resolve.
#[derive(Debug, PartialEq)]
struct View {
    files: Vec<FileView>,
    root: Vec<String>,
    dir: Vec<String>,
    errors: Vec<(String, Option<i32>)>,
}

fn listing(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn view(m: &Path) -> View {
    let files = FILES
        .iter()
        .map(|f| {
            let p = m.join(f);
            let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let content = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                f.to_string(),
                content,
                md.mode(),
                md.size(),
                md.nlink(),
                md.ino(),
                md.mtime(),
                md.mtime_nsec(),
            )
        })
        .collect();
    let errors = ["rel", "blobs", "onlydata", "dir/onlydata2", "blobs/a"]
        .iter()
        .map(|f| {
            let e = fs::symlink_metadata(m.join(f))
                .err()
                .map(|e| e.raw_os_error());
            (f.to_string(), e.flatten())
        })
        .collect();
    let found = |d: &Path| -> Vec<String> {
        listing(d)
            .into_iter()
            .filter(|n| fs::symlink_metadata(d.join(n)).is_ok())
            .collect()
    };
    View {
        files,
        root: found(m),
        dir: found(&m.join("dir")),
        errors,
    }
}

/// Mounts the kernel overlay with `opts`, returns what `f` gives, unmounts.
fn on_kernel<T>(opts: &str, m: &Path, f: impl Fn(&Path) -> T) -> T {
    let _k = KernelOverlay::mount(opts, m, Path::new("/"));
    f(m)
}

fn on_ufs<T>(opts: &str, m: &Path, f: impl Fn(&Path) -> T) -> T {
    let _u = UfsMount::mount(opts, m);
    f(m)
}

#[test]
fn data_only_layers_read_as_in_the_kernel() {
    if skip("data_only_layers_read_as_in_the_kernel") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    build(base);
    let m = mkdirs(&base.join("m"));
    for opts in [
        opts_lowerdir(base, "metacopy=on,"),
        opts_plus(base, "metacopy=on,"),
    ] {
        let (kernel, kernel_root) = on_kernel(&opts, &m, |m| (view(m), listing(m)));
        let ufs = on_ufs(&opts, &m, view);
        assert_eq!(ufs, kernel, "-o {opts}");
        // What the data-only layers hold is read, in layer order, and never merged.
        let content = |f: &str| {
            kernel
                .files
                .iter()
                .find(|x| x.0 == f)
                .map(|x| x.1.clone())
                .unwrap()
        };
        assert_eq!(content("fa"), b"data-a\n");
        assert_eq!(content("fb"), b"data-b-from-d2\n");
        assert_eq!(content("fc"), b"data-c-from-d1\n");
        assert_eq!(content("dir/fd"), b"data-d\n");
        assert_eq!(
            content("norm"),
            b"",
            "a plain file's redirect is not followed"
        );
        assert_eq!(kernel.root, ["dir", "fa", "fb", "fc", "norm", "plain"]);
        assert_eq!(
            kernel_root,
            ["dir", "fa", "fb", "fc", "norm", "plain", "rel"]
        );
        assert_eq!(kernel.dir, ["fd"]);
        for (name, errno) in &kernel.errors {
            let want = if name == "rel" {
                libc::EIO
            } else {
                libc::ENOENT
            };
            assert_eq!(*errno, Some(want), "{name}");
        }
    }
}

/// Without `metacopy=on` the kernel still follows a metadata-only copy of the bottom regular
/// layer into the data-only layers (and ufs, which follows `trusted.*` records, too).
#[test]
fn bottom_lower_reaches_data_layers_without_metacopy_on() {
    if skip("bottom_lower_reaches_data_layers_without_metacopy_on") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    build(base);
    let m = mkdirs(&base.join("m"));
    let b = base.display();
    let opts = format!("lowerdir={b}/l2::{b}/d1::{b}/d2");
    let read = |m: &Path| {
        ["fb", "fc", "plain"].map(|f| {
            (
                fs::read(m.join(f)).unwrap(),
                fs::metadata(m.join(f)).unwrap().ino(),
            )
        })
    };
    let kernel = on_kernel(&opts, &m, read);
    let ufs = on_ufs(&opts, &m, read);
    assert_eq!(ufs, kernel);
    assert_eq!(kernel[0].0, b"data-b-from-d2\n");
}

/// What a copy-up leaves: the content, the mode, whether the upper copy is metadata-only and
/// its redirect record (after a rename), read through the mount and again after a remount.
#[test]
fn copy_up_takes_the_data_from_the_data_layer() {
    if skip("copy_up_takes_the_data_from_the_data_layer") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    build(base);
    let run = |side: &str| {
        let dir = mkdirs(&base.join(side));
        let (u, w, m) = (
            mkdirs(&dir.join("u")),
            mkdirs(&dir.join("w")),
            mkdirs(&dir.join("m")),
        );
        let opts = format!(
            "{},upperdir={},workdir={}",
            opts_lowerdir(base, "metacopy=on,"),
            u.display(),
            w.display()
        );
        let act = |m: &Path| {
            fs::set_permissions(m.join("fa"), fs::Permissions::from_mode(0o600)).unwrap();
            // Renamed, it records where its data was reached from (`/fa`, as the kernel does).
            fs::rename(m.join("fa"), m.join("fa2")).unwrap();
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(m.join("fb"))
                .unwrap();
            std::io::Write::write_all(&mut f, b"more\n").unwrap();
            drop(f);
            fs::set_permissions(m.join("dir/fd"), fs::Permissions::from_mode(0o604)).unwrap();
        };
        let look = |m: &Path| {
            ["fa2", "fb", "dir/fd"].map(|f| {
                let md = fs::metadata(m.join(f)).unwrap();
                (
                    fs::read(m.join(f)).unwrap(),
                    md.mode(),
                    md.size(),
                    md.ino(),
                    get_xattr(&u.join(f), "trusted.overlay.metacopy").is_ok(),
                    // The kernel writes `fa` (a rename within one directory), ufs `/fa`
                    // (docs/DIFFERENCES.md): either leads to the lower copy, then to its data.
                    get_xattr(&u.join(f), "trusted.overlay.redirect")
                        .ok()
                        .map(|r| r.strip_prefix(b"/").unwrap_or(&r).to_vec()),
                )
            })
        };
        let (during, after) = if side == "kernel" {
            (
                on_kernel(&opts, &m, |m| {
                    act(m);
                    look(m)
                }),
                on_kernel(&opts, &m, look),
            )
        } else {
            (
                on_ufs(&opts, &m, |m| {
                    act(m);
                    look(m)
                }),
                on_ufs(&opts, &m, look),
            )
        };
        (during, after, upper_files(&u))
    };
    let kernel = run("kernel");
    let ufs = run("ufs");
    assert_eq!(ufs, kernel);
    let (during, after, _) = &kernel;
    assert_eq!(during, after, "a remount shows the same");
    assert_eq!(during[0].0, b"data-a\n");
    assert!(during[0].4, "a chmod leaves a metadata-only copy");
    assert_eq!(during[1].0, b"data-b-from-d2\nmore\n");
    assert!(!during[1].4, "a write copies the data");
}

fn upper_files(u: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![u.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(u).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// Option combinations the kernel refuses are refused by ufs too.
#[test]
fn refused_layer_options() {
    if skip("refused_layer_options") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    build(base);
    let m = mkdirs(&base.join("m"));
    let b = base.display();
    let cases = [
        format!("lowerdir={b}/l1::{b}/d1:{b}/l2"),
        format!("lowerdir={b}/l1:::{b}/d1"),
        format!("lowerdir={b}/l1::"),
        format!("lowerdir=::{b}/d1"),
        format!("datadir+={b}/d1"),
        format!("datadir+={b}/d1,datadir+={b}/d2,upperdir={b}/u,workdir={b}/w"),
        format!("datadir+={b}/d1,lowerdir+={b}/l1"),
        format!("lowerdir={b}/l1,lowerdir+={b}/l2"),
        format!("lowerdir={b}/l1,datadir+={b}/d1"),
        format!("lowerdir={b}/l1::{b}/missing"),
        format!("lowerdir={b}/l1::{b}/d1/blobs/a"),
    ];
    mkdirs(&base.join("u"));
    mkdirs(&base.join("w"));
    for opts in &cases {
        let k = run_bounded(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", opts])
                .arg(&m),
            CMD_TIMEOUT,
        );
        if k.success() {
            force_unmount(&m);
        }
        assert!(!k.success(), "the kernel accepted -o {opts}");
        let u = UfsMount::try_args(&standard_mount_args(opts, &m), &m, None);
        assert!(u.is_err(), "ufs accepted -o {opts}");
    }
    // The accepted spellings mount on both.
    for opts in [
        format!("lowerdir={b}/l1::{b}/d1::{b}/l2"),
        format!("lowerdir+={b}/l1,datadir+={b}/d1,lowerdir={b}/l2::{b}/d2"),
    ] {
        drop(KernelOverlay::mount(&opts, &m, Path::new("/")));
        drop(UfsMount::mount(&opts, &m));
    }
}

/// `ufs diff` of an upper over a stack with data-only layers: they take no part in it.
#[test]
fn diff_ignores_data_only_layers() {
    if skip("diff_ignores_data_only_layers") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    build(base);
    let u = mkdirs(&base.join("u"));
    write(&u.join("new"), b"x");
    let opts = format!("{},upperdir={}", opts_lowerdir(base, ""), u.display());
    let run = run_bounded(ufs_cmd().args(["diff", "-o", &opts]), CMD_TIMEOUT);
    assert!(run.success(), "{run}");
    assert_eq!(run.stdout.trim(), "A /new", "{run}");
}

/// The path of a redirect is walked in a data-only layer without following a symlink: a data
/// layer whose `blobs` is a symlink to a directory beside the layers gives no data from there.
#[test]
fn data_layer_walk_follows_no_symlink() {
    if skip("data_layer_walk_follows_no_symlink") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    write(&base.join("outside/secret"), b"must not be read\n");
    mkdirs(&base.join("d1"));
    std::os::unix::fs::symlink("../outside", base.join("d1/blobs")).unwrap();
    write(&base.join("d2/blobs/other"), b"x\n");
    metacopy(&base.join("l1/f"), 17, "/blobs/secret");
    let m = mkdirs(&base.join("m"));
    let b = base.display();
    let opts = format!("lowerdir={b}/l1::{b}/d1::{b}/d2");
    let read = |m: &Path| fs::read(m.join("f")).map_err(|e| e.raw_os_error());
    let kernel = on_kernel(&opts, &m, read);
    let ufs = on_ufs(&opts, &m, read);
    assert_eq!(kernel, Err(Some(libc::ENOENT)));
    assert_eq!(ufs, kernel);
}

/// With `userxattr` (records in `user.overlay.*`, redirects and metadata-only copies not
/// followed), the kernel still follows a metadata-only copy of the bottom regular layer with an
/// absolute redirect into the data-only layers, and refuses one higher up (`EPERM`): so does ufs.
#[test]
fn userxattr_reaches_data_layers_from_the_bottom_lower_only() {
    if skip("userxattr_reaches_data_layers_from_the_bottom_lower_only") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    write(&base.join("d1/blobs/a"), b"data-a\n");
    for (layer, name) in [("l1", "top"), ("l2", "bottom")] {
        let p = base.join(layer).join(name);
        write(&p, b"");
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(7)
            .unwrap();
        set_xattr(&p, "user.overlay.metacopy", b"").unwrap();
        set_xattr(&p, "user.overlay.redirect", b"/blobs/a").unwrap();
    }
    let m = mkdirs(&base.join("m"));
    let b = base.display();
    let opts = format!("userxattr,lowerdir={b}/l1:{b}/l2::{b}/d1");
    let read =
        |m: &Path| ["top", "bottom"].map(|f| fs::read(m.join(f)).map_err(|e| e.raw_os_error()));
    let kernel = on_kernel(&opts, &m, read);
    let ufs = on_ufs(&opts, &m, read);
    assert_eq!(kernel, [Err(Some(libc::EPERM)), Ok(b"data-a\n".to_vec())]);
    assert_eq!(ufs, kernel);
}
