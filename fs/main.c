/* main.c: the mramfs daemon and its mount(8) helper personality.
 *
 *   mramfs IMAGE MOUNTPOINT [-o opts] [-f] [-d] [-s]
 *   mount.mramfs IMAGE MOUNTPOINT [-sfnv] [-o opts] [-t type]   (run by mount(8))
 *
 * The image is opened and fully validated before anything is mounted, so a bad image
 * never leaves a mount behind; the parent returns only once the mount exists. */
#include "mramfs-fs.h"
#include "progress.h"

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

typedef struct {
    char *image;
    char *mountpoint;
    char *offset;
    char *index;
    char *below_4g;
    char *cpu_vendor;
    char *cache_size;
    int show_help;
    int show_version;
    gboolean max_threads_given; /* -o max_threads=N seen (it stays for libfuse to parse) */
} Options;

enum { KEY_MAX_THREADS = 1 };

/* FUSE worker threads when -o max_threads is not given (libfuse's own default is 10). Each
 * holds about 2.3 MiB once it has served a large read: libfuse's 1 MiB request buffer, our
 * 1 MiB reply buffer, a zstd context and its input buffer. Two per CPU keep both CPUs busy
 * while others wait for a frame, and keep the daemon within cache_size + 32 MiB
 * (docs/threat-model.md §4). */
static guint default_max_threads(void)
{
    return MAX(4u, 2u * g_get_num_processors());
}

#define MR_OPT(t, p)                                                                               \
    {                                                                                              \
        t, offsetof(Options, p), 1                                                                 \
    }
static const struct fuse_opt option_spec[] = {
    MR_OPT("stream_offset=%s", offset),
    MR_OPT("index=%s", index),
    MR_OPT("max_ram_below_4g=%s", below_4g),
    MR_OPT("cpu_vendor=%s", cpu_vendor),
    MR_OPT("cache_size=%s", cache_size),
    MR_OPT("offset=%s", offset), /* command line only: mount(8) takes offset= for loop devices */
    FUSE_OPT_KEY("max_threads=", KEY_MAX_THREADS),
    MR_OPT("-h", show_help),
    MR_OPT("--help", show_help),
    MR_OPT("-V", show_version),
    MR_OPT("--version", show_version),
    FUSE_OPT_END,
};

static void usage(const char *prog)
{
    printf("usage: %s IMAGE MOUNTPOINT [options]\n\n"
           "Mount a saved QEMU VM read-only: one sparse file per RAMBlock, plus\n"
           "/" MR_DESCRIPTION_NAME " describing the image (and .libvirt/ for libvirt saves).\n"
           "Reads mapped-ram saves and legacy sequential streams, bare (`migrate file:`),\n"
           "at an offset, or behind a libvirt header (`virsh save`, raw or sparse; convert\n"
           "compressed ones with mramfs-pack). Legacy streams are indexed once; the index\n"
           "is kept for the next mount of the unchanged image.\n\n"
           "mramfs options:\n"
           "    -o stream_offset=N     the QEMU stream starts at byte N of IMAGE (for\n"
           "                           `migrate file:PATH,offset=N` behind a header that is not\n"
           "                           libvirt's; decimal or 0x-prefixed hex). `-o offset=N` is\n"
           "                           the same on the command line, but mount(8) and fstab\n"
           "                           take offset= for a loop device: use stream_offset= there\n"
           "    -o index=PATH          legacy (non-mapped-ram) streams: keep the page index in\n"
           "                           PATH (default: $XDG_CACHE_HOME/mramfs/<hash>.idx;\n"
           "                           index= with no PATH: index every time, keep nothing)\n"
           "    -o max_ram_below_4g=N  x86: the machine's max-ram-below-4g property, if it was\n"
           "                           set (the save does not record it; default: from the\n"
           "                           libvirt XML if it names one); shapes physmem.raw\n"
           "    -o cpu_vendor=amd|intel  x86: the guest CPU's vendor (default: from the libvirt\n"
           "                           XML, else not AMD); on AMD, RAM above 4 GiB of a guest\n"
           "                           near 1 TiB starts at 1 TiB in physmem.raw\n"
           "    -o cache_size=N[K|M|G] packed images (mramfs-pack): bytes of decoded frames\n"
           "                           kept in memory (default 64M, at least 1M)\n"
           "    -f                     stay in the foreground\n"
           "    -d                     debug: foreground, log every FUSE request\n"
           "    -s                     single-threaded\n"
           "    -o max_threads=N       FUSE threads (default: 2 per CPU, at least 4, not\n"
           "                           libfuse's 10: each keeps about 2.3 MiB of buffers)\n"
           "    -h, --help             this help, then the FUSE options\n"
           "    -V, --version          print versions\n\n"
           "The mount is always read-only. Unmount with `umount MOUNTPOINT` or\n"
           "`fusermount3 -u MOUNTPOINT`. See mramfs(1) and mount.mramfs(8).\n\n",
           prog);
    printf("FUSE options:\n");
    fuse_lowlevel_help();
}

/* mount(8)-only words that are no business of FUSE; "rw" is dropped because mount(8)
 * passes it by default, and the mount is read-only whatever is asked. */
static gboolean is_mount8_only(const char *opt)
{
    static const char *const drop[] = {"defaults", "auto",  "noauto", "user",   "nouser",
                                       "users",    "owner", "group",  "nofail", "_netdev",
                                       "rw",       "ro",    "loop",   NULL};
    return g_strv_contains(drop, opt) || g_str_has_prefix(opt, "x-") ||
           g_str_has_prefix(opt, "comment=") || g_str_has_prefix(opt, "helper=");
}

static char *filter_mount8_options(const char *opts)
{
    g_auto(GStrv) parts = g_strsplit(opts, ",", -1);
    g_autoptr(GPtrArray) kept = g_ptr_array_new();
    for (char **p = parts; *p; p++)
        if (**p && !is_mount8_only(*p))
            g_ptr_array_add(kept, *p);
    g_ptr_array_add(kept, NULL);
    return g_strjoinv(",", (char **)kept->pdata);
}

/* Turn mount(8)'s helper call `SPEC DIR [-sfnv] [-N ns] [-o opts] [-t type]` into our own
 * argument list. Returns FALSE for -f (fake: validate the image and stop). */
static gboolean from_mount_helper_args(int argc, char **argv, struct fuse_args *args)
{
    gboolean fake = FALSE;
    fuse_opt_add_arg(args, argv[0]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "-o") == 0 || strcmp(a, "-t") == 0 || strcmp(a, "-N") == 0) &&
            i + 1 < argc) {
            if (a[1] == 'o') {
                g_autofree char *kept = filter_mount8_options(argv[i + 1]);
                if (*kept) {
                    fuse_opt_add_arg(args, "-o");
                    fuse_opt_add_arg(args, kept);
                }
            }
            i++;
        } else if (a[0] == '-' && a[1] != '\0') {
            fake |= strchr(a, 'f') != NULL; /* -s sloppy, -n no mtab, -v verbose: nothing to do */
        } else {
            fuse_opt_add_arg(args, a);
        }
    }
    return !fake;
}

static int keep_nonopt(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    (void)outargs;
    Options *o = data;
    if (key == KEY_MAX_THREADS)
        o->max_threads_given = TRUE;
    if (key != FUSE_OPT_KEY_NONOPT)
        return 1;
    if (o->image == NULL) {
        o->image = g_strdup(arg);
        return 0; /* consumed: fuse_parse_cmdline sees the mountpoint only */
    }
    if (o->mountpoint == NULL) {
        o->mountpoint = g_strdup(arg);
        return 1;
    }
    g_printerr("%s: unexpected argument: %s\n", g_get_prgname(), arg);
    return -1;
}

/* N, NK, NM or NG (binary multiples), at least 1 MiB and at most 1 TiB. */
static gboolean parse_cache_size(const char *text, guint64 *value)
{
    g_autofree char *num = g_strdup(text);
    gsize len = strlen(num);
    guint shift = 0;
    const char *suffix = len > 0 ? strchr("kKmMgG", num[len - 1]) : NULL;
    if (len > 0 && suffix != NULL) {
        char c = g_ascii_tolower(num[len - 1]);
        shift = c == 'k' ? 10 : c == 'm' ? 20 : 30;
        num[len - 1] = '\0';
    }
    if (!mr_parse_number(num, value) || *value > (G_GUINT64_CONSTANT(1) << 40) >> shift)
        return FALSE;
    *value <<= shift;
    return *value >= (G_GUINT64_CONSTANT(1) << 20);
}

/* The open options from -o stream_offset= / max_ram_below_4g= / index=; FALSE (after one
 * line on stderr) for a value that is not usable. */
static gboolean open_options(const char *prog, const Options *o, MrOpenOptions *opts)
{
    *opts = (MrOpenOptions){.index_path = o->index};
    if (o->offset && !mr_parse_offset(o->offset, opts)) {
        g_printerr("%s: bad stream offset \"%s\" (a number, decimal or 0x hex)\n", prog, o->offset);
        return FALSE;
    }
    /* QEMU refuses more than 4 GiB; a page multiple keeps every page at one address. */
    if (o->below_4g &&
        (!mr_parse_number(o->below_4g, &opts->max_ram_below_4g) || opts->max_ram_below_4g % 4096 ||
         opts->max_ram_below_4g > (G_GUINT64_CONSTANT(4) << 30))) {
        g_printerr("%s: bad max_ram_below_4g \"%s\" (a multiple of 4096, at most 4 GiB)\n", prog,
                   o->below_4g);
        return FALSE;
    }
    if (o->cpu_vendor) {
        opts->cpu_vendor_set = TRUE;
        opts->cpu_vendor_amd = g_ascii_strcasecmp(o->cpu_vendor, "amd") == 0;
        if (!opts->cpu_vendor_amd && g_ascii_strcasecmp(o->cpu_vendor, "intel") != 0) {
            g_printerr("%s: bad cpu_vendor \"%s\" (amd or intel)\n", prog, o->cpu_vendor);
            return FALSE;
        }
    }
    if (o->cache_size && !parse_cache_size(o->cache_size, &opts->cache_size)) {
        g_printerr("%s: bad cache_size \"%s\" (a number with K, M or G, at least 1M)\n", prog,
                   o->cache_size);
        return FALSE;
    }
    return TRUE;
}

static MrImage *open_image(const Options *o, MrOpenOptions *open_opts, GError **error)
{
    /* Absolute, so the description names the image wherever the daemon runs from. */
    g_autofree char *abs = g_canonicalize_filename(o->image, NULL);
    g_autofree char *label = g_strdup_printf("%s: %s: indexing", g_get_prgname(), o->image);
    MrProgressBar bar;
    mr_progress_bar_init(&bar, label);
    open_opts->progress = mr_progress_bar_update;
    open_opts->progress_data = &bar;
    MrImage *img = mr_image_open(abs, open_opts, error);
    mr_progress_bar_finish(&bar);
    return img;
}

/* fsname shows the image in mount tables; commas must be escaped inside -o. */
static void add_mount_identity(struct fuse_args *args, const char *image)
{
    g_autofree char *abs = g_canonicalize_filename(image, NULL);
    g_autofree char *fsname = g_strconcat("fsname=", abs, NULL);
    fuse_opt_add_arg(args, "-oro,subtype=mramfs,default_permissions");
    fuse_opt_add_arg(args, "-o");
    fuse_opt_add_opt_escaped(&args->argv[args->argc - 1], fsname);
    /* fuse_opt_add_opt_escaped appends ",fsname=…" to the last argument: drop the comma. */
    char *last = args->argv[args->argc - 1];
    if (last[0] == '-' && last[1] == 'o' && last[2] == ',')
        memmove(last + 2, last + 3, strlen(last + 3) + 1);
}

/* glibc gives each thread its own malloc arena (up to 8 per CPU), and the free space an
 * arena keeps after a frame or a reply buffer is released stays resident: with one arena
 * per FUSE and read-ahead thread that was 7 MiB of the daemon's peak under 8 readers with a
 * 4 MiB cache. One arena per CPU is enough for our few threads. */
static void limit_malloc_arenas(void)
{
#ifdef M_ARENA_MAX
    mallopt(M_ARENA_MAX, (int)g_get_num_processors());
#endif
}

static int run_session(MrFs *fs, struct fuse_args *args, struct fuse_cmdline_opts *cmd,
                       gboolean max_threads_given)
{
    struct fuse_session *se = fuse_session_new(args, &mr_fs_ops, sizeof mr_fs_ops, fs);
    if (se == NULL)
        return 1;
    int ret = 1;
    if (fuse_set_signal_handlers(se) != 0)
        goto out_destroy;
    if (fuse_session_mount(se, cmd->mountpoint) != 0)
        goto out_handlers;
    fuse_daemonize(cmd->foreground);
    limit_malloc_arenas();                  /* before any thread starts */
    mr_image_start_readahead(fs->image, 0); /* threads after the fork, not before */
    if (cmd->singlethread) {
        ret = fuse_session_loop(se);
    } else {
        struct fuse_loop_config *cfg = fuse_loop_cfg_create();
        fuse_loop_cfg_set_clone_fd(cfg, cmd->clone_fd);
        fuse_loop_cfg_set_max_threads(cfg,
                                      max_threads_given ? cmd->max_threads : default_max_threads());
        if (cmd->max_idle_threads != UINT_MAX) /* UINT_MAX: not given, keep libfuse's default */
            fuse_loop_cfg_set_idle_threads(cfg, cmd->max_idle_threads);
        ret = fuse_session_loop_mt(se, cfg);
        fuse_loop_cfg_destroy(cfg);
    }
    fuse_session_unmount(se);
out_handlers:
    fuse_remove_signal_handlers(se);
out_destroy:
    fuse_session_destroy(se);
    return ret ? 1 : 0;
}

/* Everything after argument parsing; main() owns and frees what parsing allocated. */
static int mramfs_run(const char *prog, Options *o, struct fuse_args *args, gboolean mount_it)
{
    if (o->show_help) {
        usage(prog);
        return 0;
    }
    if (o->show_version) {
        printf("mramfs %s\n", MRAMFS_VERSION);
        fuse_lowlevel_version();
        return 0;
    }
    if (o->image == NULL || o->mountpoint == NULL) {
        g_printerr("%s: usage: %s IMAGE MOUNTPOINT [-o opts] (see --help)\n", prog, prog);
        return 2;
    }
    MrOpenOptions open_opts;
    if (!open_options(prog, o, &open_opts))
        return 2;
    g_autoptr(GError) error = NULL;
    g_autoptr(MrImage) image = open_image(o, &open_opts, &error);
    if (image == NULL) {
        g_printerr("%s: %s: %s\n", prog, o->image, error->message);
        return 1;
    }
    if (!mount_it)
        return 0;

    add_mount_identity(args, o->image);
    struct fuse_cmdline_opts cmd;
    if (fuse_parse_cmdline(args, &cmd) != 0)
        return 2;
    g_autoptr(MrTree) tree = mr_tree_new(image);
    MrFs fs = {.image = image, .tree = tree, .foreground = cmd.foreground};
    if (!cmd.foreground)
        openlog("mramfs", LOG_PID, LOG_DAEMON);
    int ret = run_session(&fs, args, &cmd, o->max_threads_given);
    free(cmd.mountpoint);
    return ret;
}

int main(int argc, char **argv)
{
    g_autofree char *prog = g_path_get_basename(argv[0]);
    g_set_prgname(prog);
    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    gboolean mount_it = TRUE;
    if (g_str_has_prefix(prog, "mount."))
        mount_it = from_mount_helper_args(argc, argv, &args);
    else
        args = (struct fuse_args)FUSE_ARGS_INIT(argc, argv);

    Options o = {0};
    int ret = 2;
    if (fuse_opt_parse(&args, &o, option_spec, keep_nonopt) == 0)
        ret = mramfs_run(prog, &o, &args, mount_it);
    fuse_opt_free_args(&args);
    g_free(o.image);
    g_free(o.mountpoint);
    free(o.offset); /* strdup'd by fuse_opt_parse */
    free(o.cache_size);
    free(o.index);
    free(o.below_4g);
    free(o.cpu_vendor);
    return ret;
}
