//! `ufs check`: an offline checker of a layer stack, in the spirit of `fsck.overlay`
//! (overlayfs-progs). It reads every layer, top to bottom, with the kernel's lookup rules, and
//! reports each inconsistency on one line: the real path, the problem, and what a repair does.
//! Nothing is changed unless a repair is asked for, and then only what keeps the union's view
//! (or, with [`Repair::All`], what `fsck.overlay -y` also changes).
//!
//! What is checked, per layer (the upper is layer 0, then the lowers top-down):
//! - **whiteouts** (0/0 character devices) that hide nothing in the layers below them: orphans,
//!   removed by a repair;
//! - **redirects** of directories: malformed or leading out of the layers, naming nothing or a
//!   non-directory below (removed; the directory made opaque where its own name has a directory
//!   below, so the view stays the same), a rename origin left visible (a whiteout added), and
//!   two directories redirected to one origin, or a redirect to an origin a merged directory
//!   still uses (duplicates: only [`Repair::All`] removes the later redirect);
//! - **opaque markers** on non-directories (removed);
//! - **`impure` markers** missing on upper directories that hold copied-up entries, redirected
//!   or merged directories (added);
//! - **metadata-only copies** whose data cannot be found below (reported, not repaired);
//! - **the index** (`WORKDIR/index`): entries no upper name links to any more (removed), entries
//!   whose origin record does not match their name, and **link-count records** that cannot be
//!   read or give no link (removed);
//! - **the work directory**: leftovers of interrupted operations (removed), and the marker a
//!   `volatile` mount leaves when it did not end cleanly (reported);
//! - **whiteout formats** mixed in one layer (0/0 devices beside `.wh.` files);
//! - a stack a live mount uses is not checked at all.
//!
//! Kernel and tool counterparts: `ovl_lookup()` in `fs/overlayfs/namei.c` (the rules the walk
//! follows), `ovl_indexdir_cleanup()` and `ovl_workdir_cleanup()` (what the kernel itself
//! removes at mount), and `fsck.overlay` from overlayfs-progs (the checks and exit codes of the
//! compatible command line).

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::options::Options;
use crate::records::{XattrNamespace, is_no_xattr};
use crate::sys;
use crate::whiteout::{WH_OPAQUE, WH_PREFIX};

/// What a check may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Nothing (`ufs check`, `fsck.overlay -n`).
    Nothing,
    /// What keeps the union's view, or can only restore it (`--repair`, `fsck.overlay -p`).
    Safe,
    /// Also the duplicates, where which redirect is right cannot be known (`fsck.overlay -y`).
    All,
}

/// What became of one problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Repaired as described.
    Repaired,
    /// A repair would do what is described; it was not asked for (or only [`Repair::All`] does
    /// it).
    Would,
    /// No repair exists; the text says what to do instead.
    Manual,
    /// The repair was tried and failed (the error is in the text).
    Failed(String),
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The real path of the entry (in its layer or in the work directory).
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
    /// What a repair does.
    pub repair: String,
    pub outcome: Outcome,
}

impl Problem {
    /// The problem as one line: `PATH: PROBLEM (repair: ACTION) [OUTCOME]`.
    pub fn line(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Repaired => "repaired".to_string(),
            Outcome::Would => "not repaired".to_string(),
            Outcome::Manual => "needs a person".to_string(),
            Outcome::Failed(e) => format!("repair failed: {e}"),
        };
        format!(
            "{}: {} (repair: {}) [{}]",
            self.path.display(),
            self.what,
            self.repair,
            outcome
        )
    }

    /// Whether the problem is still there after the check.
    pub fn remains(&self) -> bool {
        self.outcome != Outcome::Repaired
    }
}

/// Why a stack could not be checked at all.
#[derive(Debug)]
pub struct CannotCheck(pub String);

impl std::fmt::Display for CannotCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks (and with `repair`, repairs) the stack `opts` names. The stack must not be in use by
/// a live mount; while it is checked, ufs's own layer locks keep a mount from starting on it.
pub fn check(opts: &Options, repair: Repair) -> std::result::Result<Vec<Problem>, CannotCheck> {
    let cannot = |what: &str, e: &dyn std::fmt::Display| CannotCheck(format!("{what}: {e}"));
    // A live mount on these directories changes them under the check: refuse, as fsck.overlay
    // does. Holding the same locks a ufs mount takes keeps one from starting meanwhile.
    let _locks = if opts.upperdir.is_some() && opts.workdir.is_some() {
        let dirs =
            crate::mount::open_dirs(opts).map_err(|e| cannot("cannot open the layers", &e))?;
        crate::in_use::check_dirs(&dirs).map_err(|e| cannot("the stack is in use", &e))?;
        Some(crate::mount::lock_dirs(&dirs).map_err(|e| cannot("the stack is in use", &e))?)
    } else {
        None
    };
    let mut layers = Vec::new();
    let mut open = |path: &Path| -> std::result::Result<(), CannotCheck> {
        let root = sys::open_dir_path(path).map_err(|e| cannot(&path.display().to_string(), &e))?;
        layers.push(LayerDir {
            path: path.to_path_buf(),
            root,
        });
        Ok(())
    };
    let has_upper = opts.upperdir.is_some();
    if let Some(u) = &opts.upperdir {
        open(u)?;
    }
    for l in &opts.lowerdirs {
        open(l)?;
    }
    let data = opts
        .datadirs
        .iter()
        .map(|d| {
            Ok(LayerDir {
                path: d.clone(),
                root: sys::open_dir_path(d).map_err(|e| cannot(&d.display().to_string(), &e))?,
            })
        })
        .collect::<std::result::Result<Vec<_>, CannotCheck>>()?;
    let work = match &opts.workdir {
        Some(w) => Some(sys::open_dir_path(w).map_err(|e| cannot(&w.display().to_string(), &e))?),
        None => None,
    };
    let ns = if opts.userxattr || sys::euid_egid().0 != 0 {
        XattrNamespace::User
    } else {
        XattrNamespace::Trusted
    };
    let mut c = Checker {
        layers,
        data,
        has_upper,
        ns,
        repair,
        problems: Vec::new(),
        claims: HashMap::new(),
    };
    // The lowest layers first, so that of two redirects to one origin the older one is kept.
    for i in (0..c.layers.len()).rev() {
        c.check_layer(i)
            .map_err(|e| cannot(&format!("cannot read {}", c.layers[i].path.display()), &e))?;
    }
    if let (Some(work), Some(wpath)) = (work, &opts.workdir) {
        c.check_workdir(work.as_fd(), wpath)
            .map_err(|e| cannot(&format!("cannot read {}", wpath.display()), &e))?;
    }
    Ok(c.problems)
}

/// One layer's root.
struct LayerDir {
    path: PathBuf,
    root: OwnedFd,
}

/// A path inside a layer, as names from its root.
type LPath = Vec<CString>;

/// What a name is in one layer, as a lookup sees it.
#[derive(Debug)]
enum Seen {
    Whiteout,
    Directory {
        opaque: bool,
        redirect: Option<Vec<u8>>,
    },
    /// Anything else; `metacopy`: a metadata-only copy (with its data redirect, if any).
    Other {
        regular: bool,
        metacopy: bool,
        redirect: Option<Vec<u8>>,
    },
}

/// Where the layers below are searched (the kernel's `d.name` / `d.redirect`).
#[derive(Clone, Debug)]
enum Target {
    /// A name in each layer's part of the parent directory.
    Name(CString),
    /// A path from each layer's root (after an absolute redirect).
    Path(LPath),
}

/// A redirect record, parsed.
enum Redirect {
    Relative(CString),
    Absolute(LPath),
}

/// Parses a redirect record as the kernel validates it, with the mount's own validation
/// ([`crate::redirect::Target::redirect`]): one name, or `/` and names separated by single
/// slashes; `.`, `..` and empty names lead out of or around the layers and are refused.
fn parse_redirect(r: &[u8]) -> Option<Redirect> {
    match crate::redirect::Target::redirect(r).ok()? {
        crate::redirect::Target::Name { name, .. } => Some(Redirect::Relative(name)),
        crate::redirect::Target::Path(names) => Some(Redirect::Absolute(names)),
    }
}

/// What a search of the layers below found for one name.
#[derive(Default, Debug)]
struct Found {
    /// The directories it merges with, top-down: (layer, path).
    dirs: Vec<(usize, LPath)>,
    /// The non-directory it resolves to, when no directory came first.
    other: Option<NonDir>,
}

/// A non-directory a search found.
#[derive(Debug)]
struct NonDir {
    layer: usize,
    path: LPath,
    regular: bool,
    metacopy: bool,
    redirect: Option<Vec<u8>>,
}

impl Found {
    fn positive(&self) -> bool {
        !self.dirs.is_empty() || self.other.is_some()
    }
}

struct Checker {
    layers: Vec<LayerDir>,
    /// The data-only layers, never merged: only searched for metadata-only copies' data.
    data: Vec<LayerDir>,
    has_upper: bool,
    ns: XattrNamespace,
    repair: Repair,
    problems: Vec<Problem>,
    /// The origin directories redirects use: (layer, path) → the real path of the first one.
    claims: HashMap<(usize, LPath), PathBuf>,
}

fn join(p: &LPath, name: &CStr) -> LPath {
    let mut v = p.clone();
    v.push(name.to_owned());
    v
}

fn rel(p: &[CString]) -> PathBuf {
    p.iter()
        .map(|c| OsStr::from_bytes(c.to_bytes()))
        .collect::<PathBuf>()
}

/// xattr `x` of entry `name` in `dir`, not following symlinks; `None` if absent.
fn xattr(dir: BorrowedFd<'_>, name: &CStr, x: &CStr) -> Result<Option<Vec<u8>>> {
    match sys::getxattr_at(dir, name, x) {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_no_xattr(e.errno()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn missing(e: &Error) -> bool {
    matches!(
        e.errno(),
        libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV
    )
}

impl Checker {
    fn real(&self, layer: usize, p: &[CString]) -> PathBuf {
        if p.is_empty() {
            return self.layers[layer].path.clone();
        }
        self.layers[layer].path.join(rel(p))
    }

    /// The directory `p` of `layer`, opened beneath the layer's root without following any
    /// symlink; `None` when it is not a directory there.
    fn open_dir(&self, layer: usize, p: &[CString]) -> Result<Option<OwnedFd>> {
        let root = self.layers[layer].root.as_fd();
        if p.is_empty() {
            return sys::open_path(root, c".").map(Some);
        }
        match sys::open_beneath(root, &rel(p)) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What `name` is in directory `dir` of some layer, as the kernel's lookup sees it.
    fn seen_in(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<Seen>> {
        let st = match sys::fstatat(dir, name) {
            Ok(st) => st,
            Err(e) if missing(&e) => {
                // An OCI `.wh.NAME` whiteout, which ufs also reads.
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name.to_bytes());
                let wh = CString::new(wh).map_err(|_| crate::error::EINVAL)?;
                return Ok(match sys::fstatat(dir, &wh) {
                    Ok(_) => Some(Seen::Whiteout),
                    Err(e) if missing(&e) || e.errno() == libc::ENAMETOOLONG => None,
                    Err(e) => return Err(e),
                });
            }
            Err(e) => return Err(e),
        };
        if sys::is_whiteout(&st) {
            return Ok(Some(Seen::Whiteout));
        }
        let ns = self.ns;
        Ok(Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // `x` marks a directory that holds alternative whiteouts; it is not opaque.
                let opaque = xattr(dir, name, ns.opaque())?.is_some_and(|v| v == b"y") || {
                    let sub = sys::open_path(dir, name)?;
                    crate::whiteout::exists(sub.as_fd(), WH_OPAQUE)?
                };
                Seen::Directory {
                    opaque,
                    redirect: xattr(dir, name, ns.redirect())?,
                }
            }
            libc::S_IFREG if self.is_xwhiteout(dir, name, &st)? => Seen::Whiteout,
            mode => {
                let regular = mode == libc::S_IFREG;
                let (metacopy, redirect) = if regular {
                    (
                        xattr(dir, name, ns.metacopy())?.is_some(),
                        xattr(dir, name, ns.redirect())?,
                    )
                } else {
                    (false, None)
                };
                Seen::Other {
                    regular,
                    metacopy,
                    redirect,
                }
            }
        }))
    }

    /// Whether regular file `name` of `dir` is one of the kernel's alternative whiteouts: empty,
    /// with `overlay.whiteout`, in a directory whose opaque marker is `x`.
    fn is_xwhiteout(&self, dir: BorrowedFd<'_>, name: &CStr, st: &libc::stat) -> Result<bool> {
        Ok(st.st_size == 0
            && xattr(dir, name, self.ns.xwhiteout())?.is_some()
            && xattr(dir, c".", self.ns.opaque())?.is_some_and(|v| v == b"x"))
    }

    /// Whether entry `name` of `dir` was copied up: it carries the kernel's origin record or
    /// ufs's inode-number record (both make readdir look for the number it reports).
    fn is_copy(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
        Ok(xattr(dir, name, self.ns.origin())?.is_some()
            || xattr(dir, name, self.ns.ino_record())?.is_some())
    }

    /// What path `p` is in `layer`.
    fn seen(&self, layer: usize, p: &[CString]) -> Result<Option<Seen>> {
        let Some((name, parent)) = p.split_last() else {
            return Ok(Some(Seen::Directory {
                opaque: false,
                redirect: None,
            }));
        };
        match self.open_dir(layer, parent)? {
            Some(dir) => self.seen_in(dir.as_fd(), name),
            None => Ok(None),
        }
    }

    /// Searches the layers below `from` for `target`, as `ovl_lookup` does: `parents` are the
    /// directories the parent merges with (layer, path), top-down.
    fn lookup_below(
        &self,
        from: usize,
        parents: &[(usize, LPath)],
        target: Target,
    ) -> Result<Found> {
        let mut found = Found::default();
        let mut target = target;
        for j in from + 1..self.layers.len() {
            let path = match &target {
                Target::Name(n) => match parents.iter().find(|(l, _)| *l == j) {
                    Some((_, p)) => join(p, n),
                    None => continue,
                },
                Target::Path(p) => p.clone(),
            };
            match self.seen(j, &path)? {
                None => continue,
                Some(Seen::Whiteout) => break,
                Some(Seen::Other {
                    regular,
                    metacopy,
                    redirect,
                }) => {
                    if found.dirs.is_empty() {
                        found.other = Some(NonDir {
                            layer: j,
                            path,
                            regular,
                            metacopy,
                            redirect,
                        });
                    }
                    break;
                }
                Some(Seen::Directory { opaque, redirect }) => {
                    found.dirs.push((j, path.clone()));
                    if opaque {
                        break;
                    }
                    if let Some(r) = redirect {
                        target = match (parse_redirect(&r), target) {
                            (Some(Redirect::Absolute(p)), _) => Target::Path(p),
                            (Some(Redirect::Relative(n)), Target::Name(_)) => Target::Name(n),
                            (Some(Redirect::Relative(n)), Target::Path(mut p)) => {
                                p.pop();
                                p.push(n);
                                Target::Path(p)
                            }
                            // The kernel refuses the lookup; the redirect's own check reports it.
                            (None, _) => break,
                        };
                    }
                }
            }
        }
        Ok(found)
    }

    fn report(&mut self, path: PathBuf, what: String, repair: String, outcome: Outcome) {
        self.problems.push(Problem {
            path,
            what,
            repair,
            outcome,
        });
    }

    /// Records a problem a repair of level `needs` fixes with `fix`.
    fn fixable(
        &mut self,
        path: PathBuf,
        what: impl Into<String>,
        repair: impl Into<String>,
        needs: Repair,
        fix: impl FnOnce() -> Result<()>,
    ) {
        let allowed = !matches!(
            (self.repair, needs),
            (Repair::Nothing, _) | (Repair::Safe, Repair::All)
        );
        let outcome = if allowed {
            match fix() {
                Ok(()) => Outcome::Repaired,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        } else {
            Outcome::Would
        };
        self.report(path, what.into(), repair.into(), outcome);
    }

    fn check_layer(&mut self, i: usize) -> Result<()> {
        let below: Vec<(usize, LPath)> = (i + 1..self.layers.len())
            .map(|j| (j, Vec::new()))
            .collect();
        let root = sys::open_path(self.layers[i].root.as_fd(), c".")?;
        let mut formats = Formats::default();
        self.walk(i, root.as_fd(), Vec::new(), below, &mut formats)?;
        let used: Vec<String> = [
            (formats.devices, "0/0 devices", &formats.device_example),
            (formats.wh_files, ".wh. files", &formats.wh_example),
            (
                formats.xattr_files,
                "overlay.whiteout files",
                &formats.xattr_example,
            ),
        ]
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, what, example)| format!("{n} {what} ({})", example.display()))
        .collect();
        if used.len() > 1 {
            let path = self.layers[i].path.clone();
            self.report(
                path,
                format!("the layer mixes whiteout formats: {}", used.join(", ")),
                "none; rewrite the layer in one format".into(),
                Outcome::Manual,
            );
        }
        Ok(())
    }

    /// Checks directory `p` of layer `i` (open as `dir`), which merges with `below`.
    fn walk(
        &mut self,
        i: usize,
        dir: BorrowedFd<'_>,
        p: LPath,
        below: Vec<(usize, LPath)>,
        formats: &mut Formats,
    ) -> Result<()> {
        let mut names: Vec<OsString> = sys::read_dir(dir)?.into_iter().map(|e| e.name).collect();
        names.sort();
        let is_upper = i == 0 && self.has_upper;
        let mut needs_impure: Option<PathBuf> = None;
        for name in names {
            let cname = sys::cstr(&name)?;
            let path = join(&p, &cname);
            let real = self.real(i, &path);
            let st = match sys::fstatat(dir, &cname) {
                Ok(st) => st,
                Err(e) if missing(&e) => continue,
                Err(e) => return Err(e),
            };
            if name.as_bytes().starts_with(WH_PREFIX) {
                if name.as_bytes() != WH_OPAQUE.to_bytes() {
                    formats.wh_files += 1;
                    formats.wh_example = real;
                }
                continue;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && self.is_xwhiteout(dir, &cname, &st)? {
                formats.xattr_files += 1;
                formats.xattr_example = real;
                continue;
            }
            if sys::is_whiteout(&st) {
                formats.devices += 1;
                formats.device_example = real.clone();
                if !self
                    .lookup_below(i, &below, Target::Name(cname.clone()))?
                    .positive()
                {
                    self.fixable(
                        real,
                        "orphan whiteout: nothing below it to hide",
                        "remove it",
                        Repair::Safe,
                        || sys::unlinkat(dir, &cname, 0),
                    );
                }
                continue;
            }
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if !is_dir {
                if xattr(dir, &cname, self.ns.opaque())?.is_some() {
                    let ns = self.ns;
                    self.fixable(
                        real.clone(),
                        "opaque marker on a non-directory",
                        "remove the marker",
                        Repair::Safe,
                        || {
                            let fd = sys::open_path(dir, &cname)?;
                            sys::removexattr(fd.as_fd(), ns.opaque())
                        },
                    );
                }
                if is_upper && self.is_copy(dir, &cname)? {
                    needs_impure.get_or_insert(real.clone());
                }
                if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    self.check_file(i, dir, &cname, &path, &below, &st, real)?;
                }
                continue;
            }
            let seen = self.seen_in(dir, &cname)?;
            let Some(Seen::Directory { opaque, redirect }) = seen else {
                continue;
            };
            let mut opaque = opaque;
            let mut target = Target::Name(cname.clone());
            if let Some(r) = &redirect {
                match self.check_redirect(i, dir, &cname, &p, &below, r, real.clone())? {
                    Some(t) => target = t,
                    None => {
                        // The redirect is gone (or is to be removed): the directory is then
                        // what the kernel already shows, an upper-only one.
                        opaque = true;
                    }
                }
            }
            let child_below = if opaque {
                Vec::new()
            } else {
                self.lookup_below(i, &below, target)?.dirs
            };
            if is_upper
                && (redirect.is_some() || !child_below.is_empty() || self.is_copy(dir, &cname)?)
            {
                needs_impure.get_or_insert(real.clone());
            }
            let sub = sys::open_path(dir, &cname)?;
            self.walk(i, sub.as_fd(), path, child_below, formats)?;
        }
        if let Some(why) = needs_impure
            && xattr(dir, c".", self.ns.impure())?.is_none()
        {
            let ns = self.ns;
            let real = self.real(i, &p);
            self.fixable(
                real,
                format!(
                    "missing impure marker: {} was copied up, moved or merged here",
                    why.display()
                ),
                "add the marker",
                Repair::Safe,
                || sys::setxattr(dir, ns.impure(), b"y", 0),
            );
        }
        Ok(())
    }

    /// Checks the redirect `r` of directory `name` in directory `p` (open as `dir`) of layer
    /// `i`. Returns the target the layers below are searched for, or `None` when the redirect
    /// is invalid (then removed, or to be removed).
    #[allow(clippy::too_many_arguments)]
    fn check_redirect(
        &mut self,
        i: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        p: &LPath,
        below: &[(usize, LPath)],
        r: &[u8],
        real: PathBuf,
    ) -> Result<Option<Target>> {
        let shown = String::from_utf8_lossy(r).into_owned();
        let parsed = parse_redirect(r);
        let (target, origin) = match &parsed {
            Some(Redirect::Relative(n)) => (Target::Name(n.clone()), join(p, n)),
            Some(Redirect::Absolute(path)) => (Target::Path(path.clone()), path.clone()),
            None => {
                self.drop_redirect(
                    i,
                    dir,
                    name,
                    below,
                    real,
                    format!("redirect {shown:?} is malformed or leads out of the layers"),
                    Repair::Safe,
                )?;
                return Ok(None);
            }
        };
        let found = self.lookup_below(i, below, target.clone())?;
        let Some(first) = found.dirs.first().cloned() else {
            let what = match found.other {
                Some(_) => format!("redirect {shown:?} names a non-directory below"),
                None => format!("redirect {shown:?} names nothing below"),
            };
            self.drop_redirect(i, dir, name, below, real, what, Repair::Safe)?;
            return Ok(None);
        };
        if let Some(earlier) = self.claims.get(&first).cloned() {
            self.drop_redirect(
                i,
                dir,
                name,
                below,
                real,
                format!(
                    "duplicate redirect {shown:?}: {} is already redirected to {}",
                    earlier.display(),
                    self.real(first.0, &first.1).display()
                ),
                Repair::All,
            )?;
            return Ok(None);
        }
        // What covers the origin in this layer: a whiteout, a non-directory, an opaque or
        // redirected directory hide it; nothing leaves it visible twice; a merged directory
        // uses it too.
        let origin_real = self.real(i, &origin);
        match self.cover(i, &origin)? {
            Cover::Hidden => {}
            // Only the upper is checked for this: a lower layer may show a directory at two
            // names on purpose (an image made so, xfstests `overlay/055`), and it is read-only.
            Cover::Visible { .. } if !(i == 0 && self.has_upper) => {}
            Cover::Visible { repairable } => {
                let what = format!(
                    "missing whiteout: {} is redirected, but its origin is still visible here",
                    real.display()
                );
                let parent = match (repairable, origin.split_last()) {
                    (true, Some((leaf, parent))) => {
                        self.open_dir(i, parent)?.map(|d| (d, leaf.clone()))
                    }
                    _ => None,
                };
                match parent {
                    Some((parent, leaf)) => {
                        self.fixable(origin_real, what, "add a whiteout", Repair::Safe, || {
                            sys::mknodat(parent.as_fd(), &leaf, libc::S_IFCHR, 0)
                        })
                    }
                    None => self.report(
                        origin_real,
                        what,
                        "none: the origin's parent is not in this layer".into(),
                        Outcome::Manual,
                    ),
                }
            }
            Cover::Merged => {
                let parents: Vec<(usize, LPath)> = (i + 1..self.layers.len())
                    .map(|j| (j, Vec::new()))
                    .collect();
                let merges = self
                    .lookup_below(i, &parents, Target::Path(origin.clone()))?
                    .dirs
                    .first()
                    == Some(&first);
                if merges {
                    self.drop_redirect(
                        i,
                        dir,
                        name,
                        below,
                        real,
                        format!(
                            "duplicate redirect {shown:?}: the merged directory {} uses its origin too",
                            origin_real.display()
                        ),
                        Repair::All,
                    )?;
                    return Ok(None);
                }
            }
        }
        self.claims.insert(first, real);
        Ok(Some(target))
    }

    /// Whether a redirect's origin path `origin` is still visible through layer `i`: hidden by
    /// a whiteout, a non-directory, or an opaque or redirected directory on the way or at its
    /// end; visible where layer `i` lacks it; `Merged` when a plain directory of layer `i`
    /// stands at that path.
    fn cover(&self, i: usize, origin: &[CString]) -> Result<Cover> {
        for k in 0..origin.len() {
            let last = k + 1 == origin.len();
            match self.seen(i, &origin[..=k])? {
                None => return Ok(Cover::Visible { repairable: last }),
                Some(Seen::Whiteout) | Some(Seen::Other { .. }) => return Ok(Cover::Hidden),
                Some(Seen::Directory { opaque, redirect }) if opaque || redirect.is_some() => {
                    return Ok(Cover::Hidden);
                }
                Some(Seen::Directory { .. }) if last => return Ok(Cover::Merged),
                Some(Seen::Directory { .. }) => {}
            }
        }
        Ok(Cover::Hidden)
    }

    /// Reports (and at `needs`, removes) the redirect of directory `name`, making it opaque
    /// where its own name has a directory below, so that it shows what it showed.
    #[allow(clippy::too_many_arguments)]
    fn drop_redirect(
        &mut self,
        i: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        below: &[(usize, LPath)],
        real: PathBuf,
        what: String,
        needs: Repair,
    ) -> Result<()> {
        let shadows = !self
            .lookup_below(i, below, Target::Name(name.to_owned()))?
            .dirs
            .is_empty();
        let ns = self.ns;
        let repair = if shadows {
            "remove the redirect and make the directory opaque"
        } else {
            "remove the redirect"
        };
        self.fixable(real, what, repair, needs, || {
            let fd = sys::open_path(dir, name)?;
            if shadows {
                sys::setxattr(fd.as_fd(), ns.opaque(), b"y", 0)?;
            }
            sys::removexattr(fd.as_fd(), ns.redirect())
        });
        Ok(())
    }

    /// Checks regular file `name` of layer `i`: a metadata-only copy's data, its link-count
    /// record.
    #[allow(clippy::too_many_arguments)]
    fn check_file(
        &mut self,
        i: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &LPath,
        below: &[(usize, LPath)],
        st: &libc::stat,
        real: PathBuf,
    ) -> Result<()> {
        if xattr(dir, name, self.ns.metacopy())?.is_some() {
            let redirect = xattr(dir, name, self.ns.redirect())?;
            if !self.data_found(i, below, name, path, redirect)? {
                self.report(
                    real.clone(),
                    "metadata-only copy whose data cannot be found below".into(),
                    "none: restore the lower layer that held the data, or remove the copy".into(),
                    Outcome::Manual,
                );
            }
        }
        if let Some(v) = xattr(dir, name, self.ns.nlink())? {
            let text = String::from_utf8_lossy(&v).into_owned();
            let parsed = text
                .strip_prefix('U')
                .or_else(|| text.strip_prefix('L'))
                .and_then(|n| n.parse::<i64>().ok());
            let bad = match parsed {
                None => Some(format!("link-count record {text:?} cannot be read")),
                Some(n) if text.starts_with('U') && st.st_nlink as i64 + n < 1 => Some(format!(
                    "link-count record {text:?} gives {} links",
                    st.st_nlink as i64 + n
                )),
                _ => None,
            };
            if let Some(what) = bad {
                let ns = self.ns;
                self.fixable(real, what, "remove the record", Repair::Safe, || {
                    let fd = sys::open_path(dir, name)?;
                    sys::removexattr(fd.as_fd(), ns.nlink())
                });
            }
        }
        Ok(())
    }

    /// Whether the data of a metadata-only copy at `path` of layer `i` is below: at its data
    /// redirect, or else at its own name; a metadata-only copy found there is followed on.
    fn data_found(
        &self,
        i: usize,
        below: &[(usize, LPath)],
        name: &CStr,
        path: &LPath,
        redirect: Option<Vec<u8>>,
    ) -> Result<bool> {
        let mut from = i;
        let mut parents = below.to_vec();
        let mut target = Target::Name(name.to_owned());
        let mut redirect = redirect;
        let mut here = path.clone();
        // The last absolute redirect met: where data-only layers are searched at the end.
        let mut absolute: Option<LPath> = None;
        for _ in 0..self.layers.len() {
            if let Some(r) = &redirect {
                match parse_redirect(r) {
                    Some(Redirect::Absolute(p)) => {
                        absolute = Some(p.clone());
                        target = Target::Path(p);
                    }
                    Some(Redirect::Relative(n)) => {
                        absolute = None;
                        here.pop();
                        here.push(n);
                        target = Target::Path(here.clone());
                    }
                    None => return Ok(false),
                }
                parents.clear();
            }
            if let Target::Path(_) = target {
                parents = (from + 1..self.layers.len())
                    .map(|j| (j, Vec::new()))
                    .collect();
            }
            let found = self.lookup_below(from, &parents, target.clone())?;
            match found.other {
                Some(NonDir {
                    regular: true,
                    metacopy: false,
                    ..
                }) => return Ok(true),
                Some(NonDir {
                    layer,
                    path,
                    regular: true,
                    metacopy: true,
                    redirect: r,
                }) => {
                    from = layer;
                    here = path.clone();
                    target = Target::Path(path);
                    redirect = r;
                }
                // Only the bottom of the regular layers leads on to the data-only ones.
                None if found.dirs.is_empty() => return self.in_data_layers(absolute.as_deref()),
                _ => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Whether a data-only layer (`lowerdir=A::D`, `datadir+=D`) holds a regular file at
    /// `path`, the last absolute redirect of a metadata-only copy (the kernel searches them
    /// for such a copy's data only).
    fn in_data_layers(&self, path: Option<&[CString]>) -> Result<bool> {
        let Some((name, parent)) = path.and_then(|p| p.split_last()) else {
            return Ok(false);
        };
        for data in &self.data {
            let dir = match sys::open_beneath(data.root.as_fd(), &rel(parent)) {
                Ok(fd) => fd,
                Err(e) if missing(&e) => continue,
                Err(e) => return Err(e),
            };
            match sys::fstatat(dir.as_fd(), name) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => return Ok(true),
                Ok(_) => {}
                Err(e) if missing(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// The work directory's leftovers and the index.
    fn check_workdir(&mut self, wd: BorrowedFd<'_>, wpath: &Path) -> Result<()> {
        if let Ok(work) = sys::open_path(wd, c"work") {
            let mut names: Vec<OsString> = sys::read_dir(work.as_fd())?
                .into_iter()
                .map(|e| e.name)
                .collect();
            names.sort();
            for name in names {
                let cname = sys::cstr(&name)?;
                // The kernel keeps one whiteout there to link new whiteouts to
                // (`ovl_whiteout()`): part of a stack it mounted, not a leftover.
                if sys::fstatat(work.as_fd(), &cname).is_ok_and(|st| sys::is_whiteout(&st)) {
                    continue;
                }
                let real = wpath.join("work").join(&name);
                self.fixable(
                    real,
                    "leftover of an interrupted operation in the work directory",
                    "remove it",
                    Repair::Safe,
                    || crate::workdir::remove_tree(work.as_fd(), &cname),
                );
            }
        }
        if let Ok(incompat) = sys::open_path(wd, c"incompat")
            && sys::fstatat(incompat.as_fd(), c"volatile").is_ok()
        {
            self.report(
                wpath.join("incompat/volatile"),
                "a volatile mount did not end cleanly: the upper may have lost writes".into(),
                "none: check the upper's contents, then empty the work directory".into(),
                Outcome::Manual,
            );
        }
        let Ok(index) = sys::open_path(wd, c"index") else {
            return Ok(());
        };
        let mut names: Vec<OsString> = sys::read_dir(index.as_fd())?
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        for name in names {
            let cname = sys::cstr(&name)?;
            let real = wpath.join("index").join(&name);
            let st = match sys::fstatat(index.as_fd(), &cname) {
                Ok(st) => st,
                Err(e) if missing(&e) => continue,
                Err(e) => return Err(e),
            };
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFDIR || sys::is_whiteout(&st) {
                // Directory entries (`nfs_export`) and whiteouts of removed hard links are
                // the kernel's to keep.
                continue;
            }
            if name.as_bytes().starts_with(b"#") {
                // A temporary name (the kernel's `#N`, ufs's `#ufs.PID.N`): an entry being
                // built when a mount ended.
                self.fixable(
                    real,
                    "leftover of an interrupted operation in the index",
                    "remove it",
                    Repair::Safe,
                    || crate::workdir::remove_tree(index.as_fd(), &cname),
                );
                continue;
            }
            let Some(handle) = decode_hex(name.as_bytes()) else {
                self.report(
                    real,
                    "index entry whose name is not a file handle".into(),
                    "none: the entry is not the index's".into(),
                    Outcome::Manual,
                );
                continue;
            };
            // Orphan as the kernel's `ovl_verify_index()` finds one: no upper name links to it
            // and its link-count record counts no lower-only name either (`ovl_get_nlink()`
            // counts none when there is no record).
            let merged = match xattr(index.as_fd(), &cname, self.ns.nlink())? {
                None => Some(0),
                Some(v) => String::from_utf8_lossy(&v)
                    .strip_prefix('U')
                    .and_then(|n| n.parse::<i64>().ok())
                    .map(|n| st.st_nlink as i64 + n),
            };
            if kind == libc::S_IFREG && st.st_nlink <= 1 && merged.is_some_and(|n| n <= 0) {
                self.fixable(
                    real,
                    "orphan index entry: no upper name links to it",
                    "remove it",
                    Repair::Safe,
                    || sys::unlinkat(index.as_fd(), &cname, 0),
                );
                continue;
            }
            let origin = xattr(index.as_fd(), &cname, self.ns.origin())?;
            if let Some(origin) = origin
                && origin != handle
            {
                self.fixable(
                    real,
                    "stale index entry: its origin record does not match its name",
                    "remove the index link (the upper names stay)",
                    Repair::All,
                    || sys::unlinkat(index.as_fd(), &cname, 0),
                );
            }
        }
        Ok(())
    }
}

/// What a redirect's origin path is in the redirect's own layer.
enum Cover {
    Hidden,
    /// Nothing there hides it; `repairable`: only its last name is missing (a whiteout can go
    /// there).
    Visible {
        repairable: bool,
    },
    /// A plain directory of the layer is at that path.
    Merged,
}

/// Counts of the whiteout formats met in one layer.
#[derive(Default)]
struct Formats {
    devices: usize,
    device_example: PathBuf,
    wh_files: usize,
    wh_example: PathBuf,
    xattr_files: usize,
    xattr_example: PathBuf,
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|c| {
            let d = |b: u8| (b as char).to_digit(16);
            Some((d(c[0])? * 16 + d(c[1])?) as u8)
        })
        .collect()
}

/// The exit status of `fsck.overlay` (fsck(8)'s): 0 no problems, 1 all repaired, 4 some left.
pub fn fsck_status(problems: &[Problem]) -> u8 {
    if problems.iter().any(Problem::remains) {
        4
    } else if problems.is_empty() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_parse_as_the_kernel_validates_them() {
        assert!(matches!(parse_redirect(b"a"), Some(Redirect::Relative(_))));
        assert!(matches!(parse_redirect(b"/a/b"), Some(Redirect::Absolute(v)) if v.len() == 2));
        for bad in [
            &b""[..],
            b"a/b",
            b"/",
            b"/a//b",
            b"/a/../b",
            b"..",
            b".",
            b"/a/",
        ] {
            assert!(
                parse_redirect(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hex_names_decode() {
        assert_eq!(decode_hex(b"00fb01"), Some(vec![0, 0xfb, 1]));
        assert_eq!(decode_hex(b"0g"), None);
        assert_eq!(decode_hex(b"abc"), None);
    }
}
