/* progress.c: see progress.h. */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

#define REDRAW_US (G_USEC_PER_SEC / 10)

void mr_progress_bar_init(MrProgressBar *bar, const char *label)
{
    bar->label = label;
    bar->active = isatty(STDERR_FILENO);
    bar->start_us = g_get_monotonic_time();
    bar->last_draw_us = 0;
}

void mr_progress_bar_update(guint64 done, guint64 total, gpointer data)
{
    MrProgressBar *bar = data;
    gint64 now = g_get_monotonic_time();
    if (!bar->active || total == 0 || now - bar->last_draw_us < REDRAW_US)
        return;
    bar->last_draw_us = now;
    double seconds = (double)(now - bar->start_us) / G_USEC_PER_SEC;
    double rate = seconds > 0 ? (double)done / seconds : 0; /* bytes per second */
    double eta = rate > 0 ? (double)(total - MIN(done, total)) / rate : 0;
    fprintf(stderr, "\r%s: %3.0f%%  %.2f GB/s  ETA %.0f s\033[K", bar->label,
            100.0 * (double)done / (double)total, rate / 1e9, eta);
    fflush(stderr);
}

void mr_progress_bar_finish(MrProgressBar *bar)
{
    if (bar->active && bar->last_draw_us != 0) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}
