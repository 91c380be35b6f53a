/* test-names.c: lib/mr-names.c (idstr -> path), lib/mr-tree.c (the mount's tree) and
 * lib/mr-describe.c (.mramfs.json), through synthetic images with crafted idstrs. */
#include "test-helpers.h"

#include <string.h>

typedef struct {
    const char *id;
    gsize len; /* 0: strlen(id) */
} Id;

/* An image whose blocks carry @ids (one 1 KiB page each, page 0 data). */
static MrImage *image_with_ids(const Id *ids, gsize n, IbSpec *s)
{
    ib_spec_init(s);
    s->align = 1024;
    for (gsize i = 0; i < n; i++) {
        gsize len = ids[i].len ? ids[i].len : strlen(ids[i].id);
        IbBlock *b = ib_add_block_bytes(s, (const guint8 *)ids[i].id, len, 1024, 1024);
        ib_block_set_data(b, 0, 1);
    }
    g_autoptr(GBytes) bytes = ib_build_bytes(s);
    GError *error = NULL;
    MrImage *img = ib_open(bytes, NULL, &error);
    assert_no_error(error);
    assert_non_null(img);
    return img;
}

/* The paths of blocks with @ids equal @want. */
#define assert_paths(ids, want)                                                                    \
    _assert_paths((ids), G_N_ELEMENTS(ids), (want), G_N_ELEMENTS(want), __FILE__, __LINE__)
static void _assert_paths(const Id *ids, gsize n, const char *const *want, gsize n_want,
                          const char *file, int line)
{
    _assert_int_equal(n, n_want, file, line);
    IbSpec s;
    g_autoptr(MrImage) img = image_with_ids(ids, n, &s);
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    _assert_int_equal(paths->len, n, file, line);
    for (gsize i = 0; i < n; i++)
        _assert_string_equal(g_ptr_array_index(paths, i), want[i], file, line);
    ib_spec_clear(&s);
}

/* One idstr on its own gives @want. */
#define assert_path1(id, len, want)                                                                \
    do {                                                                                           \
        const Id one_[] = {{(id), (len)}};                                                         \
        const char *const want_[] = {(want)};                                                      \
        _assert_paths(one_, 1, want_, 1, __FILE__, __LINE__);                                      \
    } while (0)

static guint64 fnv1a64(const guint8 *p, gsize len)
{
    guint64 h = G_GUINT64_CONSTANT(0xcbf29ce484222325);
    for (gsize i = 0; i < len; i++)
        h = (h ^ p[i]) * G_GUINT64_CONSTANT(0x100000001b3);
    return h;
}

static void test_plain_and_slashes(void **state)
{
    (void)state;
    assert_path1("pc.ram", 0, "pc.ram");
    assert_path1("0000:00:01.0/vga.vram", 0, "0000:00:01.0/vga.vram");
    assert_path1("/rom@etc/acpi/tables", 0, "rom@etc/acpi/tables");
    assert_path1("a//b", 0, "a/b");
    assert_path1("a//b/", 0, "a/b");
    assert_path1("//a///b//", 0, "a/b");
    assert_path1("sp ace:~!@#$^&*()", 0, "sp ace:~!@#$^&*()");
    /* nothing but slashes: one component, '/' encoded */
    assert_path1("/", 0, "%2F");
    assert_path1("//", 0, "%2F%2F");
}

static void test_dots(void **state)
{
    (void)state;
    assert_path1("..", 0, "%2E.");
    assert_path1(".", 0, "%2E");
    assert_path1("../x", 0, "%2E./x");
    assert_path1("x/../y", 0, "x/%2E./y");
    assert_path1(".hidden", 0, "%2Ehidden");
    assert_path1("a./.b.", 0, "a./%2Eb."); /* only a leading dot */
    assert_path1(".mramfs.json", 0, "%2Emramfs.json");
    assert_path1("/./", 0, "%2E");
}

static void test_escapes(void **state)
{
    (void)state;
    assert_path1("%", 0, "%25");
    assert_path1("50%", 0, "50%25");
    assert_path1("%2F", 0, "%252F");
    assert_path1("a\0b", 3, "a%00b");
    assert_path1("\0", 1, "%00");
    assert_path1("\x01tab\x09\x1f", 0, "%01tab%09%1F");
    assert_path1("del\x7f", 0, "del%7F");
    assert_path1("new\nline", 0, "new%0Aline");
    assert_path1(" lead", 0, " lead");
    /* bytes >= 0x80 are kept, valid UTF-8 or not */
    assert_path1("caf\xc3\xa9", 0, "caf\xc3\xa9");
    assert_path1("\xff\xfe/\x80", 0, "\xff\xfe/\x80");
}

static void test_long_components(void **state)
{
    (void)state;
    guint8 id[255];
    char want[256];

    /* 255 plain bytes: exactly the name limit, kept */
    memset(id, 'x', sizeof id);
    memset(want, 'x', 255);
    want[255] = 0;
    assert_path1((const char *)id, 255, want);

    /* 254 'x' + '%': 257 bytes encoded -> 238 bytes + '~' + 16 hex = 255 */
    id[254] = '%';
    memset(want, 'x', 238);
    g_snprintf(want + 238, sizeof want - 238, "~%016" G_GINT64_MODIFIER "x", fnv1a64(id, 255));
    assert_int_equal(strlen(want), 255);
    assert_path1((const char *)id, 255, want);

    /* 255 '%': "%25" x 85; the cut at 238 would split the escape at 237, so 237 bytes */
    memset(id, '%', sizeof id);
    g_autoptr(GString) w = g_string_new(NULL);
    for (int i = 0; i < 79; i++)
        g_string_append(w, "%25");
    g_string_append_printf(w, "~%016" G_GINT64_MODIFIER "x", fnv1a64(id, 255));
    assert_int_equal(w->len, 254);
    assert_path1((const char *)id, 255, w->str);

    /* 236 'x' + 19 '%': the escape at 236 would be cut after "%2": cut at 236 */
    memset(id, 'x', 236);
    memset(id + 236, '%', 19);
    g_string_truncate(w, 0);
    for (int i = 0; i < 236; i++)
        g_string_append_c(w, 'x');
    g_string_append_printf(w, "~%016" G_GINT64_MODIFIER "x", fnv1a64(id, 255));
    assert_path1((const char *)id, 255, w->str);

    /* a long last component behind a directory: the hash covers the whole idstr */
    id[0] = 'd';
    id[1] = '/';
    memset(id + 2, 0x01, 253); /* 253 control bytes -> 759 encoded */
    g_string_assign(w, "d/");
    for (int i = 0; i < 79; i++)
        g_string_append(w, "%01");
    g_string_append_printf(w, "~%016" G_GINT64_MODIFIER "x", fnv1a64(id, 255));
    assert_path1((const char *)id, 255, w->str);

    /* the hash: FNV-1a 64 (known vectors, so the model above is the documented hash) */
    assert_int_equal(fnv1a64((const guint8 *)"", 0), G_GUINT64_CONSTANT(0xcbf29ce484222325));
    assert_int_equal(fnv1a64((const guint8 *)"a", 1), G_GUINT64_CONSTANT(0xaf63dc4c8601ec8c));
}

static void test_collisions(void **state)
{
    (void)state;
    {
        const Id ids[] = {{"a", 0}, {"a/b", 0}}; /* a file, then needed as a directory */
        const char *const want[] = {"a", "a~2/b"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"a/b", 0}, {"a", 0}}; /* a directory, then wanted as a file */
        const char *const want[] = {"a/b", "a~2"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"x", 0}, {"x", 0}, {"x", 0}};
        const char *const want[] = {"x", "x~2", "x~3"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"x", 0}, {"x~2", 0}};
        const char *const want[] = {"x", "x~2"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"x", 0}, {"x", 0}, {"x~2", 0}};
        const char *const want[] = {"x", "x~2", "x~2~2"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"x~2", 0}, {"x", 0}, {"x", 0}};
        const char *const want[] = {"x~2", "x", "x~3"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"a/b", 0}, {"a//b", 0}, {"/a/b/", 0}};
        const char *const want[] = {"a/b", "a/b~2", "a/b~3"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"a", 0}, {"a/b", 0}, {"a/c", 0}, {"a~2", 0}};
        const char *const want[] = {"a", "a~2/b", "a~2/c", "a~2~2"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"a/b", 0}, {"a/b/c", 0}}; /* inner component is a file */
        const char *const want[] = {"a/b", "a/b~2/c"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"/", 0}, {"%2F", 0}, {"//", 0}};
        const char *const want[] = {"%2F", "%252F", "%2F%2F"};
        assert_paths(ids, want);
    }
    {
        const Id ids[] = {{"..", 0}, {"%2E.", 0}}; /* the encoding is injective */
        const char *const want[] = {"%2E.", "%252E."};
        assert_paths(ids, want);
    }
}

/* A 255-byte name that collides keeps within 255 bytes with its suffix. */
static void test_collision_long(void **state)
{
    (void)state;
    char id[256];
    memset(id, 'y', 255);
    id[255] = 0;
    char second[256];
    memset(second, 'y', 253);
    strcpy(second + 253, "~2");
    const Id ids[] = {{id, 255}, {id, 255}};
    const char *const want[] = {id, second};
    assert_paths(ids, want);
}

/* A collision suffix on a name of 255 encoded bytes must not split a %XX escape either
 * (encode_component's rule): "y"*252 + "%25", twice -> the second drops the whole escape. */
static void test_collision_long_escape(void **state)
{
    (void)state;
    char id[254];
    memset(id, 'y', 252);
    id[252] = '%';
    id[253] = 0;
    char first[256], second[256];
    memset(first, 'y', 252);
    strcpy(first + 252, "%25");
    memset(second, 'y', 252);
    strcpy(second + 252, "~2");
    const Id ids[] = {{id, 253}, {id, 253}};
    const char *const want[] = {first, second};
    assert_paths(ids, want);
}

/* ---- the tree ---- */

static void test_tree(void **state)
{
    (void)state;
    const Id ids[] = {{"pc.ram", 0},
                      {"0000:00:01.0/vga.vram", 0},
                      {"/rom@etc/acpi/tables", 0},
                      {"0000:00:01.0/vga.rom", 0},
                      {"/rom@etc/acpi/rsdp", 0}};
    IbSpec s;
    g_autoptr(MrImage) img = image_with_ids(ids, G_N_ELEMENTS(ids), &s);
    g_autoptr(MrTree) tree = mr_tree_new(img);
    /* 0 root, 1 pc.ram, 2 0000:00:01.0/, 3 vga.vram, 4 rom@etc/, 5 acpi/, 6 tables,
     * 7 vga.rom, 8 rsdp, 9 physmem.raw (the guest-physical view of this pc-i440fx image:
     * pc.ram at 0), 10 physmem.elf (the same as an ELF core), 11 vmdesc.json,
     * 12 .mramfs.json; no cpus.json: the builder's device state has no cpu section */
    static const char *const names[] = {
        "",        "pc.ram", "0000:00:01.0", "vga.vram",    "rom@etc",     "acpi",        "tables",
        "vga.rom", "rsdp",   "physmem.raw",  "physmem.elf", "vmdesc.json", ".mramfs.json"};
    static const guint parents[] = {0, 0, 0, 2, 0, 4, 5, 2, 5, 0, 0, 0, 0};
    static const MrNodeKind kinds[] = {
        MR_NODE_DIR,   MR_NODE_BLOCK,   MR_NODE_DIR,    MR_NODE_BLOCK, MR_NODE_DIR,
        MR_NODE_DIR,   MR_NODE_BLOCK,   MR_NODE_BLOCK,  MR_NODE_BLOCK, MR_NODE_BLOCK,
        MR_NODE_BLOCK, MR_NODE_CONTENT, MR_NODE_CONTENT};
    /* -2: the guest-physical view, -3: the ELF core */
    static const int block_of[] = {-1, 0, -1, 1, -1, -1, 2, 3, 4, -2, -3, -1, -1};
    assert_non_null(mr_image_physmem(img));
    assert_int_equal(mr_tree_n_nodes(tree), G_N_ELEMENTS(names));
    for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
        assert_string_equal(mr_tree_name(tree, i), names[i]);
        assert_int_equal(mr_tree_parent(tree, i), parents[i]);
        assert_int_equal(mr_tree_kind(tree, i), kinds[i]);
        if (block_of[i] != -1) {
            const MrBlock *want = block_of[i] == -2   ? mr_image_physmem(img)
                                  : block_of[i] == -3 ? mr_image_elfcore(img)
                                                      : mr_image_block(img, (guint)block_of[i]);
            assert_ptr_equal(mr_tree_block(tree, i), want);
            if (block_of[i] != -3) /* the core: its headers, then the view's 1024 bytes */
                assert_int_equal(mr_tree_size(tree, i), 1024);
            assert_int_equal(mr_tree_n_children(tree, i), 0);
        } else if (kinds[i] == MR_NODE_DIR) {
            assert_int_equal(mr_tree_size(tree, i), 0);
        }
        if (i != 0) { /* every node is found under its parent by its name */
            guint child = 1000;
            assert_true(mr_tree_lookup(tree, parents[i], names[i], &child));
            assert_int_equal(child, i);
        }
    }
    /* children in creation order */
    /* vmdesc.json holds the VM description exactly as the image ends with it */
    gsize vlen;
    const char *vjson = g_bytes_get_data(mr_tree_content(tree, 11), &vlen);
    assert_int_equal(vlen, strlen(s.vmdesc_json));
    assert_memory_equal(vjson, s.vmdesc_json, vlen);
    static const guint root[] = {1, 2, 4, 9, 10, 11, 12}, pci[] = {3, 7}, acpi[] = {6, 8};
    assert_int_equal(mr_tree_n_children(tree, 0), G_N_ELEMENTS(root));
    for (guint i = 0; i < G_N_ELEMENTS(root); i++)
        assert_int_equal(mr_tree_child(tree, 0, i), root[i]);
    assert_int_equal(mr_tree_n_children(tree, 2), G_N_ELEMENTS(pci));
    for (guint i = 0; i < G_N_ELEMENTS(pci); i++)
        assert_int_equal(mr_tree_child(tree, 2, i), pci[i]);
    assert_int_equal(mr_tree_n_children(tree, 4), 1);
    assert_int_equal(mr_tree_child(tree, 4, 0), 5);
    for (guint i = 0; i < G_N_ELEMENTS(acpi); i++)
        assert_int_equal(mr_tree_child(tree, 5, i), acpi[i]);
    /* misses */
    guint child = 1000;
    assert_false(mr_tree_lookup(tree, 0, "nope", &child));
    assert_false(mr_tree_lookup(tree, 0, "vga.vram", &child)); /* not at the root */
    assert_false(mr_tree_lookup(tree, 1, "x", &child));        /* a file is no directory */
    assert_false(mr_tree_lookup(tree, 9, "x", &child));
    assert_false(mr_tree_lookup(tree, 10, "x", &child));
    assert_false(mr_tree_lookup(tree, 0, "", &child));
    assert_int_equal(child, 1000);

    assert_false(mr_tree_lookup(tree, 12, "x", &child));

    /* .mramfs.json: the description, listing every block path */
    GBytes *content = mr_tree_content(tree, 12);
    assert_non_null(content);
    assert_int_equal(mr_tree_size(tree, 12), g_bytes_get_size(content));
    g_autofree char *json = mr_image_describe_json(img);
    gsize len;
    const char *data = g_bytes_get_data(content, &len);
    assert_int_equal(len, strlen(json));
    assert_memory_equal(data, json, len);
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    for (guint i = 0; i < paths->len; i++) {
        g_autofree char *field =
            g_strdup_printf("\"path\": \"%s\"", (const char *)g_ptr_array_index(paths, i));
        if (strstr(json, field) == NULL)
            print_error("%s not in\n%s", field, json);
        assert_non_null(strstr(json, field));
    }
    ib_spec_clear(&s);
}

/* Colliding names make distinct nodes, and an empty tree still has its description. */
static void test_tree_collisions(void **state)
{
    (void)state;
    const Id ids[] = {{"a", 0}, {"a/b", 0}, {"a", 0}};
    IbSpec s;
    g_autoptr(MrImage) img = image_with_ids(ids, G_N_ELEMENTS(ids), &s);
    g_autoptr(MrTree) tree = mr_tree_new(img);
    guint a, a2, a3, b;
    assert_true(mr_tree_lookup(tree, 0, "a", &a));
    assert_true(mr_tree_lookup(tree, 0, "a~2", &a2));
    assert_true(mr_tree_lookup(tree, a2, "b", &b));
    assert_true(mr_tree_lookup(tree, 0, "a~3", &a3));
    assert_int_equal(mr_tree_kind(tree, a), MR_NODE_BLOCK);
    assert_int_equal(mr_tree_kind(tree, a2), MR_NODE_DIR);
    assert_ptr_equal(mr_tree_block(tree, a), mr_image_block(img, 0));
    assert_ptr_equal(mr_tree_block(tree, b), mr_image_block(img, 1));
    assert_ptr_equal(mr_tree_block(tree, a3), mr_image_block(img, 2));
    ib_spec_clear(&s);

    IbSpec e;
    ib_spec_init(&e);
    g_autoptr(GBytes) bytes = ib_build_bytes(&e);
    g_autoptr(MrImage) none = assert_open_ok(bytes);
    g_autoptr(MrTree) t = mr_tree_new(none);
    assert_int_equal(mr_tree_n_nodes(t), 3); /* root, vmdesc.json, .mramfs.json */
    assert_int_equal(mr_tree_n_children(t, 0), 2);
    guint desc;
    assert_true(mr_tree_lookup(t, 0, MR_DESCRIPTION_NAME, &desc));
    assert_int_equal(mr_tree_kind(t, desc), MR_NODE_CONTENT);
    ib_spec_clear(&e);
}

/* ---- .mramfs.json ---- */

static void test_describe_exact(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    IbBlock *b = ib_add_block(&s, "pc.ram", 2 * 4096, 4096);
    ib_block_set_data(b, 1, 1);
    ib_add_block(&s, "/rom@etc/acpi/rsdp", 4096, 4096);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    g_autofree char *json = mr_image_describe_json(img);
    g_autofree char *want = g_strdup_printf(
        "{\n"
        "  \"image\": \"test.img\",\n"
        "  \"format\": \"mapped-ram\",\n"
        "  \"container\": \"qemu\",\n"
        "  \"stream_offset\": 0,\n"
        "  \"file_size\": %" G_GUINT64_FORMAT ",\n"
        "  \"machine_type\": \"pc-i440fx-10.0\",\n"
        "  \"page_size\": 4096,\n"
        "  \"capabilities\": [\"mapped-ram\"],\n"
        "  \"complete\": true,\n"
        "  \"vmdesc\": true,\n"
        "  \"libvirt\": null,\n"
        "  \"physmem\": {\"about\": \"pc (i440fx): pc.ram [0, 0x2000) below 4 GiB\", "
        "\"ranges\": [{\"gpa\": 0, \"size\": 8192, \"block\": \"pc.ram\", "
        "\"block_offset\": 0}]},\n"
        "  \"device_state\": {\"sections\": 0, \"cpus\": 0, \"error\": \"VM description of "
        "\\\"timer\\\": sent but not described\"},\n"
        "  \"blocks\": [\n"
        "    {\"idstr\": \"pc.ram\", \"path\": \"pc.ram\", \"size\": 8192, \"page_size\": 4096, "
        "\"pages\": 2, \"data_pages\": 1, \"bitmap_offset\": 142, \"pages_offset\": 4096},\n"
        "    {\"idstr\": \"/rom@etc/acpi/rsdp\", \"path\": \"rom@etc/acpi/rsdp\", \"size\": 4096, "
        "\"page_size\": 4096, \"pages\": 1, \"data_pages\": 0, \"bitmap_offset\": "
        "%" G_GUINT64_FORMAT ", \"pages_offset\": %" G_GUINT64_FORMAT "}\n"
        "  ]\n"
        "}\n",
        s.size, ((IbBlock *)g_ptr_array_index(s.blocks, 1))->bitmap_offset,
        ((IbBlock *)g_ptr_array_index(s.blocks, 1))->pages_offset);
    assert_string_equal(json, want);
    ib_spec_clear(&s);
}

static void test_describe_libvirt(void **state)
{
    (void)state;
    IbSpec s;
    ib_spec_init(&s);
    s.libvirt = TRUE;
    s.lv_xml = "<domain/>";    /* 10 bytes with the NUL */
    s.lv_cookie = "<cookie/>"; /* 10 */
    s.lv_padding = 80;
    ib_add_block(&s, "pc.ram", 4096, 4096);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    g_autofree char *json = mr_image_describe_json(img);
    assert_non_null(strstr(json, "\n  \"container\": \"libvirt\",\n  \"stream_offset\": 192,\n"));
    assert_non_null(strstr(json,
                           "\n  \"libvirt\": {\"version\": 2, \"format\": 6, \"format_name\": "
                           "\"sparse\", \"was_running\": 1, \"data_len\": 100, "
                           "\"xml_length\": 10, \"cookie_length\": 90},\n"));
    ib_spec_clear(&s);
}

/* idstr bytes are written one escape per byte: NUL, 0xff, quote, backslash. */
static void test_describe_escaping(void **state)
{
    (void)state;
    const Id ids[] = {{"a\0\xff\"\\", 5}};
    IbSpec s;
    g_autoptr(MrImage) img = image_with_ids(ids, 1, &s);
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    assert_string_equal(g_ptr_array_index(paths, 0), "a%00\xff\"\\");
    g_autofree char *json = mr_image_describe_json(img);
    const char *want =
        "{\"idstr\": \"a\\u0000\\u00ff\\\"\\\\\", \"path\": \"a%00\\u00ff\\\"\\\\\", ";
    if (strstr(json, want) == NULL)
        print_error("want %s in\n%s", want, json);
    assert_non_null(strstr(json, want));
    ib_spec_clear(&s);

    /* control bytes and DEL in an idstr */
    const Id ctl[] = {{"\x01\x1f\x7f\x80~", 0}};
    g_autoptr(MrImage) img2 = image_with_ids(ctl, 1, &s);
    g_autofree char *json2 = mr_image_describe_json(img2);
    assert_non_null(strstr(json2, "{\"idstr\": \"\\u0001\\u001f\\u007f\\u0080~\", "
                                  "\"path\": \"%01%1F%7F\\u0080~\", "));
    ib_spec_clear(&s);
}

/* Capabilities and the machine type are strings from the image too: escaped per byte. */
static void test_describe_capabilities(void **state)
{
    (void)state;
    static const char *const caps[] = {"mapped-ram", "new\"cap\\", "\x01", NULL};
    IbSpec s;
    ib_spec_init(&s);
    s.caps = caps;
    s.machine_type = "virt-10.0\xff";
    ib_add_block(&s, "mach-virt.ram", 4096, 4096);
    g_autoptr(GBytes) bytes = ib_build_bytes(&s);
    g_autoptr(MrImage) img = assert_open_ok(bytes);
    g_autofree char *json = mr_image_describe_json(img);
    const char *want = "\n  \"machine_type\": \"virt-10.0\\u00ff\",\n  \"page_size\": 4096,\n"
                       "  \"capabilities\": [\"mapped-ram\", \"new\\\"cap\\\\\", \"\\u0001\"],\n";
    if (strstr(json, want) == NULL)
        print_error("want %s in\n%s", want, json);
    assert_non_null(strstr(json, want));
    ib_spec_clear(&s);
}

/* "path" is the name in the mount (docs/file-tree.md §4). A UTF-8 idstr keeps its bytes
 * in the path (§2.4 rule 2), so the JSON must decode to those bytes: raw UTF-8 or
 * \u00e9 both do, per-byte \u00c3\u00a9 ("Ã©") does not. */
static void test_describe_utf8_path(void **state)
{
    (void)state;
    const Id ids[] = {{"caf\xc3\xa9", 0}};
    IbSpec s;
    g_autoptr(MrImage) img = image_with_ids(ids, 1, &s);
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    assert_string_equal(g_ptr_array_index(paths, 0), "caf\xc3\xa9");
    g_autofree char *json = mr_image_describe_json(img);
    gboolean raw = strstr(json, "\"path\": \"caf\xc3\xa9\"") != NULL;
    gboolean escaped = strstr(json, "\"path\": \"caf\\u00e9\"") != NULL;
    if (!raw && !escaped)
        print_error("the path of block \"caf\\xc3\\xa9\" is not \"café\" in\n%s", json);
    assert_true(raw || escaped);
    ib_spec_clear(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_and_slashes),
        cmocka_unit_test(test_dots),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_long_components),
        cmocka_unit_test(test_collisions),
        cmocka_unit_test(test_collision_long),
        cmocka_unit_test(test_collision_long_escape),
        cmocka_unit_test(test_tree),
        cmocka_unit_test(test_tree_collisions),
        cmocka_unit_test(test_describe_exact),
        cmocka_unit_test(test_describe_libvirt),
        cmocka_unit_test(test_describe_escaping),
        cmocka_unit_test(test_describe_capabilities),
        cmocka_unit_test(test_describe_utf8_path),
    };
    return cmocka_run_group_tests_name("names", tests, NULL, NULL);
}
