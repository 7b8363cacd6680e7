//! ufs: a union (overlay) filesystem in userspace.
//!
//! The crate is a library so that `tests/` and `benches/` can drive it; `src/main.rs` is only the
//! command line. Dependencies point one way, with no cycle (docs/DESIGN.md draws the modules):
//! `main -> fs (FUSE glue) -> dir / index / copy_up (operations) -> overlay (core state, read
//! operations) -> lookup / readdir -> redirect / whiteout / records / origin -> inode / layer ->
//! sys`. `unsafe` is allowed in `sys` only, and every block there says why it is sound.

#![deny(unsafe_code)]

pub mod acl;
pub mod check;
pub mod copy_up;
pub mod diff;
pub mod dir;
pub mod error;
pub mod fs;
pub mod fuse_mount;
pub mod handles;
pub mod idmap;
pub mod in_use;
pub mod index;
pub mod inode;
pub mod kind;
pub mod layer;
pub mod lifecycle;
pub mod listing;
pub mod lookup;
pub mod mount;
pub mod name;
pub mod options;
pub mod origin;
pub mod overlay;
pub mod passthrough;
pub mod readdir;
pub mod records;
pub mod redirect;
pub mod setup;
pub mod snapshotter;
pub mod stat_override;
pub mod stats;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
pub mod whiteout;
pub mod workdir;

pub use fs::serve;
pub use options::Options;
