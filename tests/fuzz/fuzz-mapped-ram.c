/* fuzz-mapped-ram: a whole image file, as `mramfs IMAGE` opens it. The seeds are mapped-ram
 * saves (x86 pc/q35, aarch64 and riscv64 virt), so the fuzzer mostly works on the RAM block
 * table, the MappedRamHeaders, their regions and bitmaps, then on what follows: device
 * state, the guest-physical and ELF views, the tree. */
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
