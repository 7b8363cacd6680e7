//! The containers tier: the real podman (with buildah inside `podman build`) using ufs as its
//! `mount_program`, each check repeated under podman's native overlay driver and compared:
//! `podman run` as root and as another user, `podman build --layers`, `podman commit` and
//! `podman diff`, `force_mask`, `podman image mount`. Rootless podman is `containers_rootless`;
//! the stores and the base image are `tests/common/containers_support.rs`.
//!
//! A test that cannot run here (not root, no podman, ...) says why on stderr and passes.
//! `.ci/run` installs the tools. The tests take turns (one lock): they are I/O- and
//! process-heavy, and the machine's cores are shared.

mod common;
#[path = "common/containers_support.rs"]
mod containers_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use common::*;
use containers_support::Node;
use containers_support::*;

/// `podman run` as root and as uid 1000: the root filesystem is the mount the driver makes
/// (ufs's mount as `fuse.ufs`), both users can use it, writes work, and a setuid-root program
/// run by uid 1000 has effective uid 0.
#[test]
fn podman_run_as_root_and_as_another_user() {
    const TEST: &str = "podman_run_as_root_and_as_another_user";
    let Some(_turn) = start(TEST) else { return };
    let started = Instant::now();
    let stores = stores(TEST);
    for store in &stores {
        let root_fs = store.ok(&[
            "run",
            "--rm",
            BASE,
            "sh",
            "-c",
            "awk '$5 == \"/\" { sub(/.* - /, \"\"); print $1 }' /proc/self/mountinfo",
        ]);
        let want = match store.driver {
            Driver::Ufs | Driver::UfsForceMask if !is_stand_in() => "fuse.ufs",
            Driver::Ufs | Driver::UfsForceMask => root_fs.trim(),
            Driver::Native => "overlay",
        };
        assert_eq!(
            root_fs.trim(),
            want,
            "[{}] the container's / ",
            store.driver.name()
        );
    }
    let script = "id -u; cat /data/keep.txt; echo written > /tmp/w; cat /tmp/w; ls /d";
    let as_root = same_everywhere("podman run as root", &stores, |s| {
        s.ok(&["run", "--rm", BASE, "sh", "-c", script])
    });
    assert_eq!(as_root, "0\nkeep\nwritten\nx\nz\n");
    let as_user = same_everywhere("podman run --user 1000", &stores, |s| {
        s.ok(&["run", "--rm", "--user", "1000", BASE, "sh", "-c", script])
    });
    assert_eq!(as_user, "1000\nkeep\nwritten\nx\nz\n");
    let euid = same_everywhere("a setuid program run by uid 1000", &stores, |s| {
        s.ok(&[
            "run",
            "--rm",
            "--user",
            "1000",
            BASE,
            "/probe/suid-id",
            "-u",
        ])
    });
    assert_eq!(euid.trim(), "0", "effective uid of a setuid-root program");
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// `podman build --layers` of a Containerfile making [`CHANGES`] (one layer each): the image
/// holds exactly the expected files, the same as under the native driver; a second build takes
/// every step from the cache; the built image runs.
#[test]
fn podman_build_layers_gives_exactly_the_changed_files() {
    const TEST: &str = "podman_build_layers_gives_exactly_the_changed_files";
    let Some(_turn) = start(TEST) else { return };
    let started = Instant::now();
    let stores = stores(TEST);
    let mut containerfile = format!("FROM {BASE}\n");
    for change in CHANGES {
        containerfile.push_str(&format!("RUN {change}\n"));
    }
    let trees = same_everywhere("the built image", &stores, |s| {
        let ctx = s.path("context");
        fs::create_dir_all(&ctx).expect("mkdir context");
        fs::write(ctx.join("Containerfile"), &containerfile).expect("write Containerfile");
        let ctx = ctx.to_str().expect("utf-8 path");
        s.ok(&["build", "--layers", "-t", "built", ctx]);
        let again = s.ok(&["build", "--layers", "-t", "built", ctx]);
        assert_eq!(
            again.matches("Using cache").count(),
            CHANGES.len(),
            "[{}] the second build uses the cache for every step:\n{again}",
            s.driver.name()
        );
        let mnt = s.image_mount("built");
        let t = tree(&mnt);
        s.ok(&["image", "unmount", "built"]);
        check_changed_tree(s.driver, &t);
        t
    });
    assert!(trees.contains_key("/bin/sh"));
    let ran = same_everywhere("running the built image", &stores, |s| {
        s.ok(&[
            "run",
            "--rm",
            "--user",
            "1000",
            "built",
            "sh",
            "-c",
            "cat /etc/conf /newdir/inner/f2; ls -a /d; /probe/suid-id -u",
        ])
    });
    assert_eq!(ran, "line1\nline2\nf2\n.\n..\nnew\n0\n");
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// [`CHANGES`] made in a running container: `podman diff` lists them, and `podman commit`
/// makes an image with exactly the changed files, as under the native driver.
///
/// The two drivers word one change differently: for `rm -rf /d && mkdir /d` the native driver
/// reads the opaque directory in the upper and says `D /d` (then `A /d/new`), while with a
/// `mount_program` containers/storage compares the mounted trees and says `C /d`, `D /d/x`,
/// `D /d/z` (docs/DIFFERENCES.md). Both describe the same result, which the commit checks.
#[test]
fn podman_commit_and_diff_of_a_running_container() {
    const TEST: &str = "podman_commit_and_diff_of_a_running_container";
    let Some(_turn) = start(TEST) else { return };
    let started = Instant::now();
    let stores = stores(TEST);
    for s in &stores {
        let who = s.driver.name();
        s.ok(&["run", "-d", "--name", "c1", BASE, "sleep", "600"]);
        s.ok(&["exec", "c1", "sh", "-c", &CHANGES.join(" && ")]);
        let diff: Vec<String> = s.ok(&["diff", "c1"]).lines().map(String::from).collect();
        let has = |line: &str| diff.iter().any(|l| l == line);
        for want in [
            "D /data/gone.txt",
            "D /data/sub",
            "A /d/new",
            "D /olddir",
            "A /newdir",
            "A /newdir/f1",
            "A /newdir/inner/f2",
            "C /etc/conf",
            "C /etc/mode",
            "C /etc/owner",
        ] {
            assert!(has(want), "[{who}] podman diff lacks {want:?}: {diff:?}");
        }
        assert!(
            has("D /d") || (has("D /d/x") && has("D /d/z")),
            "[{who}] podman diff must say that /d's old entries are gone: {diff:?}"
        );
        for unchanged in ["/data/keep.txt", "/bin/sh", "/probe/id"] {
            assert!(
                !diff.iter().any(|l| l.ends_with(unchanged)),
                "[{who}] podman diff lists the unchanged {unchanged}: {diff:?}"
            );
        }
    }
    same_everywhere("the committed image", &stores, |s| {
        s.ok(&["commit", "c1", "committed"]);
        s.ok(&["rm", "-f", "-t", "0", "c1"]);
        let mnt = s.image_mount("committed");
        let t = tree(&mnt);
        s.ok(&["image", "unmount", "committed"]);
        check_changed_tree(s.driver, &t);
        t
    });
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// `force_mask = "shared"` (containers/storage then passes `xattr_permissions=2`): the base
/// image, a container making [`CHANGES`] and the image committed from it show the same owners and
/// modes as under the native driver without it, while the layers on disk hold the forced mode.
///
/// Set-id and sticky bits are left out of the comparison: this containers/storage (Debian's
/// podman 4.3) drops them when it writes the records of a layer it applies (`/probe/suid-id`'s
/// record says `0:0:0755`, `/tmp`'s `0:0:0777`), and ufs shows the records as they are, as
/// fuse-overlayfs does. So is `/`: with `force_mask` containers/storage records a layer's root as
/// `0:0:0755`, where the native driver leaves it at its own `0555`.
#[test]
fn podman_force_mask_keeps_image_owners_and_modes() {
    const TEST: &str = "podman_force_mask_keeps_image_owners_and_modes";
    let Some(_turn) = start(TEST) else { return };
    let started = Instant::now();
    let stores = stores_with(TEST, Driver::UfsForceMask);
    let without_set_id = |mut t: BTreeMap<String, Node>| {
        t.remove("/");
        for n in t.values_mut() {
            n.mode &= 0o777;
        }
        t
    };
    same_everywhere("the base image", &stores, |s| {
        let mnt = s.image_mount(BASE);
        let t = tree(&mnt);
        s.ok(&["image", "unmount", BASE]);
        without_set_id(t)
    });
    // force_mask took effect: a base file on disk has the forced mode and a record.
    let forced = &stores[0];
    let on_disk: Vec<PathBuf> = fs::read_dir(forced.path("root/overlay"))
        .expect("readdir overlay")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("diff/etc/mode"))
        .filter(|p| p.exists())
        .collect();
    assert!(!on_disk.is_empty(), "no layer holds /etc/mode");
    for p in &on_disk {
        let md = fs::symlink_metadata(p).expect("stat");
        assert_eq!(md.mode() & 0o7777, 0o755, "{} on disk", p.display());
        let record = get_xattr(p, "user.containers.override_stat").expect("record");
        assert_eq!(record, b"0:0:0644", "record of {}", p.display());
    }
    let script = format!(
        "{} && stat -c '%u:%g %a' /etc/mode /etc/owner /data/keep.txt /d",
        CHANGES.join(" && ")
    );
    let shown = same_everywhere("a running container", &stores, |s| {
        s.ok(&["run", "--name", "c1", BASE, "sh", "-c", &script])
    });
    assert_eq!(shown, "0:0 640\n1000:1000 644\n0:0 644\n0:0 755\n");
    same_everywhere("the committed image", &stores, |s| {
        s.ok(&["commit", "c1", "committed"]);
        s.ok(&["rm", "-f", "-t", "0", "c1"]);
        let mnt = s.image_mount("committed");
        let t = tree(&mnt);
        s.ok(&["image", "unmount", "committed"]);
        let t = without_set_id(t);
        check_changed_tree_but_set_id(s.driver, &t);
        t
    });
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// `podman image mount`: a read-only mount of the image's layers, writes refused, gone after
/// `podman image unmount`.
#[test]
fn podman_image_mount_is_read_only() {
    const TEST: &str = "podman_image_mount_is_read_only";
    let Some(_turn) = start(TEST) else { return };
    let stores = stores(TEST);
    same_everywhere("podman image mount", &stores, |s| {
        let mnt = s.image_mount(BASE);
        let who = s.driver.name();
        let entry =
            mount_at(&mnt).unwrap_or_else(|| panic!("[{who}] {} not mounted", mnt.display()));
        if s.driver == Driver::Ufs && !is_stand_in() {
            assert_eq!(entry.fstype, "fuse.ufs", "[{who}] type");
        }
        let keep = fs::read_to_string(mnt.join("data/keep.txt")).expect("read through the mount");
        let err = fs::write(mnt.join("data/new"), "x").expect_err("a write must fail");
        let removed = fs::remove_file(mnt.join("data/keep.txt")).is_err();
        s.ok(&["image", "unmount", BASE]);
        assert!(
            wait_until(MOUNT_TIMEOUT, || !is_mounted(&mnt)),
            "[{who}] still mounted after podman image unmount"
        );
        (keep, err.raw_os_error(), removed)
    });
}
