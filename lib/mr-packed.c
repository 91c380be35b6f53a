/* mr-packed.c: reading a packed image (docs/packed-format.md): open and check it, serve the
 * original image's bytes as a virtual MrSource through the frame cache (so every format
 * reader works unchanged on top), and unpack and verify whole files. */
#include "mr-private.h"
#include "mr-frame-cache.h"
#include "mr-packfmt.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

/* Read-ahead: decoded bytes queued ahead of a sequential reader. */
#define READAHEAD_BYTES (2u << 20)
#define MIN_READAHEAD   4u
/* Unpack leaves all-zero pieces of raw segments of this size as holes. */
#define UNPACK_HOLE_GRAIN 4096u

struct _MrPacked {
    MrSource *file;
    MrPackHeader hdr;
    MrPackIndex idx;
    const MrPackSegment *segs;
    const MrPackChunk *chunks;
    const MrPackFrame *frames;
    guint n_segs;
    guint64 n_frames;
    MrBitmap *bitmaps; /* per segment; empty for raw ones */
    MrFrameCache *cache;
    guint readahead;
    guint64 last_frame; /* atomic: the last frame a read touched */
};

/* ---- decoding one frame (one ZSTD_DCtx and compressed buffer per thread) ---- */

typedef struct {
    ZSTD_DCtx *dctx;
    guint8 *cbuf;
    gsize cap;
} DecodeCtx;

static void decode_ctx_free(gpointer p)
{
    DecodeCtx *ctx = p;
    ZSTD_freeDCtx(ctx->dctx);
    g_free(ctx->cbuf);
    g_free(ctx);
}

static GPrivate decode_ctx_key = G_PRIVATE_INIT(decode_ctx_free);

static DecodeCtx *thread_decode_ctx(gsize cap)
{
    DecodeCtx *ctx = g_private_get(&decode_ctx_key);
    if (ctx == NULL) {
        ctx = g_new0(DecodeCtx, 1);
        ctx->dctx = ZSTD_createDCtx();
        g_private_set(&decode_ctx_key, ctx);
    }
    if (ctx->cap < cap) {
        g_free(ctx->cbuf);
        ctx->cbuf = g_malloc(cap);
        ctx->cap = cap;
    }
    return ctx;
}

static gboolean frame_error(const MrPacked *pk, guint64 fi, GError **error, const char *why)
{
    g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                "packed frame %" G_GUINT64_FORMAT " at 0x%" G_GINT64_MODIFIER "x: %s", fi,
                pk->frames[fi].offset, why);
    return FALSE;
}

static gboolean decode_frame(MrPacked *pk, guint64 fi, guint8 *out, gsize len, GError **error)
{
    const MrPackFrame *f = &pk->frames[fi];
    g_assert(len == f->usize);
    if (f->csize == 0) {
        memset(out, 0, len);
        return TRUE;
    }
    DecodeCtx *ctx = thread_decode_ctx(f->csize);
    if (!mr_source_read(pk->file, f->offset, ctx->cbuf, f->csize, error)) {
        g_prefix_error(error, "packed frame %" G_GUINT64_FORMAT ": ", fi);
        return FALSE;
    }
    guint32 trailer = 0;
    if (f->csize >= 4) {
        memcpy(&trailer, ctx->cbuf + f->csize - 4, 4);
        trailer = GUINT32_FROM_LE(trailer);
    }
    if (f->csize < 4 || trailer != f->checksum)
        return frame_error(pk, fi, error, "checksum does not match the index");
    if (ZSTD_findFrameCompressedSize(ctx->cbuf, f->csize) != f->csize)
        return frame_error(pk, fi, error, "not one zstd frame of the indexed size");
    size_t r = ZSTD_decompressDCtx(ctx->dctx, out, len, ctx->cbuf, f->csize);
    if (ZSTD_isError(r)) {
        g_autofree char *why = g_strdup_printf("zstd: %s", ZSTD_getErrorName(r));
        return frame_error(pk, fi, error, why);
    }
    if (r != len)
        return frame_error(pk, fi, error, "decodes to fewer bytes than the index says");
    return TRUE;
}

static gboolean cache_decode(gpointer data, guint64 frame, guint8 *out, gsize len, GError **error)
{
    return decode_frame(data, frame, out, len, error);
}

/* ---- locating bytes ---- */

static guint find_segment(const MrPacked *pk, guint64 offset)
{
    guint lo = 0, hi = pk->n_segs; /* the last segment starting at or before offset */
    while (hi - lo > 1) {
        guint mid = lo + (hi - lo) / 2;
        if (pk->segs[mid].offset <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static guint64 find_frame(const MrPacked *pk, const MrPackChunk *c, guint64 unit)
{
    guint64 lo = c->first_frame, hi = c->first_frame + c->n_frames;
    while (hi - lo > 1) {
        guint64 mid = lo + (hi - lo) / 2;
        if (pk->frames[mid].first_unit <= unit)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Set bits in [a, b). */
static guint64 count_set(const MrBitmap *bm, guint64 a, guint64 b)
{
    guint64 n = 0;
    while (a < b) {
        guint sh = (guint)(a % 64);
        guint64 take = MIN((guint64)(64 - sh), b - a);
        guint64 word = bm->words[a / 64] >> sh;
        if (take < 64)
            word &= (G_GUINT64_CONSTANT(1) << take) - 1;
        n += (guint64)__builtin_popcountll(word);
        a += take;
    }
    return n;
}

static void note_access(MrPacked *pk, guint64 fi)
{
    guint64 prev = __atomic_exchange_n(&pk->last_frame, fi, __ATOMIC_RELAXED);
    if (prev + 1 != fi)
        return;
    for (guint k = 1; k <= pk->readahead && fi + k < pk->n_frames; k++) {
        const MrPackFrame *f = &pk->frames[fi + k];
        if (f->csize > 0)
            mr_frame_cache_prefetch(pk->cache, fi + k, f->usize);
    }
}

/* Copy @len decoded bytes of frame @fi from @offset. */
static gboolean copy_from_frame(MrPacked *pk, guint64 fi, guint64 offset, guint8 *out, gsize len,
                                GError **error)
{
    const MrPackFrame *f = &pk->frames[fi];
    if (offset > f->usize || len > f->usize - offset)
        return frame_error(pk, fi, error, "read past its decoded size");
    if (f->csize == 0) {
        memset(out, 0, len);
        return TRUE;
    }
    note_access(pk, fi);
    GBytes *bytes = mr_frame_cache_get(pk->cache, fi, f->usize, error);
    if (bytes == NULL)
        return FALSE;
    memcpy(out, (const guint8 *)g_bytes_get_data(bytes, NULL) + offset, len);
    mr_frame_release(bytes);
    return TRUE;
}

static gboolean read_raw(MrPacked *pk, const MrPackSegment *s, guint64 rel, guint8 *out, gsize len,
                         GError **error)
{
    guint64 end = rel + len;
    while (rel < end) {
        const MrPackChunk *c = &pk->chunks[s->first_chunk + rel / pk->hdr.chunk_size];
        guint64 fi = find_frame(pk, c, rel);
        const MrPackFrame *f = &pk->frames[fi];
        guint64 stop = MIN(f->first_unit + f->n_units, end);
        if (!copy_from_frame(pk, fi, rel - f->first_unit, out, (gsize)(stop - rel), error))
            return FALSE;
        out += stop - rel;
        rel = stop;
    }
    return TRUE;
}

static gboolean read_pages(MrPacked *pk, guint si, guint64 rel, guint8 *out, gsize len,
                           GError **error)
{
    const MrPackSegment *s = &pk->segs[si];
    const MrBitmap *bm = &pk->bitmaps[si];
    guint64 unit = s->unit, end = rel + len, limit = (end + unit - 1) / unit;
    guint64 cu = mr_pack_chunk_units(s, pk->hdr.chunk_size);
    while (rel < end) {
        guint64 page = rel / unit, stop;
        if (!mr_bitmap_test(bm, page)) {
            stop = MIN(mr_bitmap_next_set_until(bm, page, limit) * unit, end);
            memset(out, 0, (gsize)(stop - rel));
        } else {
            const MrPackChunk *c = &pk->chunks[s->first_chunk + page / cu];
            guint64 fi = find_frame(pk, c, page);
            const MrPackFrame *f = &pk->frames[fi];
            guint64 run_end =
                mr_bitmap_next_clear_until(bm, page, MIN(limit, f->first_unit + f->n_units));
            stop = MIN(run_end * unit, end);
            guint64 offset = count_set(bm, f->first_unit, page) * unit + rel % unit;
            if (!copy_from_frame(pk, fi, offset, out, (gsize)(stop - rel), error))
                return FALSE;
        }
        out += stop - rel;
        rel = stop;
    }
    return TRUE;
}

static gboolean packed_read(gpointer data, guint64 offset, void *buf, gsize len, GError **error)
{
    MrPacked *pk = data;
    guint8 *out = buf;
    while (len > 0) {
        guint si = find_segment(pk, offset);
        const MrPackSegment *s = &pk->segs[si];
        guint64 rel = offset - s->offset;
        gsize n = (gsize)MIN((guint64)len, s->length - rel);
        gboolean ok = s->kind == MR_PACK_RAW ? read_raw(pk, s, rel, out, n, error)
                                             : read_pages(pk, si, rel, out, n, error);
        if (!ok)
            return FALSE;
        out += n;
        offset += n;
        len -= n;
    }
    return TRUE;
}

/* ---- open ---- */

void mr_packed_free(MrPacked *pk)
{
    if (pk == NULL)
        return;
    mr_frame_cache_free(pk->cache);
    for (guint i = 0; pk->bitmaps != NULL && i < pk->n_segs; i++)
        mr_bitmap_clear(&pk->bitmaps[i]);
    g_free(pk->bitmaps);
    mr_pack_index_clear(&pk->idx);
    mr_source_free(pk->file);
    g_free(pk);
}

/* Each page segment's bitmap from its raw bytes, and the page frames' sizes against it. */
static gboolean load_bitmaps(MrPacked *pk, GError **error)
{
    pk->bitmaps = g_new0(MrBitmap, pk->n_segs);
    /* A few index bytes can claim huge zero-page segments: bound what their bitmaps cost
     * before allocating any. */
    guint64 bitmap_bytes = 0;
    for (guint i = 0; i < pk->n_segs; i++)
        if (pk->segs[i].kind == MR_PACK_PAGES)
            bitmap_bytes += (pk->segs[i].length / pk->segs[i].unit + 63) / 64 * 8;
    if (bitmap_bytes > MR_PACK_MAX_BITMAPS) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "packed image: its page segments need %" G_GUINT64_FORMAT
                    " bytes of bitmaps (at most %" G_GUINT64_FORMAT ")",
                    bitmap_bytes, (guint64)MR_PACK_MAX_BITMAPS);
        return FALSE;
    }
    for (guint i = 0; i < pk->n_segs; i++) {
        const MrPackSegment *s = &pk->segs[i];
        if (s->kind != MR_PACK_PAGES)
            continue;
        guint64 n_pages = s->length / s->unit;
        gsize n_words = (gsize)((n_pages + 63) / 64);
        guint64 *words = g_new(guint64, MAX(n_words, 1));
        if (!packed_read(pk, s->bitmap_offset, words, n_words * 8, error)) {
            g_free(words);
            g_prefix_error(error, "packed image: bitmap of segment %u: ", i);
            return FALSE;
        }
        mr_bitmap_init_le(&pk->bitmaps[i], words, n_pages);
        guint64 cu = mr_pack_chunk_units(s, pk->hdr.chunk_size);
        for (guint64 k = 0; k < s->n_chunks; k++) {
            const MrPackChunk *c = &pk->chunks[s->first_chunk + k];
            if (c->n_frames == 0 && count_set(&pk->bitmaps[i], k * cu, k * cu + c->n_units) != 0) {
                g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                            "packed image: chunk %" G_GUINT64_FORMAT
                            " stores no page but its bitmap has data pages",
                            s->first_chunk + k);
                return FALSE;
            }
            for (guint32 j = 0; j < c->n_frames; j++) {
                const MrPackFrame *f = &pk->frames[c->first_frame + j];
                if (count_set(&pk->bitmaps[i], f->first_unit, f->first_unit + f->n_units) *
                        s->unit !=
                    f->usize) {
                    g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                                "packed image: frame %" G_GUINT64_FORMAT
                                " holds %u bytes, its bitmap range says otherwise",
                                c->first_frame + j, f->usize);
                    return FALSE;
                }
            }
        }
    }
    return TRUE;
}

MrPacked *mr_packed_open(MrSource *file, guint64 cache_size, GError **error)
{
    g_autoptr(MrPacked) pk = g_new0(MrPacked, 1);
    pk->file = file;
    pk->last_frame = G_MAXUINT64 - 1;
    guint64 size = mr_source_size(file);
    guint8 head[MR_PACK_HEADER_SIZE];
    gsize head_len = (gsize)MIN(size, (guint64)sizeof head);
    if (!mr_source_read(file, 0, head, head_len, error) ||
        !mr_pack_header_decode(head, head_len, size, &pk->hdr, error))
        return NULL;
    /* Bounded by the file size and MR_PACK_MAX_INDEX, both checked by the header decoder. */
    g_autofree guint8 *index = g_malloc(MAX(pk->hdr.index_size, 1));
    if (!mr_source_read(file, pk->hdr.index_offset, index, (gsize)pk->hdr.index_size, error)) {
        g_prefix_error(error, "packed image: index: ");
        return NULL;
    }
    if (!mr_pack_index_decode(&pk->hdr, index, (gsize)pk->hdr.index_size, &pk->idx, error))
        return NULL;
    pk->segs = (const MrPackSegment *)(void *)pk->idx.segments->data;
    pk->chunks = (const MrPackChunk *)(void *)pk->idx.chunks->data;
    pk->frames = (const MrPackFrame *)(void *)pk->idx.frames->data;
    pk->n_segs = pk->idx.segments->len;
    pk->n_frames = pk->idx.frames->len;
    pk->readahead = MAX(MIN_READAHEAD, READAHEAD_BYTES / MAX(pk->hdr.frame_size, 1));
    pk->cache =
        mr_frame_cache_new(cache_size ? cache_size : MR_PACK_DEFAULT_CACHE, cache_decode, pk);
    if (!load_bitmaps(pk, error))
        return NULL;
    return g_steal_pointer(&pk);
}

static void packed_source_free(gpointer data)
{
    mr_packed_free(data);
}

MrSource *mr_packed_source(MrPacked *pk)
{
    return mr_source_new_custom(packed_read, pk, packed_source_free, pk->hdr.image_size,
                                mr_source_stat(pk->file));
}

MrFrameCache *mr_packed_cache(MrPacked *pk)
{
    return pk->cache;
}

gboolean mr_file_is_packed(const char *path)
{
    guint8 head[MR_PACK_MAGIC_LEN];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FALSE;
    gboolean ok = pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
                  mr_pack_has_magic(head, sizeof head);
    close(fd);
    return ok;
}

/* ---- whole-file operations ---- */

static MrPacked *open_path(const char *path, GError **error)
{
    MrSource *src = mr_source_open_file(path, error);
    if (src == NULL)
        return NULL;
    return mr_packed_open(src, 0, error);
}

static void fill_stats(const MrPacked *pk, MrPackStats *stats)
{
    if (stats == NULL)
        return;
    *stats = (MrPackStats){
        .image_size = pk->hdr.image_size,
        .packed_size = mr_source_size(pk->file),
        .n_frames = pk->n_frames,
        .n_chunks = pk->idx.chunks->len,
        .n_segments = pk->n_segs,
    };
    for (guint64 i = 0; i < pk->n_frames; i++)
        stats->stored_bytes += pk->frames[i].usize;
}

static gboolean all_zero(const guint8 *buf, gsize len)
{
    return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

/* Write frame @fi's units to their places in the image (@fd), holes left alone. */
static gboolean unpack_frame(MrPacked *pk, guint si, guint64 fi, const guint8 *buf, int fd,
                             GError **error)
{
    const MrPackSegment *s = &pk->segs[si];
    const MrPackFrame *f = &pk->frames[fi];
    if (s->kind == MR_PACK_RAW) {
        /* Zero pieces stay holes, as the image's padding was. */
        for (gsize at = 0; at < f->usize;) {
            gsize n = MIN((gsize)UNPACK_HOLE_GRAIN, f->usize - at);
            if (!all_zero(buf + at, n) &&
                !mr_write_at(fd, buf + at, n, s->offset + f->first_unit + at, error))
                return FALSE;
            at += n;
        }
        return TRUE;
    }
    const MrBitmap *bm = &pk->bitmaps[si];
    guint64 end = f->first_unit + f->n_units,
            page = mr_bitmap_next_set_until(bm, f->first_unit, end);
    const guint8 *p = buf;
    while (page < end) {
        guint64 run_end = mr_bitmap_next_clear_until(bm, page, end);
        gsize n = (gsize)((run_end - page) * s->unit);
        if (!mr_write_at(fd, p, n, s->offset + page * s->unit, error))
            return FALSE;
        p += n;
        page = mr_bitmap_next_set_until(bm, run_end, end);
    }
    return TRUE;
}

/* Decode every frame in order; @fd >= 0 also writes them out. */
static gboolean walk_frames(MrPacked *pk, int fd, MrProgressFunc progress, gpointer data,
                            GError **error)
{
    g_autofree guint8 *buf = g_malloc(MR_PACK_MAX_FRAME);
    guint64 done = 0;
    for (guint si = 0; si < pk->n_segs; si++) {
        const MrPackSegment *s = &pk->segs[si];
        for (guint64 k = 0; k < s->n_chunks; k++) {
            const MrPackChunk *c = &pk->chunks[s->first_chunk + k];
            for (guint32 j = 0; j < c->n_frames; j++) {
                guint64 fi = c->first_frame + j;
                const MrPackFrame *f = &pk->frames[fi];
                if (f->csize == 0)
                    continue;
                if (!decode_frame(pk, fi, buf, f->usize, error) ||
                    (fd >= 0 && !unpack_frame(pk, si, fi, buf, fd, error)))
                    return FALSE;
            }
            done += c->n_units * (s->kind == MR_PACK_PAGES ? s->unit : 1);
            if (progress != NULL)
                progress(done, pk->hdr.image_size, data);
        }
    }
    return TRUE;
}

gboolean mr_unpack(const char *packed_path, int out_fd, MrProgressFunc progress, gpointer data,
                   GError **error)
{
    g_autoptr(MrPacked) pk = open_path(packed_path, error);
    if (pk == NULL || !walk_frames(pk, out_fd, progress, data, error))
        return FALSE;
    if (ftruncate(out_fd, (off_t)pk->hdr.image_size) < 0) {
        int saved = errno;
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot set the size: %s", g_strerror(saved));
        return FALSE;
    }
    return TRUE;
}

gboolean mr_verify(const char *packed_path, MrProgressFunc progress, gpointer data,
                   MrPackStats *stats, GError **error)
{
    g_autoptr(MrPacked) pk = open_path(packed_path, error);
    if (pk == NULL || !walk_frames(pk, -1, progress, data, error))
        return FALSE;
    fill_stats(pk, stats);
    return TRUE;
}
