/* mr-describe.c: the machine-readable image description (`.mramfs.json` in a mount,
 * `mramfs-inspect --json`). Fields are documented in docs/file-tree.md. */
#include "mr-private.h"

#include <string.h>

/* A JSON string from bytes of the image. Valid UTF-8 is kept (so "path" names the file the
 * mount shows), with quote, backslash and control characters escaped; bytes that are not
 * valid UTF-8 cannot be written exactly in JSON, so such a string is written byte by byte,
 * each non-ASCII byte as \u00XX (read as Latin-1). */
void mr_json_append_bytes(GString *out, const guint8 *bytes, gsize len)
{
    gboolean utf8 = g_utf8_validate((const char *)bytes, (gssize)len, NULL);
    g_string_append_c(out, '"');
    for (gsize i = 0; i < len; i++) {
        guint8 c = bytes[i];
        if (c == '"' || c == '\\')
            g_string_append_printf(out, "\\%c", c);
        else if ((c >= 0x20 && c < 0x7f) || (utf8 && c >= 0x80))
            g_string_append_c(out, (char)c);
        else
            g_string_append_printf(out, "\\u%04x", c);
    }
    g_string_append_c(out, '"');
}

void mr_json_append_string(GString *out, const char *s)
{
    if (s == NULL)
        g_string_append(out, "null");
    else
        mr_json_append_bytes(out, (const guint8 *)s, strlen(s));
}

static void append_libvirt(GString *out, const MrImage *img)
{
    if (!img->has_libvirt) {
        g_string_append(out, "null");
        return;
    }
    const MrLibvirtHeader *h = &img->libvirt;
    g_string_append_printf(
        out,
        "{\"version\": %u, \"format\": %u, \"format_name\": \"%s\", "
        "\"was_running\": %u, \"data_len\": %u, \"xml_length\": %" G_GUINT64_FORMAT
        ", \"cookie_length\": %" G_GUINT64_FORMAT "}",
        h->version, h->format, mr_libvirt_format_name(h->format), h->was_running, h->data_len,
        h->xml_len, h->cookie_len);
}

/* How a legacy stream's index was made: the record counts, and where it is kept. */
static void append_legacy(GString *out, const MrImage *img)
{
    if (strcmp(img->format_name, "legacy") != 0)
        return;
    const MrLegacyStats *st = &img->legacy;
    g_string_append_printf(out,
                           ",\n  \"legacy\": {\"page_records\": %" G_GUINT64_FORMAT
                           ", \"zero_records\": %" G_GUINT64_FORMAT
                           ", \"xbzrle_records\": %" G_GUINT64_FORMAT
                           ", \"resent\": %" G_GUINT64_FORMAT ", \"index\": ",
                           st->page_records, st->zero_records, st->xbzrle_records, st->resent);
    mr_json_append_string(out, st->index_path);
    g_string_append_printf(out, ", \"index_from_cache\": %s}", st->from_cache ? "true" : "false");
}

static void append_capabilities(GString *out, const MrStreamInfo *info)
{
    g_string_append_c(out, '[');
    for (guint i = 0; i < info->capabilities->len; i++) {
        if (i > 0)
            g_string_append(out, ", ");
        mr_json_append_string(out, g_ptr_array_index(info->capabilities, i));
    }
    g_string_append_c(out, ']');
}

static void append_block(GString *out, const MrBlock *b, const char *path)
{
    g_string_append(out, "    {\"idstr\": ");
    mr_json_append_bytes(out, b->idstr, b->idstr_len);
    g_string_append(out, ", \"path\": ");
    mr_json_append_string(out, path);
    g_string_append_printf(
        out,
        ", \"size\": %" G_GUINT64_FORMAT ", \"page_size\": %u, \"pages\": %" G_GUINT64_FORMAT
        ", \"data_pages\": %" G_GUINT64_FORMAT ", \"bitmap_offset\": %" G_GUINT64_FORMAT
        ", \"pages_offset\": %" G_GUINT64_FORMAT "}",
        b->size, b->page_size, b->n_pages, b->bitmap.n_set, b->bitmap_offset, b->pages_offset);
}

/* The page size of the image: the target page size every block header carries. */
static guint32 image_page_size(const MrImage *img)
{
    if (img->blocks->len > 0)
        return ((const MrBlock *)g_ptr_array_index(img->blocks, 0))->page_size;
    return img->stream.target_page_bits ? 1u << img->stream.target_page_bits : 4096;
}

/* What the device state gave: section count, CPUs and architecture, or why nothing. */
static void append_device_state(GString *out, const MrImage *img)
{
    g_string_append_printf(out, ",\n  \"device_state\": {\"sections\": %u, \"cpus\": %u",
                           mr_devstate_n_devices(img), img->cpus ? img->cpus->len : 0);
    if (img->cpus != NULL && img->cpus->len > 0)
        g_string_append_printf(out, ", \"arch\": \"%s\"", mr_arch_name(img->arch));
    if (img->devstate_about != NULL) {
        g_string_append(out, ", \"error\": ");
        mr_json_append_string(out, img->devstate_about);
    }
    g_string_append_c(out, '}');
}

char *mr_image_describe_json(const MrImage *img)
{
    GString *out = g_string_new("{\n  \"image\": ");
    mr_json_append_string(out, img->path);
    g_string_append_printf(out, ",\n  \"format\": \"%s\",\n  \"container\": \"%s\"",
                           img->format_name, mr_image_container(img));
    g_string_append_printf(out,
                           ",\n  \"stream_offset\": %" G_GUINT64_FORMAT
                           ",\n  \"file_size\": %" G_GUINT64_FORMAT ",\n  \"machine_type\": ",
                           img->stream.offset, mr_source_size(img->src));
    mr_json_append_string(out, img->stream.machine_type);
    g_string_append_printf(out,
                           ",\n  \"page_size\": %u,\n  \"capabilities\": ", image_page_size(img));
    append_capabilities(out, &img->stream);
    g_string_append_printf(out, ",\n  \"complete\": true,\n  \"vmdesc\": %s,\n  \"libvirt\": ",
                           img->has_vmdesc ? "true" : "false");
    append_libvirt(out, img);
    append_legacy(out, img);
    mr_physmem_describe(img, out);
    append_device_state(out, img);
    g_string_append(out, ",\n  \"blocks\": [\n");
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    for (guint i = 0; i < img->blocks->len; i++) {
        append_block(out, g_ptr_array_index(img->blocks, i), g_ptr_array_index(paths, i));
        g_string_append(out, i + 1 < img->blocks->len ? ",\n" : "\n");
    }
    g_string_append(out, "  ]\n}\n");
    return g_string_free(out, FALSE);
}
