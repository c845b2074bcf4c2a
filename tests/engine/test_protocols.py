"""The papers' evaluation protocols: LASO's voting, the selection metric per recipe, a
validation set carved from train with nothing shared, and the note when a checkpoint was
chosen on the split it is scored on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from affcli.data.datasets import open_dataset
from affcli.data.prepare import prepare
from affcli.data.splits import carve_validation
from affcli.data.synth.run import synthesize
from affcli.engine import trainer as trainer_mod
from affcli.engine.checkpoint import load_model
from affcli.engine.distributed import Process
from affcli.engine.recipes import resolve
from affcli.engine.trainer import Trainer
from affcli.models import model_class
from affcli.nn.pointnet2 import SetAbstractionMSG


@pytest.fixture(scope="module")
def carvable(build_once):
    """carvable(kind) -> a file with three training shapes per class (the shared fixtures'
    K=2 leaves one, and a class needs two to lend one to validation)."""

    def get(kind: str):
        raw = build_once(f"raw-{kind}-k4", lambda out: synthesize(kind, out, seed=7,
                                                                  shapes_per_class=4))
        return build_once(f"{kind}-k4.h5", lambda out: prepare(kind, raw, "seen", "full", out))

    return get


def test_votes_average_seeded_passes_from_random_fps_starts(run_cli, trained_run, prepared,
                                                            tmp_path):
    saved = tmp_path / "voted.h5"
    code, out, err = run_cli("eval", trained_run, "--split", "val", "--votes", "3",
                             "--batch-size", "8", "--save-predictions", saved, "--json",
                             "--no-plots")
    assert code == 0, err
    assert json.loads(out)["votes"] == 3
    with h5py.File(saved) as f:
        voted = f["heatmap"][()]

    # LASO's evaluate(num_votes=3), written out: per batch, seed v, forward, sum, divide
    model, _, _ = load_model(trained_run)
    model.eval()
    for m in model.modules():
        if isinstance(m, SetAbstractionMSG):
            m.fps_start = None  # the reference's FPS draws its start
    data = open_dataset(prepared("laso"), "val", num_points=512)
    rows = []
    with torch.no_grad():
        for start in range(0, len(data), 8):
            items = [data[i] for i in range(start, min(start + 8, len(data)))]
            points = torch.stack([it["points"] for it in items])
            questions = [it["question"] for it in items]
            total = torch.zeros(points.shape[:2])
            for v in range(3):
                torch.manual_seed(v)
                total += model(points, questions).heatmap
            rows.append((total / 3).numpy())
    expected = np.concatenate(rows)
    np.testing.assert_allclose(voted, expected, atol=1e-6, rtol=0)

    # one pass from start 0 (what --votes 1 runs) is another prediction: the votes did draw
    # their starts (how far apart depends on the briefly trained weights; float noise alone
    # stays below 1e-6)
    for m in model.modules():
        if isinstance(m, SetAbstractionMSG):
            m.fps_start = 0
    with torch.no_grad():
        points = torch.stack([data[i]["points"] for i in range(len(data))])
        single = model(points, [data[i]["question"] for i in range(len(data))]).heatmap
    assert np.abs(single.numpy() - voted).max() > 1e-4


def test_voting_leaves_the_global_rng_alone(trained_run, prepared):
    from affcli.engine.evaluator import predict

    model, _, _ = load_model(trained_run)
    data = open_dataset(prepared("laso"), "val", num_points=512)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    predict(model, data, 16, Process(), votes=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(m.fps_start == 0 for m in model.modules() if isinstance(m, SetAbstractionMSG))


def test_eval_says_when_the_checkpoint_was_chosen_on_the_scored_split(run_cli, trained_run):
    code, _, err = run_cli("eval", trained_run, "--split", "val", "--votes", "1", "--no-plots")
    assert code == 0, err
    assert "chosen on the val split it is scored on" in err
    code, _, err = run_cli("eval", trained_run, "--split", "test", "--votes", "1", "--no-plots")
    assert code == 0, err
    assert "chosen on" not in err


@pytest.mark.parametrize("kind", ["laso", "piad"])
def test_carved_validation_shares_no_shape_or_image_with_training(kind, carvable):
    path = carvable(kind)
    carve = carve_validation(path, 0.25)
    again = carve_validation(path, 0.25)
    assert np.array_equal(carve.val.rows, again.val.rows)  # deterministic
    rows_t, rows_v = carve.train.rows, carve.val.rows
    assert len(rows_v) > 0 and not np.intersect1d(rows_t, rows_v).size
    with h5py.File(path) as f:
        g = f["train"]
        n_rows = len(g["samples/object"])
        shape_object = g["shapes/object"][()]
        names = g["samples/image_name"].asstr()[()] if kind == "piad" else None
    assert sorted(np.concatenate([rows_t, rows_v]).tolist()) == list(range(n_rows))
    # every class with two or more shapes lends about a quarter of them, never all
    for c in np.unique(shape_object):
        n = int((shape_object == c).sum())
        held = int((shape_object[carve.val_shapes] == c).sum())
        assert held == (0 if n < 2 else min(max(1, round(0.25 * n)), n - 1))

    train = open_dataset(path, "train", pairing_num=2, view=carve.train)
    val = open_dataset(path, "train", view=carve.val)
    assert len(train) == len(rows_t) and len(val) == len(rows_v)
    val_shapes = {int(val[i]["shape"]) for i in range(len(val))}
    assert val_shapes <= set(carve.val_shapes.tolist())
    train_shapes = set()
    for epoch in range(2):
        train.set_epoch(epoch)
        for i in range(len(train)):
            shape = train[i]["shape"]
            train_shapes |= set(np.atleast_1d(np.asarray(shape)).tolist())
    assert train_shapes and not train_shapes & set(carve.val_shapes.tolist())
    if names is not None:
        assert not set(names[rows_t]) & set(names[rows_v])
        # a held-out image is paired with a held-out cloud of its own class
        item = val[0]
        assert shape_object[int(item["shape"])] == item["object"]
        assert item["image"].shape == (3, 224, 224)
        assert item["points"].dim() == 2  # one evaluation cloud, not a training pair


@pytest.mark.slow
def test_select_by_chooses_the_epoch_its_metric_prefers(carvable, tmp_path, monkeypatch):
    """A real PointRefer run on a carved validation set whose validation scores are
    constructed so that aIoU peaks at epoch 1 and AUC at epoch 2."""
    crafted = [{"aiou": 0.30, "auc": 0.60, "sim": 0.4, "mae": 0.20},
               {"aiou": 0.20, "auc": 0.80, "sim": 0.3, "mae": 0.25}]
    real_score = trainer_mod.score

    def fake_score(pred):  # the two validations get crafted figures, the final test real ones
        out = real_score(pred)
        if crafted:
            out["overall"] = {**out["overall"], **crafted.pop(0)}
        return out

    monkeypatch.setattr(trainer_mod, "score", fake_score)
    # as on a machine without the tensorboard package: nothing logged, nothing said
    monkeypatch.setattr(trainer_mod.tracking, "available", lambda: False)
    given = {"data": str(carvable("laso")), "num_points": 512, "workers": 0, "epochs": 2,
             "batch_size": 2, "max_batches": 1, "test_split": "test", "select_by": "auc",
             "val_from_train": 0.25, "votes": 2, "out": str(tmp_path / "run"), "plots": False,
             "eval_batch_size": 16,
             "model_config": {"freeze_text_encoder": True}}
    cfg = resolve("pointrefer", model_class("pointrefer").train_recipe, None, given)
    notes = []
    trainer = Trainer(cfg, Process(), hooks={"note": notes.append, "warn": notes.append})
    carved = len(carve_validation(carvable("laso"), 0.25).val.rows)
    assert len(trainer.val_set) == carved
    summary = trainer.run()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["best"] for r in records] == [True, True]  # epoch 2 wins on AUC
    assert summary["best_epoch"] == 2 and summary["select_by"] == "auc"
    assert max(records, key=lambda r: r["val"]["aiou"])["epoch"] == 1
    assert records[0]["val_split"] == "train-carved" and records[0]["val"]["count"] == carved
    test = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert test["best_epoch"] == 2 and test["votes"] == 2 and test["selected_on"] == "train-carved"
    assert "val_from_train: 0.25" in (tmp_path / "run" / "config.yaml").read_text()
    assert not (tmp_path / "run" / "tb").exists() and not any("TensorBoard" in n for n in notes)
    assert not (tmp_path / "run" / "plots").exists()  # plots: false


def test_compare_lists_finished_runs_and_names_the_broken_one(run_cli, trained_run, tmp_path,
                                                              monkeypatch):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "a-tested")
    shutil.copytree(trained_run, runs / "b-untested")
    (runs / "b-untested" / "test_metrics.json").unlink()
    shutil.copytree(trained_run, runs / "c-broken")
    (runs / "c-broken" / "metrics.jsonl").write_text('{"epoch": 1, "val": \n')

    code, out, err = run_cli("compare", str(runs / "*"), "--json", "--sort", "aiou")
    assert code == 2
    assert "c-broken: metrics.jsonl line 1" in err
    doc = json.loads(out)
    rows = {Path(r["run"]).name: r for r in doc["runs"]}
    assert set(rows) == {"a-tested", "b-untested"}
    assert [Path(u["run"]).name for u in doc["unreadable"]] == ["c-broken"]
    test = json.loads((trained_run / "test_metrics.json").read_text())
    tested, untested = rows["a-tested"], rows["b-untested"]
    assert tested["aiou"] == test["overall"]["aiou"] and tested["scored_on"] == "test"
    assert tested["model"] == "pointrefer" and tested["epochs"] == 1
    assert tested["votes"] == test["votes"] == 1  # as the run was trained (--votes 1)
    record = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])
    assert untested["scored_on"] == "val:val" and untested["aiou"] == record["val"]["aiou"]
    assert untested["best_epoch"] == 1 and untested["select_by"] == "aiou"
    order = [Path(r["run"]).name for r in doc["runs"]]
    assert order == sorted(rows, key=lambda n: -rows[n]["aiou"])

    code, out, err = run_cli("compare", runs / "a-tested", runs / "b-untested", "--csv")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("run,model,setting,data,epochs") and len(lines) == 3
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: every cell on one line
    code, out, _ = run_cli("compare", runs / "a-tested")
    assert code == 0 and "a-tested" in out and "pointrefer" in out and "aIoU" in out
    code, _, err = run_cli("compare", tmp_path / "nowhere")
    assert code == 2 and "no such folder" in err


def test_corrupted_evaluation_identity_table_and_file(run_cli, trained_run, tmp_path,
                                                     monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # severity 0 is the identity: the grid machinery scores exactly the clean figures
    # (here in bfloat16, `--amp`: the same passes for the clean row and the cells)
    code, out, err = run_cli("eval", run, "--split", "val", "--votes", "1", "--json",
                             "--corrupt", "drop_local:0", "--amp")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["precision"] == "bfloat16"
    assert doc["cells"][0]["aiou"] == pytest.approx(doc["clean"]["aiou"], abs=1e-12)
    assert doc["cells"][0]["mae"] == pytest.approx(doc["clean"]["mae"], abs=1e-12)
    # a table, and the figures in the run folder
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli("eval", run, "--split", "val", "--votes", "1", "--corrupt",
                             "drop-global:5")
    assert code == 0, err
    words = " ".join(out.split())  # (the title wraps to the table's width)
    assert "under corruptions: aIoU (%) per severity" in words and "drop_global" in out
    saved = json.loads((run / "robustness-val-drop-global-5.json").read_text())
    assert [(c["corruption"], c["severity"]) for c in saved["cells"]] == [("drop_global", 5)]
    # even with three quarters of each cloud dropped, every sample keeps points to score
    assert saved["cells"][0]["count"] == saved["clean"]["count"] > 0
    # float32 by default; bfloat16 products moved the clean figures only a little
    assert saved["precision"] == "float32"
    for metric in ("aiou", "auc", "sim", "mae"):
        assert doc["clean"][metric] == pytest.approx(saved["clean"][metric], abs=0.01), metric
    assert saved["cells"][0]["mae"] != saved["clean"]["mae"]
    code, _, err = run_cli("eval", run, "--corrupt", "blur")
    assert code == 2 and "unknown corruption 'blur'" in err
