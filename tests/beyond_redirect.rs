//! Features beyond the kernel's defaults, proved through real mounts: directory rename through
//! redirect records (`redirect_dir=on`), and `EXDEV` like the kernel's without it. The same
//! operations run on kernel overlayfs (mounted with that feature on) over identical layers and
//! the trees are compared, and the kernel mounts ufs's upper afterwards.
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

/// The kernel's features when it is the oracle for directory renames (module defaults here
/// are all off; `redirect_dir=on` is the feature under test).
const K_REDIRECT: &str = "redirect_dir=on,index=off,metacopy=off";

// ---------------------------------------------------------------------------------------------
// Directory rename through redirect records
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
