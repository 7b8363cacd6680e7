//! The `ufs` command: parse the command line, validate, mount, exit with a status.
//!
//! Container tools and mount(8) call FUSE filesystems in three shapes, all accepted:
//!
//! 1. `ufs mount -o OPTS MERGED`: the project's own form;
//! 2. `ufs -o OPTS MERGED`: what containers/storage runs as its `mount_program`;
//! 3. `ufs SOURCE MERGED -o OPTS`: what `mount.fuse3` runs for `mount -t fuse.ufs`.
//!
//! plus `ufs umount MERGED`. Because form 3 lets SOURCE be any word, the words `mount` and
//! `umount` are not clap subcommands: [`classify`] looks at the positional arguments after clap
//! has collected them (see there for how the ambiguity is resolved).
//!
//! Everything that can fail is checked before the process detaches, and the detached child only
//! lets the command return once the mount is live, so a caller can use the mount as soon as the
//! command exits 0 and sees the real error message otherwise.

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, value_parser};

use ufs::layer::NamedDirs;
use ufs::mount::{self, MountError};
use ufs::options::{self, OptionError, Options};
use ufs::sys::process::{self, ForkResult};

/// Exit status when the command line itself is wrong, as clap and most tools use.
const USAGE_STATUS: u8 = 2;

/// `ufs snapshotter`'s defaults, beside containerd's own directories.
const DEFAULT_ROOT: &str = "/var/lib/ufs-snapshotter";
const DEFAULT_ADDRESS: &str = "/run/ufs-snapshotter/ufs-snapshotter.sock";

/// The byte a daemon child writes to its parent once the mount is live.
const READY: u8 = 1;

const USAGE: &str = "ufs mount -o OPTIONS MERGED
       ufs -o OPTIONS MERGED
       ufs SOURCE MERGED -o OPTIONS
       ufs umount MERGED
       ufs status [--json] MERGED
       ufs diff [--json] -o lowerdir=...,upperdir=...
       ufs check [--repair] -o lowerdir=...[,upperdir=...,workdir=...]
       ufs snapshotter [--root DIR] [--address SOCKET]
       ufs help | ufs man | ufs completions bash|zsh|fish";

/// The words that name a command rather than a SOURCE or MERGED when no `-o` is given.
const COMMANDS: &[&str] = &[
    "mount",
    "umount",
    "status",
    "diff",
    "check",
    "snapshotter",
    "help",
    "man",
    "completions",
];

const OPTIONS_HELP: &str = r#"Options for -o (comma-separated; -o may be repeated). Where another implementation has
the same option: [k] the kernel overlay (mount -t overlay), [f] fuse-overlayfs, [m] mount(8).
  lowerdir=DIR[:DIR...]  read-only layers, top-most first (required) [k][f]
  lowerdir=DIR[:DIR...]::DATA[::DATA...], lowerdir+=DIR, datadir+=DATA
                         data-only layers [k]: never merged, they only hold the data of
                         metadata-only files in the lowers that name it by an absolute
                         redirect (composefs); lowerdir+= and datadir+= add one directory
                         each, cannot follow lowerdir=, and datadir+= comes last
  upperdir=DIR           the writable layer (needs workdir) [k][f]
  workdir=DIR            an empty directory on the upper's filesystem (needs upperdir) [k][f]
  ro, rw                 ro refuses every write, even with an upper (default rw) [m]
  allow_other, allow_root
                         let every user (allow_root: root too) use the mount [f]
  nodev,dev,nosuid,suid,noexec,exec
                         the usual mount flags [m]; as uid 0 the mount has allow_other,
                         suid and nodev (as fuse-overlayfs), otherwise nosuid,nodev
  noatime, atime, relatime, strictatime
                         noatime: no access-time updates [m]; the others (the default)
                         leave access times to the upper's filesystem
  default_permissions    accepted [f]: the kernel always checks permissions
  context=, fscontext=, defcontext=, rootcontext=
                         SELinux labels [m]: accepted and ignored
  timeout=SECS           how long the kernel caches names and attributes (default 86400) [f]
  fsync=0|1, volatile    fsync=0 [f] or volatile [k]: do not make copied-up data durable
                         (faster, unsafe on a crash; default fsync=1)
  threaded=N             request threads (default: CPUs + 2, at least 4; 0 is 1) [f]
  passthrough=on|off     let the kernel read and write regular files on the real files
                         (FUSE passthrough; default on where the kernel and privileges allow)
  writeback=0|1          let the kernel cache writes where passthrough is not used (the FUSE
                         writeback cache; default 0; also on|off) [f]
  redirect_dir=on|off|follow|nofollow, index=on|off, metacopy=on|off, xino=on|auto|off
                         the kernel overlay's features [k] (defaults: redirect_dir=on,
                         index=on, metacopy=on, xino=on)
  userxattr              keep records in user.overlay.* (default: trusted.overlay.* where
                         the daemon may write them) [k]
  fsname=NAME            the source shown in the mount table (default: SOURCE) [f]
  uidmapping=D:S:N[:D:S:N...], gidmapping=...
                         ids D.. on disk show as S.. in the mount (N of them) [f]
  squash_to_root, squash_to_uid=N, squash_to_gid=N
                         show every file as owned by root, or by uid/gid N [f]
  static_nlink, noxattrs=1
                         directories report one link; no xattrs through the mount [f]
  noacl                  the kernel does not enforce POSIX ACLs (they stay plain xattrs) [f]
  xattr_permissions=1|2  owners and modes of files and directories live in a security.* (1)
                         or user.containers.* (2) xattr record [f]
  debug                  same as -d [f]

Without upperdir and workdir the union is read-only. In paths "\," is a comma, "\:" a
colon inside lowerdir, and "\\" a backslash; relative paths are taken from the current
directory. Unknown options are ignored with a warning. Unmount with `ufs umount MERGED`,
`fusermount3 -u MERGED` or `umount MERGED`.

`ufs status MERGED` prints a live mount's layers, options, requests by type (count and
time), copy-ups, cache hits, errors by errno, open handles, cached inodes and passthrough
use (`--json`: as JSON); only root and the mount's owner may ask. `kill -USR1 PID` writes
the same report to the daemon's log (its stderr, with -f).

`ufs check` reads a stack offline and prints one line per problem; --repair fixes what keeps
the union's view; -n, -p, -y (or running as fsck.overlay) take fsck.overlay's command line and
exit codes. `ufs diff` lists what an upper changes in its lowers.

`ufs snapshotter` serves containerd's snapshots API on a unix socket (a proxy snapshotter
plugin, `[proxy_plugins.ufs] type = "snapshot"`), laid out as containerd's overlay snapshotter
under --root, with `fuse3.ufs` mounts; it runs in the foreground until SIGTERM or SIGINT.

Exit status: 0 once the mount is live (or unmounted, for umount), 1 if mounting or
unmounting failed, 2 if the command line or an option is wrong."#;

/// The clap definition. It provides help, version, `-o` repetition, `-fd` clusters and `--`;
/// the meaning of the positional arguments is decided by [`classify`].
fn cli() -> clap::Command {
    clap::Command::new("ufs")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A union (overlay) filesystem in userspace, on FUSE")
        .override_usage(USAGE)
        .after_long_help(OPTIONS_HELP)
        .after_help("Run 'ufs --help' for the -o options.")
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTIONS")
                .action(ArgAction::Append)
                .value_parser(value_parser!(String))
                .help("Comma-separated mount options (see below)"),
        )
        .arg(
            Arg::new("foreground")
                .short('f')
                .action(ArgAction::SetTrue)
                .help("Stay in the foreground instead of detaching once mounted"),
        )
        .arg(
            Arg::new("debug")
                .short('d')
                .action(ArgAction::SetTrue)
                .help("Log every request to stderr; implies -f"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("ufs diff, ufs status: print the answer as JSON"),
        )
        .arg(
            Arg::new("repair")
                .long("repair")
                .action(ArgAction::SetTrue)
                .help("ufs check: repair what can be repaired without changing the union's view"),
        )
        .arg(
            Arg::new("no_changes")
                .short('n')
                .action(ArgAction::SetTrue)
                .help("ufs check, as fsck.overlay -n: change nothing; fsck exit codes"),
        )
        .arg(
            Arg::new("preen")
                .short('p')
                .short_alias('a')
                .action(ArgAction::SetTrue)
                .help("ufs check, as fsck.overlay -p: repair what is safe; fsck exit codes"),
        )
        .arg(
            Arg::new("yes").short('y').action(ArgAction::SetTrue).help(
                "ufs check, as fsck.overlay -y: also drop duplicate redirects; fsck exit codes",
            ),
        )
        .arg(
            Arg::new("verbose")
                .short('v')
                .long("verbose")
                .action(ArgAction::SetTrue)
                .help("ufs check: also say what was checked"),
        )
        .arg(
            Arg::new("root")
                .long("root")
                .value_name("DIR")
                .value_parser(value_parser!(PathBuf))
                .help(format!(
                    "ufs snapshotter: where snapshots and their metadata live [default: {DEFAULT_ROOT}]"
                )),
        )
        .arg(
            Arg::new("address")
                .long("address")
                .value_name("SOCKET")
                .value_parser(value_parser!(PathBuf))
                .help(format!(
                    "ufs snapshotter: the unix socket to serve on [default: {DEFAULT_ADDRESS}]"
                )),
        )
        .arg(
            Arg::new("args")
                .value_name("ARGS")
                .num_args(1..)
                .action(ArgAction::Append)
                .value_parser(value_parser!(OsString))
                .help("[mount] [SOURCE] MERGED, or umount MERGED"),
        )
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Invocation {
    Mount(MountArgs),
    Umount {
        mountpoint: PathBuf,
    },
    /// `ufs help`, and `ufs` with no arguments at all.
    Help,
    /// `ufs man`: the manual page, in roff.
    Man,
    /// `ufs completions SHELL`.
    Completions(clap_complete::Shell),
    /// `ufs status [--json] MERGED`: the live mount's report, from its daemon.
    Status {
        mountpoint: PathBuf,
        json: bool,
    },
    /// `ufs diff [--json] -o OPTIONS`: the changes an upper makes to its lowers.
    Diff {
        options: Vec<String>,
        json: bool,
    },
    /// `ufs check [--repair|-n|-p|-y] -o OPTIONS`, also run as `fsck.overlay`.
    Check(CheckArgs),
    /// `ufs snapshotter [--root DIR] [--address SOCKET]`: containerd's snapshots API.
    Snapshotter {
        root: PathBuf,
        address: PathBuf,
    },
}

/// What `ufs check` is asked to do.
#[derive(Debug, PartialEq)]
struct CheckArgs {
    options: Vec<String>,
    repair: ufs::check::Repair,
    /// The `fsck.overlay` command line (`-n`/`-p`/`-y`, or run by that name): fsck's exit codes.
    fsck: bool,
    verbose: bool,
}

/// The raw mount request, before the option string is parsed.
#[derive(Debug, Default, PartialEq)]
struct MountArgs {
    /// One entry per `-o`, in order.
    options: Vec<String>,
    /// SOURCE of form 3; becomes `fsname` unless the options set one.
    source: Option<String>,
    mountpoint: PathBuf,
    foreground: bool,
    debug: bool,
}

/// Turns argv (including the program name) into an [`Invocation`], with no I/O.
///
/// The positional arguments decide the form:
/// - `umount M`, when no `-o` is given, is an unmount. (With `-o` it can only be form 3 with a
///   SOURCE named `umount`, because mounting needs `lowerdir=`.)
/// - `mount M` and `mount S M` are the `mount` subcommand. `ufs mount M -o ...` could also be
///   form 3 with SOURCE `mount`; both mount the same union, the subcommand reading only leaves
///   `fsname` at its default.
/// - otherwise one positional is MERGED (form 2, which includes a mountpoint named `mount`) and
///   two are SOURCE MERGED (form 3).
///
/// Help and version requests come back as clap errors of kind `DisplayHelp`/`DisplayVersion`.
fn classify<I, T>(argv: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    // Run as `fsck.overlay` (a link to ufs), it is `ufs check` with fsck's command line.
    let fsck_name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "fsck.overlay");
    if fsck_name {
        argv.insert(1, "check".into());
    }
    let mut cmd = cli();
    let mut matches = cmd.try_get_matches_from_mut(argv)?;
    let options: Vec<String> = matches
        .remove_many("options")
        .map(Iterator::collect)
        .unwrap_or_default();
    let foreground = matches.get_flag("foreground");
    let debug = matches.get_flag("debug");
    let mut args: Vec<OsString> = matches
        .remove_many("args")
        .map(Iterator::collect)
        .unwrap_or_default();

    let first = args.first().and_then(|a| a.to_str());
    let root = matches.remove_one::<PathBuf>("root");
    let address = matches.remove_one::<PathBuf>("address");
    if first == Some("snapshotter") && args.len() == 1 && options.is_empty() {
        return Ok(Invocation::Snapshotter {
            root: root.unwrap_or_else(|| DEFAULT_ROOT.into()),
            address: address.unwrap_or_else(|| DEFAULT_ADDRESS.into()),
        });
    }
    if root.is_some() || address.is_some() {
        return Err(cmd.error(
            ErrorKind::ArgumentConflict,
            "--root and --address are for ufs snapshotter",
        ));
    }
    let json = matches.get_flag("json");
    let check_flags = [
        matches.get_flag("repair"),
        matches.get_flag("no_changes"),
        matches.get_flag("preen"),
        matches.get_flag("yes"),
    ];
    if first == Some("check") && args.len() == 1 && !json {
        use ufs::check::Repair;
        let [repair, no_changes, preen, yes] = check_flags;
        if check_flags.iter().filter(|f| **f).count() > 1 {
            return Err(cmd.error(
                ErrorKind::ArgumentConflict,
                "ufs check takes one of --repair, -n, -p and -y",
            ));
        }
        if options.is_empty() {
            return Err(cmd.error(
                ErrorKind::MissingRequiredArgument,
                "check needs -o lowerdir=... (and upperdir=, workdir= to check those too)",
            ));
        }
        return Ok(Invocation::Check(CheckArgs {
            options,
            repair: if yes {
                Repair::All
            } else if repair || preen {
                Repair::Safe
            } else {
                Repair::Nothing
            },
            fsck: no_changes || preen || yes || fsck_name,
            verbose: matches.get_flag("verbose"),
        }));
    }
    if check_flags.iter().any(|f| *f) || matches.get_flag("verbose") {
        return Err(cmd.error(
            ErrorKind::ArgumentConflict,
            "--repair, -n, -p, -y and -v are for ufs check",
        ));
    }
    if first == Some("diff") && args.len() == 1 {
        return Ok(Invocation::Diff { options, json });
    }
    if first == Some("status") && options.is_empty() && !foreground && !debug {
        return match <[OsString; 2]>::try_from(args) {
            Ok([_, mountpoint]) => Ok(Invocation::Status {
                mountpoint: mountpoint.into(),
                json,
            }),
            Err(args) => Err(cmd.error(
                ErrorKind::WrongNumberOfValues,
                format!(
                    "status takes exactly one argument, MERGED (got {})",
                    args.len() - 1
                ),
            )),
        };
    }
    if json {
        return Err(cmd.error(
            ErrorKind::ArgumentConflict,
            "--json is for ufs diff and ufs status",
        ));
    }
    if options.is_empty() && !foreground && !debug {
        // Without `-o` nothing can be mounted (`lowerdir=` is required): the first word is a
        // command, and a word that is none is a typo rather than a SOURCE.
        match (first, args.len()) {
            (None, _) | (Some("help"), 1) => return Ok(Invocation::Help),
            (Some("man"), 1) => return Ok(Invocation::Man),
            (Some("completions"), 2) => {
                let shell = args[1].to_str().and_then(|s| s.parse().ok());
                return match shell {
                    Some(shell) => Ok(Invocation::Completions(shell)),
                    None => Err(cmd.error(
                        ErrorKind::InvalidValue,
                        "completions takes one of: bash, zsh, fish, elvish, powershell",
                    )),
                };
            }
            (Some("mount"), 1) => {
                return Err(cmd.error(
                    ErrorKind::MissingRequiredArgument,
                    "mount needs -o OPTIONS (at least lowerdir=) and MERGED",
                ));
            }
            // A path is a MERGED without options, which the options check refuses by name.
            (Some(word), _) if !COMMANDS.contains(&word) && !word.contains('/') => {
                return Err(cmd.error(
                    ErrorKind::InvalidSubcommand,
                    format!(
                        "unknown command {word:?}; the commands are {} (mounting needs -o)",
                        COMMANDS.join(", ")
                    ),
                ));
            }
            _ => {}
        }
    }
    if first == Some("umount") && options.is_empty() {
        return match <[OsString; 2]>::try_from(args) {
            Ok([_, mountpoint]) => Ok(Invocation::Umount {
                mountpoint: mountpoint.into(),
            }),
            Err(args) => Err(cmd.error(
                ErrorKind::WrongNumberOfValues,
                format!(
                    "umount takes exactly one argument, MERGED (got {})",
                    args.len() - 1
                ),
            )),
        };
    }
    if first == Some("mount") && args.len() > 1 {
        args.remove(0);
    }
    let (source, mountpoint) = match <[OsString; 2]>::try_from(args) {
        Ok([source, mountpoint]) => (Some(source), mountpoint),
        Err(args) => match <[OsString; 1]>::try_from(args) {
            Ok([mountpoint]) => (None, mountpoint),
            Err(args) if args.is_empty() => {
                return Err(cmd.error(
                    ErrorKind::MissingRequiredArgument,
                    "missing MERGED, the directory to mount the union on",
                ));
            }
            Err(args) => {
                return Err(cmd.error(
                    ErrorKind::TooManyValues,
                    format!(
                        "too many arguments: expected [SOURCE] MERGED, got {}",
                        args.len()
                    ),
                ));
            }
        },
    };
    Ok(Invocation::Mount(MountArgs {
        options,
        // fsname is text in the mount table; a non-UTF-8 SOURCE is shown lossily rather than
        // refused, since it does not change what is mounted.
        source: source.map(|s| s.to_string_lossy().into_owned()),
        mountpoint: mountpoint.into(),
        foreground,
        debug,
    }))
}

/// Every way the command can fail; printed once, by `main`.
#[derive(Debug)]
enum Failure {
    /// The command line is malformed (clap's rendering, with usage).
    Usage(clap::Error),
    Options(OptionError),
    Mount(MountError),
    /// A system call failed; `context` says what ufs was doing.
    Io {
        context: String,
        source: io::Error,
    },
    /// A failure whose explanation is complete in itself.
    Message(String),
}

impl Failure {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
        let context = context.into();
        move |source| Failure::Io { context, source }
    }

    fn status(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Options(_) => USAGE_STATUS,
            _ => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(err) => {
                // clap starts with its own "error: " tag; `main` adds "ufs: " instead.
                let text = err.render().to_string();
                let text = text.trim_end();
                f.write_str(text.strip_prefix("error: ").unwrap_or(text))
            }
            Failure::Options(err) => err.fmt(f),
            Failure::Mount(err) => err.fmt(f),
            Failure::Io { context, source } => {
                write!(f, "{context}: {}", mount::describe(source))
            }
            Failure::Message(message) => f.write_str(message),
        }
    }
}

impl From<OptionError> for Failure {
    fn from(err: OptionError) -> Self {
        Failure::Options(err)
    }
}

impl From<MountError> for Failure {
    fn from(err: MountError) -> Self {
        Failure::Mount(err)
    }
}

fn main() -> ExitCode {
    match run(std::env::args_os()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ufs: {err}");
            ExitCode::from(err.status())
        }
    }
}

fn run(argv: impl IntoIterator<Item = OsString>) -> Result<ExitCode, Failure> {
    let invocation = match classify(argv) {
        Ok(invocation) => invocation,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            // Help and version go to stdout and succeed; clap knows the right stream.
            err.print()
                .map_err(Failure::io("cannot print the help text"))?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(err) => return Err(Failure::Usage(err)),
    };
    match invocation {
        Invocation::Mount(args) => mount_union(args),
        Invocation::Umount { mountpoint } => umount(&mountpoint),
        Invocation::Status { mountpoint, json } => {
            let report = ufs::status::query(&mountpoint).map_err(Failure::Message)?;
            let text = if json {
                report.to_string() + "\n"
            } else {
                ufs::status::to_text(&report)
            };
            io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(Failure::io("cannot write the status"))?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Help => {
            cli()
                .print_long_help()
                .map_err(Failure::io("cannot print the help text"))?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Man => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(cli())
                .section("8")
                .render(&mut out)
                .map_err(Failure::io("cannot write the manual page"))?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Diff { options, json } => {
            let cwd = std::env::current_dir()
                .map_err(Failure::io("cannot read the current directory"))?;
            let option_args: Vec<&str> = options.iter().map(String::as_str).collect();
            let opts = options::parse_for_reading(&option_args, &cwd)?;
            let changes = ufs::diff::diff(&opts).map_err(Failure::io("cannot read the layers"))?;
            let text = if json {
                ufs::diff::to_json(&changes) + "\n"
            } else {
                ufs::diff::to_text(&changes)
            };
            io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(Failure::io("cannot write the changes"))?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Check(args) => check(args),
        Invocation::Snapshotter { root, address } => {
            init_logging(false);
            let cwd = std::env::current_dir()
                .map_err(Failure::io("cannot read the current directory"))?;
            ufs::snapshotter::serve(&cwd.join(root), &cwd.join(address), || {})
                .map_err(Failure::Message)?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Completions(shell) => {
            // Into a buffer first: the generator panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli(), "ufs", &mut script);
            io::stdout()
                .lock()
                .write_all(&script)
                .map_err(Failure::io("cannot write the completions"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ufs check`: one line per problem on stdout. Exit 0 when none was found, 1 when some were
/// (repaired or not), 2 when the stack cannot be checked; as `fsck.overlay`, fsck's codes (0
/// none, 1 all repaired, 4 some left, 8 cannot check, 16 usage).
fn check(args: CheckArgs) -> Result<ExitCode, Failure> {
    let cwd = std::env::current_dir().map_err(Failure::io("cannot read the current directory"))?;
    let option_args: Vec<&str> = args.options.iter().map(String::as_str).collect();
    let opts = match options::parse_for_reading(&option_args, &cwd) {
        Ok(opts) => opts,
        Err(e) if args.fsck => {
            eprintln!("ufs: {e}");
            return Ok(ExitCode::from(16));
        }
        Err(e) => return Err(e.into()),
    };
    let problems = match ufs::check::check(&opts, args.repair) {
        Ok(problems) => problems,
        Err(e) => {
            eprintln!("ufs check: {e}");
            return Ok(ExitCode::from(if args.fsck { 8 } else { 2 }));
        }
    };
    let mut out = io::stdout().lock();
    let mut text = String::new();
    for p in &problems {
        text.push_str(&p.line());
        text.push('\n');
    }
    if args.verbose || problems.is_empty() {
        let layers = opts.lowerdirs.len() + usize::from(opts.upperdir.is_some());
        let left = problems.iter().filter(|p| p.remains()).count();
        text.push_str(&format!(
            "{layers} layer(s) checked: {} problem(s), {} repaired, {left} left\n",
            problems.len(),
            problems.len() - left,
        ));
    }
    out.write_all(text.as_bytes())
        .map_err(Failure::io("cannot write the report"))?;
    Ok(ExitCode::from(if args.fsck {
        ufs::check::fsck_status(&problems)
    } else {
        u8::from(!problems.is_empty())
    }))
}

/// Validates everything, then serves the union in the foreground or from a detached child.
fn mount_union(args: MountArgs) -> Result<ExitCode, Failure> {
    let cwd = std::env::current_dir().map_err(Failure::io("cannot read the current directory"))?;
    let option_args: Vec<&str> = args.options.iter().map(String::as_str).collect();
    let mut opts = options::parse(&option_args, &cwd)?;
    opts.debug |= args.debug;
    if opts.fsname.is_none() {
        opts.fsname = args.source;
    }
    for warning in &opts.warnings {
        eprintln!("ufs: warning: {warning}");
    }

    // Each directory is opened once; everything that can refuse the layers is checked on those
    // descriptors before anything is created or removed in them (the work directory's sweep
    // runs when serving starts).
    let dirs = mount::open_dirs(&opts)?;
    mount::check_dirs(&dirs)?;
    // Held until this function returns, which in the daemon is after the unmount; a forked
    // child shares the locked descriptors, so the parent exiting does not release them.
    let layer_locks = mount::lock_dirs(&dirs)?;
    for warning in &layer_locks.warnings {
        eprintln!("ufs: warning: {warning}");
    }
    ufs::in_use::check_dirs(&dirs)?;
    let mountpoint = mount::check_mountpoint(&args.mountpoint, &cwd)?;

    init_logging(opts.debug);
    if args.foreground || opts.debug {
        serve(&opts, dirs, &mountpoint, || {
            log::info!("{} is mounted", mountpoint.display());
        })?;
        Ok(ExitCode::SUCCESS)
    } else {
        daemonize(&opts, dirs, &mountpoint)
    }
}

/// `-d`/`debug` logs at debug level, otherwise only warnings and the status report asked for
/// with `SIGUSR1`; `RUST_LOG` overrides both.
fn init_logging(debug: bool) {
    let default = if debug {
        "debug"
    } else {
        "warn,ufs::status=info,ufs::snapshotter=info"
    };
    let env = env_logger::Env::default().default_filter_or(default);
    if let Err(err) = env_logger::Builder::from_env(env).try_init() {
        // Only possible if a logger is already installed, which nothing here does; mounting
        // matters more than logging, so go on.
        eprintln!("ufs: warning: logging is disabled: {err}");
    }
}

/// Runs the filesystem until it is unmounted. A return before the mount went live is an error
/// even if the core reports none, so that a daemon's parent never reports success for it.
fn serve(
    opts: &Options,
    dirs: NamedDirs,
    mountpoint: &Path,
    on_ready: impl FnOnce(),
) -> Result<(), Failure> {
    let ready = AtomicBool::new(false);
    let result = ufs::fs::serve_dirs(opts, dirs, mountpoint, || {
        ready.store(true, Ordering::Release);
        on_ready();
    });
    let ready = ready.load(Ordering::Acquire);
    let doing = if ready { "serving" } else { "mounting on" };
    result.map_err(Failure::io(format!("{doing} {mountpoint:?}")))?;
    if !ready {
        return Err(Failure::Message(format!(
            "{mountpoint:?} was unmounted before the mount completed"
        )));
    }
    Ok(())
}

/// Forks; the parent exits with 0 once the child reports the mount live, or with 1 when the
/// child exits first (after printing its error on the shared stderr).
fn daemonize(opts: &Options, dirs: NamedDirs, mountpoint: &Path) -> Result<ExitCode, Failure> {
    // Opened before forking so that failures are still reported by the parent's exit status.
    let dev_null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Failure::io("cannot open /dev/null"))?;
    let (mut from_child, mut to_parent) =
        io::pipe().map_err(Failure::io("cannot create a pipe"))?;
    match process::fork().map_err(Failure::io("cannot fork the daemon"))? {
        ForkResult::Parent { .. } => {
            // Our copy of the write end would keep the pipe open and hide the child's exit.
            drop(to_parent);
            let mut byte = [0u8; 1];
            match from_child.read_exact(&mut byte) {
                Ok(()) if byte == [READY] => Ok(ExitCode::SUCCESS),
                // End of file: the child exited before the mount went live, after printing why
                // on the stderr we share; saying more would only repeat it.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(ExitCode::FAILURE),
                Ok(()) => Err(Failure::Message(format!(
                    "the daemon sent an unexpected status byte {}",
                    byte[0]
                ))),
                Err(err) => Err(Failure::io("waiting for the daemon")(err)),
            }
        }
        ForkResult::Child => {
            drop(from_child);
            // A new session: no controlling terminal, so closing the terminal that ran the
            // command neither hangs up nor interrupts the daemon.
            process::setsid().map_err(Failure::io("cannot start a new session"))?;
            // Do not keep the caller's working directory busy; every path is absolute by now.
            std::env::set_current_dir("/").map_err(Failure::io("cannot change directory to /"))?;
            serve(opts, dirs, mountpoint, move || {
                // Detach from the terminal before reporting success, so that nothing the
                // daemon prints later lands in the caller's terminal or a closed pipe.
                if let Err(err) = process::redirect_stdio(dev_null.as_fd()) {
                    log::warn!("cannot redirect standard streams to /dev/null: {err}");
                }
                if let Err(err) = to_parent.write_all(&[READY]) {
                    // The parent is gone (killed?): the mount is live regardless, keep serving.
                    log::warn!("cannot report the mount as ready: {err}");
                }
                drop(to_parent);
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Unmounts with `fusermount3 -u`, which also works for unprivileged users, and as root falls
/// back to `umount(8)` for systems without fusermount3 or mounts it does not know about.
fn umount(mountpoint: &Path) -> Result<ExitCode, Failure> {
    let cwd = std::env::current_dir().map_err(Failure::io("cannot read the current directory"))?;
    // Absolute, so that neither helper can mistake a name starting with '-' for a flag.
    let mountpoint = cwd.join(mountpoint);
    let root = process::is_root();
    let mut fusermount = std::process::Command::new("fusermount3");
    fusermount.arg("-u").arg(&mountpoint);
    if root {
        // A failure here is followed by the fallback, whose own message is the one that
        // matters; fusermount3's would only alarm when the fallback succeeds.
        fusermount.stderr(Stdio::null());
    }
    let failure = match fusermount.status() {
        Ok(status) if status.success() => return Ok(ExitCode::SUCCESS),
        Ok(status) => format!("fusermount3 -u {mountpoint:?} failed ({status})"),
        Err(err) => format!("cannot run fusermount3: {}", mount::describe(&err)),
    };
    if !root {
        return Err(Failure::Message(failure));
    }
    let status = std::process::Command::new("umount")
        .arg(&mountpoint)
        .status()
        .map_err(Failure::io(format!("{failure}, and cannot run umount")))?;
    if status.success() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::Message(format!(
            "umount {mountpoint:?} failed ({status})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_args(
        options: &[&str],
        source: Option<&str>,
        mountpoint: &str,
        foreground: bool,
        debug: bool,
    ) -> Invocation {
        Invocation::Mount(MountArgs {
            options: options.iter().map(|o| o.to_string()).collect(),
            source: source.map(String::from),
            mountpoint: mountpoint.into(),
            foreground,
            debug,
        })
    }

    fn classify_words(line: &str) -> Result<Invocation, clap::Error> {
        classify(std::iter::once("ufs").chain(line.split_whitespace()))
    }

    #[test]
    fn the_three_mount_forms_and_umount() {
        let o = "lowerdir=/l";
        let cases = [
            // Form 1, the project's own.
            (
                "mount -o lowerdir=/l /m",
                mount_args(&[o], None, "/m", false, false),
            ),
            (
                "mount /m -o lowerdir=/l",
                mount_args(&[o], None, "/m", false, false),
            ),
            (
                "mount src /m -o lowerdir=/l",
                mount_args(&[o], Some("src"), "/m", false, false),
            ),
            // Form 2, containers/storage's mount_program.
            (
                "-o lowerdir=/l /m",
                mount_args(&[o], None, "/m", false, false),
            ),
            ("-olowerdir=/l m", mount_args(&[o], None, "m", false, false)),
            // Form 3, mount.fuse3.
            (
                "src /m -o lowerdir=/l",
                mount_args(&[o], Some("src"), "/m", false, false),
            ),
            (
                "-o lowerdir=/l src /m",
                mount_args(&[o], Some("src"), "/m", false, false),
            ),
            // Flags, repeated -o, clusters and `--`.
            (
                "-f -o a -o b /m",
                mount_args(&["a", "b"], None, "/m", true, false),
            ),
            ("-d -o a /m", mount_args(&["a"], None, "/m", false, true)),
            ("-fdo a /m", mount_args(&["a"], None, "/m", true, true)),
            ("-o a -- -m", mount_args(&["a"], None, "-m", false, false)),
            // Unmount.
            (
                "umount /m",
                Invocation::Umount {
                    mountpoint: "/m".into(),
                },
            ),
            (
                "umount m",
                Invocation::Umount {
                    mountpoint: "m".into(),
                },
            ),
        ];
        for (line, want) in cases {
            match classify_words(line) {
                Ok(got) => assert_eq!(got, want, "{line:?}"),
                Err(err) => panic!("{line:?}: {err}"),
            }
        }
    }

    #[test]
    fn mount_and_umount_as_ordinary_words() {
        let cases = [
            // A mountpoint named `mount` (form 2).
            (
                "-o a mount",
                mount_args(&["a"], None, "mount", false, false),
            ),
            // A SOURCE named `umount` (form 3): umount never takes -o.
            (
                "umount /m -o a",
                mount_args(&["a"], Some("umount"), "/m", false, false),
            ),
            // A mountpoint named `umount` (form 2).
            (
                "-o a umount",
                mount_args(&["a"], None, "umount", false, false),
            ),
            // SOURCE `mount`: read as the subcommand, which mounts the same union.
            (
                "mount /m -o a",
                mount_args(&["a"], None, "/m", false, false),
            ),
            // SOURCE `mount` with the subcommand spelled out too.
            (
                "mount mount /m -o a",
                mount_args(&["a"], Some("mount"), "/m", false, false),
            ),
        ];
        for (line, want) in cases {
            match classify_words(line) {
                Ok(got) => assert_eq!(got, want, "{line:?}"),
                Err(err) => panic!("{line:?}: {err}"),
            }
        }
    }

    /// Regression: `ufs` alone printed only `option "lowerdir=" is required`, and a mistyped
    /// command (`ufs unmount X`, `ufs stats`) was taken as a SOURCE.
    #[test]
    fn commands_without_options() {
        use clap_complete::Shell;
        let cases = [
            ("", Invocation::Help),
            ("help", Invocation::Help),
            ("man", Invocation::Man),
            ("completions bash", Invocation::Completions(Shell::Bash)),
            ("completions zsh", Invocation::Completions(Shell::Zsh)),
            ("completions fish", Invocation::Completions(Shell::Fish)),
            (
                "status /m",
                Invocation::Status {
                    mountpoint: "/m".into(),
                    json: false,
                },
            ),
            (
                "status --json m",
                Invocation::Status {
                    mountpoint: "m".into(),
                    json: true,
                },
            ),
        ];
        for (line, want) in cases {
            match classify_words(line) {
                Ok(got) => assert_eq!(got, want, "{line:?}"),
                Err(err) => panic!("{line:?}: {err}"),
            }
        }
        let err = classify_words("unmount /m").expect_err("a typo");
        let text = Failure::Usage(err).to_string();
        assert!(
            text.starts_with("unknown command \"unmount\"; the commands are mount, umount"),
            "{text}"
        );
    }

    #[test]
    fn snapshotter_command() {
        let cases = [
            (
                "snapshotter",
                Invocation::Snapshotter {
                    root: DEFAULT_ROOT.into(),
                    address: DEFAULT_ADDRESS.into(),
                },
            ),
            (
                "snapshotter --root /r --address s.sock",
                Invocation::Snapshotter {
                    root: "/r".into(),
                    address: "s.sock".into(),
                },
            ),
        ];
        for (line, want) in cases {
            match classify_words(line) {
                Ok(got) => assert_eq!(got, want, "{line:?}"),
                Err(err) => panic!("{line:?}: {err}"),
            }
        }
        for line in [
            "--root /r /m",
            "status --address /s /m",
            "-o a --root /r snapshotter",
        ] {
            let err = classify_words(line).expect_err(line);
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{line:?}: {err}");
        }
    }

    #[test]
    fn usage_errors() {
        let cases = [
            ("-o a", ErrorKind::MissingRequiredArgument),
            ("mount", ErrorKind::MissingRequiredArgument),
            ("/a b c", ErrorKind::TooManyValues),
            ("a b c", ErrorKind::InvalidSubcommand),
            ("stats", ErrorKind::InvalidSubcommand),
            ("unmount /m", ErrorKind::InvalidSubcommand),
            ("completions tcsh", ErrorKind::InvalidValue),
            ("mount a b c", ErrorKind::TooManyValues),
            ("umount", ErrorKind::WrongNumberOfValues),
            ("umount a b", ErrorKind::WrongNumberOfValues),
            ("status", ErrorKind::WrongNumberOfValues),
            ("status a b", ErrorKind::WrongNumberOfValues),
            ("--json /m", ErrorKind::ArgumentConflict),
            ("-x /m", ErrorKind::UnknownArgument),
            ("/m -o", ErrorKind::InvalidValue),
            ("--help", ErrorKind::DisplayHelp),
            ("-h", ErrorKind::DisplayHelp),
            ("--version", ErrorKind::DisplayVersion),
            ("-V", ErrorKind::DisplayVersion),
        ];
        for (line, want) in cases {
            match classify_words(line) {
                Ok(got) => panic!("{line:?}: expected {want:?}, got {got:?}"),
                Err(err) => assert_eq!(err.kind(), want, "{line:?}: {err}"),
            }
        }
    }

    #[test]
    fn usage_failures_print_after_the_program_name() {
        let err = classify_words("/a b c").expect_err("too many");
        let text = Failure::Usage(err).to_string();
        assert!(
            text.starts_with("too many arguments: expected [SOURCE] MERGED, got 3"),
            "{text}"
        );
        assert_eq!(Failure::Options(OptionError::MissingLowerdir).status(), 2);
        assert_eq!(Failure::Message(String::new()).status(), 1);
    }

    #[test]
    fn non_utf8_source_and_mountpoint() {
        use std::os::unix::ffi::OsStringExt;
        let weird = OsString::from_vec(b"m\xff".to_vec());
        let argv = [
            OsString::from("ufs"),
            weird.clone(),
            weird.clone(),
            "-o".into(),
            "a".into(),
        ];
        let Ok(Invocation::Mount(args)) = classify(argv) else {
            panic!("non-UTF-8 arguments refused");
        };
        assert_eq!(args.mountpoint, PathBuf::from(weird));
        assert_eq!(args.source.as_deref(), Some("m\u{fffd}"));
    }

    #[test]
    fn help_text_is_consistent() {
        cli().debug_assert();
        let help = cli().render_long_help().to_string();
        for needle in ["ufs umount MERGED", "lowerdir=DIR", "Exit status"] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
    }
}
