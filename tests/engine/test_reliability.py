"""Training survives what batch systems do to it, checked on the CPU with real signals and,
where it matters, real processes: a stop signal (Ctrl-C, SIGTERM, SIGUSR1) finishes the batch,
saves last.pt and exits 128 + the signal; SIGKILL at any moment, even inside a checkpoint
write, loses at most the steps since the last checkpoint; after any sequence of stops, kills and
resumes the run ends with the uninterrupted run's per-step losses and weights, bit for bit. A
non-finite loss stops the run (exit 1) or is skipped when allowed; a full disk is one line
naming the file (exit 1), the previous file intact and no temporary file left."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from affcli import models
from affcli.data.pointio import read_shape
from affcli.engine import checkpoint as ckpt
from affcli.engine.distributed import Process
from affcli.engine.recipes import TrainConfig, read_yaml, resolve
from affcli.engine.results import COLUMNS
from affcli.engine.trainer import Trainer


def _config(data, out) -> TrainConfig:
    # PointRefer has dropout (its text encoder's), so the RNG states must be restored too
    # test_split "": no test evaluation at the end (None would mean "not given": the default
    # test split); validation on one batch of 16 (fewer model calls, the same comparison)
    given = dict(data=str(data), epochs=2, batch_size=2, max_batches=2, workers=0,
                 num_points=512, test_split="", eval_batch_size=16, max_val_batches=1,
                 out=str(out),
                 model_config={"freeze_text_encoder": True})
    return resolve("pointrefer", models.model_class("pointrefer").train_recipe, None, given)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return ckpt.load(run / ckpt.LAST)["model"]


@pytest.fixture(scope="module")
def uninterrupted(prepared, build_once):
    return build_once("resume-whole",
                      lambda run: Trainer(_config(prepared("laso"), run), Process()).run())


def _wait_for(what, deadline: float, proc: subprocess.Popen) -> None:
    while not what():
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended early ({proc.returncode}): "
                                 f"{proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.02)


def _checkpoint_id(run):
    """Changes with every checkpoint written (each is a new file renamed into place)."""
    try:
        return (run / ckpt.LAST).stat().st_ino
    except FileNotFoundError:
        return None


def _stop(proc: subprocess.Popen, sig: int, code: int, run) -> None:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert signal.Signals(sig).name in err and f"--resume {run}" in err


def test_stops_and_kills_at_random_moments_then_resume_is_exact(prepared, tmp_path,
                                                                uninterrupted):
    """Real processes, each resuming the last: SIGTERM after the first checkpoint, SIGUSR1
    (SLURM's warning) after the next; SIGKILL inside a checkpoint write (the write paused
    there by a test-only variable) and a torn half line appended to metrics.jsonl, as a kill
    while appending leaves it; then SIGKILL at seeded random moments (start-up, a step, a
    checkpoint, validation) until a process finishes. The run ends equal to the uninterrupted
    one: per-step losses, validation, weights, best epoch, results.csv, TensorBoard steps."""
    run = tmp_path / "real"
    options = tmp_path / "options.yaml"  # (options without a command-line flag)
    options.write_text('test_split: ""\neval_batch_size: 16\n')
    base = [sys.executable, "-m", "affcli", "train"]
    train = [*base, "pointrefer", "--data", str(prepared("laso")), "--epochs", "2",
             "--batch-size", "2", "--max-batches", "2", "--workers", "0", "--points", "512",
             "--max-val-batches", "1", "--set", "freeze_text_encoder=true", "--config",
             str(options), "--checkpoint-every", "1", "--out", str(run)]
    resume = [*base, "--resume", str(run)]
    deadline = time.monotonic() + 300

    def start(command, **env):
        return subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = start(train)
    _wait_for(lambda: _checkpoint_id(run) is not None, deadline, first)
    _stop(first, signal.SIGTERM, 143, run)

    saved = _checkpoint_id(run)
    second = start(resume)
    _wait_for(lambda: _checkpoint_id(run) != saved, deadline, second)
    _stop(second, signal.SIGUSR1, 138, run)

    third = start(resume, **{ckpt.PAUSE_ENV: "60"})
    marker = run / f".{ckpt.LAST}.writing"
    _wait_for(marker.is_file, deadline, third)
    saved = ckpt.load(run / ckpt.LAST)["state"]["global_step"]
    third.kill()  # SIGKILL between the write and the rename
    third.communicate(timeout=60)
    assert list(run.glob(f".{ckpt.LAST}.*.tmp")), "the kill should leave the written temp file"
    assert ckpt.load(run / ckpt.LAST)["state"]["global_step"] == saved  # the old one, intact
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')

    # three seeded moments after the start, then one process left to finish
    rng = random.Random(15)
    moments = [round(rng.uniform(0.5, 6.0), 2) for _ in range(3)]
    logs = []
    for moment in [*moments, None]:
        t0 = time.monotonic()
        proc = start(resume)
        try:
            _, err = proc.communicate(timeout=moment or max(deadline - t0, 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=60)
        logs.append(err)
        if proc.returncode == 0:
            break  # (a moment that came after the run's end)
        assert proc.returncode == -signal.SIGKILL and moment is not None, err
    assert len(logs) > 1, f"no kill landed (moments {moments})"
    assert "repaired metrics.jsonl" in "".join(logs)
    # a log through a pipe (as `nohup ... > train.log` makes): plain lines, no terminal
    # codes, a batch line at most every 5 s, every epoch's line
    assert "\x1b[" not in err and "\r" not in err
    batch_lines = [x for x in err.splitlines() if " batch " in x]
    assert len(batch_lines) <= (time.monotonic() - t0) / 5 + 1
    assert not list(run.glob(".*.tmp"))  # the dead processes' temp files are gone
    whole, cut = _records(uninterrupted), _records(run)
    assert [r["step_losses"] for r in cut] == [r["step_losses"] for r in whole]
    assert [r["val"] for r in cut] == [r["val"] for r in whole]
    a, b = _weights(uninterrupted), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the best checkpoint is the epoch with the best validation aIoU
    best = max(whole, key=lambda r: r["val"]["aiou"])
    assert ckpt.load(run / ckpt.BEST)["state"]["best_epoch"] == best["epoch"]
    # results.csv continued: the same rows as the uninterrupted run's
    timeless = [c for c in COLUMNS if c not in ("samples_per_s", "seconds", "wall_seconds")]
    rows = [[[r[c] for c in timeless] for r in csv.DictReader(open(d / "results.csv"))]
            for d in (uninterrupted, run)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    # TensorBoard: steps logged by stopped and killed processes and lost with their
    # checkpoints are replaced by the resumed runs': every step once, with the right loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx(
        [x for r in whole for x in r["step_losses"]], rel=1e-6)


def _short_run(prepared, tmp_path, name: str, *extra: str) -> list[str]:
    """`affcli train` arguments of a one-epoch, three-step PointRefer run without a test."""
    options = tmp_path / "options.yaml"
    options.write_text('test_split: ""\n')
    return ["train", "pointrefer", "--data", prepared("laso"), "--epochs", "1",
            "--batch-size", "2", "--max-batches", "3", "--max-val-batches", "1",
            "--workers", "0", "--points", "512", "--set", "freeze_text_encoder=true",
            "--config", options, "--no-tensorboard", "--no-plots", "--out",
            tmp_path / name, "--quiet", *extra]


def test_a_nan_loss_stops_with_exit_1_or_is_skipped_when_allowed(run_cli, prepared, tmp_path,
                                                                 monkeypatch):
    from affcli.engine.trainer import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "2")  # the loss of global step 2 becomes NaN
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)]
    code, _, err = run_cli(*_short_run(prepared, tmp_path, "stops", "--checkpoint-every", "1"))
    run = tmp_path / "stops"
    assert code == 1, err
    # the stop-signal handlers of the run are given back, also when it fails
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)] == handlers
    line = " ".join(err.split())
    assert "the loss became nan at epoch 1, step 2 (global step 2)" in line
    assert f"the last good checkpoint is {run / ckpt.LAST}" in line
    state = ckpt.load(run / ckpt.LAST)["state"]
    assert (state["epoch"], state["step"]) == (0, 1)  # step 1's, untouched by the bad step

    code, _, err = run_cli(*_short_run(prepared, tmp_path, "skips", "--skip-nonfinite", "1"))
    assert code == 0, err
    assert "step skipped (1 of --skip-nonfinite 1)" in " ".join(err.split())
    record = _records(tmp_path / "skips")[0]
    assert record["nonfinite_skipped"] == 1 and len(record["step_losses"]) == 2
    assert all(map(math.isfinite, record["step_losses"]))


@pytest.fixture
def file_size_limit():
    """limit(bytes): writes of this process past that size fail with EFBIG (Python ignores
    SIGXFSZ), as on a full disk; the old limit comes back after the test."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, before[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, before)


def test_a_full_disk_names_the_file_and_leaves_nothing_half_written(
        run_cli, prepared, raw_root, tmp_path, file_size_limit):
    # a checkpoint larger than the limit: exit 1 naming last.pt, no temp file, nothing else
    # of the run lost (config.yaml is small enough)
    file_size_limit(20 * 1024**2)
    code, _, err = run_cli(*_short_run(prepared, tmp_path, "full"))
    run = tmp_path / "full"
    assert code == 1, err
    assert f"{run / ckpt.LAST}: cannot write: File too large" in " ".join(err.split())
    assert "free there" in err
    assert not (run / ckpt.LAST).exists() and not list(run.glob(".*.tmp"))
    assert (run / "config.yaml").is_file()

    # prepare over an existing dataset file: the old file stays whole
    out = tmp_path / "laso.h5"
    out.write_bytes(prepared("laso").read_bytes())
    before = out.read_bytes()
    file_size_limit(len(before) // 4)
    code, _, err = run_cli("prepare", "laso", "--root", raw_root("laso"), "--out", out,
                           "--force", "--quiet")
    assert code == 1, err
    assert f"{out}: cannot write: File too large" in " ".join(err.split())
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_stops_predict_and_export(run_cli, trained_run, piad_demo, tmp_path,
                                              file_size_limit):
    # a 20,000-point scan: its scored PLY (19 bytes a point) is over a limit that numba's
    # cache files (<= 250 KB) stay under; predict stops at the first shape (exit 1)
    bag = read_shape(piad_demo / "Point_Test_Bag_1.txt").points
    scan = tmp_path / "scan.xyz"
    rng = np.random.default_rng(0)
    np.savetxt(scan, np.concatenate([bag + rng.normal(0, 0.002, bag.shape)
                                     for _ in range(10)]), fmt="%.5f")
    file_size_limit(300 * 1024)
    out = tmp_path / "pred"
    code, _, err = run_cli("predict", scan, scan, "--model", trained_run, "--question",
                           "Where would you grasp this bag?", "--out", out)
    assert code == 1, err
    line = " ".join(err.split())
    assert f"{out / 'scan.ply'}: cannot write: File too large" in line and "free there" in line
    assert not list(out.iterdir())  # nothing half-written, and the second shape not tried

    # an export (written by torch's TorchScript writer): the same line, no scratch folder
    file_size_limit(1024**2)
    target = tmp_path / "model.torchscript.pt"
    code, _, err = run_cli("export", trained_run, "--format", "torchscript", "--out", target)
    assert code == 1, err
    assert f"{target}: cannot write: File too large" in " ".join(err.split())
    assert not target.exists() and not list(tmp_path.glob(f".{target.name}*"))


def test_resume_refuses_a_changed_or_truncated_data_file(run_cli, prepared, tmp_path):
    data = tmp_path / "laso.h5"
    shutil.copyfile(prepared("laso"), data)
    args = _short_run(prepared, tmp_path, "run")
    args[args.index("--data") + 1] = data
    args[args.index("--max-batches") + 1] = "1"
    code, _, err = run_cli(*args)
    run = tmp_path / "run"
    assert code == 0, err
    recorded = ckpt.load(run / ckpt.LAST)["data"]
    assert recorded["size"] == data.stat().st_size and len(recorded["fingerprint"]) == 20

    with open(data, "ab") as f:  # still a readable HDF5 file, but not the one trained on
        f.write(b"\0" * 64)
    code, _, err = run_cli("train", "--resume", run, "--epochs", "2")
    assert code == 2
    line = " ".join(err.split())
    assert f"{data}: changed since the run in {run} started" in line and "--force" in line
    code, _, err = run_cli("train", "--resume", run, "--force")
    assert code == 0, err
    assert "resuming on it anyway (--force)" in " ".join(err.split())

    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a copy cut short
    for command in (["train", "--resume", run, "--epochs", "3"],
                    ["eval", run, "--split", "val", "--no-plots"]):
        code, _, err = run_cli(*command)
        assert code == 2 and f"{data}: not a readable HDF5 file" in " ".join(err.split())


def _together(commands, cwd=None) -> list[subprocess.CompletedProcess]:
    """Run the commands as processes started at once (within a few milliseconds); their
    results in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-m", "affcli", *map(str, c)], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *o)
            for p, o in zip(procs, outputs, strict=True)]


@pytest.mark.slow
def test_eight_jobs_at_once_each_get_their_own_output_or_exit_2(prepared, raw_root, trained_run,
                                                                 piad_demo, tmp_path):
    """Eight `train` started together under one runs/ get eight run folders, each a whole
    run; eight `prepare` to one --out leave one whole file and seven exit 2 naming it (with
    --force: the whole file of one of them, no temp file); four `predict --out` into one
    folder: one writes each shape's files, the others exit 2."""
    options = tmp_path / "options.yaml"
    options.write_text('test_split: ""\n')
    train = ["train", "pointrefer", "--data", prepared("laso"), "--epochs", "1",
             "--batch-size", "2", "--max-batches", "1", "--max-val-batches", "1",
             "--workers", "0", "--points", "512", "--set", "freeze_text_encoder=true",
             "--config", options, "--no-tensorboard", "--no-plots", "--quiet"]
    done = _together([train] * 8, cwd=tmp_path)
    assert all(d.returncode == 0 for d in done), [(d.returncode, d.stderr[-1500:])
                                                  for d in done]
    runs = sorted((tmp_path / "runs" / "pointrefer").iterdir())
    assert [r.name for r in runs] == [f"seen-{i}" for i in range(1, 9)]
    for run in runs:  # each folder holds one run, that run's own
        assert (run / ckpt.BEST).is_file() and len(_records(run)) == 1
        assert read_yaml(run / "config.yaml")["out"] == f"runs/pointrefer/{run.name}"

    out, root = tmp_path / "laso.h5", raw_root("laso")
    prep = ["prepare", "laso", "--root", root, "--out", out, "--quiet"]
    done = _together([prep] * 8)
    codes = sorted(d.returncode for d in done)
    assert codes == [0] + [2] * 7, [(d.returncode, d.stderr) for d in done]
    assert all(f"{out}: output exists" in " ".join(d.stderr.split())
               for d in done if d.returncode == 2)
    whole = prepared("laso").read_bytes()
    assert out.read_bytes() == whole and not list(tmp_path.glob(".*.tmp"))
    done = _together([[*prep, "--force"]] * 8)
    assert all(d.returncode == 0 for d in done), [(d.returncode, d.stderr) for d in done]
    assert out.read_bytes() == whole and not list(tmp_path.glob(".*.tmp"))

    pred_out = tmp_path / "pred"
    files = [piad_demo / "Point_Test_Bag_1.txt", piad_demo / "Point_Test_Chair_1.txt"]
    pred = ["predict", *files, "--model", trained_run, "--question",
            "Where would you grasp this?", "--out", pred_out, "--quiet"]
    done = _together([pred] * 4)
    codes = [d.returncode for d in done]
    assert sorted(codes) == [0, 2, 2, 2], [(d.returncode, d.stderr) for d in done]
    assert sorted(p.name for p in pred_out.iterdir()) == sorted(
        f"{f.stem}.{k}" for f in files for k in ("npy", "ply"))
    for d in done:
        if d.returncode == 2:
            assert "output exists" in d.stderr, d.stderr
