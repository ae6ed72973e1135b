"""glibc's malloc extras in the preload shim: malloc_trim, mallinfo2,
mallinfo, malloc_stats, malloc_info, mallopt, and memalign's rounding.

One C program (compiled here with the system's cc) runs each case under
LD_PRELOAD and prints `name value` lines.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import pygomalloc as gm

PROGRAM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMALL 1000   /* objects of 100 bytes */
#define LARGE 10     /* objects of 1 MiB */

static void print_mallinfo2(const char *tag)
{
    struct mallinfo2 m = mallinfo2();
    printf("%s.arena %zu\n%s.ordblks %zu\n%s.smblks %zu\n%s.hblks %zu\n%s.hblkhd %zu\n"
           "%s.usmblks %zu\n%s.fsmblks %zu\n%s.uordblks %zu\n%s.fordblks %zu\n%s.keepcost %zu\n",
           tag, m.arena, tag, m.ordblks, tag, m.smblks, tag, m.hblks, tag, m.hblkhd,
           tag, m.usmblks, tag, m.fsmblks, tag, m.uordblks, tag, m.fordblks, tag, m.keepcost);
}

static void print_mallinfo(const char *tag)
{
    struct mallinfo m = mallinfo();
    printf("%s.arena %d\n%s.hblks %d\n%s.hblkhd %d\n%s.uordblks %d\n%s.fordblks %d\n",
           tag, m.arena, tag, m.hblks, tag, m.hblkhd, tag, m.uordblks, tag, m.fordblks);
}

static void *churn(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20000; i++)
        free(malloc((size_t)(i % 5000) + 1));
    return NULL;
}

int main(int argc, char **argv)
{
    static void *small[SMALL], *large[LARGE];
    const char *what = argc > 1 ? argv[1] : "";

    if (strcmp(what, "interposed") == 0) {
        void *fns[] = {(void *)malloc_trim, (void *)mallinfo2, (void *)mallinfo,
                       (void *)malloc_stats, (void *)malloc_info, (void *)mallopt, (void *)memalign};
        for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
            Dl_info info;
            printf("from %s\n", dladdr(fns[i], &info) ? info.dli_fname : "?");
        }
    } else if (strcmp(what, "mallinfo") == 0) {
        print_mallinfo2("before");
        for (int i = 0; i < SMALL; i++)
            small[i] = malloc(100);
        for (int i = 0; i < LARGE; i++)
            large[i] = malloc(1 << 20);
        print_mallinfo2("after");
        print_mallinfo("int");
        for (int i = 0; i < SMALL; i++)
            free(small[i]);
        for (int i = 0; i < LARGE; i++)
            free(large[i]);
    } else if (strcmp(what, "saturate") == 0) {
        void *huge = malloc((size_t)3 << 30);   /* never touched */
        if (huge == NULL)
            return 1;
        print_mallinfo2("wide");
        print_mallinfo("int");
        free(huge);
    } else if (strcmp(what, "trim") == 0) {
        for (int i = 0; i < LARGE; i++) {
            large[i] = malloc(4 << 20);
            memset(large[i], 1, 4 << 20);
        }
        for (int i = 0; i < LARGE; i++)
            free(large[i]);
        print_mallinfo2("freed");
        printf("trim1 %d\n", malloc_trim(0));
        print_mallinfo2("trimmed");
        printf("trim2 %d\n", malloc_trim(0));
    } else if (strcmp(what, "stats") == 0) {
        pthread_t t[3];
        for (int i = 0; i < SMALL; i++)
            small[i] = malloc(100);
        for (int i = 0; i < 3; i++)
            pthread_create(&t[i], NULL, churn, NULL);
        for (int i = 0; i < 50; i++)
            malloc_stats();                      /* while the threads allocate */
        for (int i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
        flockfile(stderr);                       /* even with stderr's lock held */
        malloc_stats();
        funlockfile(stderr);
        printf("done 1\n");
    } else if (strcmp(what, "info") == 0) {
        char *buf = NULL;
        size_t len = 0;
        FILE *fp = open_memstream(&buf, &len);   /* itself allocates (ours) */
        for (int i = 0; i < SMALL; i++)
            small[i] = malloc(100);
        errno = 0;
        int bad = malloc_info(1, fp);
        printf("bad %d\nbad_errno %d\nEINVAL %d\n", bad, errno, EINVAL);
        fflush(fp);
        printf("written_after_bad %zu\n", len);
        printf("good %d\n", malloc_info(0, fp));
        fclose(fp);
        fputs(buf, stdout);
        free(buf);
    } else if (strcmp(what, "mallopt") == 0) {
        printf("M_ARENA_MAX %d\n", mallopt(M_ARENA_MAX, 1));
        printf("M_TRIM_THRESHOLD %d\n", mallopt(M_TRIM_THRESHOLD, 128 * 1024));
        printf("M_MMAP_THRESHOLD %d\n", mallopt(M_MMAP_THRESHOLD, 64 * 1024));
        printf("M_MXFAST %d\n", mallopt(M_MXFAST, 0));
        printf("M_CHECK_ACTION %d\n", mallopt(M_CHECK_ACTION, 3));
        printf("unknown %d\n", mallopt(12345, 1));
        void *p = malloc(10);
        printf("still_works %d\n", p != NULL);
        free(p);
    } else if (strcmp(what, "memalign") == 0) {
        size_t aligns[] = {24, 100, 4097, 48 * 1024};
        for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
            char *p = memalign(aligns[i], 100);
            size_t a = 1;
            while (a < aligns[i])
                a <<= 1;
            printf("align%zu %d\n", aligns[i], p != NULL && (uintptr_t)p % a == 0);
            memset(p, 0, 100);
            free(p);
        }
        errno = 0;
        void *p = memalign(SIZE_MAX / 2 + 2, 1);
        printf("too_large %d\ntoo_large_errno %d\nEINVAL %d\n", p == NULL, errno, EINVAL);
        p = memalign(0, 10);
        printf("zero %d\n", p != NULL);
        free(p);
    } else {
        return 2;
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extras")
    (out / "extras.c").write_text(PROGRAM)
    # -fno-builtin: the compiler must not fold or drop the malloc calls.
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O1", "-Wall", "-Werror", "-Wno-deprecated-declarations", "-fno-builtin",
                    str(out / "extras.c"), "-o", str(out / "extras"), "-pthread", "-ldl"], check=True)
    return out / "extras"


def run(program: Path, what: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("GOMALLOC_")}
    child_env.update(env, LD_PRELOAD=gm.get_preload_library())
    proc = subprocess.run([str(program), what], env=child_env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def figures(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def test_the_extras_are_the_shims(program: Path) -> None:
    lines = run(program, "interposed").stdout.splitlines()
    assert len(lines) == 7 and all(line.endswith("/libgomalloc_preload.so") for line in lines), lines


def test_mallinfo2_and_mallinfo_describe_the_heap(program: Path) -> None:
    f = figures(run(program, "mallinfo").stdout)
    small, large, mib = 1000, 10, 1 << 20
    for tag in ("before", "after"):
        assert f[f"{tag}.arena"] == f[f"{tag}.uordblks"] + f[f"{tag}.fordblks"], f
        assert f[f"{tag}.usmblks"] == 0 and f[f"{tag}.smblks"] == 0, f
        assert f[f"{tag}.hblkhd"] <= f[f"{tag}.uordblks"], f
    assert f["after.uordblks"] - f["before.uordblks"] >= small * 100 + large * mib, f
    assert f["after.hblks"] - f["before.hblks"] == large, f
    assert f["after.hblkhd"] - f["before.hblkhd"] >= large * mib, f
    assert f["after.arena"] >= f["after.uordblks"] >= large * mib, f
    # mallinfo() is read after mallinfo2(): the same figures (printf of the
    # first allocates nothing of that size).
    assert f["int.hblks"] == f["after.hblks"] and f["int.hblkhd"] == f["after.hblkhd"], f
    assert abs(f["int.uordblks"] - f["after.uordblks"]) < mib, f


def test_mallinfo_saturates_its_int_fields(program: Path) -> None:
    f = figures(run(program, "saturate").stdout)
    int_max = 2**31 - 1
    assert f["wide.uordblks"] > int_max and f["wide.hblkhd"] > int_max, f
    assert f["int.uordblks"] == int_max and f["int.hblkhd"] == int_max and f["int.arena"] == int_max, f
    assert f["int.hblks"] == f["wide.hblks"] >= 1, f


def test_malloc_trim_returns_free_memory(program: Path) -> None:
    f = figures(run(program, "trim", GOMALLOC_SCAVENGER="0").stdout)
    assert f["freed.keepcost"] >= 10 * (4 << 20), f  # the freed pages, still resident
    assert f["trim1"] == 1, f
    assert f["trimmed.keepcost"] < f["freed.keepcost"] - 10 * (4 << 20) + (1 << 20), f
    assert f["trim2"] == 0, f  # nothing left to release


def test_malloc_stats_prints_to_stderr_without_deadlock(program: Path) -> None:
    proc = run(program, "stats")
    assert proc.stdout == "done 1\n"
    reports = proc.stderr.split("pygomalloc:\n")[1:]
    assert len(reports) == 51, proc.stderr[-2000:]
    last = {name.strip().replace(" ", "_"): int(value.split()[0])
            for name, _, value in (line.partition("=") for line in reports[-1].splitlines())}
    assert last["in_use_bytes"] >= 1000 * 100 and last["live_objects"] >= 1000, reports[-1]
    assert last["system_bytes"] >= last["heap_bytes"] >= last["in_use_bytes"], reports[-1]


def test_malloc_info_writes_xml(program: Path) -> None:
    out = run(program, "info").stdout
    f = figures(out)
    assert f["bad"] == f["EINVAL"] and f["bad_errno"] == f["EINVAL"], f
    assert f["written_after_bad"] == 0 and f["good"] == 0, f
    root = ET.fromstring(out[out.index("<malloc"):])
    assert root.tag == "malloc" and root.get("version") == "1"
    stats = {s.get("name"): int(s.get("value", "-1")) for s in root.iter("stat")}
    assert stats["heap_objects"] >= 1000 and stats["heap_alloc"] >= 1000 * 100, stats
    assert stats["heap_sys"] == stats["heap_idle"] + stats["heap_inuse"], stats
    heap = root.find("heap")
    assert heap is not None and heap.find("sizes") is not None
    current = root.find("system[@type='current']")
    assert current is not None and int(current.get("size", "0")) == stats["sys"]


def test_mallopt_accepts_and_ignores(program: Path) -> None:
    f = figures(run(program, "mallopt").stdout)
    assert f == {"M_ARENA_MAX": 1, "M_TRIM_THRESHOLD": 1, "M_MMAP_THRESHOLD": 1, "M_MXFAST": 1,
                 "M_CHECK_ACTION": 1, "unknown": 1, "still_works": 1}


def test_memalign_rounds_the_alignment_up_as_glibc(program: Path) -> None:
    f = figures(run(program, "memalign").stdout)
    assert f["align24"] == f["align100"] == f["align4097"] == f["align49152"] == 1, f
    assert f["too_large"] == 1 and f["too_large_errno"] == f["EINVAL"], f
    assert f["zero"] == 1, f
