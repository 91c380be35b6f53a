/* test-bitmap.c: lib/mr-bitmap.c — the page bitmap and its summary. */
#include "test-helpers.h"

#include <string.h>

/* A bitmap of @n_bits with the listed bits set, built through on-disk bytes (LE words). */
static void bitmap_from_bits(MrBitmap *bm, guint64 n_bits, const guint64 *bits, gsize n)
{
    gsize n_words = (gsize)((n_bits + 63) / 64);
    g_autofree guint8 *bytes = g_malloc0(MAX(n_words, 1) * 8);
    for (gsize i = 0; i < n; i++)
        bytes[bits[i] / 8] |= (guint8)(1u << (bits[i] % 8));
    guint64 *words = g_new(guint64, MAX(n_words, 1));
    memcpy(words, bytes, n_words * 8);
    mr_bitmap_init_le(bm, words, n_bits);
}

/* A bitmap of @n_bits with bits [first, first + count) set. */
static void bitmap_from_range(MrBitmap *bm, guint64 n_bits, guint64 first, guint64 count)
{
    gsize n_words = (gsize)((n_bits + 63) / 64);
    g_autofree guint8 *bytes = g_malloc0(MAX(n_words, 1) * 8);
    for (guint64 b = first; b < first + count; b++)
        bytes[b / 8] |= (guint8)(1u << (b % 8));
    guint64 *words = g_new(guint64, MAX(n_words, 1));
    memcpy(words, bytes, n_words * 8);
    mr_bitmap_init_le(bm, words, n_bits);
}

/* The bytes as QEMU writes them on a little-endian host: page n = bit n%8 of byte n/8. */
static void test_init_le_byte_order(void **state)
{
    (void)state;
    const guint8 bytes[16] = {0x41, 0,    0, 0, 0, 0, 0, 0x80, /* pages 0, 6, 63 */
                              0x01, 0x02, 0, 0, 0, 0, 0, 0};   /* pages 64, 73 */
    guint64 *words = g_new(guint64, 2);
    memcpy(words, bytes, sizeof bytes);
    MrBitmap bm;
    mr_bitmap_init_le(&bm, words, 128);
    assert_int_equal(bm.n_bits, 128);
    assert_int_equal(bm.n_words, 2);
    assert_int_equal(bm.n_set, 5);
    /* words are host order after init */
    assert_int_equal(bm.words[0], G_GUINT64_CONSTANT(0x8000000000000041));
    assert_int_equal(bm.words[1], G_GUINT64_CONSTANT(0x0201));
    for (guint64 b = 0; b < 128; b++) {
        gboolean want = b == 0 || b == 6 || b == 63 || b == 64 || b == 73;
        assert_int_equal(mr_bitmap_test(&bm, b), want);
    }
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_set(&bm, 1), 6);
    assert_int_equal(mr_bitmap_next_set(&bm, 7), 63);
    assert_int_equal(mr_bitmap_next_set(&bm, 64), 64);
    assert_int_equal(mr_bitmap_next_set(&bm, 65), 73);
    assert_int_equal(mr_bitmap_next_set(&bm, 74), 128);
    mr_bitmap_clear(&bm);
    assert_null(bm.words);
    assert_null(bm.summary);
    assert_int_equal(bm.n_bits, 0);
    assert_int_equal(bm.n_set, 0);
}

/* Bits at or past n_bits are cleared: a hostile image cannot add pages. */
static void test_trailing_bits_masked(void **state)
{
    (void)state;
    guint64 *words = g_new(guint64, 2);
    words[0] = GUINT64_TO_LE(G_GUINT64_CONSTANT(0x1));
    words[1] = ~G_GUINT64_CONSTANT(0); /* bits 64..127, only 64..69 are in range */
    MrBitmap bm;
    mr_bitmap_init_le(&bm, words, 70);
    assert_int_equal(bm.words[1], 0x3f);
    assert_int_equal(bm.n_set, 7);
    assert_true(mr_bitmap_test(&bm, 69));
    assert_false(mr_bitmap_test(&bm, 70));
    assert_false(mr_bitmap_test(&bm, 127));
    assert_false(mr_bitmap_test(&bm, G_MAXUINT64));
    assert_int_equal(mr_bitmap_next_set(&bm, 1), 64);
    assert_int_equal(mr_bitmap_next_set(&bm, 70), 70);
    assert_int_equal(mr_bitmap_next_set(&bm, 1000), 70);
    assert_int_equal(mr_bitmap_next_clear(&bm, 64), 70);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 1);
    mr_bitmap_clear(&bm);

    /* only out-of-range bits set: nothing is left, and the summary agrees */
    words = g_new(guint64, 1);
    words[0] = GUINT64_TO_LE(~G_GUINT64_CONSTANT(0) << 10);
    mr_bitmap_init_le(&bm, words, 10);
    assert_int_equal(bm.n_set, 0);
    assert_int_equal(bm.words[0], 0);
    assert_int_equal(bm.summary[0], 0);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 10);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_clear(&bm, 9), 9);
    mr_bitmap_clear(&bm);
}

static void test_word_boundaries(void **state)
{
    (void)state;
    const guint64 bits[] = {63, 64, 127, 128, 191};
    MrBitmap bm;
    bitmap_from_bits(&bm, 256, bits, G_N_ELEMENTS(bits));
    assert_int_equal(bm.n_set, 5);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 63);
    assert_int_equal(mr_bitmap_next_set(&bm, 63), 63);
    assert_int_equal(mr_bitmap_next_set(&bm, 64), 64);
    assert_int_equal(mr_bitmap_next_set(&bm, 65), 127);
    assert_int_equal(mr_bitmap_next_set(&bm, 128), 128);
    assert_int_equal(mr_bitmap_next_set(&bm, 129), 191);
    assert_int_equal(mr_bitmap_next_set(&bm, 192), 256);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_clear(&bm, 63), 65);
    assert_int_equal(mr_bitmap_next_clear(&bm, 64), 65);
    assert_int_equal(mr_bitmap_next_clear(&bm, 127), 129);
    assert_int_equal(mr_bitmap_next_clear(&bm, 191), 192);
    assert_int_equal(mr_bitmap_next_clear(&bm, 255), 255);
    assert_int_equal(mr_bitmap_next_clear(&bm, 256), 256);
    mr_bitmap_clear(&bm);

    /* a run of full words ending exactly at a word boundary */
    bitmap_from_range(&bm, 320, 64, 128);
    assert_int_equal(mr_bitmap_next_clear(&bm, 64), 192);
    assert_int_equal(mr_bitmap_next_clear(&bm, 100), 192);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 64);
    assert_int_equal(mr_bitmap_next_set(&bm, 192), 320);
    mr_bitmap_clear(&bm);
}

/* One summary word covers 64 words = 4096 bits: searches must cross summary words. */
static void test_summary_boundaries(void **state)
{
    (void)state;
    const guint64 per = 64 * 64;
    const guint64 bits[] = {per - 1, per, 3 * per - 1, 3 * per, 5 * per + 17};
    MrBitmap bm;
    bitmap_from_bits(&bm, 6 * per + 5, bits, G_N_ELEMENTS(bits));
    assert_int_equal(bm.n_summary, 7); /* 385 words */
    assert_int_equal(bm.summary[0], G_GUINT64_CONSTANT(1) << 63);
    assert_int_equal(bm.summary[1], 1);
    assert_int_equal(bm.summary[2], G_GUINT64_CONSTANT(1) << 63);
    assert_int_equal(bm.summary[3], 1);
    assert_int_equal(bm.summary[4], 0);
    assert_int_equal(bm.summary[5], 1);
    assert_int_equal(bm.summary[6], 0);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), per - 1);
    assert_int_equal(mr_bitmap_next_set(&bm, per), per);
    assert_int_equal(mr_bitmap_next_set(&bm, per + 1), 3 * per - 1);
    assert_int_equal(mr_bitmap_next_set(&bm, 3 * per), 3 * per);
    assert_int_equal(mr_bitmap_next_set(&bm, 3 * per + 1), 5 * per + 17);
    assert_int_equal(mr_bitmap_next_set(&bm, 5 * per + 18), 6 * per + 5);
    assert_int_equal(mr_bitmap_next_clear(&bm, per - 1), per + 1);
    mr_bitmap_clear(&bm);

    /* full words across a summary boundary */
    bitmap_from_range(&bm, 3 * per, per - 64, 2 * 64 + 3);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), per - 64);
    assert_int_equal(mr_bitmap_next_clear(&bm, per - 64), per + 64 + 3);
    assert_int_equal(mr_bitmap_next_set(&bm, per + 67), 3 * per);
    assert_int_equal(bm.n_set, 131);
    mr_bitmap_clear(&bm);

    /* exactly 64 words: one summary word, fully used */
    const guint64 last[] = {per - 1};
    bitmap_from_bits(&bm, per, last, 1);
    assert_int_equal(bm.n_summary, 1);
    assert_int_equal(bm.summary[0], G_GUINT64_CONSTANT(1) << 63);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), per - 1);
    assert_int_equal(mr_bitmap_next_clear(&bm, per - 1), per);
    mr_bitmap_clear(&bm);
}

static void test_empty(void **state)
{
    (void)state;
    MrBitmap bm;
    mr_bitmap_init_le(&bm, NULL, 0); /* a block of 0 pages */
    assert_int_equal(bm.n_words, 0);
    assert_int_equal(bm.n_set, 0);
    assert_false(mr_bitmap_test(&bm, 0));
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 0);
    mr_bitmap_clear(&bm);

    bitmap_from_bits(&bm, 1000, NULL, 0);
    assert_int_equal(bm.n_set, 0);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 1000);
    assert_int_equal(mr_bitmap_next_set(&bm, 999), 1000);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_clear(&bm, 999), 999);
    assert_int_equal(mr_bitmap_next_clear(&bm, 1000), 1000);
    mr_bitmap_clear(&bm);
}

static void test_full(void **state)
{
    (void)state;
    MrBitmap bm;
    bitmap_from_range(&bm, 1000, 0, 1000);
    assert_int_equal(bm.n_set, 1000);
    assert_true(mr_bitmap_test(&bm, 0));
    assert_true(mr_bitmap_test(&bm, 999));
    assert_false(mr_bitmap_test(&bm, 1000));
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_set(&bm, 999), 999);
    assert_int_equal(mr_bitmap_next_set(&bm, 1000), 1000);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 1000);
    assert_int_equal(mr_bitmap_next_clear(&bm, 999), 1000);
    mr_bitmap_clear(&bm);

    /* full, n_bits a multiple of 64 */
    bitmap_from_range(&bm, 128, 0, 128);
    assert_int_equal(bm.n_set, 128);
    assert_int_equal(mr_bitmap_next_clear(&bm, 5), 128);
    mr_bitmap_clear(&bm);
}

static void test_single_last_bit(void **state)
{
    (void)state;
    const guint64 bit[] = {999};
    MrBitmap bm;
    bitmap_from_bits(&bm, 1000, bit, 1);
    assert_int_equal(bm.n_set, 1);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 999);
    assert_int_equal(mr_bitmap_next_set(&bm, 999), 999);
    assert_int_equal(mr_bitmap_next_clear(&bm, 999), 1000);
    assert_int_equal(mr_bitmap_next_clear(&bm, 998), 998);
    assert_true(mr_bitmap_test(&bm, 999));
    assert_false(mr_bitmap_test(&bm, 998));
    mr_bitmap_clear(&bm);

    const guint64 one[] = {0};
    bitmap_from_bits(&bm, 1, one, 1);
    assert_int_equal(bm.n_set, 1);
    assert_int_equal(mr_bitmap_next_set(&bm, 0), 0);
    assert_int_equal(mr_bitmap_next_clear(&bm, 0), 1);
    mr_bitmap_clear(&bm);
}

/* Every (from) position against a brute-force scan, for an n_bits that is not a multiple
 * of 64 and a pattern with runs ending on and off word boundaries. */
static void test_against_brute_force(void **state)
{
    (void)state;
    const guint64 n_bits = 64 * 70 + 37;
    g_autofree guint64 *set = g_new(guint64, n_bits);
    gsize n = 0;
    for (guint64 b = 0; b < n_bits; b++)
        if ((b >= 60 && b < 200) || b % 97 == 3 || (b >= 4090 && b < 4100) || b == n_bits - 1)
            set[n++] = b;
    MrBitmap bm;
    bitmap_from_bits(&bm, n_bits, set, n);
    assert_int_equal(bm.n_set, n);
    for (guint64 from = 0; from <= n_bits + 1; from++) {
        guint64 ns = from, nc = from;
        while (ns < n_bits && !mr_bitmap_test(&bm, ns))
            ns++;
        while (nc < n_bits && mr_bitmap_test(&bm, nc))
            nc++;
        assert_int_equal(mr_bitmap_next_set(&bm, from), MIN(ns, n_bits));
        assert_int_equal(mr_bitmap_next_clear(&bm, from), MIN(nc, n_bits));
    }
    mr_bitmap_clear(&bm);
}

/* 64 GiB of 4 KiB pages = 16 M bits, 5 set: walking the data visits 5 bits, and each
 * next_set skips the empty summary words (a word-by-word scan would not be caught here
 * by a timer, so we count calls and check positions). */
static void test_sparse_16m(void **state)
{
    (void)state;
    const guint64 n_bits = G_GUINT64_CONSTANT(16) << 20;
    const guint64 bits[] = {1, 4097 * 64 - 1, 8000000, 12345678, n_bits - 1};
    MrBitmap bm;
    bitmap_from_bits(&bm, n_bits, bits, G_N_ELEMENTS(bits));
    assert_int_equal(bm.n_set, 5);
    assert_int_equal(bm.n_summary, 4096);
    guint iterations = 0;
    gsize found = 0;
    for (guint64 b = mr_bitmap_next_set(&bm, 0); b < n_bits; b = mr_bitmap_next_set(&bm, b + 1)) {
        assert_true(found < G_N_ELEMENTS(bits));
        assert_int_equal(b, bits[found]);
        found++;
        iterations++;
    }
    assert_int_equal(found, 5);
    assert_int_equal(iterations, 5);
    /* SEEK_HOLE-style walk: each data bit is followed by a hole, the last by the end */
    for (gsize i = 0; i < G_N_ELEMENTS(bits); i++)
        assert_int_equal(mr_bitmap_next_clear(&bm, bits[i]), MIN(bits[i] + 1, n_bits));
    /* many searches from inside long empty stretches, each must land on the next bit */
    for (guint64 from = 2; from < n_bits; from += 65537) {
        guint64 want = n_bits;
        for (gsize i = 0; i < G_N_ELEMENTS(bits); i++)
            if (bits[i] >= from) {
                want = bits[i];
                break;
            }
        assert_int_equal(mr_bitmap_next_set(&bm, from), want);
    }
    mr_bitmap_clear(&bm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_le_byte_order),
        cmocka_unit_test(test_trailing_bits_masked),
        cmocka_unit_test(test_word_boundaries),
        cmocka_unit_test(test_summary_boundaries),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_single_last_bit),
        cmocka_unit_test(test_against_brute_force),
        cmocka_unit_test(test_sparse_16m),
    };
    return cmocka_run_group_tests_name("bitmap", tests, NULL, NULL);
}
