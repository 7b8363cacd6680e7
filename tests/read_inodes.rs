//! Read-side semantics of ufs, checked through real mounts: inode numbers, unique across
//! layers whose raw numbers collide, consistent between readdir and stat, and stable across
//! cache drops and remounts.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;

// ---------------------------------------------------------------------------------------------
// Inode numbers
// ---------------------------------------------------------------------------------------------

/// Three lowers on three filesystems (two fresh tmpfs, whose inode numbers both start at 1, and
/// the disk) plus an upper on the disk.
struct InoSetup {
    _tmp1: TmpfsMount,
    _tmp2: TmpfsMount,
    layers: Vec<PathBuf>,
    opts: String,
    mnt: PathBuf,
}

fn ino_setup(base: &Path) -> InoSetup {
    let t1 = TmpfsMount::mount(&base.join("t1"), 32);
    let t2 = TmpfsMount::mount(&base.join("t2"), 32);
    let l0 = mkdirs(&t1.dir.join("l"));
    let l1 = mkdirs(&t2.dir.join("l"));
    let l2 = mkdirs(&base.join("disk/l"));
    let up = mkdirs(&base.join("disk/up"));
    let wk = mkdirs(&base.join("disk/wk"));
    for (tag, dir) in [("a", &l0), ("b", &l1), ("c", &l2), ("u", &up)] {
        for i in 0..150 {
            fs::write(dir.join(format!("{tag}{i}")), tag).expect("write");
        }
        for i in 0..5 {
            let sub = mkdirs(&dir.join(format!("shared/sub{i}")));
            for j in 0..10 {
                fs::write(sub.join(format!("{tag}{j}")), tag).expect("write");
            }
            std::os::unix::fs::symlink("../x", sub.join(format!("{tag}link"))).expect("symlink");
        }
    }
    let opts = format!(
        "lowerdir={}:{}:{},upperdir={},workdir={}",
        l0.display(),
        l1.display(),
        l2.display(),
        up.display(),
        wk.display()
    );
    InoSetup {
        _tmp1: t1,
        _tmp2: t2,
        layers: vec![l0, l1, l2, up],
        opts,
        mnt: mkdirs(&base.join("m")),
    }
}

/// (dev, ino) of every entry under `root`, root included.
fn raw_inodes(root: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        out.push((md.dev(), md.ino()));
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// Walks a mount: path -> st_ino, checking on the way that readdir's d_ino equals st_ino and
/// that every st_dev is the mount's own.
fn mount_inodes(mnt: &Path, layer_devs: &HashSet<u64>) -> BTreeMap<String, u64> {
    let root_md = fs::symlink_metadata(mnt).expect("lstat mount root");
    let dev = root_md.dev();
    assert!(
        !layer_devs.contains(&dev),
        "the mount reports a layer's st_dev {dev}"
    );
    let mut out = BTreeMap::new();
    out.insert(String::new(), root_md.ino());
    let mut bad = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(mnt.join(&rel)).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let crel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            if md.ino() != e.ino() {
                bad.push(format!("/{crel}: d_ino {} != st_ino {}", e.ino(), md.ino()));
            }
            if md.dev() != dev {
                bad.push(format!("/{crel}: st_dev {} != mount's {dev}", md.dev()));
            }
            if md.is_dir() {
                stack.push(crel.clone());
            }
            out.insert(crel, md.ino());
        }
    }
    assert!(
        bad.is_empty(),
        "{} inconsistencies, first: {:#?}",
        bad.len(),
        &bad[..bad.len().min(8)]
    );
    out
}

fn assert_unique(inos: &BTreeMap<String, u64>) {
    let mut seen: HashMap<u64, &str> = HashMap::new();
    let mut dups = Vec::new();
    for (p, ino) in inos {
        if let Some(prev) = seen.insert(*ino, p) {
            dups.push(format!("/{prev} and /{p} share st_ino {ino}"));
        }
    }
    assert!(
        dups.is_empty(),
        "{} duplicate inode numbers, first: {:#?}",
        dups.len(),
        &dups[..dups.len().min(8)]
    );
}

fn layer_devs(layers: &[PathBuf]) -> HashSet<u64> {
    layers
        .iter()
        .map(|l| fs::metadata(l).expect("stat layer").dev())
        .collect()
}

#[test]
fn inode_numbers_unique_consistent_and_stable() {
    if skip("inode_numbers_unique_consistent_and_stable") {
        return;
    }
    let t = tempdir();
    let s = ino_setup(t.path());
    // The precondition that makes this test meaningful: raw numbers collide across layers.
    let a: HashSet<u64> = raw_inodes(&s.layers[0])
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let b: HashSet<u64> = raw_inodes(&s.layers[1])
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let collisions = a.intersection(&b).count();
    assert!(
        collisions > 0,
        "expected raw inode numbers to collide between the two tmpfs layers"
    );

    let _m = UfsMount::mount(&s.opts, &s.mnt);
    let devs = layer_devs(&s.layers);
    let before = mount_inodes(&s.mnt, &devs);
    assert!(
        before.len() > 4 * 150,
        "walk saw too few entries: {}",
        before.len()
    );
    assert_unique(&before);

    drop_caches();
    let after = mount_inodes(&s.mnt, &devs);
    let changed: Vec<String> = before
        .iter()
        .filter(|(p, i)| after.get(*p) != Some(i))
        .take(8)
        .map(|(p, i)| format!("/{p}: {i} -> {:?}", after.get(p)))
        .collect();
    assert!(
        changed.is_empty(),
        "inode numbers changed after drop_caches: {changed:#?}"
    );
    assert_eq!(before.len(), after.len());
}

#[test]
fn inode_numbers_stable_across_remount() {
    if skip("inode_numbers_stable_across_remount") {
        return;
    }
    let t = tempdir();
    let s = ino_setup(t.path());
    let devs = layer_devs(&s.layers);
    let mut m = UfsMount::mount(&s.opts, &s.mnt);
    let before = mount_inodes(&s.mnt, &devs);
    m.unmount();
    drop(m);
    let _m = UfsMount::mount(&s.opts, &s.mnt);
    let after = mount_inodes(&s.mnt, &devs);
    let changed: Vec<String> = before
        .iter()
        .filter(|(p, i)| after.get(*p) != Some(i))
        .take(8)
        .map(|(p, i)| format!("/{p}: {i} -> {:?}", after.get(p)))
        .collect();
    assert!(
        changed.is_empty(),
        "SEMANTICS: st_ino is stable across unmount/remount; changed: {changed:#?}"
    );
}
