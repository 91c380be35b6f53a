/* mr-pack-writer.c: write a packed image (docs/packed-format.md) from an opened image.
 *
 * The image is cut into segments (page slots of each mapped-ram block, raw bytes between)
 * and each segment into 64 MiB chunks. Worker threads take chunks in order, read their
 * stored units (set pages, or all bytes) straight from the image and compress them into
 * frames; the calling thread writes finished chunks strictly in chunk order, so the output
 * is the same whatever the thread count. At most 2 chunks per worker are in flight, which
 * bounds memory to a few compressed chunks. */
#include "mr-private.h"
#include "mr-packfmt.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

typedef struct {
    guint seg;
    guint64 chunk; /* within the segment */
} Job;

typedef struct {
    GArray *frames; /* of MrPackFrame, offsets relative to data */
    GByteArray *data;
    GError *error;
} Result;

typedef struct {
    const MrImage *img;
    MrPackIndex idx;
    const MrBitmap **bitmaps; /* per segment, NULL for raw */
    guint32 chunk_size, frame_size;
    int level;
    GArray *jobs;
    /* shared between workers and the writer */
    GMutex lock;
    GCond cond;
    guint next_job, written, window;
    Result **results;
    gboolean stop;
} Writer;

/* ---- segments ---- */

static int compare_blocks(gconstpointer a, gconstpointer b)
{
    const MrBlock *x = *(MrBlock *const *)a, *y = *(MrBlock *const *)b;
    return x->pages_offset < y->pages_offset ? -1 : x->pages_offset > y->pages_offset;
}

static void add_segment(Writer *w, MrPackSegment seg, const MrBitmap *bm)
{
    seg.first_chunk = 0;
    for (guint i = 0; i < w->idx.segments->len; i++)
        seg.first_chunk += g_array_index(w->idx.segments, MrPackSegment, i).n_chunks;
    seg.n_chunks = (seg.length + w->chunk_size - 1) / w->chunk_size;
    g_array_append_val(w->idx.segments, seg);
    w->bitmaps = g_renew(const MrBitmap *, w->bitmaps, w->idx.segments->len);
    w->bitmaps[w->idx.segments->len - 1] = bm;
    for (guint64 k = 0; k < seg.n_chunks; k++) {
        Job job = {w->idx.segments->len - 1, k};
        g_array_append_val(w->jobs, job);
    }
}

static void add_raw(Writer *w, guint64 start, guint64 end)
{
    if (end > start)
        add_segment(w, (MrPackSegment){.offset = start, .length = end - start, .unit = 1}, NULL);
}

/* Page segments for the slot regions of a mapped-ram image; everything else raw. A legacy
 * stream has no slot regions: one raw segment. */
static void plan_segments(Writer *w)
{
    const MrImage *img = w->img;
    guint64 size = mr_source_size(img->src), pos = 0;
    if (g_strcmp0(img->format_name, "mapped-ram") == 0) {
        g_autoptr(GPtrArray) blocks = g_ptr_array_new();
        for (guint i = 0; i < img->blocks->len; i++) {
            MrBlock *b = g_ptr_array_index(img->blocks, i);
            if (b->size > 0)
                g_ptr_array_add(blocks, b);
        }
        g_ptr_array_sort(blocks, compare_blocks);
        for (guint i = 0; i < blocks->len; i++) {
            const MrBlock *b = g_ptr_array_index(blocks, i);
            add_raw(w, pos, b->pages_offset);
            add_segment(w,
                        (MrPackSegment){.offset = b->pages_offset,
                                        .length = b->size,
                                        .kind = MR_PACK_PAGES,
                                        .unit = b->page_size,
                                        .bitmap_offset = b->bitmap_offset},
                        &b->bitmap);
            pos = b->pages_offset + b->size;
        }
    }
    add_raw(w, pos, size);
}

/* ---- compressing one chunk (worker threads) ---- */

typedef struct {
    ZSTD_CCtx *cctx;
    guint8 *in;
    gsize in_cap;
} Compressor;

static gboolean emit_frame(Compressor *z, Result *r, guint64 first_unit, guint64 n_units, gsize len,
                           GError **error)
{
    MrPackFrame f = {.offset = r->data->len,
                     .usize = (guint32)len,
                     .first_unit = first_unit,
                     .n_units = (guint32)n_units};
    if (!(z->in[0] == 0 && memcmp(z->in, z->in + 1, len - 1) == 0)) {
        gsize bound = ZSTD_compressBound(len), at = r->data->len;
        g_byte_array_set_size(r->data, (guint)(at + bound));
        size_t n = ZSTD_compress2(z->cctx, r->data->data + at, bound, z->in, len);
        if (ZSTD_isError(n)) {
            g_set_error(error, MR_ERROR, MR_ERROR_IO, "zstd: %s", ZSTD_getErrorName(n));
            return FALSE;
        }
        g_byte_array_set_size(r->data, (guint)(at + n));
        f.csize = (guint32)n;
        memcpy(&f.checksum, r->data->data + at + n - 4, 4);
        f.checksum = GUINT32_FROM_LE(f.checksum);
    }
    g_array_append_val(r->frames, f);
    return TRUE;
}

static gboolean compress_raw(Writer *w, Compressor *z, const MrPackSegment *s, guint64 first,
                             guint64 n_units, Result *r, GError **error)
{
    for (guint64 u = first; u < first + n_units; u += w->frame_size) {
        gsize len = (gsize)MIN((guint64)w->frame_size, first + n_units - u);
        if (!mr_source_read(w->img->src, s->offset + u, z->in, len, error) ||
            !emit_frame(z, r, u, len, len, error))
            return FALSE;
    }
    return TRUE;
}

/* Set pages are gathered into frames of at most frame_size bytes (at least one page); a
 * frame covers from its first unit up to the next frame's, the last one to the chunk end. */
static gboolean compress_pages(Writer *w, Compressor *z, const MrPackSegment *s, const MrBitmap *bm,
                               guint64 first, guint64 n_units, Result *r, GError **error)
{
    guint64 end = first + n_units, unit = s->unit, frame_start = first;
    gsize used = 0;
    guint64 page = mr_bitmap_next_set_until(bm, first, end);
    while (page < end) {
        guint64 run_end = mr_bitmap_next_clear_until(bm, page, end);
        while (page < run_end) {
            guint64 take = MIN(run_end - page, (w->frame_size - MIN(used, w->frame_size)) / unit);
            if (take == 0 && used == 0)
                take = 1;
            if (take == 0) {
                if (!emit_frame(z, r, frame_start, page - frame_start, used, error))
                    return FALSE;
                frame_start = page;
                used = 0;
                continue;
            }
            if (!mr_source_read(w->img->src, s->offset + page * unit, z->in + used,
                                (gsize)(take * unit), error))
                return FALSE;
            used += (gsize)(take * unit);
            page += take;
        }
        page = mr_bitmap_next_set_until(bm, run_end, end);
    }
    return used == 0 || emit_frame(z, r, frame_start, end - frame_start, used, error);
}

static Result *compress_job(Writer *w, Compressor *z, const Job *job)
{
    const MrPackSegment *s = &g_array_index(w->idx.segments, MrPackSegment, job->seg);
    guint64 cu = mr_pack_chunk_units(s, w->chunk_size);
    guint64 units = s->kind == MR_PACK_PAGES ? s->length / s->unit : s->length;
    guint64 first = job->chunk * cu, n = MIN(cu, units - first);
    Result *r = g_new0(Result, 1);
    r->frames = g_array_new(FALSE, FALSE, sizeof(MrPackFrame));
    r->data = g_byte_array_new();
    gboolean ok = s->kind == MR_PACK_RAW
                      ? compress_raw(w, z, s, first, n, r, &r->error)
                      : compress_pages(w, z, s, w->bitmaps[job->seg], first, n, r, &r->error);
    if (!ok)
        g_prefix_error(&r->error, "segment at 0x%" G_GINT64_MODIFIER "x: ", s->offset);
    return r;
}

static gpointer worker(gpointer data)
{
    Writer *w = data;
    Compressor z = {.cctx = ZSTD_createCCtx(), .in_cap = MAX(w->frame_size, 65536u)};
    z.in = g_malloc(z.in_cap);
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_compressionLevel, w->level);
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_contentSizeFlag, 1);
    g_mutex_lock(&w->lock);
    for (;;) {
        while (!w->stop && w->next_job < w->jobs->len && w->next_job >= w->written + w->window)
            g_cond_wait(&w->cond, &w->lock);
        if (w->stop || w->next_job >= w->jobs->len)
            break;
        guint j = w->next_job++;
        g_mutex_unlock(&w->lock);
        Result *r = compress_job(w, &z, &g_array_index(w->jobs, Job, j));
        g_mutex_lock(&w->lock);
        w->results[j] = r;
        g_cond_broadcast(&w->cond);
    }
    g_mutex_unlock(&w->lock);
    ZSTD_freeCCtx(z.cctx);
    g_free(z.in);
    return NULL;
}

/* ---- writing (calling thread) ---- */

static gboolean write_at(int fd, const guint8 *buf, gsize len, guint64 offset, GError **error)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot write the output: %s",
                        g_strerror(saved));
            return FALSE;
        }
        buf += n;
        len -= (gsize)n;
        offset += (guint64)n;
    }
    return TRUE;
}

static void free_result(Result *r)
{
    if (r == NULL)
        return;
    g_array_unref(r->frames);
    g_byte_array_unref(r->data);
    g_clear_error(&r->error);
    g_free(r);
}

static gboolean write_chunk(Writer *w, int fd, Result *r, guint64 *pos, GError **error)
{
    if (r->error != NULL) {
        g_propagate_error(error, g_steal_pointer(&r->error));
        return FALSE;
    }
    if (!write_at(fd, r->data->data, r->data->len, *pos, error))
        return FALSE;
    MrPackChunk c = {.first_frame = w->idx.frames->len, .n_frames = r->frames->len};
    guint64 first_unit = G_MAXUINT64, units = 0;
    for (guint i = 0; i < r->frames->len; i++) {
        MrPackFrame *f = &g_array_index(r->frames, MrPackFrame, i);
        f->offset = f->csize ? *pos + f->offset : 0;
        c.csize += f->csize;
        c.usize += f->usize;
        first_unit = MIN(first_unit, f->first_unit);
        units += f->n_units;
    }
    g_array_append_vals(w->idx.frames, r->frames->data, r->frames->len);
    g_array_append_val(w->idx.chunks, c);
    *pos += r->data->len;
    return TRUE;
}

/* Chunk first_unit/n_units follow from the segment; filled once all are written. */
static void fill_chunk_ranges(Writer *w)
{
    for (guint i = 0; i < w->idx.segments->len; i++) {
        const MrPackSegment *s = &g_array_index(w->idx.segments, MrPackSegment, i);
        guint64 cu = mr_pack_chunk_units(s, w->chunk_size);
        guint64 units = s->kind == MR_PACK_PAGES ? s->length / s->unit : s->length;
        for (guint64 k = 0; k < s->n_chunks; k++) {
            MrPackChunk *c = &g_array_index(w->idx.chunks, MrPackChunk, s->first_chunk + k);
            c->first_unit = k * cu;
            c->n_units = MIN(cu, units - k * cu);
        }
    }
}

static gboolean write_index(Writer *w, int fd, guint64 pos, MrPackStats *stats, GError **error)
{
    fill_chunk_ranges(w);
    g_autoptr(GByteArray) index = mr_pack_index_encode(&w->idx);
    MrPackHeader h = {
        .version = MR_PACK_VERSION,
        .header_size = MR_PACK_HEADER_SIZE,
        .image_size = mr_source_size(w->img->src),
        .index_offset = pos,
        .index_size = index->len,
        .chunk_size = w->chunk_size,
        .frame_size = w->frame_size,
        .level = w->level,
    };
    mr_pack_sha256(index->data, index->len, h.index_sha256);
    guint8 head[MR_PACK_HEADER_SIZE];
    mr_pack_header_encode(&h, head);
    if (!write_at(fd, index->data, index->len, pos, error) ||
        !write_at(fd, head, sizeof head, 0, error))
        return FALSE;
    if (stats != NULL) {
        *stats = (MrPackStats){.image_size = h.image_size,
                               .packed_size = pos + index->len,
                               .n_frames = w->idx.frames->len,
                               .n_chunks = w->idx.chunks->len,
                               .n_segments = w->idx.segments->len};
        for (guint i = 0; i < w->idx.frames->len; i++)
            stats->stored_bytes += g_array_index(w->idx.frames, MrPackFrame, i).usize;
    }
    return TRUE;
}

static gboolean check_options(const MrImage *img, const MrPackOptions *o, GError **error)
{
    if (img->packed) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED, "already packed");
        return FALSE;
    }
    if (o->level < 0 || o->level > 19 ||
        (o->frame_size != 0 &&
         (o->frame_size < MR_PACK_MIN_FRAME || o->frame_size > MR_PACK_MAX_FRAME))) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "level must be 1..19 and the frame size 4 KiB..16 MiB");
        return FALSE;
    }
    return TRUE;
}

gboolean mr_pack_image(const MrImage *img, int out_fd, const MrPackOptions *opts,
                       MrPackStats *stats, GError **error)
{
    MrPackOptions o = opts ? *opts : (MrPackOptions){0};
    if (!check_options(img, &o, error))
        return FALSE;
    Writer w = {
        .img = img,
        .chunk_size = MR_PACK_DEFAULT_CHUNK,
        .frame_size = o.frame_size ? o.frame_size : MR_PACK_DEFAULT_FRAME,
        .level = o.level ? o.level : MR_PACK_DEFAULT_LEVEL,
        .jobs = g_array_new(FALSE, FALSE, sizeof(Job)),
    };
    guint n_threads = o.threads ? o.threads : g_get_num_processors();
    n_threads = CLAMP(n_threads, 1, 64);
    w.window = 2 * n_threads;
    mr_pack_index_init(&w.idx);
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    plan_segments(&w);
    w.results = g_new0(Result *, MAX(w.jobs->len, 1));

    GThread **threads = g_new0(GThread *, n_threads);
    for (guint i = 0; i < n_threads; i++)
        threads[i] = g_thread_new("mramfs-pack", worker, &w);

    guint64 pos = MR_PACK_HEADER_SIZE, done = 0, total = mr_source_size(img->src);
    gboolean ok = TRUE;
    for (guint j = 0; j < w.jobs->len && ok; j++) {
        g_mutex_lock(&w.lock);
        while (w.results[j] == NULL)
            g_cond_wait(&w.cond, &w.lock);
        Result *r = w.results[j];
        w.results[j] = NULL;
        g_mutex_unlock(&w.lock);
        ok = write_chunk(&w, out_fd, r, &pos, error);
        free_result(r);
        const Job *job = &g_array_index(w.jobs, Job, j);
        const MrPackSegment *s = &g_array_index(w.idx.segments, MrPackSegment, job->seg);
        done += MIN((guint64)w.chunk_size, s->length - job->chunk * w.chunk_size);
        g_mutex_lock(&w.lock);
        w.written = j + 1;
        if (!ok)
            w.stop = TRUE;
        g_cond_broadcast(&w.cond);
        g_mutex_unlock(&w.lock);
        if (ok && o.progress != NULL)
            o.progress(done, total, o.progress_data);
    }
    for (guint i = 0; i < n_threads; i++)
        g_thread_join(threads[i]);
    g_free(threads);
    for (guint j = 0; j < w.jobs->len; j++)
        free_result(w.results[j]);
    if (ok)
        ok = write_index(&w, out_fd, pos, stats, error);
    g_free(w.results);
    g_free(w.bitmaps);
    g_array_unref(w.jobs);
    mr_pack_index_clear(&w.idx);
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);
    return ok;
}
