"""PNG pictures of scored point clouds: two opposite views side by side, with a colourbar.

The heatmap colormap lives here too: the PLY writer (affcli.data.pointio) colours points with
`heatmap_colors`, so a PLY opened in a viewer and the PNG views show the same colours.

Drawn with matplotlib's Agg canvas on a private Figure, so no display, no pyplot and no
global backend switch is involved (safe inside servers, tests and threads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from affcli.fileio import atomic_output

# "jet"-like rainbows are what the field's score figures look like, and a rainbow keeps low,
# middle and high scores apart better than a two-colour ramp. "turbo" is Google's fix of jet:
# same hue order, but without jet's false bands around cyan/yellow and with darker, distinct
# ends, so a colourbar reads the same way the points do.
HEATMAP_CMAP = "turbo"

ELEVATION = 20.0  # degrees: high enough to see tops (seats, lids), low enough to see sides
# (azimuth, label): the second view is the first turned half way round, so together they show
# every side of the shape
VIEWS = ((-125.0, "front-left"), (55.0, "back-right"))
DPI = 100

# Which data axis points up. ShapeNet-derived data (PIAD, LASO, 3D AffordanceNet) is y-up;
# matplotlib draws z up. Each map is a proper rotation, so shapes are never mirrored.
_UP_MAPS = {
    "x": lambda p: np.stack([p[:, 1], p[:, 2], p[:, 0]], axis=1),
    "y": lambda p: np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1),
    "z": lambda p: p,
}


def render_views(points: np.ndarray, scores: np.ndarray, path: str | Path,
                 title: str | None = None, size: tuple[int, int] = (1000, 500),
                 *, up: str = "y", force: bool = True) -> Path:
    """Write a PNG of `size` (width, height) pixels showing the cloud from the front-left and
    the back-right, points coloured by score (heatmap, 0..1) with a colourbar. Atomic.

    Raises ValueError for inconsistent arrays or options (a caller's bug, not bad input).
    """
    pts, sc = _checked(points, scores, size, up)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    xyz = _UP_MAPS[up](pts)
    colors = heatmap_colors(sc) / 255.0
    top = 0.90 if title else 0.97
    panel_w = 0.43
    marker = marker_area(len(xyz), panel_w * width, top * height)
    for i, (azim, label) in enumerate(VIEWS):
        draw_view(fig, (0.01 + i * panel_w, 0.0, panel_w, top), xyz, colors, marker, azim,
                  label)
    add_colorbar(fig, (0.9, 0.12, 0.018, top - 0.2))
    if title:
        fig.suptitle(title, y=0.975)
    path = Path(path)
    with atomic_output(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def draw_view(fig: Any, rect: tuple[float, float, float, float], xyz: np.ndarray,
              colors: np.ndarray, marker: float, azim: float, label: str | None = None
              ) -> None:
    """One orthographic view of an up-mapped cloud (`to_z_up`) in the figure rectangle
    `rect`, seen from `azim` at ELEVATION, every axis on one scale."""
    centre = (xyz.min(axis=0) + xyz.max(axis=0)) / 2
    half = max(float(np.ptp(xyz, axis=0).max()) / 2, 1e-9)
    ax = fig.add_axes(rect, projection="3d")
    # opaque markers without depth shading: the colour seen is the score's colour, and
    # mplot3d draws them back to front so near points hide far ones
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colors, s=marker, depthshade=False,
               edgecolors="none", linewidths=0)
    ax.view_init(elev=ELEVATION, azim=azim)
    ax.set_proj_type("ortho")  # no perspective stretch: proportions stay true
    for c, setter in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        setter(centre[c] - half, centre[c] + half)
    ax.set_box_aspect((1, 1, 1), zoom=1.25)
    ax.set_axis_off()
    if label:
        ax.text2D(0.5, 0.02, label, transform=ax.transAxes, ha="center", fontsize=9,
                  color="0.35")


def add_colorbar(fig: Any, rect: tuple[float, float, float, float]) -> None:
    """The heatmap colour bar (0..1, HEATMAP_CMAP): the one scale of every score picture."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=HEATMAP_CMAP),
                       cax=fig.add_axes(rect))
    bar.set_label("affordance score")


def to_z_up(points: np.ndarray, up: str = "y") -> np.ndarray:
    """`points` [M, 3] rotated so that their `up` axis is matplotlib's z."""
    if up not in _UP_MAPS:
        raise ValueError(f"up must be one of {', '.join(_UP_MAPS)}, got {up!r}")
    return _UP_MAPS[up](np.asarray(points, np.float64))


def _checked(points: np.ndarray, scores: np.ndarray, size: tuple[int, int], up: str
             ) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"points have shape {pts.shape}, expected [M, 3] with M > 0")
    sc = np.asarray(scores, np.float64)
    if sc.shape != (len(pts),):
        raise ValueError(f"scores have shape {sc.shape}, expected ({len(pts)},)")
    if not (np.isfinite(pts).all() and np.isfinite(sc).all()):
        raise ValueError("points and scores must be finite")
    if len(size) != 2 or min(size) < 50:
        raise ValueError(f"size {size} is not a (width, height) of at least 50 pixels")
    if up not in _UP_MAPS:
        raise ValueError(f"up must be one of {', '.join(_UP_MAPS)}, got {up!r}")
    return pts, sc


def marker_area(n: int, panel_w_px: float, panel_h_px: float) -> float:
    """Marker area in points^2: dense clouds get small dots, sparse ones big enough to read
    as a surface. The cloud's outline covers roughly half the panel's shorter side squared."""
    side = 0.5 * min(panel_w_px, panel_h_px)
    diameter_px = float(np.clip(1.8 * side / np.sqrt(n), 1.5, 12.0))
    return (diameter_px * 72.0 / DPI) ** 2


def heatmap_colors(scores: np.ndarray, cmap: str = HEATMAP_CMAP) -> np.ndarray:
    """Scores in [0, 1] (clipped) as uint8 RGB [M, 3] through the heatmap colormap (what the
    PNG views and the PLY writer colour points with)."""
    # lazy: importing this module (the PLY writer does) should not pay for matplotlib
    from matplotlib import colormaps

    s = np.asarray(scores, np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN/inf")
    return colormaps[cmap](np.clip(s, 0.0, 1.0), bytes=True)[:, :3].copy()
