/* fuzz-common.h: what the libFuzzer harnesses of tests/fuzz share.
 *
 * Every harness hands hostile bytes to a real entry point of libmramfs, then uses whatever
 * opened the way a mount would: every block, the guest-physical and ELF views, the tree and
 * every generated file. Reads go in bounded chunks and never trust a size to allocate; a
 * view too large to read whole within the per-input budget is sampled (its first and last
 * pages and the start of every extent the SEEK_DATA/SEEK_HOLE walk finds), so that a 64 GiB
 * mostly-hole block does not make one input take minutes. Invariants a mount relies on
 * (read lengths, seek results, holes reading as zeros) abort(): the fuzzer reports them. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "mr-private.h"

/* libFuzzer's entry points. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* GSlice off (so LeakSanitizer sees every allocation), criticals and warnings fatal. */
void fuzz_init(void);

/* Set by harnesses whose format stores checksummed data (packed frames): a block read may
 * then fail with MR_ERROR_CORRUPT, as it gives EIO in a mount. Otherwise a read error aborts. */
extern gboolean fuzz_corrupt_reads_ok;

/* Read all of @blk (or sample it, see above) and walk its extents. */
void fuzz_exercise_block(const MrBlock *blk);
/* Everything an opened image serves: blocks, views, tree, description, cpus.json, vmdesc. */
void fuzz_exercise_image(const MrImage *img);
/* mr_image_open_any (as mr_image_open: a packed image too) over a copy of @data (index files
 * off), then fuzz_exercise_image. */
void fuzz_open_bytes(const uint8_t *data, size_t size, const MrOpenOptions *opts);

/* A tiny FuzzedDataProvider: reads past the end give zeros. */
typedef struct {
    const uint8_t *data;
    size_t size, pos;
} FuzzInput;

guint8 fuzz_u8(FuzzInput *in);
guint16 fuzz_u16(FuzzInput *in);
guint32 fuzz_u32(FuzzInput *in);
guint64 fuzz_u64(FuzzInput *in);
/* Up to @max bytes (length from one byte, or two when @max > 255); returns a pointer into
 * the input and its length in *@len. */
const guint8 *fuzz_bytes(FuzzInput *in, gsize max, gsize *len);
