//! Attribute changes through a mount, compared with the kernel overlay over identical layers.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::*;

fn ctime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (md.ctime(), md.ctime_nsec())
}

/// Regression: `chown(f, -1, -1)` reaches a FUSE filesystem as a `setattr` that changes nothing,
/// and ufs did nothing with it, so the ctime of an upper file stayed as it was. The kernel
/// overlay passes the change on to the upper file (`notify_change` with `ATTR_CTIME`), whose
/// ctime moves, as on any local filesystem (pjdfstest chown/00.t marks this as TODO only
/// because POSIX allows both).
#[test]
fn chown_of_nothing_changes_the_ctime_as_the_kernel_does() {
    if skip("chown_of_nothing_changes_the_ctime_as_the_kernel_does") {
        return;
    }
    let t = tempdir();
    let seen = on_kernel_and_ufs(
        t.path(),
        "",
        |l| fs::write(l.join("lower"), b"lower\n").expect("write"),
        |m| {
            fs::write(m.join("upper"), b"upper\n").expect("create");
            // Copied up before the measure, so that only the chown can move its ctime.
            std::os::unix::fs::chown(m.join("lower"), Some(0), None).expect("copy up");
            let before: Vec<_> = ["upper", "lower"]
                .iter()
                .map(|n| ctime(&m.join(n)))
                .collect();
            thread::sleep(Duration::from_millis(50));
            let mut moved = Vec::new();
            for (i, name) in ["upper", "lower"].iter().enumerate() {
                std::os::unix::fs::chown(m.join(name), None, None).expect("chown -1 -1");
                let after = ctime(&m.join(name));
                moved.push((*name, after > before[i]));
            }
            moved
        },
    );
    assert_eq!(
        seen[0],
        [("upper", true), ("lower", true)],
        "the kernel: {:?}",
        seen[0]
    );
    assert_eq!(seen[1], seen[0], "ufs (left) and the kernel (right)");
}
