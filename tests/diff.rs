//! `ufs diff`: the changes an upper makes to its lowers, one line per path as `podman diff`
//! prints them, read from the records of an upper written by the kernel overlay or by ufs.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn fill(l: &Path) {
    for (path, data) in [
        ("etc/conf", "a\n"),
        ("etc/mode", "m\n"),
        ("d/x", "x\n"),
        ("d/z/deep", "deep\n"),
        ("old/f1", "f1\n"),
        ("old/in/f2", "f2\n"),
        ("gone", "g\n"),
        ("same/kept", "k\n"),
    ] {
        let p = l.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, data).expect("write");
    }
}

/// What a container does: delete, re-create a directory, rename one, chmod, append, add.
fn change(m: &Path) {
    fs::remove_file(m.join("gone")).expect("rm");
    fs::remove_dir_all(m.join("d")).expect("rm -rf");
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/new"), "new\n").expect("write");
    fs::rename(m.join("old"), m.join("new")).expect("mv");
    std::os::unix::fs::lchown(m.join("etc/mode"), Some(5), None).expect("chown");
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("etc/conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"b\n"))
        .expect("append");
    fs::write(m.join("added"), "n\n").expect("write");
}

const EXPECTED: &str = "A /added
C /d
A /d/new
D /d/x
D /d/z
C /etc
C /etc/conf
C /etc/mode
D /gone
A /new
A /new/f1
A /new/in
A /new/in/f2
D /old
";

fn ufs_diff(side: &Path, json: bool) -> String {
    let opts = format!(
        "lowerdir={},upperdir={}",
        side.join("l").display(),
        side.join("up").display()
    );
    let mut cmd = ufs_cmd();
    if json {
        cmd.arg("diff").arg("--json").arg("-o").arg(&opts);
    } else {
        cmd.arg("diff").arg("-o").arg(&opts);
    }
    let run = run_bounded(&mut cmd, CMD_TIMEOUT);
    assert!(run.success(), "ufs diff -o {opts}:\n{run}");
    run.stdout
}

/// The same changes made through the kernel overlay (`redirect_dir=on`, so that it renames the
/// directory) and through ufs give the same diff, and the expected one.
#[test]
fn diff_reads_kernel_and_ufs_uppers_alike() {
    if skip("diff_reads_kernel_and_ufs_uppers_alike") || is_stand_in() {
        return;
    }
    let t = tempdir();
    on_kernel_and_ufs(
        t.path(),
        "redirect_dir=on,metacopy=on,index=on",
        fill,
        change,
    );
    let kernel = ufs_diff(&t.path().join("kernel"), false);
    let ufs = ufs_diff(&t.path().join("ufs"), false);
    assert_eq!(kernel, EXPECTED, "the diff of the kernel's upper");
    assert_eq!(ufs, EXPECTED, "the diff of ufs's upper");
    let json = ufs_diff(&t.path().join("ufs"), true);
    assert!(
        json.starts_with(r#"[{"change":"A","path":"/added"},{"change":"C","path":"/d"}"#),
        "{json}"
    );
}
