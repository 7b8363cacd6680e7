//! Read-side semantics of ufs, checked through real mounts: permission checks (root and uid
//! 65534, compared with kernel overlayfs) and read-only mounts (every write refused with
//! `EROFS`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

/// For each path: `test -r`, `-w`, `-x`, and whether it can actually be read (`cat`/`ls`).
const ACCESS_SCRIPT: &str = r#"
for p in "$@"; do
  r=0; w=0; x=0; o=0
  test -r "$p" && r=1
  test -w "$p" && w=1
  test -x "$p" && x=1
  if test -d "$p"; then ls "$p" >/dev/null 2>&1 && o=1; else cat "$p" >/dev/null 2>&1 && o=1; fi
  echo "$p r=$r w=$w x=$x read=$o"
done
"#;

fn access_report(mnt: &Path, paths: &[&str], as_nobody: bool) -> Vec<String> {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            ACCESS_SCRIPT,
            "sh",
        ]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", ACCESS_SCRIPT, "sh"]);
        c
    };
    cmd.args(paths).current_dir(mnt);
    let run = run_bounded(&mut cmd, CMD_TIMEOUT);
    assert!(run.success(), "access script failed:\n{run}");
    run.stdout.lines().map(str::to_string).collect()
}

fn access_stack(with_upper: bool) -> Stack {
    let mut low = Layer::default();
    let mut up = Layer::default();
    let spec: &[(&str, u32, u32)] = &[
        ("f000", 0o000, 0),
        ("f400", 0o400, 0),
        ("f600", 0o600, 0),
        ("f644", 0o644, 0),
        ("f666", 0o666, 0),
        ("f700", 0o700, 0),
        ("f755", 0o755, 0),
        ("f4755", 0o4755, 0),
        ("f604", 0o604, 0),
        ("n600", 0o600, 65534),
        ("n000", 0o000, 65534),
        ("n500", 0o500, 65534),
    ];
    for (name, mode, uid) in spec {
        for (layer, prefix) in [(&mut low, ""), (&mut up, "u")] {
            let mut meta = Meta::new(*mode);
            meta.uid = *uid;
            meta.gid = *uid;
            layer.put(
                &format!("{prefix}{name}"),
                Node::File {
                    meta,
                    content: b"data".to_vec(),
                },
            );
        }
    }
    for (name, mode, uid) in [
        ("d700", 0o700, 0),
        ("d755", 0o755, 0),
        ("d711", 0o711, 0),
        ("nd700", 0o700, 65534),
        ("d777", 0o777, 0),
    ] {
        let mut meta = Meta::new(mode);
        meta.uid = uid;
        meta.gid = uid;
        let mut children = BTreeMap::new();
        children.insert("inner".to_string(), Node::file(b"inner"));
        low.put(
            name,
            Node::Dir {
                meta,
                opaque: false,
                children,
            },
        );
    }
    Stack {
        lowers: vec![low],
        upper: with_upper.then_some(up),
    }
}

#[test]
fn access_matches_kernel_for_root_and_nobody() {
    if skip("access_matches_kernel_for_root_and_nobody") {
        return;
    }
    if which("setpriv").is_none() {
        say("SKIP access_matches_kernel_for_root_and_nobody: no setpriv");
        return;
    }
    let t = tempdir();
    for with_upper in [true, false] {
        let stack = access_stack(with_upper);
        let tag = if with_upper { "up" } else { "ro" };
        let u = stack.materialize(&t.path().join(format!("u{tag}")), Flavor::Ufs, 5);
        let k = stack.materialize(&t.path().join(format!("k{tag}")), Flavor::Kernel, 5);
        let _m = UfsMount::mount(&format!("{},allow_other", u.options()), &u.mnt);
        let _k = KernelOverlay::mount(&k.kernel_options(), &k.mnt, &k.base);
        let mut paths: Vec<String> = list_names(&k.mnt);
        paths.extend(
            [
                "d700/inner",
                "d755/inner",
                "d711/inner",
                "nd700/inner",
                "d777/inner",
            ]
            .map(String::from),
        );
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        for nobody in [false, true] {
            let ur = access_report(&u.mnt, &paths, nobody);
            let kr = access_report(&k.mnt, &paths, nobody);
            let diffs: Vec<String> = ur
                .iter()
                .zip(&kr)
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("ufs: {a:<28} kernel: {b}"))
                .collect();
            assert_eq!(ur.len(), kr.len());
            assert!(
                diffs.is_empty(),
                "access results differ ({}, upper: {with_upper}):\n{}",
                if nobody { "uid 65534" } else { "root" },
                diffs.join("\n")
            );
            if nobody {
                let line = |p: &str| {
                    ur.iter()
                        .find(|l| l.starts_with(&format!("{p} ")))
                        .cloned()
                        .unwrap_or_default()
                };
                assert!(
                    line("f600").ends_with("read=0"),
                    "nobody read a root 0600 file: {}",
                    line("f600")
                );
                assert!(
                    line("f644").ends_with("read=1"),
                    "nobody cannot read a 0644 file: {}",
                    line("f644")
                );
                assert!(
                    line("d700").ends_with("read=0"),
                    "nobody listed a root 0700 dir: {}",
                    line("d700")
                );
                assert!(
                    line("d711/inner").ends_with("read=1"),
                    "0711 dir must be traversable: {}",
                    line("d711/inner")
                );
                assert!(
                    line("d700/inner").ends_with("read=0"),
                    "traversed a root 0700 dir: {}",
                    line("d700/inner")
                );
                assert!(
                    line("n600").ends_with("read=1"),
                    "nobody cannot read its own file: {}",
                    line("n600")
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only mounts
// ---------------------------------------------------------------------------------------------

type Op = (&'static str, fn(&Path) -> io::Result<()>);

fn write_ops() -> Vec<Op> {
    use std::fs::OpenOptions;
    vec![
        ("create", |m| fs::File::create(m.join("new")).map(drop)),
        ("create O_EXCL", |m| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.join("new2"))
                .map(drop)
        }),
        ("mkdir", |m| fs::create_dir(m.join("newdir"))),
        ("unlink", |m| fs::remove_file(m.join("file"))),
        ("rmdir", |m| fs::remove_dir(m.join("empty"))),
        ("chmod", |m| {
            fs::set_permissions(m.join("file"), fs::Permissions::from_mode(0o600))
        }),
        ("chown", |m| {
            std::os::unix::fs::lchown(m.join("file"), Some(1), Some(1))
        }),
        ("utimes", |m| set_times(&m.join("file"), 1, 0)),
        ("setxattr", |m| set_xattr(&m.join("file"), "user.new", b"v")),
        ("removexattr", |m| remove_xattr(&m.join("file"), "user.k")),
        ("open O_WRONLY", |m| {
            OpenOptions::new()
                .write(true)
                .open(m.join("file"))
                .map(drop)
        }),
        ("open O_RDWR", |m| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.join("file"))
                .map(drop)
        }),
        ("open O_APPEND", |m| {
            OpenOptions::new()
                .append(true)
                .open(m.join("file"))
                .map(drop)
        }),
        ("open O_TRUNC", |m| {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(m.join("dir/inner"))
                .map(drop)
        }),
        ("open O_WRONLY|O_NOFOLLOW", |m| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(m.join("dir/inner"))
                .map(drop)
        }),
        ("truncate", |m| {
            let c = cpath(&m.join("file"));
            // SAFETY: c is NUL-terminated.
            if unsafe { libc::truncate(c.as_ptr(), 0) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }),
        ("rename", |m| fs::rename(m.join("file"), m.join("file2"))),
        ("symlink", |m| std::os::unix::fs::symlink("x", m.join("sl"))),
        ("link", |m| fs::hard_link(m.join("file"), m.join("hl"))),
        ("mkfifo", |m| mkfifo(&m.join("fifo"), 0o644)),
        ("rm -r (unlink inside a dir)", |m| {
            fs::remove_dir_all(m.join("dir"))
        }),
        ("access W_OK", |m| {
            let c = cpath(&m.join("file"));
            // SAFETY: c is NUL-terminated.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }),
    ]
}

fn ro_fixture(base: &Path) -> PathBuf {
    let low = mkdirs(&base.join("l"));
    fs::write(low.join("file"), "content").unwrap();
    set_xattr(&low.join("file"), "user.k", b"v").unwrap();
    mkdirs(&low.join("empty"));
    mkdirs(&low.join("dir"));
    fs::write(low.join("dir/inner"), "inner").unwrap();
    low
}

fn assert_all_erofs(mnt: &Path, what: &str) {
    let mut bad = Vec::new();
    for (name, op) in write_ops() {
        match op(mnt) {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            other => bad.push(format!("{name}: {other:?}")),
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: these calls did not fail with EROFS:\n{}",
        bad.join("\n")
    );
}

#[test]
fn read_only_without_upper_refuses_writes_with_erofs() {
    if skip("read_only_without_upper_refuses_writes_with_erofs") {
        return;
    }
    let t = tempdir();
    let low = ro_fixture(t.path());
    let before = snapshot(&low);
    let mnt = mkdirs(&t.path().join("m"));
    let m = UfsMount::mount(&format!("lowerdir={}", low.display()), &mnt);
    assert_eq!(
        fs::read(mnt.join("file")).unwrap(),
        b"content",
        "reads work"
    );
    assert_all_erofs(&mnt, "no upper");
    drop(m);
    assert_same_tree(
        "after",
        &snapshot(&low),
        "before",
        &before,
        "the lower must be untouched",
    );
}

#[test]
fn read_only_option_with_upper_refuses_writes_with_erofs() {
    if skip("read_only_option_with_upper_refuses_writes_with_erofs") {
        return;
    }
    let t = tempdir();
    let low = ro_fixture(t.path());
    let up = mkdirs(&t.path().join("up"));
    let wk = mkdirs(&t.path().join("wk"));
    let before = snapshot(&low);
    let mnt = mkdirs(&t.path().join("m"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},ro",
        low.display(),
        up.display(),
        wk.display()
    );
    let m = UfsMount::mount(&opts, &mnt);
    assert_eq!(
        fs::read(mnt.join("file")).unwrap(),
        b"content",
        "reads work"
    );
    assert_all_erofs(&mnt, "-o ro with upper");
    drop(m);
    assert_same_tree(
        "after",
        &snapshot(&low),
        "before",
        &before,
        "the lower must be untouched",
    );
    assert!(
        list_names(&up).is_empty(),
        "the upper must stay empty: {:?}",
        list_names(&up)
    );
}
