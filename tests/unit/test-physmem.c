/* test-physmem.c: lib/mr-physmem.c, the guest-physical view (physmem.raw): which block
 * range each machine type puts at which guest-physical address (qemu-save-formats.md §7),
 * and that the view reads, seeks and counts pages exactly as those mappings say.
 *
 * Every test states its mappings by hand (the rules of §7 worked out for that RAM size);
 * check_view() then compares the description's "physmem" member with them word for word
 * and checks the view against a model built from them and the spec's data pages: every
 * data/hole extent, the data page count, and bytes around every mapping edge. Images of
 * several GiB are sparse temporary files (ib_open_sparse): only bitmaps and data pages
 * take room.
 *
 * The last three tests (under "regressions") were written as failing tests for bugs found
 * in review, before lib/mr-physmem.c was fixed; they keep those bugs fixed. */
#include "test-helpers.h"

#include <string.h>

#define PS  4096u
#define KiB (G_GUINT64_CONSTANT(1) << 10)
#define MiB (G_GUINT64_CONSTANT(1) << 20)
#define GiB (G_GUINT64_CONSTANT(1) << 30)

static const MrOpenOptions no_index = {.index_path = ""};

typedef struct {
    guint64 gpa, size;
    const char *block;
    guint64 block_offset;
} Range;

static IbBlock *spec_block(const IbSpec *s, guint i)
{
    return g_ptr_array_index(s->blocks, i);
}

static guint block_index(const IbSpec *s, const char *idstr)
{
    for (guint i = 0; i < s->blocks->len; i++) {
        const IbBlock *b = spec_block(s, i);
        if (b->idstr_len == strlen(idstr) && memcmp(b->idstr, idstr, b->idstr_len) == 0)
            return i;
    }
    fail_msg("no block %s in the spec", idstr);
    return 0;
}

/* A mapped-ram spec for machine @machine, no blocks yet. */
static void spec_for(IbSpec *s, const char *machine)
{
    ib_spec_init(s);
    s->machine_type = machine;
}

static IbBlock *add(IbSpec *s, const char *idstr, guint64 size)
{
    return ib_add_block(s, idstr, size, PS);
}

/* Mark the pages holding block offsets @offs (one page each) as data. */
static void data_at(IbBlock *b, const guint64 *offs, gsize n)
{
    for (gsize i = 0; i < n; i++)
        ib_block_set_data(b, offs[i] / PS, 1);
}
#define DATA_AT(b, ...)                                                                            \
    do {                                                                                           \
        const guint64 offs_[] = {__VA_ARGS__};                                                     \
        data_at((b), offs_, G_N_ELEMENTS(offs_));                                                  \
    } while (0)

static MrImage *open_spec_opts(IbSpec *s, MrOpenOptions opts)
{
    GError *error = NULL;
    MrImage *img;
    if (s->legacy) { /* legacy blocks cost no room in the image: records only */
        g_autoptr(GBytes) bytes = ib_build_bytes(s);
        img = ib_open(bytes, &opts, &error);
    } else {
        img = ib_open_sparse(s, &opts, &error);
    }
    assert_no_error(error);
    assert_non_null(img);
    return img;
}

static MrImage *open_spec(IbSpec *s, guint64 max_ram_below_4g)
{
    MrOpenOptions opts = no_index;
    opts.max_ram_below_4g = max_ram_below_4g;
    return open_spec_opts(s, opts);
}

/* The "physmem" member of the description, without the comma that ends its line. */
static char *physmem_member(const MrImage *img)
{
    g_autofree char *json = mr_image_describe_json(img);
    const char *start = strstr(json, "\n  \"physmem\": {");
    if (start == NULL)
        fail_msg("no physmem member in\n%s", json);
    start += 3;
    const char *end = strstr(start, ",\n  \"device_state\": {");
    assert_non_null(end);
    return g_strndup(start, (gsize)(end - start));
}

static char *expected_member(const char *about, const Range *r, gsize n)
{
    GString *out = g_string_new("\"physmem\": {\"about\": \"");
    g_string_append(out, about);
    g_string_append(out, "\", \"ranges\": [");
    for (gsize i = 0; i < n; i++)
        g_string_append_printf(out,
                               "%s{\"gpa\": %" G_GUINT64_FORMAT ", \"size\": %" G_GUINT64_FORMAT
                               ", \"block\": \"%s\", \"block_offset\": %" G_GUINT64_FORMAT "}",
                               i ? ", " : "", r[i].gpa, r[i].size, r[i].block, r[i].block_offset);
    g_string_append(out, "]}");
    return g_string_free(out, FALSE);
}

/* What the view must hold at @gpa: the mapped block's byte, or 0 outside every range. */
static guint8 model_byte(const IbSpec *s, const Range *r, gsize n, guint64 gpa)
{
    for (gsize i = 0; i < n; i++)
        if (gpa >= r[i].gpa && gpa - r[i].gpa < r[i].size)
            return ib_expected_byte(s, block_index(s, r[i].block),
                                    r[i].block_offset + gpa - r[i].gpa);
    return 0;
}

/* mr_block_pread of the view at [@gpa, @gpa + @len) = the model (short at the end). */
#define assert_view_reads(s, view, r, n, gpa, len)                                                 \
    _assert_view_reads((s), (view), (r), (n), (gpa), (len), __FILE__, __LINE__)
static void _assert_view_reads(const IbSpec *s, const MrBlock *view, const Range *r, gsize n,
                               guint64 gpa, gsize len, const char *file, int line)
{
    g_autofree guint8 *buf = g_malloc(len + 1);
    memset(buf, 0x55, len + 1);
    GError *error = NULL;
    gssize got = mr_block_pread(view, buf, len, gpa, &error);
    _assert_no_error(error, file, line);
    guint64 size = mr_block_size(view);
    gsize want = gpa >= size ? 0 : (gsize)MIN((guint64)len, size - gpa);
    _assert_int_equal((LargestIntegralType)got, want, file, line);
    for (gsize i = 0; i <= want; i++) {
        guint8 e = i == want ? 0x55 : model_byte(s, r, n, gpa + i);
        if (buf[i] != e) {
            print_error("%s:%d: view read [0x%" G_GINT64_MODIFIER "x, +0x%" G_GSIZE_MODIFIER
                        "x): byte at GPA 0x%" G_GINT64_MODIFIER "x is 0x%02x, expected 0x%02x\n",
                        file, line, gpa, len, gpa + i, buf[i], e);
            _fail(file, line);
        }
    }
}

typedef struct {
    guint64 start, end;
} Extent;

/* The data extents of the model: mapped pages whose source page is data, merged. */
static GArray *model_extents(const IbSpec *s, const Range *r, gsize n, guint64 *pages)
{
    GArray *ext = g_array_new(FALSE, FALSE, sizeof(Extent));
    *pages = 0;
    for (gsize i = 0; i < n; i++) { /* ranges are listed in GPA order */
        const IbBlock *b = spec_block(s, block_index(s, r[i].block));
        for (guint64 p = 0; p < r[i].size / PS; p++) {
            if (!b->data[r[i].block_offset / PS + p])
                continue;
            guint64 at = r[i].gpa + p * PS;
            Extent *last = ext->len ? &g_array_index(ext, Extent, ext->len - 1) : NULL;
            if (last != NULL && last->end == at)
                last->end += PS;
            else
                g_array_append_val(ext, ((Extent){at, at + PS}));
            (*pages)++;
        }
    }
    return ext;
}

/* The description's physmem member is exactly @about and @r; the view is @size bytes,
 * its SEEK_DATA/SEEK_HOLE walk gives the model's extents, its data page count is theirs,
 * and reads around every range edge and every extent edge give the model's bytes. */
#define check_view(s, img, about, r, size)                                                         \
    _check_view((s), (img), (about), (r), G_N_ELEMENTS(r), (size), __FILE__, __LINE__)
static void _check_view(const IbSpec *s, const MrImage *img, const char *about, const Range *r,
                        gsize n, guint64 size, const char *file, int line)
{
    g_autofree char *member = physmem_member(img);
    g_autofree char *want = expected_member(about, r, n);
    _assert_string_equal(member, want, file, line);
    _assert_string_equal(mr_image_physmem_about(img), about, file, line);
    const MrBlock *view = mr_image_physmem(img);
    _assert_true(view != NULL, "mr_image_physmem(img) != NULL", file, line);
    _assert_int_equal(mr_block_size(view), size, file, line);
    _assert_int_equal(mr_block_page_size(view), PS, file, line);

    guint64 pages;
    g_autoptr(GArray) ext = model_extents(s, r, n, &pages);
    _assert_int_equal(mr_block_data_pages(view), pages, file, line);
    guint64 pos = 0;
    for (guint i = 0; i < ext->len; i++) {
        const Extent *e = &g_array_index(ext, Extent, i);
        _assert_extent_equal(view, pos, MR_SEEK_DATA, e->start, file, line);
        if (e->start > pos)
            _assert_extent_equal(view, pos, MR_SEEK_HOLE, pos, file, line);
        _assert_extent_equal(view, e->start, MR_SEEK_HOLE, e->end, file, line);
        _assert_extent_equal(view, e->end - 1, MR_SEEK_DATA, e->end - 1, file, line);
        pos = e->end;
        _assert_view_reads(s, view, r, n, e->start - MIN(e->start, 100), 200, file, line);
        _assert_view_reads(s, view, r, n, e->end - 100, 200, file, line);
    }
    if (pos < size) {
        _assert_seek_no_more(view, pos, MR_SEEK_DATA, file, line);
        _assert_extent_equal(view, pos, MR_SEEK_HOLE, pos, file, line);
    }
    _assert_seek_no_more(view, size, MR_SEEK_HOLE, file, line);
    for (gsize i = 0; i < n; i++) {
        _assert_view_reads(s, view, r, n, r[i].gpa - MIN(r[i].gpa, 3 * PS / 2), 3 * PS, file, line);
        _assert_view_reads(s, view, r, n, r[i].gpa + r[i].size - 3 * PS / 2, 3 * PS, file, line);
    }
    _assert_view_reads(s, view, r, n, size - 10, 100, file, line); /* short at the end */
    _assert_view_reads(s, view, r, n, size, 100, file, line);
}

/* The view is a block node at the root called physmem.raw, after the blocks. */
static void assert_view_in_tree(const MrImage *img)
{
    g_autoptr(MrTree) tree = mr_tree_new(img);
    guint node;
    assert_true(mr_tree_lookup(tree, 0, MR_PHYSMEM_NAME, &node));
    assert_int_equal(mr_tree_kind(tree, node), MR_NODE_BLOCK);
    assert_ptr_equal(mr_tree_block(tree, node), mr_image_physmem(img));
    assert_int_equal(mr_tree_size(tree, node), mr_block_size(mr_image_physmem(img)));
}

/* ---- q35 (pc_q35_init; §7.1) ---- */

/* Below 0xb0000000 nothing moves: one range below the VGA window, one above it. */
static void test_q35_no_split(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 512 * MiB);
    DATA_AT(ram, 0, 0x9f000, 0xa0000, 0xbf000, 0xc0000, 512 * MiB - PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 512 * MiB - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, img, "q35: pc.ram [0, 0x20000000) below 4 GiB", r, 512 * MiB);
    assert_view_in_tree(img);
    ib_spec_clear(&s);
}

/* 0xb0000000 and more: 2 GiB below 4 GiB, the rest from 4 GiB; one page less: no split. */
static void test_q35_threshold(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 0xb0000000);
    DATA_AT(ram, 0x7ffff000, 0x80000000, 0xaffff000);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 0x80000000 - 0xc0000, "pc.ram", 0xc0000},
                       {4 * GiB, 0x30000000, "pc.ram", 0x80000000}};
    check_view(&s, img, "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 4 GiB", r,
               4 * GiB + 0x30000000);
    ib_spec_clear(&s);

    spec_for(&s, "pc-q35-10.0");
    ram = add(&s, "pc.ram", 0xafffe000);
    DATA_AT(ram, 0x7ffff000, 0x80000000, 0xafffd000);
    g_autoptr(MrImage) img2 = open_spec(&s, 0);
    const Range r2[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xafffe000 - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, img2, "q35: pc.ram [0, 0xafffe000) below 4 GiB", r2, 0xafffe000);
    ib_spec_clear(&s);
}

/* 5 GiB with SeaBIOS: the layout dump-guest-memory shows (§7.1), member text in full. */
static void test_q35_5g(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 5 * GiB);
    DATA_AT(ram, 0, 0x7ffff000, 0x80000000, 5 * GiB - PS);
    IbBlock *bios = add(&s, "pc.bios", 256 * KiB);
    DATA_AT(bios, 0, 256 * KiB - PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    g_autofree char *member = physmem_member(img);
    assert_string_equal(
        member, "\"physmem\": {\"about\": \"q35: pc.ram [0, 0x80000000) below 4 GiB, the rest "
                "from 4 GiB\", \"ranges\": ["
                "{\"gpa\": 0, \"size\": 655360, \"block\": \"pc.ram\", \"block_offset\": 0}, "
                "{\"gpa\": 786432, \"size\": 2146697216, \"block\": \"pc.ram\", "
                "\"block_offset\": 786432}, "
                "{\"gpa\": 4294705152, \"size\": 262144, \"block\": \"pc.bios\", "
                "\"block_offset\": 0}, "
                "{\"gpa\": 4294967296, \"size\": 3221225472, \"block\": \"pc.ram\", "
                "\"block_offset\": 2147483648}]}");
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 0x80000000 - 0xc0000, "pc.ram", 0xc0000},
                       {0xfffc0000, 256 * KiB, "pc.bios", 0},
                       {4 * GiB, 3 * GiB, "pc.ram", 0x80000000}};
    check_view(&s, img, "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 4 GiB", r, 7 * GiB);
    /* pc.bios's last page and pc.ram's first page above 4 GiB are one extent */
    const MrBlock *view = mr_image_physmem(img);
    assert_extent_equal(view, 0x80000000, MR_SEEK_DATA, 0xfffc0000);
    assert_extent_equal(view, 0xfffc0000, MR_SEEK_HOLE, 0xfffc1000);
    assert_extent_equal(view, 0xfffc1000, MR_SEEK_DATA, 0xfffff000);
    assert_extent_equal(view, 0xfffff000, MR_SEEK_HOLE, 4 * GiB + PS);
    assert_extent_equal(view, 4 * GiB + PS, MR_SEEK_DATA, 7 * GiB - PS);
    assert_extent_equal(view, 7 * GiB - PS, MR_SEEK_HOLE, 7 * GiB);
    assert_int_equal(mr_block_data_pages(view), 4 + 2);
    ib_spec_clear(&s);
}

/* max-ram-below-4g (not in the stream: MrOpenOptions) caps lowmem; q35 takes the minimum. */
static void test_q35_max_ram_below_4g(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 2 * GiB);
    DATA_AT(ram, GiB - PS, GiB, 2 * GiB - PS);
    g_autoptr(MrImage) img = open_spec(&s, GiB);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, GiB - 0xc0000, "pc.ram", 0xc0000},
                       {4 * GiB, GiB, "pc.ram", GiB}};
    check_view(&s, img, "q35: pc.ram [0, 0x40000000) below 4 GiB, the rest from 4 GiB", r, 5 * GiB);
    /* the same image without the option: below 0xb0000000, no split */
    g_autoptr(MrImage) plain = open_spec(&s, 0);
    const Range flat[] = {{0, 0xa0000, "pc.ram", 0},
                          {0xc0000, 2 * GiB - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, plain, "q35: pc.ram [0, 0x80000000) below 4 GiB", flat, 2 * GiB);
    /* larger than the machine's own limit: no effect (min) */
    g_autoptr(MrImage) big = open_spec(&s, 0xf0000000);
    check_view(&s, big, "q35: pc.ram [0, 0x80000000) below 4 GiB", flat, 2 * GiB);
    ib_spec_clear(&s);

    /* RAM below the cap: no split either */
    spec_for(&s, "pc-q35-10.0");
    ram = add(&s, "pc.ram", 512 * MiB);
    DATA_AT(ram, 512 * MiB - PS);
    g_autoptr(MrImage) small = open_spec(&s, GiB);
    const Range r2[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 512 * MiB - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, small, "q35: pc.ram [0, 0x20000000) below 4 GiB", r2, 512 * MiB);
    ib_spec_clear(&s);
}

/* ---- pc / i440fx (pc_init1; §7.1) ---- */

static void test_pc_sizes(void **state)
{
    (void)state;
    IbSpec s;
    /* 512 MiB: no split */
    spec_for(&s, "pc-i440fx-10.0");
    IbBlock *ram = add(&s, "pc.ram", 512 * MiB);
    DATA_AT(ram, 0x9f000, 0xc0000, 512 * MiB - PS);
    g_autoptr(MrImage) a = open_spec(&s, 0);
    const Range ra[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 512 * MiB - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, a, "pc (i440fx): pc.ram [0, 0x20000000) below 4 GiB", ra, 512 * MiB);
    ib_spec_clear(&s);

    /* exactly 0xe0000000: RAM >= lowmem, gigabyte_align: split at 3 GiB */
    spec_for(&s, "pc-i440fx-10.0");
    ram = add(&s, "pc.ram", 0xe0000000);
    DATA_AT(ram, 0xbffff000, 0xc0000000, 0xdffff000);
    g_autoptr(MrImage) b = open_spec(&s, 0);
    const Range rb[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xc0000000 - 0xc0000, "pc.ram", 0xc0000},
                        {4 * GiB, 0x20000000, "pc.ram", 0xc0000000}};
    check_view(&s, b, "pc (i440fx): pc.ram [0, 0xc0000000) below 4 GiB, the rest from 4 GiB", rb,
               4 * GiB + 0x20000000);
    ib_spec_clear(&s);

    /* 3.25 GiB (0xd0000000 < 0xe0000000): no split, RAM runs up to 0xd0000000 */
    spec_for(&s, "pc-i440fx-10.0");
    ram = add(&s, "pc.ram", 0xd0000000);
    DATA_AT(ram, 0xbffff000, 0xc0000000, 0xcffff000);
    g_autoptr(MrImage) c = open_spec(&s, 0);
    const Range rc[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xd0000000 - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, c, "pc (i440fx): pc.ram [0, 0xd0000000) below 4 GiB", rc, 0xd0000000);
    ib_spec_clear(&s);

    /* 4 GiB: 3 GiB + 1 GiB (§7.1 example) */
    spec_for(&s, "pc-i440fx-10.0");
    ram = add(&s, "pc.ram", 4 * GiB);
    DATA_AT(ram, 0, 0xbffff000, 0xc0000000, 4 * GiB - PS);
    g_autoptr(MrImage) d = open_spec(&s, 0);
    const Range rd[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xc0000000 - 0xc0000, "pc.ram", 0xc0000},
                        {4 * GiB, GiB, "pc.ram", 0xc0000000}};
    check_view(&s, d, "pc (i440fx): pc.ram [0, 0xc0000000) below 4 GiB, the rest from 4 GiB", rd,
               5 * GiB);
    ib_spec_clear(&s);
}

/* pc_init1: lowmem = max-ram-below-4g; if RAM >= it, gigabyte_align caps it at 3 GiB. */
static void test_pc_max_ram_below_4g(void **state)
{
    (void)state;
    IbSpec s;
    /* 0xc8000000, RAM 0xd0000000 >= it: min(0xc8000000, 0xc0000000) = 3 GiB */
    spec_for(&s, "pc-i440fx-10.0");
    IbBlock *ram = add(&s, "pc.ram", 0xd0000000);
    DATA_AT(ram, 0xbffff000, 0xc0000000, 0xcffff000);
    g_autoptr(MrImage) a = open_spec(&s, 0xc8000000);
    const Range ra[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xc0000000 - 0xc0000, "pc.ram", 0xc0000},
                        {4 * GiB, 0x10000000, "pc.ram", 0xc0000000}};
    check_view(&s, a, "pc (i440fx): pc.ram [0, 0xc0000000) below 4 GiB, the rest from 4 GiB", ra,
               4 * GiB + 0x10000000);
    ib_spec_clear(&s);

    /* 0xc8000000, RAM 0xc4000000 < it: no split, all of it below */
    spec_for(&s, "pc-i440fx-10.0");
    ram = add(&s, "pc.ram", 0xc4000000);
    DATA_AT(ram, 0xc3fff000);
    g_autoptr(MrImage) b = open_spec(&s, 0xc8000000);
    const Range rb[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0xc4000000 - 0xc0000, "pc.ram", 0xc0000}};
    check_view(&s, b, "pc (i440fx): pc.ram [0, 0xc4000000) below 4 GiB", rb, 0xc4000000);
    ib_spec_clear(&s);

    /* below 3 GiB the value is kept as given: 0x90000000 with 4 GiB of RAM */
    spec_for(&s, "pc-i440fx-10.0");
    ram = add(&s, "pc.ram", 4 * GiB);
    DATA_AT(ram, 0x8ffff000, 0x90000000);
    g_autoptr(MrImage) c = open_spec(&s, 0x90000000);
    const Range rc[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0x90000000 - 0xc0000, "pc.ram", 0xc0000},
                        {4 * GiB, 0x70000000, "pc.ram", 0x90000000}};
    check_view(&s, c, "pc (i440fx): pc.ram [0, 0x90000000) below 4 GiB, the rest from 4 GiB", rc,
               4 * GiB + 0x70000000);
    ib_spec_clear(&s);
}

/* ---- firmware, VGA window, extents across 4 GiB ---- */

/* pc.bios at 4 GiB - 256 KiB; pc.ram data in [0xa0000, 0xc0000) is not shown (VGA window);
 * SEEK across 4 GiB merges pc.bios's last page with pc.ram's first page above; st_blocks
 * counts mapped data pages only. */
static void test_pc_bios_vga_and_extents(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-i440fx-10.0");
    IbBlock *ram = add(&s, "pc.ram", 4 * GiB);
    /* 0x9f000 and 0xc0000 frame the window; 0xa0000..0xbf000 is data the view hides */
    DATA_AT(ram, 0x9f000, 0xa0000, 0xb0000, 0xbf000, 0xc0000, 0xc0000000);
    IbBlock *bios = add(&s, "pc.bios", 256 * KiB);
    DATA_AT(bios, 0, 256 * KiB - PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 0xc0000000 - 0xc0000, "pc.ram", 0xc0000},
                       {0xfffc0000, 256 * KiB, "pc.bios", 0},
                       {4 * GiB, GiB, "pc.ram", 0xc0000000}};
    check_view(&s, img, "pc (i440fx): pc.ram [0, 0xc0000000) below 4 GiB, the rest from 4 GiB", r,
               5 * GiB);
    const MrBlock *view = mr_image_physmem(img);
    /* the VGA window is a hole although pc.ram has data pages there */
    assert_extent_equal(view, 0, MR_SEEK_DATA, 0x9f000);
    assert_extent_equal(view, 0x9f000, MR_SEEK_HOLE, 0xa0000);
    assert_extent_equal(view, 0xa0000, MR_SEEK_DATA, 0xc0000);
    assert_extent_equal(view, 0xb0000, MR_SEEK_HOLE, 0xb0000);
    assert_extent_equal(view, 0xc0000, MR_SEEK_HOLE, 0xc1000);
    guint8 buf[PS];
    GError *error = NULL;
    for (guint64 gpa = 0xa0000; gpa < 0xc0000; gpa += PS) {
        memset(buf, 0x55, sizeof buf);
        assert_int_equal(mr_block_pread(view, buf, PS, gpa, &error), PS);
        assert_no_error(error);
        for (guint i = 0; i < PS; i++)
            assert_int_equal(buf[i], 0);
    }
    /* the BIOS reads at 0xfffc0000 (its first page) and 0xfffff000 (its last) */
    assert_int_equal(mr_block_pread(view, buf, PS, 0xfffc0000, &error), PS);
    assert_no_error(error);
    assert_int_equal(buf[17], ib_expected_byte(&s, 1, 17));
    assert_int_not_equal(buf[17], 0);
    /* from the BIOS's last page through pc.ram's first page above 4 GiB: one extent */
    assert_extent_equal(view, 0xc0000000, MR_SEEK_DATA, 0xfffc0000);
    assert_extent_equal(view, 0xfffc1000, MR_SEEK_DATA, 0xfffff000);
    assert_extent_equal(view, 0xfffff000, MR_SEEK_HOLE, 4 * GiB + PS);
    assert_extent_equal(view, 0xfffffff0, MR_SEEK_HOLE, 4 * GiB + PS);
    assert_extent_equal(view, 4 * GiB, MR_SEEK_DATA, 4 * GiB);
    assert_seek_no_more(view, 4 * GiB + PS, MR_SEEK_DATA);
    /* one read across the boundary takes both blocks */
    assert_view_reads(&s, view, r, G_N_ELEMENTS(r), 0xfffff800, PS);
    /* st_blocks: 0x9f000, 0xc0000 and 0xc0000000 of pc.ram (the three in the window are
     * hidden), both pages of pc.bios */
    assert_int_equal(mr_block_data_pages(view), 5);
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 0)), 6);
    assert_view_in_tree(img);
    ib_spec_clear(&s);
}

/* Unaligned reads that cross from a mapped range into a gap and back give exact bytes. */
static void test_unaligned_reads(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 3 * GiB);
    DATA_AT(ram, 0x9f000, 0xa0000, 0xbf000, 0xc0000, 0x7ffff000, 0x80000000);
    IbBlock *bios = add(&s, "pc.bios", 128 * KiB);
    DATA_AT(bios, 0, 128 * KiB - PS);
    ib_block_set_stale(ram, 0xa0, 1); /* a stale slot where the window hides data anyway */
    ib_block_set_stale(ram, 0x80001, 1);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 0x80000000 - 0xc0000, "pc.ram", 0xc0000},
                       {0xfffe0000, 128 * KiB, "pc.bios", 0},
                       {4 * GiB, GiB, "pc.ram", 0x80000000}};
    check_view(&s, img, "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 4 GiB", r, 5 * GiB);
    const MrBlock *view = mr_image_physmem(img);
    const gsize n = G_N_ELEMENTS(r);
    /* into the VGA window, through it, out of it */
    assert_view_reads(&s, view, r, n, 0x9fff3, 0x21);
    assert_view_reads(&s, view, r, n, 0x9f001, 0x21001);
    assert_view_reads(&s, view, r, n, 0xbffff, 0x1003);
    /* lowmem end into the PCI hole, and the hole into the BIOS */
    assert_view_reads(&s, view, r, n, 0x7ffffffd, 7);
    assert_view_reads(&s, view, r, n, 0x7fffe123, 0x3456);
    assert_view_reads(&s, view, r, n, 0xfffdfff9, 0x11);
    /* the BIOS through 4 GiB into pc.ram above, a run of two data pages from two blocks */
    assert_view_reads(&s, view, r, n, 0xfffff001, 0x1ffd);
    assert_view_reads(&s, view, r, n, 0xffffffff, 2);
    /* the stale slot after the first page above 4 GiB reads as zeros */
    assert_view_reads(&s, view, r, n, 4 * GiB + 0xfff, 0x1002);
    /* the end of the view */
    assert_view_reads(&s, view, r, n, 5 * GiB - 3, 10);
    ib_spec_clear(&s);
}

/* ---- arm virt and riscv virt (§7.2) ---- */

static void test_arm_virt(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "virt-10.0");
    IbBlock *ram = add(&s, "mach-virt.ram", GiB); /* first in the stream: the view sorts */
    DATA_AT(ram, 0, 0x123000, GiB - PS);
    IbBlock *f0 = add(&s, "virt.flash0", 64 * MiB);
    DATA_AT(f0, 0, 64 * MiB - PS);
    IbBlock *f1 = add(&s, "virt.flash1", 64 * MiB);
    DATA_AT(f1, PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 64 * MiB, "virt.flash0", 0},
                       {0x4000000, 64 * MiB, "virt.flash1", 0},
                       {0x40000000, GiB, "mach-virt.ram", 0}};
    check_view(&s, img, "arm virt: mach-virt.ram at 0x40000000", r, 2 * GiB);
    /* flash0's last page and flash1 are back to back */
    const MrBlock *view = mr_image_physmem(img);
    assert_extent_equal(view, PS, MR_SEEK_DATA, 0x4000000 - PS);
    assert_extent_equal(view, 0x4000000 - PS, MR_SEEK_HOLE, 0x4000000);
    assert_extent_equal(view, 0x4000000, MR_SEEK_DATA, 0x4001000);
    assert_extent_equal(view, 0x4002000, MR_SEEK_DATA, 0x40000000);
    assert_view_reads(&s, view, r, G_N_ELEMENTS(r), 0x40123000, PS);
    assert_int_equal(mr_block_data_pages(view), 6);
    assert_view_in_tree(img);
    ib_spec_clear(&s);

    /* RAM alone (no flash blocks: -bios, or a mapped-ram save without pflash) */
    spec_for(&s, "virt-9.2");
    ram = add(&s, "mach-virt.ram", 256 * MiB);
    DATA_AT(ram, 0);
    g_autoptr(MrImage) bare = open_spec(&s, 0);
    const Range rb[] = {{0x40000000, 256 * MiB, "mach-virt.ram", 0}};
    check_view(&s, bare, "arm virt: mach-virt.ram at 0x40000000", rb, 0x50000000);
    ib_spec_clear(&s);
}

static void test_riscv_virt(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "virt");
    IbBlock *ram = add(&s, "riscv_virt_board.ram", 256 * MiB);
    DATA_AT(ram, 0, 0x200000, 256 * MiB - PS);
    IbBlock *f0 = add(&s, "virt.flash0", 32 * MiB);
    DATA_AT(f0, 0);
    IbBlock *f1 = add(&s, "virt.flash1", 32 * MiB);
    DATA_AT(f1, 32 * MiB - PS);
    IbBlock *mrom = add(&s, "riscv_virt_board.mrom", 0xf000);
    DATA_AT(mrom, 0, 0xe000);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0x1000, 0xf000, "riscv_virt_board.mrom", 0},
                       {0x20000000, 32 * MiB, "virt.flash0", 0},
                       {0x22000000, 32 * MiB, "virt.flash1", 0},
                       {0x80000000, 256 * MiB, "riscv_virt_board.ram", 0}};
    check_view(&s, img, "riscv virt: riscv_virt_board.ram at 0x80000000", r, 0x90000000);
    const MrBlock *view = mr_image_physmem(img);
    assert_extent_equal(view, 0, MR_SEEK_DATA, 0x1000);
    assert_extent_equal(view, 0x1000, MR_SEEK_HOLE, 0x2000);
    assert_extent_equal(view, 0x2000, MR_SEEK_DATA, 0xf000);
    assert_extent_equal(view, 0x10000, MR_SEEK_DATA, 0x20000000);
    assert_extent_equal(view, 0x20001000, MR_SEEK_DATA, 0x24000000 - PS);
    assert_extent_equal(view, 0x24000000, MR_SEEK_DATA, 0x80000000);
    assert_view_reads(&s, view, r, G_N_ELEMENTS(r), 0x80200000 - 5, PS + 10);
    assert_int_equal(mr_block_data_pages(view), 7);
    ib_spec_clear(&s);
}

/* ---- no rule: no view ---- */

#define assert_no_view(img, machine) _assert_no_view((img), (machine), __FILE__, __LINE__)
static void _assert_no_view(const MrImage *img, const char *machine, const char *file, int line)
{
    _assert_true(mr_image_physmem(img) == NULL, "mr_image_physmem(img) == NULL", file, line);
    g_autofree char *about = g_strdup_printf("no guest-physical view: machine type \"%s\" with "
                                             "these RAMBlocks has no known memory map",
                                             machine);
    _assert_string_equal(mr_image_physmem_about(img), about, file, line);
    g_autofree char *member = physmem_member(img);
    g_autofree char *want = g_strdup_printf("\"physmem\": {\"about\": \"no guest-physical view: "
                                            "machine type \\\"%s\\\" with these RAMBlocks has no "
                                            "known memory map\", \"ranges\": []}",
                                            machine);
    _assert_string_equal(member, want, file, line);
    g_autoptr(MrTree) tree = mr_tree_new(img);
    guint node;
    _assert_true(!mr_tree_lookup(tree, 0, MR_PHYSMEM_NAME, &node), "no physmem.raw", file, line);
}

static void test_no_rule(void **state)
{
    (void)state;
    IbSpec s;
    /* a machine type without a rule */
    spec_for(&s, "s390-ccw-virtio");
    ib_block_set_data(add(&s, "s390.ram", 64 * MiB), 0, 1);
    g_autoptr(MrImage) a = open_spec(&s, 0);
    assert_no_view(a, "s390-ccw-virtio");
    ib_spec_clear(&s);

    /* virt with neither main block (loongarch virt, or a NUMA memdev per node) */
    spec_for(&s, "virt");
    add(&s, "loongarch.ram", 64 * MiB);
    add(&s, "virt.flash0", 32 * MiB);
    g_autoptr(MrImage) b = open_spec(&s, 0);
    assert_no_view(b, "virt");
    ib_spec_clear(&s);

    /* x86 without pc.ram: NUMA memdevs ram-node0, ram-node1 (§7) */
    spec_for(&s, "pc-q35-10.0");
    add(&s, "ram-node0", 64 * MiB);
    add(&s, "ram-node1", 64 * MiB);
    add(&s, "pc.bios", 256 * KiB);
    g_autoptr(MrImage) c = open_spec(&s, 0);
    assert_no_view(c, "pc-q35-10.0");
    ib_spec_clear(&s);

    /* isapc and microvm have their own maps: no rule */
    spec_for(&s, "isapc");
    add(&s, "pc.ram", 64 * MiB);
    g_autoptr(MrImage) d = open_spec(&s, 0);
    assert_no_view(d, "isapc");
    ib_spec_clear(&s);
    spec_for(&s, "microvm");
    add(&s, "microvm.ram", 64 * MiB);
    g_autoptr(MrImage) e = open_spec(&s, 0);
    assert_no_view(e, "microvm");
    ib_spec_clear(&s);

    /* a machine type string from the image is escaped in the sentence */
    spec_for(&s, "ppc\"64");
    add(&s, "ppc_spapr.ram", 64 * MiB);
    g_autoptr(MrImage) f = open_spec(&s, 0);
    assert_null(mr_image_physmem(f));
    assert_string_equal(mr_image_physmem_about(f),
                        "no guest-physical view: machine type \"ppc\"64\" with these RAMBlocks "
                        "has no known memory map");
    g_autofree char *member = physmem_member(f);
    assert_string_equal(member, "\"physmem\": {\"about\": \"no guest-physical view: machine type "
                                "\\\"ppc\\\"64\\\" with these RAMBlocks has no known memory "
                                "map\", \"ranges\": []}");
    ib_spec_clear(&s);
}

/* Blocks whose page sizes differ (QEMU gives every block the target page size; a hostile
 * mapped-ram table need not): no view, rather than a view page standing for pages of another
 * size. Found by tests/fuzz/fuzz-physmem: building the view's bitmap never finished. */
static void test_mixed_page_sizes(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    s.align = 64 * KiB; /* page data aligned for both page sizes */
    ib_block_set_data(add(&s, "pc.ram", 64 * PS), 0, 2);
    ib_block_set_data(ib_add_block(&s, "pc.bios", 256 * KiB, 64 * KiB), 0, 4);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    assert_null(mr_image_physmem(img));
    assert_null(mr_image_elfcore(img));
    assert_string_equal(mr_image_physmem_about(img),
                        "no guest-physical view: RAMBlock \"pc.bios\" has 65536-byte pages, the "
                        "first RAMBlock 4096-byte pages");
    /* the blocks themselves are served as usual */
    assert_int_equal(mr_block_data_pages(mr_image_block(img, 1)), 4);
    ib_spec_clear(&s);
}

/* ---- names ---- */

/* A block called physmem.raw yields the name to the view; without a view it keeps it. */
static void test_name_collision(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-i440fx-10.0");
    add(&s, "physmem.raw", 2 * PS);
    add(&s, "pc.ram", 4 * PS);
    add(&s, "physmem.raw/x", PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    assert_non_null(mr_image_physmem(img));
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    assert_int_equal(paths->len, 3);
    assert_string_equal(g_ptr_array_index(paths, 0), "physmem.raw~2");
    assert_string_equal(g_ptr_array_index(paths, 1), "pc.ram");
    assert_string_equal(g_ptr_array_index(paths, 2), "physmem.raw~3/x");
    g_autoptr(MrTree) tree = mr_tree_new(img);
    guint node, dir;
    assert_true(mr_tree_lookup(tree, 0, "physmem.raw", &node));
    assert_ptr_equal(mr_tree_block(tree, node), mr_image_physmem(img));
    assert_true(mr_tree_lookup(tree, 0, "physmem.raw~2", &node));
    assert_ptr_equal(mr_tree_block(tree, node), mr_image_block(img, 0));
    assert_true(mr_tree_lookup(tree, 0, "physmem.raw~3", &dir));
    assert_int_equal(mr_tree_kind(tree, dir), MR_NODE_DIR);
    assert_true(mr_tree_lookup(tree, dir, "x", &node));
    assert_ptr_equal(mr_tree_block(tree, node), mr_image_block(img, 2));
    g_autofree char *json = mr_image_describe_json(img);
    assert_non_null(strstr(json, "{\"idstr\": \"physmem.raw\", \"path\": \"physmem.raw~2\", "));
    ib_spec_clear(&s);

    spec_for(&s, "s390-ccw-virtio");
    add(&s, "physmem.raw", 2 * PS);
    g_autoptr(MrImage) other = open_spec(&s, 0);
    assert_null(mr_image_physmem(other));
    g_autoptr(GPtrArray) p2 = mr_block_paths(other);
    assert_string_equal(g_ptr_array_index(p2, 0), "physmem.raw");
    g_autoptr(MrTree) t2 = mr_tree_new(other);
    assert_true(mr_tree_lookup(t2, 0, "physmem.raw", &node));
    assert_ptr_equal(mr_tree_block(t2, node), mr_image_block(other, 0));
    ib_spec_clear(&s);
}

/* ---- legacy streams get the view too ---- */

static void test_legacy(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init_legacy(&s);
    s.machine_type = "pc-q35-9.2";
    ib_add_block(&s, "pc.ram", 2 * MiB, PS);
    ib_add_block(&s, "pc.bios", 256 * KiB, PS);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0x9f, 1);
    ib_rec_page(&s, NULL, 0xa0, 2); /* in the VGA window */
    ib_rec_page(&s, NULL, 0xc0, 3);
    ib_rec_page(&s, NULL, 0xc1, 4);
    ib_rec_zero(&s, NULL, 0xc1); /* data, then zero: a hole */
    ib_rec_page(&s, NULL, 0x1ff, 5);
    ib_rec_page(&s, "pc.bios", 63, 6);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_eos(&s);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    assert_string_equal(mr_image_format(img), "legacy");
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, 2 * MiB - 0xc0000, "pc.ram", 0xc0000},
                       {0xfffc0000, 256 * KiB, "pc.bios", 0}};
    check_view(&s, img, "q35: pc.ram [0, 0x200000) below 4 GiB", r, 4 * GiB);
    const MrBlock *view = mr_image_physmem(img);
    assert_int_equal(mr_block_data_pages(view), 4);
    assert_extent_equal(view, 0xc1000, MR_SEEK_DATA, 0x1ff000);
    assert_extent_equal(view, 0x200000, MR_SEEK_DATA, 0xfffff000);
    assert_view_reads(&s, view, r, G_N_ELEMENTS(r), 0x9f800, 0x22000);
    assert_view_in_tree(img);
    ib_spec_clear(&s);
}

/* ---- what the existing files see ---- */

/* The description's physmem member sits between "libvirt" and "blocks"; the tree puts
 * physmem.raw after the blocks and before .mramfs.json. */
static void test_place_in_description_and_tree(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-i440fx-10.0");
    add(&s, "pc.ram", 4 * PS);
    add(&s, "/rom@etc/acpi/tables", PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    g_autofree char *json = mr_image_describe_json(img);
    assert_non_null(strstr(json, "\n  \"libvirt\": null,\n  \"physmem\": {\"about\": \"pc "
                                 "(i440fx): pc.ram [0, 0x4000) below 4 GiB\", \"ranges\": "
                                 "[{\"gpa\": 0, \"size\": 16384, \"block\": \"pc.ram\", "
                                 "\"block_offset\": 0}]},\n  \"device_state\": "));
    g_autoptr(MrTree) tree = mr_tree_new(img);
    /* 0 root, 1 pc.ram, 2 rom@etc, 3 acpi, 4 tables, 5 physmem.raw, 6 physmem.elf,
     * 7 vmdesc.json, 8 .mramfs.json */
    assert_int_equal(mr_tree_n_nodes(tree), 9);
    assert_string_equal(mr_tree_name(tree, 5), MR_PHYSMEM_NAME);
    assert_string_equal(mr_tree_name(tree, 6), MR_ELFCORE_NAME);
    assert_string_equal(mr_tree_name(tree, 7), MR_VMDESC_NAME);
    assert_string_equal(mr_tree_name(tree, 8), MR_DESCRIPTION_NAME);
    assert_int_equal(mr_tree_size(tree, 5), 4 * PS);
    ib_spec_clear(&s);
}

/* libvirt has no element for max-ram-below-4g: a guest that needs it passes it on the QEMU
 * command line, which the domain XML in the header keeps; a mount option still wins. */
static void test_libvirt_xml_max_ram_below_4g(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    s.libvirt = TRUE;
    s.lv_xml = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
               "<qemu:commandline><qemu:arg value='-machine'/>"
               "<qemu:arg value='pc-q35-10.0,max-ram-below-4g=1G'/></qemu:commandline></domain>";
    IbBlock *ram = add(&s, "pc.ram", 2 * GiB);
    DATA_AT(ram, GiB - PS, GiB, 2 * GiB - PS);
    g_autoptr(MrImage) img = open_spec(&s, 0);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, GiB - 0xc0000, "pc.ram", 0xc0000},
                       {4 * GiB, GiB, "pc.ram", GiB}};
    check_view(&s, img,
               "q35: pc.ram [0, 0x40000000) below 4 GiB, the rest from 4 GiB; "
               "max-ram-below-4g 0x40000000 from the libvirt XML",
               r, 5 * GiB);
    g_autoptr(MrImage) opt = open_spec(&s, 0x60000000);
    const Range r2[] = {{0, 0xa0000, "pc.ram", 0},
                        {0xc0000, 0x60000000 - 0xc0000, "pc.ram", 0xc0000},
                        {4 * GiB, 2 * GiB - 0x60000000, "pc.ram", 0x60000000}};
    check_view(&s, opt, "q35: pc.ram [0, 0x60000000) below 4 GiB, the rest from 4 GiB", r2,
               4 * GiB + 2 * GiB - 0x60000000);
    ib_spec_clear(&s);
    /* a value that is no QEMU size is ignored, not guessed at */
    spec_for(&s, "pc-q35-10.0");
    s.libvirt = TRUE;
    s.lv_xml = "<domain><qemu:arg value='max-ram-below-4g=lots'/></domain>";
    add(&s, "pc.ram", 2 * GiB);
    g_autoptr(MrImage) bad = open_spec(&s, 0);
    assert_string_equal(mr_image_physmem_about(bad),
                        "q35: pc.ram [0, 0x80000000) below 4 GiB; a max-ram-below-4g in the "
                        "libvirt XML that is not a multiple of 4 KiB up to 4 GiB was ignored");
    ib_spec_clear(&s);
    /* nor are a fraction, a value that is no page multiple, or one above 4 GiB */
    const char *const xmls[] = {"<domain><qemu:arg value='max-ram-below-4g=1.5G'/></domain>",
                                "<domain><qemu:arg value='max-ram-below-4g=1000'/></domain>",
                                "<domain><qemu:arg value='max-ram-below-4g=5G'/></domain>"};
    for (guint i = 0; i < G_N_ELEMENTS(xmls); i++) {
        spec_for(&s, "pc-q35-10.0");
        s.libvirt = TRUE;
        s.lv_xml = xmls[i];
        add(&s, "pc.ram", 2 * GiB);
        g_autoptr(MrImage) odd = open_spec(&s, 0);
        assert_non_null(mr_image_physmem(odd));
        assert_non_null(strstr(mr_image_physmem_about(odd), "was ignored"));
        ib_spec_clear(&s);
    }
}

/* enforce_amd_1tb_hole (machine types >= 7.1): on an AMD CPU, RAM above 4 GiB starts at
 * 1 TiB once the 32 GiB 64-bit PCI hole after it would reach 0xfd00000000. 980 GiB of RAM:
 * 978 GiB above 4 GiB end at 982 GiB, the hole at 1014 GiB > 1012 GiB; 975 GiB stays. */
static void test_amd_1tb_hole(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 980 * GiB);
    DATA_AT(ram, 2 * GiB - PS, 2 * GiB, 980 * GiB - PS);
    MrOpenOptions amd = no_index;
    amd.cpu_vendor_set = amd.cpu_vendor_amd = TRUE;
    g_autoptr(MrImage) img = open_spec_opts(&s, amd);
    const Range moved[] = {{0, 0xa0000, "pc.ram", 0},
                           {0xc0000, 2 * GiB - 0xc0000, "pc.ram", 0xc0000},
                           {1024 * GiB, 978 * GiB, "pc.ram", 2 * GiB}};
    check_view(&s, img, "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 1 TiB (AMD CPU)",
               moved, 2002 * GiB);
    MrOpenOptions intel = no_index;
    intel.cpu_vendor_set = TRUE;
    g_autoptr(MrImage) plain = open_spec_opts(&s, intel);
    const Range stays[] = {{0, 0xa0000, "pc.ram", 0},
                           {0xc0000, 2 * GiB - 0xc0000, "pc.ram", 0xc0000},
                           {4 * GiB, 978 * GiB, "pc.ram", 2 * GiB}};
    check_view(&s, plain, "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 4 GiB", stays,
               982 * GiB);
    ib_spec_clear(&s);
    /* the vendor from the libvirt XML */
    spec_for(&s, "pc-q35-10.0");
    s.libvirt = TRUE;
    s.lv_xml = "<domain><cpu><vendor>AMD</vendor></cpu></domain>";
    add(&s, "pc.ram", 980 * GiB);
    g_autoptr(MrImage) xml = open_spec(&s, 0);
    assert_string_equal(mr_image_physmem_about(xml),
                        "q35: pc.ram [0, 0x80000000) below 4 GiB, the rest from 1 TiB (AMD CPU); "
                        "AMD CPU from the libvirt XML");
    ib_spec_clear(&s);
    /* below the threshold, machine types before 7.1, and i440fx, whose 64-bit PCI hole is
     * 2 GiB (it moves only above 1006 GiB above 4 GiB), keep 4 GiB */
    const char *machines[] = {"pc-q35-10.0", "pc-q35-7.0", "pc-i440fx-10.0"};
    const guint64 sizes[] = {975 * GiB, 980 * GiB, 1008 * GiB};
    for (guint i = 0; i < G_N_ELEMENTS(machines); i++) {
        spec_for(&s, machines[i]);
        add(&s, "pc.ram", sizes[i]);
        g_autoptr(MrImage) low = open_spec_opts(&s, amd);
        assert_non_null(strstr(mr_image_physmem_about(low), ", the rest from 4 GiB"));
        ib_spec_clear(&s);
    }
}

/* ---- regressions: bugs found in review, kept fixed ---- */

/* These clean up before they fail, so that a sanitizer build reports the failure and not
 * the leak a cmocka failure (a longjmp) would leave behind. */

/* An image without blocks still names its machine type in physmem.about. */
static void test_about_without_blocks(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    MrImage *img = open_spec(&s, 0);
    ib_spec_clear(&s);
    gboolean view = mr_image_physmem(img) != NULL;
    const char *about = mr_image_physmem_about(img);
    char shown[256];
    g_strlcpy(shown, about ? about : "(null)", sizeof shown);
    gboolean named = about != NULL && strstr(about, "pc-q35-10.0") != NULL;
    mr_image_free(img);
    assert_false(view);
    if (!named)
        fail_msg("physmem.about of an image without blocks is \"%s\"", shown);
}

/* The first byte of the view in [@gpa, @gpa + @len) that is not the model's: FALSE if none. */
static gboolean view_mismatch(const IbSpec *s, const MrBlock *view, const Range *r, gsize n,
                              guint64 gpa, gsize len, GString *why)
{
    g_autofree guint8 *buf = g_malloc(len);
    GError *error = NULL;
    gssize got = mr_block_pread(view, buf, len, gpa, &error);
    if (got != (gssize)len) {
        g_string_printf(why, "read at 0x%" G_GINT64_MODIFIER "x: %s", gpa,
                        error ? error->message : "short");
        g_clear_error(&error);
        return TRUE;
    }
    for (gsize i = 0; i < len; i++) {
        guint8 want = model_byte(s, r, n, gpa + i);
        if (buf[i] != want) {
            g_string_printf(why, "byte at GPA 0x%" G_GINT64_MODIFIER "x is 0x%02x, expected 0x%02x",
                            gpa + i, buf[i], want);
            return TRUE;
        }
    }
    return FALSE;
}

/* max_ram_below_4g that is not a multiple of the page size: whatever the view shows at a
 * GPA must be the byte the rule maps there (or there must be no view). Now the page that
 * straddles lowmem reads as zeros (the bitmap build rounds the range down), and GPA 4 GiB
 * shows block offset 1 GiB + 2 KiB but takes its data bit from page 1 GiB / 4 KiB, so the
 * half from the next, clear page is its stale slot (0xaa) instead of zeros. */
static void test_unaligned_max_ram_below_4g(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-q35-10.0");
    IbBlock *ram = add(&s, "pc.ram", 2 * GiB);
    DATA_AT(ram, GiB - PS, GiB);
    ib_block_set_stale(ram, GiB / PS + 1, 1);
    MrImage *img = open_spec(&s, GiB + 0x800);
    const MrBlock *view = mr_image_physmem(img);
    const Range r[] = {{0, 0xa0000, "pc.ram", 0},
                       {0xc0000, GiB + 0x800 - 0xc0000, "pc.ram", 0xc0000},
                       {4 * GiB, GiB - 0x800, "pc.ram", GiB + 0x800}};
    GString *low = g_string_new(NULL), *high = g_string_new(NULL);
    gboolean bad_low = view && view_mismatch(&s, view, r, G_N_ELEMENTS(r), GiB - PS, 2 * PS, low);
    gboolean bad_high = view && view_mismatch(&s, view, r, G_N_ELEMENTS(r), 4 * GiB, 2 * PS, high);
    char why[512];
    g_snprintf(why, sizeof why, "below 4 GiB: %s; from 4 GiB: %s", bad_low ? low->str : "ok",
               bad_high ? high->str : "ok");
    g_string_free(low, TRUE);
    g_string_free(high, TRUE);
    mr_image_free(img);
    ib_spec_clear(&s);
    if (bad_low || bad_high)
        fail_msg("max_ram_below_4g=0x40000800: %s", why);
}

/* max-ram-below-4g above 4 GiB (QEMU refuses it: pc_machine_set_max_ram_below_4g): the
 * view must not lay pc.ram across the PCI hole and the 4 GiB line as if it were RAM. */
static void test_max_ram_below_4g_over_4g(void **state)
{
    (void)state;
    IbSpec s;
    spec_for(&s, "pc-i440fx-10.0");
    add(&s, "pc.ram", 6 * GiB);
    MrImage *img = open_spec(&s, 8 * GiB);
    ib_spec_clear(&s);
    char *member = physmem_member(img);
    gboolean flat = mr_image_physmem(img) != NULL &&
                    strstr(member, "\"gpa\": 786432, \"size\": 6441664512,") != NULL;
    char shown[1024];
    g_strlcpy(shown, member, sizeof shown);
    g_free(member);
    mr_image_free(img);
    if (flat)
        fail_msg("pc.ram mapped flat from 0xc0000 to 6 GiB:\n%s", shown);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_q35_no_split),
        cmocka_unit_test(test_q35_threshold),
        cmocka_unit_test(test_q35_5g),
        cmocka_unit_test(test_q35_max_ram_below_4g),
        cmocka_unit_test(test_pc_sizes),
        cmocka_unit_test(test_pc_max_ram_below_4g),
        cmocka_unit_test(test_pc_bios_vga_and_extents),
        cmocka_unit_test(test_unaligned_reads),
        cmocka_unit_test(test_arm_virt),
        cmocka_unit_test(test_riscv_virt),
        cmocka_unit_test(test_no_rule),
        cmocka_unit_test(test_mixed_page_sizes),
        cmocka_unit_test(test_name_collision),
        cmocka_unit_test(test_legacy),
        cmocka_unit_test(test_place_in_description_and_tree),
        cmocka_unit_test(test_libvirt_xml_max_ram_below_4g),
        cmocka_unit_test(test_amd_1tb_hole),
        cmocka_unit_test(test_about_without_blocks),
        cmocka_unit_test(test_unaligned_max_ram_below_4g),
        cmocka_unit_test(test_max_ram_below_4g_over_4g),
    };
    return cmocka_run_group_tests_name("physmem", tests, NULL, NULL);
}
