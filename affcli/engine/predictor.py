"""Predictions on users' own shape files: the engine of `affcli predict`.

A shape file (any format `pointio.read_shape` reads) becomes a cloud of the size the model was
trained on (farthest point sampling when it has more points, sampling with replacement when
it has fewer), normalised as in training, scored in batches, and the scores are carried back
to every original point by 3-NN inverse-distance interpolation. Each shape is written as a
scored PLY, a NumPy array of its scores and, optionally, a PNG.

Errors in one file never stop the others: each result carries either scores or the AffError
that made its file unusable.

    from affcli.engine.predictor import Conditioning, OutputWriter, Predictor
    pred = Predictor.load("runs/pointrefer/seen-1", Conditioning(question="Where to grasp?"))
    for result in pred.run(["mug.ply", "cup.obj"], OutputWriter("out/")):
        print(result.summary())
    scores = pred.predict_points(points)  # an [M, 3] array in memory -> [M] scores
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affcli.errors import AffError

RUNS_ROOT = Path("runs")
RESAMPLE_SEED = 0  # fixed: the same file gives the same cloud, hence the same scores

# the conditioning options each model takes, as the command line spells them
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "pointrefer": ("--question",),
    "iagnet": ("--image", "--boxes", "--subject-box", "--object-box"),
    "lmaffordance3d": ("--image", "--instruction"),
}
TRAIN_HINTS = {
    "pointrefer": "affcli train pointrefer --data data/laso_seen.h5",
    "iagnet": "affcli train iagnet --data data/piad_seen.h5",
    "lmaffordance3d": "affcli train lmaffordance3d --data data/agpil_seen.h5",
}


# ---------------------------------------------------------------------------------------------
# what the model is conditioned on


@dataclass
class Conditioning:
    """The non-geometric inputs, the same for every shape of a run."""

    question: str | None = None  # PointRefer
    instruction: str | None = None  # LMAffordance3D
    image: Path | None = None  # IAGNet, LMAffordance3D
    boxes: Path | None = None  # IAGNet: LabelMe JSON with `subject` / `object` rectangles
    subject_box: Sequence[float] | None = None  # IAGNet: x1, y1, x2, y2 in image pixels
    object_box: Sequence[float] | None = None

    def given(self) -> list[str]:
        """The options given, as the command line spells them."""
        pairs = (("--question", self.question), ("--instruction", self.instruction),
                 ("--image", self.image), ("--boxes", self.boxes),
                 ("--subject-box", self.subject_box), ("--object-box", self.object_box))
        return [name for name, value in pairs if value is not None]

    def implied_model(self) -> str:
        """The model type these options are for (to find a run when no model is named)."""
        given = set(self.given())
        wants = [m for m, key in (("pointrefer", {"--question"}),
                                  ("iagnet", {"--boxes", "--subject-box", "--object-box"}),
                                  ("lmaffordance3d", {"--instruction"})) if given & key]
        if len(wants) == 1:
            return wants[0]
        if len(wants) > 1:
            raise AffError("predict", f"{', '.join(sorted(given))} mix the inputs of different "
                           f"models ({', '.join(wants)}); give one model's options, or --model")
        raise AffError("predict", "nothing says which model to run: give --question "
                       "(PointRefer), --image with --boxes or --object-box (IAGNet), or --image "
                       "with --instruction (LMAffordance3D), or --model")

    def check_for(self, model_type: str) -> None:
        """AffError naming the first missing option, then the first one this model ignores."""
        if model_type == "pointrefer" and not (self.question or "").strip():
            raise AffError("--question", "a pointrefer model needs a question, e.g. --question "
                           "'Where would you grasp this mug?'")
        if model_type in ("iagnet", "lmaffordance3d") and self.image is None:
            raise AffError("--image", f"an {model_type} model needs an interaction image "
                           "(--image IMG.jpg)")
        if model_type == "iagnet" and self.boxes is None and self.object_box is None:
            raise AffError("--boxes", "an iagnet model needs the image's boxes: --boxes "
                           "BOXES.json (LabelMe) or --object-box x1,y1,x2,y2 [--subject-box ...]")
        if model_type == "lmaffordance3d" and not (self.instruction or "").strip():
            raise AffError("--instruction", "an lmaffordance3d model needs an instruction, e.g. "
                           "--instruction 'Pick up the mug by its handle.'")
        used = MODEL_OPTIONS.get(model_type, ())
        for name in self.given():
            if name not in used:
                raise AffError(name, f"not used by {model_type} models (they take "
                               f"{', '.join(used)})")
        if self.boxes is not None and (self.subject_box is not None
                                       or self.object_box is not None):
            raise AffError("--boxes", "give the boxes either as a JSON file or as "
                           "--subject-box/--object-box, not both")
        if self.subject_box is not None and self.object_box is None:
            raise AffError("--object-box", "needed with --subject-box (the object's box in "
                           "the image)")


def parse_box(text: str, option: str = "--object-box") -> tuple[float, float, float, float]:
    """`x1,y1,x2,y2` (either corner order; spaces or commas) as (left, top, right, bottom)."""
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise AffError(option, f"expected four numbers x1,y1,x2,y2 in image pixels, got {text!r}")
    x1, y1, x2, y2 = values
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


@dataclass
class ImageInput:
    """The interaction image as the image models take it: normalised [3, 224, 224] with the
    boxes in pixels of the resized image."""

    image: torch.Tensor
    subject_box: torch.Tensor  # [4]; zeros: no subject box (as in PIAD)
    object_box: torch.Tensor  # [4]


def load_image_input(cond: Conditioning) -> ImageInput | None:
    """The image and boxes of `cond` (None without --image); AffError naming the file."""
    from affcli.data.datasets import load_image
    from affcli.data.formats.piad import parse_box_json, read_image

    if cond.image is None:
        return None
    path = Path(cond.image)
    if not path.is_file():
        raise AffError(path, "image not found" if not path.exists() else "not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AffError(path, f"cannot read the image ({exc.strerror or exc})") from None
    jpeg, (h, w) = read_image(path, data)  # other formats are re-encoded as JPEG
    subject = np.zeros(4, np.float32)
    if cond.boxes is not None:
        box_path = Path(cond.boxes)
        if not box_path.is_file():
            raise AffError(box_path, "box file not found")
        subject, obj = parse_box_json(box_path, box_path.read_bytes())
        where = box_path
    elif cond.object_box is not None:
        obj = np.array(cond.object_box, np.float32)
        if cond.subject_box is not None:
            subject = np.array(cond.subject_box, np.float32)
        where = Path("--object-box")
    else:
        # LMAffordance3D reads the whole image; boxes only matter to the crop of training
        obj = np.array([0, 0, w, h], np.float32)
        where = path
    obj = _clip_box(obj, w, h, where, "object")
    if subject.any():
        subject = _clip_box(subject, w, h, where, "subject")
    image, sub, ob = load_image(jpeg, (h, w), subject, obj, rng=None)
    return ImageInput(image, sub, ob)


def _clip_box(box: np.ndarray, w: int, h: int, where: Path, what: str) -> np.ndarray:
    clipped = np.array([np.clip(box[0], 0, w), np.clip(box[1], 0, h), np.clip(box[2], 0, w),
                        np.clip(box[3], 0, h)], np.float32)
    # the boxes are truncated to whole pixels downstream, so a box must span at least one
    if int(clipped[2]) - int(clipped[0]) < 1 or int(clipped[3]) - int(clipped[1]) < 1:
        raise AffError(where, f"the {what} box {box.tolist()} does not cover any pixel of the "
                       f"{w}x{h} image")
    return clipped


# ---------------------------------------------------------------------------------------------
# which model


def find_latest_run(model_type: str, root: str | Path = RUNS_ROOT) -> Path:
    """The run folder under `root/<model_type>/` whose best.pt (else last.pt) is newest."""
    from affcli.engine.checkpoint import BEST, LAST

    base = Path(root) / model_type
    found: list[tuple[float, str, Path]] = []
    for run in base.glob("*/") if base.is_dir() else ():
        for name in (BEST, LAST):
            ckpt = run / name
            if ckpt.is_file():
                found.append((ckpt.stat().st_mtime, run.name, run))
                break
    if not found:
        raise AffError(base, f"no trained {model_type} run here (looked for */best.pt and "
                       "*/last.pt); train one or pass --model RUN_DIR|CHECKPOINT",
                       hint=f"train one with `{TRAIN_HINTS.get(model_type, 'affcli train')}`, "
                       "or pass --model with a run folder, checkpoint or pretrained directory")
    return max(found)[2]


def resolve_model(model: str | Path | None, cond: Conditioning,
                  root: str | Path = RUNS_ROOT) -> tuple[Path, bool]:
    """(what to load, True when it was picked as the newest run rather than given)."""
    if model is not None:
        return Path(model), False
    return find_latest_run(cond.implied_model(), root), True


# ---------------------------------------------------------------------------------------------
# shapes in


@dataclass
class PreparedShape:
    """A shape ready for the model: the original points and the model-size cloud, both in
    the normalised frame of the sampled cloud."""

    path: Path
    points: np.ndarray  # float64 [M, 3], as read
    normalized: np.ndarray  # float32 [M, 3], the same points in the model's frame
    sample: np.ndarray  # float32 [n_points, 3], what the model sees
    kind: str = "points"
    is_mesh: bool = False


def resample_indices(points: np.ndarray, n: int, seed: int = RESAMPLE_SEED) -> np.ndarray:
    """Indices of `n` points of `points`: all of them when the count matches; farthest point
    sampling when there are more (it keeps thin parts such as handles, which a random subset
    thins out); every point plus random repeats when there are fewer."""
    from affcli import ops

    m = len(points)
    if m == n:
        return np.arange(n)
    if m > n:
        # FPS does not depend on position or scale; centring and scaling first keeps far-off
        # or huge coordinates exact in the float32 the kernels take
        pts = np.asarray(points, np.float64)
        pts = pts - pts.mean(axis=0)
        pts = pts / max(float(np.abs(pts).max()), 1e-300)
        xyz = torch.from_numpy(np.ascontiguousarray(pts, np.float32)).unsqueeze(0)
        return ops.farthest_point_sample(xyz, n).squeeze(0).numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    # every original point is in the cloud, so each gets its own score back exactly
    return np.concatenate([np.arange(m), rng.integers(0, m, n - m)])


def prepare_points(points: np.ndarray, n_points: int, path: str | Path = "<array>",
                   seed: int = RESAMPLE_SEED) -> PreparedShape:
    """Resample and normalise a cloud float [M, 3] (M >= 3, finite) for the model."""
    from affcli.data.datasets import normalize_points

    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise AffError(path, f"points have shape {list(pts.shape)}, expected [M, 3]")
    if len(pts) < 3:
        raise AffError(path, f"only {len(pts)} points; a shape needs at least 3")
    if not np.isfinite(pts).all():
        raise AffError(path, "non-finite (NaN/inf) coordinates")
    with np.errstate(over="ignore", invalid="ignore"):
        extent = float(np.ptp(pts, axis=0).max())
    if not math.isfinite(extent):
        raise AffError(path, "coordinates too large to normalise")
    if extent == 0.0:
        raise AffError(path, "all points coincide (a shape needs some extent)")
    sampled = pts[resample_indices(pts, n_points, seed)]
    # training normalises each cloud on its own; the originals follow the same transform
    centre = sampled.mean(axis=0)
    radius = float(np.sqrt(((sampled - centre) ** 2).sum(axis=1)).max())
    if not (math.isfinite(radius) and radius > 0):
        raise AffError(path, "coordinates cannot be normalised (too large or too close)")
    sample = normalize_points(sampled)
    normalized = ((pts - centre) / radius).astype(np.float32)
    return PreparedShape(Path(path), pts, normalized, sample)


def prepare_shape(path: str | Path, n_points: int, mesh_samples: int = 10000,
                  seed: int = RESAMPLE_SEED) -> PreparedShape:
    """Read a shape file (meshes are sampled on their surface) and prepare it."""
    from affcli.data.pointio import read_shape

    shape = read_shape(path, mesh_samples=mesh_samples, seed=seed)
    prep = prepare_points(shape.points, n_points, path, seed)
    prep.kind, prep.is_mesh = shape.kind, shape.is_mesh
    return prep


def interpolate_scores(sample: np.ndarray, scores: np.ndarray, points: np.ndarray
                       ) -> np.ndarray:
    """Scores of `points` [M, 3] from those of `sample` [n, 3] by the inverse squared
    distance weights of their 3 nearest sample points (PointNet++'s feature propagation).
    Convex weights keep the scores in [0, 1]; a point of the sample gets its own score."""
    from affcli import ops

    known = torch.from_numpy(np.ascontiguousarray(sample, np.float32)).unsqueeze(0)
    unknown = torch.from_numpy(np.ascontiguousarray(points, np.float32)).unsqueeze(0)
    dist2, idx = ops.three_nn(unknown, known)
    recip = 1.0 / (dist2.double() + 1e-8)
    weight = (recip / recip.sum(dim=-1, keepdim=True)).float()
    feats = torch.from_numpy(np.ascontiguousarray(scores, np.float32)).view(1, 1, -1)
    out = ops.three_interpolate(feats, idx, weight).view(-1).numpy()
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# results and files out


@dataclass
class ShapeResult:
    """One shape's outcome: scores for every original point, or the error."""

    path: Path
    points: np.ndarray | None = None  # float64 [M, 3]
    scores: np.ndarray | None = None  # float32 [M] in [0, 1]
    error: AffError | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    name: str | None = None  # the path as the user gave it

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        """The JSON line of `affcli predict --json`."""
        doc: dict[str, Any] = {"path": self.name or str(self.path)}
        if self.error is not None:
            doc["error"] = self.error.one_line()
            return doc
        s = self.scores
        assert s is not None
        doc.update(points=int(len(s)), min=float(s.min()), mean=float(s.mean()),
                   max=float(s.max()), **{"fraction_above_0.5": float((s > 0.5).mean())},
                   outputs={k: str(v) for k, v in self.outputs.items()})
        return doc


def unique_stems(paths: Sequence[str | Path]) -> list[str]:
    """Output names for `paths`: each file's stem, with -2, -3, ... for repeats, in order."""
    taken: set[str] = set()
    out = []
    for p in paths:
        stem = Path(p).stem or "shape"
        name, k = stem, 2
        while name in taken:
            name, k = f"{stem}-{k}", k + 1
        taken.add(name)
        out.append(name)
    return out


def next_output_dir(root: str | Path = RUNS_ROOT, prefix: str = "predict") -> Path:
    """root/predict-N for the next free N, created (so two runs never share one)."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    n = max((int(m.group(1)) for p in base.iterdir() if (m := pattern.match(p.name))),
            default=0) + 1
    while True:
        path = base / f"{prefix}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


class OutputWriter:
    """Writes `<stem>.ply`, `<stem>.npy` and, with `render`, `<stem>.png` per shape, each
    atomically. The folder (default: the next free runs/predict-N) is made at the first
    write, so a run where every shape fails leaves nothing behind."""

    def __init__(self, out_dir: str | Path | None = None, render: bool = False,
                 root: str | Path = RUNS_ROOT, force: bool = False) -> None:
        self._given = None if out_dir is None else Path(out_dir)
        self._root = Path(root)
        self._dir: Path | None = None
        self.render = render
        self.force = force  # replace files already in a given folder

    @property
    def directory(self) -> Path | None:
        """The folder written to (None until the first write when none was given)."""
        return self._dir or self._given

    def _folder(self) -> Path:
        if self._dir is None:
            if self._given is None:
                self._dir = next_output_dir(self._root)
            else:
                if self._given.exists() and not self._given.is_dir():
                    raise AffError(self._given, "--out must be a folder, this is a file")
                self._given.mkdir(parents=True, exist_ok=True)
                self._dir = self._given
        return self._dir

    def write(self, stem: str, points: np.ndarray, scores: np.ndarray,
              title: str | None = None) -> dict[str, Path]:
        from affcli.data.pointio import write_ply
        from affcli.fileio import atomic_output

        folder = self._folder()
        kinds = ("ply", "npy", "png") if self.render else ("ply", "npy")
        taken = [folder / f"{stem}.{k}" for k in kinds if (folder / f"{stem}.{k}").exists()]
        if taken and not self.force:
            # checked before writing any, so a shape's files are never half replaced
            raise AffError(taken[0], "output exists; pass --force to overwrite it")
        files = {"ply": write_ply(folder / f"{stem}.ply", points, scores)}
        npy = folder / f"{stem}.npy"
        with atomic_output(npy, force=True) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(scores, np.float32))  # a handle: np.save adds .npy to names
        files["npy"] = npy
        if self.render:
            from affcli.views import render_views

            files["png"] = render_views(points, scores, folder / f"{stem}.png", title)
        return files


# ---------------------------------------------------------------------------------------------
# the predictor


class Predictor:
    """A loaded model and its conditioning; scores prepared shapes in batches."""

    def __init__(self, model: torch.nn.Module, conditioning: Conditioning,
                 device: str | torch.device = "cpu", batch_size: int = 8,
                 source: Path | None = None, image: ImageInput | None = None) -> None:
        if batch_size < 1:
            raise AffError("--batch-size", f"must be at least 1, got {batch_size}")
        self.model_type = str(model.config.model_type)
        conditioning.check_for(self.model_type)
        extra = int(getattr(model.config, "extra_channels", 0) or 0)
        if extra:
            raise AffError(source, f"this model takes {extra} per-point channels besides xyz "
                           "(e.g. normals); predict feeds xyz only")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.cond = conditioning
        self.batch_size = int(batch_size)
        self.source = source
        self.n_points = int(model.config.n_points)
        if self.model_type != "pointrefer" and image is None:
            image = load_image_input(conditioning)
        self.image = image

    @classmethod
    def load(cls, model: str | Path, conditioning: Conditioning, device: str = "auto",
             batch_size: int = 8, image: ImageInput | None = None) -> Predictor:
        """From a run folder (best.pt), a checkpoint file or a pretrained directory.
        `device`: auto, cpu, cuda or cuda:N."""
        from affcli.engine.checkpoint import load_model
        from affcli.engine.distributed import resolve_device

        dev = resolve_device(device)
        with warnings.catch_warnings():
            # a pretrained directory's ResNet weights are in its own file; the builder's
            # "random weights" warning would be wrong there (checkpoints silence it already)
            warnings.filterwarnings("ignore", message="ResNet18 starts from random weights")
            net, _, source = load_model(model)
        return cls(net, conditioning, dev, batch_size, source, image)

    def title(self) -> str:
        text = self.cond.question or self.cond.instruction or (
            Path(self.cond.image).name if self.cond.image else "")
        return f"{self.model_type}: {text}" if text else self.model_type

    @torch.no_grad()
    def score_batch(self, clouds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Heatmaps float32 [n_points] in [0, 1] of prepared clouds [n_points, 3]."""
        if not clouds:
            return []
        pts = torch.from_numpy(np.stack(clouds).astype(np.float32)).to(self.device)
        b = pts.shape[0]
        if self.model_type == "pointrefer":
            out = self.model(pts, [self.cond.question] * b)
        else:
            assert self.image is not None
            image = self.image.image.unsqueeze(0).expand(b, -1, -1, -1).to(self.device)
            if self.model_type == "iagnet":
                sub = self.image.subject_box.unsqueeze(0).expand(b, -1).to(self.device)
                obj = self.image.object_box.unsqueeze(0).expand(b, -1).to(self.device)
                out = self.model(pts, image, sub, obj)
            else:
                out = self.model(pts, image, [self.cond.instruction] * b)
        heat = out.heatmap.float().cpu().numpy()
        if not np.isfinite(heat).all():
            raise RuntimeError("the model produced non-finite scores")
        return [np.clip(h, 0.0, 1.0) for h in heat]

    def predict_points(self, points: np.ndarray) -> np.ndarray:
        """Scores float32 [M] for one cloud [M, 3] held in memory."""
        prep = prepare_points(points, self.n_points)
        heat = self.score_batch([prep.sample])[0]
        return interpolate_scores(prep.sample, heat, prep.normalized)

    def run(self, paths: Iterable[str | Path], writer: OutputWriter | None = None,
            stems: Sequence[str] | None = None, mesh_samples: int = 10000
            ) -> Iterator[ShapeResult]:
        """Results in the order of `paths`, written by `writer` when given. A file that
        cannot be read comes back with its error; the others go on."""
        paths = list(paths)
        stems = list(stems) if stems is not None else unique_stems(paths)
        for start in range(0, len(paths), self.batch_size):
            chunk = list(zip(paths[start:start + self.batch_size],
                             stems[start:start + self.batch_size], strict=True))
            ready: list[tuple[int, PreparedShape]] = []
            results: list[ShapeResult] = []
            for i, (p, _) in enumerate(chunk):
                res = ShapeResult(Path(p), name=str(p))
                try:
                    ready.append((i, prepare_shape(p, self.n_points, mesh_samples)))
                except AffError as exc:
                    res.error = exc
                results.append(res)
            heats = self.score_batch([prep.sample for _, prep in ready])
            for (i, prep), heat in zip(ready, heats, strict=True):
                res = results[i]
                res.points = prep.points
                res.scores = interpolate_scores(prep.sample, heat, prep.normalized)
                if writer is not None:
                    try:
                        res.outputs = writer.write(chunk[i][1], prep.points, res.scores,
                                                   f"{Path(chunk[i][0]).name} ({self.title()})")
                    except AffError as exc:
                        res.error = exc
                    except OSError as exc:
                        res.error = AffError(writer.directory, f"cannot write the outputs of "
                                             f"{chunk[i][0]} ({exc.strerror or exc})")
                    except ValueError as exc:  # e.g. coordinates beyond float32's range
                        res.error = AffError(chunk[i][0], f"cannot write a PLY of it ({exc})")
            yield from results
