/* mr-devstate.c: the device state a save holds after RAM, located field by field.
 *
 * FULL sections carry no length (qemu-save-formats.md §3.4): the VM description JSON that
 * closes the save is the only map of their bytes. We parse it (json-glib), then walk the
 * sections that follow RAM END in stream order, measuring each payload from its
 * description (fields × elements, then every subsection sent, each behind its own
 * `05 len name version` header, checked against the stream), and require the section
 * footer right after. A device whose payload we can measure can then be read by field
 * name: the vCPU registers (mr-cpu.c) and the VGA BAR (mr-physmem.c) come from here.
 *
 * The JSON and the stream are untrusted: nesting depth, sizes and counts are bounded before
 * use, every integer must be a JSON integer, and a payload must end before the JSON does. */
#include "mr-private.h"

#include <json-glib/json-glib.h>
#include <string.h>

#define SECTION_EOF        0x00
#define SECTION_FULL       0x04
#define SECTION_SUBSECTION 0x05
#define SECTION_FOOTER     0x7e

/* Real descriptions nest 6 deep and have elements of at most a few KiB (vga palette);
 * anything beyond these is refused rather than trusted. */
#define MAX_JSON_DEPTH   64
#define MAX_FIELD_SIZE   (G_GUINT64_CONSTANT(1) << 32)
#define MAX_ARRAY_LEN    (G_GUINT64_CONSTANT(1) << 24)
#define MAX_DEVICES      100000
#define MAX_PAYLOAD_SIZE (G_GUINT64_CONSTANT(1) << 36)

struct _MrDevice {
    char *name;
    guint32 instance_id, version;
    guint64 offset, len; /* the payload in the file */
    JsonObject *desc;    /* its entry in the description (owned by img->vmdesc_json) */
};

static void device_free(gpointer data)
{
    MrDevice *dev = data;
    g_free(dev->name);
    g_free(dev);
}

/* json-glib parses recursively, with no depth limit of its own (1.6): refuse deep nesting
 * before handing it the text. Its scanner also takes C comments and single-quoted strings,
 * which would hide brackets from this count (or start a string it does not see) and let a
 * deep nesting through: QEMU writes neither, so they are refused too. Returns: why the
 * text is refused, or NULL. */
static const char *nesting_problem(const char *json, gsize len)
{
    int depth = 0;
    gboolean in_string = FALSE;
    for (gsize i = 0; i < len; i++) {
        char c = json[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = FALSE;
        } else if (c == '"') {
            in_string = TRUE;
        } else if (c == '/' || c == '\'') {
            return "a comment or a single-quoted string, which JSON does not have";
        } else if (c == '{' || c == '[') {
            if (++depth > MAX_JSON_DEPTH)
                return "nested deeper than " G_STRINGIFY(MAX_JSON_DEPTH) " levels";
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return NULL;
}

static void set_bad_desc(GError **error, const char *what, const char *device)
{
    g_autofree char *shown = mr_escape_bytes((const guint8 *)device, strlen(device));
    g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "VM description of \"%s\": %s", shown, what);
}

/* A non-negative JSON integer member, or FALSE. */
static gboolean get_uint(JsonObject *obj, const char *member, guint64 *value)
{
    JsonNode *node = json_object_get_member(obj, member);
    if (node == NULL || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_INT64 || json_node_get_int(node) < 0)
        return FALSE;
    *value = (guint64)json_node_get_int(node);
    return TRUE;
}

static const char *get_string(JsonObject *obj, const char *member)
{
    JsonNode *node = json_object_get_member(obj, member);
    if (node == NULL || !JSON_NODE_HOLDS_VALUE(node) ||
        json_node_get_value_type(node) != G_TYPE_STRING)
        return NULL;
    return json_node_get_string(node);
}

static JsonArray *get_array(JsonObject *obj, const char *member)
{
    JsonNode *node = json_object_get_member(obj, member);
    return node != NULL && JSON_NODE_HOLDS_ARRAY(node) ? json_node_get_array(node) : NULL;
}

static JsonObject *array_object(JsonArray *array, guint i)
{
    JsonNode *node = json_array_get_element(array, i);
    return JSON_NODE_HOLDS_OBJECT(node) ? json_node_get_object(node) : NULL;
}

/* Bytes one field takes: size per element × elements (vmsd_desc_field_end records the
 * bytes written per element; array_len marks identical elements, §3.4). */
static gboolean field_bytes(JsonObject *field, guint64 *bytes)
{
    guint64 size, count = 1;
    if (!get_uint(field, "size", &size) || size > MAX_FIELD_SIZE)
        return FALSE;
    if (json_object_has_member(field, "array_len") &&
        (!get_uint(field, "array_len", &count) || count > MAX_ARRAY_LEN))
        return FALSE;
    *bytes = size * count;
    return TRUE;
}

static gboolean walk_vmsd(MrReader *r, JsonObject *vmsd, const char *device, GError **error);

/* A subsection as sent (vmstate_subsection_save): 05, u8 name length, name, be32 version. */
static gboolean walk_subsection(MrReader *r, JsonObject *sub, const char *device, GError **error)
{
    const char *name = get_string(sub, "vmsd_name");
    guint64 version;
    if (name == NULL || !get_uint(sub, "version", &version) || strlen(name) > 255) {
        set_bad_desc(error, "malformed subsection", device);
        return FALSE;
    }
    guint64 at = r->pos;
    guint8 marker = mr_reader_u8(r), len = mr_reader_u8(r);
    char sent[256];
    mr_reader_bytes(r, sent, len);
    guint32 sent_version = mr_reader_be32(r);
    if (!mr_reader_check(r, "device state", error))
        return FALSE;
    if (marker != SECTION_SUBSECTION || len != strlen(name) || memcmp(sent, name, len) != 0 ||
        sent_version != version) {
        g_autofree char *what = g_strdup_printf(
            "subsection \"%s\" is not where the description puts it (0x%" G_GINT64_MODIFIER "x)",
            name, at);
        set_bad_desc(error, what, device);
        return FALSE;
    }
    return walk_vmsd(r, sub, device, error);
}

/* Skip the bytes a vmsd's fields and subsections take, checking subsection headers. */
static gboolean walk_vmsd(MrReader *r, JsonObject *vmsd, const char *device, GError **error)
{
    JsonArray *fields = get_array(vmsd, "fields");
    JsonArray *subs = get_array(vmsd, "subsections");
    for (guint i = 0; fields != NULL && i < json_array_get_length(fields); i++) {
        JsonObject *field = array_object(fields, i);
        guint64 bytes;
        if (field == NULL || !field_bytes(field, &bytes)) {
            set_bad_desc(error, "a field without a valid size", device);
            return FALSE;
        }
        mr_reader_skip(r, bytes);
    }
    for (guint i = 0; subs != NULL && i < json_array_get_length(subs); i++) {
        JsonObject *sub = array_object(subs, i);
        if (sub == NULL) {
            set_bad_desc(error, "malformed subsection", device);
            return FALSE;
        }
        if (!walk_subsection(r, sub, device, error))
            return FALSE;
    }
    return mr_reader_check(r, "device state", error);
}

/* The next description entry for section (@name, @instance), searching from *@next:
 * early-setup devices are described first but sent before RAM (§3.4). */
static JsonObject *match_desc(JsonArray *devices, guint *next, const char *name, guint32 instance)
{
    for (guint i = *next; i < json_array_get_length(devices); i++) {
        JsonObject *d = array_object(devices, i);
        const char *dname = d ? get_string(d, "name") : NULL;
        guint64 dinst;
        if (dname != NULL && strcmp(dname, name) == 0 && get_uint(d, "instance_id", &dinst) &&
            dinst == instance) {
            *next = i + 1;
            return d;
        }
    }
    return NULL;
}

/* One FULL section (savevm.c qemu_savevm_state_complete_precopy_non_iterable): header,
 * payload measured from its description, footer. QEMU sends footers after every section or
 * after none (send-section-footer): *@footers is -1 until the first section tells, then
 * every section must agree, so that a payload measured short or long shows even where the
 * bytes after it are not 7e. */
static MrDevice *read_device(MrReader *r, JsonArray *devices, guint *next, int *footers,
                             GError **error)
{
    guint32 section_id = mr_reader_be32(r);
    guint8 len = mr_reader_u8(r);
    char name[256];
    mr_reader_bytes(r, name, len);
    name[len] = '\0';
    guint32 instance = mr_reader_be32(r), version = mr_reader_be32(r);
    if (!mr_reader_check(r, "device state section", error))
        return NULL;
    if (strlen(name) != len) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "device state: section name holds a NUL");
        return NULL;
    }
    JsonObject *desc = match_desc(devices, next, name, instance);
    if (desc == NULL) {
        set_bad_desc(error, "sent but not described", name);
        return NULL;
    }
    MrDevice *dev = g_new0(MrDevice, 1);
    *dev = (MrDevice){g_strdup(name), instance, version, r->pos, 0, desc};
    if (!walk_vmsd(r, desc, name, error)) {
        device_free(dev);
        return NULL;
    }
    if (r->pos - dev->offset > MAX_PAYLOAD_SIZE) {
        set_bad_desc(error, "a payload larger than 64 GiB", name);
        device_free(dev);
        return NULL;
    }
    dev->len = r->pos - dev->offset;
    int has_footer = mr_reader_peek_u8(r) == SECTION_FOOTER;
    if (*footers < 0)
        *footers = has_footer;
    if (has_footer != *footers) {
        g_autofree char *what = g_strdup_printf(
            "its payload does not end at its footer (0x%" G_GINT64_MODIFIER "x)", r->pos);
        set_bad_desc(error, what, name);
        device_free(dev);
        return NULL;
    }
    if (has_footer) {
        mr_reader_u8(r);
        if (mr_reader_be32(r) != section_id) {
            g_autofree char *what = g_strdup_printf(
                "its payload does not end at its footer (0x%" G_GINT64_MODIFIER "x)", r->pos - 5);
            set_bad_desc(error, what, name);
            device_free(dev);
            return NULL;
        }
    }
    return dev;
}

static JsonNode *parse_vmdesc(const MrImage *img, GError **error)
{
    gsize len;
    const char *json = g_bytes_get_data(img->vmdesc, &len);
    const char *problem = nesting_problem(json, len);
    if (problem != NULL) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "VM description: %s", problem);
        return NULL;
    }
    g_autoptr(JsonParser) parser = json_parser_new_immutable();
    g_autoptr(GError) local = NULL;
    if (!json_parser_load_from_data(parser, json, (gssize)len, &local)) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "VM description: not JSON: %s",
                    local->message);
        return NULL;
    }
    JsonNode *root = json_parser_get_root(parser);
    if (root == NULL || !JSON_NODE_HOLDS_OBJECT(root) ||
        get_array(json_node_get_object(root), "devices") == NULL) {
        g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT, "VM description: no \"devices\" list");
        return NULL;
    }
    return json_node_ref(root);
}

/* Walk every FULL section from img->devstate_offset to the EOF marker before the JSON. */
static gboolean walk_sections(MrImage *img, JsonArray *devices, GError **error)
{
    MrReader r;
    mr_reader_init(&r, img->src, img->devstate_offset);
    guint next = 0;
    int footers = -1;
    gboolean ok = TRUE;
    while (ok) {
        guint64 at = r.pos;
        guint8 type = mr_reader_u8(&r);
        if (!(ok = mr_reader_check(&r, "device state", error)))
            break;
        if (type == SECTION_EOF) {
            /* find_vmdesc proved an EOF marker right before the JSON; one earlier means
             * bytes we cannot account for. */
            if (r.pos != img->vmdesc_offset - 5) {
                g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                            "device state: end-of-stream marker at 0x%" G_GINT64_MODIFIER
                            "x, before the VM description",
                            at);
                ok = FALSE;
            }
            break;
        }
        if (type != SECTION_FULL || img->devices->len >= MAX_DEVICES) {
            g_set_error(error, MR_ERROR, MR_ERROR_UNSUPPORTED,
                        "device state: section type 0x%02x at 0x%" G_GINT64_MODIFIER
                        "x is not a device state section",
                        type, at);
            ok = FALSE;
            break;
        }
        MrDevice *dev = read_device(&r, devices, &next, &footers, error);
        if (dev == NULL || dev->offset + dev->len > img->vmdesc_offset) {
            if (dev != NULL)
                g_set_error(error, MR_ERROR, MR_ERROR_CORRUPT,
                            "device state of \"%s\" runs into the VM description", dev->name);
            g_clear_pointer(&dev, device_free);
            ok = FALSE;
            break;
        }
        g_ptr_array_add(img->devices, dev);
    }
    mr_reader_clear(&r);
    return ok;
}

gboolean mr_devstate_load(MrImage *img, GError **error)
{
    img->devices = g_ptr_array_new_with_free_func(device_free);
    JsonNode *root = parse_vmdesc(img, error);
    if (root == NULL)
        return FALSE;
    img->vmdesc_json = root;
    JsonArray *devices = get_array(json_node_get_object(root), "devices");
    if (!walk_sections(img, devices, error)) {
        g_ptr_array_set_size(img->devices, 0);
        return FALSE;
    }
    return TRUE;
}

void mr_devstate_clear(MrImage *img)
{
    g_clear_pointer(&img->devices, g_ptr_array_unref);
    g_clear_pointer(&img->vmdesc_json, json_node_unref);
}

const MrDevice *mr_devstate_find(const MrImage *img, const char *name, guint32 instance)
{
    for (guint i = 0; img->devices != NULL && i < img->devices->len; i++) {
        const MrDevice *dev = g_ptr_array_index(img->devices, i);
        if (dev->instance_id == instance && strcmp(dev->name, name) == 0)
            return dev;
    }
    return NULL;
}

guint mr_devstate_n_devices(const MrImage *img)
{
    return img->devices != NULL ? img->devices->len : 0;
}

const MrDevice *mr_devstate_device(const MrImage *img, guint index)
{
    return g_ptr_array_index(img->devices, index);
}

const char *mr_device_name(const MrDevice *dev)
{
    return dev->name;
}

guint32 mr_device_instance(const MrDevice *dev)
{
    return dev->instance_id;
}

/* Find member @name among @vmsd's fields (then its subsections, whose headers sit between),
 * adding the bytes before it to *@offset. A device's own description was fully measured by
 * walk_vmsd; a struct's is checked here (a field without a size ends the search). */
static JsonObject *find_field(JsonObject *vmsd, const char *name, guint64 *offset, int depth)
{
    JsonArray *fields = get_array(vmsd, "fields");
    for (guint i = 0; fields != NULL && i < json_array_get_length(fields); i++) {
        JsonObject *field = array_object(fields, i);
        const char *fname = field ? get_string(field, "name") : NULL;
        guint64 bytes;
        if (field == NULL || !field_bytes(field, &bytes))
            return NULL;
        if (fname != NULL && strcmp(fname, name) == 0)
            return field;
        *offset += bytes;
    }
    JsonArray *subs = get_array(vmsd, "subsections");
    for (guint i = 0; depth < MAX_JSON_DEPTH && subs != NULL && i < json_array_get_length(subs);
         i++) {
        JsonObject *sub = array_object(subs, i);
        const char *sname = sub ? get_string(sub, "vmsd_name") : NULL;
        if (sname == NULL)
            return NULL;
        *offset += 1 + 1 + strlen(sname) + 4;
        JsonObject *hit = find_field(sub, name, offset, depth + 1);
        if (hit != NULL)
            return hit;
    }
    return NULL;
}

gboolean mr_device_field(const MrDevice *dev, const char *name, guint index, const char *member,
                         guint64 *offset, guint32 *size)
{
    guint64 at = 0, elem_size, count = 1;
    JsonObject *field = find_field(dev->desc, name, &at, 0);
    if (field == NULL || !get_uint(field, "size", &elem_size))
        return FALSE;
    if (json_object_has_member(field, "array_len") && !get_uint(field, "array_len", &count))
        return FALSE;
    /* Elements described one by one ("index") may differ in size: only the first is found. */
    if (index >= count || (index > 0 && json_object_has_member(field, "index")))
        return FALSE;
    at += elem_size * index;
    if (member != NULL) {
        JsonNode *st = json_object_get_member(field, "struct");
        guint64 elem_start = at, elem_end = at + elem_size;
        if (st == NULL || !JSON_NODE_HOLDS_OBJECT(st))
            return FALSE;
        field = find_field(json_node_get_object(st), member, &at, 0);
        /* a member must lie inside its element, whatever the struct claims */
        if (field == NULL || !get_uint(field, "size", &elem_size) || at < elem_start ||
            elem_size > elem_end - at)
            return FALSE;
    }
    if (at + elem_size > dev->len || elem_size > G_MAXUINT32)
        return FALSE;
    *offset = dev->offset + at;
    *size = (guint32)elem_size;
    return TRUE;
}

gboolean mr_device_read(const MrImage *img, const MrDevice *dev, const char *name, guint index,
                        const char *member, void *buf, gsize len)
{
    guint64 offset;
    guint32 size;
    return mr_device_field(dev, name, index, member, &offset, &size) && size == len &&
           mr_source_read(img->src, offset, buf, len, NULL);
}

gboolean mr_device_read_be(const MrImage *img, const MrDevice *dev, const char *name, guint index,
                           const char *member, guint64 *value)
{
    guint64 offset;
    guint32 size;
    guint8 bytes[8];
    if (!mr_device_field(dev, name, index, member, &offset, &size) || size == 0 || size > 8 ||
        !mr_source_read(img->src, offset, bytes, size, NULL))
        return FALSE;
    *value = 0;
    for (guint32 i = 0; i < size; i++)
        *value = *value << 8 | bytes[i];
    return TRUE;
}
