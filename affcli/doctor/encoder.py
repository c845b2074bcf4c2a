"""The PointNet++ encoder on the device under the Triton backend, against the same weights
under the torch-composite backend on the same device and under the CPU path.

Three copies of one seeded encoder see the same clouds. Eval mode compares every level's
centres and features; training mode also the gradients of every parameter (of a loss that
weighs each feature by a fixed random number: a plain sum would have gradients that
BatchNorm cancels to rounding noise) and the running statistics the forward updated.
"""

from __future__ import annotations

import copy

import torch

from affcli.doctor.numerics import check_close, ops_backend, seeded
from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row


def _run(enc: torch.nn.Module, x: torch.Tensor, train: bool, device: torch.device,
         weights: list[torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The tensors to compare (by name) after one pass, and the loss weights it used."""
    net = copy.deepcopy(enc).to(device).train(train)
    with torch.set_grad_enabled(train):
        levels = net(x.to(device))
        if train:
            if weights is None:  # drawn once, from the first side's shapes
                weights = [torch.randn(f.shape, generator=seeded(80 + i))
                           for i, (_, f) in enumerate(levels[1:])]
            loss = sum((f * w.to(device)).sum() for (_, f), w in zip(levels[1:], weights,
                                                                      strict=True))
            loss.backward()
    out = {}
    for i, (xyz, feats) in enumerate(levels[1:], start=1):
        out[f"level {i} centres"] = xyz.detach()
        out[f"level {i} features"] = feats.detach()
    if train:
        for name, p in net.named_parameters():
            if p.grad is not None:
                out[f"grad {name}"] = p.grad
        for name, buf in net.named_buffers():
            if buf.is_floating_point():
                out[f"buffer {name}"] = buf
    return out, weights or []


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], against: str, tol: float
             ) -> tuple[float, str]:
    """The largest relative difference over all tensors, and the tensor it is in."""
    if a.keys() != b.keys():
        raise CheckFailed(f"vs {against}: different tensors ({sorted(a.keys() ^ b.keys())[:3]})")
    worst, where = 0.0, ""
    for name in a:
        d = check_close(f"vs {against}: {name}", a[name], b[name], tol)
        if d >= worst:
            worst, where = d, name
    return worst, where


def check_encoder(plan: Plan, row: Row, train: bool) -> None:
    from affcli.bench.runs import realistic_clouds
    from affcli.nn.pointnet2 import EncoderConfig, PointNet2Encoder

    dev = torch.device(plan.device)
    cfg = EncoderConfig(**plan.encoder_config) if plan.encoder_config else EncoderConfig()
    torch.manual_seed(0)
    enc = PointNet2Encoder(cfg)
    x = realistic_clouds(plan.encoder_batch, plan.encoder_points, seed=1)
    with ops_backend("cpu"):
        cpu, weights = _run(enc, x, train, torch.device("cpu"), None)
    with ops_backend("triton"):
        tri, _ = _run(enc, x, train, dev, weights)
    with ops_backend("torch"):
        composite, _ = _run(enc, x, train, dev, weights)
    tol = plan.tol("encoder")
    vs_torch, where_torch = _compare(tri, composite, "torch-composite", tol)
    vs_cpu, where_cpu = _compare(tri, cpu, "CPU", tol)
    row.figures.update(batch=plan.encoder_batch, points=plan.encoder_points,
                       tensors=len(tri), max_rel_vs_torch=vs_torch, max_rel_vs_cpu=vs_cpu,
                       worst_vs_cpu=where_cpu, worst_vs_torch=where_torch)
