"""Evaluation pictures in `RUN/plots/<split>/`, written by `affcli eval` and at the end of
`affcli train`:

- `per_object.png`, `per_affordance.png`: aIoU per class with its sample count, the
  constant prediction's aIoU per class as a black tick and overall as a dotted line;
- `iou_thresholds.png`: the IoU at each of aIoU's 20 thresholds, all samples and per
  affordance (where to threshold a heatmap);
- `gallery/<affordance>.png`: the best, median and worst samples by aIoU, ground truth and
  prediction side by side from the same two viewpoints, the question (or the interaction
  image) and the sample's metrics above each row.

What the pictures show is saved first (`eval.json`, `gallery.npz`), and the pictures are
drawn from those files alone, so `affcli plot RUN` redraws them without a model.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from affcli import metrics
from affcli.errors import AffError
from affcli.fileio import atomic_output, same_file, write_json

DATA_NAME, ARRAYS_NAME = "eval.json", "gallery.npz"
RANKS = ("best", "median", "worst")
# Okabe-Ito (colour-blind safe): model bars, constant baseline, per-affordance curve
BLUE, ORANGE, GREY = "#0072B2", "#E69F00", "#999999"
WIDTH = 1200  # pixels of every chart: readable at 100 % zoom
DPI = 100


def plots_dir(run_dir: Path, split: str, data: Path, trained_on: str | None) -> Path:
    """RUN/plots/<split>, or <split>-<data file stem> for a file the run did not train on
    (so another file's pictures never replace the run's own)."""
    same = same_file(trained_on, data) if trained_on else False
    return run_dir / "plots" / (split if same else f"{split}-{Path(data).stem}")


def write_eval_plots(out_dir: str | Path, pred: Any, dataset: Any, result: dict[str, Any],
                     baseline: dict[str, Any] | None, title: str) -> list[Path]:
    """Save what the pictures show for these predictions (evaluator.Predictions of
    `dataset`) with their metrics (`evaluator.score`) and the constant baseline's, then draw
    the pictures. Returns the paths of the pictures."""
    out_dir = Path(out_dir)
    doc, arrays = _collect(pred, dataset, result, baseline, title)
    write_json(out_dir / DATA_NAME, doc)
    with atomic_output(out_dir / ARRAYS_NAME) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return draw_eval_plots(out_dir)


def _collect(pred: Any, dataset: Any, result: dict[str, Any],
             baseline: dict[str, Any] | None, title: str
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    values = (metrics.per_sample(pred.heatmap, pred.target) if pred.valid is None
              else metrics.per_sample_valid(pred.heatmap, pred.target, pred.valid))
    per = {m: values[m].numpy() for m in metrics.METRICS}
    curves = metrics.iou_curves(pred.heatmap, pred.target, pred.valid)
    affordances = np.array(pred.affordances, dtype=object)
    doc: dict[str, Any] = {
        "title": title, "result": result, "baseline": baseline,
        "thresholds": np.linspace(0, 1, metrics.IOU_THRESHOLDS).tolist(),
        "iou_curve": {"overall": _mean_curve(curves),
                      "per_affordance": {a: _mean_curve(curves[affordances == a])
                                         for a in sorted(set(pred.affordances))}},
        "gallery": [],
    }
    picks: list[int] = []
    for aff in sorted(set(pred.affordances)):
        rows = np.flatnonzero((affordances == aff) & np.isfinite(per["aiou"]))
        if len(rows) == 0:
            continue
        ordered = rows[np.argsort(-per["aiou"][rows], kind="stable")]
        chosen = dict(zip(RANKS, (ordered[0], ordered[len(ordered) // 2], ordered[-1]),
                          strict=True))
        seen: set[int] = set()
        for rank, row in chosen.items():
            if int(row) in seen:  # fewer than three samples: each is shown once
                continue
            seen.add(int(row))
            item = dataset[int(pred.index[row])]
            doc["gallery"].append({
                "affordance": aff, "rank": rank, "index": int(pred.index[row]),
                "object": pred.objects[row],
                "text": str(item.get("question") or item.get("instruction") or ""),
                "metrics": {m: float(per[m][row]) for m in metrics.METRICS},
            })
            picks.append(int(row))
    arrays = _gallery_arrays(pred, dataset, picks)
    return doc, arrays


def _mean_curve(curves: np.ndarray) -> list[float]:
    with warnings.catch_warnings():  # a class without any positive sample: all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        if not len(curves):
            return [math.nan] * metrics.IOU_THRESHOLDS
        return np.nanmean(curves, axis=0).tolist()


def _gallery_arrays(pred: Any, dataset: Any, rows: list[int]) -> dict[str, np.ndarray]:
    points, images, boxes = [], [], []
    for row in rows:
        item = dataset[int(pred.index[row])]
        pts = np.asarray(item["points"], np.float32)
        points.append(pts.T if pts.shape[0] == 3 and pts.shape[1] != 3 else pts)
        if "image" in item:
            images.append(_image_uint8(item["image"]))
            boxes.append(np.stack([np.asarray(item["subject_box"], np.float32),
                                   np.asarray(item["object_box"], np.float32)]))
    out = {"points": np.stack(points) if points else np.zeros((0, 0, 3), np.float32),
           "target": pred.target[rows].astype(np.float32),
           "heatmap": pred.heatmap[rows].astype(np.float32)}
    if pred.valid is not None:
        out["valid"] = pred.valid[rows]
    if images:
        out["image"], out["boxes"] = np.stack(images), np.stack(boxes)
    return out


def _image_uint8(image: Any) -> np.ndarray:
    """A dataset image tensor [3, H, W] (ImageNet-normalised) as uint8 [H, W, 3]."""
    from affcli.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    x = np.asarray(image, np.float32).transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def draw_eval_plots(out_dir: str | Path) -> list[Path]:
    """Draw every picture of `out_dir` from its eval.json and gallery.npz."""
    out_dir = Path(out_dir)
    doc = _read_doc(out_dir / DATA_NAME)
    arrays = _read_arrays(out_dir / ARRAYS_NAME)
    rows = len(doc["gallery"])
    for key in ("points", "target", "heatmap"):
        if key not in arrays or len(arrays[key]) != rows:
            raise AffError(out_dir / ARRAYS_NAME, f"{key!r} does not hold the {rows} gallery "
                           f"samples of {DATA_NAME}")
    result, baseline = doc["result"], doc.get("baseline")
    paths = [
        draw_bars(out_dir / "per_object.png", result, baseline, "per_object", "object class",
                  doc["title"]),
        draw_bars(out_dir / "per_affordance.png", result, baseline, "per_affordance",
                  "affordance", doc["title"]),
        draw_thresholds(out_dir / "iou_thresholds.png", doc),
    ]
    for aff in dict.fromkeys(g["affordance"] for g in doc["gallery"]):
        rows = [i for i, g in enumerate(doc["gallery"]) if g["affordance"] == aff]
        paths.append(draw_gallery(out_dir / "gallery" / f"{slug(aff)}.png", doc, arrays,
                                  rows))
    return paths


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise AffError(path, "no such file: evaluate the run first (affcli eval RUN)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise AffError(path, f"unreadable ({exc})") from None
    missing = [k for k in ("title", "result", "thresholds", "iou_curve", "gallery")
               if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise AffError(path, f"not an evaluation summary (missing {', '.join(missing)})")
    return doc


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:  # numbers only: nothing to unpickle
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise AffError(path, "no such file: evaluate the run first (affcli eval RUN)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise AffError(path, f"unreadable ({exc})") from None


def slug(name: str) -> str:
    """A file name for a class name ('Wrap grasp' -> 'wrap_grasp')."""
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_") or "unnamed"


def _figure(width: int, height: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def draw_bars(path: Path, result: dict[str, Any], baseline: dict[str, Any] | None,
              key: str, label: str, title: str) -> Path:
    """Horizontal aIoU bars per class (best on top), 'name (n = count)' on the axis, the
    value at the end of each bar; the constant baseline per class and overall."""
    groups = result[key]
    names = sorted(groups, key=lambda n: (-_finite_or(_num(groups[n]["aiou"]), -1.0), n))
    height = 130 + 30 * len(names)
    fig = _figure(WIDTH, max(height, 300))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    values = np.array([_num(groups[n]["aiou"]) * 100 for n in names])
    ax.barh(y, np.nan_to_num(values), color=BLUE, height=0.7, label="model")
    base = (np.array([_num(baseline[key].get(n, {}).get("aiou")) * 100 for n in names])
            if baseline is not None else np.full(len(names), np.nan))
    span = max(10.0, float(np.nanmax(np.r_[values, base, 0.0])))
    for yi, v in zip(y, values, strict=True):
        # at the bar's end, on white above the baseline's tick (which stays visible above
        # and below the figure)
        ax.text(_finite_or(v, 0.0) + 0.01 * span, yi,
                f"{v:.1f}" if math.isfinite(v) else "no positive point", va="center",
                fontsize=10, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.85})
    if baseline is not None:
        ax.scatter(base, y, marker="|", s=420, linewidths=2.5, color="black", zorder=3,
                   label="constant prediction (split mean)")
        overall_base = _num(baseline["overall"]["aiou"]) * 100
        if math.isfinite(overall_base):
            ax.axvline(overall_base, color="black", linestyle=":", linewidth=1.2,
                       label=f"constant prediction, all samples ({overall_base:.1f})")
    overall = _num(result["overall"]["aiou"]) * 100
    if math.isfinite(overall):
        ax.axvline(overall, color=ORANGE, linestyle="--", linewidth=1.6,
                   label=f"model, all samples ({overall:.1f})")
    ax.set_yticks(y, [f"{n} (n = {groups[n]['count']})" for n in names], fontsize=10)
    ax.set_xlim(0, span * 1.18)
    ax.set_xlabel("aIoU (%)", fontsize=11)
    ax.set_title(f"{title}: aIoU per {label}", fontsize=12)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _shown(value: Any, factor: float, digits: int) -> str:
    """A metric for a caption; n/a where it is undefined (AUC of an all-positive sample)."""
    v = _num(value) * factor
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def draw_thresholds(path: Path, doc: dict[str, Any]) -> Path:
    """Small multiples: IoU against the threshold for all samples, then one panel per
    affordance with all samples in grey behind it; the best threshold marked in each."""
    thresholds = np.asarray(doc["thresholds"], float)
    overall = np.array([_num(v) for v in doc["iou_curve"]["overall"]])
    panels = [("all samples", overall)] + [
        (name, np.array([_num(v) for v in curve]))
        for name, curve in doc["iou_curve"]["per_affordance"].items()]
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(WIDTH, 90 + 230 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True))
    for ax, (name, curve) in zip(axes.flat, panels, strict=False):
        if name != "all samples":
            ax.plot(thresholds, overall * 100, color=GREY, linewidth=1.2)
        ax.plot(thresholds, curve * 100, color=BLUE, marker="o", markersize=3, linewidth=1.8)
        if np.isfinite(curve[1:]).any():
            # threshold 0 marks every point: its IoU is the positive share, not a choice
            k = 1 + int(np.nanargmax(curve[1:]))
            ax.plot([thresholds[k]], [curve[k] * 100], marker="*", markersize=12,
                    color=ORANGE, linestyle="none")
            ax.set_title(f"{name}\nbest {curve[k] * 100:.1f} at {thresholds[k]:.2f}, "
                         f"mean {np.nanmean(curve) * 100:.1f}", fontsize=10)
        else:
            ax.set_title(f"{name}\nno positive point", fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    for c in range(cols):  # the lowest drawn panel of each column carries the axis
        ax = axes[(len(panels) - 1 - c) // cols if c > (len(panels) - 1) % cols else -1, c]
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("threshold", fontsize=10)
    for ax in axes[:, 0]:
        ax.set_ylabel("IoU (%)", fontsize=10)
    fig.suptitle(f"{doc['title']}: IoU at each threshold (the mean is aIoU; grey: all "
                 "samples; star: best above 0)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def draw_gallery(path: Path, doc: dict[str, Any], arrays: dict[str, np.ndarray],
                 rows: list[int]) -> Path:
    """One row per sample: (the interaction image,) ground truth and prediction from the
    front-left, then both from the back-right; caption above the row; one colour bar."""
    from affcli.views import VIEWS, add_colorbar, draw_view, heatmap_colors, marker_area, to_z_up

    has_image = "image" in arrays
    panel = 250  # pixels per panel side
    caption_h = 62
    left = panel if has_image else 0
    width = left + 4 * panel + 90
    height = 50 + len(rows) * (panel + caption_h)
    fig = _figure(width, height)
    entries = [doc["gallery"][r] for r in rows]
    fig.text(0.5, 1 - 18 / height, f"{doc['title']}: {entries[0]['affordance']}, best, "
             "median and worst samples by aIoU", ha="center", va="center", fontsize=12)
    for k, (r, entry) in enumerate(zip(rows, entries, strict=True)):
        top_px = 50 + k * (panel + caption_h)
        m = entry["metrics"]
        head = (f"{entry['rank']}: {entry['object']} #{entry['index']}   aIoU "
                f"{_shown(m['aiou'], 100, 1)}   AUC {_shown(m['auc'], 100, 1)}   "
                f"SIM {_shown(m['sim'], 1, 3)}   MAE {_shown(m['mae'], 1, 3)}")
        text = (f"\u201c{textwrap.shorten(entry['text'], 150)}\u201d" if entry["text"]
                else "")
        if has_image:
            text = "  ".join(filter(None, ["(image: orange box the subject, blue box the "
                                           "object)", text]))
        fig.text(8 / width, 1 - (top_px + 14) / height, head, fontsize=10.5,
                 fontweight="bold", va="center")
        if text:
            fig.text(8 / width, 1 - (top_px + 36) / height, text, fontsize=10, va="center",
                     style="italic")
        bottom = 1 - (top_px + caption_h + panel) / height
        h = panel / height
        pts = arrays["points"][r]
        keep = arrays["valid"][r] if "valid" in arrays else np.ones(len(pts), bool)
        xyz = to_z_up(pts[keep])
        size = marker_area(len(xyz), panel, panel)
        if has_image:  # inset a little, so it does not touch the next caption
            _draw_image(fig, (6 / width, bottom + 6 / height, (panel - 12) / width,
                              (panel - 12) / height), arrays["image"][r], arrays["boxes"][r])
        for v, (azim, view) in enumerate(VIEWS):
            for c, (key, what) in enumerate((("target", "ground truth"),
                                             ("heatmap", "prediction"))):
                x = (left + (2 * v + c) * panel) / width
                colours = heatmap_colors(arrays[key][r][keep]) / 255.0
                draw_view(fig, (x, bottom, panel / width, h), xyz, colours, size, azim,
                          f"{what}, {view}")
    add_colorbar(fig, ((width - 70) / width, 0.1, 14 / width, 0.75 * (1 - 50 / height)))
    return _save(fig, path)


def _draw_image(fig: Any, rect: tuple[float, float, float, float], image: np.ndarray,
                boxes: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    ax = fig.add_axes(rect)
    ax.imshow(image)
    for box, colour in zip(boxes, (ORANGE, BLUE), strict=True):  # subject, object
        x0, y0, x1, y1 = (float(b) for b in box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                               linewidth=2))
    ax.set_axis_off()
