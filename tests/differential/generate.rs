//! The seeded generator: a layer stack and a sequence of operations over its merged view.
//!
//! Everything is a pure function of the seed (`StdRng::seed_from_u64`), so a seed names one
//! case for good (as long as this file does not change: regression tests therefore spell their
//! stack and operations out instead of naming a seed).
//!
//! The stack: 1 to 4 lowers and sometimes an upper with content, over a small pool of names so
//! that entries collide across layers. Lowers are generated bottom-up, each knowing the merged
//! view below it, so that whiteouts are put only inside directories that merge with a layer
//! below (see `runner::KnownDifference::OrphanWhiteouts`) and opaque directories mostly sit over a
//! directory they hide.
//!
//! The operations are chosen against a [`Model`] of the merged view: a map of paths to kinds
//! that each generated operation updates as the kernel would (roughly: it only has to keep most
//! operations meaningful; the mounts themselves are the ones compared). Most targets exist;
//! some do not, so that error paths are compared too.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{Layer, Meta, Node, Stack};
use crate::dinofs::DinoMode;
use crate::ops::{Op, RenameMode, Time, XattrMode};

/// Names used in the generated layers.
pub const LAYER_NAMES: &[&str] = &["a", "b", "c", "d", "e"];
/// Names for hard links the generator adds to a layer.
pub const LINK_NAMES: &[&str] = &["h1", "h2"];
/// Names operations create. None starts with `.wh.`: see
/// `runner::KnownDifference::WhiteoutNamesRefused`.
pub const NEW_NAMES: &[&str] = &["a", "b", "c", "d", "e", "n", "m"];
/// Every name that can appear anywhere (probed in every directory of a snapshot).
pub const ALL_NAMES: &[&str] = &["a", "b", "c", "d", "e", "n", "m", "h1", "h2"];
/// `user.*` names only: the escaped overlay names (`trusted.overlay.*` through a mount) are
/// compared by `tests/nested_overlays.rs`.
pub const XATTR_NAMES: &[&str] = &["user.k0", "user.k1", "user.k2"];

const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000, 0o6711,
];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750];
const OWNERS: &[(u32, u32)] = &[(0, 0), (0, 0), (1000, 1000), (1234, 5678)];
const LINK_TARGETS: &[&str] = &["a", "../b", "/etc", "../../..", "n/x", "/nonexistent", "."];
/// Times the generator and `utimes` set: all below `EXPLICIT_TIME_LIMIT`.
const PAST: std::ops::Range<i64> = 1_000_000_000..1_600_000_000;

/// The overlay features both mounts of a case get (the same options for both, see
/// `runner::KnownDifference::Defaults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `redirect_dir=on`: directories with lower parts can be renamed (else `EXDEV`).
    pub redirect_dir: bool,
    /// `index=on`: hard links of lower files survive copy-up (else the copy-up of one name
    /// breaks it away from the others).
    pub index: bool,
    /// `metacopy=on` (the kernel needs `redirect_dir=on` for it).
    pub metacopy: bool,
}

impl Config {
    pub const ALL: [Config; 5] = [
        Config::new(false, false, false),
        Config::new(true, false, false),
        Config::new(true, false, true),
        Config::new(true, true, false),
        Config::new(true, true, true),
    ];

    /// The configuration named by `UFS_DIFF_CONFIG` (`off`, `redirect`, `metacopy`, `index`,
    /// `full`), which every case then uses instead of its seed's choice.
    pub fn from_env() -> Option<Config> {
        let v = std::env::var("UFS_DIFF_CONFIG").ok()?;
        let names = ["off", "redirect", "metacopy", "index", "full"];
        match names.iter().position(|n| *n == v.trim()) {
            Some(i) => Some(Config::ALL[i]),
            None => panic!("UFS_DIFF_CONFIG={v:?}: expected one of {names:?}"),
        }
    }

    pub const fn new(redirect_dir: bool, index: bool, metacopy: bool) -> Config {
        Config {
            redirect_dir,
            index,
            metacopy,
        }
    }

    pub fn options(self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "redirect_dir={},index={},metacopy={}",
            on(self.redirect_dir),
            on(self.index),
            on(self.metacopy)
        )
    }
}

/// One case: the seed it came from, the mount features, the layers and the operations.
#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub config: Config,
    pub stack: Stack,
    pub ops: Vec<Op>,
    /// The bottom lower of the ufs mount is served through the passthrough whose `readdir`
    /// lies about `d_ino` this way (`crate::dinofs`), or is the directory itself.
    pub dino: Option<DinoMode>,
    /// ufs mounts with FUSE passthrough as by default (`true`), or `passthrough=off`.
    pub passthrough: bool,
}

pub fn gen_case(seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = *pick(&mut rng, &Config::ALL);
    let config = Config::from_env().unwrap_or(config);
    let stack = gen_stack(&mut rng);
    let mut model = Model::of_stack(&stack, config);
    let ops = gen_ops(&mut rng, &mut model, seed);
    Case {
        seed,
        config,
        stack,
        ops,
        dino: dino_of(seed, config),
        passthrough: passthrough_of(seed),
    }
}

/// Half of the cases mount ufs with `passthrough=off` (where the kernel and privileges allow
/// passthrough, the other half use it for upper files): the same operations must give the same
/// outcomes either way. Drawn from a stream of its own, like [`dino_of`];
/// `UFS_DIFF_PASSTHROUGH=on|off` overrides the draw (replay commands carry it).
pub fn passthrough_of(seed: u64) -> bool {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9a55_7407);
    let drawn = rng.random_bool(0.5);
    match std::env::var("UFS_DIFF_PASSTHROUGH")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("") => drawn,
        Some("on") => true,
        Some("off") => false,
        Some(v) => panic!("UFS_DIFF_PASSTHROUGH={v:?}: expected on or off"),
    }
}

/// One case in [`DINO_ONE_IN`] without `index=on` gets its bottom lower (the one with the most
/// content) through the lying passthrough, half of them with one `d_ino` for every entry, half
/// with shifted ones. Drawn from a stream of its own, so that a seed's layers and operations
/// are the same with or without it. `UFS_DIFF_DINO=off|same|shifted|on` (`on`: always, the seed
/// choosing the mode) overrides the draw (replay commands carry it).
///
/// Only ufs's side gets the passthrough (`runner::Bench::new` says why not the kernel's). Never
/// with `index=on`: ufs's records then name its lowers by file handle, so the cross-mount
/// checks give the kernel ufs's own lowers, the passthrough included, and over a FUSE lower
/// (a null uuid) the kernel mounts `index=on` as `index=off` ("null uuid detected in lower fs
/// ..., falling back to xino=off,index=off,nfs_export=off").
pub fn dino_of(seed: u64, config: Config) -> Option<DinoMode> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd1_0d1d_0bad);
    let on = rng.random_range(0..DINO_ONE_IN) == 0;
    let mode = if rng.random_bool(0.5) {
        DinoMode::Same
    } else {
        DinoMode::Shifted
    };
    let chosen = match std::env::var("UFS_DIFF_DINO")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("") => on.then_some(mode),
        Some("off") => None,
        Some("on") => Some(mode),
        Some("same") => Some(DinoMode::Same),
        Some("shifted") => Some(DinoMode::Shifted),
        Some(v) => panic!("UFS_DIFF_DINO={v:?}: expected off, on, same or shifted"),
    };
    chosen.filter(|_| !config.index)
}

/// See [`dino_of`].
pub const DINO_ONE_IN: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// The merged view of some layers, as far as the generator needs it: which names are
/// directories (with their merged children) and which are something else.
#[derive(Clone, Debug)]
enum View {
    Dir(BTreeMap<String, View>),
    Other,
}

/// `layer` over `below` (lookup rules of SEMANTICS.md).
fn merge(
    layer: &BTreeMap<String, Node>,
    below: Option<&BTreeMap<String, View>>,
) -> BTreeMap<String, View> {
    let mut out = below.cloned().unwrap_or_default();
    for (name, node) in layer {
        match node {
            Node::Whiteout => {
                out.remove(name);
            }
            Node::Dir {
                opaque, children, ..
            } => {
                let under = match (opaque, out.get(name)) {
                    (false, Some(View::Dir(m))) => Some(m.clone()),
                    _ => None,
                };
                out.insert(name.clone(), View::Dir(merge(children, under.as_ref())));
            }
            _ => {
                out.insert(name.clone(), View::Other);
            }
        }
    }
    out
}

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> &'a T {
    &v[rng.random_range(0..v.len())]
}

/// An index into `weights`, chosen with those weights.
fn weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let mut roll = rng.random_range(0..weights.iter().sum::<u32>());
    for (i, w) in weights.iter().enumerate() {
        if roll < *w {
            return i;
        }
        roll -= w;
    }
    unreachable!("the roll is below the sum of the weights")
}

fn past(rng: &mut StdRng) -> (i64, i64) {
    (rng.random_range(PAST), rng.random_range(0..1_000_000_000))
}

fn gen_meta(rng: &mut StdRng, dir: bool, xattrs: bool) -> Meta {
    let (uid, gid) = *pick(rng, OWNERS);
    let mut x = Vec::new();
    if xattrs && rng.random_bool(0.3) {
        for name in XATTR_NAMES {
            if rng.random_bool(0.5) {
                let len = rng.random_range(0..8);
                x.push((
                    name.to_string(),
                    (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect(),
                ));
            }
        }
    }
    Meta {
        mode: *pick(rng, if dir { DIR_MODES } else { FILE_MODES }),
        uid,
        gid,
        mtime: past(rng),
        xattrs: x,
    }
}

fn gen_content(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..30) {
        0 => rng.random_range(4096..70_000),
        1..=3 => 0,
        _ => rng.random_range(1..300),
    };
    (0..len).map(|_| rng.random()).collect()
}

/// Entries of one directory of a layer. `below` is the merged view this directory merges with
/// (`None` when it merges with nothing: the bottom layer, an opaque directory, or a directory
/// over a non-directory); whiteouts are only put where it is `Some`.
fn gen_entries(
    rng: &mut StdRng,
    below: Option<&BTreeMap<String, View>>,
    depth: usize,
    max_depth: usize,
    density: f64,
) -> BTreeMap<String, Node> {
    let mut m = BTreeMap::new();
    for name in LAYER_NAMES {
        if !rng.random_bool(density) {
            continue;
        }
        let under = below.and_then(|b| b.get(*name));
        let dir_w = match (depth < max_depth, under) {
            (false, _) => 0,
            (true, Some(View::Dir(_))) => 60,
            (true, _) => 25,
        };
        let wh_w = match (below, under) {
            (None, _) => 0,
            (Some(_), Some(_)) => 25,
            (Some(_), None) => 4,
        };
        let node = match weighted(rng, &[dir_w, wh_w, 30, 8, 4]) {
            0 => {
                let opaque = matches!(under, Some(View::Dir(_))) && rng.random_bool(0.2);
                let child_below = match (opaque, under) {
                    (false, Some(View::Dir(c))) => Some(c),
                    _ => None,
                };
                Node::Dir {
                    meta: gen_meta(rng, true, true),
                    opaque,
                    children: gen_entries(rng, child_below, depth + 1, max_depth, density),
                }
            }
            1 => Node::Whiteout,
            2 => Node::File {
                meta: gen_meta(rng, false, true),
                content: gen_content(rng),
            },
            3 => {
                let (uid, gid) = *pick(rng, OWNERS);
                Node::Symlink {
                    target: pick(rng, LINK_TARGETS).to_string(),
                    uid,
                    gid,
                    mtime: past(rng),
                }
            }
            // user.* xattrs are not allowed on fifos.
            _ => Node::Fifo {
                meta: gen_meta(rng, false, false),
            },
        };
        m.insert(name.to_string(), node);
    }
    m
}

fn collect(
    entries: &BTreeMap<String, Node>,
    rel: &str,
    files: &mut Vec<String>,
    dirs: &mut Vec<String>,
) {
    for (name, node) in entries {
        let r = join(rel, name);
        match node {
            Node::File { .. } => files.push(r),
            Node::Dir { children, .. } => {
                dirs.push(r.clone());
                collect(children, &r, files, dirs);
            }
            _ => {}
        }
    }
}

fn dir_mut<'a>(
    entries: &'a mut BTreeMap<String, Node>,
    path: &str,
) -> &'a mut BTreeMap<String, Node> {
    let mut cur = entries;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        match cur.get_mut(part) {
            Some(Node::Dir { children, .. }) => cur = children,
            _ => unreachable!("{path} is a directory of the layer"),
        }
    }
    cur
}

fn gen_layer(
    rng: &mut StdRng,
    below: Option<&BTreeMap<String, View>>,
    max_depth: usize,
    density: f64,
) -> Layer {
    let mut layer = Layer {
        meta: Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: past(rng),
            xattrs: Vec::new(),
        },
        entries: gen_entries(rng, below, 0, max_depth, density),
    };
    let (mut files, mut dirs) = (Vec::new(), vec![String::new()]);
    collect(&layer.entries, "", &mut files, &mut dirs);
    if !files.is_empty() && rng.random_bool(0.4) {
        for _ in 0..rng.random_range(1..=2) {
            let target = pick(rng, &files).clone();
            let dir = pick(rng, &dirs).clone();
            let name = if rng.random_bool(0.6) {
                *pick(rng, LINK_NAMES)
            } else {
                *pick(rng, LAYER_NAMES)
            };
            let entries = dir_mut(&mut layer.entries, &dir);
            if !entries.contains_key(name) {
                entries.insert(name.to_string(), Node::HardLink { target });
            }
        }
    }
    layer
}

fn gen_stack(rng: &mut StdRng) -> Stack {
    let n = rng.random_range(1..=4);
    let mut view: Option<BTreeMap<String, View>> = None;
    let mut bottom_up = Vec::new();
    for _ in 0..n {
        let layer = gen_layer(rng, view.as_ref(), 2, 0.55);
        view = Some(merge(&layer.entries, view.as_ref()));
        bottom_up.push(layer);
    }
    bottom_up.reverse();
    let upper = rng
        .random_bool(0.3)
        .then(|| gen_layer(rng, view.as_ref(), 2, 0.35));
    Stack {
        lowers: bottom_up,
        upper,
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// The model of the merged view
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
}

#[derive(Clone, Copy, Debug)]
pub struct MNode {
    pub kind: Kind,
    /// Directory: some part of it is in a lower layer (renaming it answers `EXDEV`).
    /// Non-directory: it lives in a lower layer (not copied up yet).
    pub lower: bool,
}

/// Paths (relative, `""` is the root and not stored) to what the merged view shows there.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub entries: BTreeMap<String, MNode>,
    /// Directories with lower parts can be renamed.
    pub redirect_dir: bool,
}

type Part<'a> = (&'a BTreeMap<String, Node>, bool);

fn model_dir(out: &mut BTreeMap<String, MNode>, rel: &str, parts: &[Part<'_>]) {
    let names: BTreeSet<&String> = parts.iter().flat_map(|p| p.0.keys()).collect();
    for name in names {
        let path = join(rel, name);
        let mut top: Option<MNode> = None;
        let mut sub: Vec<Part<'_>> = Vec::new();
        for (entries, lower) in parts {
            let Some(n) = entries.get(name.as_str()) else {
                continue;
            };
            match (n, &mut top) {
                (Node::Whiteout, _) => break,
                (
                    Node::Dir {
                        opaque, children, ..
                    },
                    None,
                ) => {
                    top = Some(MNode {
                        kind: Kind::Dir,
                        lower: *lower,
                    });
                    sub.push((children, *lower));
                    if *opaque {
                        break;
                    }
                }
                (
                    Node::Dir {
                        opaque, children, ..
                    },
                    Some(t),
                ) if t.kind == Kind::Dir => {
                    t.lower |= *lower;
                    sub.push((children, *lower));
                    if *opaque {
                        break;
                    }
                }
                (_, Some(_)) => break,
                (other, None) => {
                    let kind = match other {
                        Node::File { .. } | Node::HardLink { .. } => Kind::File,
                        Node::Symlink { .. } => Kind::Symlink,
                        _ => Kind::Fifo,
                    };
                    top = Some(MNode {
                        kind,
                        lower: *lower,
                    });
                    break;
                }
            }
        }
        if let Some(t) = top {
            out.insert(path.clone(), t);
            if t.kind == Kind::Dir {
                model_dir(out, &path, &sub);
            }
        }
    }
}

impl Model {
    pub fn of_stack(stack: &Stack, config: Config) -> Model {
        let mut layers: Vec<(&Layer, bool)> = Vec::new();
        if let Some(u) = &stack.upper {
            layers.push((u, false));
        }
        layers.extend(stack.lowers.iter().map(|l| (l, true)));
        let parts: Vec<Part<'_>> = layers
            .iter()
            .map(|(l, lower)| (&l.entries, *lower))
            .collect();
        let mut entries = BTreeMap::new();
        model_dir(&mut entries, "", &parts);
        Model {
            entries,
            redirect_dir: config.redirect_dir,
        }
    }

    fn get(&self, p: &str) -> Option<MNode> {
        self.entries.get(p).copied()
    }

    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || self.get(p).is_some_and(|n| n.kind == Kind::Dir)
    }

    fn children(&self, p: &str) -> Vec<String> {
        let prefix = format!("{p}/");
        self.entries
            .keys()
            .filter(|k| {
                if p.is_empty() {
                    !k.contains('/')
                } else {
                    k.starts_with(&prefix) && !k[prefix.len()..].contains('/')
                }
            })
            .cloned()
            .collect()
    }

    fn subtree(&self, p: &str) -> Vec<String> {
        let prefix = format!("{p}/");
        self.entries
            .keys()
            .filter(|k| *k == p || k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn parent(p: &str) -> &str {
        p.rsplit_once('/').map_or("", |(d, _)| d)
    }

    /// Moves the subtree at `from` to `to` (no checks).
    fn move_tree(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, MNode)> = self
            .subtree(from)
            .into_iter()
            .map(|k| {
                let n = self.entries.remove(&k).expect("listed");
                (format!("{to}{}", &k[from.len()..]), n)
            })
            .collect();
        for (k, mut n) in moved {
            n.lower = false;
            self.entries.insert(k, n);
        }
    }

    fn remove_tree(&mut self, p: &str) {
        for k in self.subtree(p) {
            self.entries.remove(&k);
        }
    }

    fn copied_up(&mut self, p: &str) {
        if let Some(n) = self.entries.get_mut(p)
            && n.kind != Kind::Dir
        {
            n.lower = false;
        }
    }

    fn insert_new(&mut self, p: &str, kind: Kind) {
        if self.is_dir(Self::parent(p)) && self.get(p).is_none() {
            self.entries
                .insert(p.to_string(), MNode { kind, lower: false });
        }
    }

    /// Updates the model with what `op` does when it succeeds (and leaves it when the model can
    /// tell that it fails).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path, .. } => {
                if self.get(path).is_none() {
                    self.insert_new(path, Kind::File)
                } else {
                    self.copied_up(path)
                }
            }
            Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimes { path, .. }
            | Op::SetXattr { path, .. }
            | Op::SetAcl { path, .. }
            | Op::RemoveXattr { path, .. } => self.copied_up(path),
            Op::Mkdir { path, .. } => self.insert_new(path, Kind::Dir),
            Op::Symlink { path, .. } => self.insert_new(path, Kind::Symlink),
            Op::Mkfifo { path, .. } => self.insert_new(path, Kind::Fifo),
            Op::Rmdir { path } => {
                if self.get(path).is_some_and(|n| n.kind == Kind::Dir)
                    && self.children(path).is_empty()
                {
                    self.entries.remove(path);
                }
            }
            Op::Unlink { path } => {
                if self.get(path).is_some_and(|n| n.kind != Kind::Dir) {
                    self.entries.remove(path);
                }
            }
            Op::Link { from, to } => {
                if let Some(n) = self.get(from)
                    && n.kind != Kind::Dir
                    && self.get(to).is_none()
                    && self.is_dir(Self::parent(to))
                {
                    self.copied_up(from);
                    self.insert_new(to, n.kind);
                }
            }
            Op::Rename { from, to, mode } => self.rename(from, to, *mode),
            Op::Read { .. }
            | Op::GetXattrs { .. }
            | Op::GetAcls { .. }
            | Op::Readdir { .. }
            | Op::Stat { .. }
            | Op::Remount
            | Op::RemountReadOnly
            | Op::Forget { .. } => {}
            // Everything the merged view shows now lives in a lower layer.
            Op::Rotate => {
                for n in self.entries.values_mut() {
                    n.lower = true;
                }
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str, mode: RenameMode) {
        let Some(src) = self.get(from) else { return };
        if !self.is_dir(Self::parent(to)) || from == to {
            return;
        }
        if to.starts_with(&format!("{from}/")) || from.starts_with(&format!("{to}/")) {
            return;
        }
        let movable = |n: MNode| n.kind != Kind::Dir || !n.lower || self.redirect_dir;
        if !movable(src) {
            return;
        }
        let dst = self.get(to);
        match mode {
            RenameMode::Exchange => {
                let Some(d) = dst else { return };
                if !movable(d) {
                    return;
                }
                let tmp = "\u{0}swap";
                self.move_tree(from, tmp);
                self.move_tree(to, from);
                self.move_tree(tmp, to);
            }
            RenameMode::NoReplace | RenameMode::Plain => {
                if let Some(d) = dst {
                    if mode == RenameMode::NoReplace {
                        return;
                    }
                    match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                        (true, false) | (false, true) => return,
                        (true, true) if !self.children(to).is_empty() => return,
                        _ => {}
                    }
                    self.remove_tree(to);
                }
                self.move_tree(from, to);
            }
        }
    }

    // --- choosing targets ---

    fn pick_where(&self, rng: &mut StdRng, f: impl Fn(&MNode) -> bool) -> Option<String> {
        let c: Vec<&String> = self
            .entries
            .iter()
            .filter(|(_, n)| f(n))
            .map(|(k, _)| k)
            .collect();
        (!c.is_empty()).then(|| c[rng.random_range(0..c.len())].clone())
    }

    fn dirs(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(
            self.entries
                .iter()
                .filter(|(_, n)| n.kind == Kind::Dir)
                .map(|(k, _)| k.clone()),
        );
        v
    }

    /// A path that does not exist in an existing directory (mostly), or one under a missing
    /// directory or a non-directory (sometimes).
    fn fresh(&self, rng: &mut StdRng) -> String {
        if rng.random_bool(0.08) {
            let base = self
                .pick_where(rng, |n| n.kind != Kind::Dir)
                .unwrap_or_else(|| "zz".to_string());
            return join(&base, pick::<&str>(rng, NEW_NAMES));
        }
        let dirs = self.dirs();
        let dir = pick(rng, &dirs).clone();
        for _ in 0..4 {
            let p = join(&dir, pick::<&str>(rng, NEW_NAMES));
            if self.get(&p).is_none() {
                return p;
            }
        }
        join(&dir, pick::<&str>(rng, NEW_NAMES))
    }

    /// An existing path accepted by `f` most of the time, else anything.
    fn target(&self, rng: &mut StdRng, f: impl Fn(&MNode) -> bool) -> String {
        if rng.random_bool(0.88)
            && let Some(p) = self.pick_where(rng, f)
        {
            return p;
        }
        if rng.random_bool(0.5)
            && let Some(p) = self.pick_where(rng, |_| true)
        {
            return p;
        }
        self.fresh(rng)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// Mixed into the seed for the choices of the layer-lifecycle operations, so that they are
/// inserted into the sequence the seed made before they existed (its other operations stay the
/// same up to the first rotation, which changes the model).
const LIFECYCLE_SALT: u64 = 0x11fe_c7c1_e000_0009;

/// Where the layer-lifecycle operations go: `(position, op)` pairs, sorted, each inserted before
/// the generated operation at `position` (`n`: after the last). About one sequence in four gets
/// a read-only remount, about three in ten a rotation (some two).
fn lifecycle_ops(seed: u64, n: usize) -> Vec<(usize, Op)> {
    let mut rng = StdRng::seed_from_u64(seed ^ LIFECYCLE_SALT);
    let mut v = Vec::new();
    let rotations = match rng.random_range(0..20) {
        0..=13 => 0,
        14..=18 => 1,
        _ => 2,
    };
    for _ in 0..rotations {
        v.push((rng.random_range(4..n - 4), Op::Rotate));
    }
    if rng.random_ratio(1, 4) {
        v.push((rng.random_range(4..=n), Op::RemountReadOnly));
    }
    v.sort_by_key(|(pos, _)| *pos);
    v
}

fn gen_ops(rng: &mut StdRng, model: &mut Model, seed: u64) -> Vec<Op> {
    let n = rng.random_range(40..=60);
    // About one sequence in ten unmounts and mounts again in the middle.
    let remount_at = rng.random_ratio(1, 10).then(|| rng.random_range(8..n - 4));
    let mut lifecycle = lifecycle_ops(seed, n).into_iter().peekable();
    let mut ops = Vec::with_capacity(n + 3);
    for i in 0..=n {
        while let Some((_, op)) = lifecycle.next_if(|(pos, _)| *pos == i) {
            model.apply(&op);
            ops.push(op);
        }
        if i == n {
            break;
        }
        let op = if remount_at == Some(i) {
            Op::Remount
        } else {
            gen_op(rng, model)
        };
        model.apply(&op);
        ops.push(op);
    }
    ops
}

fn gen_time(rng: &mut StdRng) -> Time {
    match rng.random_range(0..10) {
        0 => Time::Omit,
        1 => Time::Now,
        _ => {
            let (s, ns) = past(rng);
            Time::At(s, ns)
        }
    }
}

/// A valid ACL in the kernel's order (owner, named users by id, owning group, named groups by
/// id, mask, others), with a mask exactly when it has named entries, or only the three base
/// entries (which the filesystem folds into the mode).
fn gen_acl(rng: &mut StdRng) -> Vec<(u16, u16, u32)> {
    const IDS: &[u32] = &[1000, 1234, 65534];
    let mut perm = || rng.random_range(0..8u16);
    let (u, g, o) = (perm(), perm(), perm());
    let named = |rng: &mut StdRng, tag: u16| -> Vec<(u16, u16, u32)> {
        let mut v = Vec::new();
        for &id in IDS {
            if rng.random_bool(0.3) {
                v.push((tag, rng.random_range(0..8u16), id));
            }
        }
        v
    };
    let users = named(rng, 0x02);
    let groups = named(rng, 0x08);
    let mut acl = vec![(0x01, u, u32::MAX)];
    let has_named = !users.is_empty() || !groups.is_empty();
    acl.extend(users);
    acl.push((0x04, g, u32::MAX));
    acl.extend(groups);
    if has_named {
        acl.push((0x10, rng.random_range(0..8u16), u32::MAX));
    }
    acl.push((0x20, o, u32::MAX));
    acl
}

fn gen_op(rng: &mut StdRng, m: &Model) -> Op {
    const WEIGHTS: &[(&str, u32)] = &[
        ("create", 8),
        ("write", 10),
        ("append", 5),
        ("truncate", 5),
        ("read", 6),
        ("chmod", 4),
        ("chown", 3),
        ("utimes", 4),
        ("mkdir", 5),
        ("rmdir", 4),
        ("unlink", 6),
        ("rename", 12),
        ("link", 4),
        ("symlink", 3),
        ("mkfifo", 2),
        ("setxattr", 4),
        ("removexattr", 2),
        ("getxattrs", 2),
        ("setfacl", 3),
        ("getfacl", 2),
        ("readdir", 5),
        ("stat", 6),
        ("forget", 2),
    ];
    let weights: Vec<u32> = WEIGHTS.iter().map(|w| w.1).collect();
    let kind = WEIGHTS[weighted(rng, &weights)].0;
    let file = |n: &MNode| n.kind == Kind::File;
    match kind {
        "create" => Op::Create {
            path: if rng.random_bool(0.85) {
                m.fresh(rng)
            } else {
                m.target(rng, |_| true)
            },
            mode: *pick(rng, &[0o644, 0o600, 0o755, 0o4755, 0o2644, 0o000]),
            excl: rng.random_bool(0.5),
        },
        "write" => {
            let offset = match rng.random_range(0..10) {
                0..=3 => 0,
                4..=7 => rng.random_range(0..400),
                8 => rng.random_range(4000..9000),
                _ => rng.random_range(60_000..200_000),
            };
            Op::Write {
                path: m.target(rng, file),
                offset,
                len: rng.random_range(0..600),
                fill: rng.random(),
            }
        }
        "append" => Op::Append {
            path: m.target(rng, file),
            len: rng.random_range(1..300),
            fill: rng.random(),
        },
        "truncate" => Op::Truncate {
            path: m.target(rng, file),
            len: *pick(rng, &[0, 0, 1, 17, 100, 4096, 5000, 70_000]),
            via_fd: rng.random_bool(0.5),
        },
        "read" => Op::Read {
            path: m.target(rng, |n| n.kind == Kind::File),
            offset: *pick(rng, &[0, 0, 0, 10, 100, 4000, 65_536]),
            len: *pick(rng, &[1, 64, 300, 5000, 200_000]),
        },
        "chmod" => Op::Chmod {
            path: m.target(rng, |_| true),
            mode: *pick(
                rng,
                &[
                    0o644, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o000, 0o444,
                ],
            ),
        },
        "chown" => {
            let ids = [Some(0), Some(1000), Some(1234), None];
            Op::Chown {
                path: m.target(rng, |_| true),
                uid: *pick(rng, &ids),
                gid: *pick(rng, &ids),
            }
        }
        "utimes" => Op::Utimes {
            path: m.target(rng, |_| true),
            atime: gen_time(rng),
            mtime: gen_time(rng),
        },
        "mkdir" => Op::Mkdir {
            path: if rng.random_bool(0.85) {
                m.fresh(rng)
            } else {
                m.target(rng, |_| true)
            },
            mode: *pick(rng, &[0o755, 0o700, 0o2775, 0o1777, 0o000]),
        },
        "rmdir" => {
            let empty = |p: &str| m.children(p).is_empty();
            let path = if rng.random_bool(0.5) {
                let c: Vec<String> = m
                    .entries
                    .iter()
                    .filter(|(k, n)| n.kind == Kind::Dir && empty(k))
                    .map(|(k, _)| k.clone())
                    .collect();
                if c.is_empty() {
                    m.target(rng, |n| n.kind == Kind::Dir)
                } else {
                    pick(rng, &c).clone()
                }
            } else {
                m.target(rng, |n| n.kind == Kind::Dir)
            };
            Op::Rmdir { path }
        }
        "unlink" => Op::Unlink {
            path: m.target(rng, |n| n.kind != Kind::Dir),
        },
        "rename" => {
            let from = m.target(rng, |_| true);
            let src_kind = m.get(&from).map(|n| n.kind);
            let mode = match rng.random_range(0..10) {
                0 | 1 => RenameMode::NoReplace,
                2 | 3 => RenameMode::Exchange,
                _ => RenameMode::Plain,
            };
            let to = match rng.random_range(0..10) {
                0..=3 if mode != RenameMode::Exchange => m.fresh(rng),
                0..=6 => {
                    let same =
                        |n: &MNode| Some(n.kind == Kind::Dir) == src_kind.map(|k| k == Kind::Dir);
                    m.target(rng, same)
                }
                _ => m.target(rng, |_| true),
            };
            Op::Rename { from, to, mode }
        }
        "link" => Op::Link {
            from: m.target(rng, |n| n.kind != Kind::Dir),
            to: if rng.random_bool(0.9) {
                m.fresh(rng)
            } else {
                m.target(rng, |_| true)
            },
        },
        "symlink" => Op::Symlink {
            target: pick(rng, LINK_TARGETS).to_string(),
            path: if rng.random_bool(0.9) {
                m.fresh(rng)
            } else {
                m.target(rng, |_| true)
            },
        },
        "mkfifo" => Op::Mkfifo {
            path: m.fresh(rng),
            mode: *pick(rng, &[0o644, 0o600, 0o666]),
        },
        "setxattr" => {
            let len = rng.random_range(0..10);
            Op::SetXattr {
                path: m.target(rng, |n| matches!(n.kind, Kind::File | Kind::Dir)),
                name: pick(rng, XATTR_NAMES).to_string(),
                value: (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect(),
                mode: *pick(
                    rng,
                    &[
                        XattrMode::Any,
                        XattrMode::Any,
                        XattrMode::Create,
                        XattrMode::Replace,
                    ],
                ),
            }
        }
        "removexattr" => Op::RemoveXattr {
            path: m.target(rng, |n| matches!(n.kind, Kind::File | Kind::Dir)),
            name: pick(rng, XATTR_NAMES).to_string(),
        },
        "setfacl" => {
            let default = rng.random_bool(0.4);
            Op::SetAcl {
                path: m.target(rng, |n| {
                    if default {
                        n.kind == Kind::Dir
                    } else {
                        matches!(n.kind, Kind::File | Kind::Dir)
                    }
                }),
                default,
                entries: if rng.random_bool(0.15) {
                    Vec::new()
                } else {
                    gen_acl(rng)
                },
            }
        }
        "getfacl" => Op::GetAcls {
            path: m.target(rng, |_| true),
        },
        "forget" => Op::Forget {
            pin: m.target(rng, |n| n.kind == Kind::Dir),
        },
        "getxattrs" => Op::GetXattrs {
            path: m.target(rng, |_| true),
        },
        "readdir" => Op::Readdir {
            path: if rng.random_bool(0.15) {
                String::new()
            } else {
                m.target(rng, |n| n.kind == Kind::Dir)
            },
        },
        "stat" => Op::Stat {
            path: m.target(rng, |_| true),
        },
        other => unreachable!("unknown kind {other}"),
    }
}
