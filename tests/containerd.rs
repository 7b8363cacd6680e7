//! The containerd tier: the real containerd (1.6) with `ufs snapshotter` as its proxy
//! snapshotter plugin, compared with containerd's own `overlayfs` and `native` snapshotters.
//!
//! Each test starts a private containerd and snapshotter (`tests/common/containerd_support.rs`),
//! imports a three-layer OCI image written here from busybox-static (the upper layers delete,
//! rename and chmod what the lower ones hold, with whiteouts and an opaque directory), and runs
//! containers on it with `ctr`. The trees are compared as the containers see them (a listing a
//! container prints: modes, sizes, owners, link counts and which names share an inode, contents,
//! symlink targets), and the committed ufs layers are also mounted with the kernel's overlay.
//!
//! A test that cannot run here (not root, no containerd, ...) says why on stderr and passes.
//! `.ci/run` installs the tools. The tests take turns (one lock): they are process-heavy.

mod common;
#[path = "common/containerd_support.rs"]
mod containerd_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use containerd_support::*;

static TURN: Mutex<()> = Mutex::new(());

const IMAGE: &str = "docker.io/library/ufs-test:latest";

/// The snapshotters every scenario runs on; the first is the one under test.
const SNAPSHOTTERS: [&str; 3] = ["ufs", "overlayfs", "native"];

/// Takes this test's turn, or says why it is skipped.
fn start(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(reason) = skip_reason() {
        common::say(&format!("SKIP {test}: {reason}"));
        return None;
    }
    // A failed test poisons the lock; the others still run.
    Some(TURN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The image's three layers. Layer 1 deletes (`gone`), renames (`old-name` to `new-name`:
/// a whiteout and a new file), chmods (`chm`, and the directory `dirC`) and makes `opq` opaque;
/// layer 2 deletes a whole directory (`dirW`) and adds to one (`d`).
fn image_layers() -> Vec<LayerFill> {
    vec![
        Box::new(|r: &Path| {
            busybox_rootfs(r)?;
            put(r, "data/keep", "keep\n", 0o644)?;
            put(r, "data/gone", "gone\n", 0o644)?;
            put(r, "data/old-name", "renamed\n", 0o644)?;
            put(r, "data/chm", "chm\n", 0o644)?;
            put(r, "data/hl", "hl\n", 0o644)?;
            put(r, "data/opq/a", "a\n", 0o644)?;
            put(r, "data/opq/sub/b", "b\n", 0o644)?;
            put(r, "data/d/x", "x\n", 0o644)?;
            put(r, "data/d/y/z", "z\n", 0o600)?;
            put(r, "data/dirA/f1", "f1\n", 0o644)?;
            put(r, "data/dirA/sub/f2", "f2\n", 0o644)?;
            put(r, "data/dirC/inner", "inner\n", 0o644)?;
            put(r, "data/dirW/w1", "w1\n", 0o644)?;
            put(r, "data/dirW/sub/w2", "w2\n", 0o644)?;
            std::os::unix::fs::symlink("keep", r.join("data/link")).map_err(|e| e.to_string())
        }),
        Box::new(|r: &Path| {
            put(r, "data/.wh.gone", "", 0o644)?;
            put(r, "data/.wh.old-name", "", 0o644)?;
            put(r, "data/new-name", "renamed\n", 0o644)?;
            put(r, "data/chm", "chm\n", 0o600)?;
            put_dir(r, "data/dirC", 0o700)?;
            put(r, "data/opq/.wh..wh..opq", "", 0o644)?;
            put(r, "data/opq/c", "c\n", 0o644)
        }),
        Box::new(|r: &Path| {
            put(r, "data/.wh.dirW", "", 0o644)?;
            put(r, "data/l3", "l3\n", 0o644)?;
            put(r, "data/d/x2", "x2\n", 0o644)
        }),
    ]
}

/// What the container of level `k` of a chain does before the listing: creates, deletes
/// (`rm -rf d && mkdir d` at every level), renames files and directories of lower levels,
/// hard-links and chmods.
fn level_script(k: usize) -> String {
    let common = format!(
        "set -e; cd /data; echo lv{k} > made-{k}; mkdir -p new-{k}/sub; echo deep > new-{k}/sub/f; \
         rm -rf d && mkdir d && echo fresh{k} > d/only{k}; "
    );
    let own = match k {
        1 => {
            "mv keep kept; mv dirA dirB; ln hl hl2; chmod 0600 hl; chmod 0700 dirB; \
             chmod 4755 new-name; rm l3; echo more >> opq/c; ln -s kept sym1; mkfifo fifo1; \
             dd if=/dev/zero of=big bs=1024 count=1024 2>/dev/null"
        }
        2 => {
            "mv kept kept2; mv new-1 new-1-moved; ln made-1 made-1-link; chmod 0640 made-1; \
             rm -rf dirB/sub; rm hl2; echo x >> hl; chmod 0750 dirC"
        }
        3 => {
            "mv dirB dirB3; rm -rf opq && mkdir opq && echo o > opq/o; ln made-2 made-2-l; \
             rm made-1-link; chmod 0755 made-1; echo t > dirC/t; chmod 0711 dirC"
        }
        _ => {
            "rm -rf new-1-moved; mv made-3 made-3-renamed; ln made-3-renamed mk3; chmod 1777 d; \
             rm sym1; echo tail >> kept2; mv dirB3/f1 f1-up"
        }
    };
    format!("{common}{own}")
}

/// Prints the container's tree (without the kernel's file systems), then the contents of the
/// regular files and the targets of the symlinks of `/data`.
const LIST: &str = "cd / && \
    find . -xdev \\( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run \\) -prune \
      -o -exec stat -c '%n|%f|%s|%h|%u|%g|%i' {} + && echo '--md5' && \
    find ./data -xdev -type f -exec md5sum {} + && echo '--links' && \
    find ./data -xdev -type l -exec sh -c 'for f; do echo \"$f -> $(readlink \"$f\")\"; done' sh {} +";

/// A listing turned into path -> description, without what differs between any two file
/// systems for the same tree (inode numbers, a directory's size and link count): instead, each
/// name of a multiply-linked file lists the other names of its inode.
fn parse_listing(out: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tree = BTreeMap::new();
    let mut section = "stat";
    let mut inodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut raw = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        match line {
            "--md5" => section = "md5",
            "--links" => section = "links",
            _ if section == "stat" => {
                let f: Vec<&str> = line.split('|').collect();
                let [name, mode, size, nlink, uid, gid, ino] = f[..] else {
                    return Err(format!("bad listing line {line:?}"));
                };
                let mode =
                    u32::from_str_radix(mode, 16).map_err(|_| format!("bad mode in {line:?}"))?;
                let is_dir = mode & 0o170000 == 0o040000;
                let desc = if is_dir {
                    format!("dir {:o} {uid}:{gid}", mode & 0o7777)
                } else {
                    format!("{:o} size={size} nlink={nlink} {uid}:{gid}", mode)
                };
                if !is_dir && nlink != "1" {
                    inodes
                        .entry(ino.to_string())
                        .or_default()
                        .push(name.to_string());
                }
                raw.push((name.to_string(), desc, ino.to_string(), is_dir));
            }
            _ if section == "md5" => {
                let Some((sum, name)) = line.split_once("  ") else {
                    return Err(format!("bad md5 line {line:?}"));
                };
                tree.insert(format!("{name} md5"), sum.to_string());
            }
            _ => {
                let Some((name, target)) = line.split_once(" -> ") else {
                    return Err(format!("bad link line {line:?}"));
                };
                tree.insert(format!("{name} target"), target.to_string());
            }
        }
    }
    for (name, mut desc, ino, is_dir) in raw {
        if let (false, Some(names)) = (is_dir, inodes.get(&ino)) {
            let others: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| *n != name)
                .collect();
            desc.push_str(&format!(" links={others:?}"));
        }
        if tree.insert(name.clone(), desc).is_some() {
            return Err(format!("{name} listed twice"));
        }
    }
    // A container that printed nothing (or half) must not compare equal to another one.
    if !tree.contains_key("./bin/busybox") || !tree.contains_key(".") {
        return Err(format!("listing without / or /bin/busybox:\n{out}"));
    }
    Ok(tree)
}

/// The differences between two parsed listings, one line each.
fn differences(
    a_label: &str,
    a: &BTreeMap<String, String>,
    b_label: &str,
    b: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("{k}: only in {a_label} ({va})")),
            Some(vb) if vb != va => out.push(format!("{k}: {a_label}={va} {b_label}={vb}")),
            Some(_) => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{k}: only in {b_label} ({vb})"));
        }
    }
    out
}

fn same_listings(what: &str, trees: &[(&str, BTreeMap<String, String>)]) -> Result<(), String> {
    let (first, reference) = &trees[0];
    let mut msg = String::new();
    for (label, tree) in &trees[1..] {
        let d = differences(first, reference, label, tree);
        if !d.is_empty() {
            msg.push_str(&format!(
                "{what}: {} difference(s) between {first} and {label}:\n",
                d.len()
            ));
            for line in d.iter().take(20) {
                msg.push_str(&format!("  {line}\n"));
            }
        }
    }
    if msg.is_empty() { Ok(()) } else { Err(msg) }
}

/// `ctr snapshots view KEY PARENT` on `sn`, labelled `containerd.io/gc.root` so that containerd's
/// garbage collector keeps it: `ctr snapshots view` sets no such label (prepare does), and a
/// collection that a removal scheduled just before may take the view before it is labelled
/// (the collector marks and sweeps containerd's records in one transaction, so the label either
/// lands first and keeps the view, or finds it gone): then the view is made again.
fn gc_rooted_view(c: &Ctrd, sn: &str, key: &str, parent: &str) -> Result<(), String> {
    for _ in 0..20 {
        c.ctr_ok(&["snapshots", "--snapshotter", sn, "view", key, parent])?;
        let label = c.ctr(&[
            "snapshots",
            "--snapshotter",
            sn,
            "label",
            key,
            "containerd.io/gc.root=test",
        ]);
        if label.success() {
            return Ok(());
        }
        if !label.stderr.contains("not found") {
            return Err(format!("label {key}: {label}"));
        }
    }
    Err(format!("view {key} collected 20 times in a row"))
}

/// Starts containerd and imports the test image for every snapshotter in `snapshotters`.
fn setup(snapshotters: &[&str]) -> Result<Ctrd, String> {
    let c = Ctrd::start(&common::ufs_bin())?;
    let tar = c.path("image.tar");
    oci_archive(&c.path("image-work"), IMAGE, &image_layers(), &tar)?;
    for sn in snapshotters {
        c.ctr_ok(&["images", "import", "--snapshotter", sn, path_str(&tar)])?;
    }
    Ok(c)
}

/// Runs the four levels of the chain on snapshotter `sn`: level 1 a `ctr run` of the image
/// (containerd mounts the snapshot), committed as `L1`; levels 2 to 4 a snapshot prepared on
/// the previous level, mounted from `ctr snapshots mounts`, run with `ctr run --rootfs`, and
/// committed as `Lk`. Returns each level's listing.
fn chain(c: &Ctrd, sn: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
    let fifo = c.path("fifo");
    let runc = c.path("runc");
    let mut listings = Vec::new();
    let script = format!("{} && {LIST}", level_script(1));
    let id = format!("{sn}-c1");
    let out = c.ctr_ok(&[
        "run",
        "--snapshotter",
        sn,
        "--fifo-dir",
        path_str(&fifo),
        "--runc-root",
        path_str(&runc),
        IMAGE,
        &id,
        "sh",
        "-c",
        &script,
    ])?;
    listings.push(parse_listing(&out)?);
    c.ctr_ok(&["snapshots", "--snapshotter", sn, "commit", "L1", &id])?;
    c.ctr_ok(&["containers", "rm", &id])?;
    for k in 2..=4 {
        let key = format!("c{k}");
        let parent = format!("L{}", k - 1);
        c.ctr_ok(&["snapshots", "--snapshotter", sn, "prepare", &key, &parent])?;
        let mnt = c.path(&format!("mnt/{sn}-{key}"));
        c.mount_snapshot(sn, &key, &mnt)?;
        let script = format!("{} && {LIST}", level_script(k));
        let out = c.run_rootfs(&mnt, &format!("{sn}-{key}"), &["/bin/sh", "-c", &script]);
        let unmounted = c.unmount(&mnt);
        listings.push(parse_listing(&out?)?);
        unmounted?;
        c.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            sn,
            "commit",
            &format!("L{k}"),
            &key,
        ])?;
    }
    Ok(listings)
}

/// The image and a four-level chain of committed container layers on ufs, overlayfs and
/// native: every level's tree is the same on all three; and the kernel's overlay mounted on the
/// committed ufs layers (`ROOT/snapshots/<id>/fs`, as a view's mount names them) shows the same
/// tree as ufs.
#[test]
fn chain_of_committed_layers_same_as_overlayfs_and_native() {
    const TEST: &str = "chain_of_committed_layers_same_as_overlayfs_and_native";
    let Some(_turn) = start(TEST) else { return };
    let c = setup(&SNAPSHOTTERS).unwrap_or_else(|e| panic!("{e}"));

    // The image as each snapshotter unpacked it.
    let mut image_trees = Vec::new();
    for sn in SNAPSHOTTERS {
        let out = c
            .run_rm(sn, IMAGE, &format!("{sn}-image"), &["sh", "-c", LIST])
            .unwrap_or_else(|e| panic!("{e}"));
        image_trees.push((sn, parse_listing(&out).unwrap_or_else(|e| panic!("{e}"))));
    }
    let img = &image_trees[0].1;
    for (name, want) in [
        ("./data/gone", None),
        ("./data/old-name", None),
        ("./data/dirW", None),
        ("./data/opq/a", None),
        ("./data/new-name", Some("100644 size=8 nlink=1 0:0")),
        ("./data/chm", Some("100600 size=4 nlink=1 0:0")),
        ("./data/dirC", Some("dir 700 0:0")),
        ("./data/dirC/inner", Some("100644 size=6 nlink=1 0:0")),
        ("./data/opq/c", Some("100644 size=2 nlink=1 0:0")),
        ("./data/d/x2", Some("100644 size=3 nlink=1 0:0")),
    ] {
        assert_eq!(
            img.get(name).map(String::as_str),
            want,
            "{name} in the image on ufs"
        );
    }
    if let Err(e) = same_listings("the image", &image_trees) {
        panic!("{e}");
    }

    let mut chains = Vec::new();
    for sn in SNAPSHOTTERS {
        chains.push((sn, chain(&c, sn).unwrap_or_else(|e| panic!("[{sn}] {e}"))));
    }
    let mut failures = String::new();
    for level in 0..4 {
        let trees: Vec<(&str, BTreeMap<String, String>)> = chains
            .iter()
            .map(|(sn, l)| (*sn, l[level].clone()))
            .collect();
        if let Err(e) = same_listings(&format!("level {}", level + 1), &trees) {
            failures.push_str(&e);
        }
    }
    assert!(failures.is_empty(), "{failures}");
    let top = &chains[0].1[3];
    assert!(
        top.contains_key("./data/made-3-renamed"),
        "level 4 on ufs: {top:?}"
    );
    assert!(
        top["./data/mk3"].contains("links=[\"./data/made-3-renamed\"]"),
        "{}",
        top["./data/mk3"]
    );

    // The committed ufs layers under the kernel's overlay, beside ufs's own view of them.
    gc_rooted_view(&c, "ufs", "v-top", "L4").unwrap_or_else(|e| panic!("{e}"));
    let ufs_mnt = c.path("mnt/ufs-view");
    let line = c
        .mount_snapshot("ufs", "v-top", &ufs_mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("fuse3.ufs"),
        "a view of a chain is a ufs mount: {line}"
    );
    let lowers = line
        .split([',', ' '])
        .find_map(|w| w.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {line}"))
        .to_string();
    assert_eq!(
        lowers.split(':').count(),
        7,
        "4 levels and 3 image layers: {lowers}"
    );
    for l in lowers.split(':') {
        assert!(
            Path::new(l).starts_with(c.ufs_snapshots()),
            "{l} outside the snapshotter's root"
        );
    }
    let kernel_mnt = c.path("mnt/kernel-view");
    std::fs::create_dir_all(&kernel_mnt).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let out = run(
        std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            // With the kernel's default options: the snapshotter's mounts copy up whole files
            // (`metacopy=off`), so the layers hold nothing the kernel refuses by default.
            .arg(format!("ro,lowerdir={lowers}"))
            .arg(&kernel_mnt),
        CTR_TIMEOUT,
    );
    assert!(out.success(), "kernel overlay on the ufs layers: {out}");
    let ufs_tree = common::snapshot(&ufs_mnt);
    let kernel_tree = common::snapshot(&kernel_mnt);
    let unmounted = (c.unmount(&kernel_mnt), c.unmount(&ufs_mnt));
    common::assert_same_tree(
        "ufs",
        &ufs_tree,
        "kernel overlay",
        &kernel_tree,
        "view of L4",
    );
    assert!(ufs_tree.entries.contains_key("data/made-3-renamed"));
    unmounted.0.unwrap_or_else(|e| panic!("{e}"));
    unmounted.1.unwrap_or_else(|e| panic!("{e}"));
}

/// The lines of a `ctr snapshots ls`/`tree` output, sorted (their order is the store's).
fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v
}

/// `ctr snapshots ls/tree/info/usage/label/rm` on ufs: the same keys, parents, kinds and tree as
/// overlayfs for the same image and commits; labels set and read back; usage counting what a
/// container wrote; removing a snapshot that has a child refused, as by overlayfs, then allowed
/// from the top down.
#[test]
fn snapshot_commands_behave_as_on_overlayfs() {
    const TEST: &str = "snapshot_commands_behave_as_on_overlayfs";
    let Some(_turn) = start(TEST) else { return };
    let sns = ["ufs", "overlayfs"];
    let c = setup(&sns).unwrap_or_else(|e| panic!("{e}"));
    let ok = |args: &[&str]| c.ctr_ok(args).unwrap_or_else(|e| panic!("{e}"));
    let fifo = c.path("fifo");
    let runc = c.path("runc");
    for sn in sns {
        let id = format!("{sn}-c1");
        let script = level_script(1);
        ok(&[
            "run",
            "--snapshotter",
            sn,
            "--fifo-dir",
            path_str(&fifo),
            "--runc-root",
            path_str(&runc),
            IMAGE,
            &id,
            "sh",
            "-c",
            &script,
        ]);
        let snap = |args: &[&str]| {
            let mut all = vec!["snapshots", "--snapshotter", sn];
            all.extend_from_slice(args);
            c.ctr(&all)
        };
        // Usage of the active snapshot: at least the 1 MiB file the container wrote.
        let usage = snap(&["usage", &id]);
        assert!(usage.success(), "[{sn}] usage: {usage}");
        // `KEY  1.0 MiB  N`: the size is two words.
        let mib = usage.stdout.lines().nth(1).and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n: f64 = w.get(1)?.parse().ok()?;
            Some(match *w.get(2)? {
                "MiB" => n,
                "GiB" => n * 1024.0,
                _ => n / 1024.0,
            })
        });
        common::say(&format!(
            "[{sn}] usage of the level-1 container's snapshot: {}",
            usage.stdout.trim()
        ));
        assert!(
            mib.is_some_and(|m| m >= 1.0),
            "[{sn}] usage should count the 1 MiB file: {}",
            usage.stdout
        );
        assert!(snap(&["commit", "L1", &id]).success(), "[{sn}] commit");
        ok(&["containers", "rm", &id]);
        for (key, parent) in [("c2", "L1"), ("c3", "L2")] {
            let p = snap(&["prepare", key, parent]);
            assert!(p.success(), "[{sn}] prepare {key}: {p}");
            let name = format!("L{}", &key[1..]);
            let cm = snap(&["commit", &name, key]);
            assert!(cm.success(), "[{sn}] commit {name}: {cm}");
        }
    }
    // The views are made after the deletions above (see gc_rooted_view).
    for sn in sns {
        let snap = |args: &[&str]| {
            let mut all = vec!["snapshots", "--snapshotter", sn];
            all.extend_from_slice(args);
            c.ctr(&all)
        };
        assert!(snap(&["prepare", "active", "L3"]).success());
        gc_rooted_view(&c, sn, "a-view", "L3").unwrap_or_else(|e| panic!("[{sn}] {e}"));
        // Labels: set, read back in info (as JSON), replaced.
        let l = snap(&["label", "L2", "ufs.test/colour=blue", "ufs.test/size=3"]);
        assert!(l.success(), "[{sn}] label: {l}");
        let info = snap(&["info", "L2"]);
        assert!(info.success(), "[{sn}] info: {info}");
        for want in [
            "\"Name\": \"L2\"",
            "\"Parent\": \"L1\"",
            "\"Kind\": \"Committed\"",
            "\"ufs.test/colour\": \"blue\"",
            "\"ufs.test/size\": \"3\"",
        ] {
            assert!(
                info.stdout.contains(want),
                "[{sn}] info L2 lacks {want}:\n{}",
                info.stdout
            );
        }
        assert!(
            snap(&["label", "L2", "ufs.test/colour="]).success(),
            "[{sn}] label removal"
        );
        let info = snap(&["info", "L2"]);
        assert!(
            !info.stdout.contains("ufs.test/colour"),
            "[{sn}] label not removed:\n{}",
            info.stdout
        );
        let active = snap(&["info", "active"]);
        assert!(
            active.stdout.contains("\"Kind\": \"Active\"")
                && active.stdout.contains("\"Parent\": \"L3\""),
            "[{sn}] {active}"
        );
        let view = snap(&["info", "a-view"]);
        assert!(view.stdout.contains("\"Kind\": \"View\""), "[{sn}] {view}");
        // A parent cannot go while a child is there.
        for parent in ["L3", "L1"] {
            let rm = snap(&["rm", parent]);
            assert!(!rm.success(), "[{sn}] rm of {parent}, a parent, succeeded");
            common::say(&format!("[{sn}] rm {parent}: {}", rm.stderr.trim()));
        }
        let missing = snap(&["info", "no-such-key"]);
        assert!(
            !missing.success() && missing.stderr.contains("not found"),
            "[{sn}] info of a missing key: {missing}"
        );
    }
    let ls = |sn: &str| sorted_lines(&ok(&["snapshots", "--snapshotter", sn, "ls"]));
    let tree = |sn: &str| sorted_lines(&ok(&["snapshots", "--snapshotter", sn, "tree"]));
    assert_eq!(ls("ufs"), ls("overlayfs"), "ctr snapshots ls");
    assert_eq!(tree("ufs"), tree("overlayfs"), "ctr snapshots tree");
    assert!(
        ls("ufs").iter().any(|l| l == "active L3 Active"),
        "{:?}",
        ls("ufs")
    );
    // Usage of the committed layers: L2 and L3 hold nothing but their root on both; L1 differs
    // by design (ufs renames a directory with a redirect, the kernel under containerd copies it).
    for key in ["L1", "L2", "L3"] {
        let u = |sn: &str| ok(&["snapshots", "--snapshotter", sn, "usage", key]);
        let (a, b) = (u("ufs"), u("overlayfs"));
        common::say(&format!(
            "usage of {key}: ufs {:?}, overlayfs {:?}",
            a.lines().nth(1),
            b.lines().nth(1)
        ));
        if key != "L1" {
            assert_eq!(a, b, "usage of {key}");
        }
    }
    // From the top down, every removal works; the store is then as before the test's commits.
    for sn in sns {
        for key in ["a-view", "active", "L3", "L2", "L1"] {
            let rm = c.ctr(&["snapshots", "--snapshotter", sn, "rm", key]);
            assert!(rm.success(), "[{sn}] rm {key}: {rm}");
        }
    }
    assert_eq!(
        ls("ufs"),
        ls("overlayfs"),
        "ctr snapshots ls after the removals"
    );
    // Nothing of the removed snapshots is left on disk once containerd's garbage collector has
    // passed on them to the snapshotter (a removal through containerd removes its own record at
    // once and the snapshotter's later): only the image's three layers.
    let left = || {
        std::fs::read_dir(c.ufs_snapshots())
            .map(|d| d.count())
            .unwrap_or(0)
    };
    poll(DAEMON_TIMEOUT, || left() == 3);
    assert_eq!(
        left(),
        3,
        "entries left in the ufs snapshotter's snapshots/"
    );
}

/// The user rootless containerd runs as; it exists only in the test's private copies of
/// `/etc/passwd`, `/etc/group`, `/etc/subuid` and `/etc/subgid`.
const ROOTLESS_UID: u32 = 60124;

/// The rootless test's directory: the processes still running with it in their arguments are
/// killed, then it is removed (its mounts were in a mount namespace that ended with them).
struct RootlessDir(std::path::PathBuf);

impl Drop for RootlessDir {
    fn drop(&mut self) {
        for pid in pids_with_arg(&self.0) {
            // SAFETY: kill has no memory-safety preconditions; a stale pid yields ESRCH.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        poll(DAEMON_TIMEOUT, || pids_with_arg(&self.0).is_empty());
        if mounts_under(&self.0).is_empty() {
            // Nothing is mounted below it here: this removes only the test's own files.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Rootless containerd: containerd and `ufs snapshotter` run as an unprivileged user in their
/// own user namespace (root mapped to the user, ids 1-65536 to its subordinate ids, through
/// `newuidmap`, as RootlessKit maps them) and mount namespace, with `/run` private and a
/// `/dev/fuse` of mode 0666 (Debian's is 0600). The image and a container that changes it
/// (level 1 of the chain) give the same trees on ufs as on overlayfs.
#[test]
fn rootless_containerd_same_trees_as_overlayfs() {
    const TEST: &str = "rootless_containerd_same_trees_as_overlayfs";
    let Some(_turn) = start(TEST) else { return };
    for tool in ["unshare", "setpriv", "mknod", "newuidmap", "newgidmap"] {
        if which(tool).is_none() {
            common::say(&format!(
                "SKIP {TEST}: no {tool} in PATH (Debian packages util-linux, uidmap)"
            ));
            return;
        }
    }
    let help = run(
        std::process::Command::new("unshare").arg("--help"),
        CTR_TIMEOUT,
    );
    if !help.stdout.contains("--map-users") {
        common::say(&format!(
            "SKIP {TEST}: unshare has no --map-users (util-linux < 2.38)"
        ));
        return;
    }
    let uid = ROOTLESS_UID;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&uid.to_string()))
    {
        common::say(&format!("SKIP {TEST}: uid {uid} exists already"));
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("ufs-ctrd-rootless-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let dir = RootlessDir(tmp.keep());
    let d = dir.0.clone();
    let write = |name: &str, text: String| {
        std::fs::write(d.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&d, Some(uid), Some(uid)).expect("chown");
    oci_archive(
        &d.join("image-work"),
        IMAGE,
        &image_layers(),
        &d.join("image.tar"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    common::mkdirs(&d.join("bin"));
    std::fs::copy(common::ufs_bin(), d.join("bin/ufs")).expect("copy ufs");
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    write(
        "passwd",
        format!(
            "{passwd}ufs-rootless:x:{uid}:{uid}::{}:/bin/sh\n",
            d.display()
        ),
    );
    write("group", format!("{group}ufs-rootless:x:{uid}:\n"));
    write("subuid", "ufs-rootless:200000:65536\n".into());
    write("subgid", "ufs-rootless:200000:65536\n".into());
    write("list.sh", LIST.into());
    write("level1.sh", format!("{} && {LIST}", level_script(1)));
    let dd = d.display();
    // Runs as the user, as root of its namespaces: the daemons, then per snapshotter the image
    // listing and level 1. ctr's defaults ask for a cgroup and CPU shares, which an
    // unprivileged user cannot have (cgroup v1 here), hence `--cgroup "" --cpu-shares 0`.
    write(
        "inner.sh",
        format!(
            r#"D={dd}
export PATH=$D/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p $D/root $D/state $D/fifo $D/runc $D/opt $D/ufs-root $D/plugins
cat > $D/config.toml <<CFG
version = 2
root = "$D/root"
state = "$D/state"
plugin_dir = "$D/plugins"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$D/containerd.sock"
[ttrpc]
  address = "$D/containerd.sock.ttrpc"
[debug]
  address = "$D/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/opt"
[proxy_plugins.ufs]
  type = "snapshot"
  address = "$D/ufs.sock"
CFG
ufs snapshotter --root $D/ufs-root --address $D/ufs.sock > $D/ufs.log 2>&1 &
UFS=$!
containerd --config $D/config.toml > $D/containerd.log 2>&1 &
CTRD=$!
trap 'kill $CTRD; wait $CTRD; kill $UFS; wait $UFS' EXIT
C="ctr --address $D/containerd.sock -n rootless"
n=0; until $C version >/dev/null 2>&1 && [ -S $D/ufs.sock ]; do n=$((n+1)); [ $n -lt 3000 ] || {{ echo '=== FAIL daemons'; exit 1; }}; sleep 0.01; done
echo "=== id $(id -u) $(cat /proc/self/uid_map | tr -s ' ' | tr '\n' ' ')"
for sn in ufs overlayfs; do
  $C images import --snapshotter $sn $D/image.tar >/dev/null || {{ echo "=== FAIL import $sn"; exit 1; }}
  echo "=== $sn image"
  $C run --rm --cgroup "" --cpu-shares 0 --snapshotter $sn --fifo-dir $D/fifo --runc-root $D/runc {IMAGE} $sn-image sh -c "$(cat $D/list.sh)" || {{ echo "=== FAIL run $sn"; exit 1; }}
  echo "=== $sn level1"
  $C run --rm --cgroup "" --cpu-shares 0 --snapshotter $sn --fifo-dir $D/fifo --runc-root $D/runc {IMAGE} $sn-level1 sh -c "$(cat $D/level1.sh)" || {{ echo "=== FAIL run $sn level 1"; exit 1; }}
done
echo "=== end"
"#
        ),
    );
    // As root, in a private mount namespace: the account files, /dev/fuse and /run, then the
    // user with its own user and mount namespaces.
    let outer = format!(
        "set -e; for f in passwd group subuid subgid; do mount --bind {dd}/$f /etc/$f; done; \
         mknod {dd}/fuse c 10 229; chmod 666 {dd}/fuse; mount --bind {dd}/fuse /dev/fuse; \
         mount -t tmpfs -o mode=755 tmpfs /run; mkdir /run/containerd; chown {uid} /run/containerd; \
         exec setpriv --reuid {uid} --regid {uid} --clear-groups unshare --user --map-root-user \
           --map-users=200000,1,65536 --map-groups=200000,1,65536 --mount --fork sh {dd}/inner.sh"
    );
    let out = run(
        std::process::Command::new("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "sh",
            "-c",
            &outer,
        ]),
        std::time::Duration::from_secs(600),
    );
    let logs = || {
        format!(
            "{out}\n--- containerd log (tail) ---\n{}\n--- ufs snapshotter log (tail) ---\n{}",
            tail(
                &std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default(),
                20
            ),
            tail(
                &std::fs::read_to_string(d.join("ufs.log")).unwrap_or_default(),
                20
            )
        )
    };
    assert!(
        out.success() && out.stdout.contains("=== end"),
        "rootless containerd:\n{}",
        logs()
    );
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in out.stdout.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            current = name.to_string();
            sections.entry(current.clone()).or_default();
        } else {
            let s = sections.entry(current.clone()).or_default();
            s.push_str(line);
            s.push('\n');
        }
    }
    let id_line = sections
        .keys()
        .find(|k| k.starts_with("id "))
        .cloned()
        .unwrap_or_default();
    assert!(
        id_line.contains(&format!("0 {uid} 1")),
        "not in the user's namespace: {id_line}"
    );
    for what in ["image", "level1"] {
        let trees: Vec<(&str, BTreeMap<String, String>)> = ["ufs", "overlayfs"]
            .iter()
            .map(|sn| {
                let text = sections
                    .get(&format!("{sn} {what}"))
                    .cloned()
                    .unwrap_or_default();
                (
                    *sn,
                    parse_listing(&text)
                        .unwrap_or_else(|e| panic!("[{sn}] {what}: {e}\n{}", logs())),
                )
            })
            .collect();
        // The kernel overlay in a user namespace (containerd mounts it with `userxattr` there)
        // gives the two names of a file hard-linked in the upper different inode numbers; ufs
        // gives them one, as in every other case. Compared without which names share an inode,
        // and that checked on ufs alone.
        let strip = |t: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            t.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.split(" links=").next().unwrap_or(v).to_string(),
                    )
                })
                .collect()
        };
        let stripped: Vec<(&str, BTreeMap<String, String>)> =
            trees.iter().map(|(sn, t)| (*sn, strip(t))).collect();
        if let Err(e) = same_listings(&format!("rootless, {what}"), &stripped) {
            panic!("{e}");
        }
        if what == "level1" {
            assert!(
                trees[0].1["./data/hl2"].ends_with("links=[\"./data/hl\"]"),
                "{}",
                trees[0].1["./data/hl2"]
            );
            common::say(&format!(
                "rootless overlayfs: /data/hl2 {}",
                trees[1].1["./data/hl2"]
            ));
        }
        assert!(
            trees[0].1.contains_key("./data/new-name"),
            "rootless {what} on ufs"
        );
    }
}

/// `ctr run --uidmap/--gidmap --remap-labels` on ufs: the container, in a user namespace whose
/// root is host uid 100000, sees the same tree as one without a user namespace (owners are the
/// image's, 0), and what it writes lands in the layer with container ids (0), not host ids.
#[test]
fn remap_labels_give_a_user_namespace_the_image_owners() {
    const TEST: &str = "remap_labels_give_a_user_namespace_the_image_owners";
    let Some(_turn) = start(TEST) else { return };
    let c = setup(&["ufs"]).unwrap_or_else(|e| panic!("{e}"));
    let script = format!("{} && {LIST}", level_script(1));
    let plain = c
        .run_rm("ufs", IMAGE, "plain", &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e}"));
    let fifo = c.path("fifo");
    let runc = c.path("runc");
    let mapped = c
        .ctr_ok(&[
            "run",
            "--snapshotter",
            "ufs",
            "--fifo-dir",
            path_str(&fifo),
            "--runc-root",
            path_str(&runc),
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "--remap-labels",
            IMAGE,
            "mapped",
            "sh",
            "-c",
            // The marker, made after the listing, tells this container's upper from the plain
            // one's, which containerd's garbage collector may not have removed yet.
            &format!("cat /proc/self/uid_map; {script} && touch /mapped-marker"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        mapped
            .lines()
            .next()
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "100000", "65536"]),
        "not in a user namespace: {mapped}"
    );
    let mapped_tree = parse_listing(mapped.split_once('\n').map(|(_, r)| r).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let plain_tree = parse_listing(&plain).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = same_listings(
        "level 1 with and without a user namespace",
        &[("no userns", plain_tree), ("userns", mapped_tree)],
    ) {
        panic!("{e}");
    }
    let info = c
        .ctr_ok(&["snapshots", "--snapshotter", "ufs", "info", "mapped"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(info.contains("containerd.io/snapshot/uidmapping"), "{info}");
    // The container's upper: the one snapshot directory holding its marker.
    let uppers: Vec<std::path::PathBuf> = std::fs::read_dir(c.ufs_snapshots())
        .map(|d| d.flatten().map(|e| e.path().join("fs")).collect())
        .unwrap_or_default();
    let marked: Vec<&std::path::PathBuf> = uppers
        .iter()
        .filter(|p| p.join("mapped-marker").symlink_metadata().is_ok())
        .collect();
    assert_eq!(marked.len(), 1, "uppers with the marker: {marked:?}");
    use std::os::unix::fs::MetadataExt;
    let md = marked[0]
        .join("data/made-1")
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (md.uid(), md.gid()),
        (0, 0),
        "owner on disk of a file the mapped root wrote"
    );
    c.ctr_ok(&["containers", "rm", "mapped"])
        .unwrap_or_else(|e| panic!("{e}"));
}
