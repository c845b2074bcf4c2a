"""Evaluation: predict every sample of a split, score with the papers' metrics, keep the
predictions.

In a distributed run each process predicts a shard (sample r, r + K, ...) and rank 0 gathers
them back into dataset order, so the figures are those of one process on the whole split.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from affcli import metrics
from affcli.data.datasets import H5Dataset
from affcli.engine.distributed import Process, ShardSampler, gather
from affcli.errors import AffError
from affcli.fileio import atomic_output


@dataclass
class Predictions:
    """One row per sample of a split, in dataset order."""

    heatmap: np.ndarray  # [S, N] float32 in [0, 1]
    target: np.ndarray  # [S, N] float32 ground truth
    index: np.ndarray  # [S] sample index in the split
    shape: np.ndarray  # [S] shape index in the split
    objects: list[str]
    affordances: list[str]

    def __len__(self) -> int:
        return int(self.index.shape[0])


def to_device(batch: dict[str, Any], device: torch.device,
              dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The batch's tensors on `device`; floating ones cast to `dtype` when given."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, dtype=dtype if dtype is not None and v.is_floating_point() else None,
                     non_blocking=True)
        out[k] = v
    return out


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: H5Dataset, batch_size: int, proc: Process,
            workers: int = 0, amp: bool = False, dtype: torch.dtype | None = None
            ) -> Predictions | None:
    """Heatmaps of every sample of `dataset` (rank 0 gets all of them; None elsewhere)."""
    if batch_size < 1:
        raise AffError("--batch-size", f"must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_sampler=ShardSampler(len(dataset), batch_size, proc),
                        num_workers=workers, generator=torch.Generator())
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    rows = []
    for batch in loader:
        batch = to_device(batch, proc.device, dtype)
        with autocast(proc.device, amp):
            heat = model.forward_batch(batch, batch["points"]).heatmap
        rows.append((heat.float().cpu().numpy(), batch["mask"].float().cpu().numpy(),
                     np.asarray(batch["index"].cpu()), np.asarray(batch["shape"].cpu()),
                     np.asarray(batch["object"].cpu()), np.asarray(batch["affordance"].cpu())))
    model.train(was_training)
    parts = gather(proc, _stack(rows, dataset.num_points))
    if parts is None:
        return None
    heat, target, index, shape, obj, aff = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.argsort(index, kind="stable")
    names_o, names_a = dataset.info.object_names, dataset.info.affordance_names
    return Predictions(heatmap=heat[order], target=target[order], index=index[order],
                       shape=shape[order], objects=[names_o[i] for i in obj[order]],
                       affordances=[names_a[i] for i in aff[order]])


def _stack(rows: list[tuple[np.ndarray, ...]], n: int) -> tuple[np.ndarray, ...]:
    if not rows:  # a process with no shard (fewer samples than processes)
        return (np.zeros((0, n), np.float32), np.zeros((0, n), np.float32),
                *(np.zeros(0, np.int64) for _ in range(4)))
    return tuple(np.concatenate(col) for col in zip(*rows, strict=True))


def score(pred: Predictions) -> dict[str, Any]:
    """The metrics of `affcli.metrics.evaluate` for these predictions."""
    return metrics.evaluate(pred.heatmap, pred.target, pred.objects, pred.affordances)


def constant_baseline(pred: Predictions) -> dict[str, Any]:
    """The same metrics for a model that predicts one constant everywhere: the split's mean
    ground-truth score (what a model learns when it ignores its inputs)."""
    const = np.full_like(pred.target, float(pred.target.mean()))
    return metrics.evaluate(const, pred.target, pred.objects, pred.affordances)


def save_predictions(path: str | Path, pred: Predictions, attrs: dict[str, Any]) -> Path:
    """An HDF5 file with heatmap [S, N], target [S, N], index, shape, object and affordance
    names per sample, and `attrs` (source file, split, checkpoint), written atomically."""
    path = Path(path)
    text = h5py.string_dtype()
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("heatmap", data=pred.heatmap, compression="gzip", chunks=True)
            f.create_dataset("target", data=pred.target, compression="gzip", chunks=True)
            f.create_dataset("index", data=pred.index)
            f.create_dataset("shape", data=pred.shape)
            f.create_dataset("object", data=np.array(pred.objects, dtype=object), dtype=text)
            f.create_dataset("affordance", data=np.array(pred.affordances, dtype=object),
                             dtype=text)
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else str(v)
    return path
