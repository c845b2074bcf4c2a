"""Naive float64 references for the point ops, written for clarity, not speed.

Semantics every backend must match:
- farthest_point_sample: start at `start[b]`; keep each point's squared distance to the
  nearest selected point (initially +inf); next = the first index of the maximum.
- ball_query: the first k indices j (in index order) with |xyz_j - c|^2 <= r^2; unused slots
  repeat the first index found; no point found -> all zeros.
- three_nn: the 3 smallest squared distances, ascending, ties by the lower index.
- gather_group: out[b, c, m, j] = features[b, c, idx[b, m, j]].
- three_interpolate: out[b, c, i] = sum_j weight[b, i, j] * features[b, c, idx[b, i, j]].
"""

from __future__ import annotations

import numpy as np
import torch


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def farthest_point_sample(xyz: torch.Tensor, n: int, start: torch.Tensor) -> torch.Tensor:
    x = _np(xyz)
    b_, n_pts, _ = x.shape
    out = np.zeros((b_, n), np.int64)
    for b in range(b_):
        dist = np.full(n_pts, np.inf)
        far = int(start[b])
        for i in range(n):
            out[b, i] = far
            d = ((x[b] - x[b, far]) ** 2).sum(axis=1)
            dist = np.minimum(dist, d)
            far = int(np.argmax(dist))  # numpy argmax: first index of the maximum
    return torch.from_numpy(out)


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    x, c = _np(xyz), _np(centers)
    b_, m_, _ = c.shape
    out = np.zeros((b_, m_, k), np.int64)
    for b in range(b_):
        for m in range(m_):
            d = ((x[b] - c[b, m]) ** 2).sum(axis=1)
            found = [j for j in range(x.shape[1]) if d[j] <= radius**2][:k]
            if found:
                out[b, m] = found + [found[0]] * (k - len(found))
    return torch.from_numpy(out)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, kn = _np(unknown), _np(known)
    d = ((u[:, :, None, :] - kn[:, None, :, :]) ** 2).sum(-1)
    idx = np.argsort(d, axis=-1, kind="stable")[:, :, :3]
    return torch.from_numpy(np.take_along_axis(d, idx, -1)), torch.from_numpy(idx)


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    f = features.detach().double()
    b_, c_, _ = f.shape
    _, m_, k = idx.shape
    out = torch.zeros(b_, c_, m_, k, dtype=torch.float64)
    for b in range(b_):
        out[b] = f[b][:, idx[b].reshape(-1)].reshape(c_, m_, k)
    return out


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    f, w = features.detach().double(), weight.detach().double()
    b_, c_, _ = f.shape
    n = idx.shape[1]
    out = torch.zeros(b_, c_, n, dtype=torch.float64)
    for b in range(b_):
        for j in range(3):
            out[b] += f[b][:, idx[b, :, j]] * w[b, :, j]
    return out
