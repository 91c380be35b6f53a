/* test-image.c: lib/mr-image.c and lib/mr-fmt-mapped-ram.c (with mr-fmt-legacy.c) through
 * synthetic images: the block table, reads, SEEK_DATA/SEEK_HOLE, containers, and every
 * malformed input we can think of, each with its error code and a word of its reason. */
#include "test-helpers.h"

#include <string.h>
#include <unistd.h>

#define PS 4096u

/* pc.ram: 16 pages, data {0,1,2,5,8,9,10,11,15}, stale slots {3,6,12};
 * /rom@etc/acpi/tables: 4 pages, data {1}; pc.bios: 2 pages, all data; empty: 3 pages. */
static void standard_spec(IbSpec *s)
{
    ib_spec_init(s);
    IbBlock *ram = ib_add_block(s, "pc.ram", 16 * PS, PS);
    ib_block_set_data(ram, 0, 3);
    ib_block_set_data(ram, 5, 1);
    ib_block_set_data(ram, 8, 4);
    ib_block_set_data(ram, 15, 1);
    ib_block_set_stale(ram, 3, 1);
    ib_block_set_stale(ram, 6, 1);
    ib_block_set_stale(ram, 12, 1);
    IbBlock *tables = ib_add_block(s, "/rom@etc/acpi/tables", 4 * PS, PS);
    ib_block_set_data(tables, 1, 1);
    IbBlock *bios = ib_add_block(s, "pc.bios", 2 * PS, PS);
    ib_block_set_data(bios, 0, 2);
    ib_add_block(s, "empty", 3 * PS, PS);
}

static IbBlock *spec_block(const IbSpec *s, guint i)
{
    return g_ptr_array_index(s->blocks, i);
}

/* ---- the block table ---- */

static void test_block_table(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    assert_string_equal(mr_image_path(img), "test.img");
    assert_int_equal(mr_image_file_stat(img)->st_size, s.size);
    assert_string_equal(mr_image_format(img), "mapped-ram");
    assert_string_equal(mr_image_container(img), "qemu");
    assert_int_equal(mr_image_stream_offset(img), 0);
    assert_string_equal(mr_image_machine_type(img), "pc-i440fx-10.0");
    assert_false(img->has_libvirt);
    const GPtrArray *caps = mr_image_capabilities(img);
    assert_int_equal(caps->len, 1);
    assert_string_equal(g_ptr_array_index(caps, 0), "mapped-ram");
    assert_true(img->has_vmdesc);
    assert_int_equal(img->vmdesc_offset, s.vmdesc_offset + 5);
    assert_int_equal(img->vmdesc_len, strlen(s.vmdesc_json));
    assert_int_equal(img->vmdesc_offset + img->vmdesc_len, s.size);

    static const char *const ids[] = {"pc.ram", "/rom@etc/acpi/tables", "pc.bios", "empty"};
    static const guint64 pages[] = {16, 4, 2, 3}, data[] = {9, 1, 2, 0};
    assert_int_equal(mr_image_n_blocks(img), 4);
    for (guint i = 0; i < 4; i++) {
        const MrBlock *blk = mr_image_block(img, i);
        gsize len;
        const guint8 *id = mr_block_idstr(blk, &len);
        assert_int_equal(len, strlen(ids[i]));
        assert_memory_equal(id, ids[i], len);
        assert_int_equal(mr_block_size(blk), pages[i] * PS);
        assert_int_equal(mr_block_page_size(blk), PS);
        assert_int_equal(mr_block_data_pages(blk), data[i]);
        assert_int_equal(blk->n_pages, pages[i]);
        assert_int_equal(mr_block_bitmap_offset(blk), spec_block(&s, i)->bitmap_offset);
        assert_int_equal(mr_block_pages_offset(blk), spec_block(&s, i)->pages_offset);
        assert_int_equal(blk->pages_offset % PS, 0);
    }
    /* the layout QEMU writes: bitmap right after the header, the next entry right after
     * the page area */
    assert_int_equal(spec_block(&s, 0)->bitmap_offset, spec_block(&s, 0)->hdr_offset + 28);
    assert_int_equal(spec_block(&s, 1)->entry_offset, spec_block(&s, 0)->end_offset);
    ib_spec_clear(&s);
}

/* The worked example's first block (qemu-save-formats.md §9b), 1 MiB alignment as QEMU
 * writes it, read back through the library. */
static void test_qemu_alignment(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.align = 1 << 20;
    IbBlock *b = ib_add_block(&s, "pc.ram", 64 * PS, PS);
    ib_block_set_data(b, 0, 1);
    ib_block_set_data(b, 6, 1);
    ib_add_block(&s, "/rom@etc/acpi/rsdp", PS, PS);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    assert_int_equal(s.ram_start_offset, 0x4a);
    assert_int_equal(spec_block(&s, 0)->entry_offset, 0x63);
    assert_int_equal(spec_block(&s, 0)->hdr_offset, 0x72);
    assert_int_equal(spec_block(&s, 0)->bitmap_offset, 0x8e);
    assert_int_equal(spec_block(&s, 0)->pages_offset, 0x100000);
    assert_int_equal(((const guint8 *)g_bytes_get_data(bytes, NULL))[0x8e], 0x41);
    assert_int_equal(spec_block(&s, 1)->entry_offset, 0x100000 + 64 * PS);
    assert_int_equal(spec_block(&s, 1)->pages_offset, 0x200000);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 2);
    assert_block_reads(&s, img, 0, 0, 64 * PS);
    assert_block_reads(&s, img, 1, 0, PS);
    ib_spec_clear(&s);
}

/* ---- reads ---- */

static void test_pread_pages(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    for (guint i = 0; i < 4; i++) {
        const IbBlock *b = spec_block(&s, i);
        assert_block_reads(&s, img, i, 0, b->used_length); /* whole block */
        for (guint64 p = 0; p < b->n_pages; p++)           /* page by page */
            assert_block_reads(&s, img, i, p * PS, PS);
    }
    /* spot-check the pattern itself, not only the helper's model */
    guint8 buf[4];
    GError *error = NULL;
    assert_int_equal(mr_block_pread(mr_image_block(img, 0), buf, 4, 5 * PS + 10, &error), 4);
    for (int k = 0; k < 4; k++)
        assert_int_equal(buf[k], ib_page_byte(0, 5, 10 + k));
    assert_int_not_equal(buf[0], 0);
    ib_spec_clear(&s);
}

/* A clear page reads as zeros even where the image holds stale bytes (§5.4). */
static void test_stale_slots_read_zero(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    const guint8 *raw = g_bytes_get_data(bytes, NULL);
    const IbBlock *ram = spec_block(&s, 0);
    static const guint64 stale[] = {3, 6, 12};
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    guint8 buf[PS];
    guint8 zeros[PS] = {0};
    for (gsize i = 0; i < G_N_ELEMENTS(stale); i++) {
        /* the slot really holds non-zero bytes */
        assert_int_equal(raw[ram->pages_offset + stale[i] * PS], IB_STALE_BYTE);
        assert_int_equal(raw[ram->pages_offset + stale[i] * PS + PS - 1], IB_STALE_BYTE);
        GError *error = NULL;
        memset(buf, 0x77, sizeof buf);
        assert_int_equal(mr_block_pread(mr_image_block(img, 0), buf, PS, stale[i] * PS, &error),
                         PS);
        assert_no_error(error);
        assert_bytes_at(buf, 0, zeros, PS);
        /* and inside a larger read spanning data and stale pages */
        assert_block_reads(&s, img, 0, (stale[i] - 1) * PS + 17, 2 * PS);
    }
    ib_spec_clear(&s);
}

static void test_pread_unaligned(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    /* data/hole boundaries of pc.ram: 3, 5, 6, 8, 12, 15 pages */
    static const guint64 edges[] = {3 * PS, 5 * PS, 6 * PS, 8 * PS, 12 * PS, 15 * PS};
    for (gsize e = 0; e < G_N_ELEMENTS(edges); e++)
        for (guint64 back = 1; back <= 9; back += 4)
            for (gsize len = 1; len <= 2 * PS + 3; len += 1361)
                assert_block_reads(&s, img, 0, edges[e] - back, len);
    /* a sweep of odd offsets and lengths over every block */
    for (guint i = 0; i < 4; i++) {
        guint64 size = spec_block(&s, i)->used_length;
        for (guint64 off = 0; off < size; off += 1237)
            for (gsize len = 1; len < 3 * PS; len += 2999)
                assert_block_reads(&s, img, i, off, len);
    }
    ib_spec_clear(&s);
}

static void test_pread_eof(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    const MrBlock *ram = mr_image_block(img, 0);
    guint8 buf[64];
    GError *error = NULL;
    memset(buf, 0x77, sizeof buf);
    assert_int_equal(mr_block_pread(ram, buf, sizeof buf, 16 * PS, &error), 0);
    assert_int_equal(mr_block_pread(ram, buf, sizeof buf, 16 * PS + 1, &error), 0);
    assert_int_equal(mr_block_pread(ram, buf, sizeof buf, G_MAXUINT64, &error), 0);
    assert_int_equal(buf[0], 0x77);
    assert_int_equal(mr_block_pread(ram, buf, 0, 0, &error), 0);
    assert_no_error(error);
    /* short at the end: the last page is data */
    assert_block_reads(&s, img, 0, 16 * PS - 10, 64);
    assert_block_reads(&s, img, 3, 3 * PS - 10, 64); /* and a hole */
    ib_spec_clear(&s);
}

/* A set bit over all-zero bytes is data: reads zeros, but SEEK_DATA stops there. */
static void test_zero_data_page(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    IbBlock *b = ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_block_set_data(b, 2, 1);
    g_autoptr(GByteArray) arr = ib_build(&s);
    memset(arr->data + b->pages_offset + 2 * PS, 0, PS);
    g_autoptr(MrImage) img = ib_open_array(arr, NULL, NULL);
    assert_non_null(img);
    const MrBlock *blk = mr_image_block(img, 0);
    assert_int_equal(mr_block_data_pages(blk), 1);
    assert_extent_equal(blk, 0, MR_SEEK_DATA, 2 * PS);
    guint8 buf[PS], zeros[PS] = {0};
    assert_int_equal(mr_block_pread(blk, buf, PS, 2 * PS, NULL), PS);
    assert_bytes_at(buf, 0, zeros, PS);
    ib_spec_clear(&s);
}

/* ---- SEEK_DATA / SEEK_HOLE ---- */

static void test_seek(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    const MrBlock *ram = mr_image_block(img, 0); /* data {0,1,2,5,8-11,15} of 16 */
    assert_extent_equal(ram, 0, MR_SEEK_DATA, 0);
    assert_extent_equal(ram, 100, MR_SEEK_DATA, 100);       /* inside data */
    assert_extent_equal(ram, 3 * PS, MR_SEEK_DATA, 5 * PS); /* start of a hole */
    assert_extent_equal(ram, 3 * PS + 5, MR_SEEK_DATA, 5 * PS);
    assert_extent_equal(ram, 5 * PS - 1, MR_SEEK_DATA, 5 * PS);
    assert_extent_equal(ram, 6 * PS, MR_SEEK_DATA, 8 * PS);
    assert_extent_equal(ram, 12 * PS, MR_SEEK_DATA, 15 * PS);
    assert_extent_equal(ram, 15 * PS + PS - 1, MR_SEEK_DATA, 15 * PS + PS - 1); /* last byte */
    assert_extent_equal(ram, 0, MR_SEEK_HOLE, 3 * PS);
    assert_extent_equal(ram, 2 * PS + 7, MR_SEEK_HOLE, 3 * PS);
    assert_extent_equal(ram, 3 * PS + 9, MR_SEEK_HOLE, 3 * PS + 9); /* inside a hole */
    assert_extent_equal(ram, 5 * PS, MR_SEEK_HOLE, 6 * PS);
    assert_extent_equal(ram, 8 * PS + 1, MR_SEEK_HOLE, 12 * PS);
    assert_extent_equal(ram, 15 * PS, MR_SEEK_HOLE, 16 * PS); /* the end is a hole */
    assert_extent_equal(ram, 16 * PS - 1, MR_SEEK_HOLE, 16 * PS);
    assert_seek_no_more(ram, 16 * PS, MR_SEEK_DATA);
    assert_seek_no_more(ram, 16 * PS, MR_SEEK_HOLE);
    assert_seek_no_more(ram, G_MAXUINT64, MR_SEEK_DATA);
    assert_seek_no_more(ram, G_MAXUINT64, MR_SEEK_HOLE);

    const MrBlock *tables = mr_image_block(img, 1); /* data {1} of 4 */
    assert_extent_equal(tables, 0, MR_SEEK_DATA, PS);
    assert_extent_equal(tables, PS, MR_SEEK_HOLE, 2 * PS);
    assert_seek_no_more(tables, 2 * PS, MR_SEEK_DATA); /* no data after: ENXIO */
    assert_extent_equal(tables, 2 * PS, MR_SEEK_HOLE, 2 * PS);
    assert_extent_equal(tables, 4 * PS - 1, MR_SEEK_HOLE, 4 * PS - 1);

    const MrBlock *bios = mr_image_block(img, 2); /* all data */
    assert_extent_equal(bios, 0, MR_SEEK_HOLE, 2 * PS);
    assert_extent_equal(bios, PS + 1, MR_SEEK_DATA, PS + 1);

    const MrBlock *empty = mr_image_block(img, 3); /* no data */
    assert_seek_no_more(empty, 0, MR_SEEK_DATA);
    assert_extent_equal(empty, 0, MR_SEEK_HOLE, 0);
    assert_extent_equal(empty, 3 * PS - 1, MR_SEEK_HOLE, 3 * PS - 1);
    ib_spec_clear(&s);
}

/* Walk every extent of pc.ram the way cp --sparse does and compare with the spec. */
static void test_seek_walk(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    const MrBlock *ram = mr_image_block(img, 0);
    g_autoptr(GString) walk = g_string_new(NULL);
    guint64 pos = 0, data = 0, hole = 0;
    GError *error = NULL;
    while (mr_block_seek(ram, pos, MR_SEEK_DATA, &data, &error)) {
        assert_true(mr_block_seek(ram, data, MR_SEEK_HOLE, &hole, &error));
        g_string_append_printf(walk, "[%" G_GUINT64_FORMAT ",%" G_GUINT64_FORMAT ")", data / PS,
                               hole / PS);
        pos = hole;
    }
    assert_mr_error(error, MR_ERROR_NO_MORE, NULL);
    assert_string_equal(walk->str, "[0,3)[5,6)[8,12)[15,16)");
    ib_spec_clear(&s);
}

/* ---- containers ---- */

static void test_libvirt_container(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.libvirt = TRUE;
    s.lv_data_len_set = TRUE;
    s.lv_data_len = 68058 - 92; /* a real image's odd stream offset */
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    assert_int_equal(s.stream_offset, 68058);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    assert_true(img->has_libvirt);
    assert_int_equal(img->libvirt.version, 2);
    assert_int_equal(img->libvirt.format, 6);
    assert_int_equal(img->libvirt.was_running, 1);
    assert_int_equal(img->libvirt.data_len, 68058 - 92);
    assert_int_equal(img->libvirt.cookie_offset, strlen(s.lv_xml) + 1);
    assert_int_equal(img->libvirt.xml_len, strlen(s.lv_xml) + 1);
    assert_int_equal(img->libvirt.cookie_len, 68058 - 92 - strlen(s.lv_xml) - 1);
    assert_int_equal(img->stream.offset, 68058);
    assert_string_equal(mr_image_container(img), "libvirt");
    assert_int_equal(mr_image_stream_offset(img), 68058);
    /* page areas are aligned in absolute file offsets, not relative to the stream */
    for (guint i = 0; i < 4; i++) {
        const MrBlock *blk = mr_image_block(img, i);
        assert_int_equal(blk->pages_offset % PS, 0);
        assert_int_equal(blk->pages_offset, spec_block(&s, i)->pages_offset);
        assert_block_reads(&s, img, i, 0, spec_block(&s, i)->used_length);
    }
    assert_int_equal(spec_block(&s, 0)->bitmap_offset, 68058 + 0x8e);
    assert_int_equal(spec_block(&s, 0)->pages_offset, 68 * 1024);
    ib_spec_clear(&s);
}

static void test_libvirt_variants(void **state)
{
    (void)state;
    IbSpec s;
    /* computed data_len (stream at 92 + XML + cookie + 100), big-endian fields, and an
     * -o offset that libvirt images ignore */
    standard_spec(&s);
    s.libvirt = TRUE;
    s.lv_big_endian = TRUE;
    g_autoptr(GByteArray) arr = ib_build(&s);
    g_autoptr(GBytes) bytes = g_bytes_new(arr->data, arr->len);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    assert_true(img->has_libvirt);
    assert_int_equal(img->libvirt.cookie_offset, strlen(s.lv_xml) + 1);
    assert_int_equal(img->stream.offset, s.stream_offset);
    assert_int_equal(img->stream.offset, 92 + strlen(s.lv_xml) + 1 + strlen(s.lv_cookie) + 1 + 100);
    assert_block_reads(&s, img, 0, 0, 16 * PS);
    /* an explicit offset wins over the libvirt header's (the header is still parsed) */
    MrOpenOptions opts = {.has_stream_offset = TRUE, .stream_offset = 12345};
    assert_open_fails_opts(arr, &opts, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic at offset 12345");
    opts.stream_offset = s.stream_offset;
    g_autoptr(MrImage) img2 = assert_open_ok_opts(bytes, &opts);
    assert_string_equal(mr_image_container(img2), "libvirt");
    assert_int_equal(mr_image_stream_offset(img2), s.stream_offset);
    ib_patch_le32(arr, 28, GUINT32_SWAP_LE_BE(5)); /* zstd: refused even with an offset */
    assert_open_fails_opts(arr, &opts, MR_ERROR_UNSUPPORTED, "zstd");
    ib_spec_clear(&s);

    /* compressed: refused before the stream is looked at */
    standard_spec(&s);
    s.libvirt = TRUE;
    s.lv_format = 5;
    g_autoptr(GByteArray) zstd = ib_build(&s);
    assert_open_fails(zstd, MR_ERROR_UNSUPPORTED, "libvirt header: libvirt save format zstd (5)");
    ib_spec_clear(&s);

    /* raw (format 0): the header passes and the stream, having no mapped-ram capability,
     * is read as a legacy stream. Here it is a mapped-ram layout without the capability, so
     * the legacy block list runs into the first MappedRamHeader: its be32 version 1 starts
     * with a 0 byte, read as the length of the next RAMBlock id. */
    standard_spec(&s);
    s.libvirt = TRUE;
    s.lv_format = 0;
    s.caps = NULL;
    g_autoptr(GByteArray) raw = ib_build(&s);
    const MrOpenOptions no_index = {.index_path = ""};
    g_autofree char *raw_word =
        g_strdup_printf("RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x",
                        spec_block(&s, 0)->hdr_offset);
    assert_open_fails_opts(raw, &no_index, MR_ERROR_CORRUPT, raw_word);
    ib_spec_clear(&s);
    /* and a real legacy stream behind a raw header opens */
    ib_spec_init_legacy(&s);
    s.libvirt = TRUE;
    s.lv_format = 0;
    ib_add_block(&s, "pc.ram", 4 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "pc.ram", 2, 1);
    ib_rec_eos(&s);
    g_autoptr(GBytes) raw_legacy = ib_build_bytes(&s);
    g_autoptr(MrImage) raw_img = assert_open_ok_opts(raw_legacy, &no_index);
    assert_string_equal(mr_image_container(raw_img), "libvirt");
    assert_string_equal(mr_image_format(raw_img), "legacy");
    assert_int_equal(raw_img->libvirt.format, 0);
    assert_int_equal(mr_image_stream_offset(raw_img), s.stream_offset);
    assert_block_reads(&s, raw_img, 0, 0, 4 * PS);
    assert_int_equal(mr_block_data_pages(mr_image_block(raw_img, 0)), 1);
    ib_spec_clear(&s);

    /* Part magic */
    standard_spec(&s);
    s.libvirt = TRUE;
    g_strlcpy(s.lv_magic, "LibvirtQemudPart", sizeof s.lv_magic);
    g_autoptr(GByteArray) part = ib_build(&s);
    assert_open_fails(part, MR_ERROR_INCOMPLETE, "LibvirtQemudPart");
    ib_spec_clear(&s);

    /* data_len pointing past the end of the file */
    standard_spec(&s);
    s.libvirt = TRUE;
    g_autoptr(GByteArray) far = ib_build(&s);
    ib_patch_le32(far, 20, far->len);
    assert_open_fails(far, MR_ERROR_TRUNCATED, "libvirt header: truncated");
    /* data_len pointing inside the padding: no QEVM there */
    ib_patch_le32(far, 20, 200);
    assert_open_fails(far, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic at offset 292");
    ib_spec_clear(&s);
}

static void test_stream_offset_option(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.prefix_len = 0x1234;
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic at offset 0");
    MrOpenOptions opts = {0};
    assert_true(mr_parse_offset("0x1234", &opts));
    assert_true(opts.has_stream_offset);
    assert_int_equal(opts.stream_offset, 0x1234);
    g_autoptr(GBytes) bytes = g_bytes_new(arr->data, arr->len);
    g_autoptr(MrImage) img = assert_open_ok_opts(bytes, &opts);
    assert_string_equal(mr_image_container(img), "qemu");
    assert_int_equal(mr_image_stream_offset(img), 0x1234);
    assert_int_equal(spec_block(&s, 0)->bitmap_offset, 0x1234 + 0x8e);
    assert_int_equal(mr_image_block(img, 0)->bitmap_offset, 0x12c2);
    assert_int_equal(mr_image_block(img, 0)->pages_offset, 0x2000);
    for (guint i = 0; i < 4; i++)
        assert_block_reads(&s, img, i, 0, spec_block(&s, i)->used_length);
    /* a wrong offset */
    opts.stream_offset = 0x1233;
    assert_open_fails_opts(arr, &opts, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic at offset 4659");
    opts.stream_offset = G_MAXUINT64;
    assert_open_fails_opts(arr, &opts, MR_ERROR_UNKNOWN_FORMAT, "no QEVM magic");
    ib_spec_clear(&s);
}

static void test_parse_offset(void **state)
{
    (void)state;
    MrOpenOptions opts = {0};
    assert_true(mr_parse_offset("4660", &opts));
    assert_int_equal(opts.stream_offset, 4660);
    assert_true(mr_parse_offset("0X10", &opts));
    assert_int_equal(opts.stream_offset, 16);
    assert_true(mr_parse_offset("0", &opts));
    assert_int_equal(opts.stream_offset, 0);
    assert_true(mr_parse_offset("9223372036854775807", &opts));
    assert_int_equal(opts.stream_offset, G_MAXINT64);
    opts = (MrOpenOptions){0};
    static const char *const bad[] = {"",
                                      "0x",
                                      "x10",
                                      "12k",
                                      "-1",
                                      "+1",
                                      " 1",
                                      "1 ",
                                      "9223372036854775808",
                                      "0x8000000000000000",
                                      "0xg"};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        if (mr_parse_offset(bad[i], &opts))
            print_error("mr_parse_offset accepted \"%s\"\n", bad[i]);
        assert_false(opts.has_stream_offset);
    }
}

/* An image on disk: mr_image_open, then the file shrinks under it. */
static void test_file_image_shrinks(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    GError *error = NULL;
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("mramfs-test-XXXXXX.sav", &path, &error);
    assert_no_error(error);
    assert_int_equal(write(fd, arr->data, arr->len), (ssize_t)arr->len);
    close(fd);
    g_autoptr(MrImage) img = mr_image_open(path, NULL, &error);
    assert_no_error(error);
    assert_string_equal(mr_image_path(img), path);
    assert_int_equal(mr_image_file_stat(img)->st_size, arr->len);
    assert_block_reads(&s, img, 0, 0, 16 * PS);
    /* cut the file inside pc.ram page 8 */
    assert_int_equal(truncate(path, (off_t)(spec_block(&s, 0)->pages_offset + 8 * PS + 100)), 0);
    const MrBlock *ram = mr_image_block(img, 0);
    guint8 buf[2 * PS];
    assert_int_equal(mr_block_pread(ram, buf, PS, 0, &error), PS);       /* still there */
    assert_int_equal(mr_block_pread(ram, buf, PS, 12 * PS, &error), PS); /* a hole: no I/O */
    assert_int_equal(mr_block_pread(ram, buf, 2 * PS, 7 * PS, &error), -1);
    assert_mr_error(error, MR_ERROR_IO, "image shrank");
    assert_int_equal(mr_block_pread(ram, buf, PS, 9 * PS, &error), -1);
    assert_mr_error(error, MR_ERROR_IO, "image shrank");
    unlink(path);
    ib_spec_clear(&s);
}

/* ---- truncation anywhere ---- */

/* Open the first @cut bytes of the image @s describes; anything but a clean MR_ERROR
 * failure is a problem. A cut before the stream's magic is complete reads as "not a QEMU
 * save image" (UNKNOWN_FORMAT), which is fine for a cut file; nothing else may be
 * UNKNOWN_FORMAT or UNSUPPORTED (a cut right after the machine type has no capabilities, so
 * it is read as a legacy stream, which then ends before the RAM END section). */
static void check_cut(const IbSpec *s, GBytes *bytes, gsize cut, GString *problems)
{
    GError *error = NULL;
    MrImage *img = ib_open_prefix(bytes, cut, NULL, &error);
    if (img != NULL) {
        g_string_append_printf(problems, "  cut %" G_GSIZE_FORMAT ": opened\n", cut);
        mr_image_free(img);
        return;
    }
    int code = -1;
    if (error != NULL && error->domain == MR_ERROR)
        code = error->code;
    gboolean fine = code == MR_ERROR_TRUNCATED || code == MR_ERROR_INCOMPLETE ||
                    code == MR_ERROR_CORRUPT ||
                    (code == MR_ERROR_UNKNOWN_FORMAT && cut < s->stream_offset + 4);
    if (!fine)
        g_string_append_printf(problems, "  cut %" G_GSIZE_FORMAT ": code %d: %s\n", cut, code,
                               error ? error->message : "(no error set)");
    g_clear_error(&error);
}

static void report_cuts(GString *problems, gsize n_cuts)
{
    if (problems->len == 0)
        return;
    print_error("%" G_GSIZE_FORMAT " cuts tried, bad ones:\n%s", n_cuts, problems->str);
    fail();
}

/* The standard image: every cut up to past the first bitmap, around every structure of
 * the block table, at page boundaries in the page data, and every cut of the tail. */
static void test_truncated_everywhere(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(GString) problems = g_string_new(NULL);
    gsize n = 0;
    const IbBlock *first = spec_block(&s, 0);
    for (gsize cut = 0; cut <= first->bitmap_offset + first->bitmap_size + 64; cut++, n++)
        check_cut(&s, bytes, cut, problems);
    for (guint i = 0; i < s.blocks->len; i++) {
        const IbBlock *b = spec_block(&s, i);
        for (guint64 at = b->entry_offset - 2; at < b->bitmap_offset + b->bitmap_size + 2;
             at++, n++)
            check_cut(&s, bytes, (gsize)at, problems);
        for (guint64 p = 0; p <= b->n_pages; p++)
            for (guint64 d = 0; d < 3; d++, n++)
                check_cut(&s, bytes, (gsize)(b->pages_offset + p * PS + d - 1), problems);
    }
    for (gsize cut = (gsize)s.eos_offset - 2; cut < s.size; cut++, n++)
        check_cut(&s, bytes, cut, problems);
    report_cuts(problems, n);
    ib_spec_clear(&s);
}

/* A compact image (1 KiB pages, 1 KiB alignment, footers, PARTs, commands, libvirt
 * header): every single cut length. */
static void test_truncated_every_byte(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.libvirt = TRUE;
    s.lv_padding = 3;
    s.align = 1024;
    s.target_page_bits = 10;
    s.uuid = TRUE;
    s.n_parts = 2;
    s.n_commands_before = 1;
    IbBlock *a = ib_add_block(&s, "mach-virt.ram", 3 * 1024, 1024);
    ib_block_set_data(a, 1, 1);
    IbBlock *b = ib_add_block(&s, "x", 1024, 1024);
    ib_block_set_data(b, 0, 1);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes); /* the whole image is fine */
    assert_block_reads(&s, img, 0, 0, 3 * 1024);
    g_autoptr(GString) problems = g_string_new(NULL);
    for (gsize cut = 0; cut < s.size; cut++)
        check_cut(&s, bytes, cut, problems);
    report_cuts(problems, s.size);
    ib_spec_clear(&s);
}

/* ---- incomplete streams ---- */

static void test_missing_end(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.end = FALSE;
    s.command = FALSE;
    s.device_state = FALSE;
    s.eof = FALSE;
    s.vmdesc = FALSE; /* the stream ends right after the PART */
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_INCOMPLETE, "the file ends before the RAM END section");
    ib_spec_clear(&s);
    /* and with no PART either: the file ends after the START */
    standard_spec(&s);
    s.n_parts = 0;
    s.command = s.end = s.device_state = s.eof = s.vmdesc = FALSE;
    g_autoptr(GByteArray) arr2 = ib_build(&s);
    assert_open_fails(arr2, MR_ERROR_INCOMPLETE, "before the RAM END section");
    ib_spec_clear(&s);
}

static void test_eof_before_end(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.end = FALSE;
    s.device_state = FALSE;
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_INCOMPLETE, "end-of-stream marker before the RAM END section");
    ib_spec_clear(&s);
}

static void test_no_vmdesc(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.vmdesc = FALSE; /* ends with EOF: suppress-vmdesc=on */
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_INCOMPLETE, "no VM description at the end of the file");
    ib_spec_clear(&s);
    standard_spec(&s);
    s.vmdesc = s.eof = FALSE; /* ends inside device state */
    g_autoptr(GByteArray) arr2 = ib_build(&s);
    assert_open_fails(arr2, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
    standard_spec(&s);
    s.device_state = s.vmdesc = s.eof = FALSE; /* ends right after END */
    g_autoptr(GByteArray) arr3 = ib_build(&s);
    assert_open_fails(arr3, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
}

static void test_vmdesc_wrong(void **state)
{
    (void)state;
    IbSpec s;
    const gint64 deltas[] = {1, -1, 0x1000000};
    for (gsize i = 0; i < G_N_ELEMENTS(deltas); i++) {
        standard_spec(&s);
        s.vmdesc_len_delta = deltas[i];
        g_autoptr(GByteArray) arr = ib_build(&s);
        assert_open_fails(arr, MR_ERROR_INCOMPLETE, "no VM description");
        ib_spec_clear(&s);
    }
    /* not JSON-shaped */
    standard_spec(&s);
    s.vmdesc_json = "{\"devices\": [";
    g_autoptr(GByteArray) open_brace = ib_build(&s);
    assert_open_fails(open_brace, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
    standard_spec(&s);
    s.vmdesc_json = "[1]";
    g_autoptr(GByteArray) array = ib_build(&s);
    assert_open_fails(array, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
    /* the EOF byte before it is not 0 */
    standard_spec(&s);
    g_autoptr(GByteArray) no_eof = ib_build(&s);
    ib_patch_u8(no_eof, s.eof_offset, 0x01);
    assert_open_fails(no_eof, MR_ERROR_INCOMPLETE, "no VM description");
    ib_spec_clear(&s);
    /* the smallest description that passes */
    standard_spec(&s);
    s.vmdesc_json = "{}";
    g_autoptr(GBytes) tiny = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(tiny);
    assert_int_equal(img->vmdesc_len, 2);
    ib_spec_clear(&s);
}

/* ---- block table geometry ---- */

/* Build the standard image, patch a be64 of block @index at @field, expect @code/@word. */
static void patched_be64_fails(guint index, gsize field_off, guint64 value, int code,
                               const char *word, const char *file, int line)
{
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    const IbBlock *b = spec_block(&s, index);
    guint64 at = field_off == 0    ? b->used_length_field
                 : field_off == 4  ? b->hdr_offset + 4
                 : field_off == 12 ? b->bitmap_offset_field
                                   : b->pages_offset_field;
    ib_patch_be64(arr, at, value);
    _assert_open_fails(arr, NULL, code, word, file, line);
    ib_spec_clear(&s);
}
#define FIELD_USED  0
#define FIELD_PS    4
#define FIELD_BMAP  12
#define FIELD_PAGES 20
#define assert_patch_fails(index, field, value, code, word)                                        \
    patched_be64_fails((index), (field), (value), (code), (word), __FILE__, __LINE__)

static void test_pages_offset_bad(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    guint64 past = (s.size + PS - 1) / PS * PS;
    assert_patch_fails(0, FIELD_PAGES, past, MR_ERROR_CORRUPT, "page data lies outside the file");
    assert_patch_fails(3, FIELD_PAGES, past, MR_ERROR_CORRUPT,
                       "RAMBlock \"empty\": page data "
                       "lies outside the file");
    assert_patch_fails(0, FIELD_PAGES, G_MAXUINT64 & ~(guint64)(PS - 1), MR_ERROR_CORRUPT,
                       "page data lies outside the file");
    /* unaligned */
    assert_patch_fails(0, FIELD_PAGES, spec_block(&s, 0)->pages_offset + 512, MR_ERROR_CORRUPT,
                       "page data offset is not page aligned");
    assert_patch_fails(1, FIELD_PAGES, spec_block(&s, 1)->pages_offset - 1, MR_ERROR_CORRUPT,
                       "not page aligned");
    /* overlapping its own bitmap */
    assert_patch_fails(0, FIELD_PAGES, 0, MR_ERROR_CORRUPT, "page data starts inside its bitmap");
    assert_patch_fails(1, FIELD_PAGES, spec_block(&s, 1)->bitmap_offset / PS * PS, MR_ERROR_CORRUPT,
                       "page data starts inside its bitmap");
    ib_spec_clear(&s);
}

static void test_bitmap_offset_bad(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    const IbBlock *b = spec_block(&s, 0);
    /* inside the MappedRamHeader / entry / stream before it */
    assert_patch_fails(0, FIELD_BMAP, b->bitmap_offset - 1, MR_ERROR_CORRUPT,
                       "bitmap starts inside the stream before it");
    assert_patch_fails(0, FIELD_BMAP, b->hdr_offset, MR_ERROR_CORRUPT,
                       "bitmap starts inside the stream");
    assert_patch_fails(0, FIELD_BMAP, 0, MR_ERROR_CORRUPT, "bitmap starts inside the stream");
    assert_patch_fails(1, FIELD_BMAP, spec_block(&s, 0)->pages_offset, MR_ERROR_CORRUPT,
                       "bitmap starts inside the stream");
    /* past the end, and overflowing */
    assert_patch_fails(0, FIELD_BMAP, s.size - 1, MR_ERROR_CORRUPT, "bitmap lies outside the file");
    assert_patch_fails(0, FIELD_BMAP, G_MAXUINT64 - 3, MR_ERROR_CORRUPT,
                       "bitmap lies outside the file");
    /* beyond its page data (pages_offset < bitmap end) */
    assert_patch_fails(0, FIELD_BMAP, b->pages_offset, MR_ERROR_CORRUPT,
                       "page data starts inside its bitmap");
    ib_spec_clear(&s);
}

static void test_used_length_bad(void **state)
{
    (void)state;
    /* not a multiple of the page size (still a multiple of 1 KiB, so MEM_SIZE parses) */
    assert_patch_fails(0, FIELD_USED, 16 * PS - 1024, MR_ERROR_CORRUPT,
                       "used_length is not a multiple of the page size");
    /* larger than what the MEM_SIZE total leaves */
    assert_patch_fails(1, FIELD_USED, 10 * PS, MR_ERROR_CORRUPT,
                       "block sizes exceed the announced RAM total");
    assert_patch_fails(0, FIELD_USED, G_MAXUINT64, MR_ERROR_CORRUPT, "exceed the announced");
}

static void test_page_size_bad(void **state)
{
    (void)state;
    const guint64 bad[] = {3000,
                           128 * 1024,
                           0,
                           512,
                           1,
                           4097,
                           G_GUINT64_CONSTANT(1) << 32,
                           (G_GUINT64_CONSTANT(1) << 32) + 4096,
                           G_MAXUINT64};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++)
        assert_patch_fails(0, FIELD_PS, bad[i], MR_ERROR_CORRUPT,
                           "page size is not a power of two between 1 KiB and 64 KiB");
}

static void test_page_size_extremes(void **state)
{
    (void)state;
    const guint64 sizes[] = {1024, 2048, 16384, 65536};
    for (gsize i = 0; i < G_N_ELEMENTS(sizes); i++) {
        IbSpec s;
        ib_spec_init(&s);
        s.align = sizes[i];
        IbBlock *b = ib_add_block(&s, "pc.ram", 5 * sizes[i], sizes[i]);
        ib_block_set_data(b, 1, 2);
        ib_block_set_stale(b, 4, 1);
        g_autoptr(GBytes) bytes = ib_build_bytes(&s);
        g_autoptr(MrImage) img = assert_open_ok(bytes);
        const MrBlock *blk = mr_image_block(img, 0);
        assert_int_equal(mr_block_page_size(blk), sizes[i]);
        assert_int_equal(mr_block_data_pages(blk), 2);
        assert_block_reads(&s, img, 0, 0, 5 * sizes[i]);
        assert_block_reads(&s, img, 0, sizes[i] - 3, sizes[i] + 7);
        assert_extent_equal(blk, 0, MR_SEEK_DATA, sizes[i]);
        assert_extent_equal(blk, sizes[i], MR_SEEK_HOLE, 3 * sizes[i]);
        ib_spec_clear(&s);
    }
}

static void test_header_version(void **state)
{
    (void)state;
    const guint32 versions[] = {2, 0, 0xffffffffu};
    for (gsize i = 0; i < G_N_ELEMENTS(versions); i++) {
        IbSpec s;
        standard_spec(&s);
        spec_block(&s, 1)->hdr_version = versions[i];
        g_autoptr(GByteArray) arr = ib_build(&s);
        g_autofree char *word = g_strdup_printf(
            "RAMBlock \"/rom@etc/acpi/tables\": mapped-ram header version %u is not supported",
            versions[i]);
        assert_open_fails(arr, MR_ERROR_UNSUPPORTED, word);
        ib_spec_clear(&s);
    }
}

static void test_mem_size_bad(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.mem_size_set = TRUE;
    s.mem_size = 25 * PS - PS; /* one page less than the blocks */
    g_autoptr(GByteArray) small = ib_build(&s);
    assert_open_fails(small, MR_ERROR_CORRUPT, "block sizes exceed the announced RAM total");
    ib_spec_clear(&s);
    /* more than the blocks: the EOS is read as the next entry */
    standard_spec(&s);
    s.mem_size_set = TRUE;
    s.mem_size = 26 * PS;
    g_autoptr(GByteArray) big = ib_build(&s);
    assert_open_fails(big, MR_ERROR_CORRUPT, "empty RAMBlock id");
    ib_spec_clear(&s);
    /* flags other than MEM_SIZE in the first record */
    standard_spec(&s);
    g_autoptr(GByteArray) flags = ib_build(&s);
    ib_patch_be64(flags, s.mem_size_offset, 25 * PS | 0x04 | 0x08);
    assert_open_fails(flags, MR_ERROR_CORRUPT, "first record has flags 0xc, expected MEM_SIZE");
    ib_patch_be64(flags, s.mem_size_offset, 25 * PS | 0x10);
    assert_open_fails(flags, MR_ERROR_CORRUPT, "expected MEM_SIZE");
    ib_spec_clear(&s);
    /* a total of 0: no blocks, a valid (if useless) image */
    ib_spec_init(&s);
    g_autoptr(GBytes) none = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(none);
    assert_int_equal(mr_image_n_blocks(img), 0);
    ib_spec_clear(&s);
}

static void test_empty_idstr(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    ib_add_block_bytes(&s, (const guint8 *)"", 0, PS, PS);
    g_autoptr(GByteArray) arr = ib_build(&s);
    g_autofree char *word =
        g_strdup_printf("RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x",
                        spec_block(&s, 4)->entry_offset);
    assert_open_fails(arr, MR_ERROR_CORRUPT, word);
    ib_spec_clear(&s);
}

/* MR_MAX_BLOCKS tiny blocks (1 KiB pages, 1 KiB alignment: 2 KiB each, 8 MiB in all) open;
 * one more is refused. */
static void test_block_limit(void **state)
{
    (void)state;
    for (guint n = MR_MAX_BLOCKS; n <= MR_MAX_BLOCKS + 1; n++) {
        IbSpec s;
        ib_spec_init(&s);
        s.align = 1024;
        for (guint i = 0; i < n; i++) {
            char id[16];
            g_snprintf(id, sizeof id, "b%u", i);
            IbBlock *b = ib_add_block(&s, id, 1024, 1024);
            if (i % 1000 == 0)
                ib_block_set_data(b, 0, 1);
        }
        g_autoptr(GByteArray) arr = ib_build(&s);
        if (n == MR_MAX_BLOCKS) {
            g_autoptr(MrImage) img = ib_open_array(arr, NULL, NULL);
            assert_non_null(img);
            assert_int_equal(mr_image_n_blocks(img), MR_MAX_BLOCKS);
            assert_block_reads(&s, img, 4000, 0, 1024);
            assert_block_reads(&s, img, MR_MAX_BLOCKS - 1, 0, 1024);
        } else {
            assert_open_fails(arr, MR_ERROR_CORRUPT, "more than 4096 RAMBlocks");
        }
        ib_spec_clear(&s);
    }
}

/* ---- sections ---- */

static void test_other_iterable_start(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.start_before_ram = "dirty-bitmap";
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_UNSUPPORTED,
                      "iterable section \"dirty-bitmap\" is not supported (only RAM)");
    ib_spec_clear(&s);
    /* the ram START itself renamed; odd bytes escaped in the message */
    standard_spec(&s);
    s.ram_idstr = "ra\x01m";
    g_autoptr(GByteArray) renamed = ib_build(&s);
    assert_open_fails(renamed, MR_ERROR_UNSUPPORTED, "iterable section \"ra\\x01m\"");
    ib_spec_clear(&s);
}

static void test_full_before_ram(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.full_before_ram = TRUE;
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_UNSUPPORTED, "device state before RAM");
    ib_spec_clear(&s);
    /* device state between START and END */
    standard_spec(&s);
    s.end = FALSE;
    g_autoptr(GByteArray) early = ib_build(&s);
    assert_open_fails(early, MR_ERROR_CORRUPT, "device state section before the RAM END section");
    ib_spec_clear(&s);
}

static void test_capabilities(void **state)
{
    (void)state;
    static const char *const shared[] = {"x-ignore-shared", "mapped-ram", NULL};
    static const char *const shared_only[] = {"x-ignore-shared", NULL};
    IbSpec s;
    standard_spec(&s);
    s.caps = shared;
    g_autoptr(GByteArray) arr = ib_build(&s);
    assert_open_fails(arr, MR_ERROR_UNSUPPORTED, "x-ignore-shared saves are not supported");
    ib_spec_clear(&s);
    /* x-ignore-shared without mapped-ram: refused too, before the legacy reader looks at
     * the block list */
    const MrOpenOptions no_index = {.index_path = ""};
    standard_spec(&s);
    s.caps = shared_only;
    g_autoptr(GByteArray) legacy1 = ib_build(&s);
    assert_open_fails_opts(
        legacy1, &no_index, MR_ERROR_UNSUPPORTED,
        "x-ignore-shared saves are not supported (shared RAM is not in the file)");
    /* no capabilities, or no configuration at all: a legacy stream. This mapped-ram layout
     * is not one: the legacy block list stops at the first MappedRamHeader (its be32 version
     * 1 starts with a 0 byte, read as the length of the next RAMBlock id). */
    s.caps = NULL;
    g_autoptr(GByteArray) legacy2 = ib_build(&s);
    g_autofree char *word2 =
        g_strdup_printf("RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x",
                        spec_block(&s, 0)->hdr_offset);
    assert_open_fails_opts(legacy2, &no_index, MR_ERROR_CORRUPT, word2);
    s.config = FALSE;
    g_autoptr(GByteArray) legacy3 = ib_build(&s);
    g_autofree char *word3 =
        g_strdup_printf("RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x",
                        spec_block(&s, 0)->hdr_offset);
    assert_open_fails_opts(legacy3, &no_index, MR_ERROR_CORRUPT, word3);
    ib_spec_clear(&s);
    /* the same three as real legacy streams: x-ignore-shared refused, the others open */
    ib_spec_init_legacy(&s);
    ib_add_block(&s, "pc.ram", 2 * PS, PS);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "pc.ram", 1, 1);
    ib_rec_eos(&s);
    s.caps = shared_only;
    g_autoptr(GByteArray) real1 = ib_build(&s);
    assert_open_fails_opts(real1, &no_index, MR_ERROR_UNSUPPORTED,
                           "x-ignore-shared saves are not supported");
    s.caps = NULL;
    g_autoptr(GBytes) real2 = ib_build_bytes(&s);
    g_autoptr(MrImage) img2 = assert_open_ok_opts(real2, &no_index);
    assert_string_equal(mr_image_format(img2), "legacy");
    assert_int_equal(mr_image_capabilities(img2)->len, 0);
    assert_block_reads(&s, img2, 0, 0, 2 * PS);
    s.config = FALSE;
    g_autoptr(GBytes) real3 = ib_build_bytes(&s);
    g_autoptr(MrImage) img3 = assert_open_ok_opts(real3, &no_index);
    assert_string_equal(mr_image_format(img3), "legacy");
    assert_null(mr_image_machine_type(img3));
    assert_block_reads(&s, img3, 0, 0, 2 * PS);
    ib_spec_clear(&s);
}

static void test_ram_version(void **state)
{
    (void)state;
    const guint32 versions[] = {5, 3, 0};
    for (gsize i = 0; i < G_N_ELEMENTS(versions); i++) {
        IbSpec s;
        standard_spec(&s);
        s.ram_version = versions[i];
        g_autoptr(GByteArray) arr = ib_build(&s);
        g_autofree char *word =
            g_strdup_printf("RAM section version %u is not supported (expected 4)", versions[i]);
        assert_open_fails(arr, MR_ERROR_UNSUPPORTED, word);
        ib_spec_clear(&s);
    }
}

static void test_footer_wrong_id(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.start_footer_id = 9;
    g_autoptr(GByteArray) start = ib_build(&s);
    g_autofree char *word =
        g_strdup_printf("section footer at 0x%" G_GINT64_MODIFIER "x names section 9, expected 1",
                        s.eos_offset + 8);
    assert_open_fails(start, MR_ERROR_CORRUPT, word);
    ib_spec_clear(&s);
    standard_spec(&s);
    s.part_footer_id = 2;
    g_autoptr(GByteArray) part = ib_build(&s);
    assert_open_fails(part, MR_ERROR_CORRUPT, "names section 2, expected 1");
    ib_spec_clear(&s);
    standard_spec(&s);
    s.end_footer_id = 0x7e;
    g_autoptr(GByteArray) end = ib_build(&s);
    assert_open_fails(end, MR_ERROR_CORRUPT, "names section 126, expected 1");
    ib_spec_clear(&s);
}

static void test_section_ids(void **state)
{
    (void)state;
    IbSpec s;
    /* any section id works as long as PART/END repeat it */
    standard_spec(&s);
    s.ram_section_id = 0x12345678;
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    ib_spec_clear(&s);
    /* a PART naming another section */
    standard_spec(&s);
    g_autoptr(GByteArray) part = ib_build(&s);
    ib_patch_be32(part, s.part_offset + 1, 3);
    assert_open_fails(part, MR_ERROR_CORRUPT, "section PART for unknown section id 3");
    ib_spec_clear(&s);
    standard_spec(&s);
    g_autoptr(GByteArray) end = ib_build(&s);
    ib_patch_be32(end, s.end_offset + 1, 0);
    assert_open_fails(end, MR_ERROR_CORRUPT, "section END for unknown section id 0");
    ib_spec_clear(&s);
}

static void test_eos_and_section_bytes(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    g_autoptr(GByteArray) arr = ib_build(&s);
    /* a page record after the block list: mapped-ram carries none */
    ib_patch_be64(arr, s.eos_offset, 0x08);
    assert_open_fails(arr, MR_ERROR_CORRUPT, "RAM block table: expected end-of-section marker");
    ib_patch_be64(arr, s.eos_offset, 0x10);
    /* PART payload not EOS */
    ib_patch_be64(arr, s.part_offset + 5, 0x200);
    assert_open_fails(arr, MR_ERROR_CORRUPT, "RAM section: expected end-of-section marker");
    ib_patch_be64(arr, s.part_offset + 5, 0x10);
    /* garbage where a section starts */
    ib_patch_u8(arr, s.part_offset, 0x42);
    g_autofree char *word = g_strdup_printf("unexpected byte 0x42 at 0x%" G_GINT64_MODIFIER
                                            "x where a section should start",
                                            s.part_offset);
    assert_open_fails(arr, MR_ERROR_CORRUPT, word);
    ib_patch_u8(arr, s.part_offset, 0x05); /* a subsection marker out of place */
    assert_open_fails(arr, MR_ERROR_CORRUPT, "unexpected byte 0x05");
    ib_patch_u8(arr, s.part_offset, 0x02);
    g_autoptr(MrImage) img = ib_open_array(arr, NULL, NULL); /* restored: opens again */
    assert_non_null(img);
    ib_spec_clear(&s);
}

static void test_commands_parts_footers(void **state)
{
    (void)state;
    IbSpec s;
    standard_spec(&s);
    s.n_commands_before = 3;
    s.n_parts = 80;
    g_autoptr(GBytes) many = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(many);
    assert_block_reads(&s, img, 0, 0, 16 * PS);
    ib_spec_clear(&s);

    standard_spec(&s);
    s.footers = FALSE;
    s.n_parts = 0;
    s.command = FALSE;
    g_autoptr(GBytes) bare = ib_build_bytes(&s);
    g_autoptr(MrImage) img2 = assert_open_ok(bare);
    assert_int_equal(mr_image_n_blocks(img2), 4);
    assert_block_reads(&s, img2, 0, 0, 16 * PS);
    ib_spec_clear(&s);

    /* a COMMAND whose length runs past the end of the file */
    standard_spec(&s);
    s.command = FALSE;
    s.end = s.device_state = s.eof = s.vmdesc = FALSE;
    g_autoptr(GByteArray) cmd = ib_build(&s);
    ib_put_u8(cmd, 0x08);
    ib_put_be16(cmd, 11);
    ib_put_be16(cmd, 0xffff);
    assert_open_fails(cmd, MR_ERROR_TRUNCATED, "command record: truncated: 65535 bytes");
    /* a COMMAND cut inside its header */
    g_byte_array_set_size(cmd, cmd->len - 3);
    assert_open_fails(cmd, MR_ERROR_TRUNCATED, "command record: truncated");
    ib_spec_clear(&s);
}

/* The tail search reads the file backwards in 1 MiB windows: a VM description whose 0x06
 * sits just before, at, or just after a window boundary, or one window further back, is
 * still found. */
static void test_vmdesc_window_boundaries(void **state)
{
    (void)state;
    const gsize lens[] = {(1u << 20) - 7, (1u << 20) - 6, (1u << 20) - 5, (1u << 20) - 4,
                          (1u << 20) + 1000};
    for (gsize i = 0; i < G_N_ELEMENTS(lens); i++) {
        IbSpec s;
        ib_spec_init(&s);
        IbBlock *b = ib_add_block(&s, "pc.ram", PS, PS);
        ib_block_set_data(b, 0, 1);
        g_autofree char *json = g_malloc(lens[i] + 1);
        memset(json, ' ', lens[i]);
        json[0] = '{';
        json[lens[i] - 1] = '}';
        json[lens[i]] = 0;
        s.vmdesc_json = json;
        g_autoptr(GBytes) bytes = ib_build_bytes(&s);
        GError *error = NULL;
        g_autoptr(MrImage) img = ib_open(bytes, NULL, &error);
        if (img == NULL)
            print_error("JSON of %" G_GSIZE_FORMAT " bytes (file %" G_GUINT64_FORMAT
                        ", 0x06 at %" G_GUINT64_FORMAT ")\n",
                        lens[i], s.size, s.vmdesc_offset);
        assert_no_error(error);
        assert_int_equal(img->vmdesc_offset, s.vmdesc_offset + 5);
        assert_int_equal(img->vmdesc_len, lens[i]);
        ib_spec_clear(&s);
    }
}

/* A block of used_length 0: no pages, no bitmap, and the next entry right at its
 * (aligned) pages_offset. */
static void test_zero_size_block(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    IbBlock *a = ib_add_block(&s, "a", 2 * PS, PS);
    ib_block_set_data(a, 1, 1);
    ib_add_block(&s, "zero", 0, PS);
    IbBlock *c = ib_add_block(&s, "c", PS, PS);
    ib_block_set_data(c, 0, 1);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    assert_int_equal(mr_image_n_blocks(img), 3);
    const MrBlock *z = mr_image_block(img, 1);
    assert_int_equal(mr_block_size(z), 0);
    assert_int_equal(mr_block_data_pages(z), 0);
    guint8 buf[8];
    assert_int_equal(mr_block_pread(z, buf, sizeof buf, 0, NULL), 0);
    assert_seek_no_more(z, 0, MR_SEEK_DATA);
    assert_seek_no_more(z, 0, MR_SEEK_HOLE);
    assert_block_reads(&s, img, 0, 0, 2 * PS);
    assert_block_reads(&s, img, 2, 0, PS);
    ib_spec_clear(&s);
}

static void test_start_end_order(void **state)
{
    (void)state;
    IbSpec s;
    /* a second ram START */
    standard_spec(&s);
    s.n_parts = 0;
    s.command = s.end = s.device_state = s.eof = s.vmdesc = FALSE;
    g_autoptr(GByteArray) two = ib_build(&s);
    ib_put_u8(two, 0x01);
    ib_put_be32(two, 1);
    ib_put_name(two, "ram");
    ib_put_be32(two, 0);
    ib_put_be32(two, 4);
    assert_open_fails(two, MR_ERROR_CORRUPT, "second RAM START section");
    ib_spec_clear(&s);
    /* END (and PART) without a START */
    ib_spec_init(&s);
    g_autoptr(GByteArray) end = g_byte_array_new();
    ib_emit_stream_header(end, &s);
    guint body = end->len;
    ib_put_u8(end, 0x03);
    ib_put_be32(end, 1);
    ib_put_be64(end, 0x10);
    assert_open_fails(end, MR_ERROR_CORRUPT, "section END for unknown section id 1");
    ib_patch_u8(end, body, 0x02);
    assert_open_fails(end, MR_ERROR_CORRUPT, "section PART for unknown section id 1");
    ib_spec_clear(&s);
}

static void test_escape_bytes(void **state)
{
    (void)state;
    g_autofree char *e = mr_escape_bytes((const guint8 *)"a\\b\x01\x7f\xff\0 ~", 9);
    assert_string_equal(e, "a\\x5cb\\x01\\x7f\\xff\\x00 ~");
    g_autofree char *empty = mr_escape_bytes((const guint8 *)"", 0);
    assert_string_equal(empty, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_table),
        cmocka_unit_test(test_qemu_alignment),
        cmocka_unit_test(test_pread_pages),
        cmocka_unit_test(test_stale_slots_read_zero),
        cmocka_unit_test(test_pread_unaligned),
        cmocka_unit_test(test_pread_eof),
        cmocka_unit_test(test_zero_data_page),
        cmocka_unit_test(test_seek),
        cmocka_unit_test(test_seek_walk),
        cmocka_unit_test(test_libvirt_container),
        cmocka_unit_test(test_libvirt_variants),
        cmocka_unit_test(test_stream_offset_option),
        cmocka_unit_test(test_parse_offset),
        cmocka_unit_test(test_file_image_shrinks),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_truncated_every_byte),
        cmocka_unit_test(test_missing_end),
        cmocka_unit_test(test_eof_before_end),
        cmocka_unit_test(test_no_vmdesc),
        cmocka_unit_test(test_vmdesc_wrong),
        cmocka_unit_test(test_pages_offset_bad),
        cmocka_unit_test(test_bitmap_offset_bad),
        cmocka_unit_test(test_used_length_bad),
        cmocka_unit_test(test_page_size_bad),
        cmocka_unit_test(test_page_size_extremes),
        cmocka_unit_test(test_header_version),
        cmocka_unit_test(test_mem_size_bad),
        cmocka_unit_test(test_empty_idstr),
        cmocka_unit_test(test_block_limit),
        cmocka_unit_test(test_other_iterable_start),
        cmocka_unit_test(test_full_before_ram),
        cmocka_unit_test(test_capabilities),
        cmocka_unit_test(test_ram_version),
        cmocka_unit_test(test_footer_wrong_id),
        cmocka_unit_test(test_section_ids),
        cmocka_unit_test(test_eos_and_section_bytes),
        cmocka_unit_test(test_commands_parts_footers),
        cmocka_unit_test(test_vmdesc_window_boundaries),
        cmocka_unit_test(test_zero_size_block),
        cmocka_unit_test(test_start_end_order),
        cmocka_unit_test(test_escape_bytes),
    };
    return cmocka_run_group_tests_name("image", tests, NULL, NULL);
}
