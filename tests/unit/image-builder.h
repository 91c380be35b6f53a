/* image-builder.h: synthetic saved-VM images in memory, for the unit tests.
 *
 * An IbSpec describes one image field by field (libvirt header, QEVM header and
 * configuration, the ram START block list with MappedRamHeaders, bitmaps and page slots,
 * PART/COMMAND/END, fake device state, EOF, VMDESC); ib_build() lays it out the way QEMU
 * does (qemu-save-formats.md §2-§5, §9b) and records where every field landed, so a test
 * can either change a spec field before building or patch bytes afterwards. Pages are
 * aligned to spec->align (QEMU: 1 MiB; tests default to 4096 so images stay small, the
 * reader only requires page alignment). Nothing here checks anything: any value can be
 * written, which is the point.
 *
 * Legacy (non-mapped-ram) streams: ib_spec_init_legacy(), blocks as usual, then a script of
 * records (ib_rec_*) that ib_build() writes after the block list; it also replays them
 * (last record wins) into each block's expected content, so ib_expected_byte() and
 * assert_block_reads() work for both kinds of image. */
#pragma once

#include <glib.h>

#include "mr-private.h"

#define IB_STALE_BYTE 0xaa /* what the slot of a stale (clear) page holds */

typedef struct {
    guint8 idstr[256];
    gsize idstr_len;
    guint64 used_length;
    guint64 page_size;   /* MappedRamHeader.page_size (be64) */
    guint32 hdr_version; /* MappedRamHeader.version: 1 */
    guint64 n_pages;     /* used_length / page_size, rounded down */
    guint8 *data;        /* n_pages flags: the page's bitmap bit is set */
    guint8 *stale;       /* n_pages flags: a clear page whose slot holds IB_STALE_BYTE */
    guint8 *content;     /* legacy: n_pages * page size, each page's final bytes (ib_build) */
    /* Filled in by ib_build(): absolute offsets in the image. */
    guint64 entry_offset; /* u8 idlen */
    /* (legacy streams: only entry_offset, used_length_field and end_offset are set) */
    guint64 used_length_field;   /* be64 used_length */
    guint64 hdr_offset;          /* MappedRamHeader.version; page_size at +4 */
    guint64 bitmap_offset_field; /* hdr_offset + 12 */
    guint64 pages_offset_field;  /* hdr_offset + 20 */
    guint64 bitmap_offset;       /* = hdr_offset + 28 */
    guint64 bitmap_size;         /* ceil(n_pages / 64) * 8 */
    guint64 pages_offset;        /* ROUND_UP(bitmap end, align) */
    guint64 end_offset;          /* pages_offset + used_length: the next entry */
} IbBlock;

/* ---- legacy (non-mapped-ram) streams, qemu-save-formats.md §4, §6 ----
 * With IbSpec.legacy the block list has no MappedRamHeaders and everything between it and
 * the device state is the script in IbSpec.records, emitted in order: page records, the EOS
 * that closes each ram section (with its footer), PART/END section headers, COMMANDs. */
typedef enum {
    IB_REC_PAGE,    /* be64 addr|PAGE, [u8 len + idstr], page bytes */
    IB_REC_ZERO,    /* be64 addr|ZERO, [u8 len + idstr], u8 fill */
    IB_REC_XBZRLE,  /* be64 addr|XBZRLE, [u8 len + idstr], u8 encoding, be16 len, delta */
    IB_REC_RAW,     /* one be64 as given (MULTIFD_FLUSH, COMPRESS_PAGE, odd flags) */
    IB_REC_EOS,     /* be64 EOS, then the ram section footer (IbSpec.footers) */
    IB_REC_PART,    /* 0x02, be32 ram section id */
    IB_REC_END,     /* 0x03, be32 ram section id */
    IB_REC_COMMAND, /* 0x08, be16 11 (SWITCHOVER_START), be16 0 */
} IbRecKind;

typedef struct {
    IbRecKind kind;
    guint8 idstr[256]; /* the block named after the header; ignored with CONTINUE */
    gsize idstr_len;
    gboolean cont;   /* RAM_SAVE_FLAG_CONTINUE: no idstr */
    guint64 addr;    /* offset inside the block (page * page size) */
    guint64 flags;   /* more flag bits OR'd into the header; RAW: the whole be64 */
    guint8 fill;     /* ZERO: 0 */
    guint8 encoding; /* XBZRLE: 1 (ENCODING_FLAG_XBZRLE) */
    gint32 xlen;     /* XBZRLE: be16 length written; -1 = len */
    guint8 *data;    /* PAGE: page-size bytes; XBZRLE: the delta */
    gsize len;
    /* Filled in by ib_build(): absolute offsets in the image. */
    guint64 offset;      /* the be64 header (or the section byte) */
    guint64 data_offset; /* after the header and idstr: page bytes, fill byte, encoding */
    guint64 end_offset;  /* the next record */
} IbRecord;

typedef struct {
    /* ---- libvirt header (§2) ---- */
    gboolean libvirt;
    char lv_magic[17];        /* "LibvirtQemudSave" */
    guint32 lv_version;       /* 2 */
    gboolean lv_data_len_set; /* else XML + NUL + cookie + NUL + padding */
    guint32 lv_data_len;
    guint32 lv_was_running;
    guint32 lv_format;             /* 6 = sparse */
    gboolean lv_cookie_offset_set; /* else XML length + 1, or 0 without a cookie */
    guint32 lv_cookie_offset;
    gboolean lv_big_endian; /* write the five u32 fields byte-swapped */
    const char *lv_xml;     /* written NUL-terminated */
    const char *lv_cookie;  /* NULL: no cookie */
    guint32 lv_padding;     /* zero bytes after the cookie */

    /* ---- bytes before the stream that are not a libvirt header (-o offset) ---- */
    guint64 prefix_len;
    guint8 prefix_byte; /* 0x5a */

    /* ---- QEMU stream header and configuration (§3.1) ---- */
    guint32 magic;   /* 0x5145564d */
    guint32 version; /* 3 */
    gboolean config;
    const char *machine_type;
    const char *const *caps;  /* NULL-terminated; NULL or empty: no capabilities subsection */
    guint32 target_page_bits; /* 0: no target-page-bits subsection */
    gboolean uuid;

    /* ---- sections before the ram START ---- */
    guint n_commands_before;      /* COMMAND 2 (PING) with a 4-byte body */
    gboolean full_before_ram;     /* a FULL "virtio-mem-early" section */
    const char *start_before_ram; /* idstr of a non-ram START section, or NULL */

    /* ---- ram START (§4, §5) ---- */
    guint32 ram_section_id; /* 1 */
    const char *ram_idstr;  /* "ram" */
    guint32 ram_instance;   /* 0 */
    guint32 ram_version;    /* 4 */
    gboolean mem_size_set;  /* else the sum of used_length */
    guint64 mem_size;
    guint64 align;     /* page area alignment: 4096 (QEMU: 1 MiB) */
    GPtrArray *blocks; /* of IbBlock* */

    /* ---- after the START ---- */
    gboolean footers;
    guint32 start_footer_id, part_footer_id, end_footer_id; /* 0: the section's id */
    guint n_parts;                                          /* 1 */
    gboolean command; /* COMMAND 11 (switchover-start) before END */
    gboolean end;
    gboolean device_state;      /* one FULL "timer" section, or device_bytes */
    const guint8 *device_bytes; /* device state written as is (FULL sections), or NULL */
    gsize device_len;
    gboolean eof;
    gboolean vmdesc;
    const char *vmdesc_json;
    gint64 vmdesc_len_delta; /* added to the be32 length written */

    /* ---- legacy streams ---- */
    gboolean legacy;    /* block list without MappedRamHeaders, then records */
    GPtrArray *records; /* of IbRecord* */

    /* ---- ib_build_file() only: page areas left as holes of a sparse file ---- */
    gboolean to_file;
    int file_fd;          /* where page areas and the bytes before them go */
    guint64 file_written; /* file offset of the first byte still in the GByteArray */

    /* ---- filled in by ib_build() ---- */
    guint64 stream_offset;    /* "QEVM" */
    guint64 body_offset;      /* first byte after the configuration */
    guint64 ram_start_offset; /* the 0x01 of the ram START */
    guint64 mem_size_offset;
    guint64 eos_offset;    /* EOS after the last block */
    guint64 part_offset;   /* first PART, or 0 */
    guint64 end_offset;    /* END, or 0 */
    guint64 device_offset; /* FULL "timer" (or device_bytes), or 0 */
    guint64 eof_offset;    /* EOF byte, or 0 */
    guint64 vmdesc_offset; /* the 0x06, or 0 */
    guint64 size;
    /* legacy: what the records add up to (last record wins) */
    guint64 leg_page_records, leg_zero_records, leg_xbzrle_records;
    guint64 leg_resent; /* records for a page an earlier record already sent */
} IbSpec;

/* Defaults: a bare stream (pc-i440fx-10.0, capability mapped-ram), ram section id 1,
 * one PART, a switchover COMMAND, END, device state, EOF and a VM description; no blocks. */
void ib_spec_init(IbSpec *s);
void ib_spec_clear(IbSpec *s);

/* Add a block: idstr, used_length and page_size; all pages start clear. */
IbBlock *ib_add_block(IbSpec *s, const char *idstr, guint64 used_length, guint64 page_size);
IbBlock *ib_add_block_bytes(IbSpec *s, const guint8 *idstr, gsize idstr_len, guint64 used_length,
                            guint64 page_size);
void ib_block_set_data(IbBlock *b, guint64 first, guint64 count);
void ib_block_set_stale(IbBlock *b, guint64 first, guint64 count);

/* The byte a data page holds at @off (never 0): block index, page and offset mixed. */
guint8 ib_page_byte(guint block_index, guint64 page, guint64 off);
/* The byte a reader must return at @offset of block @index of @s (0 for clear pages). */
guint8 ib_expected_byte(const IbSpec *s, guint index, guint64 offset);

/* ---- legacy streams ---- */
/* ib_spec_init, then: legacy, no capabilities, no scripted records yet. */
void ib_spec_init_legacy(IbSpec *s);
/* The target page size records use: 1 << target_page_bits, or 4096. */
guint32 ib_legacy_page_size(const IbSpec *s);
/* Script records. @block NULL = CONTINUE (same block as the previous record). */
IbRecord *ib_rec_page(IbSpec *s, const char *block, guint64 page, guint8 seed);
IbRecord *ib_rec_page_bytes(IbSpec *s, const char *block, guint64 page, const guint8 *bytes);
IbRecord *ib_rec_zero(IbSpec *s, const char *block, guint64 page);
IbRecord *ib_rec_xbzrle(IbSpec *s, const char *block, guint64 page, const guint8 *delta, gsize len);
IbRecord *ib_rec_raw(IbSpec *s, guint64 value);
IbRecord *ib_rec_eos(IbSpec *s);
IbRecord *ib_rec_part(IbSpec *s);
IbRecord *ib_rec_end(IbSpec *s);
IbRecord *ib_rec_command(IbSpec *s);
IbRecord *ib_record(const IbSpec *s, guint index);
/* The byte of a PAGE record made with @seed at @off of its page (never 0). */
guint8 ib_seed_byte(guint8 seed, guint64 off);
/* An independent XBZRLE decoder (QEMU xbzrle_decode_buffer) for the expected-content
 * model: FALSE if the delta does not decode. */
gboolean ib_xbzrle_apply(const guint8 *delta, gsize len, guint8 *page, gsize page_size);

GByteArray *ib_build(IbSpec *s);
GBytes *ib_build_bytes(IbSpec *s);
/* The same layout written to @fd (mapped-ram only), with each block's page area a hole
 * except its data and stale pages: blocks of many GiB cost only their bitmaps. */
void ib_build_file(IbSpec *s, int fd);
/* ib_build_file() into a temporary file, then mr_image_open_source over it, named
 * "test.img"; the file is unlinked before this returns (the image keeps it open). */
MrImage *ib_open_sparse(IbSpec *s, const MrOpenOptions *opts, GError **error);

/* Emitters, also used on their own (test-stream.c). */
void ib_emit_stream_header(GByteArray *out, const IbSpec *s); /* QEVM, version, config */
void ib_put_u8(GByteArray *out, guint8 v);
void ib_put_be16(GByteArray *out, guint16 v);
void ib_put_be32(GByteArray *out, guint32 v);
void ib_put_be64(GByteArray *out, guint64 v);
void ib_put_bytes(GByteArray *out, const void *bytes, gsize len);
void ib_put_name(GByteArray *out, const char *name); /* u8 length + bytes */

/* Overwrite bytes in place (corruption knobs after ib_build()). */
void ib_patch_u8(GByteArray *img, guint64 off, guint8 v);
void ib_patch_be32(GByteArray *img, guint64 off, guint32 v);
void ib_patch_be64(GByteArray *img, guint64 off, guint64 v);
void ib_patch_le32(GByteArray *img, guint64 off, guint32 v);

/* mr_image_open_source over @bytes (or its first @len bytes), named "test.img". */
MrImage *ib_open(GBytes *bytes, const MrOpenOptions *opts, GError **error);
MrImage *ib_open_prefix(GBytes *bytes, gsize len, const MrOpenOptions *opts, GError **error);
MrImage *ib_open_array(GByteArray *img, const MrOpenOptions *opts, GError **error);
