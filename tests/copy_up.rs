//! Copy-up details compared with the kernel overlay over identical layers.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn getcap(p: &Path) -> String {
    let run = run_bounded(Command::new("getcap").arg(p), CMD_TIMEOUT);
    run.stdout
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Regression: completing a metadata-only copy (an open for writing after a `chmod`) wrote the
/// data after the xattrs were in place, and the write made the filesystem drop
/// `security.capability`: a file capability was lost without any write by the user. The kernel
/// saves and restores it (`ovl_copy_up_meta_inode_data`).
#[test]
fn completing_a_metadata_only_copy_keeps_file_capabilities() {
    if skip("completing_a_metadata_only_copy_keeps_file_capabilities") {
        return;
    }
    if which("setcap").is_none() || which("getcap").is_none() {
        say("SKIP completing_a_metadata_only_copy_keeps_file_capabilities: no setcap/getcap");
        return;
    }
    let t = tempdir();
    let seen = on_kernel_and_ufs(
        t.path(),
        "redirect_dir=on,metacopy=on",
        |l| {
            fs::write(l.join("t"), b"\x7fELF not really a binary\n").expect("write");
            let run = run_bounded(
                Command::new("setcap")
                    .arg("cap_net_raw+ep")
                    .arg(l.join("t")),
                CMD_TIMEOUT,
            );
            assert!(run.success(), "setcap: {run}");
        },
        |m| {
            fs::set_permissions(m.join("t"), fs::Permissions::from_mode(0o755)).expect("chmod");
            let after_chmod = getcap(&m.join("t"));
            drop(
                fs::OpenOptions::new()
                    .write(true)
                    .open(m.join("t"))
                    .expect("open for writing"),
            );
            (after_chmod, getcap(&m.join("t")))
        },
    );
    assert_eq!(seen[0].1, "cap_net_raw=ep", "the kernel: {:?}", seen[0]);
    assert_eq!(seen[1], seen[0], "ufs (left) and the kernel (right)");
}
