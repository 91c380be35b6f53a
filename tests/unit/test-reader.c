/* test-reader.c: lib/mr-reader.c — the bounded big-endian reader with sticky errors. */
#include "test-helpers.h"

#include <string.h>

/* A memory source of @len bytes, byte i = (i * 7 + 3) & 0xff unless @data is given. */
static MrSource *make_source(const guint8 *data, gsize len)
{
    g_autofree guint8 *buf = g_malloc(MAX(len, 1));
    for (gsize i = 0; i < len; i++)
        buf[i] = data ? data[i] : (guint8)(i * 7 + 3);
    g_autoptr(GBytes) bytes = g_bytes_new(buf, len);
    return mr_source_new_from_bytes(bytes);
}

static guint8 pattern(gsize i)
{
    return (guint8)(i * 7 + 3);
}

static void test_values(void **state)
{
    (void)state;
    const guint8 data[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
                           0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0xff, 0xfe, 0x80,
                           0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xaa, 0xbb};
    g_autoptr(MrSource) src = make_source(data, sizeof data);
    MrReader r;
    mr_reader_init(&r, src, 0);
    assert_int_equal(mr_reader_u8(&r), 0x01);
    assert_int_equal(mr_reader_be16(&r), 0x0203);
    assert_int_equal(mr_reader_be32(&r), 0x04050607);
    assert_int_equal(mr_reader_be64(&r), G_GUINT64_CONSTANT(0x08090a0b0c0d0e0f));
    assert_int_equal(r.pos, 15);
    mr_reader_seek(&r, 15);
    assert_int_equal(mr_reader_be16(&r), 0xfffe);
    assert_int_equal(mr_reader_be64(&r), G_GUINT64_CONSTANT(0x8000000000000001));
    assert_int_equal(r.pos, 25);
    assert_int_equal(mr_reader_peek_u8(&r), 0xaa);
    assert_int_equal(r.pos, 25); /* peek does not consume */
    guint8 two[2];
    mr_reader_bytes(&r, two, 2);
    assert_bytes_at(two, 0, "\xaa\xbb", 2);
    assert_int_equal(mr_reader_peek_u8(&r), -1); /* at EOF: not an error */
    GError *error = NULL;
    assert_true(mr_reader_check(&r, "values", &error));
    assert_no_error(error);

    /* be64 with every byte distinct, at an offset */
    mr_reader_init(&r, src, 1);
    assert_int_equal(mr_reader_be64(&r), G_GUINT64_CONSTANT(0x0203040506070809));
    mr_reader_skip(&r, 3);
    assert_int_equal(mr_reader_be32(&r), 0x0d0e0fff);
    assert_true(mr_reader_check(&r, "values", &error));
    mr_reader_clear(&r);
}

static void test_sticky_error(void **state)
{
    (void)state;
    g_autoptr(MrSource) src = make_source(NULL, 10);
    MrReader r;
    mr_reader_init(&r, src, 0);
    assert_int_equal(mr_reader_be64(&r), G_GUINT64_CONSTANT(0x030a11181f262d34));
    assert_int_equal(mr_reader_be32(&r), 0); /* 4 bytes at 8: 2 short */
    assert_int_equal(r.pos, 8);              /* a failed read does not move */
    /* everything after the first failure returns 0, even reads that would fit */
    mr_reader_seek(&r, 0);
    assert_int_equal(mr_reader_u8(&r), 0);
    assert_int_equal(mr_reader_be16(&r), 0);
    assert_int_equal(mr_reader_be64(&r), 0);
    guint8 buf[4] = {1, 2, 3, 4};
    mr_reader_bytes(&r, buf, sizeof buf);
    assert_bytes_at(buf, 0, "\0\0\0\0", 4);
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    mr_reader_skip(&r, G_MAXUINT64); /* would be an overflow error: the first error stays */
    mr_reader_seek(&r, 100);
    assert_int_equal(mr_reader_be32(&r), 0);
    GError *error = NULL;
    assert_false(mr_reader_check(&r, "block table", &error));
    assert_non_null(error);
    assert_int_equal(error->code, MR_ERROR_TRUNCATED);
    assert_true(g_str_has_prefix(error->message, "block table: truncated: 4 bytes at 0x8 "));
    g_clear_error(&error);
    /* check() moved the error out: the reader is clean again */
    assert_null(r.error);
    assert_true(mr_reader_check(&r, "again", &error));
    mr_reader_clear(&r);
}

/* Fixed-width reads and byte runs that straddle the 4 KiB window. */
static void test_window_crossing(void **state)
{
    (void)state;
    const gsize size = 3 * MR_READER_WINDOW + 100;
    g_autoptr(MrSource) src = make_source(NULL, size);
    MrReader r;
    mr_reader_init(&r, src, 0);
    assert_int_equal(mr_reader_u8(&r), pattern(0)); /* window = [0, 4096) */
    for (gsize start = MR_READER_WINDOW - 8; start <= MR_READER_WINDOW; start++) {
        mr_reader_seek(&r, start);
        guint64 want = 0;
        for (gsize i = 0; i < 8; i++)
            want = want << 8 | pattern(start + i);
        assert_int_equal(mr_reader_be64(&r), want);
        mr_reader_seek(&r, start + 1);
        assert_int_equal(mr_reader_be32(&r),
                         (guint32)pattern(start + 1) << 24 | (guint32)pattern(start + 2) << 16 |
                             (guint32)pattern(start + 3) << 8 | pattern(start + 4));
    }
    /* backwards seek into an earlier window */
    mr_reader_seek(&r, 5);
    assert_int_equal(mr_reader_be16(&r), (guint16)(pattern(5) << 8 | pattern(6)));
    /* one run longer than two windows, starting unaligned */
    gsize len = 2 * MR_READER_WINDOW + 333;
    g_autofree guint8 *buf = g_malloc(len);
    mr_reader_seek(&r, 77);
    mr_reader_bytes(&r, buf, len);
    for (gsize i = 0; i < len; i++)
        assert_int_equal(buf[i], pattern(77 + i));
    assert_int_equal(r.pos, 77 + len);
    /* the last bytes of the file, through a window that the file end shortens */
    mr_reader_seek(&r, size - 4);
    assert_int_equal(mr_reader_be32(&r), (guint32)pattern(size - 4) << 24 |
                                             (guint32)pattern(size - 3) << 16 |
                                             (guint32)pattern(size - 2) << 8 | pattern(size - 1));
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    GError *error = NULL;
    assert_true(mr_reader_check(&r, "window", &error));
    assert_no_error(error);

    /* a run that ends past EOF fails and zeroes the whole output */
    memset(buf, 0x55, len);
    mr_reader_seek(&r, size - 10);
    mr_reader_bytes(&r, buf, 20);
    for (gsize i = 0; i < 20; i++)
        assert_int_equal(buf[i], 0);
    assert_false(mr_reader_check(&r, "tail", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "tail: truncated");
    mr_reader_clear(&r);
}

static void test_peek_at_eof(void **state)
{
    (void)state;
    g_autoptr(MrSource) src = make_source((const guint8 *)"\x07", 1);
    MrReader r;
    mr_reader_init(&r, src, 0);
    assert_int_equal(mr_reader_peek_u8(&r), 0x07);
    assert_int_equal(mr_reader_u8(&r), 0x07);
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    mr_reader_seek(&r, 1000); /* past EOF: still -1, still no error */
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    mr_reader_seek(&r, G_MAXUINT64);
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    GError *error = NULL;
    assert_true(mr_reader_check(&r, "peek", &error));
    assert_no_error(error);

    g_autoptr(MrSource) empty = make_source(NULL, 0);
    mr_reader_init(&r, empty, 0);
    assert_int_equal(mr_reader_peek_u8(&r), -1);
    assert_int_equal(mr_reader_u8(&r), 0);
    assert_false(mr_reader_check(&r, "empty", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "empty: truncated");
}

static void test_skip(void **state)
{
    (void)state;
    g_autoptr(MrSource) src = make_source(NULL, 64);
    MrReader r;
    mr_reader_init(&r, src, 10);
    mr_reader_skip(&r, 20);
    assert_int_equal(r.pos, 30);
    assert_int_equal(mr_reader_u8(&r), pattern(30));
    /* a skip past EOF fails at once, where the cut is, and the position stays */
    mr_reader_skip(&r, 100);
    assert_int_equal(r.pos, 31);
    GError *error = NULL;
    assert_int_equal(mr_reader_u8(&r), 0);
    assert_false(mr_reader_check(&r, "skip", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "skip: truncated: 100 bytes at 0x1f");
    /* a skip to exactly EOF is fine */
    mr_reader_init(&r, src, 10);
    mr_reader_skip(&r, 54);
    assert_int_equal(r.pos, 64);
    assert_true(mr_reader_check(&r, "skip", &error));

    /* overflow: CORRUPT, position unchanged */
    mr_reader_init(&r, src, 10);
    mr_reader_skip(&r, G_MAXUINT64 - 5);
    assert_int_equal(r.pos, 10);
    assert_int_equal(mr_reader_u8(&r), 0);
    assert_false(mr_reader_check(&r, "command record", &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "command record: offset overflow");
}

/* A seek far past EOF must fail at the next read, also once the window holds data
 * (mr-reader.h: "a seek past EOF fails there"). */
static void test_seek_far_past_eof(void **state)
{
    (void)state;
    g_autoptr(MrSource) src = make_source(NULL, 64);
    const guint64 targets[] = {
        64, 65, 1 << 20, G_MAXUINT64 / 2, G_MAXUINT64 - 8, G_MAXUINT64 - 2, G_MAXUINT64};
    for (gsize i = 0; i < G_N_ELEMENTS(targets); i++) {
        MrReader r;
        mr_reader_init(&r, src, 0);
        assert_int_equal(mr_reader_u8(&r), pattern(0)); /* window = [0, 64) */
        mr_reader_seek(&r, targets[i]);
        guint32 v = mr_reader_be32(&r);
        GError *error = NULL;
        gboolean ok = mr_reader_check(&r, "far", &error);
        if (ok || v != 0)
            print_error("seek to 0x%" G_GINT64_MODIFIER "x then be32: ok=%d value=0x%08x\n",
                        targets[i], ok, v);
        assert_int_equal(v, 0);
        assert_false(ok);
        assert_mr_error(error, MR_ERROR_TRUNCATED, "far: truncated");
    }
}

/* The truncation message gives the size of the read that failed ("let mr_source_read
 * report the truncation with real numbers"), wherever the position is. */
static void test_truncation_message(void **state)
{
    (void)state;
    g_autoptr(MrSource) src = make_source(NULL, 64);
    MrReader r;
    GError *error = NULL;
    mr_reader_init(&r, src, 62); /* inside the file, read runs past the end */
    mr_reader_be32(&r);
    assert_false(mr_reader_check(&r, "a", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED,
                    "a: truncated: 4 bytes at 0x3e run past the end "
                    "of the file (0x40)");
    mr_reader_init(&r, src, 64); /* exactly at the end */
    mr_reader_u8(&r);
    assert_false(mr_reader_check(&r, "b", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "b: truncated: 1 bytes at 0x40 run past");
    mr_reader_init(&r, src, 0x83); /* past the end */
    mr_reader_be16(&r);
    assert_false(mr_reader_check(&r, "c", &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "c: truncated: 2 bytes at 0x83 run past");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_sticky_error),
        cmocka_unit_test(test_window_crossing),
        cmocka_unit_test(test_peek_at_eof),
        cmocka_unit_test(test_skip),
        cmocka_unit_test(test_seek_far_past_eof),
        cmocka_unit_test(test_truncation_message),
    };
    return cmocka_run_group_tests_name("reader", tests, NULL, NULL);
}
