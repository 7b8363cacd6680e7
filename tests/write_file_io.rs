//! Write-side semantics of ufs, checked through real mounts: open file descriptors across
//! copy-up and unlink (compared with kernel overlayfs), mmap, and the data operations and
//! special nodes the scripted comparison of `write_oracle` does not reach.

mod common;
#[path = "common/write_helpers.rs"]
mod write_helpers;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use common::*;
use write_helpers::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// 1. Open file descriptors across copy-up and unlink
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
// 2. mmap
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
// 3. Data operations and special nodes
// ---------------------------------------------------------------------------------------------

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
