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
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from affcli import models
from affcli.engine import checkpoint as ckpt
from affcli.engine.distributed import Process
from affcli.engine.recipes import TrainConfig, resolve
from affcli.engine.results import COLUMNS
from affcli.engine.trainer import Interrupted, Trainer


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


def _resume(run):
    doc = ckpt.load(run / ckpt.LAST)
    cfg = TrainConfig.from_dict(doc["train_config"], run)
    Trainer(cfg, Process(), resume=run).run()


@pytest.fixture(scope="module")
def uninterrupted(prepared, build_once):
    return build_once("resume-whole",
                      lambda run: Trainer(_config(prepared("laso"), run), Process()).run())


def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(prepared, tmp_path,
                                                                    uninterrupted):
    run = tmp_path / "cut"

    def terminate(epoch, step, total, loss, lr, speed):
        if (epoch, step) == (1, 1):  # the first batch of the second epoch
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(_config(prepared("laso"), run), Process(), hooks={"step": terminate})
    with pytest.raises(Interrupted) as stopped:
        trainer.run()
    assert stopped.value.exit_code == 143 and "SIGTERM" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are given back
    state = ckpt.load(run / ckpt.LAST)["state"]
    assert (state["epoch"], state["step"]) == (1, 1)  # saved mid-epoch
    assert len(_records(run)) == 1
    _resume(run)
    whole, cut = _records(uninterrupted), _records(run)
    assert [r["step_losses"] for r in cut] == [r["step_losses"] for r in whole]
    assert [r["val"] for r in cut] == [r["val"] for r in whole]
    a, b = _weights(uninterrupted), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for(what, deadline: float, proc: subprocess.Popen) -> None:
    while not what():
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended early ({proc.returncode}): "
                                 f"{proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def test_usr1_kill_in_a_checkpoint_write_torn_log_then_resume_is_exact(prepared, tmp_path,
                                                                      uninterrupted):
    """Real processes: SIGUSR1 (SLURM's warning) after the first step's checkpoint; the
    resumed process SIGKILLed inside its next checkpoint write (the write paused there by a
    test-only variable); a torn half line appended to metrics.jsonl; a second resume ends
    equal to the uninterrupted run: losses, weights, results.csv and TensorBoard steps."""
    run = tmp_path / "real"
    options = tmp_path / "options.yaml"  # (options without a command-line flag)
    options.write_text('test_split: ""\neval_batch_size: 16\n')
    base = [sys.executable, "-m", "affcli", "train"]
    train = [*base, "pointrefer", "--data", str(prepared("laso")), "--epochs", "2",
             "--batch-size", "2", "--max-batches", "2", "--workers", "0", "--points", "512",
             "--max-val-batches", "1", "--set", "freeze_text_encoder=true", "--config",
             str(options), "--checkpoint-every", "1", "--out", str(run)]
    deadline = time.monotonic() + 240

    first = subprocess.Popen(train, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / ckpt.LAST).is_file(), deadline, first)
    first.send_signal(signal.SIGUSR1)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 138, err
    assert "SIGUSR1" in err and f"--resume {run}" in err

    env = {**os.environ, ckpt.PAUSE_ENV: "60"}
    second = subprocess.Popen([*base, "--resume", str(run)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    marker = run / f".{ckpt.LAST}.writing"
    _wait_for(marker.is_file, deadline, second)
    saved = ckpt.load(run / ckpt.LAST)["state"]["global_step"]
    second.kill()  # SIGKILL between the write and the rename
    second.communicate(timeout=60)
    assert list(run.glob(f".{ckpt.LAST}.*.tmp")), "the kill should leave the written temp file"
    assert ckpt.load(run / ckpt.LAST)["state"]["global_step"] == saved  # the old one, intact
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a kill while appending a line

    t0 = time.monotonic()
    done = subprocess.run([*base, "--resume", str(run)], capture_output=True, text=True,
                          timeout=max(deadline - time.monotonic(), 1))
    assert done.returncode == 0, done.stderr
    assert "repaired metrics.jsonl" in done.stderr
    # a log through a pipe (as `nohup ... > train.log` makes): plain lines, no terminal
    # codes, a batch line at most every 5 s, every epoch's line
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr
    batch_lines = [x for x in done.stderr.splitlines() if " batch " in x]
    assert len(batch_lines) <= (time.monotonic() - t0) / 5 + 1
    assert "epoch 2/2 train loss" in done.stderr
    assert not list(run.glob(".*.tmp"))  # the dead process's temp file is gone
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
    # TensorBoard: steps logged by the stopped and the killed process and lost with their
    # checkpoints are replaced by the resumed run's: every step once, with the right loss
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
    code, _, err = run_cli(*_short_run(prepared, tmp_path, "stops", "--checkpoint-every", "1"))
    run = tmp_path / "stops"
    assert code == 1, err
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
