#!/usr/bin/env python3
"""Integration tests of the ELF core view (`physmem.elf`) and the registers (`cpus.json`).

  python3 tests/integration/test_elfcore.py --build BUILD [--fixtures DIR] [-k SUBSTR] [-v]

Oracles, each independent of mramfs's own code:
  * physmem.raw of the same mount (itself checked by test_physmem.py): every PT_LOAD holds
    the guest-physical range it names, extent for extent;
  * QEMU's own `dump-guest-memory` (paging=false) ELF of the same paused state (NAME.elf,
    json "elf_loads"/"elf_notes"): the PT_LOAD table and the note bytes;
  * HMP `info registers` of that state (json "registers");
  * readelf and gdb, which must accept the file and read registers and memory from it;
  * crash with the guest kernel's vmlinux (scripts/get-vmlinux.sh), which must tell the
    same story from our core as from QEMU's dump.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runner  # noqa: E402
import test_mount as tm  # noqa: E402
from test_mount import CFG, MiB, Mount, data_map, merge  # noqa: E402
from test_physmem import FIXTURES, compare_chunks, mrguest_pages  # noqa: E402

PT_LOAD, PT_NOTE = 1, 4
EM = {"x86_64": 62, "aarch64": 183, "riscv64": 243}
X86_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")


def read_elf(fd):
    """(e_machine, [phdr dicts]) of a little-endian ELF64, parsed here, not by mramfs."""
    head = os.pread(fd, 64, 0)
    assert head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1, "not an ELF64 LE file"
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    assert e_type == 4, "not ET_CORE"
    phdrs = []
    for i in range(phnum):
        t, flags, off, vaddr, paddr, filesz, memsz, align = struct.unpack(
            "<IIQQQQQQ", os.pread(fd, 56, phoff + i * phentsize))
        phdrs.append(dict(type=t, offset=off, vaddr=vaddr, paddr=paddr, filesz=filesz,
                          memsz=memsz))
    return e_machine, phdrs


def notes(fd, phdrs):
    """[(name, type, desc bytes)] of every PT_NOTE."""
    out = []
    for ph in phdrs:
        if ph["type"] != PT_NOTE:
            continue
        data = os.pread(fd, ph["filesz"], ph["offset"])
        at = 0
        while at + 12 <= len(data):
            namesz, descsz, ntype = struct.unpack_from("<III", data, at)
            name = data[at + 12:at + 12 + namesz].rstrip(b"\0").decode()
            desc_at = at + 12 + (namesz + 3) // 4 * 4
            out.append((name, ntype, data[desc_at:desc_at + descsz]))
            at = desc_at + (descsz + 3) // 4 * 4
    return out


def note_bytes(fd, phdrs):
    ph = [p for p in phdrs if p["type"] == PT_NOTE]
    return os.pread(fd, ph[0]["filesz"], ph[0]["offset"]) if ph else b""


class ElfTests(unittest.TestCase):
    NAME = None

    @classmethod
    def setUpClass(cls):
        cls.fx = json.load(open(tm.fixture_path(cls.NAME, ".json")))
        cls.mount = Mount(tm.fixture_path(cls.NAME, ".img"), tag="elf").mount()
        with open(cls.mount.path(".mramfs.json")) as f:
            cls.desc = json.load(f)
        cls.elf = os.open(cls.mount.path("physmem.elf"), os.O_RDONLY)
        cls.phys = os.open(cls.mount.path("physmem.raw"), os.O_RDONLY)
        cls.machine, cls.phdrs = read_elf(cls.elf)
        cls.loads = [p for p in cls.phdrs if p["type"] == PT_LOAD]

    @classmethod
    def tearDownClass(cls):
        os.close(cls.elf)
        os.close(cls.phys)
        cls.mount.cleanup()

    def arch(self):
        return self.desc["device_state"]["arch"]

    def test_loads_are_the_physmem_ranges(self):
        ranges = [(r["gpa"], r["size"]) for r in self.desc["physmem"]["ranges"]]
        self.assertEqual([(p["paddr"], p["filesz"]) for p in self.loads], ranges, self.NAME)
        self.assertEqual(self.machine, EM[self.arch()], self.NAME)
        end = 0
        for p in self.loads:
            self.assertEqual(p["offset"] % 4096, 0, "%s: PT_LOAD %#x" % (self.NAME, p["paddr"]))
            self.assertGreaterEqual(p["offset"], end, self.NAME)
            self.assertEqual((p["vaddr"], p["memsz"]), (p["paddr"], p["filesz"]), self.NAME)
            end = p["offset"] + p["filesz"]

    def expected_extents(self):
        """Header page(s), then each range's guest-physical data extents, moved."""
        phys = data_map(self.phys, os.fstat(self.phys).st_size)
        out = [(0, self.loads[0]["offset"])]
        for p in self.loads:
            lo, hi = p["paddr"], p["paddr"] + p["filesz"]
            for a, b in phys:
                a, b = max(a, lo), min(b, hi)
                if a < b:
                    out.append((p["offset"] + a - lo, p["offset"] + b - lo))
        return merge(out)

    def test_seek_walk_and_st_blocks(self):
        want = self.expected_extents()
        st = os.fstat(self.elf)
        self.assertEqual(st.st_size, self.loads[-1]["offset"] + self.loads[-1]["filesz"])
        self.assertEqual(data_map(self.elf, st.st_size), want, self.NAME)
        self.assertEqual(st.st_blocks, sum(b - a for a, b in want) // 512, self.NAME)

    def test_bytes_equal_physmem(self):
        for p in self.loads:
            for a, b in data_map(self.phys, os.fstat(self.phys).st_size):
                a, b = max(a, p["paddr"]), min(b, p["paddr"] + p["filesz"])
                if a < b:
                    compare_chunks(self, self.elf, p["offset"] + a - p["paddr"], self.phys, a,
                                   b - a, "%s: PT_LOAD %#x" % (self.NAME, p["paddr"]))
        # a hole of the view reads zeros in the core too
        for a, b in zip(self.expected_extents(), self.expected_extents()[1:]):
            if a[1] < b[0]:
                self.assertEqual(os.pread(self.elf, 4096, a[1]), bytes(4096), self.NAME)
                break

    def test_qemu_dump_loads(self):
        """x86: the same PT_LOAD table as QEMU's dump; arm/riscv: QEMU's loads are among ours
        (we also map the flash QEMU's dump leaves out). Same bytes, range by range."""
        qemu = [(ld["paddr"], ld["size"]) for ld in self.fx["elf_loads"]]
        ours = [(p["paddr"], p["filesz"]) for p in self.loads]
        if self.arch() == "x86_64":
            self.assertEqual(ours, qemu, self.NAME)
        else:
            self.assertTrue(set(qemu) <= set(ours), "%s: %s not in %s" % (self.NAME, qemu, ours))
        qfd = os.open(tm.fixture_path(self.NAME, ".elf"), os.O_RDONLY)
        try:
            for ld in self.fx["elf_loads"]:
                mine = [p for p in self.loads if p["paddr"] == ld["paddr"]][0]
                for a, b in data_map(self.elf, os.fstat(self.elf).st_size):
                    a = max(a, mine["offset"])
                    b = min(b, mine["offset"] + mine["filesz"])
                    if a < b:
                        compare_chunks(self, self.elf, a, qfd, ld["offset"] + a - mine["offset"],
                                       b - a, "%s: PT_LOAD %#x" % (self.NAME, ld["paddr"]))
        finally:
            os.close(qfd)

    def test_qemu_dump_notes(self):
        """x86: the whole PT_NOTE (NT_PRSTATUS and QEMU CPU state of every vCPU) is QEMU's,
        byte for byte; arm/riscv: our NT_PRSTATUS notes are QEMU's (QEMU adds FP/SVE notes
        we do not write)."""
        qfd = os.open(tm.fixture_path(self.NAME, ".elf"), os.O_RDONLY)
        try:
            _m, qphdrs = read_elf(qfd)
            if self.arch() == "x86_64":
                self.assertEqual(note_bytes(self.elf, self.phdrs), note_bytes(qfd, qphdrs),
                                 self.NAME)
            theirs = [n for n in notes(qfd, qphdrs) if n[:2] == ("CORE", 1)]
        finally:
            os.close(qfd)
        ours = [n for n in notes(self.elf, self.phdrs) if n[:2] == ("CORE", 1)]
        if self.arch() != "x86_64":
            # pr_fpvalid (the last 8 bytes): QEMU sets it, as it also writes an FP note; we
            # write no FP note, so ours says 0.
            self.assertTrue(all(n[2][-8:] == bytes(8) for n in ours), self.NAME)
            ours = [(a, b, c[:-8]) for a, b, c in ours]
            theirs = [(a, b, c[:-8]) for a, b, c in theirs]
        self.assertEqual(ours, theirs, self.NAME)
        self.assertEqual(len(ours), self.desc["device_state"]["cpus"], self.NAME)

    def test_registers_match_info_registers(self):
        with open(self.mount.path("cpus.json")) as f:
            cpus = json.load(f)
        self.assertEqual(cpus["arch"], self.arch())
        ours = cpus["cpus"][0]
        want = self.fx["registers"]
        self.assertEqual(ours["index"], want["cpu"])
        compared = 0
        for key, value in want.items():
            if key == "cpu" or key not in ours:
                continue
            if isinstance(value, dict):
                for k, v in value.items():
                    self.assertEqual(int(ours[key][k], 16), v, "%s: %s.%s" % (self.NAME, key, k))
                    compared += 1
            else:
                got = ours[key] if isinstance(ours[key], int) else int(ours[key], 16)
                self.assertEqual(got, value, "%s: %s" % (self.NAME, key))
                compared += 1
        # every register QEMU printed that we also name was compared; that is most of them
        self.assertGreaterEqual(compared, {"x86_64": 40, "aarch64": 34, "riscv64": 34}
                                [self.arch()], self.NAME)

    def test_readelf_accepts_it(self):
        out = subprocess.run(["readelf", "-W", "-l", "-n", self.mount.path("physmem.elf")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stderr, "")
        self.assertEqual(len(re.findall(r"^\s+LOAD\s", out.stdout, re.M)), len(self.loads))
        self.assertEqual(out.stdout.count("NT_PRSTATUS"), self.desc["device_state"]["cpus"])

    def test_gdb_reads_registers_and_memory(self):
        """gdb loads the core: its pc is the saved one, and memory at a guest page the booted
        guest wrote its own address into reads back through the PT_LOADs."""
        if shutil.which("gdb") is None:
            self.skipTest("gdb is not installed (scripts/setup-deps.sh installs it)")
        page = self.mrguest_page()
        out = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", "set architecture i386:x86-64",
             "-ex", "core-file " + self.mount.path("physmem.elf"),
             "-ex", "info registers rip", "-ex", "x/s %#x" % page],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        rip = int(re.search(r"^rip\s+(0x[0-9a-f]+)", out.stdout, re.M).group(1), 16)
        self.assertEqual(rip, self.fx["registers"]["rip"], out.stdout)
        self.assertIn("gpa=0x%016x" % page, out.stdout)

    def test_crash_reads_it_like_qemus_dump(self):
        """crash(8) with the guest kernel's vmlinux opens our core and QEMU's own dump of the
        same state, and prints the same system summary and backtrace from both."""
        vmlinux = os.path.join(CFG["fixtures"], "cache",
                               "vmlinux-" + self.fx["kernel"].replace("linux-image-", "", 1))
        if shutil.which("crash") is None or not os.path.exists(vmlinux):
            self.skipTest("crash or %s missing (scripts/setup-deps.sh, scripts/get-vmlinux.sh)"
                          % vmlinux)
        fd, cmds = tempfile.mkstemp(prefix="mramfs-crash-")
        self.addCleanup(os.unlink, cmds)
        os.write(fd, b"sys\nbt\nquit\n")
        os.close(fd)

        def crash(core):
            out = subprocess.run(["crash", "-s", "-i", cmds, vmlinux, core],
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            return [ln for ln in out.stdout.splitlines() if "DUMPFILE:" not in ln]
        ours = crash(self.mount.path("physmem.elf"))
        self.assertEqual(ours, crash(tm.fixture_path(self.NAME, ".elf")), self.NAME)
        release = self.fx["kernel"].replace("linux-image-", "", 1)
        self.assertIn("     RELEASE: %s" % release, ours)
        self.assertTrue(any(ln.startswith(" #0 ") for ln in ours), "\n".join(ours))

    def mrguest_page(self):
        for gpa, kind, _named in mrguest_pages(self.phys):
            if kind == "static":
                return gpa
        self.fail("%s: no MRGUEST page in physmem.raw" % self.NAME)


def applicable(method, fx):
    """Tests whose oracle a fixture does not have are left out, not skipped."""
    qemu_dump = bool(fx.get("elf_loads"))
    if method in ("test_qemu_dump_loads", "test_qemu_dump_notes",
                  "test_registers_match_info_registers"):
        return qemu_dump and bool(fx.get("registers"))
    if method == "test_crash_reads_it_like_qemus_dump":
        return qemu_dump and bool(fx.get("kernel")) and fx.get("arch", "x86_64") == "x86_64"
    if method == "test_gdb_reads_registers_and_memory":
        return qemu_dump and bool(fx.get("mrguest_pages")) and fx.get("arch", "x86_64") == "x86_64"
    return True


def build_suite(filters):
    suite = unittest.TestSuite()
    for name in FIXTURES:
        if not os.path.exists(tm.fixture_path(name, ".json")):
            continue  # fixtures made only in some runs; test.sh makes them all
        fx = json.load(open(tm.fixture_path(name, ".json")))
        cls = type("Elf_%s" % name.replace("-", "_"), (ElfTests,), {"NAME": name})
        for t in unittest.TestLoader().loadTestsFromTestCase(cls):
            if applicable(t._testMethodName, fx) and \
                    (not filters or any(f in t.id() for f in filters)):
                suite.addTest(t)
    return suite


def main(argv=None):
    a = runner.parse_args("mramfs ELF core view tests", CFG, argv)
    print("mramfs elfcore integration: build=%s fixtures=%s" % (CFG["build"], CFG["fixtures"]),
          flush=True)
    tm.WATCHDOG.start()

    def cleanup():
        for m in list(tm.ACTIVE.values()):
            m.cleanup()
    return runner.run(build_suite(a.k), a.v, cleanup, tm.CountingResult)


if __name__ == "__main__":
    sys.exit(main())
