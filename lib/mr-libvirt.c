/* mr-libvirt.c: the libvirt save-image header (libvirt src/qemu/qemu_saveimage.h,
 * struct _virQEMUSaveHeader; qemu-save-formats.md §2). A container, not a format: it only
 * tells where the QEMU stream starts and what libvirt recorded about the save. */
#include "mr-private.h"

#include <string.h>

#define MAGIC_COMPLETE "LibvirtQemudSave"
#define MAGIC_PARTIAL  "LibvirtQemudPart"
#define MAGIC_LEN      16
#define SAVE_VERSION   2 /* QEMU_SAVE_VERSION in every libvirt up to 11.3 */
#define FORMAT_SPARSE  6

static const char *const format_names[] = {"raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"};

const char *mr_libvirt_format_name(guint32 format)
{
    return format < G_N_ELEMENTS(format_names) ? format_names[format] : "unknown";
}

/* The five u32 fields are host-endian in the file; libvirt byte-swaps them all when the
 * version reads as > QEMU_SAVE_VERSION (qemuSaveImageReadHeader), and so do we. */
static guint32 field_u32(const guint8 *head, gsize off, gboolean swap)
{
    guint32 v;
    memcpy(&v, head + off, sizeof v);
    v = GUINT32_FROM_LE(v);
    return swap ? GUINT32_SWAP_LE_BE(v) : v;
}

static gboolean check_format(const MrLibvirtHeader *hdr, GError **error)
{
    if (hdr->format == FORMAT_SPARSE || hdr->format == 0)
        return TRUE; /* 0 = raw sequential stream: the stream layer reads it */
    if (hdr->format < FORMAT_SPARSE) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "libvirt save format %s (%u) compresses the whole stream, which cannot be "
                    "read at random: convert it first with `mramfs-pack IMAGE OUT`",
                    mr_libvirt_format_name(hdr->format), hdr->format);
        return FALSE;
    }
    g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED, "unknown libvirt save format %u",
                hdr->format);
    return FALSE;
}

static gboolean check_lengths(MrLibvirtHeader *hdr, guint64 file_size, GError **error)
{
    hdr->stream_offset = (guint64)MR_LIBVIRT_HEADER_SIZE + hdr->data_len;
    if (hdr->stream_offset > file_size) {
        g_set_error(error, MR_ERROR, MR_ERROR_TRUNCATED,
                    "truncated: libvirt data_len %u puts the QEMU stream past the end of the file",
                    hdr->data_len);
        return FALSE;
    }
    if (hdr->cookie_offset > hdr->data_len) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                    "libvirt cookieOffset %u lies outside data_len %u", hdr->cookie_offset,
                    hdr->data_len);
        return FALSE;
    }
    hdr->xml_len = hdr->cookie_offset ? hdr->cookie_offset : hdr->data_len;
    hdr->cookie_len = hdr->cookie_offset ? hdr->data_len - hdr->cookie_offset : 0;
    return TRUE;
}

gboolean mr_libvirt_parse_any_format(const guint8 *head, gsize len, guint64 file_size,
                                     gboolean *is_libvirt, MrLibvirtHeader *hdr, GError **error)
{
    gboolean partial = len >= MAGIC_LEN && memcmp(head, MAGIC_PARTIAL, MAGIC_LEN) == 0;
    *is_libvirt = partial || (len >= MAGIC_LEN && memcmp(head, MAGIC_COMPLETE, MAGIC_LEN) == 0);
    if (!*is_libvirt)
        return TRUE;
    if (partial) {
        g_set_error(error, MR_ERROR, MR_ERROR_INCOMPLETE,
                    "incomplete libvirt save (LibvirtQemudPart): the save did not finish");
        return FALSE;
    }
    if (len < MR_LIBVIRT_HEADER_SIZE) {
        g_set_error(error, MR_ERROR, MR_ERROR_TRUNCATED,
                    "truncated: libvirt header needs %d bytes, file has %" G_GSIZE_FORMAT,
                    MR_LIBVIRT_HEADER_SIZE, len);
        return FALSE;
    }
    gboolean swap = field_u32(head, 16, FALSE) > SAVE_VERSION;
    memset(hdr, 0, sizeof *hdr);
    hdr->version = field_u32(head, 16, swap);
    hdr->data_len = field_u32(head, 20, swap);
    hdr->was_running = field_u32(head, 24, swap);
    hdr->format = field_u32(head, 28, swap);
    hdr->cookie_offset = field_u32(head, 32, swap);
    if (hdr->version == 0 || hdr->version > SAVE_VERSION) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                    "unsupported libvirt save header version %u (expected 1 or 2)",
                    field_u32(head, 16, FALSE));
        return FALSE;
    }
    return check_lengths(hdr, file_size, error);
}

gboolean mr_libvirt_parse(const guint8 *head, gsize len, guint64 file_size, gboolean *is_libvirt,
                          MrLibvirtHeader *hdr, GError **error)
{
    if (!mr_libvirt_parse_any_format(head, len, file_size, is_libvirt, hdr, error))
        return FALSE;
    return !*is_libvirt || check_format(hdr, error);
}

gboolean mr_libvirt_read_header(const char *path, MrLibvirtHeader *hdr, GError **error)
{
    g_autoptr(MrSource) src = mr_source_open_file(path, error);
    if (src == NULL)
        return FALSE;
    guint8 head[MR_LIBVIRT_HEADER_SIZE];
    gsize len = (gsize)MIN(mr_source_size(src), sizeof head);
    gboolean is_libvirt;
    if (!mr_source_read(src, 0, head, len, error) ||
        !mr_libvirt_parse_any_format(head, len, mr_source_size(src), &is_libvirt, hdr, error))
        return FALSE;
    if (!is_libvirt) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNKNOWN_FORMAT, "not a libvirt save image");
        return FALSE;
    }
    return TRUE;
}
