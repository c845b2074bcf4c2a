"""One row per finished run folder, for `affcli compare`: read from the files `affcli train`
writes (config.yaml, metrics.jsonl, test_metrics.json), without loading a model."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path
from typing import Any

import yaml

from affcli.engine.recipes import SELECT_METRICS as METRICS
from affcli.engine.results import read_records
from affcli.errors import AffError

# the table's columns, in order (JSON and CSV use the same keys)
COLUMNS = ("run", "model", "setting", "data", "epochs", "best_epoch", "select_by",
           "best_val", "votes", "scored_on", "aiou", "auc", "sim", "mae", "seconds")


def expand(patterns: list[str]) -> list[Path]:
    """Each argument as a path, or the folders a glob pattern matches (sorted); a pattern
    matching nothing stays, to be reported as missing."""
    out: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
            out.extend(matches or [Path(pattern)])
        else:
            out.append(Path(pattern))
    return out


class RunReadError(Exception):
    """Why a folder is not a readable run."""


def read_run(path: Path) -> dict[str, Any]:
    """The comparison row of one run folder. A run without a final test shows its best
    validation figures (scored_on names that split, marked 'val:')."""
    if not path.is_dir():
        raise RunReadError("not a folder" if path.exists() else "no such folder")
    cfg = _load(path / "config.yaml", yaml.safe_load)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise RunReadError("config.yaml is not a run configuration")
    records = []
    if (path / "metrics.jsonl").is_file():
        try:
            records = read_records(path)
        except AffError as exc:
            raise RunReadError(f"metrics.jsonl line {exc.record}: {exc.reason}") from None
    if not records:
        raise RunReadError("no finished epoch (metrics.jsonl is missing or empty)")
    select_by = cfg.get("select_by", "aiou")
    best = [r for r in records if r.get("best")]
    best_record = best[-1] if best else records[-1]
    row: dict[str, Any] = {
        "run": str(path), "model": cfg["model"], "setting": cfg.get("setting"),
        "data": cfg.get("data"), "epochs": len(records), "best_epoch": best_record.get("epoch"),
        "select_by": select_by,
        "best_val": (best_record.get("val") or {}).get(select_by),
        "seconds": sum(float(r.get("seconds", 0.0)) for r in records),
    }
    test_file = path / "test_metrics.json"
    if test_file.is_file():
        test = _load(test_file, json.loads)
        overall = test.get("overall") if isinstance(test, dict) else None
        if not isinstance(overall, dict):
            raise RunReadError("test_metrics.json has no overall figures")
        row.update(votes=test.get("votes", cfg.get("votes", 1)),
                   scored_on=test.get("split", "test"),
                   **{m: overall.get(m) for m in METRICS})
    else:
        val = best_record.get("val") or {}
        row.update(votes=1, scored_on=f"val:{best_record.get('val_split', 'val')}",
                   **{m: val.get(m) for m in METRICS})
    return row


def _load(path: Path, parse: Any) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunReadError(f"no {path.name}") from None
    except OSError as exc:
        raise RunReadError(f"{path.name}: {exc.strerror or exc}") from None
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RunReadError(f"{path.name} is malformed ({str(exc).splitlines()[0]})") from None


def compare(patterns: list[str], sort: str | None = None
            ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows, failures): a row per readable run, sorted by `sort` (best first: ascending for
    MAE and seconds) when given; a {run, error} per unreadable one."""
    rows, failures = [], []
    for path in expand(patterns):
        try:
            rows.append(read_run(path))
        except RunReadError as exc:
            failures.append({"run": str(path), "error": str(exc)})
    if sort is not None:
        ascending = sort in ("mae", "seconds")

        def key(row: dict[str, Any]) -> tuple[bool, float]:
            v = row.get(sort)
            missing = not isinstance(v, (int, float)) or not math.isfinite(v)
            return missing, 0.0 if missing else (v if ascending else -v)

        rows.sort(key=key)
    return rows, failures
