"""The CPU path: numba-compiled loops for the searches, torch indexing for the gathers.

The searches parallelise over the batch (FPS) or over query points (ball query, 3-NN) with
numba's prange; each loop is the direct algorithm, which on 2,048-point clouds beats the
reference utility's dense N x M distance matrix and sort by a wide margin.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_JIT = {"nogil": True, "cache": True}


@numba.njit(parallel=True, **_JIT)
def _fps(xyz: np.ndarray, n: int, starts: np.ndarray) -> np.ndarray:  # pragma: no cover
    b_, num, _ = xyz.shape
    out = np.empty((b_, n), np.int64)
    for b in numba.prange(b_):
        x = xyz[b]
        dist = np.full(num, np.inf, np.float32)
        far = starts[b]
        for i in range(n):
            out[b, i] = far
            px, py, pz = x[far, 0], x[far, 1], x[far, 2]
            best, best_j = np.float32(-1.0), 0
            for j in range(num):
                dx, dy, dz = x[j, 0] - px, x[j, 1] - py, x[j, 2] - pz
                d = dx * dx + dy * dy + dz * dz
                if d < dist[j]:
                    dist[j] = d
                dj = dist[j]
                if dj > best:  # strict: ties keep the lowest index
                    best, best_j = dj, j
            far = best_j
    return out


@numba.njit(parallel=True, **_JIT)
def _ball_query(xyz: np.ndarray, centers: np.ndarray, r2: float, k: int
                ) -> np.ndarray:  # pragma: no cover
    b_, num, _ = xyz.shape
    m_ = centers.shape[1]
    out = np.zeros((b_, m_, k), np.int64)
    r2f = np.float32(r2)
    for q in numba.prange(b_ * m_):
        b, m = q // m_, q % m_
        cx, cy, cz = centers[b, m, 0], centers[b, m, 1], centers[b, m, 2]
        cnt = 0
        for j in range(num):
            dx, dy, dz = xyz[b, j, 0] - cx, xyz[b, j, 1] - cy, xyz[b, j, 2] - cz
            if dx * dx + dy * dy + dz * dz <= r2f:
                out[b, m, cnt] = j
                cnt += 1
                if cnt == k:
                    break
        for j in range(cnt, k):
            out[b, m, j] = out[b, m, 0]
    return out


@numba.njit(parallel=True, **_JIT)
def _three_nn(unknown: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # pragma: no cover
    b_, n_, _ = unknown.shape
    m_ = known.shape[1]
    dist = np.empty((b_, n_, 3), np.float32)
    idx = np.empty((b_, n_, 3), np.int64)
    for q in numba.prange(b_ * n_):
        b, i = q // n_, q % n_
        ux, uy, uz = unknown[b, i, 0], unknown[b, i, 1], unknown[b, i, 2]
        d1 = d2 = d3 = np.float32(np.inf)
        i1 = i2 = i3 = 0
        for j in range(m_):
            dx, dy, dz = known[b, j, 0] - ux, known[b, j, 1] - uy, known[b, j, 2] - uz
            d = dx * dx + dy * dy + dz * dz
            if d < d1:  # strict comparisons keep the lower index first among ties
                d3, i3, d2, i2, d1, i1 = d2, i2, d1, i1, d, j
            elif d < d2:
                d3, i3, d2, i2 = d2, i2, d, j
            elif d < d3:
                d3, i3 = d, j
        dist[b, i, 0], dist[b, i, 1], dist[b, i, 2] = d1, d2, d3
        idx[b, i, 0], idx[b, i, 1], idx[b, i, 2] = i1, i2, i3
    return dist, idx


def farthest_point_sample(xyz: torch.Tensor, n: int, starts: torch.Tensor) -> torch.Tensor:
    out = _fps(xyz.cpu().numpy(), n, starts.cpu().numpy())
    return torch.from_numpy(out).to(xyz.device)


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int
               ) -> torch.Tensor:
    out = _ball_query(xyz.cpu().numpy(), centers.cpu().numpy(), radius * radius, k)
    return torch.from_numpy(out).to(xyz.device)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist, idx = _three_nn(unknown.cpu().numpy(), known.cpu().numpy())
    return torch.from_numpy(dist).to(unknown.device), torch.from_numpy(idx).to(unknown.device)


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b, c, _ = features.shape
    _, m, k = idx.shape
    flat = idx.reshape(b, 1, m * k).expand(b, c, m * k)
    return torch.gather(features, 2, flat).reshape(b, c, m, k)


def gather_group_backward(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    b, c, m, k = grad.shape
    out = grad.new_zeros(b, c, n)
    return out.scatter_add_(2, idx.reshape(b, 1, m * k).expand(b, c, m * k),
                            grad.reshape(b, c, m * k))


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    picked = gather_group(features, idx)  # [B, C, n, 3]
    return (picked * weight.unsqueeze(1)).sum(-1)


def three_interpolate_backward(grad: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                               m: int) -> torch.Tensor:
    return gather_group_backward(grad.unsqueeze(-1) * weight.unsqueeze(1), idx, m)


@numba.njit(parallel=True, **_JIT)
def _column_moments(y: np.ndarray, chunks: int) -> np.ndarray:  # pragma: no cover
    rows, cols = y.shape
    step = (rows + chunks - 1) // chunks
    part = np.zeros((chunks, 2, cols), np.float64)
    for t in numba.prange(chunks):
        s = np.zeros(cols, np.float64)
        q = np.zeros(cols, np.float64)
        for i in range(t * step, min(rows, (t + 1) * step)):
            for j in range(cols):
                v = y[i, j]
                s[j] += v
                q[j] += v * v
        part[t, 0] = s
        part[t, 1] = q
    return part.sum(0)


def column_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) of each column of y [R, C], in one pass with float64 sums."""
    # a few chunks per thread so that uneven threads still finish together
    chunks = 4 * numba.get_num_threads()
    sums = torch.from_numpy(_column_moments(y.detach().contiguous().numpy(), chunks))
    mean = sums[0] / y.shape[0]
    var = (sums[1] / y.shape[0] - mean.square()).clamp_min(0.0)
    return mean.to(y.dtype), var.to(y.dtype)
