#!/usr/bin/env python3
"""Make real QEMU 10 saved-VM test images (fixtures) for mramfs.

Usage: scripts/make-fixtures.py [--out DIR] [--list] [--libvirt] [NAME|CHAIN ...]

Every image is written by a real qemu-system-x86_64 (qemu-system-aarch64 / -riscv64 for the
`virt` fixtures, installed from bookworm-backports when missing) driven over QMP (a unix
socket), or by libvirt's `virsh save` (the libvirt chain). For each fixture NAME the output
directory gets:
  NAME.img          the saved VM (sparse)
  NAME.json         the test oracle (layout, RAM blocks, patterns, restore ranges, ...)
  NAME.restore.bin  guest-physical RAM of a fresh QEMU that loaded NAME.img (sparse),
                    described by NAME.json "restore"; absent where "restore" is null
  NAME.raw-equivalent.img  compressed libvirt saves only: the same save with format raw and
                    the stream decompressed, what a converted image must equal
  NAME.mtree.txt    HMP `info mtree -f` of the saved guest (the x86 -S, `virt` and forensics
                    fixtures); NAME.json "memory_map" is its RAM-backed part (GPA -> RAM
                    block and offset), the oracle for a guest-physical view
  NAME.elf          forensics chain and the `virt` -S fixtures: QEMU's own `dump-guest-memory`
                    (paging=false) ELF core of the saved (paused) state, sparse; NAME.json
                    "elf_machine", "elf_loads", "elf_notes" (or "elf_error" where QEMU refuses
                    to dump a `virt` guest)
  NAME.regs.txt     the same fixtures: HMP `info registers` of CPU 0 in that state (NAME.json
                    "registers", parsed for x86_64, aarch64 and riscv64)
and DIR/index.json lists the fixtures present. DIR defaults to $MRAMFS_FIXTURES, else
<repo>/build/fixtures. A fixture whose outputs exist and whose recorded generator hash
and QEMU version (and libvirt version) match is skipped. Without NAME the default set is made
(everything except q35-64G-S and dense-1G, benchmark images, and the libvirt chain, which
are made only when named; --libvirt adds the libvirt chain).
A chain is a group of fixtures made together (linux-legacy: one booted QEMU; forensics: one
boot per fixture, about 50 s in all; libvirt: one libvirt domain, with libvirtd and virtlogd
started and stopped by this script); naming a chain makes all of them, and a chain is remade
whole when any member is out of date.

References (cited below as "recipes §N" and "formats §N"):
  shared/reference/qemu-image-recipes.md, shared/reference/qemu-save-formats.md
"""

import argparse
import array
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELPERS = REPO / "scripts" / "fixtures"
QEMU = "qemu-system-x86_64"
BACKPORTS = "bookworm-backports"  # where QEMU >= 9 comes from (recipes §1, §9.3)

PAGE = 4096
ZERO_PAGE = bytes(PAGE)
MiB = 1 << 20
GiB = 1 << 30
FOUR_GIB = 4 * GiB
VGA_WINDOW = (0xA0000, 0x100000)  # legacy VGA/ROM window, not RAM in the guest (recipes §4)


class FixtureError(Exception):
    """A fixture could not be made; the message says why."""


class QMPError(FixtureError):
    """QEMU answered a QMP command with an error (it refused it)."""


@dataclass(frozen=True)
class Arch:
    """A guest architecture: its emulator, the Debian package holding it, and where the
    machine's main RAM block sits in guest-physical space (formats §7)."""
    qemu: str
    package: str
    main_block: str
    ram_base: int                 # GPA of main_block's first byte (x86: split at lowmem)
    args: tuple = ()              # extra arguments for every QEMU of this architecture


ARCHES = {
    "x86_64": Arch(QEMU, "qemu-system-x86", "pc.ram", 0),
    # recipes §9.3: `virt -cpu max`; riscv64's binary is in qemu-system-riscv (plus opensbi),
    # not in the 170 MB qemu-system-misc that depends on it
    "aarch64": Arch("qemu-system-aarch64", "qemu-system-arm", "mach-virt.ram", 0x40000000,
                    ("-cpu", "max")),
    "riscv64": Arch("qemu-system-riscv64", "qemu-system-riscv", "riscv_virt_board.ram",
                    0x80000000, ("-cpu", "max")),
}


# --------------------------------------------------------------------------------------
# Fixture table
# --------------------------------------------------------------------------------------

# Loader patterns as (GPA, pages, tag) (recipes §4 "Loader blobs").
PAT_512M = ((0x100000, 16, "LOW1M"), (0x1000000, 256, "AT16M"),
            (0x1F000000, 4, "AT496M"), (0x1FFFF000, 1, "LASTPAGE"))
PAT_5G = ((0x100000, 16, "LOW1M"), (0x1000000, 256, "AT16M"), (0x7FFFF000, 1, "LOWEND"),
          (0x100000000, 256, "ABOVE4G"), (0x1BFFFF000, 1, "LASTPAGE"))
PAT_64G = ((0x100000, 16, "LOW1M"), (0x1000000, 256, "AT16M"), (0x7FFFF000, 1, "LOWEND"),
           (0x100000000, 256, "ABOVE4G"), (0x800000000, 16, "AT32G"),
           (0x107FFFF000, 1, "LASTPAGE"))


def pat_virt(arch, ram):
    """recipes §9.3: base+1M (16 pages), base+16M (256 pages) and the last RAM page."""
    base = ARCHES[arch].ram_base
    return ((base + MiB, 16, "BASE1M"), (base + 16 * MiB, 256, "BASE16M"),
            (base + ram - PAGE, 1, "LASTPAGE"))


DENSE_GPA = 0x100000
DENSE_SIZE = 1000 * MiB
DENSE_SEED = 1

LIBVIRT_HDR = 92                  # sizeof(virQEMUSaveHeader) (formats §2)
LIBVIRT_FORMATS = {"raw": 0, "gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5, "sparse": 6}
LIBVIRT_FORMAT_SPARSE = LIBVIRT_FORMATS["sparse"]
UNALIGNED_STREAM = 68058          # where real libvirt 11.3 put the stream (recipes §9.2)
JUNK_OFFSET = 4660                # 0x1234 (formats §9b)

LIVE_BANDWIDTH = 16 * MiB         # bytes/s: several dirty passes during the live save
LIVE_DOWNTIME_MS = 2000           # safety net: even a last pass with all 16 MiB dirty converges
XBZRLE_CACHE = 64 * MiB           # xbzrle-cache-size (QEMU's default, set explicitly)
LINUX_APPEND = "console=ttyS0 quiet nokaslr panic=-1 mrmode=dirty"
MRINIT_STATIC_PAGES = 8192        # 32 MiB, see scripts/fixtures/mrinit.c
ORACLE_RUN_SECONDS = 2            # forensics: the guest runs this long after `MRINIT ready`


@dataclass(frozen=True)
class Spec:
    name: str
    about: str
    kind: str                     # "loader" | "dense" | "partial" | "linux" (booted, saved
                                  # live) | "linux-paused" (booted, `stop`, saved) |
                                  # "linux-reload" (`pair` reloaded, saved) | "linux-oracle"
                                  # (booted, `stop`, ELF dump + registers, saved) | "libvirt"
    machine: str = "q35"
    arch: str = "x86_64"          # key of ARCHES
    ram: int = 512 * MiB
    patterns: tuple = ()
    mapped_ram: bool = True
    multifd: int = 0
    direct_io: bool = False
    prefix: str = ""              # "" | "libvirt1M" | "libvirt-unaligned" | "junk"
    restore: str = "all"          # "all" | "windows" | "" (none)
    explicit: bool = False        # only made when named (benchmarks)
    backend: bool = False         # RAM from memory-backend-ram,reserve=off (recipes §9.5)
    xbzrle: bool = False          # capability xbzrle (legacy live saves only)
    chain: str = ""               # fixtures made together (one guest, or one run of boots);
                                  # also a name group
    pair: str = ""                # the fixture holding the same guest state in the other format
    image_format: str = ""        # libvirt: `virsh save --image-format` value
    mtree: bool = False           # save `info mtree -f` and its "memory_map"
    dump: bool = False            # before the save: `info registers` (NAME.regs.txt) and
                                  # QEMU's ELF dump (NAME.elf) of the paused state (recipes
                                  # §9.4); needs mtree

    @property
    def booted(self):
        return self.kind.startswith("linux") or self.kind == "libvirt"


SPECS = (
    Spec("q35-512M-S", "q35 512M -S, 4 loader patterns, mapped-ram", "loader",
         patterns=PAT_512M, mtree=True),
    Spec("pc-512M-S", "same with -M pc (i440fx)", "loader", machine="pc", patterns=PAT_512M,
         mtree=True),
    Spec("q35-5G-S", "q35 5G -S, patterns below and above 4 GiB", "loader", ram=5 * GiB,
         patterns=PAT_5G, restore="windows", mtree=True),
    Spec("q35-512M-S-multifd4", "as q35-512M-S + multifd, 4 channels", "loader",
         patterns=PAT_512M, multifd=4),
    Spec("q35-512M-S-multifd4-dio", "as multifd4 + direct-io", "loader",
         patterns=PAT_512M, multifd=4, direct_io=True),
    Spec("q35-512M-S-libvirt1M", "libvirt-style sparse header, stream at 1 MiB", "loader",
         patterns=PAT_512M, prefix="libvirt1M"),
    Spec("q35-512M-S-libvirt-unaligned", "libvirt header + XML + cookie, stream at 68058",
         "loader", patterns=PAT_512M, prefix="libvirt-unaligned"),
    Spec("q35-512M-S-offset", "4660 bytes of junk, stream at offset=4660", "loader",
         patterns=PAT_512M, prefix="junk"),
    Spec("q35-512M-S-legacy", "as q35-512M-S without mapped-ram (legacy stream)", "loader",
         patterns=PAT_512M, mapped_ram=False),
    Spec("q35-512M-S-partial", "q35-512M-S-libvirt1M with magic LibvirtQemudPart", "partial",
         patterns=PAT_512M),
    Spec("linux-live", "booted Linux, live mapped-ram save, stale bitmap-clear slots", "linux"),
    # One booted guest, recipes §9.1: stop + legacy save; that state reloaded into a second
    # QEMU and saved with mapped-ram; then after `cont` two live legacy saves.
    Spec("linux-paused-legacy", "booted Linux, stopped, legacy save of the pair", "linux-paused",
         mapped_ram=False, chain="linux-legacy", pair="linux-paused-mapped"),
    Spec("linux-paused-mapped", "the same state reloaded into a 2nd QEMU, mapped-ram save",
         "linux-reload", chain="linux-legacy", pair="linux-paused-legacy"),
    Spec("linux-live-legacy", "the same guest running, live legacy save, resent/zeroed pages",
         "linux", mapped_ram=False, chain="linux-legacy"),
    Spec("linux-live-legacy-xbzrle", "as linux-live-legacy with xbzrle: XBZRLE records",
         "linux", mapped_ram=False, xbzrle=True, chain="linux-legacy"),
    Spec("q35-64G-S", "q35 64G -S (memory-backend-ram reserve=off), 6 patterns", "loader",
         ram=64 * GiB, patterns=PAT_64G, restore="", explicit=True, backend=True, mtree=True),
    # recipes §9.3: other architectures, RAM contiguous at a base address; no restore oracle;
    # the paused -S state is also dumped by QEMU (ELF) and its registers read, as in §9.4
    Spec("aarch64-virt-1G-S", "aarch64 virt -cpu max 1G -S, 3 loader patterns, mapped-ram",
         "loader", machine="virt", arch="aarch64", ram=GiB, patterns=pat_virt("aarch64", GiB),
         restore="", mtree=True, dump=True),
    Spec("riscv64-virt-1G-S", "riscv64 virt -cpu max 1G -S, 3 loader patterns, mapped-ram",
         "loader", machine="virt", arch="riscv64", ram=GiB, patterns=pat_virt("riscv64", GiB),
         restore="", mtree=True, dump=True),
    # recipes §9.4: the forensic oracles, one boot each; the paused guest is dumped by QEMU
    # (ELF, paging=false), its registers read, then the same state saved with mapped-ram
    Spec("oracle-q35-512M", "booted Linux, stopped: QEMU's ELF dump + registers, mapped-ram",
         "linux-oracle", restore="", chain="forensics", mtree=True, dump=True),
    Spec("oracle-q35-5G", "as oracle-q35-512M, q35 5G (RAM split at 2 GiB)", "linux-oracle",
         ram=5 * GiB, restore="", chain="forensics", mtree=True, dump=True),
    Spec("oracle-pc-4G", "as oracle-q35-512M, pc (i440fx) 4G (RAM split at 3 GiB)",
         "linux-oracle", machine="pc", ram=4 * GiB, restore="", chain="forensics", mtree=True,
         dump=True),
    Spec("dense-1G", "q35 1G -S, 1000 MiB dense seeded blob at 1 MiB", "dense", ram=GiB,
         restore="", explicit=True),
    Spec("dense-1G-legacy", "dense-1G's guest saved as a legacy stream (indexing benchmark)",
         "dense", ram=GiB, restore="", explicit=True, mapped_ram=False),
    # One libvirt domain, recipes §7, §9.2: each `virsh save` is followed by `virsh restore`
    # of that image, so every image holds a later state of the same guest.
    Spec("libvirt-raw", "virsh save --image-format raw: legacy stream at 92+data_len",
         "libvirt", mapped_ram=False, explicit=True, chain="libvirt", image_format="raw"),
    Spec("libvirt-sparse", "virsh save --image-format sparse: mapped-ram + multifd",
         "libvirt", multifd=1, explicit=True, chain="libvirt", image_format="sparse"),
    Spec("libvirt-sparse-parallel4", "as libvirt-sparse with --parallel-channels 4", "libvirt",
         multifd=4, restore="", explicit=True, chain="libvirt", image_format="sparse"),
    Spec("libvirt-zstd", "virsh save --image-format zstd, + NAME.raw-equivalent.img",
         "libvirt", mapped_ram=False, restore="", explicit=True, chain="libvirt",
         image_format="zstd"),
    Spec("libvirt-gzip", "virsh save --image-format gzip, + NAME.raw-equivalent.img",
         "libvirt", mapped_ram=False, restore="", explicit=True, chain="libvirt",
         image_format="gzip"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}
CHAINS = {}                       # chain name -> its specs, in table order
for _s in SPECS:
    if _s.chain:
        CHAINS.setdefault(_s.chain, []).append(_s)


def chain_of(spec):
    return CHAINS[spec.chain] if spec.chain else [spec]


# --------------------------------------------------------------------------------------
# QMP client and QEMU process (recipes §2)
# --------------------------------------------------------------------------------------

def _die_with_parent():
    """preexec_fn: QEMU gets SIGKILL if this script dies without running its finally blocks."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def log_tail(path, lines=15):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class QMP:
    """Line-oriented QMP over a unix socket: greeting, qmp_capabilities, then commands."""

    def __init__(self, path, proc, log, timeout=30.0):
        self.log = log
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise FixtureError(f"QEMU exited with {proc.returncode}:\n{log_tail(log)}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise FixtureError(f"no QMP socket after {timeout:.0f} s:\n{log_tail(log)}")
                time.sleep(0.02)
        sock.settimeout(300)
        self.sock = sock
        self.file = sock.makefile("rwb")
        if "QMP" not in self._read():
            raise FixtureError("no QMP greeting")
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise FixtureError(f"QMP connection closed:\n{log_tail(self.log)}")
        return json.loads(line)

    def cmd(self, name, **args):
        return self._call(name, args)

    def send_fd(self, fdname, fd):
        """QMP getfd: hand fd to QEMU (SCM_RIGHTS) as `fdname`, for "fd:NAME" targets."""
        return self._call("getfd", {"fdname": fdname}, fd)

    def _call(self, name, args, fd=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        data = json.dumps(msg).encode() + b"\n"
        if fd is None:
            self.file.write(data)
            self.file.flush()
        else:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", [fd]))])
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QMPError(f"QMP {name} {args}: {reply['error'].get('desc')}")
            return reply["return"]

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        self.file.close()
        self.sock.close()


class Qemu:
    """One qemu-system-* process (x86_64 unless `binary` says) with a QMP socket; always
    killed on exit."""

    BASE = ("-accel", "tcg", "-display", "none", "-nic", "none")

    def __init__(self, work, tag, args, base=BASE, binary=QEMU):
        self.log = work / f"{tag}.log"
        sock = work / f"{tag}.qmp"
        cmd = [binary, *base, *args, "-qmp", f"unix:{sock},server=on,wait=off"]
        (work / f"{tag}.cmd").write_text(" ".join(cmd) + "\n")
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.qmp = None
        try:
            self.qmp = QMP(sock, self.proc, self.log)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.qmp is not None:
            try:
                self.qmp.sock.settimeout(10)
                self.qmp.cmd("quit")
            except (FixtureError, OSError):
                pass
            self.qmp.close()
            self.qmp = None
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def qemu_version(binary=QEMU):
    try:
        out = subprocess.run([binary, "--version"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise FixtureError(f"cannot run {binary} (run scripts/setup-deps.sh): {e}")
    first = out.splitlines()[0]
    m = re.match(r"QEMU emulator version ((\d+)\..*)", first)
    if not m or int(m.group(2)) < 9:
        raise FixtureError(f"need QEMU >= 9.0 for mapped-ram, found: {first}")
    return m.group(1)


def install_emulator(arch):
    """recipes §9.3: the aarch64 / riscv64 emulators are installed on first use, like
    scripts/setup-deps.sh does: from bookworm-backports, without recommends."""
    if shutil.which(arch.qemu):
        return
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-t", BACKPORTS,
           arch.package]
    if os.geteuid() and shutil.which("sudo"):
        cmd.insert(0, "sudo")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"make-fixtures: installing {arch.package} for {arch.qemu}", flush=True)
    try:
        run(cmd, env=env, timeout=900)
    except FixtureError:  # a stale package list: update once and try again
        with contextlib.suppress(FixtureError):  # unreachable third-party lists
            run([*cmd[:cmd.index("apt-get")], "apt-get", "update", "-q"], env=env,
                timeout=900)
        run(cmd, env=env, timeout=900)
    if not shutil.which(arch.qemu):
        raise FixtureError(f"{arch.package} installed but no {arch.qemu} "
                           "(run scripts/setup-deps.sh)")


def ramblock_table(qmp):
    return parse_ramblock_table(qmp.hmp("info ramblock"))


def parse_ramblock_table(text):
    """RAM blocks from HMP `info ramblock`: [{idstr, used_length}] in table order (formats §5)."""
    rows = []
    for line in text.splitlines()[1:]:
        m = re.match(r"\s*(\S.*?)\s+\d+ [KMG]?i?B\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+",
                     line)
        if m:
            rows.append({"idstr": m.group(1), "used_length": int(m.group(2), 16)})
        elif line.strip():
            raise FixtureError(f"cannot parse `info ramblock` line: {line!r}")
    if not rows:
        raise FixtureError("`info ramblock` returned no blocks")
    return rows


def migration_uri(path, offset):
    return f"file:{path},offset={offset}" if offset else f"file:{path}"


def set_migration(qmp, spec, extra_params=None):
    """Capabilities and parameters are sticky per process: always set all of them (recipes §2)."""
    qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "mapped-ram", "state": spec.mapped_ram},
        {"capability": "multifd", "state": spec.multifd > 0},
        {"capability": "xbzrle", "state": spec.xbzrle}])
    params = dict(extra_params or {})
    if spec.multifd:
        params["multifd-channels"] = spec.multifd
    if spec.direct_io:
        params["direct-io"] = True
    if spec.xbzrle:
        params["xbzrle-cache-size"] = XBZRLE_CACHE
    if params:
        qmp.cmd("migrate-set-parameters", **params)


def wait_migration(qmp, timeout):
    """Poll query-migrate every 20 ms until completed (recipes §2)."""
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.cmd("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise FixtureError(f"migration {status}: {info.get('error-desc', '')}")
        if time.monotonic() > deadline:
            raise FixtureError(f"migration not completed after {timeout} s: {info}")
        time.sleep(0.02)


def save_vm(qmp, spec, path, offset, timeout=600, extra_params=None):
    """QMP `migrate` to file:PATH[,offset=N]; returns a summary of query-migrate."""
    set_migration(qmp, spec, extra_params)
    qmp.cmd("migrate", uri=migration_uri(path, offset))
    info = wait_migration(qmp, timeout)
    ram = info.get("ram", {})
    xbzrle = info.get("xbzrle-cache", {})
    return {k: v for k, v in (("total_time_ms", info.get("total-time")),
                              ("downtime_ms", info.get("downtime")),
                              ("dirty_sync_count", ram.get("dirty-sync-count")),
                              ("transferred", ram.get("transferred")),
                              ("normal_pages", ram.get("normal")),
                              ("zero_pages", ram.get("duplicate")),
                              ("xbzrle_pages", xbzrle.get("pages")),
                              ("xbzrle_overflow", xbzrle.get("overflow"))) if v is not None}


# --------------------------------------------------------------------------------------
# Guest memory content: loader patterns and the dense blob
# --------------------------------------------------------------------------------------

def pattern_blob(gpa, pages, tag):
    """recipes §4 "Loader blobs": a 64-byte ASCII header, then LE u64 words equal to GPA+offset."""
    out = bytearray()
    for n in range(pages):
        a = gpa + n * PAGE
        out += f"MRFIX tag={tag} gpa=0x{a:016x} page={n}".ljust(63).encode() + b"\n"
        words = array.array("Q", range(a + 64, a + PAGE, 8))
        if sys.byteorder != "little":
            words.byteswap()
        out += words.tobytes()
    return bytes(out)


DENSE_WORDS = ("the memory page guest saved image file block bitmap offset migration stream "
               "qemu machine kernel virtual physical address random data zero text header "
               "fuse mount sparse read write seek extent hole channel device state section "
               "and of to in is that for with as on by at from").split()


def write_dense_blob(path, gpa, size, seed):
    """recipes §9.6: a reproducible blob of random/text/zero runs; every page starts with a
    64-byte header `MRDENSE gpa=0x<GPA> page=N seed=S`. Runs are sliced out of a few MiB of
    material made once, and one 64-bit draw decides a run's length, kind and source offset,
    so the stream depends only on random.Random(seed) and is made in seconds."""
    rng = random.Random(seed)
    rand_material = rng.randbytes(4 * MiB)
    text, text_len = [], 0
    while text_len < MiB:
        sentence = " ".join(rng.choice(DENSE_WORDS) for _ in range(rng.randint(4, 16)))
        text.append(sentence.capitalize() + (". " if rng.random() < 0.8 else ".\n"))
        text_len += len(text[-1])
    text_material = "".join(text).encode()
    digest = hashlib.sha256()
    draw = rng.getrandbits
    with open(path, "wb") as f:
        parts = []
        for n in range(size // PAGE):
            parts.append(f"MRDENSE gpa=0x{gpa + n * PAGE:016x} page={n} seed={seed}"
                         .ljust(63).encode() + b"\n")
            left = PAGE - 64
            while left:
                r = draw(64)
                run = min(16 + (r & 0x7FF), left)
                kind = (r >> 11) & 0xFF          # 22% zeros, 39% random, 39% text
                if kind < 56:
                    parts.append(ZERO_PAGE[:run])
                else:
                    src = rand_material if kind < 156 else text_material
                    start = (r >> 19) % (len(src) - run)
                    parts.append(src[start:start + run])
                left -= run
            if len(parts) >= 4096:
                chunk = b"".join(parts)
                digest.update(chunk)
                f.write(chunk)
                parts = []
        chunk = b"".join(parts)
        digest.update(chunk)
        f.write(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Headers in front of the stream (formats §1, §2)
# --------------------------------------------------------------------------------------

LIBVIRT_XML = """<domain type='qemu'>
  <name>mrfix</name>
  <uuid>6d726678-0000-4000-8000-6d72616d6673</uuid>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
"""
LIBVIRT_COOKIE = """<cookie>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <slirpHelper/>
</cookie>
"""


def libvirt_header(magic, data_len, was_running, cookie_offset):
    """virQEMUSaveHeader: magic, 5 host-endian u32, unused[14] (formats §2)."""
    return magic + struct.pack("<5I", 2, data_len, was_running, LIBVIRT_FORMAT_SPARSE,
                               cookie_offset) + bytes(56)


def write_prefix(b):
    """Write what precedes the QEMU stream; set b.stream_offset, b.libvirt, b.mount_options.
    QEMU keeps these bytes: `file:PATH,offset=N` only ftruncates to N (formats §5.2)."""
    prefix = b.spec.prefix
    if not prefix:
        return
    if prefix == "junk":
        data = b"".join(f"MRJUNK {i:05d} not a libvirt header\n".encode() for i in range(200))
        data = data[:JUNK_OFFSET]
        b.stream_offset, b.mount_options = JUNK_OFFSET, f"offset={JUNK_OFFSET}"
    else:
        xml = LIBVIRT_XML.encode() + b"\0"
        if prefix == "libvirt1M":
            cookie, was_running, data_len = None, 0, MiB - LIBVIRT_HDR
            body, cookie_offset = xml, 0
        else:  # "libvirt-unaligned": like real libvirt 11.3 (recipes §9.2)
            cookie, was_running, data_len = LIBVIRT_COOKIE, 1, UNALIGNED_STREAM - LIBVIRT_HDR
            body, cookie_offset = xml + cookie.encode() + b"\0", len(xml)
        data = libvirt_header(b"LibvirtQemudSave", data_len, was_running, cookie_offset)
        data += body.ljust(data_len, b"\0")
        b.stream_offset = LIBVIRT_HDR + data_len
        b.libvirt = {"magic": "LibvirtQemudSave", "version": 2, "data_len": data_len,
                     "was_running": was_running, "format": LIBVIRT_FORMAT_SPARSE,
                     "cookie_offset": cookie_offset, "xml": LIBVIRT_XML, "cookie": cookie}
    b.img.write_bytes(data)


def read_libvirt_header(path):
    """The real header of a `virsh save` image as the oracle's "libvirt" dict (formats §2):
    XML = NUL-terminated text at 92, cookie = NUL-terminated text at 92 + cookieOffset."""
    with open(path, "rb") as f:
        head = f.read(LIBVIRT_HDR)
        if len(head) < LIBVIRT_HDR or head[:16] not in (b"LibvirtQemudSave",
                                                        b"LibvirtQemudPart"):
            raise FixtureError(f"{path.name}: no libvirt save header")
        version, data_len, was_running, fmt, cookie_offset = struct.unpack_from("<5I", head, 16)
        if version != 2 or any(head[36:]):
            raise FixtureError(f"{path.name}: libvirt header version {version}, or unused[] "
                               f"not zero")
        data = f.read(data_len)
    if len(data) != data_len or (cookie_offset and cookie_offset >= data_len):
        raise FixtureError(f"{path.name}: data_len {data_len} / cookieOffset {cookie_offset} "
                           f"do not fit the file")
    xml_len = cookie_offset or data_len
    cookie = data[cookie_offset:].split(b"\0")[0].decode() if cookie_offset else None
    return {"magic": head[:16].decode(), "version": version, "data_len": data_len,
            "was_running": was_running, "format": fmt, "cookie_offset": cookie_offset,
            "xml": data[:xml_len].split(b"\0")[0].decode(), "cookie": cookie}


# --------------------------------------------------------------------------------------
# Reading the saved image (formats §2, §3.1, §4, §5, §10)
# --------------------------------------------------------------------------------------

@dataclass
class Block:
    idstr: str
    used_length: int
    bitmap_offset: int = 0
    pages_offset: int = 0
    bitmap: bytes = b""

    def is_set(self, page):
        return self.bitmap[page >> 3] >> (page & 7) & 1

    def set_pages(self, first=0, end=None):
        """Indices of bitmap-set pages in [first, end), skipping zero bytes quickly."""
        end = self.used_length // PAGE if end is None else end
        bm = self.bitmap
        for i in range(first >> 3, (end + 7) >> 3):
            byte = bm[i]
            if byte:
                for bit in range(8):
                    p = i * 8 + bit
                    if byte >> bit & 1 and first <= p < end:
                        yield p


@dataclass
class Image:
    stream_offset: int
    machine_type: str
    capabilities: list
    mapped_ram: bool
    blocks: list = field(default_factory=list)
    ram_section_id: int = 0
    records_offset: int = 0       # legacy: first record after the block list of ram START

    def block(self, idstr):
        for blk in self.blocks:
            if blk.idstr == idstr:
                return blk
        raise FixtureError(f"image has no RAM block {idstr}")


class Reader:
    def __init__(self, f):
        self.f = f

    def take(self, n):
        data = self.f.read(n)
        if len(data) != n:
            raise FixtureError(f"image truncated at {self.f.tell()}")
        return data

    def u8(self):
        return self.take(1)[0]

    def be32(self):
        return struct.unpack(">I", self.take(4))[0]

    def be64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def name8(self):
        return self.take(self.u8()).decode()

    def peek(self):
        pos = self.f.tell()
        byte = self.u8()
        self.f.seek(pos)
        return byte


def parse_image(path, offset):
    """Header, configuration and the ram START block list of the stream at `offset` (or after
    a libvirt header). Mapped-ram blocks get their MappedRamHeader and bitmap (formats §5.1)."""
    with open(path, "rb") as f:
        head = f.read(LIBVIRT_HDR)
        if head[:16] in (b"LibvirtQemudSave", b"LibvirtQemudPart"):
            offset = LIBVIRT_HDR + struct.unpack_from("<I", head, 20)[0]  # formats §2
        f.seek(offset)
        r = Reader(f)
        if r.take(8) != b"QEVM\0\0\0\3":
            raise FixtureError(f"no QEVM v3 at offset {offset}")
        if r.u8() != 0x07:
            raise FixtureError("no configuration section")
        machine_type = r.take(r.be32()).decode()
        caps = []
        while r.peek() == 0x05:  # configuration subsections (formats §3.1)
            r.u8()
            sub = r.name8()
            r.be32()
            if sub == "configuration/capabilities":
                caps = [r.name8() for _ in range(r.be32())]
            elif sub == "configuration/target-page-bits":
                r.be32()
            else:
                raise FixtureError(f"unexpected configuration subsection {sub}")
        if r.u8() != 0x01:
            raise FixtureError("expected the ram SECTION_START after the configuration")
        section_id = r.be32()
        if r.name8() != "ram":
            raise FixtureError("first section is not ram")
        r.be32()
        if r.be32() != 4:
            raise FixtureError("ram section version is not 4")
        total = r.be64()
        if not total & 0x04:
            raise FixtureError("ram START lacks RAM_SAVE_FLAG_MEM_SIZE")
        total &= ~(PAGE - 1)
        image = Image(offset, machine_type, caps, "mapped-ram" in caps, ram_section_id=section_id)
        seen = 0
        while seen < total:  # formats §4
            blk = Block(r.name8(), r.be64())
            if image.mapped_ram:
                version, page_size, blk.bitmap_offset, blk.pages_offset = \
                    struct.unpack(">IQQQ", r.take(28))
                if version != 1 or page_size != PAGE or blk.bitmap_offset != f.tell():
                    raise FixtureError(f"bad MappedRamHeader for {blk.idstr}")
                npages = blk.used_length // PAGE
                f.seek(blk.bitmap_offset)
                blk.bitmap = r.take((npages + 63) // 64 * 8)  # formats §5.3
                f.seek(blk.pages_offset + blk.used_length)
            image.blocks.append(blk)
            seen += blk.used_length
        image.records_offset = f.tell()
        return image


# ---- legacy streams: the RAM records (formats §3.2, §6) -------------------------------

RAM_ZERO, RAM_PAGE, RAM_EOS, RAM_CONTINUE, RAM_XBZRLE, RAM_MULTIFD_FLUSH = \
    0x02, 0x08, 0x10, 0x20, 0x40, 0x200
SEC_PART, SEC_END, SEC_COMMAND, SEC_FOOTER = 0x02, 0x03, 0x08, 0x7E


def walk_legacy(path, image):
    """Walk every RAM record of a legacy stream: ram START (from image.records_offset), then
    each ram PART and the ram END in file order, skipping COMMAND records between sections.
    Returns (index, stats): index maps (idstr, page) to its last record -- (RAM_ZERO,),
    (RAM_PAGE, data offset) or (RAM_XBZRLE, data offset, length, previous entry) -- and stats
    counts sections (START, PART and END), COMMAND records, PAGE / ZERO / XBZRLE records,
    `resent` records for a page already sent and `zero_after_data` pages whose last record is
    ZERO after an earlier PAGE or XBZRLE one."""
    sizes = {blk.idstr: blk.used_length for blk in image.blocks}
    stats = dict.fromkeys(("page_records", "zero_records", "xbzrle_records", "resent",
                           "zero_after_data", "commands"), 0)
    stats["sections"] = 1
    index, had_data = {}, set()
    with open(path, "rb") as f:
        f.seek(image.records_offset)
        r = Reader(f)
        block, last = None, False
        while True:
            while True:  # the records of one section, up to EOS
                pos = f.tell()
                v = r.be64()
                flags, addr = v & (PAGE - 1), v & ~(PAGE - 1)
                if flags == RAM_EOS:
                    break
                if flags == RAM_MULTIFD_FLUSH:
                    continue
                kind = flags & ~RAM_CONTINUE
                if kind not in (RAM_ZERO, RAM_PAGE, RAM_XBZRLE):
                    raise FixtureError(f"RAM record flags {flags:#x} at {pos}")
                if not flags & RAM_CONTINUE:
                    block = r.name8()
                if block not in sizes or addr >= sizes[block]:
                    raise FixtureError(f"RAM record at {pos} for {block} offset {addr:#x}")
                key = (block, addr // PAGE)
                prev = index.get(key)
                if prev is not None:
                    stats["resent"] += 1
                if kind == RAM_ZERO:
                    if r.u8():
                        raise FixtureError(f"ZERO record at {pos} with a non-zero fill byte")
                    index[key] = (RAM_ZERO,)
                    stats["zero_records"] += 1
                    continue
                if kind == RAM_PAGE:
                    index[key] = (RAM_PAGE, f.tell())
                    f.seek(PAGE, os.SEEK_CUR)
                    stats["page_records"] += 1
                else:
                    if r.u8() != 0x01 or prev is None:
                        raise FixtureError(f"XBZRLE record at {pos}: bad encoding byte or no "
                                           "earlier copy of the page")
                    length = struct.unpack(">H", r.take(2))[0]
                    index[key] = (RAM_XBZRLE, f.tell(), length, prev)
                    f.seek(length, os.SEEK_CUR)
                    stats["xbzrle_records"] += 1
                had_data.add(key)
            if r.peek() == SEC_FOOTER:
                r.u8()
                if r.be32() != image.ram_section_id:
                    raise FixtureError(f"ram section footer with a wrong id at {f.tell() - 5}")
            if last:
                break
            while True:  # COMMAND records, then the next ram PART or END
                pos = f.tell()
                kind = r.u8()
                if kind == SEC_COMMAND:
                    r.take(2)
                    r.take(struct.unpack(">H", r.take(2))[0])
                    stats["commands"] += 1
                    continue
                if kind not in (SEC_PART, SEC_END) or r.be32() != image.ram_section_id:
                    raise FixtureError(f"section type {kind:#x} at {pos} before the ram END "
                                       "(only ram may be iterable)")
                stats["sections"] += 1
                last = kind == SEC_END
                break
    stats["zero_after_data"] = sum(1 for key in had_data if index[key][0] == RAM_ZERO)
    return index, stats


def xbzrle_decode(enc, old):
    """QEMU's xbzrle_decode_buffer: (ULEB128 unchanged run, ULEB128 changed run, its bytes)*
    applied to the previously sent copy of the page."""
    out = bytearray(old)
    i = d = 0

    def uleb():  # uleb128_decode_small: one or two bytes
        nonlocal i
        n = enc[i]
        if n & 0x80:
            n = (n & 0x7F) | enc[i + 1] << 7
            i += 1
        i += 1
        return n

    while i < len(enc):
        d += uleb()
        n = uleb()
        if not n or d + n > PAGE or i + n > len(enc):
            raise FixtureError("XBZRLE record does not decode")
        out[d:d + n] = enc[i:i + n]
        d += n
        i += n
    return bytes(out)


def legacy_page(fd, entry):
    """The content of a page given its last record (walk_legacy); no record: zeros."""
    if entry is None or entry[0] == RAM_ZERO:
        return ZERO_PAGE
    if entry[0] == RAM_PAGE:
        return os.pread(fd, PAGE, entry[1])
    return xbzrle_decode(os.pread(fd, entry[2], entry[1]), legacy_page(fd, entry[3]))


def data_extents(fd, start, length):
    """(begin, end) file ranges inside [start, start+length) that are not holes."""
    end = start + length
    pos = start
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        if pos >= end:
            return
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        yield pos, hole
        pos = hole


def pages_in_extents(fd, start, length):
    """Page indices (relative to start) that touch a data extent of [start, start+length)."""
    for begin, end in data_extents(fd, start, length):
        yield from range((begin - start) // PAGE, (end - start + PAGE - 1) // PAGE)


def stale_slots(path, image):
    """Per block: bitmap-clear pages whose file slot holds non-zero bytes (formats §5.4)."""
    counts = {}
    with open(path, "rb") as f:
        fd = f.fileno()
        for blk in image.blocks:
            n = 0
            for p in pages_in_extents(fd, blk.pages_offset, blk.used_length):
                if not blk.is_set(p) and \
                        os.pread(fd, PAGE, blk.pages_offset + p * PAGE) != ZERO_PAGE:
                    n += 1
            if n:
                counts[blk.idstr] = n
    return counts


COPY_CHUNK = 4 * MiB
ZERO_CHUNK = bytes(COPY_CHUNK)


def write_nonzero(fd, buf, offset):
    """pwrite buf at offset, leaving out its all-zero pages (counted from buf's start)."""
    if buf == ZERO_CHUNK[:len(buf)]:
        return
    run = None
    for i in range(0, len(buf), PAGE):
        zero = buf[i:i + PAGE] == ZERO_PAGE[:len(buf) - i]
        if not zero and run is None:
            run = i
        if zero and run is not None:
            os.pwrite(fd, buf[run:i], offset + run)
            run = None
    if run is not None:
        os.pwrite(fd, buf[run:], offset + run)


def copy_sparse(src_fd, src_off, dst_fd, dst_off, length):
    """Copy a byte range, leaving holes where the source has holes or all-zero pages.
    The caller extends the destination with ftruncate."""
    for begin, end in data_extents(src_fd, src_off, length):
        pos = begin
        while pos < end:
            buf = os.pread(src_fd, min(COPY_CHUNK, end - pos), pos)
            write_nonzero(dst_fd, buf, dst_off + pos - src_off)
            pos += len(buf)


def stream_sparse(src_fd, path):
    """Write everything read from src_fd (a pipe, up to EOF) to a new file, leaving holes
    where a whole file block is zero -- the file `fallocate --dig-holes` would make of it.
    Returns the byte count."""
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(path, "wb") as f:
        pos = 0
        while True:
            n = 0
            while n < COPY_CHUNK:
                got = os.readv(src_fd, [view[n:]])
                if not got:
                    break
                n += got
            write_nonzero(f.fileno(), buf if n == COPY_CHUNK else bytes(view[:n]), pos)
            pos += n
            if n < COPY_CHUNK:
                os.ftruncate(f.fileno(), pos)
                return pos


# --------------------------------------------------------------------------------------
# Guest-physical layout (recipes §4, formats §7.1)
# --------------------------------------------------------------------------------------

def lowmem_of(machine, ram):
    """Bytes of pc.ram mapped below 4 GiB; the rest is at GPA 4 GiB up. Arm/riscv `virt`
    RAM is contiguous from its base: all of it is "low" (formats §7.2)."""
    if machine == "q35":
        low = 0x80000000 if ram >= 0xB0000000 else 0xB0000000
    elif machine == "pc":
        low = 0xC0000000 if ram >= 0xE0000000 else 0xE0000000
    else:
        low = ram
    return min(low, ram)


def gpa_to_ram(gpa, lowmem):
    return gpa if gpa < lowmem else gpa - FOUR_GIB + lowmem


def ram_to_gpa(off, lowmem):
    return off if off < lowmem else FOUR_GIB + off - lowmem


def pattern_ram_offset(spec, gpa, lowmem):
    """Offset in the main RAM block of a pattern's GPA."""
    return gpa_to_ram(gpa - ARCHES[spec.arch].ram_base, lowmem)


MTREE_RANGE = re.compile(r"\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (?:nv-)?([\w/]+)\): "
                         r"(.*?)(?: @([0-9a-f]+))?(?: KVM)?$")


def mtree_ranges(text):
    """The ranges of the FlatView that AS "memory" renders in HMP `info mtree -f` (the first
    FlatView may be SMM's): (first, last, kind, region name, "@X" offset or None), strings."""
    lines = None
    for view in re.split(r"\n(?=FlatView #)", text):
        if re.search(r'^ AS "memory", root:', view, re.M):
            lines = view.splitlines()
            break
    if lines is None:
        raise FixtureError('`info mtree -f` has no FlatView of AS "memory"')
    for line in lines:
        m = MTREE_RANGE.match(line)
        if m:
            yield m.groups()
        elif re.match(r"\s+[0-9a-f]+-[0-9a-f]+ ", line):
            raise FixtureError(f"cannot parse `info mtree -f` line: {line!r}")


def dumped_ranges(text):
    """The merged [gpa, end) ranges `dump-guest-memory` writes as PT_LOADs: the RAM regions
    of the flat view (ram, rom), not romd (flash in ROM mode is a ROM device, not RAM, for
    dump.c's guest_phys_blocks)."""
    return merge([int(first, 16), int(last, 16) + 1]
                 for first, last, kind, _, _ in mtree_ranges(text) if kind in ("ram", "rom"))


def parse_memory_map(text, ramblocks):
    """The RAM-backed ranges of the system address space from HMP `info mtree -f`
    (mtree_ranges), lines of type ram, rom (RAM mapped read-only) or romd (flash in ROM
    mode); i/o and ramd are not RAM blocks.
    The printed region is the one an alias resolves to, `@X` its offset in it. Each becomes
    {gpa, size, block, block_offset} with block the RAMBlock idstr: the region's name, after
    a device path for device-owned RAM ("0000:00:01.0/vga.vram"). Adjacent ranges that
    continue the same block are merged (QEMU splits where only the access attributes differ,
    e.g. read-only PAM shadow RAM)."""
    sizes = {r["idstr"]: r["used_length"] for r in ramblocks}
    out = []
    for first, last, kind, name, off in mtree_ranges(text):
        if kind not in ("ram", "rom", "romd"):
            continue
        blocks = [i for i in sizes if i == name or i.endswith("/" + name)]
        if len(blocks) != 1:
            raise FixtureError(f"`info mtree -f` region {name} matches RAM blocks {blocks}")
        gpa, size, off = int(first, 16), int(last, 16) + 1 - int(first, 16), int(off or "0", 16)
        if off + size > sizes[blocks[0]]:
            raise FixtureError(f"`info mtree -f` maps {name} @{off:#x}+{size:#x}, beyond its "
                               f"used_length {sizes[blocks[0]]:#x}")
        prev = out[-1] if out else None
        if prev and prev["block"] == blocks[0] and prev["gpa"] + prev["size"] == gpa and \
                prev["block_offset"] + prev["size"] == off:
            prev["size"] += size
        else:
            out.append({"gpa": gpa, "size": size, "block": blocks[0], "block_offset": off})
    return out


def map_gpa(memory_map, gpa):
    """(block, offset) that backs guest-physical address gpa, or None."""
    for r in memory_map:
        if r["gpa"] <= gpa < r["gpa"] + r["size"]:
            return r["block"], r["block_offset"] + gpa - r["gpa"]
    return None


def record_memory_map(b, qmp):
    """NAME.mtree.txt and the oracle's "memory_map" of the guest as it is saved."""
    text = qmp.hmp("info mtree -f")
    b.mtree_txt.write_text(text)
    b.memory_map = parse_memory_map(text, b.ramblocks or ramblock_table(qmp))


def merge(ranges):
    out = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def restore_ram_ranges(spec, lowmem):
    """pc.ram offset ranges to dump after the reload.
    "all": the whole of pc.ram. "windows" (q35-5G-S): dumping 5 GiB would flood the disk, so
    take 64 MiB windows: around every pattern (32 MiB on each side), the last 64 MiB below the
    4G split, and the last 64 MiB of RAM; overlapping windows are merged."""
    if spec.restore == "all":
        return [[0, spec.ram]]
    win = []
    for gpa, pages, _ in spec.patterns:
        off = gpa_to_ram(gpa, lowmem)
        win.append([max(0, off - 32 * MiB), min(spec.ram, off + pages * PAGE + 32 * MiB)])
    win.append([lowmem - 64 * MiB, lowmem])
    win.append([spec.ram - 64 * MiB, spec.ram])
    return merge(win)


def restore_gpa_ranges(spec, lowmem):
    """Split the pc.ram ranges at the 4G split and drop the VGA window: [(ram_off, gpa, len)]."""
    out = []
    for start, end in restore_ram_ranges(spec, lowmem):
        cuts = sorted({start, end, *(c for c in (lowmem, *VGA_WINDOW) if start < c < end)})
        for a, z in zip(cuts, cuts[1:]):
            if not VGA_WINDOW[0] <= a < VGA_WINDOW[1]:
                out.append((a, ram_to_gpa(a, lowmem), z - a))
    return out


# --------------------------------------------------------------------------------------
# Building one fixture
# --------------------------------------------------------------------------------------

class Build:
    """State of one fixture while it is being made."""

    def __init__(self, spec, out, work):
        self.spec = spec
        self.arch = ARCHES[spec.arch]
        self.out = out
        self.work = work
        self.img = out / f"{spec.name}.img"
        self.stream_file = self.img   # compressed libvirt saves: NAME.raw-equivalent.img
        self.restore_bin = out / f"{spec.name}.restore.bin"
        self.mtree_txt = out / f"{spec.name}.mtree.txt"
        self.elf = out / f"{spec.name}.elf"
        self.regs_txt = out / f"{spec.name}.regs.txt"
        self.memory_map = None
        self.stream_offset = 0
        self.libvirt = None
        self.mount_options = ""
        self.ramblocks = None
        self.migration = None
        self.live = False
        self.qemu_args = None     # complete command line of the reloading QEMU (libvirt)
        self.seconds = 0.0        # time spent making this fixture (see timed())
        self.extra = {}           # fixture-specific oracle fields
        if spec.chain:
            self.extra["chain"] = spec.chain
        if spec.pair:
            self.extra["pair"] = spec.pair
        if spec.xbzrle:
            self.extra["xbzrle"] = True

    @contextlib.contextmanager
    def timed(self):
        """Count the time of a block as this fixture's (a chain times each member's steps;
        the shared boot counts for its first member)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - t0

    def machine_args(self):
        """-M/-m/-smp, shared by the saving and the reloading QEMU (1 vCPU is the default)."""
        spec = self.spec
        args = ["-smp", "1", "-m", f"{spec.ram // MiB}M", *self.arch.args]
        if spec.backend:  # recipes §9.5: plain -m 64G fails with ENOMEM on a 24 GiB host
            return args + ["-object", f"memory-backend-ram,id=pc.ram,size={spec.ram},reserve=off",
                           "-M", f"{spec.machine},memory-backend=pc.ram"]
        return args + ["-M", spec.machine]


def loader_args(files):
    """recipes §4: -device loader writes a raw file into guest RAM at reset, before -S."""
    args = []
    for path, gpa in files:
        args += ["-device", f"loader,file={path},addr={gpa:#x},force-raw=on"]
    return args


def build_loader(b):
    """Fixtures 1-9 and 12: -S guest with MRFIX patterns, saved with QMP migrate."""
    files = []
    for gpa, pages, tag in b.spec.patterns:
        path = b.work / f"pat-{gpa:x}.bin"
        path.write_bytes(pattern_blob(gpa, pages, tag))
        files.append((path, gpa))
    save_stopped(b, files)


def build_dense(b):
    """Fixture 13 (recipes §9.6): a 1000 MiB reproducible blob at GPA 1 MiB."""
    blob = b.work / "dense.bin"
    sha = write_dense_blob(blob, DENSE_GPA, DENSE_SIZE, DENSE_SEED)
    b.extra["dense"] = {"gpa": DENSE_GPA, "length": DENSE_SIZE, "seed": DENSE_SEED,
                        "ram_offset": DENSE_GPA, "sha256": sha}
    save_stopped(b, [(blob, DENSE_GPA)])


def save_stopped(b, files):
    write_prefix(b)
    with Qemu(b.work, "source", b.machine_args() + ["-S"] + loader_args(files),
              binary=b.arch.qemu) as q:
        b.ramblocks = ramblock_table(q.qmp)
        if b.spec.dump:
            capture_forensics(b, q)
        elif b.spec.mtree:
            record_memory_map(b, q.qmp)
        b.migration = save_vm(q.qmp, b.spec, b.img, b.stream_offset)


def build_partial(b, ensure):
    """Fixture 10: the bytes of q35-512M-S-libvirt1M with the magic of an unfinished libvirt
    save, "LibvirtQemudPart" (formats §2)."""
    base = ensure("q35-512M-S-libvirt1M")
    src = b.out / base["image"]
    with open(src, "rb") as s, open(b.img, "wb") as d:
        size = os.fstat(s.fileno()).st_size
        copy_sparse(s.fileno(), 0, d.fileno(), 0, size)
        os.ftruncate(d.fileno(), size)
        os.pwrite(d.fileno(), b"LibvirtQemudPart", 0)
    b.stream_offset = base["stream_offset"]
    b.libvirt = dict(base["libvirt"], magic="LibvirtQemudPart")
    b.ramblocks = base["ramblocks"]
    b.migration = base.get("migration")
    b.extra["copied_from"] = base["name"]


# ---- the booted Linux guest (recipes §4 "Booted Linux") -------------------------------

def run(cmd, **kw):
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout
    except FileNotFoundError as e:
        raise FixtureError(f"{cmd[0]} not found: {e}")
    except subprocess.CalledProcessError as e:
        raise FixtureError(f"{' '.join(map(str, cmd))} failed:\n{e.stderr.strip()}")
    except subprocess.TimeoutExpired as e:
        raise FixtureError(f"{' '.join(map(str, cmd))} did not finish in {e.timeout} s")


def fetch_kernel(cache):
    """Debian's kernel, resolved through linux-image-amd64, fetched with `apt-get download`
    (nothing installed) and unpacked with dpkg-deb (recipes §1). Cached in DIR/cache/."""
    out = run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: (linux-image-\d\S*-amd64)\s*$", out, re.M)
    if not m:
        raise FixtureError("apt-cache knows no linux-image-amd64 dependency (apt-get update?)")
    pkg = m.group(1)
    vmlinuz = cache / f"{pkg}.vmlinuz"
    if vmlinuz.exists():
        return vmlinuz
    cache.mkdir(parents=True, exist_ok=True)
    try:
        run(["apt-get", "download", pkg], cwd=cache)
    except FixtureError:
        run(["apt-get", "update", "-q"])
        run(["apt-get", "download", pkg], cwd=cache)
    debs = sorted(cache.glob(f"{pkg}_*.deb"))
    if not debs:
        raise FixtureError(f"apt-get download {pkg} left no .deb in {cache}")
    tmp = vmlinuz.with_suffix(".tmp")
    with open(tmp, "wb") as dst:
        deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[-1])],
                               stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-xO", "--wildcards", "./boot/vmlinuz-*"],
                             stdin=deb.stdout, stdout=dst)
        deb.stdout.close()
        if deb.wait() != 0 or tar.returncode != 0 or dst.tell() == 0:
            raise FixtureError(f"cannot extract vmlinuz from {debs[-1]}")
    tmp.rename(vmlinuz)
    for deb_file in debs:  # the vmlinuz is all that is needed again
        deb_file.unlink()
    return vmlinuz


def cpio_newc(entries):
    """A newc cpio archive: entries are (name, mode, data, rdev_major, rdev_minor)."""
    out = bytearray()

    def pad4():
        out.extend(bytes(-len(out) % 4))

    for ino, (name, mode, data, rmaj, rmin) in enumerate(
            list(entries) + [("TRAILER!!!", 0, b"", 0, 0)], start=1):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name) + 1, 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode()
        out += name.encode() + b"\0"
        pad4()
        out += data
        pad4()
    return bytes(out)


def make_initramfs(work):
    """/init = static mrinit, plus /dev/console (char 5:1) and /proc (recipes §4)."""
    init = work / "mrinit"
    run(["gcc", "-static", "-O2", "-Wall", "-o", str(init), str(HELPERS / "mrinit.c")])
    path = work / "initramfs.cpio"
    path.write_bytes(cpio_newc([
        ("dev", 0o040755, b"", 0, 0),
        ("dev/console", 0o020600, b"", 5, 1),
        ("proc", 0o040755, b"", 0, 0),
        ("init", 0o100755, init.read_bytes(), 0, 0)]))
    return path


def wait_for_serial(log, what, found, timeout, gone):
    """Poll the serial log file until found(data) returns something true, and return it.
    gone() says why the guest is no longer there, or returns None."""
    deadline = time.monotonic() + timeout
    while True:
        data = log.read_bytes() if log.exists() else b""
        hit = found(data)
        if hit:
            return hit
        why = gone()
        if why:
            raise FixtureError(why)
        if time.monotonic() > deadline:
            raise FixtureError(f"no {what} on the serial console after {timeout} s:\n"
                               f"{data[-2000:].decode(errors='replace')}")
        time.sleep(0.1)


def qemu_gone(q):
    return lambda: q.proc.poll() is not None and f"guest QEMU exited:\n{log_tail(q.log)}"


def mrinit_ready(data):
    m = re.search(rb"MRINIT ready[^\r\n]*", data)
    return m and m.group().decode()


def mrinit_gen(data):
    """The newest `MRINIT gen=N` the guest printed (0: none yet)."""
    return max((int(g) for g in re.findall(rb"MRINIT gen=(\d+)", data)), default=0)


def boot_linux(b, tag="source"):
    """Start the mrinit guest and wait for `MRINIT ready` (recipes §4). Returns the Qemu, its
    command line without -serial and -qmp, and the guest facts for the oracle. `tag` names
    the QEMU's files in the work directory (several boots share it in the forensics chain)."""
    kernel = fetch_kernel(b.out / "cache")
    initrd = b.work / "initramfs.cpio"
    if not initrd.exists():
        initrd = make_initramfs(b.work)
    args = b.machine_args() + ["-kernel", str(kernel), "-initrd", str(initrd),
                               "-append", LINUX_APPEND]
    serial = b.work / f"serial-{tag}.log"
    q = Qemu(b.work, tag, args + ["-serial", f"file:{serial}"])
    try:
        t0 = time.monotonic()
        ready = wait_for_serial(serial, "MRINIT ready", mrinit_ready, 300, qemu_gone(q))
    except BaseException:
        q.close()
        raise
    return q, args, {"kernel": kernel.stem, "boot_seconds": round(time.monotonic() - t0, 2),
                     "mrinit_ready": ready}


def save_live(b, q):
    """Let the guest run for 2 s (after `cont` if an earlier save left it paused), then save
    live and bandwidth-limited so several dirty passes happen: pages the guest rewrites are
    sent again, and pages it zeroes end as bitmap-clear slots with stale data (mapped-ram) or
    as ZERO records after an earlier PAGE (legacy) (recipes §4, §9.1; formats §5.4, §6)."""
    if not q.qmp.cmd("query-status")["running"]:
        q.qmp.cmd("cont")
    time.sleep(2)
    b.ramblocks = ramblock_table(q.qmp)
    b.migration = save_vm(q.qmp, b.spec, b.img, 0, extra_params={
        "max-bandwidth": LIVE_BANDWIDTH, "downtime-limit": LIVE_DOWNTIME_MS})
    b.live = True


def save_paused(b, q, capture=None):
    """`stop`, then save (recipes §9.1 step 2); capture(b, q), if given, records the paused
    state first (recipes §9.4)."""
    q.qmp.cmd("stop")
    b.ramblocks = ramblock_table(q.qmp)
    if capture:
        capture(b, q)
    b.migration = save_vm(q.qmp, b.spec, b.img, 0)


def save_reloaded(b, args, source):
    """recipes §9.1 step 3: QEMU refuses a second `migrate` of the stopped source ("Can't
    migrate the vm that was paused due to previous migration", runstate postmigrate) and only
    `cont` leaves that state. So a second QEMU with the same command line plus -S -incoming
    defer loads the source's image (ending paused, nothing ran) and saves that state."""
    serial = b.work / f"serial-{b.spec.name}.log"
    with Qemu(b.work, f"reload-{b.spec.name}",
              args + ["-serial", f"file:{serial}", "-S", "-incoming", "defer"]) as q:
        set_migration(q.qmp, source.spec)
        t0 = time.monotonic()
        q.qmp.cmd("migrate-incoming", uri=migration_uri(source.img, 0))
        wait_migration(q.qmp, 600)
        b.extra["load_seconds"] = round(time.monotonic() - t0, 2)
        status = q.qmp.cmd("query-status")["status"]
        if status != "paused":
            raise FixtureError(f"QEMU that loaded {source.img.name} is {status}, not paused")
        b.ramblocks = ramblock_table(q.qmp)
        b.migration = save_vm(q.qmp, b.spec, b.img, 0)
    b.extra["loaded_from"] = source.spec.name


def build_linux(builds):
    """Booted mrinit guest (recipes §4): linux-live alone, or one boot for the whole chain,
    whose fixtures are saved in table order (recipes §9.1)."""
    by_name = {b.spec.name: b for b in builds}
    with builds[0].timed():
        q, args, guest = boot_linux(builds[0])
    with q:
        for b in builds:
            with b.timed():
                b.extra.update(guest)
                if b.spec.kind == "linux-paused":
                    save_paused(b, q)
                elif b.spec.kind == "linux-reload":
                    save_reloaded(b, args, by_name[b.spec.pair])
                else:
                    save_live(b, q)


# ---- the forensic oracles: QEMU's ELF dump and registers (recipes §9.4) ---------------

F_SETPIPE_SZ = 1031


def dump_guest_memory(qmp, path):
    """QMP `dump-guest-memory` paging=false (synchronous) into a sparse file. QEMU writes the
    ELF in full, zeros included (5 GiB for a 5G guest: 11-15 s, recipes §9.4, before
    `fallocate --dig-holes`); here it writes into a pipe passed with getfd ("fd:" protocol)
    and stream_sparse() stores only the non-zero blocks: the same bytes and holes as
    dump-to-file + dig-holes, without writing the zeros first."""
    rfd, wfd = os.pipe()
    result = {}

    def drain():
        try:
            result["size"] = stream_sparse(rfd, path)
        except BaseException as e:  # re-raised in the calling thread
            result["error"] = e
            os.close(rfd)  # QEMU gets EPIPE instead of blocking

    try:
        with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups
            fcntl.fcntl(rfd, F_SETPIPE_SZ, MiB)
        qmp.send_fd("mrfix-dump", wfd)
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)  # QEMU holds the only write end now: EOF when it closes it
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    failed = None
    try:
        qmp.cmd("dump-guest-memory", paging=False, protocol="fd:mrfix-dump")
    except FixtureError as e:
        failed = e
        with contextlib.suppress(FixtureError):  # if QEMU did not take the fd, it still
            qmp.cmd("closefd", fdname="mrfix-dump")  # holds it open: no EOF without this
    reader.join()
    if "error" in result:
        raise FixtureError(f"writing {path.name}: {result['error']}") from failed
    os.close(rfd)
    if failed:
        raise failed
    return result["size"]


def capture_forensics(b, q):
    """The paused guest as QEMU sees it: HMP `info mtree -f` (NAME.mtree.txt), HMP
    `info registers` of CPU 0 (NAME.regs.txt) and its ELF core (NAME.elf, sparse). The
    booted oracles need the ELF; where QEMU refuses to dump a `virt` -S guest, the oracle
    says why in "elf_error" instead."""
    record_memory_map(b, q.qmp)
    b.regs_txt.write_text(q.qmp.hmp("info registers"))
    t0 = time.monotonic()
    try:
        dump_guest_memory(q.qmp, b.elf)
    except QMPError as e:
        if b.spec.booted:
            raise
        b.elf.unlink(missing_ok=True)
        b.extra["elf_error"] = str(e)
        return
    b.extra["dump_seconds"] = round(time.monotonic() - t0, 2)


X86_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
X86_SEGS = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")


def parse_registers(text, arch):
    """HMP `info registers` of one CPU as the oracle's "registers" (the parser of arch);
    FixtureError if a register the oracle promises is missing."""
    m = re.match(r"\s*CPU#(\d+)", text)
    regs = {"cpu": int(m.group(1)) if m else 0}
    regs.update(REGISTER_PARSERS[arch](text))
    return regs


def need(regs, names):
    missing = [k for k in names if k not in regs]
    if missing:
        raise FixtureError(f"`info registers` lacks {', '.join(missing)}")
    return regs


def parse_registers_x86(text):
    """x86 HMP `info registers` (target/i386/cpu-dump.c): GPRs, rip, rflags, cpl,
    cr0/2/3/4, efer, segments {selector, base, limit, flags}, gdt/idt {base, limit}. 32-bit
    names (EAX, EIP, EFL) count as their 64-bit ones."""
    regs = {}
    for line in text.splitlines():
        seg = re.match(r"(ES|CS|SS|DS|FS|GS|LDT|TR) ?=([0-9a-f]{4}) ([0-9a-f]+) ([0-9a-f]+) "
                       r"([0-9a-f]+)", line)
        if seg:
            regs[seg.group(1).lower()] = dict(zip(("selector", "base", "limit", "flags"),
                                                  (int(v, 16) for v in seg.groups()[1:])))
            continue
        table = re.match(r"(GDT|IDT)=\s+([0-9a-f]+) ([0-9a-f]+)", line)
        if table:
            regs[table.group(1).lower()] = {"base": int(table.group(2), 16),
                                            "limit": int(table.group(3), 16)}
            continue
        for name, value in re.findall(r"\b([A-Z][A-Z0-9]*) ?=([0-9a-f]+)\b", line):
            key = {"EFL": "rflags", "RFL": "rflags", "EIP": "rip"}.get(name, name.lower())
            if key[0] == "e" and "r" + key[1:] in X86_GPRS:
                key = "r" + key[1:]
            if key in (*X86_GPRS, "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "efer"):
                regs[key] = int(value, 16)
            elif key == "cpl":
                regs[key] = int(value)
    return need(regs, (*X86_GPRS, "rip", "rflags", "cpl", "cr0", "cr2", "cr3", "cr4", "efer",
                       *X86_SEGS, "gdt", "idt"))


A64_GPRS = tuple(f"x{i}" for i in range(31))
A64_SYSREGS = ("TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "SCTLR_EL1")  # QEMU 10 prints none


def parse_registers_aarch64(text):
    """aarch64 HMP `info registers` in AArch64 state (target/arm/cpu.c
    aarch64_cpu_dump_state):
       PC=0000000000000000 X00=0000000000000000 X01=0000000000000000
      ...
      X29=0000000000000000 X30=0000000000000000  SP=0000000000000000
      PSTATE=400003c5 -Z-- EL1h  SVCR=00000000 --  BTYPE=0    FPU disabled
    as pc, x0..x30, sp (xregs[31]: the SP of the current EL and PSTATE.SP, the one the h/t
    after ELn names), pstate (pstate_read), el, spsel ("h": SP_ELn, "t": SP_EL0) and "ns"
    where it is printed ("NS "/"S " before ELn, with EL3 below EL3); the cpu system
    registers of A64_SYSREGS where printed (lower-case keys). An AArch32 dump (R00=...,
    PSR=) lacks these and raises."""
    regs = {}
    for name, value in re.findall(r"(?<![\w])(PC|SP|X\d\d|[A-Z0-9]+_EL\d)=([0-9a-f]+)\b",
                                  text):
        if name[0] == "X":
            regs[f"x{int(name[1:])}"] = int(value, 16)
        elif name in ("PC", "SP"):
            regs[name.lower()] = int(value, 16)
        elif name in A64_SYSREGS:
            regs[name.lower()] = int(value, 16)
    m = re.search(r"^PSTATE=([0-9a-f]{8}) [N-][Z-][C-][V-] (?:(NS|S) )?EL([0-3])([ht])\b",
                  text, re.M)
    if m:
        regs["pstate"] = int(m.group(1), 16)
        regs["el"] = int(m.group(3))
        regs["spsel"] = m.group(4)
        if m.group(2):
            regs["ns"] = m.group(2) == "NS"
    return need(regs, ("pc", *A64_GPRS, "sp", "pstate", "el"))


RV_GPRS = tuple(f"x{i}" for i in range(32))
RV_ABI = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
          *(f"a{i}" for i in range(8)), *(f"s{i}" for i in range(2, 12)),
          *(f"t{i}" for i in range(3, 7)))


def parse_registers_riscv64(text):
    """riscv64 HMP `info registers` (target/riscv/cpu.c riscv_cpu_dump_state):
       V      =   0                      (with the H extension: virtualization mode)
       pc       0000000000001000
       mhartid  0000000000000000         (the CSRs QEMU can read, one a line, ... satp)
       x0/zero  0000000000000000 x1/ra    0000000000000000 ...   (4 a line)
       fcsr     0000000000000000
       f0/ft0   0000000000000000 ...     (FP registers: not recorded)
    as pc, x0..x31 (the ABI name printed must be the one of xN), every one-a-line CSR under
    its own name (satp required), "virt" from V and "priv" if printed (QEMU 10 does not:
    the privilege mode is in no HMP output)."""
    regs = {}
    for line in text.splitlines():
        gprs = re.findall(r"\bx(\d+)/(\w+)\s+([0-9a-f]{16})\b", line)
        if gprs:
            for n, abi, value in gprs:
                if int(n) > 31 or RV_ABI[int(n)] != abi and not (n == "8" and abi == "fp"):
                    raise FixtureError(f"`info registers`: x{n} printed as {abi}")
                regs[f"x{int(n)}"] = int(value, 16)
            continue
        m = re.match(r"\s*([a-z][a-z0-9]*)\s+([0-9a-f]{8}|[0-9a-f]{16})\s*$", line)
        if m:
            regs[m.group(1)] = int(m.group(2), 16)
            continue
        m = re.match(r"\s*V\s*=\s*(\d+)\s*$", line)
        if m:
            regs["virt"] = int(m.group(1))
            continue
        m = re.match(r"\s*priv(?:ilege)?\s*[=:]?\s*(\w+)\s*$", line)
        if m:
            regs["priv"] = m.group(1)
    return need(regs, ("pc", *RV_GPRS, "satp"))


REGISTER_PARSERS = {"x86_64": parse_registers_x86, "aarch64": parse_registers_aarch64,
                    "riscv64": parse_registers_riscv64}


PT_LOAD, PT_NOTE, NT_PRSTATUS = 1, 4, 1
ELF_MACHINES = {3: "EM_386", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV"}
ARCH_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64", "riscv64": "EM_RISCV"}
NOTE_TYPES = {("CORE", 1): "NT_PRSTATUS", ("CORE", 2): "NT_FPREGSET",
              ("LINUX", 0x405): "NT_ARM_SVE", ("QEMU", 0): "QEMU",
              ("VMCOREINFO", 0): "VMCOREINFO"}


def parse_elf(path):
    """A little-endian ELF64 core from dump-guest-memory (formats §8): the header fields,
    the PT_LOADs as {paddr, size, offset} and the notes as (name, type, desc)."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if len(eh) < 64 or eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise FixtureError(f"{path.name} is not a little-endian ELF64 file")
        e_type, e_machine = struct.unpack_from("<HH", eh, 16)
        e_phoff, e_shoff = struct.unpack_from("<QQ", eh, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 54)
        if e_phnum == 0xFFFF:  # PN_XNUM: the count is in section header 0's sh_info
            f.seek(e_shoff + 44)
            e_phnum = struct.unpack("<I", f.read(4))[0]
        f.seek(e_phoff)
        phdrs = [struct.unpack("<IIQQQQQQ", f.read(e_phentsize)[:56]) for _ in range(e_phnum)]
        loads, notes = [], []
        for p_type, _, offset, vaddr, paddr, filesz, memsz, _ in phdrs:
            if p_type == PT_LOAD:
                if filesz != memsz or vaddr != paddr:
                    raise FixtureError(f"{path.name}: PT_LOAD at {paddr:#x} has filesz "
                                       f"{filesz:#x} memsz {memsz:#x} vaddr {vaddr:#x}")
                loads.append({"paddr": paddr, "size": filesz, "offset": offset})
            elif p_type == PT_NOTE:
                f.seek(offset)
                data, pos = f.read(filesz), 0
                while pos + 12 <= len(data):
                    namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                    pos += 12
                    name = data[pos:pos + namesz].rstrip(b"\0").decode(errors="replace")
                    pos += (namesz + 3) & ~3
                    notes.append((name, ntype, data[pos:pos + descsz]))
                    pos += (descsz + 3) & ~3
    if e_type != 4:
        raise FixtureError(f"{path.name}: e_type {e_type}, not ET_CORE")
    return {"machine": ELF_MACHINES.get(e_machine, e_machine), "phnum": e_phnum,
            "loads": loads, "notes": notes}


def qemu_cpu_state(desc):
    """x86 "QEMU" note (QEMUCPUState, target/i386/arch_dump.c; formats §8) in the shape of
    parse_registers."""
    version, size = struct.unpack_from("<II", desc)
    words = struct.unpack_from("<18Q", desc, 8)
    regs = dict(zip((*X86_GPRS, "rip", "rflags"), words))
    pos = 8 + 18 * 8
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt"):
        selector, limit, flags, _, base = struct.unpack_from("<IIIIQ", desc, pos)
        regs[name] = ({"base": base, "limit": limit} if name in ("gdt", "idt") else
                      {"selector": selector, "base": base, "limit": limit, "flags": flags})
        pos += 24
    cr = struct.unpack_from("<5Q", desc, pos)
    regs.update(cr0=cr[0], cr2=cr[2], cr3=cr[3], cr4=cr[4])
    return version, size, regs


# NT_PRSTATUS as QEMU writes it (target/*/arch_dump.c): Linux's struct elf_prstatus, pr_pid
# (cpu_index + 1) at offset 32, pr_reg at offset 112; desc size and pr_reg per architecture
PRSTATUS_PID, PRSTATUS_REG = 32, 112
PRSTATUS_SIZE = {"x86_64": 336, "aarch64": 392, "riscv64": 376}


def prstatus_regs(desc, arch):
    """pr_reg of an NT_PRSTATUS, with the oracle's register names: x86_64 user_regs_struct
    (27 u64; the segment fields compare with the selectors of `info registers`, fs/gs_base
    with the bases); aarch64 user_pt_regs (x0..x30, sp, pc, pstate); riscv64
    user_regs_struct (pc, x1..x31: x0 is not stored)."""
    if len(desc) != PRSTATUS_SIZE[arch]:
        raise FixtureError(f"{arch} NT_PRSTATUS of {len(desc)} bytes, expected "
                           f"{PRSTATUS_SIZE[arch]}")
    if arch == "aarch64":
        r = struct.unpack_from("<34Q", desc, PRSTATUS_REG)
        return dict(zip((*A64_GPRS, "sp", "pc", "pstate"), r))
    if arch == "riscv64":
        r = struct.unpack_from("<32Q", desc, PRSTATUS_REG)
        return dict(zip(("pc", *RV_GPRS[1:]), r))
    r = struct.unpack_from("<27Q", desc, PRSTATUS_REG)
    return {"rip": r[16], "rsp": r[19], "rflags": r[18], "cs": r[17], "ss": r[20],
            "fs_base": r[21], "gs_base": r[22], "ds": r[23], "es": r[24], "fs": r[25],
            "gs": r[26]}


def register_value(regs, key):
    """The `info registers` value an NT_PRSTATUS or QEMU-note field is compared with."""
    if key.endswith("_base"):
        return regs[key[:2]]["base"]
    if key in X86_SEGS and isinstance(regs[key], dict):
        return regs[key]["selector"]
    return regs[key]


def build_oracles(builds):
    """The forensics chain (recipes §9.4): each fixture boots its own mrinit guest (machine
    and RAM size differ), lets it run ORACLE_RUN_SECONDS, stops it, records QEMU's own view
    (capture_forensics) and saves that same paused state with mapped-ram."""
    for b in builds:
        with b.timed():
            q, _, guest = boot_linux(b, tag=b.spec.name)
            with q:
                b.extra.update(guest)
                time.sleep(ORACLE_RUN_SECONDS)
                save_paused(b, q, capture_forensics)


# ---- libvirt: virtlogd, libvirtd and `virsh save` (recipes §7, §9.2) ------------------

VIRSH = ("virsh", "-c", "qemu:///system")
LIBVIRT_DOMAIN = "mrfix"
LIBVIRT_DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{ram_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""
STREAM_MAGIC = {"raw": b"QEVM", "sparse": b"QEVM", "zstd": b"\x28\xb5\x2f\xfd",
                "gzip": b"\x1f\x8b"}
DECOMPRESS = {"zstd": ("zstd", "-dc"), "gzip": ("gzip", "-dc")}


def virsh(*args, timeout=600):
    return run([*VIRSH, *args], timeout=timeout)


def libvirt_version():
    """libvirtd's version ("11.3.0"), or None if it cannot be run."""
    try:
        out = subprocess.run(["libvirtd", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return m and m.group(1)


def pid_alive(pid, comm):
    """True if `pid` runs and is named `comm` (/proc/PID/comm, at most 15 characters)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return name == comm[:15] and state != "Z"


def end_pid(pid, comm, timeout=30):
    """SIGTERM, then SIGKILL after `timeout` s; only for processes this script started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid, comm):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid, comm) and time.monotonic() < deadline:
            time.sleep(0.1)


class Libvirt:
    """virtlogd and libvirtd for the libvirt chain, and its transient domain. PID 1 is not
    systemd, so the daemons are started here with -d and their pid files in the work directory
    (recipes §7); a libvirtd that already answers is used and left alone. On exit the domain
    is destroyed, any QEMU it ran is ended, and only the daemons started here are stopped,
    by PID."""

    QEMU_COMM = "qemu-system-x86"

    def __init__(self, work):
        self.work = work
        self.started = []         # (daemon, pid), in start order
        self.created = False
        self.qemu_pid = None
        self.qemu_pids = set()    # every QEMU the domain ran (create and each restore)

    def __enter__(self):
        try:
            if not self.answers():
                if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode:
                    self.start("virtlogd")
                self.start("libvirtd")
                deadline = time.monotonic() + 60
                while not self.answers():
                    if time.monotonic() > deadline:
                        raise FixtureError("libvirtd does not answer:\n"
                                           f"{log_tail(self.work / 'libvirtd.log')}")
                    time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.created:
                with contextlib.suppress(OSError, ValueError):
                    self.note_qemu()  # `virsh create` may have been interrupted
                subprocess.run([*VIRSH, "destroy", LIBVIRT_DOMAIN], capture_output=True,
                               timeout=120)
        finally:
            for pid in self.qemu_pids:
                end_pid(pid, self.QEMU_COMM)
            self.stop()

    @staticmethod
    def answers():
        try:
            return subprocess.run([*VIRSH, "version"], capture_output=True,
                                  timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, daemon):
        pidfile = self.work / f"{daemon}.pid"
        with open(self.work / f"{daemon}.log", "wb") as log:
            try:
                rc = subprocess.run([daemon, "-d", "--pid-file", str(pidfile)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=60).returncode
            except (OSError, subprocess.TimeoutExpired) as e:
                raise FixtureError(f"cannot start {daemon} (scripts/setup-deps.sh): {e}")
        if rc:
            raise FixtureError(f"{daemon} -d failed ({rc}):\n"
                               f"{log_tail(self.work / f'{daemon}.log')}")
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip().isdigit()):
            if time.monotonic() > deadline:
                raise FixtureError(f"{daemon} wrote no pid file {pidfile}")
            time.sleep(0.05)
        self.started.append((daemon, int(pidfile.read_text())))

    def stop(self):
        while self.started:
            daemon, pid = self.started.pop()
            end_pid(pid, daemon)

    def note_qemu(self):
        """Remember the domain's QEMU (a new process after every restore)."""
        self.qemu_pid = int(Path(f"/run/libvirt/qemu/{LIBVIRT_DOMAIN}.pid").read_text())
        self.qemu_pids.add(self.qemu_pid)

    def gone(self):
        if self.qemu_pid and pid_alive(self.qemu_pid, self.QEMU_COMM):
            return None
        return ("the domain's QEMU exited:\n"
                f"{log_tail(f'/var/log/libvirt/qemu/{LIBVIRT_DOMAIN}.log')}")

    def create(self, xml):
        if subprocess.run([*VIRSH, "domstate", LIBVIRT_DOMAIN],
                          capture_output=True).returncode == 0:
            raise FixtureError(f"libvirt already has a domain {LIBVIRT_DOMAIN}; "
                               f"`virsh destroy {LIBVIRT_DOMAIN}` first")
        self.created = True
        virsh("create", str(xml))
        self.note_qemu()

    def restore(self, img):
        virsh("restore", str(img))
        self.note_qemu()


def bare_qemu_args(argv, serial):
    """The domain QEMU's command line (/proc/PID/cmdline) for a bare QEMU that loads the
    domain's saves: the same machine and devices, without -S (restore() adds it), libvirt's
    monitor, fd passing, master key and sandbox; the serial file goes to `serial`."""
    out, i = [], 1
    while i < len(argv):
        opt = argv[i]
        val = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else None
        i += 1 if val is None else 2
        if opt in ("-S", "-mon", "-add-fd", "-sandbox", "-incoming", "-daemonize", "-pidfile") \
                or opt == "-object" and '"qom-type":"secret"' in val \
                or opt == "-chardev" and val.startswith("socket,"):
            continue
        if opt == "-chardev" and "path=/dev/fdset/" in val:
            val = re.sub(r"path=/dev/fdset/\d+", f"path={serial}", val)
        out += [opt] if val is None else [opt, val]
    return out


def save_with_virsh(lv, b, serial):
    """One link of the chain: 2 s of running, `virsh save`, `virsh restore` of that image and
    a new `MRINIT gen=` line. libvirt restarts the serial log on restore (recipes §9.2), so a
    line only counts if its generation is newer than every one printed before the save."""
    spec = b.spec
    time.sleep(2)
    b.ramblocks = parse_ramblock_table(
        virsh("qemu-monitor-command", LIBVIRT_DOMAIN, "--hmp", "info ramblock"))
    args = ["save", LIBVIRT_DOMAIN, str(b.img), "--image-format", spec.image_format]
    if spec.multifd > 1:
        args += ["--parallel-channels", str(spec.multifd)]
    t0 = time.monotonic()
    virsh(*args)
    saved = time.monotonic() - t0
    gen = mrinit_gen(serial.read_bytes())  # the saved QEMU is gone: all it printed is there
    t0 = time.monotonic()
    lv.restore(b.img)
    restored = time.monotonic() - t0
    new = wait_for_serial(serial, f"`MRINIT gen=` newer than {gen} after `virsh restore`",
                          lambda data: mrinit_gen(data) > gen and mrinit_gen(data), 120, lv.gone)
    b.libvirt = read_libvirt_header(b.img)
    b.extra["restored"] = True
    b.extra["virsh_save"] = {
        "command": ["virsh", *args[:2], b.img.name, *args[3:]],
        "save_seconds": round(saved, 2), "restore_seconds": round(restored, 2),
        "gen_before_save": gen, "gen_after_restore": new}


def build_libvirt(builds):
    """The libvirt chain (recipes §7, §9.2): a transient TCG domain boots the mrinit guest;
    each fixture is one `virsh save --image-format F` followed by `virsh restore` of that
    image, so each holds a later state of the same guest; `virsh destroy` at the end.
    The first `virsh create` after libvirtd starts takes about a minute under TCG."""
    first = builds[0]
    work = first.work
    work.chmod(0o755)  # the domain's QEMU runs as libvirt-qemu and opens the files below
    kernel = work / "vmlinuz"  # a copy: libvirt chowns the kernel while the domain runs
    shutil.copyfile(fetch_kernel(first.out / "cache"), kernel)
    initrd = make_initramfs(work)
    serial = work / "serial.log"
    xml = work / "domain.xml"
    xml.write_text(LIBVIRT_DOMAIN_XML.format(
        name=LIBVIRT_DOMAIN, ram_mib=first.spec.ram // MiB, kernel=kernel, initrd=initrd,
        cmdline=LINUX_APPEND, emulator=shutil.which(QEMU) or QEMU, serial=serial))
    guest = {"kernel": fetch_kernel(first.out / "cache").stem,
             "libvirt_version": libvirt_version()}
    t0 = time.monotonic()
    with Libvirt(work) as lv:
        t1 = time.monotonic()
        lv.create(xml)
        guest["mrinit_ready"] = wait_for_serial(serial, "MRINIT ready", mrinit_ready, 300,
                                                lv.gone)
        guest["create_seconds"] = round(time.monotonic() - t1, 2)
        first.seconds += time.monotonic() - t0
        argv = Path(f"/proc/{lv.qemu_pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        qemu_args = bare_qemu_args(argv, work / "serial-bare.log")
        for b in builds:
            b.extra.update(guest)
            b.qemu_args = qemu_args
            with b.timed():
                save_with_virsh(lv, b, serial)


def write_raw_equivalent(b):
    """NAME.raw-equivalent.img of a compressed save: the same header with only `format` set
    to 0 (raw), the same data_len bytes, then the decompressed stream -- what the converted
    image must equal (recipes §9.2). The stream is decompressed by the zstd / gzip programs."""
    dst = b.out / f"{b.spec.name}.raw-equivalent.img"
    with open(b.img, "rb", buffering=0) as src, open(dst, "wb") as out:
        head = bytearray(os.pread(src.fileno(), b.stream_offset, 0))
        struct.pack_into("<I", head, 28, LIBVIRT_FORMATS["raw"])
        out.write(head)
        out.flush()
        os.lseek(src.fileno(), b.stream_offset, os.SEEK_SET)
        cmd = DECOMPRESS[b.spec.image_format]
        try:
            done = subprocess.run(cmd, stdin=src, stdout=out, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise FixtureError(f"cannot run {cmd[0]} (scripts/setup-deps.sh): {e}")
        if done.returncode:
            raise FixtureError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    digest = hashlib.sha256()
    with open(dst, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    b.stream_file = dst
    b.extra["raw_equivalent"] = {"file": dst.name, "size": dst.stat().st_size,
                                 "sha256": digest.hexdigest()}


def check_libvirt_image(b):
    """The real header says what was asked; the stream (or the compressed one) begins at
    92 + data_len; compressed saves get their raw equivalent."""
    spec, hdr = b.spec, b.libvirt
    if hdr["magic"] != "LibvirtQemudSave" or hdr["format"] != LIBVIRT_FORMATS[spec.image_format]:
        raise FixtureError(f"libvirt header {hdr['magic']} format {hdr['format']}, asked "
                           f"{spec.image_format}")
    b.stream_offset = LIBVIRT_HDR + hdr["data_len"]
    magic = STREAM_MAGIC[spec.image_format]
    with open(b.img, "rb") as f:
        f.seek(b.stream_offset)
        if f.read(len(magic)) != magic:
            raise FixtureError(f"no {spec.image_format} stream at {b.stream_offset}")
    if spec.image_format in DECOMPRESS:
        write_raw_equivalent(b)


# ---- checks and the restore oracle ------------------------------------------------------

def check_ramblocks(b, image):
    """The HMP table of the source and the block list in the stream must agree."""
    got = [{"idstr": blk.idstr, "used_length": blk.used_length} for blk in image.blocks]
    if got != b.ramblocks:
        raise FixtureError(f"RAM blocks in the image {got} differ from `info ramblock` "
                           f"{b.ramblocks}")


def check_image_content(b, image, lowmem):
    """Mapped-ram self-check on the image itself: every pattern page is bitmap-set with the
    right bytes, and in an x86 -S guest pc.ram holds nothing else (recipes §4). Arm/riscv
    `virt` put firmware data in RAM at reset (DTB, OpenSBI; recipes §9.3): those pages go
    to the oracle as "other_data" runs."""
    blk = image.block(b.arch.main_block)
    want = set()
    with open(b.img, "rb") as f:
        for gpa, pages, tag in b.spec.patterns:
            blob = pattern_blob(gpa, pages, tag)
            for n in range(pages):
                p = pattern_ram_offset(b.spec, gpa + n * PAGE, lowmem) // PAGE
                want.add(p)
                if not blk.is_set(p) or os.pread(f.fileno(), PAGE, blk.pages_offset + p * PAGE) \
                        != blob[n * PAGE:(n + 1) * PAGE]:
                    raise FixtureError(f"pattern {tag} page {n} is not in the image")
        dense = b.extra.get("dense")
        if dense:
            first = dense["ram_offset"] // PAGE
            want |= set(range(first, first + dense["length"] // PAGE))
            digest = hashlib.sha256()
            for pos in range(0, dense["length"], 4 * MiB):
                digest.update(os.pread(f.fileno(), min(4 * MiB, dense["length"] - pos),
                                       blk.pages_offset + dense["ram_offset"] + pos))
            if digest.hexdigest() != dense["sha256"]:
                raise FixtureError("dense blob sha256 differs in the image")
    have = set(blk.set_pages())
    if b.spec.arch != "x86_64" and want <= have:
        runs = merge([p, p + 1] for p in have - want)
        b.extra["other_data"] = [{"gpa": b.arch.ram_base + first * PAGE, "pages": end - first}
                                 for first, end in runs]
    elif have != want:
        raise FixtureError(f"{blk.idstr} has {len(have)} set pages, expected exactly "
                           f"{len(want)}")


def check_memory_map(b, lowmem):
    """QEMU's flat view agrees with the layout this script assumes (formats §7): the main
    block is mapped whole, [0, lowmem) at ram_base and the rest at 4 GiB, and every pattern
    page is at its GPA."""
    spec, base, main = b.spec, b.arch.ram_base, b.arch.main_block
    for gpa, pages, tag in spec.patterns:
        for n in (0, pages - 1):
            want = (main, pattern_ram_offset(spec, gpa + n * PAGE, lowmem))
            if map_gpa(b.memory_map, gpa + n * PAGE) != want:
                raise FixtureError(f"memory_map puts GPA {gpa + n * PAGE:#x} ({tag}) at "
                                   f"{map_gpa(b.memory_map, gpa + n * PAGE)}, not {want}")
    mapped = merge([r["block_offset"], r["block_offset"] + r["size"]]
                   for r in b.memory_map if r["block"] == main)
    # x86 leaves holes below 1 MiB (VGA window, ROMs); all the rest must be mapped
    if not any(first <= MiB and end == spec.ram for first, end in mapped):
        raise FixtureError(f"memory_map does not map all of {main}: {mapped}")
    for off in (0, lowmem - PAGE, spec.ram - PAGE):
        gpa = base + ram_to_gpa(off, lowmem)
        if map_gpa(b.memory_map, gpa) != (main, off):
            raise FixtureError(f"memory_map: {main} offset {off:#x} is not at GPA {gpa:#x}")


def restore(b, image, lowmem):
    """Load the image into a fresh QEMU (-incoming defer, same capabilities) and pmemsave the
    pc.ram-backed guest-physical ranges into NAME.restore.bin (recipes §2, §4). libvirt saves
    are loaded by a bare QEMU with the domain QEMU's command line (b.qemu_args)."""
    ranges = []
    if b.qemu_args:
        args, base = b.qemu_args, ()
    else:
        args, base = b.machine_args(), Qemu.BASE
    args = args + ["-S", "-incoming", "defer"]  # -S: stay paused after loading
    tmp = b.work / "pmemsave.bin"
    with Qemu(b.work, f"restore-{b.spec.name}", args, base) as q, \
            open(b.restore_bin, "wb") as dst:
        set_migration(q.qmp, b.spec)
        q.qmp.cmd("migrate-incoming", uri=migration_uri(b.img, image.stream_offset))
        wait_migration(q.qmp, 600)
        file_offset = 0
        for ram_offset, gpa, length in restore_gpa_ranges(b.spec, lowmem):
            q.qmp.cmd("pmemsave", val=gpa, size=length, filename=str(tmp))
            with open(tmp, "rb") as src:
                copy_sparse(src.fileno(), 0, dst.fileno(), file_offset, length)
            tmp.unlink()
            ranges.append({"ram_offset": ram_offset, "gpa": gpa, "length": length,
                           "file_offset": file_offset})
            file_offset += length
        os.ftruncate(dst.fileno(), file_offset)
    return ranges


def restore_page(fd, ranges, gpa):
    for r in ranges:
        if r["gpa"] <= gpa < r["gpa"] + r["length"]:
            return os.pread(fd, PAGE, r["file_offset"] + gpa - r["gpa"])
    return None


def check_restore(b, image, ranges):
    """Self-checks on the reloaded RAM: every pattern page is at its GPA; in a -S guest no
    other page holds data; with mapped-ram the dump equals the image read through the bitmap
    (set: the slot, clear: zeros whatever the slot holds; formats §5.4)."""
    exact = b.spec.kind in ("loader", "partial")
    pattern_pages = set()
    blk = image.block("pc.ram") if image.mapped_ram else None
    bad = []
    with open(b.restore_bin, "rb") as f, open(b.img, "rb") as img:
        fd = f.fileno()
        for gpa, pages, tag in b.spec.patterns:
            blob = pattern_blob(gpa, pages, tag)
            for n in range(pages):
                pattern_pages.add(gpa + n * PAGE)
                if restore_page(fd, ranges, gpa + n * PAGE) != blob[n * PAGE:(n + 1) * PAGE]:
                    raise FixtureError(f"restore: pattern {tag} page {n} is not at its GPA")
        for r in ranges:
            first = r["ram_offset"] // PAGE
            for p in pages_in_extents(fd, r["file_offset"], r["length"]):
                gpa = r["gpa"] + p * PAGE
                if os.pread(fd, PAGE, r["file_offset"] + p * PAGE) == ZERO_PAGE:
                    continue
                if exact and gpa not in pattern_pages:
                    bad.append(f"GPA {gpa:#x}: data in a -S guest outside the patterns")
                if blk and not blk.is_set(first + p):
                    bad.append(f"GPA {gpa:#x}: data, but the bitmap bit is clear")
            for p in blk.set_pages(first, first + r["length"] // PAGE) if blk else ():
                rel = (p - first) * PAGE
                if os.pread(fd, PAGE, r["file_offset"] + rel) != \
                        os.pread(img.fileno(), PAGE, blk.pages_offset + p * PAGE):
                    bad.append(f"GPA {r['gpa'] + rel:#x}: reloaded page differs from its slot")
    if bad:
        raise FixtureError(f"restore check failed for {len(bad)} pages: " + "; ".join(bad[:5]))


def scan_mrguest(path, ranges):
    """Booted guest: every MRGUEST page found in guest-physical ranges of a file (the
    reloaded RAM, or an ELF's PT_LOADs) must sit at the GPA it names, and all static pages
    must be there (recipes §4 "Self-check")."""
    counts = {"static": 0, "dirty": 0}
    with open(path, "rb") as f:
        fd = f.fileno()
        for r in ranges:
            for p in pages_in_extents(fd, r["file_offset"], r["length"]):
                head = os.pread(fd, 128, r["file_offset"] + p * PAGE)
                m = re.match(rb"MRGUEST (static|dirty) idx=\d+ gpa=0x([0-9a-f]{16})", head)
                if not m:
                    continue
                if int(m.group(2), 16) != r["gpa"] + p * PAGE:
                    raise FixtureError(f"MRGUEST page at GPA {r['gpa'] + p * PAGE:#x} "
                                       f"names {m.group(2).decode()}")
                counts[m.group(1).decode()] += 1
    if counts["static"] != MRINIT_STATIC_PAGES:
        raise FixtureError(f"found {counts['static']} MRGUEST static pages, "
                           f"expected {MRINIT_STATIC_PAGES}")
    return counts


def check_forensics(b, image):
    """The ELF dump, the registers and the image hold one paused state (recipes §9.4):
    the PT_LOADs cover exactly the RAM and ROM GPAs of the flat view (dump.c walks the same
    flat view; romd flash is not dumped); every PT_LOAD page that has data in the ELF or in
    the image equals the image's page behind it through memory_map, in every block
    (bitmap-set: its slot, clear: zeros); in a booted guest all MRGUEST static pages are at
    their GPA in the ELF; the notes of CPU 0 (NT_PRSTATUS, and on x86 the "QEMU" CPU state)
    agree with `info registers`. Fills the oracle's ELF and register fields; a `virt` guest
    QEMU would not dump ("elf_error") gets only the registers."""
    arch = b.spec.arch
    regs = parse_registers(b.regs_txt.read_text(), arch)
    if regs["cpu"] != 0:
        raise FixtureError(f"`info registers` is of CPU {regs['cpu']}, not CPU 0")
    b.extra.update({"regs": b.regs_txt.name, "registers": regs})
    if "elf_error" in b.extra:
        return
    elf = parse_elf(b.elf)
    if elf["machine"] != ARCH_MACHINE[arch]:
        raise FixtureError(f"{b.elf.name}: e_machine {elf['machine']}, not {ARCH_MACHINE[arch]}")
    loads, mm = elf["loads"], b.memory_map
    covered = merge([x["paddr"], x["paddr"] + x["size"]] for x in loads)
    mapped = dumped_ranges(b.mtree_txt.read_text())
    if covered != mapped:
        raise FixtureError(f"ELF PT_LOADs cover {covered}, the flat view's RAM {mapped}")
    blocks = {blk.idstr: blk for blk in image.blocks}
    compared, bad = 0, []
    with open(b.elf, "rb") as ef, open(b.img, "rb") as mf:
        for x in loads:
            pages = set(pages_in_extents(ef.fileno(), x["offset"], x["size"]))
            for r in mm:  # plus the image's data pages in this PT_LOAD
                first = max(x["paddr"], r["gpa"])
                end = min(x["paddr"] + x["size"], r["gpa"] + r["size"])
                if first < end:
                    start = (r["block_offset"] + first - r["gpa"]) // PAGE
                    shift = (first - x["paddr"]) // PAGE - start
                    pages.update(p + shift for p in blocks[r["block"]].set_pages(
                        start, start + (end - first) // PAGE))
            for i in sorted(pages):
                gpa = x["paddr"] + i * PAGE
                if map_gpa(mm, gpa) is None:
                    raise FixtureError(f"ELF PT_LOAD page at GPA {gpa:#x} is in no RAM block")
                block, off = map_gpa(mm, gpa)
                blk = blocks[block]
                got = os.pread(ef.fileno(), min(PAGE, x["size"] - i * PAGE),
                               x["offset"] + i * PAGE)
                want = os.pread(mf.fileno(), len(got), blk.pages_offset + off) \
                    if blk.is_set(off // PAGE) else ZERO_PAGE[:len(got)]
                if got != want:
                    bad.append(f"GPA {gpa:#x} ({block} {off:#x})")
                compared += 1
    if bad:
        raise FixtureError(f"{len(bad)} ELF pages differ from the image: {', '.join(bad[:5])}")
    if b.spec.booted:
        b.extra["mrguest_pages"] = scan_mrguest(b.elf, [
            {"gpa": x["paddr"], "length": x["size"], "file_offset": x["offset"]}
            for x in loads])

    cpu_states = [d for name, _, d in elf["notes"] if name == "QEMU"]
    prstatus = [d for name, t, d in elf["notes"] if name == "CORE" and t == NT_PRSTATUS]
    want_states = 1 if arch == "x86_64" else 0  # only target/i386 writes a "QEMU" note
    if len(cpu_states) != want_states or len(prstatus) != 1:
        raise FixtureError(f"ELF of a 1-vCPU {arch} guest has {len(cpu_states)} QEMU and "
                           f"{len(prstatus)} NT_PRSTATUS notes")
    notes = {"count": len(elf["notes"]), "NT_PRSTATUS": len(prstatus), "QEMU": len(cpu_states),
             "other": sorted({n for n, t, _ in elf["notes"]} - {"CORE", "QEMU"}),
             "order": [{"name": n, "type": t, "what": NOTE_TYPES.get((n, t), str(t)),
                        "size": len(d)} for n, t, d in elf["notes"]]}
    diff = []
    if cpu_states:
        version, size, state = qemu_cpu_state(cpu_states[0])
        notes.update(qemu_cpu_state_version=version, qemu_cpu_state_size=size)
        diff = [k for k, v in state.items()
                if v != ({f: regs[k][f] for f in v} if isinstance(v, dict) else regs[k])]
    pid = struct.unpack_from("<I", prstatus[0], PRSTATUS_PID)[0]
    if pid != 1:
        diff.append(f"NT_PRSTATUS pr_pid {pid} (not CPU 0's 1)")
    pr = prstatus_regs(prstatus[0], arch)
    diff += [f"NT_PRSTATUS {k}" for k, v in pr.items() if v != register_value(regs, k)]
    if diff:
        raise FixtureError(f"ELF notes and `info registers` differ in {', '.join(diff)}")
    st = b.elf.stat()
    b.extra.update({
        "elf": b.elf.name, "elf_size": st.st_size, "elf_allocated": st.st_blocks * 512,
        "elf_machine": elf["machine"], "elf_loads": loads, "elf_notes": notes,
        "elf_pages_compared": compared})


def check_legacy_stats(b, stats):
    """A legacy save by this script's QEMU: the walk agrees with QEMU's own page counters, and
    the live saves hold what they are made for."""
    m = b.migration or {}
    if b.spec.kind != "libvirt":
        for key, counter in (("page_records", "normal_pages"), ("zero_records", "zero_pages")):
            if stats[key] != m.get(counter):
                raise FixtureError(f"legacy walk: {key} {stats[key]}, but QEMU counted "
                                   f"{counter} {m.get(counter)}")
        # QEMU's xbzrle "pages" are cache hits: records + overflows (sent as PAGE) + pages
        # skipped as unchanged (no record)
        hits = m.get("xbzrle_pages", 0) - m.get("xbzrle_overflow", 0)
        if stats["xbzrle_records"] > hits:
            raise FixtureError(f"legacy walk: {stats['xbzrle_records']} XBZRLE records, but "
                               f"QEMU encoded only {hits} pages")
    if b.live and not (stats["resent"] and stats["zero_after_data"]):
        raise FixtureError(f"the live legacy save resent no page or zeroed no sent page: "
                           f"{stats}; migration: {m}")
    if b.spec.xbzrle and not stats["xbzrle_records"]:
        raise FixtureError(f"the xbzrle save has no XBZRLE record: {stats}; migration: {m}")


def check_legacy_restore(b, index, ranges):
    """The last-record-wins reading of the stream (XBZRLE replayed onto the copy before it)
    equals the pc.ram that QEMU's loader made (recipes §9.1, formats §6)."""
    bad = []
    with open(b.stream_file, "rb") as img, open(b.restore_bin, "rb") as rs:
        for r in ranges:
            first = r["ram_offset"] // PAGE
            for p in range(r["length"] // PAGE):
                want = legacy_page(img.fileno(), index.get(("pc.ram", first + p)))
                if os.pread(rs.fileno(), PAGE, r["file_offset"] + p * PAGE) != want:
                    bad.append(f"GPA {r['gpa'] + p * PAGE:#x}")
    if bad:
        raise FixtureError(f"the legacy records differ from the reloaded RAM on {len(bad)} "
                           f"pages: {', '.join(bad[:5])}")


def check_pair(b, image):
    """The mapped-ram image equals its legacy pair page for page in every RAM block: bitmap-set
    pages hold the last record's content, bitmap-clear pages are zero in the legacy stream
    (what "the two mounts are byte-identical" means, recipes §9.1). Returns the page count."""
    legacy_path = b.out / f"{b.spec.pair}.img"
    legacy = parse_image(legacy_path, 0)
    if [(x.idstr, x.used_length) for x in legacy.blocks] != \
            [(x.idstr, x.used_length) for x in image.blocks]:
        raise FixtureError(f"the RAM blocks of {legacy_path.name} differ")
    index, _ = walk_legacy(legacy_path, legacy)
    pages, bad = 0, []
    with open(legacy_path, "rb") as lf, open(b.img, "rb") as mf:
        for blk in image.blocks:
            for p in range(blk.used_length // PAGE):
                mapped = os.pread(mf.fileno(), PAGE, blk.pages_offset + p * PAGE) \
                    if blk.is_set(p) else ZERO_PAGE
                if legacy_page(lf.fileno(), index.get((blk.idstr, p))) != mapped:
                    bad.append(f"{blk.idstr} page {p}")
                pages += 1
    if bad:
        raise FixtureError(f"{len(bad)} pages differ from {legacy_path.name}: "
                           f"{', '.join(bad[:5])}")
    return pages


def finish(b, qemu_ver, gen_hash):
    """Parse and check the image, make the restore oracle, write NAME.json."""
    started = time.monotonic()
    spec = b.spec
    b.img.chmod(0o644)  # QEMU and libvirt create it 0600
    if spec.kind == "libvirt":
        check_libvirt_image(b)
    image = parse_image(b.stream_file, b.stream_offset)
    if image.mapped_ram != spec.mapped_ram:
        raise FixtureError(f"image mapped-ram={image.mapped_ram}, asked {spec.mapped_ram}")
    check_ramblocks(b, image)
    lowmem = lowmem_of(spec.machine, spec.ram)
    stale = None
    if image.mapped_ram:
        stale_by_block = stale_slots(b.img, image)
        stale = sum(stale_by_block.values())
        b.extra["stale_slots_by_block"] = stale_by_block
        if not spec.booted:
            check_image_content(b, image, lowmem)
    else:
        index, b.extra["legacy_stats"] = walk_legacy(b.stream_file, image)
        check_legacy_stats(b, b.extra["legacy_stats"])
    if spec.kind == "linux" and image.mapped_ram and not stale:
        raise FixtureError("the live save left no stale bitmap-clear slots; "
                           f"migration: {b.migration}")
    if spec.kind == "linux-reload":
        b.extra["pair_pages_compared"] = check_pair(b, image)
    if spec.mtree:
        check_memory_map(b, lowmem)
    if spec.dump:
        check_forensics(b, image)
    restore_info = None
    if spec.restore:
        ranges = restore(b, image, lowmem)
        check_restore(b, image, ranges)
        if not image.mapped_ram:
            check_legacy_restore(b, index, ranges)
        if spec.booted:
            b.extra["mrguest_pages"] = scan_mrguest(b.restore_bin, ranges)
        restore_info = {"file": b.restore_bin.name, "ranges": ranges}
    oracle = {
        "name": spec.name, "generator_hash": gen_hash, "image": b.img.name,
        "qemu_version": qemu_ver, "machine": spec.machine, "machine_type": image.machine_type,
        "ram_size": spec.ram, "mapped_ram": image.mapped_ram, "multifd": spec.multifd,
        "direct_io": spec.direct_io, "live": b.live, "stream_offset": image.stream_offset,
        "mount_options": b.mount_options, "libvirt": b.libvirt, "ramblocks": b.ramblocks,
        "lowmem": lowmem, "arch": spec.arch, "main_block": b.arch.main_block,
        "ram_base": b.arch.ram_base,
        "mtree": b.mtree_txt.name if spec.mtree else None, "memory_map": b.memory_map,
        "patterns": [{"gpa": gpa, "pages": pages, "tag": tag,
                      "ram_offset": pattern_ram_offset(spec, gpa, lowmem)}
                     for gpa, pages, tag in spec.patterns],
        "stale_slots": stale, "restore": restore_info, "migration": b.migration,
        **b.extra,
        "seconds": round(b.seconds + time.monotonic() - started, 2),
    }
    tmp = b.out / f"{spec.name}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(oracle, f, indent=1)
        f.write("\n")
    tmp.rename(b.out / f"{spec.name}.json")
    return oracle


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------

def generator_hash():
    """sha256 of this script and of every helper source it uses."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(HELPERS.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def outputs(out, name):
    return [out / f"{name}{ext}"
            for ext in (".img", ".json", ".restore.bin", ".raw-equivalent.img", ".mtree.txt",
                        ".elf", ".regs.txt")]


def current_oracle(out, name, gen_hash, qemu_ver):
    """NAME.json if NAME's outputs are complete and made by this generator and QEMU."""
    try:
        oracle = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if oracle.get("generator_hash") != gen_hash or oracle.get("qemu_version") != qemu_ver:
        return None
    if not (out / oracle["image"]).exists():
        return None
    if oracle.get("restore") and not (out / oracle["restore"]["file"]).exists():
        return None
    if oracle.get("raw_equivalent") and not (out / oracle["raw_equivalent"]["file"]).exists():
        return None
    if any(oracle.get(key) and not (out / oracle[key]).exists()
           for key in ("mtree", "elf", "regs")):
        return None
    return oracle


def human(n):
    return f"{n / MiB:,.1f} MiB"


class Maker:
    def __init__(self, out, qemu_ver, gen_hash):
        self.out = out
        self.qemu_ver = qemu_ver
        self.qemu_vers = {"x86_64": qemu_ver}
        self.gen_hash = gen_hash
        self.made = {}
        self._libvirt_ver = False

    def qemu_ver_of(self, arch, install=False):
        """Version of arch's emulator, installed first if `install`; None if it is absent."""
        if arch not in self.qemu_vers:
            emulator = ARCHES[arch]
            if install:
                install_emulator(emulator)
            elif not shutil.which(emulator.qemu):
                return None
            self.qemu_vers[arch] = qemu_version(emulator.qemu)
        return self.qemu_vers[arch]

    def libvirt_ver(self):
        if self._libvirt_ver is False:
            self._libvirt_ver = libvirt_version()
        return self._libvirt_ver

    def current(self, spec):
        """spec's oracle if its outputs and those of every fixture of its chain are complete
        and made by this generator, QEMU (and libvirt); else None."""
        chain = chain_of(spec)
        oracles = [current_oracle(self.out, s.name, self.gen_hash, self.qemu_ver_of(s.arch))
                   for s in chain]
        if not all(oracles):
            return None
        if spec.kind == "libvirt" and \
                any(o.get("libvirt_version") != self.libvirt_ver() for o in oracles):
            return None
        return oracles[chain.index(spec)]

    def ensure(self, name):
        """Make NAME (with every fixture of its chain) unless it is up to date; return its
        oracle."""
        if name in self.made:
            return self.made[name]
        spec = SPEC_BY_NAME[name]
        oracle = self.current(spec)
        if oracle:
            print(f"{name:<30} up to date, skipped", flush=True)
            self.made[name] = oracle
            return oracle
        oracles, seconds = self.make(spec)
        for oracle in oracles:
            st = (self.out / oracle["image"]).stat()
            print(f"{oracle['name']:<30} made in {oracle['seconds']:6.1f} s   image "
                  f"{human(st.st_size)}, {human(st.st_blocks * 512)} allocated", flush=True)
            self.made[oracle["name"]] = oracle
        if spec.chain:
            print(f"{'chain ' + spec.chain:<30} made in {seconds:6.1f} s", flush=True)
        return self.made[name]

    def make(self, spec):
        """Make spec's fixture, or every fixture of its chain together; returns their oracles
        and the time taken."""
        started = time.monotonic()
        specs = chain_of(spec)
        qemu_ver = self.qemu_ver_of(spec.arch, install=True)  # a chain has one architecture
        for s in specs:
            for path in outputs(self.out, s.name):
                path.unlink(missing_ok=True)
        what = spec.chain or spec.name
        work = Path(tempfile.mkdtemp(prefix=f"mrfix-{what}-"))
        try:
            builds = [Build(s, self.out, work) for s in specs]
            b = builds[0]
            if spec.kind == "libvirt":
                build_libvirt(builds)
            elif spec.kind == "linux-oracle":
                build_oracles(builds)
            elif spec.booted:
                build_linux(builds)
            else:
                with b.timed():
                    if spec.kind == "loader":
                        build_loader(b)
                    elif spec.kind == "dense":
                        build_dense(b)
                    else:
                        build_partial(b, self.ensure)
            oracles = [finish(b, qemu_ver, self.gen_hash) for b in builds]
        except (FixtureError, OSError) as e:
            raise FixtureError(f"{what}: {e} (work files kept in {work})") from e
        shutil.rmtree(work)
        return oracles, time.monotonic() - started

    def write_index(self):
        """DIR/index.json: every fixture whose outputs are up to date."""
        entries = []
        for spec in SPECS:
            oracle = self.current(spec)
            if oracle:
                entry = {"name": spec.name, "json": f"{spec.name}.json",
                         "image": oracle["image"], "default": not spec.explicit,
                         "about": spec.about}
                if spec.chain:
                    entry["chain"] = spec.chain
                entries.append(entry)
        index = {"generator_hash": self.gen_hash, "qemu_version": self.qemu_ver,
                 "fixtures": entries}
        with open(self.out / "index.json", "w") as f:
            json.dump(index, f, indent=1)
            f.write("\n")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Make real QEMU mapped-ram saved-VM fixtures for mramfs tests.")
    p.add_argument("--out", type=Path,
                   default=Path(os.environ.get("MRAMFS_FIXTURES") or REPO / "build" / "fixtures"),
                   help="output directory (default: $MRAMFS_FIXTURES or <repo>/build/fixtures)")
    p.add_argument("--list", action="store_true", help="list the fixtures and exit")
    p.add_argument("--libvirt", action="store_true",
                   help="also make the libvirt chain (starts virtlogd and libvirtd; ~3 min)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="fixtures or chains to make (default: all but the explicit-only ones)")
    return p.parse_args(argv)


def selected_names(args):
    """Fixture names from the command line, chains expanded; None if one is unknown."""
    names = []
    for n in args.names or [s.name for s in SPECS if not s.explicit]:
        if n in CHAINS:
            names += [s.name for s in CHAINS[n]]
        elif n in SPEC_BY_NAME:
            names.append(n)
        else:
            print(f"make-fixtures: unknown fixture {n} (see --list)", file=sys.stderr)
            return None
    if args.libvirt:
        names += [s.name for s in CHAINS["libvirt"]]
    return list(dict.fromkeys(names))


def list_fixtures():
    for spec in SPECS:
        print(f"{spec.name:<30} {'explicit' if spec.explicit else 'default ':<9} {spec.about}")
    print("\nchains (made together; a chain's name selects all of them):")
    for chain, specs in CHAINS.items():
        print(f"{chain:<30} {'explicit' if specs[0].explicit else 'default ':<9} "
              f"{' '.join(s.name for s in specs)}")


def lock_out_dir(out):
    """One run per output directory at a time; the lock lasts while the returned file is open."""
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"make-fixtures: waiting for another run on {out}", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def on_sigterm(signum, frame):
    """Leave through SystemExit so every `with Qemu` block kills its QEMU."""
    print("make-fixtures: terminated", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def main(argv):
    args = parse_args(argv)
    if args.list:
        list_fixtures()
        return 0
    names = selected_names(args)
    if names is None:
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with lock_out_dir(args.out):
            maker = Maker(args.out.resolve(), qemu_version(), generator_hash())
            for name in names:
                maker.ensure(name)
            maker.write_index()
    except (FixtureError, OSError) as e:
        print(f"make-fixtures: error: {e}", file=sys.stderr)
        return 1
    print(f"total {time.monotonic() - started:.1f} s, {len(names)} fixtures in {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
