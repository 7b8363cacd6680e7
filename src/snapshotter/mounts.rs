//! The mounts a snapshot is used through, as containerd's overlay snapshotter returns them,
//! with ufs in the kernel overlay's place.
//!
//! - no parent: a bind mount of the snapshot's own `fs` (`rw`, or `ro` for a view), because a
//!   union of nothing is just the directory;
//! - a view of one parent: a read-only bind mount of the parent's `fs`;
//! - otherwise `type=fuse3.ufs`: `index=off,metacopy=off`, `lowerdir=` the parents' `fs`, closest first,
//!   plus `upperdir=`/`workdir=` for an active snapshot. containerd runs such a mount as
//!   `mount.fuse3 ufs TARGET -o OPTIONS -t ufs`, which runs `ufs ufs TARGET -o OPTIONS`.
//!
//! The labels `containerd.io/snapshot/uidmapping` and `.../gidmapping` (`CONTAINER:HOST:SIZE`,
//! several joined by `,`) ask for the snapshot's files to show with shifted owners: the layers
//! on disk hold container ids (0 for root) and the container's user namespace needs them as
//! host ids. That is ufs's `uidmapping=DISK:SHOWN:N` with DISK the container id and SHOWN the
//! host id, the ranges joined by `:`. A bind mount cannot shift owners, so a view of one parent
//! with a mapping becomes a read-only union of that one parent; a snapshot without a parent
//! stays a bind mount (it is empty when created, so only what the container writes is in it,
//! with the owners the container gave it).

use containerd_snapshots::api::types::Mount;

use super::error::{Error, Result};
use super::layout::Layout;
use super::store::Kind;
use std::collections::HashMap;

pub const UID_LABEL: &str = "containerd.io/snapshot/uidmapping";
pub const GID_LABEL: &str = "containerd.io/snapshot/gidmapping";

/// The mount type containerd hands to `mount.fuse3` (`fuse3.` + the program it runs).
pub const FUSE_TYPE: &str = "fuse3.ufs";
/// The source word of the fuse mount: ufs takes it as its `fsname`.
pub const FUSE_SOURCE: &str = "ufs";

/// The ufs options for the mapping labels among `labels`, refused as `InvalidArgument` when
/// malformed (at Prepare, so that a bad label never reaches a mount).
pub fn mapping_options(labels: &HashMap<String, String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (label, option) in [(UID_LABEL, "uidmapping"), (GID_LABEL, "gidmapping")] {
        if let Some(value) = labels.get(label) {
            out.push(format!("{option}={}", convert_mapping(label, value)?));
        }
    }
    Ok(out)
}

/// `0:1000:1,1:100000:65536` -> `0:1000:1:1:100000:65536`, each range checked.
fn convert_mapping(label: &str, value: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "label {label}={value:?}: {why} (expected CONTAINER:HOST:SIZE[,...])"
        ))
    };
    let mut ranges = Vec::new();
    for range in value.split(',') {
        let numbers: Vec<&str> = range.trim().split(':').collect();
        let [container, host, size] = numbers[..] else {
            return Err(bad("not three numbers"));
        };
        let parse = |s: &str| s.parse::<u32>().map_err(|_| bad("not a number"));
        let (container, host, size) = (parse(container)?, parse(host)?, parse(size)?);
        let fits = |start: u32| u64::from(start) + u64::from(size) <= 1 << 32;
        if size == 0 || !fits(container) || !fits(host) {
            return Err(bad("empty range or past the last id"));
        }
        ranges.push(format!("{container}:{host}:{size}"));
    }
    Ok(ranges.join(":"))
}

/// A path as a ufs option value: `\`, `,` and `:` would be taken as escapes and separators.
/// The root is checked at startup to hold none, so this only guards against that changing.
fn option_path(path: &std::path::Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::Unknown(format!("{path:?} is not UTF-8")))?;
    if s.contains([',', ':', '\\']) {
        return Err(Error::Unknown(format!(
            "{path:?} holds a character mount options cannot carry"
        )));
    }
    Ok(s.to_string())
}

/// The mounts of snapshot `id` of kind `kind` with parents `parents` (closest first).
pub fn mounts(
    layout: &Layout,
    kind: Kind,
    id: u64,
    parents: &[u64],
    labels: &HashMap<String, String>,
) -> Result<Vec<Mount>> {
    let mapping = mapping_options(labels)?;
    let bind = |source: std::path::PathBuf, ro: bool| -> Result<Vec<Mount>> {
        Ok(vec![Mount {
            r#type: "bind".into(),
            source: option_path(&source)?,
            target: String::new(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        }])
    };
    if parents.is_empty() {
        return bind(layout.fs_path(id), kind == Kind::View);
    }
    if let ([only], false) = (parents, kind == Kind::Active || !mapping.is_empty()) {
        return bind(layout.fs_path(*only), true);
    }
    // `index=off`, as containerd's overlay snapshotter mounts: the index lives in the
    // snapshot's `work`, which is not part of the layer. An indexed copy-up is also linked
    // from `work/index`, so once committed, the layer's file has one link more on disk than
    // names, and every mount that has the layer as a lower shows that count. `metacopy=off`
    // too, as containerd's overlay mounts: a committed layer is read by mounts of the kernel
    // overlay with its default options (containerd's own overlayfs snapshotter, a tool
    // unpacking or diffing the layer directories), which refuse a metadata-only copy (EPERM).
    let mut options = vec!["index=off".to_string(), "metacopy=off".to_string()];
    if kind == Kind::Active {
        options.push(format!("workdir={}", option_path(&layout.work_path(id))?));
        options.push(format!("upperdir={}", option_path(&layout.fs_path(id))?));
    }
    let lowers: Vec<String> = parents
        .iter()
        .map(|p| option_path(&layout.fs_path(*p)))
        .collect::<Result<_>>()?;
    options.push(format!("lowerdir={}", lowers.join(":")));
    options.extend(mapping);
    Ok(vec![Mount {
        r#type: FUSE_TYPE.into(),
        source: FUSE_SOURCE.into(),
        target: String::new(),
        options,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_labels_become_ufs_options() {
        let labels = HashMap::from([
            (UID_LABEL.to_string(), "0:1000:1,1:100000:65536".to_string()),
            (GID_LABEL.to_string(), "0:2000:65536".to_string()),
        ]);
        assert_eq!(
            mapping_options(&labels),
            Ok(vec![
                "uidmapping=0:1000:1:1:100000:65536".to_string(),
                "gidmapping=0:2000:65536".to_string()
            ])
        );
        for bad in [
            "",
            "0:1",
            "0:1:2:3",
            "a:1:1",
            "0:1:0",
            "0:4294967295:2",
            "0:1:1,",
        ] {
            let labels = HashMap::from([(UID_LABEL.to_string(), bad.to_string())]);
            assert!(
                matches!(mapping_options(&labels), Err(Error::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }
}
