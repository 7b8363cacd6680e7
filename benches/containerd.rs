//! `cargo bench --bench containerd`: containerd with the ufs snapshotter beside its own
//! overlayfs and native snapshotters, in one run on one private containerd.
//!
//! Two numbers per snapshotter, each the median of several rounds taken in turn (one round of
//! every snapshotter, then the next), so that a slow moment of the machine hits all of them:
//!
//! - `ctr run --rm` of `true` on a small busybox image already unpacked: what starting a
//!   container costs (prepare, mount, runc, unmount, remove);
//! - `ctr images import` of an image of 3 layers with many small files each (after `ctr
//!   images rm --sync`, so that the content and the snapshots are gone and every round unpacks
//!   from the archive again).
//!
//! The private containerd and the image archives come from `tests/common/containerd_support.rs`.
//! Needs root, containerd, ctr, runc, `/dev/fuse` and the kernel overlay; prints `SKIP: <reason>`
//! and exits 0 without them. Environment: `UFS_CTRD_RUNS` (runs of `true`, default 15),
//! `UFS_CTRD_ROUNDS` (imports per snapshotter, default 5), `UFS_CTRD_FILES` (files per layer,
//! default 3000).

#[path = "../tests/common/containerd_support.rs"]
mod containerd_support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use containerd_support::*;

const SNAPSHOTTERS: [&str; 3] = ["ufs", "overlayfs", "native"];
const SMALL: &str = "docker.io/library/ufs-bench-small:latest";
const BIG: &str = "docker.io/library/ufs-bench-files:latest";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Layer `layer` of the many-file image: `files` files of 200 bytes in directories of 100.
fn fill_files(root: &Path, layer: usize, files: usize) -> Result<(), String> {
    let body = "x".repeat(200);
    for i in 0..files {
        put(
            root,
            &format!("l{layer}/d{:03}/f{i:05}", i / 100),
            &body,
            0o644,
        )?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // `cargo test --benches` runs bench binaries without `--bench`: a smoke run, not a bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("SKIP: run with `cargo bench --bench containerd`");
        return ExitCode::SUCCESS;
    }
    if let Some(reason) = skip_reason() {
        println!("SKIP: {reason}");
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), String> {
    let runs = env_usize("UFS_CTRD_RUNS", 15);
    let rounds = env_usize("UFS_CTRD_ROUNDS", 5);
    let files = env_usize("UFS_CTRD_FILES", 3000);
    let c = Ctrd::start(&PathBuf::from(env!("CARGO_BIN_EXE_ufs")))?;

    let small = c.path("small.tar");
    let base: Vec<LayerFill> = vec![Box::new(|r: &Path| busybox_rootfs(r))];
    oci_archive(&c.path("small-work"), SMALL, &base, &small)?;
    let big = c.path("big.tar");
    let layers: Vec<LayerFill> = (0..3)
        .map(|l| -> LayerFill {
            Box::new(move |r: &Path| {
                if l == 0 {
                    busybox_rootfs(r)?;
                }
                fill_files(r, l, files)
            })
        })
        .collect();
    oci_archive(&c.path("big-work"), BIG, &layers, &big)?;
    for sn in SNAPSHOTTERS {
        c.ctr_ok(&["images", "import", "--snapshotter", sn, path_str(&small)])?;
    }

    let mut run_times: Vec<Vec<Duration>> = vec![Vec::new(); SNAPSHOTTERS.len()];
    for round in 0..=runs {
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            let id = format!("bench-{sn}-{round}");
            let t = Instant::now();
            c.run_rm(sn, SMALL, &id, &["true"])?;
            // Round 0 warms the caches and the shim binary; it is not counted.
            if round > 0 {
                run_times[i].push(t.elapsed());
            }
        }
    }

    let mut import_times: Vec<Vec<Duration>> = vec![Vec::new(); SNAPSHOTTERS.len()];
    for _ in 0..rounds {
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            // Removing an image that is not there fails; the first round has none.
            let _ = c.ctr(&["images", "rm", "--sync", BIG]);
            let t = Instant::now();
            c.ctr_ok(&["images", "import", "--snapshotter", sn, path_str(&big)])?;
            import_times[i].push(t.elapsed());
        }
    }
    let _ = c.ctr(&["images", "rm", "--sync", BIG]); // the guard removes everything anyway

    let run_med: Vec<Duration> = run_times.into_iter().map(median).collect();
    let imp_med: Vec<Duration> = import_times.into_iter().map(median).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "containerd {}; `ctr run --rm` of `true`: median of {runs}; `ctr images import` of 3 layers x {files} files: median of {rounds}",
        containerd_version()
    );
    println!(
        "| snapshotter | ctr run --rm true (ms) | vs overlayfs | import (ms) | vs overlayfs |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
        println!(
            "| {sn} | {:.0} | {:.2} | {:.0} | {:.2} |",
            ms(run_med[i]),
            ms(run_med[i]) / ms(run_med[1]),
            ms(imp_med[i]),
            ms(imp_med[i]) / ms(imp_med[1]),
        );
    }
    Ok(())
}

fn containerd_version() -> String {
    let out = run(
        std::process::Command::new("containerd").arg("--version"),
        CTR_TIMEOUT,
    );
    out.stdout
        .split_whitespace()
        .nth(2)
        .unwrap_or("?")
        .to_string()
}
