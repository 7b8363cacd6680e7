//! `cargo bench --bench docker`: `docker build` with ufs as docker's `fuse-overlayfs`, side by
//! side with Debian's fuse-overlayfs under the same driver and with docker's `overlay2` driver
//! (kernel overlayfs), in one run on the same machine.
//!
//! Three private dockerd (the docker tier's daemons, `tests/common/docker_support.rs`) each
//! import the same busybox base image; then, round by round, each builds the same Dockerfile
//! with `--no-cache` (legacy builder, `--network none`): copy in a tarball of a few thousand
//! small files, unpack it, append to a tenth of them, delete a fifth of the directories,
//! `chmod` what is in three tenths of them, rename a directory, read everything back. The
//! build's wall time (client start to exit), and the time of `docker run --rm` of the built
//! image, are taken per round; the report prints medians and ratios. Between rounds the image
//! is removed so that every round starts from the same store.
//!
//! This is a benchmark binary (`harness = false`): it needs root, `/dev/fuse`, dockerd and
//! busybox-static, and prints `SKIP: <reason>` and exits 0 when they are not there.
//! `UFS_BENCH_REPS` (default 3) sets the rounds, `UFS_BENCH_FILES` (default 4000, at least 1000)
//! the number of files in the tarball.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/containers_support.rs"]
mod containers_support;
#[path = "../tests/common/docker_support.rs"]
mod docker_support;

use std::fs;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::run_bounded;
use docker_support::{Daemon, Driver, docker_skip_reason};

const BASE: &str = "ufs-bench-base:latest";

fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("{name}={v:?} is not a count: {e}")),
        Err(_) => Ok(default),
    }
}

/// The Dockerfile: every step touches many files.
fn dockerfile() -> String {
    format!(
        "FROM {BASE}\n\
         COPY tree.tar /tree.tar\n\
         RUN mkdir /t && tar -C /t -xf /tree.tar && rm /tree.tar\n\
         RUN for f in /t/*/f*0; do echo more >> \"$f\"; done\n\
         RUN rm -rf /t/d*[01] && chmod -R g+w /t/d*[2-4]\n\
         RUN mv /t/d08 /t/moved && cat /t/*/* > /dev/null\n"
    )
}

/// A tarball of `files` small files (100 per directory `dNN`, 1 to 4 KiB each) in
/// `ctx/tree.tar`, and the Dockerfile.
fn make_context(ctx: &std::path::Path, files: usize) -> Result<(), String> {
    let src = ctx.join("tree");
    for i in 0..files {
        let dir = src.join(format!("d{:02}", i / 100));
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let size = 1024 * (1 + i % 4);
        let body: Vec<u8> = (0..size).map(|b| b"abcdefgh"[(b + i) % 8]).collect();
        fs::write(dir.join(format!("f{i:05}")), body).map_err(|e| format!("write: {e}"))?;
    }
    let run = run_bounded(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(ctx.join("tree.tar"))
            .arg("."),
        Duration::from_secs(120),
    );
    if !run.success() {
        return Err(format!("tar of the build context's files failed:\n{run}"));
    }
    fs::remove_dir_all(&src).map_err(|e| format!("rm {}: {e}", src.display()))?;
    fs::write(ctx.join("Dockerfile"), dockerfile()).map_err(|e| format!("Dockerfile: {e}"))
}

fn timed(d: &Daemon, args: &[&str]) -> Result<Duration, String> {
    let start = Instant::now();
    let run = d.docker(args);
    let took = start.elapsed();
    if run.success() {
        Ok(took)
    } else {
        Err(format!(
            "[{}] docker {} failed:\n{run}\n--- dockerd.log ---\n{}",
            d.driver.name(),
            args.join(" "),
            d.log_tail("dockerd.log")
        ))
    }
}

fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` runs this binary
    // without it, and must not start daemons for minutes.
    if !args.iter().any(|a| a == "--bench") {
        println!("SKIP: docker only runs under `cargo bench` (no --bench argument)");
        return ExitCode::SUCCESS;
    }
    if let Some(reason) = docker_skip_reason() {
        println!("SKIP: {reason}");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("docker bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let reps = env_usize("UFS_BENCH_REPS", 3)?.max(1);
    let files = env_usize("UFS_BENCH_FILES", 4000)?.max(1000);
    let mut daemons = Vec::new();
    for driver in [Driver::Ufs, Driver::FuseOverlayfs, Driver::Overlay2] {
        match Daemon::start(driver) {
            Ok(d) => daemons.push(d),
            Err(e) if driver == Driver::Ufs => return Err(e),
            Err(e) => eprintln!("note: no {} column: {e}", driver.name()),
        }
    }
    for d in &daemons {
        let tar = d.path("base.tar");
        containers_support::make_base_tar(&d.path("rootfs"), &tar)?;
        d.import(&tar, BASE);
        make_context(&d.path("ctx"), files)?;
    }
    let mut build: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    let mut start: Vec<Vec<Duration>> = vec![Vec::new(); daemons.len()];
    for round in 1..=reps {
        for (i, d) in daemons.iter().enumerate() {
            let ctx = d.path("ctx");
            let ctx = ctx.to_str().unwrap_or_default();
            let b = timed(
                d,
                &[
                    "build",
                    "--no-cache",
                    "--network",
                    "none",
                    "-q",
                    "-t",
                    "bench",
                    ctx,
                ],
            )?;
            let r = timed(d, &["run", "--rm", "--network", "none", "bench", "true"])?;
            eprintln!(
                "round {round}/{reps}: {:<15} build {:>6.2} s, run {:>5.2} s",
                d.driver.name(),
                b.as_secs_f64(),
                r.as_secs_f64()
            );
            build[i].push(b);
            start[i].push(r);
            d.ok(&["image", "rm", "-f", "bench"]);
        }
    }
    let med = |v: &[Vec<Duration>]| -> Vec<f64> {
        v.iter()
            .map(|t| median(t).map(|d| d.as_secs_f64()).unwrap_or(f64::NAN))
            .collect()
    };
    let (build, start) = (med(&build), med(&start));
    let names: Vec<&str> = daemons.iter().map(|d| d.driver.name()).collect();
    println!(
        "\n`docker build --no-cache` of 6 steps over {files} files, median of {reps} (seconds)\n"
    );
    let mut header = String::from("| | ");
    header.push_str(&names.join(" | "));
    for other in &names[1..] {
        header.push_str(&format!(" | ufs / {other}"));
    }
    println!("{header} |");
    println!("|{}", "---|".repeat(names.len() * 2));
    for (what, row) in [("docker build", &build), ("docker run --rm true", &start)] {
        let mut line = format!("| {what} |");
        for t in row {
            line.push_str(&format!(" {t:.2} |"));
        }
        for t in &row[1..] {
            line.push_str(&format!(" {:.2} |", row[0] / t));
        }
        println!("{line}");
    }
    Ok(())
}
