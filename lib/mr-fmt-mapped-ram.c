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

#define MAPPED_RAM_HDR_VERSION 1
#define MIN_PAGE_SIZE          1024u /* TARGET_PAGE_BITS_MIN = 10 (arm) */
#define MAX_PAGE_SIZE          65536u

typedef struct {
    guint64 start, end;
} Region;

typedef struct {
    MrImage *img;
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

/* The mapped-ram part of a block list entry (§5.1): the MappedRamHeader after
 * used_length. The next entry starts at pages_offset + used_length. */
static gboolean parse_block_header(gpointer data, MrReader *r, MrBlock *b, guint64 entry_start,
                                   GError **error)
{
    Walk *w = data;
    guint32 hdr_version = mr_reader_be32(r);
    guint64 page_size = mr_reader_be64(r);
    b->page_size = (guint32)MIN(page_size, G_MAXUINT32); /* > 64 KiB is rejected below */
    b->bitmap_offset = mr_reader_be64(r);
    b->pages_offset = mr_reader_be64(r);
    if (!mr_reader_check(r, "RAM block table", error))
        return FALSE;
    b->n_pages = b->page_size ? b->size / b->page_size : 0;
    if (!check_block(b, hdr_version, r->pos, mr_source_size(w->img->src), error))
        return FALSE;
    add_region(w, entry_start, r->pos);
    add_region(w, b->bitmap_offset, b->bitmap_offset + (b->n_pages + 63) / 64 * 8);
    add_region(w, b->pages_offset, b->pages_offset + b->size);
    mr_reader_seek(r, b->pages_offset + b->size);
    b->ops = &mapped_ram_block_ops;
    return TRUE;
}

static gboolean mapped_ram_start(gpointer data, MrReader *r, GError **error)
{
    Walk *w = data;
    return mr_stream_parse_block_list(r, w->img, parse_block_header, w, error) &&
           mr_stream_expect_eos(r, "RAM block table", error);
}

/* PART and END carry nothing but EOS with mapped-ram (§5.5). */
static gboolean mapped_ram_part(gpointer data, MrReader *r, gboolean is_end, GError **error)
{
    (void)data;
    (void)is_end;
    return mr_stream_expect_eos(r, "RAM section", error);
}

static const MrRamSectionHandlers mapped_ram_sections = {
    .ram_start = mapped_ram_start,
    .ram_part = mapped_ram_part,
};

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
    MrReader r;
    mr_reader_init(&r, img->src, img->stream.body_offset);
    add_region(&w, img->stream.offset, img->stream.body_offset);
    gboolean ok = mr_stream_walk_ram(&r, &mapped_ram_sections, &w, error) &&
                  check_overlaps(&w, error) && mr_stream_find_vmdesc(img, r.pos, error) &&
                  load_bitmaps(img, error);
    mr_reader_clear(&r);
    g_array_unref(w.regions);
    return ok;
}

const MrFormat mr_format_mapped_ram = {
    .name = "mapped-ram",
    .probe = mapped_ram_probe,
    .open = mapped_ram_open,
};
