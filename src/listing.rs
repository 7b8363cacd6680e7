//! A merged directory listing: its entries in order, with an index by name so that lookups can
//! be answered from it. Built by [`crate::readdir::merged_listing`], cached in the directory's
//! node ([`crate::inode::Inode`]) and held by open directory handles.
//!
//! A listing lives as long as its directory's node, so it is the largest per-entry cost of a
//! walk of a large tree: it is kept packed. All names sit end to end in one buffer, each entry
//! is 24 bytes (numbers, the end of its name, layer, kind), and the index by name is one `u32`
//! per entry, sorted by name and searched by bisection.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::Result;
use crate::kind::Kind;

/// One entry of a merged listing, as built.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: std::ffi::OsString,
    pub kind: Kind,
    /// The `st_ino` that `stat` reports for this entry.
    pub ino: u64,
    /// The layer of the winning (top-most) real entry.
    pub layer: usize,
    /// The `d_ino` that layer's `readdir` gave: a hint only (some filesystems give every entry
    /// one number), never taken as the entry's identity without a `stat` that agrees.
    pub real_ino: u64,
}

/// One entry of a merged listing, as read from it: [`DirEntry`] with a borrowed name.
#[derive(Debug, Clone, Copy)]
pub struct EntryRef<'a> {
    pub name: &'a OsStr,
    pub kind: Kind,
    pub ino: u64,
    pub layer: usize,
    pub real_ino: u64,
}

impl<'a> From<&'a DirEntry> for EntryRef<'a> {
    fn from(e: &'a DirEntry) -> EntryRef<'a> {
        EntryRef {
            name: &e.name,
            kind: e.kind,
            ino: e.ino,
            layer: e.layer,
            real_ino: e.real_ino,
        }
    }
}

/// A packed entry: its name is `names[previous end..end]`.
#[derive(Debug)]
struct Packed {
    ino: u64,
    real_ino: u64,
    end: u32,
    layer: u16,
    kind: Kind,
}

/// A merged listing with an index by name, so that lookups can be answered from it.
#[derive(Debug, Default)]
pub struct Listing {
    entries: Box<[Packed]>,
    names: Box<[u8]>,
    /// Entry indexes sorted by name.
    by_name: Box<[u32]>,
}

impl Listing {
    /// Packs `entries`. Fails (`EOVERFLOW`) only for a listing too large to index with `u32`
    /// or a layer number beyond `u16`, which no mount can have.
    pub fn new(entries: Vec<DirEntry>) -> Result<Listing> {
        let total: usize = entries.iter().map(|e| e.name.len()).sum();
        if total > u32::MAX as usize || entries.len() > u32::MAX as usize {
            return Err(crate::error::Error::from_errno(libc::EOVERFLOW));
        }
        let mut names = Vec::with_capacity(total);
        let mut packed = Vec::with_capacity(entries.len());
        for e in &entries {
            names.extend_from_slice(e.name.as_bytes());
            packed.push(Packed {
                ino: e.ino,
                real_ino: e.real_ino,
                end: names.len() as u32,
                layer: u16::try_from(e.layer)
                    .map_err(|_| crate::error::Error::from_errno(libc::EOVERFLOW))?,
                kind: e.kind,
            });
        }
        let mut listing = Listing {
            entries: packed.into_boxed_slice(),
            names: names.into_boxed_slice(),
            by_name: Box::default(),
        };
        let mut by_name: Vec<u32> = (0..listing.entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| listing.name(a as usize).cmp(listing.name(b as usize)));
        listing.by_name = by_name.into_boxed_slice();
        Ok(listing)
    }

    /// The name bytes of entry `i` (empty for an index out of range).
    fn name(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(p) => self.entries.get(p).map_or(0, |e| e.end as usize),
            None => 0,
        };
        let end = self.entries.get(i).map_or(start, |e| e.end as usize);
        self.names.get(start..end).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `i`, in listing order.
    pub fn get(&self, i: usize) -> Option<EntryRef<'_>> {
        let e = self.entries.get(i)?;
        Some(EntryRef {
            name: OsStr::from_bytes(self.name(i)),
            kind: e.kind,
            ino: e.ino,
            layer: usize::from(e.layer),
            real_ino: e.real_ino,
        })
    }

    pub fn find(&self, name: &OsStr) -> Option<EntryRef<'_>> {
        let wanted = name.as_bytes();
        let at = self
            .by_name
            .binary_search_by(|&i| self.name(i as usize).cmp(wanted))
            .ok()?;
        self.get(*self.by_name.get(at)? as usize)
    }

    /// Bytes of heap this listing holds (for the memory accounting of tests and status).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.entries)
            + self.names.len()
            + std::mem::size_of_val(&*self.by_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: u64, layer: usize) -> DirEntry {
        DirEntry {
            name: name.into(),
            kind: Kind::Regular,
            ino,
            layer,
            real_ino: ino + 1,
        }
    }

    #[test]
    fn keeps_order_and_finds_every_name() {
        let names = ["zeta", "a", "mid", "", "ab", "b"];
        let built: Vec<DirEntry> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| entry(n, i as u64 * 10, i))
            .collect();
        let l = Listing::new(built.clone()).unwrap();
        assert_eq!(l.len(), built.len());
        for (i, e) in built.iter().enumerate() {
            let got = l.get(i).unwrap();
            assert_eq!(got.name, e.name.as_os_str());
            assert_eq!(
                (got.ino, got.layer, got.real_ino),
                (e.ino, e.layer, e.real_ino)
            );
            let found = l.find(&e.name).unwrap();
            assert_eq!(found.ino, e.ino);
        }
        assert!(l.find(OsStr::new("abc")).is_none());
        assert!(l.find(OsStr::new("")).is_none());
        assert!(l.get(built.len()).is_none());
    }

    #[test]
    fn packed_entry_is_small() {
        // 24 bytes an entry plus its name and 4 bytes of index: a regression here grows the
        // memory of every cached directory.
        assert_eq!(std::mem::size_of::<Packed>(), 24);
        let l = Listing::new((0..100).map(|i| entry(&format!("n{i:03}"), i, 0)).collect()).unwrap();
        assert_eq!(l.heap_bytes(), 100 * (24 + 4 + 4));
    }
}
