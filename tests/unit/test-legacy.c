/* test-legacy.c: lib/mr-fmt-legacy.c (sequential, non-mapped-ram streams) and its page
 * index (lib/mr-index-cache.c), through synthetic legacy images (image-builder.c, legacy
 * mode). What a reader must get right (qemu-save-formats.md §4, §6): the last record for a
 * page wins, CONTINUE names the previous record's block across sections, XBZRLE deltas
 * replay onto whatever the page held, and every malformed record fails cleanly. The index
 * tests use real files: the cache key is the file's identity (memory sources have none). */
#include "test-helpers.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PS 4096u

static char *cache_home; /* $XDG_CACHE_HOME for this run: a temporary directory */

/* Memory images never get an index file here (but see test_memory_source_default_index). */
static const MrOpenOptions no_index = {.index_path = ""};

static IbBlock *spec_block(const IbSpec *s, guint i)
{
    return g_ptr_array_index(s->blocks, i);
}

/* pc.ram 16 pages, /rom@etc/acpi/tables 2 pages, empty 3 pages; no records yet. */
static void three_blocks(IbSpec *s)
{
    ib_spec_init_legacy(s);
    ib_add_block(s, "pc.ram", 16 * PS, PS);
    ib_add_block(s, "/rom@etc/acpi/tables", 2 * PS, PS);
    ib_add_block(s, "empty", 3 * PS, PS);
}

/* A stream shaped like QEMU's: START (block list, EOS), two PARTs, COMMAND, END.
 * pc.ram final: 0,1 data; 2 zero; 5 data; 8,9 data; 10 zero after data; 15 data (END);
 * tables: 1 data, 0 zero (END). */
static void standard_spec(IbSpec *s)
{
    three_blocks(s);
    ib_rec_eos(s);
    ib_rec_part(s);
    ib_rec_page(s, "pc.ram", 0, 1);
    ib_rec_page(s, NULL, 1, 2);
    ib_rec_zero(s, NULL, 2);
    ib_rec_page(s, NULL, 5, 3);
    ib_rec_page(s, "/rom@etc/acpi/tables", 1, 4);
    ib_rec_page(s, "pc.ram", 8, 5);
    ib_rec_page(s, NULL, 10, 9);
    ib_rec_eos(s);
    ib_rec_part(s);
    ib_rec_page(s, NULL, 9, 6); /* CONTINUE across sections */
    ib_rec_zero(s, NULL, 10);   /* zero after data: a hole */
    ib_rec_eos(s);
    ib_rec_command(s);
    ib_rec_end(s);
    ib_rec_page(s, NULL, 15, 7);
    ib_rec_zero(s, "/rom@etc/acpi/tables", 0);
    ib_rec_eos(s);
}

static MrImage *open_ok(GBytes *bytes)
{
    return assert_open_ok_opts(bytes, &no_index);
}

#define open_fails(arr, code, word) assert_open_fails_opts((arr), &no_index, (code), (word))

/* The first page of PAGE record @seed, as written by ib_rec_page. */
static void seed_page(guint8 seed, guint8 *out, gsize ps)
{
    for (gsize i = 0; i < ps; i++)
        out[i] = ib_seed_byte(seed, i);
}

/* Block @index of @img holds page @page = @expected (NULL: zeros), read in one call. */
#define assert_page(img, index, page, expected)                                                    \
    _assert_page((img), (index), (page), (expected), __FILE__, __LINE__)
static void _assert_page(const MrImage *img, guint index, guint64 page, const guint8 *expected,
                         const char *file, int line)
{
    const MrBlock *blk = mr_image_block(img, index);
    guint32 ps = mr_block_page_size(blk);
    g_autofree guint8 *buf = g_malloc(ps);
    g_autofree guint8 *zeros = g_malloc0(ps);
    GError *error = NULL;
    memset(buf, 0x55, ps);
    gssize n = mr_block_pread(blk, buf, ps, page * ps, &error);
    _assert_no_error(error, file, line);
    _assert_int_equal((LargestIntegralType)n, ps, file, line);
    _assert_bytes_at(buf, 0, expected ? expected : zeros, ps, file, line);
}

/* Everything @img serves equals the replay of @s's records: bytes of every block (whole,
 * page by page, and straddling page edges), data page counts, and SEEK_DATA/SEEK_HOLE from
 * every page start and from inside every page. */
#define assert_matches_model(s, img) _assert_matches_model((s), (img), __FILE__, __LINE__)
static void _assert_matches_model(const IbSpec *s, const MrImage *img, const char *file, int line)
{
    guint32 ps = ib_legacy_page_size(s);
    _assert_int_equal(mr_image_n_blocks(img), s->blocks->len, file, line);
    for (guint i = 0; i < s->blocks->len; i++) {
        const IbBlock *b = spec_block(s, i);
        const MrBlock *blk = mr_image_block(img, i);
        guint64 n = b->used_length / ps, data = 0;
        gsize len;
        const guint8 *id = mr_block_idstr(blk, &len);
        _assert_int_equal(len, b->idstr_len, file, line);
        _assert_bytes_at(id, 0, b->idstr, len, file, line);
        _assert_int_equal(mr_block_size(blk), b->used_length, file, line);
        _assert_int_equal(mr_block_page_size(blk), ps, file, line);
        _assert_int_equal(mr_block_bitmap_offset(blk), 0, file, line);
        _assert_int_equal(mr_block_pages_offset(blk), 0, file, line);
        for (guint64 p = 0; p < n; p++)
            data += b->data[p] ? 1 : 0;
        _assert_int_equal(mr_block_data_pages(blk), data, file, line);
        _assert_block_reads(s, img, i, 0, b->used_length, file, line);
        for (guint64 p = 0; p < n; p++) {
            _assert_block_reads(s, img, i, p * ps, ps, file, line);
            if (p > 0)
                _assert_block_reads(s, img, i, p * ps - 7, 2 * ps - 100, file, line);
            for (guint64 off = p * ps; off <= p * ps + 1; off++) {
                guint64 q = p;
                while (q < n && !b->data[q])
                    q++;
                if (q == n)
                    _assert_seek_no_more(blk, off, MR_SEEK_DATA, file, line);
                else
                    _assert_extent_equal(blk, off, MR_SEEK_DATA, q == p ? off : q * ps, file, line);
                q = p;
                while (q < n && b->data[q])
                    q++;
                _assert_extent_equal(blk, off, MR_SEEK_HOLE, q == p ? off : q * ps, file, line);
            }
        }
        _assert_seek_no_more(blk, b->used_length, MR_SEEK_DATA, file, line);
        _assert_seek_no_more(blk, b->used_length, MR_SEEK_HOLE, file, line);
    }
}

/* The record counts of the description, but for `resent` (test_resent_count). */
#define assert_counts(img, pages, zeros, xbzrle)                                                   \
    do {                                                                                           \
        assert_int_equal((img)->legacy.page_records, (pages));                                     \
        assert_int_equal((img)->legacy.zero_records, (zeros));                                     \
        assert_int_equal((img)->legacy.xbzrle_records, (xbzrle));                                  \
    } while (0)

/* ---- a small XBZRLE encoder, QEMU's format (migration/xbzrle.c xbzrle_encode_buffer):
 * runs of (ULEB128 unchanged count, ULEB128 changed count, changed bytes); the first
 * unchanged count may be 0, a trailing unchanged run is not written, and an unchanged
 * page encodes to nothing. ---- */

static gsize put_uleb(guint8 *out, guint32 v)
{
    g_assert(v < (1u << 14));
    if (v < 0x80) {
        out[0] = (guint8)v;
        return 1;
    }
    out[0] = (guint8)(0x80 | (v & 0x7f));
    out[1] = (guint8)(v >> 7);
    return 2;
}

static gsize xbzrle_encode(const guint8 *old, const guint8 *new, gsize n, guint8 *out)
{
    gsize i = 0, d = 0;
    while (i < n) {
        guint32 z = 0, nz = 0;
        while (i < n && old[i] == new[i]) {
            i++;
            z++;
        }
        if (i == n)
            break;
        d += put_uleb(out + d, z);
        gsize start = i;
        while (i < n && old[i] != new[i]) {
            i++;
            nz++;
        }
        d += put_uleb(out + d, nz);
        memcpy(out + d, new + start, nz);
        d += nz;
    }
    return d;
}

/* ---- basics ---- */

static void test_standard(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_string_equal(mr_image_format(img), "legacy");
    assert_string_equal(mr_image_container(img), "qemu");
    assert_string_equal(mr_image_machine_type(img), "pc-i440fx-10.0");
    assert_int_equal(mr_image_capabilities(img)->len, 0);
    assert_true(img->has_vmdesc);
    assert_int_equal(img->vmdesc_offset, s.vmdesc_offset + 5);
    assert_int_equal(img->vmdesc_len, strlen(s.vmdesc_json));
    assert_int_equal(mr_image_n_blocks(img), 3);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 6); /* 0 1 5 8 9 15 */
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 1)), 1);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 2)), 0);
    assert_counts(img, 8, 3, 0);
    /* the model, and the pattern itself for a few pages */
    assert_matches_model(&s, img);
    guint8 page[PS];
    seed_page(6, page, PS);
    assert_page(img, 0, 9, page);
    seed_page(7, page, PS);
    assert_page(img, 0, 15, page);
    assert_page(img, 0, 10, NULL);
    seed_page(4, page, PS);
    assert_page(img, 1, 1, page);
    /* a PAGE record's bytes are served from its place in the file */
    const guint8 *raw = g_bytes_get_data(bytes, NULL);
    guint8 buf[64];
    assert_int_equal(mr_block_pread(mr_image_block(img, 0), buf, 64, 5 * PS + 100, NULL), 64);
    assert_memory_equal(buf, raw + ib_record(&s, 5)->data_offset + 100, 64);
    ib_spec_clear(&s);
}

/* pread across pages whose bytes live in unrelated places (PAGE records far apart, a
 * decoded XBZRLE page, holes): one call, exact bytes, short only at the end. */
static void test_pread_across_slots(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 8 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 3, 30);
    ib_rec_page(&s, NULL, 1, 10);
    ib_rec_page(&s, NULL, 2, 20);
    ib_rec_page(&s, NULL, 7, 70);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    guint8 old[PS], new[PS], delta[2 * PS];
    seed_page(20, old, PS);
    memcpy(new, old, PS);
    memset(new + 4000, 0x42, 50);
    gsize dl = xbzrle_encode(old, new, PS, delta);
    ib_rec_xbzrle(&s, NULL, 2, delta, dl);
    ib_rec_page(&s, NULL, 0, 5);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_matches_model(&s, img);
    assert_page(img, 0, 2, new);
    for (guint64 off = 0; off < 8 * PS; off += 997)
        for (gsize len = 1; len < 5 * PS; len += 1733)
            assert_block_reads(&s, img, 0, off, len);
    assert_block_reads(&s, img, 0, 8 * PS - 5, 100); /* short at the end */
    ib_spec_clear(&s);
}

/* ---- last record wins ---- */

static void test_last_record_wins(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 8 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 1, 11); /* PAGE then ZERO: a hole */
    ib_rec_zero(&s, NULL, 2);         /* ZERO then PAGE: data */
    ib_rec_page(&s, NULL, 3, 31);     /* PAGE twice: the second bytes */
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_zero(&s, NULL, 1);
    ib_rec_page(&s, NULL, 2, 22);
    ib_rec_page(&s, NULL, 3, 32);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, NULL, 5, 51); /* PAGE, ZERO, PAGE: data again */
    ib_rec_zero(&s, NULL, 5);
    ib_rec_page(&s, NULL, 5, 52);
    ib_rec_zero(&s, NULL, 6); /* ZERO, ZERO: a hole */
    ib_rec_zero(&s, NULL, 6);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    /* the stale bytes of page 1 are really in the file */
    assert_int_equal(arr->data[ib_record(&s, 2)->data_offset], ib_seed_byte(11, 0));
    g_autoptr(GBytes) bytes = g_bytes_new(arr->data, arr->len);
    g_autoptr(MrImage) img = open_ok(bytes);
    const MrBlock *blk = mr_image_block(img, 0);
    guint8 page[PS];
    assert_page(img, 0, 1, NULL);
    seed_page(22, page, PS);
    assert_page(img, 0, 2, page);
    seed_page(32, page, PS);
    assert_page(img, 0, 3, page);
    seed_page(52, page, PS);
    assert_page(img, 0, 5, page);
    assert_page(img, 0, 6, NULL);
    assert_int_equal(mr_block_data_pages(blk), 3); /* 2 3 5 */
    assert_extent_equal(blk, 0, MR_SEEK_DATA, 2 * PS);
    assert_extent_equal(blk, PS, MR_SEEK_DATA, 2 * PS);
    assert_extent_equal(blk, 2 * PS, MR_SEEK_HOLE, 4 * PS);
    assert_extent_equal(blk, 4 * PS, MR_SEEK_DATA, 5 * PS);
    assert_extent_equal(blk, 5 * PS, MR_SEEK_HOLE, 6 * PS);
    assert_seek_no_more(blk, 6 * PS, MR_SEEK_DATA);
    assert_counts(img, 6, 5, 0);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* `resent` counts records for a page that an earlier record already sent, whatever kind
 * either record is (qemu-image-recipes.md §9.1: 141,760 records − 135,314 pages = 6,446). */
static void test_resent_count(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 8 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1); /* sent once: not resent */
    ib_rec_page(&s, NULL, 1, 1);     /* PAGE, PAGE: 1 */
    ib_rec_page(&s, NULL, 1, 2);
    ib_rec_page(&s, NULL, 2, 1); /* PAGE, ZERO: 1 */
    ib_rec_zero(&s, NULL, 2);
    ib_rec_zero(&s, NULL, 3); /* ZERO, PAGE: 1 */
    ib_rec_page(&s, NULL, 3, 1);
    ib_rec_zero(&s, NULL, 4); /* ZERO, ZERO: 1 */
    ib_rec_zero(&s, NULL, 4);
    ib_rec_zero(&s, NULL, 5); /* ZERO, ZERO, PAGE, ZERO: 3 */
    ib_rec_zero(&s, NULL, 5);
    ib_rec_page(&s, NULL, 5, 3);
    ib_rec_zero(&s, NULL, 5);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    assert_int_equal(s.leg_resent, 7);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_counts(img, 6, 7, 0);
    assert_matches_model(&s, img);
    if (img->legacy.resent != 7)
        print_error("resent = %" G_GUINT64_FORMAT ", expected 7 (13 records for 6 pages): "
                    "a record after a ZERO record is not counted\n",
                    img->legacy.resent);
    assert_int_equal(img->legacy.resent, 7);
    ib_spec_clear(&s);
}

/* ---- CONTINUE and section structure ---- */

static void test_continue_across_sections(void **state)
{
    (void)state;
    IbSpec s;
    three_blocks(&s);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "/rom@etc/acpi/tables", 0, 1);
    ib_rec_page(&s, "pc.ram", 4, 2);
    ib_rec_eos(&s);
    ib_rec_part(&s); /* an empty PART: CONTINUE still means pc.ram */
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, NULL, 5, 3);
    ib_rec_zero(&s, NULL, 6);
    ib_rec_eos(&s);
    ib_rec_command(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, NULL, 7, 4); /* and into END */
    ib_rec_page(&s, "/rom@etc/acpi/tables", 1, 5);
    ib_rec_page(&s, NULL, 0, 6); /* now CONTINUE is the tables block */
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    guint8 page[PS];
    seed_page(3, page, PS);
    assert_page(img, 0, 5, page);
    seed_page(4, page, PS);
    assert_page(img, 0, 7, page);
    seed_page(6, page, PS);
    assert_page(img, 1, 0, page);
    assert_page(img, 0, 0, NULL); /* not the tables' page */
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 3);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 1)), 2);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* Pages sent only in the END section (after SWITCHOVER_START) are there too: a reader
 * that stops at the COMMAND loses them (qemu-image-recipes.md §9.1). */
static void test_page_only_in_end(void **state)
{
    (void)state;
    IbSpec s;
    three_blocks(&s);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1);
    ib_rec_eos(&s);
    ib_rec_command(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "pc.ram", 12, 2);
    ib_rec_page(&s, "empty", 2, 3);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    guint8 page[PS];
    seed_page(2, page, PS);
    assert_page(img, 0, 12, page);
    seed_page(3, page, PS);
    assert_page(img, 2, 2, page);
    assert_extent_equal(mr_image_block(img, 2), 0, MR_SEEK_DATA, 2 * PS);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* MULTIFD_FLUSH: after the block list (QEMU's START with multifd), between records, with
 * the CONTINUE bit; it carries nothing and leaves the CONTINUE block alone. */
static void test_multifd_flush_skipped(void **state)
{
    (void)state;
    IbSpec s;
    three_blocks(&s);
    ib_rec_raw(&s, 0x200);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_raw(&s, 0x200);
    ib_rec_page(&s, "pc.ram", 2, 1);
    ib_rec_raw(&s, 0x200);
    ib_rec_raw(&s, 0x220);
    ib_rec_page(&s, NULL, 3, 2);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_raw(&s, 0x200);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    guint8 page[PS];
    seed_page(2, page, PS);
    assert_page(img, 0, 3, page);
    assert_counts(img, 2, 0, 0);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* COMMAND records wherever sections may start: before the ram START, between PARTs, between
 * the last PART and END; and streams without footers or PARTs. */
static void test_commands_and_footers(void **state)
{
    (void)state;
    for (int variant = 0; variant < 3; variant++) {
        IbSpec s;
        three_blocks(&s);
        s.n_commands_before = 2;
        s.footers = variant != 1;
        ib_rec_eos(&s);
        if (variant != 2) {
            ib_rec_command(&s);
            ib_rec_part(&s);
            ib_rec_page(&s, "pc.ram", 1, 1);
            ib_rec_eos(&s);
            ib_rec_command(&s);
            ib_rec_command(&s);
            ib_rec_part(&s);
            ib_rec_page(&s, NULL, 2, 2);
            ib_rec_eos(&s);
            ib_rec_command(&s);
        }
        ib_rec_end(&s);
        ib_rec_page(&s, "pc.ram", 3, 3);
        ib_rec_eos(&s);
        g_autoptr(GBytes) bytes = ib_build_bytes(&s);
        g_autoptr(MrImage) img = open_ok(bytes);
        assert_matches_model(&s, img);
        assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), variant == 2 ? 1 : 3);
        ib_spec_clear(&s);
    }
}

/* Records in the START section after the block list are read too (the loader takes them). */
static void test_records_in_start(void **state)
{
    (void)state;
    IbSpec s;
    three_blocks(&s);
    ib_rec_page(&s, "pc.ram", 4, 1);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_matches_model(&s, img);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 1);
    ib_spec_clear(&s);
}

/* No page record at all: every block is one hole. */
static void test_no_records(void **state)
{
    (void)state;
    IbSpec s;
    three_blocks(&s);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    for (guint i = 0; i < 3; i++) {
        assert_int_equal(mr_block_data_pages(mr_image_block(img, i)), 0);
        assert_seek_no_more(mr_image_block(img, i), 0, MR_SEEK_DATA);
    }
    assert_matches_model(&s, img);
    assert_counts(img, 0, 0, 0);
    ib_spec_clear(&s);
}

/* 1 KiB target pages (configuration/target-page-bits 10): the flags are the low 10 bits. */
static void test_small_target_pages(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    s.target_page_bits = 10;
    ib_add_block(&s, "mach-virt.ram", 6 * 1024, 1024);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "mach-virt.ram", 5, 1);
    ib_rec_page(&s, NULL, 1, 2);
    ib_rec_zero(&s, NULL, 2);
    ib_rec_raw(&s, 0x200);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, NULL, 2, 3);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_int_equal(mr_block_page_size(mr_image_block(img, 0)), 1024);
    assert_matches_model(&s, img);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 3);
    ib_spec_clear(&s);
}

/* Records name blocks by their exact idstr bytes: a prefix or a longer name is another
 * block; odd bytes are fine. */
static void test_idstr_matching(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 2 * PS, PS);
    ib_add_block(&s, "pc", 2 * PS, PS);
    ib_add_block_bytes(&s, (const guint8 *)"a\x01/\xff", 4, PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc", 1, 1);
    ib_rec_page(&s, "pc.ram", 0, 2);
    IbRecord *odd = ib_rec_page(&s, "xxxx", 0, 3);
    memcpy(odd->idstr, "a\x01/\xff", 4);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_matches_model(&s, img);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 1);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 1)), 1);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 2)), 1);
    ib_spec_clear(&s);
    /* "pc.ra" names no block */
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 2 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ra", 0, 1);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    open_fails(arr, MR_ERROR_CORRUPT, "names unknown RAMBlock \"pc.ra\"");
    ib_spec_clear(&s);
}

/* ---- XBZRLE ---- */

/* An XBZRLE record rebuilds the page from what it held: a PAGE record's bytes. */
static void test_xbzrle_onto_page(void **state)
{
    (void)state;
    guint8 v1[PS], v2[PS], v3[PS], d1[2 * PS], d2[2 * PS];
    seed_page(40, v1, PS);
    memcpy(v2, v1, PS);
    v2[0] ^= 0xff;               /* first byte changed: zrun 0 */
    memset(v2 + 100, 0x11, 300); /* a run with a 2-byte ULEB length */
    v2[PS - 1] ^= 0x0f;          /* the last byte */
    gsize l1 = xbzrle_encode(v1, v2, PS, d1);
    memcpy(v3, v2, PS);
    memset(v3 + 2000, 0, 8); /* to zeros: still data */
    gsize l2 = xbzrle_encode(v2, v3, PS, d2);
    assert_int_equal(d1[0], 0); /* the encoder starts with an empty unchanged run */

    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page_bytes(&s, "pc.ram", 1, v1);
    ib_rec_page_bytes(&s, NULL, 2, v1);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_xbzrle(&s, NULL, 1, d1, l1); /* once */
    ib_rec_xbzrle(&s, NULL, 2, d1, l1); /* twice in a row */
    ib_rec_xbzrle(&s, NULL, 2, d2, l2);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_page(img, 0, 1, v2);
    assert_page(img, 0, 2, v3);
    assert_counts(img, 2, 0, 3);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* Onto a page never sent, and onto a ZERO record: the delta applies to zeros. */
static void test_xbzrle_onto_zero(void **state)
{
    (void)state;
    guint8 zeros[PS] = {0}, v[PS], d[2 * PS];
    memcpy(v, zeros, PS);
    memset(v + 10, 0x77, 20);
    memset(v + 3000, 0x78, 2);
    gsize l = xbzrle_encode(zeros, v, PS, d);
    assert_int_equal(d[0], 10);

    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_xbzrle(&s, "pc.ram", 0, d, l); /* never sent */
    ib_rec_page(&s, NULL, 3, 9);
    ib_rec_zero(&s, NULL, 3);
    ib_rec_xbzrle(&s, NULL, 3, d, l); /* after PAGE then ZERO: zeros, not the PAGE bytes */
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_page(img, 0, 0, v);
    assert_page(img, 0, 3, v);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* A decoded page is replaced by a later PAGE or ZERO, and a delta after a PAGE that replaced
 * a decoded page applies to that PAGE's bytes. */
static void test_xbzrle_then_page_or_zero(void **state)
{
    (void)state;
    guint8 a[PS], b[PS], c[PS], ab[2 * PS], c2[PS], cc2[2 * PS];
    seed_page(1, a, PS);
    memcpy(b, a, PS);
    memset(b + 500, 0x5a, 3);
    gsize lab = xbzrle_encode(a, b, PS, ab);
    seed_page(2, c, PS);
    memcpy(c2, c, PS);
    memset(c2 + 7, 0xee, 1);
    gsize lcc2 = xbzrle_encode(c, c2, PS, cc2);

    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page_bytes(&s, "pc.ram", 0, a);
    ib_rec_xbzrle(&s, NULL, 0, ab, lab);
    ib_rec_page_bytes(&s, NULL, 0, c); /* PAGE replaces the decoded page */
    ib_rec_xbzrle(&s, NULL, 0, cc2, lcc2);
    ib_rec_page_bytes(&s, NULL, 1, a);
    ib_rec_xbzrle(&s, NULL, 1, ab, lab);
    ib_rec_zero(&s, NULL, 1); /* ZERO replaces it: a hole */
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_page(img, 0, 0, c2);
    assert_page(img, 0, 1, NULL);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 1);
    assert_matches_model(&s, img);
    ib_spec_clear(&s);
}

/* mr_xbzrle_decode against QEMU's decoder rules, one edge at a time. */
static void test_xbzrle_decode_edges(void **state)
{
    (void)state;
    guint8 dst[64], want[64];
    memset(dst, 0xaa, sizeof dst);
    memcpy(want, dst, sizeof want);
    /* empty delta: nothing changes */
    assert_true(mr_xbzrle_decode((const guint8 *)"", 0, dst, 64));
    assert_memory_equal(dst, want, 64);
    /* zrun 0 first, nzrun 2 */
    static const guint8 first0[] = {0, 2, 1, 2};
    assert_true(mr_xbzrle_decode(first0, sizeof first0, dst, 64));
    want[0] = 1;
    want[1] = 2;
    assert_memory_equal(dst, want, 64);
    /* two runs; the second zrun counts from the end of the first nz run */
    static const guint8 two[] = {3, 1, 9, 2, 1, 8};
    assert_true(mr_xbzrle_decode(two, sizeof two, dst, 64));
    want[3] = 9;
    want[6] = 8;
    assert_memory_equal(dst, want, 64);
    /* a run ending exactly at the end of the page */
    static const guint8 to_end[] = {62, 2, 5, 6};
    assert_true(mr_xbzrle_decode(to_end, sizeof to_end, dst, 64));
    want[62] = 5;
    want[63] = 6;
    assert_memory_equal(dst, want, 64);
    /* one byte left where a length should start (QEMU wants two) */
    static const guint8 rem1[] = {0, 1, 7, 3};
    assert_false(mr_xbzrle_decode(rem1, sizeof rem1, dst, 64));
    static const guint8 only1[] = {5};
    assert_false(mr_xbzrle_decode(only1, 1, dst, 64));
    /* zrun then a lone nzrun length with no room for it */
    static const guint8 zr_only[] = {5, 1};
    assert_false(mr_xbzrle_decode(zr_only, sizeof zr_only, dst, 64));
    /* nzrun of 0 */
    static const guint8 nz0[] = {1, 0, 0};
    assert_false(mr_xbzrle_decode(nz0, sizeof nz0, dst, 64));
    /* a zrun of 0 after the first */
    static const guint8 z0[] = {1, 1, 9, 0, 1, 9};
    assert_false(mr_xbzrle_decode(z0, sizeof z0, dst, 64));
    /* overflow: zrun past the page, nz run past the page, nz bytes past the delta */
    static const guint8 zover[] = {65, 1, 1};
    assert_false(mr_xbzrle_decode(zover, sizeof zover, dst, 64));
    static const guint8 zedge[] = {64, 1, 1}; /* zrun to the end, then one more byte */
    assert_false(mr_xbzrle_decode(zedge, sizeof zedge, dst, 64));
    static const guint8 nzover[] = {60, 5, 1, 2, 3, 4, 5};
    assert_false(mr_xbzrle_decode(nzover, sizeof nzover, dst, 64));
    static const guint8 short_data[] = {0, 4, 1, 2, 3};
    assert_false(mr_xbzrle_decode(short_data, sizeof short_data, dst, 64));
    /* two-byte ULEB128: 0x81 0x01 = 129 */
    guint8 big[4096];
    memset(big, 0, sizeof big);
    static const guint8 uleb2[] = {0x81, 0x01, 0x82, 0x01};
    guint8 delta[4 + 130];
    memcpy(delta, uleb2, 4);
    memset(delta + 4, 0x33, 130);
    assert_true(mr_xbzrle_decode(delta, sizeof delta, big, sizeof big));
    assert_int_equal(big[128], 0);
    assert_int_equal(big[129], 0x33);
    assert_int_equal(big[129 + 129], 0x33);
    assert_int_equal(big[129 + 130], 0);
    /* 0xff 0x7f = 16383: the largest value; past a 4 KiB page */
    static const guint8 max2[] = {0xff, 0x7f, 1, 1};
    assert_false(mr_xbzrle_decode(max2, sizeof max2, big, sizeof big));
    /* a three-byte ULEB128 is refused (second byte has its high bit set) */
    static const guint8 uleb3[] = {0x80, 0x80, 0x01, 1, 1};
    assert_false(mr_xbzrle_decode(uleb3, sizeof uleb3, big, sizeof big));
    /* a two-byte zero, 0x80 0x00, is a zrun of 0: fine first, refused later */
    static const guint8 z2first[] = {0x80, 0x00, 1, 4};
    assert_true(mr_xbzrle_decode(z2first, sizeof z2first, big, sizeof big));
    assert_int_equal(big[0], 4);
    static const guint8 z2later[] = {0, 1, 4, 0x80, 0x00, 1, 4};
    assert_false(mr_xbzrle_decode(z2later, sizeof z2later, big, sizeof big));
}

/* mr_xbzrle_decode and the builder's decoder agree on random deltas (valid or not) and
 * on encoder output. */
static void test_xbzrle_decode_random(void **state)
{
    (void)state;
    GRand *rnd = g_rand_new_with_seed(20261122);
    guint8 base[256], a[256], b[256], delta[600];
    for (int iter = 0; iter < 20000; iter++) {
        for (gsize i = 0; i < sizeof base; i++)
            base[i] = (guint8)g_rand_int(rnd);
        gsize len = (gsize)g_rand_int_range(rnd, 0, 24);
        for (gsize i = 0; i < len; i++) /* small numbers make decodable deltas likely */
            delta[i] = (guint8)(g_rand_boolean(rnd) ? (guint32)g_rand_int_range(rnd, 0, 6)
                                                    : g_rand_int(rnd));
        memcpy(a, base, sizeof a);
        memcpy(b, base, sizeof b);
        gboolean ra = mr_xbzrle_decode(delta, len, a, sizeof a);
        gboolean rb = ib_xbzrle_apply(delta, len, b, sizeof b);
        if (ra != rb) {
            g_autofree char *hex = mr_escape_bytes(delta, len);
            print_error("delta \"%s\": lib %d, reference %d\n", hex, ra, rb);
        }
        assert_int_equal(ra, rb);
        if (ra)
            assert_memory_equal(a, b, sizeof a);
        /* the encoder's output always decodes to the new page */
        memcpy(a, base, sizeof a);
        for (int k = g_rand_int_range(rnd, 0, 6); k > 0; k--)
            memset(a + g_rand_int_range(rnd, 0, 250), g_rand_int(rnd),
                   (gsize)g_rand_int_range(rnd, 1, 7));
        gsize dl = xbzrle_encode(base, a, sizeof a, delta);
        assert_true(dl <= sizeof delta);
        memcpy(b, base, sizeof b);
        assert_true(mr_xbzrle_decode(delta, dl, b, sizeof b));
        assert_memory_equal(a, b, sizeof a);
    }
    g_rand_free(rnd);
}

/* An XBZRLE record after a PAGE record, its fields as given; the open must fail with
 * "XBZRLE record at 0x<offset>@suffix". XBZRLE messages name the offset of the encoding
 * byte, after the record header. */
static void build_xbzrle_fail(guint8 encoding, gint32 xlen, const guint8 *delta, gsize len,
                              int code, const char *suffix, const char *file, int line)
{
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 2 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1);
    IbRecord *x = ib_rec_xbzrle(&s, NULL, 0, delta, len);
    x->encoding = encoding;
    x->xlen = xlen;
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    g_autofree char *w =
        g_strdup_printf("XBZRLE record at 0x%" G_GINT64_MODIFIER "x%s", x->data_offset, suffix);
    _assert_open_fails(arr, &no_index, code, w, file, line);
    ib_spec_clear(&s);
}

static void test_xbzrle_bad_records(void **state)
{
    (void)state;
    static const guint8 good[] = {0, 1, 9};
    static const guint8 bad[] = {0, 0, 9};
    build_xbzrle_fail(0, -1, good, 3, MR_ERROR_CORRUPT, ": encoding 0, length 3", __FILE__,
                      __LINE__);
    build_xbzrle_fail(2, -1, good, 3, MR_ERROR_CORRUPT, ": encoding 2, length 3", __FILE__,
                      __LINE__);
    /* longer than a page: refused before its bytes are read */
    build_xbzrle_fail(1, PS + 1, good, 3, MR_ERROR_CORRUPT, ": encoding 1, length 4097", __FILE__,
                      __LINE__);
    build_xbzrle_fail(1, -1, bad, 3, MR_ERROR_CORRUPT, " does not decode", __FILE__, __LINE__);
    /* a length of exactly a page is allowed (and this one decodes: 1 + 2 + 4093 bytes) */
    guint8 full[PS];
    memset(full, 0x44, PS);
    full[0] = 1;
    full[1] = 0x80 | (4093 & 0x7f);
    full[2] = 4093 >> 7;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", PS, PS);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_xbzrle(&s, "pc.ram", 0, full, PS);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_matches_model(&s, img);
    guint8 want[PS];
    memset(want, 0x44, PS);
    want[0] = 0; /* 1 + 4093 = 4094: the first and the last two bytes stay zero */
    want[PS - 2] = 0;
    want[PS - 1] = 0;
    assert_page(img, 0, 0, want);
    ib_spec_clear(&s);
}

/* ---- malformed records ---- */

/* A one-block stream whose PART holds @n records set up by @setup; open must fail. */
static GByteArray *build_with(void (*setup)(IbSpec *), IbSpec *s)
{
    ib_spec_init_legacy(s);
    ib_add_block(s, "pc.ram", 4 * PS, PS);
    ib_add_block(s, "rom", PS, PS);
    ib_rec_eos(s);
    ib_rec_part(s);
    setup(s);
    ib_rec_eos(s);
    ib_rec_end(s);
    ib_rec_eos(s);
    return ib_build(s);
}

static void setup_continue_first(IbSpec *s)
{
    ib_rec_page(s, NULL, 0, 1);
}

static void setup_continue_after_flush(IbSpec *s)
{
    ib_rec_raw(s, 0x200);
    ib_rec_zero(s, NULL, 0);
}

static void test_continue_without_block(void **state)
{
    (void)state;
    IbSpec s;
    g_autoptr(GByteArray) a = build_with(setup_continue_first, &s);
    g_autofree char *w =
        g_strdup_printf("page record at 0x%" G_GINT64_MODIFIER "x continues no block",
                        ib_record(&s, 2)->offset + 8);
    open_fails(a, MR_ERROR_CORRUPT, w);
    ib_spec_clear(&s);
    g_autoptr(GByteArray) b = build_with(setup_continue_after_flush, &s);
    open_fails(b, MR_ERROR_CORRUPT, "continues no block");
    ib_spec_clear(&s);
}

static void setup_unknown_idstr(IbSpec *s)
{
    ib_rec_page(s, "pc.ram", 0, 1);
    ib_rec_page(s, "pc.rom", 1, 1);
}

static void test_unknown_idstr(void **state)
{
    (void)state;
    IbSpec s;
    g_autoptr(GByteArray) a = build_with(setup_unknown_idstr, &s);
    open_fails(a, MR_ERROR_CORRUPT, "names unknown RAMBlock \"pc.rom\"");
    /* odd bytes are escaped in the message; an empty idstr names nothing */
    IbRecord *r = ib_record(&s, 3);
    ib_patch_u8(a, r->offset + 8 + 1 + 2, 0x01);
    open_fails(a, MR_ERROR_CORRUPT, "names unknown RAMBlock \"pc\\x01rom\"");
    ib_spec_clear(&s);
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", PS, PS);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "", 0, 1);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) b = ib_build(&s);
    open_fails(b, MR_ERROR_CORRUPT, "names unknown RAMBlock \"\"");
    ib_spec_clear(&s);
}

static void setup_past_end(IbSpec *s)
{
    ib_rec_page(s, "pc.ram", 3, 1); /* the last page: fine */
    ib_rec_page(s, "rom", 0, 1);
    ib_rec_zero(s, NULL, 1); /* rom has one page */
}

static void test_offset_past_block(void **state)
{
    (void)state;
    IbSpec s;
    g_autoptr(GByteArray) a = build_with(setup_past_end, &s);
    g_autofree char *w = g_strdup_printf("page record at 0x%" G_GINT64_MODIFIER
                                         "x: offset 0x1000 is past the end of its RAMBlock",
                                         ib_record(&s, 4)->offset);
    open_fails(a, MR_ERROR_CORRUPT, w);
    /* far past, and at the largest page-aligned offset */
    ib_patch_be64(a, ib_record(&s, 4)->offset, 0x100000000ull | 0x22);
    open_fails(a, MR_ERROR_CORRUPT, "offset 0x100000000 is past the end");
    ib_patch_be64(a, ib_record(&s, 4)->offset, 0xfffffffffffff000ull | 0x22);
    open_fails(a, MR_ERROR_CORRUPT, "offset 0xfffffffffffff000 is past the end");
    /* back inside: opens */
    ib_patch_be64(a, ib_record(&s, 4)->offset, 0x22);
    g_autoptr(MrImage) img = ib_open_array(a, &no_index, NULL);
    assert_non_null(img);
    ib_spec_clear(&s);
}

static void setup_zero_fill(IbSpec *s)
{
    ib_rec_zero(s, "pc.ram", 1)->fill = 0x01;
}

static void test_zero_fill_byte(void **state)
{
    (void)state;
    IbSpec s;
    g_autoptr(GByteArray) a = build_with(setup_zero_fill, &s);
    g_autofree char *w =
        g_strdup_printf("zero-page record at 0x%" G_GINT64_MODIFIER "x has fill byte 0x01",
                        ib_record(&s, 2)->offset);
    open_fails(a, MR_ERROR_CORRUPT, w);
    ib_patch_u8(a, ib_record(&s, 2)->data_offset, 0xff);
    open_fails(a, MR_ERROR_CORRUPT, "has fill byte 0xff");
    ib_patch_u8(a, ib_record(&s, 2)->data_offset, 0);
    g_autoptr(MrImage) img = ib_open_array(a, &no_index, NULL);
    assert_non_null(img);
    ib_spec_clear(&s);
}

static guint64 odd_flags;
static void setup_odd_flags(IbSpec *s)
{
    ib_rec_page(s, "pc.ram", 0, 1);
    ib_rec_raw(s, PS | odd_flags);
}

/* A record whose flags are @flags after a good PAGE record: the open fails with @code and
 * "@word (record at 0x<offset>)" for unsupported records, "RAM record at 0x<offset> has
 * unknown flags @word" for the others. */
static void flags_fail(guint64 flags, int code, const char *word)
{
    IbSpec s;
    odd_flags = flags;
    g_autoptr(GByteArray) a = build_with(setup_odd_flags, &s);
    guint64 at = ib_record(&s, 3)->offset;
    g_autofree char *w =
        code == MR_ERROR_UNSUPPORTED
            ? g_strdup_printf("%s are not supported (record at 0x%" G_GINT64_MODIFIER "x)", word,
                              at)
            : g_strdup_printf("RAM record at 0x%" G_GINT64_MODIFIER "x has unknown flags %s", at,
                              word);
    open_fails(a, code, w);
    ib_spec_clear(&s);
}

static void test_unsupported_and_unknown_flags(void **state)
{
    (void)state;
    flags_fail(0x100, MR_ERROR_UNSUPPORTED, "compressed pages (QEMU <= 9.0 `compress` capability)");
    flags_fail(0x120, MR_ERROR_UNSUPPORTED, "compressed pages (QEMU <= 9.0 `compress` capability)");
    flags_fail(0x80, MR_ERROR_UNSUPPORTED, "RDMA hook records");
    flags_fail(0xa0, MR_ERROR_UNSUPPORTED, "RDMA hook records");
    flags_fail(0x88, MR_ERROR_UNSUPPORTED, "RDMA hook records");
    flags_fail(0x400, MR_ERROR_CORRUPT, "0x400");
    flags_fail(0x800, MR_ERROR_CORRUPT, "0x800");
    flags_fail(0x01, MR_ERROR_CORRUPT, "0x1"); /* FULL, gone since 2009 */
    flags_fail(0x00, MR_ERROR_CORRUPT, "0x0");
    flags_fail(0x20, MR_ERROR_CORRUPT, "0x20");
    flags_fail(0x0a, MR_ERROR_CORRUPT, "0xa"); /* ZERO|PAGE */
    flags_fail(0x48, MR_ERROR_CORRUPT, "0x48");
    flags_fail(0x04, MR_ERROR_CORRUPT, "0x4"); /* MEM_SIZE outside START */
    flags_fail(0x18, MR_ERROR_CORRUPT, "0x18");
}

static void test_used_length_not_page_multiple(void **state)
{
    (void)state;
    /* the MEM_SIZE total must stay a multiple of 1 KiB (its low bits are flags): a "pad"
     * block after the odd one makes it so */
    const guint64 lens[] = {4 * PS + 512, 4 * PS + 1024, 1, PS - 1, 3 * 1024};
    for (gsize i = 0; i < G_N_ELEMENTS(lens); i++) {
        IbSpec s;
        ib_spec_init_legacy(&s);
        ib_add_block(&s, "pc.ram", 4 * PS, PS);
        ib_add_block(&s, "odd", lens[i], PS);
        if (lens[i] % 1024 != 0)
            ib_add_block(&s, "pad", 1024 - lens[i] % 1024, PS);
        ib_rec_eos(&s);
        ib_rec_end(&s);
        ib_rec_eos(&s);
        g_autoptr(GByteArray) arr = ib_build(&s);
        g_autofree char *w = g_strdup_printf("RAMBlock \"odd\": used_length 0x%" G_GINT64_MODIFIER
                                             "x is not a multiple of the page size",
                                             lens[i]);
        open_fails(arr, MR_ERROR_CORRUPT, w);
        ib_spec_clear(&s);
    }
    /* 1 KiB multiples are fine with 1 KiB target pages */
    IbSpec s;
    ib_spec_init_legacy(&s);
    s.target_page_bits = 10;
    ib_add_block(&s, "odd", 3 * 1024, 1024);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_int_equal(mr_block_size(mr_image_block(img, 0)), 3 * 1024);
    ib_spec_clear(&s);
}

/* The page table costs 8 bytes a page, so a block list claiming more pages than the file
 * could send records for is refused before anything is allocated: the bound is
 * file size / 8 + 2^20 pages over all blocks. */
static void test_page_count_bound(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "a", PS, PS);
    ib_add_block(&s, "big", PS, PS);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "big", 0, 1);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    guint64 limit = arr->len / 8 + (1u << 20);
    guint64 big_field = spec_block(&s, 1)->used_length_field;
    /* exactly at the bound: opens (8 MiB of page table) */
    ib_patch_be64(arr, big_field, (limit - 1) * PS);
    ib_patch_be64(arr, s.mem_size_offset, limit * PS | 0x04);
    {
        g_autoptr(MrImage) img = ib_open_array(arr, &no_index, NULL);
        assert_non_null(img);
        assert_int_equal(mr_block_size(mr_image_block(img, 1)), (limit - 1) * PS);
        assert_int_equal(mr_block_data_pages(mr_image_block(img, 1)), 1);
        assert_extent_equal(mr_image_block(img, 1), PS, MR_SEEK_HOLE, PS);
        assert_seek_no_more(mr_image_block(img, 1), PS, MR_SEEK_DATA);
    }
    /* one page more */
    ib_patch_be64(arr, big_field, limit * PS);
    ib_patch_be64(arr, s.mem_size_offset, (limit + 1) * PS | 0x04);
    g_autofree char *w = g_strdup_printf("RAM block table: %" G_GUINT64_FORMAT
                                         " pages cannot fit in a stream of this size",
                                         limit + 1);
    open_fails(arr, MR_ERROR_CORRUPT, w);
    /* absurd sizes: refused, not allocated (g_new0 of 2^50 slots would abort) */
    const guint64 huge[] = {G_GUINT64_CONSTANT(1) << 50, G_GUINT64_CONSTANT(1) << 62,
                            G_GUINT64_CONSTANT(0xfffffffffffff000) - PS};
    for (gsize i = 0; i < G_N_ELEMENTS(huge); i++) {
        ib_patch_be64(arr, big_field, huge[i]);
        ib_patch_be64(arr, s.mem_size_offset, (huge[i] + PS) | 0x04);
        open_fails(arr, MR_ERROR_CORRUPT, "pages cannot fit in a stream of this size");
    }
    /* the bound is over all blocks: two blocks of limit/2 + 1 pages each */
    ib_patch_be64(arr, spec_block(&s, 0)->used_length_field, (limit / 2 + 1) * PS);
    ib_patch_be64(arr, big_field, (limit / 2 + 1) * PS);
    ib_patch_be64(arr, s.mem_size_offset, (limit / 2 + 1) * 2 * PS | 0x04);
    open_fails(arr, MR_ERROR_CORRUPT, "pages cannot fit");
    ib_spec_clear(&s);
}

/* x-ignore-shared is refused for legacy streams too, before anything is indexed. */
static void test_x_ignore_shared(void **state)
{
    (void)state;
    static const char *const shared[] = {"x-ignore-shared", NULL};
    IbSpec s;
    standard_spec(&s);
    s.caps = shared;
    g_autoptr(GByteArray) arr = ib_build(&s);
    open_fails(arr, MR_ERROR_UNSUPPORTED,
               "x-ignore-shared saves are not supported (shared RAM is not in the file)");
    ib_spec_clear(&s);
}

/* A save that never finished: no END, no VM description, EOF before END. */
static void test_incomplete(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1);
    ib_rec_eos(&s);
    s.device_state = s.eof = s.vmdesc = FALSE;
    g_autoptr(GByteArray) a = ib_build(&s);
    open_fails(a, MR_ERROR_INCOMPLETE, "the file ends before the RAM END section");
    s.eof = TRUE;
    g_autoptr(GByteArray) b = ib_build(&s);
    open_fails(b, MR_ERROR_INCOMPLETE, "end-of-stream marker before the RAM END section");
    ib_rec_end(&s);
    ib_rec_eos(&s);
    s.device_state = TRUE;
    s.vmdesc = FALSE;
    g_autoptr(GByteArray) c = ib_build(&s);
    open_fails(c, MR_ERROR_INCOMPLETE, "no VM description at the end of the file");
    /* device state inside the ram sections */
    ib_spec_clear(&s);
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1);
    ib_rec_eos(&s);
    g_autoptr(GByteArray) d = ib_build(&s);
    open_fails(d, MR_ERROR_CORRUPT, "device state section before the RAM END section");
    ib_spec_clear(&s);
}

/* ---- truncation ---- */

static void check_cut(const IbSpec *s, GBytes *bytes, gsize cut, GString *problems)
{
    GError *error = NULL;
    MrImage *img = ib_open_prefix(bytes, cut, &no_index, &error);
    if (img != NULL) {
        g_string_append_printf(problems, "  cut %" G_GSIZE_FORMAT ": opened\n", cut);
        mr_image_free(img);
        return;
    }
    int code = error != NULL && error->domain == MR_ERROR ? error->code : -1;
    gboolean fine = code == MR_ERROR_TRUNCATED || code == MR_ERROR_INCOMPLETE ||
                    code == MR_ERROR_CORRUPT ||
                    (code == MR_ERROR_UNKNOWN_FORMAT && cut < s->stream_offset + 4);
    if (!fine)
        g_string_append_printf(problems, "  cut %" G_GSIZE_FORMAT ": code %d: %s\n", cut, code,
                               error ? error->message : "(no error set)");
    g_clear_error(&error);
}

/* A compact legacy image with every kind of record, a libvirt raw header, 1 KiB pages:
 * every cut fails cleanly (and under ASan, touches nothing it should not). */
static void test_truncated_every_byte(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    s.libvirt = TRUE;
    s.lv_format = 0;
    s.lv_padding = 3;
    s.target_page_bits = 10;
    s.uuid = TRUE;
    s.n_commands_before = 1;
    ib_add_block(&s, "mach-virt.ram", 3 * 1024, 1024);
    ib_add_block(&s, "x", 1024, 1024);
    guint8 old[1024], new[1024], delta[2048];
    for (gsize i = 0; i < 1024; i++)
        old[i] = ib_seed_byte(1, i);
    memcpy(new, old, sizeof new);
    memset(new + 10, 0x99, 3);
    gsize dl = xbzrle_encode(old, new, 1024, delta);
    ib_rec_raw(&s, 0x200);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "mach-virt.ram", 1, 1);
    ib_rec_zero(&s, NULL, 2);
    ib_rec_xbzrle(&s, NULL, 1, delta, dl);
    ib_rec_eos(&s);
    ib_rec_command(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "x", 0, 2);
    ib_rec_zero(&s, "mach-virt.ram", 0);
    ib_rec_eos(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_string_equal(mr_image_container(img), "libvirt");
    assert_page(img, 0, 1, new);
    assert_matches_model(&s, img);
    g_autoptr(GString) problems = g_string_new(NULL);
    for (gsize cut = 0; cut < s.size; cut++)
        check_cut(&s, bytes, cut, problems);
    if (problems->len > 0) {
        print_error("%" G_GUINT64_FORMAT " cuts tried, bad ones:\n%s", s.size, problems->str);
        fail();
    }
    ib_spec_clear(&s);
}

/* The cuts that matter, with their exact error: inside the block list, inside a page record
 * header, idstr, page bytes, fill byte and XBZRLE header. */
static void test_truncated_records(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    const IbBlock *b1 = spec_block(&s, 1);
    struct {
        guint64 cut;
        int code;
        const char *word;
    } cases[] = {
        {b1->entry_offset + 3, MR_ERROR_TRUNCATED, "RAM block table: truncated"},
        {b1->used_length_field + 7, MR_ERROR_TRUNCATED, "RAM block table: truncated"},
        {ib_record(&s, 2)->offset + 4, MR_ERROR_TRUNCATED, "RAM section: truncated"},
        {ib_record(&s, 2)->offset + 10, MR_ERROR_TRUNCATED, "page record: truncated"},
        {ib_record(&s, 4)->data_offset, MR_ERROR_TRUNCATED, "zero-page record: truncated"},
        /* inside page bytes: the next record is missing */
        {ib_record(&s, 3)->data_offset + 100, MR_ERROR_TRUNCATED, "truncated"},
        {ib_record(&s, 3)->end_offset, MR_ERROR_TRUNCATED, "RAM section: truncated"},
        {s.end_offset, MR_ERROR_INCOMPLETE, "the file ends before the RAM END section"},
        {s.device_offset, MR_ERROR_INCOMPLETE, "no VM description"},
        {s.vmdesc_offset, MR_ERROR_INCOMPLETE, "no VM description"},
        {s.size - 1, MR_ERROR_INCOMPLETE, "no VM description"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        GError *error = NULL;
        MrImage *img = ib_open_prefix(bytes, (gsize)cases[i].cut, &no_index, &error);
        if (img != NULL)
            print_error("case %" G_GSIZE_FORMAT ": cut at %" G_GUINT64_FORMAT " opened\n", i,
                        cases[i].cut);
        assert_null(img);
        assert_mr_error(error, cases[i].code, cases[i].word);
    }
    ib_spec_clear(&s);
}

/* ---- containers and the description ---- */

/* libvirt format 0 (raw) in front of a legacy stream: opened, the XML and cookie kept. */
static void test_libvirt_raw(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.libvirt = TRUE;
    s.lv_format = 0;
    s.lv_was_running = 0;
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    assert_string_equal(mr_image_container(img), "libvirt");
    assert_string_equal(mr_image_format(img), "legacy");
    assert_int_equal(mr_image_stream_offset(img), s.stream_offset);
    assert_int_equal(img->libvirt.format, 0);
    GBytes *xml = mr_image_libvirt_xml(img), *cookie = mr_image_libvirt_cookie(img);
    assert_non_null(xml);
    assert_int_equal(g_bytes_get_size(xml), strlen(s.lv_xml));
    assert_memory_equal(g_bytes_get_data(xml, NULL), s.lv_xml, strlen(s.lv_xml));
    assert_non_null(cookie);
    assert_int_equal(g_bytes_get_size(cookie), strlen(s.lv_cookie));
    assert_memory_equal(g_bytes_get_data(cookie, NULL), s.lv_cookie, strlen(s.lv_cookie));
    assert_matches_model(&s, img);
    g_autofree char *json = mr_image_describe_json(img);
    assert_non_null(strstr(json, "\"format\": \"legacy\""));
    assert_non_null(strstr(json, "\"format\": 0, \"format_name\": \"raw\", \"was_running\": 0"));
    /* the tree shows the XML and the cookie */
    g_autoptr(MrTree) tree = mr_tree_new(img);
    guint dir, node;
    assert_true(mr_tree_lookup(tree, 0, ".libvirt", &dir));
    assert_true(mr_tree_lookup(tree, dir, "domain.xml", &node));
    assert_int_equal(mr_tree_size(tree, node), strlen(s.lv_xml));
    assert_true(mr_tree_lookup(tree, dir, "cookie.xml", &node));
    GBytes *c = mr_tree_content(tree, node);
    assert_memory_equal(g_bytes_get_data(c, NULL), s.lv_cookie, strlen(s.lv_cookie));
    ib_spec_clear(&s);
}

static void test_describe(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = open_ok(bytes);
    g_autofree char *json = mr_image_describe_json(img);
    assert_non_null(strstr(json, "\"format\": \"legacy\""));
    assert_non_null(strstr(json, "\"capabilities\": []"));
    assert_non_null(strstr(json, "\"legacy\": {\"page_records\": 8, \"zero_records\": 3, "
                                 "\"xbzrle_records\": 0, \"resent\": 1, \"index\": null, "
                                 "\"index_from_cache\": false}"));
    assert_non_null(strstr(json, "{\"idstr\": \"pc.ram\", \"path\": \"pc.ram\", \"size\": 65536, "
                                 "\"page_size\": 4096, \"pages\": 16, \"data_pages\": 6, "
                                 "\"bitmap_offset\": 0, \"pages_offset\": 0}"));
    assert_non_null(strstr(json, "\"pages\": 3, \"data_pages\": 0,"));
    ib_spec_clear(&s);
    /* mapped-ram images have no "legacy" object */
    ib_spec_init(&s);
    ib_add_block(&s, "pc.ram", PS, PS);
    g_autoptr(GBytes) mr = ib_build_bytes(&s);
    g_autoptr(MrImage) img2 = open_ok(mr);
    g_autofree char *json2 = mr_image_describe_json(img2);
    assert_null(strstr(json2, "\"legacy\""));
    ib_spec_clear(&s);
}

typedef struct {
    guint calls;
    guint64 last_done, total;
    gboolean backwards;
} Progress;

static void on_progress(guint64 done, guint64 total, gpointer data)
{
    Progress *p = data;
    if (p->calls > 0 && done < p->last_done)
        p->backwards = TRUE;
    p->calls++;
    p->last_done = done;
    p->total = total;
}

static void test_progress(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    Progress p = {0};
    MrOpenOptions opts = {.index_path = "", .progress = on_progress, .progress_data = &p};
    g_autoptr(MrImage) img = assert_open_ok_opts(bytes, &opts);
    assert_true(p.calls >= 1);
    assert_false(p.backwards);
    assert_int_equal(p.total, s.size);
    assert_true(p.last_done <= p.total);
    assert_true(p.last_done >= s.end_offset); /* the walk reached the END section */
    ib_spec_clear(&s);
}

/* ---- the index cache (real files) ---- */

typedef struct {
    char *dir;
    char *image; /* dir/img.sav */
    char *index; /* dir/cache/sub/img.idx: the directories do not exist yet */
} Files;

static void files_init(Files *f)
{
    GError *error = NULL;
    f->dir = g_dir_make_tmp("mramfs-legacy-XXXXXX", &error);
    assert_no_error(error);
    f->image = g_build_filename(f->dir, "img.sav", NULL);
    f->index = g_build_filename(f->dir, "cache", "sub", "img.idx", NULL);
}

static void remove_tree(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    if (d != NULL) {
        const char *name;
        while ((name = g_dir_read_name(d)) != NULL) {
            g_autofree char *p = g_build_filename(path, name, NULL);
            remove_tree(p);
        }
        g_dir_close(d);
    }
    g_remove(path);
}

static void files_clear(Files *f)
{
    remove_tree(f->dir);
    g_free(f->dir);
    g_free(f->image);
    g_free(f->index);
}

static void write_bytes(const char *path, const guint8 *data, gsize len)
{
    GError *error = NULL;
    g_file_set_contents(path, (const char *)data, (gssize)len, &error);
    assert_no_error(error);
}

static GByteArray *read_all(const char *path)
{
    gchar *data = NULL;
    gsize len = 0;
    GError *error = NULL;
    g_file_get_contents(path, &data, &len, &error);
    assert_no_error(error);
    return g_byte_array_new_take((guint8 *)data, len);
}

static MrImage *open_file(const char *path, const char *index)
{
    MrOpenOptions opts = {.index_path = index};
    GError *error = NULL;
    MrImage *img = mr_image_open(path, &opts, &error);
    assert_no_error(error);
    assert_non_null(img);
    return img;
}

/* The description's index fields: where the index is kept (NULL: nowhere) and whether
 * this open loaded it. */
#define assert_index(img, path, cached) _assert_index((img), (path), (cached), __FILE__, __LINE__)
static void _assert_index(const MrImage *img, const char *path, gboolean cached, const char *file,
                          int line)
{
    const char *got = img->legacy.index_path;
    if (g_strcmp0(got, path) != 0) {
        print_error("%s:%d: index path %s%s%s, expected %s%s%s\n", file, line, got ? "\"" : "",
                    got ? got : "NULL", got ? "\"" : "", path ? "\"" : "", path ? path : "NULL",
                    path ? "\"" : "");
        _fail(file, line);
    }
    if (img->legacy.from_cache != cached) {
        print_error("%s:%d: index_from_cache %d, expected %d\n", file, line, img->legacy.from_cache,
                    cached);
        _fail(file, line);
    }
    g_autofree char *json = mr_image_describe_json(img);
    _assert_true(
        strstr(json, cached ? "\"index_from_cache\": true" : "\"index_from_cache\": false") != NULL,
        "index_from_cache in the description", file, line);
    if (path == NULL)
        _assert_true(strstr(json, "\"index\": null") != NULL, "\"index\": null", file, line);
}

/* A legacy image with every kind of slot (file page, decoded page, hole, zero after data)
 * in two blocks; @seed varies the page bytes but not the layout or the size. */
static void cache_spec(IbSpec *s, guint8 seed)
{
    ib_spec_init_legacy(s);
    ib_add_block(s, "pc.ram", 32 * PS, PS);
    ib_add_block(s, "/rom@etc/acpi/tables", 4 * PS, PS);
    guint8 old[PS], new[PS], delta[2 * PS];
    seed_page(seed, old, PS);
    memcpy(new, old, PS);
    memset(new + 64, seed, 64);
    gsize dl = xbzrle_encode(old, new, PS, delta);
    ib_rec_eos(s);
    ib_rec_part(s);
    for (guint64 p = 0; p < 32; p += 3)
        ib_rec_page(s, p == 0 ? "pc.ram" : NULL, p, (guint8)(seed + p));
    ib_rec_zero(s, NULL, 6);
    ib_rec_page_bytes(s, NULL, 7, old);
    ib_rec_eos(s);
    ib_rec_command(s);
    ib_rec_end(s);
    ib_rec_xbzrle(s, NULL, 7, delta, dl);
    ib_rec_page(s, "/rom@etc/acpi/tables", 2, seed);
    ib_rec_eos(s);
}

/* Two open images serve the same bytes, extents and counts. */
static void assert_same_image(const MrImage *a, const MrImage *b)
{
    assert_int_equal(mr_image_n_blocks(a), mr_image_n_blocks(b));
    for (guint i = 0; i < mr_image_n_blocks(a); i++) {
        const MrBlock *x = mr_image_block(a, i), *y = mr_image_block(b, i);
        gsize lx, ly;
        const guint8 *ix = mr_block_idstr(x, &lx), *iy = mr_block_idstr(y, &ly);
        assert_int_equal(lx, ly);
        assert_memory_equal(ix, iy, lx);
        assert_int_equal(mr_block_size(x), mr_block_size(y));
        assert_int_equal(mr_block_page_size(x), mr_block_page_size(y));
        assert_int_equal(mr_block_data_pages(x), mr_block_data_pages(y));
        gsize size = (gsize)mr_block_size(x);
        g_autofree guint8 *bx = g_malloc(size), *by = g_malloc(size);
        assert_int_equal(mr_block_pread(x, bx, size, 0, NULL), size);
        assert_int_equal(mr_block_pread(y, by, size, 0, NULL), size);
        assert_memory_equal(bx, by, size);
        for (guint64 off = 0; off < size; off += mr_block_page_size(x)) {
            guint64 rx = 1, ry = 2;
            gboolean ok_x = mr_block_seek(x, off, MR_SEEK_DATA, &rx, NULL);
            gboolean ok_y = mr_block_seek(y, off, MR_SEEK_DATA, &ry, NULL);
            assert_int_equal(ok_x, ok_y);
            if (ok_x)
                assert_int_equal(rx, ry);
            assert_true(mr_block_seek(x, off, MR_SEEK_HOLE, &rx, NULL));
            assert_true(mr_block_seek(y, off, MR_SEEK_HOLE, &ry, NULL));
            assert_int_equal(rx, ry);
        }
    }
    assert_int_equal(a->legacy.page_records, b->legacy.page_records);
    assert_int_equal(a->legacy.zero_records, b->legacy.zero_records);
    assert_int_equal(a->legacy.xbzrle_records, b->legacy.xbzrle_records);
    assert_int_equal(a->legacy.resent, b->legacy.resent);
    assert_int_equal(a->vmdesc_offset, b->vmdesc_offset);
    assert_int_equal(a->vmdesc_len, b->vmdesc_len);
    g_autofree char *ja = mr_image_describe_json(a), *jb = mr_image_describe_json(b);
    char *fa = strstr(ja, "\"index_from_cache\""), *fb = strstr(jb, "\"index_from_cache\"");
    assert_non_null(fa);
    assert_non_null(fb);
    *fa = *fb = 0; /* all but the index_from_cache field and what follows it */
    assert_string_equal(ja, jb);
    char *ra = strstr(fa + 1, "\"blocks\""), *rb = strstr(fb + 1, "\"blocks\"");
    assert_string_equal(ra, rb);
}

static void test_index_written_then_loaded(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 1);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autoptr(MrImage) first = open_file(f.image, f.index);
    assert_true(g_file_test(f.index, G_FILE_TEST_IS_REGULAR));
    assert_index(first, f.index, FALSE);
    assert_matches_model(&s, first);
    struct stat st;
    assert_int_equal(stat(f.index, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    g_autoptr(MrImage) second = open_file(f.image, f.index);
    assert_index(second, f.index, TRUE);
    assert_matches_model(&s, second);
    assert_same_image(first, second);
    assert_int_equal(second->legacy.xbzrle_records, 1);
    /* a cached open reports no stream walk, and a third open loads it again */
    Progress p = {0};
    MrOpenOptions opts = {.index_path = f.index, .progress = on_progress, .progress_data = &p};
    g_autoptr(MrImage) third = mr_image_open(f.image, &opts, NULL);
    assert_non_null(third);
    assert_index(third, f.index, TRUE);
    assert_same_image(first, third);
    ib_spec_clear(&s);
    files_clear(&f);
}

/* Touching the image (new mtime/ctime only): the index is not trusted, the stream is
 * walked again and the index rewritten. */
static void test_index_touch(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 2);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autoptr(MrImage) a = open_file(f.image, f.index);
    assert_index(a, f.index, FALSE);
    struct timespec times[2] = {{.tv_sec = 1700000000, .tv_nsec = 5},
                                {.tv_sec = 1700000000, .tv_nsec = 5}};
    assert_int_equal(utimensat(AT_FDCWD, f.image, times, 0), 0);
    g_autoptr(MrImage) b = open_file(f.image, f.index);
    assert_index(b, f.index, FALSE);
    assert_matches_model(&s, b);
    g_autoptr(MrImage) c = open_file(f.image, f.index);
    assert_index(c, f.index, TRUE);
    /* ctime alone: a chmod */
    assert_int_equal(chmod(f.image, 0640), 0);
    g_autoptr(MrImage) d = open_file(f.image, f.index);
    assert_index(d, f.index, FALSE);
    ib_spec_clear(&s);
    files_clear(&f);
}

/* One byte of a page rewritten in place (same size, same inode): rescanned, new bytes. */
static void rewrite_byte_case(gboolean wait)
{
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 3);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    {
        g_autoptr(MrImage) a = open_file(f.image, f.index);
        assert_index(a, f.index, FALSE);
    }
    if (wait)
        g_usleep(20000);
    /* pc.ram page 3: its PAGE record's first byte */
    guint64 at = ib_record(&s, 3)->data_offset;
    assert_int_equal(ib_record(&s, 3)->addr, 3 * PS);
    int fd = open(f.image, O_WRONLY);
    assert_true(fd >= 0);
    guint8 v = 0;
    assert_int_equal(pwrite(fd, &v, 1, (off_t)at), 1);
    close(fd);
    g_autoptr(MrImage) b = open_file(f.image, f.index);
    assert_index(b, f.index, FALSE);
    guint8 page[PS];
    seed_page(3 + 3, page, PS);
    page[0] = 0;
    assert_page(b, 0, 3, page);
    ib_spec_clear(&s);
    files_clear(&f);
}

static void test_index_rewrite_one_byte(void **state)
{
    (void)state;
    rewrite_byte_case(TRUE);
}

/* The same, right after the index was written (same clock tick as the original write on
 * a kernel with coarse timestamps). */
static void test_index_rewrite_one_byte_at_once(void **state)
{
    (void)state;
    rewrite_byte_case(FALSE);
}

/* Bytes appended: the size differs, so the stream is walked again, and the appended
 * bytes mean there is no VM description at the end any more: the open fails, rather than
 * an old index covering for a changed file. */
static void test_index_append(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 4);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    {
        g_autoptr(MrImage) a = open_file(f.image, f.index);
        assert_index(a, f.index, FALSE);
    }
    FILE *fp = fopen(f.image, "ab");
    assert_non_null(fp);
    fputs("appended", fp);
    fclose(fp);
    MrOpenOptions opts = {.index_path = f.index};
    GError *error = NULL;
    MrImage *img = mr_image_open(f.image, &opts, &error);
    assert_null(img);
    assert_mr_error(error, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
    files_clear(&f);
}

/* The image replaced by rename with another image of the same size (new inode): the new
 * content is served. */
static void test_index_replaced_by_rename(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s1, s2;
    cache_spec(&s1, 5);
    cache_spec(&s2, 6);
    g_autoptr(GByteArray) a1 = ib_build(&s1);
    g_autoptr(GByteArray) a2 = ib_build(&s2);
    assert_int_equal(a1->len, a2->len);
    assert_memory_not_equal(a1->data, a2->data, a1->len);
    write_bytes(f.image, a1->data, a1->len);
    {
        g_autoptr(MrImage) a = open_file(f.image, f.index);
        assert_index(a, f.index, FALSE);
        g_autoptr(MrImage) b = open_file(f.image, f.index);
        assert_index(b, f.index, TRUE);
    }
    g_autofree char *tmp = g_build_filename(f.dir, "new.tmp", NULL);
    write_bytes(tmp, a2->data, a2->len);
    struct stat st;
    assert_int_equal(stat(f.image, &st), 0);
    struct timespec times[2] = {st.st_atim, st.st_mtim}; /* even the same mtime */
    assert_int_equal(utimensat(AT_FDCWD, tmp, times, 0), 0);
    assert_int_equal(rename(tmp, f.image), 0);
    g_autoptr(MrImage) c = open_file(f.image, f.index);
    assert_index(c, f.index, FALSE);
    assert_matches_model(&s2, c);
    ib_spec_clear(&s1);
    ib_spec_clear(&s2);
    files_clear(&f);
}

/* Open with a broken index file in place: it is ignored, the stream walked again and the
 * right bytes served. A file that is still recognisably an index (its magic is intact) is
 * then replaced by a good one; a file that is not (garbage, a damaged magic) is never
 * replaced -- -o index= may name a file that is not ours; a file too short to tell may go
 * either way, but is only ever replaced by a good index. */
static void check_broken_index(const Files *f, const IbSpec *s, const char *what)
{
    g_autoptr(GByteArray) broken = read_all(f->index);
    gboolean ours = broken->len >= 8 && memcmp(broken->data, "MRAMIDX1", 8) == 0;
    gboolean foreign = broken->len >= 8 && !ours;
    GError *error = NULL;
    MrOpenOptions opts = {.index_path = f->index};
    g_autoptr(MrImage) img = mr_image_open(f->image, &opts, &error);
    if (img == NULL || img->legacy.from_cache)
        print_error("broken index (%s): %s\n", what,
                    img == NULL ? error->message : "loaded from cache");
    assert_no_error(error);
    assert_non_null(img);
    assert_false(img->legacy.from_cache);
    assert_matches_model(s, img);
    if (ours || (!foreign && img->legacy.index_path != NULL)) {
        if (img->legacy.index_path == NULL)
            print_error("broken index (%s): not replaced by a good one\n", what);
        assert_index(img, f->index, FALSE);
        g_autoptr(MrImage) again = open_file(f->image, f->index);
        assert_index(again, f->index, TRUE);
        assert_matches_model(s, again);
    } else {
        assert_index(img, NULL, FALSE);
        g_autoptr(GByteArray) after = read_all(f->index);
        if (after->len != broken->len || memcmp(after->data, broken->data, after->len) != 0)
            print_error("broken index (%s): a file that is not an index was replaced\n", what);
        assert_int_equal(after->len, broken->len);
        assert_memory_equal(after->data, broken->data, after->len);
    }
}

static void test_index_corrupt(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 7);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autoptr(MrImage) first = open_file(f.image, f.index);
    g_autoptr(GByteArray) good = read_all(f.index);
    assert_true(good->len > 200);
    /* a flipped bit in the header, in an entry, in the slots, in the checksum */
    const gsize flips[] = {0, 20, 150, 300, good->len / 2, good->len - 20, good->len - 1};
    for (gsize i = 0; i < G_N_ELEMENTS(flips); i++) {
        g_autoptr(GByteArray) bad = g_byte_array_new();
        g_byte_array_append(bad, good->data, good->len);
        bad->data[flips[i]] ^= 0x10;
        write_bytes(f.index, bad->data, bad->len);
        g_autofree char *what = g_strdup_printf("bit flipped at %" G_GSIZE_FORMAT, flips[i]);
        check_broken_index(&f, &s, what);
    }
    /* truncated: to nothing, inside the header, by one byte, to half */
    const gsize cuts[] = {0, 7, 100, good->len - 1, good->len / 2};
    for (gsize i = 0; i < G_N_ELEMENTS(cuts); i++) {
        write_bytes(f.index, good->data, cuts[i]);
        g_autofree char *what = g_strdup_printf("cut to %" G_GSIZE_FORMAT, cuts[i]);
        check_broken_index(&f, &s, what);
    }
    /* a byte appended */
    g_autoptr(GByteArray) longer = g_byte_array_new();
    g_byte_array_append(longer, good->data, good->len);
    g_byte_array_append(longer, (const guint8 *)"x", 1);
    write_bytes(f.index, longer->data, longer->len);
    check_broken_index(&f, &s, "a byte appended");
    /* garbage of the same size, and a directory where the file should be */
    g_autoptr(GByteArray) junk = g_byte_array_sized_new(good->len);
    GRand *rnd = g_rand_new_with_seed(7);
    for (guint i = 0; i < good->len; i++) {
        guint8 b = (guint8)g_rand_int(rnd);
        g_byte_array_append(junk, &b, 1);
    }
    g_rand_free(rnd);
    write_bytes(f.index, junk->data, junk->len);
    check_broken_index(&f, &s, "garbage");
    ib_spec_clear(&s);
    files_clear(&f);
}

/* The index of another image (same size, same layout) copied over this one's. */
static void test_index_from_other_image(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s1, s2;
    cache_spec(&s1, 8);
    cache_spec(&s2, 9);
    g_autoptr(GByteArray) a1 = ib_build(&s1);
    g_autoptr(GByteArray) a2 = ib_build(&s2);
    write_bytes(f.image, a1->data, a1->len);
    g_autofree char *other = g_build_filename(f.dir, "other.sav", NULL);
    g_autofree char *other_idx = g_build_filename(f.dir, "other.idx", NULL);
    write_bytes(other, a2->data, a2->len);
    /* same mtime for both files: only the inode tells them apart */
    struct stat st;
    assert_int_equal(stat(f.image, &st), 0);
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    assert_int_equal(utimensat(AT_FDCWD, other, times, 0), 0);
    {
        g_autoptr(MrImage) o = open_file(other, other_idx);
        assert_index(o, other_idx, FALSE);
        g_autoptr(MrImage) o2 = open_file(other, other_idx);
        assert_index(o2, other_idx, TRUE);
    }
    g_autoptr(GByteArray) idx = read_all(other_idx);
    g_autofree char *dir = g_path_get_dirname(f.index);
    assert_int_equal(g_mkdir_with_parents(dir, 0700), 0);
    write_bytes(f.index, idx->data, idx->len);
    check_broken_index(&f, &s1, "another image's index");
    ib_spec_clear(&s1);
    ib_spec_clear(&s2);
    files_clear(&f);
}

/* ---- an index with a valid checksum but hostile contents. The layout below mirrors
 * lib/mr-index-cache.c (IndexHeader, IndexEntry, the checksum) so the test can re-seal a
 * tampered file; the checks it exercises are the ones that make the file untrusted input. */
#define IDX_HEADER_SIZE 152 /* magic .. n_blocks */
#define IDX_N_BLOCKS    144
#define IDX_ENTRY_SIZE  280
#define IDX_E_PAGE_SIZE 256
#define IDX_E_SIZE      264
#define IDX_E_DECODED   272

static guint64 idx_checksum(const guint8 *data, gsize len)
{
    guint64 h = G_GUINT64_CONSTANT(0xcbf29ce484222325);
    gsize i = 0;
    for (; i + 8 <= len; i += 8) {
        guint64 w;
        memcpy(&w, data + i, 8);
        h = (h ^ w) * G_GUINT64_CONSTANT(0x100000001b3);
        h ^= h >> 29;
    }
    for (; i < len; i++)
        h = (h ^ data[i]) * G_GUINT64_CONSTANT(0x100000001b3);
    return h;
}

static void idx_seal(GByteArray *idx)
{
    guint64 sum = idx_checksum(idx->data, idx->len - 8);
    memcpy(idx->data + idx->len - 8, &sum, 8);
}

static void idx_put64(GByteArray *idx, gsize off, guint64 v)
{
    memcpy(idx->data + off, &v, 8);
}

static void idx_put32(GByteArray *idx, gsize off, guint32 v)
{
    memcpy(idx->data + off, &v, 4);
}

static guint64 idx_get64(const GByteArray *idx, gsize off)
{
    guint64 v;
    memcpy(&v, idx->data + off, 8);
    return v;
}

static void test_index_hostile_contents(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 10);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autoptr(MrImage) first = open_file(f.image, f.index);
    g_autoptr(GByteArray) good = read_all(f.index);
    /* the layout is what this test thinks it is: re-sealing the good file changes nothing,
     * and it loads */
    assert_int_equal(idx_get64(good, IDX_N_BLOCKS), 2);
    assert_int_equal(idx_get64(good, IDX_HEADER_SIZE + IDX_E_SIZE), 32 * PS);
    guint64 decoded0 = idx_get64(good, IDX_HEADER_SIZE + IDX_E_DECODED);
    assert_int_equal(decoded0, PS); /* pc.ram page 7 */
    gsize slots0 = IDX_HEADER_SIZE + 2 * IDX_ENTRY_SIZE;
    assert_int_equal(good->len, slots0 + 32 * 8 + decoded0 + 4 * 8 + 0 + 8);
    {
        g_autoptr(GByteArray) same = g_byte_array_new();
        g_byte_array_append(same, good->data, good->len);
        idx_seal(same);
        assert_memory_equal(same->data, good->data, good->len);
        g_autoptr(MrImage) ok = open_file(f.image, f.index);
        assert_index(ok, f.index, TRUE);
    }
    struct {
        gsize off;
        int width;
        guint64 value;
        const char *what;
    } cases[] = {
        {slots0 + 0 * 8, 8, arr->len - PS + 1, "slot: page runs past the end of the image"},
        {slots0 + 0 * 8, 8, G_GUINT64_CONSTANT(0x7fffffffffffffff), "slot far past the image"},
        {slots0 + 7 * 8, 8, MR_SLOT_DECODED | 1, "decoded slot not page aligned"},
        {slots0 + 7 * 8, 8, MR_SLOT_DECODED | PS, "decoded slot past the decoded pages"},
        {IDX_N_BLOCKS, 8, 3, "one block more than the file holds"},
        {IDX_N_BLOCKS, 8, G_GUINT64_CONSTANT(1) << 40, "absurd block count"},
        {IDX_HEADER_SIZE + IDX_E_PAGE_SIZE, 4, 0, "page size 0"},
        {IDX_HEADER_SIZE + IDX_E_PAGE_SIZE, 4, 512, "page size 512"},
        {IDX_HEADER_SIZE + IDX_E_SIZE, 8, 33 * PS, "a block one page longer"},
        {IDX_HEADER_SIZE + IDX_E_SIZE, 8, G_GUINT64_CONSTANT(1) << 60, "an absurd block size"},
        {IDX_HEADER_SIZE + IDX_E_DECODED, 8, G_GUINT64_CONSTANT(1) << 40, "absurd decoded size"},
        {IDX_HEADER_SIZE + IDX_E_DECODED, 8, 0, "decoded pages missing"},
    };
    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GByteArray) bad = g_byte_array_new();
        g_byte_array_append(bad, good->data, good->len);
        if (cases[i].width == 8)
            idx_put64(bad, cases[i].off, cases[i].value);
        else
            idx_put32(bad, cases[i].off, (guint32)cases[i].value);
        idx_seal(bad);
        write_bytes(f.index, bad->data, bad->len);
        check_broken_index(&f, &s, cases[i].what);
    }
    ib_spec_clear(&s);
    files_clear(&f);
}

/* index_path "": nothing written anywhere, the description says so. */
static void test_index_disabled(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 11);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autofree char *default_dir = g_build_filename(cache_home, "mramfs", NULL);
    remove_tree(default_dir);
    for (int i = 0; i < 2; i++) {
        g_autoptr(MrImage) img = open_file(f.image, "");
        assert_index(img, NULL, FALSE);
        g_autofree char *json = mr_image_describe_json(img);
        assert_non_null(strstr(json, "\"index\": null"));
        assert_matches_model(&s, img);
    }
    assert_false(g_file_test(default_dir, G_FILE_TEST_EXISTS));
    GDir *d = g_dir_open(f.dir, 0, NULL);
    const char *name;
    guint n = 0;
    while ((name = g_dir_read_name(d)) != NULL)
        n++;
    g_dir_close(d);
    assert_int_equal(n, 1); /* only the image */
    ib_spec_clear(&s);
    files_clear(&f);
}

/* An index that cannot be written (its directory is a file; root ignores permissions):
 * the open still succeeds and says it kept no index. */
static void test_index_unwritable(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 12);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autofree char *blocker = g_build_filename(f.dir, "cache", NULL);
    write_bytes(blocker, (const guint8 *)"x", 1);
    for (int i = 0; i < 2; i++) {
        g_autoptr(MrImage) img = open_file(f.image, f.index);
        assert_index(img, NULL, FALSE);
        assert_matches_model(&s, img);
        g_autofree char *json = mr_image_describe_json(img);
        assert_non_null(strstr(json, "\"index\": null"));
    }
    /* a directory where the index file should be */
    g_autofree char *dir_index = g_build_filename(f.dir, "dir.idx", NULL);
    assert_int_equal(g_mkdir(dir_index, 0700), 0);
    g_autoptr(MrImage) img = open_file(f.image, dir_index);
    assert_index(img, NULL, FALSE);
    ib_spec_clear(&s);
    files_clear(&f);
}

/* An index path that names the image itself (a slip of the fingers: `--index IMAGE`) must
 * not replace the saved VM with an index: the image is not an index file, so it is neither
 * loaded nor overwritten. */
static void test_index_path_is_the_image(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 16);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    {
        g_autoptr(MrImage) img = open_file(f.image, f.image);
        assert_matches_model(&s, img);
    }
    g_autoptr(GByteArray) after = read_all(f.image);
    if (after->len != arr->len || memcmp(after->data, arr->data, arr->len) != 0)
        print_error("the image was overwritten by its index (%u bytes, starting \"%.8s\")\n",
                    after->len, (const char *)after->data);
    assert_int_equal(after->len, arr->len);
    assert_memory_equal(after->data, arr->data, arr->len);
    ib_spec_clear(&s);
    files_clear(&f);
}

/* No index_path: $XDG_CACHE_HOME/mramfs/<sha256 of the canonical image path>.idx. */
static void test_index_default_location(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    cache_spec(&s, 13);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autofree char *hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256, f.image, -1);
    g_autofree char *name = g_strconcat(hash, ".idx", NULL);
    g_autofree char *want = g_build_filename(cache_home, "mramfs", name, NULL);
    {
        g_autoptr(MrImage) a = open_file(f.image, NULL);
        assert_index(a, want, FALSE);
        assert_true(g_file_test(want, G_FILE_TEST_IS_REGULAR));
        g_autoptr(MrImage) b = open_file(f.image, NULL);
        assert_index(b, want, TRUE);
        assert_same_image(a, b);
    }
    /* the same file by another spelling of its path: the same index */
    g_autofree char *base = g_path_get_basename(f.dir);
    g_autofree char *odd = g_build_filename(f.dir, "..", base, ".", "img.sav", NULL);
    g_autoptr(MrImage) c = open_file(odd, NULL);
    assert_index(c, want, TRUE);
    struct stat st;
    assert_int_equal(stat(want, &st), 0);
    g_autofree char *dir = g_path_get_dirname(want);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    remove_tree(dir);
    ib_spec_clear(&s);
    files_clear(&f);
}

/* Mapped-ram images never make an index. */
static void test_index_not_for_mapped_ram(void **state)
{
    (void)state;
    Files f;
    files_init(&f);
    IbSpec s;
    ib_spec_init(&s);
    IbBlock *b = ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_block_set_data(b, 1, 1);
    g_autoptr(GByteArray) arr = ib_build(&s);
    write_bytes(f.image, arr->data, arr->len);
    g_autoptr(MrImage) img = open_file(f.image, f.index);
    assert_string_equal(mr_image_format(img), "mapped-ram");
    assert_false(g_file_test(f.index, G_FILE_TEST_EXISTS));
    ib_spec_clear(&s);
    files_clear(&f);
}

/* Memory sources have no file identity (device, inode and times are all 0): two different
 * images of the same size opened by the same name must not share an index. With no
 * index_path the default location is used, keyed by the name "test.img". */
static void test_memory_source_default_index(void **state)
{
    (void)state;
    IbSpec s1, s2;
    cache_spec(&s1, 14);
    cache_spec(&s2, 15);
    g_autoptr(GBytes) b1 = ib_build_bytes(&s1);
    g_autoptr(GBytes) b2 = ib_build_bytes(&s2);
    assert_int_equal(g_bytes_get_size(b1), g_bytes_get_size(b2));
    g_autoptr(MrImage) i1 = assert_open_ok(b1);
    g_autoptr(MrImage) i2 = assert_open_ok(b2);
    if (i2->legacy.from_cache)
        print_error("the second memory image was served from the first one's index (%s)\n",
                    i2->legacy.index_path);
    assert_matches_model(&s1, i1);
    assert_matches_model(&s2, i2);
    g_autofree char *dir = g_build_filename(cache_home, "mramfs", NULL);
    remove_tree(dir);
    ib_spec_clear(&s1);
    ib_spec_clear(&s2);
}

int main(void)
{
    /* The default index location is under $XDG_CACHE_HOME: a private one for this run (set
     * before GLib reads it). */
    cache_home = g_dir_make_tmp("mramfs-cache-XXXXXX", NULL);
    g_assert(cache_home != NULL);
    g_setenv("XDG_CACHE_HOME", cache_home, TRUE);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_standard),
        cmocka_unit_test(test_pread_across_slots),
        cmocka_unit_test(test_last_record_wins),
        cmocka_unit_test(test_resent_count),
        cmocka_unit_test(test_continue_across_sections),
        cmocka_unit_test(test_page_only_in_end),
        cmocka_unit_test(test_multifd_flush_skipped),
        cmocka_unit_test(test_commands_and_footers),
        cmocka_unit_test(test_records_in_start),
        cmocka_unit_test(test_no_records),
        cmocka_unit_test(test_small_target_pages),
        cmocka_unit_test(test_idstr_matching),
        cmocka_unit_test(test_xbzrle_onto_page),
        cmocka_unit_test(test_xbzrle_onto_zero),
        cmocka_unit_test(test_xbzrle_then_page_or_zero),
        cmocka_unit_test(test_xbzrle_decode_edges),
        cmocka_unit_test(test_xbzrle_decode_random),
        cmocka_unit_test(test_xbzrle_bad_records),
        cmocka_unit_test(test_continue_without_block),
        cmocka_unit_test(test_unknown_idstr),
        cmocka_unit_test(test_offset_past_block),
        cmocka_unit_test(test_zero_fill_byte),
        cmocka_unit_test(test_unsupported_and_unknown_flags),
        cmocka_unit_test(test_used_length_not_page_multiple),
        cmocka_unit_test(test_page_count_bound),
        cmocka_unit_test(test_x_ignore_shared),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_truncated_every_byte),
        cmocka_unit_test(test_truncated_records),
        cmocka_unit_test(test_libvirt_raw),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_index_written_then_loaded),
        cmocka_unit_test(test_index_touch),
        cmocka_unit_test(test_index_rewrite_one_byte),
        cmocka_unit_test(test_index_rewrite_one_byte_at_once),
        cmocka_unit_test(test_index_append),
        cmocka_unit_test(test_index_replaced_by_rename),
        cmocka_unit_test(test_index_corrupt),
        cmocka_unit_test(test_index_from_other_image),
        cmocka_unit_test(test_index_hostile_contents),
        cmocka_unit_test(test_index_disabled),
        cmocka_unit_test(test_index_unwritable),
        cmocka_unit_test(test_index_path_is_the_image),
        cmocka_unit_test(test_index_default_location),
        cmocka_unit_test(test_index_not_for_mapped_ram),
        cmocka_unit_test(test_memory_source_default_index),
    };
    int failed = cmocka_run_group_tests_name("legacy", tests, NULL, NULL);
    remove_tree(cache_home);
    g_free(cache_home);
    return failed;
}
