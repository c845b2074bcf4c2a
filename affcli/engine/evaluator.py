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
from affcli.memory import keep_freed_memory


@dataclass
class Predictions:
    """One row per sample of a split, in dataset order."""

    heatmap: np.ndarray  # [S, N] float32 in [0, 1]
    target: np.ndarray  # [S, N] float32 ground truth
    index: np.ndarray  # [S] sample index in the split
    shape: np.ndarray  # [S] shape index in the split
    objects: list[str]
    affordances: list[str]
    valid: np.ndarray | None = None  # [S, N] bool: the points that count (corrupted clouds)

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


def amp_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision's dtype: bfloat16 where the GPU computes in it (float32's range, so
    no gradient scaling), float16 on older GPUs (with a GradScaler in training); bfloat16 on
    the CPU, whose float16 products are emulated and hundreds of times slower."""
    if device.type != "cuda" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


def voted_heatmap(model: torch.nn.Module, batch: dict[str, Any], votes: int) -> torch.Tensor:
    """The batch's heatmap [B, N]; with votes > 1 the mean of `votes` passes, torch seeded
    with 0, 1, ... before each and every FPS starting at a random point (LASO's
    `evaluate(..., num_votes=3)`: seed, forward, sum, divide). The caller's RNG state is
    left as it was."""
    if votes == 1:
        return model.forward_batch(batch, batch["points"]).heatmap
    from affcli.nn.pointnet2 import fps_starts

    device = batch["points"].device
    cuda = [device.index or 0] if device.type == "cuda" else []
    total = None
    with torch.random.fork_rng(devices=cuda), fps_starts(model, None):
        for v in range(votes):
            torch.manual_seed(v)
            heat = model.forward_batch(batch, batch["points"]).heatmap
            total = heat if total is None else total + heat
    assert total is not None
    return total / votes


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: H5Dataset, batch_size: int, proc: Process,
            workers: int = 0, amp: bool = False, dtype: torch.dtype | None = None,
            votes: int = 1, limit: int = 0) -> Predictions | None:
    """Heatmaps of every sample of `dataset` (the first `limit` when > 0; rank 0 gets all of
    them, None elsewhere), each the mean of `votes` seeded passes (`voted_heatmap`)."""
    keep_freed_memory()
    if batch_size < 1:
        raise AffError("--batch-size", f"must be at least 1, got {batch_size}")
    if votes < 1:
        raise AffError("--votes", f"must be at least 1, got {votes}")
    was_training = model.training
    model.eval()
    count = min(len(dataset), limit) if limit > 0 else len(dataset)
    loader = DataLoader(dataset, batch_sampler=ShardSampler(count, batch_size, proc),
                        num_workers=workers, generator=torch.Generator())
    rows: list[tuple[np.ndarray, ...]] = []
    for batch in loader:
        batch = to_device(batch, proc.device, dtype)
        with autocast(proc.device, amp):
            heat = voted_heatmap(model, batch, votes)
        target = batch["mask"].float().cpu().numpy()
        valid = (np.asarray(batch["scored"].cpu()) if "scored" in batch
                 else np.ones(target.shape, bool))
        rows.append((heat.float().cpu().numpy(), target,
                     np.asarray(batch["index"].cpu()), np.asarray(batch["shape"].cpu()),
                     np.asarray(batch["object"].cpu()), np.asarray(batch["affordance"].cpu()),
                     valid))
    model.train(was_training)
    parts = gather(proc, _stack(rows, dataset.num_points))
    if parts is None:
        return None
    heat, target, index, shape, obj, aff, valid = (np.concatenate(x)
                                                   for x in zip(*parts, strict=True))
    order = np.argsort(index, kind="stable")
    names_o, names_a = dataset.info.object_names, dataset.info.affordance_names
    return Predictions(heatmap=heat[order], target=target[order], index=index[order],
                       shape=shape[order], objects=[names_o[i] for i in obj[order]],
                       affordances=[names_a[i] for i in aff[order]],
                       valid=None if valid.all() else valid[order])


def _stack(rows: list[tuple[np.ndarray, ...]], n: int) -> tuple[np.ndarray, ...]:
    if not rows:  # a process with no shard (fewer samples than processes)
        return (np.zeros((0, n), np.float32), np.zeros((0, n), np.float32),
                *(np.zeros(0, np.int64) for _ in range(4)), np.zeros((0, n), bool))
    return tuple(np.concatenate(col) for col in zip(*rows, strict=True))


def score(pred: Predictions) -> dict[str, Any]:
    """The metrics of `affcli.metrics.evaluate` for these predictions."""
    return metrics.evaluate(pred.heatmap, pred.target, pred.objects, pred.affordances,
                            valid=pred.valid)


def constant_baseline(pred: Predictions) -> dict[str, Any]:
    """The same metrics for a model that predicts one constant everywhere: the split's mean
    ground-truth score (what a model learns when it ignores its inputs)."""
    counted = pred.target if pred.valid is None else pred.target[pred.valid]
    const = np.full_like(pred.target, float(counted.mean()))
    return metrics.evaluate(const, pred.target, pred.objects, pred.affordances,
                            valid=pred.valid)


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
