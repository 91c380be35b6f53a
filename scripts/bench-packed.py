#!/usr/bin/env python3
"""Benchmark packed images (docs/packed-format.md) against baselines measured in the same run.

Usage: python3 scripts/bench-packed.py [--build BUILD] [--image IMG] [--rounds N]
                                       [--frame-sizes 64K,256K,1M] [--samples N]

IMG defaults to the booted Linux guest fixture (build/fixtures/linux-live.img, or
$MRAMFS_FIXTURES/linux-live.img): real guest RAM, mapped-ram. Needs root (FUSE), zstd(1)
and a C compiler (the decode baseline scripts/bench/zdecode.c is built on the fly).
Everything is printed as a ratio to a baseline of this run:

 1. pack: mramfs-pack (one worker per CPU) vs single-thread zstd (`zstd --single-thread
    -LEVEL`) over the data pages alone (every data extent of every block, concatenated),
    same level: rate (stored bytes / s) and size (compressed page frames vs zstd output).
    Targets: >= 1.7x, within 2 %.  Also printed: `zstd -T1`, which is not single-threaded
    (one compressing worker while the main thread reads and writes), and the machine's
    2-CPU ceiling (two independent single-thread zstd at once, each over half the data).
 2. sequential read of pc.ram's data extents through a fresh mount of the packed image vs
    single-thread ZSTD_decompressDCtx of the same frames (zdecode).  Target: >= 1.7x.
    Ceilings printed beside it: 2-thread in-memory decoding (zdecode ... 2), and the mount of
    the uncompressed original (FUSE serving the same bytes with no decoding at all).
 3. random 4 KiB cold reads (one per frame, each frame read once, fresh mount): p50 and
    p99 latency per frame size.  Target: p99 <= 1 ms.
 4. 16 concurrent readers of random ranges through -o cache_size=64M: byte-exact against
    the original mount, peak RSS of the daemon vs cache_size + 32 MiB.
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
PAGE = 4096


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def parse_size(text):
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1].upper(), 1)
    return int(text[:-1] if mult > 1 else text) * mult


def extents(fd, size):
    runs, off = [], 0
    while off < size:
        try:
            s = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        e = os.lseek(fd, s, os.SEEK_HOLE)
        runs.append((s, e))
        off = e
    return runs


class Mount:
    def __init__(self, build, image, opts=""):
        self.mnt = tempfile.mkdtemp(prefix="mramfs-bench-")
        argv = [os.path.join(build, "fs", "mramfs"), image, self.mnt, "-o", "index=" + opts]
        sh(argv)
        self.pid = int(sh(["pgrep", "-n", "-f", self.mnt]).stdout.split()[0])

    def __enter__(self):
        return self

    def __exit__(self, *a):
        subprocess.run(["fusermount3", "-u", self.mnt])
        os.rmdir(self.mnt)

    def rss_peak(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0


def index(path):
    with open(path, "rb") as f:
        head = f.read(128)
        ioff, isize = struct.unpack_from("<QQ", head, 40)
        f.seek(ioff)
        idx = f.read(isize)
    ns, nc, _nf = struct.unpack_from("<IxxxxQQ", idx, 0)
    segs = [struct.unpack_from("<QQIIQQQ", idx, 32 + 48 * i) for i in range(ns)]
    chunks = [struct.unpack_from("<QQQIIQQ", idx, 32 + 48 * ns + 48 * i) for i in range(nc)]
    base = 32 + 48 * ns + 48 * nc
    frames = [struct.unpack_from("<QIIQII", idx, base + 32 * i) for i in range(_nf)]
    return segs, chunks, frames


def pcram_segment(segs):
    return max((i for i, s in enumerate(segs) if s[2] == 1), key=lambda i: segs[i][1])


def pack(build, image, out, level, frame, threads=None):
    argv = [os.path.join(build, "fs", "mramfs-pack"), "--quiet", "--force", "--level", str(level),
            "--frame-size", str(frame)]
    if threads:
        argv += ["--threads", str(threads)]
    t0 = time.monotonic()
    sh(argv + [image, out])
    return time.monotonic() - t0


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    fx = os.environ.get("MRAMFS_FIXTURES", os.path.join(REPO, "build", "fixtures"))
    ap.add_argument("--image", default=os.path.join(fx, "linux-live.img"))
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frame-sizes", default="64K,256K,1M")
    ap.add_argument("--samples", type=int, default=300)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mramfs-bench-packed-")
    zdecode = os.path.join(work, "zdecode")
    sh(["cc", "-O2", "-pthread", "-o", zdecode,
        os.path.join(REPO, "scripts", "bench", "zdecode.c"), "-lzstd"])
    print("image %s, level %d, %d CPUs, rounds %d" % (a.image, a.level, os.cpu_count(), a.rounds))

    # ---- the data pages alone, from a mount of the original ----
    data = os.path.join(work, "data-pages.bin")
    with Mount(a.build, a.image) as m, open(data, "wb") as out:
        # the block files only: the views (physmem.raw, physmem.elf) show the same pages again
        with open(os.path.join(m.mnt, ".mramfs.json")) as f:
            paths = [b["path"] for b in json.load(f)["blocks"]]
        for rel in paths:
            fd = os.open(os.path.join(m.mnt, rel), os.O_RDONLY)
            for s, e in extents(fd, os.fstat(fd).st_size):
                out.write(os.pread(fd, e - s, s))
            os.close(fd)
    stored = os.path.getsize(data)

    # ---- 1. pack vs zstd -T1 ----
    packed = os.path.join(work, "img.packed")
    # The machine's ceiling for two cores: two independent single-thread zstd at the same
    # time, each over half of the data (alternate 1 MiB pieces, so that both halves hold
    # the same mix of pages and finish together), no coordination at all.
    halves = [data + ".a", data + ".b"]
    with open(data, "rb") as f, open(halves[0], "wb") as a_, open(halves[1], "wb") as b_:
        for i, piece in enumerate(iter(lambda: f.read(MiB), b"")):
            (a_, b_)[i % 2].write(piece)
    t_pack, t_zstd, t_t1, t_two = [], [], [], []
    for _ in range(a.rounds):
        t_pack.append(pack(a.build, a.image, packed, a.level, "256K"))
        t0 = time.monotonic()
        sh(["zstd", "-q", "-f", "--single-thread", "-%d" % a.level, data, "-o", data + ".zst"])
        t_zstd.append(time.monotonic() - t0)
        t0 = time.monotonic()
        sh(["zstd", "-q", "-f", "-T1", "-%d" % a.level, data, "-o", data + ".t1.zst"])
        t_t1.append(time.monotonic() - t0)
        t0 = time.monotonic()
        procs = [subprocess.Popen(["zstd", "-q", "-f", "--single-thread", "-%d" % a.level, h,
                                   "-o", h + ".zst"]) for h in halves]
        if any(p.wait() != 0 for p in procs):
            sys.exit("zstd over a half failed")
        t_two.append(time.monotonic() - t0)
    segs, chunks, frames = index(packed)
    page_csize = sum(chunks[s[5] + k][5] for s in segs if s[2] == 1 for k in range(s[6]))
    zsize = os.path.getsize(data + ".zst")
    tp, tz = min(t_pack), min(t_zstd)
    print("\n1. pack (%d MB of data pages, 256K frames)" % (stored // 10**6))
    print("   mramfs-pack %.0f MB/s (%.2f s), zstd --single-thread -%d %.0f MB/s (%.2f s): "
          "ratio %.2fx (target >= 1.7)"
          % (stored / tp / 1e6, tp, a.level, stored / tz / 1e6, tz, tz / tp))
    t1, t2 = min(t_t1), min(t_two)
    print("   zstd -T1 (a compressing worker beside the I/O thread) %.0f MB/s: ratio %.2fx"
          % (stored / t1 / 1e6, t1 / tp))
    print("   ceiling: 2 x zstd --single-thread at once, each over half %.0f MB/s: %.2fx "
          "of one" % (stored / t2 / 1e6, tz / t2))
    print("   size: page frames %d B, zstd %d B: %+.2f %% (target within 2 %%); whole packed "
          "file %d B" % (page_csize, zsize, (page_csize / zsize - 1) * 100,
                         os.path.getsize(packed)))

    # ---- 2. sequential read vs single-thread decode ----
    si = pcram_segment(segs)
    best_dec = best_dec2 = 0
    for _ in range(a.rounds):
        n, secs = sh([zdecode, packed, str(si), "1"]).stdout.split()
        best_dec = max(best_dec, int(n) / float(secs))
        n, secs = sh([zdecode, packed, str(si), "1", "2"]).stdout.split()
        best_dec2 = max(best_dec2, int(n) / float(secs))
    def seq_read(image):
        best = 0
        for _ in range(a.rounds):
            with Mount(a.build, image) as m:
                fd = os.open(os.path.join(m.mnt, "pc.ram"), os.O_RDONLY)
                runs = extents(fd, os.fstat(fd).st_size)
                total = 0
                t0 = time.monotonic()
                for s, e in runs:
                    off = s
                    while off < e:
                        b = os.pread(fd, min(1 << 20, e - off), off)
                        total += len(b)
                        off += len(b)
                secs = time.monotonic() - t0
                os.close(fd)
            best = max(best, total / secs)
        return best, total

    best_seq, total = seq_read(packed)
    best_raw, _ = seq_read(a.image)
    print("\n2. sequential read of pc.ram data extents (%d MB decoded)" % (total // 10**6))
    print("   mount(packed) %.0f MB/s, single-thread ZSTD_decompressDCtx %.0f MB/s: ratio %.2fx "
          "(target >= 1.7)" % (best_seq / 1e6, best_dec / 1e6, best_seq / best_dec))
    print("   ceilings: 2-thread ZSTD_decompressDCtx in memory %.0f MB/s = %.2fx of one thread "
          "(no FUSE, no copy);" % (best_dec2 / 1e6, best_dec2 / best_dec))
    print("             mount(original, uncompressed) %.0f MB/s = %.2fx of one-thread decode "
          "(FUSE with no decoding at all); packed/original %.2fx"
          % (best_raw / 1e6, best_raw / best_dec, best_seq / best_raw))

    # ---- 3. random cold 4 KiB reads per frame size ----
    print("\n3. random 4 KiB cold reads of pc.ram (one per frame, fresh mount)")
    for fs in a.frame_sizes.split(","):
        p = os.path.join(work, "fs.packed")
        pack(a.build, a.image, p, a.level, fs)
        segs_f, chunks_f, frames_f = index(p)
        s = segs_f[pcram_segment(segs_f)]
        unit = s[3]
        targets = []
        with Mount(a.build, a.image) as orig:
            fo = os.open(os.path.join(orig.mnt, "pc.ram"), os.O_RDONLY)
            runs = extents(fo, s[1])
            os.close(fo)
        for k in range(s[6]):
            c = chunks_f[s[5] + k]
            for f in frames_f[c[2]:c[2] + c[3]]:
                if f[1] == 0:
                    continue
                lo, hi = f[3] * unit, (f[3] + f[4]) * unit
                pages = [(max(a_, lo), min(b_, hi)) for a_, b_ in runs if a_ < hi and b_ > lo]
                if pages:
                    x, y = random.choice(pages)
                    targets.append(random.randrange(x, y) // PAGE * PAGE)
        random.shuffle(targets)
        targets = targets[:a.samples]
        lat = []
        with Mount(a.build, p) as m:
            fd = os.open(os.path.join(m.mnt, "pc.ram"), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no kernel read-ahead
            for off in targets:
                t0 = time.perf_counter()
                os.pread(fd, PAGE, off)
                lat.append((time.perf_counter() - t0) * 1e6)
            os.close(fd)
        print("   frame %5s: %4d reads, p50 %6.0f us, p99 %6.0f us (target p99 <= 1000)"
              % (fs, len(lat), pct(lat, 50), pct(lat, 99)))

    # ---- 4. 16 readers, RSS ----
    cache = 64 * MiB
    with Mount(a.build, a.image) as orig, Mount(a.build, packed, ",cache_size=64M") as m:
        base_rss = m.rss_peak()
        pa, pb = os.path.join(orig.mnt, "pc.ram"), os.path.join(m.mnt, "pc.ram")
        size = os.path.getsize(pa)
        fa = os.open(pa, os.O_RDONLY)
        runs = extents(fa, size)
        bad = []
        t0 = time.monotonic()

        def reader(seed):
            rnd = random.Random(seed)
            fb = os.open(pb, os.O_RDONLY)
            for _ in range(400):
                s_, e_ = rnd.choice(runs)
                off = rnd.randrange(s_, e_) // PAGE * PAGE
                n = min(rnd.choice((PAGE, 32 * PAGE, 256 * PAGE)), size - off)
                if os.pread(fb, n, off) != os.pread(fa, n, off):
                    bad.append(off)
            os.close(fb)

        ts = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        secs = time.monotonic() - t0
        peak = m.rss_peak()
        os.close(fa)
    print("\n4. 16 concurrent readers, -o cache_size=64M: %s, %.1f s" %
          ("byte-exact" if not bad else "%d MISMATCHES" % len(bad), secs))
    print("   daemon peak RSS %.1f MiB (%.1f MiB after mount), limit cache_size + 32 MiB = "
          "%.0f MiB: %s" % (peak / MiB, base_rss / MiB, (cache + 32 * MiB) / MiB,
                            "ok" if peak <= cache + 32 * MiB else "OVER"))
    subprocess.run(["rm", "-rf", work])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
