/* test-helpers.c: see test-helpers.h. */
#include "test-helpers.h"

#include <string.h>

static const char *const code_names[] = {
    "UNKNOWN_FORMAT", "TRUNCATED", "CORRUPT", "UNSUPPORTED", "INCOMPLETE", "IO", "NO_MORE",
};

static const char *code_name(int code)
{
    return code >= 0 && code < (int)G_N_ELEMENTS(code_names) ? code_names[code] : "?";
}

void _assert_mr_error(GError **error, int code, const char *word, const char *file, int line)
{
    const GError *e = *error;
    if (e == NULL) {
        print_error("%s:%d: expected error %s (\"%s\"), got success\n", file, line, code_name(code),
                    word ? word : "");
        _fail(file, line);
    }
    if (e->domain != MR_ERROR || e->code != code ||
        (word != NULL && strstr(e->message, word) == NULL)) {
        print_error("%s:%d: expected error %s containing \"%s\", got %s %s: %s\n", file, line,
                    code_name(code), word ? word : "", g_quark_to_string(e->domain),
                    e->domain == MR_ERROR ? code_name(e->code) : "", e->message);
        g_clear_error(error);
        _fail(file, line);
    }
    g_clear_error(error);
}

void _assert_no_error(const GError *error, const char *file, int line)
{
    if (error == NULL)
        return;
    print_error("%s:%d: unexpected error %s: %s\n", file, line,
                error->domain == MR_ERROR ? code_name(error->code) : "(other domain)",
                error->message);
    _fail(file, line);
}

void _assert_bytes_at(const void *actual, gsize off, const void *expected, gsize len,
                      const char *file, int line)
{
    const guint8 *a = (const guint8 *)actual + off, *e = expected;
    for (gsize i = 0; i < len; i++) {
        if (a[i] != e[i]) {
            print_error("%s:%d: byte at offset %" G_GSIZE_FORMAT " is 0x%02x, expected 0x%02x\n",
                        file, line, off + i, a[i], e[i]);
            _fail(file, line);
        }
    }
}

void _assert_block_reads(const IbSpec *spec, const MrImage *img, guint index, guint64 off,
                         gsize len, const char *file, int line)
{
    const MrBlock *blk = mr_image_block(img, index);
    g_autofree guint8 *buf = g_malloc(len + 1);
    memset(buf, 0x55, len + 1);
    GError *error = NULL;
    gssize n = mr_block_pread(blk, buf, len, off, &error);
    _assert_no_error(error, file, line);
    guint64 size = mr_block_size(blk);
    gsize want = off >= size ? 0 : (gsize)MIN((guint64)len, size - off);
    _assert_int_equal((LargestIntegralType)n, want, file, line);
    g_autofree guint8 *expected = g_malloc(want + 1);
    for (gsize i = 0; i < want; i++)
        expected[i] = ib_expected_byte(spec, index, off + i);
    expected[want] = 0x55; /* nothing written past what was returned */
    for (gsize i = 0; i <= want; i++) {
        if (buf[i] != expected[i]) {
            print_error("%s:%d: block %u read [0x%" G_GINT64_MODIFIER "x, +%" G_GSIZE_FORMAT
                        "): byte at block offset 0x%" G_GINT64_MODIFIER
                        "x is 0x%02x, expected 0x%02x\n",
                        file, line, index, off, len, off + i, buf[i], expected[i]);
            _fail(file, line);
        }
    }
}

void _assert_extent_equal(const MrBlock *blk, guint64 off, MrSeekWhence whence, guint64 expected,
                          const char *file, int line)
{
    GError *error = NULL;
    guint64 result = G_MAXUINT64;
    gboolean ok = mr_block_seek(blk, off, whence, &result, &error);
    _assert_no_error(error, file, line);
    _assert_true(ok, "mr_block_seek", file, line);
    if (result != expected) {
        print_error("%s:%d: SEEK_%s from 0x%" G_GINT64_MODIFIER "x gave 0x%" G_GINT64_MODIFIER
                    "x, expected 0x%" G_GINT64_MODIFIER "x\n",
                    file, line, whence == MR_SEEK_DATA ? "DATA" : "HOLE", off, result, expected);
        _fail(file, line);
    }
}

void _assert_seek_no_more(const MrBlock *blk, guint64 off, MrSeekWhence whence, const char *file,
                          int line)
{
    GError *error = NULL;
    guint64 result = 0x5555;
    gboolean ok = mr_block_seek(blk, off, whence, &result, &error);
    _assert_true(!ok, "!mr_block_seek", file, line);
    _assert_mr_error(&error, MR_ERROR_NO_MORE, NULL, file, line);
    _assert_int_equal(result, 0x5555, file, line); /* untouched on failure */
}

MrImage *_assert_open_ok(GBytes *bytes, const MrOpenOptions *opts, const char *file, int line)
{
    GError *error = NULL;
    MrImage *img = ib_open(bytes, opts, &error);
    _assert_no_error(error, file, line);
    _assert_true(img != NULL, "img != NULL", file, line);
    return img;
}

void _assert_open_fails(GByteArray *img, const MrOpenOptions *opts, int code, const char *word,
                        const char *file, int line)
{
    GError *error = NULL;
    MrImage *opened = ib_open_array(img, opts, &error);
    if (opened != NULL) {
        mr_image_free(opened);
        print_error("%s:%d: image opened, expected %s (\"%s\")\n", file, line, code_name(code),
                    word ? word : "");
        _fail(file, line);
    }
    _assert_mr_error(&error, code, word, file, line);
}
