#!/usr/bin/env python3
"""Locate the mapped-ram blocks of a QEMU save image, independently of mramfs.

The benchmarks need pc.ram's (pages_offset, used_length) to point minfs and dd
at the same bytes mramfs serves, and the bitmap sizes for the memory target.
Layout: shared/reference/qemu-save-formats.md (mapped-ram header) and
qemu-image-recipes.md §5: after START "ram" (version 4) comes be64
total|RAM_SAVE_FLAG_MEM_SIZE, then per block: u8 len, idstr, be64 used_length,
a 28-byte MappedRamHeader (be32 version=1, be64 page_size, be64 bitmap_offset,
be64 pages_offset); the next block header starts at pages_offset+used_length.

Usage: mrloc.py IMAGE  -> JSON {"blocks": [...], "bitmap_bytes": N}
"""
import json
import struct
import sys

RAM_SECTION = b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04"  # idstr "ram", instance 0, version 4


def blocks(path):
    with open(path, "rb") as f:
        head = f.read(4 << 20)  # the header sits in the first few KiB (libvirt XML included)
        pos = head.find(RAM_SECTION)
        if pos < 0:
            raise ValueError(f"{path}: no START 'ram' section in the first 4 MiB")
        pos += len(RAM_SECTION)
        (total,) = struct.unpack_from(">Q", head, pos)
        if not total & 0x4:
            raise ValueError(f"{path}: RAM section without MEM_SIZE flag")
        total &= ~0xFFF
        pos += 8
        out, seen = [], 0
        while seen < total:
            f.seek(pos)
            hdr = f.read(1 + 255 + 8 + 28)
            n = hdr[0]
            idstr = hdr[1:1 + n].decode("latin-1")
            used, ver, psize, bmo, pgo = struct.unpack_from(">QIQQQ", hdr, 1 + n)
            if ver != 1 or bmo != pos + 1 + n + 8 + 28:
                raise ValueError(f"{path}: block {idstr!r} at {pos}: not a mapped-ram header")
            pages = used // psize
            out.append({"idstr": idstr, "used_length": used, "page_size": psize,
                        "pages": pages, "bitmap_offset": bmo, "pages_offset": pgo,
                        "bitmap_bytes": (pages + 63) // 64 * 8})
            seen += used
            pos = pgo + used
        return out


def main():
    bl = blocks(sys.argv[1])
    json.dump({"blocks": bl, "bitmap_bytes": sum(b["bitmap_bytes"] for b in bl)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
