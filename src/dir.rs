//! Namespace operations: create, mkdir, mknod, symlink, link, unlink, rmdir, rename, and the
//! copy-up of an object and its ancestors that each of them starts with.
//!
//! Kernel counterparts: `fs/overlayfs/dir.c` (`ovl_create_object`, `ovl_do_remove`,
//! `ovl_rename`) and `ovl_copy_up()` in `copy_up.c`. Every new entry is built in the work
//! directory with its owner, mode and opaque marker already set, then published with one
//! `rename` (an exchange when a whiteout stands at the name), so a crash never leaves a
//! half-made entry in the upper. Whiteouts are left exactly where a lower layer still has the
//! name.
//!
//! Locking: an operation holds at most one node lock at a time. Copy-up takes the ancestors'
//! locks one after the other, top-down, never nested; see `docs/DESIGN.md`.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::copy_up::{self, CopyData, Workdir, remove_tree, set_owner};
use crate::error::{EEXIST, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EROFS, EXDEV, Result};
use crate::inode::{Inode, Location, NodeState, ROOT_ID, RealEntry, Reals, Top};
use crate::kind::Kind;
use crate::lookup::{self, Resolved, is_hidden_name, whiteout_name};
use crate::overlay::{Caller, Entry, NewEntry, Overlay};
use crate::readdir;
use crate::records;
use crate::sys;

impl Overlay {
    /// The upper layer's index, or `EROFS` for a read-only mount.
    pub(crate) fn upper_layer(&self) -> Result<(usize, &Workdir)> {
        match (self.layers.upper(), &self.work) {
            (Some(u), Some(w)) if !self.is_read_only() => Ok((u, w)),
            _ => Err(EROFS),
        }
    }

    /// Makes sure `node` has an upper entry, copying it (and first its ancestors) up.
    /// Returns the node's real entries, the upper one first.
    ///
    /// `data` says what the caller needs: `Metadata` (a metadata-only copy will do, when
    /// `metacopy` is on), `All` (the data too: completes an earlier metadata-only copy) or
    /// `None` (the caller empties the file: no data is copied).
    pub(crate) fn ensure_upper(&self, node: &Arc<Inode>, data: CopyData) -> Result<Reals> {
        Ok(self.writable(node, data)?.1)
    }

    /// Like [`Overlay::ensure_upper`], and also returns the node the upper entry belongs to:
    /// `node` itself, except for a lower file with several links while the index is off. Then,
    /// as in the kernel, the copy-up breaks the name it was reached by away from the other
    /// names: the copy is a new object (its own node and number), and the other names keep
    /// showing the lower file.
    pub(crate) fn writable(
        &self,
        node: &Arc<Inode>,
        data: CopyData,
    ) -> Result<(Arc<Inode>, Reals)> {
        let (upper, work) = self.upper_layer()?;
        let data = match data {
            CopyData::Metadata if !self.metacopy || node.kind != Kind::Regular => CopyData::All,
            other => other,
        };
        loop {
            let reals = node.reals();
            if reals.first().is_some_and(|r| r.layer == upper) {
                if data != CopyData::Metadata && node.state.read().lower_data.is_some() {
                    let mut st = node.state.write();
                    if let Some(lower) = st.lower_data.clone() {
                        copy_up::complete_metacopy(
                            work,
                            st.reals.top()?.fd()?.as_fd(),
                            lower.fd()?.as_fd(),
                            data,
                        )?;
                        st.lower_data = None;
                        log::debug!("completed the metadata-only copy of node {}", node.id);
                    }
                }
                self.link_up(node, upper)?;
                return Ok((node.clone(), reals));
            }
            if node.id == ROOT_ID {
                // The root's reals always start with the upper root when there is one.
                return Err(EIO);
            }
            let first = node.location();
            if let Some(copy) = first.broken_copy(first.parent, &first.name) {
                // Reached through a name whose copy already broke away: that copy it is.
                return self.broken_away(first.parent, &first.name, copy, data);
            }
            // The name to copy up under: where the node was last reached, unless that name no
            // longer stands for this lower file (a hard link whose name was replaced), then
            // another name it was reached by that still does.
            let (parent_id, chosen) = match self.still_names(node, &first, reals.top()?)? {
                Some(pick) => pick,
                None => (first.parent, first.name.clone()),
            };
            let parent = self.inodes.get(parent_id)?;
            let preals = self.ensure_upper(&parent, CopyData::All)?;
            let mut st = node.state.write();
            if st.reals.first().is_some_and(|r| r.layer == upper) {
                // Copied up by another thread meanwhile; the top of the loop completes the copy
                // if that one was metadata-only and this caller needs the data.
                drop(st);
                continue;
            }
            let loc = node.location();
            if loc.parent != first.parent || loc.name != first.name {
                // Reached by another name while the parent was being copied up: start over.
                continue;
            }
            let name = sys::cstr(&chosen)?;
            let src = st.reals.first().ok_or(EIO)?.clone();
            let src_st = src.stat()?;
            // With `index=on`, a lower file with several names is copied once, into the index,
            // and every name finds that copy. Without it, the copy is a new object.
            let several = node.kind != Kind::Directory && src_st.st_nlink > 1;
            let indexed = several && self.index && work.index.is_some();
            let breaks = several && !indexed;
            if breaks && let Some(copy) = loc.broken_copy(parent_id, &chosen) {
                // Another thread broke this name away meanwhile.
                drop(st);
                return self.broken_away(parent_id, &chosen, copy, data);
            }
            let key = if indexed {
                Some(copy_up::IndexKey::of(&src)?)
            } else {
                None
            };
            // A metadata-only copy in a lower layer (an upper once) has its data further down.
            let data_src = st.lower_data.clone();
            let (entry, published) = copy_up::copy_up(
                work,
                upper,
                &src,
                data_src.as_ref(),
                node.kind,
                preals.top()?.dir_arc()?,
                &name,
                data,
                // A copy that breaks away is a new object with a number of its own. Any other
                // keeps its number across a remount through this record (the kernel finds it
                // through the origin, whatever `xino` says).
                (!breaks).then_some(node.ino),
                key.as_ref(),
            )?;
            // The parent's cached listing names the lower entry; a node looked up from it
            // after the kernel forgot this one would show the lower object again.
            parent.listing_changed();
            if breaks {
                let copy = entry.stat()?.st_ino;
                node.broke_away(parent_id, &chosen, copy);
                drop(st);
                // The name's number changed with no change to the directory the kernel would
                // notice: its cached listing must go.
                self.invalidate(parent_id, true);
                log::debug!("copied up {chosen:?} away from node {}", node.id);
                return self.broken_away(parent_id, &chosen, copy, data);
            }
            self.layers.remember_copy_up(entry.stat()?.st_ino, node.ino);
            let mut new_reals = vec![entry];
            if node.kind == Kind::Directory || indexed {
                new_reals.extend(st.reals.iter().cloned());
            }
            st.reals = Arc::new(new_reals);
            st.lower_data = match data {
                CopyData::Metadata => Some(data_src.unwrap_or_else(|| src.clone())),
                _ => None,
            };
            log::debug!("copied up {:?} (node {})", loc.name, node.id);
            let reals = st.reals.clone();
            drop(st);
            if data == CopyData::Metadata {
                // From now on its attributes must not be cached (see `Overlay::volatile`); the
                // kernel may hold them from before, and a failed request (a `setxattr` that
                // copied up, then failed) would not make it ask again.
                self.invalidate(node.id, false);
            }
            if indexed {
                let linked = if published {
                    true
                } else {
                    self.link_some_alias(node, &loc, &src_st)?
                };
                let upper_links = if linked { 2 } else { 1 };
                records::set_nlink_record(
                    work.xattr_ns,
                    reals.top()?,
                    src_st.st_nlink as i64 - upper_links,
                )?;
            }
            return Ok((node.clone(), reals));
        }
    }

    /// The node of the copy (real inode number `copy`) that broke away at `name` in directory
    /// node `parent` (looked up afresh), made writable for `data`.
    fn broken_away(
        &self,
        parent: u64,
        name: &OsStr,
        copy: u64,
        data: CopyData,
    ) -> Result<(Arc<Inode>, Reals)> {
        let found = self.broken_copy_node(parent, name, copy)?;
        self.writable(&found, data)
    }

    /// The live node of the copy with real inode number `copy` at `name` in directory node
    /// `parent`; `ESTALE` when the name holds something else now.
    pub(crate) fn broken_copy_node(
        &self,
        parent: u64,
        name: &OsStr,
        copy: u64,
    ) -> Result<Arc<Inode>> {
        self.with_child(parent, name, |found| {
            let reals = found.reals();
            let top = reals.top()?;
            if Some(top.layer) != self.layers.upper() || top.stat()?.st_ino != copy {
                // The copy was removed or replaced since.
                return Err(crate::error::ESTALE);
            }
            Ok(found.clone())
        })
    }

    /// The first of the names `node` was reached by (its location, then its other names, most
    /// recent first) that still stands for the lower object `lower`; `None` when the location
    /// does (the usual case) or when none does.
    fn still_names(
        &self,
        node: &Inode,
        loc: &Location,
        lower: &RealEntry,
    ) -> Result<Option<(u64, std::ffi::OsString)>> {
        if node.kind == Kind::Directory {
            return Ok(None);
        }
        let lst = lower.stat()?;
        if lst.st_nlink <= 1 {
            return Ok(None);
        }
        let candidates = std::iter::once((loc.parent, loc.name.clone()))
            .chain(loc.aliases.iter().rev().cloned());
        for (i, (parent, name)) in candidates.enumerate() {
            if self.names_lower(parent, &name, &lst) {
                return Ok(if i == 0 { None } else { Some((parent, name)) });
            }
        }
        Ok(None)
    }

    /// Whether `name` in directory node `parent` resolves to the lower object with `stat` `lower`.
    fn names_lower(&self, parent: u64, name: &OsStr, lower: &libc::stat) -> bool {
        let Ok(pnode) = self.inodes.get(parent) else {
            return false;
        };
        let Ok(found) = self.resolve(&pnode, name) else {
            return false;
        };
        let Ok(top) = found.reals.top() else {
            return false;
        };
        Some(top.layer) != self.layers.upper()
            && found.stat.st_dev == lower.st_dev
            && found.stat.st_ino == lower.st_ino
    }

    /// Links the indexed copy of `node` under one of the other names it was reached by that
    /// still names its lower object (the kernel removes index entries without any upper name).
    fn link_some_alias(&self, node: &Inode, loc: &Location, lower: &libc::stat) -> Result<bool> {
        for (parent, name) in loc.aliases.iter().rev() {
            let Ok(pnode) = self.inodes.get(*parent) else {
                continue;
            };
            let Ok(found) = self.resolve(&pnode, name) else {
                continue;
            };
            let st = found.reals.top()?.stat()?;
            if found.reals.top()?.layer == self.upper_layer()?.0
                || st.st_dev != lower.st_dev
                || st.st_ino != lower.st_ino
            {
                continue;
            }
            let preals = self.ensure_upper(&pnode, CopyData::All)?;
            link_alias(node, preals.top()?.dir_fd()?, &sys::cstr(name)?)?;
            pnode.listing_changed();
            node.set_location(*parent, name);
            return Ok(true);
        }
        log::warn!("no name left to publish the copy of node {}", node.id);
        Ok(false)
    }

    /// Before a name of a lower file with several names goes away, the file is copied into the
    /// index (the kernel's `ovl_nlink_start`), so that its merged link count is kept from then on.
    /// Returns whether it copied (the name may now stand in the upper).
    fn index_before_unlink(&self, parent: u64, name: &OsStr, child: &Resolved) -> Result<bool> {
        let upper = self.upper_layer()?.0;
        if !self.index
            || child.kind == Kind::Directory
            || child.stat.st_nlink <= 1
            || child.reals.top()?.layer == upper
        {
            return Ok(false);
        }
        self.with_child(parent, name, |node| {
            let loc = node.location();
            if loc.parent != parent || loc.name != name {
                // Copy up under the name about to go, as the kernel does.
                node.set_location(parent, name);
            }
            self.ensure_upper(node, CopyData::Metadata).map(drop)
        })?;
        Ok(true)
    }

    /// An indexed copy about to change through a name that is still lower-only (another name was
    /// copied up first) gets that name linked into the upper, as the kernel links it up
    /// (`ovl_link_up`): the change then shows under that name once the upper is a lower layer
    /// too, or to a mount without the index.
    fn link_up(&self, node: &Inode, upper: usize) -> Result<()> {
        if node.kind == Kind::Directory {
            return Ok(());
        }
        let lower = {
            let st = node.state.read();
            match st.reals.get(1) {
                Some(l) if st.reals.first().is_some_and(|t| t.layer == upper) => l.clone(),
                _ => return Ok(()),
            }
        };
        let loc = node.location();
        if loc.parent == 0 || !self.names_lower(loc.parent, &loc.name, &lower.stat()?) {
            return Ok(());
        }
        let pnode = self.inodes.get(loc.parent)?;
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        if link_alias(node, preals.top()?.dir_fd()?, &sys::cstr(&loc.name)?)? {
            pnode.listing_changed();
            self.alias_linked(node)?;
            log::debug!("linked up {:?} of node {}", loc.name, node.id);
        }
        Ok(())
    }

    /// A lower name of an indexed copy got its upper link: the upper link count grew while the
    /// merged one did not, so the record drops by one.
    fn alias_linked(&self, node: &Inode) -> Result<()> {
        let (_, work) = self.upper_layer()?;
        let reals = node.reals();
        // Only indexed copies carry a record; after a remount their node may have been reached
        // through an upper name, with no lower entry beside it.
        if let Some(n) = records::nlink_record(reals.top()?, self.record_ns)? {
            records::set_nlink_record(work.xattr_ns, reals.top()?, n - 1)?;
        }
        Ok(())
    }

    /// A name that exists only in a lower layer goes away (whiteout or replaced): when it is a
    /// name of an indexed copy, the copy's link-count record drops by one.
    fn lower_alias_removed(&self, removed: &Resolved) -> Result<()> {
        let Some((upper, work)) = self.upper_layer().ok() else {
            return Ok(());
        };
        if removed.kind == Kind::Directory
            || removed.stat.st_nlink <= 1
            || removed.reals.top()?.layer == upper
        {
            return Ok(());
        }
        let Some(index_dir) = &work.index else {
            return Ok(());
        };
        let key = copy_up::IndexKey::of(removed.reals.top()?)?;
        let entry = RealEntry::named(upper, index_dir.clone(), &key.name);
        match records::nlink_record(&entry, self.record_ns) {
            Ok(Some(n)) => records::set_nlink_record(work.xattr_ns, &entry, n - 1),
            Ok(None) => Ok(()),
            Err(e) if e.errno() == libc::ENOENT => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether a lower layer of the merged directory `preals` still has `name`, so that
    /// removing the upper entry must leave a whiteout.
    fn lower_has(&self, preals: &[RealEntry], name: &OsStr) -> Result<bool> {
        let upper = self.layers.upper();
        let lowers: Vec<RealEntry> = preals
            .iter()
            .filter(|r| Some(r.layer) != upper)
            .cloned()
            .collect();
        if lowers.is_empty() {
            return Ok(false);
        }
        match lookup::lookup(&self.layers, &lowers, name) {
            Ok(_) => Ok(true),
            Err(e) if e == ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Resolves `name` in directory node `parent` without counting a lookup.
    fn resolve(&self, parent: &Inode, name: &OsStr) -> Result<Resolved> {
        lookup::lookup(&self.layers, &parent.reals(), name)
    }

    /// Runs `f` with the node of `parent/name`, counting a lookup only for the call's length.
    fn with_child<T>(
        &self,
        parent: u64,
        name: &OsStr,
        f: impl FnOnce(&Arc<Inode>) -> Result<T>,
    ) -> Result<T> {
        let e = self.lookup(parent, name)?;
        let res = self.inodes.get(e.node).and_then(|node| f(&node));
        self.inodes.forget(e.node, 1);
        res
    }

    /// Creates `name` in directory `parent` for `caller`. Returns the new entry (one lookup
    /// counted) and, for a regular file, the open file.
    pub fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
        what: NewEntry<'_>,
    ) -> Result<(Entry, Option<OwnedFd>)> {
        let (_, work) = self.upper_layer()?;
        if is_hidden_name(name) {
            // `.wh.*` names are whiteouts in the OCI layer format ufs reads.
            return Err(EINVAL);
        }
        let pnode = self.dir_node(parent)?;
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        let udir = preals.top()?.dir_fd()?;
        let cname = sys::cstr(name)?;
        // The kernel asks to create only names it has looked up and found absent, so only the
        // upper slot needs a look: a whiteout there is replaced, anything else exists.
        let over_whiteout = match sys::fstatat(udir, &cname) {
            Ok(st) if sys::is_whiteout(&st) => true,
            Ok(_) => return Err(EEXIST),
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(e) => return Err(e),
        };
        let is_dir = matches!(what, NewEntry::Directory);
        let opaque = is_dir && self.lower_has(&preals, name)?;
        let pst = sys::fstat(udir)?;
        let mut mode = mode & 0o7777;
        // Owners on disk: the caller's ids turned into disk ids, or the parent's (disk) group.
        let uid = self.uids.to_disk(caller.uid);
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            if is_dir {
                mode |= libc::S_ISGID;
            }
            pst.st_gid
        } else {
            self.gids.to_disk(caller.gid)
        };
        let file = if !over_whiteout && !opaque {
            // Nothing to replace and no marker to set: made in place, as the kernel does
            // (`ovl_create_upper`). A failure part way removes what was made.
            match self.build_new(udir, &cname, mode, uid, gid, what, opaque) {
                Ok(file) => file,
                // `EEXIST`: someone else made the name meanwhile; it is theirs, not half-made.
                Err(e) if e == EEXIST => return Err(e),
                Err(e) => {
                    if let Err(e2) = remove_tree(udir, &cname) {
                        log::warn!("cannot remove the half-made {name:?}: {e2}");
                    }
                    return Err(e);
                }
            }
        } else {
            // Built complete in the work directory, then swapped with the whiteout in one step.
            let tmp = work.temp_name();
            let file = match self.build_new(work.dir(), &tmp, mode, uid, gid, what, opaque) {
                Ok(file) => file,
                Err(e) => {
                    work.discard(&tmp);
                    return Err(e);
                }
            };
            let published = if over_whiteout {
                sys::renameat2(work.dir(), &tmp, udir, &cname, libc::RENAME_EXCHANGE)
                    .map(|()| work.discard(&tmp))
            } else {
                sys::renameat2(work.dir(), &tmp, udir, &cname, libc::RENAME_NOREPLACE)
            };
            if let Err(e) = published {
                work.discard(&tmp);
                return Err(e);
            }
            file
        };
        remove_wh_file(udir, name)?;
        pnode.listing_changed();
        let kind = match what {
            NewEntry::File { .. } => Kind::Regular,
            NewEntry::Directory => Kind::Directory,
            NewEntry::Symlink { .. } => Kind::Symlink,
            NewEntry::Node { file_type, .. } => Kind::from_mode(file_type).ok_or(EIO)?,
        };
        let real = if kind == Kind::Directory {
            RealEntry::new(preals.top()?.layer, sys::open_path(udir, &cname)?)
        } else {
            RealEntry::named(
                preals.top()?.layer,
                preals.top()?.dir_arc()?.clone(),
                &cname,
            )
        };
        let entry = self.new_node(parent, name, kind, real)?;
        Ok((entry, file))
    }

    /// Enters a node for an entry ufs just made in the upper layer (one lookup counted).
    fn new_node(&self, parent: u64, name: &OsStr, kind: Kind, real: RealEntry) -> Result<Entry> {
        let st = real.stat()?;
        let ino = self
            .layers
            .copied_up(st.st_ino)
            .unwrap_or_else(|| self.layers.map_ino(real.layer, st.st_ino));
        let (node, _) = self
            .inodes
            .lookup_or_insert(ino, kind, parent, name, || NodeState {
                reals: Arc::new(vec![real]),
                lower_data: None,
            })?;
        self.entry_for(&node)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_new(
        &self,
        wd: BorrowedFd<'_>,
        tmp: &CStr,
        mode: u32,
        uid: u32,
        gid: u32,
        what: NewEntry<'_>,
        opaque: bool,
    ) -> Result<Option<OwnedFd>> {
        let work = self.upper_layer()?.1;
        let file = match what {
            NewEntry::File { flags } => {
                // Not `O_DIRECT`: FUSE hands ufs the data in its own buffers, which need not
                // meet the real file's alignment; the handle is direct I/O instead (see
                // `Opened::direct_io`).
                let keep = flags
                    & (libc::O_ACCMODE
                        | libc::O_APPEND
                        | libc::O_NONBLOCK
                        | libc::O_SYNC
                        | libc::O_DSYNC);
                Some(sys::openat(
                    wd,
                    tmp,
                    libc::O_CREAT | libc::O_EXCL | keep,
                    mode,
                )?)
            }
            NewEntry::Directory => {
                sys::mkdirat(wd, tmp, mode)?;
                None
            }
            NewEntry::Node { file_type, rdev } => {
                sys::mknodat(wd, tmp, file_type | mode, rdev)?;
                None
            }
            NewEntry::Symlink { target } => {
                sys::symlinkat(target, wd, tmp)?;
                None
            }
        };
        let fd = sys::open_path(wd, tmp)?;
        set_owner(fd.as_fd(), uid, gid)?;
        let is_symlink = matches!(what, NewEntry::Symlink { .. });
        if !is_symlink && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            // `chown` clears the set-id bits the caller asked for.
            sys::fchmod(fd.as_fd(), mode & 0o7777)?;
        }
        if opaque {
            sys::setxattr(fd.as_fd(), work.xattr_ns.opaque(), b"y", 0)?;
        }
        Ok(file)
    }

    /// Puts a whiteout at `name` in the upper directory `udir`, where nothing stands yet.
    fn make_whiteout(&self, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let cname = sys::cstr(name)?;
        match sys::mknodat(udir, &cname, libc::S_IFCHR, 0) {
            Err(e) if e.errno() == libc::EPERM => make_wh_file(udir, name),
            other => other,
        }
    }

    /// Replaces the upper entry `name` in `udir` (a file or a directory) by a whiteout in one
    /// step, and removes the old entry.
    fn whiteout_over(&self, work: &Workdir, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let cname = sys::cstr(name)?;
        let tmp = work.temp_name();
        match sys::mknodat(work.dir(), &tmp, libc::S_IFCHR, 0) {
            Ok(()) => {
                if let Err(e) =
                    sys::renameat2(work.dir(), &tmp, udir, &cname, libc::RENAME_EXCHANGE)
                {
                    work.discard(&tmp);
                    return Err(e);
                }
            }
            Err(e) if e.errno() == libc::EPERM => {
                sys::renameat2(udir, &cname, work.dir(), &tmp, libc::RENAME_NOREPLACE)?;
                make_wh_file(udir, name)?;
            }
            Err(e) => return Err(e),
        }
        remove_tree(work.dir(), &tmp)
    }

    /// Removes the upper entry `name` of `udir` (a directory whose merged view is empty, so it
    /// holds nothing but whiteouts and markers).
    fn remove_upper_dir(&self, work: &Workdir, udir: BorrowedFd<'_>, cname: &CStr) -> Result<()> {
        match sys::unlinkat(udir, cname, libc::AT_REMOVEDIR) {
            Err(e) if e.errno() == libc::ENOTEMPTY || e.errno() == libc::EEXIST => {
                let tmp = work.temp_name();
                sys::renameat2(udir, cname, work.dir(), &tmp, libc::RENAME_NOREPLACE)?;
                remove_tree(work.dir(), &tmp)
            }
            other => other,
        }
    }

    /// Notes that an upper object loses a name; when it was the last, its copy-up record goes.
    fn upper_name_removed(&self, st: &libc::stat) {
        if st.st_nlink <= 1 || (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
            self.layers.forget_copy_up(st.st_ino);
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let pnode = self.dir_node(parent)?;
        let mut child = self.resolve(&pnode, name)?;
        if child.kind == Kind::Directory {
            return Err(EISDIR);
        }
        if self.index_before_unlink(parent, name, &child)? {
            child = self.resolve(&pnode, name)?;
        }
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        let udir = preals.top()?.dir_fd()?;
        let needs_whiteout = self.lower_has(&preals, name)?;
        self.pin_if_alive(&child)?;
        if child.reals.top()?.layer == upper {
            if needs_whiteout {
                self.whiteout_over(work, udir, name)?;
            } else {
                sys::unlinkat(udir, &sys::cstr(name)?, 0)?;
            }
            self.upper_name_removed(&child.stat);
        } else {
            self.make_whiteout(udir, name)?;
            self.lower_alias_removed(&child)?;
        }
        pnode.listing_changed();
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let pnode = self.dir_node(parent)?;
        let child = self.resolve(&pnode, name)?;
        if child.kind != Kind::Directory {
            return Err(ENOTDIR);
        }
        if !readdir::merged_listing(&self.layers, &child.reals, self.record_ns)?.is_empty() {
            return Err(ENOTEMPTY);
        }
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        let udir = preals.top()?.dir_fd()?;
        let needs_whiteout = self.lower_has(&preals, name)?;
        if child.reals.top()?.layer == upper {
            if needs_whiteout {
                self.whiteout_over(work, udir, name)?;
            } else {
                self.remove_upper_dir(work, udir, &sys::cstr(name)?)?;
            }
            self.upper_name_removed(&child.stat);
        } else {
            self.make_whiteout(udir, name)?;
        }
        pnode.listing_changed();
        Ok(())
    }

    /// `link(2)`: a new name `newname` in `newparent` for node `node`.
    pub fn link(&self, node: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        let (_, work) = self.upper_layer()?;
        if is_hidden_name(newname) {
            return Err(EINVAL);
        }
        let node = self.inodes.get(node)?;
        if node.kind == Kind::Directory {
            return Err(crate::error::EPERM);
        }
        // Like the kernel, a link copies only metadata; the copy records where its data is.
        let (node, reals) = self.writable(&node, CopyData::Metadata)?;
        self.set_data_redirect(&node)?;
        let np = self.dir_node(newparent)?;
        let nreals = self.ensure_upper(&np, CopyData::All)?;
        let ndir = nreals.top()?.dir_fd()?;
        match lookup::lookup(&self.layers, &nreals, newname) {
            Ok(_) => return Err(EEXIST),
            Err(e) if e == ENOENT => {}
            Err(e) => return Err(e),
        }
        let cname = sys::cstr(newname)?;
        let over_whiteout = match sys::fstatat(ndir, &cname) {
            Ok(st) if sys::is_whiteout(&st) => true,
            Ok(_) => return Err(EEXIST),
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(e) => return Err(e),
        };
        // A copy (it keeps a number or an origin from below) tells readdir, ufs's and the
        // kernel's, to look for its records in the new name's directory, as the kernel marks it.
        let is_copy = [work.xattr_ns.ino_record(), work.xattr_ns.origin()]
            .into_iter()
            .map(|x| reals.top().and_then(|t| t.getxattr(x)))
            .any(|r| r.is_ok());
        if is_copy {
            sys::setxattr(ndir, work.xattr_ns.impure(), b"y", 0)?;
        }
        if over_whiteout {
            let tmp = work.temp_name();
            sys::link_fd(reals.top()?.fd()?.as_fd(), work.dir(), &tmp)?;
            // A plain rename replaces the whiteout (a non-directory) in one step.
            if let Err(e) = sys::renameat2(work.dir(), &tmp, ndir, &cname, 0) {
                work.discard(&tmp);
                return Err(e);
            }
        } else {
            sys::link_fd(reals.top()?.fd()?.as_fd(), ndir, &cname)?;
        }
        remove_wh_file(ndir, newname)?;
        np.listing_changed();
        self.lookup(newparent, newname)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        if is_hidden_name(newname) {
            return Err(EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(EINVAL);
        }
        let op = self.dir_node(parent)?;
        let np = self.dir_node(newparent)?;
        let src = self.resolve(&op, name)?;
        let dst = match self.resolve(&np, newname) {
            Ok(d) => Some(d),
            Err(e) if e == ENOENT => None,
            Err(e) => return Err(e),
        };
        if noreplace && dst.is_some() {
            return Err(EEXIST);
        }
        let dst = match dst {
            Some(d) if !exchange && self.index_before_unlink(newparent, newname, &d)? => {
                Some(self.resolve(&np, newname)?)
            }
            other => other,
        };
        if exchange && dst.is_none() {
            return Err(ENOENT);
        }
        if let Some(d) = &dst {
            let (a, b) = (src.reals.top()?.stat()?, d.reals.top()?.stat()?);
            if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
                // Two names of one object: rename does nothing (POSIX).
                return Ok(());
            }
        }
        let has_lower = |r: &Resolved| {
            r.kind == Kind::Directory
                && !(r.reals.len() == 1 && r.reals.first().is_some_and(|t| t.layer == upper))
        };
        let src_redirect = has_lower(&src);
        let dst_redirect = exchange && dst.as_ref().is_some_and(has_lower);
        // Without redirect records a directory with lower parts cannot move: `EXDEV` makes
        // tools fall back to copying, as the kernel does with `redirect_dir=off`.
        if (src_redirect || dst_redirect) && !self.redirect_dir {
            return Err(EXDEV);
        }
        if !exchange && let Some(d) = &dst {
            match (src.kind == Kind::Directory, d.kind == Kind::Directory) {
                (true, false) => return Err(ENOTDIR),
                (false, true) => return Err(EISDIR),
                (true, true) => {
                    if !readdir::merged_listing(&self.layers, &d.reals, self.record_ns)?.is_empty()
                    {
                        return Err(ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
        }
        self.with_child(parent, name, |reached| {
            // A file moves as a metadata-only copy that records where its data is.
            let (src_node, _) = self.writable(reached, CopyData::Metadata)?;
            let src_node = &src_node;
            self.set_data_redirect(src_node)?;
            let dst_node = if exchange {
                let (n, _) =
                    self.with_child(newparent, newname, |n| self.writable(n, CopyData::Metadata))?;
                self.set_data_redirect(&n)?;
                Some(n)
            } else {
                None
            };
            let oreals = self.ensure_upper(&op, CopyData::All)?;
            let nreals = self.ensure_upper(&np, CopyData::All)?;
            let (odir, ndir) = (oreals.top()?.dir_fd()?, nreals.top()?.dir_fd()?);
            let (cname, cnewname) = (sys::cstr(name)?, sys::cstr(newname)?);
            let samedir = parent == newparent;
            // A directory with lower parts records where they are; one without any must not
            // merge with what a lower layer has at its new name.
            if src_redirect {
                self.set_redirect(src_node, samedir)?;
            } else if src.kind == Kind::Directory && self.lower_has(&nreals, newname)? {
                self.set_opaque(src_node)?;
            }
            if let Some(d) = &dst_node {
                if dst_redirect {
                    self.set_redirect(d, samedir)?;
                } else if d.kind == Kind::Directory && self.lower_has(&oreals, name)? {
                    self.set_opaque(d)?;
                }
            }
            let mut replaced: Option<libc::stat> = None;
            if !exchange {
                match sys::fstatat(ndir, &cnewname) {
                    Ok(st) if sys::is_whiteout(&st) => {
                        if src.kind == Kind::Directory {
                            sys::unlinkat(ndir, &cnewname, 0)?;
                        }
                    }
                    Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR => {
                        // An empty merged directory: its upper part holds only whiteouts.
                        self.remove_upper_dir(work, ndir, &cnewname)?;
                        replaced = Some(st);
                    }
                    Ok(st) => replaced = Some(st),
                    Err(e) if e.errno() == libc::ENOENT => {}
                    Err(e) => return Err(e),
                }
            }
            if src.kind != Kind::Directory && link_alias(src_node, odir, &cname)? {
                self.alias_linked(src_node)?;
            }
            if let Some(d) = &dst_node
                && d.kind != Kind::Directory
                && link_alias(d, ndir, &cnewname)?
            {
                self.alias_linked(d)?;
            }
            if !exchange && let Some(d) = &dst {
                self.pin_if_alive(d)?;
                self.lower_alias_removed(d)?;
            }
            let needs_whiteout = !exchange && self.lower_has(&oreals, name)?;
            let real_flags = if exchange { libc::RENAME_EXCHANGE } else { 0 };
            if needs_whiteout {
                match sys::renameat2(
                    odir,
                    &cname,
                    ndir,
                    &cnewname,
                    real_flags | libc::RENAME_WHITEOUT,
                ) {
                    Ok(()) => {}
                    Err(e) if e.errno() == libc::EINVAL || e.errno() == libc::EPERM => {
                        sys::renameat2(odir, &cname, ndir, &cnewname, real_flags)?;
                        self.make_whiteout(odir, name)?;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                sys::renameat2(odir, &cname, ndir, &cnewname, real_flags)?;
            }
            remove_wh_file(ndir, newname)?;
            if !samedir {
                // The moved entry may carry an inode-number record: let readdir look for it.
                sys::setxattr(ndir, work.xattr_ns.impure(), b"y", 0)?;
            }
            if let Some(st) = replaced {
                self.upper_name_removed(&st);
            }
            op.listing_changed();
            np.listing_changed();
            src_node.set_location(newparent, newname);
            repoint(src_node, nreals.top()?.dir_arc()?, &cnewname);
            if let Some(d) = dst_node {
                d.set_location(parent, name);
                repoint(&d, oreals.top()?.dir_arc()?, &cname);
            }
            Ok(())
        })
    }

    /// Records in the upper part of directory node `node` where its lower parts are, before it
    /// moves: its current name when it stays in the same directory, else its full lower path
    /// (kernel: `ovl_set_redirect()`). An existing record that still holds is kept.
    fn set_redirect(&self, node: &Inode, samedir: bool) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let reals = node.reals();
        let top = reals.first().filter(|r| r.layer == upper).ok_or(EIO)?;
        let existing = records::redirect(top.dir_fd()?, self.record_ns)?;
        if let Some(r) = &existing
            && (samedir || r.first() == Some(&b'/'))
        {
            return Ok(());
        }
        let value = if samedir {
            node.location().name.as_bytes().to_vec()
        } else {
            self.lower_path(node)?
        };
        sys::setxattr(top.fd()?.as_fd(), work.xattr_ns.redirect(), &value, 0)
    }

    /// Before a metadata-only copy gets another name (rename, link), records the absolute lower
    /// path of its data in an `overlay.redirect` xattr, as the kernel does, so that the data is
    /// found from the new name after a remount. An existing record is kept.
    fn set_data_redirect(&self, node: &Inode) -> Result<()> {
        if node.kind != Kind::Regular || node.state.read().lower_data.is_none() {
            return Ok(());
        }
        let (upper, work) = self.upper_layer()?;
        let reals = node.reals();
        let top = reals.first().filter(|r| r.layer == upper).ok_or(EIO)?;
        match top.getxattr(self.record_ns.redirect()) {
            Ok(v) if !v.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) if records::is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
        let loc = node.location();
        let parent = self.inodes.get(loc.parent)?;
        let mut path = self.lower_path(&parent)?;
        path.push(b'/');
        path.extend_from_slice(loc.name.as_bytes());
        sys::setxattr(top.fd()?.as_fd(), work.xattr_ns.redirect(), &path, 0)
    }

    /// The absolute path, from the root of a lower layer, where the lower parts of directory node
    /// `node` live.
    fn lower_path(&self, node: &Inode) -> Result<Vec<u8>> {
        if node.id == ROOT_ID {
            return Ok(Vec::new());
        }
        let reals = node.reals();
        let own = match reals.first() {
            Some(top) => records::redirect(top.dir_fd()?, self.record_ns)?,
            None => None,
        };
        if let Some(r) = &own
            && r.first() == Some(&b'/')
        {
            return Ok(r.clone());
        }
        let loc = node.location();
        let parent = self.inodes.get(loc.parent)?;
        let mut path = self.lower_path(&parent)?;
        path.push(b'/');
        path.extend_from_slice(&own.unwrap_or_else(|| loc.name.as_bytes().to_vec()));
        Ok(path)
    }

    /// Marks the upper part of directory node `node` opaque.
    fn set_opaque(&self, node: &Inode) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let reals = node.reals();
        let top = reals.first().filter(|r| r.layer == upper).ok_or(EIO)?;
        sys::setxattr(top.fd()?.as_fd(), work.xattr_ns.opaque(), b"y", 0)?;
        // The lower parts no longer take part in the merge.
        let mut st = node.state.write();
        st.reals = Arc::new(vec![top.clone()]);
        drop(st);
        node.listing_changed();
        Ok(())
    }
}

/// Makes sure `name` in upper directory `dir` stands for the (copied-up) node `node`: a lower
/// name of an indexed file has no upper entry until it is renamed (or linked) like this.
fn link_alias(node: &Inode, dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
    match sys::fstatat(dir, name) {
        Ok(_) => Ok(false),
        Err(e) if e.errno() == libc::ENOENT => {
            let reals = node.reals();
            let top = reals.first().ok_or(EIO)?;
            sys::link_fd(top.fd()?.as_fd(), dir, name)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// After a rename, points a non-directory node's upper entry at its new name (a directory's
/// entry is an fd, which moves with it).
fn repoint(node: &Inode, dir: &Arc<OwnedFd>, name: &CStr) {
    if node.kind == Kind::Directory {
        return;
    }
    let mut st = node.state.write();
    // An indexed copy (lower entry kept second) stays named by its index entry.
    if let Some(top) = st.reals.first()
        && st.reals.len() == 1
        && matches!(top.real, crate::inode::Real::Named { .. })
    {
        let mut reals = (*st.reals).clone();
        if let Some(slot) = reals.first_mut() {
            *slot = RealEntry::named(top.layer, dir.clone(), name);
        }
        st.reals = Arc::new(reals);
    }
}

/// Creates the OCI-format whiteout `.wh.NAME`, for when the kernel refuses `mknod` of a 0/0
/// character device (an unprivileged daemon on an older kernel).
fn make_wh_file(udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let wh = whiteout_name(name).ok_or(crate::error::ENAMETOOLONG)?;
    sys::openat(
        udir,
        &wh,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    )
    .map(drop)
}

/// Removes a `.wh.NAME` whiteout file once `NAME` itself stands in the upper directory.
fn remove_wh_file(udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let Some(wh) = whiteout_name(name) else {
        return Ok(());
    };
    match sys::unlinkat(udir, &wh, 0) {
        Err(e) if e.errno() == libc::ENOENT => Ok(()),
        other => other,
    }
}
