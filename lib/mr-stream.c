/* mr-stream.c: the QEMU migration stream header and configuration section
 * (QEMU migration/savevm.c qemu_savevm_state_header; qemu-save-formats.md §3.1). */
#include "mr-private.h"

#include <string.h>

#define QEVM_MAGIC            0x5145564du
#define QEVM_VERSION          3
#define QEVM_VERSION_COMPAT   2
#define SECTION_CONFIGURATION 0x07
#define SUBSECTION            0x05

void mr_stream_info_clear(MrStreamInfo *info)
{
    g_clear_pointer(&info->machine_type, g_free);
    g_clear_pointer(&info->capabilities, g_ptr_array_unref);
}

gboolean mr_stream_has_capability(const MrStreamInfo *info, const char *name)
{
    for (guint i = 0; info->capabilities && i < info->capabilities->len; i++)
        if (strcmp(g_ptr_array_index(info->capabilities, i), name) == 0)
            return TRUE;
    return FALSE;
}

/* A u8/be32-length-prefixed name, kept as the bytes say (printers escape it). A NUL inside
 * ends the C string early, which only shortens what is shown. */
static char *read_name(MrReader *r, gsize len)
{
    char *name = g_malloc(len + 1);
    mr_reader_bytes(r, name, len);
    name[len] = 0;
    return name;
}

static gboolean parse_capabilities(MrReader *r, MrStreamInfo *info, GError **error)
{
    guint32 count = mr_reader_be32(r);
    if (!mr_reader_check(r, "configuration capabilities", error))
        return FALSE;
    if (count > MR_MAX_CAPABILITIES) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "configuration lists %u capabilities (at most %d)", count, MR_MAX_CAPABILITIES);
        return FALSE;
    }
    for (guint32 i = 0; i < count; i++)
        g_ptr_array_add(info->capabilities, read_name(r, mr_reader_u8(r)));
    return mr_reader_check(r, "configuration capabilities", error);
}

/* One "configuration/…" subsection; the list ends when the next byte is not 0x05
 * (vmstate_subsection_load peeks the same way). */
static gboolean parse_subsection(MrReader *r, MrStreamInfo *info, GError **error)
{
    mr_reader_u8(r); /* 0x05 */
    g_autofree char *name = read_name(r, mr_reader_u8(r));
    mr_reader_be32(r); /* subsection version: 1 for all three we know */
    if (!mr_reader_check(r, "configuration section", error))
        return FALSE;
    if (strcmp(name, "configuration/target-page-bits") == 0) {
        info->target_page_bits = mr_reader_be32(r);
        if (!mr_reader_check(r, "configuration section", error))
            return FALSE;
        if (info->target_page_bits < 10 || info->target_page_bits > 16) {
            g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "target page bits %u out of range",
                        info->target_page_bits);
            return FALSE;
        }
    } else if (strcmp(name, "configuration/capabilities") == 0) {
        return parse_capabilities(r, info, error);
    } else if (strcmp(name, "configuration/uuid") == 0) {
        mr_reader_skip(r, 16);
    } else {
        /* Subsection bodies have no length: an unknown one cannot be skipped. */
        g_autofree char *shown = mr_escape_bytes((const guint8 *)name, strlen(name));
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "unknown configuration subsection \"%s\"", shown);
        return FALSE;
    }
    return mr_reader_check(r, "configuration section", error);
}

static gboolean parse_configuration(MrReader *r, MrStreamInfo *info, GError **error)
{
    mr_reader_u8(r); /* 0x07 */
    guint32 len = mr_reader_be32(r);
    if (!mr_reader_check(r, "configuration section", error))
        return FALSE;
    if (len == 0 || len > MR_MAX_MACHINE_TYPE) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "machine type name of %u bytes", len);
        return FALSE;
    }
    info->machine_type = read_name(r, len);
    while (mr_reader_peek_u8(r) == SUBSECTION)
        if (!parse_subsection(r, info, error))
            return FALSE;
    return mr_reader_check(r, "configuration section", error);
}

gboolean mr_stream_parse_header(const MrSource *src, guint64 offset, MrStreamInfo *info,
                                GError **error)
{
    memset(info, 0, sizeof *info);
    info->offset = offset;
    info->capabilities = g_ptr_array_new_with_free_func(g_free);
    MrReader r;
    mr_reader_init(&r, src, offset);
    guint32 magic = mr_reader_be32(&r);
    if (r.error != NULL || magic != QEVM_MAGIC) {
        mr_reader_clear(&r);
        g_set_error(error, MR_ERROR, MR_ERROR_UNKNOWN_FORMAT,
                    "not a QEMU save image (no QEVM magic at offset %" G_GUINT64_FORMAT ")",
                    offset);
        return FALSE;
    }
    guint32 version = mr_reader_be32(&r);
    if (!mr_reader_check(&r, "stream header", error))
        return FALSE;
    if (version != QEVM_VERSION) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "QEMU stream version %u is not supported (expected %d%s)", version,
                    QEVM_VERSION, version == QEVM_VERSION_COMPAT ? "; v2 is obsolete" : "");
        return FALSE;
    }
    if (mr_reader_peek_u8(&r) == SECTION_CONFIGURATION && !parse_configuration(&r, info, error))
        return FALSE;
    if (!mr_reader_check(&r, "stream header", error))
        return FALSE;
    if (mr_reader_peek_u8(&r) < 0) {
        /* Without this a cut right after the machine type would read as "no capabilities". */
        g_set_error(error, MR_ERROR, MR_ERROR_TRUNCATED,
                    "truncated: the file ends after the stream header, at 0x%" G_GINT64_MODIFIER
                    "x",
                    r.pos);
        return FALSE;
    }
    info->body_offset = r.pos;
    return TRUE;
}
