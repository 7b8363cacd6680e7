#!/usr/bin/env bash
# What one request costs the ufs daemon, per request type on the hot paths: the FUSE requests
# each operation makes (`ufs status --json` before and after), the syscalls the daemon makes
# (a full `strace -f -p DAEMON`, counted per call, its reads and writes of /dev/fuse included) and the instructions
# it executes (`valgrind --tool=callgrind`, which counts the same on a busy machine).
#
#   sudo benches/request-cost.sh [UFS_BINARY] [N] [EXTRA_OPTS]
#
# UFS_BINARY defaults to target/release/ufs, N (operations per phase) to 500, EXTRA_OPTS (more
# -o options) to passthrough=off: valgrind does not know FUSE passthrough's ioctls, and
# passthrough moves file I/O out of the daemon anyway. Each phase runs on the same mount in
# order; a phase only touches names no earlier phase touched, so every operation takes the path
# it names (a lookup of an uncached name, a copy-up of a lower file, ...). Prints a Markdown
# table; takes about two minutes (most of it under valgrind). Needs root, strace, valgrind,
# python3. Nothing is left mounted, also on failure.
set -euo pipefail

UFS=${1:-target/release/ufs}
N=${2:-500}
EXTRA=${3:-passthrough=off}
UFS=$(realpath "$UFS")
for tool in strace valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed" >&2; exit 0; }
done
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root" >&2; exit 0; }

T=$(mktemp -d /tmp/ufs-request-cost.XXXXXX)
DAEMONS=()
cleanup() {
    for m in "$T"/m-*; do
        [ -d "$m" ] && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
    done
    for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

# The lower layer: one directory of N files per phase that needs lower files, each file with a
# user xattr, and a directory of N entries to list.
python3 - "$T/lower" "$N" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in ["stat", "lsl", "xattr", "open", "read", "unlink", "rename", "chmod", "list", "rmrf"]:
    os.makedirs(f"{root}/{d}")
    for i in range(n):
        p = f"{root}/{d}/f{i}"
        with open(p, "wb") as f:
            f.write(b"x" * 1000)
        os.setxattr(p, "user.k", b"v")
for i in range(n // 10):
    os.makedirs(f"{root}/rmrf/sub{i}")
    for j in range(9):
        open(f"{root}/rmrf/sub{i}/g{j}", "w").close()
EOF

# The operations of each phase, run by one python3 process (no process start per operation).
# Setup steps (untimed, uncounted) come before the phase's counters are read.
cat > "$T/ops.py" <<'EOF'
import os, sys
m, phase, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def names(d): return [f"{m}/{d}/f{i}" for i in range(n)]
if phase == "setup":
    for d in ["xattr", "open", "read"]:
        for p in names(d): os.lstat(p)
    os.mkdir(f"{m}/new")
    for i in range(n):
        open(f"{m}/new/s{i}", "w").close()
elif phase == "lookup":
    for p in names("stat"): os.lstat(p)
elif phase == "ls-l":
    for p in names("lsl"):
        os.lstat(p)
        for name, follow in (("security.selinux", False), ("system.posix_acl_access", True)):
            try: os.getxattr(p, name, follow_symlinks=follow)
            except OSError: pass
elif phase == "readdir":
    os.listdir(f"{m}/list")
elif phase == "getxattr":
    for p in names("xattr"): os.getxattr(p, "user.k", follow_symlinks=False)
elif phase == "listxattr":
    for p in names("xattr"): os.listxattr(p, follow_symlinks=False)
elif phase == "open-close":
    for p in names("open"): os.close(os.open(p, os.O_RDONLY))
elif phase == "read":
    for p in names("read"):
        fd = os.open(p, os.O_RDONLY); os.read(fd, 65536); os.close(fd)
elif phase == "create":
    for i in range(n): os.close(os.open(f"{m}/new/c{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
elif phase == "setattr":
    for i in range(n): os.chmod(f"{m}/new/s{i}", 0o600)
elif phase == "unlink":
    for p in names("unlink"): os.unlink(p)
elif phase == "rename":
    for i, p in enumerate(names("rename")): os.rename(p, f"{m}/rename/r{i}")
elif phase == "chmod-lower":
    for p in names("chmod"): os.chmod(p, 0o600)
elif phase == "rm-rf":
    import shutil; shutil.rmtree(f"{m}/rmrf")
EOF
PHASES="lookup ls-l readdir getxattr listxattr open-close read create setattr unlink rename chmod-lower rm-rf"
# What each phase's operation is, for the table.
declare -A ABOUT=(
    [lookup]="lstat of an uncached lower file"
    [ls-l]="lstat + lgetxattr security.selinux + getxattr system.posix_acl_access"
    [readdir]="listing of a lower directory, per entry"
    [getxattr]="getxattr user.k (cached node)"
    [listxattr]="listxattr (cached node)"
    [open-close]="open O_RDONLY + close of a lower file"
    [read]="open + read 1000 bytes + close of a lower file"
    [create]="create + close of a new file in an upper directory"
    [setattr]="chmod of an upper file"
    [unlink]="unlink of a lower file (whiteout)"
    [rename]="rename of a lower file (copy-up, whiteout)"
    [chmod-lower]="chmod of a lower file (metadata-only copy-up)"
    [rm-rf]="rm -rf of a lower tree, per entry (10 % directories)"
)
per_op() { # the number of operations a phase counts per N
    case $1 in rm-rf) echo $((N + N / 10 * 10 + 1)) ;; *) echo "$N" ;; esac
}

# Mounts a fresh union at $T/m-$1 (upper and work of its own), with the daemon in the
# foreground under the command in the remaining arguments; echoes the daemon's pid.
mount_union() {
    local tag=$1; shift
    local opts=$EXTRA
    # Under valgrind one request thread: threads waiting on each other's locks spin, and how
    # much depends on the machine's load, which would make the count vary from run to run.
    [ "${tag#vg}" != "$tag" ] && opts="$opts,threaded=1"
    local m=$T/m-$tag
    mkdir -p "$m" "$T/u-$tag" "$T/w-$tag"
    "$@" "$UFS" mount -f -o "lowerdir=$T/lower,upperdir=$T/u-$tag,workdir=$T/w-$tag,$opts" "$m" \
        >"$T/log-$tag" 2>&1 &
    DAEMONS+=($!)
    for _ in $(seq 1 600); do
        if grep -q " $m " /proc/self/mountinfo; then break; fi
        sleep 0.05
    done
    grep -q " $m " /proc/self/mountinfo || { echo "mount failed:" >&2; cat "$T/log-$tag" >&2; exit 1; }
    # The daemon: the ufs process serving this mount (valgrind's tool process under valgrind).
    # Its status socket comes up just after the mount (later under valgrind): poll for it.
    local out
    for _ in $(seq 1 200); do
        out=$("$UFS" status "$m" --json 2>/dev/null) && break
        sleep 0.05
    done
    python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' <<<"$out"
}

requests() { # FUSE requests the daemon answered, by type, as "TYPE count" lines
    "$UFS" status "$1" --json | python3 -c '
import json, sys
for k, v in json.load(sys.stdin)["requests"].items(): print(k, v["count"])'
}

# 1. Requests and syscalls, on a native daemon.
PID=$(mount_union plain env)
M=$T/m-plain
python3 "$T/ops.py" "$M" setup "$N"
declare -A REQS SYSCALLS TOPCALLS
for ph in $PHASES; do
    requests "$M" >"$T/req-before"
    # A full trace, counted below: `strace -c` leaves out calls it has no name for (the
    # `*xattrat` calls of Linux 6.13, which this strace shows as `syscall_0x1d0`).
    strace -f -q -p "$PID" -o "$T/strace-$ph" &
    SP=$!
    # strace attaches to every thread before the phase starts (it prints nothing until then,
    # so wait for its /proc entry to show the tracer on the daemon).
    for _ in $(seq 1 200); do
        grep -q "^TracerPid:[[:space:]]*$SP" "/proc/$PID/status" && break
        sleep 0.02
    done
    python3 "$T/ops.py" "$M" "$ph" "$N"
    kill -INT "$SP"; wait "$SP" 2>/dev/null || true
    requests "$M" >"$T/req-after"
    ops=$(per_op "$ph")
    REQS[$ph]=$(python3 - "$T/req-before" "$T/req-after" "$ops" <<'EOF'
import sys
def load(p): return dict((l.split()[0], int(l.split()[1])) for l in open(p) if l.strip())
a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
d = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}
print(" + ".join(f"{v / n:.2g} {k.lower()}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])))
EOF
)
    read -r SYSCALLS[$ph] TOPCALLS[$ph] < <(python3 - "$T/strace-$ph" "$ops" <<'EOF'
import collections, re, sys
n = int(sys.argv[2])
# One line per call as it starts ("PID name(..." or "PID name(... <unfinished ...>"); the
# "<... name resumed>" line that finishes an interrupted one is not another call.
names = {"syscall_0x1d0": "getxattrat", "syscall_0x1d1": "listxattrat"}
count = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"^\d+\s+([a-z0-9_]+)\(", line)
    if m:
        count[names.get(m.group(1), m.group(1))] += 1
rows = [(c, name) for name, c in count.items()]
total = sum(c for c, _ in rows)
# The daemon's FUSE traffic (read/writev of /dev/fuse) and lock waits are not the filesystem's
# work; the rest is listed by count.
fuse = {"read", "writev", "write", "futex", "epoll_wait", "rt_sigtimedwait", "restart_syscall"}
top = [f"{c / n:.2g}·{name}" for c, name in sorted(rows, reverse=True) if name not in fuse][:5]
print(f"{total / n:.1f}", ",".join(top) or "-")
EOF
)
done

# 2. Instructions, on a daemon under callgrind (counters zeroed before a phase, dumped after).
# Twice, on two mounts, keeping the lower count of each phase: a phase also counts the FORGET
# batches the kernel sends whenever it reclaims dentries, which depends on the machine.
declare -A INSTR
for run in 1 2; do
    VPID=$(mount_union "vg$run" valgrind --tool=callgrind --callgrind-out-file="$T/cg.%p" --dump-instr=no)
    VM=$T/m-vg$run
    python3 "$T/ops.py" "$VM" setup "$N"
    for ph in $PHASES; do
        callgrind_control -z "$VPID" >/dev/null
        python3 "$T/ops.py" "$VM" "$ph" "$N"
        callgrind_control -d "$ph" "$VPID" >/dev/null
        dump=$(ls -t "$T"/cg."$VPID".* | head -1)
        total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
        if [ -z "${INSTR[$ph]:-}" ] || [ "$total" -lt "${INSTR[$ph]}" ]; then
            INSTR[$ph]=$total
        fi
    done
    fusermount3 -u "$VM"
done
for ph in $PHASES; do
    INSTR[$ph]=$(python3 -c "print(f'{${INSTR[$ph]} / $(per_op "$ph"):,.0f}')")
done

echo "| operation ($N each; kernel $(uname -r), $EXTRA) | requests per operation | daemon syscalls per operation | most frequent (per op) | daemon instructions per operation |"
echo "|---|---|---|---|---|"
for ph in $PHASES; do
    echo "| \`$ph\`: ${ABOUT[$ph]} | ${REQS[$ph]:--} | ${SYSCALLS[$ph]} | ${TOPCALLS[$ph]//,/, } | ${INSTR[$ph]} |"
done
