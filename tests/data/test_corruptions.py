"""The PointCloud-C corruptions on real PIAD clouds: points and ground truth stay aligned,
every draw is reproducible, severity 0 is the identity, and severity grows each effect."""

from __future__ import annotations

import numpy as np
import pytest

from affcli.data import corruptions as C
from affcli.data.datasets import normalize_points
from affcli.data.pointio import read_shape
from affcli.errors import AffError


@pytest.fixture
def cloud(request):
    shape = read_shape(request.getfixturevalue("piad_demo") / "Point_Test_Chair_1.txt")
    # the real ground truth of the chair's most annotated affordance
    labels = shape.labels
    return normalize_points(shape.points), labels[:, labels.sum(0).argmax()].astype(np.float32)


def _origin(out: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The original index of each output point (-1: not an original point)."""
    lookup = {p.tobytes(): i for i, p in enumerate(points)}
    return np.array([lookup.get(p.tobytes(), -1) for p in out])


@pytest.mark.parametrize("kind", C.KINDS)
def test_points_and_ground_truth_stay_aligned(kind, cloud):
    points, target = cloud
    n = len(points)
    for severity in C.SEVERITIES:
        c = C.corrupt(points, target, kind, severity, index=3)
        assert c.points.shape == (n, 3) and c.target.shape == c.scored.shape == (n,)
        assert np.isfinite(c.points).all() and c.scored.any()
        if kind in ("scale", "jitter", "rotate"):  # moved, none added or lost
            assert np.array_equal(c.target, target) and c.scored.all()
            continue
        origin = _origin(c.points, points)
        kept = origin >= 0
        assert np.array_equal(c.target[kept], target[origin[kept]])
        assert (c.target[~kept] == 0).all()  # added points are negatives
        counted = origin[kept & c.scored]
        assert len(np.unique(counted)) == len(counted)  # no original scored twice
        if kind.startswith("drop"):
            assert kept.all() and not c.scored.all()  # padded with unscored repeats
            assert c.scored.sum() == len(np.unique(origin))
        else:
            assert (~kept).any() and c.scored.all()
            assert (np.sqrt((c.points[~kept] ** 2).sum(1)) <= 1 + 1e-6).all()


def test_severity_zero_is_the_identity_and_draws_repeat(cloud):
    points, target = cloud
    for kind in C.KINDS:
        c = C.corrupt(points, target, kind, 0, index=5)
        assert np.array_equal(c.points, points) and c.scored.all()
        a, b = (C.corrupt(points, target, kind, 4, index=5) for _ in range(2))
        assert np.array_equal(a.points, b.points) and np.array_equal(a.scored, b.scored)
        other = C.corrupt(points, target, kind, 4, index=6)
        assert not np.array_equal(a.points, other.points)


def test_severity_grows_each_effect(cloud):
    points, target = cloud
    n = len(points)

    def effect(kind, s):
        c = C.corrupt(points, target, kind, s, index=1)
        if kind in ("jitter", "rotate", "scale"):
            return float(np.abs(c.points - points).mean())
        origin = _origin(c.points, points)
        if kind.startswith("drop"):
            return n - c.scored.sum()  # points lost
        return int((origin < 0).sum())  # points added (kept after subsampling)

    for kind in ("jitter", "rotate", "drop_global", "drop_local", "add_global", "add_local"):
        values = [effect(kind, s) for s in C.SEVERITIES]
        assert values[-1] > values[0] and values == sorted(values), (kind, values)
    # the published drop rates, and ModelNet-C's counts scaled to the cloud size
    lost = [n - C.corrupt(points, target, "drop_global", s, 0).scored.sum() for s in (1, 5)]
    assert lost == [n - int(n * 0.75), n - int(n * 0.25)]
    assert effect("add_global", 5) <= round(50 * n / 1024)


def test_parse_names_the_grid():
    assert len(C.parse("all")) == 35
    assert C.parse("Drop-Local") == [("drop_local", s) for s in C.SEVERITIES]
    assert C.parse("jitter:0") == [("jitter", 0)]
    with pytest.raises(AffError, match="unknown corruption 'blur'"):
        C.parse("blur:2")
    with pytest.raises(AffError, match="severity must be 0..5"):
        C.parse("jitter:9")
