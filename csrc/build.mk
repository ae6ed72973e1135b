# build.mk: how pygomalloc's C code is built, in one place.
#
# csrc/Makefile includes this file (the libraries in csrc/build/, the C test
# programs); build_ext.py reads it for `pip install` (libgomalloc.so and the
# preload shim in the package, and the cffi module).  Keep to lines of the
# form `NAME := value`, comments, and $(NAME) references to names defined
# above: build_ext.py parses exactly that.

# The allocator core: the one shared library libgomalloc.so, and the C tests,
# which compile these files directly (static, also with the sanitizers).
# tests/test_packaging.py fails when a csrc/*.c file is missing here.
CORE_SOURCES := arena.c fixalloc.c heap.c malloc.c mcache.c mcentral.c mem_linux.c mprof.c mspan.c mstats.c options.c pagealloc.c pagemap.c pressure.c pymem.c scavenger.c tiny.c
# The LD_PRELOAD shim libgomalloc_preload.so: the malloc family, forwarding
# to libgomalloc.so (its DT_NEEDED).
PRELOAD_SOURCES := preload.c

# Every compilation.
COMMON_CFLAGS := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -pthread -fPIC -fvisibility=hidden -fno-semantic-interposition

# The C test variants (csrc/Makefile: make test, make sanitize).
RELEASE_CFLAGS := $(COMMON_CFLAGS) -O2 -g
DEBUG_CFLAGS := $(COMMON_CFLAGS) -O0 -g -DGM_DEBUG
ASAN_CFLAGS := $(COMMON_CFLAGS) -O1 -g -DGM_DEBUG -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
TSAN_CFLAGS := $(COMMON_CFLAGS) -O1 -g -DGM_DEBUG -fsanitize=thread

# The shared objects: libgomalloc.so, the preload shim and the cffi module.
# They may be dlopen()ed, so thread-local variables use TLS descriptors
# (-mtls-dialect=gnu2), never initial-exec TLS ("cannot allocate memory in
# static TLS block").  -fno-plt: calls into libgomalloc.so go through the GOT
# directly (the shim's malloc is one indirect jump).  GM_SHARED: the core is
# a shared library, whose fast paths are IFUNCs that read the mcache pointer
# at a fixed offset from the thread pointer when its TLS block is static
# (malloc.c, "the calling thread's mcache").
SHARED_CFLAGS := $(RELEASE_CFLAGS) -mtls-dialect=gnu2 -fno-plt -DGM_SHARED

# Linking libgomalloc.so and the shim: no undefined symbols, and never
# unloaded (-z nodelete): dlclose() must not unmap code that a thread, the
# scavenger, may be running.  Besides these, libgomalloc.so gets its soname
# (SONAME) and a version script (libgomalloc.map: exports gm_* only, with the
# symbol version below), and the shim -lgomalloc with an $ORIGIN rpath.
#
# The version check: every gm_ symbol of libgomalloc.so has the version
# GOMALLOC_<the first 12 hex digits of the SHA-256 of gomalloc.h>, the public
# header that defines the API's functions and types.  Whatever links to the
# library (the shim, the cffi module, C programs) records that version, and
# the dynamic linker refuses to run it with a libgomalloc.so built from
# another header ("version `GOMALLOC_...' not found"): a mismatched core is
# never used, even when an already loaded one is found by its soname.
LIBRARY_LDFLAGS := -shared -pthread -Wl,-z,defs -Wl,-z,nodelete -Wl,-z,now
SONAME := libgomalloc.so
