//! `ufs status MERGED`: a live mount's layers, options and counters ([`crate::stats`]), asked of
//! its daemon through a control socket, and the same report in the daemon's log on `SIGUSR1`.
//! No kernel overlay counterpart (its state is only in `/proc/self/mountinfo`).
//!
//! Finding the socket from MERGED alone: the daemon names its socket after its mount's device
//! number `MAJOR:MINOR` (unique among live mounts), which it reads from `/proc/self/mountinfo`
//! by the mount id it recorded when mounting (no request to itself), and puts it in the socket
//! directory of its effective uid ([`socket_dir`]), with its pid after a dot (`0:55.1234`). The client opens MERGED with `O_PATH` (no
//! request to the filesystem either), reads the mount id from `/proc/self/fdinfo`, finds the
//! line in mountinfo, checks the type is `fuse.ufs`, and takes the owner from the line's
//! `user_id=`, which gives the directory.
//!
//! Protection, in three layers: the directory is mode 0700 and owned by the daemon's uid (the
//! daemon refuses one that is not, or that is a symlink); the socket is mode 0600; and the
//! daemon answers only a peer whose uid (`SO_PEERCRED`, recorded by the kernel at `connect`) is
//! 0 or its own. The protocol is one answer per connection: the daemon writes the report as one
//! JSON document and closes; a refused peer gets `{"error": "..."}`.
//!
//! Invariants: the socket exists only while the daemon serves (removed when it exits; a new
//! mount's daemon removes the sockets of earlier daemons of its device number, whose mounts are
//! gone). A daemon removes only the name with its own pid, so a daemon still exiting after its
//! mount ended never removes the socket of a newer mount that got the same device number.
//! Reports are built on the status thread, never on a request thread.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::options::Options;
use crate::overlay::Overlay;
use crate::passthrough::Passthrough;
use crate::stats::{Snapshot, errno_name};
use crate::sys;

/// The mount type ufs mounts (`fuse.SUBTYPE`).
const FSTYPE: &str = "fuse.ufs";

/// How long the daemon waits for a client to take its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The directory of the status sockets of daemons running as `uid`: `/run/ufs` for root;
/// otherwise `/run/user/UID/ufs` when the user's runtime directory exists (what
/// `XDG_RUNTIME_DIR` names on systemd machines), else `/tmp/ufs-UID`. It depends on the uid
/// alone so that root's `ufs status` finds a user's socket too.
pub fn socket_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/ufs");
    }
    let runtime = PathBuf::from(format!("/run/user/{uid}"));
    match std::fs::symlink_metadata(&runtime) {
        Ok(m) if m.is_dir() && m.uid() == uid => runtime.join("ufs"),
        _ => PathBuf::from(format!("/tmp/ufs-{uid}")),
    }
}

/// One line of `/proc/self/mountinfo`, the fields ufs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    pub mnt_id: u64,
    /// `MAJOR:MINOR` of the mount's device.
    pub device: String,
    pub mount_point: PathBuf,
    /// The per-mount options (`rw,nosuid,nodev,relatime`).
    pub mount_options: String,
    pub fstype: String,
    pub source: String,
    /// The superblock's options (for FUSE: `rootmode=`, `user_id=`, `group_id=`, ...).
    pub super_options: String,
}

impl MountLine {
    /// Parses one mountinfo line (`proc(5)`); `None` for a malformed one.
    pub fn parse(line: &str) -> Option<MountLine> {
        let (pre, post) = line.split_once(" - ")?;
        let mut pre = pre.split(' ');
        let mnt_id = pre.next()?.parse().ok()?;
        let _parent = pre.next()?;
        let device = pre.next()?.to_string();
        let _root = pre.next()?;
        let mount_point = unescape(pre.next()?);
        let mount_options = pre.next()?.to_string();
        let mut post = post.split(' ');
        Some(MountLine {
            mnt_id,
            device,
            mount_point,
            mount_options,
            fstype: post.next()?.to_string(),
            source: post.next()?.to_string(),
            super_options: post.next().unwrap_or("").to_string(),
        })
    }

    /// The `user_id=` of a FUSE mount: the uid of the daemon that mounted it.
    pub fn owner(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if c == b'\\' => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The mountinfo line of mount `mnt_id`.
pub fn mount_line(mnt_id: u64) -> io::Result<MountLine> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .filter_map(MountLine::parse)
        .find(|m| m.mnt_id == mnt_id)
        .ok_or_else(|| io::Error::other(format!("mount {mnt_id} is not in /proc/self/mountinfo")))
}

/// What a daemon reports about its mount.
pub struct Source {
    pub overlay: Arc<Overlay>,
    pub passthrough: Arc<Passthrough>,
    pub mountpoint: PathBuf,
    pub mount: MountLine,
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// The ufs options in effect, as `-o` words.
    pub options: Vec<String>,
    pub started: Instant,
}

/// The `-o` words that describe the options in effect (defaults included, so the report says
/// what the mount does, not only what was asked).
pub fn option_words(opts: &Options, read_only: bool, threads: usize) -> Vec<String> {
    let on = |b: bool| if b { "on" } else { "off" };
    let mut w = vec![if read_only { "ro" } else { "rw" }.to_string()];
    w.push(format!("redirect_dir={}", on(opts.redirect_dir)));
    w.push(format!("index={}", on(opts.index)));
    w.push(format!("metacopy={}", on(opts.metacopy)));
    w.push(format!("xino={}", on(opts.xino)));
    w.push(format!("passthrough={}", on(opts.passthrough)));
    if opts.writeback {
        w.push("writeback=1".into());
    }
    if !opts.fsync {
        w.push("fsync=0".into());
    }
    w.push(format!("timeout={}", opts.timeout.as_secs()));
    w.push(format!("threaded={threads}"));
    let flags = [
        (opts.userxattr, "userxattr"),
        (opts.allow_other, "allow_other"),
        (opts.allow_root, "allow_root"),
        (opts.static_nlink, "static_nlink"),
        (opts.noxattrs, "noxattrs=1"),
        (opts.squash_to_root, "squash_to_root"),
    ];
    w.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
    if opts.xattr_permissions != 0 {
        w.push(format!("xattr_permissions={}", opts.xattr_permissions));
    }
    if let Some(uid) = opts.squash_to_uid {
        w.push(format!("squash_to_uid={uid}"));
    }
    if let Some(gid) = opts.squash_to_gid {
        w.push(format!("squash_to_gid={gid}"));
    }
    for (name, maps) in [
        ("uidmapping", &opts.uid_mappings),
        ("gidmapping", &opts.gid_mappings),
    ] {
        if !maps.is_empty() {
            let ranges: Vec<String> = maps
                .iter()
                .map(|m| format!("{}:{}:{}", m.disk, m.shown, m.count))
                .collect();
            w.push(format!("{name}={}", ranges.join(":")));
        }
    }
    w
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The report, as the JSON document the socket answers with.
pub fn report(src: &Source) -> Value {
    let snap: Snapshot = src.overlay.stats().snapshot();
    let mut requests = Map::new();
    for (op, count, nanos) in &snap.ops {
        requests.insert(
            op.name().to_string(),
            json!({ "count": count, "total_ns": nanos }),
        );
    }
    let mut errors = Map::new();
    for (errno, count) in &snap.errors {
        let name = if *errno == 0 {
            "other".to_string()
        } else {
            errno_name(*errno)
        };
        errors.insert(name, json!(count));
    }
    let (files, dirs) = src.overlay.open_handles();
    let pt = src.passthrough.usage();
    json!({
        "mountpoint": path_text(&src.mountpoint),
        "pid": std::process::id(),
        "uid": sys::euid_egid().0,
        "device": src.mount.device,
        "mnt_id": src.mount.mnt_id,
        "uptime_ms": u64::try_from(src.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "layers": {
            "lower": src.lowerdirs.iter().map(|p| path_text(p)).collect::<Vec<_>>(),
            "upper": src.upperdir.as_deref().map(path_text),
            "work": src.workdir.as_deref().map(path_text),
        },
        "options": src.options,
        "mount_options": src.mount.mount_options,
        "requests": requests,
        "copy_ups": {
            "full": snap.copy_ups_full,
            "metadata_only": snap.copy_ups_metadata,
            "metacopy_completed": snap.metacopy_completed,
            "bytes_copied": snap.bytes_copied,
        },
        "cache": {
            "lookups_from_listing": snap.lookups_listed,
            "lookups_walked": snap.lookups_walked,
            "listings_cached": snap.listings_cached,
            "listings_built": snap.listings_built,
            "xattr_absent_hits": snap.xattr_absent_hits,
        },
        "errors": errors,
        "open": { "files": files, "dirs": dirs },
        "cached_inodes": src.overlay.cached_inodes(),
        "passthrough": {
            "state": pt.state,
            "backing_ids": pt.backing_ids,
            "handles": pt.handles,
        },
        "writeback_cache": pt.writeback_cache,
    })
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_u64().unwrap_or(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A duration in nanoseconds, in the unit that suits it.
fn duration(nanos: u64) -> String {
    let n = nanos as f64;
    if n >= 1e9 {
        format!("{:.3} s", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.3} ms", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} us", n / 1e3)
    } else {
        format!("{nanos} ns")
    }
}

/// The report as text, for people: the same numbers as the JSON.
pub fn to_text(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "ufs mount {} (pid {}, uid {}, device {}, up {:.1} s)",
        text(&r["mountpoint"]),
        num(r, &["pid"]),
        num(r, &["uid"]),
        text(&r["device"]),
        num(r, &["uptime_ms"]) as f64 / 1000.0
    ));
    line("layers:".into());
    line(format!("  upper  {}", text(&r["layers"]["upper"])));
    line(format!("  work   {}", text(&r["layers"]["work"])));
    for lower in r["layers"]["lower"].as_array().into_iter().flatten() {
        line(format!("  lower  {}", text(lower)));
    }
    let words: Vec<String> = r["options"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    line(format!("options: {}", words.join(",")));
    line(format!("mount options: {}", text(&r["mount_options"])));
    let mut reqs: Vec<(String, u64, u64)> = r["requests"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), num(v, &["count"]), num(v, &["total_ns"])))
        .collect();
    // The requests that cost the most time first.
    reqs.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    line(format!(
        "requests: {:<16} {:>10} {:>12} {:>12}",
        "", "count", "total", "mean"
    ));
    for (name, count, nanos) in &reqs {
        line(format!(
            "  {name:<24} {count:>10} {:>12} {:>12}",
            duration(*nanos),
            duration(nanos / (*count).max(1))
        ));
    }
    let c = &r["copy_ups"];
    line(format!(
        "copy-ups: {} full, {} metadata-only ({} completed later), {} bytes copied",
        num(c, &["full"]),
        num(c, &["metadata_only"]),
        num(c, &["metacopy_completed"]),
        num(c, &["bytes_copied"])
    ));
    let k = &r["cache"];
    line(format!(
        "caches: lookups {} from listings, {} walked; listings {} cached, {} built; \
         xattr absences {} remembered",
        num(k, &["lookups_from_listing"]),
        num(k, &["lookups_walked"]),
        num(k, &["listings_cached"]),
        num(k, &["listings_built"]),
        num(k, &["xattr_absent_hits"])
    ));
    let mut errors = String::new();
    for (name, count) in r["errors"].as_object().into_iter().flatten() {
        let sep = if errors.is_empty() { "" } else { ", " };
        // `write!` to a String cannot fail.
        let _ = write!(errors, "{sep}{name} {}", count.as_u64().unwrap_or(0));
    }
    if errors.is_empty() {
        errors.push_str("none");
    }
    line(format!("errors: {errors}"));
    line(format!(
        "open: {} files, {} directories; cached inodes: {}",
        num(r, &["open", "files"]),
        num(r, &["open", "dirs"]),
        num(r, &["cached_inodes"])
    ));
    let p = &r["passthrough"];
    line(format!(
        "passthrough: {}, {} backing ids, {} handles; writeback cache: {}",
        text(&p["state"]),
        num(p, &["backing_ids"]),
        num(p, &["handles"]),
        if r["writeback_cache"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
    ));
    out
}

/// Whether a peer with uid `peer` may read the report of a daemon running as `daemon`.
pub fn may_ask(peer: u32, daemon: u32) -> bool {
    peer == 0 || peer == daemon
}

/// The daemon's status socket: served by its own thread, removed on drop.
pub struct Server {
    path: PathBuf,
}

/// The name of the socket of the daemon `pid` serving the mount of device `device`.
fn socket_name(device: &str, pid: u32) -> String {
    format!("{device}.{pid}")
}

/// The pid in a socket name of the mount of device `device`, if `name` is one.
fn socket_pid(name: &str, device: &str) -> Option<u32> {
    name.strip_prefix(device)?.strip_prefix('.')?.parse().ok()
}

impl Server {
    /// Creates the socket for `src`'s mount and serves it on a thread of its own.
    pub fn start(src: Arc<Source>) -> io::Result<Server> {
        let uid = sys::euid_egid().0;
        let dir = socket_dir(uid);
        private_dir(&dir, uid)?;
        let device = &src.mount.device;
        // Any other socket for this device is an earlier daemon's, whose mount is gone (device
        // numbers are unique among live mounts, and this one is ours): one killed, or one
        // still exiting, which then finds its socket gone.
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if name.to_str().and_then(|n| socket_pid(n, device)).is_some() {
                let stale = dir.join(&name);
                if let Err(e) = std::fs::remove_file(&stale) {
                    log::warn!("cannot remove the stale socket {}: {e}", stale.display());
                }
            }
        }
        let path = dir.join(socket_name(device, std::process::id()));
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let server = Server { path };
        std::thread::Builder::new()
            .name("ufs-status".into())
            .spawn(move || serve(&listener, &src, uid))?;
        Ok(server)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket. Its name has this daemon's pid, so it is no other daemon's.
    pub fn remove(&self) {
        match std::fs::remove_file(&self.path) {
            // Removed already, or by a newer mount's daemon that got this device number.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", self.path.display()),
            Ok(()) => {}
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Makes `dir` (and its parent, for `/run/ufs`) and checks that only `uid` can enter it.
fn private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory of uid {uid} with mode 0700; not serving the status socket",
            dir.display()
        )));
    }
    Ok(())
}

/// Answers connections, one at a time, forever.
fn serve(listener: &UnixListener, src: &Source, uid: u32) {
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("status socket: {e}");
                continue;
            }
        };
        if let Err(e) = answer(&mut conn, src, uid) {
            log::debug!("status socket: answering: {e}");
        }
    }
}

fn answer(conn: &mut UnixStream, src: &Source, uid: u32) -> io::Result<()> {
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let peer = sys::socket::peer_uid(conn.as_fd())?;
    let doc = if may_ask(peer, uid) {
        report(src)
    } else {
        log::info!("status socket: refusing uid {peer}");
        json!({ "error": format!("permission denied: only root and uid {uid} may ask") })
    };
    conn.write_all((doc.to_string() + "\n").as_bytes())
}

/// Logs the report (on `SIGUSR1`), at info level under the `ufs::status` target, which the
/// command line's logger shows by default.
pub fn log_report(src: &Source) {
    log::info!(target: "ufs::status", "status report\n{}", to_text(&report(src)));
}

/// Asks the daemon of the mount at `mountpoint` for its report.
pub fn query(mountpoint: &Path) -> Result<Value, String> {
    let shown = mountpoint.display();
    let fd = sys::open_dir_path(mountpoint).map_err(|e| format!("{shown}: {e}"))?;
    let mnt_id = crate::lifecycle::mount_id(fd.as_fd()).map_err(|e| format!("{shown}: {e}"))?;
    let line = mount_line(mnt_id).map_err(|e| format!("{shown}: {e}"))?;
    if line.fstype != FSTYPE {
        return Err(format!(
            "{shown} is not a ufs mount (it is on a {} mount at {})",
            line.fstype,
            line.mount_point.display()
        ));
    }
    let me = sys::euid_egid().0;
    let mut dirs = Vec::new();
    if let Some(owner) = line.owner() {
        dirs.push(socket_dir(owner));
    }
    if !dirs.contains(&socket_dir(me)) {
        dirs.push(socket_dir(me));
    }
    let paths: Vec<String> = dirs
        .iter()
        .map(|d| d.join(format!("{}.PID", line.device)).display().to_string())
        .collect();
    let mut last: Option<(PathBuf, io::Error)> = None;
    let mut answer = None;
    'dirs: for dir in &dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                last = Some((dir.clone(), e));
                break;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .and_then(|n| socket_pid(n, &line.device))
                .is_none()
            {
                continue;
            }
            let path = dir.join(&name);
            match UnixStream::connect(&path) {
                Ok(conn) => {
                    let doc = read_answer(conn, &path)?;
                    // Beside a daemon still exiting after its mount ended (whose socket the
                    // new mount's daemon removes when it starts), the one of this mount.
                    if doc["mnt_id"].as_u64() == Some(mnt_id) {
                        return Ok(doc);
                    }
                    answer.get_or_insert(doc);
                }
                Err(e) => last = Some((path, e)),
            }
            if matches!(&last, Some((_, e)) if e.kind() == io::ErrorKind::PermissionDenied) {
                break 'dirs;
            }
        }
    }
    if let Some(doc) = answer {
        return Ok(doc);
    }
    let owner = line
        .owner()
        .map_or_else(|| "its owner".to_string(), |u| format!("uid {u}"));
    Err(match last {
        Some((path, e)) if e.kind() == io::ErrorKind::PermissionDenied => format!(
            "permission denied: only root and the mount's owner ({owner}) may ask for the \
             status of {shown} ({}: {e})",
            path.display()
        ),
        Some((path, e)) if e.kind() == io::ErrorKind::ConnectionRefused => format!(
            "the daemon of {shown} does not answer on {} (a stale socket?)",
            path.display()
        ),
        Some((path, e)) => format!(
            "cannot reach the daemon of {shown} at {}: {e}",
            path.display()
        ),
        None => format!(
            "no status socket for {shown} (looked for {}); is its daemon a ufs without \
             `ufs status`?",
            paths.join(", ")
        ),
    })
}

fn read_answer(mut conn: UnixStream, path: &Path) -> Result<Value, String> {
    let timeout = Some(Duration::from_secs(10));
    let what = |e: io::Error| format!("reading {}: {e}", path.display());
    conn.set_read_timeout(timeout).map_err(what)?;
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).map_err(what)?;
    let doc: Value = serde_json::from_slice(&buf)
        .map_err(|e| format!("{} sent an answer that is not JSON: {e}", path.display()))?;
    if let Some(err) = doc.get("error").and_then(Value::as_str) {
        return Err(err.to_string());
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let line = "62 28 0:55 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:33 - fuse.ufs ufs \
                    rw,user_id=1000,group_id=1000,default_permissions,allow_other";
        let m = MountLine::parse(line).expect("parse");
        assert_eq!(m.mnt_id, 62);
        assert_eq!(m.device, "0:55");
        assert_eq!(m.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.mount_options, "rw,nosuid,nodev,relatime");
        assert_eq!(m.fstype, "fuse.ufs");
        assert_eq!(m.source, "ufs");
        assert_eq!(m.owner(), Some(1000));
        assert_eq!(MountLine::parse("62 28 0:55"), None);
    }

    #[test]
    fn socket_names() {
        assert_eq!(socket_name("0:55", 1234), "0:55.1234");
        assert_eq!(socket_pid("0:55.1234", "0:55"), Some(1234));
        assert_eq!(socket_pid("0:555.1234", "0:55"), None);
        assert_eq!(socket_pid("0:55", "0:55"), None);
        assert_eq!(socket_pid("0:55.x", "0:55"), None);
    }

    #[test]
    fn who_may_ask() {
        assert!(may_ask(0, 1000));
        assert!(may_ask(1000, 1000));
        assert!(!may_ask(65534, 1000));
        assert!(!may_ask(1000, 0));
    }

    #[test]
    fn the_socket_directory_must_be_private() {
        let t = tempfile::tempdir().expect("tempdir");
        let uid = sys::euid_egid().0;
        let fresh = t.path().join("fresh");
        private_dir(&fresh, uid).expect("a new directory");
        let mode = std::fs::metadata(&fresh).expect("stat").mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        private_dir(&fresh, uid).expect("again");
        let open = t.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(private_dir(&open, uid).is_err(), "mode 0755 accepted");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).expect("symlink");
        assert!(private_dir(&link, uid).is_err(), "a symlink accepted");
        assert!(
            private_dir(&fresh, uid + 1).is_err(),
            "another owner accepted"
        );
    }

    #[test]
    fn socket_dirs() {
        assert_eq!(socket_dir(0), PathBuf::from("/run/ufs"));
        let d = socket_dir(4_000_000_000);
        assert_eq!(d, PathBuf::from("/tmp/ufs-4000000000"));
    }

    #[test]
    fn text_of_a_report() {
        let r = json!({
            "mountpoint": "/m", "pid": 7, "uid": 0, "device": "0:55", "uptime_ms": 1500,
            "layers": { "lower": ["/l1", "/l2"], "upper": "/u", "work": "/w" },
            "options": ["rw", "metacopy=on"],
            "mount_options": "rw,relatime",
            "requests": { "LOOKUP": { "count": 4, "total_ns": 4000 },
                          "READ": { "count": 1, "total_ns": 2_000_000 } },
            "copy_ups": { "full": 1, "metadata_only": 2, "metacopy_completed": 0,
                          "bytes_copied": 4096 },
            "cache": { "lookups_from_listing": 3, "lookups_walked": 1, "listings_cached": 0,
                       "listings_built": 1, "xattr_absent_hits": 5 },
            "errors": { "ENOENT": 2 },
            "open": { "files": 1, "dirs": 0 },
            "cached_inodes": 9,
            "passthrough": { "state": "off", "backing_ids": 0, "handles": 0 },
            "writeback_cache": true,
        });
        let t = to_text(&r);
        for needle in [
            "ufs mount /m (pid 7, uid 0, device 0:55, up 1.5 s)",
            "  lower  /l2",
            "options: rw,metacopy=on",
            "copy-ups: 1 full, 2 metadata-only (0 completed later), 4096 bytes copied",
            "errors: ENOENT 2",
            "cached inodes: 9",
            "passthrough: off, 0 backing ids, 0 handles; writeback cache: on",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from:\n{t}");
        }
        // READ took more time: listed first.
        let read = t.find("  READ").expect("READ");
        let lookup = t.find("  LOOKUP").expect("LOOKUP");
        assert!(read < lookup, "{t}");
        assert!(t.contains("1.0 us"), "mean of LOOKUP:\n{t}");
    }
}
