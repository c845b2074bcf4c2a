"""`affcli export` on a trained run: the ONNX file runs in onnxruntime (through the example
script) and scores real PIAD shapes as `affcli predict` does; default output names; refusals
with exit 2; a failed parity check exits 1 and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from affcli.bench.runs import realistic_clouds
from affcli.cli.export import default_output
from affcli.engine import exporter
from affcli.engine.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Where would you grasp this object?"


def test_onnx_export_runs_in_onnxruntime_like_predict(run_cli, trained_run, piad_demo,
                                                      tmp_path):
    onnx_file = tmp_path / "pointrefer.onnx"
    code, out, err = run_cli("export", trained_run, "--format", "onnx", "--out", onnx_file,
                             "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["path"] == str(onnx_file) and onnx_file.is_file()
    assert report["model_type"] == "pointrefer"
    assert report["input_names"] == ["points", "input_ids", "attention_mask"]
    assert 0 <= report["max_abs_diff"] <= 1e-4 and report["check_batch_size"] == 3
    assert report["bytes"] == onnx_file.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["pointrefer.onnx"]  # no scratch left

    # the graph: opset, a dynamic batch and cloud size, the model's config in its metadata
    graph = onnx.load(str(onnx_file), load_external_data=False)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.graph.input}
    assert dims["points"][:2] == ["batch", "num_points"] and dims["input_ids"][0] == "batch"
    model, _, _ = load_model(trained_run)
    assert exporter.read_config(onnx_file) == model.config
    # batch 1 and 700 points (export checked batch 3 at 512), inputs made from the file alone
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feed = exporter.graph_inputs(onnx_file, realistic_clouds(1, 700, seed=5), text=QUESTION)
    with torch.no_grad():
        expected = exporter.export_wrapper(model)(*feed.values()).numpy()
    got = session.run(["heatmap"], exporter.as_numpy(feed))[0]
    assert got.shape == (1, 700) and np.abs(got - expected).max() <= 1e-4

    # the example script: onnxruntime on two real PIAD files, scores per original point
    shapes = []
    for name in ("Point_Test_Bag_1.txt", "Point_Test_Chair_1.txt"):
        shapes.append(tmp_path / name)
        shapes[-1].write_bytes((piad_demo / name).read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "onnx_inference.py"),
                           str(onnx_file), *map(str, shapes), "--question", QUESTION],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["path"] for d in lines] == [str(s) for s in shapes]

    code, out, err = run_cli("predict", *shapes, "--model", trained_run, "--question",
                             QUESTION, "--out", tmp_path / "torch", "--quiet")
    assert code == 0, err
    for shape in shapes:
        via_onnx = np.load(shape.with_suffix(".scores.npy"))
        via_torch = np.load(tmp_path / "torch" / f"{shape.stem}.npy")
        assert via_onnx.shape == via_torch.shape == (2048,)
        assert np.abs(via_onnx - via_torch).max() <= 1e-4
        assert via_torch.std() > 0


def test_torchscript_and_safetensors_default_outputs(run_cli, trained_run, tmp_path):
    # a copy of the run's checkpoint: default outputs go beside it
    ckpt = tmp_path / "best.pt"
    os.link(trained_run / "best.pt", ckpt)
    code, out, err = run_cli("export", ckpt, "-f", "TorchScript")
    assert code == 0, err
    assert (tmp_path / "best.torchscript").is_file()
    assert "pointrefer exported as torchscript" in out and "max |diff|" in out
    code, out, err = run_cli("export", ckpt, "-f", "safetensors", "--json")
    assert code == 0, err
    pretrained = tmp_path / "best_pretrained"
    assert json.loads(out)["max_abs_diff"] == 0.0
    assert sorted(p.name for p in pretrained.iterdir()) == ["config.json", "model.safetensors"]
    # ...which is itself something to export, and to predict with
    code, _, err = run_cli("export", pretrained, "-f", "torchscript", "-q")
    assert code == 0, err
    assert (pretrained / "model.torchscript").is_file()
    assert exporter.read_config(pretrained / "model.torchscript").model_type == "pointrefer"

    # existing outputs are kept unless --force
    before = (tmp_path / "best.torchscript").stat().st_mtime_ns
    code, _, err = run_cli("export", ckpt, "-f", "torchscript")
    assert code == 2 and "best.torchscript" in err and "--force" in err
    assert (tmp_path / "best.torchscript").stat().st_mtime_ns == before
    code, _, err = run_cli("export", ckpt, "-f", "torchscript", "--force", "-q")
    assert code == 0, err


def test_default_output_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    assert default_output(run, "onnx") == run / "best.onnx"
    assert default_output(run, "torchscript") == run / "best.torchscript"
    assert default_output(run, "safetensors") == run / "best_pretrained"
    assert default_output(run / "last.pt", "onnx") == run / "last.onnx"
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "config.json").write_text("{}")
    assert default_output(pre, "onnx") == pre / "model.onnx"
    assert default_output(pre, "safetensors") == tmp_path / "pre_pretrained"


@pytest.mark.parametrize("args, where", [
    (["--format", "tflite"], "--format"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_options_exit_2(run_cli, trained_run, args, where):
    code, _, err = run_cli("export", trained_run, *args)
    assert code == 2 and where in err


def test_bad_sources_exit_2_naming_them(run_cli, tmp_path):
    code, _, err = run_cli("export", tmp_path / "nothing-here")
    assert code == 2 and "nothing-here" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run_cli("export", junk, "--out", tmp_path / "x.onnx")
    assert code == 2 and "junk.pt" in err
    assert not (tmp_path / "x.onnx").exists()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    code, _, err = run_cli("export", empty, "--out", tmp_path / "x.onnx")
    assert code == 2 and "empty-run" in err


def test_failed_parity_check_exits_1_and_writes_nothing(run_cli, trained_run, tmp_path,
                                                        monkeypatch):
    monkeypatch.setattr(exporter, "TOLERANCE", -1.0)  # no export can pass
    out = tmp_path / "m.torchscript"
    code, _, err = run_cli("export", trained_run, "-f", "torchscript", "--out", out)
    assert code == 1 and "differs from the PyTorch model" in err
    assert list(tmp_path.iterdir()) == []
