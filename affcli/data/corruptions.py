"""Point-cloud corruptions for robustness evaluation (`affcli eval --corrupt`).

The seven corruptions of ModelNet-C / PointCloud-C (Ren, Pan and Liu, "Benchmarking and
Analyzing Point Cloud Classification under Corruptions", ICML 2022), each at five severities,
with their published parameters (level l = severity - 1):

    scale        per-axis factors U(1/s, s), s = 1.6, 1.7, 1.8, 1.9, 2.0; then re-normalised
                 to the unit sphere
    jitter       Gaussian noise, sigma = 0.01 (l + 1)
    rotate       Euler angles U(-a, a) about x, y, z, a = (pi / 6)(l + 1) / 5; R = Rz Ry Rx
    drop_global  drop a random 25, 37.5, 50, 62.5, 75 % of the points
    drop_local   drop 100 (l + 1) points in 1-7 clusters: the K nearest points to a random point
    add_global   add 10 (l + 1) points uniformly inside the unit sphere
    add_local    add 100 (l + 1) points in 1-7 Gaussian clusters (sigma U(0.075, 0.125)) around
                 random points; points outside the unit sphere are divided by their squared norm

The point counts are ModelNet-C's for 1,024-point clouds; here they scale with the cloud
(N / 1024) so the same share of an affordance cloud is dropped or added. The ground truth goes
with the points: an added point is a negative, a dropped point leaves the metric. The cloud
is then brought back to the N points the model was evaluated with: a grown cloud is
subsampled at random (originals it loses leave the metric too), a shrunk one is padded with
repeats of random survivors, which the metric does not count. Severity 0 is the identity.
Everything is drawn from `numpy.random.default_rng([seed, kind, severity, sample index])`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affcli.errors import AffError

KINDS = ("scale", "jitter", "rotate", "drop_global", "drop_local", "add_global", "add_local")
SEVERITIES = (1, 2, 3, 4, 5)
SEED = 1024
_BASE_POINTS = 1024  # ModelNet-C's cloud size, for which its point counts are given


@dataclass
class Corrupted:
    """A corrupted cloud of the original size N: points [N, 3] float32, target [N] float32
    (0 for added points) and scored [N] bool (False for the padding repeats)."""

    points: np.ndarray
    target: np.ndarray
    scored: np.ndarray


def parse(spec: str) -> list[tuple[str, int]]:
    """'all' -> the 35 (kind, severity) cells; 'KIND' -> its five severities;
    'KIND:S' -> one cell (S in 0..5; 0 is the identity)."""
    spec = spec.strip().lower().replace("-", "_")
    if spec == "all":
        return [(k, s) for k in KINDS for s in SEVERITIES]
    kind, _, level = spec.partition(":")
    if kind not in KINDS:
        raise AffError("--corrupt", f"unknown corruption {kind!r} (one of {', '.join(KINDS)}, "
                       "or all)")
    if not level:
        return [(kind, s) for s in SEVERITIES]
    if not level.isdigit() or not 0 <= int(level) <= 5:
        raise AffError("--corrupt", f"severity must be 0..5, got {level!r}")
    return [(kind, int(level))]


def corrupt(points: np.ndarray, target: np.ndarray, kind: str, severity: int, index: int
            ) -> Corrupted:
    """`kind` at `severity` applied to one normalised cloud [N, 3] and its ground truth [N],
    deterministically for sample `index`."""
    n = points.shape[0]
    pts = np.asarray(points, np.float64)
    tgt = np.asarray(target, np.float32)
    if severity == 0:
        return Corrupted(pts.astype(np.float32), tgt.copy(), np.ones(n, bool))
    rng = np.random.default_rng([SEED, KINDS.index(kind), severity, int(index)])
    level = severity - 1
    scale_count = n / _BASE_POINTS
    if kind == "scale":
        s = (1.6, 1.7, 1.8, 1.9, 2.0)[level]
        pts = _unit_sphere(pts * rng.uniform(1 / s, s, size=3))
    elif kind == "jitter":
        pts = pts + 0.01 * (level + 1) * rng.standard_normal(pts.shape)
    elif kind == "rotate":
        pts = pts @ _rotation(rng.uniform(-1, 1, size=3) * (np.pi / 6) * (level + 1) / 5)
    elif kind == "drop_global":
        keep = int(n * (1 - (0.25, 0.375, 0.5, 0.625, 0.75)[level]))
        return _back_to(pts, tgt, np.sort(rng.permutation(n)[:keep]), n, rng)
    elif kind == "drop_local":
        total = min(round(100 * (level + 1) * scale_count), n - 1)
        alive = np.arange(n)
        for k in _cluster_sizes(total, rng):
            centre = pts[alive[rng.integers(len(alive))]]
            near = np.argsort(((pts[alive] - centre) ** 2).sum(1), kind="stable")[:k]
            alive = np.delete(alive, near)
        return _back_to(pts, tgt, alive, n, rng)
    elif kind == "add_global":
        added = _in_unit_ball(round(10 * (level + 1) * scale_count), rng)
        return _with_added(pts, tgt, added, n, rng)
    elif kind == "add_local":
        total = round(100 * (level + 1) * scale_count)
        parts = []
        for k in _cluster_sizes(total, rng):
            centre = pts[rng.integers(n)]
            parts.append(centre + rng.uniform(0.075, 0.125) * rng.standard_normal((k, 3)))
        added = np.concatenate(parts)
        r2 = (added ** 2).sum(1, keepdims=True)
        added = np.where(r2 > 1, added / r2, added)
        return _with_added(pts, tgt, added, n, rng)
    else:
        raise AffError("--corrupt", f"unknown corruption {kind!r}")
    return Corrupted(pts.astype(np.float32), tgt.copy(), np.ones(n, bool))


def _unit_sphere(pts: np.ndarray) -> np.ndarray:
    pts = pts - pts.mean(0, keepdims=True)
    r = np.sqrt((pts ** 2).sum(1)).max()
    return pts / r if r > 0 else pts


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _cluster_sizes(total: int, rng: np.random.Generator) -> list[int]:
    """`total` points over 1..7 clusters, each point to a uniformly drawn cluster."""
    clusters = int(rng.integers(1, 8))
    sizes = np.bincount(rng.integers(clusters, size=total), minlength=clusters)
    return [int(k) for k in sizes if k > 0]


def _in_unit_ball(count: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0, 1, (count, 1)) ** (1 / 3)
    cos_t = rng.uniform(-1, 1, (count, 1))
    sin_t = np.sqrt(1 - cos_t ** 2)
    phi = rng.uniform(0, 2 * np.pi, (count, 1))
    return np.concatenate([radius * sin_t * np.cos(phi), radius * sin_t * np.sin(phi),
                           radius * cos_t], axis=1)


def _with_added(pts: np.ndarray, tgt: np.ndarray, added: np.ndarray, n: int,
                rng: np.random.Generator) -> Corrupted:
    grown = np.concatenate([pts, added])
    grown_t = np.concatenate([tgt, np.zeros(len(added), np.float32)])
    return _back_to(grown, grown_t, np.arange(len(grown)), n, rng)


def _back_to(pts: np.ndarray, tgt: np.ndarray, alive: np.ndarray, n: int,
             rng: np.random.Generator) -> Corrupted:
    """The points `alive` (indices into pts), brought to exactly n: a random subset of n
    when more (order kept), else padded with repeats of random survivors (not scored)."""
    if len(alive) > n:
        alive = alive[np.sort(rng.permutation(len(alive))[:n])]
        scored = np.ones(n, bool)
    else:
        pad = rng.integers(len(alive), size=n - len(alive))
        scored = np.concatenate([np.ones(len(alive), bool), np.zeros(len(pad), bool)])
        alive = np.concatenate([alive, alive[pad]])
    return Corrupted(pts[alive].astype(np.float32), tgt[alive].astype(np.float32), scored)
