//! `xattr_permissions=` (fuse-overlayfs's stat records): containers/storage with `force_mask`
//! stores layer files with a forced mode and keeps the image's owner and mode in
//! `user.containers.override_stat`, then mounts with `xattr_permissions=2`. The same steps run
//! on ufs and, where it is installed, on fuse-overlayfs, and the views are compared.

mod common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

const RECORD: &str = "user.containers.override_stat";

/// A lower layer as containers/storage writes it with `force_mask=shared`: every file and
/// directory root-owned with mode 0755 on disk, the image's owner and mode in the record.
fn forced_lower(l: &Path) {
    let record = |rel: &str, value: &str| {
        let p = if rel.is_empty() {
            l.to_path_buf()
        } else {
            l.join(rel)
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        set_xattr(&p, RECORD, value.as_bytes()).expect("setxattr");
    };
    fs::create_dir_all(l.join("d")).expect("mkdir");
    fs::create_dir_all(l.join("bin")).expect("mkdir");
    fs::write(l.join("secret"), "s\n").expect("write");
    fs::write(l.join("d/f"), "f\n").expect("write");
    fs::write(l.join("bin/su"), "su\n").expect("write");
    fs::write(l.join("plain"), "p\n").expect("write");
    fs::set_permissions(l.join("plain"), fs::Permissions::from_mode(0o644)).expect("chmod");
    record("", "0:0:0755");
    record("secret", "1000:1000:0600");
    record("d", "5:6:0750");
    record("d/f", "5:6:0640");
    record("bin", "0:0:0755");
    record("bin/su", "0:0:04755");
}

/// The steps a container would take; `unrecorded` adds an append to a lower file without a
/// record.
fn change(m: &Path, unrecorded: bool) {
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::lchown(m.join("d/f"), Some(7), Some(8)).expect("chown");
    if unrecorded {
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("plain"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
            .expect("append");
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(m.join("n"))
        .expect("create");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(m.join("nd"))
        .expect("mkdir");
    fs::set_permissions(m.join("nd"), fs::Permissions::from_mode(0o711)).expect("chmod");
    std::os::unix::fs::lchown(m.join("nd"), Some(3), None).expect("chown");
}

const PATHS: [&str; 9] = [
    "", "secret", "d", "d/f", "bin", "bin/su", "plain", "n", "nd",
];

/// `path uid:gid mode` of each of [`PATHS`] through the mount.
fn view(m: &Path) -> Vec<String> {
    PATHS
        .iter()
        .map(|rel| match fs::symlink_metadata(m.join(rel)) {
            Ok(md) => format!("/{rel} {}:{} {:o}", md.uid(), md.gid(), md.mode() & 0o7777),
            Err(e) => format!("/{rel} {}", errno_name(&e)),
        })
        .collect()
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

const EXPECTED_BEFORE: [&str; 9] = [
    "/ 0:0 755",
    "/secret 1000:1000 600",
    "/d 5:6 750",
    "/d/f 5:6 640",
    "/bin 0:0 755",
    "/bin/su 0:0 4755",
    "/plain 0:0 644",
    "/n ENOENT",
    "/nd ENOENT",
];

const EXPECTED_AFTER: [&str; 9] = [
    "/ 0:0 755",
    "/secret 1000:1000 640",
    "/d 5:6 750",
    "/d/f 7:8 640",
    "/bin 0:0 755",
    "/bin/su 0:0 4755",
    "/plain 0:0 644",
    "/n 0:0 600",
    "/nd 3:0 711",
];

struct Stack {
    l: std::path::PathBuf,
    u: std::path::PathBuf,
    w: std::path::PathBuf,
    m: std::path::PathBuf,
}

impl Stack {
    fn new(base: &Path, name: &str) -> Stack {
        let s = Stack {
            l: mkdirs(&base.join(name).join("l")),
            u: mkdirs(&base.join(name).join("u")),
            w: mkdirs(&base.join(name).join("w")),
            m: mkdirs(&base.join(name).join("m")),
        };
        forced_lower(&s.l);
        s
    }

    fn opts(&self, extra: &str) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            self.l.display(),
            self.u.display(),
            self.w.display()
        )
    }
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Regression: `xattr_permissions=2` was accepted and ignored, so with `force_mask` every file
/// of an image showed the forced mode and the daemon's owner, and changes made through the
/// mount changed the disk instead of the records.
#[test]
fn records_give_owners_and_modes_and_take_changes() {
    if skip("records_give_owners_and_modes_and_take_changes") {
        return;
    }
    let t = tempdir();
    let s = Stack::new(t.path(), "ufs");
    {
        let u = UfsMount::mount(&s.opts(",xattr_permissions=2"), &s.m);
        assert_eq!(view(&u.mnt), lines(&EXPECTED_BEFORE), "records shown");
        change(&u.mnt, true);
        assert_eq!(view(&u.mnt), lines(&EXPECTED_AFTER), "changes shown");
        // The records are ufs's own: hidden through the mount.
        let got = get_xattr(&u.mnt.join("secret"), RECORD);
        assert_eq!(
            got.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENODATA),
            "reading a record through the mount"
        );
        let listed = list_xattrs(&u.mnt.join("secret")).expect("listxattr");
        assert!(!listed.iter().any(|n| n == RECORD), "{listed:?}");
        let set = set_xattr(&u.mnt.join("n"), RECORD, b"0:0:0777");
        assert!(set.is_err(), "a record written through the mount");
    }
    // On disk: forced modes, the daemon's owner, the changes in the records.
    for (rel, record) in [
        ("", "0:0:40755"),
        ("secret", "1000:1000:100640"),
        ("d/f", "7:8:100640"),
        ("plain", "0:0:100644"),
        ("n", "0:0:100600"),
        ("nd", "3:0:40711"),
    ] {
        let p = s.u.join(rel);
        let md = fs::symlink_metadata(&p).expect("stat upper");
        assert_eq!(
            (md.mode() & 0o7777, md.uid()),
            (0o755, 0),
            "disk mode and owner of upper/{rel}"
        );
        assert_eq!(
            String::from_utf8_lossy(&get_xattr(&p, RECORD).expect("record")),
            record,
            "record of upper/{rel}"
        );
    }
    // The records last: a new mount shows the same.
    {
        let u = UfsMount::mount(&s.opts(",xattr_permissions=2"), &s.m);
        assert_eq!(view(&u.mnt), lines(&EXPECTED_AFTER), "after a remount");
    }
    // Without the option the records are ordinary xattrs, never taken as owners.
    let u = UfsMount::mount(&s.opts(""), &s.m);
    let md = fs::symlink_metadata(u.mnt.join("bin/su")).expect("stat");
    assert_eq!(
        (md.uid(), md.mode() & 0o7777),
        (0, 0o755),
        "bin/su without the option"
    );
    assert_eq!(
        get_xattr(&u.mnt.join("bin/su"), RECORD).expect("getxattr"),
        b"0:0:04755"
    );
}

/// The same steps on fuse-overlayfs 1.x: the mount shows the same owners and modes. Not for the
/// lower file without a record: fuse-overlayfs 1.10 answers `ENODATA` to its `stat` (and to the
/// copy-up of an append), where later versions and ufs show its real owner and mode. After the
/// changes, not for three steps that fuse-overlayfs 1.10 gets wrong and 1.14 fixed (its NEWS:
/// "fix file owner retrieval for chmod", "honor umask with xattr_permissions", "do not force -1
/// for owner"): `chmod` of `secret` loses its owner, `n` made with mode 0600 shows 0755, and
/// `chown 3 nd` sets its group to 65534. [`EXPECTED_AFTER`] holds what they must show.
#[test]
fn records_match_fuse_overlayfs() {
    if skip("records_match_fuse_overlayfs") {
        return;
    }
    let Some(fuse_overlayfs) = which("fuse-overlayfs") else {
        say(
            "SKIP records_match_fuse_overlayfs: no fuse-overlayfs in PATH \
             (apt-get install fuse-overlayfs)",
        );
        return;
    };
    let t = tempdir();
    let ufs_side = Stack::new(t.path(), "ufs");
    let fo_side = Stack::new(t.path(), "fo");
    let (ufs_before, ufs_after) = {
        let u = UfsMount::mount(&ufs_side.opts(",xattr_permissions=2"), &ufs_side.m);
        let before = view(&u.mnt);
        change(&u.mnt, false);
        (before, view(&u.mnt))
    };
    let run = run_bounded(
        Command::new(&fuse_overlayfs)
            .args(["-o", &fo_side.opts(",xattr_permissions=2")])
            .arg(&fo_side.m),
        CMD_TIMEOUT,
    );
    assert!(run.success(), "fuse-overlayfs:\n{run}");
    assert!(wait_mounted(&fo_side.m), "fuse-overlayfs did not mount");
    let guard = Unmount(fo_side.m.clone());
    let fo_before = view(&fo_side.m);
    change(&fo_side.m, false);
    let fo_after = view(&fo_side.m);
    drop(guard);
    let recorded = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|l| !l.starts_with("/plain "))
            .collect()
    };
    let fixed_since = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|l| !["/secret ", "/n ", "/nd "].iter().any(|p| l.starts_with(p)))
            .collect()
    };
    let (ufs_before, ufs_after) = (recorded(ufs_before), fixed_since(recorded(ufs_after)));
    let (fo_before, fo_after) = (recorded(fo_before), fixed_since(recorded(fo_after)));
    assert_eq!(
        ufs_before, fo_before,
        "before the changes (ufs, fuse-overlayfs)"
    );
    assert_eq!(
        ufs_after, fo_after,
        "after the changes (ufs, fuse-overlayfs)"
    );
}

/// Unmounts on every way out of a test.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}
