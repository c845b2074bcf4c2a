"""Synthetic "interaction images": a procedural object rendered as shaded point splats with a
simple person / hand drawn at the afforded part, like the photos paired with PIAD / LASO shapes.

The renderer is deliberately crude (no meshes; point splats with a z-buffer, rendered at half
resolution for large splats and upsampled) but keeps the properties a model can learn from:
the object's class-typical silhouette and colour, and a subject whose position marks where the
affordance is.  Everything is vectorised numpy plus PIL drawing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from affcli.data.synth.shapes import SynthShape

Box = tuple[float, float, float, float]

# Realistic photo sizes (height, width).
_SIZES: tuple[tuple[int, int], ...] = (
    (480, 640), (640, 480), (612, 408), (426, 640), (512, 512), (375, 500), (480, 360),
)

_BODY_AFFORDANCES = frozenset({"sit", "lay", "support"})

# Classes whose builders put the usable side at +z; otherwise any azimuth is plausible.
_FRONT_CLASSES = frozenset({
    "Chair", "Table", "Bed", "Door", "Display", "Laptop", "Microwave", "Dishwasher",
})

# Largest real-world dimension in metres: fixes the size of hands and people relative to objects.
_REAL_SIZE: dict[str, float] = {
    "Mug": 0.12, "Bowl": 0.18, "Bottle": 0.3, "Chair": 1.0, "Table": 1.5, "Bed": 2.1,
    "Knife": 0.3, "Scissors": 0.2, "Bag": 0.5, "Door": 2.1, "Display": 0.6, "Laptop": 0.35,
    "Faucet": 0.3, "Vase": 0.35, "Microwave": 0.5, "Dishwasher": 0.85,
}

_PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "Mug": ((235, 235, 228), (190, 40, 40), (40, 80, 160), (230, 190, 60), (60, 130, 80),
            (50, 50, 55)),
    "Bowl": ((240, 238, 230), (225, 210, 180), (70, 110, 170), (190, 100, 60)),
    "Bottle": ((60, 140, 80), (150, 190, 220), (120, 70, 30), (235, 235, 235), (200, 60, 50)),
    "Chair": ((140, 90, 50), (40, 40, 45), (230, 230, 225), (170, 45, 40), (120, 120, 125)),
    "Table": ((175, 125, 75), (110, 70, 40), (235, 235, 230), (45, 45, 50)),
    "Bed": ((220, 210, 190), (120, 140, 180), (150, 150, 155), (160, 110, 70)),
    "Knife": ((175, 178, 185), (140, 145, 150), (60, 60, 65)),
    "Scissors": ((170, 172, 178), (190, 50, 50), (50, 80, 170), (40, 40, 45)),
    "Bag": ((130, 80, 45), (35, 35, 38), (170, 40, 50), (215, 195, 160), (40, 50, 90)),
    "Door": ((238, 236, 230), (150, 100, 60), (120, 125, 130), (70, 110, 80)),
    "Display": ((35, 35, 40), (70, 70, 75), (225, 225, 225)),
    "Laptop": ((190, 192, 196), (70, 72, 78), (30, 30, 34)),
    "Faucet": ((200, 203, 210), (40, 40, 42), (200, 165, 80)),
    "Vase": ((60, 100, 170), (235, 232, 225), (185, 95, 60), (80, 140, 110)),
    "Microwave": ((235, 235, 235), (40, 40, 42), (180, 182, 186)),
    "Dishwasher": ((190, 192, 196), (238, 238, 238), (40, 40, 42)),
}
_DEFAULT_PALETTE = ((160, 160, 165), (120, 90, 60))

_SKIN = ((241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54), (95, 60, 40))
_CLOTH = ((40, 60, 120), (150, 30, 40), (60, 60, 65), (230, 230, 230), (50, 110, 70),
          (200, 150, 60), (110, 70, 140), (90, 120, 160))
_HAIR = ((30, 25, 20), (80, 50, 30), (150, 110, 60), (200, 170, 110), (120, 120, 120))


@dataclass(frozen=True)
class Camera:
    """A look-at camera on a sphere around the origin, y up.

    azimuth 0 puts the camera on +z looking towards -z; elevation > 0 looks down.  `distance`
    None means orthographic.  `scale` is pixels per world unit at the origin's depth and
    (cx, cy) is where the origin lands in the image.
    """

    azimuth: float
    elevation: float
    distance: float | None
    scale: float
    cx: float
    cy: float

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(right, up, towards-camera) unit vectors in world coordinates."""
        ce = np.cos(self.elevation)
        back = np.array([np.sin(self.azimuth) * ce, np.sin(self.elevation),
                         np.cos(self.azimuth) * ce])
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        return right, np.cross(back, right), back


def project_points(points: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [n, 2] (x right, y down) and depth [n] (larger = nearer the camera)."""
    right, up, back = camera.axes()
    p = np.asarray(points, dtype=np.float64)
    x, y, z = p @ right, p @ up, p @ back
    if camera.distance is not None:
        f = camera.distance / (camera.distance - z)  # unit magnification at the origin's depth
        x, y = x * f, y * f
    return np.stack([camera.cx + camera.scale * x, camera.cy - camera.scale * y], axis=1), z


def _pixel_scale(points: np.ndarray, camera: Camera) -> np.ndarray:
    """Pixels per world unit at each point (perspective shrinks far things)."""
    if camera.distance is None:
        return np.full(len(points), camera.scale)
    z = np.asarray(points, dtype=np.float64) @ camera.axes()[2]
    return camera.scale * camera.distance / (camera.distance - z)


@dataclass(frozen=True)
class RenderResult:
    """Everything `render_interaction` computed; useful for tests and debugging."""

    image: Image.Image
    subject_box: Box
    object_box: Box
    camera: Camera
    uv: np.ndarray  # [n, 2] projected points (pixels)
    visible: np.ndarray  # [n] bool: point won at least one pixel of the z-buffer
    part_box: Box  # bbox of projected points with label >= 0.5 for the affordance


# --------------------------------------------------------------------------- drawing helpers


class _Canvas:
    """PIL drawing that also tracks the union bounding box of everything drawn."""

    def __init__(self, img: Image.Image) -> None:
        self.draw = ImageDraw.Draw(img)
        self.box = [np.inf, np.inf, -np.inf, -np.inf]

    def _grow(self, x0: float, y0: float, x1: float, y1: float) -> None:
        b = self.box
        b[0], b[1], b[2], b[3] = min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)

    def ellipse(self, c, rx: float, ry: float, fill, angle: float = 0.0) -> None:
        t = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
        ca, sa = np.cos(angle), np.sin(angle)
        ex, ey = rx * np.cos(t), ry * np.sin(t)
        pts = np.stack([c[0] + ca * ex - sa * ey, c[1] + sa * ex + ca * ey], axis=1)
        self.polygon(pts, fill)

    def polygon(self, pts: np.ndarray, fill) -> None:
        pts = np.asarray(pts, dtype=np.float64)
        self.draw.polygon([(float(x), float(y)) for x, y in pts], fill=fill)
        self._grow(*pts.min(axis=0), *pts.max(axis=0))

    def limb(self, p0, p1, width: float, fill) -> None:
        """Thick segment with round caps."""
        p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
        w = max(float(width), 1.0)
        d = p1 - p0
        length = float(np.hypot(*d))
        if length > 1e-6:
            n = np.array([-d[1], d[0]]) / length * (w / 2)
            self.polygon(np.stack([p0 + n, p1 + n, p1 - n, p0 - n]), fill)
        for p in (p0, p1):
            self.ellipse(p, w / 2, w / 2, fill)


def _unit2(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    return v / n if n > 1e-9 else np.array([0.0, -1.0])


def _rot2(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _shade(rgb, k: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * k, 0, 255)) for c in rgb)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


# --------------------------------------------------------------------------- scene parts


def _background(h: int, w: int, rng: np.random.Generator, floor_y: float) -> np.ndarray:
    """Float RGB background: a wall/floor split or a vertical gradient, with blotchy noise."""
    yy = np.arange(h, dtype=np.float32)[:, None, None]

    def muted(lo: float, hi: float) -> np.ndarray:  # greyish with a slight tint, like rooms
        return rng.uniform(lo, hi) + rng.normal(0.0, 14.0, 3)

    if rng.random() < 0.6:
        wall, floor = muted(150, 235), muted(70, 185)
        if rng.random() < 0.4:  # wooden floor
            floor = np.array([1.0, 0.75, 0.5]) * rng.uniform(110, 190)
        horizon = float(np.clip(floor_y, 0.15 * h, 0.95 * h))
        t = np.clip((yy - horizon) / 2.0 + 0.5, 0.0, 1.0)  # 2-px soft edge at the horizon
        top = wall * (1.0 - 0.12 * yy / h)
        bottom = floor * (0.85 + 0.25 * (yy - horizon) / h)
        img = top * (1.0 - t) + bottom * t
    else:
        c0, c1 = muted(130, 240), muted(70, 210)
        t = yy / max(h - 1, 1)
        img = c0 * (1.0 - t) + c1 * t
    # Low-frequency noise: a coarse grid upsampled bilinearly (cheap, photo-like blotches).
    cell = 24
    coarse = rng.normal(0.0, rng.uniform(2.0, 5.0), (h // cell + 2, w // cell + 2))
    small = Image.fromarray(np.clip(coarse + 128.0, 0, 255).astype(np.uint8), "L")
    noise = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.float32) - 128.0
    out = np.empty((h, w, 3), dtype=np.float32)
    out[:] = img
    out += noise[:, :, None]
    return out


def _base_colour(cls: str, rng: np.random.Generator) -> np.ndarray:
    rgb = np.array(_pick(rng, _PALETTES.get(cls, _DEFAULT_PALETTE)), dtype=np.float64)
    return np.clip(rgb * rng.uniform(0.9, 1.1, 3), 0, 255)


def _splat(hw: tuple[int, int], uv: np.ndarray, depth: np.ndarray, colours: np.ndarray,
           radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disc splats with a z-buffer: (colour layer [h, w, 3], coverage mask [h, w], visible [n]).

    `visible` marks the points that own at least one pixel.
    """
    h, w = hw
    img = np.zeros((h, w, 3), dtype=np.float32)
    n = len(uv)
    order = np.argsort(-depth, kind="stable")  # nearest first
    rank = np.empty(n, dtype=np.int32)
    rank[order] = np.arange(n, dtype=np.int32)
    ui = np.rint(uv[:, 0]).astype(np.int64)
    vi = np.rint(uv[:, 1]).astype(np.int64)
    rq = np.round(radii * 2.0) / 2.0  # a few radius classes, each splatted with one stencil
    flats, vals = [], []
    for r in np.unique(rq):
        sel = np.flatnonzero(rq == r)
        ri = int(np.ceil(r))
        dy, dx = np.mgrid[-ri:ri + 1, -ri:ri + 1]
        disc = dx * dx + dy * dy <= r * r + 0.25
        px = ui[sel, None] + dx[disc][None, :]
        py = vi[sel, None] + dy[disc][None, :]
        ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        flats.append((py * w + px)[ok])
        vals.append(np.broadcast_to(rank[sel, None], px.shape)[ok])
    zbuf = np.full(h * w, n, dtype=np.int32)
    np.minimum.at(zbuf, np.concatenate(flats), np.concatenate(vals))  # nearest point wins
    hit = np.flatnonzero(zbuf < n)
    owner = order[zbuf[hit]]
    hy, hx = np.divmod(hit, w)
    img[hy, hx] = colours[owner]
    # Darken the silhouette and large depth discontinuities so the shape reads as solid.
    d_img = np.full((h, w), np.nan, dtype=np.float32)
    d_img[hy, hx] = depth[owner]
    valid = ~np.isnan(d_img)
    edge = np.zeros((h, w), dtype=bool)
    eh = (np.abs(d_img[:, 1:] - d_img[:, :-1]) > 0.3) | (valid[:, 1:] != valid[:, :-1])
    edge[:, 1:] |= eh
    edge[:, :-1] |= eh
    ev = (np.abs(d_img[1:, :] - d_img[:-1, :]) > 0.3) | (valid[1:, :] != valid[:-1, :])
    edge[1:, :] |= ev
    edge[:-1, :] |= ev
    img[edge & valid] *= 0.75
    visible = np.zeros(n, dtype=bool)
    visible[owner] = True
    return img, valid, visible


def _composite(img: np.ndarray, layer: np.ndarray, mask: np.ndarray) -> None:
    """Soften splat boundaries (mask-normalised box blur), upsample to `img` and blend in place.

    The splat layer is rendered at reduced resolution: that is faster and the bilinear
    upsampling doubles as anti-aliasing of the silhouette.
    """
    h, w = img.shape[:2]
    a = mask.astype(np.float32)
    pre = layer * a[:, :, None]
    pre_img = Image.fromarray(np.clip(pre, 0, 255).astype(np.uint8), "RGB")
    a_img = Image.fromarray((a * 255).astype(np.uint8), "L")
    pre_b = np.asarray(pre_img.filter(ImageFilter.BoxBlur(1)), dtype=np.float32)
    a_b = np.asarray(a_img.filter(ImageFilter.BoxBlur(1)), dtype=np.float32) / 255.0
    # Keep the silhouette crisp: blurred colour inside, original coverage as alpha.
    col = np.where(a_b[:, :, None] > 1e-3, pre_b / np.maximum(a_b, 1e-3)[:, :, None], 0.0)
    pre = np.clip(col * a[:, :, None], 0, 255).astype(np.uint8)
    up = np.asarray(Image.fromarray(pre, "RGB").resize((w, h), Image.BILINEAR), np.float32)
    alpha = np.asarray(Image.fromarray((a * 255).astype(np.uint8), "L")
                       .resize((w, h), Image.BILINEAR), np.float32) / 255.0
    img *= 1.0 - alpha[:, :, None]
    img += up


def _local_spacing(points: np.ndarray, cell: float = 0.1) -> np.ndarray:
    """Per-point distance between neighbouring surface samples (world units).

    Counts the samples in the 3x3x3 block of grid cells around each point; a surface crossing
    the block covers about (3 * cell)^2 of area, so spacing = 3 * cell / sqrt(count).  Sparse
    big faces thus get big splats and dense small parts small ones, at O(n log n) cost.
    """
    k = np.floor(points.astype(np.float64) / cell).astype(np.int64) + 512
    code = (k[:, 0] * 1024 + k[:, 1]) * 1024 + k[:, 2]
    uniq, inv, counts = np.unique(code, return_inverse=True, return_counts=True)
    total = np.zeros(len(uniq), dtype=np.int64)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                nb = uniq + (dx * 1024 + dy) * 1024 + dz
                j = np.minimum(np.searchsorted(uniq, nb), len(uniq) - 1)
                total += np.where(uniq[j] == nb, counts[j], 0)
    return (3.0 * cell / np.sqrt(total))[inv.reshape(-1)]


def _choose_camera(shape: SynthShape, high: np.ndarray, rng: np.random.Generator,
                   hw: tuple[int, int]) -> Camera:
    p, nrm = shape.points.astype(np.float64), shape.normals.astype(np.float64)
    mean_n = nrm[high].mean(axis=0)
    offset = p[high].mean(axis=0) - p.mean(axis=0)
    spread = float(np.ptp(p, axis=0).mean())
    # Face the afforded part: along its mean normal, else from the side it sticks out of.
    if np.hypot(mean_n[0], mean_n[2]) > 0.3:
        az = np.arctan2(mean_n[0], mean_n[2]) + rng.uniform(-0.9, 0.9)
    elif np.hypot(offset[0], offset[2]) > 0.15 * spread:
        side = rng.choice([-1.0, 1.0])
        az = np.arctan2(offset[0], offset[2]) + side * rng.uniform(0.3, 1.3)
    elif shape.object_class in _FRONT_CLASSES:
        az = rng.uniform(-1.0, 1.0)
    else:
        az = rng.uniform(-np.pi, np.pi)
    el = np.deg2rad(rng.uniform(10.0, 35.0))
    dist = rng.uniform(2.6, 4.2) if rng.random() < 0.7 else None
    probe = Camera(float(az), float(el), dist, 1.0, 0.0, 0.0)
    uv, _ = project_points(p, probe)
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    ext = np.maximum(hi - lo, 1e-6)
    h, w = hw
    scale = rng.uniform(0.38, 0.68) * min(w / ext[0], h / ext[1])
    size_px = ext * scale
    slack = np.array([w, h]) - size_px
    centre = np.array([w, h]) / 2 + rng.uniform(-0.35, 0.35, 2) * slack
    mid = (lo + hi) / 2
    return Camera(float(az), float(el), dist, float(scale),
                  float(centre[0] - scale * mid[0]), float(centre[1] - scale * mid[1]))


def _shade_points(shape: SynthShape, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    right, up, back = cam.axes()
    nrm = shape.normals.astype(np.float64)
    nrm = np.where((nrm @ back)[:, None] < 0, -nrm, nrm)  # two-sided: inner walls get lit too
    light = rng.uniform(-0.7, 0.7) * right + rng.uniform(0.6, 1.0) * up + 0.7 * back
    light /= np.linalg.norm(light)
    lam = np.clip(nrm @ light, 0.0, 1.0)
    half = light + back
    half /= np.linalg.norm(half)
    spec = np.clip(nrm @ half, 0.0, 1.0) ** 16 * rng.uniform(0.05, 0.2)
    base = _base_colour(shape.object_class, rng)
    y = shape.points[:, 1].astype(np.float64)
    tint = 1.0 + 0.06 * (y - y.mean())  # faint vertical variation so flat parts are not uniform
    col = base[None, :] * ((0.35 + 0.65 * lam) * tint)[:, None] + 255.0 * spec[:, None]
    return np.clip(col, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- subjects


@dataclass
class _People:
    skin: tuple[int, int, int]
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_sleeves: bool


def _draw_arm(cv: _Canvas, target: np.ndarray, out: np.ndarray, rp: float, ppl: _People,
              rng: np.random.Generator) -> None:
    """An arm reaching in along -out with the palm centred on `target`."""
    out = _unit2(out)
    bend = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.7)
    wrist = target + out * rp * 1.0
    elbow = wrist + _rot2(out, bend) * rp * 5.5
    shoulder = elbow + _rot2(out, -0.4 * bend) * rp * 6.0
    cv.limb(shoulder, elbow, rp * 1.75, ppl.shirt)
    cv.limb(elbow, wrist, rp * 1.35, ppl.shirt if ppl.long_sleeves else ppl.skin)
    if ppl.long_sleeves:
        cv.limb(wrist + out * rp * 0.9, wrist + out * rp * 0.3, rp * 1.4, _shade(ppl.shirt, 0.8))
    ang = float(np.arctan2(out[1], out[0]))
    perp = np.array([-out[1], out[0]])
    dark = _shade(ppl.skin, 0.85)
    cv.ellipse(target, rp * 1.05, rp * 0.95, ppl.skin, ang)
    # Fingers wrap over the part (towards -out), thumb on one side.
    curl = rng.uniform(-0.3, 0.3)
    for k in range(4):
        base = target - out * rp * 0.55 + perp * (k - 1.5) * rp * 0.45
        tip = base + _rot2(-out, curl) * rp * rng.uniform(0.75, 1.0)
        cv.limb(base, tip, rp * 0.36, dark if k % 2 else ppl.skin)
    side = rng.choice([-1.0, 1.0])
    t0 = target + perp * side * rp * 0.75
    cv.limb(t0, t0 + _unit2(-out + perp * side) * rp * 0.8, rp * 0.4, dark)


def _figure(cv: _Canvas, joints: dict[str, np.ndarray], cam: Camera, unit: float,
            ppl: _People) -> None:
    """Draw a 3D stick-and-blob person (joints in world units; `unit` = world units per metre)."""
    names = list(joints)
    pts3 = np.stack([joints[k] for k in names])
    uv, depth = project_points(pts3, cam)
    px = _pixel_scale(pts3, cam) * unit  # pixels per metre at each joint
    j = {k: (uv[i], depth[i], px[i]) for i, k in enumerate(names)}
    limbs = [  # (a, b, width in metres, colour)
        ("hip_l", "knee_l", 0.16, ppl.pants), ("knee_l", "foot_l", 0.12, ppl.pants),
        ("hip_r", "knee_r", 0.16, ppl.pants), ("knee_r", "foot_r", 0.12, ppl.pants),
        ("sh_l", "elbow_l", 0.1, ppl.shirt), ("elbow_l", "hand_l", 0.085,
                                              ppl.shirt if ppl.long_sleeves else ppl.skin),
        ("sh_r", "elbow_r", 0.1, ppl.shirt), ("elbow_r", "hand_r", 0.085,
                                              ppl.shirt if ppl.long_sleeves else ppl.skin),
    ]
    items = []
    for a, b, wd, col in limbs:
        items.append(((j[a][1] + j[b][1]) / 2, "limb", (a, b, wd, col)))
    for k in ("hand_l", "hand_r", "foot_l", "foot_r"):
        items.append((j[k][1] + 1e-3, "end", k))
    torso_d = np.mean([j[k][1] for k in ("sh_l", "sh_r", "hip_l", "hip_r")])
    items.append((torso_d, "torso", None))
    items.append((j["head"][1], "head", None))
    items.sort(key=lambda it: it[0])  # painter's order: far first
    for _, kind, data in items:
        if kind == "limb":
            a, b, wd, col = data
            s = (j[a][2] + j[b][2]) / 2
            cv.limb(j[a][0], j[b][0], wd * s, col)
        elif kind == "end":  # hands and shoes, drawn over the limb they end
            c, _, s = j[data]
            if data.startswith("hand"):
                cv.ellipse(c, 0.05 * s, 0.05 * s, ppl.skin)
            else:
                cv.ellipse(c, 0.07 * s, 0.05 * s, (35, 35, 38))
        elif kind == "torso":
            quad = np.stack([j["sh_l"][0], j["sh_r"][0], j["hip_r"][0], j["hip_l"][0]])
            cv.polygon(quad, ppl.shirt)
            s = j["sh_l"][2]
            cv.limb(j["sh_l"][0], j["sh_r"][0], 0.12 * s, ppl.shirt)
            cv.limb(j["hip_l"][0], j["hip_r"][0], 0.16 * s, ppl.pants)
            cv.limb((j["sh_l"][0] + j["sh_r"][0]) / 2, (j["hip_l"][0] + j["hip_r"][0]) / 2,
                    0.3 * s, ppl.shirt)
        else:
            c, _, s = j["head"]
            cv.limb(j["neck"][0], c, 0.09 * s, ppl.skin)
            cv.ellipse(c, 0.1 * s, 0.12 * s, ppl.skin)
            cv.ellipse(c - np.array([0.0, 0.05 * s]), 0.1 * s, 0.07 * s, ppl.hair)


def _person_joints(pose: str, hips: np.ndarray, front: np.ndarray, u: float, floor: float,
                   lean: float, hands_at: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Joint positions in world units; `front` is the horizontal facing (or head) direction.

    `lean` tilts the torso backwards (radians; negative bends forwards).
    """
    yv = np.array([0.0, 1.0, 0.0])
    f = front / np.linalg.norm(front)
    s = np.cross(yv, f)
    j: dict[str, np.ndarray] = {}
    if pose == "lay":
        # f points from pelvis to head; the body lies flat just above `hips`.
        sh = hips + f * 0.5 * u
        j["head"] = sh + f * 0.24 * u + yv * 0.05 * u
        j["neck"] = sh + f * 0.08 * u
        for side, sg in (("l", 1.0), ("r", -1.0)):
            j[f"hip_{side}"] = hips + s * sg * 0.1 * u
            j[f"knee_{side}"] = j[f"hip_{side}"] - f * 0.45 * u
            j[f"foot_{side}"] = j[f"knee_{side}"] - f * 0.42 * u
            j[f"sh_{side}"] = sh + s * sg * 0.19 * u
            j[f"elbow_{side}"] = j[f"sh_{side}"] + s * sg * 0.06 * u - f * 0.28 * u
            j[f"hand_{side}"] = j[f"elbow_{side}"] - f * 0.25 * u
        return j
    torso = yv * np.cos(lean) - f * np.sin(lean)
    sh = hips + torso * 0.5 * u
    j["neck"] = sh + torso * 0.07 * u
    j["head"] = sh + torso * 0.24 * u
    for side, sg in (("l", 1.0), ("r", -1.0)):
        hip = hips + s * sg * 0.1 * u
        j[f"hip_{side}"] = hip
        if pose == "sit":
            knee = hip + f * 0.45 * u + yv * 0.03 * u
            foot = knee - yv * 0.42 * u + f * 0.05 * u
            foot[1] = max(foot[1], floor)
        else:  # standing
            foot = hip.copy()
            foot[1] = floor
            foot = foot - f * 0.1 * u
            knee = (hip + foot) / 2 + f * 0.03 * u
        j[f"knee_{side}"] = knee
        j[f"foot_{side}"] = foot
        shoulder = sh + s * sg * 0.19 * u
        j[f"sh_{side}"] = shoulder
        if hands_at is not None:
            hand = hands_at + s * sg * 0.22 * u
            mid = (shoulder + hand) / 2
            elbow = mid + s * sg * 0.08 * u - yv * 0.05 * u
        else:
            elbow = shoulder - yv * 0.26 * u + f * 0.06 * u + s * sg * 0.03 * u
            hand = elbow + f * 0.24 * u + yv * 0.02 * u
        j[f"elbow_{side}"] = elbow
        j[f"hand_{side}"] = hand
    return j


def _anchor3(points: np.ndarray, high: np.ndarray, depth: np.ndarray, spread: float) -> np.ndarray:
    """A point on the afforded part to attach the subject to (3D)."""
    hp, hd = points[high], depth[high]
    c = hp.mean(axis=0)
    if np.min(np.linalg.norm(hp - c, axis=1)) > 0.08 * spread:
        # Part made of separate pieces (e.g. both sides of a bed): use the camera-side piece.
        near = hd >= np.quantile(hd, 0.6)
        c = hp[near].mean(axis=0)
    return hp[np.argmin(np.linalg.norm(hp - c, axis=1))]


def _draw_body(cv: _Canvas, shape: SynthShape, aff: str, high: np.ndarray, cam: Camera,
               depth: np.ndarray, rng: np.random.Generator, ppl: _People) -> None:
    p = shape.points.astype(np.float64)
    spread = float(np.ptp(p, axis=0).max())
    u = spread / _REAL_SIZE.get(shape.object_class, spread)  # world units per metre
    floor = float(p[:, 1].min())
    anchor = _anchor3(p, high, depth, spread)
    right, _, back = cam.axes()
    cam_h = np.array([back[0], 0.0, back[2]])
    cam_h /= max(np.linalg.norm(cam_h), 1e-9)
    centroid = p.mean(axis=0)
    yv = np.array([0.0, 1.0, 0.0])
    labels = shape.labels
    if aff == "lay" or (aff == "support" and "lay" in labels):
        hp = p[high][:, [0, 2]]
        hp = hp - hp.mean(axis=0)
        _, _, vt = np.linalg.svd(hp, full_matrices=False)
        axis = np.array([vt[0, 0], 0.0, vt[0, 1]])
        head_end = -1.0 if shape.object_class == "Bed" else rng.choice([-1.0, 1.0])
        axis *= head_end if axis[2] > 0 else -head_end
        if aff == "support":
            anchor = _anchor3(p, labels["lay"] >= 0.5, depth, spread)
        hips = anchor + yv * 0.1 * u - axis * 0.15 * u
        joints = _person_joints("lay", hips, axis, u, floor, 0.0)
    elif aff == "sit" or (aff == "support" and "sit" in labels):
        seat = anchor if aff == "sit" else _anchor3(p, labels["sit"] >= 0.5, depth, spread)
        off = seat - centroid
        off[1] = 0.0
        if shape.object_class in _FRONT_CLASSES and shape.object_class != "Bed":
            front = np.array([0.0, 0.0, 1.0])
        elif np.linalg.norm(off) > 0.1 * spread:
            front = off / np.linalg.norm(off)
        else:
            front = cam_h
        lean = rng.uniform(0.1, 0.3)
        if aff == "support":  # lean back until the torso meets the backrest
            d = anchor + yv * 0.1 * u - seat
            lean = float(np.clip(np.arctan2(-(d @ front), max(d[1], 1e-6)), 0.05, 0.6))
        hips = seat + yv * 0.05 * u
        joints = _person_joints("sit", hips, front, u, floor, lean)
    else:  # stand at the camera's left or right of the part, leaning with hands on it
        side = right * rng.choice([-1.0, 1.0])
        side[1] = 0.0
        side /= max(np.linalg.norm(side), 1e-9)
        reach = float(np.max((p[high] - anchor) @ side))
        stand = anchor + side * (reach + 0.28 * u)
        hips = np.array([stand[0], floor + 0.95 * u, stand[2]])
        # negative lean = bending forward over the part
        joints = _person_joints("stand", hips, -side, u, floor, -rng.uniform(0.25, 0.5),
                                hands_at=anchor + side * max(reach - 0.12 * u, 0.0))
    _figure(cv, joints, cam, u, ppl)


def _draw_viewer(cv: _Canvas, part_box: Box, img_hw: tuple[int, int], px_per_m: float,
                 rng: np.random.Generator, ppl: _People) -> None:
    """Back view of a person's head and shoulders in front of a screen."""
    x1, y1, x2, y2 = part_box
    w = x2 - x1
    hr = float(np.clip(0.11 * px_per_m * 1.3, 0.07 * w + 4, 0.22 * w + 6))
    cx = rng.uniform(x1 + 0.25 * w, x2 - 0.25 * w) if w > 4 else (x1 + x2) / 2
    cy = y2 - rng.uniform(0.05, 0.3) * (y2 - y1)
    c = np.array([cx, cy])
    torso_top = cy + 1.1 * hr
    cv.polygon(np.array([[cx - 2.2 * hr, img_hw[0] + hr], [cx - 2.0 * hr, torso_top + 0.8 * hr],
                         [cx - 1.4 * hr, torso_top], [cx + 1.4 * hr, torso_top],
                         [cx + 2.0 * hr, torso_top + 0.8 * hr],
                         [cx + 2.2 * hr, img_hw[0] + hr]]), ppl.shirt)
    cv.limb(c + [0, 0.6 * hr], c + [0, 1.3 * hr], 0.8 * hr, _shade(ppl.skin, 0.9))
    for sg in (-1, 1):
        cv.ellipse(c + [sg * 0.95 * hr, 0.1 * hr], 0.22 * hr, 0.3 * hr, ppl.skin)
    cv.ellipse(c, hr, 1.15 * hr, ppl.hair)


# --------------------------------------------------------------------------- entry points


def render_interaction_info(shape: SynthShape, affordance: str, rng: np.random.Generator,
                            size: tuple[int, int] | None = None) -> RenderResult:
    """Like `render_interaction`, but also returns the camera and projection details."""
    if affordance not in shape.labels:
        raise ValueError(f"{shape.object_class} has no affordance {affordance!r}; "
                         f"it has {', '.join(shape.labels)}")
    h, w = _pick(rng, _SIZES) if size is None else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ValueError("image size must be at least 32x32")
    lab = shape.labels[affordance]
    high = lab >= 0.5
    if not high.any():  # labels always have positives, but stay total
        high = lab >= lab.max()

    cam = _choose_camera(shape, high, rng, (h, w))
    uv, depth = project_points(shape.points, cam)
    lo, hi = uv.min(axis=0), uv.max(axis=0)

    img = _background(h, w, rng, floor_y=hi[1] - rng.uniform(0.15, 0.5) * (hi[1] - lo[1]))
    if rng.random() < 0.7:  # contact shadow under the object
        yy, xx = np.ogrid[:h, :w]
        cxs, cys = (lo[0] + hi[0]) / 2, hi[1]
        rx, ry = 0.6 * (hi[0] - lo[0]) + 1, 0.08 * (hi[1] - lo[1]) + 1
        r2 = ((xx - cxs) / rx) ** 2 + ((yy - cys) / ry) ** 2
        img *= (1.0 - 0.35 * np.clip(1.0 - r2, 0.0, 1.0))[:, :, None]
    colours = _shade_points(shape, cam, rng)
    # Splat size from the sample spacing; surfaces seen at a grazing angle project denser, so
    # their splats shrink (keeps silhouettes from bulging out).
    facing = np.abs(shape.normals.astype(np.float64) @ cam.axes()[2])
    radius = 1.4 * _local_spacing(shape.points) * _pixel_scale(shape.points, cam)
    radii = np.clip(radius * np.sqrt(np.clip(facing, 0.3, 1.0)), 1.0, 40.0)
    ds = 2 if np.median(radii) > 3.0 else 1  # render big splats at half resolution
    low = (-(-h // ds), -(-w // ds))
    layer, mask, visible = _splat(low, (uv + 0.5) / ds - 0.5, depth, colours, radii / ds)
    _composite(img, layer, mask)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")

    part_uv = uv[high]
    part_box = (*part_uv.min(axis=0), *part_uv.max(axis=0))
    ppl = _People(skin=_pick(rng, _SKIN), shirt=_pick(rng, _CLOTH), pants=_pick(rng, _CLOTH),
                  hair=_pick(rng, _HAIR), long_sleeves=bool(rng.random() < 0.5))
    cv = _Canvas(pil)
    spread = float(np.ptp(shape.points, axis=0).max())
    px_per_m = cam.scale * spread / _REAL_SIZE.get(shape.object_class, spread)
    obj_px = float(max(hi - lo))
    rp = float(np.clip(0.05 * px_per_m, max(6.0, 0.02 * min(h, w)), 0.16 * obj_px + 6.0))

    vis_high = high & visible
    sel = vis_high if vis_high.any() else high
    c2 = uv[sel].mean(axis=0)
    target = uv[sel][np.argmin(np.linalg.norm(uv[sel] - c2, axis=1))]
    if affordance in _BODY_AFFORDANCES:
        _draw_body(cv, shape, affordance, high, cam, depth, rng, ppl)
    elif affordance == "display":
        _draw_viewer(cv, part_box, (h, w), px_per_m, rng, ppl)
    else:
        out = _arm_direction(shape, high, cam, target, uv, rp, (h, w), rng)
        _draw_arm(cv, target, out, rp, ppl, rng)
    if not _overlaps(_clip_box(cv.box, w, h), part_box):
        # Safety net (e.g. a figure projected off the part): put a hand on the part.
        _draw_arm(cv, target, target - (lo + hi) / 2, rp, ppl, rng)

    return RenderResult(
        image=pil,
        subject_box=_clip_box(cv.box, w, h),
        object_box=_clip_box([lo[0], lo[1], hi[0], hi[1]], w, h),
        camera=cam,
        uv=uv.astype(np.float32),
        visible=visible,
        part_box=tuple(float(v) for v in part_box),
    )


def render_interaction(shape: SynthShape, affordance: str, rng: np.random.Generator,
                       size: tuple[int, int] | None = None) -> tuple[Image.Image, Box, Box]:
    """Render `shape` with a person/hand interacting at `affordance`.

    Returns (RGB image, subject_box, object_box); boxes are (x1, y1, x2, y2) in pixels inside
    the image.  `size` is (height, width); None picks a common photo size with `rng`.
    """
    r = render_interaction_info(shape, affordance, rng, size)
    return r.image, r.subject_box, r.object_box


def _arm_direction(shape: SynthShape, high: np.ndarray, cam: Camera, target: np.ndarray,
                   uv: np.ndarray, rp: float, hw: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Image direction from the hand towards the shoulder.

    Prefers leaving the part along its surface normal and away from the object, but mostly
    avoids directions where the arm would cover the object (people reach from the free side).
    """
    p = shape.points[high].astype(np.float64)
    c3 = p.mean(axis=0)
    nrm = shape.normals[high].astype(np.float64).mean(axis=0)
    ends, _ = project_points(np.stack([c3, c3 + 0.3 * nrm]), cam)
    along_normal = ends[1] - ends[0]
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    pref = _unit2(target - (lo + hi) / 2) * 0.5
    if np.hypot(*along_normal) > 3.0:
        pref = pref + _unit2(along_normal)
    pref = _unit2(pref) if np.hypot(*pref) > 0.2 else np.array([0.0, -1.0])

    h, w = hw
    cell = max(rp * 0.8, 3.0)
    gx, gy = int(w // cell) + 1, int(h // cell) + 1
    occ = np.zeros((gy, gx), dtype=bool)
    occ[(uv[:, 1] // cell).astype(int).clip(0, gy - 1),
        (uv[:, 0] // cell).astype(int).clip(0, gx - 1)] = True
    ang = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    dirs = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    steps = np.linspace(2.0, 11.0, 10) * rp
    pts = target + dirs[:, None, :] * steps[None, :, None]
    inside = (pts[..., 0] >= 0) & (pts[..., 0] < w) & (pts[..., 1] >= 0) & (pts[..., 1] < h)
    cx = (pts[..., 0] // cell).astype(int).clip(0, gx - 1)
    cy = (pts[..., 1] // cell).astype(int).clip(0, gy - 1)
    covered = (occ[cy, cx] & inside).mean(axis=1)
    cost = (covered + 0.35 * (1.0 - dirs @ pref) + 0.15 * np.clip(dirs[:, 1], 0.0, None)
            + rng.uniform(0.0, 0.12, len(dirs)))
    return _rot2(dirs[int(np.argmin(cost))], rng.uniform(-0.1, 0.1))


def _clip_box(b, w: int, h: int) -> Box:
    x1 = float(np.clip(b[0], 0, w - 1))
    y1 = float(np.clip(b[1], 0, h - 1))
    x2 = float(np.clip(b[2], x1 + 1, w))
    y2 = float(np.clip(b[3], y1 + 1, h))
    return x1, y1, x2, y2


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]
