/* mr-fmt-mapped-ram.c: the format reader for QEMU `mapped-ram` saves (QEMU >= 9.0).
 *
 * Layout (qemu-save-formats.md §4, §5; QEMU migration/ram.c ram_save_setup,
 * mapped_ram_setup_ramblock): the ram START section lists every RAMBlock with a
 * MappedRamHeader giving the absolute file offsets of its page bitmap and of its page slots
 * (1 MiB-aligned); the next block's entry starts right after the previous block's slots.
 * PART/END ram sections carry nothing but EOS (§5.5). The bitmaps are only valid once the
 * save completed, so we insist on the ram END section and the VM description at the tail. */
#include "mr-private.h"

#include <string.h>

#define SECTION_EOF     0x00
#define SECTION_START   0x01
#define SECTION_PART    0x02
#define SECTION_END     0x03
#define SECTION_FULL    0x04
#define SECTION_VMDESC  0x06
#define SECTION_COMMAND 0x08
#define SECTION_FOOTER  0x7e

#define RAM_SECTION_VERSION 4
#define RAM_FLAG_MEM_SIZE   0x04
#define RAM_FLAG_EOS        0x10
/* Every RAM_SAVE_FLAG fits in the low 10 bits; addresses are page (>= 1 KiB) aligned. */
#define RAM_FLAG_MASK 0x3ffu

#define MAPPED_RAM_HDR_VERSION 1
#define MAPPED_RAM_HDR_SIZE    28
#define MIN_PAGE_SIZE          1024u /* TARGET_PAGE_BITS_MIN = 10 (arm) */
#define MAX_PAGE_SIZE          65536u

/* How far back from the end of the file we look for the VM description (§3.4). */
#define VMDESC_SEARCH_LIMIT (64u << 20)
#define VMDESC_WINDOW       (1u << 20)

typedef struct {
    guint64 start, end;
} Region;

typedef struct {
    MrImage *img;
    MrReader r;
    guint32 ram_id;
    gboolean ram_started;
    GArray *regions; /* of Region: every byte range the tables claim, checked for overlap */
} Walk;

static gboolean mapped_ram_probe(const MrStreamInfo *info)
{
    return mr_stream_has_capability(info, "mapped-ram");
}

static gboolean mapped_ram_read_data(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                                     GError **error)
{
    return mr_source_read(blk->src, blk->pages_offset + offset, buf, len, error);
}

static const MrBlockOps mapped_ram_block_ops = {
    .read_data = mapped_ram_read_data,
};

static void add_region(Walk *w, guint64 start, guint64 end)
{
    if (end > start)
        g_array_append_val(w->regions, ((Region){start, end}));
}

static gboolean read_footer(MrReader *r, guint32 id, GError **error)
{
    /* Footers are on by default but optional (send-section-footer): consume iff present. */
    if (mr_reader_peek_u8(r) != SECTION_FOOTER)
        return TRUE;
    guint64 at = r->pos;
    mr_reader_u8(r);
    guint32 footer_id = mr_reader_be32(r);
    if (!mr_reader_check(r, "section footer", error))
        return FALSE;
    if (footer_id != id) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "section footer at 0x%" G_GINT64_MODIFIER "x names section %u, expected %u", at,
                    footer_id, id);
        return FALSE;
    }
    return TRUE;
}

/* The reason a block's MappedRamHeader cannot be served, or NULL if it can. */
static const char *block_geometry_problem(const MrBlock *b, guint64 entry_end, guint64 file_size)
{
    guint64 bitmap_end, pages_end;
    if (b->page_size < MIN_PAGE_SIZE || b->page_size > MAX_PAGE_SIZE ||
        (b->page_size & (b->page_size - 1)) != 0)
        return "page size is not a power of two between 1 KiB and 64 KiB";
    if (b->size % b->page_size != 0)
        return "used_length is not a multiple of the page size";
    if (b->pages_offset % b->page_size != 0)
        return "page data offset is not page aligned"; /* the loader's own check */
    if (b->bitmap_offset < entry_end)
        return "bitmap starts inside the stream before it (overlapping regions)";
    if (!g_uint64_checked_add(&bitmap_end, b->bitmap_offset, (b->n_pages + 63) / 64 * 8) ||
        bitmap_end > file_size)
        return "bitmap lies outside the file";
    if (b->pages_offset < bitmap_end)
        return "page data starts inside its bitmap or an earlier region (overlapping regions)";
    if (!g_uint64_checked_add(&pages_end, b->pages_offset, b->size) || pages_end > file_size)
        return "page data lies outside the file";
    return NULL;
}

static gboolean check_block(const MrBlock *b, guint32 hdr_version, guint64 entry_end,
                            guint64 file_size, GError **error)
{
    g_autofree char *name = mr_escape_bytes(b->idstr, b->idstr_len);
    if (hdr_version != MAPPED_RAM_HDR_VERSION) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "RAMBlock \"%s\": mapped-ram header version %u is not supported (expected %d)",
                    name, hdr_version, MAPPED_RAM_HDR_VERSION);
        return FALSE;
    }
    const char *why = block_geometry_problem(b, entry_end, file_size);
    if (why == NULL)
        return TRUE;
    g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                "RAMBlock \"%s\": %s (page size %u, used_length 0x%" G_GINT64_MODIFIER
                "x, bitmap at 0x%" G_GINT64_MODIFIER "x, pages at 0x%" G_GINT64_MODIFIER
                "x, file size 0x%" G_GINT64_MODIFIER "x)",
                name, why, b->page_size, b->size, b->bitmap_offset, b->pages_offset, file_size);
    return FALSE;
}

/* One entry of the ram START block list (§4, §5.1): idstr, used_length, MappedRamHeader.
 * The next entry starts at pages_offset + used_length. */
static gboolean parse_block(Walk *w, guint64 *remaining, GError **error)
{
    MrReader *r = &w->r;
    guint64 entry_start = r->pos;
    g_autoptr(MrBlock) b = mr_block_new();
    b->idstr_len = mr_reader_u8(r);
    mr_reader_bytes(r, b->idstr, b->idstr_len);
    b->size = mr_reader_be64(r);
    guint32 hdr_version = mr_reader_be32(r);
    guint64 page_size = mr_reader_be64(r);
    b->page_size = (guint32)MIN(page_size, G_MAXUINT32); /* > 64 KiB is rejected below */
    b->bitmap_offset = mr_reader_be64(r);
    b->pages_offset = mr_reader_be64(r);
    if (!mr_reader_check(r, "RAM block table", error))
        return FALSE;
    if (b->idstr_len == 0) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x", entry_start);
        return FALSE;
    }
    if (b->size > *remaining) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM block table: block sizes exceed the announced RAM total");
        return FALSE;
    }
    b->n_pages = b->page_size ? b->size / b->page_size : 0;
    if (!check_block(b, hdr_version, r->pos, mr_source_size(w->img->src), error))
        return FALSE;
    *remaining -= b->size;
    add_region(w, entry_start, r->pos);
    add_region(w, b->bitmap_offset, b->bitmap_offset + (b->n_pages + 63) / 64 * 8);
    add_region(w, b->pages_offset, b->pages_offset + b->size);
    mr_reader_seek(r, b->pages_offset + b->size);
    b->src = w->img->src;
    b->ops = &mapped_ram_block_ops;
    g_ptr_array_add(w->img->blocks, g_steal_pointer(&b));
    return TRUE;
}

static gboolean expect_eos(MrReader *r, const char *what, GError **error)
{
    guint64 at = r->pos;
    guint64 v = mr_reader_be64(r);
    if (!mr_reader_check(r, what, error))
        return FALSE;
    if (v != RAM_FLAG_EOS) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "%s: expected end-of-section marker at 0x%" G_GINT64_MODIFIER
                    "x, found 0x%" G_GINT64_MODIFIER "x (mapped-ram streams carry no page records)",
                    what, at, v);
        return FALSE;
    }
    return TRUE;
}

/* The ram START payload: MEM_SIZE total, then blocks until the total is consumed
 * (parse_ramblocks counts down the same way), then EOS. */
static gboolean parse_ram_start(Walk *w, GError **error)
{
    MrReader *r = &w->r;
    guint64 v = mr_reader_be64(r);
    if (!mr_reader_check(r, "RAM section", error))
        return FALSE;
    if ((v & RAM_FLAG_MASK) != RAM_FLAG_MEM_SIZE) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM section: first record has flags 0x%x, expected MEM_SIZE",
                    (guint)(v & RAM_FLAG_MASK));
        return FALSE;
    }
    guint64 remaining = v & ~(guint64)RAM_FLAG_MASK;
    while (remaining > 0) {
        if (w->img->blocks->len >= MR_MAX_BLOCKS) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "more than %d RAMBlocks", MR_MAX_BLOCKS);
            return FALSE;
        }
        if (!parse_block(w, &remaining, error))
            return FALSE;
    }
    return expect_eos(r, "RAM block table", error);
}

static gboolean parse_start(Walk *w, GError **error)
{
    MrReader *r = &w->r;
    guint32 id = mr_reader_be32(r);
    guint8 idstr[256] = {0};
    guint8 idlen = mr_reader_u8(r);
    mr_reader_bytes(r, idstr, idlen);
    mr_reader_be32(r); /* instance id */
    guint32 version = mr_reader_be32(r);
    if (!mr_reader_check(r, "section header", error))
        return FALSE;
    if (idlen != 3 || memcmp(idstr, "ram", 3) != 0) {
        /* vfio, dirty-bitmap, …: their bodies have private framing (§6). */
        g_autofree char *name = mr_escape_bytes(idstr, idlen);
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "iterable section \"%s\" is not supported (only RAM)", name);
        return FALSE;
    }
    if (w->ram_started) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "second RAM START section");
        return FALSE;
    }
    if (version != RAM_SECTION_VERSION) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "RAM section version %u is not supported (expected %d)", version,
                    RAM_SECTION_VERSION);
        return FALSE;
    }
    w->ram_started = TRUE;
    w->ram_id = id;
    return parse_ram_start(w, error) && read_footer(r, id, error);
}

/* PART and END of the ram section: just EOS with mapped-ram (§5.5). */
static gboolean parse_part_or_end(Walk *w, guint8 type, GError **error)
{
    guint32 id = mr_reader_be32(&w->r);
    if (!mr_reader_check(&w->r, "section header", error))
        return FALSE;
    if (!w->ram_started || id != w->ram_id) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "section %s for unknown section id %u",
                    type == SECTION_PART ? "PART" : "END", id);
        return FALSE;
    }
    return expect_eos(&w->r, "RAM section", error) && read_footer(&w->r, id, error);
}

static gboolean parse_command(MrReader *r, GError **error)
{
    mr_reader_be16(r); /* command: SWITCHOVER_START (11) in 10.0; any is skippable (§3.2) */
    mr_reader_skip(r, mr_reader_be16(r));
    return mr_reader_check(r, "command record", error);
}

static void set_incomplete(GError **error, const char *why)
{
    g_set_error(error, MR_ERROR, MR_ERROR_INCOMPLETE,
                "incomplete migration stream: %s (the save did not finish, or the file is "
                "truncated)",
                why);
}

/* Walk sections from the end of the configuration up to and including the ram END
 * section (§3.3). Device state (FULL sections) only follows RAM END. */
static gboolean walk_to_ram_end(Walk *w, GError **error)
{
    for (;;) {
        guint64 at = w->r.pos;
        int type = mr_reader_peek_u8(&w->r);
        if (type < 0) {
            set_incomplete(error, "the file ends before the RAM END section");
            return FALSE;
        }
        mr_reader_u8(&w->r);
        gboolean ok;
        switch (type) {
        case SECTION_COMMAND:
            ok = parse_command(&w->r, error);
            break;
        case SECTION_START:
            ok = parse_start(w, error);
            break;
        case SECTION_PART:
        case SECTION_END:
            ok = parse_part_or_end(w, (guint8)type, error);
            if (ok && type == SECTION_END)
                return TRUE;
            break;
        case SECTION_FULL:
            g_set_error(error, MR_ERROR, w->ram_started ? MR_ERROR_CORRUPT : MR_ERROR_UNSUPPORTED,
                        w->ram_started ? "device state section before the RAM END section"
                                       : "device state before RAM (early-setup devices such as "
                                         "virtio-mem) is not supported");
            return FALSE;
        case SECTION_EOF:
            set_incomplete(error, "end-of-stream marker before the RAM END section");
            return FALSE;
        default:
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "unexpected byte 0x%02x at 0x%" G_GINT64_MODIFIER
                        "x where a section should start",
                        (guint)type, at);
            return FALSE;
        }
        if (!ok)
            return FALSE;
    }
}

/* A VM description candidate at @p (§3.4): byte p is 0x06, be32 at p+1 is the length of
 * the rest of the file, the JSON opens with '{' and closes with '}', and byte p-1 is EOF. */
static gboolean is_vmdesc_at(const guint8 *buf, guint64 buf_start, guint64 p, guint64 file_size,
                             guint8 last_byte)
{
    const guint8 *q = buf + (p - buf_start);
    if (q[0] != SECTION_VMDESC || q[-1] != SECTION_EOF || p + 5 >= file_size)
        return FALSE;
    guint32 len = (guint32)q[1] << 24 | (guint32)q[2] << 16 | (guint32)q[3] << 8 | q[4];
    return (guint64)len == file_size - p - 5 && q[5] == '{' && last_byte == '}';
}

/* Find the VM description that closes a completed save; searched backwards from the end
 * of the file, never before @from (the end of RAM). */
static gboolean find_vmdesc(MrImage *img, guint64 from, GError **error)
{
    guint64 size = mr_source_size(img->src);
    guint64 floor = size - from > VMDESC_SEARCH_LIMIT ? size - VMDESC_SEARCH_LIMIT : from;
    guint8 last_byte = 0;
    if (size > from && !mr_source_read(img->src, size - 1, &last_byte, 1, error))
        return FALSE;
    g_autofree guint8 *buf = g_malloc(VMDESC_WINDOW + 8);
    /* Candidates p lie in [floor + 1, hi); we read [p - 1, p + 6) around each. */
    for (guint64 hi = size; hi > floor + 1;) {
        guint64 lo = hi - floor - 1 > VMDESC_WINDOW ? hi - VMDESC_WINDOW : floor + 1;
        guint64 rd_lo = lo - 1, rd_hi = MIN(hi + 6, size);
        if (!mr_source_read(img->src, rd_lo, buf, (gsize)(rd_hi - rd_lo), error))
            return FALSE;
        for (guint64 p = hi; p-- > lo;) {
            const guint8 *hit = memrchr(buf + (lo - rd_lo), SECTION_VMDESC, (gsize)(p + 1 - lo));
            if (hit == NULL)
                break;
            p = rd_lo + (guint64)(hit - buf);
            if (p + 6 <= rd_hi && is_vmdesc_at(buf, rd_lo, p, size, last_byte)) {
                img->has_vmdesc = TRUE;
                img->vmdesc_offset = p + 5;
                img->vmdesc_len = size - p - 5;
                return TRUE;
            }
        }
        hi = lo;
    }
    g_set_error(error, MR_ERROR, MR_ERROR_INCOMPLETE,
                "incomplete migration stream: no VM description at the end of the file "
                "(truncated, or saved with suppress-vmdesc=on, which is not supported)");
    return FALSE;
}

static int compare_regions(gconstpointer a, gconstpointer b)
{
    const Region *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static gboolean check_overlaps(Walk *w, GError **error)
{
    g_array_sort(w->regions, compare_regions);
    for (guint i = 1; i < w->regions->len; i++) {
        const Region *prev = &g_array_index(w->regions, Region, i - 1);
        const Region *cur = &g_array_index(w->regions, Region, i);
        if (cur->start < prev->end) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "overlapping regions: [0x%" G_GINT64_MODIFIER "x, 0x%" G_GINT64_MODIFIER
                        "x) and [0x%" G_GINT64_MODIFIER "x, 0x%" G_GINT64_MODIFIER "x)",
                        prev->start, prev->end, cur->start, cur->end);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean load_bitmaps(MrImage *img, GError **error)
{
    for (guint i = 0; i < img->blocks->len; i++) {
        MrBlock *b = g_ptr_array_index(img->blocks, i);
        gsize n_words = (gsize)((b->n_pages + 63) / 64);
        guint64 *words = g_new(guint64, MAX(n_words, 1));
        if (!mr_source_read(img->src, b->bitmap_offset, words, n_words * 8, error)) {
            g_free(words);
            g_prefix_error(error, "bitmap: ");
            return FALSE;
        }
        mr_bitmap_init_le(&b->bitmap, words, b->n_pages);
    }
    return TRUE;
}

static gboolean mapped_ram_open(MrImage *img, GError **error)
{
    if (mr_stream_has_capability(&img->stream, "x-ignore-shared")) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "x-ignore-shared saves are not supported (shared RAM is not in the file)");
        return FALSE;
    }
    Walk w = {.img = img, .regions = g_array_new(FALSE, FALSE, sizeof(Region))};
    mr_reader_init(&w.r, img->src, img->stream.body_offset);
    add_region(&w, img->stream.offset, img->stream.body_offset);
    gboolean ok = walk_to_ram_end(&w, error) && check_overlaps(&w, error) &&
                  find_vmdesc(img, w.r.pos, error) && load_bitmaps(img, error);
    mr_reader_clear(&w.r);
    g_array_unref(w.regions);
    return ok;
}

const MrFormat mr_format_mapped_ram = {
    .name = "mapped-ram",
    .probe = mapped_ram_probe,
    .open = mapped_ram_open,
};
