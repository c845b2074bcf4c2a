"""affcli.views: render_views draws a PNG of the requested size, showing the points in heatmap
colours; heatmap_colors maps scores through the colormap."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from affcli.views import HEATMAP_CMAP, heatmap_colors, render_views


def sphere(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def colour_mask(img: np.ndarray, score: float, tol: int = 4) -> np.ndarray:
    """Pixels drawn in the heatmap colour of `score`."""
    rgb = np.array(colormaps[HEATMAP_CMAP](score, bytes=True)[:3], int)
    return (np.abs(img.astype(int) - rgb) <= tol).all(axis=-1)


@pytest.mark.parametrize("size, title", [((1000, 500), "Chair: sit"), ((640, 360), None)])
def test_png_of_requested_size_with_high_and_low_colours(tmp_path, size, title):
    pts = sphere(3000)
    scores = (pts[:, 1] > 0).astype(np.float64)  # y is up: top half 1, bottom half 0
    out = render_views(pts, scores, tmp_path / "views" / "pred.png", title=title, size=size)
    assert out == tmp_path / "views" / "pred.png"
    assert [p.name for p in out.parent.iterdir()] == ["pred.png"]  # no temp file left
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == size
        img = np.asarray(im.convert("RGB"))
    # the two views only: the colourbar on the right holds every colour by itself
    views = img[:, : int(0.88 * size[0])]
    assert (views < 250).any(axis=-1).mean() > 0.05  # not blank
    assert colour_mask(views, 1.0).sum() > 200 and colour_mask(views, 0.0).sum() > 200
    # the high scores are drawn on top in both views (y is up)
    for half in np.array_split(views, 2, axis=1):
        rows_hi = np.nonzero(colour_mask(half, 1.0))[0]
        rows_lo = np.nonzero(colour_mask(half, 0.0))[0]
        assert rows_hi.mean() < rows_lo.mean()


@pytest.mark.parametrize("dims, wide", [((4.0, 1.0, 1.0), True), ((1.0, 4.0, 1.0), False)])
def test_equal_aspect_ratio(tmp_path, dims, wide):
    # a 4:1:1 box must not be squashed into a cube: long along x it is drawn wide, long along
    # y (up) it is drawn tall, in both views (a cube would be about 1:1, foreshortening
    # takes the 4:1 down to about 2:1)
    pts = np.random.default_rng(1).random((4000, 3)) * dims
    out = render_views(pts, np.ones(len(pts)), tmp_path / "box.png", size=(1000, 500))
    img = np.asarray(Image.open(out).convert("RGB"))[:, :880]
    for half in np.array_split(img, 2, axis=1):
        ys, xs = np.nonzero(colour_mask(half, 1.0))
        width, height = np.ptp(xs), np.ptp(ys)
        assert (width > 1.5 * height) if wide else (height > 1.5 * width), (width, height)


def test_overwrites_existing_png(tmp_path):
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    render_views(sphere(100), np.zeros(100), out, size=(300, 200))
    with Image.open(out) as im:
        assert im.size == (300, 200)


@pytest.mark.parametrize("points, scores, message", [
    (np.zeros((5, 2)), np.zeros(5), r"points have shape \(5, 2\), expected \[M, 3\]"),
    (np.zeros((5, 3)), np.zeros(4), r"scores have shape \(4,\), expected \(5,\)"),
    (np.zeros((0, 3)), np.zeros(0), r"points have shape \(0, 3\), expected \[M, 3\] with M > 0"),
    (np.zeros((5, 3)), np.array([0, 0, np.nan, 0, 0]), "points and scores must be finite"),
])
def test_bad_arrays_raise_value_error(tmp_path, points, scores, message):
    with pytest.raises(ValueError, match=message):
        render_views(points, scores, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_heatmap_colors_use_the_colormap():
    scores = np.array([0.0, 0.5, 1.0, -0.2, 1.3])
    rgb = heatmap_colors(scores)
    assert rgb.shape == (5, 3) and rgb.dtype == np.uint8
    expected = colormaps[HEATMAP_CMAP]([0.0, 0.5, 1.0, 0.0, 1.0], bytes=True)[:, :3]
    np.testing.assert_array_equal(rgb, expected)
    assert not (rgb[0] == rgb[2]).all()
