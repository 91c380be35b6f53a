#!/usr/bin/env python3
"""Forensic views benchmark (issue 5): reading physmem.raw and physmem.elf against reading
the block file they show, in the same mount generation and the same rounds.

  scripts/bench-views.py [--build build] [--fixtures DIR] [--rounds 5] [--image IMG]

Per round, a fresh mount (so FUSE's page cache is cold; the image itself stays in the host
page cache after the first round), then `dd bs=1M` of the same guest bytes through
  block   pc.ram [0xc0000, end of the low RAM range)
  raw     physmem.raw at the same guest-physical addresses
  elf     physmem.elf at the PT_LOAD that holds them
in an order that rotates from round to round. Ratios are medians of per-round ratios
against `block`. Target: the views cost no more than the block file (ratio >= ~0.9,
within this machine's noise).
The image defaults to the fixture dense-1G (a q35 guest whose 1 GiB pc.ram is all data).
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dd(path, skip, count):
    t = time.perf_counter()
    subprocess.run(["dd", "if=" + path, "of=/dev/null", "bs=1M", "iflag=skip_bytes,count_bytes",
                    "skip=%d" % skip, "count=%d" % count], check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def elf_offset_of(path, gpa):
    """File offset of guest-physical @gpa in an ELF64 core (parsed here)."""
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phnum, = struct.unpack_from("<H", head, 56)
        f.seek(phoff)
        for _ in range(phnum):
            t, _fl, off, _va, paddr, filesz, _m, _a = struct.unpack("<IIQQQQQQ", f.read(56))
            if t == 1 and paddr <= gpa < paddr + filesz:
                return off + gpa - paddr
    raise SystemExit("%s: no PT_LOAD holds %#x" % (path, gpa))


def one_round(build, image, order):
    mnt = tempfile.mkdtemp(prefix="mramfs-bench-views-")
    subprocess.run([os.path.join(build, "fs", "mramfs"), image, mnt], check=True, timeout=120)
    try:
        with open(os.path.join(mnt, ".mramfs.json")) as f:
            ranges = json.load(f)["physmem"]["ranges"]
        low = [r for r in ranges if r["block"] == "pc.ram" and r["gpa"] == 0xc0000][0]
        gpa, length = low["gpa"], low["size"]
        targets = {
            "block": (os.path.join(mnt, "pc.ram"), low["block_offset"]),
            "raw": (os.path.join(mnt, "physmem.raw"), gpa),
            "elf": (os.path.join(mnt, "physmem.elf"),
                    elf_offset_of(os.path.join(mnt, "physmem.elf"), gpa)),
        }
        return {name: dd(targets[name][0], targets[name][1], length) for name in order}, length
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=True, timeout=30)
        os.rmdir(mnt)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "build", "fixtures"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image")
    a = ap.parse_args()
    image = a.image or os.path.join(a.fixtures, "dense-1G.img")
    if not os.path.exists(image):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-fixtures.py"),
                        "--out", a.fixtures, "dense-1G"], check=True)
    subprocess.run(["cat", image], check=True, stdout=subprocess.DEVNULL)  # warm the image
    names = ["block", "raw", "elf"]
    times = {n: [] for n in names}
    length = 0
    for r in range(a.rounds):
        order = names[r % 3:] + names[:r % 3]
        got, length = one_round(a.build, image, order)
        for n in names:
            times[n].append(got[n])
        print("round %d: %s" % (r + 1, "  ".join("%s %.3f s" % (n, got[n]) for n in order)),
              flush=True)
    print("\n%s, %d MiB of guest RAM per read, fresh mount each round, %d rounds"
          % (os.path.basename(image), length >> 20, a.rounds))
    for n in names:
        med = statistics.median(times[n])
        ratio = statistics.median(b / x for b, x in zip(times["block"], times[n]))
        print("  %-6s median %.3f s  %.2f GB/s  speed vs block x%.2f (min %.2f, max %.2f)"
              % (n, med, length / med / 1e9, ratio,
                 min(b / x for b, x in zip(times["block"], times[n])),
                 max(b / x for b, x in zip(times["block"], times[n]))))


if __name__ == "__main__":
    main()
