"""CLI conventions every subcommand follows: --help, --version, --json, --quiet, exit codes,
one-line errors, --debug tracebacks; and synth's determinism."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from affcli import __version__


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_help_and_version(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for cmd in ("synth", "prepare", "bench"):
        assert cmd in out
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"affcli {__version__}"
    code, out, _ = run_cli("prepare", "--help")
    assert code == 0 and "--json" in out and "--quiet" in out and "--force" in out


def test_usage_errors_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("prepare")
    assert code == 2 and err.startswith("error: ")
    code, _, err = run_cli("no-such-command")
    assert code == 2 and err.startswith("error: ")
    code, _, err = run_cli("synth", "laso", tmp_path / "x", "--shapes-per-class", "many")
    assert code == 2 and "--shapes-per-class" in err
    code, _, err = run_cli("synth", "nosuch", tmp_path / "never-made")
    assert code == 2 and "unknown dataset 'nosuch'" in err
    assert list(tmp_path.iterdir()) == []  # neither bad command wrote anything


def test_synth_json_and_quiet(tmp_path, run_cli):
    code, out, err = run_cli("synth", "laso", tmp_path / "a", "-k", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout holds exactly one JSON document
    assert doc["dataset"] == "laso" and doc["samples"]["seen/train"] > 0
    code, out, err = run_cli("synth", "laso", tmp_path / "b", "-k", "2", "--quiet")
    assert code == 0 and out == "" and err == ""


def test_synth_is_deterministic(tmp_path, run_cli):
    for name in ("a", "b", "c"):
        seed = "5" if name != "c" else "6"
        code, _, err = run_cli("synth", "piad", tmp_path / name, "-k", "2", "--seed", seed, "-q")
        assert code == 0, err
    a, b, c = (_tree_digest(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 50
    assert a.keys() == c.keys() and a != c


def test_synth_refuses_non_empty_output(tmp_path, run_cli):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    code, _, err = run_cli("synth", "laso", out, "-k", "2")
    assert code == 2 and "--force" in err and (out / "mine.txt").read_text() == "precious"
    code, _, err = run_cli("synth", "laso", out, "-k", "2", "--force", "-q")
    assert code == 0 and not (out / "mine.txt").exists() and (out / "Seen").is_dir()


def test_prepare_json(raw_root, tmp_path, run_cli):
    code, out, err = run_cli("prepare", "laso", "--root", raw_root("laso"),
                             "--out", tmp_path / "x.h5", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["splits"]["train"]["samples"] > 0 and doc["output"].endswith("x.h5")
    assert set(doc["splits"]) == {"train", "val", "test"}


def test_error_line_and_debug(tmp_path):
    """As a real process: one error line without traceback; --debug adds the traceback."""
    cmd = [sys.executable, "-m", "affcli", "prepare", "piad", "--root", str(tmp_path / "none"),
           "--out", str(tmp_path / "o.h5")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.startswith(f"error: {tmp_path / 'none'}: dataset root not found")
    assert "Traceback" not in plain.stderr and plain.stdout == ""
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_internal_error_exits_1_with_one_line(run_cli, monkeypatch, tmp_path):
    """An unexpected exception (a bug, not bad input) exits 1 with one line naming it."""
    import affcli.data.synth.run as synth_run

    def broken(*args, **kwargs):
        raise RuntimeError("boom in the engine")

    monkeypatch.setattr(synth_run, "synthesize", broken)
    code, out, err = run_cli("synth", "laso", tmp_path / "o", "-k", "2")
    assert code == 1 and out == ""
    assert err == "error: internal error: RuntimeError: boom in the engine (rerun with --debug)\n"
    code, _, err = run_cli("synth", "laso", tmp_path / "o", "-k", "2", "--debug")
    assert code == 1 and "Traceback" in err and "in broken" in err
    assert err.rstrip().endswith("(rerun with --debug)")


def test_ctrl_c_exits_130_and_leaves_no_partial_output(run_cli, monkeypatch, tmp_path):
    """A real SIGINT (the signal Ctrl-C sends) while `affcli synth` is writing: exit 130 with
    one line, and neither the output folder nor its temporary folder is left behind."""
    import os
    import signal

    import affcli.data.synth.run as synth_run

    real = synth_run.synthesize
    written: list[int] = []

    def ctrl_c_midway(dataset, out, seed, k, force, progress_factory, classes=None,
                      affordances=None):
        def factory(total):
            def tick(n):
                written.append(n)
                if len(written) == 5:  # five shapes written
                    os.kill(os.getpid(), signal.SIGINT)
            return tick
        return real(dataset, out, seed, k, force, factory, classes, affordances)

    monkeypatch.setattr(synth_run, "synthesize", ctrl_c_midway)
    code, out, err = run_cli("synth", "laso", tmp_path / "o", "-k", "2")
    assert code == 130 and out == "" and err == "error: interrupted\n"
    assert len(written) == 5  # stopped right there, long before the 32 shapes
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["bench", "loader", "--dataset", "nope"],
                                  ["bench", "loader", "--seconds", "0"]])
def test_bench_bad_options(run_cli, args):
    code, _, err = run_cli(*args)
    assert code == 2 and err.startswith("error: --")


def test_bench_loader_runs(run_cli):
    code, out, err = run_cli("bench", "loader", "-d", "laso", "-k", "2", "--seconds", "0.05",
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    rows = {r["split"]: r for r in doc["rows"] if r["part"] == "whole sample"}
    assert set(rows) == {"train", "test"}
    for r in rows.values():
        assert 0 < r["raw_samples_per_s"] < math.inf and 0 < r["h5_samples_per_s"] < math.inf
        assert 0 < r["speedup"] < math.inf
        # both paths were really read: at least the two batches the rate needs
        assert r["raw_reads"] >= min(2, r["samples"]) and r["h5_reads"] >= min(2, r["samples"])


@pytest.mark.parametrize("name", ["laso", "piad"])
def test_bench_loader_compares_like_with_like(raw_root, prepared, name):
    """`bench loader`'s speedup is meaningful only if its raw-file baseline reads the same
    samples as the HDF5 dataset: same clouds, masks, questions / images, in the same order."""
    from affcli.bench.baselines import RawLaso, RawListed
    from affcli.data.datasets import open_dataset

    ours = open_dataset(prepared(name), "test")
    raw = (RawLaso(raw_root(name), "seen", "test") if name == "laso"
           else RawListed(raw_root(name), "seen", "test"))
    assert len(raw) == len(ours) > 10
    for i in range(0, len(ours), 3):
        o = ours[i]
        if name == "laso":
            points, mask, question = raw[i]
            assert question == o["question"]
        else:
            image, clouds, _, _, _ = raw[i]
            (points, mask), = clouds
            # ours decodes large JPEGs at reduced scale (still >= 224 px), so pixels differ a
            # little; a different or shifted image would differ by far more
            assert (image - o["image"]).abs().mean() < 0.02
        np.testing.assert_allclose(points.T, o["points"].numpy(), atol=1e-6)
        np.testing.assert_allclose(mask, o["mask"].numpy(), atol=1e-6)


def test_bench_ops_runs(run_cli, monkeypatch):
    import functools

    import affcli.nn.pointnet2 as pn

    # The encoder rows time the full-size encoder against the reference formulation (tens of
    # seconds on a CI core even for one cloud); the same code paths run here on an encoder
    # with the same structure at a tenth of the width and centres.
    small = pn.EncoderConfig(
        sa1_centers=64, sa1_neighbors=(8, 16, 16), sa1_mlps=((8, 8), (8, 16), (8, 16)),
        sa2_centers=32, sa2_neighbors=(8, 16), sa2_mlps=((16, 16), (16, 24)),
        sa3_centers=16, sa3_neighbors=(8, 8), sa3_mlps=((16, 16), (16, 24)))
    monkeypatch.setattr(pn, "PointNet2Encoder", functools.partial(pn.PointNet2Encoder, small))
    code, out, err = run_cli("bench", "ops", "-b", "1", "--points", "600", "--repeats", "1",
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    ops = {r["op"]: r for r in doc["rows"]}
    assert {"FPS 600->512", "ball query x3 (sa1)", "sampling + grouping",
            "3-NN + interpolation", "encoder forward+backward"} <= set(ops)
    for r in doc["rows"]:
        assert r["cpu_ms"] > 0 and r["reference_ms"] > 0
    code, _, err = run_cli("bench", "ops", "--points", "100")
    assert code == 2 and "--points" in err


def test_bench_metrics_runs(run_cli):
    code, out, err = run_cli("bench", "metrics", "--samples", "30", "--points", "200", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["max_abs_difference"] < 1e-6 and doc["ours_s"] > 0 and doc["reference_s"] > 0


def test_bench_train_runs(run_cli):
    """One timed training step of the cheapest model on a small synthetic LASO set."""
    code, out, err = run_cli("bench", "train", "-m", "pointrefer", "--steps", "1",
                             "--points", "512", "--batch-size", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["benchmark"] == "train"
    (row,) = doc["rows"]
    assert row["model"] == "pointrefer" and row["dataset"] == "laso"
    assert row["batch_size"] == 2 and row["points"] == 512 and row["clouds_per_sample"] == 1
    assert 0 < row["step_s"] < math.inf and 0 < row["samples_per_s"] < math.inf
    # the point encoder (506,680 weights at any cloud size) and more are trained
    assert row["trainable_parameters"] > 506_680
    # where the time goes: every part of the model, forward and backward; the parts, the
    # loss's rest and the optimizer add up to the timed step, and the parts take most of it
    ph = row["phases_ms"]
    assert set(ph["parts"]) == {"text_encoder", "text_resizer", "point_encoder", "fusion",
                                "decoder", "fp3", "fp2", "fp1"}
    assert all(t["forward"] > 0 and t["backward"] > 0 for t in ph["parts"].values())
    parts = sum(t["forward"] + t["backward"] for t in ph["parts"].values())
    rest = ph["loss"]["forward"] + ph["loss"]["backward"] + ph["optimizer"]
    assert parts + rest == pytest.approx(ph["step"], rel=0.02)
    assert parts > 0.7 * ph["step"]


def test_bench_train_bad_options_exit_2(run_cli):
    code, out, err = run_cli("bench", "train", "-m", "pointrefer", "-m", "pointnext")
    assert code == 2 and out == "" and err.startswith("error: ") and "'pointnext'" in err
    code, _, err = run_cli("bench", "train", "-m", "pointrefer", "--steps", "0")
    assert code == 2 and "--steps" in err and "at least 1" in err


def test_synth_shapes_writes_loose_ply_files(tmp_path, run_cli):
    from affcli.data.pointio import read_shape
    from affcli.data.synth.shapes import SYNTH_CLASSES

    code, out, err = run_cli("synth", "shapes", tmp_path / "s", "-k", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["samples"] == {"shapes": len(SYNTH_CLASSES)}
    files = sorted((tmp_path / "s").iterdir())
    assert [f.name for f in files] == sorted(f"{c.lower()}_0.ply" for c in SYNTH_CLASSES)
    extents = []
    for f in files:
        shape = read_shape(f)
        assert shape.points.shape == (4096, 3) and not shape.properties  # x y z only
        extents.append(float(np.ptp(shape.points, axis=0).max()))
    assert 0.2 <= min(extents) and max(extents) <= 2.0 + 1e-5  # each in its own size
    assert len({round(e, 3) for e in extents}) > 1
    code, _, err = run_cli("synth", "shapes", tmp_path / "t", "-k", "1", "-q")
    assert code == 0, err
    assert _tree_digest(tmp_path / "s") == _tree_digest(tmp_path / "t")  # same seed, same bytes
    code, _, err = run_cli("synth", "shapes", tmp_path / "u", "-k", "0")
    assert code == 2 and "at least 1" in err


def test_predict_help_and_usage_errors_do_not_import_torch(tmp_path):
    """predict's options come from the models' declarations; once cached, building the
    command (its help, a usage error, the top-level help) imports no model and no torch."""
    import os

    env = {**os.environ, "AFFCLI_CACHE_DIR": str(tmp_path)}
    probe = ("import sys; from affcli.cli import main; rc = main({args!r}); "
             "print('torch' in sys.modules, rc)")

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe.format(args=list(args))], env=env,
                              capture_output=True, text=True, timeout=300)
        return done.stdout.strip().splitlines()[-1]

    assert run("predict", "--help") == "True 0"  # the first call builds the table
    (cached,) = tmp_path.glob("predict-inputs-*.json")
    assert {row["option"] for row in json.loads(cached.read_text())} >= {"--question", "--image"}
    assert run("predict", "--help") == "False 0"
    assert run("predict", "mug.ply", "--no-such-option") == "False 2"
    assert run("--help") == "False 0"


def test_synth_classes_subset_and_an_empty_split_left_out(tmp_path, run_cli):
    """--classes keeps those classes (any case); a split the subset leaves empty (here val)
    is left out of the prepared file rather than written empty; unknown names exit 2."""
    from affcli.data.h5 import read_info

    code, out, err = run_cli("synth", "laso", tmp_path / "raw", "-k", "2", "--classes",
                             "table,Display", "--json")
    assert code == 0, err
    assert json.loads(out)["classes"] == ["Table", "Display"]
    code, _, err = run_cli("prepare", "laso", "--root", tmp_path / "raw", "--out",
                           tmp_path / "x.h5", "--quiet")
    assert code == 0, err
    info = read_info(tmp_path / "x.h5")
    assert sorted(info.splits) == ["test", "train"]
    with h5py.File(tmp_path / "x.h5") as f:
        objects = {info.object_names[i] for s in info.splits for i in f[s]["samples/object"][:]}
    assert objects == {"Table", "Display"}
    code, _, err = run_cli("synth", "laso", tmp_path / "bad", "--classes", "Mug,Teapot")
    assert code == 2 and "--classes" in err and "Teapot" in err
    assert not (tmp_path / "bad").exists()


def test_synth_affordances_subset(tmp_path, run_cli):
    """--affordances keeps only those affordances' samples (PIAD's spelling accepted); a
    class left without any, an unknown name and a non-LASO set exit 2 and write nothing."""
    from affcli.data.h5 import read_info

    code, out, err = run_cli("synth", "laso", tmp_path / "raw", "-k", "2", "--classes",
                             "Mug,Knife", "--affordances", "grasp,cut,wrapgrasp", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("prepare", "laso", "--root", tmp_path / "raw", "--out",
                           tmp_path / "x.h5", "--quiet")
    assert code == 0, err
    info = read_info(tmp_path / "x.h5")
    with h5py.File(tmp_path / "x.h5") as f:
        pairs = {(info.object_names[o], info.affordance_names[a]) for s in info.splits
                 for o, a in zip(f[s]["samples/object"][:], f[s]["samples/affordance"][:],
                                 strict=True)}
    assert pairs == {("Mug", "grasp"), ("Mug", "wrap_grasp"), ("Knife", "grasp"),
                     ("Knife", "cut")}
    for args, named in ((["--classes", "Mug,Chair", "--affordances", "grasp"], "Chair"),
                        (["--classes", "Mug", "--affordances", "graps"], "graps")):
        code, _, err = run_cli("synth", "laso", tmp_path / "bad", "-k", "2", *args)
        assert code == 2 and "--affordances" in err and named in err, err
    code, _, err = run_cli("synth", "piad", tmp_path / "bad", "-k", "2", "--affordances", "cut")
    assert code == 2 and "only LASO" in err, err
    assert not (tmp_path / "bad").exists()
