//! Whole-tree snapshots of a mount and their comparison.
//!
//! A snapshot records, for every path reachable from the root: type, permission bits, owner,
//! size and link count (non-directories), content hash, symlink target, device number, visible
//! xattrs, the directory listing with each name's `d_type`, and the modification time when it
//! was set explicitly (see [`EXPLICIT_TIME_LIMIT`]). Left out on purpose, because the kernel
//! and ufs legitimately differ there: inode numbers themselves (only which names share one is
//! compared), ctime and atime, and the size, link count and times of directories.
//!
//! Self-consistency problems of one mount are recorded as text and compared too: a name listed
//! by readdir that `lstat` cannot find, a name `lstat` finds that readdir does not list, a
//! `d_type` that disagrees with `lstat`, a name listed twice. A `d_ino` that differs from the
//! `st_ino` of `lstat` is recorded apart ([`Tree::ino_problems`]) and only held against ufs:
//! SEMANTICS.md ("readdir") requires ufs to agree with itself, but the kernel does not always
//! (a merged directory listed before its first lookup in a fresh mount, or after some copy-ups,
//! can show the upper inode number in `d_ino` and the origin's in `st_ino`). A lower whose
//! filesystem's `readdir` lies (`generate::Case::dino`) is given to ufs only: ufs must still
//! agree with itself, while the kernel, over such a layer, lists a directory of one lower as
//! the layer does, lying `d_ino` included.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use crate::ops::{EXPLICIT_TIME_LIMIT, hash_bytes, kind_of_ft, kind_of_mode, xattr_map};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub rdev: Option<u64>,
    pub mtime: Option<(i64, i64)>,
    pub hash: Option<u64>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, String>,
    /// Directories: name -> `d_type`.
    pub listing: Option<BTreeMap<String, &'static str>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
    /// Groups (of two or more) of non-directory paths that share one `st_ino`.
    pub links: BTreeSet<Vec<String>>,
    pub problems: BTreeSet<String>,
    /// Names whose `d_ino` differs from their `st_ino` (not compared between mounts).
    pub ino_problems: BTreeSet<String>,
}

/// Names probed in every directory even when readdir does not list them.
pub fn probe_names() -> Vec<String> {
    let mut v: Vec<String> = crate::generate::ALL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(
        crate::generate::ALL_NAMES
            .iter()
            .map(|s| format!(".wh.{s}")),
    );
    v.push(".wh..wh..opq".into());
    v
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Snapshots the mount at `root`. Paths are walked top-down through directories only, so no
/// symlink is ever followed.
pub fn snapshot(root: &Path) -> Result<Tree, String> {
    let mut t = Tree::default();
    let mut inos: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let probes = probe_names();
    walk(root, "", &mut t, &mut inos, &probes)?;
    t.links = inos
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Ok(t)
}

fn hash_file(p: &Path) -> io::Result<u64> {
    let mut f = fs::File::open(p)?;
    let mut b = Vec::new();
    f.read_to_end(&mut b)?;
    Ok(hash_bytes(&b))
}

fn walk(
    root: &Path,
    rel: &str,
    t: &mut Tree,
    inos: &mut BTreeMap<u64, Vec<String>>,
    probes: &[String],
) -> Result<(), String> {
    let p = root.join(rel);
    let err = |what: &str, e: io::Error| format!("{what} /{rel}: {e}");
    let md = fs::symlink_metadata(&p).map_err(|e| err("lstat", e))?;
    let kind = kind_of_mode(md.mode());
    let dir = kind == "dir";
    let xattrs = xattr_map(&p).map_err(|e| err("xattrs", e))?;
    let mut e = Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!dir).then_some(md.size()),
        nlink: (!dir).then_some(md.nlink()),
        rdev: matches!(kind, "chardev" | "blockdev").then_some(md.rdev()),
        mtime: (!dir && md.mtime() < EXPLICIT_TIME_LIMIT).then_some((md.mtime(), md.mtime_nsec())),
        hash: None,
        target: None,
        xattrs,
        listing: None,
    };
    if !dir {
        inos.entry(md.ino()).or_default().push(rel.to_string());
    }
    match kind {
        "file" => e.hash = Some(hash_file(&p).map_err(|x| err("read", x))?),
        "symlink" => {
            e.target = Some(
                fs::read_link(&p)
                    .map_err(|x| err("readlink", x))?
                    .to_string_lossy()
                    .into_owned(),
            )
        }
        _ => {}
    }
    let mut children = Vec::new();
    if dir {
        let mut listing = BTreeMap::new();
        for de in fs::read_dir(&p).map_err(|x| err("opendir", x))? {
            let de = de.map_err(|x| err("readdir", x))?;
            let name = de.file_name().to_string_lossy().into_owned();
            let crel = join(rel, &name);
            let d_type = de.file_type().map(kind_of_ft).unwrap_or("unknown");
            if listing.insert(name.clone(), d_type).is_some() {
                t.problems.insert(format!("/{crel}: listed twice"));
                continue;
            }
            match fs::symlink_metadata(root.join(&crel)) {
                Err(x) => {
                    t.problems
                        .insert(format!("/{crel}: listed ({d_type}) but lstat fails: {x}"));
                }
                Ok(cmd) => {
                    if kind_of_mode(cmd.mode()) != d_type {
                        t.problems.insert(format!(
                            "/{crel}: d_type {d_type} but lstat says {}",
                            kind_of_mode(cmd.mode())
                        ));
                    }
                    if cmd.ino() != de.ino() {
                        t.ino_problems
                            .insert(format!("/{crel}: d_ino differs from st_ino"));
                    }
                    children.push(crel);
                }
            }
        }
        for probe in probes {
            if !listing.contains_key(probe) {
                let crel = join(rel, probe);
                if fs::symlink_metadata(root.join(&crel)).is_ok() {
                    t.problems
                        .insert(format!("/{crel}: found by lookup but not listed"));
                }
            }
        }
        e.listing = Some(listing);
    }
    t.entries.insert(rel.to_string(), e);
    for c in children {
        walk(root, &c, t, inos, probes)?;
    }
    Ok(())
}

fn describe(e: &Entry) -> String {
    let mut s = format!("{} {:04o} {}:{}", e.kind, e.perm, e.uid, e.gid);
    if let Some(sz) = e.size {
        s.push_str(&format!(" size={sz}"));
    }
    if let Some(t) = &e.target {
        s.push_str(&format!(" -> {t:?}"));
    }
    s
}

/// Every difference between two trees, one line each.
pub fn diff(a_label: &str, a: &Tree, b_label: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (p, ea) in &a.entries {
        let Some(eb) = b.entries.get(p) else {
            out.push(format!("/{p}: only in {a_label} ({})", describe(ea)));
            continue;
        };
        if ea == eb {
            continue;
        }
        let mut d = Vec::new();
        macro_rules! field {
            ($f:ident) => {
                if ea.$f != eb.$f {
                    d.push(format!(
                        "{} {a_label}={:?} {b_label}={:?}",
                        stringify!($f),
                        ea.$f,
                        eb.$f
                    ));
                }
            };
        }
        field!(kind);
        if ea.perm != eb.perm {
            d.push(format!(
                "perm {a_label}={:04o} {b_label}={:04o}",
                ea.perm, eb.perm
            ));
        }
        field!(uid);
        field!(gid);
        field!(size);
        field!(nlink);
        field!(rdev);
        field!(mtime);
        field!(hash);
        field!(target);
        field!(xattrs);
        if ea.listing != eb.listing {
            let (la, lb) = (
                ea.listing.clone().unwrap_or_default(),
                eb.listing.clone().unwrap_or_default(),
            );
            let only_a: Vec<_> = la.iter().filter(|(k, v)| lb.get(*k) != Some(v)).collect();
            let only_b: Vec<_> = lb.iter().filter(|(k, v)| la.get(*k) != Some(v)).collect();
            d.push(format!(
                "listing only in {a_label}: {only_a:?}, only in {b_label}: {only_b:?}"
            ));
        }
        out.push(format!("/{p}: {}", d.join("; ")));
    }
    for (p, eb) in &b.entries {
        if !a.entries.contains_key(p) {
            out.push(format!("/{p}: only in {b_label} ({})", describe(eb)));
        }
    }
    for g in a.links.difference(&b.links) {
        out.push(format!("hard-link group only in {a_label}: {g:?}"));
    }
    for g in b.links.difference(&a.links) {
        out.push(format!("hard-link group only in {b_label}: {g:?}"));
    }
    for p in a.problems.difference(&b.problems) {
        out.push(format!("{a_label} only: {p}"));
    }
    for p in b.problems.difference(&a.problems) {
        out.push(format!("{b_label} only: {p}"));
    }
    out
}
