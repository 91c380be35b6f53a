/* zdecode.c: the decompression baselines of scripts/bench-packed.py.
 *
 *   zdecode PACKED SEGMENT_INDEX ROUNDS [THREADS]
 *
 * Reads the index of a packed image (docs/packed-format.md §2, parsed here independently
 * of libmramfs), loads the stored frames of one segment into memory and decodes each with
 * ZSTD_decompressDCtx into a preallocated, pre-touched buffer, ROUNDS times. THREADS
 * (default 1) threads share the frames (frame i goes to thread i % THREADS), each with its
 * own context and buffer: with 2 this is the machine's ceiling for parallel decoding, no
 * FUSE, no copy, no coordination. Prints "bytes seconds" of the best round. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct {
    unsigned char **src;
    size_t *clen, *ulen, n, max_u;
    int thread, n_threads, failed;
    unsigned char *dst;
    ZSTD_DCtx *dctx;
} Decoder;

static void *decode_share(void *arg)
{
    Decoder *d = arg;
    for (size_t i = (size_t)d->thread; i < d->n; i += (size_t)d->n_threads) {
        size_t got = ZSTD_decompressDCtx(d->dctx, d->dst, d->max_u, d->src[i], d->clen[i]);
        if (ZSTD_isError(got) || got != d->ulen[i])
            d->failed = 1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: zdecode PACKED SEGMENT_INDEX ROUNDS [THREADS]\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        return perror(argv[1]), 1;
    unsigned char head[128];
    if (fread(head, 1, 128, f) != 128)
        return 1;
    uint64_t ioff = le(head + 40, 8), isize = le(head + 48, 8);
    unsigned char *idx = malloc(isize);
    fseek(f, (long)ioff, SEEK_SET);
    if (fread(idx, 1, isize, f) != isize)
        return 1;
    uint64_t ns = le(idx, 4), nc = le(idx + 8, 8), nf = le(idx + 16, 8);
    uint64_t si = strtoull(argv[2], NULL, 10);
    if (si >= ns)
        return 1;
    const unsigned char *seg = idx + 32 + 48 * si;
    uint64_t first_chunk = le(seg + 32, 8), n_chunks = le(seg + 40, 8);
    const unsigned char *chunks = idx + 32 + 48 * ns, *frames = chunks + 48 * nc;
    (void)nf;
    uint64_t first_frame = le(chunks + 48 * first_chunk + 16, 8), n_frames = 0;
    for (uint64_t k = 0; k < n_chunks; k++)
        n_frames += le(chunks + 48 * (first_chunk + k) + 24, 4);
    /* load the stored frames */
    unsigned char **src = calloc(n_frames, sizeof *src);
    size_t *clen = calloc(n_frames, sizeof *clen), *ulen = calloc(n_frames, sizeof *ulen);
    size_t max_u = 0, total_u = 0, n = 0;
    for (uint64_t i = 0; i < n_frames; i++) {
        const unsigned char *e = frames + 32 * (first_frame + i);
        uint64_t off = le(e, 8), cs = le(e + 8, 4), us = le(e + 12, 4);
        if (cs == 0)
            continue;
        src[n] = malloc(cs);
        fseek(f, (long)off, SEEK_SET);
        if (fread(src[n], 1, cs, f) != cs)
            return 1;
        clen[n] = cs;
        ulen[n] = us;
        max_u = us > max_u ? us : max_u;
        total_u += us;
        n++;
    }
    int n_threads = argc == 5 ? atoi(argv[4]) : 1;
    if (n_threads < 1 || n_threads > 64)
        return 2;
    Decoder dec[64];
    for (int t = 0; t < n_threads; t++) {
        dec[t] = (Decoder){.src = src, .clen = clen, .ulen = ulen, .n = n, .max_u = max_u,
                           .thread = t, .n_threads = n_threads, .dst = malloc(max_u),
                           .dctx = ZSTD_createDCtx()};
        memset(dec[t].dst, 1, max_u);
    }
    double best = 1e9;
    for (int r = 0; r < atoi(argv[3]); r++) {
        pthread_t tid[64];
        double t0 = now();
        for (int t = 0; t < n_threads; t++)
            pthread_create(&tid[t], NULL, decode_share, &dec[t]);
        for (int t = 0; t < n_threads; t++)
            pthread_join(tid[t], NULL);
        double secs = now() - t0;
        for (int t = 0; t < n_threads; t++)
            if (dec[t].failed)
                return fprintf(stderr, "a frame failed to decode\n"), 1;
        best = secs < best ? secs : best;
    }
    printf("%zu %.6f\n", total_u, best);
    return 0;
}
