"""Synthetic LASO in its raw format: pickles plus the question CSV, for Seen and Unseen."""

from __future__ import annotations

import csv
import io
import pickle
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

from affcli.data.names import laso_affordance
from affcli.data.synth.common import shape_id, shape_instance, split_shapes
from affcli.data.synth.shapes import CLASS_AFFORDANCES, SYNTH_CLASSES
from affcli.data.synth.text import questions

SPLITS = ("train", "val", "test")


def laso_pairs() -> list[tuple[str, str]]:
    """Every (class, LASO affordance) pair of the synthetic classes."""
    return [(c, laso_affordance(a)) for c in SYNTH_CLASSES for a in CLASS_AFFORDANCES[c]]


def unseen_pairs() -> set[tuple[str, str]]:
    """LASO Unseen withholds object-affordance pairs from training: for each affordance that
    several classes share, the last such class (in class order) keeps that pair for test,
    as long as the class keeps at least one other affordance to train on."""
    held: set[tuple[str, str]] = set()
    by_aff: dict[str, list[str]] = {}
    for c, a in laso_pairs():
        by_aff.setdefault(a, []).append(c)
    for a, classes in sorted(by_aff.items()):
        if len(classes) < 2:
            continue
        for c in reversed(classes):
            remaining = [x for x in CLASS_AFFORDANCES[c] if (c, laso_affordance(x)) not in held]
            if len(remaining) > 1:
                held.add((c, a))
                break
    return held


def _dump(path: Path, obj: object) -> None:
    # Protocol 4 with a fixed object order: the same seed gives the same bytes.
    path.write_bytes(pickle.dumps(obj, protocol=4))


def write_laso(out: Path, seed: int, k: int, progress: Callable[[int], None] | None = None,
               classes: Sequence[str] = SYNTH_CLASSES,
               affordances: Collection[str] | None = None) -> dict[str, int]:
    """Write `out/Seen` and `out/Unseen` (the objects of `classes` only; with `affordances`,
    LASO names, only the samples of those affordances); returns sample counts per
    setting/split. The Unseen split keeps the full set's held-out pairs."""
    shapes: dict[tuple[str, int], tuple[str, np.ndarray, dict[str, np.ndarray]]] = {}
    for c in classes:
        for i in range(k):
            s = shape_instance(seed, c, i)
            labels = {laso_affordance(a): v for a, v in s.labels.items()}
            shapes[(c, i)] = (shape_id(seed, c, i), s.points, labels)
            if progress:
                progress(1)
    held = unseen_pairs()
    counts: dict[str, int] = {}
    for setting in ("Seen", "Unseen"):
        folder = out / setting
        folder.mkdir(parents=True)
        plans = {c: split_shapes(k, ci) for ci, c in enumerate(SYNTH_CLASSES)}
        for split in SPLITS:
            anno: list[dict[str, object]] = []
            objects: dict[str, np.ndarray] = {}
            for c in classes:
                for i in _instances(setting, split, plans[c], k):
                    sid, points, labels = shapes[(c, i)]
                    for a in sorted(labels):
                        if affordances is not None and a not in affordances:
                            continue
                        if not _keep(setting, split, (c, a), held):
                            continue
                        anno.append({"shape_id": sid, "class": c.lower(), "affordance": a,
                                     "mask": labels[a].astype(np.float32)})
                        objects[sid] = points.astype(np.float32)
            _dump(folder / f"anno_{split}.pkl", anno)
            _dump(folder / f"objects_{split}.pkl", objects)
            counts[f"{setting.lower()}/{split}"] = len(anno)
        _write_questions(folder / "Affordance-Question.csv")
    return counts


def _instances(setting: str, split: str, plan: dict[str, list[int]], k: int) -> list[int]:
    if setting == "Unseen" and split == "test":
        return list(range(k))  # the withheld pairs are new even on shapes seen in training
    return plan[split]


def _keep(setting: str, split: str, pair: tuple[str, str], held: set[tuple[str, str]]) -> bool:
    if setting == "Seen":
        return True
    return (pair in held) == (split == "test")


def _write_questions(path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Object", "Affordance"] + [f"Question{i}" for i in range(15)])
    for c, a in laso_pairs():
        piad_name = "wrapgrasp" if a == "wrap_grasp" else a
        w.writerow([c.lower(), a] + questions(c, piad_name))
    path.write_text(buf.getvalue(), encoding="utf-8")
