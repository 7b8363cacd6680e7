//! The life of one mount: which mount at MERGED is this daemon's, unmounting only that one, and
//! the signals that end it (and the one that asks for its status report, `SIGUSR1`).
//!
//! A mount ends in one of three ways. Someone unmounts it (`umount`, `fusermount3 -u`): the
//! kernel ends the FUSE connection and the daemon just exits. A signal (`SIGTERM`, `SIGINT`,
//! `SIGHUP`) asks the daemon to end it: the daemon detaches its mount (lazily, as libfuse and so
//! fuse-overlayfs do), keeps answering until the kernel ends the connection, which it does as
//! soon as the last user lets go, and exits 0. Or the daemon's event loops fail with the mount
//! still attached: the daemon detaches it on the way out, so that nothing is left answering
//! "Transport endpoint is not connected".
//!
//! In every case the daemon unmounts only its own mount. The mount point is a path, and by the
//! time a daemon ends, what is mounted there may be another mount (a second ufs stacked on the
//! first, a tmpfs mounted after an external unmount). So [`OwnMount`] records the mount id of the
//! mount the daemon made, and [`OwnMount::release`] opens the mount point with `O_PATH` (which
//! sends the filesystem no request, so it cannot deadlock on the daemon's own mount), reads that
//! descriptor's mount id from `/proc/self/fdinfo`, and only when it is the recorded one detaches
//! the mount *of that descriptor* (`umount2("/proc/self/fd/N", MNT_DETACH)`), not whatever the
//! path names a moment later.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys;
use crate::sys::process::{self as sysproc, Signals};

/// The signals that end a mount cleanly.
pub const END_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The signal that asks for the mount's status report in the log (`crate::status`).
pub const REPORT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// What the signal thread does besides ending the mount.
pub struct SignalActions {
    /// On [`REPORT_SIGNAL`]: log the status report.
    pub report: Box<dyn Fn() + Send>,
    /// Right before the process exits on a second end signal (no destructor runs then).
    pub before_exit: Box<dyn Fn() + Send>,
}

/// The mount this daemon made, by mount id.
#[derive(Debug)]
pub struct OwnMount {
    mountpoint: PathBuf,
    mnt_id: u64,
}

/// What [`OwnMount::release`] found at the mount point.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// The mount there was this daemon's, and is detached now.
    Detached,
    /// The mount there is not this daemon's (it was unmounted already, or another mount covers
    /// it); nothing was unmounted.
    NotOurs,
}

impl OwnMount {
    /// Records the mount at `mountpoint`: called right after mounting it, when it is the
    /// top-most mount there. (Another mount stacked on it between the two calls would be
    /// recorded instead; nothing closes that window of a few system calls.)
    pub fn record(mountpoint: &Path) -> io::Result<OwnMount> {
        let fd = sys::open_dir_path(mountpoint)?;
        Ok(OwnMount {
            mountpoint: mountpoint.to_path_buf(),
            mnt_id: mount_id(fd.as_fd())?,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The id of this daemon's mount (as in `/proc/self/mountinfo`).
    pub fn mnt_id(&self) -> u64 {
        self.mnt_id
    }

    /// Detaches this daemon's mount if it is the mount at the mount point; leaves anything else
    /// alone.
    pub fn release(&self) -> io::Result<Release> {
        let fd = match sys::open_dir_path(&self.mountpoint) {
            Ok(fd) => fd,
            // The mount point itself is gone: so is any mount on it.
            Err(e) => {
                log::info!("{}: {e}; nothing to unmount", self.mountpoint.display());
                return Ok(Release::NotOurs);
            }
        };
        let found = mount_id(fd.as_fd())?;
        if found != self.mnt_id {
            log::info!(
                "{} is now mount {found}, not this daemon's mount {}; leaving it alone",
                self.mountpoint.display(),
                self.mnt_id
            );
            return Ok(Release::NotOurs);
        }
        match sys::umount_detach(&sys::proc_path(fd.as_fd())) {
            Ok(()) => Ok(Release::Detached),
            // An unprivileged daemon may not unmount; the setuid helper may. It works by path
            // and checks itself that the mount there is a FUSE mount of this user.
            Err(e) if e.errno() == libc::EPERM => {
                drop(fd);
                fusermount_detach(&self.mountpoint)?;
                Ok(Release::Detached)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `fusermount3 -u -z MERGED`.
fn fusermount_detach(mountpoint: &Path) -> io::Result<()> {
    let status = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u -z {} failed ({status})",
            mountpoint.display()
        )))
    }
}

/// The id of the mount `fd` lies on, from `/proc/self/fdinfo` (the kernel's own record: no
/// request reaches the filesystem).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path)?;
    parse_mnt_id(&text).ok_or_else(|| io::Error::other(format!("{path} has no mnt_id line")))
}

fn parse_mnt_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Blocks [`END_SIGNALS`] and [`REPORT_SIGNAL`] for this thread and every thread started
/// after it (see [`sysproc::block_signals`]: call before starting any).
pub fn block_end_signals() -> io::Result<Signals> {
    let mut signals = END_SIGNALS.to_vec();
    signals.push(REPORT_SIGNAL);
    sysproc::block_signals(&signals)
}

/// Waits for the signals, forever. [`REPORT_SIGNAL`] logs the status report and changes
/// nothing else. Of the end signals, the first one detaches the mount (the daemon then exits
/// once the kernel ends the connection); a second one ends the daemon at once, for a mount that
/// is kept busy or covered by another mount. Copies being built when that happens are left in
/// the work directory, and the next mount removes them.
pub fn end_on_signals(signals: Signals, own: &OwnMount, actions: &SignalActions) {
    let mut asked = false;
    loop {
        let signal = match signals.wait() {
            Ok(signal) => signal,
            Err(e) => {
                log::warn!("cannot wait for signals any more: {e}");
                return;
            }
        };
        if signal == REPORT_SIGNAL {
            (actions.report)();
            continue;
        }
        if asked {
            log::warn!("signal {signal} again: exiting without waiting for the mount's users");
            (actions.before_exit)();
            std::process::exit(0);
        }
        asked = true;
        log::info!("signal {signal}: unmounting {}", own.mountpoint().display());
        match own.release() {
            Ok(Release::Detached) => {}
            Ok(Release::NotOurs) => log::warn!(
                "{} is not this daemon's mount any more; still serving (a second signal exits)",
                own.mountpoint().display()
            ),
            Err(e) => log::warn!(
                "cannot unmount {}: {e}; still serving (a second signal exits)",
                own.mountpoint().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnt_id_from_fdinfo() {
        let text = "pos:\t0\nflags:\t012200000\nmnt_id:\t45\nino:\t1\n";
        assert_eq!(parse_mnt_id(text), Some(45));
        assert_eq!(parse_mnt_id("pos:\t0\n"), None);
    }

    #[test]
    fn own_mount_of_a_plain_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = OwnMount::record(dir.path()).expect("record");
        let again = OwnMount::record(dir.path()).expect("record");
        assert_eq!(own.mnt_id, again.mnt_id);
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).expect("mkdir");
        let own = OwnMount::record(&gone).expect("record");
        std::fs::remove_dir(&gone).expect("rmdir");
        assert_eq!(own.release().expect("release"), Release::NotOurs);
    }
}
