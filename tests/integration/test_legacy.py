#!/usr/bin/env python3
"""mramfs integration tests for legacy (non-mapped-ram) streams, the page index kept
between mounts, and libvirt saves: mount real fixture images with the real FUSE.

Run:  python3 tests/integration/test_legacy.py [--build BUILD_DIR]
          [--fixtures FIXTURE_DIR] [-k SUBSTRING ...] [-v]
      (same options, environment and needs as test_mount.py, whose helpers this file
      imports; the last line printed is "N passed, N failed[, N skipped]" and the exit
      status is non-zero if anything failed)

Every mount runs with XDG_CACHE_HOME pointing at a private temporary directory, so the
default index location ($XDG_CACHE_HOME/mramfs/<sha256 of the image path>.idx) is
exercised without touching the user's cache.

Oracles, all independent of mramfs' C code:
  * legacyref.py, a Python walker of the stream's RAM records (last record wins):
    every page's bytes, the data pages (SEEK_DATA/SEEK_HOLE, st_blocks), the record counts
    and the pages whose last record is ZERO after an earlier PAGE;
  * NAME.json from scripts/make-fixtures.py (block table, patterns, legacy_stats from the
    generator's own walk, the libvirt XML and cookie, the mapped-ram "pair");
  * NAME.restore.bin: pc.ram as a fresh QEMU saw it after loading the image;
  * the mapped-ram save of the same guest state (q35-512M-S, linux-paused-mapped).
"""

import hashlib
import json
import os
import random
import re
import shutil
import stat
import struct
import sys
import tempfile
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import legacyref  # noqa: E402
import runner  # noqa: E402
import test_mount as tm  # noqa: E402
from test_mount import (CFG, CHUNK, MiB, Mount, data_map, first_diff,  # noqa: E402
                        fixture_path, force_unmount, inspect_bin, map_paths, mramfs_bin,
                        pattern_bytes, pread_full, run, sparse_copy, wait_gone)

# legacy fixtures mounted and checked in full (missing ones are skipped)
LEGACY_FIXTURES = ["q35-512M-S-legacy", "linux-paused-legacy", "linux-live-legacy",
                   "linux-live-legacy-xbzrle", "libvirt-raw"]
# (legacy, mapped-ram) saves of the same guest state; later pairs come from json "pair"
PAIRS = [("q35-512M-S-legacy", "q35-512M-S")]
LIBVIRT_MOUNTABLE = ["libvirt-raw", "libvirt-sparse", "libvirt-sparse-parallel4"]
LIBVIRT_COMPRESSED = ["libvirt-zstd", "libvirt-gzip"]
# the index tests copy this fixture (the first one present)
INDEX_FIXTURES = ["linux-live-legacy", "linux-paused-legacy", "q35-512M-S-legacy"]
BAD_BASE = "q35-512M-S-legacy"
REMOUNT_LIMIT = 1.0          # seconds; generous, benchmarks measure the real number


def pack_bin():
    return os.path.join(CFG["build"], "fs", "mramfs-pack")


def load_json(name):
    with open(fixture_path(name, ".json")) as f:
        return json.load(f)


def have(name):
    return (os.path.exists(fixture_path(name, ".img")) and
            os.path.exists(fixture_path(name, ".json")))


def offset_of(fx):
    return tm.parse_offset_option(fx.get("mount_options") or "")


def mount_json(m):
    with open(m.path(".mramfs.json"), "rb") as f:
        return json.loads(f.read())


def default_index_path(image):
    """$XDG_CACHE_HOME/mramfs/<sha256 of the absolute image path>.idx"""
    h = hashlib.sha256(os.path.abspath(image).encode()).hexdigest()
    return os.path.join(os.environ["XDG_CACHE_HOME"], "mramfs", h + ".idx")


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def files_equal(a, b):
    """(True, None) or (False, first differing offset) for two files, read in chunks."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False, min(os.stat(a).st_size, os.stat(b).st_size)
    off = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False, off + first_diff(x, y)
            if not x:
                return True, None
            off += len(x)


def mount_fingerprint(m, blocks):
    """{path: (st_size, st_blocks, SEEK walk, sha256 of the data extents)} of a mount."""
    out = {}
    for rel in blocks:
        p = m.path(rel)
        st = os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            runs = data_map(fd, st.st_size)
            h = hashlib.sha256()
            for a, b in runs:
                off = a
                while off < b:
                    n = min(CHUNK, b - off)
                    h.update(pread_full(fd, off, n))
                    off += n
        finally:
            os.close(fd)
        out[rel] = (st.st_size, st.st_blocks, runs, h.hexdigest())
    return out


def umount_and_wait(testcase, m):
    pid = m.pid
    r = m.unmount()
    testcase.assertEqual(r.returncode, 0, "umount: %s" % r.stderr.decode())
    if pid:
        testcase.assertTrue(wait_gone(pid), "daemon %d alive after umount" % pid)
    m.cleanup()


def check_restore_oracle(testcase, fx, mount_path, where):
    """pc.ram through the mount equals NAME.restore.bin over every json restore range."""
    rs = fx["restore"]
    path = os.path.join(CFG["fixtures"], rs["file"])
    testcase.assertTrue(os.path.exists(path), "%s: %s missing" % (where, path))
    rfd = os.open(path, os.O_RDONLY)
    mfd = os.open(mount_path, os.O_RDONLY)
    try:
        rsize = os.fstat(rfd).st_size
        msize = os.fstat(mfd).st_size
        rmap, mmap_ = data_map(rfd, rsize), data_map(mfd, msize)
        testcase.assertTrue(rs["ranges"], where)
        compared = 0
        for rg in rs["ranges"]:
            ro, fo, ln = rg["ram_offset"], rg["file_offset"], rg["length"]
            testcase.assertLessEqual(fo + ln, rsize, where)
            testcase.assertLessEqual(ro + ln, msize, where)
            off = 0
            while off < ln:
                n = min(CHUNK, ln - off)
                if not (tm._overlaps(rmap, fo + off, fo + off + n) or
                        tm._overlaps(mmap_, ro + off, ro + off + n)):
                    off += n          # a hole on both sides
                    continue
                exp = pread_full(rfd, fo + off, n)
                got = pread_full(mfd, ro + off, n)
                if got != exp:
                    i = first_diff(got, exp)
                    testcase.fail("%s: pc.ram differs from the QEMU restore dump at ram "
                                  "offset %#x (gpa %#x): got %s expected %s"
                                  % (where, ro + off + i, rg["gpa"] + off + i,
                                     got[i:i + 16].hex(), exp[i:i + 16].hex()))
                compared += n
                off += n
        testcase.assertGreater(compared, 0, "%s: nothing compared" % where)
    finally:
        os.close(rfd)
        os.close(mfd)


# ---------------------------------------------------------------------------
# every legacy fixture, mounted and checked against legacyref
# ---------------------------------------------------------------------------

class LegacyFixtureTests(unittest.TestCase):
    NAME = None
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.skip_reason = cls.setup_error = None
        cls.mount = cls.ref = None
        if not have(cls.NAME):
            cls.skip_reason = "fixture %s missing" % cls.NAME
            return
        tm.WATCHDOG.arm(300, "setUpClass of " + cls.NAME)
        try:
            cls.fx = load_json(cls.NAME)
            cls.image = fixture_path(cls.NAME, ".img")
            cls.opts = cls.fx.get("mount_options") or ""
            cls.ref = legacyref.Image(cls.image, offset_of(cls.fx))
            cls.pcram = cls.ref.block(b"pc.ram")
            cls.paths = dict(zip([b.idstr for b in cls.ref.blocks],
                                 map_paths([b.idstr for b in cls.ref.blocks])))
            cls.mount = Mount(cls.image, cls.opts, tag=cls.NAME).mount()
            cls.json = mount_json(cls.mount)
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

    def setUp(self):
        if self.skip_reason:
            self.skipTest(self.skip_reason)
        if self.setup_error:
            self.fail("[%s] setup failed:\n%s" % (self.NAME, self.setup_error))

    def where(self, blk=None, off=None):
        s = "[%s]" % self.NAME
        if blk is not None:
            s += " block %r" % blk.name
        if off is not None:
            s += " offset %#x" % off
        return s

    def bpath(self, blk):
        return self.mount.path(self.paths[blk.idstr])

    def assert_bytes(self, got, exp, blk, off, what="bytes"):
        if got == exp:
            return
        i = first_diff(got, exp)
        self.fail("%s: %s differ at %#x (read %d, expected %d): got %s expected %s"
                  % (self.where(blk), what, off + i, len(got), len(exp),
                     got[i:i + 16].hex(), exp[i:i + 16].hex()))

    # -- 1. the description ---------------------------------------------------------
    def test_01_description(self):
        j, fx, ref, w = self.json, self.fx, self.ref, self.where()
        self.assertEqual(j["format"], "legacy", w)
        self.assertEqual(j["image"], self.image, w)
        self.assertEqual(j["container"], "libvirt" if fx.get("libvirt") else "qemu", w)
        self.assertEqual(j["stream_offset"], fx["stream_offset"], w)
        self.assertEqual(j["stream_offset"], ref.stream_offset, w)
        self.assertEqual(j["file_size"], os.stat(self.image).st_size, w)
        self.assertEqual(j["machine_type"], fx["machine_type"], w)
        self.assertEqual(j["machine_type"], ref.machine_type, w)
        self.assertEqual(j["page_size"], 4096, w)
        self.assertEqual(j["capabilities"], ref.capabilities, w)
        self.assertNotIn("mapped-ram", j["capabilities"], w)
        self.assertIs(j["complete"], True, w)
        self.assertIs(j["vmdesc"], True, w)
        got = [(b["idstr"], b["size"]) for b in j["blocks"]]
        self.assertEqual(got, [(b["idstr"], b["used_length"]) for b in fx["ramblocks"]], w)
        for b, rb in zip(j["blocks"], ref.blocks):
            wb = self.where(rb)
            self.assertEqual(b["path"], self.paths[rb.idstr], wb)
            self.assertEqual(b["pages"], rb.pages, wb)
            self.assertEqual(b["page_size"], 4096, wb)
            self.assertEqual(b["data_pages"], ref.data_pages(rb), wb)
            self.assertEqual((b["bitmap_offset"], b["pages_offset"]), (0, 0), wb)
        lg = j["legacy"]
        for k in ("page_records", "zero_records", "xbzrle_records"):
            self.assertEqual(lg[k], ref.stats[k], "%s legacy.%s" % (w, k))
        self.assertIsInstance(lg["index_from_cache"], bool, w)
        # the daemon ran with a private XDG_CACHE_HOME and no index= option
        self.assertEqual(lg["index"], default_index_path(self.image), w)
        self.assertTrue(os.path.exists(lg["index"]), w)

    def test_01_oracles_agree(self):
        """legacyref and the generator's own walk (json legacy_stats) count the same."""
        st = self.fx.get("legacy_stats")
        if st is None:
            self.skipTest("%s.json has no legacy_stats" % self.NAME)
        mine = self.ref.all_stats()
        for k in ("page_records", "zero_records", "xbzrle_records", "resent",
                  "zero_after_data"):
            self.assertEqual(mine[k], st[k], "%s: legacyref %s %d, json legacy_stats %d"
                             % (self.where(), k, mine[k], st[k]))

    def test_01_resent_count(self):
        """legacy.resent = records for a page that an earlier record (of any kind) already
        sent: records minus distinct pages."""
        self.assertEqual(self.json["legacy"]["resent"], self.ref.stats["resent"],
                         "%s: description resent %d, legacyref %d (json legacy_stats %s)"
                         % (self.where(), self.json["legacy"]["resent"],
                            self.ref.stats["resent"],
                            (self.fx.get("legacy_stats") or {}).get("resent")))

    # -- 2. the tree -----------------------------------------------------------------
    def test_02_tree(self):
        mnt = self.mount.mnt
        found = {}
        for root, _dirs, files in os.walk(mnt):
            for fn in files:
                rel = os.path.relpath(os.path.join(root, fn), mnt)
                found[rel] = os.lstat(os.path.join(root, fn)).st_size
        want = {self.paths[b.idstr]: b.used_length for b in self.ref.blocks}
        want[".mramfs.json"] = found.get(".mramfs.json")
        want["vmdesc.json"] = found.get("vmdesc.json")  # content: test_mount test_01_vmdesc
        with open(self.mount.path(".mramfs.json")) as f:
            phys = json.load(f)["physmem"]["ranges"]
        if phys:  # the guest-physical view (test_physmem.py): as long as its last range
            want["physmem.raw"] = max(r["gpa"] + r["size"] for r in phys)
            want["physmem.elf"] = found.get("physmem.elf")  # contents: PairTests
            self.assertIn("physmem.elf", found, self.where())
        want["cpus.json"] = found.get("cpus.json")  # contents: PairTests
        self.assertIn("cpus.json", found, self.where())
        lv = self.fx.get("libvirt")
        if lv:
            want[".libvirt/domain.xml"] = len(lv["xml"].encode())
            if lv.get("cookie") is not None:
                want[".libvirt/cookie.xml"] = len(lv["cookie"].encode())
        self.assertEqual(found, want, self.where())

    # -- 3. extents -------------------------------------------------------------------
    def test_03_seek_and_st_blocks(self):
        for blk in self.ref.blocks:
            p = self.bpath(blk)
            st = os.stat(p)
            w = self.where(blk)
            self.assertEqual(st.st_size, blk.used_length, w)
            self.assertEqual(st.st_blocks, self.ref.data_pages(blk) * blk.page_size // 512,
                             "%s: st_blocks" % w)
            fd = os.open(p, os.O_RDONLY)
            try:
                got, exp = data_map(fd, blk.used_length), self.ref.byte_runs(blk)
                if got != exp:
                    self.fail("%s: SEEK_DATA/SEEK_HOLE walk %s != legacyref data pages %s"
                              % (w, tm._fmt_runs(got), tm._fmt_runs(exp)))
            finally:
                os.close(fd)

    # -- 4. bytes -----------------------------------------------------------------------
    def test_04_data_bytes(self):
        """Every data extent of every block equals legacyref's last-record bytes."""
        for blk in self.ref.blocks:
            fd = os.open(self.bpath(blk), os.O_RDONLY)
            try:
                for a, b in self.ref.byte_runs(blk):
                    off = a
                    while off < b:
                        n = min(CHUNK, b - off)
                        self.assert_bytes(pread_full(fd, off, n), self.ref.read(blk, off, n),
                                          blk, off)
                        off += n
                self.assertEqual(os.pread(fd, 4096, blk.used_length), b"", self.where(blk))
            finally:
                os.close(fd)

    def test_04_holes_and_unaligned(self):
        rnd = random.Random("legacy-" + self.NAME)
        for blk in self.ref.blocks:
            ps = blk.page_size
            fd = os.open(self.bpath(blk), os.O_RDONLY)
            try:
                n = tries = 0
                while n < 100 and tries < 5000:
                    tries += 1
                    pg = rnd.randrange(blk.pages)
                    if self.ref.is_data(blk, pg):
                        continue
                    self.assert_bytes(os.pread(fd, ps, pg * ps), bytes(ps), blk, pg * ps,
                                      "hole page")
                    n += 1
                runs = self.ref.runs(blk)
                sel = runs if len(runs) <= 16 else runs[:8] + runs[-8:]
                for a, b in sel:
                    for edge in (a * ps, b * ps):
                        for back, ln in ((100, 300), (1, 2), (4095, 4097),
                                         (rnd.randrange(1, ps), rnd.randrange(2, 3 * ps))):
                            off = max(0, edge - back)
                            self.assert_bytes(os.pread(fd, ln, off),
                                              self.ref.read(blk, off, ln), blk, off,
                                              "unaligned read %d@%#x" % (ln, off))
            finally:
                os.close(fd)

    def test_05_pattern_pages(self):
        pats = self.fx.get("patterns") or []
        if not pats:
            self.skipTest("%s.json lists no loader patterns" % self.NAME)
        fd = os.open(self.bpath(self.pcram), os.O_RDONLY)
        try:
            for p in pats:
                exp = pattern_bytes(p)
                self.assert_bytes(pread_full(fd, p["ram_offset"], len(exp)), exp,
                                  self.pcram, p["ram_offset"], "pattern %s" % p["tag"])
        finally:
            os.close(fd)

    def test_06_restore_oracle(self):
        if not self.fx.get("restore"):
            self.skipTest("%s has no restore oracle" % self.NAME)
        check_restore_oracle(self, self.fx, self.bpath(self.pcram), self.where(self.pcram))

    def test_07_zero_after_data_reads_zero(self):
        """Pages whose last record is ZERO after an earlier PAGE are holes reading zeros,
        not the stale bytes of that PAGE record (which are still in the file)."""
        total = stale = 0
        for blk in self.ref.blocks:
            pages = self.ref.zero_after_data(blk)
            if not pages:
                continue
            ps = blk.page_size
            fd = os.open(self.bpath(blk), os.O_RDONLY)
            try:
                for pg, old in pages:
                    self.assert_bytes(os.pread(fd, ps, pg * ps), bytes(ps), blk, pg * ps,
                                      "page zeroed after data")
                    self.assertEqual(os.lseek(fd, pg * ps, os.SEEK_HOLE), pg * ps,
                                     "%s: zeroed page is not a hole" % self.where(blk, pg * ps))
                    if old is not None and self.ref.pread(old, ps) != bytes(ps):
                        stale += 1
                    total += 1
            finally:
                os.close(fd)
        st = self.fx.get("legacy_stats") or {}
        if st.get("zero_after_data") is not None:
            self.assertEqual(total, st["zero_after_data"], self.where())
        if self.fx.get("live"):
            self.assertGreater(total, 0, "%s: a live save with no page zeroed after data"
                               % self.where())
            self.assertGreater(stale, 0, "%s: no zeroed page has stale non-zero bytes in "
                               "the file: the check proves nothing" % self.where())

    def test_08_xbzrle(self):
        want = self.fx.get("xbzrle") or "xbzrle" in self.NAME
        n = self.ref.stats["xbzrle_records"]
        if not want and not n:
            self.skipTest("%s has no XBZRLE records" % self.NAME)
        self.assertGreater(n, 0, "%s: no XBZRLE record in an xbzrle save" % self.where())
        self.assertEqual(self.json["legacy"]["xbzrle_records"], n, self.where())
        # every page whose last record is XBZRLE, through the mount
        checked = 0
        for blk in self.ref.blocks:
            ps = blk.page_size
            fd = os.open(self.bpath(blk), os.O_RDONLY)
            try:
                for pg, e in sorted(blk.last.items()):
                    if e[0] != "X":
                        continue
                    self.assert_bytes(os.pread(fd, ps, pg * ps), e[1], blk, pg * ps,
                                      "XBZRLE-decoded page")
                    checked += 1
            finally:
                os.close(fd)
        self.assertGreater(checked, 0, self.where())

    # -- 9. mramfs-inspect -----------------------------------------------------------
    def test_09_inspect_json(self):
        argv = [inspect_bin(), self.image, "--json"]
        if offset_of(self.fx) is not None:
            argv += ["--offset", str(offset_of(self.fx))]
        r = run(argv, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        j = json.loads(r.stdout)
        # the mount wrote the index, so inspect (same default location) loads it
        self.assertIs(j["legacy"]["index_from_cache"], True, self.where())
        a, b = dict(j), dict(self.json)
        a["legacy"] = dict(a["legacy"], index_from_cache=None)
        b["legacy"] = dict(b["legacy"], index_from_cache=None)
        self.assertEqual(a, b, "%s: inspect --json != /.mramfs.json" % self.where())
        r = run(argv + ["--index", ""], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        j = json.loads(r.stdout)
        self.assertIsNone(j["legacy"]["index"], self.where())
        self.assertIs(j["legacy"]["index_from_cache"], False, self.where())
        self.assertEqual(j["blocks"], self.json["blocks"], self.where())

    def test_10_libvirt_files(self):
        lv = self.fx.get("libvirt")
        if not lv:
            self.skipTest("%s is not a libvirt save" % self.NAME)
        check_libvirt_files(self, self.mount, lv, self.json, self.where())


def check_libvirt_files(testcase, m, lv, j, where):
    """.libvirt/domain.xml and cookie.xml equal the json's xml/cookie exactly; the
    description's libvirt object matches the header."""
    with open(m.path(".libvirt/domain.xml"), "rb") as f:
        testcase.assertEqual(f.read(), lv["xml"].encode(), "%s: domain.xml" % where)
    cookie = m.path(".libvirt/cookie.xml")
    if lv.get("cookie") is None:
        testcase.assertFalse(os.path.exists(cookie), where)
    else:
        with open(cookie, "rb") as f:
            testcase.assertEqual(f.read(), lv["cookie"].encode(), "%s: cookie.xml" % where)
    for p in (".libvirt/domain.xml", ".libvirt/cookie.xml"):
        if os.path.exists(m.path(p)):
            st = os.stat(m.path(p))
            testcase.assertEqual(stat.S_IMODE(st.st_mode), 0o444, where)
    d = j["libvirt"]
    testcase.assertIsInstance(d, dict, where)
    for k in ("version", "format", "was_running", "data_len"):
        testcase.assertEqual(d[k], lv[k], "%s: libvirt.%s" % (where, k))
    names = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd", 6: "sparse"}
    testcase.assertEqual(d["format_name"], names[lv["format"]], where)
    testcase.assertEqual(j["container"], "libvirt", where)
    testcase.assertEqual(j["stream_offset"], 92 + lv["data_len"], where)


# ---------------------------------------------------------------------------
# a legacy save against the mapped-ram save of the same guest state
# ---------------------------------------------------------------------------

class PairTests(unittest.TestCase):
    LEGACY = MAPPED = None

    def setUp(self):
        for n in (self.LEGACY, self.MAPPED):
            if not have(n):
                self.skipTest("fixture %s missing" % n)
        self.mounts = []

    def tearDown(self):
        for m in self.mounts:
            m.cleanup()

    def test_pair_identical(self):
        fl = load_json(self.LEGACY)
        if fl.get("pair") is not None:
            self.assertEqual(fl["pair"], self.MAPPED)
        ml = Mount(fixture_path(self.LEGACY, ".img"), tag="pairL")
        self.mounts.append(ml.mount())
        mm = Mount(fixture_path(self.MAPPED, ".img"), tag="pairM")
        self.mounts.append(mm.mount())
        jl, jm = mount_json(ml), mount_json(mm)
        self.assertEqual(jl["format"], "legacy")
        self.assertEqual(jm["format"], "mapped-ram")
        self.assertEqual([(b["idstr"], b["path"], b["size"], b["data_pages"])
                          for b in jl["blocks"]],
                         [(b["idstr"], b["path"], b["size"], b["data_pages"])
                          for b in jm["blocks"]], "block tables differ")
        for b in jm["blocks"]:
            self.compare_files(ml.path(b["path"]), mm.path(b["path"]), b["path"], True)
        # the views sit above the image interface: the same guest gives the same views
        self.assertEqual(jl["device_state"], jm["device_state"])
        self.assertEqual(jl["physmem"], jm["physmem"])
        for view in ("physmem.raw", "physmem.elf"):
            self.compare_files(ml.path(view), mm.path(view), view, False)
        with open(ml.path("cpus.json"), "rb") as a, open(mm.path("cpus.json"), "rb") as b:
            self.assertEqual(a.read(), b.read(), "cpus.json differs")

    def compare_files(self, pl, pm, name, every_byte):
        """Same size, st_blocks, SEEK walk and bytes (@every_byte: holes too, else the
        data extents only: the views are several GiB of holes)."""
        w = "[%s vs %s] %s" % (self.LEGACY, self.MAPPED, name)
        sl, sm = os.stat(pl), os.stat(pm)
        self.assertEqual((sl.st_size, sl.st_blocks), (sm.st_size, sm.st_blocks), w)
        fl_, fm = os.open(pl, os.O_RDONLY), os.open(pm, os.O_RDONLY)
        try:
            extents = data_map(fl_, sl.st_size)
            self.assertEqual(extents, data_map(fm, sm.st_size),
                             "%s: SEEK_DATA/SEEK_HOLE walks differ" % w)
            for lo, hi in [(0, sl.st_size)] if every_byte else extents:
                off = lo
                while off < hi:
                    n = min(CHUNK, hi - off)
                    x, y = pread_full(fl_, off, n), pread_full(fm, off, n)
                    if x != y:
                        i = first_diff(x, y)
                        self.fail("%s: bytes differ at %#x: legacy %s mapped %s"
                                  % (w, off + i, x[i:i + 16].hex(), y[i:i + 16].hex()))
                    off += n
        finally:
            os.close(fl_)
            os.close(fm)


# ---------------------------------------------------------------------------
# the page index between mounts
# ---------------------------------------------------------------------------

class IndexCacheTests(unittest.TestCase):
    """The index of a legacy image: written by the first mount, loaded by the next, never
    trusted for a changed image, never written over by a damaged one."""

    _check_err = tm.BadInputTests._check_err

    @classmethod
    def setUpClass(cls):
        cls.src = next((n for n in INDEX_FIXTURES if have(n)), None)
        cls.tmp = tempfile.mkdtemp(prefix="mramfs-idx-")
        cls.image = None
        if cls.src is None:
            return
        cls.fx = load_json(cls.src)
        cls.image = os.path.join(cls.tmp, "copy.img")
        sparse_copy(fixture_path(cls.src, ".img"), cls.image)
        with legacyref.Image(cls.image, offset_of(cls.fx)) as ref:
            cls.block_paths = map_paths([b.idstr for b in ref.blocks])
            cls.records = ref.records
            cls.end = ref.sections["end"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        if self.src is None:
            self.skipTest("no legacy fixture for the index tests (%s)"
                          % ", ".join(INDEX_FIXTURES))
        self.mounts = []
        self.idx_dir = tempfile.mkdtemp(prefix="idx-", dir=self.tmp)

    def tearDown(self):
        for m in self.mounts:
            m.cleanup()
        shutil.rmtree(self.idx_dir, ignore_errors=True)

    def mount(self, image=None, options=""):
        opts = ",".join(o for o in (self.fx.get("mount_options"), options) if o)
        m = Mount(image or self.image, opts, tag="idx")
        self.mounts.append(m)
        return m.mount()

    def test_index_created_then_loaded(self):
        idx = os.path.join(self.idx_dir, "sub", "copy.idx")
        m1 = self.mount(options="index=" + idx)
        first = m1.mount_seconds
        self.assertTrue(os.path.isfile(idx), "index file not created")
        j1 = mount_json(m1)
        self.assertEqual(j1["legacy"]["index"], idx)
        self.assertIs(j1["legacy"]["index_from_cache"], False)
        fp1 = mount_fingerprint(m1, self.block_paths)
        umount_and_wait(self, m1)
        idx_mtime = os.stat(idx).st_mtime_ns
        m2 = self.mount(options="index=" + idx)
        again = m2.mount_seconds
        print("\n  [%s, %d MiB] first mount %.3f s (indexing), remount %.3f s (index loaded)"
              % (self.src, os.stat(self.image).st_size >> 20, first, again), flush=True)
        j2 = mount_json(m2)
        self.assertIs(j2["legacy"]["index_from_cache"], True)
        self.assertEqual(j2["legacy"]["index"], idx)
        self.assertLess(again, REMOUNT_LIMIT, "remount with an index took %.3f s" % again)
        self.assertEqual(mount_fingerprint(m2, self.block_paths), fp1,
                         "bytes/extents differ between the indexing mount and the cached one")
        for k in ("page_records", "zero_records", "xbzrle_records", "resent"):
            self.assertEqual(j2["legacy"][k], j1["legacy"][k], k)
        self.assertEqual(j2["blocks"], j1["blocks"])
        self.assertEqual(os.stat(idx).st_mtime_ns, idx_mtime, "a loaded index was rewritten")
        umount_and_wait(self, m2)

    def test_touch_rescans(self):
        idx = os.path.join(self.idx_dir, "t.idx")
        m = self.mount(options="index=" + idx)
        fp = mount_fingerprint(m, self.block_paths)
        umount_and_wait(self, m)
        st = os.stat(self.image)
        os.utime(self.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        m = self.mount(options="index=" + idx)
        self.assertIs(mount_json(m)["legacy"]["index_from_cache"], False,
                      "a touched image was served from its old index")
        self.assertEqual(mount_fingerprint(m, self.block_paths), fp)
        umount_and_wait(self, m)
        m = self.mount(options="index=" + idx)
        self.assertIs(mount_json(m)["legacy"]["index_from_cache"], True,
                      "the rescan did not rewrite the index")
        umount_and_wait(self, m)

    def _expect_fail(self, image, options, regex, case):
        mnt = tempfile.mkdtemp(prefix="mramfs-idxbad-")
        try:
            argv = [mramfs_bin(), image, mnt]
            if options:
                argv += ["-o", options]
            r = run(argv, timeout=120)
            self.assertFalse(os.path.ismount(mnt), "%s: mounted" % case)
            self.assertEqual(tm.pids_mentioning(mnt), [], "%s: daemon left" % case)
            self._check_err(r, "mramfs", image, regex, case)
        finally:
            force_unmount(mnt)
            os.rmdir(mnt)

    def test_damaged_copy_leaves_good_index_alone(self):
        idx = os.path.join(self.idx_dir, "good.idx")
        m = self.mount(options="index=" + idx)
        umount_and_wait(self, m)
        default_good = default_index_path(self.image)
        m = self.mount()                                  # the default location too
        self.assertEqual(mount_json(m)["legacy"]["index"], default_good)
        umount_and_wait(self, m)
        before = {p: (os.stat(p).st_mtime_ns, file_digest(p)) for p in (idx, default_good)}
        bad = os.path.join(self.idx_dir, "bad.img")
        cases = []
        shutil.copyfile(self.image, bad)
        os.truncate(bad, self.end)                         # ends before the ram END
        cases.append(("truncated before END", r"incomplete.*ram end"))
        for what, regex in cases:
            self._expect_fail(bad, "index=" + idx, regex, what + " (index= of the good one)")
            self._expect_fail(bad, "", regex, what + " (default index)")
        rec = self.records[legacyref.PAGE][0]
        shutil.copyfile(self.image, bad)
        with open(bad, "r+b") as f:                         # a record with unknown flags
            f.seek(rec.offset)
            (v,) = struct.unpack(">Q", f.read(8))
            f.seek(rec.offset)
            f.write(struct.pack(">Q", (v & ~0xfff) | 0x400))
        self._expect_fail(bad, "index=" + idx, r"unknown flags 0x400",
                          "corrupted record flags (index= of the good one)")
        after = {p: (os.stat(p).st_mtime_ns, file_digest(p)) for p in (idx, default_good)}
        self.assertEqual(after, before, "a damaged copy changed the good image's index")
        self.assertFalse(os.path.exists(default_index_path(bad)),
                         "an index was written for an image that does not open")
        m = self.mount(options="index=" + idx)
        self.assertIs(mount_json(m)["legacy"]["index_from_cache"], True)
        umount_and_wait(self, m)

    def test_empty_index_option_writes_nothing(self):
        xdg = os.path.join(os.environ["XDG_CACHE_HOME"], "mramfs")
        before = sorted(os.listdir(xdg)) if os.path.isdir(xdg) else []
        copy = os.path.join(self.idx_dir, "noidx.img")
        sparse_copy(self.image, copy)
        for _ in range(2):
            m = self.mount(image=copy, options="index=")
            j = mount_json(m)
            self.assertIsNone(j["legacy"]["index"])
            self.assertIs(j["legacy"]["index_from_cache"], False)
            umount_and_wait(self, m)
        after = sorted(os.listdir(xdg)) if os.path.isdir(xdg) else []
        self.assertEqual(after, before, "index= wrote under $XDG_CACHE_HOME/mramfs")
        self.assertEqual(os.listdir(self.idx_dir), ["noidx.img"])

    def test_index_option_naming_the_image(self):
        """-o index=IMAGE (a slip) must not replace the saved VM with an index file."""
        copy = os.path.join(self.idx_dir, "victim.img")
        sparse_copy(self.image, copy)
        digest = file_digest(copy)
        mnt = tempfile.mkdtemp(prefix="mramfs-victim-")
        try:
            r = run([mramfs_bin(), copy, mnt, "-o", "index=" + copy], timeout=120)
            force_unmount(mnt)
        finally:
            force_unmount(mnt)
            os.rmdir(mnt)
        r = run([inspect_bin(), copy, "--index", copy], timeout=120)
        self.assertEqual(r.returncode, 0, "inspect --index IMAGE must still open the image")
        self.assertEqual(file_digest(copy), digest,
                         "the image was overwritten by its index (it now starts with %r)"
                         % open(copy, "rb").read(8))

    def test_default_location(self):
        copy = os.path.join(self.idx_dir, "deflt.img")
        sparse_copy(self.image, copy)
        want = default_index_path(copy)
        self.assertFalse(os.path.exists(want))
        m = self.mount(image=copy)
        j = mount_json(m)
        self.assertEqual(j["legacy"]["index"], want)
        self.assertIs(j["legacy"]["index_from_cache"], False)
        self.assertTrue(os.path.isfile(want))
        self.assertEqual(stat.S_IMODE(os.stat(want).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(want)).st_mode), 0o700)
        umount_and_wait(self, m)
        # the same file by a relative path from another directory: the same index
        rel = os.path.relpath(copy, self.tmp)
        m = Mount(rel, self.fx.get("mount_options") or "", tag="idxrel")
        self.mounts.append(m)
        cwd = os.getcwd()
        os.chdir(self.tmp)
        try:
            m.mount()
        finally:
            os.chdir(cwd)
        j = mount_json(m)
        self.assertEqual(j["legacy"]["index"], want)
        self.assertIs(j["legacy"]["index_from_cache"], True)
        umount_and_wait(self, m)
        os.unlink(want)


# ---------------------------------------------------------------------------
# libvirt saves
# ---------------------------------------------------------------------------

class LibvirtTests(unittest.TestCase):
    expect_reject = tm.BadInputTests.expect_reject
    _check_err = tm.BadInputTests._check_err

    def setUp(self):
        self.mounts = []
        self.tmp = tempfile.mkdtemp(prefix="mramfs-lv-")

    def tearDown(self):
        for m in self.mounts:
            m.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def need(self, name):
        if not have(name):
            self.skipTest("fixture %s missing" % name)
        return fixture_path(name, ".img"), load_json(name)

    def mounted(self, name):
        img, fx = self.need(name)
        m = Mount(img, fx.get("mount_options") or "", tag=name)
        self.mounts.append(m.mount())
        return m, fx

    def _mountable(self, name, fmt):
        m, fx = self.mounted(name)
        j = mount_json(m)
        self.assertEqual(j["format"], fmt, name)
        check_libvirt_files(self, m, fx["libvirt"], j, "[%s]" % name)
        if fx.get("restore"):
            check_restore_oracle(self, fx, m.path("pc.ram"), "[%s] pc.ram" % name)
        umount_and_wait(self, m)

    def test_raw(self):
        self._mountable("libvirt-raw", "legacy")

    def test_sparse(self):
        self._mountable("libvirt-sparse", "mapped-ram")

    def test_sparse_parallel4(self):
        self._mountable("libvirt-sparse-parallel4", "mapped-ram")

    def _compressed(self, name):
        img, fx = self.need(name)
        fmt = name.split("-")[1]
        self.expect_reject(img, r"%s.*mramfs-pack" % fmt, "%s (compressed libvirt save)" % name)
        if not os.access(pack_bin(), os.X_OK):
            self.skipTest("%s not built" % pack_bin())
        raw_eq = fixture_path(name, ".raw-equivalent.img")
        self.assertTrue(os.path.exists(raw_eq), raw_eq)
        out = os.path.join(self.tmp, name + ".packed.img")
        r = run([pack_bin(), "--quiet", img, out], timeout=900)
        self.assertEqual(r.returncode, 0, "mramfs-pack: %s" % r.stderr.decode())
        same, at = files_equal(out, raw_eq)
        self.assertTrue(same, "%s: mramfs-pack output differs from %s at %s"
                        % (name, os.path.basename(raw_eq), at))
        m = Mount(out, tag=name + "-packed")
        self.mounts.append(m.mount())
        j = mount_json(m)
        self.assertEqual(j["format"], "legacy")
        self.assertEqual(j["libvirt"]["format_name"], "raw")
        with open(m.path(".libvirt/domain.xml"), "rb") as f:
            self.assertEqual(f.read(), fx["libvirt"]["xml"].encode(), "%s: domain.xml" % name)
        with legacyref.Image(out) as ref:
            for blk, path in zip(ref.blocks, map_paths([b.idstr for b in ref.blocks])):
                fd = os.open(m.path(path), os.O_RDONLY)
                try:
                    self.assertEqual(data_map(fd, blk.used_length), ref.byte_runs(blk),
                                     "%s packed: %s extents" % (name, path))
                    for a, b in ref.byte_runs(blk):
                        self.assertEqual(pread_full(fd, a, b - a), ref.read(blk, a, b - a),
                                         "%s packed: %s bytes at %#x" % (name, path, a))
                finally:
                    os.close(fd)
        umount_and_wait(self, m)

    def test_zstd(self):
        self._compressed("libvirt-zstd")

    def test_gzip(self):
        self._compressed("libvirt-gzip")


# ---------------------------------------------------------------------------
# broken legacy images
# ---------------------------------------------------------------------------

class BadLegacyInputTests(unittest.TestCase):
    """Crafted broken legacy images: one-line errors with the reason, exit 1, no mount
    (mramfs and mramfs-inspect, text and --json)."""

    expect_reject = tm.BadInputTests.expect_reject
    _check_err = tm.BadInputTests._check_err
    TRUNC = r"truncat"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mramfs-badleg-")
        cls.base = fixture_path(BAD_BASE, ".img")
        cls.ref = legacyref.Image(cls.base) if os.path.exists(cls.base) else None

    @classmethod
    def tearDownClass(cls):
        if cls.ref is not None:
            cls.ref.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        if self.ref is None:
            self.skipTest("fixture %s missing" % BAD_BASE)

    def copy(self, tag):
        dst = os.path.join(self.tmp, tag + ".img")
        shutil.copyfile(self.base, dst)
        return dst

    def truncated(self, tag, size):
        p = self.copy(tag)
        os.truncate(p, size)
        return p

    def patched(self, tag, off, data):
        p = self.copy(tag)
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(data)
        return p

    def named_page_record(self):
        return self.ref.named[legacyref.PAGE][0]

    def test_truncated_in_block_list(self):
        b = self.ref.blocks[1]
        self.expect_reject(self.truncated("tbl", b.entry_offset + 3), self.TRUNC,
                           "truncated inside the block list")
        self.expect_reject(self.truncated("tbl2", self.ref.blocks[-1].entry_offset + 5),
                           self.TRUNC, "truncated inside the last block list entry")

    def test_truncated_in_page_record(self):
        r = self.named_page_record()
        self.expect_reject(self.truncated("tpr", r.data_offset + 100), self.TRUNC,
                           "truncated inside a PAGE record's bytes")
        self.expect_reject(self.truncated("tph", r.offset + 4), self.TRUNC,
                           "truncated inside a record header")
        self.expect_reject(self.truncated("tpi", r.idstr_offset + 2), self.TRUNC,
                           "truncated inside a record's idstr")

    def test_truncated_before_end(self):
        self.expect_reject(self.truncated("tend", self.ref.sections["end"]),
                           r"incomplete.*ram end section", "truncated before the ram END")
        self.expect_reject(self.truncated("tin", self.ref.sections["end"] + 5 + 8),
                           self.TRUNC + r"|incomplete", "truncated inside the END section")

    def test_truncated_before_vmdesc(self):
        self.expect_reject(self.truncated("tvm", self.ref.vmdesc),
                           r"incomplete.*vm description", "truncated before the VM description")
        self.expect_reject(self.truncated("tvm2", self.ref.file_size - 10),
                           r"incomplete.*vm description", "truncated inside the VM description")
        self.expect_reject(self.truncated("tdev", self.ref.ram_end),
                           r"incomplete.*vm description", "truncated right after the ram END")

    def test_corrupted_record_flags(self):
        r = self.named_page_record()
        v = struct.unpack(">Q", self.ref.pread(r.offset, 8))[0]
        p = self.patched("flag", r.offset, struct.pack(">Q", (v & ~0xfff) | 0x400))
        self.expect_reject(p, r"unknown flags 0x400", "record flags 0x400")
        p = self.patched("cmp", r.offset, struct.pack(">Q", (v & ~0xfff) | 0x100))
        self.expect_reject(p, r"compressed pages.*not supported", "COMPRESS_PAGE record")
        p = self.patched("hook", r.offset, struct.pack(">Q", (v & ~0xfff) | 0x80))
        self.expect_reject(p, r"rdma", "HOOK record")

    def test_unknown_idstr(self):
        r = self.named_page_record()
        p = self.patched("idstr", r.idstr_offset + 1, b"X")
        self.expect_reject(p, r"unknown ramblock", "a record naming an unknown RAMBlock")

    def test_zero_fill_byte(self):
        z = self.ref.records[legacyref.ZERO][0]
        p = self.patched("fill", z.data_offset, b"\x07")
        self.expect_reject(p, r"fill byte 0x07", "ZERO record with fill byte 7")

    def test_offset_past_block(self):
        r = self.named_page_record()
        v = struct.unpack(">Q", self.ref.pread(r.offset, 8))[0]
        size = r.block.used_length
        p = self.patched("past", r.offset, struct.pack(">Q", size | (v & 0xfff)))
        self.expect_reject(p, r"past the end of its ramblock", "record offset past its block")


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def build_suite(filters):
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    classes = []
    for name in LEGACY_FIXTURES:
        classes.append(type("Legacy_" + re.sub(r"\W", "_", name), (LegacyFixtureTests,),
                            {"NAME": name, "__module__": __name__}))
    pairs = list(PAIRS)
    for name in LEGACY_FIXTURES:
        if have(name):
            pair = load_json(name).get("pair")
            if pair and (name, pair) not in pairs:
                pairs.append((name, pair))
    if ("linux-paused-legacy", "linux-paused-mapped") not in pairs:
        pairs.append(("linux-paused-legacy", "linux-paused-mapped"))   # skipped if missing
    for lg, mp in pairs:
        classes.append(type("Pair_" + re.sub(r"\W", "_", lg), (PairTests,),
                            {"LEGACY": lg, "MAPPED": mp, "__module__": __name__}))
    classes += [IndexCacheTests, LibvirtTests, BadLegacyInputTests]
    for cls in classes:
        name = getattr(cls, "NAME", None)
        fx = load_json(name) if name and have(name) else None
        for t in loader.loadTestsFromTestCase(cls):
            if fx is not None and not applicable(t._testMethodName, name, fx):
                continue
            if not filters or any(f in t.id() for f in filters):
                suite.addTest(t)
    return suite


def applicable(method, name, fx):
    """Leave out per-fixture tests that have nothing to check for this fixture (so they
    are neither counted as passed nor as skipped)."""
    if method == "test_01_oracles_agree":
        return fx.get("legacy_stats") is not None
    if method == "test_05_pattern_pages":
        return bool(fx.get("patterns"))
    if method == "test_06_restore_oracle":
        return bool(fx.get("restore"))
    if method == "test_08_xbzrle":
        return bool(fx.get("xbzrle")) or "xbzrle" in name
    if method == "test_10_libvirt_files":
        return bool(fx.get("libvirt"))
    return True


def main(argv=None):
    a = runner.parse_args("mramfs legacy-stream integration tests", CFG, argv)
    xdg = tempfile.mkdtemp(prefix="mramfs-xdg-")
    os.environ["XDG_CACHE_HOME"] = xdg      # every mount's default index goes here
    print("mramfs legacy integration: build=%s fixtures=%s XDG_CACHE_HOME=%s"
          % (CFG["build"], CFG["fixtures"], xdg), flush=True)
    for b in (mramfs_bin(), inspect_bin()):
        if not os.access(b, os.X_OK):
            print("warning: %s not built: mount tests will fail" % b, flush=True)
    tm.WATCHDOG.start()

    def cleanup():
        for m in list(tm.ACTIVE.values()):
            m.cleanup()
        shutil.rmtree(xdg, ignore_errors=True)
    return runner.run(build_suite(a.k), a.v, cleanup, tm.CountingResult)


if __name__ == "__main__":
    sys.exit(main())
