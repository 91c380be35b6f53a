/* image-builder.c: see image-builder.h. */
#include "image-builder.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#define QEVM_MAGIC 0x5145564du

static const char *const default_caps[] = {"mapped-ram", NULL};

void ib_spec_init(IbSpec *s)
{
    memset(s, 0, sizeof *s);
    g_strlcpy(s->lv_magic, "LibvirtQemudSave", sizeof s->lv_magic);
    s->lv_version = 2;
    s->lv_format = 6;
    s->lv_was_running = 1;
    s->lv_xml = "<domain type='kvm'><name>t</name></domain>";
    s->lv_cookie = "<cookie/>";
    s->lv_padding = 100;
    s->prefix_byte = 0x5a;
    s->magic = QEVM_MAGIC;
    s->version = 3;
    s->config = TRUE;
    s->machine_type = "pc-i440fx-10.0";
    s->caps = default_caps;
    s->ram_section_id = 1;
    s->ram_idstr = "ram";
    s->ram_version = 4;
    s->align = 4096;
    s->blocks = g_ptr_array_new();
    s->footers = TRUE;
    s->n_parts = 1;
    s->command = TRUE;
    s->end = TRUE;
    s->device_state = TRUE;
    s->eof = TRUE;
    s->vmdesc = TRUE;
    s->vmdesc_json = "{\"page_size\": 4096, \"devices\": []}";
}

static void block_free(IbBlock *b)
{
    g_free(b->data);
    g_free(b->stale);
    g_free(b->content);
    g_free(b);
}

static void record_free(IbRecord *r)
{
    g_free(r->data);
    g_free(r);
}

void ib_spec_clear(IbSpec *s)
{
    if (s->blocks != NULL) {
        for (guint i = 0; i < s->blocks->len; i++)
            block_free(g_ptr_array_index(s->blocks, i));
        g_ptr_array_unref(s->blocks);
        s->blocks = NULL;
    }
    if (s->records != NULL) {
        for (guint i = 0; i < s->records->len; i++)
            record_free(g_ptr_array_index(s->records, i));
        g_ptr_array_unref(s->records);
        s->records = NULL;
    }
}

IbBlock *ib_add_block_bytes(IbSpec *s, const guint8 *idstr, gsize idstr_len, guint64 used_length,
                            guint64 page_size)
{
    g_assert(idstr_len <= 255);
    IbBlock *b = g_new0(IbBlock, 1);
    memcpy(b->idstr, idstr, idstr_len);
    b->idstr_len = idstr_len;
    b->used_length = used_length;
    b->page_size = page_size;
    b->hdr_version = 1;
    b->n_pages = page_size ? used_length / page_size : 0;
    b->data = g_malloc0(MAX(b->n_pages, 1));
    b->stale = g_malloc0(MAX(b->n_pages, 1));
    g_ptr_array_add(s->blocks, b);
    return b;
}

IbBlock *ib_add_block(IbSpec *s, const char *idstr, guint64 used_length, guint64 page_size)
{
    return ib_add_block_bytes(s, (const guint8 *)idstr, strlen(idstr), used_length, page_size);
}

void ib_block_set_data(IbBlock *b, guint64 first, guint64 count)
{
    g_assert(first + count <= b->n_pages);
    memset(b->data + first, 1, count);
}

void ib_block_set_stale(IbBlock *b, guint64 first, guint64 count)
{
    g_assert(first + count <= b->n_pages);
    memset(b->stale + first, 1, count);
}

guint8 ib_page_byte(guint block_index, guint64 page, guint64 off)
{
    return (guint8)(1 + (block_index * 97u + page * 31u + off * 7u + off / 251u) % 255u);
}

guint8 ib_expected_byte(const IbSpec *s, guint index, guint64 offset)
{
    const IbBlock *b = g_ptr_array_index(s->blocks, index);
    if (s->legacy) {
        guint64 ps = ib_legacy_page_size(s), page = offset / ps;
        if (page >= b->used_length / ps || b->content == NULL || !b->data[page])
            return 0;
        return b->content[offset];
    }
    guint64 page = offset / b->page_size;
    if (page >= b->n_pages || !b->data[page])
        return 0;
    return ib_page_byte(index, page, offset % b->page_size);
}

/* ---- legacy records ---- */

void ib_spec_init_legacy(IbSpec *s)
{
    ib_spec_init(s);
    s->legacy = TRUE;
    s->caps = NULL;
    s->records = g_ptr_array_new();
}

guint32 ib_legacy_page_size(const IbSpec *s)
{
    return s->target_page_bits ? 1u << s->target_page_bits : 4096;
}

guint8 ib_seed_byte(guint8 seed, guint64 off)
{
    return (guint8)(1 + (seed * 113u + off * 13u + off / 253u) % 255u);
}

IbRecord *ib_record(const IbSpec *s, guint index)
{
    return g_ptr_array_index(s->records, index);
}

static IbRecord *add_record(IbSpec *s, IbRecKind kind, const char *block, guint64 page)
{
    g_assert(s->records != NULL);
    IbRecord *r = g_new0(IbRecord, 1);
    r->kind = kind;
    if (block == NULL) {
        r->cont = TRUE;
    } else {
        r->idstr_len = strlen(block);
        g_assert(r->idstr_len <= 255);
        memcpy(r->idstr, block, r->idstr_len);
    }
    r->addr = page * ib_legacy_page_size(s);
    r->encoding = 1;
    r->xlen = -1;
    g_ptr_array_add(s->records, r);
    return r;
}

IbRecord *ib_rec_page(IbSpec *s, const char *block, guint64 page, guint8 seed)
{
    IbRecord *r = add_record(s, IB_REC_PAGE, block, page);
    r->len = ib_legacy_page_size(s);
    r->data = g_malloc(r->len);
    for (gsize i = 0; i < r->len; i++)
        r->data[i] = ib_seed_byte(seed, i);
    return r;
}

IbRecord *ib_rec_page_bytes(IbSpec *s, const char *block, guint64 page, const guint8 *bytes)
{
    IbRecord *r = add_record(s, IB_REC_PAGE, block, page);
    r->len = ib_legacy_page_size(s);
    r->data = g_memdup2(bytes, r->len);
    return r;
}

IbRecord *ib_rec_zero(IbSpec *s, const char *block, guint64 page)
{
    return add_record(s, IB_REC_ZERO, block, page);
}

IbRecord *ib_rec_xbzrle(IbSpec *s, const char *block, guint64 page, const guint8 *delta, gsize len)
{
    IbRecord *r = add_record(s, IB_REC_XBZRLE, block, page);
    r->len = len;
    r->data = g_memdup2(delta, MAX(len, 1));
    return r;
}

IbRecord *ib_rec_raw(IbSpec *s, guint64 value)
{
    IbRecord *r = add_record(s, IB_REC_RAW, "", 0);
    r->flags = value;
    return r;
}

IbRecord *ib_rec_eos(IbSpec *s)
{
    return add_record(s, IB_REC_EOS, "", 0);
}

IbRecord *ib_rec_part(IbSpec *s)
{
    return add_record(s, IB_REC_PART, "", 0);
}

IbRecord *ib_rec_end(IbSpec *s)
{
    return add_record(s, IB_REC_END, "", 0);
}

IbRecord *ib_rec_command(IbSpec *s)
{
    return add_record(s, IB_REC_COMMAND, "", 0);
}

/* ULEB128 of at most two bytes, as QEMU's uleb128_decode_small. */
static gboolean uleb_small(const guint8 *in, gsize avail, guint32 *n, gsize *used)
{
    if (avail < 2) /* QEMU wants two bytes left before every length */
        return FALSE;
    if (in[0] < 0x80) {
        *n = in[0];
        *used = 1;
    } else {
        if (in[1] >= 0x80)
            return FALSE;
        *n = (in[0] & 0x7fu) + ((guint32)in[1] << 7);
        *used = 2;
    }
    return TRUE;
}

gboolean ib_xbzrle_apply(const guint8 *delta, gsize len, guint8 *page, gsize page_size)
{
    gsize at = 0, out = 0, used;
    guint32 zrun, nzrun;
    while (at < len) {
        if (!uleb_small(delta + at, len - at, &zrun, &used) || (at != 0 && zrun == 0))
            return FALSE;
        at += used;
        out += zrun;
        if (out > page_size)
            return FALSE;
        if (!uleb_small(delta + at, len - at, &nzrun, &used) || nzrun == 0)
            return FALSE;
        at += used;
        if (out + nzrun > page_size || at + nzrun > len)
            return FALSE;
        memcpy(page + out, delta + at, nzrun);
        out += nzrun;
        at += nzrun;
    }
    return TRUE;
}

/* ---- emitters ---- */

void ib_put_u8(GByteArray *out, guint8 v)
{
    g_byte_array_append(out, &v, 1);
}

void ib_put_be16(GByteArray *out, guint16 v)
{
    guint16 be = GUINT16_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&be, sizeof be);
}

void ib_put_be32(GByteArray *out, guint32 v)
{
    guint32 be = GUINT32_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&be, sizeof be);
}

void ib_put_be64(GByteArray *out, guint64 v)
{
    guint64 be = GUINT64_TO_BE(v);
    g_byte_array_append(out, (const guint8 *)&be, sizeof be);
}

void ib_put_bytes(GByteArray *out, const void *bytes, gsize len)
{
    g_byte_array_append(out, bytes, (guint)len);
}

void ib_put_name(GByteArray *out, const char *name)
{
    gsize len = strlen(name);
    g_assert(len <= 255);
    ib_put_u8(out, (guint8)len);
    ib_put_bytes(out, name, len);
}

static void put_zeros(GByteArray *out, guint64 n)
{
    guint old = out->len;
    g_byte_array_set_size(out, (guint)(old + n));
    memset(out->data + old, 0, (gsize)n);
}

static void pad_to(GByteArray *out, guint64 off)
{
    g_assert(off >= out->len);
    put_zeros(out, off - out->len);
}

static void put_le32(GByteArray *out, guint32 v, gboolean big_endian)
{
    guint32 x = big_endian ? GUINT32_TO_BE(v) : GUINT32_TO_LE(v);
    g_byte_array_append(out, (const guint8 *)&x, sizeof x);
}

void ib_patch_u8(GByteArray *img, guint64 off, guint8 v)
{
    g_assert(off < img->len);
    img->data[off] = v;
}

void ib_patch_be32(GByteArray *img, guint64 off, guint32 v)
{
    g_assert(off + 4 <= img->len);
    guint32 be = GUINT32_TO_BE(v);
    memcpy(img->data + off, &be, sizeof be);
}

void ib_patch_be64(GByteArray *img, guint64 off, guint64 v)
{
    g_assert(off + 8 <= img->len);
    guint64 be = GUINT64_TO_BE(v);
    memcpy(img->data + off, &be, sizeof be);
}

void ib_patch_le32(GByteArray *img, guint64 off, guint32 v)
{
    g_assert(off + 4 <= img->len);
    guint32 le = GUINT32_TO_LE(v);
    memcpy(img->data + off, &le, sizeof le);
}

/* ---- the layout ---- */

static void emit_libvirt(GByteArray *out, IbSpec *s)
{
    gsize xml_len = strlen(s->lv_xml) + 1;
    gsize cookie_len = s->lv_cookie ? strlen(s->lv_cookie) + 1 : 0;
    guint32 data_len =
        s->lv_data_len_set ? s->lv_data_len : (guint32)(xml_len + cookie_len + s->lv_padding);
    guint32 cookie_offset =
        s->lv_cookie_offset_set ? s->lv_cookie_offset : (s->lv_cookie ? (guint32)xml_len : 0);
    ib_put_bytes(out, s->lv_magic, 16);
    put_le32(out, s->lv_version, s->lv_big_endian);
    put_le32(out, data_len, s->lv_big_endian);
    put_le32(out, s->lv_was_running, s->lv_big_endian);
    put_le32(out, s->lv_format, s->lv_big_endian);
    put_le32(out, cookie_offset, s->lv_big_endian);
    put_zeros(out, 56);
    ib_put_bytes(out, s->lv_xml, xml_len);
    if (s->lv_cookie)
        ib_put_bytes(out, s->lv_cookie, cookie_len);
    put_zeros(out, s->lv_padding);
    /* A hand-set data_len moves the stream: write it where the header says, if that is
     * not before what is already written (otherwise the test wants an inconsistent file). */
    if (s->lv_data_len_set && (guint64)MR_LIBVIRT_HEADER_SIZE + data_len > out->len)
        pad_to(out, (guint64)MR_LIBVIRT_HEADER_SIZE + data_len);
}

static void emit_subsection_header(GByteArray *out, const char *name)
{
    ib_put_u8(out, 0x05);
    ib_put_name(out, name);
    ib_put_be32(out, 1);
}

void ib_emit_stream_header(GByteArray *out, const IbSpec *s)
{
    ib_put_be32(out, s->magic);
    ib_put_be32(out, s->version);
    if (!s->config)
        return;
    ib_put_u8(out, 0x07);
    ib_put_be32(out, (guint32)strlen(s->machine_type));
    ib_put_bytes(out, s->machine_type, strlen(s->machine_type));
    /* QEMU's order: target-page-bits, capabilities, uuid (vmstate_configuration). */
    if (s->target_page_bits != 0) {
        emit_subsection_header(out, "configuration/target-page-bits");
        ib_put_be32(out, s->target_page_bits);
    }
    guint n_caps = 0;
    while (s->caps && s->caps[n_caps])
        n_caps++;
    if (n_caps > 0) {
        emit_subsection_header(out, "configuration/capabilities");
        ib_put_be32(out, n_caps);
        for (guint i = 0; i < n_caps; i++)
            ib_put_name(out, s->caps[i]);
    }
    if (s->uuid) {
        emit_subsection_header(out, "configuration/uuid");
        for (guint8 i = 0; i < 16; i++)
            ib_put_u8(out, (guint8)(0xc0 + i));
    }
}

static void emit_footer(GByteArray *out, const IbSpec *s, guint32 id, guint32 override)
{
    if (!s->footers)
        return;
    ib_put_u8(out, 0x7e);
    ib_put_be32(out, override ? override : id);
}

/* A START or FULL section header: type, id, idstr, instance, version. */
static void emit_section_header(GByteArray *out, guint8 type, guint32 id, const char *idstr,
                                guint32 instance, guint32 version)
{
    ib_put_u8(out, type);
    ib_put_be32(out, id);
    ib_put_name(out, idstr);
    ib_put_be32(out, instance);
    ib_put_be32(out, version);
}

/* A legacy block list entry: idstr and used_length, nothing else (§4). */
static void emit_legacy_block(GByteArray *out, IbBlock *b)
{
    b->entry_offset = out->len;
    ib_put_u8(out, (guint8)b->idstr_len);
    ib_put_bytes(out, b->idstr, b->idstr_len);
    b->used_length_field = out->len;
    ib_put_be64(out, b->used_length);
    b->end_offset = out->len;
}

static IbBlock *find_block(IbSpec *s, const guint8 *idstr, gsize len)
{
    for (guint i = 0; i < s->blocks->len; i++) {
        IbBlock *b = g_ptr_array_index(s->blocks, i);
        if (b->idstr_len == len && memcmp(b->idstr, idstr, len) == 0)
            return b;
    }
    return NULL;
}

/* The expected content: replay the page records onto zeroed blocks, last record wins
 * (QEMU ram_load_precopy). Records the loader would refuse change nothing here. */
static void legacy_model(IbSpec *s)
{
    guint64 ps = ib_legacy_page_size(s);
    g_autoptr(GHashTable) sent = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    s->leg_page_records = s->leg_zero_records = s->leg_xbzrle_records = s->leg_resent = 0;
    for (guint i = 0; i < s->blocks->len; i++) {
        IbBlock *b = g_ptr_array_index(s->blocks, i);
        guint64 n = b->used_length / ps;
        g_free(b->content);
        b->content = g_malloc0(MAX(n * ps, 1));
        g_free(b->data);
        b->data = g_malloc0(MAX(n, 1));
    }
    IbBlock *last = NULL;
    for (guint i = 0; i < s->records->len; i++) {
        IbRecord *r = g_ptr_array_index(s->records, i);
        if (r->kind != IB_REC_PAGE && r->kind != IB_REC_ZERO && r->kind != IB_REC_XBZRLE)
            continue;
        IbBlock *b = r->cont ? last : find_block(s, r->idstr, r->idstr_len);
        last = b;
        if (b == NULL || r->addr >= b->used_length / ps * ps)
            continue;
        guint64 page = r->addr / ps;
        guint8 *dst = b->content + page * ps;
        char *key = g_strdup_printf("%p/%" G_GUINT64_FORMAT, (void *)b, page);
        if (!g_hash_table_add(sent, key))
            s->leg_resent++;
        if (r->kind == IB_REC_PAGE) {
            s->leg_page_records++;
            memcpy(dst, r->data, ps);
            b->data[page] = 1;
        } else if (r->kind == IB_REC_ZERO) {
            s->leg_zero_records++;
            memset(dst, 0, ps);
            b->data[page] = 0;
        } else {
            s->leg_xbzrle_records++;
            ib_xbzrle_apply(r->data, r->len, dst, ps);
            b->data[page] = 1;
        }
    }
}

static void emit_record(GByteArray *out, IbSpec *s, IbRecord *r)
{
    static const guint64 kind_flag[] = {
        [IB_REC_PAGE] = 0x08, [IB_REC_ZERO] = 0x02, [IB_REC_XBZRLE] = 0x40};
    r->offset = out->len;
    switch (r->kind) {
    case IB_REC_PAGE:
    case IB_REC_ZERO:
    case IB_REC_XBZRLE:
        ib_put_be64(out, r->addr | kind_flag[r->kind] | r->flags | (r->cont ? 0x20 : 0));
        if (!r->cont) {
            ib_put_u8(out, (guint8)r->idstr_len);
            ib_put_bytes(out, r->idstr, r->idstr_len);
        }
        r->data_offset = out->len;
        if (r->kind == IB_REC_PAGE) {
            ib_put_bytes(out, r->data, r->len);
        } else if (r->kind == IB_REC_ZERO) {
            ib_put_u8(out, r->fill);
        } else {
            ib_put_u8(out, r->encoding);
            ib_put_be16(out, (guint16)(r->xlen >= 0 ? (gsize)r->xlen : r->len));
            ib_put_bytes(out, r->data, r->len);
        }
        break;
    case IB_REC_RAW:
        ib_put_be64(out, r->flags);
        break;
    case IB_REC_EOS:
        ib_put_be64(out, 0x10);
        if (s->footers) {
            ib_put_u8(out, 0x7e);
            ib_put_be32(out, s->ram_section_id);
        }
        break;
    case IB_REC_PART:
    case IB_REC_END:
        ib_put_u8(out, r->kind == IB_REC_PART ? 0x02 : 0x03);
        ib_put_be32(out, s->ram_section_id);
        if (r->kind == IB_REC_PART && s->part_offset == 0)
            s->part_offset = r->offset;
        if (r->kind == IB_REC_END)
            s->end_offset = r->offset;
        break;
    case IB_REC_COMMAND:
        ib_put_u8(out, 0x08);
        ib_put_be16(out, 11);
        ib_put_be16(out, 0);
        break;
    }
    if (r->data_offset == 0)
        r->data_offset = out->len;
    r->end_offset = out->len;
}

/* The absolute image offset of the next byte appended to @out: ib_build_file() moves
 * what is written to the file out of @out. */
static guint64 at(const IbSpec *s, const GByteArray *out)
{
    return s->file_written + out->len;
}

static void file_pwrite(const IbSpec *s, const void *bytes, gsize len, guint64 offset)
{
    const guint8 *p = bytes;
    while (len > 0) {
        ssize_t n = pwrite(s->file_fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        g_assert(n > 0);
        p += n;
        len -= (gsize)n;
        offset += (guint64)n;
    }
}

/* ib_build_file(): write out what @out holds and empty it. */
static void file_flush(IbSpec *s, GByteArray *out)
{
    file_pwrite(s, out->data, out->len, s->file_written);
    s->file_written += out->len;
    g_byte_array_set_size(out, 0);
}

static void fill_slot(guint8 *slot, const IbBlock *b, guint index, guint64 p)
{
    if (b->data[p]) {
        for (guint64 o = 0; o < b->page_size; o++)
            slot[o] = ib_page_byte(index, p, o);
    } else if (b->stale[p]) {
        memset(slot, IB_STALE_BYTE, b->page_size);
    }
}

static void emit_block(GByteArray *out, IbSpec *s, guint index, IbBlock *b)
{
    b->entry_offset = at(s, out);
    ib_put_u8(out, (guint8)b->idstr_len);
    ib_put_bytes(out, b->idstr, b->idstr_len);
    b->used_length_field = at(s, out);
    ib_put_be64(out, b->used_length);
    b->hdr_offset = at(s, out);
    b->bitmap_offset_field = b->hdr_offset + 12;
    b->pages_offset_field = b->hdr_offset + 20;
    b->bitmap_offset = b->hdr_offset + 28;
    b->bitmap_size = (b->n_pages + 63) / 64 * 8;
    b->pages_offset = (b->bitmap_offset + b->bitmap_size + s->align - 1) / s->align * s->align;
    b->end_offset = b->pages_offset + b->used_length;
    ib_put_be32(out, b->hdr_version);
    ib_put_be64(out, b->page_size);
    ib_put_be64(out, b->bitmap_offset);
    ib_put_be64(out, b->pages_offset);
    /* bitmap: little-endian u64 words, page n = bit n % 8 of byte n / 8 */
    guint bm_start = out->len;
    put_zeros(out, b->bitmap_size);
    for (guint64 p = 0; p < b->n_pages; p++)
        if (b->data[p])
            out->data[bm_start + p / 8] |= (guint8)(1u << (p % 8));
    pad_to(out, b->pages_offset - s->file_written);
    if (s->to_file) { /* only the slots that hold something are written */
        file_flush(s, out);
        g_autofree guint8 *slot = g_malloc(MAX(b->page_size, 1));
        for (guint64 p = 0; p < b->n_pages; p++) {
            if (!b->data[p] && !b->stale[p])
                continue;
            fill_slot(slot, b, index, p);
            file_pwrite(s, slot, b->page_size, b->pages_offset + p * b->page_size);
        }
        s->file_written += b->used_length;
        return;
    }
    guint pages_start = out->len;
    put_zeros(out, b->used_length);
    for (guint64 p = 0; p < b->n_pages; p++)
        fill_slot(out->data + pages_start + p * b->page_size, b, index, p);
}

/* Device state, EOF and the VM description, as the spec asks. */
static void emit_tail(GByteArray *out, IbSpec *s)
{
    s->device_offset = s->device_state ? at(s, out) : 0;
    if (s->device_state && s->device_bytes != NULL) {
        ib_put_bytes(out, s->device_bytes, s->device_len);
    } else if (s->device_state) {
        emit_section_header(out, 0x04, 2, "timer", 0, 2);
        ib_put_be64(out, 0x0102030405060708u);
        ib_put_u8(out, 0x00);
        ib_put_u8(out, 0x06); /* a 0x06 byte inside device state must not fool the tail search */
        emit_footer(out, s, 2, 0);
    }
    s->eof_offset = 0;
    if (s->eof) {
        s->eof_offset = at(s, out);
        ib_put_u8(out, 0x00);
    }
    s->vmdesc_offset = 0;
    if (s->vmdesc) {
        s->vmdesc_offset = at(s, out);
        gsize len = strlen(s->vmdesc_json);
        ib_put_u8(out, 0x06);
        ib_put_be32(out, (guint32)((gint64)len + s->vmdesc_len_delta));
        ib_put_bytes(out, s->vmdesc_json, len);
    }
    s->size = at(s, out);
}

GByteArray *ib_build(IbSpec *s)
{
    GByteArray *out = g_byte_array_new();
    s->file_written = 0;
    if (s->libvirt)
        emit_libvirt(out, s);
    for (guint64 i = 0; i < s->prefix_len; i++)
        ib_put_u8(out, s->prefix_byte);
    s->stream_offset = out->len;
    ib_emit_stream_header(out, s);
    s->body_offset = out->len;

    for (guint i = 0; i < s->n_commands_before; i++) {
        ib_put_u8(out, 0x08);
        ib_put_be16(out, 2); /* PING */
        ib_put_be16(out, 4);
        ib_put_be32(out, 0xdeadbeef);
    }
    if (s->full_before_ram) {
        emit_section_header(out, 0x04, 40, "virtio-mem-early", 0, 1);
        ib_put_be64(out, 0x1122334455667788u);
        emit_footer(out, s, 40, 0);
    }
    if (s->start_before_ram != NULL) {
        emit_section_header(out, 0x01, 41, s->start_before_ram, 0, 1);
        ib_put_be64(out, 0);
        emit_footer(out, s, 41, 0);
    }

    guint32 id = s->ram_section_id;
    s->ram_start_offset = out->len;
    emit_section_header(out, 0x01, id, s->ram_idstr, s->ram_instance, s->ram_version);
    guint64 total = 0;
    for (guint i = 0; i < s->blocks->len; i++)
        total += ((IbBlock *)g_ptr_array_index(s->blocks, i))->used_length;
    s->mem_size_offset = out->len;
    ib_put_be64(out, (s->mem_size_set ? s->mem_size : total) | 0x04);
    if (s->legacy) {
        for (guint i = 0; i < s->blocks->len; i++)
            emit_legacy_block(out, g_ptr_array_index(s->blocks, i));
        s->eos_offset = 0;
        s->part_offset = 0;
        s->end_offset = 0;
        for (guint i = 0; i < s->records->len; i++) {
            IbRecord *r = g_ptr_array_index(s->records, i);
            r->data_offset = 0;
            emit_record(out, s, r);
            if (r->kind == IB_REC_EOS && s->eos_offset == 0)
                s->eos_offset = r->offset;
        }
        legacy_model(s);
        emit_tail(out, s);
        return out;
    }
    for (guint i = 0; i < s->blocks->len; i++)
        emit_block(out, s, i, g_ptr_array_index(s->blocks, i));
    s->eos_offset = at(s, out);
    ib_put_be64(out, 0x10);
    emit_footer(out, s, id, s->start_footer_id);

    s->part_offset = 0;
    for (guint i = 0; i < s->n_parts; i++) {
        if (i == 0)
            s->part_offset = at(s, out);
        ib_put_u8(out, 0x02);
        ib_put_be32(out, id);
        ib_put_be64(out, 0x10);
        emit_footer(out, s, id, s->part_footer_id);
    }
    if (s->command) {
        ib_put_u8(out, 0x08);
        ib_put_be16(out, 11); /* SWITCHOVER_START */
        ib_put_be16(out, 0);
    }
    s->end_offset = 0;
    if (s->end) {
        s->end_offset = at(s, out);
        ib_put_u8(out, 0x03);
        ib_put_be32(out, id);
        ib_put_be64(out, 0x10);
        emit_footer(out, s, id, s->end_footer_id);
    }
    emit_tail(out, s);
    return out;
}

GBytes *ib_build_bytes(IbSpec *s)
{
    return g_byte_array_free_to_bytes(ib_build(s));
}

void ib_build_file(IbSpec *s, int fd)
{
    g_assert(!s->legacy);
    s->to_file = TRUE;
    s->file_fd = fd;
    GByteArray *out = ib_build(s);
    file_flush(s, out);
    g_byte_array_unref(out);
    int rc = ftruncate(fd, (off_t)s->size);
    g_assert_cmpint(rc, ==, 0);
    s->to_file = FALSE;
    s->file_fd = -1;
    s->file_written = 0;
}

MrImage *ib_open_sparse(IbSpec *s, const MrOpenOptions *opts, GError **error)
{
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("mramfs-unit-XXXXXX.img", &path, NULL);
    g_assert(fd >= 0);
    ib_build_file(s, fd);
    close(fd);
    MrSource *src = mr_source_open_file(path, error);
    g_unlink(path);
    return src ? mr_image_open_source(src, "test.img", opts, error) : NULL;
}

MrImage *ib_open(GBytes *bytes, const MrOpenOptions *opts, GError **error)
{
    return mr_image_open_source(mr_source_new_from_bytes(bytes), "test.img", opts, error);
}

MrImage *ib_open_prefix(GBytes *bytes, gsize len, const MrOpenOptions *opts, GError **error)
{
    g_autoptr(GBytes) part = g_bytes_new_from_bytes(bytes, 0, len);
    return ib_open(part, opts, error);
}

MrImage *ib_open_array(GByteArray *img, const MrOpenOptions *opts, GError **error)
{
    g_autoptr(GBytes) bytes = g_bytes_new(img->data, img->len);
    return ib_open(bytes, opts, error);
}
