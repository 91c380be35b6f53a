#!/usr/bin/env python3
"""Packed images (docs/packed-format.md) with the real tools and the real FUSE.

Run:  python3 tests/integration/test_packed.py [--build BUILD_DIR]
          [--fixtures FIXTURE_DIR] [-k SUBSTRING ...] [-v]
      (env MRAMFS_BUILD / MRAMFS_FIXTURES are used when the options are
      absent; defaults: <repo>/build and <repo>/build/fixtures)

Needs root (or a user allowed to FUSE-mount), /dev/fuse, fusermount3, the
built BUILD/fs/mramfs and BUILD/fs/mramfs-pack and the fixtures of
scripts/make-fixtures.py; a fixture that is missing is skipped.  The
fixture directory is only read: packed, unpacked and corrupted files are
made in a temporary directory.  The last line printed is "N passed, N
failed[, N skipped]".

For every fixture kind (mapped-ram q35/pc/5 GiB/aarch64, multifd+direct-io,
libvirt headers, a stream at an offset, the booted Linux guest saved live
with stale slots, legacy streams):
  * mramfs-pack IMAGE OUT, then --verify OUT;
  * mount(IMAGE) and mount(OUT): the same tree, sizes, st_blocks, the same
    SEEK_DATA/SEEK_HOLE extents of every file and the same bytes in every
    data extent (holes read as zeros in both by the extent walk), the same
    description except its "image" path;
  * --unpack OUT, then mount(unpacked) == mount(IMAGE) likewise, and for
    images without stale slots the unpacked file equals IMAGE byte for byte.
Then: a corrupt frame gives EIO for exactly the reads that touch it (and a
log line), a corrupt index or header refuses the mount and --verify with a
one-line error; 16 threads reading random ranges through a 1 MiB cache get
the original's bytes; the packed output does not depend on --threads.
Finally a fresh QEMU loads the unpacked image of four fixtures (mapped-ram,
the live Linux guest, legacy, libvirt) and must restore exactly the guest RAM
it restored from the original (NAME.restore.bin).
"""

import errno
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

import runner

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

CFG = {
    "build": os.path.join(REPO, "build"),
    "fixtures": os.path.join(REPO, "build", "fixtures"),
}

# name -> has stale slots (the unpacked file then differs from the original there)
FIXTURES = {
    "q35-512M-S": False,
    "pc-512M-S": False,
    "q35-5G-S": False,
    "aarch64-virt-1G-S": False,
    "q35-512M-S-multifd4-dio": False,
    "q35-512M-S-libvirt1M": False,
    "q35-512M-S-libvirt-unaligned": False,
    "q35-512M-S-offset": False,
    "linux-live": True,
    "q35-64G-S": False,
    "q35-512M-S-legacy": False,
    "linux-live-legacy": False,
}
MOUNT_TIMEOUT = 60
TIMEOUT = 600
MiB = 1 << 20
PAGE = 4096
PACK_DIR = None  # temporary directory, made by main()
PACKED = {}      # fixture name -> packed path (made once)


def tool(name):
    return os.path.join(CFG["build"], "fs", name)


def run(argv, timeout=TIMEOUT, **kw):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("timed out: %s" % " ".join(map(str, argv))) from e


def fixture(name):
    path = os.path.join(CFG["fixtures"], name + ".img")
    meta = os.path.join(CFG["fixtures"], name + ".json")
    if not os.path.exists(path) or not os.path.exists(meta):
        raise unittest.SkipTest("fixture %s missing" % name)
    with open(meta) as f:
        return path, json.load(f)


def offset_args(meta):
    """(pack options, mount options) for a stream at an offset behind no libvirt header."""
    if meta.get("libvirt") or not meta.get("stream_offset"):
        return [], []
    return ["--offset", str(meta["stream_offset"])], ["stream_offset=%d" % meta["stream_offset"]]


def packed(name):
    if name not in PACKED:
        path, meta = fixture(name)
        out = os.path.join(PACK_DIR, name + ".packed")
        r = run([tool("mramfs-pack"), "--quiet"] + offset_args(meta)[0] + [path, out])
        if r.returncode != 0:
            raise AssertionError("pack %s: %s" % (name, r.stderr.decode()))
        PACKED[name] = out
    return PACKED[name]


class Mount:
    def __init__(self, image, options=(), foreground=False):
        self.mnt = tempfile.mkdtemp(prefix="mramfs-packed-", dir=PACK_DIR)
        opts = ["index="] + list(options)   # legacy: index every time, keep nothing
        self.argv = [tool("mramfs"), image, self.mnt, "-o", ",".join(opts)]
        self.proc = None
        self.log = None
        if foreground:
            self.log = open(os.path.join(self.mnt + ".log"), "w+")
            self.proc = subprocess.Popen(self.argv + ["-f"], stdout=subprocess.DEVNULL,
                                         stderr=self.log)
            for _ in range(MOUNT_TIMEOUT * 20):
                if os.path.ismount(self.mnt):
                    break
                if self.proc.poll() is not None:
                    raise AssertionError("mount of %s failed" % image)
                threading.Event().wait(0.05)
        else:
            r = run(self.argv, timeout=MOUNT_TIMEOUT)
            if r.returncode != 0:
                os.rmdir(self.mnt)
                raise AssertionError("mount of %s failed: %s" % (image, r.stderr.decode()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for argv in (["fusermount3", "-u", self.mnt], ["fusermount3", "-uz", self.mnt]):
            if not os.path.ismount(self.mnt):
                break
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc is not None:
            self.proc.wait(timeout=20)
        if self.log is not None:
            self.log.close()
        os.rmdir(self.mnt)

    def logged(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


def tree(root):
    """relative path -> (kind, size, st_blocks)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            kind = "d" if os.path.isdir(p) else "f"
            out[os.path.relpath(p, root)] = (kind, st.st_size if kind == "f" else 0,
                                             st.st_blocks if kind == "f" else 0)
    return out


def extents(fd, size):
    """The data extents of fd, from SEEK_DATA/SEEK_HOLE."""
    runs, off = [], 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        runs.append((start, end))
        off = end
    return runs


def pread_full(fd, off, n):
    out = b""
    while len(out) < n:
        b = os.pread(fd, n - len(out), off + len(out))
        if not b:
            break
        out += b
    return out


class PackedTestCase(unittest.TestCase):
    def assert_same_mounts(self, a, b, what):
        ta, tb = tree(a), tree(b)
        self.assertEqual(sorted(ta), sorted(tb), what + ": file names")
        for rel, (kind, size, blocks) in sorted(ta.items()):
            if rel != ".mramfs.json":   # its "image" path differs, so its size does
                self.assertEqual(tb[rel], (kind, size, blocks), "%s: %s stat" % (what, rel))
            if kind != "f":
                continue
            pa, pb = os.path.join(a, rel), os.path.join(b, rel)
            if rel == ".mramfs.json":
                ja, jb = json.load(open(pa)), json.load(open(pb))
                ja.pop("image"), jb.pop("image")
                self.assertEqual(ja, jb, what + ": description")
                continue
            fa, fb = os.open(pa, os.O_RDONLY), os.open(pb, os.O_RDONLY)
            try:
                ea, eb = extents(fa, size), extents(fb, size)
                self.assertEqual(ea, eb, "%s: %s extents" % (what, rel))
                for start, end in ea:
                    for off in range(start, end, 4 * MiB):
                        n = min(4 * MiB, end - off)
                        if pread_full(fa, off, n) != pread_full(fb, off, n):
                            self.fail("%s: %s differs in [%#x, +%#x)" % (what, rel, off, n))
            finally:
                os.close(fa)
                os.close(fb)


class RoundTrip(PackedTestCase):
    """One test method per fixture (made in build_suite)."""

    def roundtrip(self, name):
        path, meta = fixture(name)
        out = packed(name)
        mount_opts = offset_args(meta)[1]
        with open(out, "rb") as f:
            self.assertEqual(f.read(8), b"MRAMPACK")
        r = run([tool("mramfs-pack"), "--verify", out])
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertRegex(r.stdout.decode(), r"^%s: ok, \d+ frames" % re.escape(out))
        with Mount(path, mount_opts) as a, Mount(out, mount_opts) as b:
            self.assert_same_mounts(a.mnt, b.mnt, name + " packed")
        back = os.path.join(PACK_DIR, name + ".unpacked")
        r = run([tool("mramfs-pack"), "--quiet", "--unpack", out, back])
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        try:
            self.assertEqual(os.path.getsize(back), os.path.getsize(path))
            # sparse: no more blocks than the original holds (plus rounding per region)
            self.assertLessEqual(os.stat(back).st_blocks,
                                 os.stat(path).st_blocks + 64 * 8, name + ": not sparse")
            with Mount(path, mount_opts) as a, Mount(back, mount_opts) as b:
                self.assert_same_mounts(a.mnt, b.mnt, name + " unpacked")
            if not FIXTURES[name]:
                r = run(["cmp", path, back])
                self.assertEqual(r.returncode, 0, name + ": unpacked differs: "
                                 + r.stdout.decode())
        finally:
            os.unlink(back)


class Damage(PackedTestCase):
    NAME = "linux-live"

    def setUp(self):
        self.path, self.meta = fixture(self.NAME)
        self.out = packed(self.NAME)

    def index(self):
        """(index offset, segments, chunks, frames) parsed with the spec's layout (docs §2)."""
        with open(self.out, "rb") as f:
            head = f.read(128)
            (index_offset, index_size) = struct.unpack_from("<QQ", head, 40)
            f.seek(index_offset)
            idx = f.read(index_size)
        ns, nc, nf = struct.unpack_from("<IxxxxQQ", idx, 0)
        segs = [struct.unpack_from("<QQIIQQQ", idx, 32 + 48 * i) for i in range(ns)]
        base = 32 + 48 * ns
        chunks = [struct.unpack_from("<QQQIIQQ", idx, base + 48 * i) for i in range(nc)]
        base += 48 * nc
        frames = [struct.unpack_from("<QIIQII", idx, base + 32 * i) for i in range(nf)]
        return index_offset, segs, chunks, frames

    def copy_with(self, patches, name):
        dst = os.path.join(PACK_DIR, name)
        shutil.copyfile(self.out, dst)
        with open(dst, "r+b") as f:
            for off, xor in patches:
                f.seek(off)
                b = f.read(1)
                f.seek(off)
                f.write(bytes([b[0] ^ xor]))
        return dst

    def pcram_frame(self):
        """A stored frame near the middle of pc.ram (the largest page segment)."""
        _, segs, chunks, frames = self.index()
        ram = max((s for s in segs if s[2] == 1), key=lambda s: s[1])
        mine = []
        for c in chunks[ram[5]:ram[5] + ram[6]]:
            mine += [f for f in frames[c[2]:c[2] + c[3]] if f[1] > 0]
        self.assertTrue(mine)
        return mine[len(mine) // 2], ram

    def test_corrupt_frame_eio(self):
        (offset, csize, _usize, first_unit, n_units, _sum), ram = self.pcram_frame()
        unit = ram[3]
        bad = self.copy_with([(offset + csize // 2, 0x55)], "frame.packed")
        r = run([tool("mramfs-pack"), "--verify", bad])
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr.decode(), r"^mramfs-pack: %s: packed frame \d+ at 0x[0-9a-f]+: "
                         r".*\n$" % re.escape(bad))
        lo, hi = first_unit * unit, (first_unit + n_units) * unit
        with Mount(self.path) as a, Mount(bad, foreground=True) as b:
            ga = os.open(os.path.join(a.mnt, "pc.ram"), os.O_RDONLY)
            gb = os.open(os.path.join(b.mnt, "pc.ram"), os.O_RDONLY)
            try:
                inside = [max(s, lo) for s, e in extents(ga, ram[1]) if s < hi and e > lo]
                self.assertTrue(inside)
                with self.assertRaises(OSError) as cm:
                    os.pread(gb, PAGE, inside[0])
                self.assertEqual(cm.exception.errno, errno.EIO)
                # outside the frame every byte is still there
                for off in (0, lo - 8 * PAGE, hi, hi + 64 * PAGE):
                    if 0 <= off and off + 8 * PAGE <= ram[1]:
                        self.assertEqual(os.pread(gb, 8 * PAGE, off),
                                         pread_full(ga, off, 8 * PAGE), hex(off))
            finally:
                os.close(ga)
                os.close(gb)
            self.assertRegex(b.logged(), r"read of pc.ram at 0x[0-9a-f]+: packed frame \d+")

    def refused(self, bad, why):
        mnt = tempfile.mkdtemp(dir=PACK_DIR)
        try:
            r = run([tool("mramfs"), bad, mnt], timeout=MOUNT_TIMEOUT)
            self.assertEqual(r.returncode, 1, r.stderr.decode())
            err = r.stderr.decode()
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(bad, err)
            self.assertIn(why, err)
            self.assertFalse(os.path.ismount(mnt))
        finally:
            os.rmdir(mnt)
        r = run([tool("mramfs-pack"), "--verify", bad])
        self.assertEqual(r.returncode, 1)
        self.assertIn(why, r.stderr.decode())
        self.assertEqual(r.stderr.decode().count("\n"), 1)

    def test_corrupt_index(self):
        index_offset = self.index()[0]
        self.refused(self.copy_with([(index_offset + 40, 1)], "index.packed"),
                     "index checksum mismatch")

    def test_corrupt_header(self):
        self.refused(self.copy_with([(33, 1)], "header.packed"), "header checksum mismatch")

    def test_truncated(self):
        dst = os.path.join(PACK_DIR, "cut.packed")
        shutil.copyfile(self.out, dst)
        os.truncate(dst, os.path.getsize(dst) - 100)
        self.refused(dst, "truncated")

    def test_unknown_version(self):
        import hashlib
        dst = self.copy_with([], "v2.packed")
        with open(dst, "r+b") as f:
            head = bytearray(f.read(128))
            head[8] = 2
            head[112:128] = hashlib.sha256(bytes(head[:112])).digest()[:16]
            f.seek(0)
            f.write(head)
        self.refused(dst, "packed format version 2 is not supported (this mramfs reads 1)")

    def test_concurrent_readers_small_cache(self):
        """16 threads, random ranges of pc.ram, 1 MiB of cache: the original's bytes."""
        with Mount(self.path) as a, Mount(self.out, ["cache_size=1M"]) as b:
            pa, pb = os.path.join(a.mnt, "pc.ram"), os.path.join(b.mnt, "pc.ram")
            size = os.path.getsize(pa)
            fa = os.open(pa, os.O_RDONLY)
            data = extents(fa, size)
            errors = []

            def reader(seed):
                rnd = random.Random(seed)
                fb = os.open(pb, os.O_RDONLY)
                try:
                    for _ in range(150):
                        s, e = rnd.choice(data)
                        off = rnd.randrange(s, e) // PAGE * PAGE
                        n = min(rnd.choice((PAGE, 8 * PAGE, 64 * PAGE)), size - off)
                        # fadvise: drop what an earlier read left in the page cache
                        os.posix_fadvise(fb, off, n, os.POSIX_FADV_DONTNEED)
                        if pread_full(fb, off, n) != pread_full(fa, off, n):
                            errors.append((seed, off, n))
                finally:
                    os.close(fb)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            os.close(fa)
            self.assertEqual(errors, [])

    def test_threads_do_not_change_output(self):
        outs = []
        for threads in ("1", "2", "3"):
            o = os.path.join(PACK_DIR, "t%s.packed" % threads)
            r = run([tool("mramfs-pack"), "--quiet", "--threads", threads, self.path, o])
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            outs.append(o)
        r = run(["cmp", outs[0], outs[1]])
        self.assertEqual(r.returncode, 0)
        r = run(["cmp", outs[0], outs[2]])
        self.assertEqual(r.returncode, 0)
        r = run(["cmp", outs[0], self.out])   # the default is one thread per CPU
        self.assertEqual(r.returncode, 0)
        for o in outs:
            os.unlink(o)

    def test_progress_on_terminal_only(self):
        """A progress line with rate and ETA on a terminal, cleared at the end; nothing
        without one (or with --quiet)."""
        o = os.path.join(PACK_DIR, "tty.packed")
        for args, want in (([], True), (["--quiet"], False)):
            master, slave = os.openpty()
            p = subprocess.Popen([tool("mramfs-pack"), "--force"] + args + [self.path, o],
                                 stdout=subprocess.PIPE, stderr=slave)
            os.close(slave)
            seen = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            os.close(master)
            p.communicate(timeout=TIMEOUT)
            self.assertEqual(p.returncode, 0)
            text = seen.decode(errors="replace")
            if want:
                self.assertRegex(text, r"mramfs-pack: +\d+% of [\d.]+ MB packed, [\d.]+ MB/s, "
                                 r"ETA [\d:-]+")
                self.assertTrue(text.endswith("\r\x1b[K"), repr(text[-20:]))
            else:
                self.assertEqual(text, "")
        r = run([tool("mramfs-pack"), "--force", self.path, o])   # not a terminal
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""))
        os.unlink(o)

    def test_bad_options(self):
        for args, why in ((["--level", "30"], "level"), (["--frame-size", "1K"], "frame size"),
                          (["--frame-size", "x"], "bad --frame-size")):
            o = os.path.join(PACK_DIR, "bad.packed")
            r = run([tool("mramfs-pack")] + args + [self.path, o])
            self.assertEqual(r.returncode, 1)
            self.assertIn(why, r.stderr.decode())
            self.assertFalse(os.path.exists(o))
            self.assertEqual([n for n in os.listdir(PACK_DIR) if n.startswith("bad.packed")], [])


class QemuRestore(unittest.TestCase):
    """Unpack, load the unpacked image into a fresh QEMU with the generator's own restore()
    (scripts/make-fixtures.py: same machine, -incoming defer, pmemsave of pc.ram's ranges)
    and compare with NAME.restore.bin, what QEMU restored from the original."""

    def restore_compare(self, name):
        path, meta = fixture(name)
        if not meta.get("restore"):
            raise unittest.SkipTest("%s has no restore oracle" % name)
        if shutil.which("qemu-system-x86_64") is None:
            raise unittest.SkipTest("qemu-system-x86_64 not installed")
        import importlib.util
        import pathlib
        spec_ = importlib.util.spec_from_file_location(
            "make_fixtures", os.path.join(REPO, "scripts", "make-fixtures.py"))
        mf = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mf)
        spec = [s_ for s_ in mf.SPECS if s_.name == name][0]
        work = pathlib.Path(tempfile.mkdtemp(prefix="restore-", dir=PACK_DIR))
        back = work / (name + ".img")
        r = run([tool("mramfs-pack"), "--quiet", "--unpack", packed(name), str(back)])
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        b = mf.Build(spec, work, work)
        b.img = back
        b.restore_bin = work / "restore.bin"

        class Image:
            stream_offset = meta.get("stream_offset") or 0
        ranges = mf.restore(b, Image, meta["lowmem"])
        self.assertEqual([(g["ram_offset"], g["gpa"], g["length"]) for g in ranges],
                         [(g["ram_offset"], g["gpa"], g["length"])
                          for g in meta["restore"]["ranges"]])
        want = os.path.join(CFG["fixtures"], meta["restore"]["file"])
        r = run(["cmp", str(b.restore_bin), want])
        self.assertEqual(r.returncode, 0, "%s: QEMU restored other RAM from the unpacked image: "
                         "%s" % (name, r.stdout.decode()))
        shutil.rmtree(work, ignore_errors=True)


RESTORE_FIXTURES = ["q35-512M-S", "linux-live", "q35-512M-S-legacy",
                    "q35-512M-S-libvirt-unaligned"]


def build_suite(filters):
    suite = unittest.TestSuite()
    for name in FIXTURES:
        method = "test_roundtrip_" + name.replace("-", "_")
        setattr(RoundTrip, method, lambda self, n=name: self.roundtrip(n))
    for name in RESTORE_FIXTURES:
        method = "test_qemu_restore_" + name.replace("-", "_")
        setattr(QemuRestore, method, lambda self, n=name: self.restore_compare(n))
    loader = unittest.TestLoader()
    for cls in (RoundTrip, Damage, QemuRestore):
        for t in loader.loadTestsFromTestCase(cls):
            if not filters or any(f in t.id() for f in filters):
                suite.addTest(t)
    return suite


def main(argv=None):
    global PACK_DIR
    a = runner.parse_args(__doc__.split("\n")[0], CFG, argv)
    print("mramfs packed integration: build=%s fixtures=%s" % (CFG["build"], CFG["fixtures"]))
    PACK_DIR = tempfile.mkdtemp(prefix="mramfs-packed-")
    return runner.run(build_suite(a.k), a.v, cleanup=lambda: shutil.rmtree(PACK_DIR, True))


if __name__ == "__main__":
    sys.exit(main())
