"""`affcli compare`: one table across finished runs (a thin wrapper over engine.comparison)."""

from __future__ import annotations

import csv
import io
import sys
from typing import Annotated

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter
from affcli.errors import EXIT_BAD_INPUT

SORTABLE = ("aiou", "auc", "sim", "mae", "best_val", "epochs", "seconds")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)


def compare_cmd(
    runs: Annotated[list[str], typer.Argument(
        help="Run folders or glob patterns (quote them: 'runs/iagnet/*').")],
    sort: Annotated[str | None, typer.Option(
        help=f"Sort by one column, best first: {', '.join(SORTABLE)}.")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout instead.")
                       ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare finished runs: model, data, epochs, selection, votes, test figures, time."""
    from affcli.engine.comparison import COLUMNS, compare
    from affcli.errors import AffError

    if sort is not None and sort not in SORTABLE:
        raise AffError("--sort", f"must be one of {', '.join(SORTABLE)}, got {sort!r}")
    rep = reporter(json_out or csv_out, quiet)
    rows, failures = compare(runs, sort)
    if csv_out:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS}
                         for row in rows)
        sys.stdout.write(buffer.getvalue())
    pct = {"aiou", "auc"}
    rep.table("runs", ["run", "model", "setting", "epochs", "best (by)", "votes", "scored on",
                       "aIoU %", "AUC %", "SIM", "MAE", "time"],
              [[r["run"], r["model"], r["setting"], r["epochs"],
                f"{r['best_epoch']} ({r['select_by']})", r["votes"], r["scored_on"],
                *[_num(r[m], m in pct) for m in ("aiou", "auc", "sim", "mae")],
                f"{r['seconds']:.0f} s"] for r in rows],
              caption="scored on val:SPLIT = no final test; the best validation epoch's figures")
    if not csv_out:
        rep.result({"runs": rows, "unreadable": failures})
    for f in failures:
        rep.warn(f"{f['run']}: {f['error']}")
    if failures:
        raise typer.Exit(EXIT_BAD_INPUT)


def _num(value: object, percent: bool) -> object:
    if isinstance(value, (int, float)):
        return float(value) * (100 if percent else 1)
    return "-"
