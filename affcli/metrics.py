"""The papers' metrics with the reference evaluation's definitions (on the CPU one compiled
pass per sample, parallel over samples; on CUDA tensors whole-tensor torch operations):

- MAE:  mean absolute error over a sample's points;
- SIM:  sum of the element-wise minimum of the two maps, each normalised to sum 1
        (1e-12 added to the sums, as the reference);
- AUC:  ROC AUC of the prediction against the ground truth binarised at 0.5 (ties count
        half, as sklearn's roc_auc_score); samples without a positive point are excluded;
- aIoU: mean over the 20 thresholds linspace(0, 1, 20) of the IoU between the prediction
        thresholded (>=) and the binarised ground truth; same exclusion.

Class and overall figures are means over samples, ignoring excluded ones (nan-aware).
A sample whose ground truth is all positive has no negative to rank: the reference's sklearn
call raises on it; here its AUC is excluded (NaN) while its aIoU is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import torch

IOU_THRESHOLDS = 20
METRICS = ("aiou", "auc", "sim", "mae")


def _as_2d(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().double()
    if t.dim() != 2:
        raise ValueError(f"{name} must be [samples, points], got {list(t.shape)}")
    return t


def sample_mae(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).abs().mean(1)


def sample_sim(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    p = pred / (pred.sum(1, keepdim=True) + 1e-12)
    g = gt / (gt.sum(1, keepdim=True) + 1e-12)
    return torch.minimum(p, g).sum(1)


def _positive_rank_sum(pred: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Sum over each row's positive points of their 1-based rank in the row's predictions,
    tied values sharing their mean rank: one sort, then the tie groups' first and last
    positions by running max / min, all in sorted order (nothing scattered back)."""
    n = pred.shape[1]
    values, order = pred.sort(dim=1)
    idx = torch.arange(n, dtype=torch.float64, device=pred.device).expand_as(values)
    starts_group = torch.ones_like(values, dtype=torch.bool)
    starts_group[:, 1:] = values[:, 1:] != values[:, :-1]
    ends_group = torch.ones_like(starts_group)
    ends_group[:, :-1] = starts_group[:, 1:]
    first = torch.where(starts_group, idx, 0.0).cummax(1).values
    last = torch.where(ends_group, idx, float(n - 1)).flip(1).cummin(1).values.flip(1)
    mean_rank = (first + last) / 2 + 1
    return (mean_rank * pos.gather(1, order)).sum(1)


def sample_auc(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney form of the ROC AUC, identical to sklearn's with ties counted half."""
    pos = gt >= 0.5
    n_pos = pos.sum(1).double()
    n_neg = (~pos).sum(1).double()
    u = _positive_rank_sum(pred, pos) - n_pos * (n_pos + 1) / 2
    auc = u / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))


def sample_aiou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """One pass: each point's bin among the thresholds, per-sample histograms of all and of
    positive points, counts at or above each threshold by a reversed cumulative sum."""
    s, n = pred.shape
    pos = gt >= 0.5
    thresholds = torch.linspace(0, 1, IOU_THRESHOLDS, dtype=torch.float64, device=pred.device)
    # bin b = how many thresholds are <= the prediction, so pred >= t_j  <=>  bin > j
    bins = torch.bucketize(pred, thresholds, right=True)
    flat = (bins + (torch.arange(s, device=pred.device) * (IOU_THRESHOLDS + 1))[:, None]
            ).reshape(-1)
    size = s * (IOU_THRESHOLDS + 1)
    every = torch.zeros(size, dtype=torch.float64, device=pred.device).index_add_(
        0, flat, torch.ones(s * n, dtype=torch.float64, device=pred.device))
    hits = torch.zeros(size, dtype=torch.float64, device=pred.device).index_add_(
        0, flat, pos.reshape(-1).double())
    every, hits = every.view(s, -1), hits.view(s, -1)
    # at or above threshold j: bins j+1 .. T
    above = every.flip(1).cumsum(1).flip(1)[:, 1:]
    tp = hits.flip(1).cumsum(1).flip(1)[:, 1:]
    n_pos = pos.sum(1, keepdim=True).double()
    aiou = (tp / (above + n_pos - tp)).mean(1)
    return torch.where(pos.any(1), aiou, torch.full_like(aiou, float("nan")))


@numba.njit(parallel=True, nogil=True, cache=True)
def _rows(pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray
          ) -> np.ndarray:  # pragma: no cover
    # All four metrics, one row per task: the CPU path (a row's 2,048 values stay in cache
    # while every metric reads them, and rows run in parallel).
    s, n = pred.shape
    t = thresholds.shape[0]
    out = np.empty((s, 4))
    for r in numba.prange(s):
        p, g = pred[r], gt[r]
        ps, gs, mae, n_pos = 0.0, 0.0, 0.0, 0
        for j in range(n):
            ps += p[j]
            gs += g[j]
            mae += abs(p[j] - g[j])
            if g[j] >= 0.5:
                n_pos += 1
        sim = 0.0
        for j in range(n):
            sim += min(p[j] / (ps + 1e-12), g[j] / (gs + 1e-12))
        out[r, 2], out[r, 3] = sim, mae / n
        if n_pos == 0:
            out[r, 0], out[r, 1] = np.nan, np.nan
            continue
        # aIoU: histogram of threshold bins (bin = thresholds <= value), all and positive
        every = np.zeros(t + 1)
        hits = np.zeros(t + 1)
        for j in range(n):
            b = 0
            while b < t and thresholds[b] <= p[j]:
                b += 1
            every[b] += 1
            if g[j] >= 0.5:
                hits[b] += 1
        above, tp, total = 0.0, 0.0, 0.0
        for k in range(t, 0, -1):  # threshold k-1 counts bins k .. t
            above += every[k]
            tp += hits[k]
            total += tp / (above + n_pos - tp)
        out[r, 0] = total / t
        n_neg = n - n_pos
        if n_neg == 0:
            out[r, 1] = np.nan
            continue
        # AUC = P(pos > neg) + P(pos == neg) / 2: sort each class's values, then one merge
        # counts, for every positive, the negatives below it and those equal to it
        pos_v = np.empty(n_pos)
        neg_v = np.empty(n_neg)
        a, c = 0, 0
        for j in range(n):
            if g[j] >= 0.5:
                pos_v[a] = p[j]
                a += 1
            else:
                neg_v[c] = p[j]
                c += 1
        pos_v.sort()
        neg_v.sort()
        below, upto, wins = 0, 0, 0.0
        for v in pos_v:
            while below < n_neg and neg_v[below] < v:
                below += 1
            if upto < below:
                upto = below
            while upto < n_neg and neg_v[upto] <= v:
                upto += 1
            wins += below + 0.5 * (upto - below)
        out[r, 1] = wins / (n_pos * n_neg)
    return out


def per_sample(pred: Any, gt: Any) -> dict[str, torch.Tensor]:
    """Every metric per sample (float64 tensors [S]); NaN where a sample is excluded.
    CPU inputs run one compiled pass per sample; CUDA tensors the vectorised torch code."""
    p, g = _as_2d(pred, "pred"), _as_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {list(p.shape)} and gt {list(g.shape)} differ")
    if not p.is_cuda:
        thresholds = np.linspace(0, 1, IOU_THRESHOLDS)
        rows = torch.from_numpy(_rows(p.contiguous().numpy(), g.contiguous().numpy(),
                                      thresholds))
        return {name: rows[:, i].contiguous() for i, name in enumerate(METRICS)}
    return vectorised(p, g)


def vectorised(p: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same metrics as whole-tensor torch operations (any device)."""
    return {"aiou": sample_aiou(p, g), "auc": sample_auc(p, g), "sim": sample_sim(p, g),
            "mae": sample_mae(p, g)}


def _summary(values: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in METRICS:
        v = values[name][rows]
        out[name] = float(v.nanmean()) if (~torch.isnan(v)).any() else float("nan")
    out["count"] = int(rows.sum()) if rows.dtype == torch.bool else int(rows.numel())
    return out


def evaluate(pred: Any, gt: Any, object_names: Sequence[str],
             affordance_names: Sequence[str]) -> dict[str, Any]:
    """{'overall': {...}, 'per_object': {name: {...}}, 'per_affordance': {name: {...}}}, each
    with aiou, auc, sim, mae (means over samples, excluded ones ignored) and count.
    `object_names` / `affordance_names` give one name per sample."""
    values = per_sample(pred, gt)
    s = values["mae"].shape[0]
    if len(object_names) != s or len(affordance_names) != s:
        raise ValueError(f"need one object and one affordance name per sample ({s}), got "
                         f"{len(object_names)} and {len(affordance_names)}")
    result: dict[str, Any] = {"overall": _summary(values, torch.ones(s, dtype=torch.bool))}
    for key, names in (("per_object", object_names), ("per_affordance", affordance_names)):
        groups: dict[str, Any] = {}
        for name in sorted(set(names)):
            rows = torch.tensor([n == name for n in names], dtype=torch.bool)
            groups[name] = _summary(values, rows)
        result[key] = groups
    return result
