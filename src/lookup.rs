//! The top-down walk that resolves one name in a merged directory.
//!
//! Rules (SEMANTICS.md, "Lookup"; kernel: `ovl_lookup()` in `fs/overlayfs/namei.c`): walk the
//! parent's real directories from the top. In the first layer that has the name, a whiteout means
//! "no such entry" and a non-directory is the answer. A directory starts a merge that takes the
//! same-named directories of the layers below until one is opaque (kept, then stop) or a layer
//! has a non-directory or a whiteout there (stop, not kept).
//!
//! Whiteouts are 0/0 character devices, or `.wh.NAME` files (OCI layers) in a layer that has no
//! `NAME` itself. Opaque markers are `trusted.overlay.opaque=y`, `user.overlay.opaque=y`, or a
//! `.wh..wh..opq` entry inside the directory.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::error::{ENOENT, Result};
use crate::inode::{Kind, RealEntry};
use crate::layer::LayerStack;
use crate::sys;

/// Prefix of OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The OCI opaque marker's name.
pub const WH_OPAQUE: &CStr = c".wh..wh..opq";
pub const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.overlay.opaque"];
pub const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];
pub const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];

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

/// Whether a name is reserved for whiteouts and so never visible or creatable.
pub fn is_hidden_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// `.wh.NAME`, or `None` when that would be too long to exist.
pub fn whiteout_name(name: &OsStr) -> Option<CString> {
    if name.len() + WH_PREFIX.len() > 255 {
        return None;
    }
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    CString::new(v).ok()
}

/// Whether the real directory `dir` is opaque.
pub fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool> {
    for name in OPAQUE_XATTRS {
        match sys::getxattr(dir, name) {
            Ok(v) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::fstatat(dir, WH_OPAQUE) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Errors meaning "this xattr is not there" (or xattrs are not supported at all).
pub fn is_no_xattr(errno: i32) -> bool {
    errno == libc::ENODATA || errno == libc::EOPNOTSUPP || errno == libc::EPERM
}

/// Where the next lower layers are searched: a name in the parent's real directories, or (after
/// an absolute redirect) a path from each layer's root.
enum Target {
    Name {
        name: CString,
        whiteout: Option<CString>,
    },
    Path(Vec<CString>),
}

impl Target {
    fn name(name: &OsStr) -> Result<Target> {
        Ok(Target::Name {
            name: sys::cstr(name)?,
            whiteout: whiteout_name(name),
        })
    }

    /// The target a redirect record names.
    fn redirect(r: &[u8]) -> Result<Target> {
        if r.first() == Some(&b'/') {
            let comps = r
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .map(|c| CString::new(c).map_err(|_| crate::error::EIO))
                .collect::<Result<Vec<_>>>()?;
            Ok(Target::Path(comps))
        } else {
            Target::name(OsStr::from_bytes(r))
        }
    }
}

/// The outcome of looking for the target in one layer.
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

fn probe(dir: &Arc<OwnedFd>, target: &Target) -> Result<Probe> {
    match target {
        Target::Name { name, whiteout } => probe_name(dir, name, whiteout.as_ref()),
        Target::Path(comps) => {
            // Walked as the kernel walks a redirect path (`ovl_lookup_layer`): a whiteout or a
            // non-directory on the way ends the search in every layer; an opaque directory on
            // the way ends it after this layer.
            let Some((last, path)) = comps.split_last() else {
                return Ok(Probe::Missing);
            };
            let mut cur: Arc<OwnedFd> = dir.clone();
            let mut stop = false;
            for comp in path {
                let wh = whiteout_name(OsStr::from_bytes(comp.to_bytes()));
                let next = match probe_name(&cur, comp, wh.as_ref())? {
                    Probe::Found(fd, ..) => fd,
                    Probe::Whiteout => return Ok(Probe::Whiteout),
                    _ => {
                        return Ok(if stop {
                            Probe::MissingStop
                        } else {
                            Probe::Missing
                        });
                    }
                };
                let st = sys::fstat(next.as_fd())?;
                if sys::is_whiteout(&st) || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    return Ok(Probe::Whiteout);
                }
                stop = stop || is_opaque(next.as_fd())?;
                cur = Arc::new(next);
            }
            let wh = whiteout_name(OsStr::from_bytes(last.to_bytes()));
            Ok(match probe_name(&cur, last, wh.as_ref())? {
                Probe::Found(fd, d, n) if stop => Probe::FoundStop(fd, d, n),
                Probe::Missing if stop => Probe::MissingStop,
                other => other,
            })
        }
    }
}

/// Whether an upper regular file is a metadata-only copy. (Its block count cannot tell: a
/// filesystem may count a block of xattrs in it.)
pub fn is_metacopy(fd: BorrowedFd<'_>) -> Result<bool> {
    for name in METACOPY_XATTRS {
        match sys::getxattr(fd, name) {
            Ok(_) => return Ok(true),
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The first regular file standing at `target` in `candidates` (stopping at a whiteout).
fn find_lower_data(
    candidates: &[(usize, Arc<OwnedFd>)],
    target: &Target,
) -> Result<Option<RealEntry>> {
    for (layer, dir) in candidates {
        match probe(dir, target)? {
            Probe::Missing => continue,
            Probe::MissingStop | Probe::Whiteout => return Ok(None),
            Probe::Found(fd, in_dir, name) | Probe::FoundStop(fd, in_dir, name) => {
                let st = sys::fstat(fd.as_fd())?;
                if (st.st_mode & libc::S_IFMT) == libc::S_IFREG {
                    return Ok(Some(RealEntry::named(*layer, in_dir, &name)));
                }
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// The redirect record of a non-directory entry, if it has one.
fn file_redirect(entry: &RealEntry) -> Result<Option<Vec<u8>>> {
    for name in REDIRECT_XATTRS {
        match entry.getxattr(name) {
            Ok(v) if !v.is_empty() => return Ok(Some(v)),
            Ok(_) => {}
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The redirect record of a real directory, if it has one.
pub fn redirect(dir: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
    for name in REDIRECT_XATTRS {
        match sys::getxattr(dir, name) {
            Ok(v) if !v.is_empty() => return Ok(Some(v)),
            Ok(_) => {}
            Err(e) if is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Resolves `name` among `parents` (the merged directory's real directories, top-down).
///
/// A directory with a redirect record (`overlay.redirect`, written when a directory with lower
/// parts is renamed) continues the merge in the lower layers at the recorded place instead of
/// its own name: a relative record names an entry of the parent's lower directories, an absolute
/// one a path from each lower layer's root (kernel: `ovl_lookup()` with `d.redirect`).
pub fn lookup(layers: &LayerStack, parents: &[RealEntry], name: &OsStr) -> Result<Resolved> {
    if is_hidden_name(name) {
        return Err(ENOENT);
    }
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
        let (fd, in_dir, real_name, stop_below) = match probe(&dir, &target)? {
            Probe::Missing => continue,
            Probe::MissingStop | Probe::Whiteout => break,
            Probe::Found(fd, in_dir, real_name) => (fd, in_dir, real_name, false),
            Probe::FoundStop(fd, in_dir, real_name) => (fd, in_dir, real_name, true),
        };
        let st = sys::fstat(fd.as_fd())?;
        if sys::is_whiteout(&st) {
            break;
        }
        let Some(kind) = Kind::from_mode(st.st_mode) else {
            return Err(crate::error::EIO);
        };
        let metacopy =
            kind == Kind::Regular && Some(layer) == layers.upper() && is_metacopy(fd.as_fd())?;
        let entry = if kind == Kind::Directory {
            RealEntry::new(layer, fd)
        } else {
            RealEntry::named(layer, in_dir, &real_name)
        };
        let is_last_layer = layer + 1 >= layers.len();
        match (&mut found, kind) {
            (None, Kind::Directory) | (Some(_), Kind::Directory) => {
                let opaque = !is_last_layer && is_opaque(entry.dir_fd()?)?;
                let redirect = if is_last_layer || opaque {
                    None
                } else {
                    redirect(entry.dir_fd()?)?
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
                    target = Target::redirect(&r)?;
                    if let Target::Path(_) = target {
                        // An absolute redirect searches every layer below from its root.
                        candidates = (layer + 1..layers.len())
                            .map(|l| (l, layers.get(l).root.clone()))
                            .collect();
                        i = 0;
                    }
                }
            }
            (None, _) => {
                let redirect = if metacopy {
                    file_redirect(&entry)?
                } else {
                    None
                };
                found = Some(Resolved {
                    kind,
                    stat: st,
                    reals: vec![entry],
                    lower_data: None,
                });
                if !metacopy {
                    break;
                }
                // A metadata-only copy: its data is the same name's in the layers below, or
                // where its redirect record says (the kernel records one when it renames such
                // a file).
                let lower_data = match redirect {
                    Some(r) => {
                        let t = Target::redirect(&r)?;
                        if let Target::Path(_) = t {
                            let roots: Vec<(usize, Arc<OwnedFd>)> = (layer + 1..layers.len())
                                .map(|l| (l, layers.get(l).root.clone()))
                                .collect();
                            find_lower_data(&roots, &t)?
                        } else {
                            find_lower_data(&candidates[i..], &t)?
                        }
                    }
                    None => find_lower_data(&candidates[i..], &target)?,
                };
                match (&mut found, lower_data) {
                    (Some(r), Some(data)) => r.lower_data = Some(data),
                    _ => {
                        log::error!("metadata-only copy {name:?} has no lower data");
                        return Err(crate::error::EIO);
                    }
                }
                break;
            }
            (Some(_), _) => break,
        }
    }
    found.ok_or(ENOENT)
}

fn exists(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match sys::fstatat(dir, name) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}
