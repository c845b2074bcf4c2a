"""Training curves in every run folder: `results.csv` (one row per finished epoch) and
`results.png` (train loss, learning rate and the four validation metrics, the best epoch
marked), both derived from `metrics.jsonl` alone. The trainer rewrites them after every epoch,
atomically, so a long job can be watched while it runs; a resumed run continues the same
files because they are redrawn from the whole log; `affcli plot` redraws them for old runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from affcli.errors import AffError
from affcli.fileio import atomic_output

CSV_NAME, PNG_NAME = "results.csv", "results.png"
COLUMNS = ("epoch", "train_loss", "lr", "val_aiou", "val_auc", "val_sim", "val_mae", "best",
           "samples_per_s", "seconds", "wall_seconds")
# Okabe-Ito: told apart with every common colour-vision deficiency
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9")
PNG_SIZE = (1200, 640)  # pixels: six panels readable at 100 % zoom


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of `run_dir/metrics.jsonl`, in order; a line that is not an epoch
    record is an error naming the file and the line (exit 2)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise AffError(path, "no such file: this folder has no finished epoch")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AffError(path, f"not JSON ({exc.msg})", record=number) from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise AffError(path, "not an epoch record", record=number)
        records.append(record)
    return records


def result_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per record with the COLUMNS (wall_seconds: the epochs' time so far; the
    validation figures None when the epoch had no validation)."""
    rows, wall = [], 0.0
    for r in records:
        val = r.get("val") or {}
        wall += float(r.get("seconds") or 0.0)
        rows.append({"epoch": r["epoch"], "train_loss": r.get("train_loss"), "lr": r.get("lr"),
                     **{f"val_{m}": val.get(m) for m in ("aiou", "auc", "sim", "mae")},
                     "best": bool(r.get("best")), "samples_per_s": r.get("samples_per_s"),
                     "seconds": r.get("seconds"), "wall_seconds": wall})
    return rows


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: "" if row[k] is None else row[k] for k in COLUMNS}
                             for row in rows)
    return Path(path)


def draw_curves(path: str | Path, rows: list[dict[str, Any]], title: str) -> Path:
    """results.png: one panel each for train loss, lr, val aIoU, AUC, SIM and MAE; the last
    best epoch (by the run's selection metric) as a dashed line in every panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [("train_loss", "train loss"), ("lr", "learning rate"),
              ("val_aiou", "validation aIoU, % (higher is better)"),
              ("val_auc", "validation AUC, % (higher is better)"),
              ("val_sim", "validation SIM (higher is better)"),
              ("val_mae", "validation MAE (lower is better)")]
    fig = Figure(figsize=(PNG_SIZE[0] / 100, PNG_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    epochs = [row["epoch"] for row in rows]
    best = [row["epoch"] for row in rows if row["best"]]
    for ax, (key, label), colour in zip(axes.flat, panels, PALETTE, strict=True):
        # aIoU and AUC in percent, as the tables and the charts of plots/ print them
        factor = 100.0 if key in ("val_aiou", "val_auc") else 1.0
        values = [_number(row[key]) * factor for row in rows]
        ax.plot(epochs, values, color=colour, marker="o", markersize=4, linewidth=1.8)
        if best:
            ax.axvline(best[-1], color="#555555", linestyle="--", linewidth=1.0,
                       label=f"best epoch {best[-1]}")
            value = values[epochs.index(best[-1])]
            if math.isfinite(value):
                ax.plot([best[-1]], [value], marker="*", markersize=13, color="black",
                        linestyle="none")
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("epoch", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if best:
        axes.flat[0].legend(fontsize=9, loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def write_results(run_dir: str | Path, title: str | None = None) -> list[Path]:
    """Rewrite results.csv and results.png of `run_dir` from its metrics.jsonl."""
    run_dir = Path(run_dir)
    rows = result_rows(read_records(run_dir))
    if title is None:
        title = curve_title(run_dir, rows)
    return [write_csv(run_dir / CSV_NAME, rows), draw_curves(run_dir / PNG_NAME, rows, title)]


def curve_title(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    """'<model> on <data file>: <n> epochs, best <k> by <metric>' from config.yaml when it
    is readable, else the folder's name."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    name = (f"{cfg['model']} on {Path(str(cfg.get('data', '?'))).name}"
            if isinstance(cfg, dict) and "model" in cfg else run_dir.name)
    best = [row["epoch"] for row in rows if row["best"]]
    select_by = cfg.get("select_by", "aiou") if isinstance(cfg, dict) else "aiou"
    return (f"{name}: {len(rows)} epoch{'s' if len(rows) != 1 else ''}"
            + (f", best {best[-1]} by {select_by}" if best else ""))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
