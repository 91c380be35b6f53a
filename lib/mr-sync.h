/* mr-sync.h: GMutex and GCond hand-offs that ThreadSanitizer can see.
 *
 * GLib on Linux builds GMutex and GCond on raw futexes (and GThreadPool on them), so TSan
 * (which intercepts pthread_* calls, not futex(2)) sees no ordering between two threads
 * that only meet in a GLib lock: every access under such a lock looks like a race. Our
 * threaded modules (mr-frame-cache.c, mr-pack-writer.c) therefore lock through these
 * wrappers, which tell TSan what the lock means (__tsan_acquire/__tsan_release on the
 * lock's address) and compile to the plain GLib calls in every other build. They start
 * their own threads (g_thread_new, g_thread_join: pthread calls TSan sees) and hand work
 * over under their own lock: no GThreadPool or GAsyncQueue, whose futex hand-offs would
 * need the same treatment inside GLib. */
#pragma once

#include <glib.h>

#if defined(__SANITIZE_THREAD__)
#define MR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MR_TSAN 1
#endif
#endif

#ifdef MR_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define mr_tsan_acquire(p) __tsan_acquire((void *)(p))
#define mr_tsan_release(p) __tsan_release((void *)(p))
#else
#define mr_tsan_acquire(p) ((void)(p))
#define mr_tsan_release(p) ((void)(p))
#endif

static inline void mr_mutex_lock(GMutex *m)
{
    g_mutex_lock(m);
    mr_tsan_acquire(m);
}

static inline void mr_mutex_unlock(GMutex *m)
{
    mr_tsan_release(m);
    g_mutex_unlock(m);
}

/* g_cond_wait gives the lock up while it sleeps and takes it back before it returns. */
static inline void mr_cond_wait(GCond *c, GMutex *m)
{
    mr_tsan_release(m);
    g_cond_wait(c, m);
    mr_tsan_acquire(m);
}
