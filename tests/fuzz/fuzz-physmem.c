/* fuzz-physmem: the guest-physical view builder (mr-physmem.c) and the ELF core view over
 * it (mr-elfcore.c), driven directly: the input chooses the machine type, the RAMBlocks
 * (names, sizes up to 1 TiB and beyond, page sizes, which pages hold data), the
 * max-ram-below-4g and CPU-vendor options, a libvirt XML that may override them, and vCPU
 * registers for the ELF notes. Files of such geometry cannot be made small, so the image
 * is assembled in memory as the format readers would leave it; block data reads return a
 * pattern. Both views are then read and walked like any block.
 *
 * Input: u8 flags (arch, vendor set, AMD), u64 max_ram_below_4g, machine type, libvirt XML,
 * u8 block count, per block (idstr, u64 size, u8 page bits, u8 run count, runs of u32 page,
 * u16 count), u8 CPU count, per CPU the raw MrCpu bytes. */
#include "fuzz-common.h"

#include <json-glib/json-glib.h>
#include <string.h>

#define MAX_BLOCKS 8
#define MAX_PAGES                                                                                  \
    (G_GUINT64_CONSTANT(1) << 24) /* 2 MiB of bitmap: 64 GiB at 4 KiB, 1 TiB at 64 KiB */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

static gboolean pattern_read(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                             GError **error)
{
    (void)error;
    if (offset > blk->size || len > blk->size - offset) /* the views must stay inside */
        g_error("block read [0x%" G_GINT64_MODIFIER "x, +0x%zx) past the block", offset, len);
    /* One byte per 64-byte line: cheap, and still tells lines and blocks apart. */
    for (gsize i = 0; i < len;) {
        gsize n = MIN(len - i, 64 - (offset + i) % 64);
        memset(buf + i, (guint8)(((offset + i) / 64) * 131 + blk->idstr_len) | 1, n);
        i += n;
    }
    return TRUE;
}

static const MrBlockOps pattern_ops = {.read_data = pattern_read};

static char *take_string(FuzzInput *in, gsize max)
{
    gsize len;
    const guint8 *p = fuzz_bytes(in, max, &len);
    return g_strndup((const char *)p, len);
}

/* A block's name as the description's JSON shows it, decoded again by json-glib. */
static char *shown_name(const MrBlock *b)
{
    g_autoptr(GString) text = g_string_new("[");
    mr_json_append_bytes(text, b->idstr, b->idstr_len);
    g_string_append_c(text, ']');
    g_autoptr(JsonNode) node = json_from_string(text->str, NULL);
    if (node == NULL)
        abort(); /* mr_json_append_bytes wrote something that is not a JSON string */
    return g_strdup(json_array_get_string_element(json_node_get_array(node), 0));
}

static void compare_page(const MrBlock *view, guint64 gpa, const MrBlock *blk, guint64 off,
                         gsize len)
{
    static guint8 a[65536], b[65536];
    g_autoptr(GError) error = NULL;
    if (mr_block_pread(view, a, len, gpa, &error) != (gssize)len ||
        mr_block_pread(blk, b, len, off, &error) != (gssize)len || memcmp(a, b, len) != 0)
        g_error("physmem 0x%" G_GINT64_MODIFIER
                "x does not read as its block at 0x%" G_GINT64_MODIFIER "x",
                gpa, off);
}

/* Every range of the description reads, at its first and last page, as the block it names
 * at the offset it names (pages that are holes in the block are holes in the view). */
static void check_ranges(const MrImage *img, const char *member)
{
    g_autofree char *text = g_strconcat("{", member + 1, "}", NULL);
    g_autoptr(JsonNode) root = json_from_string(text, NULL);
    if (root == NULL)
        abort(); /* the physmem member of the description is not JSON */
    JsonObject *phys = json_object_get_object_member(json_node_get_object(root), "physmem");
    JsonArray *ranges = json_object_get_array_member(phys, "ranges");
    guint n_ranges = json_array_get_length(ranges);
    if (img->physmem == NULL ? n_ranges != 0 : n_ranges != mr_physmem_n_ranges(img))
        abort();
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < img->blocks->len; i++)
        g_ptr_array_add(names, shown_name(g_ptr_array_index(img->blocks, i)));
    for (guint r = 0; r < n_ranges; r++) {
        JsonObject *o = json_array_get_object_element(ranges, r);
        guint64 gpa = (guint64)json_object_get_int_member(o, "gpa");
        guint64 len = (guint64)json_object_get_int_member(o, "size");
        guint64 off = (guint64)json_object_get_int_member(o, "block_offset");
        const char *name = json_object_get_string_member(o, "block");
        const MrBlock *blk = NULL;
        guint matches = 0;
        for (guint i = 0; i < names->len; i++)
            if (strcmp(g_ptr_array_index(names, i), name) == 0) {
                blk = g_ptr_array_index(img->blocks, i);
                matches++;
            }
        if (matches == 0)
            abort(); /* a range from a block that does not exist */
        if (matches > 1)
            continue; /* two blocks of one name: which one is not said */
        if (off > mr_block_size(blk) || len > mr_block_size(blk) - off)
            abort(); /* a range past the end of its block */
        gsize page = MIN(len, (guint64)img->physmem->page_size);
        compare_page(img->physmem, gpa, blk, off, page);
        compare_page(img->physmem, gpa + len - page, blk, off + len - page, page);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzInput in = {data, size, 0};
    guint8 flags = fuzz_u8(&in);
    MrOpenOptions opts = {0};
    opts.max_ram_below_4g = fuzz_u64(&in);
    if (!(flags & 0x10))
        opts.max_ram_below_4g = 0;
    opts.cpu_vendor_set = (flags & 0x04) != 0;
    opts.cpu_vendor_amd = (flags & 0x08) != 0;

    g_autoptr(MrImage) img = g_new0(MrImage, 1);
    img->path = g_strdup("fuzz.img");
    img->format_name = "mapped-ram";
    img->blocks = g_ptr_array_new_with_free_func((GDestroyNotify)mr_block_free);
    img->stream.capabilities = g_ptr_array_new_with_free_func(g_free);
    img->stream.machine_type = take_string(&in, 64);
    if (*img->stream.machine_type == 0 && (flags & 0x20))
        g_clear_pointer(&img->stream.machine_type, g_free); /* a stream without one */
    gsize xml_len;
    const guint8 *xml = fuzz_bytes(&in, 2048, &xml_len);
    if (xml_len > 0)
        img->libvirt_xml = g_bytes_new(xml, strnlen((const char *)xml, xml_len));

    guint n_blocks = fuzz_u8(&in) % (MAX_BLOCKS + 1);
    for (guint i = 0; i < n_blocks; i++) {
        g_autoptr(MrBlock) b = mr_block_new();
        gsize idlen;
        const guint8 *id = fuzz_bytes(&in, 64, &idlen);
        memcpy(b->idstr, id, idlen);
        b->idstr_len = idlen ? idlen : 1;
        if (idlen == 0)
            b->idstr[0] = 'b';
        guint64 want = fuzz_u64(&in);
        b->page_size = 1u << (10 + fuzz_u8(&in) % 7);
        b->n_pages = MIN(want / b->page_size, MAX_PAGES);
        b->size = b->n_pages * b->page_size;
        b->ops = &pattern_ops;
        gsize n_words = (gsize)((b->n_pages + 63) / 64);
        guint64 *words = g_new0(guint64, MAX(n_words, 1));
        guint runs = fuzz_u8(&in) % 8;
        for (guint r = 0; r < runs && b->n_pages > 0; r++) {
            guint64 first = fuzz_u32(&in) % b->n_pages;
            guint64 count = fuzz_u16(&in); /* not inside MIN(): it evaluates twice */
            count = MIN(count, b->n_pages - first);
            for (guint64 p = first; p < first + count; p++)
                words[p / 64] |= G_GUINT64_CONSTANT(1) << (p % 64);
        }
        mr_bitmap_init_host(&b->bitmap, words, b->n_pages);
        g_ptr_array_add(img->blocks, g_steal_pointer(&b));
    }

    static const MrArch arches[] = {MR_ARCH_NONE, MR_ARCH_X86_64, MR_ARCH_AARCH64, MR_ARCH_RISCV64};
    img->arch = arches[flags & 3];
    guint n_cpus = fuzz_u8(&in) % 5;
    if (img->arch != MR_ARCH_NONE && n_cpus > 0) {
        img->cpus = g_array_new(FALSE, TRUE, sizeof(MrCpu));
        for (guint i = 0; i < n_cpus; i++) {
            MrCpu cpu = {0};
            gsize avail = size - MIN(size, in.pos);
            memcpy(&cpu, data + in.pos, MIN(avail, sizeof cpu));
            in.pos += MIN(avail, sizeof cpu);
            cpu.index = i;
            cpu.has_sysregs = cpu.has_sysregs != 0;
            g_array_append_val(img->cpus, cpu);
        }
    }

    mr_physmem_build(img, &opts);
    if (img->physmem_about == NULL)
        abort(); /* the description always says which rule, or why there is no view */
    if (img->physmem != NULL) {
        guint64 prev_end = 0;
        for (guint i = 0; i < mr_physmem_n_ranges(img); i++) {
            guint64 gpa, len;
            mr_physmem_range(img, i, &gpa, &len);
            if (len == 0 || gpa < prev_end || gpa + len > mr_block_size(img->physmem))
                abort(); /* ranges are non-empty, in order, disjoint, inside the view */
            prev_end = gpa + len;
        }
        (void)mr_physmem_arch(img);
    }
    g_autoptr(GString) out = g_string_new(NULL);
    mr_physmem_describe(img, out);
    check_ranges(img, out->str);
    mr_elfcore_build(img);
    if (img->physmem != NULL) {
        fuzz_exercise_block(img->physmem);
        if (img->elfcore == NULL)
            abort(); /* a guest-physical view always has an ELF core view */
        fuzz_exercise_block(img->elfcore);
    }
    return 0;
}
