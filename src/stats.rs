//! Live counters of one mount: requests by type (count and total time), errors by errno,
//! copy-ups, and the answers the core's caches gave. Read by `ufs status MERGED` and on
//! `SIGUSR1` (`crate::status`). No kernel overlay counterpart (the kernel overlay keeps no
//! statistics; FUSE's own `/sys/fs/fuse/connections/N/` only counts waiting requests).
//!
//! Invariants: every counter is a relaxed atomic that only grows, so the request path takes no
//! lock and allocates nothing; a reader sees each counter exact but the set of them not as one
//! snapshot (a request counted in one may not be in another yet), which a report can live with.
//! Each request type's pair sits on its own cache line, so threads answering different types do
//! not share one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Declares [`Op`] and its kernel names together, so that the two cannot disagree.
macro_rules! ops {
    ($($variant:ident => $name:literal,)*) => {
        /// A FUSE request type, named as the kernel names it (`FUSE_LOOKUP` is `LOOKUP`).
        /// fuser hands ufs each node of a `BATCH_FORGET` as one `FORGET`, so `FORGET` counts
        /// the nodes forgotten, and `RENAME` also counts `RENAME2`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Op {
            $($variant,)*
        }

        impl Op {
            /// Every request type, in the order of the kernel's opcodes.
            pub const ALL: &'static [Op] = &[$(Op::$variant,)*];

            /// The kernel's name for the request, without its `FUSE_` prefix.
            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name,)*
                }
            }
        }
    };
}

ops! {
    Lookup => "LOOKUP",
    Forget => "FORGET",
    Getattr => "GETATTR",
    Setattr => "SETATTR",
    Readlink => "READLINK",
    Symlink => "SYMLINK",
    Mknod => "MKNOD",
    Mkdir => "MKDIR",
    Unlink => "UNLINK",
    Rmdir => "RMDIR",
    Rename => "RENAME",
    Link => "LINK",
    Open => "OPEN",
    Read => "READ",
    Write => "WRITE",
    Statfs => "STATFS",
    Release => "RELEASE",
    Fsync => "FSYNC",
    Setxattr => "SETXATTR",
    Getxattr => "GETXATTR",
    Listxattr => "LISTXATTR",
    Removexattr => "REMOVEXATTR",
    Flush => "FLUSH",
    Init => "INIT",
    Opendir => "OPENDIR",
    Readdir => "READDIR",
    Releasedir => "RELEASEDIR",
    Fsyncdir => "FSYNCDIR",
    Access => "ACCESS",
    Create => "CREATE",
    Fallocate => "FALLOCATE",
    Readdirplus => "READDIRPLUS",
    Lseek => "LSEEK",
    CopyFileRange => "COPY_FILE_RANGE",
}

/// Errno values below this are counted one by one (Linux's largest is 133); any other value is
/// counted in slot 0, which no real errno uses.
const ERRNO_SLOTS: usize = 160;

/// One request type's count and total time, alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct OpCounter {
    count: AtomicU64,
    nanos: AtomicU64,
}

/// The counters of one mount.
pub struct Stats {
    ops: [OpCounter; Op::ALL.len()],
    /// Errors answered, by errno; slot 0 holds those out of range.
    errors: [AtomicU64; ERRNO_SLOTS],
    /// Copy-ups that copied the whole object (data included, unless the caller was about to
    /// empty the file).
    copy_ups_full: AtomicU64,
    /// Copy-ups that made a metadata-only copy (`metacopy=on`).
    copy_ups_metadata: AtomicU64,
    /// Metadata-only copies whose data was copied later (on the first open for writing).
    metacopy_completed: AtomicU64,
    /// Bytes of file data copied by copy-ups and completions (file sizes: holes and reflinked
    /// extents count, as they are part of the file).
    bytes_copied: AtomicU64,
    /// Lookups answered from a directory's cached merged listing (present or absent).
    lookups_listed: AtomicU64,
    /// Lookups that walked the layers.
    lookups_walked: AtomicU64,
    /// Merged listings built (a readdir or lookup that found none cached).
    listings_built: AtomicU64,
    /// Merged listings answered from the cache.
    listings_cached: AtomicU64,
    /// `getxattr` answered `ENODATA` from a node's remembered absence, with no system call.
    xattr_absent_hits: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: std::array::from_fn(|_| OpCounter::default()),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            copy_ups_full: AtomicU64::new(0),
            copy_ups_metadata: AtomicU64::new(0),
            metacopy_completed: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            lookups_listed: AtomicU64::new(0),
            lookups_walked: AtomicU64::new(0),
            listings_built: AtomicU64::new(0),
            listings_cached: AtomicU64::new(0),
            xattr_absent_hits: AtomicU64::new(0),
        }
    }
}

/// Times one request from its creation to its drop (after the reply was sent).
pub struct Timed<'a> {
    counter: &'a OpCounter,
    start: Instant,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counter.count.fetch_add(1, Ordering::Relaxed);
        self.counter.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A copy of the counters at one moment (each exact, see the module's comment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Request types that were seen: (type, count, total nanoseconds).
    pub ops: Vec<(Op, u64, u64)>,
    /// Errors that were answered: (errno, count); errno 0 stands for one out of range.
    pub errors: Vec<(i32, u64)>,
    pub copy_ups_full: u64,
    pub copy_ups_metadata: u64,
    pub metacopy_completed: u64,
    pub bytes_copied: u64,
    pub lookups_listed: u64,
    pub lookups_walked: u64,
    pub listings_built: u64,
    pub listings_cached: u64,
    pub xattr_absent_hits: u64,
}

impl Stats {
    /// Starts timing a request of type `op`; it is counted when the guard is dropped.
    pub fn timed(&self, op: Op) -> Timed<'_> {
        Timed {
            // `Op` is `repr(usize)` with one counter per variant.
            counter: &self.ops[op as usize],
            start: Instant::now(),
        }
    }

    /// Counts an error answered with `errno`.
    pub fn error(&self, errno: i32) {
        let slot = usize::try_from(errno)
            .ok()
            .filter(|&e| e < ERRNO_SLOTS)
            .unwrap_or(0);
        if let Some(c) = self.errors.get(slot) {
            bump(c);
        }
    }

    /// Counts a copy-up: metadata-only or not, with `bytes` of data copied.
    pub fn copied_up(&self, metadata_only: bool, bytes: u64) {
        bump(if metadata_only {
            &self.copy_ups_metadata
        } else {
            &self.copy_ups_full
        });
        self.bytes_copied.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts the completion of a metadata-only copy that copied `bytes` of data.
    pub fn metacopy_completed(&self, bytes: u64) {
        bump(&self.metacopy_completed);
        self.bytes_copied.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a lookup: answered from a cached listing (`listed`) or by walking the layers.
    pub fn lookup(&self, listed: bool) {
        bump(if listed {
            &self.lookups_listed
        } else {
            &self.lookups_walked
        });
    }

    /// Counts a merged listing asked for: found cached, or built.
    pub fn listing(&self, cached: bool) {
        bump(if cached {
            &self.listings_cached
        } else {
            &self.listings_built
        });
    }

    /// Counts a `getxattr` answered from a remembered absence.
    pub fn xattr_absent_hit(&self) {
        bump(&self.xattr_absent_hits);
    }

    pub fn snapshot(&self) -> Snapshot {
        let ops = Op::ALL
            .iter()
            .zip(&self.ops)
            .map(|(&op, c)| (op, read(&c.count), read(&c.nanos)))
            .filter(|&(_, count, _)| count > 0)
            .collect();
        let errors = self
            .errors
            .iter()
            .enumerate()
            .map(|(errno, c)| (errno as i32, read(c)))
            .filter(|&(_, count)| count > 0)
            .collect();
        Snapshot {
            ops,
            errors,
            copy_ups_full: read(&self.copy_ups_full),
            copy_ups_metadata: read(&self.copy_ups_metadata),
            metacopy_completed: read(&self.metacopy_completed),
            bytes_copied: read(&self.bytes_copied),
            lookups_listed: read(&self.lookups_listed),
            lookups_walked: read(&self.lookups_walked),
            listings_built: read(&self.listings_built),
            listings_cached: read(&self.listings_cached),
            xattr_absent_hits: read(&self.xattr_absent_hits),
        }
    }
}

/// The symbolic name of an errno (`ENOENT`), or `errno N` for one not in the table.
pub fn errno_name(errno: i32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::ESRCH, "ESRCH"),
        (libc::EINTR, "EINTR"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::ENOEXEC, "ENOEXEC"),
        (libc::EBADF, "EBADF"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EFAULT, "EFAULT"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENODEV, "ENODEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENFILE, "ENFILE"),
        (libc::EMFILE, "EMFILE"),
        (libc::ENOTTY, "ENOTTY"),
        (libc::ETXTBSY, "ETXTBSY"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ESPIPE, "ESPIPE"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::EPIPE, "EPIPE"),
        (libc::ERANGE, "ERANGE"),
        (libc::EDEADLK, "EDEADLK"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOLCK, "ENOLCK"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOVERFLOW, "EOVERFLOW"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ESTALE, "ESTALE"),
        (libc::EDQUOT, "EDQUOT"),
        (libc::ECANCELED, "ECANCELED"),
    ];
    NAMES
        .iter()
        .find(|&&(n, _)| n == errno)
        .map_or_else(|| format!("errno {errno}"), |&(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_indexed_in_order() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
        assert_eq!(Op::CopyFileRange.name(), "COPY_FILE_RANGE");
    }

    #[test]
    fn counters_add_up() {
        let s = Stats::default();
        for _ in 0..3 {
            drop(s.timed(Op::Lookup));
        }
        drop(s.timed(Op::Read));
        s.error(libc::ENOENT);
        s.error(libc::ENOENT);
        s.error(-1);
        s.error(100_000);
        s.copied_up(false, 10);
        s.copied_up(true, 0);
        s.metacopy_completed(5);
        s.lookup(true);
        s.lookup(false);
        s.listing(false);
        s.xattr_absent_hit();
        let snap = s.snapshot();
        let ops: Vec<(Op, u64)> = snap.ops.iter().map(|&(op, n, _)| (op, n)).collect();
        assert_eq!(ops, [(Op::Lookup, 3), (Op::Read, 1)]);
        assert_eq!(snap.errors, [(0, 2), (libc::ENOENT, 2)]);
        assert_eq!(
            (
                snap.copy_ups_full,
                snap.copy_ups_metadata,
                snap.metacopy_completed,
                snap.bytes_copied
            ),
            (1, 1, 1, 15)
        );
        assert_eq!((snap.lookups_listed, snap.lookups_walked), (1, 1));
        assert_eq!((snap.listings_built, snap.listings_cached), (1, 0));
        assert_eq!(snap.xattr_absent_hits, 1);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(0), "errno 0");
    }
}
