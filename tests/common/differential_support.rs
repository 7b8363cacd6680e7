//! Helpers for the regression tests of the differential harness (`tests/differential_*.rs`): a
//! layer spelled out entry by entry, the feature sets the tests name, and `regression`, which
//! runs one spelled-out case on ufs and on kernel overlayfs and fails with the first
//! disagreement.

#![allow(dead_code)]

use std::collections::BTreeMap;

use crate::common::{self, Layer, Node, Stack};
use crate::generate::{Case, Config};
use crate::ops::Op;
use crate::runner::run_case;

pub const REDIRECT: Config = Config::new(true, false, false);
pub const METACOPY: Config = Config::new(true, false, true);
pub const INDEX: Config = Config::new(true, true, false);

/// A layer with `entries` (`path`, node), parents created as plain directories.
pub fn layer(entries: Vec<(&str, Node)>) -> Layer {
    let mut l = Layer::default();
    for (p, n) in entries {
        l.put(p, n);
    }
    l
}

pub fn empty_dir() -> Node {
    Node::dir(BTreeMap::new())
}

/// Runs the operations on both mounts (printing each) and fails with the first disagreement.
pub fn regression(name: &str, config: Config, lowers: Vec<Layer>, ops: Vec<Op>) {
    if common::skip(name) {
        return;
    }
    let case = Case {
        seed: 0,
        config,
        stack: Stack {
            lowers,
            upper: None,
        },
        ops,
        dino: None,
        // As ufs mounts by default, unless `UFS_DIFF_PASSTHROUGH=off`.
        passthrough: std::env::var("UFS_DIFF_PASSTHROUGH").map_or(true, |v| v.trim() != "off"),
    };
    let picks: Vec<usize> = (0..case.ops.len()).collect();
    if let Err(f) = run_case(&case, &picks, true) {
        panic!(
            "{name} ({}): {} at op {}:\n  {}",
            config.options(),
            f.stage,
            f.pos,
            f.detail.trim_end().replace('\n', "\n  ")
        );
    }
}

pub fn path(s: &str) -> String {
    s.to_string()
}
