//! Write-side semantics of ufs, checked through real mounts: the same operations run on ufs and
//! on kernel overlayfs (the oracle) over identical layers, and their outcomes and the resulting
//! trees are compared; both implementations must read each other's upper layer.
//!
//! The other write-side tests: `write_formats` (the on-disk formats: whiteouts, opaque markers),
//! `write_copy_up` (copy-up fidelity, concurrency, crash safety, ENOSPC), `write_file_io` (open
//! file descriptors, mmap, data operations), `write_access` (permissions of other users,
//! read-only mounts).

mod common;
#[path = "common/write_helpers.rs"]
mod write_helpers;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use write_helpers::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// The scripted operation sequence and its fixture
// ---------------------------------------------------------------------------------------------

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
        // A name of the mount's own namespace is escaped (stored as
        // `trusted.overlay.overlay.x`), as the kernel (6.7+) does for nested overlays.
        op!("setxattr trusted.overlay.x (escaped)", |m| done(set_xattr(
            &m.join("lo1"),
            "trusted.overlay.x",
            b"1"
        ))),
        op!("getxattr trusted.overlay.x (escaped)", |m| xattr_outcome(
            &m.join("lo1"),
            "trusted.overlay.x"
        )),
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
