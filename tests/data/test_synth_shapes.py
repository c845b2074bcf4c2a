"""Tests for the procedural affordance shapes and their interaction-image renderer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from affcli.data.synth.photos import (
    _SKIN,
    Camera,
    project_points,
    render_interaction,
    render_interaction_info,
)
from affcli.data.synth.shapes import CLASS_AFFORDANCES, SYNTH_CLASSES, SynthShape, make_shape

# Affordances whose region is most of the object by design (thin-walled containers, whole
# table tops / mattresses / screens): the distance-based labels spread across the thin wall or
# plate, so fewer than 30 % of the points are exactly zero.
BROAD = {
    ("Mug", "contain"), ("Mug", "wrapgrasp"), ("Bowl", "contain"), ("Bowl", "wrapgrasp"),
    ("Bottle", "wrapgrasp"), ("Table", "support"), ("Table", "move"), ("Bed", "lay"),
    ("Bed", "support"), ("Display", "display"), ("Vase", "wrapgrasp"), ("Scissors", "grasp"),
}

SEEDS = (0, 1, 2)

_cache: dict[tuple[str, int], SynthShape] = {}


def shape(cls: str, seed: int) -> SynthShape:
    key = (cls, seed)
    if key not in _cache:
        _cache[key] = make_shape(cls, np.random.default_rng(seed))
    return _cache[key]


def nearest_neighbour(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    sq = np.einsum("ij,ij->i", p, p)
    d2 = sq[:, None] + sq[None, :] - 2.0 * p @ p.T
    np.fill_diagonal(d2, np.inf)
    return d2.argmin(axis=1)


def high(s: SynthShape, aff: str, thr: float = 0.9) -> np.ndarray:
    return s.labels[aff] >= thr


# --------------------------------------------------------------------------- shapes


def test_class_tables_are_consistent() -> None:
    assert len(SYNTH_CLASSES) == 16
    assert set(CLASS_AFFORDANCES) == set(SYNTH_CLASSES)
    assert CLASS_AFFORDANCES["Door"] == ("open", "push", "pull")
    assert CLASS_AFFORDANCES["Display"] == ("display",)


@pytest.mark.parametrize("cls", SYNTH_CLASSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_geometry(cls: str, seed: int) -> None:
    s = shape(cls, seed)
    assert s.object_class == cls
    assert s.points.shape == (2048, 3) and s.points.dtype == np.float32
    assert s.normals.shape == (2048, 3) and s.normals.dtype == np.float32
    assert np.isfinite(s.points).all() and np.isfinite(s.normals).all()
    assert np.abs(s.points.mean(axis=0)).max() < 0.01
    half = np.ptp(s.points, axis=0).max() / 2
    assert 0.45 <= half <= 1.0
    assert np.abs(s.points).max() <= 1.0
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("cls", SYNTH_CLASSES)
@pytest.mark.parametrize("seed", SEEDS)
def test_labels(cls: str, seed: int) -> None:
    s = shape(cls, seed)
    assert tuple(s.labels) == CLASS_AFFORDANCES[cls]
    nn = nearest_neighbour(s.points)
    for aff, lab in s.labels.items():
        assert lab.shape == (2048,) and lab.dtype == np.float32
        assert lab.min() >= 0.0 and lab.max() <= 1.0
        assert lab.max() == 1.0, (cls, aff)  # non-empty core
        assert np.mean(lab >= 0.5) >= 0.02, (cls, aff)
        # values below 0.01 are zeroed, so there are no tiny positive scores
        assert not np.any((lab > 0) & (lab < 0.01))
        if (cls, aff) not in BROAD:
            assert np.mean(lab == 0) >= 0.3, (cls, aff, np.mean(lab == 0))
            assert np.mean(lab >= 0.5) <= 0.7, (cls, aff)
        # smooth: a point's nearest neighbour has nearly the same score
        assert np.quantile(np.abs(lab - lab[nn]), 0.99) < 0.5, (cls, aff)


@pytest.mark.parametrize("seed", SEEDS)
def test_chair_semantics(seed: int) -> None:
    s = shape("Chair", seed)
    p, n = s.points, s.normals
    sit = s.labels["sit"] >= 0.99
    assert n[sit, 1].mean() > 0.9  # seat top faces up
    seat_y = p[sit, 1].mean()
    legs = p[:, 1] < p[sit, 1].min() - 0.1
    assert legs.mean() > 0.05  # there is a substantial leg region below the seat
    assert seat_y > p[legs, 1].mean() + 0.2
    support = s.labels["support"] >= 0.99
    assert n[support, 2].mean() > 0.8  # backrest front faces the front (+z)
    assert p[support, 1].mean() > seat_y
    assert p[support, 2].mean() < p[sit, 2].mean()  # backrest behind the seat centre
    move = high(s, "move")
    assert p[move, 1].mean() > p[support, 1].mean()  # top edge of the backrest


@pytest.mark.parametrize("seed", SEEDS)
def test_table_semantics(seed: int) -> None:
    s = shape("Table", seed)
    p, n = s.points, s.normals
    support = s.labels["support"] >= 0.99
    assert n[support, 1].mean() > 0.95
    assert p[support, 1].min() > np.quantile(p[:, 1], 0.5)
    move = s.labels["move"] >= 0.99
    r_xz = np.hypot(p[:, 0], p[:, 2])
    assert r_xz[move].mean() > r_xz[support].mean()  # edges are outside the top's centre


@pytest.mark.parametrize("seed", SEEDS)
def test_mug_semantics(seed: int) -> None:
    s = shape("Mug", seed)
    p = s.points
    axis = np.median(p[s.labels["contain"] >= 0.99][:, [0, 2]], axis=0)
    radial = np.linalg.norm(p[:, [0, 2]] - axis, axis=1)
    grasp = s.labels["grasp"]
    # the handle sticks out beyond the body's radius
    assert radial[grasp >= 0.9].mean() > radial[grasp == 0].max()
    pour = high(s, "pour")
    assert p[pour, 1].mean() > np.quantile(p[:, 1], 0.85)  # rim at the top


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cls", ["Knife", "Scissors"])
def test_tool_semantics(cls: str, seed: int) -> None:
    s = shape(cls, seed)
    p = s.points.astype(np.float64)
    _, _, vt = np.linalg.svd(p - p.mean(axis=0), full_matrices=False)
    t = p @ vt[0]  # long axis
    stab, grasp = t[high(s, "stab")].mean(), t[high(s, "grasp")].mean()
    lo, hi = np.quantile(t, [0.05, 0.95])
    assert stab > hi or stab < lo  # the tip is at an extreme of the long axis
    assert np.sign(stab - np.median(t)) != np.sign(grasp - np.median(t))
    cut = t[high(s, "cut")].mean()
    assert min(stab, grasp) < cut < max(stab, grasp)  # the edge lies between handle and tip


@pytest.mark.parametrize("seed", SEEDS)
def test_other_semantics(seed: int) -> None:
    b = shape("Bottle", seed)
    assert b.points[high(b, "open"), 1].mean() > np.quantile(b.points[:, 1], 0.9)
    bag = shape("Bag", seed)
    assert bag.points[high(bag, "lift"), 1].mean() > np.quantile(bag.points[:, 1], 0.9)
    d = shape("Door", seed)
    op = high(d, "open")
    assert d.points[op, 0].mean() > d.points[:, 0].mean() + 0.15  # handle side
    assert np.abs(d.points[op, 2]).mean() > np.abs(d.points[:, 2]).mean()  # sticks out
    disp = shape("Display", seed)
    assert disp.normals[disp.labels["display"] >= 0.99, 2].mean() > 0.95
    lap = shape("Laptop", seed)
    assert lap.normals[lap.labels["press"] >= 0.99, 1].mean() > 0.95
    assert (lap.points[high(lap, "open"), 1].mean()
            > lap.points[high(lap, "display"), 1].mean())
    mw = shape("Microwave", seed)
    assert mw.points[high(mw, "press"), 0].mean() > mw.points[high(mw, "open"), 0].mean()
    f = shape("Faucet", seed)
    np.testing.assert_array_equal(f.labels["open"] == 1.0, f.labels["grasp"] == 1.0)
    v = shape("Vase", seed)
    assert v.points[high(v, "pour"), 1].mean() > v.points[high(v, "wrapgrasp"), 1].mean()
    bed = shape("Bed", seed)
    assert bed.normals[bed.labels["lay"] >= 0.99, 1].mean() > 0.95


def test_determinism() -> None:
    for cls in SYNTH_CLASSES:
        a = make_shape(cls, np.random.default_rng(7))
        b = make_shape(cls, np.random.default_rng(7))
        c = make_shape(cls, np.random.default_rng(8))
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.normals, b.normals)
        for aff in a.labels:
            np.testing.assert_array_equal(a.labels[aff], b.labels[aff])
        assert not np.array_equal(a.points, c.points)


def test_n_points_and_errors() -> None:
    s = make_shape("Mug", np.random.default_rng(0), n_points=512)
    assert s.points.shape == (512, 3) and s.labels["grasp"].shape == (512,)
    with pytest.raises(ValueError, match="unknown synthetic class 'Teapot'"):
        make_shape("Teapot", np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_points must be at least 64"):
        make_shape("Mug", np.random.default_rng(0), n_points=10)


# --------------------------------------------------------------------------- rendering


def _valid_box(box, w: int, h: int) -> None:
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def _overlap(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _outside(x: np.ndarray, y: np.ndarray, box) -> np.ndarray:
    """Chebyshev distance (pixels) of pixel centres (x, y) outside `box`; 0 inside."""
    dx = np.maximum(np.maximum(box[0] - (x + 0.5), (x + 0.5) - box[2]), 0.0)
    dy = np.maximum(np.maximum(box[1] - (y + 0.5), (y + 0.5) - box[3]), 0.0)
    return np.maximum(dx, dy)


def _drawn_edges(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Pixels where the colour jumps between horizontal neighbours: silhouettes of the splatted
    object and of the subject.  The background (vertical gradients, a horizontal horizon,
    blotchy noise at 24-px scale, a soft contact shadow) has no such jumps."""
    a = np.asarray(img).astype(np.int32)
    jump = np.abs(np.diff(a, axis=1)).sum(axis=2) > 40
    y, x = np.nonzero(jump)
    return x.astype(np.float64) + 0.5, y.astype(np.float64)  # between columns x and x + 1


@pytest.mark.parametrize("cls", SYNTH_CLASSES)
def test_render_places_subject_on_part(cls: str) -> None:
    """The boxes are checked against what is visible in the image, not against the projection
    that produced them."""
    for k, aff in enumerate(CLASS_AFFORDANCES[cls]):
        s = shape(cls, k)
        h, w = 240, 320
        r = render_interaction_info(s, aff, np.random.default_rng(100 + k), size=(h, w))
        assert isinstance(r.image, Image.Image)
        assert r.image.mode == "RGB" and r.image.size == (w, h)
        _valid_box(r.subject_box, w, h)
        _valid_box(r.object_box, w, h)
        ob, sb = r.object_box, r.subject_box
        size = max(ob[2] - ob[0], ob[3] - ob[1])
        assert size > 0.25 * min(h, w)  # the object is a good part of the photo
        # Everything drawn lies in the object box or the subject box.  The object box bounds
        # the projected points; their splats reach past it by up to a splat radius (large for
        # sparse surfaces in a small image), hence the margin.
        x, y = _drawn_edges(r.image)
        assert len(x) > 200, (cls, aff)
        off = np.minimum(_outside(x, y, ob), _outside(x, y, sb))
        assert off.max() <= 0.1 * size, (cls, aff, off.max(), size)
        # ... and the object box is tight: the object's outline reaches its left and right
        # sides, except where the subject covers that side.
        obj = (_outside(x, y, ob) <= 0.1 * size) & (_outside(x, y, sb) > 0)
        ox = x[obj]
        assert len(ox) > 50, (cls, aff)
        if not sb[0] <= ob[0] + 0.1 * size:
            assert ox.min() <= ob[0] + 0.1 * size, (cls, aff, ox.min(), ob)
        if not sb[2] >= ob[2] - 0.1 * size:
            assert ox.max() >= ob[2] - 0.1 * size, (cls, aff, ox.max(), ob)
        # The subject is drawn in flat skin tones: (nearly) all such pixels are in its box (the
        # object's own shading can hit a skin tone exactly on a few pixels).
        a = np.asarray(r.image)
        skin = np.zeros((h, w), dtype=bool)
        for tone in _SKIN:
            skin |= (a == np.array(tone, dtype=np.uint8)).all(axis=2)
        sy, sx = np.nonzero(skin)
        assert len(sx) >= 20, (cls, aff)  # a hand, a face or ears are visible
        assert np.mean(_outside(sx.astype(np.float64), sy.astype(np.float64), sb) <= 1) > 0.95
        # The subject touches the afforded part.
        assert _overlap(sb, r.part_box), (cls, aff)
        part = r.uv[s.labels[aff] >= 0.5]
        assert _outside(part[:, 0] - 0.5, part[:, 1] - 0.5, ob).max() == 0
        assert r.visible.sum() > 100


def test_render_many_seeds_overlap() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        cls = SYNTH_CLASSES[i % len(SYNTH_CLASSES)]
        aff = CLASS_AFFORDANCES[cls][i % len(CLASS_AFFORDANCES[cls])]
        s = make_shape(cls, rng)
        r = render_interaction_info(s, aff, rng, size=(120, 160))
        _valid_box(r.subject_box, 160, 120)
        _valid_box(r.object_box, 160, 120)
        assert _overlap(r.subject_box, r.part_box), (cls, aff)


def test_render_determinism_and_api() -> None:
    s = shape("Chair", 0)
    img1, sb1, ob1 = render_interaction(s, "sit", np.random.default_rng(3))
    img2, sb2, ob2 = render_interaction(s, "sit", np.random.default_rng(3))
    img3, _, _ = render_interaction(s, "sit", np.random.default_rng(4))
    np.testing.assert_array_equal(np.asarray(img1), np.asarray(img2))
    assert sb1 == sb2 and ob1 == ob2
    assert all(isinstance(v, float) for v in sb1 + ob1)
    assert (img1.size[1], img1.size[0]) in {
        (480, 640), (640, 480), (612, 408), (426, 640), (512, 512), (375, 500), (480, 360)}
    assert img3.size != img1.size or not np.array_equal(np.asarray(img1), np.asarray(img3))
    info = render_interaction_info(s, "sit", np.random.default_rng(3))
    np.testing.assert_array_equal(np.asarray(info.image), np.asarray(img1))
    assert info.subject_box == sb1


def test_render_size_and_errors() -> None:
    s = shape("Knife", 0)
    img, sb, ob = render_interaction(s, "cut", np.random.default_rng(0), size=(300, 200))
    assert img.size == (200, 300)
    _valid_box(sb, 200, 300)
    _valid_box(ob, 200, 300)
    with pytest.raises(ValueError, match="Knife has no affordance 'sit'; it has grasp, cut, stab"):
        render_interaction(s, "sit", np.random.default_rng(0))
    with pytest.raises(ValueError, match="image size must be at least 32x32"):
        render_interaction(s, "cut", np.random.default_rng(0), size=(20, 200))


def test_project_points_conventions() -> None:
    cam = Camera(azimuth=0.0, elevation=0.0, distance=None, scale=100.0, cx=50.0, cy=60.0)
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    uv, depth = project_points(pts, cam)
    np.testing.assert_allclose(uv, [[50, 60], [150, 60], [50, -40], [50, 60]], atol=1e-6)
    assert depth[3] > depth[0]  # +z is towards a camera at azimuth 0
    persp = Camera(0.0, 0.0, 3.0, 100.0, 50.0, 60.0)
    uv2, _ = project_points(np.array([[1, 0, 0.5], [1, 0, -0.5]]), persp)
    assert uv2[0, 0] > uv2[1, 0]  # nearer points project further from the centre
