/* mr-fmt-legacy.c: sequential (non-mapped-ram) QEMU streams, as `migrate file:` without the
 * capability and every `virsh save` before libvirt 11.2 write them (qemu-save-formats.md §6).
 * Pages there are records in stream order, with no bitmap; serving them needs an index of
 * the whole stream, which a later release builds. Until then this reader claims such
 * streams only to name them in a clear error. */
#include "mr-private.h"

static gboolean legacy_probe(const MrStreamInfo *info)
{
    return !mr_stream_has_capability(info, "mapped-ram");
}

static gboolean legacy_open(MrImage *img, GError **error)
{
    (void)img;
    g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                "legacy (non-mapped-ram) migration stream: not supported yet; save with the "
                "mapped-ram capability or `virsh save --image-format sparse`");
    return FALSE;
}

const MrFormat mr_format_legacy = {
    .name = "legacy",
    .probe = legacy_probe,
    .open = legacy_open,
};
