"""Robustness under point-cloud corruptions (`affcli eval --corrupt`): the PointCloud-C grid
of `affcli.data.corruptions` applied to an evaluation split, scored like a clean evaluation
(dropped and padding points do not count; added points are negatives)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from affcli.data.corruptions import KINDS, corrupt
from affcli.data.datasets import H5Dataset
from affcli.engine.distributed import Process
from affcli.engine.evaluator import predict, score
from affcli.metrics import METRICS


class CorruptedView(Dataset):
    """The items of `base` with their clouds corrupted (`points`, `mask`) and a `scored`
    flag per point; the corruption of item i is drawn from i alone."""

    def __init__(self, base: H5Dataset, kind: str, severity: int) -> None:
        self.base, self.kind, self.severity = base, kind, severity
        self.info, self.num_points = base.info, base.num_points

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        if item["points"].dim() != 2:
            raise ValueError("corruptions apply to evaluation items (one cloud each)")
        c = corrupt(item["points"].numpy(), item["mask"].numpy(), self.kind, self.severity,
                    int(item["index"]))
        item.update(points=torch.from_numpy(c.points), mask=torch.from_numpy(c.target),
                    scored=torch.from_numpy(c.scored))
        return item


def corruption_grid(model: torch.nn.Module, dataset: H5Dataset, cells: list[tuple[str, int]],
                    batch_size: int, proc: Process, workers: int = 0, votes: int = 1,
                    amp: bool = False, on_cell: Any = None) -> dict[str, Any]:
    """The clean figures, one row of figures per (corruption, severity) cell, and the means
    over the cells (overall figures: aiou, auc, sim, mae, count)."""
    clean = predict(model, dataset, batch_size, proc, workers=workers, votes=votes, amp=amp)
    out: dict[str, Any] = {"clean": score(clean)["overall"] if clean is not None else None,
                           "cells": []}
    for kind, severity in cells:
        pred = predict(model, CorruptedView(dataset, kind, severity), batch_size, proc,
                       workers=workers, votes=votes, amp=amp)
        if pred is None:
            continue
        row = {"corruption": kind, "severity": severity, **score(pred)["overall"]}
        out["cells"].append(row)
        if on_cell is not None:
            on_cell(row)
    if out["cells"]:
        out["mean"] = {m: float(np.nanmean([r[m] for r in out["cells"]])) for m in METRICS}
    return out


def grid_table(result: dict[str, Any], metric: str = "aiou") -> tuple[list[str], list[list]]:
    """Columns and rows of the corruption x severity table of `metric` (percent for aIoU and
    AUC), a mean per corruption, and a last row of means per severity."""
    cells = {(r["corruption"], r["severity"]): r[metric] for r in result["cells"]}
    kinds = [k for k in KINDS if any(c[0] == k for c in cells)]
    levels = sorted({c[1] for c in cells})
    factor = 100.0 if metric in ("aiou", "auc") else 1.0

    def fmt(values: list[float]) -> float:
        finite = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(finite)) * factor if finite else float("nan")

    rows: list[list] = []
    for kind in kinds:
        values = [cells.get((kind, s)) for s in levels]
        rows.append([kind, *[fmt([v]) for v in values], fmt(values)])
    if len(kinds) > 1:
        rows.append(["mean", *[fmt([cells.get((k, s)) for k in kinds]) for s in levels],
                     fmt(list(cells.values()))])
    # (short headers: the corruption names stay whole in an 80-column terminal)
    return ["corruption", *[str(s) for s in levels], "mean"], rows
