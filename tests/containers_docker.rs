//! The docker tier: the real dockerd 20.10 with its `fuse-overlayfs` storage driver running ufs
//! as `fuse-overlayfs`, each check repeated with Debian's fuse-overlayfs (1.10) under the same
//! driver and with docker's native `overlay2` driver, and compared: `docker import` and `docker
//! run` as root and as other users (a setuid program too), a `docker build` (legacy builder)
//! whose steps delete, recreate, rename and `chmod`, `docker commit` and `docker diff` of a
//! changed container, and the overlay2 layout docker keeps on disk (`l/` links, `link`, `lower`)
//! with ufs as the program mounting. The daemons are `tests/common/docker_support.rs`; the base
//! image and the changes are the podman tier's (`tests/common/containers_support.rs`).
//!
//! ufs is asserted equal to overlay2 (when the kernel lets docker use it); fuse-overlayfs is
//! compared too, and where it differs the difference is printed on stderr, not asserted: with
//! fuse-overlayfs 1.10 an image committed from a container that ran `rm -rf /d && mkdir /d`
//! still holds `/d`'s old entries (see `docker_commit_and_diff_of_a_changed_container`).
//!
//! A test that cannot run here (not root, no dockerd, no /dev/fuse, dockerd cannot start for a
//! reason of the machine) says why on stderr and passes. The tests take turns (one lock).

mod common;
#[path = "common/containers_support.rs"]
mod containers_support;
#[path = "common/docker_support.rs"]
mod docker_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use common::*;
use containers_support::{CHANGES, Node, check_changed_tree, make_base_tar, tree};
use docker_support::*;

/// One test at a time: each runs three daemons.
static TURN: Mutex<()> = Mutex::new(());

/// The image every test starts from (imported from a tarball: no registry).
const BASE: &str = "ufs-test-base:latest";

/// The daemons of one test: ufs first, then those of the references that can run here.
struct Daemons {
    all: Vec<Daemon>,
}

impl Daemons {
    fn ufs(&self) -> &Daemon {
        &self.all[0]
    }

    /// Runs `check` under every daemon: ufs must give overlay2's result; fuse-overlayfs's is
    /// compared and a difference noted on stderr. Returns ufs's result.
    fn compare<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        mut check: impl FnMut(&Daemon) -> T,
    ) -> T {
        let results: Vec<(Driver, T)> = self.all.iter().map(|d| (d.driver, check(d))).collect();
        let ufs = &results[0].1;
        for (driver, other) in &results[1..] {
            match driver {
                Driver::Overlay2 => assert!(
                    ufs == other,
                    "{what}: ufs and overlay2 differ ('-' ufs only, '+' overlay2 only):\n{}",
                    line_difference(ufs, other)
                ),
                _ if ufs != other => say(&format!(
                    "note: {what}: {name} differs from ufs (and overlay2) \
                     ('-' ufs only, '+' {name} only):\n{}",
                    line_difference(ufs, other),
                    name = driver.name(),
                )),
                _ => {}
            }
        }
        results
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .expect("ufs's result")
    }
}

/// The lines of `a`'s and `b`'s pretty `Debug` forms that only one of them has (at most 20).
fn line_difference<T: std::fmt::Debug>(a: &T, b: &T) -> String {
    let a = format!("{a:#?}");
    let b = format!("{b:#?}");
    let a: BTreeSet<&str> = a.lines().map(str::trim).collect();
    let b: BTreeSet<&str> = b.lines().map(str::trim).collect();
    let mut out: Vec<String> = a.difference(&b).map(|l| format!("  - {l}")).collect();
    out.extend(b.difference(&a).map(|l| format!("  + {l}")));
    out.truncate(20);
    out.join("\n")
}

/// Takes the turn and starts the daemons with the base image imported, or says why the test is
/// skipped (`None`).
fn start(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Daemons)> {
    if let Some(reason) = docker_skip_reason() {
        say(&format!("SKIP {test}: {reason}"));
        return None;
    }
    // A test that failed while holding the turn poisons the lock; the others still run.
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // Starting dockerd mounts nothing (its fuse-overlayfs driver only looks the program up in
    // PATH), so a daemon that does not come up says something about the machine, not ufs.
    let ufs = match Daemon::start(Driver::Ufs) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("SKIP {test}: dockerd cannot run here: {e}"));
            return None;
        }
    };
    let mut all = vec![ufs];
    for driver in [Driver::Overlay2, Driver::FuseOverlayfs] {
        match Daemon::start(driver) {
            Ok(d) => all.push(d),
            Err(e) => say(&format!(
                "SKIP {test} (comparison with {}): {e}",
                driver.name()
            )),
        }
    }
    let daemons = Daemons { all };
    for d in &daemons.all {
        let tar = make_docker_base_tar(d).unwrap_or_else(|e| panic!("{test}: {e}"));
        d.import(&tar, BASE);
    }
    Some((turn, daemons))
}

/// The podman tier's base rootfs, plus (where `setcap` is installed) `/probe/capped`, a copy
/// of busybox with the file capability `cap_net_raw+ep` (a `security.capability` xattr, which
/// docker keeps in layers), and `/links/a` and `/links/b`, two names of one file; tarred with
/// that xattr and that hard link.
fn make_docker_base_tar(d: &Daemon) -> Result<PathBuf, String> {
    let rootfs = d.path("rootfs");
    make_base_tar(&rootfs, &d.path("podman-base.tar"))?;
    if which("setcap").is_some() {
        let capped = rootfs.join("probe/capped");
        fs::copy(rootfs.join("bin/busybox"), &capped).map_err(|e| format!("copy: {e}"))?;
        let run = run_bounded(
            Command::new("setcap").arg("cap_net_raw+ep").arg(&capped),
            CMD_TIMEOUT,
        );
        if !run.success() {
            return Err(format!("setcap on {}:\n{run}", capped.display()));
        }
    } else {
        say("note: no setcap (Debian package libcap2-bin): no file capability in the base image");
    }
    // Two names of one file.
    let links = mkdirs(&rootfs.join("links"));
    fs::write(links.join("a"), "link\n").map_err(|e| format!("links/a: {e}"))?;
    fs::hard_link(links.join("a"), links.join("b")).map_err(|e| format!("links/b: {e}"))?;
    let tar = d.path("base.tar");
    let run = run_bounded(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--xattrs",
                "--xattrs-include=security.capability",
                "-cf",
            ])
            .arg(&tar)
            .arg("."),
        CMD_TIMEOUT,
    );
    if run.success() {
        Ok(tar)
    } else {
        Err(format!("tar of the base rootfs failed:\n{run}"))
    }
}

/// `/probe/capped`'s file capability in the unpacked export of `image` ([`image_tree`] first),
/// or why there is none.
fn exported_capability(d: &Daemon, image: &str) -> Result<Vec<u8>, String> {
    let p = d.path(&export_name(image)).join("probe/capped");
    get_xattr(&p, "security.capability").map_err(|e| format!("{}: {e}", p.display()))
}

fn export_name(image: &str) -> String {
    format!("export-{}", image.replace([':', '/'], "-"))
}

/// The files of `image` as a container sees them: `docker create` + `docker export` (through
/// the driver's mount), unpacked as root with owners, modes, set-id bits and file capabilities
/// kept, and walked without following symlinks.
fn image_tree(d: &Daemon, image: &str) -> BTreeMap<String, Node> {
    let name = export_name(image);
    d.ok(&["create", "--name", &name, image, "true"]);
    let tar = d.path(&format!("{name}.tar"));
    d.ok(&["export", "-o", tar.to_str().unwrap_or_default(), &name]);
    d.ok(&["rm", &name]);
    let dir = mkdirs(&d.path(&name));
    let run = run_bounded(
        Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .args([
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=security.capability",
                "-xpf",
            ])
            .arg(&tar),
        CMD_TIMEOUT,
    );
    assert!(
        run.success(),
        "[{}] untar of the export:\n{run}",
        d.driver.name()
    );
    let mut t = tree(&dir);
    // The directory unpacked into, not a file of the image.
    t.remove("/");
    t
}

/// `docker import` and `docker run` as root, as uid 65534 and as 1000:1000: the container's
/// root file system is the driver's mount (ufs's `fuse.ufs`), every user can read and write
/// it, and a setuid-root program run by another user has effective uid 0. A container stopped
/// and started again keeps what it wrote.
#[test]
fn docker_run_as_root_and_as_other_users() {
    const TEST: &str = "docker_run_as_root_and_as_other_users";
    let Some((_turn, daemons)) = start(TEST) else {
        return;
    };
    let started = Instant::now();
    for d in &daemons.all {
        let root_fs = d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            BASE,
            "sh",
            "-c",
            "awk '$5 == \"/\" { sub(/.* - /, \"\"); print $1 }' /proc/self/mountinfo",
        ]);
        assert_eq!(
            root_fs.trim(),
            d.driver.fstype(),
            "[{}] the container's / ",
            d.driver.name()
        );
    }
    let script = "id -u; id -g; cat /data/keep.txt; echo written > /tmp/w; cat /tmp/w; ls /d; \
                  /probe/suid-id -u";
    for (user, want) in [
        (None, "0\n0\nkeep\nwritten\nx\nz\n0\n"),
        (Some("65534"), "65534\n0\nkeep\nwritten\nx\nz\n0\n"),
        (Some("1000:1000"), "1000\n1000\nkeep\nwritten\nx\nz\n0\n"),
    ] {
        let what = format!("docker run -u {}", user.unwrap_or("(root)"));
        let out = daemons.compare(&what, |d| {
            let mut args = vec!["run", "--rm", "--network", "none"];
            if let Some(user) = user {
                args.extend(["-u", user]);
            }
            args.extend([BASE, "sh", "-c", script]);
            d.ok(&args)
        });
        assert_eq!(out, want, "{what}");
    }
    // Stopped and started again at once, a container's layer is unmounted and mounted again
    // while the previous mount's daemon may still be exiting; what it wrote stays.
    let kept = daemons.compare("docker stop and start, three times", |d| {
        d.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "s1",
            BASE,
            "sleep",
            "600",
        ]);
        for round in 0..3 {
            d.ok(&[
                "exec",
                "s1",
                "sh",
                "-c",
                &format!("echo {round} >> /data/log"),
            ]);
            d.ok(&["stop", "-t", "0", "s1"]);
            d.ok(&["start", "s1"]);
        }
        let out = d.ok(&["exec", "s1", "cat", "/data/log"]);
        d.ok(&["rm", "-f", "s1"]);
        out
    });
    assert_eq!(kept, "0\n1\n2\n");
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// A `docker build` (legacy builder, `--network none`) of one `RUN` per change of
/// [`CHANGES`] (delete files and a directory, `rm -rf d && mkdir d`, rename a directory,
/// `chmod`/`chown`/append), and a `chmod` of a file with a file capability: the image holds
/// exactly the expected files, the capability kept, the same as under overlay2; a change
/// through one name of a file with two reaches the other (there overlay2 differs); a second build takes every step from the cache; the image runs as another user;
/// `docker save` (which reads every layer through a read-only mount of it) writes as many
/// layers as under overlay2.
#[test]
fn docker_build_gives_the_image_overlay2_gives() {
    const TEST: &str = "docker_build_gives_the_image_overlay2_gives";
    let Some((_turn, daemons)) = start(TEST) else {
        return;
    };
    let started = Instant::now();
    let capped = which("setcap").is_some();
    let mut dockerfile = format!("FROM {BASE}\n");
    for change in CHANGES {
        dockerfile.push_str(&format!("RUN {change}\n"));
    }
    // A copy-up of a file with a capability by a mode change: the capability stays.
    if capped {
        dockerfile.push_str("RUN chmod 0750 /probe/capped\n");
    }
    // A copy-up of one name of a file with two.
    dockerfile.push_str("RUN echo more >> /links/a\n");
    let steps = CHANGES.len() + usize::from(capped) + 1;
    daemons.compare("the built image", |d| {
        let ctx = d.path("ctx");
        fs::write(ctx.join("Dockerfile"), &dockerfile).expect("write Dockerfile");
        let ctx = ctx.to_str().expect("utf-8 path");
        d.ok(&["build", "--network", "none", "-t", "built", ctx]);
        let again = d.ok(&["build", "--network", "none", "-t", "built", ctx]);
        assert_eq!(
            again.matches("Using cache").count(),
            steps,
            "[{}] the second build uses the cache for every step:\n{again}",
            d.driver.name()
        );
        let t = image_tree(d, "built");
        check_changed_tree(to_podman_driver(d.driver), &t);
        let capability = capped.then(|| {
            let base = image_tree(d, BASE);
            let mode = base.get("/probe/capped").map(|n| n.mode);
            let before = exported_capability(d, BASE);
            assert!(
                before.is_ok(),
                "[{}] the base's capability: {before:?}",
                d.driver.name()
            );
            let after = exported_capability(d, "built");
            assert_eq!(
                after,
                before,
                "[{}] the capability after chmod",
                d.driver.name()
            );
            (mode, t.get("/probe/capped").map(|n| n.mode), after)
        });
        if let Some((before, after, _)) = &capability {
            assert_eq!(
                (*before, *after),
                (Some(0o755), Some(0o750)),
                "[{}] /probe/capped's mode",
                d.driver.name()
            );
        }
        // Compared on their own below: there ufs differs from overlay2 on purpose.
        let t: BTreeMap<String, Node> = t
            .into_iter()
            .filter(|(k, _)| !k.starts_with("/links/"))
            .collect();
        (t, capability)
    });
    // ufs keeps the two names one file across the copy-up (its default `index=on`), as a
    // kernel overlay with `index=on` does; docker's overlay2 mounts with the kernel's default,
    // here `index=off`, under which the copied-up name becomes a file of its own and the other
    // keeps the old data (docs/DIFFERENCES.md, docs/DOCKER.md).
    let links = |d: &Daemon| {
        let dir = d.path(&export_name("built")).join("links");
        let b = fs::read_to_string(dir.join("b")).unwrap_or_else(|e| panic!("links/b: {e}"));
        let nlink = fs::symlink_metadata(dir.join("a"))
            .map(|m| m.nlink())
            .unwrap_or(0);
        (b, nlink)
    };
    assert_eq!(
        links(daemons.ufs()),
        ("link\nmore\n".to_string(), 2),
        "ufs: /links/b after a change through /links/a, and the link count"
    );
    for d in &daemons.all[1..] {
        let kernel_index =
            fs::read_to_string("/sys/module/overlay/parameters/index").unwrap_or_default();
        let got = links(d);
        if d.driver == Driver::Overlay2 && kernel_index.trim() == "N" {
            assert_eq!(
                got,
                ("link\n".to_string(), 1),
                "overlay2 (index=off): /links/b and the link count"
            );
        }
        say(&format!(
            "note: after `echo more >> /links/a` in a build step, /links/b and /links/a's link \
             count: {got:?} under {}, {:?} under ufs",
            d.driver.name(),
            links(daemons.ufs())
        ));
    }
    let ran = daemons.compare("running the built image", |d| {
        d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-u",
            "1000",
            "built",
            "sh",
            "-c",
            "cat /etc/conf /newdir/inner/f2; ls -a /d; /probe/suid-id -u; stat -c '%a %u' \
             /etc/mode /etc/owner",
        ])
    });
    assert_eq!(ran, "line1\nline2\nf2\n.\n..\nnew\n0\n640 0\n644 1000\n");
    daemons.compare("docker save of the built image", |d| {
        let tar = d.path("built-save.tar");
        d.ok(&["save", "-o", tar.to_str().unwrap_or_default(), "built"]);
        let list = run_bounded(Command::new("tar").arg("-tf").arg(&tar), CMD_TIMEOUT);
        assert!(list.success(), "tar -tf {}:\n{list}", tar.display());
        list.stdout
            .lines()
            .filter(|l| l.ends_with("/layer.tar"))
            .count()
    });
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// [`CHANGES`] made in a running container: `docker diff` lists them as under overlay2 (the
/// same lines; their order is the driver's walk), and `docker commit` makes an image with
/// exactly the changed files, as under overlay2.
///
/// fuse-overlayfs 1.10 differs on both: its `docker diff` lacks `D /d/x` and `D /d/z` after
/// `rm -rf /d && mkdir /d`, and the committed image holds `/d/x` and `/d/z/deep` again (both
/// read the running container's mount; the test prints the difference and asserts ufs against
/// overlay2). The same change as a build step comes out right with it.
#[test]
fn docker_commit_and_diff_of_a_changed_container() {
    const TEST: &str = "docker_commit_and_diff_of_a_changed_container";
    let Some((_turn, daemons)) = start(TEST) else {
        return;
    };
    let started = Instant::now();
    let diff = daemons.compare("docker diff", |d| {
        d.ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "c1",
            BASE,
            "sleep",
            "600",
        ]);
        d.ok(&["exec", "c1", "sh", "-c", &CHANGES.join(" && ")]);
        let lines: BTreeSet<String> = d.ok(&["diff", "c1"]).lines().map(String::from).collect();
        lines
    });
    for want in [
        "D /data/gone.txt",
        "D /data/sub",
        "C /d",
        "A /d/new",
        "D /d/x",
        "D /d/z",
        "D /olddir",
        "A /newdir",
        "A /newdir/f1",
        "A /newdir/inner/f2",
        "C /etc/conf",
        "C /etc/mode",
        "C /etc/owner",
    ] {
        assert!(diff.contains(want), "docker diff lacks {want:?}: {diff:?}");
    }
    for unchanged in ["/data/keep.txt", "/bin/sh", "/probe/id"] {
        assert!(
            !diff.iter().any(|l| l.ends_with(unchanged)),
            "docker diff lists the unchanged {unchanged}: {diff:?}"
        );
    }
    daemons.compare("the committed image", |d| {
        d.ok(&["commit", "c1", "committed"]);
        d.ok(&["rm", "-f", "c1"]);
        let t = image_tree(d, "committed");
        if d.driver != Driver::FuseOverlayfs {
            check_changed_tree(to_podman_driver(d.driver), &t);
        }
        t
    });
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// The overlay2 layout docker keeps with ufs as its fuse-overlayfs, as under overlay2: `l/`
/// holds one 26-character link per layer to `../ID/diff`; each layer's `link` names its link,
/// and `lower` lists its parent's link and then the parent's own `lower`; the layers of a built
/// image chain that way. While a container runs, its root file system is a `fuse.ufs` mount at
/// `ID/merged`, served by a process of the ufs binary named `fuse-overlayfs`, with the
/// container's layer as upper and its lowers as docker wrote them; it is gone once the
/// container is removed.
#[test]
fn docker_layout_and_the_program_mounting() {
    const TEST: &str = "docker_layout_and_the_program_mounting";
    let Some((_turn, daemons)) = start(TEST) else {
        return;
    };
    let started = Instant::now();
    let dockerfile = format!("FROM {BASE}\nRUN echo 1 > /one\nRUN rm -r /olddir\n");
    daemons.compare("the layer chains", |d| {
        fs::write(d.path("ctx/Dockerfile"), &dockerfile).expect("write Dockerfile");
        d.ok(&[
            "build",
            "--network",
            "none",
            "-t",
            "layered",
            d.path("ctx").to_str().unwrap_or_default(),
        ]);
        let layers = read_layout(d);
        // Depth of each layer (number of lowers) and whether it is an init layer.
        let mut shape: Vec<(usize, bool)> = layers
            .iter()
            .map(|(id, l)| (l.lower.len(), id.ends_with("-init")))
            .collect();
        shape.sort();
        shape
    });
    let ufs = daemons.ufs();
    ufs.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "c1",
        "layered",
        "sleep",
        "600",
    ]);
    let id = ufs.ok(&["inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", "c1"]);
    let merged = PathBuf::from(id.trim());
    assert!(
        merged.starts_with(ufs.store()),
        "merged dir {} is in the layer store",
        merged.display()
    );
    let entry = mount_at(&merged).unwrap_or_else(|| panic!("{} is not mounted", merged.display()));
    assert_eq!(entry.fstype, "fuse.ufs", "the container's mount");
    let pids = pids_with_arg(&merged);
    assert_eq!(pids.len(), 1, "one process serves {}", merged.display());
    let exe = fs::canonicalize(format!("/proc/{}/exe", pids[0])).expect("its executable");
    assert_eq!(
        exe,
        fs::canonicalize(ufs_bin()).expect("the ufs binary"),
        "the program mounting"
    );
    let comm = fs::read_to_string(format!("/proc/{}/comm", pids[0])).expect("its comm");
    assert_eq!(comm.trim(), "fuse-overlayfs", "the name docker ran it by");
    let cmdline = fs::read(format!("/proc/{}/cmdline", pids[0])).expect("its command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let layer = merged.parent().expect("the layer dir");
    let lower = fs::read_to_string(layer.join("lower")).expect("the container's lower file");
    let lowers: Vec<String> = lower
        .split(':')
        .map(|l| ufs.store().join(l).display().to_string())
        .collect();
    let want = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        layer.join("diff").display(),
        layer.join("work").display()
    );
    assert_eq!(
        args.get(1..3),
        Some(&["-o".to_string(), want][..]),
        "how docker ran it: {args:?}"
    );
    ufs.ok(&["rm", "-f", "c1"]);
    assert!(
        wait_until(MOUNT_TIMEOUT, || !is_mounted(&merged)),
        "{} still mounted after docker rm",
        merged.display()
    );
    assert!(
        wait_until(MOUNT_TIMEOUT, || pids_with_arg(&merged).is_empty()),
        "the ufs daemon of {} did not exit",
        merged.display()
    );
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// One layer directory of docker's overlay2 layout.
struct LayerDir {
    /// `lower`: the links of the layers below, top-most first.
    lower: Vec<String>,
}

/// Reads and checks the layout of `d`'s layer store, and returns its layers by id.
fn read_layout(d: &Daemon) -> BTreeMap<String, LayerDir> {
    let who = d.driver.name();
    let store = d.store();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for entry in fs::read_dir(store.join("l")).expect("readdir l/") {
        let entry = entry.expect("l/ entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.len() == 26
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            "[{who}] l/{name}: 26 characters A-Z, 0-9"
        );
        let target = fs::read_link(entry.path()).expect("l/ entries are links");
        let parts: Vec<String> = target
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        assert!(
            parts.len() == 3 && parts[0] == ".." && parts[2] == "diff",
            "[{who}] l/{name} -> {} (must be ../ID/diff)",
            target.display()
        );
        links.insert(name, parts[1].clone());
    }
    let mut layers = BTreeMap::new();
    for entry in fs::read_dir(&store).expect("readdir store") {
        let entry = entry.expect("store entry");
        let id = entry.file_name().to_string_lossy().into_owned();
        if id == "l" {
            continue;
        }
        let dir = entry.path();
        let link = fs::read_to_string(dir.join("link"))
            .unwrap_or_else(|e| panic!("[{who}] {id}/link: {e}"));
        assert_eq!(
            links.get(&link).map(String::as_str),
            Some(id.as_str()),
            "[{who}] {id}/link names l/{link}, which leads to ../{id}/diff"
        );
        assert!(
            fs::symlink_metadata(dir.join("diff")).is_ok_and(|m| m.is_dir()),
            "[{who}] {id}/diff"
        );
        let lower: Vec<String> = match fs::read_to_string(dir.join("lower")) {
            Ok(text) => text
                .split(':')
                .map(|l| {
                    let name = l
                        .strip_prefix("l/")
                        .unwrap_or_else(|| panic!("[{who}] {id}/lower: {text}"));
                    assert!(links.contains_key(name), "[{who}] {id}/lower names {l}");
                    name.to_string()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("[{who}] {id}/lower: {e}"),
        };
        // A layer with a parent has a work directory; the base layer has neither.
        assert_eq!(
            dir.join("work").is_dir(),
            !lower.is_empty(),
            "[{who}] {id}/work exists exactly when {id} has lowers"
        );
        layers.insert(id, LayerDir { lower });
    }
    // `lower` = the parent's link, then the parent's `lower`.
    let by_link: BTreeMap<&str, &LayerDir> = layers
        .iter()
        .filter_map(|(id, l)| {
            let link = links.iter().find(|(_, i)| *i == id)?.0;
            Some((link.as_str(), l))
        })
        .collect();
    for (id, layer) in &layers {
        if let Some((parent, rest)) = layer.lower.split_first() {
            let parent = by_link
                .get(parent.as_str())
                .unwrap_or_else(|| panic!("[{who}] {id}'s parent l/{parent}"));
            assert_eq!(
                &parent.lower, rest,
                "[{who}] {id}/lower continues its parent's"
            );
        }
    }
    assert_eq!(links.len(), layers.len(), "[{who}] one l/ link per layer");
    layers
}

/// The podman tier's checks name drivers in their messages.
fn to_podman_driver(driver: Driver) -> containers_support::Driver {
    match driver {
        Driver::Overlay2 => containers_support::Driver::Native,
        _ => containers_support::Driver::Ufs,
    }
}
