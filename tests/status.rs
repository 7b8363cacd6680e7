//! `ufs status MERGED` and `SIGUSR1`: the report of a live mount, through a real mount.
//!
//! Known work is done through the mount (files created and read, a full copy-up of a lower file
//! of known size, a metadata-only copy-up by `chmod`, a failing lookup) and the report must
//! account for it; the socket answers only root and the owner, is found from MERGED alone, and
//! is gone once the daemon exits; `SIGUSR1` writes the same report to the daemon's log.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Files created through the mount.
const CREATED: usize = 5;
/// Size of the lower file whose data is copied up.
const DATA_SIZE: usize = 12_345;
/// The lower file copied up metadata-only, and later completed.
const META: &str = "metadata only";
/// Bytes of data the work copies: the whole of `data`, then `meta`'s on completion.
const COPIED: usize = DATA_SIZE + META.len();

struct Layers {
    l: PathBuf,
    u: PathBuf,
    w: PathBuf,
    m: PathBuf,
}

impl Layers {
    fn new(base: &Path) -> Layers {
        let layers = Layers {
            l: mkdirs(&base.join("l")),
            u: mkdirs(&base.join("u")),
            w: mkdirs(&base.join("w")),
            m: mkdirs(&base.join("m")),
        };
        fs::write(layers.l.join("data"), vec![7u8; DATA_SIZE]).unwrap();
        fs::write(layers.l.join("meta"), META).unwrap();
        layers
    }

    /// Mounts in the foreground (`metacopy=on`), the daemon's log going to `base/err`.
    fn mount(&self, base: &Path) -> UfsMount {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},metacopy=on",
            self.l.display(),
            self.u.display(),
            self.w.display()
        );
        let args: Vec<OsString> =
            vec!["-f".into(), "-o".into(), opts.into(), self.m.clone().into()];
        UfsMount::spawn_foreground(&args, &self.m, &base.join("err"))
    }
}

fn status(args: &[&str], mnt: &Path) -> Run {
    run_bounded(ufs_cmd().args(args).arg(mnt), CMD_TIMEOUT)
}

/// `ufs status --json MERGED`, parsed.
fn report(mnt: &Path) -> serde_json::Value {
    let run = status(&["status", "--json"], mnt);
    assert!(run.success(), "ufs status --json:\n{run}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{run}"))
}

fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

fn text(v: &serde_json::Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn requests(r: &serde_json::Value, op: &str) -> u64 {
    r["requests"][op]["count"].as_u64().unwrap_or(0)
}

/// The work the report must account for; returns nothing, panics on a failed step.
fn do_known_work(m: &Path) {
    for i in 0..CREATED {
        fs::write(m.join(format!("new{i}")), format!("file {i}")).unwrap();
    }
    for i in 0..CREATED {
        assert_eq!(
            fs::read_to_string(m.join(format!("new{i}"))).unwrap(),
            format!("file {i}")
        );
    }
    // A full copy-up: opening the lower file for writing copies its data.
    let mut data = fs::OpenOptions::new()
        .append(true)
        .open(m.join("data"))
        .unwrap();
    std::io::Write::write_all(&mut data, b"+").unwrap();
    drop(data);
    // A metadata-only copy-up, completed by an open for writing.
    fs::set_permissions(m.join("meta"), fs::Permissions::from_mode(0o600)).unwrap();
    drop(
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("meta"))
            .unwrap(),
    );
    // A failing lookup.
    assert!(fs::symlink_metadata(m.join("missing")).is_err());
}

#[test]
fn status_accounts_for_the_work_done() {
    if skip("status_accounts_for_the_work_done") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path());
    let mnt = layers.mount(t.path());
    do_known_work(&layers.m);
    let held = fs::File::open(layers.m.join("new0")).unwrap();

    let r = report(&layers.m);
    let text = r.to_string();
    assert_eq!(
        r["mountpoint"],
        layers.m.to_string_lossy().as_ref(),
        "{text}"
    );
    assert_eq!(r["layers"]["upper"], layers.u.to_string_lossy().as_ref());
    assert_eq!(r["layers"]["work"], layers.w.to_string_lossy().as_ref());
    assert_eq!(r["layers"]["lower"][0], layers.l.to_string_lossy().as_ref());
    let options: Vec<&str> = r["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert!(options.contains(&"metacopy=on"), "{text}");
    assert!(requests(&r, "CREATE") >= CREATED as u64, "{text}");
    assert!(requests(&r, "LOOKUP") >= 1, "{text}");
    // Reads reach ufs unless the kernel did them on the real file (passthrough).
    assert!(
        requests(&r, "READ") >= 1 || r["passthrough"]["state"] == "in use",
        "{text}"
    );
    assert!(requests(&r, "SETATTR") >= 1, "{text}");
    for (op, v) in r["requests"].as_object().unwrap() {
        assert!(
            num(v, &["count"]) > 0,
            "{op} listed with no request: {text}"
        );
    }
    assert_eq!(num(&r, &["copy_ups", "full"]), 1, "{text}");
    assert_eq!(num(&r, &["copy_ups", "metadata_only"]), 1, "{text}");
    assert_eq!(num(&r, &["copy_ups", "metacopy_completed"]), 1, "{text}");
    assert_eq!(
        num(&r, &["copy_ups", "bytes_copied"]),
        COPIED as u64,
        "{text}"
    );
    assert!(num(&r, &["errors", "ENOENT"]) >= 1, "{text}");
    let cache = &r["cache"];
    assert!(
        num(cache, &["lookups_from_listing"]) + num(cache, &["lookups_walked"]) >= 1,
        "{text}"
    );
    assert!(num(&r, &["open", "files"]) >= 1, "a file is open: {text}");
    let cached = num(&r, &["cached_inodes"]);
    assert!(cached > CREATED as u64, "{text}");
    assert!(r["passthrough"]["state"].is_string(), "{text}");
    drop(held);

    // Unlinked files the kernel no longer uses are forgotten: the table shrinks.
    for i in 0..CREATED {
        fs::remove_file(layers.m.join(format!("new{i}"))).unwrap();
    }
    let mut last = serde_json::Value::Null;
    let shrank = wait_until(MOUNT_TIMEOUT, || {
        last = report(&layers.m);
        num(&last, &["cached_inodes"]) <= cached - CREATED as u64
    });
    assert!(shrank, "cached inodes stayed at {cached}: {last}");
    assert!(requests(&last, "FORGET") >= CREATED as u64, "{last}");

    // The text form carries the same numbers.
    let run = status(&["status"], &layers.m);
    assert!(run.success(), "{run}");
    for needle in [
        format!("ufs mount {}", layers.m.display()),
        format!("  lower  {}", layers.l.display()),
        "  CREATE ".to_string(),
        format!("1 full, 1 metadata-only (1 completed later), {COPIED} bytes copied"),
        "ENOENT".to_string(),
        "cached inodes: ".to_string(),
        "passthrough: ".to_string(),
    ] {
        assert!(run.stdout.contains(&needle), "{needle:?} missing:\n{run}");
    }
    drop(mnt);
}

#[test]
fn status_refuses_other_users_and_non_ufs_mounts() {
    if skip("status_refuses_other_users_and_non_ufs_mounts") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path());
    let _mnt = layers.mount(t.path());

    match which("setpriv") {
        None => say("SKIP status_refuses_other_users (part): no setpriv"),
        Some(setpriv) => {
            let run = run_bounded(
                Command::new(setpriv)
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(ufs_bin())
                    .arg("status")
                    .arg(&layers.m),
                CMD_TIMEOUT,
            );
            assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
            assert!(run.stdout.is_empty(), "{run}");
            assert!(run.stderr.contains("permission denied"), "{run}");
        }
    }

    let run = status(&["status"], t.path());
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    assert!(run.stderr.contains("is not a ufs mount"), "{run}");

    let run = status(&["status"], &t.path().join("nonexistent"));
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");

    // The socket is found from MERGED alone: without it, the command says so.
    let r = report(&layers.m);
    let socket = PathBuf::from(format!("/run/ufs/{}.{}", text(&r["device"]), r["pid"]));
    assert!(socket.exists(), "{} missing", socket.display());
    fs::remove_file(&socket).unwrap();
    let run = status(&["status"], &layers.m);
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{run}");
    assert!(run.stderr.contains("no status socket"), "{run}");
}

#[test]
fn sigusr1_logs_the_report_and_the_socket_goes_with_the_daemon() {
    if skip("sigusr1_logs_the_report_and_the_socket_goes_with_the_daemon") {
        return;
    }
    let t = tempdir();
    let layers = Layers::new(t.path());
    let mut mnt = layers.mount(t.path());
    do_known_work(&layers.m);
    let r = report(&layers.m);
    let socket = PathBuf::from(format!("/run/ufs/{}.{}", text(&r["device"]), r["pid"]));
    assert!(socket.exists(), "{} missing", socket.display());

    let pid = mnt.pid.expect("foreground pid");
    let run = run_bounded(
        Command::new("kill").args(["-s", "USR1", &pid.to_string()]),
        CMD_TIMEOUT,
    );
    assert!(run.success(), "{run}");
    let logged = wait_until(Duration::from_secs(5), || {
        let log = mnt.stderr_text();
        log.contains("status report") && log.contains("bytes copied")
    });
    let log = mnt.stderr_text();
    assert!(logged, "no report in the daemon's log:\n{log}");
    assert!(
        log.contains(&format!("ufs mount {}", layers.m.display())),
        "{log}"
    );
    assert!(log.contains(&format!("{COPIED} bytes copied")), "{log}");
    // The report ended nothing.
    assert!(pid_alive(pid), "the daemon died of SIGUSR1:\n{log}");
    assert!(is_mounted(&layers.m));
    assert!(report(&layers.m)["requests"]["CREATE"]["count"].as_u64() >= Some(CREATED as u64));

    mnt.unmount();
    assert!(
        mnt.wait_daemon_exit(Duration::from_secs(5)),
        "daemon still running"
    );
    assert!(
        !socket.exists(),
        "{} left behind by the daemon:\n{}",
        socket.display(),
        mnt.stderr_text()
    );
}

/// A daemon run by a user other than root: its socket is in that user's directory, found from
/// MERGED alone by root (through the mount's `user_id=`) and by the owner, and refused to a third
/// user. Needs a `/dev/fuse` the user may open: a private node in a private mount namespace.
#[test]
fn a_users_daemon_answers_root_and_the_user_only() {
    if skip("a_users_daemon_answers_root_and_the_user_only") {
        return;
    }
    for tool in ["unshare", "setpriv", "mknod"] {
        if which(tool).is_none() {
            say(&format!(
                "SKIP a_users_daemon_answers_root_and_the_user_only: no {tool}"
            ));
            return;
        }
    }
    let t = tempdir();
    let l = mkdirs(&t.path().join("l"));
    fs::write(l.join("f"), "f").unwrap();
    let m = mkdirs(&t.path().join("m"));
    std::os::unix::fs::chown(&m, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&l, fs::Permissions::from_mode(0o755)).unwrap();
    let node = t.path().join("fuse-node");
    let (ufs, m, l) = (ufs_bin(), m.display(), l.display());
    let ufs = ufs.display();
    let script = format!(
        "set -e
mknod -m 666 {node} c 10 229
mount --bind {node} /dev/fuse
trap 'umount -l {m} 2>/dev/null || true' EXIT
as_nobody() {{ setpriv --reuid=65534 --regid=65534 --clear-groups \"$@\"; }}
as_nobody {ufs} -o lowerdir={l} {m}
as_nobody cat {m}/f > /dev/null
{ufs} status --json {m}
echo ---
as_nobody {ufs} status --json {m}
echo ---
if setpriv --reuid=65533 --regid=65533 --clear-groups {ufs} status {m} 2>&1; then echo ALLOWED; fi
echo ---
as_nobody {ufs} umount {m}",
        node = node.display()
    );
    let run = run_bounded(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
        CMD_TIMEOUT,
    );
    assert!(run.success(), "{run}");
    let parts: Vec<&str> = run.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{run}");
    for (who, part) in ["root", "the owner"].iter().zip(&parts) {
        let r: serde_json::Value =
            serde_json::from_str(part).unwrap_or_else(|e| panic!("{who}: not JSON ({e}):\n{run}"));
        assert_eq!(num(&r, &["uid"]), 65534, "{who}:\n{run}");
        assert!(requests(&r, "LOOKUP") >= 1, "{who}:\n{run}");
    }
    assert!(parts[2].contains("permission denied"), "{run}");
    assert!(
        !parts[2].contains("ALLOWED"),
        "a third user was answered:\n{run}"
    );
}
