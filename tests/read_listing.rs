//! Read-side semantics of ufs, checked through real mounts: readdir of a large merged directory
//! compared with kernel overlayfs, and readdir offsets (telldir/seekdir resume identically).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use common::*;

// ---------------------------------------------------------------------------------------------
// readdir
// ---------------------------------------------------------------------------------------------

/// A directory `big` merged from three lowers, ~600 names with some hidden by whiteouts.
/// Returns the stack and the names `big` must list.
fn big_dir_stack() -> (Stack, BTreeSet<String>) {
    let mut l = [Layer::default(), Layer::default(), Layer::default()];
    let mut expect = BTreeSet::new();
    for i in 0..600 {
        let layer = if i < 300 {
            0
        } else if i < 450 {
            1
        } else {
            2
        };
        l[layer].put(
            &format!("big/e{i:03}"),
            Node::file(format!("{i}").as_bytes()),
        );
        // Overlaps: lower layers also have many of these names.
        if (200..300).contains(&i) {
            l[1].put(&format!("big/e{i:03}"), Node::file(b"hidden by layer 0"));
        }
        if (400..450).contains(&i) {
            l[2].put(&format!("big/e{i:03}"), Node::symlink("hidden"));
        }
        expect.insert(format!("e{i:03}"));
    }
    for i in 500..520 {
        l[0].put(&format!("big/e{i:03}"), Node::Whiteout);
        expect.remove(&format!("e{i:03}"));
    }
    for i in 560..580 {
        l[1].put(&format!("big/e{i:03}"), Node::Whiteout);
        expect.remove(&format!("e{i:03}"));
    }
    for i in 0..20 {
        l[0].put(&format!("big/sl{i:02}"), Node::symlink("e000"));
        expect.insert(format!("sl{i:02}"));
    }
    for i in 0..15 {
        let layer = if i < 10 { 0 } else { 1 };
        l[layer].put(&format!("big/dd{i:02}/in{layer}"), Node::file(b""));
        if (5..10).contains(&i) {
            l[1].put(&format!("big/dd{i:02}/in1"), Node::file(b""));
        }
        expect.insert(format!("dd{i:02}"));
    }
    for i in 0..10 {
        l[2].put(
            &format!("big/ff{i:02}"),
            Node::Fifo {
                meta: Meta::new(0o644),
            },
        );
        expect.insert(format!("ff{i:02}"));
    }
    (
        Stack {
            lowers: l.to_vec(),
            upper: None,
        },
        expect,
    )
}

#[test]
fn readdir_of_large_merged_dir_matches_kernel() {
    if skip("readdir_of_large_merged_dir_matches_kernel") {
        return;
    }
    let (stack, expect) = big_dir_stack();
    let t = tempdir();
    let u = stack.materialize(&t.path().join("u"), ufs_side_flavor(), 3);
    let k = stack.materialize(&t.path().join("k"), Flavor::Kernel, 3);
    let _m = UfsMount::mount(&u.options(), &u.mnt);
    let _k = KernelOverlay::mount(&k.kernel_options(), &k.mnt, &k.base);

    let read = |dir: &Path| -> Vec<(String, &'static str)> {
        fs::read_dir(dir.join("big"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let ft = e.file_type().unwrap(); // from d_type
                let kind = if ft.is_dir() {
                    "dir"
                } else if ft.is_symlink() {
                    "symlink"
                } else if ft.is_fifo() {
                    "fifo"
                } else if ft.is_file() {
                    "file"
                } else {
                    "other"
                };
                (e.file_name().to_string_lossy().into_owned(), kind)
            })
            .collect()
    };
    let ul = read(&u.mnt);
    let names: Vec<&String> = ul.iter().map(|(n, _)| n).collect();
    let set: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names.len(), set.len(), "duplicate names in the listing");
    assert!(
        !set.iter().any(|n| n.starts_with(".wh.")),
        "whiteout names listed"
    );
    let missing: Vec<_> = expect.difference(&set).collect();
    let extra: Vec<_> = set.difference(&expect).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let kl: BTreeMap<String, &str> = read(&k.mnt).into_iter().collect();
    let ul: BTreeMap<String, &str> = ul.into_iter().collect();
    assert_eq!(ul, kl, "names and d_type differ from the kernel's");
}

/// A thin safe wrapper over libc's DIR stream, for telldir/seekdir.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(p: &Path) -> DirStream {
        let c = cpath(p);
        // SAFETY: c is a NUL-terminated path; a null result is checked below.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir {}: {}",
            p.display(),
            io::Error::last_os_error()
        );
        DirStream(d)
    }
    fn tell(&mut self) -> libc::c_long {
        // SAFETY: self.0 is an open DIR stream owned by this value.
        unsafe { libc::telldir(self.0) }
    }
    fn seek(&mut self, pos: libc::c_long) {
        // SAFETY: self.0 is open and pos came from telldir on this same stream.
        unsafe { libc::seekdir(self.0, pos) }
    }
    fn next(&mut self) -> Option<(String, u64)> {
        // SAFETY: self.0 is open. readdir returns null at the end or on error (errno tells which,
        // and we reset errno first); a non-null dirent stays valid until the next call on this
        // stream, and we copy the name out before returning.
        unsafe {
            *libc::__errno_location() = 0;
            let e = libc::readdir(self.0);
            if e.is_null() {
                let errno = *libc::__errno_location();
                assert_eq!(
                    errno,
                    0,
                    "readdir failed: {}",
                    io::Error::from_raw_os_error(errno)
                );
                return None;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            Some((name, (*e).d_ino))
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.0 is open and closed exactly once, here.
        unsafe { libc::closedir(self.0) };
    }
}

#[test]
fn readdir_telldir_seekdir_resume_identically() {
    if skip("readdir_telldir_seekdir_resume_identically") {
        return;
    }
    let (stack, expect) = big_dir_stack();
    let t = tempdir();
    let u = stack.materialize(&t.path().join("u"), ufs_side_flavor(), 4);
    let _m = UfsMount::mount(&u.options(), &u.mnt);

    let mut d = DirStream::open(&u.mnt.join("big"));
    let mut positions = Vec::new();
    let mut listing = Vec::new();
    loop {
        let pos = d.tell();
        match d.next() {
            Some(e) => {
                positions.push(pos);
                listing.push(e);
            }
            None => break,
        }
    }
    let names: BTreeSet<String> = listing
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names, expect, "listing through libc readdir");
    assert_eq!(
        listing.len(),
        expect.len() + 2,
        "`.` and `..` listed once each, no duplicates"
    );
    let n = listing.len();
    // Seek backwards and forwards, including to the very first and last positions.
    for &k in &[n / 2, 1, n - 1, 0, 37 % n, n * 3 / 4, 250 % n, n / 3] {
        d.seek(positions[k]);
        let rest: Vec<(String, u64)> = std::iter::from_fn(|| d.next()).collect();
        assert!(
            rest == listing[k..],
            "after seekdir to telldir position #{k} ({}): listing continued with {:?} instead of {:?}",
            positions[k],
            rest.iter().take(3).map(|e| &e.0).collect::<Vec<_>>(),
            listing[k..]
                .iter()
                .take(3)
                .map(|e| &e.0)
                .collect::<Vec<_>>()
        );
    }
    // SAFETY: d.0 is an open stream.
    unsafe { libc::rewinddir(d.0) };
    let again: Vec<(String, u64)> = std::iter::from_fn(|| d.next()).collect();
    assert!(again == listing, "rewinddir gives a different listing");
}

/// The names a directory stream lists from where it stands to its end.
fn rest_of(d: &mut DirStream) -> BTreeSet<String> {
    std::iter::from_fn(|| d.next()).map(|(n, _)| n).collect()
}

/// A directory's listing is read by the first `readdir`, not by `opendir`; `rewinddir` reads
/// it again; a merged directory removed or replaced by a rename while open lists nothing (the
/// kernel ends the listing of a dead directory itself). All as on the kernel overlay, which reads
/// its merged listing at the first `readdir` and at offset 0.
#[test]
fn listing_is_read_at_the_first_readdir_and_again_at_rewind() {
    if skip("listing_is_read_at_the_first_readdir_and_again_at_rewind") {
        return;
    }
    let (mut stack, _) = big_dir_stack();
    stack.upper = Some(Layer::default());
    let t = tempdir();
    let u = stack.materialize(&t.path().join("u"), ufs_side_flavor(), 5);
    let k = stack.materialize(&t.path().join("k"), Flavor::Kernel, 5);
    let _m = UfsMount::mount(&u.options(), &u.mnt);
    let _k = KernelOverlay::mount(&k.kernel_options(), &k.mnt, &k.base);

    let run = |mnt: &Path| -> Vec<BTreeSet<String>> {
        let big = mnt.join("big");
        let mut d = DirStream::open(&big);
        fs::write(big.join("new1"), b"").unwrap();
        fs::remove_file(big.join("e000")).unwrap();
        let first = rest_of(&mut d);
        fs::remove_file(big.join("e001")).unwrap();
        fs::create_dir(big.join("new2")).unwrap();
        // SAFETY: d.0 is an open stream.
        unsafe { libc::rewinddir(d.0) };
        let rewound = rest_of(&mut d);
        // dd05 is merged from two layers: removing it leaves a whiteout in the upper.
        let mut m = DirStream::open(&big.join("dd05"));
        fs::remove_file(big.join("dd05/in0")).unwrap();
        fs::remove_file(big.join("dd05/in1")).unwrap();
        fs::remove_dir(big.join("dd05")).unwrap();
        let removed = rest_of(&mut m);
        // dd06, also merged, emptied and replaced by a rename while open.
        let mut r = DirStream::open(&big.join("dd06"));
        fs::remove_file(big.join("dd06/in0")).unwrap();
        fs::remove_file(big.join("dd06/in1")).unwrap();
        fs::create_dir(big.join("fresh")).unwrap();
        fs::write(big.join("fresh/inside"), b"").unwrap();
        fs::remove_file(big.join("fresh/inside")).unwrap();
        fs::rename(big.join("fresh"), big.join("dd06")).unwrap();
        let replaced = rest_of(&mut r);
        vec![first, rewound, removed, replaced]
    };
    let ul = run(&u.mnt);
    let kl = run(&k.mnt);
    assert!(
        ul[0].contains("new1") && !ul[0].contains("e000"),
        "a listing read after opendir misses changes made in between"
    );
    assert!(
        ul[1].contains("new2") && !ul[1].contains("e001"),
        "rewinddir did not read the directory again"
    );
    assert!(
        !ul[2].contains("in0") && !ul[2].contains("in1"),
        "a removed directory lists {:?}",
        ul[2]
    );
    assert!(
        !ul[3].contains("in0") && !ul[3].contains("in1"),
        "a directory replaced by a rename lists {:?}",
        ul[3]
    );
    assert_eq!(ul, kl, "listings differ from the kernel's");
}
