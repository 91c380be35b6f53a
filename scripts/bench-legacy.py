#!/usr/bin/env python3
"""Legacy-stream benchmarks (issue 4): indexing speed and remount time.

  scripts/bench-legacy.py [--build build] [--fixtures DIR] [--rounds 5] [--image IMG]

Per round, alternating the order of the variants:
  scan    mramfs-inspect IMG --index ""   (a full index of the stream, nothing cached)
  dd      dd if=IMG of=/dev/null bs=1M   (the same bytes straight from the page cache)
  remount mramfs IMG MNT -o index=P       (exec -> return, index loaded from P)
  minfs   the minimal FUSE fs of scripts/bench/minfs.c mounting a tiny file (FUSE's own
          mount cost, subtracted from remount to give our own work)
The image defaults to the fixture dense-1G-legacy (1000 MiB of data pages, made with
scripts/make-fixtures.py if missing). Ratios are medians of per-round ratios.
Targets: scan >= 1.5 GB/s from page cache; remount, own work <= 20 ms.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv, **kw):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=300, **kw)
    return time.perf_counter() - t


def umount(mnt):
    subprocess.run(["fusermount3", "-u", mnt], check=True, timeout=30)


def build_minfs(build):
    out = os.path.join(build, "bench", "minfs")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out,
                    os.path.join(ROOT, "scripts", "bench", "minfs.c")] + flags, check=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--fixtures", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image", default=None)
    a = ap.parse_args()
    fixtures = a.fixtures or os.path.join(a.build, "fixtures")
    image = a.image or os.path.join(fixtures, "dense-1G-legacy.img")
    if not os.path.exists(image):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-fixtures.py"),
                        "--out", fixtures, "dense-1G-legacy"], check=True)
    mramfs = os.path.join(a.build, "fs", "mramfs")
    inspect = os.path.join(a.build, "fs", "mramfs-inspect")
    minfs = build_minfs(a.build)
    size = os.path.getsize(image)
    work = tempfile.mkdtemp(prefix="mramfs-bench-legacy.")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    index = os.path.join(work, "index")
    tiny = os.path.join(work, "tiny")
    with open(tiny, "wb") as f:
        f.write(b"\0" * 4096)
    subprocess.run(["cat", image], stdout=subprocess.DEVNULL, check=True)  # page-cache it
    timed([inspect, image, "--index", index])  # make the index the remounts load

    runs = {
        "scan": lambda: timed([inspect, image, "--index", ""]),
        "dd": lambda: timed(["dd", f"if={image}", "of=/dev/null", "bs=1M"],
                            stderr=subprocess.DEVNULL),
        "remount": lambda: (timed([mramfs, image, mnt, "-o", f"index={index}"]), umount(mnt))[0],
        "minfs": lambda: (timed([minfs, tiny, "0", "4096", mnt]), umount(mnt))[0],
    }
    res = {k: [] for k in runs}
    ratio, own = [], []
    print(f"== legacy stream benchmarks: {image} ({size / 1e9:.2f} GB), {a.rounds} rounds")
    for r in range(a.rounds):
        order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        cur = {k: runs[k]() for k in order}
        for k, v in cur.items():
            res[k].append(v)
        ratio.append(cur["dd"] / cur["scan"])
        own.append(cur["remount"] - cur["minfs"])
        print(f"round {r + 1}: scan {size / cur['scan'] / 1e9:.2f} GB/s, dd "
              f"{size / cur['dd'] / 1e9:.2f} GB/s, remount {cur['remount'] * 1e3:.1f} ms, "
              f"minfs mount {cur['minfs'] * 1e3:.1f} ms")
    scan_gbs = size / statistics.median(res["scan"]) / 1e9
    own_ms = statistics.median(own) * 1e3
    print("\n== summary (medians)")
    print(f"scan speed          {scan_gbs:.2f} GB/s   target >= 1.5 GB/s   "
          f"{'PASS' if scan_gbs >= 1.5 else 'MISS'}")
    print(f"scan / dd           x{statistics.median(ratio):.3f} (min {min(ratio):.3f}, "
          f"max {max(ratio):.3f})")
    print(f"remount, own work   {own_ms:+.2f} ms (remount {statistics.median(res['remount']) * 1e3:.1f}"
          f" ms - minfs {statistics.median(res['minfs']) * 1e3:.1f} ms)   target <= 20 ms   "
          f"{'PASS' if own_ms <= 20 else 'MISS'}")
    print("command: " + " ".join([sys.argv[0]] + sys.argv[1:]))


if __name__ == "__main__":
    main()
