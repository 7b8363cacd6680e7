//! Daemon memory per cached inode, and memory given back when the kernel forgets nodes.
//!
//! Two tiers: the inode table driven through the library, with an allocator that counts the
//! bytes each thread holds (what one node costs, and that forgetting frees it all), and a real
//! mount walked and then dropped from the kernel's caches (`drop_caches`: the kernel forgets
//! the nodes), whose report must show the nodes gone and whose daemon must shrink again.
//! How many bytes a node costs in a running daemon is a benchmark number (`benches/compare.rs`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ufs::inode::{InodeTable, NodeState, RealEntry, Reals};
use ufs::kind::Kind;

/// Counts the bytes each thread holds, so that tests running in parallel do not disturb the
/// count of the one that reads it.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn held() -> isize {
    HELD.with(Cell::get)
}

fn count(delta: isize) {
    // `try_with`: a thread's last frees run after its thread-locals are gone.
    let _ = HELD.try_with(|h| h.set(h.get() + delta)); // nothing to count then
}

// SAFETY: every call passes straight to the system allocator with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        count(new as isize - layout.size() as isize);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes of heap (as requested from the allocator, its own overhead aside) that one cached
/// file node may cost, table slot included: the node, and nothing else for a file with a
/// short name. It was 310 before nodes were packed (with a second allocation for the real
/// entries and two for the names), 179 while the table kept a key beside each node (166 since
/// a slot is one pointer); the mount's cost per node adds the allocator's overhead and the
/// bounded listing cache, see `benches/README.md`.
const MAX_HEAP_PER_NODE: isize = 172;

#[test]
fn a_node_is_small() {
    // 136 bytes: one allocation of 152 with its reference counts. Growing it grows the daemon
    // by as much per cached inode.
    let size = std::mem::size_of::<ufs::inode::Inode>();
    assert!(size <= 136, "Inode is {size} bytes (at most 136)");
}

#[test]
fn a_cached_file_node_is_small_and_forgetting_frees_it() {
    const N: u64 = 20_000;
    let dir: Arc<OwnedFd> = Arc::new(fs::File::open("/").expect("open /").into());
    let table = InodeTable::new();
    table.insert_root(
        2,
        vec![RealEntry::new(0, dir.as_ref().try_clone().unwrap())],
    );
    let names: Vec<CString> = (0..N)
        .map(|i| CString::new(format!("file-{i:05}.txt")).unwrap())
        .collect();
    let before = held();
    for (i, name) in names.iter().enumerate() {
        let ino = 1000 + i as u64;
        let os = OsString::from(name.to_str().unwrap());
        let (_, created) = table
            .lookup_or_insert(ino, Kind::Regular, 1, &os, || NodeState {
                reals: Reals::from(vec![RealEntry::named(1, dir.clone(), name)]),
                lower_data: None,
            })
            .expect("insert");
        assert!(created);
    }
    let per_node = (held() - before) / N as isize;
    eprintln!("heap per cached file node: {per_node} bytes");
    assert!(
        per_node <= MAX_HEAP_PER_NODE,
        "a cached file node holds {per_node} bytes of heap (at most {MAX_HEAP_PER_NODE})"
    );
    assert_eq!(table.len() as u64, N + 1);
    for i in 0..N {
        table.forget(1000 + i, 1);
    }
    assert_eq!(table.len(), 1, "only the root is left");
    let left = held() - before;
    // The table gives back its slots too, when it trims (every 2048 forgotten nodes): what
    // remains is at most the slots of the nodes forgotten since.
    assert!(
        left < 2048 * 32,
        "{left} bytes still held after every node was forgotten"
    );
}

fn report(mnt: &Path) -> serde_json::Value {
    let run = run_bounded(ufs_cmd().args(["status", "--json"]).arg(mnt), CMD_TIMEOUT);
    assert!(run.success(), "ufs status --json:\n{run}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"))
}

fn cached_inodes(mnt: &Path) -> u64 {
    report(mnt)["cached_inodes"]
        .as_u64()
        .expect("cached_inodes")
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Asks the kernel to drop unused dentries and inodes: it sends FORGET for their nodes.
fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches");
}

#[test]
fn the_kernel_forgets_a_walked_tree_and_the_daemon_shrinks() {
    if skip("the_kernel_forgets_a_walked_tree_and_the_daemon_shrinks") {
        return;
    }
    const DIRS: usize = 50;
    const FILES: usize = 200;
    let t = tempdir();
    let base = t.path();
    let l = mkdirs(&base.join("l"));
    for d in 0..DIRS {
        let dir = mkdirs(&l.join(format!("d{d:02}")));
        for f in 0..FILES {
            fs::write(dir.join(format!("file-{f:04}")), b"").unwrap();
        }
    }
    let (u, w, m) = (
        mkdirs(&base.join("u")),
        mkdirs(&base.join("w")),
        mkdirs(&base.join("m")),
    );
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    let args: Vec<OsString> = vec!["-f".into(), "-o".into(), opts.into(), m.clone().into()];
    let mut mount = UfsMount::spawn_foreground(&args, &m, &base.join("err"));
    let pid = mount.pid.expect("daemon pid");
    let idle = vm_rss_kib(pid);

    // `lstat` of every entry (no symlinks here; nothing is followed): the kernel keeps a
    // lookup on each.
    let mut walked = 0u64;
    for d in fs::read_dir(&m).unwrap() {
        let d = d.unwrap();
        fs::symlink_metadata(d.path()).unwrap();
        walked += 1;
        for f in fs::read_dir(d.path()).unwrap() {
            fs::symlink_metadata(f.unwrap().path()).unwrap();
            walked += 1;
        }
    }
    assert_eq!(walked, (DIRS * (FILES + 1)) as u64);
    let cached = cached_inodes(&m);
    let walked_rss = vm_rss_kib(pid);
    // Another process dropping the caches meanwhile would lower the count, never raise it.
    assert!(cached <= walked + 1, "{cached} nodes for {walked} entries");

    // The kernel forgets what nothing uses: every node but the root must go. Another mount's
    // activity cannot keep this mount's dentries; one retry covers a walk still settling.
    let mut left = u64::MAX;
    for _ in 0..2 {
        drop_caches();
        if wait_until(Duration::from_secs(10), || {
            left = cached_inodes(&m);
            left <= 1
        }) {
            break;
        }
    }
    assert!(
        left <= 1,
        "{left} nodes still cached after drop_caches (walked {walked}, {cached} cached)"
    );
    let forgotten_rss = vm_rss_kib(pid);
    say(&format!(
        "daemon VmRSS: {idle} KiB idle, {walked_rss} KiB with {cached} nodes, \
         {forgotten_rss} KiB after the kernel forgot them"
    ));
    // The memory of the forgotten nodes goes back to the system (malloc_trim): at least a
    // third of what the walk added (kept, the daemon would stay at its peak).
    assert!(
        forgotten_rss <= walked_rss - walked_rss.saturating_sub(idle) / 3,
        "daemon still at {forgotten_rss} KiB after forgetting (idle {idle}, walked {walked_rss})"
    );
    mount.unmount();
}

#[test]
fn only_the_most_recent_listings_are_kept() {
    use ufs::listing::{DirEntry, Listing};
    const DIRS: u64 = 40;
    const KEPT: u64 = 32;
    let root: OwnedFd = fs::File::open("/").expect("open /").into();
    let table = InodeTable::new();
    table.insert_root(2, vec![RealEntry::new(0, root.try_clone().unwrap())]);
    let nodes: Vec<_> = (0..DIRS)
        .map(|i| {
            let name = OsString::from(format!("d{i}"));
            let fd = root.try_clone().unwrap();
            let (node, _) = table
                .lookup_or_insert(100 + i, Kind::Directory, 1, &name, || NodeState {
                    reals: Reals::from(vec![RealEntry::new(0, fd)]),
                    lower_data: None,
                })
                .expect("insert");
            let listing = Listing::new(vec![DirEntry {
                name: "f".into(),
                kind: Kind::Regular,
                ino: 1000 + i,
                layer: 0,
                real_ino: 1000 + i,
            }])
            .expect("listing");
            table.keep_listing(&node, node.listing_generation(), Arc::new(listing));
            node
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let kept = node.cached_listing().is_some();
        assert_eq!(
            kept,
            i as u64 >= DIRS - KEPT,
            "directory {i} of {DIRS}: listing kept {kept}"
        );
    }
}
