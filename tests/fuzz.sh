#!/usr/bin/env bash
# Build the libFuzzer target csrc/fuzz/fuzz_ops.c and run it for a bounded
# time from the checked-in corpus; fail if the fuzzer finds a crash, a leak,
# a sanitizer report or a broken invariant.
#
#   bash tests/fuzz.sh            # 60 seconds
#   bash tests/fuzz.sh 600        # 10 minutes (or FUZZ_SECONDS=600)
#   FUZZ_JOBS=2 bash tests/fuzz.sh   # parallel workers (default 1)
#
# Needs Debian's clang 14 with its compiler-rt runtimes (libFuzzer, ASan,
# UBSan): installed here when missing (as root, from Debian's archive).
# Inputs that crash are written to csrc/fuzz/crashes/ (crash-*, leak-*,
# timeout-*); run the target on one to reproduce it:
#   csrc/build/fuzz/fuzz_ops csrc/fuzz/crashes/crash-...
# New inputs found are kept in csrc/build/fuzz/corpus/ (not checked in).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_SECONDS:-60}}"
jobs="${FUZZ_JOBS:-1}"

CLANG=""
for c in clang-14 clang; do
    if command -v "$c" >/dev/null 2>&1; then CLANG="$c"; break; fi
done
fuzzer_rt() { # is libFuzzer's runtime there for this clang?
    [ -n "$CLANG" ] && [ -f "$("$CLANG" -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]
}
if [ -z "$CLANG" ] || ! fuzzer_rt; then
    bash tools/debian_packages.sh clang-14 libclang-rt-14-dev
    CLANG=clang-14
fi

out=csrc/build/fuzz
mkdir -p "$out/corpus" csrc/fuzz/crashes
# The core's sources (not preload.c), with assertions and the heap checker's
# extra checks (GM_DEBUG), under ASan+UBSan, with libFuzzer's coverage.
# The core's source list is csrc/build.mk's CORE_SOURCES.
srcs=$(sed -n 's/^CORE_SOURCES := //p' csrc/build.mk | tr ' ' '\n' | sed 's|^|csrc/|')
"$CLANG" -std=c11 -O1 -g -DGM_DEBUG -pthread -fno-omit-frame-pointer \
    -Wall -Wextra -Wno-unknown-pragmas \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Icsrc -o "$out/fuzz_ops" csrc/fuzz/fuzz_ops.c $srcs

# One process runs every input in turn: the target frees everything and
# checks the heap and the figures at the end of each, so inputs are
# independent.  -rss_limit_mb allows for the memory the allocator keeps
# mapped (released, so not resident) and ASan's shadow.
root=$PWD
parallel=()
if [ "$jobs" -gt 1 ]; then # each job then logs to csrc/build/fuzz/fuzz-N.log
    parallel=(-jobs="$jobs" -workers="$jobs")
fi
status=0
(
    cd "$out"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        ./fuzz_ops -max_total_time="$seconds" -max_len=4096 -timeout=30 -rss_limit_mb=4096 \
        "${parallel[@]}" -print_final_stats=1 \
        -artifact_prefix="$root/csrc/fuzz/crashes/" corpus "$root/csrc/fuzz/corpus"
) || status=$?
if [ "$status" -ne 0 ]; then
    echo "fuzz.sh: the fuzzer found a failure (status $status); reproducer in csrc/fuzz/crashes/" >&2
    exit 1
fi
echo "fuzz.sh: no failure in ${seconds}s"
