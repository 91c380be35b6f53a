/* pack.c: mramfs-pack, which writes and checks mramfs packed images and turns a saved-VM
 * image that mramfs cannot read at random into one it can.
 *
 *   mramfs-pack [OPTIONS] IMAGE OUT            pack (or convert) IMAGE into OUT
 *   mramfs-pack [OPTIONS] --unpack PACKED IMAGE
 *   mramfs-pack [OPTIONS] --verify PACKED
 *
 * An image mramfs mounts (mapped-ram or legacy stream, bare, at --offset or behind a
 * libvirt header) is packed into the compressed random-access format of
 * docs/packed-format.md by libmramfs (mr_pack_image: worker threads, deterministic output).
 * A libvirt save whose QEMU stream libvirt piped through gzip, bzip2, xz, lzop or zstd is
 * converted instead: OUT is the same save with format raw and the stream decompressed, i.e.
 * a legacy sequential stream that mramfs reads (and that can be packed in turn). The
 * stream is decompressed by the very program libvirt runs on restore (`PROG -dc`), so OUT
 * holds exactly what QEMU would have been fed.
 *
 * Memory is constant (one buffer), OUT only ever appears complete (temporary file, fsync,
 * rename) and neither OUT nor the temporary file survives a failure, SIGINT or SIGTERM. */
#include "mramfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PACK_ERROR (pack_error_quark())
static GQuark pack_error_quark(void);
G_DEFINE_QUARK(mramfs - pack - error - quark, pack_error)
typedef enum {
    PACK_ERROR_FAILED,
    PACK_ERROR_NOTHING_TO_DO, /* the input is mountable as it is */
} PackError;

/* The QEMU stream magic (qemu-save-formats.md §3.1): what a decompressed stream must start
 * with, and how a bare QEMU stream is recognised. */
#define QEMU_MAGIC     "QEVM"
#define QEMU_MAGIC_LEN 4
/* The u32 `format` field of the libvirt header (qemu-save-formats.md §2). The library parses
 * it; the converter has to rewrite it, in the header's own byte order. */
#define LIBVIRT_FORMAT_OFFSET 28
#define LIBVIRT_FORMAT_RAW    0
#define LIBVIRT_FORMAT_SPARSE 6

#define BUF_SIZE         (1u << 20)
#define PROGRESS_PERIOD  (G_USEC_PER_SEC / 10) /* redraw at most 10 times a second */
#define STDERR_LINE_SIZE 512

/* The programs libvirt runs for formats 1-5 (virQEMUSaveFormat; it looks each up in PATH
 * under its format name) and the Debian package that ships each. */
typedef struct {
    const char *program;
    const char *package;
} Decompressor;

static const Decompressor decompressors[] = {
    [1] = {"gzip", "gzip"}, [2] = {"bzip2", "bzip2"}, [3] = {"xz", "xz-utils"},
    [4] = {"lzop", "lzop"}, [5] = {"zstd", "zstd"},
};

static gboolean opt_force;
static gboolean opt_quiet;
static gboolean opt_verbose;
static gboolean opt_unpack;
static gboolean opt_verify;
static gint opt_level;
static gint opt_threads;
static gchar *opt_frame_size;
static gchar *opt_offset;

static const GOptionEntry entries[] = {
    {"force", 'f', 0, G_OPTION_ARG_NONE, &opt_force, "replace OUT if it exists", NULL},
    {"quiet", 'q', 0, G_OPTION_ARG_NONE, &opt_quiet, "no progress line, even on a terminal", NULL},
    {"verbose", 'v', 0, G_OPTION_ARG_NONE, &opt_verbose,
     "print one summary line on success (sizes, seconds)", NULL},
    {"unpack", 'u', 0, G_OPTION_ARG_NONE, &opt_unpack,
     "PACKED IMAGE: write the image a packed file holds (sparse)", NULL},
    {"verify", 0, 0, G_OPTION_ARG_NONE, &opt_verify,
     "PACKED: check the header, index and every frame checksum", NULL},
    {"level", 'l', 0, G_OPTION_ARG_INT, &opt_level, "zstd level 1..19 (default 3)", "N"},
    {"threads", 'T', 0, G_OPTION_ARG_INT, &opt_threads,
     "compressing threads (default: one per CPU)", "N"},
    {"frame-size", 0, 0, G_OPTION_ARG_STRING, &opt_frame_size,
     "decoded bytes per zstd frame, 4K..16M (default 256K)", "SIZE"},
    {"offset", 0, 0, G_OPTION_ARG_STRING, &opt_offset,
     "the QEMU stream starts at byte N of IMAGE (as mramfs -o stream_offset=N)", "N"},
    G_OPTION_ENTRY_NULL,
};

typedef enum {
    MODE_CONVERT, /* libvirt compressed save -> raw save */
    MODE_PACK,
    MODE_UNPACK,
    MODE_VERIFY,
} Mode;

typedef struct {
    const char *image; /* as given: messages name it so */
    const char *out;
    Mode mode;
    const char *format; /* what was packed: "mapped-ram", "legacy" */
    MrPackStats stats;
    const char *verb; /* of the progress line */
    MrLibvirtHeader hdr;
    const Decompressor *dec;
    int in_fd;
    guint64 in_size;
    char *tmp_path;
    int tmp_fd;
    pid_t child;
    int child_out; /* read end of the decompressor's stdout */
    int child_err; /* memfd that collects the decompressor's stderr */
    guint8 *buf;
    guint64 out_size;
    gboolean progress; /* draw the progress line (stderr is a terminal, no --quiet) */
    gboolean progress_shown;
    gint64 t_start;
    gint64 t_drawn;
} Pack;

/* ---- signals: what the handler must undo, in async-signal-safe form ---- */

static char sig_tmp_path[PATH_MAX];
static volatile sig_atomic_t sig_tmp_armed;   /* sig_tmp_path exists and is ours */
static volatile sig_atomic_t sig_child;       /* the decompressor's pid, or 0 */
static volatile sig_atomic_t sig_progress_on; /* a progress line needs clearing */
static const int fatal_signals[] = {SIGINT, SIGTERM, SIGHUP};

/* Removes the temporary file and the decompressor, then dies of the same signal, so the
 * caller sees the usual "killed by SIGTERM" status. */
static void on_fatal_signal(int sig)
{
    if (sig_tmp_armed)
        unlink(sig_tmp_path);
    if (sig_child > 0)
        kill((pid_t)sig_child, SIGTERM);
    if (sig_progress_on)
        (void)!write(STDERR_FILENO, "\r\033[K", 4);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A signal ignored when we start stays ignored: under nohup, or as a background job of a
 * non-interactive shell, SIGHUP or SIGINT is not meant to stop us. */
static void install_signal_handlers(void)
{
    struct sigaction sa = {.sa_handler = on_fatal_signal}, old;
    sigemptyset(&sa.sa_mask);
    for (gsize i = 0; i < G_N_ELEMENTS(fatal_signals); i++)
        sigaddset(&sa.sa_mask, fatal_signals[i]);
    for (gsize i = 0; i < G_N_ELEMENTS(fatal_signals); i++)
        if (sigaction(fatal_signals[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
            sigaction(fatal_signals[i], &sa, NULL);
}

/* Brackets each change to the sig_ state, so the handler never sees a file that exists but
 * is not recorded yet (or one recorded after it was renamed to OUT). */
static void block_fatal_signals(gboolean block)
{
    sigset_t set;
    sigemptyset(&set);
    for (gsize i = 0; i < G_N_ELEMENTS(fatal_signals); i++)
        sigaddset(&set, fatal_signals[i]);
    sigprocmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
}

/* The decompressor's stdin, stdout and stderr are put in place with dup2 onto 0-2, which
 * goes wrong if one of our own descriptors already sits there: keep 0-2 occupied. */
static void reserve_std_fds(void)
{
    int fd;
    do
        fd = open("/dev/null", O_RDWR);
    while (fd >= 0 && fd <= STDERR_FILENO);
    if (fd > STDERR_FILENO)
        close(fd);
}

static gboolean set_errno_error(GError **error, int err, const char *what, const char *path)
{
    g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "%s %s: %s", what, path, g_strerror(err));
    return FALSE;
}

/* ---- what the input is ---- */

static gboolean starts_with_qemu_magic(const char *path)
{
    guint8 head[QEMU_MAGIC_LEN];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FALSE;
    gboolean ok = pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
                  memcmp(head, QEMU_MAGIC, QEMU_MAGIC_LEN) == 0;
    close(fd);
    return ok;
}

/* Returns TRUE with @p->mode MODE_CONVERT if @p->image needs converting (and sets @p->hdr,
 * @p->dec), MODE_PACK if mramfs mounts it as it is; FALSE with PACK_ERROR_NOTHING_TO_DO for
 * a packed image, or another error. */
static gboolean classify(Pack *p, GError **error)
{
    GError *local = NULL;
    if (!mr_libvirt_read_header(p->image, &p->hdr, &local)) {
        if (!g_error_matches(local, MR_ERROR, MR_ERROR_UNKNOWN_FORMAT)) {
            g_propagate_error(error, local);
            return FALSE;
        }
        g_error_free(local);
        if (mr_file_is_packed(p->image)) {
            g_set_error(error, PACK_ERROR, PACK_ERROR_NOTHING_TO_DO,
                        "already packed: nothing to do");
            return FALSE;
        }
        if (opt_offset != NULL || starts_with_qemu_magic(p->image)) {
            p->mode = MODE_PACK;
            return TRUE;
        }
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                    "neither a libvirt save image nor a QEMU stream");
        return FALSE;
    }
    guint32 format = p->hdr.format;
    if (format == LIBVIRT_FORMAT_RAW || format == LIBVIRT_FORMAT_SPARSE) {
        p->mode = MODE_PACK;
        return TRUE;
    }
    if (format >= G_N_ELEMENTS(decompressors) || decompressors[format].program == NULL) {
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "unknown libvirt save format %u", format);
        return FALSE;
    }
    p->dec = &decompressors[format];
    return TRUE;
}

static gboolean out_exists_error(const Pack *p, GError **error)
{
    g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "%s exists (--force replaces it)", p->out);
    return FALSE;
}

static gboolean check_out_absent(const Pack *p, GError **error)
{
    struct stat st;
    return opt_force || lstat(p->out, &st) < 0 || out_exists_error(p, error);
}

static gboolean open_input(Pack *p, GError **error)
{
    struct stat st;
    p->in_fd = open(p->image, O_RDONLY | O_CLOEXEC);
    if (p->in_fd < 0)
        return set_errno_error(error, errno, "cannot open", p->image);
    if (fstat(p->in_fd, &st) < 0)
        return set_errno_error(error, errno, "cannot stat", p->image);
    p->in_size = (guint64)st.st_size;
    if (p->in_size < p->hdr.stream_offset) { /* shrank since the header was read */
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                    "truncated: the file ends before the QEMU stream at %" G_GUINT64_FORMAT,
                    p->hdr.stream_offset);
        return FALSE;
    }
    return TRUE;
}

/* ---- the temporary output and its header ---- */

static gboolean create_temp(Pack *p, GError **error)
{
    p->tmp_path = g_strdup_printf("%s.XXXXXX", p->out);
    if (strlen(p->tmp_path) >= sizeof sig_tmp_path) {
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "%s: %s", p->out,
                    g_strerror(ENAMETOOLONG));
        return FALSE;
    }
    block_fatal_signals(TRUE);
    p->tmp_fd = g_mkstemp_full(p->tmp_path, O_RDWR | O_CLOEXEC, 0600);
    int err = errno;
    if (p->tmp_fd >= 0) {
        strcpy(sig_tmp_path, p->tmp_path);
        sig_tmp_armed = 1;
    }
    block_fatal_signals(FALSE);
    if (p->tmp_fd < 0) { /* g_mkstemp_full() left random letters in tmp_path */
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "cannot create %s.XXXXXX: %s", p->out,
                    g_strerror(err));
        return FALSE;
    }
    return TRUE;
}

static gboolean write_all(Pack *p, const guint8 *data, gsize len, GError **error)
{
    while (len > 0) {
        ssize_t n = write(p->tmp_fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return set_errno_error(error, errno, "cannot write", p->tmp_path);
        data += n;
        len -= (gsize)n;
    }
    return TRUE;
}

static gboolean read_input_at(Pack *p, guint8 *buf, gsize len, guint64 offset, GError **error)
{
    while (len > 0) {
        ssize_t n = pread(p->in_fd, buf, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return set_errno_error(error, errno, "cannot read", p->image);
        if (n == 0) {
            g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                        "truncated: the file ends at %" G_GUINT64_FORMAT
                        ", before the QEMU stream at %" G_GUINT64_FORMAT,
                        offset, p->hdr.stream_offset);
            return FALSE;
        }
        buf += n;
        len -= (gsize)n;
        offset += (guint64)n;
    }
    return TRUE;
}

/* The header fields are in the byte order of the host that saved (libvirt swaps them all
 * when reading a foreign one), so the new value goes in the order the old one was found in.
 * Matching the old value also checks that the library and this file agree on the layout. */
static gboolean patch_format(guint8 *head, guint32 old_format, guint32 new_format, GError **error)
{
    guint32 stored;
    memcpy(&stored, head + LIBVIRT_FORMAT_OFFSET, sizeof stored);
    if (GUINT32_FROM_LE(stored) == old_format)
        stored = GUINT32_TO_LE(new_format);
    else if (GUINT32_FROM_BE(stored) == old_format)
        stored = GUINT32_TO_BE(new_format);
    else {
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                    "libvirt header changed while being read (format field)");
        return FALSE;
    }
    memcpy(head + LIBVIRT_FORMAT_OFFSET, &stored, sizeof stored);
    return TRUE;
}

/* OUT starts as IMAGE does: the header with format raw, then data_len bytes of domain XML,
 * cookie and padding exactly as they were (libvirt may rewrite the XML in place on a later
 * `virsh save-image-define`, so the padding is kept too). */
static gboolean copy_header(Pack *p, GError **error)
{
    gsize header_size = (gsize)(p->hdr.stream_offset - p->hdr.data_len);
    if (!read_input_at(p, p->buf, header_size, 0, error) ||
        !patch_format(p->buf, p->hdr.format, LIBVIRT_FORMAT_RAW, error) ||
        !write_all(p, p->buf, header_size, error))
        return FALSE;
    for (guint64 off = header_size; off < p->hdr.stream_offset;) {
        gsize n = (gsize)MIN((guint64)BUF_SIZE, p->hdr.stream_offset - off);
        if (!read_input_at(p, p->buf, n, off, error) || !write_all(p, p->buf, n, error))
            return FALSE;
        off += n;
    }
    return TRUE;
}

/* ---- the decompressor ---- */

/* `PROG -dc` as libvirt runs it (qemuSaveImageDecompressionStart), reading IMAGE from the
 * stream offset on through a descriptor that shares our file offset: how far it has read is
 * then lseek(in_fd, 0, SEEK_CUR), which drives the progress line. Its stderr goes to a memfd
 * rather than a pipe so that a chatty decompressor can never block on it. */
static gboolean spawn_decompressor(Pack *p, GError **error)
{
    int out_pipe[2];
    if (lseek(p->in_fd, (off_t)p->hdr.stream_offset, SEEK_SET) < 0)
        return set_errno_error(error, errno, "cannot seek in", p->image);
    p->child_err = memfd_create("mramfs-pack-stderr", MFD_CLOEXEC);
    if (p->child_err < 0)
        return set_errno_error(error, errno, "cannot create", "memfd");
    if (pipe2(out_pipe, O_CLOEXEC) < 0)
        return set_errno_error(error, errno, "cannot create", "pipe");
    (void)fcntl(out_pipe[0], F_SETPIPE_SZ, (int)BUF_SIZE); /* fewer wakeups; best effort */

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p->in_fd, STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out_pipe[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, p->child_err, STDERR_FILENO);
    /* The child starts with nothing blocked (we spawn with the handler held off) and with
     * SIGPIPE at default, so closing its stdout early stops it. Our handlers become default
     * at exec and what was ignored when we started stays ignored, as it does for us. */
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    char *argv[] = {(char *)p->dec->program, (char *)"-dc", NULL};
    block_fatal_signals(TRUE);
    int rc = posix_spawnp(&p->child, p->dec->program, &fa, &attr, argv, environ);
    if (rc == 0)
        sig_child = p->child;
    block_fatal_signals(FALSE);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(out_pipe[1]);
    p->child_out = out_pipe[0];
    if (rc == ENOENT) {
        p->child = 0;
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                    "%s not found: it decompresses libvirt %s saves (install the Debian "
                    "package %s)",
                    p->dec->program, mr_libvirt_format_name(p->hdr.format), p->dec->package);
        return FALSE;
    }
    if (rc != 0) {
        p->child = 0;
        return set_errno_error(error, rc, "cannot run", p->dec->program);
    }
    return TRUE;
}

/* The first non-empty line the decompressor wrote to stderr (gzip and bzip2 start with an
 * empty one), made printable. Returns: newly allocated, or NULL if it wrote nothing. */
static char *first_stderr_line(int fd)
{
    char text[STDERR_LINE_SIZE];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return NULL;
    text[n] = '\0';
    char **lines = g_strsplit(text, "\n", -1);
    char *line = NULL;
    for (char **l = lines; *l != NULL && line == NULL; l++)
        if (*g_strstrip(*l) != '\0')
            line = g_utf8_make_valid(*l, -1);
    g_strfreev(lines);
    for (char *c = line; c != NULL && *c != '\0'; c++)
        if ((guchar)*c < 0x20 || *c == 0x7f)
            *c = ' '; /* one line for the user, whatever it printed */
    return line;
}

/* Waits for the decompressor. Returns: FALSE with the reason if it failed, unless it only
 * died of the SIGPIPE we caused by closing its stdout early (@we_stopped_it). */
static gboolean reap_decompressor(Pack *p, gboolean we_stopped_it, GError **error)
{
    int status = 0;
    siginfo_t info;
    /* Wait without reaping, so a signal meanwhile is handled at once and still finds the
     * pid valid; reap with the handler held off, so it never kills a recycled pid. */
    int r;
    do
        r = waitid(P_PID, (id_t)p->child, &info, WEXITED | WNOWAIT);
    while (r < 0 && errno == EINTR);
    int err = errno;
    block_fatal_signals(TRUE);
    if (r == 0 && waitpid(p->child, &status, 0) < 0)
        r = -1, err = errno;
    sig_child = 0;
    p->child = 0;
    block_fatal_signals(FALSE);
    if (r < 0)
        return set_errno_error(error, err, "cannot wait for", p->dec->program);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return TRUE;
    if (we_stopped_it && WIFSIGNALED(status) && WTERMSIG(status) == SIGPIPE)
        return TRUE;
    g_autofree char *line = first_stderr_line(p->child_err);
    g_autofree char *why =
        line                  ? g_strdup(line)
        : WIFEXITED(status)   ? g_strdup_printf("exit status %d", WEXITSTATUS(status))
        : WIFSIGNALED(status) ? g_strdup_printf("killed by signal %d (%s)", WTERMSIG(status),
                                                g_strsignal(WTERMSIG(status)))
                              : g_strdup_printf("wait status %#x", status);
    g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "%s -dc failed: %s", p->dec->program, why);
    return FALSE;
}

/* ---- copying the decompressed stream ---- */

static void format_eta(char *out, gsize size, double seconds)
{
    if (seconds < 0 || seconds > 99 * 3600) {
        g_strlcpy(out, "--:--", size);
        return;
    }
    guint s = (guint)(seconds + 0.5);
    if (s >= 3600)
        g_snprintf(out, size, "%u:%02u:%02u", s / 3600, s / 60 % 60, s % 60);
    else
        g_snprintf(out, size, "%u:%02u", s / 60, s % 60);
}

/* The progress line is the one thing printed outside main(): it is drawn while the copy
 * runs. Percent and ETA measure compressed input, the one size known in advance. */
static void draw_progress(Pack *p)
{
    gint64 now = g_get_monotonic_time();
    if (p->progress_shown && now - p->t_drawn < PROGRESS_PERIOD)
        return;
    p->t_drawn = now;
    off_t pos = lseek(p->in_fd, 0, SEEK_CUR);
    guint64 total = p->in_size - p->hdr.stream_offset;
    guint64 done = pos > (off_t)p->hdr.stream_offset ? (guint64)pos - p->hdr.stream_offset : 0;
    done = MIN(done, total);
    double secs = (double)(now - p->t_start) / G_USEC_PER_SEC;
    double rate = secs > 0.2 ? (double)done / secs : 0; /* no guess in the first moments */
    char eta[16];
    format_eta(eta, sizeof eta, rate > 0 ? (double)(total - done) / rate : -1);
    fprintf(stderr, "\r\033[K%s: %3u%% of %.1f MB %s read, %.1f MB/s, ETA %s", g_get_prgname(),
            total ? (guint)(done * 100 / total) : 100, total / 1e6, p->dec->program, rate / 1e6,
            eta);
    fflush(stderr);
    p->progress_shown = TRUE;
    sig_progress_on = 1;
}

/* The progress line of pack, unpack and verify: @done of @total image bytes. */
static void library_progress(guint64 done, guint64 total, gpointer data)
{
    Pack *p = data;
    if (!p->progress)
        return;
    gint64 now = g_get_monotonic_time();
    if (p->progress_shown && now - p->t_drawn < PROGRESS_PERIOD)
        return;
    p->t_drawn = now;
    done = MIN(done, total);
    double secs = (double)(now - p->t_start) / G_USEC_PER_SEC;
    double rate = secs > 0.2 ? (double)done / secs : 0;
    char eta[16];
    format_eta(eta, sizeof eta, rate > 0 ? (double)(total - done) / rate : -1);
    fprintf(stderr, "\r\033[K%s: %3u%% of %.1f MB %s, %.1f MB/s, ETA %s", g_get_prgname(),
            total ? (guint)(done * 100 / total) : 100, total / 1e6, p->verb, rate / 1e6, eta);
    fflush(stderr);
    p->progress_shown = TRUE;
    sig_progress_on = 1;
}

static void clear_progress(Pack *p)
{
    if (!p->progress_shown)
        return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
    p->progress_shown = FALSE;
    sig_progress_on = 0;
}

/* The magic is checked as soon as it arrives, so a wrong stream stops before it is copied. */
static gboolean check_magic(const guint8 *head, gsize len, GError **error)
{
    if (len == QEMU_MAGIC_LEN && memcmp(head, QEMU_MAGIC, QEMU_MAGIC_LEN) == 0)
        return TRUE;
    g_autofree char *shown = mr_escape_bytes(head, len);
    g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED,
                "decompressed stream is not a QEMU stream (it starts with \"%s\")", shown);
    return FALSE;
}

static gboolean copy_stream(Pack *p, GError **error)
{
    guint8 head[QEMU_MAGIC_LEN];
    gsize head_len = 0;
    for (;;) {
        ssize_t n = read(p->child_out, p->buf, BUF_SIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return set_errno_error(error, errno, "cannot read the output of", p->dec->program);
        if (n == 0)
            break;
        if (head_len < QEMU_MAGIC_LEN) {
            gsize take = MIN((gsize)n, QEMU_MAGIC_LEN - head_len);
            memcpy(head + head_len, p->buf, take);
            head_len += take;
            if (head_len == QEMU_MAGIC_LEN && !check_magic(head, head_len, error))
                return FALSE;
        }
        if (!write_all(p, p->buf, (gsize)n, error))
            return FALSE;
        p->out_size += (guint64)n;
        if (p->progress)
            draw_progress(p);
    }
    return head_len == QEMU_MAGIC_LEN || check_magic(head, head_len, error);
}

/* ---- putting OUT in place, or not ---- */

/* Without --force OUT must not appear between the early check and now: RENAME_NOREPLACE
 * refuses atomically where the file system supports it. */
static gboolean rename_into_place(Pack *p, GError **error)
{
    int rc;
    if (opt_force)
        rc = rename(p->tmp_path, p->out);
    else {
        rc = renameat2(AT_FDCWD, p->tmp_path, AT_FDCWD, p->out, RENAME_NOREPLACE);
        if (rc < 0 && (errno == EINVAL || errno == ENOSYS)) {
            if (!check_out_absent(p, error))
                return FALSE;
            rc = rename(p->tmp_path, p->out);
        }
        if (rc < 0 && errno == EEXIST)
            return out_exists_error(p, error);
    }
    if (rc < 0)
        return set_errno_error(error, errno, "cannot rename to", p->out);
    return TRUE;
}

static gboolean commit(Pack *p, GError **error)
{
    if (fsync(p->tmp_fd) < 0)
        return set_errno_error(error, errno, "cannot sync", p->tmp_path);
    int fd = p->tmp_fd;
    p->tmp_fd = -1;
    if (close(fd) < 0)
        return set_errno_error(error, errno, "cannot write", p->tmp_path);
    block_fatal_signals(TRUE);
    gboolean ok = rename_into_place(p, error);
    if (ok)
        sig_tmp_armed = 0;
    block_fatal_signals(FALSE);
    if (!ok)
        return FALSE;
    /* Make the rename itself durable; some file systems cannot sync a directory. */
    g_autofree char *dir = g_path_get_dirname(p->out);
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        (void)fsync(dir_fd);
        close(dir_fd);
    }
    return TRUE;
}

/* Undoes whatever of a conversion exists: the decompressor, the temporary file, the fds. */
static void pack_cleanup(Pack *p)
{
    if (p->child_out >= 0)
        close(p->child_out);
    if (p->child > 0) {
        kill(p->child, SIGTERM);
        reap_decompressor(p, TRUE, NULL);
    }
    if (p->tmp_fd >= 0)
        close(p->tmp_fd);
    block_fatal_signals(TRUE);
    if (sig_tmp_armed)
        unlink(p->tmp_path);
    sig_tmp_armed = 0;
    block_fatal_signals(FALSE);
    if (p->child_err >= 0)
        close(p->child_err);
    if (p->in_fd >= 0)
        close(p->in_fd);
    g_free(p->tmp_path);
    g_free(p->buf);
}

static gboolean decompress(Pack *p, GError **error)
{
    if (!spawn_decompressor(p, error))
        return FALSE;
    p->t_start = g_get_monotonic_time();
    GError *copy_error = NULL;
    gboolean copied = copy_stream(p, &copy_error);
    close(p->child_out);
    p->child_out = -1;
    clear_progress(p);
    /* A failing decompressor explains a bad or short stream better than we can. */
    GError *child_error = NULL;
    if (!reap_decompressor(p, !copied, &child_error)) {
        g_clear_error(&copy_error);
        g_propagate_error(error, child_error);
        return FALSE;
    }
    if (!copied) {
        g_propagate_error(error, copy_error);
        return FALSE;
    }
    return TRUE;
}

static gboolean parse_size(const char *text, guint64 *value)
{
    g_autofree char *num = g_strdup(text);
    gsize len = strlen(num);
    guint shift = 0;
    if (len > 0 && strchr("kKmM", num[len - 1]) != NULL) {
        shift = g_ascii_tolower(num[len - 1]) == 'k' ? 10 : 20;
        num[len - 1] = '\0';
    }
    return mr_parse_number(num, value) && *value <= (G_GUINT64_CONSTANT(1) << 40) &&
           (*value <<= shift, TRUE);
}

/* Pack @p->image (which mramfs opens) into the temporary file, then put it in place. */
static gboolean pack_image(Pack *p, GError **error)
{
    MrOpenOptions open_opts = {.index_path = ""}; /* a one-off read: leave no index file */
    if (opt_offset != NULL && !mr_parse_offset(opt_offset, &open_opts)) {
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "bad --offset \"%s\"", opt_offset);
        return FALSE;
    }
    guint64 frame_size = 0;
    if (opt_frame_size != NULL && !parse_size(opt_frame_size, &frame_size)) {
        g_set_error(error, PACK_ERROR, PACK_ERROR_FAILED, "bad --frame-size \"%s\"",
                    opt_frame_size);
        return FALSE;
    }
    g_autoptr(MrImage) img = mr_image_open(p->image, &open_opts, error);
    if (img == NULL)
        return FALSE;
    p->format = mr_image_format(img);
    MrPackOptions o = {
        .level = opt_level,
        .threads = (guint)MAX(opt_threads, 0),
        .frame_size = (guint32)MIN(frame_size, G_MAXUINT32),
        .progress = library_progress,
        .progress_data = p,
    };
    if (frame_size > G_MAXUINT32)
        o.frame_size = G_MAXUINT32; /* refused by the library with the range */
    p->verb = "packed";
    p->t_start = g_get_monotonic_time();
    return create_temp(p, error) && mr_pack_image(img, p->tmp_fd, &o, &p->stats, error) &&
           commit(p, error);
}

static gboolean unpack_image(Pack *p, GError **error)
{
    p->verb = "unpacked";
    p->t_start = g_get_monotonic_time();
    return create_temp(p, error) && mr_unpack(p->image, p->tmp_fd, library_progress, p, error) &&
           commit(p, error);
}

static gboolean pack_run(Pack *p, GError **error)
{
    gboolean ok;
    if (p->mode == MODE_VERIFY) {
        p->verb = "verified";
        p->t_start = g_get_monotonic_time();
        ok = mr_verify(p->image, library_progress, p, &p->stats, error);
    } else if (p->mode == MODE_UNPACK)
        ok = check_out_absent(p, error) && unpack_image(p, error);
    else {
        ok = classify(p, error) && check_out_absent(p, error);
        if (ok && p->mode == MODE_PACK)
            ok = pack_image(p, error);
        else if (ok && open_input(p, error)) {
            p->buf = g_malloc(BUF_SIZE);
            ok = create_temp(p, error) && copy_header(p, error) && decompress(p, error) &&
                 commit(p, error);
        } else
            ok = FALSE;
    }
    clear_progress(p);
    pack_cleanup(p);
    return ok;
}

static void print_summary(const Pack *p, gint64 t0)
{
    double secs = (double)(g_get_monotonic_time() - t0) / G_USEC_PER_SEC;
    const MrPackStats *st = &p->stats;
    if (p->mode == MODE_PACK) {
        printf("%s: %s (%s, %.1f MB, %.1f MB stored) -> %s (packed, %.1f MB, %" G_GUINT64_FORMAT
               " frames, %.2fx of the stored bytes) in %.2f s\n",
               g_get_prgname(), p->image, p->format, st->image_size / 1e6, st->stored_bytes / 1e6,
               p->out, st->packed_size / 1e6, st->n_frames,
               st->packed_size ? (double)st->stored_bytes / st->packed_size : 0, secs);
        return;
    }
    if (p->mode == MODE_UNPACK) {
        printf("%s: %s -> %s in %.2f s\n", g_get_prgname(), p->image, p->out, secs);
        return;
    }
    printf("%s: %s (libvirt %s, %.1f MB) -> %s (libvirt raw, %.1f MB) in %.2f s\n", g_get_prgname(),
           p->image, mr_libvirt_format_name(p->hdr.format), p->in_size / 1e6, p->out,
           (p->hdr.stream_offset + p->out_size) / 1e6,
           (double)(g_get_monotonic_time() - t0) / G_USEC_PER_SEC);
}

static GOptionContext *option_context(void)
{
    GOptionContext *ctx =
        g_option_context_new("IMAGE OUT | --unpack PACKED IMAGE | --verify PACKED");
    g_option_context_set_summary(
        ctx, "Pack a saved-VM image into mramfs's compressed random-access format, unpack or\n"
             "verify one, or convert a compressed libvirt save into one mramfs can mount.");
    g_option_context_set_description(
        ctx, "What happens to which IMAGE:\n"
             "  libvirt save of format raw or sparse, bare QEMU stream (or one at --offset)\n"
             "      OUT = the packed image (docs/packed-format.md): zstd frames of\n"
             "      --frame-size bytes in 64 MiB chunks, compressed by --threads workers;\n"
             "      mramfs mounts it with the same files, bytes and holes as IMAGE.\n"
             "  libvirt save of format gzip, bzip2, xz, lzop or zstd\n"
             "      OUT = the same libvirt header with format raw, the same domain XML and\n"
             "      cookie, then the QEMU stream decompressed by the program libvirt uses\n"
             "      (gzip -dc, bzip2 -dc, xz -dc, lzop -dc or zstd -dc, found in PATH).\n"
             "      Pack that OUT in turn for a compressed image mramfs mounts.\n"
             "  a packed image: refused (already packed).\n"
             "--unpack PACKED IMAGE writes the image back as a sparse file QEMU restores\n"
             "(pages whose bitmap bit is clear are holes); --verify PACKED decodes every frame\n"
             "and checks every checksum.\n\n"
             "OUT is written as OUT.XXXXXX beside it and renamed to OUT when complete; on a\n"
             "failure or SIGINT/SIGTERM neither is left behind. On a terminal a progress\n"
             "line shows the rate and ETA.\n\n"
             "Exit status: 0 done, 1 failed or nothing to do, 2 usage error.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    return ctx;
}

int main(int argc, char **argv)
{
    g_set_prgname("mramfs-pack");
    reserve_std_fds();
    install_signal_handlers();
    gint64 t0 = g_get_monotonic_time();
    g_autoptr(GOptionContext) ctx = option_context();
    g_autoptr(GError) error = NULL;
    gboolean parsed = g_option_context_parse(ctx, &argc, &argv, &error);
    int want = opt_verify ? 2 : 3;
    if (!parsed || argc != want || (opt_quiet && opt_verbose) || (opt_unpack && opt_verify)) {
        g_printerr("mramfs-pack: %s\n",
                   error          ? error->message
                   : argc != want ? "usage: mramfs-pack [OPTIONS] IMAGE OUT (see --help)"
                   : (opt_unpack && opt_verify) ? "--unpack and --verify exclude each other"
                                                : "--quiet and --verbose exclude each other");
        return 2;
    }
    Pack p = {
        .image = argv[1],
        .out = opt_verify ? NULL : argv[2],
        .mode = opt_verify   ? MODE_VERIFY
                : opt_unpack ? MODE_UNPACK
                             : MODE_CONVERT,
        .in_fd = -1,
        .tmp_fd = -1,
        .child_out = -1,
        .child_err = -1,
        .progress = !opt_quiet && isatty(STDERR_FILENO),
    };
    if (!pack_run(&p, &error)) {
        g_printerr("mramfs-pack: %s: %s\n", p.image, error->message);
        return 1;
    }
    if (p.mode == MODE_VERIFY)
        printf("%s: ok, %" G_GUINT64_FORMAT " frames, %" G_GUINT64_FORMAT
               " image bytes, %" G_GUINT64_FORMAT " stored\n",
               p.image, p.stats.n_frames, p.stats.image_size, p.stats.stored_bytes);
    else if (opt_verbose)
        print_summary(&p, t0);
    return 0;
}
