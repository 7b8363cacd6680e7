//! Read-side semantics of ufs, checked through real mounts: sparse files (a 5 GiB lower file
//! read at its far offsets, staying sparse) and statfs (the upper's filesystem, or the top
//! lower's).

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::*;

// ---------------------------------------------------------------------------------------------
// Large and sparse files
// ---------------------------------------------------------------------------------------------

#[test]
fn large_sparse_file_reads_markers_and_stays_sparse() {
    if skip("large_sparse_file_reads_markers_and_stays_sparse") {
        return;
    }
    const SIZE: u64 = 5 << 30;
    let t = tempdir();
    let low = mkdirs(&t.path().join("l"));
    let mnt = mkdirs(&t.path().join("m"));
    let offsets = [
        (0u64, b"BEGIN---"),
        ((4 << 30) + 123, b"MIDDLE--"),
        (SIZE - 8, b"---END--"),
    ];
    {
        let f = fs::File::create(low.join("big")).unwrap();
        f.set_len(SIZE).unwrap();
        for (off, m) in &offsets {
            f.write_all_at(*m, *off).unwrap();
        }
    }
    let raw_blocks = fs::metadata(low.join("big")).unwrap().blocks();
    assert!(
        raw_blocks < 2048,
        "the layer file is not sparse ({raw_blocks} blocks)"
    );
    let _m = UfsMount::mount(&format!("lowerdir={}", low.display()), &mnt);
    let p = mnt.join("big");
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), SIZE, "size through the mount");
    assert!(
        md.blocks() * 512 < 1 << 20,
        "st_blocks through the mount: {} (not sparse)",
        md.blocks()
    );
    let f = fs::File::open(&p).unwrap();
    for (off, m) in &offsets {
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, *off)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
        assert_eq!(&buf, *m, "marker at offset {off}");
    }
    let mut hole = vec![1u8; 4096];
    f.read_exact_at(&mut hole, 2 << 30).unwrap();
    assert!(hole.iter().all(|b| *b == 0), "a hole reads as zeros");
    let mut tail = [0u8; 16];
    assert_eq!(
        f.read_at(&mut tail, SIZE - 8).unwrap(),
        8,
        "short read at EOF"
    );
    assert_eq!(f.read_at(&mut tail, SIZE).unwrap(), 0, "read at EOF");
}

// ---------------------------------------------------------------------------------------------
// statfs
// ---------------------------------------------------------------------------------------------

fn fs_size(p: &Path) -> (u64, u64) {
    let s = statvfs(p);
    let frsize = if s.f_frsize != 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    (s.f_blocks * frsize, s.f_files)
}

#[test]
fn statfs_reports_upper_or_top_lower() {
    if skip("statfs_reports_upper_or_top_lower") {
        return;
    }
    let t = tempdir();
    let b = t.path();
    let up_fs = TmpfsMount::mount(&b.join("tu"), 37);
    let low_fs = TmpfsMount::mount(&b.join("tl"), 23);
    let disk_low = mkdirs(&b.join("disk"));
    fs::write(disk_low.join("f"), "x").unwrap();
    let tmp_low = mkdirs(&low_fs.dir.join("l"));
    let up = mkdirs(&up_fs.dir.join("up"));
    let wk = mkdirs(&up_fs.dir.join("wk"));
    let (up_size, disk_size, tl_size) = (fs_size(&up), fs_size(&disk_low), fs_size(&tmp_low));
    assert_ne!(up_size.0, disk_size.0);
    assert_ne!(up_size.0, tl_size.0);

    let cases = [
        (
            "with upper on tmpfs",
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                disk_low.display(),
                tmp_low.display(),
                up.display(),
                wk.display()
            ),
            up_size,
        ),
        (
            "no upper, top lower on tmpfs",
            format!("lowerdir={}:{}", tmp_low.display(), disk_low.display()),
            tl_size,
        ),
        (
            "no upper, top lower on disk",
            format!("lowerdir={}:{}", disk_low.display(), tmp_low.display()),
            disk_size,
        ),
    ];
    for (i, (what, opts, want)) in cases.iter().enumerate() {
        let mnt = mkdirs(&b.join(format!("m{i}")));
        let _m = UfsMount::mount(opts, &mnt);
        let got = fs_size(&mnt);
        assert_eq!(
            got.0, want.0,
            "{what}: total bytes (f_blocks * f_frsize) through the mount {got:?} != expected {want:?}"
        );
        assert_eq!(got.1, want.1, "{what}: f_files");
    }
}
