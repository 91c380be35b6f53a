/* mr-tree.c: the directory tree of a mount, built once from the block paths. Read-only
 * after construction, so every FUSE worker thread may use it without locks. */
#include "mr-private.h"

#include <string.h>

typedef struct {
    char *name;
    guint parent;
    MrNodeKind kind;
    const MrBlock *block; /* MR_NODE_BLOCK */
    GBytes *content;      /* MR_NODE_CONTENT */
    GArray *children;     /* MR_NODE_DIR: of guint */
    GHashTable *by_name;  /* MR_NODE_DIR: name -> node + 1 */
} Node;

struct _MrTree {
    GArray *nodes; /* of Node */
};

static Node *node_at(const MrTree *tree, guint node)
{
    return &g_array_index(tree->nodes, Node, node);
}

static guint add_node(MrTree *tree, guint parent, const char *name, MrNodeKind kind)
{
    Node n = {.name = g_strdup(name), .parent = parent, .kind = kind};
    if (kind == MR_NODE_DIR) {
        n.children = g_array_new(FALSE, FALSE, sizeof(guint));
        n.by_name = g_hash_table_new(g_str_hash, g_str_equal);
    }
    guint index = tree->nodes->len;
    g_array_append_val(tree->nodes, n);
    if (index != 0) {
        Node *dir = node_at(tree, parent);
        g_array_append_val(dir->children, index);
        g_hash_table_insert(dir->by_name, node_at(tree, index)->name, GUINT_TO_POINTER(index + 1));
    }
    return index;
}

/* Walk @path ("a/b/c") from the root, making directories as needed; returns the parent
 * directory of the last component and leaves that component in *@leaf. */
static guint make_dirs(MrTree *tree, const char *path, const char **leaf)
{
    guint dir = 0;
    const char *start = path;
    for (const char *slash; (slash = strchr(start, '/')) != NULL; start = slash + 1) {
        g_autofree char *part = g_strndup(start, (gsize)(slash - start));
        guint child;
        if (!mr_tree_lookup(tree, dir, part, &child))
            child = add_node(tree, dir, part, MR_NODE_DIR);
        dir = child;
    }
    *leaf = start;
    return dir;
}

/* A generated file at @path, a name block paths never take (it starts with '.', or
 * mr_block_paths reserves it); nothing when @content is NULL. */
static void add_content(MrTree *tree, const char *path, GBytes *content)
{
    if (content == NULL)
        return;
    const char *leaf;
    guint dir = make_dirs(tree, path, &leaf);
    guint node = add_node(tree, dir, leaf, MR_NODE_CONTENT);
    node_at(tree, node)->content = g_bytes_ref(content);
}

MrTree *mr_tree_new(const MrImage *img)
{
    MrTree *tree = g_new0(MrTree, 1);
    tree->nodes = g_array_new(FALSE, FALSE, sizeof(Node));
    add_node(tree, 0, "", MR_NODE_DIR);
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    for (guint i = 0; i < paths->len; i++) {
        const char *leaf;
        guint dir = make_dirs(tree, g_ptr_array_index(paths, i), &leaf);
        guint node = add_node(tree, dir, leaf, MR_NODE_BLOCK);
        node_at(tree, node)->block = mr_image_block(img, i);
    }
    if (mr_image_physmem(img) != NULL) {
        guint view = add_node(tree, 0, MR_PHYSMEM_NAME, MR_NODE_BLOCK);
        node_at(tree, view)->block = mr_image_physmem(img);
    }
    if (mr_image_elfcore(img) != NULL) {
        guint core = add_node(tree, 0, MR_ELFCORE_NAME, MR_NODE_BLOCK);
        node_at(tree, core)->block = mr_image_elfcore(img);
    }
    add_content(tree, MR_CPUS_NAME, mr_image_cpus_json(img));
    add_content(tree, MR_VMDESC_NAME, mr_image_vmdesc(img));
    add_content(tree, MR_LIBVIRT_XML_PATH, mr_image_libvirt_xml(img));
    add_content(tree, MR_LIBVIRT_COOKIE_PATH, mr_image_libvirt_cookie(img));
    char *json = mr_image_describe_json(img);
    guint desc = add_node(tree, 0, MR_DESCRIPTION_NAME, MR_NODE_CONTENT);
    node_at(tree, desc)->content = g_bytes_new_take(json, strlen(json));
    return tree;
}

void mr_tree_free(MrTree *tree)
{
    if (tree == NULL)
        return;
    for (guint i = 0; i < tree->nodes->len; i++) {
        Node *n = node_at(tree, i);
        if (n->by_name)
            g_hash_table_unref(n->by_name);
        if (n->children)
            g_array_unref(n->children);
        if (n->content)
            g_bytes_unref(n->content);
        g_free(n->name);
    }
    g_array_unref(tree->nodes);
    g_free(tree);
}

guint mr_tree_n_nodes(const MrTree *tree)
{
    return tree->nodes->len;
}

MrNodeKind mr_tree_kind(const MrTree *tree, guint node)
{
    return node_at(tree, node)->kind;
}

const char *mr_tree_name(const MrTree *tree, guint node)
{
    return node_at(tree, node)->name;
}

guint mr_tree_parent(const MrTree *tree, guint node)
{
    return node_at(tree, node)->parent;
}

gboolean mr_tree_lookup(const MrTree *tree, guint dir, const char *name, guint *child)
{
    const Node *d = node_at(tree, dir);
    if (d->kind != MR_NODE_DIR)
        return FALSE;
    guint found = GPOINTER_TO_UINT(g_hash_table_lookup(d->by_name, name));
    if (found == 0)
        return FALSE;
    *child = found - 1;
    return TRUE;
}

guint mr_tree_n_children(const MrTree *tree, guint dir)
{
    const Node *d = node_at(tree, dir);
    return d->children ? d->children->len : 0;
}

guint mr_tree_child(const MrTree *tree, guint dir, guint index)
{
    return g_array_index(node_at(tree, dir)->children, guint, index);
}

const MrBlock *mr_tree_block(const MrTree *tree, guint node)
{
    return node_at(tree, node)->block;
}

GBytes *mr_tree_content(const MrTree *tree, guint node)
{
    return node_at(tree, node)->content;
}

guint64 mr_tree_size(const MrTree *tree, guint node)
{
    const Node *n = node_at(tree, node);
    switch (n->kind) {
    case MR_NODE_BLOCK:
        return mr_block_size(n->block);
    case MR_NODE_CONTENT:
        return g_bytes_get_size(n->content);
    default:
        return 0;
    }
}
