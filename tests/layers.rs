//! Layers over their whole life, and layers that lie.
//!
//! 1. Lifecycle: what ufs writes into an upper (metadata-only copies, data redirects, directory
//!    redirects) reads back the same once that upper is a lower: mounted read-only on top of its
//!    old lowers, or pushed under a fresh upper as containers commit layers. The kernel overlay
//!    mounted over the very same directories is the oracle.
//! 2. Identity: a layer whose `readdir` reports one `d_ino` for every entry (fuse2fs does) must
//!    not make distinct files share a node.
//! 3. Hostile records: redirects that climb out of the layers, records in the namespace a mount
//!    does not use, and random redirect values never let ufs reach anything outside its layers;
//!    each malformed record gets the kernel's answer.

#[path = "common/badino.rs"]
mod badino;
#[path = "common/beyond_support.rs"]
mod beyond_support;
mod common;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use beyond_support::*;
use common::*;

/// The kernel reading a stack whose records it must follow.
const K_FOLLOW: &str = "redirect_dir=on,metacopy=on";

fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| errno_str(&e))
}

/// `lowerdir=` of `dirs` relative to `base` (for the kernel's one-page mount data).
fn rel_lowers(base: &Path, dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| {
            d.strip_prefix(base)
                .expect("under base")
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(":")
}

fn abs_lowers(dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts `dirs` (top first) read-only with ufs at `base/m` and with the kernel at `base/km`,
/// and asserts both show the same tree. Returns ufs's snapshot.
fn read_only_views_agree(base: &Path, dirs: &[&Path], what: &str) -> Snapshot {
    let m = mkdirs(&base.join("m"));
    let km = mkdirs(&base.join("km"));
    let u = UfsMount::mount(&format!("lowerdir={}", abs_lowers(dirs)), &m);
    let k = KernelOverlay::mount(
        &format!("lowerdir={},{K_FOLLOW}", rel_lowers(base, dirs)),
        &km,
        base,
    );
    let (us, ks) = (snapshot(&u.mnt), snapshot(&k.mnt));
    assert_same_tree("ufs", &us, "kernel", &ks, what);
    us
}

/// One generation of a layer's life: ufs (its defaults) mounted with `upper` over `lowers`,
/// `f` run on the mount, then unmounted.
fn generation(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path, f: impl FnOnce(&Path)) {
    let mut m = UfsMount::mount(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            abs_lowers(lowers),
            upper.display(),
            work.display()
        ),
        mnt,
    );
    f(mnt);
    m.unmount();
}

struct Gen {
    upper: PathBuf,
    work: PathBuf,
}

fn gen_dirs(base: &Path, name: &str) -> Gen {
    Gen {
        upper: mkdirs(&base.join(format!("{name}-up"))),
        work: mkdirs(&base.join(format!("{name}-wk"))),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle
// ---------------------------------------------------------------------------------------------

/// docker's deepest image: its fuse-overlayfs driver allows 128 layers and names each by a
/// long absolute path (`DATA/fuse-overlayfs/l/ID`); a `lowerdir=` of 128 such paths, far past
/// the page a kernel mount's options must fit in, mounts, and shows what the kernel shows for
/// the same layers (mounted with relative paths to fit its page).
#[test]
fn a_stack_of_128_lowers_named_by_long_paths_reads_as_the_kernels() {
    if skip("a_stack_of_128_lowers_named_by_long_paths_reads_as_the_kernels") {
        return;
    }
    let t = tempdir();
    let base = mkdirs(&t.path().join("x".repeat(150)));
    let dirs: Vec<PathBuf> = (0..128)
        .map(|i| {
            let d = mkdirs(&base.join(format!("l{i:03}")));
            fs::write(d.join(format!("f{i}")), format!("{i}\n")).expect("write");
            let shared = mkdirs(&d.join("shared"));
            fs::write(shared.join(format!("s{i}")), format!("{i}\n")).expect("write");
            // Every even layer hides the next one's file.
            if i % 2 == 0 {
                mknod_whiteout(&shared.join(format!("s{}", i + 1))).expect("whiteout");
            }
            d
        })
        .collect();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    assert!(abs_lowers(&refs).len() > 16384, "the option string is long");
    let seen = read_only_views_agree(&base, &refs, "128 lowers");
    let names = seen.entries[""].names.clone().unwrap_or_default();
    assert_eq!(names.len(), 129, "128 files and shared/: {names:?}");
    let shared = seen.entries["shared"].names.clone().unwrap_or_default();
    assert_eq!(shared.len(), 64, "the even layers' files only: {shared:?}");
}

/// Regression (the layer-lifecycle reproducer): a `chmod` through ufs makes a metadata-only
/// copy; read-only on top of its lower, that copy showed 12 NUL bytes instead of its data.
#[test]
fn a_metadata_only_copy_reads_its_data_once_its_layer_is_a_lower() {
    if skip("a_metadata_only_copy_reads_its_data_once_its_layer_is_a_lower") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    put(&l, "a/foo", "hello world\n");
    put(&l, "a/keep", "kept\n");
    let g1 = gen_dirs(base, "g1");
    let m = mkdirs(&base.join("m"));
    generation(&[&l], &g1.upper, &g1.work, &m, |m| {
        fs::set_permissions(m.join("a/foo"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::rename(m.join("a/keep"), m.join("a/moved")).expect("rename");
    });
    assert!(
        has_metacopy(&g1.upper.join("a/foo")),
        "chmod made no metadata-only copy: the test no longer covers what it should"
    );
    let view = read_only_views_agree(base, &[&g1.upper, &l], "read-only after chmod and mv");
    assert!(view.entries.contains_key("a/moved"));
    let m = mkdirs(&base.join("m"));
    {
        let u = UfsMount::mount(&format!("lowerdir={}", abs_lowers(&[&g1.upper, &l])), &m);
        assert_eq!(
            read(&u.mnt.join("a/foo")).as_deref(),
            Ok(&b"hello world\n"[..])
        );
        assert_eq!(read(&u.mnt.join("a/moved")).as_deref(), Ok(&b"kept\n"[..]));
    }

    // Pushed under a new upper: the copy's data is copied up from two layers down.
    let g2 = gen_dirs(base, "g2");
    generation(&[&g1.upper, &l], &g2.upper, &g2.work, &m, |m| {
        assert_eq!(read(&m.join("a/foo")).as_deref(), Ok(&b"hello world\n"[..]));
        append(&m.join("a/foo"), b"more\n").expect("append");
        fs::set_permissions(m.join("a/moved"), fs::Permissions::from_mode(0o640)).expect("chmod");
    });
    let view = read_only_views_agree(
        base,
        &[&g2.upper, &g1.upper, &l],
        "read-only after a second generation",
    );
    assert_eq!(view.entries["a/moved"].perm, 0o640);
    let u = UfsMount::mount(
        &format!("lowerdir={}", abs_lowers(&[&g2.upper, &g1.upper, &l])),
        &m,
    );
    assert_eq!(
        read(&u.mnt.join("a/foo")).as_deref(),
        Ok(&b"hello world\nmore\n"[..])
    );
    assert_eq!(read(&u.mnt.join("a/moved")).as_deref(), Ok(&b"kept\n"[..]));
}

/// Regression: a lower directory renamed and moved into another directory kept its files only
/// while its layer was the upper. A metadata-only copy of a metadata-only copy (a layer two
/// generations old) also finds its data through both redirect records.
#[test]
fn redirects_and_metadata_only_copies_chain_across_generations() {
    if skip("redirects_and_metadata_only_copies_chain_across_generations") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    put(&l, "d/x", "x data\n");
    put(&l, "d/y", "y data\n");
    put(&l, "f", "file data\n");
    let m = mkdirs(&base.join("m"));
    let g1 = gen_dirs(base, "g1");
    generation(&[&l], &g1.upper, &g1.work, &m, |m| {
        fs::create_dir(m.join("e")).expect("mkdir");
        fs::rename(m.join("d"), m.join("e/d2")).expect("rename dir");
        fs::rename(m.join("f"), m.join("e/f2")).expect("rename file");
    });
    read_only_views_agree(base, &[&g1.upper, &l], "generation 1, read-only");
    let g2 = gen_dirs(base, "g2");
    generation(&[&g1.upper, &l], &g2.upper, &g2.work, &m, |m| {
        fs::rename(m.join("e/d2"), m.join("d3")).expect("rename dir again");
        fs::rename(m.join("e/f2"), m.join("f3")).expect("rename file again");
        fs::set_permissions(m.join("f3"), fs::Permissions::from_mode(0o600)).expect("chmod");
    });
    assert!(has_metacopy(&g2.upper.join("f3")));
    let view = read_only_views_agree(base, &[&g2.upper, &g1.upper, &l], "generation 2, read-only");
    for name in ["d3/x", "d3/y", "f3"] {
        assert!(view.entries.contains_key(name), "{name} lost: {view:?}");
    }
    let u = UfsMount::mount(
        &format!("lowerdir={}", abs_lowers(&[&g2.upper, &g1.upper, &l])),
        &m,
    );
    assert_eq!(read(&u.mnt.join("f3")).as_deref(), Ok(&b"file data\n"[..]));
    assert_eq!(read(&u.mnt.join("d3/y")).as_deref(), Ok(&b"y data\n"[..]));
}

// ---------------------------------------------------------------------------------------------
// 2. Identity
// ---------------------------------------------------------------------------------------------

/// Regression (the data-aliasing bug): on a layer whose `readdir` gives every entry one `d_ino`,
/// a listing made the next lookups give distinct files one node: `b` showed `a`'s size and data.
#[test]
fn a_layer_that_repeats_d_ino_does_not_alias_files() {
    if skip("a_layer_that_repeats_d_ino_does_not_alias_files") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    let lower = mkdirs(&base.join("bad"));
    let files: Vec<(String, Vec<u8>)> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), n.repeat(5 + 4 * i).into_bytes()))
        .collect();
    let _bad = badino::serve(
        badino::BadInoFs {
            files: files.clone(),
            d_ino: badino::SAME_D_INO,
        },
        &lower,
    )
    .expect("serve the test filesystem");
    assert!(wait_mounted(&lower), "test filesystem never mounted");
    let m = mkdirs(&base.join("m"));
    let up = mkdirs(&base.join("up"));
    let wk = mkdirs(&base.join("wk"));
    for opts in [
        format!("lowerdir={}", lower.display()),
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            up.display(),
            wk.display()
        ),
    ] {
        let u = UfsMount::mount(&opts, &m);
        // The listing first, so that the lookups after it can be answered from it.
        let listed = list_names(&u.mnt);
        assert_eq!(listed, ["a", "b", "c", "d", "e"]);
        let mut inos = std::collections::BTreeSet::new();
        for (name, data) in &files {
            let p = u.mnt.join(name);
            let md = fs::symlink_metadata(&p).expect("stat");
            assert_eq!(md.len(), data.len() as u64, "{opts}: size of {name}");
            assert_eq!(read(&p).as_deref(), Ok(&data[..]), "{opts}: data of {name}");
            inos.insert(md.ino());
        }
        assert_eq!(
            inos.len(),
            files.len(),
            "{opts}: files share numbers: {inos:?}"
        );
        drop(u);
        // The kernel needs two lowers without an upper.
        let empty = mkdirs(&base.join("empty"));
        let k = KernelOverlay::mount(
            &format!("lowerdir={}:{}", lower.display(), empty.display()),
            &m,
            base,
        );
        for (name, data) in &files {
            assert_eq!(
                read(&k.mnt.join(name)).as_deref(),
                Ok(&data[..]),
                "kernel: {name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile records
// ---------------------------------------------------------------------------------------------

/// A stack with a canary directory beside the layers: nothing in it may ever show through.
struct Hostile {
    t: tempfile::TempDir,
    l1: PathBuf,
    l2: PathBuf,
    up: PathBuf,
    wk: PathBuf,
}

const CANARY: &str = "CANARY-d41d8cd98f";
/// The content of a 0700 root directory inside the layers.
const PRIVATE: &str = "PRIVATE-KEY";

impl Hostile {
    fn new() -> Hostile {
        let t = tempdir();
        let base = t.path().to_path_buf();
        put(&base, &format!("outside/{CANARY}"), CANARY);
        put(&base, "outside/secret/key", CANARY);
        fs::set_permissions(base.join("outside"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let l2 = mkdirs(&base.join("l2"));
        put(&l2, "d/f", "lower data\n");
        put(&l2, "private/key", PRIVATE);
        fs::set_permissions(l2.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
        let l1 = mkdirs(&base.join("l1"));
        mkdirs(&l1.join("d"));
        Hostile {
            l1,
            l2,
            up: mkdirs(&base.join("up")),
            wk: mkdirs(&base.join("wk")),
            t,
        }
    }

    fn base(&self) -> &Path {
        self.t.path()
    }

    fn ufs_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.l1.display(),
            self.l2.display(),
            self.up.display(),
            self.wk.display()
        )
    }

    fn kernel_opts(&self) -> String {
        format!("lowerdir=l1:l2,upperdir=up,workdir=wk-k,{K_FOLLOW}")
    }
}

fn has_user_xattr(p: &Path, name: &str) -> bool {
    get_xattr(p, name).is_ok()
}

/// Walks `root` through every name, reading every file; returns what it saw (names and data).
fn seen_through(root: &Path) -> String {
    fn go(p: &Path, out: &mut String) {
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            out.push_str(&path.display().to_string());
            out.push('\n');
            match fs::symlink_metadata(&path) {
                Ok(md) if md.is_dir() => go(&path, out),
                Ok(md) if md.is_file() => {
                    if let Ok(data) = fs::read(&path) {
                        out.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = String::new();
    go(root, &mut out);
    out
}

fn errno_of_list(p: &Path) -> String {
    match fs::read_dir(p) {
        Ok(rd) => format!("ok {:?}", {
            let mut v: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }),
        Err(e) => errno_str(&e),
    }
}

/// Regression (hostile layers, attacks 1-3): a redirect that climbs out of the layers listed
/// and served files from outside them. Each malformed record now gets the kernel's answer
/// (`EINVAL` for a malformed record, `EACCES` for a `.`/`..` name).
#[test]
fn redirects_never_leave_the_layers() {
    if skip("redirects_never_leave_the_layers") {
        return;
    }
    let h = Hostile::new();
    let dirs = [
        ("rel", "../outside"),
        ("rel_deep", "../../../../../../outside"),
        ("abs_dotdot", "/../outside"),
        ("abs_double", "//d"),
        ("abs_trailing", "/d/"),
        ("abs_root", "/"),
        ("dotdot", ".."),
        ("dot", "."),
        ("empty", ""),
        ("good_abs", "/d"),
    ];
    for (name, value) in dirs {
        let d = mkdirs(&h.up.join(name));
        set_xattr(&d, "trusted.overlay.redirect", value.as_bytes()).expect("setxattr");
    }
    let files = [
        ("mc_rel", "../outside/secret/key"),
        ("mc_abs", "/../outside/secret/key"),
        ("mc_private", "/private/key"),
        ("mc_good", "/d/f"),
    ];
    for (name, value) in files {
        let p = put(&h.up, name, "");
        fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_len(11))
            .expect("size");
        set_xattr(&p, "trusted.overlay.metacopy", b"").expect("setxattr");
        set_xattr(&p, "trusted.overlay.redirect", value.as_bytes()).expect("setxattr");
    }
    // The kernel's answers over the same layers (it writes nothing here: only lookups).
    mkdirs(&h.base().join("wk-k"));
    let km = mkdirs(&h.base().join("km"));
    let mut kernel = Vec::new();
    {
        let k = KernelOverlay::mount(&h.kernel_opts(), &km, h.base());
        for (name, _) in dirs {
            kernel.push((name, errno_of_list(&k.mnt.join(name))));
        }
        for (name, _) in files {
            kernel.push((name, format!("{:?}", read(&k.mnt.join(name)))));
        }
    }
    let m = mkdirs(&h.base().join("m"));
    let mut m = UfsMount::mount(&format!("{},allow_other", h.ufs_opts()), &m);
    let mut ours = Vec::new();
    for (name, _) in dirs {
        ours.push((name, errno_of_list(&m.mnt.join(name))));
    }
    for (name, _) in files {
        ours.push((name, format!("{:?}", read(&m.mnt.join(name)))));
    }
    assert_eq!(
        ours, kernel,
        "ufs (left) and the kernel (right) answer differently"
    );
    let seen = seen_through(&m.mnt);
    assert!(!seen.contains(CANARY), "the canary showed through:\n{seen}");
    // Another user, with allow_other: still nothing from outside.
    if which("setpriv").is_some() {
        for name in ["mc_rel", "mc_abs"] {
            let run = run_bounded(
                Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                    .arg(m.mnt.join(name)),
                CMD_TIMEOUT,
            );
            assert!(
                !run.stdout.contains(CANARY),
                "uid 65534 read outside data through {name}"
            );
        }
        // The 0700 directory stays closed to others.
        let run = run_bounded(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                .arg(m.mnt.join("private/key")),
            CMD_TIMEOUT,
        );
        assert!(!run.stdout.contains(PRIVATE), "uid 65534 read private/key");
    } else {
        say("redirects_never_leave_the_layers: no setpriv, the uid 65534 part is skipped");
    }
    m.unmount();
}

/// Regression (hostile layers, attacks 4 and 5): records in the namespace the mount does not
/// use are ordinary xattrs. A user who owns a lower directory set `user.overlay.redirect` on it
/// and read a 0700 root directory through a root mount; a file given `user.overlay.metacopy`
/// and a redirect served another file's data. Both are now plain xattrs, shown as the kernel
/// shows them.
#[test]
fn user_overlay_records_are_plain_xattrs_in_a_trusted_mount() {
    if skip("user_overlay_records_are_plain_xattrs_in_a_trusted_mount") {
        return;
    }
    let h = Hostile::new();
    mkdirs(&h.base().join("wk-k"));
    let km = mkdirs(&h.base().join("km"));
    // As the attacker would, where setpriv can drop to uid 65534: the user owns a directory of a
    // lower layer and sets the records on it; and, through a kernel overlay mount (which stores
    // `user.overlay.*` as plain xattrs), creates a file in a directory of theirs and sets a
    // metadata-only record pointing at a root 0600 file.
    let evil = mkdirs(&h.l1.join("evil"));
    let theirs = mkdirs(&h.l2.join("theirs"));
    let as_nobody = which("setpriv").is_some();
    if as_nobody {
        for dir in [&evil, &theirs] {
            std::os::unix::fs::lchown(dir, Some(65534), Some(65534)).expect("chown");
        }
        let nobody = |script: &str| {
            let run = run_bounded(
                Command::new("setpriv")
                    .args([
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        "sh",
                        "-c",
                    ])
                    .arg(script),
                CMD_TIMEOUT,
            );
            assert!(run.success(), "as uid 65534: {script}: {run}");
        };
        nobody(&format!(
            "setfattr -n user.overlay.redirect -v /private {0} && \
             setfattr -n user.overlay.opaque -v y {0}",
            evil.display()
        ));
        let k = KernelOverlay::mount(&h.kernel_opts(), &km, h.base());
        nobody(&format!(
            "echo 'own data' > {0} && setfattr -n user.overlay.metacopy {0} && \
             setfattr -n user.overlay.redirect -v /private/key {0}",
            k.mnt.join("theirs/stolen").display()
        ));
        drop(k);
        assert!(
            has_user_xattr(&h.up.join("theirs/stolen"), "user.overlay.metacopy"),
            "the kernel did not store the record as a plain xattr"
        );
    } else {
        say(
            "user_overlay_records_are_plain_xattrs_in_a_trusted_mount: no setpriv, records set as root",
        );
        set_xattr(&evil, "user.overlay.redirect", b"/private").expect("setxattr");
        set_xattr(&evil, "user.overlay.opaque", b"y").expect("setxattr");
        let p = put(&h.up, "theirs/stolen", "own data\n");
        set_xattr(&p, "user.overlay.metacopy", b"").expect("setxattr");
        set_xattr(&p, "user.overlay.redirect", b"/private/key").expect("setxattr");
    }
    let d = mkdirs(&h.up.join("d"));
    set_xattr(&d, "user.overlay.opaque", b"y").expect("setxattr");

    let kernel = {
        let k = KernelOverlay::mount(&h.kernel_opts(), &km, h.base());
        snapshot(&k.mnt)
    };
    let m = mkdirs(&h.base().join("m"));
    let u = UfsMount::mount(&h.ufs_opts(), &m);
    let ours = snapshot(&u.mnt);
    assert_same_tree(
        "ufs",
        &ours,
        "kernel",
        &kernel,
        "user.overlay.* under a trusted mount",
    );
    assert_eq!(
        read(&u.mnt.join("theirs/stolen")).as_deref(),
        Ok(&b"own data\n"[..])
    );
    assert_eq!(errno_of_list(&u.mnt.join("evil")), "ok []");
    assert_eq!(
        errno_of_list(&u.mnt.join("d")),
        "ok [\"f\"]",
        "a user.overlay.opaque marker hid the lower files"
    );
    assert_eq!(
        get_xattr(&u.mnt.join("evil"), "user.overlay.redirect").expect("getxattr"),
        b"/private",
        "the record is an ordinary xattr and is shown"
    );
    assert!(
        !seen_through(&u.mnt.join("evil")).contains(PRIVATE),
        "private data showed through evil/"
    );
    assert!(!seen_through(&u.mnt).contains(CANARY));
}

/// Property: random redirect values (random bytes, `..`, `/`, long ones) on directories and on
/// metadata-only copies never let a listing or a read reach anything outside the layers.
#[test]
fn random_redirects_never_reach_outside() {
    if skip("random_redirects_never_reach_outside") {
        return;
    }
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("UFS_REDIRECT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pieces: [&[u8]; 10] = [
        b"..",
        b"/",
        b".",
        b"outside",
        CANARY.as_bytes(),
        b"private",
        b"key",
        b"d",
        b"secret",
        b"l2",
    ];
    for round in 0..4 {
        let h = Hostile::new();
        let mut values = Vec::new();
        for i in 0..40 {
            let mut v = Vec::new();
            let n = rng.random_range(1..12);
            for _ in 0..n {
                if rng.random_bool(0.2) {
                    let len = rng.random_range(1..8);
                    v.extend((0..len).map(|_| rng.random_range(1..=255u8)));
                } else {
                    v.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
                }
            }
            if rng.random_bool(0.05) {
                v = b"../".repeat(rng.random_range(1..200));
            }
            let (path, metacopy) = if i % 2 == 0 {
                (mkdirs(&h.up.join(format!("d{i}"))), false)
            } else {
                let p = put(&h.up, &format!("f{i}"), "");
                fs::File::options()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(16))
                    .expect("size");
                (p, true)
            };
            if metacopy {
                set_xattr(&path, "trusted.overlay.metacopy", b"").expect("setxattr");
            }
            match set_xattr(&path, "trusted.overlay.redirect", &v) {
                Ok(()) => values.push(v),
                Err(e) => say(&format!(
                    "value of {} bytes refused by the layer: {e}",
                    v.len()
                )),
            }
        }
        let m = mkdirs(&h.base().join("m"));
        let u = UfsMount::mount(&h.ufs_opts(), &m);
        let seen = seen_through(&u.mnt);
        assert!(
            !seen.contains(CANARY),
            "seed {seed} round {round}: outside data showed through; values {:?}",
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        );
    }
}

/// Regression (layer lifecycle): two names hard-linked in an upper reported different numbers
/// once that upper was a lower (one through its inode-number record, one without), where the
/// kernel reports one; and a copy in the index kept the number of a lower name that was never
/// copied up, so after its workdir was gone both showed one number with different data.
#[test]
fn numbers_from_a_former_upper_never_join_or_split_objects() {
    if skip("numbers_from_a_former_upper_never_join_or_split_objects") {
        return;
    }
    for features in ["redirect_dir=off,index=off,metacopy=off", ""] {
        let t = tempdir();
        let base = t.path();
        let l = mkdirs(&base.join("l"));
        put(&l, "f", "f data\n");
        put(&l, "h1", "linked\n");
        fs::hard_link(l.join("h1"), l.join("h2")).expect("link");
        let g1 = gen_dirs(base, "g1");
        let m = mkdirs(&base.join("m"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{}{features}",
            l.display(),
            g1.upper.display(),
            g1.work.display(),
            if features.is_empty() { "" } else { "," }
        );
        let mut u = UfsMount::mount(&opts, &m);
        fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::create_dir(m.join("sub")).expect("mkdir");
        fs::hard_link(m.join("f"), m.join("sub/g")).expect("link");
        append(&m.join("h1"), b"changed\n").expect("append");
        u.unmount();
        drop(u);
        // The workdir (with the index) goes, as stores do once a layer is committed.
        fs::remove_dir_all(&g1.work).expect("remove workdir");
        let view = read_only_views_agree(base, &[&g1.upper, &l], features);
        let ino = |p: &str| {
            fs::symlink_metadata(base.join("m").join(p))
                .expect("stat")
                .ino()
        };
        let u = UfsMount::mount(&format!("lowerdir={}", abs_lowers(&[&g1.upper, &l])), &m);
        // Listings first, so that lookups can be answered from them.
        list_names(&u.mnt);
        list_names(&u.mnt.join("sub"));
        assert_eq!(
            ino("f"),
            ino("sub/g"),
            "{features}: f and sub/g are one file"
        );
        let h1 = read(&u.mnt.join("h1"));
        let h2 = read(&u.mnt.join("h2"));
        assert_eq!(h1.as_deref(), Ok(&b"linked\nchanged\n"[..]), "{features}");
        if features.is_empty() {
            // With the index, h2 was never copied up: the lower file, unchanged.
            assert_eq!(h2.as_deref(), Ok(&b"linked\n"[..]), "{features}");
        }
        if h1 != h2 {
            assert_ne!(
                ino("h1"),
                ino("h2"),
                "{features}: different data, one number"
            );
        }
        drop(u);
        drop(view);
    }
}

/// Regression (unionmount-testsuite `rename-move-dir` with `--ov=3`): a directory renamed in
/// place in one generation (a relative redirect) and moved to another directory in the next
/// (an absolute one) lost its files: after the absolute path, the relative record was looked up
/// at the layer roots instead of renaming the path's last name.
#[test]
fn a_relative_redirect_under_an_absolute_one_renames_the_path() {
    if skip("a_relative_redirect_under_an_absolute_one_renames_the_path") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    put(&l, "a/dir/f", "in dir\n");
    put(&l, "a/dir/sub/g", "in sub\n");
    let m = mkdirs(&base.join("m"));
    let g1 = gen_dirs(base, "g1");
    generation(&[&l], &g1.upper, &g1.work, &m, |m| {
        fs::rename(m.join("a/dir"), m.join("a/dirx")).expect("rename in place");
    });
    let g2 = gen_dirs(base, "g2");
    generation(&[&g1.upper, &l], &g2.upper, &g2.work, &m, |m| {
        fs::create_dir(m.join("a/empty")).expect("mkdir");
        fs::rename(m.join("a/dirx"), m.join("a/empty/dir")).expect("move");
    });
    let view = read_only_views_agree(base, &[&g2.upper, &g1.upper, &l], "after two moves");
    for p in ["a/empty/dir/f", "a/empty/dir/sub/g"] {
        assert!(view.entries.contains_key(p), "{p} lost");
    }
    let g3 = gen_dirs(base, "g3");
    generation(&[&g2.upper, &g1.upper, &l], &g3.upper, &g3.work, &m, |m| {
        assert_eq!(
            read(&m.join("a/empty/dir/sub/g")).as_deref(),
            Ok(&b"in sub\n"[..])
        );
        fs::rename(m.join("a/empty/dir"), m.join("top")).expect("move again");
    });
    let view = read_only_views_agree(
        base,
        &[&g3.upper, &g2.upper, &g1.upper, &l],
        "after three moves",
    );
    assert!(view.entries.contains_key("top/sub/g"), "top/sub/g lost");
}
