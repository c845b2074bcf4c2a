"""`affcli plot`: redraw a run folder's pictures from its saved files, no model needed (a thin
wrapper over engine.results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_cmd)


def plot_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (made by affcli train).")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Redraw results.csv and results.png (training curves) from each run's metrics.jsonl."""
    from affcli.engine.results import write_results
    from affcli.errors import AffError

    rep = reporter(json_out, quiet)
    written: dict[str, list[str]] = {}
    for run in runs:
        if not run.is_dir():
            raise AffError(run, "not a run folder" if run.exists() else "no such folder")
        paths = write_results(run)
        written[str(run)] = [str(p) for p in paths]
        rep.note(f"{run}: wrote {', '.join(p.name for p in paths)}")
    rep.result({"written": written})
