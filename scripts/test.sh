#!/usr/bin/env bash
# Newcomer command 2 (and what CI runs): install what is needed, build mramfs twice (plain
# and with ASan+UBSan), run the cmocka unit tests in both, make real fixture images with
# QEMU 10, install mramfs (so mount(8), mount.mramfs and fstab paths are real), and mount
# every fixture with the real FUSE in the integration tests, with both builds.
# Run as root on Debian 12. Ends with one line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FIXTURES=${MRAMFS_FIXTURES:-$ROOT/build/fixtures}
LOGS=$ROOT/build/test-logs
passed=0
failed=0

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

step "dependencies"
scripts/setup-deps.sh

step "build (plain, and ASan+UBSan)"
BUILD=build scripts/build.sh >/dev/null
BUILD=build-asan scripts/build.sh -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
meson install -C build --quiet

step "unit tests"
run "unit tests" meson test -C build --suite unit --print-errorlogs
run "unit tests (asan+ubsan)" meson test -C build-asan --suite unit --print-errorlogs

step "fixtures (real QEMU)"
run "make fixtures" python3 scripts/make-fixtures.py --out "$FIXTURES"

step "integration tests (real FUSE mounts)"
run "integration" python3 tests/integration/test_mount.py --build build --fixtures "$FIXTURES"

rm -rf "$LOGS" && mkdir -p "$LOGS"
export ASAN_OPTIONS="log_path=$LOGS/asan:abort_on_error=1:detect_leaks=0"
export UBSAN_OPTIONS="log_path=$LOGS/ubsan:halt_on_error=1:print_stacktrace=1"
run "integration (asan+ubsan daemon)" \
  python3 tests/integration/test_mount.py --build build-asan --fixtures "$FIXTURES"
unset ASAN_OPTIONS UBSAN_OPTIONS
if compgen -G "$LOGS/*san*" >/dev/null; then
  cat "$LOGS"/*san*
  record "sanitizer reports" 1
else
  record "sanitizer reports" 0
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
