//! Features beyond the kernel's defaults, proved through real mounts: hard links kept by the
//! index (`index=on`), and broken on copy-up without it like the kernel's. The same operations
//! run on kernel overlayfs (mounted with that feature on) over identical layers and the trees
//! are compared, and the kernel mounts ufs's upper and its workdir afterwards.
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
// Hard links through the index
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
