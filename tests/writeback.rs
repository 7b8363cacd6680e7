//! The FUSE writeback cache (`writeback=1`, on a mount that does not use passthrough): the
//! kernel caches writes and sends them later, in large batches, through any handle open for
//! writing. Checked against the kernel overlay doing the same work: `O_APPEND` writes beside a
//! page written back from a mapping, partial-page writes through write-only handles (the kernel
//! reads the rest of the page through them), a write-only new file, truncation; the upper
//! files on disk after unmounting, and what a fresh mount reads.

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

struct Layers {
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

impl Layers {
    fn new(base: &Path) -> Layers {
        let s = Layers {
            l: mkdirs(&base.join("l")),
            u: mkdirs(&base.join("u")),
            w: mkdirs(&base.join("w")),
            m: mkdirs(&base.join("m")),
        };
        fs::write(s.l.join("log"), "hello world\n").expect("write");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(s.l.join("data"), data).expect("write");
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

fn status(mnt: &Path) -> serde_json::Value {
    let run = run_bounded(ufs_cmd().args(["status", "--json"]).arg(mnt), CMD_TIMEOUT);
    assert!(run.success(), "ufs status --json:\n{run}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"))
}

/// Writes to page 0 of `f` through a shared mapping and flushes it: the kernel writes the
/// whole dirty page back, from offset 0.
fn write_through_mapping(f: &fs::File, at: usize, bytes: &[u8]) {
    let len = f.metadata().expect("fstat").len() as usize;
    assert!(at + bytes.len() <= len && len <= 4096);
    // SAFETY: a fresh shared mapping of `len` bytes of an open file, checked for failure;
    // only bytes inside it are written, and it is unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (p as *mut u8).add(at), bytes.len());
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0, "msync");
        libc::munmap(p, len);
    }
}

/// The same work on any mount; returns what it reads back through the mount.
fn work(m: &Path) -> Vec<(String, Vec<u8>)> {
    // An append beside a mapping: the page written back holds the appended bytes too.
    let log = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(m.join("log"))
        .expect("open log O_APPEND");
    (&log).write_all(b"appended\n").expect("append");
    write_through_mapping(&log, 0, b"J");
    (&log).write_all(b"again\n").expect("append");
    drop(log);
    // Partial pages through a write-only handle of a lower file (copied up at the open).
    let data = fs::OpenOptions::new()
        .write(true)
        .open(m.join("data"))
        .expect("open data O_WRONLY");
    data.write_all_at(b"XY", 5000).expect("pwrite");
    data.write_all_at(b"tail", 19_998)
        .expect("pwrite past the end");
    drop(data);
    // A new file only its owner may write, written partly in place.
    let new = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o200)
        .open(m.join("new"))
        .expect("create new");
    new.write_all_at(&[b'a'; 5000], 0).expect("write");
    new.write_all_at(b"b", 100).expect("pwrite");
    new.set_len(4500).expect("ftruncate");
    drop(new);
    fs::set_permissions(m.join("new"), fs::Permissions::from_mode(0o600)).expect("chmod");
    ["log", "data", "new"]
        .iter()
        .map(|n| (n.to_string(), fs::read(m.join(n)).expect("read back")))
        .collect()
}

fn upper_files(u: &Path) -> Vec<(String, Vec<u8>)> {
    ["log", "data", "new"]
        .iter()
        .map(|n| (n.to_string(), fs::read(u.join(n)).expect("upper file")))
        .collect()
}

#[test]
fn writes_through_the_writeback_cache_match_the_kernel() {
    if skip("writes_through_the_writeback_cache_match_the_kernel") {
        return;
    }
    let t = tempdir();
    let ul = Layers::new(&t.path().join("ufs"));
    let kl = Layers::new(&t.path().join("kernel"));
    let (ufs_seen, kernel_seen) = {
        let _m = UfsMount::mount(&ul.opts(",passthrough=off,writeback=1"), &ul.m);
        assert_eq!(
            status(&ul.m)["writeback_cache"],
            true,
            "passthrough=off,writeback=1 must use the writeback cache"
        );
        let _k = KernelOverlay::mount(&kl.opts(""), &kl.m, t.path());
        (work(&ul.m), work(&kl.m))
    };
    assert_eq!(ufs_seen, kernel_seen, "read back through the mounts");
    assert_eq!(
        upper_files(&ul.u),
        upper_files(&kl.u),
        "upper files written back differ from the kernel overlay's"
    );
    // A fresh mount reads what was written back.
    let _m = UfsMount::mount(&ul.opts(",passthrough=off"), &ul.m);
    for (name, bytes) in &kernel_seen {
        assert_eq!(&fs::read(ul.m.join(name)).expect("read"), bytes, "{name}");
    }
}

#[test]
fn the_writeback_cache_is_used_where_passthrough_is_not() {
    if skip("the_writeback_cache_is_used_where_passthrough_is_not") {
        return;
    }
    let t = tempdir();
    let l = Layers::new(t.path());
    for (extra, writeback) in [
        (",passthrough=off", false),
        (",passthrough=off,writeback=1", true),
        (",passthrough=off,writeback=on", true),
        (",passthrough=off,writeback=0", false),
        (",passthrough=off,writeback=off", false),
    ] {
        let _m = UfsMount::mount(&l.opts(extra), &l.m);
        let r = status(&l.m);
        assert_eq!(r["writeback_cache"], writeback, "{extra}: {r}");
        assert_eq!(r["passthrough"]["state"], "off", "{extra}: {r}");
    }
    // Where passthrough is used the kernel allows no writeback cache.
    let _m = UfsMount::mount(&l.opts(",writeback=1"), &l.m);
    let r = status(&l.m);
    if r["passthrough"]["state"] == "off" {
        println!(
            "SKIP (part): FUSE passthrough is not available here; the mount uses the writeback cache"
        );
        assert_eq!(r["writeback_cache"], true, "{r}");
    } else {
        assert_eq!(r["writeback_cache"], false, "{r}");
    }
}
