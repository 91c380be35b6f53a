/* fuzz-legacy: a whole image file holding a legacy (non-mapped-ram) stream: the scanner
 * that indexes page, zero and XBZRLE records across PART/END sections, then everything the
 * index serves. Seeds: legacy saves of a paused and of a live guest (resent pages, XBZRLE). */
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
    fuzz_open_bytes(data, size, NULL);
    return 0;
}
