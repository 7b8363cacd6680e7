//! Write-side semantics of ufs, checked through real mounts: copy-up fidelity, concurrency
//! (copy-ups racing on one file, other files served during a long copy-up), crash safety (a
//! daemon killed during a copy-up), ENOSPC, and a copy-up found after the kernel forgets the
//! file.

mod common;
#[path = "common/write_helpers.rs"]
mod write_helpers;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use write_helpers::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// 1. Copy-up fidelity
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
// 2. Concurrency
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
// 3. Crash safety
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
// 4. ENOSPC
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
// 5. Lookups after the kernel forgets a copied-up file
// ---------------------------------------------------------------------------------------------

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
