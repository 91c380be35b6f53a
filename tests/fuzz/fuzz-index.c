/* fuzz-index: the legacy page index file (mr-index-cache.c). It is ours, but it sits in a
 * user-writable cache directory and is read as untrusted: counts, slots and decoded pages
 * must all be checked against the image before use. A small legacy image is built once;
 * the input is the index body after its identity key (magic, version, byte order, device,
 * inode, size, times, stream offset), which the harness fills in for that image, and the
 * checksum the harness appends: the fuzzer works on what a checksum cannot protect against
 * (a file written by a hostile user with a matching checksum). The image is then opened
 * with -o index=<that file> and read fully: a rejected index makes the open rescan, so the
 * result must serve the same bytes either way.
 *
 * MRAMFS_FUZZ_SEED=PATH: write the body of a valid index of the image there (the seed). */
#include "fuzz-common.h"
#include "image-builder.h"

#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KEY_LEN 88 /* G_STRUCT_OFFSET(IndexHeader, vmdesc_offset) in mr-index-cache.c */

static GBytes *image;
static guint8 key[KEY_LEN];
static int index_fd = -1;
static char index_path[64];

/* mr-index-cache.c checksum(). */
static guint64 checksum(const guint8 *data, gsize len)
{
    guint64 h = G_GUINT64_CONSTANT(0xcbf29ce484222325);
    gsize i = 0;
    for (; i + 8 <= len; i += 8) {
        guint64 w;
        memcpy(&w, data + i, 8);
        h = (h ^ w) * G_GUINT64_CONSTANT(0x100000001b3);
        h ^= h >> 29;
    }
    for (; i < len; i++)
        h = (h ^ data[i]) * G_GUINT64_CONSTANT(0x100000001b3);
    return h;
}

static GBytes *build_image(void)
{
    static const guint8 delta[] = {0x00, 0x04, 'm', 'r', 'a', 'm', 0x10, 0x02, 'f', 's'};
    IbSpec s;
    ib_spec_init_legacy(&s);
    s.machine_type = "pc-q35-10.0";
    ib_add_block(&s, "pc.ram", 16 * 4096, 4096);
    ib_add_block(&s, "/rom@etc/acpi/tables", 2 * 4096, 4096);
    ib_rec_eos(&s);
    ib_rec_part(&s);
    ib_rec_page(&s, "pc.ram", 0, 1);
    ib_rec_page(&s, NULL, 1, 2);
    ib_rec_zero(&s, NULL, 2);
    ib_rec_page(&s, NULL, 5, 3);
    ib_rec_xbzrle(&s, NULL, 5, delta, sizeof delta);
    ib_rec_page(&s, "/rom@etc/acpi/tables", 1, 4);
    ib_rec_eos(&s);
    ib_rec_end(&s);
    ib_rec_page(&s, "pc.ram", 9, 5);
    ib_rec_eos(&s);
    GBytes *out = ib_build_bytes(&s);
    ib_spec_clear(&s);
    return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    image = build_image();
    index_fd = memfd_create("mramfs-fuzz-index", MFD_CLOEXEC);
    g_assert(index_fd >= 0);
    g_snprintf(index_path, sizeof index_path, "/proc/self/fd/%d", index_fd);

    /* A valid index of the image, written by the real code, gives the key (and the seed). */
    g_autofree char *tmp = NULL;
    int fd = g_file_open_tmp("mramfs-fuzz-XXXXXX.idx", &tmp, NULL);
    g_assert(fd >= 0);
    close(fd);
    g_unlink(tmp);
    MrOpenOptions opts = {.index_path = tmp};
    g_autoptr(GError) error = NULL;
    g_autoptr(MrImage) img =
        mr_image_open_source(mr_source_new_from_bytes(image), "fuzz.img", &opts, &error);
    g_assert_no_error(error);
    g_assert(img != NULL);
    g_autofree char *idx = NULL;
    gsize len = 0;
    g_assert(g_file_get_contents(tmp, &idx, &len, NULL) && len > KEY_LEN + 8);
    g_unlink(tmp);
    memcpy(key, idx, KEY_LEN);
    const char *seed = g_getenv("MRAMFS_FUZZ_SEED");
    if (seed != NULL)
        g_assert(g_file_set_contents(seed, idx + KEY_LEN, (gssize)(len - KEY_LEN - 8), NULL));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    g_autoptr(GByteArray) file = g_byte_array_sized_new(KEY_LEN + (guint)size + 8);
    g_byte_array_append(file, key, KEY_LEN);
    g_byte_array_append(file, data, (guint)size);
    guint64 sum = checksum(file->data, file->len);
    g_byte_array_append(file, (const guint8 *)&sum, 8);
    if (ftruncate(index_fd, 0) != 0 || pwrite(index_fd, file->data, file->len, 0) != file->len)
        abort();
    MrOpenOptions opts = {.index_path = index_path};
    fuzz_open_bytes(g_bytes_get_data(image, NULL), g_bytes_get_size(image), &opts);
    return 0;
}
