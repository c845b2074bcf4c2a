"""Procedural 3D objects with soft per-point affordance labels (stand-ins for PIAD / LASO shapes).

Every object is assembled from simple surface primitives (box faces, open frustums, discs,
sphere zones, tubes swept along curves, extruded polygons) with random proportions per
instance.  Points are sampled area-weighted over the primitives, so the density is uniform over
the surface as when sampling a real mesh.  Each affordance has a *core* region (a set of sampled
points, chosen by part tag and optionally a geometric predicate); a point's soft score is
exp(-(d/sigma)^2 / 2) of its Euclidean distance d to the nearest core point, zeroed below 0.01,
which mimics how the public datasets spread their annotations: 1 on the part, falling smoothly
to exactly 0 away from it.  Being Euclidean, scores cross thin walls (a mug's contain region also
covers the outside of its wall).

Conventions: y is up; the object is centred on its point centroid and scaled so that its
largest absolute coordinate lies in [0.7, 0.95] (ShapeNet-like normalisation).  Classes with a
front (Chair, Table, Bed, Door, Display, Laptop, Microwave, Dishwasher) face +z.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SYNTH_CLASSES: tuple[str, ...] = (
    "Mug", "Bowl", "Bottle", "Chair", "Table", "Bed", "Knife", "Scissors",
    "Bag", "Door", "Display", "Laptop", "Faucet", "Vase", "Microwave", "Dishwasher",
)

CLASS_AFFORDANCES: dict[str, tuple[str, ...]] = {
    "Mug": ("grasp", "contain", "pour", "wrapgrasp"),
    "Bowl": ("contain", "wrapgrasp", "pour"),
    "Bottle": ("contain", "open", "pour", "wrapgrasp"),
    "Chair": ("sit", "support", "move"),
    "Table": ("support", "move"),
    "Bed": ("lay", "sit", "support"),
    "Knife": ("grasp", "cut", "stab"),
    "Scissors": ("grasp", "cut", "stab"),
    "Bag": ("grasp", "lift", "contain", "open"),
    "Door": ("open", "push", "pull"),
    "Display": ("display",),
    "Laptop": ("display", "press", "open"),
    "Faucet": ("open", "grasp"),
    "Vase": ("contain", "wrapgrasp", "pour"),
    "Microwave": ("open", "contain", "press"),
    "Dishwasher": ("open", "contain"),
}

# Label width as a fraction of the object size (mean of the three bounding-box extents).
# Small, precise parts (blade edge, tip) get narrower falloffs than large contact regions.
_SIGMA_FRAC: dict[str, float] = {
    "grasp": 0.055, "contain": 0.06, "pour": 0.05, "wrapgrasp": 0.06, "sit": 0.065,
    "support": 0.07, "move": 0.055, "lay": 0.07, "cut": 0.045, "stab": 0.05, "lift": 0.055,
    "open": 0.06, "push": 0.065, "pull": 0.06, "display": 0.06, "press": 0.055,
}

_JITTER = 0.002
_MIN_HIGH = 0.025  # minimum fraction of points with label >= 0.5 per affordance

_X = np.array([1.0, 0.0, 0.0])
_Y = np.array([0.0, 1.0, 0.0])
_Z = np.array([0.0, 0.0, 1.0])

Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SynthShape:
    """One procedural object: surface points, outward normals and soft affordance labels."""

    object_class: str
    points: np.ndarray  # float32 [n, 3]
    normals: np.ndarray  # float32 [n, 3], unit length
    labels: dict[str, np.ndarray]  # affordance -> float32 [n] in [0, 1]


# --------------------------------------------------------------------------- geometry helpers


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing `axis` to a right-handed orthonormal frame."""
    a = _unit(np.asarray(axis, dtype=np.float64))
    ref = _X if abs(a[0]) < 0.9 else _Y
    e1 = _unit(np.cross(a, ref))
    return e1, np.cross(a, e1)


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _superellipse_arc(
    x0: float, y_lo: float, y_hi: float, reach: float, expo: float, k: int = 21
) -> np.ndarray:
    """Half super-ellipse in the xy-plane from (x0, y_hi) out to x0+reach and back to (x0, y_lo).

    Exponent 2 gives a round C-shaped handle, larger exponents a boxy D-shaped one.
    """
    th = np.linspace(np.pi / 2, -np.pi / 2, k)
    c, s = np.cos(th), np.sin(th)
    x = x0 + reach * np.abs(c) ** (2.0 / expo)
    y = 0.5 * (y_hi + y_lo) + 0.5 * (y_hi - y_lo) * np.sign(s) * np.abs(s) ** (2.0 / expo)
    return np.stack([x, y, np.zeros_like(x)], axis=1)


class _Parts:
    """Collects tagged surface primitives, then samples them area-weighted."""

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.areas: list[float] = []
        self.samplers: list[Sampler] = []

    def add(self, tag: str, area: float, sampler: Sampler) -> None:
        self.tags.append(tag)
        self.areas.append(float(area))
        self.samplers.append(sampler)

    # -- primitives -------------------------------------------------------------------------
    def rect(self, tag: str, c, u, v) -> None:
        """Parallelogram c + a*u + b*v, a, b in [-1, 1]; normal along u x v."""
        c, u, v = (np.asarray(x, dtype=np.float64) for x in (c, u, v))
        nrm = _unit(np.cross(u, v))

        def f(rng: np.random.Generator, n: int):
            ab = rng.uniform(-1.0, 1.0, (n, 2))
            return c + ab[:, :1] * u + ab[:, 1:] * v, np.broadcast_to(nrm, (n, 3))

        self.add(tag, 4.0 * np.linalg.norm(u) * np.linalg.norm(v), f)

    def box(self, tag: str, c, half, rot: np.ndarray | None = None, skip: tuple = ()) -> None:
        """Closed box; faces are tagged '<tag>.+x', '<tag>.-y', ... in the box's own axes."""
        c = np.asarray(c, dtype=np.float64)
        h = np.asarray(half, dtype=np.float64)
        r = np.eye(3) if rot is None else rot
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            for sgn, name in ((1.0, "+"), (-1.0, "-")):
                face = name + "xyz"[i]
                if face in skip:
                    continue
                u, v = h[j] * r[:, j], h[k] * r[:, k]
                if sgn < 0:
                    u, v = v, u
                self.rect(f"{tag}.{face}", c + sgn * h[i] * r[:, i], u, v)

    def frustum(self, tag: str, c, axis, r0: float, r1: float, h: float,
                inward: bool = False) -> None:
        """Open lateral surface from radius r0 at c to radius r1 at c + h*axis."""
        c = np.asarray(c, dtype=np.float64)
        a = _unit(np.asarray(axis, dtype=np.float64))
        e1, e2 = _frame(a)
        sign = -1.0 if inward else 1.0

        def f(rng: np.random.Generator, n: int):
            uv = rng.random((n, 2))
            if abs(r1 - r0) > 1e-9:  # area-weighted along the axis: density grows with radius
                t = (np.sqrt(r0 * r0 + uv[:, 0] * (r1 * r1 - r0 * r0)) - r0) / (r1 - r0)
            else:
                t = uv[:, 0]
            th = 2.0 * np.pi * uv[:, 1]
            radial = np.cos(th)[:, None] * e1 + np.sin(th)[:, None] * e2
            rad = r0 + (r1 - r0) * t
            p = c + (t * h)[:, None] * a + rad[:, None] * radial
            nrm = _unit(radial * h + a * (r0 - r1)) * sign
            return p, nrm

        self.add(tag, np.pi * (r0 + r1) * np.hypot(h, r0 - r1), f)

    def disc(self, tag: str, c, normal, r: float, r_in: float = 0.0) -> None:
        c = np.asarray(c, dtype=np.float64)
        nrm = _unit(np.asarray(normal, dtype=np.float64))
        e1, e2 = _frame(nrm)

        def f(rng: np.random.Generator, n: int):
            uv = rng.random((n, 2))
            rad = np.sqrt(r_in * r_in + uv[:, 0] * (r * r - r_in * r_in))
            th = 2.0 * np.pi * uv[:, 1]
            p = c + (rad * np.cos(th))[:, None] * e1 + (rad * np.sin(th))[:, None] * e2
            return p, np.broadcast_to(nrm, (n, 3))

        self.add(tag, np.pi * (r * r - r_in * r_in), f)

    def zone(self, tag: str, c, r: float, z0: float, z1: float, scale=(1.0, 1.0, 1.0),
             inward: bool = False) -> None:
        """Band of a (scaled) sphere between heights z0 < z1 in unit-sphere coordinates."""
        c = np.asarray(c, dtype=np.float64)
        sc = np.asarray(scale, dtype=np.float64)
        sign = -1.0 if inward else 1.0

        def f(rng: np.random.Generator, n: int):
            uv = rng.random((n, 2))
            z = z0 + (z1 - z0) * uv[:, 0]  # uniform height = uniform area on a sphere
            th = 2.0 * np.pi * uv[:, 1]
            rho = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
            q = np.stack([rho * np.cos(th), z, rho * np.sin(th)], axis=1)
            return c + r * q * sc, sign * _unit(q / sc)

        self.add(tag, 2 * np.pi * r * r * (z1 - z0) * np.prod(sc) ** (2 / 3), f)

    def tube(self, tag: str, curve: np.ndarray, r: float, ref=_Z) -> None:
        """Tube of radius r swept along a polyline; `ref` is (roughly) the curve's plane normal."""
        curve = np.asarray(curve, dtype=np.float64)
        seg = np.diff(curve, axis=0)
        seg_len = np.linalg.norm(seg, axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        tang = seg / np.maximum(seg_len, 1e-12)[:, None]
        ref = np.asarray(ref, dtype=np.float64)
        side = np.cross(tang, ref)
        bad = np.linalg.norm(side, axis=1) < 1e-6
        side[bad] = np.cross(tang[bad], _X if abs(ref[0]) < 0.9 else _Y)
        side = _unit(side)
        binorm = np.cross(tang, side)

        def f(rng: np.random.Generator, n: int):
            uv = rng.random((n, 2))
            s = uv[:, 0] * cum[-1]
            i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
            centre = curve[i] + (s - cum[i])[:, None] * tang[i]
            th = 2.0 * np.pi * uv[:, 1]
            nrm = np.cos(th)[:, None] * side[i] + np.sin(th)[:, None] * binorm[i]
            return centre + r * nrm, nrm

        self.add(tag, 2.0 * np.pi * r * cum[-1], f)

    def prism(self, tag: str, poly: np.ndarray, w0: float, w1: float,
              origin=(0.0, 0.0, 0.0), u=_X, v=_Y) -> None:
        """Convex CCW polygon in the (u, v) plane extruded along u x v from w0 to w1.

        Parts: '<tag>.face' (both caps) and '<tag>.side' (the extruded rim).
        """
        poly = np.asarray(poly, dtype=np.float64)
        o = np.asarray(origin, dtype=np.float64)
        u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
        w = np.cross(u, v)
        a, b, cc = poly[0], poly[1:-1], poly[2:]
        tri_area = 0.5 * np.abs((b[:, 0] - a[0]) * (cc[:, 1] - a[1])
                                - (b[:, 1] - a[1]) * (cc[:, 0] - a[0]))
        tri_cum = np.cumsum(tri_area)

        def faces(rng: np.random.Generator, n: int):
            r = rng.random((n, 4))
            k = np.minimum(np.searchsorted(tri_cum, r[:, 0] * tri_cum[-1]), len(tri_area) - 1)
            s, t = r[:, 1], r[:, 2]
            flip = s + t > 1.0
            s, t = np.where(flip, 1.0 - s, s), np.where(flip, 1.0 - t, t)
            q = a + s[:, None] * (b[k] - a) + t[:, None] * (cc[k] - a)
            top = r[:, 3] < 0.5
            ww = np.where(top, w1, w0)
            p = o + q[:, :1] * u + q[:, 1:] * v + ww[:, None] * w
            nrm = np.where(top[:, None], w, -w)
            return p, nrm

        self.add(f"{tag}.face", 2.0 * tri_cum[-1], faces)

        p0, p1 = poly, np.roll(poly, -1, axis=0)
        edge = p1 - p0
        e_len = np.linalg.norm(edge, axis=1)
        e_cum = np.cumsum(e_len)
        out2 = np.stack([edge[:, 1], -edge[:, 0]], axis=1) / e_len[:, None]  # CCW -> outward

        def sides(rng: np.random.Generator, n: int):
            r = rng.random((n, 3))
            k = np.minimum(np.searchsorted(e_cum, r[:, 0] * e_cum[-1]), len(e_len) - 1)
            q = p0[k] + r[:, 1:2] * edge[k]
            ww = w0 + (w1 - w0) * r[:, 2]
            p = o + q[:, :1] * u + q[:, 1:] * v + ww[:, None] * w
            nrm = out2[k, :1] * u + out2[k, 1:] * v
            return p, nrm

        self.add(f"{tag}.side", e_cum[-1] * abs(w1 - w0), sides)

    def revolve(self, tag: str, ys: np.ndarray, rs: np.ndarray, inward: bool = False) -> None:
        """Surface of revolution about the y axis through the profile (ys[i], rs[i])."""
        for i in range(len(ys) - 1):
            self.frustum(tag, (0.0, ys[i], 0.0), _Y, rs[i], rs[i + 1], ys[i + 1] - ys[i],
                         inward=inward)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int) -> _Sampled:
        areas = np.asarray(self.areas)
        share = n * areas / areas.sum()
        counts = np.floor(share).astype(np.int64)
        # Largest-remainder rounding: deterministic and exactly n points.
        rest = n - int(counts.sum())
        if rest > 0:
            counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
        pts, nrms, ids = [], [], []
        for k, (m, f) in enumerate(zip(counts, self.samplers, strict=True)):
            if m == 0:
                continue
            p, q = f(rng, int(m))
            pts.append(p)
            nrms.append(q)
            ids.append(np.full(int(m), k, dtype=np.int32))
        return _Sampled(np.concatenate(pts), np.concatenate(nrms), np.concatenate(ids), self.tags)


class _Sampled:
    """Sampled points (in build coordinates) with the part each came from."""

    def __init__(self, p: np.ndarray, n: np.ndarray, part: np.ndarray, tags: list[str]):
        self.p, self.n, self.part, self.tags = p, n, part, tags

    def has(self, *names: str) -> np.ndarray:
        """Points on parts whose tag equals a name or starts with '<name>.'."""
        ids = [k for k, t in enumerate(self.tags)
               if any(t == nm or t.startswith(nm + ".") for nm in names)]
        return np.isin(self.part, ids)

    @property
    def x(self) -> np.ndarray:
        return self.p[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.p[:, 1]

    @property
    def z(self) -> np.ndarray:
        return self.p[:, 2]


Cores = Callable[[_Sampled], dict[str, np.ndarray]]


# --------------------------------------------------------------------------- object builders


def _mug(b: _Parts, r: np.random.Generator) -> Cores:
    h = r.uniform(0.8, 1.2)
    r0 = r.uniform(0.3, 0.45)
    r1 = r0 * r.uniform(0.95, 1.15)
    t = r.uniform(0.025, 0.04)
    b.frustum("body.out", (0, 0, 0), _Y, r0, r1, h)
    b.frustum("body.in", (0, t, 0), _Y, r0 - t, r1 - t, h - t, inward=True)
    b.disc("rim", (0, h, 0), _Y, r1, r1 - t)
    b.disc("base", (0, 0, 0), -_Y, r0)
    b.disc("floor", (0, t, 0), _Y, r0 - t)
    y_hi, y_lo = h * r.uniform(0.68, 0.85), h * r.uniform(0.15, 0.35)
    tr = h * r.uniform(0.03, 0.05)
    reach = h * r.uniform(0.2, 0.34)
    curve = _superellipse_arc(0.0, y_lo, y_hi, reach, r.uniform(2.0, 5.0))
    # Attach the handle to the (possibly tapered) wall at each height.
    curve[:, 0] += r0 + (r1 - r0) * curve[:, 1] / h - 0.5 * tr
    b.tube("handle", curve, tr)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "grasp": s.has("handle"),
            "contain": s.has("body.in", "floor"),
            "pour": s.has("rim") | (s.has("body") & (s.y > 0.92 * h)),
            "wrapgrasp": s.has("body.out") & (s.y > 0.15 * h) & (s.y < 0.85 * h),
        }

    return cores


def _bowl(b: _Parts, r: np.random.Generator) -> Cores:
    rad = r.uniform(0.5, 0.7)
    sy = r.uniform(0.55, 0.9)
    z_top = r.uniform(-0.05, 0.3)
    z_bot = r.uniform(-0.92, -0.8)
    t = rad * r.uniform(0.04, 0.07)
    sc = (1.0, sy, 1.0)
    b.zone("outer", (0, 0, 0), rad, z_bot, z_top, sc)
    b.zone("inner", (0, 0, 0), rad - t, z_bot, z_top, sc, inward=True)
    y_rim = rad * z_top * sy
    rim_out = rad * np.sqrt(1 - z_top**2)
    b.disc("rim", (0, y_rim, 0), _Y, rim_out, (rad - t) * np.sqrt(1 - z_top**2))
    y_base = rad * z_bot * sy
    base_r = rad * np.sqrt(1 - z_bot**2)
    b.disc("floor", (0, (rad - t) * z_bot * sy, 0), _Y, (rad - t) * np.sqrt(1 - z_bot**2))
    if r.random() < 0.5:  # foot ring
        fh = rad * r.uniform(0.05, 0.12)
        b.frustum("foot", (0, y_base - fh, 0), _Y, base_r * 0.9, base_r, fh)
        b.disc("base", (0, y_base - fh, 0), -_Y, base_r * 0.9)
    else:
        b.disc("base", (0, y_base, 0), -_Y, base_r)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        top = s.y > y_rim - 0.08 * rad
        return {
            "contain": s.has("inner", "floor"),
            "wrapgrasp": s.has("outer") & (s.y < y_rim - 0.1 * rad) & (s.y > y_base + 0.05),
            "pour": s.has("rim") | (s.has("outer", "inner") & top),
        }

    return cores


def _bottle(b: _Parts, r: np.random.Generator) -> Cores:
    rb = r.uniform(0.14, 0.24)
    r_bot = rb * r.uniform(0.88, 1.0)
    body_h = r.uniform(0.45, 0.65)
    rn = rb * r.uniform(0.3, 0.5)
    sh_h = r.uniform(0.1, 0.22)
    neck_h = r.uniform(0.08, 0.18)
    cap_h = r.uniform(0.06, 0.1)
    rc = rn * r.uniform(1.08, 1.3)
    b.disc("base", (0, 0, 0), -_Y, r_bot)
    b.frustum("body", (0, 0, 0), _Y, r_bot, rb, body_h)
    # Shoulder: rounded (power-curve) profile from the body radius down to the neck.
    s = np.linspace(0.0, 1.0, 6)
    expo = r.uniform(0.6, 2.5)
    ys = body_h + sh_h * s
    rs = rn + (rb - rn) * (1.0 - s**expo)
    b.revolve("shoulder", ys, rs)
    y_neck = body_h + sh_h
    y_top = y_neck + neck_h
    b.frustum("neck", (0, y_neck, 0), _Y, rn, rn, neck_h)
    b.frustum("cap.side", (0, y_top - 0.4 * cap_h, 0), _Y, rc, rc, cap_h)
    b.disc("cap.top", (0, y_top + 0.6 * cap_h, 0), _Y, rc)
    b.disc("cap.bottom", (0, y_top - 0.4 * cap_h, 0), -_Y, rc, rn)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "contain": s.has("cap.top") | (s.has("neck") & (s.y > y_neck + 0.5 * neck_h)),
            "open": s.has("cap"),
            "pour": s.has("neck", "cap.top"),
            "wrapgrasp": s.has("body") & (s.y > 0.1 * body_h),
        }

    return cores


def _leg(b: _Parts, tag: str, x: float, z: float, y0: float, y1: float, half: float,
         round_: bool) -> None:
    if round_:
        b.frustum(tag, (x, y0, z), _Y, half, half, y1 - y0)
        b.disc(tag, (x, y0, z), -_Y, half)
    else:
        b.box(tag, (x, 0.5 * (y0 + y1), z), (half, 0.5 * (y1 - y0), half), skip=("+y",))


def _chair(b: _Parts, r: np.random.Generator) -> Cores:
    sw, sd = r.uniform(0.8, 1.1), r.uniform(0.75, 1.0)
    st = r.uniform(0.05, 0.1)
    sh = r.uniform(0.8, 1.0)
    b.box("seat", (0, sh - st / 2, 0), (sw / 2, st / 2, sd / 2))
    lt = r.uniform(0.025, 0.045)
    inset = r.uniform(0.01, 0.06)
    round_legs = r.random() < 0.4
    for sx in (-1, 1):
        for sz in (-1, 1):
            _leg(b, "leg", sx * (sw / 2 - inset - lt), sz * (sd / 2 - inset - lt),
                 0.0, sh - st, lt, round_legs)
    if r.random() < 0.4:  # side stretchers
        yb = sh * r.uniform(0.2, 0.35)
        for sx in (-1, 1):
            b.box("leg", (sx * (sw / 2 - inset - lt), yb, 0),
                  (lt * 0.6, lt * 0.6, sd / 2 - inset - lt))
    bh = r.uniform(0.7, 1.1)
    bt = r.uniform(0.04, 0.08)
    tilt = np.deg2rad(r.uniform(0.0, 15.0))
    rot = _rot_x(-tilt)  # top of the backrest leans towards -z
    up = rot[:, 1]
    base = np.array([0.0, sh, -sd / 2 + bt / 2])
    if r.random() < 0.6:
        b.box("back", base + up * bh / 2, (sw / 2, bh / 2, bt / 2), rot)
    else:  # two posts, a top rail and vertical slats
        pw = r.uniform(0.035, 0.06)
        rail = r.uniform(0.1, 0.2) * bh
        for sx in (-1, 1):
            b.box("back", base + up * bh / 2 + _X * sx * (sw / 2 - pw), (pw, bh / 2, bt / 2), rot)
        b.box("back", base + up * (bh - rail / 2), (sw / 2 - 2 * pw, rail / 2, bt / 2), rot)
        n_slat = int(r.integers(2, 6))
        slat_h = bh - rail
        for xi in np.linspace(-1, 1, n_slat + 2)[1:-1] * (sw / 2 - 2 * pw):
            b.box("back", base + up * slat_h / 2 + _X * xi, (pw * 0.5, slat_h / 2, bt / 3), rot)
    if r.random() < 0.3:  # armrests on posts
        ah = r.uniform(0.2, 0.3)
        for sx in (-1, 1):
            b.box("arm", (sx * (sw / 2 - 0.03), sh + ah, 0), (0.03, 0.025, sd / 2 * 0.9))
            b.box("arm", (sx * (sw / 2 - 0.03), sh + ah / 2, sd / 2 * 0.7), (0.02, ah / 2, 0.02))
    y_move = sh + 0.82 * bh * np.cos(tilt)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "sit": s.has("seat.+y"),
            "support": s.has("back.+z"),
            "move": s.has("back") & (s.y > y_move),
        }

    return cores


def _table(b: _Parts, r: np.random.Generator) -> Cores:
    th = r.uniform(0.65, 0.85)
    tt = r.uniform(0.04, 0.08)
    y_top = th - tt / 2
    edge = r.uniform(0.06, 0.1)
    if r.random() < 0.25:  # round top on a pedestal
        rad = r.uniform(0.6, 0.9)
        b.disc("top.+y", (0, th, 0), _Y, rad)
        b.disc("top.-y", (0, th - tt, 0), -_Y, rad)
        b.frustum("top.side", (0, th - tt, 0), _Y, rad, rad, tt)
        pr = r.uniform(0.05, 0.1)
        b.frustum("leg", (0, 0.05, 0), _Y, pr, pr, th - tt - 0.05)
        br = r.uniform(0.3, 0.45)
        b.frustum("leg", (0, 0, 0), _Y, br, br * 0.7, 0.05)
        b.disc("leg", (0, 0, 0), -_Y, br)

        def on_edge(s: _Sampled) -> np.ndarray:
            return np.hypot(s.x, s.z) > rad - edge
    else:
        tw, td = r.uniform(1.2, 2.0), r.uniform(0.6, 1.1)
        b.box("top", (0, y_top, 0), (tw / 2, tt / 2, td / 2))
        lt = r.uniform(0.025, 0.05)
        inset = r.uniform(0.02, 0.1)
        round_legs = r.random() < 0.4
        for sx in (-1, 1):
            for sz in (-1, 1):
                _leg(b, "leg", sx * (tw / 2 - inset - lt), sz * (td / 2 - inset - lt),
                     0.0, th - tt, lt, round_legs)
        if r.random() < 0.5:  # apron under the top
            ah = r.uniform(0.05, 0.1)
            ya = th - tt - ah / 2
            for sz in (-1, 1):
                b.box("apron", (0, ya, sz * (td / 2 - inset - lt)),
                      (tw / 2 - inset - 2 * lt, ah / 2, 0.01))
            for sx in (-1, 1):
                b.box("apron", (sx * (tw / 2 - inset - lt), ya, 0),
                      (0.01, ah / 2, td / 2 - inset - 2 * lt))

        def on_edge(s: _Sampled) -> np.ndarray:
            return (np.abs(s.x) > tw / 2 - edge) | (np.abs(s.z) > td / 2 - edge)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {"support": s.has("top.+y"), "move": s.has("top") & on_edge(s)}

    return cores


def _bed(b: _Parts, r: np.random.Generator) -> Cores:
    bw, bl = r.uniform(1.0, 1.8), r.uniform(1.9, 2.2)
    lh = r.uniform(0.05, 0.15)
    fh = r.uniform(0.15, 0.3)
    mh = r.uniform(0.15, 0.28)
    for sx in (-1, 1):
        for sz in (-1, 1):
            _leg(b, "leg", sx * (bw / 2 - 0.06), sz * (bl / 2 - 0.06), 0.0, lh, 0.04, False)
    b.box("frame", (0, lh + fh / 2, 0), (bw / 2, fh / 2, bl / 2))
    y_m = lh + fh + mh / 2
    b.box("mattress", (0, y_m, 0.01), (bw / 2 - 0.03, mh / 2, bl / 2 - 0.04), skip=("-y",))
    y_top = lh + fh + mh
    hb = r.uniform(0.5, 1.0)
    ht = r.uniform(0.04, 0.1)
    b.box("headboard", (0, hb / 2, -bl / 2 - ht / 2), (bw / 2 + 0.02, hb / 2, ht / 2))
    if r.random() < 0.4:
        fb = r.uniform(y_top + 0.05, y_top + 0.3)
        b.box("footboard", (0, fb / 2, bl / 2 + ht / 2), (bw / 2 + 0.02, fb / 2, ht / 2))
    n_pillow = 1 if bw < 1.3 else int(r.integers(1, 3))
    pw = (bw - 0.2) / n_pillow / 2
    for xi in np.linspace(-1, 1, n_pillow + 2)[1:-1] * (bw / 2):
        b.zone("pillow", (xi, y_top + 0.05, -bl / 2 + 0.3), 1.0, -1.0, 1.0,
               (pw * 0.9, 0.08, 0.2))
    side = bw / 2 - r.uniform(0.12, 0.2)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "lay": s.has("mattress.+y"),
            "sit": s.has("mattress.+x", "mattress.-x")
            | (s.has("mattress.+y") & (np.abs(s.x) > side)),
            "support": s.has("mattress.+y", "frame"),
        }

    return cores


def _knife(b: _Parts, r: np.random.Generator) -> Cores:
    lh = r.uniform(0.3, 0.42)
    hh, hz = r.uniform(0.035, 0.055), r.uniform(0.018, 0.03)
    b.box("handle", (-lh / 2, 0, 0), (lh / 2, hh, hz))
    gl = r.uniform(0.015, 0.04)
    b.box("bolster", (gl / 2, 0, 0), (gl / 2, hh * r.uniform(1.0, 1.4), hz * 0.9))
    x0 = gl
    lb = 1.0 - lh - gl
    bh = r.uniform(0.08, 0.2)
    top = hh * 0.7
    yb = top - bh
    tip_y = top - bh * r.uniform(0.0, 0.5)
    s0, s1 = r.uniform(0.35, 0.75), r.uniform(0.7, 0.95)
    expo = r.uniform(1.3, 2.5)
    s = np.linspace(0.0, 1.0, 14)
    lower_y = yb + (tip_y - yb) * np.clip((s - s0) / (1 - s0), 0, None) ** expo
    lower = np.stack([s * lb, lower_y], axis=1)
    upper = np.array([[lb * s1, top], [0.0, top]])
    if tip_y >= top - 1e-9:
        upper = upper[1:]
    poly = np.concatenate([lower, upper])
    bt = r.uniform(0.008, 0.015)
    b.prism("blade", poly, -bt / 2, bt / 2, origin=(x0, 0, 0))

    def cores(sm: _Sampled) -> dict[str, np.ndarray]:
        blade = sm.has("blade")
        ss = np.clip((sm.x - x0) / lb, 0.0, 1.0)
        edge_y = yb + (tip_y - yb) * np.clip((ss - s0) / (1 - s0), 0, None) ** expo
        return {
            "grasp": sm.has("handle"),
            "cut": blade & (sm.y - edge_y < 0.3 * (top - edge_y) + 0.004) & (ss < 0.97),
            "stab": blade & (ss > 0.88),
        }

    return cores


def _scissors(b: _Parts, r: np.random.Generator) -> Cores:
    ln = r.uniform(0.5, 0.65)
    lh = r.uniform(0.22, 0.32)
    rho = r.uniform(0.08, 0.12)
    rt = r.uniform(0.014, 0.022)
    bw = r.uniform(0.05, 0.08)
    th = 0.012
    alpha = np.deg2rad(r.uniform(4.0, 18.0))
    poly = np.array([[-0.06, -bw / 2], [ln * 0.6, -bw * 0.45], [ln, -bw * 0.05],
                     [ln, bw * 0.05], [ln * 0.6, bw * 0.45], [-0.06, bw / 2]])
    frames = []
    for k, sgn in enumerate((1.0, -1.0)):
        phi = sgn * alpha / 2
        a_dir = np.array([np.cos(phi), 0.0, np.sin(phi)])
        b_dir = np.array([-np.sin(phi), 0.0, np.cos(phi)])
        frames.append((a_dir, b_dir, sgn))
        # u x v = -y: stack the two blades on either side of y = 0
        b.prism(f"blade{k}", poly, -sgn * th if sgn > 0 else 0.0, 0.0 if sgn > 0 else th,
                u=a_dir, v=b_dir)
        # Handle of this blade continues past the pivot on the opposite side.
        ring_c = -lh * a_dir - sgn * 0.6 * rho * b_dir
        ring_c[1] = -sgn * th / 2
        start = np.array([0.0, ring_c[1], 0.0])
        near = ring_c + _unit(start - ring_c) * rho
        b.tube("shank", np.stack([start, near]), rt * 1.2, ref=_Y)
        th_r = np.linspace(0.0, 2 * np.pi, 25)
        ring = ring_c + rho * (np.cos(th_r)[:, None] * _X + np.sin(th_r)[:, None] * _Z)
        b.tube("ring", ring, rt, ref=_Y)
    b.frustum("pivot", (0, -th * 1.4, 0), _Y, 0.018, 0.018, th * 2.8)
    b.disc("pivot", (0, th * 1.4, 0), _Y, 0.018)

    def cores(sm: _Sampled) -> dict[str, np.ndarray]:
        cut = np.zeros(len(sm.p), dtype=bool)
        stab = np.zeros(len(sm.p), dtype=bool)
        for k, (a_dir, b_dir, sgn) in enumerate(frames):
            blade = sm.has(f"blade{k}")
            a = sm.p @ a_dir
            bb = sm.p @ b_dir
            # The cutting edge is the blade half that faces the other blade.
            cut |= blade & (sgn * bb < 0.15 * bw) & (a > 0.08) & (a < 0.92 * ln)
            stab |= blade & (a > 0.86 * ln)
        return {"grasp": sm.has("ring", "shank"), "cut": cut, "stab": stab}

    return cores


def _bag(b: _Parts, r: np.random.Generator) -> Cores:
    w, hb, d = r.uniform(0.8, 1.2), r.uniform(0.55, 0.9), r.uniform(0.25, 0.45)
    wt = w * r.uniform(0.75, 1.0)
    poly = np.array([[-w / 2, 0.0], [w / 2, 0.0], [wt / 2, hb], [-wt / 2, hb]])
    b.prism("body", poly, -d / 2, d / 2)
    tr = r.uniform(0.015, 0.025)
    if r.random() < 0.7:  # two short handles, front and back
        reach = r.uniform(0.22, 0.45)
        half = wt * r.uniform(0.18, 0.32)
        expo = r.uniform(2.0, 4.0)
        for zc in (-0.3 * d, 0.3 * d):
            arc = _superellipse_arc(0.0, -half, half, reach, expo)
            curve = np.stack([arc[:, 1], hb - tr + arc[:, 0], np.full(len(arc), zc)], axis=1)
            b.tube("strap", curve, tr)
        strap_top = hb - tr + reach
    else:  # one long shoulder strap between the side walls
        reach = r.uniform(0.45, 0.75)
        arc = _superellipse_arc(0.0, -wt / 2 + 0.03, wt / 2 - 0.03, reach, r.uniform(2.0, 3.0))
        curve = np.stack([arc[:, 1], hb - 0.05 + arc[:, 0], np.zeros(len(arc))], axis=1)
        b.tube("strap", curve, tr * 1.3)
        strap_top = hb - 0.05 + reach
    lift_y = strap_top - 0.35 * reach
    zip_w = d * r.uniform(0.15, 0.25)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        body_top = s.has("body") & (s.y > hb - 0.005)
        return {
            "grasp": s.has("strap"),
            "lift": s.has("strap") & (s.y > lift_y),
            "contain": s.has("body") & (s.y > hb - 0.12 * hb),
            "open": body_top & (np.abs(s.z) < zip_w),
        }

    return cores


def _door(b: _Parts, r: np.random.Generator) -> Cores:
    dw, dh, dt = r.uniform(0.8, 1.0), r.uniform(1.9, 2.2), r.uniform(0.04, 0.07)
    b.box("panel", (0, dh / 2, 0), (dw / 2, dh / 2, dt / 2))
    if r.random() < 0.6:  # frame (jambs and head)
        fw = r.uniform(0.04, 0.08)
        fd = dt * r.uniform(1.3, 2.0)
        for sx in (-1, 1):
            b.box("frame", (sx * (dw / 2 + fw / 2), (dh + fw) / 2, 0),
                  (fw / 2, (dh + fw) / 2, fd / 2))
        b.box("frame", (0, dh + fw / 2, 0), (dw / 2, fw / 2, fd / 2))
    if r.random() < 0.4:  # raised decorative panels on both faces
        for sz in (-1, 1):
            for yc in (dh * 0.28, dh * 0.72):
                b.box("panel", (0, yc, sz * dt / 2), (dw * 0.33, dh * 0.18, 0.008))
    hx = dw / 2 - r.uniform(0.07, 0.11)
    hy = r.uniform(0.9, 1.05)
    plate_h = r.uniform(0.1, 0.25)
    lever = r.random() < 0.6
    ll = r.uniform(0.12, 0.17)
    kr = r.uniform(0.038, 0.05)
    for sz in (-1, 1):
        z0 = sz * dt / 2
        b.box("handle.plate", (hx, hy - plate_h * 0.3, z0 + sz * 0.006),
              (0.028, plate_h / 2, 0.006), skip=("-z" if sz > 0 else "+z",))
        b.frustum("handle.grip", (hx, hy, z0), sz * _Z, 0.016, 0.016, 0.06)
        if lever:
            b.box("handle.grip", (hx - ll / 2 + 0.018, hy, z0 + sz * 0.06), (ll / 2, 0.018, 0.018))
        else:
            b.zone("handle.grip", (hx, hy, z0 + sz * (0.06 + kr * 0.7)), kr, -1.0, 1.0)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        near = (s.x > dw / 2 - 0.38 * dw) & (np.abs(s.y - hy) < 0.3)
        return {
            "open": s.has("handle"),
            "push": s.has("panel") & (np.abs(s.z) > dt / 2 - 0.002) & near,
            "pull": s.has("handle.grip"),
        }

    return cores


def _display(b: _Parts, r: np.random.Generator) -> Cores:
    sw = r.uniform(1.2, 1.7)
    sh = sw * r.uniform(0.5, 0.68)
    st = r.uniform(0.03, 0.06)
    y0 = r.uniform(0.15, 0.35)
    yc = y0 + sh / 2
    b.box("screen", (0, yc, 0), (sw / 2, sh / 2, st / 2))
    if r.random() < 0.6:
        b.box("housing", (0, yc, -st / 2 - 0.03), (sw * 0.3, sh * 0.3, 0.03), skip=("+z",))
    nw = r.uniform(0.04, 0.08)
    b.box("stand", (0, (y0 + sh * 0.35) / 2, -st / 2 - 0.07), (nw, (y0 + sh * 0.35) / 2, 0.02))
    if r.random() < 0.5:
        b.box("stand", (0, 0.015, -0.07), (r.uniform(0.2, 0.3), 0.015, r.uniform(0.12, 0.18)))
    else:
        b.disc("stand", (0, 0.02, -0.07), _Y, r.uniform(0.15, 0.22))
        b.disc("stand", (0, 0.0, -0.07), -_Y, 0.2)
    bz = r.uniform(0.02, 0.06)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        inner = (np.abs(s.x) < sw / 2 - bz) & (np.abs(s.y - yc) < sh / 2 - bz)
        return {"display": s.has("screen.+z") & inner}

    return cores


def _laptop(b: _Parts, r: np.random.Generator) -> Cores:
    w = r.uniform(1.2, 1.5)
    d = w * r.uniform(0.62, 0.75)
    bt, lt = r.uniform(0.03, 0.05), r.uniform(0.02, 0.035)
    ang = np.deg2rad(r.uniform(95.0, 125.0))
    b.box("base", (0, bt / 2, 0), (w / 2, bt / 2, d / 2))
    kz = -d * r.uniform(0.05, 0.15)
    b.box("keyboard", (0, bt + 0.003, kz), (w * 0.42, 0.003, d * 0.22), skip=("-y",))
    b.box("touchpad", (0, bt + 0.002, d * 0.32), (w * 0.13, 0.002, d * 0.1), skip=("-y",))
    hinge = np.array([0.0, bt, -d / 2])
    up = np.array([0.0, np.sin(ang), np.cos(ang)])
    nrm = np.array([0.0, -np.cos(ang), np.sin(ang)])  # screen side
    rot = np.stack([_X, up, nrm], axis=1)
    b.box("lid", hinge + up * d / 2 - nrm * lt / 2, (w / 2, d / 2, lt / 2), rot)
    bz = r.uniform(0.03, 0.06)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        along = (s.p - hinge) @ up
        inner = (np.abs(s.x) < w / 2 - bz) & (along > bz) & (along < d - bz)
        return {
            "display": s.has("lid.+z") & inner,
            "press": s.has("keyboard.+y"),
            "open": s.has("lid") & (along > 0.9 * d),
        }

    return cores


def _faucet(b: _Parts, r: np.random.Generator) -> Cores:
    er = r.uniform(0.15, 0.25)
    eh = r.uniform(0.02, 0.05)
    b.frustum("base", (0, 0, 0), _Y, er, er * 0.85, eh)
    b.disc("base", (0, eh, 0), _Y, er * 0.85)
    rb = r.uniform(0.05, 0.08)
    hb = r.uniform(0.3, 0.55)
    b.frustum("body", (0, eh, 0), _Y, rb, rb * r.uniform(0.8, 1.0), hb)
    tr = r.uniform(0.028, 0.042)
    if r.random() < 0.5:  # gooseneck spout
        rs = r.uniform(0.15, 0.25)
        rise = r.uniform(0.1, 0.3)
        th = np.linspace(np.pi, 0.0, 16)
        arc = np.stack([rs + rs * np.cos(th), eh + hb + rise + rs * np.sin(th), 0 * th], axis=1)
        drop = r.uniform(0.05, 0.15)
        curve = np.concatenate([[[0.0, eh + hb - 0.02, 0.0]], arc,
                                [[2 * rs, eh + hb + rise - drop, 0.0]]])
    else:  # straight spout with a slight droop
        ln = r.uniform(0.25, 0.4)
        ys = eh + hb * r.uniform(0.55, 0.8)
        curve = np.array([[0.0, ys, 0.0], [ln * 0.7, ys + 0.01, 0.0], [ln, ys - 0.04, 0.0]])
    b.tube("spout", curve, tr)
    if r.random() < 0.6:  # single lever on top, pointing back and up
        ang = np.deg2rad(r.uniform(10.0, 40.0))
        ll = r.uniform(0.15, 0.25)
        hub_y = eh + hb
        b.frustum("lever", (0, hub_y - 0.02, 0), _Y, rb * 0.8, rb * 0.8, 0.06)
        b.disc("lever", (0, hub_y + 0.04, 0), _Y, rb * 0.8)
        d = np.array([-np.cos(ang), np.sin(ang), 0.0])
        rot = np.stack([d, np.cross(_Z, d), _Z], axis=1)
        b.box("lever", np.array([0, hub_y + 0.05, 0]) + d * ll / 2, (ll / 2, 0.015, 0.02), rot)
    else:  # two knobs on either side
        off = er * r.uniform(1.2, 1.6)
        kr = r.uniform(0.04, 0.06)
        for sz in (-1, 1):
            b.frustum("lever", (0, 0, sz * off), _Y, kr, kr * 0.8, 0.12)
            b.disc("lever", (0, 0.12, sz * off), _Y, kr * 0.8)
            b.box("lever", (0, 0.13, sz * off), (kr * 1.4, 0.012, 0.015))
            b.box("lever", (0, 0.13, sz * off), (0.015, 0.012, kr * 1.4))

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        lever = s.has("lever")
        return {"open": lever, "grasp": lever}

    return cores


def _vase(b: _Parts, r: np.random.Generator) -> Cores:
    h = r.uniform(0.9, 1.3)
    r_base = r.uniform(0.15, 0.3)
    r_belly = r.uniform(0.25, 0.45)
    r_neck = r.uniform(0.08, 0.2)
    r_lip = r_neck * r.uniform(1.0, 1.6)
    y_belly = r.uniform(0.25, 0.5)
    ctrl_y = np.array([0.0, y_belly, 0.78, 1.0]) * h
    ctrl_r = np.array([r_base, r_belly, r_neck, r_lip])
    ys = np.linspace(0.0, h, 15)
    # Smooth profile: monotone cubic-ish blend between control radii (cosine interpolation).
    idx = np.clip(np.searchsorted(ctrl_y, ys, side="right") - 1, 0, len(ctrl_y) - 2)
    f = (ys - ctrl_y[idx]) / (ctrl_y[idx + 1] - ctrl_y[idx])
    f = 0.5 - 0.5 * np.cos(np.pi * f)
    rs = ctrl_r[idx] + (ctrl_r[idx + 1] - ctrl_r[idx]) * f
    t = r.uniform(0.015, 0.03)
    b.revolve("outer", ys, rs)
    b.disc("base", (0, 0, 0), -_Y, r_base)
    b.disc("rim", (0, h, 0), _Y, r_lip, r_lip - t)
    deep = ys >= h * r.uniform(0.55, 0.7)
    yi, ri = ys[deep], rs[deep] - t
    b.revolve("inner", yi, ri, inward=True)
    b.disc("inner", (0, yi[0], 0), _Y, ri[0])

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "contain": s.has("inner"),
            "wrapgrasp": s.has("outer") & (s.y > 0.15 * h) & (s.y < 0.65 * h),
            "pour": s.has("rim") | (s.has("outer", "inner") & (s.y > 0.95 * h)),
        }

    return cores


def _microwave(b: _Parts, r: np.random.Generator) -> Cores:
    w = r.uniform(0.9, 1.2)
    h = w * r.uniform(0.5, 0.65)
    d = w * r.uniform(0.6, 0.8)
    # The door and the control panel cover the whole front, so the body has no front face
    # (hidden surfaces would only add invisible points).
    b.box("body", (0, h / 2, 0), (w / 2, h / 2, d / 2), skip=("+z",))
    pw = w * r.uniform(0.22, 0.3)
    m = 0.03
    dx0, dx1 = -w / 2, w / 2 - pw
    zf = d / 2
    b.box("door", ((dx0 + dx1) / 2, h / 2, zf + 0.01), ((dx1 - dx0) / 2, h / 2, 0.01),
          skip=("-z",))
    hl = (h / 2 - m) * r.uniform(0.5, 0.8)
    hx = dx1 - r.uniform(0.04, 0.07)
    b.box("handle", (hx, h / 2, zf + 0.055), (0.02, hl, 0.02))
    for yy in (h / 2 - hl * 0.8, h / 2 + hl * 0.8):
        b.box("handle", (hx, yy, zf + 0.03), (0.012, 0.012, 0.015))
    px = w / 2 - pw / 2
    b.box("panel", (px, h / 2, zf + 0.004), (pw / 2, h / 2, 0.004), skip=("-z",))
    if r.random() < 0.6:  # button grid
        cols, rows = int(r.integers(2, 4)), int(r.integers(3, 6))
        bw = (pw - 0.08) / cols / 2 * 0.7
        for cx in np.linspace(-1, 1, cols) * (pw / 2 - 0.06) + px:
            for cy in np.linspace(h * 0.35, h * 0.8, rows):
                b.box("panel", (cx, cy, zf + 0.012), (bw, min(bw, 0.02), 0.006), skip=("-z",))
    else:  # two dials
        for cy in (h * 0.65, h * 0.35):
            kr = min(pw * 0.3, 0.07)
            b.frustum("panel", (px, cy, zf + 0.008), _Z, kr, kr * 0.9, 0.04)
            b.disc("panel", (px, cy, zf + 0.048), _Z, kr * 0.9)

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "open": s.has("handle"),
            "contain": s.has("door.+z"),
            "press": s.has("panel") & (s.z > zf + 0.007),
        }

    return cores


def _dishwasher(b: _Parts, r: np.random.Generator) -> Cores:
    w, h, d = r.uniform(0.85, 1.0), r.uniform(1.25, 1.45), r.uniform(0.95, 1.1)
    b.box("body", (0, h / 2, 0), (w / 2, h / 2, d / 2), skip=("+z",))
    kick = r.uniform(0.06, 0.12)
    ctrl = r.uniform(0.1, 0.16)
    zf = d / 2
    door_top = h - ctrl
    b.rect("body.kick", (0, kick / 2, zf), (w / 2, 0, 0), (0, kick / 2, 0))
    b.box("door", (0, (kick + door_top) / 2, zf + 0.015),
          (w / 2, (door_top - kick) / 2, 0.015), skip=("-z",))
    b.box("panel", (0, h - ctrl / 2, zf + 0.005), (w / 2, ctrl / 2, 0.005), skip=("-z",))
    for cx in np.linspace(0.1, 0.4, int(r.integers(2, 5))) * w:
        b.box("panel", (cx, h - ctrl / 2, zf + 0.013), (0.02, 0.012, 0.005), skip=("-z",))
    hy = door_top - r.uniform(0.06, 0.1)
    hw = w * r.uniform(0.25, 0.4)
    if r.random() < 0.6:  # bar handle on standoffs
        b.frustum("handle", (-hw, hy, zf + 0.07), _X, 0.015, 0.015, 2 * hw)
        for sx in (-1, 1):
            b.box("handle", (sx * hw * 0.9, hy, zf + 0.05), (0.012, 0.012, 0.022))
    else:  # flat pull handle
        b.box("handle", (0, hy, zf + 0.045), (hw, 0.025, 0.015))

    def cores(s: _Sampled) -> dict[str, np.ndarray]:
        return {
            "open": s.has("handle") | (s.has("door") & (s.y > door_top - 0.02)
                                       & (np.abs(s.x) < hw)),
            "contain": s.has("door.+z"),
        }

    return cores


_BUILDERS: dict[str, Callable[[_Parts, np.random.Generator], Cores]] = {
    "Mug": _mug, "Bowl": _bowl, "Bottle": _bottle, "Chair": _chair, "Table": _table,
    "Bed": _bed, "Knife": _knife, "Scissors": _scissors, "Bag": _bag, "Door": _door,
    "Display": _display, "Laptop": _laptop, "Faucet": _faucet, "Vase": _vase,
    "Microwave": _microwave, "Dishwasher": _dishwasher,
}


# --------------------------------------------------------------------------- labels


def _soft_label(p: np.ndarray, core: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-(d/sigma)^2/2) of the distance d to the nearest core point, zeroed below 0.01.

    Sigma is widened when needed so that at least _MIN_HIGH of the points score >= 0.5: a
    tiny part (a door handle on a large door) would otherwise get only a handful of positives.
    """
    d2 = np.zeros(len(p))
    rest = ~core
    if rest.any():
        # float32 is ample here (coordinates ~1, sigma ~0.05) and twice as fast
        q, c = p[rest].astype(np.float32), p[core].astype(np.float32)
        # |a-b|^2 = |a|^2 + |b|^2 - 2ab with one matrix product; only non-core rows are needed,
        # so the work is at most (n/2)^2 whatever the core size.
        dq = (np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * (q @ c.T)).min(axis=1)
        d2[rest] = np.maximum(dq + np.einsum("ij,ij->i", q, q), 0.0)
    k = int(np.ceil(_MIN_HIGH * len(p)))
    # label >= 0.5  <=>  d2 <= 2 ln2 sigma^2 (tiny margin against rounding at exactly 0.5)
    d2_k = float(np.partition(d2, k - 1)[k - 1])
    sigma2 = max(sigma * sigma, 1.0001 * d2_k / (2.0 * np.log(2.0)))
    lab = np.exp(-0.5 * d2 / sigma2)
    lab[lab < 0.01] = 0.0
    return np.clip(lab, 0.0, 1.0).astype(np.float32)


def make_shape(object_class: str, rng: np.random.Generator, n_points: int = 2048) -> SynthShape:
    """Sample one random instance of `object_class` (one of SYNTH_CLASSES).

    Deterministic given the state of `rng`.  Labels hold one entry per affordance in
    CLASS_AFFORDANCES[object_class]; each has at least 2.5 % of the points >= 0.5.
    """
    if object_class not in _BUILDERS:
        raise ValueError(f"unknown synthetic class {object_class!r}; "
                         f"choose from {', '.join(SYNTH_CLASSES)}")
    if n_points < 64:
        raise ValueError("n_points must be at least 64")
    parts = _Parts()
    cores_fn = _BUILDERS[object_class](parts, rng)
    s = parts.sample(rng, n_points)
    cores = cores_fn(s)  # evaluated in build coordinates, where the builder's sizes hold

    centre = s.p.mean(axis=0)
    p = s.p - centre
    p *= rng.uniform(0.7, 0.95) / np.abs(p).max()
    nrm = _unit(s.n)

    size = float((p.max(axis=0) - p.min(axis=0)).mean())
    labels: dict[str, np.ndarray] = {}
    for aff in CLASS_AFFORDANCES[object_class]:
        core = cores[aff]
        if not core.any():  # only with very few points; keeps the label defined
            core = np.zeros(n_points, dtype=bool)
            core[int(np.argmax(p[:, 1]))] = True
        sigma = _SIGMA_FRAC[aff] * size * rng.uniform(0.9, 1.1)
        labels[aff] = _soft_label(p, core, sigma)

    p += rng.normal(0.0, _JITTER, p.shape)
    # Shuffle so that point order carries no part structure.
    perm = rng.permutation(n_points)
    return SynthShape(
        object_class=object_class,
        points=p[perm].astype(np.float32),
        normals=nrm[perm].astype(np.float32),
        labels={k: v[perm] for k, v in labels.items()},
    )
