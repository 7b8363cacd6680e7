//! Write-side semantics of ufs, checked through real mounts: permissions of other users
//! (`allow_other`, compared with kernel overlayfs) and read-only mounts.

mod common;
#[path = "common/write_helpers.rs"]
mod write_helpers;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use write_helpers::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// 1. Permissions of other users (allow_other)
// ---------------------------------------------------------------------------------------------

fn perm_fixture(base: &Path) -> Dirs {
    let d = Dirs::new(base, 1);
    let l = d.lower(0);
    for (dir, mode) in [("ro", 0o755), ("rw", 0o777), ("sg", 0o2777)] {
        mkdirs(&l.join(dir));
        chmod(&l.join(dir), mode);
    }
    lchown(&l.join("sg"), 0, 5678);
    chmod(&l.join("sg"), 0o2777);
    put(l, "rofile", "root's\n");
    let mine = put(l, "mine", "nobody's\n");
    lchown(&mine, 65534, 65534);
    d
}

/// `(label, script)`: each runs as uid 65534 with umask 027 in the mount's root.
const PERM_OPS: &[(&str, &str)] = &[
    ("create at the 0755 root", "umask 027; : > new"),
    ("create in root 0755 dir", "umask 027; : > ro/new"),
    ("mkdir in root 0755 dir", "umask 027; mkdir ro/nd"),
    ("create in 0777 dir", "umask 027; : > rw/new"),
    ("mkdir in 0777 dir", "umask 027; mkdir rw/nd"),
    ("symlink in 0777 dir", "umask 027; ln -s target rw/sl"),
    ("mkfifo in 0777 dir", "umask 027; mkfifo rw/ff"),
    ("create in setgid dir", "umask 027; : > sg/new"),
    ("mkdir in setgid dir", "umask 027; mkdir sg/nd"),
    ("append to root's 0644 file", "echo x >> rofile"),
    ("chmod root's file", "chmod 600 rofile"),
    ("chmod own lower file", "chmod 600 mine"),
    ("append to own lower file", "echo more >> mine"),
    ("unlink in the 0755 root", "rm -f rofile"),
];

fn perm_run(m: &Path) -> Vec<String> {
    PERM_OPS
        .iter()
        .map(|(label, script)| {
            format!("{label}: {}", shell_outcome(&run_as_nobody(script, &[], m)))
        })
        .collect()
}

#[test]
fn other_users_create_with_their_ids_and_umask() {
    if skip("other_users_create_with_their_ids_and_umask") {
        return;
    }
    if which("setpriv").is_none() {
        eprintln!("SKIP other_users_create_with_their_ids_and_umask: no setpriv");
        return;
    }
    let t = tempdir();
    // Taken before the fixtures, so that times they set are blurred alike on both sides even
    // when building them crosses a second boundary.
    let since = now_secs();
    let kd = perm_fixture(&t.path().join("k"));
    let ud = perm_fixture(&t.path().join("u"));
    let _k = kd.mount_kernel();
    let _u = ud.mount_ufs_with("allow_other");
    let kr = perm_run(&kd.mnt);
    let ur = perm_run(&ud.mnt);

    let m = &ud.mnt;
    let mut failures = Vec::new();
    let expect = |label: &str, want: &str| {
        let line = ur
            .iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default();
        (line == format!("{label}: {want}"))
            .then_some(())
            .ok_or(format!("ufs `{line}`, expected {want}"))
    };
    for (label, want) in [
        ("create at the 0755 root", "EACCES"),
        ("create in root 0755 dir", "EACCES"),
        ("mkdir in root 0755 dir", "EACCES"),
        ("create in 0777 dir", "ok"),
        ("mkdir in 0777 dir", "ok"),
        ("create in setgid dir", "ok"),
        ("mkdir in setgid dir", "ok"),
        ("append to root's 0644 file", "EACCES"),
        ("chmod root's file", "EPERM"),
        ("chmod own lower file", "ok"),
    ] {
        failures.extend(expect(label, want).err());
    }
    let check = |rel: &str, uid: u32, gid: u32, perm: u32| -> Option<String> {
        match fs::symlink_metadata(m.join(rel)) {
            Err(e) => Some(format!("{rel}: {e}")),
            Ok(md) if (md.uid(), md.gid(), md.mode() & 0o7777) != (uid, gid, perm) => {
                Some(format!(
                    "{rel}: {}:{} {:04o}, expected {uid}:{gid} {perm:04o}",
                    md.uid(),
                    md.gid(),
                    md.mode() & 0o7777
                ))
            }
            Ok(_) => None,
        }
    };
    failures.extend(check("rw/new", 65534, 65534, 0o640));
    failures.extend(check("rw/nd", 65534, 65534, 0o750));
    failures.extend(check("sg/new", 65534, 5678, 0o640));
    failures.extend(check("sg/nd", 65534, 5678, 0o2750));
    failures.extend(check("mine", 65534, 65534, 0o600));
    if let Ok(md) = fs::symlink_metadata(m.join("rw/sl"))
        && (md.uid(), md.gid()) != (65534, 65534)
    {
        failures.push(format!(
            "rw/sl owned {}:{}, expected 65534:65534",
            md.uid(),
            md.gid()
        ));
    }
    for (k, u) in kr.iter().zip(ur.iter()) {
        if k != u {
            failures.push(format!("differs from the kernel: kernel `{k}`, ufs `{u}`"));
        }
    }
    let ks = blur_recent(&snapshot(&kd.mnt), since);
    let us = blur_recent(&snapshot(&ud.mnt), since);
    if let Err(e) = compare("ufs", &us, "kernel", &ks) {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "permission checks for uid 65534:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Read-only mounts
// ---------------------------------------------------------------------------------------------

#[test]
fn read_only_mount_refuses_modifications() {
    if skip("read_only_mount_refuses_modifications") {
        return;
    }
    let t = tempdir();
    let l = mkdirs(&t.path().join("l"));
    put(&l, "f", "f");
    put(&l, "d/x", "x");
    let mnt = mkdirs(&t.path().join("m"));
    let _u = UfsMount::mount(&format!("lowerdir={}", l.display()), &mnt);
    let m = mnt.as_path();
    let attempts: Vec<(&str, io::Result<String>)> = vec![
        ("create", done(fs::write(m.join("new"), "x"))),
        (
            "open O_RDWR",
            done(OpenOptions::new().read(true).write(true).open(m.join("f"))),
        ),
        ("truncate", done(truncate(&m.join("f"), 0))),
        ("mkdir", done(fs::create_dir(m.join("nd")))),
        (
            "mknod fifo",
            done(mknod(&m.join("ff"), libc::S_IFIFO | 0o644, 0, 0)),
        ),
        (
            "symlink",
            done(std::os::unix::fs::symlink("f", m.join("sl"))),
        ),
        ("link", done(fs::hard_link(m.join("f"), m.join("hl")))),
        ("unlink", done(fs::remove_file(m.join("f")))),
        ("rmdir", done(fs::remove_dir(m.join("d")))),
        ("rename", done(fs::rename(m.join("f"), m.join("g")))),
        (
            "RENAME_EXCHANGE",
            done(renameat2(&m.join("f"), &m.join("d"), libc::RENAME_EXCHANGE)),
        ),
        (
            "chmod",
            done(fs::set_permissions(
                m.join("f"),
                fs::Permissions::from_mode(0o600),
            )),
        ),
        (
            "chown",
            done(std::os::unix::fs::chown(m.join("f"), Some(1), Some(1))),
        ),
        ("utimes", done(utimens(&m.join("f"), Some((1, 0)), None))),
        ("setxattr", done(set_xattr(&m.join("f"), "user.a", b"1"))),
        ("removexattr", done(remove_xattr(&m.join("f"), "user.a"))),
    ];
    let bad: Vec<String> = attempts
        .iter()
        .filter(|(_, r)| errno_of(r) != Some(libc::EROFS))
        .map(|(what, r)| format!("{what}: {}", outcome(r)))
        .collect();
    assert!(
        bad.is_empty(),
        "these calls did not fail with EROFS:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        list_names(&l),
        vec!["d", "f"],
        "the lower must be untouched"
    );
}
