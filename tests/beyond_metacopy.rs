//! Features beyond the kernel's defaults, proved through real mounts: metadata-only copy-up
//! (`metacopy=on`), read by the kernel from ufs's upper and the other way round, the data
//! copied with `metacopy=off`, and truncations and metadata changes that copy no data.
//!
//! Every tree these tests walk is also checked for the inode-number rules of SEMANTICS.md
//! (`beyond_support::ino_violations`): readdir's `d_ino` equals `st_ino`, one `st_dev`, and
//! names that share an `st_ino` are hard links of one file (same content and link count).

#[path = "common/beyond_support.rs"]
mod beyond_support;
mod common;
#[path = "common/write_support.rs"]
mod write_support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use beyond_support::*;
use common::*;
use write_support::*;

// ---------------------------------------------------------------------------------------------
// Metadata-only copy-up
// ---------------------------------------------------------------------------------------------

/// At most this much may be allocated to a metadata-only or emptied upper copy.
const TINY: u64 = 256 << 10;

fn assert_meta_only(upper_file: &Path, what: &str) {
    let md = fs::symlink_metadata(upper_file)
        .unwrap_or_else(|e| panic!("{what}: no upper copy {}: {e}", upper_file.display()));
    assert!(
        md.blocks() * 512 <= TINY,
        "{what}: the upper copy has {} bytes allocated; a metadata-only copy holds no data",
        md.blocks() * 512
    );
    assert!(
        has_metacopy(upper_file),
        "{what}: the upper copy has no metacopy marker"
    );
}

#[test]
fn metadata_only_copy_up_of_a_1gib_file() {
    if skip("metadata_only_copy_up_of_a_1gib_file") {
        return;
    }
    let t = tempdir();
    let since = now_secs() - 1;
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    let (m1, m2, m3, m4) = (
        Sparse::gib(1),
        Sparse::gib(2),
        Sparse::gib(3),
        Sparse::gib(4),
    );
    m1.write(&l.join("big1"));
    m2.write(&l.join("big2"));
    m3.write(&l.join("big3"));
    m4.write(&l.join("big4"));
    let m5 = Sparse::gib(5);
    mkdirs(&l.join("dir"));
    m5.write(&l.join("dir/big5"));
    for f in ["big1", "big2", "big3", "big4", "dir/big5"] {
        set_times(&l.join(f), FIXED_TIME.0, FIXED_TIME.1).unwrap();
    }
    let lower_blocks = allocated(&l.join("big1"));
    assert!(
        lower_blocks >= m1.data_bytes(),
        "the lower file holds its data"
    );
    let mnt = lay.mnt.clone();
    let (f, uf) = (mnt.join("big1"), lay.upper.join("big1"));
    let mut m = lay.mount_ufs("");

    chmod(&f, 0o600).unwrap();
    assert_meta_only(&uf, "after chmod");
    m1.check(&f, b"").unwrap();
    assert_eq!(lmeta(&f).mode() & 0o7777, 0o600);

    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    assert_meta_only(&uf, "after chown");
    m1.check(&f, b"").unwrap();
    assert_eq!((lmeta(&f).uid(), lmeta(&f).gid()), (1234, 5678));

    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_meta_only(&uf, "after chown and a remount");
    m1.check(&f, b"").unwrap();
    assert_eq!((lmeta(&f).mode() & 0o7777, lmeta(&f).uid()), (0o600, 1234));

    utimens(&f, Some((1_400_000_000, 5)), Some((1_400_000_001, 7))).unwrap();
    assert_meta_only(&uf, "after utimensat");
    m1.check(&f, b"").unwrap();
    assert_eq!(
        (lmeta(&f).mtime(), lmeta(&f).mtime_nsec()),
        (1_400_000_001, 7)
    );

    set_xattr(&f, "user.x", b"1").unwrap();
    assert_meta_only(&uf, "after setxattr");
    m1.check(&f, b"").unwrap();
    assert_eq!(get_xattr(&f, "user.x").unwrap(), b"1");
    // A metadata-only copy inside a directory that then moves (a redirect): its data is
    // still found below the directory's old name.
    chmod(&mnt.join("dir/big5"), 0o604).unwrap();
    fs::rename(mnt.join("dir"), mnt.join("dir2")).unwrap();
    let (f5, uf5) = (mnt.join("dir2/big5"), lay.upper.join("dir2/big5"));
    assert_meta_only(
        &uf5,
        "dir2/big5 after chmod and the rename of its directory",
    );
    m5.check(&f5, b"").unwrap();
    assert_ino_rules(&mnt, "metadata-only copies");

    // Remount, and the kernel (metacopy=on) on ufs's upper, while the copies are metadata-only.
    let view = file_view(&f, &m1);
    let view5 = file_view(&f5, &m5);
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_meta_only(&uf, "after all metadata changes and a remount");
    assert_eq!(file_view(&f, &m1), view, "ufs after remount");
    m1.check(&f, b"").unwrap();
    assert_eq!(file_view(&f5, &m5), view5, "ufs after remount: dir2/big5");
    m5.check(&f5, b"").unwrap();
    unmount_and_wait(&mut m);
    drop(m);
    let w = lay.fresh_work("k1");
    let k = lay.mount_kernel(&w, "metacopy=on,redirect_dir=on,index=off");
    let kview = file_view(&f, &m1);
    let kcheck = m1.check(&f, b"");
    let kview5 = fs::symlink_metadata(&f5).map(|_| file_view(&f5, &m5));
    let kcheck5 = m5.check(&f5, b"");
    drop(k);
    assert_eq!(
        kview5.map_err(|e| errno_str(&e)),
        Ok(view5),
        "the kernel reading dir2/big5 (a metadata-only copy in a redirected directory)"
    );
    kcheck5.unwrap_or_else(|e| panic!("dir2/big5 through the kernel: {e}"));
    assert_eq!(
        kview, view,
        "the kernel (metacopy=on) reading ufs's metadata-only copy"
    );
    kcheck.unwrap_or_else(|e| panic!("content through the kernel: {e}"));
    assert_meta_only(&uf, "after the kernel mount");

    let mut m = lay.mount_ufs("");
    append(&f, b"Z").unwrap();
    let md = lmeta(&f);
    assert!(
        allocated(&uf) >= m1.data_bytes(),
        "after an append the upper copy holds the data: {} bytes allocated, the data is {}",
        allocated(&uf),
        m1.data_bytes()
    );
    assert!(
        !has_metacopy(&uf),
        "the metacopy marker stays after the data was copied"
    );
    m1.check(&f, b"Z").unwrap();
    m1.check(&uf, b"Z")
        .unwrap_or_else(|e| panic!("the upper file itself after the append: {e}"));
    assert!(
        md.mtime() >= since,
        "the append must update mtime (it is {})",
        md.mtime()
    );
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o600, 1234, 5678),
        "the append must keep chmod and chown"
    );
    assert_eq!(get_xattr(&f, "user.x").unwrap(), b"1");

    // Emptying other 1 GiB lower files copies nothing: a lower-only one by truncate(0) and by
    // open(O_TRUNC), and a metadata-only copy by truncate(0).
    chmod(&mnt.join("big4"), 0o640).unwrap();
    assert_meta_only(&lay.upper.join("big4"), "big4 after chmod");
    truncate(&mnt.join("big4"), 0).unwrap();
    truncate(&mnt.join("big2"), 0).unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("big3"))
        .unwrap();
    for n in ["big2", "big3", "big4"] {
        let u = lay.upper.join(n);
        let umd = fs::symlink_metadata(&u).unwrap_or_else(|e| panic!("upper {n}: {e}"));
        assert_eq!(umd.len(), 0, "upper {n} size");
        assert!(
            umd.blocks() * 512 <= TINY,
            "upper {n}: {} bytes allocated",
            umd.blocks() * 512
        );
        assert!(!has_metacopy(&u), "upper {n} is empty, not metadata-only");
        assert_eq!(lmeta(&mnt.join(n)).len(), 0, "{n} through the mount");
        assert_eq!(fs::read(mnt.join(n)).unwrap(), b"", "{n} content");
    }
    m2.check(&l.join("big2"), b"").unwrap();
    m3.check(&l.join("big3"), b"").unwrap();
    m4.check(&l.join("big4"), b"").unwrap();
    assert_eq!(
        lmeta(&mnt.join("big4")).mode() & 0o7777,
        0o640,
        "big4 keeps its chmod"
    );
    assert_ino_rules(&mnt, "after data copy-up and truncations");
    let view = file_view(&f, &m1);
    unmount_and_wait(&mut m);
    drop(m);
    let mut m = lay.mount_ufs("");
    assert_eq!(file_view(&f, &m1), view, "after remount");
    m1.check(&f, b"Z").unwrap();
    for n in ["big2", "big3", "big4"] {
        assert_eq!(lmeta(&mnt.join(n)).len(), 0, "{n} after remount");
    }
    unmount_and_wait(&mut m);
    drop(m);
    let w = lay.fresh_work("k2");
    let k = lay.mount_kernel(&w, "metacopy=on,redirect_dir=on,index=off");
    let kview = file_view(&f, &m1);
    let sizes: Vec<u64> = ["big2", "big3", "big4"]
        .iter()
        .map(|n| lmeta(&mnt.join(n)).len())
        .collect();
    drop(k);
    assert_eq!(kview, view, "the kernel reading the completed copy");
    assert_eq!(sizes, vec![0, 0, 0], "the kernel reading the emptied files");
}

/// The other way round: metadata-only copies the kernel made and then renamed (it records a
/// redirect on such a file) are read by ufs through the record, and completed by a write.
#[test]
fn ufs_reads_kernel_metacopy_with_redirects() {
    if skip("ufs_reads_kernel_metacopy_with_redirects") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let l = &lay.lowers[0];
    let (ma, mb) = (Sparse::gib(11), Sparse::gib(12));
    ma.write(&l.join("big"));
    mkdirs(&l.join("d"));
    mb.write(&l.join("d/big6"));
    let mnt = lay.mnt.clone();
    let kwork = lay.work.clone();
    let k = lay.mount_kernel(&kwork, "metacopy=on,redirect_dir=on,index=off");
    chmod(&mnt.join("big"), 0o600).unwrap();
    fs::rename(mnt.join("big"), mnt.join("moved")).unwrap();
    chmod(&mnt.join("d/big6"), 0o640).unwrap();
    fs::rename(mnt.join("d/big6"), mnt.join("big7")).unwrap();
    let views = [
        file_view(&mnt.join("moved"), &ma),
        file_view(&mnt.join("big7"), &mb),
    ];
    drop(k);
    for (n, want) in [("moved", "big"), ("big7", "/d/big6")] {
        let u = lay.upper.join(n);
        assert!(
            has_metacopy(&u) && allocated(&u) <= TINY,
            "the kernel did not leave a metadata-only copy at {n}"
        );
        assert_eq!(
            get_xattr(&u, "trusted.overlay.redirect").ok().as_deref(),
            Some(want.as_bytes()),
            "the kernel's redirect record on {n}"
        );
    }
    let ufs_work = lay.fresh_work("ufs");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        lay.upper.display(),
        ufs_work.display()
    );
    let _m = UfsMount::mount(&opts, &mnt);
    assert_eq!(
        file_view(&mnt.join("moved"), &ma),
        views[0],
        "ufs reading moved"
    );
    assert_eq!(
        file_view(&mnt.join("big7"), &mb),
        views[1],
        "ufs reading big7"
    );
    ma.check(&mnt.join("moved"), b"").unwrap();
    mb.check(&mnt.join("big7"), b"").unwrap();
    assert_ino_rules(&mnt, "ufs on the kernel's metadata-only copies");
    append(&mnt.join("big7"), b"!").unwrap();
    mb.check(&mnt.join("big7"), b"!").unwrap();
    mb.check(&lay.upper.join("big7"), b"!")
        .unwrap_or_else(|e| panic!("the completed upper big7: {e}"));
    assert!(!has_metacopy(&lay.upper.join("big7")));
    assert_eq!(lmeta(&mnt.join("big7")).mode() & 0o7777, 0o640);
}

#[test]
fn metacopy_off_copies_the_data_on_chmod() {
    if skip("metacopy_off_copies_the_data_on_chmod") {
        return;
    }
    let t = tempdir();
    let lay = Layout::new(t.path(), 1);
    let model = Sparse::gib(7);
    model.write(&lay.lowers[0].join("big"));
    let _m = lay.mount_ufs("metacopy=off");
    let f = lay.mnt.join("big");
    chmod(&f, 0o600).unwrap();
    let uf = lay.upper.join("big");
    assert!(
        allocated(&uf) >= model.data_bytes(),
        "metacopy=off: chmod must copy the data ({} bytes allocated, data {})",
        allocated(&uf),
        model.data_bytes()
    );
    assert!(!has_metacopy(&uf), "metacopy=off wrote a metacopy marker");
    model.check(&uf, b"").unwrap();
    model.check(&f, b"").unwrap();
    assert_eq!(lmeta(&f).mode() & 0o7777, 0o600);
}

/// Regression: `open(O_TRUNC)` of a lower file used to reach ufs as an open for writing (which
/// copied all the data) followed by a truncate, until ufs asked the kernel for ATOMIC_O_TRUNC.
/// The upper here is a 16 MiB tmpfs and the lower files are 64 MiB: any data copy fails with
/// ENOSPC, so these operations succeeding proves that no data was copied.
#[test]
fn truncating_and_metadata_changes_copy_no_data() {
    if common::skip("truncating_and_metadata_changes_copy_no_data") {
        return;
    }
    let t = common::tempdir();
    let lower = t.path().join("l");
    fs::create_dir_all(&lower).unwrap();
    for name in ["otrunc", "trunc0", "chmod", "chown", "xattr"] {
        // 64 MiB of real data each.
        let f = fs::File::create(lower.join(name)).unwrap();
        // Real data (not a hole), so that a copy would need the space.
        let chunk = vec![b'd'; 1 << 20];
        for i in 0..64u64 {
            std::os::unix::fs::FileExt::write_all_at(&f, &chunk, i << 20).unwrap();
        }
    }
    let small = t.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let _tmpfs = common::TmpfsMount::mount(&small, 16);
    fs::create_dir_all(small.join("up")).unwrap();
    fs::create_dir_all(small.join("wk")).unwrap();
    let mnt = t.path().join("m");
    fs::create_dir_all(&mnt).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        small.join("up").display(),
        small.join("wk").display()
    );
    let _m = common::UfsMount::mount(&opts, &mnt);

    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("otrunc"))
        .expect("open(O_TRUNC) must not copy 64 MiB into a 16 MiB upper");
    assert_eq!(fs::metadata(mnt.join("otrunc")).unwrap().len(), 0);
    write_support::truncate(&mnt.join("trunc0"), 0).expect("truncate(0) must not copy data");
    assert_eq!(fs::metadata(mnt.join("trunc0")).unwrap().len(), 0);
    // The control: opening for writing without O_TRUNC does copy the data, which cannot fit.
    let e = OpenOptions::new()
        .write(true)
        .open(mnt.join("xattr"))
        .expect_err("a data copy-up must not fit in the 16 MiB upper");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    fs::set_permissions(mnt.join("chmod"), fs::Permissions::from_mode(0o600))
        .expect("chmod must copy metadata only");
    std::os::unix::fs::chown(mnt.join("chown"), Some(1), Some(1))
        .expect("chown must copy metadata only");
    assert_eq!(fs::metadata(mnt.join("chmod")).unwrap().len(), 64 << 20);
    assert_eq!(fs::metadata(mnt.join("chown")).unwrap().uid(), 1);
    // The data still reads from the lower file.
    let data = fs::read(mnt.join("chmod")).unwrap();
    assert!(data.len() == 64 << 20 && data.iter().all(|&b| b == b'd'));
}
