//! `cargo bench --bench snapshotter`: the latency of `ufs snapshotter`'s calls over its socket.
//!
//! Starts `target/release/ufs snapshotter` on a temporary root, then times, one call at a time
//! from one client: Prepare (no parent, and on a committed parent), Commit of a small upper
//! (one 4 KiB file: the measured Usage walk plus the store commit), Stat, Mounts, a Walk over
//! every snapshot with and without a filter, and Remove. Every mutation commits a redb
//! transaction (fsync), so the numbers depend on the disk under /tmp. Prints a Markdown table of
//! the median and the 90th percentile per call. `UFS_BENCH_N` sets the number of chains (200).
//! Run without `--bench` (`cargo test --benches`), it prints `SKIP` and exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill(); // already gone is fine
        let _ = self.0.wait();
    }
}

fn ufs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ufs"))
}

fn connect(rt: &tokio::runtime::Runtime, sock: &Path) -> SnapshotsClient<Channel> {
    let sock = sock.to_path_buf();
    let channel = rt
        .block_on(async move {
            Endpoint::try_from("http://[::]:0")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    tokio::net::UnixStream::connect(sock.clone())
                }))
                .await
        })
        .expect("connect");
    SnapshotsClient::new(channel)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("SKIP: run with cargo bench --bench snapshotter");
        return;
    }
    let n: usize = std::env::var("UFS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::Builder::new()
        .prefix("ufs-bench-snap")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let root = tmp.path().join("root");
    let sock = tmp.path().join("snap.sock");
    let _daemon = Daemon(
        Command::new(ufs_bin())
            .arg("snapshotter")
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&sock)
            .stdin(Stdio::null())
            .spawn()
            .expect("start ufs snapshotter"),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = connect(&rt, &sock);
    let mut times: Vec<(&str, Vec<Duration>)> = [
        "Prepare (no parent)",
        "Commit (one 4 KiB file)",
        "Prepare (on a parent)",
        "Stat",
        "Mounts",
        "Walk (all)",
        "Walk (kind==committed)",
        "Remove (active)",
        "Remove (committed)",
    ]
    .into_iter()
    .map(|name| (name, Vec::new()))
    .collect();
    let mut time = |i: usize, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        times[i].1.push(t.elapsed());
    };
    let s = String::from;
    for k in 0..n {
        let (key, name, child) = (format!("k{k}"), format!("c{k}"), format!("p{k}"));
        let mut mounts = Vec::new();
        time(0, &mut || {
            mounts = rt
                .block_on(c.prepare(PrepareSnapshotRequest {
                    snapshotter: s("ufs"),
                    key: key.clone(),
                    parent: String::new(),
                    labels: HashMap::new(),
                }))
                .expect("prepare")
                .into_inner()
                .mounts;
        });
        let upper = PathBuf::from(&mounts[0].source);
        std::fs::write(upper.join("f"), [7u8; 4096]).expect("write");
        time(1, &mut || {
            rt.block_on(c.commit(CommitSnapshotRequest {
                snapshotter: s("ufs"),
                name: name.clone(),
                key: key.clone(),
                labels: HashMap::new(),
            }))
            .expect("commit");
        });
        time(2, &mut || {
            rt.block_on(c.prepare(PrepareSnapshotRequest {
                snapshotter: s("ufs"),
                key: child.clone(),
                parent: name.clone(),
                labels: HashMap::new(),
            }))
            .expect("prepare");
        });
        time(3, &mut || {
            rt.block_on(c.stat(StatSnapshotRequest {
                snapshotter: s("ufs"),
                key: child.clone(),
            }))
            .expect("stat");
        });
        time(4, &mut || {
            rt.block_on(c.mounts(MountsRequest {
                snapshotter: s("ufs"),
                key: child.clone(),
            }))
            .expect("mounts");
        });
        for (i, filters) in [(5, vec![]), (6, vec![s("kind==committed")])] {
            time(i, &mut || {
                rt.block_on(async {
                    let mut st = c
                        .list(ListSnapshotsRequest {
                            snapshotter: s("ufs"),
                            filters: filters.clone(),
                        })
                        .await
                        .expect("list")
                        .into_inner();
                    while st.message().await.expect("message").is_some() {}
                });
            });
        }
        // Remove every other chain, so that the store grows to n/2 chains meanwhile.
        if k % 2 == 1 {
            for (i, key) in [(7, &child), (8, &name)] {
                time(i, &mut || {
                    rt.block_on(c.remove(RemoveSnapshotRequest {
                        snapshotter: s("ufs"),
                        key: key.clone(),
                    }))
                    .expect("remove");
                });
            }
        }
    }
    println!(
        "| call ({n} chains, up to {} snapshots) | median | p90 |",
        n
    );
    println!("|---|---|---|");
    for (name, mut v) in times {
        let (p50, p90) = (percentile(&mut v, 0.5), percentile(&mut v, 0.9));
        println!(
            "| {name} | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p90.as_secs_f64() * 1e3
        );
    }
}
