//! `cargo bench --bench compare`: ufs side by side with kernel overlayfs and fuse-overlayfs.
//!
//! The three file systems get the same three lower layers, an empty upper layer each and the same
//! work, on the same machine, in one run. The result is a table of median times (cold and warm
//! caches) with the ratios between them and the peak memory of each FUSE daemon, printed and
//! written to `target/bench-compare.md`. `benches/README.md` explains how to run and read it.
//!
//! The file is laid out top-down: configuration and prerequisites, the dataset, mounting, the
//! workloads, the measurement loop, the report.
//!
//! This is a benchmark binary (`harness = false`): it needs root, `/dev/fuse` and kernel
//! overlayfs, and prints `SKIP: <reason>` and exits 0 when they are not there, so that
//! `cargo bench` on a developer machine without them is not an error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

/// How long a mount or unmount may take before it counts as failed. Mounting a FUSE daemon takes
/// milliseconds; the bound only keeps a broken daemon from hanging the whole run.
const MOUNT_BOUND: Duration = Duration::from_secs(10);

/// Everything the environment can change. See `benches/README.md` for the variables.
struct Config {
    /// Multiplies the dataset (file counts, large file size) and the operation counts.
    scale: f64,
    /// Measurements per (workload, file system, cache state); the report shows the median.
    reps: usize,
    /// A single run taking longer than this is aborted (FUSE connection abort) and reported.
    timeout: Duration,
    /// Workload names to run; empty means all.
    only: Vec<String>,
    /// The program measured in the `ufs` column.
    ufs_bin: PathBuf,
    /// Extra `-o` options for ufs only (for trying out tuning options).
    ufs_opts: Option<String>,
    /// The fuse-overlayfs 2.x (Rust) binary, if one was built (`UFS_BENCH_FO2`).
    fo2_bin: Option<PathBuf>,
    /// Run ufs a second time with `passthrough=off` (`UFS_BENCH_NO_PASSTHROUGH`, default on).
    ufs_without_passthrough: bool,
}

impl Config {
    fn from_env(args: &[String]) -> Result<Config, String> {
        let scale = env_parse("UFS_BENCH_SCALE", 1.0_f64)?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!(
                "UFS_BENCH_SCALE must be a positive number, got {scale}"
            ));
        }
        let reps = env_parse("UFS_BENCH_REPS", 3_usize)?.max(1);
        let timeout = Duration::from_secs_f64(env_parse("UFS_BENCH_TIMEOUT", 120.0_f64)?.max(1.0));
        // Workload filters: positional arguments (`cargo bench --bench compare -- read-large`)
        // and/or UFS_BENCH_ONLY=a,b. Flags such as cargo's `--bench` are not filters.
        let mut only: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        if let Ok(list) = std::env::var("UFS_BENCH_ONLY") {
            only.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        // `CARGO_BIN_EXE_<name>` is set by cargo when it compiles a bench of a package that has
        // that binary, and cargo builds the binary (same profile) before running the bench.
        let ufs_bin = std::env::var_os("UFS_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ufs")));
        let ufs_opts = std::env::var("UFS_BENCH_UFS_OPTS")
            .ok()
            .filter(|s| !s.is_empty());
        let fo2_bin = std::env::var_os("UFS_BENCH_FO2")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let ufs_without_passthrough = env_parse("UFS_BENCH_NO_PASSTHROUGH", 1_u8)? != 0;
        Ok(Config {
            scale,
            reps,
            timeout,
            only,
            ufs_bin,
            ufs_opts,
            fo2_bin,
            ufs_without_passthrough,
        })
    }
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}: cannot parse {text:?}")),
        _ => Ok(default),
    }
}

/// Finds `name` the way a shell would: as a path if it has a slash, else in `$PATH`.
fn find_program(name: &Path) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return is_exec(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

// ------------------------------------------------------------------------------------------------
// Entry point and prerequisites
// ------------------------------------------------------------------------------------------------

/// Set by SIGINT: the run stops after the current measurement, unmounts and prints what it has.
/// Killing the process outright would leave mounts behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_sigint_handler() {
    // SA_RESETHAND: a second Ctrl-C kills as usual. SA_RESTART: the measurement in progress
    // completes instead of failing with EINTR.
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigint as *const () as usize;
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` runs this binary
    // without it. Only a real bench run should mount file systems and take minutes.
    if !args.iter().any(|a| a == "--bench") {
        println!("SKIP: compare only runs under `cargo bench` (no --bench argument)");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("compare: {message}");
            return ExitCode::from(2);
        }
    };
    let unknown: Vec<&String> = config
        .only
        .iter()
        .filter(|n| !workloads().iter().any(|w| w.name == n.as_str()))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = workloads().iter().map(|w| w.name).collect();
        eprintln!(
            "compare: unknown workload(s) {unknown:?}; known: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    }
    if let Err(reason) = check_prerequisites(&config) {
        println!("SKIP: {reason}");
        return ExitCode::SUCCESS;
    }
    install_sigint_handler();
    match run(&config) {
        Ok(()) if INTERRUPTED.load(Ordering::SeqCst) => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("compare: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Everything without which no comparison is possible. A missing fuse-overlayfs is not here:
/// the run goes on without that column.
fn check_prerequisites(config: &Config) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (kernel overlay mounts and drop_caches)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".into());
    }
    if find_program(Path::new("fusermount3")).is_none() {
        return Err("fusermount3 is not in PATH".into());
    }
    if find_program(&config.ufs_bin).is_none() {
        return Err(format!(
            "ufs binary {} not found (set UFS_BENCH_BIN)",
            config.ufs_bin.display()
        ));
    }
    OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e}"))?;
    // Kernel overlayfs can be compiled out, be a module not loaded yet, or be forbidden in a
    // container: a real test mount is the only reliable check.
    let probe = tempfile::Builder::new()
        .prefix("ufs-bench-probe-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    for dir in ["lower", "upper", "work", "merged"] {
        fs::create_dir(probe.path().join(dir)).map_err(|e| format!("probe mkdir: {e}"))?;
    }
    let p = |d: &str| probe.path().join(d).display().to_string();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("lower"),
        p("upper"),
        p("work")
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(probe.path().join("merged"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run mount(8): {e}"))?;
    if !status.success() {
        return Err("kernel overlayfs: `mount -t overlay` failed".into());
    }
    let unmounted = Command::new("umount")
        .arg(probe.path().join("merged"))
        .status();
    if !unmounted.is_ok_and(|s| s.success()) {
        return Err("kernel overlayfs: could not unmount the probe mount".into());
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Dataset
// ------------------------------------------------------------------------------------------------

/// SplitMix64: tiny and deterministic. A fixed seed builds the same dataset every run, so numbers
/// from different runs (and different commits) are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    /// Sizes like the files of a distribution image: mostly a few KiB, a tail up to 64 KiB.
    fn small_size(&mut self) -> usize {
        match self.below(100) {
            0..70 => self.below(4 << 10),
            70..95 => (4 << 10) + self.below(12 << 10),
            _ => (16 << 10) + self.below(48 << 10),
        }
    }
}

/// Index of the bottom ("base image") layer; 0 is the top-most lower layer.
const BASE: usize = 2;
const LAYERS: usize = 3;

enum Entry {
    File {
        size: usize,
    },
    Symlink {
        target: String,
    },
    /// An overlayfs whiteout (character device 0/0): hides the same name in lower layers.
    Whiteout,
}

/// The layers on disk and what the merged view of them must look like. The workloads use the
/// expected view (not a walk of a mount) so that every file system does exactly the same work,
/// and the walk-type workloads compare their counts with it.
struct Dataset {
    /// Temporary root holding everything; removed at the end unless mounts are stuck in it.
    root: tempfile::TempDir,
    /// Lower layers, top-most first (the order of `lowerdir=`).
    lowers: Vec<PathBuf>,
    /// Directories of the merged view, relative, the root ("") first.
    dirs: Vec<PathBuf>,
    /// Regular small files of the merged view, relative.
    files: Vec<PathBuf>,
    /// Entries below the root of the merged view (directories, files, symlinks).
    entries: u64,
    /// Bytes of all of `files` as seen through the merged view.
    small_bytes: u64,
    /// The large file (relative) and its size.
    large: PathBuf,
    large_size: u64,
    /// A lower directory with many entries, and those entries (relative).
    bulk: PathBuf,
    bulk_files: Vec<PathBuf>,
    /// Open+close calls of the open-close workload, and files of the write workloads.
    opens: usize,
    writes: usize,
    /// Random bytes that files are cut from: real data, so nothing is sparse or compressible.
    pool: Vec<u8>,
    /// For the report.
    symlinks: usize,
    hidden: usize,
    whiteouts: usize,
    on_tmpfs: bool,
}

impl Dataset {
    fn build(scale: f64) -> Result<Dataset, String> {
        let scaled = |n: f64, min: usize| ((n * scale).round() as usize).max(min);
        let total_files = scaled(20_000.0, 100);
        let n_bulk = total_files / 10;
        let n_tree = total_files - n_bulk;
        // `UFS_BENCH_LARGE_MIB` sets the large file's size on its own (e.g. 1024 for the 1 GiB
        // metadata-only copy-up figures), independent of the scale.
        let large_mib = std::env::var("UFS_BENCH_LARGE_MIB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| scaled(256.0, 1));
        let large_size = large_mib as u64 * (1 << 20);

        let root = tempfile::Builder::new()
            .prefix("ufs-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create the dataset directory: {e}"))?;
        // mountinfo shows canonical paths; compare like with like.
        let base = fs::canonicalize(root.path()).map_err(|e| format!("canonicalize: {e}"))?;
        let lowers: Vec<PathBuf> = ["lower-0-top", "lower-1-mid", "lower-2-base"]
            .iter()
            .map(|name| base.join("layers").join(name))
            .collect();

        let mut rng = Rng(0x75_6673_6265_6e63); // "ufsbenc"
        let mut pool = vec![0u8; 1 << 20];
        for chunk in pool.chunks_mut(8) {
            let bytes = rng.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }

        // A directory tree like /usr of an image: depth 4, and 5 below a third of the leaves.
        let mut tree: Vec<PathBuf> = Vec::new();
        let mut frontier = vec![PathBuf::new()];
        for (name, fanout) in [("usr", 6), ("pkg", 4), ("mod", 3), ("sub", 3)] {
            let mut next = Vec::new();
            for parent in &frontier {
                for i in 0..fanout {
                    next.push(parent.join(format!("{name}{i}")));
                }
            }
            tree.extend(next.iter().cloned());
            frontier = next;
        }
        for (n, parent) in frontier.iter().enumerate().filter(|(n, _)| n % 3 == 0) {
            for i in 0..2 {
                tree.push(parent.join(format!("leaf{n}-{i}")));
            }
        }

        let mut layers: Vec<Vec<(PathBuf, Entry)>> = (0..LAYERS).map(|_| Vec::new()).collect();
        let mut files = Vec::new();
        let (mut small_bytes, mut symlinks, mut hidden, mut whiteouts) = (0u64, 0, 0, 0);

        for i in 0..n_tree {
            let dir = &tree[rng.below(tree.len())];
            let ext = [".so", ".py", ".txt", ".h", ".json", ""][rng.below(6)];
            let path = dir.join(format!("f{i:05}{ext}"));
            // Most files come from the base image, fewer from each layer above.
            let layer = match rng.below(100) {
                0..60 => 2,
                60..85 => 1,
                _ => 0,
            };
            if rng.chance(4) {
                let target = format!("f{:05}.so", rng.below(n_tree));
                layers[layer].push((path, Entry::Symlink { target }));
                symlinks += 1;
                continue;
            }
            let size = rng.small_size();
            layers[layer].push((path.clone(), Entry::File { size }));
            // An older version further down that this one hides (an upgraded package file).
            if layer < BASE && rng.chance(10) {
                let below = layer + 1 + rng.below(BASE - layer);
                layers[below].push((
                    path.clone(),
                    Entry::File {
                        size: rng.small_size(),
                    },
                ));
                hidden += 1;
            }
            files.push(path);
            small_bytes += size as u64;
        }
        // Files of the base image that a later layer deleted.
        for i in 0..n_tree / 50 {
            let path = tree[rng.below(tree.len())].join(format!("gone{i:05}"));
            layers[BASE].push((
                path.clone(),
                Entry::File {
                    size: rng.small_size(),
                },
            ));
            layers[rng.below(BASE)].push((path, Entry::Whiteout));
            whiteouts += 1;
        }
        let bulk = PathBuf::from("bulk");
        let mut bulk_files = Vec::new();
        for i in 0..n_bulk {
            let path = bulk.join(format!("entry-{i:05}.dat"));
            let size = 256 + rng.below(1792);
            layers[BASE].push((path.clone(), Entry::File { size }));
            bulk_files.push(path.clone());
            files.push(path);
            small_bytes += size as u64;
        }
        let large = PathBuf::from("big/large.bin");

        // Every layer gets the directories its entries need, so directories overlap across
        // layers and must be merged; the base layer also has the whole skeleton.
        let mut layer_dirs: Vec<BTreeSet<PathBuf>> = (0..LAYERS).map(|_| BTreeSet::new()).collect();
        layer_dirs[BASE].extend(tree.iter().cloned());
        layer_dirs[BASE].insert(bulk.clone());
        layer_dirs[BASE].insert(PathBuf::from("big"));
        for (layer, entries) in layers.iter().enumerate() {
            for (path, _) in entries {
                let parents = path
                    .ancestors()
                    .skip(1)
                    .filter(|p| !p.as_os_str().is_empty());
                layer_dirs[layer].extend(parents.map(Path::to_path_buf));
            }
        }

        for (layer, lower) in lowers.iter().enumerate() {
            fs::create_dir_all(lower).map_err(|e| format!("mkdir {}: {e}", lower.display()))?;
            for dir in &layer_dirs[layer] {
                let path = lower.join(dir);
                fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
            }
            for (rel, entry) in &layers[layer] {
                let path = lower.join(rel);
                write_entry(&path, entry, &pool, &mut rng)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
        }
        let large_path = lowers[BASE].join(&large);
        write_large(&large_path, large_size, &pool)
            .map_err(|e| format!("writing {}: {e}", large_path.display()))?;

        let mut dirs = vec![PathBuf::new()];
        dirs.extend(tree.iter().cloned());
        dirs.push(bulk.clone());
        dirs.push(PathBuf::from("big"));
        // Below the root: directories, small files, symlinks, the large file.
        let entries = (dirs.len() - 1 + files.len() + symlinks + 1) as u64;
        let on_tmpfs = is_tmpfs(&base);

        Ok(Dataset {
            root,
            lowers,
            dirs,
            files,
            entries,
            small_bytes,
            large,
            large_size,
            bulk,
            bulk_files,
            opens: scaled(20_000.0, 1),
            writes: scaled(2_000.0, 1),
            pool,
            symlinks,
            hidden,
            whiteouts,
            on_tmpfs,
        })
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn lowerdir(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        lowers.join(":")
    }
}

fn write_entry(path: &Path, entry: &Entry, pool: &[u8], rng: &mut Rng) -> io::Result<()> {
    match entry {
        Entry::File { size } => {
            let start = rng.below(pool.len() - size);
            fs::write(path, &pool[start..start + size])
        }
        Entry::Symlink { target } => std::os::unix::fs::symlink(target, path),
        Entry::Whiteout => {
            let c_path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
            let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}

/// Writes `size` bytes of real (non-sparse, incompressible) data, 1 MiB at a time.
fn write_large(path: &Path, size: u64, pool: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut chunk = pool.to_vec();
    let mut written = 0u64;
    while written < size {
        // Stamp the offset so that no two chunks are identical (no accidental dedup).
        chunk[..8].copy_from_slice(&written.to_le_bytes());
        let n = chunk.len().min((size - written) as usize);
        file.write_all(&chunk[..n])?;
        written += n as u64;
    }
    Ok(())
}

/// A dataset in tmpfs cannot be evicted by drop_caches, so "cold" would not be cold.
fn is_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c_path outlives the call.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as libc::c_long == TMPFS_MAGIC
    }
}

// ------------------------------------------------------------------------------------------------
// Mounting
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FsKind {
    Kernel,
    /// Debian's fuse-overlayfs 1.x (C, libfuse), from `PATH`.
    FuseOverlayfs,
    /// fuse-overlayfs 2.x (Rust, with passthrough), built from its public source.
    FuseOverlayfs2,
    /// ufs as it mounts by default (passthrough on where the kernel allows it).
    Ufs,
    /// ufs with `passthrough=off`: every read and write through the daemon.
    UfsNoPassthrough,
}

impl FsKind {
    const ALL: [FsKind; 5] = [
        FsKind::Kernel,
        FsKind::FuseOverlayfs,
        FsKind::FuseOverlayfs2,
        FsKind::Ufs,
        FsKind::UfsNoPassthrough,
    ];
    /// The FUSE daemons, whose memory is reported.
    const FUSE: [FsKind; 4] = [
        FsKind::FuseOverlayfs,
        FsKind::FuseOverlayfs2,
        FsKind::Ufs,
        FsKind::UfsNoPassthrough,
    ];

    fn label(self) -> &'static str {
        match self {
            FsKind::Kernel => "kernel",
            FsKind::FuseOverlayfs => "fuse-overlayfs",
            FsKind::FuseOverlayfs2 => "fuse-overlayfs-2",
            FsKind::Ufs => "ufs",
            FsKind::UfsNoPassthrough => "ufs-nopt",
        }
    }

    fn is_ufs(self) -> bool {
        matches!(self, FsKind::Ufs | FsKind::UfsNoPassthrough)
    }
}

/// The ratios of the times table: each file system to the kernel, then ufs to both
/// fuse-overlayfs builds (the one to watch: is ufs doing well *as a FUSE file system*).
const RATIOS: [(FsKind, FsKind); 8] = [
    (FsKind::Ufs, FsKind::Kernel),
    (FsKind::UfsNoPassthrough, FsKind::Kernel),
    (FsKind::FuseOverlayfs, FsKind::Kernel),
    (FsKind::FuseOverlayfs2, FsKind::Kernel),
    (FsKind::Ufs, FsKind::FuseOverlayfs),
    (FsKind::Ufs, FsKind::FuseOverlayfs2),
    (FsKind::UfsNoPassthrough, FsKind::FuseOverlayfs),
    (FsKind::UfsNoPassthrough, FsKind::FuseOverlayfs2),
];

/// One contestant: how to mount it and where its upper, work and merged directories are.
struct Fs {
    kind: FsKind,
    /// The daemon program; `None` for kernel overlayfs.
    program: Option<PathBuf>,
    /// `PROGRAM mount -o OPTS MERGED` (ufs) rather than `PROGRAM -o OPTS MERGED` (fuse-overlayfs).
    mount_subcommand: bool,
    extra_opts: Option<String>,
    /// Why this contestant is not measured at all (not installed).
    missing: Option<String>,
    /// Holds `upper/` and `work/`, emptied before every mount.
    state: PathBuf,
    /// The mount point; its path is unique, which is how the daemon is found in /proc.
    merged: PathBuf,
}

impl Fs {
    fn new(kind: FsKind, config: &Config, ds: &Dataset) -> Fs {
        let (program, missing) = match kind {
            FsKind::Kernel => (None, None),
            FsKind::FuseOverlayfs => match find_program(Path::new("fuse-overlayfs")) {
                Some(p) => (Some(p), None),
                None => (None, Some("fuse-overlayfs is not installed".to_string())),
            },
            FsKind::FuseOverlayfs2 => match &config.fo2_bin {
                None => (
                    None,
                    Some("UFS_BENCH_FO2 not set (see benches/README.md)".to_string()),
                ),
                Some(bin) => match find_program(bin) {
                    Some(p) => (Some(p), None),
                    None => (None, Some(format!("{} not found", bin.display()))),
                },
            },
            FsKind::UfsNoPassthrough if !config.ufs_without_passthrough => {
                (None, Some("UFS_BENCH_NO_PASSTHROUGH=0".to_string()))
            }
            FsKind::Ufs | FsKind::UfsNoPassthrough => match find_program(&config.ufs_bin) {
                Some(p) => (Some(p), None),
                None => (
                    None,
                    Some(format!("{} not found", config.ufs_bin.display())),
                ),
            },
        };
        // A stand-in such as UFS_BENCH_BIN=fuse-overlayfs has no `mount` subcommand.
        let mount_subcommand = kind.is_ufs()
            && program.as_deref().and_then(Path::file_name) != Some(OsStr::new("fuse-overlayfs"));
        let extra_opts = match kind {
            FsKind::Ufs => config.ufs_opts.clone(),
            FsKind::UfsNoPassthrough => Some(
                config
                    .ufs_opts
                    .iter()
                    .map(String::as_str)
                    .chain(["passthrough=off"])
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        };
        let state = ds.path().join("state").join(kind.label());
        let merged = fs::canonicalize(ds.path())
            .unwrap_or_else(|_| ds.path().to_path_buf())
            .join(format!("merged-{}", kind.label()));
        Fs {
            kind,
            program,
            mount_subcommand,
            extra_opts,
            missing,
            state,
            merged,
        }
    }

    /// Mounts on a fresh, empty upper layer. Returns once the mount is in the mount table.
    fn mount(&self, ds: &Dataset) -> Result<Mount<'_>, String> {
        if find_mount(&self.merged)?.is_some() {
            return Err(format!(
                "{} is still mounted from an earlier run",
                self.merged.display()
            ));
        }
        // Never reuse an upper or work directory: every mount starts from the same state.
        if self.state.exists() {
            fs::remove_dir_all(&self.state)
                .map_err(|e| format!("clearing {}: {e}", self.state.display()))?;
        }
        let upper = self.state.join("upper");
        let work = self.state.join("work");
        for dir in [&upper, &work, &self.merged] {
            fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        }
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            ds.lowerdir(),
            upper.display(),
            work.display()
        );
        if let Some(extra) = &self.extra_opts {
            opts.push(',');
            opts.push_str(extra);
        }

        let Some(program) = &self.program else {
            let out = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&self.merged)
                .output()
                .map_err(|e| format!("cannot run mount(8): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mount -t overlay: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            return Ok(Mount {
                fs: self,
                conn: None,
                child: None,
                live: true,
            });
        };

        // The daemon's output goes to a file, not a pipe: a daemon that outlives us holding the
        // write end of a pipe nobody reads would block on a full pipe.
        static LOG_SEQ: AtomicU32 = AtomicU32::new(0);
        let log_path = ds.path().join("logs").join(format!(
            "{}-{}.log",
            self.kind.label(),
            LOG_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let log = fs::create_dir_all(ds.path().join("logs"))
            .and_then(|_| File::create(&log_path))
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
        let mut command = Command::new(program);
        if self.mount_subcommand {
            command.arg("mount");
        }
        command.arg("-o").arg(&opts).arg(&self.merged);
        // Own process group: a Ctrl-C at the terminal reaches only us, and we unmount cleanly.
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;

        let log_tail = || {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join(" / ")
        };
        // `ufs mount` and fuse-overlayfs return once the mount is live, after daemonizing; the
        // mount appears shortly before that, while the forking parent is still there. A run
        // starts only when that parent has gone, so it does not compete for the CPU. A daemon
        // that stays in the foreground is accepted after a grace period.
        const FOREGROUND_GRACE: Duration = Duration::from_secs(2);
        let mut mounted_at: Option<Instant> = None;
        let mut exited_at: Option<Instant> = None;
        let mut failure: Option<String> = None;
        let settled = wait_until(MOUNT_BOUND, || {
            if exited_at.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        failure = Some(format!(
                            "{} exited with {status}: {}",
                            program.display(),
                            log_tail()
                        ));
                        return Ok(true);
                    }
                    Ok(Some(_)) => exited_at = Some(Instant::now()),
                    Ok(None) => {}
                    Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
                }
            }
            if mounted_at.is_none() && find_mount(&self.merged)?.is_some() {
                mounted_at = Some(Instant::now());
            }
            Ok(match (mounted_at, exited_at) {
                (Some(_), Some(_)) => true,
                (Some(at), None) => at.elapsed() > FOREGROUND_GRACE,
                // Exit status 0 but no mount: allow a moment for stragglers, then it failed.
                (None, Some(at)) if at.elapsed() > Duration::from_secs(1) => {
                    failure = Some(format!(
                        "{} exited 0 but nothing is mounted: {}",
                        program.display(),
                        log_tail()
                    ));
                    true
                }
                _ => false,
            })
        })?;
        if let Some(message) = failure {
            return Err(message);
        }
        if !settled {
            // Ours to end: the child we just spawned, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not mounted after {MOUNT_BOUND:?}: {}", log_tail()));
        }
        let conn = find_mount(&self.merged)?.map(|m| m.minor);
        // Keep the child only if it is the daemon itself (foreground); else it is reaped.
        let child = if exited_at.is_none() {
            Some(child)
        } else {
            None
        };
        Ok(Mount {
            fs: self,
            conn,
            child,
            live: true,
        })
    }
}

/// A live mount. Dropping it unmounts (also when a workload panics), so a run never leaves
/// mounts behind; `unmount` does the same but reports the daemon's peak memory.
struct Mount<'a> {
    fs: &'a Fs,
    /// FUSE connection number (the minor of the mount's device): used to abort a hung daemon.
    conn: Option<u32>,
    /// The mount command, if it is itself the daemon (did not daemonize).
    child: Option<Child>,
    live: bool,
}

impl Mount<'_> {
    /// The process(es) serving this mount: found by the mount point in their command line,
    /// since a daemonized process is not our child.
    fn daemons(&self) -> Vec<u32> {
        if self.fs.kind == FsKind::Kernel {
            return Vec::new();
        }
        let mut pids = find_daemons(&self.fs.merged);
        pids.extend(self.child.as_ref().map(Child::id));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Unmounts and returns the daemon's peak resident memory (VmHWM, KiB) over the life of
    /// this mount; `None` for the kernel.
    fn unmount(mut self) -> Result<Option<u64>, String> {
        let peak = self.daemons().into_iter().filter_map(vm_hwm_kib).max();
        self.live = false;
        self.teardown()?;
        Ok(peak)
    }

    fn teardown(&mut self) -> Result<(), String> {
        let merged = &self.fs.merged;
        let daemons = self.daemons();
        if !unmount_command(self.fs.kind, merged) {
            return Err(format!("could not unmount {}", merged.display()));
        }
        if !wait_until(MOUNT_BOUND, || Ok(find_mount(merged)?.is_none()))? {
            return Err(format!(
                "{} still mounted after {MOUNT_BOUND:?}",
                merged.display()
            ));
        }
        // Let the daemon exit before the next mount, so it neither competes for the CPU nor is
        // mistaken for the next daemon.
        let gone = wait_until(MOUNT_BOUND, || {
            Ok(daemons.iter().all(|pid| !process_alive(*pid)))
        })?;
        if !gone {
            for pid in &daemons {
                eprintln!("warning: daemon {pid} did not exit after unmount; killing it");
                // SAFETY: kill has no memory preconditions; the pid is a daemon we started.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        Ok(())
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if self.live {
            self.live = false;
            if let Err(message) = self.teardown() {
                eprintln!("warning: {message}");
            }
        }
    }
}

/// Unmounts with the tool a user would use; falls back to a lazy unmount for a daemon that died.
fn unmount_command(kind: FsKind, merged: &Path) -> bool {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .arg(merged)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    match kind {
        FsKind::Kernel => run("umount", &[]) || run("umount", &["-l"]),
        _ => run("fusermount3", &["-u"]) || run("fusermount3", &["-u", "-z"]),
    }
}

struct MountEntry {
    minor: u32,
}

/// The top-most mount on `mountpoint`, from /proc/self/mountinfo.
fn find_mount(mountpoint: &Path) -> Result<Option<MountEntry>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading mountinfo: {e}"))?;
    let wanted = mountpoint.as_os_str().as_bytes();
    let mut found = None;
    for line in text.lines() {
        // Fields: id parent major:minor root mountpoint ...
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || unescape_mountinfo(fields[4]) != wanted {
            continue;
        }
        let minor = fields[2]
            .split(':')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        found = Some(MountEntry { minor }); // later lines are mounted on top of earlier ones
    }
    Ok(found)
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Calls `ready` until it returns true (-> Ok(true)) or `bound` passes (-> Ok(false)). Between
/// calls it waits in poll(2) on /proc/self/mountinfo, which wakes up as soon as the mount table
/// changes, so a mount or unmount is seen at once; the short poll timeout is for conditions that
/// are not mount events (a process exiting).
fn wait_until(
    bound: Duration,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<bool, String> {
    let mountinfo =
        File::open("/proc/self/mountinfo").map_err(|e| format!("opening mountinfo: {e}"))?;
    let deadline = Instant::now() + bound;
    loop {
        if ready()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: mountinfo.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, fd kept open by `mountinfo`.
        unsafe { libc::poll(&mut pfd, 1, 5) };
    }
}

/// Processes whose command line names the mount point: the daemon serving it. fusermount3 and
/// mount(8) can name it too (e.g. fusermount3's auto_unmount helper) and are not the daemon.
fn find_daemons(mountpoint: &Path) -> Vec<u32> {
    let needle = mountpoint.as_os_str().as_bytes();
    let me = std::process::id();
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid == me || !cmdline.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let name = Path::new(OsStr::from_bytes(argv0))
            .file_name()
            .unwrap_or_default()
            .as_bytes();
        if name.starts_with(b"fusermount") || name == b"mount" || name == b"umount" {
            continue;
        }
        pids.push(pid);
    }
    pids
}

fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// `VmHWM:  1234 kB` -> 1234.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmHWM:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A zombie has exited: daemonized processes are reaped by init, not by us.
fn process_alive(pid: u32) -> bool {
    proc_status_field(pid, "State:").is_some_and(|state| !state.starts_with('Z'))
}

/// Makes a hung FUSE daemon's pending and future requests fail with ENOTCONN, so a stuck
/// workload returns. Needs fusectl, which is mounted here if it is not yet.
fn abort_fuse_connection(conn: u32) {
    let connections = Path::new("/sys/fs/fuse/connections");
    if !connections.join(conn.to_string()).exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(connections)
            .status();
    }
    if let Err(e) = fs::write(connections.join(conn.to_string()).join("abort"), "1") {
        eprintln!("warning: cannot abort FUSE connection {conn}: {e}");
    }
}

/// `sync` first: drop_caches only drops clean pages, and the dataset or an earlier write
/// workload leaves dirty ones.
fn drop_caches() -> Result<(), String> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

// ------------------------------------------------------------------------------------------------
// Workloads
// ------------------------------------------------------------------------------------------------

/// Why a run failed: `short` goes into the table cell (`error: EXDEV`), `detail` into the notes.
struct Failure {
    short: String,
    detail: String,
}

/// Attaches the operation and path to an I/O error, keeping the errno for the table.
trait At<T> {
    fn at(self, op: &str, path: &Path) -> Result<T, Failure>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, op: &str, path: &Path) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            short: e
                .raw_os_error()
                .map(errno_name)
                .unwrap_or_else(|| format!("{:?}", e.kind())),
            detail: format!("{op} {}: {e}", path.display()),
        })
    }
}

fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ESTALE => "ESTALE",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

type SetupFn = fn(&Dataset, &Path) -> Result<(), Failure>;
/// Returns a count of what it did (entries, bytes, operations) for the sanity check.
type RunFn = fn(&Dataset, &Path) -> Result<u64, Failure>;

/// One thing to measure. To add a workload, add an entry to `workloads()`.
struct Workload {
    name: &'static str,
    /// One line for the report.
    about: &'static str,
    /// Changes the union: every measurement then gets a fresh upper layer and mount.
    mutates: bool,
    /// Untimed preparation on the fresh mount, before caches are dropped.
    setup_per_mount: SetupFn,
    /// The timed part; `merged` is the mount point.
    run: RunFn,
    /// What `run` must return on a correct file system, if it is known.
    expected: fn(&Dataset) -> Option<u64>,
    /// Report MiB/s of `expected` bytes next to the time.
    throughput: bool,
}

fn no_setup(_: &Dataset, _: &Path) -> Result<(), Failure> {
    Ok(())
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "walk-stat",
            about: "recursive walk, lstat of every entry (like `find -ls`)",
            mutates: false,
            setup_per_mount: no_setup,
            run: walk_stat,
            expected: |ds| Some(ds.entries),
            throughput: false,
        },
        Workload {
            name: "readdir",
            about: "list every directory, names only",
            mutates: false,
            setup_per_mount: no_setup,
            run: readdir_all,
            expected: |ds| Some(ds.entries),
            throughput: false,
        },
        Workload {
            name: "read-small",
            about: "read every small file fully",
            mutates: false,
            setup_per_mount: no_setup,
            run: read_small,
            expected: |ds| Some(ds.small_bytes),
            throughput: false,
        },
        Workload {
            name: "read-large",
            about: "sequential read of the large file, 1 MiB buffer",
            mutates: false,
            setup_per_mount: no_setup,
            run: read_large,
            expected: |ds| Some(ds.large_size),
            throughput: true,
        },
        Workload {
            name: "open-close",
            about: "open+close of existing files (path lookup)",
            mutates: false,
            setup_per_mount: no_setup,
            run: open_close,
            expected: |ds| Some(ds.opens as u64),
            throughput: false,
        },
        Workload {
            name: "create-write",
            about: "create+write 16 KiB files in existing lower directories",
            mutates: true,
            setup_per_mount: no_setup,
            run: create_write,
            expected: |ds| Some(ds.writes as u64),
            throughput: false,
        },
        Workload {
            name: "copy-up-large",
            about: "first write (4 KiB) to the large lower file: data copy-up",
            mutates: true,
            setup_per_mount: no_setup,
            run: copy_up_large,
            expected: |_| Some(1),
            throughput: false,
        },
        Workload {
            name: "chmod-large",
            about: "chmod of the large lower file: metadata copy-up",
            mutates: true,
            setup_per_mount: no_setup,
            run: chmod_large,
            expected: |_| Some(1),
            throughput: false,
        },
        Workload {
            name: "meta-large",
            about: "chown, utimes and setxattr of the large lower file: metadata copy-up",
            mutates: true,
            setup_per_mount: no_setup,
            run: meta_large,
            expected: |_| Some(3),
            throughput: false,
        },
        Workload {
            name: "trunc-large",
            about: "open(O_TRUNC) of the large lower file: no data needs copying",
            mutates: true,
            setup_per_mount: no_setup,
            run: trunc_large,
            expected: |_| Some(1),
            throughput: false,
        },
        Workload {
            name: "rename-dir",
            about: "rename a lower directory with many entries",
            mutates: true,
            setup_per_mount: no_setup,
            run: rename_dir,
            expected: |_| Some(1),
            throughput: false,
        },
        Workload {
            name: "ls-l",
            about: "recursive walk as `ls -lR` does it: lstat, and the SELinux label and access ACL of every entry",
            mutates: false,
            setup_per_mount: no_setup,
            run: ls_l,
            expected: |ds| Some(ds.entries),
            throughput: false,
        },
        Workload {
            name: "read-random",
            about: "random 4 KiB reads of the large lower file, from the first read on a fresh mount",
            mutates: false,
            setup_per_mount: no_setup,
            run: read_random,
            expected: |ds| Some(ds.opens as u64),
            throughput: false,
        },
        Workload {
            name: "write-fsync",
            about: "sequential write of a new file as large as the large file, then fsync",
            mutates: true,
            setup_per_mount: no_setup,
            run: write_fsync,
            expected: |ds| Some(ds.large_size),
            throughput: true,
        },
        Workload {
            name: "rm-rf",
            about: "`rm -rf` of a lower subtree (whiteouts for files and directories)",
            mutates: true,
            setup_per_mount: no_setup,
            run: rm_rf_lower,
            expected: |_| None,
            throughput: false,
        },
        Workload {
            name: "unlink",
            about: "delete every file of that directory (whiteouts)",
            mutates: true,
            setup_per_mount: no_setup,
            run: unlink_bulk,
            expected: |ds| Some(ds.bulk_files.len() as u64),
            throughput: false,
        },
        Workload {
            name: "untar",
            about: "extract-like: mkdir, create, write, chmod, set mtime",
            mutates: true,
            setup_per_mount: untar_setup,
            run: untar,
            expected: |ds| Some(ds.writes as u64),
            throughput: false,
        },
    ]
}

fn walk_stat(_ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let mut seen = 0;
    let mut stack = vec![merged.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at("opendir", &dir)? {
            let path = entry.at("readdir", &dir)?.path();
            let meta = fs::symlink_metadata(&path).at("lstat", &path)?;
            seen += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(seen)
}

/// What `ls -l` asks of each entry besides `lstat`: the SELinux label (`lgetxattr`) and the
/// access ACL (`getxattr` through the path, which for a symlink is its target's).
fn ls_l(_ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let mut seen = 0;
    let mut stack = vec![merged.to_path_buf()];
    let mut buf = [0u8; 256];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).at("opendir", &dir)? {
            let path = entry.at("readdir", &dir)?.path();
            let meta = fs::symlink_metadata(&path).at("lstat", &path)?;
            let c = CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
                .at("path", &path)?;
            // SAFETY: `c` and the names are NUL-terminated; `buf` is writable for its length.
            // The answers (mostly ENODATA) do not matter, only their cost.
            unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    c"security.selinux".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                );
                if !meta.file_type().is_symlink() {
                    libc::getxattr(
                        c.as_ptr(),
                        c"system.posix_acl_access".as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    );
                }
            }
            seen += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(seen)
}

fn read_random(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join(&ds.large);
    let file = File::open(&path).at("open", &path)?;
    let pages = (ds.large_size / 4096).max(1);
    let mut rng = Rng(7);
    let mut buf = [0u8; 4096];
    for _ in 0..ds.opens {
        let page = rng.below(pages as usize) as u64;
        file.read_exact_at(&mut buf, page * 4096)
            .at("pread", &path)?;
    }
    Ok(ds.opens as u64)
}

fn write_fsync(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join("written.dat");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .at("create", &path)?;
    let mut left = ds.large_size;
    while left > 0 {
        let n = left.min(ds.pool.len() as u64) as usize;
        file.write_all(&ds.pool[..n]).at("write", &path)?;
        left -= n as u64;
    }
    file.sync_all().at("fsync", &path)?;
    Ok(ds.large_size)
}

/// Removes the first top-level directory of the tree (as `rm -rf` does: depth first).
fn rm_rf_lower(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let top = ds
        .dirs
        .iter()
        .find(|d| d.components().count() == 1)
        .ok_or_else(|| io::Error::other("no top-level directory"))
        .at("find", merged)?;
    let path = merged.join(top);
    fs::remove_dir_all(&path).at("rm -rf", &path)?;
    Ok(1)
}

fn readdir_all(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let mut names = 0;
    for rel in &ds.dirs {
        let dir = merged.join(rel);
        for entry in fs::read_dir(&dir).at("opendir", &dir)? {
            std::hint::black_box(entry.at("readdir", &dir)?.file_name());
            names += 1;
        }
    }
    Ok(names)
}

/// Reads a file to its end with `buf`, returning the bytes read.
fn read_through(path: &Path, buf: &mut [u8]) -> Result<u64, Failure> {
    let mut file = File::open(path).at("open", path)?;
    let mut total = 0;
    loop {
        match file.read(buf).at("read", path)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn read_small(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 64 << 10];
    ds.files
        .iter()
        .map(|rel| read_through(&merged.join(rel), &mut buf))
        .sum()
}

fn read_large(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    read_through(&merged.join(&ds.large), &mut vec![0u8; 1 << 20])
}

fn open_close(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    for rel in ds.files.iter().cycle().take(ds.opens) {
        let path = merged.join(rel);
        drop(File::open(&path).at("open", &path)?);
    }
    Ok(ds.opens as u64)
}

fn create_write(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let data = &ds.pool[..16 << 10];
    // Spread over existing directories: each first create in one copies it up.
    for (i, rel) in ds.dirs.iter().cycle().take(ds.writes).enumerate() {
        let path = merged.join(rel).join(format!("new-{i:05}.dat"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("create", &path)?;
        file.write_all(data).at("write", &path)?;
    }
    Ok(ds.writes as u64)
}

fn copy_up_large(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join(&ds.large);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .at("open for writing", &path)?;
    file.write_all_at(&ds.pool[..4096], 0).at("write", &path)?;
    Ok(1)
}

fn chmod_large(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join(&ds.large);
    fs::set_permissions(&path, Permissions::from_mode(0o600)).at("chmod", &path)?;
    Ok(1)
}

fn meta_large(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join(&ds.large);
    std::os::unix::fs::chown(&path, Some(0), Some(0)).at("chown", &path)?;
    // Times set on a read-only handle: opening for writing would copy the data.
    File::open(&path)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)))
        .at("utimes", &path)?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .at("setxattr", &path)?;
    let value = b"1";
    // SAFETY: `c_path` and the name are NUL-terminated; `value` is readable for its length.
    let r = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"user.bench".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).at("setxattr", &path);
    }
    Ok(3)
}

fn trunc_large(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let path = merged.join(&ds.large);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .at("open(O_TRUNC)", &path)?;
    Ok(1)
}

fn rename_dir(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let from = merged.join(&ds.bulk);
    fs::rename(&from, merged.join("bulk-renamed")).at("rename", &from)?;
    Ok(1)
}

fn unlink_bulk(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    for rel in &ds.bulk_files {
        let path = merged.join(rel);
        fs::remove_file(&path).at("unlink", &path)?;
    }
    Ok(ds.bulk_files.len() as u64)
}

fn untar_setup(_ds: &Dataset, merged: &Path) -> Result<(), Failure> {
    let dest = merged.join("untar");
    fs::create_dir(&dest).at("mkdir", &dest)
}

fn untar(ds: &Dataset, merged: &Path) -> Result<u64, Failure> {
    let mut rng = Rng(42);
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..ds.writes {
        // 20 files per directory, 5 directories per package, like an archive's members.
        let dir = merged
            .join("untar")
            .join(format!("pkg{:03}", i / 100))
            .join(format!("lib{}", i / 20 % 5));
        if i % 20 == 0 {
            fs::create_dir_all(&dir).at("mkdir", &dir)?;
        }
        let path = dir.join(format!("member-{i:05}"));
        let size = rng.small_size();
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("create", &path)?;
        file.write_all(&ds.pool[..size]).at("write", &path)?;
        file.set_permissions(Permissions::from_mode(0o644))
            .at("fchmod", &path)?;
        file.set_modified(mtime).at("futimens", &path)?;
    }
    Ok(ds.writes as u64)
}

// ------------------------------------------------------------------------------------------------
// Measuring
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cache {
    Cold,
    Warm,
}

impl Cache {
    fn label(self) -> &'static str {
        match self {
            Cache::Cold => "cold",
            Cache::Warm => "warm",
        }
    }
}

/// The runs of one (workload, cache state, file system).
#[derive(Default)]
struct Cell {
    times: Vec<Duration>,
    /// Short error per failed run (`EXDEV`, `mount failed`).
    errors: Vec<String>,
    /// Explanations for the notes: error details, count mismatches.
    notes: Vec<String>,
}

#[derive(Default)]
struct Results {
    cells: BTreeMap<(usize, Cache, FsKind), Cell>,
    /// Peak daemon memory (KiB) over the mounts used for a workload.
    peak_kib: BTreeMap<(usize, FsKind), u64>,
}

impl Results {
    fn cell(&mut self, workload: usize, cache: Cache, kind: FsKind) -> &mut Cell {
        self.cells.entry((workload, cache, kind)).or_default()
    }

    fn record_peak(&mut self, workload: usize, kind: FsKind, kib: Option<u64>) {
        if let Some(kib) = kib {
            let peak = self.peak_kib.entry((workload, kind)).or_default();
            *peak = (*peak).max(kib);
        }
    }
}

/// Runs `w.run` once, timed. A watchdog aborts the FUSE connection if the run exceeds the
/// timeout, which makes the stuck system calls fail, so a hung daemon cannot hang the bench.
fn timed_run(
    w: &Workload,
    ds: &Dataset,
    mount: &Mount,
    timeout: Duration,
) -> Result<(Duration, u64), Failure> {
    let fired = AtomicBool::new(false);
    let (done, wait) = mpsc::channel::<()>();
    let outcome = std::thread::scope(|scope| {
        let fired = &fired;
        scope.spawn(move || {
            if wait.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                fired.store(true, Ordering::SeqCst);
                if let Some(conn) = mount.conn {
                    abort_fuse_connection(conn);
                }
            }
        });
        let start = Instant::now();
        let result = (w.run)(ds, &mount.fs.merged);
        let elapsed = start.elapsed();
        drop(done); // wakes the watchdog
        result.map(|count| (elapsed, count))
    });
    if fired.load(Ordering::SeqCst) {
        // Kernel overlayfs cannot be aborted; it ran to the end but is over the limit all the same.
        let what = if mount.conn.is_some() {
            "the FUSE connection was aborted"
        } else {
            "ran to the end"
        };
        return Err(Failure {
            short: "timeout".into(),
            detail: format!("took longer than {timeout:?} (UFS_BENCH_TIMEOUT); {what}"),
        });
    }
    outcome
}

/// Records one run's outcome in its cell and returns a short text for the progress line.
fn record(
    results: &mut Results,
    wi: usize,
    w: &Workload,
    ds: &Dataset,
    cache: Cache,
    mount: &Mount,
    outcome: Result<(Duration, u64), Failure>,
) -> String {
    let cell = results.cell(wi, cache, mount.fs.kind);
    match outcome {
        Ok((time, count)) => {
            cell.times.push(time);
            if let Some(expected) = (w.expected)(ds).filter(|e| *e != count) {
                let note = format!("saw {count}, expected {expected}");
                if !cell.notes.contains(&note) {
                    cell.notes.push(note);
                }
            }
            fmt_duration(time)
        }
        Err(failure) => {
            cell.errors.push(failure.short.clone());
            // Same text for every file system, so that one note serves all the cells it explains.
            let detail = failure
                .detail
                .replace(&*mount.fs.merged.to_string_lossy(), "MERGED");
            if !cell.notes.contains(&detail) {
                cell.notes.push(detail);
            }
            format!("error: {}", failure.short)
        }
    }
}

/// Gets a fresh mount for a workload, or records in the given cells why there is none. After a
/// failed mount the contestant is marked broken for the rest of the run: a mount failure does not
/// depend on the workload, and retrying would cost the mount bound every time.
fn mount_for<'a>(
    fs: &'a Fs,
    broken: &mut BTreeMap<FsKind, String>,
    ds: &Dataset,
    results: &mut Results,
    wi: usize,
    caches: &[Cache],
) -> Option<Mount<'a>> {
    let reason = match (fs.missing.as_deref(), broken.get(&fs.kind)) {
        (Some(missing), _) => missing.to_string(),
        (None, Some(reason)) => reason.clone(),
        (None, None) => match fs.mount(ds) {
            Ok(mount) => return Some(mount),
            Err(message) => {
                eprintln!("  {}: mount failed: {message}", fs.kind.label());
                let reason = format!("mount failed: {message}");
                broken.insert(fs.kind, reason.clone());
                reason
            }
        },
    };
    for cache in caches {
        let cell = results.cell(wi, *cache, fs.kind);
        cell.errors.push("mount failed".into());
        if !cell.notes.contains(&reason) {
            cell.notes.push(reason.clone());
        }
    }
    None
}

fn run(config: &Config) -> Result<(), String> {
    let started = Instant::now();
    let load_before = load_average();
    let selected: Vec<(usize, Workload)> = workloads()
        .into_iter()
        .enumerate()
        .filter(|(_, w)| config.only.is_empty() || config.only.iter().any(|n| n == w.name))
        .collect();

    eprintln!("building the dataset (scale {}) ...", config.scale);
    let ds = Dataset::build(config.scale)?;
    eprintln!(
        "dataset in {}: {} dirs, {} small files ({:.1} MiB), large file {} MiB, built in {:.1} s",
        ds.path().display(),
        ds.dirs.len(),
        ds.files.len(),
        ds.small_bytes as f64 / (1 << 20) as f64,
        ds.large_size >> 20,
        started.elapsed().as_secs_f64()
    );

    let contestants: Vec<Fs> = FsKind::ALL
        .iter()
        .map(|k| Fs::new(*k, config, &ds))
        .collect();
    let mut results = Results::default();
    let mut broken: BTreeMap<FsKind, String> = BTreeMap::new();

    'outer: for (wi, w) in &selected {
        for rep in 1..=config.reps {
            // Interleave the file systems within a repetition so that drift of the machine
            // (other load, disk state) spreads over all of them instead of favouring one.
            for fs in &contestants {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    eprintln!("interrupted: stopping and reporting what was measured");
                    break 'outer;
                }
                let kind = fs.kind;
                let mut progress = Vec::new();
                // Read-only: one mount; the cold run on it, then the warm run right after on
                // the same mount, caches as the cold run left them. Mutating: a run can only be
                // done once per upper layer, so each run gets its own fresh upper and mount;
                // warm then means the lower files are still cached from the cold run.
                let sessions: &[&[Cache]] = if w.mutates {
                    &[&[Cache::Cold], &[Cache::Warm]]
                } else {
                    &[&[Cache::Cold, Cache::Warm]]
                };
                for caches in sessions {
                    let Some(mount) = mount_for(fs, &mut broken, &ds, &mut results, *wi, caches)
                    else {
                        continue;
                    };
                    for (n, cache) in caches.iter().enumerate() {
                        let outcome = prepare(w, &ds, &mount, *cache, n == 0)
                            .and_then(|()| timed_run(w, &ds, &mount, config.timeout));
                        let text = record(&mut results, *wi, w, &ds, *cache, &mount, outcome);
                        progress.push(format!("{} {text}", cache.label()));
                    }
                    match mount.unmount() {
                        Ok(peak) => results.record_peak(*wi, kind, peak),
                        Err(message) => {
                            // Most likely still mounted: later mounts of it would fail anyway.
                            eprintln!("  {}: {message}", kind.label());
                            broken.insert(kind, format!("unmount failed: {message}"));
                        }
                    }
                }
                if !progress.is_empty() {
                    eprintln!(
                        "{:<14} rep {rep}/{}  {:<15} {}",
                        w.name,
                        config.reps,
                        kind.label(),
                        progress.join("  ")
                    );
                }
            }
        }
    }

    let memory = if INTERRUPTED.load(Ordering::SeqCst) {
        Vec::new()
    } else {
        contestants
            .iter()
            .filter(|fs| fs.kind != FsKind::Kernel && fs.missing.is_none())
            .filter_map(|fs| match memory_per_inode(fs, &ds) {
                Ok(m) => Some(m),
                Err(message) => {
                    eprintln!("  {}: memory per inode: {message}", fs.kind.label());
                    None
                }
            })
            .collect()
    };

    let elapsed = started.elapsed();
    let report = render_report(
        config,
        &ds,
        &contestants,
        &selected,
        &results,
        &memory,
        (elapsed, &load_before),
    );
    println!("{report}");
    let raw = render_raw(&selected, &results);
    let out_path = target_dir().join("bench-compare.md");
    match fs::write(&out_path, format!("{report}\n{raw}")) {
        Ok(()) => eprintln!("wrote {}", out_path.display()),
        Err(e) => eprintln!("warning: cannot write {}: {e}", out_path.display()),
    }
    cleanup(ds);
    Ok(())
}

/// Untimed steps before a run: the workload's setup, then the cache state.
/// `fresh_mount`: this is the first run on the mount, which is when setup belongs.
fn prepare(
    w: &Workload,
    ds: &Dataset,
    mount: &Mount,
    cache: Cache,
    fresh_mount: bool,
) -> Result<(), Failure> {
    if fresh_mount {
        (w.setup_per_mount)(ds, &mount.fs.merged)?;
    }
    let step = match cache {
        Cache::Cold => drop_caches(),
        // Still flush dirty data, so that writeback from an earlier run does not land in this
        // run's time.
        Cache::Warm => {
            // SAFETY: sync has no preconditions.
            unsafe { libc::sync() };
            Ok(())
        }
    };
    step.map_err(|detail| Failure {
        short: "drop_caches".into(),
        detail,
    })
}

/// Removes the dataset, unless something is still mounted inside it: removing through a live
/// mount would descend into it.
fn cleanup(ds: Dataset) {
    let root = ds.path().as_os_str().as_bytes().to_vec();
    let stuck = fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines().any(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|m| unescape_mountinfo(m).starts_with(&root))
            })
        })
        .unwrap_or(true);
    if stuck {
        let kept = ds.root.keep();
        eprintln!(
            "warning: mounts remain under {}; left it in place",
            kept.display()
        );
    }
}

/// `target/` of this build: the bench executable lives in `target/<profile>/deps/`, and cargo
/// marks the target directory with CACHEDIR.TAG. This also follows CARGO_TARGET_DIR.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

// ------------------------------------------------------------------------------------------------
// Report
// ------------------------------------------------------------------------------------------------

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
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

/// A cell's median, only if every run succeeded: a partial result would not be comparable.
fn cell_median(cell: Option<&Cell>) -> Option<Duration> {
    cell.filter(|c| c.errors.is_empty())
        .and_then(|c| median(&c.times))
}

/// Markdown table with padded columns, so it reads as well in a terminal as rendered.
fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .chain([header[col].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = line(header);
    out.push_str(&line(&rule));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn render_report(
    config: &Config,
    ds: &Dataset,
    contestants: &[Fs],
    selected: &[(usize, Workload)],
    results: &Results,
    memory: &[Memory],
    (elapsed, load_before): (Duration, &str),
) -> String {
    let mut out = String::from("# ufs vs kernel overlayfs vs fuse-overlayfs\n\n");
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // `--version` output, the line naming the program (fuse-overlayfs also prints the versions
    // of libfuse and fusermount3).
    let version = |program: &Path| {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let output = Command::new(program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok();
        let text = output
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
            .unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains(&name))
            .or_else(|| text.lines().next());
        line.map(|l| format!(" ({})", l.trim())).unwrap_or_default()
    };
    out += &format!(
        "- machine: Linux {}, {cpus} CPUs; load average before/after the run: {load_before} / {} \
         (other work on the machine makes the numbers noisy)\n",
        kernel.trim(),
        load_average()
    );
    for fs in contestants {
        let how = match (&fs.program, &fs.missing) {
            (_, Some(reason)) => format!("not measured: {reason}"),
            (None, _) => "`mount -t overlay` (default module options)".to_string(),
            (Some(program), _) => {
                let sub = if fs.mount_subcommand { " mount" } else { "" };
                let extra = fs
                    .extra_opts
                    .as_deref()
                    .map(|o| format!(",{o}"))
                    .unwrap_or_default();
                format!(
                    "`{}{sub} -o lowerdir=..,upperdir=..,workdir=..{extra} MERGED`{}",
                    program.display(),
                    version(program)
                )
            }
        };
        out += &format!("- {}: {how}\n", fs.kind.label());
    }
    out += &format!(
        "- dataset: 3 lower layers, {} directories (depth 4-5, overlapping across layers), {} small files \
         ({:.1} MiB), {} symlinks, {} files hidden by a copy in a higher layer, {} whiteouts, \
         {} files in one flat directory; one {} MiB file (real data); scale {}\n",
        ds.dirs.len(),
        ds.files.len(),
        ds.small_bytes as f64 / (1 << 20) as f64,
        ds.symlinks,
        ds.hidden,
        ds.whiteouts,
        ds.bulk_files.len(),
        ds.large_size >> 20,
        config.scale
    );
    out += &format!(
        "- method: median of {} runs; every mount on a fresh empty upper; cold = fresh mount, then \
         `sync; echo 3 > /proc/sys/vm/drop_caches`; warm = read workloads: run again right after \
         on the same mount, write workloads: fresh mount, no drop; total time {:.0} s\n",
        config.reps,
        elapsed.as_secs_f64()
    );
    if ds.on_tmpfs {
        out += "- WARNING: the dataset is on tmpfs, which drop_caches cannot evict: cold numbers are not cold\n";
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        out += "- INTERRUPTED: the table is incomplete\n";
    }
    if contestants
        .iter()
        .any(|f| f.kind.is_ufs() && f.program.is_some() && !f.mount_subcommand)
    {
        out += "- NOTE: the ufs column runs a stand-in (UFS_BENCH_BIN), not ufs\n";
    }

    // Times.
    let by_kind = |kind: FsKind| contestants.iter().find(|f| f.kind == kind);
    let mut notes: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for (wi, w) in selected {
        for cache in [Cache::Cold, Cache::Warm] {
            let mut row = vec![w.name.to_string(), cache.label().to_string()];
            let mut medians = BTreeMap::new();
            for kind in FsKind::ALL {
                let cell = results.cells.get(&(*wi, cache, kind));
                let text = match (by_kind(kind).and_then(|f| f.missing.as_deref()), cell) {
                    (Some(_), _) => "not installed".to_string(),
                    (None, None) => "not run".to_string(),
                    (None, Some(cell)) => {
                        let mut text = match (cell.errors.first(), cell_median(Some(cell))) {
                            (Some(error), _) if cell.times.is_empty() => format!("error: {error}"),
                            (Some(error), _) => format!(
                                "error: {error} ({} of {})",
                                cell.errors.len(),
                                cell.errors.len() + cell.times.len()
                            ),
                            (None, Some(m)) if w.throughput && m > Duration::ZERO => {
                                let mib = (w.expected)(ds).unwrap_or(0) as f64 / (1 << 20) as f64;
                                format!("{} ({:.0} MiB/s)", fmt_duration(m), mib / m.as_secs_f64())
                            }
                            (None, Some(m)) => fmt_duration(m),
                            (None, None) => "not run".to_string(),
                        };
                        if let Some(m) = cell_median(Some(cell)) {
                            medians.insert(kind, m);
                        }
                        if !cell.notes.is_empty() {
                            let refs: Vec<String> = cell
                                .notes
                                .iter()
                                .map(|note| {
                                    let index =
                                        notes.iter().position(|n| n == note).unwrap_or_else(|| {
                                            notes.push(note.clone());
                                            notes.len() - 1
                                        });
                                    (index + 1).to_string()
                                })
                                .collect();
                            text.push_str(&format!(" [{}]", refs.join(",")));
                        }
                        text
                    }
                };
                row.push(text);
            }
            let ratio = |a: FsKind, b: FsKind| match (medians.get(&a), medians.get(&b)) {
                (Some(a), Some(b)) if !b.is_zero() => {
                    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
                }
                _ => "-".to_string(),
            };
            for (a, b) in RATIOS {
                row.push(ratio(a, b));
            }
            rows.push(row);
        }
    }
    let header: Vec<String> = ["workload", "cache"]
        .into_iter()
        .map(String::from)
        .chain(FsKind::ALL.iter().map(|k| k.label().to_string()))
        .chain(
            RATIOS
                .iter()
                .map(|(a, b)| format!("{}/{}", a.label(), b.label())),
        )
        .collect();
    out += "\n## Times (median; ratios > 1 mean the first is slower)\n\n";
    out += &markdown_table(&header, &rows);

    // Memory.
    let fuse_kinds = FsKind::FUSE;
    let mib = |kib: Option<&u64>| {
        kib.map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .unwrap_or_else(|| "-".to_string())
    };
    let mut rows: Vec<Vec<String>> = selected
        .iter()
        .map(|(wi, w)| {
            let mut row = vec![w.name.to_string()];
            row.extend(
                fuse_kinds
                    .iter()
                    .map(|k| mib(results.peak_kib.get(&(*wi, *k)))),
            );
            row
        })
        .collect();
    let mut overall = vec!["**all (peak)**".to_string()];
    for kind in fuse_kinds {
        let peak = results
            .peak_kib
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, v)| *v)
            .max();
        overall.push(mib(peak.as_ref()));
    }
    rows.push(overall);
    let header: Vec<String> = ["workload"]
        .into_iter()
        .map(String::from)
        .chain(fuse_kinds.iter().map(|k| k.label().to_string()))
        .collect();
    out += "\n## Peak daemon memory (VmHWM of the daemon, per mount, max over the mounts of a workload)\n\n";
    out += &markdown_table(&header, &rows);

    if !memory.is_empty() {
        out += "\n## Daemon memory per cached inode (VmRSS: idle mount, after an `lstat` of every \
                entry, after `drop_caches` made the kernel forget them)\n\n";
        let header: Vec<String> = [
            "daemon",
            "entries",
            "idle",
            "walked",
            "per cached inode",
            "after forget",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rows: Vec<Vec<String>> = memory
            .iter()
            .map(|m| {
                vec![
                    m.kind.label().to_string(),
                    m.entries.to_string(),
                    format!("{:.1} MiB", m.idle_kib as f64 / 1024.0),
                    format!("{:.1} MiB", m.walked_kib as f64 / 1024.0),
                    format!("{} B", m.per_inode()),
                    format!("{:.1} MiB", m.forgotten_kib as f64 / 1024.0),
                ]
            })
            .collect();
        out += &markdown_table(&header, &rows);
    }

    out += "\n## Workloads\n\n";
    for (_, w) in selected {
        out += &format!("- `{}`: {}\n", w.name, w.about);
    }
    if !notes.is_empty() {
        out += "\n## Notes\n\n";
        for (i, note) in notes.iter().enumerate() {
            out += &format!("{}. {note}\n", i + 1);
        }
    }
    out
}

/// Daemon memory around one walk of the whole tree (see [`memory_per_inode`]).
struct Memory {
    kind: FsKind,
    /// Entries walked: each is one inode the kernel holds a lookup on.
    entries: u64,
    idle_kib: u64,
    walked_kib: u64,
    forgotten_kib: u64,
}

impl Memory {
    /// Bytes of daemon memory the walk added, per entry walked.
    fn per_inode(&self) -> u64 {
        (self.walked_kib.saturating_sub(self.idle_kib) * 1024)
            .checked_div(self.entries)
            .unwrap_or(0)
    }
}

/// Mounts `fs`, reads the daemon's resident memory idle, after an `lstat` of every entry of the
/// merged tree (the kernel then holds one node per entry), and after `drop_caches` (the kernel
/// forgets them all, and the daemon should give their memory back).
fn memory_per_inode(fs: &Fs, ds: &Dataset) -> Result<Memory, String> {
    let mount = fs.mount(ds)?;
    let rss = || -> Result<u64, String> {
        mount
            .daemons()
            .into_iter()
            .filter_map(|pid| {
                proc_status_field(pid, "VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .ok_or_else(|| "no daemon found".to_string())
    };
    let idle_kib = rss()?;
    let entries = walk_stat(ds, &fs.merged).map_err(|f| f.detail)?;
    let walked_kib = rss()?;
    drop_caches()?;
    // The kernel queues the forgets as it drops the inodes; the daemon serves them after.
    // Wait (bounded) until the size stops moving.
    let mut last = rss()?;
    let mut steady = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while steady < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = rss()?;
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    mount.unmount()?;
    Ok(Memory {
        kind: fs.kind,
        entries,
        idle_kib,
        walked_kib,
        forgotten_kib: last,
    })
}

/// The 1-minute load average, to tell a quiet machine from a busy one in the report.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".to_string())
}

/// Every individual time, for judging the spread behind a median.
fn render_raw(selected: &[(usize, Workload)], results: &Results) -> String {
    let mut rows = Vec::new();
    for (wi, w) in selected {
        for cache in [Cache::Cold, Cache::Warm] {
            for kind in FsKind::ALL {
                if let Some(cell) = results.cells.get(&(*wi, cache, kind)) {
                    let mut runs: Vec<String> = cell
                        .times
                        .iter()
                        .map(|t| format!("{:.4}", t.as_secs_f64()))
                        .collect();
                    runs.extend(cell.errors.iter().map(|e| format!("error: {e}")));
                    rows.push(vec![
                        w.name.to_string(),
                        cache.label().to_string(),
                        kind.label().to_string(),
                        runs.join(", "),
                    ]);
                }
            }
        }
    }
    let header: Vec<String> = ["workload", "cache", "fs", "runs (s)"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    format!("## Raw runs\n\n{}", markdown_table(&header, &rows))
}
