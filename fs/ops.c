/* ops.c: the libfuse low-level operations, one small function per op (the shape of libfuse
 * example/passthrough_ll.c). Each op replies exactly once; helpers return an errno.
 *
 * Inode numbers: the mount's tree is fixed when it is built, so inode = tree node + 1.
 * Node 0 is the root, which makes the root FUSE_ROOT_ID (1); inode 0 is never used, and
 * since nothing is ever created or removed, forget has nothing to release. */
#include "mramfs-fs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <syslog.h>

/* The tree and the image never change while mounted, so the kernel may cache names and
 * attributes for as long as it likes. */
#define CACHE_TIMEOUT 86400.0

static MrFs *fs_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static gboolean node_of(const MrFs *fs, fuse_ino_t ino, guint *node)
{
    if (ino < FUSE_ROOT_ID || ino - FUSE_ROOT_ID >= mr_tree_n_nodes(fs->tree))
        return FALSE;
    *node = (guint)(ino - FUSE_ROOT_ID);
    return TRUE;
}

static void fill_stat(const MrFs *fs, guint node, struct stat *st)
{
    const struct stat *img = mr_image_file_stat(fs->image);
    MrNodeKind kind = mr_tree_kind(fs->tree, node);
    memset(st, 0, sizeof *st);
    st->st_ino = node + FUSE_ROOT_ID;
    st->st_mode = kind == MR_NODE_DIR ? S_IFDIR | 0555 : S_IFREG | 0444;
    st->st_nlink = kind == MR_NODE_DIR ? 2 : 1;
    st->st_uid = img->st_uid;
    st->st_gid = img->st_gid;
    st->st_size = (off_t)mr_tree_size(fs->tree, node);
    st->st_blksize = 4096;
    st->st_blocks = (st->st_size + 511) / 512;
    if (kind == MR_NODE_BLOCK) {
        /* Honest st_blocks (data pages only) is what makes cp and tar look for holes. */
        const MrBlock *blk = mr_tree_block(fs->tree, node);
        st->st_blksize = mr_block_page_size(blk);
        st->st_blocks = (blkcnt_t)(mr_block_data_pages(blk) * mr_block_page_size(blk) / 512);
    }
    st->st_atim = st->st_mtim = st->st_ctim = img->st_mtim;
}

static int errno_of(const GError *error)
{
    return g_error_matches(error, MR_ERROR, MR_ERROR_NO_MORE) ? ENXIO : EIO;
}

static void mr_op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    MrFs *fs = fs_of(req);
    struct fuse_entry_param e = {.attr_timeout = CACHE_TIMEOUT, .entry_timeout = CACHE_TIMEOUT};
    guint dir, child;
    if (!node_of(fs, parent, &dir))
        return (void)fuse_reply_err(req, ENOENT);
    if (!mr_tree_lookup(fs->tree, dir, name, &child))
        return (void)fuse_reply_entry(req, &e); /* ino 0: the kernel caches the miss */
    e.ino = child + FUSE_ROOT_ID;
    fill_stat(fs, child, &e.attr);
    fuse_reply_entry(req, &e);
}

static void mr_op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    MrFs *fs = fs_of(req);
    guint node;
    struct stat st;
    if (!node_of(fs, ino, &node))
        return (void)fuse_reply_err(req, ENOENT);
    fill_stat(fs, node, &st);
    fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void mr_op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    MrFs *fs = fs_of(req);
    guint node;
    if (!node_of(fs, ino, &node))
        return (void)fuse_reply_err(req, ENOENT);
    if (mr_tree_kind(fs->tree, node) == MR_NODE_DIR)
        return (void)fuse_reply_err(req, EISDIR);
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
        return (void)fuse_reply_err(req, EROFS);
    fi->keep_cache = 1; /* the image is immutable: page cache survives close/open */
    fuse_reply_open(req, fi);
}

/* One read buffer per worker thread, kept between requests: a fresh 1 MiB allocation per
 * request would be mmap'd and first-touched every time, which costs more than the copy
 * itself here (fuse-and-zstd-limits.md, environment point 2). */
typedef struct {
    gsize capacity;
    guint8 data[];
} ReadBuffer;

static GPrivate read_buffer_key = G_PRIVATE_INIT(g_free);

static guint8 *thread_read_buffer(gsize size)
{
    ReadBuffer *rb = g_private_get(&read_buffer_key);
    if (rb == NULL || rb->capacity < size) {
        rb = g_malloc(sizeof *rb + size);
        rb->capacity = size;
        g_private_replace(&read_buffer_key, rb);
    }
    return rb->data;
}

static void read_block(fuse_req_t req, const MrBlock *blk, size_t size, off_t off)
{
    g_autoptr(GError) error = NULL;
    guint8 *buf = thread_read_buffer(size);
    gssize n = mr_block_pread(blk, buf, size, (guint64)off, &error);
    if (n < 0) {
        gsize idlen;
        const guint8 *idstr = mr_block_idstr(blk, &idlen);
        g_autofree char *name = mr_escape_bytes(idstr, idlen);
        mr_fs_log(fs_of(req), "read of %s at 0x%llx: %s", name, (unsigned long long)off,
                  error->message);
        return (void)fuse_reply_err(req, errno_of(error));
    }
    fuse_reply_buf(req, (const char *)buf, (size_t)n);
}

static void read_content(fuse_req_t req, GBytes *content, size_t size, off_t off)
{
    gsize len;
    const char *data = g_bytes_get_data(content, &len);
    if ((guint64)off >= len)
        return (void)fuse_reply_buf(req, NULL, 0);
    fuse_reply_buf(req, data + off, MIN(size, len - (gsize)off));
}

static void mr_op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    MrFs *fs = fs_of(req);
    guint node;
    if (!node_of(fs, ino, &node) || off < 0)
        return (void)fuse_reply_err(req, EINVAL);
    switch (mr_tree_kind(fs->tree, node)) {
    case MR_NODE_BLOCK:
        return read_block(req, mr_tree_block(fs->tree, node), size, off);
    case MR_NODE_CONTENT:
        return read_content(req, mr_tree_content(fs->tree, node), size, off);
    default:
        return (void)fuse_reply_err(req, EISDIR);
    }
}

/* SEEK_DATA/SEEK_HOLE for a file with no holes (a generated content file). */
static int seek_dense(guint64 size, off_t off, int whence, off_t *result)
{
    if ((guint64)off >= size)
        return ENXIO;
    *result = whence == SEEK_DATA ? off : (off_t)size;
    return 0;
}

static void mr_op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                        struct fuse_file_info *fi)
{
    (void)fi;
    MrFs *fs = fs_of(req);
    guint node;
    off_t result = 0;
    int err;
    /* Only SEEK_DATA/SEEK_HOLE reach a filesystem; ENOSYS would disable lseek for the whole
     * mount (fuse_lowlevel.h), so anything else is EINVAL. */
    if (!node_of(fs, ino, &node) || off < 0 || (whence != SEEK_DATA && whence != SEEK_HOLE))
        return (void)fuse_reply_err(req, EINVAL);
    if (mr_tree_kind(fs->tree, node) == MR_NODE_BLOCK) {
        g_autoptr(GError) error = NULL;
        guint64 pos;
        MrSeekWhence w = whence == SEEK_DATA ? MR_SEEK_DATA : MR_SEEK_HOLE;
        if (!mr_block_seek(mr_tree_block(fs->tree, node), (guint64)off, w, &pos, &error))
            return (void)fuse_reply_err(req, errno_of(error));
        return (void)fuse_reply_lseek(req, (off_t)pos);
    }
    err = seek_dense(mr_tree_size(fs->tree, node), off, whence, &result);
    if (err != 0)
        return (void)fuse_reply_err(req, err);
    fuse_reply_lseek(req, result);
}

static void mr_op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                          struct fuse_file_info *fi)
{
    (void)fi;
    MrFs *fs = fs_of(req);
    guint dir;
    if (!node_of(fs, ino, &dir) || mr_tree_kind(fs->tree, dir) != MR_NODE_DIR)
        return (void)fuse_reply_err(req, ENOTDIR);
    g_autofree char *buf = g_malloc(size);
    size_t used = 0;
    /* Entry k of ".", "..", then the children; the offset of an entry is k + 1. */
    guint n_children = mr_tree_n_children(fs->tree, dir);
    for (guint k = (guint)off; k < n_children + 2; k++) {
        guint node = k == 0   ? dir
                     : k == 1 ? mr_tree_parent(fs->tree, dir)
                              : mr_tree_child(fs->tree, dir, k - 2);
        const char *name = k == 0 ? "." : k == 1 ? ".." : mr_tree_name(fs->tree, node);
        struct stat st = {.st_ino = node + FUSE_ROOT_ID};
        st.st_mode = mr_tree_kind(fs->tree, node) == MR_NODE_DIR ? S_IFDIR : S_IFREG;
        size_t len = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)k + 1);
        if (len > size - used)
            break;
        used += len;
    }
    fuse_reply_buf(req, buf, used);
}

static void mr_op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    MrFs *fs = fs_of(req);
    struct statvfs sv = {.f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255};
    for (guint i = 0; i < mr_image_n_blocks(fs->image); i++) {
        const MrBlock *blk = mr_image_block(fs->image, i);
        sv.f_blocks += mr_block_data_pages(blk) * mr_block_page_size(blk) / 4096;
    }
    sv.f_files = mr_tree_n_nodes(fs->tree);
    fuse_reply_statfs(req, &sv);
}

const struct fuse_lowlevel_ops mr_fs_ops = {
    .lookup = mr_op_lookup,
    .getattr = mr_op_getattr,
    .open = mr_op_open,
    .read = mr_op_read,
    .lseek = mr_op_lseek,
    .readdir = mr_op_readdir,
    .statfs = mr_op_statfs,
};

void mr_fs_log(const MrFs *fs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (fs->foreground)
        g_printerr("mramfs: %s: %s\n", mr_image_path(fs->image), msg);
    else
        syslog(LOG_ERR, "%s: %s", mr_image_path(fs->image), msg);
}
