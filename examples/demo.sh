#!/usr/bin/env bash
# Mounts the example union in examples/union/ and shows the merged view, then unmounts.
#
#   bash examples/demo.sh
#
# Needs no arguments and no preparation beyond a Rust toolchain; run it as root (FUSE mounts by
# unprivileged users also need the fuse3 package's setuid fusermount3). Everything it creates
# lives in a temporary directory that is unmounted and removed on exit, whatever happens.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Honour CARGO_TARGET_DIR like cargo itself does.
ufs=${CARGO_TARGET_DIR:-$repo/target}/release/ufs
example=$repo/examples/union

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

# Option values treat ',' ':' and '\' specially; escape them so that any checkout path works.
escape() {
    local s=${1//\\/\\\\}
    s=${s//,/\\,}
    printf '%s' "${s//:/\\:}"
}

say "building ufs"
# rustup installs cargo in ~/.cargo/bin, which a non-login root shell may not have on its PATH.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
# The containerd snapshotter's API is generated at build time by protoc.
if ! command -v protoc >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y protobuf-compiler
fi
cargo build --release

# The fuse module is built into most kernels; load it if the device is missing.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true

tmp=$(mktemp -d -t ufs-demo.XXXXXX)
merged=$tmp/merged
cleanup() {
    cd /
    if mountpoint -q "$merged" 2>/dev/null; then
        "$ufs" umount "$merged" || umount -l "$merged" || true
    fi
    # Never recurse into a union that is still mounted: deleting through it would leave
    # whiteouts in the upper directory at best.
    if mountpoint -q "$merged" 2>/dev/null; then
        echo "demo: $merged is still mounted; leaving $tmp in place" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
mkdir "$tmp/upper" "$tmp/work" "$merged"

say "mounting lower1 over lower2, with an upper directory for writes"
lowers="$(escape "$example/lower1"):$(escape "$example/lower2")"
options="lowerdir=$lowers,upperdir=$(escape "$tmp/upper"),workdir=$(escape "$tmp/work")"
echo "+ $ufs mount -o $options $merged"
"$ufs" mount -o "$options" "$merged"

# Each command runs in a subshell inside the mount, so that this shell never keeps it busy.
in_merged() { (cd "$merged" && "$@"); }

say "ls -la (the merged root)"
in_merged ls -la
say "find . (deleted.txt is missing: lower1/.wh.deleted.txt hides it)"
in_merged find . | sort
say "cat hello.txt (lower1's copy hides lower2's)"
in_merged cat hello.txt
say "cat shared/* (one directory merged from both lowers)"
in_merged sh -c 'cat shared/*'

say "writing: append to hello.txt, create new.txt"
echo "appended through the mount" >>"$merged/hello.txt"
echo "created through the mount" >"$merged/new.txt"
in_merged cat hello.txt new.txt

say "the upper directory holds the copied-up and the new file; the lowers are untouched"
(cd "$tmp/upper" && find . -type f | sort)
cat "$example/lower1/hello.txt"

say "unmounting"
"$ufs" umount "$merged"
echo "done"
