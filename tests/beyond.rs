//! Features beyond the kernel's defaults, proved through real mounts: directory rename through
//! redirect records, stable inode numbers, hard links kept by the index, metadata-only copy-up,
//! and the owner-squashing options. Where the kernel has the feature, the same operations run on
//! kernel overlayfs (mounted with that feature on) over identical layers and the trees are
//! compared, and the kernel mounts ufs's upper (and, for the index, its workdir) afterwards.
//!
//! Every tree these tests walk is also checked for the inode-number rules of SEMANTICS.md
//! (`beyond_support::ino_violations`): readdir's `d_ino` equals `st_ino`, one `st_dev`, and
//! names that share an `st_ino` are hard links of one file (same content and link count).

#[path = "common/beyond_support.rs"]
mod beyond_support;
mod common;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use beyond_support::*;
use common::*;
use write_support::*;

/// The kernel's features when it is the oracle for directory renames (module defaults here
/// are all off; `redirect_dir=on` is the feature under test).
const K_REDIRECT: &str = "redirect_dir=on,index=off,metacopy=off";

fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn lstat_errno(p: &Path) -> Option<String> {
    fs::symlink_metadata(p).err().map(|e| errno_str(&e))
}

// ---------------------------------------------------------------------------------------------
// 1. Directory rename through redirect records
// ---------------------------------------------------------------------------------------------

const BIG_FILES: usize = 10_000;

fn big_name(i: usize) -> String {
    format!("f{i:05}")
}

fn big_content(i: usize) -> String {
    format!("content of file {i}\n")
}

/// Reads every `step`-th file of the big directory at `dir`; returns what is wrong.
fn check_big_dir(dir: &Path, step: usize) -> Vec<String> {
    let mut bad = Vec::new();
    for i in (0..BIG_FILES).step_by(step) {
        let p = dir.join(big_name(i));
        match fs::read_to_string(&p) {
            Ok(s) if s == big_content(i) => {}
            Ok(s) => bad.push(format!("{}: read {s:?}", p.display())),
            Err(e) => bad.push(format!("{}: {e}", p.display())),
        }
        if bad.len() > 5 {
            break;
        }
    }
    match fs::read_to_string(dir.join("deep/x")) {
        Ok(s) if s == "deep\n" => {}
        other => bad.push(format!("{}/deep/x: {other:?}", dir.display())),
    }
    bad
}

#[test]
fn dir_rename_of_10000_files_moves_only_the_directory() {
    if skip("dir_rename_of_10000_files_moves_only_the_directory") {
        return;
    }
    let t = tempdir();
    let base = t.path();
    // The 10,000 files live on a tmpfs (fast to create); the upper is on the disk.
    let tl = TmpfsMount::mount(&base.join("tl"), 128);
    let lower = mkdirs(&tl.dir.join("l"));
    let big = mkdirs(&lower.join("big"));
    for i in 0..BIG_FILES {
        fs::write(big.join(big_name(i)), big_content(i)).expect("write lower file");
    }
    put(&lower, "big/deep/x", "deep\n");
    put(&lower, "other/o", "o\n");
    let lay = Layout::with_lowers(base, vec![lower.clone()]);
    let mut m = lay.mount_ufs("");
    let mnt = lay.mnt.clone();
    assert_eq!(
        fs::read_dir(mnt.join("big")).unwrap().count(),
        BIG_FILES + 1,
        "the lower big/ before the rename"
    );

    let big_ino = lmeta(&mnt.join("big")).ino();
    fs::rename(mnt.join("big"), mnt.join("big2"))
        .unwrap_or_else(|e| panic!("rename big -> big2 through ufs: {e}"));
    assert_eq!(
        lmeta(&mnt.join("big2")).ino(),
        big_ino,
        "st_ino after the rename"
    );
    let upper_paths = all_paths(&lay.upper);
    assert_eq!(
        upper_paths,
        vec!["big".to_string(), "big2".to_string()],
        "after renaming a directory of {BIG_FILES} lower files the upper must hold only the \
         renamed directory and the whiteout of its old name (no copies of its files)"
    );
    assert!(
        is_whiteout(&lay.upper.join("big")),
        "upper/big must be a whiteout"
    );
    assert_eq!(
        get_xattr(&lay.upper.join("big2"), "trusted.overlay.redirect")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(|e| errno_str(&e)),
        Ok("big".to_string()),
        "redirect record of the renamed directory"
    );
    assert_eq!(lstat_errno(&mnt.join("big")).as_deref(), Some("ENOENT"));
    let names = list_names(&mnt.join("big2"));
    assert_eq!(names.len(), BIG_FILES + 1, "names under big2");
    assert!(names.contains(&big_name(0)) && names.contains(&big_name(BIG_FILES - 1)));
    let bad = check_big_dir(&mnt.join("big2"), 1);
    assert!(bad.is_empty(), "reading all files under big2: {bad:?}");

    // Into another (lower) directory: an absolute redirect.
    fs::rename(mnt.join("big2"), mnt.join("other/big3"))
        .unwrap_or_else(|e| panic!("rename big2 -> other/big3: {e}"));
    assert_eq!(
        all_paths(&lay.upper),
        vec!["big".to_string(), "other".into(), "other/big3".into()],
        "after the second rename the upper holds the two directories and the old whiteout only"
    );
    assert_eq!(
        redirects(&lay.upper),
        std::collections::BTreeMap::from([("other/big3".to_string(), "/big".to_string())]),
        "an absolute redirect once the directory left its parent"
    );
    assert_eq!(list_names(&mnt.join("other")), vec!["big3", "o"]);
    assert_eq!(
        fs::read_dir(mnt.join("other/big3")).unwrap().count(),
        BIG_FILES + 1
    );
    let bad = check_big_dir(&mnt.join("other/big3"), 97);
    assert!(bad.is_empty(), "reading under other/big3: {bad:?}");
    for gone in ["big", "big2"] {
        assert_eq!(
            lstat_errno(&mnt.join(gone)).as_deref(),
            Some("ENOENT"),
            "{gone}"
        );
    }

    assert_eq!(
        lmeta(&mnt.join("other/big3")).ino(),
        big_ino,
        "the moved directory keeps its st_ino"
    );

    // A new mount follows the records.
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_eq!(list_names(&mnt), vec!["other"]);
    assert_eq!(
        fs::read_dir(mnt.join("other/big3")).unwrap().count(),
        BIG_FILES + 1,
        "after remount"
    );
    let bad = check_big_dir(&mnt.join("other/big3"), 1);
    assert!(bad.is_empty(), "after remount: {bad:?}");
    assert_eq!(
        lmeta(&mnt.join("other/big3")).ino(),
        big_ino,
        "the moved directory keeps its st_ino after a remount"
    );
    assert_ino_rules(
        &mnt,
        "ufs after renaming the big directory twice and remounting",
    );
    unmount_and_wait(&mut m);
    drop(m);

    // The kernel follows the same records (its lower on the tmpfs, ufs's upper on the disk).
    let w = lay.fresh_work("k");
    let _k = lay.mount_kernel(&w, K_REDIRECT);
    assert_eq!(list_names(&mnt), vec!["other"], "kernel on ufs's upper");
    assert_eq!(list_names(&mnt.join("other")), vec!["big3", "o"], "kernel");
    assert_eq!(
        fs::read_dir(mnt.join("other/big3")).unwrap().count(),
        BIG_FILES + 1,
        "kernel on ufs's upper"
    );
    let bad = check_big_dir(&mnt.join("other/big3"), 1);
    assert!(bad.is_empty(), "kernel on ufs's upper: {bad:?}");
}

/// Two lowers and an upper for the rename sequence; all times fixed and old.
fn rename_fixture(base: &Path) -> Layout {
    let since = now_secs() - 1;
    let lay = Layout::new(base, 2);
    let (l1, l2) = (&lay.lowers[0], &lay.lowers[1]);
    put(l1, "big/a", "a1\n");
    put(l1, "big/sub/c", "c1\n");
    put(l1, "other/o", "o\n");
    put(l1, "keep", "k\n");
    put(l2, "big/a", "hidden a\n");
    put(l2, "big/b", "b2\n");
    put(l2, "big/sub/d", "d2\n");
    put(l2, "other/p", "p\n");
    put(l2, "lonely/x", "x\n");
    put(l1, "ex1/f1", "f1\n");
    put(l2, "ex1/f2", "f2\n");
    put(l2, "ex2/g", "g\n");
    put(l1, "emp/z1", "z1\n");
    put(l2, "emp/z2", "z2\n");
    put(&lay.upper, "updir/u", "u\n");
    for d in [l1, l2, &lay.upper] {
        settle_times(d, since);
    }
    lay
}

type StepFn = fn(&Path) -> io::Result<String>;

/// The rename sequence: each step with the outcome it must have (ufs and the kernel alike).
fn rename_steps() -> Vec<(&'static str, &'static str, StepFn)> {
    fn mv(m: &Path, a: &str, b: &str) -> io::Result<String> {
        done(fs::rename(m.join(a), m.join(b)))
    }
    vec![
        ("rename big big2", "ok", |m| mv(m, "big", "big2")),
        ("lookup old name big", "ENOENT", |m| {
            done(fs::symlink_metadata(m.join("big")))
        }),
        ("mkdir big over the whiteout", "ok", |m| {
            done(fs::create_dir(m.join("big")))
        }),
        ("list the new big", "ok", |m| names_of(&m.join("big"))),
        ("rmdir the new big", "ok", |m| {
            done(fs::remove_dir(m.join("big")))
        }),
        ("rename big2 back to big", "ok", |m| mv(m, "big2", "big")),
        ("read big/b", "ok: b2\n", |m| {
            fs::read_to_string(m.join("big/b"))
        }),
        ("rename big big2 again", "ok", |m| mv(m, "big", "big2")),
        ("rename big2/sub big2/sub2", "ok", |m| {
            mv(m, "big2/sub", "big2/sub2")
        }),
        ("read big2/sub2/d", "ok: d2\n", |m| {
            fs::read_to_string(m.join("big2/sub2/d"))
        }),
        ("rename big2/sub2 subtop", "ok", |m| {
            mv(m, "big2/sub2", "subtop")
        }),
        ("read subtop/c", "ok: c1\n", |m| {
            fs::read_to_string(m.join("subtop/c"))
        }),
        ("rename subtop big2/sub", "ok", |m| {
            mv(m, "subtop", "big2/sub")
        }),
        ("rename big2 other/big3", "ok", |m| {
            mv(m, "big2", "other/big3")
        }),
        ("read other/big3/sub/d", "ok: d2\n", |m| {
            fs::read_to_string(m.join("other/big3/sub/d"))
        }),
        ("rename other other2", "ok", |m| mv(m, "other", "other2")),
        ("read other2/big3/sub/c", "ok: c1\n", |m| {
            fs::read_to_string(m.join("other2/big3/sub/c"))
        }),
        ("list other2", "ok: big3,o,p", |m| {
            names_of(&m.join("other2"))
        }),
        ("rename other2/big3 big", "ok", |m| {
            mv(m, "other2/big3", "big")
        }),
        ("rename big/b b_out", "ok", |m| mv(m, "big/b", "b_out")),
        ("rmdir big (not empty)", "ENOTEMPTY", |m| {
            done(fs::remove_dir(m.join("big")))
        }),
        ("create big/new1", "ok", |m| {
            done(fs::write(m.join("big/new1"), "n1\n"))
        }),
        ("create big/sub/new2", "ok", |m| {
            done(fs::write(m.join("big/sub/new2"), "n2\n"))
        }),
        ("mkdir big/nd", "ok", |m| {
            done(fs::create_dir(m.join("big/nd")))
        }),
        ("unlink big/a", "ok", |m| {
            done(fs::remove_file(m.join("big/a")))
        }),
        ("unlink big/new1", "ok", |m| {
            done(fs::remove_file(m.join("big/new1")))
        }),
        ("rmdir big/nd", "ok", |m| {
            done(fs::remove_dir(m.join("big/nd")))
        }),
        ("list big", "ok: sub", |m| names_of(&m.join("big"))),
        ("read b_out", "ok: b2\n", |m| {
            fs::read_to_string(m.join("b_out"))
        }),
        // The mid-sequence cross-check (remount, kernel on ufs's upper) runs after this step.
        ("unlink big/sub/c", "ok", |m| {
            done(fs::remove_file(m.join("big/sub/c")))
        }),
        ("unlink big/sub/d", "ok", |m| {
            done(fs::remove_file(m.join("big/sub/d")))
        }),
        ("unlink big/sub/new2", "ok", |m| {
            done(fs::remove_file(m.join("big/sub/new2")))
        }),
        ("rmdir big/sub", "ok", |m| {
            done(fs::remove_dir(m.join("big/sub")))
        }),
        ("rmdir big", "ok", |m| done(fs::remove_dir(m.join("big")))),
        ("lookup big after rmdir", "ENOENT", |m| {
            done(fs::symlink_metadata(m.join("big")))
        }),
        ("mkdir big again", "ok", |m| {
            done(fs::create_dir(m.join("big")))
        }),
        ("list new big", "ok", |m| names_of(&m.join("big"))),
        // Exchanging two directories with lower parts, and replacing an emptied merged one.
        ("exchange ex1 ex2", "ok", |m| {
            done(renameat2(
                &m.join("ex1"),
                &m.join("ex2"),
                libc::RENAME_EXCHANGE,
            ))
        }),
        ("list ex1", "ok: g", |m| names_of(&m.join("ex1"))),
        ("list ex2", "ok: f1,f2", |m| names_of(&m.join("ex2"))),
        ("unlink emp/z1", "ok", |m| {
            done(fs::remove_file(m.join("emp/z1")))
        }),
        ("unlink emp/z2", "ok", |m| {
            done(fs::remove_file(m.join("emp/z2")))
        }),
        ("rename ex2 over the empty emp", "ok", |m| {
            mv(m, "ex2", "emp")
        }),
        ("list emp", "ok: f1,f2", |m| names_of(&m.join("emp"))),
        ("lookup ex2", "ENOENT", |m| {
            done(fs::symlink_metadata(m.join("ex2")))
        }),
        ("read emp/f2", "ok: f2\n", |m| {
            fs::read_to_string(m.join("emp/f2"))
        }),
        // A moved directory onto a name whose lower directories must not merge into it.
        ("rmdir the newest big", "ok", |m| {
            done(fs::remove_dir(m.join("big")))
        }),
        ("rename emp big", "ok", |m| mv(m, "emp", "big")),
        ("list big (was emp)", "ok: f1,f2", |m| {
            names_of(&m.join("big"))
        }),
        ("lookup big/sub", "ENOENT", |m| {
            done(fs::symlink_metadata(m.join("big/sub")))
        }),
        // A lower-only directory moved to a new name, emptied and removed: nothing of it
        // may come back at either name.
        ("rename lonely lonely2", "ok", |m| {
            mv(m, "lonely", "lonely2")
        }),
        ("unlink lonely2/x", "ok", |m| {
            done(fs::remove_file(m.join("lonely2/x")))
        }),
        ("rmdir lonely2", "ok", |m| {
            done(fs::remove_dir(m.join("lonely2")))
        }),
        ("lookup lonely", "ENOENT", |m| {
            done(fs::symlink_metadata(m.join("lonely")))
        }),
        ("mkdir lonely2 again", "ok", |m| {
            done(fs::create_dir(m.join("lonely2")))
        }),
        ("list lonely2", "ok", |m| names_of(&m.join("lonely2"))),
        (
            "list root",
            "ok: b_out,big,ex1,keep,lonely2,other2,updir",
            names_of,
        ),
    ]
}

const MID_STEP: &str = "read b_out";

/// Kind of every path of an upper layer.
fn upper_shape(upper: &Path) -> Vec<String> {
    all_paths(upper)
        .into_iter()
        .map(|p| {
            let full = upper.join(&p);
            let kind = if is_whiteout(&full) {
                "whiteout"
            } else if lmeta(&full).is_dir() {
                "dir"
            } else {
                "file"
            };
            format!("{p}:{kind}")
        })
        .collect()
}

/// Runs step `i` on the kernel mount of `kl` and then on the ufs mount of `ul` (identical
/// layers) and returns every disagreement: outcomes (with each other and with `want`), merged
/// trees (times set after `since` blurred), which names share an `st_ino`, the inode-number
/// rules on ufs, and with `upper_too` the upper layers' shapes and redirect records.
#[allow(clippy::too_many_arguments)]
fn lockstep(
    i: usize,
    name: &str,
    want: &str,
    run: StepFn,
    ul: &Layout,
    kl: &Layout,
    since: i64,
    upper_too: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    let kr = outcome(&run(&kl.mnt));
    let ur = outcome(&run(&ul.mnt));
    if kr != ur {
        bad.push(format!("step {i} `{name}`: kernel {kr:?}, ufs {ur:?}"));
    }
    if ur != want {
        bad.push(format!("step {i} `{name}`: ufs {ur:?}, expected {want:?}"));
    }
    let ks = blur_recent(&snapshot(&kl.mnt), since);
    let us = snapshot(&ul.mnt);
    assert_consistent(&us, &format!("ufs after step {i} `{name}`"));
    if let Err(d) = compare("ufs", &blur_recent(&us, since), "kernel", &ks) {
        bad.push(format!("after step {i} `{name}`: {d}"));
    }
    let uw = ino_walk(&ul.mnt);
    let viol = ino_violations(&uw);
    if !viol.is_empty() {
        bad.push(format!(
            "after step {i} `{name}`: ufs inode numbers: {viol:?}"
        ));
    }
    let (ug, kg) = (ino_groups(&uw), ino_groups(&ino_walk(&kl.mnt)));
    if ug != kg {
        let only_u: Vec<_> = ug.difference(&kg).collect();
        let only_k: Vec<_> = kg.difference(&ug).collect();
        bad.push(format!(
            "after step {i} `{name}`: names sharing an st_ino: only ufs {only_u:?}, only kernel \
             {only_k:?}"
        ));
    }
    if upper_too {
        let (ur, kr) = (redirects(&ul.upper), redirects(&kl.upper));
        if ur != kr {
            bad.push(format!(
                "after step {i} `{name}`: redirect records in the upper: ufs {ur:?}, kernel {kr:?}"
            ));
        }
        let (us, ks) = (upper_shape(&ul.upper), upper_shape(&kl.upper));
        if us != ks {
            bad.push(format!(
                "after step {i} `{name}`: upper layers differ: ufs {us:?}, kernel {ks:?}"
            ));
        }
    }
    bad
}

/// Unmounts `m`, and checks that ufs mounted again, and the kernel (`kernel_features`, with
/// workdir `kernel_work`, or a fresh one `wk-NAME`) mounted on ufs's layers, show what `m`
/// showed, with the same names sharing an `st_ino`. Returns a new ufs mount.
fn cross_check(
    lay: &Layout,
    mut m: UfsMount,
    extra: &str,
    kernel_features: &str,
    kernel_work: Option<&Path>,
    name: &str,
) -> UfsMount {
    let shown = snapshot(&lay.mnt);
    let walk = assert_ino_rules(&lay.mnt, &format!("ufs before unmount ({name})"));
    unmount_and_wait(&mut m);
    drop(m);
    let mut again = lay.mount_ufs(extra);
    let s = snapshot(&lay.mnt);
    assert_consistent(&s, "ufs after remount");
    assert_same_tree(
        "remounted",
        &s,
        "before",
        &shown,
        &format!("{name}: ufs remounted"),
    );
    let w = assert_ino_rules(&lay.mnt, &format!("ufs remounted ({name})"));
    let changed = ino_changes(&walk, &w);
    assert!(
        changed.is_empty(),
        "{name}: inode numbers changed by a remount: {changed:?}"
    );
    unmount_and_wait(&mut again);
    drop(again);
    let work = match kernel_work {
        Some(w) => w.to_path_buf(),
        None => lay.fresh_work(name),
    };
    let k = lay.mount_kernel(&work, kernel_features);
    let kv = try_snapshot(&lay.mnt).unwrap_or_else(|e| panic!("{name}: walking the kernel: {e}"));
    let kw = ino_walk(&lay.mnt);
    drop(k);
    assert_eq!(
        ino_groups(&kw),
        ino_groups(&walk),
        "{name}: names sharing an st_ino, kernel on ufs's layers vs ufs"
    );
    assert_same_tree(
        "kernel",
        &kv,
        "ufs",
        &shown,
        &format!("{name}: kernel ({kernel_features}) on ufs's upper with a fresh workdir"),
    );
    lay.mount_ufs(extra)
}

#[test]
fn dir_rename_steps_match_kernel_redirect_dir() {
    if skip("dir_rename_steps_match_kernel_redirect_dir") {
        return;
    }
    let t = tempdir();
    let since = now_secs() - 1;
    let ul = rename_fixture(&t.path().join("u"));
    let kl = rename_fixture(&t.path().join("k"));
    let kwork = kl.work.clone();
    let _k = kl.mount_kernel(&kwork, K_REDIRECT);
    let mut u = ul.mount_ufs("");
    let mut bad = Vec::new();
    for (i, (name, want, run)) in rename_steps().into_iter().enumerate() {
        bad.extend(lockstep(i, name, want, run, &ul, &kl, since, true));
        if name == "rename big big2" {
            assert!(
                is_whiteout(&ul.upper.join("big")),
                "the old name must be a whiteout in ufs's upper"
            );
        }
        if name == MID_STEP {
            assert!(
                bad.is_empty(),
                "before the mid-sequence cross-check:\n{}",
                bad.join("\n")
            );
            // The directory sits at its old name with an absolute redirect, merged with the
            // lower parts it had: remount and the kernel must follow the record the same way.
            assert_eq!(
                redirects(&ul.upper).get("big").map(String::as_str),
                Some("/big")
            );
            u = cross_check(
                &ul,
                u,
                "",
                "redirect_dir=on,index=off,metacopy=on",
                None,
                "mid",
            );
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreement(s):\n{}",
        bad.len(),
        bad.join("\n")
    );
    let u = cross_check(
        &ul,
        u,
        "",
        "redirect_dir=on,index=off,metacopy=on",
        None,
        "end",
    );
    drop(u);
}

#[test]
fn dir_rename_without_redirect_dir_is_exdev_like_the_kernel() {
    if skip("dir_rename_without_redirect_dir_is_exdev_like_the_kernel") {
        return;
    }
    let t = tempdir();
    let since = now_secs() - 1;
    let ul = rename_fixture(&t.path().join("u"));
    let kl = rename_fixture(&t.path().join("k"));
    let kwork = kl.work.clone();
    let _k = kl.mount_kernel(&kwork, "redirect_dir=off,index=off,metacopy=off");
    let _u = ul.mount_ufs("redirect_dir=off");
    let steps: Vec<(&str, StepFn)> = vec![
        ("rename merged big", |m| {
            done(fs::rename(m.join("big"), m.join("big2")))
        }),
        ("rename merged big into other", |m| {
            done(fs::rename(m.join("big"), m.join("other/big")))
        }),
        ("rename merged big/sub", |m| {
            done(fs::rename(m.join("big/sub"), m.join("big/sub2")))
        }),
        ("rename lower-only lonely", |m| {
            done(fs::rename(m.join("lonely"), m.join("lonely2")))
        }),
        ("rename upper-only updir", |m| {
            done(fs::rename(m.join("updir"), m.join("updir2")))
        }),
        ("mkdir fresh", |m| done(fs::create_dir(m.join("fresh")))),
        ("rename fresh", |m| {
            done(fs::rename(m.join("fresh"), m.join("fresh2")))
        }),
        ("rename file keep", |m| {
            done(fs::rename(m.join("keep"), m.join("kept")))
        }),
    ];
    let mut bad = Vec::new();
    for (i, (name, run)) in steps.iter().enumerate() {
        let kr = outcome(&run(&kl.mnt));
        let ur = outcome(&run(&ul.mnt));
        if kr != ur {
            bad.push(format!("step {i} `{name}`: kernel {kr:?}, ufs {ur:?}"));
        }
        if i < 4 && ur != "EXDEV" {
            bad.push(format!(
                "step {i} `{name}`: ufs with redirect_dir=off said {ur:?}, not EXDEV"
            ));
        }
    }
    let us = snapshot(&ul.mnt);
    if let Err(d) = compare(
        "ufs",
        &blur_recent(&us, since),
        "kernel",
        &blur_recent(&snapshot(&kl.mnt), since),
    ) {
        bad.push(d);
    }
    let r = redirects(&ul.upper);
    if !r.is_empty() {
        bad.push(format!(
            "ufs with redirect_dir=off wrote redirect records: {r:?}"
        ));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert_ino_rules(&ul.mnt, "ufs redirect_dir=off");
}

// ---------------------------------------------------------------------------------------------
// 2. Stable inode numbers
// ---------------------------------------------------------------------------------------------

fn assert_same_numbers(
    before: &std::collections::BTreeMap<String, InoEntry>,
    after: &std::collections::BTreeMap<String, InoEntry>,
    what: &str,
) {
    let changed = ino_changes(before, after);
    assert!(
        changed.is_empty(),
        "{what}: inode numbers changed:\n  {}",
        changed.join("\n  ")
    );
}

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

// ---------------------------------------------------------------------------------------------
// 3. Hard links through the index
// ---------------------------------------------------------------------------------------------

/// `(st_ino, nlink, content)` of each name.
fn link_state(m: &Path, names: &[&str]) -> Vec<(String, u64, u64, String)> {
    names
        .iter()
        .map(|n| {
            let p = m.join(n);
            let md = lmeta(&p);
            (
                n.to_string(),
                md.ino(),
                md.nlink(),
                fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {n}: {e}")),
            )
        })
        .collect()
}

fn assert_linked(m: &Path, names: &[&str], nlink: u64, content: &str, what: &str) {
    let s = link_state(m, names);
    let ok = s
        .iter()
        .all(|(_, ino, n, c)| *ino == s[0].1 && *n == nlink && c == content);
    assert!(
        ok,
        "{what}: expected {names:?} to share one st_ino with nlink {nlink} and content \
         {content:?}, got (name, st_ino, nlink, content) {s:?}"
    );
}

#[test]
fn hard_links_stay_linked_through_the_index() {
    if skip("hard_links_stay_linked_through_the_index") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    put(l, "a", "original\n");
    mkdirs(&l.join("sub"));
    fs::hard_link(l.join("a"), l.join("b")).unwrap();
    fs::hard_link(l.join("a"), l.join("sub/c")).unwrap();
    put(l, "solo", "solo\n");
    put(l, "other", "other\n");
    settle_times(l, now_secs() - 1);
    let mnt = lay.mnt.clone();
    let mut m = lay.mount_ufs("");
    assert_linked(
        &mnt,
        &["a", "b", "sub/c"],
        3,
        "original\n",
        "before any write",
    );

    fs::write(mnt.join("a"), "written via a\n").unwrap();
    assert_linked(
        &mnt,
        &["a", "b", "sub/c"],
        3,
        "written via a\n",
        "after writing via a",
    );
    assert_ino_rules(&mnt, "after writing via a");
    // The kernel's format: one copy, linked in the index under its origin handle and under
    // one of its names in the upper (ufs publishes it under the name the object was last
    // looked up by, which need not be the one written through).
    let index: Vec<_> = fs::read_dir(lay.work.join("index"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        index.len(),
        1,
        "one index entry for the copied-up hard link: {index:?}"
    );
    let published: Vec<&str> = ["a", "b", "sub/c"]
        .into_iter()
        .filter(|n| fs::symlink_metadata(lay.upper.join(n)).is_ok())
        .collect();
    assert_eq!(
        published.len(),
        1,
        "names of the copy in the upper: {published:?}"
    );
    let copy = lay.upper.join(published[0]);
    assert_eq!(
        lmeta(&index[0]).ino(),
        lmeta(&copy).ino(),
        "index entry and copy are one inode"
    );
    assert_eq!(
        lmeta(&copy).nlink(),
        2,
        "real links of the copy: its name and the index entry"
    );
    assert!(
        get_xattr(&copy, "trusted.overlay.origin").is_ok(),
        "origin record"
    );
    let ino_a = lmeta(&mnt.join("a")).ino();

    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_linked(
        &mnt,
        &["a", "b", "sub/c"],
        3,
        "written via a\n",
        "after remount",
    );
    assert_eq!(lmeta(&mnt.join("a")).ino(), ino_a, "st_ino after remount");

    fs::remove_file(mnt.join("b")).unwrap();
    assert_eq!(lstat_errno(&mnt.join("b")).as_deref(), Some("ENOENT"));
    assert_linked(&mnt, &["a", "sub/c"], 2, "written via a\n", "after rm b");

    fs::rename(mnt.join("sub/c"), mnt.join("d")).unwrap();
    fs::write(mnt.join("d"), "written via d\n").unwrap();
    assert_linked(
        &mnt,
        &["a", "d"],
        2,
        "written via d\n",
        "after rename sub/c -> d and a write via d",
    );
    assert_eq!(lmeta(&mnt.join("a")).ino(), ino_a, "st_ino after rename");
    assert_ino_rules(&mnt, "after rename");

    // link(2) of a lower file through the mount.
    fs::hard_link(mnt.join("solo"), mnt.join("solo2")).unwrap();
    assert_linked(
        &mnt,
        &["solo", "solo2"],
        2,
        "solo\n",
        "after link solo solo2",
    );
    fs::write(mnt.join("solo2"), "via solo2\n").unwrap();
    assert_linked(
        &mnt,
        &["solo", "solo2"],
        2,
        "via solo2\n",
        "after a write via solo2",
    );
    // And a new name for the indexed file.
    fs::hard_link(mnt.join("a"), mnt.join("sub/e")).unwrap();
    assert_linked(
        &mnt,
        &["a", "d", "sub/e"],
        3,
        "written via d\n",
        "after link a sub/e",
    );

    let shown = snapshot(&mnt);
    let walk = assert_ino_rules(&mnt, "before unmount");
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_same_tree(
        "remounted",
        &snapshot(&mnt),
        "before",
        &shown,
        "ufs remounted",
    );
    let w = assert_ino_rules(&mnt, "remounted");
    assert_same_numbers(&walk, &w, "hard links, remount");
    unmount_and_wait(&mut m);
    drop(m);

    // The kernel with the index on ufs's own workdir (where the index lives).
    let k = lay.mount_kernel(&lay.work, "index=on,redirect_dir=on,metacopy=on");
    let kv = try_snapshot(&mnt).unwrap_or_else(|e| panic!("walking the kernel: {e}"));
    let kw = ino_walk(&mnt);
    drop(k);
    assert_same_tree(
        "kernel",
        &kv,
        "ufs",
        &shown,
        "kernel index=on,redirect_dir=on on ufs's upper and workdir",
    );
    let kbad = ino_violations(&kw);
    assert!(kbad.is_empty(), "kernel's inode numbers: {kbad:?}");
    assert_eq!(
        ino_groups(&kw),
        ino_groups(&walk),
        "names sharing an st_ino: kernel vs ufs"
    );
    // ufs reads the layers the same after the kernel used them.
    let _m = lay.mount_ufs("");
    assert_same_tree(
        "ufs after kernel",
        &snapshot(&mnt),
        "before",
        &shown,
        "ufs after the kernel",
    );
    assert_ino_rules(&mnt, "ufs after the kernel");
}

/// Lower hard links for the lockstep comparison with the kernel's index.
fn link_fixture(base: &Path) -> Layout {
    let since = now_secs() - 1;
    let lay = Layout::new(base, 1);
    let l = &lay.lowers[0];
    put(l, "a", "original\n");
    mkdirs(&l.join("sub"));
    fs::hard_link(l.join("a"), l.join("b")).unwrap();
    fs::hard_link(l.join("a"), l.join("sub/c")).unwrap();
    put(l, "x", "x\n");
    fs::hard_link(l.join("x"), l.join("sub/y")).unwrap();
    put(l, "solo", "solo\n");
    put(l, "other", "other\n");
    put(l, "keep", "keep\n");
    put(l, "h1", "h\n");
    fs::hard_link(l.join("h1"), l.join("h2")).unwrap();
    fs::hard_link(l.join("h1"), l.join("h3")).unwrap();
    fs::hard_link(l.join("h1"), l.join("h4")).unwrap();
    put(l, "rep", "rep\n");
    settle_times(l, since);
    lay
}

fn rd(m: &Path, n: &str) -> io::Result<String> {
    fs::read_to_string(m.join(n))
}

fn nlink(m: &Path, n: &str) -> io::Result<String> {
    fs::symlink_metadata(m.join(n)).map(|md| md.nlink().to_string())
}

/// Names of a lower hard link removed or replaced before anything copied it up.
fn early_removal_steps() -> Vec<(&'static str, &'static str, StepFn)> {
    vec![
        ("unlink h2 (before any copy-up)", "ok", |m| {
            done(fs::remove_file(m.join("h2")))
        }),
        ("nlink of h1", "ok: 3", |m| nlink(m, "h1")),
        ("rename rep over h3", "ok", |m| {
            done(fs::rename(m.join("rep"), m.join("h3")))
        }),
        ("nlink of h4", "ok: 2", |m| nlink(m, "h4")),
        ("append to h1", "ok", |m| {
            done(append(&m.join("h1"), b"h\n"))
        }),
        ("nlink of h4 after the copy-up", "ok: 2", |m| nlink(m, "h4")),
        ("read h4", "ok: h\nh\n", |m| rd(m, "h4")),
        ("unlink h4", "ok", |m| done(fs::remove_file(m.join("h4")))),
        ("nlink of h1 at last", "ok: 1", |m| nlink(m, "h1")),
    ]
}

fn link_steps() -> Vec<(&'static str, &'static str, StepFn)> {
    vec![
        ("write a", "ok", |m| done(fs::write(m.join("a"), "A1\n"))),
        ("read b", "ok: A1\n", |m| rd(m, "b")),
        ("read sub/c", "ok: A1\n", |m| rd(m, "sub/c")),
        ("unlink b", "ok", |m| done(fs::remove_file(m.join("b")))),
        ("link a b (over its whiteout)", "ok", |m| {
            done(fs::hard_link(m.join("a"), m.join("b")))
        }),
        ("nlink of sub/c", "ok: 3", |m| nlink(m, "sub/c")),
        ("unlink b again", "ok", |m| {
            done(fs::remove_file(m.join("b")))
        }),
        ("rename sub/c d", "ok", |m| {
            done(fs::rename(m.join("sub/c"), m.join("d")))
        }),
        ("append to d", "ok", |m| done(append(&m.join("d"), b"D\n"))),
        ("read a", "ok: A1\nD\n", |m| rd(m, "a")),
        ("link a e", "ok", |m| {
            done(fs::hard_link(m.join("a"), m.join("e")))
        }),
        ("chmod x", "ok", |m| done(chmod(&m.join("x"), 0o600))),
        ("mode of sub/y", "ok: 600", |m| {
            fs::symlink_metadata(m.join("sub/y")).map(|md| format!("{:o}", md.mode() & 0o7777))
        }),
        ("rename sub/y z", "ok", |m| {
            done(fs::rename(m.join("sub/y"), m.join("z")))
        }),
        ("append to z", "ok", |m| done(append(&m.join("z"), b"z\n"))),
        ("read x", "ok: x\nz\n", |m| rd(m, "x")),
        ("rename other over a", "ok", |m| {
            done(fs::rename(m.join("other"), m.join("a")))
        }),
        ("read a (other)", "ok: other\n", |m| rd(m, "a")),
        ("read e", "ok: A1\nD\n", |m| rd(m, "e")),
        ("unlink d", "ok", |m| done(fs::remove_file(m.join("d")))),
        ("unlink e", "ok", |m| done(fs::remove_file(m.join("e")))),
        ("link solo solo2", "ok", |m| {
            done(fs::hard_link(m.join("solo"), m.join("solo2")))
        }),
        ("unlink solo", "ok", |m| {
            done(fs::remove_file(m.join("solo")))
        }),
        ("read solo2", "ok: solo\n", |m| rd(m, "solo2")),
        ("link keep sub/keep2", "ok", |m| {
            done(fs::hard_link(m.join("keep"), m.join("sub/keep2")))
        }),
        ("rename sub/keep2 keep (same file)", "ok", |m| {
            done(fs::rename(m.join("sub/keep2"), m.join("keep")))
        }),
        ("unlink x", "ok", |m| done(fs::remove_file(m.join("x")))),
        (
            "list root",
            "ok: a,h1,h2,h3,h4,keep,rep,solo2,sub,z",
            names_of,
        ),
    ]
}

/// The same hard-link operations on ufs and on the kernel with `index=on`, step by step.
#[test]
fn hard_link_ops_match_kernel_index() {
    if skip("hard_link_ops_match_kernel_index") {
        return;
    }
    link_lockstep(link_steps(), "", "index=on,redirect_dir=on,metacopy=on");
}

/// The kernel (`ovl_nlink_start`) copies a lower hard link up into the index before it
/// whites out or replaces one of its names, so the merged link count drops; it must in ufs too.
#[test]
fn hard_link_names_removed_before_copy_up_keep_nlink() {
    if skip("hard_link_names_removed_before_copy_up_keep_nlink") {
        return;
    }
    link_lockstep(
        early_removal_steps(),
        "",
        "index=on,redirect_dir=on,metacopy=on",
    );
}

/// Runs `steps` on ufs (mounted with `extra`) and the kernel (mounted with `features`, which
/// ufs gets too), comparing after each step, then checks the remount and the cross-mount.
fn link_lockstep(steps: Vec<(&'static str, &'static str, StepFn)>, extra: &str, features: &str) {
    let t = tempdir();
    let since = now_secs() - 1;
    let ul = link_fixture(&t.path().join("u"));
    let kl = link_fixture(&t.path().join("k"));
    let kwork = kl.work.clone();
    let k = kl.mount_kernel(&kwork, features);
    let u = ul.mount_ufs(&join_opts(extra, features));
    let mut bad = Vec::new();
    for (i, (name, want, run)) in steps.into_iter().enumerate() {
        bad.extend(lockstep(i, name, want, run, &ul, &kl, since, false));
    }
    drop(k);
    assert!(
        bad.is_empty(),
        "{} disagreement(s):\n{}",
        bad.len(),
        bad.join("\n")
    );
    let index = features.contains("index=on");
    let work = ul.work.clone();
    let u = cross_check(
        &ul,
        u,
        &join_opts(extra, features),
        features,
        index.then_some(work.as_path()),
        if index { "index" } else { "noindex" },
    );
    drop(u);
}

fn join_opts(a: &str, b: &str) -> String {
    [a, b]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether two names report one inode number.
fn same_ino(m: &Path, a: &str, b: &str) -> io::Result<String> {
    let (x, y) = (lmeta(&m.join(a)).ino(), lmeta(&m.join(b)).ino());
    Ok(if x == y { "same" } else { "differ" }.to_string())
}

fn mode_of(m: &Path, n: &str) -> io::Result<String> {
    fs::symlink_metadata(m.join(n)).map(|md| format!("{:o}", md.mode() & 0o7777))
}

/// Without the index, copying up one name of a lower hard link breaks it away from the others
/// (a new object with its own number), as in the kernel.
fn index_off_link_steps() -> Vec<(&'static str, &'static str, StepFn)> {
    vec![
        ("a and b before", "ok: same", |m| same_ino(m, "a", "b")),
        ("nlink of a before", "ok: 3", |m| nlink(m, "a")),
        ("look up b, then sub/c", "ok: same", |m| {
            same_ino(m, "b", "sub/c")
        }),
        ("write a", "ok", |m| done(fs::write(m.join("a"), "A1\n"))),
        ("read a", "ok: A1\n", |m| rd(m, "a")),
        ("read b", "ok: original\n", |m| rd(m, "b")),
        ("read sub/c", "ok: original\n", |m| rd(m, "sub/c")),
        ("a and b after", "ok: differ", |m| same_ino(m, "a", "b")),
        ("b and sub/c after", "ok: same", |m| {
            same_ino(m, "b", "sub/c")
        }),
        ("nlink of a", "ok: 1", |m| nlink(m, "a")),
        ("nlink of b", "ok: 3", |m| nlink(m, "b")),
        ("chmod sub/c", "ok", |m| {
            done(chmod(&m.join("sub/c"), 0o600))
        }),
        ("mode of b", "ok: 644", |m| mode_of(m, "b")),
        ("mode of sub/c", "ok: 600", |m| mode_of(m, "sub/c")),
        ("link b e", "ok", |m| {
            done(fs::hard_link(m.join("b"), m.join("e")))
        }),
        ("b and e", "ok: same", |m| same_ino(m, "b", "e")),
        ("nlink of e", "ok: 2", |m| nlink(m, "e")),
        ("append to e", "ok", |m| done(append(&m.join("e"), b"E\n"))),
        ("read b after", "ok: original\nE\n", |m| rd(m, "b")),
        ("read sub/c after", "ok: original\n", |m| rd(m, "sub/c")),
        ("rename sub/y z", "ok", |m| {
            done(fs::rename(m.join("sub/y"), m.join("z")))
        }),
        ("append to z", "ok", |m| done(append(&m.join("z"), b"z\n"))),
        ("read x", "ok: x\n", |m| rd(m, "x")),
        ("read z", "ok: x\nz\n", |m| rd(m, "z")),
        ("x and z", "ok: differ", |m| same_ino(m, "x", "z")),
        ("truncate h2", "ok", |m| {
            done(
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(m.join("h2")),
            )
        }),
        ("read h3", "ok: h\n", |m| rd(m, "h3")),
        ("size of h2", "ok: 0", |m| {
            fs::symlink_metadata(m.join("h2")).map(|md| md.len().to_string())
        }),
        ("unlink h1", "ok", |m| done(fs::remove_file(m.join("h1")))),
        ("nlink of h4", "ok: 4", |m| nlink(m, "h4")),
    ]
}

#[test]
fn hard_links_with_index_off_break_like_the_kernel() {
    if skip("hard_links_with_index_off_break_like_the_kernel") {
        return;
    }
    link_lockstep(
        index_off_link_steps(),
        "",
        "index=off,redirect_dir=on,metacopy=on",
    );
    link_lockstep(
        index_off_link_steps(),
        "",
        "index=off,redirect_dir=off,metacopy=off",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Metadata-only copy-up
// ---------------------------------------------------------------------------------------------

/// At most this much may be allocated to a metadata-only or emptied upper copy.
const TINY: u64 = 256 << 10;

fn assert_meta_only(upper_file: &Path, what: &str) {
    let md = fs::symlink_metadata(upper_file)
        .unwrap_or_else(|e| panic!("{what}: no upper copy {}: {e}", upper_file.display()));
    assert!(
        md.blocks() * 512 <= TINY,
        "{what}: the upper copy has {} bytes allocated; a metadata-only copy holds no data",
        md.blocks() * 512
    );
    assert!(
        has_metacopy(upper_file),
        "{what}: the upper copy has no metacopy marker"
    );
}

#[test]
fn metadata_only_copy_up_of_a_1gib_file() {
    if skip("metadata_only_copy_up_of_a_1gib_file") {
        return;
    }
    let t = tempdir();
    let since = now_secs() - 1;
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    let (m1, m2, m3, m4) = (
        Sparse::gib(1),
        Sparse::gib(2),
        Sparse::gib(3),
        Sparse::gib(4),
    );
    m1.write(&l.join("big1"));
    m2.write(&l.join("big2"));
    m3.write(&l.join("big3"));
    m4.write(&l.join("big4"));
    let m5 = Sparse::gib(5);
    mkdirs(&l.join("dir"));
    m5.write(&l.join("dir/big5"));
    for f in ["big1", "big2", "big3", "big4", "dir/big5"] {
        set_times(&l.join(f), FIXED_TIME.0, FIXED_TIME.1).unwrap();
    }
    let lower_blocks = allocated(&l.join("big1"));
    assert!(
        lower_blocks >= m1.data_bytes(),
        "the lower file holds its data"
    );
    let mnt = lay.mnt.clone();
    let (f, uf) = (mnt.join("big1"), lay.upper.join("big1"));
    let mut m = lay.mount_ufs("");

    chmod(&f, 0o600).unwrap();
    assert_meta_only(&uf, "after chmod");
    m1.check(&f, b"").unwrap();
    assert_eq!(lmeta(&f).mode() & 0o7777, 0o600);

    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    assert_meta_only(&uf, "after chown");
    m1.check(&f, b"").unwrap();
    assert_eq!((lmeta(&f).uid(), lmeta(&f).gid()), (1234, 5678));

    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_meta_only(&uf, "after chown and a remount");
    m1.check(&f, b"").unwrap();
    assert_eq!((lmeta(&f).mode() & 0o7777, lmeta(&f).uid()), (0o600, 1234));

    utimens(&f, Some((1_400_000_000, 5)), Some((1_400_000_001, 7))).unwrap();
    assert_meta_only(&uf, "after utimensat");
    m1.check(&f, b"").unwrap();
    assert_eq!(
        (lmeta(&f).mtime(), lmeta(&f).mtime_nsec()),
        (1_400_000_001, 7)
    );

    set_xattr(&f, "user.x", b"1").unwrap();
    assert_meta_only(&uf, "after setxattr");
    m1.check(&f, b"").unwrap();
    assert_eq!(get_xattr(&f, "user.x").unwrap(), b"1");
    // A metadata-only copy inside a directory that then moves (a redirect): its data is
    // still found below the directory's old name.
    chmod(&mnt.join("dir/big5"), 0o604).unwrap();
    fs::rename(mnt.join("dir"), mnt.join("dir2")).unwrap();
    let (f5, uf5) = (mnt.join("dir2/big5"), lay.upper.join("dir2/big5"));
    assert_meta_only(
        &uf5,
        "dir2/big5 after chmod and the rename of its directory",
    );
    m5.check(&f5, b"").unwrap();
    assert_ino_rules(&mnt, "metadata-only copies");

    // Remount, and the kernel (metacopy=on) on ufs's upper, while the copies are metadata-only.
    let view = file_view(&f, &m1);
    let view5 = file_view(&f5, &m5);
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_meta_only(&uf, "after all metadata changes and a remount");
    assert_eq!(file_view(&f, &m1), view, "ufs after remount");
    m1.check(&f, b"").unwrap();
    assert_eq!(file_view(&f5, &m5), view5, "ufs after remount: dir2/big5");
    m5.check(&f5, b"").unwrap();
    unmount_and_wait(&mut m);
    drop(m);
    let w = lay.fresh_work("k1");
    let k = lay.mount_kernel(&w, "metacopy=on,redirect_dir=on,index=off");
    let kview = file_view(&f, &m1);
    let kcheck = m1.check(&f, b"");
    let kview5 = fs::symlink_metadata(&f5).map(|_| file_view(&f5, &m5));
    let kcheck5 = m5.check(&f5, b"");
    drop(k);
    assert_eq!(
        kview5.map_err(|e| errno_str(&e)),
        Ok(view5),
        "the kernel reading dir2/big5 (a metadata-only copy in a redirected directory)"
    );
    kcheck5.unwrap_or_else(|e| panic!("dir2/big5 through the kernel: {e}"));
    assert_eq!(
        kview, view,
        "the kernel (metacopy=on) reading ufs's metadata-only copy"
    );
    kcheck.unwrap_or_else(|e| panic!("content through the kernel: {e}"));
    assert_meta_only(&uf, "after the kernel mount");

    let mut m = lay.mount_ufs("");
    append(&f, b"Z").unwrap();
    let md = lmeta(&f);
    assert!(
        allocated(&uf) >= m1.data_bytes(),
        "after an append the upper copy holds the data: {} bytes allocated, the data is {}",
        allocated(&uf),
        m1.data_bytes()
    );
    assert!(
        !has_metacopy(&uf),
        "the metacopy marker stays after the data was copied"
    );
    m1.check(&f, b"Z").unwrap();
    m1.check(&uf, b"Z")
        .unwrap_or_else(|e| panic!("the upper file itself after the append: {e}"));
    assert!(
        md.mtime() >= since,
        "the append must update mtime (it is {})",
        md.mtime()
    );
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o600, 1234, 5678),
        "the append must keep chmod and chown"
    );
    assert_eq!(get_xattr(&f, "user.x").unwrap(), b"1");

    // Emptying other 1 GiB lower files copies nothing: a lower-only one by truncate(0) and by
    // open(O_TRUNC), and a metadata-only copy by truncate(0).
    chmod(&mnt.join("big4"), 0o640).unwrap();
    assert_meta_only(&lay.upper.join("big4"), "big4 after chmod");
    truncate(&mnt.join("big4"), 0).unwrap();
    truncate(&mnt.join("big2"), 0).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("big3"))
        .unwrap();
    for n in ["big2", "big3", "big4"] {
        let u = lay.upper.join(n);
        let umd = fs::symlink_metadata(&u).unwrap_or_else(|e| panic!("upper {n}: {e}"));
        assert_eq!(umd.len(), 0, "upper {n} size");
        assert!(
            umd.blocks() * 512 <= TINY,
            "upper {n}: {} bytes allocated",
            umd.blocks() * 512
        );
        assert!(!has_metacopy(&u), "upper {n} is empty, not metadata-only");
        assert_eq!(lmeta(&mnt.join(n)).len(), 0, "{n} through the mount");
        assert_eq!(fs::read(mnt.join(n)).unwrap(), b"", "{n} content");
    }
    m2.check(&l.join("big2"), b"").unwrap();
    m3.check(&l.join("big3"), b"").unwrap();
    m4.check(&l.join("big4"), b"").unwrap();
    assert_eq!(
        lmeta(&mnt.join("big4")).mode() & 0o7777,
        0o640,
        "big4 keeps its chmod"
    );
    assert_ino_rules(&mnt, "after data copy-up and truncations");
    let view = file_view(&f, &m1);
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_eq!(file_view(&f, &m1), view, "after remount");
    m1.check(&f, b"Z").unwrap();
    for n in ["big2", "big3", "big4"] {
        assert_eq!(lmeta(&mnt.join(n)).len(), 0, "{n} after remount");
    }
    unmount_and_wait(&mut m);
    drop(m);
    let w = lay.fresh_work("k2");
    let k = lay.mount_kernel(&w, "metacopy=on,redirect_dir=on,index=off");
    let kview = file_view(&f, &m1);
    let sizes: Vec<u64> = ["big2", "big3", "big4"]
        .iter()
        .map(|n| lmeta(&mnt.join(n)).len())
        .collect();
    drop(k);
    assert_eq!(kview, view, "the kernel reading the completed copy");
    assert_eq!(sizes, vec![0, 0, 0], "the kernel reading the emptied files");
}

/// The other way round: metadata-only copies the kernel made and then renamed (it records a
/// redirect on such a file) are read by ufs through the record, and completed by a write.
#[test]
fn ufs_reads_kernel_metacopy_with_redirects() {
    if skip("ufs_reads_kernel_metacopy_with_redirects") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    let (ma, mb) = (Sparse::gib(11), Sparse::gib(12));
    ma.write(&l.join("big"));
    mkdirs(&l.join("d"));
    mb.write(&l.join("d/big6"));
    let mnt = lay.mnt.clone();
    let kwork = lay.work.clone();
    let k = lay.mount_kernel(&kwork, "metacopy=on,redirect_dir=on,index=off");
    chmod(&mnt.join("big"), 0o600).unwrap();
    fs::rename(mnt.join("big"), mnt.join("moved")).unwrap();
    chmod(&mnt.join("d/big6"), 0o640).unwrap();
    fs::rename(mnt.join("d/big6"), mnt.join("big7")).unwrap();
    let views = [
        file_view(&mnt.join("moved"), &ma),
        file_view(&mnt.join("big7"), &mb),
    ];
    drop(k);
    for (n, want) in [("moved", "big"), ("big7", "/d/big6")] {
        let u = lay.upper.join(n);
        assert!(
            has_metacopy(&u) && allocated(&u) <= TINY,
            "the kernel did not leave a metadata-only copy at {n}"
        );
        assert_eq!(
            get_xattr(&u, "trusted.overlay.redirect").ok().as_deref(),
            Some(want.as_bytes()),
            "the kernel's redirect record on {n}"
        );
    }
    let ufs_work = lay.fresh_work("ufs");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        lay.upper.display(),
        ufs_work.display()
    );
    let _m = UfsMount::mount(&opts, &mnt);
    assert_eq!(
        file_view(&mnt.join("moved"), &ma),
        views[0],
        "ufs reading moved"
    );
    assert_eq!(
        file_view(&mnt.join("big7"), &mb),
        views[1],
        "ufs reading big7"
    );
    ma.check(&mnt.join("moved"), b"").unwrap();
    mb.check(&mnt.join("big7"), b"").unwrap();
    assert_ino_rules(&mnt, "ufs on the kernel's metadata-only copies");
    append(&mnt.join("big7"), b"!").unwrap();
    mb.check(&mnt.join("big7"), b"!").unwrap();
    mb.check(&lay.upper.join("big7"), b"!")
        .unwrap_or_else(|e| panic!("the completed upper big7: {e}"));
    assert!(!has_metacopy(&lay.upper.join("big7")));
    assert_eq!(lmeta(&mnt.join("big7")).mode() & 0o7777, 0o640);
}

#[test]
fn metacopy_off_copies_the_data_on_chmod() {
    if skip("metacopy_off_copies_the_data_on_chmod") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let model = Sparse::gib(7);
    model.write(&lay.lowers[0].join("big"));
    let _m = lay.mount_ufs("metacopy=off");
    let f = lay.mnt.join("big");
    chmod(&f, 0o600).unwrap();
    let uf = lay.upper.join("big");
    assert!(
        allocated(&uf) >= model.data_bytes(),
        "metacopy=off: chmod must copy the data ({} bytes allocated, data {})",
        allocated(&uf),
        model.data_bytes()
    );
    assert!(!has_metacopy(&uf), "metacopy=off wrote a metacopy marker");
    model.check(&uf, b"").unwrap();
    model.check(&f, b"").unwrap();
    assert_eq!(lmeta(&f).mode() & 0o7777, 0o600);
}

// ---------------------------------------------------------------------------------------------
// 5. Owner squashing
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

/// Regression: `open(O_TRUNC)` of a lower file used to reach ufs as an open for writing (which
/// copied all the data) followed by a truncate, until ufs asked the kernel for ATOMIC_O_TRUNC.
/// The upper here is a 16 MiB tmpfs and the lower files are 64 MiB: any data copy fails with
/// ENOSPC, so these operations succeeding proves that no data was copied.
#[test]
fn truncating_and_metadata_changes_copy_no_data() {
    if common::skip("truncating_and_metadata_changes_copy_no_data") {
        return;
    }
    let t = common::tempdir();
    let lower = t.path().join("l");
    fs::create_dir_all(&lower).unwrap();
    for name in ["otrunc", "trunc0", "chmod", "chown", "xattr"] {
        // 64 MiB of real data each.
        let f = fs::File::create(lower.join(name)).unwrap();
        // Real data (not a hole), so that a copy would need the space.
        let chunk = vec![b'd'; 1 << 20];
        for i in 0..64u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i << 20).unwrap();
        }
    }
    let small = t.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let _tmpfs = common::TmpfsMount::mount(&small, 16);
    fs::create_dir_all(small.join("up")).unwrap();
    fs::create_dir_all(small.join("wk")).unwrap();
    let mnt = t.path().join("m");
    fs::create_dir_all(&mnt).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        small.join("up").display(),
        small.join("wk").display()
    );
    let _m = common::UfsMount::mount(&opts, &mnt);

    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("otrunc"))
        .expect("open(O_TRUNC) must not copy 64 MiB into a 16 MiB upper");
    assert_eq!(fs::metadata(mnt.join("otrunc")).unwrap().len(), 0);
    write_support::truncate(&mnt.join("trunc0"), 0).expect("truncate(0) must not copy data");
    assert_eq!(fs::metadata(mnt.join("trunc0")).unwrap().len(), 0);
    // The control: opening for writing without O_TRUNC does copy the data, which cannot fit.
    let e = OpenOptions::new()
        .write(true)
        .open(mnt.join("xattr"))
        .expect_err("a data copy-up must not fit in the 16 MiB upper");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    fs::set_permissions(mnt.join("chmod"), fs::Permissions::from_mode(0o600))
        .expect("chmod must copy metadata only");
    std::os::unix::fs::chown(mnt.join("chown"), Some(1), Some(1))
        .expect("chown must copy metadata only");
    assert_eq!(fs::metadata(mnt.join("chmod")).unwrap().len(), 64 << 20);
    assert_eq!(fs::metadata(mnt.join("chown")).unwrap().uid(), 1);
    // The data still reads from the lower file.
    let data = fs::read(mnt.join("chmod")).unwrap();
    assert!(data.len() == 64 << 20 && data.iter().all(|&b| b == b'd'));
}
