"""A run's inference weights (`best.safetensors`): written beside best.pt, read by predict,
eval and export in its place while it belongs to that best.pt, and on their own when
best.pt is gone; a stale or torn file never gives wrong weights."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from affcli.engine import checkpoint as ckpt
from affcli.errors import AffError
from affcli.models.config import weights_to_be_loaded


def _heatmap(model: torch.nn.Module) -> np.ndarray:
    gen = torch.Generator().manual_seed(3)
    points = torch.rand(2, 512, 3, generator=gen) * 2 - 1
    with torch.no_grad():
        return model(points, ["Where would you grasp this mug?"] * 2).heatmap.numpy()


def test_a_run_writes_weights_that_load_as_its_best_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # copy2 keeps the modification times
    weights = run / ckpt.INFERENCE
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    assert meta["model_type"] == "pointrefer" and meta["format"] == ckpt.WEIGHTS_FORMAT
    assert weights.stat().st_size < 0.7 * (run / ckpt.BEST).stat().st_size  # no optimizer

    fast, doc, source = ckpt.load_model(run)
    assert source == weights
    full, full_doc, full_source = ckpt.load_model(run / ckpt.BEST)
    assert full_source == run / ckpt.BEST
    assert doc["data"] == full_doc["data"] and doc["train_config"] == full_doc["train_config"]
    a, b = fast.state_dict(), full.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(_heatmap(fast), _heatmap(full))

    # a best.pt written after the weights (a kill in between): the weights are stale
    os.utime(run / ckpt.BEST, ns=(1, 2))
    assert ckpt.load_model(run)[2] == run / ckpt.BEST


def test_weights_alone_serve_predict_and_eval(trained_run, run_cli, tmp_path):
    run = tmp_path / "shared-run"
    run.mkdir()
    for name in (ckpt.INFERENCE, "config.yaml"):
        shutil.copy2(trained_run / name, run / name)
    points = np.random.default_rng(0).normal(size=(900, 3)).astype(np.float32)
    np.save(tmp_path / "cloud.npy", points)
    code, out, err = run_cli("predict", "--model", run, tmp_path / "cloud.npy", "--question",
                             "Where would you grasp this mug?", "--out", tmp_path / "o",
                             "--json")
    assert code == 0, err
    assert len(json.loads(out)["outputs"]) == 2 and ckpt.INFERENCE in err
    # eval finds the dataset recorded in the weights' metadata
    code, out, err = run_cli("eval", run, "--split", "test", "--json", "--no-plots")
    assert code == 0, err
    assert 0.0 <= json.loads(out)["overall"]["aiou"] <= 1.0


def test_torn_weights_fall_back_or_exit_2(trained_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    weights = run / ckpt.INFERENCE
    weights.write_bytes(weights.read_bytes()[: 4096])
    assert ckpt.load_model(run)[2] == run / ckpt.BEST  # unreadable: best.pt is there
    (run / ckpt.BEST).unlink()
    (run / ckpt.LAST).unlink()
    with pytest.raises(AffError, match=ckpt.INFERENCE):
        ckpt.load_model(run)
    code, _, err = run_cli("predict", "--model", run, tmp_path / "missing.npy",
                           "--question", "q", "--out", tmp_path / "o")
    assert code == 2 and ckpt.INFERENCE in err


def test_building_for_a_checkpoint_skips_and_restores_initialisation():
    before = torch.nn.init.kaiming_uniform_
    torch.manual_seed(0)
    with weights_to_be_loaded():
        torch.nn.Linear(4, 3)
        assert torch.nn.init.kaiming_uniform_ is not before
    assert torch.nn.init.kaiming_uniform_ is before
    state = torch.get_rng_state()
    torch.manual_seed(0)
    assert torch.equal(state, torch.get_rng_state())  # no draw was taken from the RNG


def test_bench_predict_times_every_row(trained_run, run_cli):
    """`affcli bench predict` in its smallest form: every row is a real process that ran
    (a bad option must exit 2, the others 0, or the command fails)."""
    code, out, err = run_cli("bench", "predict", "--model", trained_run, "--shapes", "2",
                             "--repeats", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["seconds"]) == {"import_torch", "predict_help", "bad_option", "one_mesh",
                                   "one_cloud"}
    assert all(0 < s < 120 for s in doc["seconds"].values())
    assert doc["many_shapes_s"] > 0 and doc["forward_per_shape_s"] > 0
    assert set(doc["targets"]) == {"help_and_bad_option_under_0.5_s",
                                   "one_shape_within_1.5_s_of_import_torch",
                                   "per_shape_within_1.3x_forward"}
