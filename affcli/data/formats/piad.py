"""PIAD raw format (and the parts AGPIL shares with it).

A setting folder holds list files `Img_{Train,Test}.txt`, `Point_{Train,Test}.txt` and
`Box_{Train,Test}.txt`, one path a line. A point file has one line per point:
`shape_id class x y z s_1 .. s_17` (scores in PIAD_AFFORDANCES order). An image's object and
affordance are the third- and second-to-last `_` fields of its name; its box file is LabelMe
JSON with `rectangle` shapes labelled `subject` and `object`. Train images are paired with
random point clouds of their class at load time; test lines are paired by position.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from affcli.data.formats.common import (
    check_points,
    check_scores,
    missing_root,
    read_list_file,
    resolve_entry,
    setting_dir,
)
from affcli.data.h5 import Manifest, Prepared, SplitData
from affcli.data.names import OBJECT_CLASSES, PIAD_AFFORDANCES, canonical_class
from affcli.errors import AffError

NUM_FIELDS = 2 + 3 + len(PIAD_AFFORDANCES)


@dataclass
class PointFile:
    shape_id: str
    object_class: str
    points: np.ndarray  # float32 [N, 3]
    labels: np.ndarray  # float32 [N, 17]


def name_fields(path: Path | str, kind: str) -> tuple[str, str | None]:
    """(object class, affordance or None) from a PIAD file name, validated."""
    stem = Path(path).stem
    parts = stem.split("_")
    if kind == "point":
        if len(parts) < 3:
            raise AffError(path, "point file name should look like Point_<Split>_<Object>_<n>.txt")
        obj, aff = parts[-2], None
    else:
        if len(parts) < 4:
            raise AffError(path, "image name should look like "
                           "Img_<Split>_<Object>_<affordance>_<n>.jpg")
        obj, aff = parts[-3], parts[-2]
        if aff not in PIAD_AFFORDANCES:
            raise AffError(path, f"unknown affordance {aff!r} in the file name "
                           f"(PIAD has {', '.join(PIAD_AFFORDANCES)})")
    cls = canonical_class(obj)
    if cls is None:
        raise AffError(path, f"unknown object class {obj!r} in the file name")
    return cls, aff


def parse_point_file(path: Path, data: bytes, n: int) -> PointFile:
    """Parse one PIAD point text file, with errors naming the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AffError(path, "not a UTF-8 text point file") from None
    rows = [ln.split() for ln in text.splitlines() if ln.strip()]
    if len(rows) != n:
        raise AffError(path, f"{len(rows)} points, expected {n}")
    for i, r in enumerate(rows):
        if len(r) != NUM_FIELDS:
            raise AffError(path, f"{len(r)} fields, expected {NUM_FIELDS} (shape id, class, "
                           f"x y z, {len(PIAD_AFFORDANCES)} scores)", record=f"line {i + 1}")
    try:
        values = np.array([r[2:] for r in rows], dtype=np.float64)
    except ValueError:
        for i, r in enumerate(rows):
            try:
                [float(v) for v in r[2:]]
            except ValueError as exc:
                raise AffError(path, f"not a number: {exc}", record=f"line {i + 1}") from None
        raise
    bad = ~np.isfinite(values[:, :3]).all(axis=1)
    if bad.any():
        raise AffError(path, "non-finite (NaN/inf) coordinates", record=f"line {np.argmax(bad)+1}")
    points = check_points(values[:, :3], path, "", n)
    labels = values[:, 3:]
    out = (~np.isfinite(labels)) | (labels < 0) | (labels > 1)
    if out.any():
        line = int(np.argmax(out.any(axis=1)))
        raise AffError(path, "affordance scores must be finite and within [0, 1]",
                       record=f"line {line + 1}")
    cls = canonical_class(rows[0][1])
    if cls is None:
        raise AffError(path, f"unknown object class {rows[0][1]!r}", record="line 1")
    return PointFile(rows[0][0], cls, points, check_scores(labels.astype(np.float32), path, "",
                                                            n, "scores"))


def parse_box_json(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(subject_box, object_box) as x1, y1, x2, y2 with x1 <= x2, y1 <= y2.

    A missing subject box is a zero box, as in the reference loader; the object box is required.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AffError(path, f"malformed box JSON ({exc})") from None
    shapes = doc.get("shapes") if isinstance(doc, dict) else None
    if not isinstance(shapes, list):
        raise AffError(path, "box JSON has no 'shapes' list (expected LabelMe format)")
    boxes: dict[str, np.ndarray] = {}
    for i, shp in enumerate(shapes):
        if not isinstance(shp, dict) or shp.get("label") not in ("subject", "object"):
            continue
        pts = shp.get("points")
        try:
            arr = np.asarray(pts, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros((0,))
        if arr.shape != (2, 2) or not np.isfinite(arr).all():
            raise AffError(path, f"{shp['label']} box needs two finite [x, y] corner points, "
                           f"got {pts!r}", record=f"shapes[{i}]")
        boxes[shp["label"]] = np.array([arr[:, 0].min(), arr[:, 1].min(), arr[:, 0].max(),
                                        arr[:, 1].max()], dtype=np.float32)
    if "object" not in boxes:
        raise AffError(path, "no rectangle labelled 'object'")
    return boxes.get("subject", np.zeros(4, np.float32)), boxes["object"]


def read_image(path: Path, data: bytes) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes (re-encoded if the source is another format) and (height, width)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: catches truncated files that open() accepts
            fmt, size = img.format, img.size
            if fmt != "JPEG":
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="JPEG", quality=95)
                data = buf.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise AffError(path, f"unreadable image ({exc})") from None
    return data, (size[1], size[0])


def check_box_in_image(path: Path, box: np.ndarray, hw: tuple[int, int], what: str) -> None:
    h, w = hw
    tol = 2.0  # annotation tools round corners; allow a pixel or two outside
    if box[0] < -tol or box[1] < -tol or box[2] > w + tol or box[3] > h + tol:
        raise AffError(path, f"{what} box {box.tolist()} lies outside the {w}x{h} image")


@dataclass
class ListFiles:
    images: Path
    points: Path
    boxes: Path | None
    descriptions: Path | None = None


def read_split(
    dataset: str,
    split: str,
    lists: ListFiles,
    roots: list[Path],
    manifest: Manifest,
    n: int,
    progress: Callable[[int], None] | None,
) -> SplitData:
    """Read one split of a PIAD-style dataset (PIAD, or AGPIL with descriptions)."""
    entries = _read_lists(lists, paired=split == "test")
    files, entry_shape = _read_shapes(entries.points, lists.points, roots, manifest, n, progress)
    reader = _SampleReader(lists, entries, roots, manifest, files, entry_shape)
    samples = []
    for i, (line, entry) in enumerate(entries.images):
        samples.append(reader.read(i, line, entry))
        if progress:
            progress(1)
    return _split_data(files, samples, n, with_instructions=entries.descriptions is not None)


Entries = list[tuple[int, str]]  # (1-based line, entry) of a list file


@dataclass
class _ListEntries:
    images: Entries
    points: Entries
    boxes: Entries | None
    descriptions: Entries | None
    paired: bool  # test: the i-th point file is the i-th image's shape


def _read_lists(lists: ListFiles, paired: bool) -> _ListEntries:
    """The split's list files, checked to pair up line by line where they must."""
    images = read_list_file(lists.images)
    points = read_list_file(lists.points)
    boxes = read_list_file(lists.boxes) if lists.boxes is not None else None
    descriptions = read_list_file(lists.descriptions) if lists.descriptions else None
    for other, entries in ((lists.boxes, boxes), (lists.descriptions, descriptions)):
        if entries is not None and len(entries) != len(images):
            raise AffError(other, f"{len(entries)} entries, but {lists.images.name} has "
                           f"{len(images)} (they are paired line by line)")
    if paired and len(points) != len(images):
        raise AffError(lists.points, f"{len(points)} entries, but {lists.images.name} has "
                       f"{len(images)} (test pairs are listed line by line)")
    return _ListEntries(images, points, boxes, descriptions, paired)


def _read_shapes(entries: Entries, list_file: Path, roots: list[Path], manifest: Manifest,
                 n: int, progress: Callable[[int], None] | None
                 ) -> tuple[list[PointFile], list[int]]:
    """Each distinct point file once, and the shape index of every list entry."""
    shape_of_path: dict[Path, int] = {}
    files: list[PointFile] = []
    entry_shape: list[int] = []
    for line, entry in entries:
        path = resolve_entry(entry, roots, list_file, line)
        key = path.resolve()
        if key not in shape_of_path:
            name_fields(path, "point")
            pf = parse_point_file(path, manifest.read_bytes(path), n)
            shape_of_path[key] = len(files)
            files.append(pf)
        entry_shape.append(shape_of_path[key])
        if progress:
            progress(1)
    return files, entry_shape


@dataclass
class _Sample:
    shape: int  # -1 where not paired (train: shapes are drawn per class at load time)
    object_class: str
    affordance: str
    jpeg: bytes
    size: tuple[int, int]  # (height, width)
    subject_box: np.ndarray  # float32 [4]
    object_box: np.ndarray  # float32 [4]
    image_name: str
    instruction: str | None


@dataclass
class _SampleReader:
    """Reads the i-th image entry of a split with its box and description files."""

    lists: ListFiles
    entries: _ListEntries
    roots: list[Path]
    manifest: Manifest
    files: list[PointFile]
    entry_shape: list[int]

    def __post_init__(self) -> None:
        self.classes_with_shapes = {f.object_class for f in self.files}

    def read(self, i: int, line: int, entry: str) -> _Sample:
        img_path = resolve_entry(entry, self.roots, self.lists.images, line)
        cls, aff = name_fields(img_path, "image")
        shape = self._shape_of(i, line, img_path, cls)
        blob, hw = read_image(img_path, self.manifest.read_bytes(img_path))
        sub, obj = self._boxes(i, hw)
        return _Sample(shape, cls, aff, blob, hw, sub, obj,  # type: ignore[arg-type]
                       img_path.name, self._instruction(i))

    def _shape_of(self, i: int, line: int, img_path: Path, cls: str) -> int:
        """The paired shape (test), after checking its class; -1 for train, whose class
        must have point clouds to draw from."""
        if self.entries.paired:
            pcls = self.files[self.entry_shape[i]].object_class
            if pcls != cls:
                raise AffError(self.lists.points, f"test pair mismatch: point file of class "
                               f"{pcls} paired with image {img_path.name} of class {cls}",
                               record=f"line {self.entries.points[i][0]}")
            return self.entry_shape[i]
        if cls not in self.classes_with_shapes:
            raise AffError(self.lists.images, f"image {img_path.name} is of class {cls}, but "
                           f"{self.lists.points.name} lists no point cloud of that class",
                           record=f"line {line}")
        return -1

    def _boxes(self, i: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(subject, object) boxes, checked against the image; without box files the whole
        image is the object and there is no subject."""
        if self.entries.boxes is None:
            return np.zeros(4, np.float32), np.array((0, 0, hw[1], hw[0]), np.float32)
        bline, bentry = self.entries.boxes[i]
        box_path = resolve_entry(bentry, self.roots, self.lists.boxes, bline)  # type: ignore[arg-type]
        sub, obj = parse_box_json(box_path, self.manifest.read_bytes(box_path))
        sub, obj = np.asarray(sub, np.float32), np.asarray(obj, np.float32)
        check_box_in_image(box_path, obj, hw, "object")
        if sub.any():
            check_box_in_image(box_path, sub, hw, "subject")
        return sub, obj

    def _instruction(self, i: int) -> str | None:
        if self.entries.descriptions is None:
            return None
        dline, dentry = self.entries.descriptions[i]
        dpath = resolve_entry(dentry, self.roots, self.lists.descriptions,  # type: ignore[arg-type]
                              dline)
        return parse_description(dpath, self.manifest.read_bytes(dpath))


def _split_data(files: list[PointFile], samples: list[_Sample], n: int,
                with_instructions: bool) -> SplitData:
    """The arrays of a split: its shapes, and its samples in list order."""
    points = np.stack([f.points for f in files]) if files else np.zeros((0, n, 3), np.float32)
    labels = (np.stack([f.labels.T for f in files]) if files
              else np.zeros((0, len(PIAD_AFFORDANCES), n), np.float32))
    m = len(samples)
    return SplitData(
        shape_ids=[f.shape_id for f in files], shape_points=points,
        shape_object=np.array([OBJECT_CLASSES.index(f.object_class) for f in files], np.int16)
        if files else np.zeros(0, np.int16),
        shape_labels=labels,
        sample_shape=np.array([x.shape for x in samples], np.int32).reshape(m),
        sample_object=np.array([OBJECT_CLASSES.index(x.object_class) for x in samples],
                               np.int16).reshape(m),
        sample_affordance=np.array([PIAD_AFFORDANCES.index(x.affordance) for x in samples],
                                   np.int16).reshape(m),
        instructions=[x.instruction for x in samples] if with_instructions else None,
        image_jpeg=[x.jpeg for x in samples],
        image_size=np.array([x.size for x in samples], np.int32).reshape(m, 2),
        subject_box=np.array([x.subject_box for x in samples], np.float32).reshape(m, 4),
        object_box=np.array([x.object_box for x in samples], np.float32).reshape(m, 4),
        image_name=[x.image_name for x in samples],
    )


def parse_description(path: Path, data: bytes) -> str:
    """AGPIL's instruction JSON: {"Description": "..."}."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AffError(path, f"malformed description JSON ({exc})") from None
    text = doc.get("Description") if isinstance(doc, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise AffError(path, "no non-empty 'Description' string")
    return text.strip()


def count_list_entries(paths: list[Path]) -> int:
    return sum(len(read_list_file(p)) for p in paths if p.exists())


def find_list(base: Path, stem: str, split: str, required: bool = True) -> Path | None:
    """`<Stem>_<Split>.txt` in `base`, matched case-insensitively."""
    want = f"{stem}_{split.capitalize()}.txt"
    for cand in [base / want] + (sorted(base.iterdir()) if base.is_dir() else []):
        if cand.name.lower() == want.lower() and cand.is_file():
            return cand
    if required:
        raise AffError(base / want, "list file not found")
    return None


def read_piad(root: Path, setting: str, num_points: int = 2048,
              progress_factory: Callable[[int], Callable[[int], None]] | None = None) -> Prepared:
    root = Path(root)
    base = setting_dir(root, setting.capitalize())
    if not root.is_dir() or find_list(base, "Img", "train", required=False) is None:
        raise missing_root("piad", root)
    return read_listed("piad", root, base, setting, "", num_points, progress_factory)


def read_listed(dataset: str, root: Path, base: Path, setting: str, view: str, n: int,
                progress_factory: Callable[[int], Callable[[int], None]] | None) -> Prepared:
    manifest = Manifest(root)
    roots = list(dict.fromkeys([root, base, base.parent, root.parent]))
    split_lists = {}
    for split in ("train", "test"):
        split_lists[split] = ListFiles(
            images=find_list(base, "Img", split),  # type: ignore[arg-type]
            points=find_list(base, "Point", split),  # type: ignore[arg-type]
            boxes=find_list(base, "Box", split, required=(dataset == "piad")),
            descriptions=find_list(base, "Description", split) if dataset == "agpil" else None,
        )
    total = count_list_entries([p for lf in split_lists.values() for p in (lf.images, lf.points)])
    progress = progress_factory(total) if progress_factory else None
    splits = {
        split: read_split(dataset, split, lf, roots, manifest, n, progress)
        for split, lf in split_lists.items()
    }
    return Prepared(dataset=dataset, setting=setting, view=view,
                    object_names=list(OBJECT_CLASSES), affordance_names=list(PIAD_AFFORDANCES),
                    num_points=n, splits=splits, manifest=manifest)
