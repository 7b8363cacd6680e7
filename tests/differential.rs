//! Differential testing against kernel overlayfs (issue 4).
//!
//! Each case is one seed: a feature set (`redirect_dir`, `index`, `metacopy`, the same explicit
//! options for both mounts), a generated layer stack (1 to 4 lowers, sometimes an upper with
//! content) written twice, once in the kernel's marker formats for `mount -t overlay` and once
//! in the mixed formats ufs reads; then a sequence of 40 to 60 operations run on both mounts
//! side by side (among them `forget`: the kernel drops its dentries and inodes while one
//! directory stays open, so names are looked up again in directories ufs still holds, and
//! sometimes a remount in the middle). After every operation the two outcomes (value or errno)
//! must be equal; after a remount and at the end the whole merged trees must be equal; and at
//! the end the upper and workdir ufs wrote, mounted by the kernel over the same lowers, must
//! show the tree ufs showed (owners, modes, link counts, `user.*` xattrs and hard-link groups
//! included, in every feature set).
//!
//! The layer lifecycle (issue 9) is part of the sequences: `remount-ro` unmounts both sides
//! and mounts each read-only with its upper as the top lower (`lowerdir=UPPER:LOWERS`; the
//! kernel with `redirect_dir=follow`, `metacopy=on` where the case has those features, see
//! `runner::read_only_features`), compares the trees, also mounts the kernel read-only over
//! ufs's layers and compares that with ufs, then mounts both writable again as before;
//! `rotate` pushes each side's upper into its `lowerdir=` under a new empty upper and workdir,
//! compares the trees, and the sequence goes on over the new stacks.
//!
//! Modes (all need root, `/dev/fuse`, `fusermount3` and the kernel overlay; elsewhere the test
//! prints why it skips):
//! - default: a fixed set of seeds (`UFS_DIFF_SEQS`, default 320; `UFS_DIFF_FIRST`, default 1)
//!   on `UFS_DIFF_JOBS` threads (default: the number of CPUs).
//! - `UFS_DIFF_SEEDS=15,57`: those seeds only.
//! - `UFS_DIFF_CONFIG=off|redirect|metacopy|index|full`: every case with those features
//!   (`redirect_dir`, `index`, `metacopy`) instead of its seed's choice (the operations then
//!   differ too; replay commands carry it).
//! - `UFS_DIFF_DINO=off|on|same|shifted`: whether ufs's bottom lower is served through
//!   `dinofs`, a read-only passthrough FUSE filesystem in the test process whose `readdir`
//!   lies about `d_ino` (one number for every entry, as fuse2fs does, or another entry's
//!   number) while `lookup` and `stat` give the real ones (issue 16). By default a third of the
//!   cases without `index=on` get it, drawn from the seed apart from its layers and operations
//!   (`generate::dino_of`); `on` gives it to every such case. The kernel's side stays on the
//!   plain directory (`runner::Bench::new` says why; `UFS_DIFF_DINO_KERNEL=1` serves it
//!   through the passthrough too). Every comparison then also covers a lower whose `d_ino`
//!   lies: ufs must show the kernel's objects, contents and hard-link groups, and its own
//!   `d_ino` must still be its `st_ino`.
//! - `UFS_DIFF_SECS=600`: fresh random seeds for that long, each seed printed, each failure
//!   reported as it is found (it stops taking new seeds after 10 failures).
//! - `UFS_DIFF_SHRINK=N`: shrink at most N failures (default 4; the others are reported with
//!   the replay command of their whole sequence); `UFS_DIFF_SHRINK_BUDGET` (default 150) caps
//!   the replays one shrink may spend.
//! - `UFS_DIFF_SEED=1234 [UFS_DIFF_OPS=17] [UFS_DIFF_DROP=2,5]`: replay one case (its first
//!   `OPS` operations without those listed in `DROP`), printing every operation and both
//!   outcomes. `UFS_DIFF_KEEP=1` keeps its directories for inspection.
//!
//! A failure is shrunk (shortest prefix failing at the same stage, then single operations
//! deleted while it still does) and reported with the command that replays the minimal case, e.g.
//! `UFS_DIFF_SEED=1234 UFS_DIFF_OPS=17 cargo test --release --test differential -- --nocapture`.
//! Documented deliberate differences are named in `runner::KnownDifference`.
//!
//! Regression tests for the disagreements the harness found are at the end of this file: each
//! spells out its layers and operations, so that it does not depend on the generator.

#[path = "common/mod.rs"]
mod common;
#[path = "common/dinofs.rs"]
mod dinofs;
#[path = "differential/generate.rs"]
mod generate;
#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/runner.rs"]
mod runner;
#[path = "differential/tree.rs"]
mod tree;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use generate::{Case, gen_case};
use runner::{Failure, KnownDifference, report, run_case, shrink};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

fn env_list(name: &str) -> Vec<usize> {
    std::env::var(name)
        .map(|v| {
            v.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?}: {s:?} is not a number"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn jobs() -> usize {
    env_u64("UFS_DIFF_JOBS")
        .map(|j| j.max(1) as usize)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The harness relies on the clock being later than every explicitly set time.
fn check_clock() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    assert!(
        now > ops::EXPLICIT_TIME_LIMIT + 86_400,
        "the clock ({now}) must be later than ops::EXPLICIT_TIME_LIMIT"
    );
}

/// A failing case, shrunk or not.
struct Found {
    case: Case,
    picks: Vec<usize>,
    first: Failure,
    shrunk: Option<(Vec<usize>, Failure)>,
}

impl Found {
    fn text(&self) -> String {
        report(
            &self.case,
            &self.picks,
            &self.first,
            self.shrunk.as_ref().map(|(p, f)| (p.as_slice(), f)),
        )
    }
}

/// Runs one seed; on failure, shrinks it when `shrink_it()` says so.
fn run_seed(seed: u64, shrink_it: impl FnOnce() -> bool) -> Result<runner::Stats, Box<Found>> {
    let case = gen_case(seed);
    let picks: Vec<usize> = (0..case.ops.len()).collect();
    match run_case(&case, &picks, false) {
        Ok(s) => Ok(s),
        Err(first) => {
            let shrunk = shrink_it().then(|| shrink(&case, &picks, &first));
            Err(Box::new(Found {
                case,
                picks,
                first,
                shrunk,
            }))
        }
    }
}

/// Seeds from `next` on `jobs()` threads until it returns `None`. Shrinks at most
/// `UFS_DIFF_SHRINK` (default 4) failures; stops taking new seeds after `max_failures`.
fn run_many(
    next: &(dyn Fn() -> Option<u64> + Sync),
    print_seeds: bool,
    max_failures: usize,
) -> (usize, usize, usize, Vec<Found>) {
    let to_shrink = env_u64("UFS_DIFF_SHRINK").unwrap_or(4) as usize;
    let clean = AtomicUsize::new(0);
    let ops_run = AtomicUsize::new(0);
    let dino_clean = AtomicUsize::new(0);
    let shrinks_left = AtomicUsize::new(to_shrink);
    let stop = AtomicBool::new(false);
    let found: Mutex<Vec<Found>> = Mutex::new(Vec::new());
    let take_shrink = || {
        shrinks_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    };
    std::thread::scope(|s| {
        for _ in 0..jobs() {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(seed) = next() else { break };
                    if print_seeds {
                        eprintln!("seed {seed}");
                    }
                    match run_seed(seed, take_shrink) {
                        Ok(st) => {
                            clean.fetch_add(1, Ordering::Relaxed);
                            ops_run.fetch_add(st.ops, Ordering::Relaxed);
                            dino_clean.fetch_add(usize::from(st.dino), Ordering::Relaxed);
                        }
                        Err(f) => {
                            // Long runs print each failure as it comes; the fixed set only
                            // a line (the assertion at the end has the reports).
                            if print_seeds {
                                eprintln!("{}", f.text());
                            } else {
                                eprintln!("seed {seed} FAILED ({})", f.first.stage);
                            }
                            let mut v = found.lock().expect("not poisoned");
                            v.push(*f);
                            if v.len() >= max_failures {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    (
        clean.into_inner(),
        ops_run.into_inner(),
        dino_clean.into_inner(),
        found.into_inner().expect("not poisoned"),
    )
}

fn summary(found: &[Found]) -> String {
    // Group by the stage (and operation kind) of the minimal failure.
    let mut groups: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in found {
        let stage = f.shrunk.as_ref().map_or(&f.first.stage, |(_, s)| &s.stage);
        groups.entry(stage.clone()).or_default().push(f.case.seed);
    }
    groups
        .iter()
        .map(|(k, v)| format!("  {k}: seeds {v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn differential() {
    if common::skip("differential") {
        return;
    }
    check_clock();
    // Both mounts see the same umask (new entries' modes are compared).
    // SAFETY: umask has no preconditions; this test binary runs nothing else that creates
    // files concurrently with different expectations.
    unsafe { libc::umask(0o022) };
    if let Some(seed) = env_u64("UFS_DIFF_SEED") {
        return replay(seed);
    }
    let start = Instant::now();
    let (clean, ops_run, dino_clean, found) = if let Some(secs) = env_u64("UFS_DIFF_SECS") {
        let deadline = start + Duration::from_secs(secs);
        let next = move || -> Option<u64> {
            (Instant::now() < deadline).then(|| rand::random::<u64>() >> 16)
        };
        run_many(&next, true, 10)
    } else if !env_list("UFS_DIFF_SEEDS").is_empty() {
        let seeds = Mutex::new(
            env_list("UFS_DIFF_SEEDS")
                .into_iter()
                .rev()
                .collect::<Vec<_>>(),
        );
        let next = move || seeds.lock().expect("not poisoned").pop().map(|s| s as u64);
        run_many(&next, false, usize::MAX)
    } else {
        let first = env_u64("UFS_DIFF_FIRST").unwrap_or(1);
        let count = env_u64("UFS_DIFF_SEQS").unwrap_or(320);
        let counter = AtomicU64::new(first);
        let next = move || -> Option<u64> {
            let s = counter.fetch_add(1, Ordering::Relaxed);
            (s < first + count).then_some(s)
        };
        run_many(&next, false, usize::MAX)
    };
    let elapsed = start.elapsed();
    let dino_failed = found.iter().filter(|f| f.case.dino.is_some()).count();
    println!(
        "differential: {clean} sequences clean ({ops_run} operations), {} failed, in {:.1}s on {} threads; \
         with the bottom lower through dinofs: {dino_clean} clean, {dino_failed} failed",
        found.len(),
        elapsed.as_secs_f64(),
        jobs()
    );
    assert!(
        found.is_empty(),
        "{} of {} sequences disagree with kernel overlayfs:\n{}\n\n{}",
        found.len(),
        clean + found.len(),
        summary(&found),
        found.iter().map(Found::text).collect::<Vec<_>>().join("\n")
    );
}

fn replay(seed: u64) {
    let case = gen_case(seed);
    let picks = runner::replay_picks(
        &case,
        env_u64("UFS_DIFF_OPS").map(|n| n as usize),
        &env_list("UFS_DIFF_DROP"),
    );
    println!(
        "seed {seed}: replaying {} of {} operations",
        picks.len(),
        case.ops.len()
    );
    println!("{}", runner::describe_stack(&case));
    if std::env::var_os("UFS_DIFF_KEEP").is_some() {
        keep_replay(&case, &picks);
        return;
    }
    match run_case(&case, &picks, true) {
        Ok(st) => println!("clean: {} operations ({} skipped)", st.ops, st.skipped),
        Err(f) => panic!(
            "seed {seed} fails ({} at op {}):\n  {}",
            f.stage,
            f.pos,
            f.detail.trim_end().replace('\n', "\n  ")
        ),
    }
}

/// Runs the operations like a replay, then leaves both mounts' directories on disk (unmounted).
fn keep_replay(case: &Case, picks: &[usize]) {
    let mut bench = runner::Bench::new(case);
    bench.mount();
    for &i in picks {
        let op = &case.ops[i];
        if op.is_lifecycle() {
            println!("#{i:<3} {op}");
            if let Err((stage, detail)) = bench.lifecycle(op) {
                println!("       {stage}: {detail}");
            }
            continue;
        }
        println!(
            "#{i:<3} {op}\n       kernel: {:?}\n       ufs:    {:?}",
            ops::run(&bench.k.mnt, op).0,
            ops::run(&bench.u.mnt, op).0
        );
    }
    bench.unmount();
    bench.base.disable_cleanup(true);
    println!("kept in {}", bench.base.path().display());
}

// ---------------------------------------------------------------------------------------------
// Tests of the generator itself (no mounts, no root)
// ---------------------------------------------------------------------------------------------

#[test]
fn generator_is_reproducible() {
    for seed in [1, 7, 1234] {
        let (a, b) = (gen_case(seed), gen_case(seed));
        assert_eq!(a.ops, b.ops, "seed {seed}");
        assert_eq!(
            runner::describe_stack(&a),
            runner::describe_stack(&b),
            "seed {seed}"
        );
    }
}

#[test]
fn generator_covers_the_issue() {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lowers = [0usize; 5];
    let (mut remounts, mut with_upper, mut short) = (0, 0, 0);
    let (mut dino_same, mut dino_shifted) = (0, 0);
    let mut layer_text = String::new();
    for seed in 1..=320 {
        let c = gen_case(seed);
        lowers[c.stack.lowers.len()] += 1;
        with_upper += usize::from(c.stack.upper.is_some());
        short += usize::from(c.ops.len() < 40);
        match c.dino {
            Some(dinofs::DinoMode::Same) => dino_same += 1,
            Some(dinofs::DinoMode::Shifted) => dino_shifted += 1,
            None => {}
        }
        for op in &c.ops {
            *kinds.entry(op.kind()).or_default() += 1;
            remounts += usize::from(*op == ops::Op::Remount);
        }
        layer_text.push_str(&runner::describe_stack(&c));
    }
    let all = [
        "create",
        "write",
        "append",
        "truncate",
        "read",
        "chmod",
        "chown",
        "utimes",
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "link",
        "symlink",
        "mkfifo",
        "setxattr",
        "removexattr",
        "getxattrs",
        "readdir",
        "stat",
        "forget",
    ];
    for k in all {
        assert!(kinds.get(k).copied().unwrap_or(0) > 100, "{k}: {kinds:?}");
    }
    assert_eq!(short, 0, "every sequence has 40 or more operations");
    assert!(
        lowers[1..].iter().all(|n| *n > 30),
        "lower counts {lowers:?}"
    );
    assert!((15..=60).contains(&remounts), "remounts {remounts}");
    // The layer lifecycle (issue 9): read-only stacks over the upper, rotations.
    for (k, range) in [("remount-ro", 50..=120), ("rotate", 70..=160)] {
        let n = kinds.get(k).copied().unwrap_or(0);
        assert!(range.contains(&n), "{k}: {n} ({kinds:?})");
    }
    assert!(with_upper > 50, "stacks with upper content: {with_upper}");
    // A layer whose readdir lies about d_ino (issue 16), in both ways, in the fixed set.
    if std::env::var_os("UFS_DIFF_DINO").is_none() {
        assert!(
            dino_same >= 15 && dino_shifted >= 15,
            "cases through dinofs: {dino_same} same, {dino_shifted} shifted"
        );
    }
    for what in ["WHITEOUT", "OPAQUE", "hard link of", "symlink", "fifo"] {
        assert!(layer_text.contains(what), "no {what} in the stacks");
    }
    // Every documented difference has its DIFFERENCES.md entry.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DIFFERENCES.md"))
        .expect("docs/DIFFERENCES.md");
    for kd in KnownDifference::ALL {
        assert!(
            doc.contains(kd.entry()),
            "DIFFERENCES.md has no entry {:?}",
            kd.entry()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests: the minimal cases of disagreements the harness found, spelled out
// ---------------------------------------------------------------------------------------------

use common::{Layer, Node, Stack};
use generate::Config;
use ops::{Op, RenameMode, XattrMode};

const REDIRECT: Config = Config::new(true, false, false);
const METACOPY: Config = Config::new(true, false, true);
const INDEX: Config = Config::new(true, true, false);

/// A layer with `entries` (`path`, node), parents created as plain directories.
fn layer(entries: Vec<(&str, Node)>) -> Layer {
    let mut l = Layer::default();
    for (p, n) in entries {
        l.put(p, n);
    }
    l
}

fn empty_dir() -> Node {
    Node::dir(BTreeMap::new())
}

/// Runs the operations on both mounts (printing each) and fails with the first disagreement.
fn regression(name: &str, config: Config, lowers: Vec<Layer>, ops: Vec<Op>) {
    if common::skip(name) {
        return;
    }
    let case = Case {
        seed: 0,
        config,
        stack: Stack {
            lowers,
            upper: None,
        },
        ops,
        dino: None,
    };
    let picks: Vec<usize> = (0..case.ops.len()).collect();
    if let Err(f) = run_case(&case, &picks, true) {
        panic!(
            "{name} ({}): {} at op {}:\n  {}",
            config.options(),
            f.stage,
            f.pos,
            f.detail.trim_end().replace('\n', "\n  ")
        );
    }
}

fn path(s: &str) -> String {
    s.to_string()
}

/// Seeds 57, 66, 162, 354, 576 (and, for `RENAME_EXCHANGE`, 168, 184, 315, 737, 1808): with
/// `metacopy=on`, the kernel copies only metadata up for a rename, so a file whose metadata
/// was copied up keeps its mtime when renamed; ufs completed the data copy and showed the time
/// of the rename.
#[test]
fn metacopy_rename_keeps_mtime() {
    regression(
        "metacopy_rename_keeps_mtime",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("d", Node::file(b"x")),
        ])],
        vec![
            Op::Chmod {
                path: path("a"),
                mode: 0o600,
            },
            Op::Rename {
                from: path("a"),
                to: path("b"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("b") },
            Op::Chmod {
                path: path("d"),
                mode: 0o600,
            },
            Op::Rename {
                from: path("d"),
                to: path("b"),
                mode: RenameMode::Exchange,
            },
            Op::Stat { path: path("b") },
            Op::Stat { path: path("d") },
        ],
    );
}

/// Seeds 988, 568, 1434: the same for `link` (the kernel links a metadata-only copy).
#[test]
fn metacopy_link_keeps_mtime() {
    regression(
        "metacopy_link_keeps_mtime",
        METACOPY,
        vec![layer(vec![("a", Node::file(b"data"))])],
        vec![
            Op::Chown {
                path: path("a"),
                uid: Some(1000),
                gid: None,
            },
            Op::Link {
                from: path("a"),
                to: path("c"),
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seeds 1232, 1554, 1727, 1775 (rename) and 1847, 1976, 2003 (link): with `metacopy=on` the
/// kernel copies only metadata up for a rename or a link, so opening the file for writing
/// afterwards completes the copy and gives it the current mtime; ufs copied the data at the
/// rename or link and kept the old time.
#[test]
fn metacopy_rename_then_open_for_write() {
    regression(
        "metacopy_rename_then_open_for_write",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("c", Node::file(b"c")),
        ])],
        vec![
            Op::Rename {
                from: path("a"),
                to: path("b"),
                mode: RenameMode::Plain,
            },
            Op::Create {
                path: path("b"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("b") },
            Op::Link {
                from: path("c"),
                to: path("l"),
            },
            Op::Create {
                path: path("l"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("c") },
        ],
    );
}

/// Seeds 467, 847, 1323, 1527, 2332, 75: opening a metadata-only copy for writing completes the
/// data copy, and in the kernel the upper file then has the current time as its mtime (the data
/// is written into the existing upper inode). ufs first kept answering the cached old mtime
/// until the attribute timeout ran out (its upper file had the new time), and since 706677e
/// restores the old mtime after completing the copy.
#[test]
fn metacopy_open_for_write_sets_mtime_like_the_kernel() {
    regression(
        "metacopy_open_for_write_sets_mtime_like_the_kernel",
        METACOPY,
        vec![layer(vec![("a", Node::file(b"data"))])],
        vec![
            Op::Chmod {
                path: path("a"),
                mode: 0o600,
            },
            Op::Stat { path: path("a") },
            Op::Create {
                path: path("a"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 540: an absolute redirect (`/c/b`) is followed in each lower layer only while the path
/// leads through directories: the kernel stops the merge at a layer where a component is a
/// whiteout, a non-directory or an opaque directory. ufs went on to the layers below and
/// merged in a `/c/b` that the original directory never showed.
#[test]
fn redirect_stops_at_whiteout_or_opaque_on_the_path() {
    let opaque_c = {
        let mut children = BTreeMap::new();
        children.insert("b".to_string(), empty_dir());
        Node::opaque_dir(children)
    };
    regression(
        "redirect_stops_at_whiteout_or_opaque_on_the_path",
        REDIRECT,
        vec![
            layer(vec![("c/b", empty_dir()), ("o", opaque_c)]),
            layer(vec![("c", Node::Whiteout), ("o/b/x", Node::file(b"x"))]),
            layer(vec![("c/b/a", Node::file(b"a"))]),
        ],
        vec![
            Op::Readdir { path: path("c/b") },
            Op::Readdir { path: path("o/b") },
            Op::Rename {
                from: path("c/b"),
                to: path("n"),
                mode: RenameMode::Plain,
            },
            Op::Rename {
                from: path("o/b"),
                to: path("p"),
                mode: RenameMode::Plain,
            },
            Op::Readdir { path: path("n") },
            Op::Readdir { path: path("p") },
            Op::Remount,
            Op::Readdir { path: path("n") },
            Op::Readdir { path: path("p") },
            Op::Rmdir { path: path("n") },
            Op::Rmdir { path: path("p") },
        ],
    );
}

/// Found while the read path kept name-based real entries (working tree after 557f5cf): a file
/// renamed after a remount (so its node came from a lookup, not from a copy-up) was lost by
/// ufs (`ENOENT` from `stat` and missing from the listing) until the next mount.
#[test]
fn rename_after_remount_keeps_the_file_reachable() {
    regression(
        "rename_after_remount_keeps_the_file_reachable",
        Config::new(false, false, false),
        vec![layer(vec![("d/e/c", Node::file(b"c"))])],
        vec![
            Op::Rename {
                from: path("d/e/c"),
                to: path("d/e/n"),
                mode: RenameMode::Plain,
            },
            Op::Remount,
            Op::Rename {
                from: path("d/e/n"),
                to: path("c"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("c") },
            Op::Readdir {
                path: String::new(),
            },
        ],
    );
}

/// Seeds 15, 81, 126, 197, 203 (unlink) and 16, 33, 116 (rename over): with `index=on`, when a
/// name of a lower file with several links goes away, the kernel first copies the file up to
/// create its index entry (`ovl_nlink_start()`), so the link count the other names show drops;
/// ufs only lowered the record of an index entry that already existed.
#[test]
fn index_lower_hard_link_removed_lowers_nlink() {
    for config in [INDEX, Config::new(true, true, true)] {
        regression(
            "index_lower_hard_link_removed_lowers_nlink",
            config,
            vec![layer(vec![
                ("a", Node::file(b"a")),
                ("h1", Node::HardLink { target: "a".into() }),
                ("b", Node::file(b"b")),
                ("h2", Node::HardLink { target: "b".into() }),
                ("c", Node::file(b"c")),
            ])],
            vec![
                Op::Unlink { path: path("h1") },
                Op::Stat { path: path("a") },
                Op::Rename {
                    from: path("c"),
                    to: path("h2"),
                    mode: RenameMode::Plain,
                },
                Op::Stat { path: path("b") },
                Op::Remount,
                Op::Stat { path: path("a") },
                Op::Stat { path: path("b") },
            ],
        );
    }
}

/// Seeds 41062 and 40150 (cross-mount): after a lower-only name of a hard-linked lower file is
/// removed, a copy-up and the removal of the copied name, ufs showed the right link count but
/// the `overlay.nlink` record it wrote made the kernel, mounted over ufs's upper, show one more.
#[test]
fn index_nlink_record_read_by_the_kernel() {
    regression(
        "index_nlink_record_read_by_the_kernel",
        INDEX,
        vec![layer(vec![
            ("a", Node::file(b"a")),
            ("b", Node::HardLink { target: "a".into() }),
            ("c", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Unlink { path: path("b") },
            Op::Write {
                path: path("c"),
                offset: 1,
                len: 10,
                fill: 7,
            },
            Op::Unlink { path: path("c") },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 51162: with `index=on`, a lower file with three names (one of them whited out above)
/// is copied up through one name (`utimes`), written through another, read, and then the first
/// name showed a link count of 2 where the kernel shows 3. The append made the kernel ask for
/// the attributes through the open file, and ufs answered with the upper file's own link count,
/// without the index's `overlay.nlink` record.
#[test]
fn index_nlink_after_copy_up_through_two_names() {
    regression(
        "index_nlink_after_copy_up_through_two_names",
        INDEX,
        vec![
            layer(vec![("c", Node::Whiteout)]),
            layer(vec![
                ("c", Node::file(&[7; 37])),
                ("h1", Node::HardLink { target: "c".into() }),
                ("h2", Node::HardLink { target: "c".into() }),
            ]),
        ],
        vec![
            Op::Utimes {
                path: path("h1"),
                atime: ops::Time::At(1_588_884_757, 225_579_493),
                mtime: ops::Time::At(1_505_413_457, 149_636_638),
            },
            Op::Append {
                path: path("h2"),
                len: 256,
                fill: 242,
            },
            Op::Read {
                path: path("h2"),
                offset: 4000,
                len: 200_000,
            },
            Op::Stat { path: path("h1") },
            Op::Stat { path: path("h2") },
        ],
    );
}

/// Seed 52014: with `index=on`, after a directory holding names of a lower hard-linked file
/// is exchanged with another (a redirect), one name written (indexed copy-up), a remount, and a
/// rename of another lower-only name of the file, ufs showed one link more than the kernel.
#[test]
fn index_nlink_rename_of_lower_alias_in_redirected_dir() {
    regression(
        "index_nlink_rename_of_lower_alias_in_redirected_dir",
        Config::new(true, true, true),
        vec![
            layer(vec![("b/a/a", Node::file(b"a"))]),
            layer(vec![
                ("e/e", Node::file(&[1; 120])),
                (
                    "e/h1",
                    Node::HardLink {
                        target: "e/e".into(),
                    },
                ),
                (
                    "d/h2",
                    Node::HardLink {
                        target: "e/e".into(),
                    },
                ),
            ]),
        ],
        vec![
            Op::Rename {
                from: path("b/a"),
                to: path("e"),
                mode: RenameMode::Exchange,
            },
            Op::Write {
                path: path("b/a/h1"),
                offset: 44,
                len: 4,
                fill: 180,
            },
            Op::Mkdir {
                path: path("e/d"),
                mode: 0o755,
            },
            Op::Remount,
            Op::Rename {
                from: path("b/a/e"),
                to: path("e/d/c"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("d/h2") },
        ],
    );
}

/// Seeds 50458, 50228, 52121, 52685 (cross-mount) and 52034: a metadata-only copy of an empty
/// lower file is not recognized as one after a remount, so a later write or truncate extends
/// the upper file but leaves its `overlay.metacopy` record, and a rename moves it without the
/// data redirect: the kernel mounted over ufs's upper then reads no data (or no file at all).
#[test]
fn metacopy_of_an_empty_file_after_remount() {
    regression(
        "metacopy_of_an_empty_file_after_remount",
        METACOPY,
        vec![
            Layer::default(),
            layer(vec![("e", Node::file(b"")), ("f", Node::file(b""))]),
        ],
        vec![
            Op::Chmod {
                path: path("f"),
                mode: 0o444,
            },
            Op::SetXattr {
                path: path("e"),
                name: "user.k1".into(),
                value: b"v".to_vec(),
                mode: ops::XattrMode::Replace,
            },
            Op::Remount,
            Op::Truncate {
                path: path("f"),
                len: 17,
                via_fd: true,
            },
            Op::Rename {
                from: path("e"),
                to: path("m"),
                mode: RenameMode::NoReplace,
            },
            Op::Write {
                path: path("m"),
                offset: 155,
                len: 589,
                fill: 124,
            },
        ],
    );
}

/// Seeds 50620, 51391, 52480: completing a metadata-only copy of an empty file (open for
/// writing) leaves the kernel's mtime alone (`ovl_copy_up_meta_inode_data` copies no data when
/// the size is 0); ufs's completion truncates the file to its size, which sets the mtime to now.
#[test]
fn metacopy_completion_of_an_empty_file_keeps_mtime() {
    regression(
        "metacopy_completion_of_an_empty_file_keeps_mtime",
        METACOPY,
        vec![layer(vec![("a", Node::file(b""))])],
        vec![
            Op::Utimes {
                path: path("a"),
                atime: ops::Time::At(1_257_920_494, 634_557_882),
                mtime: ops::Time::Omit,
            },
            Op::Create {
                path: path("a"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seeds 50494, 51616: with `index=on` and `metacopy=on`, the kernel copies a lower hard-linked
/// file up metadata-only for a rename or link (opening it for writing later completes the copy
/// and sets the mtime to now); ufs copied indexed files with their data.
#[test]
fn index_metacopy_of_a_hard_linked_file() {
    regression(
        "index_metacopy_of_a_hard_linked_file",
        Config::new(true, true, true),
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("h2", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Rename {
                from: path("h2"),
                to: path("c"),
                mode: RenameMode::Plain,
            },
            Op::Create {
                path: path("c"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 60829: with `index=on`, a lower file with two names is copied up through one (a write),
/// and after a remount the other, still lower-only name is renamed: ufs then counts three links
/// where the kernel counts two.
#[test]
fn index_nlink_rename_of_lower_alias_after_remount() {
    regression(
        "index_nlink_rename_of_lower_alias_after_remount",
        INDEX,
        vec![layer(vec![
            ("c", Node::file(b"data")),
            ("h2", Node::HardLink { target: "c".into() }),
        ])],
        vec![
            Op::Write {
                path: path("h2"),
                offset: 36,
                len: 274,
                fill: 115,
            },
            Op::Remount,
            Op::Rename {
                from: path("c"),
                to: path("m"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("h2") },
            Op::Stat { path: path("m") },
        ],
    );
}

/// Soak seed 31551160995790 (`metacopy`): a `setxattr` that copies a lower file up
/// metadata-only and then fails (`XATTR_REPLACE` of a missing name) left the kernel holding the
/// file's attributes from before; opening it for writing then completed the copy (new mtime),
/// but ufs showed the cached old mtime where the kernel shows the new one.
#[test]
fn failed_setxattr_leaves_no_stale_attributes() {
    regression(
        "failed_setxattr_leaves_no_stale_attributes",
        METACOPY,
        vec![layer(vec![("d", Node::file(b"hello world"))])],
        vec![
            Op::Stat { path: path("d") },
            Op::SetXattr {
                path: path("d"),
                name: "user.k2".into(),
                value: Vec::new(),
                mode: ops::XattrMode::Replace,
            },
            Op::Create {
                path: path("d"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("d") },
        ],
    );
}

/// Soak seeds 140689926927150, 138277937262166, 91068641272837 (`index`): a lower file with
/// three names is copied up through one (`lchown h1`), the kernel forgets it, it is reached
/// again through that upper name and then through a lower one, and the upper name is
/// removed: the node kept only the upper entry (pinned), so its link count lost the
/// `overlay.nlink` record and showed 1 where the kernel shows 2.
#[test]
fn index_nlink_after_forget_and_unlink_of_the_upper_name() {
    regression(
        "index_nlink_after_forget_and_unlink_of_the_upper_name",
        INDEX,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("h1", Node::HardLink { target: "a".into() }),
            ("h2", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Chown {
                path: path("h1"),
                uid: Some(1234),
                gid: Some(1234),
            },
            Op::Forget { pin: path("") },
            Op::Append {
                path: path("h1"),
                len: 73,
                fill: 127,
            },
            Op::Stat { path: path("a") },
            Op::Unlink { path: path("h1") },
            Op::Stat { path: path("a") },
            Op::Stat { path: path("h2") },
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Regression tests of the layer lifecycle (issue 9): read-only stacks over a former upper and
// rotations of the upper into the lowers
// ---------------------------------------------------------------------------------------------

/// Seeds 7, 65, 109, 131, 144, 228 (read-only) and 60, 87, 88 (rotation), `metacopy`: a
/// metadata-only copy (`chmod`; `rename`, which adds a data redirect) in the former upper, now
/// a lower layer, is followed by the kernel (`metacopy=on`) down to the layer that holds its
/// data; ufs reads metadata-only copies only from the upper layer, so it showed the sparse
/// copy's holes (wrong content) on the read-only stack.
#[test]
fn metacopy_in_a_lower_layer_read_only() {
    regression(
        "metacopy_in_a_lower_layer_read_only",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data of a")),
            ("d/b", Node::file(b"data of b")),
        ])],
        vec![
            Op::Chmod {
                path: path("a"),
                mode: 0o600,
            },
            Op::Rename {
                from: path("d/b"),
                to: path("n"),
                mode: RenameMode::Plain,
            },
            Op::RemountReadOnly,
            Op::Read {
                path: path("a"),
                offset: 0,
                len: 100,
            },
        ],
    );
}

/// The same after a rotation: the sequence goes on over the new stack, so a write copies the
/// file up from the former upper, and the data must come from the layer below it.
#[test]
fn metacopy_in_a_lower_layer_after_rotation() {
    regression(
        "metacopy_in_a_lower_layer_after_rotation",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data of a")),
            ("d/b", Node::file(b"data of b")),
        ])],
        vec![
            Op::Utimes {
                path: path("a"),
                atime: ops::Time::At(1_560_818_373, 230_288_367),
                mtime: ops::Time::At(1_129_557_278, 567_175_870),
            },
            Op::Rename {
                from: path("d/b"),
                to: path("n"),
                mode: RenameMode::Plain,
            },
            Op::Rotate,
            Op::Read {
                path: path("n"),
                offset: 0,
                len: 100,
            },
            Op::Write {
                path: path("a"),
                offset: 2,
                len: 3,
                fill: 7,
            },
            Op::Append {
                path: path("n"),
                len: 5,
                fill: 9,
            },
            Op::Read {
                path: path("a"),
                offset: 0,
                len: 100,
            },
        ],
    );
}

/// Seeds 55, 76, 83, 243 (`off`), 250, 178 (read-only) and 63, 115, 220, 291: a file copied
/// up and linked to a name in another directory (`link`) is one inode with two names in the
/// upper. The kernel marks the directory the new name is in `overlay.impure`; ufs does not, so
/// once the upper is a lower layer (read-only stack, rotation) ufs reports the number of the
/// name it found through a cached listing of that directory (the real number: the listing
/// reads no records in a directory that is not impure) and the recorded number for the other
/// name: the two names were no longer one file (two inode numbers; the kernel keeps them one).
#[test]
fn link_target_directory_is_impure_read_only() {
    for (name, config) in [
        ("off", Config::new(false, false, false)),
        ("redirect", REDIRECT),
    ] {
        regression(
            &format!("link_target_directory_is_impure_read_only ({name})"),
            config,
            vec![layer(vec![
                ("e/b/a", Node::file(b"data")),
                ("b/x", Node::file(b"x")),
            ])],
            vec![
                Op::Link {
                    from: path("e/b/a"),
                    to: path("b/m"),
                },
                Op::Mkdir {
                    path: path("n"),
                    mode: 0o755,
                },
                Op::Link {
                    from: path("e/b/a"),
                    to: path("n/m"),
                },
                Op::RemountReadOnly,
                Op::Rotate,
                Op::Stat { path: path("b/m") },
                Op::Stat {
                    path: path("e/b/a"),
                },
            ],
        );
    }
}

/// Seeds 16, 21, 34, 98, 113, 124, 137, 182, 197, 229, 241, 262, 281 (`index`, `full`): with
/// `index=on`, a copy-up of one name of a lower hard link keeps the lower file's inode number
/// (ufs's `overlay.ufs.ino` record). Once that upper is a lower layer (read-only stack,
/// rotation) the copy and the other names, still in the old lower, are different files for the
/// kernel (no index on that stack joins them), but ufs reported the same number for both, so
/// FUSE made them one inode: the other names showed the copy's data, mode and owner, and one
/// link group.
#[test]
fn index_copy_of_one_name_and_the_old_names_after_rotation() {
    for config in [INDEX, Config::new(true, true, true)] {
        regression(
            "index_copy_of_one_name_and_the_old_names_after_rotation",
            config,
            vec![layer(vec![
                ("a", Node::file(b"data")),
                ("h1", Node::HardLink { target: "a".into() }),
                ("e", Node::HardLink { target: "a".into() }),
            ])],
            vec![
                Op::Write {
                    path: path("h1"),
                    offset: 2,
                    len: 10,
                    fill: 3,
                },
                Op::Chmod {
                    path: path("h1"),
                    mode: 0o600,
                },
                Op::RemountReadOnly,
                Op::Stat { path: path("a") },
                Op::Rotate,
                Op::Stat { path: path("a") },
                Op::Stat { path: path("h1") },
                Op::Read {
                    path: path("a"),
                    offset: 0,
                    len: 100,
                },
                Op::Write {
                    path: path("e"),
                    offset: 0,
                    len: 1,
                    fill: 1,
                },
                Op::Stat { path: path("a") },
            ],
        );
    }
}

/// Seeds 34, 58, 98, 129, 231 (`index`, read-only layers): with `index=on`, once one name of a
/// lower hard link has its copy (and index entry), a change through another, still lower-only
/// name (`chmod`, `lchown`, `utimes`, a write, a truncate, a `link` from it) makes the kernel
/// link that name into the upper too (`ovl_link_up`: one upper inode, all changed names). ufs
/// changes the index copy but leaves the name out of the upper, which a writable mount with the
/// index does not show, but the upper as a lower layer (read-only, rotated, or mounted by the
/// kernel without the index) does: the name shows the old lower file.
#[test]
fn index_change_through_a_lower_alias_links_it_up() {
    regression(
        "index_change_through_a_lower_alias_links_it_up",
        INDEX,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("h1", Node::HardLink { target: "a".into() }),
            ("b", Node::file(b"more data")),
            ("h2", Node::HardLink { target: "b".into() }),
        ])],
        vec![
            Op::Rename {
                from: path("a"),
                to: path("n"),
                mode: RenameMode::Plain,
            },
            Op::Chmod {
                path: path("h1"),
                mode: 0o755,
            },
            Op::Truncate {
                path: path("b"),
                len: 1,
                via_fd: false,
            },
            Op::Write {
                path: path("h2"),
                offset: 3,
                len: 4,
                fill: 9,
            },
            Op::RemountReadOnly,
        ],
    );
}

/// Seed 5 (`index`, read-only layers): with `index=on`, after a listing has looked up both
/// names of a lower hard link (one FUSE node), an append through `/b` made ufs copy the file up
/// at the other name, `/e/b/b` (the name the node was last looked up by: FUSE does not say which
/// name an operation came through; DIFFERENCES.md names this for `index=off` only). The merged
/// view with the index is the same, but the upper holds the wrong name, which the upper as a
/// lower layer shows. (Once that is fixed, this also needs the record collision of
/// `index_copy_of_one_name_and_the_old_names_after_rotation` fixed.)
#[test]
fn index_copy_up_lands_at_the_name_used() {
    regression(
        "index_copy_up_lands_at_the_name_used",
        INDEX,
        vec![layer(vec![
            ("e/b/b", Node::file(b"")),
            (
                "b",
                Node::HardLink {
                    target: "e/b/b".into(),
                },
            ),
        ])],
        vec![
            Op::Readdir {
                path: String::new(),
            },
            Op::Readdir { path: path("e/b") },
            Op::Append {
                path: path("b"),
                len: 16,
                fill: 73,
            },
            Op::RemountReadOnly,
        ],
    );
}

/// Seed 245 (`full`): a lower file linked through the mount (`link`: with `metacopy=on` a
/// metadata-only copy, with a data redirect, under two names) and then rotated into the lowers;
/// removing one of the names on the new stack makes the kernel copy the file into the new
/// index first (`ovl_nlink_start`), metadata-only again: a metadata-only copy of a layer that
/// is itself a metadata-only copy. The kernel follows the chain down to the layer with the data;
/// ufs read the data from the middle layer, the sparse copy's holes (zeros), after a remount.
#[test]
fn index_metacopy_chain_after_rotation() {
    regression(
        "index_metacopy_chain_after_rotation",
        Config::new(true, true, true),
        vec![layer(vec![("a/e/d", Node::file(b"the data of d"))])],
        vec![
            Op::Link {
                from: path("a/e/d"),
                to: path("a/e/b"),
            },
            Op::Rotate,
            Op::Unlink {
                path: path("a/e/b"),
            },
            Op::Remount,
            Op::Read {
                path: path("a/e/d"),
                offset: 0,
                len: 100,
            },
        ],
    );
}

/// Soak seed 103196769485707 (`redirect`, read-only layers): a directory renamed in one
/// generation (`/a` to `/e`, a relative redirect in that layer) and then, on the rotated stack, a
/// directory moved out of it (`/e/a` to `/c`, recorded as `/e/a`). Reading `/e/a` from the
/// layers below must follow `e`'s own redirect on the way (`/a/a`), as the kernel's
/// `ovl_lookup_layer` does for every directory on a redirect path; ufs looked for `/e/a` below
/// and merged nothing.
#[test]
fn a_redirect_path_through_a_renamed_directory() {
    regression(
        "a_redirect_path_through_a_renamed_directory",
        REDIRECT,
        vec![layer(vec![
            ("a/a/x", Node::file(b"x data")),
            ("a/a/y", Node::file(b"y data")),
            ("c", Node::file(b"c")),
        ])],
        vec![
            Op::Unlink { path: path("c") },
            Op::Rename {
                from: path("a"),
                to: path("e"),
                mode: RenameMode::Plain,
            },
            Op::Rotate,
            Op::Rename {
                from: path("e/a"),
                to: path("c"),
                mode: RenameMode::Plain,
            },
            Op::RemountReadOnly,
            Op::Readdir { path: path("c") },
        ],
    );
}

/// Soak seed 70506684419196 (`metacopy`): two directories exchanged in one generation (each
/// gets a relative redirect to the other's name in that layer), then, on the rotated stack, a
/// file of one of them linked (a metadata-only copy, with a data redirect). The data redirect
/// took the lower layer's redirect record as the directory's path (`/e/a`), where the path
/// must be the directory's name in the top lower layer (`/h2/a`), whose own record then takes
/// the walk on (`ovl_get_redirect` uses the upper's records only): the link answered `EIO`.
#[test]
fn a_data_redirect_under_a_directory_renamed_in_a_lower_layer() {
    regression(
        "a_data_redirect_under_a_directory_renamed_in_a_lower_layer",
        METACOPY,
        vec![layer(vec![
            ("e/a", Node::file(b"the data of e/a")),
            ("h2/x", Node::file(b"x")),
        ])],
        vec![
            Op::Rename {
                from: path("h2"),
                to: path("e"),
                mode: RenameMode::Exchange,
            },
            Op::Rotate,
            Op::Link {
                from: path("h2/a"),
                to: path("h2/n"),
            },
            Op::Remount,
            Op::Read {
                path: path("h2/n"),
                offset: 0,
                len: 100,
            },
            Op::RemountReadOnly,
        ],
    );
}

/// Soak seed 135598421168987 (`full`): a directory moved into a directory that was made anew
/// (opaque) in one generation, then a file moved out of it on the rotated stack. Walking that
/// file's data redirect, the opaque directory on the path stopped the search below, where the
/// kernel's walk starts again at the moved directory's absolute redirect (`ovl_check_redirect`
/// resets `d->stop`): the file answered `EIO`.
#[test]
fn an_absolute_redirect_below_an_opaque_directory_reaches_the_lowers() {
    regression(
        "an_absolute_redirect_below_an_opaque_directory_reaches_the_lowers",
        Config::new(true, true, true),
        vec![layer(vec![
            ("b/z", Node::file(b"z")),
            ("c/d", Node::file(b"the data of c/d")),
        ])],
        vec![
            Op::Unlink { path: path("b/z") },
            Op::Rmdir { path: path("b") },
            Op::Mkdir {
                path: path("b"),
                mode: 0o755,
            },
            Op::Rename {
                from: path("c"),
                to: path("b/c"),
                mode: RenameMode::Plain,
            },
            Op::Rotate,
            Op::Rename {
                from: path("b/c/d"),
                to: path("b/m"),
                mode: RenameMode::Plain,
            },
            Op::Forget { pin: path("b") },
            Op::Read {
                path: path("b/m"),
                offset: 0,
                len: 100,
            },
            Op::RemountReadOnly,
        ],
    );
}

/// Soak seed 211839348140517 (`index`): an xattr change through a still lower-only name of an
/// indexed file changes the copy but, unlike every other change, does not link that name up in
/// the kernel (`ovl_xattr_set`); ufs linked it up, so once the upper was a lower layer the name
/// showed the copy's data and links.
#[test]
fn an_xattr_change_through_a_lower_alias_does_not_link_it_up() {
    regression(
        "an_xattr_change_through_a_lower_alias_does_not_link_it_up",
        INDEX,
        vec![layer(vec![
            ("c/c", Node::file(b"linked data")),
            (
                "h2",
                Node::HardLink {
                    target: "c/c".into(),
                },
            ),
        ])],
        vec![
            Op::Append {
                path: path("c/c"),
                len: 51,
                fill: 109,
            },
            Op::SetXattr {
                path: path("h2"),
                name: "user.k1".into(),
                value: b"value".to_vec(),
                mode: XattrMode::Create,
            },
            Op::Rotate,
            Op::Stat { path: path("h2") },
        ],
    );
}

/// Soak seeds 50120121180124, 206414524674734, 178518764073109 (`index`, read-only layers and
/// rotation; found with `UFS_DIFF_DINO=on`, but in cases without the passthrough): with
/// `index=on`, once one name of a lower hard link has its copy (a `setxattr` through it), a
/// `setxattr` through another, still lower-only name changes the index copy, and the kernel
/// does not link that name into the upper (unlike `chmod` or a write, see
/// `index_change_through_a_lower_alias_links_it_up`): the upper as a lower layer shows that name
/// as the old lower file, with its own xattrs and two links. ufs links it up: one file of three
/// links, the second value.
#[test]
fn index_setxattr_through_a_lower_alias_is_not_linked_up() {
    regression(
        "index_setxattr_through_a_lower_alias_is_not_linked_up",
        INDEX,
        vec![layer(vec![
            ("e", Node::file(b"the data of e")),
            ("d/h2", Node::HardLink { target: "e".into() }),
        ])],
        vec![
            Op::SetXattr {
                path: path("d/h2"),
                name: "user.k0".into(),
                value: b"".to_vec(),
                mode: XattrMode::Any,
            },
            Op::SetXattr {
                path: path("e"),
                name: "user.k0".into(),
                value: b"g".to_vec(),
                mode: XattrMode::Any,
            },
            Op::RemountReadOnly,
        ],
    );
}

/// Soak seed 221692111824965 (`full`): after a remount, the upper name of an indexed copy was
/// looked up (and cached by the kernel, its node then having only that entry), then a
/// lower-only name of the same file (which made the node take the index entry and the lower
/// file); a `chmod` through the cached upper name then reached ufs as an operation on the node
/// last looked up by the lower-only name, which ufs linked up. The kernel changes the copy and
/// links nothing. Every name of a file with several links now gets no cache time in a writable
/// mount with the index, so ufs knows the name an operation comes through.
#[test]
fn a_change_through_an_upper_name_links_up_no_other_name() {
    regression(
        "a_change_through_an_upper_name_links_up_no_other_name",
        Config::new(true, true, true),
        vec![layer(vec![
            ("c", Node::file(b"the data of c")),
            ("h1", Node::HardLink { target: "c".into() }),
            ("h2", Node::HardLink { target: "c".into() }),
        ])],
        vec![
            Op::Write {
                path: path("h2"),
                offset: 65,
                len: 252,
                fill: 131,
            },
            Op::RemountReadOnly,
            Op::Stat { path: path("h2") },
            Op::Stat { path: path("h1") },
            Op::Chmod {
                path: path("h2"),
                mode: 0,
            },
            Op::Rotate,
        ],
    );
}
