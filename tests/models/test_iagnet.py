"""IAGNet: shapes, ranges, gradients, the pretrained round trip (that it learns: the short
training in tests/engine/test_learning.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from affcli import losses, models
from affcli.data.datasets import normalize_points
from affcli.data.names import PIAD_AFFORDANCES
from affcli.data.synth.shapes import make_shape

N = 512


def _build(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random ResNet18 init is expected here
        return models.build("iagnet", n_points=N, **kw)


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    classes = [("Mug", "grasp"), ("Chair", "sit"), ("Knife", "cut"), ("Bowl", "contain")][:b]
    pts, masks, affs = [], [], []
    for i, (cls, aff) in enumerate(classes):
        s = make_shape(cls, np.random.default_rng([seed, i]), n_points=N)
        pts.append(normalize_points(s.points))
        masks.append(s.labels[aff])
        affs.append(PIAD_AFFORDANCES.index(aff))
    image = torch.randn(b, 3, 224, 224, generator=g)
    sub = torch.tensor([[20.0, 30.0, 120.0, 200.0], [0.0, 0.0, 0.0, 0.0]][:b])
    obj = torch.tensor([[60.0, 80.0, 210.0, 220.0], [10.0, 15.0, 150.0, 170.0]][:b])
    return (torch.from_numpy(np.stack(pts)), image, sub, obj,
            torch.from_numpy(np.stack(masks)), torch.tensor(affs))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _build()


def test_forward_shapes_and_inputs_untouched(model):
    points, image, sub, obj, _, _ = _batch()
    sub0, obj0 = sub.clone(), obj.clone()
    model.eval()
    with torch.no_grad():
        out = model(points, image, sub, obj)
    assert out.heatmap.shape == (2, N) and out.affordance_logits.shape == (2, 17)
    assert (out.heatmap >= 0).all() and (out.heatmap <= 1).all()
    assert out.extras["image_affordance"].shape == (2, 512, 16)
    assert out.extras["image_aligned"].shape == (2, 512, 16)
    assert torch.equal(sub, sub0) and torch.equal(obj, obj0)  # never modified in place
    with pytest.raises(ValueError, match="subject_box"):
        model(points, image, sub[:1], obj)
    # the image matters: another image changes the outputs (even untrained)
    with torch.no_grad():
        other = model(points, image.flip(-1), sub, obj)
    assert (other.heatmap - out.heatmap).abs().max() > 1e-6
    assert (other.affordance_logits - out.affordance_logits).abs().max() > 1e-3


def test_bfloat16_autocast_keeps_the_scores_in_float32(model):
    """`eval --amp` on the CPU: products in bfloat16 (the ResNet, the attention), the
    per-point head in float32 (`full_precision`)."""
    points, image, sub, obj, _, _ = _batch()
    model.eval()
    with torch.no_grad():
        ref = model(points, image, sub, obj).heatmap
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(points, image, sub, obj).heatmap
    assert low.dtype == torch.float32
    assert 0 < (low - ref).abs().max() < 0.05


def test_gradients_reach_every_parameter(model):
    points, image, sub, obj, masks, affs = _batch()
    model.train()
    model.zero_grad()
    out = model(points, image, sub, obj)
    loss = losses.iagnet_loss(out.heatmap, masks, out.affordance_logits, affs,
                              (out.extras["image_affordance"], out.extras["image_aligned"]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or not p.grad.abs().sum() > 0)]
    # linear biases right before a training-mode BatchNorm are cancelled by it (as in the
    # reference, their gradient is zero); nothing else may be left out
    assert all(n.endswith("bias") and ("linears" in n or "fc1" in n or "cls_head.3" in n
                                       or "to_common" in n or "fusion.0" in n or "cls_head.0" in n)
               for n in no_grad), no_grad


def test_pretrained_round_trip(model, tmp_path):
    points, image, sub, obj, _, _ = _batch()
    model.eval()
    model.save_pretrained(tmp_path / "iag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = models.from_pretrained(tmp_path / "iag").eval()
    with torch.no_grad():
        a, b = model(points, image, sub, obj), back(points, image, sub, obj)
    assert torch.equal(a.heatmap, b.heatmap)
    assert torch.equal(a.affordance_logits, b.affordance_logits)
