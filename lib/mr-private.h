/* mr-private.h: what the modules of libmramfs share; never installed, never included by
 * fs/. The image core (mr-image.c) knows no byte layout: containers (libvirt header) and
 * formats (mapped-ram, …) fill an MrImage through the interfaces below, the way libarchive
 * registers format readers behind one descriptor. */
#pragma once

#include "mramfs.h"
#include "mr-bitmap.h"
#include "mr-reader.h"
#include "mr-source.h"

/* Hard limits on what an image may declare, so a hostile table cannot make us allocate
 * without bound. Real QEMU saves have a few dozen blocks and a handful of capabilities. */
#define MR_MAX_BLOCKS       4096
#define MR_MAX_CAPABILITIES 64
#define MR_MAX_MACHINE_TYPE 256

/* The CPU architecture a save's vCPU state describes (mr-cpu.c). */
typedef enum {
    MR_ARCH_NONE,
    MR_ARCH_X86_64,
    MR_ARCH_AARCH64,
    MR_ARCH_RISCV64,
} MrArch;

/* ---- libvirt save header (qemu-save-formats.md §2; MrLibvirtHeader is in mramfs.h) ---- */
#define MR_LIBVIRT_HEADER_SIZE 92

/* Returns TRUE and fills @hdr if @head (the first @len bytes of the file) starts with a
 * libvirt magic; sets @error for a libvirt header mramfs cannot serve (partial, version,
 * compressed formats, out-of-range lengths). *@is_libvirt tells whether the magic matched. */
gboolean mr_libvirt_parse(const guint8 *head, gsize len, guint64 file_size, gboolean *is_libvirt,
                          MrLibvirtHeader *hdr, GError **error);
/* The same checks except the format: for tools that convert compressed saves. */
gboolean mr_libvirt_parse_any_format(const guint8 *head, gsize len, guint64 file_size,
                                     gboolean *is_libvirt, MrLibvirtHeader *hdr, GError **error);

/* ---- QEMU stream header and configuration (qemu-save-formats.md §3.1) ---- */
typedef struct {
    guint64 offset;           /* where "QEVM" starts */
    char *machine_type;       /* NULL when the stream has no configuration section */
    guint32 target_page_bits; /* 0 when not recorded (x86: 12) */
    GPtrArray *capabilities;  /* of char* */
    guint64 body_offset;      /* first byte after the configuration */
} MrStreamInfo;

gboolean mr_stream_parse_header(const MrSource *src, guint64 offset, MrStreamInfo *info,
                                GError **error);
void mr_stream_info_clear(MrStreamInfo *info);
gboolean mr_stream_has_capability(const MrStreamInfo *info, const char *name);

/* ---- section framing shared by the stream formats (mr-sections.c) ---- */
#define MR_RAM_FLAG_ZERO          0x02
#define MR_RAM_FLAG_MEM_SIZE      0x04
#define MR_RAM_FLAG_PAGE          0x08
#define MR_RAM_FLAG_EOS           0x10
#define MR_RAM_FLAG_CONTINUE      0x20
#define MR_RAM_FLAG_XBZRLE        0x40
#define MR_RAM_FLAG_HOOK          0x80
#define MR_RAM_FLAG_COMPRESS_PAGE 0x100
#define MR_RAM_FLAG_MULTIFD_FLUSH 0x200
/* Every RAM_SAVE_FLAG fits in the low 10 bits; addresses are page (>= 1 KiB) aligned. */
#define MR_RAM_FLAG_MASK 0x3ffu

typedef struct {
    /* The ram START payload, after its section header (id, "ram", version 4) was checked. */
    gboolean (*ram_start)(gpointer data, MrReader *r, GError **error);
    /* The payload of a ram PART or END section. */
    gboolean (*ram_part)(gpointer data, MrReader *r, gboolean is_end, GError **error);
} MrRamSectionHandlers;

/* mr_stream_walk_ram: walk sections from @r's position through the ram END section,
 * skipping COMMAND records and handing ram payloads to @handlers; leaves @r after END. */
gboolean mr_stream_walk_ram(MrReader *r, const MrRamSectionHandlers *handlers, gpointer data,
                            GError **error);
/* The next be64 must be the EOS record. */
gboolean mr_stream_expect_eos(MrReader *r, const char *what, GError **error);

/* A block list entry after its idstr and used_length: read the format's own fields into
 * @blk. The list parser adds @blk to the image when this returns TRUE. */
typedef gboolean (*MrBlockEntryFunc)(gpointer data, MrReader *r, MrBlock *blk, guint64 entry_start,
                                     GError **error);
/* The ram START block list: MEM_SIZE total, then entries until the total is consumed. */
gboolean mr_stream_parse_block_list(MrReader *r, MrImage *img, MrBlockEntryFunc entry,
                                    gpointer data, GError **error);
/* Find the VM description that closes a completed save, searching back from the end of the
 * file but not before @from (the end of RAM); sets img->has_vmdesc/vmdesc_*. */
gboolean mr_stream_find_vmdesc(MrImage *img, guint64 from, GError **error);

/* ---- blocks ---- */
typedef struct {
    /* Read @len bytes at @offset of @blk's data pages; only called for ranges whose pages
     * all have their bitmap bit set. */
    gboolean (*read_data)(const MrBlock *blk, guint8 *buf, guint64 offset, gsize len,
                          GError **error);
} MrBlockOps;

struct _MrBlock {
    guint8 idstr[256];
    gsize idstr_len;
    guint64 size; /* used_length */
    guint32 page_size;
    guint64 n_pages;
    MrBitmap bitmap; /* set = data page, clear = reads as zeros */
    guint64 bitmap_offset;
    guint64 pages_offset;
    const MrBlockOps *ops;
    const MrSource *src;
    gpointer priv; /* the format's own per-block state, freed with priv_free */
    GDestroyNotify priv_free;
};

/* ---- the image and its format readers ---- */
typedef struct {
    guint64 page_records, zero_records, xbzrle_records;
    guint64 resent;   /* page records for a page that an earlier record already sent */
    char *index_path; /* where the index was loaded from or saved to, or NULL */
    gboolean from_cache;
} MrLegacyStats;

struct _MrImage {
    char *path;
    MrSource *src;
    gboolean has_libvirt;
    MrLibvirtHeader libvirt;
    MrStreamInfo stream;
    const char *format_name;
    gboolean has_vmdesc; /* the VM description JSON closes the file */
    guint64 vmdesc_offset, vmdesc_len;
    guint64 devstate_offset; /* where device state (FULL sections) starts: after RAM END */
    GPtrArray *blocks;       /* of MrBlock*, stream order */
    GBytes *libvirt_xml, *libvirt_cookie;
    GBytes *vmdesc;              /* the JSON at vmdesc_offset */
    MrOpenOptions opts;          /* as given to open (strings not owned past open) */
    MrLegacyStats legacy;        /* legacy streams only */
    MrBlock *physmem;            /* the guest-physical view, or NULL */
    char *physmem_about;         /* the rule used, or why there is no view */
    GPtrArray *devices;          /* of MrDevice*, stream order (empty if not walkable) */
    gpointer vmdesc_json;        /* the parsed VM description (a JsonNode), or NULL */
    GArray *cpus;                /* of MrCpu */
    MrArch arch;                 /* of the CPUs */
    char *devstate_about;        /* why there is no device state / CPU registers, or NULL */
    GBytes *cpus_json;           /* the registers file, or NULL */
    MrBlock *elfcore;            /* the ELF core view, or NULL */
    gboolean packed;             /* img->src is the virtual source of a packed image */
    struct _MrFrameCache *cache; /* its frame cache (owned by the source), or NULL */
};

typedef struct {
    const char *name;
    /* TRUE if this reader handles a stream with this header/configuration. */
    gboolean (*probe)(const MrStreamInfo *info);
    /* Fill img->blocks and the completeness fields from img->stream.body_offset on. */
    gboolean (*open)(MrImage *img, GError **error);
} MrFormat;

/* mr_image_open_source: open the image @src holds as it is (no packed detection), for
 * memory sources in unit tests and the inside of a packed file. Takes ownership of @src;
 * @path is only used in the description. */
MrImage *mr_image_open_source(MrSource *src, const char *path, const MrOpenOptions *opts,
                              GError **error);
/* mr_image_open_any: what mr_image_open does with the file's source: a packed image is
 * opened through its virtual source, anything else with mr_image_open_source. */
MrImage *mr_image_open_any(MrSource *src, const char *path, const MrOpenOptions *opts,
                           GError **error);

/* ---- legacy streams (mr-fmt-legacy.c) and their page index (mr-index-cache.c) ---- */
/* A page slot: 0 = hole; else the file offset of the page's last PAGE record data, or
 * MR_SLOT_DECODED | offset into `decoded` for a page rebuilt from XBZRLE deltas. */
#define MR_SLOT_DECODED (G_GUINT64_CONSTANT(1) << 63)
/* While indexing only: a page whose last record was ZERO (a hole, but already sent). No
 * page data can sit at file offset 1, so the value is free; it becomes 0 at the end. */
#define MR_SLOT_ZERO_SENT G_GUINT64_CONSTANT(1)
/* Pages rebuilt from XBZRLE deltas live in memory; a stream may not make us hold more than
 * this many bytes of them beyond its own size (each record is ~11 bytes, a page 4 KiB). */
#define MR_MAX_DECODED_EXTRA (G_GUINT64_CONSTANT(1) << 30)

typedef struct {
    guint64 *slots;       /* one per page */
    GByteArray *decoded;  /* XBZRLE results, page_size bytes each */
    GArray *free_decoded; /* while indexing: offsets in decoded that no page uses any more */
} MrLegacyBlock;

extern const MrBlockOps mr_legacy_block_ops;
/* Give @blk (n_pages set) empty legacy state and the legacy read operations. */
MrLegacyBlock *mr_legacy_block_attach(MrBlock *blk);
/* Derive the block's bitmap from its slots (data = a slot that is not a hole). */
void mr_legacy_block_build_bitmap(MrBlock *blk);
/* The target page size of a legacy stream: 2^target-page-bits, else 4 KiB. */
guint32 mr_legacy_page_size(const MrImage *img);
/* QEMU's XBZRLE decoder: apply a delta onto @dst in place. FALSE if it does not decode. */
gboolean mr_xbzrle_decode(const guint8 *src, gsize slen, guint8 *dst, gsize dlen);

/* Where the index of @img is kept: opts.index_path, else the default under the user's
 * cache directory; NULL when indexing files are off. Returns: newly allocated. */
char *mr_index_cache_path(const MrImage *img);
/* Fill img->blocks from the index at @path if it exists, is intact and was made from this
 * very file (device, inode, size, mtime, ctime, stream offset). FALSE otherwise. */
gboolean mr_index_cache_load(MrImage *img, const char *path);
/* Write the index of @img to @path (atomically: a temporary file, then rename). */
gboolean mr_index_cache_save(const MrImage *img, const char *path, GError **error);

/* ---- device state (mr-devstate.c) and vCPU registers (mr-cpu.c) ---- */
typedef struct _MrDevice MrDevice; /* one FULL section, measured from the VM description */

/* Walk the device sections from img->devstate_offset, measuring each from img->vmdesc;
 * fills img->devices (empty on failure). */
gboolean mr_devstate_load(MrImage *img, GError **error);
void mr_devstate_clear(MrImage *img);
guint mr_devstate_n_devices(const MrImage *img);
const MrDevice *mr_devstate_device(const MrImage *img, guint index);
const MrDevice *mr_devstate_find(const MrImage *img, const char *name, guint32 instance);
const char *mr_device_name(const MrDevice *dev);
guint32 mr_device_instance(const MrDevice *dev);
/* Where element @index of field @name (its struct member @member, or NULL) lies: an
 * absolute file offset and its size. Fields of subsections are found too. */
gboolean mr_device_field(const MrDevice *dev, const char *name, guint index, const char *member,
                         guint64 *offset, guint32 *size);
/* Its bytes, which must be exactly @len. */
gboolean mr_device_read(const MrImage *img, const MrDevice *dev, const char *name, guint index,
                        const char *member, void *buf, gsize len);
/* Its value as a big-endian integer of 1 to 8 bytes (vmstate's integer encoding). */
gboolean mr_device_read_be(const MrImage *img, const MrDevice *dev, const char *name, guint index,
                           const char *member, guint64 *value);

typedef struct {
    guint64 base;
    guint32 selector, limit, flags;
} MrSegment;

typedef struct {
    guint32 index; /* the cpu section's instance: QEMU's cpu_index */
    /* x86: env.regs order (rax rcx rdx rbx rsp rbp rsi rdi r8-r15); aarch64: x0-x30 and
     * sp in [31]; riscv64: x0-x31. */
    guint64 gpr[32];
    guint64 pc;    /* rip / pc */
    guint64 flags; /* rflags / pstate */
    /* x86 */
    guint32 hflags;                      /* CPL in the low two bits */
    MrSegment seg[6], ldt, tr, gdt, idt; /* seg: es cs ss ds fs gs */
    guint64 cr[5], efer, kernel_gs_base;
    /* aarch64 (system registers when the cpreg arrays hold them) */
    gboolean has_sysregs;
    guint64 sctlr_el1, ttbr0_el1, ttbr1_el1, tcr_el1;
    /* riscv64 */
    guint64 satp, priv, mstatus;
} MrCpu;

const char *mr_arch_name(MrArch arch);
/* Fill img->cpus and img->arch from the "cpu" sections; FALSE (and no CPUs) if any vCPU's
 * registers cannot all be read. */
gboolean mr_cpu_load(MrImage *img, GError **error);
/* The registers file (docs/file-tree.md §11), or NULL without CPUs. */
GBytes *mr_cpu_json(const MrImage *img);

/* ---- the ELF core view (mr-elfcore.c) ---- */
/* Build img->elfcore over img->physmem (nothing without a guest-physical view). */
void mr_elfcore_build(MrImage *img);

/* ---- the guest-physical view (mr-physmem.c) ---- */
typedef MrOpenOptions MrPhysOptions; /* max_ram_below_4g */
/* Build img->physmem from the machine type and blocks (or leave it NULL), and
 * img->physmem_about. */
void mr_physmem_build(MrImage *img, const MrPhysOptions *opts);
/* Append ",\n  \"physmem\": {…}" to a description. */
void mr_physmem_describe(const MrImage *img, GString *out);
/* The view's guest-physical ranges, in address order. */
guint mr_physmem_n_ranges(const MrImage *img);
void mr_physmem_range(const MrImage *img, guint index, guint64 *gpa, guint64 *len);
/* The architecture the machine's main RAM block names (for a view without CPU state). */
MrArch mr_physmem_arch(const MrImage *img);

/* JSON strings from image bytes (mr-describe.c; rules in docs/file-tree.md). */
void mr_json_append_bytes(GString *out, const guint8 *bytes, gsize len);
void mr_json_append_string(GString *out, const char *s);

/* ---- packed images (mr-packed.c; docs/packed-format.md) ---- */
typedef struct _MrPacked MrPacked;
typedef struct _MrFrameCache MrFrameCache;
/* mr_packed_open: check the header, index and bitmaps of the packed file @file (taken over,
 * also on failure). @cache_size 0 = the default. No read-ahead until the frame cache's
 * workers are started (mr_image_start_readahead). */
MrPacked *mr_packed_open(MrSource *file, guint64 cache_size, GError **error);
void mr_packed_free(MrPacked *pk); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MrPacked, mr_packed_free)
/* A source that reads the original image's bytes; it owns @pk from now on. */
MrSource *mr_packed_source(MrPacked *pk);
MrFrameCache *mr_packed_cache(MrPacked *pk);

extern const MrFormat mr_format_mapped_ram;
extern const MrFormat mr_format_legacy;

MrBlock *mr_block_new(void);
void mr_block_free(MrBlock *blk);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MrBlock, mr_block_free)

/* Bytes from an image as a printable C string for messages: printable ASCII is kept,
 * backslash and every other byte become \xNN. Returns: newly allocated. */
char *mr_escape_bytes(const guint8 *bytes, gsize len);
