"""Metrics equal the reference evaluation's per-sample sklearn/numpy loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from affcli import metrics


def _reference(pred, gt):
    """The reference evaluation, sample by sample (sklearn and numpy)."""
    out = {"aiou": [], "auc": [], "sim": [], "mae": []}
    thresholds = np.linspace(0, 1, 20)
    for p, g in zip(pred, gt, strict=True):
        t = (g >= 0.5).astype(int)
        if t.sum() == 0:
            out["auc"].append(np.nan)
            out["aiou"].append(np.nan)
        else:
            out["auc"].append(roc_auc_score(t, p) if t.sum() < len(t) else np.nan)
            ious = [np.sum((p >= th).astype(int) & t) / np.sum((p >= th).astype(int) | t)
                    for th in thresholds]
            out["aiou"].append(np.mean(ious))
        out["sim"].append(np.minimum(p / (p.sum() + 1e-12), g / (g.sum() + 1e-12)).sum())
        out["mae"].append(np.mean(np.abs(p - g)))
    return {k: np.array(v) for k, v in out.items()}


def _data(s=60, n=300, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.clip(rng.random((s, n)) ** 3 * 1.3, 0, 1)
    gt[3] = 0.0  # no positive point: excluded from AUC and aIoU
    gt[4] = 0.7  # all positive: AUC undefined
    pred = np.clip(gt * 0.6 + rng.random((s, n)) * 0.5, 0, 1)
    pred[5] = np.round(pred[5] * 4) / 4  # heavy ties
    pred[6] = 0.5  # a constant prediction
    return pred, gt


def test_per_sample_equals_reference_loop():
    pred, gt = _data()
    ours = metrics.per_sample(pred, gt)
    ref = _reference(pred, gt)
    for name in metrics.METRICS:
        np.testing.assert_allclose(ours[name].numpy(), ref[name], atol=1e-6, equal_nan=True,
                                   err_msg=name)
    assert math.isnan(ours["auc"][3]) and math.isnan(ours["aiou"][3])
    assert math.isnan(ours["auc"][4]) and not math.isnan(ours["aiou"][4])


def test_iou_curves_are_the_reference_ious_behind_aiou():
    pred, gt = _data()
    curves = metrics.iou_curves(pred, gt)
    assert curves.shape == (60, 20) and np.isnan(curves[3]).all()
    t = gt[0] >= 0.5
    for k, th in enumerate(np.linspace(0, 1, 20)):  # the reference's IoU, written out
        above = pred[0] >= th
        assert curves[0, k] == pytest.approx((above & t).sum() / (above | t).sum(), abs=1e-12)
    np.testing.assert_allclose(curves.mean(1), _reference(pred, gt)["aiou"], atol=1e-12,
                               equal_nan=True)
    # restricted to valid points, they stay the IoUs behind that aIoU
    valid = np.random.default_rng(1).random(pred.shape) > 0.3
    np.testing.assert_allclose(metrics.iou_curves(pred, gt, valid).mean(1),
                               metrics.per_sample_valid(pred, gt, valid)["aiou"].numpy(),
                               atol=1e-12, equal_nan=True)


def test_evaluate_groups_by_name():
    pred, gt = _data(s=40)
    objects = ["Mug" if i % 3 else "Chair" for i in range(40)]
    affs = ["grasp" if i % 2 else "sit" for i in range(40)]
    res = metrics.evaluate(pred, gt, objects, affs)
    ref = _reference(pred, gt)
    assert res["overall"]["count"] == 40
    for name in metrics.METRICS:
        assert res["overall"][name] == pytest.approx(np.nanmean(ref[name]), abs=1e-6)
        rows = np.array([o == "Chair" for o in objects])
        assert res["per_object"]["Chair"][name] == pytest.approx(np.nanmean(ref[name][rows]),
                                                                 abs=1e-6)
    assert res["per_object"]["Chair"]["count"] == sum(o == "Chair" for o in objects)
    assert set(res["per_affordance"]) == {"grasp", "sit"}
    with pytest.raises(ValueError, match="one object and one affordance name"):
        metrics.evaluate(pred, gt, objects[:-1], affs)
    with pytest.raises(ValueError, match="differ"):
        metrics.per_sample(pred[:, :10], gt)


def test_perfect_and_inverted_predictions():
    gt = np.zeros((2, 50))
    gt[:, :10] = 1.0
    res = metrics.per_sample(np.stack([gt[0], 1 - gt[1]]), gt)
    assert res["auc"][0] == pytest.approx(1.0) and res["auc"][1] == pytest.approx(0.0)
    assert res["mae"][0] == 0 and res["sim"][0] == pytest.approx(1.0)
    # thresholds 0 .. 1: at 0 everything is predicted, so the perfect map's aIoU is below 1
    assert 0.9 < res["aiou"][0] < 1.0
