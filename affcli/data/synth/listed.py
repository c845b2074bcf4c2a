"""Synthetic PIAD and AGPIL in their raw formats: list files, point text files, rendered
interaction images, LabelMe box JSON and (AGPIL) instruction JSON."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affcli.data.names import PIAD_AFFORDANCES, PIAD_UNSEEN_TEST_CLASSES
from affcli.data.synth.common import (
    NUM_POINTS,
    STREAM_PHOTO,
    STREAM_TEXT,
    STREAM_VIEW,
    rng_for,
    shape_id,
    shape_instance,
    split_shapes,
)
from affcli.data.synth.photos import render_interaction
from affcli.data.synth.shapes import CLASS_AFFORDANCES, SYNTH_CLASSES, SynthShape
from affcli.data.synth.text import instruction

# The reference loaders index train clouds by class in exactly this order (they assume
# Point_Train lists each class contiguously, in this sequence).
SEEN_ORDER = ("Earphone", "Bag", "Chair", "Refrigerator", "Knife", "Dishwasher", "Keyboard",
              "Scissors", "Table", "StorageFurniture", "Bottle", "Bowl", "Microwave", "Display",
              "TrashCan", "Hat", "Clock", "Door", "Mug", "Faucet", "Vase", "Laptop", "Bed")
UNSEEN_TRAIN_ORDER = ("Knife", "Refrigerator", "Earphone", "Bag", "Keyboard", "Chair", "Hat",
                      "Door", "TrashCan", "Table", "Faucet", "StorageFurniture", "Bottle", "Bowl",
                      "Display", "Mug", "Clock")
VIEWS = ("Full", "Partial", "Rotation")


def piad_affordances(object_class: str) -> list[str]:
    return [a for a in CLASS_AFFORDANCES[object_class] if a in PIAD_AFFORDANCES]


@dataclass
class _Plan:
    """Which classes, shapes and how many images each split of one setting has."""

    train_classes: list[str]
    test_classes: list[str]
    shapes: dict[str, dict[str, list[int]]]  # split -> class -> instance indices
    images_per_pair: dict[str, int]


def _plan(setting: str, k: int, chosen: Sequence[str] = SYNTH_CLASSES) -> _Plan:
    classes = [c for c in SEEN_ORDER if c in chosen]
    if setting == "Seen":
        train_cls, test_cls = classes, classes
        per = {c: split_shapes(k, ci, val_share=False) for ci, c in enumerate(classes)}
        shapes = {"train": {c: per[c]["train"] for c in classes},
                  "test": {c: per[c]["test"] for c in classes}}
        n_img = {"train": max(1, k // 2), "test": max(1, k // 5)}
    else:
        # Unseen: whole classes are withheld from training and make up the test split.
        train_cls = [c for c in UNSEEN_TRAIN_ORDER if c in chosen]
        test_cls = [c for c in classes if c in PIAD_UNSEEN_TEST_CLASSES]
        shapes = {"train": {c: list(range(k)) for c in train_cls},
                  "test": {c: list(range(k)) for c in test_cls}}
        n_img = {"train": max(1, k // 2), "test": max(1, k // 3)}
    return _Plan(train_cls, test_cls, shapes, n_img)


def format_point_file(sid: str, object_class: str, points: np.ndarray,
                      labels: dict[str, np.ndarray]) -> str:
    """PIAD point text: `id class x y z s1..s17 ` per line (trailing space, as released)."""
    cols = np.zeros((points.shape[0], len(PIAD_AFFORDANCES)), np.float32)
    for a, v in labels.items():
        if a in PIAD_AFFORDANCES:
            cols[:, PIAD_AFFORDANCES.index(a)] = v
    values = np.concatenate([points.astype(np.float32), cols], axis=1).astype(str)
    prefix = f"{sid} {object_class} "
    return "".join(prefix + " ".join(row) + " \n" for row in values)


def labelme_json(image_bytes: bytes, image_rel: str, hw: tuple[int, int], subject: tuple,
                 obj: tuple, flip_corners: bool) -> str:
    def rect(label: str, box: tuple) -> dict:
        x1, y1, x2, y2 = (round(float(v), 6) for v in box)
        pts = [[x2, y2], [x1, y1]] if flip_corners else [[x1, y1], [x2, y2]]
        return {"label": label, "line_color": None, "fill_color": None, "points": pts,
                "shape_type": "rectangle", "flags": {}}

    doc = {
        "version": "3.16.7", "flags": {},
        "shapes": [rect("subject", subject), rect("object", obj)],
        "lineColor": [0, 255, 0, 128], "fillColor": [255, 0, 0, 128],
        "imagePath": image_rel, "imageData": base64.b64encode(image_bytes).decode("ascii"),
        "imageHeight": hw[0], "imageWidth": hw[1],
    }
    return json.dumps(doc, indent=2)


def partial_view(shape: SynthShape, rng: np.random.Generator, n: int) -> SynthShape:
    """What one camera sees: the points facing a random direction, resampled to n."""
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    visible = np.flatnonzero(shape.normals @ d > -0.1)
    if visible.size < n // 8:  # a degenerate view: fall back to the nearer half
        visible = np.flatnonzero(shape.points @ d >= np.median(shape.points @ d))
    pick = rng.choice(visible, size=n, replace=visible.size < n)
    pick.sort()
    return SynthShape(shape.object_class, shape.points[pick], shape.normals[pick],
                      {a: v[pick] for a, v in shape.labels.items()})


def rotated_view(shape: SynthShape, rng: np.random.Generator) -> SynthShape:
    from affcli.data.datasets import random_rotation  # one rotation sampler for the package

    r = random_rotation(rng).astype(np.float32)
    return SynthShape(shape.object_class, shape.points @ r.T, shape.normals @ r.T, shape.labels)


def write_listed(dataset: str, out: Path, seed: int, k: int,
                 progress: Callable[[int], None] | None = None,
                 classes: Sequence[str] = SYNTH_CLASSES) -> dict[str, int]:
    """Write PIAD (`out/{Seen,Unseen}`) or AGPIL (`out/<View>_view/{Seen,Unseen}`), the
    objects of `classes` only."""
    views = ("",) if dataset == "piad" else VIEWS
    counts: dict[str, int] = {}
    photo_cache: dict[tuple, tuple[bytes, tuple, tuple, tuple[int, int], bool]] = {}
    for view in views:
        for setting in ("Seen", "Unseen"):
            base_rel = f"{view}_view/{setting}" if view else setting
            plan = _plan(setting, k, classes)
            for split in ("train", "test"):
                n = _write_split(dataset, out, base_rel, view, setting, split, plan, seed,
                                 photo_cache, progress)
                counts[f"{base_rel.lower()}/{split}"] = n
    return counts


def total_work(dataset: str, k: int, classes: Sequence[str] = SYNTH_CLASSES) -> int:
    """Progress units write_listed reports (one per point file and per image)."""
    views = 1 if dataset == "piad" else len(VIEWS)
    total = 0
    for setting in ("Seen", "Unseen"):
        plan = _plan(setting, k, classes)
        for split, names in (("train", plan.train_classes), ("test", plan.test_classes)):
            total += sum(len(plan.shapes[split][c]) for c in names)
            total += sum(len(piad_affordances(c)) for c in names) * plan.images_per_pair[split]
    return total * views


def _view_shape(view: str, shape: SynthShape, rng: np.random.Generator) -> SynthShape:
    if view == "Partial":
        return partial_view(shape, rng, NUM_POINTS)
    if view == "Rotation":
        return rotated_view(shape, rng)
    return shape


def _write_split(dataset: str, out: Path, base_rel: str, view: str, setting: str, split: str,
                 plan: _Plan, seed: int, photo_cache: dict, progress: Callable[[int], None] | None
                 ) -> int:
    cap = split.capitalize()
    classes = plan.train_classes if split == "train" else plan.test_classes
    point_lines: list[str] = []
    point_of_class: dict[str, list[str]] = {}
    for c in classes:
        for i in plan.shapes[split][c]:
            rel = f"{base_rel}/Point/{cap}/{c}/Point_{cap}_{c}_{i + 1}.txt"
            dense = view == "Partial"
            shape = shape_instance(seed, c, i, n_points=NUM_POINTS * 3 if dense else NUM_POINTS)
            shape = _view_shape(view, shape, rng_for(seed, STREAM_VIEW, SYNTH_CLASSES.index(c), i))
            _write(out / rel, format_point_file(shape_id(seed, c, i), c, shape.points,
                                                shape.labels))
            point_lines.append(rel)
            point_of_class.setdefault(c, []).append(rel)
            if progress:
                progress(1)

    img_lines, box_lines, desc_lines, test_points = [], [], [], []
    for ci, c in enumerate(classes):
        for a in piad_affordances(c):
            ai = PIAD_AFFORDANCES.index(a)
            for j in range(plan.images_per_pair[split]):
                name = f"{cap}_{c}_{a}_{j + 1}"
                img_rel = f"{base_rel}/Img/{cap}/{c}/{a}/Img_{name}.jpg"
                key = (setting, split, c, a, j)
                if key not in photo_cache:  # AGPIL views share their photos
                    photo_cache[key] = _photo(seed, c, a, j, split, setting)
                jpeg, sub, obj, hw, flip = photo_cache[key]
                _write(out / img_rel, jpeg)
                img_lines.append(img_rel)
                box_rel = f"{base_rel}/Box/{cap}/{c}/{a}/Img_{name}.json"
                _write(out / box_rel, labelme_json(jpeg, f"../../../../Img/{cap}/{c}/{a}/"
                                                   f"Img_{name}.jpg", hw, sub, obj, flip))
                box_lines.append(box_rel)
                if dataset == "agpil":
                    desc_rel = f"{base_rel}/Description/{cap}/{c}/{a}/Description_{name}.json"
                    text = instruction(c, a, rng_for(seed, STREAM_TEXT, ci, ai, j))
                    _write(out / desc_rel, json.dumps({"Description": text}, indent=2))
                    desc_lines.append(desc_rel)
                if split == "test":  # test images are paired with clouds line by line
                    pool = point_of_class[c]
                    test_points.append(pool[(j + ai) % len(pool)])
                if progress:
                    progress(1)

    lists = {"Img": img_lines, "Point": point_lines if split == "train" else test_points,
             "Box": box_lines}
    if dataset == "agpil":
        lists["Description"] = desc_lines
    for stem, lines in lists.items():
        _write(out / base_rel / f"{stem}_{cap}.txt", "".join(f"{ln}\n" for ln in lines))
    return len(img_lines)


def _photo(seed: int, c: str, a: str, j: int, split: str, setting: str
           ) -> tuple[bytes, tuple, tuple, tuple[int, int], bool]:
    """An interaction photo of a fresh instance (as in PIAD, the pictured object is not one
    of the point clouds)."""
    ci, ai = SYNTH_CLASSES.index(c), PIAD_AFFORDANCES.index(a)
    stream = (STREAM_PHOTO, ci, ai, j, 0 if split == "train" else 1, 0 if setting == "Seen" else 1)
    rng = rng_for(seed, *stream)
    shape = shape_instance(seed, c, 10_000 + j * 7 + ai, stream=STREAM_PHOTO)
    img, sub, obj = render_interaction(shape, a, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    flip = bool(rng.random() < 0.2)  # LabelMe keeps corners in drawing order: either order
    return buf.getvalue(), sub, obj, (img.size[1], img.size[0]), flip


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
