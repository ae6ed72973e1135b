"""The heap profile in standard formats: pprof's protobuf (``go tool pprof``,
speedscope) and collapsed stacks (flame graphs).

The encoder is this file's own: a protobuf message is a sequence of fields,
each a varint key ``(number << 3) | wire type`` then a varint (type 0) or a
length-prefixed byte string (type 2, which also carries nested messages
and packed repeated integers).  The message is pprof's ``Profile``
(github.com/google/pprof, proto/profile.proto), with Go's heap profile
sample types: alloc_objects, alloc_space, inuse_objects, inuse_space.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from collections.abc import Iterable, Sequence

from ._api import ProfileRecord, get_option, heap_profile

__all__ = ["profile_bytes", "write_profile", "SAMPLE_TYPES"]

#: pprof sample types, in the order of each sample's values (Go's heap profile).
SAMPLE_TYPES = (("alloc_objects", "count"), ("alloc_space", "bytes"),
                ("inuse_objects", "count"), ("inuse_space", "bytes"))

_FRAME = re.compile(r"^(?P<obj>[^()]*)\((?P<sym>[^+()]*)(?:\+(?P<off>0x[0-9a-fA-F]+))?\)$")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement, as protobuf encodes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _packed(number: int, values: Iterable[int]) -> bytes:
    body = b"".join(_varint(v) for v in values)
    return _bytes_field(number, body) if body else b""


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self.index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        if s not in self.index:
            self.index[s] = len(self.table)
            self.table.append(s)
        return self.index[s]


def _frame_name(frame: str) -> tuple[str, str]:
    """(function name, object file) of a ``ProfileRecord.stack`` entry."""
    m = _FRAME.match(frame)
    if m is None:
        return frame, ""
    obj, sym = m.group("obj"), m.group("sym")
    if sym:
        return sym, obj
    return f"{obj}+{m.group('off')}", obj


def _mappings() -> list[tuple[int, int, int, str]]:
    """(start, limit, file offset, path) of this process's executable mappings."""
    out = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or "x" not in parts[1]:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, int(parts[2], 16), parts[5].strip()))
    except OSError:
        pass
    return out


def encode_pprof(records: Sequence[ProfileRecord], rate: int) -> bytes:
    """An uncompressed pprof ``Profile`` of *records* (heap_profile())."""
    strings = _Strings()
    maps = _mappings()
    mapping_ids: dict[int, int] = {}  # index in maps -> id
    locations: dict[int, int] = {}    # address -> id
    functions: dict[tuple[str, str], int] = {}
    loc_msgs, fn_msgs = [], []
    samples = []
    for r in records:
        ids = []
        for addr, frame in zip(r.addresses, r.stack):
            if addr not in locations:
                name, obj = _frame_name(frame)
                key = (name, obj)
                if key not in functions:
                    functions[key] = len(functions) + 1
                    fn_msgs.append(_int_field(1, functions[key]) + _int_field(2, strings(name)) +
                                   _int_field(3, strings(name)) + _int_field(4, strings(obj)))
                mapping = next((i for i, m in enumerate(maps) if m[0] <= addr < m[1]), None)
                if mapping is not None and mapping not in mapping_ids:
                    mapping_ids[mapping] = len(mapping_ids) + 1
                locations[addr] = len(locations) + 1
                line = _int_field(1, functions[key])
                loc_msgs.append(_int_field(1, locations[addr]) +
                                _int_field(2, mapping_ids.get(mapping, 0) if mapping is not None else 0) +
                                _int_field(3, addr) + _bytes_field(4, line))
            ids.append(locations[addr])
        values = (r.alloc_objects, r.alloc_bytes, r.inuse_objects, r.inuse_bytes)
        samples.append(_packed(1, ids) + _packed(2, values))
    out = bytearray()
    for name, unit in SAMPLE_TYPES:
        out += _bytes_field(1, _int_field(1, strings(name)) + _int_field(2, strings(unit)))
    for s in samples:
        out += _bytes_field(2, s)
    for index, ident in mapping_ids.items():
        lo, hi, offset, path = maps[index]
        out += _bytes_field(3, _int_field(1, ident) + _int_field(2, lo) + _int_field(3, hi) +
                            _int_field(4, offset) + _int_field(5, strings(path)) + _int_field(7, 1))
    for m in loc_msgs:
        out += _bytes_field(4, m)
    for m in fn_msgs:
        out += _bytes_field(5, m)
    period_type = _int_field(1, strings("space")) + _int_field(2, strings("bytes"))
    default_type = strings("inuse_space")
    tail = (_int_field(9, time.time_ns()) + _bytes_field(11, period_type) + _int_field(12, rate) +
            _int_field(14, default_type))
    for s in strings.table:  # every string is interned by now
        out += _bytes_field(6, s.encode("utf-8"))
    return bytes(out + tail)


def encode_collapsed(records: Sequence[ProfileRecord], sample: str = "inuse_space") -> bytes:
    """Collapsed stacks, ``outermost;...;allocating_function VALUE`` per line
    (Brendan Gregg's flamegraph.pl, speedscope, inferno read it)."""
    index = [name for name, _ in SAMPLE_TYPES].index(sample)
    totals: dict[str, int] = {}
    for r in records:
        value = (r.alloc_objects, r.alloc_bytes, r.inuse_objects, r.inuse_bytes)[index]
        if value <= 0:
            continue
        names = [_frame_name(frame)[0].replace(";", ":").replace(" ", "_") for frame in r.stack]
        key = ";".join(reversed(names)) or "[unknown]"
        totals[key] = totals.get(key, 0) + value
    return "".join(f"{k} {v}\n" for k, v in sorted(totals.items())).encode("utf-8")


def profile_bytes(format: str = "pprof", *, sample: str = "inuse_space", compress: bool = True) -> bytes:
    """The heap profile (``heap_profile()``) as *format* ``"pprof"`` (gzip
    compressed unless *compress* is False, as ``go tool pprof`` writes it;
    it reads both) or ``"collapsed"`` (one line per stack, its *sample*
    value: ``inuse_space``, ``inuse_objects``, ``alloc_space``,
    ``alloc_objects``)."""
    records = heap_profile()
    if format == "pprof":
        data = encode_pprof(records, get_option("profile_rate"))
        return gzip.compress(data) if compress else data
    if format == "collapsed":
        if sample not in [name for name, _ in SAMPLE_TYPES]:
            raise ValueError(f"sample must be one of {[n for n, _ in SAMPLE_TYPES]}, not {sample!r}")
        return encode_collapsed(records, sample)
    raise ValueError(f"format must be 'pprof' or 'collapsed', not {format!r}")


def write_profile(path: str | os.PathLike[str], format: str = "pprof", *, sample: str = "inuse_space",
                  compress: bool = True) -> int:
    """Write the heap profile to *path* (see ``profile_bytes``); returns the bytes written::

        pygomalloc.set_option("profile_rate", 512 * 1024)
        ...
        pygomalloc.write_profile("heap.pb.gz")            # go tool pprof -top heap.pb.gz
        pygomalloc.write_profile("heap.folded", "collapsed")  # flamegraph.pl heap.folded
    """
    data = profile_bytes(format, sample=sample, compress=compress)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
