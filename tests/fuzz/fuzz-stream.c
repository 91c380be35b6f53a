/* fuzz-stream: the QEMU stream header, the configuration section (machine type,
 * capabilities, target-page-bits, uuid) and the section framing up to RAM: first through
 * mr_stream_parse_header alone, then as a whole image (capabilities pick the format).
 * Seeds are short: headers and configurations cut from real saves. */
#include "fuzz-common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GBytes) bytes = g_bytes_new(data, size);
    g_autoptr(MrSource) src = mr_source_new_from_bytes(bytes);
    MrStreamInfo info = {0};
    g_autoptr(GError) error = NULL;
    if (mr_stream_parse_header(src, 0, &info, &error)) {
        if (info.body_offset > size || info.body_offset < info.offset)
            abort(); /* the configuration cannot end outside the file */
        (void)mr_stream_has_capability(&info, "mapped-ram");
    } else if (error == NULL) {
        abort();
    }
    mr_stream_info_clear(&info);
    fuzz_open_bytes(data, size, NULL);
    return 0;
}
