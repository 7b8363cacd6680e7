//! Pure parsing of the `-o` option string into a validated [`Options`].
//!
//! No I/O happens here except resolving relative paths against a working directory that the
//! caller passes in, so every rule is covered by table-driven unit tests. The counterpart in the
//! kernel is `fs/overlayfs/params.c`.
//!
//! Syntax, in the order it is applied:
//! 1. Each `-o` argument is split on commas. A comma inside double quotes or after a backslash
//!    does not split: SELinux labels such as `context="system_u:object_r:t:s0:c1,c2"` contain
//!    commas and container tools pass them quoted.
//! 2. Each item is `KEY` or `KEY=VALUE`, split at the first `=`.
//! 3. `lowerdir` is split on colons with the same quote and backslash rules; a double colon
//!    starts the data-only layers (`lowerdir=l1:l2::d1::d2`), as in the kernel. `lowerdir+=` and
//!    `datadir+=` add one directory each, colons included, and cannot follow `lowerdir=`.
//! 4. Values are unescaped: a backslash makes the next character literal (`\,`, `\:`, `\\`, and
//!    like the kernel, any other character) and unescaped double quotes are removed. A path that
//!    really contains a double quote therefore spells it `\"`.
//!
//! Later items override earlier ones (`ro,rw` is read-write, `nodev,dev` allows devices), as with
//! mount(8), also across several `-o` arguments.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `D:S:N` range of a `uidmapping=`/`gidmapping=` option, in fuse-overlayfs's order: ids
/// `D..D+N` on disk show as `S..S+N` in the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    pub disk: u32,
    pub shown: u32,
    pub count: u32,
}

/// Everything the core needs to know about one mount, after parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Lower directories, absolute, top-most first.
    pub lowerdirs: Vec<PathBuf>,
    /// Data-only lower directories (after `::` in `lowerdir=`, or `datadir+=`), absolute, in the
    /// order they are searched. They are never merged: they only hold the data of metadata-only
    /// copies in the lowers that name them by an absolute redirect (the composefs model).
    pub datadirs: Vec<PathBuf>,
    /// Upper directory, absolute; `None` for a read-only union.
    pub upperdir: Option<PathBuf>,
    /// Work directory, absolute; present exactly when `upperdir` is.
    pub workdir: Option<PathBuf>,
    /// `ro`: refuse every modification with `EROFS` even when an upper is given.
    pub read_only: bool,
    /// `allow_other`: let every user use the mount.
    pub allow_other: bool,
    /// `allow_root`: let root use the mount too.
    pub allow_root: bool,
    /// `nodev` (the default, as in libfuse) or `dev`: passed to the kernel as a mount flag.
    pub nodev: bool,
    /// `nosuid` (`Some(true)`) or `suid` (`Some(false)`); when neither is given the mount
    /// honours setuid bits if ufs runs as uid 0, as fuse-overlayfs does (`crate::fuse_mount`).
    pub nosuid: Option<bool>,
    /// `noexec`, `noatime`: passed to the kernel as mount flags.
    pub noexec: bool,
    pub noatime: bool,
    /// `debug` (or `-d` on the command line): log every request.
    pub debug: bool,
    /// `timeout=SECS`: how long the kernel may cache entries and attributes (default 1 s).
    pub timeout: Duration,
    /// `fsync=0` or `volatile` turn this off: copy-up then skips making data durable.
    pub fsync: bool,
    /// `threaded=N`: number of request threads (default: CPUs + 2, at least 4).
    pub threads: Option<usize>,
    /// fuse-overlayfs compatible id mapping options, parsed and kept for the core.
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    /// The SOURCE argument of `ufs SOURCE MERGED -o OPTS` (or `fsname=`), shown in mount tables.
    pub fsname: Option<String>,
    /// `redirect_dir=on` (default): directories with lower parts can be renamed, recorded with
    /// the kernel's redirect xattr. `off`, `follow`, `nofollow`: such renames fail with `EXDEV`.
    pub redirect_dir: bool,
    /// `index=on` (default): hard links of a lower file stay linked across copy-up.
    pub index: bool,
    /// `metacopy=on` (default): metadata changes of a lower file copy no data.
    pub metacopy: bool,
    /// `userxattr`: records in `user.overlay.*` even where `trusted.*` could be used, with the
    /// kernel's rules for it (redirects and metadata-only copies off unless asked for).
    pub userxattr: bool,
    /// `static_nlink` (fuse-overlayfs): every directory reports a link count of 1.
    pub static_nlink: bool,
    /// `noxattrs=1` (fuse-overlayfs): extended attributes are not supported through the mount.
    pub noxattrs: bool,
    /// `noacl` (fuse-overlayfs): do not ask the kernel to enforce POSIX ACLs (FUSE's
    /// `POSIX_ACL`); ACL xattrs are then only xattrs, and the kernel applies the umask.
    pub noacl: bool,
    /// `passthrough=on|off`: let the kernel do the I/O of regular files on the real files (FUSE
    /// passthrough) where it and the daemon's privileges allow it. On by default.
    pub passthrough: bool,
    /// `writeback=1|0` (also `on|off`, as fuse-overlayfs's option): let the kernel cache writes
    /// and send them in large batches (the FUSE writeback cache) on a mount that does not use
    /// passthrough; the kernel allows one of the two. Off by default: the kernel then keeps
    /// files' times itself, where the kernel overlay's differ (docs/DIFFERENCES.md).
    pub writeback: bool,
    /// `xattr_permissions=1|2` (fuse-overlayfs): owners and modes of files and directories live
    /// in an xattr record ([`crate::stat_override`]); 0 turns them off.
    pub xattr_permissions: u8,
    /// `xino=on|auto` (default) or `off`. Parsed and validated; ufs numbers objects the same
    /// either way (docs/DIFFERENCES.md, "`xino=off`").
    pub xino: bool,
    /// One line per option that was not understood and therefore ignored.
    pub warnings: Vec<String>,
}

/// The cache timeout when `timeout=` is not given; the same default as the other FUSE overlays.
/// Layers must not change under a mount (as with the kernel overlay), and every change made
/// through the mount updates the kernel's cache, so names and attributes may be cached for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86_400);

impl Default for Options {
    /// A read-only union of no layers with every flag at its documented default; [`parse`]
    /// starts from this, and tests of the core can start from it too.
    fn default() -> Self {
        Options {
            lowerdirs: Vec::new(),
            datadirs: Vec::new(),
            upperdir: None,
            workdir: None,
            read_only: false,
            allow_other: false,
            allow_root: false,
            nodev: true,
            nosuid: None,
            noexec: false,
            noatime: false,
            debug: false,
            timeout: DEFAULT_TIMEOUT,
            fsync: true,
            threads: None,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            fsname: None,
            redirect_dir: true,
            index: true,
            metacopy: true,
            userxattr: false,
            static_nlink: false,
            noxattrs: false,
            noacl: false,
            xattr_permissions: 0,
            passthrough: true,
            writeback: false,
            xino: true,
            warnings: Vec::new(),
        }
    }
}

/// Why an option string was refused. Each variant prints as one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// No `lowerdir=` at all.
    MissingLowerdir,
    /// `workdir=` without `upperdir=`.
    MissingUpperdir,
    /// `upperdir=` without `workdir=`.
    MissingWorkdir,
    /// An option that takes a value was given without one (`timeout`, `lowerdir=`).
    MissingValue { option: String },
    /// A flag was given a value (`ro=1`).
    UnexpectedValue { option: String, value: String },
    /// A value that does not parse; `expected` says what would have.
    InvalidValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    /// A double quote that is never closed; `item` is the list item that contains it.
    UnterminatedQuote { item: String },
    /// Two options that cannot be used together (as the kernel words it).
    Conflict { options: String },
    /// The lower layers are not given as the kernel accepts them (`reason` in its words).
    Layers { reason: &'static str },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::MissingLowerdir => f.write_str("option \"lowerdir=\" is required"),
            OptionError::MissingUpperdir => {
                f.write_str("option \"workdir=\" needs \"upperdir=\" too, which is missing")
            }
            OptionError::MissingWorkdir => {
                f.write_str("option \"upperdir=\" needs \"workdir=\" too, which is missing")
            }
            OptionError::MissingValue { option } => {
                write!(f, "option \"{option}\" needs a value")
            }
            OptionError::UnexpectedValue { option, value } => {
                write!(f, "option \"{option}\" takes no value (got \"{value}\")")
            }
            OptionError::InvalidValue {
                option,
                value,
                expected,
            } => write!(f, "option \"{option}={value}\": expected {expected}"),
            OptionError::UnterminatedQuote { item } => {
                write!(f, "unterminated double quote in option \"{item}\"")
            }
            OptionError::Conflict { options } => write!(f, "conflicting options: {options}"),
            OptionError::Layers { reason } => write!(f, "lower layers: {reason}"),
        }
    }
}

impl std::error::Error for OptionError {}

/// Options fuse-overlayfs or the kernel overlay know and ufs accepts without acting on them yet.
/// They earn a warning rather than an error so that container tools keep working.
const NO_EFFECT: &[&str] = &[
    "ino32_t",
    "nfs_export",
    "uuid",
    "verity",
    "max_write",
    "plugins",
    "auto_unmount",
];

/// Parses the `-o` arguments of one mount, in command-line order, into [`Options`].
///
/// Relative paths are joined to `cwd` lexically (no symlink resolution, so the caller's relative
/// symlinks such as `l/SHORTID` keep pointing where the caller meant); `.` components are
/// dropped, `..` components are kept for the kernel to resolve.
pub fn parse(opts: &[&str], cwd: &Path) -> Result<Options, OptionError> {
    parse_with(opts, cwd, true)
}

/// [`parse`] for a tool that only reads a stack (`ufs diff`): an upper needs no work directory.
pub fn parse_for_reading(opts: &[&str], cwd: &Path) -> Result<Options, OptionError> {
    parse_with(opts, cwd, false)
}

fn parse_with(opts: &[&str], cwd: &Path, mounting: bool) -> Result<Options, OptionError> {
    let mut options = Options::default();
    let mut lowers = Lowers::default();
    // Asked for explicitly (they conflict with `userxattr`, as in the kernel).
    let (mut redirect_on, mut metacopy_on) = (false, false);

    for arg in opts {
        for item in split_list(arg, ',')? {
            if item.is_empty() {
                // `a,,b` and a trailing comma are harmless typos that mount(8) also accepts.
                continue;
            }
            let (key, raw) = match item.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (item, None),
            };
            let flag = |set: &mut bool, to: bool| -> Result<(), OptionError> {
                no_value(key, raw)?;
                *set = to;
                Ok(())
            };
            match key {
                "lowerdir" => lowers.set(parse_lowerdirs(required(key, raw)?, cwd)?),
                "lowerdir+" | "datadir+" => {
                    // One directory each, taken as the kernel takes it: a colon needs no
                    // escape, so `\:` is a backslash and a colon (xfstests `overlay/086`).
                    let raw = required(key, raw)?.replace(r"\:", r"\\:");
                    let path = parse_path(key, &raw, cwd)?;
                    lowers.add(path, key == "datadir+")?;
                }
                "upperdir" => options.upperdir = Some(parse_path(key, required(key, raw)?, cwd)?),
                "workdir" => options.workdir = Some(parse_path(key, required(key, raw)?, cwd)?),
                "ro" => flag(&mut options.read_only, true)?,
                "rw" => flag(&mut options.read_only, false)?,
                "allow_other" => flag(&mut options.allow_other, true)?,
                "allow_root" => flag(&mut options.allow_root, true)?,
                "nodev" => flag(&mut options.nodev, true)?,
                "dev" => flag(&mut options.nodev, false)?,
                "nosuid" | "suid" => {
                    no_value(key, raw)?;
                    options.nosuid = Some(key == "nosuid");
                }
                "noexec" => flag(&mut options.noexec, true)?,
                "exec" => flag(&mut options.noexec, false)?,
                "noatime" => flag(&mut options.noatime, true)?,
                "atime" | "relatime" | "strictatime" => flag(&mut options.noatime, false)?,
                "debug" => flag(&mut options.debug, true)?,
                "volatile" => flag(&mut options.fsync, false)?,
                "squash_to_root" => flag(&mut options.squash_to_root, true)?,
                // ufs always checks permissions in the kernel.
                "default_permissions" => no_value(key, raw)?,
                // Without it, ufs still falls back to `user.overlay.*` records when it lacks
                // the privilege for `trusted.*` names.
                "userxattr" => flag(&mut options.userxattr, true)?,
                "static_nlink" => flag(&mut options.static_nlink, true)?,
                "xattr_permissions" => {
                    options.xattr_permissions =
                        one_of(key, raw, &[("0", 0), ("1", 1), ("2", 2)], "0, 1 or 2")?
                }
                "noxattrs" => options.noxattrs = zero_or_one(key, raw)?,
                "noacl" => flag(&mut options.noacl, true)?,
                "passthrough" => {
                    options.passthrough =
                        one_of(key, raw, &[("on", true), ("off", false)], "on or off")?
                }
                "writeback" => {
                    options.writeback = one_of(
                        key,
                        raw,
                        &[("1", true), ("0", false), ("on", true), ("off", false)],
                        "0, 1, on or off",
                    )?
                }
                // Container tools pass SELinux labels to every mount program whether or not it
                // can use them; ufs does not label files itself, so these are consumed silently.
                "context" | "fscontext" | "defcontext" | "rootcontext" => {}
                "timeout" => options.timeout = parse_timeout(key, required(key, raw)?)?,
                "fsync" => options.fsync = zero_or_one(key, raw)?,
                "threaded" => {
                    let value = required(key, raw)?;
                    let n: usize = value
                        .parse()
                        .map_err(|_| invalid(key, value, "a number of threads"))?;
                    // fuse-overlayfs reads `threaded=0` as "single-threaded".
                    options.threads = Some(n.max(1));
                }
                "fsname" => {
                    let value = unescape(required(key, raw)?);
                    if value.is_empty() {
                        return Err(OptionError::MissingValue { option: key.into() });
                    }
                    options.fsname = Some(value);
                }
                "redirect_dir" => {
                    redirect_on = required(key, raw)? == "on";
                    options.redirect_dir = one_of(
                        key,
                        raw,
                        &[
                            ("on", true),
                            ("off", false),
                            ("follow", false),
                            ("nofollow", false),
                        ],
                        "on, follow, nofollow or off",
                    )?
                }
                "index" | "metacopy" => {
                    let on = one_of(key, raw, &[("on", true), ("off", false)], "on or off")?;
                    if key == "index" {
                        options.index = on;
                    } else {
                        options.metacopy = on;
                        metacopy_on = on;
                    }
                }
                "xino" => {
                    options.xino = one_of(
                        key,
                        raw,
                        &[("on", true), ("auto", true), ("off", false)],
                        "on, auto or off",
                    )?
                }
                "uidmapping" => options.uid_mappings = parse_mappings(key, required(key, raw)?)?,
                "gidmapping" => options.gid_mappings = parse_mappings(key, required(key, raw)?)?,
                "squash_to_uid" => {
                    options.squash_to_uid = Some(parse_id(key, required(key, raw)?)?)
                }
                "squash_to_gid" => {
                    options.squash_to_gid = Some(parse_id(key, required(key, raw)?)?)
                }
                _ if NO_EFFECT.contains(&key) => options.warnings.push(format!(
                    "option \"{item}\" is accepted for compatibility but has no effect in ufs"
                )),
                _ => options
                    .warnings
                    .push(format!("unknown option \"{item}\" ignored")),
            }
        }
    }

    (options.lowerdirs, options.datadirs) = lowers.finish()?;
    if options.userxattr {
        // The kernel's rules (`ovl_parse_param`): with records anyone may write, redirects and
        // metadata-only copies are only used when asked for, and then refused.
        for (on, name) in [
            (redirect_on, "redirect_dir=on"),
            (metacopy_on, "metacopy=on"),
        ] {
            if on {
                return Err(OptionError::Conflict {
                    options: format!("userxattr,{name}"),
                });
            }
        }
        options.redirect_dir = false;
        options.metacopy = false;
    }
    match (&options.upperdir, &options.workdir) {
        (Some(_), None) if mounting => return Err(OptionError::MissingWorkdir),
        (None, Some(_)) => return Err(OptionError::MissingUpperdir),
        _ => {}
    }
    Ok(options)
}

/// Splits `s` on every `sep` that is neither escaped by a backslash nor inside double quotes.
///
/// The pieces keep their escapes and quotes (see [`unescape`]) so that a value can be split
/// again with another separator, as `lowerdir` is. An empty input gives one empty piece.
pub fn split_list(s: &str, sep: char) -> Result<Vec<&str>, OptionError> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                // The escaped character never separates nor quotes; a trailing lone backslash
                // is kept as a literal by `unescape`.
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                pieces.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if in_quotes {
        // Name the item the quote belongs to, not the whole (possibly long) option string.
        return Err(OptionError::UnterminatedQuote {
            item: s[start..].into(),
        });
    }
    pieces.push(&s[start..]);
    Ok(pieces)
}

/// Removes one level of backslash escapes and all unescaped double quotes.
pub fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            '"' => {}
            c => out.push(c),
        }
    }
    out
}

/// Joins a relative `path` to `cwd` lexically and drops `.` components.
fn resolve(cwd: &Path, path: &str) -> PathBuf {
    cwd.join(path).components().collect()
}

fn parse_path(option: &str, raw: &str, cwd: &Path) -> Result<PathBuf, OptionError> {
    let path = unescape(raw);
    if path.is_empty() {
        return Err(OptionError::MissingValue {
            option: option.into(),
        });
    }
    Ok(resolve(cwd, &path))
}

/// The lower layers as the options give them, with the kernel's rules (`ovl_parse_param_lowerdir`,
/// `ovl_mount_dir_check` in `fs/overlayfs/params.c`): `lowerdir=` replaces every layer given
/// before it; `lowerdir+=` and `datadir+=` append one each, but not after `lowerdir=`, and no
/// regular layer comes after a data-only one.
#[derive(Default)]
struct Lowers {
    regular: Vec<PathBuf>,
    data: Vec<PathBuf>,
    /// A `lowerdir=` was given.
    listed: bool,
}

impl Lowers {
    fn set(&mut self, (regular, data): (Vec<PathBuf>, Vec<PathBuf>)) {
        *self = Lowers {
            regular,
            data,
            listed: true,
        };
    }

    fn add(&mut self, path: PathBuf, data: bool) -> Result<(), OptionError> {
        if self.listed {
            return Err(OptionError::Layers {
                reason: "lowerdir+ and datadir+ cannot follow lowerdir",
            });
        }
        if data {
            self.data.push(path);
        } else if !self.data.is_empty() {
            return Err(OptionError::Layers {
                reason: "regular lower layers cannot follow data layers",
            });
        } else {
            self.regular.push(path);
        }
        Ok(())
    }

    fn finish(self) -> Result<(Vec<PathBuf>, Vec<PathBuf>), OptionError> {
        match (self.regular.is_empty(), self.data.is_empty()) {
            (true, true) => Err(OptionError::MissingLowerdir),
            (true, false) => Err(OptionError::Layers {
                reason: "at least one non-data lowerdir is required",
            }),
            _ => Ok((self.regular, self.data)),
        }
    }
}

/// Splits a `lowerdir=` value into its regular layers and the data-only layers that follow a
/// `::`, as the kernel does (`ovl_parse_param_split_lowerdirs`).
fn parse_lowerdirs(raw: &str, cwd: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), OptionError> {
    let layers = |reason| Err(OptionError::Layers { reason });
    let pieces = split_list(raw, ':')?;
    if pieces.first().is_some_and(|p| p.is_empty()) {
        return layers("cannot append lower layer");
    }
    if pieces.last().is_some_and(|p| p.is_empty()) {
        return layers("unescaped trailing colons in lowerdir");
    }
    let (mut regular, mut data) = (Vec::new(), Vec::new());
    // An empty piece is the second colon of a `::`: the next piece is a data-only layer.
    let mut after_double = false;
    for piece in pieces {
        if piece.is_empty() {
            if after_double {
                return layers("only single ':' or double '::' sequences of unescaped colons");
            }
            after_double = true;
            continue;
        }
        let path = parse_path("lowerdir", piece, cwd)?;
        if after_double {
            data.push(path);
        } else if !data.is_empty() {
            return layers("regular lower layers cannot follow data lower layers");
        } else {
            regular.push(path);
        }
        after_double = false;
    }
    Ok((regular, data))
}

fn parse_timeout(option: &str, value: &str) -> Result<Duration, OptionError> {
    const EXPECTED: &str = "a non-negative number of seconds";
    let secs: f64 = value
        .parse()
        .map_err(|_| invalid(option, value, EXPECTED))?;
    // `try_from_secs_f64` refuses negative, NaN and overflowing values.
    Duration::try_from_secs_f64(secs).map_err(|_| invalid(option, value, EXPECTED))
}

fn parse_id(option: &str, value: &str) -> Result<u32, OptionError> {
    value
        .parse()
        .map_err(|_| invalid(option, value, "a numeric id"))
}

/// Parses `D:S:N[:D:S:N...]`. Each range must be non-empty and stay inside the 32-bit id space
/// on both sides, so the core can map ids without overflow checks.
fn parse_mappings(option: &str, value: &str) -> Result<Vec<IdMapping>, OptionError> {
    const EXPECTED: &str = "disk:shown:count triples of numeric ids";
    // containers/storage joins its ranges with a leading `:` (`uidmapping=:0:1:1001:...`);
    // fuse-overlayfs skips empty fields, and so does ufs.
    let numbers = value
        .split(':')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<u32>())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| invalid(option, value, EXPECTED))?;
    if numbers.len() % 3 != 0 {
        return Err(invalid(option, value, EXPECTED));
    }
    numbers
        .chunks_exact(3)
        .map(|triple| {
            let mapping = IdMapping {
                disk: triple[0],
                shown: triple[1],
                count: triple[2],
            };
            let end = |start: u32| u64::from(start) + u64::from(mapping.count);
            if mapping.count == 0 || end(mapping.disk) > 1 << 32 || end(mapping.shown) > 1 << 32 {
                return Err(invalid(
                    option,
                    value,
                    "non-empty ranges within the 32-bit id space",
                ));
            }
            Ok(mapping)
        })
        .collect()
}

fn required<'a>(option: &str, value: Option<&'a str>) -> Result<&'a str, OptionError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OptionError::MissingValue {
            option: option.into(),
        }),
    }
}

fn no_value(option: &str, value: Option<&str>) -> Result<(), OptionError> {
    match value {
        None => Ok(()),
        Some(v) => Err(OptionError::UnexpectedValue {
            option: option.into(),
            value: v.into(),
        }),
    }
}

/// The value of `option` among `choices` (`expected` describes them in an error).
fn one_of<T: Copy>(
    option: &str,
    value: Option<&str>,
    choices: &[(&str, T)],
    expected: &'static str,
) -> Result<T, OptionError> {
    let value = required(option, value)?;
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| invalid(option, value, expected))
}

/// `option=0` or `option=1`.
fn zero_or_one(option: &str, value: Option<&str>) -> Result<bool, OptionError> {
    one_of(option, value, &[("0", false), ("1", true)], "0 or 1")
}

fn invalid(option: &str, value: &str, expected: &'static str) -> OptionError {
    OptionError::InvalidValue {
        option: option.into(),
        value: value.into(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CWD: &str = "/var/lib/storage/overlay";

    fn parse_ok(opts: &[&str]) -> Options {
        parse(opts, Path::new(CWD)).unwrap_or_else(|e| panic!("{opts:?}: unexpected error: {e}"))
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn split_list_respects_escapes_and_quotes() {
        let cases: &[(&str, char, &[&str])] = &[
            ("", ',', &[""]),
            ("a,b,,c,", ',', &["a", "b", "", "c", ""]),
            (r"a\,b,c", ',', &[r"a\,b", "c"]),
            (r"a\\,b", ',', &[r"a\\", "b"]),
            (r#"x="1,2",y"#, ',', &[r#"x="1,2""#, "y"]),
            (r"a\:b:c", ':', &[r"a\:b", "c"]),
            (r#""a:b":c"#, ':', &[r#""a:b""#, "c"]),
            ("ünï,cödé", ',', &["ünï", "cödé"]),
        ];
        for (input, sep, want) in cases {
            assert_eq!(split_list(input, *sep).as_deref(), Ok(*want), "{input:?}");
        }
        assert_eq!(
            split_list(r#"a,b="c,d"#, ','),
            Err(OptionError::UnterminatedQuote {
                item: r#"b="c,d"#.into()
            })
        );
    }

    #[test]
    fn lowerdir_add_takes_colons_literally() {
        let o = parse_ok(&[r"lowerdir+=/l2\:with\:\:colons,lowerdir+=/a:b,datadir+=/d\,e"]);
        assert_eq!(
            o.lowerdirs,
            [PathBuf::from(r"/l2\:with\:\:colons"), PathBuf::from("/a:b")]
        );
        assert_eq!(o.datadirs, [PathBuf::from("/d,e")]);
    }

    #[test]
    fn unescape_rules() {
        let cases = [
            (r"plain", "plain"),
            (r"a\,b", "a,b"),
            (r"a\:b", "a:b"),
            (r"a\\b", r"a\b"),
            (r"a\xb", "axb"),
            (r"trailing\", r"trailing\"),
            (r#""quoted,value""#, "quoted,value"),
            (r#"a\"b"#, r#"a"b"#),
        ];
        for (raw, want) in cases {
            assert_eq!(unescape(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn lowerdir_lists_escapes_and_relative_paths() {
        let cases: &[(&str, &[&str])] = &[
            ("lowerdir=/a", &["/a"]),
            ("lowerdir=/a:/b:/c", &["/a", "/b", "/c"]),
            (r"lowerdir=/a\:b:/c", &["/a:b", "/c"]),
            (r"lowerdir=/a\,b:/c", &["/a,b", "/c"]),
            (r"lowerdir=/a\\:/b", &[r"/a\", "/b"]),
            (r#"lowerdir="/x,y:z":/w"#, &["/x,y:z", "/w"]),
            (
                "lowerdir=l/ABC:l/DEF",
                &[
                    "/var/lib/storage/overlay/l/ABC",
                    "/var/lib/storage/overlay/l/DEF",
                ],
            ),
            ("lowerdir=./x/./y/", &["/var/lib/storage/overlay/x/y"]),
            ("lowerdir=../x", &["/var/lib/storage/overlay/../x"]),
            ("lowerdir=/a//b/.", &["/a/b"]),
        ];
        for (opt, want) in cases {
            assert_eq!(parse_ok(&[opt]).lowerdirs, paths(want), "{opt:?}");
        }
    }

    /// The kernel's rules for data-only layers (checked on 6.18 with the same option strings).
    #[test]
    fn data_only_layers() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["lowerdir=/l1:/l2::/d1::/d2"],
                &["/l1", "/l2"],
                &["/d1", "/d2"],
            ),
            (&["lowerdir=/l1::/d1"], &["/l1"], &["/d1"]),
            (&[r"lowerdir=/l\:1::/d\:1"], &["/l:1"], &["/d:1"]),
            (
                &["lowerdir=l::d"],
                &["/var/lib/storage/overlay/l"],
                &["/var/lib/storage/overlay/d"],
            ),
            (
                &["lowerdir+=/l1,lowerdir+=/l2,datadir+=/d1,datadir+=/d2"],
                &["/l1", "/l2"],
                &["/d1", "/d2"],
            ),
            // One directory per `lowerdir+=`, colons included.
            (&["lowerdir+=/a:b", "datadir+=/d"], &["/a:b"], &["/d"]),
            // `lowerdir=` replaces whatever came before it.
            (
                &["lowerdir+=/x,datadir+=/y,lowerdir=/l::/d"],
                &["/l"],
                &["/d"],
            ),
            (&["lowerdir=/old::/gone", "lowerdir=/new"], &["/new"], &[]),
        ];
        for (opts, regular, data) in cases {
            let o = parse_ok(opts);
            assert_eq!(
                (&o.lowerdirs, &o.datadirs),
                (&paths(regular), &paths(data)),
                "{opts:?}"
            );
        }
        let refused: &[(&str, &str)] = &[
            (
                "lowerdir=/l1::/d1:/l2",
                "regular lower layers cannot follow data lower layers",
            ),
            (
                "lowerdir=/l1:::/d1",
                "only single ':' or double '::' sequences of unescaped colons",
            ),
            ("lowerdir=/l1::", "unescaped trailing colons in lowerdir"),
            ("lowerdir=::/d1", "cannot append lower layer"),
            ("datadir+=/d1", "at least one non-data lowerdir is required"),
            (
                "datadir+=/d1,datadir+=/d2,upperdir=/u,workdir=/w",
                "at least one non-data lowerdir is required",
            ),
            (
                "datadir+=/d1,lowerdir+=/l1",
                "regular lower layers cannot follow data layers",
            ),
            (
                "lowerdir=/l1,lowerdir+=/l2",
                "lowerdir+ and datadir+ cannot follow lowerdir",
            ),
            (
                "lowerdir=/l1,datadir+=/d1",
                "lowerdir+ and datadir+ cannot follow lowerdir",
            ),
        ];
        for (opt, reason) in refused {
            assert_eq!(
                parse(&[opt], Path::new(CWD)),
                Err(OptionError::Layers { reason }),
                "{opt:?}"
            );
        }
        assert_eq!(
            parse(&["datadir+="], Path::new(CWD)),
            Err(OptionError::MissingValue {
                option: "datadir+".into()
            })
        );
    }

    #[test]
    fn upper_and_work_are_resolved_and_unescaped() {
        let o = parse_ok(&[r"lowerdir=l,upperdir=diff\,1,workdir=/abs/work"]);
        assert_eq!(o.lowerdirs, paths(&["/var/lib/storage/overlay/l"]));
        assert_eq!(
            o.upperdir,
            Some(PathBuf::from("/var/lib/storage/overlay/diff,1"))
        );
        assert_eq!(o.workdir, Some(PathBuf::from("/abs/work")));

        let ro = parse_ok(&["lowerdir=/a"]);
        assert_eq!((ro.upperdir, ro.workdir), (None, None));
    }

    #[test]
    fn defaults() {
        let o = parse_ok(&["lowerdir=/a"]);
        assert_eq!(
            o,
            Options {
                lowerdirs: paths(&["/a"]),
                ..Options::default()
            }
        );
        assert_eq!(o.timeout, Duration::from_secs(86_400));
        assert!(o.fsync);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn several_dash_o_arguments_accumulate_and_later_wins() {
        let o = parse_ok(&[
            "lowerdir=/old",
            "upperdir=/u,workdir=/w",
            "lowerdir=/a:/b,ro",
        ]);
        assert_eq!(o.lowerdirs, paths(&["/a", "/b"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert!(o.read_only);
        // A pair split across two arguments is still a pair.
        assert!(
            parse_ok(&["lowerdir=/a,upperdir=/u", "workdir=/w"])
                .workdir
                .is_some()
        );
    }

    #[test]
    fn flags() {
        type Check = fn(&Options) -> bool;
        let cases: &[(&str, Check)] = &[
            ("ro", |o| o.read_only),
            ("ro,rw", |o| !o.read_only),
            ("allow_other", |o| o.allow_other),
            ("allow_root", |o| o.allow_root),
            ("nodev", |o| o.nodev),
            ("nodev,dev", |o| !o.nodev),
            ("lowerdir=/a", |o| o.nodev && o.nosuid.is_none()),
            ("nosuid", |o| o.nosuid == Some(true)),
            ("nosuid,suid", |o| o.nosuid == Some(false)),
            ("dev", |o| !o.nodev),
            ("noexec", |o| o.noexec),
            ("noexec,exec", |o| !o.noexec),
            ("noatime", |o| o.noatime),
            ("noatime,atime", |o| !o.noatime),
            ("noatime,relatime", |o| !o.noatime),
            ("debug", |o| o.debug),
            ("volatile", |o| !o.fsync),
            ("fsync=0", |o| !o.fsync),
            ("volatile,fsync=1", |o| o.fsync),
            ("threaded=4", |o| o.threads == Some(4)),
            ("threaded=0", |o| o.threads == Some(1)),
            ("fsname=myunion", |o| o.fsname.as_deref() == Some("myunion")),
            (r"fsname=a\,b", |o| o.fsname.as_deref() == Some("a,b")),
            ("squash_to_root", |o| o.squash_to_root),
            ("squash_to_uid=1000", |o| o.squash_to_uid == Some(1000)),
            ("squash_to_gid=0", |o| o.squash_to_gid == Some(0)),
            ("timeout=2.5", |o| o.timeout == Duration::from_millis(2500)),
            ("timeout=0", |o| o.timeout.is_zero()),
            ("timeout=30", |o| o.timeout == Duration::from_secs(30)),
            ("default_permissions,userxattr", |o| o.warnings.is_empty()),
            (",,ro,", |o| o.read_only),
        ];
        for (opt, check) in cases {
            let o = parse_ok(&["lowerdir=/a", opt]);
            assert!(check(&o), "{opt:?} gave {o:?}");
        }
    }

    #[test]
    fn id_mappings() {
        let m = |disk, shown, count| IdMapping { disk, shown, count };
        let o =
            parse_ok(&["lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:0:4294967295"]);
        assert_eq!(o.uid_mappings, vec![m(0, 1000, 1), m(1, 100000, 65536)]);
        // containers/storage's form for --userns=keep-id: a leading colon.
        let keep_id = parse_ok(&["lowerdir=/a,uidmapping=:0:1:1000:1000:0:1:1001:1001:64535"]);
        assert_eq!(
            keep_id.uid_mappings,
            vec![m(0, 1, 1000), m(1000, 0, 1), m(1001, 1001, 64535)]
        );
        assert_eq!(o.gid_mappings, vec![m(0, 0, u32::MAX)]);
        // The range may end exactly at the top of the id space.
        let top = parse_ok(&["lowerdir=/a,uidmapping=4294967295:0:1"]);
        assert_eq!(top.uid_mappings, vec![m(u32::MAX, 0, 1)]);
    }

    #[test]
    fn selinux_contexts_are_consumed_silently() {
        let o = parse_ok(&[
            r#"lowerdir=/a,context="system_u:object_r:container_file_t:s0:c1,c2",nodev"#,
            r#"fscontext=x,defcontext="a,b",rootcontext=y"#,
        ]);
        assert_eq!(o.lowerdirs, paths(&["/a"]));
        assert!(o.nodev);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn fuse_overlayfs_test_options() {
        let o = parse_ok(&["lowerdir=/a,static_nlink,noxattrs=1,noacl"]);
        assert!(o.static_nlink && o.noxattrs && o.noacl && o.warnings.is_empty());
        assert!(!parse_ok(&["lowerdir=/a"]).noacl);
        assert!(!parse_ok(&["lowerdir=/a,noxattrs=0"]).noxattrs);
    }

    #[test]
    fn unsupported_and_unknown_options_warn() {
        let cases = [
            (
                "nfs_export=on",
                "option \"nfs_export=on\" is accepted for compatibility",
            ),
            ("auto_unmount", "option \"auto_unmount\" is accepted"),
            ("frobnicate", "unknown option \"frobnicate\" ignored"),
            ("colour=blue", "unknown option \"colour=blue\" ignored"),
        ];
        for (opt, want) in cases {
            let o = parse_ok(&["lowerdir=/a", opt]);
            assert_eq!(o.warnings.len(), 1, "{opt:?}: {:?}", o.warnings);
            assert!(o.warnings[0].starts_with(want), "{opt:?}: {:?}", o.warnings);
        }
        let all = parse_ok(&["lowerdir=/a,ino32_t,nfs_export=off,foo", "bar"]);
        assert_eq!(all.warnings.len(), 4);
    }

    #[test]
    fn overlay_feature_switches() {
        let d = parse_ok(&["lowerdir=/a"]);
        assert!(d.redirect_dir && d.index && d.metacopy && d.xino);
        let off = parse_ok(&["lowerdir=/a,redirect_dir=off,index=off,metacopy=off,xino=off"]);
        assert!(!off.redirect_dir && !off.index && !off.metacopy && !off.xino);
        assert!(off.warnings.is_empty(), "{:?}", off.warnings);
        assert!(!parse_ok(&["lowerdir=/a,redirect_dir=follow"]).redirect_dir);
        assert!(parse_ok(&["lowerdir=/a,xino=auto"]).xino);
        for bad in [
            "index=maybe",
            "metacopy=1",
            "xino=yes",
            "redirect_dir=sometimes",
        ] {
            let input = format!("lowerdir=/a,{bad}");
            assert!(parse(&[input.as_str()], Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors() {
        use OptionError::*;
        let missing = |option: &str| MissingValue {
            option: option.into(),
        };
        let bad = |option: &str, value: &str, expected| InvalidValue {
            option: option.into(),
            value: value.into(),
            expected,
        };
        const SECS: &str = "a non-negative number of seconds";
        const TRIPLES: &str = "disk:shown:count triples of numeric ids";
        const RANGES: &str = "non-empty ranges within the 32-bit id space";
        let cases: &[(&[&str], OptionError)] = &[
            (&[], MissingLowerdir),
            (&["ro,upperdir=/u,workdir=/w"], MissingLowerdir),
            (&["lowerdir="], missing("lowerdir")),
            (&["lowerdir"], missing("lowerdir")),
            (
                &["lowerdir=/a:"],
                Layers {
                    reason: "unescaped trailing colons in lowerdir",
                },
            ),
            (&["lowerdir=/a,upperdir=/u"], MissingWorkdir),
            (&["lowerdir=/a,workdir=/w"], MissingUpperdir),
            (
                &["lowerdir=/a", "upperdir=", "workdir=/w"],
                missing("upperdir"),
            ),
            (&[r#"lowerdir="""#], missing("lowerdir")),
            (&["lowerdir=/a,timeout=abc"], bad("timeout", "abc", SECS)),
            (&["lowerdir=/a,timeout=-1"], bad("timeout", "-1", SECS)),
            (&["lowerdir=/a,timeout=NaN"], bad("timeout", "NaN", SECS)),
            (
                &["lowerdir=/a,timeout=1e300"],
                bad("timeout", "1e300", SECS),
            ),
            (&["lowerdir=/a,timeout"], missing("timeout")),
            (&["lowerdir=/a,fsync=2"], bad("fsync", "2", "0 or 1")),
            (
                &["lowerdir=/a,threaded=many"],
                bad("threaded", "many", "a number of threads"),
            ),
            (&["lowerdir=/a,fsname="], missing("fsname")),
            (
                &["lowerdir=/a,uidmapping=1:2"],
                bad("uidmapping", "1:2", TRIPLES),
            ),
            (
                &["lowerdir=/a,gidmapping=0:0:1:5"],
                bad("gidmapping", "0:0:1:5", TRIPLES),
            ),
            (
                &["lowerdir=/a,uidmapping=a:b:c"],
                bad("uidmapping", "a:b:c", TRIPLES),
            ),
            (
                &["lowerdir=/a,uidmapping=0:1000:0"],
                bad("uidmapping", "0:1000:0", RANGES),
            ),
            (
                &["lowerdir=/a,uidmapping=0:4294967295:2"],
                bad("uidmapping", "0:4294967295:2", RANGES),
            ),
            (
                &["lowerdir=/a,squash_to_uid=-1"],
                bad("squash_to_uid", "-1", "a numeric id"),
            ),
            (
                &["lowerdir=/a,squash_to_gid=x"],
                bad("squash_to_gid", "x", "a numeric id"),
            ),
            (
                &["lowerdir=/a,ro=1"],
                UnexpectedValue {
                    option: "ro".into(),
                    value: "1".into(),
                },
            ),
            (
                &["lowerdir=/a,volatile=yes"],
                UnexpectedValue {
                    option: "volatile".into(),
                    value: "yes".into(),
                },
            ),
            (
                &[r#"lowerdir=/a,context="unterminated"#],
                UnterminatedQuote {
                    item: r#"context="unterminated"#.into(),
                },
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(parse(opts, Path::new(CWD)).as_ref(), Err(want), "{opts:?}");
        }
    }

    #[test]
    fn error_messages_are_one_clear_line() {
        let cases = [
            (
                OptionError::MissingLowerdir,
                "option \"lowerdir=\" is required",
            ),
            (
                OptionError::MissingWorkdir,
                "option \"upperdir=\" needs \"workdir=\" too, which is missing",
            ),
            (
                OptionError::MissingUpperdir,
                "option \"workdir=\" needs \"upperdir=\" too, which is missing",
            ),
            (
                invalid("timeout", "abc", "a non-negative number of seconds"),
                "option \"timeout=abc\": expected a non-negative number of seconds",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
