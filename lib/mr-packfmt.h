/* mr-packfmt.h: the on-disk structures of a packed image (docs/packed-format.md) and their
 * bounded encoding and decoding. Nothing here reads a file or decompresses: the writer
 * (mr-pack-writer.c) fills these structures, the reader (mr-packed.c) gets them from
 * mr_pack_header_decode() and mr_pack_index_decode(), which check every rule of the spec
 * that does not need the bitmaps before anything is allocated by count. */
#pragma once

#include <glib.h>

#define MR_PACK_MAGIC          "MRAMPACK"
#define MR_PACK_MAGIC_LEN      8
#define MR_PACK_VERSION        1
#define MR_PACK_HEADER_SIZE    128
#define MR_PACK_INDEX_HDR_SIZE 32
#define MR_PACK_SEGMENT_SIZE   48
#define MR_PACK_CHUNK_SIZE     48
#define MR_PACK_FRAME_SIZE     32
#define MR_PACK_DEFAULT_CHUNK  (64u << 20)
#define MR_PACK_DEFAULT_FRAME  (256u << 10)
#define MR_PACK_MIN_FRAME      (4u << 10)
#define MR_PACK_MAX_FRAME      (16u << 20) /* also the largest usize a reader accepts */
#define MR_PACK_MIN_CHUNK      (1u << 20)
#define MR_PACK_MAX_CHUNK      (1u << 30)
#define MR_PACK_MAX_SEGMENTS   (2 * 4096 + 1)
#define MR_PACK_MAX_INDEX      (G_GUINT64_CONSTANT(1) << 30)
/* All bitmaps of page segments together: 8 TiB of guest RAM in 4 KiB pages. */
#define MR_PACK_MAX_BITMAPS   (G_GUINT64_CONSTANT(256) << 20)
#define MR_PACK_DEFAULT_LEVEL 3
#define MR_PACK_DEFAULT_CACHE (G_GUINT64_CONSTANT(64) << 20)
/* Feature flags: none defined in version 1. */
#define MR_PACK_INCOMPAT_KNOWN 0
#define MR_PACK_COMPAT_KNOWN   0

typedef enum {
    MR_PACK_RAW = 0,
    MR_PACK_PAGES = 1,
} MrPackKind;

typedef struct {
    guint32 version;
    guint32 header_size;
    guint64 incompat_features, compat_features;
    guint64 image_size;
    guint64 index_offset, index_size;
    guint32 chunk_size, frame_size;
    gint32 level;
    guint8 index_sha256[32];
} MrPackHeader;

typedef struct {
    guint64 offset, length; /* image offsets */
    guint32 kind, unit;
    guint64 bitmap_offset;
    guint64 first_chunk, n_chunks;
} MrPackSegment;

typedef struct {
    guint64 first_unit, n_units;
    guint64 first_frame;
    guint32 n_frames;
    guint64 csize, usize;
} MrPackChunk;

typedef struct {
    guint64 offset; /* packed-file offset */
    guint32 csize, usize;
    guint64 first_unit;
    guint32 n_units, checksum;
} MrPackFrame;

typedef struct {
    GArray *segments; /* of MrPackSegment */
    GArray *chunks;   /* of MrPackChunk */
    GArray *frames;   /* of MrPackFrame */
} MrPackIndex;

void mr_pack_index_init(MrPackIndex *idx);
void mr_pack_index_clear(MrPackIndex *idx);

/* TRUE if @head (the first @len bytes of a file) starts with the packed magic. */
gboolean mr_pack_has_magic(const guint8 *head, gsize len);

/* Units of a segment's chunk: pages for a page segment, bytes for a raw one. */
guint64 mr_pack_chunk_units(const MrPackSegment *seg, guint32 chunk_size);

void mr_pack_header_encode(const MrPackHeader *h, guint8 out[MR_PACK_HEADER_SIZE]);
/* Parse and check the header of a packed file of @file_size bytes (docs §2.1). */
gboolean mr_pack_header_decode(const guint8 *buf, gsize len, guint64 file_size, MrPackHeader *h,
                               GError **error);

/* The index bytes of @idx. Returns: a new GByteArray. */
GByteArray *mr_pack_index_encode(const MrPackIndex *idx);
/* Parse and check the index (docs §2.2); the SHA-256 is checked here too. */
gboolean mr_pack_index_decode(const MrPackHeader *h, const guint8 *buf, gsize len, MrPackIndex *idx,
                              GError **error);
/* SHA-256 of @len bytes into @out. */
void mr_pack_sha256(const guint8 *data, gsize len, guint8 out[32]);
