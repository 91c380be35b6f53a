#!/usr/bin/env python3
"""Cut real fixture images (scripts/make-fixtures.py output) down to small fuzzing seeds.

Everything before the ram START section (libvirt header, QEVM header, configuration,
commands) and everything after the RAM END section (device state, EOF, the VM description)
is copied byte for byte; the RAM in between is squeezed: every RAMBlock keeps only its first
few pages (used_length and MEM_SIZE rewritten), mapped-ram bitmaps and page slots are laid out
again right after each entry, and a legacy stream keeps only the records of kept pages (each
with its idstr, as CONTINUE may now follow a dropped record). The seeds are real structure,
real machine types, real device state and descriptions, in tens of KiB.

  tests/fuzz/make-seeds.py FIXTURE_DIR [OUT_DIR]    (OUT_DIR: tests/fuzz/corpus)
"""
import os
import subprocess
import tempfile
import struct
import sys

FLAG_ZERO, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_EOS, FLAG_CONTINUE, FLAG_XBZRLE = 2, 4, 8, 0x10, 0x20, 0x40
FLAG_MULTIFD_FLUSH = 0x200
LIBVIRT_MAGICS = (b"LibvirtQemudSave", b"LibvirtQemudPart")


def be32(b, o):
    return struct.unpack_from(">I", b, o)[0]


def be64(b, o):
    return struct.unpack_from(">Q", b, o)[0]


class Img:
    def __init__(self, path):
        self.f = open(path, "rb")
        self.size = os.fstat(self.f.fileno()).st_size

    def read(self, off, n):
        self.f.seek(off)
        return self.f.read(n)


def stream_offset(img):
    head = img.read(0, 92)
    if head[:16] in LIBVIRT_MAGICS:
        swap = struct.unpack_from("<I", head, 16)[0] > 2
        data_len = struct.unpack_from(">I" if swap else "<I", head, 20)[0]
        return 92 + data_len
    return 0


def find_ram_start(img, qevm):
    head = img.read(qevm, 1 << 16)
    pat = b"\x03ram" + struct.pack(">II", 0, 4)
    i = head.find(pat)
    if i < 5 or head[i - 5] != 1:
        raise ValueError("no ram START section")
    return qevm + i - 5, be32(head, i - 4)


def keep_pages(idstr, page_size):
    """How many leading pages of a block a seed keeps."""
    if idstr in (b"pc.ram", b"mach-virt.ram", b"riscv_virt_board.ram"):
        return 4
    return 1


def squeeze_mapped_ram(img, path):
    qevm = stream_offset(img)
    start, sid = find_ram_start(img, qevm)
    prefix = img.read(0, start + 17)  # ... START header through version
    pos = start + 17
    mem = be64(img.read(pos, 8), 0)
    total, pos = mem & ~0x3FF, pos + 8
    blocks = []
    while total > 0:
        n = img.read(pos, 1)[0]
        ent = img.read(pos + 1, n + 8 + 28)
        idstr, used = ent[:n], be64(ent, n)
        ver, page_size, bm_off, pg_off = struct.unpack_from(">IQQQ", ent, n + 8)
        blocks.append((idstr, used, ver, page_size, bm_off, pg_off))
        total -= used
        pos = pg_off + used
    tail = img.read(pos, img.size - pos)  # EOS, footer, PART/END, device state, vmdesc
    out = bytearray(prefix)
    new_total = sum(min(b[1], keep_pages(b[0], b[3]) * b[3]) for b in blocks)
    out += struct.pack(">Q", new_total | FLAG_MEM_SIZE)
    for idstr, used, ver, page_size, bm_off, pg_off in blocks:
        new_used = min(used, keep_pages(idstr, page_size) * page_size)
        pages = new_used // page_size
        out += bytes([len(idstr)]) + idstr + struct.pack(">Q", new_used)
        new_bm = len(out) + 28
        bm_len = (pages + 63) // 64 * 8
        new_pg = -(-(new_bm + bm_len) // page_size) * page_size
        out += struct.pack(">IQQQ", ver, page_size, new_bm, new_pg)
        bits = int.from_bytes(img.read(bm_off, 8), "little") & ((1 << pages) - 1)
        out += bits.to_bytes(8, "little")[:bm_len].ljust(bm_len, b"\0")
        out += bytes(new_pg - len(out))
        out += img.read(pg_off, new_used)
    out += tail
    return bytes(out)


def squeeze_legacy(img, path, page_size=4096):
    qevm = stream_offset(img)
    start, sid = find_ram_start(img, qevm)
    data = img.read(0, img.size)
    out = bytearray(data[:start + 17])
    pos = start + 17
    total, pos = be64(data, pos) & ~0x3FF, pos + 8
    blocks, sizes = [], {}
    while total > 0:
        n = data[pos]
        idstr, used = data[pos + 1:pos + 1 + n], be64(data, pos + 1 + n)
        blocks.append((idstr, used))
        total -= used
        pos += 1 + n + 8
    new = {i: min(u, keep_pages(i, page_size) * page_size) for i, u in blocks}
    out += struct.pack(">Q", sum(new.values()) | FLAG_MEM_SIZE)
    for idstr, used in blocks:
        out += bytes([len(idstr)]) + idstr + struct.pack(">Q", new[idstr])
    mask = page_size - 1
    last = None
    parts = 0

    def records():
        nonlocal pos, last
        while True:
            v = be64(data, pos)
            rec_start = pos
            pos += 8
            flags, addr = v & mask, v & ~mask
            kind = flags & ~FLAG_CONTINUE
            if kind == FLAG_EOS:
                out.extend(struct.pack(">Q", FLAG_EOS))
                return
            if kind == FLAG_MULTIFD_FLUSH:
                continue
            if not flags & FLAG_CONTINUE:
                n = data[pos]
                last = bytes(data[pos + 1:pos + 1 + n])
                pos += 1 + n
            body_start = pos
            if kind == FLAG_ZERO:
                pos += 1
            elif kind == FLAG_PAGE:
                pos += page_size
            elif kind == FLAG_XBZRLE:
                pos += 3 + struct.unpack_from(">H", data, pos + 1)[0]
            else:
                raise ValueError("record 0x%x at 0x%x" % (v, rec_start))
            if addr < new[last]:
                out.extend(struct.pack(">Q", addr | kind) + bytes([len(last)]) + last)
                out.extend(data[body_start:pos])

    def footer():
        nonlocal pos
        if data[pos] == 0x7E:
            out.extend(data[pos:pos + 5])
            pos += 5

    records()
    footer()
    while True:  # PART / END / COMMAND sections up to END
        t = data[pos]
        if t == 8:
            n = 5 + struct.unpack_from(">H", data, pos + 3)[0]
            out.extend(data[pos:pos + n])
            pos += n
        elif t in (2, 3):
            hdr = data[pos:pos + 5]
            pos += 5
            mark = len(out)
            out.extend(hdr)
            before = len(out)
            records()
            footer()
            # Drop PART sections left empty beyond the first few: they only cost bytes.
            if t == 2 and len(out) == before + 8 + (5 if out[-5] == 0x7E else 0):
                parts += 1
                if parts > 2:
                    del out[mark:]
            if t == 3:
                break
        else:
            raise ValueError("section byte 0x%x at 0x%x" % (t, pos))
    out += data[pos:]
    return bytes(out)


def devstate_seed(seed, arch):
    """fuzz-devstate input from a squeezed mapped-ram seed: the device sections after RAM
    END and the description (harness format: u8 arch, le32 length, device state, JSON)."""
    qevm = stream_offset_bytes(seed)
    start = seed.find(b"\x03ram" + struct.pack(">II", 0, 4), qevm) - 5
    pos, total = start + 25, be64(seed, start + 17) & ~0x3FF
    while total > 0:  # the block list: skip to the end of the last block's pages
        n = seed[pos]
        used = be64(seed, pos + 1 + n)
        pg_off = be64(seed, pos + 1 + n + 8 + 20)
        total -= used
        pos = pg_off + used
    pos += 8  # EOS
    if seed[pos] == 0x7E:
        pos += 5
    while True:
        t = seed[pos]
        if t == 8:
            pos += 5 + struct.unpack_from(">H", seed, pos + 3)[0]
            continue
        pos += 5 + 8
        if seed[pos] == 0x7E:
            pos += 5
        if t == 3:
            break
    p = len(seed)
    while True:  # the VMDESC: 0x06, be32 length of the rest, after the EOF byte
        p = seed.rfind(b"\x06", 0, p)
        if be32(seed, p + 1) == len(seed) - p - 5 and seed[p - 1] == 0:
            break
    dev, js = seed[pos:p - 1], seed[p + 5:]
    return bytes([arch]) + struct.pack("<I", len(dev)) + dev + js


def stream_offset_bytes(b):
    if b[:16] in LIBVIRT_MAGICS:
        swap = struct.unpack_from("<I", b, 16)[0] > 2
        return 92 + struct.unpack_from(">I" if swap else "<I", b, 20)[0]
    return 0


def physmem_seed(flags, machine, blocks, xml=b"", below=0, cpus=0):
    """fuzz-physmem input (see its header): blocks are (idstr, size, page_bits, runs)."""
    out = bytearray([flags]) + struct.pack("<Q", below)
    out += bytes([len(machine)]) + machine
    out += struct.pack("<H", len(xml)) + xml
    out += bytes([len(blocks)])
    for idstr, size, bits, runs in blocks:
        out += bytes([len(idstr)]) + idstr + struct.pack("<Q", size) + bytes([bits - 10])
        out += bytes([len(runs)])
        for first, count in runs:
            out += struct.pack("<IH", first, count)
    out += bytes([cpus])
    out += bytes(range(256)) * 2 * cpus  # register bytes
    return bytes(out)


def synthetic_seeds(out_dir):
    G, M = 1 << 30, 1 << 20
    vga = (b"0000:00:01.0/vga.vram", 16 * M, 12, [(0, 4)])
    bios = (b"pc.bios", 256 << 10, 12, [(0, 64)])
    phys = {
        "q35-512M": physmem_seed(0x01, b"pc-q35-10.0", [(b"pc.ram", 512 * M, 12, [(0, 160), (256, 8)]), vga, bios], cpus=1),
        "q35-5G": physmem_seed(0x01, b"pc-q35-10.0", [(b"pc.ram", 5 * G, 12, [(0, 4), (0x100000, 16)]), bios], cpus=2),
        "pc-4G-below": physmem_seed(0x11, b"pc-i440fx-10.0", [(b"pc.ram", 4 * G, 12, [(0, 4)]), bios], below=2 * G, cpus=1),
        "q35-amd-1T": physmem_seed(0x0D, b"pc-q35-10.0", [(b"pc.ram", 1100 * G, 16, [(5, 3)]), bios], cpus=1),
        "q35-xml": physmem_seed(0x01, b"pc-q35-9.2", [(b"pc.ram", 6 * G, 12, [(1, 1)]), bios],
                                xml=b"<domain><cpu><vendor>AMD</vendor></cpu><qemu:commandline><qemu:arg value='-machine'/><qemu:arg value='q35,max-ram-below-4g=1G'/></qemu:commandline></domain>", cpus=1),
        "arm-virt": physmem_seed(0x02, b"virt-10.0", [(b"mach-virt.ram", 1 * G, 12, [(0, 8)]), (b"virt.flash0", 64 * M, 12, [(0, 1)]), (b"virt.flash1", 64 * M, 12, [])], cpus=2),
        "riscv-virt": physmem_seed(0x03, b"virt", [(b"riscv_virt_board.ram", 1 * G, 12, [(0, 8)]), (b"riscv_virt_board.mrom", 4096 * 10, 12, [(0, 1)])], cpus=1),
        "unknown": physmem_seed(0x00, b"isapc", [(b"pc.ram", 64 * M, 12, [(0, 1)])]),
    }
    bitmaps = {
        "words": bytes([16]) + struct.pack("<I", 1000) + bytes([0xFF, 0, 0x0F, 0xF0] * 40) + bytes(range(64)),
        "sparse": bytes([40]) + struct.pack("<I", 5000) + bytes(600) + b"\x01" + bytes(100) + b"\x80",
        "full": bytes([8]) + struct.pack("<I", 4097) + b"\xff" * 520,
    }
    for harness, seeds in (("physmem", phys), ("bitmap", bitmaps)):
        d = os.path.join(out_dir, harness)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name + ".seed"), "wb") as f:
                f.write(data)
        print("%-10s %d synthetic seeds" % (harness, len(seeds)))


def main():
    fx = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "corpus")
    jobs = [  # harness, fixture, squeezer, extra kwargs
        ("mapped-ram", "q35-512M-S.img", squeeze_mapped_ram),
        ("mapped-ram", "pc-512M-S.img", squeeze_mapped_ram),
        ("mapped-ram", "linux-paused-mapped.img", squeeze_mapped_ram),
        ("mapped-ram", "oracle-pc-4G.img", squeeze_mapped_ram),
        ("mapped-ram", "aarch64-virt-1G-S.img", squeeze_mapped_ram),
        ("mapped-ram", "riscv64-virt-1G-S.img", squeeze_mapped_ram),
        ("libvirt", "q35-512M-S-libvirt-unaligned.img", squeeze_mapped_ram),
        ("legacy", "q35-512M-S-legacy.img", squeeze_legacy),
        ("legacy", "linux-paused-legacy.img", squeeze_legacy),
        ("legacy", "linux-live-legacy.img", squeeze_legacy),
        ("legacy", "linux-live-legacy-xbzrle.img", squeeze_legacy),
    ]
    for harness, name, fn in jobs:
        src = os.path.join(fx, name)
        if not os.path.exists(src):
            print("skip (missing): " + name)
            continue
        seed = fn(Img(src), src)
        d = os.path.join(out_dir, harness)
        os.makedirs(d, exist_ok=True)
        dst = os.path.join(d, os.path.splitext(name)[0] + ".seed")
        with open(dst, "wb") as f:
            f.write(seed)
        print("%-10s %-40s %7d bytes" % (harness, name, len(seed)))
        base = os.path.splitext(name)[0] + ".seed"
        # Short inputs for the targeted harnesses: the header through the block list (the
        # stream and libvirt parsers), the device state with its description (devstate).
        start = seed.find(b"\x03ram" + struct.pack(">II", 0, 4))
        cut = "stream" if harness != "libvirt" else "libvirt"
        d = os.path.join(out_dir, cut)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "head-" + base), "wb") as f:
            f.write(seed[:start + 200])
        if harness in ("mapped-ram", "libvirt"):
            arch = 1 if b"mach-virt" in seed[:4096] else 2 if b"riscv_virt" in seed[:4096] else 0
            d = os.path.join(out_dir, "devstate")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, base), "wb") as f:
                f.write(devstate_seed(seed, arch))
    synthetic_seeds(out_dir)
    packed_seeds(out_dir)


def packed_seeds(out_dir):
    """fuzz-packed: the mapped-ram and legacy seeds packed by mramfs-pack (4 KiB frames,
    so a seed has many frames), behind the harness's flags byte 0x03 (repair checksums)."""
    here = os.path.dirname(os.path.abspath(__file__))
    pack = os.environ.get("MRAMFS_PACK",
                          os.path.join(here, "..", "..", "build", "fs", "mramfs-pack"))
    if not os.access(pack, os.X_OK):
        print("skip packed seeds: no %s (build first, or set MRAMFS_PACK)" % pack)
        return
    d = os.path.join(out_dir, "packed")
    os.makedirs(d, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for harness in ("mapped-ram", "legacy"):
            src_dir = os.path.join(out_dir, harness)
            for name in sorted(os.listdir(src_dir)):
                out = os.path.join(tmp, "out.pk")
                subprocess.run([pack, "-q", "-f", "--frame-size", "4K",
                                os.path.join(src_dir, name), out], check=True)
                with open(out, "rb") as f:
                    seed = b"\x03" + f.read()
                with open(os.path.join(d, name), "wb") as f:
                    f.write(seed)
                print("%-10s %-40s %7d bytes" % ("packed", name, len(seed)))


if __name__ == "__main__":
    main()
