//! ufs: a union (overlay) filesystem in userspace.
//!
//! The crate is a library so that `tests/` and `benches/` can drive it; `src/main.rs` is only the
//! command line. Dependencies point one way:
//! `main -> fs (FUSE glue) -> overlay (core) -> lookup / readdir / xattr / idmap / inode / layer -> sys`.

pub mod copy_up;
pub mod dir;
pub mod error;
pub mod fs;
pub mod fuse_mount;
pub mod idmap;
pub mod in_use;
pub mod inode;
pub mod kind;
pub mod layer;
pub mod lifecycle;
pub mod listing;
pub mod lookup;
pub mod mount;
pub mod options;
pub mod overlay;
pub mod readdir;
pub mod records;
pub mod sys;

pub use fs::serve;
pub use options::Options;
