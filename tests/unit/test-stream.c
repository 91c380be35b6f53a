/* test-stream.c: lib/mr-stream.c — QEVM header and configuration section. */
#include "test-helpers.h"

#include <string.h>

static const char *const two_caps[] = {"mapped-ram", "x-ignore-shared", NULL};

/* Parse @bytes at @offset; frees nothing, the caller clears @info. */
static gboolean parse_bytes(GByteArray *bytes, gsize len, guint64 offset, MrStreamInfo *info,
                            GError **error)
{
    g_autoptr(GBytes) b = g_bytes_new(bytes->data, len);
    g_autoptr(MrSource) src = mr_source_new_from_bytes(b);
    return mr_stream_parse_header(src, offset, info, error);
}

/* The stream header and configuration of @s followed by one byte of the next section
 * (0x01, START), as in every real stream: a file that ends right after the configuration
 * is truncated. */
static GByteArray *header_of(const IbSpec *s)
{
    GByteArray *out = g_byte_array_new();
    ib_emit_stream_header(out, s);
    ib_put_u8(out, 0x01);
    return out;
}

static void test_fields(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = "pc-q35-10.0";
    s.caps = two_caps;
    s.target_page_bits = 12;
    s.uuid = TRUE;
    g_autoptr(GByteArray) h = header_of(&s);
    MrStreamInfo info;
    GError *error = NULL;
    assert_true(parse_bytes(h, h->len, 0, &info, &error));
    assert_no_error(error);
    assert_int_equal(info.offset, 0);
    assert_string_equal(info.machine_type, "pc-q35-10.0");
    assert_int_equal(info.target_page_bits, 12);
    assert_int_equal(info.capabilities->len, 2);
    assert_string_equal(g_ptr_array_index(info.capabilities, 0), "mapped-ram");
    assert_string_equal(g_ptr_array_index(info.capabilities, 1), "x-ignore-shared");
    assert_true(mr_stream_has_capability(&info, "mapped-ram"));
    assert_true(mr_stream_has_capability(&info, "x-ignore-shared"));
    assert_false(mr_stream_has_capability(&info, "multifd"));
    assert_false(mr_stream_has_capability(&info, "mapped"));
    /* 8 + 1 + 4 + 11, target-page-bits 40, capabilities 32 + 4 + 11 + 16, uuid 40 */
    assert_int_equal(info.body_offset, 24 + 40 + 63 + 40);
    assert_int_equal(info.body_offset, h->len - 1);
    mr_stream_info_clear(&info);
    assert_null(info.machine_type);
    assert_null(info.capabilities);
    ib_spec_clear(&s);
}

/* The worked example of qemu-save-formats.md §9b, byte for byte. */
static void test_worked_example(void **state)
{
    (void)state;
    static const guint8 bytes[] = "QEVM\0\0\0\3\7\0\0\0\x0epc-i440fx-10.0"
                                  "\5\x1a"
                                  "configuration/capabilities"
                                  "\0\0\0\1"
                                  "\0\0\0\1\x0a"
                                  "mapped-ram"
                                  "\1\0\0\0\1\3ram\0\0\0\0\0\0\0\4";
    g_autoptr(GByteArray) h = g_byte_array_new();
    g_byte_array_append(h, bytes, sizeof bytes - 1);
    MrStreamInfo info;
    GError *error = NULL;
    assert_true(parse_bytes(h, h->len, 0, &info, &error));
    assert_string_equal(info.machine_type, "pc-i440fx-10.0");
    assert_int_equal(info.target_page_bits, 0);
    assert_int_equal(info.capabilities->len, 1);
    assert_true(mr_stream_has_capability(&info, "mapped-ram"));
    assert_int_equal(info.body_offset, 0x4a);
    mr_stream_info_clear(&info);
}

static void test_at_offset(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    g_autoptr(GByteArray) h = g_byte_array_new();
    for (int i = 0; i < 0x1234; i++)
        ib_put_u8(h, 0x5a);
    ib_emit_stream_header(h, &s);
    ib_put_u8(h, 0x01);
    MrStreamInfo info;
    GError *error = NULL;
    assert_true(parse_bytes(h, h->len, 0x1234, &info, &error));
    assert_int_equal(info.offset, 0x1234);
    assert_int_equal(info.body_offset, h->len - 1);
    assert_string_equal(info.machine_type, "pc-i440fx-10.0");
    mr_stream_info_clear(&info);
    /* the same bytes read from 0: not a stream */
    assert_false(parse_bytes(h, h->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic at offset 0");
    mr_stream_info_clear(&info);
    /* an offset past the end */
    assert_false(parse_bytes(h, h->len, G_MAXUINT64 - 2, &info, &error));
    assert_mr_error(error, MR_ERROR_UNKNOWN_FORMAT, "not a QEMU save image");
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_no_configuration(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.config = FALSE;
    g_autoptr(GByteArray) h = header_of(&s);
    MrStreamInfo info;
    GError *error = NULL;
    assert_true(parse_bytes(h, h->len, 0, &info, &error));
    assert_null(info.machine_type);
    assert_int_equal(info.capabilities->len, 0);
    assert_false(mr_stream_has_capability(&info, "mapped-ram"));
    assert_int_equal(info.body_offset, 8);
    mr_stream_info_clear(&info);
    /* configuration without subsections */
    s.config = TRUE;
    s.caps = NULL;
    g_autoptr(GByteArray) h2 = header_of(&s);
    assert_true(parse_bytes(h2, h2->len, 0, &info, &error));
    assert_string_equal(info.machine_type, "pc-i440fx-10.0");
    assert_int_equal(info.capabilities->len, 0);
    assert_int_equal(info.body_offset, 8 + 1 + 4 + 14);
    assert_int_equal(info.body_offset, h2->len - 1);
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_unknown_subsection(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    g_autoptr(GByteArray) h = g_byte_array_new();
    ib_emit_stream_header(h, &s);
    ib_put_u8(h, 0x05);
    ib_put_name(h, "configuration/new-thing");
    ib_put_be32(h, 1);
    ib_put_be32(h, 7);
    MrStreamInfo info;
    GError *error = NULL;
    assert_false(parse_bytes(h, h->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED,
                    "unknown configuration subsection \"configuration/new-thing\"");
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_version(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.version = 2;
    g_autoptr(GByteArray) h = header_of(&s);
    MrStreamInfo info;
    GError *error = NULL;
    assert_false(parse_bytes(h, h->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED,
                    "QEMU stream version 2 is not supported "
                    "(expected 3; v2 is obsolete)");
    mr_stream_info_clear(&info);
    s.version = 4;
    g_autoptr(GByteArray) h4 = header_of(&s);
    assert_false(parse_bytes(h4, h4->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "version 4 is not supported (expected 3)");
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_bad_magic(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.magic = 0x5145564e; /* "QEVN" */
    g_autoptr(GByteArray) h = header_of(&s);
    MrStreamInfo info;
    GError *error = NULL;
    assert_false(parse_bytes(h, h->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_UNKNOWN_FORMAT,
                    "not a QEMU save image (no QEVM magic at "
                    "offset 0)");
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_capability_limits(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    const char *caps[MR_MAX_CAPABILITIES + 2];
    for (int i = 0; i < MR_MAX_CAPABILITIES + 1; i++)
        caps[i] = i == 0 ? "mapped-ram" : "other";
    caps[MR_MAX_CAPABILITIES + 1] = NULL;
    s.caps = caps;
    g_autoptr(GByteArray) h = header_of(&s);
    MrStreamInfo info;
    GError *error = NULL;
    assert_false(parse_bytes(h, h->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "configuration lists 65 capabilities (at most 64)");
    mr_stream_info_clear(&info);

    caps[MR_MAX_CAPABILITIES] = NULL; /* exactly 64 */
    g_autoptr(GByteArray) h64 = header_of(&s);
    assert_true(parse_bytes(h64, h64->len, 0, &info, &error));
    assert_int_equal(info.capabilities->len, 64);
    mr_stream_info_clear(&info);

    /* a huge count in a short file: refused before any allocation */
    g_autoptr(GByteArray) big = g_byte_array_new();
    s.caps = NULL;
    ib_emit_stream_header(big, &s);
    ib_put_u8(big, 0x05);
    ib_put_name(big, "configuration/capabilities");
    ib_put_be32(big, 1);
    ib_put_be32(big, 0xffffffffu);
    assert_false(parse_bytes(big, big->len, 0, &info, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "4294967295 capabilities");
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_machine_type_limits(void **state)
{
    (void)state;
    MrStreamInfo info;
    GError *error = NULL;
    const guint32 lens[] = {0, MR_MAX_MACHINE_TYPE + 1, G_MAXUINT32};
    for (gsize i = 0; i < G_N_ELEMENTS(lens); i++) {
        g_autoptr(GByteArray) h = g_byte_array_new();
        ib_put_be32(h, 0x5145564d);
        ib_put_be32(h, 3);
        ib_put_u8(h, 0x07);
        ib_put_be32(h, lens[i]);
        for (int j = 0; j < 300; j++)
            ib_put_u8(h, 'm');
        assert_false(parse_bytes(h, h->len, 0, &info, &error));
        g_autofree char *word = g_strdup_printf("machine type name of %u bytes", lens[i]);
        assert_mr_error(error, MR_ERROR_CORRUPT, word);
        mr_stream_info_clear(&info);
    }
    /* 256 bytes is the limit, and odd bytes are kept as they are */
    IbSpec s;
    ib_spec_init(&s);
    char mt[MR_MAX_MACHINE_TYPE + 1];
    memset(mt, 'm', MR_MAX_MACHINE_TYPE);
    mt[MR_MAX_MACHINE_TYPE] = 0;
    mt[0] = '"';
    mt[1] = '\xff';
    mt[2] = '\\';
    mt[3] = '\n';
    s.machine_type = mt;
    g_autoptr(GByteArray) h = header_of(&s);
    assert_true(parse_bytes(h, h->len, 0, &info, &error));
    assert_string_equal(info.machine_type, mt);
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

static void test_target_page_bits(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    MrStreamInfo info;
    GError *error = NULL;
    const guint32 good[] = {10, 12, 16}, bad[] = {9, 17, 0xffffffffu};
    for (gsize i = 0; i < G_N_ELEMENTS(good); i++) {
        s.target_page_bits = good[i];
        g_autoptr(GByteArray) h = header_of(&s);
        assert_true(parse_bytes(h, h->len, 0, &info, &error));
        assert_int_equal(info.target_page_bits, good[i]);
        assert_true(mr_stream_has_capability(&info, "mapped-ram"));
        mr_stream_info_clear(&info);
    }
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        s.target_page_bits = bad[i];
        g_autoptr(GByteArray) h = header_of(&s);
        assert_false(parse_bytes(h, h->len, 0, &info, &error));
        g_autofree char *word = g_strdup_printf("target page bits %u out of range", bad[i]);
        assert_mr_error(error, MR_ERROR_CORRUPT, word);
        mr_stream_info_clear(&info);
    }
    ib_spec_clear(&s);
}

/* Capability names are kept as the bytes say; a NUL ends the name, as QEMU's strcmp in
 * get_capability() does. */
static void test_capability_names(void **state)
{
    (void)state;
    g_autoptr(GByteArray) h = g_byte_array_new();
    IbSpec s;
    ib_spec_init(&s);
    s.caps = NULL;
    ib_emit_stream_header(h, &s);
    ib_put_u8(h, 0x05);
    ib_put_name(h, "configuration/capabilities");
    ib_put_be32(h, 1);
    ib_put_be32(h, 3);
    ib_put_u8(h, 4);
    ib_put_bytes(h, "x\x01y\"", 4);
    ib_put_u8(h, 0);
    ib_put_u8(h, 12);
    ib_put_bytes(h, "mapped-ram\0z", 12);
    guint body = h->len;
    ib_put_u8(h, 0x01);
    MrStreamInfo info;
    GError *error = NULL;
    assert_true(parse_bytes(h, h->len, 0, &info, &error));
    assert_int_equal(info.capabilities->len, 3);
    assert_string_equal(g_ptr_array_index(info.capabilities, 0), "x\x01y\"");
    assert_string_equal(g_ptr_array_index(info.capabilities, 1), "");
    assert_string_equal(g_ptr_array_index(info.capabilities, 2), "mapped-ram");
    assert_true(mr_stream_has_capability(&info, "mapped-ram"));
    assert_int_equal(info.body_offset, body);
    mr_stream_info_clear(&info);
    ib_spec_clear(&s);
}

/* Cut a full header + configuration (all three subsections) + the first byte of the next
 * section at every length. Every cut must fail with UNKNOWN_FORMAT (before the magic is
 * complete) or TRUNCATED, including cuts exactly where a shorter configuration could end
 * (the file must go on after the header), and only the whole thing parses. Failures are
 * collected and printed together. */
static void test_truncated_everywhere(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.caps = two_caps;
    s.target_page_bits = 12;
    s.uuid = TRUE;
    g_autoptr(GByteArray) full = header_of(&s);
    g_autoptr(GString) problems = g_string_new(NULL);
    for (gsize cut = 0; cut <= full->len; cut++) {
        MrStreamInfo info;
        GError *error = NULL;
        gboolean ok = parse_bytes(full, cut, 0, &info, &error);
        if (ok) {
            if (cut != full->len || info.body_offset != full->len - 1)
                g_string_append_printf(problems,
                                       "  cut %" G_GSIZE_FORMAT
                                       ": accepted, body_offset %" G_GUINT64_FORMAT "\n",
                                       cut, info.body_offset);
        } else {
            int want = cut < 4 ? MR_ERROR_UNKNOWN_FORMAT : MR_ERROR_TRUNCATED;
            if (error == NULL || error->domain != MR_ERROR || error->code != want ||
                cut == full->len)
                g_string_append_printf(problems, "  cut %" G_GSIZE_FORMAT ": code %d: %s\n", cut,
                                       error ? error->code : -1,
                                       error ? error->message : "(no error set)");
        }
        g_clear_error(&error);
        mr_stream_info_clear(&info);
    }
    if (problems->len > 0) {
        print_error("header of %u bytes, bad cuts:\n%s", full->len, problems->str);
        fail();
    }
    ib_spec_clear(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_worked_example),
        cmocka_unit_test(test_at_offset),
        cmocka_unit_test(test_no_configuration),
        cmocka_unit_test(test_unknown_subsection),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_capability_limits),
        cmocka_unit_test(test_machine_type_limits),
        cmocka_unit_test(test_target_page_bits),
        cmocka_unit_test(test_capability_names),
        cmocka_unit_test(test_truncated_everywhere),
    };
    return cmocka_run_group_tests_name("stream", tests, NULL, NULL);
}
