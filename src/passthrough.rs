//! FUSE passthrough (kernel 6.9 and later): the kernel reads, writes and maps a regular file on
//! the real file itself, with no request to ufs, through a *backing id* ufs registers for that
//! file. This is the glue's part (backing ids are FUSE objects); the core says per handle
//! whether passthrough keeps the overlay's semantics (`Opened::passthrough`). No kernel overlay
//! counterpart: the kernel overlay always does its I/O on the real files.
//!
//! Invariants, from the kernel's rules (`fs/fuse/iomode.c`):
//! - While an inode has a backing file, every open of it must be a passthrough open with that
//!   backing file (anything else fails the caller's `open` with `EINVAL`), `O_DIRECT` ones
//!   included (the kernel then does direct I/O on the backing file).
//! - A passthrough open is refused while handles that use the page cache are open (`EBUSY`);
//!   an open with `FOPEN_DIRECT_IO` (every read and write through ufs, without the page cache)
//!   may live beside those.
//!
//! ufs therefore counts, per node, the open handles of each kind. A handle that may not join a
//! node's backing file is refused with `EBUSY`; the core makes that case unreachable (a node's
//! real file is in the upper layer for as long as it has passthrough handles, see
//! `Opened::passthrough`), so it only logs a warning. A passthrough candidate beside cached
//! handles goes through ufs with `FOPEN_DIRECT_IO`.
//! - A node's backing id lives while one of its passthrough handles is open: it is released (its
//!   `BackingId` dropped, which closes it in the kernel) with the last one.
//! - Registering a backing file needs `CAP_SYS_ADMIN` in the initial user namespace. If the first
//!   attempt fails, passthrough is turned off for the mount before any handle used it, so every
//!   later open is an ordinary one; a failure after a success falls back to `FOPEN_DIRECT_IO`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fuser::BackingId;

/// Not negotiated, or turned off after the first registration failed.
const OFF: u8 = 0;
/// Negotiated, no backing file registered yet.
const OFFERED: u8 = 1;
/// At least one backing file registered: passthrough works here.
const IN_USE: u8 = 2;

/// How one node's open handles do their I/O.
enum NodeIo {
    /// Through ufs and the page cache.
    Cached { opens: usize },
    /// On the real file `real` (`st_dev`, `st_ino`) through backing `id`.
    Backed {
        id: Arc<BackingId>,
        real: (u64, u64),
        opens: usize,
        /// Of `opens`, the handles open for writing. While there are any, the node's
        /// attributes are not cached in the kernel ([`Passthrough::attrs_volatile`]): a write
        /// through a shared mapping changes the real file's `mtime` and `ctime` in the kernel
        /// without a request, so only asking ufs again shows it.
        writers: usize,
    },
}

/// How a new handle is to do its I/O.
pub enum Mode {
    /// Through ufs, with the page cache (the reply's usual flags).
    Cached,
    /// In the kernel, on this backing file.
    Passthrough(Arc<BackingId>),
    /// Through ufs without the page cache (`FOPEN_DIRECT_IO`): allowed beside cached handles
    /// and where the node has no backing file.
    Direct,
    /// The node has a backing file this handle may not use: the open must fail.
    Refused,
}

/// What a new handle asks for.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// The core allows passthrough for it (`Opened::passthrough`).
    pub allowed: bool,
    /// Opened with `O_DIRECT`.
    pub direct: bool,
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub writes: bool,
}

/// The mount's passthrough state: whether it is on, and each open node's backing.
pub struct Passthrough {
    state: AtomicU8,
    /// The kernel agreed to the writeback cache instead (`FUSE_WRITEBACK_CACHE`).
    writeback_cache: AtomicBool,
    nodes: DashMap<u64, NodeIo>,
    /// The node of each handle counted in `nodes`, and whether the handle counts as a writer.
    handles: DashMap<u64, (u64, bool)>,
}

impl Default for Passthrough {
    fn default() -> Self {
        Passthrough {
            state: AtomicU8::new(OFF),
            writeback_cache: AtomicBool::new(false),
            nodes: DashMap::new(),
            handles: DashMap::new(),
        }
    }
}

impl Passthrough {
    /// The kernel agreed to passthrough (`FUSE_PASSTHROUGH` in `init`).
    pub fn offered(&self) {
        self.state.store(OFFERED, Ordering::Release);
    }

    /// The kernel agreed to the writeback cache (`FUSE_WRITEBACK_CACHE` in `init`), which
    /// excludes passthrough.
    pub fn writeback_cache_on(&self) {
        self.writeback_cache.store(true, Ordering::Release);
    }

    /// Whether passthrough may still be used.
    pub fn is_on(&self) -> bool {
        self.state.load(Ordering::Acquire) != OFF
    }

    /// Decides how handle `fh` of node `node` does its I/O (`want`); `real` gives the identity (`st_dev`, `st_ino`) of the handle's
    /// real file, asked only when it matters (handles of one node share a backing file only
    /// when they have the same real file); `register` registers that file as a backing file.
    pub fn choose(
        &self,
        node: u64,
        fh: u64,
        want: Want,
        real: impl Fn() -> Option<(u64, u64)>,
        register: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Mode {
        let neutral = if want.direct {
            Mode::Direct
        } else {
            Mode::Cached
        };
        if !self.is_on() {
            return neutral;
        }
        let mut writer = false;
        let mode = match self.nodes.entry(node) {
            Entry::Occupied(mut e) => match e.get_mut() {
                NodeIo::Backed {
                    id,
                    real: r,
                    opens,
                    writers,
                } => {
                    if !(want.allowed && real() == Some(*r)) {
                        log::warn!(
                            "node {node} is open for passthrough on another real file; \
                             refusing a second kind of handle"
                        );
                        return Mode::Refused;
                    }
                    *opens += 1;
                    if want.writes {
                        *writers += 1;
                        writer = true;
                    }
                    Mode::Passthrough(id.clone())
                }
                // `O_DIRECT` handles are neutral beside cached ones.
                NodeIo::Cached { .. } if want.direct => return Mode::Direct,
                NodeIo::Cached { opens } if !want.allowed => {
                    *opens += 1;
                    Mode::Cached
                }
                // A passthrough candidate beside cached handles (a lower file's, before its
                // copy-up): through ufs, without the page cache.
                NodeIo::Cached { .. } => return Mode::Direct,
            },
            Entry::Vacant(v) if want.allowed => {
                let registered = real()
                    .ok_or_else(|| std::io::Error::other("cannot stat the real file"))
                    .and_then(|real| Ok((real, register()?)));
                match registered {
                    Ok((real, id)) => {
                        self.state.store(IN_USE, Ordering::Release);
                        let id = Arc::new(id);
                        v.insert(NodeIo::Backed {
                            id: id.clone(),
                            real,
                            opens: 1,
                            writers: usize::from(want.writes),
                        });
                        writer = want.writes;
                        Mode::Passthrough(id)
                    }
                    Err(e) => {
                        drop(v);
                        return self.registration_failed(&e, neutral);
                    }
                }
            }
            Entry::Vacant(_) if want.direct => return Mode::Direct,
            Entry::Vacant(v) => {
                v.insert(NodeIo::Cached { opens: 1 });
                Mode::Cached
            }
        };
        self.handles.insert(fh, (node, writer));
        mode
    }

    /// Whether the kernel must not cache node `node`'s attributes now: it has passthrough
    /// handles open for writing, whose writes through a shared mapping change the real file's
    /// times with no request to ufs (the kernel updates them on the backing file only). Each
    /// `getattr` then asks ufs, which reads them from the real file.
    pub fn attrs_volatile(&self, node: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|io| matches!(*io, NodeIo::Backed { writers, .. } if writers > 0))
    }

    /// A backing file could not be registered: before any was, passthrough is turned off for
    /// the mount (so no handle of either kind is counted from now on); after, this handle goes
    /// through ufs without the page cache.
    fn registration_failed(&self, e: &std::io::Error, neutral: Mode) -> Mode {
        match self
            .state
            .compare_exchange(OFFERED, OFF, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                log::info!("FUSE passthrough is unavailable ({e}); I/O goes through ufs");
                neutral
            }
            Err(_) => {
                log::debug!("cannot register a backing file ({e}); direct I/O instead");
                Mode::Direct
            }
        }
    }

    /// Handle `fh` was released: the node's count drops, and its backing file goes with its
    /// last passthrough handle.
    pub fn release(&self, fh: u64) {
        let Some((_, (node, writer))) = self.handles.remove(&fh) else {
            return;
        };
        if let Entry::Occupied(mut e) = self.nodes.entry(node) {
            let opens = match e.get_mut() {
                NodeIo::Cached { opens } => {
                    *opens = opens.saturating_sub(1);
                    *opens
                }
                NodeIo::Backed { opens, writers, .. } => {
                    if writer {
                        *writers = writers.saturating_sub(1);
                    }
                    *opens = opens.saturating_sub(1);
                    *opens
                }
            };
            if opens == 0 {
                e.remove();
            }
        }
    }

    /// What `ufs status` reports: the state, and the backing files registered now with the
    /// handles that use them.
    pub fn usage(&self) -> Usage {
        let state = match self.state.load(Ordering::Acquire) {
            OFF => "off",
            OFFERED => "offered",
            _ => "in use",
        };
        let (mut backing_ids, mut handles) = (0, 0);
        for node in self.nodes.iter() {
            if let NodeIo::Backed { opens, .. } = node.value() {
                backing_ids += 1;
                handles += opens;
            }
        }
        Usage {
            state,
            backing_ids,
            handles,
            writeback_cache: self.writeback_cache.load(Ordering::Acquire),
        }
    }
}

/// Passthrough use at one moment ([`Passthrough::usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// `off` (not negotiated, or the first registration failed), `offered` (negotiated, no
    /// backing file registered yet) or `in use` (at least one was registered).
    pub state: &'static str,
    /// Backing ids registered now: one per node with passthrough handles open.
    pub backing_ids: usize,
    /// Open handles doing their I/O in the kernel.
    pub handles: usize,
    /// The mount uses the kernel's writeback cache (so no passthrough).
    pub writeback_cache: bool,
}

/// Whether this process may register backing files: `CAP_SYS_ADMIN` in its effective set, in
/// the initial user namespace (the kernel's rule for `FUSE_DEV_IOC_BACKING_OPEN`). Read from
/// `/proc/self`; anything unreadable counts as no.
pub fn may_register() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    /// The initial user namespace's inode number (`PROC_USER_INIT_INO`).
    const INIT_USER_NS: &str = "user:[4026531837]";
    let in_init_ns =
        std::fs::read_link("/proc/self/ns/user").is_ok_and(|l| l.as_os_str() == INIT_USER_NS);
    let has_cap = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
    });
    in_init_ns && has_cap
}
