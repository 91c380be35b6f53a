/* mr-image.c: the image core. Picks the container (libvirt header or a bare stream) and
 * the format reader, then serves every block's bytes and extents from its bitmap. It
 * knows no byte layout of its own: that lives in mr-libvirt.c, mr-stream.c, mr-fmt-*.c. */
#include "mr-private.h"
#include "mr-frame-cache.h"

#include <string.h>

G_DEFINE_QUARK(mr - error - quark, mr_error)

/* Readers are asked in order; the first whose probe accepts the stream opens it. */
static const MrFormat *const formats[] = {&mr_format_mapped_ram, &mr_format_legacy};

MrBlock *mr_block_new(void)
{
    return g_new0(MrBlock, 1);
}

void mr_block_free(MrBlock *blk)
{
    if (blk == NULL)
        return;
    mr_bitmap_clear(&blk->bitmap);
    if (blk->priv_free != NULL)
        blk->priv_free(blk->priv);
    g_free(blk);
}

char *mr_escape_bytes(const guint8 *bytes, gsize len)
{
    GString *out = g_string_sized_new(len);
    for (gsize i = 0; i < len; i++) {
        if (bytes[i] >= 0x20 && bytes[i] < 0x7f && bytes[i] != '\\')
            g_string_append_c(out, (char)bytes[i]);
        else
            g_string_append_printf(out, "\\x%02x", bytes[i]);
    }
    return g_string_free(out, FALSE);
}

gboolean mr_parse_number(const char *text, guint64 *value)
{
    gboolean hex = g_str_has_prefix(text, "0x") || g_str_has_prefix(text, "0X");
    return g_ascii_string_to_unsigned(hex ? text + 2 : text, hex ? 16 : 10, 0, G_MAXINT64, value,
                                      NULL);
}

gboolean mr_parse_offset(const char *text, MrOpenOptions *opts)
{
    if (!mr_parse_number(text, &opts->stream_offset))
        return FALSE;
    opts->has_stream_offset = TRUE;
    return TRUE;
}

/* Where the QEMU stream starts: after a libvirt header, at the user's offset, or at 0. */
static gboolean find_stream(MrImage *img, const MrOpenOptions *opts, guint64 *offset,
                            GError **error)
{
    guint8 head[MR_LIBVIRT_HEADER_SIZE];
    gsize len = (gsize)MIN(mr_source_size(img->src), sizeof head);
    if (!mr_source_read(img->src, 0, head, len, error))
        return FALSE;
    if (!mr_libvirt_parse(head, len, mr_source_size(img->src), &img->has_libvirt, &img->libvirt,
                          error)) {
        g_prefix_error(error, "libvirt header: ");
        return FALSE;
    }
    /* An explicit offset is the user's word; the libvirt header is still parsed (and must be
     * complete) because it describes the save. */
    if (opts && opts->has_stream_offset)
        *offset = opts->stream_offset;
    else
        *offset = img->has_libvirt ? img->libvirt.stream_offset : 0;
    return TRUE;
}

/* The domain XML and the cookie: NUL-terminated texts after the header (§2). libvirt
 * itself reads at most data_len bytes; we keep at most 16 MiB of each. */
static GBytes *read_libvirt_text(MrImage *img, guint64 offset, guint64 len, GError **error)
{
    len = MIN(len, (guint64)16 << 20);
    g_autofree char *text = g_malloc(len + 1);
    if (!mr_source_read(img->src, offset, text, len, error))
        return NULL;
    text[len] = 0;
    gsize used = strlen(text);
    return g_bytes_new_take(g_steal_pointer(&text), used);
}

static gboolean read_libvirt_texts(MrImage *img, GError **error)
{
    const MrLibvirtHeader *h = &img->libvirt;
    if (!img->has_libvirt)
        return TRUE;
    img->libvirt_xml = read_libvirt_text(img, MR_LIBVIRT_HEADER_SIZE, h->xml_len, error);
    if (img->libvirt_xml == NULL)
        return FALSE;
    if (h->cookie_offset == 0)
        return TRUE;
    img->libvirt_cookie =
        read_libvirt_text(img, MR_LIBVIRT_HEADER_SIZE + h->cookie_offset, h->cookie_len, error);
    return img->libvirt_cookie != NULL;
}

/* The VM description that closes the save: found within the last 64 MiB (mr-sections.c),
 * so it is bounded by that. */
static gboolean read_vmdesc(MrImage *img, GError **error)
{
    g_autofree char *json = g_malloc(img->vmdesc_len + 1);
    if (!mr_source_read(img->src, img->vmdesc_offset, json, img->vmdesc_len, error)) {
        g_prefix_error(error, "VM description: ");
        return FALSE;
    }
    img->vmdesc = g_bytes_new_take(g_steal_pointer(&json), img->vmdesc_len);
    return TRUE;
}

/* Device state feeds the views (registers, the VGA BAR) but is not needed to serve RAM: a
 * description we cannot follow costs those views, with the reason in the description,
 * never the mount. */
static void load_device_state(MrImage *img)
{
    g_autoptr(GError) error = NULL;
    if (!mr_devstate_load(img, &error) || !mr_cpu_load(img, &error)) {
        img->devstate_about = g_strdup(error->message);
        return;
    }
    img->cpus_json = mr_cpu_json(img);
}

static const MrFormat *pick_format(const MrStreamInfo *info)
{
    for (gsize i = 0; i < G_N_ELEMENTS(formats); i++)
        if (formats[i]->probe(info))
            return formats[i];
    return NULL;
}

MrImage *mr_image_open_source(MrSource *src, const char *path, const MrOpenOptions *opts,
                              GError **error)
{
    g_autoptr(MrImage) img = g_new0(MrImage, 1);
    img->path = g_strdup(path);
    img->blocks = g_ptr_array_new_with_free_func((GDestroyNotify)mr_block_free);
    img->src = src;
    if (opts != NULL)
        img->opts = *opts;
    guint64 stream_offset = 0;
    if (!find_stream(img, opts, &stream_offset, error) ||
        !mr_stream_parse_header(img->src, stream_offset, &img->stream, error))
        return NULL;
    const MrFormat *format = pick_format(&img->stream);
    if (format == NULL) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNKNOWN_FORMAT, "no reader for this stream");
        return NULL;
    }
    img->format_name = format->name;
    if (!format->open(img, error) || !read_libvirt_texts(img, error) || !read_vmdesc(img, error))
        return NULL;
    load_device_state(img);
    mr_physmem_build(img, &img->opts);
    mr_elfcore_build(img);
    img->opts.index_path = NULL; /* borrowed strings end with the call */
    img->opts.progress = NULL;
    return g_steal_pointer(&img);
}

/* A packed image (docs/packed-format.md) is recognised by its magic at offset 0 and read
 * through a virtual source that gives the original image's bytes. */
static gboolean is_packed_source(const MrSource *src)
{
    guint8 head[8];
    return mr_source_size(src) >= sizeof head && mr_source_read(src, 0, head, sizeof head, NULL) &&
           memcmp(head, "MRAMPACK", sizeof head) == 0;
}

MrImage *mr_image_open_any(MrSource *src, const char *path, const MrOpenOptions *opts,
                           GError **error)
{
    /* G_DEFINE_QUARK fills its static on first use without a lock: make that first use
     * here, before the FUSE and read-ahead threads that fail reads with MR_ERROR exist. */
    (void)MR_ERROR;
    MrFrameCache *cache = NULL;
    if (is_packed_source(src)) {
        MrPacked *pk = mr_packed_open(src, opts ? opts->cache_size : 0, error);
        if (pk == NULL)
            return NULL;
        cache = mr_packed_cache(pk);
        src = mr_packed_source(pk);
    }
    /* The original image inside is opened as it is, never as packed again: a packed file
     * whose image starts with the magic would otherwise nest without bound. */
    MrImage *img = mr_image_open_source(src, path, opts, error);
    if (img != NULL) {
        img->packed = cache != NULL;
        img->cache = cache;
    }
    return img;
}

MrImage *mr_image_open(const char *path, const MrOpenOptions *opts, GError **error)
{
    MrSource *src = mr_source_open_file(path, error);
    if (src == NULL)
        return NULL;
    return mr_image_open_any(src, path, opts, error);
}

void mr_image_start_readahead(MrImage *img, guint n_workers)
{
    if (img->cache != NULL)
        mr_frame_cache_start_workers(img->cache, n_workers ? n_workers : g_get_num_processors());
}

gboolean mr_image_is_packed(const MrImage *img)
{
    return img->packed;
}

void mr_image_free(MrImage *img)
{
    if (img == NULL)
        return;
    g_clear_pointer(&img->blocks, g_ptr_array_unref);
    mr_stream_info_clear(&img->stream);
    g_clear_pointer(&img->libvirt_xml, g_bytes_unref);
    g_clear_pointer(&img->libvirt_cookie, g_bytes_unref);
    g_clear_pointer(&img->vmdesc, g_bytes_unref);
    g_free(img->legacy.index_path);
    mr_block_free(img->physmem);
    g_free(img->physmem_about);
    mr_block_free(img->elfcore);
    g_clear_pointer(&img->cpus, g_array_unref);
    g_clear_pointer(&img->cpus_json, g_bytes_unref);
    g_free(img->devstate_about);
    mr_devstate_clear(img);
    mr_source_free(img->src);
    g_free(img->path);
    g_free(img);
}

const char *mr_image_path(const MrImage *img)
{
    return img->path;
}

const struct stat *mr_image_file_stat(const MrImage *img)
{
    return mr_source_stat(img->src);
}

const char *mr_image_format(const MrImage *img)
{
    return img->format_name;
}

const char *mr_image_container(const MrImage *img)
{
    return img->has_libvirt ? "libvirt" : "qemu";
}

const char *mr_image_machine_type(const MrImage *img)
{
    return img->stream.machine_type;
}

const GPtrArray *mr_image_capabilities(const MrImage *img)
{
    return img->stream.capabilities;
}

const MrBlock *mr_image_physmem(const MrImage *img)
{
    return img->physmem;
}

const char *mr_image_physmem_about(const MrImage *img)
{
    return img->physmem_about;
}

const MrBlock *mr_image_elfcore(const MrImage *img)
{
    return img->elfcore;
}

GBytes *mr_image_cpus_json(const MrImage *img)
{
    return img->cpus_json;
}

GBytes *mr_image_vmdesc(const MrImage *img)
{
    return img->vmdesc;
}

GBytes *mr_image_libvirt_xml(const MrImage *img)
{
    return img->libvirt_xml;
}

GBytes *mr_image_libvirt_cookie(const MrImage *img)
{
    return img->libvirt_cookie;
}

guint64 mr_image_stream_offset(const MrImage *img)
{
    return img->stream.offset;
}

guint mr_image_n_blocks(const MrImage *img)
{
    return img->blocks->len;
}

const MrBlock *mr_image_block(const MrImage *img, guint index)
{
    g_return_val_if_fail(index < img->blocks->len, NULL);
    return g_ptr_array_index(img->blocks, index);
}

const guint8 *mr_block_idstr(const MrBlock *blk, gsize *len)
{
    *len = blk->idstr_len;
    return blk->idstr;
}

guint64 mr_block_size(const MrBlock *blk)
{
    return blk->size;
}

guint32 mr_block_page_size(const MrBlock *blk)
{
    return blk->page_size;
}

guint64 mr_block_data_pages(const MrBlock *blk)
{
    return blk->bitmap.n_set;
}

guint64 mr_block_bitmap_offset(const MrBlock *blk)
{
    return blk->bitmap_offset;
}

guint64 mr_block_pages_offset(const MrBlock *blk)
{
    return blk->pages_offset;
}

gssize mr_block_pread(const MrBlock *blk, void *buf, gsize len, guint64 offset, GError **error)
{
    if (offset >= blk->size)
        return 0;
    len = (gsize)MIN((guint64)len, blk->size - offset);
    guint8 *out = buf;
    guint64 pos = offset, end = offset + len;
    /* Alternate runs of data pages (read from the image) and hole pages (zeros, whatever
     * stale bytes the slot holds: qemu-save-formats.md §5.4). */
    guint64 last_page = (end + blk->page_size - 1) / blk->page_size;
    while (pos < end) {
        guint64 page = pos / blk->page_size;
        gboolean data = mr_bitmap_test(&blk->bitmap, page);
        guint64 run_end_page = data ? mr_bitmap_next_clear_until(&blk->bitmap, page, last_page)
                                    : mr_bitmap_next_set_until(&blk->bitmap, page, last_page);
        guint64 run_end = MIN(run_end_page * blk->page_size, end);
        if (!data)
            memset(out + (pos - offset), 0, (gsize)(run_end - pos));
        else if (!blk->ops->read_data(blk, out + (pos - offset), pos, (gsize)(run_end - pos),
                                      error))
            return -1;
        pos = run_end;
    }
    return (gssize)len;
}

gboolean mr_block_seek(const MrBlock *blk, guint64 offset, MrSeekWhence whence, guint64 *result,
                       GError **error)
{
    if (offset >= blk->size) {
        g_set_error(error, MR_ERROR, MR_ERROR_NO_MORE, "offset at or past the end");
        return FALSE;
    }
    guint64 page = offset / blk->page_size;
    gboolean data = mr_bitmap_test(&blk->bitmap, page);
    if (whence == MR_SEEK_DATA ? data : !data) {
        *result = offset; /* already inside what was asked for */
        return TRUE;
    }
    guint64 next = whence == MR_SEEK_DATA ? mr_bitmap_next_set(&blk->bitmap, page)
                                          : mr_bitmap_next_clear(&blk->bitmap, page);
    if (next >= blk->n_pages) {
        if (whence == MR_SEEK_DATA) {
            g_set_error(error, MR_ERROR, MR_ERROR_NO_MORE, "no data after the offset");
            return FALSE;
        }
        *result = blk->size; /* the end of the file is a hole */
        return TRUE;
    }
    *result = next * blk->page_size;
    return TRUE;
}
