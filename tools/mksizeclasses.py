#!/usr/bin/env python3
"""Generate csrc/sizeclasses.h, the size-class table of pygomalloc.

This is a port of the algorithm of the Go runtime's mksizeclasses.go (the
variant with a 32-bit divMul, Go 1.17 and later), with one deliberate
difference, described below.

Size classes are chosen so that rounding an allocation request up to the
next size class wastes at most 12.5% (assuming the request is distributed
uniformly), and so that the leftover at the end of a span ("tail waste") is
at most 1/8 of the span.

Alignment.  Go 1.16+ bumps the alignment to 16 bytes only at size 32, which
yields a 24-byte class.  A C allocator must return memory aligned for any
object that fits in the request (max_align_t, 16 bytes on x86-64 and
aarch64), and objects of a 24-byte class sit at offsets k*24 in the span, so
they would only be 8-byte aligned.  We therefore bump the alignment to 16 at
size 16 (as Go did up to 1.15), which gives no 24-byte class and a table of
67 classes, class 0 included.

Smallest allocation.  A freed object holds two words while it waits on a
per-thread free list (the link and the address of its state byte; see
csrc/malloc.c), so malloc never uses the 8-byte class: the lookup table
sends sizes 0..16 to the 16-byte class.  The 8-byte class stays in the table
so that the table remains Go's.

Usage:
    python tools/mksizeclasses.py              # write the header to stdout
    python tools/mksizeclasses.py -o csrc/sizeclasses.h
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass

PAGE_SHIFT = 13
PAGE_SIZE = 1 << PAGE_SHIFT  # 8192
MAX_SMALL_SIZE = 32768
SMALL_SIZE_DIV = 8
SMALL_SIZE_MAX = 1024
LARGE_SIZE_DIV = 128
MIN_ALLOC_SIZE = 16  # see "Smallest allocation" above

# The table the algorithm must produce (class 0 is the dummy class used for
# large objects).  Checked below so that a change to the algorithm cannot
# silently change the allocator.
EXPECTED_SIZES = (
    0, 8, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224,
    240, 256, 288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768,
    896, 1024, 1152, 1280, 1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200,
    3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240,
    10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576,
    27264, 28672, 32768,
)
NUM_CLASSES = len(EXPECTED_SIZES)  # 67


class GenerationError(Exception):
    """The generated table is not what it must be."""


@dataclass
class SizeClass:
    size: int  # bytes per object
    npages: int  # pages per span
    div_mul: int = 0  # (2**32 - 1) // size + 1, so n // size == (n * div_mul) >> 32

    @property
    def span_bytes(self) -> int:
        return self.npages * PAGE_SIZE

    @property
    def objects(self) -> int:
        return self.span_bytes // self.size if self.size else 0

    @property
    def tail_waste(self) -> int:
        return self.span_bytes % self.size if self.size else 0


def is_power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def make_classes() -> list[SizeClass]:
    classes = [SizeClass(size=0, npages=0)]  # class 0: large objects

    align = 8
    size = align
    while size <= MAX_SMALL_SIZE:
        if is_power_of_two(size):  # bump the alignment once in a while
            if size >= 2048:
                align = 256
            elif size >= 128:
                align = size // 8
            elif size >= 16:
                # 16, not Go 1.16+'s 32: C callers need max_align_t alignment.
                align = 16

        if align & (align - 1):
            raise GenerationError(f"incorrect alignment {align}")

        # Make the span big enough that the leftover is at most 1/8 of it,
        # so the tail waste is at most 12.5%.
        allocsize = PAGE_SIZE
        while allocsize % size > allocsize // 8:
            allocsize += PAGE_SIZE
        npages = allocsize // PAGE_SIZE

        # If the previous class uses the same span size and fits the same
        # number of objects in it, use just this (larger) size instead of
        # having two classes.
        prev = classes[-1]
        if (len(classes) > 1 and npages == prev.npages
                and allocsize // size == allocsize // prev.size):
            prev.size = size
        else:
            classes.append(SizeClass(size=size, npages=npages))

        size += align

    # Increase object sizes when the same number of larger objects still
    # fits in the same span: this reduces tail waste at no cost.
    for c in classes[1:]:
        psize = c.span_bytes
        new_size = (psize // (psize // c.size)) & ~(LARGE_SIZE_DIV - 1)
        if new_size > c.size:
            c.size = new_size

    if len(classes) != NUM_CLASSES:
        raise GenerationError(
            f"generated {len(classes)} size classes, want {NUM_CLASSES}")
    sizes = tuple(c.size for c in classes)
    if sizes != EXPECTED_SIZES:
        raise GenerationError(f"generated size classes {sizes}, want {EXPECTED_SIZES}")
    for i in range(1, len(classes)):
        if classes[i].size <= classes[i - 1].size:
            raise GenerationError(f"size classes not increasing at class {i}")
        if classes[i].tail_waste * 8 > classes[i].span_bytes:
            raise GenerationError(f"class {i} wastes more than 1/8 of its span")
    if classes[-1].size != MAX_SMALL_SIZE:
        raise GenerationError("the largest class must be MAX_SMALL_SIZE")
    return classes


def compute_div_magic(classes: list[SizeClass]) -> None:
    """Set div_mul and check it by brute force, as Go does."""
    for i, c in enumerate(classes):
        if c.size == 0:
            c.div_mul = 0
            continue
        c.div_mul = (2**32 - 1) // c.size + 1
        if c.div_mul >= 2**32:
            raise GenerationError(f"class {i}: divMul {c.div_mul} does not fit in 32 bits")
        m, size = c.div_mul, c.size
        for n in range(c.span_bytes + 1):
            if (n * m) >> 32 != n // size:
                raise GenerationError(
                    f"bad divMul for class {i} (size {size}): "
                    f"({n} * {m}) >> 32 = {(n * m) >> 32}, want {n // size}")
            # free() tests "n is a multiple of size" as (n*m mod 2**32) < m.
            if (((n * m) & 0xFFFFFFFF) < m) != (n % size == 0):
                raise GenerationError(
                    f"class {i} (size {size}): the multiple-of-size test is wrong at offset {n}")


def make_lookup(classes: list[SizeClass], base: int, step: int, count: int) -> list[int]:
    """For i in range(count), the smallest class whose size >= base + i*step
    and >= MIN_ALLOC_SIZE."""
    table = []
    ci = 0
    for i in range(count):
        want = max(base + i * step, MIN_ALLOC_SIZE)
        while classes[ci].size < want:
            ci += 1
        table.append(ci)
    return table


def size_to_class8(classes: list[SizeClass]) -> list[int]:
    return make_lookup(classes, 0, SMALL_SIZE_DIV, SMALL_SIZE_MAX // SMALL_SIZE_DIV + 1)


def size_to_class128(classes: list[SizeClass]) -> list[int]:
    return make_lookup(classes, SMALL_SIZE_MAX, LARGE_SIZE_DIV,
                       (MAX_SMALL_SIZE - SMALL_SIZE_MAX) // LARGE_SIZE_DIV + 1)


def format_array(w: io.StringIO, ctype: str, name: str, dim: str,
                 values: list[int], per_line: int) -> None:
    width = max(len(str(v)) for v in values)
    w.write(f"static const {ctype} {name}[{dim}] = {{\n")
    for start in range(0, len(values), per_line):
        chunk = values[start:start + per_line]
        w.write("    " + " ".join(f"{v:>{width}}," for v in chunk) + "\n")
    w.write("};\n")


def generate() -> str:
    classes = make_classes()
    compute_div_magic(classes)
    c8 = size_to_class8(classes)
    c128 = size_to_class128(classes)

    max_npages = max(c.npages for c in classes)
    # Only the classes malloc uses size the spans' bitmaps: the 8-byte
    # class's 1024 objects would double every span struct's allocBits.
    max_objects = max(c.objects for c in classes if c.size >= MIN_ALLOC_SIZE)
    for name, ctype_max, values in (
        ("class_to_size", 0xFFFF, [c.size for c in classes]),
        ("class_to_allocnpages", 0xFF, [c.npages for c in classes]),
        ("class_to_nelems", 0xFFFF, [c.objects for c in classes]),
        ("size_to_class8", 0xFF, c8),
        ("size_to_class128", 0xFF, c128),
    ):
        if max(values) > ctype_max:
            raise GenerationError(f"{name} does not fit its C type")

    w = io.StringIO()
    w.write("// Code generated by tools/mksizeclasses.py; DO NOT EDIT.\n")
    w.write("// Regenerate with: python tools/mksizeclasses.py -o csrc/sizeclasses.h\n")
    w.write("//\n")
    w.write("// class  bytes/obj  bytes/span  objects  tail waste  max waste\n")
    prev_size = 0
    for i, c in enumerate(classes):
        if i == 0:
            continue
        spanb = c.span_bytes
        objects = c.objects
        tail = c.tail_waste
        max_waste = ((c.size - prev_size - 1) * objects + tail) / spanb
        prev_size = c.size
        w.write("// %5d  %9d  %10d  %7d  %10d  %8.2f%%\n"
                % (i, c.size, spanb, objects, tail, 100 * max_waste))
    w.write("#ifndef GM_SIZECLASSES_H\n")
    w.write("#define GM_SIZECLASSES_H\n")
    w.write("#include <stdint.h>\n")
    w.write(f"#define GM_SC_NUM_CLASSES {len(classes)}\n")
    w.write(f"#define GM_SC_PAGE_SHIFT {PAGE_SHIFT}\n")
    w.write(f"#define GM_SC_PAGE_SIZE {PAGE_SIZE}\n")
    w.write(f"#define GM_SC_MAX_SMALL_SIZE {MAX_SMALL_SIZE}\n")
    w.write(f"#define GM_SC_SMALL_SIZE_DIV {SMALL_SIZE_DIV}\n")
    w.write(f"#define GM_SC_SMALL_SIZE_MAX {SMALL_SIZE_MAX}\n")
    w.write(f"#define GM_SC_LARGE_SIZE_DIV {LARGE_SIZE_DIV}\n")
    w.write(f"#define GM_SC_MIN_ALLOC_SIZE {MIN_ALLOC_SIZE}\n")
    w.write(f"#define GM_SC_MAX_NPAGES {max_npages}\n")
    w.write("// the most objects in a span of a class malloc uses (size >= GM_SC_MIN_ALLOC_SIZE)\n")
    w.write(f"#define GM_SC_MAX_OBJECTS {max_objects}\n")
    format_array(w, "uint16_t", "gm_class_to_size", "GM_SC_NUM_CLASSES",
                 [c.size for c in classes], 8)
    format_array(w, "uint8_t", "gm_class_to_allocnpages", "GM_SC_NUM_CLASSES",
                 [c.npages for c in classes], 16)
    w.write("/* objects per span, 0 for class 0 */\n")
    format_array(w, "uint16_t", "gm_class_to_nelems", "GM_SC_NUM_CLASSES",
                 [c.objects for c in classes], 8)
    w.write("/* n / gm_class_to_size[c] == (uint32_t)(((uint64_t)n * gm_class_to_divmagic[c]) >> 32),\n"
            "   and n % gm_class_to_size[c] == 0 iff (uint32_t)(n * gm_class_to_divmagic[c]) < gm_class_to_divmagic[c],\n"
            "   for every offset n in a span of class c, 0 <= n <= span bytes */\n")
    format_array(w, "uint32_t", "gm_class_to_divmagic", "GM_SC_NUM_CLASSES",
                 [c.div_mul for c in classes], 8)
    w.write("/* class of size s <= GM_SC_SMALL_SIZE_MAX - 8: "
            "gm_size_to_class8[(s + 7) >> 3] */\n")
    format_array(w, "uint8_t", "gm_size_to_class8",
                 "GM_SC_SMALL_SIZE_MAX / GM_SC_SMALL_SIZE_DIV + 1", c8, 16)
    w.write("/* class of larger small s: "
            "gm_size_to_class128[(s - GM_SC_SMALL_SIZE_MAX + 127) >> 7] */\n")
    format_array(w, "uint8_t", "gm_size_to_class128",
                 "(GM_SC_MAX_SMALL_SIZE - GM_SC_SMALL_SIZE_MAX) / GM_SC_LARGE_SIZE_DIV + 1",
                 c128, 16)
    w.write("#endif\n")
    return w.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", metavar="PATH", help="write the header to PATH instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = generate()
    except GenerationError as e:
        print(f"mksizeclasses: {e}", file=sys.stderr)
        return 1
    if args.o:
        with open(args.o, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
