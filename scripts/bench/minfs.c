/* minfs: the smallest honest baseline for mramfs benchmarks.
 *
 * Serves the byte range [OFFSET, OFFSET+LENGTH) of IMAGE as the read-only file
 * /data, with the FUSE settings mramfs uses: libfuse3 low-level API,
 * fuse_session_loop_mt, fi->keep_cache = 1, pread into a buffer followed by
 * fuse_reply_buf.  No bitmap, no block table: whatever mramfs costs on top of
 * this is mramfs's own work.
 *
 * With -e LO:HI it is also the failing storage of tests/integration/test_faults.py:
 * every read of /data that overlaps its byte range [LO, HI) gets EIO, as from a disk
 * with unreadable sectors, and /data is opened with direct_io so that each read
 * reaches the daemon with its own offset and size.
 *
 *   minfs [-f] [-o OPTS] [-e LO:HI] IMAGE OFFSET LENGTH MOUNTPOINT
 *
 * Returns once the mount is usable and daemonizes (like mramfs) unless -f.
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror minfs.c \
 *            $(pkg-config --cflags --libs fuse3) -o minfs
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DATA_INO 2

static int img_fd = -1;
static off_t img_off;      /* OFFSET: where /data starts in IMAGE */
static off_t data_len;     /* LENGTH: st_size of /data */
static struct stat img_st; /* owner and times are copied from the image */
static off_t bad_lo, bad_hi; /* -e: reads overlapping [bad_lo, bad_hi) fail; none by default */

/* One reusable buffer per worker thread: a fresh malloc per request would
 * fault in new pages every time (slow first touch on this VM kind). */
static _Thread_local char *tbuf;
static _Thread_local size_t tbuf_size;

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = img_st.st_uid;
    st->st_gid = img_st.st_gid;
    st->st_atim = st->st_mtim = st->st_ctim = img_st.st_mtim;
    st->st_blksize = 4096;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = data_len;
        st->st_blocks = (data_len + 511) / 512;
    }
}

static void mf_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct fuse_entry_param e = {.attr_timeout = 3600, .entry_timeout = 3600};

    if (parent != FUSE_ROOT_ID || strcmp(name, "data") != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    e.ino = DATA_INO;
    fill_attr(DATA_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void mf_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct stat st;

    (void)fi;
    if (ino != FUSE_ROOT_ID && ino != DATA_INO) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_attr(ino, &st);
    fuse_reply_attr(req, &st, 3600);
}

static void mf_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    static const char *const names[] = {".", "..", "data"};
    static const fuse_ino_t inos[] = {FUSE_ROOT_ID, FUSE_ROOT_ID, DATA_INO};
    char buf[512];
    size_t used = 0;

    (void)fi;
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    if (size > sizeof buf)
        size = sizeof buf;
    /* off is the index of the next entry to return. */
    for (off_t i = off; i < 3; i++) {
        struct stat st = {.st_ino = inos[i]};
        size_t n;

        st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
        n = fuse_add_direntry(req, buf + used, size - used, names[i], &st, i + 1);
        if (n > size - used)
            break;
        used += n;
    }
    fuse_reply_buf(req, buf, used);
}

static void mf_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != DATA_INO) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (bad_hi > bad_lo)
        fi->direct_io = 1; /* -e: no page cache, every read comes here as issued */
    else
        fi->keep_cache = 1; /* as mramfs: the image never changes under us */
    fuse_reply_open(req, fi);
}

static void mf_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    size_t done = 0;

    (void)ino;
    (void)fi;
    if (off >= data_len) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if ((off_t)size > data_len - off)
        size = (size_t)(data_len - off);
    if (off < bad_hi && off + (off_t)size > bad_lo) {
        fuse_reply_err(req, EIO);
        return;
    }
    if (size > tbuf_size) {
        free(tbuf);
        tbuf = malloc(size);
        tbuf_size = tbuf ? size : 0;
        if (!tbuf) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
    }
    while (done < size) {
        ssize_t n = pread(img_fd, tbuf + done, size - done, img_off + off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fuse_reply_err(req, errno);
            return;
        }
        if (n == 0)
            break; /* image shorter than OFFSET+LENGTH */
        done += (size_t)n;
    }
    fuse_reply_buf(req, tbuf, done);
}

static const struct fuse_lowlevel_ops mf_ops = {
    .lookup = mf_lookup,
    .getattr = mf_getattr,
    .readdir = mf_readdir,
    .open = mf_open,
    .read = mf_read,
};

static int usage(void)
{
    fprintf(stderr, "usage: minfs [-f] [-o OPTS] [-e LO:HI] IMAGE OFFSET LENGTH MOUNTPOINT\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *extra = NULL, *pos[4];
    int npos = 0, foreground = 0, ret = 1;
    struct fuse_session *se = NULL;
    struct fuse_loop_config *lc = NULL;
    char opts[4096];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-f") == 0)
            foreground = 1;
        else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            extra = argv[++i];
        else if (strcmp(argv[i], "-e") == 0 && i + 1 < argc) {
            char *colon;
            bad_lo = (off_t)strtoull(argv[++i], &colon, 0);
            if (*colon != ':')
                return usage();
            bad_hi = (off_t)strtoull(colon + 1, NULL, 0);
        }
        else if (npos < 4)
            pos[npos++] = argv[i];
        else
            return usage();
    }
    if (npos != 4)
        return usage();
    img_off = (off_t)strtoull(pos[1], NULL, 0);
    data_len = (off_t)strtoull(pos[2], NULL, 0);
    img_fd = open(pos[0], O_RDONLY | O_CLOEXEC);
    if (img_fd < 0 || fstat(img_fd, &img_st) < 0) {
        fprintf(stderr, "minfs: %s: %s\n", pos[0], strerror(errno));
        return 1;
    }

    /* Same mount shape as mramfs: read-only, default_permissions, fsname = image path. */
    snprintf(opts, sizeof opts, "ro,default_permissions,fsname=%s,subtype=minfs%s%s", pos[0],
             extra ? "," : "", extra ? extra : "");
    char *fargv[] = {argv[0], "-o", opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);

    se = fuse_session_new(&args, &mf_ops, sizeof mf_ops, NULL);
    if (!se)
        goto out;
    if (fuse_set_signal_handlers(se) != 0)
        goto out;
    if (fuse_session_mount(se, pos[3]) != 0)
        goto out_sig;
    /* The parent returns only now, with the mount in place. */
    if (fuse_daemonize(foreground) != 0)
        goto out_unmount;
    lc = fuse_loop_cfg_create();
    ret = fuse_session_loop_mt(se, lc) != 0;
    fuse_loop_cfg_destroy(lc);
out_unmount:
    fuse_session_unmount(se);
out_sig:
    fuse_remove_signal_handlers(se);
out:
    if (se)
        fuse_session_destroy(se);
    free(tbuf);
    close(img_fd);
    return ret;
}
