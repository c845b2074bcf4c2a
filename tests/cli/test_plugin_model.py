"""A fourth model from another package: examples/plugin_model, installed for real (pip, its
own pyproject.toml and entry point), goes through the unchanged CLI: listed by `affcli
models`, trained, evaluated with named tables, used by predict on a real PIAD cloud and
exported with the parity check. Each command runs as a user runs it, in its own
process, with the plugin's install directory on PYTHONPATH (never in affcli's venv, so
the other tests see only the built-in models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "examples" / "plugin_model"
AFFCLI = Path(sys.executable).parent / "affcli"


@pytest.fixture(scope="module")
def plugin_env(build_once, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that has the plugin installed (a real `pip install`
    into its own folder, built from a copy so the source tree gets no build files)."""
    source = tmp_path_factory.mktemp("src") / "plugin_model"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))

    def install(target: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    target = build_once("plugin-site", install)
    assert (target / "affcli_pointfilm.py").is_file()
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def affcli(env: dict[str, str], *args: object, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AFFCLI), *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_plugin_is_listed_with_its_origin(plugin_env):
    done = affcli(plugin_env, "models", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["models"]}
    assert rows["pointfilm"]["origin"] == "affcli-pointfilm 0.1.0"
    assert rows["pointrefer"]["origin"] == "built-in"
    assert rows["pointfilm"]["inputs"][0]["option"] == "--question"
    assert rows["pointfilm"]["datasets"] == ["laso"]
    # predict's options come from the declarations: the plugin is named beside PointRefer
    done = affcli(plugin_env, "predict", "--help")
    assert done.returncode == 0, done.stderr
    assert "pointfilm, pointrefer" in " ".join(done.stdout.split())


@pytest.mark.slow
def test_train_eval_predict_export_through_the_cli(plugin_env, prepared, piad_demo, tmp_path):
    run = tmp_path / "runs" / "pointfilm" / "seen-1"
    done = affcli(plugin_env, "train", "pointfilm", "--data", prepared("laso"), "--epochs", 1,
                  "--batch-size", 4, "--max-batches", 3, "--points", 512, "--workers", 0,
                  "--out", run)
    assert done.returncode == 0, done.stderr
    assert (run / "best.pt").is_file() and (run / "test_metrics.json").is_file()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(record["train_loss"])
    # the test split's named tables at the end of training (eval prints the same ones)
    out = " ".join(done.stdout.split())
    assert "pointfilm on laso test (best epoch 1 by aiou): per object" in out
    assert "per affordance" in out and "aIoU" in out

    # the final test's pictures are drawn for a plugin's model too
    assert (run / "plots" / "test" / "per_affordance.png").is_file()

    # eval of the plugin's run, as JSON
    done = affcli(plugin_env, "eval", run, "--split", "test", "--json", "--no-plots")
    doc = json.loads(done.stdout)
    assert doc["model_type"] == "pointfilm" and "plots" not in doc
    assert 0 <= doc["overall"]["aiou"] <= 1 and 0 <= doc["overall"]["auc"] <= 1

    # predict on a real PIAD cloud; without --model the newest run of a model that takes
    # --question is found under runs/ (here: the plugin's, the only one)
    shape = piad_demo / "Point_Test_Chair_1.txt"
    done = affcli(plugin_env, "predict", shape, "--question", "Where would you sit on this?",
                  "--out", tmp_path / "pred", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"using the newest run {Path('runs/pointfilm/seen-1')}" in done.stderr
    line = json.loads(done.stdout)
    assert line["points"] == 2048 and 0 <= line["min"] <= line["max"] <= 1
    scores = np.load(tmp_path / "pred" / f"{shape.stem}.npy")
    assert scores.shape == (2048,) and scores.std() > 0

    # an option no installed model takes with --question names the conflict
    done = affcli(plugin_env, "predict", shape, "--model", run, "--question", "q",
                  "--instruction", "x")
    assert done.returncode == 2 and "--instruction: not used by pointfilm" in done.stderr

    # export (TorchScript: the graph the plugin declares, checked against PyTorch by the
    # exporter itself; ONNX reads the same declarations, tested on the built-in models)
    done = affcli(plugin_env, "export", run, "--format", "torchscript", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model_type"] == "pointfilm" and report["max_abs_diff"] <= 1e-4
    assert report["input_names"] == ["points", "input_ids", "attention_mask"]
    assert Path(report["path"]).is_file() and Path(report["path"]).parent == run

    # the plugin declares no official checkpoints: import-checkpoint says so, exit 2
    (tmp_path / "x.pt").write_bytes(b"")
    done = affcli(plugin_env, "import-checkpoint", "pointfilm", tmp_path / "x.pt",
                  "--out", tmp_path / "imported")
    assert done.returncode == 2
    assert "no official-checkpoint mapping for 'pointfilm'" in done.stderr
