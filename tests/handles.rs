//! File handles (`name_to_handle_at`) through the mount, compared with the kernel overlay at its
//! defaults (no `nfs_export`).

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::*;

/// `name_to_handle_at(AT_FDCWD, p, ...)`: the errno, or 0 when a handle was given.
fn name_to_handle(p: &Path) -> i32 {
    let c = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 8 + 128];
    buf[0..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` holds a file_handle header announcing 128 bytes of room and is that large;
    // `c` is NUL-terminated; `mount_id` is writable.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Regression (xfstests `generic/426`, `generic/467`): `name_to_handle_at` succeeded on the
/// mount, but `open_by_handle_at` then failed with `ESTALE` once the kernel had forgotten the
/// inode, since ufs cannot find a node by its number alone. Like the kernel overlay without
/// `nfs_export`, the mount now gives no handles at all.
#[test]
fn no_file_handle_is_given_that_could_not_be_opened() {
    if skip("no_file_handle_is_given_that_could_not_be_opened") {
        return;
    }
    let t = tempdir();
    let seen = on_kernel_and_ufs(
        t.path(),
        "",
        |l| fs::write(l.join("f"), "f\n").expect("write"),
        |m| {
            fs::write(m.join("new"), "new\n").expect("write");
            (name_to_handle(&m.join("f")), name_to_handle(&m.join("new")))
        },
    );
    if seen[0] == (0, 0) {
        say(
            "SKIP no_file_handle_is_given_that_could_not_be_opened: the kernel overlay gives handles here",
        );
        return;
    }
    assert_eq!(seen[1], seen[0], "ufs (left) and the kernel (right)");
}
