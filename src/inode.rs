//! The inode table: FUSE node ids, lookup counts, and the real entries behind each node.
//!
//! A node id is handed to the kernel by `lookup` (and `readdirplus`, `create`, ...) and lives
//! until the kernel forgets it as many times as it was looked up. The node id of an object is
//! the `st_ino` the mount reports for it (the root aside), so the same object always maps to the
//! same node, and hard links share one kernel inode. Kernel counterpart: `struct ovl_inode` and
//! `struct ovl_entry` (`fs/overlayfs/ovl_entry.h`).
//!
//! Locking: the table's shard lock of a node id serializes the node's creation, lookup-count
//! increment and removal, so a lookup racing with a forget never hands out a dead node. Under a
//! shard lock only a node's `location` mutex may be taken, never its `state` lock, so a long
//! copy-up (which holds `state`) cannot stall lookups of other nodes. See `docs/DESIGN.md`.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{ENOENT, Result};
use crate::kind::Kind;
use crate::listing::Listing;
use crate::name::Name;
use crate::sys;

/// FUSE's fixed node id for the root directory.
pub const ROOT_ID: u64 = 1;

/// One real entry behind a merged object, in one layer.
///
/// A directory is held by an `O_PATH` fd (directories are few, and every lookup inside one
/// needs it). A non-directory is named by its real parent directory (shared) and its name, and
/// opened when needed: holding one fd per file the kernel has cached would exhaust the open-file
/// limit on large trees. A non-directory that loses its last name while the kernel still holds
/// it (unlinked while open) is pinned by an fd first (`Held`).
#[derive(Debug, Clone)]
pub struct RealEntry {
    pub layer: usize,
    pub real: Real,
}

#[derive(Debug, Clone)]
pub enum Real {
    Held(Arc<OwnedFd>),
    Named { dir: Arc<OwnedFd>, name: Name },
}

/// An fd on a real object: borrowed from a held entry or opened for the call.
#[derive(Debug)]
pub enum ObjFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for ObjFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ObjFd::Borrowed(fd) => *fd,
            ObjFd::Owned(fd) => fd.as_fd(),
        }
    }
}

impl ObjFd<'_> {
    /// An owned fd: this one, or a duplicate of the borrowed one.
    pub fn into_owned(self) -> Result<OwnedFd> {
        match self {
            ObjFd::Borrowed(fd) => Ok(fd.try_clone_to_owned()?),
            ObjFd::Owned(fd) => Ok(fd),
        }
    }
}

impl RealEntry {
    /// An entry held by `fd` (a directory, a layer root, or a pinned file).
    pub fn new(layer: usize, fd: OwnedFd) -> Self {
        RealEntry {
            layer,
            real: Real::Held(Arc::new(fd)),
        }
    }

    pub fn held(layer: usize, fd: Arc<OwnedFd>) -> Self {
        RealEntry {
            layer,
            real: Real::Held(fd),
        }
    }

    /// A non-directory named `name` in the real directory `dir`.
    pub fn named(layer: usize, dir: Arc<OwnedFd>, name: &CStr) -> Self {
        RealEntry {
            layer,
            real: Real::Named {
                dir,
                name: Name::from_cstr(name),
            },
        }
    }

    /// An `O_PATH` fd on the object.
    pub fn fd(&self) -> Result<ObjFd<'_>> {
        match &self.real {
            Real::Held(fd) => Ok(ObjFd::Borrowed(fd.as_fd())),
            Real::Named { dir, name } => {
                Ok(ObjFd::Owned(sys::open_path(dir.as_fd(), name.as_cstr())?))
            }
        }
    }

    /// The shared fd of a held entry (a directory).
    pub fn dir_arc(&self) -> Result<&Arc<OwnedFd>> {
        match &self.real {
            Real::Held(fd) => Ok(fd),
            Real::Named { .. } => Err(crate::error::ENOTDIR),
        }
    }

    /// The fd of a held entry (a directory), without a syscall.
    pub fn dir_fd(&self) -> Result<BorrowedFd<'_>> {
        Ok(self.dir_arc()?.as_fd())
    }

    /// Opens the object (a regular file or directory) for I/O with `flags`.
    pub fn open_file(&self, flags: i32) -> Result<OwnedFd> {
        match &self.real {
            Real::Held(fd) => sys::reopen(fd.as_fd(), flags),
            Real::Named { dir, name } => {
                sys::openat(dir.as_fd(), name.as_cstr(), flags & !libc::O_CREAT, 0)
            }
        }
    }

    /// Whether both entries name the same place: the same real directory and name, or the same
    /// held fd.
    pub fn same_place(&self, other: &RealEntry) -> bool {
        match (&self.real, &other.real) {
            (Real::Named { dir: a, name: x }, Real::Named { dir: b, name: y }) => {
                Arc::ptr_eq(a, b) && x == y
            }
            (Real::Held(a), Real::Held(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// `stat` of the object, in one syscall.
    pub fn stat(&self) -> Result<libc::stat> {
        match &self.real {
            Real::Held(fd) => sys::fstat(fd.as_fd()),
            Real::Named { dir, name } => sys::fstatat(dir.as_fd(), name.as_cstr()),
        }
    }

    /// xattr `xname` of the object, in one syscall.
    pub fn getxattr(&self, xname: &CStr) -> Result<Vec<u8>> {
        match &self.real {
            Real::Held(fd) => sys::getxattr(fd.as_fd(), xname),
            Real::Named { dir, name } => sys::getxattr_at(dir.as_fd(), name.as_cstr(), xname),
        }
    }
}

/// The top-most of a list of real entries, as an error rather than a panic if the list is empty
/// (every node and every lookup result has at least one).
pub trait Top {
    fn top(&self) -> Result<&RealEntry>;
}

impl Top for [RealEntry] {
    fn top(&self) -> Result<&RealEntry> {
        self.first().ok_or(crate::error::EIO)
    }
}

/// The real entries of an object, top-down. For a directory: every real directory that takes
/// part in the merge (cut at an opaque one). For anything else: exactly one (two for a file
/// found through the index: the index entry and the lower file).
///
/// A snapshot, cheap to clone: one entry (nearly every node) is held inline, so that a node
/// costs no allocation for it; several share one allocation.
#[derive(Debug, Clone)]
pub struct Reals(RealsRepr);

#[derive(Debug, Clone)]
enum RealsRepr {
    One(RealEntry),
    Many(Arc<[RealEntry]>),
}

impl std::ops::Deref for Reals {
    type Target = [RealEntry];
    fn deref(&self) -> &[RealEntry] {
        match &self.0 {
            RealsRepr::One(e) => std::slice::from_ref(e),
            RealsRepr::Many(v) => v,
        }
    }
}

impl From<Vec<RealEntry>> for Reals {
    fn from(mut v: Vec<RealEntry>) -> Reals {
        match (v.pop(), v.is_empty()) {
            (Some(one), true) => Reals(RealsRepr::One(one)),
            (Some(last), false) => {
                v.push(last);
                Reals(RealsRepr::Many(Arc::from(v)))
            }
            (None, _) => Reals(RealsRepr::Many(Arc::from(v))),
        }
    }
}

/// The real entries of a node, behind the node's lock. Copy-up holds it for writing while it
/// builds the upper copy, so that one object is copied once.
#[derive(Debug)]
pub struct NodeState {
    pub reals: Reals,
    /// For a regular file whose upper entry is a metadata-only copy (`overlay.metacopy`): the
    /// lower entry that still holds its data. Boxed: few nodes have one.
    pub lower_data: Option<Box<RealEntry>>,
}

/// Where a node was last reached: its parent's node id and its name there. Kept apart from
/// [`NodeState`] so that lookups never wait for a copy-up in progress.
#[derive(Debug, Clone)]
pub struct Location {
    pub parent: u64,
    name: Name,
    /// Only for a non-directory reached by several names: allocated with the second one.
    links: Option<Box<Links>>,
}

/// The other names of a node with several links.
#[derive(Debug, Clone, Default)]
struct Links {
    /// Other names a non-directory with several links was reached by (most recent last,
    /// bounded): copy-up links the index entry under one that still names the object.
    aliases: Vec<(u64, OsString)>,
    /// Names of a lower file with several links whose copy-up broke away from it (without the
    /// index): an operation that reaches this node through one of them goes to that copy.
    broken: Vec<BrokenName>,
}

/// A name (`name` in directory node `parent`) that broke away from a node, and the real inode
/// number of the upper copy it got.
#[derive(Debug, Clone)]
pub struct BrokenName {
    pub parent: u64,
    pub name: OsString,
    pub copy: u64,
}

impl Location {
    fn new(parent: u64, name: &OsStr) -> Location {
        Location {
            parent,
            name: Name::new(name.as_bytes()),
            links: None,
        }
    }

    /// The name in `parent`.
    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.as_bytes())
    }

    /// Other names the node was reached by, most recent last.
    pub fn aliases(&self) -> &[(u64, OsString)] {
        self.links.as_deref().map_or(&[], |l| &l.aliases)
    }

    /// The real inode number of the copy that `name` in `parent` broke away to, if it did.
    pub fn broken_copy(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.links
            .as_deref()?
            .broken
            .iter()
            .find(|b| b.parent == parent && b.name == name)
            .map(|b| b.copy)
    }
}

/// The bit of `name` among [`ASKED_XATTRS`].
fn asked_bit(name: &std::ffi::OsStr) -> Option<u8> {
    ASKED_XATTRS
        .iter()
        .position(|n| name.as_encoded_bytes() == n.as_bytes())
        .map(|i| 1u8 << i)
}

/// How many other names of a hard-linked file a node remembers.
const MAX_ALIASES: usize = 8;

/// A node. Its size is the daemon's memory per object the kernel caches, so what only some
/// nodes need lives behind one pointer: a directory's listing cache (`dir`), a file's other
/// names (`Location::links`), a metadata-only copy's data entry (`NodeState::lower_data`);
/// names are held inline ([`Name`]) and one real entry inline ([`Reals`]).
#[derive(Debug)]
pub struct Inode {
    /// The `st_ino` reported for this object; fixed for the node's life. It is the node id
    /// too, but for the root's (see [`Inode::id`]).
    pub ino: u64,
    pub kind: Kind,
    root: bool,
    /// Which of [`ASKED_XATTRS`] the object is known not to have (bit `i` for name `i`): asked
    /// of every file by `ls -l` and the like, answered from here after the first time. Set only
    /// from a real answer, and cleared by every change of the node's xattrs or mode.
    absent_xattrs: AtomicU8,
    lookups: AtomicU64,
    pub state: RwLock<NodeState>,
    pub location: Mutex<Location>,
    /// For a directory: its listing cache and markers; `None` for anything else.
    dir: Option<Box<DirPart>>,
}

/// What only a directory node needs.
#[derive(Debug, Default)]
struct DirPart {
    /// Its merged listing, kept while nothing changes in it. `listing_gen` counts the changes;
    /// a listing built across a change is not kept.
    listing: Mutex<Option<(u64, Arc<Listing>)>>,
    listing_gen: AtomicU64,
    /// Lookups in it answered without a cached listing since it last changed.
    walks: AtomicU64,
    /// How many entries its last listing had.
    listed_len: AtomicU32,
    /// Held shared by whoever marks its upper `overlay.impure` and publishes the entry that
    /// needs the marker (copy-up, link, a rename from another directory), from before the mark
    /// until after the publish; tried exclusively by a listing that would remove a marker no
    /// entry needs, which skips the removal when it cannot have it. A leaf.
    impure_marker: RwLock<()>,
}

/// What the directory methods of a non-directory node work on: nothing is ever cached in it.
static NOT_A_DIR: DirPart = DirPart {
    listing: Mutex::new(None),
    listing_gen: AtomicU64::new(0),
    walks: AtomicU64::new(0),
    listed_len: AtomicU32::new(0),
    impure_marker: RwLock::new(()),
};

/// The xattrs asked of every file (`ls -l`: the SELinux label and the access ACL; the kernel,
/// before every write: the file capability it would have to drop), whose absence a node
/// remembers.
pub const ASKED_XATTRS: [&str; 4] = [
    "security.selinux",
    "system.posix_acl_access",
    "system.posix_acl_default",
    "security.capability",
];

impl Inode {
    fn new(root: bool, ino: u64, kind: Kind, state: NodeState, location: Location) -> Inode {
        Inode {
            ino,
            kind,
            root,
            absent_xattrs: AtomicU8::new(0),
            lookups: AtomicU64::new(1),
            state: RwLock::new(state),
            location: Mutex::new(location),
            dir: (kind == Kind::Directory).then(Box::default),
        }
    }

    /// The node id the kernel knows this node by.
    pub fn id(&self) -> u64 {
        if self.root { ROOT_ID } else { self.ino }
    }

    /// The directory part; for a non-directory, one where nothing is ever kept.
    fn dir(&self) -> &DirPart {
        self.dir.as_deref().unwrap_or(&NOT_A_DIR)
    }

    /// For a directory: the lock around marking its upper `overlay.impure` and publishing the
    /// entry that needs it (see `DirPart::impure_marker`).
    pub fn impure_marker(&self) -> &RwLock<()> {
        &self.dir().impure_marker
    }

    /// Where the data of a regular file is read from: the lower entry of a metadata-only copy,
    /// else the top real entry.
    pub fn data_source(&self) -> Option<RealEntry> {
        let st = self.state.read();
        st.lower_data
            .as_deref()
            .cloned()
            .or_else(|| st.reals.first().cloned())
    }

    /// Whether the object is known not to have xattr `name` (see `absent_xattrs`).
    pub fn known_absent(&self, name: &std::ffi::OsStr) -> bool {
        asked_bit(name).is_some_and(|b| self.absent_xattrs.load(Ordering::Acquire) & b != 0)
    }

    /// Remembers that the object has no xattr `name`, if it is one of [`ASKED_XATTRS`].
    pub fn remember_absent(&self, name: &std::ffi::OsStr) {
        if let Some(b) = asked_bit(name) {
            self.absent_xattrs.fetch_or(b, Ordering::AcqRel);
        }
    }

    /// Forgets every remembered absence: the node's xattrs or mode changed.
    pub fn forget_absent(&self) {
        self.absent_xattrs.store(0, Ordering::Release);
    }

    /// A snapshot of the real entries, usable without holding the node lock.
    pub fn reals(&self) -> Reals {
        self.state.read().reals.clone()
    }

    /// The cached listing of this directory, if it is still current.
    pub fn cached_listing(&self) -> Option<Arc<Listing>> {
        let dir = self.dir.as_deref()?;
        let generation = dir.listing_gen.load(Ordering::Acquire);
        match &*dir.listing.lock() {
            Some((g, l)) if *g == generation => Some(l.clone()),
            _ => None,
        }
    }

    /// The change count to pass to [`InodeTable::keep_listing`] for a listing built from now on.
    pub fn listing_generation(&self) -> u64 {
        self.dir().listing_gen.load(Ordering::Acquire)
    }

    /// Keeps `listing`, built when the change count was `gen`, unless something changed since;
    /// returns whether it kept it. See [`InodeTable::keep_listing`].
    fn keep_listing(&self, generation: u64, listing: Arc<Listing>) -> bool {
        let Some(dir) = self.dir.as_deref() else {
            return false;
        };
        dir.listed_len.store(
            listing.len().min(u32::MAX as usize) as u32,
            Ordering::Relaxed,
        );
        let mut slot = dir.listing.lock();
        if dir.listing_gen.load(Ordering::Acquire) == generation {
            *slot = Some((generation, listing));
            return true;
        }
        false
    }

    /// Drops the cached listing if it is still `listing`.
    fn drop_listing(&self, listing: &std::sync::Weak<Listing>) {
        let Some(dir) = self.dir.as_deref() else {
            return;
        };
        let mut slot = dir.listing.lock();
        if slot
            .as_ref()
            .is_some_and(|(_, l)| std::ptr::eq(Arc::as_ptr(l), listing.as_ptr()))
        {
            *slot = None;
            // Three more lookups earn it back (see `walked`), rather than the next one: else
            // lookups going round more directories than keep listings would list every time.
            dir.walks.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a lookup in this directory that had no cached listing to answer from; returns
    /// whether there have been enough of them that building the listing will pay off (a few
    /// names of one directory are usually looked up together, and one listing answers all of
    /// them, present or absent). A listing costs about one call per 64 entries plus a record
    /// read per entry with one, so a large directory needs more lookups between two changes to
    /// earn it: else a loop of renames, each with its two lookups, lists it again every time.
    pub fn walked(&self) -> bool {
        const WORTH_A_LISTING: u64 = 3;
        let Some(dir) = self.dir.as_deref() else {
            return false;
        };
        let threshold = WORTH_A_LISTING + u64::from(dir.listed_len.load(Ordering::Relaxed)) / 64;
        dir.walks.fetch_add(1, Ordering::Relaxed) + 1 >= threshold
    }

    /// Something changed in this directory: its listing must be built again.
    pub fn listing_changed(&self) {
        let Some(dir) = self.dir.as_deref() else {
            return;
        };
        dir.listing_gen.fetch_add(1, Ordering::AcqRel);
        *dir.listing.lock() = None;
        // A directory changed between lookups (a loop of creates or unlinks) would otherwise
        // be listed again for every lookup.
        dir.walks.store(0, Ordering::Relaxed);
    }

    /// Records that the copy-up of this node's name `name` in `parent` broke away from it, to
    /// the upper object with real inode number `copy`.
    pub fn broke_away(&self, parent: u64, name: &OsStr, copy: u64) {
        let mut l = self.location.lock();
        let links = l.links.get_or_insert_with(Box::default);
        links
            .broken
            .retain(|b| !(b.parent == parent && b.name == name));
        links.broken.push(BrokenName {
            parent,
            name: name.to_os_string(),
            copy,
        });
        if links.broken.len() > MAX_ALIASES {
            links.broken.remove(0);
        }
    }

    pub fn location(&self) -> Location {
        self.location.lock().clone()
    }

    pub fn set_location(&self, parent: u64, name: &OsStr) {
        let mut l = self.location.lock();
        if l.parent == parent && l.name() == name {
            return;
        }
        if self.kind != Kind::Directory {
            let old = (l.parent, l.name().to_os_string());
            let links = l.links.get_or_insert_with(Box::default);
            links
                .aliases
                .retain(|(p, n)| !(*p == parent && n == name) && *p != 0);
            if !old.1.is_empty() {
                links.aliases.push(old);
            }
            if links.aliases.len() > MAX_ALIASES {
                links.aliases.remove(0);
            }
        }
        l.parent = parent;
        l.name = Name::new(name.as_bytes());
    }
}

/// A node in the table's set, found by its node id ([`Slot::borrow`]): one pointer per slot
/// rather than a key and a pointer, which is 8 bytes less per slot and about 12 per cached
/// inode at the table's usual load.
#[derive(Debug, Clone)]
struct Slot(Arc<Inode>);

impl std::borrow::Borrow<u64> for Slot {
    /// The node id of a node in the set: its `st_ino` (the root is kept apart).
    fn borrow(&self) -> &u64 {
        &self.0.ino
    }
}

impl std::hash::Hash for Slot {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.ino.hash(state)
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        self.0.ino == other.0.ino
    }
}

impl Eq for Slot {}

#[derive(Debug, Default)]
pub struct InodeTable {
    /// The root (node 1), installed once and never forgotten.
    root: std::sync::OnceLock<Arc<Inode>>,
    /// The other live nodes, by node id: the `st_ino` the mount reports for the object (fuser
    /// sends `attr.ino` as the node id of an entry).
    nodes: dashmap::DashSet<Slot>,
    /// Nodes removed since the allocator was last asked to give freed memory back.
    removed: AtomicU64,
    /// The listings kept in directory nodes, oldest first: (node id, listing, its length).
    /// Bounded, so that a walk of a large tree does not keep the listing of every directory it
    /// passed (a listing helps the lookups that follow a `readdir` of the same directory). A
    /// leaf lock: nothing else is locked while it is held.
    kept: Mutex<std::collections::VecDeque<(u64, std::sync::Weak<Listing>, usize)>>,
}

/// At most this many directories keep their listing...
const KEPT_LISTINGS: usize = 32;
/// ...and no more entries than this in all (one directory's listing is always kept).
const KEPT_ENTRIES: usize = 32 * 1024;

/// After this many nodes are forgotten (a few hundred KiB of them), the daemon gives the freed
/// memory back to the system ([`sys::malloc_trim`]): the kernel forgets nodes in large batches
/// (memory pressure, `drop_caches`), and a daemon that served one large walk would otherwise
/// keep its peak size for the rest of its life.
const TRIM_AFTER: u64 = 2048;

impl InodeTable {
    pub fn new() -> Self {
        InodeTable {
            root: std::sync::OnceLock::new(),
            nodes: dashmap::DashSet::new(),
            removed: AtomicU64::new(0),
            kept: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Keeps `listing` in directory node `dir` (built when its change count was `generation`,
    /// see [`Inode::listing_generation`]), and drops the oldest kept listings beyond the bounds
    /// (32 listings, 32 Ki entries in all).
    pub fn keep_listing(&self, dir: &Inode, generation: u64, listing: Arc<Listing>) {
        let len = listing.len();
        let weak = Arc::downgrade(&listing);
        if !dir.keep_listing(generation, listing) {
            return;
        }
        let evicted: Vec<(u64, std::sync::Weak<Listing>, usize)> = {
            let mut kept = self.kept.lock();
            kept.push_back((dir.id(), weak, len));
            let mut total: usize = kept
                .iter()
                .filter(|(_, l, _)| l.strong_count() > 0)
                .map(|(_, _, n)| n)
                .sum();
            let mut out = Vec::new();
            while kept.len() > 1 && (kept.len() > KEPT_LISTINGS || total > KEPT_ENTRIES) {
                let Some(old) = kept.pop_front() else { break };
                if old.1.strong_count() > 0 {
                    total = total.saturating_sub(old.2);
                }
                out.push(old);
            }
            out
        };
        for (id, weak, _) in evicted {
            if let Ok(node) = self.get(id) {
                node.drop_listing(&weak);
            }
        }
    }

    /// Installs the root node, which is never forgotten.
    pub fn insert_root(&self, ino: u64, reals: Vec<RealEntry>) {
        let node = Arc::new(Inode::new(
            true,
            ino,
            Kind::Directory,
            NodeState {
                reals: Reals::from(reals),
                lower_data: None,
            },
            Location::new(ROOT_ID, OsStr::new("")),
        ));
        if self.root.set(node).is_err() {
            log::error!("a second root node was not installed");
        }
    }

    pub fn get(&self, id: u64) -> Result<Arc<Inode>> {
        if id == ROOT_ID {
            return self.root.get().cloned().ok_or(ENOENT);
        }
        self.nodes.get(&id).map(|n| n.0.clone()).ok_or(ENOENT)
    }

    /// Finds the live node for `ino`, or creates it with the state `state` makes, and counts
    /// one lookup. Returns the node and whether it was created. Real inode numbers are unique among live objects (a node's `O_PATH` fd keeps
    /// its object alive), so a live node with this number is this object.
    pub fn lookup_or_insert(
        &self,
        ino: u64,
        kind: Kind,
        parent: u64,
        name: &OsStr,
        state: impl FnOnce() -> NodeState,
    ) -> Result<(Arc<Inode>, bool)> {
        if let Some(found) = self.count_lookup(ino, kind, parent, name) {
            return found.map(|node| (node, false));
        }
        if ino == ROOT_ID {
            log::error!("inode number {ino} is the root's node id");
            return Err(crate::error::EIO);
        }
        let node = Arc::new(Inode::new(
            false,
            ino,
            kind,
            state(),
            Location::new(parent, name),
        ));
        if self.nodes.insert(Slot(node.clone())) {
            return Ok((node, true));
        }
        // Another lookup of the same object inserted its node first: count this lookup on that
        // one (the state made here is dropped). `state` was used up, so a node forgotten again
        // meanwhile is an error rather than a retry.
        match self.count_lookup(ino, kind, parent, name) {
            Some(found) => found.map(|node| (node, false)),
            None => {
                log::warn!("node {ino} was inserted and forgotten during a lookup");
                Err(crate::error::ESTALE)
            }
        }
    }

    /// Counts one lookup of live node `ino` reached as `name` in `parent`, if there is one.
    fn count_lookup(
        &self,
        ino: u64,
        kind: Kind,
        parent: u64,
        name: &OsStr,
    ) -> Option<Result<Arc<Inode>>> {
        let slot = self.nodes.get(&ino)?;
        let node = slot.0.clone();
        if node.kind != kind {
            log::error!(
                "inode number {ino} reused by a {kind:?} while a {:?} holds it",
                node.kind
            );
            return Some(Err(crate::error::EIO));
        }
        // Counted while the slot is held: a `forget`, which removes under the shard's write
        // lock, sees this lookup.
        node.lookups.fetch_add(1, Ordering::AcqRel);
        drop(slot);
        node.set_location(parent, name);
        Some(Ok(node))
    }

    /// Drops `n` lookups of node `id`; removes the node when none remain.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut known = false;
        let removed = self.nodes.remove_if(&id, |slot| {
            known = true;
            slot.0.lookups.fetch_sub(n, Ordering::AcqRel) <= n
        });
        if !known {
            log::warn!("forget of unknown node {id}");
        }
        // The node is freed here, outside the shard lock (unless a request still holds it).
        if removed.is_some()
            && self.removed.fetch_add(1, Ordering::Relaxed) + 1 >= TRIM_AFTER
            && self.removed.swap(0, Ordering::Relaxed) >= TRIM_AFTER
        {
            drop(removed);
            // No lock is held here. The table does not shrink by itself: its slots for the
            // forgotten nodes would stay allocated.
            self.nodes.shrink_to_fit();
            let released = sys::malloc_trim();
            log::debug!("forgot {TRIM_AFTER} nodes; memory given back: {released}");
        }
    }

    /// Live nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len() + usize::from(self.root.get().is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
