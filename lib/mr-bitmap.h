/* mr-bitmap.h: a read-only page bitmap with a one-bit-per-word summary.
 *
 * A 64 GiB guest has 16 M pages: its bitmap is 2 MiB and a SEEK_DATA that scanned it word
 * by word would cost time proportional to guest size. The summary (bit w set = word w has
 * a set bit) lets a next-set search skip 4096 empty pages per summary bit checked, so a full
 * SEEK_DATA/SEEK_HOLE walk costs time proportional to the data, not to the RAM size. */
#pragma once

#include <glib.h>

typedef struct {
    guint64 n_bits;
    gsize n_words;
    guint64 *words; /* bit i = words[i / 64] >> (i % 64) & 1 */
    gsize n_summary;
    guint64 *summary; /* bit w = (words[w] != 0) */
    guint64 n_set;
} MrBitmap;

/* mr_bitmap_init_le: take ownership of @words (g_malloc'd, n = ceil(n_bits / 64) words) that
 * hold little-endian 64-bit words as stored by QEMU (qemu-save-formats.md §5.3: host-endian
 * unsigned longs, little-endian on every host that writes them here). Bits past @n_bits are
 * cleared: a hostile image cannot make pages exist beyond the block. */
void mr_bitmap_init_le(MrBitmap *bm, guint64 *words, guint64 n_bits);
/* The same for words already in host order (bitmaps mramfs derives itself). */
void mr_bitmap_init_host(MrBitmap *bm, guint64 *words, guint64 n_bits);
void mr_bitmap_clear(MrBitmap *bm);

gboolean mr_bitmap_test(const MrBitmap *bm, guint64 bit);
/* The first set (clear) bit at or after @from, or n_bits if there is none. */
guint64 mr_bitmap_next_set(const MrBitmap *bm, guint64 from);
guint64 mr_bitmap_next_clear(const MrBitmap *bm, guint64 from);
/* The same, but looking no further than @limit (returned, capped at n_bits, if nothing is
 * found before it): a read of 128 KiB must not scan a 64 GiB run to its end. */
guint64 mr_bitmap_next_set_until(const MrBitmap *bm, guint64 from, guint64 limit);
guint64 mr_bitmap_next_clear_until(const MrBitmap *bm, guint64 from, guint64 limit);
