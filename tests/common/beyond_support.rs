//! Helpers for `tests/beyond_*.rs`: layer layouts mountable by ufs (with its own defaults) and by
//! kernel overlayfs (with explicit features), an inode-number walk of a mount with the checks
//! every tree must pass (readdir `d_ino` equals `st_ino`, one `st_dev`, names sharing an `st_ino`
//! are hard links with equal content and link count), the upper-layer views the tests count
//! and compare (entries, redirect records), sparse 1 GiB files whose content can be checked
//! at sample offsets without reading a gibibyte, and what the redirect and hard-link tests share:
//! a step run on ufs and on the kernel and compared (`lockstep`), and the remount and
//! cross-mount check after a sequence (`cross_check`).
//!
//! Everything that mounts goes through the guards of `tests/common` (`UfsMount`,
//! `KernelOverlay`, `TmpfsMount`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::{DirEntryExt, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::write_support::*;

// ---------------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------------

/// Layer directories under `base` (lowers may be anywhere under `base`, for example on a tmpfs
/// mounted there), mounted at `base/m`.
#[derive(Clone, Debug)]
pub struct Layout {
    pub base: PathBuf,
    /// Top first.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Layout {
    /// `n` empty lowers `l1`.. `ln`, `up`, `wk`, `m` under `base`.
    pub fn new(base: &Path, n: usize) -> Layout {
        let lowers = (1..=n)
            .map(|i| mkdirs(&base.join(format!("l{i}"))))
            .collect();
        Layout::with_lowers(base, lowers)
    }

    /// The given lowers, and `up`, `wk`, `m` under `base`.
    pub fn with_lowers(base: &Path, lowers: Vec<PathBuf>) -> Layout {
        Layout {
            base: base.to_path_buf(),
            lowers,
            upper: mkdirs(&base.join("up")),
            work: mkdirs(&base.join("wk")),
            mnt: mkdirs(&base.join("m")),
        }
    }

    /// The rotation containers do: this upper becomes the top lower, above the old lowers, and
    /// a fresh upper `NAME-up` with workdir `NAME-wk` goes on top.
    pub fn rotated(&self, name: &str) -> Layout {
        let mut lowers = vec![self.upper.clone()];
        lowers.extend(self.lowers.iter().cloned());
        Layout {
            base: self.base.clone(),
            lowers,
            upper: mkdirs(&self.base.join(format!("{name}-up"))),
            work: mkdirs(&self.base.join(format!("{name}-wk"))),
            mnt: self.mnt.clone(),
        }
    }

    /// ufs options (absolute paths) plus `extra` (may be empty): ufs's defaults otherwise.
    pub fn ufs_opts(&self, extra: &str) -> String {
        let lower: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut s = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper.display(),
            self.work.display()
        );
        if !extra.is_empty() {
            s.push(',');
            s.push_str(extra);
        }
        s
    }

    pub fn mount_ufs(&self, extra: &str) -> UfsMount {
        UfsMount::mount(&self.ufs_opts(extra), &self.mnt)
    }

    /// Kernel options relative to `base` (the mount data is limited to one page).
    pub fn kernel_opts(&self, work: &Path, features: &str) -> String {
        let rel = |p: &Path| {
            p.strip_prefix(&self.base)
                .unwrap_or_else(|_| panic!("{} not under {}", p.display(), self.base.display()))
                .display()
                .to_string()
        };
        let lower: Vec<String> = self.lowers.iter().map(|p| rel(p)).collect();
        format!(
            "lowerdir={},upperdir={},workdir={},{features}",
            lower.join(":"),
            rel(&self.upper),
            rel(work)
        )
    }

    /// Kernel overlay on these layers with workdir `work`.
    pub fn mount_kernel(&self, work: &Path, features: &str) -> KernelOverlay {
        KernelOverlay::mount(&self.kernel_opts(work, features), &self.mnt, &self.base)
    }

    /// A fresh, empty workdir `wk-NAME` on the upper's filesystem.
    pub fn fresh_work(&self, name: &str) -> PathBuf {
        let w = self.base.join(format!("wk-{name}"));
        assert!(!w.exists(), "{} already exists", w.display());
        mkdirs(&w)
    }
}

/// Writes `content` to `root/rel`, creating parent directories.
pub fn put(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// Appends `data` to the file `p` (open `O_APPEND`, as `echo >>` does).
pub fn append(p: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(p)?;
    f.write_all(data)
}

/// The errno of an `io::Error` by name (`EXDEV`, ...).
pub fn errno_str(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_name(n),
        None => format!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The upper layer, seen directly
// ---------------------------------------------------------------------------------------------

/// Every path under `root` (relative, `root` itself excluded), depth first, without following
/// symlinks.
pub fn all_paths(root: &Path) -> Vec<String> {
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for n in list_names(&dir) {
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            out.push(r.clone());
            if fs::symlink_metadata(root.join(&r))
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                go(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, "", &mut out);
    out
}

/// Whether `p` is a 0/0 character device (the kernel's whiteout).
pub fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// `trusted.overlay.redirect` of every directory under `upper` that has one.
pub fn redirects(upper: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rel in all_paths(upper) {
        let p = upper.join(&rel);
        if fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
            && let Ok(v) = get_xattr(&p, "trusted.overlay.redirect")
        {
            out.insert(rel, String::from_utf8_lossy(&v).into_owned());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Inode numbers through a mount
// ---------------------------------------------------------------------------------------------

/// One path as a mount reports it, for the inode-number checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InoEntry {
    pub kind: &'static str,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    /// Regular files: a digest of the content (sampled for files over 8 MiB).
    pub digest: Option<u64>,
    /// `d_ino` that readdir of the parent reported (none for the root).
    pub d_ino: Option<u64>,
}

/// A digest of a regular file's content: all of it up to 8 MiB, else its size and 64 KiB
/// samples every 32 MiB plus its last 64 KiB (enough to tell two 1 GiB test files apart).
pub fn content_digest(p: &Path) -> io::Result<u64> {
    let mut f = fs::File::open(p)?;
    let size = f.metadata()?.len();
    let mut h = std::hash::DefaultHasher::new();
    size.hash(&mut h);
    if size <= 8 * MIB {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        buf.hash(&mut h);
    } else {
        let mut buf = vec![0u8; 64 << 10];
        let mut offs: Vec<u64> = (0..size).step_by(32 * MIB as usize).collect();
        offs.push(size.saturating_sub(buf.len() as u64));
        for off in offs {
            let n = f.read_at(&mut buf, off)?;
            buf[..n].hash(&mut h);
        }
    }
    Ok(h.finish())
}

/// Walks the mount at `root` (without following symlinks): every path with its `st_ino`,
/// `st_dev`, link count, content digest and the `d_ino` readdir gave it.
pub fn ino_walk(root: &Path) -> BTreeMap<String, InoEntry> {
    fn entry(p: &Path, d_ino: Option<u64>) -> InoEntry {
        let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let kind = crate::common::kind_of(md.file_type());
        InoEntry {
            kind,
            ino: md.ino(),
            dev: md.dev(),
            nlink: md.nlink(),
            digest: (kind == "file")
                .then(|| content_digest(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))),
            d_ino,
        }
    }
    fn go(root: &Path, rel: &str, out: &mut BTreeMap<String, InoEntry>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut subdirs = Vec::new();
        for de in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let de = de.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let name = de.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let e = entry(&root.join(&r), Some(de.ino()));
            if e.kind == "dir" {
                subdirs.push(r.clone());
            }
            out.insert(r, e);
        }
        for s in subdirs {
            go(root, &s, out);
        }
    }
    let mut out = BTreeMap::new();
    out.insert(String::new(), entry(root, None));
    go(root, "", &mut out);
    out
}

/// Everything wrong with the inode numbers of one walk: readdir and `stat` disagreeing, more
/// than one `st_dev`, and paths sharing an `st_ino` that are not hard links of one file (a
/// directory among them, different kinds, different content or link counts, or more names than
/// the link count allows).
pub fn ino_violations(walk: &BTreeMap<String, InoEntry>) -> Vec<String> {
    let mut bad = Vec::new();
    let root_dev = walk.get("").map(|e| e.dev);
    let mut by_ino: BTreeMap<u64, Vec<(&String, &InoEntry)>> = BTreeMap::new();
    for (p, e) in walk {
        if let Some(d) = e.d_ino
            && d != e.ino
        {
            bad.push(format!("/{p}: readdir d_ino {d} but stat st_ino {}", e.ino));
        }
        if Some(e.dev) != root_dev {
            bad.push(format!(
                "/{p}: st_dev {} differs from the root's {root_dev:?}",
                e.dev
            ));
        }
        by_ino.entry(e.ino).or_default().push((p, e));
    }
    for (ino, group) in by_ino {
        if group.len() < 2 {
            continue;
        }
        let names: Vec<String> = group.iter().map(|(p, _)| format!("/{p}")).collect();
        let first = group[0].1;
        if group.iter().any(|(_, e)| e.kind == "dir") {
            bad.push(format!(
                "st_ino {ino} shared by {names:?}, a directory among them"
            ));
            continue;
        }
        if group.iter().any(|(_, e)| e.kind != first.kind) {
            bad.push(format!(
                "st_ino {ino} shared by {names:?} of different kinds"
            ));
        }
        if group.iter().any(|(_, e)| e.digest != first.digest) {
            bad.push(format!(
                "st_ino {ino} shared by {names:?} whose contents differ ({:x?})",
                group.iter().map(|(_, e)| e.digest).collect::<Vec<_>>()
            ));
        }
        if group.iter().any(|(_, e)| e.nlink != first.nlink) {
            bad.push(format!(
                "{NLINK_TAG}st_ino {ino} shared by {names:?} with different link counts {:?}",
                group.iter().map(|(_, e)| e.nlink).collect::<Vec<_>>()
            ));
        }
        if (group.len() as u64) > first.nlink {
            bad.push(format!(
                "{NLINK_TAG}st_ino {ino} shared by {} names {names:?} but nlink is {}",
                group.len(),
                first.nlink
            ));
        }
    }
    bad
}

/// Marks the violations about link counts only (see [`assert_ino_rules_but_nlink`]).
pub const NLINK_TAG: &str = "[nlink] ";

/// Like [`assert_ino_rules`], but link-count mismatches among names sharing an `st_ino` are
/// returned instead of failing (for `index=off`, where DIFFERENCES.md lets every name of a
/// lower hard link show the copy made through one of them).
pub fn assert_ino_rules_but_nlink(root: &Path, what: &str) -> Vec<String> {
    let walk = ino_walk(root);
    let (nlink, bad): (Vec<String>, Vec<String>) = ino_violations(&walk)
        .into_iter()
        .partition(|v| v.starts_with(NLINK_TAG));
    assert!(
        bad.is_empty(),
        "{what}: inode numbers break the rules:\n  {}",
        bad.join("\n  ")
    );
    nlink
}

/// Walks `root` and panics listing every inode-number violation. Returns the walk.
pub fn assert_ino_rules(root: &Path, what: &str) -> BTreeMap<String, InoEntry> {
    let walk = ino_walk(root);
    let bad = ino_violations(&walk);
    assert!(
        bad.is_empty(),
        "{what}: inode numbers break the rules:\n  {}",
        bad.join("\n  ")
    );
    walk
}

/// The paths of a walk partitioned by `st_ino` (each group sorted), so that two mounts whose
/// numbers differ can still be compared on which names are one object.
pub fn ino_groups(walk: &BTreeMap<String, InoEntry>) -> BTreeSet<Vec<String>> {
    let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, e) in walk {
        by.entry(e.ino).or_default().push(p.clone());
    }
    by.into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

/// Paths whose `st_ino` differs between two walks (only paths present in both), one line each.
pub fn ino_changes(
    before: &BTreeMap<String, InoEntry>,
    after: &BTreeMap<String, InoEntry>,
) -> Vec<String> {
    before
        .iter()
        .filter_map(|(p, b)| {
            let a = after.get(p)?;
            (a.ino != b.ino).then(|| format!("/{p}: st_ino {} became {}", b.ino, a.ino))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Sparse 1 GiB files with checkable content
// ---------------------------------------------------------------------------------------------

pub const GIB: u64 = 1 << 30;

/// A sparse file: `size` bytes, zero except for `regions` of pattern data.
#[derive(Clone, Debug)]
pub struct Sparse {
    pub size: u64,
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl Sparse {
    /// 1 GiB with 1 MiB of distinct data at 0, 256 MiB, 512 MiB + 4 KiB + 123 and at the very end
    /// (4 MiB of data in all); `salt` makes files of one test differ.
    pub fn gib(salt: u64) -> Sparse {
        let offs = [0, 256 * MIB, 512 * MIB + 4096 + 123, GIB - MIB];
        let regions = offs
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let mut buf = vec![0u8; MIB as usize];
                pattern_chunk(salt * 16 + i as u64, &mut buf);
                (o, buf)
            })
            .collect();
        Sparse { size: GIB, regions }
    }

    /// Bytes of data the regions hold.
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// Creates `p` with this content and makes it durable.
    pub fn write(&self, p: &Path) {
        let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        f.set_len(self.size).expect("set_len");
        for (off, data) in &self.regions {
            f.write_all_at(data, *off).expect("write region");
        }
        f.sync_all().expect("fsync");
    }

    /// What bytes `[off, off + len)` of the file hold, followed by `appended` at `size`.
    pub fn expected(&self, off: u64, len: usize, appended: &[u8]) -> Vec<u8> {
        let total = self.size + appended.len() as u64;
        let end = (off + len as u64).min(total);
        let mut v = vec![0u8; end.saturating_sub(off) as usize];
        for (ro, data) in &self.regions {
            let (rs, re) = (*ro, *ro + data.len() as u64);
            let (s, e) = (rs.max(off), re.min(end));
            if s < e {
                v[(s - off) as usize..(e - off) as usize]
                    .copy_from_slice(&data[(s - rs) as usize..(e - rs) as usize]);
            }
        }
        for (i, b) in appended.iter().enumerate() {
            let at = self.size + i as u64;
            if at >= off && at < end {
                v[(at - off) as usize] = *b;
            }
        }
        v
    }

    /// Offsets to sample: inside, across the edges of and between the regions, and the end.
    pub fn sample_offsets(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for (o, d) in &self.regions {
            let l = d.len() as u64;
            v.extend([o.saturating_sub(2048), *o, o + l / 2, o + l - 2048]);
        }
        v.extend([100 * MIB, 700 * MIB + 17, self.size - 3000]);
        v.sort();
        v.dedup();
        v
    }

    /// Checks the size of the file at `p` (`size` plus `appended`) and its content at every
    /// sample offset and at its end.
    pub fn check(&self, p: &Path, appended: &[u8]) -> Result<(), String> {
        let f = fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("fstat {}: {e}", p.display()))?
            .len();
        let total = self.size + appended.len() as u64;
        if len != total {
            return Err(format!("{}: size {len}, expected {total}", p.display()));
        }
        let mut offs = self.sample_offsets();
        offs.push(total.saturating_sub(8192));
        for off in offs {
            let want = self.expected(off, 8192, appended);
            let mut got = vec![0u8; want.len()];
            let mut done = 0;
            while done < got.len() {
                let n = f
                    .read_at(&mut got[done..], off + done as u64)
                    .map_err(|e| format!("read {} at {off}: {e}", p.display()))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            if done != want.len() || got != want {
                let at = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(done);
                return Err(format!(
                    "{}: content differs at offset {} (sample at {off}, read {done} of {} bytes)",
                    p.display(),
                    off + at as u64,
                    want.len()
                ));
            }
        }
        Ok(())
    }
}

/// What the tests compare of a large file between two mounts: metadata, user xattrs, and the
/// content at the sample offsets of `model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileView {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub samples: Vec<(u64, u64)>,
}

pub fn file_view(p: &Path, model: &Sparse) -> FileView {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let mut xattrs = BTreeMap::new();
    for n in list_xattrs(p).unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display())) {
        let v = get_xattr(p, &n).unwrap_or_else(|e| panic!("getxattr {n} {}: {e}", p.display()));
        xattrs.insert(n, v);
    }
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut samples = Vec::new();
    let mut offs = model.sample_offsets();
    offs.push(md.size().saturating_sub(4096));
    for off in offs {
        let mut buf = vec![0u8; 4096];
        let n = f
            .read_at(&mut buf, off)
            .unwrap_or_else(|e| panic!("read {} at {off}: {e}", p.display()));
        let mut h = std::hash::DefaultHasher::new();
        buf[..n].hash(&mut h);
        samples.push((off, h.finish()));
    }
    FileView {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs,
        samples,
    }
}

/// `st_blocks` of a real file, in bytes.
pub fn allocated(p: &Path) -> u64 {
    lmeta(p).blocks() * 512
}

/// Whether the real file `p` carries a metadata-only copy marker.
pub fn has_metacopy(p: &Path) -> bool {
    get_xattr(p, "trusted.overlay.metacopy").is_ok()
        || get_xattr(p, "user.overlay.metacopy").is_ok()
}

// ---------------------------------------------------------------------------------------------
// Steps compared with the kernel, remounts and cross-mounts
// ---------------------------------------------------------------------------------------------

pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

pub fn lstat_errno(p: &Path) -> Option<String> {
    fs::symlink_metadata(p).err().map(|e| errno_str(&e))
}

pub type StepFn = fn(&Path) -> io::Result<String>;

/// Kind of every path of an upper layer.
pub fn upper_shape(upper: &Path) -> Vec<String> {
    all_paths(upper)
        .into_iter()
        .map(|p| {
            let full = upper.join(&p);
            let kind = if is_whiteout(&full) {
                "whiteout"
            } else if lmeta(&full).is_dir() {
                "dir"
            } else {
                "file"
            };
            format!("{p}:{kind}")
        })
        .collect()
}

/// Runs step `i` on the kernel mount of `kl` and then on the ufs mount of `ul` (identical
/// layers) and returns every disagreement: outcomes (with each other and with `want`), merged
/// trees (times set after `since` blurred), which names share an `st_ino`, the inode-number
/// rules on ufs, and with `upper_too` the upper layers' shapes and redirect records.
#[allow(clippy::too_many_arguments)]
pub fn lockstep(
    i: usize,
    name: &str,
    want: &str,
    run: StepFn,
    ul: &Layout,
    kl: &Layout,
    since: i64,
    upper_too: bool,
) -> Vec<String> {
    let mut bad = Vec::new();
    let kr = outcome(&run(&kl.mnt));
    let ur = outcome(&run(&ul.mnt));
    if kr != ur {
        bad.push(format!("step {i} `{name}`: kernel {kr:?}, ufs {ur:?}"));
    }
    if ur != want {
        bad.push(format!("step {i} `{name}`: ufs {ur:?}, expected {want:?}"));
    }
    let ks = blur_recent(&snapshot(&kl.mnt), since);
    let us = snapshot(&ul.mnt);
    assert_consistent(&us, &format!("ufs after step {i} `{name}`"));
    if let Err(d) = compare("ufs", &blur_recent(&us, since), "kernel", &ks) {
        bad.push(format!("after step {i} `{name}`: {d}"));
    }
    let uw = ino_walk(&ul.mnt);
    let viol = ino_violations(&uw);
    if !viol.is_empty() {
        bad.push(format!(
            "after step {i} `{name}`: ufs inode numbers: {viol:?}"
        ));
    }
    let (ug, kg) = (ino_groups(&uw), ino_groups(&ino_walk(&kl.mnt)));
    if ug != kg {
        let only_u: Vec<_> = ug.difference(&kg).collect();
        let only_k: Vec<_> = kg.difference(&ug).collect();
        bad.push(format!(
            "after step {i} `{name}`: names sharing an st_ino: only ufs {only_u:?}, only kernel \
             {only_k:?}"
        ));
    }
    if upper_too {
        let (ur, kr) = (redirects(&ul.upper), redirects(&kl.upper));
        if ur != kr {
            bad.push(format!(
                "after step {i} `{name}`: redirect records in the upper: ufs {ur:?}, kernel {kr:?}"
            ));
        }
        let (us, ks) = (upper_shape(&ul.upper), upper_shape(&kl.upper));
        if us != ks {
            bad.push(format!(
                "after step {i} `{name}`: upper layers differ: ufs {us:?}, kernel {ks:?}"
            ));
        }
    }
    bad
}

/// Unmounts `m`, and checks that ufs mounted again, and the kernel (`kernel_features`, with
/// workdir `kernel_work`, or a fresh one `wk-NAME`) mounted on ufs's layers, show what `m`
/// showed, with the same names sharing an `st_ino`. Returns a new ufs mount.
pub fn cross_check(
    lay: &Layout,
    mut m: UfsMount,
    extra: &str,
    kernel_features: &str,
    kernel_work: Option<&Path>,
    name: &str,
) -> UfsMount {
    let shown = snapshot(&lay.mnt);
    let walk = assert_ino_rules(&lay.mnt, &format!("ufs before unmount ({name})"));
    unmount_and_wait(&mut m);
    drop(m);
    let mut again = lay.mount_ufs(extra);
    let s = snapshot(&lay.mnt);
    assert_consistent(&s, "ufs after remount");
    assert_same_tree(
        "remounted",
        &s,
        "before",
        &shown,
        &format!("{name}: ufs remounted"),
    );
    let w = assert_ino_rules(&lay.mnt, &format!("ufs remounted ({name})"));
    let changed = ino_changes(&walk, &w);
    assert!(
        changed.is_empty(),
        "{name}: inode numbers changed by a remount: {changed:?}"
    );
    unmount_and_wait(&mut again);
    drop(again);
    let work = match kernel_work {
        Some(w) => w.to_path_buf(),
        None => lay.fresh_work(name),
    };
    let k = lay.mount_kernel(&work, kernel_features);
    let kv = try_snapshot(&lay.mnt).unwrap_or_else(|e| panic!("{name}: walking the kernel: {e}"));
    let kw = ino_walk(&lay.mnt);
    drop(k);
    assert_eq!(
        ino_groups(&kw),
        ino_groups(&walk),
        "{name}: names sharing an st_ino, kernel on ufs's layers vs ufs"
    );
    assert_same_tree(
        "kernel",
        &kv,
        "ufs",
        &shown,
        &format!("{name}: kernel ({kernel_features}) on ufs's upper with a fresh workdir"),
    );
    lay.mount_ufs(extra)
}

pub fn assert_same_numbers(
    before: &std::collections::BTreeMap<String, InoEntry>,
    after: &std::collections::BTreeMap<String, InoEntry>,
    what: &str,
) {
    let changed = ino_changes(before, after);
    assert!(
        changed.is_empty(),
        "{what}: inode numbers changed:\n  {}",
        changed.join("\n  ")
    );
}
