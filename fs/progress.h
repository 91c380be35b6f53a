/* progress.h: a one-line progress display for the command-line tools. It draws only when
 * standard error is a terminal, at most ten times a second, and clears itself at the end,
 * so logs and pipes see nothing. */
#pragma once

#include <glib.h>

typedef struct {
    const char *label; /* "mramfs: vm.sav: indexing" */
    gboolean active;   /* stderr is a terminal */
    gint64 start_us, last_draw_us;
} MrProgressBar;

void mr_progress_bar_init(MrProgressBar *bar, const char *label);
/* Draw @done of @total bytes; matches MrProgressFunc, with the bar as @data. */
void mr_progress_bar_update(guint64 done, guint64 total, gpointer bar);
void mr_progress_bar_finish(MrProgressBar *bar);
