"""affcli.data.pcd: PCD files written by hand here (ascii, binary, binary_compressed with our
own LZF streams) read back to what was written, NaN points dropped, and an AffError -- never
another exception -- for bad or corrupted files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from affcli.data.pcd import read_pcd
from affcli.errors import AffError

PATH = Path("cloud.pcd")

Spec = list[tuple[str, str, int, int]]  # FIELDS name, TYPE, SIZE, COUNT

XYZ: Spec = [("x", "F", 4, 1), ("y", "F", 4, 1), ("z", "F", 4, 1)]
# what PCL's point types carry, plus every integer width we care about and padding
RICH: Spec = XYZ + [("_", "U", 1, 4), ("rgb", "F", 4, 1), ("intensity", "F", 4, 1),
                    ("normal", "F", 4, 3), ("label", "U", 1, 1), ("ring", "I", 2, 1),
                    ("time", "F", 8, 1)]


# ---------------------------------------------------------------------------------------------
# writing PCD files and LZF streams


def lzf_literal(raw: bytes) -> bytes:
    """The simplest valid LZF stream: literal runs of up to 32 bytes."""
    return b"".join(bytes([len(raw[i:i + 32]) - 1]) + raw[i:i + 32]
                    for i in range(0, len(raw), 32))


def lzf_greedy(raw: bytes) -> bytes:
    """A real (if slow) LZF compressor: back-references to the latest earlier occurrence of
    each 3-byte string, within LZF's 8 KiB window, extended greedily (they may overlap)."""
    out, lit = bytearray(), bytearray()
    latest: dict[bytes, int] = {}
    refs = i = 0

    def flush() -> None:
        if lit:
            out.extend(bytes([len(lit) - 1]) + lit)
            lit.clear()

    while i < len(raw):
        key = raw[i:i + 3]
        j = latest.get(key) if len(key) == 3 else None
        latest[key] = i
        if j is None or i - j > 8192:
            lit.append(raw[i])
            i += 1
            if len(lit) == 32:
                flush()
            continue
        n = 3
        while i + n < len(raw) and n < 264 and raw[j + n] == raw[i + n]:
            n += 1
        flush()
        off = i - j - 1
        if n - 2 < 7:
            out.extend([((n - 2) << 5) | (off >> 8), off & 0xFF])
        else:
            out.extend([(7 << 5) | (off >> 8), n - 2 - 7, off & 0xFF])
        refs += 1
        i += n
    flush()
    assert refs or len(raw) < 64, "test data should repeat enough for back-references"
    return bytes(out)


def header(spec: Spec, width: int, height: int, data: str, version: str = "0.7") -> str:
    return "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format",
        f"VERSION {version}",
        "FIELDS " + " ".join(f[0] for f in spec),
        "SIZE " + " ".join(str(f[2]) for f in spec),
        "TYPE " + " ".join(f[1] for f in spec),
        "COUNT " + " ".join(str(f[3]) for f in spec),
        f"WIDTH {width}", f"HEIGHT {height}", "VIEWPOINT 0 0 0 1 0 0 0",
        f"POINTS {width * height}", f"DATA {data}", "",
    ])


def write_pcd(spec: Spec, cols: dict[str, np.ndarray], data: str = "binary", height: int = 1,
              compress=lzf_literal) -> bytes:
    n = len(cols["x"])
    arrays = [np.ascontiguousarray(cols.get(name, np.zeros((n, c))), f"<{t.lower()}{s}"
                                   ).reshape(n, c) for name, t, s, c in spec]
    head = header(spec, n // height, height, data).encode()
    named = list(zip([f[0] for f in spec], arrays, strict=True))
    if data == "ascii":
        rows = [" ".join(_ascii_value(v, name) for name, a in named for v in a[i])
                for i in range(n)]
        return head + "".join(r + "\n" for r in rows).encode()
    if data == "binary":  # row-major records
        return head + np.concatenate([a.view(np.uint8) for a in arrays], axis=1).tobytes()
    # column-major, without padding fields (as PCL writes them)
    raw = b"".join(a.tobytes() for name, a in named if name != "_")
    packed = compress(raw)
    return head + struct.pack("<II", len(packed), len(raw)) + packed


def _ascii_value(v: np.generic, name: str) -> str:
    if name == "rgb":  # as PCL writes it: the float's bits as an unsigned integer
        return str(int(np.float32(v).view(np.uint32)))
    return repr(float(v)) if v.dtype.kind == "f" else str(int(v))


def rich_cloud(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # colours with alpha 0 and red < 128: their float bit patterns are ordinary numbers
    colours = rng.integers(0, 2**23, n, dtype=np.uint32)
    tile = rng.normal(size=(37, 3)).astype(np.float32)  # repeats: LZF finds back-references
    return {
        "x": np.resize(tile[:, 0], n), "y": np.resize(tile[:, 1], n),
        "z": rng.normal(size=n).astype(np.float32),
        "rgb": colours.view(np.float32), "intensity": np.full(n, 0.25, np.float32),
        "normal": rng.normal(size=(n, 3)).astype(np.float32),
        "label": rng.integers(0, 256, n).astype(np.uint8),
        "ring": rng.integers(-2**15, 2**15, n).astype(np.int16),
        "time": rng.normal(size=n) * 1e9,
    }


# ---------------------------------------------------------------------------------------------
# round trips

KINDS = ["ascii", "binary", "compressed-literal", "compressed-lzf"]


def write_kind(kind: str, spec: Spec, cols: dict[str, np.ndarray], height: int = 1) -> bytes:
    if kind.startswith("compressed"):
        compress = lzf_literal if kind.endswith("literal") else lzf_greedy
        return write_pcd(spec, cols, "binary_compressed", height, compress)
    return write_pcd(spec, cols, kind, height)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_of_every_field_type(kind: str) -> None:
    cols = rich_cloud(500)
    xyz, fields = read_pcd(PATH, write_kind(kind, RICH, cols))
    assert xyz.dtype == np.float64 and xyz.shape == (500, 3) and xyz.flags.c_contiguous
    np.testing.assert_array_equal(xyz, np.stack([cols[c] for c in "xyz"], axis=1))
    assert sorted(fields) == ["intensity", "label", "normal", "rgb", "ring", "time"]
    for name, values in fields.items():
        assert values.dtype == np.float64
        np.testing.assert_array_equal(values, cols[name].astype(np.float64), err_msg=name)
    assert fields["normal"].shape == (500, 3) and fields["label"].shape == (500,)
    # the packed colour is the stored float; its bits are the colour
    np.testing.assert_array_equal(fields["rgb"].astype(np.float32).view(np.uint32),
                                  cols["rgb"].view(np.uint32))


def test_hand_made_lzf_stream_with_back_references() -> None:
    spec: Spec = [("x", "U", 1, 1), ("y", "U", 1, 1), ("z", "U", 1, 1)]
    # column-major bytes 01 02 03 04 | 01 02 03 04 | 09 09 09 09
    stream = bytes([
        0x03, 1, 2, 3, 4,  # literal run of 4
        0x40, 0x03,  # back-reference: length 2+2, offset 3+1 (y repeats x)
        0x00, 9,  # literal run of 1
        0x20, 0x00,  # back-reference: length 1+2, offset 0+1 (overlaps its own output)
    ])
    data = header(spec, 4, 1, "binary_compressed").encode() + struct.pack("<II", len(stream),
                                                                          12) + stream
    xyz, fields = read_pcd(PATH, data)
    np.testing.assert_array_equal(xyz, [[1, 1, 9], [2, 2, 9], [3, 3, 9], [4, 4, 9]])
    assert fields == {}


def test_long_overlapping_back_references() -> None:
    spec: Spec = [("x", "I", 2, 1), ("y", "I", 2, 1), ("z", "I", 2, 1)]
    # int16 7 (07 00), then 4 references of 7+255+2 = 264 bytes and one of 7+133+2 = 142,
    # each 1+1 bytes back: the copies overlap what they write
    stream = bytes([0x01, 7, 0] + [0xE0, 255, 1] * 4 + [0xE0, 133, 1])
    data = (header(spec, 200, 1, "binary_compressed").encode()
            + struct.pack("<II", len(stream), 1200) + stream)
    xyz, _ = read_pcd(PATH, data)
    np.testing.assert_array_equal(xyz, np.full((200, 3), 7.0))
    short = data[:-3] + bytes([0xE0, 132, 1])
    with pytest.raises(AffError, match="decompressed to 1199 bytes, expected 1200"):
        read_pcd(PATH, short)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_points_of_an_organized_cloud_are_dropped(kind: str) -> None:
    spec: Spec = XYZ + [("intensity", "F", 4, 1), ("normal", "F", 4, 3)]
    cols = rich_cloud(12, seed=1)
    nan_rows = [0, 5, 6, 11]
    for c, row in zip("xyzx", nan_rows, strict=True):
        cols[c][row] = np.nan
    cols["intensity"] = np.arange(12, dtype=np.float32)
    cols["normal"][3] = np.nan  # NaN in another field keeps the point
    xyz, fields = read_pcd(PATH, write_kind(kind, spec, cols, height=3))
    keep = [i for i in range(12) if i not in nan_rows]
    np.testing.assert_array_equal(xyz, np.stack([cols[c][keep] for c in "xyz"], axis=1))
    np.testing.assert_array_equal(fields["intensity"], keep)
    assert fields["normal"].shape == (8, 3) and np.isnan(fields["normal"][2]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_no_points(kind: str) -> None:
    cols = {name: np.zeros(0) for name, *_ in RICH}
    xyz, fields = read_pcd(PATH, write_kind(kind, RICH, cols))
    assert xyz.shape == (0, 3) and fields["normal"].shape == (0, 3)
    assert fields["label"].shape == (0,)


def test_integer_coordinates_and_windows_line_ends() -> None:
    spec: Spec = [("x", "I", 4, 1), ("y", "U", 2, 1), ("z", "I", 8, 1)]
    cols = {"x": np.array([-5, 2**31 - 1]), "y": np.array([0, 65535]),
            "z": np.array([-(2**40), 3])}
    data = write_pcd(spec, cols).replace(b"\n", b"\r\n", 11)  # the header's 11 lines
    xyz, _ = read_pcd(PATH, data)
    np.testing.assert_array_equal(xyz, [[-5, 0, -(2**40)], [2**31 - 1, 65535, 3]])


def test_older_headers_get_pcl_defaults() -> None:
    v5 = b"# .PCD v.5\nCOLUMNS x y z i\nPOINTS 2\nDATA ascii\n1 2 3 4\n5 6 7 8\n"
    xyz, fields = read_pcd(PATH, v5)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(fields["i"], [4, 8])
    v6 = (b"VERSION .6\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nHEIGHT 1\nPOINTS 2\n"
          b"DATA binary\n" + np.arange(6, dtype="<f4").tobytes())
    xyz, _ = read_pcd(PATH, v6)
    np.testing.assert_array_equal(xyz, [[0, 1, 2], [3, 4, 5]])


def test_ascii_colour_as_pcl_writes_it() -> None:
    # PCL's ascii writer declares rgb TYPE U and prints the packed integer
    data = b"VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nWIDTH 1\nHEIGHT 1\n" \
           b"DATA ascii\n0 0 0 4278255360\n"
    assert read_pcd(PATH, data)[1]["rgb"].tolist() == [4278255360.0]
    # under TYPE F, an integer is the float's bit pattern, a float is the float
    data = data.replace(b"F F F U", b"F F F F").replace(b"WIDTH 1", b"WIDTH 2") + \
        b"0 0 0 1.5\n"
    rgb = read_pcd(PATH, data)[1]["rgb"]
    assert rgb[1] == 1.5
    assert np.float32(rgb[0]).view(np.uint32) == 4278255360


# ---------------------------------------------------------------------------------------------
# bad input

SMALL = {"x": np.array([1, 2, 3, 4], np.float32), "y": np.zeros(4, np.float32),
         "z": np.ones(4, np.float32)}
BINARY = write_pcd(XYZ, SMALL)
ASCII = write_pcd(XYZ, SMALL, "ascii")
COMPRESSED = write_pcd(XYZ, SMALL, "binary_compressed")
PLY = b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n"


def compressed_stream(spec: Spec, n: int, size: int, stream: bytes) -> bytes:
    return (header(spec, n, 1, "binary_compressed").encode()
            + struct.pack("<II", len(stream), size) + stream)


def sub(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


BAD = [
    ("empty", b"", "empty file", None),
    ("ply", PLY, "not a PCD file: unexpected 'ply'", "line 1"),
    ("no DATA", BINARY[:BINARY.index(b"DATA")], "no DATA line", None),
    ("DATA kind", sub(BINARY, b"DATA binary", b"DATA binary_lzma"),
     "unknown DATA kind 'binary_lzma'", "line 11"),
    ("SIZE length", sub(BINARY, b"SIZE 4 4 4", b"SIZE 4 4"),
     "SIZE has 2 values but FIELDS names 3 fields", "line 4"),
    ("TYPE/SIZE", sub(BINARY, b"SIZE 4 4 4", b"SIZE 4 2 4"), "TYPE F with SIZE 2", "line 4"),
    ("TYPE letter", sub(BINARY, b"TYPE F F F", b"TYPE F D F"), "bad TYPE 'D'", "line 5"),
    ("no SIZE in 0.7", sub(BINARY, b"SIZE 4 4 4\n", b""), "no SIZE line", None),
    ("no z", sub(ASCII, b"FIELDS x y z", b"FIELDS x y w"), "no z field", "line 3"),
    ("x COUNT", sub(ASCII, b"COUNT 1 1 1", b"COUNT 2 1 1"), "'x' has COUNT 2", "line 6"),
    ("twice", sub(ASCII, b"FIELDS x y z", b"FIELDS x y y"), "FIELDS names 'y' more than once",
     "line 3"),
    ("WIDTH", sub(BINARY, b"WIDTH 4", b"WIDTH -4"), "bad WIDTH '-4'", "line 7"),
    ("POINTS", sub(BINARY, b"POINTS 4", b"POINTS 5"),
     "POINTS 5 disagrees with WIDTH x HEIGHT = 4 x 1 = 4", "line 10"),
    ("truncated binary", BINARY[:-1], "expected 48 bytes of point data (4 points of 12 "
     "bytes), found 47", None),
    ("unpacked size", sub(COMPRESSED, struct.pack("<I", 48), struct.pack("<I", 36)),
     "unpacks to 36 bytes", None),
    ("corrupt LZF", compressed_stream(XYZ, 4, 48, bytes([0x1F]) + bytes(32) + b"\x20\x50"),
     "corrupt binary_compressed data (back-reference out of range at byte 33)", None),
    ("LZF too short", compressed_stream(XYZ, 4, 48, bytes([0x1F]) + bytes(32)),
     "corrupt binary_compressed data (decompressed to 32 bytes, expected 48)", None),
    ("ascii width", sub(ASCII, b"\n3.0 0.0 1.0", b"\n3.0 0.0"), "2 values, expected 3",
     "line 14"),
    ("ascii number", sub(ASCII, b"\n3.0 0.0 1.0", b"\n3.0 abc 1.0"), "not a number: 'abc'",
     "line 14"),
    ("ascii short", ASCII[:ASCII.rindex(b"4.0")], "3 data lines, but the header promises 4",
     "line 14"),
    ("ascii long", ASCII + b"1 2 3\n", "more data lines than the header's 4 points",
     "line 16"),
    ("infinite", sub(ASCII, b"\n3.0 0.0 1.0", b"\n3.0 -inf 1.0"), "infinite coordinates",
     "line 14"),
]


@pytest.mark.parametrize(("data", "message", "record"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input_names_the_problem(data: bytes, message: str, record: str | None) -> None:
    with pytest.raises(AffError) as info:
        read_pcd(PATH, data)
    assert message in info.value.reason
    assert info.value.file == str(PATH) and info.value.record == record


@pytest.mark.parametrize("kind", ["binary", "binary_compressed"])
def test_corrupted_files_raise_only_aff_error(kind: str) -> None:
    cols = rich_cloud(40, seed=2)
    good = write_pcd(RICH, cols, kind, compress=lzf_greedy)
    body = good.index(b"\n", good.index(b"DATA")) + 1
    rng = np.random.default_rng(3)
    outcomes = {"ok": 0, "error": 0}
    for i in range(200):
        data = bytearray(good)
        if i % 2:
            data = data[:rng.integers(0, len(good))]
        else:  # flips concentrate on the point data, where parsing is least guarded
            for _ in range(rng.integers(1, 6)):
                pos = rng.integers(body, len(data)) if rng.random() < 0.8 else \
                    rng.integers(0, len(data))
                data[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            xyz, fields = read_pcd(PATH, bytes(data))
        except AffError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert xyz.ndim == 2 and xyz.shape[1] == 3 and xyz.dtype == np.float64
        assert np.isfinite(xyz).all()
        assert all(len(v) == len(xyz) for v in fields.values())
    assert outcomes["ok"] and outcomes["error"]
