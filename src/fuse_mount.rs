//! Making the FUSE mount: which flags and options it gets, and how it is made, as libfuse makes
//! it for fuse-overlayfs.
//!
//! Container tools run their `mount_program` as uid 0 (on the host, or as root of a rootless
//! user namespace) and expect fuse-overlayfs's mount: it adds `default_permissions,allow_other,suid`
//! when its effective uid is 0 and `default_permissions` otherwise, before the caller's `-o`
//! options, and libfuse starts from `nosuid,nodev`. So as uid 0 ufs mounts `suid,nodev` with
//! `allow_other` (containers whose processes run as another user can use it, and setuid
//! programs in the image work), and `dev`, `nodev`, `suid`, `nosuid`, `exec`, `noexec`, `ro`,
//! `rw` and `noatime` from `-o` are applied. (fuser's own mount adds `nosuid,nodev` unless told
//! otherwise and drops the subtype, so ufs mounts by itself and hands fuser the descriptor.)
//!
//! How, as libfuse does it: open `/dev/fuse` and call `mount(2)` with type `fuse.ufs`; when that
//! is not permitted (`EPERM` from `mount`, or `/dev/fuse` not open to the caller), let the setuid
//! `fusermount3` from `PATH` mount it and send the descriptor back over a socket. fusermount3
//! applies its own rules for users other than root (always `nosuid,nodev`; `allow_other` only
//! with `user_allow_other` in `/etc/fuse.conf`), which are what a non-root caller gets.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::options::Options;
use crate::sys;

/// The mount type's subtype: the mount table says `fuse.ufs`.
pub const SUBTYPE: &str = "ufs";

/// The source shown in the mount table when neither SOURCE nor `fsname=` is given.
pub const DEFAULT_SOURCE: &str = "ufs";

/// Who may use the mount, beyond the kernel's permission checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only the user that mounted it (FUSE's default).
    Owner,
    /// The owner and root (`allow_root`: the kernel lets everyone in, ufs answers only these).
    RootAndOwner,
    /// Everyone (`allow_other`, and every mount made as uid 0).
    Everyone,
}

/// The mount to make: everything decided from the options and the caller's uid, before any
/// system call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The source in the mount table.
    pub source: String,
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub access: Access,
}

impl Plan {
    /// The mount for `opts`; `read_only` also covers a union without an upper, and `privileged`
    /// is "the effective uid is 0", the test fuse-overlayfs makes (also true for root of a user
    /// namespace).
    pub fn new(opts: &Options, read_only: bool, privileged: bool) -> Plan {
        let access = if privileged || opts.allow_other {
            Access::Everyone
        } else if opts.allow_root {
            Access::RootAndOwner
        } else {
            Access::Owner
        };
        Plan {
            source: opts.fsname.clone().unwrap_or_else(|| DEFAULT_SOURCE.into()),
            read_only,
            nosuid: opts.nosuid.unwrap_or(!privileged),
            nodev: opts.nodev,
            noexec: opts.noexec,
            noatime: opts.noatime,
            access,
        }
    }

    /// The `MS_*` flags for `mount(2)`.
    pub fn flags(&self) -> libc::c_ulong {
        [
            (self.read_only, libc::MS_RDONLY),
            (self.nosuid, libc::MS_NOSUID),
            (self.nodev, libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
            (self.noatime, libc::MS_NOATIME),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, flag)| flags | flag)
    }

    /// The FUSE options the kernel takes in `mount(2)`'s data argument.
    pub fn kernel_options(&self, fd: i32, root_mode: u32, uid: u32, gid: u32) -> String {
        let mut data = format!(
            "fd={fd},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
            root_mode & libc::S_IFMT
        );
        if self.access != Access::Owner {
            data.push_str(",allow_other");
        }
        data
    }

    /// The `-o` argument for `fusermount3`: the flags spelt out, the kernel options it passes
    /// on, and the source and subtype (with libfuse's escapes).
    pub fn fusermount_options(&self) -> String {
        let mut opts = vec![if self.read_only { "ro" } else { "rw" }];
        for (on, yes, no) in [
            (self.nosuid, "nosuid", "suid"),
            (self.nodev, "nodev", "dev"),
            (self.noexec, "noexec", "exec"),
        ] {
            opts.push(if on { yes } else { no });
        }
        if self.noatime {
            opts.push("noatime");
        }
        opts.push("default_permissions");
        if self.access != Access::Owner {
            opts.push("allow_other");
        }
        let mut text = opts.join(",");
        text.push_str(",fsname=");
        for c in self.source.chars() {
            if matches!(c, ',' | '\\') {
                text.push('\\');
            }
            text.push(c);
        }
        text.push_str(",subtype=");
        text.push_str(SUBTYPE);
        text
    }
}

/// Mounts the FUSE filesystem of `plan` on `mountpoint` (absolute) and returns the
/// `/dev/fuse` descriptor to serve it through. Errors are one line naming what failed.
pub fn mount(plan: &Plan, mountpoint: &Path) -> io::Result<OwnedFd> {
    let dev = match sys::fuse::open_dev_fuse() {
        Ok(dev) => dev,
        Err(e) if denied(&e) => {
            log::debug!("cannot open /dev/fuse ({e}); trying fusermount3");
            return fusermount(plan, mountpoint).map_err(|why| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open /dev/fuse: {}{why}", describe(&e)),
                )
            });
        }
        Err(e) => {
            let hint = match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => {
                    " (is the fuse module loaded? try `modprobe fuse`)"
                }
                _ => "",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse: {}{hint}", describe(&e)),
            ));
        }
    };
    let root_mode = std::fs::metadata(mountpoint)?.mode();
    let (uid, gid) = sys::euid_egid();
    let data = plan.kernel_options(dev.as_raw_fd(), root_mode, uid, gid);
    let result = sys::fuse::mount(
        &c_string(plan.source.as_bytes())?,
        &c_string(mountpoint.as_os_str().as_bytes())?,
        &c_string(format!("fuse.{SUBTYPE}").as_bytes())?,
        plan.flags(),
        &c_string(data.as_bytes())?,
    );
    match result {
        Ok(()) => Ok(dev),
        // Not allowed to mount (not root, or a kernel that refuses FUSE mounts in this user
        // namespace): the setuid helper may be, as libfuse falls back to it.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            drop(dev);
            log::debug!("mount(2) refused ({e}); trying fusermount3");
            fusermount(plan, mountpoint)
                .map_err(|why| io::Error::new(e.kind(), format!("mount: {}{why}", describe(&e))))
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("mount: {}", describe(&e)))),
    }
}

fn denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

fn describe(e: &io::Error) -> String {
    crate::mount::describe(e)
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Has `fusermount3` mount `plan` and send back the descriptor (libfuse's protocol: the socket
/// is named by `_FUSE_COMMFD`). The error is the tail of a message: why this fallback did not
/// work either.
fn fusermount(plan: &Plan, mountpoint: &Path) -> Result<OwnedFd, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("; cannot create a socket: {e}"))?;
    sys::fuse::clear_cloexec(theirs.as_fd()).map_err(|e| format!("; {e}"))?;
    let child = Command::new("fusermount3")
        .arg("-o")
        .arg(plan.fusermount_options())
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    // The child has its copy (or there is no child); ours would keep the socket open and hide
    // the child's exit from `recv_fd`.
    drop(theirs);
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(" (and there is no fusermount3 in PATH to mount through)".into());
        }
        Err(e) => return Err(format!("; cannot run fusermount3: {}", describe(&e))),
    };
    let received = sys::fuse::recv_fd(ours.as_fd());
    drop(ours);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        // What fusermount3 printed is only used to explain a failure; an unreadable pipe
        // leaves the explanation shorter, which the exit status below still covers.
        if let Err(e) = pipe.read_to_string(&mut stderr) {
            log::debug!("reading fusermount3's stderr: {e}");
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("; waiting for fusermount3: {e}"))?;
    let said: Vec<&str> = stderr
        .lines()
        .map(|l| l.strip_prefix("fusermount3: ").unwrap_or(l).trim())
        .filter(|l| !l.is_empty())
        .collect();
    match received {
        Ok(Some(fd)) => {
            for line in said {
                log::warn!("fusermount3: {line}");
            }
            Ok(fd)
        }
        Ok(None) if said.is_empty() => Err(format!("; fusermount3 failed ({status})")),
        Ok(None) => Err(format!("; fusermount3: {}", said.join("; "))),
        Err(e) => Err(format!("; receiving the descriptor from fusermount3: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(opts: &[&str], read_only: bool, privileged: bool) -> Plan {
        let mut all = vec!["lowerdir=/l"];
        all.extend_from_slice(opts);
        let opts = crate::options::parse(&all, Path::new("/")).expect("options");
        Plan::new(&opts, read_only, privileged)
    }

    #[test]
    fn root_gets_fuse_overlayfs_defaults() {
        let p = plan(&[], false, true);
        assert_eq!(p.access, Access::Everyone);
        assert_eq!(p.flags(), libc::MS_NODEV);
        assert_eq!(
            p.kernel_options(5, libc::S_IFDIR | 0o755, 0, 0),
            "fd=5,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
        );
        assert_eq!(
            p.fusermount_options(),
            "rw,suid,nodev,exec,default_permissions,allow_other,fsname=ufs,subtype=ufs"
        );
    }

    #[test]
    fn others_get_libfuse_defaults() {
        let p = plan(&[], false, false);
        assert_eq!(p.access, Access::Owner);
        assert_eq!(p.flags(), libc::MS_NOSUID | libc::MS_NODEV);
        assert_eq!(
            p.kernel_options(7, libc::S_IFDIR | 0o700, 1000, 100),
            "fd=7,rootmode=40000,user_id=1000,group_id=100,default_permissions"
        );
        assert_eq!(
            plan(&["allow_root"], false, false).access,
            Access::RootAndOwner
        );
        assert_eq!(
            plan(&["allow_other"], false, false).access,
            Access::Everyone
        );
    }

    #[test]
    fn flags_given_are_applied() {
        let cases: &[(&[&str], bool, libc::c_ulong)] = &[
            (&["nosuid"], true, libc::MS_NOSUID | libc::MS_NODEV),
            (&["dev"], true, 0),
            (&["suid", "dev"], false, 0),
            (&["nosuid,suid,nodev,dev"], false, 0),
            (
                &["noexec", "noatime"],
                true,
                libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME,
            ),
            (&["noexec,exec"], true, libc::MS_NODEV),
            (&["ro"], true, libc::MS_NODEV | libc::MS_RDONLY),
        ];
        for (opts, privileged, want) in cases {
            let opts_parsed =
                crate::options::parse(&[&["lowerdir=/l"][..], opts].concat(), Path::new("/"))
                    .expect("options");
            let p = Plan::new(&opts_parsed, opts_parsed.read_only, *privileged);
            assert_eq!(p.flags(), *want, "{opts:?} privileged={privileged}");
        }
    }

    #[test]
    fn fusermount_options_escape_the_source() {
        let p = plan(&[r"fsname=a\,b", "ro", "nosuid", "noatime"], true, false);
        assert_eq!(
            p.fusermount_options(),
            r"ro,nosuid,nodev,exec,noatime,default_permissions,fsname=a\,b,subtype=ufs"
        );
    }
}
