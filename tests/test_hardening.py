"""The hardened core against hostile programs, under the LD_PRELOAD library.

C programs, compiled here with the system's cc and linked to the package's
libgomalloc.so (the preload shim's own core: one allocator, so the program
can read gm_read_stats), attack the heap through the plain malloc/free the
shim provides:

1. forged link: a use after free writes a chosen address into word 0 of a
   freed 48-byte object, then malloc(48) is called again and again;
2. chosen-address write: the address goes into word 1 (where the old design
   kept the pointer to the object's state byte, which free wrote through),
   or into words 0 and 1 (the old design's whole forgery);
3. overflow into a freed neighbour: 64 bytes copied into a 48-byte object
   overwrite the first 16 bytes of the freed object after it.

The chosen address ("target") is a page of a file mapped MAP_SHARED (what
the program writes there survives it, so that "never written" is checked
after the abort too), a global buffer, a stack buffer, or a live heap
object of the same size (the prize: two owners for one object).  Every
malloc result is printed as it is returned, with write(2): never the
target.  With abort_on_error = 1 (the default) the process must die of
SIGABRT with the heap corruption message naming the freed object, before
that object is handed out again; with GOMALLOC_ABORT_ON_ERROR=0 it must
survive, with bad_frees counting the detection.

Also: an object handed out again after a free holds nothing of the
allocator's (its first words are 0); heap addresses differ from run to run
(GOMALLOC_RANDOM_HEAP=0: Go's fixed hint, 0xc000000000); and dlclose() of
the preload library leaves a process that runs on (the scavenger works
after it) and exits 0.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import pygomalloc as gm
from pygomalloc import _paths

CC = os.environ.get("CC", "cc")
SIZE = 48                   # the attacked objects' size (a size class of its own)
TARGET_FILE_BYTES = 64 << 10
GO_HINT = 0xC000000000      # Go's first arena hint (option random_heap = 0)
ARENA_BYTES = 64 << 20      # arenas, and the random offset's unit

PROGRAM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <gomalloc.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE 48
#define NMALLOC 16          /* mallocs of SIZE after the attack */
#define GUARD 2048          /* bytes checked on each side of the target */

/* Output with write(2) from the stack: stdio would allocate, and what is
 * printed before an abort must be out already. */
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)!write(1, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 37 + 11); }

static unsigned char global_area[2 * GUARD] __attribute__((aligned(64)));

/* [lo, lo+len) holds the pattern, counted from lo. */
static int intact(const unsigned char *lo, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (lo[i] != pattern(i))
            return 0;
    return 1;
}

static void fill(unsigned char *lo, size_t len)
{
    for (size_t i = 0; i < len; i++)
        lo[i] = pattern(i);
}

static uint64_t bad_frees(void)
{
    struct gm_stats st;
    gm_read_stats(&st);
    return st.bad_frees;
}

/* A 48-byte object and the one right after it in memory. */
static void neighbours(unsigned char **a, unsigned char **b)
{
    for (int i = 0; i < 1000; i++) {
        *a = malloc(SIZE);
        *b = malloc(SIZE);
        if (*b == *a + SIZE)
            return;             /* the misses stay allocated */
    }
    say("no neighbours\n");
    exit(3);
}

static int attack(const char *what, const char *kind, const char *file)
{
    unsigned char stack_area[2 * GUARD] __attribute__((aligned(64)));
    unsigned char *area = NULL, *target;
    size_t area_len = 2 * GUARD;

    say("owns %d\n", gm_owns(malloc(16)));   /* the shim and -lgomalloc: one heap */
    if (strcmp(kind, "file") == 0) {
        int fd = open(file, O_RDWR);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0)
            return 2;
        area_len = (size_t)sb.st_size;
        area = mmap(NULL, area_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (area == MAP_FAILED)
            return 2;
        target = area + area_len / 2;      /* pytest filled the file with the pattern */
    } else if (strcmp(kind, "global") == 0) {
        area = global_area;
        fill(area, area_len);
        target = area + GUARD;
    } else if (strcmp(kind, "stack") == 0) {
        area = stack_area;
        fill(area, area_len);
        target = area + GUARD;
    } else if (strcmp(kind, "heap") == 0) {
        area = malloc(SIZE);                /* a live object: the target itself */
        area_len = SIZE;
        fill(area, area_len);
        target = area;
    } else {
        return 2;
    }
    say("target %p\n", (void *)target);
    uint64_t bad0 = bad_frees();

    uint64_t *freed;
    if (strcmp(what, "overflow") == 0) {
        unsigned char *a, *b;
        neighbours(&a, &b);
        free(b);
        freed = (uint64_t *)b;
        say("freed %p\n", (void *)freed);
        unsigned char src[SIZE + 16];
        memset(src, 'A', SIZE);
        uint64_t forged[2] = {(uint64_t)(uintptr_t)target, (uint64_t)(uintptr_t)target};
        memcpy(src + SIZE, forged, sizeof forged);
        volatile size_t len = sizeof src;   /* the overflow, past a's 48 bytes */
        memcpy(a, src, len);
    } else {
        freed = malloc(SIZE);
        free(freed);
        say("freed %p\n", (void *)freed);
        uint64_t forged = (uint64_t)(uintptr_t)target;
        if (strcmp(what, "link") == 0 || strcmp(what, "link_flushed") == 0) {
            freed[0] = forged;
        } else if (strcmp(what, "word1") == 0) {
            freed[1] = forged;
        } else if (strcmp(what, "both") == 0) {
            freed[0] = forged;
            freed[1] = forged;
        } else {
            return 2;
        }
        if (strcmp(what, "link_flushed") == 0)
            gm_thread_flush();              /* the freed object goes back to its span */
    }
    for (int i = 0; i < NMALLOC; i++) {
        void *q = malloc(SIZE);
        say("malloc %d %p\n", i, q);
    }
    /* Still alive (abort_on_error = 0): the target is untouched. */
    say("target_intact %d\n", intact(area, area_len));
    say("bad_frees %llu\n", (unsigned long long)(bad_frees() - bad0));
    say("done\n");
    return 0;
}

/* The first words of objects handed out again: after a free on the
 * thread's list, and after the objects went back to their spans. */
static int fresh(void)
{
    static const size_t sizes[] = {16, 48, 128, 1024, 4096, 32768, 65536};
    enum { N = 4096 };
    static uint64_t *objs[N];
    /* The lists first, all sizes: their objects come from pages nothing
     * used before.  Then the spans. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t size = sizes[k], words = (size < 64 ? size : 64) / 8;
            /* The list: fewer objects than it holds (tcache_bytes of
             * them).  The spans: many, more than the list holds, and then
             * the rest flushed. */
            int n = pass == 0 ? (size > 4096 ? 1 : 16) : size > 4096 ? 64 : N;
            /* Allocate, never write, free; then allocate again. */
            for (int i = 0; i < n; i++)
                objs[i] = malloc(size);
            for (int i = 0; i < n; i++)
                free(objs[i]);
            if (pass == 1)
                gm_thread_flush();
            unsigned nonzero = 0, owned = 0;
            uint64_t example = 0;
            for (int i = 0; i < n; i++) {
                objs[i] = malloc(size);
                for (size_t w = 0; w < words; w++) {
                    uint64_t v = objs[i][w];
                    if (v != 0) {
                        nonzero++;
                        owned += gm_owns((void *)(uintptr_t)v);
                        example = v;
                    }
                }
            }
            say("%s %zu nonzero %u owned %u example %#llx\n", pass == 0 ? "list" : "flushed", size, nonzero,
                owned, (unsigned long long)example);
            for (int i = 0; i < n; i++)
                free(objs[i]);
        }
    }
    return 0;
}

/* The first object's address, and the mappings over Go's first arena hint
 * (argv[2]) other than the one holding it. */
static int first(const char *hint)
{
    void *p = malloc(16);
    say("first %p\n", p);
    uintptr_t lo = (uintptr_t)strtoull(hint, NULL, 0), hi = lo + ((uintptr_t)64 << 20);
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        unsigned long long s, e;
        if (sscanf(line, "%llx-%llx", &s, &e) == 2 && s < hi && e > lo && !(s <= (uintptr_t)p && (uintptr_t)p < e))
            say("other %s", line);
    }
    if (f != NULL)
        fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "attack") == 0)
        return attack(argv[2], argv[3], argc > 4 ? argv[4] : "");
    if (argc >= 2 && strcmp(argv[1], "fresh") == 0)
        return fresh();
    if (argc >= 3 && strcmp(argv[1], "first") == 0)
        return first(argv[2]);
    return 2;
}
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GOMALLOC_") and k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    env.update(extra)
    return env


def compile_program(source: str, out: Path, name: str, *flags: str) -> Path:
    (out / f"{name}.c").write_text(source)
    exe = out / name
    # -fno-builtin: the compiler must neither drop nor reason about the
    # mallocs, frees and the deliberate overflow; no fortified memcpy.
    subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-fno-builtin", "-U_FORTIFY_SOURCE",
                    *_paths.cflags(), str(out / f"{name}.c"), "-o", str(exe), *flags], check=True)
    return exe


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_program(PROGRAM, tmp_path_factory.mktemp("hardening"), "attacks", *_paths.libs())


def pattern(n: int) -> bytes:
    """The program's pattern(i) = i*37 + 11, for i < n."""
    return bytes((i * 37 + 11) & 0xFF for i in range(n))


def run_program(program: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), *args], env=clean_env(LD_PRELOAD=gm.get_preload_library(), **env),
                          capture_output=True, text=True, timeout=60, check=False)


class Outcome:
    """One run of an attack: what the program printed before it ended, and
    what it left in the target file."""

    def __init__(self, proc: subprocess.CompletedProcess[str], file_intact: bool | None) -> None:
        self.returncode = proc.returncode
        self.stdout, self.stderr = proc.stdout, proc.stderr
        self.file_intact = file_intact
        values: dict[str, str] = {}
        self.mallocs: list[int] = []
        for line in proc.stdout.splitlines():
            fields = line.split()
            if fields[0] == "malloc":
                self.mallocs.append(int(fields[2], 16) if fields[2] != "(nil)" else 0)
            elif len(fields) == 2:
                values[fields[0]] = fields[1]
        self.values = values
        self.target = int(values["target"], 16) if "target" in values else None
        self.freed = int(values["freed"], 16) if "freed" in values else None
        self.survived = "done" in proc.stdout.splitlines()

    def describe(self) -> str:
        return f"status {self.returncode}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-2000:]}"


Attack = Callable[[str, str, bool], Outcome]


@pytest.fixture(scope="module")
def attack(program: Path, tmp_path_factory: pytest.TempPathFactory) -> Attack:
    """attack(what, kind, abort_on_error) -> Outcome, each combination run once."""
    workdir = tmp_path_factory.mktemp("targets")

    @functools.lru_cache(maxsize=None)
    def run(what: str, kind: str, abort_on_error: bool) -> Outcome:
        target_file = workdir / f"{what}-{kind}-{int(abort_on_error)}"
        target_file.write_bytes(pattern(TARGET_FILE_BYTES))
        env = {} if abort_on_error else {"GOMALLOC_ABORT_ON_ERROR": "0"}
        proc = run_program(program, "attack", what, kind, str(target_file), **env)
        intact = target_file.read_bytes() == pattern(TARGET_FILE_BYTES) if kind == "file" else None
        return Outcome(proc, intact)

    return run


ATTACKS = {
    "link": "attack 1: forged link in word 0 of a freed object",
    "word1": "attack 2: chosen address in word 1 of a freed object",
    "both": "attack 2: chosen address in words 0 and 1 of a freed object",
    "overflow": "attack 3: overflow into the freed neighbour's first 16 bytes",
    "link_flushed": "attack 1, then the freed object goes back to its span (gm_thread_flush)",
}
TARGETS = ["file", "global", "stack", "heap"]


@pytest.mark.parametrize("abort_on_error", [True, False], ids=["abort", "no_abort"])
@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("what", list(ATTACKS))
def test_attack_never_returns_nor_writes_the_chosen_address(attack: Attack, what: str, kind: str,
                                                           abort_on_error: bool) -> None:
    """Whatever the program wrote, no malloc returns the chosen address, and
    nothing is written there (checked in the file after the process ended,
    and by the program itself when it survives)."""
    o = attack(what, kind, abort_on_error)
    assert o.values.get("owns") == "1", o.describe()  # the program runs on pygomalloc
    assert o.target is not None and o.freed is not None, o.describe()
    assert o.target not in o.mallocs, f"{ATTACKS[what]}: malloc returned the chosen address\n{o.describe()}"
    assert 0 not in o.mallocs, o.describe()
    assert len(set(o.mallocs)) == len(o.mallocs), o.describe()  # all kept live: all distinct
    if kind == "file":
        assert o.file_intact, f"{ATTACKS[what]}: the allocator wrote into the target file\n{o.describe()}"
    if o.survived:
        assert o.values.get("target_intact") == "1", f"{ATTACKS[what]}: target written\n{o.describe()}"
    # Whatever ends the process is the allocator's own abort, not a crash.
    assert o.returncode in (0, -signal.SIGABRT), o.describe()
    if not abort_on_error:
        assert o.returncode == 0 and o.survived, o.describe()


def size_class_of(size: int) -> int:
    """The size class whose objects are `size` bytes."""
    return next(c.size_class for c in gm.stats().by_size if c.size == size)


@pytest.mark.parametrize("what", list(ATTACKS))
def test_attack_is_detected_and_aborts(attack: Attack, what: str) -> None:
    """abort_on_error = 1: SIGABRT with the heap corruption message naming
    the freed object, before that object is handed out again: whichever of
    its first words the program wrote, and whichever way the object comes
    back (from the thread's list, or from its span after a flush)."""
    o = attack(what, "file", True)
    expected = (f"pygomalloc: heap corruption: object of size class {size_class_of(SIZE)} ({SIZE} bytes) "
                f"at {o.freed:#x}: written after it was freed")
    assert o.returncode == -signal.SIGABRT, f"{ATTACKS[what]}: not detected\n{o.describe()}"
    assert expected in o.stderr, o.describe()
    assert o.freed not in o.mallocs, o.describe()


@pytest.mark.parametrize("what", list(ATTACKS))
def test_attack_is_counted_without_abort(attack: Attack, what: str) -> None:
    """GOMALLOC_ABORT_ON_ERROR=0: the process goes on, the freed object is
    handed out again (its first word cleared), and bad_frees counts the one
    corrupted object."""
    o = attack(what, "file", False)
    assert o.returncode == 0 and o.survived, o.describe()
    assert o.freed in o.mallocs, f"the freed object was not reused: nothing to detect\n{o.describe()}"
    assert o.values.get("bad_frees") == "1", f"{ATTACKS[what]}: bad_frees counted {o.values.get('bad_frees')}\n" \
                                             f"{o.describe()}"


@pytest.fixture(scope="module")
def fresh(program: Path) -> dict[tuple[str, int], tuple[int, int, int]]:
    proc = run_program(program, "fresh")
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    out = {}
    for line in proc.stdout.splitlines():
        path, size, _, nonzero, _, owned, _, example = line.split()
        out[(path, int(size))] = (int(nonzero), int(owned), int(example, 16))
    return out


@pytest.mark.parametrize("path", ["list", "flushed"])
def test_reused_objects_hold_nothing_of_the_allocators(fresh: dict[tuple[str, int], tuple[int, int, int]],
                                                       path: str) -> None:
    """After malloc, free (never written), malloc: the first words of every
    object are 0: no heap address, no metadata pointer, no secret.  "list":
    handed out again from the thread's list; "flushed": after the lists went
    back to the spans (gm_thread_flush)."""
    seen = {size: v for (p, size), v in fresh.items() if p == path}
    assert seen, fresh
    dirty = {size: f"{nonzero} nonzero words ({owned} heap addresses), e.g. {example:#x}"
             for size, (nonzero, owned, example) in seen.items() if nonzero}
    assert not dirty, dirty


# ---- random heap addresses ---------------------------------------------------

PYTHON_FIRST = "import pygomalloc; print(hex(pygomalloc.malloc(16)))"
# The same, then the mappings over Go's first arena other than the one
# holding the address (to tell a taken hint from a wrong one).
PYTHON_FIRST_AND_MAPS = PYTHON_FIRST + f"""
import pygomalloc
p = pygomalloc.malloc(16)
with open("/proc/self/maps") as f:
    for line in f:
        s, e = (int(x, 16) for x in line.split()[0].split("-"))
        if s < {GO_HINT + ARENA_BYTES} and e > {GO_HINT} and not s <= p < e:
            print("other", line, end="")
"""


def first_address(program: Path | None, **env: str) -> tuple[int, list[str]]:
    """The first object's address in a fresh process: the C program under
    LD_PRELOAD, or the one-liner in a fresh interpreter (program None).
    Also the mappings other than the heap's that cover Go's first arena."""
    if program is None:
        proc = subprocess.run([sys.executable, "-c", PYTHON_FIRST_AND_MAPS if env else PYTHON_FIRST],
                              env=clean_env(**env), capture_output=True, text=True, timeout=60, check=False)
    else:
        proc = run_program(program, "first", hex(GO_HINT), **env)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    return int(lines[0].split()[-1], 16), [ln for ln in lines if ln.startswith("other ")]


@pytest.mark.parametrize("where", ["C program", "python"])
def test_heap_addresses_differ_between_runs(program: Path, where: str) -> None:
    """Two runs of the same program put their first object at different
    addresses (random_heap: a random 64 MiB-aligned offset per process).
    Three runs: a repeat has a chance of one in 2^16 per pair, two repeats
    one in 2^32."""
    exe = program if where == "C program" else None
    addresses = [first_address(exe)[0] for _ in range(3)]
    assert len(set(addresses)) >= 2, [hex(a) for a in addresses]
    if exe is not None:
        fixed, _ = first_address(exe, GOMALLOC_RANDOM_HEAP="0")
        # The same allocations, shifted by whole arenas.
        assert all((a - fixed) % ARENA_BYTES == 0 for a in addresses), [hex(a) for a in addresses + [fixed]]


@pytest.mark.parametrize("where", ["C program", "python"])
def test_fixed_heap_addresses_without_random_heap(program: Path, where: str) -> None:
    """GOMALLOC_RANDOM_HEAP=0: Go's fixed hints, the same address in every
    run, in the arena at 0xc000000000."""
    exe = program if where == "C program" else None
    runs = [first_address(exe, GOMALLOC_RANDOM_HEAP="0") for _ in range(2)]
    (a, others), (b, _) = runs
    assert a == b, (hex(a), hex(b))
    if not GO_HINT <= a < GO_HINT + ARENA_BYTES and others:
        pytest.skip(f"the kernel gave Go's first arena to something else: {others}")
    assert GO_HINT <= a < GO_HINT + ARENA_BYTES, hex(a)


# ---- dlclose of the preload library ------------------------------------------

DLCLOSE_PROGRAM = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MIB (1 << 20)
#define KEEP 8       /* MiB kept live: free memory is kept up to retain_percent of it */
#define FREED 4      /* MiB freed: work for the scavenger when it decays */

static int threads(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

typedef struct mallinfo2 (*info_fn)(void);

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    void *(*alloc)(size_t) = (void *(*)(size_t))dlsym(h, "malloc");
    void (*release)(void *) = (void (*)(void *))dlsym(h, "free");
    info_fn info = (info_fn)dlsym(h, "mallinfo2");
    if (alloc == NULL || release == NULL || info == NULL)
        return 1;
    static void *kept[KEEP * 16], *freed[FREED * 16];
    for (int i = 0; i < KEEP * 16; i++)          /* 64 KiB blocks */
        if ((kept[i] = alloc(MIB / 16)) == NULL)
            return 1;
        else
            memset(kept[i], 1, MIB / 16);
    for (int i = 0; i < FREED * 16; i++)
        if ((freed[i] = alloc(MIB / 16)) == NULL)
            return 1;
        else
            memset(freed[i], 2, MIB / 16);
    for (int i = 0; i < FREED * 16; i++)
        release(freed[i]);
    for (int i = 0; i < 1000; i++)               /* many small calls too */
        release(alloc((size_t)i % 500 + 1));
    printf("freed %d\n", FREED * MIB);
    printf("unreleased_before %zu\n", info().keepcost);   /* free pages still resident */
    printf("threads_before %d\n", threads());
    if (dlclose(h) != 0)
        return 1;
    fflush(stdout);
    sleep(2);                                     /* the scavenger's decay passes meanwhile */
    void *again = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
    printf("still_loaded %d\n", again != NULL);
    if (again != NULL) {
        info = (info_fn)dlsym(again, "mallinfo2");
        printf("unreleased_after %zu\n", info().keepcost);
        dlclose(again);
    }
    printf("threads_after %d\n", threads());
    printf("ok 1\n");
    return 0;
}
"""


def test_dlclose_of_the_preload_library_then_sleep_exits_0(tmp_path: Path) -> None:
    """dlopen the shim (RTLD_NOW | RTLD_LOCAL), malloc and free through
    dlsym until the scavenger has work, dlclose, sleep 2 s: the scavenger
    runs after the dlclose (it releases the freed pages when their decay
    passes, during the sleep: the library's code is still mapped), and the
    process exits 0.  (tests/test_one_instance.py checks that the library
    stays mapped and the process survives a sleep; this one that the
    scavenger works there.)"""
    exe = tmp_path / "dlclose"
    (tmp_path / "dlclose.c").write_text(DLCLOSE_PROGRAM)
    subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", str(tmp_path / "dlclose.c"),
                    "-o", str(exe), "-ldl"], check=True)
    # Free pages are kept until they decay (1 s), not released at once as
    # excess over the goal (retain_percent of the heap in use).
    env = clean_env(GOMALLOC_DECAY_MS="1000", GOMALLOC_RETAIN_PERCENT="10000")
    proc = subprocess.run([str(exe), gm.get_preload_library()], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    f = {k: int(v) for k, v in (line.split() for line in proc.stdout.splitlines())}
    assert f["ok"] == 1 and f["still_loaded"] == 1, f
    assert f["threads_before"] >= 2 and f["threads_after"] >= 2, f  # the scavenger thread runs
    assert f["unreleased_before"] >= f["freed"], f                   # nothing released before dlclose
    assert f["unreleased_after"] <= f["unreleased_before"] - f["freed"], f  # released after it
