"""Mesh and scene files through `trimesh`: OBJ, OFF, STL (ascii or binary), GLB/glTF, 3MF
and COLLADA (.dae). (PLY keeps affcli's own reader, see `pointio`.) A scene of several meshes is
merged in world coordinates (each node's transform applied). trimesh's own failures, whatever
their type, become one AffError naming the file; the checks after it (finite coordinates,
faces that name existing vertices) name the vertex or face."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affcli.errors import AffError

# extension -> trimesh's file type
MESH_TYPES = {".obj": "obj", ".off": "off", ".stl": "stl", ".glb": "glb",
              ".gltf": "gltf", ".3mf": "3mf", ".dae": "dae"}


@dataclass
class MeshData:
    """What a mesh file holds: vertices and triangles (none for a point cloud)."""

    kind: str
    vertices: np.ndarray  # float64 [V, 3]
    faces: np.ndarray  # int64 [F, 3]


def read_mesh(path: Path, data: bytes) -> MeshData:
    """The geometry of a mesh/scene file's bytes (`path` names it and its folder resolves
    what a glTF or OBJ refers to: buffers, materials)."""
    file_type = MESH_TYPES[path.suffix.lower()]
    if file_type == "stl":
        _check_stl(path, data)
    loaded = _load(path, data, file_type)
    try:
        return _mesh_data(path, loaded, file_type)
    except (ValueError, TypeError, IndexError) as exc:  # what trimesh read is inconsistent
        raise AffError(path, f"not a readable {file_type.upper()} file ({exc})") from None


def _mesh_data(path: Path, loaded: Any, kind: str) -> MeshData:
    geometries = _geometries(path, loaded)
    meshes = [g for g in geometries if _is_mesh(g)]
    if meshes:
        vertices, faces, offset = [], [], 0
        for g in meshes:  # one mesh: the vertex order of the file, as trimesh read it
            vertices.append(np.asarray(g.vertices, np.float64))
            faces.append(np.asarray(g.faces, np.int64).reshape(-1, 3) + offset)
            offset += len(g.vertices)
        mesh = MeshData(kind, np.concatenate(vertices), np.concatenate(faces))
        _check_faces(path, mesh)
        return mesh
    points = [np.asarray(g.vertices, np.float64).reshape(-1, 3) for g in geometries
              if hasattr(g, "vertices")]
    vertices = np.concatenate(points) if points else np.zeros((0, 3))
    return MeshData(kind, vertices, np.zeros((0, 3), np.int64))


def _load(path: Path, data: bytes, file_type: str) -> Any:
    import trimesh

    # trimesh reports what it skips (a missing .mtl, unknown elements) through logging;
    # a shape that loads needs no such message, and one that does not gets an AffError
    logging.getLogger("trimesh").setLevel(logging.CRITICAL)
    resolver = trimesh.resolvers.FilePathResolver(str(path.parent / "_"))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return trimesh.load(io.BytesIO(data), file_type=file_type, process=False,
                                resolver=resolver, skip_materials=True)
    except Exception as exc:  # noqa: BLE001 (trimesh raises whatever its parsers raise)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise AffError(path, f"not a readable {file_type.upper()} file ("
                       f"{type(exc).__name__}{': ' + reason if reason else ''})") from None


def _check_stl(path: Path, data: bytes) -> None:
    """A binary STL's size is fixed by its facet count; an ASCII one starts with 'solid' and
    is text (binary headers often start with 'solid' too)."""
    if len(data) >= 84 and len(data) == 84 + 50 * int(np.frombuffer(data[80:84], "<u4")[0]):
        return
    if data.lstrip()[:5].lower() == b"solid" and b"\x00" not in data[:4096]:
        return
    if len(data) < 84:
        raise AffError(path, f"not an STL file ({len(data)} bytes: too short for a binary STL "
                       "and no 'solid' line)")
    facets = int(np.frombuffer(data[80:84], "<u4")[0])
    if len(data) != 84 + 50 * facets:
        raise AffError(path, f"wrong size for a binary STL of {facets} facets: "
                       f"{len(data)} bytes, expected {84 + 50 * facets} (truncated?)")


def _geometries(path: Path, loaded: Any) -> list[Any]:
    """The geometries of a loaded file, a scene's with their world transforms applied."""
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return list(loaded.dump())
        except Exception as exc:  # noqa: BLE001
            raise AffError(path, f"cannot place the scene's parts ({exc})") from None
    return [loaded]


def _is_mesh(geometry: Any) -> bool:
    faces = getattr(geometry, "faces", None)
    return faces is not None and len(faces) > 0


def _check_faces(path: Path, mesh: MeshData) -> None:
    n = len(mesh.vertices)
    bad = (mesh.faces < 0) | (mesh.faces >= n)
    if bad.any():
        f = int(np.argmax(bad.any(axis=1)))
        v = int(mesh.faces[f][bad[f]][0])
        raise AffError(path, f"face refers to vertex {v}, but the file has {n} vertices",
                       record=f"face {f}")


def write_mesh_glb(path: Path, vertices: np.ndarray, faces: np.ndarray,
                   colors: np.ndarray, force: bool = True) -> Path:
    """A GLB of a mesh with per-vertex colours (uint8 [V, 3]), atomically (without `force`
    never over an existing file): Blender, web viewers and phones open it."""
    import trimesh

    from affcli.fileio import atomic_output

    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=rgba, process=False)
    with atomic_output(path, force=force) as tmp:
        tmp.write_bytes(mesh.export(file_type="glb"))
    return path
