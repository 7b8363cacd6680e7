//! `ufs diff`: the changes an upper layer makes to its lower layers, one per path, as
//! `podman diff` prints them (`A` added, `C` changed, `D` deleted). No kernel counterpart; the
//! records read are the kernel's and ufs's alike.
//!
//! The stack is read twice through the core, never mounted and never written: once as the
//! lowers alone (what was), once with the upper as the top lower (what is, the upper's "next
//! life" in which every record is followed). Walking what is:
//! - a name the lowers lack is added, and so is everything below it (a renamed directory's
//!   entries come from the lowers through its redirect, but at new paths);
//! - a name the upper holds and the lowers have is changed (data, metadata, or kind; a
//!   directory the upper holds, also when only something below it changed);
//! - a name only the lowers provide is unchanged, with everything below it;
//! - a name the lowers have that is gone in a directory the upper holds is deleted (a whiteout,
//!   an opaque directory, or the old name of a rename).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::kind::Kind;
use crate::options::Options;
use crate::overlay::Overlay;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The path in the union, absolute (`/etc/conf`).
    pub path: PathBuf,
    pub what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum What {
    Added,
    Changed,
    Deleted,
}

impl What {
    /// `podman diff`'s letter.
    pub fn letter(self) -> char {
        match self {
            What::Added => 'A',
            What::Changed => 'C',
            What::Deleted => 'D',
        }
    }
}

/// The changes `opts.upperdir` makes to `opts.lowerdirs`, sorted by path.
pub fn diff(opts: &Options) -> std::io::Result<Vec<Change>> {
    let upper = opts
        .upperdir
        .clone()
        .ok_or_else(|| std::io::Error::other("ufs diff needs upperdir="))?;
    let before = Options {
        lowerdirs: opts.lowerdirs.clone(),
        datadirs: opts.datadirs.clone(),
        userxattr: opts.userxattr,
        ..Options::default()
    };
    let mut now_layers = vec![upper];
    now_layers.extend(opts.lowerdirs.iter().cloned());
    let now = Options {
        lowerdirs: now_layers,
        datadirs: opts.datadirs.clone(),
        userxattr: opts.userxattr,
        ..Options::default()
    };
    let was = Overlay::new(&before)?;
    let is = Overlay::new(&now)?;
    let mut out = Vec::new();
    walk(&was, &is, Path::new("/"), Some(1), 1, false, &mut out)
        .map_err(|e| std::io::Error::new(std::io::Error::from(e.clone()).kind(), e.to_string()))?;
    out.sort();
    Ok(out)
}

/// The entries of directory `node`: name → (kind, layer of the top-most real entry).
fn entries(ov: &Overlay, node: u64) -> Result<BTreeMap<OsString, (Kind, usize)>> {
    let fh = ov.opendir(node)?;
    let listed = ov.dir_entries(fh, 0).map(|h| {
        (2..h.len())
            .filter_map(|i| h.get(i))
            .map(|e| (e.name.to_os_string(), (e.kind, e.layer)))
            .collect()
    });
    ov.releasedir(fh);
    listed
}

/// The node of `name` in directory `dir` (one lookup counted: give it back with `forget`).
fn child(ov: &Overlay, dir: u64, name: &OsStr) -> Result<u64> {
    Ok(ov.lookup(dir, name)?.node)
}

/// Compares directory `is_dir` of the new stack with `was_dir` of the old one (`None`: it did
/// not exist), at `path`; `added`: everything here is new.
fn walk(
    was: &Overlay,
    is: &Overlay,
    path: &Path,
    was_dir: Option<u64>,
    is_dir: u64,
    added: bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    let now = entries(is, is_dir)?;
    let before = match was_dir {
        Some(d) if !added => entries(was, d)?,
        _ => BTreeMap::new(),
    };
    for (name, &(kind, layer)) in &now {
        let p = path.join(name);
        let old = before.get(name);
        let (what, descend) = match old {
            None => (Some(What::Added), true),
            // Only the lowers provide it: nothing below it changed either.
            Some(_) if layer != 0 => (None, false),
            Some(&(old_kind, _)) => (Some(What::Changed), old_kind == Kind::Directory),
        };
        if let Some(what) = what {
            out.push(Change {
                path: p.clone(),
                what,
            });
        }
        if kind == Kind::Directory && descend {
            let was_child = match (old, added) {
                (Some(_), false) => was_dir.map(|d| child(was, d, name)).transpose()?,
                _ => None,
            };
            let is_child = child(is, is_dir, name)?;
            let walked = walk(
                was,
                is,
                &p,
                was_child,
                is_child,
                added || old.is_none(),
                out,
            );
            is.forget(is_child, 1);
            if let Some(c) = was_child {
                was.forget(c, 1);
            }
            walked?;
        }
    }
    for name in before.keys().filter(|n| !now.contains_key(*n)) {
        out.push(Change {
            path: path.join(name),
            what: What::Deleted,
        });
    }
    Ok(())
}

/// The changes as `podman diff` prints them, one per line.
pub fn to_text(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| format!("{} {}\n", c.what.letter(), c.path.display()))
        .collect()
}

/// The changes as a JSON array of `{"change": "A", "path": "/x"}`.
pub fn to_json(changes: &[Change]) -> String {
    let list: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "change": c.what.letter().to_string(),
                "path": c.path.to_string_lossy(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}
