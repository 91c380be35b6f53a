/* mr-frame-cache.c: bounded LRU of decoded frames with in-flight dedupe and read-ahead
 * workers (mr-frame-cache.h). One mutex guards the table and the LRU list; decoding runs
 * outside it. An entry is either loading (owned by the thread that created it, which alone
 * finishes or removes it) or ready (in the LRU list, evictable). */
#include "mr-frame-cache.h"

#include "mr-sync.h"

typedef struct {
    guint64 frame;
    gsize len;
    GBytes *data; /* NULL while loading */
    GList *lru;   /* link in cache->lru while ready */
} Entry;

struct _MrFrameCache {
    GMutex lock;
    GCond done;          /* broadcast whenever a loading entry becomes ready or goes away */
    GHashTable *entries; /* &Entry.frame -> Entry */
    GQueue lru;          /* of Entry*, most recent first */
    guint64 capacity;
    /* Read-ahead workers: our own threads on our lock, not a GThreadPool, whose futex-based
     * queue hides the hand-off from TSan (mr-sync.h). */
    GThread **workers; /* NULL until mr_frame_cache_start_workers() */
    guint n_workers;
    GQueue queue; /* of loading Entry* for the workers, oldest at the tail */
    GCond work;   /* signalled when the queue grows or the workers must stop */
    gboolean stopping;
    guint pending; /* prefetches queued or running */
    guint max_pending;
    MrFrameDecodeFunc decode;
    gpointer data;
    MrFrameCacheStats stats;
};

/* GBytes counts references with atomics inside GLib, which TSan does not see: the last
 * unref frees the frame after other threads' reads that TSan cannot order before it. Each
 * holder releases the frame's address as it lets go (mr_frame_release), the free acquires
 * it. Nothing but that annotation in other builds. */
static void free_frame(gpointer buf)
{
    mr_tsan_acquire(buf);
    g_free(buf);
}

void mr_frame_release(GBytes *frame)
{
    mr_tsan_release(g_bytes_get_data(frame, NULL));
    g_bytes_unref(frame);
}

static void entry_free(gpointer p)
{
    Entry *e = p;
    if (e->data != NULL)
        mr_frame_release(e->data);
    g_free(e);
}

/* Drop least recently used frames until the cache fits, sparing @keep. Lock held. */
static void evict(MrFrameCache *c, const Entry *keep)
{
    while (c->stats.bytes > c->capacity) {
        GList *tail = c->lru.tail;
        if (tail == NULL)
            return;
        Entry *e = tail->data;
        if (e == keep) {
            if (tail->prev == NULL)
                return;
            e = tail->prev->data;
        }
        g_queue_unlink(&c->lru, e->lru);
        g_list_free_1(e->lru);
        c->stats.bytes -= e->len;
        c->stats.evicted++;
        g_hash_table_remove(c->entries, &e->frame);
    }
}

/* Decode the loading entry @e (ours) and publish the result. Returns a reference to the
 * bytes if @want, else NULL. Lock not held on entry or exit. */
static GBytes *load(MrFrameCache *c, Entry *e, gboolean want, GError **error)
{
    guint8 *buf = g_malloc(e->len);
    gboolean ok = c->decode(c->data, e->frame, buf, e->len, error);
    GBytes *result = NULL;
    mr_mutex_lock(&c->lock);
    if (ok) {
        e->data = g_bytes_new_with_free_func(buf, e->len, free_frame, buf);
        g_queue_push_head(&c->lru, e);
        e->lru = c->lru.head;
        c->stats.bytes += e->len;
        c->stats.peak_bytes = MAX(c->stats.peak_bytes, c->stats.bytes);
        if (want)
            result = g_bytes_ref(e->data);
        evict(c, e);
    } else {
        g_free(buf);
        g_hash_table_remove(c->entries, &e->frame);
    }
    g_cond_broadcast(&c->done);
    mr_mutex_unlock(&c->lock);
    return result;
}

/* A read-ahead worker: decode queued frames until told to stop, then finish the queue
 * (its entries are loading, owned by whoever decodes them). */
static gpointer worker(gpointer data)
{
    MrFrameCache *c = data;
    mr_mutex_lock(&c->lock);
    for (;;) {
        while (!c->stopping && g_queue_is_empty(&c->queue))
            mr_cond_wait(&c->work, &c->lock);
        Entry *e = g_queue_pop_tail(&c->queue);
        if (e == NULL)
            break; /* stopping, nothing left */
        mr_mutex_unlock(&c->lock);
        load(c, e, FALSE, NULL); /* a failure shows when a reader asks for the frame */
        mr_mutex_lock(&c->lock);
        c->pending--;
    }
    mr_mutex_unlock(&c->lock);
    return NULL;
}

MrFrameCache *mr_frame_cache_new(guint64 capacity, MrFrameDecodeFunc decode, gpointer data)
{
    MrFrameCache *c = g_new0(MrFrameCache, 1);
    g_mutex_init(&c->lock);
    g_cond_init(&c->done);
    g_cond_init(&c->work);
    g_queue_init(&c->queue);
    c->entries = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, entry_free);
    g_queue_init(&c->lru);
    c->capacity = capacity;
    c->decode = decode;
    c->data = data;
    return c;
}

void mr_frame_cache_start_workers(MrFrameCache *c, guint n_workers)
{
    if (c->workers != NULL || n_workers == 0)
        return;
    mr_mutex_lock(&c->lock);
    c->max_pending = 4 * n_workers;
    mr_mutex_unlock(&c->lock);
    c->n_workers = n_workers;
    c->workers = g_new(GThread *, n_workers);
    for (guint i = 0; i < n_workers; i++)
        c->workers[i] = g_thread_new("mramfs-ra", worker, c);
}

static void stop_workers(MrFrameCache *c)
{
    mr_mutex_lock(&c->lock);
    c->stopping = TRUE;
    g_cond_broadcast(&c->work);
    mr_mutex_unlock(&c->lock);
    for (guint i = 0; i < c->n_workers; i++)
        g_thread_join(c->workers[i]);
    g_clear_pointer(&c->workers, g_free);
}

void mr_frame_cache_free(MrFrameCache *c)
{
    if (c == NULL)
        return;
    if (c->workers != NULL)
        stop_workers(c);
    g_queue_clear(&c->lru);
    g_hash_table_unref(c->entries);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->done);
    g_cond_clear(&c->work);
    g_free(c);
}

static Entry *new_loading(MrFrameCache *c, guint64 frame, gsize len)
{
    Entry *e = g_new0(Entry, 1);
    e->frame = frame;
    e->len = len;
    g_hash_table_insert(c->entries, &e->frame, e);
    return e;
}

GBytes *mr_frame_cache_get(MrFrameCache *c, guint64 frame, gsize len, GError **error)
{
    mr_mutex_lock(&c->lock);
    gboolean waited = FALSE;
    for (;;) {
        Entry *e = g_hash_table_lookup(c->entries, &frame);
        if (e == NULL) {
            e = new_loading(c, frame, len);
            c->stats.misses++;
            mr_mutex_unlock(&c->lock);
            return load(c, e, TRUE, error);
        }
        if (e->data != NULL) {
            g_queue_unlink(&c->lru, e->lru);
            g_queue_push_head_link(&c->lru, e->lru);
            if (!waited)
                c->stats.hits++;
            GBytes *b = g_bytes_ref(e->data);
            mr_mutex_unlock(&c->lock);
            return b;
        }
        if (!waited)
            c->stats.waits++;
        waited = TRUE;
        mr_cond_wait(&c->done, &c->lock);
    }
}

void mr_frame_cache_prefetch(MrFrameCache *c, guint64 frame, gsize len)
{
    if (c->workers == NULL)
        return;
    mr_mutex_lock(&c->lock);
    if (c->pending >= c->max_pending || g_hash_table_contains(c->entries, &frame)) {
        mr_mutex_unlock(&c->lock);
        return;
    }
    Entry *e = new_loading(c, frame, len);
    c->pending++;
    c->stats.prefetched++;
    g_queue_push_head(&c->queue, e);
    g_cond_signal(&c->work);
    mr_mutex_unlock(&c->lock);
}

void mr_frame_cache_stats(MrFrameCache *c, MrFrameCacheStats *stats)
{
    mr_mutex_lock(&c->lock);
    *stats = c->stats;
    mr_mutex_unlock(&c->lock);
}
