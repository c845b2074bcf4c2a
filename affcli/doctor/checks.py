"""The doctor's run: which rows, in which order, and what runs beside what.

    environment                         (on a GPU run, its failure skips everything else)
    data                                the tiny synthetic sets the model rows share
    torchrun  ........ started as a child process once its data is there ........
    kernel *, encoder *                 correctness only: untimed, so they may share the device
    torchrun  ........ collected here ........
    bench ops B=*                       timed: the device is ours alone from here on
    train <model>                       for every model of the registry (the plan's first few)
    eval <model>, predict <model>

The dry run, whose timings mean nothing, collects torchrun last instead, so that the child
runs beside every other row.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from affcli.doctor import encoder, inference, kernels, throughput, training
from affcli.doctor.environment import check_environment
from affcli.doctor.plan import Plan
from affcli.doctor.report import Report, Row
from affcli.doctor.torchrun import TorchrunCheck, check_torchrun
from affcli.doctor.workspace import Workspace

NEEDS_DATA = ("train", "torchrun", "inference")


def _tidy() -> None:
    """Free the device memory a row left (models, optimizers in reference cycles) before the
    next one measures its peak (on the CPU, reference counting frees what matters)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def planned_rows(plan: Plan, groups: Sequence[str], models: Sequence[str]
                 ) -> list[tuple[str, str]]:
    """(name, group) of every row the run will have, in order."""
    rows = [("environment", "environment")]
    if any(g in groups for g in NEEDS_DATA):
        rows.append(("data", "data"))
    if "kernels" in groups:
        rows += [(name, "kernels") for name, _ in kernels.CHECKS]
    if "encoder" in groups:
        rows += [("encoder eval forward", "encoder"), ("encoder train forward+backward",
                                                       "encoder")]
    if "torchrun" in groups:
        rows.append((f"torchrun train {models[0] if models else '(no model)'}", "torchrun"))
    if "bench" in groups:
        rows += [(f"bench ops B={b}", "bench") for b in plan.bench_batches]
    if "train" in groups:
        rows += [(f"train {m}", "train") for m in models]
    if "inference" in groups:
        for m in models:
            rows += [(f"eval {m}", "inference"), (f"predict {m}", "inference")]
    return rows


def run_checks(plan: Plan, groups: Sequence[str], out: Path | None = None,
               on_row: Callable[[Row], None] | None = None) -> Report:
    """Every row of `groups` (and the environment), the report written to `out` after each."""
    names = (training.trainable_models()[:plan.models]
             if any(g in groups for g in NEEDS_DATA) else [])
    rows = planned_rows(plan, groups, names)
    if plan.torchrun_last:  # (the report's order is the order the rows finish in)
        rows = [r for r in rows if r[1] != "torchrun"] + [r for r in rows if r[1] == "torchrun"]
    report = Report({**plan.summary(), "groups": list(groups), "rows": len(rows)}, out, on_row)
    env = report.run("environment", "environment",
                     lambda row: check_environment(plan, row, kernels=bool(groups)))
    if env.status != "ok" and plan.device != "cpu":
        for name, group in rows[1:]:
            report.add(Row(name, group, status="skipped",
                           error=f"the environment check failed ({env.error})"))
        return report

    def run(name: str, group: str, check: Callable[[Row], None]) -> None:
        report.run(name, group, check)
        _tidy()

    # (the checks seed torch's global generator; a caller's draws stay its own)
    with torch.random.fork_rng(devices=[]), Workspace(plan) as ws:
        launched = None
        if "torchrun" in groups and names:
            launched = TorchrunCheck(plan, ws, names[0], plan.torchrun_timeout_s)
        if any(g in groups for g in NEEDS_DATA):
            # the torchrun model's data first: the child starts as soon as it is there
            kinds = list(dict.fromkeys(training_kind(m) for m in names))

            def ready(kind: str) -> None:
                if launched is not None and kind == training_kind(launched.model):
                    launched.start()

            run("data", "data", lambda row: ws.build(kinds, row, ready))
        def collect() -> None:
            if "torchrun" in groups:
                name = next(n for n, g in rows if g == "torchrun")
                run(name, "torchrun", (lambda row: check_torchrun(launched, row)) if launched
                    else _fail("no registered model declares data to train on"))

        try:
            _untimed(plan, groups, run)
            if not plan.torchrun_last:
                collect()
            _timed(plan, groups, names, ws, run)
            if plan.torchrun_last:
                collect()
        finally:
            if launched is not None:
                launched.kill()
    return report


def training_kind(name: str) -> str:
    from affcli import models

    return models.model_class(name).dataset_kinds[0]


def _fail(reason: str) -> Callable[[Row], None]:
    def check(row: Row) -> None:
        raise RuntimeError(reason)
    return check


def _untimed(plan: Plan, groups: Sequence[str], run: Callable[..., None]) -> None:
    if "kernels" in groups:
        for name, check in kernels.CHECKS:
            run(name, "kernels", lambda row, check=check: check(plan, row))
    if "encoder" in groups:
        run("encoder eval forward", "encoder",
            lambda row: encoder.check_encoder(plan, row, train=False))
        run("encoder train forward+backward", "encoder",
            lambda row: encoder.check_encoder(plan, row, train=True))


def _timed(plan: Plan, groups: Sequence[str], names: list[str], ws: Workspace,
           run: Callable[..., None]) -> None:
    if "bench" in groups:
        for b in plan.bench_batches:
            run(f"bench ops B={b}", "bench",
                lambda row, b=b: throughput.check_bench(plan, row, b))
    if "train" in groups:
        for m in names:
            run(f"train {m}", "train",
                lambda row, m=m: training.check_training(plan, ws, m, row))
    if "inference" in groups:
        built = inference.Models(plan)
        for m in names:
            run(f"eval {m}", "inference",
                lambda row, m=m: inference.check_eval(plan, ws, built, m, row))
            run(f"predict {m}", "inference",
                lambda row, m=m: inference.check_predict(plan, ws, built, m, row))
            built.drop(m)
