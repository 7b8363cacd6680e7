//! Private docker daemons for the docker tier (`tests/containers_docker.rs`) and its benchmark
//! (`benches/docker.rs`): one `dockerd` (20.10, Debian's `docker.io`) per storage driver under
//! test, each with its own containerd, data root, exec root, socket, pid file and daemon
//! configuration inside one temporary directory, and the client `/usr/bin/docker` (the one that
//! matches the daemon) pointed at it.
//!
//! - [`Driver::Ufs`]: `--storage-driver fuse-overlayfs` with `PATH` starting with a directory
//!   holding `fuse-overlayfs -> ufs`: docker's fuse-overlayfs driver runs the program of that
//!   name from `PATH`, from its layer store directory, as `fuse-overlayfs -o
//!   lowerdir=...,upperdir=...,workdir=... MERGED`, and unmounts with `fusermount3 -u`.
//! - [`Driver::FuseOverlayfs`]: the same driver with Debian's `/usr/bin/fuse-overlayfs` (1.10).
//! - [`Driver::Overlay2`]: docker's native `overlay2` driver on the kernel's overlayfs.
//!
//! dockerd starts a containerd of its own only when the system's socket
//! (`/run/containerd/containerd.sock`) does not exist, and uses the system's otherwise; so the
//! guard always starts its own containerd (a private configuration, its sockets, root and state
//! in the temporary directory) and hands it to dockerd with `--containerd`. `--config-file`
//! names an empty configuration so that `/etc/docker/daemon.json` is never read.
//!
//! [`Daemon`]'s `Drop` removes the containers, stops dockerd and then containerd (`SIGTERM`, a
//! bounded wait, `SIGKILL`), unmounts whatever is still mounted below the directory (deepest
//! first, lazily when needed), kills what is left of the processes it started (shims, mount
//! daemons: anything whose command line names the directory), and only then removes the
//! directory.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// The docker client that matches the daemon (a newer client may be first in `PATH`).
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's fuse-overlayfs, the reference.
pub const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";
/// Bound for one docker command (a build of a few steps takes a few seconds here).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long dockerd (or containerd) may take to come up, or to stop.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// docker's fuse-overlayfs driver running ufs as `fuse-overlayfs`.
    Ufs,
    /// docker's fuse-overlayfs driver running Debian's fuse-overlayfs.
    FuseOverlayfs,
    /// docker's overlay2 driver (kernel overlayfs).
    Overlay2,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Ufs => "ufs",
            Driver::FuseOverlayfs => "fuse-overlayfs",
            Driver::Overlay2 => "overlay2",
        }
    }

    /// dockerd's `--storage-driver`.
    pub fn storage_driver(self) -> &'static str {
        match self {
            Driver::Ufs | Driver::FuseOverlayfs => "fuse-overlayfs",
            Driver::Overlay2 => "overlay2",
        }
    }

    /// The directory below the data root that holds the layers.
    pub fn store_dir(self) -> &'static str {
        self.storage_driver()
    }

    /// The file system type of a container's root file system under this driver.
    pub fn fstype(self) -> &'static str {
        match self {
            Driver::Ufs => "fuse.ufs",
            Driver::FuseOverlayfs => "fuse.fuse-overlayfs",
            Driver::Overlay2 => "overlay",
        }
    }

    /// The program dockerd finds as `fuse-overlayfs`, if this driver uses one.
    pub fn mount_program(self) -> Option<PathBuf> {
        match self {
            Driver::Ufs => Some(ufs_bin()),
            Driver::FuseOverlayfs => Some(PathBuf::from(FUSE_OVERLAYFS)),
            Driver::Overlay2 => None,
        }
    }
}

/// Why the docker tier cannot run here at all, if it cannot.
pub fn docker_skip_reason() -> Option<String> {
    if let Some(reason) = skip_reason() {
        return Some(reason);
    }
    for (tool, package) in [
        ("/usr/sbin/dockerd", "docker.io"),
        (DOCKER, "docker.io"),
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/bin/busybox", "busybox-static"),
    ] {
        if !Path::new(tool).is_file() {
            return Some(format!("no {tool} (Debian package {package})"));
        }
    }
    None
}

/// A private dockerd (with its own containerd) using one storage driver; stopped and removed on
/// drop.
pub struct Daemon {
    pub dir: PathBuf,
    pub driver: Driver,
    containerd: Option<Child>,
    dockerd: Option<Child>,
}

impl Daemon {
    /// Starts containerd and dockerd and waits (bounded) until dockerd answers. The error says
    /// why, with the end of the daemons' logs.
    pub fn start(driver: Driver) -> Result<Daemon, String> {
        if let Some(program) = driver.mount_program()
            && !program.is_file()
        {
            return Err(format!("no {}", program.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ufs-docker-{}-", driver.name()))
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        // The layers' directories must be reachable by the users containers run as.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        let mut daemon = Daemon {
            dir,
            driver,
            containerd: None,
            dockerd: None,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The layer store: `DATA/fuse-overlayfs` or `DATA/overlay2`.
    pub fn store(&self) -> PathBuf {
        self.path("data").join(self.driver.store_dir())
    }

    fn spawn(&mut self) -> Result<(), String> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: std::io::Error| format!("{what}: {err}")
        };
        for sub in [
            "bin",
            "data",
            "exec",
            "ctrd/root",
            "ctrd/state",
            "client",
            "ctx",
        ] {
            fs::create_dir_all(self.path(sub)).map_err(e(sub))?;
        }
        if let Some(program) = self.driver.mount_program() {
            std::os::unix::fs::symlink(&program, self.path("bin/fuse-overlayfs"))
                .map_err(e("symlink bin/fuse-overlayfs"))?;
        }
        fs::write(self.path("daemon.json"), "{}\n").map_err(e("daemon.json"))?;
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n  level = \"warn\"\n[metrics]\n  address = \"\"\n",
            root = self.path("ctrd/root").display(),
            state = self.path("ctrd/state").display(),
            sock = self.containerd_socket().display(),
        );
        fs::write(self.path("ctrd/config.toml"), config).map_err(e("containerd config"))?;
        let dir = self.dir.clone();
        let log = |name: &str| fs::File::create(dir.join(name)).map_err(e(name));
        let containerd = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(self.path("ctrd/config.toml"))
            .env("PATH", self.daemon_path())
            .stdin(Stdio::null())
            .stdout(log("containerd.log")?)
            .stderr(log("containerd.log")?)
            .spawn()
            .map_err(e("spawn containerd"))?;
        self.containerd = Some(containerd);
        if !wait_until(DAEMON_TIMEOUT, || {
            self.containerd_socket().exists() || !self.alive(|d| d.containerd.as_mut())
        }) || !self.alive(|d| d.containerd.as_mut())
        {
            return Err(format!(
                "containerd did not start:\n{}",
                self.log_tail("containerd.log")
            ));
        }
        let dockerd = Command::new("/usr/sbin/dockerd")
            .arg("--storage-driver")
            .arg(self.driver.storage_driver())
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .arg("--config-file")
            .arg(self.path("daemon.json"))
            .arg("--containerd")
            .arg(self.containerd_socket())
            .arg("--data-root")
            .arg(self.path("data"))
            .arg("--exec-root")
            .arg(self.path("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--pidfile")
            .arg(self.path("docker.pid"))
            .env("PATH", self.daemon_path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log("dockerd.log")?)
            .stderr(log("dockerd.log")?)
            .spawn()
            .map_err(e("spawn dockerd"))?;
        self.dockerd = Some(dockerd);
        let mut answered = false;
        wait_until(DAEMON_TIMEOUT, || {
            if !self.alive(|d| d.dockerd.as_mut()) {
                return true;
            }
            answered = self.socket().exists()
                && run_bounded(
                    self.command()
                        .args(["version", "--format", "{{.Server.Version}}"]),
                    CMD_TIMEOUT,
                )
                .success();
            answered
        });
        if !answered {
            return Err(format!(
                "dockerd --storage-driver {} did not start:\n{}",
                self.driver.storage_driver(),
                self.log_tail("dockerd.log")
            ));
        }
        Ok(())
    }

    fn alive(&mut self, child: impl FnOnce(&mut Daemon) -> Option<&mut Child>) -> bool {
        child(self).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `PATH` for the daemons: the `fuse-overlayfs` link first, then the system's programs
    /// (not `/usr/local/bin`, where an installed ufs may be linked as `fuse-overlayfs`).
    fn daemon_path(&self) -> String {
        format!(
            "{}:/usr/sbin:/usr/bin:/sbin:/bin",
            self.path("bin").display()
        )
    }

    fn containerd_socket(&self) -> PathBuf {
        self.path("ctrd/containerd.sock")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("docker.sock")
    }

    /// The last lines of one of the daemons' logs.
    pub fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// The docker client, talking to this daemon only, legacy builder.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.path("client"))
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Run {
        run_bounded(self.command().args(args), DOCKER_TIMEOUT)
    }

    /// Runs docker and returns its stdout; panics with everything (and the daemon's log) on
    /// failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.docker(args);
        assert!(
            run.success(),
            "[{}] docker {} failed:\n{run}\n--- dockerd.log ---\n{}",
            self.driver.name(),
            args.join(" "),
            self.log_tail("dockerd.log")
        );
        run.stdout
    }

    /// `docker import` of a rootfs tarball as `image`.
    pub fn import(&self, tar: &Path, image: &str) {
        self.ok(&["import", tar.to_str().unwrap_or_default(), image]);
    }

    fn stop(&mut self, which: &str, child: Option<Child>) {
        let Some(mut child) = child else { return };
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so its
        // pid is still ours.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let exited = wait_until(DAEMON_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            eprintln!(
                "note: {which} in {} ignored SIGTERM; killing it",
                self.dir.display()
            );
            // It may have exited meanwhile; wait() below reaps it either way.
            let _ = child.kill();
        }
        let _ = child.wait(); // only reaps; the exit status of a stopped daemon says nothing
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive(|d| d.dockerd.as_mut()) {
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let rm = self.docker(&args);
                if !rm.success() {
                    eprintln!("note: docker rm -f in {} failed:\n{rm}", self.dir.display());
                }
            }
        }
        let dockerd = self.dockerd.take();
        self.stop("dockerd", dockerd);
        let containerd = self.containerd.take();
        self.stop("containerd", containerd);
        let mut left: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        left.sort();
        left.dedup();
        for p in left.iter().rev() {
            if !force_unmount(p) {
                let _ = Command::new("umount").arg("-l").arg(p).status(); // checked below
            }
        }
        // Shims and mount daemons this daemon started and left behind.
        let leftovers = pids_with_arg(&self.dir);
        if !leftovers.is_empty() {
            eprintln!(
                "note: killing processes left behind in {}: {leftovers:?}",
                self.dir.display()
            );
            for pid in leftovers {
                kill9(pid);
            }
        }
        if mounts()
            .iter()
            .any(|m| m.mount_point.starts_with(&self.dir))
        {
            eprintln!(
                "warning: mounts remain below {}; leaving it in place",
                self.dir.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}
