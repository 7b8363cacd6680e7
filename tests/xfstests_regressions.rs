//! Regressions found by the xfstests overlay suite, each a minimal sequence run on the kernel
//! overlay and on ufs over the same layers (`on_kernel_and_ufs`) and compared.

mod common;

use std::fs;
use std::io;
use std::path::Path;

use common::*;

/// `ok` or the errno of an operation.
fn outcome<T>(r: io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// Whether the real directory `p` (in the upper) carries the impure marker.
fn impure(p: &Path) -> String {
    match get_xattr(p, "trusted.overlay.impure") {
        Ok(v) => format!("impure={}", String::from_utf8_lossy(&v)),
        Err(e) => format!(
            "no impure marker (errno {})",
            e.raw_os_error().unwrap_or(-1)
        ),
    }
}

/// xfstests `overlay/038` ("Pure directory has impure xattr"): an upper directory marked
/// impure when a lower file was moved into it loses the marker once a listing finds no entry
/// that needs it (the kernel's `ovl_cache_get_impure()`); one that still holds such an entry
/// keeps it.
#[test]
fn readdir_removes_an_impure_marker_no_entry_needs() {
    if skip("readdir_removes_an_impure_marker_no_entry_needs") {
        return;
    }
    let t = tempdir();
    let [k, u] = on_kernel_and_ufs(
        t.path(),
        "",
        |l| {
            mkdirs(&l.join("test_dir/pure_lower_dir/subdir"));
            fs::write(l.join("test_file"), "f").unwrap();
            fs::write(l.join("kept_file"), "k").unwrap();
        },
        |m| {
            let up = m.parent().unwrap().join("up");
            let mut r = Vec::new();
            let dir = m.join("test_dir/impure_dir");
            let keep = m.join("test_dir/keep_dir");
            r.push(outcome(fs::create_dir_all(dir.join("subdir"))));
            r.push(outcome(fs::create_dir_all(&keep)));
            r.push(outcome(fs::rename(
                m.join("test_file"),
                dir.join("test_file"),
            )));
            r.push(outcome(fs::rename(
                m.join("kept_file"),
                keep.join("kept_file"),
            )));
            r.push(list_names(&dir).join(","));
            r.push(impure(&up.join("test_dir/impure_dir")));
            r.push(outcome(fs::remove_file(dir.join("test_file"))));
            r.push(outcome(fs::remove_dir(dir.join("subdir"))));
            r.push(list_names(&dir).join(","));
            r.push(list_names(&keep).join(","));
            r.push(impure(&up.join("test_dir/impure_dir")));
            r.push(impure(&up.join("test_dir/keep_dir")));
            r
        },
    );
    assert!(
        k.iter().any(|l| l == "impure=y"),
        "the kernel never marked the directory impure: the sequence is broken: {k:?}"
    );
    assert_eq!(k, u, "kernel (left) and ufs (right) differ");
}

/// xfstests `overlay/012`: a lower directory removed through the mount, a file created in its
/// place, that file removed from the upper behind the mount (the lower directory shows again),
/// then `rm` through the mount. The kernel overlay answers `ESTALE`; ufs answers the `unlink`
/// request `ESTALE` too (`tests/core.rs`), but the kernel's FUSE client retries an `ESTALE` with
/// a fresh lookup, finds the directory and answers `EISDIR` itself (docs/DIFFERENCES.md). Both
/// sides agree on everything before that last answer.
#[test]
fn unlink_after_the_upper_was_removed_behind_the_mount() {
    if skip("unlink_after_the_upper_was_removed_behind_the_mount") {
        return;
    }
    let t = tempdir();
    let [k, u] = on_kernel_and_ufs(
        t.path(),
        "",
        |l| {
            mkdirs(&l.join("test"));
        },
        |m| {
            let up = m.parent().unwrap().join("up");
            vec![
                outcome(fs::remove_dir(m.join("test"))),
                outcome(fs::write(m.join("test"), "")),
                outcome(fs::metadata(m.join("test"))),
                outcome(fs::remove_file(up.join("test"))),
                outcome(fs::remove_file(m.join("test"))),
            ]
        },
    );
    assert_eq!(
        k.last().map(String::as_str),
        Some("errno 116"),
        "the kernel answers ESTALE: {k:?}"
    );
    assert_eq!(
        u.last().map(String::as_str),
        Some("errno 21"),
        "through FUSE the retried lookup finds the directory: {u:?}"
    );
    assert_eq!(
        k[..k.len() - 1],
        u[..u.len() - 1],
        "kernel (left) and ufs (right) differ"
    );
}
