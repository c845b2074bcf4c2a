"""Everything that reaches the terminal: Rich tables and progress, JSON documents, error lines.

Human output goes to stdout (tables) and stderr (progress, notes); with --json, stdout carries
exactly one JSON document and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
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


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf become null so every consumer can parse the document."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

    def note(self, message: str) -> None:
        """A human remark on stderr (never mixes with the JSON on stdout)."""
        if not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", markup=False, style="yellow")

    def result(self, doc: dict[str, Any]) -> None:
        """The command's machine-readable result; printed only with --json."""
        if self.json_mode:
            sys.stdout.write(json.dumps(_jsonable(doc), indent=2) + "\n")
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
