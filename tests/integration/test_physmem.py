#!/usr/bin/env python3
"""Integration tests of the guest-physical view (`physmem.raw`) with real FUSE mounts.

  python3 tests/integration/test_physmem.py --build BUILD [--fixtures DIR] [-k SUBSTR] [-v]

Oracles, each independent of mramfs's own code:
  * the machine rules of qemu-save-formats.md §7, written again here (expected_map);
  * the loader patterns, which name their own guest-physical address;
  * QEMU's flat memory view (`info mtree -f`, json "memory_map") where the fixture has it;
  * QEMU's `dump-guest-memory` ELF of the same paused state (json "elf_loads"), range by
    range, for the booted oracle fixtures and the aarch64/riscv64 `virt` -S ones;
  * the page bitmaps, read by refreader.py.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refreader  # noqa: E402
import runner  # noqa: E402
import test_mount as tm  # noqa: E402
from test_mount import CFG, MiB, GiB, Mount, data_map, merge, pattern_page  # noqa: E402

X86_WINDOW = (0xa0000, 0xc0000)     # VGA: never RAM in the flat view
FIXTURES = ["q35-512M-S", "pc-512M-S", "q35-5G-S", "q35-64G-S", "linux-paused-mapped",
            "oracle-q35-512M", "oracle-q35-5G", "oracle-pc-4G",
            "aarch64-virt-1G-S", "riscv64-virt-1G-S"]


def expected_map(machine, sizes, below_4g=0, qemu_map=()):
    """[(gpa, size, block, block_offset)] by the rules of qemu-save-formats.md §7, plus the
    standard VGA's video RAM where QEMU's flat view (@qemu_map) has it: at the BAR the
    firmware programmed (a -S guest has none)."""
    out = []

    def m(gpa, block, off, size):
        if block in sizes and size > 0 and off < sizes[block]:
            out.append((gpa, min(size, sizes[block] - off), block, off))
    if machine.startswith("pc-q35") or machine.startswith("pc-i440fx"):
        ram = sizes["pc.ram"]
        if machine.startswith("pc-q35"):
            low = 0x80000000 if ram >= 0xb0000000 else 0xb0000000
            low = min(low, below_4g or 4 * GiB)
        else:
            low = below_4g or 0xe0000000
            if ram >= low:
                low = min(low, 0xc0000000)
        low = min(low, ram)
        m(0, "pc.ram", 0, min(low, X86_WINDOW[0]))
        if low > X86_WINDOW[1]:
            m(X86_WINDOW[1], "pc.ram", X86_WINDOW[1], low - X86_WINDOW[1])
        m(4 * GiB, "pc.ram", low, ram - low)
        if "pc.bios" in sizes:
            m(4 * GiB - sizes["pc.bios"], "pc.bios", 0, sizes["pc.bios"])
        for q in qemu_map:
            if q["block"].endswith("/vga.vram") and q["block_offset"] == 0:
                m(q["gpa"], q["block"], 0, q["size"])
    elif "mach-virt.ram" in sizes:
        m(0, "virt.flash0", 0, 64 * MiB)
        m(64 * MiB, "virt.flash1", 0, 64 * MiB)
        m(0x40000000, "mach-virt.ram", 0, sizes["mach-virt.ram"])
    elif "riscv_virt_board.ram" in sizes:
        m(0x1000, "riscv_virt_board.mrom", 0, 1 << 62)
        m(0x20000000, "virt.flash0", 0, 1 << 62)
        if "virt.flash0" in sizes:
            m(0x20000000 + sizes["virt.flash0"], "virt.flash1", 0, 1 << 62)
        m(0x80000000, "riscv_virt_board.ram", 0, sizes["riscv_virt_board.ram"])
    return sorted(out)


def compare_chunks(test, fa, offa, fb, offb, length, what):
    done = 0
    while done < length:
        n = min(8 * MiB, length - done)
        a = os.pread(fa, n, offa + done)
        b = os.pread(fb, n, offb + done)
        if a != b:
            test.fail("%s: bytes differ at +%#x" % (what, done + tm.first_diff(a, b)))
        done += n


MRGUEST = re.compile(rb"MRGUEST (static|dirty) idx=\d+ gpa=0x([0-9a-f]{16})")


def mrguest_pages(fd):
    """(offset, "static"|"dirty", the address the page names) of every page of a booted
    guest's self-describing pages (recipes §4) in the data extents of @fd."""
    for a, b in data_map(fd, os.fstat(fd).st_size):
        for at in range(a, b, 8 * MiB):
            chunk = os.pread(fd, min(8 * MiB, b - at), at)
            for hit in MRGUEST.finditer(chunk):
                if hit.start() % 4096 == 0:
                    yield at + hit.start(), hit.group(1).decode(), int(hit.group(2), 16)


class PhysmemTests(unittest.TestCase):
    NAME = None
    OPTIONS = ""

    @classmethod
    def setUpClass(cls):
        cls.fx = json.load(open(tm.fixture_path(cls.NAME, ".json")))
        cls.image = tm.fixture_path(cls.NAME, ".img")
        cls.ref = refreader.Image(cls.image)
        cls.mount = Mount(cls.image, options=cls.OPTIONS, tag="phys").mount()
        with open(cls.mount.path(".mramfs.json")) as f:
            cls.desc = json.load(f)
        cls.fd = os.open(cls.mount.path("physmem.raw"), os.O_RDONLY)

    @classmethod
    def tearDownClass(cls):
        os.close(cls.fd)
        cls.mount.cleanup()
        cls.ref.close()

    def where(self):
        return "%s%s" % (self.NAME, " -o " + self.OPTIONS if self.OPTIONS else "")

    def below_4g(self):
        for opt in self.OPTIONS.split(","):
            if opt.startswith("max_ram_below_4g="):
                return int(opt.split("=", 1)[1], 0)
        return 0

    def our_map(self):
        return sorted((r["gpa"], r["size"], r["block"], r["block_offset"])
                      for r in self.desc["physmem"]["ranges"])

    def test_ranges_follow_the_machine_rules(self):
        sizes = {b.name: b.used_length for b in self.ref.blocks}
        qemu_map = (self.fx.get("memory_map") or []) if not self.OPTIONS else []
        want = expected_map(self.ref.machine_type, sizes, self.below_4g(), qemu_map)
        ours = self.our_map()
        if not self.fx.get("memory_map"):
            # No flat view of QEMU's to say where the firmware put the VGA BAR: check its
            # shape only (whole block, page-aligned, in the PCI hole below 4 GiB).
            for gpa, size, name, off in [r for r in ours if r[2].endswith("/vga.vram")]:
                self.assertEqual((size, off, gpa % 4096), (sizes[name], 0, 0), self.where())
                self.assertTrue(0x80000000 <= gpa < 4 * GiB - size, self.where())
            ours = [r for r in ours if not r[2].endswith("/vga.vram")]
        self.assertEqual(ours, want, self.where())
        last = max(g + s for g, s, _b, _o in want)
        self.assertEqual(os.fstat(self.fd).st_size, last, self.where())

    def mapped_data(self):
        """Guest-physical data extents: every mapped block's bitmap runs, moved."""
        blocks = {b.name: b for b in self.ref.blocks}
        out = []
        for gpa, size, name, off in self.our_map():
            for a, b in self.ref.byte_runs(blocks[name]):
                lo, hi = max(a, off), min(b, off + size)
                if lo < hi:
                    out.append((gpa + lo - off, gpa + hi - off))
        return merge(out)

    def test_seek_walk_and_st_blocks(self):
        want = self.mapped_data()
        self.assertEqual(data_map(self.fd, os.fstat(self.fd).st_size), want, self.where())
        self.assertEqual(os.fstat(self.fd).st_blocks, sum(b - a for a, b in want) // 512,
                         self.where())

    def test_bytes_equal_the_block_files(self):
        budget = 64 * MiB  # of data compared per fixture: the runs are all alike
        for gpa, size, name, off in self.our_map():
            path = self.mount.path(tm.map_paths([name.encode()])[0])
            bfd = os.open(path, os.O_RDONLY)
            try:
                for a, b in data_map(bfd, off + size):
                    lo, hi = max(a, off), min(b, off + size, a + budget)
                    if lo >= hi:
                        continue
                    compare_chunks(self, self.fd, gpa + lo - off, bfd, lo, hi - lo,
                                   "%s: %s at %#x" % (self.where(), name, gpa + lo - off))
                    budget -= hi - lo
            finally:
                os.close(bfd)
        # an unaligned read across the end of the first range: data then hole zeros
        gpa, size, _n, _o = self.our_map()[0]
        got = os.pread(self.fd, 8192, gpa + size - 4096 + 17)
        self.assertEqual(len(got), 8192)

    def test_patterns_at_their_address(self):
        for p in self.fx.get("patterns") or []:
            for n in range(p["pages"]):
                gpa = p["gpa"] + n * 4096
                self.assertEqual(os.pread(self.fd, 4096, gpa), pattern_page(gpa, n, p["tag"]),
                                 "%s: pattern %s page %d at %#x" % (self.where(), p["tag"], n,
                                                                     gpa))

    def test_qemu_flat_view_agrees(self):
        """Every RAM page we map outside the legacy 0xc0000-0xfffff window is where QEMU's
        own flat view (info mtree -f) has the same block and offset."""
        qemu = self.fx["memory_map"]
        for gpa, size, name, off in self.our_map():
            for lo, hi in ((gpa, gpa + size),):
                if name == "pc.ram":
                    lo = max(lo, 0x100000) if lo < 0x100000 and hi > 0xc0000 else lo
                covered = 0
                for q in qemu:
                    if q["block"] != name:
                        continue
                    a, b = max(lo, q["gpa"]), min(hi, q["gpa"] + q["size"])
                    if a < b:
                        self.assertEqual(a - gpa + off, a - q["gpa"] + q["block_offset"],
                                         "%s: %s at %#x: block offset" % (self.where(), name, a))
                        covered += b - a
                if lo < hi:
                    self.assertEqual(covered, hi - lo, "%s: %s [%#x, %#x) not all in QEMU's "
                                     "flat view" % (self.where(), name, lo, hi))

    def test_self_describing_pages(self):
        """The booted guest's init wrote each page's own guest-physical address into it
        (recipes §4): every such page sits at exactly that offset, and all static ones are
        there."""
        counts = {"static": 0, "dirty": 0}
        for gpa, kind, named in mrguest_pages(self.fd):
            self.assertEqual(named, gpa, "%s: MRGUEST page at %#x" % (self.where(), gpa))
            counts[kind] += 1
        self.assertEqual(counts["static"], self.fx["mrguest_pages"]["static"], self.where())
        self.assertGreater(counts["dirty"], 0, self.where())

    def test_dump_guest_memory_ranges(self):
        """QEMU's own dump of the same paused state: each PT_LOAD we map has the same bytes
        (vga.vram included: we map it at the BAR in its PCI config space); any we do not map
        (arm/riscv flash is not RAM to QEMU's dump) are holes for us."""
        loads = self.fx["elf_loads"]
        elf = os.open(tm.fixture_path(self.NAME, ".elf"), os.O_RDONLY)
        ours = self.our_map()
        try:
            for ld in loads:
                lo, hi = ld["paddr"], ld["paddr"] + ld["size"]
                inside = [(g, s) for g, s, _n, _o in ours if g <= lo and hi <= g + s]
                if inside or any(g <= lo < g + s for g, s, _n, _o in ours):
                    compare_chunks(self, self.fd, lo, elf, ld["offset"], ld["size"],
                                   "%s: PT_LOAD %#x+%#x" % (self.where(), lo, ld["size"]))
                else:
                    data = [(a, b) for a, b in data_map(self.fd, os.fstat(self.fd).st_size)
                            if a < hi and lo < b]
                    self.assertEqual(data, [], "%s: unmapped PT_LOAD %#x has data"
                                     % (self.where(), lo))
        finally:
            os.close(elf)


class NoViewTests(unittest.TestCase):
    """A machine type without a rule: no physmem.raw, and the description says why."""

    def test_unknown_machine_type(self):
        src = tm.fixture_path("q35-512M-S", ".img")
        if not os.path.exists(src):
            self.skipTest("fixture q35-512M-S missing")
        d = tempfile.mkdtemp(prefix="mramfs-phys-")
        try:
            img = os.path.join(d, "odd.img")
            tm.sparse_copy(src, img)
            with open(img, "r+b") as f:
                head = f.read(64)
                at = head.index(b"pc-q35-")
                f.seek(at)
                f.write(b"xx-q35-")  # same length: the stream stays valid
            m = Mount(img, tag="phys").mount()
            try:
                self.assertFalse(os.path.exists(m.path("physmem.raw")))
                with open(m.path(".mramfs.json")) as f:
                    desc = json.load(f)
                self.assertIn("xx-q35-", desc["physmem"]["about"])
                self.assertEqual(desc["physmem"]["ranges"], [])
                self.assertTrue(os.path.exists(m.path("pc.ram")))
            finally:
                m.cleanup()
        finally:
            shutil.rmtree(d, ignore_errors=True)


def applicable(method, fx, opts):
    """Tests whose oracle a fixture does not have are left out, not skipped."""
    if method == "test_patterns_at_their_address":
        return bool(fx.get("patterns")) and not opts
    if method == "test_qemu_flat_view_agrees":  # QEMU's map is of the split the guest had
        return bool(fx.get("memory_map")) and not opts
    if method == "test_dump_guest_memory_ranges":
        return bool(fx.get("elf_loads"))
    if method == "test_self_describing_pages":
        return bool(fx.get("mrguest_pages")) and not opts
    return True


def build_suite(filters):
    suite = unittest.TestSuite()
    cases = [(n, "") for n in FIXTURES] + [("q35-5G-S", "max_ram_below_4g=0x40000000")]
    for name, opts in cases:
        if not os.path.exists(tm.fixture_path(name, ".json")):
            continue  # fixtures made only in some runs; test.sh makes them all
        fx = json.load(open(tm.fixture_path(name, ".json")))
        cls = type("Physmem_%s%s" % (name.replace("-", "_"), "_below1G" if opts else ""),
                   (PhysmemTests,), {"NAME": name, "OPTIONS": opts})
        for t in unittest.TestLoader().loadTestsFromTestCase(cls):
            if applicable(t._testMethodName, fx, opts) and \
                    (not filters or any(f in t.id() for f in filters)):
                suite.addTest(t)
    for t in unittest.TestLoader().loadTestsFromTestCase(NoViewTests):
        if not filters or any(f in t.id() for f in filters):
            suite.addTest(t)
    return suite


def main(argv=None):
    a = runner.parse_args("mramfs guest-physical view tests", CFG, argv)
    print("mramfs physmem integration: build=%s fixtures=%s" % (CFG["build"], CFG["fixtures"]),
          flush=True)
    tm.WATCHDOG.start()

    def cleanup():
        for m in list(tm.ACTIVE.values()):
            m.cleanup()
    return runner.run(build_suite(a.k), a.v, cleanup, tm.CountingResult)


if __name__ == "__main__":
    sys.exit(main())
