/* mr-packfmt.c: header and index of a packed image (docs/packed-format.md §2), encoded and
 * decoded little-endian field by field, with every count checked against the bytes that
 * hold it before anything is allocated. */
#include "mr-packfmt.h"
#include "mramfs.h"

#include <string.h>
#include <zstd.h>

void mr_pack_index_init(MrPackIndex *idx)
{
    idx->segments = g_array_new(FALSE, TRUE, sizeof(MrPackSegment));
    idx->chunks = g_array_new(FALSE, TRUE, sizeof(MrPackChunk));
    idx->frames = g_array_new(FALSE, TRUE, sizeof(MrPackFrame));
}

void mr_pack_index_clear(MrPackIndex *idx)
{
    g_clear_pointer(&idx->segments, g_array_unref);
    g_clear_pointer(&idx->chunks, g_array_unref);
    g_clear_pointer(&idx->frames, g_array_unref);
}

gboolean mr_pack_has_magic(const guint8 *head, gsize len)
{
    return len >= MR_PACK_MAGIC_LEN && memcmp(head, MR_PACK_MAGIC, MR_PACK_MAGIC_LEN) == 0;
}

guint64 mr_pack_chunk_units(const MrPackSegment *seg, guint32 chunk_size)
{
    return seg->kind == MR_PACK_PAGES ? chunk_size / seg->unit : chunk_size;
}

void mr_pack_sha256(const guint8 *data, gsize len, guint8 out[32])
{
    g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
    /* g_checksum_update takes a gssize: feed large buffers in pieces. */
    while (len > 0) {
        gsize n = MIN(len, (gsize)1 << 30);
        g_checksum_update(sum, data, (gssize)n);
        data += n;
        len -= n;
    }
    gsize out_len = 32;
    g_checksum_get_digest(sum, out, &out_len);
}

/* ---- little-endian fields ---- */

static void put32(guint8 *p, guint32 v)
{
    v = GUINT32_TO_LE(v);
    memcpy(p, &v, 4);
}

static void put64(guint8 *p, guint64 v)
{
    v = GUINT64_TO_LE(v);
    memcpy(p, &v, 8);
}

static guint32 get32(const guint8 *p)
{
    guint32 v;
    memcpy(&v, p, 4);
    return GUINT32_FROM_LE(v);
}

static guint64 get64(const guint8 *p)
{
    guint64 v;
    memcpy(&v, p, 8);
    return GUINT64_FROM_LE(v);
}

/* ---- header ---- */

void mr_pack_header_encode(const MrPackHeader *h, guint8 out[MR_PACK_HEADER_SIZE])
{
    memset(out, 0, MR_PACK_HEADER_SIZE);
    memcpy(out, MR_PACK_MAGIC, MR_PACK_MAGIC_LEN);
    put32(out + 8, h->version);
    put32(out + 12, h->header_size);
    put64(out + 16, h->incompat_features);
    put64(out + 24, h->compat_features);
    put64(out + 32, h->image_size);
    put64(out + 40, h->index_offset);
    put64(out + 48, h->index_size);
    put32(out + 56, h->chunk_size);
    put32(out + 60, h->frame_size);
    put32(out + 64, (guint32)h->level);
    memcpy(out + 72, h->index_sha256, 32);
    guint8 sum[32];
    mr_pack_sha256(out, 112, sum);
    memcpy(out + 112, sum, 16);
}

static gboolean fail(GError **error, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static gboolean fail(GError **error, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, MR_ERROR, code, "packed image: %s", msg);
    return FALSE;
}

gboolean mr_pack_header_decode(const guint8 *buf, gsize len, guint64 file_size, MrPackHeader *h,
                               GError **error)
{
    if (len < MR_PACK_HEADER_SIZE || file_size < MR_PACK_HEADER_SIZE)
        return fail(error, MR_ERROR_TRUNCATED,
                    "truncated: the header needs %d bytes, file has %" G_GUINT64_FORMAT,
                    MR_PACK_HEADER_SIZE, MIN(file_size, (guint64)len));
    if (!mr_pack_has_magic(buf, len))
        return fail(error, MR_ERROR_UNKNOWN_FORMAT, "no MRAMPACK magic");
    guint8 sum[32];
    mr_pack_sha256(buf, 112, sum);
    if (memcmp(sum, buf + 112, 16) != 0)
        return fail(error, MR_ERROR_CORRUPT, "header checksum mismatch");
    *h = (MrPackHeader){
        .version = get32(buf + 8),
        .header_size = get32(buf + 12),
        .incompat_features = get64(buf + 16),
        .compat_features = get64(buf + 24),
        .image_size = get64(buf + 32),
        .index_offset = get64(buf + 40),
        .index_size = get64(buf + 48),
        .chunk_size = get32(buf + 56),
        .frame_size = get32(buf + 60),
        .level = (gint32)get32(buf + 64),
    };
    memcpy(h->index_sha256, buf + 72, 32);
    if (h->version != MR_PACK_VERSION)
        return fail(error, MR_ERROR_UNSUPPORTED,
                    "packed format version %u is not supported (this mramfs reads %d)", h->version,
                    MR_PACK_VERSION);
    if (h->header_size != MR_PACK_HEADER_SIZE)
        return fail(error, MR_ERROR_CORRUPT, "header size %u (expected %d)", h->header_size,
                    MR_PACK_HEADER_SIZE);
    if (h->incompat_features & ~(guint64)MR_PACK_INCOMPAT_KNOWN)
        return fail(error, MR_ERROR_UNSUPPORTED,
                    "packed image needs features 0x%" G_GINT64_MODIFIER
                    "x this mramfs does not know",
                    h->incompat_features & ~(guint64)MR_PACK_INCOMPAT_KNOWN);
    if (h->chunk_size < MR_PACK_MIN_CHUNK || h->chunk_size > MR_PACK_MAX_CHUNK ||
        (h->chunk_size & (h->chunk_size - 1)) != 0)
        return fail(error, MR_ERROR_CORRUPT,
                    "chunk size %u is not a power of two of 1 MiB to 1 GiB", h->chunk_size);
    if (h->image_size > G_MAXINT64)
        return fail(error, MR_ERROR_CORRUPT, "image size 0x%" G_GINT64_MODIFIER "x", h->image_size);
    guint64 end = G_MAXUINT64;
    if (h->index_offset < MR_PACK_HEADER_SIZE || h->index_size > MR_PACK_MAX_INDEX ||
        !g_uint64_checked_add(&end, h->index_offset, h->index_size) || end != file_size)
        return fail(error, file_size < end ? MR_ERROR_TRUNCATED : MR_ERROR_CORRUPT,
                    "%sthe index [0x%" G_GINT64_MODIFIER "x, +0x%" G_GINT64_MODIFIER
                    "x) does not end at the end of the file (0x%" G_GINT64_MODIFIER "x)",
                    file_size < end ? "truncated: " : "", h->index_offset, h->index_size,
                    file_size);
    return TRUE;
}

/* ---- index ---- */

GByteArray *mr_pack_index_encode(const MrPackIndex *idx)
{
    guint ns = idx->segments->len, nc = idx->chunks->len, nf = idx->frames->len;
    gsize size = MR_PACK_INDEX_HDR_SIZE + (gsize)ns * MR_PACK_SEGMENT_SIZE +
                 (gsize)nc * MR_PACK_CHUNK_SIZE + (gsize)nf * MR_PACK_FRAME_SIZE;
    GByteArray *out = g_byte_array_sized_new((guint)size);
    g_byte_array_set_size(out, (guint)size);
    guint8 *p = out->data;
    memset(p, 0, size);
    put32(p, ns);
    put64(p + 8, nc);
    put64(p + 16, nf);
    p += MR_PACK_INDEX_HDR_SIZE;
    for (guint i = 0; i < ns; i++, p += MR_PACK_SEGMENT_SIZE) {
        const MrPackSegment *s = &g_array_index(idx->segments, MrPackSegment, i);
        put64(p, s->offset);
        put64(p + 8, s->length);
        put32(p + 16, s->kind);
        put32(p + 20, s->unit);
        put64(p + 24, s->bitmap_offset);
        put64(p + 32, s->first_chunk);
        put64(p + 40, s->n_chunks);
    }
    for (guint i = 0; i < nc; i++, p += MR_PACK_CHUNK_SIZE) {
        const MrPackChunk *c = &g_array_index(idx->chunks, MrPackChunk, i);
        put64(p, c->first_unit);
        put64(p + 8, c->n_units);
        put64(p + 16, c->first_frame);
        put32(p + 24, c->n_frames);
        put64(p + 32, c->csize);
        put64(p + 40, c->usize);
    }
    for (guint i = 0; i < nf; i++, p += MR_PACK_FRAME_SIZE) {
        const MrPackFrame *f = &g_array_index(idx->frames, MrPackFrame, i);
        put64(p, f->offset);
        put32(p + 8, f->csize);
        put32(p + 12, f->usize);
        put64(p + 16, f->first_unit);
        put32(p + 24, f->n_units);
        put32(p + 28, f->checksum);
    }
    return out;
}

static gboolean check_segment(const MrPackHeader *h, const MrPackSegment *s, guint i,
                              guint64 expect_offset, guint64 expect_chunk, GError **error)
{
    if (s->offset != expect_offset || s->length == 0 || s->length > h->image_size - s->offset)
        return fail(error, MR_ERROR_CORRUPT,
                    "segment %u [0x%" G_GINT64_MODIFIER "x, +0x%" G_GINT64_MODIFIER
                    "x) does not follow the previous one inside the image",
                    i, s->offset, s->length);
    if (s->kind == MR_PACK_RAW) {
        if (s->unit != 1 || s->bitmap_offset != 0)
            return fail(error, MR_ERROR_CORRUPT, "raw segment %u has unit %u", i, s->unit);
    } else if (s->kind == MR_PACK_PAGES) {
        if (s->unit < 1024 || s->unit > 65536 || (s->unit & (s->unit - 1)) != 0 ||
            s->length % s->unit != 0)
            return fail(error, MR_ERROR_CORRUPT, "page segment %u has page size %u", i, s->unit);
    } else
        return fail(error, MR_ERROR_UNSUPPORTED, "segment %u has unknown kind %u", i, s->kind);
    guint64 n_chunks = (s->length + h->chunk_size - 1) / h->chunk_size;
    if (s->first_chunk != expect_chunk || s->n_chunks != n_chunks)
        return fail(error, MR_ERROR_CORRUPT, "segment %u: chunk table entries out of order", i);
    return TRUE;
}

/* A page segment's bitmap must lie inside raw segments (which tile the image, so: between
 * segment starts, in raw ones only). */
static gboolean check_bitmap(const GArray *segs, guint i, GError **error)
{
    const MrPackSegment *s = &g_array_index(segs, MrPackSegment, i);
    guint64 start = s->bitmap_offset, len = (s->length / s->unit + 63) / 64 * 8, end;
    if (!g_uint64_checked_add(&end, start, len))
        return fail(error, MR_ERROR_CORRUPT, "segment %u: bitmap offset overflows", i);
    for (guint j = 0; j < segs->len; j++) {
        const MrPackSegment *t = &g_array_index(segs, MrPackSegment, j);
        if (t->offset < end && start < t->offset + t->length && t->kind != MR_PACK_RAW)
            return fail(error, MR_ERROR_CORRUPT,
                        "segment %u: bitmap at 0x%" G_GINT64_MODIFIER
                        "x is not inside raw segments",
                        i, start);
    }
    const MrPackSegment *last = &g_array_index(segs, MrPackSegment, segs->len - 1);
    if (end > last->offset + last->length)
        return fail(error, MR_ERROR_CORRUPT, "segment %u: bitmap lies outside the image", i);
    return TRUE;
}

static gboolean check_frames(const MrPackHeader *h, const MrPackSegment *s, const MrPackChunk *c,
                             guint64 ci, const MrPackFrame *frames, guint64 *next_offset,
                             GError **error)
{
    guint64 unit = c->first_unit, csize = 0, usize = 0;
    for (guint32 k = 0; k < c->n_frames; k++) {
        const MrPackFrame *f = &frames[c->first_frame + k];
        guint64 fi = c->first_frame + k, end;
        if (f->first_unit != unit || f->n_units == 0 ||
            f->n_units > c->n_units - (unit - c->first_unit))
            return fail(error, MR_ERROR_CORRUPT,
                        "frame %" G_GUINT64_FORMAT
                        ": its pages do not follow the previous frame in chunk %" G_GUINT64_FORMAT,
                        fi, ci);
        if (f->usize == 0 || f->usize > MR_PACK_MAX_FRAME ||
            (s->kind == MR_PACK_RAW && f->usize != f->n_units) ||
            (s->kind == MR_PACK_PAGES &&
             (f->usize % s->unit != 0 || f->usize / s->unit > f->n_units)))
            return fail(error, MR_ERROR_CORRUPT, "frame %" G_GUINT64_FORMAT " has size %u", fi,
                        f->usize);
        if (f->csize == 0 ? f->checksum != 0 : f->csize > ZSTD_compressBound(f->usize))
            return fail(error, MR_ERROR_CORRUPT,
                        "frame %" G_GUINT64_FORMAT " has compressed size %u for %u bytes", fi,
                        f->csize, f->usize);
        if (f->csize > 0) {
            if (f->offset < *next_offset || !g_uint64_checked_add(&end, f->offset, f->csize) ||
                end > h->index_offset)
                return fail(error, MR_ERROR_CORRUPT,
                            "frame %" G_GUINT64_FORMAT " at 0x%" G_GINT64_MODIFIER
                            "x overlaps another or lies outside the frame area",
                            fi, f->offset);
            *next_offset = end;
        }
        unit += f->n_units;
        csize += f->csize;
        usize += f->usize;
    }
    if (unit != c->first_unit + c->n_units && c->n_frames > 0)
        return fail(error, MR_ERROR_CORRUPT,
                    "chunk %" G_GUINT64_FORMAT ": frames leave units uncovered", ci);
    if ((c->n_frames == 0 && s->kind == MR_PACK_RAW) || csize != c->csize || usize != c->usize)
        return fail(error, MR_ERROR_CORRUPT,
                    "chunk %" G_GUINT64_FORMAT ": sizes disagree with its frames", ci);
    return TRUE;
}

gboolean mr_pack_index_decode(const MrPackHeader *h, const guint8 *buf, gsize len, MrPackIndex *idx,
                              GError **error)
{
    guint8 sum[32];
    mr_pack_sha256(buf, len, sum);
    if (memcmp(sum, h->index_sha256, 32) != 0)
        return fail(error, MR_ERROR_CORRUPT, "index checksum mismatch");
    if (len < MR_PACK_INDEX_HDR_SIZE)
        return fail(error, MR_ERROR_CORRUPT, "index of %" G_GSIZE_FORMAT " bytes", len);
    guint64 ns = get32(buf), nc = get64(buf + 8), nf = get64(buf + 16);
    /* Each count is bounded by the index size before the products are formed. */
    if (ns > MR_PACK_MAX_SEGMENTS || nc > len / MR_PACK_CHUNK_SIZE ||
        nf > len / MR_PACK_FRAME_SIZE ||
        MR_PACK_INDEX_HDR_SIZE + ns * MR_PACK_SEGMENT_SIZE + nc * MR_PACK_CHUNK_SIZE +
                nf * MR_PACK_FRAME_SIZE !=
            len)
        return fail(error, MR_ERROR_CORRUPT,
                    "index counts (%" G_GUINT64_FORMAT " segments, %" G_GUINT64_FORMAT
                    " chunks, %" G_GUINT64_FORMAT " frames) do not match its size %" G_GSIZE_FORMAT,
                    ns, nc, nf, len);
    if ((ns == 0) != (h->image_size == 0))
        return fail(error, MR_ERROR_CORRUPT, "no segment covers the image");
    mr_pack_index_init(idx);
    g_array_set_size(idx->segments, (guint)ns);
    g_array_set_size(idx->chunks, (guint)nc);
    g_array_set_size(idx->frames, (guint)nf);
    const guint8 *p = buf + MR_PACK_INDEX_HDR_SIZE;
    for (guint i = 0; i < ns; i++, p += MR_PACK_SEGMENT_SIZE)
        g_array_index(idx->segments, MrPackSegment, i) = (MrPackSegment){
            .offset = get64(p),
            .length = get64(p + 8),
            .kind = get32(p + 16),
            .unit = get32(p + 20),
            .bitmap_offset = get64(p + 24),
            .first_chunk = get64(p + 32),
            .n_chunks = get64(p + 40),
        };
    for (guint i = 0; i < nc; i++, p += MR_PACK_CHUNK_SIZE)
        g_array_index(idx->chunks, MrPackChunk, i) = (MrPackChunk){
            .first_unit = get64(p),
            .n_units = get64(p + 8),
            .first_frame = get64(p + 16),
            .n_frames = get32(p + 24),
            .csize = get64(p + 32),
            .usize = get64(p + 40),
        };
    for (guint i = 0; i < nf; i++, p += MR_PACK_FRAME_SIZE)
        g_array_index(idx->frames, MrPackFrame, i) = (MrPackFrame){
            .offset = get64(p),
            .csize = get32(p + 8),
            .usize = get32(p + 12),
            .first_unit = get64(p + 16),
            .n_units = get32(p + 24),
            .checksum = get32(p + 28),
        };

    guint64 image_pos = 0, chunk = 0, frame = 0, frame_offset = MR_PACK_HEADER_SIZE;
    const MrPackFrame *frames = (const MrPackFrame *)(void *)idx->frames->data;
    for (guint i = 0; i < ns; i++) {
        const MrPackSegment *s = &g_array_index(idx->segments, MrPackSegment, i);
        if (!check_segment(h, s, i, image_pos, chunk, error))
            goto bad;
        if (s->n_chunks > nc - chunk) {
            fail(error, MR_ERROR_CORRUPT, "segment %u: more chunks than the index holds", i);
            goto bad;
        }
        guint64 units = s->kind == MR_PACK_PAGES ? s->length / s->unit : s->length;
        guint64 cu = mr_pack_chunk_units(s, h->chunk_size);
        for (guint64 k = 0; k < s->n_chunks; k++, chunk++) {
            const MrPackChunk *c = &g_array_index(idx->chunks, MrPackChunk, chunk);
            if (c->first_unit != k * cu || c->n_units != MIN(cu, units - k * cu) ||
                c->first_frame != frame || c->n_frames > nf - frame) {
                fail(error, MR_ERROR_CORRUPT,
                     "chunk %" G_GUINT64_FORMAT " does not follow the previous one", chunk);
                goto bad;
            }
            if (!check_frames(h, s, c, chunk, frames, &frame_offset, error))
                goto bad;
            frame += c->n_frames;
        }
        image_pos += s->length;
    }
    if (image_pos != h->image_size || chunk != nc || frame != nf) {
        fail(error, MR_ERROR_CORRUPT, "the segments do not cover the image exactly");
        goto bad;
    }
    for (guint i = 0; i < ns; i++)
        if (g_array_index(idx->segments, MrPackSegment, i).kind == MR_PACK_PAGES &&
            !check_bitmap(idx->segments, i, error))
            goto bad;
    return TRUE;
bad:
    mr_pack_index_clear(idx);
    return FALSE;
}
