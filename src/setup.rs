//! Setting a mount up: from validated options to an opened, probed layer stack, in the order of
//! the kernel's `ovl_fill_super()` (`fs/overlayfs/super.c`: `ovl_get_upper`, `ovl_get_workdir`,
//! `ovl_get_lowerstack`, then the feature checks).
//!
//! Two steps, so that a tool that only looks at a stack never writes to it:
//! - [`inspect`] opens every layer directory once (on a private clone of its mount where the
//!   daemon may make one) and decides from the options alone how the stack's records are read.
//!   It creates, removes and writes nothing: an offline checker uses it as it is.
//! - [`prepare`] adds what a writable mount needs: the work directory (created if missing),
//!   the probe of `trusted.*` xattrs that decides the records' namespace, the sweep of what an
//!   earlier mount left in the work directory (its own step, after the probe), and the stat
//!   records of `xattr_permissions=`.
//!
//! The checks that refuse a bad stack before anything is opened for writing (overlaps, live
//! mounts, locks) run earlier, in the command-line process (`mount`, `in_use`).

use std::os::fd::OwnedFd;

use crate::layer::{LayerStack, NamedDirs};
use crate::options::Options;
use crate::records::XattrNamespace;
use crate::stat_override;
use crate::workdir::Workdir;

/// A layer stack opened for reading.
pub struct Inspected {
    pub layers: LayerStack,
    /// The work directory, opened but untouched, when the mount is to be writable.
    pub work_dir: Option<OwnedFd>,
    /// No upper, or `ro`.
    pub read_only: bool,
}

/// Opens the stack `opts` names without changing anything in it. Records are read in the
/// namespace the options and the daemon's privilege imply (a writable mount probes instead, see
/// [`prepare`]).
pub fn inspect(opts: &Options) -> std::io::Result<Inspected> {
    inspect_dirs(opts, &named_dirs(opts)?)
}

/// The directories `opts` names, each opened once.
pub fn named_dirs(opts: &Options) -> std::io::Result<NamedDirs> {
    NamedDirs::open(
        opts.upperdir.as_deref(),
        opts.workdir.as_deref(),
        &opts.lowerdirs,
        &opts.datadirs,
    )
}

/// [`inspect`] of directories already opened (and checked, by `mount`): nothing is resolved by
/// path again.
pub fn inspect_dirs(opts: &Options, named: &NamedDirs) -> std::io::Result<Inspected> {
    let writable = !opts.read_only && opts.upperdir.is_some();
    let dirs = crate::layer::private_dirs(named, writable)?;
    let mut layers = LayerStack::from_dirs(
        opts.upperdir.as_deref(),
        dirs.upper,
        &opts.lowerdirs,
        dirs.lowers,
        &opts.datadirs,
        dirs.data,
    )?;
    let read_only = opts.read_only || layers.upper().is_none();
    let ns = if opts.userxattr {
        XattrNamespace::User
    } else {
        XattrNamespace::for_daemon()
    };
    set_record_rules(&mut layers, opts, ns);
    Ok(Inspected {
        layers,
        work_dir: dirs.work.filter(|_| !read_only),
        read_only,
    })
}

/// A stack ready to serve.
pub struct Prepared {
    pub layers: LayerStack,
    /// Present exactly when the mount is writable.
    pub work: Option<Workdir>,
    pub read_only: bool,
    /// The namespace of the records the mount reads and writes.
    pub record_ns: XattrNamespace,
}

/// [`inspect`], then everything a mount needs before it serves (see the module's steps).
pub fn prepare(opts: &Options) -> std::io::Result<Prepared> {
    prepare_dirs(opts, &named_dirs(opts)?)
}

/// [`prepare`] of directories already opened.
pub fn prepare_dirs(opts: &Options, named: &NamedDirs) -> std::io::Result<Prepared> {
    let Inspected {
        mut layers,
        work_dir,
        read_only,
    } = inspect_dirs(opts, named)?;
    let work = match work_dir {
        Some(w) => Some(Workdir::open(w, opts.fsync, opts.index, opts.userxattr)?),
        None => None,
    };
    if let Some(w) = &work {
        w.sweep()?;
    }
    let record_ns = match &work {
        Some(w) => w.xattr_ns,
        None => layers.ns(),
    };
    set_record_rules(&mut layers, opts, record_ns);
    if opts.xattr_permissions > 0 {
        stat_override::set_up(&mut layers, opts.xattr_permissions, !read_only)
            .map_err(|e| std::io::Error::from(e.context("stat records")))?;
    }
    Ok(Prepared {
        layers,
        work,
        read_only,
        record_ns,
    })
}

/// The namespace of the stack's records, and which records are followed: those anyone who owns
/// a file can write (`user.overlay.*`) only where the mount uses the feature, as the kernel does
/// with `userxattr`.
fn set_record_rules(layers: &mut LayerStack, opts: &Options, ns: XattrNamespace) {
    layers.set_ns(ns);
    let trusted = ns == XattrNamespace::Trusted;
    layers.set_follow(trusted || opts.redirect_dir, trusted || opts.metacopy);
}
