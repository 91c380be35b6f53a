/* fuzz-devstate: the device state walk (mr-devstate.c: the VM description JSON, each FULL
 * section measured from it, subsections) and what is built on it (mr-cpu.c registers and
 * cpus.json, the VGA BAR of the guest-physical view, the ELF notes). A small valid
 * mapped-ram image (x86 q35, aarch64 virt or riscv64 virt) is built once per architecture;
 * the input supplies the device sections and the description that close it, so the fuzzer
 * never spends time on RAM.
 *
 * Input: u8 architecture (0 x86, 1 aarch64, 2 riscv64), u32 little-endian length of the
 * device state, the device state (FULL sections as QEMU writes them), the description JSON.
 * The EOF byte and the VMDESC header (0x06, be32 length) are written between the two. */
#include "fuzz-common.h"
#include "image-builder.h"

#include <string.h>

static GByteArray *prefixes[3];

static GByteArray *build_prefix(const char *machine, const char *ram)
{
    IbSpec s;
    ib_spec_init(&s);
    s.machine_type = machine;
    IbBlock *b = ib_add_block(&s, ram, 4 * 4096, 4096);
    ib_block_set_data(b, 0, 2);
    ib_block_set_data(ib_add_block(&s, "bios", 4096, 4096), 0, 1);
    s.device_state = FALSE;
    s.eof = FALSE;
    s.vmdesc = FALSE;
    GByteArray *out = ib_build(&s);
    ib_spec_clear(&s);
    return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    prefixes[0] = build_prefix("pc-q35-10.0", "pc.ram");
    prefixes[1] = build_prefix("virt-10.0", "mach-virt.ram");
    prefixes[2] = build_prefix("virt", "riscv_virt_board.ram");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    const GByteArray *prefix = prefixes[data[0] % 3];
    guint32 dev_len =
        (guint32)data[1] | (guint32)data[2] << 8 | (guint32)data[3] << 16 | (guint32)data[4] << 24;
    dev_len = (guint32)MIN((gsize)dev_len, size - 5);
    const guint8 *dev = data + 5, *json = dev + dev_len;
    gsize json_len = size - 5 - dev_len;

    g_autoptr(GByteArray) img = g_byte_array_sized_new(prefix->len + (guint)size + 6);
    g_byte_array_append(img, prefix->data, prefix->len);
    g_byte_array_append(img, dev, dev_len);
    guint8 tail[6] = {0x00,
                      0x06,
                      (guint8)(json_len >> 24),
                      (guint8)(json_len >> 16),
                      (guint8)(json_len >> 8),
                      (guint8)json_len};
    g_byte_array_append(img, tail, sizeof tail);
    g_byte_array_append(img, json, (guint)json_len);
    fuzz_open_bytes(img->data, img->len, NULL);
    return 0;
}
