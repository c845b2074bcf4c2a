"""affcli.data.pointio: every supported format read back to the points it was written with,
meshes sampled on their surface, the genuine PIAD files, and an AffError for each bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from affcli.data.pointio import Shape, read_shape, sample_surface, write_ply
from affcli.errors import AffError
from affcli.views import heatmap_colors

# unit cube [0, 1]^3; vertex 4x + 2y + z, quads listed with their corners in cyclic order
CUBE01 = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float64)
QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
CUBE = CUBE01 - 0.5  # centred: faces at +-0.5
TRIS = [[q[0], q[j], q[j + 1]] for q in QUADS for j in (1, 2)]


def assert_on_cube(points: np.ndarray, lo: float, hi: float, n: int = 10000) -> None:
    """Every point lies on a face of the cube [lo, hi]^3, and each face holds ~1/6 of them."""
    assert points.shape == (n, 3) and points.dtype == np.float64
    assert (points >= lo - 1e-9).all() and (points <= hi + 1e-9).all()
    on_face = (np.abs(points - lo) <= 1e-9) | (np.abs(points - hi) <= 1e-9)  # [n, 3]
    assert on_face.any(axis=1).all()
    per_face = [np.abs(points[:, a] - v) <= 1e-9 for a in range(3) for v in (lo, hi)]
    fractions = np.array([m.mean() for m in per_face])
    # equal areas -> equal shares (6 sigma of a binomial share is ~0.022 at n=10000)
    np.testing.assert_allclose(fractions, 1 / 6, atol=0.025)


# ---------------------------------------------------------------------------------------------
# PLY, written by hand here (independently of write_ply)

NP_CODE = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4",
           "uint": "u4", "float": "f4", "double": "f8"}


def ply_bytes(fmt: str, elements: list[tuple[str, list[tuple[str, ...]], list[list]]]) -> bytes:
    """elements: (name, properties, rows); a property is (type, name) or
    ("list", count type, item type, name); a row holds one value per property (a list for
    list properties)."""
    head = ["ply", f"format {fmt} 1.0", "comment made by the test", "obj_info hand-written"]
    for name, props, rows in elements:
        head.append(f"element {name} {len(rows)}")
        head += ["property " + " ".join(p) for p in props]
    head.append("end_header")
    out = bytearray(("\n".join(head) + "\n").encode())
    endian = ">" if fmt == "binary_big_endian" else "<"
    for _, props, rows in elements:
        for row in rows:
            if fmt == "ascii":
                parts = []
                for p, v in zip(props, row, strict=True):
                    parts += [str(len(v)), *map(str, v)] if p[0] == "list" else [repr(v)]
                out += (" ".join(parts) + "\n").encode()
                continue
            for p, v in zip(props, row, strict=True):
                if p[0] == "list":
                    out += np.array(len(v), endian + NP_CODE[p[1]]).tobytes()
                    out += np.array(v, endian + NP_CODE[p[2]]).tobytes()
                else:
                    out += np.array(v, endian + NP_CODE[p[0]]).tobytes()
    return bytes(out)


VERTEX_PROPS = [("double", "x"), ("float", "y"), ("short", "z"), ("float", "nx"),
                ("uchar", "red"), ("double", "quality")]
# an element before the vertices, with a list, so skipping it must honour list lengths
INFO = ("info", [("list", "uchar", "int", "ids"), ("float", "w")], [[[1, 2, 3], 0.5],
                                                                   [[], 1.5]])
EDGE = ("edge", [("int", "vertex1"), ("int", "vertex2")], [[0, 1], [1, 3]])
PLY_FORMATS = ["ascii", "binary_little_endian", "binary_big_endian"]


def cube_vertex_rows(offset: float = 0.0) -> list[list]:
    return [[float(x) + offset, float(y), int(z), 0.25, 200 + i, i / 8]
            for i, (x, y, z) in enumerate(CUBE01)]


@pytest.mark.parametrize("fmt", PLY_FORMATS)
def test_ply_point_cloud_any_types_skips_other_elements(tmp_path, fmt):
    verts = ("vertex", VERTEX_PROPS, cube_vertex_rows(0.125))
    empty_faces = ("face", [("list", "uchar", "int", "vertex_indices")], [])
    path = tmp_path / "cloud.ply"
    path.write_bytes(ply_bytes(fmt, [INFO, verts, empty_faces, EDGE]))
    shape = read_shape(path)
    assert isinstance(shape, Shape) and shape.source == path
    assert shape.kind == ("ply-ascii" if fmt == "ascii" else "ply-binary")
    assert not shape.is_mesh and shape.labels is None
    np.testing.assert_array_equal(shape.points, CUBE01 + [0.125, 0, 0])
    assert list(shape.properties) == ["nx", "red", "quality"]
    np.testing.assert_array_equal(shape.properties["red"], np.arange(200, 208))
    assert shape.properties["red"].dtype == np.uint8
    np.testing.assert_allclose(shape.properties["quality"], np.arange(8) / 8)


@pytest.mark.parametrize("fmt", PLY_FORMATS)
@pytest.mark.parametrize("polygons", ["quads", "mixed"])
def test_ply_mesh_is_sampled_on_its_surface(tmp_path, fmt, polygons):
    # quads: every face record has the same list length (read as fixed-size records);
    # mixed: triangles and quads (read record by record)
    faces = QUADS if polygons == "quads" else QUADS[:3] + TRIS[6:]
    face_el = ("face", [("list", "uchar", "int", "vertex_indices"), ("int", "flags")],
               [[f, 7] for f in faces])
    path = tmp_path / "cube.ply"
    path.write_bytes(ply_bytes(fmt, [INFO, ("vertex", VERTEX_PROPS, cube_vertex_rows()),
                                     face_el, EDGE]))
    shape = read_shape(path)
    assert shape.is_mesh and shape.properties == {}
    assert_on_cube(shape.points, 0.0, 1.0)


@pytest.mark.parametrize("binary", [True, False])
def test_write_ply_round_trip(tmp_path, binary):
    rng = np.random.default_rng(3)
    points = rng.normal(size=(500, 3)) * 10
    scores = rng.random(500)
    scores[:2] = 0.0, 1.0
    out = write_ply(tmp_path / "sub" / "pred.ply", points, scores, binary=binary)
    assert out == tmp_path / "sub" / "pred.ply"
    assert [p.name for p in out.parent.iterdir()] == ["pred.ply"]  # no temp file left
    head = out.read_bytes()[:400].decode("ascii", "replace")
    for prop in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue",
                 "float score"):
        assert f"property {prop}\n" in head
    shape = read_shape(out)
    assert shape.kind == ("ply-binary" if binary else "ply-ascii") and not shape.is_mesh
    # float32 on disk: exact after the same cast (ascii keeps 9 significant digits)
    np.testing.assert_array_equal(shape.points.astype(np.float32), points.astype(np.float32))
    np.testing.assert_array_equal(shape.properties["score"], scores.astype(np.float32))
    rgb = np.stack([shape.properties[c] for c in ("red", "green", "blue")], axis=1)
    np.testing.assert_array_equal(rgb, heatmap_colors(scores))


def test_write_ply_custom_colors_and_overwrite(tmp_path):
    path = tmp_path / "p.ply"
    path.write_text("old")
    pts = np.eye(3)
    colors = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], np.uint8)
    write_ply(path, pts, np.array([0.1, 0.2, 0.3]), colors=colors)
    shape = read_shape(path)
    np.testing.assert_array_equal(shape.properties["green"], [2, 5, 8])
    np.testing.assert_array_equal(shape.points, pts)


@pytest.mark.parametrize("scores, message", [
    (np.array([0.1, np.nan, 0.2]), r"scores must be finite and within \[0, 1\]"),
    (np.array([0.1, 1.5, 0.2]), r"scores must be finite and within \[0, 1\]"),
    (np.zeros(2), r"scores have shape \(2,\), expected \(3,\)"),
])
def test_write_ply_rejects_bad_scores(tmp_path, scores, message):
    with pytest.raises(ValueError, match=message):
        write_ply(tmp_path / "p.ply", np.zeros((3, 3)), scores)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# OBJ, OFF, STL

OBJ_CUBE = """\
# a cube with texture coordinates and normals
mtllib cube.mtl
o cube
v -0.5 -0.5 -0.5
v -0.5 -0.5 0.5 1.0
v -0.5 0.5 -0.5 0.9 0.1 0.1
v -0.5 0.5 0.5
v 0.5 -0.5 -0.5
v 0.5 -0.5 0.5
v 0.5 0.5 -0.5
v 0.5 0.5 0.5
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vn 1 0 0
g sides
usemtl grey
s off
f 1/1/1 2/2/1 4/3/1 3/4/1
f 5/1 7/2 8/3 6/4
f 1//1 5//1 6//1 2//1
f -6 -5 -1 -2
f 1/1/1 3/2/1 7/3/1
f 1 7 5
f -7/1/1 -3/2/1 -1/3/1 -5/4/1
l 1 2
"""


def test_obj_mesh_with_vt_vn_negative_indices_and_quads(tmp_path):
    path = tmp_path / "cube.obj"
    path.write_text(OBJ_CUBE)
    shape = read_shape(path, mesh_samples=10000, seed=1)
    assert shape.kind == "obj" and shape.is_mesh
    assert_on_cube(shape.points, -0.5, 0.5)


def test_obj_without_faces_is_a_cloud(tmp_path):
    path = tmp_path / "pts.obj"
    path.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in CUBE) + "vn 0 0 1\n")
    shape = read_shape(path)
    assert shape.kind == "obj" and not shape.is_mesh
    np.testing.assert_array_equal(shape.points, CUBE)


def off_text(fused: bool) -> str:
    head = "OFF8 6 0\n" if fused else "# made by hand\nOFF\n\n8 6 0  # counts\n"
    verts = "".join(f"{x} {y} {z}\n" for x, y, z in CUBE)
    faces = "".join(f"4 {' '.join(map(str, q))}  255 0 0\n" for q in QUADS)
    return head + verts + faces


@pytest.mark.parametrize("fused", [False, True])
def test_off_mesh(tmp_path, fused):
    path = tmp_path / "cube.off"
    path.write_text(off_text(fused))
    shape = read_shape(path)
    assert shape.kind == "off" and shape.is_mesh
    assert_on_cube(shape.points, -0.5, 0.5)


def test_off_without_faces_is_a_cloud(tmp_path):
    path = tmp_path / "pts.off"
    path.write_text("COFF 8 0 0\n" + "".join(f"{x} {y} {z} 9 9 9 255\n" for x, y, z in CUBE))
    shape = read_shape(path)
    assert not shape.is_mesh
    np.testing.assert_array_equal(shape.points, CUBE)


def stl_binary(tris: np.ndarray, header: bytes = b"solid looks like ascii but is not") -> bytes:
    out = header.ljust(80, b" ") + struct.pack("<I", len(tris))
    for t in tris:
        out += struct.pack("<3f", 0, 0, 0) + t.astype("<f4").tobytes() + b"\0\0"
    return out


def stl_ascii(tris: np.ndarray) -> str:
    body = "".join(
        " facet normal 0 0 0\n  outer loop\n"
        + "".join(f"   vertex {x:.6e} {y:.6e} {z:.6e}\n" for x, y, z in t)
        + "  endloop\n endfacet\n" for t in tris)
    return f"solid cube\n{body}endsolid cube\n"


@pytest.mark.parametrize("binary", [True, False])
def test_stl_mesh(tmp_path, binary):
    tris = CUBE[np.array(TRIS)]
    path = tmp_path / "cube.stl"
    if binary:
        path.write_bytes(stl_binary(tris))
    else:
        path.write_text(stl_ascii(tris))
    shape = read_shape(path)
    assert shape.kind == "stl" and shape.is_mesh
    assert_on_cube(shape.points, -0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# sampling


def test_sampling_is_area_weighted_and_deterministic(tmp_path):
    # two squares: side 1 at z=0, side 2 at z=5 -> a fifth and four fifths of the points
    small = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    big = [[0, 0, 5], [2, 0, 5], [2, 2, 5], [0, 2, 5]]
    path = tmp_path / "two.obj"
    path.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in small + big)
                    + "f 1 2 3 4\nf 5 6 7 8\n")
    a = read_shape(path, mesh_samples=20000, seed=5).points
    assert a.shape == (20000, 3)
    on_big = a[:, 2] == 5.0
    assert ((a[:, 2] == 0.0) | on_big).all()
    assert abs(on_big.mean() - 0.8) < 0.015
    # uniform inside each square: its quadrants hold equal shares
    quadrant = (a[on_big, 0] > 1).astype(int) * 2 + (a[on_big, 1] > 1)
    np.testing.assert_allclose(np.bincount(quadrant) / on_big.sum(), 0.25, atol=0.02)
    np.testing.assert_array_equal(read_shape(path, mesh_samples=20000, seed=5).points, a)
    assert not np.array_equal(read_shape(path, mesh_samples=20000, seed=6).points, a)


def test_sample_surface_never_picks_zero_area_triangles():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]], np.float64)
    tris = np.array([[3, 3, 3], [0, 1, 2], [3, 3, 0]])  # zero-area triangles around the real one
    pts = sample_surface(verts, tris, 5000, seed=0)
    assert (pts[:, 2] == 0).all() and (pts[:, :2].sum(axis=1) <= 1 + 1e-12).all()


# ---------------------------------------------------------------------------------------------
# text clouds and NumPy arrays


XYZ_TEXT = """\
# exported by a scanner
x, y, z, intensity
0.5, -1.25, 3.0, 17
   # an indented comment

1e-3 2 3
-4,5,6.5,1,2
7;8;9
"""
XYZ_POINTS = [[0.5, -1.25, 3.0], [1e-3, 2, 3], [-4, 5, 6.5], [7, 8, 9]]


@pytest.mark.parametrize("ext", [".xyz", ".txt", ".csv", ".pts", ".XYZ"])
def test_xyz_text(tmp_path, ext):
    path = tmp_path / f"cloud{ext}"
    path.write_text(XYZ_TEXT)
    shape = read_shape(path)
    assert shape.kind == "xyz" and not shape.is_mesh and shape.labels is None
    np.testing.assert_array_equal(shape.points, XYZ_POINTS)


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(4, 3),
    np.arange(24, dtype=np.float64).reshape(4, 6),  # extra columns (normals) are dropped
    np.arange(12, dtype=np.int16).reshape(4, 3),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(4, 3)),
    np.arange(12, dtype=">f8").reshape(1, 4, 3),  # a batch of one, big-endian
], ids=["f32", "6cols", "int16", "fortran", "batch1"])
def test_npy(tmp_path, arr):
    path = tmp_path / "cloud.npy"
    np.save(path, arr)
    shape = read_shape(path)
    assert shape.kind == "npy" and shape.points.dtype == np.float64
    np.testing.assert_array_equal(shape.points, arr.reshape(-1, arr.shape[-1])[:, :3])


def test_npy_structured_xyz(tmp_path):
    arr = np.zeros(5, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")])
    arr["x"], arr["y"], arr["z"] = np.arange(5), 1, 2
    np.save(tmp_path / "s.npy", arr)
    np.testing.assert_array_equal(read_shape(tmp_path / "s.npy").points[:, 0], np.arange(5))


@pytest.mark.parametrize("save", [
    lambda p, a: np.savez(p, labels=np.zeros(4), points=a),
    lambda p, a: np.savez_compressed(p, normals=np.zeros((4, 3)), xyz=a),
    lambda p, a: np.savez(p, a),  # the only array, saved as arr_0
], ids=["points", "xyz-compressed", "only"])
def test_npz(tmp_path, save):
    arr = np.random.default_rng(0).normal(size=(4, 3))
    save(tmp_path / "cloud.npz", arr)
    shape = read_shape(tmp_path / "cloud.npz")
    assert shape.kind == "npz"
    np.testing.assert_array_equal(shape.points, arr)


# ---------------------------------------------------------------------------------------------
# PIAD point text


@pytest.mark.parametrize("name", ["Point_Test_Bag_1.txt", "Point_Test_Chair_1.txt"])
def test_genuine_piad_files(piad_demo, name):
    path = piad_demo / name
    shape = read_shape(path)
    assert shape.kind == "piad" and not shape.is_mesh
    table = np.loadtxt(path, usecols=range(2, 22))
    assert shape.points.shape == (2048, 3) and shape.labels is not None
    np.testing.assert_array_equal(shape.points, table[:, :3])
    np.testing.assert_array_equal(shape.labels, table[:, 3:])
    assert shape.labels.shape == (2048, 17)
    first = path.read_text().split(maxsplit=2)
    assert shape.meta == {"shape_id": first[0], "object_class": first[1]}


def test_piad_single_name_variant(tmp_path):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=(5, 3)), rng.random((5, 17))], axis=1)
    path = tmp_path / "mug.txt"
    path.write_text("".join("mug " + " ".join(map(repr, row.tolist())) + "\n" for row in values))
    shape = read_shape(path)
    assert shape.kind == "piad" and shape.meta == {"name": "mug"}
    np.testing.assert_array_equal(shape.points, values[:, :3])
    np.testing.assert_array_equal(shape.labels, values[:, 3:])


def test_text_with_20_numeric_columns_is_xyz_not_piad(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_text("\n".join(" ".join(str(i + j) for j in range(21)) for i in range(3)))
    shape = read_shape(path)
    assert shape.kind == "xyz" and shape.labels is None
    np.testing.assert_array_equal(shape.points[:, 0], [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# bad input: an AffError naming the file (and the record where there is one)


def good_ply_binary() -> bytes:
    return ply_bytes("binary_little_endian", [("vertex", VERTEX_PROPS, cube_vertex_rows()),
                                              ("face", [("list", "uchar", "int",
                                                         "vertex_indices")],
                                               [[q] for q in QUADS])])


def nan_ply() -> bytes:
    rows = cube_vertex_rows()
    rows[1][0] = float("nan")
    return ply_bytes("binary_big_endian", [("vertex", VERTEX_PROPS, rows)])


def npy_bytes(arr: np.ndarray, tmp: Path) -> bytes:
    np.save(tmp / "x.npy", arr)
    return (tmp / "x.npy").read_bytes()


PLY_HEAD = b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
BAD_INPUTS = [
    # (file name, content, words in the reason, record)
    ("empty.ply", b"", "empty file", None),
    ("blank.xyz", b"\n  \n# only a comment\n", "no points", None),
    ("two.xyz", b"0 0 0\n1 1 1\n", "only 2 points", None),
    ("nan.xyz", b"0 0 0\n1 1 1\n2 nan 2\n3 3 3\n", "NaN", "line 3"),
    ("inf.csv", b"0,0,0\n1,1,1\n\n2,2,-inf\n", "NaN/inf", "line 4"),
    ("short.xyz", b"0 0 0\n1 1\n2 2 2\n", "expected at least 3", "line 2"),
    ("word.xyz", b"0 0 0\n1 one 1\n2 2 2\n", "not a number", "line 2"),
    ("binary.txt", b"\x00\xff\xfe\x01" * 10, "not UTF-8", "line 1"),
    ("cloud.las", b"LASF....", "unknown file type '.las'", None),
    ("noext", b"0 0 0\n", "unknown file type", None),
    # PLY
    ("notply.ply", b"solid x\nfacet\n", "not a PLY file", "line 1"),
    ("noend.ply", PLY_HEAD + b"property float z\n0 0 0\n", "no 'end_header'", None),
    ("format.ply", PLY_HEAD.replace(b"ascii", b"binary_middle_endian")
     + b"property float z\nend_header\n", "unknown PLY format", "line 2"),
    ("noformat.ply", PLY_HEAD.replace(b"format ascii 1.0\n", b"")
     + b"property float z\nend_header\n", "no 'format' line", None),
    ("noz.ply", PLY_HEAD + b"end_header\n0 0\n1 1\n2 2\n", "lacks z", None),
    ("type.ply", PLY_HEAD + b"property float128 z\nend_header\n", "malformed PLY property",
     "line 6"),
    ("count.ply", PLY_HEAD.replace(b"vertex 3", b"vertex -3") + b"property float z\n"
     b"end_header\n", "element <name> <count>", "line 3"),
    ("novertex.ply", b"ply\nformat ascii 1.0\nelement point 1\nproperty float x\nend_header\n1\n",
     "no 'vertex' element", None),
    ("fewrows.ply", PLY_HEAD + b"property float z\nend_header\n0 0 0\n1 1 1\n", "truncated PLY",
     "line 9"),
    ("badrow.ply", PLY_HEAD + b"property float z\nend_header\n0 0 0\n1 1\n2 2 2\n", "2 values",
     "line 9"),
    ("badnum.ply", PLY_HEAD + b"property float z\nend_header\n0 0 0\n1 x 1\n2 2 2\n",
     "not a number", "line 9"),
    ("trunc.ply", good_ply_binary()[:-3], "ends inside 'face' record 5 of 6", "face 5"),
    ("truncvert.ply", good_ply_binary()[:good_ply_binary().index(b"end_header") + 40],
     "8 'vertex' records need", None),
    ("nan.ply", nan_ply(), "NaN", "vertex 1"),
    ("faceidx.ply", ply_bytes("ascii", [("vertex", VERTEX_PROPS, cube_vertex_rows()),
                                        ("face", [("list", "uchar", "int", "vertex_indices")],
                                         [[[0, 1, 2]], [[0, 1, 8]]])]),
     "refers to vertex 8", "face 1"),
    ("twocorner.ply", ply_bytes("binary_little_endian",
                                [("vertex", VERTEX_PROPS, cube_vertex_rows()),
                                 ("face", [("list", "uchar", "int", "vertex_indices")],
                                  [[[0, 1, 2]], [[0, 1]]])]), "face with 2 vertices", "face 1"),
    # OBJ, OFF, STL: read by trimesh, whose messages name the file and its own reason
    ("v.obj", b"v 0 0 0\nv 1 1\nv 2 2 2\n", "only 2 points", None),
    ("vnum.obj", b"v 0 0 0\nv 1 a 1\nv 2 2 2\n", "not a readable OBJ", None),
    ("range.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "not a readable OBJ", None),
    ("huge.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 99999999999999999999\n",
     "not a readable OBJ", None),
    ("zero.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "degenerate mesh", None),
        ("corner.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/a 2 x/1\n", "not a readable OBJ", None),
    ("line.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", "only 2 points", None),
    ("flat.obj", b"v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\n", "degenerate mesh", None),
    ("objnan.obj", b"v 0 0 0\nv 1 0 inf\nv 0 1 0\nf 1 2 3\n", "NaN/inf", "vertex 1"),
    # OFF
    ("nohead.off", b"8 6 0\n0 0 0\n", "not a readable OFF", None),
    ("counts.off", b"OFF\nthree 1 0\n", "not a readable OFF", None),
    ("trunc.off", b"OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n", "not a readable OFF", None),
        ("binary.off", b"OFF BINARY\n\x00\x00", "not a readable OFF", None),
    ("offnan.off", b"OFF\n3 0 0\n0 0 0\n1 nan 0\n0 1 0\n", "NaN", "vertex 1"),
    # STL
    ("trunc.stl", stl_binary(CUBE[np.array(TRIS)])[:-10], "wrong size", None),
    ("tiny.stl", b"\x00" * 20, "not an STL file", None),
    ("loop.stl", b"solid a\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\n"
     b"endloop\nendfacet\nendsolid\n", "not a readable STL", None),
    ("cut.stl", b"solid a\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\n",
     "no points", None),
    ("nofacet.stl", b"solid a\nendsolid a\n", "no points", None),
    ("stlnan.stl", stl_binary(np.array([[[0, 0, 0], [1, 0, 0], [0, np.nan, 0]]])), "NaN",
     "vertex 2"),
    # PIAD text
    ("Point_Bad_1.txt", b"id Mug " + b"0.5 " * 20 + b"\nid Mug " + b"0.5 " * 19 + b"\n",
     "21 fields, expected 22", "line 2"),
    ("Point_Nan_1.txt", b"id Mug " + b"0.5 " * 20 + b"\nid Mug 1 nan 1 " + b"0.5 " * 17
     + b"\nid Mug " + b"0.5 " * 20 + b"\n", "NaN", "line 2"),
    ("Point_Word_1.txt", b"id Mug " + b"0.5 " * 20 + b"\nid Mug 1 x 1 " + b"0.5 " * 17
     + b"\n", "not a number", "line 2"),
]


@pytest.mark.parametrize("name, content, reason, record", BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_afferror(tmp_path, name, content, reason, record):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AffError) as info:
        read_shape(path, mesh_samples=100)
    err = info.value
    assert err.file == str(path) and str(path) in str(err)
    assert reason in err.reason, err.reason
    assert err.record == record


def test_bad_numpy_inputs(tmp_path):
    cases = [
        ("obj.npy", npy_bytes(np.array([[1, 2, 3], None], dtype=object), tmp_path),
         "Python objects", None),
        ("trunc.npy", npy_bytes(np.zeros((100, 3)), tmp_path)[:-8], "truncated .npy", None),
        ("shape.npy", npy_bytes(np.zeros((10, 2)), tmp_path), "shape (10, 2)", None),
        ("flat.npy", npy_bytes(np.zeros(9), tmp_path), "shape (9,)", None),
        ("bool.npy", npy_bytes(np.zeros((4, 3), bool), tmp_path), "not real numbers", None),
        ("inf.npy", npy_bytes(np.array([[0, 0, 0], [1, 1, 1], [2, np.inf, 2.0]]), tmp_path),
         "NaN/inf", "point 2"),
        ("none.npy", npy_bytes(np.zeros((0, 3)), tmp_path), "no points", None),
        ("magic.npy", b"\x93NUMPY\x01\x00\xff\xff{'descr'", "malformed .npy header", None),
        ("text.npz", b"0 0 0\n1 1 1\n", "not a NumPy", None),
        ("zip.npz", b"PK\x03\x04garbage", "not a readable .npz", None),
    ]
    np.savez(tmp_path / "keys.npz", a=np.zeros((4, 3)), b=np.zeros((4, 3)))
    cases.append(("keys.npz", (tmp_path / "keys.npz").read_bytes(), "holds a, b", None))
    np.savez(tmp_path / "nanz.npz", points=np.array([[0, 0, 0], [np.nan, 1, 1], [2, 2, 2.0]]))
    cases.append(("nanz.npz", (tmp_path / "nanz.npz").read_bytes(), "NaN", "points[1]"))
    for name, content, reason, record in cases:
        path = tmp_path / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        with pytest.raises(AffError) as info:
            read_shape(path)
        assert info.value.file == str(path), name
        assert reason in info.value.reason, (name, info.value.reason)
        assert info.value.record == record, name


def test_missing_file_folder_and_bad_option(tmp_path):
    with pytest.raises(AffError, match="file not found") as info:
        read_shape(tmp_path / "nope.ply")
    assert info.value.file == str(tmp_path / "nope.ply")
    (tmp_path / "dir.ply").mkdir()
    with pytest.raises(AffError, match="is a folder"):
        read_shape(tmp_path / "dir.ply")
    (tmp_path / "ok.xyz").write_text("0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(AffError, match="at least 3"):
        read_shape(tmp_path / "ok.xyz", mesh_samples=0)


def corpus(tmp_path: Path) -> dict[str, bytes]:
    """One valid file per reader, for the corruption sweep."""
    np.save(tmp_path / "c.npy", np.arange(30.0).reshape(10, 3))
    np.savez(tmp_path / "c.npz", points=np.arange(30.0).reshape(10, 3))
    face = ("face", [("list", "uchar", "int", "vertex_indices")], [[q] for q in QUADS])
    return {
        "a.ply": ply_bytes("ascii", [INFO, ("vertex", VERTEX_PROPS, cube_vertex_rows()), face]),
        "b.ply": ply_bytes("binary_big_endian", [INFO, ("vertex", VERTEX_PROPS,
                                                        cube_vertex_rows()), face, EDGE]),
        "m.ply": ply_bytes("binary_little_endian",
                           [("vertex", VERTEX_PROPS, cube_vertex_rows()),
                            ("face", face[1], [[t] for t in TRIS[:4]] + [[q] for q in QUADS])]),
        "c.obj": OBJ_CUBE.encode(),
        "c.off": off_text(fused=False).encode(),
        "a.stl": stl_ascii(CUBE[np.array(TRIS)]).encode(),
        "b.stl": stl_binary(CUBE[np.array(TRIS)]),
        "c.xyz": XYZ_TEXT.encode(),
        "c.npy": (tmp_path / "c.npy").read_bytes(),
        "c.npz": (tmp_path / "c.npz").read_bytes(),
        "c.glb": _box((0, 0, 0)).export(file_type="glb"),
    }


def test_truncated_or_corrupted_files_raise_only_afferror(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    out.mkdir()
    tried = 0
    files = corpus(tmp_path)
    for name, data in files.items():
        variants = [data[:cut] for cut in np.linspace(1, len(data) - 1, 25).astype(int)]
        for _ in range(25):
            b = bytearray(data)
            for i in rng.integers(0, len(b), size=3):
                b[i] = int(rng.integers(0, 256))
            variants.append(bytes(b))
        for v in variants:
            path = out / name
            path.write_bytes(v)
            try:
                shape = read_shape(path, mesh_samples=50)
            except AffError as err:
                assert err.file == str(path)
            else:
                assert np.isfinite(shape.points).all() and len(shape.points) >= 3
            tried += 1
    assert tried == 50 * len(files) >= 550


# ---------------------------------------------------------------------------------------------
# formats read through trimesh: scenes, glTF, 3MF, COLLADA; the size limit


def _box(centre, size=1.0):
    import trimesh

    box = trimesh.creation.box(extents=(size, size, size))
    box.apply_translation(centre)
    return box


def test_glb_scene_of_two_meshes_is_merged_in_world_coordinates(tmp_path):
    import trimesh

    scene = trimesh.Scene()
    # the second box is placed by its node's transform, not by its vertices
    scene.add_geometry(_box((0, 0, 0)), node_name="a")
    scene.add_geometry(_box((0, 0, 0)), node_name="b",
                       transform=trimesh.transformations.translation_matrix([10, 0, 0]))
    path = tmp_path / "two.glb"
    path.write_bytes(scene.export(file_type="glb"))
    shape = read_shape(path, mesh_samples=4000)
    assert shape.kind == "glb" and shape.is_mesh
    assert len(shape.vertices) == 16 and len(shape.faces) == 24
    assert shape.faces.max() == 15  # the second mesh's faces index its own vertices
    left = shape.points[:, 0] < 5
    assert 0.4 < left.mean() < 0.6  # equal areas, so about half the samples each
    assert np.allclose(shape.points[~left].mean(axis=0), [10, 0, 0], atol=0.1)


@pytest.mark.parametrize("fmt", ["gltf", "3mf", "dae"])
def test_other_mesh_formats(tmp_path, fmt):
    box = _box((1, 2, 3), size=2.0)
    path = tmp_path / f"box.{fmt}"
    if fmt == "gltf":  # a .gltf with its buffer in a separate .bin beside it
        files = box.export(file_type="gltf")
        for name, data in files.items():
            (tmp_path / ("box.gltf" if name.endswith(".gltf") else name)).write_bytes(data)
        assert any(name.endswith(".bin") for name in files)
    else:
        path.write_bytes(box.export(file_type=fmt))
    shape = read_shape(path, mesh_samples=500)
    assert shape.kind == fmt and shape.is_mesh and len(shape.faces) == 12
    assert np.allclose(shape.points.min(axis=0), [0, 1, 2], atol=1e-6)
    assert np.allclose(shape.points.max(axis=0), [2, 3, 4], atol=1e-6)


def test_obj_without_its_material_file_reads(tmp_path):
    path = tmp_path / "m.obj"
    path.write_text("mtllib missing.mtl\nusemtl red\n" + OBJ_CUBE)
    shape = read_shape(path, mesh_samples=100)
    assert shape.is_mesh and len(shape.faces) >= 12


def test_a_file_beyond_the_size_limit_is_refused(tmp_path, monkeypatch):
    from affcli.data import pointio

    path = tmp_path / "big.xyz"
    path.write_text(XYZ_TEXT)
    monkeypatch.setattr(pointio, "MAX_FILE_BYTES", 10)
    with pytest.raises(AffError, match="affcli reads shapes up to") as info:
        read_shape(path)
    assert info.value.file == str(path)
