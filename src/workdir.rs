//! The work directory (`WORKDIR/work`, as the kernel names it) where copies and new entries
//! are built before one rename publishes them, and (`index=on`) `WORKDIR/index`. Opened once at
//! mount time, when ufs's own leftovers are swept and the record namespace is probed. Kernel
//! counterpart: `ovl_workdir_create()` and `ovl_make_workdir()` in `fs/overlayfs/super.c`.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::Result;
use crate::records::XattrNamespace;
use crate::sys;

/// The scratch directory (`WORKDIR/work`, as the kernel names it) where copies are built.
#[derive(Debug)]
pub struct Workdir {
    /// `O_PATH` fd on `WORKDIR/work`.
    pub fd: OwnedFd,
    /// `O_PATH` fd on `WORKDIR/index` (the kernel's name), with `index=on`: one hard link per
    /// copied-up lower file that had several names, named by its origin file handle.
    pub index: Option<Arc<OwnedFd>>,
    counter: AtomicU64,
    /// This process's id, for [`Self::temp_name`] (asked once: `getpid` is a system call).
    pid: u32,
    /// Make copies durable before publishing them.
    pub fsync: bool,
    pub xattr_ns: XattrNamespace,
    /// The whiteout in the work directory that new whiteouts are hard links to (the kernel's
    /// `ofs->whiteout`), once one was needed: held by an `O_PATH` fd, as the kernel holds its
    /// dentry, so that whatever later stands at its name is never linked into the upper. Its
    /// name is a temporary one, so the next mount's sweep removes it.
    shared_whiteout: Mutex<Option<OwnedFd>>,
    /// Cleared when linking to the shared whiteout failed other than for its link count: every
    /// whiteout is then an inode of its own (the kernel's `no_shared_whiteout`).
    share_whiteouts: AtomicBool,
}

impl Workdir {
    /// Opens `workdir/work` (creating it) and probes whether `trusted.*` xattrs can be written.
    /// With `userxattr`, records go to `user.overlay.*` whatever the daemon may do.
    pub fn open(
        wd: OwnedFd,
        fsync: bool,
        index: bool,
        userxattr: bool,
    ) -> std::io::Result<Workdir> {
        match sys::mkdirat(wd.as_fd(), c"work", 0o700) {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EEXIST => {}
            Err(e) => return Err(e.into()),
        }
        let fd = sys::open_path(wd.as_fd(), c"work")?;
        // Made fresh by the kernel at every mount; ufs keeps it, so cleans it every time.
        clear_acls(fd.as_fd())?;
        let probe = c"trusted.overlay.ufs-probe";
        let xattr_ns = if userxattr {
            XattrNamespace::User
        } else {
            match sys::setxattr(fd.as_fd(), probe, b"y", 0) {
                Ok(()) => {
                    if let Err(e) = sys::removexattr(fd.as_fd(), probe) {
                        log::warn!("cannot remove probe xattr from the work directory: {e}");
                    }
                    XattrNamespace::Trusted
                }
                Err(e) => {
                    log::info!("trusted xattrs unavailable ({e}); using user.overlay.* records");
                    XattrNamespace::User
                }
            }
        };
        let index = if index {
            let made = match sys::mkdirat(wd.as_fd(), c"index", 0o700) {
                Ok(()) => true,
                Err(e) if e.errno() == libc::EEXIST => false,
                Err(e) => return Err(e.into()),
            };
            let index = sys::open_path(wd.as_fd(), c"index")?;
            if made {
                clear_acls(index.as_fd())?;
            }
            Some(Arc::new(index))
        } else {
            None
        };
        Ok(Workdir {
            fd,
            index,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            fsync,
            xattr_ns,
            shared_whiteout: Mutex::new(None),
            share_whiteouts: AtomicBool::new(true),
        })
    }

    /// Removes what an earlier mount left in the work directory: only ufs's own temporaries
    /// (the directory may hold anything else, a user's files if it was a mistake, and removing
    /// them would be unrecoverable).
    pub fn sweep(&self) -> Result<()> {
        for e in sys::read_dir(self.dir())? {
            if !is_temp_name(e.name.as_bytes()) {
                log::info!(
                    "leaving {:?} in the work directory: not a ufs temporary",
                    e.name
                );
                continue;
            }
            let name = sys::cstr(&e.name)?;
            log::info!("removing leftover {:?} from the work directory", e.name);
            remove_tree(self.dir(), &name)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A fresh name for a temporary entry: `#ufs.PID.N` (see [`is_temp_name`]).
    pub fn temp_name(&self) -> CString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#ufs.{}.{n}", self.pid)).unwrap_or_default()
    }

    /// A new whiteout (a 0/0 character device) at a fresh temporary name in the work
    /// directory, for the caller to rename into place (or [`Self::discard`]). As the kernel's
    /// `ovl_whiteout()` does, it is a hard link to one whiteout kept in the work directory:
    /// a link costs the upper file system far less than a new inode (on ext4 here about
    /// 15 µs against 250-300 µs), and a whiteout is any 0/0 character device, however many
    /// names it has. When that whiteout has all the links the file system allows (`EMLINK`),
    /// or has lost every name, another one is made to link to; when linking fails for another
    /// reason, sharing stops for the mount. `EPERM` means the file system (or a user
    /// namespace) refuses whiteout devices: the caller then uses `.wh.` files.
    pub fn whiteout(&self) -> Result<CString> {
        let mut shared = self.shared_whiteout.lock();
        share_whiteout(
            &mut shared,
            &self.share_whiteouts,
            || self.new_whiteout(),
            || {
                let fd = sys::open_path(self.dir(), &self.new_whiteout()?)?;
                // Made just now; anything else standing there is not linked to.
                if !sys::is_whiteout(&sys::fstat(fd.as_fd())?) {
                    return Err(crate::error::EIO);
                }
                Ok(fd)
            },
            |fd| {
                let name = self.temp_name();
                sys::link_fd(fd.as_fd(), self.dir(), &name)?;
                Ok(name)
            },
        )
    }

    /// A whiteout of its own (a new inode) at a fresh temporary name.
    fn new_whiteout(&self) -> Result<CString> {
        let name = self.temp_name();
        sys::mknodat(self.dir(), &name, libc::S_IFCHR, 0)?;
        Ok(name)
    }

    /// Removes the temporary entry `name`, logging (not returning) a failure: it is called on
    /// error paths, and a leftover is removed at the next mount anyway.
    pub fn discard(&self, name: &CString) {
        if let Err(e) = remove_tree(self.dir(), name) {
            log::warn!("cannot remove {name:?} from the work directory: {e}");
        }
    }
}

/// [`Workdir::whiteout`]'s steps, apart from the system calls: `make` creates a whiteout of
/// its own at a fresh name, `make_shared` one to link to, `link` a fresh name for the shared
/// one. `shared` is the whiteout new ones link to, `sharing` whether they still do.
fn share_whiteout<S>(
    shared: &mut Option<S>,
    sharing: &AtomicBool,
    make: impl Fn() -> Result<CString>,
    make_shared: impl Fn() -> Result<S>,
    link: impl Fn(&S) -> Result<CString>,
) -> Result<CString> {
    if !sharing.load(Ordering::Relaxed) {
        return make();
    }
    // Twice at most: the shared whiteout may be full or gone once.
    for _ in 0..2 {
        let source = match shared.take() {
            Some(s) => s,
            None => make_shared()?,
        };
        match link(&source) {
            Ok(name) => {
                *shared = Some(source);
                return Ok(name);
            }
            // All its links used, or every name of it removed behind ufs's back: another one.
            Err(e) if e.errno() == libc::EMLINK || e.errno() == libc::ENOENT => {}
            Err(e) => {
                log::warn!("cannot link a whiteout ({e}): every whiteout is made anew");
                sharing.store(false, Ordering::Relaxed);
                return make();
            }
        }
    }
    make()
}

/// Removes the default and access ACLs a directory ufs made in WORKDIR inherited from it, and
/// the mode bits they gave, as `ovl_workdir_create()` does: entries built in the work directory
/// must get only what ufs gives them (a default ACL there would be inherited by every copy-up
/// and new entry). The mode is 0700 rather than the kernel's 0: ufs may run without the
/// privilege to use a directory it cannot search.
fn clear_acls(dir: BorrowedFd<'_>) -> Result<()> {
    let mut had = false;
    for name in [crate::acl::DEFAULT, crate::acl::ACCESS] {
        match sys::removexattr(dir, name) {
            Ok(()) => had = true,
            Err(e) if e.errno() == libc::ENODATA || e.errno() == libc::EOPNOTSUPP => {}
            Err(e) => return Err(e),
        }
    }
    if had {
        sys::fchmod(dir, 0o700)?;
    }
    Ok(())
}

/// Whether `name` has the form of [`Workdir::temp_name`]'s names, `#ufs.PID.N`: the only
/// entries the sweep at mount time removes.
pub fn is_temp_name(name: &[u8]) -> bool {
    let number = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    name.strip_prefix(b"#ufs.")
        .and_then(|rest| {
            let dot = rest.iter().position(|c| *c == b'.')?;
            Some(number(&rest[..dot]) && number(&rest[dot + 1..]))
        })
        .unwrap_or(false)
}

/// Removes `name` in `dir`, recursively if it is a directory.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<()> {
    match sys::unlinkat(dir, name, 0) {
        Ok(()) => return Ok(()),
        Err(e) if e.errno() == libc::EISDIR || e.errno() == libc::EPERM => {}
        Err(e) if e.errno() == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::open_path(dir, name)?;
    for e in sys::read_dir(sub.as_fd())? {
        remove_tree(sub.as_fd(), &sys::cstr(&e.name)?)?;
    }
    sys::unlinkat(dir, name, libc::AT_REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in file system for [`share_whiteout`]: whiteouts are numbered as made (of
    /// their own or to be shared), each link answers the next of `answers` (`None`: success).
    struct FakeFs {
        made: std::cell::Cell<u32>,
        answers: std::cell::RefCell<Vec<Option<i32>>>,
        links: std::cell::RefCell<Vec<CString>>,
    }

    impl FakeFs {
        fn new(answers: &[Option<i32>]) -> FakeFs {
            FakeFs {
                made: std::cell::Cell::new(0),
                answers: std::cell::RefCell::new(answers.iter().rev().copied().collect()),
                links: std::cell::RefCell::new(Vec::new()),
            }
        }

        fn get(&self, shared: &mut Option<CString>, sharing: &AtomicBool) -> CString {
            let make = || {
                self.made.set(self.made.get() + 1);
                Ok(CString::new(format!("wh{}", self.made.get())).unwrap())
            };
            let link = |from: &CString| {
                self.links.borrow_mut().push(from.clone());
                match self.answers.borrow_mut().pop().flatten() {
                    None => Ok(c"link".to_owned()),
                    Some(errno) => Err(crate::error::Error::from_errno(errno)),
                }
            };
            share_whiteout(shared, sharing, make, make, link).unwrap()
        }
    }

    #[test]
    fn whiteouts_link_to_one_until_it_is_full_or_linking_fails() {
        let sharing = AtomicBool::new(true);
        let mut shared = None;
        // One whiteout made, then links to it.
        let fs = FakeFs::new(&[None, None, Some(libc::EMLINK), None]);
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"link");
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"link");
        assert_eq!(fs.made.get(), 1);
        // Full: another one is made, and linked to from then on.
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"link");
        assert_eq!(fs.made.get(), 2);
        assert_eq!(shared.as_deref(), Some(c"wh2"));
        assert_eq!(fs.links.borrow().last(), Some(&c"wh2".to_owned()));
        assert!(sharing.load(Ordering::Relaxed));

        // Removed behind ufs's back: made again and linked.
        let fs = FakeFs::new(&[Some(libc::ENOENT), None]);
        let mut shared = Some(c"gone".to_owned());
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"link");
        assert_eq!(*fs.links.borrow(), [c"gone".to_owned(), c"wh1".to_owned()]);

        // Any other failure: a whiteout of its own, and sharing ends.
        let fs = FakeFs::new(&[Some(libc::EPERM)]);
        let mut shared = None;
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"wh2");
        assert!(!sharing.load(Ordering::Relaxed));
        assert_eq!(fs.get(&mut shared, &sharing).as_bytes(), b"wh3");
        assert_eq!(
            fs.links.borrow().len(),
            1,
            "no link tried once sharing ended"
        );
    }

    #[test]
    fn temp_names_are_recognised() {
        for name in ["#ufs.1.0", "#ufs.12345.678"] {
            assert!(is_temp_name(name.as_bytes()), "{name}");
        }
        for name in [
            "#ufs.1.",
            "#ufs..0",
            "#ufs.1",
            "#ufs.a.0",
            "#ufs.1.0x",
            "ufs.1.0",
            "#123",
            "work",
            "#ufs.1.2.3",
        ] {
            assert!(!is_temp_name(name.as_bytes()), "{name}");
        }
    }
}
