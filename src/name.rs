//! A file name as a node keeps it: bytes with a trailing NUL, so that it is both a name to
//! compare and a `CStr` for the `*at` calls. Names of up to [`INLINE`] bytes (nearly all of
//! them) are held inline, with no allocation; longer ones share one allocation between clones.
//!
//! Every node holds a name or two (where it was reached, and its real entry's), so this is a
//! large part of the daemon's memory per cached inode (see `docs/DESIGN.md`, "Memory").

use std::ffi::CStr;
use std::sync::Arc;

/// The longest name held inline (plus its NUL, in 22 bytes, so that a `Name` is 24 bytes).
pub const INLINE: usize = 21;

#[derive(Clone)]
pub enum Name {
    Inline {
        len: u8,
        buf: [u8; INLINE + 1],
    },
    /// The name and its NUL.
    Shared(Arc<[u8]>),
}

impl Name {
    /// `bytes`, as a name. A name with a NUL inside (which no real name has) compares as
    /// itself and passes to system calls cut at its first NUL.
    pub fn new(bytes: &[u8]) -> Name {
        if bytes.len() <= INLINE {
            let mut buf = [0u8; INLINE + 1];
            buf[..bytes.len()].copy_from_slice(bytes);
            Name::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            let mut v = Vec::with_capacity(bytes.len() + 1);
            v.extend_from_slice(bytes);
            v.push(0);
            Name::Shared(Arc::from(v))
        }
    }

    pub fn from_cstr(name: &CStr) -> Name {
        Name::new(name.to_bytes())
    }

    /// The name, without its NUL.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or_default(),
            Name::Shared(v) => v.get(..v.len().saturating_sub(1)).unwrap_or_default(),
        }
    }

    /// The name as a C string (cut at a NUL inside, see [`Name::new`]).
    pub fn as_cstr(&self) -> &CStr {
        let with_nul: &[u8] = match self {
            Name::Inline { buf, .. } => buf,
            Name::Shared(v) => v,
        };
        CStr::from_bytes_until_nul(with_nul).unwrap_or_default()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_cstr(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_round_trip() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 255] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let n = Name::new(&bytes);
            assert_eq!(n.as_bytes(), &bytes[..]);
            assert_eq!(n.as_cstr().to_bytes(), &bytes[..]);
            assert_eq!(matches!(n, Name::Inline { .. }), len <= INLINE);
            assert_eq!(n.clone(), n);
        }
        assert_ne!(Name::new(b"a"), Name::new(b"ab"));
    }

    #[test]
    fn a_name_is_three_words() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
    }
}
