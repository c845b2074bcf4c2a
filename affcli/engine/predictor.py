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
from affcli.fileio import DiskFullError
from affcli.memory import keep_freed_memory

RUNS_ROOT = Path("runs")
RESAMPLE_SEED = 0  # fixed: the same file gives the same cloud, hence the same scores


# ---------------------------------------------------------------------------------------------
# what the model is conditioned on


class Conditioning:
    """The non-geometric inputs, the same for every shape of a run: raw values by the input
    names models declare (`Conditioning(question="Where would you grasp this mug?")`,
    `Conditioning(image="i.jpg", boxes="b.json")`); None means not given."""

    def __init__(self, **values: Any) -> None:
        self.values = {k: v for k, v in values.items() if v is not None}

    def given(self) -> list[str]:
        """The options given, as the command line spells them."""
        return ["--" + name.replace("_", "-") for name in self.values]

    def fits(self, model_cls: Any) -> bool:
        """True when every given input is one `model_cls` takes and none it requires is
        missing (what picks a model when none is named)."""
        declared = {i.name: i for i in model_cls.inputs}
        return set(self.values) <= set(declared) and all(
            i.name in self.values for i in model_cls.inputs if i.required)

    def implied_models(self) -> list[str]:
        """The registered models these inputs fit (to find a run when none is named)."""
        from affcli import models

        fitting = [n for n in models.available() if self.fits(models.model_class(n))]
        if fitting:
            return fitting
        if not self.values:
            takes = "; ".join(
                f"{n}: {' '.join(i.option for i in models.model_class(n).inputs if i.required)}"
                for n in models.available())
            raise AffError("predict", f"nothing says which model to run: give one model's "
                           f"inputs ({takes}; see `affcli predict --help`) or --model")
        raise AffError("predict", f"no installed model takes exactly "
                       f"{', '.join(self.given())}; give one model's inputs (see `affcli "
                       "predict --help` and `affcli models`), or --model")

    def check_for(self, model_cls: Any) -> None:
        """AffError naming the first missing option, then the first one the model ignores."""
        model_cls.check_inputs(self.values)



# ---------------------------------------------------------------------------------------------
# which model


def find_latest_run(model_types: Sequence[str], root: str | Path = RUNS_ROOT) -> Path:
    """The run folder under `root/<model_type>/`, over the given types, whose best.pt (else
    best.safetensors, else last.pt) is newest."""
    from affcli import models
    from affcli.engine.checkpoint import BEST, INFERENCE, LAST

    found: list[tuple[float, str, Path]] = []
    for model_type in model_types:
        base = Path(root) / model_type
        for run in base.glob("*/") if base.is_dir() else ():
            for name in (BEST, INFERENCE, LAST):
                ckpt = run / name
                if ckpt.is_file():
                    found.append((ckpt.stat().st_mtime, run.name, run))
                    break
    if not found:
        where = Path(root) / (model_types[0] if len(model_types) == 1
                              else "{" + ",".join(model_types) + "}")
        hints = " or ".join(f"`{models.model_class(m).training_hint()}`" for m in model_types)
        raise AffError(where, f"no trained {' or '.join(model_types)} run here (looked for "
                       "*/best.pt and */last.pt); train one or pass --model "
                       "RUN_DIR|CHECKPOINT",
                       hint=f"train one with {hints}, or pass --model with a run folder, "
                       "checkpoint or pretrained directory")
    return max(found)[2]


def resolve_model(model: str | Path | None, cond: Conditioning,
                  root: str | Path = RUNS_ROOT) -> tuple[Path, bool]:
    """(what to load, True when it was picked as the newest run rather than given)."""
    if model is not None:
        return Path(model), False
    return find_latest_run(cond.implied_models(), root), True


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
    centre: np.ndarray | None = None  # the normalisation: (x - centre) / radius
    radius: float = 1.0
    vertices: np.ndarray | None = None  # meshes: float64 [V, 3], the file's own vertices
    faces: np.ndarray | None = None  # meshes: int64 [F, 3]

    def normalize(self, points: np.ndarray) -> np.ndarray:
        """Other points of the same shape (a mesh's vertices) in the model's frame."""
        assert self.centre is not None
        return ((np.asarray(points, np.float64) - self.centre) / self.radius).astype(np.float32)


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
    return PreparedShape(Path(path), pts, normalized, sample, centre=centre, radius=radius)


def prepare_shape(path: str | Path, n_points: int, mesh_samples: int = 10000,
                  seed: int = RESAMPLE_SEED) -> PreparedShape:
    """Read a shape file (meshes are sampled on their surface) and prepare it."""
    from affcli.data.pointio import read_shape

    shape = read_shape(path, mesh_samples=mesh_samples, seed=seed)
    prep = prepare_points(shape.points, n_points, path, seed)
    prep.kind, prep.is_mesh = shape.kind, shape.is_mesh
    prep.vertices, prep.faces = shape.vertices, shape.faces
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
    """One shape's outcome: scores for every original point (a mesh's: every vertex), or the
    error."""

    path: Path
    points: np.ndarray | None = None  # float64 [M, 3]; a mesh's vertices
    scores: np.ndarray | None = None  # float32 [M] in [0, 1]
    error: AffError | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    name: str | None = None  # the path as the user gave it
    faces: np.ndarray | None = None  # meshes: int64 [F, 3] into `points`
    condition: dict[str, str] = field(default_factory=dict)  # the text that varied, if any

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        """The JSON line of `affcli predict --json`."""
        doc: dict[str, Any] = {"path": self.name or str(self.path), **self.condition}
        if self.error is not None:
            doc["error"] = self.error.one_line()
            return doc
        s = self.scores
        assert s is not None
        if self.faces is not None:
            doc.update(vertices=int(len(s)), faces=int(len(self.faces)))
        doc.update(points=int(len(s)), min=float(s.min()), mean=float(s.mean()),
                   max=float(s.max()), **{"fraction_above_0.5": float((s > 0.5).mean())},
                   outputs={k: str(v) for k, v in self.outputs.items()})
        return doc


def slug(text: str, limit: int = 40) -> str:
    """A short file-name part for a question: 'Where would you grasp it?' ->
    'where-would-you-grasp-it'."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = ""
    for w in words:
        if len(out) + len(w) + 1 > limit and out:
            break
        out = f"{out}-{w}" if out else w[:limit]
    return out or "text"


def unique_stems(paths: Sequence[str | Path]) -> list[str]:
    """Output names for `paths`: each file's stem, with -2, -3, ... for repeats, in order."""
    return unique_names([Path(p).stem or "shape" for p in paths])


def unique_names(names: Sequence[str]) -> list[str]:
    """`names` in order, with -2, -3, ... added to repeats."""
    taken: set[str] = set()
    out = []
    for base in names:
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        out.append(name)
    return out


class OutputWriter:
    """Writes `<stem>.ply`, `<stem>.npy` and, with `render`, `<stem>.png` per shape, each
    atomically. The folder (default: the next free runs/predict-N) is made at the first
    write, so a run where every shape fails leaves nothing behind."""

    def __init__(self, out_dir: str | Path | None = None, render: bool = False,
                 root: str | Path = RUNS_ROOT, force: bool = False, mesh_format: str = "ply",
                 face_scores: bool = False) -> None:
        if mesh_format not in ("ply", "glb"):
            raise AffError("--format", f"must be ply or glb, got {mesh_format!r}")
        self.mesh_format, self.face_scores = mesh_format, face_scores
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
                from affcli.fileio import next_numbered_dir

                self._dir = next_numbered_dir(self._root, "predict")
            else:
                if self._given.exists() and not self._given.is_dir():
                    raise AffError(self._given, "--out must be a folder, this is a file")
                self._given.mkdir(parents=True, exist_ok=True)
                self._dir = self._given
        return self._dir

    def write(self, stem: str, points: np.ndarray, scores: np.ndarray,
              title: str | None = None, faces: np.ndarray | None = None,
              view: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Path]:
        """`points` and their `scores` (with `faces`: a mesh's vertices, written as a mesh);
        `view`: (points, scores) to render instead (a mesh's surface samples)."""
        from affcli.data.pointio import write_ply
        from affcli.fileio import atomic_output

        folder = self._folder()
        shape_kind = "glb" if faces is not None and self.mesh_format == "glb" else "ply"
        kinds = (shape_kind, "npy", "png") if self.render else (shape_kind, "npy")
        taken = [folder / f"{stem}.{k}" for k in kinds if (folder / f"{stem}.{k}").exists()]
        if taken and not self.force:
            # checked before writing any, so a shape's files are never half replaced; each
            # file is then created exclusively (see atomic_output), so of several processes
            # writing the same names at once, the first to finish its shape file takes them
            # and the others stop at that file with exit 2
            raise AffError(taken[0], "output exists; pass --force to overwrite it")
        if shape_kind == "glb":
            from affcli.data.meshio import write_mesh_glb
            from affcli.views import heatmap_colors

            files = {"glb": write_mesh_glb(folder / f"{stem}.glb", points, faces,
                                           heatmap_colors(scores), force=self.force)}
        else:
            face_scores = (np.asarray(scores, np.float64)[faces].mean(axis=1)
                           if faces is not None and self.face_scores else None)
            files = {"ply": write_ply(folder / f"{stem}.ply", points, scores, faces=faces,
                                      face_scores=face_scores, force=self.force)}
        npy = folder / f"{stem}.npy"
        with atomic_output(npy, force=self.force) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(scores, np.float32))  # a handle: np.save adds .npy to names
        files["npy"] = npy
        if self.render:
            from affcli.views import render_views

            shown = view if view is not None else (points, scores)
            files["png"] = render_views(*shown, folder / f"{stem}.png", title,
                                        force=self.force)
        return files


# ---------------------------------------------------------------------------------------------
# the predictor


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise AffError("--batch-size", f"must be at least 1, got {batch_size}")


class Predictor:
    """A loaded model and its conditioning; scores prepared shapes in batches."""

    def __init__(self, model: torch.nn.Module, conditioning: Conditioning | Sequence[Conditioning],
                 device: str | torch.device = "cpu", batch_size: int = 8,
                 source: Path | None = None) -> None:
        keep_freed_memory()
        check_batch_size(batch_size)
        self.model_type = str(model.config.model_type)
        # several conditionings (questions) score every shape, encoded once, under each
        self.conds = ([conditioning] if isinstance(conditioning, Conditioning)
                      else list(conditioning))
        if not self.conds:
            raise AffError("predict", "no conditioning given")
        for c in self.conds:
            c.check_for(type(model))
        conditioning = self.conds[0]
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
        # the conditioning of one sample, as the model's dataset items hold it
        self.items = [model.conditioning_item(c.values) for c in self.conds]
        self.item = self.items[0]
        # what tells the conditionings apart (input name -> text), for names and JSON
        varying = [k for k in conditioning.values
                   if len({str(c.values.get(k)) for c in self.conds}) > 1]
        self.labels = [{k: str(c.values[k]) for k in varying} for c in self.conds]

    @classmethod
    def load(cls, model: str | Path, conditioning: Conditioning | Sequence[Conditioning],
             device: str = "auto", batch_size: int = 8) -> Predictor:
        """From a run folder (best.pt), a checkpoint file or a pretrained directory.
        `device`: auto, cpu, cuda or cuda:N."""
        from affcli.engine.checkpoint import load_model
        from affcli.engine.distributed import resolve_device

        check_batch_size(batch_size)  # before the (slow) loading
        dev = resolve_device(device)
        with warnings.catch_warnings():
            # a pretrained directory's ResNet weights are in its own file; the builder's
            # "random weights" warning would be wrong there (checkpoints silence it already)
            warnings.filterwarnings("ignore", message="ResNet18 starts from random weights")
            net, _, source = load_model(model)
        return cls(net, conditioning, dev, batch_size, source)

    def title(self) -> str:
        """The model and its first text input, else its image's file name."""
        if len(self.conds) > 1:
            return f"{self.model_type}: {len(self.conds)} " + (
                f"{next(iter(self.labels[0]))}s" if self.labels[0] else "conditionings")
        specs = [i for i in self.model.inputs if i.name in self.cond.values]
        text = next((str(self.cond.values[i.name]) for i in specs if i.kind == "text"),
                    next((Path(self.cond.values[i.name]).name for i in specs
                          if i.kind == "image"), ""))
        return f"{self.model_type}: {text}" if text else self.model_type

    def batch(self, b: int, item: dict[str, Any] | None = None) -> dict[str, Any]:
        """A conditioning item (default: the first) repeated for `b` clouds (tensors
        expanded, not copied)."""
        out: dict[str, Any] = {}
        for key, value in (self.item if item is None else item).items():
            if isinstance(value, torch.Tensor):
                out[key] = value.unsqueeze(0).expand(b, *value.shape).to(self.device)
            else:
                out[key] = [value] * b
        return out

    @torch.no_grad()
    def score_batch(self, clouds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Heatmaps float32 [n_points] in [0, 1] of prepared clouds [n_points, 3] (the
        first conditioning)."""
        return [per[0] for per in self.score_variants(clouds)]

    @torch.no_grad()
    def score_variants(self, clouds: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Per cloud, its heatmap under each conditioning: the clouds are encoded once
        (`encode_points`), each conditioning decodes them."""
        if not clouds:
            return []
        pts = torch.from_numpy(np.stack(clouds).astype(np.float32)).to(self.device)
        encoded = self.model.encode_points(pts)
        heats = []
        for item in self.items:
            out = self.model.forward_encoded(self.batch(pts.shape[0], item), encoded)
            heat = out.heatmap.float().cpu().numpy()
            if not np.isfinite(heat).all():
                raise RuntimeError("the model produced non-finite scores")
            heats.append(np.clip(heat, 0.0, 1.0))
        return [[h[i] for h in heats] for i in range(len(clouds))]

    def predict_points(self, points: np.ndarray) -> np.ndarray:
        """Scores float32 [M] for one cloud [M, 3] held in memory."""
        prep = prepare_points(points, self.n_points)
        heat = self.score_batch([prep.sample])[0]
        return interpolate_scores(prep.sample, heat, prep.normalized)

    def run(self, paths: Iterable[str | Path], writer: OutputWriter | None = None,
            stems: Sequence[str] | None = None, mesh_samples: int = 10000
            ) -> Iterator[ShapeResult]:
        """Results in the order of `paths` (per path, one per conditioning), written by
        `writer` when given. A file that cannot be read comes back with its error; the
        others go on. Each shape is read, sampled and encoded once."""
        paths = list(paths)
        stems = list(stems) if stems is not None else unique_stems(paths)
        # one conditioning: <stem>.*; several: <stem>-<slug of the question>.*
        suffixes = [""] if len(self.conds) == 1 else unique_names(
            ["-" + slug(" ".join(lab.values())) for lab in self.labels])
        for start in range(0, len(paths), self.batch_size):
            chunk = list(zip(paths[start:start + self.batch_size],
                             stems[start:start + self.batch_size], strict=True))
            ready: list[tuple[int, PreparedShape]] = []
            failed: dict[int, AffError] = {}
            for i, (p, _) in enumerate(chunk):
                try:
                    ready.append((i, prepare_shape(p, self.n_points, mesh_samples)))
                except AffError as exc:
                    failed[i] = exc
            heats = dict(zip((i for i, _ in ready),
                             self.score_variants([prep.sample for _, prep in ready]),
                             strict=True))
            prepared = dict(ready)
            for i, (p, stem) in enumerate(chunk):
                for v, suffix in enumerate(suffixes):
                    res = ShapeResult(Path(p), name=str(p), condition=self.labels[v])
                    if i in failed:
                        res.error = failed[i]
                    else:
                        self._finish(res, prepared[i], heats[i][v], writer, stem + suffix)
                    yield res

    def _finish(self, res: ShapeResult, prep: PreparedShape, heat: np.ndarray,
                writer: OutputWriter | None, stem: str) -> None:
        """Carry a heatmap back to the shape's own points (a mesh's: its vertices) and write
        the outputs."""
        surface = interpolate_scores(prep.sample, heat, prep.normalized)
        view = None
        if prep.vertices is not None and prep.faces is not None:
            # a mesh's scores go to its own vertices; the picture shows its surface
            res.points, res.faces = prep.vertices, prep.faces
            res.scores = interpolate_scores(prep.sample, heat, prep.normalize(prep.vertices))
            view = (prep.points, surface)
        else:
            res.points, res.scores = prep.points, surface
        if writer is None:
            return
        label = " ".join(res.condition.values())
        title = f"{res.path.name} ({self.model_type}: {label})" if label else \
            f"{res.path.name} ({self.title()})"
        try:
            res.outputs = writer.write(stem, res.points, res.scores, title, faces=res.faces,
                                       view=view)
        except DiskFullError:
            raise  # the next shapes would not fit either: stop the batch (exit 1)
        except AffError as exc:
            res.error = exc
        except OSError as exc:
            res.error = AffError(writer.directory, f"cannot write the outputs of "
                                 f"{res.name} ({exc.strerror or exc})")
        except ValueError as exc:  # e.g. coordinates beyond float32's range
            res.error = AffError(res.name, f"cannot write a PLY of it ({exc})")

