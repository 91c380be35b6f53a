/* test-frame-cache.c: lib/mr-frame-cache.c with a fake decoder: one decode for many
 * concurrent getters, LRU eviction within the capacity, failed decodes not cached,
 * read-ahead on the workers. */
#include "test-helpers.h"
#include "mr-frame-cache.h"

#include <string.h>

#define FRAME_LEN 1000

typedef struct {
    gint decodes;    /* atomic */
    gint fail_frame; /* decode of this frame fails (once if fail_once) */
    gboolean fail_once;
    gulong delay_us;
} Fake;

static gboolean fake_decode(gpointer data, guint64 frame, guint8 *out, gsize len, GError **error)
{
    Fake *f = data;
    g_atomic_int_inc(&f->decodes);
    if (f->delay_us)
        g_usleep(f->delay_us);
    if ((gint)frame == f->fail_frame) {
        if (f->fail_once)
            f->fail_frame = -1;
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "frame %d is bad", (int)frame);
        return FALSE;
    }
    memset(out, (int)(frame & 0xff) + 1, len);
    return TRUE;
}

static void assert_frame(GBytes *b, guint64 frame)
{
    assert_non_null(b);
    gsize len;
    const guint8 *p = g_bytes_get_data(b, &len);
    assert_int_equal(len, FRAME_LEN);
    assert_int_equal(p[0], (frame & 0xff) + 1);
    assert_int_equal(p[len - 1], (frame & 0xff) + 1);
}

static void test_hit_and_evict(void **state)
{
    (void)state;
    Fake f = {.fail_frame = -1};
    MrFrameCache *c = mr_frame_cache_new(3 * FRAME_LEN, fake_decode, &f);
    for (guint64 i = 0; i < 5; i++) {
        g_autoptr(GBytes) b = mr_frame_cache_get(c, i, FRAME_LEN, NULL);
        assert_frame(b, i);
    }
    assert_int_equal(f.decodes, 5);
    MrFrameCacheStats st;
    mr_frame_cache_stats(c, &st);
    assert_int_equal(st.bytes, 3 * FRAME_LEN);
    assert_int_equal(st.evicted, 2);
    /* 2, 3, 4 are cached; 4 is the most recent, 2 the least */
    g_autoptr(GBytes) b2 = mr_frame_cache_get(c, 2, FRAME_LEN, NULL);
    assert_frame(b2, 2);
    assert_int_equal(f.decodes, 5);
    g_autoptr(GBytes) b5 = mr_frame_cache_get(c, 5, FRAME_LEN, NULL); /* evicts 3 */
    g_autoptr(GBytes) b3 = mr_frame_cache_get(c, 3, FRAME_LEN, NULL);
    assert_frame(b3, 3);
    assert_int_equal(f.decodes, 7);
    g_autoptr(GBytes) b2b = mr_frame_cache_get(c, 2, FRAME_LEN, NULL); /* still there */
    assert_int_equal(f.decodes, 7);
    mr_frame_cache_stats(c, &st);
    assert_true(st.bytes <= 3 * FRAME_LEN);
    mr_frame_cache_free(c);
    /* references outlive the cache */
    assert_frame(b5, 5);
}

typedef struct {
    MrFrameCache *cache;
    guint64 frame;
    gboolean ok;
} Getter;

static gpointer getter(gpointer data)
{
    Getter *g = data;
    GBytes *b = mr_frame_cache_get(g->cache, g->frame, FRAME_LEN, NULL);
    g->ok = b != NULL && ((const guint8 *)g_bytes_get_data(b, NULL))[7] == (g->frame & 0xff) + 1;
    if (b != NULL)
        g_bytes_unref(b);
    return NULL;
}

static void test_concurrent_getters_share_one_decode(void **state)
{
    (void)state;
    Fake f = {.fail_frame = -1, .delay_us = 100000};
    MrFrameCache *c = mr_frame_cache_new(10 * FRAME_LEN, fake_decode, &f);
    Getter g[8];
    GThread *t[8];
    for (int i = 0; i < 8; i++) {
        g[i] = (Getter){.cache = c, .frame = 42};
        t[i] = g_thread_new("getter", getter, &g[i]);
    }
    for (int i = 0; i < 8; i++) {
        g_thread_join(t[i]);
        assert_true(g[i].ok);
    }
    assert_int_equal(f.decodes, 1);
    MrFrameCacheStats st;
    mr_frame_cache_stats(c, &st);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits + st.waits, 7);
    mr_frame_cache_free(c);
}

static void test_failure_not_cached(void **state)
{
    (void)state;
    Fake f = {.fail_frame = 3, .fail_once = TRUE};
    MrFrameCache *c = mr_frame_cache_new(10 * FRAME_LEN, fake_decode, &f);
    g_autoptr(GError) error = NULL;
    assert_null(mr_frame_cache_get(c, 3, FRAME_LEN, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "frame 3 is bad");
    g_autoptr(GBytes) b = mr_frame_cache_get(c, 3, FRAME_LEN, &error);
    assert_no_error(error);
    assert_frame(b, 3);
    assert_int_equal(f.decodes, 2);
    mr_frame_cache_free(c);
}

static void test_prefetch(void **state)
{
    (void)state;
    Fake f = {.fail_frame = 9};
    MrFrameCache *c = mr_frame_cache_new(100 * FRAME_LEN, fake_decode, &f);
    mr_frame_cache_prefetch(c, 1, FRAME_LEN); /* no workers yet: nothing happens */
    assert_int_equal(f.decodes, 0);
    mr_frame_cache_start_workers(c, 2);
    for (guint64 i = 5; i < 10; i++)
        mr_frame_cache_prefetch(c, i, FRAME_LEN);
    for (guint64 i = 5; i < 9; i++) {
        g_autoptr(GBytes) b = mr_frame_cache_get(c, i, FRAME_LEN, NULL);
        assert_frame(b, i);
    }
    /* frame 9 failed on the worker silently; the reader gets the error */
    g_autoptr(GError) error = NULL;
    assert_null(mr_frame_cache_get(c, 9, FRAME_LEN, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "frame 9");
    MrFrameCacheStats st;
    mr_frame_cache_stats(c, &st);
    assert_int_equal(st.prefetched, 5);
    assert_int_equal(f.decodes, 6); /* 5 prefetches, the failed one again */
    /* prefetching a cached frame is a no-op */
    mr_frame_cache_prefetch(c, 5, FRAME_LEN);
    mr_frame_cache_free(c);
    assert_int_equal(f.decodes, 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_and_evict),
        cmocka_unit_test(test_concurrent_getters_share_one_decode),
        cmocka_unit_test(test_failure_not_cached),
        cmocka_unit_test(test_prefetch),
    };
    return cmocka_run_group_tests_name("frame-cache", tests, NULL, NULL);
}
