"""Export: the portable ops against the CPU path, and each model through ONNX (onnxruntime),
TorchScript and safetensors, checked against its PyTorch output.

Each model is built once and exported once per format (module fixtures); the tests then
run the exported files at batch sizes (and, where the graph allows, cloud sizes and text
lengths) other than the traced ones. PointRefer and IAGNet are built for 512-point clouds
(the smallest the encoder takes); LMAffordance3D needs its 2048.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from affcli import models, ops
from affcli.bench.runs import realistic_clouds
from affcli.engine import exporter
from affcli.engine.exporter import ExportCheckError, as_numpy, example_inputs, export_wrapper
from affcli.errors import AffError

MODELS = ("pointrefer", "iagnet", "lmaffordance3d")
# PointRefer's ONNX graph is checked the same way on a trained run, through `affcli export`
# (test_export_cli.py): one ONNX export of it per suite is enough (each takes ~20 s)
ONNX_HERE = ("iagnet", "lmaffordance3d")
POINTS = {"pointrefer": 512, "iagnet": 512, "lmaffordance3d": 2048}
T = TypeVar("T")


# --------------------------------------------------------------------------- portable ops


def _both(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], T]) -> list[T]:
    """fn() with AFFCLI_OPS=cpu, then with AFFCLI_OPS=torch."""
    out = []
    for backend in ("cpu", "torch"):
        monkeypatch.setenv("AFFCLI_OPS", backend)
        out.append(fn())
    return out


def _assert_same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        if x.dtype == torch.int64:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_backend_selection(monkeypatch):
    x = torch.zeros(1, 4, 3)
    monkeypatch.setenv("AFFCLI_OPS", "torch")
    assert ops.backend_for(x) == "torch"
    monkeypatch.setenv("AFFCLI_OPS", "cpu")
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append((ops.exporting(), ops.backend_for(t)))
            return t + 1

    torch.jit.trace(Probe(), (x,), check_trace=False)
    assert seen[-1] == (True, "torch")  # recording a graph overrides AFFCLI_OPS
    Probe()(x)
    assert seen[-1] == (False, "cpu")


@pytest.mark.parametrize("start", [0, 7])
def test_portable_sampling_and_grouping_match_cpu(monkeypatch, start):
    xyz = realistic_clouds(3, 2048, seed=1)

    def run() -> list[torch.Tensor]:
        fps = ops.farthest_point_sample(xyz, 512, start=start)
        centers = torch.gather(xyz, 1, fps.unsqueeze(-1).expand(-1, -1, 3))
        balls = [ops.ball_query(xyz, centers, r, k) for r, k in ((0.1, 32), (0.4, 128))]
        coarse = ops.farthest_point_sample(centers, 128)
        sub = torch.gather(centers, 1, coarse.unsqueeze(-1).expand(-1, -1, 3))
        # fewer points than slots (k > N), and balls with no point in them
        balls.append(ops.ball_query(sub, sub[:, :64], 0.4, 200))
        balls.append(ops.ball_query(xyz, centers + 5.0, 0.2, 16))
        return [fps, *balls, coarse]

    cpu, portable = _both(monkeypatch, run)
    _assert_same(cpu, portable)
    assert (portable[-2] == 0).all()  # empty balls: all zeros, as the CPU path


def test_portable_interpolation_matches_cpu_with_ties(monkeypatch):
    xyz = realistic_clouds(2, 2048, seed=2)
    known = torch.cat([xyz[:, ::8], xyz[:, :16]], dim=1)  # duplicates: exactly tied distances
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 64, known.shape[1], generator=g)

    def run() -> list[torch.Tensor]:
        dist, idx = ops.three_nn(xyz, known)
        weight = torch.rand(2, 2048, 3, generator=torch.Generator().manual_seed(1))
        f = feats.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        out = ops.three_interpolate(f, idx, w)
        grouped = ops.gather_group(f, idx)
        (out.square().sum() + grouped.sum()).backward()
        return [dist, idx, out.detach(), grouped.detach(), f.grad, w.grad]

    cpu, portable = _both(monkeypatch, run)
    _assert_same(cpu, portable)


def test_fps_loops_recorded_in_graphs_match_cpu(monkeypatch):
    """The FPS loop as recorded by jit.trace (a TorchScript loop) and by torch.export (a
    while_loop): same indices as the CPU path, at other batch and cloud sizes too."""
    monkeypatch.setenv("AFFCLI_OPS", "cpu")

    class FPS(torch.nn.Module):
        def forward(self, xyz: torch.Tensor) -> torch.Tensor:
            return ops.farthest_point_sample(xyz, 64, start=3)

    xyz = realistic_clouds(2, 512, seed=3)
    other = realistic_clouds(3, 700, seed=4)
    traced = torch.jit.trace(FPS(), (xyz,))
    batch, num = torch.export.Dim("batch"), torch.export.Dim("num", min=64)
    exported = torch.export.export(FPS(), (xyz,), dynamic_shapes=({0: batch, 1: num},))
    for cloud in (xyz, other):
        expected = FPS()(cloud)
        assert torch.equal(traced(cloud), expected)
        assert torch.equal(exported.module()(cloud), expected)


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def built():
    """built(name) -> the model in eval mode (seeded, built once per module)."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # random ResNet18 init
                cache[name] = models.build(name, n_points=POINTS[name]).eval()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    """exported(name, fmt) -> (model, report), each export written once per module."""
    base = tmp_path_factory.mktemp("export")
    cache: dict[tuple[str, str], tuple[torch.nn.Module, exporter.ExportReport]] = {}
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ""}

    def get(name: str, fmt: str) -> tuple[torch.nn.Module, exporter.ExportReport]:
        if (name, fmt) not in cache:
            model = built(name)
            report = exporter.export(model, fmt, base / f"{name}{suffix[fmt]}", batch_size=2)
            cache[name, fmt] = model, report
        return cache[name, fmt]

    return get


def _expected(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = export_wrapper(model)(*inputs.values())
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _max_diff(got: Sequence[Any], expected: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(g) - e).max()) for g, e in zip(got, expected, strict=True))


def _other_inputs(model: torch.nn.Module, name: str, b: int, seed: int
                  ) -> dict[str, torch.Tensor]:
    """Sample inputs at batch b; another cloud size where the graph takes one."""
    inputs = example_inputs(model, b, seed)
    if name != "lmaffordance3d":
        inputs["points"] = realistic_clouds(b, 700, seed=seed)
    return inputs


@pytest.mark.parametrize("name", ONNX_HERE)
def test_onnx_matches_pytorch_at_other_batch_sizes(name, exported):
    import onnx
    import onnxruntime as ort

    model, report = exported(name, "onnx")
    assert report.max_abs_diff <= 1e-4 and (report.batch_size, report.check_batch_size) == (2, 3)
    graph = onnx.load(str(report.path), load_external_data=False)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.graph.input}
    assert list(dims) == report.input_names == list(export_wrapper(model).input_names)
    assert all(d[0] == "batch" for d in dims.values())
    assert dims["points"][1] == ("num_points" if name != "lmaffordance3d" else 2048)
    assert [o.name for o in graph.graph.output] == report.output_names
    # export() checked batch 3 against PyTorch; here batch 1, another cloud size where the
    # graph takes one, and for LMAffordance3D a shorter text than the traced one
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    inputs = _other_inputs(model, name, 1, 11)
    if name == "lmaffordance3d":  # prepared from the .onnx file and the tokenizer alone
        inputs = exporter.graph_inputs(report.path, inputs["points"], text="Lift it.",
                                       image=inputs["image"])
        assert inputs["input_ids"].shape[1] < example_inputs(model, 2)["input_ids"].shape[1]
    assert _max_diff(session.run(None, as_numpy(inputs)), _expected(model, inputs)) <= 1e-4
    assert exporter.read_config(report.path) == model.config


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_round_trip(name, exported):
    model, report = exported(name, "torchscript")
    assert report.max_abs_diff <= 1e-4
    loaded = torch.jit.load(str(report.path))
    inputs = _other_inputs(model, name, 1, 13)
    with torch.no_grad():
        out = loaded(*inputs.values())
    got = [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    assert _max_diff(got, _expected(model, inputs)) <= 1e-5
    assert exporter.read_config(report.path) == model.config


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip(name, exported):
    model, report = exported(name, "safetensors")
    assert report.max_abs_diff == 0.0
    assert sorted(p.name for p in report.path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((report.path / "config.json").read_text())["model_type"] == name
    # (export() ran from_pretrained's model on sample inputs: identical outputs, diff 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = models.from_pretrained(report.path)
    own, loaded = model.state_dict(), back.state_dict()
    assert list(own) == list(loaded) and all(torch.equal(own[k], loaded[k]) for k in own)


def test_portable_ops_give_the_same_model_outputs(built, monkeypatch):
    for name in MODELS:
        model = built(name)
        inputs = example_inputs(model, 1, seed=15)
        cpu, portable = _both(monkeypatch, lambda m=model, i=inputs: _expected(m, i))
        assert _max_diff(portable, cpu) <= 1e-5, name


# --------------------------------------------------------------------------- the API


def test_graph_inputs_tokenise_like_the_model(built):
    model = built("pointrefer")
    cloud = realistic_clouds(1, 512, seed=0)[0]
    inputs = exporter.graph_inputs(model, cloud, text="Where to sit?")
    assert list(inputs) == ["points", "input_ids", "attention_mask"]
    assert inputs["points"].shape == (1, 512, 3) and inputs["input_ids"].dtype == torch.int64
    own = model.tokenize(["Where to sit?"])
    assert torch.equal(inputs["input_ids"], own["input_ids"])
    assert torch.equal(inputs["attention_mask"], own["attention_mask"])
    assert inputs["input_ids"].shape == (1, model.config.text_tokens)
    with torch.no_grad():
        direct = model(cloud[None], ["Where to sit?"]).heatmap
    torch.testing.assert_close(torch.from_numpy(_expected(model, inputs)[0]), direct,
                               atol=0, rtol=0)
    with pytest.raises(AffError, match="question"):
        exporter.graph_inputs(model, cloud)
    # from the config alone (only the tokenizer is loaded): the same ids
    alone = exporter.tokenize(model.config, ["Where to sit?", "Grasp it."])
    assert torch.equal(alone["input_ids"][:1], own["input_ids"])
    iag = built("iagnet")
    boxed = exporter.graph_inputs(iag, realistic_clouds(2, 512), image=torch.zeros(2, 3, 224, 224),
                                  subject_box=[0, 0, 100, 100], object_box=[50, 50, 200, 200])
    assert boxed["subject_box"].shape == (2, 4)
    with pytest.raises(AffError, match="text"):
        exporter.tokenize(iag, "grasp")


def test_bad_requests_are_input_errors(built, tmp_path):
    model = built("iagnet")
    with pytest.raises(AffError, match="--format"):
        exporter.export(model, "tflite", tmp_path / "m.tflite")
    with pytest.raises(AffError, match="--batch-size"):
        exporter.export(model, "onnx", tmp_path / "m.onnx", batch_size=0)
    with pytest.raises(AffError, match="is a directory"):
        exporter.export(model, "torchscript", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AffError, match="not a directory"):
        exporter.export(model, "safetensors", tmp_path / "file")
    with pytest.raises(AffError, match="cannot export"):
        exporter.export(torch.nn.Linear(2, 2), "onnx", tmp_path / "m.onnx")


def test_a_failed_check_writes_nothing(built, tmp_path, monkeypatch):
    model = built("iagnet")
    monkeypatch.setattr(exporter, "TOLERANCE", -1.0)  # any difference, even 0, fails
    with pytest.raises(ExportCheckError) as info:
        exporter.export(model, "safetensors", tmp_path / "out", batch_size=1)
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []  # neither the target nor the scratch directory


def test_random_fps_start_is_exported_with_start_zero(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = models.build("iagnet", n_points=512, fps_start=None)
    model.train()
    report = exporter.export(model, "safetensors", tmp_path / "iag", batch_size=1)
    assert report.max_abs_diff == 0.0 and "fps_start" in report.notes[0]
    assert model.training and model.point_encoder.sa1.fps_start is None  # restored
    assert json.loads((tmp_path / "iag" / "config.json").read_text())["fps_start"] is None
