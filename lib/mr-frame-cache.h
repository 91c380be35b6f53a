/* mr-frame-cache.h: a bounded LRU cache of decoded frames, shared by every reader of a
 * packed image (docs/packed-format.md §6).
 *
 * A frame is named by its index. mr_frame_cache_get() returns its decoded bytes, decoding
 * them on a miss; concurrent getters of a frame that is being decoded wait for that one
 * decode. mr_frame_cache_prefetch() queues frames for the worker threads, so that a
 * sequential reader finds the next frames decoded. The cache knows nothing of zstd: the
 * decode callback does the work (and keeps one decompression context per thread).
 *
 * Memory: the cache holds at most @capacity bytes of frames; a frame a reader still holds
 * (the GBytes it got) outlives its eviction until the reader drops it. */
#pragma once

#include <glib.h>

typedef struct _MrFrameCache MrFrameCache;

/* Decode frame @frame into @out (@len bytes, its decoded size). Called from any thread. */
typedef gboolean (*MrFrameDecodeFunc)(gpointer data, guint64 frame, guint8 *out, gsize len,
                                      GError **error);

typedef struct {
    guint64 hits, misses, waits, prefetched, evicted;
    guint64 bytes, peak_bytes;
} MrFrameCacheStats;

/* A cache without read-ahead workers: mr_frame_cache_prefetch() does nothing until
 * mr_frame_cache_start_workers(). */
MrFrameCache *mr_frame_cache_new(guint64 capacity, MrFrameDecodeFunc decode, gpointer data);
/* Start @n_workers read-ahead threads (once; later calls do nothing). Threads do not survive
 * fork(): a daemon calls this after it has daemonized. */
void mr_frame_cache_start_workers(MrFrameCache *cache, guint n_workers);
void mr_frame_cache_free(MrFrameCache *cache); /* accepts NULL; waits for the workers */

/* The decoded bytes of @frame (@len of them). Returns: a new reference, or NULL with
 * @error set by the decoder (a failed decode is not cached: the next get tries again). */
GBytes *mr_frame_cache_get(MrFrameCache *cache, guint64 frame, gsize len, GError **error);
/* Drop a reference got from mr_frame_cache_get() (g_bytes_unref, told to TSan). */
void mr_frame_release(GBytes *frame);
/* Queue @frame for decoding on a worker unless it is cached or being decoded. */
void mr_frame_cache_prefetch(MrFrameCache *cache, guint64 frame, gsize len);
void mr_frame_cache_stats(MrFrameCache *cache, MrFrameCacheStats *stats);
