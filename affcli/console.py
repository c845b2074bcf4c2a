"""Everything that reaches the terminal: Rich tables and progress, JSON documents, error lines.

Human output goes to stdout (tables) and stderr (progress, notes); with --json, stdout carries
exactly one JSON document and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from affcli.fileio import jsonable


class Reporter:
    """What one CLI command prints, honouring --json and --quiet."""

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def table(
        self,
        title: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        caption: str | None = None,
    ) -> None:
        if self.json_mode or self.quiet:
            return
        table = Table(title=title, caption=caption)
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        self.out.print(table)

    def facts(self, title: str, pairs: Sequence[tuple[str, Any]]) -> None:
        """A two-column table of named facts (no header), for one result's details."""
        if self.json_mode or self.quiet:
            return
        table = Table(title=title, show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")  # paths are kept whole, folded if need be
        for name, value in pairs:
            table.add_row(name, _cell(value))
        self.out.print(table)

    def note(self, message: str) -> None:
        """A human remark on stderr (never mixes with the JSON on stdout)."""
        if not self.quiet:
            self.err.print(message, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)

    def result(self, doc: dict[str, Any]) -> None:
        """The command's machine-readable result; printed only with --json."""
        if self.json_mode:
            sys.stdout.write(json.dumps(jsonable(doc), indent=2) + "\n")
            sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[[int], Callable[[int], None]]]:
        """Yields a factory: `advance = factory(total)` starts the bar, `advance(n)` moves it.

        Work whose size is known only after some reading starts the bar then. A live bar
        appears only on an interactive stderr.
        """
        show = not self.quiet and not self.json_mode and self.err.is_terminal
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=not show,
        ) as bar:

            def start(total: int) -> Callable[[int], None]:
                task = bar.add_task(description, total=total)
                return lambda n=1: bar.advance(task, n)

            yield start


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def error_line(message: str) -> str:
    return f"error: {message}"


def print_error(message: str) -> None:
    sys.stderr.write(error_line(message) + "\n")
    sys.stderr.flush()


def _pct(value: Any) -> Any:
    return value * 100 if isinstance(value, float) and math.isfinite(value) else value


METRIC_COLUMNS = ["samples", "aIoU (%)", "AUC (%)", "SIM", "MAE"]


def _metric_row(name: str, m: dict[str, Any]) -> list[Any]:
    return [name, m["count"], _pct(m["aiou"]), _pct(m["auc"]), m["sim"], m["mae"]]


def metric_tables(rep: Reporter, result: dict[str, Any], title: str,
                  baseline: dict[str, Any] | None = None) -> None:
    """The papers' metrics per object class and per affordance (names, sample counts) with
    an overall row, then the overall figures beside a baseline's when given. aIoU and AUC
    are in percent as the papers print them; SIM and MAE as fractions."""
    for key, label in (("per_object", "object"), ("per_affordance", "affordance")):
        rows = [_metric_row(name, m) for name, m in sorted(result[key].items())]
        rows.append(_metric_row("overall", result["overall"]))
        rep.table(f"{title}: per {label}", [label, *METRIC_COLUMNS], rows)
    if baseline is not None:
        rep.table(f"{title}: against a constant prediction", ["predictor", *METRIC_COLUMNS],
                  [_metric_row("model", result["overall"]),
                   _metric_row("constant (split mean)", baseline["overall"])])


def votes_label(votes: int) -> str:
    """", 3 votes" for a table title, "" for one pass."""
    return f", {votes} votes" if votes > 1 else ""


class TrainDisplay:
    """Training progress: a live Rich bar (loss, samples/s, ETA) on a terminal, plain log
    lines otherwise; one summary line per epoch. Its methods are the trainer's hooks."""

    # a log (not a terminal) gets a batch line at most this often: a 50-epoch nohup log
    # stays readable and grep-able; the epoch lines all come
    LOG_INTERVAL_S = 5.0

    def __init__(self, rep: Reporter, epochs: int) -> None:
        self.rep, self.epochs = rep, epochs
        self.live = not rep.quiet and not rep.json_mode and rep.err.is_terminal
        self.last_line = time.monotonic()
        self.bar: Progress | None = None
        self.task: Any = None
        self.every = 1
        self.total = 0

    def hooks(self) -> dict[str, Callable[..., None]]:
        return {"note": self.rep.note, "warn": self.rep.warn, "epoch_start": self.epoch_start,
                "step": self.step, "epoch_end": self.epoch_end}

    def epoch_start(self, epoch: int, total: int, start: int) -> None:
        self.total = total
        self.every = max(1, total // 10)
        if not self.live:
            return
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"),
                            TextColumn("{task.fields[speed]} samples/s"),
                            TimeRemainingColumn(), console=self.rep.err, transient=True)
        self.bar.start()
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=total,
                                      completed=start, loss="-", speed="-")

    def step(self, epoch: int, step: int, total: int, loss: float, lr: float,
             speed: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", speed=f"{speed:.1f}")
        elif (not self.rep.quiet and step % self.every == 0 and step < total
              and time.monotonic() - self.last_line >= self.LOG_INTERVAL_S):
            self.last_line = time.monotonic()
            self.rep.note(f"epoch {epoch + 1}/{self.epochs} batch {step}/{total} loss "
                          f"{loss:.4f} lr {lr:.2e} {speed:.1f} samples/s")

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self.last_line = time.monotonic()
        val = record.get("val") or {}
        figures = " ".join(f"{k} {_cell(_pct(val[k]) if k in ('aiou', 'auc') else val[k])}"
                           for k in ("aiou", "auc", "sim", "mae") if k in val)
        mark = f"  (best {record.get('select_by', 'aiou')})" if record.get("best") else ""
        self.rep.note(f"epoch {record['epoch']}/{self.epochs} train loss "
                      f"{record['train_loss']:.4f} | {record['val_split']} {figures}{mark} | "
                      f"{record['samples_per_s']:.1f} samples/s")
