//! Features beyond the kernel's defaults, proved through real mounts: stable inode numbers,
//! kept across copy-up, remount and the rotation of the upper into the lowers, and unique
//! across lowers on two filesystems (also with `xino=off`).
//!
//! Every tree these tests walk is also checked for the inode-number rules of SEMANTICS.md
//! (`beyond_support::ino_violations`): readdir's `d_ino` equals `st_ino`, one `st_dev`, and
//! names that share an `st_ino` are hard links of one file (same content and link count).

#[path = "common/beyond_support.rs"]
mod beyond_support;
mod common;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use beyond_support::*;
use common::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// Stable inode numbers
// ---------------------------------------------------------------------------------------------

/// A walk without its root entry.
fn without_root(
    w: &std::collections::BTreeMap<String, InoEntry>,
) -> std::collections::BTreeMap<String, InoEntry> {
    let mut w = w.clone();
    w.remove("");
    w
}

#[test]
fn inode_numbers_survive_copy_up_remount_and_rotation() {
    if skip("inode_numbers_survive_copy_up_remount_and_rotation") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    put(l, "f", "data\n");
    put(l, "d/x", "x\n");
    put(l, "g", "g\n");
    std::os::unix::fs::symlink("f", l.join("s")).unwrap();
    let mnt = lay.mnt.clone();
    let mut m = lay.mount_ufs("");
    let w0 = assert_ino_rules(&mnt, "fresh mount");
    type Op = fn(&Path) -> io::Result<()>;
    let ops: Vec<(&str, Op)> = vec![
        ("chmod f", |m| chmod(&m.join("f"), 0o600)),
        ("append to f", |m| append(&m.join("f"), b"more\n")),
        ("chmod d", |m| chmod(&m.join("d"), 0o700)),
        ("chown -h s", |m| {
            std::os::unix::fs::lchown(m.join("s"), Some(1234), Some(5678))
        }),
        ("append to d/x", |m| append(&m.join("d/x"), b"y\n")),
    ];
    for (name, op) in &ops {
        op(&mnt).unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = assert_ino_rules(&mnt, &format!("after {name}"));
        assert_same_numbers(&w0, &w, &format!("after {name}"));
    }
    for p in ["f", "d", "s", "d/x"] {
        assert!(
            fs::symlink_metadata(lay.upper.join(p)).is_ok(),
            "{p} was not copied up"
        );
    }
    assert_eq!(lmeta(&mnt.join("s")).uid(), 1234, "chown -h of the symlink");
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "data\nmore\n");
    let before = assert_ino_rules(&mnt, "before unmount");
    unmount_and_wait(&mut m);
    drop(m);

    let mut m = lay.mount_ufs("");
    let w = assert_ino_rules(&mnt, "after remount");
    assert_same_numbers(&before, &w, "after remount");
    assert_same_numbers(&w0, &w, "after remount, against the first mount");
    unmount_and_wait(&mut m);
    drop(m);

    // Rotation: the old upper becomes the top lower under a fresh upper.
    let rot = lay.rotated("rot");
    let _m = rot.mount_ufs("");
    let w = assert_ino_rules(&mnt, "after rotating the upper into the lowers");
    // The root reports its upper's number (as the kernel's does), which rotation replaces.
    assert_same_numbers(&without_root(&before), &w, "after rotation");
    // And a second copy-up, from the rotated layer, keeps them still.
    chmod(&mnt.join("f"), 0o640).unwrap();
    chmod(&mnt.join("d"), 0o750).unwrap();
    append(&mnt.join("g"), b"g2\n").unwrap();
    let w2 = assert_ino_rules(&mnt, "after copy-ups from the rotated layer");
    assert_same_numbers(
        &without_root(&before),
        &w2,
        "after copy-ups from the rotated layer",
    );
}

/// Two tmpfs lowers (fresh ones, whose raw inode numbers collide with each other) and a disk
/// upper, all with entries, for the tests of numbers across filesystems.
struct TwoFs {
    lay: Layout,
    _tmpfs: [TmpfsMount; 2],
}

fn two_fs_fixture(base: &Path) -> TwoFs {
    let t1 = TmpfsMount::mount(&base.join("t1"), 16);
    let t2 = TmpfsMount::mount(&base.join("t2"), 16);
    let l1 = mkdirs(&t1.dir.join("l"));
    let l2 = mkdirs(&t2.dir.join("l"));
    for i in 0..30 {
        put(&l1, &format!("t{i:02}"), &format!("lower {i}\n"));
        put(&l2, &format!("v{i:02}"), &format!("second lower {i}\n"));
    }
    put(&l1, "td/tx", "tx\n");
    put(&l1, "shared/lx", "lx\n");
    put(&l2, "shared/vx", "vx\n");
    std::os::unix::fs::symlink("t00", l1.join("ts")).unwrap();
    let raw = |p: &Path| lmeta(p).ino();
    assert_eq!(
        raw(&l1.join("t05")),
        raw(&l2.join("v05")),
        "expected the raw inode numbers of the two fresh tmpfs to collide"
    );
    let lay = Layout::with_lowers(base, vec![l1, l2]);
    for i in 0..30 {
        put(&lay.upper, &format!("u{i:02}"), &format!("upper {i}\n"));
    }
    put(&lay.upper, "shared/ux", "ux\n");
    TwoFs {
        lay,
        _tmpfs: [t1, t2],
    }
}

fn two_fs_copy_ups(m: &Path) {
    for i in 0..5 {
        chmod(&m.join(format!("t{i:02}")), 0o600).unwrap();
        chmod(&m.join(format!("v{i:02}")), 0o600).unwrap();
    }
    for i in 5..10 {
        append(&m.join(format!("t{i:02}")), b"more\n").unwrap();
        append(&m.join(format!("v{i:02}")), b"more\n").unwrap();
    }
    chmod(&m.join("td"), 0o700).unwrap();
    append(&m.join("td/tx"), b"more\n").unwrap();
    append(&m.join("shared/vx"), b"more\n").unwrap();
    std::os::unix::fs::lchown(m.join("ts"), Some(1), Some(1)).unwrap();
    fs::write(m.join("shared/new"), "new\n").unwrap();
    for i in 0..10 {
        fs::write(m.join(format!("n{i:02}")), "n\n").unwrap();
    }
    fs::create_dir(m.join("nd")).unwrap();
}

/// On two filesystems, mounted with `opts`: numbers unique, and kept across copy-up, remount
/// and the rotation of the upper into the lowers.
fn two_fs_numbers_hold(opts: &str, what: &str) {
    let t = tempdir();
    // Declared after the tmpfs guard inside `fx`, so the mounts drop before it.
    let fx = two_fs_fixture(t.path());
    let lay = &fx.lay;
    let mnt = lay.mnt.clone();
    let mut m = lay.mount_ufs(opts);
    let w0 = assert_ino_rules(&mnt, &format!("{what}, fresh mount"));
    two_fs_copy_ups(&mnt);
    let w1 = assert_ino_rules(&mnt, &format!("{what}, after copy-ups"));
    assert_same_numbers(&w0, &w1, &format!("{what}, copy-up"));
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs(opts);
    let w2 = assert_ino_rules(&mnt, &format!("{what}, after remount"));
    assert_same_numbers(&w1, &w2, &format!("{what}, remount"));
    unmount_and_wait(&mut m);
    drop(m);
    let rot = lay.rotated("rot");
    let m = rot.mount_ufs(opts);
    let w3 = assert_ino_rules(&mnt, &format!("{what}, rotated"));
    assert_same_numbers(&without_root(&w2), &w3, &format!("{what}, rotation"));
    drop(m);
}

#[test]
fn inode_numbers_unique_and_stable_across_two_filesystems() {
    if skip("inode_numbers_unique_and_stable_across_two_filesystems") {
        return;
    }
    two_fs_numbers_hold("", "two filesystems");
}

/// Like the kernel, which finds a copy's number through its origin whatever `xino` says,
/// numbers survive a remount with `xino=off` (DIFFERENCES.md, "`xino=off`").
#[test]
fn inode_numbers_unique_with_xino_off() {
    if skip("inode_numbers_unique_with_xino_off") {
        return;
    }
    two_fs_numbers_hold("xino=off", "xino=off");
}
