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
    """Redraw a run's pictures from its saved files: results.csv and results.png (training
    curves) from metrics.jsonl, and each RUN/plots/<split>/ from its eval.json and
    gallery.npz."""
    from affcli.engine.evalplots import DATA_NAME, draw_eval_plots
    from affcli.engine.results import write_results
    from affcli.errors import AffError

    rep = reporter(json_out, quiet)
    written: dict[str, list[str]] = {}
    for run in runs:
        if not run.is_dir():
            raise AffError(run, "not a run folder" if run.exists() else "no such folder")
        evaluated = sorted(p.parent for p in (run / "plots").glob(f"*/{DATA_NAME}"))
        paths = []
        if (run / "metrics.jsonl").exists() or not evaluated:
            paths += write_results(run)
        for folder in evaluated:
            drawn = draw_eval_plots(folder)
            rep.note(f"{folder}: drew {len(drawn)} pictures")
            paths += drawn
        written[str(run)] = [str(p) for p in paths]
        rep.note(f"{run}: wrote {len(paths)} files")
    rep.result({"written": written})
