/* fuzz-packed: a packed image (docs/packed-format.md), as `mramfs PACKED` opens it, then
 * `mramfs-pack --verify` and (small images) `--unpack` over the same bytes.
 *
 * The input is one flags byte, then the file. Checksums guard everything in a packed file,
 * so a mutated file would mostly stop at the first checksum; the flags make the harness
 * repair them first, so the fuzzer reaches what a checksum cannot protect against (a file
 * written with valid checksums by a hostile packer):
 *   bit 0  the header's own checksum and its index SHA-256 are recomputed (§2.1)
 *   bit 1  each frame's index checksum is set to the trailer its bytes end with (§2.2), so
 *          hostile zstd frames are decoded
 * With both bits clear the checksum paths themselves are fuzzed.
 *
 * The seeds (corpus/packed/) are `mramfs-pack --frame-size 4K` of the mapped-ram and legacy
 * seeds cut from real QEMU saves (make-seeds.py), with flags 0x03. */
#include "fuzz-common.h"

#include "mr-packfmt.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FIX_HEADER 0x01
#define FIX_FRAMES 0x02
#define CACHE_SIZE (1u << 20) /* small: eviction runs on every input */
#define UNPACK_MAX (16u << 20)
#define HEADER_SUM 112 /* the header checksum covers bytes [0, 112), stored at 112 */

static int file_fd = -1, out_fd = -1;
static char file_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    fuzz_corrupt_reads_ok = TRUE;
    file_fd = memfd_create("mramfs-fuzz-packed", MFD_CLOEXEC);
    out_fd = memfd_create("mramfs-fuzz-unpacked", MFD_CLOEXEC);
    g_assert(file_fd >= 0 && out_fd >= 0);
    g_snprintf(file_path, sizeof file_path, "/proc/self/fd/%d", file_fd);
    return 0;
}

/* Decode the header after making its own checksum right; FALSE if it is still refused. */
static gboolean header_fixed(guint8 *file, gsize size, MrPackHeader *h)
{
    if (size < MR_PACK_HEADER_SIZE)
        return FALSE;
    guint8 sum[32];
    mr_pack_sha256(file, HEADER_SUM, sum);
    memcpy(file + HEADER_SUM, sum, MR_PACK_HEADER_SIZE - HEADER_SUM);
    return mr_pack_header_decode(file, size, size, h, NULL);
}

/* Point the header at the index bytes as they are now. */
static void seal_index(guint8 *file, MrPackHeader *h)
{
    mr_pack_sha256(file + h->index_offset, (gsize)h->index_size, h->index_sha256);
    mr_pack_header_encode(h, file);
}

/* Each frame's index checksum := the trailer of its stored bytes, then reseal. */
static void fix_frames(guint8 *file, gsize size, MrPackHeader *h)
{
    MrPackIndex idx;
    mr_pack_index_init(&idx);
    if (mr_pack_index_decode(h, file + h->index_offset, (gsize)h->index_size, &idx, NULL)) {
        for (guint i = 0; i < idx.frames->len; i++) {
            MrPackFrame *f = &g_array_index(idx.frames, MrPackFrame, i);
            if (f->csize >= 4 && f->offset <= size && f->csize <= size - f->offset) {
                guint32 trailer;
                memcpy(&trailer, file + f->offset + f->csize - 4, 4);
                f->checksum = GUINT32_FROM_LE(trailer);
            }
        }
        g_autoptr(GByteArray) enc = mr_pack_index_encode(&idx);
        if (enc->len == h->index_size) {
            memcpy(file + h->index_offset, enc->data, enc->len);
            seal_index(file, h);
        }
    }
    mr_pack_index_clear(&idx);
}

static void repair(guint8 flags, guint8 *file, gsize size)
{
    MrPackHeader h;
    if (!(flags & (FIX_HEADER | FIX_FRAMES)) || !header_fixed(file, size, &h))
        return;
    /* The header decoder has checked that the index lies inside the file. */
    seal_index(file, &h);
    if (flags & FIX_FRAMES)
        fix_frames(file, size, &h);
}

static void check_error(const GError *error)
{
    if (error == NULL || error->domain != MR_ERROR)
        abort(); /* every failure says why, in MR_ERROR */
}

/* mramfs-pack --verify, then --unpack when the image is small enough to write here. */
static void verify_and_unpack(const guint8 *file, gsize size)
{
    if (ftruncate(file_fd, 0) != 0 || pwrite(file_fd, file, size, 0) != (ssize_t)size)
        abort();
    g_autoptr(GError) error = NULL;
    MrPackStats stats;
    if (!mr_verify(file_path, NULL, NULL, &stats, &error)) {
        check_error(error);
        return;
    }
    if (stats.image_size > UNPACK_MAX)
        return;
    if (ftruncate(out_fd, 0) != 0)
        abort();
    if (!mr_unpack(file_path, out_fd, NULL, NULL, &error))
        check_error(error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    gsize file_size = size - 1;
    g_autofree guint8 *file = g_memdup2(data + 1, file_size);
    repair(data[0], file, file_size);
    MrOpenOptions opts = {.cache_size = CACHE_SIZE};
    fuzz_open_bytes(file, file_size, &opts);
    verify_and_unpack(file, file_size);
    return 0;
}
