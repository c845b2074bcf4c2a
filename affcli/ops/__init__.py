"""Point-cloud ops of the PointNet++ engine: one public function per op.

Each dispatches on the device of its inputs: Triton kernels for CUDA tensors, the CPU path
(numba-compiled loops and torch indexing) otherwise. `AFFCLI_OPS=triton|cpu|torch` forces one
backend (tests run the Triton kernels on the CPU with `TRITON_INTERPRET=1`). `torch` is the
portable path (ops/portable.py: plain differentiable torch, same indices as the CPU path);
it is always used while tracing, scripting or exporting (see `exporting()`), because neither
numba nor Triton kernels can be recorded into a graph.

Semantics (identical in every backend; `tests/ops/oracle.py` spells them out):
- farthest_point_sample: start at `start`, then repeatedly the point farthest (squared
  Euclidean) from those chosen; ties go to the lowest index.
- ball_query: the first k indices, in index order, with squared distance <= radius^2 (as the
  reference utility), padded by repeating the first found; all zeros if none is found.
- three_nn: squared distances and indices of the 3 nearest known points, ascending.
- gather_group / three_interpolate: differentiable gathers (see their docstrings).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import torch

from affcli.ops import autograd as _ag

__all__ = [
    "backend_for",
    "ball_query",
    "batch_norm_relu",
    "column_moments",
    "exporting",
    "farthest_point_sample",
    "gather_group",
    "group_relative",
    "moments_and_max",
    "three_interpolate",
    "three_nn",
]

_BACKENDS = ("triton", "cpu", "torch")


def exporting() -> bool:
    """True while torch records a graph (jit trace / script, ONNX export, torch.export,
    torch.compile): the ops then take the portable path and the modules their plain one."""
    # torch.onnx loads on first use (0.1 s): when nothing imported it, no export is running
    onnx = sys.modules.get("torch.onnx")
    if torch.jit.is_tracing() or torch.jit.is_scripting() or (
            onnx is not None and onnx.is_in_onnx_export()):
        return True
    compiler = torch.compiler
    return compiler.is_compiling() or compiler.is_exporting()


def backend_for(t: torch.Tensor) -> str:
    """The backend an op on `t` runs: torch while exporting, else AFFCLI_OPS if set, else
    triton on CUDA, cpu otherwise."""
    if exporting():
        return "torch"
    forced = os.environ.get("AFFCLI_OPS", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"AFFCLI_OPS must be one of {', '.join(_BACKENDS)}, got {forced!r}")
        return forced
    return "triton" if t.is_cuda else "cpu"


def _impl(t: torch.Tensor) -> ModuleType:
    backend = backend_for(t)
    if backend == "triton":
        from affcli.ops import triton as impl
    elif backend == "torch":
        from affcli.ops import portable as impl
    else:
        from affcli.ops import cpu as impl
    return impl


def _check_points(name: str, t: torch.Tensor, batch: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch size {t.shape[0]}, expected {batch}")


def _check_index(name: str, idx: torch.Tensor, shape: tuple[int, ...], upper: int) -> None:
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer (int64/int32) tensor, got {idx.dtype}")
    if tuple(idx.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(idx.shape)}")
    # (a value check reads the tensor back: not possible, nor needed, inside a graph)
    if not exporting() and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= upper):
        raise IndexError(f"{name} holds indices outside [0, {upper})")


def farthest_point_sample(xyz: torch.Tensor, n: int, start: int | None = 0) -> torch.Tensor:
    """Indices [B, n] (int64) of `n` points chosen by farthest point sampling.

    `start` is the first index for every cloud (the established CUDA kernels use 0); None
    draws one start per cloud from torch's global RNG, as the reference utility does.
    """
    _check_points("xyz", xyz)
    b, num, _ = xyz.shape
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if n > num:
        raise ValueError(f"cannot sample n={n} points from clouds of N={num} points")
    if start is None:
        starts = torch.randint(0, num, (b,), dtype=torch.int64)
    else:
        if not 0 <= int(start) < num:
            raise ValueError(f"start={start} is outside [0, {num})")
        # full_like of a batch-shaped slice rather than full((b,)): a traced graph keeps the
        # batch size dynamic instead of recording b as a constant
        starts = torch.full_like(xyz[:, 0, 0], int(start), dtype=torch.int64)
    return _impl(xyz).farthest_point_sample(xyz.detach().float().contiguous(), n,
                                            starts.to(xyz.device))


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Indices [B, M, k] (int64) of up to k points within `radius` of each centre."""
    _check_points("xyz", xyz)
    _check_points("centers", centers, batch=xyz.shape[0])
    if centers.device != xyz.device:
        raise ValueError("xyz and centers must be on the same device")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return _impl(xyz).ball_query(xyz.detach().float().contiguous(),
                                 centers.detach().float().contiguous(), float(radius), k)


def three_nn(unknown: torch.Tensor, known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dist2 [B, n, 3], idx [B, n, 3] int64): the 3 nearest `known` points of each
    `unknown` point, by squared distance, ascending."""
    _check_points("unknown", unknown)
    _check_points("known", known, batch=unknown.shape[0])
    if known.shape[1] < 3:
        raise ValueError(f"three_nn needs at least 3 known points, got {known.shape[1]}")
    if known.device != unknown.device:
        raise ValueError("unknown and known must be on the same device")
    return _impl(unknown).three_nn(unknown.detach().float().contiguous(),
                                   known.detach().float().contiguous())


def gather_group(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, C, M, k]: `features[b, :, idx[b, m, j]]`; differentiable in `features`."""
    if features.dim() != 3:
        raise ValueError(f"features must have shape [B, C, N], got {list(features.shape)}")
    b, _, n = features.shape
    if idx.dim() != 3 or idx.shape[0] != b:
        raise ValueError(f"idx must have shape [B={b}, M, k], got {list(idx.shape)}")
    _check_index("idx", idx, tuple(idx.shape), n)
    if backend_for(features) == "torch":  # differentiable as it is: no autograd Function
        from affcli.ops import portable

        return portable.gather_group(features, idx.long())
    return _ag.GatherGroup.apply(features, idx.long(), _impl(features))


def three_interpolate(features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    """[B, C, n]: `sum_j weight[b, i, j] * features[b, :, idx[b, i, j]]`; differentiable in
    `features` and `weight`."""
    if features.dim() != 3:
        raise ValueError(f"features must have shape [B, C, m], got {list(features.shape)}")
    b, _, m = features.shape
    if idx.dim() != 3 or idx.shape[0] != b or idx.shape[2] != 3:
        raise ValueError(f"idx must have shape [B={b}, n, 3], got {list(idx.shape)}")
    _check_index("idx", idx, tuple(idx.shape), m)
    if tuple(weight.shape) != tuple(idx.shape):
        raise ValueError(f"weight must have the shape of idx {list(idx.shape)}, got "
                         f"{list(weight.shape)}")
    if backend_for(features) == "torch":
        from affcli.ops import portable

        return portable.three_interpolate(features, idx.long(), weight)
    if backend_for(features) == "cpu" and features.dtype in (torch.bfloat16, torch.float16):
        # (bfloat16 inference, `--amp` on the CPU: the compiled kernels take float32/64)
        return three_interpolate(features.float(), idx, weight.float()).to(features.dtype)
    return _ag.ThreeInterpolate.apply(features, idx.long(), weight, _impl(features))


def column_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [C], biased variance [C]) over the rows of y [R, C], differentiable: the batch
    statistics of BatchNorm, computed in one pass on the CPU."""
    if y.dim() != 2 or not y.is_floating_point():
        raise ValueError(f"y must be a 2-D floating tensor [R, C], got {list(y.shape)} {y.dtype}")
    if backend_for(y) == "cpu":
        from affcli.ops import cpu

        return _ag.ColumnMoments.apply(y, cpu)
    mean = y.mean(0)
    return mean, (y - mean).square().mean(0)


def batch_norm_relu(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(relu(batch_norm(y)), batch mean, biased batch variance) for y [R, C] in training
    mode (batch statistics), differentiable in y, weight and bias. The caller updates any
    running statistics from the returned moments."""
    if y.dim() != 2 or not y.is_floating_point():
        raise ValueError(f"y must be a 2-D floating tensor [R, C], got {list(y.shape)} {y.dtype}")
    if backend_for(y) == "cpu":
        from affcli.ops import cpu

        return _ag.BatchNormReLU.apply(y, weight, bias, eps, cpu)
    mean = y.detach().mean(0)
    var = y.detach().var(0, unbiased=False)
    out = torch.nn.functional.batch_norm(y, None, None, weight, bias, True, 0.0, eps)
    return torch.relu(out), mean, var


def moments_and_max(y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [C], biased variance [C], max over each group of k consecutive rows [R/k, C]) of
    y [R, C], differentiable; one pass forward and one backward on the CPU."""
    if y.dim() != 2 or y.shape[0] % k:
        raise ValueError(f"y must be [R, C] with R a multiple of k={k}, got {list(y.shape)}")
    if backend_for(y) == "cpu":
        from affcli.ops import cpu

        return _ag.MomentsAndMax.apply(y, k, cpu)
    mean = y.mean(0)
    return mean, (y - mean).square().mean(0), y.view(-1, k, y.shape[1]).max(1).values


def group_relative(rows: torch.Tensor, centers: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B*M*k, C]: `rows[b, idx[b, m, j]] - centers[b, m]`, the grouped neighbourhoods
    relative to their centres, flattened; differentiable in rows and centers."""
    b, n, c = rows.shape
    _, m, k = idx.shape
    if centers.shape != (b, m, c):
        raise ValueError(f"centers must be [B={b}, M={m}, C={c}], got {list(centers.shape)}")
    flat = (idx + (torch.arange(b, device=idx.device) * n).view(b, 1, 1)).reshape(b * m, k)
    if backend_for(rows) == "cpu":
        from affcli.ops import cpu

        return _ag.GroupRelative.apply(rows.reshape(b * n, c), centers.reshape(b * m, c), flat,
                                       b, cpu)
    picked = rows.reshape(b * n, c).index_select(0, flat.reshape(-1)).view(b * m, k, c)
    return (picked - centers.reshape(b * m, 1, c)).reshape(b * m * k, c)
