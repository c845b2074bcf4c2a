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


@numba.njit(fastmath=True, inline="always", **_JIT)
def _max_of(a: np.ndarray) -> float:  # pragma: no cover
    # fastmath only here: a max is exact in any order, and the flags let it vectorise
    best = np.float32(-1.0)
    for j in range(a.shape[0]):
        best = max(best, a[j])
    return best


@numba.njit(inline="always", **_JIT)
def _relax(px: np.ndarray, py: np.ndarray, pz: np.ndarray, j0: int, dist: np.ndarray
           ) -> None:  # pragma: no cover
    # no fastmath: the squared distance is rounded exactly as in the other backends
    qx, qy, qz = px[j0], py[j0], pz[j0]
    for j in range(dist.shape[0]):
        dx, dy, dz = px[j] - qx, py[j] - qy, pz[j] - qz
        d = dx * dx + dy * dy + dz * dz
        if d < dist[j]:
            dist[j] = d


@numba.njit(parallel=True, **_JIT)
def _fps(xyz: np.ndarray, n: int, starts: np.ndarray) -> np.ndarray:  # pragma: no cover
    b_, num, _ = xyz.shape
    out = np.empty((b_, n), np.int64)
    for b in numba.prange(b_):
        # structure of arrays and three simple loops (relax, max, first index of the max)
        # vectorise; one fused loop with an index-tracking argmax does not
        px = np.ascontiguousarray(xyz[b, :, 0])
        py = np.ascontiguousarray(xyz[b, :, 1])
        pz = np.ascontiguousarray(xyz[b, :, 2])
        dist = np.full(num, np.inf, np.float32)
        far = starts[b]
        for i in range(n):
            out[b, i] = far
            _relax(px, py, pz, far, dist)
            best = _max_of(dist)
            for j in range(num):
                if dist[j] == best:  # ties go to the lowest index
                    far = j
                    break
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


@numba.njit(parallel=True, **_JIT)
def _gather(f: np.ndarray, idx: np.ndarray) -> np.ndarray:  # pragma: no cover
    b_, c_, _ = f.shape
    _, m_, k_ = idx.shape
    out = np.empty((b_, c_, m_, k_), f.dtype)
    for q in numba.prange(b_ * c_):
        b, c = q // c_, q % c_
        for m in range(m_):
            for j in range(k_):
                out[b, c, m, j] = f[b, c, idx[b, m, j]]
    return out


@numba.njit(parallel=True, **_JIT)
def _scatter_add(g: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover
    # one (batch, channel) row per task: no two tasks write the same element
    b_, c_, m_, k_ = g.shape
    out = np.zeros((b_, c_, n), g.dtype)
    for q in numba.prange(b_ * c_):
        b, c = q // c_, q % c_
        for m in range(m_):
            for j in range(k_):
                out[b, c, idx[b, m, j]] += g[b, c, m, j]
    return out


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_gather(features.detach().contiguous().numpy(),
                                    idx.contiguous().numpy()))


def gather_group_backward(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(_scatter_add(grad.detach().contiguous().numpy(),
                                         idx.contiguous().numpy(), n))


@numba.njit(parallel=True, **_JIT)
def _interpolate(f: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    # pragma: no cover
    # one (batch, channel) row per task; the weighted sum is formed in place, without the
    # [B, C, n, 3] gathered tensor a gather-then-sum would stream through memory twice
    b_, c_, _ = f.shape
    n_ = idx.shape[1]
    out = np.empty((b_, c_, n_), f.dtype)
    for q in numba.prange(b_ * c_):
        b, c = q // c_, q % c_
        row = f[b, c]
        for i in range(n_):
            out[b, c, i] = (row[idx[b, i, 0]] * w[b, i, 0] + row[idx[b, i, 1]] * w[b, i, 1]
                            + row[idx[b, i, 2]] * w[b, i, 2])
    return out


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    f = features.detach().contiguous()
    return torch.from_numpy(_interpolate(f.numpy(), idx.contiguous().numpy(),
                                         weight.detach().to(f.dtype).contiguous().numpy()))


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
    sums = torch.from_numpy(_column_moments(y.detach().contiguous().numpy(), _chunks()))
    mean = sums[0] / y.shape[0]
    var = (sums[1] / y.shape[0] - mean.square()).clamp_min(0.0)
    return mean.to(y.dtype), var.to(y.dtype)


@numba.njit(parallel=True, **_JIT)
def _affine_relu(y: np.ndarray, scale: np.ndarray, shift: np.ndarray, chunks: int
                 ) -> np.ndarray:  # pragma: no cover
    rows, cols = y.shape
    out = np.empty_like(y)
    step = (rows + chunks - 1) // chunks
    for t in numba.prange(chunks):
        for i in range(t * step, min(rows, (t + 1) * step)):
            for j in range(cols):
                v = y[i, j] * scale[j] + shift[j]
                out[i, j] = v if v > 0 else 0.0
    return out


@numba.njit(parallel=True, **_JIT)
def _masked_moments(g: np.ndarray, y: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                    chunks: int) -> np.ndarray:  # pragma: no cover
    # per column: sum of g where the ReLU was active (y * scale + shift > 0, recomputed
    # rather than read back from the output), and sum of g * y there
    rows, cols = y.shape
    step = (rows + chunks - 1) // chunks
    part = np.zeros((chunks, 2, cols), np.float64)
    for t in numba.prange(chunks):
        s = np.zeros(cols, np.float64)
        sy = np.zeros(cols, np.float64)
        for i in range(t * step, min(rows, (t + 1) * step)):
            for j in range(cols):
                v = y[i, j]
                if v * scale[j] + shift[j] > 0:
                    s[j] += g[i, j]
                    sy[j] += g[i, j] * v
        part[t, 0] = s
        part[t, 1] = sy
    return part.sum(0)


@numba.njit(parallel=True, **_JIT)
def _bn_relu_input_grad(g: np.ndarray, y: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                        a: np.ndarray, d: np.ndarray, e: np.ndarray, chunks: int
                        ) -> np.ndarray:  # pragma: no cover
    rows, cols = y.shape
    dy = np.empty_like(y)
    step = (rows + chunks - 1) // chunks
    for t in numba.prange(chunks):
        for i in range(t * step, min(rows, (t + 1) * step)):
            for j in range(cols):
                v = y[i, j]
                gz = g[i, j] if v * scale[j] + shift[j] > 0 else 0.0
                dy[i, j] = a[j] * gz + d[j] - e[j] * v
    return dy


def _chunks() -> int:
    # a few chunks per thread so that uneven threads still finish together
    return 4 * numba.get_num_threads()


def affine_relu(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """max(0, y * scale + shift) for y [R, C], one pass."""
    out = _affine_relu(y.contiguous().numpy(), scale.contiguous().numpy(),
                       shift.contiguous().numpy(), _chunks())
    return torch.from_numpy(out)


def batch_norm_relu_backward(g: torch.Tensor, y: torch.Tensor, scale: torch.Tensor,
                             shift: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                             weight: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (y, weight, bias) of out = relu(y * scale + shift) where scale and shift are
    BatchNorm's with batch statistics (mean, invstd), in two passes over g and y."""
    rows = y.shape[0]
    g_np, y_np = g.contiguous().numpy(), y.numpy()
    sc, sh = scale.contiguous().numpy(), shift.contiguous().numpy()
    m = _masked_moments(g_np, y_np, sc, sh, _chunks())
    sum_g = torch.from_numpy(m[0])
    # sum of g * xhat = invstd * (sum g*y - mean * sum g)
    sum_g_xhat = invstd.double() * (torch.from_numpy(m[1]) - mean.double() * sum_g)
    a = weight.double() * invstd.double()
    c = a * sum_g_xhat / rows
    e = c * invstd.double()
    d = e * mean.double() - a * sum_g / rows
    dy = _bn_relu_input_grad(g_np, y_np, sc, sh, a.to(y.dtype).numpy(), d.to(y.dtype).numpy(),
                             e.to(y.dtype).numpy(), _chunks())
    return torch.from_numpy(dy), sum_g_xhat.to(weight.dtype), sum_g.to(weight.dtype)


@numba.njit(parallel=True, **_JIT)
def _moments_and_max(y: np.ndarray, k: int, chunks: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    # y [G*k, C]: column sums and sums of squares, and the max over each group of k rows
    # (first row of the max on ties), in one read of y
    rows, cols = y.shape
    groups = rows // k
    step = (groups + chunks - 1) // chunks
    part = np.zeros((chunks, 2, cols), np.float64)
    pooled = np.empty((groups, cols), y.dtype)
    arg = np.empty((groups, cols), np.int32)
    for t in numba.prange(chunks):
        s = np.zeros(cols, np.float64)
        q = np.zeros(cols, np.float64)
        for g in range(t * step, min(groups, (t + 1) * step)):
            base = g * k
            for c in range(cols):
                pooled[g, c] = y[base, c]
                arg[g, c] = 0
            for j in range(k):
                for c in range(cols):
                    v = y[base + j, c]
                    s[c] += v
                    q[c] += v * v
                    if v > pooled[g, c]:
                        pooled[g, c] = v
                        arg[g, c] = j
        part[t, 0] = s
        part[t, 1] = q
    return part.sum(0), pooled, arg


@numba.njit(parallel=True, **_JIT)
def _moments_and_max_backward(y: np.ndarray, arg: np.ndarray, gpool: np.ndarray, a: np.ndarray,
                              bcoef: np.ndarray, chunks: int) -> np.ndarray:  # pragma: no cover
    # dy = a + bcoef * y, plus the pooled gradient on each group's max row
    rows, cols = y.shape
    groups, _ = arg.shape
    k = rows // groups
    dy = np.empty_like(y)
    step = (groups + chunks - 1) // chunks
    for t in numba.prange(chunks):
        for g in range(t * step, min(groups, (t + 1) * step)):
            base = g * k
            for j in range(k):
                for c in range(cols):
                    dy[base + j, c] = a[c] + bcoef[c] * y[base + j, c]
            for c in range(cols):
                dy[base + arg[g, c], c] += gpool[g, c]
    return dy


def moments_and_max(y: torch.Tensor, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [C], biased var [C], max over groups of k rows [G, C], its row in the group)."""
    sums, pooled, arg = _moments_and_max(y.detach().contiguous().numpy(), k, _chunks())
    rows = y.shape[0]
    mean = torch.from_numpy(sums[0] / rows)
    var = (torch.from_numpy(sums[1] / rows) - mean.square()).clamp_min(0.0)
    return mean.to(y.dtype), var.to(y.dtype), torch.from_numpy(pooled), torch.from_numpy(arg)


def moments_and_max_backward(y: torch.Tensor, mean: torch.Tensor, arg: torch.Tensor,
                             g_mean: torch.Tensor, g_var: torch.Tensor, g_pooled: torch.Tensor
                             ) -> torch.Tensor:
    rows = y.shape[0]
    bcoef = 2.0 * g_var.double() / rows
    a = g_mean.double() / rows - bcoef * mean.double()
    return torch.from_numpy(_moments_and_max_backward(
        y.detach().contiguous().numpy(), arg.numpy(), g_pooled.contiguous().numpy(),
        a.to(y.dtype).numpy(), bcoef.to(y.dtype).numpy(), _chunks()))


@numba.njit(parallel=True, **_JIT)
def _group_relative(rows: np.ndarray, centers: np.ndarray, idx: np.ndarray
                    ) -> np.ndarray:  # pragma: no cover
    # out[g*k + j] = rows[idx[g, j]] - centers[g]
    groups, k = idx.shape
    cols = rows.shape[1]
    out = np.empty((groups * k, cols), rows.dtype)
    for g in numba.prange(groups):
        for j in range(k):
            r = idx[g, j]
            for c in range(cols):
                out[g * k + j, c] = rows[r, c] - centers[g, c]
    return out


@numba.njit(parallel=True, **_JIT)
def _group_relative_backward(grad: np.ndarray, idx: np.ndarray, n_rows: int, batches: int
                             ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    # Each batch's centres only index that batch's rows, so batches scatter without races.
    groups, k = idx.shape
    cols = grad.shape[1]
    g_rows = np.zeros((n_rows, cols), grad.dtype)
    g_centers = np.zeros((groups, cols), grad.dtype)
    per = groups // batches
    for b in numba.prange(batches):
        for g in range(b * per, (b + 1) * per):
            for j in range(k):
                r = idx[g, j]
                for c in range(cols):
                    v = grad[g * k + j, c]
                    g_rows[r, c] += v
                    g_centers[g, c] -= v
    return g_rows, g_centers


def group_relative(rows: torch.Tensor, centers: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_group_relative(rows.detach().contiguous().numpy(),
                                            centers.detach().contiguous().numpy(),
                                            idx.contiguous().numpy()))


def group_relative_backward(grad: torch.Tensor, idx: torch.Tensor, n_rows: int, batches: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    g_rows, g_centers = _group_relative_backward(grad.contiguous().numpy(),
                                                 idx.contiguous().numpy(), n_rows, batches)
    return torch.from_numpy(g_rows), torch.from_numpy(g_centers)
