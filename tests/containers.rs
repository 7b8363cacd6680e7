//! The containers tier: the real podman (with buildah inside `podman build`) using ufs as its
//! `mount_program`, each check repeated under podman's native overlay driver and compared.
//!
//! Everything is private to the test: a base image built offline from a busybox-static rootfs
//! (`podman import`, no registry), and per test two storage roots (`ufs`: the overlay driver
//! with `mount_program = ufs`; `native`: the kernel's overlay) with their own `storage.conf` and
//! `containers.conf` named by `CONTAINERS_STORAGE_CONF`/`CONTAINERS_CONF`, and `--root`,
//! `--runroot` and `TMPDIR` inside the test's directory. Nothing global is read or changed.
//! Each store is a guard: dropping it (also on a failure) runs `podman system reset -f`,
//! unmounts whatever is still mounted below its directory, and only then removes the
//! directory (`remove_dir_all` does not follow symlinks; with a mount left it is not removed).
//!
//! A test that cannot run here (not root, no podman, ...) says why on stderr and passes.
//! `.ci/run` installs the tools. The tests take turns (one lock): they are I/O- and
//! process-heavy, and the machine's cores are shared.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// Bound for one podman command (a build of a few steps takes about 10 s here).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);

/// One test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The image every test starts from.
const BASE: &str = "localhost/ufs-test-base:latest";

/// Why this tier cannot run here, if it cannot.
fn tier_skip_reason() -> Option<String> {
    if let Some(reason) = skip_reason() {
        return Some(reason);
    }
    for tool in ["podman", "runc", "tar", "ldd", "id"] {
        if which(tool).is_none() {
            return Some(format!(
                "no {tool} in PATH (.ci/run installs podman, buildah, runc)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (Debian package busybox-static)".into());
    }
    None
}

/// Takes this test's turn, or says why the tier is skipped.
fn start(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(reason) = tier_skip_reason() {
        say(&format!("SKIP {test}: {reason}"));
        return None;
    }
    // A test that failed while holding the turn poisons the lock; the others still run.
    Some(TURN.lock().unwrap_or_else(|e| e.into_inner()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// The overlay driver with `mount_program` = the binary under test.
    Ufs,
    /// The same with `force_mask = "shared"`: layers on disk hold mode 0755 and root's owner,
    /// the image's owners and modes in `user.containers.override_stat` records, and
    /// containers/storage mounts with `xattr_permissions=2`.
    UfsForceMask,
    /// The overlay driver on the kernel's overlayfs.
    Native,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Ufs => "ufs",
            Driver::UfsForceMask => "ufs with force_mask",
            Driver::Native => "native",
        }
    }
}

/// A private podman store and configuration, removed on drop.
struct Store {
    dir: PathBuf,
    driver: Driver,
}

impl Store {
    /// A fresh store with the base image imported, or why that failed.
    fn new(driver: Driver) -> Result<Store, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ufs-podman-{}-", driver.name()))
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let store = Store { dir, driver };
        store.configure()?;
        let tar = store.dir.join("base.tar");
        make_base_tar(&store.dir.join("rootfs"), &tar)?;
        let run = store.podman(&["import", tar.to_str().unwrap_or_default(), BASE]);
        if !run.success() {
            return Err(format!("podman import of the base image failed:\n{run}"));
        }
        Ok(store)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn configure(&self) -> Result<(), String> {
        for sub in ["root", "runroot", "tmp", "engine-tmp"] {
            fs::create_dir_all(self.path(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let mount_program = match self.driver {
            Driver::Ufs => format!(
                "[storage.options.overlay]\nmount_program = \"{}\"\n",
                ufs_bin().display()
            ),
            Driver::UfsForceMask => format!(
                "[storage.options.overlay]\nmount_program = \"{}\"\nforce_mask = \"shared\"\n",
                ufs_bin().display()
            ),
            Driver::Native => String::new(),
        };
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n{mount_program}",
            self.path("root").display(),
            self.path("runroot").display()
        );
        // podman lowers its own process limit to 32768 and cannot raise limits again without
        // CAP_SYS_RESOURCE, which these machines do not give root; its defaults (1048576 open
        // files) would make runc fail. Ask for what the process already has.
        let nofile = hard_limit(libc::RLIMIT_NOFILE).min(1 << 20);
        let nproc = hard_limit(libc::RLIMIT_NPROC).min(32768);
        let containers = format!(
            "[containers]\nnetns = \"none\"\n\
             default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nevents_logfile_path = \"{}\"\ntmp_dir = \"{}\"\n",
            self.path("events.log").display(),
            self.path("engine-tmp").display()
        );
        for (name, text) in [
            ("storage.conf", storage),
            ("containers.conf", containers),
            ("registries.conf", String::new()),
        ] {
            fs::write(self.path(name), text).map_err(|e| format!("write {name}: {e}"))?;
        }
        Ok(())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"))
            .env_remove("RUST_LOG")
            .arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"));
        // podman drops storage.conf's driver options when `--root` is given.
        if self.driver != Driver::Native {
            cmd.arg("--storage-opt")
                .arg(format!("overlay.mount_program={}", ufs_bin().display()));
        }
        if self.driver == Driver::UfsForceMask {
            cmd.arg("--storage-opt").arg("overlay.force_mask=shared");
        }
        cmd
    }

    fn podman(&self, args: &[&str]) -> Run {
        run_bounded(self.command().args(args), PODMAN_TIMEOUT)
    }

    /// Runs podman and returns its stdout; panics with everything on failure.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.podman(args);
        assert!(
            run.success(),
            "[{}] podman {} failed:\n{run}",
            self.driver.name(),
            args.join(" ")
        );
        run.stdout
    }

    /// Mounts `image` with `podman image mount` and returns the mount point.
    fn image_mount(&self, image: &str) -> PathBuf {
        PathBuf::from(self.ok(&["image", "mount", image]).trim())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let reset = self.podman(&["system", "reset", "-f"]);
        if !reset.success() {
            eprintln!(
                "note: podman system reset in {} failed:\n{reset}",
                self.dir.display()
            );
        }
        // Whatever reset left mounted below the store (deepest first), so that removing the
        // directory never walks into a mount.
        let mut left: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        left.sort();
        for p in left.iter().rev() {
            force_unmount(p);
        }
        if mounts()
            .iter()
            .any(|m| m.mount_point.starts_with(&self.dir))
        {
            eprintln!(
                "warning: mounts remain below {}; leaving it in place",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `rl`.
    if unsafe { libc::getrlimit(resource, &mut rl) } != 0 {
        return 1024;
    }
    rl.rlim_max
}

/// The base image's files besides busybox: what the builds and containers change.
const BASE_FILES: &[(&str, &str)] = &[
    ("data/keep.txt", "keep\n"),
    ("data/gone.txt", "gone\n"),
    ("data/sub/a", "a\n"),
    ("d/x", "x\n"),
    ("d/z/deep", "deep\n"),
    ("olddir/f1", "f1\n"),
    ("olddir/inner/f2", "f2\n"),
    ("etc/conf", "line1\n"),
    ("etc/mode", "mode\n"),
    ("etc/owner", "owner\n"),
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", "root:x:0:\n"),
];

/// The changes every scenario makes, as one shell command (in a `RUN` each, or in a running
/// container all at once).
const CHANGES: &[&str] = &[
    "rm /data/gone.txt && rm -r /data/sub",
    "rm -rf /d && mkdir /d && echo new > /d/new",
    "mv /olddir /newdir",
    "chmod 0640 /etc/mode && chown 1000:1000 /etc/owner && echo line2 >> /etc/conf",
];

/// A busybox-static rootfs (`/bin/busybox` and a symlink per applet), [`BASE_FILES`], and
/// `/probe/id` (the host's `id`, with its libraries) twice: plain and setuid root. busybox
/// itself drops setuid privileges for `id`, so it cannot show them.
fn make_base_tar(rootfs: &Path, tar: &Path) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::io::Error| format!("base rootfs: {what}: {err}")
    };
    for d in ["bin", "tmp", "probe", "root"] {
        fs::create_dir_all(rootfs.join(d)).map_err(e(d))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(e("chmod tmp"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(e("copy busybox"))?;
    let list = run_bounded(Command::new("/bin/busybox").arg("--list"), CMD_TIMEOUT);
    if !list.success() {
        return Err(format!("busybox --list failed:\n{list}"));
    }
    for applet in list
        .stdout
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(e(applet))?;
    }
    for (path, content) in BASE_FILES {
        let p = rootfs.join(path);
        fs::create_dir_all(p.parent().unwrap_or(rootfs)).map_err(e(path))?;
        fs::write(&p, content).map_err(e(path))?;
    }
    let id = which("id").ok_or("no id(1)")?;
    let ldd = run_bounded(Command::new("ldd").arg(&id), CMD_TIMEOUT);
    for lib in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
        let rel = lib.trim_start_matches('/');
        let dest = rootfs.join(rel);
        fs::create_dir_all(dest.parent().unwrap_or(rootfs)).map_err(e(rel))?;
        // fs::copy follows the host's symlink to the library file itself.
        fs::copy(lib, &dest).map_err(e(rel))?;
    }
    fs::copy(&id, rootfs.join("probe/id")).map_err(e("copy id"))?;
    fs::copy(&id, rootfs.join("probe/suid-id")).map_err(e("copy id"))?;
    fs::set_permissions(
        rootfs.join("probe/suid-id"),
        fs::Permissions::from_mode(0o4755),
    )
    .map_err(e("chmod suid-id"))?;
    let run = run_bounded(
        Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(tar)
            .arg("."),
        CMD_TIMEOUT,
    );
    if run.success() {
        Ok(())
    } else {
        Err(format!("tar of the base rootfs failed:\n{run}"))
    }
}

/// The stores to compare: ufs always, native when the kernel overlay works for podman here.
fn stores(test: &str) -> Vec<Store> {
    stores_with(test, Driver::Ufs)
}

/// The stores to compare: ufs as `driver` always, native when the kernel overlay works here.
fn stores_with(test: &str, driver: Driver) -> Vec<Store> {
    let ufs = Store::new(driver).unwrap_or_else(|e| panic!("{test}: {e}"));
    let mut all = vec![ufs];
    match Store::new(Driver::Native) {
        Ok(native) => all.push(native),
        Err(e) => say(&format!(
            "SKIP {test} (comparison with the native overlay driver): {e}"
        )),
    }
    all
}

/// Runs the same check in every store and asserts that all agree with the first (ufs).
fn same_everywhere<T: PartialEq + std::fmt::Debug>(
    what: &str,
    stores: &[Store],
    mut check: impl FnMut(&Store) -> T,
) -> T {
    let mut results: Vec<T> = stores.iter().map(&mut check).collect();
    let first = results.remove(0);
    for (store, other) in stores[1..].iter().zip(results) {
        assert_eq!(
            first,
            other,
            "{what}: ufs and {} differ",
            store.driver.name()
        );
    }
    first
}

/// What a file tree looks like, for comparing image contents (times left out: every build
/// makes its own).
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// File contents (files under /bin, /lib, /probe: their size only) or symlink target.
    data: String,
}

/// Walks `root` (an image or container mount) without following symlinks; `/bin` and the
/// libraries are summarized by size.
fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        let name = format!("/{}", rel.display());
        let big = ["/bin/", "/lib", "/probe/"]
            .iter()
            .any(|b| name.starts_with(b));
        let data = if ft.is_symlink() {
            fs::read_link(&p)
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        } else if ft.is_file() && big {
            format!("{} bytes", md.size())
        } else if ft.is_file() {
            String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()).into_owned()
        } else {
            String::new()
        };
        if ft.is_dir() {
            for de in fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                let de = de.expect("readdir entry");
                todo.push(rel.join(de.file_name()));
            }
        }
        out.insert(
            name,
            Node {
                kind: kind_of(ft),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                data,
            },
        );
    }
    out
}

/// The tree after [`CHANGES`], from the base image: (path, kind, mode, uid, gid, contents)
/// for the paths the changes touch; every other path of the base must be unchanged.
fn check_changed_tree(driver: Driver, t: &BTreeMap<String, Node>) {
    check_changed_tree_but_set_id(driver, t);
    let suid = t.get("/probe/suid-id").expect("/probe/suid-id");
    assert_eq!(
        suid.mode,
        0o4755,
        "[{}] the setuid bit survives",
        driver.name()
    );
}

/// [`check_changed_tree`] without looking at set-id bits.
fn check_changed_tree_but_set_id(driver: Driver, t: &BTreeMap<String, Node>) {
    let who = driver.name();
    for gone in [
        "/data/gone.txt",
        "/data/sub",
        "/data/sub/a",
        "/d/x",
        "/d/z",
        "/d/z/deep",
        "/olddir",
        "/olddir/f1",
        "/olddir/inner",
    ] {
        assert!(!t.contains_key(gone), "[{who}] {gone} must be gone");
    }
    let file = |path: &str, mode: u32, uid: u32, data: &str| {
        let n = t
            .get(path)
            .unwrap_or_else(|| panic!("[{who}] {path} is missing"));
        assert_eq!(
            (n.kind, n.mode, n.uid, n.gid, n.data.as_str()),
            ("file", mode, uid, uid, data),
            "[{who}] {path}"
        );
    };
    file("/data/keep.txt", 0o644, 0, "keep\n");
    file("/d/new", 0o644, 0, "new\n");
    file("/newdir/f1", 0o644, 0, "f1\n");
    file("/newdir/inner/f2", 0o644, 0, "f2\n");
    file("/etc/conf", 0o644, 0, "line1\nline2\n");
    file("/etc/mode", 0o640, 0, "mode\n");
    file("/etc/owner", 0o644, 1000, "owner\n");
    let names = |dir: &str| -> Vec<&str> {
        let prefix = format!("{dir}/");
        t.keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|k| !k.contains('/'))
            .collect()
    };
    assert_eq!(names("/d"), ["new"], "[{who}] /d after rm -rf d && mkdir d");
    assert_eq!(names("/data"), ["keep.txt"], "[{who}] /data");
    assert_eq!(names("/newdir"), ["f1", "inner"], "[{who}] /newdir");
}

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

/// The user the rootless test runs podman as; it exists only in the test's private copies of
/// `/etc/passwd`, `/etc/group`, `/etc/subuid` and `/etc/subgid`.
const ROOTLESS_UID: u32 = 60123;

/// Rootless podman (a user with subordinate ids, ufs run by podman as root of the user
/// namespace), also with `--user 1000` and `--userns=keep-id`, compared with the driver podman
/// picks without a `mount_program` (the kernel's overlay, or fuse-overlayfs when installed).
///
/// Runs in a private mount namespace in which the test user is added to private copies of the
/// account files and `/dev/fuse` is a node of mode 0666 (the host's may be 0600, and Debian's
/// fusermount3 opens it with the user's own rights), so nothing outside changes; every mount
/// in it ends with it.
#[test]
fn rootless_podman_with_keep_id() {
    const TEST: &str = "rootless_podman_with_keep_id";
    let Some(_turn) = start(TEST) else { return };
    for tool in ["unshare", "setpriv", "mknod", "newuidmap", "newgidmap"] {
        if which(tool).is_none() {
            say(&format!(
                "SKIP {TEST}: no {tool} in PATH (Debian packages util-linux, uidmap)"
            ));
            return;
        }
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    if passwd
        .lines()
        .any(|l| l.split(':').nth(2) == Some(&ROOTLESS_UID.to_string()))
    {
        say(&format!("SKIP {TEST}: uid {ROOTLESS_UID} exists already"));
        return;
    }
    let started = Instant::now();
    let dir = RootlessDir::new();
    let d = dir.0.clone();
    let (uid, user) = (ROOTLESS_UID, "ufs-rootless");
    let write = |name: &str, text: String| {
        fs::write(d.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    write(
        "passwd",
        format!(
            "{passwd}{user}:x:{uid}:{uid}::{}/home:/bin/sh\n",
            d.display()
        ),
    );
    write("group", format!("{group}{user}:x:{uid}:\n"));
    write("subuid", format!("{user}:200000:65536\n"));
    write("subgid", format!("{user}:200000:65536\n"));
    make_base_tar(&d.join("rootfs"), &d.join("base.tar")).expect("base image");
    for sub in ["home", "run"] {
        mkdirs(&d.join(sub));
        std::os::unix::fs::chown(d.join(sub), Some(uid), Some(uid)).expect("chown");
    }
    fs::set_permissions(d.join("run"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let nofile = hard_limit(libc::RLIMIT_NOFILE).min(1 << 20);
    let containers = format!(
        "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile={nofile}:{nofile}\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
    );
    let checks = "id -u; awk '$5 == \"/\" { sub(/.* - /, \"\"); print $1 }' /proc/self/mountinfo; \
                  stat -c %u:%g /data/keep.txt; touch /tmp/new; stat -c %u:%g /tmp/new";
    let mut script = format!(
        "set -e
cleanup() {{
  for s in ufs native; do as env CONTAINERS_STORAGE_CONF={d}/$s/storage.conf podman system reset -f >/dev/null 2>&1 || true; done
  grep -o ' {d}/[^ ]*' /proc/self/mountinfo | sort -r | while read m; do umount -l $m 2>/dev/null || true; done
}}
trap cleanup EXIT
mknod -m 666 {d}/fuse c 10 229
mount --bind {d}/fuse /dev/fuse
for f in passwd group subuid subgid; do mount --bind {d}/$f /etc/$f; done
as() {{ setpriv --reuid={uid} --regid={uid} --init-groups env HOME={d}/home XDG_RUNTIME_DIR={d}/run CONTAINERS_CONF={d}/containers.conf \"$@\"; }}
",
        d = d.display()
    );
    for driver in [Driver::Ufs, Driver::Native] {
        let s = driver.name();
        let sd = d.join(s);
        mkdirs(&sd);
        let mount_program = match driver {
            Driver::Ufs | Driver::UfsForceMask => format!(
                "[storage.options.overlay]\nmount_program = \"{}\"\n",
                ufs_bin().display()
            ),
            Driver::Native => String::new(),
        };
        fs::write(
            sd.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/runroot\"\n{mount_program}",
                sd.display()
            ),
        )
        .expect("storage.conf");
        std::os::unix::fs::chown(&sd, Some(uid), Some(uid)).expect("chown");
        let p = format!(
            "as env CONTAINERS_STORAGE_CONF={}/storage.conf TMPDIR={d}/home podman",
            sd.display(),
            d = d.display()
        );
        script.push_str(&format!(
            "{p} import {d}/base.tar {BASE} >/dev/null
echo '== {s} root'
{p} run --rm {BASE} sh -c '{checks}'
echo '== {s} user'
{p} run --rm --user 1000 {BASE} sh -c '{checks}'
echo '== {s} keep-id'
{p} run --rm --userns=keep-id {BASE} sh -c '{checks}'
",
            d = d.display(),
            checks = checks.replace('\'', "'\\''")
        ));
    }
    fs::write(d.join("containers.conf"), containers).expect("containers.conf");
    let run = run_bounded(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
        PODMAN_TIMEOUT,
    );
    assert!(run.success(), "rootless podman failed:\n{run}");
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in run.stdout.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = name.to_string();
        } else {
            sections
                .entry(current.clone())
                .or_default()
                .push(line.to_string());
        }
    }
    let section = |name: &str| sections.get(name).cloned().unwrap_or_default();
    let want_fs = if is_stand_in() {
        None
    } else {
        Some("fuse.ufs")
    };
    for (case, id, new_owner) in [
        ("root", "0", "0:0"),
        ("user", "1000", "1000:0"),
        ("keep-id", &*uid.to_string(), &*format!("{uid}:{uid}")),
    ] {
        let ufs = section(&format!("ufs {case}"));
        let native = section(&format!("native {case}"));
        assert_eq!(ufs.len(), 4, "ufs {case}:\n{run}");
        assert_eq!(ufs[0], id, "ufs {case}: id -u");
        if let Some(fs) = want_fs {
            assert_eq!(ufs[1], fs, "ufs {case}: the container's / ");
        }
        assert_eq!(ufs[2], "0:0", "ufs {case}: owner of an image file");
        assert_eq!(ufs[3], new_owner, "ufs {case}: owner of a new file");
        // Rootless podman picks fuse-overlayfs over the kernel's overlay when it is installed;
        // either is the reference.
        let reference = native.get(1).map(String::as_str).unwrap_or_default();
        assert!(
            ["overlay", "fuse.fuse-overlayfs"].contains(&reference),
            "native {case}: {reference}:\n{run}"
        );
        if case == "root" {
            say(&format!("{TEST}: the reference driver mounted {reference}"));
        }
        assert_eq!(
            (&ufs[0], &ufs[2], &ufs[3]),
            (&native[0], &native[2], &native[3]),
            "{case}: ufs and native differ:\n{run}"
        );
    }
    say(&format!("{TEST}: {:.1?}", started.elapsed()));
}

/// The rootless test's directory, removed on drop (its mounts live in a namespace that ended).
struct RootlessDir(PathBuf);

impl RootlessDir {
    fn new() -> RootlessDir {
        let dir = tempfile::Builder::new()
            .prefix("ufs-rootless-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        RootlessDir(dir)
    }
}

impl Drop for RootlessDir {
    fn drop(&mut self) {
        if mounts().iter().any(|m| m.mount_point.starts_with(&self.0)) {
            eprintln!(
                "warning: mounts remain below {}; leaving it",
                self.0.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}
