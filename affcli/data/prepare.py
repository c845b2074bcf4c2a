"""`affcli prepare`: read a raw dataset once and write the HDF5 format, atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from affcli.data.formats.agpil import VIEWS, read_agpil
from affcli.data.formats.laso import read_laso
from affcli.data.formats.piad import read_piad
from affcli.data.h5 import DATASETS, Prepared, write_prepared
from affcli.errors import AffError

# The folder names the reference code expects, used when --root is not given.
DEFAULT_ROOTS = {"laso": "LASO_dataset", "piad": "Data", "agpil": "Data"}
SETTINGS = ("seen", "unseen")


def default_output(dataset: str, setting: str, view: str = "full") -> Path:
    suffix = f"_{view}" if dataset == "agpil" and view != "full" else ""
    return Path("data") / f"{dataset}_{setting}{suffix}.h5"


def prepare(
    dataset: str,
    root: Path | None = None,
    setting: str = "seen",
    view: str = "full",
    out: Path | None = None,
    force: bool = False,
    num_points: int = 2048,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Convert one setting (and AGPIL view) of a raw dataset; returns a summary."""
    if dataset not in DATASETS:
        raise AffError("DATASET", f"unknown dataset {dataset!r} (choose {', '.join(DATASETS)})")
    setting = setting.lower()
    if setting not in SETTINGS:
        raise AffError("--setting", f"must be seen or unseen, got {setting!r}")
    view = view.lower()
    if dataset == "agpil" and view not in VIEWS:
        raise AffError("--view", f"must be one of {', '.join(VIEWS)}, got {view!r}")
    root = Path(root) if root is not None else Path(DEFAULT_ROOTS[dataset])
    out = Path(out) if out is not None else default_output(dataset, setting, view)
    if out.exists() and not force:  # fail before the (possibly long) read
        raise AffError(out, "output exists; pass --force to overwrite it")
    if dataset == "laso":
        prep = read_laso(root, setting, num_points, progress_factory)
    elif dataset == "piad":
        prep = read_piad(root, setting, num_points, progress_factory)
    else:
        prep = read_agpil(root, setting, view, num_points, progress_factory)
    write_prepared(prep, out, force=force)
    return summarize(prep, out)


def summarize(prep: Prepared, out: Path) -> dict[str, Any]:
    splits = {}
    for name, d in prep.splits.items():
        splits[name] = {
            "samples": d.num_samples,
            "shapes": d.num_shapes,
            "classes": sorted({prep.object_names[i] for i in np.unique(d.sample_object)}),
            "affordances": sorted({prep.affordance_names[i]
                                   for i in np.unique(d.sample_affordance)}),
        }
    return {
        "output": str(out), "dataset": prep.dataset, "setting": prep.setting,
        "view": prep.view or None, "source_files": len(prep.manifest.entries),
        "bytes": out.stat().st_size, "splits": splits,
    }
