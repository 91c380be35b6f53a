/* test-source.c: lib/mr-source.c — memory and file sources. */
#include "test-helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static void test_memory_read(void **state)
{
    (void)state;
    g_autoptr(GBytes) bytes = g_bytes_new_static("0123456789", 10);
    g_autoptr(MrSource) src = mr_source_new_from_bytes(bytes);
    assert_int_equal(mr_source_size(src), 10);
    const struct stat *st = mr_source_stat(src);
    assert_true(S_ISREG(st->st_mode));
    assert_int_equal(st->st_size, 10);
    char buf[16];
    GError *error = NULL;
    assert_true(mr_source_read(src, 0, buf, 10, &error));
    assert_bytes_at(buf, 0, "0123456789", 10);
    assert_true(mr_source_read(src, 7, buf, 3, &error));
    assert_bytes_at(buf, 0, "789", 3);
    assert_true(mr_source_read(src, 10, buf, 0, &error)); /* empty read at the end */
    assert_no_error(error);
}

/* An empty memory source (GBytes of size 0 has no data pointer): a read of nothing
 * succeeds without touching memory. Found by tests/fuzz (UBSan: memcpy from NULL). */
static void test_memory_empty(void **state)
{
    (void)state;
    g_autoptr(GBytes) bytes = g_bytes_new(NULL, 0);
    g_autoptr(MrSource) src = mr_source_new_from_bytes(bytes);
    assert_int_equal(mr_source_size(src), 0);
    GError *error = NULL;
    assert_true(mr_source_read(src, 0, NULL, 0, &error));
    assert_no_error(error);
    assert_false(mr_source_read(src, 0, NULL, 1, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "truncated");
}

static void test_memory_past_end(void **state)
{
    (void)state;
    g_autoptr(GBytes) bytes = g_bytes_new_static("0123456789", 10);
    g_autoptr(MrSource) src = mr_source_new_from_bytes(bytes);
    char buf[16];
    GError *error = NULL;
    assert_false(mr_source_read(src, 8, buf, 3, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED,
                    "truncated: 3 bytes at 0x8 run past the end of the file (0xa)");
    assert_false(mr_source_read(src, 11, buf, 0, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "truncated");
    /* offset + len overflows: refused, not wrapped */
    assert_false(mr_source_read(src, G_MAXUINT64 - 3, buf, 8, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "0xfffffffffffffffc");
    assert_false(mr_source_read(src, G_MAXUINT64, buf, 1, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "truncated");
}

/* A temporary file with @len pattern bytes; returns its path (g_free). */
static char *temp_file(gsize len)
{
    GError *error = NULL;
    char *path = NULL;
    int fd = g_file_open_tmp("mramfs-test-XXXXXX", &path, &error);
    assert_no_error(error);
    g_autofree guint8 *buf = g_malloc(len);
    for (gsize i = 0; i < len; i++)
        buf[i] = (guint8)(i ^ (i >> 8));
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_file_read(void **state)
{
    (void)state;
    g_autofree char *path = temp_file(10000);
    GError *error = NULL;
    g_autoptr(MrSource) src = mr_source_open_file(path, &error);
    assert_no_error(error);
    assert_non_null(src);
    assert_int_equal(mr_source_size(src), 10000);
    assert_int_equal(mr_source_stat(src)->st_size, 10000);
    guint8 buf[300];
    assert_true(mr_source_read(src, 9700, buf, 300, &error));
    for (gsize i = 0; i < 300; i++)
        assert_int_equal(buf[i], (guint8)((9700 + i) ^ ((9700 + i) >> 8)));
    assert_false(mr_source_read(src, 9701, buf, 300, &error));
    assert_mr_error(error, MR_ERROR_TRUNCATED, "truncated");
    unlink(path);
}

static void test_file_shrank(void **state)
{
    (void)state;
    g_autofree char *path = temp_file(8192);
    GError *error = NULL;
    g_autoptr(MrSource) src = mr_source_open_file(path, &error);
    assert_no_error(error);
    assert_int_equal(truncate(path, 4096), 0);
    assert_int_equal(mr_source_size(src), 8192); /* the size seen at open */
    guint8 buf[16];
    assert_true(mr_source_read(src, 4080, buf, 16, &error)); /* still there */
    assert_false(mr_source_read(src, 5000, buf, 16, &error));
    assert_mr_error(error, MR_ERROR_IO, "image shrank: no bytes at 0x1388 any more");
    /* a read that starts before the new end and runs past it */
    assert_false(mr_source_read(src, 4090, buf, 16, &error));
    assert_mr_error(error, MR_ERROR_IO, "image shrank: no bytes at 0x1000 any more");
    unlink(path);
}

static void test_open_directory(void **state)
{
    (void)state;
    GError *error = NULL;
    g_autofree char *dir = g_dir_make_tmp("mramfs-test-XXXXXX", &error);
    assert_no_error(error);
    MrSource *src = mr_source_open_file(dir, &error);
    assert_null(src);
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "not a regular file");
    /* and through the image API */
    assert_null(mr_image_open(dir, NULL, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "not a regular file");
    rmdir(dir);
}

static void test_open_missing(void **state)
{
    (void)state;
    GError *error = NULL;
    MrSource *src = mr_source_open_file("/nonexistent/mramfs/image.sav", &error);
    assert_null(src);
    assert_mr_error(error, MR_ERROR_IO, "cannot open: ");
    assert_null(mr_image_open("/nonexistent/mramfs/image.sav", NULL, &error));
    assert_mr_error(error, MR_ERROR_IO, "cannot open");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_read),     cmocka_unit_test(test_memory_empty),
        cmocka_unit_test(test_memory_past_end), cmocka_unit_test(test_file_read),
        cmocka_unit_test(test_file_shrank),     cmocka_unit_test(test_open_directory),
        cmocka_unit_test(test_open_missing),
    };
    return cmocka_run_group_tests_name("source", tests, NULL, NULL);
}
