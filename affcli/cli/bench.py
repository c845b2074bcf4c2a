"""`affcli bench`: measured figures for the performance targets (never timed tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import BatchSizeOpt, JsonOpt, QuietOpt, reporter
from affcli.errors import AffError

bench_app = typer.Typer(help="Benchmarks: loader, ops, metrics, train, predict (JSON with "
                        "--json).",
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
    from affcli.bench.runs import bench_loader, geometric_mean

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


@bench_app.command("ops")
def ops_cmd(
    batch_size: BatchSizeOpt = 16,
    points: Annotated[int, typer.Option(help="Points per cloud (>= 512).")] = 2048,
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median).")] = 3,
    no_encoder: Annotated[bool, typer.Option("--no-encoder",
                                             help="Skip the (slow) encoder rows.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """FPS, ball query, gathers, 3-NN interpolation and the PointNet++ encoder: our CPU path
    (and Triton on CUDA) vs the reference utility's algorithms, FPS vs fpsample."""
    from affcli.bench.runs import bench_ops

    rep = reporter(json_out, quiet)
    rep.note(f"B={batch_size}, N={points}, median of {repeats} runs (the reference encoder "
             "takes tens of seconds per run) ...")
    rows = bench_ops(batch_size, points, repeats, encoder=not no_encoder)
    has_triton = any("triton_ms" in r for r in rows)
    cols = ["op", "reference ms", "ours (CPU) ms", "speedup", "fpsample ms"]
    if has_triton:
        cols.insert(3, "ours (Triton) ms")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    table = []
    for r in rows:
        row = [r["op"], fmt(r["reference_ms"]), fmt(r["cpu_ms"])]
        if has_triton:
            row.append(fmt(r.get("triton_ms")))
        row += [f"{r['speedup']:.1f}x", fmt(r.get("fpsample_ms"))]
        table.append(row)
    rep.table(f"PointNet++ ops, B={batch_size}, N={points} (milliseconds per call)", cols, table,
              caption="reference = the reference utility's algorithms (Python-loop FPS, dense "
              "distances + sort, NCHW 1x1 convolutions)")
    rep.result({"benchmark": "ops", "batch_size": batch_size, "points": points,
                "repeats": repeats, "rows": rows})


@bench_app.command("metrics")
def metrics_cmd(
    samples: Annotated[int, typer.Option(help="Samples (the PIAD Seen test set has 2,416).")
                       ] = 2416,
    points: Annotated[int, typer.Option(help="Points per sample.")] = 2048,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """MAE, SIM, AUC and aIoU: our compiled pass vs the reference's per-sample sklearn loop."""
    from affcli.bench.runs import bench_metrics

    if samples < 1 or points < 2:
        raise AffError("--samples/--points", "need at least 1 sample of 2 points")
    rep = reporter(json_out, quiet)
    r = bench_metrics(samples, points)
    rep.table(f"metrics over {samples} x {points}", ["implementation", "seconds"],
              [("reference loop (sklearn, numpy)", f"{r['reference_s']:.3f}"),
               ("affcli.metrics (compiled, CPU)", f"{r['ours_s']:.3f}")],
              caption=f"{r['speedup']:.1f}x faster, max |difference| "
              f"{r['max_abs_difference']:.2e}")
    rep.result({"benchmark": "metrics", **r})


@bench_app.command("train")
def train_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model name (repeatable; default: every model `affcli models` "
        "lists).")] = None,
    batch_size: BatchSizeOpt = None,
    points: Annotated[int | None, typer.Option(
        help="Subsample clouds to this many points (default: the data's 2048).")] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per model (median).")] = 3,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Samples/s of a training step (forward, loss, backward, optimizer) per model, and where
    its time goes: forward and backward of each part of the model (its top-level modules:
    point encoder, text or image backbone, decoder blocks), the loss and the optimizer."""
    from affcli import models
    from affcli.bench.runs import bench_train

    # bench_train checks the names; by default every model that declares training data
    chosen = [m.lower() for m in model] if model else [
        n for n in models.available() if models.model_class(n).dataset_kinds]
    rep = reporter(json_out, quiet)
    rows = bench_train(chosen, batch_size, steps, points, announce=rep.note)
    rep.table("training step throughput (one process, CPU)",
              ["model", "dataset", "batch", "clouds/sample", "points", "step (s)",
               "samples/s"],
              [(r["model"], r["dataset"], r["batch_size"], r["clouds_per_sample"], r["points"],
                f"{r['step_s']:.2f}", f"{r['samples_per_s']:.2f}") for r in rows])
    for r in rows:
        rep.table(f"{r['model']}: where a step's time goes (batch {r['batch_size']}, "
                  f"{r['points']} points)",
                  ["part", "forward ms", "backward ms", "ms", "share"],
                  _phase_rows(r["phases_ms"]),
                  caption=f"one timed step {r['phases_ms']['step']:.0f} ms (with the timing "
                  "hooks)")
    rep.result({"benchmark": "train", "rows": rows})


def _phase_rows(ph: dict) -> list[tuple[str, ...]]:
    """bench/phases.py's figures as table rows, the largest first."""
    parts = [(name, t["forward"], t["backward"]) for name, t in ph["parts"].items()]
    parts.append(("loss and the rest", ph["loss"]["forward"], ph["loss"]["backward"]))
    total = ph["step"] or 1.0
    rows = [(name, f"{f:.0f}", f"{b:.0f}", f + b) for name, f, b in parts]
    rows.append(("optimizer step", "", "", ph["optimizer"]))
    return [(*row[:3], f"{row[3]:.0f}", f"{100 * row[3] / total:.0f} %")
            for row in sorted(rows, key=lambda row: -row[3])]


@bench_app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Option(
        help="Run folder, checkpoint or pretrained directory to time (e.g. the demo's "
        "runs/demo/pointrefer).")],
    shapes: Annotated[int, typer.Option(
        help="Shapes in the many-shapes call (>= 2).")] = 100,
    repeats: Annotated[int, typer.Option(help="Runs per figure (median, >= 1).")] = 5,
    batch_size: BatchSizeOpt = 8,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Start-up and per-shape time of `affcli predict`, each in a fresh process as a shell
    loop runs it, against `import torch` and the model's own batched forward."""
    from affcli.bench.startup import bench_predict
    from affcli.engine.checkpoint import load_model

    if shapes < 2:
        raise AffError("--shapes", f"must be at least 2, got {shapes}")
    if repeats < 1:
        raise AffError("--repeats", f"must be at least 1, got {repeats}")
    rep = reporter(json_out, quiet)
    net, _, source = load_model(model)  # a bad --model exits 2 here, before any timing
    model_type = net.config.model_type
    del net
    doc = bench_predict(model, model_type, shapes, repeats, batch_size, announce=rep.note)
    sec, floor = doc["seconds"], doc["seconds"]["import_torch"]
    ok = doc["targets"]
    rows = [
        ("python -c 'import torch'", f"{floor:.2f}", "", ""),
        ("affcli predict --help", f"{sec['predict_help']:.2f}", "<= 0.5 s",
         _verdict(sec["predict_help"] <= 0.5)),
        ("affcli predict --no-such-option", f"{sec['bad_option']:.2f}", "<= 0.5 s",
         _verdict(sec["bad_option"] <= 0.5)),
        ("one mesh (STL), start to exit", f"{sec['one_mesh']:.2f}",
         f"<= {floor + 1.5:.2f} s", _verdict(sec["one_mesh"] - floor <= 1.5)),
        ("one cloud (PLY), start to exit", f"{sec['one_cloud']:.2f}",
         f"<= {floor + 1.5:.2f} s", _verdict(sec["one_cloud"] - floor <= 1.5)),
        (f"{doc['shapes']} meshes in one call", f"{doc['many_shapes_s']:.2f}", "", ""),
        ("  per shape after the first", f"{doc['per_shape_s']:.3f}",
         f"<= {1.3 * doc['forward_per_shape_s']:.3f} s",
         _verdict(ok["per_shape_within_1.3x_forward"])),
        (f"  model's batched forward per shape (batch {batch_size})",
         f"{doc['forward_per_shape_s']:.3f}", "", ""),
    ]
    rep.table(f"affcli predict with {model_type} ({source}): seconds, median of {repeats}",
              ["what", "seconds", "target", ""], rows)
    rep.result(doc)


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"
