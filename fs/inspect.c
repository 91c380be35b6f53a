/* inspect.c: mramfs-inspect, the block table of an image without mounting it. A second
 * frontend over libmramfs with no FUSE at all (as squashfuse_ls is to squashfuse). */
#include "mramfs.h"
#include "progress.h"

#include <stdio.h>
#include <string.h>

static gboolean opt_json;
static char *opt_offset;
static char *opt_index;

static const GOptionEntry entries[] = {
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "print the description as JSON", NULL},
    {"offset", 0, 0, G_OPTION_ARG_STRING, &opt_offset,
     "the QEMU stream starts at byte N (non-libvirt header)", "N"},
    {"index", 0, 0, G_OPTION_ARG_FILENAME, &opt_index,
     "legacy streams: keep the page index in PATH (\"\" = none)", "PATH"},
    G_OPTION_ENTRY_NULL,
};

static void print_summary(const MrImage *img)
{
    const char *machine = mr_image_machine_type(img);
    g_autofree char *shown = machine ? mr_escape_bytes((const guint8 *)machine, strlen(machine))
                                     : g_strdup("(not recorded)");
    const GPtrArray *caps = mr_image_capabilities(img);
    printf("image:         %s\n", mr_image_path(img));
    printf("format:        %s in a %s container, stream at offset %" G_GUINT64_FORMAT "%s\n",
           mr_image_format(img), mr_image_container(img), mr_image_stream_offset(img),
           mr_image_is_packed(img) ? " (of the image in a packed file)" : "");
    printf("machine type:  %s\n", shown);
    printf("capabilities: ");
    for (guint i = 0; i < caps->len; i++)
        printf(" %s", (const char *)g_ptr_array_index(caps, i));
    printf("\nblocks:        %u\n\n", mr_image_n_blocks(img));
}

/* One line per block: the idstr as stored (escaped), the numbers, and the path in the
 * mount when the name mapping changed it. */
static void print_table(const MrImage *img)
{
    g_autoptr(GPtrArray) paths = mr_block_paths(img);
    printf("%-28s %12s %9s %9s %5s %12s %12s  %s\n", "idstr", "size", "pages", "data", "psize",
           "bitmap@", "pages@", "path (if different)");
    for (guint i = 0; i < mr_image_n_blocks(img); i++) {
        const MrBlock *b = mr_image_block(img, i);
        gsize idlen;
        const guint8 *idstr = mr_block_idstr(b, &idlen);
        g_autofree char *name = mr_escape_bytes(idstr, idlen);
        const char *path = g_ptr_array_index(paths, i);
        printf("%-28s %12" G_GUINT64_FORMAT " %9" G_GUINT64_FORMAT " %9" G_GUINT64_FORMAT
               " %5u %#12" G_GINT64_MODIFIER "x %#12" G_GINT64_MODIFIER "x  %s\n",
               name, mr_block_size(b), mr_block_size(b) / mr_block_page_size(b),
               mr_block_data_pages(b), mr_block_page_size(b), mr_block_bitmap_offset(b),
               mr_block_pages_offset(b), strcmp(name, path) != 0 ? path : "");
    }
}

int main(int argc, char **argv)
{
    g_set_prgname("mramfs-inspect");
    g_autoptr(GOptionContext) ctx = g_option_context_new("IMAGE");
    g_option_context_set_summary(
        ctx, "Show the RAMBlocks of a saved QEMU VM (mapped-ram or legacy stream) "
             "and whether mramfs can mount it.\nExit status: 0 "
             "mountable, 1 not, 2 usage error.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_autoptr(GError) error = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &error) || argc != 2) {
        g_printerr("mramfs-inspect: %s\n",
                   error ? error->message
                         : "usage: mramfs-inspect IMAGE [--json] [--offset N] [--index PATH]");
        return 2;
    }
    MrOpenOptions open_opts = {0};
    if (opt_offset && !mr_parse_offset(opt_offset, &open_opts)) {
        g_printerr("mramfs-inspect: bad --offset %s\n", opt_offset);
        return 2;
    }
    /* Absolute in the description, as the daemon writes it; messages name it as given. */
    g_autofree char *abs = g_canonicalize_filename(argv[1], NULL);
    open_opts.index_path = opt_index;
    g_autofree char *label = g_strdup_printf("mramfs-inspect: %s: indexing", argv[1]);
    MrProgressBar bar;
    mr_progress_bar_init(&bar, label);
    open_opts.progress = mr_progress_bar_update;
    open_opts.progress_data = &bar;
    g_autoptr(MrImage) img = mr_image_open(abs, &open_opts, &error);
    mr_progress_bar_finish(&bar);
    if (img == NULL) {
        g_printerr("mramfs-inspect: %s: %s\n", argv[1], error->message);
        return 1;
    }
    if (opt_json) {
        g_autofree char *json = mr_image_describe_json(img);
        fputs(json, stdout);
        return 0;
    }
    print_summary(img);
    print_table(img);
    printf("complete: yes\n");
    return 0;
}
