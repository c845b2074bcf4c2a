"""PointNet++ modules on the affcli ops: multi-scale set abstraction, feature propagation, and
the encoder configuration PointRefer, IAGNet and LMAffordance3D share.

Everything runs channels-last ([B, N, C]) so each shared MLP layer is one matrix product over
all grouped positions instead of an NCHW 1x1 convolution. The first layer of each scale is
linear in [neighbour features, neighbour xyz - centre xyz], so it is applied once per point
before grouping and the centre's term is subtracted after: the same function as the reference
(conv on the grouped tensor), with far fewer multiply-adds.

Parameters follow the reference layout (a Conv + BatchNorm per layer, input channels ordered
features first, then relative xyz) so official checkpoints map one-to-one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from affcli.nn import syncbn
from affcli.nn.syncbn import sync_active
from affcli.ops import (
    ball_query,
    batch_norm_relu,
    exporting,
    farthest_point_sample,
    group_relative,
    moments_and_max,
    three_interpolate,
    three_nn,
)


class SharedMLP(nn.Module):
    """Linear + BatchNorm + ReLU layers over the last axis of a [..., C] tensor.

    The parameters are a Linear and a BatchNorm1d per layer (the reference's Conv + BatchNorm),
    but the arithmetic is fused for speed on the large grouped tensors:
    - training: the Linear's bias is left out of the product because BatchNorm's batch mean
      cancels it exactly (it still enters the running mean, as in the reference); the batch
      statistics come from one sum and one sum of squares; normalisation and ReLU are one
      multiply-add and an in-place clamp;
    - eval: BatchNorm is folded into the Linear, so a layer is one addmm and a clamp;
    - with `pool_dim`, the last layer max-pools before its normalisation and ReLU: both are
      monotonic per channel (increasing when the BatchNorm scale is >= 0; channels with a
      negative scale are negated first, by flipping their weight rows), so pooling first gives
      the same values while normalising a tensor k times smaller.
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        last = in_channels
        for c in channels:
            self.linears.append(nn.Linear(last, c))
            self.norms.append(nn.BatchNorm1d(c))
            last = c
        self.out_channels = last

    def _update_running(self, i: int, mean: torch.Tensor, var: torch.Tensor, rows: int) -> None:
        """BatchNorm's running statistics, as the module would keep them for y + bias (the
        batch statistics here are of the pre-bias product y)."""
        with torch.no_grad():
            syncbn.update_running(self.norms[i], mean + self.linears[i].bias, var, rows)

    def _folded(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval BatchNorm as y * scale + shift for the pre-bias product y (the Linear's bias
        is inside shift)."""
        bn, lin = self.norms[i], self.linears[i]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return scale, bn.bias + (lin.bias - bn.running_mean) * scale

    def _norm_relu(self, i: int, y: torch.Tensor) -> torch.Tensor:
        """relu(BatchNorm(y + bias)) of a pre-bias product y [R, C]."""
        if not self.training:
            scale, shift = self._folded(i)
            return torch.addcmul(shift, y, scale).relu_()
        bn = self.norms[i]
        if sync_active():  # statistics over every process of a distributed run
            mean, var = syncbn.moments(y)
            self._update_running(i, mean, var, syncbn.global_rows(y.shape[0]))
            scale = bn.weight * torch.rsqrt(var + bn.eps)
            return torch.addcmul(bn.bias - mean * scale, y, scale).relu_()
        out, mean, var = batch_norm_relu(y, bn.weight, bn.bias, bn.eps)
        self._update_running(i, mean, var, y.shape[0])
        return out

    def _pooled_last(self, i: int, x: torch.Tensor, pool: int) -> torch.Tensor:
        lin, bn = self.linears[i], self.norms[i]
        if not self.training:
            scale, shift = self._folded(i)
            y = (x @ (lin.weight * scale.unsqueeze(1)).t()).view(-1, pool, scale.shape[0])
            return (y.amax(1) + shift).relu_()  # folded: increasing in y, pool by max
        # Flip the channels whose BatchNorm scale is negative (fold the sign into the weight):
        # then normalisation is increasing in every channel and one max pools them all.
        sign = torch.where(bn.weight.detach() >= 0, 1.0, -1.0).to(x.dtype)
        y = x @ (lin.weight * sign.unsqueeze(1)).t()
        if sync_active():
            mean, var = syncbn.moments(y)
            pooled = y.view(-1, pool, y.shape[1]).amax(1)
            rows = syncbn.global_rows(y.shape[0])
        else:
            mean, var, pooled = moments_and_max(y, pool)
            rows = y.shape[0]
        self._update_running(i, sign * mean.detach(), var.detach(), rows)
        scale = bn.weight.abs() * torch.rsqrt(var + bn.eps)
        return torch.addcmul(bn.bias - mean * scale, pooled, scale).relu_()

    def _layer(self, i: int, x: torch.Tensor, pool: int | None) -> torch.Tensor:
        if pool is not None:
            return self._pooled_last(i, x, pool)
        lin = self.linears[i]
        if not self.training:
            scale, shift = self._folded(i)
            return torch.addmm(shift, x, (lin.weight * scale.unsqueeze(1)).t()).relu_()
        return self._norm_relu(i, x @ lin.weight.t())

    def forward(self, x: torch.Tensor, start: int = 0, pool_dim: int | None = None
                ) -> torch.Tensor:
        """x [..., C_in] -> [..., C_out]; with pool_dim, the max over that axis is taken and
        the axis removed. `start` skips layers the caller has applied (see `normalize`)."""
        shape = x.shape
        pool = None
        if pool_dim is not None:
            pool_dim = pool_dim % x.dim()
            if pool_dim != x.dim() - 2:
                raise ValueError("pool_dim must be the axis just before the channels")
            pool = shape[pool_dim]
        out_shape = [s for d, s in enumerate(shape[:-1]) if d != pool_dim]
        h = x.reshape(-1, shape[-1])
        n = len(self.linears)
        for i in range(start, n):
            h = self._layer(i, h, pool if i == n - 1 else None)
        return h.reshape(*out_shape, h.shape[-1])

    def normalize(self, i: int, y: torch.Tensor) -> torch.Tensor:
        """BatchNorm + ReLU of layer i applied to an already computed pre-bias product
        y [..., C] (the set abstraction computes its first layer itself)."""
        shape = y.shape
        return self._norm_relu(i, y.reshape(-1, shape[-1])).reshape(shape)


def gather_rows(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """values [B, N, C], idx [B, ...] -> [B, ..., C] (index_select on the flattened batch:
    its backward is an index_add, much cheaper than advanced indexing's)."""
    b, n, c = values.shape
    offset = (torch.arange(b, device=idx.device) * n).view(b, *([1] * (idx.dim() - 1)))
    flat = (idx + offset).reshape(-1)
    return values.reshape(b * n, c).index_select(0, flat).reshape(*idx.shape, c)


# Rows per block of the inference path: small enough that a block's activations stay in the
# CPU caches between layers (a few MB), large enough that the per-block overhead is small.
INFERENCE_BLOCK_ROWS = 4096


def distinct_neighbors(idx: torch.Tensor) -> torch.Tensor:
    """[..., k] bool: the slots of a ball query's answer that hold a distinct point. The
    query lists the points of a ball in index order and pads a ball with fewer than k points
    by repeating the first, so a slot after the first is padding where it repeats it."""
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[..., 1:] = idx[..., 1:] != idx[..., :1]
    return keep


def _grouped_mlp_inference(mlp: SharedMLP, per_point: torch.Tensor, per_center: torch.Tensor,
                           idx: torch.Tensor) -> torch.Tensor:
    """Eval-mode grouped MLP + max-pool, in blocks of centres: each block goes through every
    layer while its activations are still in cache, instead of every layer streaming the
    whole [B, M, k, C] tensor through memory.

    Only the distinct neighbours of each centre are computed: the padding repeats of a
    sparse ball (`distinct_neighbors`) would give the same rows again, which the max-pool
    ignores. On 512-point clouds of most shapes the first level's balls hold a third of their
    k slots or fewer, so this skips most of that level's work (not on thin shapes, whose
    balls are full). Same values as the unblocked path."""
    b, n, c1 = per_point.shape
    _, m, k = idx.shape
    flat = (idx + (torch.arange(b, device=idx.device) * n).view(b, 1, 1)).reshape(b * m, k)
    keep = distinct_neighbors(flat)
    counts = keep.sum(1)
    neighbor = flat[keep]  # the distinct rows, centre by centre
    owner = torch.repeat_interleave(torch.arange(b * m, device=idx.device), counts)
    # The compute dtype: per_point's, which is bfloat16 under autocast (`eval --amp`). The
    # folded weights and shifts are cast once here, not by autocast in every block.
    dt = per_point.dtype
    rows, centers = per_point.reshape(b * n, c1), per_center.reshape(b * m, c1).to(dt)
    folded = [tuple(t.to(dt) for t in mlp._folded(i)) for i in range(len(mlp.linears))]
    weights = [(lin.weight.to(dt) * sc.unsqueeze(1)).t().contiguous()
               for lin, (sc, _) in zip(mlp.linears, folded, strict=True)]
    out = per_point.new_empty(b * m, mlp.out_channels)
    # blocks of whole centres holding about INFERENCE_BLOCK_ROWS distinct rows each
    ends = torch.cumsum(counts, 0)
    marks = torch.arange(INFERENCE_BLOCK_ROWS, max(int(ends[-1]), INFERENCE_BLOCK_ROWS),
                         INFERENCE_BLOCK_ROWS, device=ends.device)
    bounds = sorted({0, b * m, *(int(x) + 1 for x in torch.searchsorted(ends, marks))})
    starts = [0, *ends.tolist()]
    scale0, shift0 = folded[0]
    with torch.autocast(per_point.device.type, enabled=False):
        for c0, c2 in zip(bounds[:-1], bounds[1:], strict=True):
            r0, r2 = starts[c0], starts[c2]
            who = owner[r0:r2]
            h = rows.index_select(0, neighbor[r0:r2]) - centers.index_select(0, who)
            h = torch.addcmul(shift0, h, scale0).relu_()
            if len(weights) > 1:
                for w, (_, shift) in zip(weights[1:-1], folded[1:-1], strict=True):
                    h = torch.addmm(shift, h, w).relu_()
                h = h @ weights[-1]
            pooled = out[c0:c2]
            # max over each centre's rows (every centre has at least one)
            pooled.scatter_reduce_(0, (who - c0).unsqueeze(1).expand_as(h), h, "amax",
                                   include_self=False)
            if len(weights) > 1:
                pooled.add_(folded[-1][1]).relu_()
    return out.view(b, m, -1)


@contextlib.contextmanager
def fps_starts(model: nn.Module, start: int | None) -> Iterator[int]:
    """Every set abstraction of `model` starts FPS at `start` (None: a random index per cloud
    from torch's global RNG, as the reference utility draws it) for the duration; each
    module's own setting is restored after. Yields how many modules changed."""
    changed = [(m, m.fps_start) for m in model.modules()
               if isinstance(m, SetAbstractionMSG) and m.fps_start != start]
    for m, _ in changed:
        m.fps_start = start
    try:
        yield len(changed)
    finally:
        for m, before in changed:
            m.fps_start = before


class SetAbstractionMSG(nn.Module):
    """Multi-scale grouping set abstraction: FPS centres, a ball query per scale, a shared
    MLP on [features, relative xyz], max-pool over neighbours, scales concatenated."""

    def __init__(self, num_centers: int, radii: Sequence[float], num_neighbors: Sequence[int],
                 in_channels: int, mlps: Sequence[Sequence[int]], fps_start: int | None = 0
                 ) -> None:
        super().__init__()
        if not len(radii) == len(num_neighbors) == len(mlps):
            raise ValueError("radii, num_neighbors and mlps need one entry per scale")
        self.num_centers = num_centers
        self.radii = list(radii)
        self.num_neighbors = list(num_neighbors)
        self.in_channels = in_channels
        self.fps_start = fps_start
        self.scales = nn.ModuleList(SharedMLP(in_channels + 3, mlp) for mlp in mlps)
        self.out_channels = sum(s.out_channels for s in self.scales)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz [B, N, 3], features [B, N, D] (or None when D = 0) ->
        (centres [B, M, 3], features [B, M, sum of the scales' last widths])."""
        centers_idx = farthest_point_sample(xyz, self.num_centers, start=self.fps_start)
        centers = gather_rows(xyz, centers_idx)
        outs = []
        for radius, k, mlp in zip(self.radii, self.num_neighbors, self.scales, strict=True):
            idx = ball_query(xyz, centers, radius, k)
            first = mlp.linears[0]
            w_feat, w_xyz = first.weight[:, : self.in_channels], first.weight[:, self.in_channels:]
            # W [f_j; x_j - c] + b = (W_f f_j + W_x x_j) - W_x c + b
            per_point = xyz @ w_xyz.t()
            if features is not None and self.in_channels:
                per_point = per_point + features @ w_feat.t()
            per_center = centers @ w_xyz.t()
            # (on a GPU one large kernel per layer beats many cache-sized ones; a graph being
            # recorded takes the plain path: the blocks are a Python loop over the batch's
            # centres, which a trace would fix to the traced batch size)
            if (not self.training and not torch.is_grad_enabled() and not xyz.is_cuda
                    and not exporting()):
                outs.append(_grouped_mlp_inference(mlp, per_point, per_center, idx))
                continue
            # layer 1 without its bias (normalize() accounts for it), grouped
            b, m, k = idx.shape
            h = group_relative(per_point, per_center, idx).view(b, m, k, -1)
            h = mlp.normalize(0, h)
            if len(mlp.linears) > 1:
                h = mlp(h, start=1, pool_dim=2)
            else:
                h = h.amax(dim=2)
            outs.append(h)
        return centers, torch.cat(outs, dim=-1)


class FeaturePropagation(nn.Module):
    """Inverse-squared-distance interpolation from the 3 nearest coarse points, the skip
    features concatenated first, then a shared MLP. `eps` is added to the squared distances
    before inverting them: 1e-8 in the IAGNet and LASO references, 0.01 in LMAffordance3D's
    (where it visibly smooths the interpolation).

    Interpolation is linear, so the first layer's coarse part commutes with it:
    W [skip; sum_i w_i f_i] = W_s skip + sum_i w_i (W_f f_i). The product W_f f runs on the
    S coarse points and the interpolation on the layer's output, instead of the product on
    the N fine points: the same function with (N - S) x D2 x C fewer multiply-adds."""

    def __init__(self, in_channels: int, mlp: Sequence[int], eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.mlp = SharedMLP(in_channels, mlp)
        self.out_channels = self.mlp.out_channels

    def forward(self, xyz: torch.Tensor, coarse_xyz: torch.Tensor, skip: torch.Tensor | None,
                coarse_features: torch.Tensor) -> torch.Tensor:
        """xyz [B, N, 3], coarse_xyz [B, S, 3], skip [B, N, D1] or None,
        coarse_features [B, S, D2] -> [B, N, out_channels]."""
        b, n, _ = xyz.shape
        first = self.mlp.linears[0]
        d1 = 0 if skip is None else skip.shape[-1]
        # layer 1 without its bias (normalize() accounts for it), on the coarse points
        projected = coarse_features @ first.weight[:, d1:].t()  # [B, S, C]
        if coarse_xyz.shape[1] == 1:
            y = projected.expand(b, n, projected.shape[-1])
        else:
            dist2, idx = three_nn(xyz, coarse_xyz)
            if dist2.dtype != xyz.dtype:
                # three_nn measures in float32 (as the reference kernel); a float64 run
                # weights its neighbours by their float64 distances
                dist2 = (xyz.unsqueeze(2) - gather_rows(coarse_xyz, idx)).square().sum(-1)
            # the reference weights by inverse *squared* distance
            recip = 1.0 / (dist2 + self.eps)
            weight = recip / recip.sum(dim=-1, keepdim=True)
            y = three_interpolate(projected.transpose(1, 2), idx,
                                  weight.to(projected.dtype)).transpose(1, 2)
        if skip is not None:
            y = skip @ first.weight[:, :d1].t() + y
        h = self.mlp.normalize(0, y)
        return self.mlp(h, start=1) if len(self.mlp.linears) > 1 else h


@dataclass(frozen=True)
class EncoderConfig:
    """The PointNet++ MSG configuration of PointRefer / IAGNet / LMAffordance3D."""

    num_points: int = 2048
    extra_channels: int = 0  # e.g. 3 with normals
    sa1_centers: int = 512
    sa1_radii: tuple[float, ...] = (0.1, 0.2, 0.4)
    sa1_neighbors: tuple[int, ...] = (32, 64, 128)
    sa1_mlps: tuple[tuple[int, ...], ...] = ((32, 32, 64), (64, 64, 128), (64, 96, 128))
    sa2_centers: int = 128
    sa2_radii: tuple[float, ...] = (0.4, 0.8)
    sa2_neighbors: tuple[int, ...] = (64, 128)
    sa2_mlps: tuple[tuple[int, ...], ...] = ((128, 128, 256), (128, 196, 256))
    sa3_centers: int = 64  # N_p
    sa3_radii: tuple[float, ...] = (0.2, 0.4)
    sa3_neighbors: tuple[int, ...] = (16, 32)
    sa3_mlps: tuple[tuple[int, ...], ...] = ((128, 128, 256), (128, 196, 256))
    fps_start: int | None = 0


class PointNet2Encoder(nn.Module):
    """Three MSG set abstractions. forward(points [B, N, 3 + extra]) returns every level's
    (xyz [B, N_l, 3], features [B, N_l, C_l]): level 0 is the input (features = the input
    channels, as the reference feeds xyz as features), then 512, 128 and N_p centres with
    320, 512 and 512 channels."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or EncoderConfig()
        c0 = 3 + cfg.extra_channels
        self.sa1 = SetAbstractionMSG(cfg.sa1_centers, cfg.sa1_radii, cfg.sa1_neighbors, c0,
                                     cfg.sa1_mlps, cfg.fps_start)
        self.sa2 = SetAbstractionMSG(cfg.sa2_centers, cfg.sa2_radii, cfg.sa2_neighbors,
                                     self.sa1.out_channels, cfg.sa2_mlps, cfg.fps_start)
        self.sa3 = SetAbstractionMSG(cfg.sa3_centers, cfg.sa3_radii, cfg.sa3_neighbors,
                                     self.sa2.out_channels, cfg.sa3_mlps, cfg.fps_start)
        self.out_channels = (c0, self.sa1.out_channels, self.sa2.out_channels,
                             self.sa3.out_channels)

    def forward(self, points: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if points.dim() != 3 or points.shape[-1] != self.out_channels[0]:
            raise ValueError(f"points must have shape [B, N, {self.out_channels[0]}], got "
                             f"{list(points.shape)}")
        xyz0 = points[..., :3].contiguous()
        levels = [(xyz0, points)]
        for sa in (self.sa1, self.sa2, self.sa3):
            xyz, feats = levels[-1]
            levels.append(sa(xyz, feats))
        return levels
