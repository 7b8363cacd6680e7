//! Redirect records: where a renamed directory's lower parts are, or where a metadata-only
//! copy's data is. A record is validated as the kernel validates it (`ovl_get_redirect_xattr`,
//! then `lookup_one_len` on each name) before anything is looked up with it, and turned into
//! the [`Target`] a lookup searches the layers below for. Kernel counterpart:
//! `ovl_check_redirect()` in `fs/overlayfs/namei.c`; ufs writes records in `dir.rs`
//! (`Overlay::set_redirect`, the kernel's `ovl_set_redirect()`).

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use crate::error::{EACCES, EINVAL, EPERM, Result};
use crate::layer::LayerStack;
use crate::sys;
use crate::whiteout::whiteout_name;

/// Where the next lower layers are searched: a name in the parent's real directories, or (after
/// an absolute redirect) a path from each layer's root.
#[derive(Debug)]
pub enum Target {
    Name {
        name: CString,
        whiteout: Option<CString>,
    },
    Path(Vec<CString>),
}

impl Target {
    pub fn name(name: &OsStr) -> Result<Target> {
        Ok(Target::Name {
            name: sys::cstr(name)?,
            whiteout: whiteout_name(name),
        })
    }

    /// The target a redirect record names, validated as the kernel validates it
    /// (`ovl_get_redirect_xattr`, then `lookup_one_len` on each name): a relative record is one
    /// name; an absolute one is `/` followed by names separated by single slashes. A malformed
    /// record answers `EINVAL`, a `.` or `..` name `EACCES`, so no record can lead out of the
    /// layers or sideways through them.
    pub fn redirect(r: &[u8]) -> Result<Target> {
        let comps: Vec<&[u8]> = match r.strip_prefix(b"/") {
            Some(rest) => rest.split(|&b| b == b'/').collect(),
            None if r.contains(&b'/') => return Err(EINVAL),
            None => vec![r],
        };
        let mut names = Vec::with_capacity(comps.len());
        for c in comps {
            match c {
                b"" => return Err(EINVAL),
                b"." | b".." => return Err(EACCES),
                _ => names.push(CString::new(c).map_err(|_| EINVAL)?),
            }
        }
        match (r.first() == Some(&b'/'), names.pop()) {
            (false, Some(name)) => Target::name(OsStr::from_bytes(name.to_bytes())),
            (true, Some(last)) => {
                names.push(last);
                Ok(Target::Path(names))
            }
            (_, None) => Err(EINVAL),
        }
    }
}

/// The target the redirect record `r` of an entry of layer `layer` names, or the error the
/// kernel gives for it (logged once here, naming the layer and the record). A relative record
/// met while the search follows an absolute path (a layer renamed what an older layer had
/// already moved) renames the path's last name, as the kernel prefixes it with the path so far.
pub fn redirect_target(
    layers: &LayerStack,
    layer: usize,
    r: &[u8],
    name: &OsStr,
    current: &Target,
) -> Result<Target> {
    let path = &layers.get(layer).path;
    if !layers.follows_redirects() {
        log::warn!(
            "layer {}: refusing to follow the redirect of {name:?} (redirect_dir is off)",
            path.display()
        );
        return Err(EPERM);
    }
    let target = Target::redirect(r).inspect_err(|_| {
        log::warn!(
            "layer {}: invalid redirect {:?} on {name:?}",
            path.display(),
            String::from_utf8_lossy(r)
        )
    })?;
    Ok(match (current, target) {
        (Target::Path(comps), Target::Name { name, .. }) => {
            let mut comps = comps.clone();
            comps.pop();
            comps.push(name);
            Target::Path(comps)
        }
        (_, t) => t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &Target) -> Vec<String> {
        match t {
            Target::Name { name, .. } => vec![name.to_string_lossy().into_owned()],
            Target::Path(p) => p.iter().map(|c| c.to_string_lossy().into_owned()).collect(),
        }
    }

    /// The kernel's answers, checked on this kernel (6.18) over the same records.
    #[test]
    fn records_are_validated_as_the_kernel_does() {
        for (record, expected) in [
            (&b"../../outside"[..], Err(libc::EINVAL)),
            (b"a/b", Err(libc::EINVAL)),
            (b"//d", Err(libc::EINVAL)),
            (b"/d/", Err(libc::EINVAL)),
            (b"/", Err(libc::EINVAL)),
            (b"", Err(libc::EINVAL)),
            (b"/../outside", Err(libc::EACCES)),
            (b"/a/./b", Err(libc::EACCES)),
            (b"..", Err(libc::EACCES)),
            (b".", Err(libc::EACCES)),
            (b"name", Ok(vec!["name"])),
            (b"/a/b", Ok(vec!["a", "b"])),
        ] {
            let got = Target::redirect(record)
                .map(|t| names(&t))
                .map_err(|e| e.errno());
            let want = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(record));
        }
        assert!(matches!(Target::redirect(b"name"), Ok(Target::Name { .. })));
        assert!(matches!(Target::redirect(b"/name"), Ok(Target::Path(_))));
    }
}
