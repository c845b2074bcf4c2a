"""`affcli synth`: write a synthetic dataset in its original raw layout, atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from affcli.data.synth.common import output_dir
from affcli.data.synth.shapes import SYNTH_CLASSES
from affcli.errors import AffError

DATASETS = ("laso", "piad", "agpil")
DEFAULT_SHAPES_PER_CLASS = 22  # about 1,000 LASO samples


def synthesize(
    dataset: str,
    out: Path,
    seed: int = 0,
    shapes_per_class: int = DEFAULT_SHAPES_PER_CLASS,
    force: bool = False,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, int]:
    """Write the dataset to `out`; returns the number of samples per setting/split."""
    if dataset not in DATASETS:
        raise AffError("DATASET", f"unknown dataset {dataset!r} (choose {', '.join(DATASETS)})")
    if shapes_per_class < 2:
        raise AffError("--shapes-per-class", f"must be at least 2, got {shapes_per_class}")
    with output_dir(out, force) as tmp:
        if dataset == "laso":
            from affcli.data.synth.laso import write_laso

            progress = progress_factory(len(SYNTH_CLASSES) * shapes_per_class) \
                if progress_factory else None
            return write_laso(tmp, seed, shapes_per_class, progress)
        # The image renderer is needed only by the listed (image) datasets.
        from affcli.data.synth.listed import total_work, write_listed

        progress = progress_factory(total_work(dataset, shapes_per_class)) \
            if progress_factory else None
        return write_listed(dataset, tmp, seed, shapes_per_class, progress)
