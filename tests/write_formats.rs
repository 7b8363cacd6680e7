//! Write-side semantics of ufs, checked through real mounts: the on-disk formats (whiteouts,
//! opaque markers) ufs writes and the kernel reads, and the records ufs writes when it runs
//! unprivileged in a user namespace (`user.overlay.*`, no `trusted.overlay.*`).

mod common;
#[path = "common/write_helpers.rs"]
mod write_helpers;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use write_helpers::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// 1. Whiteout and opaque formats on disk
// ---------------------------------------------------------------------------------------------

#[test]
fn whiteout_and_opaque_format() {
    if skip("whiteout_and_opaque_format") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    let l = d.lower(0);
    put(l, "f", "f");
    put(l, "g", "g");
    put(l, "d/x", "x");
    put(l, "d/sub/y", "y");
    put(l, "a/b/c/deep", "deep");
    let m = &d.mnt;
    let up = &d.upper;
    let u = d.mount_ufs();

    fs::remove_file(m.join("f")).unwrap();
    let st = lmeta(&up.join("f"));
    assert!(
        st.file_type().is_char_device(),
        "whiteout for f must be a char device: {:?}",
        st.file_type()
    );
    assert_eq!(
        dev_numbers(st.rdev()),
        (0, 0),
        "whiteout for f must be device 0/0"
    );

    fs::remove_dir_all(m.join("d")).unwrap();
    fs::create_dir(m.join("d")).unwrap();
    assert!(
        list_names(&m.join("d")).is_empty(),
        "new d must be empty through the mount"
    );
    assert!(lmeta(&up.join("d")).is_dir(), "upper d must be a directory");
    assert_eq!(
        get_xattr(&up.join("d"), "trusted.overlay.opaque")
            .ok()
            .as_deref(),
        Some(&b"y"[..]),
        "a directory made where a lower dir was deleted must carry trusted.overlay.opaque=y"
    );
    assert!(
        list_names(&up.join("d")).is_empty(),
        "upper d must hold nothing (no whiteouts of old entries)"
    );

    // Depth 3, where the ancestors are lower-only.
    fs::remove_dir_all(m.join("a/b/c")).unwrap();
    fs::create_dir(m.join("a/b/c")).unwrap();
    assert!(list_names(&m.join("a/b/c")).is_empty());
    assert_eq!(
        get_xattr(&up.join("a/b/c"), "trusted.overlay.opaque")
            .ok()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(
        get_xattr(&up.join("a/b"), "trusted.overlay.opaque").is_err(),
        "ancestors copied up must not be opaque"
    );

    fs::write(m.join("n"), "n").unwrap();
    fs::remove_file(m.join("n")).unwrap();
    fs::create_dir(m.join("nd")).unwrap();
    fs::remove_dir(m.join("nd")).unwrap();
    fs::rename(m.join("g"), m.join("g2")).unwrap();
    let st = lmeta(&up.join("g"));
    assert!(
        st.file_type().is_char_device() && st.rdev() == 0,
        "rename of lower g must leave a 0/0 whiteout"
    );

    let names = list_names(up);
    for gone in ["n", "nd", ".wh.n", ".wh.nd"] {
        assert!(
            !names.contains(&gone.to_string()),
            "upper-only {gone} removed: nothing may remain; upper has {names:?}"
        );
    }
    let mut bad = Vec::new();
    find_markers(up, up, &mut bad);
    assert!(
        bad.is_empty(),
        "ufs running as root must write kernel-format markers only, found: {bad:?}"
    );
    drop(u);

    // The kernel reads those markers the same way.
    let _k = d.mount_kernel_fresh_work("kernel");
    let names = list_names(m);
    assert!(
        !names.contains(&"f".to_string()) && !names.contains(&"g".to_string()),
        "kernel sees {names:?}"
    );
    assert!(
        list_names(&m.join("d")).is_empty(),
        "kernel sees old entries in d"
    );
    assert!(
        list_names(&m.join("a/b/c")).is_empty(),
        "kernel sees old entries in a/b/c"
    );
}

/// Whiteouts are names of one inode, as the kernel overlay's are (`ovl_whiteout()` links each
/// new whiteout to one it keeps in the work directory: a link costs the upper file system far
/// less than a new inode): the same deletions on both leave whiteouts of one inode with the
/// same link count, and the kernel reads ufs's.
#[test]
fn whiteouts_are_links_to_one_inode_as_on_the_kernel() {
    if skip("whiteouts_are_links_to_one_inode_as_on_the_kernel") {
        return;
    }
    let t = tempdir();
    let deletions = |m: &Path| {
        fs::remove_file(m.join("a")).unwrap(); // a lower file
        fs::remove_dir_all(m.join("dir")).unwrap(); // a lower directory and its entry
        fs::write(m.join("c"), "changed").unwrap(); // copied up, then replaced by a whiteout
        fs::remove_file(m.join("c")).unwrap();
        fs::rename(m.join("b"), m.join("b2")).unwrap(); // renamed away
    };
    let names = ["a", "dir", "dir/x", "c", "b"];
    // Per whiteout: which of them is the first with its inode, and its link count.
    let whiteouts = |d: &Dirs| -> Vec<(usize, u64)> {
        let st: Vec<_> = names
            .iter()
            .filter(|n| **n != "dir/x")
            .map(|n| {
                let st = lmeta(&d.upper.join(n));
                assert!(
                    st.file_type().is_char_device() && dev_numbers(st.rdev()) == (0, 0),
                    "upper {n} must be a 0/0 whiteout"
                );
                st
            })
            .collect();
        st.iter()
            .map(|s| {
                let first = st.iter().position(|o| o.ino() == s.ino()).unwrap_or(0);
                (first, s.nlink())
            })
            .collect()
    };
    let setup = |name: &str| {
        let d = Dirs::new(&t.path().join(name), 1);
        let l = d.lower(0);
        for f in ["a", "b", "c", "dir/x"] {
            put(l, f, f);
        }
        d
    };

    let dk = setup("kernel");
    {
        let _k = dk.mount_kernel();
        deletions(&dk.mnt);
    }
    let du = setup("ufs");
    {
        let _u = du.mount_ufs();
        deletions(&du.mnt);
    }
    let (k, u) = (whiteouts(&dk), whiteouts(&du));
    // On the kernel (5.8 and later): a, dir and c one inode with a fourth name in the work
    // directory, the renamed b's its own (`RENAME_WHITEOUT`): [(0, 4), (0, 4), (0, 4), (3, 1)].
    assert_eq!(
        u, k,
        "whiteouts (first with the inode, nlink) of a, dir, c, b: ufs vs kernel"
    );

    let _k = du.mount_kernel_fresh_work("kernel");
    let seen = list_names(&du.mnt);
    for n in ["a", "dir", "c", "b"] {
        assert!(
            !seen.contains(&n.to_string()),
            "the kernel must read ufs's whiteout of {n}; it sees {seen:?}"
        );
    }
    assert!(seen.contains(&"b2".to_string()), "kernel sees {seen:?}");
}

/// The whiteout new whiteouts link to is the one ufs made, not whatever stands at its name
/// later: a file put in its place in the work directory is never linked into the upper, where
/// it would show a deleted name again with that file's data.
#[test]
fn whiteouts_link_to_the_whiteout_ufs_made_not_to_its_name() {
    if skip("whiteouts_link_to_the_whiteout_ufs_made_not_to_its_name") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    for f in ["a", "b"] {
        put(d.lower(0), f, f);
    }
    let _u = d.mount_ufs();
    fs::remove_file(d.mnt.join("a")).unwrap();
    let work = d.work.join("work");
    let shared: Vec<String> = d
        .work_leftovers()
        .into_iter()
        .filter(|n| lmeta(&work.join(n)).file_type().is_char_device())
        .collect();
    assert_eq!(
        shared.len(),
        1,
        "one shared whiteout in the work directory: {shared:?}"
    );
    let at = work.join(&shared[0]);
    fs::remove_file(&at).unwrap();
    fs::write(&at, "not a whiteout").unwrap();

    fs::remove_file(d.mnt.join("b")).unwrap();
    let st = lmeta(&d.upper.join("b"));
    assert!(
        st.file_type().is_char_device() && dev_numbers(st.rdev()) == (0, 0),
        "upper b must be a 0/0 whiteout, is {:?}",
        st.file_type()
    );
    assert!(
        !list_names(&d.mnt).contains(&"b".to_string()),
        "b must stay deleted: {:?}",
        list_names(&d.mnt)
    );
}

/// Collects `.wh.*` names and `user.overlay.*` xattrs under `dir`.
fn find_markers(root: &Path, dir: &Path, bad: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if e.file_name().to_string_lossy().starts_with(".wh.") {
            bad.push(rel.clone());
        }
        if list_xattrs(&p)
            .unwrap_or_default()
            .iter()
            .any(|n| n.starts_with("user.overlay."))
        {
            bad.push(format!("{rel} (user.overlay.* xattr)"));
        }
        if e.file_type().unwrap().is_dir() {
            find_markers(root, &p, bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Unprivileged mounts (user namespaces)
// ---------------------------------------------------------------------------------------------

/// ufs in a user namespace of its own (`unshare --user --map-root-user --mount`), as rootless
/// container tools run it: root there has no privilege on the host, so the records go to the
/// `user.` xattr namespace. A copy-up, a deletion (0/0 whiteout, which the kernel lets a user
/// namespace create), a directory rename (redirect) and a hard link are made, the mount is made
/// again, and the view must be the same, with the same inode numbers; on the host, the upper must
/// hold `user.overlay.*` records and no `trusted.overlay.*` ones.
#[test]
fn unprivileged_mount_in_a_user_namespace() {
    if skip("unprivileged_mount_in_a_user_namespace") {
        return;
    }
    let Some(unshare) = which("unshare") else {
        say("SKIP unprivileged_mount_in_a_user_namespace: no unshare(1)");
        return;
    };
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    let l = d.lower(0);
    put(l, "a", "lower a\n");
    put(l, "b", "lower b\n");
    put(l, "dir/f", "in dir\n");
    put(l, "h", "linked\n");
    let probe = run_bounded(
        Command::new(&unshare).args(["--user", "--map-root-user", "--mount", "true"]),
        CMD_TIMEOUT,
    );
    if !probe.success() {
        say(&format!(
            "SKIP unprivileged_mount_in_a_user_namespace: cannot create a user namespace: {}",
            probe.stderr.trim()
        ));
        return;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        d.upper.display(),
        d.work.display()
    );
    let (ufs, m) = (ufs_bin(), d.mnt.clone());
    // Everything happens inside the namespace; the mount dies with it, whatever happens.
    let script = format!(
        r#"set -e
ufs={ufs} m={m}
"$ufs" mount -o "{opts}" "$m"
echo appended >> "$m/a"
rm "$m/b"
mv "$m/dir" "$m/moved"
ln "$m/h" "$m/h2"
view() {{ for n in a moved/f h h2; do printf '%s %s %s ' "$n" "$(stat -c '%i %h' "$m/$n")" "$(cat "$m/$n" | tr '\n' '|')"; done; ls "$m" | tr '\n' ' '; }}
before=$(view)
"$ufs" umount "$m"
"$ufs" mount -o "{opts}" "$m"
after=$(view)
"$ufs" umount "$m"
echo "before: $before"
echo "after: $after"
"#,
        ufs = ufs.display(),
        m = m.display(),
    );
    let run = run_bounded(
        Command::new(&unshare)
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(&script),
        Duration::from_secs(60),
    );
    assert!(
        run.success(),
        "the script in the user namespace failed:\n{run}"
    );
    let line = |tag: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag:?} line in:\n{run}"))
            .to_string()
    };
    let (before, after) = (line("before: "), line("after: "));
    assert_eq!(before, after, "the view changed across a remount");
    for want in [
        "a ",
        "lower a|appended|",
        "moved/f ",
        "in dir|",
        "h2 ",
        "a h h2 moved ",
    ] {
        assert!(
            before.contains(want),
            "{want:?} missing from the view {before:?}"
        );
    }
    // `h` and `h2` are one file with two links.
    let ino_links = |name: &str| {
        let rest = before
            .split(&format!("{name} "))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} missing from {before:?}"));
        rest.split(' ').take(2).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(ino_links("h"), ino_links("h2"), "in {before:?}");
    assert!(
        ino_links("h").ends_with(" 2"),
        "link count of h in {before:?}"
    );
    // What it left on the host.
    let b = fs::symlink_metadata(d.upper.join("b")).expect("whiteout for b");
    assert!(
        b.file_type().is_char_device() && b.rdev() == 0,
        "b is not a 0/0 whiteout: {b:?}"
    );
    assert!(
        get_xattr(&d.upper.join("moved"), "user.overlay.redirect").is_ok(),
        "no user.overlay.redirect on the renamed directory"
    );
    assert!(
        get_xattr(&d.upper.join("a"), "user.overlay.ufs.ino").is_ok(),
        "no user.overlay.ufs.ino record on the copied-up file"
    );
    let mut trusted = Vec::new();
    for p in ["a", "moved", "h", "h2", ""] {
        let path = d.upper.join(p);
        for x in list_xattrs(&path).unwrap_or_default() {
            if x.starts_with("trusted.") {
                trusted.push(format!("{}: {x}", path.display()));
            }
        }
    }
    assert!(trusted.is_empty(), "trusted.* records written: {trusted:?}");
}
