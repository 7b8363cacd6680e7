//! `ufs snapshotter` through its gRPC API, as containerd drives it: the real binary on a
//! temporary root and socket, a client built from containerd's own crate.
//!
//! - every call's semantics and error codes, matched to containerd's bolt metastore;
//! - Walk filters, labels and Update, Usage on known content, the returned mounts;
//! - the returned `fuse3.ufs` mounts actually mounted (with `mount.fuse3 ... -t ufs` as
//!   containerd runs them, when mount.fuse3 is installed) over a 3-level chain, with a
//!   whiteout and an opaque directory, and with the uid/gid mapping labels;
//! - the root lock, and SIGTERM removing the socket;
//! - crash consistency: the daemon aborted at each internal point of Prepare, Commit and
//!   Remove, and killed with SIGKILL at random moments of a busy loop; after each crash every
//!   record's directory exists and Cleanup removes exactly the orphans.

// The client answers what the API answers, a tonic `Status`: boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Code, Status};
use rand::{Rng, SeedableRng};

const START_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The daemon and the client
// ---------------------------------------------------------------------------------------------

/// A running `ufs snapshotter`; killed (and reaped) on drop.
struct Daemon {
    child: Option<Child>,
    sock: PathBuf,
}

impl Daemon {
    fn start(root: &Path, sock: &Path) -> Daemon {
        Self::start_with(root, sock, None)
    }

    /// Starts the daemon, with `UFS_SNAPSHOTTER_CRASH_AT=crash` if given, and waits until its
    /// socket accepts connections.
    fn start_with(root: &Path, sock: &Path, crash: Option<&str>) -> Daemon {
        let mut cmd = Command::new(common::ufs_bin());
        cmd.arg("snapshotter")
            .arg("--root")
            .arg(root)
            .arg("--address")
            .arg(sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env("RUST_LOG", "warn");
        match crash {
            Some(point) => cmd.env("UFS_SNAPSHOTTER_CRASH_AT", point),
            None => cmd.env_remove("UFS_SNAPSHOTTER_CRASH_AT"),
        };
        let child = cmd.spawn().expect("start ufs snapshotter");
        let mut d = Daemon {
            child: Some(child),
            sock: sock.to_path_buf(),
        };
        let up = common::wait_until(START_TIMEOUT, || {
            d.exited().is_some() || std::os::unix::net::UnixStream::connect(sock).is_ok()
        });
        assert!(up, "the snapshotter did not listen on {sock:?}");
        assert!(d.exited().is_none(), "the snapshotter exited at start");
        d
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Waits (bounded) for the daemon to exit on its own; returns its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        let done = common::wait_until(START_TIMEOUT, || {
            status = self.exited();
            status.is_some()
        });
        assert!(done, "the snapshotter did not exit");
        self.child = None;
        status.expect("exit status")
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // already gone is fine: we only need it dead
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = self.wait_exit();
        assert!(status.success(), "the snapshotter exited with {status}");
        assert!(
            !self.sock.exists(),
            "SIGTERM left the socket {:?}",
            self.sock
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking client over the daemon's socket.
struct Client {
    rt: tokio::runtime::Runtime,
    c: SnapshotsClient<Channel>,
}

type Res<T> = Result<T, Status>;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sock = sock.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by the API and unused: the connector dials the socket.
                Endpoint::try_from("http://[::]:0")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        tokio::net::UnixStream::connect(sock.clone())
                    }))
                    .await
            })
            .expect("connect to the snapshotter");
        Client {
            rt,
            c: SnapshotsClient::new(channel),
        }
    }

    fn prepare(&mut self, key: &str, parent: &str, l: &[(&str, &str)]) -> Res<Vec<Mount>> {
        let req = PrepareSnapshotRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
        };
        let c = &mut self.c;
        self.rt
            .block_on(c.prepare(req))
            .map(|r| r.into_inner().mounts)
    }

    fn view(&mut self, key: &str, parent: &str, l: &[(&str, &str)]) -> Res<Vec<Mount>> {
        let req = ViewSnapshotRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
        };
        let c = &mut self.c;
        self.rt.block_on(c.view(req)).map(|r| r.into_inner().mounts)
    }

    fn mounts(&mut self, key: &str) -> Res<Vec<Mount>> {
        let req = MountsRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
        };
        let c = &mut self.c;
        self.rt
            .block_on(c.mounts(req))
            .map(|r| r.into_inner().mounts)
    }

    fn commit(&mut self, name: &str, key: &str, l: &[(&str, &str)]) -> Res<()> {
        let req = CommitSnapshotRequest {
            snapshotter: "ufs".into(),
            name: name.into(),
            key: key.into(),
            labels: labels(l),
        };
        let c = &mut self.c;
        self.rt.block_on(c.commit(req)).map(drop)
    }

    fn remove(&mut self, key: &str) -> Res<()> {
        let req = RemoveSnapshotRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
        };
        let c = &mut self.c;
        self.rt.block_on(c.remove(req)).map(drop)
    }

    fn stat(&mut self, key: &str) -> Res<Info> {
        let req = StatSnapshotRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
        };
        let c = &mut self.c;
        self.rt
            .block_on(c.stat(req))
            .map(|r| r.into_inner().info.unwrap_or_default())
    }

    fn update(&mut self, info: Info, paths: Option<&[&str]>) -> Res<Info> {
        let req = UpdateSnapshotRequest {
            snapshotter: "ufs".into(),
            info: Some(info),
            update_mask: paths.map(|p| prost_types::FieldMask {
                paths: p.iter().map(|s| s.to_string()).collect(),
            }),
        };
        let c = &mut self.c;
        self.rt
            .block_on(c.update(req))
            .map(|r| r.into_inner().info.unwrap_or_default())
    }

    fn usage(&mut self, key: &str) -> Res<(i64, i64)> {
        let req = UsageRequest {
            snapshotter: "ufs".into(),
            key: key.into(),
        };
        let c = &mut self.c;
        self.rt
            .block_on(c.usage(req))
            .map(|r| (r.get_ref().inodes, r.get_ref().size))
    }

    /// The names Walk lists for `filters`, sorted.
    fn walk(&mut self, filters: &[&str]) -> Res<Vec<String>> {
        Ok(self
            .walk_infos(filters)?
            .into_iter()
            .map(|i| i.name)
            .collect())
    }

    fn walk_infos(&mut self, filters: &[&str]) -> Res<Vec<Info>> {
        let req = ListSnapshotsRequest {
            snapshotter: "ufs".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        };
        let c = &mut self.c;
        self.rt.block_on(async move {
            let mut stream = c.list(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(batch) = stream.message().await? {
                out.extend(batch.info);
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn cleanup(&mut self) -> Res<()> {
        let req = CleanupRequest {
            snapshotter: "ufs".into(),
        };
        let c = &mut self.c;
        self.rt.block_on(c.cleanup(req)).map(drop)
    }
}

#[track_caller]
fn code<T: std::fmt::Debug>(r: Res<T>, want: Code) {
    match r {
        Ok(v) => panic!("expected {want:?}, got Ok({v:?})"),
        Err(s) => assert_eq!(s.code(), want, "{}", s.message()),
    }
}

/// A snapshotter root and socket in a fresh temporary directory.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sock: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = common::tempdir();
        let root = tmp.path().join("root");
        let sock = tmp.path().join("run").join("snap.sock");
        Setup {
            root,
            sock,
            _tmp: tmp,
        }
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn fs(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string()).join("fs")
    }

    /// The entries of `snapshots/`.
    fn entries(&self) -> BTreeSet<String> {
        fs::read_dir(self.snapshots())
            .expect("list snapshots/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Opens the store itself (the daemon must be stopped: the root is locked) and checks the
    /// invariant: every record's directory exists, with `fs`, and `work` for an active one.
    /// Returns the records' directory names.
    fn check_invariant(&self) -> BTreeMap<String, u64> {
        let core = ufs::snapshotter::Snapshots::open(&self.root).expect("open the store");
        let ids: BTreeMap<String, u64> = core.ids().expect("ids").into_iter().collect();
        for (name, id) in &ids {
            let dir = self.snapshots().join(id.to_string());
            assert!(dir.join("fs").is_dir(), "{name:?}: {dir:?}/fs is missing");
            let info = core.stat(name).expect("stat");
            if info.kind == containerd_snapshots::Kind::Active {
                assert!(
                    dir.join("work").is_dir(),
                    "{name:?}: {dir:?}/work is missing"
                );
            }
            if !info.parent.is_empty() {
                assert!(ids.contains_key(&info.parent), "{name:?}: parent missing");
            }
        }
        ids
    }
}

fn id_of(fs_path: &str) -> u64 {
    let p = Path::new(fs_path);
    let id = p
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    id.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {fs_path:?}"))
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// What containerd's `fs.DiskUsage` reports for `root`: distinct inodes, allocated bytes.
fn expected_usage(root: &Path) -> (i64, i64) {
    let mut seen = BTreeSet::new();
    let mut size = 0i64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).expect("lstat");
        if seen.insert((m.dev(), m.ino())) {
            size += m.blocks() as i64 * 512;
        }
        if m.is_dir() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    (seen.len() as i64, size)
}

// ---------------------------------------------------------------------------------------------
// API semantics
// ---------------------------------------------------------------------------------------------

#[test]
fn calls_and_error_codes() {
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);

    // Prepare without a parent: a rw bind mount of its own fs, with fs and work created.
    let m = c.prepare("a", "", &[("p", "1")]).expect("prepare a");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let a_id = id_of(&m[0].source);
    assert_eq!(Path::new(&m[0].source), s.fs(a_id));
    assert!(s.fs(a_id).is_dir() && s.snapshots().join(format!("{a_id}/work")).is_dir());
    assert_eq!(c.mounts("a").expect("mounts a"), m);

    code(c.prepare("a", "", &[]), Code::AlreadyExists);
    code(c.view("a", "", &[]), Code::AlreadyExists);
    code(c.prepare("x", "missing", &[]), Code::NotFound);
    code(c.prepare("y", "a", &[]), Code::InvalidArgument); // parent not committed
    code(c.prepare("", "", &[]), Code::InvalidArgument);
    code(c.stat("x"), Code::NotFound);

    let info = c.stat("a").expect("stat a");
    assert_eq!(info.name, "a");
    assert_eq!(info.kind, Kind::Active as i32);
    assert_eq!(info.parent, "");
    assert_eq!(info.labels, labels(&[("p", "1")]));
    assert!(info.created_at.is_some() && info.created_at == info.updated_at);

    // Usage of an active snapshot: measured now, as fs.DiskUsage counts.
    fs::write(s.fs(a_id).join("data"), vec![7u8; 10_000]).expect("write");
    fs::create_dir(s.fs(a_id).join("dir")).expect("mkdir");
    fs::hard_link(s.fs(a_id).join("data"), s.fs(a_id).join("dir/link")).expect("link");
    let want = expected_usage(&s.fs(a_id));
    assert_eq!(want.0, 3, "root, data (twice linked) and dir");
    assert!(want.1 >= 10_000 + 2 * 512, "allocated bytes: {}", want.1);
    assert_eq!(c.usage("a").expect("usage a"), want);

    // Commit: same directory, the labels replaced, the usage kept.
    c.commit("c1", "a", &[("l", "v")]).expect("commit");
    code(c.stat("a"), Code::NotFound);
    let c1 = c.stat("c1").expect("stat c1");
    assert_eq!(c1.kind, Kind::Committed as i32);
    assert_eq!(c1.labels, labels(&[("l", "v")]), "labels are not inherited");
    assert_eq!(c.usage("c1").expect("usage c1"), want);
    code(c.mounts("c1"), Code::FailedPrecondition);
    code(c.mounts("nope"), Code::NotFound);
    code(c.usage("nope"), Code::NotFound);

    code(c.commit("c1", "nope", &[]), Code::AlreadyExists); // the name is checked first
    code(c.commit("c9", "nope", &[]), Code::NotFound);
    code(c.commit("c9", "c1", &[]), Code::FailedPrecondition); // not active
    c.view("v0", "", &[]).expect("view without parent");
    code(c.commit("c9", "v0", &[]), Code::FailedPrecondition); // a view
    assert_eq!(c.usage("v0").expect("usage v0"), (0, 0));
    let v0 = c.mounts("v0").expect("mounts v0");
    assert_eq!(v0[0].r#type, "bind");
    assert_eq!(v0[0].options, ["ro", "rbind"]);
    assert!(
        !s.snapshots()
            .join(format!("{}/work", id_of(&v0[0].source)))
            .exists()
    );

    // A view of one parent: a ro bind of the parent; a prepare on it: a union.
    let v1 = c.view("v1", "c1", &[]).expect("view v1");
    assert_eq!(v1.len(), 1);
    assert_eq!(
        (v1[0].r#type.as_str(), v1[0].options.as_slice()),
        ("bind", &["ro".to_string(), "rbind".to_string()][..])
    );
    assert_eq!(Path::new(&v1[0].source), s.fs(a_id));
    let p2 = c.prepare("p2", "c1", &[]).expect("prepare p2");
    assert_eq!(p2[0].r#type, "fuse3.ufs");
    assert_eq!(p2[0].source, "ufs");
    let p2_id = id_of(option(&p2[0], "upperdir").expect("upperdir"));
    assert_eq!(
        p2[0].options,
        [
            "index=off".to_string(),
            "metacopy=off".to_string(),
            format!(
                "workdir={}",
                s.snapshots().join(format!("{p2_id}/work")).display()
            ),
            format!("upperdir={}", s.fs(p2_id).display()),
            format!("lowerdir={}", s.fs(a_id).display()),
        ]
    );
    c.commit("c2", "p2", &[]).expect("commit p2");
    let v2 = c.view("v2", "c2", &[]).expect("view v2");
    assert_eq!(v2[0].r#type, "fuse3.ufs");
    assert_eq!(
        v2[0].options,
        [
            "index=off".to_string(),
            "metacopy=off".to_string(),
            format!(
                "lowerdir={}:{}",
                s.fs(p2_id).display(),
                s.fs(a_id).display()
            )
        ]
    );
    let p3 = c.prepare("p3", "c2", &[]).expect("prepare p3");
    assert_eq!(
        option(&p3[0], "lowerdir"),
        Some(format!("{}:{}", s.fs(p2_id).display(), s.fs(a_id).display()).as_str())
    );
    assert_eq!(c.stat("p3").expect("stat p3").parent, "c2");

    // Remove: children first.
    code(c.remove("c1"), Code::FailedPrecondition);
    code(c.remove("c2"), Code::FailedPrecondition);
    code(c.remove("nope"), Code::NotFound);
    let before = s.entries();
    c.remove("v1").expect("remove v1");
    code(c.stat("v1"), Code::NotFound);
    assert_eq!(
        before.len() - 1,
        s.entries().len(),
        "remove deletes the directory"
    );
    c.remove("v2").expect("remove v2");
    c.remove("p3").expect("remove p3");
    c.remove("c2").expect("remove c2 once childless");
    assert!(!s.snapshots().join(p2_id.to_string()).exists());
    c.remove("c1").expect("remove c1 once childless");
    c.remove("v0").expect("remove v0");
    assert_eq!(c.walk(&[]).expect("walk"), Vec::<String>::new());
    assert!(s.entries().is_empty(), "left: {:?}", s.entries());
    d.stop();
}

#[test]
fn update_labels_and_times() {
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    c.prepare("k", "", &[("a", "1"), ("b", "2"), ("empty", "")])
        .expect("prepare");
    let first = c.stat("k").expect("stat");
    assert_eq!(
        first.labels,
        labels(&[("a", "1"), ("b", "2")]),
        "an empty value is no label"
    );

    let mut info = first.clone();
    // Kind, parent and name of the request are ignored: only labels change.
    info.kind = Kind::Committed as i32;
    info.parent = "elsewhere".into();
    info.labels = labels(&[("a", "9"), ("c", "3")]);
    let u = c
        .update(info.clone(), Some(&["labels.a"]))
        .expect("update labels.a");
    assert_eq!(u.labels, labels(&[("a", "9"), ("b", "2")]));
    assert_eq!((u.kind, u.parent.as_str()), (Kind::Active as i32, ""));
    assert_eq!(u.created_at, first.created_at);
    let (t0, t1) = (first.updated_at.expect("t0"), u.updated_at.expect("t1"));
    assert!(
        (t1.seconds, t1.nanos) > (t0.seconds, t0.nanos),
        "updated time moves"
    );
    assert_eq!(c.stat("k").expect("stat").labels, u.labels, "stored");

    let u = c
        .update(info.clone(), Some(&["labels.b"]))
        .expect("update labels.b");
    assert_eq!(
        u.labels,
        labels(&[("a", "9")]),
        "a path without a value removes the label"
    );
    let u = c
        .update(info.clone(), Some(&["labels"]))
        .expect("update labels");
    assert_eq!(u.labels, labels(&[("a", "9"), ("c", "3")]));
    info.labels = labels(&[("z", "26")]);
    let u = c.update(info.clone(), None).expect("update without paths");
    assert_eq!(u.labels, labels(&[("z", "26")]));
    let u = c
        .update(info.clone(), Some(&[]))
        .expect("update with an empty mask");
    assert_eq!(u.labels, labels(&[("z", "26")]));

    code(
        c.update(info.clone(), Some(&["parent"])),
        Code::InvalidArgument,
    );
    code(
        c.update(info.clone(), Some(&["kind"])),
        Code::InvalidArgument,
    );
    info.name = "nope".into();
    code(c.update(info.clone(), None), Code::NotFound);
    info.name = "k".into();
    info.labels = labels(&[("big", &"x".repeat(5000))]);
    code(c.update(info, None), Code::InvalidArgument);
    code(
        c.prepare("k2", "", &[("big", &"x".repeat(5000))]),
        Code::InvalidArgument,
    );
    d.stop();
}

#[test]
fn walk_filters() {
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    c.prepare("base-key", "", &[]).expect("prepare");
    c.commit(
        "base",
        "base-key",
        &[("containerd.io/gc.root", "x"), ("tier", "low")],
    )
    .expect("commit");
    c.prepare("work-1", "base", &[("tier", "high"), ("a.b", "dots")])
        .expect("prepare");
    c.view("view-1", "base", &[("tier", "high")]).expect("view");
    c.prepare("solo", "", &[]).expect("prepare");

    let all = ["base", "solo", "view-1", "work-1"];
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &all),
        (&[""], &all),
        (&["kind==committed"], &["base"]),
        (&["kind==active"], &["solo", "work-1"]),
        (&["kind==view"], &["view-1"]),
        (&["kind!=active"], &["base", "view-1"]),
        (&["name==solo"], &["solo"]),
        (&["name~=^(view|work)-"], &["view-1", "work-1"]),
        (&["name~=/-1$/"], &["view-1", "work-1"]),
        (&["parent==base"], &["view-1", "work-1"]),
        (&["parent==\"\""], &["base", "solo"]),
        (&["parent"], &all),
        (&["labels.tier"], &["base", "view-1", "work-1"]),
        (&["labels.tier==high"], &["view-1", "work-1"]),
        (&["labels.tier!=high"], &["base", "solo"]),
        (&["labels.tier==high,kind==active"], &["work-1"]),
        (&["labels.tier==high,kind==committed"], &[]),
        (&["labels.\"containerd.io/gc.root\""], &["base"]),
        (&["labels.\"a.b\"==dots"], &["work-1"]),
        (&["labels.a.b==dots"], &["work-1"]),
        (
            &["labels.\"containerd.io/gc.root\"", "name==solo"],
            &["base", "solo"],
        ),
        (&["kind==view", "kind==committed"], &["base", "view-1"]),
        (&["name~=["], &[]),
        (&["labels.tier ==  high"], &["view-1", "work-1"]),
    ];
    for (filters, want) in cases {
        assert_eq!(c.walk(filters).expect("walk"), *want, "{filters:?}");
    }
    for bad in [
        "name==",
        "kind=active",
        "labels.",
        "name==a b",
        "name==\"open",
        ",",
        "na@me",
    ] {
        code(c.walk(&[bad]), Code::InvalidArgument);
        code(c.walk(&["kind==view", bad]), Code::InvalidArgument);
    }
    // Walk answers whole records.
    let infos = c.walk_infos(&["name==work-1"]).expect("walk");
    assert_eq!(infos[0].parent, "base");
    assert_eq!(infos[0].kind, Kind::Active as i32);
    assert_eq!(
        infos[0].labels,
        labels(&[("tier", "high"), ("a.b", "dots")])
    );
    d.stop();
}

#[test]
fn cleanup_removes_exactly_what_the_store_does_not_name() {
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    c.prepare("a", "", &[]).expect("prepare");
    c.commit("c", "a", &[]).expect("commit");
    c.prepare("b", "c", &[]).expect("prepare");
    let kept = s.entries();
    for orphan in ["new-5-0", "rm-3", "77", "007", "junk"] {
        fs::create_dir_all(s.snapshots().join(orphan).join("fs/deep")).expect("orphan");
    }
    fs::write(s.snapshots().join("file"), b"x").expect("orphan file");
    // A symlink is removed as itself, never followed.
    let outside = s.root.join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("keep"), b"x").expect("write");
    std::os::unix::fs::symlink(&outside, s.snapshots().join("link")).expect("symlink");
    c.cleanup().expect("cleanup");
    assert_eq!(s.entries(), kept);
    assert!(outside.join("keep").exists(), "cleanup followed a symlink");
    // An orphan named like the next id is skipped by Prepare, not reused.
    let next = kept
        .iter()
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    fs::create_dir(s.snapshots().join(next.to_string())).expect("orphan id");
    let m = c.prepare("d", "", &[]).expect("prepare over an orphan id");
    assert_eq!(id_of(&m[0].source), next + 1);
    c.cleanup().expect("cleanup");
    assert!(!s.snapshots().join(next.to_string()).exists());
    assert!(s.fs(next + 1).is_dir());
    c.cleanup().expect("cleanup is idempotent");
    d.stop();
    assert_eq!(
        s.check_invariant()
            .values()
            .map(|id| id.to_string())
            .collect::<BTreeSet<_>>(),
        s.entries()
    );
}

#[test]
fn root_lock_and_sigterm() {
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let other = s.sock.with_file_name("other.sock");
    let out = Command::new(common::ufs_bin())
        .args(["snapshotter", "--root"])
        .arg(&s.root)
        .arg("--address")
        .arg(&other)
        .stdin(Stdio::null())
        .output()
        .expect("run a second daemon");
    assert!(!out.status.success(), "a second daemon shared the root");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another snapshotter"), "{err}");
    assert!(!other.exists());
    // A second daemon on the same socket (another root) is refused too.
    let out = Command::new(common::ufs_bin())
        .args(["snapshotter", "--root"])
        .arg(s.root.with_file_name("root2"))
        .arg("--address")
        .arg(&s.sock)
        .stdin(Stdio::null())
        .output()
        .expect("run a second daemon");
    assert!(!out.status.success(), "a second daemon took the socket");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running server"));
    d.stop();
    // SIGKILL leaves the socket; the next daemon replaces it.
    let mut d = Daemon::start(&s.root, &s.sock);
    d.kill9();
    assert!(s.sock.exists());
    let mut d = Daemon::start(&s.root, &s.sock);
    Client::connect(&s.sock).walk(&[]).expect("walk");
    d.stop();
}

// ---------------------------------------------------------------------------------------------
// The returned mounts, mounted
// ---------------------------------------------------------------------------------------------

/// A mount made from the snapshotter's answer; unmounted on drop.
struct Mounted {
    target: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !common::force_unmount(&self.target) {
            common::say(&format!("cannot unmount {:?}", self.target));
        }
    }
}

/// Mounts `m` on `target` as containerd would: a `fuse3.ufs` mount through
/// `mount.fuse3 SOURCE TARGET -o OPT... -t ufs` (with the built ufs first in PATH), or, without
/// mount.fuse3, through `ufs SOURCE TARGET -o OPTS`, the command mount.fuse3 runs.
fn mount(m: &Mount, target: &Path) -> Mounted {
    fs::create_dir_all(target).expect("mkdir target");
    assert_eq!(m.r#type, "fuse3.ufs", "only unions are mounted here");
    let bin = common::ufs_bin();
    let mut cmd = match common::which("mount.fuse3") {
        Some(helper) => {
            let dir = bin.parent().expect("bin dir").to_path_buf();
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![dir];
            paths.extend(std::env::split_paths(&path));
            let mut cmd = Command::new(helper);
            cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
            cmd.arg(&m.source).arg(target);
            for o in &m.options {
                cmd.arg("-o").arg(o);
            }
            cmd.arg("-t").arg("ufs");
            cmd
        }
        None => {
            let mut cmd = Command::new(&bin);
            cmd.arg(&m.source)
                .arg(target)
                .arg("-o")
                .arg(m.options.join(","));
            cmd
        }
    };
    let run = common::run_bounded(&mut cmd, common::CMD_TIMEOUT);
    assert!(run.success(), "mounting {m:?} failed: {run:?}");
    let mounted = Mounted {
        target: target.to_path_buf(),
    };
    assert!(common::wait_mounted(target), "{target:?} is not mounted");
    mounted
}

/// The names in `dir`, sorted (read through the mount, no symlink followed).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn mounted_three_level_chain() {
    if common::skip("mounted_three_level_chain") {
        return;
    }
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    let mnt = s.root.with_file_name("mnt");

    // Level 1: no parent, a bind mount of its fs; written directly.
    let m1 = c.prepare("l1", "", &[]).expect("prepare l1");
    let fs1 = PathBuf::from(&m1[0].source);
    fs::write(fs1.join("a"), "one").expect("write");
    fs::write(fs1.join("gone"), "x").expect("write");
    fs::create_dir_all(fs1.join("d")).expect("mkdir");
    fs::write(fs1.join("d/x"), "x").expect("write");
    fs::write(fs1.join("d/y"), "y").expect("write");
    fs::create_dir_all(fs1.join("keep")).expect("mkdir");
    fs::write(fs1.join("keep/k1"), "k").expect("write");
    c.commit("L1", "l1", &[]).expect("commit l1");

    // Level 2: a union over L1; a whiteout, an opaque directory, a copy-up.
    let m2 = c.prepare("l2", "L1", &[]).expect("prepare l2");
    {
        let _m = mount(&m2[0], &mnt);
        fs::write(mnt.join("b"), "two").expect("write b");
        fs::remove_file(mnt.join("gone")).expect("rm gone");
        fs::remove_dir_all(mnt.join("d")).expect("rm d");
        fs::create_dir(mnt.join("d")).expect("mkdir d");
        fs::write(mnt.join("d/new"), "n").expect("write d/new");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("a"))
            .expect("open a");
        std::io::Write::write_all(&mut f, b"+two").expect("append");
    }
    c.commit("L2", "l2", &[]).expect("commit l2");

    // Level 3: a union over L2 and L1.
    let m3 = c.prepare("l3", "L2", &[]).expect("prepare l3");
    let upper3 = PathBuf::from(option(&m3[0], "upperdir").expect("upperdir"));
    {
        let _m = mount(&m3[0], &mnt);
        fs::write(mnt.join("c"), "three").expect("write c");
        assert_eq!(names(&mnt), ["a", "b", "c", "d", "keep"]);
        assert_eq!(names(&mnt.join("d")), ["new"], "d is opaque");
        assert_eq!(names(&mnt.join("keep")), ["k1"]);
        assert_eq!(fs::read_to_string(mnt.join("a")).expect("a"), "one+two");
        assert_eq!(fs::read_to_string(mnt.join("b")).expect("b"), "two");
        assert!(
            fs::symlink_metadata(mnt.join("gone")).is_err(),
            "the whiteout hides gone"
        );
    }
    assert_eq!(names(&upper3), ["c"], "level 3 holds only its own change");
    assert_eq!(
        fs::read_to_string(fs1.join("a")).expect("a"),
        "one",
        "L1 is untouched"
    );
    let (inodes, _) = c.usage("l3").expect("usage");
    assert_eq!(inodes, 2, "fs and c");

    // A view of two parents: a read-only union.
    let v = c.view("v", "L2", &[]).expect("view");
    assert_eq!(v[0].r#type, "fuse3.ufs");
    {
        let _m = mount(&v[0], &mnt);
        assert_eq!(names(&mnt), ["a", "b", "d", "keep"]);
        let err = fs::write(mnt.join("z"), "z").expect_err("a view is read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    d.stop();
}

#[test]
fn mapping_labels_reach_the_mount() {
    if common::skip("mapping_labels_reach_the_mount") {
        return;
    }
    let s = Setup::new();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    let mnt = s.root.with_file_name("mnt");
    let m1 = c.prepare("l1", "", &[]).expect("prepare l1");
    let fs1 = PathBuf::from(&m1[0].source);
    fs::write(fs1.join("root-owned"), "r").expect("write");
    fs::write(fs1.join("user-owned"), "u").expect("write");
    std::os::unix::fs::lchown(fs1.join("user-owned"), Some(5), Some(7)).expect("chown");
    c.commit("L1", "l1", &[]).expect("commit");

    let before = s.entries();
    let bad = [("containerd.io/snapshot/uidmapping", "0:100000")];
    code(c.prepare("bad", "L1", &bad), Code::InvalidArgument);
    assert_eq!(s.entries(), before, "a refused Prepare creates nothing");

    let map = [
        (
            "containerd.io/snapshot/uidmapping",
            "0:100000:1,1:100001:65535",
        ),
        ("containerd.io/snapshot/gidmapping", "0:200000:65536"),
    ];
    let m = c.prepare("c", "L1", &map).expect("prepare with mappings");
    assert_eq!(m[0].r#type, "fuse3.ufs");
    assert_eq!(
        option(&m[0], "uidmapping"),
        Some("0:100000:1:1:100001:65535")
    );
    assert_eq!(option(&m[0], "gidmapping"), Some("0:200000:65536"));
    assert_eq!(c.mounts("c").expect("mounts"), m);
    {
        let _m = mount(&m[0], &mnt);
        let owner = |p: &str| {
            let md = fs::symlink_metadata(mnt.join(p)).expect("lstat");
            (md.uid(), md.gid())
        };
        assert_eq!(owner("root-owned"), (100000, 200000));
        assert_eq!(owner("user-owned"), (100005, 200007));
        assert_eq!(
            owner(""),
            (100000, 200000),
            "the root keeps the image's owner, mapped"
        );
    }
    // A view of one parent with a mapping cannot be a bind mount.
    let v = c.view("v", "L1", &map[..1]).expect("view with a mapping");
    assert_eq!(v[0].r#type, "fuse3.ufs");
    assert_eq!(
        v[0].options,
        [
            "index=off".to_string(),
            "metacopy=off".to_string(),
            format!("lowerdir={}", fs1.display()),
            "uidmapping=0:100000:1:1:100001:65535".to_string()
        ]
    );
    {
        let _m = mount(&v[0], &mnt);
        let md = fs::symlink_metadata(mnt.join("user-owned")).expect("lstat");
        assert_eq!((md.uid(), md.gid()), (100005, 7));
    }
    d.stop();
}

// ---------------------------------------------------------------------------------------------
// Crash consistency
// ---------------------------------------------------------------------------------------------

/// After a crash: checks the invariant on the store, then that Cleanup removes exactly the
/// entries of `snapshots/` that no record names, and nothing else.
fn check_after_crash(s: &Setup) -> BTreeSet<String> {
    let ids = s.check_invariant();
    let named: BTreeSet<String> = ids.values().map(|id| id.to_string()).collect();
    let entries = s.entries();
    let orphans: BTreeSet<String> = entries.difference(&named).cloned().collect();
    let mut d = Daemon::start(&s.root, &s.sock);
    let mut c = Client::connect(&s.sock);
    let listed: BTreeSet<String> = c.walk(&[]).expect("walk").into_iter().collect();
    assert_eq!(
        listed,
        ids.keys().cloned().collect(),
        "Walk lists every record"
    );
    for name in ids.keys() {
        c.stat(name).expect("stat");
    }
    c.cleanup().expect("cleanup");
    d.stop();
    assert_eq!(
        s.entries(),
        named,
        "Cleanup removes exactly the orphans {orphans:?}"
    );
    s.check_invariant();
    orphans
}

#[test]
fn crash_at_each_point() {
    for point in ufs::snapshotter::CRASH_POINTS {
        let s = Setup::new();
        {
            let mut d = Daemon::start(&s.root, &s.sock);
            let mut c = Client::connect(&s.sock);
            c.prepare("base-key", "", &[]).expect("prepare");
            c.commit("base", "base-key", &[]).expect("commit");
            c.prepare("k", "base", &[]).expect("prepare k");
            d.stop();
        }
        let ids_before = s.check_invariant();
        let k_id = ids_before["k"];
        let mut d = Daemon::start_with(&s.root, &s.sock, Some(point));
        let mut c = Client::connect(&s.sock);
        let op = point.split('-').next().unwrap_or("");
        let result = match op {
            "prepare" => c.prepare("new", "base", &[]).map(drop),
            "commit" => c.commit("k-done", "k", &[]),
            "remove" => c.remove("k"),
            other => panic!("unknown operation {other}"),
        };
        assert!(result.is_err(), "{point}: the call answered {result:?}");
        let status = d.wait_exit();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGABRT),
            "{point}: the daemon did not abort ({status})"
        );
        drop(c);
        let ids = s.check_invariant();
        let orphans = check_after_crash(&s);
        let next = k_id + 1;
        let (want_names, want_orphans): (&[&str], Vec<String>) = match *point {
            "prepare-after-mkdir" => (&["base", "k"], vec![format!("new-{next}-0")]),
            "prepare-after-rename" => (&["base", "k"], vec![next.to_string()]),
            "prepare-after-commit" => (&["base", "k", "new"], vec![]),
            "commit-after-usage" => (&["base", "k"], vec![]),
            "commit-after-commit" => (&["base", "k-done"], vec![]),
            "remove-after-commit" => (&["base"], vec![k_id.to_string()]),
            "remove-after-rename" => (&["base"], vec![format!("rm-{k_id}")]),
            "remove-after-delete" => (&["base"], vec![]),
            other => panic!("no expectation for {other}"),
        };
        assert_eq!(
            ids.keys().collect::<Vec<_>>(),
            want_names,
            "{point}: records"
        );
        assert_eq!(
            orphans,
            want_orphans.into_iter().collect::<BTreeSet<_>>(),
            "{point}: orphans"
        );
        if *point == "commit-after-commit" {
            assert_eq!(ids["k-done"], k_id, "Commit keeps the directory");
        }
        // The daemon goes on after the crash: the interrupted call can be made again.
        let mut d = Daemon::start(&s.root, &s.sock);
        let mut c = Client::connect(&s.sock);
        match op {
            "prepare" if !ids.contains_key("new") => {
                let m = c.prepare("new", "base", &[]).expect("prepare again");
                assert!(id_of(option(&m[0], "upperdir").expect("upper")) > k_id);
            }
            "commit" if ids.contains_key("k") => c.commit("k-done", "k", &[]).expect("again"),
            "remove" => code(c.remove("k"), Code::NotFound),
            _ => {}
        }
        d.stop();
        s.check_invariant();
    }
}

/// SIGKILL at random moments while a client runs Prepare, View, Commit and Remove in a loop.
#[test]
fn kill_at_random_moments() {
    let s = Setup::new();
    let seed = std::env::var("UFS_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    common::say(&format!(
        "kill_at_random_moments: seed {seed} (UFS_TEST_SEED)"
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut total_orphans = 0;
    for round in 0..12 {
        let mut d = Daemon::start(&s.root, &s.sock);
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client_seed: u64 = rng.random();
        let worker = {
            let (done, stop, sock) = (done.clone(), stop.clone(), s.sock.clone());
            std::thread::spawn(move || busy_client(&sock, client_seed, round, &done, &stop))
        };
        // Kill once the client has made a random number of calls: the next call is in flight.
        let target = rng.random_range(1..40);
        let reached = common::wait_until(START_TIMEOUT, || {
            done.load(Ordering::Relaxed) >= target || worker.is_finished()
        });
        assert!(reached, "round {round}: the client made no progress");
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        worker.join().expect("client thread");
        let ids = s.check_invariant();
        let orphans = check_after_crash(&s);
        total_orphans += orphans.len();
        common::say(&format!(
            "round {round}: {} calls, {} records, orphans {orphans:?}",
            done.load(Ordering::Relaxed),
            ids.len()
        ));
    }
    common::say(&format!(
        "kill_at_random_moments: {total_orphans} orphans cleaned up"
    ));
}

/// Random calls until the daemon dies or `stop` is set; counts the calls answered.
fn busy_client(sock: &Path, seed: u64, round: usize, done: &AtomicUsize, stop: &AtomicBool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Client::connect(sock);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let names = c.walk(&[]);
        let Ok(names) = names else { return };
        let committed: Vec<String> = c.walk(&["kind==committed"]).unwrap_or_default();
        let active: Vec<String> = c.walk(&["kind==active"]).unwrap_or_default();
        let pick = |rng: &mut rand::rngs::StdRng, v: &[String]| -> String {
            if v.is_empty() {
                String::new()
            } else {
                v[rng.random_range(0..v.len())].clone()
            }
        };
        n += 1;
        let key = format!("r{round}-{n}");
        let result = match rng.random_range(0..10) {
            0..=2 => {
                let parent = if rng.random_bool(0.7) {
                    pick(&mut rng, &committed)
                } else {
                    String::new()
                };
                c.prepare(&key, &parent, &[]).map(|m| {
                    // Some content, so that Commit has something to measure.
                    if let Some(upper) = m.first().and_then(|m| {
                        option(m, "upperdir")
                            .map(String::from)
                            .or(Some(m.source.clone()))
                    }) {
                        let _ = fs::write(Path::new(&upper).join("f"), &key); // may race a kill
                    }
                })
            }
            3 => {
                let parent = pick(&mut rng, &committed);
                c.view(&key, &parent, &[]).map(drop)
            }
            4..=6 => {
                let a = pick(&mut rng, &active);
                c.commit(&format!("{a}-c"), &a, &[]).map(drop)
            }
            _ => {
                let victim = pick(&mut rng, &names);
                c.remove(&victim)
            }
        };
        if let Err(e) = result
            && matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            )
            && c.walk(&[]).is_err()
        {
            return; // the daemon is gone
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Regression: a daemon restarted while the root's lock was still held for a moment (the
/// killed predecessor exiting, or a forked child not yet past its exec) refused to start at
/// once; it now waits a short grace. The lock is released only once the new daemon has opened
/// the root to lock it.
#[test]
fn root_lock_held_for_a_moment_is_waited_for() {
    let s = Setup::new();
    fs::create_dir_all(&s.root).expect("mkdir root");
    let holder = fs::File::open(&s.root).expect("open root");
    holder.lock().expect("lock the root");
    let mut child = Command::new(common::ufs_bin())
        .args(["snapshotter", "--root"])
        .arg(&s.root)
        .arg("--address")
        .arg(&s.sock)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let root = s.root.canonicalize().expect("root");
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", child.id()));
    let opened = common::wait_until(START_TIMEOUT, || {
        fs::read_dir(&fd_dir).is_ok_and(|fds| {
            fds.filter_map(|e| e.ok())
                .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == root))
        })
    });
    drop(holder);
    assert!(opened, "the daemon never opened its root");
    let up = common::wait_until(START_TIMEOUT, || {
        matches!(child.try_wait(), Ok(Some(_)))
            || std::os::unix::net::UnixStream::connect(&s.sock).is_ok()
    });
    let exited = child.try_wait().ok().flatten();
    let mut d = Daemon {
        child: Some(child),
        sock: s.sock.clone(),
    };
    assert!(
        up && exited.is_none(),
        "the daemon gave up on the lock: {exited:?}"
    );
    Client::connect(&s.sock).walk(&[]).expect("walk");
    d.stop();
}
