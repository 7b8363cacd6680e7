//! Checks made once, before mounting: the layers exist, do not overlap, and the upper and the
//! workdir are ours.
//!
//! Everything here runs in the command-line process before the filesystem is served, so a bad
//! option string fails with one line naming the path and the reason instead of a mount that
//! misbehaves later, and before anything is created or removed in a layer. Each directory is
//! opened once ([`open_dirs`]) and every check and lock is made on that descriptor; the daemon
//! then serves the same directories ([`crate::setup::prepare_dirs`]). The kernel
//! counterpart is the layer setup in `fs/overlayfs/super.c` (`ovl_get_upper`,
//! `ovl_get_workdir`, `ovl_check_layer`) and the "in use" marks on the upper and work
//! directories, which ufs implements with `flock` on them so that a lock dies with its process
//! and never needs cleaning up ([`lock_layers`]); mounts of other programs are found in the
//! mount table and the process table (`in_use`).
//!
//! Overlap rules, as the kernel's: the upper and the work directory may not equal or contain
//! each other, nor equal, contain or sit inside any lower. Lowers may overlap one another: they
//! are read-only, so nesting them is merely odd.

use std::fmt;
use std::fs::{File, TryLockError};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::layer::{NamedDir, NamedDirs};
use crate::options::Options;

/// Which option a checked directory came from; printed as the option's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Lower,
    Upper,
    Work,
    Mountpoint,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Lower => "lowerdir",
            Role::Upper => "upperdir",
            Role::Work => "workdir",
            Role::Mountpoint => "mountpoint",
        })
    }
}

/// Why a mount was refused. Each variant prints as one line naming the path.
#[derive(Debug)]
pub enum MountError {
    /// The directory could not be examined (`stat`, `realpath` or `open` failed).
    Io {
        role: Role,
        path: PathBuf,
        source: io::Error,
    },
    NotADirectory {
        role: Role,
        path: PathBuf,
    },
    /// Upper and work must share a filesystem: publishing a change is a `rename` between them.
    DifferentFilesystems {
        upper: PathBuf,
        work: PathBuf,
    },
    /// `inner` equals `outer` (`same`) or lies below it.
    Overlap {
        inner_role: Role,
        inner: PathBuf,
        outer_role: Role,
        outer: PathBuf,
        same: bool,
    },
    /// The directory is a layer of another live mount: `by` says whose ("by another ufs mount",
    /// "as the upperdir of the overlay mount on \"/m\"").
    InUse {
        role: Role,
        path: PathBuf,
        by: String,
    },
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::Io { role, path, source } => {
                write!(f, "{role} {:?}: {}", path, describe(source))
            }
            MountError::NotADirectory { role, path } => {
                write!(f, "{role} {path:?} is not a directory")
            }
            MountError::DifferentFilesystems { upper, work } => write!(
                f,
                "upperdir {upper:?} and workdir {work:?} are on different filesystems"
            ),
            MountError::Overlap {
                inner_role,
                inner,
                outer_role,
                outer,
                same,
            } => {
                let relation = if *same {
                    "is the same directory as"
                } else {
                    "is inside"
                };
                write!(
                    f,
                    "{inner_role} {inner:?} {relation} {outer_role} {outer:?}"
                )
            }
            // The kernel answers EBUSY for an upper or work directory in use; say so in its words.
            MountError::InUse { role, path, by } => {
                write!(f, "{role} {path:?} is in use {by}: Device or resource busy")
            }
        }
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MountError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The OS's text for an I/O error without std's ` (os error N)` suffix, which only adds noise
/// to a message that already names the path (`No such file or directory`).
pub fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    match (err.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

/// Checks every layer directory of `opts` and how they sit relative to each other.
///
/// Symlinks are followed (containers/storage passes its lowers as `l/SHORTID` symlinks), and the
/// overlap rules compare canonical paths, so no spelling of a path hides an overlap.
pub fn check(opts: &Options) -> Result<(), MountError> {
    check_dirs(&open_dirs(opts)?)
}

/// Opens every directory `opts` names, once (see [`NamedDir`]); the checks, the locks and the
/// mount itself then work on these descriptors, never on the paths again.
pub fn open_dirs(opts: &Options) -> Result<NamedDirs, MountError> {
    NamedDirs::open_with(
        opts.upperdir.as_deref(),
        opts.workdir.as_deref(),
        &opts.lowerdirs,
        &opts.datadirs,
        |option, path, e| {
            let role = match option {
                "upperdir" => Role::Upper,
                "workdir" => Role::Work,
                _ => Role::Lower,
            };
            let path = path.to_path_buf();
            match e.errno() {
                libc::ENOTDIR => MountError::NotADirectory { role, path },
                _ => MountError::Io {
                    role,
                    path,
                    source: e.into(),
                },
            }
        },
    )
}

/// [`check`] on directories already opened.
pub fn check_dirs(dirs: &NamedDirs) -> Result<(), MountError> {
    let lowers: Vec<Checked<'_>> = dirs
        .all_lowers()
        .map(|d| Checked::of(Role::Lower, d))
        .collect();
    let (Some(upper), Some(work)) = (&dirs.upper, &dirs.work) else {
        // `options::parse` guarantees both or neither; read-only unions have nothing more to
        // check.
        return Ok(());
    };
    let upper = Checked::of(Role::Upper, upper);
    let work = Checked::of(Role::Work, work);
    if upper.dev != work.dev {
        return Err(MountError::DifferentFilesystems {
            upper: upper.path.to_path_buf(),
            work: work.path.to_path_buf(),
        });
    }
    check_overlap(&upper, &work)?;
    for lower in &lowers {
        check_overlap(&upper, lower)?;
        check_overlap(&work, lower)?;
    }
    Ok(())
}

/// Checks the directory a union is to be mounted on and returns it as an absolute path, so that
/// it stays valid after a daemon changes its working directory.
pub fn check_mountpoint(path: &Path, cwd: &Path) -> Result<PathBuf, MountError> {
    let absolute: PathBuf = cwd.join(path).components().collect();
    check_dir(Role::Mountpoint, &absolute)?;
    Ok(absolute)
}

/// A checked directory: the path as given (for messages), its canonical form, its device.
struct Checked<'a> {
    role: Role,
    path: &'a Path,
    canonical: &'a Path,
    dev: u64,
}

impl<'a> Checked<'a> {
    fn of(role: Role, dir: &'a NamedDir) -> Checked<'a> {
        Checked {
            role,
            path: &dir.path,
            canonical: &dir.canonical,
            dev: dir.dev,
        }
    }
}

fn check_dir(role: Role, path: &Path) -> Result<(), MountError> {
    let io_error = |source| MountError::Io {
        role,
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_dir() {
        return Err(MountError::NotADirectory {
            role,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses `a` and `b` when one equals or contains the other.
fn check_overlap(a: &Checked<'_>, b: &Checked<'_>) -> Result<(), MountError> {
    let overlap = |inner: &Checked<'_>, outer: &Checked<'_>| MountError::Overlap {
        inner_role: inner.role,
        inner: inner.path.to_path_buf(),
        outer_role: outer.role,
        outer: outer.path.to_path_buf(),
        same: inner.canonical == outer.canonical,
    };
    // `Path::starts_with` compares whole components, so `/up` is not inside `/u`.
    if a.canonical.starts_with(b.canonical) {
        Err(overlap(a, b))
    } else if b.canonical.starts_with(a.canonical) {
        Err(overlap(b, a))
    } else {
        Ok(())
    }
}

/// The locks that keep two ufs mounts off each other's layers, held for as long as this value
/// lives: exclusive on the upper and the work directory, shared on each lower.
///
/// Two mounts sharing a workdir would clean up each other's half-built copy-ups; a workdir that
/// is another mount's upper would have that upper's `work/` emptied; two mounts writing one upper
/// corrupt it, and so does writing into another mount's lower. The kernel marks its upper and
/// work directories "in use" and answers `EBUSY`; ufs takes an `flock` on each directory itself,
/// so the lock follows the directory whatever path names it, and the kernel drops it when the
/// last descriptor closes, also when the process is killed: a crash never leaves a stale lock.
/// The descriptors are close-on-exec, so helpers such as `fusermount3` do not inherit them,
/// while a forked daemon does and keeps the locks after its parent exits.
#[derive(Debug)]
pub struct LayerLocks {
    _dirs: Vec<File>,
    /// Lowers that another ufs mount holds exclusively (as its upper or workdir): mounted anyway,
    /// as the kernel does with `index=off`, since a lower is only read.
    pub warnings: Vec<String>,
}

/// How long [`lock_layers`] waits for a lock held by another process before giving up.
///
/// Unmounting returns as soon as the kernel detaches the mount, while the daemon that served it
/// still needs a moment to notice and exit; a script that unmounts and mounts the same layers
/// again must not fail in that window. A live mount holds the lock indefinitely, so the wait
/// only delays an error that is certain anyway.
pub const LOCK_GRACE: Duration = Duration::from_secs(2);

/// Takes the locks for the layers of `opts`, waiting up to [`LOCK_GRACE`] for another process to
/// release the upper's or the workdir's.
pub fn lock_layers(opts: &Options) -> Result<LayerLocks, MountError> {
    lock_dirs(&open_dirs(opts)?)
}

/// [`lock_layers`] on directories already opened.
pub fn lock_dirs(dirs: &NamedDirs) -> Result<LayerLocks, MountError> {
    lock_dirs_within(dirs, LOCK_GRACE)
}

#[cfg(test)]
fn lock_layers_within(opts: &Options, grace: Duration) -> Result<LayerLocks, MountError> {
    lock_dirs_within(&open_dirs(opts)?, grace)
}

fn lock_dirs_within(dirs: &NamedDirs, grace: Duration) -> Result<LayerLocks, MountError> {
    let mut locks = LayerLocks {
        _dirs: Vec::new(),
        warnings: Vec::new(),
    };
    for (role, dir) in [(Role::Upper, &dirs.upper), (Role::Work, &dirs.work)] {
        if let Some(dir) = dir {
            locks._dirs.push(lock_exclusive(role, dir, grace)?);
        }
    }
    for lower in dirs.all_lowers() {
        let lower_path = &lower.path;
        match lock_shared(lower) {
            Ok(Some(dir)) => locks._dirs.push(dir),
            Ok(None) => locks.warnings.push(format!(
                "lowerdir {lower_path:?} is in use as the upperdir or workdir of another ufs \
                 mount; changes made there are undefined here"
            )),
            // The lock is a courtesy to other mounts; a lower ufs may read but not open for
            // reading as a directory, or a filesystem without flock, does not stop the mount.
            Err(e) => log::debug!("no shared lock on lowerdir {lower_path:?}: {e}"),
        }
    }
    Ok(locks)
}

/// The directory `dir`, opened for `flock`: through a private clone of its mount where the
/// daemon may make one (see [`crate::layer::private_dirs`]), so that holding the lock for the
/// mount's life keeps no mount the user made busy.
fn open_for_lock(dir: &NamedDir) -> io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let cloned = crate::sys::open_tree_clone_fd(dir.fd.as_fd())
        .and_then(|clone| crate::sys::reopen(clone.as_fd(), flags));
    match cloned {
        Ok(fd) => return Ok(File::from(fd)),
        Err(e) => log::debug!(
            "no private clone of {:?} to lock ({e}); locking it as opened",
            dir.path
        ),
    }
    Ok(File::from(crate::sys::reopen(dir.fd.as_fd(), flags)?))
}

fn lock_exclusive(role: Role, named: &NamedDir, grace: Duration) -> Result<File, MountError> {
    const POLL: Duration = Duration::from_millis(10);
    let path = named.path.as_path();
    let io_error = |source| MountError::Io {
        role,
        path: path.to_path_buf(),
        source,
    };
    let dir = open_for_lock(named).map_err(io_error)?;
    let deadline = Instant::now() + grace;
    loop {
        // std implements `try_lock` with `flock(LOCK_EX | LOCK_NB)` on Linux.
        match dir.try_lock() {
            Ok(()) => return Ok(dir),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(POLL);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(MountError::InUse {
                    role,
                    path: path.to_path_buf(),
                    by: "by another ufs mount".into(),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
    }
}

/// A shared lock on `named`, or `None` when another process holds it exclusively.
fn lock_shared(named: &NamedDir) -> io::Result<Option<File>> {
    let dir = open_for_lock(named)?;
    // std implements `try_lock_shared` with `flock(LOCK_SH | LOCK_NB)` on Linux.
    match dir.try_lock_shared() {
        Ok(()) => Ok(Some(dir)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    /// A scratch tree with `lower/`, `lower2/`, `upper/`, `work/`, `merged/` and a regular file
    /// `file`.
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["lower", "lower2", "upper", "work", "merged"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        fs::write(dir.path().join("file"), b"x").expect("write");
        dir
    }

    fn options(root: &Path, lowers: &[&str], upper_work: Option<(&str, &str)>) -> Options {
        Options {
            lowerdirs: lowers.iter().map(|l| root.join(l)).collect(),
            upperdir: upper_work.map(|(u, _)| root.join(u)),
            workdir: upper_work.map(|(_, w)| root.join(w)),
            ..Options::default()
        }
    }

    #[test]
    fn valid_layouts_pass() {
        let dir = scratch();
        let root = dir.path();
        check(&options(root, &["lower"], None)).expect("read-only");
        check(&options(
            root,
            &["lower", "lower2"],
            Some(("upper", "work")),
        ))
        .expect("rw");
        // Lowers may repeat or nest: they are never written.
        check(&options(root, &["lower", "lower", "."], None)).expect("nested lowers");
        // A sibling whose name merely starts with the upper's is not inside it.
        fs::create_dir(root.join("upper2")).expect("mkdir");
        check(&options(root, &["lower"], Some(("upper", "upper2")))).expect("prefix names");
    }

    #[test]
    fn refusals_name_the_path_and_the_problem() {
        let dir = scratch();
        let root = dir.path();
        fs::create_dir_all(root.join("upper/work")).expect("mkdir");
        fs::create_dir_all(root.join("work/upper")).expect("mkdir");
        fs::create_dir_all(root.join("lower/upper")).expect("mkdir");
        fs::create_dir_all(root.join("upper/lower")).expect("mkdir");
        std::os::unix::fs::symlink("upper", root.join("upper-link")).expect("symlink");
        let r = root.display();
        // (lowers, (upper, work), the complete message)
        type Case = (
            &'static [&'static str],
            Option<(&'static str, &'static str)>,
            String,
        );
        let cases: &[Case] = &[
            (
                &["missing"],
                None,
                format!("lowerdir \"{r}/missing\": No such file or directory"),
            ),
            (
                &["lower", "file"],
                None,
                format!("lowerdir \"{r}/file\" is not a directory"),
            ),
            (
                &["lower"],
                Some(("nope", "work")),
                format!("upperdir \"{r}/nope\": No such file or directory"),
            ),
            (
                &["lower"],
                Some(("upper", "file")),
                format!("workdir \"{r}/file\" is not a directory"),
            ),
            (
                &["lower"],
                Some(("upper", "upper")),
                format!("upperdir \"{r}/upper\" is the same directory as workdir \"{r}/upper\""),
            ),
            (
                &["lower"],
                Some(("upper", "upper-link")),
                format!(
                    "upperdir \"{r}/upper\" is the same directory as workdir \"{r}/upper-link\""
                ),
            ),
            (
                &["lower"],
                Some(("upper", "upper/work")),
                format!("workdir \"{r}/upper/work\" is inside upperdir \"{r}/upper\""),
            ),
            (
                &["lower"],
                Some(("work/upper", "work")),
                format!("upperdir \"{r}/work/upper\" is inside workdir \"{r}/work\""),
            ),
            (
                &["lower2", "lower"],
                Some(("lower/upper", "work")),
                format!("upperdir \"{r}/lower/upper\" is inside lowerdir \"{r}/lower\""),
            ),
            (
                &["upper"],
                Some(("upper", "work")),
                format!("upperdir \"{r}/upper\" is the same directory as lowerdir \"{r}/upper\""),
            ),
            (
                &["upper/lower"],
                Some(("upper", "work")),
                format!("lowerdir \"{r}/upper/lower\" is inside upperdir \"{r}/upper\""),
            ),
            (
                &["."],
                Some(("upper", "work")),
                format!("upperdir \"{r}/upper\" is inside lowerdir \"{r}/.\""),
            ),
        ];
        for (lowers, upper_work, want) in cases {
            let err = check(&options(root, lowers, *upper_work)).expect_err(want);
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn upper_and_work_on_different_filesystems() {
        let upper = tempfile::tempdir().expect("tempdir");
        // /dev/shm is a tmpfs on every Linux system with a normal /dev.
        let Ok(work) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let dev = |p: &Path| fs::metadata(p).expect("stat").dev();
        if dev(upper.path()) == dev(work.path()) {
            eprintln!("skipped: the temporary directory is on /dev/shm's filesystem");
            return;
        }
        let opts = Options {
            lowerdirs: vec![upper.path().to_path_buf()],
            upperdir: Some(upper.path().join("u")),
            workdir: Some(work.path().to_path_buf()),
            ..Options::default()
        };
        fs::create_dir(upper.path().join("u")).expect("mkdir");
        let err = check(&Options {
            lowerdirs: vec![work.path().join("l")],
            ..opts.clone()
        })
        .expect_err("missing lower");
        assert!(matches!(
            err,
            MountError::Io {
                role: Role::Lower,
                ..
            }
        ));
        fs::create_dir(work.path().join("l")).expect("mkdir");
        let err = check(&Options {
            lowerdirs: vec![work.path().join("l")],
            ..opts
        })
        .expect_err("different filesystems");
        assert_eq!(
            err.to_string(),
            format!(
                "upperdir {:?} and workdir {:?} are on different filesystems",
                upper.path().join("u"),
                work.path()
            )
        );
    }

    #[test]
    fn mountpoint_is_made_absolute_and_checked() {
        let dir = scratch();
        let root = dir.path();
        assert_eq!(
            check_mountpoint(Path::new("./merged"), root).expect("mountpoint"),
            root.join("merged")
        );
        let err = check_mountpoint(Path::new("file"), root).expect_err("file");
        assert_eq!(
            err.to_string(),
            format!("mountpoint \"{}/file\" is not a directory", root.display())
        );
        let err = check_mountpoint(Path::new("/nonexistent/ufs/m"), root).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "mountpoint \"/nonexistent/ufs/m\": No such file or directory"
        );
    }

    #[test]
    fn layer_locks_are_exclusive_and_released_on_drop() {
        let dir = scratch();
        let root = dir.path();
        fs::create_dir(root.join("work2")).expect("mkdir");
        fs::create_dir(root.join("upper2")).expect("mkdir");
        let first = options(root, &["lower"], Some(("upper", "work")));
        let lock = lock_layers_within(&first, Duration::ZERO).expect("first lock");
        let started = Instant::now();
        let err = lock_layers_within(&first, Duration::from_millis(100)).expect_err("second");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "gave up early"
        );
        let (upper, work) = (root.join("upper"), root.join("work"));
        let busy = |role: &str, path: &Path| {
            format!("{role} {path:?} is in use by another ufs mount: Device or resource busy")
        };
        assert_eq!(err.to_string(), busy("upperdir", &upper));
        // The first mount's upper as a workdir, its workdir as an upper, its lower as an upper.
        for (lowers, upper_work, role, path) in [
            (&["lower2"][..], ("upper2", "upper"), "workdir", &upper),
            (&["lower2"][..], ("work", "work2"), "upperdir", &work),
            (
                &["lower2"][..],
                ("lower", "work2"),
                "upperdir",
                &root.join("lower"),
            ),
        ] {
            let err = lock_layers_within(&options(root, lowers, Some(upper_work)), Duration::ZERO)
                .expect_err("in use");
            assert_eq!(err.to_string(), busy(role, path));
        }
        // Its upper as a lower: mounted, with a warning.
        let reader = lock_layers_within(&options(root, &["upper"], None), Duration::ZERO)
            .expect("lower in use");
        assert_eq!(reader.warnings.len(), 1, "{:?}", reader.warnings);
        // Lowers are shared.
        lock_layers_within(&options(root, &["lower", "lower"], None), Duration::ZERO)
            .expect("shared lowers");
        drop(lock);
        lock_layers_within(&first, Duration::ZERO).expect("lock after release");
    }

    /// Regression: mounting again right after an unmount failed while the previous daemon was
    /// still exiting.
    #[test]
    fn layer_locks_wait_for_a_holder_that_is_exiting() {
        let dir = scratch();
        let opts = options(dir.path(), &["lower"], Some(("upper", "work")));
        let lock = lock_layers(&opts).expect("first lock");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(lock);
        });
        lock_layers(&opts).expect("lock released within the grace period");
        releaser.join().expect("join");
    }

    #[test]
    fn layer_lock_errors() {
        let dir = scratch();
        let root = dir.path();
        let err = lock_layers(&options(root, &["lower"], Some(("upper", "missing"))))
            .expect_err("missing");
        assert!(
            err.to_string()
                .ends_with("/missing\": No such file or directory"),
            "{err}"
        );
        let err =
            lock_layers(&options(root, &["lower"], Some(("file", "work")))).expect_err("file");
        // Opened once for every check, a file is refused as the checks refuse it.
        assert!(
            err.to_string().ends_with("/file\" is not a directory"),
            "{err}"
        );
    }
}
