"""PointRefer: registry build with the offline text model, shapes and masks, gradients,
a tiny overfit, and the save_pretrained / from_pretrained round trip.

The model is built once per module; tests that train work on a deep copy. N = 512 is the
smallest cloud the encoder takes (sa1 samples 512 centres).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import affcli.models as models
from affcli.data.synth.shapes import make_shape
from affcli.models.zoo.pointrefer import PointRefer, PointReferConfig

N = 512
QUESTIONS = ["Where would you grasp this mug to lift it up?", "Where to sit?"]


@pytest.fixture(scope="module")
def model() -> PointRefer:
    torch.manual_seed(0)
    return models.build("pointrefer")


def _points(b: int = 2, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * 2 - 1


def test_build_defaults(model: PointRefer) -> None:
    assert isinstance(model, PointRefer)
    cfg = model.config
    assert isinstance(cfg, PointReferConfig) and cfg.model_type == "pointrefer"
    assert (cfg.emb_dim, cfg.num_heads, cfg.text_tokens, cfg.n_points) == (512, 4, 40, 2048)
    assert model.pos1d.shape == (1, 40, 512)
    assert "pointrefer" in models.available()


def test_forward_shape_range_and_masking(model: PointRefer) -> None:
    model.eval()
    pts = _points()
    with torch.no_grad():
        out = model(pts, QUESTIONS)
        alone = model(pts[1:], QUESTIONS[1:])
    assert out.heatmap.shape == (2, N)
    assert torch.isfinite(out.heatmap).all()
    assert (out.heatmap >= 0).all() and (out.heatmap <= 1).all()
    assert out.extras["logits"].shape == (2, N)
    # per-sample: padding and the other cloud of the batch do not change a sample's output
    torch.testing.assert_close(out.heatmap[1:], alone.heatmap, atol=1e-5, rtol=0)
    # in two halves (predict: clouds encoded once, decoded per question), and with one
    # question repeated (its text encoded once for the batch), the same function
    with torch.no_grad():
        encoded = model.encode_points(pts)
        halves = model.forward_encoded({"question": QUESTIONS}, encoded)
        same = model.forward_encoded({"question": QUESTIONS[:1] * 2}, encoded)
        each = model(pts, QUESTIONS[:1] * 2)
    torch.testing.assert_close(halves.heatmap, out.heatmap, atol=1e-6, rtol=0)
    torch.testing.assert_close(same.heatmap, each.heatmap, atol=1e-6, rtol=0)
    torch.testing.assert_close(same.heatmap[:1], out.heatmap[:1], atol=1e-5, rtol=0)


def test_input_validation(model: PointRefer) -> None:
    with pytest.raises(ValueError, match="2 point clouds but 1 questions"):
        model(_points(2), QUESTIONS[:1])
    with pytest.raises(ValueError, match=r"points must have shape \[B, N, C\], got \[\d+, 3\]"):
        model(_points(2)[0], QUESTIONS)
    with pytest.raises(ValueError, match="questions must be a list of strings"):
        model(_points(1), "a single string, not a list")


def _no_grad_expected(name: str) -> bool:
    # the BERT pooler is not used (last_hidden_state only); the PointNet++ linear biases sit
    # right before a training-mode BatchNorm, which cancels them (no gradient by design)
    return name.startswith("text_encoder.pooler.") or (
        ".linears." in name and name.endswith(".bias"))


def test_gradients_reach_every_trainable_parameter(model: PointRefer) -> None:
    net = copy.deepcopy(model).train()
    net.zero_grad(set_to_none=True)
    net(_points(), QUESTIONS).heatmap.mean().backward()
    missing = [n for n, p in net.named_parameters()
               if p.requires_grad and p.grad is None and not _no_grad_expected(n)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    text = [p.grad.abs().sum() for p in net.text_encoder_parameters() if p.grad is not None]
    assert text and float(sum(text)) > 0
    # the two parameter groups partition the model
    n_text = sum(p.numel() for p in net.text_encoder_parameters())
    n_other = sum(p.numel() for p in net.other_parameters())
    assert n_text + n_other == sum(p.numel() for p in net.parameters())
    assert n_text == sum(p.numel() for p in net.text_encoder.parameters())


def test_frozen_text_encoder_gets_no_gradient(model: PointRefer) -> None:
    net = PointRefer(model.config.replace(freeze_text_encoder=True)).train()
    assert not any(p.requires_grad for p in net.text_encoder_parameters())
    net(_points(), QUESTIONS).heatmap.mean().backward()
    assert all(p.grad is None for p in net.text_encoder_parameters())
    assert net.text_resizer[0].weight.grad is not None
    assert net.fusion.group_layer.attn.q_lin.weight.grad is not None


def _synthetic_batch() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    rng = np.random.default_rng(0)
    clouds, labels = [], []
    for cls, aff in (("Mug", "grasp"), ("Chair", "sit")):
        shape = make_shape(cls, rng, n_points=N)
        p = shape.points - shape.points.mean(axis=0)
        p = p / np.linalg.norm(p, axis=1).max()  # centred, unit sphere
        clouds.append(p)
        labels.append(shape.labels[aff])
    questions = ["Which part of the mug would you grasp?", "Where can I sit on the chair?"]
    return (torch.from_numpy(np.stack(clouds)).float(),
            torch.from_numpy(np.stack(labels)).float(), questions)


def test_overfits_a_tiny_batch(model: PointRefer) -> None:
    torch.manual_seed(0)
    net = copy.deepcopy(model).train()
    pts, target, questions = _synthetic_batch()
    opt = torch.optim.Adam([
        {"params": list(net.text_encoder_parameters()), "lr": 1e-5},
        {"params": list(net.other_parameters()), "lr": 1e-4},
    ])
    losses = []
    for _ in range(30):
        heat = net(pts, questions).heatmap
        loss = torch.nn.functional.binary_cross_entropy(heat, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.5 * losses[0]:
            break
    assert losses[-1] < 0.5 * losses[0], losses


def test_bfloat16_autocast_keeps_the_scores_in_float32(model: PointRefer) -> None:
    """`eval --amp` on the CPU: the products run in bfloat16, the query-point scores in
    float32 (`full_precision`): logits rounded to bfloat16 would tie thousands of points."""
    model.eval()
    pts = _points(seed=2)
    with torch.no_grad():
        ref = model(pts, QUESTIONS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(pts, QUESTIONS)
    assert low.extras["logits"].dtype == torch.float32 and low.heatmap.dtype == torch.float32
    assert (low.heatmap - ref.heatmap).abs().max() < 0.05
    assert (low.heatmap - ref.heatmap).abs().max() > 0  # the products did run in bfloat16


def test_save_and_load_round_trip(model: PointRefer, tmp_path) -> None:
    model.eval()
    pts = _points(seed=1)
    with torch.no_grad():
        before = model(pts, QUESTIONS).heatmap
    model.save_pretrained(tmp_path / "pr")
    loaded = models.from_pretrained(tmp_path / "pr").eval()
    assert isinstance(loaded, PointRefer) and loaded.config == model.config
    with torch.no_grad():
        after = loaded(pts, QUESTIONS).heatmap
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert PointRefer.from_pretrained(tmp_path / "pr").config == model.config
