//! `O_DIRECT` through the mount, on a disk upper (ext4 or xfs), compared with the kernel.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use common::*;

/// A buffer aligned for `O_DIRECT` (4 KiB), as applications that use it allocate.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        // SAFETY: `ptr` is valid for `len` bytes, just allocated.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Aligned { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `layout.size()` initialised bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// The outcomes of `O_DIRECT` writes and reads of a new and of a lower file under `m`.
fn direct_steps(m: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn note(out: &mut Vec<String>, what: &str, r: std::io::Result<usize>) {
        out.push(format!("{what}: {:?}", r.map_err(|e| e.raw_os_error())));
    }
    let data = Aligned::new(20 * 1024, b'x');
    let opened = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("new"));
    match opened {
        Ok(f) => note(&mut out, "pwrite new", f.write_at(data.as_slice(), 0)),
        Err(e) => note(&mut out, "open new", Err(e)),
    }
    let mut back = Aligned::new(20 * 1024, 0);
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("new"))
    {
        Ok(f) => {
            note(&mut out, "pread new", f.read_at(back.as_mut_slice(), 0));
            out.push(format!("same data: {}", back.as_slice() == data.as_slice()));
        }
        Err(e) => note(&mut out, "open new for reading", Err(e)),
    }
    // A lower file opened O_DIRECT for writing: copied up, then written directly.
    let four = Aligned::new(4096, b'y');
    match fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("lower"))
    {
        Ok(f) => note(&mut out, "pwrite lower", f.write_at(four.as_slice(), 4096)),
        Err(e) => note(&mut out, "open lower", Err(e)),
    }
    let content = fs::read(m.join("lower")).map_err(|e| e.raw_os_error());
    out.push(format!(
        "lower now: {:?}",
        content.map(|c| (c.len(), c.iter().filter(|&&b| b == b'y').count()))
    ));
    out
}

/// Regression (xfstests `generic/091` did not run): `O_DIRECT` writes through ufs over a disk
/// upper failed with `EINVAL`, because ufs opened the real file `O_DIRECT` and wrote FUSE's
/// unaligned buffers to it. Over tmpfs, which ignores `O_DIRECT`, they worked.
#[test]
fn o_direct_writes_and_reads_like_the_kernel() {
    if skip("o_direct_writes_and_reads_like_the_kernel") {
        return;
    }
    let t = tempdir();
    let mut results = Vec::new();
    for side in ["k", "u"] {
        let base = t.path().join(side);
        let l = mkdirs(&base.join("l"));
        fs::write(l.join("lower"), vec![b'l'; 8192]).expect("write lower");
        let up = mkdirs(&base.join("up"));
        let wk = mkdirs(&base.join("wk"));
        let m = mkdirs(&base.join("m"));
        let steps = if side == "k" {
            let _k = KernelOverlay::mount("lowerdir=l,upperdir=up,workdir=wk", &m, &base);
            direct_steps(&m)
        } else {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                l.display(),
                up.display(),
                wk.display()
            );
            let _u = UfsMount::mount(&opts, &m);
            direct_steps(&m)
        };
        results.push(steps);
    }
    if results[0].iter().any(|s| s.contains("Err")) {
        say(&format!(
            "SKIP o_direct_writes_and_reads_like_the_kernel: the kernel overlay refuses O_DIRECT \
             on this filesystem, so there is nothing to compare: {:?}",
            results[0]
        ));
        return;
    }
    assert_eq!(results[1], results[0], "ufs (left) and the kernel (right)");
}
