"""Helpers shared by the raw-format readers: finding a setting's folder, list files, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from affcli.errors import AffError

EXPECTED_LAYOUT = {
    "laso": """\
  <root>/[Seen|Unseen/]anno_train.pkl  anno_val.pkl  anno_test.pkl
                      objects_train.pkl objects_val.pkl objects_test.pkl
                      Affordance-Question.csv""",
    "piad": """\
  <root>/[Seen|Unseen/]Img_Train.txt  Point_Train.txt  Box_Train.txt
                      Img_Test.txt   Point_Test.txt   Box_Test.txt
  (each a list of image / point-text / LabelMe-JSON paths, absolute or relative to <root>)""",
    "agpil": """\
  <root>/[Full_view|Partial_view|Rotation_view/][Seen|Unseen/]
        Img_Train.txt  Point_Train.txt  Description_Train.txt  [Box_Train.txt]
        Img_Test.txt   Point_Test.txt   Description_Test.txt   [Box_Test.txt]""",
}


def missing_root(dataset: str, root: Path) -> AffError:
    what = "not found" if not root.is_dir() else f"does not hold the {dataset.upper()} files"
    return AffError(
        root,
        f"dataset root {what} (pass --root, or make a synthetic stand-in with "
        f"`affcli synth {dataset} {root}`)",
        hint=f"expected layout:\n{EXPECTED_LAYOUT[dataset]}",
    )


def child_ci(parent: Path, name: str) -> Path | None:
    """`parent/name`, matched case-insensitively; None if there is no such folder."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def setting_dir(root: Path, setting: str, view: str | None = None) -> Path:
    """The folder holding one setting's files: <root>[/<View>_view]/<Setting> when those
    folders exist (matched case-insensitively), else the nearest existing parent."""
    base = root
    if view is not None:
        base = child_ci(root, f"{view}_view") or child_ci(root, view) or root
    return child_ci(base, setting) or base


def resolve_entry(entry: str, roots: list[Path], list_file: Path, line: int) -> Path:
    """A list-file entry as a path: absolute, or relative to one of `roots` (root, setting
    folder, the list file's folder, the root's parent), first that exists wins."""
    p = Path(entry)
    if p.is_absolute():
        if p.exists():
            return p
        raise AffError(list_file, f"lists {entry!r}, which does not exist", record=f"line {line}")
    for base in roots:
        cand = base / p
        if cand.exists():
            return cand
    raise AffError(
        list_file,
        f"lists {entry!r}, which does not exist under {', '.join(str(r) for r in roots)}",
        record=f"line {line}",
    )


def read_list_file(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a list file as (1-based line number, stripped entry)."""
    if not path.is_file():
        raise AffError(path, "list file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AffError(path, "not a UTF-8 text list file") from None
    return [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines()) if ln.strip()]


def check_points(points: object, file: Path | str, record: str, n: int) -> np.ndarray:
    """A float32 [n, 3] array of finite coordinates, or an AffError saying what is wrong."""
    arr = np.asarray(points)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise AffError(file, f"points are not a numeric array (dtype {arr.dtype})", record)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise AffError(file, f"points have shape {tuple(arr.shape)}, expected ({n}, 3)", record)
    if arr.shape[0] != n:
        raise AffError(file, f"{arr.shape[0]} points, expected {n}", record)
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise AffError(file, f"non-finite (NaN/inf) coordinates at point {int(np.argmax(bad))}",
                       record)
    return arr


def check_scores(scores: object, file: Path | str, record: str, n: int, what: str = "mask"
                 ) -> np.ndarray:
    """A float32 array whose first axis has n entries, all finite and within [0, 1]."""
    arr = np.asarray(scores)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise AffError(file, f"{what} is not a numeric array (dtype {arr.dtype})", record)
    if arr.shape[:1] != (n,):
        raise AffError(file, f"{what} has shape {tuple(arr.shape)}, expected ({n}, ...)", record)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise AffError(file, f"{what} holds NaN/inf", record)
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
    if lo < 0.0 or hi > 1.0:
        raise AffError(file, f"{what} values outside [0, 1] (min {lo:.4g}, max {hi:.4g})", record)
    return arr
