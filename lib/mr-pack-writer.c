/* mr-pack-writer.c: write a packed image (docs/packed-format.md) from an opened image.
 *
 * The image is cut into segments (page slots of each mapped-ram block, raw bytes between),
 * each segment into 64 MiB chunks, and the stored units of each chunk into frames. The
 * whole frame layout is planned first from the bitmaps alone (so it does not depend on the
 * number of threads); then worker threads take jobs of consecutive frames of one chunk
 * (about 4 MiB of stored bytes each, so that one dense chunk does not leave a core idle),
 * read their units straight from the image and compress them. The calling thread writes
 * finished jobs strictly in order, so the output is the same whatever the thread count.
 * At most 4 jobs per worker are in flight, which bounds memory to a few compressed jobs. */
#include "mr-private.h"
#include "mr-packfmt.h"
#include "mr-sync.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

/* Consecutive frames of one chunk, compressed by one worker. */
typedef struct {
    guint seg;
    guint64 first_frame, n_frames;
} Job;

typedef struct {
    GByteArray *data; /* the job's compressed frames, back to back */
    GError *error;
} Result;

#define JOB_BYTES (4u << 20) /* stored bytes per job, about */

typedef struct {
    const MrImage *img;
    MrPackIndex idx; /* frames planned with usize/units; csize, offset, checksum at write */
    const MrBitmap **bitmaps; /* per segment, NULL for raw */
    guint32 chunk_size, frame_size;
    int level;
    GArray *jobs;
    guint64 total_stored;
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

/* ---- the frame plan (calling thread, bitmaps only) ---- */

static void plan_frame(Writer *w, MrPackChunk *c, guint64 first_unit, guint64 n_units, gsize len)
{
    MrPackFrame f = {.usize = (guint32)len, .first_unit = first_unit, .n_units = (guint32)n_units};
    g_array_append_val(w->idx.frames, f);
    c->n_frames++;
    c->usize += len;
}

/* Set pages are gathered into frames of at most frame_size bytes (at least one page); a
 * frame covers from its first unit up to the next frame's, the last one to the chunk end. */
static void plan_pages(Writer *w, const MrPackSegment *s, const MrBitmap *bm, MrPackChunk *c)
{
    guint64 end = c->first_unit + c->n_units, unit = s->unit, frame_start = c->first_unit;
    guint64 per_frame = MAX(w->frame_size / unit, 1), used = 0;
    guint64 page = mr_bitmap_next_set_until(bm, c->first_unit, end);
    while (page < end) {
        guint64 run_end = mr_bitmap_next_clear_until(bm, page, end);
        while (page < run_end) {
            if (used == per_frame) {
                plan_frame(w, c, frame_start, page - frame_start, (gsize)(used * unit));
                frame_start = page;
                used = 0;
            }
            guint64 take = MIN(run_end - page, per_frame - used);
            used += take;
            page += take;
        }
        page = mr_bitmap_next_set_until(bm, run_end, end);
    }
    if (used > 0)
        plan_frame(w, c, frame_start, end - frame_start, (gsize)(used * unit));
}

static void plan_frames(Writer *w)
{
    for (guint i = 0; i < w->idx.segments->len; i++) {
        const MrPackSegment *s = &g_array_index(w->idx.segments, MrPackSegment, i);
        guint64 cu = mr_pack_chunk_units(s, w->chunk_size);
        guint64 units = s->kind == MR_PACK_PAGES ? s->length / s->unit : s->length;
        for (guint64 k = 0; k < s->n_chunks; k++) {
            MrPackChunk c = {.first_unit = k * cu,
                             .n_units = MIN(cu, units - k * cu),
                             .first_frame = w->idx.frames->len};
            if (s->kind == MR_PACK_PAGES)
                plan_pages(w, s, w->bitmaps[i], &c);
            else
                for (guint64 u = c.first_unit; u < c.first_unit + c.n_units; u += w->frame_size) {
                    guint64 n = MIN((guint64)w->frame_size, c.first_unit + c.n_units - u);
                    plan_frame(w, &c, u, n, (gsize)n);
                }
            g_array_append_val(w->idx.chunks, c);
            w->total_stored += c.usize;
            /* jobs of about JOB_BYTES of consecutive frames inside the chunk */
            Job job = {.seg = i, .first_frame = c.first_frame};
            guint64 job_bytes = 0;
            for (guint32 j = 0; j < c.n_frames; j++) {
                job.n_frames++;
                job_bytes += g_array_index(w->idx.frames, MrPackFrame, c.first_frame + j).usize;
                if (job_bytes >= JOB_BYTES || j + 1 == c.n_frames) {
                    g_array_append_val(w->jobs, job);
                    job = (Job){.seg = i, .first_frame = c.first_frame + j + 1};
                    job_bytes = 0;
                }
            }
        }
    }
}

/* ---- compressing one job (worker threads) ---- */

typedef struct {
    ZSTD_CCtx *cctx;
    guint8 *in;
} Compressor;

/* Read the stored units of @f: all its bytes, or the set pages of its range. */
static gboolean gather(Writer *w, const MrPackSegment *s, const MrBitmap *bm, const MrPackFrame *f,
                       guint8 *out, GError **error)
{
    if (s->kind == MR_PACK_RAW)
        return mr_source_read(w->img->src, s->offset + f->first_unit, out, f->usize, error);
    guint64 end = f->first_unit + f->n_units,
            page = mr_bitmap_next_set_until(bm, f->first_unit, end);
    gsize used = 0;
    while (page < end) {
        guint64 run_end = mr_bitmap_next_clear_until(bm, page, end);
        gsize n = (gsize)((run_end - page) * s->unit);
        if (used + n > f->usize ||
            !mr_source_read(w->img->src, s->offset + page * s->unit, out + used, n, error)) {
            if (used + n > f->usize)
                g_set_error(error, MR_ERROR, MR_ERROR_IO, "bitmap changed while packing");
            return FALSE;
        }
        used += n;
        page = mr_bitmap_next_set_until(bm, run_end, end);
    }
    return TRUE;
}

/* Compress one frame onto @data; fills its csize and checksum (offset: relative to @data). */
static gboolean compress_frame(Compressor *z, MrPackFrame *f, GByteArray *data, GError **error)
{
    f->offset = data->len;
    f->csize = 0;
    f->checksum = 0;
    if (z->in[0] == 0 && memcmp(z->in, z->in + 1, f->usize - 1) == 0)
        return TRUE; /* a zero frame: nothing stored */
    gsize bound = ZSTD_compressBound(f->usize), at = data->len;
    g_byte_array_set_size(data, (guint)(at + bound));
    size_t n = ZSTD_compress2(z->cctx, data->data + at, bound, z->in, f->usize);
    if (ZSTD_isError(n)) {
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "zstd: %s", ZSTD_getErrorName(n));
        return FALSE;
    }
    g_byte_array_set_size(data, (guint)(at + n));
    f->csize = (guint32)n;
    memcpy(&f->checksum, data->data + at + n - 4, 4);
    f->checksum = GUINT32_FROM_LE(f->checksum);
    return TRUE;
}

/* Frames are only written by the worker that owns their job, and the array is not
 * resized while workers run. */
static Result *compress_job(Writer *w, Compressor *z, const Job *job)
{
    const MrPackSegment *s = &g_array_index(w->idx.segments, MrPackSegment, job->seg);
    Result *r = g_new0(Result, 1);
    r->data = g_byte_array_new();
    for (guint64 i = 0; i < job->n_frames; i++) {
        MrPackFrame *f = &g_array_index(w->idx.frames, MrPackFrame, job->first_frame + i);
        if (!gather(w, s, w->bitmaps[job->seg], f, z->in, &r->error) ||
            !compress_frame(z, f, r->data, &r->error)) {
            g_prefix_error(&r->error, "segment at 0x%" G_GINT64_MODIFIER "x: ", s->offset);
            break;
        }
    }
    return r;
}

static gpointer worker(gpointer data)
{
    Writer *w = data;
    Compressor z = {.cctx = ZSTD_createCCtx(), .in = g_malloc(MAX(w->frame_size, 65536u))};
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_compressionLevel, w->level);
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(z.cctx, ZSTD_c_contentSizeFlag, 1);
    mr_mutex_lock(&w->lock);
    for (;;) {
        while (!w->stop && w->next_job < w->jobs->len && w->next_job >= w->written + w->window)
            mr_cond_wait(&w->cond, &w->lock);
        if (w->stop || w->next_job >= w->jobs->len)
            break;
        guint j = w->next_job++;
        mr_mutex_unlock(&w->lock);
        Result *r = compress_job(w, &z, &g_array_index(w->jobs, Job, j));
        mr_mutex_lock(&w->lock);
        w->results[j] = r;
        g_cond_broadcast(&w->cond);
    }
    mr_mutex_unlock(&w->lock);
    ZSTD_freeCCtx(z.cctx);
    g_free(z.in);
    return NULL;
}

/* ---- writing (calling thread) ---- */

static void free_result(Result *r)
{
    if (r == NULL)
        return;
    g_byte_array_unref(r->data);
    g_clear_error(&r->error);
    g_free(r);
}

static gboolean write_job(Writer *w, int fd, const Job *job, Result *r, guint64 *pos,
                          GError **error)
{
    if (r->error != NULL) {
        g_propagate_error(error, g_steal_pointer(&r->error));
        return FALSE;
    }
    if (!mr_write_at(fd, r->data->data, r->data->len, *pos, error))
        return FALSE;
    for (guint64 i = 0; i < job->n_frames; i++) {
        MrPackFrame *f = &g_array_index(w->idx.frames, MrPackFrame, job->first_frame + i);
        f->offset = f->csize ? *pos + f->offset : 0;
    }
    *pos += r->data->len;
    return TRUE;
}

/* Chunk csize from the frames, once all are written. */
static void fill_chunk_sizes(Writer *w)
{
    for (guint i = 0; i < w->idx.chunks->len; i++) {
        MrPackChunk *c = &g_array_index(w->idx.chunks, MrPackChunk, i);
        for (guint32 j = 0; j < c->n_frames; j++)
            c->csize += g_array_index(w->idx.frames, MrPackFrame, c->first_frame + j).csize;
    }
}

static gboolean write_index(Writer *w, int fd, guint64 pos, MrPackStats *stats, GError **error)
{
    fill_chunk_sizes(w);
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
    if (!mr_write_at(fd, index->data, index->len, pos, error) ||
        !mr_write_at(fd, head, sizeof head, 0, error))
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
    w.window = 4 * n_threads;
    mr_pack_index_init(&w.idx);
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    plan_segments(&w);
    plan_frames(&w);
    w.results = g_new0(Result *, MAX(w.jobs->len, 1));

    GThread **threads = g_new0(GThread *, n_threads);
    for (guint i = 0; i < n_threads; i++)
        threads[i] = g_thread_new("mramfs-pack", worker, &w);

    guint64 pos = MR_PACK_HEADER_SIZE, done = 0, total = w.total_stored;
    gboolean ok = TRUE;
    for (guint j = 0; j < w.jobs->len && ok; j++) {
        mr_mutex_lock(&w.lock);
        while (w.results[j] == NULL)
            mr_cond_wait(&w.cond, &w.lock);
        Result *r = w.results[j];
        w.results[j] = NULL;
        mr_mutex_unlock(&w.lock);
        const Job *job = &g_array_index(w.jobs, Job, j);
        ok = write_job(&w, out_fd, job, r, &pos, error);
        free_result(r);
        for (guint64 i = 0; i < job->n_frames; i++)
            done += g_array_index(w.idx.frames, MrPackFrame, job->first_frame + i).usize;
        mr_mutex_lock(&w.lock);
        w.written = j + 1;
        if (!ok)
            w.stop = TRUE;
        g_cond_broadcast(&w.cond);
        mr_mutex_unlock(&w.lock);
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
