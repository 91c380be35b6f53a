/* test-pack.c: packed images (docs/packed-format.md): the writer (lib/mr-pack-writer.c),
 * the header and index (lib/mr-packfmt.c), the reader, unpack and verify (lib/mr-packed.c),
 * on synthetic images: every byte and extent of a packed image equals the original's,
 * the output does not depend on the thread count, and corrupt or hostile files fail with
 * the right error. The frame cache has its own tests in test-frame-cache.c. */
#include "test-helpers.h"
#include "mr-frame-cache.h"
#include "mr-packfmt.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PS 4096u

static const MrOpenOptions no_index = {.index_path = ""};

/* pc.ram: 40 pages, data in runs with stale slots between; tables: 4 pages, one data page;
 * bios: 2 pages, all data; empty: 3 pages, none. */
static void mapped_spec(IbSpec *s)
{
    ib_spec_init(s);
    IbBlock *ram = ib_add_block(s, "pc.ram", 40 * PS, PS);
    ib_block_set_data(ram, 0, 3);
    ib_block_set_data(ram, 5, 1);
    ib_block_set_data(ram, 8, 9);
    ib_block_set_data(ram, 20, 1);
    ib_block_set_data(ram, 30, 10);
    ib_block_set_stale(ram, 3, 1);
    ib_block_set_stale(ram, 6, 1);
    ib_block_set_stale(ram, 25, 2);
    IbBlock *tables = ib_add_block(s, "/rom@etc/acpi/tables", 4 * PS, PS);
    ib_block_set_data(tables, 1, 1);
    IbBlock *bios = ib_add_block(s, "pc.bios", 2 * PS, PS);
    ib_block_set_data(bios, 0, 2);
    ib_add_block(s, "empty", 3 * PS, PS);
}

static void legacy_spec(IbSpec *s)
{
    ib_spec_init_legacy(s);
    ib_add_block(s, "pc.ram", 16 * PS, PS);
    ib_add_block(s, "empty", 3 * PS, PS);
    ib_rec_eos(s);
    ib_rec_part(s);
    ib_rec_page(s, "pc.ram", 0, 1);
    ib_rec_page(s, NULL, 1, 2);
    ib_rec_zero(s, NULL, 2);
    ib_rec_page(s, NULL, 9, 3);
    ib_rec_eos(s);
    ib_rec_end(s);
    ib_rec_page(s, NULL, 15, 7);
    ib_rec_eos(s);
}

static GBytes *fd_bytes(int fd)
{
    off_t size = lseek(fd, 0, SEEK_END);
    assert_true(size >= 0);
    guint8 *buf = g_malloc((gsize)size + 1);
    assert_int_equal(pread(fd, buf, (size_t)size, 0), size);
    return g_bytes_new_take(buf, (gsize)size);
}

static GBytes *pack_image(const MrImage *img, const MrPackOptions *o)
{
    int fd = memfd_create("packed", MFD_CLOEXEC);
    assert_true(fd >= 0);
    g_autoptr(GError) error = NULL;
    gboolean ok = mr_pack_image(img, fd, o, NULL, &error);
    assert_no_error(error);
    assert_true(ok);
    GBytes *out = fd_bytes(fd);
    close(fd);
    return out;
}

static GBytes *pack_bytes(GBytes *image, const MrPackOptions *o)
{
    g_autoptr(MrImage) img = ib_open(image, &no_index, NULL);
    assert_non_null(img);
    return pack_image(img, o);
}

static MrImage *open_packed(GBytes *packed, guint64 cache_size, GError **error)
{
    MrPacked *pk = mr_packed_open(mr_source_new_from_bytes(packed), cache_size, error);
    if (pk == NULL)
        return NULL;
    mr_frame_cache_start_workers(mr_packed_cache(pk), 2);
    MrImage *img = mr_image_open_source(mr_packed_source(pk), "packed", &no_index, error);
    if (img != NULL)
        img->packed = TRUE;
    return img;
}

/* Every block of @b reads and seeks exactly as the same block of @a. */
static void assert_same_images(const MrImage *a, const MrImage *b)
{
    assert_int_equal(mr_image_n_blocks(a), mr_image_n_blocks(b));
    assert_string_equal(mr_image_format(a), mr_image_format(b));
    for (guint i = 0; i < mr_image_n_blocks(a); i++) {
        const MrBlock *x = mr_image_block(a, i), *y = mr_image_block(b, i);
        guint64 size = mr_block_size(x);
        assert_int_equal(size, mr_block_size(y));
        assert_int_equal(mr_block_data_pages(x), mr_block_data_pages(y));
        g_autofree guint8 *bx = g_malloc(size + 1), *by = g_malloc(size + 1);
        g_autoptr(GError) error = NULL;
        assert_int_equal(mr_block_pread(x, bx, size, 0, &error), (gssize)size);
        assert_int_equal(mr_block_pread(y, by, size, 0, &error), (gssize)size);
        assert_no_error(error);
        assert_bytes_at(by, 0, bx, size);
        for (guint64 off = 0; off < size; off += mr_block_page_size(x) / 2) {
            for (int w = MR_SEEK_DATA; w <= MR_SEEK_HOLE; w++) {
                guint64 rx = 0, ry = 0;
                gboolean okx = mr_block_seek(x, off, w, &rx, NULL);
                gboolean oky = mr_block_seek(y, off, w, &ry, NULL);
                assert_int_equal(okx, oky);
                assert_int_equal(rx, ry);
            }
        }
    }
    GBytes *va = mr_image_vmdesc(a), *vb = mr_image_vmdesc(b);
    assert_true(g_bytes_equal(va, vb));
}

static void roundtrip(IbSpec *s, const MrPackOptions *o)
{
    g_autoptr(GBytes) bytes = ib_build_bytes(s);
    g_autoptr(MrImage) orig = ib_open(bytes, &no_index, NULL);
    assert_non_null(orig);
    g_autoptr(GBytes) packed = pack_image(orig, o);
    g_autoptr(GError) error = NULL;
    g_autoptr(MrImage) img = open_packed(packed, 0, &error);
    assert_no_error(error);
    assert_true(mr_image_is_packed(img));
    assert_same_images(orig, img);
    for (guint i = 0; i < s->blocks->len; i++)
        assert_block_reads(s, img, i, 0, (gsize)mr_block_size(mr_image_block(img, i)));
}

/* ---- round trips ---- */

static void test_roundtrip_mapped_ram(void **state)
{
    (void)state;
    const guint32 frames[] = {4096, 8192, 12288, 256 << 10};
    for (gsize i = 0; i < G_N_ELEMENTS(frames); i++) {
        IbSpec s;
        mapped_spec(&s);
        MrPackOptions o = {.frame_size = frames[i], .threads = 2};
        roundtrip(&s, &o);
        ib_spec_clear(&s);
    }
}

static void test_roundtrip_libvirt(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    s.libvirt = TRUE;
    s.lv_xml = "<domain/>";
    s.lv_cookie = "<cookie/>";
    s.lv_padding = 777;
    MrPackOptions o = {.frame_size = 4096};
    roundtrip(&s, &o);
    ib_spec_clear(&s);
}

static void test_roundtrip_legacy(void **state)
{
    (void)state;
    IbSpec s;
    legacy_spec(&s);
    MrPackOptions o = {.frame_size = 4096};
    roundtrip(&s, &o);
    ib_spec_clear(&s);
}

/* The same bytes whatever the number of threads: chunks are written in order. */
static void test_deterministic(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    MrPackOptions one = {.threads = 1, .frame_size = 4096};
    MrPackOptions four = {.threads = 4, .frame_size = 4096};
    g_autoptr(GBytes) a = pack_bytes(bytes, &one);
    g_autoptr(GBytes) b = pack_bytes(bytes, &four);
    assert_true(g_bytes_equal(a, b));
    ib_spec_clear(&s);
}

/* Clear pages are not stored: the stale slots do not reach the packed file. */
static void test_only_data_pages_stored(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 4096});
    MrPackHeader h;
    gsize len;
    const guint8 *p = g_bytes_get_data(packed, &len);
    assert_true(mr_pack_header_decode(p, len, len, &h, NULL));
    MrPackIndex idx;
    assert_true(mr_pack_index_decode(&h, p + h.index_offset, h.index_size, &idx, NULL));
    guint64 page_bytes = 0, n_page_segs = 0;
    for (guint i = 0; i < idx.segments->len; i++) {
        const MrPackSegment *seg = &g_array_index(idx.segments, MrPackSegment, i);
        if (seg->kind != MR_PACK_PAGES)
            continue;
        n_page_segs++;
        for (guint64 k = 0; k < seg->n_chunks; k++)
            page_bytes += g_array_index(idx.chunks, MrPackChunk, seg->first_chunk + k).usize;
    }
    assert_int_equal(n_page_segs, 4);
    assert_int_equal(page_bytes, (24 + 1 + 2) * PS); /* the data pages, nothing else */
    assert_int_equal(h.image_size, g_bytes_get_size(bytes));
    mr_pack_index_clear(&idx);
    ib_spec_clear(&s);
}

static void test_refuses_packed_input(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, NULL);
    g_autoptr(MrImage) img = open_packed(packed, 0, NULL);
    assert_non_null(img);
    g_autoptr(GError) error = NULL;
    assert_false(mr_pack_image(img, -1, NULL, NULL, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "already packed");
    MrPackOptions bad = {.frame_size = 100};
    g_autoptr(MrImage) orig = ib_open(bytes, &no_index, NULL);
    assert_false(mr_pack_image(orig, -1, &bad, NULL, &error));
    assert_mr_error(error, MR_ERROR_UNSUPPORTED, "frame size");
    ib_spec_clear(&s);
}

/* ---- corrupt and hostile packed files ---- */

static GBytes *patched(GBytes *bytes, gsize off, guint8 xor_mask)
{
    gsize len = g_bytes_get_size(bytes);
    guint8 *copy = g_memdup2(g_bytes_get_data(bytes, NULL), len);
    copy[off] ^= xor_mask;
    return g_bytes_new_take(copy, len);
}

static void expect_open_error(GBytes *packed, int code, const char *word)
{
    g_autoptr(GError) error = NULL;
    g_autoptr(MrImage) img = open_packed(packed, 0, &error);
    assert_null(img);
    assert_mr_error(error, code, word);
}

/* Re-seal a header after changing a field, so the checks behind the checksum run. */
static GBytes *with_header(GBytes *packed, void (*change)(MrPackHeader *h))
{
    gsize len = g_bytes_get_size(packed);
    guint8 *copy = g_memdup2(g_bytes_get_data(packed, NULL), len);
    MrPackHeader h;
    assert_true(mr_pack_header_decode(copy, len, len, &h, NULL));
    change(&h);
    mr_pack_header_encode(&h, copy);
    return g_bytes_new_take(copy, len);
}

static void set_version(MrPackHeader *h)
{
    h->version = 2;
}

static void set_feature(MrPackHeader *h)
{
    h->incompat_features = 1u << 5;
}

static void set_compat_feature(MrPackHeader *h)
{
    h->compat_features = 1u << 7;
}

static void set_chunk(MrPackHeader *h)
{
    h->chunk_size = 3u << 20;
}

static void test_corrupt_header(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 4096});
    gsize len = g_bytes_get_size(packed);
    for (gsize off = 0; off < MR_PACK_HEADER_SIZE; off += 7) {
        g_autoptr(GBytes) bad = patched(packed, off, 0x10);
        expect_open_error(bad, off < 8 ? MR_ERROR_UNKNOWN_FORMAT : MR_ERROR_CORRUPT,
                          off < 8 ? "magic" : "header checksum");
    }
    g_autoptr(GBytes) v2 = with_header(packed, set_version);
    expect_open_error(v2, MR_ERROR_UNSUPPORTED, "version 2 is not supported");
    g_autoptr(GBytes) feat = with_header(packed, set_feature);
    expect_open_error(feat, MR_ERROR_UNSUPPORTED, "features 0x20");
    g_autoptr(GBytes) chunk = with_header(packed, set_chunk);
    expect_open_error(chunk, MR_ERROR_CORRUPT, "chunk size");
    g_autoptr(GBytes) compat = with_header(packed, set_compat_feature);
    g_autoptr(MrImage) img = open_packed(compat, 0, NULL);
    assert_non_null(img); /* compat features are ignored */
    g_autoptr(GBytes) cut = g_bytes_new_from_bytes(packed, 0, len - 1);
    expect_open_error(cut, MR_ERROR_TRUNCATED, "truncated");
    g_autoptr(GBytes) tiny = g_bytes_new_from_bytes(packed, 0, 100);
    expect_open_error(tiny, MR_ERROR_TRUNCATED, "truncated");
    ib_spec_clear(&s);
}

static void test_corrupt_index(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 4096});
    gsize len;
    const guint8 *p = g_bytes_get_data(packed, &len);
    MrPackHeader h;
    assert_true(mr_pack_header_decode(p, len, len, &h, NULL));
    for (guint64 off = h.index_offset; off < len; off += 13) {
        g_autoptr(GBytes) bad = patched(packed, (gsize)off, 0x01);
        expect_open_error(bad, MR_ERROR_CORRUPT, "index checksum mismatch");
    }
    ib_spec_clear(&s);
}

/* Change a u64 of the index at @at and re-seal it (index and header checksums recomputed):
 * the structural checks must catch it before anything is served or allocated. */
static void patch_index_u64(GBytes *packed, gsize at, guint64 value, int code, const char *word)
{
    gsize len;
    const guint8 *p = g_bytes_get_data(packed, &len);
    MrPackHeader h;
    assert_true(mr_pack_header_decode(p, len, len, &h, NULL));
    g_autofree guint8 *copy = g_memdup2(p, len);
    guint64 le = GUINT64_TO_LE(value);
    memcpy(copy + h.index_offset + at, &le, 8);
    mr_pack_sha256(copy + h.index_offset, h.index_size, h.index_sha256);
    mr_pack_header_encode(&h, copy);
    g_autoptr(GBytes) bad = g_bytes_new(copy, len);
    expect_open_error(bad, code, word);
}

static void test_hostile_index(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 4096});
    const gsize seg0 = MR_PACK_INDEX_HDR_SIZE;
    /* counts that do not fit the index: refused before allocating */
    patch_index_u64(packed, 8, G_GUINT64_CONSTANT(1) << 60, MR_ERROR_CORRUPT, "do not match");
    patch_index_u64(packed, 16, 1000000, MR_ERROR_CORRUPT, "do not match");
    /* segment 0 moved, resized, of an unknown kind */
    patch_index_u64(packed, seg0, 1, MR_ERROR_CORRUPT, "segment 0");
    patch_index_u64(packed, seg0 + 8, 1, MR_ERROR_CORRUPT, "");
    patch_index_u64(packed, seg0 + 16, 9, MR_ERROR_UNSUPPORTED, "unknown kind 9");
    /* the first page segment (index 1): bitmap moved into page data, page size 3 */
    const gsize seg1 = seg0 + MR_PACK_SEGMENT_SIZE;
    patch_index_u64(packed, seg1 + 24, 0x7fffffffff00, MR_ERROR_CORRUPT, "bitmap");
    patch_index_u64(packed, seg1 + 16, 1 | (G_GUINT64_CONSTANT(3) << 32), MR_ERROR_CORRUPT,
                    "page size 3");
    ib_spec_clear(&s);
}

/* A small file claiming a 64 TiB guest of zero pages (zero frames cost no bytes): its 2 GiB
 * bitmap is refused before anything is allocated for it. */
static void test_hostile_bitmap_claim(void **state)
{
    (void)state;
    const guint64 raw = G_GUINT64_CONSTANT(1) << 31, pages = G_GUINT64_CONSTANT(1) << 46;
    const guint32 chunk = 1u << 30;
    MrPackIndex idx;
    mr_pack_index_init(&idx);
    MrPackSegment s0 = {
        .offset = 0, .length = raw, .kind = MR_PACK_RAW, .unit = 1, .n_chunks = raw / chunk};
    MrPackSegment s1 = {.offset = raw,
                        .length = pages,
                        .kind = MR_PACK_PAGES,
                        .unit = PS,
                        .bitmap_offset = 0,
                        .first_chunk = s0.n_chunks,
                        .n_chunks = pages / chunk};
    g_array_append_val(idx.segments, s0);
    g_array_append_val(idx.segments, s1);
    for (guint64 k = 0; k < s0.n_chunks; k++) {
        MrPackChunk c = {.first_unit = k * chunk,
                         .n_units = chunk,
                         .first_frame = idx.frames->len,
                         .n_frames = chunk / MR_PACK_MAX_FRAME,
                         .usize = chunk};
        g_array_append_val(idx.chunks, c);
        for (guint32 j = 0; j < c.n_frames; j++) {
            MrPackFrame f = {.usize = MR_PACK_MAX_FRAME,
                             .n_units = MR_PACK_MAX_FRAME,
                             .first_unit = c.first_unit + (guint64)j * MR_PACK_MAX_FRAME};
            g_array_append_val(idx.frames, f);
        }
    }
    for (guint64 k = 0; k < s1.n_chunks; k++) {
        MrPackChunk c = {
            .first_unit = k * (chunk / PS), .n_units = chunk / PS, .first_frame = idx.frames->len};
        g_array_append_val(idx.chunks, c);
    }
    g_autoptr(GByteArray) index = mr_pack_index_encode(&idx);
    MrPackHeader h = {.version = MR_PACK_VERSION,
                      .header_size = MR_PACK_HEADER_SIZE,
                      .image_size = raw + pages,
                      .index_offset = MR_PACK_HEADER_SIZE,
                      .index_size = index->len,
                      .chunk_size = chunk};
    mr_pack_sha256(index->data, index->len, h.index_sha256);
    GByteArray *file = g_byte_array_new();
    g_byte_array_set_size(file, MR_PACK_HEADER_SIZE);
    mr_pack_header_encode(&h, file->data);
    g_byte_array_append(file, index->data, index->len);
    g_autoptr(GBytes) bytes = g_byte_array_free_to_bytes(file);
    expect_open_error(bytes, MR_ERROR_UNSUPPORTED, "bytes of bitmaps");
    mr_pack_index_clear(&idx);
}

/* The first frame of the first page segment, from the index. */
static MrPackFrame first_page_frame(GBytes *packed)
{
    gsize len;
    const guint8 *p = g_bytes_get_data(packed, &len);
    MrPackHeader h;
    MrPackIndex idx;
    assert_true(mr_pack_header_decode(p, len, len, &h, NULL));
    assert_true(mr_pack_index_decode(&h, p + h.index_offset, h.index_size, &idx, NULL));
    MrPackFrame f = {0};
    for (guint i = 0; i < idx.segments->len && f.csize == 0; i++) {
        const MrPackSegment *seg = &g_array_index(idx.segments, MrPackSegment, i);
        const MrPackChunk *c = &g_array_index(idx.chunks, MrPackChunk, seg->first_chunk);
        if (seg->kind == MR_PACK_PAGES && c->n_frames > 0)
            f = g_array_index(idx.frames, MrPackFrame, c->first_frame);
    }
    mr_pack_index_clear(&idx);
    assert_true(f.csize > 0);
    return f;
}

/* A bad frame fails the reads that touch it with CORRUPT, and nothing else. */
static void test_corrupt_frame(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 4096});
    MrPackFrame f = first_page_frame(packed); /* pc.ram page 0 */
    const gsize spots[] = {f.offset + f.csize / 2, f.offset + f.csize - 1, f.offset + 5};
    for (gsize i = 0; i < G_N_ELEMENTS(spots); i++) {
        g_autoptr(GBytes) bad = patched(packed, spots[i], 0x40);
        g_autoptr(GError) error = NULL;
        g_autoptr(MrImage) img = open_packed(bad, 0, &error);
        assert_no_error(error);
        guint8 buf[PS];
        const MrBlock *ram = mr_image_block(img, 0);
        assert_int_equal(mr_block_pread(ram, buf, PS, 0, &error), -1);
        assert_mr_error(error, MR_ERROR_CORRUPT, "packed frame");
        assert_int_equal(mr_block_pread(ram, buf, PS, 0, &error), -1); /* not cached */
        assert_mr_error(error, MR_ERROR_CORRUPT, "packed frame");
        for (guint b = 1; b < mr_image_n_blocks(img); b++)
            assert_block_reads(&s, img, b, 0, (gsize)mr_block_size(mr_image_block(img, b)));
        assert_block_reads(&s, img, 0, PS, 39 * PS); /* pages of other frames */
    }
    ib_spec_clear(&s);
}

/* ---- unpack and verify (through files) ---- */

static char *write_temp(GBytes *bytes)
{
    char *path = NULL;
    int fd = g_file_open_tmp("mramfs-test-pack-XXXXXX", &path, NULL);
    assert_true(fd >= 0);
    gsize len;
    const guint8 *p = g_bytes_get_data(bytes, &len);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_unpack_and_verify(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 8192});
    g_autofree char *path = write_temp(packed);
    g_autoptr(GError) error = NULL;
    MrPackStats st;
    assert_true(mr_verify(path, NULL, NULL, &st, &error));
    assert_no_error(error);
    assert_int_equal(st.image_size, g_bytes_get_size(bytes));
    int fd = memfd_create("unpacked", MFD_CLOEXEC);
    assert_true(mr_unpack(path, fd, NULL, NULL, &error));
    assert_no_error(error);
    g_autoptr(GBytes) back = fd_bytes(fd);
    close(fd);
    assert_int_equal(g_bytes_get_size(back), g_bytes_get_size(bytes));
    g_autoptr(MrImage) orig = ib_open(bytes, &no_index, NULL);
    g_autoptr(MrImage) img = ib_open(back, &no_index, NULL);
    assert_non_null(img);
    assert_same_images(orig, img);
    /* the unpacked file differs from the original exactly in the stale slots */
    const guint8 *a = g_bytes_get_data(bytes, NULL), *b = g_bytes_get_data(back, NULL);
    const IbBlock *ram = g_ptr_array_index(s.blocks, 0);
    for (gsize i = 0; i < g_bytes_get_size(bytes); i++) {
        gboolean stale = i >= ram->pages_offset && i < ram->pages_offset + 40 * PS &&
                         ram->stale[(i - ram->pages_offset) / PS];
        if (stale)
            assert_int_equal(b[i], 0);
        else if (a[i] != b[i])
            fail_msg("unpacked byte 0x%zx differs", i);
    }
    /* a corrupt frame fails verify, with the frame named */
    MrPackFrame f = first_page_frame(packed);
    g_autoptr(GBytes) bad = patched(packed, f.offset + f.csize / 2, 0x08);
    g_autofree char *bad_path = write_temp(bad);
    assert_false(mr_verify(bad_path, NULL, NULL, NULL, &error));
    assert_mr_error(error, MR_ERROR_CORRUPT, "packed frame");
    unlink(path);
    unlink(bad_path);
    ib_spec_clear(&s);
}

/* ---- many readers, small cache ---- */

typedef struct {
    const IbSpec *spec;
    const MrImage *img;
    guint seed;
    gint failures;
} ReaderJob;

static gpointer random_reader(gpointer data)
{
    ReaderJob *job = data;
    GRand *rand = g_rand_new_with_seed(job->seed);
    const MrBlock *ram = mr_image_block(job->img, 0);
    guint64 size = mr_block_size(ram);
    guint8 buf[3 * PS];
    for (int i = 0; i < 2000; i++) {
        guint64 off = g_rand_int_range(rand, 0, (gint32)size);
        guint64 want = (guint64)g_rand_int_range(rand, 1, sizeof buf); /* MIN evaluates twice */
        gsize len = (gsize)MIN(want, size - off);
        g_autoptr(GError) error = NULL;
        if (mr_block_pread(ram, buf, len, off, &error) != (gssize)len) {
            g_printerr("read [0x%" G_GINT64_MODIFIER "x, +%zu): %s\n", off, len,
                       error ? error->message : "short");
            job->failures++;
            continue;
        }
        for (gsize k = 0; k < len; k++)
            if (buf[k] != ib_expected_byte(job->spec, 0, off + k)) {
                g_printerr("read [0x%" G_GINT64_MODIFIER "x, +%zu): byte 0x%zx differs\n", off, len,
                           k);
                job->failures++;
                break;
            }
    }
    g_rand_free(rand);
    return NULL;
}

static void test_concurrent_readers(void **state)
{
    (void)state;
    IbSpec s;
    mapped_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GBytes) packed = pack_bytes(bytes, &(MrPackOptions){.frame_size = 8192});
    g_autoptr(MrImage) img = open_packed(packed, 3 * 8192, NULL); /* 3 frames of cache */
    assert_non_null(img);
    ReaderJob jobs[12];
    GThread *threads[G_N_ELEMENTS(jobs)];
    for (guint i = 0; i < G_N_ELEMENTS(jobs); i++) {
        jobs[i] = (ReaderJob){.spec = &s, .img = img, .seed = i + 1};
        threads[i] = g_thread_new("reader", random_reader, &jobs[i]);
    }
    for (guint i = 0; i < G_N_ELEMENTS(jobs); i++) {
        g_thread_join(threads[i]);
        assert_int_equal(jobs[i].failures, 0);
    }
    ib_spec_clear(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_mapped_ram),   cmocka_unit_test(test_roundtrip_libvirt),
        cmocka_unit_test(test_roundtrip_legacy),       cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_only_data_pages_stored), cmocka_unit_test(test_refuses_packed_input),
        cmocka_unit_test(test_corrupt_header),         cmocka_unit_test(test_corrupt_index),
        cmocka_unit_test(test_hostile_index),          cmocka_unit_test(test_hostile_bitmap_claim),
        cmocka_unit_test(test_corrupt_frame),          cmocka_unit_test(test_unpack_and_verify),
        cmocka_unit_test(test_concurrent_readers),
    };
    return cmocka_run_group_tests_name("pack", tests, NULL, NULL);
}
