/*
 * options.c: the options.  Their one table is tools/tables.py, from which
 * tools/mktables.py writes the table below, struct gm_options
 * (gm_internal.h) and README.md's table.
 *
 * Each option is read at start-up from the environment variable
 * GOMALLOC_<NAME> (numbers may carry a K, M or G suffix; on/off, true/false
 * and yes/no are accepted) and can be read and set at run time by name
 * (gm_option_get / gm_option_set, and pygomalloc.options() in Python).
 *
 * Nothing is ignored silently: a GOMALLOC_ variable whose value is not
 * accepted, or that names no option, gets one warning line on stderr, and
 * is kept for gm_option_rejected.  This runs inside the first malloc,
 * perhaps under LD_PRELOAD before main: no stdio and no allocation here,
 * only write(2) from buffers on the stack, and static storage.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <unistd.h>

#include "gm_internal.h"
#include "observe.h"

extern char **environ;

struct gm_options gm_opt;

static void tiny_changed(long long value) {
    (void)value;
    gm_route_update();
}

static void auto_percent_changed(long long value);

/* What an option's number means: how its accepted values are described. */
enum option_unit {
    OPT_FLAG,    /* 0 or 1; on/off, true/false, yes/no in the environment */
    OPT_CHOICE,  /* one of a few numbers, min to max */
    OPT_BYTES,   /* numbers, from min to max: bytes */
    OPT_MS,      /* milliseconds */
    OPT_PERCENT, /* a percentage */
};

struct option_def {
    const char *name;
    long long *value;
    long long def, min, max;
    enum option_unit unit;
    void (*changed)(long long value); /* called after a change at run time, if set */
    long long *auto_percent;          /* accepts "auto": this percentage of the cgroup's limit; or NULL */
};

static const struct option_def table[] = {
    /* BEGIN GENERATED option-table: tools/mktables.py from tools/tables.py, do not edit */
    /* name, value, default, min, max, unit (what a value means), on change, auto percent */
    {"abort_on_error",            &gm_opt.abort_on_error,            1,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"scavenger",                 &gm_opt.scavenger,                 1,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"decay_ms",                  &gm_opt.decay_ms,                  1000,       0, 3600000,     OPT_MS,      NULL,                       NULL},
    {"retain_percent",            &gm_opt.retain_percent,            10,         0, 10000,       OPT_PERCENT, NULL,                       NULL},
    {"memory_limit",              &gm_opt.memory_limit,              0,          0, 256LL << 40, OPT_BYTES,   gm_pressure_limits_changed, &gm_opt.auto_memory_limit_percent},
    {"hard_limit",                &gm_opt.hard_limit,                0,          0, 256LL << 40, OPT_BYTES,   gm_pressure_limits_changed, &gm_opt.auto_hard_limit_percent},
    {"madv_free",                 &gm_opt.madv_free,                 0,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"thp",                       &gm_opt.thp,                       0,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"tcache_bytes",              &gm_opt.tcache_bytes,              32LL << 10, 0, 16LL << 20,  OPT_BYTES,   NULL,                       NULL},
    {"fault_on_free",             &gm_opt.fault_on_free,             0,          0, 2,           OPT_CHOICE,  NULL,                       NULL},
    {"check_heap",                &gm_opt.check_heap,                0,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"print_stats",               &gm_opt.print_stats,               0,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"profile_rate",              &gm_opt.profile_rate,              0,          0, 1LL << 40,   OPT_BYTES,   gm_profile_set_rate,        NULL},
    {"tiny",                      &gm_opt.tiny,                      0,          0, 1,           OPT_FLAG,    tiny_changed,               NULL},
    {"random_heap",               &gm_opt.random_heap,               1,          0, 1,           OPT_FLAG,    NULL,                       NULL},
    {"auto_memory_limit_percent", &gm_opt.auto_memory_limit_percent, 90,         1, 100,         OPT_PERCENT, auto_percent_changed,       NULL},
    {"auto_hard_limit_percent",   &gm_opt.auto_hard_limit_percent,   95,         1, 100,         OPT_PERCENT, auto_percent_changed,       NULL},
    /* END GENERATED option-table */
};
#define NOPTIONS ((int)(sizeof table / sizeof table[0]))

/* Options set to "auto" (those with auto_percent): their value is the
 * percentage of the cgroup's memory limit, computed at start-up, on
 * gm_limits_refresh and when the percentage changes.  Relaxed. */
static bool auto_on[NOPTIONS];

/* GOMALLOC_ variables that are not options, which start-up leaves alone (a
 * trailing * matches any suffix). */
static const char *const not_options[] = {
    /* BEGIN GENERATED not-options: tools/mktables.py from tools/tables.py, do not edit */
    "GOMALLOC_PRELOAD_LIB", /* the preload library the bench runner compares (src/pygomalloc/_bench.py) */
    "GOMALLOC_DEBUG_*",     /* testing switches (e.g. fault injection in the OS layer, GOMALLOC_DEBUG_CGROUP_DIR: the cgroup v2 directory to read) */
    /* END GENERATED not-options */
};
#define NNOT_OPTIONS ((int)(sizeof not_options / sizeof not_options[0]))

#define PREFIX "GOMALLOC_"
#define PREFIX_LEN (sizeof PREFIX - 1)

/* ---- text without stdio or malloc ----------------------------------------- */

/* A NUL-terminated string in buf, cut at cap - 1 bytes. */
struct text {
    char *buf;
    size_t len, cap;
};

static void put_n(struct text *t, const char *s, size_t n) {
    for (; n > 0 && *s && t->len + 1 < t->cap; n--)
        t->buf[t->len++] = *s++;
    t->buf[t->len] = 0;
}

static void put(struct text *t, const char *s) { put_n(t, s, (size_t)-1); }

static void put_ll(struct text *t, long long v) {
    char digits[24];
    int i = (int)sizeof digits;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    digits[--i] = 0;
    do
        digits[--i] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        digits[--i] = '-';
    put(t, digits + i);
}

static char upper(char c) { return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c; }

/* ---- the options ---------------------------------------------------------- */

/* Parse "123", "64K", "on": returns 0 and the value, or EINVAL. */
static int parse(const char *s, long long *out) {
    static const char *const yes[] = {"on", "true", "yes"}, *const no[] = {"off", "false", "no"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = 0, 0;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno != 0)
        return EINVAL;
    int shift = 0;
    switch (upper(*end)) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    default: break;
    }
    if (shift != 0) {
        if (v > (LLONG_MAX >> shift) || v < -(LLONG_MAX >> shift))
            return EINVAL;
        v *= (long long)1 << shift;
        end++;
    }
    if (*end != 0)
        return EINVAL;
    *out = v;
    return 0;
}

static const struct option_def *find(const char *name) {
    for (int i = 0; i < NOPTIONS; i++)
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    return NULL;
}

/* The option whose variable is GOMALLOC_ + the n bytes at s (upper case). */
static const struct option_def *find_variable(const char *s, size_t n) {
    for (int i = 0; i < NOPTIONS; i++) {
        const char *name = table[i].name;
        size_t k = 0;
        while (k < n && name[k] != 0 && upper(name[k]) == s[k])
            k++;
        if (k == n && name[k] == 0)
            return &table[i];
    }
    return NULL;
}

/* What o accepts, e.g. "a number of milliseconds from 0 to 3600000". */
static void describe(const struct option_def *o, struct text *t) {
    switch (o->unit) {
    case OPT_FLAG:
        put(t, "0 or 1");
        return;
    case OPT_CHOICE:
        for (long long v = o->min; v <= o->max; v++) {
            if (v > o->min)
                put(t, v == o->max ? " or " : ", ");
            put_ll(t, v);
        }
        return;
    case OPT_BYTES: put(t, "a number of bytes from "); break;
    case OPT_MS: put(t, "a number of milliseconds from "); break;
    case OPT_PERCENT: put(t, "a percentage from "); break;
    }
    put_ll(t, o->min);
    put(t, " to ");
    put_ll(t, o->max);
}

#define AUTO_TEXT ", or auto (a percentage of the cgroup's memory limit)"

/* ---- what start-up rejected ---------------------------------------------- */

#define VARIABLE_MAX 64 /* bytes kept of a variable's name */
#define VALUE_MAX 64    /* ... and of its value, "..." added when cut */
static struct {
    char variable[VARIABLE_MAX];
    char value[VALUE_MAX + 4];
    char reason[192];
} rejected[GM_OPTION_REJECTED_MAX];
static int nrejected;

/* Is the variable (n bytes at s, GOMALLOC_ included) one that is not an option? */
static bool not_an_option(const char *s, size_t n) {
    for (int i = 0; i < NNOT_OPTIONS; i++) {
        size_t len = strlen(not_options[i]);
        if (not_options[i][len - 1] == '*' ? n >= len - 1 && memcmp(s, not_options[i], len - 1) == 0
                                            : n == len && memcmp(s, not_options[i], n) == 0)
            return true;
    }
    return false;
}

/* Edit distance between a and b, ignoring case; large for long names. */
static size_t distance(const char *a, size_t na, const char *b, size_t nb) {
    size_t row[VARIABLE_MAX];
    if (na >= VARIABLE_MAX || nb >= VARIABLE_MAX)
        return (size_t)-1;
    for (size_t j = 0; j <= nb; j++)
        row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j], best = diag + (upper(a[i - 1]) != upper(b[j - 1]));
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

/* Is candidate (the part after GOMALLOC_) close to the n bytes at s? */
static size_t closeness(const char *s, size_t n, const char *candidate, size_t len) {
    size_t shorter = n < len ? n : len;
    if (shorter >= 3 && strncasecmp(s, candidate, shorter) == 0)
        return 1; /* one is the start of the other: DECAY for DECAY_MS */
    size_t d = distance(s, n, candidate, len);
    size_t limit = (n > len ? n : len) / 3;
    return d <= (limit > 2 ? limit : 2) ? d : (size_t)-1;
}

/* Append "; did you mean GOMALLOC_...?" for the nearest known variable, if any is close. */
static void suggest(struct text *t, const char *s, size_t n) {
    const char *best = NULL;
    size_t best_len = 0, best_d = (size_t)-1;
    for (int i = 0; i < NOPTIONS + NNOT_OPTIONS; i++) {
        const char *c = i < NOPTIONS ? table[i].name : not_options[i - NOPTIONS] + PREFIX_LEN;
        size_t len = strlen(c);
        if (len > 0 && c[len - 1] == '*')
            continue;
        size_t d = closeness(s, n, c, len);
        if (d < best_d)
            best = c, best_len = len, best_d = d;
    }
    if (best == NULL)
        return;
    put(t, "; did you mean " PREFIX);
    for (size_t k = 0; k < best_len; k++) {
        char u = upper(best[k]);
        put_n(t, &u, 1);
    }
    put(t, "?");
}

/* The variable (n bytes at s), whose value is value, is ignored: o is its
 * option, or NULL for none.  Warn on stderr and keep it. */
static void reject(const char *s, size_t n, const char *value, const struct option_def *o) {
    char reason_buf[192];
    struct text reason = {reason_buf, 0, sizeof reason_buf};
    if (o != NULL) {
        put(&reason, "expected ");
        describe(o, &reason);
        if (o->unit == OPT_FLAG)
            put(&reason, " (on/off, true/false, yes/no allowed)");
        else if (o->unit != OPT_CHOICE)
            put(&reason, " (K, M, G suffixes allowed)");
        if (o->auto_percent != NULL)
            put(&reason, AUTO_TEXT);
    } else {
        put(&reason, "no such option");
        suggest(&reason, s + PREFIX_LEN, n - PREFIX_LEN);
    }

    /* The value, printable and cut. */
    char value_buf[VALUE_MAX + 4];
    size_t k = 0;
    for (; value[k] != 0 && k < VALUE_MAX; k++)
        value_buf[k] = (unsigned char)value[k] < 0x20 || value[k] == 0x7f ? '?' : value[k];
    if (value[k] != 0)
        memcpy(value_buf + k, "...", 3), k += 3;
    value_buf[k] = 0;

    char line_buf[VARIABLE_MAX + sizeof value_buf + sizeof reason_buf + 32];
    struct text line = {line_buf, 0, sizeof line_buf};
    put(&line, "pygomalloc: ");
    put_n(&line, s, n < VARIABLE_MAX - 1 ? n : VARIABLE_MAX - 1);
    put(&line, "=");
    put(&line, value_buf);
    put(&line, " ignored: ");
    put(&line, reason_buf);
    put(&line, "\n");
    for (size_t done = 0; done < line.len;) {
        ssize_t w = write(STDERR_FILENO, line_buf + done, line.len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }

    if (nrejected < GM_OPTION_REJECTED_MAX) {
        struct text v = {rejected[nrejected].variable, 0, sizeof rejected[nrejected].variable};
        put_n(&v, s, n);
        memcpy(rejected[nrejected].value, value_buf, k + 1);
        memcpy(rejected[nrejected].reason, reason_buf, reason.len + 1);
        nrejected++;
    }
}

/* Give every auto option its share of the cgroup's memory limit (0, no
 * limit, outside a limited cgroup); notify: call their on_change.  Returns
 * the cgroup's limit. */
static uint64_t apply_auto(bool notify) {
    uint64_t limit = gm_cgroup_limit_read();
    for (int i = 0; i < NOPTIONS; i++) {
        const struct option_def *o = &table[i];
        if (!LOAD_RELAXED(&auto_on[i]) || o->auto_percent == NULL)
            continue;
        unsigned __int128 v = (unsigned __int128)limit * (uint64_t)LOAD_RELAXED(o->auto_percent) / 100;
        long long value = v > (unsigned __int128)o->max ? o->max : (long long)v;
        STORE_RELAXED(o->value, value);
        if (notify && o->changed != NULL)
            o->changed(value);
    }
    return limit;
}

static void auto_percent_changed(long long value) {
    (void)value;
    (void)apply_auto(true);
}

void gm_options_init(void) {
    int saved_errno = errno;
    for (int i = 0; i < NOPTIONS; i++)
        *table[i].value = table[i].def;
    memset(auto_on, 0, sizeof auto_on);
    nrejected = 0;
    for (char **env = environ; env != NULL && *env != NULL; env++) {
        const char *s = *env, *eq = strchr(s, '=');
        if (strncmp(s, PREFIX, PREFIX_LEN) != 0 || eq == NULL)
            continue;
        size_t n = (size_t)(eq - s);
        if (not_an_option(s, n))
            continue;
        const struct option_def *o = find_variable(s + PREFIX_LEN, n - PREFIX_LEN);
        long long v;
        if (o != NULL && o->auto_percent != NULL && strcasecmp(eq + 1, "auto") == 0)
            auto_on[o - table] = true;
        else if (o != NULL && parse(eq + 1, &v) == 0 && v >= o->min && v <= o->max)
            *o->value = v, auto_on[o - table] = false;
        else
            reject(s, n, eq + 1, o);
    }
    for (int i = 0; i < NOPTIONS; i++)
        if (auto_on[i]) {
            apply_auto(false);
            break;
        }
    errno = saved_errno;
}

int gm_option_set(const char *name, long long value) {
    gm_ensure_init();
    const struct option_def *o = name ? find(name) : NULL;
    if (o != NULL && o->auto_percent != NULL && value == GM_OPTION_AUTO) {
        STORE_RELAXED(&auto_on[o - table], true);
        (void)apply_auto(true);
        return 0;
    }
    if (o == NULL || value < o->min || value > o->max)
        return EINVAL;
    STORE_RELAXED(&auto_on[o - table], false);
    STORE_RELAXED(o->value, value); /* read by the scavenger thread */
    if (o->changed != NULL)
        o->changed(value);
    return 0;
}

int gm_option_is_auto(const char *name) {
    gm_ensure_init();
    const struct option_def *o = name ? find(name) : NULL;
    return o == NULL ? -1 : LOAD_RELAXED(&auto_on[o - table]) ? 1 : 0;
}

uint64_t gm_limits_refresh(void) {
    gm_ensure_init();
    return apply_auto(true);
}

int gm_option_get(const char *name, long long *value) {
    gm_ensure_init();
    const struct option_def *o = name ? find(name) : NULL;
    if (o == NULL)
        return EINVAL;
    *value = LOAD_RELAXED(o->value);
    return 0;
}

const char *gm_option_name(int i) { return i >= 0 && i < NOPTIONS ? table[i].name : NULL; }

int gm_option_describe(const char *name, char *buf, size_t len) {
    if (buf == NULL || len == 0)
        return EINVAL;
    struct text t = {buf, 0, len};
    buf[0] = 0;
    const struct option_def *o = name ? find(name) : NULL;
    if (o == NULL)
        return EINVAL;
    describe(o, &t);
    if (o->auto_percent != NULL)
        put(&t, AUTO_TEXT);
    return 0;
}

int gm_option_rejected(int i, const char **variable, const char **value, const char **reason) {
    gm_ensure_init();
    if (i < 0 || i >= nrejected)
        return -1;
    if (variable != NULL)
        *variable = rejected[i].variable;
    if (value != NULL)
        *value = rejected[i].value;
    if (reason != NULL)
        *reason = rejected[i].reason;
    return 0;
}
