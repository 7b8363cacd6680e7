//! Whether an upper or work directory is a layer of a live mount of another program: a kernel
//! overlay or a fuse-overlayfs mount. (Other ufs mounts are kept off by the locks in
//! `mount::lock_layers`.)
//!
//! Directories are compared by identity (`st_dev`, `st_ino`, following symlinks as the mount
//! options do), never by their path strings. Where the paths come from:
//!
//! - a kernel overlay lists its options in the super options of its line in
//!   `/proc/self/mountinfo`: `lowerdir=` (`:`-separated, `\`-escaped as the kernel parses it),
//!   `lowerdir+=`, `datadir+=`, `upperdir=`, `workdir=`, each octal-escaped by the mount table;
//! - a fuse-overlayfs mount's table entry carries no paths, so they are read from the `-o`
//!   options of its process's `/proc/PID/cmdline`.
//!
//! Both show the paths as the user typed them. A relative path names a directory relative to
//! the working directory of whoever mounted, which nothing records: for a kernel overlay such a
//! path cannot be checked (it is skipped, with a debug log line). fuse-overlayfs holds each layer
//! open, lowers and upper as themselves and the workdir as `WORKDIR/work`, so for one started with
//! relative paths the directories its process holds open stand in (and for a `work` one, its
//! parent). Only mounts in this mount namespace are seen, and only processes this user may
//! inspect. Processes of ufs's own binary are never taken for fuse-overlayfs, even when ufs runs
//! under that name (as docker's `fuse-overlayfs` storage driver runs it).

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::layer::NamedDirs;
use crate::mount::{MountError, Role};
use crate::options::Options;

/// A directory's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Id {
    dev: u64,
    ino: u64,
}

fn id_of(path: &Path) -> Option<Id> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_dir().then(|| Id {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Which layer of another mount a directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Their {
    Role(Role),
    /// A directory a fuse-overlayfs process holds open (its role is not known).
    Layer,
}

impl fmt::Display for Their {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Their::Role(role) => write!(f, "the {role}"),
            Their::Layer => f.write_str("a layer"),
        }
    }
}

/// One layer of a live mount.
#[derive(Debug)]
struct Layer {
    id: Id,
    role: Their,
    /// "the overlay mount on \"/m\"", "fuse-overlayfs (pid 12) on \"/m\"".
    mount: String,
}

/// Refuses an upper or workdir that is the upper, work or lower directory of a live kernel
/// overlay or fuse-overlayfs mount.
pub fn check(opts: &Options) -> Result<(), MountError> {
    check_dirs(&crate::mount::open_dirs(opts)?)
}

/// [`check`] on directories already opened.
pub fn check_dirs(dirs: &NamedDirs) -> Result<(), MountError> {
    let ours: Vec<(Role, &PathBuf, Id)> = [(Role::Upper, &dirs.upper), (Role::Work, &dirs.work)]
        .into_iter()
        .filter_map(|(role, dir)| {
            let dir = dir.as_ref()?;
            Some((
                role,
                &dir.path,
                Id {
                    dev: dir.dev,
                    ino: dir.ino,
                },
            ))
        })
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let mut layers = kernel_overlay_layers();
    layers.extend(fuse_overlayfs_layers());
    for (role, path, id) in ours {
        if let Some(layer) = layers.iter().find(|l| l.id == id) {
            return Err(MountError::InUse {
                role,
                path: path.clone(),
                by: format!("as {} of {}", layer.role, layer.mount),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Kernel overlays
// ---------------------------------------------------------------------------------------------

fn kernel_overlay_layers() -> Vec<Layer> {
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            log::warn!("cannot read /proc/self/mountinfo to find overlay mounts: {e}");
            return Vec::new();
        }
    };
    let mut layers = Vec::new();
    for (mountpoint, options) in overlay_mounts(&text) {
        let mount = format!("the overlay mount on {mountpoint:?}");
        for (role, path) in overlay_layers(&options) {
            if path.is_relative() {
                log::debug!("{mount}: cannot check the relative {role} {path:?}");
                continue;
            }
            if let Some(id) = id_of(&path) {
                layers.push(Layer {
                    id,
                    role: Their::Role(role),
                    mount: mount.clone(),
                });
            }
        }
    }
    layers
}

/// The mount point and the raw (still escaped) super options of every overlay in a mountinfo
/// text.
fn overlay_mounts(mountinfo: &str) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mountpoint = head.split(' ').nth(4)?;
            let mut tail = tail.split(' ');
            let fstype = tail.next()?;
            let _source = tail.next()?;
            let options = tail.next()?;
            (fstype == "overlay").then(|| (unescape_octal(mountpoint).into(), options.to_string()))
        })
        .collect()
}

/// The layer directories in an overlay's super options, as the kernel shows them: options are
/// separated by commas (a comma in a value is escaped as `\054`), values octal-escaped, and the
/// legacy `lowerdir=` list is `:`-separated with `\` escaping the next character.
fn overlay_layers(options: &str) -> Vec<(Role, PathBuf)> {
    let mut out = Vec::new();
    for option in options.split(',') {
        let Some((key, value)) = option.split_once('=') else {
            continue;
        };
        let value = unescape_octal(value);
        match key {
            "lowerdir" => out.extend(
                split_unescaped(&value, b':')
                    .into_iter()
                    .map(|p| (Role::Lower, unescape_backslash(&p).into())),
            ),
            "lowerdir+" | "datadir+" => out.push((Role::Lower, value.into())),
            "upperdir" => out.push((Role::Upper, unescape_backslash(&value).into())),
            "workdir" => out.push((Role::Work, unescape_backslash(&value).into())),
            _ => {}
        }
    }
    out
}

/// Undoes the mount table's `\ooo` escapes.
fn unescape_octal(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Splits at every `sep` not escaped by a backslash; escapes stay in the parts.
fn split_unescaped(s: &OsString, sep: u8) -> Vec<OsString> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut escaped = false;
    for &c in s.as_bytes() {
        if escaped {
            part.push(c);
            escaped = false;
        } else if c == b'\\' {
            part.push(c);
            escaped = true;
        } else if c == sep {
            parts.push(OsString::from_vec(std::mem::take(&mut part)));
        } else {
            part.push(c);
        }
    }
    parts.push(OsString::from_vec(part));
    parts
}

/// Removes backslash escapes: `\x` is `x`.
fn unescape_backslash(s: &OsString) -> OsString {
    let mut out = Vec::with_capacity(s.len());
    let mut escaped = false;
    for &c in s.as_bytes() {
        if c == b'\\' && !escaped {
            escaped = true;
        } else {
            out.push(c);
            escaped = false;
        }
    }
    OsString::from_vec(out)
}

// ---------------------------------------------------------------------------------------------
// fuse-overlayfs
// ---------------------------------------------------------------------------------------------

fn fuse_overlayfs_layers() -> Vec<Layer> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut layers = Vec::new();
    // ufs itself may run under the name fuse-overlayfs (docker's fuse-overlayfs driver runs the
    // program of that name from PATH). Its own command line names exactly the directories it is
    // about to mount, and other daemons of this same binary are ufs mounts, which the layer
    // locks keep off already (and which, unmounted, still show their command line for a moment
    // after releasing the locks: taking them for fuse-overlayfs would refuse a remount of the
    // same layers in that window).
    let me = std::process::id();
    let my_exe = exe_of(Path::new("/proc/self"));
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|pid| *pid != me)
        else {
            continue;
        };
        let dir = entry.path();
        // A process that exits meanwhile simply has nothing to read.
        let comm = std::fs::read(dir.join("comm")).unwrap_or_default();
        if comm.trim_ascii_end() != b"fuse-overlayfs" {
            continue;
        }
        if my_exe.is_some() && exe_of(&dir) == my_exe {
            continue;
        }
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<OsString> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        let (paths, mountpoint) = fuse_overlayfs_args(&args);
        let mount = match &mountpoint {
            Some(m) => format!("fuse-overlayfs (pid {pid}) on {m:?}"),
            None => format!("fuse-overlayfs (pid {pid})"),
        };
        let mut relative = false;
        for (role, path) in paths {
            if path.is_relative() {
                relative = true;
            } else if let Some(id) = id_of(&path) {
                layers.push(Layer {
                    id,
                    role: Their::Role(role),
                    mount: mount.clone(),
                });
            }
        }
        if relative {
            for id in held_directories(&dir) {
                layers.push(Layer {
                    id,
                    role: Their::Layer,
                    mount: mount.clone(),
                });
            }
        }
    }
    layers
}

/// The identity of a process's executable (`None` when it cannot be inspected).
fn exe_of(proc_dir: &Path) -> Option<Id> {
    let meta = std::fs::metadata(proc_dir.join("exe")).ok()?;
    Some(Id {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The layer paths in a fuse-overlayfs command line (`-o OPTS` or `-oOPTS`, commas separate
/// options, `\,` is a comma, `lowerdir` is `:`-separated), and its mount point: the last
/// argument that is neither an option nor an option's value.
fn fuse_overlayfs_args(args: &[OsString]) -> (Vec<(Role, PathBuf)>, Option<PathBuf>) {
    let mut paths = Vec::new();
    let mut mountpoint = None;
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        let options = if bytes == b"-o" {
            iter.next().cloned()
        } else if let Some(rest) = bytes.strip_prefix(b"-o") {
            Some(OsString::from_vec(rest.to_vec()))
        } else if bytes.starts_with(b"-") {
            None
        } else {
            mountpoint = Some(PathBuf::from(arg));
            None
        };
        for option in options.iter().flat_map(|o| split_unescaped(o, b',')) {
            let option = unescape_backslash(&option);
            let bytes = option.as_bytes();
            let Some(eq) = bytes.iter().position(|c| *c == b'=') else {
                continue;
            };
            let (key, value) = (&bytes[..eq], OsString::from_vec(bytes[eq + 1..].to_vec()));
            match key {
                b"lowerdir" => paths.extend(
                    value
                        .as_bytes()
                        .split(|c| *c == b':')
                        .filter(|p| !p.is_empty())
                        .map(|p| (Role::Lower, PathBuf::from(OsString::from_vec(p.to_vec())))),
                ),
                b"upperdir" => paths.push((Role::Upper, value.into())),
                b"workdir" => paths.push((Role::Work, value.into())),
                _ => {}
            }
        }
    }
    (paths, mountpoint)
}

/// The directories a process holds open (`/proc/PID/fd`), each as itself and, for one named
/// `work`, also its parent (fuse-overlayfs holds `WORKDIR/work`, not `WORKDIR`).
fn held_directories(proc_dir: &Path) -> Vec<Id> {
    let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for fd in fds.flatten() {
        let link = fd.path();
        let Some(id) = id_of(&link) else {
            continue;
        };
        ids.push(id);
        let target = std::fs::read_link(&link).unwrap_or_default();
        if target.file_name() == Some(std::ffi::OsStr::new("work"))
            && let Some(parent) = id_of(&link.join(".."))
        {
            ids.push(parent);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_from_mountinfo() {
        let text = "\
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
57 27 0:44 / /tmp/a\\040b rw,relatime - overlay overlay rw,lowerdir=l1:l\\134\\0542:/x\\134:y,upperdir=/u\\054v,workdir=/w,uuid=on
58 27 0:45 / /m2 rw - overlay overlay rw,lowerdir+=/a,datadir+=/d,upperdir=/u2,workdir=/w2
59 27 0:46 / /m3 rw - fuse.ufs ufs rw,user_id=0
";
        let mounts = overlay_mounts(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].0, PathBuf::from("/tmp/a b"));
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            overlay_layers(&mounts[0].1),
            vec![
                (Role::Lower, p("l1")),
                (Role::Lower, p("l,2")),
                (Role::Lower, p("/x:y")),
                (Role::Upper, p("/u,v")),
                (Role::Work, p("/w")),
            ]
        );
        assert_eq!(
            overlay_layers(&mounts[1].1),
            vec![
                (Role::Lower, p("/a")),
                (Role::Lower, p("/d")),
                (Role::Upper, p("/u2")),
                (Role::Work, p("/w2")),
            ]
        );
    }

    #[test]
    fn fuse_overlayfs_command_lines() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let p = |s: &str| PathBuf::from(s);
        let (paths, mountpoint) = fuse_overlayfs_args(&args(&[
            "fuse-overlayfs",
            "-o",
            "lowerdir=/l1:/l2,upperdir=/u\\,x,workdir=w",
            "-f",
            "-onoatime",
            "/m",
        ]));
        assert_eq!(
            paths,
            vec![
                (Role::Lower, p("/l1")),
                (Role::Lower, p("/l2")),
                (Role::Upper, p("/u,x")),
                (Role::Work, p("w")),
            ]
        );
        assert_eq!(mountpoint, Some(p("/m")));
        let (paths, _) = fuse_overlayfs_args(&args(&["fuse-overlayfs", "-oupperdir=/u", "/m"]));
        assert_eq!(paths, vec![(Role::Upper, p("/u"))]);
    }
}
