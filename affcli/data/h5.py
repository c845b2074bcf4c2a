"""The one HDF5 format all three datasets are converted to (documented in docs/data-format.md).

Layout (schema version 1):

    /                       attrs: schema_version, dataset, setting, view, num_points,
                            object_names (JSON list), affordance_names (JSON list),
                            affcli_version, source_root
    /manifest/{path,size,sha256}        every source file read
    /<split>/shapes/points  float32 [S, N, 3]   raw coordinates, as in the source
    /<split>/shapes/object  int16   [S]         index into object_names
    /<split>/shapes/shape_id  str   [S]
    /<split>/shapes/labels  float32 [S, A, N]   per-affordance scores (PIAD, AGPIL)
    /<split>/samples/shape  int32   [M]         index into shapes; -1 = drawn per epoch
    /<split>/samples/object, affordance  int16 [M]
    /<split>/samples/mask   float32 [M, N]      (LASO) the pair's ground truth
    /<split>/samples/questions  str [M, 15]     (LASO) Question0..Question14
    /<split>/samples/instruction str [M]        (AGPIL)
    /<split>/samples/image_jpeg  vlen uint8 [M], image_size int32 [M, 2] (h, w),
                     subject_box, object_box float32 [M, 4] (x1, y1, x2, y2, source pixels),
                     image_name str [M]         (PIAD, AGPIL)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from affcli import __version__
from affcli.errors import AffError
from affcli.fileio import atomic_output, read_user_bytes

SCHEMA_VERSION = 1
DATASETS = ("laso", "piad", "agpil")

_STR = h5py.string_dtype("utf-8")
_BYTES = h5py.vlen_dtype(np.uint8)


@dataclass
class SplitData:
    """One split, in memory, as a raw-format reader produces it."""

    shape_ids: list[str]
    shape_points: np.ndarray  # float32 [S, N, 3]
    shape_object: np.ndarray  # int16 [S]
    sample_shape: np.ndarray  # int32 [M]
    sample_object: np.ndarray  # int16 [M]
    sample_affordance: np.ndarray  # int16 [M]
    shape_labels: np.ndarray | None = None  # float [S, A, N]
    sample_mask: np.ndarray | None = None  # float32 [M, N]
    questions: list[list[str]] | None = None
    instructions: list[str] | None = None
    image_jpeg: list[bytes] | None = None
    image_size: np.ndarray | None = None
    subject_box: np.ndarray | None = None
    object_box: np.ndarray | None = None
    image_name: list[str] | None = None

    @property
    def num_samples(self) -> int:
        return int(self.sample_object.shape[0])

    @property
    def num_shapes(self) -> int:
        return int(self.shape_points.shape[0])


@dataclass
class Manifest:
    """Every source file a conversion read: path relative to the root, size, sha256."""

    root: Path
    entries: dict[str, tuple[int, str]] = field(default_factory=dict)

    def read_bytes(self, path: Path) -> bytes:
        data = read_user_bytes(path)
        self.add(path, data)
        return data

    def add(self, path: Path, data: bytes) -> None:
        try:
            rel = str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            rel = str(path.resolve())
        self.entries[rel] = (len(data), hashlib.sha256(data).hexdigest())


@dataclass
class Prepared:
    dataset: str
    setting: str
    view: str
    object_names: list[str]
    affordance_names: list[str]
    num_points: int
    splits: dict[str, SplitData]
    manifest: Manifest


def _chunked(f: h5py.Group, name: str, data: np.ndarray, row_chunk: tuple[int, ...]) -> None:
    chunks = tuple(min(c, s) if s else 1 for c, s in zip(row_chunk, data.shape, strict=True))
    f.create_dataset(name, data=data, chunks=chunks if data.size else None,
                     compression="gzip" if data.size else None, compression_opts=4,
                     shuffle=bool(data.size))


def write_prepared(prep: Prepared, out: Path, force: bool = False) -> None:
    """Write `prep` to `out` atomically (temp file, then rename).

    The file is built in memory (HDF5's core driver) and written out in one plain write: a
    disk that fills up then fails that write cleanly (one error naming `out`), where HDF5
    writing to the disk itself reports every later flush as a traceback and can crash."""
    with atomic_output(out, force) as tmp:
        tmp.write_bytes(_file_image(prep, tmp.name))


def _file_image(prep: Prepared, name: str) -> bytes:
    with h5py.File(name, "w", driver="core", backing_store=False, track_order=False) as f:
        _write_contents(prep, f)
        f.flush()
        return f.id.get_file_image()


def _write_contents(prep: Prepared, f: h5py.File) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["dataset"] = prep.dataset
    f.attrs["setting"] = prep.setting
    f.attrs["view"] = prep.view
    f.attrs["num_points"] = prep.num_points
    f.attrs["object_names"] = json.dumps(prep.object_names)
    f.attrs["affordance_names"] = json.dumps(prep.affordance_names)
    f.attrs["affcli_version"] = __version__
    f.attrs["source_root"] = str(prep.manifest.root)
    man = f.create_group("manifest")
    paths = sorted(prep.manifest.entries)
    man.create_dataset("path", data=np.array(paths, dtype=object), dtype=_STR)
    man.create_dataset("size", data=np.array([prep.manifest.entries[p][0] for p in paths],
                                             dtype=np.int64))
    man.create_dataset("sha256", data=np.array([prep.manifest.entries[p][1] for p in paths],
                                               dtype=object), dtype=_STR)
    for split, data in prep.splits.items():
        # a split without samples (a synthetic subset of classes too small to fill it) is
        # left out: readers then name the missing split instead of meeting empty arrays
        if len(data.sample_shape):
            _write_split(f.create_group(split), data, prep.num_points)


def _write_split(g: h5py.Group, d: SplitData, n: int) -> None:
    shapes = g.create_group("shapes")
    _chunked(shapes, "points", d.shape_points.astype(np.float32), (1, n, 3))
    shapes.create_dataset("object", data=d.shape_object.astype(np.int16))
    shapes.create_dataset("shape_id", data=np.array(d.shape_ids, dtype=object), dtype=_STR)
    if d.shape_labels is not None:
        # One chunk per (shape, affordance): a sample reads exactly its column.
        _chunked(shapes, "labels", d.shape_labels.astype(np.float32), (1, 1, n))
    s = g.create_group("samples")
    s.create_dataset("shape", data=d.sample_shape.astype(np.int32))
    s.create_dataset("object", data=d.sample_object.astype(np.int16))
    s.create_dataset("affordance", data=d.sample_affordance.astype(np.int16))
    if d.sample_mask is not None:
        _chunked(s, "mask", d.sample_mask.astype(np.float32), (1, n))
    if d.questions is not None:
        s.create_dataset("questions", data=np.array(d.questions, dtype=object).reshape(
            len(d.questions), -1), dtype=_STR)
    if d.instructions is not None:
        s.create_dataset("instruction", data=np.array(d.instructions, dtype=object), dtype=_STR)
    if d.image_jpeg is not None:
        jpeg = s.create_dataset("image_jpeg", shape=(len(d.image_jpeg),), dtype=_BYTES)
        for i, blob in enumerate(d.image_jpeg):
            jpeg[i] = np.frombuffer(blob, dtype=np.uint8)
        s.create_dataset("image_size", data=np.asarray(d.image_size, dtype=np.int32))
        s.create_dataset("subject_box", data=np.asarray(d.subject_box, dtype=np.float32))
        s.create_dataset("object_box", data=np.asarray(d.object_box, dtype=np.float32))
        s.create_dataset("image_name", data=np.array(d.image_name, dtype=object), dtype=_STR)


@dataclass(frozen=True)
class FileInfo:
    """The root attributes of a prepared file."""

    path: Path
    dataset: str
    setting: str
    view: str
    num_points: int
    object_names: list[str]
    affordance_names: list[str]
    splits: list[str]


def fingerprint(path: str | Path) -> str:
    """What identifies a prepared file's contents, read in milliseconds: its header (without
    the affcli version that wrote it), the raw files it came from (the manifest's sha256
    column) and every dataset's name, shape and type. A re-prepared file from other raw
    files, another split or another point count gets another fingerprint."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with h5py.File(path, "r") as f:
            for key in sorted(f.attrs):
                if key not in ("affcli_version", "source_root"):
                    digest.update(f"{key}={f.attrs[key]}\n".encode())
            if "manifest/sha256" in f:
                for value in f["manifest/sha256"][()]:
                    digest.update(value if isinstance(value, bytes) else str(value).encode())

            def shape_of(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    digest.update(f"{name}:{obj.shape}:{obj.dtype}\n".encode())

            f.visititems(shape_of)
    except OSError as exc:
        raise AffError(path, f"not a readable HDF5 file ({exc})") from None
    return digest.hexdigest()[:20]


def read_info(path: str | Path) -> FileInfo:
    """Open a prepared file's header, checking that it is one and of a schema we read."""
    path = Path(path)
    if not path.exists():
        raise AffError(path, "file not found (create it with `affcli prepare`)")
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version == -1:
                raise AffError(path, "not an affcli dataset file (no schema_version)")
            if version > SCHEMA_VERSION:
                raise AffError(path, f"schema version {version} is newer than this affcli "
                               f"reads ({SCHEMA_VERSION}); upgrade affcli")
            return FileInfo(
                path=path,
                dataset=str(f.attrs["dataset"]),
                setting=str(f.attrs["setting"]),
                view=str(f.attrs["view"]),
                num_points=int(f.attrs["num_points"]),
                object_names=json.loads(f.attrs["object_names"]),
                affordance_names=json.loads(f.attrs["affordance_names"]),
                splits=[k for k in ("train", "val", "test") if k in f],
            )
    except OSError as exc:
        raise AffError(path, f"not a readable HDF5 file ({exc})") from None
    except KeyError as exc:
        raise AffError(path, f"missing attribute {exc} (corrupt or foreign file)") from None
