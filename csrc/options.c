/*
 * options.c: the one table of options.  Each is read at start-up from the
 * environment variable GOMALLOC_<NAME> (numbers may carry a K, M or G
 * suffix; on/off, true/false and yes/no are accepted) and can be read and
 * set at run time by name (gm_option_get / gm_option_set, and
 * pygomalloc.options() in Python).
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gm_internal.h"

struct gm_options gm_opt;

static void tiny_changed(long long value) {
    (void)value;
    gm_route_update();
}

struct option_def {
    const char *name;
    long long *value;
    long long def, min, max;
    void (*changed)(long long value); /* called after a change at run time, if set */
};

static const struct option_def table[] = {
    {"abort_on_error", &gm_opt.abort_on_error, 1, 0, 1, NULL},
    {"madv_free", &gm_opt.madv_free, 0, 0, 1, NULL},
    {"thp", &gm_opt.thp, 0, 0, 1, NULL},
    {"check_heap", &gm_opt.check_heap, 0, 0, 1, NULL},
    {"print_stats", &gm_opt.print_stats, 0, 0, 1, NULL},
    {"tcache_bytes", &gm_opt.tcache_bytes, 32 << 10, 0, 1 << 24, NULL},
    {"scavenger", &gm_opt.scavenger, 1, 0, 1, NULL},
    {"decay_ms", &gm_opt.decay_ms, 1000, 0, 3600 * 1000, NULL},
    {"retain_percent", &gm_opt.retain_percent, 10, 0, 10000, NULL},
    {"memory_limit", &gm_opt.memory_limit, 0, 0, (long long)1 << 48, NULL},
    {"hard_limit", &gm_opt.hard_limit, 0, 0, (long long)1 << 48, NULL},
    {"fault_on_free", &gm_opt.fault_on_free, 0, 0, 2, NULL},
    {"profile_rate", &gm_opt.profile_rate, 0, 0, (long long)1 << 40, gm_profile_set_rate},
    {"tiny", &gm_opt.tiny, 0, 0, 1, tiny_changed},
};
#define NOPTIONS ((int)(sizeof table / sizeof table[0]))

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
    switch (toupper((unsigned char)*end)) {
    case 'K': v <<= 10; end++; break;
    case 'M': v <<= 20; end++; break;
    case 'G': v <<= 30; end++; break;
    default: break;
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

void gm_options_init(void) {
    for (int i = 0; i < NOPTIONS; i++) {
        const struct option_def *o = &table[i];
        *o->value = o->def;
        char env[64] = "GOMALLOC_";
        size_t n = strlen(env);
        for (const char *p = o->name; *p && n < sizeof env - 1; p++)
            env[n++] = (char)toupper((unsigned char)*p);
        env[n] = 0;
        const char *s = getenv(env);
        long long v;
        if (s != NULL && parse(s, &v) == 0 && v >= o->min && v <= o->max)
            *o->value = v;
    }
}

int gm_option_set(const char *name, long long value) {
    gm_ensure_init();
    const struct option_def *o = name ? find(name) : NULL;
    if (o == NULL || value < o->min || value > o->max)
        return EINVAL;
    STORE_RELAXED(o->value, value); /* read by the scavenger thread */
    if (o->changed != NULL)
        o->changed(value);
    return 0;
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
