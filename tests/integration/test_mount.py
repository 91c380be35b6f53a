#!/usr/bin/env python3
"""mramfs integration tests: mount real fixture images with the real FUSE.

Run:  python3 tests/integration/test_mount.py [--build BUILD_DIR]
          [--fixtures FIXTURE_DIR] [-k SUBSTRING ...] [-v]
      (env MRAMFS_BUILD / MRAMFS_FIXTURES are used when the options are
      absent; defaults: <repo>/build and <repo>/build/fixtures)

Needs root (or a user allowed to FUSE-mount), /dev/fuse, fusermount3, the
built binaries BUILD/fs/mramfs and BUILD/fs/mramfs-inspect, and the
fixtures made by scripts/make-fixtures.py (NAME.img + NAME.json).  Tests of
a fixture that is missing are skipped with the reason printed.  The last
line printed is "N passed, N failed[, N skipped]"; the exit status is
non-zero if anything failed.

The expected data comes from three independent oracles:
  * NAME.json written by the fixture generator (block table from QEMU's
    `info ramblock`, loader pattern pages, stale-slot count, restore dump),
  * refreader.py, a minimal Python reader of the image (bitmap runs, page
    bytes), written from the format notes, not from mramfs' C code,
  * NAME.restore.bin: pc.ram as a fresh QEMU saw it after loading the image.
"""

import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

import runner

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import refreader  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))

CFG = {
    "build": os.path.join(REPO, "build"),
    "fixtures": os.path.join(REPO, "build", "fixtures"),
    "test_timeout": 600,     # watchdog per test method (seconds)
}

# mapped-ram fixtures mounted and checked in full (q35-64G-S / dense-1G are
# only made on request by the generator; they are skipped when absent)
MAPPED_FIXTURES = [
    "q35-512M-S", "pc-512M-S", "q35-5G-S", "q35-512M-S-multifd4",
    "q35-512M-S-multifd4-dio", "q35-512M-S-libvirt1M",
    "q35-512M-S-libvirt-unaligned", "q35-512M-S-offset", "linux-live",
    "q35-64G-S", "dense-1G",
]
BASE_FIXTURE = "q35-512M-S"      # used for the cheap / crafted-input tests
MiB = 1 << 20
GiB = 1 << 30
CHUNK = 8 * MiB
BIG_BLOCK = 8 * GiB              # blocks above this are compared sparsely
MOUNT_TIMEOUT = 20
UMOUNT_TIMEOUT = 10


def mramfs_bin():
    return os.path.join(CFG["build"], "fs", "mramfs")


def inspect_bin():
    return os.path.join(CFG["build"], "fs", "mramfs-inspect")


def fixture_path(name, ext):
    return os.path.join(CFG["fixtures"], name + ext)


# ---------------------------------------------------------------------------
# idstr -> path rule (interface.md "Mount contents")
# ---------------------------------------------------------------------------

def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    return h


def encode_component(comp):
    out = bytearray()
    for i, b in enumerate(comp):
        if b == 0x25 or b < 0x20 or b == 0x7f or (i == 0 and b == 0x2e):
            out += b"%%%02X" % b
        else:
            out.append(b)
    return bytes(out)


def map_paths(idstrs):
    """idstr (bytes) list in stream order -> list of relative paths (str)."""
    files, dirs, out = set(), set(), []
    for idstr in idstrs:
        comps = []
        for c in idstr.split(b"/"):
            if not c:
                continue
            e = encode_component(c)
            if len(e) > 255:
                e = e[:238] + b"~" + (b"%016x" % fnv1a64(idstr))
            comps.append(e)
        if not comps:
            comps = [b"%00"]    # not reachable with real QEMU idstrs
        path = b"/".join(comps)
        k = 1
        cand = path
        while cand in files or cand in dirs or any(
                b"/".join(comps[:i]) in files for i in range(1, len(comps))):
            k += 1
            cand = path + b"~%d" % k
            if k > 1000:
                break
        files.add(cand)
        parts = cand.split(b"/")
        for i in range(1, len(parts)):
            dirs.add(b"/".join(parts[:i]))
        out.append(os.fsdecode(cand))
    return out


# ---------------------------------------------------------------------------
# process / mount helpers
# ---------------------------------------------------------------------------

def run(argv, timeout=60, **kw):
    """subprocess.run with a timeout; never raises on exit status."""
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("command timed out after %ss: %s"
                             % (timeout, " ".join(map(str, argv)))) from e


def pids_mentioning(text):
    """pids whose command line contains text (used to find our daemons)."""
    out = []
    needle = text.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cl = f.read()
            with open("/proc/%s/stat" % d, "rb") as f:
                st = f.read()
        except OSError:
            continue
        if needle in cl and b") Z" not in st:
            out.append(int(d))
    return out


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            st = f.read()
    except OSError:
        return False
    return b") Z" not in st and b") X" not in st


def wait_gone(pid, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def mountinfo_entry(mnt):
    real = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = parts[4].replace("\\040", " ")
            if mp == real:
                sep = parts.index("-")
                return {"mount_options": parts[5], "fstype": parts[sep + 1],
                        "source": parts[sep + 2].replace("\\040", " "),
                        "super_options": parts[sep + 3]}
    return None


def force_unmount(mnt):
    if not os.path.ismount(mnt):
        return True
    for argv in (["fusermount3", "-u", mnt], ["umount", mnt],
                 ["umount", "-l", mnt], ["fusermount3", "-uz", mnt]):
        try:
            subprocess.run(argv, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=UMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        if not os.path.ismount(mnt):
            return True
    return False


ACTIVE = {}    # mnt -> Mount, for the watchdog and atexit cleanup


class Mount:
    """A mramfs mount in a fresh temp dir (daemonized unless foreground)."""

    def __init__(self, image, options="", extra=(), tag="mnt"):
        self.image = image
        self.options = options
        self.extra = list(extra)
        self.mnt = tempfile.mkdtemp(prefix="mramfs-%s-" % tag)
        self.dev = None
        self.pid = None

    def argv(self):
        a = [mramfs_bin(), self.image, self.mnt]
        if self.options:
            a += ["-o", self.options]
        return a + self.extra

    def mount(self):
        t0 = time.monotonic()
        r = run(self.argv(), timeout=MOUNT_TIMEOUT)
        self.mount_seconds = time.monotonic() - t0
        if r.returncode != 0:
            self.cleanup()
            raise AssertionError("mount of %s failed (exit %s): %s"
                                 % (self.image, r.returncode,
                                    r.stderr.decode(errors="replace").strip()))
        # the daemon returns only once the mount is usable: no polling here
        if not os.path.ismount(self.mnt):
            self.cleanup()
            raise AssertionError("mramfs %s returned 0 but %s is not a "
                                 "mount point" % (self.image, self.mnt))
        self.dev = os.stat(self.mnt).st_dev
        pids = pids_mentioning(self.mnt)
        self.pid = pids[0] if len(pids) == 1 else None
        ACTIVE[self.mnt] = self
        return self

    def path(self, rel):
        return os.path.join(self.mnt, rel)

    def unmount(self):
        """Regular unmount (fusermount3 -u); returns the CompletedProcess."""
        r = run(["fusermount3", "-u", self.mnt], timeout=UMOUNT_TIMEOUT)
        return r

    def cleanup(self):
        ok = force_unmount(self.mnt)
        ACTIVE.pop(self.mnt, None)
        if ok:
            try:
                os.rmdir(self.mnt)
            except OSError:
                pass

    def abort(self):
        """Watchdog: abort the FUSE connection so blocked syscalls return."""
        if self.dev is not None:
            p = "/sys/fs/fuse/connections/%d/abort" % os.minor(self.dev)
            try:
                with open(p, "w") as f:
                    f.write("1")
            except OSError:
                pass


class Watchdog(threading.Thread):
    """Per-test deadline: on expiry abort our FUSE connections (a hung
    read then fails with ENOTCONN instead of blocking the suite forever)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.deadline = None
        self.label = None
        self.lock = threading.Lock()

    def arm(self, seconds, label):
        with self.lock:
            self.deadline = time.monotonic() + seconds
            self.label = label

    def disarm(self):
        with self.lock:
            self.deadline = None

    def run(self):
        while True:
            time.sleep(1)
            with self.lock:
                dl, label = self.deadline, self.label
            if dl is not None and time.monotonic() > dl:
                print("\nWATCHDOG: %s exceeded its time limit; aborting "
                      "FUSE connections" % label, file=sys.stderr, flush=True)
                for m in list(ACTIVE.values()):
                    m.abort()
                    if m.pid:
                        try:
                            os.kill(m.pid, 9)
                        except OSError:
                            pass
                with self.lock:
                    self.deadline = time.monotonic() + 60


WATCHDOG = Watchdog()


# ---------------------------------------------------------------------------
# data helpers
# ---------------------------------------------------------------------------

def pread_full(fd, off, n):
    out = bytearray()
    while n > 0:
        b = os.pread(fd, min(n, 64 * MiB), off)
        if not b:
            break
        out += b
        off += len(b)
        n -= len(b)
    return bytes(out)


def first_diff(a, b):
    n = min(len(a), len(b))
    step = 1 << 16
    lo = 0
    while lo < n:
        hi = min(n, lo + step)
        if a[lo:hi] != b[lo:hi]:
            for i in range(lo, hi):
                if a[i] != b[i]:
                    return i
        lo = hi
    return -1 if len(a) == len(b) else n


def pattern_page(a, n, tag):
    """Loader pattern page at GPA a, page n of its blob (fixture-json.md)."""
    hdr = ("MRFIX tag=%s gpa=0x%016x page=%d" % (tag, a, n)).encode()
    hdr = hdr.ljust(63, b" ")[:63] + b"\n"
    return hdr + struct.pack("<504Q", *range(a + 64, a + 4096, 8))


def pattern_bytes(p):
    return b"".join(pattern_page(p["gpa"] + i * 4096, i, p["tag"])
                    for i in range(p["pages"]))


def data_map(fd, size):
    """[(start, end)] data extents via SEEK_DATA/SEEK_HOLE."""
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h))
        if h <= d:
            raise AssertionError("SEEK_HOLE(%#x) returned %#x" % (d, h))
        off = h
    return out


def merge(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def parse_offset_option(opts):
    for o in (opts or "").split(","):
        if o.startswith("offset="):
            return int(o[7:], 0)
    return None


def round_up(x, a):
    return (x + a - 1) // a * a


def sparse_copy(src, dst):
    r = run(["cp", "--sparse=always", src, dst], timeout=300)
    if r.returncode != 0:
        raise AssertionError("cp %s failed: %s" % (src, r.stderr.decode()))


# ---------------------------------------------------------------------------
# result accounting: "N passed, N failed, N skipped"
# ---------------------------------------------------------------------------

class CountingResult(runner.CountingResult):
    """Counts passes, and arms the hang watchdog around every test."""

    def startTest(self, test):
        WATCHDOG.arm(CFG["test_timeout"], test.id())
        super().startTest(test)

    def stopTest(self, test):
        WATCHDOG.disarm()
        super().stopTest(test)


# ---------------------------------------------------------------------------
# per-fixture mounted tests
# ---------------------------------------------------------------------------

class FixtureTests(unittest.TestCase):
    """Mounted once per fixture (setUpClass); generated per fixture name."""

    NAME = None
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.skip_reason = None
        cls.setup_error = None
        cls.mount = None
        cls.ref = None
        img = fixture_path(cls.NAME, ".img")
        js = fixture_path(cls.NAME, ".json")
        if not (os.path.exists(img) and os.path.exists(js)):
            cls.skip_reason = "fixture %s missing (%s)" % (
                cls.NAME, img if not os.path.exists(img) else js)
            return
        WATCHDOG.arm(120, "setUpClass of " + cls.NAME)
        try:
            with open(js) as f:
                cls.fx = json.load(f)
            cls.image = img
            cls.opts = cls.fx.get("mount_options") or ""
            cls.offset = parse_offset_option(cls.opts)
            cls.ref = refreader.Image(img, cls.offset)
            cls.pcram = cls.ref.block(b"pc.ram")
            cls.paths = dict(zip([b.idstr for b in cls.ref.blocks],
                                 map_paths([b.idstr for b in
                                            cls.ref.blocks])))
            cls.mount = Mount(img, cls.opts, tag=cls.NAME).mount()
            cls.tmp = tempfile.mkdtemp(prefix="mramfs-t-%s-" % cls.NAME)
            os.listdir(cls.mount.mnt)
        except Exception:
            cls.setup_error = traceback.format_exc()
            if cls.mount is not None:
                cls.mount.cleanup()
                cls.mount = None

    @classmethod
    def tearDownClass(cls):
        if cls.mount is not None:
            cls.mount.cleanup()
        if cls.ref is not None:
            cls.ref.close()
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        if self.skip_reason:
            self.skipTest(self.skip_reason)
        if self.setup_error:
            self.fail("[%s] setup failed:\n%s" % (self.NAME, self.setup_error))

    # -- helpers ------------------------------------------------------------
    def where(self, blk=None, off=None):
        s = "[%s]" % self.NAME
        if blk is not None:
            s += " block %r" % (blk.name if hasattr(blk, "name") else blk)
        if off is not None:
            s += " offset %#x" % off
        return s

    def bpath(self, blk):
        return self.mount.path(self.paths[blk.idstr])

    def open_block(self, blk):
        return os.open(self.bpath(blk), os.O_RDONLY)

    def assert_bytes(self, got, exp, blk, off, what="bytes"):
        if got == exp:
            return
        i = first_diff(got, exp)
        self.fail("%s: %s differ at %#x (read %d bytes, expected %d): "
                  "got %s expected %s"
                  % (self.where(blk, off + max(i, 0)), what, off + i,
                     len(got), len(exp), got[i:i + 16].hex(),
                     exp[i:i + 16].hex()))

    def read_compare(self, fd, blk, off, length):
        """Read [off, off+length) through the mount in CHUNKs and compare
        with refreader's expected content."""
        end = off + length
        while off < end:
            n = min(CHUNK, end - off)
            got = pread_full(fd, off, n)
            self.assert_bytes(got, self.ref.read(blk, off, n), blk, off)
            off += n

    def mount_json(self):
        with open(self.mount.path(".mramfs.json"), "rb") as f:
            return json.loads(f.read())

    def fx_blocks(self):
        return [(b["idstr"], b["used_length"]) for b in self.fx["ramblocks"]]

    # -- 1. tree and /.mramfs.json -------------------------------------------
    def test_01_tree_matches_block_table(self):
        mnt = self.mount.mnt
        found = {}
        for root, dirs, files in os.walk(mnt):
            rel_root = os.path.relpath(root, mnt)
            st = os.lstat(root)
            self.assertTrue(stat.S_ISDIR(st.st_mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o555,
                             "%s: dir %s mode %o" % (self.where(), rel_root,
                                                      st.st_mode))
            for fn in files:
                rel = os.path.normpath(os.path.join(rel_root, fn))
                if rel == ".mramfs.json":
                    continue
                if rel in ("physmem.raw", "physmem.elf"):
                    continue  # the guest-physical views: test_physmem.py, test_elfcore.py
                if rel == "cpus.json":
                    continue  # the vCPU registers: test_elfcore.py
                if rel == "vmdesc.json":
                    continue  # test_01_vmdesc
                if rel in (".libvirt/domain.xml", ".libvirt/cookie.xml"):
                    # libvirt images only; contents checked below
                    self.assertIsNotNone(self.fx.get("libvirt"), "%s: %s without a libvirt "
                                         "header" % (self.where(), rel))
                    continue
                st = os.lstat(os.path.join(root, fn))
                self.assertTrue(stat.S_ISREG(st.st_mode),
                                "%s: %s not a regular file" % (self.where(),
                                                               rel))
                found[rel] = st.st_size
        # every real save has vCPU state; the ELF core comes with the guest-physical view
        self.assertTrue(os.path.isfile(self.mount.path("cpus.json")), self.where())
        self.assertEqual(os.path.isfile(self.mount.path("physmem.elf")),
                         os.path.isfile(self.mount.path("physmem.raw")), self.where())
        idstrs = [i for i, _ in self.fx_blocks()]
        expected_paths = map_paths([i.encode() for i in idstrs])
        self.assertEqual(sorted(found), sorted(expected_paths),
                         "%s: file tree != ramblocks of %s.json"
                         % (self.where(), self.NAME))
        for (idstr, used), p in zip(self.fx_blocks(), expected_paths):
            self.assertEqual(found[p], used, "%s: st_size of %s"
                             % (self.where(idstr), p))
        # the oracle reader agrees with QEMU's info ramblock
        self.assertEqual([(b.name, b.used_length) for b in self.ref.blocks],
                         self.fx_blocks(),
                         "%s: refreader block table != %s.json ramblocks"
                         % (self.where(), self.NAME))

    def test_01_vmdesc(self):
        """vmdesc.json is QEMU's VM description: the JSON closing the file, behind 0x06 and
        its be32 length (qemu-save-formats.md §3.4)."""
        with open(self.mount.path("vmdesc.json"), "rb") as f:
            got = f.read()
        with open(self.image, "rb") as f:
            f.seek(-(len(got) + 5), os.SEEK_END)
            tail = f.read()
        self.assertEqual(tail[0], 0x06, self.where())
        self.assertEqual(struct.unpack(">I", tail[1:5])[0], len(got), self.where())
        self.assertEqual(tail[5:], got, self.where())
        desc = json.loads(got)
        self.assertIn("devices", desc, self.where())
        self.assertIn("cpu", [d["name"] for d in desc["devices"]], self.where())

    def test_01_libvirt_texts(self):
        """.libvirt/domain.xml and cookie.xml hold the header's texts, up to their NUL."""
        lv = self.fx.get("libvirt")
        present = os.path.isdir(self.mount.path(".libvirt"))
        self.assertEqual(present, lv is not None, "%s: .libvirt/ presence" % self.where())
        if lv is None:
            return
        for name, want in (("domain.xml", lv["xml"]), ("cookie.xml", lv.get("cookie"))):
            p = self.mount.path(os.path.join(".libvirt", name))
            if want is None:
                self.assertFalse(os.path.exists(p), "%s: %s without a cookie"
                                 % (self.where(), name))
                continue
            with open(p, "rb") as f:
                self.assertEqual(f.read(), want.encode(), "%s: %s" % (self.where(), name))

    def test_01_mramfs_json(self):
        j = self.mount_json()
        fx = self.fx
        w = self.where()
        self.assertEqual(j["format"], "mapped-ram", w)
        self.assertEqual(j["image"], self.image, w)
        self.assertEqual(j["container"],
                         "libvirt" if fx.get("libvirt") else "qemu", w)
        self.assertEqual(j["stream_offset"], fx["stream_offset"], w)
        self.assertEqual(j["stream_offset"], self.ref.stream_offset, w)
        self.assertEqual(j["file_size"], os.stat(self.image).st_size, w)
        self.assertEqual(j["machine_type"], fx["machine_type"], w)
        self.assertEqual(j["machine_type"], self.ref.machine_type, w)
        self.assertEqual(j["page_size"], 4096, w)
        self.assertIn("mapped-ram", j["capabilities"], w)
        self.assertEqual(sorted(j["capabilities"]),
                         sorted(self.ref.capabilities), w)
        self.assertIs(j["complete"], True, w)
        self.assertIs(j["vmdesc"], True, w)
        if fx.get("libvirt"):
            lv = j["libvirt"]
            self.assertIsInstance(lv, dict, w)
            for k in ("format", "was_running", "version", "data_len"):
                self.assertEqual(lv[k], fx["libvirt"][k],
                                 "%s libvirt.%s" % (w, k))
            self.assertEqual(lv["format_name"], "sparse", w)
        else:
            self.assertIsNone(j["libvirt"], w)
        got = [(b["idstr"], b["size"]) for b in j["blocks"]]
        self.assertEqual(got, self.fx_blocks(), "%s: blocks" % w)
        for b, rb in zip(j["blocks"], self.ref.blocks):
            wb = self.where(rb)
            self.assertEqual(b["path"], self.paths[rb.idstr], wb)
            self.assertEqual(b["page_size"], rb.page_size, wb)
            self.assertEqual(b["pages"], rb.pages, wb)
            self.assertEqual(b["data_pages"], self.ref.data_pages(rb), wb)
            self.assertEqual(b["bitmap_offset"], rb.bitmap_offset, wb)
            self.assertEqual(b["pages_offset"], rb.pages_offset, wb)
        st = os.stat(self.mount.path(".mramfs.json"))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o444, w)

    # -- 2. pattern pages ----------------------------------------------------
    def test_02_pattern_pages(self):
        pats = self.fx.get("patterns") or []
        if self.NAME != "linux-live" and not self.NAME.startswith("dense"):
            self.assertTrue(pats, "%s: json lists no patterns" % self.where())
        fd = self.open_block(self.pcram)
        try:
            for p in pats:
                exp = pattern_bytes(p)
                got = pread_full(fd, p["ram_offset"], len(exp))
                self.assert_bytes(got, exp, self.pcram, p["ram_offset"],
                                  "pattern %s pages" % p["tag"])
                # and the pages are data for the bitmap oracle too
                for i in range(p["pages"]):
                    pg = p["ram_offset"] // 4096 + i
                    self.assertTrue(self.ref.bit(self.pcram, pg),
                                    "%s: refreader bit clear for pattern "
                                    "page" % self.where(self.pcram,
                                                        pg * 4096))
        finally:
            os.close(fd)

    def test_02_dense_blob_sha256(self):
        d = self.fx.get("dense")
        if not d:
            return
        blk = self.pcram
        ro, ln = d["ram_offset"], d["length"]
        self.assertEqual(self.ref.byte_runs(blk), [(ro, ro + ln)],
                         "%s: dense blob is not the only pc.ram extent"
                         % self.where(blk))
        h = hashlib.sha256()
        fd = self.open_block(blk)
        try:
            off = 0
            while off < ln:
                n = min(CHUNK, ln - off)
                b = pread_full(fd, ro + off, n)
                self.assertEqual(len(b), n, self.where(blk, ro + off))
                h.update(b)
                off += n
        finally:
            os.close(fd)
        self.assertEqual(h.hexdigest(), d["sha256"],
                         "%s: sha256 of the dense blob through the mount"
                         % self.where(blk, ro))

    # -- 3. holes read zero ---------------------------------------------------
    def test_03_holes_read_zero(self):
        blk = self.pcram
        ps = blk.page_size
        zero = bytes(ps)
        fd = self.open_block(blk)
        try:
            checked = 0
            for p in self.fx.get("patterns") or []:
                for pg in (p["ram_offset"] // ps - 1,
                           p["ram_offset"] // ps + p["pages"]):
                    if 0 <= pg < blk.pages and not self.ref.bit(blk, pg):
                        got = os.pread(fd, ps, pg * ps)
                        self.assert_bytes(got, zero, blk, pg * ps,
                                          "hole next to pattern %s"
                                          % p["tag"])
                        checked += 1
            rnd = random.Random("holes-" + self.NAME)
            n = 0
            tries = 0
            while n < 200 and tries < 20000:
                tries += 1
                pg = rnd.randrange(blk.pages)
                if self.ref.bit(blk, pg):
                    continue
                got = os.pread(fd, ps, pg * ps)
                self.assert_bytes(got, zero, blk, pg * ps, "random hole page")
                n += 1
            self.assertGreater(n + checked, 0, self.where(blk))
        finally:
            os.close(fd)

    def test_03_unaligned_reads_across_boundaries(self):
        rnd = random.Random("unaligned-" + self.NAME)
        for blk in self.ref.blocks:
            runs = self.ref.runs(blk)
            if not runs:
                continue
            ps = blk.page_size
            sel = runs if len(runs) <= 16 else (runs[:8] + runs[-8:])
            fd = self.open_block(blk)
            try:
                for a, b in sel:
                    for edge in (a * ps, b * ps):
                        for (back, n) in ((100, 300), (1, 2), (4095, 4097),
                                          (rnd.randrange(1, ps),
                                           rnd.randrange(2, 3 * ps))):
                            off = max(0, edge - back)
                            got = os.pread(fd, n, off)
                            exp = self.ref.read(blk, off, n)
                            self.assert_bytes(got, exp, blk, off,
                                              "unaligned read %d@%#x" % (n,
                                                                        off))
                    # a read spanning the whole run and a hole on each side
                    off = max(0, a * ps - 5000)
                    n = min(b * ps + 7001, blk.used_length) - off
                    if n <= 16 * MiB:
                        got = pread_full(fd, off, n)
                        self.assert_bytes(got, self.ref.read(blk, off, n),
                                          blk, off, "run-spanning read")
                # reads at / across EOF
                self.assertEqual(os.pread(fd, 100, blk.used_length), b"",
                                 self.where(blk, blk.used_length))
                got = os.pread(fd, 8192, blk.used_length - 100)
                self.assert_bytes(got, self.ref.read(blk,
                                                     blk.used_length - 100,
                                                     100),
                                  blk, blk.used_length - 100, "read at EOF")
            finally:
                os.close(fd)

    # -- 4. stale slots ------------------------------------------------------
    def test_04_stale_slots_read_zero(self):
        """Bitmap-clear pages whose file slot holds old non-zero bytes (live
        saves) must read as zeros; refreader's count must equal the
        generator's stale_slots (summed over blocks) and be > 0 for live."""
        want = self.fx.get("stale_slots")
        by_block = self.fx.get("stale_slots_by_block")
        live = bool(self.fx.get("live")) or self.NAME == "linux-live"
        stale = {b.idstr: self.ref.stale_pages(b) for b in self.ref.blocks}
        total = sum(len(v) for v in stale.values())
        if live:
            self.assertIsNotNone(want, "%s: json stale_slots is null"
                                 % self.where())
            self.assertGreater(want, 0, self.where())
            self.assertGreater(len(stale[b"pc.ram"]), 0, self.where())
        if want is not None:
            self.assertEqual(total, want,
                             "%s: refreader finds %d stale slots, json "
                             "stale_slots says %s" % (self.where(), total,
                                                       want))
        if by_block is not None:
            got = {k.decode(): len(v) for k, v in stale.items() if v}
            self.assertEqual(got, by_block, "%s: stale slots per block"
                             % self.where())
        for blk in self.ref.blocks:
            pages = stale[blk.idstr]
            if not pages:
                continue
            ps = blk.page_size
            zero = bytes(ps)
            fd = self.open_block(blk)
            try:
                for pg in pages:
                    got = os.pread(fd, ps, pg * ps)
                    self.assert_bytes(got, zero, blk, pg * ps,
                                      "stale slot (bitmap clear)")
                # unaligned reads straddling stale pages and neighbours
                for pg in pages[:32]:
                    off = max(0, pg * ps - 1000)
                    n = min(blk.used_length, pg * ps + ps + 1000) - off
                    self.assert_bytes(os.pread(fd, n, off),
                                      self.ref.read(blk, off, n), blk, off,
                                      "read around stale slot")
            finally:
                os.close(fd)

    # -- 5. SEEK_DATA / SEEK_HOLE --------------------------------------------
    def test_05_seek_data_hole(self):
        for blk in self.ref.blocks:
            ps = blk.page_size
            size = blk.used_length
            exp = self.ref.byte_runs(blk)
            fd = self.open_block(blk)
            try:
                got = data_map(fd, size)
                if got != exp:
                    self.fail("%s: SEEK_DATA/SEEK_HOLE walk %s != bitmap "
                              "runs %s" % (self.where(blk),
                                           _fmt_runs(got), _fmt_runs(exp)))
                self._seek_probes(fd, blk, exp, ps, size)
            finally:
                os.close(fd)

    def _seek_probes(self, fd, blk, runs, ps, size):
        def seek(off, whence):
            try:
                return os.lseek(fd, off, whence)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return "ENXIO"
                raise

        def check(off, whence, want):
            got = seek(off, whence)
            self.assertEqual(got, want, "%s: lseek(%#x, %s)"
                             % (self.where(blk, off), off,
                                "SEEK_DATA" if whence == os.SEEK_DATA
                                else "SEEK_HOLE"))

        sel = runs if len(runs) <= 40 else runs[:20] + runs[-20:]
        for i, (a, b) in enumerate(sel):
            check(a, os.SEEK_DATA, a)
            if a + 17 < b:
                check(a + 17, os.SEEK_DATA, a + 17)
            check(b - 1, os.SEEK_DATA, b - 1)
            check(b - ps, os.SEEK_HOLE, b)              # last data page
            check(b - ps + 123, os.SEEK_HOLE, b)
            check(a, os.SEEK_HOLE, b)
        # probes inside holes
        holes = []
        prev = 0
        for a, b in runs:
            if a > prev:
                holes.append((prev, a))
            prev = b
        if prev < size:
            holes.append((prev, size))
        hsel = holes if len(holes) <= 40 else holes[:20] + holes[-20:]
        for h0, h1 in hsel:
            nxt = h1 if h1 < size else "ENXIO"
            for off in (h0, (h0 + h1) // 2, h1 - 1):
                check(off, os.SEEK_DATA, nxt)
                check(off, os.SEEK_HOLE, off)
        for off in (size, size + 1, size + 12345 * ps):
            check(off, os.SEEK_DATA, "ENXIO")
            check(off, os.SEEK_HOLE, "ENXIO")
        if not runs:
            check(0, os.SEEK_DATA, "ENXIO")
            check(0, os.SEEK_HOLE, 0)

    # -- 6. st_blocks, du, modes, read-only --------------------------------
    def test_06_st_blocks_and_du(self):
        img_st = os.stat(self.image)
        for blk in self.ref.blocks:
            path = self.bpath(blk)
            st = os.stat(path)
            data = self.ref.data_pages(blk) * blk.page_size
            w = self.where(blk)
            self.assertEqual(st.st_size, blk.used_length, w)
            self.assertEqual(st.st_blocks, data // 512, "%s: st_blocks" % w)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o444, w)
            self.assertTrue(stat.S_ISREG(st.st_mode), w)
            self.assertEqual(st.st_blksize, blk.page_size,
                             "%s: st_blksize" % w)
            self.assertEqual(int(st.st_mtime), int(img_st.st_mtime),
                             "%s: mtime" % w)
            self.assertEqual((st.st_uid, st.st_gid),
                             (img_st.st_uid, img_st.st_gid), w)
            r = run(["du", "-B1", "--apparent-size", path], timeout=30)
            self.assertEqual(int(r.stdout.split()[0]), blk.used_length,
                             "%s: du --apparent-size" % w)
            r = run(["du", "-B1", path], timeout=30)
            self.assertEqual(int(r.stdout.split()[0]), data, "%s: du" % w)

    def test_06_read_only(self):
        blk = self.pcram
        path = self.bpath(blk)
        w = self.where(blk)
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC,
                      os.O_RDWR | os.O_APPEND):
            with self.assertRaises(OSError, msg=w) as cm:
                fd = os.open(path, flags)
                os.close(fd)
            self.assertEqual(cm.exception.errno, errno.EROFS,
                             "%s: open flags %#x" % (w, flags))
        ops = [
            ("create", lambda: os.close(os.open(
                self.mount.path("newfile"), os.O_WRONLY | os.O_CREAT, 0o644))),
            ("mkdir", lambda: os.mkdir(self.mount.path("newdir"))),
            ("truncate", lambda: os.truncate(path, 0)),
            ("unlink", lambda: os.unlink(path)),
            ("rename", lambda: os.rename(path, self.mount.path("x"))),
            ("chmod", lambda: os.chmod(path, 0o644)),
            ("symlink", lambda: os.symlink("pc.ram",
                                           self.mount.path("lnk"))),
        ]
        for name, fn in ops:
            with self.assertRaises(OSError, msg="%s: %s" % (w, name)) as cm:
                fn()
            self.assertEqual(cm.exception.errno, errno.EROFS,
                             "%s: %s" % (w, name))
        # still intact
        self.assertEqual(os.stat(path).st_size, blk.used_length, w)
        info = mountinfo_entry(self.mount.mnt)
        self.assertIsNotNone(info, w)
        self.assertIn("ro", info["mount_options"].split(","), w)
        self.assertEqual(info["fstype"], "fuse.mramfs", w)
        self.assertEqual(info["source"], self.image, w)

    # -- 7. cp --sparse=always / tar -S -------------------------------------
    def _check_copy(self, blk, copy):
        src = self.bpath(blk)
        w = self.where(blk)
        data = self.ref.data_pages(blk) * blk.page_size
        if blk.used_length <= BIG_BLOCK:
            r = run(["cmp", src, copy], timeout=600)
            self.assertEqual(r.returncode, 0, "%s: cmp mount vs copy: %s%s"
                             % (w, r.stdout.decode(), r.stderr.decode()))
        else:
            self._sparse_cmp(blk, copy)
        st = os.stat(copy)
        self.assertEqual(st.st_size, blk.used_length, w)
        alloc = st.st_blocks * 512
        self.assertLessEqual(alloc, data + MiB,
                             "%s: copy allocates %d bytes for %d data bytes"
                             % (w, alloc, data))
        if data < blk.used_length // 2:
            self.assertLess(alloc, blk.used_length // 4,
                            "%s: copy is not sparse (%d bytes allocated)"
                            % (w, alloc))

    def _sparse_cmp(self, blk, copy):
        """Compare two huge sparse files over the union of their data."""
        fa = self.open_block(blk)
        fb = os.open(copy, os.O_RDONLY)
        try:
            size = blk.used_length
            ranges = merge(data_map(fa, size) + data_map(fb, size))
            for a, b in ranges:
                off = a
                while off < b:
                    n = min(CHUNK, b - off)
                    self.assert_bytes(pread_full(fa, off, n),
                                      pread_full(fb, off, n), blk, off,
                                      "mount vs sparse copy")
                    off += n
            # and the mount's data equals the oracle there
            for a, b in self.ref.byte_runs(blk):
                self.read_compare(fa, blk, a, b - a)
        finally:
            os.close(fa)
            os.close(fb)

    def test_07_cp_sparse_pc_ram(self):
        dst = os.path.join(self.tmp, "pc.ram.copy")
        try:
            sparse_copy(self.bpath(self.pcram), dst)
            self._check_copy(self.pcram, dst)
        finally:
            if os.path.exists(dst):
                os.unlink(dst)

    def test_07_cp_sparse_all_blocks(self):
        if self.NAME != BASE_FIXTURE:
            return
        d = os.path.join(self.tmp, "all")
        os.mkdir(d)
        try:
            for i, blk in enumerate(self.ref.blocks):
                dst = os.path.join(d, "b%d" % i)
                sparse_copy(self.bpath(blk), dst)
                self._check_copy(blk, dst)
            # cp -r of the whole tree
            r = run(["cp", "-r", "--sparse=always", self.mount.mnt + "/.",
                     os.path.join(d, "tree")], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            for blk in self.ref.blocks:
                self._check_copy(blk, os.path.join(
                    d, "tree", self.paths[blk.idstr]))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_07_tar_sparse(self):
        if self.NAME != BASE_FIXTURE:
            return
        d = os.path.join(self.tmp, "tar")
        os.mkdir(d)
        try:
            tarf = os.path.join(d, "m.tar")
            r = run(["tar", "-S", "-cf", tarf, "-C", self.mount.mnt, "."],
                    timeout=300)
            self.assertEqual(r.returncode, 0, "%s: tar -c: %s"
                             % (self.where(), r.stderr.decode()))
            total_data = sum(self.ref.data_pages(b) * b.page_size
                             for b in self.ref.blocks)
            self.assertLess(os.stat(tarf).st_size, total_data + 8 * MiB,
                            "%s: tar archive not sparse" % self.where())
            x = os.path.join(d, "x")
            os.mkdir(x)
            r = run(["tar", "-xf", tarf, "-C", x], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            for blk in self.ref.blocks:
                self._check_copy(blk, os.path.join(x, self.paths[blk.idstr]))
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # -- 8. QEMU restore oracle -------------------------------------------
    def test_08_qemu_restore_oracle(self):
        rs = self.fx.get("restore")
        if not rs:
            return
        path = os.path.join(CFG["fixtures"], rs["file"])
        self.assertTrue(os.path.exists(path), "%s: %s missing"
                        % (self.where(), path))
        blk = self.pcram
        rfd = os.open(path, os.O_RDONLY)
        mfd = self.open_block(blk)
        try:
            rsize = os.fstat(rfd).st_size
            rmap = data_map(rfd, rsize)
            mmap_ = self.ref.byte_runs(blk)
            self.assertTrue(rs["ranges"], self.where())
            for rg in rs["ranges"]:
                ro, fo, ln = rg["ram_offset"], rg["file_offset"], rg["length"]
                self.assertLessEqual(fo + ln, rsize, self.where())
                self.assertLessEqual(ro + ln, blk.used_length, self.where())
                off = 0
                while off < ln:
                    n = min(CHUNK, ln - off)
                    # skip a chunk only where both sides are holes
                    if not (_overlaps(rmap, fo + off, fo + off + n) or
                            _overlaps(mmap_, ro + off, ro + off + n)):
                        off += n
                        continue
                    exp = pread_full(rfd, fo + off, n)
                    got = pread_full(mfd, ro + off, n)
                    self.assert_bytes(got, exp, blk, ro + off,
                                      "mount vs QEMU restore (gpa %#x)"
                                      % (rg["gpa"] + off))
                    off += n
        finally:
            os.close(rfd)
            os.close(mfd)

    # -- 9. every other block, full content ----------------------------------
    def test_09_other_blocks_full_content(self):
        for blk in self.ref.blocks:
            if blk.idstr == b"pc.ram":
                continue
            fd = self.open_block(blk)
            try:
                self.read_compare(fd, blk, 0, blk.used_length)
                self.assertEqual(os.pread(fd, 4096, blk.used_length), b"")
            finally:
                os.close(fd)

    def test_09_pc_ram_data_runs(self):
        """Every data run of pc.ram equals the image bytes (oracle)."""
        blk = self.pcram
        fd = self.open_block(blk)
        try:
            for a, b in self.ref.byte_runs(blk):
                self.read_compare(fd, blk, a, b - a)
        finally:
            os.close(fd)

    # -- 10. mramfs-inspect ----------------------------------------------------
    def _inspect(self, *extra):
        argv = [inspect_bin(), self.image] + list(extra)
        if self.offset is not None:
            argv += ["--offset", str(self.offset)]
        return run(argv, timeout=60)

    def test_10_inspect_json(self):
        r = self._inspect("--json")
        self.assertEqual(r.returncode, 0, "%s: mramfs-inspect: %s"
                         % (self.where(), r.stderr.decode()))
        j = json.loads(r.stdout)
        mj = self.mount_json()
        self.assertEqual(j["blocks"], mj["blocks"], self.where())
        self.assertEqual(j, mj, "%s: inspect --json != /.mramfs.json"
                         % self.where())

    def test_10_inspect_text(self):
        r = self._inspect()
        self.assertEqual(r.returncode, 0, "%s: mramfs-inspect: %s"
                         % (self.where(), r.stderr.decode()))
        out = r.stdout.decode(errors="replace")
        self.assertIn(self.ref.machine_type, out, self.where())
        self.assertRegex(out, r"complete:\s*yes", self.where())
        for blk in self.ref.blocks:
            w = self.where(blk)
            # the block is named by its idstr or its mount path
            self.assertTrue(blk.name in out or self.paths[blk.idstr] in out,
                            "%s: block not listed" % w)
            self.assertIn(str(blk.used_length), out, w)

    def test_10_inspect_text_contract(self):
        """interface.md: the text table also shows idstrs, capabilities and
        the bitmap/pages offsets of each block."""
        r = self._inspect()
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        out = r.stdout.decode(errors="replace")
        missing = []
        if "mapped-ram" not in out.replace("format:", ""):
            missing.append("capabilities")
        for blk in self.ref.blocks:
            if blk.name not in out:
                missing.append("idstr %r" % blk.name)
            for what in ("bitmap_offset", "pages_offset"):
                v = getattr(blk, what)
                if str(v) not in out and ("%#x" % v) not in out:
                    missing.append("%s %s" % (blk.name, what))
        self.assertEqual(missing, [], "%s: mramfs-inspect text output lacks "
                         "%s" % (self.where(), ", ".join(missing)))


def _overlaps(ranges, a, b):
    for x, y in ranges:
        if x < b and a < y:
            return True
    return False


def _fmt_runs(r):
    if len(r) > 12:
        return "[%s ... %d runs ... %s]" % (
            ", ".join("(%#x,%#x)" % t for t in r[:6]), len(r),
            ", ".join("(%#x,%#x)" % t for t in r[-6:]))
    return "[%s]" % ", ".join("(%#x,%#x)" % t for t in r)


# ---------------------------------------------------------------------------
# mount helper forms (q35-512M-S only)
# ---------------------------------------------------------------------------

class MountFormTests(unittest.TestCase):
    """Ways of mounting and unmounting; each test uses a fresh mount dir."""

    def setUp(self):
        self.image = fixture_path(BASE_FIXTURE, ".img")
        js = fixture_path(BASE_FIXTURE, ".json")
        if not (os.path.exists(self.image) and os.path.exists(js)):
            self.skipTest("fixture %s missing" % BASE_FIXTURE)
        with open(js) as f:
            self.fx = json.load(f)
        self.mnt = tempfile.mkdtemp(prefix="mramfs-form-")
        self.tmp = tempfile.mkdtemp(prefix="mramfs-formtmp-")

    def tearDown(self):
        force_unmount(self.mnt)
        for p in pids_mentioning(self.mnt):
            # a daemon we started and failed to stop: end it by its id
            try:
                os.kill(p, 15)
            except OSError:
                pass
        try:
            os.rmdir(self.mnt)
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check_usable(self):
        self.assertTrue(os.path.ismount(self.mnt), "not mounted")
        p = self.fx["patterns"][0]
        with open(os.path.join(self.mnt, "pc.ram"), "rb") as f:
            f.seek(p["ram_offset"])
            got = f.read(4096)
        self.assertEqual(got, pattern_page(p["gpa"], 0, p["tag"]))
        with open(os.path.join(self.mnt, ".mramfs.json")) as f:
            self.assertEqual(json.load(f)["machine_type"],
                             self.fx["machine_type"])

    def test_daemonize_then_umount(self):
        r = run([mramfs_bin(), self.image, self.mnt], timeout=MOUNT_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertTrue(os.path.ismount(self.mnt),
                        "mramfs returned but nothing is mounted")
        self.check_usable()
        pids = pids_mentioning(self.mnt)
        self.assertEqual(len(pids), 1, "daemon processes: %r" % pids)
        info = mountinfo_entry(self.mnt)
        self.assertEqual(info["fstype"], "fuse.mramfs")
        self.assertEqual(info["source"], self.image)
        self.assertIn("ro", info["mount_options"].split(","))
        r = run(["umount", self.mnt], timeout=UMOUNT_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertFalse(os.path.ismount(self.mnt))
        self.assertTrue(wait_gone(pids[0]),
                        "daemon %d still alive after umount" % pids[0])

    def test_foreground_background_process(self):
        out = open(os.path.join(self.tmp, "fg.log"), "wb")
        p = subprocess.Popen([mramfs_bin(), self.image, self.mnt, "-f"],
                             stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end and not os.path.ismount(self.mnt):
                if p.poll() is not None:
                    break
                time.sleep(0.05)
            self.assertTrue(os.path.ismount(self.mnt),
                            "-f: not mounted within 10 s (exit %r)"
                            % p.poll())
            self.assertIsNone(p.poll(), "-f process exited while mounted")
            self.check_usable()
            r = run(["fusermount3", "-u", self.mnt], timeout=UMOUNT_TIMEOUT)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            try:
                rc = p.wait(10)
            except subprocess.TimeoutExpired:
                self.fail("-f process did not exit after fusermount3 -u")
            self.assertEqual(rc, 0)
        finally:
            if p.poll() is None:
                force_unmount(self.mnt)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            out.close()

    def test_mountinfo_and_unmount_with_fusermount(self):
        m = Mount(self.image, tag="fm")
        m.mount()
        try:
            pid = m.pid
            self.assertIsNotNone(pid, "cannot identify the daemon")
            r = m.unmount()
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            self.assertFalse(os.path.ismount(m.mnt))
            self.assertTrue(wait_gone(pid), "daemon still alive")
        finally:
            m.cleanup()

    def test_usage_and_version(self):
        r = run([inspect_bin()], timeout=20)
        self.assertEqual(r.returncode, 2, "mramfs-inspect without IMAGE: "
                         "exit %s %r" % (r.returncode, r.stderr))
        r = run([mramfs_bin()], timeout=20)
        self.assertNotEqual(r.returncode, 0, "mramfs without arguments")
        self.assertGreater(r.returncode, 0, "mramfs killed by a signal")
        for opt in ("-V", "--version", "-h", "--help"):
            r = run([mramfs_bin(), opt], timeout=20)
            self.assertEqual(r.returncode, 0, "mramfs %s: exit %s %r"
                             % (opt, r.returncode, r.stderr))
            self.assertTrue(r.stdout.strip() or r.stderr.strip(), opt)
        self.assertFalse(os.path.ismount(self.mnt))

    def _need_helpers(self):
        if not shutil.which("mramfs"):
            self.skipTest("mramfs not installed in PATH")
        if not os.path.exists("/sbin/mount.mramfs"):
            self.skipTest("/sbin/mount.mramfs not installed")

    def _mount_cmd(self, argv):
        r = run(argv, timeout=MOUNT_TIMEOUT)
        self.assertEqual(r.returncode, 0, "%s: %s"
                         % (" ".join(argv), r.stderr.decode()))
        self.check_usable()
        info = mountinfo_entry(self.mnt)
        self.assertEqual(info["fstype"], "fuse.mramfs")
        self.assertIn("ro", info["mount_options"].split(","))
        pids = pids_mentioning(self.mnt)
        self.assertEqual(len(pids), 1, "daemon processes for %s: %r"
                         % (self.mnt, pids))
        r = run(["umount", self.mnt], timeout=UMOUNT_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertFalse(os.path.ismount(self.mnt))
        for pid in pids:
            self.assertTrue(wait_gone(pid), "daemon %d alive" % pid)

    def test_mount_t_fuse_mramfs(self):
        self._need_helpers()
        self._mount_cmd(["mount", "-t", "fuse.mramfs", self.image, self.mnt])

    def test_mount_t_mramfs(self):
        self._need_helpers()
        self._mount_cmd(["mount", "-t", "mramfs", self.image, self.mnt])

    def test_mount_fstab(self):
        self._need_helpers()
        tab = os.path.join(self.tmp, "fstab")
        with open(tab, "w") as f:
            f.write("%s %s fuse.mramfs ro,noauto,allow_other 0 0\n"
                    % (self.image, self.mnt))
        self._mount_cmd(["mount", "--fstab", tab, self.mnt])

    def test_mount_helper_fake(self):
        self._need_helpers()
        r = run(["/sbin/mount.mramfs", self.image, self.mnt, "-f"],
                timeout=MOUNT_TIMEOUT)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertFalse(os.path.ismount(self.mnt),
                         "mount.mramfs -f (fake) mounted something")


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def rewrite_image(ref, dst, pages_offset=None, used=None):
    """Re-serialize ref's image (stream at 0 only) into dst with changed
    block pages_offset / used_length, keeping the chain consistent (each
    next block at pages_offset + used_length, MEM_SIZE = sum of used).
    Only data pages are copied, so dst stays sparse."""
    pages_offset = pages_offset or {}
    used = used or {}
    assert ref.stream_offset == 0 and ref.libvirt is None
    first = ref.blocks[0].entry_offset
    prefix = bytearray(ref.pread(0, first))
    total = sum(used.get(b.idstr, b.used_length) for b in ref.blocks)
    struct.pack_into(">Q", prefix, first - 8, total | 0x04)
    pos = first
    headers, layout = [], []
    for b in ref.blocks:
        u = used.get(b.idstr, b.used_length)
        ent = bytes([len(b.idstr)]) + b.idstr + struct.pack(">Q", u)
        if b.addr is not None:
            ent += struct.pack(">Q", b.addr)
        bmo = pos + len(ent) + refreader.MRH_LEN
        npages = u // b.page_size
        bms = (npages + 63) // 64 * 8
        po = pages_offset.get(b.idstr, round_up(bmo + bms, MiB))
        ent += struct.pack(">IQQQ", 1, b.page_size, bmo, po)
        bm = bytearray(ref.bitmap(b)[:bms].ljust(bms, b"\0"))
        for pg in range(npages, bms * 8):      # clear bits past the end
            bm[pg >> 3] &= ~(1 << (pg & 7)) & 0xff
        headers.append((pos, ent + bytes(bm)))
        layout.append((b, po, npages))
        pos = po + u
    tail = ref.pread(ref.ram_end_offset, ref.file_size - ref.ram_end_offset)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for b, po, npages in layout:
            ps = b.page_size
            for a, e in ref.runs(b):
                e = min(e, npages)
                for s in range(a, e, 2048):
                    n = min(e, s + 2048) - s
                    os.pwrite(fd, ref.pread(b.pages_offset + s * ps, n * ps),
                              po + s * ps)
        for off, data in headers:
            os.pwrite(fd, data, off)
        os.pwrite(fd, bytes(prefix), 0)
        os.pwrite(fd, tail, pos)
        os.ftruncate(fd, pos + len(tail))
    finally:
        os.close(fd)


def tail_offsets(ref):
    """Offsets after the ram START: {'end': SECTION_END of ram,
    'eof': QEMU_VM_EOF byte, 'vmdesc': 0x06 byte} (None if not found)."""
    out = {"end": None, "eof": None, "vmdesc": None}
    p = ref.ram_end_offset + 8
    sid = ref.ram_section_id

    def byte(o):
        b = ref.pread(o, 1)
        return b[0] if b else None

    if byte(p) == 0x7e:
        p += 5
    while True:
        t = byte(p)
        if t in (0x02, 0x03):
            (s,) = struct.unpack(">I", ref.pread(p + 1, 4))
            if s != sid:
                break
            if t == 0x03:
                out["end"] = p
            p += 5 + 8
            if byte(p) == 0x7e:
                p += 5
            if t == 0x03:
                break
        elif t == 0x08:
            _c, ln = struct.unpack(">HH", ref.pread(p + 1, 4))
            p += 5 + ln
        else:
            break
    tail_n = min(ref.file_size, 16 * MiB)
    tail = ref.pread(ref.file_size - tail_n, tail_n)
    i = tail.rfind(b"\x06")
    if i > 0:
        v = ref.file_size - tail_n + i
        (ln,) = struct.unpack(">I", tail[i + 1:i + 5])
        if ln == ref.file_size - (v + 5) and tail[i - 1] == 0:
            out["vmdesc"] = v
            out["eof"] = v - 1
    return out


class BadInputTests(unittest.TestCase):
    """Crafted broken images: clean one-line errors, exit 1, no mount."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mramfs-bad-")
        cls.base = fixture_path(BASE_FIXTURE, ".img")
        cls.ref = None
        if os.path.exists(cls.base):
            cls.ref = refreader.Image(cls.base)

    @classmethod
    def tearDownClass(cls):
        if cls.ref is not None:
            cls.ref.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def need(self, name):
        p = fixture_path(name, ".img")
        if not os.path.exists(p):
            self.skipTest("fixture %s missing" % name)
        return p

    def copy(self, name, dst_name):
        src = self.need(name)
        dst = os.path.join(self.tmp, dst_name + ".img")
        sparse_copy(src, dst)
        return dst

    def patch(self, path, off, data):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
        finally:
            os.close(fd)

    def truncated(self, name, size):
        dst = self.copy(BASE_FIXTURE, name)
        os.truncate(dst, size)
        return dst

    def expect_reject(self, image, reason_re, case):
        """Both mramfs and mramfs-inspect reject image with one line."""
        mnt = tempfile.mkdtemp(prefix="mramfs-badmnt-")
        try:
            r = run([mramfs_bin(), image, mnt], timeout=20)
            mounted = os.path.ismount(mnt)
            leftover = pids_mentioning(mnt)
            self._check_err(r, "mramfs", image, reason_re, case)
            self.assertFalse(mounted, "%s: mounted anyway" % case)
            self.assertEqual(leftover, [], "%s: daemon left behind" % case)
        finally:
            force_unmount(mnt)
            try:
                os.rmdir(mnt)
            except OSError:
                pass
        r = run([inspect_bin(), image], timeout=20)
        self._check_err(r, "mramfs-inspect", image, reason_re, case)
        r = run([inspect_bin(), image, "--json"], timeout=20)
        self._check_err(r, "mramfs-inspect", image, reason_re, case + " "
                        "(--json)")

    def _check_err(self, r, prog, image, reason_re, case):
        err = r.stderr.decode(errors="replace")
        w = "%s: %s exit %s, stderr %r" % (case, prog, r.returncode, err)
        self.assertFalse(r.returncode < 0, "%s: killed by signal" % w)
        self.assertEqual(r.returncode, 1, w)
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, "%s: want exactly one line" % w)
        prefix = "%s: %s: " % (prog, image)
        self.assertTrue(lines[0].startswith(prefix),
                        "%s: want prefix %r" % (w, prefix))
        self.assertRegex(lines[0][len(prefix):].lower(), reason_re,
                         "%s: reason" % w)

    def base_ref(self):
        if self.ref is None:
            self.skipTest("fixture %s missing" % BASE_FIXTURE)
        return self.ref

    # --- cases ---
    TRUNC = r"truncat|incomplete|outside|beyond|past|end of file|eof|short"

    def test_empty_file(self):
        p = os.path.join(self.tmp, "empty.img")
        open(p, "wb").close()
        self.expect_reject(p, r"empty|truncat|not a qemu", "empty file")

    def test_random_bytes(self):
        p = os.path.join(self.tmp, "random.img")
        with open(p, "wb") as f:
            f.write(random.Random(7).randbytes(MiB))
        self.expect_reject(p, r"not a qemu", "random bytes")

    def test_truncated_4_bytes(self):
        self.base_ref()
        self.expect_reject(self.truncated("t4", 4), r"truncat",
                           "truncated at 4 bytes")

    def test_truncated_in_configuration(self):
        ref = self.base_ref()
        # inside the machine type name, then inside the capabilities
        # subsection name, then right after the machine type (the stream
        # ends where the subsection marker 0x05 should be)
        mlen = len(ref.machine_type)
        for n, what in ((9 + 4 + mlen // 2, "machine type"),
                        (9 + 4 + mlen + 10, "capabilities subsection"),
                        (9 + 4 + mlen, "end of machine type")):
            self.expect_reject(self.truncated("tconf%d" % n,
                                              ref.stream_offset + n),
                               r"truncat", "truncated in configuration (%s)"
                               % what)

    def test_truncated_in_block_table(self):
        ref = self.base_ref()
        for i in (0, 1):
            b = ref.blocks[i]
            self.expect_reject(self.truncated("tbt%d" % i, b.hdr_offset + 10),
                               self.TRUNC, "truncated in header of %s"
                               % b.name)

    def test_truncated_in_bitmap(self):
        ref = self.base_ref()
        b = ref.blocks[0]
        self.expect_reject(
            self.truncated("tbm", b.bitmap_offset + b.bitmap_size // 2),
            self.TRUNC, "truncated inside the pc.ram bitmap")

    def test_truncated_at_page_data(self):
        ref = self.base_ref()
        b = ref.blocks[0]
        self.expect_reject(self.truncated("tpd", b.pages_offset), self.TRUNC,
                           "truncated at the start of page data")
        self.expect_reject(self.truncated("thalf", ref.file_size // 2),
                           self.TRUNC, "truncated at half the file")

    def test_truncated_before_end_section(self):
        ref = self.base_ref()
        t = tail_offsets(ref)
        self.assertIsNotNone(t["end"], "cannot locate the ram END section")
        self.expect_reject(self.truncated("tend", t["end"]),
                           r"incomplete|truncat|no ram end|end section",
                           "truncated before the ram END section")
        self.expect_reject(self.truncated("teos", ref.ram_end_offset + 8),
                           r"incomplete|truncat|end section",
                           "truncated right after the block table EOS")

    def test_truncated_before_eof_and_vmdesc(self):
        ref = self.base_ref()
        t = tail_offsets(ref)
        self.assertIsNotNone(t["eof"], "cannot locate QEMU_VM_EOF")
        self.expect_reject(self.truncated("teof", t["eof"]),
                           r"incomplete|truncat|eof",
                           "truncated before QEMU_VM_EOF")
        self.expect_reject(self.truncated("tlast", ref.file_size - 100),
                           r"incomplete|truncat|vmdesc|description",
                           "last 100 bytes (inside vmdesc) removed")

    def test_libvirt_partial(self):
        p = self.need("q35-512M-S-partial")
        self.expect_reject(p, r"incomplete|libvirtqemudpart|partial",
                           "LibvirtQemudPart image")

    def test_libvirt_version_3(self):
        p = self.copy("q35-512M-S-libvirt1M", "lv3")
        self.patch(p, 16, struct.pack("<I", 3))
        self.expect_reject(p, r"version", "libvirt header version 3")

    def test_libvirt_format_gzip(self):
        p = self.copy("q35-512M-S-libvirt1M", "lvgz")
        self.patch(p, 28, struct.pack("<I", 1))
        self.expect_reject(p, r"gzip", "libvirt format 1 (gzip)")

    def test_legacy_stream(self):
        """A legacy (non-mapped-ram) stream is no longer refused: it mounts (its content is
        checked by test_legacy.py); no index file is kept (-o index=)."""
        p = self.need("q35-512M-S-legacy")
        m = Mount(p, "index=", tag="legacy")
        try:
            m.mount()
            with open(m.path(".mramfs.json")) as f:
                j = json.load(f)
            self.assertEqual(j["format"], "legacy")
            self.assertIsNone(j["legacy"]["index"])
            self.assertIn("pc.ram", os.listdir(m.mnt))
            r = run([inspect_bin(), p, "--index", ""], timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            self.assertRegex(r.stdout.decode(), r"format:\s*legacy")
        finally:
            m.cleanup()

    def test_pages_offset_past_eof(self):
        ref = self.base_ref()
        p = self.copy(BASE_FIXTURE, "pgeof")
        b = ref.blocks[0]
        self.patch(p, b.hdr_offset + 20,
                   struct.pack(">Q", round_up(ref.file_size, MiB) + MiB))
        self.expect_reject(p, r"outside|beyond|past|end of file|eof|truncat",
                           "pc.ram pages_offset past EOF")

    def test_overlapping_blocks(self):
        ref = self.base_ref()
        bios, rom = ref.block(b"pc.bios"), ref.block(b"pc.rom")
        p = os.path.join(self.tmp, "overlap.img")
        rewrite_image(ref, p, pages_offset={rom.idstr: bios.pages_offset})
        with refreader.Image(p) as r2:   # the craft did what we wanted
            self.assertEqual(r2.block(b"pc.rom").pages_offset,
                             r2.block(b"pc.bios").pages_offset)
        self.expect_reject(p, r"overlap", "pc.rom pages overlap pc.bios")

    def test_used_length_not_page_multiple(self):
        ref = self.base_ref()
        tl = ref.blocks[-2]
        last = ref.blocks[-1]
        self.assertEqual((tl.used_length, last.used_length), (4096, 4096))
        p = os.path.join(self.tmp, "unaligned-used.img")
        rewrite_image(ref, p, used={tl.idstr: 0x1800, last.idstr: 0x800})
        self.expect_reject(p, r"multiple|align|page.size|used.length|invalid",
                           "used_length 0x1800 (not a page multiple)")

    def test_mapped_ram_header_version_2(self):
        ref = self.base_ref()
        p = self.copy(BASE_FIXTURE, "mrh2")
        self.patch(p, ref.blocks[0].hdr_offset, struct.pack(">I", 2))
        self.expect_reject(p, r"version", "MappedRamHeader version 2")

    def test_qevm_version_2(self):
        ref = self.base_ref()
        p = self.copy(BASE_FIXTURE, "qevm2")
        self.patch(p, ref.stream_offset + 4, struct.pack(">I", 2))
        self.expect_reject(p, r"version|obsolete", "QEVM file version 2")

    def test_offset_fixture_without_or_with_wrong_offset(self):
        p = self.need("q35-512M-S-offset")
        self.expect_reject(p, r"not a qemu", "offset fixture without -o "
                           "offset")
        mnt = tempfile.mkdtemp(prefix="mramfs-badmnt-")
        try:
            r = run([mramfs_bin(), p, mnt, "-o", "offset=4661"], timeout=20)
            self.assertFalse(os.path.ismount(mnt), "mounted at offset 4661")
            self._check_err(r, "mramfs", p, r"not a qemu|qevm",
                            "offset fixture with -o offset=4661")
        finally:
            force_unmount(mnt)
            os.rmdir(mnt)

    def test_nonexistent_image(self):
        p = os.path.join(self.tmp, "does-not-exist.img")
        self.expect_reject(p, r"no such file|not found|cannot open|open",
                           "missing image")

    def test_rewrite_identity_control(self):
        """Control for the crafted cases: the rewriter itself makes a valid
        image (so overlap/used_length failures are due to the defect)."""
        ref = self.base_ref()
        p = os.path.join(self.tmp, "identity.img")
        rewrite_image(ref, p)
        m = Mount(p, tag="ident").mount()
        try:
            with refreader.Image(p) as r2:
                for b in ref.blocks:
                    b2 = r2.block(b.idstr)
                    self.assertEqual(r2.runs(b2), ref.runs(b), b.name)
                    path = m.path(map_paths([b.idstr])[0])
                    with open(path, "rb") as f:
                        got = f.read()
                    exp = ref.read(b, 0, b.used_length)
                    self.assertTrue(got == exp, "identity rewrite: %s "
                                    "differs at %#x" % (b.name,
                                                        first_diff(got, exp)))
        finally:
            m.cleanup()

    # --- image shrinks while mounted ---
    def test_image_shrinks_while_mounted(self):
        ref = self.base_ref()
        with open(fixture_path(BASE_FIXTURE, ".json")) as f:
            fx = json.load(f)
        img = self.copy(BASE_FIXTURE, "shrink")
        pats = sorted(fx["patterns"], key=lambda p: p["ram_offset"])
        lastp, firstp = pats[-1], pats[0]
        last_off = lastp["ram_offset"] + (lastp["pages"] - 1) * 4096
        last_exp = pattern_page(lastp["gpa"] + (lastp["pages"] - 1) * 4096,
                                lastp["pages"] - 1, lastp["tag"])
        first_exp = pattern_page(firstp["gpa"], 0, firstp["tag"])
        half = ref.file_size // 2
        pc = ref.block(b"pc.ram")
        self.assertGreater(pc.pages_offset + last_off, half)
        self.assertLess(pc.pages_offset + firstp["ram_offset"] + 4096, half)
        m = Mount(img, tag="shrink").mount()
        try:
            path = m.path("pc.ram")

            def read_page(off):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    return os.pread(fd, 4096, off)
                finally:
                    os.close(fd)

            self.assertEqual(read_page(last_off), last_exp,
                             "last pattern page before shrinking")
            os.truncate(img, half)
            with self.assertRaises(OSError,
                                   msg="read past the shrunk image") as cm:
                read_page(last_off)
            self.assertEqual(cm.exception.errno, errno.EIO,
                             "read of %#x after shrink" % last_off)
            self.assertEqual(read_page(firstp["ram_offset"]), first_exp,
                             "page still inside the shrunk file")
            os.stat(m.mnt)
            self.assertTrue(os.path.ismount(m.mnt))
            self.assertIn("pc.ram", os.listdir(m.mnt))
            if m.pid:
                self.assertTrue(pid_alive(m.pid), "daemon died")
            pid = m.pid
            r = m.unmount()
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            if pid:
                self.assertTrue(wait_gone(pid), "daemon alive after umount")
        finally:
            m.cleanup()


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def build_suite(filters):
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    classes = []
    for name in MAPPED_FIXTURES:
        cname = "Fixture_" + re.sub(r"\W", "_", name)
        classes.append(type(cname, (FixtureTests,), {"NAME": name,
                                                     "__module__":
                                                     __name__}))
    classes += [MountFormTests, BadInputTests]
    for cls in classes:
        fx = None
        if getattr(cls, "NAME", None):
            try:
                with open(fixture_path(cls.NAME, ".json")) as f:
                    fx = json.load(f)
            except (OSError, ValueError):
                fx = None
        for t in loader.loadTestsFromTestCase(cls):
            if fx is not None or getattr(cls, "NAME", None):
                if not applicable(t._testMethodName, cls.NAME, fx):
                    continue
            if not filters or any(f in t.id() for f in filters):
                suite.addTest(t)
    return suite


def applicable(method, name, fx):
    """Leave out per-fixture tests that have nothing to check for this
    fixture (so they are not counted as passed)."""
    if method in ("test_07_cp_sparse_all_blocks", "test_07_tar_sparse",
                  "test_10_inspect_text_contract"):
        return name == BASE_FIXTURE
    if fx is None:          # fixture missing: keep everything (skipped)
        return True
    if method == "test_02_dense_blob_sha256":
        return bool(fx.get("dense"))
    if method == "test_02_pattern_pages":
        return bool(fx.get("patterns")) or not (fx.get("live") or
                                                fx.get("dense"))
    if method == "test_08_qemu_restore_oracle":
        return bool(fx.get("restore"))
    return True


def main(argv=None):
    a = runner.parse_args("mramfs integration tests", CFG, argv)
    print("mramfs integration: build=%s fixtures=%s"
          % (CFG["build"], CFG["fixtures"]), flush=True)
    for b in (mramfs_bin(), inspect_bin()):
        if not os.access(b, os.X_OK):
            print("warning: %s not built: mount tests will fail" % b,
                  flush=True)
    WATCHDOG.start()

    def cleanup():
        for m in list(ACTIVE.values()):
            m.cleanup()
    return runner.run(build_suite(a.k), a.v, cleanup, CountingResult)


if __name__ == "__main__":
    sys.exit(main())
