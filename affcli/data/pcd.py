"""PCL's PCD point clouds: `read_pcd` turns a .pcd file's bytes into xyz and per-point fields.

Supported: PCD v0.7 headers, and older (.5/.6) ones with PCL's defaults for what they lack
(SIZE 4, TYPE F, COUNT 1, HEIGHT 1, WIDTH = POINTS; COLUMNS for FIELDS); DATA ascii, binary
and binary_compressed, whose LZF stream is decompressed here, so no PCL or lzf package is
needed. Points whose x, y or z is NaN -- PCL's "no measurement" in organized clouds -- are
dropped with their other fields, as pcl::removeNaNFromPointCloud does. Anything else wrong with
a file is an AffError naming the file and, where it helps, the header or data line.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affcli.data.pointio import is_number
from affcli.errors import AffError

_KEYWORDS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT",
             "POINTS", "DATA")
_DATA_KINDS = ("ascii", "binary", "binary_compressed")
_SIZES = {"I": (1, 2, 4, 8), "U": (1, 2, 4, 8), "F": (4, 8)}
_PAD = "_"  # PCL's name for padding bytes in binary records; never returned
_PACKED_COLOURS = ("rgb", "rgba")
_UINT = re.compile(r"[0-9]{1,18}")  # short enough that int() is cheap and never refuses it
# a 3-byte LZF back-reference expands to at most 264 bytes: a bound on any stream's output
_LZF_MAX_RATIO = 88


@dataclass
class _Field:
    name: str
    size: int
    type: str  # I, U or F
    count: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"<{self.type.lower()}{self.size}")


@dataclass
class _Header:
    fields: list[_Field]
    points: int
    data: str  # one of _DATA_KINDS
    body: int  # byte offset of the point data
    body_line: int  # line number of the point data's first line (ascii)


def read_pcd(path: Path, data: bytes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(xyz float64 [M, 3], other per-point fields by name) of a PCD file's bytes.

    Other fields come back as float64 [M], or [M, COUNT] for fields with COUNT > 1; padding
    fields (`_`) are left out. A packed `rgb`/`rgba` colour comes back as the number the file
    stores -- for TYPE F the float whose bits are the colour (unpack with
    `np.float32(v).view(np.uint32)`; bit patterns that are signalling NaNs come back quieted),
    for TYPE U (PCL's ascii files) the integer. Ascii files may give a TYPE F colour as that
    integer, as PCL writes it; it is turned back into the float a binary file would hold.
    Integer fields beyond 2**53 lose precision. Raises AffError for anything unusable.
    """
    if not data:
        raise AffError(path, "empty file")
    header = _header(path, data)
    if header.data == "ascii":
        columns, record = _ascii_body(path, data, header)
    elif header.data == "binary":
        columns, record = _binary_body(path, data, header), _point_record
    else:
        columns, record = _compressed_body(path, data, header), _point_record
    xyz = np.stack([columns[c][:, 0] for c in "xyz"], axis=1)
    valid = ~np.isnan(xyz).any(axis=1)  # NaN: PCL's marker for an invalid point
    infinite = np.isinf(xyz).any(axis=1)
    if infinite.any():
        i = int(np.argmax(infinite))
        raise AffError(path, f"infinite coordinates {xyz[i].tolist()}", record=record(i))
    extra = {name: col[valid, 0] if col.shape[1] == 1 else col[valid]
             for name, col in columns.items() if name not in ("x", "y", "z")}
    return np.ascontiguousarray(xyz[valid]), extra


def _point_record(i: int) -> str:
    return f"point {i}"


# ---------------------------------------------------------------------------------------------
# header


def _header(path: Path, data: bytes) -> _Header:
    lines: dict[str, tuple[int, list[str]]] = {}  # keyword -> (line number, its values)
    pos = no = 0
    while "DATA" not in lines:
        if pos >= len(data):
            raise AffError(path, "the PCD header has no DATA line (not a PCD file, or cut "
                           "short)")
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        # latin-1 never fails; stray bytes just make tokens that match nothing
        line = data[pos:end].decode("latin-1")
        pos, no = end + 1, no + 1
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        key = "FIELDS" if tokens[0] == "COLUMNS" else tokens[0]  # COLUMNS: v.5's name
        if key not in _KEYWORDS:
            what = "not a PCD file: " if not lines else ""
            raise AffError(path, f"{what}unexpected {line.strip()[:40]!r} in the PCD header",
                           record=f"line {no}",
                           hint=f"a PCD header has the lines {', '.join(_KEYWORDS)}")
        if key in lines:
            raise AffError(path, f"{key} appears twice in the PCD header", record=f"line {no}")
        lines[key] = (no, tokens[1:])
    fields = _fields(path, lines, _version(path, lines))
    points = _point_count(path, lines)
    data_line, data_kind = lines["DATA"]
    kind = data_kind[0].lower() if len(data_kind) == 1 else " ".join(data_kind)
    if kind not in _DATA_KINDS:
        raise AffError(path, f"unknown DATA kind {kind[:40]!r} (expected "
                       f"{', '.join(_DATA_KINDS)})", record=f"line {data_line}")
    return _Header(fields, points, kind, min(pos, len(data)), no + 1)


def _version(path: Path, lines: dict[str, tuple[int, list[str]]]) -> float | None:
    if "VERSION" not in lines:
        return None
    no, tokens = lines["VERSION"]
    if len(tokens) != 1 or not is_number(tokens[0]):
        raise AffError(path, f"bad VERSION {' '.join(tokens)[:40]!r} (expected e.g. 0.7)",
                       record=f"line {no}")
    return float(tokens[0])


def _per_field(path: Path, lines: dict[str, tuple[int, list[str]]], key: str, n: int,
               default: str | None) -> tuple[list[str], str | None]:
    """`key`'s values, one per field, and the line they are on (None: defaulted)."""
    if key not in lines:
        if default is None:
            raise AffError(path, f"the PCD header has no {key} line")
        return [default] * n, None
    no, tokens = lines[key]
    if len(tokens) != n:
        raise AffError(path, f"{key} has {len(tokens)} values but FIELDS names {n} fields",
                       record=f"line {no}")
    return tokens, f"line {no}"


def _fields(path: Path, lines: dict[str, tuple[int, list[str]]],
            version: float | None) -> list[_Field]:
    if "FIELDS" not in lines:
        raise AffError(path, "the PCD header has no FIELDS line")
    no, names = lines["FIELDS"]
    if not names:
        raise AffError(path, "FIELDS names no fields", record=f"line {no}")
    # v0.7 writers always give SIZE and TYPE; only older files get PCL's float32 default
    old = version is None or version < 0.7
    sizes, size_line = _per_field(path, lines, "SIZE", len(names), "4" if old else None)
    types, type_line = _per_field(path, lines, "TYPE", len(names), "F" if old else None)
    counts, count_line = _per_field(path, lines, "COUNT", len(names), "1")
    fields = []
    for name, size, typ, count in zip(names, sizes, types, counts, strict=True):
        if not _UINT.fullmatch(size):
            raise AffError(path, f"bad SIZE {size[:20]!r} for field {name!r}", record=size_line)
        if not _UINT.fullmatch(count):
            raise AffError(path, f"bad COUNT {count[:20]!r} for field {name!r}",
                           record=count_line)
        if typ not in _SIZES:
            raise AffError(path, f"bad TYPE {typ[:20]!r} for field {name!r} (expected I, U "
                           "or F)", record=type_line)
        if int(size) not in _SIZES[typ]:
            raise AffError(path, f"field {name!r} has TYPE {typ} with SIZE {int(size)} (valid: "
                           "I and U with SIZE 1, 2, 4 or 8, F with 4 or 8)",
                           record=size_line or type_line)
        fields.append(_Field(name, int(size), typ, int(count)))
    named = [f.name for f in fields if f.name != _PAD]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise AffError(path, f"FIELDS names {twice[0]!r} more than once", record=f"line {no}")
    missing = [c for c in "xyz" if c not in named]
    if missing:
        raise AffError(path, f"no {', '.join(missing)} field (the file has: {' '.join(named)})"
                       [:200], record=f"line {no}")
    for f in fields:
        if f.name in ("x", "y", "z") and f.count != 1:
            raise AffError(path, f"field {f.name!r} has COUNT {f.count}, expected 1",
                           record=count_line)
    # PCL drops COUNT 0 fields: they hold no values in any DATA kind
    return [f for f in fields if f.count > 0]


def _count_line(path: Path, lines: dict[str, tuple[int, list[str]]], key: str
                ) -> tuple[int | None, int]:
    if key not in lines:
        return None, 0
    no, tokens = lines[key]
    if len(tokens) != 1 or not _UINT.fullmatch(tokens[0]):
        raise AffError(path, f"bad {key} {' '.join(tokens)[:40]!r} (expected a whole number "
                       "of points)", record=f"line {no}")
    return int(tokens[0]), no


def _point_count(path: Path, lines: dict[str, tuple[int, list[str]]]) -> int:
    if "VIEWPOINT" in lines:
        no, tokens = lines["VIEWPOINT"]
        if len(tokens) < 7 or not all(is_number(t) for t in tokens[:7]):
            raise AffError(path, "VIEWPOINT needs 7 numbers (tx ty tz qw qx qy qz)",
                           record=f"line {no}")
    width, _ = _count_line(path, lines, "WIDTH")
    height, height_no = _count_line(path, lines, "HEIGHT")
    points, points_no = _count_line(path, lines, "POINTS")
    if width is None:
        if height is not None:
            raise AffError(path, "the PCD header gives HEIGHT but no WIDTH",
                           record=f"line {height_no}")
        if points is None:
            raise AffError(path, "the PCD header has neither WIDTH nor POINTS")
        return points  # v.5: POINTS alone
    height = 1 if height is None else height
    if points is not None and points != width * height:
        raise AffError(path, f"POINTS {points} disagrees with WIDTH x HEIGHT = {width} x "
                       f"{height} = {width * height}", record=f"line {points_no}")
    return width * height


# ---------------------------------------------------------------------------------------------
# point data; each reader gives name -> float64 [N, COUNT] for every field but padding


Columns = dict[str, np.ndarray]


def _binary_body(path: Path, data: bytes, header: _Header) -> Columns:
    record = sum(f.size * f.count for f in header.fields)
    need, have = header.points * record, len(data) - header.body
    if need > have:
        raise AffError(path, f"truncated PCD: expected {need} bytes of point data "
                       f"({header.points} points of {record} bytes), found {have}")
    # trailing bytes are ignored, as PCL does
    raw = np.frombuffer(data, np.uint8, need, header.body).reshape(header.points, record)
    columns: Columns = {}
    offset = 0
    for f in header.fields:
        width = f.size * f.count
        if f.name != _PAD:
            block = np.ascontiguousarray(raw[:, offset:offset + width])
            columns[f.name] = _float64(block.view(f.dtype))
        offset += width
    return columns


def _compressed_body(path: Path, data: bytes, header: _Header) -> Columns:
    # PCL leaves padding fields out of compressed data
    fields = [f for f in header.fields if f.name != _PAD]
    record = sum(f.size * f.count for f in fields)
    need = header.points * record
    if need == 0:
        return {f.name: np.zeros((0, f.count)) for f in fields}
    if len(data) - header.body < 8:
        raise AffError(path, "truncated PCD: binary_compressed data lacks its 8-byte size "
                       "header")
    packed, unpacked = struct.unpack_from("<II", data, header.body)
    if unpacked != need:
        raise AffError(path, f"binary_compressed data unpacks to {unpacked} bytes, but "
                       f"{header.points} points of {record} bytes need {need}")
    start = header.body + 8
    if packed > len(data) - start:
        raise AffError(path, f"truncated PCD: expected {packed} bytes of compressed point "
                       f"data, found {len(data) - start}")
    try:
        buf = _lzf_decompress(data[start:start + packed], unpacked)
    except _LzfError as exc:
        raise AffError(path, f"corrupt binary_compressed data ({exc})") from None
    # column-major: every point's values of the first field, then of the second, ...
    columns: Columns = {}
    offset = 0
    for f in fields:
        values = np.frombuffer(buf, f.dtype, header.points * f.count, offset)
        columns[f.name] = _float64(values.reshape(header.points, f.count))
        offset += values.nbytes
    return columns


def _float64(values: np.ndarray) -> np.ndarray:
    # float32 bit patterns that are signalling NaNs (packed colours, corrupt data) raise the
    # FPU's invalid flag on conversion: nothing is wrong that the caller could act on
    with np.errstate(invalid="ignore"):
        return values.astype(np.float64)


class _LzfError(Exception):
    pass


def _lzf_decompress(src: bytes, size: int) -> bytes:
    """liblzf's format, which PCL uses: a control byte c < 32 starts a literal run of c + 1
    bytes; otherwise a back-reference copies (c >> 5) + 2 bytes (with one more length byte
    when c >> 5 == 7) from ((c & 31) << 8) + next byte + 1 bytes back in the output."""
    if size > _LZF_MAX_RATIO * len(src):
        raise _LzfError(f"{len(src)} compressed bytes cannot hold {size} bytes")
    out = bytearray(size)
    ip = op = 0
    end = len(src)
    while ip < end:
        c = src[ip]
        ip += 1
        if c < 32:
            n = c + 1
            if ip + n > end or op + n > size:
                raise _LzfError(f"literal run past the end at byte {ip - 1}")
            out[op:op + n] = src[ip:ip + n]
            ip += n
        else:
            n = c >> 5
            if n == 7:
                if ip >= end:
                    raise _LzfError("stream ends inside a back-reference")
                n += src[ip]
                ip += 1
            if ip >= end:
                raise _LzfError("stream ends inside a back-reference")
            ref = op - ((c & 31) << 8) - src[ip] - 1
            ip += 1
            n += 2
            if ref < 0 or op + n > size:
                raise _LzfError(f"back-reference out of range at byte {ip - 2}")
            if op - ref >= n:
                out[op:op + n] = out[ref:ref + n]
            else:  # overlapping: a byte-by-byte copy repeats the last op - ref bytes
                pattern = out[ref:op]
                out[op:op + n] = (pattern * (n // len(pattern) + 1))[:n]
        op += n
    if op != size:
        raise _LzfError(f"decompressed to {op} bytes, expected {size}")
    return bytes(out)


def _ascii_body(path: Path, data: bytes, header: _Header
                ) -> tuple[Columns, Callable[[int], str]]:
    width = sum(f.count for f in header.fields)
    rows: list[list[str]] = []
    line_nos: list[int] = []
    text = data[header.body:].decode("latin-1")  # non-ASCII bytes fail as "not a number"
    for no, line in enumerate(text.split("\n"), start=header.body_line):
        tokens = line.split()
        if not tokens:
            continue
        if len(rows) == header.points:
            raise AffError(path, f"more data lines than the header's {header.points} points",
                           record=f"line {no}")
        if len(tokens) != width:
            raise AffError(path, f"{len(tokens)} values, expected {width} (FIELDS "
                           f"{' '.join(f.name for f in header.fields)})"[:200],
                           record=f"line {no}")
        rows.append(tokens)
        line_nos.append(no)
    if len(rows) < header.points:
        raise AffError(path, f"truncated PCD: {len(rows)} data lines, but the header promises "
                       f"{header.points} points", record=f"line {line_nos[-1]}"
                       if line_nos else None)
    try:
        table = np.array(rows, np.float64).reshape(len(rows), width)
    except ValueError:
        for tokens, no in zip(rows, line_nos, strict=True):
            bad = next((t for t in tokens if not is_number(t)), None)
            if bad is not None:
                raise AffError(path, f"not a number: {bad[:40]!r}", record=f"line {no}"
                               ) from None
        raise AffError(path, "malformed ascii point data") from None  # numpy stricter than float
    columns: Columns = {}
    j = 0
    for f in header.fields:
        if f.name != _PAD:
            columns[f.name] = table[:, j:j + f.count]
            if f.name in _PACKED_COLOURS and f.type == "F" and f.size == 4:
                columns[f.name] = _repack_colour(columns[f.name], [r[j] for r in rows])
        j += f.count
    return columns, lambda i: f"line {line_nos[i]}"


def _repack_colour(values: np.ndarray, tokens: list[str]) -> np.ndarray:
    """PCL writes a float rgb as its uint32 bit pattern in ascii (as a float, some colours
    would print as nan); such integer tokens become the float a binary file holds."""
    which = [i for i, t in enumerate(tokens) if _UINT.fullmatch(t) and int(t) < 2**32]
    if not which:
        return values
    out = values.copy()
    bits = np.array([int(tokens[i]) for i in which], np.uint32)
    out[which, 0] = _float64(bits.view(np.float32))
    return out
