/* mr-source.h: where image bytes come from. A source knows its size at open time and
 * reads exact ranges; a range past that size is a format error (TRUNCATED), a short
 * read inside it means the file changed underneath us (IO). Later sources (HTTP ranges)
 * plug in here without touching the readers. */
#pragma once

#include <glib.h>
#include <sys/stat.h>

typedef struct _MrSource MrSource;

MrSource *mr_source_open_file(const char *path, GError **error);
/* A source over memory, for unit tests and for small embedded images. */
MrSource *mr_source_new_from_bytes(GBytes *bytes);
/* A source whose bytes some other layer produces (a packed image's segments): @read gets
 * ranges already checked against @size. @free_data is called on @data at free. */
typedef gboolean (*MrSourceReadFunc)(gpointer data, guint64 offset, void *buf, gsize len,
                                     GError **error);
MrSource *mr_source_new_custom(MrSourceReadFunc read, gpointer data, GDestroyNotify free_data,
                               guint64 size, const struct stat *st);
void mr_source_free(MrSource *src); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MrSource, mr_source_free)

guint64 mr_source_size(const MrSource *src);
const struct stat *mr_source_stat(const MrSource *src);

/* mr_source_read: read exactly @len bytes at @offset. Thread-safe.
 * Returns: FALSE with MR_ERROR_TRUNCATED if the range ends past the size seen at open,
 * MR_ERROR_IO if the read fails or comes back short (the file shrank). */
gboolean mr_source_read(const MrSource *src, guint64 offset, void *buf, gsize len, GError **error);

/* mr_write_at: write all of @len bytes at @offset of @fd (pwrite, EINTR retried): the one
 * output path of the tools that write images (pack, unpack).
 * Returns: FALSE with MR_ERROR_IO naming the offset and the system's reason. */
gboolean mr_write_at(int fd, const void *data, gsize len, guint64 offset, GError **error);
