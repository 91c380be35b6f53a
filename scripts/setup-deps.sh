#!/usr/bin/env bash
# Install everything mramfs needs to build, test and make real fixture images on
# Debian 12 (bookworm). Idempotent; run as root (or with sudo available).
# QEMU 10 comes from bookworm-backports (shared/reference/qemu-image-recipes.md §1):
# mapped-ram needs QEMU >= 9.0 and bookworm itself ships 7.2.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

BUILD_PKGS="meson ninja-build pkg-config gcc libc6-dev libfuse3-dev libjson-glib-dev fuse3 \
  libglib2.0-dev libzstd-dev zstd libcmocka-dev python3 util-linux coreutils tar \
  gzip bzip2 xz-utils lzop \
  binutils gdb crash clang libclang-rt-14-dev"
# clang and its libFuzzer/sanitizer runtime: the fuzzing build (tests/fuzz, scripts/fuzz.sh)
# binutils (readelf), gdb and crash: the tools physmem.elf is checked with (test_elfcore.py)
# libvirt 11.3 (sparse saves need >= 11.2) for the real `virsh save` fixtures
# (qemu-image-recipes.md §7: without -recommends; libvirt-daemon-system would pull udev).
LIBVIRT_PKGS="libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon"
# aarch64 / riscv64 emulators for the `virt` fixtures (qemu-image-recipes.md §9.3: riscv64's
# binary is in qemu-system-riscv; qemu-system-misc would add 170 MB).
EMULATOR_PKGS="qemu-system-arm qemu-system-riscv"

have_all() {
  for p in $BUILD_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  for p in $LIBVIRT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  for p in $EMULATOR_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  command -v qemu-system-x86_64 >/dev/null || return 1
  local major
  major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
  [ "${major:-0}" -ge 9 ]
}

if have_all; then
  echo "setup-deps: all dependencies present"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' |
    $SUDO tee /etc/apt/sources.list.d/mramfs-backports.list >/dev/null
fi
# Third-party lists on some machines may be unreachable; do not fail on them.
$SUDO apt-get update -q || true
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $BUILD_PKGS
# --no-install-recommends: otherwise qemu-system-gui pulls ~150 packages (recipes §1).
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports $LIBVIRT_PKGS
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports $EMULATOR_PKGS
qemu-system-x86_64 --version | head -n1
