//! Read-side semantics of ufs, checked through real mounts: symlink safety (symlinks in layers
//! are shown as symlinks, never followed by ufs itself), compared with kernel overlayfs.

mod common;

use std::fs;
use std::io;
use std::path::PathBuf;

use common::*;

// ---------------------------------------------------------------------------------------------
// Symlinks
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinks_in_layers_are_never_followed() {
    if skip("symlinks_in_layers_are_never_followed") {
        return;
    }
    let t = tempdir();
    let outside = mkdirs(&t.path().join("outside"));
    fs::write(outside.join("other"), "outside").unwrap();
    let mut top = Layer::default();
    top.put("etc", Node::symlink("/etc"));
    top.put("up", Node::symlink("../.."));
    top.put("sub/esc", Node::symlink("../../../../../../etc/passwd"));
    top.put("d", Node::symlink(&outside.display().to_string()));
    top.put("e", Node::symlink("/etc"));
    let mut low = Layer::default();
    low.put("d/secret", Node::file(b"lower secret"));
    low.put("e/hostname", Node::file(b"lower hostname"));
    low.put("sub/kept", Node::file(b"kept"));
    let stack = Stack {
        lowers: vec![top, low],
        upper: None,
    };
    let u = stack.materialize(&t.path().join("u"), Flavor::Ufs, 7);
    let k = stack.materialize(&t.path().join("k"), Flavor::Kernel, 7);
    let _m = UfsMount::mount(&u.options(), &u.mnt);
    let _k = KernelOverlay::mount(&k.kernel_options(), &k.mnt, &k.base);

    for (name, target) in [
        ("etc", "/etc".to_string()),
        ("up", "../..".to_string()),
        ("sub/esc", "../../../../../../etc/passwd".to_string()),
        ("d", outside.display().to_string()),
        ("e", "/etc".to_string()),
    ] {
        let p = u.mnt.join(name);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {name}: {e}"));
        assert!(
            md.file_type().is_symlink(),
            "{name} must be a symlink, is {:?}",
            md.file_type()
        );
        assert_eq!(
            fs::read_link(&p).unwrap(),
            PathBuf::from(&target),
            "target of {name}"
        );
    }
    // Resolving d/secret follows the symlink (in the kernel, from our process) to `outside`,
    // which has no `secret`; the lower's d/secret must stay hidden behind the symlink.
    let r = fs::read(u.mnt.join("d/secret"));
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound),
        "d/secret must not resolve to the lower's file through ufs: {:?}",
        r.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    assert_eq!(
        fs::read(u.mnt.join("d/other")).unwrap(),
        b"outside",
        "d resolves to the outside dir"
    );
    let host = fs::read(u.mnt.join("e/hostname"));
    assert!(
        host.as_ref().map_or(true, |v| v != b"lower hostname"),
        "e/hostname must come from /etc, not from the lower layer"
    );
    assert_eq!(list_names(&u.mnt.join("sub")), ["esc", "kept"]);
    assert_same_tree(
        "ufs",
        &snapshot(&u.mnt),
        "kernel",
        &snapshot(&k.mnt),
        "symlink stack",
    );
}
