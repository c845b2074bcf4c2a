"""`affcli bench`: measured figures for the performance targets (never timed tests)."""

from __future__ import annotations

from typing import Annotated

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter
from affcli.errors import AffError

bench_app = typer.Typer(help="Benchmarks: loader (more arrive with the engine).",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("loader")
def loader_cmd(
    dataset: Annotated[list[str] | None, typer.Option(
        "--dataset", "-d", help="laso, piad, agpil (repeatable; default all).")] = None,
    shapes_per_class: Annotated[int, typer.Option(
        "--shapes-per-class", "-k", help="Size of the synthetic set benchmarked.")] = 4,
    seconds: Annotated[float, typer.Option(help="Time spent per loader and split.")] = 3.0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Samples/s through our HDF5 datasets vs parsing raw files per sample (reference style)."""
    from affcli.engine.bench import bench_loader, geometric_mean

    chosen = [d.lower() for d in (dataset or ["laso", "piad", "agpil"])]
    bad = [d for d in chosen if d not in ("laso", "piad", "agpil")]
    if bad:
        raise AffError("--dataset", f"unknown dataset {bad[0]!r} (choose laso, piad, agpil)")
    if seconds <= 0:
        raise AffError("--seconds", "must be positive")
    rep = reporter(json_out, quiet)
    rep.note(f"synthesising and preparing {', '.join(chosen)} (k={shapes_per_class}) ...")
    rows = bench_loader(chosen, shapes_per_class, seconds)
    whole = [r["speedup"] for r in rows if r["part"] == "whole sample"]
    rep.table(
        "loader throughput (samples/s, one process)",
        ["dataset", "split", "part", "samples", "raw files", "HDF5", "speedup"],
        [(r["dataset"], r["split"], r["part"], r["samples"], f"{r['raw_samples_per_s']:.1f}",
          f"{r['h5_samples_per_s']:.1f}", f"{r['speedup']:.1f}x") for r in rows],
        caption="whole samples read through a DataLoader (batch 16); geometric mean speedup "
        f"{geometric_mean(whole):.1f}x",
    )
    rep.result({"benchmark": "loader", "shapes_per_class": shapes_per_class, "rows": rows,
                "geomean_speedup": geometric_mean(whole)})
