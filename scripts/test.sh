#!/usr/bin/env bash
# Newcomer command 2 (and what CI runs): install what is needed, build mramfs three times
# (plain, ASan+UBSan, TSan), run the cmocka unit tests in both, make real fixture images with
# QEMU 10, install mramfs (so mount(8), mount.mramfs and fstab paths are real), and mount
# every fixture with the real FUSE in the integration tests, with both builds; the fault,
# stress and packed suites once more with a ThreadSanitizer build.
# Then every libFuzzer harness for a short smoke run (tests/fuzz, scripts/fuzz.sh).
# Run as root on Debian 12. Ends with one line "N passed, N failed": the individual test
# cases of every suite and build, plus one per step (build, fixtures, sanitizer logs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FIXTURES=${MRAMFS_FIXTURES:-$ROOT/build/fixtures}
LOGS=$ROOT/build/test-logs
passed=0
failed=0
skipped=0

step() { printf '\n==== %s\n' "$*"; }
record() { # name, status
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "PASS: $1"
  else failed=$((failed + 1)); echo "FAIL: $1 (exit $2)"; fi
}
run() { # name, command...
  local name=$1; shift
  set +e; "$@"; local rc=$?; set -e
  record "$name" "$rc"
}
count_cmocka() { # meson build dir: add its cmocka case counts
  local log=$1/meson-logs/testlog.txt n
  n=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
  passed=$((passed + ${n:-0}))
  n=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
  failed=$((failed + ${n:-0}))
}
integration() { # name, build dir, suite file: run the suite, add its case counts
  local out=$LOGS/$2.$(basename "$3" .py).log
  run "$1" bash -c "set -o pipefail; python3 '$3' \
    --build '$2' --fixtures '$FIXTURES' 2>&1 | tee '$out'"
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n1)
  passed=$((passed + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
  case $line in *skipped*) skipped=$((skipped + $(echo "$line" | sed -E 's/.* ([0-9]+) skipped.*/\1/'))) ;; esac
}

step "dependencies"
scripts/setup-deps.sh

step "build (plain, ASan+UBSan, TSan)"
BUILD=build scripts/build.sh >/dev/null
BUILD=build-asan scripts/build.sh -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
BUILD=build-tsan scripts/build.sh -Db_sanitize=thread -Dtests=false >/dev/null
meson install -C build --quiet

rm -rf "$LOGS" && mkdir -p "$LOGS"

step "unit tests"
run "unit tests" meson test -C build --suite unit --print-errorlogs
count_cmocka build
run "unit tests (asan+ubsan)" meson test -C build-asan --suite unit --print-errorlogs
count_cmocka build-asan

step "fuzzing smoke run (libFuzzer, ASan+UBSan)"
# Every harness of tests/fuzz for a short time (30 s each, about 4 min in all), after
# replaying its past findings (tests/fuzz/regressions/); one step per harness. Long runs:
# scripts/fuzz.sh SECONDS [HARNESS...].
for h in $(scripts/fuzz.sh --list); do
  run "fuzz $h" scripts/fuzz.sh "${MRAMFS_FUZZ_SECONDS:-30}" "$h"
done

step "fixtures (real QEMU)"
# The default set, plus the 64 GiB guest (a few seconds, 5 MiB on disk), the dense 1 GiB
# guest (about 20 s, 1 GiB on disk) and the real libvirt chain (libvirtd and virtlogd
# started and stopped by the generator, about 2.5 min) so that no integration test is skipped.
run "make fixtures" python3 scripts/make-fixtures.py --out "$FIXTURES"
run "make big fixtures" python3 scripts/make-fixtures.py --out "$FIXTURES" q35-64G-S dense-1G
run "make libvirt fixtures" python3 scripts/make-fixtures.py --out "$FIXTURES" libvirt
# The booted guest's vmlinux with debug info (about 20 s + 40 s): crash opens physmem.elf.
run "guest vmlinux for crash" scripts/get-vmlinux.sh "$FIXTURES"

step "integration tests (real FUSE mounts)"
SUITES="tests/integration/test_mount.py tests/integration/test_legacy.py tests/integration/test_pack.py tests/integration/test_physmem.py tests/integration/test_elfcore.py tests/integration/test_packed.py tests/integration/test_security.py tests/integration/test_faults.py"
for suite in $SUITES; do
  integration "$(basename "$suite" .py)" build "$suite"
done
export ASAN_OPTIONS="log_path=$LOGS/asan:abort_on_error=1:detect_leaks=0"
export UBSAN_OPTIONS="log_path=$LOGS/ubsan:halt_on_error=1:print_stacktrace=1"
for suite in $SUITES; do
  integration "$(basename "$suite" .py) (asan+ubsan)" build-asan "$suite"
done
unset ASAN_OPTIONS UBSAN_OPTIONS
# The threaded paths under ThreadSanitizer: the fault and stress suite (8 readers on a
# 4 MiB cache, signals, killed readers) and the packed suite (its concurrency test, and
# mramfs-pack's workers). GLib's own locks are futexes TSan cannot see: our modules
# annotate theirs (lib/mr-sync.h), and G_SLICE=always-malloc keeps GSlice's per-thread
# magazines from passing memory between threads behind TSan's back.
export TSAN_OPTIONS="log_path=$LOGS/tsan" G_SLICE=always-malloc
for suite in tests/integration/test_faults.py tests/integration/test_packed.py; do
  integration "$(basename "$suite" .py) (tsan)" build-tsan "$suite"
done
unset TSAN_OPTIONS G_SLICE
if compgen -G "$LOGS/[aut]*san.*" >/dev/null; then
  cat "$LOGS"/[aut]*san.*
  record "sanitizer reports" 1
else
  record "sanitizer reports" 0
fi

echo
if [ "$skipped" -gt 0 ]; then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
