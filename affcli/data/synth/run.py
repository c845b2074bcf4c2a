"""`affcli synth`: write a synthetic dataset in its original raw layout, atomically."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from affcli.data.synth.common import output_dir
from affcli.data.synth.shapes import SYNTH_CLASSES
from affcli.errors import AffError

DATASETS = ("laso", "piad", "agpil")
KINDS = (*DATASETS, "shapes")  # shapes: loose PLY files, stand-ins for users' own scans
DEFAULT_SHAPES_PER_CLASS = 22  # about 1,000 LASO samples
STREAM_FILES = 5  # its own random stream (see common.py): instances no dataset holds
FILE_POINTS = 4096  # more than the models' 2048, as scans usually have


def synthesize(
    dataset: str,
    out: Path,
    seed: int = 0,
    shapes_per_class: int = DEFAULT_SHAPES_PER_CLASS,
    force: bool = False,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    classes: Sequence[str] | None = None,
    affordances: Sequence[str] | None = None,
) -> dict[str, int]:
    """Write the dataset to `out`; returns the number of samples per setting/split (for
    `shapes`: the number of files). `classes` keeps only those object classes (default: all
    of SYNTH_CLASSES): a set small enough to build in seconds, for checks that only need
    every code path to see some data (`affcli doctor`). `affordances` (LASO only) keeps the
    samples of those affordances: a set that teaches a few questions in a short training
    (`make demo`); every chosen class must keep at least one."""
    if dataset not in KINDS:
        raise AffError("DATASET", f"unknown dataset {dataset!r} (choose {', '.join(KINDS)})")
    chosen = tuple(SYNTH_CLASSES if classes is None else classes)
    unknown = [c for c in chosen if c not in SYNTH_CLASSES]
    if unknown or not chosen:
        raise AffError("classes", f"unknown or no object classes {unknown or list(chosen)} "
                       f"(choose from {', '.join(SYNTH_CLASSES)})")
    kept = None if affordances is None else _affordances(dataset, chosen, affordances)
    least = 1 if dataset == "shapes" else 2  # datasets need a train and a test instance
    if shapes_per_class < least:
        raise AffError("--shapes-per-class",
                       f"must be at least {least}, got {shapes_per_class}")
    with output_dir(out, force) as tmp:
        if dataset == "shapes":
            progress = progress_factory(len(chosen) * shapes_per_class) \
                if progress_factory else None
            return {"shapes": write_shape_files(tmp, seed, shapes_per_class, progress, chosen)}
        if dataset == "laso":
            from affcli.data.synth.laso import write_laso

            progress = progress_factory(len(chosen) * shapes_per_class) \
                if progress_factory else None
            return write_laso(tmp, seed, shapes_per_class, progress, chosen, kept)
        # The image renderer is needed only by the listed (image) datasets.
        from affcli.data.synth.listed import total_work, write_listed

        progress = progress_factory(total_work(dataset, shapes_per_class, chosen)) \
            if progress_factory else None
        return write_listed(dataset, tmp, seed, shapes_per_class, progress, chosen)


def _affordances(dataset: str, classes: Sequence[str], names: Sequence[str]) -> frozenset[str]:
    """The LASO names of `names` (PIAD's spellings accepted), checked against `classes`."""
    from affcli.data.names import laso_affordance
    from affcli.data.synth.shapes import CLASS_AFFORDANCES

    if dataset != "laso":
        raise AffError("--affordances", f"only LASO sets can be cut down by affordance, not "
                       f"{dataset}")
    offered = {c: {laso_affordance(a) for a in CLASS_AFFORDANCES[c]} for c in classes}
    every = set().union(*offered.values())
    kept = frozenset(laso_affordance(a.strip().lower()) for a in names if a.strip())
    unknown = sorted(kept - every)
    if unknown or not kept:
        raise AffError("--affordances", f"unknown or no affordances {unknown or list(names)} "
                       f"(the chosen classes have {', '.join(sorted(every))})")
    bare = [c for c in classes if not offered[c] & kept]
    if bare:
        raise AffError("--affordances", f"{', '.join(bare)} would have no samples: none of "
                       f"{', '.join(sorted(kept))} is among its affordances")
    return kept


def write_shape_files(out: Path, seed: int, per_class: int,
                      progress: Callable[[int], None] | None = None,
                      classes: Sequence[str] = SYNTH_CLASSES) -> int:
    """`<class>_<i>.ply` (binary, x y z only) per class: objects as a user's scan would give
    them, in their own units and place (a random size of 0.2-2 and offset), to try
    `affcli predict` on. Returns the number of files."""
    from affcli.data.pointio import write_ply
    from affcli.data.synth.common import rng_for, shape_instance

    n = 0
    for name in classes:
        ci = SYNTH_CLASSES.index(name)
        for i in range(per_class):
            points = shape_instance(seed, name, i, STREAM_FILES, FILE_POINTS).points
            rng = rng_for(seed, STREAM_FILES, ci, i, 1)
            extent = float(np.ptp(points, axis=0).max())
            points = points * (rng.uniform(0.2, 2.0) / extent) + rng.uniform(-5, 5, 3)
            write_ply(out / f"{name.lower()}_{i}.ply", points, None)
            n += 1
            if progress:
                progress(1)
    return n
