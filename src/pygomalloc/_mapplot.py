"""The page map as text and as a picture (``python -m pygomalloc map``,
``stats --map``, ``pyrun --map``).

A map is a list of (arena base, page bytes) pairs: ``page_map()``'s views or
copies of them.  In both renderings each arena is a band of rows (its 8192
pages wrapped), cut after its last mapped row; pages are columns.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._gomalloc import lib
from ._observe import (ARENA_PAGES, PAGE_FAULTED, PAGE_FREE, PAGE_LARGE, PAGE_RELEASED, PAGE_RESERVED,
                       PAGE_SIZE, page_map_totals)

Snapshot = Sequence[tuple[int, bytes]]
#: Size classes, class 0 (large) included.
NUM_SIZE_CLASSES = int(lib.GM_NUM_SIZE_CLASSES)

#: Text: one character per cell, the state most of its pages are in.
TEXT_CHARS = {PAGE_RESERVED: " ", PAGE_RELEASED: "_", PAGE_FREE: ".", PAGE_FAULTED: "x", PAGE_LARGE: "L"}
SMALL_CHAR = "#"


def snapshot(maps: Sequence[object] | None = None) -> list[tuple[int, bytes]]:
    """A consistent copy of the page map (``page_map()`` when not given)."""
    from ._observe import page_map

    return [(a.base, bytes(a.pages)) for a in (page_map() if maps is None else maps)]  # type: ignore[attr-defined]


def _mib(pages: int) -> str:
    return f"{pages * PAGE_SIZE / (1 << 20):.1f} MiB"


def totals_line(snap: Snapshot) -> str:
    from ._observe import ArenaMap

    t = page_map_totals([ArenaMap(base, memoryview(data)) for base, data in snap])
    small = t["in_use"] - t["large"]
    return (f"{len(snap)} arena(s): small spans {_mib(small)}, large {_mib(t['large'])}, "
            f"free {_mib(t['free'])}, released {_mib(t['released'])}"
            + (f", faulted {_mib(t['faulted'])}" if t["faulted"] else "")
            + f", reserved {_mib(t['reserved'])}")


def _mapped_rows(data: bytes, cols: int) -> int:
    last = max((i for i, v in enumerate(data) if v != PAGE_RESERVED), default=-1)
    return (last // cols) + 1 if last >= 0 else 0


def render_text(snap: Snapshot, width: int = 128) -> str:
    """Each arena as rows of *width* characters, each character
    ARENA_PAGES / (width * rows) pages: ``#`` small spans, ``L`` large, ``.``
    free, ``_`` released, ``x`` faulted, blank reserved."""
    per = max(1, ARENA_PAGES // (width * 16))  # 16 rows per arena at most
    lines = [totals_line(snap),
             f"one character per {per} page(s) of 8 KiB: # small spans, L large, . free, "
             "_ released, x faulted, blank reserved"]
    for base, data in snap:
        cells = [data[i:i + per] for i in range(0, len(data), per)]
        chars = []
        for cell in cells:
            best = max(set(cell), key=cell.count)
            chars.append(TEXT_CHARS.get(best, SMALL_CHAR))
        rows = _mapped_rows(bytes(data), width * per)
        lines.append(f"arena {base:#x}:")
        for r in range(max(rows, 1)):
            lines.append("  |" + "".join(chars[r * width:(r + 1) * width]).ljust(width) + "|")
    return "\n".join(lines)


def plot(panels: Sequence[tuple[str, Snapshot]], path: str, cols: int = 256) -> None:
    """Draw each (title, snapshot) panel side by side into *path* (PNG).

    Raises ``ImportError`` with the install hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ImportError("drawing the page map needs matplotlib: pip install 'pygomalloc[plot]' "
                          "(or pip install matplotlib)") from e
    import numpy as np

    # Colour index per page value: 0 reserved, 1 released, 2 free, 3 faulted, 4 large, 5.. classes.
    lut = np.zeros(256, dtype=np.uint8)
    lut[PAGE_RELEASED], lut[PAGE_FREE], lut[PAGE_FAULTED], lut[PAGE_LARGE] = 1, 2, 3, 4
    nclasses = NUM_SIZE_CLASSES - 1
    lut[1:NUM_SIZE_CLASSES] = 5 + np.arange(nclasses) * 8 // max(nclasses, 1)
    greens = plt.get_cmap("Greens")(np.linspace(0.35, 0.95, 8))
    colours = ["#f2f2f2", "#9ecae1", "#ffb74d", "#e53935", "#6a1b9a", *greens]
    cmap = ListedColormap(colours)

    rows_per_arena = ARENA_PAGES // cols
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    height = 1
    images = []
    for _, snap in panels:
        bands = []
        for _, data in snap:
            arr = lut[np.frombuffer(bytes(data), dtype=np.uint8)].reshape(rows_per_arena, cols)
            rows = max(_mapped_rows(bytes(data), cols), 1)
            bands.append(arr[:rows])
            bands.append(np.zeros((1, cols), dtype=np.uint8))  # a gap between arenas
        img = np.concatenate(bands[:-1]) if bands else np.zeros((1, cols), dtype=np.uint8)
        images.append(img)
        height = max(height, img.shape[0])
    for ax, (title, snap), img in zip(axes[0], panels, images):
        ax.imshow(img, cmap=cmap, vmin=0, vmax=len(colours) - 1, interpolation="nearest", aspect="auto")
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(title + "\n" + totals_line(snap).replace(", free", ",\nfree"), fontsize=7)
        ax.set_xlabel(f"page (8 KiB) within a row of {cols}", fontsize=7)
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel(f"arenas (64 MiB, {rows_per_arena} rows each)", fontsize=7)
    legend = [Patch(color=colours[0], label="reserved"), Patch(color=colours[1], label="released"),
              Patch(color=colours[2], label="free"), Patch(color=colours[3], label="faulted"),
              Patch(color=colours[4], label="large object"),
              Patch(color=greens[0], label="small spans, class 1 .. "),
              Patch(color=greens[-1], label=f".. class {nclasses}")]
    fig.legend(handles=legend, loc="lower center", ncol=7, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
