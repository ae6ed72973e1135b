/*
 * graphs.c: short-lived object graphs, built and dropped whole (a request
 * or a document each), freed object by object or by destroying the heap
 * they were built in.
 *
 * Each thread builds --docs documents, one after the other.  A document is
 * a tree of --nodes nodes: each node (48 bytes of links and fields plus a
 * payload of 0-80 bytes, mostly small) is attached under one of the last 64
 * nodes made, 40% of the nodes own a string (4-100 bytes, mostly short) and
 * 15% an array of 2-32 64-bit attributes.  Every block carries a cookie.
 * The document is then walked once (every cookie read back: the checksum)
 * and dropped:
 *
 *   --mode free     every string, array and node freed with free() (any
 *                   allocator: glibc, jemalloc, ..., pygomalloc);
 *   --mode destroy  the document was built in a heap of its own
 *                   (gm_heap_new, gm_heap_malloc) and is dropped with
 *                   gm_heap_destroy, in time proportional to the heap's
 *                   spans: pygomalloc only (its preload library), found with
 *                   dlsym, so that this file needs no pygomalloc header.
 *
 * ops = blocks allocated (each one dropped).  The RESULT line also gives
 * build_seconds and drop_seconds, the threads' time spent building and
 * dropping documents (summed over threads).
 *
 * --million N instead times the drop of N small objects (16-256 bytes) made
 * by one thread, three ways, --rounds times alternating: malloc'ed and
 * free()d one by one (default heap), gm_heap_malloc'ed and gm_free()d one
 * by one, gm_heap_malloc'ed and gm_heap_destroy'ed.  It reports the
 * medians: free_seconds, heap_free_seconds, destroy_seconds (pygomalloc
 * only; seconds = destroy_seconds).
 */
#define _GNU_SOURCE
#include "bench_common.h"

#include <dlfcn.h>

/* pygomalloc's heap calls (gomalloc.h), looked up at run time. */
typedef struct gm_heap_handle gm_heap_t;
static gm_heap_t *(*heap_new)(const void *opts);
static void *(*heap_malloc)(gm_heap_t *h, size_t size);
static int (*heap_destroy)(gm_heap_t *h);

static void find_heap_calls(void)
{
    *(void **)&heap_new = dlsym(RTLD_DEFAULT, "gm_heap_new");
    *(void **)&heap_malloc = dlsym(RTLD_DEFAULT, "gm_heap_malloc");
    *(void **)&heap_destroy = dlsym(RTLD_DEFAULT, "gm_heap_destroy");
    if (heap_new == NULL || heap_malloc == NULL || heap_destroy == NULL) {
        fprintf(stderr, "graphs: this mode needs pygomalloc's heaps (gm_heap_new not found): "
                        "run it with pygomalloc's preload library\n");
        exit(2);
    }
}

static gm_heap_t *xheap_new(void)
{
    gm_heap_t *h = heap_new(NULL);
    if (h == NULL)
        bench_die("gm_heap_new failed: %s", strerror(errno));
    return h;
}

struct node {
    struct node *child, *sibling;
    char *text;         /* a string of ntext bytes, or NULL */
    uint64_t *attrs;    /* nattrs attributes, or NULL */
    uint32_t nattrs, ntext;
    uint32_t extra, pad; /* payload bytes after the struct */
    uint64_t tag;
    unsigned char payload[];
};

struct worker {
    long id, docs, nodes, destroy;
    uint64_t seed, ops, checksum;
    double build_seconds, drop_seconds;
    char pad[BENCH_PAD];
};

/* A skewed size in [lo, hi]: small sizes much more likely. */
static size_t skewed(bench_rng *r, size_t lo, size_t hi)
{
    double u = bench_unit(r);
    return lo + (size_t)((double)(hi - lo + 1) * u * u * u);
}

static void *alloc(gm_heap_t *h, size_t size)
{
    void *p = h != NULL ? heap_malloc(h, size) : malloc(size);
    if (p == NULL)
        bench_die("allocation of %zu bytes failed", size);
    return p;
}

/* Build one document of n nodes (in heap h, or with malloc when h is NULL);
 * recent is scratch space for 64 pointers.  Adds the blocks made to *ops. */
static struct node *build(bench_rng *r, long n, gm_heap_t *h, struct node **recent, uint64_t *ops)
{
    struct node *root = NULL;
    for (long i = 0; i < n; i++) {
        uint32_t extra = (uint32_t)skewed(r, 0, 80);
        struct node *x = alloc(h, sizeof *x + extra);
        x->child = x->sibling = NULL;
        x->text = NULL;
        x->attrs = NULL;
        x->nattrs = x->ntext = 0;
        x->extra = extra;
        x->pad = 0;
        x->tag = bench_rand(r);
        bench_fill(x->payload, extra, x->tag);
        *ops += 1;
        uint32_t what = bench_below(r, 100);
        if (what < 40) {
            x->ntext = (uint32_t)skewed(r, 4, 100);
            x->text = alloc(h, x->ntext);
            bench_fill(x->text, x->ntext, x->tag ^ 0x7465787474657874ULL);
            *ops += 1;
        }
        if (what >= 85) {
            x->nattrs = (uint32_t)bench_range(r, 2, 32);
            x->attrs = alloc(h, x->nattrs * sizeof(uint64_t));
            for (uint32_t k = 0; k < x->nattrs; k++)
                x->attrs[k] = x->tag + k;
            *ops += 1;
        }
        if (root == NULL) {
            root = x;
        } else {
            struct node *parent = recent[bench_below(r, (uint32_t)(i < 64 ? i : 64))];
            x->sibling = parent->child;
            parent->child = x;
        }
        recent[i % 64] = x;
    }
    return root;
}

/* Depth-first over the tree with an explicit stack (of n entries at most);
 * every cookie read back.  With drop, each node's blocks are freed after
 * it is read. */
static uint64_t walk(struct node *root, struct node **stack, int drop)
{
    uint64_t sum = 0;
    long top = 0;
    stack[top++] = root;
    while (top > 0) {
        struct node *x = stack[--top];
        if (x->sibling != NULL)
            stack[top++] = x->sibling;
        if (x->child != NULL)
            stack[top++] = x->child;
        sum += bench_check(x->payload, x->extra, x->tag) + x->tag;
        if (x->text != NULL)
            sum += bench_check(x->text, x->ntext, x->tag ^ 0x7465787474657874ULL);
        for (uint32_t k = 0; k < x->nattrs; k++) {
            if (x->attrs[k] != x->tag + k)
                bench_die("corrupted attribute array %p", (void *)x->attrs);
            sum += x->attrs[k] * 3;
        }
        if (drop) {
            free(x->text);
            free(x->attrs);
            free(x);
        }
    }
    return sum;
}

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    bench_rng rng;
    bench_rng_seed(&rng, w->seed, (uint64_t)w->id);
    struct node **stack = bench_xmalloc(sizeof *stack * (size_t)(w->nodes + 1));
    struct node *recent[64];
    uint64_t ops = 0, sum = 0;
    double drop = 0, building = 0;
    for (long d = 0; d < w->docs; d++) {
        double tb = bench_now();
        gm_heap_t *h = w->destroy ? xheap_new() : NULL;
        struct node *root = build(&rng, w->nodes, h, recent, &ops);
        building += bench_now() - tb;
        sum += walk(root, stack, 0);
        double t0 = bench_now();
        if (h != NULL) {
            int rc = heap_destroy(h);
            if (rc != 0)
                bench_die("gm_heap_destroy: %s", strerror(rc));
        } else {
            walk(root, stack, 1);
        }
        drop += bench_now() - t0;
    }
    free(stack);
    w->ops = ops;
    w->checksum = sum;
    w->drop_seconds = drop;
    w->build_seconds = building;
    return NULL;
}

/* ---- --million ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Allocate n objects of 16-256 bytes (same sizes every time: the seed),
 * from heap h or with malloc, and read them back; returns the checksum. */
static uint64_t fill_million(void **p, long n, gm_heap_t *h, uint64_t seed)
{
    bench_rng r;
    bench_rng_seed(&r, seed, 0);
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) {
        size_t size = 16 + skewed(&r, 0, 240);
        p[i] = alloc(h, size);
        bench_fill(p[i], size, (uint64_t)i);
    }
    bench_rng_seed(&r, seed, 0);
    for (long i = 0; i < n; i++)
        sum += bench_check(p[i], 16 + skewed(&r, 0, 240), (uint64_t)i);
    return sum;
}

static void million(long n, long rounds, uint64_t seed)
{
    find_heap_calls();
    void **p = bench_xmalloc(sizeof *p * (size_t)n);
    double *tf = bench_xmalloc(sizeof(double) * (size_t)rounds);
    double *th = bench_xmalloc(sizeof(double) * (size_t)rounds);
    double *td = bench_xmalloc(sizeof(double) * (size_t)rounds);
    uint64_t sum = 0;
    for (long k = 0; k < rounds; k++) {
        sum += fill_million(p, n, NULL, seed);
        double t0 = bench_now();
        for (long i = 0; i < n; i++)
            free(p[i]);
        tf[k] = bench_now() - t0;

        gm_heap_t *h = xheap_new();
        sum += fill_million(p, n, h, seed);
        t0 = bench_now();
        for (long i = 0; i < n; i++)
            free(p[i]); /* gm_free: any heap's object */
        th[k] = bench_now() - t0;
        if (heap_destroy(h) != 0)
            bench_die("gm_heap_destroy of an emptied heap failed");

        h = xheap_new();
        sum += fill_million(p, n, h, seed);
        t0 = bench_now();
        if (heap_destroy(h) != 0)
            bench_die("gm_heap_destroy failed");
        td[k] = bench_now() - t0;
    }
    double f = median(tf, rounds), hf = median(th, rounds), d = median(td, rounds);
    char extra[200];
    snprintf(extra, sizeof extra, "free_seconds=%.6f heap_free_seconds=%.6f destroy_seconds=%.6f rounds=%ld",
             f, hf, d, rounds);
    bench_result_extra("graphs_million", 1, (uint64_t)n, d, sum, extra);
    free(p);
    free(tf);
    free(th);
    free(td);
}

int main(int argc, char **argv)
{
    long threads = 2, docs = 200, nodes = 3000, destroy = 0, mill = 0, rounds = 5, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"docs", &docs, 1, 1L << 30, "documents built and dropped per thread"},
        {"nodes", &nodes, 1, 1L << 24, "nodes per document"},
        {"destroy", &destroy, 0, 1, "1: each document in a heap of its own, dropped by gm_heap_destroy"},
        {"million", &mill, 0, 1L << 28, "N > 0: time dropping N small objects instead (pygomalloc)"},
        {"rounds", &rounds, 1, 1000, "rounds of --million (medians reported)"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "graphs", "Short-lived object graphs: build a document, read it, "
                "drop it (free each block, or destroy its heap).", opts, sizeof opts / sizeof opts[0]);
    if (mill > 0) {
        million(mill, rounds, (uint64_t)seed);
        return 0;
    }
    if (destroy)
        find_heap_calls();
    const struct worker proto = {
        .docs = docs,
        .nodes = nodes,
        .destroy = destroy,
        .seed = (uint64_t)seed,
    };
    struct worker *ws =
        (struct worker *)bench_workers(threads, sizeof proto, &proto, offsetof(struct worker, id));
    double t0 = bench_now();
    bench_run_threads(threads, run, ws, sizeof *ws);
    double t1 = bench_now();
    uint64_t ops = 0, sum = 0;
    double drop = 0, building = 0;
    for (long t = 0; t < threads; t++) {
        ops += ws[t].ops;
        sum += ws[t].checksum;
        drop += ws[t].drop_seconds;
        building += ws[t].build_seconds;
    }
    char extra[96];
    snprintf(extra, sizeof extra, "build_seconds=%.6f drop_seconds=%.6f", building, drop);
    bench_result_extra("graphs", threads, ops, t1 - t0, sum, extra);
    free(ws);
    return 0;
}
