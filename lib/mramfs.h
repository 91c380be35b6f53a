/* mramfs.h: the public API of libmramfs. Nothing here mentions FUSE.
 *
 * An MrImage is an opened, fully validated saved-VM image: a list of RAMBlocks, each a
 * sparse byte range whose data pages and holes come from the image's page bitmap.
 * Opening checks every table against the file size, so a successful open means every
 * block can be served; a later read can still fail if the file changes underneath.
 */
#pragma once

#include <glib.h>
#include <sys/stat.h>

G_BEGIN_DECLS

#define MR_ERROR (mr_error_quark())
GQuark mr_error_quark(void);

typedef enum {
    MR_ERROR_UNKNOWN_FORMAT, /* not a QEMU or libvirt save image */
    MR_ERROR_TRUNCATED,      /* a structure runs past the end of the file */
    MR_ERROR_CORRUPT,        /* a field holds an impossible value */
    MR_ERROR_UNSUPPORTED,    /* valid, but a variant this version does not read */
    MR_ERROR_INCOMPLETE,     /* the save never finished (bitmaps not written) */
    MR_ERROR_IO,             /* the operating system failed a read */
    MR_ERROR_NO_MORE,        /* seek: no data/hole at or after the offset (ENXIO) */
} MrError;

typedef struct _MrImage MrImage;
typedef struct _MrBlock MrBlock; /* owned by its MrImage */

/* Progress of a long open (indexing a legacy stream): @done of @total bytes. */
typedef void (*MrProgressFunc)(guint64 done, guint64 total, gpointer data);

typedef struct {
    /* File offset of the QEMU stream when it sits behind a header that is not a libvirt
     * header (QEMU `migrate file:PATH,offset=N`). Wins over a libvirt header's offset. */
    gboolean has_stream_offset;
    guint64 stream_offset;
    /* Legacy streams: where the page index is kept between opens. NULL = the default
     * ($XDG_CACHE_HOME/mramfs/<hash of the image path>.idx), "" = no index file. */
    const char *index_path;
    MrProgressFunc progress; /* may be NULL */
    gpointer progress_data;
    /* x86: the machine's max-ram-below-4g property, which the stream does not record
     * (0 = from the libvirt XML if it names one, else the machine type's default). Shapes
     * the guest-physical view only. */
    guint64 max_ram_below_4g;
    /* x86: whether the guest had an AMD CPU (RAM above 4 GiB may then start at 1 TiB), which
     * the stream does not record either. Unset: from the libvirt XML, else not AMD. */
    gboolean cpu_vendor_set;
    gboolean cpu_vendor_amd;
    /* Packed images: bytes of decoded frames to keep (0 = the default, 64 MiB). */
    guint64 cache_size;
} MrOpenOptions;

/* The libvirt save-image header (libvirt qemu_saveimage.h; docs/format.md §2). */
typedef struct {
    guint32 version;
    guint32 data_len;
    guint32 was_running;
    guint32 format; /* 0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse */
    guint32 cookie_offset;
    guint64 xml_len;
    guint64 cookie_len;
    guint64 stream_offset; /* 92 + data_len: not aligned to anything */
} MrLibvirtHeader;

/* mr_libvirt_read_header: the libvirt header of @path, whatever its format (for converting
 * compressed saves). Returns: FALSE with MR_ERROR_UNKNOWN_FORMAT if @path has no libvirt
 * magic, or another MR_ERROR for an incomplete or broken header. */
gboolean mr_libvirt_read_header(const char *path, MrLibvirtHeader *hdr, GError **error);
/* "raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse", or "unknown". */
const char *mr_libvirt_format_name(guint32 format);

typedef enum {
    MR_SEEK_DATA,
    MR_SEEK_HOLE,
} MrSeekWhence;

/* mr_escape_bytes: bytes from an image as a printable string for messages: printable
 * ASCII is kept, backslash and every other byte become \\xNN. Returns: newly allocated. */
char *mr_escape_bytes(const guint8 *bytes, gsize len);

/* mr_parse_number: "N" or "0xN", as the tools' numeric options take them.
 * Returns: FALSE if @text is not such a number (below 2^63). */
gboolean mr_parse_number(const char *text, guint64 *value);
/* mr_parse_offset: mr_parse_number into opts->stream_offset (and has_stream_offset). */
gboolean mr_parse_offset(const char *text, MrOpenOptions *opts);

/* mr_image_open: detect the container and format of @path and validate every table.
 * @opts may be NULL. Returns: a new image, or NULL with @error set (MR_ERROR). */
MrImage *mr_image_open(const char *path, const MrOpenOptions *opts, GError **error);
void mr_image_free(MrImage *img); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MrImage, mr_image_free)

const char *mr_image_path(const MrImage *img);
/* The stat of the image file at open time: timestamps and owner of the mount's files. */
const struct stat *mr_image_file_stat(const MrImage *img);
const char *mr_image_format(const MrImage *img);       /* "mapped-ram" */
const char *mr_image_container(const MrImage *img);    /* "qemu" or "libvirt" */
const char *mr_image_machine_type(const MrImage *img); /* NULL if the stream has none */
/* Migration capabilities recorded in the stream's configuration ("mapped-ram", …). */
const GPtrArray *mr_image_capabilities(const MrImage *img);
guint64 mr_image_stream_offset(const MrImage *img);
guint mr_image_n_blocks(const MrImage *img);
const MrBlock *mr_image_block(const MrImage *img, guint index);
/* The guest-physical view as a block (same read/seek/st_blocks API), or NULL when the
 * machine type has no known memory map; mr_image_physmem_about() says which rule or why. */
const MrBlock *mr_image_physmem(const MrImage *img);
const char *mr_image_physmem_about(const MrImage *img);
/* The guest-physical view as an ELF core (PT_NOTE with the vCPU registers, one PT_LOAD per
 * guest-physical range), served like a block; NULL without a guest-physical view. */
const MrBlock *mr_image_elfcore(const MrImage *img);
/* The vCPU registers as JSON (docs/file-tree.md §11), or NULL when the device state could
 * not be followed (the description says why). */
GBytes *mr_image_cpus_json(const MrImage *img);
/* QEMU's VM description JSON, exactly as the save holds it. */
GBytes *mr_image_vmdesc(const MrImage *img);
/* The libvirt domain XML and cookie of a libvirt image (up to their NUL), or NULL. */
GBytes *mr_image_libvirt_xml(const MrImage *img);
GBytes *mr_image_libvirt_cookie(const MrImage *img);
/* The image description as JSON text (see docs/file-tree.md). Returns: newly allocated. */
char *mr_image_describe_json(const MrImage *img);

/* ---- packed images (docs/packed-format.md) ---- */

/* TRUE if @img was opened from a packed image (its bytes are those of the original). */
gboolean mr_image_is_packed(const MrImage *img);
/* mr_image_start_readahead: packed images: start @n_workers threads (0 = one per CPU) that
 * decode the frames ahead of sequential readers; does nothing for other images. Threads do
 * not survive fork(): a daemon calls this after daemonizing. */
void mr_image_start_readahead(MrImage *img, guint n_workers);
/* mr_file_is_packed: TRUE if @path starts with the packed magic (nothing else checked). */
gboolean mr_file_is_packed(const char *path);

typedef struct {
    int level;               /* zstd level, 1..19; 0 = the default (3) */
    guint threads;           /* compressing threads; 0 = one per CPU */
    guint32 frame_size;      /* decoded bytes per frame; 0 = the default (256 KiB) */
    MrProgressFunc progress; /* called from the calling thread; may be NULL */
    gpointer progress_data;
} MrPackOptions;

typedef struct {
    guint64 image_size;   /* the original file */
    guint64 stored_bytes; /* decoded bytes in frames (data pages and stream bytes) */
    guint64 packed_size;  /* the output file */
    guint64 n_frames, n_chunks, n_segments;
} MrPackStats;

/* mr_pack_image: write the packed form of @img to @out_fd (an empty regular file, written
 * from offset 0). @stats may be NULL. Returns: FALSE with @error set. */
gboolean mr_pack_image(const MrImage *img, int out_fd, const MrPackOptions *opts,
                       MrPackStats *stats, GError **error);
/* mr_unpack: write the image @packed_path holds to @out_fd as a sparse file. */
gboolean mr_unpack(const char *packed_path, int out_fd, MrProgressFunc progress, gpointer data,
                   GError **error);
/* mr_verify: check the header, the index and every frame of @packed_path; @stats may be NULL. */
gboolean mr_verify(const char *packed_path, MrProgressFunc progress, gpointer data,
                   MrPackStats *stats, GError **error);

/* The RAMBlock id as stored (may hold any byte, including NUL): @len receives its length. */
const guint8 *mr_block_idstr(const MrBlock *blk, gsize *len);
guint64 mr_block_size(const MrBlock *blk);
guint32 mr_block_page_size(const MrBlock *blk);
guint64 mr_block_data_pages(const MrBlock *blk);
/* File offsets of the block's page bitmap and page slots, as the image records them. */
guint64 mr_block_bitmap_offset(const MrBlock *blk);
guint64 mr_block_pages_offset(const MrBlock *blk);

/* mr_block_pread: read up to @len bytes at @offset into @buf; pages whose bitmap bit is
 * clear read as zeros whatever the image holds there. Thread-safe.
 * Returns: bytes read (short only at the end of the block), or -1 with @error set
 * (MR_ERROR_IO when the image no longer holds the bytes). */
gssize mr_block_pread(const MrBlock *blk, void *buf, gsize len, guint64 offset, GError **error);

/* mr_block_seek: lseek(2) SEEK_DATA / SEEK_HOLE semantics at page granularity.
 * Returns: TRUE with *@result set, or FALSE with MR_ERROR_NO_MORE when @offset is at or past
 * the end (or no data follows, for SEEK_DATA). The end of the block counts as a hole. */
gboolean mr_block_seek(const MrBlock *blk, guint64 offset, MrSeekWhence whence, guint64 *result,
                       GError **error);

/* ---- the file tree a mount shows (docs/file-tree.md) ---- */

/* mr_block_paths: the path of every block inside the mount, in block order, after the
 * sanitizing and collision rules of docs/file-tree.md. Returns: a new array of char*. */
GPtrArray *mr_block_paths(const MrImage *img);

/* The name of the description file at the root; block names never start with '.'. */
#define MR_DESCRIPTION_NAME ".mramfs.json"
/* The guest-physical view: offset X holds guest-physical byte X (docs/file-tree.md). */
#define MR_PHYSMEM_NAME "physmem.raw"
/* The guest-physical view as an ELF core file, and the vCPU registers. */
#define MR_ELFCORE_NAME "physmem.elf"
#define MR_CPUS_NAME    "cpus.json"
/* QEMU's VM description (the JSON that closes every save): the device state's layout. */
#define MR_VMDESC_NAME "vmdesc.json"
/* libvirt images: the domain XML and the migration cookie libvirt stored in the header. */
#define MR_LIBVIRT_XML_PATH    ".libvirt/domain.xml"
#define MR_LIBVIRT_COOKIE_PATH ".libvirt/cookie.xml"

typedef struct _MrTree MrTree;
typedef enum {
    MR_NODE_DIR,
    MR_NODE_BLOCK,   /* a RAMBlock: read it with mr_block_pread */
    MR_NODE_CONTENT, /* a small generated file held in memory */
} MrNodeKind;

/* Node 0 is the root; nodes are numbered densely so a frontend can map them to inodes. */
MrTree *mr_tree_new(const MrImage *img);
void mr_tree_free(MrTree *tree); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MrTree, mr_tree_free)
guint mr_tree_n_nodes(const MrTree *tree);
MrNodeKind mr_tree_kind(const MrTree *tree, guint node);
const char *mr_tree_name(const MrTree *tree, guint node);
guint mr_tree_parent(const MrTree *tree, guint node);
/* Returns: TRUE and *@child if @dir holds @name. */
gboolean mr_tree_lookup(const MrTree *tree, guint dir, const char *name, guint *child);
/* Children of @dir in creation order. */
guint mr_tree_n_children(const MrTree *tree, guint dir);
guint mr_tree_child(const MrTree *tree, guint dir, guint index);
const MrBlock *mr_tree_block(const MrTree *tree, guint node); /* MR_NODE_BLOCK only */
GBytes *mr_tree_content(const MrTree *tree, guint node);      /* MR_NODE_CONTENT only */
/* The byte size a node shows in stat: block size, content length, or 0 for directories. */
guint64 mr_tree_size(const MrTree *tree, guint node);

G_END_DECLS
