"""PointNet++ computed the way the reference utility computes it, for `affcli bench ops` and
equivalence tests only: a Python loop of torch ops for FPS, a dense N x M distance matrix and
a sort for the ball query, and NCHW 1x1 convolutions over the grouped neighbourhoods.

The encoder here borrows the parameters of an affcli `PointNet2Encoder`, so both compute the
same function and only the algorithms differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from affcli.nn.pointnet2 import PointNet2Encoder, SetAbstractionMSG, SharedMLP


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[B, N, M] squared distances by |a|^2 + |b|^2 - 2 a.b, as the reference utility."""
    dist = -2 * torch.matmul(src, dst.transpose(1, 2))
    dist += (src**2).sum(-1).unsqueeze(-1)
    dist += (dst**2).sum(-1).unsqueeze(1)
    return dist


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    b = points.shape[0]
    batch = torch.arange(b, device=points.device).view(b, *([1] * (idx.dim() - 1)))
    return points[batch.expand_as(idx), idx]


def farthest_point_sample(xyz: torch.Tensor, n: int, start: int | None = 0) -> torch.Tensor:
    b, num, _ = xyz.shape
    out = torch.zeros(b, n, dtype=torch.long, device=xyz.device)
    distance = torch.full((b, num), 1e10, dtype=xyz.dtype, device=xyz.device)
    far = (torch.randint(0, num, (b,), dtype=torch.long) if start is None
           else torch.full((b,), start, dtype=torch.long)).to(xyz.device)
    batch = torch.arange(b, device=xyz.device)
    for i in range(n):
        out[:, i] = far
        d = ((xyz - xyz[batch, far].view(b, 1, 3)) ** 2).sum(-1)
        mask = d < distance
        distance[mask] = d[mask]
        far = distance.max(-1)[1]
    return out


def ball_query(xyz: torch.Tensor, centers: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    b, num, _ = xyz.shape
    m = centers.shape[1]
    idx = torch.arange(num, device=xyz.device).view(1, 1, num).repeat(b, m, 1)
    idx[square_distance(centers, xyz) > radius**2] = num
    idx = idx.sort(dim=-1)[0][:, :, :k]
    first = idx[:, :, :1].expand(-1, -1, k)
    mask = idx == num
    idx[mask] = first[mask]
    return idx


def _conv_mlp(mlp: SharedMLP, x: torch.Tensor) -> torch.Tensor:
    """NCHW 1x1 convolutions + BatchNorm2d + ReLU with `mlp`'s parameters."""
    for lin, bn in zip(mlp.linears, mlp.norms, strict=True):
        x = F.conv2d(x, lin.weight[:, :, None, None], lin.bias)
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         bn.training, bn.momentum, bn.eps)
        x = F.relu(x)
    return x


def set_abstraction(sa: SetAbstractionMSG, xyz: torch.Tensor, features: torch.Tensor | None,
                    centers_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference MSG forward with `sa`'s parameters (channels-last in and out)."""
    if centers_idx is None:
        centers_idx = farthest_point_sample(xyz, sa.num_centers, sa.fps_start)
    centers = index_points(xyz, centers_idx)
    outs = []
    for radius, k, mlp in zip(sa.radii, sa.num_neighbors, sa.scales, strict=True):
        idx = ball_query(xyz, centers, radius, k)
        rel = index_points(xyz, idx) - centers.unsqueeze(2)
        grouped = rel if features is None else torch.cat([index_points(features, idx), rel], -1)
        h = _conv_mlp(mlp, grouped.permute(0, 3, 2, 1))  # [B, C, k, M]
        outs.append(h.max(2)[0].transpose(1, 2))
    return centers, torch.cat(outs, -1)


def encoder_forward(enc: PointNet2Encoder, points: torch.Tensor
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    levels = [(points[..., :3], points)]
    for sa in (enc.sa1, enc.sa2, enc.sa3):
        levels.append(set_abstraction(sa, *levels[-1]))
    return levels
