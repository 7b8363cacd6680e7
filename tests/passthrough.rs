//! FUSE passthrough (`passthrough=on`, the default): the kernel does the I/O of upper files (and
//! of every file of a mount that never copies up) on the real files, with no request to ufs,
//! while a handle that would break the kernel's one-backing-per-inode rule goes through ufs
//! without the page cache. What an fd opened before a copy-up sees afterwards stays the kernel
//! overlay's answer: the copy.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use common::*;

struct Stack {
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

impl Stack {
    fn new(base: &Path) -> Stack {
        let s = Stack {
            l: mkdirs(&base.join("l")),
            u: mkdirs(&base.join("u")),
            w: mkdirs(&base.join("w")),
            m: mkdirs(&base.join("m")),
        };
        fs::write(s.l.join("lower"), "lower data\n").expect("write");
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

    /// A foreground mount logging every request, with the log's path.
    fn mount_logged(&self, base: &Path, extra: &str) -> (UfsMount, PathBuf) {
        let log = base.join(format!("log{}", extra.replace([',', '='], "_")));
        let args: Vec<std::ffi::OsString> = vec![
            "-d".into(),
            "-o".into(),
            self.opts(extra).into(),
            self.m.clone().into(),
        ];
        (UfsMount::spawn_foreground(&args, &self.m, &log), log)
    }
}

/// Lines of the request log that reached ufs for node `ino` as reads or writes.
fn io_requests(log: &Path, ino: u64) -> usize {
    let text = fs::read_to_string(log).unwrap_or_default();
    let read = format!("read(ino={ino},");
    let write = format!("write(ino={ino},");
    text.lines()
        .filter(|l| l.contains(&read) || l.contains(&write))
        .count()
}

/// Why passthrough cannot be seen here, if it cannot.
fn unavailable(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    if !text.contains("capability FUSE_PASSTHROUGH enabled") {
        return Some(
            "FUSE passthrough was not negotiated (passthrough=off, or a kernel before 6.9)".into(),
        );
    }
    if text.contains("FUSE passthrough is unavailable") {
        return Some("registering a backing file was refused (no CAP_SYS_ADMIN?)".into());
    }
    None
}

fn write_and_read_back(p: &Path) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p)
        .expect("create");
    f.write_all(&vec![b'x'; 1 << 20]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let mut back = Vec::new();
    fs::File::open(p)
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("read back");
    assert_eq!(back.len(), 1 << 20);
    assert!(back.iter().all(|&b| b == b'x'));
}

/// With passthrough the reads and writes of an upper file never reach ufs; with
/// `passthrough=off` they all do.
#[test]
fn upper_file_io_is_done_by_the_kernel() {
    if skip("upper_file_io_is_done_by_the_kernel") {
        return;
    }
    let t = tempdir();
    let on = Stack::new(&t.path().join("on"));
    let (m, log) = on.mount_logged(t.path(), "");
    let f = m.mnt.join("new");
    write_and_read_back(&f);
    let ino = fs::metadata(&f).expect("stat").ino();
    drop(m);
    if let Some(why) = unavailable(&log) {
        say(&format!("SKIP upper_file_io_is_done_by_the_kernel: {why}"));
        return;
    }
    assert_eq!(
        io_requests(&log, ino),
        0,
        "passthrough: no read or write request"
    );
    let off = Stack::new(&t.path().join("off"));
    let (m, log) = off.mount_logged(t.path(), ",passthrough=off");
    let f = m.mnt.join("new");
    write_and_read_back(&f);
    let ino = fs::metadata(&f).expect("stat").ino();
    drop(m);
    assert!(
        io_requests(&log, ino) > 0,
        "passthrough=off: I/O through ufs"
    );
}

/// An fd opened for reading on a lower file, then the file copied up and rewritten through
/// another fd: the first fd reads the copy, as on the kernel overlay (its lower handle is not
/// passthrough, since only ufs can move it to the copy).
#[test]
fn a_reader_opened_before_a_copy_up_reads_the_copy() {
    if skip("a_reader_opened_before_a_copy_up_reads_the_copy") {
        return;
    }
    let t = tempdir();
    let [kernel, ufs] = on_kernel_and_ufs(
        t.path(),
        "",
        |l| fs::write(l.join("f"), "old data\n").expect("write"),
        |m| {
            let mut reader = fs::File::open(m.join("f")).expect("open for reading");
            let mut first = String::new();
            reader.read_to_string(&mut first).expect("read");
            let mut writer = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(m.join("f"))
                .expect("open for writing");
            writer.write_all(b"new data, longer\n").expect("write");
            drop(writer);
            reader.seek(SeekFrom::Start(0)).expect("seek");
            let mut after = String::new();
            reader.read_to_string(&mut after).expect("read again");
            (first, after)
        },
    );
    assert_eq!(ufs, kernel);
    assert_eq!(ufs.1, "new data, longer\n");
}

/// Handles of every kind on one file stay coherent: a passthrough reader and writer, an
/// `O_DIRECT` handle, a mapping, and a writer opened while a lower reader (through ufs) is
/// still open. Once that reader is closed, new handles use passthrough again.
#[test]
fn handles_of_every_kind_on_one_file_agree() {
    if skip("handles_of_every_kind_on_one_file_agree") {
        return;
    }
    let t = tempdir();
    let s = Stack::new(t.path());
    let (m, log) = s.mount_logged(t.path(), "");
    let f = m.mnt.join("up");
    fs::write(&f, vec![b'a'; 8192]).expect("create");
    let mut reader = fs::File::open(&f).expect("reader");
    let mut writer = fs::OpenOptions::new().write(true).open(&f).expect("writer");
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&f)
        .expect("O_DIRECT handle");
    writer.write_all(&[b'b'; 4096]).expect("write");
    writer.sync_all().expect("fsync");
    let mut seen = vec![0u8; 8192];
    reader.read_exact(&mut seen).expect("read");
    assert_eq!(&seen[..4096], &[b'b'; 4096][..], "reader sees the writer");
    assert_eq!(&seen[4096..], &[b'a'; 4096][..]);
    let mut aligned = AlignedBuf::new(4096);
    let n = nix_pread(&direct, aligned.as_mut(), 0);
    assert_eq!(n, 4096);
    assert!(
        aligned.as_mut().iter().all(|&b| b == b'b'),
        "O_DIRECT sees the writer"
    );
    let mapped = map_first_page(&reader);
    assert_eq!(mapped, vec![b'b'; 4096], "a mapping sees the writer");
    drop((reader, writer, direct));

    // A lower file: a reader through ufs, then a writer (which copies it up) beside it.
    let lower = m.mnt.join("lower");
    let mut lower_reader = fs::File::open(&lower).expect("lower reader");
    let mut lower_writer = fs::OpenOptions::new()
        .append(true)
        .open(&lower)
        .expect("writer beside a lower reader");
    lower_writer.write_all(b"appended\n").expect("append");
    drop(lower_writer);
    let mut text = String::new();
    lower_reader.read_to_string(&mut text).expect("read");
    assert_eq!(text, "lower data\nappended\n");
    drop(lower_reader);
    // The kernel sends `release` after `close` returns, so ufs may still count the lower
    // reader for a moment: a later handle must use passthrough once it has caught up.
    let ino = fs::metadata(&lower).expect("stat").ino();
    let later_handle_passes_through = wait_until(MOUNT_TIMEOUT, || {
        let before = io_requests(&log, ino);
        let mut again = String::new();
        fs::File::open(&lower)
            .and_then(|mut f| f.read_to_string(&mut again))
            .expect("read the copy");
        assert_eq!(again, "lower data\nappended\n");
        io_requests(&log, ino) == before
    });
    drop(m);
    if let Some(why) = unavailable(&log) {
        say(&format!(
            "SKIP handles_of_every_kind_on_one_file_agree (the passthrough part): {why}"
        ));
        return;
    }
    assert!(
        later_handle_passes_through,
        "a handle of the copy opened after the lower reader closed uses passthrough"
    );
}

/// A page-aligned buffer for `O_DIRECT`.
struct AlignedBuf {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let buf = vec![0u8; len + 4096];
        let off = buf.as_ptr().align_offset(4096);
        AlignedBuf { buf, off, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

fn nix_pread(f: &fs::File, buf: &mut [u8], offset: i64) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is writable for its length and `f` is an open file.
    let n = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
    assert!(n >= 0, "pread: {}", std::io::Error::last_os_error());
    n as usize
}

fn map_first_page(f: &fs::File) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared read-only mapping of 4096 bytes of an open file; it is read and
    // unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
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
        let v = std::slice::from_raw_parts(p.cast::<u8>(), 4096).to_vec();
        libc::munmap(p, 4096);
        v
    }
}

/// A shared writable mapping of the first `len` bytes of a file, unmapped on drop.
struct Mapping {
    p: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(f: &fs::File, len: usize) -> Mapping {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file at least that long; it
        // is only written inside its length and unmapped once, on drop.
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
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping { p, len }
    }

    /// Writes `byte` at `offset` and syncs the mapping (so the write also reaches the file when
    /// it goes through ufs).
    fn write(&self, offset: usize, byte: u8) {
        assert!(offset < self.len);
        // SAFETY: `offset` is inside the live mapping.
        unsafe {
            *self.p.cast::<u8>().add(offset) = byte;
            assert_eq!(libc::msync(self.p, self.len, libc::MS_SYNC), 0, "msync");
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.p, self.len) };
    }
}

/// A write through a shared mapping changes the file's `mtime`, as seen through the mount,
/// while the file is open and after (xfstests `generic/080`, `generic/215`). With passthrough the
/// kernel updates only the real file's times, without a request to ufs (`mmap` itself makes the
/// kernel ask again, but a later write fault does not), so the attributes it cached for the node
/// (here from the `futimens` after mapping) must not be used while a writer is open: before the
/// fix every stat below showed the year-2000 time.
#[test]
fn writes_through_a_mapping_update_the_times() {
    const TEST: &str = "writes_through_a_mapping_update_the_times";
    if skip(TEST) {
        return;
    }
    const OLD: i64 = 946_684_800;
    let t = tempdir();
    for extra in ["", ",passthrough=off"] {
        let s = Stack::new(&t.path().join(format!("s{}", extra.len())));
        fs::write(s.l.join("mapped"), vec![b'x'; 8192]).expect("write");
        let (m, log) = s.mount_logged(t.path(), extra);
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(OLD as u64);
        let fresh = m.mnt.join("fresh");
        fs::write(&fresh, vec![b'y'; 8192]).expect("create");
        for name in ["mapped", "fresh"] {
            let p = m.mnt.join(name);
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .expect("open");
            let map = Mapping::new(&f, 8192);
            map.write(0, b'w');
            f.set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
                .expect("set times");
            let before = fs::metadata(&p).expect("stat");
            assert_eq!(before.mtime(), OLD, "[{extra}] {name}: times set");
            map.write(4096, b'z');
            let open = f.metadata().expect("fstat");
            let by_name = fs::metadata(&p).expect("stat");
            drop(map);
            drop(f);
            let closed = fs::metadata(&p).expect("stat");
            for (when, st) in [
                ("fstat", &open),
                ("stat", &by_name),
                ("after close", &closed),
            ] {
                assert!(
                    st.mtime() > OLD,
                    "[{extra}] {name}: {when} after a mapped write shows mtime {}",
                    st.mtime(),
                );
            }
            let data = fs::read(&p).expect("read");
            assert_eq!(
                (data[0], data[4096]),
                (b'w', b'z'),
                "[{extra}] {name}: the mapped writes are in the file"
            );
        }
        drop(m);
        if let Some(why) = unavailable(&log).filter(|_| extra.is_empty()) {
            say(&format!(
                "{TEST}: passthrough not in use here ({why}); checked without it"
            ));
        }
    }
}
