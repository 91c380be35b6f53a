#!/usr/bin/env bash
# Configure (once) and build mramfs into $BUILD (default build/); extra args go to
# `meson setup`, e.g. scripts/build.sh -Db_sanitize=address,undefined.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD" "$@"
fi
ninja -C "$BUILD"
