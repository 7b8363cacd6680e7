//! `ufs snapshotter`: a containerd snapshotter serving containerd's snapshots API
//! (`containerd.services.snapshots.v1.Snapshots`) on a unix socket, as a proxy plugin.
//!
//! It behaves as containerd's overlay snapshotter does (the same kinds, parent rules, error
//! classes, labels, usage and directory layout), and hands out `fuse3.ufs` mounts where that
//! one hands out `overlay` mounts. The gRPC server is containerd's own crate
//! (`containerd-snapshots`); [`Service`] is the thin glue implementing its trait, which runs
//! each call of the core, [`Snapshots`], on tokio's blocking pool. The core returns
//! [`Result`]s whose error classes map to gRPC codes in one place (error.rs).
//!
//! Crash consistency: the store (store.rs) is the truth and every mutation orders its steps so
//! that a crash at any point leaves only directories the store does not name, never a record
//! without its directory:
//! - Prepare/View: build `snapshots/new-*`, rename it to `snapshots/<id>` (fsynced), commit
//!   the record. An id whose directory a crash left behind is skipped, never reused.
//! - Commit: measure, then commit the new record; no directory changes.
//! - Remove: commit the record's removal, rename `<id>` to `rm-<id>`, delete it.
//! - Cleanup deletes every entry of `snapshots/` the store does not name.
//!
//! Setting `UFS_SNAPSHOTTER_CRASH_AT=POINT` makes the daemon abort at that point (see
//! [`crash_point`]), so that tests can crash it exactly between two steps.

pub mod error;
pub mod filter;
pub mod layout;
pub mod mounts;
pub mod store;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Usage, tonic};

pub use error::{Error, Result};
use layout::{Layout, parse_id};
use store::{Kind, Record, Tables};

/// How long [`Snapshots::open`] waits for another process to release the root's lock.
pub const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The environment variable naming a fault-injection point.
pub const CRASH_ENV: &str = "UFS_SNAPSHOTTER_CRASH_AT";

/// The points [`crash_point`] knows, in the order each operation passes them.
pub const CRASH_POINTS: &[&str] = &[
    "prepare-after-mkdir",
    "prepare-after-rename",
    "prepare-after-commit",
    "commit-after-usage",
    "commit-after-commit",
    "remove-after-commit",
    "remove-after-rename",
    "remove-after-delete",
];

/// Aborts the process (as a `kill -9` would end it: no destructor, no flush) when
/// `UFS_SNAPSHOTTER_CRASH_AT` names `point`. Unset, it costs one cached lookup.
pub fn crash_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_ENV).ok());
    if at.as_deref() == Some(point) {
        log::error!("{CRASH_ENV}={point}: aborting");
        std::process::abort();
    }
}

/// The core: the store, the directories and the lock that keeps other daemons out.
pub struct Snapshots {
    db: redb::Database,
    layout: Layout,
    /// `flock`ed for the daemon's lifetime: two daemons on one root would each believe their
    /// store to be the whole truth and delete each other's directories at Cleanup.
    _lock: File,
}

impl Snapshots {
    /// Opens (creating it if needed) the snapshotter rooted at `root`.
    pub fn open(root: &Path) -> Result<Snapshots> {
        let unknown =
            |what: String| move |e: std::io::Error| Error::Unknown(format!("{what}: {e}"));
        std::fs::create_dir_all(root).map_err(unknown(format!("creating {root:?}")))?;
        let root = root
            .canonicalize()
            .map_err(unknown(format!("resolving {root:?}")))?;
        let text = root.to_str().unwrap_or(",");
        if text.contains([',', ':', '\\']) {
            return Err(Error::InvalidArgument(format!(
                "the root {root:?} must be UTF-8 without ',', ':' or '\\': its paths go into \
                 mount options"
            )));
        }
        let lock = File::open(&root).map_err(unknown(format!("opening {root:?}")))?;
        // A daemon restarted right after its predecessor was killed may find the lock still
        // held for a moment (by the exiting process, or by a child forked before an exec
        // closed the descriptor); only a lock held past the grace period means another daemon.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::FailedPrecondition(format!(
                        "{root:?} is in use by another snapshotter"
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(unknown(format!("locking {root:?}"))(e));
                }
            }
        }
        let layout = Layout::open(&root)?;
        let db = redb::Database::create(root.join("metadata.redb"))
            .map_err(Error::store("opening metadata.redb"))?;
        store::init(&db)?;
        Ok(Snapshots {
            db,
            layout,
            _lock: lock,
        })
    }

    fn read(&self) -> Result<redb::ReadOnlyTable<&'static str, &'static str>> {
        let txn = self.db.begin_read().map_err(Error::store("begin"))?;
        txn.open_table(store::SNAPSHOTS)
            .map_err(Error::store("open table"))
    }

    fn begin(&self) -> Result<redb::WriteTransaction> {
        self.db.begin_write().map_err(Error::store("begin"))
    }

    fn commit(txn: redb::WriteTransaction) -> Result<()> {
        txn.commit().map_err(Error::store("commit"))
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        let table = self.read()?;
        match store::get(&table, key)? {
            Some(record) => Ok(record.info(key)),
            None => Err(Error::NotFound(format!("snapshot {key:?} does not exist"))),
        }
    }

    /// containerd's `UpdateInfo`: only labels change; with field paths, `labels` replaces
    /// them all and `labels.KEY` sets (or, with no value, removes) one; without, the labels
    /// are replaced.
    pub fn update(&self, info: Info, paths: Option<Vec<String>>) -> Result<Info> {
        store::check_labels(&info.labels)?;
        let txn = self.begin()?;
        let updated = {
            let mut t = Tables::open(&txn)?;
            let name = info.name.as_str();
            let Some(mut record) = t.get(name)? else {
                return Err(Error::NotFound(format!("snapshot {name:?} does not exist")));
            };
            let mut labels = record.labels.clone();
            match paths.filter(|p| !p.is_empty()) {
                Some(paths) => {
                    for path in paths {
                        if let Some(key) = path.strip_prefix("labels.") {
                            match info.labels.get(key) {
                                Some(v) => labels.insert(key.to_string(), v.clone()),
                                None => labels.remove(key),
                            };
                        } else if path == "labels" {
                            labels = info.labels.clone();
                        } else {
                            return Err(Error::InvalidArgument(format!(
                                "cannot update {path:?} field on snapshot {name:?}"
                            )));
                        }
                    }
                }
                None => labels = info.labels.clone(),
            }
            record.labels = store::stored_labels(labels);
            record.updated = SystemTime::now();
            t.put(name, &record)?;
            record.info(name)
        };
        Self::commit(txn)?;
        Ok(updated)
    }

    /// An active snapshot's usage is measured now; the others' was measured at Commit (a
    /// view's is zero, as containerd's overlay reports it).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let record = {
            let table = self.read()?;
            store::get(&table, key)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key:?} does not exist")))?
        };
        if record.kind == Kind::Active {
            return self.layout.disk_usage(record.id);
        }
        Ok(Usage {
            inodes: record.inodes,
            size: record.size,
        })
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let table = self.read()?;
        let Some(record) = store::get(&table, key)? else {
            return Err(Error::NotFound(format!("snapshot {key:?} does not exist")));
        };
        if record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "requested snapshot {key:?} not active or view"
            )));
        }
        let parents = store::parent_ids(&table, &record)?;
        mounts::mounts(
            &self.layout,
            record.kind,
            record.id,
            &parents,
            &record.labels,
        )
    }

    /// Prepare (`kind` active) or View (`kind` view).
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        store::check_name("key", key)?;
        store::check_labels(&labels)?;
        let labels = store::stored_labels(labels);
        // Refused before anything is created: a bad mapping label must fail Prepare, not the
        // container's mount later.
        mounts::mapping_options(&labels)?;
        let txn = self.begin()?;
        let (record, parents) = {
            let mut t = Tables::open(&txn)?;
            let mut parents = Vec::new();
            if !parent.is_empty() {
                let Some(p) = t.get(parent)? else {
                    return Err(Error::NotFound(format!("missing parent {parent:?}")));
                };
                if p.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not committed snapshot"
                    )));
                }
                parents.push(p.id);
                parents.extend(store::parent_ids(&t.snapshots, &p)?);
            }
            if t.get(key)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            // A crash between the rename and the commit leaves `snapshots/<id>` for an id the
            // store never handed out: skip it rather than fail on it forever.
            let mut id = t.sequence()? + 1;
            while self.layout.exists(OsStr::new(&id.to_string()))? {
                log::warn!("snapshots/{id} is an orphan (Cleanup removes it); skipping id {id}");
                id += 1;
            }
            let now = SystemTime::now();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                inodes: 0,
                size: 0,
            };
            t.set_sequence(id)?;
            t.put(key, &record)?;
            t.link_child(parent, key)?;
            (record, parents)
        };
        let owner = match parents.first() {
            Some(p) => Some(self.layout.fs_owner(*p)?),
            None => None,
        };
        let new = self
            .layout
            .create_new(record.id, kind == Kind::Active, owner)
            .inspect_err(|e| log::warn!("prepare {key:?}: {e}"))?;
        crash_point("prepare-after-mkdir");
        let name = OsString::from(record.id.to_string());
        if let Err(e) = self.layout.rename(&new, &name) {
            self.discard(&new);
            return Err(e);
        }
        crash_point("prepare-after-rename");
        if let Err(e) = Self::commit(txn) {
            self.discard(&name);
            return Err(e);
        }
        crash_point("prepare-after-commit");
        mounts::mounts(&self.layout, kind, record.id, &parents, &record.labels)
    }

    /// Deletes a directory this call made and the store does not name; a failure leaves an
    /// orphan for Cleanup, so it is logged, not returned.
    fn discard(&self, name: &OsStr) {
        if let Err(e) = self.layout.remove_tree(name) {
            log::warn!("{e} (Cleanup will retry)");
        }
    }

    pub fn commit_active(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        store::check_name("name", name)?;
        store::check_labels(&labels)?;
        let txn = self.begin()?;
        {
            let mut t = Tables::open(&txn)?;
            if t.get(name)?.is_some() {
                return Err(Error::AlreadyExists(format!("committed snapshot {name:?}")));
            }
            let Some(active) = t.get(key)? else {
                return Err(Error::NotFound(format!(
                    "failed to get active snapshot {key:?}"
                )));
            };
            if active.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            let usage = self.layout.disk_usage(active.id)?;
            crash_point("commit-after-usage");
            let now = SystemTime::now();
            let committed = Record {
                kind: Kind::Committed,
                // containerd's store: "replace labels, do not inherit".
                labels: store::stored_labels(labels),
                created: now,
                updated: now,
                inodes: usage.inodes,
                size: usage.size,
                ..active.clone()
            };
            t.delete(key)?;
            t.unlink_child(&active.parent, key)?;
            t.put(name, &committed)?;
            t.link_child(&active.parent, name)?;
        }
        Self::commit(txn)?;
        crash_point("commit-after-commit");
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let txn = self.begin()?;
        let id = {
            let mut t = Tables::open(&txn)?;
            let Some(record) = t.get(key)? else {
                return Err(Error::NotFound(format!("snapshot {key:?}")));
            };
            if t.has_children(key)? {
                return Err(Error::FailedPrecondition(
                    "cannot remove snapshot with child".into(),
                ));
            }
            t.delete(key)?;
            t.unlink_child(&record.parent, key)?;
            record.id
        };
        // The record goes first: from here on the directory is an orphan, which a crash can
        // leave behind but which no record names.
        Self::commit(txn)?;
        crash_point("remove-after-commit");
        let name = OsString::from(id.to_string());
        let doomed = OsString::from(format!("rm-{id}"));
        if let Err(e) = self.layout.rename(&name, &doomed) {
            // The snapshot is gone either way; its directory waits for Cleanup.
            log::warn!("remove {key:?}: {e} (Cleanup will retry)");
            return Ok(());
        }
        crash_point("remove-after-rename");
        self.discard(&doomed);
        crash_point("remove-after-delete");
        Ok(())
    }

    /// Every snapshot matching `filters` (containerd's syntax, see filter.rs).
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filter = filter::parse_all(filters).map_err(Error::InvalidArgument)?;
        let table = self.read()?;
        let mut out = Vec::new();
        for (name, record) in store::all(&table)? {
            let matched = filter.matches(filter::snapshot_fields(
                &name,
                record.kind.word(),
                &record.parent,
                &record.labels,
            ));
            if matched {
                out.push(record.info(&name));
            }
        }
        Ok(out)
    }

    /// Deletes every entry of `snapshots/` no record names: what crashes and failed deletes
    /// left. It holds the write transaction, so no Prepare is half-way meanwhile.
    pub fn cleanup(&self) -> Result<Vec<OsString>> {
        let txn = self.begin()?;
        let ids: std::collections::HashSet<u64> = {
            let t = Tables::open(&txn)?;
            store::all(&t.snapshots)?
                .into_iter()
                .map(|(_, r)| r.id)
                .collect()
        };
        let mut removed = Vec::new();
        let mut first_error = None;
        for name in self.layout.entries()? {
            if parse_id(&name).is_some_and(|id| ids.contains(&id)) {
                continue;
            }
            log::info!("cleanup: removing snapshots/{}", name.to_string_lossy());
            // One orphan that cannot go (still mounted, say) must not keep the others.
            match self.layout.remove_tree(&name) {
                Ok(()) => removed.push(name),
                Err(e) => {
                    log::warn!("cleanup: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        // Nothing was written: dropping the transaction only releases the lock.
        drop(txn);
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// The names the store gives directories, for consistency checks: `(name, id)`.
    pub fn ids(&self) -> Result<Vec<(String, u64)>> {
        let table = self.read()?;
        Ok(store::all(&table)?
            .into_iter()
            .map(|(n, r)| (n, r.id))
            .collect())
    }
}

/// The gRPC glue: each call runs the core on the blocking pool (the core does file-system I/O
/// and fsyncs) and maps its error to a status.
pub struct Service {
    core: Arc<Snapshots>,
}

impl Service {
    pub fn new(core: Snapshots) -> Service {
        Service {
            core: Arc::new(core),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Snapshots) -> Result<T> + Send + 'static,
    ) -> std::result::Result<T, tonic::Status> {
        let core = self.core.clone();
        match tokio::task::spawn_blocking(move || call(&core)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, Error::Unknown(_)) {
                    log::warn!("{e}");
                } else {
                    log::debug!("{e}");
                }
                Err(e.into())
            }
            Err(e) => {
                log::error!("a snapshotter call failed: {e}");
                Err(tonic::Status::internal(format!("the call failed: {e}")))
            }
        }
    }
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = tonic::Status;

    async fn stat(&self, key: String) -> std::result::Result<Info, Self::Error> {
        log::debug!("stat {key:?}");
        self.run(move |c| c.stat(&key)).await
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> std::result::Result<Info, Self::Error> {
        log::debug!("update {:?} {fieldpaths:?}", info.name);
        self.run(move |c| c.update(info, fieldpaths)).await
    }

    async fn usage(&self, key: String) -> std::result::Result<Usage, Self::Error> {
        log::debug!("usage {key:?}");
        self.run(move |c| c.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> std::result::Result<Vec<Mount>, Self::Error> {
        log::debug!("mounts {key:?}");
        self.run(move |c| c.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<Mount>, Self::Error> {
        log::debug!("prepare {key:?} parent {parent:?}");
        self.run(move |c| c.create(Kind::Active, &key, &parent, labels))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<Vec<Mount>, Self::Error> {
        log::debug!("view {key:?} parent {parent:?}");
        self.run(move |c| c.create(Kind::View, &key, &parent, labels))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> std::result::Result<(), Self::Error> {
        log::debug!("commit {key:?} as {name:?}");
        self.run(move |c| c.commit_active(&name, &key, labels))
            .await
    }

    async fn remove(&self, key: String) -> std::result::Result<(), Self::Error> {
        log::debug!("remove {key:?}");
        self.run(move |c| c.remove(&key)).await
    }

    async fn clear(&self) -> std::result::Result<(), Self::Error> {
        log::debug!("cleanup");
        self.run(|c| c.cleanup().map(drop)).await
    }

    type InfoStream =
        tokio_stream::Iter<std::vec::IntoIter<std::result::Result<Info, Self::Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> std::result::Result<Self::InfoStream, Self::Error> {
        log::debug!("walk {filters:?}");
        let infos = self.run(move |c| c.walk(&filters)).await?;
        Ok(tokio_stream::iter(
            infos.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }
}

/// Serves the snapshotter rooted at `root` on the unix socket `address` until SIGTERM or
/// SIGINT, then removes the socket. `on_ready` runs once the socket accepts connections.
pub fn serve(
    root: &Path,
    address: &Path,
    on_ready: impl FnOnce(),
) -> std::result::Result<(), String> {
    let core = Snapshots::open(root).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve_on(core, address.to_path_buf(), on_ready))
}

async fn serve_on(
    core: Snapshots,
    address: PathBuf,
    on_ready: impl FnOnce(),
) -> std::result::Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    prepare_socket_path(&address).await?;
    let listener = tokio::net::UnixListener::bind(&address)
        .map_err(|e| format!("cannot listen on {address:?}: {e}"))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signals: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signals: {e}"))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
    };
    let service = containerd_snapshots::server(Arc::new(Service::new(core)));
    log::info!("serving snapshots on {}", address.display());
    on_ready();
    // Not a graceful shutdown: containerd keeps its connection open, so waiting for the
    // connections to close would wait for containerd. Dropping the server cuts the calls in
    // flight; a mutation already running on the blocking pool still runs to its end, because
    // dropping the runtime waits for those tasks.
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    let result = tokio::select! {
        r = server => r,
        () = shutdown => Ok(()),
    };
    if let Err(e) = std::fs::remove_file(&address) {
        log::warn!("cannot remove {address:?}: {e}");
    }
    result.map_err(|e| format!("serving on {address:?}: {e}"))
}

/// Removes a socket a killed daemon left at `address`, and refuses one that still answers.
async fn prepare_socket_path(address: &Path) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir:?}: {e}"))?;
    }
    match std::fs::symlink_metadata(address) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{address:?}: {e}")),
        Ok(m) if !m.file_type().is_socket() => {
            Err(format!("{address:?} exists and is not a socket"))
        }
        Ok(_) => {
            if tokio::net::UnixStream::connect(address).await.is_ok() {
                return Err(format!("{address:?} is in use by a running server"));
            }
            std::fs::remove_file(address).map_err(|e| format!("removing stale {address:?}: {e}"))
        }
    }
}
