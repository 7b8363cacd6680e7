//! The top-down walk that resolves one name in a merged directory.
//!
//! Rules (SEMANTICS.md, "Lookup"; kernel: `ovl_lookup()` in `fs/overlayfs/namei.c`): walk the
//! parent's real directories from the top. In the first layer that has the name, a whiteout means
//! "no such entry" and a non-directory is the answer. A directory starts a merge that takes the
//! same-named directories of the layers below until one is opaque (kept, then stop) or a layer
//! has a non-directory or a whiteout there (stop, not kept).
//!
//! Data-only layers (`lowerdir=...::DATA`) take no part in this walk: they are searched only for
//! the data of a metadata-only copy of a regular lower layer whose last redirect is absolute,
//! when the regular layers below it do not have that data (`find_in_data_layers`).
//!
//! Whiteouts are 0/0 character devices, or `.wh.NAME` files (OCI layers) in a layer that has no
//! `NAME` itself. Opaque markers are `trusted.overlay.opaque=y`, `user.overlay.opaque=y`, or a
//! `.wh..wh..opq` entry inside the directory.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{ENOENT, EPERM, Result};
use crate::inode::RealEntry;
use crate::kind::Kind;
use crate::layer::{LayerKind, LayerStack};
use crate::records::{is_metacopy, redirect};
use crate::redirect::{Target, redirect_target};
use crate::sys;
use crate::whiteout::{self, exists, is_hidden_name, is_opaque, whiteout_name};

/// What a name resolves to.
#[derive(Debug)]
pub struct Resolved {
    pub kind: Kind,
    /// `stat` of the winning (top-most) real entry.
    pub stat: libc::stat,
    /// Real entries, top-down; see [`crate::inode::Reals`].
    pub reals: Vec<RealEntry>,
    /// For a metadata-only upper copy: the lower entry with the data.
    pub lower_data: Option<RealEntry>,
}

/// The outcome of looking for the target in one layer.
#[derive(Debug)]
enum Probe {
    Missing,
    /// Not in this layer, and no layer below may be searched (an opaque directory on the
    /// redirect path).
    MissingStop,
    Whiteout,
    /// Found: an fd on the entry, the real directory holding it, and its name there.
    Found(OwnedFd, Arc<OwnedFd>, CString),
    /// Found, and no layer below may be searched (an opaque directory on the redirect path).
    FoundStop(OwnedFd, Arc<OwnedFd>, CString),
}

fn probe_name(dir: &Arc<OwnedFd>, name: &CStr, whiteout: Option<&CString>) -> Result<Probe> {
    match sys::open_path(dir.as_fd(), name) {
        Ok(fd) => Ok(Probe::Found(fd, dir.clone(), name.to_owned())),
        Err(e) if e.errno() == libc::ENOENT || e.errno() == libc::ENOTDIR => {
            if let Some(wh) = whiteout
                && exists(dir.as_fd(), wh)?
            {
                return Ok(Probe::Whiteout);
            }
            Ok(Probe::Missing)
        }
        Err(e) => Err(e),
    }
}

/// Looks for `target` in the layer `layer` whose directory (or root, for a path) is `dir`.
///
/// A path is walked as the kernel walks a redirect path (`ovl_lookup_layer`): a whiteout or a
/// non-directory on the way ends the search in every layer; an opaque directory on the way ends
/// it after this layer; and a directory on the way that was itself renamed in this layer (it has
/// a redirect record) sends the search in the layers below to where it came from: the second
/// value is then the path to look for there.
fn probe(
    layers: &LayerStack,
    layer: usize,
    dir: &Arc<OwnedFd>,
    target: &Target,
) -> Result<(Probe, Option<Target>)> {
    let ns = layers.ns();
    let comps = match target {
        Target::Name { name, whiteout } => {
            return Ok((probe_name(dir, name, whiteout.as_ref())?, None));
        }
        Target::Path(comps) => comps,
    };
    let Some((last, path)) = comps.split_last() else {
        return Ok((Probe::Missing, None));
    };
    let mut cur: Arc<OwnedFd> = dir.clone();
    let mut stop = false;
    // The path so far as the layers below know it, and whether a redirect changed it.
    let mut below: Vec<CString> = Vec::with_capacity(comps.len());
    let mut moved = false;
    let rewritten = |below: &[CString], moved: bool, rest: &[CString]| {
        moved.then(|| Target::Path(below.iter().chain(rest).cloned().collect()))
    };
    for (i, comp) in path.iter().enumerate() {
        let wh = whiteout_name(OsStr::from_bytes(comp.to_bytes()));
        let next = match probe_name(&cur, comp, wh.as_ref())? {
            Probe::Found(fd, ..) => fd,
            Probe::Whiteout => return Ok((Probe::Whiteout, None)),
            _ => {
                let probe = if stop {
                    Probe::MissingStop
                } else {
                    Probe::Missing
                };
                return Ok((probe, rewritten(&below, moved, &comps[i..])));
            }
        };
        let st = sys::fstat(next.as_fd())?;
        if sys::is_whiteout(&st) || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok((Probe::Whiteout, None));
        }
        below.push(comp.clone());
        // As in the kernel's `ovl_lookup_single`: an opaque directory stops the search below
        // (its redirect, if any, is not read); an absolute redirect met after an opaque one
        // starts it again.
        if is_opaque(next.as_fd(), ns)? {
            stop = true;
        } else if !layers.is_last(layer)
            && let Some(r) = redirect(next.as_fd(), ns)?
        {
            let name = OsStr::from_bytes(comp.to_bytes());
            let current = Target::Path(below.clone());
            if let Target::Path(p) = redirect_target(layers, layer, &r, name, &current)? {
                below = p;
                moved = true;
                if r.first() == Some(&b'/') {
                    stop = false;
                }
            }
        }
        cur = Arc::new(next);
    }
    let rest = std::slice::from_ref(last);
    let wh = whiteout_name(OsStr::from_bytes(last.to_bytes()));
    let probe = match probe_name(&cur, last, wh.as_ref())? {
        Probe::Found(fd, d, n) if stop => Probe::FoundStop(fd, d, n),
        Probe::Missing if stop => Probe::MissingStop,
        other => other,
    };
    Ok((probe, rewritten(&below, moved, rest)))
}

/// Whether the regular file `fd` of layer `layer` is a metadata-only copy whose data lies
/// below: never in the bottom merged layer when there are no data-only layers (nothing is below
/// it). A marker the mount does not follow (`user.overlay.*` records without `metacopy=on`) is
/// refused, as the kernel refuses it, except in the bottom merged layer with an absolute
/// redirect: the kernel looks that one up in the data-only layers whatever `metacopy=` says.
fn metacopy_in(layers: &LayerStack, layer: usize, fd: BorrowedFd<'_>) -> Result<bool> {
    if !layers.may_have_data_below(layer) || !is_metacopy(fd, layers.ns())? {
        return Ok(false);
    }
    if !layers.follows_metacopy() {
        if layers.is_last(layer)
            && redirect(fd, layers.ns())?.is_some_and(|r| r.first() == Some(&b'/'))
        {
            return Ok(true);
        }
        log::warn!(
            "layer {}: refusing to follow a metadata-only copy (metacopy is off)",
            layers.get(layer).path.display()
        );
        return Err(EPERM);
    }
    Ok(true)
}

/// Follows the redirect record `r` of an entry of layer `layer` (named `name`): the search goes
/// on for what it names, from the roots of the layers below for an absolute record (then the
/// search restarts there: returns true), else among the same candidates.
fn follow(
    layers: &LayerStack,
    layer: usize,
    r: &[u8],
    name: &OsStr,
    target: &mut Target,
    candidates: &mut Vec<(usize, Arc<OwnedFd>)>,
    i: &mut usize,
) -> Result<bool> {
    *target = redirect_target(layers, layer, r, name, target)?;
    if r.first() != Some(&b'/') {
        return Ok(false);
    }
    *candidates = roots_below(layers, layer);
    *i = 0;
    Ok(true)
}

/// The candidates an absolute redirect found in layer `layer` searches: the roots of every
/// layer below it.
fn roots_below(layers: &LayerStack, layer: usize) -> Vec<(usize, Arc<OwnedFd>)> {
    (layer + 1..layers.len())
        .map(|l| (l, layers.get(l).root.clone()))
        .collect()
}

/// How the search for a metadata-only copy's data stands, for the data-only layers: whether a
/// metadata-only copy of a regular lower layer was met, and whether the last one met had an
/// absolute redirect (kernel: `ctr` and `d.absolute_redirect` in `ovl_lookup()`).
#[derive(Clone, Copy, Debug)]
struct DataSearch {
    lower_metacopy: bool,
    absolute: bool,
}

/// The data of a metadata-only copy: the first regular file standing at `target` in
/// `candidates`, stopping at a whiteout. A metadata-only copy found on the way (a layer that
/// was an upper once, then moved down the stack) passes the search on, to where its own
/// redirect record says or under the same name, as the kernel's lookup does. When the merged
/// layers end the search without data, a metadata-only copy of a lower layer whose redirect is
/// absolute finds it in the data-only layers, as the kernel's lazy lookup of the data does.
fn find_lower_data(
    layers: &LayerStack,
    candidates: Vec<(usize, Arc<OwnedFd>)>,
    mut target: Target,
    name: &OsStr,
    mut search: DataSearch,
) -> Result<Option<RealEntry>> {
    let found = find_merged_data(layers, candidates, &mut target, name, &mut search)?;
    match (found, &target) {
        (Some(data), _) => Ok(Some(data)),
        (None, Target::Path(comps))
            if search.lower_metacopy && search.absolute && layers.has_data_layers() =>
        {
            let data = find_in_data_layers(layers, comps)?;
            if data.is_none() {
                log::warn!("data of {name:?}: {target:?} is in no data-only layer");
                // The kernel's lazy lookup answers the open of such a file with `ENOENT`.
                return Err(ENOENT);
            }
            Ok(data)
        }
        (None, _) => Ok(None),
    }
}

/// [`find_lower_data`] among the merged layers `candidates`.
fn find_merged_data(
    layers: &LayerStack,
    mut candidates: Vec<(usize, Arc<OwnedFd>)>,
    target: &mut Target,
    name: &OsStr,
    search: &mut DataSearch,
) -> Result<Option<RealEntry>> {
    let mut i = 0;
    while i < candidates.len() {
        let (layer, dir) = candidates[i].clone();
        i += 1;
        let (found, moved) = probe(layers, layer, &dir, target)?;
        log::trace!("data of {name:?}: {target:?} in layer {layer}: {found:?}, then {moved:?}");
        if let Some(t) = moved {
            *target = t;
        }
        let (fd, in_dir, real_name, stop) = match found {
            Probe::Missing => continue,
            Probe::MissingStop | Probe::Whiteout => return Ok(None),
            Probe::Found(fd, d, n) => (fd, d, n, false),
            Probe::FoundStop(fd, d, n) => (fd, d, n, true),
        };
        let st = sys::fstat(fd.as_fd())?;
        if (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
            search.absolute = false;
            return Ok(None);
        }
        if !metacopy_in(layers, layer, fd.as_fd())? {
            return Ok(Some(RealEntry::named(layer, in_dir, &real_name)));
        }
        search.lower_metacopy |= layers.get(layer).kind == LayerKind::Lower;
        let r = redirect(fd.as_fd(), layers.ns())?;
        search.absolute = r.as_ref().is_some_and(|r| r.first() == Some(&b'/'));
        if let Some(r) = r {
            if layers.is_last(layer) {
                // Only the data-only layers are below: the record names a path in them, whether
                // or not the mount follows redirects (as in the kernel).
                *target = data_target(layers, layer, &r, name, target)?;
                return Ok(None);
            }
            if follow(layers, layer, &r, name, target, &mut candidates, &mut i)? {
                continue;
            }
        }
        if stop {
            return Ok(None);
        }
    }
    Ok(None)
}

/// The target of the redirect record `r` of a metadata-only copy in the bottom merged layer
/// `layer`: an absolute one is the path searched in the data-only layers.
fn data_target(
    layers: &LayerStack,
    layer: usize,
    r: &[u8],
    name: &OsStr,
    current: &Target,
) -> Result<Target> {
    if r.first() != Some(&b'/') {
        return redirect_target(layers, layer, r, name, current);
    }
    Target::redirect(r).inspect_err(|_| {
        log::warn!(
            "layer {}: invalid redirect {:?} on {name:?}",
            layers.get(layer).path.display(),
            String::from_utf8_lossy(r)
        )
    })
}

/// The data of a metadata-only copy in the data-only layers: the first regular file at the
/// absolute path `comps` (kernel: `ovl_lookup_data_layers`). Each layer is walked from its root
/// one name at a time, following no symlink and crossing no mount (the kernel's
/// `LOOKUP_BENEATH | LOOKUP_NO_SYMLINKS | LOOKUP_NO_XDEV`); a layer where the walk fails is
/// skipped.
fn find_in_data_layers(layers: &LayerStack, comps: &[CString]) -> Result<Option<RealEntry>> {
    let Some((last, path)) = comps.split_last() else {
        return Ok(None);
    };
    let not_here = |e: &crate::error::Error| {
        matches!(
            e.errno(),
            libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EACCES | libc::ENAMETOOLONG
        )
    };
    'layers: for layer in layers.data_layers() {
        let l = layers.get(layer);
        let mut cur = l.root.clone();
        for comp in path {
            let fd = match sys::open_path(cur.as_fd(), comp) {
                Ok(fd) => fd,
                Err(e) if not_here(&e) => continue 'layers,
                Err(e) => return Err(e),
            };
            let st = sys::fstat(fd.as_fd())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_dev != l.dev {
                continue 'layers;
            }
            cur = Arc::new(fd);
        }
        let fd = match sys::open_path(cur.as_fd(), last) {
            Ok(fd) => fd,
            Err(e) if not_here(&e) => continue,
            Err(e) => return Err(e),
        };
        let st = sys::fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_dev == l.dev {
            log::trace!("data in data-only layer {}", l.path.display());
            return Ok(Some(RealEntry::named(layer, cur, last)));
        }
    }
    Ok(None)
}

/// Resolves `name` among `parents` (the merged directory's real directories, top-down).
///
/// A directory with a redirect record (`overlay.redirect`, written when a directory with lower
/// parts is renamed) continues the merge in the lower layers at the recorded place instead of
/// its own name: a relative record names an entry of the parent's lower directories, an absolute
/// one a path from each lower layer's root (kernel: `ovl_lookup()` with `d.redirect`). Records
/// are read in every layer but the bottom one, so a layer that was the upper of an earlier mount
/// reads as it did then: a metadata-only copy in any layer takes its data from below it.
pub fn lookup(layers: &LayerStack, parents: &[RealEntry], name: &OsStr) -> Result<Resolved> {
    if is_hidden_name(name) {
        return Err(ENOENT);
    }
    let ns = layers.ns();
    let mut target = Target::name(name)?;
    let mut candidates: Vec<(usize, Arc<OwnedFd>)> = parents
        .iter()
        .map(|p| Ok((p.layer, p.dir_arc()?.clone())))
        .collect::<Result<_>>()?;
    let mut found: Option<Resolved> = None;
    let mut i = 0;
    while i < candidates.len() {
        let (layer, dir) = candidates[i].clone();
        i += 1;
        let (probed, moved) = probe(layers, layer, &dir, &target)?;
        if let Some(t) = moved {
            target = t;
        }
        let (fd, in_dir, real_name, stop_below) = match probed {
            Probe::Missing => continue,
            Probe::MissingStop | Probe::Whiteout => break,
            Probe::Found(fd, in_dir, real_name) => (fd, in_dir, real_name, false),
            Probe::FoundStop(fd, in_dir, real_name) => (fd, in_dir, real_name, true),
        };
        let st = sys::fstat(fd.as_fd())?;
        if sys::is_whiteout(&st) {
            break;
        }
        // The kernel reads its alternative whiteouts in lower layers only (`ovl_lookup_single`).
        if Some(layer) != layers.upper()
            && whiteout::is_xwhiteout(fd.as_fd(), &st, ns)?
            && whiteout::has_xwhiteouts(in_dir.as_fd(), ns)?
        {
            break;
        }
        let Some(kind) = Kind::from_mode(st.st_mode) else {
            return Err(crate::error::EIO);
        };
        if kind != Kind::Directory {
            if found.is_some() {
                // A non-directory below a directory ends the merge.
                break;
            }
            let entry = RealEntry::named(layer, in_dir, &real_name);
            if !(kind == Kind::Regular && metacopy_in(layers, layer, fd.as_fd())?) {
                return Ok(Resolved {
                    kind,
                    stat: st,
                    reals: vec![entry],
                    lower_data: None,
                });
            }
            let hit = FileHit {
                layer,
                fd,
                entry,
                stat: st,
                kind,
                stop_below,
            };
            return metadata_only_copy(layers, hit, name, target, &candidates[i..]);
        }
        let entry = RealEntry::new(layer, fd);
        let is_last_layer = layers.is_last(layer);
        let opaque = !is_last_layer && is_opaque(entry.dir_fd()?, ns)?;
        let redirect = if is_last_layer || opaque {
            None
        } else {
            redirect(entry.dir_fd()?, ns)?
        };
        match &mut found {
            None => {
                found = Some(Resolved {
                    kind,
                    stat: st,
                    reals: vec![entry],
                    lower_data: None,
                })
            }
            Some(merged) => merged.reals.push(entry),
        }
        if opaque || stop_below {
            break;
        }
        if let Some(r) = redirect {
            follow(
                layers,
                layer,
                &r,
                name,
                &mut target,
                &mut candidates,
                &mut i,
            )?;
        }
    }
    found.ok_or(ENOENT)
}

/// The top-most real entry of a name: a metadata-only copy.
struct FileHit {
    layer: usize,
    /// `O_PATH` fd on it.
    fd: OwnedFd,
    entry: RealEntry,
    stat: libc::stat,
    kind: Kind,
    /// No layer below may be searched (an opaque directory on the redirect path).
    stop_below: bool,
}

/// The object a metadata-only copy `hit` of `name` (looked up as `target`) is: itself, with its
/// data found in the layers below (`below`, the candidate directories still to search) or where
/// its redirect record says (the kernel records one when it renames such a file).
fn metadata_only_copy(
    layers: &LayerStack,
    hit: FileHit,
    name: &OsStr,
    target: Target,
    below: &[(usize, Arc<OwnedFd>)],
) -> Result<Resolved> {
    let FileHit {
        layer,
        fd,
        entry,
        stat,
        kind,
        stop_below,
    } = hit;
    let r = redirect(fd.as_fd(), layers.ns())?;
    let search = DataSearch {
        lower_metacopy: layers.get(layer).kind == LayerKind::Lower,
        absolute: r.as_ref().is_some_and(|r| r.first() == Some(&b'/')),
    };
    let lower_data = match r {
        Some(r) if layers.is_last(layer) => {
            let t = data_target(layers, layer, &r, name, &target)?;
            find_lower_data(layers, Vec::new(), t, name, search)?
        }
        Some(r) => {
            let t = redirect_target(layers, layer, &r, name, &target)?;
            let below = if search.absolute {
                roots_below(layers, layer)
            } else {
                below.to_vec()
            };
            find_lower_data(layers, below, t, name, search)?
        }
        None if stop_below => None,
        None => find_lower_data(layers, below.to_vec(), target, name, search)?,
    };
    let Some(data) = lower_data else {
        log::error!(
            "layer {}: metadata-only copy {name:?} has no lower data",
            layers.get(layer).path.display()
        );
        return Err(crate::error::EIO);
    };
    Ok(Resolved {
        kind,
        stat,
        reals: vec![entry],
        lower_data: Some(data),
    })
}
