//! POSIX ACLs through ufs, compared with the kernel overlay on the same layers (xfstests'
//! `overlay/023`, `overlay/025` and `generic/375` in the small): ACLs of lower and upper files
//! grant access, new entries inherit default ACLs (also where ufs builds them in the work
//! directory), `setfacl` copies up, `chmod` rewrites the ACL mask, a non-member's `setfacl`
//! clears the set-group-id bit, `WORKDIR/work` does not inherit the workdir's default ACL, and
//! `noacl` turns enforcement off.
//!
//! Each check runs the same shell script on a kernel overlay and on ufs, each over its own copy
//! of the layers (on `/tmp`'s filesystem, which must have ACLs), and compares the transcripts.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs a command as uid/gid 65534 without supplementary groups.
const NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";

/// Why these tests cannot run here, if they cannot.
fn acl_skip(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    for tool in ["setfacl", "getfacl", "setpriv"] {
        if which(tool).is_none() {
            say(&format!("SKIP {test}: no {tool} in PATH"));
            return true;
        }
    }
    let t = tempdir();
    let probe = t.path().join("probe");
    std::fs::write(&probe, b"").expect("probe file");
    let run = run_bounded(
        Command::new("setfacl")
            .args(["-m", "u:65534:r"])
            .arg(&probe),
        CMD_TIMEOUT,
    );
    if !run.success() {
        say(&format!(
            "SKIP {test}: no ACLs on /tmp's filesystem:\n{run}"
        ));
        return true;
    }
    false
}

fn sh(script: &str, cwd: &Path) -> Run {
    run_bounded(
        Command::new("sh")
            .args(["-c", &format!("umask 022; {script}")])
            .current_dir(cwd),
        CMD_TIMEOUT,
    )
}

/// Runs `setup` (as root, in the side's base directory: layers `l`, `u`, workdir `w`) on fresh
/// layers, mounts them (kernel overlay or ufs with `ufs_extra` options),
/// runs `ops` in the mount, and returns what it printed (stdout and stderr).
fn transcript(base: &Path, kernel: bool, ufs_extra: &str, setup: &str, ops: &str) -> String {
    let side = mkdirs(&base.join(if kernel { "kernel" } else { "ufs" }));
    for d in ["l", "u", "w", "m"] {
        mkdirs(&side.join(d));
    }
    let run = sh(setup, &side);
    assert!(run.success(), "setup failed:\n{run}");
    let m = side.join("m");
    let out = if kernel {
        let _k = KernelOverlay::mount("lowerdir=l,upperdir=u,workdir=w", &m, &side);
        sh(ops, &m)
    } else {
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            side.join("l").display(),
            side.join("u").display(),
            side.join("w").display()
        );
        if !ufs_extra.is_empty() {
            opts = format!("{opts},{ufs_extra}");
        }
        let _u = UfsMount::mount(&opts, &m);
        sh(ops, &m)
    };
    format!("{}{}", out.stdout, out.stderr)
}

/// The same `setup` and `ops` on the kernel overlay and on ufs print the same.
fn same_as_kernel(test: &str, setup: &str, ops: &str) {
    if acl_skip(test) {
        return;
    }
    let t = tempdir();
    let kernel = transcript(t.path(), true, "", setup, ops);
    let ufs = transcript(t.path(), false, "", setup, ops);
    assert_eq!(
        ufs, kernel,
        "{test}: ufs (left) differs from the kernel overlay (right)"
    );
}

#[test]
fn a_lower_files_acl_grants_access() {
    same_as_kernel(
        "a_lower_files_acl_grants_access",
        "echo hi > l/f; chmod 600 l/f; setfacl -m u:65534:r l/f; \
         mkdir -m 0 l/d; setfacl -m u:65534:rx l/d; echo in > l/d/g; chmod 644 l/d/g",
        &format!("{NOBODY} cat f; {NOBODY} cat d/g; {NOBODY} ls d; {NOBODY} sh -c 'echo x >> f'"),
    );
}

#[test]
fn an_upper_files_acl_grants_access() {
    // overlay/025: an upper directory of mode 0 that an ACL lets another user list.
    same_as_kernel(
        "an_upper_files_acl_grants_access",
        "echo up > u/f; chmod 600 u/f; setfacl -m u:65534:rw u/f; \
         mkdir -m 0 u/testd; setfacl -m u:65534:rx u/testd; touch u/testd/x",
        &format!("{NOBODY} cat f; {NOBODY} sh -c 'echo y >> f'; cat f; {NOBODY} ls testd"),
    );
}

/// What each new entry looks like: mode and ACLs.
const SHOW: &str =
    "for p in \"$@\"; do echo \"$p: $(stat -c %A \"$p\")\"; getfacl -c -p \"$p\"; done";

#[test]
fn new_entries_inherit_default_acls_in_place() {
    // Made in the upper parent directly (a lower directory copied up, an upper one), with the
    // caller's umask, which a default ACL overrides; in a directory without one it applies.
    same_as_kernel(
        "new_entries_inherit_default_acls_in_place",
        "mkdir l/ld u/ud l/plain; \
         setfacl -d -m u:65534:rwx,g::r-x,o::- l/ld; setfacl -d -m u:65534:rwx,g::rwx,o::r u/ud",
        &format!(
            "umask 027; touch ld/f ud/f plain/f; mkdir ld/d ud/d plain/d; mkfifo ld/p; \
             ln -s x ld/s; sh -c '{SHOW}' sh ld/f ud/f plain/f ld/d ud/d plain/d ld/p; \
             stat -c %A ld/s; {NOBODY} sh -c 'echo z > ld/f' && cat ld/f"
        ),
    );
}

#[test]
fn new_entries_built_in_the_work_directory_inherit_the_union_parents_default_acl() {
    // Over a whiteout and as an opaque directory ufs builds the entry in the work directory
    // and renames it in: it must get the union parent's default ACL, not the work dir's.
    same_as_kernel(
        "new_entries_built_in_the_work_directory_inherit_the_union_parents_default_acl",
        "mkdir l/ld; setfacl -d -m u:65534:rwx,g::r-x,o::- l/ld; touch l/ld/f; \
         mkdir l/ld/d; touch l/ld/d/x; setfacl -d -m o::rwx w",
        &format!(
            "rm ld/f; rm -r ld/d; touch ld/f; mkdir ld/d; mkdir ld/d/sub; \
             sh -c '{SHOW}' sh ld/f ld/d ld/d/sub; ls ld/d"
        ),
    );
}

#[test]
fn setfacl_on_a_lower_file_copies_it_up() {
    same_as_kernel(
        "setfacl_on_a_lower_file_copies_it_up",
        "echo lo > l/g; chmod 600 l/g; mkdir l/ld",
        &format!(
            "setfacl -m u:65534:r g; setfacl -d -m u:65534:rwx ld; \
             sh -c '{SHOW}' sh g ld; {NOBODY} cat g; setfacl -b g; {NOBODY} cat g; \
             getfacl -c g; getfacl -c ../u/g"
        ),
    );
}

#[test]
fn chmod_rewrites_the_acl_mask() {
    same_as_kernel(
        "chmod_rewrites_the_acl_mask",
        "echo m > l/f; chmod 644 l/f; setfacl -m u:65534:rw,g::r l/f; \
         echo n > u/f2; setfacl -m u:65534:rwx u/f2",
        &format!(
            "chmod 604 f; chmod 640 f2; sh -c '{SHOW}' sh f f2; \
             {NOBODY} sh -c 'echo w >> f'; {NOBODY} cat f2"
        ),
    );
}

#[test]
fn a_non_members_setfacl_clears_setgid() {
    // generic/375: the bit stays when the caller is in the file's group, and goes when not,
    // with `chmod` and with `setfacl`; on lower and upper files and directories.
    let as_member = "setpriv --reuid=100 --regid=100 --clear-groups";
    let not_member = "setpriv --reuid=100 --regid=101 --clear-groups";
    same_as_kernel(
        "a_non_members_setfacl_clears_setgid",
        "for p in l/f1 l/f2 l/f3 l/f4 u/u1 u/u2; do touch $p; done; mkdir l/d1 l/d2; \
         for p in l/f1 l/f2 l/f3 l/f4 u/u1 u/u2 l/d1 l/d2; do chown 100:100 $p; chmod 2755 $p; done",
        &format!(
            "{as_member} chmod 2777 f1; {as_member} setfacl -m u::rwx,g::rwx,o::rwx f2; \
             {not_member} chmod 2777 f3; {not_member} setfacl -m u::rwx,g::rwx,o::rwx f4; \
             {not_member} setfacl -m u:65534:r u1; {as_member} setfacl -m u:65534:r u2; \
             {not_member} setfacl -m u::rwx,g::rwx,o::rwx d1; {as_member} setfacl -m g::rwx d2; \
             {not_member} setfacl -x u:65534 u1; \
             stat -c '%n %A' f1 f2 f3 f4 u1 u2 d1 d2; {NOBODY} chmod 2777 f1"
        ),
    );
}

#[test]
fn the_work_directory_does_not_inherit_the_workdirs_default_acl() {
    // overlay/023. The kernel leaves `work` at mode 0, ufs at 0700 (docs/DIFFERENCES.md), so
    // the owner's entry is left out of the comparison.
    same_as_kernel(
        "the_work_directory_does_not_inherit_the_workdirs_default_acl",
        "setfacl -d -m o::rwx w; setfacl -m u:65534:rwx w; echo x > l/f",
        "getfacl -c -p ../w/work | grep -v '^user::'; echo y >> f; cat f; \
         getfacl -c -p ../u/f",
    );
}

#[test]
fn noacl_leaves_acls_to_the_real_files_only() {
    let test = "noacl_leaves_acls_to_the_real_files_only";
    if acl_skip(test) {
        return;
    }
    let t = tempdir();
    let setup = "echo hi > l/f; chmod 600 l/f; setfacl -m u:65534:r l/f; mkdir l/plain";
    let ops = format!(
        "{NOBODY} cat f 2>&1 | sed 's/.*: //'; umask 077; touch plain/n; stat -c %A plain/n; \
         getfacl -c f"
    );
    let with = transcript(&t.path().join("acl"), false, "", setup, &ops);
    let without = transcript(&t.path().join("noacl"), false, "noacl", setup, &ops);
    assert!(with.starts_with("hi\n-rw-------\n"), "with ACLs: {with}");
    // The kernel applies the umask itself then, and checks the mode bits only; the ACL is
    // still there as an xattr.
    assert!(
        without.starts_with("Permission denied\n-rw-------\n"),
        "with noacl: {without}"
    );
    assert!(without.contains("user:nobody:r--"), "with noacl: {without}");
}

#[test]
fn removing_an_acl_that_is_not_there_succeeds() {
    // Found by the differential harness: on an upper file the upper filesystem's `set_acl` of
    // no ACL succeeds whether or not there was one; ufs answered `ENODATA` as it does (and the
    // kernel overlay does) for a lower file, which is not copied up for it.
    if which("setfattr").is_none() {
        say("SKIP removing_an_acl_that_is_not_there_succeeds: no setfattr in PATH");
        return;
    }
    same_as_kernel(
        "removing_an_acl_that_is_not_there_succeeds",
        "touch l/f u/g; mkdir l/d",
        "for a in 'access f' 'access g' 'default d' 'access d'; do set -- $a; \
         setfattr -x system.posix_acl_$1 $2 && echo \"$2 $1 removed\"; done; \
         ls ../u; setfattr -x user.none f",
    );
}

/// `ls -l` asks every file for `security.selinux` first, then its access ACL (and the kernel asks
/// `security.capability` before a write): ufs answers the first question about a node from one
/// listing of its xattr names and remembers the absent ones, so the ACLs, default ACLs and file
/// capabilities that are there must still be read after an absent name was asked, on lower and
/// upper files and directories, and a later `setfacl` must be seen.
#[test]
fn asked_xattrs_present_after_an_absent_one() {
    let ask = "for f in lf ld uf ud; do \
                 for x in security.selinux system.posix_acl_access system.posix_acl_default \
                          security.capability; do \
                   printf '%s %s: ' $f $x; getfattr -h --absolute-names -e hex -n $x $f 2>&1 | \
                     sed -n 's/^[a-z._]*=//p;s/.*: \\(No such attribute\\)$/\\1/p'; \
                 done; \
               done";
    same_as_kernel(
        "asked_xattrs_present_after_an_absent_one",
        "echo a > l/lf; setfacl -m u:65534:r l/lf; setcap cap_net_raw+ep l/lf; \
         mkdir l/ld; setfacl -d -m u:65534:rx l/ld; \
         echo b > u/uf; setfacl -m u:65534:rw u/uf; mkdir u/ud; setfacl -m u:65534:rx u/ud",
        &format!("{ask}; ls -l >/dev/null; setfacl -m u:65534:rwx ud; {ask}"),
    );
}
