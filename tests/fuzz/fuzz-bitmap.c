/* fuzz-bitmap: the page bitmap (mr-bitmap.c) against a naive model. The input is the
 * bitmap as an image stores it (little-endian words); its first bytes choose the bit count
 * (which need not be a multiple of 64, and may claim fewer bits than the words hold) and
 * the queries. Every next_set/next_clear(_until) answer must match a bit-by-bit scan, and
 * bits past n_bits must never show. */
#include "fuzz-common.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

static gboolean model_test(const guint8 *bytes, gsize n_bytes, guint64 n_bits, guint64 bit)
{
    if (bit >= n_bits || bit / 8 >= n_bytes)
        return FALSE;
    return (bytes[bit / 8] >> (bit % 8)) & 1; /* little-endian words = bit order in bytes */
}

static guint64 model_next(const guint8 *bytes, gsize n_bytes, guint64 n_bits, guint64 from,
                          guint64 limit, gboolean set)
{
    limit = MIN(limit, n_bits);
    for (guint64 b = from; b < limit; b++)
        if (model_test(bytes, n_bytes, n_bits, b) == set)
            return b;
    return limit; /* also when from >= limit: the answer is capped there */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzInput in = {data, size, 0};
    guint16 n_queries = fuzz_u8(&in);
    /* n_bits: up to 8 bits per input byte plus a little (the tail is then zero). */
    guint64 n_bits = fuzz_u32(&in) % (size * 8 + 130);
    gsize n_words = (gsize)((n_bits + 63) / 64);
    gsize avail = size - MIN(size, in.pos);
    guint64 *words = g_new0(guint64, MAX(n_words, 1));
    memcpy(words, data + in.pos, MIN(avail, n_words * 8));
    g_autofree guint8 *model = g_malloc0(n_words * 8 + 1);
    memcpy(model, words, n_words * 8);

    MrBitmap bm;
    mr_bitmap_init_le(&bm, words, n_bits);
    guint64 n_set = 0;
    for (guint64 b = 0; b < n_bits; b++) {
        gboolean m = model_test(model, n_words * 8, n_bits, b);
        if (mr_bitmap_test(&bm, b) != m)
            abort();
        n_set += m;
    }
    if (bm.n_set != n_set || mr_bitmap_test(&bm, n_bits) || mr_bitmap_test(&bm, G_MAXUINT64))
        abort();
    /* Queries from the bytes after the header, and at every word edge. */
    FuzzInput q = {data, size, 5};
    for (guint i = 0; i < (guint)n_queries + 8; i++) {
        guint64 from = i < 8 ? (guint64)i * 61 % (n_bits + 2) : fuzz_u32(&q) % (n_bits + 70);
        guint64 limit = from + fuzz_u16(&q) % 4200;
        if (mr_bitmap_next_set(&bm, from) !=
                model_next(model, n_words * 8, n_bits, from, G_MAXUINT64, TRUE) ||
            mr_bitmap_next_clear(&bm, from) !=
                model_next(model, n_words * 8, n_bits, from, G_MAXUINT64, FALSE) ||
            mr_bitmap_next_set_until(&bm, from, limit) !=
                model_next(model, n_words * 8, n_bits, from, limit, TRUE) ||
            mr_bitmap_next_clear_until(&bm, from, limit) !=
                model_next(model, n_words * 8, n_bits, from, limit, FALSE))
            abort();
    }
    mr_bitmap_clear(&bm);
    return 0;
}
