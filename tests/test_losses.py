"""Losses against values computed by hand (numpy, written out term by term)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affcli import losses


def _hand_heatmap(pred, target):
    total_focal, n = 0.0, 0
    dice = []
    for p_row, t_row in zip(pred, target, strict=True):
        ip = sum(p * t for p, t in zip(p_row, t_row, strict=True))
        cp = sum(abs(p) + abs(t) for p, t in zip(p_row, t_row, strict=True))
        ineg = sum((1 - p) * (1 - t) for p, t in zip(p_row, t_row, strict=True))
        cneg = sum(2 - abs(p) - abs(t) for p, t in zip(p_row, t_row, strict=True))
        dice.append(1.5 - (ip + 1e-6) / (cp + 1e-6) - (ineg + 1e-6) / (cneg + 1e-6))
        for p, t in zip(p_row, t_row, strict=True):
            total_focal += (-(0.75) * p**2 * (1 - t) * math.log(1 - p + 1e-6)
                            - 0.25 * (1 - p) ** 2 * t * math.log(p + 1e-6))
            n += 1
    return total_focal / n + sum(dice) / len(dice)


def test_heatmap_loss_by_hand():
    pred = [[0.9, 0.2, 0.6, 0.05], [0.3, 0.7, 0.1, 0.99]]
    target = [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.2, 1.0]]
    got = losses.heatmap_loss(torch.tensor(pred, dtype=torch.float64),
                              torch.tensor(target, dtype=torch.float64))
    assert got.item() == pytest.approx(_hand_heatmap(pred, target), rel=1e-12)
    # [B, N, 1] as the reference passes it gives the same value
    same = losses.heatmap_loss(torch.tensor(pred)[..., None], torch.tensor(target)[..., None])
    assert same.item() == pytest.approx(got.item(), rel=1e-6)
    # each dice term is at most 0.5 (no factor 2 in the reference's numerator), hence its
    # 1.5 offset: a perfect prediction scores focal ~0 + (1.5 - 0.5 - 0.5) = 0.5
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert losses.heatmap_loss(t, t).item() == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ValueError, match=r"pred \[2, 4\] and target \[2, 5\] differ"):
        losses.heatmap_loss(torch.rand(2, 4), torch.rand(2, 5))


def test_focal_from_logits_same_value_and_a_gradient_where_the_sigmoid_saturates():
    """Unsaturated: the value of the reference's form (to its 1e-6 inside the logarithms).
    Saturated (a float32 sigmoid of 20 is exactly 1, of -20 is 2e-9): the reference's form
    has no gradient, or a vanishing one, for the wrongly scored points; the logits form about
    1 - alpha or alpha."""
    logits = torch.tensor([[2.0, -1.0, 0.3, -3.0], [0.5, 1.5, -0.2, 4.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.2, 1.0]], dtype=torch.float64)
    ref = losses.heatmap_loss(torch.sigmoid(logits), target)
    got = losses.heatmap_loss(torch.sigmoid(logits), target, logits)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)

    saturated = torch.tensor([[20.0, 20.0, -20.0, -20.0]], requires_grad=True)
    wrong = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # points 2 and 3 scored wholly wrong
    losses.focal_loss(torch.sigmoid(saturated), wrong).backward()
    assert saturated.grad[0, 1].item() == 0.0 and saturated.grad.abs().max().item() < 1e-3
    saturated.grad = None
    losses.focal_loss_from_logits(saturated, wrong).backward()
    grad = saturated.grad[0] * 4  # (the mean over four points)
    assert grad[1].item() == pytest.approx(0.75, rel=1e-3)  # pushed down
    assert grad[2].item() == pytest.approx(-0.25, rel=1e-3)  # pushed up
    assert abs(grad[0].item()) < 1e-6 and abs(grad[3].item()) < 1e-6  # right: left alone


def test_kl_and_total_by_hand():
    p = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    q = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 2.0]])
    kl = 0.0
    for pr, qr in zip(p, q, strict=True):
        sp = np.exp(pr) / np.exp(pr).sum()
        sq = np.exp(qr) / np.exp(qr).sum()
        kl += float((sp * (np.log(sp) - np.log(sq))).sum())
    kl /= 2
    got = losses.kl_loss(torch.tensor(p), torch.tensor(q))
    assert got.item() == pytest.approx(kl, rel=1e-12)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    ce = float(np.mean([-np.log(np.exp(r[c]) / np.exp(r).sum())
                        for r, c in zip(logits.numpy(), labels.numpy(), strict=True)]))
    pred = torch.tensor([[0.9, 0.2, 0.6, 0.05], [0.3, 0.7, 0.1, 0.99]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.2, 1.0]], dtype=torch.float64)
    total = losses.iagnet_loss(pred, target, logits, labels, (torch.tensor(p), torch.tensor(q)))
    expect = _hand_heatmap(pred.tolist(), target.tolist()) + 0.3 * ce + 0.5 * kl
    assert total.item() == pytest.approx(expect, rel=1e-12)
