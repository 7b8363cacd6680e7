//! Owner translation: `uidmapping=`/`gidmapping=` (fuse-overlayfs's options, which rootless
//! container tools pass) and `squash_to_root`/`squash_to_uid=`/`squash_to_gid=`.
//!
//! A mapping `D:S:N` says that ids `D..D+N` on disk show as ids `S..S+N` in the mount
//! (fuse-overlayfs's order: `uidmapping=0:1001:1` shows a file owned by 0 on disk as 1001). Attributes
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

    /// Whether every reported id is replaced by one (`squash_to_*`).
    pub fn squashes(&self) -> bool {
        self.squash.is_some()
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
            .find_map(|r| shift(disk, r.disk, r.shown, r.count))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The on-disk id for id `id` of the mount (an owner set through it, or a caller's id).
    pub fn to_disk(&self, id: u32) -> u32 {
        if self.ranges.is_empty() {
            return id;
        }
        self.ranges
            .iter()
            .find_map(|r| shift(id, r.shown, r.disk, r.count))
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

    fn m(disk: u32, shown: u32, count: u32) -> IdMapping {
        IdMapping { disk, shown, count }
    }

    /// The example of the drop-in issue, checked against fuse-overlayfs 1.10:
    /// `uidmapping=0:1001:1:1:100:10` shows disk 0 as 1001, 5 as 104 and 1001 as 65534.
    #[test]
    fn fuse_overlayfs_order() {
        let map = IdMap::new(vec![m(0, 1001, 1), m(1, 100, 10)], None);
        assert_eq!(map.to_mount(0), 1001);
        assert_eq!(map.to_mount(5), 104);
        assert_eq!(map.to_mount(1001), OVERFLOW_ID);
        assert_eq!(map.to_disk(1001), 0);
        assert_eq!(map.to_disk(104), 5);
    }

    #[test]
    fn ranges_map_both_ways_and_the_rest_overflows() {
        let map = IdMap::new(vec![m(1000, 0, 1), m(100_000, 1, 65_536)], None);
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
        let map = IdMap::new(vec![m(0, u32::MAX, 1)], None);
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
        let both = IdMap::new(vec![m(1000, 0, 10)], Some(7));
        assert_eq!((both.to_mount(1003), both.to_disk(3)), (7, 1003));
    }
}
