//! A tiny read-only FUSE filesystem, served from the test process, whose `readdir` reports one
//! `d_ino` for every entry, as fuse2fs does (4294967295), while `lookup` and `stat` give each
//! file its own number. A layer on such a filesystem shows whether ufs takes `d_ino` as an
//! object's identity: it is a hint at most.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request,
};

/// The `d_ino` fuse2fs reports for every entry.
pub const SAME_D_INO: u64 = 4_294_967_295;

/// A flat directory of regular files: `files[i]` has node id `i + 2`.
pub struct BadInoFs {
    pub files: Vec<(String, Vec<u8>)>,
    pub d_ino: u64,
}

const TTL: Duration = Duration::from_secs(1);

impl BadInoFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = if ino == 1 {
            (FileType::Directory, 0, 0o755, 2)
        } else {
            let (_, data) = self.files.get((ino - 2) as usize)?;
            (FileType::RegularFile, data.len() as u64, 0o644, 1)
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for BadInoFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent.0 == 1)
            .then(|| self.files.iter().position(|(n, _)| OsStr::new(n) == name))
            .flatten();
        match found.and_then(|i| self.attr(i as u64 + 2)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((_, data)) = ino
            .0
            .checked_sub(2)
            .and_then(|i| self.files.get(i as usize))
        else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries = vec![
            (1, FileType::Directory, ".".to_string()),
            (1, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            self.files
                .iter()
                .map(|(n, _)| (self.d_ino, FileType::RegularFile, n.clone())),
        );
        for (i, (d_ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(d_ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Serves `fs` at `mnt` from a thread of the test process until dropped (which unmounts).
pub fn serve(fs: BadInoFs, mnt: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName("badino".into())];
    fuser::spawn_mount(fs, mnt, &config)
}
