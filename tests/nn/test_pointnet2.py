"""PointNet++ modules: shapes, parameter count, and the same function (values and gradients)
as the reference utility's NCHW formulation, in training and eval mode."""

from __future__ import annotations

import copy

import pytest
import torch

from affcli.bench import baseline_ops
from affcli.nn.pointnet2 import (
    EncoderConfig,
    FeaturePropagation,
    PointNet2Encoder,
    SetAbstractionMSG,
    SharedMLP,
)


def _reference_param_count(cfg: EncoderConfig) -> int:
    """Conv (weight + bias) + BatchNorm (weight + bias) per layer of the reference encoder,
    counted from the configuration alone."""
    total, in_ch = 0, 3 + cfg.extra_channels
    for mlps in (cfg.sa1_mlps, cfg.sa2_mlps, cfg.sa3_mlps):
        for mlp in mlps:
            last = in_ch + 3
            for c in mlp:
                total += last * c + c + 2 * c
                last = c
        in_ch = sum(m[-1] for m in mlps)
    return total


def _randomize_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm parameters, including negative scales (the max/min pooling
    branch) and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            c = m.num_features
            m.weight.data = (torch.rand(c, generator=g) * 3 - 1.5).to(m.weight.dtype)
            m.bias.data = (torch.rand(c, generator=g) - 0.5).to(m.bias.dtype)
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def test_encoder_shapes_and_parameter_count():
    enc = PointNet2Encoder()
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == _reference_param_count(EncoderConfig()) == 506_680
    pts = torch.rand(2, 2048, 3) * 2 - 1
    levels = enc.eval()(pts)
    assert [tuple(x.shape) for x, _ in levels] == [(2, 2048, 3), (2, 512, 3), (2, 128, 3),
                                                   (2, 64, 3)]
    assert [tuple(f.shape) for _, f in levels] == [(2, 2048, 3), (2, 512, 320), (2, 128, 512),
                                                   (2, 64, 512)]
    assert enc.out_channels == (3, 320, 512, 512)
    # centres are input points chosen by FPS from index 0
    assert torch.equal(levels[1][0][:, 0], pts[:, 0])
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        enc(torch.rand(2, 2048, 4))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_encoder_equals_reference_formulation(mode):
    torch.manual_seed(0)
    enc = PointNet2Encoder().double()
    _randomize_norms(enc)
    ours, theirs = copy.deepcopy(enc), copy.deepcopy(enc)
    getattr(ours, mode)()
    getattr(theirs, mode)()
    pts = (torch.rand(2, 2048, 3, dtype=torch.float64) * 2 - 1)
    a = ours(pts)
    b = baseline_ops.encoder_forward(theirs, pts)
    for (xa, fa), (xb, fb) in zip(a, b, strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(fa, fb, rtol=1e-9, atol=1e-9)
    # gradients of every parameter and of the input
    loss_a = sum((f * torch.linspace(-1, 1, f.shape[-1], dtype=f.dtype)).sum() ** 2
                 for _, f in a[1:])
    loss_b = sum((f * torch.linspace(-1, 1, f.shape[-1], dtype=f.dtype)).sum() ** 2
                 for _, f in b[1:])
    params_a = [p for p in ours.parameters()]
    params_b = [p for p in theirs.parameters()]
    ga = torch.autograd.grad(loss_a, params_a, allow_unused=True)
    gb = torch.autograd.grad(loss_b, params_b, allow_unused=True)
    names = [n for n, _ in ours.named_parameters()]
    for name, g1, g2 in zip(names, ga, gb, strict=True):
        if g1 is None:
            # in training mode BatchNorm's batch mean cancels a layer's bias exactly: the
            # reference's gradient for it is zero up to rounding, ours is not computed
            assert mode == "train" and name.endswith("bias") and "linears" in name
            assert g2.abs().max() < 1e-6 * max(1.0, float(loss_b.detach()))
            continue
        scale = g2.abs().max().clamp_min(1e-12)
        assert ((g1 - g2).abs().max() / scale) < 1e-8, name
    if mode == "train":  # running statistics moved the same way
        for (name, b1), b2 in zip(ours.named_buffers(), theirs.buffers(), strict=True):
            if b1.is_floating_point():  # (the functional baseline counts no batches)
                torch.testing.assert_close(b1, b2, rtol=1e-9, atol=1e-9, msg=name)


def test_set_abstraction_with_features_and_float32():
    torch.manual_seed(1)
    sa = SetAbstractionMSG(64, [0.2, 0.5], [8, 16], 6, [[16, 24], [8, 8, 12]])
    _randomize_norms(sa)
    sa.eval()
    xyz, feats = torch.rand(3, 300, 3), torch.randn(3, 300, 6)
    centers, out = sa(xyz, feats)
    assert centers.shape == (3, 64, 3) and out.shape == (3, 64, 36)
    c2, o2 = baseline_ops.set_abstraction(sa, xyz, feats)
    torch.testing.assert_close(centers, c2)
    torch.testing.assert_close(out, o2, rtol=1e-4, atol=1e-4)


def test_single_layer_scale_and_zero_features():
    sa = SetAbstractionMSG(16, [0.5], [8], 0, [[10]])
    sa.eval()
    xyz = torch.rand(2, 100, 3)
    centers, out = sa(xyz, None)
    c2, o2 = baseline_ops.set_abstraction(sa, xyz, None)
    torch.testing.assert_close(out, o2, rtol=1e-5, atol=1e-5)


def _naive_fp(fp: FeaturePropagation, xyz, coarse, skip, feats, eps=1e-8, training=False):
    d = baseline_ops.square_distance(xyz, coarse)
    d, idx = d.sort(dim=-1)
    d, idx = d[:, :, :3], idx[:, :, :3]
    recip = 1.0 / (d + eps)
    w = recip / recip.sum(-1, keepdim=True)
    interp = (baseline_ops.index_points(feats, idx) * w.unsqueeze(-1)).sum(2)
    x = torch.cat([skip, interp], -1).permute(0, 2, 1).unsqueeze(-1)
    mlp = fp.mlp
    for lin, bn in zip(mlp.linears, mlp.norms, strict=True):
        x = torch.nn.functional.conv2d(x, lin.weight[:, :, None, None], lin.bias)
        x = torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                           bn.bias, training, 0.1, bn.eps).relu()
    return x.squeeze(-1).permute(0, 2, 1)


@pytest.mark.parametrize("eps", [1e-8, 0.01])  # IAGNet / LASO, LMAffordance3D
def test_feature_propagation_matches_reference(eps):
    torch.manual_seed(2)
    fp = FeaturePropagation(5 + 7, [16, 9], eps=eps).double().eval()
    _randomize_norms(fp)
    xyz, coarse = torch.rand(2, 200, 3).double(), torch.rand(2, 30, 3).double()
    skip, feats = torch.randn(2, 200, 5).double(), torch.randn(2, 30, 7).double()
    torch.testing.assert_close(fp(xyz, coarse, skip, feats),
                               _naive_fp(fp, xyz, coarse, skip, feats, eps))
    # training: batch statistics, running statistics and every gradient as the reference's
    # (the first layer runs on the coarse points before interpolating: same function)
    ref = copy.deepcopy(fp).train()
    fp.train()
    inputs = [t.clone().requires_grad_() for t in (skip, feats)]
    ref_inputs = [t.clone().requires_grad_() for t in (skip, feats)]
    out = fp(xyz, coarse, *inputs)
    expected = _naive_fp(ref, xyz, coarse, *ref_inputs, eps, training=True)
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for a, b in zip(inputs, ref_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    for (name, p), q in zip(fp.named_parameters(), ref.parameters(), strict=True):
        if name.startswith("mlp.linears.") and name.endswith(".bias"):
            assert q.grad.abs().max() < 1e-9  # BatchNorm cancels them; ours are not computed
        else:
            torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, a), b in zip(fp.named_buffers(), ref.buffers(), strict=True):
        if a.is_floating_point():  # running statistics (F.batch_norm counts no batches)
            torch.testing.assert_close(a, b, msg=name)
    # a single coarse point is repeated, as in the reference
    one = FeaturePropagation(7, [4]).double().eval()
    out = one(xyz, coarse[:, :1], None, feats[:, :1])
    assert out.shape == (2, 200, 4) and torch.allclose(out, out[:, :1].expand_as(out))


def test_shared_mlp_pooling_equals_pool_after():
    torch.manual_seed(3)
    mlp = SharedMLP(6, [8, 5]).double()
    _randomize_norms(mlp)
    x = torch.randn(4, 10, 7, 6, dtype=torch.float64)
    for mode in ("train", "eval"):
        a, b = copy.deepcopy(mlp), copy.deepcopy(mlp)
        getattr(a, mode)()
        getattr(b, mode)()
        torch.testing.assert_close(a(x, pool_dim=2), b(x).amax(dim=2))


@pytest.mark.parametrize("block_rows", [4096, 100])
def test_blocked_inference_path_equals_the_full_path(monkeypatch, block_rows):
    """Under no_grad in eval mode the set abstraction runs block by block (cache-sized);
    with blocks that do not divide the centres evenly too, it computes the same values."""
    import affcli.nn.pointnet2 as pn

    monkeypatch.setattr(pn, "INFERENCE_BLOCK_ROWS", block_rows)
    torch.manual_seed(5)
    enc = PointNet2Encoder().double().eval()
    _randomize_norms(enc)
    pts = torch.rand(3, 2048, 3, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        fast = enc(pts)
    # grad enabled: the unblocked path (itself tested against the reference formulation)
    full = enc(pts)
    for (_, a), (_, b) in zip(fast, full, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-10)
    sa = SetAbstractionMSG(16, [0.5], [8], 0, [[10]]).eval()  # a one-layer scale
    xyz = torch.rand(2, 100, 3)
    with torch.no_grad():
        fast = sa(xyz, None)[1]
    torch.testing.assert_close(fast, sa(xyz, None)[1].detach())


def test_distinct_neighbors_marks_each_ball_point_once():
    """The inference path computes only the slots `distinct_neighbors` keeps: exactly the
    distinct points of each ball (the query pads a sparse ball with repeats of its first)."""
    from affcli.nn.pointnet2 import distinct_neighbors
    from affcli.ops import ball_query

    torch.manual_seed(2)
    xyz = torch.rand(2, 300, 3) * 2 - 1
    idx = ball_query(xyz, xyz[:, :60], 0.5, 16)
    keep = distinct_neighbors(idx)
    for row, kept in zip(idx.view(-1, 16).tolist(), keep.view(-1, 16).tolist(), strict=True):
        assert [i for i, k in zip(row, kept, strict=True) if k] == sorted(set(row))
    counts = keep.sum(-1)
    assert (counts < 16).any() and (counts == 16).any()  # sparse and full balls both met


def _small_encoder() -> PointNet2Encoder:
    """The encoder's structure (three MSG levels, two scales each) at sizes the Triton
    interpreter runs in seconds."""
    cfg = EncoderConfig(
        num_points=256,
        sa1_centers=64, sa1_radii=(0.2, 0.4), sa1_neighbors=(8, 16), sa1_mlps=((8, 16), (8, 16)),
        sa2_centers=32, sa2_radii=(0.4, 0.8), sa2_neighbors=(8, 16), sa2_mlps=((16, 24),) * 2,
        sa3_centers=16, sa3_radii=(0.4, 0.8), sa3_neighbors=(8, 8), sa3_mlps=((16, 24),) * 2,
    )
    torch.manual_seed(11)
    enc = PointNet2Encoder(cfg)
    _randomize_norms(enc, seed=11)
    return enc


def _train_step(enc: PointNet2Encoder, pts: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training-mode forward and backward; every output, gradient and buffer by name."""
    enc.train()
    x = pts.clone().requires_grad_(True)
    levels = enc(x)
    loss = sum((f * torch.linspace(-1, 1, f.shape[-1])).square().mean() for _, f in levels[1:])
    loss.backward()
    got = {"loss": loss.detach(), "input.grad": x.grad}
    for i, (xyz, f) in enumerate(levels[1:], 1):
        got[f"level{i}.xyz"], got[f"level{i}.features"] = xyz.detach(), f.detach()
    got.update({f"{n}.grad": p.grad for n, p in enc.named_parameters() if p.grad is not None})
    got.update(dict(enc.named_buffers()))
    return got


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_encoder_training_step_is_the_same_under_every_backend(monkeypatch, backend):
    """Training mode (batch statistics, running-statistics updates, backward through the fused
    BatchNorm+ReLU and the gathers): the portable torch path and the Triton kernels (run by
    the interpreter when there is no GPU) compute what the default CPU path computes."""
    import affcli.ops as ops

    pts = torch.rand(3, 256, 3, generator=torch.Generator().manual_seed(12)) * 2 - 1
    base = _small_encoder()
    fresh = {n: b.clone() for n, b in base.named_buffers()}
    monkeypatch.setenv("AFFCLI_OPS", "cpu")
    want = _train_step(copy.deepcopy(base), pts)
    monkeypatch.setenv("AFFCLI_OPS", backend)
    assert ops.backend_for(pts) == backend
    got = _train_step(copy.deepcopy(base), pts)
    assert got.keys() == want.keys()
    # the step really trained: the statistics moved and every weight has a gradient
    stats = [n for n in fresh if n.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * sum(1 for m in base.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert all(not torch.equal(want[n], fresh[n]) for n in stats)
    n_weights = sum(1 for n, _ in base.named_parameters() if n.endswith("weight"))
    assert sum(1 for k in want if k.endswith("weight.grad")) == n_weights
    errors: dict[str, float] = {}
    for name, w in want.items():
        g = got[name]
        if not w.is_floating_point():  # num_batches_tracked
            assert torch.equal(g, w), name
            continue
        assert torch.isfinite(w).all(), name
        err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-6))
        errors[name] = err
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    # float32 as in training; BatchNorm's sums over ~3k rows run in a different order per
    # backend (measured worst: 1.3e-5 of a tensor's largest value); a wrong index, momentum or
    # statistic is off by far more
    assert worst[0][1] < 3e-5, worst
