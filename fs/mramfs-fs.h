/* mramfs-fs.h: state shared by the FUSE frontend's option parsing (main.c) and its
 * operations (ops.c). The frontend holds no byte layout: everything comes from libmramfs. */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "mramfs.h"

typedef struct {
    MrImage *image;
    MrTree *tree;
    gboolean foreground; /* errors go to stderr; otherwise to syslog */
} MrFs;

extern const struct fuse_lowlevel_ops mr_fs_ops;

/* One line about a failed read, for the user or the system log. */
void mr_fs_log(const MrFs *fs, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
