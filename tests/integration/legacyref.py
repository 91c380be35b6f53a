#!/usr/bin/env python3
"""Independent minimal reader of QEMU legacy (non-mapped-ram) save streams (test oracle).

Written from the format notes (qemu-save-formats.md §2, §3, §4, §6), not from mramfs' C
code: it walks every RAM record of a legacy stream and keeps, per page, the LAST record
that sent it -- the loader's rule (QEMU ram_load_precopy): a PAGE record's bytes, a page
rebuilt by replaying XBZRLE deltas, or zeros (a ZERO record, or never sent). The
integration tests compare mramfs' mounts with what this reader says every page holds,
which pages are data (SEEK_DATA/SEEK_HOLE, st_blocks), and with its record counts.

Usage as a tool:  python3 legacyref.py IMAGE [--offset N] [--runs]

Layout handled:
  [libvirt header: "LibvirtQemudSave", LE u32 version, data_len, was_running, format,
   cookieOffset, 56 unused bytes = 92 bytes; XML and cookie NUL-terminated after it;
   the stream at 92 + data_len; only format 0 (raw) has a readable stream]
  "QEVM" be32 3, [0x07 configuration: be32 len + machine type, subsections]
  [0x08 COMMAND be16 cmd, be16 len, body]
  0x01 START be32 id, u8 len "ram", be32 instance, be32 version 4:
       be64 total|MEM_SIZE, blocks (u8 len + idstr, be64 used_length) until the total
       is used, then records up to EOS, [0x7e be32 id footer]
  (0x08 COMMAND | 0x02 PART be32 id | 0x03 END be32 id, records, EOS, [footer])* up to END
  records: be64 offset|flags; flags = low bits below the target page size
       ZERO 0x02 | PAGE 0x08 | XBZRLE 0x40 [| CONTINUE 0x20: same block, no idstr]
       else u8 len + idstr; then ZERO: u8 fill (0); PAGE: page bytes;
       XBZRLE: u8 1, be16 len, delta; MULTIFD_FLUSH 0x200: nothing; EOS 0x10: end
  device state (FULL sections), 0x00 EOF, 0x06 be32 len + JSON (the VM description)
"""

import json
import mmap
import os
import struct
import sys

LIBVIRT_MAGICS = (b"LibvirtQemudSave", b"LibvirtQemudPart")
LIBVIRT_HDR_LEN = 92
QEVM = b"QEVM"

ZERO, MEM_SIZE, PAGE, EOS, CONTINUE, XBZRLE, HOOK, COMPRESS, FLUSH = (
    0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200)


class RefError(Exception):
    pass


def xbzrle_decode(delta, page):
    """QEMU xbzrle_decode_buffer onto bytearray page (in place); RefError if it fails."""
    i, d, n, size = 0, 0, len(delta), len(page)

    def uleb(i):
        if n - i < 2:
            raise RefError("XBZRLE: a length needs two bytes left")
        if delta[i] < 0x80:
            return delta[i], 1
        if delta[i + 1] >= 0x80:
            raise RefError("XBZRLE: ULEB128 longer than two bytes")
        return (delta[i] & 0x7f) | (delta[i + 1] << 7), 2

    while i < n:
        z, used = uleb(i)
        if i and not z:
            raise RefError("XBZRLE: empty unchanged run")
        i += used
        d += z
        if d > size:
            raise RefError("XBZRLE: past the page")
        nz, used = uleb(i)
        if not nz:
            raise RefError("XBZRLE: empty changed run")
        i += used
        if d + nz > size or i + nz > n:
            raise RefError("XBZRLE: past the page or the delta")
        page[d:d + nz] = delta[i:i + nz]
        d += nz
        i += nz


class Block:
    def __init__(self, idstr, used_length, page_size, entry_offset):
        self.idstr = idstr                # bytes
        self.used_length = used_length
        self.page_size = page_size
        self.entry_offset = entry_offset  # the u8 idlen of its block list entry
        self.last = {}                    # page -> ("P", data off) | ("Z",) | ("X", bytes)
        self.sent = set()                 # pages any record sent
        self.had_data = {}                # page -> data offset of its last PAGE record
        self.ever_data = set()            # pages a PAGE or XBZRLE record sent
        self._runs = None

    @property
    def name(self):
        return self.idstr.decode("utf-8", "backslashreplace")

    @property
    def pages(self):
        return self.used_length // self.page_size

    def __repr__(self):
        return "Block(%r, used=%#x)" % (self.name, self.used_length)


class Record:
    """Where one page record sits (the first few of each kind are kept)."""

    def __init__(self, offset, flags, block, page, idstr_offset, data_offset):
        self.offset = offset              # the be64 header
        self.flags = flags
        self.block = block                # Block
        self.page = page
        self.idstr_offset = idstr_offset  # the u8 len of the idstr, or None (CONTINUE)
        self.data_offset = data_offset    # page bytes / fill byte / XBZRLE header


class Image:
    KEEP_RECORDS = 64      # per kind, in stream order

    def __init__(self, path, offset=None):
        self.path = path
        self.f = open(path, "rb")
        self.file_size = os.fstat(self.f.fileno()).st_size
        self.m = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) \
            if self.file_size else b""
        self.libvirt = None
        self.container = "qemu"
        self.machine_type = None
        self.capabilities = []
        self.page_bits = None
        self.blocks = []
        self.stats = dict.fromkeys(("page_records", "zero_records", "xbzrle_records",
                                    "resent"), 0)
        self.sections = {"start": None, "parts": [], "end": None, "commands": []}
        self.records = {PAGE: [], ZERO: [], XBZRLE: []}   # the first few of each kind
        self.named = {PAGE: [], ZERO: [], XBZRLE: []}     # the first few that name a block
        self.stream_offset = offset if offset is not None else self._libvirt()
        self._parse()

    def close(self):
        if isinstance(self.m, mmap.mmap):
            self.m.close()
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- raw access -----------------------------------------------------------------
    def need(self, off, n):
        if off < 0 or off + n > self.file_size:
            raise RefError("truncated: %d bytes at %#x past the end (%#x)"
                           % (n, off, self.file_size))
        return self.m[off:off + n]

    def u8(self, off):
        return self.need(off, 1)[0]

    def be16(self, off):
        return struct.unpack(">H", self.need(off, 2))[0]

    def be32(self, off):
        return struct.unpack(">I", self.need(off, 4))[0]

    def be64(self, off):
        return struct.unpack(">Q", self.need(off, 8))[0]

    def pread(self, off, n):
        return bytes(self.m[off:off + n])

    # -- libvirt header and stream header ---------------------------------------------
    def _libvirt(self):
        head = self.m[:LIBVIRT_HDR_LEN]
        if head[:16] not in LIBVIRT_MAGICS:
            return 0
        if len(head) < LIBVIRT_HDR_LEN:
            raise RefError("truncated libvirt header")
        version, data_len, was_running, fmt, cookie_off = struct.unpack_from("<5I", head, 16)
        data = self.need(LIBVIRT_HDR_LEN, data_len)
        xml_len = cookie_off or data_len
        self.libvirt = {
            "magic": head[:16].decode(), "version": version, "data_len": data_len,
            "was_running": was_running, "format": fmt, "cookie_offset": cookie_off,
            "xml": data[:xml_len].split(b"\0")[0],
            "cookie": data[cookie_off:].split(b"\0")[0] if cookie_off else None}
        self.container = "libvirt"
        if head[:16] != LIBVIRT_MAGICS[0]:
            raise RefError("incomplete libvirt save")
        if fmt != 0:
            raise RefError("libvirt format %d: not a raw sequential stream" % fmt)
        return LIBVIRT_HDR_LEN + data_len

    def _config(self, p):
        (ln,) = struct.unpack(">I", self.need(p + 1, 4))
        self.machine_type = self.need(p + 5, ln).decode("ascii", "replace")
        p += 5 + ln
        while p < self.file_size and self.u8(p) == 0x05:
            nl = self.u8(p + 1)
            name = self.need(p + 2, nl).decode("ascii", "replace")
            p += 2 + nl + 4
            if name == "configuration/target-page-bits":
                self.page_bits = self.be32(p)
                p += 4
            elif name == "configuration/capabilities":
                cnt = self.be32(p)
                p += 4
                for _ in range(cnt):
                    cl = self.u8(p)
                    self.capabilities.append(self.need(p + 1, cl).decode("ascii", "replace"))
                    p += 1 + cl
            elif name == "configuration/uuid":
                p += 16
            else:
                raise RefError("unknown configuration subsection %r" % name)
        return p

    # -- the RAM sections ---------------------------------------------------------------
    def _parse(self):
        p = self.stream_offset
        if self.need(p, 4) != QEVM or self.be32(p + 4) != 3:
            raise RefError("no QEVM version 3 at %#x" % p)
        p += 8
        if self.u8(p) == 0x07:
            p = self._config(p)
        if "mapped-ram" in self.capabilities:
            raise RefError("a mapped-ram stream, not a legacy one")
        self.page_size = 1 << (self.page_bits or 12)
        while True:                                    # up to the ram START
            t = self.u8(p)
            if t == 0x08:
                self.sections["commands"].append(p)
                p += 5 + self.be16(p + 3)
                continue
            if t != 0x01:
                raise RefError("section type %#x at %#x before the ram START" % (t, p))
            self.sections["start"] = p
            self.ram_section_id = self.be32(p + 1)
            il = self.u8(p + 5)
            if self.need(p + 6, il) != b"ram" or self.be32(p + 10 + il) != 4:
                raise RefError("the first iterable section is not ram version 4")
            p += 14 + il
            break
        v = self.be64(p)
        if v & 0x3ff != MEM_SIZE:
            raise RefError("ram START without MEM_SIZE at %#x" % p)
        self.mem_size_offset = p
        total = v & ~0x3ff
        p += 8
        self.by_idstr = {}
        while total > 0:
            il = self.u8(p)
            idstr = self.need(p + 1, il)
            used = self.be64(p + 1 + il)
            if used > total or used % self.page_size:
                raise RefError("bad used_length %#x for %r" % (used, idstr))
            blk = Block(idstr, used, self.page_size, p)
            self.blocks.append(blk)
            self.by_idstr[idstr] = blk
            total -= used
            p += 1 + il + 8
        self.block_list_end = p
        self.first_record = p
        self._last_block = None
        p = self._records(p)
        while True:                                    # COMMAND, PART ... END
            t = self.u8(p)
            if t == 0x08:
                self.sections["commands"].append(p)
                p += 5 + self.be16(p + 3)
                continue
            if t not in (0x02, 0x03) or self.be32(p + 1) != self.ram_section_id:
                raise RefError("section type %#x at %#x before the ram END" % (t, p))
            if t == 0x02:
                self.sections["parts"].append(p)
            else:
                self.sections["end"] = p
            p = self._records(p + 5)
            if t == 0x03:
                break
        self.ram_end = p
        self._find_vmdesc()

    def _records(self, p):
        mask = self.page_size - 1
        m, size = self.m, self.file_size
        unpack = struct.unpack_from
        while True:
            if p + 8 > size:
                raise RefError("truncated record at %#x" % p)
            (v,) = unpack(">Q", m, p)
            at = p
            flags, addr = v & mask, v & ~mask
            p += 8
            kind = flags & ~CONTINUE
            if kind == EOS:
                break
            if kind == FLUSH:
                continue
            if kind not in (ZERO, PAGE, XBZRLE):
                raise RefError("record at %#x has flags %#x" % (at, flags))
            idstr_off = None
            if flags & CONTINUE:
                blk = self._last_block
                if blk is None:
                    raise RefError("CONTINUE with no block at %#x" % at)
            else:
                idstr_off = p
                il = m[p]
                blk = self.by_idstr.get(bytes(m[p + 1:p + 1 + il]))
                p += 1 + il
                if blk is None:
                    raise RefError("unknown block at %#x" % at)
            self._last_block = blk
            if addr >= blk.used_length:
                raise RefError("offset %#x past its block at %#x" % (addr, at))
            page = addr // self.page_size
            if page in blk.sent:
                self.stats["resent"] += 1
            blk.sent.add(page)
            for keep in (self.records[kind],
                         self.named[kind] if idstr_off is not None else None):
                if keep is not None and len(keep) < self.KEEP_RECORDS:
                    keep.append(Record(at, flags, blk, page, idstr_off, p))
            if kind == ZERO:
                if m[p] != 0:
                    raise RefError("ZERO record at %#x with fill %#x" % (at, m[p]))
                blk.last[page] = ("Z",)
                p += 1
                self.stats["zero_records"] += 1
            elif kind == PAGE:
                if p + self.page_size > size:
                    raise RefError("truncated PAGE record at %#x" % at)
                blk.last[page] = ("P", p)
                blk.had_data[page] = p
                blk.ever_data.add(page)
                p += self.page_size
                self.stats["page_records"] += 1
            else:
                enc, ln = m[p], struct.unpack_from(">H", m, p + 1)[0]
                if enc != 1 or ln > self.page_size:
                    raise RefError("XBZRLE record at %#x: encoding %d length %d"
                                   % (at, enc, ln))
                cur = bytearray(self.page_bytes(blk, page))
                xbzrle_decode(bytes(m[p + 3:p + 3 + ln]), cur)
                blk.last[page] = ("X", bytes(cur))
                blk.ever_data.add(page)
                p += 3 + ln
                self.stats["xbzrle_records"] += 1
        if p < size and m[p] == 0x7e:
            if self.be32(p + 1) != self.ram_section_id:
                raise RefError("footer with a wrong id at %#x" % p)
            p += 5
        return p

    def _find_vmdesc(self):
        self.vmdesc = None
        n = min(self.file_size - self.ram_end, 64 << 20)
        base = self.file_size - n
        tail = self.m[base:]
        i = len(tail)
        while True:
            i = tail.rfind(b"\x06", 0, i)
            if i <= 0:
                break
            p = base + i
            if p + 5 < self.file_size and tail[i - 1] == 0 and \
                    struct.unpack_from(">I", tail, i + 1)[0] == self.file_size - p - 5 and \
                    tail[i + 5:i + 6] == b"{" and tail[-1:] == b"}":
                self.vmdesc = p
                self.eof = p - 1
                return
        raise RefError("no VM description at the end of the file")

    # -- per block ------------------------------------------------------------------------
    def block(self, idstr):
        if isinstance(idstr, str):
            idstr = idstr.encode()
        return self.by_idstr[idstr]

    def page_bytes(self, blk, page):
        e = blk.last.get(page)
        if e is None or e[0] == "Z":
            return bytes(blk.page_size)
        if e[0] == "P":
            return self.m[e[1]:e[1] + blk.page_size]
        return e[1]

    def is_data(self, blk, page):
        e = blk.last.get(page)
        return e is not None and e[0] != "Z"

    bit = is_data

    def data_page_list(self, blk):
        return sorted(p for p, e in blk.last.items() if e[0] != "Z")

    def runs(self, blk):
        """[(first_page, end_page)] runs of data pages."""
        if blk._runs is None:
            out = []
            for p in self.data_page_list(blk):
                if out and out[-1][1] == p:
                    out[-1] = (out[-1][0], p + 1)
                else:
                    out.append((p, p + 1))
            blk._runs = out
        return blk._runs

    def byte_runs(self, blk):
        ps = blk.page_size
        return [(a * ps, b * ps) for a, b in self.runs(blk)]

    def data_pages(self, blk):
        return sum(1 for e in blk.last.values() if e[0] != "Z")

    def read(self, blk, off, length):
        """Expected bytes of the block file [off, off+length) (clipped to its size)."""
        end = min(off + length, blk.used_length)
        if off >= end:
            return b""
        ps = blk.page_size
        out = bytearray(end - off)
        for page in range(off // ps, (end + ps - 1) // ps):
            e = blk.last.get(page)
            if e is None or e[0] == "Z":
                continue
            s, t = max(page * ps, off), min(page * ps + ps, end)
            data = self.page_bytes(blk, page)
            out[s - off:t - off] = data[s - page * ps:t - page * ps]
        return bytes(out)

    def zero_after_data(self, blk):
        """[(page, data offset of its last PAGE record or None)]: pages whose last record
        is ZERO after an earlier PAGE or XBZRLE record (live saves: the guest zeroed a
        page that was already sent)."""
        return sorted((p, blk.had_data.get(p)) for p in blk.ever_data
                      if blk.last[p][0] == "Z")

    def all_stats(self):
        s = dict(self.stats)
        s["zero_after_data"] = sum(len(self.zero_after_data(b)) for b in self.blocks)
        return s

    def describe(self, with_runs=False):
        d = {"image": self.path, "container": self.container,
             "stream_offset": self.stream_offset, "file_size": self.file_size,
             "machine_type": self.machine_type, "capabilities": self.capabilities,
             "libvirt": ({k: (v.decode() if isinstance(v, bytes) else v)
                          for k, v in self.libvirt.items()} if self.libvirt else None),
             "stats": self.all_stats(), "sections": self.sections,
             "ram_end": self.ram_end, "vmdesc": self.vmdesc, "blocks": []}
        for b in self.blocks:
            e = {"idstr": b.name, "size": b.used_length, "page_size": b.page_size,
                 "pages": b.pages, "data_pages": self.data_pages(b),
                 "zero_after_data": len(self.zero_after_data(b))}
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
    a = ap.parse_args(argv)
    try:
        with Image(a.image, a.offset) as img:
            print(json.dumps(img.describe(a.runs), indent=1))
    except RefError as e:
        print("legacyref: %s: %s" % (a.image, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
