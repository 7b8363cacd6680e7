//! The core: one method per filesystem operation, each returning [`Result`].
//!
//! `fs.rs` decodes FUSE requests, calls these methods and encodes the replies; nothing here knows
//! about FUSE. Attributes are returned as `libc::stat` with `st_ino` (and `st_nlink` for merged
//! directories) already set to what the mount reports.

use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::copy_up::build::CopyData;
use crate::error::{EBADF, EISDIR, ENODATA, ENOTDIR, EROFS, Result};
use crate::handles::Handles;
pub use crate::handles::{DirEntries, DirHandle, FileHandle};
use crate::idmap::IdMap;
use crate::inode::{Inode, InodeTable, NodeState, ROOT_ID, RealEntry, Top};
use crate::kind::Kind;
use crate::layer::LayerStack;
use crate::listing::{DirEntry, Listing};
use crate::options::Options;
use crate::readdir;
use crate::records;
use crate::records::XattrNamespace;
use crate::stat_override::{self, StatOverride};
use crate::stats::Stats;
use crate::workdir::Workdir;
use crate::{lookup, sys};

/// What a create-type request makes.
#[derive(Debug, Clone, Copy)]
pub enum NewEntry<'a> {
    /// A regular file, opened with these flags.
    File {
        flags: i32,
    },
    Directory,
    /// A fifo, socket or device node; `file_type` is its `S_IFMT` bits.
    Node {
        file_type: u32,
        rdev: u64,
    },
    Symlink {
        target: &'a CStr,
    },
}

/// An entry handed to the kernel: a node id (one lookup counted) and its attributes.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub node: u64,
    pub attr: libc::stat,
}

/// How the core asks the kernel to drop what it cached of a node (see
/// [`Overlay::set_invalidator`]).
pub type Invalidator = Box<dyn Fn(u64, bool) + Send + Sync>;

/// What `open` answers besides the handle.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The data cannot change behind the kernel's back (a lower file), so its page cache may
    /// be kept across opens.
    pub keep_cache: bool,
    /// Opened with `O_DIRECT`: the kernel is told to bypass its page cache for this handle
    /// (FUSE's `FOPEN_DIRECT_IO`), and the real file is opened without `O_DIRECT`, since the
    /// buffers FUSE hands ufs need not meet the real file's alignment rules.
    pub direct_io: bool,
    /// The kernel may do this handle's I/O on the real file itself (FUSE passthrough): the real
    /// file is the node's object for as long as the handle lives, since it is in the upper layer
    /// or the mount never copies anything up. A lower file of a writable mount is not: after a
    /// copy-up its handles read the copy (see [`FileHandle::upper_file`]), which only ufs can do.
    pub passthrough: bool,
}

/// The caller of a request, for permission checks and for the entries it creates.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The umask ufs applies to an entry the caller creates where no default ACL does (see
    /// [`crate::acl`]): the caller's own when the kernel leaves it to ufs (`DONT_MASK`), else
    /// 0 (the kernel applied it already).
    pub umask: u32,
}

pub struct Overlay {
    layers: LayerStack,
    inodes: InodeTable,
    /// The open files and directories.
    handles: Handles,
    /// The mount's counters (`ufs status`).
    stats: Stats,
    read_only: bool,
    /// The work directory; present exactly when the mount is writable.
    work: Option<Workdir>,
    /// Rename directories with lower parts by recording a redirect (`redirect_dir=on`).
    redirect_dir: bool,
    /// Keep hard links of lower files linked across copy-up (`index=on`).
    index: bool,
    /// Copy only metadata for metadata changes of lower files (`metacopy=on`).
    metacopy: bool,
    /// Owners between disk and mount: `uidmapping=`/`gidmapping=` and the `squash_to_*`
    /// options.
    uids: IdMap,
    gids: IdMap,
    /// The xattr namespace of the records this mount reads and writes.
    record_ns: XattrNamespace,
    /// `static_nlink`: directories report one link.
    static_nlink: bool,
    /// `noxattrs=1`: xattr requests answer `EOPNOTSUPP`.
    noxattrs: bool,
    /// Some layer keeps stat records (`xattr_permissions=`).
    stat_records: bool,
    /// Tells the kernel to drop what it cached of a node: its attributes, and with `true` its
    /// cached contents too (a directory's listing). Set by the FUSE glue; used where something
    /// the kernel cached changes without a request that would tell it so.
    invalidator: std::sync::OnceLock<Invalidator>,
    /// The kernel keeps regular files' sizes and times itself and counts links down on its own
    /// at `unlink` (the FUSE writeback cache): see [`Overlay::set_kernel_caches_writes`].
    kernel_caches_writes: std::sync::atomic::AtomicBool,
}

impl Overlay {
    /// Sets the stack of `opts` up ([`crate::setup::prepare`]) and builds the root node.
    pub fn new(opts: &Options) -> std::io::Result<Overlay> {
        Self::with_dirs(opts, &crate::setup::named_dirs(opts)?)
    }

    /// [`Overlay::new`] on the directories of `opts` already opened (and checked).
    pub fn with_dirs(opts: &Options, dirs: &crate::layer::NamedDirs) -> std::io::Result<Overlay> {
        let crate::setup::Prepared {
            layers,
            work,
            read_only,
            record_ns,
        } = crate::setup::prepare_dirs(opts, dirs)?;
        let mut reals = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter() {
            reals.push(RealEntry::new(i, layer.root.try_clone()?));
        }
        let st = reals.top()?.stat().map_err(std::io::Error::from)?;
        let root_ino = layers.map_ino(0, st.st_ino);
        let inodes = InodeTable::new();
        inodes.insert_root(root_ino, reals);
        let stat_records = layers.iter().any(|(_, l)| l.stat_override.is_some());
        let squash_uid = opts.squash_to_uid.or(opts.squash_to_root.then_some(0));
        let squash_gid = opts.squash_to_gid.or(opts.squash_to_root.then_some(0));
        Ok(Overlay {
            uids: IdMap::new(opts.uid_mappings.clone(), squash_uid),
            gids: IdMap::new(opts.gid_mappings.clone(), squash_gid),
            record_ns,
            static_nlink: opts.static_nlink,
            noxattrs: opts.noxattrs,
            stat_records,
            redirect_dir: opts.redirect_dir,
            index: opts.index,
            metacopy: opts.metacopy,
            work,
            read_only,
            layers,
            inodes,
            handles: Handles::default(),
            stats: Stats::default(),
            invalidator: std::sync::OnceLock::new(),
            kernel_caches_writes: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `e` naming node `node` by the name it was last reached by (for the log). Never waits:
    /// a caller may hold the node's location lock while the error travels up.
    pub(crate) fn named(&self, e: crate::error::Error, node: u64) -> crate::error::Error {
        let name = self
            .inodes
            .get(node)
            .ok()
            .and_then(|n| n.location.try_lock().map(|l| l.name().to_os_string()));
        match name {
            Some(name) => e.named(&name),
            None => e,
        }
    }

    /// Installs how to make the kernel drop what it cached of a node.
    pub fn set_invalidator(&self, f: Invalidator) {
        if self.invalidator.set(f).is_err() {
            log::warn!("invalidator installed twice");
        }
    }

    /// The kernel agreed to the writeback cache. It then trusts its own link count of a file
    /// that loses a name (it drops one, and asks again only for the `ctime`), but a name of a
    /// lower file with other links is whited out and the object keeps its count, as on the
    /// kernel overlay; so a surviving node's attributes are marked stale at such a removal.
    pub fn set_kernel_caches_writes(&self) {
        self.kernel_caches_writes
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// After a name of cached node `node` was removed: with the writeback cache, the kernel
    /// must ask for its link count (see [`Overlay::set_kernel_caches_writes`]).
    pub(crate) fn name_removed(&self, node: Option<u64>) {
        if let Some(node) = node
            && self
                .kernel_caches_writes
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.invalidate(node, false);
        }
    }

    /// Asks the kernel to forget the attributes of node `node`, and with `contents` also its
    /// cached contents (a directory's listing).
    pub(crate) fn invalidate(&self, node: u64, contents: bool) {
        if let Some(f) = self.invalidator.get() {
            f(node, contents);
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn layers(&self) -> &LayerStack {
        &self.layers
    }

    pub(crate) fn inodes(&self) -> &InodeTable {
        &self.inodes
    }

    /// The mount's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How many nodes the kernel holds (the inode table's size, the root included).
    pub fn cached_inodes(&self) -> usize {
        self.inodes.len()
    }

    /// How many files and directories are open: (files, directories).
    pub fn open_handles(&self) -> (usize, usize) {
        self.handles.counts()
    }

    /// The work directory: present exactly when the mount is writable.
    pub(crate) fn workdir(&self) -> Option<&Workdir> {
        self.work.as_ref()
    }

    /// The upper layer's index and work directory, or `EROFS` for a read-only mount.
    pub(crate) fn upper_layer(&self) -> Result<(usize, &Workdir)> {
        match (self.layers.upper(), &self.work) {
            (Some(u), Some(w)) if !self.is_read_only() => Ok((u, w)),
            _ => Err(EROFS),
        }
    }

    /// `redirect_dir=on`: directories with lower parts are renamed by recording a redirect.
    pub(crate) fn redirect_dir(&self) -> bool {
        self.redirect_dir
    }

    /// `index=on`: hard links of lower files stay linked across copy-up.
    pub(crate) fn index(&self) -> bool {
        self.index
    }

    /// `metacopy=on`: metadata changes of lower files copy only metadata.
    pub(crate) fn metacopy(&self) -> bool {
        self.metacopy
    }

    /// Owners between disk and mount: users.
    pub(crate) fn uids(&self) -> &IdMap {
        &self.uids
    }

    /// Owners between disk and mount: groups.
    pub(crate) fn gids(&self) -> &IdMap {
        &self.gids
    }

    /// The xattr namespace of the records this mount reads and writes.
    pub(crate) fn record_ns(&self) -> XattrNamespace {
        self.record_ns
    }

    /// Turns the owner of attributes about to be reported into the mount's ids.
    fn present(&self, st: &mut libc::stat) {
        st.st_uid = self.uids.to_mount(st.st_uid);
        st.st_gid = self.gids.to_mount(st.st_gid);
    }

    /// Attributes of a node as the mount reports them.
    pub(crate) fn attr(&self, node: &Inode) -> Result<libc::stat> {
        self.attr_from(node, None)
    }

    /// [`Overlay::attr`], from `top_stat` when it is given: the `stat` of the node's top real
    /// entry, just taken by the request that made the node (which then spends no second one).
    fn attr_from(&self, node: &Inode, top_stat: Option<libc::stat>) -> Result<libc::stat> {
        let mut st = self.real_attr(node, top_stat)?;
        self.present(&mut st);
        Ok(st)
    }

    fn real_attr(&self, node: &Inode, top_stat: Option<libc::stat>) -> Result<libc::stat> {
        let (reals, lower_data) = {
            let state = node.state.read();
            (state.reals.clone(), state.lower_data.clone())
        };
        let top = reals.top()?;
        let mut st = match top_stat {
            Some(st) => st,
            None => top.stat()?,
        };
        if let Some(name) = self.layers.stat_override(top.layer) {
            // Reaching a named entry's fd costs an open: only where records are kept.
            stat_override::apply(top.fd()?.as_fd(), Some(name), node.kind, &mut st)?;
        }
        st.st_ino = node.ino;
        if let Some(data) = &lower_data {
            // A metadata-only copy: the blocks are the lower file's.
            st.st_blocks = data.stat()?.st_blocks;
        }
        if node.kind == Kind::Directory && (reals.len() > 1 || self.static_nlink) {
            // Like the kernel: the link count of a merged directory cannot be known cheaply.
            st.st_nlink = 1;
        } else if self.index
            && node.kind != Kind::Directory
            && (st.st_nlink > 1 || reals.len() > 1)
            && Some(top.layer) == self.layers.upper()
        {
            // Perhaps an indexed copy: one of its links is the index entry, and names still
            // only in a lower layer count too (the kernel's `overlay.nlink` record).
            if let Some(n) = crate::records::nlink_record(top, self.record_ns)? {
                st.st_nlink = (st.st_nlink as i64 + n).max(1) as u64;
            } else if reals.len() > 1 {
                st.st_nlink = st
                    .st_nlink
                    .saturating_sub(1)
                    .max(reals.get(1).ok_or(crate::error::EIO)?.stat()?.st_nlink);
            }
        }
        Ok(st)
    }

    pub(crate) fn dir_node(&self, id: u64) -> Result<Arc<Inode>> {
        let node = self.inodes.get(id)?;
        if node.kind != Kind::Directory {
            return Err(ENOTDIR);
        }
        Ok(node)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        self.lookup_steps(parent, name)
            .map_err(|e| e.context("lookup").named(name))
    }

    fn lookup_steps(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        let dir = self.dir_node(parent)?;
        let parents = dir.reals();
        let mut listed = self.lookup_listed(&dir, &parents, name)?;
        if matches!(listed, Listed::Unknown) && dir.cached_listing().is_none() && dir.walked() {
            self.listing(&dir)?;
            listed = self.lookup_listed(&dir, &parents, name)?;
        }
        self.stats.lookup(!matches!(listed, Listed::Unknown));
        let (mut resolved, listed_ino) = match listed {
            Listed::Absent => return Err(crate::error::ENOENT),
            Listed::Found(r, ino) => (*r, Some(ino)),
            Listed::Unknown => (lookup::lookup(&self.layers, &parents, name)?, None),
        };
        let before = resolved.reals.top()?.layer;
        self.find_in_index(&mut resolved)?;
        let ino = match listed_ino {
            Some(ino) if resolved.reals.top()?.layer == before => ino,
            _ => self.ino_of(resolved.reals.top()?, &resolved.stat)?,
        };
        let kind = resolved.kind;
        // The `stat` of the top real entry (after `find_in_index`, of the index entry).
        let top_stat = resolved.stat;
        let fresh = resolved.reals.top()?.clone();
        // A name resolved through the index: the index entry with the lower file beside it.
        let indexed =
            (kind != Kind::Directory && resolved.reals.len() > 1).then(|| resolved.reals.clone());
        let (node, created) =
            self.inodes
                .lookup_or_insert(ino, kind, parent, name, || NodeState {
                    reals: crate::inode::Reals::from(resolved.reals),
                    lower_data: resolved.lower_data.map(Box::new),
                })?;
        if !created && kind != Kind::Directory {
            match indexed {
                Some(reals) => self.adopt_index_entry(&node, reals),
                None => self.refresh_name(&node, fresh),
            }
        }
        // A node made from this walk has its top `stat` already; a live one may have other
        // real entries than the walk found (a copy-up since), so it is asked again.
        self.entry_from(&node, created.then_some(top_stat))
    }

    /// The entry answer for a node that was just counted one lookup: its attributes (from
    /// `top_stat`, the node's top `stat`, when the caller just took it: see
    /// [`Overlay::attr_from`]), or the error with the count undone (the kernel never sees the
    /// node).
    pub(crate) fn entry_from(&self, node: &Inode, top_stat: Option<libc::stat>) -> Result<Entry> {
        match self.attr_from(node, top_stat) {
            Ok(attr) => Ok(Entry {
                node: node.id(),
                attr,
            }),
            Err(e) => {
                self.inodes.forget(node.id(), 1);
                Err(e)
            }
        }
    }

    /// The number the mount reports for the real entry `real` (with `stat` `st`): its record
    /// when it was copied up (this mount or an earlier one, see [`crate::records::recorded_ino`]
    /// for records in lower layers), else its mapped real number.
    pub(crate) fn ino_of(&self, real: &RealEntry, st: &libc::stat) -> Result<u64> {
        let in_upper = Some(real.layer) == self.layers.upper();
        if in_upper && let Some(ino) = self.layers.copied_up(st.st_ino) {
            return Ok(ino);
        }
        match crate::records::recorded_ino(real, Some(st), in_upper, self.record_ns)? {
            Some(ino) => Ok(ino),
            None => Ok(self.layers.map_ino(real.layer, st.st_ino)),
        }
    }

    pub fn forget(&self, node: u64, n: u64) {
        self.inodes.forget(node, n);
    }

    /// Answers a lookup from the directory's cached listing where that is exact: a name not
    /// listed does not exist, and a lower non-directory is the listed layer's entry (its number is
    /// the listed `d_ino`, so `stat` and `readdir` agree by construction). Directories (merges)
    /// and upper files (metadata-only copies) take the full walk.
    fn lookup_listed(&self, dir: &Inode, parents: &[RealEntry], name: &OsStr) -> Result<Listed> {
        let Some(listing) = dir.cached_listing() else {
            return Ok(Listed::Unknown);
        };
        let Some(e) = listing.find(name) else {
            return Ok(if crate::whiteout::is_hidden_name(name) {
                Listed::Unknown
            } else {
                Listed::Absent
            });
        };
        if e.kind == Kind::Directory || Some(e.layer) == self.layers.upper() {
            return Ok(Listed::Unknown);
        }
        let Some(parent) = parents.iter().find(|p| p.layer == e.layer) else {
            return Ok(Listed::Unknown);
        };
        let real = RealEntry::named(e.layer, parent.dir_arc()?.clone(), &sys::cstr(name)?);
        let st = match real.stat() {
            Ok(st) => st,
            Err(err) if err.errno() == libc::ENOENT => return Ok(Listed::Unknown),
            Err(err) => return Err(err),
        };
        // The listed number is the layer's `d_ino`, which only a `stat` of the very entry can
        // confirm (a filesystem may give every entry one `d_ino`: taken as it is, distinct files
        // would share a node and each other's data). A regular file in a layer with layers
        // below may be a metadata-only copy, whose data is elsewhere: the full walk finds it.
        if Kind::from_mode(st.st_mode) != Some(e.kind)
            || st.st_ino != e.real_ino
            || (e.kind == Kind::Regular
                && self.layers.may_have_data_below(e.layer)
                && match real.getxattr(self.record_ns.metacopy()) {
                    Ok(_) => true,
                    Err(err) if records::is_no_xattr(err.errno()) => false,
                    Err(err) => return Err(err),
                })
        {
            return Ok(Listed::Unknown);
        }
        Ok(Listed::Found(
            Box::new(lookup::Resolved {
                kind: e.kind,
                stat: st,
                reals: vec![real],
                lower_data: None,
            }),
            e.ino,
        ))
    }

    /// A live non-directory node reached again by name: when the name its real entry was
    /// recorded under has gone (another name of a hard-linked file was removed), it takes the
    /// name just resolved. A lower entry never replaces an upper one (the node may have been
    /// copied up since the name was resolved).
    fn refresh_name(&self, node: &Inode, fresh: RealEntry) {
        let current = match node.reals().first() {
            Some(c) => c.clone(),
            None => return,
        };
        // The common case, a name reached again, costs no syscall.
        if !matches!(current.real, crate::inode::Real::Named { .. })
            || current.same_place(&fresh)
            || fresh.layer > current.layer
            || current.stat().is_ok()
        {
            return;
        }
        let mut st = node.state.write();
        if st.reals.first().is_some_and(|c| c.layer >= fresh.layer) {
            let mut reals = st.reals.to_vec();
            if let Some(slot) = reals.first_mut() {
                *slot = fresh;
            }
            st.reals = crate::inode::Reals::from(reals);
        }
    }

    /// What the kernel must not cache about a node (`attr` is what it is told now): its
    /// attributes (`.0`), and also the names that lead to it (`.1`). A metadata-only copy's
    /// size in blocks and times change when its data is copied, which can happen inside an
    /// `open`. The names of a lower file with several links are looked up on every use in a
    /// writable mount, so that ufs knows which name an operation comes through (FUSE does not
    /// say): without the index that name breaks away with its own number, with it that name is
    /// the one copied up, or linked up later (the kernel's `ovl_link_up`).
    pub fn volatile(&self, node: u64, attr: &libc::stat) -> (bool, bool) {
        let Ok(n) = self.inodes.get(node) else {
            return (false, false);
        };
        let st = n.state.read();
        let lower_top = st
            .reals
            .first()
            .is_some_and(|r| Some(r.layer) != self.layers.upper());
        let writable = !self.read_only && self.work.is_some();
        // With the index, an upper name of an indexed copy counts too: a lower-only name of the
        // same node may be the one last looked up while the operation comes through this one.
        let names = n.kind != Kind::Directory
            && writable
            && attr.st_nlink > 1
            && (lower_top || self.index || st.reals.len() > 1);
        (names || st.lower_data.is_some(), names)
    }

    /// Whether a copy-up of the lower non-directory `node` (with attributes `st`) breaks it
    /// away from its other names: it has several and the index is off.
    pub(crate) fn breaks_links(&self, node: &Inode, st: &libc::stat) -> bool {
        node.kind != Kind::Directory && st.st_nlink > 1 && self.may_break_links()
    }

    /// Whether a copy-up can break a name of a hard link away: a writable mount without the
    /// index.
    fn may_break_links(&self) -> bool {
        !self.read_only && self.work.as_ref().is_some_and(|w| w.index.is_none())
    }

    /// Attributes of a node; through the open file `fh` when the kernel names one and it is
    /// not the node's object any more (a copy that broke away from a lower file's other names),
    /// or when the node's object cannot be reached (unlinked while open).
    pub fn getattr(&self, node: u64, fh: Option<u64>) -> Result<libc::stat> {
        let node = self.inodes.get(node)?;
        let handle = fh.and_then(|fh| self.handles.file(fh).ok());
        let through_file = |h: &FileHandle| -> Result<libc::stat> {
            let mut st = sys::fstat(h.file.as_fd())?;
            stat_override::apply(
                h.file.as_fd(),
                self.layers.stat_override(h.layer),
                node.kind,
                &mut st,
            )?;
            st.st_ino = h.ino;
            self.present(&mut st);
            Ok(st)
        };
        match handle {
            Some(h) if h.ino != node.ino => through_file(&h),
            Some(h) => match self.attr_as_reached(&node) {
                Err(e) if e.errno() == libc::ENOENT && node.state.read().lower_data.is_none() => {
                    through_file(&h)
                }
                other => other,
            },
            None => self.attr_as_reached(&node),
        }
    }

    /// Attributes of a node as reached by the name it was last looked up by: when that name
    /// broke away from the node (a copy-up without the index, see `Overlay::writable`), the
    /// request most likely comes through a file opened by that name, so it answers for the copy.
    pub(crate) fn attr_as_reached(&self, node: &Inode) -> Result<libc::stat> {
        let reached = {
            let l = node.location.lock();
            l.broken_copy(l.parent, l.name())
                .map(|copy| (l.parent, l.name().to_os_string(), copy))
        };
        let Some((parent, name, copy)) = reached else {
            return self.attr(node);
        };
        match self.broken_copy_node(parent, &name, copy) {
            Ok(found) if found.kind == node.kind => self.attr(&found),
            _ => self.attr(node),
        }
    }

    /// Pins the live node of the non-directory `resolved` (about to lose the name it is known
    /// by) to its object with an fd, so that it keeps answering while the kernel holds it.
    pub(crate) fn pin_if_alive(&self, resolved: &lookup::Resolved) -> Result<Option<u64>> {
        if resolved.kind == Kind::Directory {
            return Ok(None);
        }
        let ino = self.ino_of(resolved.reals.top()?, &resolved.stat)?;
        let Ok(node) = self.inodes.get(ino) else {
            return Ok(None);
        };
        let mut st = node.state.write();
        if let Some(top) = st.reals.first()
            && matches!(top.real, crate::inode::Real::Named { .. })
        {
            let pinned = RealEntry::new(top.layer, top.fd()?.into_owned()?);
            let mut reals = st.reals.to_vec();
            if let Some(slot) = reals.first_mut() {
                *slot = pinned;
            }
            st.reals = crate::inode::Reals::from(reals);
        }
        Ok(Some(ino))
    }

    pub fn readlink(&self, node: u64) -> Result<Vec<u8>> {
        let node = self.inodes.get(node)?;
        if node.kind != Kind::Symlink {
            return Err(crate::error::EINVAL);
        }
        let reals = node.reals();
        let top = reals.first().ok_or(crate::error::EIO)?;
        sys::readlink(top.fd()?.as_fd())
    }

    pub fn open(&self, node: u64, flags: i32) -> Result<Opened> {
        self.open_steps(node, flags)
            .map_err(|e| self.named(e.context("open"), node))
    }

    fn open_steps(&self, node: u64, flags: i32) -> Result<Opened> {
        let node = self.inodes.get(node)?;
        match node.kind {
            Kind::Directory => return Err(EISDIR),
            Kind::Regular => {}
            // FUSE sends opens of special files to the kernel's own drivers, never here.
            _ => return Err(crate::error::EINVAL),
        }
        let writes = (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let mut ino = node.ino;
        let reals = if writes {
            let data = if flags & libc::O_TRUNC != 0 {
                CopyData::None
            } else {
                CopyData::All
            };
            let (copy, reals) = self.writable(&node, data)?;
            ino = copy.ino;
            reals
        } else {
            node.reals()
        };
        let top = if writes {
            reals.first().cloned()
        } else {
            node.data_source()
        };
        let top = top.as_ref().ok_or(crate::error::EIO)?;
        // The page cache of a lower file is kept, unless a copy-up through one of its names
        // may write through this node while the others keep the lower data.
        let keep_cache = Some(top.layer) != self.layers.upper()
            && reals.top()?.layer == top.layer
            && !(self.may_break_links() && self.breaks_links(&node, &top.stat()?));
        let pass = flags
            & (libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_TRUNC
                | libc::O_NONBLOCK
                | libc::O_NOATIME
                | libc::O_SYNC
                | libc::O_DSYNC);
        let file = top.open_file(pass)?;
        let from_lower = Some(top.layer) != self.layers.upper();
        Ok(Opened {
            fh: self.add_file(node.id(), ino, (file, top.layer), writes, from_lower),
            keep_cache,
            direct_io: flags & libc::O_DIRECT != 0,
            // Not for a copy that broke away from a lower file's other names (`ino` is then
            // the copy's): the node's other names still reach the lower file.
            passthrough: (!from_lower || self.read_only) && ino == node.ino,
        })
    }

    pub(crate) fn add_file(
        &self,
        node: u64,
        ino: u64,
        (file, layer): (OwnedFd, usize),
        writable: bool,
        from_lower: bool,
    ) -> u64 {
        self.handles.add_file(FileHandle {
            node,
            ino,
            file,
            layer,
            writable,
            from_lower,
            upper_file: parking_lot::Mutex::new(None),
        })
    }

    pub(crate) fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.handles.file(fh)
    }

    /// The fd a read through handle `h` uses: its own, or the upper copy made since it opened.
    fn read_fd(&self, h: &FileHandle) -> Result<Option<Arc<OwnedFd>>> {
        if !h.from_lower {
            return Ok(None);
        }
        let mut upper_file = h.upper_file.lock();
        if upper_file.is_none()
            && let Ok(node) = self.inodes.get(h.node)
            && let Some(src) = node.data_source()
            && Some(src.layer) == self.layers.upper()
        {
            *upper_file = Some(Arc::new(src.open_file(libc::O_RDONLY)?));
        }
        Ok(upper_file.clone())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.file(fh)?;
        let upper = self.read_fd(&h)?;
        let fd = upper.as_ref().map_or(h.file.as_fd(), |f| f.as_fd());
        let mut buf = vec![0u8; size as usize];
        let mut done = 0usize;
        // The kernel expects a full buffer unless the file ends first.
        while done < buf.len() {
            let n = sys::pread(fd, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.handles.release_file(fh);
    }

    /// The merged listing of directory `dir`: the cached one, or a new one, kept unless the
    /// directory changed while it was built.
    fn listing(&self, dir: &Inode) -> Result<Arc<Listing>> {
        if let Some(l) = dir.cached_listing() {
            self.stats.listing(true);
            return Ok(l);
        }
        self.stats.listing(false);
        // The change count first, then the real directories: a change after this point, even
        // one that also adds a real directory (a copy-up), keeps this listing from being kept.
        let generation = dir.listing_generation();
        let reals = dir.reals();
        let merged = readdir::listing(&self.layers, &reals, self.record_ns)?;
        if merged.stale_impure && !self.read_only {
            self.drop_impure(dir, &reals);
        }
        let l = Arc::new(Listing::new(merged.entries)?);
        self.inodes.keep_listing(dir, generation, l.clone());
        Ok(l)
    }

    /// Removes the impure marker of upper-only directory `dir` (real entries `reals`) that no
    /// entry needs any more, as the kernel does when it reads such a directory. Best effort: it
    /// is skipped while an entry that needs the marker is being added (which holds the
    /// directory's `impure_marker`), and a failure only leaves a marker that costs a few reads.
    fn drop_impure(&self, dir: &Inode, reals: &crate::inode::Reals) {
        let Some(_marker) = dir.impure_marker().try_write() else {
            return;
        };
        // Entries published since the listing was read hold the marker no more: look again.
        // (A listing that fails here failed for the caller a moment ago too; keeping the
        // marker is the safe answer.)
        let still_stale =
            readdir::listing(&self.layers, reals, self.record_ns).is_ok_and(|m| m.stale_impure);
        if !still_stale {
            return;
        }
        let removed = reals
            .first()
            .ok_or(crate::error::EIO)
            .and_then(|top| sys::removexattr(top.dir_fd()?, self.record_ns.impure()));
        match removed {
            Ok(()) => {}
            Err(e) if e.errno() == libc::ENODATA => {}
            // A marker left in place only makes readdir read records it does not need.
            Err(e) => log::info!("could not remove a stale impure marker: {e}"),
        }
    }

    pub fn opendir(&self, node: u64) -> Result<u64> {
        self.opendir_steps(node)
            .map_err(|e| self.named(e.context("readdir"), node))
    }

    fn opendir_steps(&self, node: u64) -> Result<u64> {
        let dir = self.dir_node(node)?;
        let parent_ino = {
            let parent = dir.location().parent;
            self.inodes.get(parent).map(|p| p.ino).unwrap_or(dir.ino)
        };
        let dots = [
            DirEntry {
                name: OsString::from("."),
                kind: Kind::Directory,
                ino: dir.ino,
                layer: 0,
                real_ino: 0,
            },
            DirEntry {
                name: OsString::from(".."),
                kind: Kind::Directory,
                ino: if dir.id() == ROOT_ID {
                    dir.ino
                } else {
                    parent_ino
                },
                layer: 0,
                real_ino: 0,
            },
        ];
        Ok(self.handles.add_dir(DirHandle::new(dir.id(), dots)))
    }

    /// The entries of open directory handle `fh` for a `readdir` at `offset`: the listing is
    /// read at the handle's first `readdir`, and again at offset 0 (`rewinddir`).
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<DirEntries> {
        let h = self.handles.dir(fh)?;
        let node = h.node;
        // (A directory removed while open is never read: the kernel ends its listing itself.)
        h.entries(offset == 0, || {
            let dir = self.dir_node(node)?;
            self.listing(&dir)
        })
        .map_err(|e| self.named(e.context("readdir"), node))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.release_dir(fh);
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        self.layers.statfs()
    }

    /// Whether `name` is a stat record's name and the mount keeps them: hidden, never set.
    /// (Overlay records are kept apart by escaping, see [`XattrNamespace::layer_name`].)
    fn is_stat_record_name(&self, name: &OsStr) -> bool {
        self.stat_records() && stat_override::is_record_name(name.as_encoded_bytes())
    }

    /// Whether the mount keeps owners and modes in stat records (`xattr_permissions=`).
    pub(crate) fn stat_records(&self) -> bool {
        self.stat_records
    }

    pub fn getxattr(&self, node: u64, name: &OsStr) -> Result<Vec<u8>> {
        if self.noxattrs {
            return Err(crate::error::EOPNOTSUPP);
        }
        if self.is_stat_record_name(name) {
            return Err(ENODATA);
        }
        let real_name = self.record_ns.layer_name(name)?;
        let node = self.inodes.get(node)?;
        if node.known_absent(name) {
            self.stats.xattr_absent_hit();
            return Err(ENODATA);
        }
        let reals = node.reals();
        let top = reals.first().ok_or(crate::error::EIO)?;
        if is_asked(name)
            && !knows_any_absent(&node)
            && learn_absent(&node, top)
            && node.known_absent(name)
        {
            return Err(ENODATA);
        }
        let value = top.getxattr(&sys::cstr(&real_name)?);
        if matches!(&value, Err(e) if e.errno() == libc::ENODATA) {
            node.remember_absent(name);
        }
        value
    }

    /// The NUL-separated list of visible xattr names.
    pub fn listxattr(&self, node: u64) -> Result<Vec<u8>> {
        if self.noxattrs {
            return Err(crate::error::EOPNOTSUPP);
        }
        let node = self.inodes.get(node)?;
        let reals = node.reals();
        let top = reals.first().ok_or(crate::error::EIO)?;
        match sys::listxattr(top.fd()?.as_fd()) {
            Ok(names) => {
                let shown = names.iter().filter(|n| !self.is_stat_record_name(n));
                let mut list = Vec::new();
                for n in shown.filter_map(|n| self.record_ns.mount_name(n)) {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                Ok(list)
            }
            // A filesystem without xattrs has an empty list.
            Err(e) if e.errno() == libc::EOPNOTSUPP => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `access(2)`: the permission bits checked for `caller`, as the kernel's
    /// `generic_permission()` does, plus `EROFS` for write access on a read-only mount.
    pub fn access(&self, node: u64, mask: i32, caller: Caller) -> Result<()> {
        let node = self.inodes.get(node)?;
        let st = self.attr(&node)?;
        if mask & libc::W_OK != 0 && self.read_only {
            return Err(EROFS);
        }
        check_permission(&st, mask, caller)
    }
}

/// What a directory's cached listing says about a name.
enum Listed {
    /// No current listing, or one that cannot answer exactly: walk the layers.
    Unknown,
    Absent,
    Found(Box<lookup::Resolved>, u64),
}

/// A time to set: `None` leaves it, `Some(Now)` is the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(i64, i64),
}

/// The changes of one `setattr` request.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The open file the request came through (`ftruncate`, `futimens`).
    pub fh: Option<u64>,
}

fn timespec(t: Option<SetTime>) -> (i64, i64) {
    match t {
        None => (0, libc::UTIME_OMIT),
        Some(SetTime::Now) => (0, libc::UTIME_NOW),
        Some(SetTime::At(s, ns)) => (s, ns),
    }
}

impl SetAttr {
    /// Whether the request changes no attribute at all.
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

impl Overlay {
    pub fn setattr(&self, node: u64, change: SetAttr) -> Result<libc::stat> {
        self.setattr_steps(node, change)
            .map_err(|e| self.named(e.context("setattr"), node))
    }

    fn setattr_steps(&self, node: u64, change: SetAttr) -> Result<libc::stat> {
        let node = self.inodes.get(node)?;
        if change.size.is_some() && node.kind == Kind::Directory {
            return Err(EISDIR);
        }
        // Truncating to zero needs none of the old data, and a change of metadata only needs
        // the metadata.
        let data = match change.size {
            Some(0) => CopyData::None,
            Some(_) => CopyData::All,
            None => CopyData::Metadata,
        };
        let reals = self.ensure_upper(&node, data)?;
        let top = reals.first().ok_or(crate::error::EIO)?;
        // A mode change rewrites an access ACL; a remembered absence stays true, but nothing
        // is lost by asking again.
        node.forget_absent();
        let record = self
            .layers
            .stat_override(top.layer)
            .filter(|_| stat_override::applies_to(node.kind));
        if let Some(name) = record {
            if change.uid.is_some() || change.gid.is_some() || change.mode.is_some() {
                // The owner and mode live in the record; the disk keeps its forced ones.
                let fd = top.fd()?;
                let mut o = match stat_override::read(fd.as_fd(), name)? {
                    Some(o) => o,
                    None => StatOverride::of_stat(&sys::fstat(fd.as_fd())?),
                };
                o.uid = change.uid.map_or(o.uid, |u| self.uids.to_disk(u));
                o.gid = change.gid.map_or(o.gid, |g| self.gids.to_disk(g));
                o.mode = change.mode.map_or(o.mode, |m| m & 0o7777);
                stat_override::write(fd.as_fd(), name, &o, node.kind.file_type())?;
            }
        } else {
            if change.uid.is_some() || change.gid.is_some() {
                let chown = sys::fchown(
                    top.fd()?.as_fd(),
                    change.uid.map(|u| self.uids.to_disk(u)),
                    change.gid.map(|g| self.gids.to_disk(g)),
                );
                match chown {
                    // As in fuse-overlayfs: with every owner squashed, a refused chown is not
                    // an error (the owner shown never changes anyway).
                    Err(e) if self.uids.squashes() || self.gids.squashes() => {
                        log::debug!("chown refused under squash_to_*: {e}")
                    }
                    other => other?,
                }
            }
            if let Some(mode) = change.mode
                && node.kind != Kind::Symlink
            {
                sys::fchmod(top.fd()?.as_fd(), mode & 0o7777)?;
            }
        }
        if let Some(size) = change.size {
            match change.fh.map(|fh| self.file(fh)) {
                Some(Ok(h)) if h.writable => sys::ftruncate(h.file.as_fd(), size)?,
                _ => {
                    let f = sys::reopen(top.fd()?.as_fd(), libc::O_WRONLY)?;
                    sys::ftruncate(f.as_fd(), size)?;
                }
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::futimens(
                top.fd()?.as_fd(),
                timespec(change.atime),
                timespec(change.mtime),
            )?;
        }
        if change.is_empty() {
            // A change of nothing (`chown(f, -1, -1)`) still reaches the upper file: there it
            // changes the ctime, as the kernel's `notify_change` of the upper does.
            sys::fchown(top.fd()?.as_fd(), None, None)?;
        }
        self.attr_as_reached(&node)
    }

    /// `create(2)` with `O_CREAT`: makes and opens a regular file (in the upper layer, so its
    /// handle may always use passthrough; see [`Opened::passthrough`]).
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Entry, u64)> {
        let (entry, file) = self.create_entry(
            parent,
            name,
            mode,
            caller,
            crate::overlay::NewEntry::File { flags },
        )?;
        let file = file.ok_or(crate::error::EIO)?;
        let (upper, _) = self.upper_layer()?;
        Ok((
            entry,
            self.add_file(entry.node, entry.attr.st_ino, (file, upper), true, false),
        ))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.file(fh)?;
        if !h.writable {
            return Err(EBADF);
        }
        let n = sys::pwrite(h.file.as_fd(), data, offset)?;
        Ok(n as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.file(fh)?;
        sys::fsync(h.file.as_fd(), datasync)
    }

    /// `fsync` of a directory: its upper part, if it has one.
    pub fn fsyncdir(&self, node: u64) -> Result<()> {
        let node = self.inodes.get(node)?;
        let reals = node.reals();
        match reals.first() {
            Some(top) if Some(top.layer) == self.layers.upper() => {
                crate::copy_up::build::sync_dir(top.dir_fd()?)
            }
            _ => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.file(fh)?;
        if !h.writable {
            return Err(EBADF);
        }
        sys::fallocate(h.file.as_fd(), mode, offset, len)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.file(fh)?;
        sys::lseek(h.file.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let (a, b) = (self.file(fh_in)?, self.file(fh_out)?);
        if !b.writable {
            return Err(EBADF);
        }
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = sys::copy_file_range(a.file.as_fd(), off_in, b.file.as_fd(), off_out, len)?;
        Ok(n as u32)
    }

    pub fn setxattr(
        &self,
        node: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        if self.noxattrs {
            return Err(crate::error::EOPNOTSUPP);
        }
        self.setxattr_steps(node, name, value, flags, caller)
            .map_err(|e| self.named(e.context("setxattr"), node))
    }

    fn setxattr_steps(
        &self,
        node: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: Caller,
    ) -> Result<()> {
        if self.is_stat_record_name(name) {
            return Err(crate::error::EPERM);
        }
        let real_name = sys::cstr(&self.record_ns.layer_name(name)?)?;
        let node = self.inodes.get(node)?;
        let reals = self.ensure_upper_for_xattr(&node)?;
        let top = reals.first().ok_or(crate::error::EIO)?;
        node.forget_absent();
        self.acl_kill_sgid(&node, name, caller)?;
        sys::setxattr(top.fd()?.as_fd(), &real_name, value, flags)
    }

    pub fn removexattr(&self, node: u64, name: &OsStr, caller: Caller) -> Result<()> {
        if self.noxattrs {
            return Err(crate::error::EOPNOTSUPP);
        }
        self.removexattr_steps(node, name, caller)
            .map_err(|e| self.named(e.context("removexattr"), node))
    }

    fn removexattr_steps(&self, node: u64, name: &OsStr, caller: Caller) -> Result<()> {
        if self.is_stat_record_name(name) {
            return Err(ENODATA);
        }
        let real_name = sys::cstr(&self.record_ns.layer_name(name)?)?;
        let node = self.inodes.get(node)?;
        // Nothing to copy up for an xattr a lower object does not have. An upper object's
        // filesystem answers itself: there removing an absent ACL succeeds (its `set_acl` of
        // none), as on the kernel overlay.
        let reals = node.reals();
        let top = reals.first().ok_or(crate::error::EIO)?;
        if Some(top.layer) != self.layers.upper() {
            sys::getxattr(top.fd()?.as_fd(), &real_name)?;
        }
        let reals = self.ensure_upper_for_xattr(&node)?;
        let top = reals.first().ok_or(crate::error::EIO)?;
        node.forget_absent();
        self.acl_kill_sgid(&node, name, caller)?;
        sys::removexattr(top.fd()?.as_fd(), &real_name)
    }

    /// Before the access ACL of `node` (already in the upper layer) is set or removed: clears
    /// its set-group-id bit when `caller` is neither in the file's group nor holds
    /// `CAP_FSETID`, as the kernel overlay's `ovl_set_or_remove_acl` does. The real filesystem
    /// would not: ufs changes the ACL with its own privileges (and the kernel's
    /// `FUSE_SETXATTR_ACL_KILL_SGID` needs `SETXATTR_EXT`, which fuser cannot decode).
    fn acl_kill_sgid(&self, node: &Inode, name: &OsStr, caller: Caller) -> Result<()> {
        if name.as_encoded_bytes() != crate::acl::ACCESS.to_bytes() {
            return Ok(());
        }
        let st = self.attr(node)?;
        if st.st_mode & libc::S_ISGID == 0 || in_group_or_capable(&st, caller) {
            return Ok(());
        }
        let change = SetAttr {
            mode: Some(st.st_mode & 0o7777 & !libc::S_ISGID),
            ..SetAttr::default()
        };
        self.setattr_steps(node.id(), change).map(|_| ())
    }
}

/// The mode-bit check of `generic_permission()`.
pub fn check_permission(st: &libc::stat, mask: i32, caller: Caller) -> Result<()> {
    let mask = mask & (libc::R_OK | libc::W_OK | libc::X_OK);
    if mask == 0 {
        return Ok(());
    }
    let mode = st.st_mode;
    if caller.uid == 0 {
        // root may do anything, but execute needs at least one execute bit (directories aside).
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if mask & libc::X_OK != 0 && !is_dir && mode & 0o111 == 0 {
            return Err(crate::error::EACCES);
        }
        return Ok(());
    }
    let bits = if caller.uid == st.st_uid {
        (mode >> 6) & 7
    } else if caller.gid == st.st_gid || in_groups(caller.pid, st.st_gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    if (bits as i32) & mask == mask {
        Ok(())
    } else {
        Err(crate::error::EACCES)
    }
}

/// `in_group_or_capable()` for the set-group-id bit of a file with attributes `st`: whether
/// `caller` is in the file's group or holds `CAP_FSETID`.
fn in_group_or_capable(st: &libc::stat, caller: Caller) -> bool {
    caller.gid == st.st_gid || in_groups(caller.pid, st.st_gid) || has_fsetid(caller)
}

/// Whether `caller` holds `CAP_FSETID` (its effective set in `/proc/PID/status`; uid 0 when
/// that cannot be read).
fn has_fsetid(caller: Caller) -> bool {
    const CAP_FSETID: u32 = 4;
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) else {
        return caller.uid == 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map_or(caller.uid == 0, |caps| caps & (1 << CAP_FSETID) != 0)
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_groups(pid: u32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("layers", &self.layers.len())
            .field("nodes", &self.inodes.len())
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// Whether `name` is one of the xattrs asked of every file ([`crate::inode::ASKED_XATTRS`]).
fn is_asked(name: &OsStr) -> bool {
    crate::inode::ASKED_XATTRS
        .iter()
        .any(|n| name.as_encoded_bytes() == n.as_bytes())
}

/// Whether the node remembers the absence of any of the asked xattrs: then their names were
/// listed already (a file never has all four: the default ACL is a directory's, and no directory
/// has a file capability), and a name not remembered absent is there.
fn knows_any_absent(node: &Inode) -> bool {
    crate::inode::ASKED_XATTRS
        .iter()
        .any(|n| node.known_absent(OsStr::new(n)))
}

/// The first question about one of the [`crate::inode::ASKED_XATTRS`] of a node: one listing of
/// the names on its top real entry answers it and the others (`ls -l` asks two per file, the
/// kernel a third before each write), so each absent one is remembered at once. Returns whether
/// the listing was read (else the caller asks for the one name as before).
fn learn_absent(node: &Inode, top: &RealEntry) -> bool {
    let names = match &top.real {
        crate::inode::Real::Held(fd) => sys::listxattr(fd.as_fd()),
        crate::inode::Real::Named { dir, name } => sys::listxattr_at(dir.as_fd(), name.as_cstr()),
    };
    let Ok(names) = names else {
        return false;
    };
    for asked in crate::inode::ASKED_XATTRS {
        if !names
            .iter()
            .any(|n| n.as_encoded_bytes() == asked.as_bytes())
        {
            node.remember_absent(OsStr::new(asked));
        }
    }
    true
}
