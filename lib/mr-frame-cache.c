/* mr-frame-cache.c: bounded LRU of decoded frames with in-flight dedupe and read-ahead
 * workers (mr-frame-cache.h). One mutex guards the table and the LRU list; decoding runs
 * outside it. An entry is either loading (owned by the thread that created it, which alone
 * finishes or removes it) or ready (in the LRU list, evictable). */
#include "mr-frame-cache.h"

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
    GThreadPool *pool; /* read-ahead workers, or NULL */
    guint pending;     /* prefetches queued or running */
    guint max_pending;
    MrFrameDecodeFunc decode;
    gpointer data;
    MrFrameCacheStats stats;
};

static void entry_free(gpointer p)
{
    Entry *e = p;
    if (e->data != NULL)
        g_bytes_unref(e->data);
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
    g_mutex_lock(&c->lock);
    if (ok) {
        e->data = g_bytes_new_take(buf, e->len);
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
    g_mutex_unlock(&c->lock);
    return result;
}

static void worker(gpointer job, gpointer user_data)
{
    MrFrameCache *c = user_data;
    load(c, job, FALSE, NULL); /* a failure shows when a reader asks for the frame */
    g_mutex_lock(&c->lock);
    c->pending--;
    g_mutex_unlock(&c->lock);
}

MrFrameCache *mr_frame_cache_new(guint64 capacity, MrFrameDecodeFunc decode, gpointer data)
{
    MrFrameCache *c = g_new0(MrFrameCache, 1);
    g_mutex_init(&c->lock);
    g_cond_init(&c->done);
    c->entries = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, entry_free);
    g_queue_init(&c->lru);
    c->capacity = capacity;
    c->decode = decode;
    c->data = data;
    return c;
}

void mr_frame_cache_start_workers(MrFrameCache *c, guint n_workers)
{
    if (c->pool != NULL || n_workers == 0)
        return;
    g_mutex_lock(&c->lock);
    c->max_pending = 4 * n_workers;
    g_mutex_unlock(&c->lock);
    /* Exclusive: our own threads, not GLib's shared ones (which other code may have made
     * before a fork). */
    c->pool = g_thread_pool_new(worker, c, (gint)n_workers, TRUE, NULL);
}

void mr_frame_cache_free(MrFrameCache *c)
{
    if (c == NULL)
        return;
    if (c->pool != NULL)
        g_thread_pool_free(c->pool, FALSE, TRUE); /* finish what is queued: entries are ours */
    g_queue_clear(&c->lru);
    g_hash_table_unref(c->entries);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->done);
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
    g_mutex_lock(&c->lock);
    gboolean waited = FALSE;
    for (;;) {
        Entry *e = g_hash_table_lookup(c->entries, &frame);
        if (e == NULL) {
            e = new_loading(c, frame, len);
            c->stats.misses++;
            g_mutex_unlock(&c->lock);
            return load(c, e, TRUE, error);
        }
        if (e->data != NULL) {
            g_queue_unlink(&c->lru, e->lru);
            g_queue_push_head_link(&c->lru, e->lru);
            if (!waited)
                c->stats.hits++;
            GBytes *b = g_bytes_ref(e->data);
            g_mutex_unlock(&c->lock);
            return b;
        }
        if (!waited)
            c->stats.waits++;
        waited = TRUE;
        g_cond_wait(&c->done, &c->lock);
    }
}

void mr_frame_cache_prefetch(MrFrameCache *c, guint64 frame, gsize len)
{
    if (c->pool == NULL)
        return;
    g_mutex_lock(&c->lock);
    if (c->pending >= c->max_pending || g_hash_table_contains(c->entries, &frame)) {
        g_mutex_unlock(&c->lock);
        return;
    }
    Entry *e = new_loading(c, frame, len);
    c->pending++;
    c->stats.prefetched++;
    g_mutex_unlock(&c->lock);
    g_thread_pool_push(c->pool, e, NULL);
}

void mr_frame_cache_stats(MrFrameCache *c, MrFrameCacheStats *stats)
{
    g_mutex_lock(&c->lock);
    *stats = c->stats;
    g_mutex_unlock(&c->lock);
}
