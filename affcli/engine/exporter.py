"""Export a model as ONNX, TorchScript or safetensors, and prove the export right.

`export(model, fmt, out)` writes the file, loads it back the way a user would (onnxruntime on
the CPU, torch.jit.load, models.from_pretrained), runs it on sample inputs at a batch size
other than the traced one, and reports the largest absolute difference from the model's own
PyTorch output; above TOLERANCE it raises ExportCheckError (exit code 1) and writes nothing.
`export_path(run_or_pretrained_dir, fmt, out)` loads the model first (what `affcli export`
takes). Bad requests raise AffError (exit code 2).

Formats:
- onnx: one `.onnx` file (weights inside; beside it as `<name>.data` past ONNX's 2 GB
  limit), opset 18. Made by torch.export and the dynamo ONNX exporter
  (torch.onnx.export(dynamo=True)), the maintained path in torch 2.x; FPS stays a loop
  there (torch's while_loop, one ONNX Loop node) where an unrolled one would take
  onnxruntime about a minute just to load.
- torchscript: the same tensor-input wrapper through torch.jit.trace (FPS a TorchScript
  loop), saved with torch.jit.save; torch.jit.load runs it without affcli or transformers
  (IAGNet's file needs `import torchvision` first: it calls torchvision's roi_align op).
- safetensors: a pretrained directory, config.json + model.safetensors (`save_pretrained`):
  the format `models.from_pretrained` and every affcli command read; a bare weights file
  would need its config carried beside it anyway.
ONNX and TorchScript files carry the model config (`read_config` reads it back), so that
`tokenize` / `graph_inputs` can prepare inputs from the file and the tokenizer alone.

Graph inputs and outputs are the model's declarations (`AffordanceModel.graph_inputs`,
`graph_outputs`, `graph_forward`): points [B, N, 3 + extra] f32 first, then e.g. the tokenised
text (`input_ids`, `attention_mask` int64 [B, L]), `image` [B, 3, S, S] f32, boxes [B, 4]
f32 (x1, y1, x2, y2 in image pixels); outputs `heatmap` [B, N] and any others the model
declares. B is always dynamic, N unless the model has `fixed_point_count`, other axes as
`graph_dynamic_axes()` says (docs/predict-export.md lists them per built-in model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affcli.errors import EXIT_INTERNAL, AffError
from affcli.models.config import ModelConfig

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 18
TOLERANCE = 1e-4  # max |export - PyTorch| accepted, on heatmaps in [0, 1] and logits alike
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
# ONNX keeps a graph in one protobuf of at most 2 GB; past this many bytes of weights they go
# to an external data file next to the graph
_EXTERNAL_DATA_BYTES = 1_800_000_000

class ExportCheckError(AffError):
    """The exported model does not reproduce the PyTorch output: a failure of the exporter,
    not of the user's input, hence exit code 1."""

    exit_code = EXIT_INTERNAL


@dataclasses.dataclass
class ExportReport:
    """What `export` wrote and how well it matches the PyTorch model."""

    path: Path
    format: str
    model_type: str
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float  # over every output, at `check_batch_size`
    batch_size: int  # the traced / example batch
    check_batch_size: int
    seconds: float  # in all: sample inputs, export, loading back, both runs of the check
    export_seconds: float  # writing the file(s) alone
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


# --------------------------------------------------------------------------- wrappers


class ExportWrapper(nn.Module):
    """A model's tensor-only forward (`graph_forward`): the module every export format
    records. `input_names` / `output_names` are the graph's, as the model declares them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model_type = str(model.config.model_type)
        self.input_names = tuple(model.graph_inputs)
        self.output_names = tuple(model.graph_outputs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.model.graph_forward(*inputs)


# the config as JSON, stored in every export: ONNX metadata_props key / TorchScript extra file
CONFIG_KEY = "affcli.config"
TORCHSCRIPT_CONFIG = "affcli_config.json"

Source = nn.Module | ModelConfig | str | Path


def model_type_of(model: nn.Module) -> str:
    from affcli.models.base import AffordanceModel

    if not isinstance(model, AffordanceModel):
        raise AffError("MODEL", f"cannot export a {type(model).__name__}: not an affcli model "
                       "(an AffordanceModel subclass)")
    return str(model.config.model_type)


def export_wrapper(model: nn.Module) -> ExportWrapper:
    """The tensor-input wrapper of an affcli model."""
    model_type_of(model)
    return ExportWrapper(model)


# --------------------------------------------------------------------------- inputs


def config_json(config: ModelConfig) -> str:
    """The config as stored in an export: its fields and the registry name."""
    return json.dumps({"model_type": config.model_type, **config.to_dict()})


def read_config(source: Source) -> ModelConfig:
    """The model config of a model, a config, a pretrained directory, or a file written by
    `export` (.onnx: its metadata; TorchScript: its extra file), e.g. to tokenise text for
    an exported graph without loading the model."""
    if isinstance(source, nn.Module):
        model_type_of(source)
        return source.config
    if isinstance(source, ModelConfig):
        doc = json.loads(config_json(source))
    else:
        doc = _read_config_doc(Path(source))
    from affcli import models

    name = doc.pop("model_type", None)
    if not isinstance(name, str) or not name:
        raise AffError(str(source), f"not an affcli model config (model_type {name!r})")
    return models.config_class(name).from_dict(doc, source=str(source))


def _read_config_doc(path: Path) -> dict[str, Any]:
    if path.is_dir():
        from affcli.models.config import read_config as read_pretrained

        name, fields = read_pretrained(path)
        return {"model_type": name, **fields}
    if not path.is_file():
        raise AffError(path, "no such file or directory")
    text = None
    if zipfile.is_zipfile(path):  # TorchScript: a zip archive, the config in extra/
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(f"/extra/{TORCHSCRIPT_CONFIG}"):
                    text = archive.read(member).decode()
    else:
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # any parse failure means a bad file
            raise AffError(path, f"neither an ONNX nor a TorchScript file ({exc})") from None
        text = {p.key: p.value for p in graph.metadata_props}.get(CONFIG_KEY)
    if text is None:
        raise AffError(path, "holds no affcli model config (not written by affcli export?)")
    return json.loads(text)


def _model_class(config: ModelConfig) -> Any:
    from affcli import models

    return models.model_class(config.model_type)


def tokenize(source: Source, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """The model's text input (a question, an instruction...), or one per cloud, as the
    graph's `input_ids` / `attention_mask` (int64 [B, L]), tokenised exactly as the model's
    own forward does. `source`: the model, or anything `read_config` takes (then only the
    tokenizer is loaded, e.g. next to an .onnx file)."""
    config = read_config(source)
    model_cls = _model_class(config)
    if model_cls.text_input() is None:
        raise AffError("MODEL", f"{config.model_type} takes no text input")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise AffError("TEXT", "need one or more strings")
    if isinstance(source, nn.Module):
        return source.tokenize(texts)
    return model_cls.tokenize_texts(config, texts)


def graph_inputs(source: Source, points: torch.Tensor | np.ndarray, *,
                 text: str | Sequence[str] | None = None,
                 image: torch.Tensor | np.ndarray | None = None,
                 subject_box: torch.Tensor | np.ndarray | Sequence[float] | None = None,
                 object_box: torch.Tensor | np.ndarray | Sequence[float] | None = None,
                 ) -> dict[str, torch.Tensor]:
    """The exported graph's inputs, by name and in order, from raw ones: points [B, N, C]
    (or one cloud [N, C]), the text tokenised as the model does, image [B, 3, S, S], boxes
    [B, 4] (a single box is repeated over the batch). `source` as for `tokenize`. For
    onnxruntime pass `as_numpy(...)` of the result; for TorchScript its values in order."""
    config = read_config(source)
    model_cls = _model_class(config)
    names = tuple(model_cls.graph_inputs)
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    pts = pts.unsqueeze(0) if pts.dim() == 2 else pts
    if pts.dim() != 3:
        raise AffError("points", f"must be [B, N, C] or [N, C], got {list(pts.shape)}")
    b = pts.shape[0]
    given: dict[str, Any] = {"points": pts}
    spec = model_cls.text_input()
    if spec is not None:
        if text is None:
            raise AffError("TEXT", f"{config.model_type} needs {spec.help} (text=...)")
        texts = [text] * b if isinstance(text, str) else list(text)
        if len(texts) != b:
            raise AffError("TEXT", f"{b} clouds but {len(texts)} texts")
        given.update(tokenize(source, texts))
    if "image" in names:
        if image is None:
            raise AffError("IMAGE", f"{config.model_type} needs an image [B, 3, H, W]")
        img = torch.as_tensor(np.asarray(image), dtype=torch.float32)
        given["image"] = img.unsqueeze(0) if img.dim() == 3 else img
    for name, box in (("subject_box", subject_box), ("object_box", object_box)):
        if name in names:
            if box is None:
                raise AffError(name, f"{config.model_type} needs {name} [B, 4]")
            t = torch.as_tensor(np.asarray(box, dtype=np.float32))
            given[name] = t.expand(b, 4).contiguous() if t.dim() == 1 else t
    missing = [n for n in names if n not in given]
    if missing:
        raise AffError("MODEL", f"{config.model_type}'s graph takes {', '.join(missing)}, "
                       "which graph_inputs cannot build from raw inputs")
    return {name: given[name] for name in names}


def as_numpy(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """An input dict as onnxruntime's `run(None, feed)` takes it."""
    return {k: v.detach().cpu().numpy() for k, v in inputs.items()}


def _clouds(b: int, n: int, channels: int, seed: int) -> torch.Tensor:
    """Object surfaces (synthetic classes in turn) in the unit sphere, like the datasets'
    clouds: ball queries see real neighbourhood sizes, which uniform noise would not give;
    extra channels (normals, say) are random unit vectors."""
    from affcli.data.datasets import normalize_points
    from affcli.data.synth.shapes import SYNTH_CLASSES, make_shape

    clouds = []
    for i in range(b):
        rng = np.random.default_rng([seed, i])
        xyz = normalize_points(make_shape(SYNTH_CLASSES[(seed + i) % len(SYNTH_CLASSES)],
                                          rng, n_points=n).points)
        if channels > 3:
            extra = rng.standard_normal((n, channels - 3)).astype(np.float32)
            xyz = np.concatenate([xyz, extra / np.linalg.norm(extra, axis=1, keepdims=True)], 1)
        clouds.append(xyz)
    return torch.from_numpy(np.stack(clouds))


def _boxes(b: int, size: int, g: torch.Generator) -> torch.Tensor:
    """b boxes (x1, y1, x2, y2) inside a size x size image, between 1/8 and 3/4 of it."""
    wh = (torch.rand(b, 2, generator=g) * 0.625 + 0.125) * size
    xy = torch.rand(b, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], dim=1)


def example_inputs(model: nn.Module, batch_size: int = 2, seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Realistic sample inputs of the graph: object clouds of the model's n_points, a random
    image, sensible boxes, real questions / instructions tokenised by the model's tokenizer.
    Different seeds give different clouds, texts and (with a dynamic text length) lengths."""
    model_type_of(model)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    channels = 3 + getattr(cfg, "extra_channels", 0)
    kw: dict[str, Any] = {}
    spec = model.text_input()
    if spec is not None:
        texts = spec.samples or ((spec.example,) if spec.example else ("a sample text",))
        kw["text"] = [texts[(seed + i) % len(texts)] for i in range(batch_size)]
    size = getattr(cfg, "image_size", 224)
    kw["image"] = torch.randn(batch_size, 3, size, size, generator=g)
    kw["subject_box"], kw["object_box"] = _boxes(batch_size, size, g), _boxes(batch_size, size, g)
    return graph_inputs(model, _clouds(batch_size, cfg.n_points, channels, seed), **kw)


# --------------------------------------------------------------------------- export


def export(model: nn.Module, fmt: str, out: str | Path, batch_size: int = 2, *,
           check_batch_size: int | None = None, seed: int = 0) -> ExportReport:
    """Write `model` to `out` in format `fmt` (onnx, torchscript or safetensors; for
    safetensors `out` is a directory), then check it: loaded back, on inputs of
    `check_batch_size` (default batch_size + 1) clouds, its outputs must be within
    TOLERANCE of the PyTorch model's, else ExportCheckError and nothing is written."""
    t0 = time.perf_counter()
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise AffError("--format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise AffError("--batch-size", f"must be a positive integer, got {batch_size!r}")
    check_b = batch_size + 1 if check_batch_size is None else check_batch_size
    if not isinstance(check_b, int) or check_b < 1:
        raise AffError("--check-batch-size", f"must be a positive integer, got {check_b!r}")
    wrapper = export_wrapper(model)
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise AffError("MODEL", "export runs on the CPU: move the model there first (.cpu())")
    out = _check_out(Path(out), fmt)
    notes: list[str] = []
    with _export_mode(model, notes):
        example = example_inputs(model, batch_size, seed)
        # another seed: other clouds, images, boxes and texts (so, where the text length
        # is dynamic, another length than the traced one)
        check = example_inputs(model, check_b, seed + 1)
        with torch.no_grad():
            expected = _as_tuple(wrapper(*check.values()))
        diff, export_seconds = _write_checked(wrapper, fmt, example, check, expected, out,
                                              notes)
    return ExportReport(path=out, format=fmt, model_type=wrapper.model_type,
                        input_names=list(wrapper.input_names),
                        output_names=list(wrapper.output_names), max_abs_diff=diff,
                        batch_size=batch_size, check_batch_size=check_b,
                        seconds=time.perf_counter() - t0, export_seconds=export_seconds,
                        notes=notes)


def export_path(source: str | Path, fmt: str, out: str | Path, batch_size: int = 2,
                **kwargs: Any) -> ExportReport:
    """`export` of the model in a training run folder, a checkpoint file or a pretrained
    directory (config.json + model.safetensors): what `affcli export` takes."""
    from affcli.engine.checkpoint import load_model

    model, _, _ = load_model(source)
    return export(model, fmt, out, batch_size, **kwargs)


def _check_out(out: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        if out.exists() and not out.is_dir():
            raise AffError(out, "exists and is not a directory (safetensors export writes a "
                           "pretrained directory: config.json + model.safetensors)")
        return out
    if out.is_dir():
        raise AffError(out, f"is a directory; give the {fmt} file to write "
                       f"(e.g. {out / ('model' + SUFFIXES[fmt])})")
    if fmt == "onnx":
        _require_onnx()
    return out


def _require_onnx() -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise AffError("--format", f"onnx export needs the {module} package",
                           hint="install the export extra: pip install 'affcli[export]'"
                           ) from None


@contextlib.contextmanager
def _export_mode(model: nn.Module, notes: list[str] | None = None) -> Iterator[None]:
    """Eval mode and a fixed FPS start for the duration (both restored after). A model whose
    config draws random FPS starts (fps_start None) is exported, and checked, with start 0:
    a graph is deterministic, and only a fixed start makes two runs comparable. The config
    itself is left alone (a safetensors export keeps fps_start None)."""
    from affcli.nn.pointnet2 import SetAbstractionMSG, fps_starts

    training = model.training
    randomised = any(isinstance(m, SetAbstractionMSG) and m.fps_start is None
                     for m in model.modules())
    if randomised and notes is not None:
        notes.append("the config's fps_start is None (a random first FPS point); the export "
                     "is traced and checked with start index 0")
    model.eval()
    try:
        with fps_starts(model, 0) if randomised else contextlib.nullcontext():
            yield
    finally:
        model.train(training)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _write_checked(wrapper: ExportWrapper, fmt: str, example: dict[str, torch.Tensor],
                   check: dict[str, torch.Tensor], expected: tuple[torch.Tensor, ...],
                   out: Path, notes: list[str]) -> tuple[float, float]:
    """Export into a scratch directory beside `out`, load it back and compare there, and
    only then move the file(s) into place with os.replace (readers never see a partial
    file; a failed check leaves nothing behind). The scratch file has the final name, so an
    ONNX external data file keeps a valid reference to its graph."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        path = scratch / out.name
        t0 = time.perf_counter()
        if fmt == "onnx":
            _export_onnx(wrapper, example, path, notes)
        elif fmt == "torchscript":
            _export_torchscript(wrapper, example, path)
        else:
            wrapper.model.save_pretrained(path)
        seconds = time.perf_counter() - t0
        got = _load_and_run(fmt, path, check)
        diff = max(float((torch.as_tensor(g) - e).abs().max())
                   for g, e in zip(got, expected, strict=True))
        if not diff <= TOLERANCE:  # (NaN fails too)
            raise ExportCheckError(out, f"the {fmt} export differs from the PyTorch model by "
                                   f"{diff:.3g} (> {TOLERANCE:g}) on {len(check['points'])} "
                                   "sample inputs; nothing was written")
        if path.is_dir():  # safetensors: the pretrained directory's files
            out.mkdir(parents=True, exist_ok=True)
            source, target = path, out
        else:  # the file, and an external data file beside it if there is one
            source, target = scratch, out.parent
        for written in sorted(source.iterdir()):
            os.replace(written, target / written.name)
        return diff, seconds
    except Exception as exc:
        from affcli.fileio import disk_full_error

        full = disk_full_error(exc, out)
        if full is not None:
            raise full from None
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _dynamic_shapes(wrapper: ExportWrapper, example: dict[str, torch.Tensor]
                    ) -> tuple[tuple[dict[int, Any], ...]]:
    """torch.export's dynamic shapes of the wrapper's inputs (one varargs tuple, in order):
    the batch everywhere, and the axes the model declares (`graph_dynamic_axes`)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    shapes: dict[str, dict[int, Any]] = {name: {0: batch} for name in example}
    dims: dict[str, Any] = {}
    for name, axes in wrapper.model.graph_dynamic_axes().items():
        for axis, (dim_name, low, high) in axes.items():
            if dim_name not in dims:
                dims[dim_name] = Dim(dim_name, min=low, max=high)
            shapes[name][axis] = dims[dim_name]
    return (tuple(shapes[name] for name in example),)


def _export_onnx(wrapper: ExportWrapper, example: dict[str, torch.Tensor], path: Path,
                 notes: list[str]) -> None:
    """torch.export + the dynamo ONNX exporter, then only the optimisations that cannot change
    a value (constant folding, dead nodes). The exporter's own `optimize=True` also runs the
    onnxscript rewriter, whose no-op rules match constants approximately (`x + c` is dropped
    for |c| <= 1e-8, `x * c` for |c - 1| <= 1e-5 c): it deletes FeaturePropagation's
    `1 / (d + 1e-8)` guard, and every point that is also a coarse point gets NaN weights."""
    import onnxscript.optimizer

    weight_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    external = weight_bytes > _EXTERNAL_DATA_BYTES
    if external:
        notes.append(f"weights in {path.name}.data (over ONNX's 2 GB protobuf limit)")
    # torch.export caches traced subgraphs (the FPS while_loop's) across exports in one
    # process: after a fixed-size export they come back with the cloud size fixed
    torch.compiler.reset()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, tuple(example.values()), input_names=list(wrapper.input_names),
            output_names=list(wrapper.output_names),
            dynamic_shapes=_dynamic_shapes(wrapper, example), opset_version=OPSET,
            dynamo=True, optimize=False, verbose=False)
        onnxscript.optimizer.fold_constants(program.model)
        onnxscript.optimizer.remove_unused_nodes(program.model)
        # what a user of the file alone needs to tokenise text (see `read_config`)
        program.model.metadata_props[CONFIG_KEY] = config_json(wrapper.model.config)
        program.save(str(path), external_data=external)


def _export_torchscript(wrapper: ExportWrapper, example: dict[str, torch.Tensor], path: Path
                        ) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, tuple(example.values()), check_trace=False)
        # through a Python file: its OSError says why a write failed (a full disk), where
        # torch's own writer says only "file write failed"
        with open(path, "wb") as f:
            torch.jit.save(traced, f,
                           _extra_files={TORCHSCRIPT_CONFIG: config_json(wrapper.model.config)})


def _load_and_run(fmt: str, path: Path, inputs: dict[str, torch.Tensor]) -> tuple[Any, ...]:
    """The written model loaded back as a user would, run on `inputs`."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes about unused initialisers
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return tuple(session.run(None, as_numpy(inputs)))
    if fmt == "torchscript":
        with _quiet(), torch.no_grad():
            return _as_tuple(torch.jit.load(str(path), map_location="cpu")(*inputs.values()))
    from affcli.models import from_pretrained

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ResNet18 random init: weights follow
        loaded = from_pretrained(path)
    with _export_mode(loaded), torch.no_grad():
        return _as_tuple(export_wrapper(loaded)(*inputs.values()))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines, log messages and warnings (deprecated TorchScript,
    constants in traces, folds it could not evaluate...): each export is checked
    numerically instead."""
    import io
    import logging

    # (transformers: tracing reads every property, and one logs about a loss we never use)
    loggers = [logging.getLogger(name)
               for name in ("onnxscript", "onnx_ir", "torch.onnx", "transformers")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
