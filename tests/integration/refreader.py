#!/usr/bin/env python3
"""Independent minimal reader of QEMU mapped-ram save images (test oracle).

This is deliberately NOT derived from mramfs' C code: it follows the format
notes (qemu-save-formats.md §2-§5, §10) directly and is only used by the
integration tests to know, per RAMBlock, where the data pages are (bitmap
runs) and what every page must read as (bit set -> bytes in the file at
pages_offset + i * page_size, bit clear -> zeros, even over stale bytes).

Usage as a tool:  python3 refreader.py IMAGE [--offset N] [--runs]

Layout handled:
  [libvirt header: "LibvirtQemudSave", LE u32 version, data_len, was_running,
   format, cookieOffset, 56 unused bytes = 92 bytes; stream at 92 + data_len]
  "QEVM" be32 3, 0x07 configuration (be32 len + machine type, subsections),
  [0x08 commands], 0x01 START "ram" v4: be64 total|MEM_SIZE, per block:
  u8 len + idstr, be64 used_length, [be64 addr if x-ignore-shared],
  MappedRamHeader (be32 version, be64 page_size, be64 bitmap_offset,
  be64 pages_offset); next block at pages_offset + used_length; then EOS.
  The bitmap is little-endian u64 words: page n <-> byte n//8, bit n%8.
"""

import json
import os
import struct
import sys

LIBVIRT_MAGIC_SAVE = b"LibvirtQemudSave"
LIBVIRT_MAGIC_PART = b"LibvirtQemudPart"
LIBVIRT_HDR_LEN = 92
QEVM = b"QEVM"
MRH_LEN = 28          # packed MappedRamHeader
RUN_CHUNK = 1 << 16   # bitmap bytes compared against zero at once
PIECE = 64            # bitmap bytes per big-int conversion


class RefError(Exception):
    pass


class Block:
    """One RAMBlock as described by the stream."""

    def __init__(self, idstr, used_length, hdr_offset, version, page_size,
                 bitmap_offset, pages_offset, addr=None, entry_offset=None):
        self.idstr = idstr                  # bytes
        self.used_length = used_length
        self.hdr_offset = hdr_offset        # file offset of the MappedRamHeader
        self.entry_offset = entry_offset    # file offset of the u8 idlen
        self.version = version
        self.page_size = page_size
        self.bitmap_offset = bitmap_offset
        self.pages_offset = pages_offset
        self.addr = addr
        self._bitmap = None
        self._runs = None

    @property
    def name(self):
        return self.idstr.decode("utf-8", "backslashreplace")

    @property
    def pages(self):
        return self.used_length // self.page_size

    @property
    def bitmap_size(self):
        return (self.pages + 63) // 64 * 8

    def __repr__(self):
        return ("Block(%r, used=%#x, bitmap@%#x, pages@%#x)"
                % (self.name, self.used_length, self.bitmap_offset,
                   self.pages_offset))


def bitmap_runs(bitmap, npages):
    """Runs of set bits [(first_page, end_page_exclusive), ...] of an LE bitmap.

    Zero regions are skipped by comparing big slices against zeros (outer
    RUN_CHUNK, inner PIECE bytes); each non-zero piece is converted to one
    Python int and runs inside it are extracted with bit tricks, so the cost
    is per run, never per page."""
    runs = []
    n = len(bitmap)
    mv = memoryview(bitmap)
    zero_chunk = bytes(RUN_CHUNK)
    zero_piece = bytes(PIECE)
    pos = 0
    while pos < n:
        end = min(n, pos + RUN_CHUNK)
        if mv[pos:end] == zero_chunk[:end - pos]:
            pos = end
            continue
        for ppos in range(pos, end, PIECE):
            pend = min(end, ppos + PIECE)
            piece = mv[ppos:pend]
            if piece == zero_piece[:pend - ppos]:
                continue
            x = int.from_bytes(piece, "little")
            base = ppos * 8
            if x == (1 << ((pend - ppos) * 8)) - 1:       # all ones
                _add_run(runs, base, base + (pend - ppos) * 8)
                continue
            shift = 0
            while x:
                tz = (x & -x).bit_length() - 1          # trailing zeros
                x >>= tz
                shift += tz
                ones = (~x & (x + 1)).bit_length() - 1  # trailing ones
                _add_run(runs, base + shift, base + shift + ones)
                x >>= ones
                shift += ones
        pos = end
    # bits >= npages are not pages (QEMU writes them 0; be defensive)
    out = []
    for a, b in runs:
        if a >= npages:
            break
        out.append((a, min(b, npages)))
    return out


def _add_run(runs, start, stop):
    if runs and runs[-1][1] == start:      # continues across pieces
        runs[-1] = (runs[-1][0], stop)
    else:
        runs.append((start, stop))


class Image:
    def __init__(self, path, offset=None):
        self.path = path
        self.f = open(path, "rb")
        self.fd = self.f.fileno()
        self.file_size = os.fstat(self.fd).st_size
        self.libvirt = None
        self.container = "qemu"
        if offset is None:
            offset = 0
            head = self.pread(0, LIBVIRT_HDR_LEN)
            if head[:16] in (LIBVIRT_MAGIC_SAVE, LIBVIRT_MAGIC_PART):
                if len(head) < LIBVIRT_HDR_LEN:
                    raise RefError("truncated libvirt header")
                version, data_len, was_running, fmt, cookie = \
                    struct.unpack_from("<5I", head, 16)
                self.libvirt = {"magic": head[:16].decode(),
                                "version": version, "data_len": data_len,
                                "was_running": was_running, "format": fmt,
                                "cookie_offset": cookie}
                self.container = "libvirt"
                if head[:16] == LIBVIRT_MAGIC_PART:
                    raise RefError("incomplete libvirt save")
                if version != 2:
                    raise RefError("unsupported libvirt version %d" % version)
                if fmt != 6:
                    raise RefError("libvirt format %d is not sparse" % fmt)
                offset = LIBVIRT_HDR_LEN + data_len
        self.stream_offset = offset
        self.machine_type = None
        self.capabilities = []
        self.page_bits = None
        self.blocks = []
        self._parse()

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- raw access ---------------------------------------------------------
    def pread(self, off, n):
        out = bytearray()
        while n > 0:
            b = os.pread(self.fd, min(n, 1 << 26), off)
            if not b:
                break
            out += b
            off += len(b)
            n -= len(b)
        return bytes(out)

    def _need(self, off, n):
        b = self.pread(off, n)
        if len(b) != n:
            raise RefError("truncated at %#x (+%d)" % (off, n))
        return b

    # -- stream parsing -----------------------------------------------------
    def _parse(self):
        p = self.stream_offset
        magic, ver = struct.unpack(">4sI", self._need(p, 8))
        if magic != QEVM:
            raise RefError("no QEVM at %#x" % p)
        if ver != 3:
            raise RefError("QEVM version %d" % ver)
        p += 8
        sec = self._need(p, 1)[0]
        if sec == 0x07:
            (ln,) = struct.unpack(">I", self._need(p + 1, 4))
            self.machine_type = self._need(p + 5, ln).decode("ascii",
                                                             "replace")
            p += 5 + ln
            while self._need(p, 1)[0] == 0x05:
                nl = self._need(p + 1, 1)[0]
                name = self._need(p + 2, nl).decode("ascii", "replace")
                p += 2 + nl + 4          # name + be32 version_id
                if name == "configuration/target-page-bits":
                    (self.page_bits,) = struct.unpack(">I", self._need(p, 4))
                    p += 4
                elif name == "configuration/capabilities":
                    (cnt,) = struct.unpack(">I", self._need(p, 4))
                    p += 4
                    for _ in range(cnt):
                        cl = self._need(p, 1)[0]
                        self.capabilities.append(
                            self._need(p + 1, cl).decode("ascii", "replace"))
                        p += 1 + cl
                elif name == "configuration/uuid":
                    p += 16
                else:
                    raise RefError("unknown configuration subsection %r"
                                   % name)
        # sections up to the ram START
        while True:
            sec = self._need(p, 1)[0]
            if sec == 0x08:                     # COMMAND: be16 cmd, be16 len
                _cmd, ln = struct.unpack(">HH", self._need(p + 1, 4))
                p += 5 + ln
                continue
            if sec == 0x01:
                sid, il = struct.unpack(">IB", self._need(p + 1, 5))
                idstr = self._need(p + 6, il)
                inst, sver = struct.unpack(">II", self._need(p + 6 + il, 8))
                p += 6 + il + 8
                if idstr != b"ram":
                    raise RefError("START of %r before ram" % idstr)
                if sver != 4:
                    raise RefError("ram section version %d" % sver)
                self.ram_section_id = sid
                break
            raise RefError("unexpected section type %#x at %#x" % (sec, p))
        (v,) = struct.unpack(">Q", self._need(p, 8))
        p += 8
        if not v & 0x04:
            raise RefError("ram START without MEM_SIZE")
        total = v & ~0xfff
        self.mem_size_total = total
        ignore_shared = "x-ignore-shared" in self.capabilities
        if "mapped-ram" not in self.capabilities:
            raise RefError("not a mapped-ram stream")
        while total > 0:
            entry = p
            il = self._need(p, 1)[0]
            idstr = self._need(p + 1, il)
            (used,) = struct.unpack(">Q", self._need(p + 1 + il, 8))
            p += 1 + il + 8
            addr = None
            if ignore_shared:
                (addr,) = struct.unpack(">Q", self._need(p, 8))
                p += 8
            ver, ps, bmo, pgo = struct.unpack(">IQQQ", self._need(p, MRH_LEN))
            blk = Block(idstr, used, p, ver, ps, bmo, pgo, addr, entry)
            if ver != 1:
                raise RefError("MappedRamHeader version %d for %r"
                               % (ver, blk.name))
            if ps == 0 or used % ps:
                raise RefError("bad used_length/page_size for %r" % blk.name)
            self.blocks.append(blk)
            p = pgo + used
            total -= used
        if total != 0:
            raise RefError("block lengths overrun MEM_SIZE total")
        self.ram_end_offset = p             # where the be64 EOS sits
        (eos,) = struct.unpack(">Q", self._need(p, 8))
        if eos != 0x10:
            raise RefError("no EOS after block table at %#x" % p)

    # -- per block ----------------------------------------------------------
    def block(self, idstr):
        if isinstance(idstr, str):
            idstr = idstr.encode()
        for b in self.blocks:
            if b.idstr == idstr:
                return b
        raise KeyError(idstr)

    def bitmap(self, blk):
        if blk._bitmap is None:
            bm = self.pread(blk.bitmap_offset, blk.bitmap_size)
            if len(bm) != blk.bitmap_size:
                raise RefError("bitmap of %r past EOF" % blk.name)
            blk._bitmap = bm
        return blk._bitmap

    def runs(self, blk):
        """[(first_page, end_page)] runs of set bits."""
        if blk._runs is None:
            blk._runs = bitmap_runs(self.bitmap(blk), blk.pages)
        return blk._runs

    def byte_runs(self, blk):
        ps = blk.page_size
        return [(a * ps, b * ps) for a, b in self.runs(blk)]

    def data_pages(self, blk):
        return sum(b - a for a, b in self.runs(blk))

    def bit(self, blk, page):
        bm = self.bitmap(blk)
        return (bm[page >> 3] >> (page & 7)) & 1

    def read(self, blk, off, length):
        """Expected bytes of block file [off, off+length) (clipped to size)."""
        end = min(off + length, blk.used_length)
        if off >= end:
            return b""
        out = bytearray(end - off)
        ps = blk.page_size
        for a, b in self._runs_overlapping(blk, off, end):
            s = max(a * ps, off)
            e = min(b * ps, end)
            data = self.pread(blk.pages_offset + s, e - s)
            out[s - off:s - off + len(data)] = data
        return bytes(out)

    def _runs_overlapping(self, blk, off, end):
        import bisect
        runs = self.runs(blk)
        ps = blk.page_size
        i = bisect.bisect_right(runs, (off // ps, 1 << 62)) - 1
        i = max(i, 0)
        while i < len(runs):
            a, b = runs[i]
            if a * ps >= end:
                break
            if b * ps > off:
                yield a, b
            i += 1

    def stale_pages(self, blk):
        """Pages whose bit is clear but whose slot in the file is not zero.

        Uses SEEK_DATA/SEEK_HOLE on the image so file holes are not read."""
        ps = blk.page_size
        lo, hi = blk.pages_offset, blk.pages_offset + blk.used_length
        hi = min(hi, self.file_size)
        zero = bytes(ps)
        out = []
        bm = self.bitmap(blk)
        pos = lo
        while pos < hi:
            try:
                d = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if d >= hi:
                break
            h = min(os.lseek(self.fd, d, os.SEEK_HOLE), hi)
            # align to pages of the block
            first = (d - lo) // ps
            last = (h - lo + ps - 1) // ps
            cur = first
            while cur < last:
                n = min(last - cur, 4096)
                buf = self.pread(lo + cur * ps, n * ps)
                for i in range(n):
                    pg = cur + i
                    if (bm[pg >> 3] >> (pg & 7)) & 1:
                        continue
                    seg = buf[i * ps:(i + 1) * ps]
                    if seg and seg != zero[:len(seg)]:
                        out.append(pg)
                cur += n
            pos = h
        return out

    # -- summary ------------------------------------------------------------
    def describe(self, with_runs=False):
        d = {"image": self.path, "container": self.container,
             "stream_offset": self.stream_offset, "file_size": self.file_size,
             "machine_type": self.machine_type,
             "capabilities": self.capabilities, "libvirt": self.libvirt,
             "blocks": []}
        for b in self.blocks:
            e = {"idstr": b.name, "size": b.used_length,
                 "page_size": b.page_size, "pages": b.pages,
                 "data_pages": self.data_pages(b),
                 "bitmap_offset": b.bitmap_offset,
                 "pages_offset": b.pages_offset, "hdr_offset": b.hdr_offset}
            if with_runs:
                e["runs"] = self.runs(b)
            d["blocks"].append(e)
        return d


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--offset", type=lambda s: int(s, 0), default=None)
    ap.add_argument("--runs", action="store_true")
    ap.add_argument("--stale", metavar="IDSTR")
    a = ap.parse_args(argv)
    try:
        with Image(a.image, a.offset) as img:
            d = img.describe(a.runs)
            if a.stale:
                d["stale"] = img.stale_pages(img.block(a.stale))
            print(json.dumps(d, indent=1))
    except RefError as e:
        print("refreader: %s: %s" % (a.image, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
