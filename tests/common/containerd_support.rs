//! A private containerd for the containerd tier (`tests/containerd.rs`) and its benchmark
//! (`benches/containerd.rs`): a `ufs snapshotter` and a containerd started from a config of
//! their own, every directory and socket of both under one temporary directory, and the OCI
//! image archives they import, written here from a busybox-static root file system (offline,
//! no registry, no other image tool).
//!
//! Self-contained (no `tests/common/mod.rs`), so that the benchmark can include it too.
//!
//! [`Ctrd`] is a guard: dropping it (also on a failure) kills the shims, containerd and the
//! snapshotter that belong to it and waits for them, unmounts (lazily, deepest first) whatever
//! is still mounted below its directory, and only then removes the directory
//! (`remove_dir_all` does not follow symlinks; with a mount left, the directory stays).
//!
//! The only things outside the directory: containerd 1.6 puts its shims' sockets in
//! `/run/containerd/s/` (a fixed path in 1.6; the names are hashes of our own socket path, so
//! they cannot collide with a system containerd's), and the cgroups of the containers (named
//! after the namespace and the container).

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The namespace every command uses.
pub const NS: &str = "ufs-test";

/// Bound for one `ctr` command (an import of the many-file image takes a few seconds here).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// Bound for a socket to appear, or a daemon to stop.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// Result of a bounded command. `status` is `None` when it was killed at the time limit.
#[derive(Debug)]
pub struct Out {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes; returns the last result.
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` with stdin from /dev/null and its output into anonymous files (not pipes: a
/// daemon that keeps an inherited stdout open must not make us wait for its exit).
pub fn run(cmd: &mut Command, timeout: Duration) -> Out {
    let files = (tempfile::tempfile(), tempfile::tempfile());
    let (Ok(mut out), Ok(mut err)) = files else {
        return failed("no temporary file for the output");
    };
    let (Ok(o), Ok(e)) = (out.try_clone(), err.try_clone()) else {
        return failed("cannot duplicate a descriptor");
    };
    cmd.stdin(Stdio::null()).stdout(o).stderr(e);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(&format!("spawn {cmd:?}: {e}")),
    };
    let mut status = None;
    poll(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        // Killed at the bound; the kill fails only if it exited meanwhile, and wait reaps it.
        let _ = child.kill();
        let _ = child.wait();
    }
    let read = |f: &mut fs::File| {
        let mut b = Vec::new();
        // A failed read shows as missing output in the failure message.
        let _ = f.rewind().and_then(|_| f.read_to_end(&mut b));
        String::from_utf8_lossy(&b).into_owned()
    };
    let mut stderr = read(&mut err);
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?}: {cmd:?})"));
    }
    Out {
        status,
        stdout: read(&mut out),
        stderr,
    }
}

fn failed(why: &str) -> Out {
    Out {
        status: None,
        stdout: String::new(),
        stderr: why.to_string(),
    }
}

pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Why containerd tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
        "mount.fuse3",
        "fusermount3",
        "mount",
        "tar",
        "sha256sum",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "no {tool} in PATH (Debian packages containerd, runc, fuse3)"
            ));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (Debian package busybox-static)".into());
    }
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fss.lines().any(|l| l.ends_with("\toverlay")) {
        return Some("kernel overlay not in /proc/filesystems".into());
    }
    None
}

/// A containerd and a ufs snapshotter of our own, stopped and removed on drop.
pub struct Ctrd {
    dir: PathBuf,
    containerd: Option<Child>,
    snapshotter: Option<Child>,
    /// `PATH` for containerd and for the mounts the test makes: the ufs binary's directory first
    /// (`mount.fuse3` runs `ufs` from `PATH`).
    path_env: String,
}

impl Ctrd {
    /// Starts both daemons under a fresh temporary directory; `Err` says what failed.
    pub fn start(ufs: &Path) -> Result<Ctrd, String> {
        let dir = tempfile::Builder::new()
            .prefix("ufs-ctrd-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        let bin_dir = ufs.parent().ok_or("ufs binary without a directory")?;
        let mut c = Ctrd {
            dir,
            containerd: None,
            snapshotter: None,
            path_env: format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                bin_dir.display()
            ),
        };
        for sub in [
            "root", "state", "fifo", "runc", "plugins", "opt", "mnt", "ufs-root",
        ] {
            fs::create_dir_all(c.path(sub)).map_err(|e| format!("mkdir {sub}: {e}"))?;
        }
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
plugin_dir = "{plugins}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{grpc}"
[ttrpc]
  address = "{grpc}.ttrpc"
[debug]
  address = "{debug}"
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{runc}"

[proxy_plugins.ufs]
  type = "snapshot"
  address = "{ufs_sock}"
"#,
            root = c.path("root").display(),
            state = c.path("state").display(),
            plugins = c.path("plugins").display(),
            grpc = c.grpc().display(),
            debug = c.path("debug.sock").display(),
            opt = c.path("opt").display(),
            runc = c.path("runc").display(),
            ufs_sock = c.ufs_sock().display(),
        );
        fs::write(c.path("config.toml"), config).map_err(|e| format!("config: {e}"))?;

        let dir = c.dir.clone();
        let log =
            |name: &str| fs::File::create(dir.join(name)).map_err(|e| format!("log {name}: {e}"));
        let snap = Command::new(ufs)
            .arg("snapshotter")
            .arg("--root")
            .arg(c.path("ufs-root"))
            .arg("--address")
            .arg(c.ufs_sock())
            .env("PATH", &c.path_env)
            .stdin(Stdio::null())
            .stdout(log("ufs-snapshotter.log")?)
            .stderr(log("ufs-snapshotter.log")?)
            .spawn()
            .map_err(|e| format!("spawn ufs snapshotter: {e}"))?;
        c.snapshotter = Some(snap);
        if !poll(DAEMON_TIMEOUT, || c.ufs_sock().exists()) {
            return Err(format!(
                "ufs snapshotter socket did not appear; its log:\n{}",
                c.log("ufs-snapshotter.log")
            ));
        }
        let ctrd = Command::new("containerd")
            .arg("--config")
            .arg(c.path("config.toml"))
            .env("PATH", &c.path_env)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log("containerd.log")?)
            .stderr(log("containerd.log")?)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        c.containerd = Some(ctrd);
        let up = poll(DAEMON_TIMEOUT, || {
            c.grpc().exists() && c.ctr(&["version"]).success()
        });
        if !up {
            return Err(format!(
                "containerd did not answer; its log:\n{}",
                c.log("containerd.log")
            ));
        }
        Ok(c)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn grpc(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    pub fn ufs_sock(&self) -> PathBuf {
        self.path("ufs.sock")
    }

    /// `ROOT/snapshots` of the ufs snapshotter.
    pub fn ufs_snapshots(&self) -> PathBuf {
        self.path("ufs-root/snapshots")
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The `PATH` the daemons run with.
    pub fn path_env(&self) -> &str {
        &self.path_env
    }

    /// `ctr` against our containerd, in namespace [`NS`].
    pub fn ctr_cmd(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.env("PATH", &self.path_env)
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .arg("--address")
            .arg(self.grpc())
            .arg("--namespace")
            .arg(NS);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        run(self.ctr_cmd().args(args), CTR_TIMEOUT)
    }

    /// `ctr ARGS`, its stdout, or everything (with the daemons' logs' tails) as the error.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.ctr(args);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "ctr {} failed:\n{out}\n--- ufs snapshotter log (tail) ---\n{}",
                args.join(" "),
                tail(&self.log("ufs-snapshotter.log"), 30)
            ))
        }
    }

    /// `ctr run --rm` of `cmd` in a container on `image`, with the FIFOs in our directory and
    /// runc's state under it.
    pub fn run_rm(
        &self,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> Result<String, String> {
        let fifo = self.path("fifo");
        let runc = self.path("runc");
        let mut args = vec![
            "run",
            "--rm",
            "--snapshotter",
            snapshotter,
            "--fifo-dir",
            path_str(&fifo),
            "--runc-root",
            path_str(&runc),
            image,
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    /// `ctr run --rm --rootfs DIR`: a container on a directory the test mounted itself (with
    /// no image config, so no `PATH` from an image: give programs by absolute path).
    pub fn run_rootfs(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Result<String, String> {
        let fifo = self.path("fifo");
        let runc = self.path("runc");
        let mut args = vec![
            "run",
            "--rm",
            "--fifo-dir",
            path_str(&fifo),
            "--runc-root",
            path_str(&runc),
            "--rootfs",
            path_str(rootfs),
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)
    }

    /// Mounts snapshot `key` of `snapshotter` at `target` as containerd mounts what `ctr
    /// snapshots mounts` prints (`mount -t TYPE SOURCE TARGET -o OPTIONS`): `mount(8)` for a
    /// kernel type, and for `fuse3.NAME` `mount.fuse3 SOURCE TARGET -o OPTIONS -t NAME`, as
    /// containerd runs it (`mount -t fuse3.NAME` itself would not work: mount.fuse3 strips only
    /// a `fuse.` prefix and would run a program named `fuse3.NAME`). Returns the printed line.
    pub fn mount_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        target: &Path,
    ) -> Result<String, String> {
        fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
        let line = self.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "mounts",
            path_str(target),
            key,
        ])?;
        let line = line.trim().to_string();
        let words: Vec<&str> = line.split(' ').collect();
        let ["mount", "-t", fstype, source, tgt, "-o", options] = words[..] else {
            return Err(format!("unexpected mount line {line:?}"));
        };
        if tgt != path_str(target) {
            return Err(format!("mount line for another target: {line:?}"));
        }
        let mut cmd = match fstype.strip_prefix("fuse3.") {
            Some(program) => {
                let mut c = Command::new("mount.fuse3");
                c.args([source, tgt, "-o", options, "-t", program]);
                c
            }
            // containerd turns `bind` into MS_BIND; mount(8) takes it from `-o rbind`.
            None if fstype == "bind" => {
                let mut c = Command::new("mount");
                c.args(["-o", options, source, tgt]);
                c
            }
            None => {
                let mut c = Command::new("mount");
                c.args(["-t", fstype, source, tgt, "-o", options]);
                c
            }
        };
        let out = run(cmd.env("PATH", &self.path_env), CTR_TIMEOUT);
        if !out.success() {
            return Err(format!("mounting {key} ({line}): {out}"));
        }
        Ok(line)
    }

    /// Unmounts `target` (a FUSE mount through fusermount3, as containerd does).
    pub fn unmount(&self, target: &Path) -> Result<(), String> {
        let fuse = mounts_under(target)
            .first()
            .is_some_and(|(_, t)| t.starts_with("fuse"));
        let out = if fuse {
            run(
                Command::new("fusermount3").arg("-u").arg(target),
                CTR_TIMEOUT,
            )
        } else {
            run(Command::new("umount").arg(target), CTR_TIMEOUT)
        };
        if out.success() {
            Ok(())
        } else {
            Err(format!("unmounting {}: {out}", target.display()))
        }
    }

    fn stop(child: &mut Option<Child>) {
        let Some(mut c) = child.take() else { return };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        if !poll(DAEMON_TIMEOUT, || c.try_wait().ok().flatten().is_some()) {
            // Still running after the bound: SIGKILL, which cannot be refused.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ctrd {
    fn drop(&mut self) {
        // Shims (and the containers under them) outlive containerd; they name our socket.
        for pid in pids_with_arg(&self.grpc()) {
            // SAFETY: kill has no memory-safety preconditions; a stale pid yields ESRCH.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        Ctrd::stop(&mut self.containerd);
        Ctrd::stop(&mut self.snapshotter);
        let mut left = mounts_under(&self.dir);
        left.sort_by(|a, b| b.0.cmp(&a.0));
        for (m, _) in &left {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: c is a NUL-terminated path that outlives the call.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
        if mounts_under(&self.dir).is_empty() {
            // Nothing is mounted below any more, so this removes only our own files.
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("leaving {} (mounts remain below it)", self.dir.display());
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Mount points (and their types) at or below `dir`, from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|w| *w == "-") else {
            continue;
        };
        let (Some(mp), Some(fstype)) = (f.get(4), f.get(dash + 1)) else {
            continue;
        };
        // mountinfo escapes space, tab, newline and backslash as octal.
        let mp = mp
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\");
        let mp = PathBuf::from(mp);
        if mp.starts_with(dir) {
            out.push((mp, fstype.to_string()));
        }
    }
    out
}

/// Pids (other than ours) with an argument containing `needle`.
pub fn pids_with_arg(needle: &Path) -> Vec<u32> {
    let me = std::process::id();
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if pid != me
            && cmdline
                .split(|b| *b == 0)
                .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
        {
            out.push(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// One layer's contents, as a directory to tar (whiteouts are `.wh.NAME` files and
/// `.wh..wh..opq`, as in an image layer).
pub type LayerFill = Box<dyn Fn(&Path) -> Result<(), String>>;

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Writes `path` (parents created) with `content` and mode `mode`.
pub fn put(root: &Path, path: &str, content: &str, mode: u32) -> Result<(), String> {
    let p = root.join(path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(io_err(path))?;
    }
    fs::write(&p, content).map_err(io_err(path))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Creates directory `path` (parents too) with mode `mode`.
pub fn put_dir(root: &Path, path: &str, mode: u32) -> Result<(), String> {
    let p = root.join(path);
    fs::create_dir_all(&p).map_err(io_err(path))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// The busybox-static base: `/bin/busybox` with its applets as symlinks, and the directories a
/// container's mounts go on.
pub fn busybox_rootfs(root: &Path) -> Result<(), String> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run", "root"] {
        put_dir(root, d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(io_err("copy busybox"))?;
    let list = run(Command::new("/bin/busybox").arg("--list"), CTR_TIMEOUT);
    if !list.success() {
        return Err(format!("busybox --list failed:\n{list}"));
    }
    for applet in list
        .stdout
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .map_err(io_err(applet))?;
    }
    put(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    put(root, "etc/group", "root:x:0:\n", 0o644)
}

fn sha256(p: &Path) -> Result<String, String> {
    let out = run(Command::new("sha256sum").arg(p), CTR_TIMEOUT);
    let hex = out
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if out.success() && hex.len() == 64 {
        Ok(hex)
    } else {
        Err(format!("sha256sum {}: {out}", p.display()))
    }
}

/// `sha256:HEX` and the size of `p`, moved into `blobs/sha256/HEX` of `layout`.
fn add_blob(layout: &Path, p: &Path) -> Result<(String, u64), String> {
    let hex = sha256(p)?;
    let size = fs::metadata(p).map_err(io_err("blob size"))?.len();
    fs::rename(p, layout.join("blobs/sha256").join(&hex)).map_err(io_err("blob"))?;
    Ok((format!("sha256:{hex}"), size))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Writes an OCI image archive at `tar` named `name` (`docker.io/library/x:tag` form) whose
/// layers are the directories `fills` make, bottom first; `work` is a scratch directory.
pub fn oci_archive(work: &Path, name: &str, fills: &[LayerFill], tar: &Path) -> Result<(), String> {
    let layout = work.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).map_err(io_err("layout"))?;
    let mut layers = Vec::new();
    for (i, fill) in fills.iter().enumerate() {
        let dir = work.join(format!("layer{i}"));
        fs::create_dir_all(&dir).map_err(io_err("layer dir"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err("layer dir"))?;
        fill(&dir)?;
        let layer_tar = work.join(format!("layer{i}.tar"));
        let out = run(
            Command::new("tar")
                .arg("-C")
                .arg(&dir)
                .args([
                    "--sort=name",
                    "--numeric-owner",
                    "--owner=0",
                    "--group=0",
                    "-cf",
                ])
                .arg(&layer_tar)
                .arg("."),
            CTR_TIMEOUT,
        );
        if !out.success() {
            return Err(format!("tar of layer {i}: {out}"));
        }
        // Uncompressed layers: the digest is also the diff id.
        layers.push(add_blob(&layout, &layer_tar)?);
    }
    let arch = go_arch();
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| format!("\"{d}\"")).collect();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_path = work.join("config.json");
    fs::write(&config_path, config).map_err(io_err("config"))?;
    let (config_digest, config_size) = add_blob(&layout, &config_path)?;
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|(d, s)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#)
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{}]}}"#,
        layer_descs.join(",")
    );
    let manifest_path = work.join("manifest.json");
    fs::write(&manifest_path, manifest).map_err(io_err("manifest"))?;
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest_path)?;
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"platform":{{"architecture":"{arch}","os":"linux"}},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#
    );
    fs::write(layout.join("index.json"), index).map_err(io_err("index"))?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io_err("oci-layout"))?;
    let out = run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
            .arg(tar)
            .args(["oci-layout", "index.json", "blobs"]),
        CTR_TIMEOUT,
    );
    if !out.success() {
        return Err(format!("tar of the image: {out}"));
    }
    fs::remove_dir_all(work.join("layout")).map_err(io_err("cleanup"))?;
    for i in 0..fills.len() {
        fs::remove_dir_all(work.join(format!("layer{i}"))).map_err(io_err("cleanup"))?;
    }
    Ok(())
}
