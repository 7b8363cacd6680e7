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

use crate::acl;
use crate::copy_up::build::{CopyData, set_owner};
use crate::error::{
    EEXIST, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY, EPERM, ESTALE, EXDEV, Result,
};
use crate::inode::{Inode, NodeState, ROOT_ID, RealEntry, Reals, Top};
use crate::kind::Kind;
use crate::lookup::{self, Resolved};
use crate::overlay::{Caller, Entry, NewEntry, Overlay};
use crate::readdir;
use crate::records;
use crate::stat_override::{self, StatOverride};
use crate::sys;
use crate::whiteout::{self, is_hidden_name};
use crate::workdir::{Workdir, remove_tree};

/// Who owns a new entry and with which mode (disk ids, permission bits), and where that is
/// kept: on the inode, or in the stat record `record` ([`crate::stat_override`]).
#[derive(Clone, Copy)]
struct NewOwner {
    uid: u32,
    gid: u32,
    mode: u32,
    record: Option<&'static CStr>,
}

impl Overlay {
    /// Whether a lower layer of the merged directory `preals` still has `name`, so that
    /// removing the upper entry must leave a whiteout.
    fn lower_has(&self, preals: &[RealEntry], name: &OsStr) -> Result<bool> {
        let upper = self.layers().upper();
        let lowers: Vec<RealEntry> = preals
            .iter()
            .filter(|r| Some(r.layer) != upper)
            .cloned()
            .collect();
        if lowers.is_empty() {
            return Ok(false);
        }
        match lookup::lookup(self.layers(), &lowers, name) {
            Ok(_) => Ok(true),
            Err(e) if e == ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Resolves `name` in directory node `parent` without counting a lookup.
    pub(crate) fn resolve(&self, parent: &Inode, name: &OsStr) -> Result<Resolved> {
        lookup::lookup(self.layers(), &parent.reals(), name)
    }

    /// Runs `f` with the node of `parent/name`, counting a lookup only for the call's length.
    pub(crate) fn with_child<T>(
        &self,
        parent: u64,
        name: &OsStr,
        f: impl FnOnce(&Arc<Inode>) -> Result<T>,
    ) -> Result<T> {
        let e = self.lookup(parent, name)?;
        let res = self.inodes().get(e.node).and_then(|node| f(&node));
        self.inodes().forget(e.node, 1);
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
        self.create_entry_steps(parent, name, mode, caller, what)
            .map_err(|e| e.context("create").named(name))
    }

    fn create_entry_steps(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
        what: NewEntry<'_>,
    ) -> Result<(Entry, Option<OwnedFd>)> {
        let (_, work) = self.upper_layer()?;
        if let NewEntry::Node { file_type, rdev } = what
            && file_type == libc::S_IFCHR
            && rdev == 0
        {
            // A 0/0 character device is a whiteout in the upper: made here, the new name would
            // vanish from the merged view at once. The kernel overlay refuses it (`ovl_mknod`).
            return Err(EPERM);
        }
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
        let mut owner = self.new_owner(udir, preals.top()?.layer, mode, caller, what)?;
        let inherited = match what {
            // A symlink has no ACL and its mode is fixed: neither umask nor ACL applies.
            NewEntry::Symlink { .. } => None,
            _ => {
                let pdefault = self.default_acl(&pnode, udir)?;
                let i = acl::inherit(pdefault.as_deref(), owner.mode, is_dir, caller.umask)?;
                owner.mode = i.mode;
                Some(i)
            }
        };
        let file = if !over_whiteout && !opaque && owner.record.is_none() {
            // Nothing to replace and no marker to set: made in place, as the kernel does
            // (`ovl_create_upper`); the upper filesystem gives it the parent's default ACL
            // itself (the mode is already masked by it, which masking again does not change).
            // A failure part way removes what was made.
            match self.build_new(udir, &cname, owner, what, opaque, None) {
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
            // The work directory has no default ACL: the union parent's is given here, as the
            // kernel's `ovl_create_over_whiteout` does.
            let tmp = work.temp_name();
            let acls = inherited.as_ref().filter(|_| owner.record.is_none());
            let file = match self.build_new(work.dir(), &tmp, owner, what, opaque, acls) {
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
        whiteout::remove_wh_file(udir, name)?;
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

    /// Who owns an entry `caller` makes in the upper directory `udir` (of layer `upper`) with
    /// `mode`: the caller's ids turned into disk ids, or the parent's group when the parent is
    /// set-group-id (a directory then inherits the bit); kept in a stat record when the upper
    /// keeps them ([`crate::stat_override`]) and the entry is a file or directory.
    fn new_owner(
        &self,
        udir: BorrowedFd<'_>,
        upper: usize,
        mode: u32,
        caller: Caller,
        what: NewEntry<'_>,
    ) -> Result<NewOwner> {
        let names = self.layers().stat_override(upper);
        let mut pst = sys::fstat(udir)?;
        stat_override::apply(udir, names, Kind::Directory, &mut pst)?;
        let is_dir = matches!(what, NewEntry::Directory);
        let mut mode = mode & 0o7777;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            if is_dir {
                mode |= libc::S_ISGID;
            }
            pst.st_gid
        } else {
            self.gids().to_disk(caller.gid)
        };
        Ok(NewOwner {
            uid: self.uids().to_disk(caller.uid),
            gid,
            mode,
            record: names.filter(|_| matches!(what, NewEntry::File { .. } | NewEntry::Directory)),
        })
    }

    /// The default ACL of directory node `pnode`, whose upper part is `udir`; `None` where it
    /// has none or the upper filesystem has no ACLs. Its absence is remembered on the node (as
    /// `getxattr` does), so that a create costs no extra request where no ACLs are used.
    fn default_acl(&self, pnode: &Inode, udir: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
        let name = OsStr::from_bytes(acl::DEFAULT.to_bytes());
        if pnode.known_absent(name) {
            return Ok(None);
        }
        match sys::getxattr(udir, acl::DEFAULT) {
            Ok(v) => Ok(Some(v)),
            // No default ACL, or no ACLs on the upper's filesystem at all: both stay so until
            // an xattr of the directory is set through the mount (which forgets the absence).
            Err(e) if e.errno() == libc::ENODATA || e.errno() == libc::EOPNOTSUPP => {
                pnode.remember_absent(name);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Enters a node for an entry ufs just made in the upper layer (one lookup counted).
    fn new_node(&self, parent: u64, name: &OsStr, kind: Kind, real: RealEntry) -> Result<Entry> {
        let st = real.stat()?;
        let ino = self
            .layers()
            .copied_up(st.st_ino)
            .unwrap_or_else(|| self.layers().map_ino(real.layer, st.st_ino));
        let (node, created) = self
            .inodes()
            .lookup_or_insert(ino, kind, parent, name, || NodeState {
                reals: Reals::from(vec![real]),
                lower_data: None,
            })?;
        self.entry_from(&node, created.then_some(st))
    }

    fn build_new(
        &self,
        wd: BorrowedFd<'_>,
        tmp: &CStr,
        owner: NewOwner,
        what: NewEntry<'_>,
        opaque: bool,
        acls: Option<&acl::Inherited>,
    ) -> Result<Option<OwnedFd>> {
        let work = self.upper_layer()?.1;
        let mode = match owner.record {
            Some(_) => stat_override::DISK_MODE,
            None => owner.mode,
        };
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
        // The new file's own descriptor serves for its owner, mode and xattrs; other kinds are
        // reached by an `O_PATH` open.
        let path_fd;
        let fd = match &file {
            Some(f) => f.as_fd(),
            None => {
                path_fd = sys::open_path(wd, tmp)?;
                path_fd.as_fd()
            }
        };
        if let Some(name) = owner.record {
            let o = StatOverride {
                uid: owner.uid,
                gid: owner.gid,
                mode: owner.mode,
            };
            let file_type = match what {
                NewEntry::Directory => libc::S_IFDIR,
                _ => libc::S_IFREG,
            };
            stat_override::write(fd.as_fd(), name, &o, file_type)?;
        } else {
            set_owner(fd.as_fd(), owner.uid, owner.gid)?;
            let is_symlink = matches!(what, NewEntry::Symlink { .. });
            if !is_symlink && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                // `chown` clears the set-id bits the caller asked for.
                sys::fchmod(fd.as_fd(), mode & 0o7777)?;
            }
        }
        if let Some(acls) = acls {
            // Setting the access ACL sets the permission bits from it: the same as `mode`.
            if let Some(access) = &acls.access {
                sys::setxattr(fd.as_fd(), acl::ACCESS, access, 0)?;
            }
            if let Some(default) = &acls.default {
                sys::setxattr(fd.as_fd(), acl::DEFAULT, default, 0)?;
            }
        }
        if opaque {
            sys::setxattr(fd.as_fd(), work.xattr_ns.opaque(), b"y", 0)?;
        }
        Ok(file)
    }

    /// Puts a whiteout at `name` in the upper directory `udir`, where nothing stands yet: one
    /// made in the work directory ([`Workdir::whiteout`], a link to the shared one), renamed
    /// into place.
    fn make_whiteout(&self, work: &Workdir, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let cname = sys::cstr(name)?;
        let tmp = match work.whiteout() {
            Ok(tmp) => tmp,
            Err(e) if e.errno() == libc::EPERM => return whiteout::make_wh_file(udir, name),
            Err(e) => return Err(e),
        };
        sys::renameat2(work.dir(), &tmp, udir, &cname, libc::RENAME_NOREPLACE).inspect_err(|_| {
            work.discard(&tmp);
        })
    }

    /// Replaces the upper entry `name` in `udir` (a file or a directory) by a whiteout in one
    /// step, and removes the old entry.
    fn whiteout_over(&self, work: &Workdir, udir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let cname = sys::cstr(name)?;
        let old = match work.whiteout() {
            Ok(tmp) => {
                if let Err(e) =
                    sys::renameat2(work.dir(), &tmp, udir, &cname, libc::RENAME_EXCHANGE)
                {
                    work.discard(&tmp);
                    return Err(e);
                }
                tmp
            }
            Err(e) if e.errno() == libc::EPERM => {
                let tmp = work.temp_name();
                sys::renameat2(udir, &cname, work.dir(), &tmp, libc::RENAME_NOREPLACE)?;
                whiteout::make_wh_file(udir, name)?;
                tmp
            }
            Err(e) => return Err(e),
        };
        remove_tree(work.dir(), &old)
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
            self.layers().forget_copy_up(st.st_ino);
        }
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.unlink_steps(parent, name)
            .map_err(|e| e.context("unlink").named(name))
    }

    fn unlink_steps(&self, parent: u64, name: &OsStr) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let pnode = self.dir_node(parent)?;
        let mut child = self.resolve(&pnode, name)?;
        if child.kind == Kind::Directory {
            // The kernel asks to unlink only a name it knows as a non-directory (`may_delete()`
            // answers EISDIR for a directory it knows): a directory here means the object
            // changed behind the mount (its upper removed, a lower directory showing again),
            // which the kernel overlay answers ESTALE (the upper it finds is not the one its
            // dentry holds, `ovl_remove_upper()`; xfstests `overlay/012`).
            return Err(ESTALE);
        }
        if self.index_before_unlink(parent, name, &child)? {
            child = self.resolve(&pnode, name)?;
        }
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        let udir = preals.top()?.dir_fd()?;
        let cached = self.pin_if_alive(&child)?;
        if child.reals.top()?.layer == upper {
            let index_key = self.index_key_of(&child)?;
            // Only an upper name can lack a lower one below (a lower name needs the whiteout).
            if self.lower_has(&preals, name)? {
                self.whiteout_over(work, udir, name)?;
            } else {
                sys::unlinkat(udir, &sys::cstr(name)?, 0)?;
            }
            self.upper_name_removed(&child.stat);
            if let Some(key) = index_key {
                self.drop_unnamed_index(&key)?;
            }
        } else {
            self.make_whiteout(work, udir, name)?;
            self.lower_alias_removed(&child)?;
        }
        pnode.listing_changed();
        self.name_removed(cached);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.rmdir_steps(parent, name)
            .map_err(|e| e.context("rmdir").named(name))
    }

    fn rmdir_steps(&self, parent: u64, name: &OsStr) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let pnode = self.dir_node(parent)?;
        let child = self.resolve(&pnode, name)?;
        if child.kind != Kind::Directory {
            return Err(ENOTDIR);
        }
        if !readdir::merged_listing(self.layers(), &child.reals, self.record_ns())?.is_empty() {
            return Err(ENOTEMPTY);
        }
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        let udir = preals.top()?.dir_fd()?;
        if child.reals.top()?.layer == upper {
            // Only an upper name can lack a lower one below (a lower name needs the whiteout).
            if self.lower_has(&preals, name)? {
                self.whiteout_over(work, udir, name)?;
            } else {
                self.remove_upper_dir(work, udir, &sys::cstr(name)?)?;
            }
            self.upper_name_removed(&child.stat);
        } else {
            self.make_whiteout(work, udir, name)?;
        }
        pnode.listing_changed();
        Ok(())
    }

    /// `link(2)`: a new name `newname` in `newparent` for node `node`.
    pub fn link(&self, node: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        self.link_steps(node, newparent, newname)
            .map_err(|e| e.context("link").named(newname))
    }

    fn link_steps(&self, node: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        let (_, work) = self.upper_layer()?;
        if is_hidden_name(newname) {
            return Err(EINVAL);
        }
        let node = self.inodes().get(node)?;
        if node.kind == Kind::Directory {
            return Err(crate::error::EPERM);
        }
        // Like the kernel, a link copies only metadata; the copy records where its data is.
        let (node, reals) = self.writable(&node, CopyData::Metadata)?;
        self.set_data_redirect(&node)?;
        let np = self.dir_node(newparent)?;
        let nreals = self.ensure_upper(&np, CopyData::All)?;
        let ndir = nreals.top()?.dir_fd()?;
        match lookup::lookup(self.layers(), &nreals, newname) {
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
        // The marker below must not be removed by a listing before the link is published.
        let _marker = np.impure_marker().read();
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
        whiteout::remove_wh_file(ndir, newname)?;
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
        self.rename_steps(parent, name, newparent, newname, flags)
            .map_err(|e| e.context("rename").named(name))
    }

    fn rename_steps(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let names = RenameNames {
            parent,
            name,
            newparent,
            newname,
        };
        // The phases of the kernel's `ovl_rename`: decide, copy up, mark, clear the target,
        // publish, and then bring the nodes up to date.
        let Some(plan) = self.rename_plan(&names, flags)? else {
            return Ok(());
        };
        self.with_child(parent, name, |reached| {
            let moved = self.rename_copy_up(&plan, &names, reached)?;
            self.rename_mark(&plan, &names, &moved)?;
            let replaced = self.rename_clear_target(&plan, &names, &moved)?;
            self.rename_publish(&plan, &names, &moved)?;
            self.rename_update_nodes(&plan, &names, moved, replaced)
        })
    }

    /// Phase 1: every check, before anything changes. `None` when there is nothing to do (two
    /// names of one object).
    fn rename_plan(&self, n: &RenameNames<'_>, flags: u32) -> Result<Option<RenamePlan>> {
        let upper = self.upper_layer()?.0;
        if is_hidden_name(n.newname) {
            return Err(EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(EINVAL);
        }
        let op = self.dir_node(n.parent)?;
        let np = self.dir_node(n.newparent)?;
        let src = self.resolve(&op, n.name)?;
        let dst = match self.resolve(&np, n.newname) {
            Ok(d) => Some(d),
            Err(e) if e == ENOENT => None,
            Err(e) => return Err(e),
        };
        if noreplace && dst.is_some() {
            return Err(EEXIST);
        }
        let dst = match dst {
            Some(d) if !exchange && self.index_before_unlink(n.newparent, n.newname, &d)? => {
                Some(self.resolve(&np, n.newname)?)
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
                return Ok(None);
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
        if (src_redirect || dst_redirect) && !self.redirect_dir() {
            return Err(EXDEV);
        }
        if !exchange && let Some(d) = &dst {
            match (src.kind == Kind::Directory, d.kind == Kind::Directory) {
                (true, false) => return Err(ENOTDIR),
                (false, true) => return Err(EISDIR),
                (true, true) => {
                    if !readdir::merged_listing(self.layers(), &d.reals, self.record_ns())?
                        .is_empty()
                    {
                        return Err(ENOTEMPTY);
                    }
                }
                (false, false) => {}
            }
        }
        Ok(Some(RenamePlan {
            exchange,
            src_kind: src.kind,
            dst,
            src_redirect,
            dst_redirect,
            op,
            np,
        }))
    }

    /// Phase 2: the source (and, for an exchange, the target) and both parents in the upper. A
    /// file moves as a metadata-only copy that records where its data is.
    fn rename_copy_up(
        &self,
        plan: &RenamePlan,
        n: &RenameNames<'_>,
        reached: &Arc<Inode>,
    ) -> Result<Moved> {
        let (src_node, _) = self.writable(reached, CopyData::Metadata)?;
        self.set_data_redirect(&src_node)?;
        let dst_node = if plan.exchange {
            let (d, _) = self.with_child(n.newparent, n.newname, |d| {
                self.writable(d, CopyData::Metadata)
            })?;
            self.set_data_redirect(&d)?;
            Some(d)
        } else {
            None
        };
        let oreals = self.ensure_upper(&plan.op, CopyData::All)?;
        let nreals = self.ensure_upper(&plan.np, CopyData::All)?;
        Ok(Moved {
            src_node,
            dst_node,
            oreals,
            nreals,
        })
    }

    /// Phase 3: a directory with lower parts records where they are; one without any must not
    /// merge with what a lower layer has at its new name.
    fn rename_mark(&self, plan: &RenamePlan, n: &RenameNames<'_>, m: &Moved) -> Result<()> {
        let samedir = n.parent == n.newparent;
        if plan.src_redirect {
            self.set_redirect(&m.src_node, samedir)?;
        } else if plan.src_kind == Kind::Directory && self.lower_has(&m.nreals, n.newname)? {
            self.set_opaque(&m.src_node)?;
        }
        if let Some(d) = &m.dst_node {
            if plan.dst_redirect {
                self.set_redirect(d, samedir)?;
            } else if d.kind == Kind::Directory && self.lower_has(&m.oreals, n.name)? {
                self.set_opaque(d)?;
            }
        }
        Ok(())
    }

    /// Phase 4: what stands at the new name in the upper makes way (a whiteout under a
    /// directory, an empty merged directory's upper part), index names are linked where a name
    /// will be needed, and a replaced object's node is pinned. Returns what was replaced.
    fn rename_clear_target(
        &self,
        plan: &RenamePlan,
        n: &RenameNames<'_>,
        m: &Moved,
    ) -> Result<Option<libc::stat>> {
        let work = self.upper_layer()?.1;
        let (odir, ndir) = (m.oreals.top()?.dir_fd()?, m.nreals.top()?.dir_fd()?);
        let (cname, cnewname) = (sys::cstr(n.name)?, sys::cstr(n.newname)?);
        let mut replaced: Option<libc::stat> = None;
        if !plan.exchange {
            match sys::fstatat(ndir, &cnewname) {
                Ok(st) if sys::is_whiteout(&st) => {
                    if plan.src_kind == Kind::Directory {
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
        if plan.src_kind != Kind::Directory && crate::index::link_alias(&m.src_node, odir, &cname)?
        {
            self.alias_linked(&m.src_node)?;
        }
        if let Some(d) = &m.dst_node
            && d.kind != Kind::Directory
            && crate::index::link_alias(d, ndir, &cnewname)?
        {
            self.alias_linked(d)?;
        }
        if !plan.exchange
            && let Some(d) = &plan.dst
        {
            let cached = self.pin_if_alive(d)?;
            self.lower_alias_removed(d)?;
            self.name_removed(cached);
        }
        Ok(replaced)
    }

    /// Phase 5: one `renameat2` in the upper, leaving a whiteout where a lower layer still has
    /// the old name.
    fn rename_publish(&self, plan: &RenamePlan, n: &RenameNames<'_>, m: &Moved) -> Result<()> {
        let work = self.upper_layer()?.1;
        let (odir, ndir) = (m.oreals.top()?.dir_fd()?, m.nreals.top()?.dir_fd()?);
        let (cname, cnewname) = (sys::cstr(n.name)?, sys::cstr(n.newname)?);
        // The new parent is marked impure below, after the entry arrives: no listing may
        // remove the marker between its first check and then.
        let _marker = (n.parent != n.newparent).then(|| plan.np.impure_marker().read());
        let needs_whiteout = !plan.exchange && self.lower_has(&m.oreals, n.name)?;
        let real_flags = if plan.exchange {
            libc::RENAME_EXCHANGE
        } else {
            0
        };
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
                    self.make_whiteout(work, odir, n.name)?;
                }
                Err(e) => return Err(e),
            }
        } else {
            sys::renameat2(odir, &cname, ndir, &cnewname, real_flags)?;
        }
        whiteout::remove_wh_file(ndir, n.newname)?;
        if n.parent != n.newparent {
            // The moved entry may carry an inode-number record: let readdir look for it.
            sys::setxattr(ndir, work.xattr_ns.impure(), b"y", 0)?;
        }
        Ok(())
    }

    /// Phase 6: the nodes follow the names.
    fn rename_update_nodes(
        &self,
        plan: &RenamePlan,
        n: &RenameNames<'_>,
        m: Moved,
        replaced: Option<libc::stat>,
    ) -> Result<()> {
        if let Some(st) = replaced {
            self.upper_name_removed(&st);
        }
        plan.op.listing_changed();
        plan.np.listing_changed();
        m.src_node.set_location(n.newparent, n.newname);
        repoint(
            &m.src_node,
            m.nreals.top()?.dir_arc()?,
            &sys::cstr(n.newname)?,
        );
        if let Some(d) = m.dst_node {
            d.set_location(n.parent, n.name);
            repoint(&d, m.oreals.top()?.dir_arc()?, &sys::cstr(n.name)?);
        }
        Ok(())
    }

    /// Records in the upper part of directory node `node` where its lower parts are, before it
    /// moves: its current name when it stays in the same directory, else its full lower path
    /// (kernel: `ovl_set_redirect()`). An existing record that still holds is kept.
    fn set_redirect(&self, node: &Inode, samedir: bool) -> Result<()> {
        let (upper, work) = self.upper_layer()?;
        let reals = node.reals();
        let top = reals.first().filter(|r| r.layer == upper).ok_or(EIO)?;
        let existing = records::redirect(top.dir_fd()?, self.record_ns())?;
        if let Some(r) = &existing
            && (samedir || r.first() == Some(&b'/'))
        {
            return Ok(());
        }
        let value = if samedir {
            node.location().name().as_bytes().to_vec()
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
        match top.getxattr(self.record_ns().redirect()) {
            Ok(v) if !v.is_empty() => return Ok(()),
            Ok(_) => {}
            Err(e) if records::is_no_xattr(e.errno()) => {}
            Err(e) => return Err(e),
        }
        let loc = node.location();
        let parent = self.inodes().get(loc.parent)?;
        let mut path = self.lower_path(&parent)?;
        path.push(b'/');
        path.extend_from_slice(loc.name().as_bytes());
        sys::setxattr(top.fd()?.as_fd(), work.xattr_ns.redirect(), &path, 0)
    }

    /// The absolute path, from the root of the top lower layer, where the lower parts of
    /// directory node `node` live: its names up to the first ancestor the upper records a
    /// redirect for (the kernel's `ovl_get_redirect`). A redirect record of a lower layer is not
    /// part of it: the path is walked from the top lower layer, and that layer's own records
    /// take the walk on from there (`lookup::probe`).
    fn lower_path(&self, node: &Inode) -> Result<Vec<u8>> {
        if node.id() == ROOT_ID {
            return Ok(Vec::new());
        }
        let reals = node.reals();
        let own = match reals.first() {
            Some(top) if Some(top.layer) == self.layers().upper() => {
                records::redirect(top.dir_fd()?, self.record_ns())?
            }
            _ => None,
        };
        if let Some(r) = &own
            && r.first() == Some(&b'/')
        {
            return Ok(r.clone());
        }
        let loc = node.location();
        let parent = self.inodes().get(loc.parent)?;
        let mut path = self.lower_path(&parent)?;
        path.push(b'/');
        path.extend_from_slice(&own.unwrap_or_else(|| loc.name().as_bytes().to_vec()));
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
        st.reals = Reals::from(vec![top.clone()]);
        drop(st);
        node.listing_changed();
        Ok(())
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
        let mut reals = st.reals.to_vec();
        if let Some(slot) = reals.first_mut() {
            *slot = RealEntry::named(top.layer, dir.clone(), name);
        }
        st.reals = Reals::from(reals);
    }
}

/// The two names of a rename.
struct RenameNames<'a> {
    parent: u64,
    name: &'a OsStr,
    newparent: u64,
    newname: &'a OsStr,
}

/// What a rename was found to be in its first phase.
struct RenamePlan {
    exchange: bool,
    src_kind: Kind,
    /// What stands at the new name (for an exchange, the other object).
    dst: Option<Resolved>,
    /// The source (the target, for an exchange) is a directory with lower parts: it moves by
    /// a redirect record.
    src_redirect: bool,
    dst_redirect: bool,
    op: Arc<Inode>,
    np: Arc<Inode>,
}

/// The nodes and upper directories a rename works on, once copied up.
struct Moved {
    src_node: Arc<Inode>,
    dst_node: Option<Arc<Inode>>,
    oreals: Reals,
    nreals: Reals,
}
