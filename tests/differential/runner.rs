//! Running a case on both mounts, comparing, shrinking a failure and reporting it.
//!
//! Layout of one case under a fresh temp dir: `k/` holds the kernel's copy of the layers
//! (kernel marker formats only), `u/` the ufs copy (mixed formats: see
//! [`KnownDifference::OciMarkers`]), each with `l/0..` (lowers, top first), `up`, `wk` and the
//! mount point `m`; after a rotation also the uppers and workdirs `upN`, `wkN` that followed
//! (the old ones are then the top lowers); `x/m` is the mount point of the cross-mount checks
//! (the kernel over ufs's upper and workdir, and read-only over ufs's upper as the top lower).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::common::{
    CMD_TIMEOUT, Flavor, KernelOverlay, Layer, MOUNT_TIMEOUT, Node, UfsMount, is_mounted,
    materialize_layer, mkdirs, mount_at, panic_message, run_bounded, tempdir, ufs_side_flavor,
    wait_mounted, wait_until,
};
use crate::dinofs::{DinoMode, DinoMount};
use crate::generate::{Case, Config};
use crate::ops::{self, Op, Outcome};
use crate::tree::{self, Tree};

/// The documented deliberate differences (`docs/DIFFERENCES.md`) that the harness knows by
/// name. Each one is kept out of the comparison at one place, which names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownDifference {
    /// "Defaults": ufs turns `redirect_dir`, `index` and `metacopy` on by default, the kernel
    /// (here) off. Both mounts of a case get the same explicit options ([`Config::options`]).
    Defaults,
    /// "OCI whiteouts and opaque markers": ufs reads `.wh.NAME` and `.wh..wh..opq`; the kernel
    /// reads neither. Only the ufs copy of the lowers uses them;
    /// the kernel copy (and every upper layer) gets 0/0 devices and `trusted.overlay.opaque`.
    OciMarkers,
    /// "Orphan whiteouts": the kernel lists a whiteout in a directory that exists in one layer
    /// only. The generator puts whiteouts only in directories that merge with a layer below.
    OrphanWhiteouts,
    /// "Names starting with `.wh.`": ufs refuses to create them (`EINVAL`). Operations never
    /// use such names.
    WhiteoutNamesRefused,
    /// "Renaming one name of a lower hard link over another (`index=off`)": the kernel's VFS
    /// never sends ufs such a rename (both names are one FUSE inode), while the kernel overlay
    /// copies up and renames. The runner skips (on both mounts) a rename or exchange whose two
    /// names show one inode number on the kernel mount, without the index.
    RenameOverOwnLink,
}

impl KnownDifference {
    pub const ALL: [KnownDifference; 5] = [
        KnownDifference::Defaults,
        KnownDifference::RenameOverOwnLink,
        KnownDifference::OciMarkers,
        KnownDifference::OrphanWhiteouts,
        KnownDifference::WhiteoutNamesRefused,
    ];

    /// The heading of its entry in `docs/DIFFERENCES.md`.
    pub fn entry(self) -> &'static str {
        match self {
            KnownDifference::Defaults => "## Defaults",
            KnownDifference::OciMarkers => "OCI whiteouts and opaque markers",
            KnownDifference::OrphanWhiteouts => "Orphan whiteouts",
            KnownDifference::WhiteoutNamesRefused => "Names starting with `.wh.`",
            KnownDifference::RenameOverOwnLink => {
                "Renaming one name of a lower hard link over another"
            }
        }
    }
}

/// Options of a kernel mount: the layers (relative to `base`, the mount data is limited to a
/// page) and the case's features, the same as ufs gets, spelled out even where they are the
/// kernel's defaults ([`KnownDifference::Defaults`]). `xino=off` pins the last default (all
/// layers are on one filesystem, where it changes nothing). `upper` is the upper and workdir,
/// or `None` for a read-only stack: see [`read_only_features`].
pub fn kernel_options(
    config: Config,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    base: &Path,
) -> String {
    let rel = |p: &Path| {
        p.strip_prefix(base)
            .expect("under base")
            .display()
            .to_string()
    };
    let lower: Vec<String> = lowers.iter().map(|p| rel(p)).collect();
    match upper {
        Some((upper, work)) => format!(
            "lowerdir={},upperdir={},workdir={},{},xino=off",
            lower.join(":"),
            rel(upper),
            rel(work),
            config.options()
        ),
        None => format!(
            "lowerdir={}{},xino=off",
            lower.join(":"),
            read_only_features(config)
        ),
    }
}

/// The kernel's features for a read-only stack whose top lower is a former upper: what makes it
/// read the records the upper got, and its defaults where the case has a feature off.
///
/// This kernel (6.18) accepts every combination without an upper, but: `index=on` is "useless
/// in a non-upper mount" (ignored, with a message: the index lives in a workdir, and there is
/// none), so it is not passed; `redirect_dir=` shows as `on` for anything but `nofollow`, and
/// what matters is that redirects are followed (`follow`); `metacopy=on` makes it follow
/// metadata-only copies in the former upper down to their data (without it it refuses them).
/// Its defaults (module parameters here: `redirect_always_follow=Y`, `metacopy=N`) follow
/// redirects too, which changes nothing where ufs wrote none.
pub fn read_only_features(config: Config) -> String {
    let mut s = String::new();
    if config.redirect_dir {
        s.push_str(",redirect_dir=follow");
    }
    if config.metacopy {
        s.push_str(",metacopy=on");
    }
    s
}

/// The directories of one side (kernel or ufs). `lowers`, `upper` and `work` change with
/// [`Bench::rotate`]: the upper is pushed onto the lowers and a new upper and workdir start.
pub struct Side {
    pub base: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
    /// The passthrough serving the bottom lower ([`Case::dino`]), mounted at `f` over the
    /// directory `l/N`; `lowers` names `f`. Unmounted last ([`Bench`]'s `Drop`).
    dino: Option<DinoMount>,
}

impl Side {
    fn create(
        base: &Path,
        stack_lowers: &[Layer],
        upper: Option<&Layer>,
        flavor: Flavor,
        seed: u64,
        dino: Option<DinoMode>,
    ) -> Side {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xd1ff_5eed);
        let mut lowers: Vec<PathBuf> = stack_lowers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = base.join("l").join(i.to_string());
                materialize_layer(l, &d, flavor, &mut rng);
                d
            })
            .collect();
        let dino = dino.and_then(|mode| {
            let bottom = lowers.last_mut()?;
            let f = mkdirs(&base.join("f"));
            let m = DinoMount::serve(bottom, &f, mode)
                .unwrap_or_else(|e| panic!("serving {} at {}: {e}", bottom.display(), f.display()));
            *bottom = f;
            Some(m)
        });
        let up = base.join("up");
        // The upper always gets the kernel's formats: the cross-mount check hands ufs's upper
        // to the kernel ([`KnownDifference::OciMarkers`]).
        materialize_layer(
            upper.unwrap_or(&Layer::default()),
            &up,
            Flavor::Kernel,
            &mut rng,
        );
        Side {
            base: base.to_path_buf(),
            lowers,
            upper: up,
            work: mkdirs(&base.join("wk")),
            mnt: mkdirs(&base.join("m")),
            dino,
        }
    }

    /// The upper becomes the top lower; a new empty upper `upN` and workdir `wkN` start.
    fn rotate(&mut self, generation: usize) {
        let upper = mkdirs(&self.base.join(format!("up{generation}")));
        let old = std::mem::replace(&mut self.upper, upper);
        self.lowers.insert(0, old);
        self.work = mkdirs(&self.base.join(format!("wk{generation}")));
    }

    /// `lowerdir=` of the read-only stack: the upper, then the lowers.
    fn read_only_lowers(&self) -> Vec<PathBuf> {
        let mut v = vec![self.upper.clone()];
        v.extend(self.lowers.iter().cloned());
        v
    }
}

/// Both copies of a case's layers on disk, and the live mounts.
pub struct Bench {
    pub base: tempfile::TempDir,
    pub k: Side,
    pub u: Side,
    /// The marker formats of `u`'s generated lowers (the last ones of `u.lowers`; former
    /// uppers, on top of them, are always in the kernel's formats).
    pub ufs_flavor: Flavor,
    pub config: Config,
    /// How many rotations happened: the first `rotations` lowers of each side are former
    /// uppers of that side.
    pub rotations: usize,
    /// ufs's mounts add `passthrough=off` when this is false ([`Case::passthrough`]).
    pub passthrough: bool,
    kernel: Option<KernelOverlay>,
    ufs: Option<UfsMount>,
}

impl Bench {
    pub fn new(case: &Case) -> Bench {
        let base = tempdir();
        let b = base.path();
        let st = &case.stack;
        // The kernel's side keeps its bottom lower a plain directory: over a FUSE lower the
        // kernel overlay is no oracle for what the harness compares. It does mount it (with one
        // or more other lowers), but a FUSE superblock has a null uuid and no persistent file
        // handles across the harness's remounts, so: `index=on` becomes `index=off` ("null uuid
        // detected in lower fs"); with its layers on two filesystems and `xino=off`, two names
        // of one file can show two inode numbers (a lower file copied up by `link`: the old
        // name keeps the lower's number, the new one shows the upper's), so its hard-link
        // groups break; and after a read-only remount over its former upper, `lstat` of copied
        // names fails with `ESTALE`. `UFS_DIFF_DINO_KERNEL=1` serves its side through the
        // passthrough too, to look at that.
        let kernel_dino = case
            .dino
            .filter(|_| std::env::var_os("UFS_DIFF_DINO_KERNEL").is_some_and(|v| v == "1"));
        let k = Side::create(
            &b.join("k"),
            &st.lowers,
            st.upper.as_ref(),
            Flavor::Kernel,
            case.seed,
            kernel_dino,
        );
        // With `index=on` the upper's records (`overlay.origin`, index entries) name lower
        // inodes by file handle, so the cross-mount check must give the kernel ufs's own lowers,
        // which must then be in the kernel's formats.
        let ufs_flavor = if case.config.index {
            Flavor::Kernel
        } else {
            ufs_side_flavor()
        };
        let u = Side::create(
            &b.join("u"),
            &st.lowers,
            st.upper.as_ref(),
            ufs_flavor,
            case.seed,
            case.dino,
        );
        Bench {
            base,
            k,
            u,
            ufs_flavor,
            config: case.config,
            rotations: 0,
            passthrough: case.passthrough,
            kernel: None,
            ufs: None,
        }
    }

    /// The option ufs's mounts add for [`Bench::passthrough`].
    fn passthrough_option(&self) -> &'static str {
        if self.passthrough {
            ""
        } else {
            ",passthrough=off"
        }
    }

    /// Mounts both sides writable over their current layers.
    pub fn mount(&mut self) {
        let b = self.base.path();
        let kopts = kernel_options(
            self.config,
            &self.k.lowers,
            Some((&self.k.upper, &self.k.work)),
            b,
        );
        self.kernel = Some(mount_kernel(&kopts, &self.k.mnt, b));
        let uopts = format!(
            "lowerdir={},upperdir={},workdir={},{}{}",
            ufs_lowerdir(&self.u.lowers),
            self.u.upper.display(),
            self.u.work.display(),
            self.config.options(),
            self.passthrough_option()
        );
        self.ufs = Some(UfsMount::mount(&uopts, &self.u.mnt));
    }

    /// Mounts both sides read-only with their uppers as the top lowers ([`Op::RemountReadOnly`]).
    /// ufs gets the case's features (with `index=on` it has no workdir to look in either).
    pub fn mount_read_only(&mut self) {
        let b = self.base.path();
        let kopts = kernel_options(self.config, &self.k.read_only_lowers(), None, b);
        self.kernel = Some(mount_kernel(&kopts, &self.k.mnt, b));
        let uopts = format!(
            "lowerdir={},{}{}",
            ufs_lowerdir(&self.u.read_only_lowers()),
            self.config.options(),
            self.passthrough_option()
        );
        self.ufs = Some(UfsMount::mount(&uopts, &self.u.mnt));
    }

    /// [`Op::Rotate`] on both sides: unmount, push each upper into its lowers, mount again.
    pub fn rotate(&mut self) {
        self.unmount();
        self.rotations += 1;
        self.k.rotate(self.rotations);
        self.u.rotate(self.rotations);
        self.mount();
    }

    pub fn unmount(&mut self) {
        self.unmount_ufs();
        if let Some(k) = self.kernel.take() {
            unmount_patiently(&k.mnt);
        }
    }

    pub fn unmount_ufs(&mut self) {
        if let Some(m) = self.ufs.take() {
            unmount_patiently(&m.mnt);
        }
    }

    /// The lowers of the cross-mount checks: ufs's former uppers, then ufs's generated lowers
    /// when the kernel can read them (origin records name them by handle), else the kernel's
    /// copy of them ([`KnownDifference::OciMarkers`]).
    fn cross_lowers(&self) -> Vec<PathBuf> {
        let generated = if self.ufs_flavor == Flavor::Kernel {
            &self.u.lowers
        } else {
            &self.k.lowers
        };
        let mut v = self.u.lowers[..self.rotations].to_vec();
        v.extend(generated[self.rotations..].iter().cloned());
        v
    }

    /// The cross-mount check: the kernel over the upper and the workdir ufs wrote (which holds
    /// the index: DIFFERENCES.md, "Defaults", the kernel reads ufs's records on the same
    /// workdir) and [`Bench::cross_lowers`]. ufs must be unmounted.
    pub fn mount_cross(&self) -> KernelOverlay {
        let b = self.base.path();
        let mnt = mkdirs(&b.join("x/m"));
        let opts = kernel_options(
            self.config,
            &self.cross_lowers(),
            Some((&self.u.upper, &self.u.work)),
            b,
        );
        mount_kernel(&opts, &mnt, b)
    }

    /// The read-only cross-mount check: the kernel, read-only, over ufs's upper as the top lower
    /// and [`Bench::cross_lowers`], so it reads ufs's records from a lower layer.
    pub fn mount_cross_read_only(&self) -> KernelOverlay {
        let b = self.base.path();
        let mnt = mkdirs(&b.join("x/m"));
        let mut lowers = vec![self.u.upper.clone()];
        lowers.extend(self.cross_lowers());
        mount_kernel(&kernel_options(self.config, &lowers, None, b), &mnt, b)
    }
}

/// How long a kernel mount is retried while it answers `EBUSY`.
const IN_USE_WAIT: Duration = Duration::from_secs(90);

/// `mount -t overlay` ([`KernelOverlay::mount`]), retried for a bounded time while the kernel
/// answers `EBUSY` ("upperdir is in-use as upperdir/workdir of another mount", with
/// `index=on`). That happens when another process on the machine made a mount namespace (as
/// `unshare --mount` does) while the previous mount over the same upper was live: the copy in
/// that namespace keeps its superblock, and so the upper's in-use mark, until the namespace
/// ends, although the mount is gone here. Panics (with the command's output) on anything else.
fn mount_kernel(opts: &str, mnt: &Path, cwd: &Path) -> KernelOverlay {
    let deadline = Instant::now() + IN_USE_WAIT;
    let mut noted = false;
    loop {
        let run = run_bounded(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", opts])
                .arg(mnt)
                .current_dir(cwd),
            CMD_TIMEOUT,
        );
        if run.success() {
            break;
        }
        let busy = run.stderr.contains("busy") || run.stderr.contains("already mounted");
        assert!(busy, "kernel overlay mount -o {opts} failed:\n{run}");
        assert!(
            Instant::now() < deadline,
            "kernel overlay mount -o {opts} still busy after {}s:\n{run}",
            IN_USE_WAIT.as_secs()
        );
        if !noted {
            eprintln!(
                "note: kernel overlay mount -o {opts} answers EBUSY (an upper still in use in \
                 another mount namespace?); retrying for up to {}s",
                IN_USE_WAIT.as_secs()
            );
            noted = true;
        }
        // A bounded poll: the other namespace goes away on its own time.
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_mounted(mnt),
        "kernel overlay at {} not in mountinfo",
        mnt.display()
    );
    KernelOverlay {
        mnt: mnt.to_path_buf(),
    }
}

/// `lowerdir=` for ufs: absolute paths, top first.
fn ufs_lowerdir(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl Drop for Bench {
    /// The mounts go first: the temp dir can only be removed once nothing is mounted in it
    /// (fields drop in declaration order, `base` first).
    fn drop(&mut self) {
        drop(self.ufs.take());
        drop(self.kernel.take());
        // The passthroughs under them last.
        drop(self.u.dino.take());
        drop(self.k.dino.take());
    }
}

/// Unmounts `mnt` (FUSE or kernel overlay) and waits until it is gone; panics if it stays.
///
/// A plain unmount can fail with `EBUSY` for a moment when another worker thread forks (to run
/// `mount`, `ufs` or `fusermount3`) while this thread holds a descriptor inside the mount: the
/// child has a copy of it until its `exec` closes it. So a failed unmount is retried, a bounded
/// number of times, before it counts as a failure. Never lazy: a lazily detached overlay would
/// keep its upper directory busy for the next mount.
fn unmount_patiently(mnt: &Path) {
    let fuse = mount_at(mnt).is_some_and(|m| m.fstype.starts_with("fuse"));
    let mut last = None;
    let gone = wait_until(MOUNT_TIMEOUT, || {
        if !is_mounted(mnt) {
            return true;
        }
        let mut cmd = if fuse {
            let mut c = Command::new("fusermount3");
            c.arg("-u");
            c
        } else {
            Command::new("umount")
        };
        let run = run_bounded(cmd.arg(mnt), CMD_TIMEOUT);
        let ok = run.success();
        last = Some(run);
        ok && !is_mounted(mnt)
    });
    if !gone {
        panic!(
            "cannot unmount {}: {}",
            mnt.display(),
            last.map_or("still mounted".to_string(), |r| r.to_string())
        );
    }
}

/// Why a run failed: where (`pos`, an index into the run's list of operations, or the list's
/// length for the checks at the end), what kind of check (`stage`), and the details.
#[derive(Clone, Debug)]
pub struct Failure {
    pub pos: usize,
    pub stage: String,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub ops: usize,
    pub skipped: usize,
    /// The case had its bottom lower through the lying passthrough ([`Case::dino`]).
    pub dino: bool,
}

/// The lines of a tree difference, at most 12 of them, under a count.
fn format_diff(d: &[String]) -> String {
    let mut msg = format!("{} difference(s):\n", d.len());
    for line in d.iter().take(12) {
        let _ = writeln!(msg, "    {line}");
    }
    if d.len() > 12 {
        let _ = writeln!(msg, "    ... and {} more", d.len() - 12);
    }
    msg
}

/// The differences between the kernel's tree `k` and ufs's `u`, with ufs's own inconsistencies.
fn kernel_vs_ufs(k: &Tree, u: &Tree) -> Vec<String> {
    let mut d = tree::diff("kernel", k, "ufs", u);
    d.extend(
        u.ino_problems
            .iter()
            .map(|p| format!("ufs (SEMANTICS.md, readdir): {p}")),
    );
    d
}

fn snapshot_of(mnt: &Path, label: &str) -> Result<Tree, String> {
    tree::snapshot(mnt).map_err(|e| format!("snapshot of {label}: {e}"))
}

/// Compares the kernel's tree at `k` with ufs's at `u`; returns ufs's.
fn compare_trees(k: &Path, u: &Path) -> Result<Tree, String> {
    let ta = snapshot_of(k, "kernel")?;
    let tb = snapshot_of(u, "ufs")?;
    let d = kernel_vs_ufs(&ta, &tb);
    if d.is_empty() {
        Ok(tb)
    } else {
        Err(format_diff(&d))
    }
}

/// Compares ufs's tree `ufs_tree` with the kernel's at `mnt` (the kernel over ufs's layers).
fn compare_cross(ufs_tree: &Tree, mnt: &Path, label: &str) -> Result<(), String> {
    let xt = snapshot_of(mnt, label)?;
    let d = tree::diff("ufs", ufs_tree, label, &xt);
    if d.is_empty() {
        Ok(())
    } else {
        Err(format_diff(&d))
    }
}

impl Bench {
    /// Runs a lifecycle operation ([`Op::is_lifecycle`]) on both sides with its checks; an
    /// error is the stage and the details of the first check that failed.
    pub fn lifecycle(&mut self, op: &Op) -> Result<(), (&'static str, String)> {
        let (kmnt, umnt) = (self.k.mnt.clone(), self.u.mnt.clone());
        match op {
            Op::Remount => {
                self.unmount();
                self.mount();
                compare_trees(&kmnt, &umnt).map_err(|d| ("tree after remount", d))?;
            }
            Op::Rotate => {
                self.rotate();
                compare_trees(&kmnt, &umnt).map_err(|d| ("tree after rotate", d))?;
            }
            Op::RemountReadOnly => {
                self.unmount();
                self.mount_read_only();
                let stage = "tree read-only";
                let kt = snapshot_of(&kmnt, "kernel").map_err(|d| (stage, d))?;
                let ut = snapshot_of(&umnt, "ufs").map_err(|d| (stage, d))?;
                self.unmount_ufs();
                // The kernel over ufs's layers too: whether it agrees with the kernel over its
                // own layers tells a record (or copy) ufs wrote differently from one ufs reads
                // differently.
                let label = "kernel-ro-over-ufs-layers";
                let xt = {
                    let cross = self.mount_cross_read_only();
                    snapshot_of(&cross.mnt, label)
                };
                let xt = xt.map_err(|d| ("cross-mount read-only", d))?;
                let d_ku = kernel_vs_ufs(&kt, &ut);
                let d_kx = tree::diff("kernel", &kt, label, &xt);
                let also = |what: &str, d: &[String]| {
                    if d.is_empty() {
                        format!("    ({what}: the same)\n")
                    } else {
                        format!(
                            "    ({what}: {})\n",
                            format_diff(d).trim_end().replace("\n    ", "\n        ")
                        )
                    }
                };
                // The layers ufs wrote, read by the kernel, show another tree than the kernel's
                // own layers: ufs wrote something else (a record, a copy) than the kernel did.
                if !d_kx.is_empty() {
                    let mut detail = format_diff(&d_kx);
                    detail.push_str(&also("ufs over its layers against the kernel", &d_ku));
                    return Err(("read-only layers", detail));
                }
                // ufs reads its layers differently from the kernel.
                if !d_ku.is_empty() {
                    let mut detail = format_diff(&d_ku);
                    detail.push_str("    (the kernel over ufs's layers shows the kernel's tree)\n");
                    return Err((stage, detail));
                }
                let dx = tree::diff("ufs", &ut, label, &xt);
                if !dx.is_empty() {
                    return Err(("cross-mount read-only", format_diff(&dx)));
                }
                self.unmount();
                self.mount();
                compare_trees(&kmnt, &umnt).map_err(|d| ("tree after read-only remount", d))?;
            }
            other => unreachable!("{other} is not a lifecycle operation"),
        }
        Ok(())
    }
}

/// The guard for [`KnownDifference::RenameOverOwnLink`]: without the index, a rename or
/// exchange between two names that show one inode number on the kernel mount.
fn known_difference(op: &Op, bench: &Bench) -> Option<KnownDifference> {
    let Op::Rename { from, to, .. } = op else {
        return None;
    };
    let ino = |p: &str| {
        ops::parent_of(&bench.k.mnt, p)
            .and_then(|d| ops::lstat_at(&d.fd, &d.name))
            .map(|st| (st.st_dev, st.st_ino))
    };
    match (ino(from), ino(to)) {
        (Ok(a), Ok(b)) if !bench.config.index && a == b && from != to => {
            Some(KnownDifference::RenameOverOwnLink)
        }
        _ => None,
    }
}

/// Runs the operations `picks` (indices into `case.ops`, in order) on fresh mounts and checks
/// everything; `verbose` prints every operation with both outcomes.
pub fn run_case(case: &Case, picks: &[usize], verbose: bool) -> Result<Stats, Failure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_inner(case, picks, verbose)
    })) {
        Ok(r) => r,
        Err(e) => Err(Failure {
            pos: picks.len(),
            stage: "harness".into(),
            detail: format!(
                "panic (a mount or unmount failed?): {}",
                panic_message(e.as_ref())
            ),
        }),
    }
}

fn run_inner(case: &Case, picks: &[usize], verbose: bool) -> Result<Stats, Failure> {
    let mut bench = Bench::new(case);
    bench.mount();
    let mut stats = Stats {
        dino: case.dino.is_some(),
        ..Stats::default()
    };
    let (kmnt, umnt) = (bench.k.mnt.clone(), bench.u.mnt.clone());
    for (pos, &i) in picks.iter().enumerate() {
        let op = &case.ops[i];
        if op.is_lifecycle() {
            if verbose {
                println!("#{i:<3} {op}");
            }
            bench.lifecycle(op).map_err(|(stage, detail)| Failure {
                pos,
                stage: stage.into(),
                detail: format!("after #{i} {op}: {detail}"),
            })?;
            stats.ops += 1;
            continue;
        }
        if let Op::Forget { pin } = op {
            ops::forget(&[&kmnt, &umnt], pin).map_err(|e| Failure {
                pos,
                stage: "harness".into(),
                detail: format!("#{i} {op}: {e}"),
            })?;
            stats.ops += 1;
            if verbose {
                println!("#{i:<3} {op}");
            }
            continue;
        }
        let (k, u, ino_problems) = match known_difference(op, &bench) {
            Some(kd) => (Outcome::Skipped(kd), Outcome::Skipped(kd), Vec::new()),
            None => {
                // The kernel's d_ino is not held against it: see `tree::Tree::ino_problems`.
                let (k, _) = ops::run(&kmnt, op);
                let (u, ino_problems) = ops::run(&umnt, op);
                (k, u, ino_problems)
            }
        };
        stats.ops += 1;
        if matches!(k, Outcome::Skipped(_)) {
            stats.skipped += 1;
        }
        if verbose {
            println!("#{i:<3} {op}\n       kernel: {k:?}");
            if u != k {
                println!("       ufs:    {u:?}   <-- differs");
            }
        }
        if k != u {
            return Err(Failure {
                pos,
                stage: format!("op {}", op.kind()),
                detail: format!("#{i} {op}\n    kernel: {k:?}\n    ufs:    {u:?}"),
            });
        }
        if !ino_problems.is_empty() {
            return Err(Failure {
                pos,
                stage: "readdir d_ino".into(),
                detail: format!("#{i} {op}\n    ufs (SEMANTICS.md, readdir): {ino_problems:?}"),
            });
        }
    }
    let end = picks.len();
    let ufs_tree = compare_trees(&kmnt, &umnt).map_err(|detail| Failure {
        pos: end,
        stage: "tree at end".into(),
        detail,
    })?;
    bench.unmount_ufs();
    let cross = bench.mount_cross();
    compare_cross(&ufs_tree, &cross.mnt, "kernel-over-ufs-upper").map_err(|detail| Failure {
        pos: end,
        stage: "cross-mount".into(),
        detail,
    })?;
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Shrinking and reporting
// ---------------------------------------------------------------------------------------------

/// Most replays one shrink may spend (`UFS_DIFF_SHRINK_BUDGET` overrides).
const SHRINK_BUDGET: usize = 150;

/// The minimal failing list of operations: the shortest prefix that still fails at the same
/// stage, then single earlier operations deleted while it still does. Returns the picks and the
/// failure they produce.
pub fn shrink(case: &Case, picks: &[usize], first: &Failure) -> (Vec<usize>, Failure) {
    let budget = std::env::var("UFS_DIFF_SHRINK_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHRINK_BUDGET);
    let budget = std::cell::Cell::new(budget);
    let attempt = |p: &[usize]| -> Option<Failure> {
        if budget.get() == 0 {
            return None;
        }
        budget.set(budget.get() - 1);
        // Only the same kind of failure counts, so that shrinking cannot slide from one bug
        // to another that the longer sequence also hits.
        run_case(case, p, false)
            .err()
            .filter(|f| f.stage == first.stage)
    };
    let last = first.pos.min(picks.len().saturating_sub(1));
    let mut best: Vec<usize> = picks[..=last].to_vec();
    let mut best_f = first.clone();
    for len in 1..=last {
        if let Some(f) = attempt(&picks[..len]) {
            best = picks[..len].to_vec();
            best_f = f;
            break;
        }
    }
    loop {
        let mut changed = false;
        let mut j = best.len().saturating_sub(1);
        while j > 0 {
            j -= 1;
            let mut t = best.clone();
            t.remove(j);
            if let Some(f) = attempt(&t) {
                if f.pos + 1 < t.len() {
                    t.truncate(f.pos + 1);
                }
                best = t;
                best_f = f;
                changed = true;
                j = j.min(best.len().saturating_sub(1));
            }
        }
        if !changed || budget.get() == 0 {
            break;
        }
    }
    (best, best_f)
}

/// The command that replays `picks` of the case `seed`.
pub fn replay_command(seed: u64, picks: &[usize]) -> String {
    let ops = picks.last().map_or(0, |l| l + 1);
    let drop: Vec<String> = (0..ops)
        .filter(|i| !picks.contains(i))
        .map(|i| i.to_string())
        .collect();
    let mut s = String::new();
    for var in [
        "UFS_DIFF_CONFIG",
        "UFS_DIFF_DINO",
        "UFS_DIFF_DINO_KERNEL",
        "UFS_DIFF_PASSTHROUGH",
    ] {
        if let Ok(v) = std::env::var(var) {
            let _ = write!(s, "{var}={v} ");
        }
    }
    let _ = write!(s, "UFS_DIFF_SEED={seed} UFS_DIFF_OPS={ops}");
    if !drop.is_empty() {
        let _ = write!(s, " UFS_DIFF_DROP={}", drop.join(","));
    }
    s.push_str(" cargo test --release --test differential -- --nocapture");
    s
}

/// The picks of a replay: the first `ops` operations without `drop`.
pub fn replay_picks(case: &Case, ops: Option<usize>, drop: &[usize]) -> Vec<usize> {
    let n = ops.unwrap_or(case.ops.len()).min(case.ops.len());
    (0..n).filter(|i| !drop.contains(i)).collect()
}

/// The report of a failing case: first failure, minimal replay, and the command.
pub fn report(
    case: &Case,
    picks: &[usize],
    first: &Failure,
    shrunk: Option<(&[usize], &Failure)>,
) -> String {
    let mut s = format!(
        "=== DIFFERENTIAL FAILURE seed={} ({} ops, {}{}) ===\nfirst failure ({}, at op {} of the run):\n  {}\n",
        case.seed,
        case.ops.len(),
        case.config.options(),
        dino_note(case),
        first.stage,
        first.pos,
        first.detail.trim_end().replace('\n', "\n  ")
    );
    match shrunk {
        Some((min, f)) => {
            let _ = writeln!(s, "minimal replay ({} of {} ops):", min.len(), picks.len());
            for &i in min {
                let _ = writeln!(s, "  #{i:<3} {}", case.ops[i]);
            }
            let _ = writeln!(
                s,
                "its failure ({}):\n  {}",
                f.stage,
                f.detail.trim_end().replace('\n', "\n  ")
            );
            let _ = writeln!(s, "replay: {}", replay_command(case.seed, min));
        }
        None => {
            let _ = writeln!(
                s,
                "(not shrunk) replay: {}",
                replay_command(case.seed, picks)
            );
        }
    }
    s
}

/// What a case's bottom lower is served through, when it is not the directory itself.
fn dino_note(case: &Case) -> String {
    match case.dino {
        Some(m) => format!(
            "; ufs's bottom lower through dinofs, d_ino {}",
            match m {
                DinoMode::Same => "the same for every entry",
                DinoMode::Shifted => "of another entry",
            }
        ),
        None => String::new(),
    }
}

/// A readable listing of the layers of a case (for replays).
pub fn describe_stack(case: &Case) -> String {
    let mut s = format!(
        "options: {}{}{}\n",
        case.config.options(),
        if case.passthrough {
            ""
        } else {
            ",passthrough=off (ufs)"
        },
        dino_note(case)
    );
    let mut layers: Vec<(String, &Layer)> = Vec::new();
    if let Some(u) = &case.stack.upper {
        layers.push(("upper".into(), u));
    }
    for (i, l) in case.stack.lowers.iter().enumerate() {
        layers.push((format!("lower {i}"), l));
    }
    if case.stack.upper.is_none() {
        let _ = writeln!(s, "upper: (empty)");
    }
    for (name, l) in layers {
        let _ = writeln!(s, "{name}:");
        describe_entries(&l.entries, "", &mut s);
    }
    s
}

fn describe_entries(entries: &std::collections::BTreeMap<String, Node>, rel: &str, s: &mut String) {
    for (name, node) in entries {
        let p = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let _ = match node {
            Node::File { meta, content } => writeln!(
                s,
                "  /{p}: file {:04o} {}:{} {}B{}",
                meta.mode,
                meta.uid,
                meta.gid,
                content.len(),
                if meta.xattrs.is_empty() {
                    ""
                } else {
                    " +xattrs"
                }
            ),
            Node::Dir { meta, opaque, .. } => writeln!(
                s,
                "  /{p}/: dir {:04o} {}:{}{}",
                meta.mode,
                meta.uid,
                meta.gid,
                if *opaque { " OPAQUE" } else { "" }
            ),
            Node::Symlink { target, .. } => writeln!(s, "  /{p}: symlink -> {target:?}"),
            Node::Fifo { .. } => writeln!(s, "  /{p}: fifo"),
            Node::HardLink { target } => writeln!(s, "  /{p}: hard link of /{target}"),
            Node::Whiteout => writeln!(s, "  /{p}: WHITEOUT"),
        };
        if let Node::Dir { children, .. } = node {
            describe_entries(children, &p, s);
        }
    }
}
