//! Building one copy: the steps of the kernel's `ovl_copy_up_one()` after the parent is in the
//! upper (`fs/overlayfs/copy_up.c`). The copy is built under a temporary name in the
//! work directory, data first (reflink with `FICLONE`, else `copy_file_range` over the data
//! segments so holes stay holes), then xattrs, owner, mode and times; data is made durable unless
//! the mount says `volatile`/`fsync=0`; then one `rename` publishes it under its real name. Like
//! the kernel, the parent directory is not synced: a crash at any point leaves either no upper
//! copy or a complete one; leftovers in the work directory are removed at the next mount.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::Result;
use crate::inode::RealEntry;
use crate::kind::Kind;
use crate::origin::IndexKey;
use crate::records::{XattrNamespace, is_no_xattr};
use crate::stat_override::{self, StatOverride};
use crate::sys;
use crate::workdir::Workdir;

/// What to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyData {
    /// The whole content.
    All,
    /// No content: the copy is about to be truncated to zero anyway.
    None,
    /// Metadata only (`metacopy`): a sparse file of the same size marked `overlay.metacopy`,
    /// whose data is still read from the lower file.
    Metadata,
}

/// One copy to build: the kernel's `struct ovl_copy_up_ctx`.
pub struct CopyCtx<'a> {
    pub work: &'a Workdir,
    /// Index of the upper layer.
    pub upper_layer: usize,
    /// The lower entry copied, of kind `kind`.
    pub src: &'a RealEntry,
    /// Where the data comes from when `src` is itself a metadata-only copy (in a layer that
    /// was an upper once), whose data is further down.
    pub data_src: Option<&'a RealEntry>,
    pub kind: Kind,
    /// The upper directory the copy is published in, under `name`.
    pub upper_dir: &'a Arc<OwnedFd>,
    pub name: &'a CStr,
    pub data: CopyData,
    /// The inode-number record to give the copy (`overlay.origin`-less numbering).
    pub ino_record: Option<u64>,
    /// The index entry to link the copy to, with `index=on`.
    pub index: Option<&'a IndexKey>,
    /// With stat records in the upper: the record name and the owner and mode `src` shows,
    /// which the copy keeps in its record instead of on its inode.
    pub stat_record: Option<(&'static CStr, StatOverride)>,
}

/// Builds the copy `ctx` describes and publishes it. Returns the new upper entry, and whether
/// it was published under `ctx.name` (an indexed copy may find the name taken; see below).
pub fn copy_up(ctx: &CopyCtx<'_>) -> Result<(RealEntry, bool)> {
    let CopyCtx {
        work,
        upper_layer,
        src,
        data_src,
        kind,
        upper_dir: upper_dir_arc,
        name,
        ino_record,
        index,
        stat_record,
        ..
    } = *ctx;
    let upper_dir = upper_dir_arc.as_fd();
    let st = src.stat()?;
    // Publishing the copy must not show as a change of the parent (the kernel restores its
    // times too, `ovl_set_timestamps`).
    let parent_st = sys::fstat(upper_dir)?;
    let tmp = work.temp_name();
    let result = build_copy(ctx, data_src.unwrap_or(src), &st, &tmp).and_then(|fd| {
        if let Some((record, shown)) = &stat_record {
            stat_override::write(fd.as_fd(), record, shown, kind.file_type())?;
        }
        if let Some(ino) = ino_record {
            crate::records::set_ino_record(fd.as_fd(), work.xattr_ns, kind, ino)?;
            // Tells readdir (ufs's and the kernel's) to look for records in this directory.
            sys::setxattr(upper_dir, work.xattr_ns.impure(), b"y", 0)?;
        }
        if let Some(key) = index {
            // Every name of the lower file finds the copy through the index from now on.
            let index_dir = work.index.as_ref().ok_or(crate::error::EIO)?;
            sys::setxattr(fd.as_fd(), work.xattr_ns.origin(), &key.origin, 0)?;
            sys::link_fd(fd.as_fd(), index_dir.as_fd(), &key.name)?;
            let published =
                match sys::renameat2(work.dir(), &tmp, upper_dir, name, libc::RENAME_NOREPLACE) {
                    Ok(()) => {
                        restore_times(upper_dir, &parent_st)?;
                        true
                    }
                    // The name the node was last reached by now holds something else: the copy
                    // is in the index, and the caller links it under another of its names.
                    Err(e) if e.errno() == libc::EEXIST => {
                        sys::unlinkat(work.dir(), &tmp, 0)?;
                        false
                    }
                    Err(e) => return Err(e),
                };
            return Ok((fd, published));
        }
        sys::renameat2(work.dir(), &tmp, upper_dir, name, libc::RENAME_NOREPLACE)?;
        restore_times(upper_dir, &parent_st)?;
        Ok((fd, true))
    });
    match result {
        Ok((fd, _)) if kind == Kind::Directory => Ok((RealEntry::new(upper_layer, fd), true)),
        Ok((_, published)) => match (index, &work.index) {
            (Some(key), Some(dir)) => Ok((
                RealEntry::named(upper_layer, dir.clone(), &key.name),
                published,
            )),
            _ => Ok((
                RealEntry::named(upper_layer, upper_dir_arc.clone(), name),
                published,
            )),
        },
        Err(e) => {
            work.discard(&tmp);
            Err(e)
        }
    }
}

/// Sets the access and modification times of `fd` back to those in `st`.
pub fn restore_times(fd: BorrowedFd<'_>, st: &libc::stat) -> Result<()> {
    sys::futimens(
        fd,
        (st.st_atime, st.st_atime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
    )
}

/// Builds the complete copy under `tmp` in the work directory; returns an `O_PATH` fd on it.
fn build_copy(
    ctx: &CopyCtx<'_>,
    data_src: &RealEntry,
    st: &libc::stat,
    tmp: &CString,
) -> Result<OwnedFd> {
    let CopyCtx {
        work,
        src,
        kind,
        data,
        stat_record,
        ..
    } = *ctx;
    let wd = work.dir();
    match kind {
        Kind::Regular => {
            let out = sys::openat(
                wd,
                tmp,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o600,
            )?;
            match data {
                CopyData::All if st.st_size > 0 => {
                    let input = data_src.open_file(libc::O_RDONLY)?;
                    copy_data(input.as_fd(), out.as_fd(), st.st_size as u64)?;
                }
                CopyData::Metadata => {
                    sys::ftruncate(out.as_fd(), st.st_size as u64)?;
                    sys::setxattr(out.as_fd(), work.xattr_ns.metacopy(), b"", 0)?;
                }
                _ => {}
            }
            if work.fsync {
                sys::fsync(out.as_fd(), false)?;
            }
        }
        Kind::Directory => sys::mkdirat(wd, tmp, 0o700)?,
        Kind::Symlink => {
            let target = sys::readlink(src.fd()?.as_fd())?;
            let target = CString::new(target).map_err(|_| crate::error::EIO)?;
            sys::symlinkat(&target, wd, tmp)?;
        }
        Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
            sys::mknodat(wd, tmp, (st.st_mode & libc::S_IFMT) | 0o600, st.st_rdev)?;
        }
    }
    let fd = sys::open_path(wd, tmp)?;
    copy_xattrs(
        src.fd()?.as_fd(),
        fd.as_fd(),
        work.xattr_ns,
        stat_record.is_some(),
    )?;
    if stat_record.is_some() {
        // The owner and mode go in the record (written by the caller); the disk gets the
        // daemon's owner and the forced mode.
        let made = sys::fstat(fd.as_fd())?;
        let mut forced = *st;
        forced.st_mode = (st.st_mode & libc::S_IFMT) | stat_override::DISK_MODE;
        (forced.st_uid, forced.st_gid) = (made.st_uid, made.st_gid);
        copy_attrs(fd.as_fd(), kind, &forced)?;
    } else {
        copy_attrs(fd.as_fd(), kind, st)?;
    }
    Ok(fd)
}

/// Copies every visible xattr of `src` to `dst`; stat records too unless `skip_stat_records`
/// (the copy then gets a record of its own).
pub fn copy_xattrs(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    ns: XattrNamespace,
    skip_stat_records: bool,
) -> Result<()> {
    let names = match sys::listxattr(src) {
        Ok(n) => n,
        Err(e) if e.errno() == libc::EOPNOTSUPP => return Ok(()),
        Err(e) => return Err(e),
    };
    let copied = |n: &&std::ffi::OsString| {
        let stat_record = skip_stat_records && stat_override::is_record_name(n.as_encoded_bytes());
        !ns.is_private(n) && !stat_record
    };
    for name in names.iter().filter(copied) {
        let cname = sys::cstr(name)?;
        let value = match sys::getxattr(src, &cname) {
            Ok(v) => v,
            Err(e) if e.errno() == libc::ENODATA => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = sys::setxattr(dst, &cname, &value, 0) {
            // `security.*` labels may be refused by the upper filesystem's security module;
            // the kernel overlay skips them in the same way (`ovl_copy_xattr`).
            if name.as_encoded_bytes().starts_with(b"security.") && is_no_xattr(e.errno()) {
                log::debug!("copy-up: skipping xattr {name:?}: {e}");
                continue;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Owner, mode (after the owner, since `chown` clears setuid bits) and times.
pub fn copy_attrs(fd: BorrowedFd<'_>, kind: Kind, st: &libc::stat) -> Result<()> {
    set_owner(fd, st.st_uid, st.st_gid)?;
    if kind != Kind::Symlink {
        sys::fchmod(fd, st.st_mode & 0o7777)?;
    }
    sys::futimens(
        fd,
        (st.st_atime, st.st_atime_nsec),
        (st.st_mtime, st.st_mtime_nsec),
    )
}

/// Gives `fd` the owner `uid:gid`. An unprivileged daemon cannot give files away: it then keeps
/// its own ids, as a rootless overlay must.
pub fn set_owner(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    let st = sys::fstat(fd)?;
    if st.st_uid == uid && st.st_gid == gid {
        return Ok(());
    }
    match sys::fchown(fd, Some(uid), Some(gid)) {
        Err(e) if e.errno() == libc::EPERM && sys::euid_egid().0 != 0 => {
            log::debug!("cannot give {uid}:{gid} ownership as an unprivileged daemon: {e}");
            Ok(())
        }
        other => other,
    }
}

/// Copies `size` bytes from `input` to `out`, keeping holes.
pub fn copy_data(input: BorrowedFd<'_>, out: BorrowedFd<'_>, size: u64) -> Result<()> {
    match sys::ficlone(out, input) {
        Ok(()) => return Ok(()),
        Err(e) => log::trace!("FICLONE unavailable ({e}), copying"),
    }
    let mut off = 0u64;
    while off < size {
        let data = match sys::lseek(input, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            // No data after `off`: the rest is a hole.
            Err(e) if e.errno() == libc::ENXIO => break,
            // A filesystem without SEEK_DATA: treat the file as all data.
            Err(e) if e.errno() == libc::EINVAL => off,
            Err(e) => return Err(e),
        };
        let hole = match sys::lseek(input, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(e) if e.errno() == libc::EINVAL => size,
            Err(e) => return Err(e),
        };
        copy_range(input, out, data, hole)?;
        off = hole;
    }
    sys::ftruncate(out, size)
}

/// Copies bytes `[start, end)` at the same offsets, in the kernel when it can.
fn copy_range(input: BorrowedFd<'_>, out: BorrowedFd<'_>, start: u64, end: u64) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let chunk = ((end - pos) as usize).min(1 << 30);
        match sys::copy_file_range(input, pos, out, pos, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => pos += n as u64,
            Err(e)
                if matches!(
                    e.errno(),
                    libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
                ) =>
            {
                return copy_range_userspace(input, out, pos, end);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The last resort when the kernel cannot copy between these two files.
fn copy_range_userspace(
    input: BorrowedFd<'_>,
    out: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = sys::pread(input, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            match sys::pwrite(out, &buf[done..n], pos + done as u64)? {
                // Nothing written of a non-empty buffer: it would never finish.
                0 => return Err(crate::error::EIO),
                w => done += w,
            }
        }
        pos += n as u64;
    }
    Ok(())
}

/// Completes a metadata-only copy: copies the data of `lower` into the upper file `upper` in
/// place (or, with `CopyData::None`, empties it), makes it durable, and only then removes the
/// `metacopy` marker. A crash before that leaves the marker, so the data is read from the lower
/// file again: never a half-copied file. Returns how many bytes of data were copied.
pub fn complete_metacopy(
    work: &Workdir,
    upper: BorrowedFd<'_>,
    lower: BorrowedFd<'_>,
    data: CopyData,
) -> Result<u64> {
    // The copy leaves the file's modification time at the time of the copy, as the kernel's
    // completion of a metadata-only copy does (`ovl_copy_up_meta_inode_data`). Writing the data
    // makes the filesystem drop `security.capability`, which the copy already carries: it is
    // saved and put back, as the kernel does there.
    let capability = match sys::getxattr(upper, c"security.capability") {
        Ok(v) => Some(v),
        Err(e) if is_no_xattr(e.errno()) => None,
        Err(e) => return Err(e),
    };
    let out = sys::reopen(upper, libc::O_WRONLY)?;
    let mut copied = 0;
    if data == CopyData::All {
        let size = sys::fstat(lower)?.st_size as u64;
        // An empty file has nothing to copy, and (as with the kernel) its times stay.
        if size > 0 {
            let input = sys::reopen(lower, libc::O_RDONLY)?;
            copy_data(input.as_fd(), out.as_fd(), size)?;
            copied = size;
        }
    } else {
        sys::ftruncate(out.as_fd(), 0)?;
    }
    if let Some(v) = &capability {
        sys::setxattr(upper, c"security.capability", v, 0)?;
    }
    if work.fsync {
        sys::fsync(out.as_fd(), false)?;
    }
    match sys::removexattr(upper, work.xattr_ns.metacopy()) {
        Err(e) if e.errno() == libc::ENODATA => Ok(copied),
        other => other.map(|()| copied),
    }
}

/// `fsync` of a directory held by an `O_PATH` fd.
pub fn sync_dir(dir: BorrowedFd<'_>) -> Result<()> {
    let d = sys::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    sys::fsync(d.as_fd(), false)
}
