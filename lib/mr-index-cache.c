/* mr-index-cache.c: the page index of a legacy stream, kept between opens.
 *
 * Indexing reads the whole stream; this file makes the second open of the same image as
 * cheap as reading 8 bytes per page. It is keyed by the image's device, inode, size, mtime
 * and ctime and by the stream offset, so an image that was rewritten, replaced or touched is
 * never served from an old index: any difference and the stream is indexed again. The file
 * is ours but still read as untrusted (a broken or foreign file is simply ignored): every
 * count and slot is checked against the image before use, and a checksum covers it all.
 *
 * Layout (host byte order, it never leaves this machine):
 *   Header   magic "MRAMIDX1", version, byte-order mark, key, vmdesc, stats, block count
 *   Entry[n] idstr length + 255 bytes, used_length, page size, decoded bytes
 *   then per block: slots[n_pages] (u64), decoded pages
 *   u64 checksum of everything before it */
#include "mr-private.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

#define INDEX_MAGIC     "MRAMIDX1"
#define INDEX_VERSION   2 /* 2: devstate_offset */
#define BYTE_ORDER_MARK 0x0102030405060708ull

typedef struct {
    char magic[8];
    guint32 version;
    guint32 reserved;
    guint64 byte_order;
    guint64 dev, ino, size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, stream_offset;
    guint64 vmdesc_offset, vmdesc_len, devstate_offset;
    guint64 page_records, zero_records, xbzrle_records, resent;
    guint64 n_blocks;
} IndexHeader;

typedef struct {
    guint8 idstr_len;
    guint8 idstr[255];
    guint32 page_size;
    guint64 size;
    guint64 decoded_len;
} IndexEntry;

/* A fast checksum over 64-bit words (the index can be tens of MiB): FNV-style mixing. */
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

static void fill_key(IndexHeader *h, const MrImage *img)
{
    const struct stat *st = mr_source_stat(img->src);
    memcpy(h->magic, INDEX_MAGIC, 8);
    h->version = INDEX_VERSION;
    h->byte_order = BYTE_ORDER_MARK;
    h->dev = (guint64)st->st_dev;
    h->ino = (guint64)st->st_ino;
    h->size = (guint64)st->st_size;
    h->mtime_sec = (guint64)st->st_mtim.tv_sec;
    h->mtime_nsec = (guint64)st->st_mtim.tv_nsec;
    h->ctime_sec = (guint64)st->st_ctim.tv_sec;
    h->ctime_nsec = (guint64)st->st_ctim.tv_nsec;
    h->stream_offset = img->stream.offset;
}

char *mr_index_cache_path(const MrImage *img)
{
    const char *given = img->opts.index_path;
    if (given != NULL)
        return *given ? g_strdup(given) : NULL;
    if (mr_source_stat(img->src)->st_ino == 0)
        return NULL; /* a memory source: no file identity to key a default index on */
    g_autofree char *abs = g_canonicalize_filename(img->path, NULL);
    g_autofree char *hash = g_compute_checksum_for_string(G_CHECKSUM_SHA256, abs, -1);
    g_autofree char *name = g_strconcat(hash, ".idx", NULL);
    return g_build_filename(g_get_user_cache_dir(), "mramfs", name, NULL);
}

/* The file is written in pieces whose sizes are multiples of 8 bytes, so the checksum can
 * run over them as they go (checksum() is word-wise). */
typedef struct {
    FILE *f;
    guint64 sum;
    gboolean failed;
} IndexWriter;

static void put(IndexWriter *w, const void *data, gsize len)
{
    const guint8 *p = data;
    for (gsize i = 0; i + 8 <= len; i += 8) {
        guint64 word;
        memcpy(&word, p + i, 8);
        w->sum = (w->sum ^ word) * G_GUINT64_CONSTANT(0x100000001b3);
        w->sum ^= w->sum >> 29;
    }
    if (len > 0 && fwrite(data, 1, len, w->f) != len)
        w->failed = TRUE;
}

static void put_header(IndexWriter *w, const MrImage *img)
{
    IndexHeader h;
    memset(&h, 0, sizeof h);
    fill_key(&h, img);
    h.vmdesc_offset = img->vmdesc_offset;
    h.vmdesc_len = img->vmdesc_len;
    h.devstate_offset = img->devstate_offset;
    h.page_records = img->legacy.page_records;
    h.zero_records = img->legacy.zero_records;
    h.xbzrle_records = img->legacy.xbzrle_records;
    h.resent = img->legacy.resent;
    h.n_blocks = img->blocks->len;
    put(w, &h, sizeof h);
    for (guint i = 0; i < img->blocks->len; i++) {
        const MrBlock *b = g_ptr_array_index(img->blocks, i);
        const MrLegacyBlock *lb = b->priv;
        IndexEntry e;
        memset(&e, 0, sizeof e); /* padding too: the file is checksummed byte for byte */
        e.idstr_len = (guint8)b->idstr_len;
        memcpy(e.idstr, b->idstr, b->idstr_len);
        e.page_size = b->page_size;
        e.size = b->size;
        e.decoded_len = lb->decoded->len;
        put(w, &e, sizeof e);
    }
}

/* Only an index (or nothing) may be replaced: never the image, never an unrelated file
 * that -o index= happened to name. */
static gboolean may_replace(const MrImage *img, const char *path, GError **error)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return TRUE;
    const struct stat *image = mr_source_stat(img->src);
    char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    gboolean is_index = f && fread(magic, 1, 8, f) == 8 && memcmp(magic, INDEX_MAGIC, 8) == 0;
    if (f)
        fclose(f);
    if ((st.st_dev == image->st_dev && st.st_ino == image->st_ino) || !is_index) {
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "%s exists and is not an mramfs index", path);
        return FALSE;
    }
    return TRUE;
}

gboolean mr_index_cache_save(const MrImage *img, const char *path, GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    if (g_mkdir_with_parents(dir, 0700) != 0) {
        int saved = errno;
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot create %s: %s", dir, g_strerror(saved));
        return FALSE;
    }
    if (!may_replace(img, path, error))
        return FALSE;
    /* A temporary file renamed over the old one: a reader never sees a torn index. */
    g_autofree char *tmp = g_strconcat(path, ".XXXXXX", NULL);
    int fd = g_mkstemp_full(tmp, O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) {
        int saved = errno;
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot create %s: %s", tmp, g_strerror(saved));
        return FALSE;
    }
    IndexWriter w = {.f = fdopen(fd, "wb"), .sum = G_GUINT64_CONSTANT(0xcbf29ce484222325)};
    put_header(&w, img);
    for (guint i = 0; i < img->blocks->len; i++) {
        const MrBlock *b = g_ptr_array_index(img->blocks, i);
        const MrLegacyBlock *lb = b->priv;
        put(&w, lb->slots, b->n_pages * 8);
        put(&w, lb->decoded->data, lb->decoded->len);
    }
    guint64 sum = w.sum;
    gboolean ok =
        !w.failed && fwrite(&sum, 8, 1, w.f) == 1 && fflush(w.f) == 0 && fsync(fileno(w.f)) == 0;
    ok = fclose(w.f) == 0 && ok && rename(tmp, path) == 0;
    if (!ok) {
        int saved = errno;
        unlink(tmp);
        g_set_error(error, MR_ERROR, MR_ERROR_IO, "cannot write %s: %s", path, g_strerror(saved));
    }
    return ok;
}

/* Every slot points at a whole page inside the image or inside the decoded pages. */
static gboolean slots_valid(const guint64 *slots, guint64 n, guint32 page_size, guint64 decoded_len,
                            guint64 file_size)
{
    for (guint64 p = 0; p < n; p++) {
        guint64 s = slots[p];
        if (s == 0)
            continue;
        if (s & MR_SLOT_DECODED) {
            guint64 off = s & ~MR_SLOT_DECODED;
            if (off % page_size != 0 || off + page_size > decoded_len)
                return FALSE;
        } else if (s > file_size || file_size - s < page_size) {
            return FALSE;
        }
    }
    return TRUE;
}

/* Blocks from the entries and their slot arrays; FALSE if anything does not add up. */
static gboolean load_blocks(MrImage *img, const guint8 *data, gsize len, guint64 n_blocks,
                            guint32 page_size)
{
    gsize pos = sizeof(IndexHeader) + n_blocks * sizeof(IndexEntry);
    if (n_blocks > MR_MAX_BLOCKS || pos > len)
        return FALSE;
    for (guint64 i = 0; i < n_blocks; i++) {
        IndexEntry e;
        memcpy(&e, data + sizeof(IndexHeader) + i * sizeof e, sizeof e);
        if (e.page_size != page_size || e.size % e.page_size != 0)
            return FALSE;
        guint64 n_pages = e.size / e.page_size;
        if (n_pages > (len - pos) / 8 || e.decoded_len > len - pos - n_pages * 8)
            return FALSE;
        g_autoptr(MrBlock) b = mr_block_new();
        b->idstr_len = e.idstr_len;
        memcpy(b->idstr, e.idstr, e.idstr_len);
        b->size = e.size;
        b->page_size = e.page_size;
        b->n_pages = n_pages;
        b->src = img->src;
        MrLegacyBlock *lb = mr_legacy_block_attach(b);
        memcpy(lb->slots, data + pos, n_pages * 8);
        pos += n_pages * 8;
        g_byte_array_append(lb->decoded, data + pos, (guint)e.decoded_len);
        pos += e.decoded_len;
        if (!slots_valid(lb->slots, n_pages, e.page_size, e.decoded_len, mr_source_size(img->src)))
            return FALSE;
        mr_legacy_block_build_bitmap(b);
        g_ptr_array_add(img->blocks, g_steal_pointer(&b));
    }
    return pos + sizeof(guint64) == len;
}

gboolean mr_index_cache_load(MrImage *img, const char *path)
{
    g_autofree char *data = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &data, &len, NULL) || len < sizeof(IndexHeader) + 8)
        return FALSE;
    guint64 sum;
    memcpy(&sum, data + len - 8, 8);
    IndexHeader h, want = {0};
    memcpy(&h, data, sizeof h);
    fill_key(&want, img);
    /* Compare the identity part of the header: magic through stream offset. */
    gsize key_len = G_STRUCT_OFFSET(IndexHeader, vmdesc_offset);
    if (memcmp(&h, &want, key_len) != 0 || checksum((const guint8 *)data, len - 8) != sum)
        return FALSE;
    guint64 file_size = mr_source_size(img->src);
    if (h.vmdesc_offset > file_size || h.vmdesc_len != file_size - h.vmdesc_offset)
        return FALSE; /* the description runs to the end of the file (mr-sections.c) */
    if (!load_blocks(img, (const guint8 *)data, len, h.n_blocks, mr_legacy_page_size(img))) {
        g_ptr_array_set_size(img->blocks, 0);
        return FALSE;
    }
    img->has_vmdesc = TRUE;
    img->vmdesc_offset = h.vmdesc_offset;
    img->vmdesc_len = h.vmdesc_len;
    img->devstate_offset = h.devstate_offset;
    img->legacy.page_records = h.page_records;
    img->legacy.zero_records = h.zero_records;
    img->legacy.xbzrle_records = h.xbzrle_records;
    img->legacy.resent = h.resent;
    return TRUE;
}
