/* fuzz-libvirt: image detection and the libvirt save header. The header parser alone
 * (mr_libvirt_parse_any_format, as mramfs-pack reads compressed saves), then the whole
 * input opened as an image: the domain XML and cookie, the stream at data_len, the XML's
 * hints for the guest-physical view. Also opens the input with an explicit stream offset
 * taken from its last byte (the `-o offset=` path). */
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
    MrLibvirtHeader hdr;
    gboolean is_libvirt = FALSE;
    g_autoptr(GError) error = NULL;
    if (mr_libvirt_parse_any_format(data, MIN(size, (size_t)MR_LIBVIRT_HEADER_SIZE), size,
                                    &is_libvirt, &hdr, &error)) {
        if (is_libvirt && hdr.stream_offset > size)
            abort(); /* the header promised a stream inside the file */
        (void)mr_libvirt_format_name(hdr.format);
    }
    fuzz_open_bytes(data, size, NULL);
    if (size > 0 && data[size - 1] < 128) {
        MrOpenOptions opts = {.has_stream_offset = TRUE, .stream_offset = data[size - 1]};
        fuzz_open_bytes(data, size, &opts);
    }
    return 0;
}
