/* test-libvirt.c: lib/mr-libvirt.c — the libvirt save-image header. */
#include "test-helpers.h"

#include <string.h>

/* A 92-byte header, fields little-endian unless @big_endian. */
static void make_header(guint8 *h, const char *magic, guint32 version, guint32 data_len,
                        guint32 was_running, guint32 format, guint32 cookie_offset,
                        gboolean big_endian)
{
    memset(h, 0, MR_LIBVIRT_HEADER_SIZE);
    memcpy(h, magic, 16);
    const guint32 f[5] = {version, data_len, was_running, format, cookie_offset};
    for (int i = 0; i < 5; i++) {
        guint32 v = big_endian ? GUINT32_TO_BE(f[i]) : GUINT32_TO_LE(f[i]);
        memcpy(h + 16 + 4 * i, &v, 4);
    }
}

/* Parse @h with a file of @file_size; the result and *hdr. */
static gboolean parse(const guint8 *h, gsize len, guint64 file_size, gboolean *is_libvirt,
                      MrLibvirtHeader *hdr, GError **error)
{
    memset(hdr, 0xee, sizeof *hdr);
    *is_libvirt = 0x5555;
    return mr_libvirt_parse(h, len, file_size, is_libvirt, hdr, error);
}

static void test_not_libvirt(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    make_header(h, "QEVM\0\0\0\3\7\0\0\0\x0epc-i", 2, 0, 0, 6, 0, FALSE);
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    assert_true(parse(h, sizeof h, 1 << 20, &is_libvirt, &hdr, &error));
    assert_false(is_libvirt);
    assert_no_error(error);
    /* shorter than the magic, and empty */
    assert_true(parse((const guint8 *)"LibvirtQemudSav", 15, 15, &is_libvirt, &hdr, &error));
    assert_false(is_libvirt);
    assert_true(parse(h, 0, 0, &is_libvirt, &hdr, &error));
    assert_false(is_libvirt);
    /* case matters */
    make_header(h, "libvirtQemudSave", 2, 0, 0, 6, 0, FALSE);
    assert_true(parse(h, sizeof h, 1 << 20, &is_libvirt, &hdr, &error));
    assert_false(is_libvirt);
    assert_no_error(error);
}

static void test_partial(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    make_header(h, "LibvirtQemudPart", 2, 100, 1, 6, 0, FALSE);
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    assert_false(parse(h, sizeof h, 1 << 20, &is_libvirt, &hdr, &error));
    assert_true(is_libvirt);
    assert_mr_error(error, MR_ERROR_INCOMPLETE, "LibvirtQemudPart");
    /* even when nothing but the magic is there */
    assert_false(parse(h, 16, 16, &is_libvirt, &hdr, &error));
    assert_true(is_libvirt);
    assert_mr_error(error, MR_ERROR_INCOMPLETE, "did not finish");
}

static void test_short_header(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    make_header(h, "LibvirtQemudSave", 2, 0, 0, 6, 0, FALSE);
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    for (gsize len = 16; len < MR_LIBVIRT_HEADER_SIZE; len++) {
        assert_false(parse(h, len, len, &is_libvirt, &hdr, &error));
        assert_true(is_libvirt);
        assert_mr_error(error, MR_ERROR_TRUNCATED, "libvirt header needs 92 bytes");
    }
}

static void test_valid(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    /* the real image of format.md §2.4: data_len 67966 -> stream at 68058 */
    make_header(h, "LibvirtQemudSave", 2, 67966, 1, 6, 5000, FALSE);
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    assert_true(parse(h, sizeof h, 68058 + 100, &is_libvirt, &hdr, &error));
    assert_no_error(error);
    assert_true(is_libvirt);
    assert_int_equal(hdr.version, 2);
    assert_int_equal(hdr.data_len, 67966);
    assert_int_equal(hdr.was_running, 1);
    assert_int_equal(hdr.format, 6);
    assert_int_equal(hdr.cookie_offset, 5000);
    assert_int_equal(hdr.xml_len, 5000);
    assert_int_equal(hdr.cookie_len, 67966 - 5000);
    assert_int_equal(hdr.stream_offset, 68058);

    /* no cookie: the XML area is all of data_len (libvirt's own rule) */
    make_header(h, "LibvirtQemudSave", 2, 67948, 0, 6, 0, FALSE);
    assert_true(parse(h, sizeof h, 68040, &is_libvirt, &hdr, &error)); /* stream at EOF */
    assert_int_equal(hdr.xml_len, 67948);
    assert_int_equal(hdr.cookie_len, 0);
    assert_int_equal(hdr.stream_offset, 68040);
    assert_int_equal(hdr.was_running, 0);

    /* cookieOffset == data_len: an empty cookie area */
    make_header(h, "LibvirtQemudSave", 2, 300, 0, 6, 300, FALSE);
    assert_true(parse(h, sizeof h, 392, &is_libvirt, &hdr, &error));
    assert_int_equal(hdr.xml_len, 300);
    assert_int_equal(hdr.cookie_len, 0);

    /* version 1 and format 0 (raw: the stream layer names it) pass this layer */
    make_header(h, "LibvirtQemudSave", 1, 10, 0, 0, 0, FALSE);
    assert_true(parse(h, sizeof h, 200, &is_libvirt, &hdr, &error));
    assert_int_equal(hdr.version, 1);
    assert_int_equal(hdr.format, 0);
    assert_int_equal(hdr.stream_offset, 102);
    assert_no_error(error);
}

static void test_version(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    make_header(h, "LibvirtQemudSave", 3, 10, 0, 6, 0, FALSE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_true(is_libvirt);
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "unsupported libvirt save header version 3");
    make_header(h, "LibvirtQemudSave", 0, 10, 0, 6, 0, FALSE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "version 0");
    make_header(h, "LibvirtQemudSave", 0xffffffffu, 10, 0, 6, 0, FALSE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "version 4294967295");
    /* big-endian 3 is swapped to 3: still unsupported */
    make_header(h, "LibvirtQemudSave", 3, 10, 0, 6, 0, TRUE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "unsupported libvirt save header version");
}

/* A header written on a big-endian host: version reads as 0x02000000 > 2, so all five
 * fields are swapped (qemuSaveImageBswapHeader). */
static void test_big_endian(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    make_header(h, "LibvirtQemudSave", 2, 68000 - 92, 1, 6, 777, TRUE);
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    assert_true(parse(h, sizeof h, 70000, &is_libvirt, &hdr, &error));
    assert_no_error(error);
    assert_true(is_libvirt);
    assert_int_equal(hdr.version, 2);
    assert_int_equal(hdr.data_len, 68000 - 92);
    assert_int_equal(hdr.was_running, 1);
    assert_int_equal(hdr.format, 6);
    assert_int_equal(hdr.cookie_offset, 777);
    assert_int_equal(hdr.xml_len, 777);
    assert_int_equal(hdr.cookie_len, 68000 - 92 - 777);
    assert_int_equal(hdr.stream_offset, 68000);
}

static void test_formats(void **state)
{
    (void)state;
    static const char *const names[] = {"raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"};
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    for (guint32 f = 0; f <= 6; f++)
        assert_string_equal(mr_libvirt_format_name(f), names[f]);
    assert_string_equal(mr_libvirt_format_name(7), "unknown");
    assert_string_equal(mr_libvirt_format_name(G_MAXUINT32), "unknown");
    for (guint32 f = 1; f <= 5; f++) {
        for (int be = 0; be <= 1; be++) {
            make_header(h, "LibvirtQemudSave", 2, 10, 0, f, 0, be);
            assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
            assert_true(is_libvirt);
            g_autofree char *word = g_strdup_printf("libvirt save format %s (%u)", names[f], f);
            assert_mr_error(error, MR_ERROR_UNSUPPORTED, word);
        }
    }
    make_header(h, "LibvirtQemudSave", 2, 10, 0, 7, 0, FALSE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "unknown libvirt save format 7");
    make_header(h, "LibvirtQemudSave", 2, 10, 0, 0x10000, 0, FALSE);
    assert_false(parse(h, sizeof h, 1000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "unknown libvirt save format 65536");
}

static void test_lengths(void **state)
{
    (void)state;
    guint8 h[MR_LIBVIRT_HEADER_SIZE];
    gboolean is_libvirt;
    MrLibvirtHeader hdr;
    GError *error = NULL;
    /* stream one byte past the end of the file */
    make_header(h, "LibvirtQemudSave", 2, 1000, 0, 6, 0, FALSE);
    assert_false(parse(h, sizeof h, 1091, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "data_len 1000");
    /* the largest data_len: no overflow in 92 + data_len */
    make_header(h, "LibvirtQemudSave", 2, G_MAXUINT32, 0, 6, 0, FALSE);
    assert_false(parse(h, sizeof h, G_MAXUINT32, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "data_len 4294967295");
    make_header(h, "LibvirtQemudSave", 2, G_MAXUINT32, 0, 6, 0, FALSE);
    assert_true(parse(h, sizeof h, (guint64)G_MAXUINT32 + 92, &is_libvirt, &hdr, &error));
    assert_int_equal(hdr.stream_offset, (guint64)G_MAXUINT32 + 92);
    /* cookieOffset past data_len */
    make_header(h, "LibvirtQemudSave", 2, 1000, 0, 6, 1001, FALSE);
    assert_false(parse(h, sizeof h, 5000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "cookieOffset 1001 lies outside data_len 1000");
    make_header(h, "LibvirtQemudSave", 2, 1000, 0, 6, G_MAXUINT32, TRUE);
    assert_false(parse(h, sizeof h, 5000, &is_libvirt, &hdr, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "cookieOffset");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_libvirt),  cmocka_unit_test(test_partial),
        cmocka_unit_test(test_short_header), cmocka_unit_test(test_valid),
        cmocka_unit_test(test_version),      cmocka_unit_test(test_big_endian),
        cmocka_unit_test(test_formats),      cmocka_unit_test(test_lengths),
    };
    return cmocka_run_group_tests_name("libvirt", tests, NULL, NULL);
}
