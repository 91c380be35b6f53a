/* mr-fmt-legacy.c: sequential (non-mapped-ram) QEMU streams, as `migrate file:`/`exec:`
 * without the capability and every `virsh save` in formats 0–5 write them
 * (qemu-save-formats.md §6; QEMU migration/ram.c ram_load_precopy).
 *
 * Pages arrive as records in stream order, and a live save sends a page many times: the
 * last record wins. Indexing walks every record once and keeps, per page, where its final
 * content is: a PAGE record's data in the file, a page rebuilt from XBZRLE deltas in memory,
 * or nothing (a ZERO record, or never sent) — a hole, exactly as a clear bitmap bit is for
 * mapped-ram. The index is saved beside the user's cache (mr-index-cache.c) so that the
 * next open of the same, unchanged image skips the walk. */
#include "mr-private.h"

#include <string.h>

#define ENCODING_FLAG_XBZRLE 0x01
/* Progress is reported about every 64 MiB of stream. */
#define PROGRESS_STEP (64u << 20)

typedef struct {
    MrImage *img;
    guint32 page_size;
    MrBlock *last;        /* the block a CONTINUE record refers to (ram_block_from_stream) */
    GHashTable *by_idstr; /* GBytes idstr -> MrBlock* */
    guint64 total_pages;  /* over all blocks: bounded by the file size, see legacy_entry */
    guint64 next_progress;
    guint8 *page; /* scratch page for XBZRLE decoding */
} Scan;

static gboolean legacy_probe(const MrStreamInfo *info)
{
    return !mr_stream_has_capability(info, "mapped-ram");
}

static void legacy_block_free(gpointer data)
{
    MrLegacyBlock *lb = data;
    g_free(lb->slots);
    if (lb->decoded)
        g_byte_array_unref(lb->decoded);
    if (lb->free_decoded)
        g_array_unref(lb->free_decoded);
    g_free(lb);
}

MrLegacyBlock *mr_legacy_block_attach(MrBlock *blk)
{
    MrLegacyBlock *lb = g_new0(MrLegacyBlock, 1);
    lb->slots = g_new0(guint64, MAX(blk->n_pages, 1));
    lb->decoded = g_byte_array_new();
    lb->free_decoded = g_array_new(FALSE, FALSE, sizeof(guint64));
    blk->priv = lb;
    blk->priv_free = legacy_block_free;
    blk->ops = &mr_legacy_block_ops;
    return lb;
}

/* Copy the final content of pages [offset, offset + len) of a data run into @buf. */
static gboolean legacy_read_data(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                                 GError **error)
{
    const MrLegacyBlock *lb = blk->priv;
    while (len > 0) {
        guint64 page = offset / blk->page_size;
        guint64 in_page = offset % blk->page_size;
        gsize step = (gsize)MIN((guint64)len, blk->page_size - in_page);
        guint64 slot = lb->slots[page];
        if (slot & MR_SLOT_DECODED)
            memcpy(buf, lb->decoded->data + (slot & ~MR_SLOT_DECODED) + in_page, step);
        else if (!mr_source_read(blk->src, slot + in_page, buf, step, error))
            return FALSE;
        buf += step;
        offset += step;
        len -= step;
    }
    return TRUE;
}

const MrBlockOps mr_legacy_block_ops = {
    .read_data = legacy_read_data,
};

void mr_legacy_block_build_bitmap(MrBlock *blk)
{
    const MrLegacyBlock *lb = blk->priv;
    guint64 *words = g_new0(guint64, MAX((blk->n_pages + 63) / 64, 1));
    for (guint64 p = 0; p < blk->n_pages; p++)
        if (lb->slots[p] > MR_SLOT_ZERO_SENT)
            words[p / 64] |= G_GUINT64_CONSTANT(1) << (p % 64);
    mr_bitmap_init_host(&blk->bitmap, words, blk->n_pages);
}

/* A block list entry: nothing follows used_length in a legacy stream (§4; the postcopy
 * page size and the ignore-shared address are never in a file save we accept). */
static gboolean legacy_entry(gpointer data, MrReader *r, MrBlock *b, guint64 entry_start,
                             GError **error)
{
    (void)r;
    (void)entry_start;
    Scan *scan = data;
    b->page_size = scan->page_size;
    if (b->size % b->page_size != 0) {
        g_autofree char *name = mr_escape_bytes(b->idstr, b->idstr_len);
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAMBlock \"%s\": used_length 0x%" G_GINT64_MODIFIER
                    "x is not a multiple of the page size",
                    name, b->size);
        return FALSE;
    }
    b->n_pages = b->size / b->page_size;
    /* Every page of a legacy save is sent at least once, as a record of 9 bytes or more,
     * so the stream bounds the page count; the index costs 8 bytes per page. */
    scan->total_pages += b->n_pages;
    if (scan->total_pages > mr_source_size(scan->img->src) / 8 + (1u << 20)) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM block table: %" G_GUINT64_FORMAT
                    " pages cannot fit in a stream of this size",
                    scan->total_pages);
        return FALSE;
    }
    mr_legacy_block_attach(b);
    g_hash_table_insert(scan->by_idstr, g_bytes_new(b->idstr, b->idstr_len), b);
    return TRUE;
}

/* The block a page record is for: the previous one (CONTINUE) or the one it names. */
static MrBlock *record_block(Scan *scan, MrReader *r, guint64 flags, GError **error)
{
    if (flags & MR_RAM_FLAG_CONTINUE) {
        if (scan->last == NULL)
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "page record at 0x%" G_GINT64_MODIFIER "x continues no block", r->pos);
        return scan->last;
    }
    guint8 idstr[256];
    guint8 len = mr_reader_u8(r);
    mr_reader_bytes(r, idstr, len);
    if (!mr_reader_check(r, "page record", error))
        return NULL;
    g_autoptr(GBytes) key = g_bytes_new_static(idstr, len);
    MrBlock *b = g_hash_table_lookup(scan->by_idstr, key);
    if (b == NULL) {
        g_autofree char *name = mr_escape_bytes(idstr, len);
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "page record at 0x%" G_GINT64_MODIFIER "x names unknown RAMBlock \"%s\"",
                    r->pos, name);
    }
    scan->last = b;
    return b;
}

/* The page's content as the loader would have it before this record. */
static gboolean current_page(const MrBlock *b, guint64 page, guint8 *out, GError **error)
{
    const MrLegacyBlock *lb = b->priv;
    guint64 slot = lb->slots[page];
    if (slot <= MR_SLOT_ZERO_SENT)
        memset(out, 0, b->page_size);
    else if (slot & MR_SLOT_DECODED)
        memcpy(out, lb->decoded->data + (slot & ~MR_SLOT_DECODED), b->page_size);
    else
        return mr_source_read(b->src, slot, out, b->page_size, error);
    return TRUE;
}

/* Apply an XBZRLE delta (QEMU migration/xbzrle.c xbzrle_decode_buffer): runs of
 * (unchanged length, changed length, changed bytes), lengths as ULEB128 of at most 2 bytes.
 * The same checks as QEMU's decoder, which refuses exactly what we refuse. */
static gboolean uleb128_small(const guint8 *in, gsize avail, guint32 *value, gsize *used)
{
    if (avail < 2)
        return FALSE;
    if (!(in[0] & 0x80)) {
        *value = in[0];
        *used = 1;
        return TRUE;
    }
    if (in[1] & 0x80)
        return FALSE;
    *value = (guint32)(in[0] & 0x7f) | (guint32)in[1] << 7;
    *used = 2;
    return TRUE;
}

gboolean mr_xbzrle_decode(const guint8 *src, gsize slen, guint8 *dst, gsize dlen)
{
    gsize i = 0, d = 0, used;
    guint32 count;
    while (i < slen) {
        if (!uleb128_small(src + i, slen - i, &count, &used) || (i > 0 && count == 0))
            return FALSE;
        i += used;
        d += count;
        if (d > dlen || !uleb128_small(src + i, slen - i, &count, &used) || count == 0)
            return FALSE;
        i += used;
        if (d + count > dlen || i + count > slen)
            return FALSE;
        memcpy(dst + d, src + i, count);
        d += count;
        i += count;
    }
    return TRUE;
}

/* A place for a decoded page: one a page gave up, else a new one, within the budget. */
static gboolean take_decoded_slot(Scan *scan, MrLegacyBlock *lb, guint32 page_size, guint64 *slot,
                                  GError **error)
{
    if (lb->free_decoded->len > 0) {
        *slot =
            MR_SLOT_DECODED | g_array_index(lb->free_decoded, guint64, lb->free_decoded->len - 1);
        g_array_set_size(lb->free_decoded, lb->free_decoded->len - 1);
        return TRUE;
    }
    guint64 budget = MIN(mr_source_size(scan->img->src) + MR_MAX_DECODED_EXTRA, G_MAXUINT32);
    if ((guint64)lb->decoded->len + page_size > budget) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "XBZRLE pages would need more than %" G_GUINT64_FORMAT " MiB of memory",
                    budget >> 20);
        return FALSE;
    }
    *slot = MR_SLOT_DECODED | lb->decoded->len;
    g_byte_array_set_size(lb->decoded, lb->decoded->len + page_size);
    return TRUE;
}

/* A page record replaces the page: a decoded copy it had is free for another page. */
static void release_decoded(MrLegacyBlock *lb, guint64 page)
{
    guint64 slot = lb->slots[page];
    if (slot & MR_SLOT_DECODED) {
        guint64 off = slot & ~MR_SLOT_DECODED;
        g_array_append_val(lb->free_decoded, off);
    }
}

static gboolean apply_xbzrle(Scan *scan, MrReader *r, MrBlock *b, guint64 page, GError **error)
{
    guint64 at = r->pos;
    guint8 encoding = mr_reader_u8(r);
    guint16 len = mr_reader_be16(r);
    guint8 delta[65536];
    if (!mr_reader_check(r, "XBZRLE record", error))
        return FALSE;
    if (encoding != ENCODING_FLAG_XBZRLE || len > b->page_size) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "XBZRLE record at 0x%" G_GINT64_MODIFIER "x: encoding %u, length %u", at,
                    encoding, len);
        return FALSE;
    }
    mr_reader_bytes(r, delta, len);
    if (!mr_reader_check(r, "XBZRLE record", error) || !current_page(b, page, scan->page, error))
        return FALSE;
    if (!mr_xbzrle_decode(delta, len, scan->page, b->page_size)) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "XBZRLE record at 0x%" G_GINT64_MODIFIER "x does not decode", at);
        return FALSE;
    }
    MrLegacyBlock *lb = b->priv;
    guint64 slot = lb->slots[page];
    if (!(slot & MR_SLOT_DECODED)) {
        if (!take_decoded_slot(scan, lb, b->page_size, &slot, error))
            return FALSE;
        lb->slots[page] = slot;
    }
    memcpy(lb->decoded->data + (slot & ~MR_SLOT_DECODED), scan->page, b->page_size);
    return TRUE;
}

static void unsupported_record(GError **error, guint64 at, guint64 flags)
{
    const char *what = flags & MR_RAM_FLAG_COMPRESS_PAGE ? "compressed pages (QEMU <= 9.0 "
                                                           "`compress` capability)"
                       : flags & MR_RAM_FLAG_HOOK        ? "RDMA hook records"
                                                         : NULL;
    if (what != NULL)
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "%s are not supported (record at 0x%" G_GINT64_MODIFIER "x)", what, at);
    else
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM record at 0x%" G_GINT64_MODIFIER
                    "x has unknown flags 0x%" G_GINT64_MODIFIER "x",
                    at, flags);
}

/* One ZERO/PAGE/XBZRLE record after its be64 header: update the page's slot. */
static gboolean page_record(Scan *scan, MrReader *r, guint64 at, guint64 addr, guint64 kind,
                            guint64 flags, GError **error)
{
    MrBlock *b = record_block(scan, r, flags, error);
    if (b == NULL)
        return FALSE;
    if (addr >= b->size) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "page record at 0x%" G_GINT64_MODIFIER "x: offset 0x%" G_GINT64_MODIFIER
                    "x is past the end of its RAMBlock",
                    at, addr);
        return FALSE;
    }
    guint64 page = addr / b->page_size;
    MrLegacyBlock *lb = b->priv;
    if (lb->slots[page] != 0)
        scan->img->legacy.resent++;
    if (kind != MR_RAM_FLAG_XBZRLE)
        release_decoded(lb, page);
    if (kind == MR_RAM_FLAG_ZERO) {
        guint8 fill = mr_reader_u8(r);
        if (!mr_reader_check(r, "zero-page record", error))
            return FALSE;
        if (fill != 0) { /* the loader refuses a non-zero fill byte too */
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "zero-page record at 0x%" G_GINT64_MODIFIER "x has fill byte 0x%02x", at,
                        fill);
            return FALSE;
        }
        lb->slots[page] = MR_SLOT_ZERO_SENT;
        scan->img->legacy.zero_records++;
        return TRUE;
    }
    if (kind == MR_RAM_FLAG_XBZRLE) {
        scan->img->legacy.xbzrle_records++;
        return apply_xbzrle(scan, r, b, page, error);
    }
    lb->slots[page] = r->pos;
    mr_reader_skip(r, b->page_size);
    scan->img->legacy.page_records++;
    return mr_reader_check(r, "page record", error);
}

static void report_progress(Scan *scan, guint64 pos)
{
    if (scan->img->opts.progress == NULL || pos < scan->next_progress)
        return;
    scan->next_progress = pos + PROGRESS_STEP;
    scan->img->opts.progress(pos, mr_source_size(scan->img->src), scan->img->opts.progress_data);
}

/* Records of one ram section payload, up to its EOS (ram_load_precopy). */
static gboolean read_records(Scan *scan, MrReader *r, GError **error)
{
    guint64 mask = (guint64)scan->page_size - 1;
    for (;;) {
        guint64 at = r->pos;
        guint64 v = mr_reader_be64(r);
        if (!mr_reader_check(r, "RAM section", error))
            return FALSE;
        guint64 flags = v & mask, addr = v & ~mask;
        guint64 kind = flags & ~(guint64)MR_RAM_FLAG_CONTINUE;
        switch (kind) {
        case MR_RAM_FLAG_EOS:
            return TRUE;
        case MR_RAM_FLAG_MULTIFD_FLUSH:
            break;
        case MR_RAM_FLAG_ZERO:
        case MR_RAM_FLAG_PAGE:
        case MR_RAM_FLAG_XBZRLE:
            if (!page_record(scan, r, at, addr, kind, flags, error))
                return FALSE;
            break;
        default:
            unsupported_record(error, at, flags);
            return FALSE;
        }
        report_progress(scan, r->pos);
    }
}

static gboolean legacy_start(gpointer data, MrReader *r, GError **error)
{
    Scan *scan = data;
    return mr_stream_parse_block_list(r, scan->img, legacy_entry, scan, error) &&
           read_records(scan, r, error);
}

static gboolean legacy_part(gpointer data, MrReader *r, gboolean is_end, GError **error)
{
    (void)is_end;
    return read_records(data, r, error);
}

static const MrRamSectionHandlers legacy_sections = {
    .ram_start = legacy_start,
    .ram_part = legacy_part,
};

guint32 mr_legacy_page_size(const MrImage *img)
{
    /* configuration/target-page-bits is only sent when it differs from the target's
     * minimum; every target we know with a smaller minimum sends it (§3.1), so 4 KiB
     * otherwise (a target with a fixed larger page would need its own rule). */
    const MrStreamInfo *info = &img->stream;
    return info->target_page_bits ? 1u << info->target_page_bits : 4096;
}

static gboolean scan_stream(MrImage *img, GError **error)
{
    Scan scan = {
        .img = img,
        .page_size = mr_legacy_page_size(img),
        .by_idstr =
            g_hash_table_new_full(g_bytes_hash, g_bytes_equal, (GDestroyNotify)g_bytes_unref, NULL),
    };
    scan.page = g_malloc(scan.page_size);
    MrReader r;
    mr_reader_init(&r, img->src, img->stream.body_offset);
    gboolean ok = mr_stream_walk_ram(&r, &legacy_sections, &scan, error) &&
                  mr_stream_find_vmdesc(img, r.pos, error);
    if (ok && img->opts.progress)
        img->opts.progress(r.pos, mr_source_size(img->src), img->opts.progress_data);
    mr_reader_clear(&r);
    g_hash_table_unref(scan.by_idstr);
    g_free(scan.page);
    return ok;
}

/* After indexing: holes are 0 again, and the block gets its bitmap. Freed decoded pages
 * stay in the arena (they are at most as many as the pages that still use one). */
static void finish_block(MrBlock *b)
{
    MrLegacyBlock *lb = b->priv;
    for (guint64 p = 0; p < b->n_pages; p++)
        if (lb->slots[p] == MR_SLOT_ZERO_SENT)
            lb->slots[p] = 0;
    g_array_set_size(lb->free_decoded, 0);
    mr_legacy_block_build_bitmap(b);
}

static gboolean legacy_open(MrImage *img, GError **error)
{
    if (mr_stream_has_capability(&img->stream, "x-ignore-shared")) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "x-ignore-shared saves are not supported (shared RAM is not in the file)");
        return FALSE;
    }
    g_autofree char *index = mr_index_cache_path(img);
    if (index != NULL && mr_index_cache_load(img, index)) {
        img->legacy.index_path = g_steal_pointer(&index);
        img->legacy.from_cache = TRUE;
        return TRUE;
    }
    if (!scan_stream(img, error))
        return FALSE;
    for (guint i = 0; i < img->blocks->len; i++)
        finish_block(g_ptr_array_index(img->blocks, i));
    /* A cache that cannot be written (read-only home, full disk) costs a rescan next time,
     * nothing more: the mount itself does not depend on it. */
    if (index != NULL && mr_index_cache_save(img, index, NULL))
        img->legacy.index_path = g_steal_pointer(&index);
    return TRUE;
}

const MrFormat mr_format_legacy = {
    .name = "legacy",
    .probe = legacy_probe,
    .open = legacy_open,
};
