//! Helpers shared by the write-side tests (`tests/write_*.rs`) alone: writing a file into a
//! layer with its parent directories, `chmod` and `lchown` that panic on failure, and writes at
//! offsets through a mount as an op result. (`beyond_support` has its own `put` and a `chmod`
//! that returns the error, and the tests that use it import `write_support` too: so these are
//! a module of their own.)

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;

/// Writes `content` to `root/rel`, creating parent directories.
pub fn put(root: &Path, rel: &str, content: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        mkdirs(parent);
    }
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

pub fn write_at(m: &Path, rel: &str, data: &[(u64, &[u8])]) -> io::Result<String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join(rel))?;
    for (off, bytes) in data {
        f.write_all_at(bytes, *off)?;
    }
    Ok(String::new())
}
