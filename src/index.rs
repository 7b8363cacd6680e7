//! The index (`index=on`): hard links of lower files kept linked across copy-up. A lower file
//! with several names is copied once, into `WORKDIR/index` under its origin handle
//! ([`crate::origin::IndexKey`]); every name of it finds that copy; names still only in a lower
//! layer count in the copy's link count through its `overlay.nlink` record; a change through
//! such a name links it into the upper (`ovl_link_up`), and before the last upper name goes
//! the copy stays reachable by another. Kernel counterpart: `fs/overlayfs/index.c` does not
//! exist as such: `ovl_lookup_index()`, `ovl_nlink_start()`, `ovl_link_up()` and
//! `ovl_set_nlink_upper()` in `namei.c`, `dir.c`, `copy_up.c` and `util.c`.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};

use crate::copy_up::build::CopyData;
use crate::error::{EIO, Result};
use crate::inode::{Inode, Location, RealEntry, Top};
use crate::kind::Kind;
use crate::lookup::{self, Resolved};
use crate::overlay::Overlay;
use crate::{records, sys};

impl Overlay {
    /// A lower file with several names whose copy is in the index (copied up through another
    /// name): it resolves to that copy, keeping the lower entry second for its link count.
    pub(crate) fn find_in_index(&self, resolved: &mut lookup::Resolved) -> Result<()> {
        let Some(index_dir) = self.workdir().and_then(|w| w.index.as_ref()) else {
            return Ok(());
        };
        let Some(upper) = self.layers().upper() else {
            return Ok(());
        };
        if resolved.kind == Kind::Directory
            || resolved.stat.st_nlink <= 1
            || resolved.reals.top()?.layer == upper
        {
            return Ok(());
        }
        let key = crate::origin::IndexKey::of(resolved.reals.top()?)?;
        match sys::fstatat(index_dir.as_fd(), &key.name) {
            Ok(st) => {
                let lower = resolved.reals.top()?.clone();
                let entry = RealEntry::named(upper, index_dir.clone(), &key.name);
                // A metadata-only copy keeps reading its data from the lower file, or from where
                // that file's data is when it is a metadata-only copy itself (a layer that was
                // an upper once).
                if records::is_metacopy(entry.fd()?.as_fd(), self.record_ns())? {
                    resolved.lower_data = Some(resolved.lower_data.take().unwrap_or(lower.clone()));
                } else {
                    resolved.lower_data = None;
                }
                resolved.reals = vec![entry, lower];
                resolved.stat = st;
                Ok(())
            }
            Err(e) if e.errno() == libc::ENOENT => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A live node of an indexed file reached again through the index: when it knows the
    /// object only by one upper entry (it was reached through an upper name, which may since
    /// have been removed while the node stayed alive), it takes the index entry and the lower
    /// file instead, so its link count keeps counting the lower names (`overlay.nlink`).
    pub(crate) fn adopt_index_entry(&self, node: &Inode, reals: Vec<RealEntry>) {
        let mut st = node.state.write();
        if st.reals.len() == 1
            && st.reals.first().map(|r| Some(r.layer)) == Some(self.layers().upper())
        {
            st.reals = crate::inode::Reals::from(reals);
        }
    }

    /// Links the indexed copy of `node` under one of the other names it was reached by that
    /// still names its lower object (the kernel removes index entries without any upper name).
    pub(crate) fn link_some_alias(
        &self,
        node: &Inode,
        loc: &Location,
        lower: &libc::stat,
    ) -> Result<bool> {
        for (parent, name) in loc.aliases().iter().rev() {
            let Ok(pnode) = self.inodes().get(*parent) else {
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
        log::warn!("no name left to publish the copy of node {}", node.id());
        Ok(false)
    }

    /// Before a name of a lower file with several names goes away, the file is copied into the
    /// index (the kernel's `ovl_nlink_start`), so that its merged link count is kept from then on.
    /// Returns whether it copied (the name may now stand in the upper).
    pub(crate) fn index_before_unlink(
        &self,
        parent: u64,
        name: &OsStr,
        child: &Resolved,
    ) -> Result<bool> {
        let upper = self.upper_layer()?.0;
        if !self.index()
            || child.kind == Kind::Directory
            || child.stat.st_nlink <= 1
            || child.reals.top()?.layer == upper
        {
            return Ok(false);
        }
        self.with_child(parent, name, |node| {
            let loc = node.location();
            if loc.parent != parent || loc.name() != name {
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
    pub(crate) fn link_up(&self, node: &Inode, upper: usize) -> Result<()> {
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
        if loc.parent == 0 || !self.names_lower(loc.parent, loc.name(), &lower.stat()?) {
            return Ok(());
        }
        let pnode = self.inodes().get(loc.parent)?;
        let preals = self.ensure_upper(&pnode, CopyData::All)?;
        if link_alias(node, preals.top()?.dir_fd()?, &sys::cstr(loc.name())?)? {
            pnode.listing_changed();
            self.alias_linked(node)?;
            log::debug!("linked up {:?} of node {}", loc.name(), node.id());
        }
        Ok(())
    }

    /// A lower name of an indexed copy got its upper link: the upper link count grew while the
    /// merged one did not, so the record drops by one.
    pub(crate) fn alias_linked(&self, node: &Inode) -> Result<()> {
        let (_, work) = self.upper_layer()?;
        let reals = node.reals();
        // Only indexed copies carry a record; after a remount their node may have been reached
        // through an upper name, with no lower entry beside it.
        if let Some(n) = records::nlink_record(reals.top()?, self.record_ns())? {
            records::set_nlink_record(work.xattr_ns, reals.top()?, n - 1)?;
        }
        Ok(())
    }

    /// A name that exists only in a lower layer goes away (whiteout or replaced): when it is a
    /// name of an indexed copy, the copy's link-count record drops by one.
    pub(crate) fn lower_alias_removed(&self, removed: &Resolved) -> Result<()> {
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
        let key = crate::origin::IndexKey::of(removed.reals.top()?)?;
        let entry = RealEntry::named(upper, index_dir.clone(), &key.name);
        match records::nlink_record(&entry, self.record_ns()) {
            Ok(Some(n)) => records::set_nlink_record(work.xattr_ns, &entry, n - 1)?,
            Ok(None) => return Ok(()),
            Err(e) if e.errno() == libc::ENOENT => return Ok(()),
            Err(e) => return Err(e),
        }
        self.drop_unnamed_index(&key)
    }

    /// The index key of `child` when it is an indexed copy (an upper file with more than one
    /// link and an origin record, which names its index entry), taken before one of its upper
    /// names goes.
    pub(crate) fn index_key_of(&self, child: &Resolved) -> Result<Option<crate::origin::IndexKey>> {
        let Some((upper, work)) = self.upper_layer().ok() else {
            return Ok(None);
        };
        let top = child.reals.top()?;
        if work.index.is_none()
            || child.kind == Kind::Directory
            || top.layer != upper
            // The top entry's own link count (the index entry is one of its links).
            || child.stat.st_nlink <= 1
        {
            return Ok(None);
        }
        let Some(origin) = records::get_entry(top, self.record_ns().origin())? else {
            return Ok(None);
        };
        let hex: String = origin.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Some(crate::origin::IndexKey {
            name: std::ffi::CString::new(hex).map_err(|_| EIO)?,
            origin,
        }))
    }

    /// Once an indexed copy has no name left, upper or lower-only (the index entry is its only
    /// link and its record counts no other), its index entry goes, as the kernel's
    /// `ovl_cleanup_index()` removes it when the merged link count reaches 0; left behind it
    /// would be an orphan the kernel removes at its next mount.
    pub(crate) fn drop_unnamed_index(&self, key: &crate::origin::IndexKey) -> Result<()> {
        let Some((upper, work)) = self.upper_layer().ok() else {
            return Ok(());
        };
        let Some(index_dir) = &work.index else {
            return Ok(());
        };
        let st = match sys::fstatat(index_dir.as_fd(), &key.name) {
            Ok(st) => st,
            Err(e) if e.errno() == libc::ENOENT => return Ok(()),
            Err(e) => return Err(e),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR || st.st_nlink != 1 {
            return Ok(());
        }
        let entry = RealEntry::named(upper, index_dir.clone(), &key.name);
        let others = records::nlink_record(&entry, self.record_ns())?.unwrap_or(0);
        if st.st_nlink as i64 + others > 0 {
            return Ok(());
        }
        match sys::unlinkat(index_dir.as_fd(), &key.name, 0) {
            Err(e) if e.errno() != libc::ENOENT => Err(e),
            _ => Ok(()),
        }
    }
}

/// Makes sure `name` in upper directory `dir` stands for the (copied-up) node `node`: a lower
/// name of an indexed file has no upper entry until it is renamed (or linked) like this.
pub(crate) fn link_alias(node: &Inode, dir: BorrowedFd<'_>, name: &CStr) -> Result<bool> {
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
