"""BatchNorm whose batch statistics span every process of a distributed run.

With DistributedDataParallel each process sees 1/K of the global batch; plain BatchNorm would
normalise with per-process statistics and the run would compute a different function than one
process on the whole batch. Here the per-channel sums are all-reduced in the forward pass and
the gradients of the statistics in the backward pass, so K processes train exactly the model
one process would (up to float rounding). torch's own SyncBatchNorm refuses CPU tensors, and
gloo runs on the CPU, hence this module; it is used on GPUs as well so both paths are one.

Outside a distributed run (or with one process) everything falls back to the local statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def sync_active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SyncMoments(torch.autograd.Function):
    """(mean [C], biased var [C]) of y [R, C] over the rows of every process."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([float(y.shape[0])], dtype=torch.float64, device=y.device)
        # float64 sums: the cancellation in E[y^2] - E[y]^2 would cost float32 digits
        y64 = y.double()
        stats = torch.cat([y64.sum(0), y64.square().sum(0), rows])
        dist.all_reduce(stats)
        c = y.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean.square()).clamp_min(0)
        ctx.save_for_backward(y, mean.to(y.dtype))
        ctx.total = float(total)
        return mean.to(y.dtype), var.to(y.dtype)

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor
                 ) -> torch.Tensor:
        y, mean = ctx.saved_tensors
        # every process's loss depends on the shared statistics: sum their gradients
        grads = torch.cat([grad_mean, grad_var])
        dist.all_reduce(grads)
        c = y.shape[1]
        g_mean, g_var = grads[:c], grads[c:]
        return (g_mean + 2.0 * g_var * (y - mean)) / ctx.total


def moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch statistics of y [R, C]: across processes when a group is active, else local."""
    if sync_active():
        return _SyncMoments.apply(y)
    mean = y.mean(0)
    return mean, (y - mean).square().mean(0)


def update_running(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                   rows: int) -> None:
    """BatchNorm's running averages from batch statistics over `rows` rows (unbiased var),
    as torch's BatchNorm keeps them; shared by DistributedBatchNorm and pointnet2's SharedMLP,
    which compute the batch statistics themselves."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    with torch.no_grad():
        m = bn.momentum if bn.momentum is not None else 0.1
        bn.running_mean.mul_(1 - m).add_(m * mean.detach())
        bn.running_var.mul_(1 - m).add_(m * var.detach() * rows / max(rows - 1, 1))
        bn.num_batches_tracked.add_(1)


def global_rows(local: int) -> int:
    if not sync_active():
        return local
    t = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t)


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d with statistics over all processes in training mode. Same parameter
    and buffer names as the module it replaces, so checkpoints are interchangeable."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and sync_active()):
            return super().forward(x)
        c = x.shape[1]
        rows = x.transpose(0, 1).reshape(c, -1).t()  # [R, C], channel last
        mean, var = _SyncMoments.apply(rows)
        update_running(self, mean, var, global_rows(rows.shape[0]))
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = (x - mean.view(shape)) * scale.view(shape)
        return out + self.bias.view(shape) if self.affine else out


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in `module` (in place) by DistributedBatchNorm,
    keeping parameters and buffers; returns the module."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, DistributedBatchNorm):
            new = DistributedBatchNorm(child.num_features, child.eps, child.momentum,
                                       child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            for p_new, p_old in zip(new.parameters(), child.parameters(), strict=True):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, new.to(next(child.buffers(), torch.empty(0)).device))
        else:
            convert_batchnorm(child)
    return module


__all__ = ["DistributedBatchNorm", "convert_batchnorm", "moments", "sync_active",
           "update_running"]
