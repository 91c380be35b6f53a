#!/usr/bin/env bash
# Run the libFuzzer harnesses of tests/fuzz (ASan+UBSan), one at a time.
#   scripts/fuzz.sh [SECONDS] [HARNESS...]     default: 30 s each, every harness
# Builds build-fuzz/ with clang if needed (CC=clang meson setup -Dfuzz=true ...). Replays
# tests/fuzz/regressions/<harness>/ first (past findings must stay fixed), then fuzzes from
# the seeds in tests/fuzz/corpus/<harness>/ plus a work corpus kept outside the repository
# ($MRAMFS_FUZZ_WORK, default /tmp/mramfs-fuzz/<harness>/: corpus/, artifacts/, log).
# Prints per harness: executions, coverage (edges), wall seconds, CPU seconds (user+sys of
# the fuzzer: what "N CPU-minutes" counts on a shared machine), CPU seconds summed over every
# run kept in the work corpus ($WORK/<harness>/history), crashes. Exit 1 on any crash
# (a crash, leak, timeout or OOM leaves its input in artifacts/: add it to regressions/).
#   scripts/fuzz.sh --list                     the harness names
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# Keep in step with fuzz_harnesses in tests/fuzz/meson.build.
ALL="libvirt stream mapped-ram bitmap legacy devstate physmem index packed"
if [ "${1:-}" = --list ]; then
  echo "$ALL"
  exit 0
fi
SECS=${1:-30}
[ $# -gt 0 ] && shift
HARNESSES=${*:-$ALL}
BUILD=${MRAMFS_FUZZ_BUILD:-build-fuzz}
WORK=${MRAMFS_FUZZ_WORK:-/tmp/mramfs-fuzz}

if [ ! -f "$BUILD/build.ninja" ]; then
  CC=clang meson setup "$BUILD" -Dfuzz=true -Dtests=false -Dmount_helper_dir= \
    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C "$BUILD" -j2 >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=0
printf '%-11s %12s %7s %7s %7s %9s %8s\n' harness executions edges seconds cpu-s cpu-total crashes
for h in $HARNESSES; do
  bin=$BUILD/tests/fuzz/fuzz-$h
  [ -x "$bin" ] || { echo "no harness $h" >&2; exit 2; }
  dir=$WORK/$h
  mkdir -p "$dir/corpus" "$dir/artifacts"
  log=$dir/log
  crashes=0
  # Past findings: libFuzzer runs each file given as an argument once.
  regs=()
  if [ -d "tests/fuzz/regressions/$h" ]; then
    mapfile -t regs < <(find "tests/fuzz/regressions/$h" -type f | sort)
  fi
  if [ ${#regs[@]} -gt 0 ] && ! "$bin" "${regs[@]}" >"$dir/regressions.log" 2>&1; then
    echo "$h: a regression input fails again (see $dir/regressions.log)" >&2
    crashes=$((crashes + 1))
  fi
  dict=()
  [ -f "tests/fuzz/$h.dict" ] && dict=("-dict=$ROOT/tests/fuzz/$h.dict")
  before=$(find "$dir/artifacts" -type f | wc -l)
  start=$(date +%s)
  set +e
  # bash's time keyword: user and system seconds of the fuzzer, into $dir/cpu
  TIMEFORMAT='%U %S'
  { time "$bin" -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" \
    "$dir/corpus" "tests/fuzz/corpus/$h" >"$log" 2>&1; } 2>"$dir/cpu"
  rc=$?
  set -e
  secs=$(($(date +%s) - start))
  cpu=$(awk 'NR==1{printf "%d",$1+$2}' "$dir/cpu")
  echo "$(date -u +%FT%TZ) wall=$secs cpu=$cpu" >>"$dir/history"
  cpu_total=$(sed -n 's/.* cpu=//p' "$dir/history" | awk '{ t += $1 } END { print t }')
  after=$(find "$dir/artifacts" -type f | wc -l)
  crashes=$((crashes + after - before))
  [ "$rc" -ne 0 ] && [ "$after" -eq "$before" ] && crashes=$((crashes + 1))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1 || true)
  edges=$(grep -ao 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
  printf '%-11s %12s %7s %7s %7s %9s %8s\n' "$h" "${execs:-?}" "${edges:-?}" "$secs" "$cpu" \
    "$cpu_total" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    grep -E 'ERROR|SUMMARY|invariant|runtime error|^artifact' "$log" | head -n 8 >&2 || true
  fi
done
exit "$failed"
