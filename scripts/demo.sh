#!/usr/bin/env bash
# Newcomer command 1: install what is needed, build and install mramfs, make a real sample
# image with QEMU (a q35 guest with known patterns in RAM, saved with mapped-ram), and
# mount it at MOUNTPOINT (default /tmp/mramfs-demo). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=${1:-/tmp/mramfs-demo}

scripts/setup-deps.sh
scripts/build.sh >/dev/null
meson install -C build --quiet
python3 scripts/make-fixtures.py q35-512M-S
IMG=build/fixtures/q35-512M-S.img

mkdir -p "$MNT"
if mountpoint -q "$MNT"; then umount "$MNT"; fi
mount.mramfs "$IMG" "$MNT"
echo
echo "== $IMG mounted at $MNT (unmount: umount $MNT)"
mramfs-inspect "$IMG"
echo
echo "== files"
find "$MNT" -type f -printf '%P\t%s bytes\t%b blocks\n' | sort
echo
echo "== the page QEMU's loader device put at guest address 0x1000000 (pc.ram offset 0x1000000)"
dd if="$MNT/pc.ram" bs=4096 skip=$((0x1000)) count=1 status=none | head -c 64; echo
echo "== data extents of pc.ram (SEEK_DATA/SEEK_HOLE)"
python3 - "$MNT/pc.ram" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
pos = 0
while True:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    pos = os.lseek(fd, start, os.SEEK_HOLE)
    print(f"  [{start:#x}, {pos:#x})")
PY
