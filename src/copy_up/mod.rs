//! Copy-up: making an upper copy of an object that so far lives only in a lower layer, as a
//! whole ordered sequence (the kernel's `ovl_copy_up_flags()` / `ovl_copy_up_one()` in
//! `fs/overlayfs/copy_up.c`).
//!
//! `Overlay::writable` is the entry point: the parent is made writable first (top-down); a
//! node already in the upper only has a metadata-only copy completed when data is needed, or a
//! lower-only name of an indexed file linked up ([`crate::index`]); otherwise the name it was
//! reached by is chosen, and [`build::copy_up`] builds and publishes the copy. Without the
//! index, a lower file with several links breaks away under that name (a new object).
//!
//! Invariants: a node is copied once (its `state` lock is held for writing while the copy is
//! made; a racing caller sees the upper entry and returns); the parent's cached listing is
//! dropped after every copy (it names the lower entry).

pub mod build;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

pub use build::CopyData;

use crate::error::{EIO, Result};
use crate::inode::{Inode, Location, NodeState, ROOT_ID, RealEntry, Reals, Top};
use crate::kind::Kind;
use crate::overlay::Overlay;
use crate::stat_override::{self, StatOverride};
use crate::{records, sys};

impl Overlay {
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
        self.writable_with(node, data, true)
            .map_err(|e| self.named(e.context("copy-up").in_layer(0), node.id()))
    }

    /// Like [`Overlay::ensure_upper`] for an xattr change: as in the kernel, such a change
    /// through a still lower-only name of an indexed file changes the copy without linking that
    /// name up (`ovl_xattr_set` copies up, but never links up).
    pub(crate) fn ensure_upper_for_xattr(&self, node: &Arc<Inode>) -> Result<Reals> {
        self.writable_with(node, CopyData::Metadata, false)
            .map(|(_, reals)| reals)
            .map_err(|e| self.named(e.context("copy-up").in_layer(0), node.id()))
    }

    fn writable_with(
        &self,
        node: &Arc<Inode>,
        data: CopyData,
        link_up: bool,
    ) -> Result<(Arc<Inode>, Reals)> {
        let upper = self.upper_layer()?.0;
        let data = match data {
            CopyData::Metadata if !self.metacopy() || node.kind != Kind::Regular => CopyData::All,
            other => other,
        };
        loop {
            let reals = node.reals();
            if reals.first().is_some_and(|r| r.layer == upper) {
                return self.writable_in_upper(node, reals, data, link_up);
            }
            if let Some(done) = self.copy_up_once(node, &reals, data)? {
                return Ok(done);
            }
            // Copied up by another thread meanwhile, or reached by another name while the
            // parent was being copied up: look again.
        }
    }

    /// A node that already has its upper entry: a metadata-only copy is completed when the
    /// caller needs the data, and (`link_up`) a lower-only name of an indexed file that the
    /// operation came through is linked up.
    fn writable_in_upper(
        &self,
        node: &Arc<Inode>,
        reals: Reals,
        data: CopyData,
        link_up: bool,
    ) -> Result<(Arc<Inode>, Reals)> {
        let (upper, work) = self.upper_layer()?;
        if data != CopyData::Metadata && node.state.read().lower_data.is_some() {
            let mut st = node.state.write();
            if let Some(lower) = st.lower_data.clone() {
                let bytes = build::complete_metacopy(
                    work,
                    st.reals.top()?.fd()?.as_fd(),
                    lower.fd()?.as_fd(),
                    data,
                )?;
                st.lower_data = None;
                self.stats().metacopy_completed(bytes);
                log::debug!("completed the metadata-only copy of node {}", node.id());
            }
        }
        if link_up {
            self.link_up(node, upper)?;
        }
        Ok((node.clone(), reals))
    }

    /// One attempt at copying up the lower node `node` (whose entries were `reals`): `None`
    /// when it must be made again (the node changed while the parent was copied up).
    fn copy_up_once(
        &self,
        node: &Arc<Inode>,
        reals: &Reals,
        data: CopyData,
    ) -> Result<Option<(Arc<Inode>, Reals)>> {
        let upper = self.upper_layer()?.0;
        if node.id() == ROOT_ID {
            // The root's reals always start with the upper root when there is one.
            return Err(EIO);
        }
        let first = node.location();
        if let Some(copy) = first.broken_copy(first.parent, first.name()) {
            // Reached through a name whose copy already broke away: that copy it is.
            return self
                .broken_away(first.parent, first.name(), copy, data)
                .map(Some);
        }
        // The name to copy up under: where the node was last reached, unless that name no
        // longer stands for this lower file (a hard link whose name was replaced), then another
        // name it was reached by that still does.
        let (parent_id, chosen) = match self.still_names(node, &first, reals.top()?)? {
            Some(pick) => pick,
            None => (first.parent, first.name().to_os_string()),
        };
        let parent = self.inodes().get(parent_id)?;
        let preals = self.ensure_upper(&parent, CopyData::All)?;
        let st = node.state.write();
        let loc = node.location();
        if st.reals.first().is_some_and(|r| r.layer == upper)
            || loc.parent != first.parent
            || loc.name() != first.name()
        {
            return Ok(None);
        }
        let src = st.reals.first().ok_or(EIO)?.clone();
        let src_st = src.stat()?;
        // With `index=on`, a lower file with several names is copied once, into the index, and
        // every name finds that copy. Without it, the copy is a new object.
        let several = node.kind != Kind::Directory && src_st.st_nlink > 1;
        let indexed = several && self.index() && self.upper_layer()?.1.index.is_some();
        if several
            && !indexed
            && let Some(copy) = loc.broken_copy(parent_id, &chosen)
        {
            // Another thread broke this name away meanwhile.
            drop(st);
            return self.broken_away(parent_id, &chosen, copy, data).map(Some);
        }
        let plan = CopyPlan {
            parent: &parent,
            preals: &preals,
            name: &chosen,
            src,
            src_st,
            indexed,
            breaks: several && !indexed,
            data,
        };
        self.copy_and_record(node, st, &loc, plan).map(Some)
    }

    /// Builds and publishes the copy `plan` describes, with the node's lock held (`st`), and
    /// brings the node, the parent's listing and the index records up to date.
    fn copy_and_record(
        &self,
        node: &Arc<Inode>,
        mut st: parking_lot::RwLockWriteGuard<'_, NodeState>,
        loc: &Location,
        plan: CopyPlan<'_>,
    ) -> Result<(Arc<Inode>, Reals)> {
        let (upper, work) = self.upper_layer()?;
        let key = if plan.indexed {
            Some(crate::origin::IndexKey::of(&plan.src)?)
        } else {
            None
        };
        // A metadata-only copy in a lower layer (an upper once) has its data further down.
        let data_src = st.lower_data.clone();
        let stat_record = match self.layers().stat_override(upper) {
            Some(name) if stat_override::applies_to(node.kind) => {
                let mut shown = plan.src_st;
                stat_override::apply(
                    plan.src.fd()?.as_fd(),
                    self.layers().stat_override(plan.src.layer),
                    node.kind,
                    &mut shown,
                )?;
                Some((name, StatOverride::of_stat(&shown)))
            }
            _ => None,
        };
        let cname = sys::cstr(plan.name)?;
        // The parent's impure marker is set before the copy is published: no listing may
        // remove it in between.
        let marker = plan.parent.impure_marker().read();
        let (entry, published) = build::copy_up(&build::CopyCtx {
            work,
            upper_layer: upper,
            src: &plan.src,
            data_src: data_src.as_deref(),
            kind: node.kind,
            upper_dir: plan.preals.top()?.dir_arc()?,
            name: &cname,
            data: plan.data,
            // A copy that breaks away is a new object with a number of its own. Any other keeps
            // its number across a remount through this record (the kernel finds it through the
            // origin, whatever `xino` says).
            ino_record: (!plan.breaks).then_some(node.ino),
            index: key.as_ref(),
            stat_record,
        })?;
        drop(marker);
        let bytes = match plan.data {
            CopyData::All if node.kind == Kind::Regular => plan.src_st.st_size.max(0) as u64,
            _ => 0,
        };
        self.stats()
            .copied_up(plan.data == CopyData::Metadata, bytes);
        // The parent's cached listing names the lower entry; a node looked up from it after
        // the kernel forgot this one would show the lower object again.
        plan.parent.listing_changed();
        if plan.breaks {
            let copy = entry.stat()?.st_ino;
            node.broke_away(plan.parent.id(), plan.name, copy);
            drop(st);
            // The name's number changed with no change to the directory the kernel would
            // notice: its cached listing must go.
            self.invalidate(plan.parent.id(), true);
            log::debug!("copied up {:?} away from node {}", plan.name, node.id());
            return self.broken_away(plan.parent.id(), plan.name, copy, plan.data);
        }
        self.layers()
            .remember_copy_up(entry.stat()?.st_ino, node.ino);
        let mut new_reals = vec![entry];
        if node.kind == Kind::Directory || plan.indexed {
            new_reals.extend(st.reals.iter().cloned());
        }
        st.reals = Reals::from(new_reals);
        st.lower_data = match plan.data {
            CopyData::Metadata => Some(data_src.unwrap_or_else(|| Box::new(plan.src.clone()))),
            _ => None,
        };
        log::debug!("copied up {:?} (node {})", loc.name(), node.id());
        let reals = st.reals.clone();
        drop(st);
        if plan.data == CopyData::Metadata {
            // From now on its attributes must not be cached (see `Overlay::volatile`); the
            // kernel may hold them from before, and a failed request (a `setxattr` that copied
            // up, then failed) would not make it ask again.
            self.invalidate(node.id(), false);
        }
        if plan.indexed {
            let linked = published || self.link_some_alias(node, loc, &plan.src_st)?;
            let upper_links = if linked { 2 } else { 1 };
            records::set_nlink_record(
                work.xattr_ns,
                reals.top()?,
                plan.src_st.st_nlink as i64 - upper_links,
            )?;
        }
        Ok((node.clone(), reals))
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
            if Some(top.layer) != self.layers().upper() || top.stat()?.st_ino != copy {
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
        let candidates = std::iter::once((loc.parent, loc.name().to_os_string()))
            .chain(loc.aliases().iter().rev().cloned());
        for (i, (parent, name)) in candidates.enumerate() {
            if self.names_lower(parent, &name, &lst) {
                return Ok(if i == 0 { None } else { Some((parent, name)) });
            }
        }
        Ok(None)
    }

    /// Whether `name` in directory node `parent` resolves to the lower object with `stat` `lower`.
    pub(crate) fn names_lower(&self, parent: u64, name: &OsStr, lower: &libc::stat) -> bool {
        let Ok(pnode) = self.inodes().get(parent) else {
            return false;
        };
        let Ok(found) = self.resolve(&pnode, name) else {
            return false;
        };
        let Ok(top) = found.reals.top() else {
            return false;
        };
        Some(top.layer) != self.layers().upper()
            && found.stat.st_dev == lower.st_dev
            && found.stat.st_ino == lower.st_ino
    }
}

/// What one copy-up makes, decided under the node's lock.
struct CopyPlan<'a> {
    /// The directory node the copy goes into, and its real entries (the upper one first).
    parent: &'a Arc<Inode>,
    preals: &'a Reals,
    /// The name the copy is published under.
    name: &'a OsStr,
    src: RealEntry,
    src_st: libc::stat,
    /// A lower file with several names, copied into the index.
    indexed: bool,
    /// A lower file with several names, copied without the index: this name breaks away.
    breaks: bool,
    data: CopyData,
}
