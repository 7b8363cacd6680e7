//! The containers tier, rootless: the real podman run by a user with subordinate ids, using ufs
//! as its `mount_program`, compared with the driver podman picks without one. The other podman
//! tests are `containers_podman`; the base image is `tests/common/containers_support.rs`.
//!
//! A test that cannot run here (not root, no podman, ...) says why on stderr and passes.
//! `.ci/run` installs the tools. The tests take turns (one lock): they are I/O- and
//! process-heavy, and the machine's cores are shared.

mod common;
#[path = "common/containers_support.rs"]
mod containers_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::*;
use containers_support::*;

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
