"""`affcli train` and `affcli eval`: thin wrappers over engine.trainer and engine.evaluator."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from affcli.cli.common import BatchSizeOpt, DeviceOpt, JsonOpt, QuietOpt, reporter
from affcli.console import votes_label
from affcli.errors import AffError

if TYPE_CHECKING:  # torch-free at import: `affcli --version` must stay cheap
    from affcli.console import Reporter
    from affcli.engine.recipes import TrainConfig
    from affcli.engine.trainer import Trainer

# options a resumed run may change; everything else comes from the run's own config
RESUMABLE = ("epochs", "workers", "device", "plots", "tensorboard", "checkpoint_every",
             "skip_nonfinite")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)


def train_cmd(
    model: Annotated[str | None, typer.Argument(
        help="Model name (`affcli models` lists them; omit with --resume).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Prepared HDF5 file (default data/<dataset>_<setting>.h5).")] = None,
    setting: Annotated[str | None, typer.Option(help="seen or unseen.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (paper default per model).")] = None,
    batch_size: BatchSizeOpt = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    text_lr: Annotated[float | None, typer.Option(
        help="Text encoder learning rate (models with a separately trained text encoder)."
    )] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    pairing_num: Annotated[int | None, typer.Option(
        help="PIAD/AGPIL: point clouds paired with each training image.")] = None,
    points: Annotated[int | None, typer.Option(
        help="Subsample every cloud to this many points (a fixed subset per shape; faster on "
        "the CPU). Default: the file's count.")] = None,
    device: DeviceOpt = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", help="Mixed precision (default: on with CUDA).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    max_batches: Annotated[int | None, typer.Option(
        help="Stop each epoch after this many batches (0 = all).")] = None,
    max_val_batches: Annotated[int | None, typer.Option(
        help="Validate on this many batches only (0 = all; smoke runs).")] = None,
    val_from_train: Annotated[float | None, typer.Option(
        metavar="FRACTION", help="Choose best.pt on this fraction of the train split's "
        "shapes (and images), held out from training, instead of the val/test split.")
    ] = None,
    select_by: Annotated[str | None, typer.Option(
        help="Validation metric that chooses best.pt: aiou, auc, sim or mae (default: the "
        "paper's; IAGNet auc, others aiou).")] = None,
    votes: Annotated[int | None, typer.Option(
        help="Passes averaged in the final test (default: the paper's; PointRefer 3).")
    ] = None,
    plots: Annotated[bool | None, typer.Option(
        "--plots/--no-plots", help="After the final test, draw aIoU charts per class, the "
        "IoU-threshold curves and a best/median/worst gallery into RUN/plots/<split>/ "
        "(default: on).")] = None,
    tensorboard: Annotated[bool | None, typer.Option(
        "--tensorboard/--no-tensorboard", help="Log losses, lr, metrics and the gallery to "
        "RUN/tb/ when the tensorboard package is installed (default: on).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        metavar="STEPS", help="Also save last.pt every this many steps within an epoch (long "
        "epochs on clusters; 0 = at the end of each epoch only).")] = None,
    skip_nonfinite: Annotated[int | None, typer.Option(
        metavar="K", help="Skip up to K steps whose loss or gradient is NaN/inf (counted in "
        "metrics.jsonl) instead of stopping at the first (exit 1).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file of options (any of these, underscores or dashes).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Model config override KEY=VALUE (repeatable), e.g. "
        "--set resnet18_weights=resnet18.pth.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Run folder (default runs/<model>/<setting>-N).")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this folder from its last.pt.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="With --resume: continue even though the data file changed since "
        "the run started (size or contents; refused without it).")] = False,
    nproc: Annotated[int | None, typer.Option(
        help="Train with this many processes on this machine (DistributedDataParallel; "
        "--batch-size is the global batch, split over them).")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with its paper's recipe; validate every epoch, keep best/last, test."""
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch(nproc)
    given = {"data": str(data) if data else None, "setting": setting, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "text_lr": text_lr,
             "weight_decay": weight_decay, "pairing_num": pairing_num, "num_points": points,
             "device": device,
             "amp": amp, "seed": seed, "workers": workers, "max_batches": max_batches,
             "max_val_batches": max_val_batches, "val_from_train": val_from_train,
             "select_by": select_by, "votes": votes, "plots": plots,
             "tensorboard": tensorboard, "checkpoint_every": checkpoint_every,
             "skip_nonfinite": skip_nonfinite,
             "out": str(out) if out else None}
    if set_:
        from affcli.cli.import_checkpoint import parse_overrides

        given["model_config"] = parse_overrides(set_)
    cfg = (_resumed_config(resume, model, config, given) if resume is not None
           else _new_config(model, config, given))
    if force and resume is None:
        raise AffError("--force", "only means something with --resume (a new run never "
                       "overwrites a folder: choose another --out)")
    _run(cfg, resume, reporter(json_out, quiet), force)


def _relaunch(nproc: int) -> NoReturn:
    """This command line again, without --nproc, in `nproc` processes under torchrun."""
    from affcli.cli import current_args
    from affcli.engine import distributed as D

    code = D.launch(nproc, _without_nproc(current_args()))
    raise typer.Exit(code)


def _new_config(model: str | None, config: Path | None, given: dict[str, object]
                ) -> TrainConfig:
    """The model's paper recipe, then the YAML file's options, then the command line's."""
    from affcli import models
    from affcli.engine.recipes import resolve

    if model is None:
        raise AffError("train", f"name the model to train ({', '.join(models.available())})"
                       ", or --resume RUN_DIR")
    cls = models.model_class(model)
    return resolve(model.lower(), dict(cls.train_recipe), config, given)


def _run(cfg: TrainConfig, resume: Path | None, rep: Reporter, force: bool = False) -> None:
    """Train in this process (one of several under torchrun); rank 0 reports."""
    from affcli.console import TrainDisplay
    from affcli.engine import distributed as D
    from affcli.engine.trainer import Interrupted, Trainer

    proc = D.setup(cfg.device)
    try:
        if proc.rank != 0:
            rep.quiet = True
        display = TrainDisplay(rep, cfg.epochs)
        trainer = Trainer(cfg, proc, hooks=display.hooks(), resume=resume, force=force)
        if proc.main:
            _announce(rep, cfg, trainer)
        try:
            summary = trainer.run()
        except Interrupted as exc:
            if proc.main:
                rep.note(f"saved {exc.run_dir / 'last.pt'}; {exc}")
            raise typer.Exit(exc.exit_code) from None
        if proc.main:
            _report(rep, cfg, trainer, summary)
    finally:
        D.teardown()


def _announce(rep: Reporter, cfg: TrainConfig, trainer: Trainer) -> None:
    proc = trainer.proc
    n = sum(p.numel() for p in trainer.model.parameters())
    rep.note(f"training {cfg.model} on {cfg.data} ({trainer.info.dataset} "
             f"{trainer.info.setting}, {len(trainer.train_set)} train / "
             f"{len(trainer.val_set)} {trainer.val_split} samples, {n:,} parameters) "
             f"on {proc.device}" + (f" x {proc.world} processes" if proc.distributed
                                    else "") + f" -> {trainer.run_dir}")


def _report(rep: Reporter, cfg: TrainConfig, trainer: Trainer, summary: dict[str, Any]
            ) -> None:
    from affcli.console import metric_tables

    if summary["test"] is not None:
        metric_tables(rep, summary["test"],
                      f"{cfg.model} on {trainer.info.dataset} {summary['test']['split']} "
                      f"(best epoch {summary['best_epoch']} by {cfg.select_by}"
                      f"{votes_label(cfg.votes)})")
        if trainer.selects_on_test:
            rep.warn(f"epoch {summary['best_epoch']} was chosen on this same split: the "
                     "figures are optimistic (--val-from-train gives an honest choice)")
    rep.note(f"run folder: {summary['run_dir']} (training curves: results.png, results.csv"
             + (f"; test plots: {Path(summary['plots']).relative_to(summary['run_dir'])}/"
                if summary.get("plots") else "")
             + (f"; TensorBoard: {trainer.tb.dir.name}/" if trainer.tb is not None else "")
             + ")")
    rep.result(summary)


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def _resumed_config(run_dir: Path, model: str | None, config: Path | None,
                    given: dict[str, object]) -> TrainConfig:
    from affcli.engine import checkpoint as ckpt
    from affcli.engine.recipes import TrainConfig

    doc = ckpt.load(ckpt.find_checkpoint(run_dir, prefer=ckpt.LAST) if run_dir.is_dir()
                    else run_dir)
    if not run_dir.is_dir() or not (run_dir / ckpt.LAST).is_file():
        raise AffError(run_dir, "--resume takes a run folder holding last.pt")
    cfg = TrainConfig.from_dict(dict(doc["train_config"]), run_dir / ckpt.LAST)
    if model is not None and model.lower() != cfg.model:
        raise AffError(run_dir, f"is a {cfg.model} run, not {model}")
    fixed = sorted(k for k, v in given.items() if v is not None and k not in RESUMABLE)
    if config is not None or fixed:
        raise AffError("--resume", "a resumed run keeps its own configuration; only "
                       f"{', '.join('--' + k for k in RESUMABLE)} may be given (got "
                       f"{', '.join('--' + k.replace('_', '-') for k in fixed) or '--config'})")
    for key in RESUMABLE:
        if given.get(key) is not None:
            setattr(cfg, key, given[key])
    return cfg.validate(run_dir)


def eval_cmd(
    path: Annotated[Path, typer.Argument(
        help="Run folder (uses best.pt), checkpoint file, or pretrained directory.")],
    data: Annotated[Path | None, typer.Option(
        help="Prepared HDF5 file (default: the one the run trained on).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    batch_size: BatchSizeOpt = 16,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    device: DeviceOpt = "auto",
    save_predictions: Annotated[Path | None, typer.Option(
        help="Write the predicted heatmaps and ground truth to this HDF5 file.")] = None,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline", help="Also score a constant prediction (split mean).")
    ] = True,
    votes: Annotated[int | None, typer.Option(
        help="Average this many passes, torch seeded 0..N-1, FPS from random starts "
        "(default: the run's recipe; PointRefer 3 as LASO, others 1).")] = None,
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp", help="Products in bfloat16 (autocast; float16 on GPUs without "
        "bfloat16), each model's final scores in float32. On a CPU with AVX512-BF16 about "
        "1.5x faster; the figures move by about 0.1 point (docs/evaluation.md).")] = False,
    corrupt: Annotated[str | None, typer.Option(
        metavar="KIND[:SEVERITY]|all",
        help="Score under point-cloud corruptions instead (PointCloud-C: scale, jitter, "
        "rotate, drop_global, drop_local, add_global, add_local; severities 1-5; 'all' is "
        "the 35-cell grid, written to the run folder).")] = None,
    plots: Annotated[bool, typer.Option(
        "--plots/--no-plots", help="Draw aIoU charts per class, the IoU-threshold curves and "
        "a gallery of best/median/worst samples into RUN/plots/<split>/.")] = True,
    plots_dir: Annotated[Path | None, typer.Option(
        help="Draw the plots here instead (needed for a checkpoint outside a run folder).")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a trained model on a split: per-class and per-affordance tables, or JSON."""
    from affcli import models
    from affcli.console import metric_tables
    from affcli.data.datasets import open_dataset
    from affcli.engine import distributed as D
    from affcli.engine.checkpoint import load_model
    from affcli.engine.evaluator import amp_dtype, constant_baseline, predict, score
    from affcli.engine.evaluator import save_predictions as save
    from affcli.engine.trainer import check_data, selection_split
    from affcli.fileio import same_file

    rep = reporter(json_out, quiet)
    if plots_dir is not None and plots_dir.exists() and not plots_dir.is_dir():
        raise AffError(plots_dir, "--plots-dir must be a folder, this is a file")
    model, doc, source = load_model(path)
    model_type = model.config.model_type
    if data is None:
        trained_on = (doc or {}).get("data", {}).get("path")
        if not trained_on:
            raise AffError(path, "no dataset recorded with this model; pass --data FILE.h5")
        data = Path(trained_on)
    cls = models.model_class(model_type)
    info = check_data(model_type, cls, data)
    if split not in info.splits:
        raise AffError(data, f"no split {split!r} (this file has {', '.join(info.splits)})")
    proc = D.Process(device=D.resolve_device(device))
    model.to(proc.device)
    n_model = int(model.config.to_dict().get("n_points", info.num_points))
    if n_model > info.num_points:
        raise AffError(data, f"clouds have {info.num_points} points but the model was built "
                       f"for {n_model}")
    # a model trained on subsampled clouds is scored on the same per-shape subsets
    dataset = open_dataset(data, split, num_points=n_model)
    trained = (doc or {}).get("train_config") or {}
    if votes is None:
        votes = int(trained.get("votes", cls.train_recipe.get("votes", 1)))
    precision = str(amp_dtype(proc.device)).removeprefix("torch.") if amp else "float32"
    rep.note(f"evaluating {model_type} ({source}) on {data} {split} ({len(dataset)} samples"
             f"{votes_label(votes)}{'' if precision == 'float32' else ', ' + precision})")
    selected_on = selection_split(trained, info.splits)
    if trained and selected_on == split and same_file(trained.get("data"), data):
        rep.warn(f"this checkpoint was chosen on the {split} split it is scored on: the "
                 "figures are optimistic")
    if corrupt is not None:
        _eval_corrupted(rep, model, dataset, corrupt, batch_size, proc, workers, votes, amp,
                        {"model": str(source), "model_type": model_type, "data": str(data),
                         "split": split, "votes": votes, "precision": precision}, path)
        return
    pred = predict(model, dataset, batch_size, proc, workers=workers, votes=votes, amp=amp)
    assert pred is not None
    result = score(pred)
    result["votes"] = votes
    result["precision"] = precision
    base = constant_baseline(pred) if baseline else None
    if save_predictions is not None:
        save(save_predictions, pred, {"data": data, "split": split, "model": source,
                                      "model_type": model_type})
        rep.note(f"predictions written to {save_predictions}")
    title = (f"{model_type} on {info.dataset} {info.setting} {split}{votes_label(votes)}"
             f"{'' if precision == 'float32' else ', ' + precision}")
    metric_tables(rep, result, title, base)
    pictures = None
    if plots:
        pictures = _eval_plots(rep, plots_dir, source, doc, split, data, pred, dataset,
                               result, base, title)
    rep.result({"model": str(source), "model_type": model_type, "data": str(data),
                "split": split, **result,
                **({"baseline": base} if base is not None else {}),
                **({"plots": pictures} if pictures is not None else {})})


def _eval_plots(rep: Reporter, plots_dir: Path | None, source: Path,
                doc: dict[str, Any] | None, split: str, data: Path, pred: Any, dataset: Any,
                result: dict[str, Any], base: dict[str, Any] | None, title: str
                ) -> str | None:
    """Draw the evaluation pictures; their folder, or None when there is no place for
    them (a checkpoint outside a run folder and no --plots-dir)."""
    import time

    from affcli.engine.evalplots import plots_dir as default_dir
    from affcli.engine.evalplots import write_eval_plots

    if plots_dir is None:
        run = source.parent if doc is not None else None
        if run is None or not (run / "config.yaml").is_file():
            rep.note(f"{source} is not in a run folder: no plots (pass --plots-dir DIR)")
            return None
        plots_dir = default_dir(run, split, data, (doc or {}).get("data", {}).get("path"))
    t0 = time.perf_counter()
    paths = write_eval_plots(plots_dir, pred, dataset, result, base, title)
    rep.note(f"plots: {len(paths)} pictures in {plots_dir} ({time.perf_counter() - t0:.1f} s)")
    return str(plots_dir)


def _eval_corrupted(rep: Reporter, model: Any, dataset: Any, spec: str, batch_size: int,
                    proc: Any, workers: int, votes: int, amp: bool, doc: dict[str, Any],
                    path: Path) -> None:
    """The corruption grid: one table of aIoU (corruption x severity) beside the clean score;
    every metric in the JSON document, also written to the run folder."""
    import time

    from affcli.data.corruptions import parse
    from affcli.engine.robustness import corruption_grid, grid_table
    from affcli.fileio import write_json

    cells = parse(spec)
    t0 = time.perf_counter()
    with rep.progress("corruptions") as start:
        advance = start(len(cells))
        result = corruption_grid(model, dataset, cells, batch_size, proc, workers=workers,
                                 votes=votes, amp=amp, on_cell=lambda row: advance(1))
    seconds = time.perf_counter() - t0
    columns, rows = grid_table(result)
    rows = [[r[0], *(f"{v:.2f}" if math.isfinite(v) else "-" for v in r[1:])] for r in rows]
    low = "" if doc["precision"] == "float32" else f", {doc['precision']}"
    title = (f"{doc['model_type']} on {doc['split']}{votes_label(votes)}{low} under corruptions: "
             "aIoU (%) per severity")
    clean = result["clean"]
    caption = (f"clean {clean['aiou'] * 100:.2f}"
               + (f", mean over {len(cells)} cells {result['mean']['aiou'] * 100:.2f}"
                  if "mean" in result else "") + f" ({seconds:.0f} s)")
    rep.table(title, columns, rows, caption=caption)
    full = {**doc, "corrupt": spec, "seconds": seconds, **result}
    if path.is_dir():
        name = f"robustness-{doc['split']}-{spec.replace(':', '-')}.json"
        write_json(path / name, full)
        rep.note(f"written to {path / name}")
    rep.result(full)
