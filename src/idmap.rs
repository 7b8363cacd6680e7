//! Owner translation: `uidmapping=`/`gidmapping=` (fuse-overlayfs's options, which rootless
//! container tools pass) and `squash_to_root`/`squash_to_uid=`/`squash_to_gid=`.
//!
//! A mapping `C:H:N` says that ids `H..H+N` on disk are ids `C..C+N` in the mount. Attributes
//! the mount reports carry mount ids; owners ufs writes (`chown`, new entries) are turned back
//! into disk ids. An id outside every range is the overflow id, 65534, both ways, as in
//! fuse-overlayfs. Without ranges ids pass unchanged. Squashing replaces every reported owner
//! and changes nothing on disk.

use crate::options::IdMapping;

/// The id reported for an owner no range covers (the kernel's `overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// The translation of one kind of id (users or groups).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdMapping>,
    squash: Option<u32>,
}

impl IdMap {
    pub fn new(ranges: Vec<IdMapping>, squash: Option<u32>) -> IdMap {
        IdMap { ranges, squash }
    }

    /// The id the mount reports for on-disk id `disk`.
    pub fn to_mount(&self, disk: u32) -> u32 {
        if let Some(id) = self.squash {
            return id;
        }
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find_map(|r| shift(disk, r.host, r.container, r.count))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The on-disk id for id `id` of the mount (an owner set through it, or a caller's id).
    pub fn to_disk(&self, id: u32) -> u32 {
        if self.ranges.is_empty() {
            return id;
        }
        self.ranges
            .iter()
            .find_map(|r| shift(id, r.container, r.host, r.count))
            .unwrap_or(OVERFLOW_ID)
    }
}

/// `id` moved from the range starting at `from` to the one starting at `to`, if it lies in the
/// `count` ids from `from`.
fn shift(id: u32, from: u32, to: u32, count: u32) -> Option<u32> {
    let offset = id.checked_sub(from)?;
    (offset < count).then(|| to.wrapping_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(container: u32, host: u32, count: u32) -> IdMapping {
        IdMapping {
            container,
            host,
            count,
        }
    }

    #[test]
    fn ranges_map_both_ways_and_the_rest_overflows() {
        let map = IdMap::new(vec![m(0, 1000, 1), m(1, 100_000, 65_536)], None);
        let cases = [
            // (on disk, in the mount)
            (1000, 0),
            (100_000, 1),
            (100_005, 6),
            (165_535, 65_536),
        ];
        for (disk, mount) in cases {
            assert_eq!(map.to_mount(disk), mount, "disk {disk}");
            assert_eq!(map.to_disk(mount), disk, "mount {mount}");
        }
        for unmapped in [0, 999, 1001, 99_999, 165_536, u32::MAX] {
            assert_eq!(map.to_mount(unmapped), OVERFLOW_ID, "disk {unmapped}");
        }
        assert_eq!(map.to_disk(65_537), OVERFLOW_ID);
    }

    #[test]
    fn the_top_of_the_id_space_does_not_wrap() {
        let map = IdMap::new(vec![m(u32::MAX, 0, 1)], None);
        assert_eq!(map.to_mount(0), u32::MAX);
        assert_eq!(map.to_disk(u32::MAX), 0);
        assert_eq!(map.to_mount(1), OVERFLOW_ID);
    }

    #[test]
    fn without_ranges_ids_pass_and_squash_only_changes_what_is_reported() {
        let plain = IdMap::default();
        assert_eq!((plain.to_mount(1234), plain.to_disk(1234)), (1234, 1234));
        let squash = IdMap::new(Vec::new(), Some(0));
        assert_eq!((squash.to_mount(1234), squash.to_disk(1234)), (0, 1234));
        let both = IdMap::new(vec![m(0, 1000, 10)], Some(7));
        assert_eq!((both.to_mount(1003), both.to_disk(3)), (7, 1003));
    }
}
