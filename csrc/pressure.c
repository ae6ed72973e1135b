/*
 * pressure.c: memory-pressure thresholds, their watcher thread, and the
 * process's cgroup v2 memory limit (gomalloc.h, "Memory pressure" and
 * "Container-aware limits").
 *
 * Byte thresholds (an absolute heap_inuse, or a fraction of memory_limit or
 * hard_limit) are checked where heap_inuse changes at span granularity:
 * gm_pressure_note, called from the page map's observers (observe.h), reads
 * heap_inuse and compares it with a band [pr_lo, pr_hi) that holds no level:
 * two relaxed loads and two compares unless a level is crossed.  A
 * crossing, under pr_lock (innermost: taken under mheap.lock, never held
 * around another allocator lock or a malloc), moves the band, counts the
 * crossing on its threshold, and writes the watcher's eventfd.  Nothing
 * else happens on the allocating thread: no handler, no Python.
 *
 * The watcher thread sleeps in poll(2) on the eventfd, on each PSI trigger
 * (POLLPRI on its /proc/pressure/memory descriptor) and on an inotify
 * descriptor watching memory.events of the cgroup (a change of the file is
 * an IN_MODIFY event; the "high" count is read again then).  It never wakes
 * on a timer.  On a wake it turns the counts into events and calls the
 * handler, outside pr_lock, on its own thread.
 *
 * The cgroup: /proc/self/cgroup's "0::PATH" line, under the cgroup2 mount
 * found in /proc/self/mountinfo (GOMALLOC_DEBUG_CGROUP_DIR names the
 * directory instead, for tests).  Its limit is the smallest memory.max or
 * memory.high of the directory and its ancestors up to the mount.  All of it
 * with open/read, no stdio and no malloc: it runs at start-up, inside the
 * first malloc, when memory_limit=auto.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "gm_internal.h"
#include "observe.h"

#define PATH_BYTES 4096

typedef struct {
    bool used;
    int kind, flags;
    uint64_t value, window;
    bool above;                  /* byte kinds: heap_inuse reached the level, not yet re-armed */
    uint64_t ups, downs;         /* crossings up / down, ever */
    uint64_t events;             /* kernel events (PSI wakes, increase of "high"), ever */
    uint64_t sent_ups, sent_downs, sent_events; /* of those, reported */
    uint64_t high;               /* cgroup: the last "high" count read */
    int fd;                      /* PSI: the trigger's descriptor; cgroup: memory.events; else -1 */
    int wd;                      /* cgroup: the inotify watch, else -1 */
} gm_threshold;

static pthread_mutex_t pr_lock = PTHREAD_MUTEX_INITIALIZER;
static gm_threshold thr[GM_PRESSURE_MAX];     /* Under pr_lock. */
static uint64_t pr_hi = UINT64_MAX, pr_lo;     /* the band without a level; written under pr_lock, read relaxed */
static int wake_fd = -1, inotify_fd = -1;      /* Under pr_lock. */
static gm_pressure_handler handler;            /* Under pr_lock. */
static void *handler_ctx;                      /* Under pr_lock. */
static bool watcher_running, atfork_done;      /* Under pr_lock. */

/* ---- byte thresholds ------------------------------------------------------ */

static bool byte_kind(int kind) {
    return kind == GM_PRESSURE_BYTES || kind == GM_PRESSURE_MEMORY_LIMIT || kind == GM_PRESSURE_HARD_LIMIT;
}

/* The level in bytes; UINT64_MAX while the limit it is a fraction of is 0. */
static uint64_t level_of(const gm_threshold *t) {
    if (t->kind == GM_PRESSURE_BYTES)
        return t->value;
    long long lim = LOAD_RELAXED(t->kind == GM_PRESSURE_MEMORY_LIMIT ? &gm_opt.memory_limit : &gm_opt.hard_limit);
    if (lim <= 0)
        return UINT64_MAX;
    return (uint64_t)((unsigned __int128)(uint64_t)lim * t->value / 1000000);
}

static uint64_t rearm_of(uint64_t level) { return level - level / 16; }

static void wake_locked(void) {
    uint64_t one = 1;
    if (wake_fd >= 0)
        (void)!write(wake_fd, &one, sizeof one);
}

/* Bring every byte threshold up to date with heap_inuse; set the band. */
static void update_locked(bool quiet) {
    uint64_t inuse = LOAD_RELAXED(&gm_mheap.heap_inuse), hi = UINT64_MAX, lo = 0;
    bool changed = false;
    for (int i = 0; i < GM_PRESSURE_MAX; i++) {
        gm_threshold *t = &thr[i];
        if (!t->used || !byte_kind(t->kind))
            continue;
        uint64_t level = level_of(t);
        if (level == UINT64_MAX) {
            t->above = false;
            continue;
        }
        if (!t->above && inuse >= level) {
            t->above = true;
            if (!quiet)
                t->ups++, changed = true;
        } else if (t->above && inuse < rearm_of(level)) {
            t->above = false;
            if (!quiet && (t->flags & GM_PRESSURE_FALLING))
                t->downs++, changed = true;
        }
        if (t->above) {
            if (rearm_of(level) > lo)
                lo = rearm_of(level);
        } else if (level < hi) {
            hi = level;
        }
    }
    STORE_RELAXED(&pr_hi, hi);
    STORE_RELAXED(&pr_lo, lo);
    if (changed)
        wake_locked();
}

void gm_pressure_note(void) {
    uint64_t inuse = LOAD_RELAXED(&gm_mheap.heap_inuse);
    if (likely(inuse < LOAD_RELAXED(&pr_hi) && inuse >= LOAD_RELAXED(&pr_lo)))
        return;
    pthread_mutex_lock(&pr_lock);
    update_locked(false);
    pthread_mutex_unlock(&pr_lock);
}

void gm_pressure_limits_changed(long long value) {
    (void)value;
    pthread_mutex_lock(&pr_lock);
    update_locked(false);
    pthread_mutex_unlock(&pr_lock);
}

/* ---- the cgroup ------------------------------------------------------------ */

/* The whole of a small file into buf (NUL-terminated); bytes read or -1. */
static ssize_t read_small(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    while (n + 1 < len) {
        ssize_t r = read(fd, buf + n, len - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    return (ssize_t)n;
}

static bool append(char *dst, size_t len, const char *a, size_t na) {
    size_t n = strlen(dst);
    if (n + na + 1 > len)
        return false;
    memcpy(dst + n, a, na);
    dst[n + na] = 0;
    return true;
}

/* Calls line(ctx, text, n) for each line of the file at path, read in
 * pieces (mountinfo may be long); lines longer than the buffer are cut. */
static void each_line(const char *path, void (*line)(void *, const char *, size_t), void *ctx) {
    char buf[PATH_BYTES * 2];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (have > 0)
                line(ctx, buf, have);
            break;
        }
        have += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < have; i++)
            if (buf[i] == '\n') {
                line(ctx, buf + start, i - start);
                start = i + 1;
            }
        if (start == 0 && have == sizeof buf) { /* a line longer than the buffer: cut */
            line(ctx, buf, have);
            start = have;
        }
        memmove(buf, buf + start, have - start);
        have -= start;
    }
    close(fd);
}

struct cg_find {
    char path[PATH_BYTES];   /* from /proc/self/cgroup */
    char mount[PATH_BYTES];  /* the cgroup2 mount point */
    char root[PATH_BYTES];   /* the mount's root in the hierarchy */
};

static void cg_line(void *ctx, const char *s, size_t n) {
    struct cg_find *f = ctx;
    if (n > 3 && memcmp(s, "0::", 3) == 0 && n - 3 < sizeof f->path) {
        memcpy(f->path, s + 3, n - 3);
        f->path[n - 3] = 0;
    }
}

/* mountinfo: "id parent maj:min root mountpoint opts... - fstype source super". */
static void mount_line(void *ctx, const char *s, size_t n) {
    struct cg_find *f = ctx;
    const char *end = s + n, *dash = NULL;
    for (const char *p = s; p + 3 <= end; p++)
        if (p[0] == ' ' && p[1] == '-' && p[2] == ' ') {
            dash = p;
            break;
        }
    if (dash == NULL || f->mount[0] != 0 || end - dash < 11 || memcmp(dash + 3, "cgroup2 ", 8) != 0)
        return;
    const char *field[5];
    size_t flen[5];
    const char *p = s;
    for (int k = 0; k < 5; k++) {
        while (p < dash && *p == ' ')
            p++;
        field[k] = p;
        while (p < dash && *p != ' ')
            p++;
        flen[k] = (size_t)(p - field[k]);
    }
    if (flen[3] >= sizeof f->root || flen[4] >= sizeof f->mount)
        return;
    memcpy(f->root, field[3], flen[3]);
    f->root[flen[3]] = 0;
    memcpy(f->mount, field[4], flen[4]);
    f->mount[flen[4]] = 0;
}

/* The process's cgroup v2 directory into dir; *top: the length of its
 * mount point's part (ancestors are looked at down to it). */
static bool cgroup_dir(char *dir, size_t len, size_t *top) {
    const char *debug = getenv("GOMALLOC_DEBUG_CGROUP_DIR");
    if (debug != NULL) {
        if (strlen(debug) + 1 > len)
            return false;
        strcpy(dir, debug);
        *top = strlen(dir);
        return true;
    }
    struct cg_find f;
    f.path[0] = f.mount[0] = f.root[0] = 0;
    each_line("/proc/self/cgroup", cg_line, &f);
    if (f.path[0] == 0)
        return false;
    each_line("/proc/self/mountinfo", mount_line, &f);
    if (f.mount[0] == 0)
        return false;
    const char *rel = f.path;
    size_t nroot = strlen(f.root);
    if (strcmp(f.root, "/") != 0) {
        if (strncmp(rel, f.root, nroot) != 0)
            return false; /* our cgroup is outside this mount's view */
        rel += nroot;
    }
    dir[0] = 0;
    if (!append(dir, len, f.mount, strlen(f.mount)))
        return false;
    *top = strlen(dir);
    if (strcmp(rel, "/") != 0 && !append(dir, len, rel, strlen(rel)))
        return false;
    return true;
}

/* A memory.max / memory.high value: bytes, or 0 for "max" or no file. */
static uint64_t read_limit(const char *dir, const char *file) {
    char path[PATH_BYTES + 32], buf[64];
    path[0] = 0;
    if (!append(path, sizeof path, dir, strlen(dir)) || !append(path, sizeof path, file, strlen(file)))
        return 0;
    if (read_small(path, buf, sizeof buf) <= 0 || buf[0] < '0' || buf[0] > '9')
        return 0;
    return strtoull(buf, NULL, 10);
}

uint64_t gm_cgroup_limit_read(void) {
    char dir[PATH_BYTES];
    size_t top;
    if (!cgroup_dir(dir, sizeof dir, &top))
        return 0;
    uint64_t best = 0;
    for (;;) {
        for (int k = 0; k < 2; k++) {
            uint64_t v = read_limit(dir, k == 0 ? "/memory.max" : "/memory.high");
            if (v != 0 && (best == 0 || v < best))
                best = v;
        }
        size_t n = strlen(dir);
        while (n > top && dir[n - 1] != '/')
            n--;
        if (n <= top)
            break;
        dir[n - 1 > top ? n - 1 : top] = 0; /* the parent, down to the mount */
        if (strlen(dir) <= top)
            break;
    }
    return best;
}

/* The "high" count of memory.events (fd open on it), or `old` if the file
 * has none (being rewritten: a file standing in for the cgroup's). */
static uint64_t read_high(int fd, uint64_t old) {
    char buf[512];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return old;
    buf[n] = 0;
    for (char *p = buf; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, "high ", 5) == 0 && strchr(p, '\n') != NULL)
            return strtoull(p + 5, NULL, 10);
    return old;
}

/* ---- kernel triggers ------------------------------------------------------- */

static char *put_u64(char *p, uint64_t v) {
    char d[24];
    int i = 0;
    do
        d[i++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (i > 0)
        *p++ = d[--i];
    return p;
}

/* Open t's kernel source (PSI trigger, or memory.events and its watch). */
static int open_source_locked(gm_threshold *t) {
    t->fd = t->wd = -1;
    if (t->kind == GM_PRESSURE_PSI) {
        int fd = open("/proc/pressure/memory", O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        char buf[64], *p = buf;
        memcpy(p, "some ", 5);
        p = put_u64(p + 5, t->value);
        *p++ = ' ';
        p = put_u64(p, t->window);
        *p++ = 0;
        if (write(fd, buf, (size_t)(p - buf)) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        t->fd = fd;
        return 0;
    }
    if (t->kind == GM_PRESSURE_CGROUP) {
        char dir[PATH_BYTES + 32];
        size_t top;
        if (!cgroup_dir(dir, PATH_BYTES, &top))
            return -ENOENT;
        if (!append(dir, sizeof dir, "/memory.events", 14))
            return -ENAMETOOLONG;
        if (inotify_fd < 0 && (inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0) {
            inotify_fd = -1;
            return -errno;
        }
        int fd = open(dir, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        int wd = inotify_add_watch(inotify_fd, dir, IN_MODIFY);
        if (wd < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        t->fd = fd;
        t->wd = wd;
        t->high = read_high(fd, 0);
        return 0;
    }
    return 0;
}

static void close_source_locked(gm_threshold *t) {
    if (t->wd >= 0 && inotify_fd >= 0)
        inotify_rm_watch(inotify_fd, t->wd);
    if (t->fd >= 0)
        close(t->fd);
    t->fd = t->wd = -1;
}

/* ---- the watcher ------------------------------------------------------------ */

static void *watcher_main(void *arg) {
    (void)arg;
    for (;;) {
        struct pollfd pf[GM_PRESSURE_MAX + 2];
        int who[GM_PRESSURE_MAX + 2], n = 0;
        pthread_mutex_lock(&pr_lock);
        if (!watcher_running || wake_fd < 0) {
            pthread_mutex_unlock(&pr_lock);
            return NULL;
        }
        pf[n] = (struct pollfd){wake_fd, POLLIN, 0};
        who[n++] = -1;
        bool cgroups = false;
        for (int i = 0; i < GM_PRESSURE_MAX; i++) {
            if (thr[i].used && thr[i].kind == GM_PRESSURE_PSI && thr[i].fd >= 0) {
                pf[n] = (struct pollfd){thr[i].fd, POLLPRI, 0};
                who[n++] = i;
            }
            cgroups |= thr[i].used && thr[i].kind == GM_PRESSURE_CGROUP && thr[i].fd >= 0;
        }
        if (cgroups && inotify_fd >= 0) {
            pf[n] = (struct pollfd){inotify_fd, POLLIN, 0};
            who[n++] = -2;
        }
        pthread_mutex_unlock(&pr_lock);

        if (poll(pf, (nfds_t)n, -1) < 0)
            continue; /* EINTR */

        struct gm_pressure_event ev[2 * GM_PRESSURE_MAX];
        int nev = 0;
        pthread_mutex_lock(&pr_lock);
        for (int k = 0; k < n; k++) {
            if (pf[k].revents == 0)
                continue;
            if (who[k] == -1) {
                uint64_t v;
                (void)!read(pf[k].fd, &v, sizeof v);
            } else if (who[k] == -2) {
                char buf[4096] __attribute__((aligned(8)));
                while (read(pf[k].fd, buf, sizeof buf) > 0)
                    ;
                for (int i = 0; i < GM_PRESSURE_MAX; i++)
                    if (thr[i].used && thr[i].kind == GM_PRESSURE_CGROUP && thr[i].fd >= 0) {
                        uint64_t high = read_high(thr[i].fd, thr[i].high);
                        if (high > thr[i].high)
                            thr[i].events += high - thr[i].high;
                        thr[i].high = high;
                    }
            } else if (thr[who[k]].used && thr[who[k]].fd == pf[k].fd) {
                if (pf[k].revents & POLLPRI)
                    thr[who[k]].events++;
                if (pf[k].revents & (POLLERR | POLLNVAL)) /* the kernel dropped the trigger */
                    close_source_locked(&thr[who[k]]);
            }
        }
        uint64_t inuse = LOAD_RELAXED(&gm_mheap.heap_inuse);
        for (int i = 0; i < GM_PRESSURE_MAX; i++) {
            gm_threshold *t = &thr[i];
            if (!t->used)
                continue;
            uint64_t level = byte_kind(t->kind) ? level_of(t) : 0;
            struct gm_pressure_event e = {i, t->kind, 1, level == UINT64_MAX ? 0 : level, inuse, 0,
                                          t->kind == GM_PRESSURE_CGROUP ? t->high : 0};
            if (t->ups > t->sent_ups) {
                e.count = t->ups - t->sent_ups;
                t->sent_ups = t->ups;
                ev[nev++] = e;
            }
            if (t->events > t->sent_events) {
                e.count = t->events - t->sent_events;
                t->sent_events = t->events;
                ev[nev++] = e;
            }
            if (t->downs > t->sent_downs) {
                e.rising = 0;
                e.count = t->downs - t->sent_downs;
                t->sent_downs = t->downs;
                ev[nev++] = e;
            }
        }
        gm_pressure_handler h = handler;
        void *ctx = handler_ctx;
        pthread_mutex_unlock(&pr_lock);
        for (int k = 0; h != NULL && k < nev; k++)
            h(ctx, &ev[k]);
    }
}

/* fork(): the child has no watcher; its descriptors are the parent's. */
static void fork_child(void) {
    pthread_mutex_init(&pr_lock, NULL);
    watcher_running = false;
    if (wake_fd >= 0)
        close(wake_fd);
    if (inotify_fd >= 0)
        close(inotify_fd);
    wake_fd = inotify_fd = -1;
    for (int i = 0; i < GM_PRESSURE_MAX; i++) {
        if (thr[i].fd >= 0)
            close(thr[i].fd);
        thr[i].fd = thr[i].wd = -1;
    }
}

/* Start the watcher if it is not running (no lock held: pthread_create
 * allocates). */
static int start_watcher(void) {
    pthread_mutex_lock(&pr_lock);
    bool need_atfork = !atfork_done;
    atfork_done = true;
    if (watcher_running) {
        pthread_mutex_unlock(&pr_lock);
        return 0;
    }
    if (wake_fd < 0 && (wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        int e = errno;
        wake_fd = -1;
        pthread_mutex_unlock(&pr_lock);
        return e;
    }
    watcher_running = true;
    pthread_mutex_unlock(&pr_lock);
    if (need_atfork)
        pthread_atfork(NULL, NULL, fork_child);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 << 10);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int e = pthread_create(&t, &attr, watcher_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        pthread_mutex_lock(&pr_lock);
        watcher_running = false;
        pthread_mutex_unlock(&pr_lock);
    }
    return e;
}

/* ---- the API ------------------------------------------------------------------ */

int gm_set_pressure_handler(gm_pressure_handler h, void *ctx) {
    gm_ensure_init();
    pthread_mutex_lock(&pr_lock);
    handler = h;
    handler_ctx = ctx;
    pthread_mutex_unlock(&pr_lock);
    return h != NULL ? start_watcher() : 0;
}

int gm_pressure_add(int kind, uint64_t value, uint64_t window_us, int flags) {
    gm_ensure_init();
    if (kind < GM_PRESSURE_BYTES || kind > GM_PRESSURE_CGROUP || (flags & ~GM_PRESSURE_FALLING) != 0 ||
        (byte_kind(kind) && kind != GM_PRESSURE_BYTES && (value == 0 || value > 1000000)))
        return -EINVAL;
    pthread_mutex_lock(&pr_lock);
    int id = -1;
    for (int i = 0; i < GM_PRESSURE_MAX && id < 0; i++)
        if (!thr[i].used)
            id = i;
    if (id < 0) {
        pthread_mutex_unlock(&pr_lock);
        return -ENOSPC;
    }
    gm_threshold *t = &thr[id];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->value = value;
    t->window = window_us;
    t->flags = flags;
    int e = open_source_locked(t);
    if (e != 0) {
        pthread_mutex_unlock(&pr_lock);
        return e;
    }
    t->used = true;
    update_locked(true); /* a level already reached fires at the next crossing */
    wake_locked();       /* the watcher polls the new source */
    pthread_mutex_unlock(&pr_lock);
    int s = start_watcher();
    return s != 0 ? -s : id;
}

int gm_pressure_remove(int id) {
    if (id < 0 || id >= GM_PRESSURE_MAX)
        return EINVAL;
    pthread_mutex_lock(&pr_lock);
    if (!thr[id].used) {
        pthread_mutex_unlock(&pr_lock);
        return EINVAL;
    }
    close_source_locked(&thr[id]);
    thr[id].used = false;
    update_locked(true);
    wake_locked();
    pthread_mutex_unlock(&pr_lock);
    return 0;
}

int gm_pressure_restart(void) {
    gm_ensure_init();
    pthread_mutex_lock(&pr_lock);
    for (int i = 0; i < GM_PRESSURE_MAX; i++)
        if (thr[i].used && thr[i].fd < 0 && (thr[i].kind == GM_PRESSURE_PSI || thr[i].kind == GM_PRESSURE_CGROUP))
            (void)open_source_locked(&thr[i]);
    update_locked(true);
    bool any = handler != NULL;
    pthread_mutex_unlock(&pr_lock);
    return any ? start_watcher() : 0;
}
