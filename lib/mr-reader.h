/* mr-reader.h: a bounded, big-endian, sequential reader over an MrSource.
 *
 * Every integer of a QEMU stream is read through here (qemu-save-formats.md §3: all stream
 * integers are big-endian). Errors are sticky, like QEMU's qemu_file_set_error(): after the
 * first failure every read returns 0 and the caller checks once, after a run of reads,
 * with mr_reader_check(). Reads go through a small window so that walking a header does
 * not cost one system call per byte. */
#pragma once

#include "mr-source.h"

#define MR_READER_WINDOW 4096

typedef struct {
    const MrSource *src;
    guint64 pos;       /* offset of the next byte to read */
    GError *error;     /* first failure, or NULL */
    guint64 win_start; /* file offset of win[0] */
    gsize win_len;
    guint8 win[MR_READER_WINDOW];
} MrReader;

void mr_reader_init(MrReader *r, const MrSource *src, guint64 pos);
void mr_reader_clear(MrReader *r);

guint8 mr_reader_u8(MrReader *r);
guint16 mr_reader_be16(MrReader *r);
guint32 mr_reader_be32(MrReader *r);
guint64 mr_reader_be64(MrReader *r);
/* Copy @len bytes into @out (zeros on failure). */
void mr_reader_bytes(MrReader *r, void *out, gsize len);
/* mr_reader_seek moves the position, checked lazily by the next read (a seek past EOF
 * fails there); mr_reader_skip fails at once (TRUNCATED) if the skipped bytes are not all
 * in the file, so a cut is reported where it is. */
void mr_reader_seek(MrReader *r, guint64 pos);
void mr_reader_skip(MrReader *r, guint64 len);
/* The next byte without consuming it, or -1 at the end of the file (not an error). */
int mr_reader_peek_u8(MrReader *r);

/* Returns TRUE if every read so far succeeded; otherwise moves the first error into
 * @error, prefixed with @what ("configuration section: truncated: …"). */
gboolean mr_reader_check(MrReader *r, const char *what, GError **error);
