/* test-helpers.h: cmocka asserts for mramfs types. Each macro passes the caller's
 * __FILE__/__LINE__ so a failure points at the test line, not at this file. */
#pragma once

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "image-builder.h"
#include "mr-private.h"

/* @error (a GError *) is set, in MR_ERROR, with @code, and its message contains @word
 * (NULL: any message). Clears it. */
#define assert_mr_error(error, code, word)                                                         \
    _assert_mr_error(&(error), (code), (word), __FILE__, __LINE__)
void _assert_mr_error(GError **error, int code, const char *word, const char *file, int line);

/* @error is NULL; otherwise print its message and fail. */
#define assert_no_error(error) _assert_no_error((error), __FILE__, __LINE__)
void _assert_no_error(const GError *error, const char *file, int line);

/* @len bytes of @actual at @off equal @expected; a failure names the first differing
 * offset. */
#define assert_bytes_at(actual, off, expected, len)                                                \
    _assert_bytes_at((actual), (off), (expected), (len), __FILE__, __LINE__)
void _assert_bytes_at(const void *actual, gsize off, const void *expected, gsize len,
                      const char *file, int line);

/* mr_block_pread of [@off, @off + @len) of block @index returns exactly what the spec
 * says the block holds there (zeros for clear pages, short at the end of the block). */
#define assert_block_reads(spec, img, index, off, len)                                             \
    _assert_block_reads((spec), (img), (index), (off), (len), __FILE__, __LINE__)
void _assert_block_reads(const IbSpec *spec, const MrImage *img, guint index, guint64 off,
                         gsize len, const char *file, int line);

/* mr_block_seek(@blk, @off, @whence) succeeds with @expected. */
#define assert_extent_equal(blk, off, whence, expected)                                            \
    _assert_extent_equal((blk), (off), (whence), (expected), __FILE__, __LINE__)
void _assert_extent_equal(const MrBlock *blk, guint64 off, MrSeekWhence whence, guint64 expected,
                          const char *file, int line);

/* mr_block_seek(@blk, @off, @whence) fails with MR_ERROR_NO_MORE. */
#define assert_seek_no_more(blk, off, whence)                                                      \
    _assert_seek_no_more((blk), (off), (whence), __FILE__, __LINE__)
void _assert_seek_no_more(const MrBlock *blk, guint64 off, MrSeekWhence whence, const char *file,
                          int line);

/* Open @bytes; must succeed. */
#define assert_open_ok(bytes)            _assert_open_ok((bytes), NULL, __FILE__, __LINE__)
#define assert_open_ok_opts(bytes, opts) _assert_open_ok((bytes), (opts), __FILE__, __LINE__)
MrImage *_assert_open_ok(GBytes *bytes, const MrOpenOptions *opts, const char *file, int line);

/* Open @img; must fail with @code and a message containing @word. */
#define assert_open_fails(img, code, word)                                                         \
    _assert_open_fails((img), NULL, (code), (word), __FILE__, __LINE__)
#define assert_open_fails_opts(img, opts, code, word)                                              \
    _assert_open_fails((img), (opts), (code), (word), __FILE__, __LINE__)
void _assert_open_fails(GByteArray *img, const MrOpenOptions *opts, int code, const char *word,
                        const char *file, int line);
