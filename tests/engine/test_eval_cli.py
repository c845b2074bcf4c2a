"""`affcli train` / `affcli eval` as users type them: tables with names, JSON, saved
predictions, and exit code 2 with the file named for every bad input."""

from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from affcli.engine import checkpoint as ckpt
from affcli.engine.evalplots import slug


def test_a_run_folder_holds_everything(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl", "test_metrics.json"} <= names
    doc = ckpt.load(trained_run / "last.pt")
    for key in ("model", "optimizer", "scaler", "state", "rng", "train_config", "model_config"):
        assert key in doc
    assert doc["train_config"]["num_points"] == 512 and doc["state"]["epoch"] == 1
    record = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and len(record["step_losses"]) == 2
    assert set(record["val"]) == {"aiou", "auc", "sim", "mae", "count"}
    # the training curves: a CSV row per epoch with the log's figures, and a picture
    rows = list(csv.DictReader(open(trained_run / "results.csv")))
    assert len(rows) == 1 and int(rows[0]["epoch"]) == 1 and rows[0]["best"] == "True"
    assert float(rows[0]["train_loss"]) == pytest.approx(record["train_loss"], rel=1e-12)
    for m in ("aiou", "auc", "sim", "mae"):
        assert float(rows[0][f"val_{m}"]) == pytest.approx(record["val"][m], rel=1e-12)
    with Image.open(trained_run / "results.png") as im:
        assert im.format == "PNG" and im.size == (1200, 640)
    _the_final_test_has_its_pictures(trained_run)
    _tensorboard_holds_the_logged_figures(trained_run, record)


def _the_final_test_has_its_pictures(run):
    plots = run / "plots" / "test"
    test = json.loads((run / "test_metrics.json").read_text())
    doc = json.loads((plots / "eval.json").read_text())
    assert doc["result"]["per_affordance"] == test["per_affordance"]
    # one bar per affordance (and per object) present in the split: the chart grows with them
    for name, key in (("per_affordance", "per_affordance"), ("per_object", "per_object")):
        with Image.open(plots / f"{name}.png") as im:
            assert im.format == "PNG" and im.size == (1200, max(300, 130 + 30 * len(test[key])))
    with Image.open(plots / "iou_thresholds.png") as im:
        assert im.size[0] == 1200
    # the threshold curve behind aIoU: its mean is the split's aIoU
    assert np.mean(doc["iou_curve"]["overall"]) == pytest.approx(test["overall"]["aiou"],
                                                                 abs=1e-9)
    # a gallery page per affordance with a positive sample; best >= median >= worst
    scored = {a for a, m in test["per_affordance"].items() if m["aiou"] is not None}
    assert sorted(p.stem for p in (plots / "gallery").glob("*.png")) == sorted(
        slug(a) for a in scored)
    for aff in scored:
        ranked = [g["metrics"]["aiou"] for g in doc["gallery"] if g["affordance"] == aff]
        assert ranked == sorted(ranked, reverse=True) and 1 <= len(ranked) <= 3
    assert all(g["text"] for g in doc["gallery"])  # the question is in the caption
    with np.load(plots / "gallery.npz") as arrays:
        assert arrays["points"].shape == (len(doc["gallery"]), 512, 3)


def _tensorboard_holds_the_logged_figures(run, record):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert [e.value for e in losses] == pytest.approx(record["step_losses"], rel=1e-6)
    for m in ("aiou", "auc", "sim", "mae"):
        (val,) = acc.Scalars(f"val/{m}")
        assert val.step == 2 and val.value == pytest.approx(record["val"][m], rel=1e-6)
    pages = {f"gallery/{p.stem}" for p in (run / "plots" / "test" / "gallery").glob("*.png")}
    assert pages and pages <= set(acc.Tags()["images"])


def test_plot_redraws_the_pictures_of_a_run(run_cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # eval draws the split's pictures into the run folder, as the final test did
    shutil.rmtree(run / "plots")
    code, _, err = run_cli("eval", run, "--split", "test", "--votes", "1")
    assert code == 0, err
    assert f"pictures in {run / 'plots' / 'test'}" in err
    drawn, final = (json.loads((r / "plots" / "test" / "eval.json").read_text())
                    for r in (run, trained_run))
    assert drawn["result"]["overall"] == pytest.approx(final["result"]["overall"], abs=1e-6)
    assert drawn["result"]["per_affordance"].keys() == final["result"]["per_affordance"].keys()
    assert [g["index"] for g in drawn["gallery"]] == [g["index"] for g in final["gallery"]]
    csv_before = (run / "results.csv").read_text()
    pictures = sorted(run.rglob("*.png"))
    sizes = [Image.open(p).size for p in pictures]
    for path in [run / "results.csv", *pictures]:
        path.unlink()
    code, out, err = run_cli("plot", run, "--json")
    assert code == 0, err
    written = json.loads(out)["written"][str(run)]
    assert written[:2] == [str(run / "results.csv"), str(run / "results.png")]
    assert sorted(written[2:]) == [str(p) for p in pictures if p.name != "results.png"]
    assert (run / "results.csv").read_text() == csv_before
    assert [Image.open(p).size for p in pictures] == sizes
    # a torn log names its line, a folder without one says so; nothing is written
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"epoch": 2, \n')
    code, _, err = run_cli("plot", run)
    assert code == 2 and "metrics.jsonl:2: not JSON" in err
    assert (run / "results.csv").read_text() == csv_before
    code, _, err = run_cli("plot", tmp_path)
    assert code == 2 and "metrics.jsonl" in err and "no finished epoch" in err
    shutil.copy(trained_run / "metrics.jsonl", run / "metrics.jsonl")  # a good log again
    arrays = run / "plots" / "test" / "gallery.npz"
    arrays.write_bytes(arrays.read_bytes()[:1000])
    code, _, err = run_cli("plot", run)
    assert code == 2 and f"{arrays}: unreadable" in err


def test_eval_prints_named_tables_and_the_baseline(run_cli, trained_run, prepared):
    from affcli.data.datasets import open_dataset

    code, out, err = run_cli("eval", trained_run, "--split", "test", "--no-plots")
    assert code == 0, err
    assert "per object" in out and "per affordance" in out and "overall" in out
    test = open_dataset(prepared("laso"), "test")
    objects = {test.info.object_names[i] for i in test.sample_object}
    affordances = {test.info.affordance_names[i] for i in test.sample_affordance}
    assert objects and all(name in out for name in objects | affordances)  # names, not indices
    assert "constant (split mean)" in out


def test_eval_json_matches_the_saved_predictions(run_cli, trained_run, tmp_path):
    from affcli import metrics

    preds = tmp_path / "p.h5"
    alone = tmp_path / "best.pt"  # a checkpoint outside its run folder: no place for plots
    shutil.copy(trained_run / "best.pt", alone)
    code, out, err = run_cli("eval", alone, "--json", "--save-predictions", preds)
    assert code == 0, err
    assert "not in a run folder: no plots (pass --plots-dir DIR)" in err
    doc = json.loads(out)
    assert "plots" not in doc
    assert doc["split"] == "test" and doc["model_type"] == "pointrefer"
    with h5py.File(preds) as f:
        heat, target = f["heatmap"][()], f["target"][()]
        objects = f["object"].asstr()[()].tolist()
        affs = f["affordance"].asstr()[()].tolist()
        assert f.attrs["split"] == "test"
    assert heat.shape == target.shape and heat.shape[1] == 512
    assert ((heat >= 0) & (heat <= 1)).all()
    again = metrics.evaluate(heat, target, objects, affs)
    assert doc["overall"]["aiou"] == pytest.approx(again["overall"]["aiou"], abs=1e-9)
    assert doc["per_object"].keys() == again["per_object"].keys()
    assert sum(v["count"] for v in doc["per_affordance"].values()) == len(heat)
    # the test figures written at the end of training are these (same best weights)
    final = json.loads((trained_run / "test_metrics.json").read_text())
    assert final["overall"]["aiou"] == pytest.approx(doc["overall"]["aiou"], abs=1e-6)


def test_corrupt_checkpoint_exits_2(run_cli, trained_run, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes((trained_run / "best.pt").read_bytes()[:4096])
    code, _, err = run_cli("eval", bad, "--data", trained_run / "x.h5")
    assert code == 2 and str(bad) in err and "not a readable checkpoint" in err
    junk = tmp_path / "junk.pt"
    np.save(tmp_path / "a.npy", np.zeros(3))
    junk.write_bytes((tmp_path / "a.npy").read_bytes())
    code, _, err = run_cli("eval", junk)
    assert code == 2 and str(junk) in err


def test_wrong_dataset_exits_2(run_cli, trained_run, prepared):
    code, _, err = run_cli("eval", trained_run, "--data", prepared("piad"))
    assert code == 2 and "pointrefer cannot train on PIAD data: it needs LASO" in err
    code, _, err = run_cli("train", "iagnet", "--data", prepared("laso"), "--epochs", "1")
    assert code == 2 and "iagnet cannot train on LASO data: it needs PIAD or AGPIL" in err
    code, _, err = run_cli("train", "lmaffordance3d", "--data", prepared("piad"))
    assert code == 2 and "needs AGPIL" in err


def test_missing_split_exits_2(run_cli, trained_run, prepared, tmp_path):
    # a prepared LASO file (the right kind for this run) without a validation split
    no_val = tmp_path / "laso_no_val.h5"
    shutil.copyfile(prepared("laso"), no_val)
    with h5py.File(no_val, "a") as f:
        del f["val"]
    code, _, err = run_cli("eval", trained_run, "--split", "val", "--data", no_val)
    assert code == 2 and err.startswith(f"error: {no_val}: no split 'val'")
    assert "(this file has train, test)" in err
    code, _, err = run_cli("eval", trained_run, "--split", "validation")
    assert code == 2 and "no split 'validation'" in err and "train, val, test" in err


def test_missing_default_data_file_exits_2(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "iagnet", "--setting", "unseen")
    assert code == 2 and "data/piad_unseen.h5" in err and "affcli prepare" in err


def test_resume_refuses_new_options(run_cli, trained_run):
    code, _, err = run_cli("train", "--resume", trained_run, "--lr", "0.1")
    assert code == 2 and "keeps its own configuration" in err and "--lr" in err
    code, _, err = run_cli("train", "iagnet", "--resume", trained_run)
    assert code == 2 and "is a pointrefer run" in err


def test_bad_options_exit_2(run_cli, prepared, tmp_path):
    code, _, err = run_cli("train", "pointrefer", "--data", prepared("laso"), "--points", "100")
    assert code == 2 and "num_points must be at least 512" in err
    code, _, err = run_cli("train", "pointrefer", "--data", prepared("laso"), "--batch-size",
                           "500", "--out", tmp_path / "r")
    assert code == 2 and "fewer than one batch" in err
    code, _, err = run_cli("train", "nosuchmodel")
    assert code == 2 and "unknown model" in err
    # IAGNet's affordance head normalises over the batch: one sample cannot train it
    code, _, err = run_cli("train", "iagnet", "--data", prepared("piad"), "--batch-size", "1",
                           "--out", tmp_path / "r1")
    assert code == 2 and "--batch-size" in err and "at least 2" in err
    assert not (tmp_path / "r1").exists()
