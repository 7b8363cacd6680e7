//! The metadata store: one record per snapshot, in an embedded transactional database (redb).
//!
//! Tables:
//! - `snapshots`: key or name -> [`Record`] as JSON;
//! - `children`: `parent NUL child` -> nothing, so that Remove finds children with one range
//!   read (containerd's bolt store keeps the same back links);
//! - `meta`: `sequence` -> the last id handed out.
//!
//! The store is the truth: a snapshot exists when its record is committed. A committed
//! transaction survives a crash (redb's commit is atomic and durable), an uncommitted one
//! vanishes whole. redb allows one write transaction at a time, and the snapshotter holds it
//! across each whole mutation, directory steps included (as containerd's overlay snapshotter
//! holds bolt's): that is the single-writer lock. Readers (Stat, Walk, Mounts, Usage) read a
//! snapshot of the store and never wait for it.

use std::collections::HashMap;
use std::time::SystemTime;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

pub const SNAPSHOTS: TableDefinition<&str, &str> = TableDefinition::new("snapshots");
pub const CHILDREN: TableDefinition<&str, u8> = TableDefinition::new("children");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SEQUENCE: &str = "sequence";

/// A snapshot's kind. Only active and view snapshots are created; Commit makes a committed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The word Walk filters compare `kind` with (containerd's `adaptSnapshot`).
    pub fn word(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    pub fn to_api(self) -> containerd_snapshots::Kind {
        match self {
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        }
    }
}

/// One snapshot; its name is the table's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Names `snapshots/<id>`; kept by Commit, never reused.
    pub id: u64,
    pub kind: Kind,
    /// The parent's name, "" for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Measured at Commit (committed snapshots only).
    pub inodes: i64,
    pub size: i64,
}

impl Record {
    pub fn info(&self, name: &str) -> containerd_snapshots::Info {
        containerd_snapshots::Info {
            kind: self.kind.to_api(),
            name: name.to_string(),
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created_at: self.created,
            updated_at: self.updated,
        }
    }
}

fn decode(name: &str, json: &str) -> Result<Record> {
    serde_json::from_str(json).map_err(|e| {
        Error::Unknown(format!(
            "metadata store: record of {name:?} is damaged: {e}"
        ))
    })
}

fn encode(record: &Record) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::Unknown(format!("metadata store: cannot encode a record: {e}")))
}

/// `parent NUL child`: the children of `parent` sort together, and no name holds a NUL byte
/// (refused by [`check_name`]).
fn child_key(parent: &str, child: &str) -> String {
    format!("{parent}\0{child}")
}

/// Refuses a key or name the store cannot hold: empty (containerd's metadata layer refuses it
/// too) or with a NUL byte (the separator of `children`).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} cannot be empty")));
    }
    if name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} {name:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// containerd's label limits (`labels.Validate`): a key and its value take at most 4096 bytes.
pub fn check_labels(labels: &HashMap<String, String>) -> Result<()> {
    const MAX: usize = 4096;
    for (k, v) in labels {
        if k.len() + v.len() > MAX {
            return Err(Error::InvalidArgument(format!(
                "label key and value length ({} bytes) greater than maximum size ({MAX} bytes)",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// Labels as stored: containerd's store does not keep a label with an empty value (setting one
/// to "" removes it).
pub fn stored_labels(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.retain(|_, v| !v.is_empty());
    labels
}

/// Reads through any table handle, read-only or writable.
pub fn get(
    table: &impl ReadableTable<&'static str, &'static str>,
    name: &str,
) -> Result<Option<Record>> {
    let value = table.get(name).map_err(Error::store("read"))?;
    value.map(|v| decode(name, v.value())).transpose()
}

/// Every record, by name.
pub fn all(
    table: &impl ReadableTable<&'static str, &'static str>,
) -> Result<Vec<(String, Record)>> {
    let mut out = Vec::new();
    for item in table.iter().map_err(Error::store("list"))? {
        let (k, v) = item.map_err(Error::store("list"))?;
        out.push((k.value().to_string(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

/// The ids of `name`'s parent chain, closest first (`name` itself excluded).
pub fn parent_ids(
    table: &impl ReadableTable<&'static str, &'static str>,
    record: &Record,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut parent = record.parent.clone();
    while !parent.is_empty() {
        let Some(p) = get(table, &parent)? else {
            return Err(Error::NotFound(format!(
                "parent snapshot {parent:?} does not exist"
            )));
        };
        ids.push(p.id);
        parent = p.parent;
        if ids.len() > 100_000 {
            return Err(Error::Unknown(
                "metadata store: the parent chain loops".into(),
            ));
        }
    }
    Ok(ids)
}

/// A write transaction's tables, opened once.
pub struct Tables<'t> {
    pub snapshots: redb::Table<'t, &'static str, &'static str>,
    pub children: redb::Table<'t, &'static str, u8>,
    pub meta: redb::Table<'t, &'static str, u64>,
}

impl Tables<'_> {
    pub fn open(txn: &redb::WriteTransaction) -> Result<Tables<'_>> {
        Ok(Tables {
            snapshots: txn
                .open_table(SNAPSHOTS)
                .map_err(Error::store("open table"))?,
            children: txn
                .open_table(CHILDREN)
                .map_err(Error::store("open table"))?,
            meta: txn.open_table(META).map_err(Error::store("open table"))?,
        })
    }

    pub fn get(&self, name: &str) -> Result<Option<Record>> {
        get(&self.snapshots, name)
    }

    pub fn put(&mut self, name: &str, record: &Record) -> Result<()> {
        let json = encode(record)?;
        self.snapshots
            .insert(name, json.as_str())
            .map_err(Error::store("write"))?;
        Ok(())
    }

    pub fn delete(&mut self, name: &str) -> Result<()> {
        self.snapshots
            .remove(name)
            .map_err(Error::store("delete"))?;
        Ok(())
    }

    pub fn link_child(&mut self, parent: &str, child: &str) -> Result<()> {
        if !parent.is_empty() {
            self.children
                .insert(child_key(parent, child).as_str(), 0)
                .map_err(Error::store("write"))?;
        }
        Ok(())
    }

    pub fn unlink_child(&mut self, parent: &str, child: &str) -> Result<()> {
        if !parent.is_empty() {
            self.children
                .remove(child_key(parent, child).as_str())
                .map_err(Error::store("delete"))?;
        }
        Ok(())
    }

    pub fn has_children(&self, name: &str) -> Result<bool> {
        let start = format!("{name}\0");
        // '\u{1}' is the byte after the separator: the range holds exactly `name`'s children.
        let end = format!("{name}\u{1}");
        let mut range = self
            .children
            .range(start.as_str()..end.as_str())
            .map_err(Error::store("read"))?;
        Ok(range.next().is_some())
    }

    /// The last id handed out.
    pub fn sequence(&self) -> Result<u64> {
        let v = self.meta.get(SEQUENCE).map_err(Error::store("read"))?;
        Ok(v.map(|v| v.value()).unwrap_or(0))
    }

    pub fn set_sequence(&mut self, id: u64) -> Result<()> {
        self.meta
            .insert(SEQUENCE, id)
            .map_err(Error::store("write"))?;
        Ok(())
    }
}

/// Creates the tables of a new store, so that readers always find them.
pub fn init(db: &redb::Database) -> Result<()> {
    let txn = db.begin_write().map_err(Error::store("begin"))?;
    Tables::open(&txn)?;
    txn.commit().map_err(Error::store("commit"))
}
