"""The doctor's report: one row per check, and the JSON document it is written as.

A check is a function filling in its row's figures; whatever it raises becomes the row's error
(one failure never stops the others), `Skip` makes it a skipped row with its reason. The
document is rewritten, atomically, after every row: a run cut short (the machine taken back, a
timeout) still leaves every finished row on disk.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from affcli import __version__
from affcli.errors import AffError
from affcli.fileio import write_json

FORMAT = "affcli-doctor-report"
VERSION = 1


class Skip(Exception):
    """Raised by a check that cannot run here (its reason goes into the row)."""


class CheckFailed(Exception):
    """A check ran and found a wrong result (a mismatch, a loss that did not fall)."""


@dataclass
class Row:
    name: str
    group: str
    status: str = "ok"  # ok, failed or skipped
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # failed: what went wrong; skipped: why it did not run
    notes: list[str] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "status": self.status,
                "seconds": round(self.seconds, 3), "figures": self.figures,
                "error": self.error, "notes": self.notes}


def describe(exc: BaseException) -> str:
    """One line for the row: AffError's own line, else the type and the message, plus where
    it was raised (the innermost frame inside affcli) when the message alone would not say."""
    if isinstance(exc, AffError | CheckFailed | Skip):
        return str(exc)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "affcli" in f.filename]
    where = ""
    if frames:
        f = frames[-1]
        where = f" (at {Path(f.filename).name}:{f.lineno})"
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}{where}"


class Report:
    """Rows in the order they ran, the plan they ran under, and the file they go to."""

    def __init__(self, plan: dict[str, Any], out: Path | None = None,
                 on_row: Callable[[Row], None] | None = None) -> None:
        self.plan, self.out, self.on_row = plan, out, on_row
        self.rows: list[Row] = []
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.t0 = time.perf_counter()

    def run(self, name: str, group: str, check: Callable[[Row], None]) -> Row:
        """Run `check(row)`; its exception, if any, is the row's error."""
        row = Row(name, group)
        t0 = time.perf_counter()
        try:
            check(row)
        except Skip as exc:
            row.status, row.error = "skipped", describe(exc)
        except Exception as exc:  # noqa: BLE001 (one failure must not stop the other rows)
            row.status, row.error = "failed", describe(exc)
        row.seconds = time.perf_counter() - t0
        return self.add(row)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.save()
        if self.on_row is not None:
            self.on_row(row)
        return row

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "failed"]

    def doc(self) -> dict[str, Any]:
        counts = {s: sum(r.status == s for r in self.rows) for s in ("ok", "failed", "skipped")}
        return {"format": FORMAT, "version": VERSION, "affcli_version": __version__,
                "started": self.started, "seconds": round(time.perf_counter() - self.t0, 1),
                "ok": not self.failed, "counts": counts, "plan": self.plan,
                "rows": [r.doc() for r in self.rows]}

    def save(self) -> None:
        if self.out is not None:
            write_json(self.out, self.doc())  # temp file + rename: never half a report


def format_figures(figures: dict[str, Any], limit: int = 12) -> str:
    """The row's scalar figures as `name=value` (lists and tables stay in the JSON)."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, bool) or value is None:
            text = str(value).lower()
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = "-" if not math.isfinite(value) else f"{value:.3g}"
        elif isinstance(value, str):
            text = value
        else:
            continue
        parts.append(f"{key}={text}")
    extra = len(parts) - limit
    return ", ".join(parts[:limit]) + (f", ... (+{extra})" if extra > 0 else "")
