//! A merged directory listing: its entries in order, with an index by name so that lookups can
//! be answered from it. Built by [`crate::readdir::merged_listing`], cached in the directory's
//! node ([`crate::inode::Inode`]) and held by open directory handles.

use std::collections::HashMap;
use std::ffi::OsString;

use crate::kind::Kind;

/// One entry of a merged listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
    /// The `st_ino` that `stat` reports for this entry.
    pub ino: u64,
    /// The layer of the winning (top-most) real entry.
    pub layer: usize,
    /// The `d_ino` that layer's `readdir` gave: a hint only (some filesystems give every entry
    /// one number), never taken as the entry's identity without a `stat` that agrees.
    pub real_ino: u64,
}

/// A merged listing with an index by name, so that lookups can be answered from it.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
    by_name: HashMap<OsString, usize>,
}

impl Listing {
    pub fn new(entries: Vec<DirEntry>) -> Listing {
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Listing { entries, by_name }
    }

    pub fn find(&self, name: &std::ffi::OsStr) -> Option<&DirEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
}
