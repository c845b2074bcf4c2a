"""`affcli prepare`: raw dataset files to the one HDF5 format."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import ForceOpt, JsonOpt, QuietOpt, reporter


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_cmd)


def prepare_cmd(
    dataset: Annotated[str, typer.Argument(help="laso, piad or agpil.")],
    root: Annotated[Path | None, typer.Option(
        help="Dataset root (default: the reference's folder name: LASO_dataset, Data).")] = None,
    setting: Annotated[str, typer.Option(help="seen or unseen.")] = "seen",
    view: Annotated[str, typer.Option(help="AGPIL view: full, partial or rotation.")] = "full",
    out: Annotated[Path | None, typer.Option(
        help="Output file (default data/<dataset>_<setting>.h5).")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a raw LASO, PIAD or AGPIL setting once into affcli's HDF5 format."""
    from affcli.data.prepare import prepare

    rep = reporter(json_out, quiet)
    t0 = time.perf_counter()
    with rep.progress(f"prepare {dataset}") as progress_factory:
        summary = prepare(dataset.lower(), root, setting, view, out, force,
                          progress_factory=progress_factory)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    rows = [(name, s["samples"], s["shapes"], len(s["classes"]), len(s["affordances"]))
            for name, s in summary["splits"].items()]
    rep.table(f"{summary['dataset'].upper()} {summary['setting']}"
              + (f" ({summary['view']} view)" if summary["view"] else ""),
              ["split", "samples", "shapes", "classes", "affordances"], rows,
              caption=f"{summary['output']} · {summary['source_files']} source files · "
              f"{summary['seconds']:.1f} s")
    rep.result(summary)
