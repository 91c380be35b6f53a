/* mr-reader.c: see mr-reader.h. */
#include "mr-reader.h"
#include "mramfs.h"

#include <string.h>

void mr_reader_init(MrReader *r, const MrSource *src, guint64 pos)
{
    r->src = src;
    r->pos = pos;
    r->error = NULL;
    r->win_start = 0;
    r->win_len = 0;
}

void mr_reader_clear(MrReader *r)
{
    g_clear_error(&r->error);
}

/* Make [pos, pos+len) available in the window; len <= MR_READER_WINDOW. */
static const guint8 *reader_fetch(MrReader *r, gsize len)
{
    if (r->error != NULL)
        return NULL;
    if (r->pos >= r->win_start && len <= r->win_len && r->pos - r->win_start <= r->win_len - len)
        return r->win + (r->pos - r->win_start);
    guint64 size = mr_source_size(r->src);
    gsize left = r->pos < size ? (gsize)MIN(size - r->pos, (guint64)MR_READER_WINDOW) : 0;
    gsize want = MAX(left, len); /* more than is left: mr_source_read reports the truncation */
    GError *err = NULL;
    if (!mr_source_read(r->src, r->pos, r->win, want, &err)) {
        /* The window may reach bytes nobody asked for that cannot be read (a corrupt frame
         * of a packed image behind a header): then read just what was asked for. */
        if (want > len && mr_source_read(r->src, r->pos, r->win, len, NULL)) {
            g_clear_error(&err);
            want = len;
        } else {
            g_propagate_error(&r->error, err);
            return NULL;
        }
    }
    r->win_start = r->pos;
    r->win_len = want;
    return r->win;
}

static guint64 reader_be(MrReader *r, gsize width)
{
    const guint8 *p = reader_fetch(r, width);
    if (p == NULL)
        return 0;
    guint64 v = 0;
    for (gsize i = 0; i < width; i++)
        v = (v << 8) | p[i];
    r->pos += width;
    return v;
}

guint8 mr_reader_u8(MrReader *r)
{
    return (guint8)reader_be(r, 1);
}

guint16 mr_reader_be16(MrReader *r)
{
    return (guint16)reader_be(r, 2);
}

guint32 mr_reader_be32(MrReader *r)
{
    return (guint32)reader_be(r, 4);
}

guint64 mr_reader_be64(MrReader *r)
{
    return reader_be(r, 8);
}

void mr_reader_bytes(MrReader *r, void *out, gsize len)
{
    guint8 *dst = out;
    while (len > 0) {
        gsize step = MIN(len, (gsize)MR_READER_WINDOW);
        const guint8 *p = reader_fetch(r, step);
        if (p == NULL) {
            memset(dst, 0, len);
            return;
        }
        memcpy(dst, p, step);
        r->pos += step;
        dst += step;
        len -= step;
    }
}

void mr_reader_seek(MrReader *r, guint64 pos)
{
    r->pos = pos;
}

void mr_reader_skip(MrReader *r, guint64 len)
{
    if (r->error != NULL)
        return;
    guint64 pos;
    if (!g_uint64_checked_add(&pos, r->pos, len)) {
        g_set_error(&r->error, MR_ERROR, MR_ERROR_CORRUPT, "offset overflow");
        return;
    }
    /* Skipped bytes must exist too: report a cut where it is, not at the next read. */
    if (pos > mr_source_size(r->src)) {
        g_set_error(&r->error, MR_ERROR, MR_ERROR_TRUNCATED,
                    "truncated: %" G_GUINT64_FORMAT " bytes at 0x%" G_GINT64_MODIFIER
                    "x run past the end of the file (0x%" G_GINT64_MODIFIER "x)",
                    len, r->pos, mr_source_size(r->src));
        return;
    }
    r->pos = pos;
}

int mr_reader_peek_u8(MrReader *r)
{
    if (r->error != NULL || r->pos >= mr_source_size(r->src))
        return -1;
    const guint8 *p = reader_fetch(r, 1);
    return p == NULL ? -1 : p[0];
}

gboolean mr_reader_check(MrReader *r, const char *what, GError **error)
{
    if (r->error == NULL)
        return TRUE;
    g_propagate_prefixed_error(error, g_steal_pointer(&r->error), "%s: ", what);
    return FALSE;
}
