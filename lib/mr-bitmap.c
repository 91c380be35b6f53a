/* mr-bitmap.c: see mr-bitmap.h. */
#include "mr-bitmap.h"

static gsize words_for(guint64 n_bits)
{
    return (gsize)((n_bits + 63) / 64);
}

void mr_bitmap_init_le(MrBitmap *bm, guint64 *words, guint64 n_bits)
{
    for (gsize w = 0; w < words_for(n_bits); w++)
        words[w] = GUINT64_FROM_LE(words[w]);
    mr_bitmap_init_host(bm, words, n_bits);
}

void mr_bitmap_init_host(MrBitmap *bm, guint64 *words, guint64 n_bits)
{
    bm->n_bits = n_bits;
    bm->n_words = words_for(n_bits);
    bm->words = words;
    bm->n_set = 0;
    if (n_bits % 64 != 0)
        words[bm->n_words - 1] &= (G_GUINT64_CONSTANT(1) << (n_bits % 64)) - 1;
    bm->n_summary = words_for(bm->n_words);
    bm->summary = g_new0(guint64, MAX(bm->n_summary, 1));
    for (gsize w = 0; w < bm->n_words; w++) {
        if (words[w] == 0)
            continue;
        bm->summary[w / 64] |= G_GUINT64_CONSTANT(1) << (w % 64);
        bm->n_set += (guint64)__builtin_popcountll(words[w]);
    }
}

void mr_bitmap_clear(MrBitmap *bm)
{
    g_clear_pointer(&bm->words, g_free);
    g_clear_pointer(&bm->summary, g_free);
    bm->n_bits = bm->n_words = bm->n_summary = 0;
    bm->n_set = 0;
}

gboolean mr_bitmap_test(const MrBitmap *bm, guint64 bit)
{
    if (bit >= bm->n_bits)
        return FALSE;
    return (bm->words[bit / 64] >> (bit % 64)) & 1;
}

/* The first word in [@w, @end_word) that has a set bit, found through the summary. */
static gsize next_nonzero_word(const MrBitmap *bm, gsize w, gsize end_word)
{
    while (w < end_word) {
        gsize s = w / 64;
        guint64 bits = bm->summary[s] & (~G_GUINT64_CONSTANT(0) << (w % 64));
        if (bits != 0)
            return MIN(s * 64 + (gsize)__builtin_ctzll(bits), end_word);
        w = (s + 1) * 64;
    }
    return end_word;
}

guint64 mr_bitmap_next_set_until(const MrBitmap *bm, guint64 from, guint64 limit)
{
    limit = MIN(limit, bm->n_bits);
    if (from >= limit)
        return limit;
    gsize w = (gsize)(from / 64);
    gsize end_word = (gsize)((limit + 63) / 64);
    guint64 bits = bm->words[w] & (~G_GUINT64_CONSTANT(0) << (from % 64));
    if (bits == 0) {
        w = next_nonzero_word(bm, w + 1, end_word);
        if (w >= end_word)
            return limit;
        bits = bm->words[w];
    }
    return MIN((guint64)w * 64 + (guint64)__builtin_ctzll(bits), limit);
}

guint64 mr_bitmap_next_clear_until(const MrBitmap *bm, guint64 from, guint64 limit)
{
    limit = MIN(limit, bm->n_bits);
    if (from >= limit)
        return limit;
    gsize w = (gsize)(from / 64);
    gsize end_word = (gsize)((limit + 63) / 64);
    guint64 holes = ~bm->words[w] & (~G_GUINT64_CONSTANT(0) << (from % 64));
    /* Full words are data: this loop runs once per 64 data pages, proportional to data. */
    while (holes == 0 && ++w < end_word)
        holes = ~bm->words[w];
    if (w >= end_word)
        return limit;
    return MIN((guint64)w * 64 + (guint64)__builtin_ctzll(holes), limit);
}

guint64 mr_bitmap_next_set(const MrBitmap *bm, guint64 from)
{
    return mr_bitmap_next_set_until(bm, from, bm->n_bits);
}

guint64 mr_bitmap_next_clear(const MrBitmap *bm, guint64 from)
{
    return mr_bitmap_next_clear_until(bm, from, bm->n_bits);
}
