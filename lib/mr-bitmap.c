/* mr-bitmap.c: see mr-bitmap.h. */
#include "mr-bitmap.h"

static gsize words_for(guint64 n_bits)
{
    return (gsize)((n_bits + 63) / 64);
}

void mr_bitmap_init_le(MrBitmap *bm, guint64 *words, guint64 n_bits)
{
    bm->n_bits = n_bits;
    bm->n_words = words_for(n_bits);
    bm->words = words;
    bm->n_set = 0;
    for (gsize w = 0; w < bm->n_words; w++)
        words[w] = GUINT64_FROM_LE(words[w]);
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

/* The first word at or after @w that has a set bit, found through the summary. */
static gsize next_nonzero_word(const MrBitmap *bm, gsize w)
{
    while (w < bm->n_words) {
        gsize s = w / 64;
        guint64 bits = bm->summary[s] & (~G_GUINT64_CONSTANT(0) << (w % 64));
        if (bits != 0)
            return s * 64 + (gsize)__builtin_ctzll(bits);
        w = (s + 1) * 64;
    }
    return bm->n_words;
}

guint64 mr_bitmap_next_set(const MrBitmap *bm, guint64 from)
{
    if (from >= bm->n_bits)
        return bm->n_bits;
    gsize w = (gsize)(from / 64);
    guint64 bits = bm->words[w] & (~G_GUINT64_CONSTANT(0) << (from % 64));
    if (bits == 0) {
        w = next_nonzero_word(bm, w + 1);
        if (w >= bm->n_words)
            return bm->n_bits;
        bits = bm->words[w];
    }
    return MIN((guint64)w * 64 + (guint64)__builtin_ctzll(bits), bm->n_bits);
}

guint64 mr_bitmap_next_clear(const MrBitmap *bm, guint64 from)
{
    if (from >= bm->n_bits)
        return bm->n_bits;
    gsize w = (gsize)(from / 64);
    guint64 holes = ~bm->words[w] & (~G_GUINT64_CONSTANT(0) << (from % 64));
    /* Full words are data: this loop runs once per 64 data pages, proportional to data. */
    while (holes == 0 && ++w < bm->n_words)
        holes = ~bm->words[w];
    if (w >= bm->n_words)
        return bm->n_bits;
    return MIN((guint64)w * 64 + (guint64)__builtin_ctzll(holes), bm->n_bits);
}
