//! Regression tests of the differential testing against kernel overlayfs
//! (`tests/differential.rs`, issue 4): the minimal cases of the disagreements the harness found
//! on writable mounts (metadata-only copies and their mtimes, redirects, link counts with the
//! index). Each spells out its layers and operations, so that it does not depend on the
//! generator, and runs them on both mounts as the harness runs a case (`runner::run_case`).

#[path = "common/mod.rs"]
mod common;
#[path = "common/differential_support.rs"]
mod differential_support;
#[path = "common/dinofs.rs"]
mod dinofs;
#[path = "differential/generate.rs"]
mod generate;
#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/runner.rs"]
mod runner;
#[path = "differential/tree.rs"]
mod tree;

use std::collections::BTreeMap;

use common::{Layer, Node};
use differential_support::*;
use generate::Config;
use ops::{Op, RenameMode};

// ---------------------------------------------------------------------------------------------
// Regression tests: the minimal cases of disagreements the harness found, spelled out
// ---------------------------------------------------------------------------------------------

/// Seeds 57, 66, 162, 354, 576 (and, for `RENAME_EXCHANGE`, 168, 184, 315, 737, 1808): with
/// `metacopy=on`, the kernel copies only metadata up for a rename, so a file whose metadata
/// was copied up keeps its mtime when renamed; ufs completed the data copy and showed the time
/// of the rename.
#[test]
fn metacopy_rename_keeps_mtime() {
    regression(
        "metacopy_rename_keeps_mtime",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("d", Node::file(b"x")),
        ])],
        vec![
            Op::Chmod {
                path: path("a"),
                mode: 0o600,
            },
            Op::Rename {
                from: path("a"),
                to: path("b"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("b") },
            Op::Chmod {
                path: path("d"),
                mode: 0o600,
            },
            Op::Rename {
                from: path("d"),
                to: path("b"),
                mode: RenameMode::Exchange,
            },
            Op::Stat { path: path("b") },
            Op::Stat { path: path("d") },
        ],
    );
}

/// Seeds 988, 568, 1434: the same for `link` (the kernel links a metadata-only copy).
#[test]
fn metacopy_link_keeps_mtime() {
    regression(
        "metacopy_link_keeps_mtime",
        METACOPY,
        vec![layer(vec![("a", Node::file(b"data"))])],
        vec![
            Op::Chown {
                path: path("a"),
                uid: Some(1000),
                gid: None,
            },
            Op::Link {
                from: path("a"),
                to: path("c"),
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seeds 1232, 1554, 1727, 1775 (rename) and 1847, 1976, 2003 (link): with `metacopy=on` the
/// kernel copies only metadata up for a rename or a link, so opening the file for writing
/// afterwards completes the copy and gives it the current mtime; ufs copied the data at the
/// rename or link and kept the old time.
#[test]
fn metacopy_rename_then_open_for_write() {
    regression(
        "metacopy_rename_then_open_for_write",
        METACOPY,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("c", Node::file(b"c")),
        ])],
        vec![
            Op::Rename {
                from: path("a"),
                to: path("b"),
                mode: RenameMode::Plain,
            },
            Op::Create {
                path: path("b"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("b") },
            Op::Link {
                from: path("c"),
                to: path("l"),
            },
            Op::Create {
                path: path("l"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("c") },
        ],
    );
}

/// Seeds 467, 847, 1323, 1527, 2332, 75: opening a metadata-only copy for writing completes the
/// data copy, and in the kernel the upper file then has the current time as its mtime (the data
/// is written into the existing upper inode). ufs first kept answering the cached old mtime
/// until the attribute timeout ran out (its upper file had the new time), and since 706677e
/// restores the old mtime after completing the copy.
#[test]
fn metacopy_open_for_write_sets_mtime_like_the_kernel() {
    regression(
        "metacopy_open_for_write_sets_mtime_like_the_kernel",
        METACOPY,
        vec![layer(vec![("a", Node::file(b"data"))])],
        vec![
            Op::Chmod {
                path: path("a"),
                mode: 0o600,
            },
            Op::Stat { path: path("a") },
            Op::Create {
                path: path("a"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 540: an absolute redirect (`/c/b`) is followed in each lower layer only while the path
/// leads through directories: the kernel stops the merge at a layer where a component is a
/// whiteout, a non-directory or an opaque directory. ufs went on to the layers below and
/// merged in a `/c/b` that the original directory never showed.
#[test]
fn redirect_stops_at_whiteout_or_opaque_on_the_path() {
    let opaque_c = {
        let mut children = BTreeMap::new();
        children.insert("b".to_string(), empty_dir());
        Node::opaque_dir(children)
    };
    regression(
        "redirect_stops_at_whiteout_or_opaque_on_the_path",
        REDIRECT,
        vec![
            layer(vec![("c/b", empty_dir()), ("o", opaque_c)]),
            layer(vec![("c", Node::Whiteout), ("o/b/x", Node::file(b"x"))]),
            layer(vec![("c/b/a", Node::file(b"a"))]),
        ],
        vec![
            Op::Readdir { path: path("c/b") },
            Op::Readdir { path: path("o/b") },
            Op::Rename {
                from: path("c/b"),
                to: path("n"),
                mode: RenameMode::Plain,
            },
            Op::Rename {
                from: path("o/b"),
                to: path("p"),
                mode: RenameMode::Plain,
            },
            Op::Readdir { path: path("n") },
            Op::Readdir { path: path("p") },
            Op::Remount,
            Op::Readdir { path: path("n") },
            Op::Readdir { path: path("p") },
            Op::Rmdir { path: path("n") },
            Op::Rmdir { path: path("p") },
        ],
    );
}

/// Found while the read path kept name-based real entries (working tree after 557f5cf): a file
/// renamed after a remount (so its node came from a lookup, not from a copy-up) was lost by
/// ufs (`ENOENT` from `stat` and missing from the listing) until the next mount.
#[test]
fn rename_after_remount_keeps_the_file_reachable() {
    regression(
        "rename_after_remount_keeps_the_file_reachable",
        Config::new(false, false, false),
        vec![layer(vec![("d/e/c", Node::file(b"c"))])],
        vec![
            Op::Rename {
                from: path("d/e/c"),
                to: path("d/e/n"),
                mode: RenameMode::Plain,
            },
            Op::Remount,
            Op::Rename {
                from: path("d/e/n"),
                to: path("c"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("c") },
            Op::Readdir {
                path: String::new(),
            },
        ],
    );
}

/// Seeds 15, 81, 126, 197, 203 (unlink) and 16, 33, 116 (rename over): with `index=on`, when a
/// name of a lower file with several links goes away, the kernel first copies the file up to
/// create its index entry (`ovl_nlink_start()`), so the link count the other names show drops;
/// ufs only lowered the record of an index entry that already existed.
#[test]
fn index_lower_hard_link_removed_lowers_nlink() {
    for config in [INDEX, Config::new(true, true, true)] {
        regression(
            "index_lower_hard_link_removed_lowers_nlink",
            config,
            vec![layer(vec![
                ("a", Node::file(b"a")),
                ("h1", Node::HardLink { target: "a".into() }),
                ("b", Node::file(b"b")),
                ("h2", Node::HardLink { target: "b".into() }),
                ("c", Node::file(b"c")),
            ])],
            vec![
                Op::Unlink { path: path("h1") },
                Op::Stat { path: path("a") },
                Op::Rename {
                    from: path("c"),
                    to: path("h2"),
                    mode: RenameMode::Plain,
                },
                Op::Stat { path: path("b") },
                Op::Remount,
                Op::Stat { path: path("a") },
                Op::Stat { path: path("b") },
            ],
        );
    }
}

/// Seeds 41062 and 40150 (cross-mount): after a lower-only name of a hard-linked lower file is
/// removed, a copy-up and the removal of the copied name, ufs showed the right link count but
/// the `overlay.nlink` record it wrote made the kernel, mounted over ufs's upper, show one more.
#[test]
fn index_nlink_record_read_by_the_kernel() {
    regression(
        "index_nlink_record_read_by_the_kernel",
        INDEX,
        vec![layer(vec![
            ("a", Node::file(b"a")),
            ("b", Node::HardLink { target: "a".into() }),
            ("c", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Unlink { path: path("b") },
            Op::Write {
                path: path("c"),
                offset: 1,
                len: 10,
                fill: 7,
            },
            Op::Unlink { path: path("c") },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 51162: with `index=on`, a lower file with three names (one of them whited out above)
/// is copied up through one name (`utimes`), written through another, read, and then the first
/// name showed a link count of 2 where the kernel shows 3. The append made the kernel ask for
/// the attributes through the open file, and ufs answered with the upper file's own link count,
/// without the index's `overlay.nlink` record.
#[test]
fn index_nlink_after_copy_up_through_two_names() {
    regression(
        "index_nlink_after_copy_up_through_two_names",
        INDEX,
        vec![
            layer(vec![("c", Node::Whiteout)]),
            layer(vec![
                ("c", Node::file(&[7; 37])),
                ("h1", Node::HardLink { target: "c".into() }),
                ("h2", Node::HardLink { target: "c".into() }),
            ]),
        ],
        vec![
            Op::Utimes {
                path: path("h1"),
                atime: ops::Time::At(1_588_884_757, 225_579_493),
                mtime: ops::Time::At(1_505_413_457, 149_636_638),
            },
            Op::Append {
                path: path("h2"),
                len: 256,
                fill: 242,
            },
            Op::Read {
                path: path("h2"),
                offset: 4000,
                len: 200_000,
            },
            Op::Stat { path: path("h1") },
            Op::Stat { path: path("h2") },
        ],
    );
}

/// Seed 52014: with `index=on`, after a directory holding names of a lower hard-linked file
/// is exchanged with another (a redirect), one name written (indexed copy-up), a remount, and a
/// rename of another lower-only name of the file, ufs showed one link more than the kernel.
#[test]
fn index_nlink_rename_of_lower_alias_in_redirected_dir() {
    regression(
        "index_nlink_rename_of_lower_alias_in_redirected_dir",
        Config::new(true, true, true),
        vec![
            layer(vec![("b/a/a", Node::file(b"a"))]),
            layer(vec![
                ("e/e", Node::file(&[1; 120])),
                (
                    "e/h1",
                    Node::HardLink {
                        target: "e/e".into(),
                    },
                ),
                (
                    "d/h2",
                    Node::HardLink {
                        target: "e/e".into(),
                    },
                ),
            ]),
        ],
        vec![
            Op::Rename {
                from: path("b/a"),
                to: path("e"),
                mode: RenameMode::Exchange,
            },
            Op::Write {
                path: path("b/a/h1"),
                offset: 44,
                len: 4,
                fill: 180,
            },
            Op::Mkdir {
                path: path("e/d"),
                mode: 0o755,
            },
            Op::Remount,
            Op::Rename {
                from: path("b/a/e"),
                to: path("e/d/c"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("d/h2") },
        ],
    );
}

/// Seeds 50458, 50228, 52121, 52685 (cross-mount) and 52034: a metadata-only copy of an empty
/// lower file is not recognized as one after a remount, so a later write or truncate extends
/// the upper file but leaves its `overlay.metacopy` record, and a rename moves it without the
/// data redirect: the kernel mounted over ufs's upper then reads no data (or no file at all).
#[test]
fn metacopy_of_an_empty_file_after_remount() {
    regression(
        "metacopy_of_an_empty_file_after_remount",
        METACOPY,
        vec![
            Layer::default(),
            layer(vec![("e", Node::file(b"")), ("f", Node::file(b""))]),
        ],
        vec![
            Op::Chmod {
                path: path("f"),
                mode: 0o444,
            },
            Op::SetXattr {
                path: path("e"),
                name: "user.k1".into(),
                value: b"v".to_vec(),
                mode: ops::XattrMode::Replace,
            },
            Op::Remount,
            Op::Truncate {
                path: path("f"),
                len: 17,
                via_fd: true,
            },
            Op::Rename {
                from: path("e"),
                to: path("m"),
                mode: RenameMode::NoReplace,
            },
            Op::Write {
                path: path("m"),
                offset: 155,
                len: 589,
                fill: 124,
            },
        ],
    );
}

/// Seeds 50620, 51391, 52480: completing a metadata-only copy of an empty file (open for
/// writing) leaves the kernel's mtime alone (`ovl_copy_up_meta_inode_data` copies no data when
/// the size is 0); ufs's completion truncates the file to its size, which sets the mtime to now.
#[test]
fn metacopy_completion_of_an_empty_file_keeps_mtime() {
    regression(
        "metacopy_completion_of_an_empty_file_keeps_mtime",
        METACOPY,
        vec![layer(vec![("a", Node::file(b""))])],
        vec![
            Op::Utimes {
                path: path("a"),
                atime: ops::Time::At(1_257_920_494, 634_557_882),
                mtime: ops::Time::Omit,
            },
            Op::Create {
                path: path("a"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seeds 50494, 51616: with `index=on` and `metacopy=on`, the kernel copies a lower hard-linked
/// file up metadata-only for a rename or link (opening it for writing later completes the copy
/// and sets the mtime to now); ufs copied indexed files with their data.
#[test]
fn index_metacopy_of_a_hard_linked_file() {
    regression(
        "index_metacopy_of_a_hard_linked_file",
        Config::new(true, true, true),
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("h2", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Rename {
                from: path("h2"),
                to: path("c"),
                mode: RenameMode::Plain,
            },
            Op::Create {
                path: path("c"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("a") },
        ],
    );
}

/// Seed 60829: with `index=on`, a lower file with two names is copied up through one (a write),
/// and after a remount the other, still lower-only name is renamed: ufs then counts three links
/// where the kernel counts two.
#[test]
fn index_nlink_rename_of_lower_alias_after_remount() {
    regression(
        "index_nlink_rename_of_lower_alias_after_remount",
        INDEX,
        vec![layer(vec![
            ("c", Node::file(b"data")),
            ("h2", Node::HardLink { target: "c".into() }),
        ])],
        vec![
            Op::Write {
                path: path("h2"),
                offset: 36,
                len: 274,
                fill: 115,
            },
            Op::Remount,
            Op::Rename {
                from: path("c"),
                to: path("m"),
                mode: RenameMode::Plain,
            },
            Op::Stat { path: path("h2") },
            Op::Stat { path: path("m") },
        ],
    );
}

/// Soak seed 31551160995790 (`metacopy`): a `setxattr` that copies a lower file up
/// metadata-only and then fails (`XATTR_REPLACE` of a missing name) left the kernel holding the
/// file's attributes from before; opening it for writing then completed the copy (new mtime),
/// but ufs showed the cached old mtime where the kernel shows the new one.
#[test]
fn failed_setxattr_leaves_no_stale_attributes() {
    regression(
        "failed_setxattr_leaves_no_stale_attributes",
        METACOPY,
        vec![layer(vec![("d", Node::file(b"hello world"))])],
        vec![
            Op::Stat { path: path("d") },
            Op::SetXattr {
                path: path("d"),
                name: "user.k2".into(),
                value: Vec::new(),
                mode: ops::XattrMode::Replace,
            },
            Op::Create {
                path: path("d"),
                mode: 0o644,
                excl: false,
            },
            Op::Stat { path: path("d") },
        ],
    );
}

/// Soak seeds 140689926927150, 138277937262166, 91068641272837 (`index`): a lower file with
/// three names is copied up through one (`lchown h1`), the kernel forgets it, it is reached
/// again through that upper name and then through a lower one, and the upper name is
/// removed: the node kept only the upper entry (pinned), so its link count lost the
/// `overlay.nlink` record and showed 1 where the kernel shows 2.
#[test]
fn index_nlink_after_forget_and_unlink_of_the_upper_name() {
    regression(
        "index_nlink_after_forget_and_unlink_of_the_upper_name",
        INDEX,
        vec![layer(vec![
            ("a", Node::file(b"data")),
            ("h1", Node::HardLink { target: "a".into() }),
            ("h2", Node::HardLink { target: "a".into() }),
        ])],
        vec![
            Op::Chown {
                path: path("h1"),
                uid: Some(1234),
                gid: Some(1234),
            },
            Op::Forget { pin: path("") },
            Op::Append {
                path: path("h1"),
                len: 73,
                fill: 127,
            },
            Op::Stat { path: path("a") },
            Op::Unlink { path: path("h1") },
            Op::Stat { path: path("a") },
            Op::Stat { path: path("h2") },
        ],
    );
}
