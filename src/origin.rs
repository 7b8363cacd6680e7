//! Origin file handles and index names. A copy of a lower file with several links is named in
//! `WORKDIR/index` by its lower file's handle (the kernel's `struct ovl_fb` encoding, in hex),
//! and carries that handle as its `overlay.origin` record. Kernel counterpart: `ovl_encode_real_fh()`
//! and `ovl_get_index_name()` in `fs/overlayfs/`.

use std::ffi::CString;
use std::os::fd::AsFd;

use crate::error::Result;
use crate::inode::RealEntry;
use crate::sys;

/// Where a multiply-linked lower file's copy lives in the index: its origin file handle (the
/// kernel's `struct ovl_fb` encoding) and the index entry name (the handle in hex).
#[derive(Debug, Clone)]
pub struct IndexKey {
    pub origin: Vec<u8>,
    pub name: CString,
}

impl IndexKey {
    /// The key of lower entry `entry`. The uuid field is left null, as the kernel writes it
    /// for layers that share the upper's filesystem.
    pub fn of(entry: &RealEntry) -> Result<IndexKey> {
        let (handle_type, handle) = match &entry.real {
            crate::inode::Real::Held(fd) => sys::name_to_handle(fd.as_fd(), c"")?,
            crate::inode::Real::Named { dir, name } => {
                sys::name_to_handle(dir.as_fd(), name.as_cstr())?
            }
        };
        const OVL_FH_MAGIC: u8 = 0xfb;
        let endian = if cfg!(target_endian = "big") { 1 } else { 0 };
        let mut fb = vec![0u8, OVL_FH_MAGIC, 0, endian, handle_type as u8];
        fb.extend_from_slice(&[0u8; 16]);
        fb.extend_from_slice(&handle);
        fb[2] = fb.len() as u8;
        let hex: String = fb.iter().map(|b| format!("{b:02x}")).collect();
        Ok(IndexKey {
            origin: fb,
            name: CString::new(hex).map_err(|_| crate::error::EIO)?,
        })
    }
}
