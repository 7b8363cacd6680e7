#!/bin/bash
# Run amir73il/unionmount-testsuite against ufs (or, for comparison, the kernel overlay or
# fuse-overlayfs), one suite test per invocation, and print pass/fail counts per mode.
#
# Usage: run-suite.sh [options] SUITE_DIR [MODE...] [-- TEST...]
#
#   SUITE_DIR   a checked-out unionmount-testsuite (this script fetches nothing)
#   MODE        default | verify | ov3-verify | samefs-ov3-verify | xdev | all (the default)
#   TEST        suite test names (default: the suite's own list for the mode)
#
# Options:
#   --fs ufs|kernel|fuse-overlayfs   what to test (default ufs)
#   --ufs BIN      the ufs binary (default: $CARGO_TARGET_DIR/release/ufs, else target/release/ufs)
#   --logs DIR     where to keep one log per test (default: a new directory under /tmp)
#   --mnt DIR      the union mount point (default /tmp/unionmount-mnt; the suite's own default,
#                  /mnt, is avoided because other mounts commonly live below it)
#   --mntopts OPTS extra mount options for every mode (default for FUSE: allow_other, since
#                  the suite runs some steps as another user; pass '' to mount without it)
#
# Must run as root. See README.md in this directory.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

fs=ufs
ufs_bin=
logs=
mnt=/tmp/unionmount-mnt
extra_opts=default
while [ $# -gt 0 ]; do
    case "$1" in
        --fs) fs=$2; shift 2 ;;
        --ufs) ufs_bin=$2; shift 2 ;;
        --logs) logs=$2; shift 2 ;;
        --mnt) mnt=$2; shift 2 ;;
        --mntopts) extra_opts=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "usage: $0 [options] SUITE_DIR [MODE...] [-- TEST...]" >&2; exit 2; }
suite=$(cd "$1" && pwd) || exit 2
shift
[ -x "$suite/run" ] && [ -f "$suite/mount_union.py" ] || {
    echo "$suite does not look like unionmount-testsuite" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 2; }

modes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do modes+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
only_tests=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(all)
if [ "${modes[0]}" = all ]; then
    modes=(default verify ov3-verify samefs-ov3-verify xdev)
fi

case "$fs" in
    ufs)
        if [ -z "$ufs_bin" ]; then
            ufs_bin=${CARGO_TARGET_DIR:-$repo/target}/release/ufs
        fi
        ufs_bin=$(readlink -f "$ufs_bin")
        [ -x "$ufs_bin" ] || { echo "no ufs binary at $ufs_bin (cargo build --release)" >&2; exit 2; }
        fuse_arg=--fuse=ufs ;;
    fuse-overlayfs)
        command -v fuse-overlayfs >/dev/null || { echo "fuse-overlayfs not installed" >&2; exit 2; }
        fuse_arg=--fuse=fuse-overlayfs ;;
    kernel) fuse_arg= ;;
    *) echo "--fs must be ufs, kernel or fuse-overlayfs" >&2; exit 2 ;;
esac
if [ "$extra_opts" = default ]; then
    # A FUSE mount admits only the user who mounted it unless allow_other is given; the
    # kernel overlay admits everyone, and the suite's impermissible test acts as uid 1.
    if [ "$fs" = kernel ]; then extra_opts=; else extra_opts=allow_other; fi
fi

[ -n "$logs" ] || logs=$(mktemp -d /tmp/unionmount-logs.XXXXXX)
mkdir -p "$logs"

# ---------------------------------------------------------------------------------------------
# Set-up and clean-up
# ---------------------------------------------------------------------------------------------

# mount(8) runs FUSE helpers with a fixed PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:...):
# for `mount -t fuse.ufs`, it falls back to `mount.fuse3 -t ufs`, which runs `ufs SOURCE
# MERGED -o OPTS` from that PATH. So ufs must be reachable there; link it for the run.
link=/usr/local/bin/ufs
made_link=
made_dirs=()

export UNIONMOUNT_MNTPOINT=$mnt

# Every mount point the suite uses, its layers first.
suite_mounts() {
    awk -v m="$mnt" '{
        p = $2
        if (p == m || p == "/lower" || p == "/upper" || p == "/base" ||
            index(p, "/upper/") == 1 || index(p, "/base/") == 1 || index(p, m "/") == 1)
            print p
    }' /proc/self/mounts | sort -r
}

unmount_all() {
    local p
    (cd "$suite" && ./run -c >/dev/null 2>&1)
    for _ in 1 2 3; do
        for p in $(suite_mounts); do
            umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null
        done
        [ -z "$(suite_mounts)" ] && return 0
        sleep 0.2
    done
    echo "warning: still mounted: $(suite_mounts | tr '\n' ' ')" >&2
}

cleanup() {
    unmount_all
    local d
    for d in "${made_dirs[@]}"; do rmdir "$d" 2>/dev/null; done
    [ -n "$made_link" ] && rm -f "$link"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$fs" = ufs ]; then
    if [ -L "$link" ] && [ "$(readlink -f "$link")" = "$ufs_bin" ]; then
        :
    elif [ -e "$link" ] || [ -L "$link" ]; then
        echo "$link exists and is not a link to $ufs_bin; not touching it" >&2; exit 2
    else
        ln -s "$ufs_bin" "$link" && made_link=1
    fi
fi

for d in /lower /upper /base "$mnt"; do
    if [ ! -d "$d" ]; then mkdir -p "$d" && made_dirs+=("$d"); fi
done
unmount_all

# ---------------------------------------------------------------------------------------------
# Modes and tests
# ---------------------------------------------------------------------------------------------

# The tests `run` runs for a mode: its main list, plus rename-exdev when directory renames
# are off (--xdev) or the four directory-rename tests otherwise.
suite_tests() {
    local xdev=$1
    sed -n '/^tests = \[/,/^    \]/p' "$suite/run" | grep -o '"[^"]*"' | tr -d '"'
    if [ "$xdev" = 1 ]; then
        echo rename-exdev
    else
        echo rename-dir rename-empty-dir rename-pop-dir rename-move-dir | tr ' ' '\n'
    fi
}

total_pass=0
total_fail=0
summary=()
for mode in "${modes[@]}"; do
    mntopts=$extra_opts
    xdev=0
    case "$mode" in
        default) args=(--ov $fuse_arg) ;;
        verify) args=(--ov $fuse_arg --verify) ;;
        ov3-verify) args=(--ov=3 $fuse_arg --verify) ;;
        samefs-ov3-verify) args=(--ov=3 $fuse_arg --samefs --verify) ;;
        xdev)
            args=(--ov $fuse_arg --xdev)
            xdev=1
            # fuse-overlayfs has no redirect_dir option (it never redirects).
            [ "$fs" = fuse-overlayfs ] || mntopts=${mntopts:+$mntopts,}redirect_dir=off ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    if [ ${#only_tests[@]} -gt 0 ]; then
        tests=("${only_tests[@]}")
    else
        mapfile -t tests < <(suite_tests $xdev)
    fi
    pass=0
    failed=()
    for t in "${tests[@]}"; do
        log="$logs/$fs.$mode.$t.log"
        (
            cd "$suite" || exit 2
            if [ -n "$mntopts" ]; then
                export UNIONMOUNT_MNTOPTIONS=$mntopts
            else
                unset UNIONMOUNT_MNTOPTIONS
            fi
            echo "+ UNIONMOUNT_MNTPOINT=$mnt${mntopts:+ UNIONMOUNT_MNTOPTIONS=$mntopts} ./run ${args[*]} $t"
            timeout 600 ./run "${args[@]}" "$t"
        ) >"$log" 2>&1
        rc=$?
        # The suite leaves the last union mounted "for further playing"; take it down.
        unmount_all
        if [ $rc -eq 0 ]; then
            pass=$((pass + 1))
        else
            last=$(grep -av '^$' "$log" | tail -1 | cat -v)
            # The test itself passed, but unmounting a layer right after the union failed
            # because the FUSE daemon had not exited yet (see README.md).
            case "$last" in
                *"Command failed: umount /lower"|*"Command failed: umount /base")
                    failed+=("$t(umount-busy)") ;;
                *) failed+=("$t") ;;
            esac
            echo "FAIL [$fs $mode] $t (rc $rc): $last"
        fi
    done
    n=${#tests[@]}
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + n - pass))
    summary+=("$fs $mode: $pass/$n passed${failed:+; failed: ${failed[*]}}")
done

echo
echo "logs: $logs"
for s in "${summary[@]}"; do echo "$s"; done
[ $total_fail -eq 0 ]
