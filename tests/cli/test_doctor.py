"""`affcli doctor --gpu --dry-run`: the GPU check's own code on the CPU (kernels interpreted,
tiny sizes, gloo for NCCL), so the command is known to work when a GPU machine comes.

Two runs, started together in fresh processes (each leaves a core idle half the time, waiting
on its torchrun child or in the interpreter): the whole dry run, which must pass, and one
restricted to the encoder rows that fails on purpose through an impossible tolerance. One test
checks both, so that pytest-xdist cannot hand the parts to two workers that would each start
the runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affcli import models
from affcli.cli import main
from affcli.doctor.plan import dry_plan

KERNELS = {"kernel farthest_point_sample", "kernel ball_query", "kernel three_nn",
           "kernel gather_group", "kernel three_interpolate"}
ENCODER = {"encoder eval forward", "encoder train forward+backward"}


def _doctor(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `affcli doctor ARGS` in this process (the quick runs)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["doctor", *args])
    return code, out.getvalue(), err.getvalue()


def _trainable() -> list[str]:
    """The models the dry run's model rows take: the registry's first trainable ones."""
    names = [n for n in models.available() if models.model_class(n).dataset_kinds]
    return names[:dry_plan().models]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, dict, Path]]:
    """{"dry": ..., "failing": ...}: (exit code, stdout, report, report path) of each run.
    Fresh processes: the dry run sets the interpreter and OpenMP up before torch loads, and
    nothing of it stays in this process (GPU tests may follow)."""
    base = tmp_path_factory.mktemp("doctor")
    args = {"dry": ["--gpu", "--dry-run"],
            "failing": ["--gpu", "--dry-run", "--only", "encoder", "--tolerance-scale", "0"]}
    started = {}
    for name, extra in args.items():
        out = base / name / "report.json"
        out.parent.mkdir()
        started[name] = (out, subprocess.Popen(
            [sys.executable, "-m", "affcli", "doctor", *extra, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = {}
    for name, (out, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert out.is_file(), stderr[-3000:]
        done[name] = (proc.returncode, stdout, json.loads(out.read_text()), out)
    return done


def _rows(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in doc["rows"]}


@pytest.mark.slow
def test_dry_run_passes_and_a_failing_row_exits_1(runs):
    code, stdout, doc, out = runs["dry"]
    _every_row_present_and_ok(code, doc)
    _figures_are_sensible(doc)
    _table_and_report_file(stdout, doc, out)
    _failing_row(*runs["failing"][:3])


def _every_row_present_and_ok(code: int, doc: dict) -> None:
    rows = _rows(doc)
    names = _trainable()
    expected = ({"environment", "data", "bench ops B=2", f"torchrun train {names[0]}"}
                | KERNELS | ENCODER
                | {f"{what} {m}" for m in names for what in ("train", "eval", "predict")})
    assert set(rows) == expected
    failed = {n: r["error"] for n, r in rows.items() if r["status"] != "ok"}
    assert not failed
    assert code == 0 and doc["ok"] is True
    assert doc["counts"] == {"ok": len(expected), "failed": 0, "skipped": 0}
    assert doc["plan"]["mode"] == "dry-run" and doc["plan"]["device"] == "cpu"


def _figures_are_sensible(doc: dict) -> None:
    rows = _rows(doc)
    f = {name: r["figures"] for name, r in rows.items()}
    assert f["environment"]["triton_interpreted"] is True
    # the inputs reached every branch the kernels have
    assert f["kernel farthest_point_sample"]["paths"] == "registers+tiled"
    ball = f["kernel ball_query"]
    assert ball["empty"] > 0 and ball["partial"] > 0 and ball["full"] > 0 and ball["max_k"] > 64
    assert f["kernel gather_group"]["max_picks_per_point"] > 1
    assert f["kernel three_interpolate"]["max_rel_backward"] <= 1e-5
    for name in ENCODER:
        assert f[name]["max_rel_vs_torch"] <= 1e-4 and f[name]["max_rel_vs_cpu"] <= 1e-4
    assert f["encoder train forward+backward"]["tensors"] > 50  # gradients and buffers too
    bench = f["bench ops B=2"]["rows"]
    assert len(bench) == 7 and all(r["ours_ms"] > 0 and r["reference_ms"] > 0 for r in bench)
    for m in _trainable():
        train = f[f"train {m}"]
        assert math.isfinite(train["loss_first_fp32"])
        assert train["loss_last_fp32"] < train["loss_first_fp32"]
        assert train["samples_per_s_fp32"] > 0
        assert "no AMP pass: AMP needs CUDA" in rows[f"train {m}"]["notes"]
        assert f[f"eval {m}"]["samples"] > 0 and f[f"eval {m}"]["max_abs_heatmap"] <= 1e-4
        assert f[f"predict {m}"]["points"] > 0 and f[f"predict {m}"]["max_abs_scores"] <= 1e-4
    run = f[f"torchrun train {_trainable()[0]}"]
    assert run["exit_code"] == 0 and run["process_group"] is True and run["backend"] == "gloo"
    assert math.isfinite(run["train_loss"])


def _table_and_report_file(stdout: str, doc: dict, out: Path) -> None:
    assert "affcli doctor (dry-run, cpu)" in stdout
    assert "torchrun" in stdout and "three_interpolate" in stdout
    assert f"{len(doc['rows'])} ok, 0 failed, 0 skipped" in stdout
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no temporary file left


def _failing_row(code: int, stdout: str, doc: dict) -> None:
    """Tolerance 0 demands bitwise equality: the CPU path's fused BatchNorm (float64 sums)
    and the device side's composite one differ in the last bits, so the training-mode encoder
    row fails, with the difference in its error, and the other rows still run."""
    rows = _rows(doc)
    assert code == 1 and doc["ok"] is False
    assert set(rows) == {"environment"} | ENCODER
    assert rows["environment"]["status"] == "ok"
    assert rows["encoder eval forward"]["status"] == "ok"  # bitwise equal in eval mode
    bad = rows["encoder train forward+backward"]
    assert bad["status"] == "failed"
    assert "vs CPU" in bad["error"] and "relative difference" in bad["error"]
    assert bad["error"].endswith("> 0")
    assert "1 failed" in stdout


def test_bad_options_exit_2(tmp_path):
    code, _, err = _doctor("--gpu", "--dry-run", "--only", "nosuch")
    assert code == 2 and "--only" in err and "'nosuch'" in err
    code, _, err = _doctor("--gpu", "--tolerance-scale", "-1")
    assert code == 2 and "--tolerance-scale" in err
    code, _, err = _doctor("--only", "kernels")  # the groups are the --gpu checks'
    assert code == 2 and "--gpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_gpu_run_without_gpu_fails_in_the_environment_row(tmp_path):
    out = tmp_path / "report.json"
    code, _, _ = _doctor("--gpu", "--only", "kernels", "--out", str(out), "--quiet")
    rows = json.loads(out.read_text())["rows"]
    assert code == 1
    assert rows[0]["name"] == "environment" and rows[0]["status"] == "failed"
    assert "no CUDA device" in rows[0]["error"] or "TRITON_INTERPRET" in rows[0]["error"]
    assert {r["status"] for r in rows[1:]} == {"skipped"} and len(rows) == 1 + len(KERNELS)
