"""Exact resume on the CPU: a run interrupted by Ctrl-C in the middle of an epoch, or killed
after an epoch's checkpoint, continues with the very losses and weights of the run that was
never interrupted (bit for bit)."""

from __future__ import annotations

import csv
import json
import os
import signal

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
    # test split); validation in batches of 16, fewer model calls for the same figures
    given = dict(data=str(data), epochs=2, batch_size=2, max_batches=2, workers=0,
                 num_points=512, test_split="", eval_batch_size=16, out=str(out),
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


def test_ctrl_c_mid_epoch_then_resume_equals_the_uninterrupted_run(prepared, tmp_path,
                                                                  uninterrupted):
    run = tmp_path / "cut"

    def ctrl_c(epoch, step, total, loss, lr, speed):
        if (epoch, step) == (1, 1):  # the first batch of the second epoch
            os.kill(os.getpid(), signal.SIGINT)

    trainer = Trainer(_config(prepared("laso"), run), Process(), hooks={"step": ctrl_c})
    with pytest.raises(Interrupted):
        trainer.run()
    state = ckpt.load(run / ckpt.LAST)["state"]
    assert (state["epoch"], state["step"]) == (1, 1)  # saved mid-epoch
    assert len(_records(run)) == 1
    _resume(run)
    whole, cut = _records(uninterrupted), _records(run)
    assert [r["step_losses"] for r in cut] == [r["step_losses"] for r in whole]
    assert [r["val"] for r in cut] == [r["val"] for r in whole]
    a, b = _weights(uninterrupted), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_mid_epoch_then_resume_equals_the_uninterrupted_run(prepared, tmp_path,
                                                                uninterrupted):
    run = tmp_path / "killed"

    class Killed(Exception):
        pass

    def die(epoch, step, total, loss, lr, speed):
        if (epoch, step) == (1, 1):
            raise Killed  # a hard kill one batch after the last.pt of epoch 1

    with pytest.raises(Killed):
        Trainer(_config(prepared("laso"), run), Process(), hooks={"step": die}).run()
    assert ckpt.load(run / ckpt.LAST)["state"]["global_step"] == 2
    _resume(run)
    whole, cut = _records(uninterrupted), _records(run)
    assert [r["step_losses"] for r in cut] == [r["step_losses"] for r in whole]
    a, b = _weights(uninterrupted), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the best checkpoint is the epoch with the best validation aIoU
    best = max(whole, key=lambda r: r["val"]["aiou"])
    assert ckpt.load(run / ckpt.BEST)["state"]["best_epoch"] == best["epoch"]
    # the resumed run continued results.csv: the same rows as the uninterrupted one's
    timeless = [c for c in COLUMNS if c not in ("samples_per_s", "seconds", "wall_seconds")]
    rows = [[[r[c] for c in timeless] for r in csv.DictReader(open(d / "results.csv"))]
            for d in (uninterrupted, run)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    # TensorBoard: step 3, logged before the kill and lost with it, is replaced by the
    # resumed run's, so every step shows once, with the uninterrupted run's loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx(
        [x for r in whole for x in r["step_losses"]], rel=1e-6)
