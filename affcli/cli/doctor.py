"""`affcli doctor`: the environment, and with --gpu every check of the GPU path, as one table
and one JSON report (a thin wrapper over affcli.doctor)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter
from affcli.errors import EXIT_INTERNAL, AffError

if TYPE_CHECKING:  # torch-free at import: `affcli --version` must stay cheap
    from affcli.console import Reporter
    from affcli.doctor.report import Report, Row


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)


def doctor_cmd(
    gpu: Annotated[bool, typer.Option(
        "--gpu", help="Check the GPU path: every Triton kernel against the CPU path, the "
        "encoder, `bench ops`, a few training steps per model with and without AMP, `train` "
        "under torchrun (NCCL), predict and eval against the CPU.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Run the --gpu checks on the CPU instead: kernels interpreted, "
        "tiny sizes, gloo for NCCL (what the test suite runs; implies --gpu).")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Write the JSON report here (rewritten after every row, atomically).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run only these groups (repeatable): kernels, encoder, bench, train, "
        "torchrun, inference.")] = None,
    tolerance_scale: Annotated[float, typer.Option(
        help="Multiply every tolerance by this (0 demands exact equality).")] = 1.0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check this machine: versions and devices; with --gpu, that the GPU path computes what
    the CPU path computes, and how fast. Exit 1 if any check failed."""
    from affcli.doctor.plan import GROUPS

    groups = [g.lower() for g in only] if only else list(GROUPS)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise AffError("--only", f"unknown group {bad[0]!r} (choose {', '.join(GROUPS)})")
    if not tolerance_scale >= 0:
        raise AffError("--tolerance-scale", f"must be >= 0, got {tolerance_scale}")
    if only and not (gpu or dry_run):
        raise AffError("--only", "selects among the --gpu checks: add --gpu (or --dry-run)")
    if dry_run:
        _dry_run_environment()
    elif not gpu:
        groups = []  # the environment row alone
    rep = reporter(json_out, quiet)
    report = _run(rep, groups, dry_run, out, tolerance_scale)
    _print(rep, report, out)
    from affcli.cli import allow_fast_exit

    allow_fast_exit()  # the report is complete on disk (and the scratch folder gone)
    if report.failed:
        raise typer.Exit(EXIT_INTERNAL)


def _dry_run_environment() -> None:
    """TRITON_INTERPRET=1 before triton is first imported: the only way its kernels run on CPU
    tensors. When something imported triton without it, this process cannot switch any more:
    the same command line runs again in a fresh process that has it from the start.

    Also OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP: the dry run shares the cores with
    its torchrun child, and OpenMP threads that spin while they wait would take the core the
    other process needs (several times slower on 2 cores)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if "triton" in sys.modules:
        from affcli.cli import current_args

        env = {**os.environ, "TRITON_INTERPRET": "1"}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        raise typer.Exit(subprocess.call([sys.executable, "-m", "affcli", *current_args()],
                                          env=env))
    os.environ["TRITON_INTERPRET"] = "1"


def _run(rep: Reporter, groups: list[str], dry_run: bool, out: Path | None,
         tolerance_scale: float) -> Report:
    from affcli.doctor.checks import run_checks
    from affcli.doctor.plan import dry_plan, gpu_plan

    plan = (dry_plan() if dry_run else gpu_plan()).scaled(tolerance_scale)
    if not groups:
        import torch

        if not torch.cuda.is_available():
            plan = dry_plan()  # the environment row of a CPU machine
    where = "a dry run on the CPU" if plan.dry else f"on {plan.device}"
    rep.note(f"affcli doctor: {where}, {', '.join(groups)}" if groups
             else "affcli doctor: the environment (--gpu checks the GPU path)")

    def progress(row: Row) -> None:
        rep.note(f"{row.status:>7}  {row.name} ({row.seconds:.1f} s)"
                 + (f": {row.error}" if row.error else ""))

    return run_checks(plan, groups, out, on_row=progress)


def _print(rep: Reporter, report: Report, out: Path | None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from affcli.doctor.report import format_figures

    doc = report.doc()
    plan, counts = doc["plan"], doc["counts"]
    if not (rep.json_mode or rep.quiet):
        title = (f"affcli doctor ({plan['mode']}, {plan['device']})" if plan["groups"]
                 else "affcli doctor: environment")
        caption = (f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
                   f"in {doc['seconds']:.0f} s" + (f"; report: {out}" if out else ""))
        table = Table(title=title, caption=escape(caption))
        table.add_column("check")
        table.add_column("status")
        table.add_column("seconds", justify="right")
        table.add_column("figures", overflow="fold")
        table.add_column("error", overflow="fold")
        style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
        for r in report.rows:
            # (names, figures and errors may hold brackets: never Rich markup)
            table.add_row(escape(r.name), f"[{style[r.status]}]{r.status}[/]",
                          f"{r.seconds:.1f}", escape(format_figures(r.figures)),
                          escape(_clip(r.error or "")))
        rep.out.print(table)
    rep.result(doc)


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
