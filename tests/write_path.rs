//! Write-side semantics of ufs, checked through real mounts: the same operations run on ufs and
//! on kernel overlayfs (the oracle) over identical layers, and their outcomes and the resulting
//! trees are compared; both implementations must read each other's upper layer; plus the
//! on-disk formats (whiteouts, opaque markers), copy-up fidelity, concurrency, open file
//! descriptors, permissions of other users, crash safety, ENOSPC, mmap and read-only mounts.

mod common;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// The scripted operation sequence and its fixture
// ---------------------------------------------------------------------------------------------

/// Writes `content` to `root/rel`, creating parent directories.
fn put(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Two lowers exercising every case of the operation script. All times are fixed (old), so that
/// a timestamp that survives a copy-up can be compared exactly.
fn ops_fixture(base: &Path, features: Features) -> Dirs {
    let since = now_secs() - 1;
    let mut d = Dirs::new(base, 2);
    d.features = features;
    let (l1, l2) = (d.lower(0).to_path_buf(), d.lower(1).to_path_buf());
    // top lower
    put(&l1, "f", "one\n");
    put(&l1, "d/x", "x\n");
    put(&l1, "d/sub/z", "z\n");
    std::os::unix::fs::symlink("f", l1.join("lnk")).unwrap();
    put(&l1, "lo1", "lo1\n");
    let lo2 = put(&l1, "lo2", "lo2\n");
    lchown(&lo2, 1000, 1000);
    chmod(&lo2, 0o600);
    put(&l1, "l1only", "only\n");
    put(&l1, "m/a", "ma\n");
    put(&l1, "p/q/f1", "f1");
    put(&l1, "p/q/s/t", "t");
    put(&l1, "p/keep", "keep");
    mknod(&l1.join("cdev"), libc::S_IFCHR | 0o640, 1, 7).unwrap();
    mknod_whiteout(&l1.join("gone")).unwrap();
    put(&l1, "cu/only", "cu\n");
    put(&l1, "od/vis", "vis");
    set_xattr(&l1.join("od"), "trusted.overlay.opaque", b"y").unwrap();
    // bottom lower
    put(&l2, "f", "hidden by l1\n");
    let g = put(&l2, "g", "gee\n");
    chmod(&g, 0o4755);
    set_xattr(&g, "user.x", b"v").unwrap();
    set_times(&g, 12345, 678_000_000).unwrap();
    put(&l2, "d/y", "y\n");
    put(&l2, "d/deep/er", "er\n");
    put(&l2, "e/e1", "e\n");
    put(&l2, "h1", "hl\n");
    if features.0.contains("index=on") {
        fs::hard_link(l2.join("h1"), l2.join("h2")).unwrap();
    } else {
        // Known difference (docs/DIFFERENCES.md, "Hard links of lower files"): with
        // `index=off` the kernel breaks lower hard links on copy-up while both names keep one
        // inode number, which a FUSE node (whose id is its inode number) cannot show. The
        // index=off run therefore uses two separate files; `index=on` covers the links.
        put(&l2, "h2", "hl\n");
    }
    mkfifo(&l2.join("fifo"), 0o644).unwrap();
    let sparse = fs::File::create(l2.join("sparse")).unwrap();
    sparse.set_len(8 * MIB).unwrap();
    sparse.write_all_at(b"end\n", 8 * MIB).unwrap();
    let sparse2 = fs::File::create(l2.join("sparse2")).unwrap();
    sparse2.write_all_at(b"data", 4 * MIB).unwrap();
    sparse2.set_len(12 * MIB).unwrap();
    put(&l2, "m/b", "mb\n");
    put(&l2, "p/q/f2", "f2");
    put(&l1, "rd/a", "rda");
    put(&l2, "rd/b", "rdb");
    put(&l2, "rd/sub/c", "rdc");
    put(&l2, "p/rq/x", "rqx");
    put(&l2, "gone", "gone\n");
    put(&l2, "od/hidden", "h");
    settle_times(&l1, since);
    settle_times(&l2, since);
    settle_times(&d.upper, since);
    d
}

macro_rules! op {
    ($name:expr, $f:expr) => {
        Op {
            name: $name,
            run: $f,
            check: Check::Kernel,
        }
    };
}

fn write_at(m: &Path, rel: &str, data: &[(u64, &[u8])]) -> io::Result<String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join(rel))?;
    for (off, bytes) in data {
        f.write_all_at(bytes, *off)?;
    }
    Ok(String::new())
}

/// `mtime nlink size` of `p`, as an op result.
fn stat_line(p: &Path) -> io::Result<String> {
    let md = fs::symlink_metadata(p)?;
    Ok(format!(
        "mtime={}.{:09} nlink={} size={}",
        md.mtime(),
        md.mtime_nsec(),
        md.nlink(),
        md.len()
    ))
}

fn create_new(p: &Path) -> io::Result<String> {
    done(OpenOptions::new().write(true).create_new(true).open(p))
}

/// The scripted sequence of `ops_match_kernel` (also replayed by the remount tests). Names refer
/// to [`ops_fixture`]; later operations depend on earlier ones.
fn script() -> Vec<Op> {
    use std::os::unix::fs::{chown, lchown, symlink};
    vec![
        // create, O_EXCL, O_TRUNC, O_APPEND, writes at offsets
        op!("create n", |m| done(fs::write(m.join("n"), "new\n"))),
        op!("O_EXCL on lower f", |m| create_new(&m.join("f"))),
        op!("O_EXCL on lower d/y", |m| create_new(&m.join("d/y"))),
        op!("O_EXCL new d/newfile in a merged dir", |m| create_new(
            &m.join("d/newfile")
        )),
        op!("O_TRUNC lower d/x", |m| {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(m.join("d/x"))?;
            done(f.write_all(b"trunc\n"))
        }),
        op!("O_APPEND lower f", |m| {
            let mut f = OpenOptions::new().append(true).open(m.join("f"))?;
            done(f.write_all(b"app\n"))
        }),
        op!("pwrite lower g at 2 and past EOF at 10", |m| write_at(
            m,
            "g",
            &[(2, b"XY"), (10, b"Z")]
        )),
        op!("read g", |m| Ok(format!("{:?}", fs::read(m.join("g"))?))),
        // truncate, fallocate, lseek
        op!("truncate lower sparse to 10", |m| done(truncate(
            &m.join("sparse"),
            10
        ))),
        op!("truncate lower d/sub/z up to 5000", |m| done(truncate(
            &m.join("d/sub/z"),
            5000
        ))),
        op!("ftruncate lower lo1 to 2", |m| {
            let f = OpenOptions::new().write(true).open(m.join("lo1"))?;
            done(f.set_len(2))
        }),
        op!("fallocate upper n", |m| {
            let f = OpenOptions::new().write(true).open(m.join("n"))?;
            fallocate(&f, 0, 0, 8192)?;
            Ok(format!("size={}", f.metadata()?.len()))
        }),
        op!("lseek SEEK_DATA/SEEK_HOLE lower sparse2", |m| {
            let f = fs::File::open(m.join("sparse2"))?;
            let data = lseek(&f, 0, libc::SEEK_DATA)?;
            let hole = lseek(&f, 0, libc::SEEK_HOLE)?;
            Ok(format!("data={data} hole={hole}"))
        }),
        // chmod, chown, utimes
        op!("chmod lower e/e1 0600", |m| done(fs::set_permissions(
            m.join("e/e1"),
            fs::Permissions::from_mode(0o600)
        ))),
        op!("chmod upper n 04755", |m| done(fs::set_permissions(
            m.join("n"),
            fs::Permissions::from_mode(0o4755)
        ))),
        op!("chmod lower lo2 02750", |m| done(fs::set_permissions(
            m.join("lo2"),
            fs::Permissions::from_mode(0o2750)
        ))),
        op!("chmod lower-only cu/only (copy-up only)", |m| {
            done(fs::set_permissions(
                m.join("cu/only"),
                fs::Permissions::from_mode(0o640),
            ))
        }),
        op!("chown setuid lower g 12:34", |m| done(chown(
            m.join("g"),
            Some(12),
            Some(34)
        ))),
        op!("lchown lower symlink lnk 12:34", |m| done(lchown(
            m.join("lnk"),
            Some(12),
            Some(34)
        ))),
        op!("chown lower char device cdev 5:6", |m| done(chown(
            m.join("cdev"),
            Some(5),
            Some(6)
        ))),
        op!("chmod lower fifo 0600", |m| done(fs::set_permissions(
            m.join("fifo"),
            fs::Permissions::from_mode(0o600)
        ))),
        op!("utimes d/y explicit", |m| done(utimens(
            &m.join("d/y"),
            Some((1000, 1)),
            Some((2000, 999_999_999))
        ))),
        op!("utimes e/e1 mtime UTIME_OMIT", |m| done(utimens(
            &m.join("e/e1"),
            Some((5, 5)),
            None
        ))),
        op!("utimes h2 atime UTIME_OMIT", |m| done(utimens(
            &m.join("h2"),
            None,
            Some((3000, 3))
        ))),
        op!("stat h2 after its utimes", |m| stat_line(&m.join("h2"))),
        op!("stat h1 after utimes of its lower hard link h2", |m| {
            stat_line(&m.join("h1"))
        }),
        // mkdir, mknod, symlink, link
        op!("mkdir nd", |m| done(fs::create_dir(m.join("nd")))),
        op!("mkdir 0700 d/sub/newdir (copy-up of ancestors)", |m| {
            done(
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(m.join("d/sub/newdir")),
            )
        }),
        op!("mkdir existing merged d", |m| done(fs::create_dir(
            m.join("d")
        ))),
        op!("mkdir over whiteout gone", |m| done(fs::create_dir(
            m.join("gone")
        ))),
        op!("list new dir gone", |m| names_of(&m.join("gone"))),
        op!("mknod fifo ff 0640", |m| done(mknod(
            &m.join("ff"),
            libc::S_IFIFO | 0o640,
            0,
            0
        ))),
        op!("mknod fifo e/ff2 in a lower dir", |m| done(mknod(
            &m.join("e/ff2"),
            libc::S_IFIFO | 0o600,
            0,
            0
        ))),
        // A 0/0 character device is a whiteout's form: refused, or the name would vanish at once
        // and its node outlive the whiteout (found by fsstress, whose mknod makes 0/0 devices).
        op!("mknod 0/0 char device wo", |m| done(mknod(
            &m.join("wo"),
            libc::S_IFCHR | 0o644,
            0,
            0
        ))),
        op!("create wo after that mknod", |m| done(fs::write(
            m.join("wo"),
            "wo\n"
        ))),
        op!("symlink sl -> /etc", |m| done(symlink(
            "/etc",
            m.join("sl")
        ))),
        op!("symlink d/sl2 -> ../f", |m| done(symlink(
            "../f",
            m.join("d/sl2")
        ))),
        op!("link lower d/y as yl", |m| done(fs::hard_link(
            m.join("d/y"),
            m.join("yl")
        ))),
        op!("link upper n as nl", |m| done(fs::hard_link(
            m.join("n"),
            m.join("nl")
        ))),
        op!("link n over existing f", |m| done(fs::hard_link(
            m.join("n"),
            m.join("f")
        ))),
        op!("stat nl nlink", |m| Ok(format!(
            "nlink={}",
            fs::symlink_metadata(m.join("nl"))?.nlink()
        ))),
        // unlink, rmdir
        op!("unlink copied-up d/x", |m| done(fs::remove_file(
            m.join("d/x")
        ))),
        op!("unlink lower fifo", |m| done(fs::remove_file(
            m.join("fifo")
        ))),
        op!("unlink upper-only nl", |m| done(fs::remove_file(
            m.join("nl")
        ))),
        op!("unlink missing", |m| done(fs::remove_file(
            m.join("nosuch")
        ))),
        op!("unlink a directory", |m| done(fs::remove_file(m.join("d")))),
        op!("rmdir non-empty merged d", |m| done(fs::remove_dir(
            m.join("d")
        ))),
        op!("rmdir non-empty lower e", |m| done(fs::remove_dir(
            m.join("e")
        ))),
        op!("unlink e/e1", |m| done(fs::remove_file(m.join("e/e1")))),
        op!("unlink e/ff2", |m| done(fs::remove_file(m.join("e/ff2")))),
        op!("rmdir e, now empty", |m| done(fs::remove_dir(m.join("e")))),
        op!("mkdir e again", |m| done(fs::create_dir(m.join("e")))),
        op!("list new e", |m| names_of(&m.join("e"))),
        op!("unlink m/a (l1)", |m| done(fs::remove_file(m.join("m/a")))),
        op!("unlink m/b (l2)", |m| done(fs::remove_file(m.join("m/b")))),
        op!("rmdir merged m with all entries deleted", |m| done(
            fs::remove_dir(m.join("m"))
        )),
        op!("rmdir a file", |m| done(fs::remove_dir(m.join("f")))),
        // rename
        op!("rename lower l1only -> renamed1", |m| done(fs::rename(
            m.join("l1only"),
            m.join("renamed1")
        ))),
        op!("rename upper n over copied-up d/sub/z", |m| done(
            fs::rename(m.join("n"), m.join("d/sub/z"))
        )),
        op!("rename yl over the whiteout fifo", |m| done(fs::rename(
            m.join("yl"),
            m.join("fifo")
        ))),
        op!("rename lower lo2 over lower lo1", |m| done(fs::rename(
            m.join("lo2"),
            m.join("lo1")
        ))),
        op!("rename f over lower hard link h1", |m| done(fs::rename(
            m.join("f"),
            m.join("h1")
        ))),
        op!("append to h2 after h1 was replaced, read h2", |m| {
            OpenOptions::new()
                .append(true)
                .open(m.join("h2"))?
                .write_all(b"h2 more\n")?;
            Ok(format!(
                "{:?}",
                String::from_utf8_lossy(&fs::read(m.join("h2"))?)
            ))
        }),
        op!("rename d/y -> cu2 across dirs", |m| done(fs::rename(
            m.join("d/y"),
            m.join("cu2")
        ))),
        op!("RENAME_NOREPLACE over existing h2", |m| {
            done(renameat2(
                &m.join("renamed1"),
                &m.join("h2"),
                libc::RENAME_NOREPLACE,
            ))
        }),
        op!("RENAME_NOREPLACE to a free name", |m| {
            done(renameat2(
                &m.join("renamed1"),
                &m.join("r2"),
                libc::RENAME_NOREPLACE,
            ))
        }),
        op!("RENAME_EXCHANGE upper r2 <-> lower g", |m| {
            done(renameat2(
                &m.join("r2"),
                &m.join("g"),
                libc::RENAME_EXCHANGE,
            ))
        }),
        op!("RENAME_EXCHANGE with a missing name", |m| {
            done(renameat2(
                &m.join("r2"),
                &m.join("nosuch"),
                libc::RENAME_EXCHANGE,
            ))
        }),
        op!("read g and r2 after exchange", |m| {
            Ok(format!(
                "{:?} {:?}",
                fs::read(m.join("g"))?,
                fs::read(m.join("r2"))?
            ))
        }),
        op!("rename upper-only dir nd -> nd2", |m| done(fs::rename(
            m.join("nd"),
            m.join("nd2")
        ))),
        // Directories with lower parts: moved with a redirect record (`redirect_dir=on` on
        // both sides).
        op!("rename merged dir rd -> rd9", |m| done(fs::rename(
            m.join("rd"),
            m.join("rd9")
        ))),
        op!("list rd9", |m| names_of(&m.join("rd9"))),
        op!("list rd9/sub", |m| names_of(&m.join("rd9/sub"))),
        op!("mkdir rd at the old name", |m| done(fs::create_dir(
            m.join("rd")
        ))),
        op!("list rd", |m| names_of(&m.join("rd"))),
        op!("rename lower dir p/rq -> rq9 across dirs", |m| done(
            fs::rename(m.join("p/rq"), m.join("rq9"))
        )),
        op!("list rq9", |m| names_of(&m.join("rq9"))),
        op!("create rq9/new", |m| done(fs::write(
            m.join("rq9/new"),
            "new\n"
        ))),
        op!("rename lower subdir rd9/sub -> rd9/sub2", |m| done(
            fs::rename(m.join("rd9/sub"), m.join("rd9/sub2"))
        )),
        op!("list rd9/sub2", |m| names_of(&m.join("rd9/sub2"))),
        op!("rename renamed rd9 back over the new empty rd", |m| done(
            fs::rename(m.join("rd9"), m.join("rd"))
        )),
        op!("list rd after moving back", |m| names_of(&m.join("rd"))),
        op!("rename file over dir", |m| done(fs::rename(
            m.join("r2"),
            m.join("nd2")
        ))),
        op!("rename dir over file", |m| done(fs::rename(
            m.join("nd2"),
            m.join("r2")
        ))),
        op!("rename dir over non-empty dir", |m| done(fs::rename(
            m.join("nd2"),
            m.join("d")
        ))),
        op!("rename upper dir over empty opaque e", |m| done(
            fs::rename(m.join("nd2"), m.join("e"))
        )),
        op!("list e after rename", |m| names_of(&m.join("e"))),
        // xattrs
        op!("setxattr user.a on lower lo1", |m| done(set_xattr(
            &m.join("lo1"),
            "user.a",
            b"1"
        ))),
        op!("removexattr user.x on r2 (copied-up g)", |m| done(
            remove_xattr(&m.join("r2"), "user.x")
        )),
        op!("removexattr user.x again", |m| done(remove_xattr(
            &m.join("r2"),
            "user.x"
        ))),
        op!("removexattr missing on lower", |m| done(remove_xattr(
            &m.join("p/keep"),
            "user.nosuch"
        ))),
        op!("getxattr missing", |m| xattr_outcome(
            &m.join("d"),
            "user.nosuch"
        )),
        op!("setxattr user.* on a symlink", |m| done(set_xattr(
            &m.join("sl"),
            "user.a",
            b"1"
        ))),
        Op {
            name: "setxattr trusted.overlay.x",
            run: |m| done(set_xattr(&m.join("lo1"), "trusted.overlay.x", b"1")),
            check: Check::UfsRefuses,
        },
        // A mount whose records are `trusted.overlay.*` keeps `user.overlay.*` as ordinary
        // xattrs, as the kernel does.
        op!("setxattr user.overlay.x", |m| done(set_xattr(
            &m.join("lo1"),
            "user.overlay.x",
            b"1"
        ))),
        op!("getxattr user.overlay.x", |m| xattr_outcome(
            &m.join("lo1"),
            "user.overlay.x"
        )),
        // rm -rf; mkdir at the root and at depth 2
        op!("rm -rf d", |m| done(fs::remove_dir_all(m.join("d")))),
        op!("mkdir d", |m| done(fs::create_dir(m.join("d")))),
        op!("list new d", |m| names_of(&m.join("d"))),
        op!("getxattr trusted.overlay.opaque on new d", |m| {
            xattr_outcome(&m.join("d"), "trusted.overlay.opaque")
        }),
        op!("create d/again", |m| done(fs::write(
            m.join("d/again"),
            "again\n"
        ))),
        op!("list d", |m| names_of(&m.join("d"))),
        op!("rm -rf p/q", |m| done(fs::remove_dir_all(m.join("p/q")))),
        op!("mkdir p/q", |m| done(fs::create_dir(m.join("p/q")))),
        op!("list new p/q", |m| names_of(&m.join("p/q"))),
        op!("list p", |m| names_of(&m.join("p"))),
        op!("list root", |m| names_of(m)),
    ]
}

/// Applies the script's preconditions to the results: the comparisons prove nothing if both
/// sides fail the same way because the fixture is wrong.
fn assert_script_sanity(k: &Path) {
    for (rel, what) in [
        ("d/again", "d/again"),
        ("cu2", "renamed d/y"),
        ("r2", "exchanged g"),
    ] {
        assert!(
            fs::symlink_metadata(k.join(rel)).is_ok(),
            "kernel side lacks {what}: the script is broken"
        );
    }
    assert_eq!(
        list_names(&k.join("d")),
        vec!["again"],
        "kernel: new d must hold only `again`"
    );
    assert!(
        list_names(&k.join("p/q")).is_empty(),
        "kernel: new p/q must be empty"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Operations compared with the kernel
// ---------------------------------------------------------------------------------------------

/// Runs `case` once per feature set, each in its own directory, and reports every failure.
fn for_each_features(test: &str, case: impl Fn(&Path, Features)) {
    let t = tempdir();
    let sets = [Features::BASE, Features::ALL_ON];
    let mut failures = Vec::new();
    for (i, f) in sets.into_iter().enumerate() {
        let dir = t.path().join(format!("f{i}"));
        failures.extend(catch(f.0, || case(&dir, f)).err());
    }
    assert_no_failures(test, sets.len(), &failures);
}

fn ops_case(dir: &Path, features: Features) {
    // Before the fixtures: see `other_users_create_with_their_ids_and_umask`.
    let since_ops = now_secs();
    let kd = ops_fixture(&dir.join("k"), features);
    let ud = ops_fixture(&dir.join("u"), features);
    let _k = kd.mount_kernel();
    let _u = ud.mount_ufs();

    let before_k = snapshot(&kd.mnt);
    let before_u = snapshot(&ud.mnt);
    assert_same_tree(
        "ufs",
        &before_u,
        "kernel",
        &before_k,
        "before any operation",
    );

    let ops = script();
    let mismatches = run_ops_compared(&ops, &kd.mnt, &ud.mnt);
    assert_script_sanity(&kd.mnt);

    let ks = snapshot(&kd.mnt);
    let us = try_snapshot(&ud.mnt).unwrap_or_else(|e| panic!("walking ufs after the ops: {e}"));
    assert_consistent(&us, "ufs after the ops");
    let tree = compare(
        "ufs",
        &blur_recent(&us, since_ops),
        "kernel",
        &blur_recent(&ks, since_ops),
    );
    let mut report = Vec::new();
    if !mismatches.is_empty() {
        report.push(format!(
            "{} of {} operations differ from the kernel:\n  {}",
            mismatches.len(),
            ops.len(),
            mismatches.join("\n  ")
        ));
    }
    if let Err(e) = tree {
        report.push(format!("final trees (mtimes set by the ops blurred):\n{e}"));
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn ops_match_kernel() {
    if skip("ops_match_kernel") {
        return;
    }
    for_each_features("ops_match_kernel", ops_case);
}

// ---------------------------------------------------------------------------------------------
// 2. Each implementation reads the other's upper layer
// ---------------------------------------------------------------------------------------------

/// Mounts ufs on a fresh copy of the fixture, walks it (every name looked up, as `ls -lR`
/// would), runs the script, and returns the layers and the tree ufs showed before unmounting.
fn ufs_after_script(dir: &Path, features: Features) -> (Dirs, Snapshot) {
    let d = ops_fixture(dir, features);
    let mut u = d.mount_ufs();
    let _ = snapshot(&d.mnt);
    run_ops(&script(), &d.mnt, true);
    let shown = snapshot(&d.mnt);
    unmount_and_wait(&mut u);
    (d, shown)
}

#[test]
fn remount_reads_same() {
    if skip("remount_reads_same") {
        return;
    }
    for_each_features("remount_reads_same", |dir, features| {
        let (d, shown) = ufs_after_script(dir, features);
        let _u = d.mount_ufs();
        let again = snapshot(&d.mnt);
        assert_consistent(&again, "ufs after remount");
        assert_same_tree(
            "after remount",
            &again,
            "before unmount",
            &shown,
            "ufs remounted on its own layers",
        );
    });
}

#[test]
fn kernel_reads_ufs_upper() {
    if skip("kernel_reads_ufs_upper") {
        return;
    }
    for_each_features("kernel_reads_ufs_upper", |dir, features| {
        let (d, shown) = ufs_after_script(dir, features);
        // ufs's own workdir: with `index=on` the index of copied-up hard links lives there,
        // and the kernel reads it from its workdir the same way.
        let k = d.mount_kernel();
        let kernel_view =
            try_snapshot(&d.mnt).unwrap_or_else(|e| panic!("walking the kernel mount: {e}"));
        drop(k);
        assert_same_tree(
            "kernel",
            &kernel_view,
            "ufs",
            &shown,
            "kernel overlay on ufs's lowers and upper",
        );
        // And ufs still reads its layers the same after the kernel has mounted them.
        let _u = d.mount_ufs();
        assert_same_tree(
            "ufs remounted",
            &snapshot(&d.mnt),
            "ufs before",
            &shown,
            "ufs after the kernel mount",
        );
    });
}

#[test]
fn ufs_reads_kernel_upper() {
    if skip("ufs_reads_kernel_upper") {
        return;
    }
    for_each_features("ufs_reads_kernel_upper", |dir, features| {
        let d = ops_fixture(dir, features);
        let k = d.mount_kernel_fresh_work("kernel");
        let _ = snapshot(&d.mnt);
        run_ops(&script(), &d.mnt, false);
        let shown = snapshot(&d.mnt);
        drop(k);
        let _u = d.mount_ufs();
        let ufs_view = try_snapshot(&d.mnt)
            .unwrap_or_else(|e| panic!("walking ufs on the kernel's upper: {e}"));
        assert_consistent(&ufs_view, "ufs on the kernel's upper");
        assert_same_tree(
            "ufs",
            &ufs_view,
            "kernel",
            &shown,
            "ufs on the kernel overlay's lowers and upper",
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Whiteout and opaque formats on disk
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
// 4. Copy-up fidelity
// ---------------------------------------------------------------------------------------------

const ATIME: (i64, i64) = (1_111_111_111, 123_456_789);
const MTIME: (i64, i64) = (1_222_222_222, 987_654_321);

fn times_of(md: &fs::Metadata) -> ((i64, i64), (i64, i64)) {
    ((md.atime(), md.atime_nsec()), (md.mtime(), md.mtime_nsec()))
}

/// Byte-wise equality of the first `len` bytes of two files.
fn same_prefix(a: &Path, b: &Path, len: u64) -> bool {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        off += n as u64;
    }
    true
}

#[test]
fn copy_up_fidelity() {
    if skip("copy_up_fidelity") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    let l = d.lower(0);
    let size = 64 * MIB;
    let big = l.join("big");
    {
        let f = fs::File::create(&big).unwrap();
        f.set_len(size).unwrap();
        let mut buf = vec![0u8; 4096];
        for (i, off) in [0, 32 * MIB, size - 4096].into_iter().enumerate() {
            pattern_chunk(i as u64 + 7, &mut buf);
            f.write_all_at(&buf, off).unwrap();
        }
        f.sync_all().unwrap();
    }
    let meta = put(l, "meta", "meta\n");
    for p in [&big, &meta] {
        lchown(p, 1234, 5678);
        chmod(p, 0o4755);
        set_xattr(p, "user.k", b"v").unwrap();
        utimens(p, Some(ATIME), Some(MTIME)).unwrap();
    }
    std::os::unix::fs::symlink("some/target", l.join("sl")).unwrap();
    utimens(&l.join("sl"), Some(ATIME), Some(MTIME)).unwrap();
    mkfifo(&l.join("ff"), 0o644).unwrap();
    utimens(&l.join("ff"), Some(ATIME), Some(MTIME)).unwrap();
    mknod(&l.join("cdev"), libc::S_IFCHR | 0o600, 1, 7).unwrap();
    let sock = l.join("sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let lower_big = lmeta(&big);
    let before_write = now_secs();

    let m = &d.mnt;
    let up = &d.upper;
    let _u = d.mount_ufs();
    let mut failures = Vec::new();

    // A sparse setuid file, appended to.
    let r = catch("sparse setuid file", || {
        let mut f = OpenOptions::new().append(true).open(m.join("big")).unwrap();
        f.write_all(b"!").unwrap();
        drop(f);
        // Before anything reads the copy (a read would move its atime).
        let st = lmeta(&up.join("big"));
        assert_eq!(st.len(), size + 1, "upper size");
        assert_eq!(st.mode() & 0o7777, 0o4755, "mode with setuid kept");
        assert_eq!((st.uid(), st.gid()), (1234, 5678), "owner kept");
        let (atime, mtime) = times_of(&st);
        assert_eq!(atime, ATIME, "atime must be the lower's, to the nanosecond");
        assert!(
            mtime.0 >= before_write,
            "mtime must be the write's time, got {mtime:?}"
        );
        assert!(
            st.blocks() <= lower_big.blocks() * 2 + 64,
            "holes must stay holes: upper has {} blocks, lower {}",
            st.blocks(),
            lower_big.blocks()
        );
        assert_eq!(
            get_xattr(&up.join("big"), "user.k").unwrap(),
            b"v",
            "xattr in the upper copy"
        );
        assert_eq!(
            get_xattr(&m.join("big"), "user.k").unwrap(),
            b"v",
            "xattr through the mount"
        );
        assert!(
            same_prefix(&big, &up.join("big"), size),
            "upper content differs from the lower's"
        );
        let mut last = [0u8; 1];
        fs::File::open(m.join("big"))
            .unwrap()
            .read_exact_at(&mut last, size)
            .unwrap();
        assert_eq!(&last, b"!", "appended byte through the mount");
    });
    failures.extend(r.err());

    // chmod only: every time kept exactly.
    let r = catch("chmod copy-up keeps times", || {
        fs::set_permissions(m.join("meta"), fs::Permissions::from_mode(0o4700)).unwrap();
        let st = lmeta(&up.join("meta"));
        assert_eq!(st.mode() & 0o7777, 0o4700);
        assert_eq!((st.uid(), st.gid()), (1234, 5678));
        assert_eq!(
            times_of(&st),
            (ATIME, MTIME),
            "(atime, mtime) of a chmod-only copy-up"
        );
        assert_eq!(get_xattr(&up.join("meta"), "user.k").unwrap(), b"v");
        assert_eq!(
            fs::read(m.join("meta")).unwrap(),
            b"meta\n",
            "content through the mount"
        );
        // The mount says metacopy=off (as the kernel's default here, which refuses a
        // metadata-only upper copy with EPERM): the data must be in the copy.
        assert!(
            get_xattr(&up.join("meta"), "trusted.overlay.metacopy").is_err()
                && get_xattr(&up.join("meta"), "user.overlay.metacopy").is_err(),
            "chmod made a metadata-only (metacopy) copy although the mount says metacopy=off"
        );
        assert_eq!(
            fs::read(up.join("meta")).unwrap(),
            b"meta\n",
            "data in the upper copy"
        );
    });
    failures.extend(r.err());

    let r = catch("symlink via chown -h", || {
        std::os::unix::fs::lchown(m.join("sl"), Some(1000), Some(1001)).unwrap();
        let st = lmeta(&up.join("sl"));
        assert!(st.file_type().is_symlink(), "upper sl must be a symlink");
        assert_eq!(
            fs::read_link(up.join("sl")).unwrap(),
            Path::new("some/target")
        );
        assert_eq!((st.uid(), st.gid()), (1000, 1001));
        assert_eq!(st.mtime(), MTIME.0, "symlink mtime kept");
        assert_eq!(
            fs::read_link(m.join("sl")).unwrap(),
            Path::new("some/target")
        );
    });
    failures.extend(r.err());

    let r = catch("fifo via chmod", || {
        fs::set_permissions(m.join("ff"), fs::Permissions::from_mode(0o600)).unwrap();
        let st = lmeta(&up.join("ff"));
        assert!(
            st.file_type().is_fifo(),
            "upper ff must be a fifo: {:?}",
            st.file_type()
        );
        assert_eq!(st.mode() & 0o7777, 0o600);
        assert_eq!((st.mtime(), st.mtime_nsec()), MTIME, "fifo mtime kept");
    });
    failures.extend(r.err());

    let r = catch("char device via chown", || {
        std::os::unix::fs::chown(m.join("cdev"), Some(5), Some(6)).unwrap();
        let st = lmeta(&up.join("cdev"));
        assert!(st.file_type().is_char_device());
        assert_eq!(dev_numbers(st.rdev()), (1, 7), "device numbers kept");
        assert_eq!((st.uid(), st.gid()), (5, 6));
    });
    failures.extend(r.err());

    let r = catch("socket via chmod", || {
        fs::set_permissions(m.join("sock"), fs::Permissions::from_mode(0o700)).unwrap();
        let st = lmeta(&up.join("sock"));
        assert!(
            st.file_type().is_socket(),
            "upper sock must be a socket: {:?}",
            st.file_type()
        );
        assert_eq!(st.mode() & 0o7777, 0o700);
    });
    failures.extend(r.err());

    assert!(
        d.work_leftovers().is_empty(),
        "work dir not empty: {:?}",
        d.work_leftovers()
    );
    assert_no_failures("copy-up fidelity", 6, &failures);
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_appends_copy_up_once() {
    if skip("concurrent_appends_copy_up_once") {
        return;
    }
    const THREADS: usize = 8;
    const FILES: usize = 6;
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    for i in 0..FILES {
        // Large enough that the copy-up takes a moment, so the opens really overlap.
        let mut content = format!("base {i}\n").into_bytes();
        content.resize(4 * MIB as usize, b'.');
        content.push(b'\n');
        fs::write(d.lower(0).join(format!("s{i}")), &content).unwrap();
    }
    let _u = d.mount_ufs();
    for i in 0..FILES {
        let path = d.mnt.join(format!("s{i}"));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|n| {
                let (path, barrier) = (path.clone(), barrier.clone());
                thread::spawn(move || -> io::Result<()> {
                    barrier.wait();
                    let mut f = OpenOptions::new().append(true).open(&path)?;
                    f.write_all(format!("line {n}\n").as_bytes())
                })
            })
            .collect();
        for (n, h) in handles.into_iter().enumerate() {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("file s{i}, thread {n}: {e}"));
        }
        let shown = fs::read(&path).unwrap();
        let upper = fs::read(d.upper.join(format!("s{i}"))).unwrap();
        assert_eq!(shown, upper, "s{i}: the mount must show the upper copy");
        let text = String::from_utf8_lossy(&shown);
        assert!(
            text.starts_with(&format!("base {i}\n")),
            "s{i}: the old content must come first"
        );
        let tail: Vec<&str> = text.lines().skip(2).collect();
        let mut want: Vec<String> = (0..THREADS).map(|n| format!("line {n}")).collect();
        let mut got: Vec<String> = tail.iter().map(|s| s.to_string()).collect();
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "s{i}: every append exactly once (a second copy-up would lose some)"
        );
    }
    let names = list_names(&d.upper);
    let want: Vec<String> = (0..FILES).map(|i| format!("s{i}")).collect();
    assert_eq!(names, want, "upper must hold exactly one copy of each file");
    assert!(
        d.work_leftovers().is_empty(),
        "work dir not empty: {:?}",
        d.work_leftovers()
    );
}

const GIB: u64 = 1 << 30;

#[test]
fn copy_up_does_not_block_other_files() {
    if skip("copy_up_does_not_block_other_files") {
        return;
    }
    const OTHERS: usize = 400;
    const MIN_OPS: usize = 10;
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    write_pattern_file(&d.lower(0).join("big"), GIB);
    for i in 0..OTHERS {
        fs::write(d.lower(0).join(format!("r{i}")), format!("r{i}")).unwrap();
    }
    let _u = d.mount_ufs();
    let m = d.mnt.clone();
    // Cold caches make the copy read the disk, so it lasts long enough to overlap.
    drop_caches();

    let finished = Arc::new(AtomicBool::new(false));
    let copier = {
        let (m, finished) = (m.clone(), finished.clone());
        thread::spawn(move || -> io::Result<Duration> {
            let start = Instant::now();
            let r = OpenOptions::new()
                .append(true)
                .open(m.join("big"))
                .and_then(|mut f| f.write_all(b"X"));
            let took = start.elapsed();
            finished.store(true, Ordering::SeqCst);
            r.map(|()| took)
        })
    };
    // Start once the copy is visibly under way.
    let started = wait_until(Duration::from_secs(30), || {
        !d.work_leftovers().is_empty() || finished.load(Ordering::SeqCst)
    });
    assert!(started, "no copy-up started within 30 s");
    let mut during = 0usize;
    let mut log = Vec::new();
    for i in 0..OTHERS {
        if finished.load(Ordering::SeqCst) {
            break;
        }
        // Each step reaches the daemon: a new name to look up and open (not in the kernel's
        // caches), a create and a write (write-through), a stat of the new name.
        let r = (|| -> io::Result<()> {
            let got = fs::read(m.join(format!("r{i}")))?;
            assert_eq!(got, format!("r{i}").as_bytes());
            fs::write(m.join(format!("w{i}")), b"w")?;
            fs::metadata(m.join(format!("w{i}")))?;
            Ok(())
        })();
        if let Err(e) = r {
            log.push(format!("op {i}: {e}"));
        }
        if !finished.load(Ordering::SeqCst) {
            during += 1;
        }
    }
    let took = copier
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("append to big (copy-up): {e}"));
    assert!(
        log.is_empty(),
        "operations on other files failed during the copy-up: {log:?}"
    );
    assert!(
        during >= MIN_OPS,
        "only {during} operations on other files completed during the {took:?} copy-up of 1 GiB \
         (at least {MIN_OPS} expected): the copy-up blocks unrelated requests"
    );
    eprintln!(
        "copy_up_does_not_block_other_files: {during} ops completed during a {took:?} copy-up"
    );
    let st = lmeta(&d.upper.join("big"));
    assert_eq!(st.len(), GIB + 1, "upper big size");
    let f = fs::File::open(d.upper.join("big")).unwrap();
    let mut got = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    for chunk in [0, 511, 1023] {
        f.read_exact_at(&mut got, chunk * MIB).unwrap();
        pattern_chunk(chunk, &mut want);
        assert!(
            got == want,
            "upper big chunk {chunk} differs from the lower's"
        );
    }
    let mut last = [0u8];
    f.read_exact_at(&mut last, GIB).unwrap();
    assert_eq!(&last, b"X");
}

// ---------------------------------------------------------------------------------------------
// 6. Open file descriptors across copy-up and unlink
// ---------------------------------------------------------------------------------------------

/// The observations of `fd_script` on one mount, as text lines.
fn fd_script(m: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: &str, r: io::Result<String>| out.push(format!("{what}: {}", outcome(&r)));

    // A read-only fd taken before the copy-up.
    match fs::File::open(m.join("f")) {
        Err(e) => note("fd1 open", Err(e)),
        Ok(fd1) => {
            let mut head = [0u8; 3];
            let r = fd1
                .read_exact_at(&mut head, 0)
                .map(|()| String::from_utf8_lossy(&head).into_owned());
            note("fd1 first read", r);
            note(
                "write through fd2 (copy-up)",
                write_at(m, "f", &[(0, b"NEW")]),
            );
            let mut buf = vec![0u8; 64];
            let r = fd1
                .read_at(&mut buf, 0)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
            note("fd1 read after copy-up", r);
        }
    }
    note(
        "fresh read",
        fs::read(m.join("f")).map(|b| String::from_utf8_lossy(&b).into_owned()),
    );

    // Unlinked while open: a lower file opened read-write (copied up), a lower file opened
    // read-only, and an upper-only file.
    for (name, writable) in [("u1", true), ("u2", false), ("u3", true)] {
        if name == "u3" {
            let _ = fs::write(m.join("u3"), "u3 data\n"); // outcome shows in the reads below
        }
        let f = match OpenOptions::new()
            .read(true)
            .write(writable)
            .open(m.join(name))
        {
            Ok(f) => f,
            Err(e) => {
                note(&format!("{name} open"), Err(e));
                continue;
            }
        };
        note(
            &format!("{name} unlink"),
            done(fs::remove_file(m.join(name))),
        );
        note(
            &format!("{name} gone from the directory"),
            Ok(format!("{}", fs::symlink_metadata(m.join(name)).is_err())),
        );
        if writable {
            note(
                &format!("{name} write after unlink"),
                done(f.write_all_at(b"more\n", 8)),
            );
        }
        let mut buf = vec![0u8; 64];
        note(
            &format!("{name} read after unlink"),
            f.read_at(&mut buf, 0)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()),
        );
        note(
            &format!("{name} fstat after unlink"),
            f.metadata()
                .map(|md| format!("size={} nlink={}", md.len(), md.nlink())),
        );
    }
    out
}

fn fd_fixture(base: &Path) -> Dirs {
    let d = Dirs::new(base, 1);
    put(d.lower(0), "f", "old content\n");
    put(d.lower(0), "u1", "u1 data\n");
    put(d.lower(0), "u2", "u2 data\n");
    d
}

#[test]
fn open_fds_survive_copy_up_and_unlink() {
    if skip("open_fds_survive_copy_up_and_unlink") {
        return;
    }
    let t = tempdir();
    let kd = fd_fixture(&t.path().join("k"));
    let ud = fd_fixture(&t.path().join("u"));
    let kernel = {
        let _k = kd.mount_kernel();
        fd_script(&kd.mnt)
    };
    let ufs = {
        let _u = ud.mount_ufs();
        fd_script(&ud.mnt)
    };
    // Sanity of the oracle itself. Since 4.19 the kernel resolves an overlay file's real file
    // at each I/O, so an fd opened before the copy-up reads the upper copy (the new data), not
    // the lower file it was opened on; ufs must match whichever the kernel does, and must not
    // fail the read.
    assert!(
        kernel
            .iter()
            .any(|l| l.starts_with("fd1 read after copy-up: ok: ")),
        "kernel oracle behaves unexpectedly: {kernel:#?}"
    );
    let diffs: Vec<String> = kernel
        .iter()
        .zip(ufs.iter())
        .filter(|(k, u)| k != u)
        .map(|(k, u)| format!("kernel {k:?}\n     ufs {u:?}"))
        .collect();
    assert!(
        diffs.is_empty() && kernel.len() == ufs.len(),
        "open fds behave differently from the kernel:\n{}\nufs: {ufs:#?}",
        diffs.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Permissions of other users (allow_other)
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
// 8. Crash safety
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_during_copy_up_leaves_old_or_complete_file() {
    if skip("kill_during_copy_up_leaves_old_or_complete_file") {
        return;
    }
    const OFFSET: u64 = 123_456_789;
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    write_pattern_file(&d.lower(0).join("big"), GIB);
    let one = t.path().join("onebyte");
    fs::write(&one, b"X").unwrap();
    let u = d.mount_ufs();
    let daemons: Vec<u32> = pids_with_arg(&d.mnt)
        .into_iter()
        .filter(|p| pid_alive(*p))
        .collect();
    assert!(
        !daemons.is_empty(),
        "no ufs daemon found for {}",
        d.mnt.display()
    );
    drop_caches();

    let mut dd = Command::new("dd")
        .arg(format!("if={}", one.display()))
        .arg(format!("of={}", d.mnt.join("big").display()))
        .args([
            "bs=1",
            "count=1",
            &format!("seek={OFFSET}"),
            "conv=notrunc",
            "status=none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd");
    // Kill once a temporary copy is being written (partly there).
    let work = d.work.join("work");
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(rd) = fs::read_dir(&work) {
            for e in rd.flatten() {
                if let Ok(md) = e.metadata()
                    && md.is_file()
                    && md.len() > 0
                    && md.len() < GIB
                {
                    seen = Some((e.file_name(), md.len()));
                }
            }
        }
        if seen.is_some() || dd.try_wait().ok().flatten().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    for p in &daemons {
        kill9(*p);
    }
    let dead = wait_until(Duration::from_secs(10), || {
        daemons.iter().all(|p| !pid_alive(*p))
    });
    let dd_done = wait_until(Duration::from_secs(10), || {
        dd.try_wait().ok().flatten().is_some()
    });
    if !dd_done {
        let _ = dd.kill(); // blocked on the dead mount; reaped below
    }
    let _ = dd.wait();
    assert!(dead, "ufs daemon {daemons:?} survived kill -9");
    let run = run_bounded(Command::new("umount").arg("-l").arg(&d.mnt), CMD_TIMEOUT);
    assert!(run.success(), "umount -l of the dead mount failed:\n{run}");
    assert!(wait_unmounted(&d.mnt), "dead mount still listed");
    let (name, partial) = seen.unwrap_or_else(|| {
        panic!("the copy-up finished before a partial temporary file could be seen; cannot test a kill mid-copy")
    });
    let leftovers = work_leftovers(&d.work);
    eprintln!("killed with {name:?} at {partial} bytes; work/ then held {leftovers:?}");
    drop(u);

    let _u2 = d.mount_ufs();
    assert!(
        d.work_leftovers().is_empty(),
        "work/ must be emptied by the next mount, holds {:?}",
        d.work_leftovers()
    );
    if let Ok(md) = fs::symlink_metadata(d.upper.join("big")) {
        assert_eq!(md.len(), GIB, "an upper copy exists but is partial");
        let c = check_pattern(&d.upper.join("big"), GIB, Some((OFFSET, b'X'))).unwrap();
        assert!(
            matches!(c, PatternCheck::Original | PatternCheck::Modified),
            "the upper copy is neither the old content nor the complete new one: {c:?}"
        );
    }
    let c = check_pattern(&d.mnt.join("big"), GIB, Some((OFFSET, b'X'))).unwrap();
    assert!(
        matches!(c, PatternCheck::Original | PatternCheck::Modified),
        "through the mount, big is neither the old content nor the complete new one: {c:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. ENOSPC
// ---------------------------------------------------------------------------------------------

#[test]
fn enospc_during_copy_up_leaves_nothing() {
    if skip("enospc_during_copy_up_leaves_nothing") {
        return;
    }
    let t = tempdir();
    let small = TmpfsMount::mount(&t.path().join("small"), 16);
    let d = Dirs {
        base: t.path().to_path_buf(),
        lowers: vec![mkdirs(&t.path().join("l"))],
        upper: mkdirs(&small.dir.join("up")),
        work: mkdirs(&small.dir.join("wk")),
        mnt: mkdirs(&t.path().join("m")),
        features: Features::BASE,
    };
    let size = 64 * MIB;
    write_pattern_file(&d.lower(0).join("big"), size);
    put(d.lower(0), "small", "small\n");
    let _u = d.mount_ufs();
    let m = &d.mnt;

    let r = OpenOptions::new().write(true).open(m.join("big"));
    assert_eq!(
        errno_of(&r),
        Some(libc::ENOSPC),
        "open for write of a 64 MiB lower file on a 16 MiB upper: {r:?}"
    );
    drop(r);
    // A size change needs the data in every design (also with metacopy).
    let r = truncate(&m.join("big"), (size - 1) as i64);
    assert_eq!(
        errno_of(&r),
        Some(libc::ENOSPC),
        "truncate (copy-up with data) on a full upper: {r:?}"
    );

    assert!(
        list_names(&d.upper).is_empty(),
        "no partial file may remain in the upper: {:?}",
        list_names(&d.upper)
    );
    assert!(
        d.work_leftovers().is_empty(),
        "work/ must be empty: {:?}",
        d.work_leftovers()
    );
    let used = statvfs(&small.dir);
    assert!(
        (used.f_blocks - used.f_bfree) * used.f_frsize < MIB,
        "the tmpfs still holds {} bytes after the failed copy-up",
        (used.f_blocks - used.f_bfree) * used.f_frsize
    );
    assert_eq!(
        lmeta(&m.join("big")).mode() & 0o777,
        0o644,
        "mode unchanged"
    );
    assert_eq!(
        check_pattern(&m.join("big"), size, None).unwrap(),
        PatternCheck::Original,
        "the lower file must still be visible and unchanged"
    );
    // The mount keeps working.
    fs::write(m.join("small"), "changed\n").expect("a small copy-up after ENOSPC");
    assert_eq!(fs::read(m.join("small")).unwrap(), b"changed\n");
}

// ---------------------------------------------------------------------------------------------
// 10. mmap
// ---------------------------------------------------------------------------------------------

#[test]
fn shared_mmap_writes_reach_the_upper() {
    if skip("shared_mmap_writes_reach_the_upper") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    let len = 3 * 4096 + 100;
    let mut content = vec![0u8; len];
    pattern_chunk(3, &mut content);
    fs::write(d.lower(0).join("mm"), &content).unwrap();
    let mut want = content.clone();
    want[10..14].copy_from_slice(b"MMAP");
    want[5000..5004].copy_from_slice(b"PAGE");
    want[len - 4..].copy_from_slice(b"TAIL");

    let mut u = d.mount_ufs();
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.mnt.join("mm"))
            .unwrap();
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; no other reference to
        // that memory exists, and it is unmapped before `f` is closed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        // SAFETY: `p` points to `len` mapped, writable bytes until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
        assert!(
            mapped == &content[..],
            "the mapping shows the lower content"
        );
        mapped[10..14].copy_from_slice(b"MMAP");
        mapped[5000..5004].copy_from_slice(b"PAGE");
        mapped[len - 4..].copy_from_slice(b"TAIL");
        // SAFETY: `p`/`len` are exactly the mapping made above.
        let r = unsafe { libc::msync(p, len, libc::MS_SYNC) };
        assert_eq!(r, 0, "msync: {}", io::Error::last_os_error());
        // SAFETY: as above; `mapped` is not used after this.
        let r = unsafe { libc::munmap(p, len) };
        assert_eq!(r, 0, "munmap: {}", io::Error::last_os_error());
    }
    assert!(
        fs::read(d.mnt.join("mm")).unwrap() == want,
        "read back through the mount"
    );
    assert!(
        fs::read(d.upper.join("mm")).unwrap() == want,
        "the upper file holds the mapped writes"
    );
    assert!(
        fs::read(d.lower(0).join("mm")).unwrap() == content,
        "the lower file is untouched"
    );
    unmount_and_wait(&mut u);
    drop(u);
    let _u = d.mount_ufs();
    assert!(
        fs::read(d.mnt.join("mm")).unwrap() == want,
        "read back after a remount"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Read-only mounts
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

/// The operations the scripted comparison does not reach: `copy_file_range` between files of
/// the mount (one of them a lower file, so the destination is copied up first), `fsync` and
/// `fsync` of a directory, sockets and block devices by `mknod`, and `UTIME_NOW`.
#[test]
fn data_ops_and_special_nodes() {
    if skip("data_ops_and_special_nodes") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    put(d.lower(0), "src", "0123456789abcdef");
    put(d.lower(0), "dst", "XXXXXXXXXXXXXXXXXXXX");
    fs::create_dir_all(d.lower(0).join("dir")).unwrap();
    let _m = d.mount_ufs();
    let m = &d.mnt;

    let src = fs::File::open(m.join("src")).unwrap();
    let dst = OpenOptions::new().write(true).open(m.join("dst")).unwrap();
    let (mut off_in, mut off_out): (libc::loff_t, libc::loff_t) = (4, 2);
    // SAFETY: both fds are open files of this test; the offsets are valid, writable loff_t.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            6,
            0,
        )
    };
    assert_eq!(n, 6, "copy_file_range: {}", io::Error::last_os_error());
    dst.sync_all().expect("fsync of a copied-up file");
    drop(dst);
    assert_eq!(
        fs::read_to_string(m.join("dst")).unwrap(),
        "XX456789XXXXXXXXXXXX"
    );
    assert_eq!(
        fs::read_to_string(d.upper.join("dst")).unwrap(),
        "XX456789XXXXXXXXXXXX",
        "the copy went to the upper file"
    );
    assert_eq!(
        fs::read_to_string(d.lower(0).join("dst")).unwrap(),
        "XXXXXXXXXXXXXXXXXXXX"
    );

    fs::write(m.join("dir/new"), b"n").unwrap();
    let dir = fs::File::open(m.join("dir")).unwrap();
    dir.sync_all().expect("fsync of a directory");

    mknod(&m.join("sock"), libc::S_IFSOCK | 0o600, 0, 0).expect("mknod socket");
    mknod(&m.join("blk"), libc::S_IFBLK | 0o600, 8, 1).expect("mknod block device");
    mknod(&m.join("chr"), libc::S_IFCHR | 0o600, 1, 3).expect("mknod char device");
    let sock = fs::symlink_metadata(m.join("sock")).unwrap();
    assert!(sock.file_type().is_socket());
    let blk = fs::symlink_metadata(m.join("blk")).unwrap();
    assert!(blk.file_type().is_block_device());
    assert_eq!(dev_numbers(blk.rdev()), (8, 1));
    let chr = fs::symlink_metadata(m.join("chr")).unwrap();
    assert!(chr.file_type().is_char_device());
    assert_eq!(dev_numbers(chr.rdev()), (1, 3));
    assert!(
        fs::symlink_metadata(d.upper.join("blk"))
            .unwrap()
            .file_type()
            .is_block_device(),
        "the device node is in the upper"
    );

    let before = now_secs();
    utimens(&m.join("src"), None, Some((0, libc::UTIME_NOW))).expect("UTIME_NOW");
    let mtime = fs::symlink_metadata(m.join("src")).unwrap().mtime();
    assert!(
        mtime >= before,
        "mtime {mtime} not set to now (>= {before})"
    );
}

/// A copy-up in a directory whose listing ufs had cached (it was listed), then the kernel
/// forgetting the file's inode (`drop_caches`): the next lookup must find the copy, not the
/// lower file the stale listing named.
#[test]
fn copy_up_is_found_after_the_kernel_forgets_the_file() {
    if skip("copy_up_is_found_after_the_kernel_forgets_the_file") {
        return;
    }
    let t = tempdir();
    let d = Dirs::new(t.path(), 1);
    for i in 0..5 {
        put(d.lower(0), &format!("dir/f{i}"), &format!("lower {i}\n"));
    }
    let _u = d.mount_ufs();
    let dir = d.mnt.join("dir");
    // Lists the directory (ufs keeps the listing), and looks every name up.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 5);
    fs::write(dir.join("f1"), "written\n").unwrap();
    fs::write(dir.join("f3"), "written too\n").unwrap();
    // The directory stays known to the kernel (and so keeps its node and listing in ufs); its
    // files do not.
    let _pin = fs::File::open(&dir).unwrap();
    drop_caches();
    for (name, want) in [
        ("f1", "written\n"),
        ("f3", "written too\n"),
        ("f0", "lower 0\n"),
    ] {
        assert_eq!(
            fs::read_to_string(dir.join(name)).unwrap(),
            want,
            "{name} after the kernel forgot it"
        );
    }
}

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
