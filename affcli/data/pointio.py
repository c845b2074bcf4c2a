"""Users' own shapes in, scored shapes out: the file layer of `affcli predict`.

`read_shape` turns a point cloud or mesh file into float64 points [M, 3]. Meshes are sampled
on their surface (area-weighted), so every format ends up as a cloud the models can take; the
mesh itself (vertices, triangles) comes along, so its scores can go back to its own vertices.
Anything wrong with a file is an AffError naming the file and, where it helps, the line,
vertex, face or point. `write_ply` writes points (and faces) with heatmap colours and scores.

Meshes and scenes are read by trimesh (`affcli.data.meshio`): OBJ, OFF, STL, GLB/glTF, 3MF,
DAE. Our own readers remain where trimesh has none or falls short: PLY (trimesh's binary
reader takes neither faces of mixed sizes nor list properties outside the faces), XYZ-style
text (.xyz .txt .pts .csv), PIAD point text (.txt), NumPy .npy/.npz and PCD
(`affcli.data.pcd`).
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affcli.errors import AffError
from affcli.fileio import atomic_output, read_user_bytes
from affcli.views import heatmap_colors  # PLY colours = PNG views' colours: one colormap

MIN_POINTS = 3
PIAD_SCORES = 17  # affordance columns in a PIAD point file

Record = Callable[[int], str]


@dataclass
class Shape:
    """A shape read from a user's file, as a point cloud."""

    points: np.ndarray  # float64 [M, 3]
    source: Path
    kind: str  # ply-ascii, ply-binary, obj, off, stl, glb, gltf, 3mf, dae, pcd, xyz, npy, ...
    is_mesh: bool  # True: `points` were sampled on the file's surface
    labels: np.ndarray | None = None  # PIAD text: float64 [M, 17] affordance scores
    # per-point PLY vertex properties besides x, y, z (e.g. red, green, blue, score); point
    # clouds only, since a mesh's vertices are not the returned points
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # PIAD text: shape_id, object_class
    vertices: np.ndarray | None = None  # meshes: float64 [V, 3], the file's own vertices
    faces: np.ndarray | None = None  # meshes: int64 [F, 3] triangles into `vertices`


@dataclass
class _Parsed:
    """What a format reader found, before checks and surface sampling."""

    kind: str
    vertices: np.ndarray  # float64 [V, 3]
    vertex_record: Record
    triangles: np.ndarray | None = None  # int64 [T, 3]; None or empty: a point cloud
    labels: np.ndarray | None = None
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


def _vertex_record(i: int) -> str:
    return f"vertex {i}"


# ---------------------------------------------------------------------------------------------
# entry point


def read_shape(path: str | Path, mesh_samples: int = 10000, seed: int = 0) -> Shape:
    """Read a point cloud or mesh file; meshes are sampled to `mesh_samples` surface points
    (deterministic for a given `seed`). Raises AffError for anything unusable."""
    path = Path(path)
    if mesh_samples < MIN_POINTS:
        raise AffError("mesh_samples", f"must be at least {MIN_POINTS}, got {mesh_samples}")
    data = _read_bytes(path)
    reader = _reader_for(path)
    parsed = reader(path, data)
    _check_finite(path, parsed.vertices, parsed.vertex_record)
    if parsed.triangles is not None and len(parsed.triangles):
        points = sample_surface(parsed.vertices, parsed.triangles, mesh_samples, seed, path)
        return Shape(points, path, parsed.kind, True, meta=parsed.meta,
                     vertices=parsed.vertices, faces=parsed.triangles)
    _check_count(path, len(parsed.vertices))
    return Shape(parsed.vertices, path, parsed.kind, False, parsed.labels, parsed.properties,
                 parsed.meta)


MAX_FILE_BYTES = 2 * 1024**3  # shapes are read whole into memory; a bigger file is a mistake


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # read_user_bytes names what is wrong
    if size > MAX_FILE_BYTES:
        raise AffError(path, f"file is {size / 1024**3:.1f} GiB; affcli reads shapes up to "
                       f"{MAX_FILE_BYTES / 1024**3:.0f} GiB (subsample it first)")
    data = read_user_bytes(path, "point cloud or mesh file")
    if not data:
        raise AffError(path, "empty file")
    return data


_TEXT_CLOUD_EXTS = (".xyz", ".txt", ".pts", ".csv")
SUPPORTED = (".ply .obj .off .stl .glb .gltf .3mf .dae .pcd .xyz .txt .pts .csv .npy "
             ".npz").split()


def _reader_for(path: Path) -> Callable[[Path, bytes], _Parsed]:
    from affcli.data.meshio import MESH_TYPES

    ext = path.suffix.lower()
    if ext in _TEXT_CLOUD_EXTS:
        return _read_text_cloud  # xyz columns or PIAD lines, told apart by content
    if ext in (".npy", ".npz"):
        return _read_numpy  # told apart by their magic bytes, whatever the extension says
    if ext == ".pcd":
        return _read_pcd
    if ext == ".ply":
        # our own reader: trimesh's reads neither binary PLY faces of mixed sizes (quads
        # and triangles, as Blender writes them) nor list properties outside the faces
        return _read_ply
    if ext in MESH_TYPES:
        return _read_mesh
    raise AffError(path, f"unknown file type {ext or '(no extension)'!r}",
                   hint=f"supported extensions: {' '.join(SUPPORTED)}")


def _read_mesh(path: Path, data: bytes) -> _Parsed:
    from affcli.data.meshio import read_mesh

    mesh = read_mesh(path, data)
    return _Parsed(mesh.kind, mesh.vertices, _vertex_record,
                   mesh.faces if len(mesh.faces) else None)


def _read_pcd(path: Path, data: bytes) -> _Parsed:
    from affcli.data.pcd import read_pcd

    points, fields = read_pcd(path, data)
    # (organized clouds' NaN points are dropped by the reader, so no point index to name)
    return _Parsed("pcd", points, lambda i: f"point {i}",
                   properties={k: v for k, v in fields.items() if v.ndim == 1})


# ---------------------------------------------------------------------------------------------
# checks and surface sampling


def _check_count(path: Path, n: int) -> None:
    if n == 0:
        raise AffError(path, "no points in the file (empty point cloud)")
    if n < MIN_POINTS:
        raise AffError(path, f"only {n} point{'s' if n > 1 else ''}; a shape needs at least "
                       f"{MIN_POINTS}")


def _check_finite(path: Path, values: np.ndarray, record: Record,
                  what: str = "coordinates") -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        shown = values[i].tolist() if values.shape[1] <= 3 else ""
        raise AffError(path, f"non-finite (NaN/inf) {what} {shown}".rstrip(), record=record(i))


def sample_surface(vertices: np.ndarray, triangles: np.ndarray, n: int, seed: int = 0,
                   file: str | Path | None = None) -> np.ndarray:
    """`n` points uniformly distributed over a triangle mesh's surface, float64 [n, 3].

    A triangle is drawn with probability proportional to its area, then a point uniformly
    inside it; the same `seed` gives the same points.
    """
    tri = np.asarray(vertices, np.float64)[np.asarray(triangles, np.int64)]  # [T, 3, 3]
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    with np.errstate(over="ignore", invalid="ignore"):
        areas = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
        cdf = np.cumsum(areas)
    total = float(cdf[-1]) if len(cdf) else 0.0
    if not np.isfinite(total):
        raise AffError(file, "mesh coordinates are too large to compute triangle areas")
    extent = float(np.ptp(tri.reshape(-1, 3), axis=0).max()) if len(tri) else 0.0
    # relative to the shape's size, so tiny-but-valid models are not rejected
    if total == 0.0 or total / extent <= 1e-12 * extent:  # squaring extent could overflow
        raise AffError(file, f"degenerate mesh: its {len(tri)} faces have zero total area")
    rng = np.random.default_rng(seed)
    # side="right" never picks a zero-area triangle: its cdf step is empty
    which = np.minimum(np.searchsorted(cdf, rng.random(n) * total, side="right"), len(tri) - 1)
    u, v = rng.random((2, n))
    # folding the unit square onto the triangle keeps the density uniform without a sqrt,
    # and points stay exactly on axis-aligned faces (x0 + u*0 + v*0 == x0)
    fold = u + v > 1.0
    u[fold], v[fold] = 1.0 - u[fold], 1.0 - v[fold]
    return tri[which, 0] + u[:, None] * e1[which] + v[:, None] * e2[which]


def _triangulate(path: Path, polys: np.ndarray | Sequence[Sequence[int]], n_vertices: int,
                 record: Record, index_base: int = 0) -> np.ndarray:
    """Polygons (vertex index lists) as fan triangles int64 [T, 3], after checking that every
    polygon has 3+ corners and every index names an existing vertex. `index_base` is added to
    indices shown in errors (1 for OBJ, whose files count from 1)."""
    try:
        groups = _group_by_length(polys)
    except OverflowError:  # an index beyond int64, from a text file
        r = next(i for i, p in enumerate(polys) if any(abs(int(v)) >= 2**63 for v in p))
        raise AffError(path, "face refers to a vertex index too large for any file",
                       record=record(r)) from None
    tris = []
    for rows, arr in groups:
        k = arr.shape[1]
        if k < 3:
            raise AffError(path, f"face with {k} vertices; a face needs at least 3",
                           record=record(int(rows[0])))
        bad = (arr < 0) | (arr >= n_vertices)
        if bad.any():
            r = int(np.argmax(bad.any(axis=1)))
            v = int(arr[r][bad[r]][0])
            raise AffError(path, f"face refers to vertex {v + index_base}, but the file has "
                           f"{n_vertices} vertices", record=record(int(rows[r])))
        for j in range(1, k - 1):  # fan around the first corner: exact for convex polygons
            tris.append(np.stack([arr[:, 0], arr[:, j], arr[:, j + 1]], axis=1))
    return np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)


def _group_by_length(polys: np.ndarray | Sequence[Sequence[int]]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(original row numbers, int64 [F_k, k]) for each polygon size k."""
    if isinstance(polys, np.ndarray):
        return [(np.arange(len(polys)), polys.astype(np.int64))] if len(polys) else []
    lengths = np.array([len(p) for p in polys])
    groups = []
    for k in np.unique(lengths):
        rows = np.flatnonzero(lengths == k)
        arr = np.array([polys[i] for i in rows], dtype=np.int64).reshape(len(rows), int(k))
        groups.append((rows, arr))
    return groups


# ---------------------------------------------------------------------------------------------
# text helpers


def _decode(path: Path, data: bytes, what: str = "a text") -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AffError(path, f"not {what} file (holds bytes that are not UTF-8 text)",
                       record=f"line {line}") from None


def is_number(token: str) -> bool:
    """Whether a text token parses as a float (also nan, inf)."""
    try:
        float(token)
    except ValueError:
        return False
    return True


def _floats(path: Path, tokens: Sequence[str], line: int, what: str) -> list[float]:
    try:
        return [float(t) for t in tokens]
    except ValueError:
        raise AffError(path, f"{what}: not a number in {' '.join(tokens)!r}",
                       record=f"line {line}") from None


def _line_record(lines: Sequence[int]) -> Record:
    return lambda i: f"line {lines[i]}"


# ---------------------------------------------------------------------------------------------
# XYZ-style text and PIAD point text

_SEPARATORS = re.compile(r"[\s,;]+")


def _read_text_cloud(path: Path, data: bytes) -> _Parsed:
    lines = _decode(path, data).splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is not None and _is_piad_line(first.split()):
        return _read_piad(path, lines)
    return _read_xyz(path, lines)


def _is_piad_line(tokens: list[str]) -> bool:
    """`[shape_id] name x y z s1..s17`: a name, then exactly 20 numbers.

    The genuine files have two leading names (shape id and class); the word just before the
    numbers is the class and is never numeric, while a hex shape id might parse as a float.
    """
    n = 3 + PIAD_SCORES
    return (len(tokens) in (n + 1, n + 2) and not is_number(tokens[-n - 1])
            and all(is_number(t) for t in tokens[-n:]))


def _read_xyz(path: Path, lines: list[str]) -> _Parsed:
    rows: list[list[float]] = []
    line_nos: list[int] = []
    header_allowed = True
    for no, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tokens = [t for t in _SEPARATORS.split(s) if t]
        if header_allowed and len(tokens) >= 3 and not any(is_number(t) for t in tokens[:3]):
            header_allowed = False  # a column-name line such as "x,y,z" (CSV exports)
            continue
        header_allowed = False
        if len(tokens) < 3:
            raise AffError(path, f"{len(tokens)} value(s), expected at least 3 (x y z)",
                           record=f"line {no}")
        rows.append(_floats(path, tokens[:3], no, "expected x y z"))
        line_nos.append(no)
    points = np.array(rows, np.float64).reshape(-1, 3)
    return _Parsed("xyz", points, _line_record(line_nos))


def _read_piad(path: Path, lines: list[str]) -> _Parsed:
    rows: list[list[str]] = []
    line_nos: list[int] = []
    names: list[str] = []
    width = 0
    for no, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if not width:
            width, names = len(tokens), tokens[: len(tokens) - 3 - PIAD_SCORES]
        if len(tokens) != width:
            raise AffError(path, f"{len(tokens)} fields, expected {width} like the first line "
                           f"({'shape id, class' if width == 22 else 'name'}, x y z, "
                           f"{PIAD_SCORES} scores)", record=f"line {no}")
        rows.append(tokens[len(names):])
        line_nos.append(no)
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        for row, no in zip(rows, line_nos, strict=True):
            _floats(path, row, no, "PIAD point line")
        raise  # unreachable: some row above failed to parse
    record = _line_record(line_nos)
    labels = values[:, 3:]
    _check_finite(path, labels, record, "affordance scores")
    meta = dict(zip(("shape_id", "object_class") if len(names) == 2 else ("name",), names,
                    strict=True))
    return _Parsed("piad", values[:, :3], record, labels=labels, meta=meta)


# ---------------------------------------------------------------------------------------------
# NumPy .npy / .npz

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _read_numpy(path: Path, data: bytes) -> _Parsed:
    if data.startswith(_NPY_MAGIC):
        arr = _npy_array(path, data, None)
        return _array_cloud(path, arr, "npy", None)
    if data.startswith(_ZIP_MAGIC):
        key, arr = _npz_array(path, data)
        return _array_cloud(path, arr, "npz", key)
    raise AffError(path, "not a NumPy .npy or .npz file (wrong magic bytes)")


def _npy_array(path: Path, data: bytes, key: str | None) -> np.ndarray:
    """An .npy file's array, with its header checked against the data actually present
    (np.load would allocate whatever size a corrupt header claims)."""
    buf = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(buf)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else \
            fmt.read_array_header_2_0
        with warnings.catch_warnings():  # odd headers warn about Python 2 before failing
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read_header(buf)
    except Exception as exc:  # literal_eval parses the header: ValueError, SyntaxError,
        # tokenize.TokenError, RecursionError... all mean the same thing here
        raise AffError(path, f"malformed .npy header ({exc})", record=key) from None
    if dtype.hasobject:
        raise AffError(path, "holds Python objects, not numbers (pickled arrays are not "
                       "loaded)", record=key)
    if dtype.itemsize == 0:
        raise AffError(path, f"array of zero-size items (dtype {dtype})", record=key)
    count = math.prod(shape)
    need, have = count * dtype.itemsize, len(data) - buf.tell()
    if need > have:
        raise AffError(path, f"truncated .npy data: shape {shape} needs {need} bytes, "
                       f"{have} present", record=key)
    arr = np.frombuffer(data, dtype, count, buf.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _npz_array(path: Path, data: bytes) -> tuple[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            key = _npz_key(path, list(members))
            blob = zf.read(members[key])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise AffError(path, f"not a readable .npz archive ({exc})") from None
    return key, _npy_array(path, blob, key)


def _npz_key(path: Path, keys: list[str]) -> str:
    for key in ("points", "xyz"):
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise AffError(path, "no 'points' or 'xyz' array, and not a single array to take" +
                   (f" (holds {', '.join(keys)})" if keys else " (holds no arrays)"),
                   hint="save the cloud as np.savez(FILE, points=array_of_shape_Mx3)")


def _array_cloud(path: Path, arr: np.ndarray, kind: str, key: str | None) -> _Parsed:
    if arr.dtype.names and all(c in arr.dtype.names for c in "xyz"):
        arr = np.stack([arr[c] for c in "xyz"], axis=-1)  # structured, as plyfile gives
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise AffError(path, f"points are not real numbers (dtype {arr.dtype})", record=key)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # a batch of one, as models save them
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise AffError(path, f"array has shape {arr.shape}, expected [M, 3] (extra columns "
                       "after x y z are ignored)", record=key)
    prefix = f"{key}[" if key else "point "
    suffix = "]" if key else ""
    return _Parsed(kind, arr[:, :3].astype(np.float64), lambda i: f"{prefix}{i}{suffix}")


# ---------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_END_HEADER = re.compile(rb"^end_header[ \t]*(?:\r?\n|$)", re.MULTILINE)


@dataclass
class _PlyProperty:
    name: str
    dtype: str  # numpy type code without byte order, e.g. "f4"
    count_dtype: str | None = None  # set for list properties


@dataclass
class _PlyElement:
    name: str
    count: int
    properties: list[_PlyProperty]

    def has_lists(self) -> bool:
        return any(p.count_dtype for p in self.properties)


@dataclass
class _PlyHeader:
    fmt: str
    elements: list[_PlyElement]
    body: int  # byte offset of the data
    body_line: int  # line number of the data's first line (ascii)


def _read_ply(path: Path, data: bytes) -> _Parsed:
    header = _ply_header(path, data)
    vertex = next((e for e in header.elements if e.name == "vertex"), None)
    if vertex is None:
        raise AffError(path, "PLY has no 'vertex' element")
    scalars = [p.name for p in vertex.properties if p.count_dtype is None]
    missing = [c for c in "xyz" if c not in scalars]
    if missing:
        raise AffError(path, f"PLY vertex element lacks {', '.join(missing)} (it has: "
                       f"{', '.join(p.name for p in vertex.properties) or 'nothing'})")
    face = next((e for e in header.elements if e.name == "face" and e.count), None)
    want = {"vertex": scalars}
    if face is not None:
        want["face"] = [_face_property(path, face)]
    if header.fmt == "ascii":
        values = _ply_ascii_body(path, data, header, want)
    else:
        values = _ply_binary_body(path, data, header, want, _PLY_FORMATS[header.fmt])
    cols = values["vertex"]
    vertices = np.stack([np.asarray(cols[c], np.float64) for c in "xyz"], axis=1)
    kind = "ply-ascii" if header.fmt == "ascii" else "ply-binary"
    if face is None:
        extra = {k: np.asarray(v, np.asarray(v).dtype.newbyteorder("="))  # native order
                 for k, v in cols.items() if k not in ("x", "y", "z")}
        return _Parsed(kind, vertices, _vertex_record, properties=extra)
    polys = values["face"][want["face"][0]]
    tris = _triangulate(path, polys, len(vertices), lambda i: f"face {i}")
    return _Parsed(kind, vertices, _vertex_record, tris)


def _face_property(path: Path, face: _PlyElement) -> str:
    lists = [p for p in face.properties if p.count_dtype]
    prop = next((p for p in lists if p.name in ("vertex_indices", "vertex_index")),
                lists[0] if len(lists) == 1 else None)
    if prop is None:
        raise AffError(path, "PLY face element has no 'vertex_indices' list property")
    if prop.dtype.startswith("f"):
        raise AffError(path, f"PLY face property {prop.name!r} holds floats, not vertex indices")
    return prop.name


def _ply_header(path: Path, data: bytes) -> _PlyHeader:
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise AffError(path, "not a PLY file (its first line is not 'ply')", record="line 1")
    end = _END_HEADER.search(data)
    if end is None:
        raise AffError(path, "malformed PLY header: no 'end_header' line")
    fmt: str | None = None
    elements: list[_PlyElement] = []
    text = data[: end.start()].decode("ascii", errors="replace")
    for no, line in enumerate(text.splitlines()[1:], start=2):
        tokens = line.split()
        if not tokens or tokens[0] in ("comment", "obj_info"):
            continue
        if tokens[0] == "format":
            if len(tokens) < 2 or tokens[1] not in _PLY_FORMATS:
                raise AffError(path, f"unknown PLY format {' '.join(tokens[1:])!r} (expected "
                               f"{', '.join(_PLY_FORMATS)})", record=f"line {no}")
            fmt = tokens[1]
        elif tokens[0] == "element":
            if len(tokens) != 3 or not (tokens[2].isascii() and tokens[2].isdigit()):
                raise AffError(path, "malformed PLY header: expected 'element <name> <count>'",
                               record=f"line {no}")
            elements.append(_PlyElement(tokens[1], int(tokens[2]), []))
        elif tokens[0] == "property":
            if not elements:
                raise AffError(path, "malformed PLY header: property before any element",
                               record=f"line {no}")
            elements[-1].properties.append(_ply_property(path, tokens, no))
        else:
            raise AffError(path, f"malformed PLY header: unexpected {line.strip()[:40]!r}",
                           record=f"line {no}")
    if fmt is None:
        raise AffError(path, "malformed PLY header: no 'format' line")
    body_line = data[: end.start()].count(b"\n") + 2
    return _PlyHeader(fmt, elements, end.end(), body_line)


def _ply_property(path: Path, tokens: list[str], line: int) -> _PlyProperty:
    if len(tokens) == 5 and tokens[1] == "list":
        count_t, item_t = _PLY_TYPES.get(tokens[2]), _PLY_TYPES.get(tokens[3])
        if count_t is not None and not count_t.startswith("f") and item_t is not None:
            return _PlyProperty(tokens[4], item_t, count_t)
    elif len(tokens) == 3 and tokens[1] in _PLY_TYPES:
        return _PlyProperty(tokens[2], _PLY_TYPES[tokens[1]])
    raise AffError(path, f"malformed PLY property {' '.join(tokens[1:])!r} (expected "
                   "'property <type> <name>' or 'property list <int type> <type> <name>')",
                   record=f"line {line}")


PlyValues = dict[str, dict[str, Any]]  # element -> property -> array, or list of arrays


def _ply_binary_body(path: Path, data: bytes, header: _PlyHeader,
                     want: dict[str, list[str]], endian: str) -> PlyValues:
    out: PlyValues = {}
    offset = header.body
    for el in header.elements:
        keep = want.get(el.name, [])
        if el.count == 0 or not el.properties:
            # nothing stored (a record without properties has no bytes)
            out[el.name] = {name: np.zeros(0) for name in keep}
            continue
        if not el.has_lists():
            table, offset = _ply_fixed(path, data, offset, el, endian, {})
            out[el.name] = {name: table[name] for name in keep}
            continue
        lengths = _ply_first_list_lengths(path, data, offset, el, endian)
        table, end = _ply_try_fixed(path, data, offset, el, endian, lengths)
        if table is not None:  # every record has the first one's list lengths (all triangles)
            out[el.name] = {name: table[name] for name in keep}
            offset = end
        else:
            out[el.name], offset = _ply_walk(path, data, offset, el, endian, keep)
    return out


def _ply_dtype(path: Path, el: _PlyElement, endian: str, lengths: dict[str, int]) -> np.dtype:
    fields: list[tuple[Any, ...]] = []
    for p in el.properties:
        if p.count_dtype is None:
            fields.append((p.name, endian + p.dtype))
        else:
            fields.append((f"{p.name}#count", endian + p.count_dtype))
            fields.append((p.name, endian + p.dtype, (lengths[p.name],)))
    try:
        return np.dtype(fields)
    except (ValueError, TypeError) as exc:  # e.g. a property name used twice
        raise AffError(path, f"malformed PLY element {el.name!r} ({exc})") from None


def _ply_fixed(path: Path, data: bytes, offset: int, el: _PlyElement, endian: str,
               lengths: dict[str, int]) -> tuple[np.ndarray, int]:
    dtype = _ply_dtype(path, el, endian, lengths)
    need = el.count * dtype.itemsize
    if offset + need > len(data):
        raise AffError(path, f"truncated PLY: {el.count} '{el.name}' records need {need} bytes "
                       f"from byte {offset}, the file has {len(data) - offset}")
    return np.frombuffer(data, dtype, el.count, offset), offset + need


def _ply_try_fixed(path: Path, data: bytes, offset: int, el: _PlyElement, endian: str,
                   lengths: dict[str, int]) -> tuple[np.ndarray | None, int]:
    """The element read as fixed-size records, or None when list lengths vary."""
    dtype = _ply_dtype(path, el, endian, lengths)
    need = el.count * dtype.itemsize
    if offset + need > len(data):
        return None, offset  # maybe later lists are shorter; the walk will tell
    table = np.frombuffer(data, dtype, el.count, offset)
    if all((table[f"{name}#count"] == n).all() for name, n in lengths.items()):
        return table, offset + need
    return None, offset


def _ply_first_list_lengths(path: Path, data: bytes, offset: int, el: _PlyElement,
                            endian: str) -> dict[str, int]:
    lengths, _, _ = _ply_walk_record(path, data, offset, el, endian, [], 0)
    return lengths


def _ply_walk(path: Path, data: bytes, offset: int, el: _PlyElement, endian: str,
              keep: list[str]) -> tuple[dict[str, Any], int]:
    """Record by record, for elements whose lists vary in length (mixed polygons)."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    for i in range(el.count):
        _, values, offset = _ply_walk_record(path, data, offset, el, endian, keep, i)
        for name, v in values.items():
            cols[name].append(v)
    out: dict[str, Any] = {}
    for p in el.properties:
        if p.name in keep:
            out[p.name] = cols[p.name] if p.count_dtype else np.concatenate(cols[p.name])
    return out, offset


def _ply_walk_record(path: Path, data: bytes, offset: int, el: _PlyElement, endian: str,
                     keep: list[str], index: int
                     ) -> tuple[dict[str, int], dict[str, np.ndarray], int]:
    """One binary record: (list lengths, kept values, offset after it)."""
    lengths: dict[str, int] = {}
    values: dict[str, np.ndarray] = {}
    for p in el.properties:
        n = 1
        if p.count_dtype is not None:
            cdt = np.dtype(endian + p.count_dtype)
            _ply_need(path, data, offset, cdt.itemsize, el, index)
            n = int(np.frombuffer(data, cdt, 1, offset)[0])
            offset += cdt.itemsize
            if n < 0:
                raise AffError(path, f"negative list length {n} in PLY property {p.name!r}",
                               record=f"{el.name} {index}")
            lengths[p.name] = n
        dt = np.dtype(endian + p.dtype)
        _ply_need(path, data, offset, n * dt.itemsize, el, index)
        if p.name in keep:
            values[p.name] = np.frombuffer(data, dt, n, offset)
        offset += n * dt.itemsize
    return lengths, values, offset


def _ply_need(path: Path, data: bytes, offset: int, size: int, el: _PlyElement,
              index: int) -> None:
    if offset + size > len(data):
        raise AffError(path, f"truncated PLY: the file ends inside '{el.name}' record "
                       f"{index} of {el.count}", record=f"{el.name} {index}")


def _ply_ascii_body(path: Path, data: bytes, header: _PlyHeader,
                    want: dict[str, list[str]]) -> PlyValues:
    text = _decode(path, data[header.body:], "an ASCII PLY")
    lines = iter(enumerate(text.split("\n"), start=header.body_line))
    out: PlyValues = {}
    last = header.body_line - 1  # the last line holding a record, for errors
    for el in header.elements:
        rows: list[tuple[int, list[str]]] = []
        while len(rows) < el.count:
            try:
                no, line = next(lines)
            except StopIteration:
                raise AffError(path, f"truncated PLY: the file ends after {len(rows)} of "
                               f"{el.count} '{el.name}' records", record=f"line {last}"
                               ) from None
            tokens = line.split()
            if tokens:
                rows.append((no, tokens))
                last = no
        if el.name in want:
            out[el.name] = _ply_ascii_values(path, el, rows, want[el.name])
    return out


def _ply_ascii_values(path: Path, el: _PlyElement, rows: list[tuple[int, list[str]]],
                      keep: list[str]) -> dict[str, Any]:
    if not el.has_lists():
        return _ply_ascii_table(path, el, rows, keep)
    cols: dict[str, list[Any]] = {name: [] for name in keep}
    for no, tokens in rows:
        pos = 0
        try:
            for p in el.properties:
                n = 1
                if p.count_dtype is not None:
                    n = int(tokens[pos])
                    pos += 1
                    if n < 0:
                        raise ValueError
                chunk = tokens[pos:pos + n]
                if len(chunk) != n:
                    raise ValueError
                if p.name in keep:
                    cols[p.name].append([int(t) for t in chunk] if p.count_dtype else
                                        float(chunk[0]))
                pos += n
        except ValueError:
            raise AffError(path, f"malformed '{el.name}' record {' '.join(tokens)[:60]!r}",
                           record=f"line {no}") from None
        if pos != len(tokens):
            raise AffError(path, f"'{el.name}' record has {len(tokens)} values, expected {pos}",
                           record=f"line {no}")
    by_name = {p.name: p for p in el.properties}
    return {name: v if by_name[name].count_dtype else np.array(v, by_name[name].dtype)
            for name, v in cols.items()}


def _ply_ascii_table(path: Path, el: _PlyElement, rows: list[tuple[int, list[str]]],
                     keep: list[str]) -> dict[str, Any]:
    width = len(el.properties)
    for no, tokens in rows:
        if len(tokens) != width:
            raise AffError(path, f"'{el.name}' record has {len(tokens)} values, expected "
                           f"{width}", record=f"line {no}")
    try:
        table = np.array([tokens for _, tokens in rows], np.float64).reshape(-1, width)
    except ValueError:
        for no, tokens in rows:
            _floats(path, tokens, no, f"'{el.name}' record")
        raise  # unreachable: some row above failed to parse
    out = {}
    for j, p in enumerate(el.properties):
        if p.name in keep:
            # x, y, z stay float64 (ascii may carry more digits than the declared type);
            # other properties take their declared type, as a binary file would give them
            out[p.name] = table[:, j] if p.name in ("x", "y", "z") else table[:, j].astype(p.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# writing


_OUT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"),
                       ("green", "u1"), ("blue", "u1"), ("score", "<f4")])


def write_ply(path: str | Path, points: np.ndarray, scores: np.ndarray | None,
              colors: np.ndarray | None = None, binary: bool = True,
              faces: np.ndarray | None = None, face_scores: np.ndarray | None = None,
              force: bool = True) -> Path:
    """Write a scored point cloud, or with `faces` (int [F, 3]) a scored mesh, as PLY: x y z
    (float), red green blue (uchar) and score (float) per vertex; colours default to the
    scores' heatmap; `face_scores` [F] adds a score per face. With `scores` None, a plain
    cloud: x y z alone. Atomic: readers never see a half-written file; without `force` an
    existing file is an AffError (see atomic_output). Raises ValueError for inconsistent
    arrays (a caller's bug)."""
    table = _scored_table(points, scores, colors)
    face_table = None if faces is None else _face_table(faces, face_scores, len(table))
    fmt = "binary_little_endian" if binary else "ascii"
    comment = "" if scores is None else "; score = affordance in [0, 1]"
    face_header = [] if face_table is None else [
        f"element face {len(face_table)}", "property list uchar int vertex_indices",
        *(["property float score"] if face_scores is not None else [])]
    header = "\n".join([
        "ply", f"format {fmt} 1.0", f"comment written by affcli{comment}",
        f"element vertex {len(table)}",
        *(f"property {'float' if table.dtype[n].kind == 'f' else 'uchar'} {n}"
          for n in table.dtype.names or ()),
        *face_header, "end_header", "",
    ]).encode("ascii")
    path = Path(path)
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for t in (table, face_table):
            if t is None:
                continue
            if binary:
                f.write(t.tobytes())
                continue
            cols = [t[n].reshape(len(t), -1) for n in t.dtype.names or ()]
            # %.9g: enough digits for every float32 to read back bit-exact
            row = " ".join(("%.9g" if t.dtype[n].kind == "f" else "%d")
                           for n in t.dtype.names or () for _ in range(t[n].reshape(
                               len(t), -1).shape[1]))
            np.savetxt(f, np.hstack(cols) if cols else np.zeros((0, 0)), fmt=row)
    return path


def _face_table(faces: np.ndarray, face_scores: np.ndarray | None, n_vertices: int
                ) -> np.ndarray:
    tri = np.asarray(faces)
    if tri.ndim != 2 or tri.shape[1] != 3 or (len(tri) and (tri.min() < 0
                                                           or tri.max() >= n_vertices)):
        raise ValueError(f"faces must be [F, 3] indices below {n_vertices}")
    fields = [("n", "u1"), ("vertex_indices", "<i4", (3,))]
    if face_scores is not None:
        fs = np.asarray(face_scores, np.float64)
        if fs.shape != (len(tri),) or not np.isfinite(fs).all():
            raise ValueError(f"face_scores must be finite, shape ({len(tri)},)")
        fields.append(("score", "<f4"))
    out = np.empty(len(tri), fields)
    out["n"] = 3
    out["vertex_indices"] = tri
    if face_scores is not None:
        out["score"] = fs
    return out


def _scored_table(points: np.ndarray, scores: np.ndarray | None, colors: np.ndarray | None
                  ) -> np.ndarray:
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points have shape {pts.shape}, expected [M, 3]")
    if scores is None:
        with np.errstate(over="ignore"):
            plain = np.ascontiguousarray(pts, "<f4")
        if not np.isfinite(plain).all():
            raise ValueError("points must be finite and within float32 range")
        return plain.view([("x", "<f4"), ("y", "<f4"), ("z", "<f4")]).reshape(-1)
    sc = np.asarray(scores, np.float64)
    if sc.shape != (len(pts),):
        raise ValueError(f"scores have shape {sc.shape}, expected ({len(pts)},)")
    if not np.isfinite(sc).all() or (sc < 0).any() or (sc > 1).any():
        raise ValueError("scores must be finite and within [0, 1]")
    with np.errstate(over="ignore"):
        pts32 = pts.astype(np.float32)
    if not np.isfinite(pts32).all():
        raise ValueError("points must be finite and within float32 range")
    rgb = heatmap_colors(sc) if colors is None else np.asarray(colors)
    if rgb.shape != (len(pts), 3):
        raise ValueError(f"colors have shape {rgb.shape}, expected ({len(pts)}, 3)")
    if rgb.dtype != np.uint8 and ((rgb < 0).any() or (rgb > 255).any()):
        raise ValueError("colors must be uint8 values 0..255")
    table = np.empty(len(pts), _OUT_DTYPE)
    for j, c in enumerate("xyz"):
        table[c] = pts32[:, j]
    for j, c in enumerate(("red", "green", "blue")):
        table[c] = rgb[:, j]
    table["score"] = sc
    return table
