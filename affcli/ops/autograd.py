"""autograd Functions for the differentiable ops; the backend module does the arithmetic."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch


class GatherGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, idx: torch.Tensor, impl: ModuleType
                ) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.impl, ctx.n = impl, features.shape[2]
        return impl.gather_group(features.contiguous(), idx.contiguous())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (idx,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return ctx.impl.gather_group_backward(grad.contiguous(), idx, ctx.n), None, None


class ThreeInterpolate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                impl: ModuleType) -> torch.Tensor:
        ctx.save_for_backward(features, idx, weight)
        ctx.impl = impl
        return impl.three_interpolate(features.contiguous(), idx.contiguous(),
                                      weight.to(features.dtype).contiguous())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, None]:
        features, idx, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_features = ctx.impl.three_interpolate_backward(
                grad, idx, weight.to(grad.dtype).contiguous(), features.shape[2])
        if ctx.needs_input_grad[2]:
            # d out[b,c,i] / d weight[b,i,j] = features[b, c, idx[b,i,j]]
            picked = ctx.impl.gather_group(features.contiguous(), idx)  # [B, C, n, 3]
            grad_weight = (picked * grad.unsqueeze(-1)).sum(1).to(weight.dtype)
        return grad_features, None, grad_weight, None


class ColumnMoments(torch.autograd.Function):
    """(mean, biased variance) per column of y [R, C]; the backend computes them in one pass,
    the backward is the analytic one: d mean = 1/R, d var = 2 (y - mean) / R."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, impl: ModuleType) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = impl.column_moments(y)
        ctx.save_for_backward(y, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, grad_mean: torch.Tensor, grad_var: torch.Tensor
                 ) -> tuple[torch.Tensor, None]:
        y, mean = ctx.saved_tensors
        rows = y.shape[0]
        return (grad_mean / rows) + (y - mean) * (2.0 * grad_var / rows), None


class BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(y)) over the rows of y [R, C] with batch statistics (training mode);
    forward and backward are two passes each in the CPU backend instead of the half-dozen
    elementwise passes autograd would chain."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float, impl: ModuleType) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var = impl.column_moments(y)
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        shift = bias - mean * scale
        out = impl.affine_relu(y, scale, shift)
        # the output is not saved: backward recomputes the ReLU mask from y, reading one
        # large array fewer in each of its passes
        ctx.save_for_backward(y, scale, shift, mean, invstd, weight)
        ctx.impl = impl
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _gm: Any, _gv: Any
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        y, scale, shift, mean, invstd, weight = ctx.saved_tensors
        dy, dw, db = ctx.impl.batch_norm_relu_backward(grad, y, scale, shift, mean, invstd,
                                                       weight)
        return dy, dw, db, None, None


class MomentsAndMax(torch.autograd.Function):
    """(mean, var, pooled) of y [G*k, C]: column moments and the max over each group of k
    rows, forward in one pass and backward in one pass."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, k: int, impl: ModuleType
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, var, pooled, arg = impl.moments_and_max(y, k)
        ctx.save_for_backward(y, mean, arg)
        ctx.impl = impl
        return mean, var, pooled

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor | None, g_var: torch.Tensor | None,
                 g_pooled: torch.Tensor | None) -> tuple[torch.Tensor, None, None]:
        y, mean, arg = ctx.saved_tensors
        zeros_c = torch.zeros_like(mean)
        dy = ctx.impl.moments_and_max_backward(
            y, mean, arg, zeros_c if g_mean is None else g_mean,
            zeros_c if g_var is None else g_var,
            torch.zeros(arg.shape, dtype=y.dtype) if g_pooled is None else g_pooled)
        return dy, None, None


class GroupRelative(torch.autograd.Function):
    """rows [B*N, C] gathered by flat indices [B*M, k] minus their centre rows [B*M, C]."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, centers: torch.Tensor, idx: torch.Tensor,
                batches: int, impl: ModuleType) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.impl, ctx.n_rows, ctx.batches = impl, rows.shape[0], batches
        return impl.group_relative(rows, centers, idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        (idx,) = ctx.saved_tensors
        g_rows, g_centers = ctx.impl.group_relative_backward(grad, idx, ctx.n_rows, ctx.batches)
        return g_rows, g_centers, None, None, None
