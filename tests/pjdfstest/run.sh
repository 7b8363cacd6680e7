#!/bin/bash
# Run a fetched and built pjdfstest against ufs (or the kernel overlay, for
# comparison) over a lower with some content and an empty upper and workdir.
# Usage: run.sh PJDFSTEST_DIR [ufs|kernel] [prove args...]
#   UFS_BIN   the ufs binary (default: target/release/ufs of this checkout)
#   UFS_OPTS  extra mount options for ufs (default: none)
#   BASE      scratch directory (default: a new one under /tmp); must be on ext4
# Every mount made here is unmounted on exit, also on failure.
set -u
pjd=${1:?usage: run.sh PJDFSTEST_DIR [ufs|kernel] [prove args...]}
kind=${2:-ufs}
shift; [ $# -gt 0 ] && shift
pjd=$(cd "$pjd" && pwd)
[ -x "$pjd/pjdfstest" ] || { echo "build pjdfstest in $pjd first (autoreconf -ifs && ./configure && make pjdfstest)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${UFS_BIN:-$here/target/release/ufs}
base=${BASE:-$(mktemp -d /tmp/ufs-pjd.XXXXXX)}
mkdir -p "$base"/{lower,upper,work,merged}
lower=$base/lower upper=$base/upper work=$base/work merged=$base/merged

cleanup() {
	cd /
	if mountpoint -q "$merged"; then
		umount "$merged" 2>/dev/null || umount -l "$merged"
	fi
	rm -rf --one-file-system "$base"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Some content in the lower: files, a directory tree, a symlink inside it.
mkdir -p "$lower/d/sub"
echo lower > "$lower/f"
echo nested > "$lower/d/sub/g"
ln -s f "$lower/l"

case $kind in
ufs)
	"$bin" -o "lowerdir=$lower,upperdir=$upper,workdir=$work,allow_other${UFS_OPTS:+,$UFS_OPTS}" "$merged" || exit 1
	;;
kernel)
	mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged" || exit 1
	;;
*) echo "unknown kind $kind (ufs or kernel)" >&2; exit 2 ;;
esac
mountpoint -q "$merged" || { echo "not mounted" >&2; exit 1; }
cd "$merged" && prove -r "$@" "$pjd/tests"
