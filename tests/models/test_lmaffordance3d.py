"""LMAffordance3D with the offline default language model (the packaged MiniLM)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from affcli import losses, models
from affcli.data.datasets import normalize_points
from affcli.data.synth.shapes import make_shape

N = 2048  # fixed by the head's BatchNorm over the points axis, as in the reference


def _build(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random ResNet18 init is expected here
        return models.build("lmaffordance3d", **kw)


def _batch(seed=0):
    pairs = [("Mug", "grasp", "Grasp the mug by its handle."),
             ("Chair", "sit", "Please sit on the chair like the person in the picture.")]
    pts, masks = [], []
    for i, (cls, aff, _) in enumerate(pairs):
        s = make_shape(cls, np.random.default_rng([seed, i]), n_points=N)
        pts.append(normalize_points(s.points))
        masks.append(s.labels[aff])
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return (torch.from_numpy(np.stack(pts)), image, [p[2] for p in pairs],
            torch.from_numpy(np.stack(masks)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _build()


def test_forward_shapes_and_conditioning(model):
    points, image, texts, _ = _batch()
    model.eval()
    with torch.no_grad():
        out = model(points, image, texts)
        other = model(points, image, ["Pour water out of it.", "Move it to the left."])
    assert out.heatmap.shape == (2, N)
    assert (out.heatmap >= 0).all() and (out.heatmap <= 1).all()
    assert (other.heatmap - out.heatmap).abs().max() > 0  # the instruction reaches the output
    with pytest.raises(ValueError, match="one instruction per cloud"):
        model(points, image, texts[:1])
    with pytest.raises(ValueError, match="2048 points"):
        model(points[:, :1024], image, texts)


def test_bfloat16_autocast_keeps_the_scores_in_float32(model):
    """`eval --amp` on the CPU: the language model and the rest in bfloat16, the per-point
    head in float32 (`full_precision`)."""
    points, image, texts, _ = _batch()
    model.eval()
    with torch.no_grad():
        ref = model(points, image, texts).heatmap
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(points, image, texts).heatmap
    assert low.dtype == torch.float32
    assert 0 < (low - ref).abs().max() < 0.05


def test_insert_tokens_after_valid_text(model):
    emb = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    toks = -torch.ones(2, 2, 3)
    seq, m = model._insert_tokens(emb, mask, toks)
    assert seq.shape == (2, 7, 3)
    assert torch.equal(seq[0, :3], emb[0, :3]) and torch.equal(seq[0, 3:5], toks[0])
    assert torch.equal(seq[0, 5:], emb[0, 3:])
    assert m[0].tolist() == [1, 1, 1, 1, 1, 0, 0] and m[1].tolist() == [1] * 7


def test_gradients_and_frozen_language_model(model):
    points, image, texts, masks = _batch()
    model.train()
    model.zero_grad()
    losses.heatmap_loss(model(points, image, texts).heatmap, masks).backward()
    lm = {id(p) for p in model.language_model_parameters()}
    assert all(not p.requires_grad for p in model.language_model_parameters())
    missing = [n for n, p in model.named_parameters() if id(p) not in lm and
               (p.grad is None or not p.grad.abs().sum() > 0)]
    # biases right before a training-mode BatchNorm get no gradient (it cancels them)
    assert all(n.endswith("bias") and ("linears" in n or "to_common" in n or ".fusion.0." in n
                                       or "out_head.fc1" in n) for n in missing), missing
    assert model.adapter_up[0].weight.grad.abs().sum() > 0  # through the frozen LM


def test_pretrained_round_trip(model, tmp_path):
    points, image, texts, _ = _batch()
    model.eval()
    model.save_pretrained(tmp_path / "lm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = models.from_pretrained(tmp_path / "lm").eval()
    with torch.no_grad():
        assert torch.equal(model(points, image, texts).heatmap, back(points, image, texts).heatmap)
