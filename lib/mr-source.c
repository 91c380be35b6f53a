/* mr-source.c: local files (pread) and memory buffers behind one small interface. */
#include "mr-source.h"
#include "mramfs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

struct _MrSource {
    int fd;                /* -1 for a memory source */
    GBytes *bytes;         /* memory source only */
    MrSourceReadFunc read; /* custom source only */
    gpointer data;
    GDestroyNotify free_data;
    guint64 size; /* at open: the bound every parser checks against */
    struct stat st;
};

MrSource *mr_source_open_file(const char *path, GError **error)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot open: %s", g_strerror(saved));
        return NULL;
    }
    MrSource *src = g_new0(MrSource, 1);
    src->fd = fd;
    if (fstat(fd, &src->st) < 0) {
        int saved = errno;
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot stat: %s", g_strerror(saved));
        mr_source_free(src);
        return NULL;
    }
    if (!S_ISREG(src->st.st_mode)) {
        g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED, "not a regular file");
        mr_source_free(src);
        return NULL;
    }
    src->size = (guint64)src->st.st_size;
    return src;
}

MrSource *mr_source_new_from_bytes(GBytes *bytes)
{
    MrSource *src = g_new0(MrSource, 1);
    src->fd = -1;
    src->bytes = g_bytes_ref(bytes);
    src->size = g_bytes_get_size(bytes);
    src->st.st_mode = S_IFREG | 0444;
    src->st.st_size = (off_t)src->size;
    return src;
}

MrSource *mr_source_new_custom(MrSourceReadFunc read, gpointer data, GDestroyNotify free_data,
                               guint64 size, const struct stat *st)
{
    MrSource *src = g_new0(MrSource, 1);
    src->fd = -1;
    src->read = read;
    src->data = data;
    src->free_data = free_data;
    src->size = size;
    src->st = *st;
    src->st.st_size = (off_t)size;
    return src;
}

void mr_source_free(MrSource *src)
{
    if (src == NULL)
        return;
    if (src->free_data != NULL)
        src->free_data(src->data);
    if (src->fd >= 0)
        close(src->fd);
    if (src->bytes != NULL)
        g_bytes_unref(src->bytes);
    g_free(src);
}

guint64 mr_source_size(const MrSource *src)
{
    return src->size;
}

const struct stat *mr_source_stat(const MrSource *src)
{
    return &src->st;
}

static gboolean read_fd_exact(const MrSource *src, guint64 offset, guint8 *buf, gsize len,
                              GError **error)
{
    gsize done = 0;
    while (done < len) {
        ssize_t n = pread(src->fd, buf + done, len - done, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            g_set_error(error, MR_ERROR, MR_ERROR_IO, "read at 0x%" G_GINT64_MODIFIER "x: %s",
                        offset + done, g_strerror(saved));
            return FALSE;
        }
        if (n == 0) {
            g_set_error(error, MR_ERROR, MR_ERROR_IO,
                        "image shrank: no bytes at 0x%" G_GINT64_MODIFIER "x any more",
                        offset + done);
            return FALSE;
        }
        done += (gsize)n;
    }
    return TRUE;
}

gboolean mr_source_read(const MrSource *src, guint64 offset, void *buf, gsize len, GError **error)
{
    guint64 end;
    if (!g_uint64_checked_add(&end, offset, len) || end > src->size) {
        g_set_error(error, MR_ERROR, MR_ERROR_TRUNCATED,
                    "truncated: %" G_GSIZE_FORMAT " bytes at 0x%" G_GINT64_MODIFIER
                    "x run past the end of the file (0x%" G_GINT64_MODIFIER "x)",
                    len, offset, src->size);
        return FALSE;
    }
    if (len == 0) /* an empty memory source has no data pointer, an empty buffer neither */
        return TRUE;
    if (src->read != NULL)
        return src->read(src->data, offset, buf, len, error);
    if (src->fd < 0) {
        memcpy(buf, (const guint8 *)g_bytes_get_data(src->bytes, NULL) + offset, len);
        return TRUE;
    }
    return read_fd_exact(src, offset, buf, len, error);
}

gboolean mr_write_at(int fd, const void *data, gsize len, guint64 offset, GError **error)
{
    const guint8 *buf = data;
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            g_set_error(error, MR_ERROR, MR_ERROR_IO,
                        "cannot write at 0x%" G_GINT64_MODIFIER "x: %s", offset, g_strerror(saved));
            return FALSE;
        }
        buf += n;
        len -= (gsize)n;
        offset += (guint64)n;
    }
    return TRUE;
}
