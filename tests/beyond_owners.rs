//! Features beyond the kernel's defaults, proved through real mounts: the owner-squashing
//! options (`squash_to_root`, `squash_to_uid=`/`squash_to_gid=`) and the id mappings
//! (`uidmapping=`/`gidmapping=`, fuse-overlayfs's options).
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
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use beyond_support::*;
use common::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// Owner squashing
// ---------------------------------------------------------------------------------------------

fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    let mut v = vec![(String::new(), lmeta(root).uid(), lmeta(root).gid())];
    for p in all_paths(root) {
        let md = lmeta(&root.join(&p));
        v.push((p, md.uid(), md.gid()));
    }
    v
}

#[test]
fn squash_options_report_one_owner() {
    if skip("squash_options_report_one_owner") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    for (name, uid, gid) in [
        ("f0", 0, 0),
        ("f1", 1000, 1000),
        ("f2", 65534, 65534),
        ("d/x", 42, 43),
    ] {
        let p = put(l, name, "x\n");
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::lchown(l.join("d"), Some(7), Some(8)).unwrap();
    std::os::unix::fs::symlink("f1", l.join("s")).unwrap();
    std::os::unix::fs::lchown(l.join("s"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(&lay.upper, Some(5), Some(6)).unwrap();
    for (opts, uid, gid) in [
        ("squash_to_root", 0u32, 0u32),
        ("squash_to_uid=1234,squash_to_gid=5678", 1234, 5678),
    ] {
        let _m = lay.mount_ufs(opts);
        let mnt = &lay.mnt;
        // Something new and something copied up as well.
        fs::write(mnt.join(format!("new-{uid}")), "n\n").unwrap();
        std::os::unix::fs::chown(mnt.join("f2"), Some(65534), Some(100)).unwrap();
        let wrong: Vec<_> = owners(mnt)
            .into_iter()
            .filter(|(_, u, g)| (*u, *g) != (uid, gid))
            .collect();
        assert!(
            wrong.is_empty(),
            "-o {opts}: entries not shown as {uid}:{gid}: {wrong:?}"
        );
        let open = fs::File::open(mnt.join("f1")).unwrap().metadata().unwrap();
        assert_eq!(
            (open.uid(), open.gid()),
            (uid, gid),
            "-o {opts}: fstat of an open file"
        );
        let owned: Vec<_> = fs::read_dir(mnt)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .map(|md| (md.uid(), md.gid()))
            .filter(|o| *o != (uid, gid))
            .collect();
        assert!(
            owned.is_empty(),
            "-o {opts}: readdir entries' owners {owned:?}"
        );
        assert_ino_rules(mnt, &format!("-o {opts}"));
    }
    // The squashing is a view: the real owners are unchanged.
    assert_eq!(lmeta(&l.join("f1")).uid(), 1000);
    assert_eq!(lmeta(&lay.upper.join("f2")).gid(), 100);
}

/// `uidmapping=`/`gidmapping=` (fuse-overlayfs's options): disk ids in a range show as the
/// mount's ids, others as 65534; owners set through the mount (`chown`, new entries, copy-ups)
/// land on disk as the mapped-back ids, so a later mount shows them the same.
#[test]
fn id_mappings_translate_owners_both_ways() {
    if skip("id_mappings_translate_owners_both_ways") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    for (name, uid, gid) in [
        ("root-owned", 100_000, 100_000),
        ("user", 101_000, 101_005),
        ("outside", 5, 6),
        ("sgid/x", 100_042, 100_043),
    ] {
        let p = put(l, name, "x\n");
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::lchown(l.join("sgid"), Some(100_000), Some(100_777)).unwrap();
    chmod(&l.join("sgid"), 0o2775).unwrap();
    let opts = "uidmapping=100000:0:65536,gidmapping=100000:0:65536";
    let shown = |m: &Path, n: &str| {
        let md = lmeta(&m.join(n));
        (md.uid(), md.gid())
    };
    let on_disk = |n: &str| {
        let md = lmeta(&lay.upper.join(n));
        (md.uid(), md.gid())
    };
    {
        let _m = lay.mount_ufs(opts);
        let mnt = &lay.mnt;
        assert_eq!(shown(mnt, "root-owned"), (0, 0));
        assert_eq!(shown(mnt, "user"), (1000, 1005));
        assert_eq!(
            shown(mnt, "outside"),
            (65534, 65534),
            "an id outside the ranges"
        );
        assert_eq!(shown(mnt, "sgid/x"), (42, 43));
        // Owners set through the mount are mount ids.
        std::os::unix::fs::chown(mnt.join("user"), Some(7), Some(8)).unwrap();
        assert_eq!(shown(mnt, "user"), (7, 8));
        assert_eq!(on_disk("user"), (100_007, 100_008));
        // A new entry is owned by the caller (root here: mount id 0), or by the group of a
        // setgid parent.
        fs::write(mnt.join("new"), "n\n").unwrap();
        assert_eq!(shown(mnt, "new"), (0, 0));
        assert_eq!(on_disk("new"), (100_000, 100_000));
        fs::create_dir(mnt.join("sgid/sub")).unwrap();
        assert_eq!(shown(mnt, "sgid/sub"), (0, 777));
        assert_eq!(on_disk("sgid/sub"), (100_000, 100_777));
        // A copy-up keeps the disk owner.
        append(&mnt.join("root-owned"), b"more\n").unwrap();
        assert_eq!(on_disk("root-owned"), (100_000, 100_000));
        let open = fs::File::open(mnt.join("sgid/x"))
            .unwrap()
            .metadata()
            .unwrap();
        assert_eq!((open.uid(), open.gid()), (42, 43), "fstat of an open file");
    }
    // Mounted again, and without the mapping: the disk ids.
    {
        let _m = lay.mount_ufs(opts);
        assert_eq!(shown(&lay.mnt, "user"), (7, 8));
        assert_eq!(shown(&lay.mnt, "new"), (0, 0));
    }
    let _m = lay.mount_ufs("");
    assert_eq!(shown(&lay.mnt, "user"), (100_007, 100_008));
    assert_eq!(shown(&lay.mnt, "root-owned"), (100_000, 100_000));
}
