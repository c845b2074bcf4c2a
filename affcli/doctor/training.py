"""A few training steps of each registered model, through the trainer `affcli train` runs.

Each pass builds a `Trainer` from the model's paper recipe (its batch size unless the plan
says otherwise), takes one batch of the model's own synthetic data and repeats the trainer's
step on it: the loss must stay finite and fall (one batch, so it should). Timed steps give
samples/s (data loading excluded, as in `affcli bench train`), and on a GPU the peak memory.
On CUDA a second pass with AMP (the trainer's autocast and gradient scaler) gives the
speed-up; AMP needs CUDA, so the dry run has the float32 pass only.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from affcli.doctor.numerics import synchronize
from affcli.doctor.plan import Plan
from affcli.doctor.report import CheckFailed, Row, describe
from affcli.doctor.workspace import Workspace


def trainable_models() -> list[str]:
    """The registered models that declare data to train on, in registry order."""
    from affcli import models

    return [n for n in models.available() if models.model_class(n).dataset_kinds]


def batch_size(plan: Plan, name: str) -> int:
    """The plan's batch size, else the model's paper batch size; never below its minimum."""
    from affcli import models

    cls = models.model_class(name)
    return max(plan.train_batch or int(cls.train_recipe.get("batch_size", 16)),
               cls.min_batch_size)


def _amp_dtype(device: torch.device) -> str:
    """The dtype the engine's autocast computes in (what `train --amp` uses)."""
    from affcli.engine.evaluator import autocast

    ctx = autocast(device, True)
    return str(getattr(ctx, "fast_dtype", "")).replace("torch.", "")


def _pass(plan: Plan, ws: Workspace, name: str, amp: bool, out: Path) -> dict[str, Any]:
    """The figures of one pass; `problem` among them when the losses are wrong."""
    from affcli import models
    from affcli.engine import distributed as D
    from affcli.engine.recipes import resolve
    from affcli.engine.trainer import Trainer

    cls = models.model_class(name)
    bs = batch_size(plan, name)
    given = {"data": str(ws.data(cls.dataset_kinds[0])), "batch_size": bs, "amp": amp,
             "num_points": plan.train_points, "pairing_num": plan.train_pairing,
             "device": plan.device, "workers": 0, "epochs": 1, "tensorboard": False,
             "plots": False, "out": str(out)}
    cfg = resolve(name, dict(cls.train_recipe), None, given)
    proc = D.Process(device=D.resolve_device(plan.device))
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. ResNet18 from random weights
        trainer = Trainer(cfg, proc, hooks={"warn": notes.append, "note": notes.append})
        batch = next(iter(trainer._loader()))
        dev = proc.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        scaler = trainer.scaler
        scale0 = scaler.get_scale() if scaler.is_enabled() else None
        losses, seconds = [], []
        for _ in range(plan.train_steps):
            t0 = time.perf_counter()
            # the trainer's own step: autocast, scaler, the non-finite checks
            loss = trainer._train_step(batch)
            synchronize(dev)
            seconds.append(time.perf_counter() - t0)
            losses.append(math.nan if loss is None else float(loss))
        figures: dict[str, Any] = {
            "loss_first": losses[0], "loss_last": losses[-1],
            "samples_per_s": bs / statistics.median(seconds[plan.train_warmup:] or seconds),
        }
        if dev.type == "cuda":
            figures["peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
        if trainer.amp:
            figures["dtype"] = _amp_dtype(dev)
        if scale0 is not None:
            # each step the scaler skips (an fp16 overflow) halves its scale
            figures["scaler_skipped"] = round(math.log2(scale0 / scaler.get_scale()))
    del trainer, batch
    if dev.type == "cuda":  # (the next pass's peak memory must not count this one's model)
        gc.collect()
        torch.cuda.empty_cache()
    figures["notes"] = notes
    if not all(math.isfinite(x) for x in losses):
        figures["problem"] = f"non-finite loss: {losses}"
    elif not losses[-1] < losses[0]:
        figures["problem"] = (f"the loss did not fall over {len(losses)} steps on one batch: "
                              + ", ".join(f"{x:.4g}" for x in losses))
    return figures


def check_training(plan: Plan, ws: Workspace, name: str, row: Row) -> None:
    if plan.train_steps < 2:
        raise CheckFailed("a falling loss needs at least 2 steps")
    dev = torch.device(plan.device)
    row.figures["batch"] = batch_size(plan, name)
    passes = [("amp", True), ("fp32", False)] if dev.type == "cuda" else [("fp32", False)]
    if dev.type != "cuda":
        row.notes.append("no AMP pass: AMP needs CUDA")
    errors = []
    for tag, amp in passes:
        try:
            figures = _pass(plan, ws, name, amp, ws.root / f"train-{name}-{tag}")
        except Exception as exc:  # noqa: BLE001 (the other pass still runs)
            errors.append(f"{tag}: {describe(exc)}")
            continue
        row.notes.extend(figures.pop("notes"))
        if "problem" in figures:  # (its figures are kept: they help to see why)
            errors.append(f"{tag}: {figures.pop('problem')}")
        row.figures.update({f"{k}_{tag}": v for k, v in figures.items()})
    if "samples_per_s_amp" in row.figures and "samples_per_s_fp32" in row.figures:
        row.figures["amp_speedup"] = (row.figures["samples_per_s_amp"]
                                      / row.figures["samples_per_s_fp32"])
    if errors:
        raise CheckFailed("; ".join(errors))
