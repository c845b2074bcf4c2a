"""The portable path: every op as plain, differentiable torch, so that the models trace,
script and export (ONNX, TorchScript, torch.export) and run on any device torch supports.

The indices are exactly those of the CPU path (tests/ops/oracle.py spells the semantics
out): squared distances are rounded the same way (dx*dx + dy*dy + dz*dz in float32, added
left to right, never a matrix-product expansion), and every selection is written with
first-index tie-breaking that ONNX specifies too (ArgMax / ArgMin select the first
extremum; TopK here only ever sees distinct keys). Nothing reads a tensor value back into
Python, so no input size or value is baked into a trace: batch and cloud sizes stay dynamic.

It is slower than the numba loops on the CPU (dense distance matrices, an FPS step per
sampled point), which is why it is chosen only while exporting or with AFFCLI_OPS=torch.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np
import torch


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 over the last axis (size 3) of broadcast a and b, rounded as the CPU path
    rounds it (the three products summed left to right, no fused multiply-add)."""
    d = a - b
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    return dx * dx + dy * dy + dz * dz


def _fps_step(xyz: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One FPS step: relax the distances by the last chosen point idx [B, 1], then the next
    point is the first index of the maximum (torch.argmax and ONNX ArgMax agree on it)."""
    q = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))  # [B, 1, 3]
    dist = torch.minimum(dist, _sqdist(xyz, q))
    return torch.argmax(dist, dim=1, keepdim=True), dist


def _fps_unrolled(xyz: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    dist = torch.full_like(xyz[..., 0], float("inf"))  # [B, N]
    chosen = [idx]
    for _ in range(n - 1):
        idx, dist = _fps_step(xyz, idx, dist)
        chosen.append(idx)
    return torch.cat(chosen, dim=1)


def _fps_scripted_body(xyz: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    # TorchScript source: the loop stays one prim::Loop (one ONNX Loop node) in a trace
    dist = torch.full_like(xyz[:, :, 0], float("inf"))
    out = idx.expand(-1, n).contiguous()
    for i in range(1, n):
        q = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
        d = xyz - q
        dx, dy, dz = d[:, :, 0], d[:, :, 1], d[:, :, 2]
        dist = torch.minimum(dist, dx * dx + dy * dy + dz * dz)
        idx = torch.argmax(dist, dim=1, keepdim=True)
        out = out.scatter(1, torch.full_like(idx, i), idx)
    return out


@functools.cache
def _fps_scripted() -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what we want here
        return torch.jit.script(_fps_scripted_body)


def _fps_while_loop(xyz: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    # torch.export's loop: one higher-order op, exported as one ONNX Loop node
    from torch._higher_order_ops.while_loop import while_loop

    def cond(i: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor, out: torch.Tensor
             ) -> torch.Tensor:
        return i < n

    def body(i: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor, out: torch.Tensor
             ) -> tuple[torch.Tensor, ...]:
        idx, dist = _fps_step(xyz, idx, dist)
        out = out.scatter(1, i + torch.zeros_like(idx), idx)
        # while_loop's outputs must not alias its inputs
        return i + 1, idx.clone(), dist.clone(), out.clone()

    start = (torch.ones((), dtype=torch.int64, device=xyz.device), idx,
             torch.full_like(xyz[..., 0], float("inf")), idx.expand(-1, n).contiguous())
    return while_loop(cond, body, start)[3]


def farthest_point_sample(xyz: torch.Tensor, n: int, starts: torch.Tensor) -> torch.Tensor:
    """[B, n] int64; `starts` [B] is each cloud's first index.

    One relax / argmax step per sampled point. Unrolled, a trace would hold n steps of a
    dozen nodes each (about 700 steps over the three set abstractions), and onnxruntime
    takes about a minute just to load such a graph; so the loop is kept a loop while a graph
    is recorded: TorchScript's for-loop under jit.trace (TorchScript and the legacy ONNX
    exporter), the while_loop operator under torch.export / torch.compile (the dynamo ONNX
    exporter). Eagerly it is a plain Python loop."""
    idx = starts.to(torch.int64).view(-1, 1)  # [B, 1]
    if n == 1:
        return idx
    if torch.jit.is_tracing():
        return _fps_scripted()(xyz, n, idx)
    if torch.compiler.is_compiling():
        return _fps_while_loop(xyz, n, idx)
    return _fps_unrolled(xyz, n, idx)


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """[B, M, k] int64: the first k indices (in index order) within `radius`, padded with the
    first one found, all zeros when none is.

    Each point's key is its index where it is in the ball and N (past every index) where it
    is not; the k smallest keys, ascending, are the first k indices in the ball. Keys are
    distinct except the N sentinels, which are all replaced, so TopK's order is exact."""
    num = xyz.shape[1]
    # float32 r^2 rounded from the float64 product, as the CPU kernel compares against
    r2 = float(np.float32(radius * radius))
    inside = _sqdist(xyz.unsqueeze(1), centers.unsqueeze(2)) <= r2  # [B, M, N]
    order = torch.arange(num, device=xyz.device).expand_as(inside)
    keys = torch.where(inside, order, torch.full_like(order, num))
    kk = min(k, num)
    first_k = torch.topk(keys, kk, dim=-1, largest=False, sorted=True).values
    if kk < k:  # fewer points than slots: pad with sentinels, replaced below like any other
        first_k = torch.cat([first_k, torch.full_like(first_k[..., :1], num)
                             .expand(-1, -1, k - kk)], dim=-1)
    first = first_k[..., :1]
    first = torch.where(first == num, torch.zeros_like(first), first)  # empty ball: zeros
    return torch.where(first_k == num, first.expand_as(first_k), first_k)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist2 [B, n, 3], idx [B, n, 3] int64), ascending, ties to the lower index.

    Three argmin passes, each masking the previous pick, instead of a sort or TopK: ArgMin
    returns the first minimum in torch and in ONNX alike, which is exactly the CPU kernel's
    tie-breaking, where TopK's order among equal distances is not specified by torch."""
    d = _sqdist(known.unsqueeze(1), unknown.unsqueeze(2))  # [B, n, m]
    dists, idxs = [], []
    for j in range(3):
        i = torch.argmin(d, dim=-1, keepdim=True)
        dists.append(torch.gather(d, -1, i))
        idxs.append(i)
        if j < 2:
            d = d.scatter(-1, i, float("inf"))
    return torch.cat(dists, dim=-1), torch.cat(idxs, dim=-1)


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, C, M, k]: features[b, :, idx[b, m, j]] (differentiable through torch.gather)."""
    b, c, _ = features.shape
    _, m, k = idx.shape
    flat = idx.reshape(b, 1, m * k).expand(b, c, m * k)
    return torch.gather(features, 2, flat).view(b, c, m, k)


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    """[B, C, n]: sum_j weight[b, i, j] * features[b, :, idx[b, i, j]] (as the CPU path:
    the gathered triple times the weights, summed over the last axis)."""
    picked = gather_group(features, idx)  # [B, C, n, 3]
    return (picked * weight.to(features.dtype).unsqueeze(1)).sum(-1)
