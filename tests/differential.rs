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
//! - `UFS_DIFF_PASSTHROUGH=on|off`: whether ufs mounts with FUSE passthrough (its default) or
//!   `passthrough=off`; by default half the cases each, drawn from the seed apart from its
//!   layers and operations (`generate::passthrough_of`). The regression targets mount as ufs
//!   does by default unless this says `off`.
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
//! Regression tests for the disagreements the harness found are in the targets
//! `differential_regressions` and `differential_lifecycle`: each spells out its layers and
//! operations, so that it does not depend on the generator.

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
        "setfacl",
        "getfacl",
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
