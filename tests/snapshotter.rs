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
        [format!(
            "lowerdir={}:{}",
            s.fs(p2_id).display(),
            s.fs(a_id).display()
        )]
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
