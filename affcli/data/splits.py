"""A validation set carved out of a training split (`affcli train --val-from-train F`).

The PIAD and AGPIL files have no val split, and their references choose the best epoch on
the test split, which makes the reported test score optimistic. Carving holds out a fraction
of the training shapes, per object class, and (PIAD/AGPIL) a fraction of the training images
of each class that keeps a held-out shape: held-out images are paired with held-out shapes
only, and training images draw their clouds from the remaining shapes only, so no shape and no
image is on both sides. The carve depends on the file alone (a fixed seed), so runs with
different seeds select on the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from affcli.errors import AffError

CARVE_SEED = 20261201


@dataclass(frozen=True)
class SplitView:
    """Which rows of a split a Dataset shows, and how.

    rows: the split's sample rows, in order; shapes: the shapes training items may draw
    clouds from (PIAD/AGPIL; None: all of the class); sample_shape: the cloud paired with
    each row (overrides the file's, where training rows have none); augment: training-time
    randomness (crops, rephrasings, drawn clouds), or the fixed evaluation items."""

    rows: np.ndarray
    augment: bool
    shapes: np.ndarray | None = None
    sample_shape: np.ndarray | None = None


@dataclass(frozen=True)
class Carve:
    train: SplitView
    val: SplitView
    val_shapes: np.ndarray

    def describe(self, fraction: float) -> str:
        return (f"{len(self.val.rows)} samples of {len(self.val_shapes)} shapes carved from "
                f"train ({fraction:g})")


def _held_out(groups: dict[int, np.ndarray], fraction: float, rng: np.random.Generator
              ) -> np.ndarray:
    """round(fraction * n) members of each group of n >= 2 (at least 1, at most n - 1)."""
    out = []
    for key in sorted(groups):
        members = np.sort(groups[key])
        if len(members) < 2:
            continue
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        out.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def carve_validation(path: str | Path, fraction: float) -> Carve:
    """Hold out `fraction` (0 < f < 1) of the train split's shapes per class (and of its
    images per class, for image datasets) as a validation view."""
    if not 0 < fraction < 1:
        raise AffError("--val-from-train", f"must be a fraction in (0, 1), got {fraction}")
    rng = np.random.default_rng(CARVE_SEED)
    with h5py.File(path, "r") as f:
        g = f["train"]
        shape_object = g["shapes/object"][()].astype(np.int64)
        sample_shape = g["samples/shape"][()].astype(np.int64)
        sample_object = g["samples/object"][()].astype(np.int64)
        names = (g["samples/image_name"].asstr()[()] if "image_name" in g["samples"]
                 else None)
    by_class = {int(c): np.flatnonzero(shape_object == c) for c in np.unique(shape_object)}
    val_shapes = _held_out(by_class, fraction, rng)
    all_rows = np.arange(len(sample_object))
    if names is None:  # LASO: each sample names its shape
        is_val = np.isin(sample_shape, val_shapes)
        train = SplitView(all_rows[~is_val], augment=True)
        val = SplitView(all_rows[is_val], augment=False)
    else:
        train, val = _carve_images(names, sample_object, shape_object, val_shapes, fraction,
                                   rng)
    if len(val.rows) == 0 or len(train.rows) == 0:
        raise AffError(path, f"cannot carve {fraction:g} of the train split for validation: "
                       "too few shapes per class (each class needs two)")
    return Carve(train=train, val=val, val_shapes=val_shapes)


def _carve_images(names: np.ndarray, sample_object: np.ndarray, shape_object: np.ndarray,
                  val_shapes: np.ndarray, fraction: float, rng: np.random.Generator
                  ) -> tuple[SplitView, SplitView]:
    """PIAD/AGPIL: hold out whole images (every row of an image name) of the classes that
    have held-out shapes; pair each held-out row with one held-out shape of its class."""
    _, first, image_of_row = np.unique(names, return_index=True, return_inverse=True)
    image_class = sample_object[first]
    carved_classes = set(shape_object[val_shapes].tolist())
    groups = {c: np.flatnonzero(image_class == c) for c in sorted(carved_classes)}
    val_images = _held_out(groups, fraction, rng)
    is_val = np.isin(image_of_row, val_images)
    rows = np.arange(len(names))
    val_rows = rows[is_val]
    pools = {c: val_shapes[shape_object[val_shapes] == c] for c in carved_classes}
    # a fixed cloud per held-out row, like a test split's listed pairs
    paired = np.array([pools[int(sample_object[r])][
        np.random.default_rng([CARVE_SEED, int(r)]).integers(len(pools[int(sample_object[r])]))]
        for r in val_rows], np.int64)
    train_shapes = np.setdiff1d(np.arange(len(shape_object)), val_shapes)
    return (SplitView(rows[~is_val], augment=True, shapes=train_shapes),
            SplitView(val_rows, augment=False, shapes=val_shapes, sample_shape=paired))
