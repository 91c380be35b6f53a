/* fuzz-common.c: opening bytes and using every part of the result (fuzz-common.h). */
#include "fuzz-common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK          (64u << 10)
#define FULL_READ_MAX  (2u << 20) /* blocks up to this size are read whole */
#define MAX_EXTENTS    1024       /* extents walked per block */
#define SAMPLE_EXTENTS 64         /* extents whose start is read, in a sampled block */

static guint8 chunk[CHUNK];
gboolean fuzz_corrupt_reads_ok;

static void fail(const char *what, const MrBlock *blk, guint64 a, guint64 b)
{
    fprintf(stderr,
            "fuzz invariant broken: %s (block size 0x%" G_GINT64_MODIFIER "x, 0x%" G_GINT64_MODIFIER
            "x, 0x%" G_GINT64_MODIFIER "x)\n",
            what, mr_block_size(blk), a, b);
    abort();
}

void fuzz_init(void)
{
    g_setenv("G_SLICE", "always-malloc", TRUE);
    g_log_set_always_fatal(G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
}

static gboolean corrupt_read_ok(const GError *error)
{
    return fuzz_corrupt_reads_ok && g_error_matches(error, MR_ERROR, MR_ERROR_CORRUPT);
}

/* Read [off, off + len) in chunks; every read must return what is left of the block. */
static void read_range(const MrBlock *blk, guint64 off, guint64 len, gboolean expect_zero)
{
    guint64 size = mr_block_size(blk);
    guint64 end = off + len;
    while (off < end) {
        gsize want = (gsize)MIN((guint64)CHUNK, end - off);
        g_autoptr(GError) error = NULL;
        gssize n = mr_block_pread(blk, chunk, want, off, &error);
        if (n < 0 && corrupt_read_ok(error)) {
            off += want; /* EIO for this read in a mount; the next one is independent */
            continue;
        }
        if (n < 0) /* an I/O error: the memory source never has one */
            fail(error->message, blk, off, want);
        if ((guint64)n != MIN((guint64)want, size - off))
            fail("short read inside the block", blk, off, (guint64)n);
        for (gssize i = 0; expect_zero && i < n; i++)
            if (chunk[i] != 0)
                fail("a hole does not read as zeros", blk, off + (guint64)i, chunk[i]);
        off += (guint64)n;
        if (n == 0)
            break;
    }
}

void fuzz_exercise_block(const MrBlock *blk)
{
    guint64 size = mr_block_size(blk);
    gboolean sampled = size > FULL_READ_MAX;
    guint32 page = mr_block_page_size(blk) ? mr_block_page_size(blk) : 4096;
    if (!sampled) {
        read_range(blk, 0, size, FALSE);
    } else {
        read_range(blk, 0, page, FALSE);
        read_range(blk, size - MIN(size, page), MIN(size, page), FALSE);
    }
    /* At and past the end: nothing, and no error. */
    g_autoptr(GError) error = NULL;
    if (mr_block_pread(blk, chunk, 16, size, &error) != 0 ||
        mr_block_pread(blk, chunk, 16, G_MAXUINT64 - 8, &error) != 0)
        fail("a read at the end returned bytes", blk, size, 0);
    if (size > 0) {
        gssize n = mr_block_pread(blk, chunk, 16, size - 1, &error);
        if (n != 1 && !(n < 0 && corrupt_read_ok(error)))
            fail("a read of the last byte", blk, size - 1, (guint64)n);
    }

    /* SEEK_DATA / SEEK_HOLE over the whole block, as cp --sparse and FUSE lseek do. */
    guint64 off = 0;
    for (guint i = 0; i < MAX_EXTENTS && off < size; i++) {
        guint64 data, hole;
        g_clear_error(&error);
        if (!mr_block_seek(blk, off, MR_SEEK_DATA, &data, &error)) {
            if (!g_error_matches(error, MR_ERROR, MR_ERROR_NO_MORE))
                fail(error->message, blk, off, 0);
            /* No data after off: the rest is a hole. */
            if (!sampled)
                read_range(blk, off, MIN(size - off, (guint64)CHUNK), TRUE);
            break;
        }
        if (data < off || data >= size)
            fail("SEEK_DATA went backwards or past the end", blk, off, data);
        if (data > off && (!sampled || i < SAMPLE_EXTENTS))
            read_range(blk, off, MIN(data - off, (guint64)(sampled ? page : CHUNK)), TRUE);
        if (!mr_block_seek(blk, data, MR_SEEK_HOLE, &hole, &error))
            fail(error->message, blk, data, 0);
        if (hole <= data || hole > size)
            fail("SEEK_HOLE did not move forward inside the block", blk, data, hole);
        if (sampled && i < SAMPLE_EXTENTS)
            read_range(blk, data, MIN(hole - data, (guint64)page), FALSE);
        off = hole;
    }
    /* Seeks at and past the end fail with NO_MORE. */
    guint64 r;
    g_clear_error(&error);
    if (mr_block_seek(blk, size, MR_SEEK_HOLE, &r, &error) ||
        !g_error_matches(error, MR_ERROR, MR_ERROR_NO_MORE))
        fail("SEEK_HOLE at the end", blk, size, 0);
    (void)mr_block_data_pages(blk);
    gsize idlen;
    (void)mr_block_idstr(blk, &idlen);
}

static void touch_bytes(GBytes *bytes)
{
    if (bytes == NULL)
        return;
    gsize len;
    const guint8 *p = g_bytes_get_data(bytes, &len);
    volatile guint8 sum = 0;
    for (gsize i = 0; i < len; i++)
        sum ^= p[i];
    (void)sum;
}

void fuzz_exercise_image(const MrImage *img)
{
    for (guint i = 0; i < mr_image_n_blocks(img); i++)
        fuzz_exercise_block(mr_image_block(img, i));
    if (mr_image_physmem(img) != NULL)
        fuzz_exercise_block(mr_image_physmem(img));
    if (mr_image_elfcore(img) != NULL)
        fuzz_exercise_block(mr_image_elfcore(img));
    (void)mr_image_physmem_about(img);
    (void)mr_image_machine_type(img);
    (void)mr_image_format(img);
    (void)mr_image_container(img);
    touch_bytes(mr_image_cpus_json(img));
    touch_bytes(mr_image_vmdesc(img));
    touch_bytes(mr_image_libvirt_xml(img));
    touch_bytes(mr_image_libvirt_cookie(img));
    g_free(mr_image_describe_json(img));
    g_ptr_array_unref(mr_block_paths(img));

    /* The tree a mount shows: every node, every generated file, every lookup. */
    g_autoptr(MrTree) tree = mr_tree_new(img);
    for (guint n = 0; n < mr_tree_n_nodes(tree); n++) {
        (void)mr_tree_size(tree, n);
        switch (mr_tree_kind(tree, n)) {
        case MR_NODE_DIR:
            for (guint c = 0; c < mr_tree_n_children(tree, n); c++) {
                guint child = mr_tree_child(tree, n, c), found;
                if (!mr_tree_lookup(tree, n, mr_tree_name(tree, child), &found) || found != child)
                    abort(); /* a directory entry that lookup does not find */
                if (mr_tree_parent(tree, child) != n)
                    abort();
            }
            break;
        case MR_NODE_BLOCK:
            (void)mr_tree_block(tree, n);
            break;
        case MR_NODE_CONTENT:
            touch_bytes(mr_tree_content(tree, n));
            break;
        }
    }
}

void fuzz_open_bytes(const uint8_t *data, size_t size, const MrOpenOptions *opts)
{
    MrOpenOptions o = {0};
    if (opts != NULL)
        o = *opts;
    if (o.index_path == NULL)
        o.index_path = ""; /* never read or write an index file */
    /* A copy of exactly @size bytes: ASan then catches a read one byte past the image. */
    g_autoptr(GBytes) bytes = g_bytes_new(data, size);
    g_autoptr(GError) error = NULL;
    g_autoptr(MrImage) img =
        mr_image_open_any(mr_source_new_from_bytes(bytes), "fuzz.img", &o, &error);
    if (img == NULL) {
        if (error == NULL || error->domain != MR_ERROR)
            abort(); /* every failure says why, in MR_ERROR */
        return;
    }
    fuzz_exercise_image(img);
}

guint8 fuzz_u8(FuzzInput *in)
{
    return in->pos < in->size ? in->data[in->pos++] : 0;
}

guint16 fuzz_u16(FuzzInput *in)
{
    return (guint16)(fuzz_u8(in) | fuzz_u8(in) << 8);
}

guint32 fuzz_u32(FuzzInput *in)
{
    guint32 lo = fuzz_u16(in);
    return lo | (guint32)fuzz_u16(in) << 16;
}

guint64 fuzz_u64(FuzzInput *in)
{
    guint64 lo = fuzz_u32(in);
    return lo | (guint64)fuzz_u32(in) << 32;
}

const guint8 *fuzz_bytes(FuzzInput *in, gsize max, gsize *len)
{
    gsize want = max > 255 ? fuzz_u16(in) : fuzz_u8(in);
    want = MIN(want, max);
    want = MIN(want, in->size - in->pos);
    const guint8 *p = in->data + in->pos;
    in->pos += want;
    *len = want;
    return p;
}
