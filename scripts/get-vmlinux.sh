#!/bin/bash
# get-vmlinux.sh FIXTURES: the guest kernel's vmlinux with debug info, for the `crash`
# acceptance test of physmem.elf (tests/integration/test_elfcore.py).
#
# The booted fixtures run Debian's own kernel (NAME.json "kernel", e.g.
# linux-image-6.1.0-56-amd64); its debug image is the package <that>-dbg (about 860 MB,
# 20 s from deb.debian.org here). Only vmlinux is kept, in FIXTURES/cache/vmlinux-RELEASE;
# the package is deleted. Nothing to do when no fixture names a kernel, or it is there.
set -euo pipefail
FIXTURES=${1:?usage: get-vmlinux.sh FIXTURES}
pkg=$(python3 - "$FIXTURES" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/oracle-*.json")):
    kernel = json.load(open(path)).get("kernel")
    if kernel:
        print(kernel)
        break
PY
)
[ -n "$pkg" ] || { echo "get-vmlinux: no fixture names a kernel"; exit 0; }
release=${pkg#linux-image-}
out="$FIXTURES/cache/vmlinux-$release"
[ -s "$out" ] && { echo "get-vmlinux: $out is there"; exit 0; }
mkdir -p "$FIXTURES/cache"
tmp=$(mktemp -d "$FIXTURES/cache/dbg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp" # apt's download sandbox user must be able to write here
(cd "$tmp" && apt-get download -q "$pkg-dbg")
dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -xO "./usr/lib/debug/boot/vmlinux-$release" >"$tmp/vmlinux"
mv "$tmp/vmlinux" "$out"
echo "get-vmlinux: $out"
