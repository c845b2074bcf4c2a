"""What all synthetic writers share: seeded shape instances, split plans, atomic output folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from affcli.data.synth.shapes import SYNTH_CLASSES, SynthShape, make_shape
from affcli.errors import AffError
from affcli.fileio import current_umask

NUM_POINTS = 2048
# Stream ids keep the random streams of shapes, photos and text independent of each other,
# so adding a class or changing K does not reshuffle everything else.
STREAM_SHAPE, STREAM_PHOTO, STREAM_TEXT, STREAM_VIEW = 1, 2, 3, 4


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def shape_instance(seed: int, object_class: str, index: int, stream: int = STREAM_SHAPE,
                   n_points: int = NUM_POINTS) -> SynthShape:
    ci = SYNTH_CLASSES.index(object_class)
    return make_shape(object_class, rng_for(seed, stream, ci, index), n_points=n_points)


def shape_id(seed: int, object_class: str, index: int) -> str:
    """A ShapeNet-like 32-hex id, stable for (seed, class, index)."""
    return hashlib.md5(f"{seed}/{object_class}/{index}".encode()).hexdigest()


def split_shapes(k: int, class_index: int, val_share: bool = True) -> dict[str, list[int]]:
    """Instance indices per split for one class: ~70% train, the rest split between test
    and (when `val_share`) val, ~2:1. Every class gets >= 1 train shape; with tiny K the
    leftovers alternate between classes so that val and test are both non-empty overall."""
    if k < 2:
        raise AffError("--shapes-per-class", f"must be at least 2, got {k}")
    n_train = max(1, min(k - 1, round(0.7 * k)))
    plan: dict[str, list[int]] = {"train": list(range(n_train)), "val": [], "test": []}
    for j, idx in enumerate(range(n_train, k)):
        to_val = val_share and (j + class_index) % 3 == 0
        plan["val" if to_val else "test"].append(idx)
    return plan


@contextmanager
def output_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `out`, moved onto `out` only when writing succeeded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AffError(out, "exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise AffError(out, "folder exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is not what users expect
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
