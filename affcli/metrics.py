"""The papers' metrics with the reference evaluation's definitions (one compiled pass per
sample, parallel over samples, on the CPU: the evaluator scores gathered NumPy predictions):

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
    t = torch.as_tensor(x).detach().cpu().double()
    if t.dim() != 2:
        raise ValueError(f"{name} must be [samples, points], got {list(t.shape)}")
    return t


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
    One compiled pass per sample on the CPU (tensors on a GPU are copied there first)."""
    p, g = _as_2d(pred, "pred"), _as_2d(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {list(p.shape)} and gt {list(g.shape)} differ")
    thresholds = np.linspace(0, 1, IOU_THRESHOLDS)
    rows = torch.from_numpy(_rows(p.contiguous().numpy(), g.contiguous().numpy(), thresholds))
    return {name: rows[:, i].contiguous() for i, name in enumerate(METRICS)}


def iou_curves(pred: Any, gt: Any, valid: np.ndarray | None = None) -> np.ndarray:
    """The IoU behind aIoU at each of the 20 thresholds, per sample: float64 [S, 20], NaN
    rows for samples without a positive point (their mean over thresholds is aIoU). Tells
    a user where to threshold a heatmap. `valid` [S, N] limits each row to those points."""
    p, g = _as_2d(pred, "pred").numpy(), _as_2d(gt, "gt").numpy()
    if p.shape != g.shape:
        raise ValueError(f"pred {list(p.shape)} and gt {list(g.shape)} differ")
    positive = g >= 0.5
    keep = np.ones(p.shape, bool) if valid is None else np.asarray(valid, bool)
    positive &= keep
    n_pos = positive.sum(1)
    out = np.full((p.shape[0], IOU_THRESHOLDS), np.nan)
    for k, t in enumerate(np.linspace(0, 1, IOU_THRESHOLDS)):
        above = (p >= t) & keep
        tp = (above & positive).sum(1)
        union = above.sum(1) + n_pos - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(n_pos > 0, tp / union, np.nan)
    return out


def per_sample_valid(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray
                     ) -> dict[str, torch.Tensor]:
    """per_sample over each row's valid points only (valid [S, N] bool): rows with the same
    number of valid points are scored together."""
    counts = valid.sum(1)
    out = {name: torch.full((pred.shape[0],), float("nan"), dtype=torch.float64)
           for name in METRICS}
    for count in np.unique(counts):
        rows = np.flatnonzero(counts == count)
        sel = valid[rows]
        part = per_sample(pred[rows][sel].reshape(len(rows), count),
                          gt[rows][sel].reshape(len(rows), count))
        for name in METRICS:
            out[name][torch.from_numpy(rows)] = part[name]
    return out


def _summary(values: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in METRICS:
        v = values[name][rows]
        out[name] = float(v.nanmean()) if (~torch.isnan(v)).any() else float("nan")
    out["count"] = int(rows.sum()) if rows.dtype == torch.bool else int(rows.numel())
    return out


def evaluate(pred: Any, gt: Any, object_names: Sequence[str],
             affordance_names: Sequence[str], valid: np.ndarray | None = None
             ) -> dict[str, Any]:
    """{'overall': {...}, 'per_object': {name: {...}}, 'per_affordance': {name: {...}}}, each
    with aiou, auc, sim, mae (means over samples, excluded ones ignored) and count.
    `object_names` / `affordance_names` give one name per sample; `valid` [S, N] (bool)
    limits each sample's metrics to its valid points."""
    values = (per_sample(pred, gt) if valid is None
              else per_sample_valid(np.asarray(pred), np.asarray(gt), np.asarray(valid, bool)))
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
