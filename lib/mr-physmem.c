/* mr-physmem.c: the guest-physical view, a file whose offset X holds guest-physical byte X.
 *
 * Forensic tools think in guest-physical addresses, RAMBlocks are not that: on x86 the main
 * RAM block is split around the PCI hole below 4 GiB (qemu-save-formats.md §7.1), and arm
 * and riscv `virt` put RAM at a base address (§7.2). The view is built from the machine type
 * and block table alone, as a list of mappings (guest range -> block range); it is served
 * as a synthetic MrBlock whose bitmap is the union of the mapped blocks' bitmaps, so reads,
 * SEEK_DATA/SEEK_HOLE and st_blocks come from the same code as every block, and nothing is
 * copied. Machine types we do not know get no view and a sentence saying why. */
#include "mr-private.h"

#include <stdio.h>
#include <string.h>

#define GiB                    (G_GUINT64_CONSTANT(1) << 30)
#define X86_ABOVE_4G_START     (4 * GiB)
#define Q35_PCI_HOLE64_SIZE    (32 * GiB)
#define I440FX_PCI_HOLE64_SIZE (2 * GiB)
#define AMD_HT_START           G_GUINT64_CONSTANT(0xfd00000000)
#define AMD_ABOVE_1TB_START    (G_GUINT64_CONSTANT(1) << 40)
#define X86_VGA_WINDOW_START   0xa0000u /* legacy VGA: MMIO, never RAM in the flat view */
#define X86_VGA_WINDOW_END     0xc0000u
#define ARM_VIRT_RAM_BASE      0x40000000u /* hw/arm/virt.c base_memmap[VIRT_MEM] */
#define RISCV_VIRT_RAM_BASE    0x80000000u /* hw/riscv/virt.c virt_memmap[VIRT_DRAM] */
#define ARM_VIRT_FLASH_SIZE    (64u << 20)
#define RISCV_VIRT_FLASH_BASE  0x20000000u
#define RISCV_VIRT_MROM_BASE   0x1000u

typedef struct {
    guint64 gpa, len;
    const MrBlock *block;
    guint64 block_offset;
} Mapping;

typedef struct {
    GArray *maps; /* of Mapping, sorted by gpa, not overlapping */
} PhysView;

static void physview_free(gpointer data)
{
    PhysView *v = data;
    g_array_unref(v->maps);
    g_free(v);
}

static const MrBlock *find_block(const MrImage *img, const char *idstr)
{
    for (guint i = 0; i < img->blocks->len; i++) {
        const MrBlock *b = g_ptr_array_index(img->blocks, i);
        if (b->idstr_len == strlen(idstr) && memcmp(b->idstr, idstr, b->idstr_len) == 0)
            return b;
    }
    return NULL;
}

static void map(GArray *maps, guint64 gpa, const MrBlock *b, guint64 off, guint64 len)
{
    if (b != NULL && len > 0 && off < b->size)
        g_array_append_val(maps, ((Mapping){gpa, MIN(len, b->size - off), b, off}));
}

/* x86 `pc` (i440fx) and `q35`: the below/above-4G split of pc.ram (pc_q35.c pc_q35_init,
 * pc_piix.c pc_init1; §7.1). The firmware ROM sits below 4 GiB; the legacy window
 * 0xc0000-0xfffff shows RAM, as it does once firmware has run (PAM set to RAM), which is
 * what dump-guest-memory of a booted guest shows too. */
static guint64 x86_lowmem(gboolean q35, guint64 ram, guint64 max_below_4g)
{
    guint64 lowmem;
    if (q35) {
        lowmem = ram >= 0xb0000000u ? 0x80000000u : 0xb0000000u;
        lowmem = MIN(lowmem, max_below_4g ? max_below_4g : X86_ABOVE_4G_START);
    } else {
        lowmem = max_below_4g ? max_below_4g : 0xe0000000u;
        if (ram >= lowmem) /* gigabyte_align, set for every pc-i440fx machine type */
            lowmem = MIN(lowmem, 0xc0000000u);
    }
    return MIN(lowmem, ram);
}

/* The little-endian BAR0 address of a PCI config space when the device decodes memory
 * (command bit 1) and BAR0 is a memory BAR; 0 otherwise (PCI spec, config header type 0). */
static guint64 pci_bar0(const guint8 *config)
{
    guint16 command = (guint16)(config[4] | config[5] << 8);
    guint64 bar = (guint64)config[0x10] | (guint64)config[0x11] << 8 | (guint64)config[0x12] << 16 |
                  (guint64)config[0x13] << 24;
    if (!(command & 0x2) || (bar & 0x1))
        return 0;
    if ((bar & 0x6) == 0x4) /* 64-bit BAR: the high half is BAR1 */
        bar |= ((guint64)config[0x14] | (guint64)config[0x15] << 8 | (guint64)config[0x16] << 16 |
                (guint64)config[0x17] << 24)
               << 32;
    return bar & ~G_GUINT64_CONSTANT(0xf);
}

static gboolean overlaps(const GArray *maps, guint64 gpa, guint64 len)
{
    for (guint i = 0; i < maps->len; i++) {
        const Mapping *m = &g_array_index(maps, Mapping, i);
        if (gpa < m->gpa + m->len && m->gpa < gpa + len)
            return TRUE;
    }
    return FALSE;
}

/* The view's page bitmap covers every page below its end, so a VGA BAR (a 64-bit BAR can be
 * anywhere) must end below this: 1 TiB is 32 MiB of bitmap and above what QEMU's default
 * phys-bits (40) address; QEMU's std VGA BAR0 is a 32-bit BAR anyway. */
#define X86_VGA_BAR_LIMIT (G_GUINT64_CONSTANT(1) << 40)

/* The standard VGA's video RAM ("<pci addr>/vga.vram") sits at the device's BAR0, which the
 * guest's firmware programmed: read it from the PCI config space in the device's state
 * (hw/display/vga-pci.c: vmstate "vga", field dev.config). A BAR that is off, unaligned,
 * above X86_VGA_BAR_LIMIT or on top of another range is left out rather than trusted. */
static void x86_vga_maps(const MrImage *img, GArray *maps, GString *about)
{
    static const char suffix[] = "/vga.vram";
    for (guint i = 0; i < img->blocks->len; i++) {
        const MrBlock *b = g_ptr_array_index(img->blocks, i);
        gsize n = b->idstr_len;
        if (n <= strlen(suffix) || memcmp(b->idstr + n - strlen(suffix), suffix, strlen(suffix)))
            continue;
        g_autofree char *device =
            g_strdup_printf("%.*svga", (int)(n - strlen(suffix) + 1), (const char *)b->idstr);
        const MrDevice *dev = mr_devstate_find(img, device, 0);
        guint8 config[256];
        if (dev == NULL || !mr_device_read(img, dev, "dev", 0, "config[0]", config, sizeof config))
            continue;
        guint64 bar = pci_bar0(config);
        if (bar == 0 || bar % b->page_size || b->size > X86_VGA_BAR_LIMIT ||
            bar > X86_VGA_BAR_LIMIT - b->size || overlaps(maps, bar, b->size))
            continue;
        map(maps, bar, b, 0, b->size);
        g_autofree char *shown = mr_escape_bytes(b->idstr, b->idstr_len);
        g_string_append_printf(about, ", %s at BAR0 0x%" G_GINT64_MODIFIER "x", shown, bar);
    }
}

/* Machine types from 7.1 on move RAM above 4 GiB to 1 TiB on AMD CPUs when the 64-bit PCI
 * hole after it would reach the HyperTransport range (pc.c pc_memory_init,
 * enforce_amd_1tb_hole; §7.1). The hole starts at the next GiB after RAM and by default is
 * 32 GiB on q35 and 2 GiB on i440fx (Q35_/I440FX_PCI_HOST_HOLE64_SIZE_DEFAULT); hot-pluggable
 * memory (maxmem) would push it further, and is not in the stream. "pc"/"q35" alias the
 * newest machine type. */
static guint64 x86_above_4g_start(const MrImage *img, gboolean q35, guint64 above, gboolean amd)
{
    guint64 hole64_size = q35 ? Q35_PCI_HOLE64_SIZE : I440FX_PCI_HOLE64_SIZE;
    const char *m = img->stream.machine_type;
    const char *version = strrchr(m, '-');
    guint major = 0, minor = 0;
    gboolean new_enough = version == NULL || (sscanf(version + 1, "%u.%u", &major, &minor) == 2 &&
                                              (major > 7 || (major == 7 && minor >= 1)));
    guint64 hole64_start = (X86_ABOVE_4G_START + above + GiB - 1) / GiB * GiB;
    if (amd && new_enough && above > 0 && hole64_start + hole64_size - 1 >= AMD_HT_START)
        return AMD_ABOVE_1TB_START;
    return X86_ABOVE_4G_START;
}

static gboolean x86_maps(const MrImage *img, gboolean q35, const MrPhysOptions *opts, GArray *maps,
                         GString *about)
{
    const MrBlock *ram = find_block(img, "pc.ram");
    if (ram == NULL)
        return FALSE;
    guint64 lowmem = x86_lowmem(q35, ram->size, opts->max_ram_below_4g);
    guint64 high = x86_above_4g_start(img, q35, ram->size - lowmem, opts->cpu_vendor_amd);
    map(maps, 0, ram, 0, MIN(lowmem, X86_VGA_WINDOW_START));
    if (lowmem > X86_VGA_WINDOW_END)
        map(maps, X86_VGA_WINDOW_END, ram, X86_VGA_WINDOW_END, lowmem - X86_VGA_WINDOW_END);
    map(maps, high, ram, lowmem, ram->size - lowmem);
    const MrBlock *bios = find_block(img, "pc.bios");
    if (bios != NULL && bios->size <= GiB)
        map(maps, X86_ABOVE_4G_START - bios->size, bios, 0, bios->size);
    g_string_printf(about, "%s: pc.ram [0, 0x%" G_GINT64_MODIFIER "x) below 4 GiB%s",
                    q35 ? "q35" : "pc (i440fx)", lowmem,
                    lowmem == ram->size          ? ""
                    : high == X86_ABOVE_4G_START ? ", the rest from 4 GiB"
                                                 : ", the rest from 1 TiB (AMD CPU)");
    x86_vga_maps(img, maps, about);
    return TRUE;
}

static gboolean virt_maps(const MrImage *img, GArray *maps, GString *about)
{
    const MrBlock *arm = find_block(img, "mach-virt.ram");
    const MrBlock *riscv = find_block(img, "riscv_virt_board.ram");
    if (arm != NULL) {
        map(maps, 0, find_block(img, "virt.flash0"), 0, ARM_VIRT_FLASH_SIZE);
        map(maps, ARM_VIRT_FLASH_SIZE, find_block(img, "virt.flash1"), 0, ARM_VIRT_FLASH_SIZE);
        map(maps, ARM_VIRT_RAM_BASE, arm, 0, arm->size);
        g_string_assign(about, "arm virt: mach-virt.ram at 0x40000000");
        return TRUE;
    }
    if (riscv != NULL) {
        const MrBlock *flash0 = find_block(img, "virt.flash0");
        map(maps, RISCV_VIRT_MROM_BASE, find_block(img, "riscv_virt_board.mrom"), 0, G_MAXUINT64);
        map(maps, RISCV_VIRT_FLASH_BASE, flash0, 0, G_MAXUINT64);
        if (flash0 != NULL)
            map(maps, RISCV_VIRT_FLASH_BASE + flash0->size, find_block(img, "virt.flash1"), 0,
                G_MAXUINT64);
        map(maps, RISCV_VIRT_RAM_BASE, riscv, 0, riscv->size);
        g_string_assign(about, "riscv virt: riscv_virt_board.ram at 0x80000000");
        return TRUE;
    }
    return FALSE;
}

static int compare_maps(gconstpointer a, gconstpointer b)
{
    const Mapping *x = a, *y = b;
    return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

/* The mappings for this machine, sorted; FALSE (and why, in @about) if we have no rule. */
static gboolean machine_maps(const MrImage *img, const MrPhysOptions *opts, GArray *maps,
                             GString *about)
{
    const char *m = img->stream.machine_type ? img->stream.machine_type : "";
    gboolean ok;
    if (g_str_has_prefix(m, "pc-q35") || strcmp(m, "q35") == 0)
        ok = x86_maps(img, TRUE, opts, maps, about);
    else if (g_str_has_prefix(m, "pc-i440fx") || strcmp(m, "pc") == 0)
        ok = x86_maps(img, FALSE, opts, maps, about);
    else if (g_str_has_prefix(m, "virt"))
        ok = virt_maps(img, maps, about);
    else
        ok = FALSE;
    if (!ok) {
        g_autofree char *shown = mr_escape_bytes((const guint8 *)m, strlen(m));
        g_string_printf(about,
                        "no guest-physical view: machine type \"%s\" with these RAMBlocks has "
                        "no known memory map",
                        shown);
        return FALSE;
    }
    g_array_sort(maps, compare_maps);
    for (guint i = 1; i < maps->len; i++) { /* defensive: the rules never overlap */
        const Mapping *p = &g_array_index(maps, Mapping, i - 1);
        if (p->gpa + p->len > g_array_index(maps, Mapping, i).gpa) {
            g_string_assign(about, "no guest-physical view: overlapping ranges");
            return FALSE;
        }
    }
    return maps->len > 0;
}

/* Copy data pages of the view: every page asked for is data in its source block. */
static gboolean physview_read_data(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                                   GError **error)
{
    const PhysView *v = blk->priv;
    for (guint i = 0; i < v->maps->len && len > 0; i++) {
        const Mapping *m = &g_array_index(v->maps, Mapping, i);
        if (offset >= m->gpa + m->len || offset < m->gpa)
            continue;
        gsize step = (gsize)MIN((guint64)len, m->gpa + m->len - offset);
        if (!m->block->ops->read_data(m->block, buf, m->block_offset + (offset - m->gpa), step,
                                      error))
            return FALSE;
        buf += step;
        offset += step;
        len -= step;
    }
    return TRUE;
}

static const MrBlockOps physview_ops = {
    .read_data = physview_read_data,
};

/* The view's bitmap: for each mapped page, the bit of the page it shows. Mapped ranges and
 * block offsets are page-aligned by construction (every rule uses page-aligned constants). */
static void build_bitmap(MrBlock *view, const GArray *maps)
{
    guint64 *words = g_new0(guint64, MAX((view->n_pages + 63) / 64, 1));
    for (guint i = 0; i < maps->len; i++) {
        const Mapping *m = &g_array_index(maps, Mapping, i);
        guint64 first = m->gpa / view->page_size, src = m->block_offset / view->page_size;
        /* next_set_until stops at the block's last bit: a limit past it would never end. */
        guint64 end = MIN(src + m->len / view->page_size, m->block->bitmap.n_bits);
        for (guint64 p = mr_bitmap_next_set_until(&m->block->bitmap, src, end); p < end;
             p = mr_bitmap_next_set_until(&m->block->bitmap, p + 1, end)) {
            guint64 bit = first + (p - src);
            words[bit / 64] |= G_GUINT64_CONSTANT(1) << (bit % 64);
        }
    }
    mr_bitmap_init_host(&view->bitmap, words, view->n_pages);
}

/* QEMU refuses max-ram-below-4g above 4 GiB (pc_machine_set_max_ram_below_4g); a value
 * that is not a page multiple would split a page between two guest addresses. */
static gboolean below_4g_valid(const MrImage *img, const MrPhysOptions *opts, GString *about)
{
    guint64 v = opts->max_ram_below_4g;
    guint32 page =
        img->blocks->len ? ((const MrBlock *)g_ptr_array_index(img->blocks, 0))->page_size : 4096;
    if (v <= X86_ABOVE_4G_START && v % page == 0)
        return TRUE;
    g_string_printf(about,
                    "no guest-physical view: max_ram_below_4g 0x%" G_GINT64_MODIFIER
                    "x must be a multiple of the page size and at most 4 GiB",
                    v);
    return FALSE;
}

/* The view has one page size, so every block it maps must have it: QEMU gives all of them
 * the target page size, and a view page that stood for pages of another size would index
 * the block's bitmap past its end (build_bitmap would never finish). */
static gboolean one_page_size(const MrImage *img, GString *about)
{
    for (guint i = 1; i < img->blocks->len; i++) {
        const MrBlock *b = g_ptr_array_index(img->blocks, i);
        guint32 first = ((const MrBlock *)g_ptr_array_index(img->blocks, 0))->page_size;
        if (b->page_size != first) {
            g_autofree char *shown = mr_escape_bytes(b->idstr, b->idstr_len);
            g_string_printf(about,
                            "no guest-physical view: RAMBlock \"%s\" has %u-byte pages, the "
                            "first RAMBlock %u-byte pages",
                            shown, b->page_size, first);
            return FALSE;
        }
    }
    return TRUE;
}

/* A QEMU size (qemu_strtosz: a number, optional k/M/G/T suffix, powers of 1024) at the
 * start of @text, which must end there. */
static gboolean parse_qemu_size(const char *text, const char *end, guint64 *value)
{
    char buf[32];
    gsize n = 0;
    while (text + n < end && n < sizeof buf - 1 && g_ascii_isalnum(text[n]))
        n++;
    if (text + n < end && (g_ascii_isalnum(text[n]) || text[n] == '.'))
        return FALSE; /* longer than any size, or a fraction ("1.5G"): not guessed at */
    memcpy(buf, text, n);
    buf[n] = '\0';
    guint shift = 0;
    const char *suffixes = "bkmgt";
    const char *unit = n > 0 && !g_ascii_isdigit(buf[n - 1]) && !(n > 2 && buf[1] == 'x')
                           ? strchr(suffixes, g_ascii_tolower(buf[n - 1]))
                           : NULL;
    if (unit != NULL) {
        shift = unit == suffixes ? 0 : 10 * (guint)(unit - suffixes);
        buf[--n] = '\0';
    }
    guint64 v;
    if (n == 0 || !mr_parse_number(buf, &v) || (shift && v > (G_MAXUINT64 >> shift)))
        return FALSE;
    *value = v << shift;
    return TRUE;
}

/* libvirt has no element for these; guests that need max-ram-below-4g pass it as a machine
 * property on the QEMU command line (<qemu:commandline>, "…,max-ram-below-4g=2G"), and the
 * CPU vendor shows in <cpu><vendor> or the model name. */
static void rules_from_libvirt_xml(const MrImage *img, MrPhysOptions *rules, GString *notes)
{
    gsize len;
    const char *xml = img->libvirt_xml ? g_bytes_get_data(img->libvirt_xml, &len) : NULL;
    if (xml == NULL)
        return;
    static const char key[] = "max-ram-below-4g=";
    const char *hit = g_strstr_len(xml, (gssize)len, key);
    guint64 v;
    if (rules->max_ram_below_4g == 0 && hit != NULL) {
        /* the mount option's rule (fs/main.c): a page multiple, at most 4 GiB */
        if (parse_qemu_size(hit + strlen(key), xml + len, &v) && v > 0 && v % 4096 == 0 &&
            v <= X86_ABOVE_4G_START) {
            rules->max_ram_below_4g = v;
            g_string_append_printf(
                notes, "; max-ram-below-4g 0x%" G_GINT64_MODIFIER "x from the libvirt XML", v);
        } else {
            g_string_append(notes, "; a max-ram-below-4g in the libvirt XML that is not a "
                                   "multiple of 4 KiB up to 4 GiB was ignored");
        }
    }
    if (!rules->cpu_vendor_set && (g_strstr_len(xml, (gssize)len, "<vendor>AMD</vendor>") != NULL ||
                                   g_strstr_len(xml, (gssize)len, ">EPYC") != NULL ||
                                   g_strstr_len(xml, (gssize)len, ">Opteron") != NULL)) {
        rules->cpu_vendor_amd = TRUE;
        g_string_append(notes, "; AMD CPU from the libvirt XML");
    }
}

void mr_physmem_build(MrImage *img, const MrPhysOptions *opts)
{
    g_autoptr(GArray) maps = g_array_new(FALSE, FALSE, sizeof(Mapping));
    GString *about = g_string_new(NULL);
    g_autoptr(GString) notes = g_string_new(NULL);
    MrPhysOptions rules = {0};
    if (opts != NULL)
        rules = *opts;
    rules_from_libvirt_xml(img, &rules, notes);
    opts = &rules;
    gboolean ok = below_4g_valid(img, opts, about) && one_page_size(img, about) &&
                  machine_maps(img, opts, maps, about);
    if (ok)
        g_string_append(about, notes->str);
    img->physmem_about = g_string_free(about, FALSE);
    if (!ok)
        return;
    const Mapping *last = &g_array_index(maps, Mapping, maps->len - 1);
    MrBlock *view = mr_block_new();
    memcpy(view->idstr, "physmem", 7);
    view->idstr_len = 7;
    view->page_size = ((const MrBlock *)g_ptr_array_index(img->blocks, 0))->page_size;
    view->size = last->gpa + last->len;
    view->n_pages = (view->size + view->page_size - 1) / view->page_size;
    view->src = img->src;
    view->ops = &physview_ops;
    build_bitmap(view, maps);
    PhysView *v = g_new0(PhysView, 1);
    v->maps = g_steal_pointer(&maps);
    view->priv = v;
    view->priv_free = physview_free;
    img->physmem = view;
}

void mr_physmem_describe(const MrImage *img, GString *out)
{
    g_string_append(out, ",\n  \"physmem\": {\"about\": ");
    mr_json_append_string(out, img->physmem_about);
    g_string_append(out, ", \"ranges\": [");
    const PhysView *v = img->physmem ? img->physmem->priv : NULL;
    for (guint i = 0; v != NULL && i < v->maps->len; i++) {
        const Mapping *m = &g_array_index(v->maps, Mapping, i);
        g_string_append_printf(
            out, "%s{\"gpa\": %" G_GUINT64_FORMAT ", \"size\": %" G_GUINT64_FORMAT ", \"block\": ",
            i ? ", " : "", m->gpa, m->len);
        mr_json_append_bytes(out, m->block->idstr, m->block->idstr_len);
        g_string_append_printf(out, ", \"block_offset\": %" G_GUINT64_FORMAT "}", m->block_offset);
    }
    g_string_append(out, "]}");
}

guint mr_physmem_n_ranges(const MrImage *img)
{
    const PhysView *v = img->physmem ? img->physmem->priv : NULL;
    return v ? v->maps->len : 0;
}

void mr_physmem_range(const MrImage *img, guint index, guint64 *gpa, guint64 *len)
{
    const PhysView *v = img->physmem->priv;
    const Mapping *m = &g_array_index(v->maps, Mapping, index);
    *gpa = m->gpa;
    *len = m->len;
}

MrArch mr_physmem_arch(const MrImage *img)
{
    if (find_block(img, "pc.ram") != NULL)
        return MR_ARCH_X86_64;
    if (find_block(img, "mach-virt.ram") != NULL)
        return MR_ARCH_AARCH64;
    if (find_block(img, "riscv_virt_board.ram") != NULL)
        return MR_ARCH_RISCV64;
    return MR_ARCH_NONE;
}
