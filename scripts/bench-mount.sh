#!/usr/bin/env bash
# mramfs 0.1 benchmarks: read throughput, mount cost, SEEK walk, daemon memory.
#
#   scripts/bench-mount.sh [--minfs-only] [--targets 1,2,3,4]
#   env: BUILD=build FIXTURES=$BUILD/fixtures ROUNDS=5 MOUNT_REPS=5 WALK_REPS=50 FEW_MIB=4
#        MRAMFS=$BUILD/fs/mramfs INSPECT=$BUILD/fs/mramfs-inspect
#
# Every figure is compared with a baseline measured in the same round (variants
# alternate inside each round); ratios are medians of per-round ratios. The
# baseline FUSE fs is scripts/bench/minfs.c, built here into $BUILD/bench/.
# Targets: 1 = sequential read of pc.ram (dense-1G) vs minfs and dd,
#          2 = mount time of q35-64G-S vs minfs, mramfs-inspect, SEEK walk 64G vs 512M,
#          3 = daemon RSS on q35-64G-S vs bitmap size and minfs,
#          4 = (extra) first read of a dense 64 GiB block (a temp copy of q35-64G-S with
#              pc.ram's bitmap all set) vs minfs: per-request bitmap cost on big runs.
# Missing fixtures are made with scripts/make-fixtures.py. Mounts are undone on exit.
# Method and machine caveats: shared/reference/fuse-and-zstd-limits.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD=${BUILD:-build}
FIXTURES=${FIXTURES:-$BUILD/fixtures}
ROUNDS=${ROUNDS:-5}
MOUNT_REPS=${MOUNT_REPS:-5}
WALK_REPS=${WALK_REPS:-50}
FEW_MIB=${FEW_MIB:-4}
MRAMFS=${MRAMFS:-$BUILD/fs/mramfs}
INSPECT=${INSPECT:-$BUILD/fs/mramfs-inspect}
TARGETS=1,2,3,4
MINFS_ONLY=0

CMDLINE="BUILD=$BUILD FIXTURES=$FIXTURES ROUNDS=$ROUNDS MOUNT_REPS=$MOUNT_REPS WALK_REPS=$WALK_REPS FEW_MIB=$FEW_MIB $0 $*"

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
	case $1 in
	--minfs-only) MINFS_ONLY=1 ;;
	--targets) TARGETS=${2:?--targets needs a list}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench-mount: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

for t in cc pkg-config dd cmp fusermount3 python3; do
	command -v "$t" >/dev/null || { echo "bench-mount: $t not found (scripts/setup-deps.sh)" >&2; exit 1; }
done
if [ "$MINFS_ONLY" = 0 ]; then
	for b in "$MRAMFS" "$INSPECT"; do
		[ -x "$b" ] || { echo "bench-mount: $b not built (meson setup $BUILD && ninja -C $BUILD), or use --minfs-only" >&2; exit 1; }
	done
fi

# The baseline fs, built with the flags the project uses.
mkdir -p "$BUILD/bench"
MINFS=$BUILD/bench/minfs
# shellcheck disable=SC2046
cc -std=c11 -O2 -Wall -Wextra -Werror scripts/bench/minfs.c \
	$(pkg-config --cflags --libs fuse3) -o "$MINFS"

# Fixtures this run needs; make the missing ones (they are only made when named).
need=()
case ",$TARGETS," in *,1,*) need+=(dense-1G) ;; esac
case ",$TARGETS," in *,2,* | *,3,* | *,4,*) need+=(q35-64G-S) ;; esac
case ",$TARGETS," in *,2,*) need+=(q35-512M-S) ;; esac
missing=()
for f in "${need[@]}"; do
	[ -s "$FIXTURES/$f.img" ] || missing+=("$f")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench-mount: making fixtures ${missing[*]} in $FIXTURES"
	python3 scripts/make-fixtures.py --out "$FIXTURES" "${missing[@]}"
fi

WORK=$(mktemp -d /tmp/mramfs-bench.XXXXXX)
cleanup() {
	local m busy=0
	for m in "$WORK/m1" "$WORK/m2"; do
		if mountpoint -q "$m" 2>/dev/null; then
			fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		fi
		mountpoint -q "$m" 2>/dev/null && busy=1
	done
	if [ "$busy" = 0 ]; then
		rm -f "$WORK/tiny.bin" "$WORK/dense64.img" "$WORK/daemon-stderr.log"
		rmdir "$WORK/m1" "$WORK/m2" "$WORK" 2>/dev/null || true
	else
		echo "bench-mount: could not unmount under $WORK" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== mramfs benchmarks $(date -u +%FT%TZ)"
echo "machine: $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
	"libfuse $(pkg-config --modversion fuse3), fs.pipe-max-size $(cat /proc/sys/fs/pipe-max-size)," \
	"load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "mramfs: $MRAMFS ($( [ -x "$MRAMFS" ] && stat -c '%y' "$MRAMFS" | cut -d. -f1 || echo 'not built'))," \
	"git $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
# CPU use over one second of the 3 busiest processes: a co-tenant makes every figure noisy.
busiest() {
	echo "busiest processes $1 (1 s sample, co-tenant noise):"
	top -b -n 2 -d 1 -w 200 | awk '/^top -/ {n++} n == 2 && /^ *PID/ {p = 1; next}
		p && c < 3 {print "  " $9 "% " $12; c++}'
}
busiest "at start"

args=(--mramfs "$MRAMFS" --inspect "$INSPECT" --minfs "$MINFS" --fixtures "$FIXTURES"
	--work "$WORK" --rounds "$ROUNDS" --mount-reps "$MOUNT_REPS" --walk-reps "$WALK_REPS"
	--few-mib "$FEW_MIB" --targets "$TARGETS" --cmdline "$CMDLINE")
[ "$MINFS_ONLY" = 1 ] && args+=(--minfs-only)
# In the background so that INT/TERM reach the traps at once; the driver then
# unmounts what it mounted (and the EXIT trap catches anything left).
python3 scripts/bench/bench.py "${args[@]}" &
PY=$!
trap 'kill -TERM "$PY" 2>/dev/null; wait "$PY" || true; exit 130' INT
trap 'kill -TERM "$PY" 2>/dev/null; wait "$PY" || true; exit 143' TERM
wait "$PY"

busiest "at end"
