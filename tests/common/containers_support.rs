//! Helpers for the containers tier (`tests/containers_*.rs`): private podman stores, one per
//! overlay driver (`Driver`), the base image they import, the changes the scenarios make, and the
//! comparison of file trees and of results between the drivers.
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
//! The tests take turns through `start` (one lock, `TURN`): each test binary that includes this
//! module has its own lock, and cargo runs test binaries one after another, so no two podman
//! tests ever run at the same time.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::*;

/// Bound for one podman command (a build of a few steps takes about 10 s here).
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);

/// One test at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The image every test starts from.
pub const BASE: &str = "localhost/ufs-test-base:latest";

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
pub fn start(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(reason) = tier_skip_reason() {
        say(&format!("SKIP {test}: {reason}"));
        return None;
    }
    // A test that failed while holding the turn poisons the lock; the others still run.
    Some(TURN.lock().unwrap_or_else(|e| e.into_inner()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
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
    pub fn name(self) -> &'static str {
        match self {
            Driver::Ufs => "ufs",
            Driver::UfsForceMask => "ufs with force_mask",
            Driver::Native => "native",
        }
    }
}

/// A private podman store and configuration, removed on drop.
pub struct Store {
    dir: PathBuf,
    pub driver: Driver,
}

impl Store {
    /// A fresh store with the base image imported, or why that failed.
    pub fn new(driver: Driver) -> Result<Store, String> {
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

    pub fn path(&self, name: &str) -> PathBuf {
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

    pub fn command(&self) -> Command {
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

    pub fn podman(&self, args: &[&str]) -> Run {
        run_bounded(self.command().args(args), PODMAN_TIMEOUT)
    }

    /// Runs podman and returns its stdout; panics with everything on failure.
    pub fn ok(&self, args: &[&str]) -> String {
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
    pub fn image_mount(&self, image: &str) -> PathBuf {
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

pub fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
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
pub const CHANGES: &[&str] = &[
    "rm /data/gone.txt && rm -r /data/sub",
    "rm -rf /d && mkdir /d && echo new > /d/new",
    "mv /olddir /newdir",
    "chmod 0640 /etc/mode && chown 1000:1000 /etc/owner && echo line2 >> /etc/conf",
];

/// A busybox-static rootfs (`/bin/busybox` and a symlink per applet), [`BASE_FILES`], and
/// `/probe/id` (the host's `id`, with its libraries) twice: plain and setuid root. busybox
/// itself drops setuid privileges for `id`, so it cannot show them.
pub fn make_base_tar(rootfs: &Path, tar: &Path) -> Result<(), String> {
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
pub fn stores(test: &str) -> Vec<Store> {
    stores_with(test, Driver::Ufs)
}

/// The stores to compare: ufs as `driver` always, native when the kernel overlay works here.
pub fn stores_with(test: &str, driver: Driver) -> Vec<Store> {
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
pub fn same_everywhere<T: PartialEq + std::fmt::Debug>(
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
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File contents (files under /bin, /lib, /probe: their size only) or symlink target.
    pub data: String,
}

/// Walks `root` (an image or container mount) without following symlinks; `/bin` and the
/// libraries are summarized by size.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
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
pub fn check_changed_tree(driver: Driver, t: &BTreeMap<String, Node>) {
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
pub fn check_changed_tree_but_set_id(driver: Driver, t: &BTreeMap<String, Node>) {
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
