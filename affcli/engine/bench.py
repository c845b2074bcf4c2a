"""Benchmarks behind `affcli bench`. Each returns plain rows the CLI renders."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affcli.data.datasets import open_dataset
from affcli.data.prepare import prepare
from affcli.data.synth.run import synthesize


def _rate(dataset: Any, budget_s: float, batch_size: int = 16, min_batches: int = 2
          ) -> tuple[float, int]:
    """Samples per second through a DataLoader (shuffled batches, collated, main process),
    the way training reads, for about `budget_s` seconds."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    next(iter(loader))  # warm up: lazy opens, caches, imports
    count = batches = 0
    t0 = time.perf_counter()
    while batches < min_batches or time.perf_counter() - t0 < budget_s:
        for batch in loader:
            count += len(batch["index"] if isinstance(batch, dict) else batch[0])
            batches += 1
            if batches >= min_batches and time.perf_counter() - t0 >= budget_s:
                break
    return count / (time.perf_counter() - t0), count


def bench_loader(
    datasets: Sequence[str] = ("laso", "piad", "agpil"),
    shapes_per_class: int = 4,
    seconds: float = 3.0,
    splits: Sequence[str] = ("train", "test"),
    workdir: Path | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Samples/s of the reference-style raw loaders vs our HDF5 datasets on a synth set,
    both read through a DataLoader with batch size 16 in one process."""
    from affcli.engine.baselines import RawLaso, RawListed

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for ds in datasets:
            root = Path(tmp) / ds
            synthesize(ds, root, seed=seed, shapes_per_class=shapes_per_class)
            h5 = Path(tmp) / f"{ds}.h5"
            t0 = time.perf_counter()
            prepare(ds, root, "seen", "full", h5)
            prep_s = time.perf_counter() - t0
            for split in splits:
                ours = open_dataset(h5, split)
                raw = (RawLaso(root, "seen", split) if ds == "laso"
                       else RawListed(root, "seen", split, view="full" if ds == "agpil" else None))
                raw_rate, raw_n = _rate(raw, seconds)
                h5_rate, h5_n = _rate(ours, seconds)
                rows.append({
                    "dataset": ds, "split": split, "part": "whole sample", "samples": len(ours),
                    "raw_samples_per_s": raw_rate, "h5_samples_per_s": h5_rate,
                    "speedup": h5_rate / raw_rate, "raw_reads": raw_n, "h5_reads": h5_n,
                    "prepare_s": prep_s,
                })
                if ds != "laso" and split == "train":
                    rows.append(_clouds_only(ds, raw, ours, seconds, prep_s))
    return rows


def _clouds_only(ds: str, raw: Any, ours: Any, seconds: float, prep_s: float) -> dict[str, Any]:
    """The point-cloud half of a PIAD/AGPIL train sample (pairing_num clouds with their
    masks), without the image that both paths decode the same way."""
    rng = np.random.default_rng(0)
    n_shapes = len(ours.shape_object)

    def raw_get(i: int) -> None:
        for _ in range(ours.pairing_num):
            raw._parse_points(raw.points[int(rng.integers(len(raw.points)))])

    def h5_get(i: int) -> None:
        for _ in range(ours.pairing_num):
            ours._cloud(int(rng.integers(n_shapes)), 0, None)

    raw_rate = _loop_rate(raw_get, seconds)
    h5_rate = _loop_rate(h5_get, seconds)
    return {"dataset": ds, "split": "train", "part": "clouds only", "samples": len(ours),
            "raw_samples_per_s": raw_rate, "h5_samples_per_s": h5_rate,
            "speedup": h5_rate / raw_rate, "prepare_s": prep_s}


def _loop_rate(get: Any, budget_s: float, min_items: int = 3) -> float:
    get(0)
    count, t0 = 0, time.perf_counter()
    while count < min_items or time.perf_counter() - t0 < budget_s:
        get(count)
        count += 1
    return count / (time.perf_counter() - t0)


def geometric_mean(values: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")
