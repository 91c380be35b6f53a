/* mr-names.c: RAMBlock idstr → path inside the mount (docs/file-tree.md).
 *
 * An idstr is up to 255 arbitrary bytes from the image ("pc.ram", "0000:00:01.0/vga.vram",
 * "/rom@etc/acpi/tables", or anything a hostile image holds). Rules, in order:
 *  1. split on '/', drop empty components (a leading '/' and "//" vanish);
 *  2. percent-encode '%', NUL, bytes < 0x20, 0x7f and a leading '.' as %XX: no component
 *     can be "." or "..", and names starting with '.' stay free for mramfs's own files;
 *  3. a component longer than 255 bytes is cut and ends in '~' + a hash of the idstr;
 *  4. if the path is taken (or a directory it needs is a file), '~2', '~3', … is appended
 *     to the component that collides.
 * An idstr with no component left ("/", "//") becomes the single component of its
 * encoded bytes with '/' as %2F. */
#include "mr-private.h"

#include <string.h>

#define NAME_MAX_BYTES 255
#define HASH_SUFFIX    17 /* '~' + 16 hex digits */

static guint64 fnv1a64(const guint8 *bytes, gsize len)
{
    guint64 h = G_GUINT64_CONSTANT(0xcbf29ce484222325);
    for (gsize i = 0; i < len; i++)
        h = (h ^ bytes[i]) * G_GUINT64_CONSTANT(0x100000001b3);
    return h;
}

static gboolean needs_escape(guint8 c, gsize pos, gboolean slash_too)
{
    return c == '%' || c < 0x20 || c == 0x7f || (pos == 0 && c == '.') || (slash_too && c == '/');
}

/* The length to keep of @name so that it is at most @max bytes and no %XX escape is split. */
static gsize escape_safe_cut(const char *name, gsize max)
{
    gsize cut = MIN(strlen(name), max);
    for (gsize back = 1; back <= 2 && back <= cut; back++)
        if (name[cut - back] == '%')
            return cut - back;
    return cut;
}

/* Encode one component; cut it to NAME_MAX_BYTES with a hash of the whole idstr. */
static char *encode_component(const guint8 *bytes, gsize len, gboolean slash_too, guint64 hash)
{
    GString *out = g_string_sized_new(len);
    for (gsize i = 0; i < len; i++) {
        if (needs_escape(bytes[i], i, slash_too))
            g_string_append_printf(out, "%%%02X", bytes[i]);
        else
            g_string_append_c(out, (char)bytes[i]);
    }
    if (out->len > NAME_MAX_BYTES) {
        g_string_truncate(out, escape_safe_cut(out->str, NAME_MAX_BYTES - HASH_SUFFIX));
        g_string_append_printf(out, "~%016" G_GINT64_MODIFIER "x", hash);
    }
    return g_string_free(out, FALSE);
}

static GPtrArray *idstr_components(const guint8 *idstr, gsize len)
{
    GPtrArray *parts = g_ptr_array_new_with_free_func(g_free);
    guint64 hash = fnv1a64(idstr, len);
    gsize start = 0;
    for (gsize i = 0; i <= len; i++) {
        if (i < len && idstr[i] != '/')
            continue;
        if (i > start)
            g_ptr_array_add(parts, encode_component(idstr + start, i - start, FALSE, hash));
        start = i + 1;
    }
    if (parts->len == 0)
        g_ptr_array_add(parts, encode_component(idstr, len, TRUE, hash));
    return parts;
}

/* @taken maps a path to GINT_TO_POINTER(1) for a file, 2 for a directory. A directory
 * component may join an existing directory; anything else that is taken gets a suffix. */
static char *unique_path(GHashTable *taken, const char *dir, const char *name, gboolean is_dir)
{
    for (guint n = 1;; n++) {
        g_autofree char *suffix = n == 1 ? g_strdup("") : g_strdup_printf("~%u", n);
        gsize keep = escape_safe_cut(name, NAME_MAX_BYTES - strlen(suffix));
        g_autofree char *base = g_strndup(name, keep);
        char *path =
            *dir ? g_strconcat(dir, "/", base, suffix, NULL) : g_strconcat(base, suffix, NULL);
        gpointer kind = g_hash_table_lookup(taken, path);
        if (kind == NULL || (is_dir && GPOINTER_TO_INT(kind) == 2))
            return path;
        g_free(path);
    }
}

GPtrArray *mr_block_paths(const MrImage *img)
{
    GPtrArray *paths = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GHashTable) taken = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    /* The views come first: a block that happens to be called like one gets the suffix. */
    if (mr_image_physmem(img) != NULL)
        g_hash_table_replace(taken, g_strdup(MR_PHYSMEM_NAME), GINT_TO_POINTER(1));
    if (mr_image_elfcore(img) != NULL)
        g_hash_table_replace(taken, g_strdup(MR_ELFCORE_NAME), GINT_TO_POINTER(1));
    if (mr_image_cpus_json(img) != NULL)
        g_hash_table_replace(taken, g_strdup(MR_CPUS_NAME), GINT_TO_POINTER(1));
    g_hash_table_replace(taken, g_strdup(MR_VMDESC_NAME), GINT_TO_POINTER(1));
    for (guint i = 0; i < mr_image_n_blocks(img); i++) {
        gsize len;
        const guint8 *idstr = mr_block_idstr(mr_image_block(img, i), &len);
        g_autoptr(GPtrArray) parts = idstr_components(idstr, len);
        g_autofree char *dir = g_strdup("");
        for (guint p = 0; p < parts->len; p++) {
            gboolean last = p + 1 == parts->len;
            char *path = unique_path(taken, dir, g_ptr_array_index(parts, p), !last);
            g_hash_table_replace(taken, g_strdup(path), GINT_TO_POINTER(last ? 1 : 2));
            g_free(dir);
            dir = path;
        }
        g_ptr_array_add(paths, g_steal_pointer(&dir));
    }
    return paths;
}
