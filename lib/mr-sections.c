/* mr-sections.c: the section framing every QEMU stream shares (QEMU migration/savevm.c;
 * qemu-save-formats.md §3.2–§3.4): walking COMMAND/START/PART/END sections up to the end of
 * RAM, section footers, and the VM description that closes a completed save. Format readers
 * only parse the ram payloads, through MrRamSectionHandlers. */
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

/* How far back from the end of the file we look for the VM description (§3.4). */
#define VMDESC_SEARCH_LIMIT (64u << 20)
#define VMDESC_WINDOW       (1u << 20)

typedef struct {
    MrReader *r;
    const MrRamSectionHandlers *handlers;
    gpointer data;
    guint32 ram_id;
    gboolean ram_started;
} Walk;

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

gboolean mr_stream_expect_eos(MrReader *r, const char *what, GError **error)
{
    guint64 at = r->pos;
    guint64 v = mr_reader_be64(r);
    if (!mr_reader_check(r, what, error))
        return FALSE;
    if (v != MR_RAM_FLAG_EOS) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "%s: expected end-of-section marker at 0x%" G_GINT64_MODIFIER
                    "x, found 0x%" G_GINT64_MODIFIER "x (no page records belong here)",
                    what, at, v);
        return FALSE;
    }
    return TRUE;
}

static gboolean parse_start(Walk *w, GError **error)
{
    MrReader *r = w->r;
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
    return w->handlers->ram_start(w->data, r, error) && read_footer(r, id, error);
}

/* PART and END of the ram section: the format reader parses the payload. */
static gboolean parse_part_or_end(Walk *w, guint8 type, GError **error)
{
    guint32 id = mr_reader_be32(w->r);
    if (!mr_reader_check(w->r, "section header", error))
        return FALSE;
    if (!w->ram_started || id != w->ram_id) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "section %s for unknown section id %u",
                    type == SECTION_PART ? "PART" : "END", id);
        return FALSE;
    }
    return w->handlers->ram_part(w->data, w->r, type == SECTION_END, error) &&
           read_footer(w->r, id, error);
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
gboolean mr_stream_walk_ram(MrReader *r, const MrRamSectionHandlers *handlers, gpointer data,
                            GError **error)
{
    Walk walk = {.r = r, .handlers = handlers, .data = data};
    Walk *w = &walk;
    for (;;) {
        guint64 at = w->r->pos;
        int type = mr_reader_peek_u8(w->r);
        if (type < 0) {
            set_incomplete(error, "the file ends before the RAM END section");
            return FALSE;
        }
        mr_reader_u8(w->r);
        gboolean ok;
        switch (type) {
        case SECTION_COMMAND:
            ok = parse_command(w->r, error);
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
gboolean mr_stream_find_vmdesc(MrImage *img, guint64 from, GError **error)
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
                img->devstate_offset = from;
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

gboolean mr_stream_parse_block_list(MrReader *r, MrImage *img, MrBlockEntryFunc entry,
                                    gpointer data, GError **error)
{
    guint64 v = mr_reader_be64(r);
    if (!mr_reader_check(r, "RAM section", error))
        return FALSE;
    if ((v & MR_RAM_FLAG_MASK) != MR_RAM_FLAG_MEM_SIZE) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "RAM section: first record has flags 0x%x, expected MEM_SIZE",
                    (guint)(v & MR_RAM_FLAG_MASK));
        return FALSE;
    }
    /* Blocks follow until their used_lengths add up to the total (parse_ramblocks). */
    for (guint64 remaining = v & ~(guint64)MR_RAM_FLAG_MASK; remaining > 0;) {
        if (img->blocks->len >= MR_MAX_BLOCKS) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "more than %d RAMBlocks", MR_MAX_BLOCKS);
            return FALSE;
        }
        guint64 entry_start = r->pos;
        g_autoptr(MrBlock) b = mr_block_new();
        b->idstr_len = mr_reader_u8(r);
        mr_reader_bytes(r, b->idstr, b->idstr_len);
        b->size = mr_reader_be64(r);
        if (!mr_reader_check(r, "RAM block table", error))
            return FALSE;
        if (b->idstr_len == 0) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "RAM block table: empty RAMBlock id at 0x%" G_GINT64_MODIFIER "x",
                        entry_start);
            return FALSE;
        }
        if (b->size > remaining) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                        "RAM block table: block sizes exceed the announced RAM total");
            return FALSE;
        }
        remaining -= b->size;
        b->src = img->src;
        if (!entry(data, r, b, entry_start, error))
            return FALSE;
        g_ptr_array_add(img->blocks, g_steal_pointer(&b));
    }
    return TRUE;
}
