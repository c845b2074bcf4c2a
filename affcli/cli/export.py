"""`affcli export`: a thin wrapper over engine.exporter for deployment formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import BatchSizeOpt, ForceOpt, JsonOpt, QuietOpt, reporter
from affcli.errors import AffError

# what `--out` defaults to beside the source, by format (ultralytics' naming: best.onnx,
# best.torchscript; a .pt suffix would be mistaken for a training checkpoint)
DEFAULT_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": "_pretrained"}


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def default_output(source: Path, fmt: str) -> Path:
    """Beside what is exported: runs/x/seen-1 -> runs/x/seen-1/best.onnx; a checkpoint
    c.pt -> c.onnx; a pretrained directory d/ -> d/model.onnx (or d_pretrained/ again for
    safetensors, since d itself is one)."""
    from affcli.engine.checkpoint import BEST
    from affcli.models.config import CONFIG_NAME

    suffix = DEFAULT_SUFFIX[fmt]
    if source.is_dir():
        if (source / CONFIG_NAME).is_file() and not (source / BEST).is_file():
            if fmt == "safetensors":
                return source.with_name(source.name + suffix)
            return source / f"model{suffix}"
        return source / f"{Path(BEST).stem}{suffix}"
    return source.with_name(source.stem + suffix)


def export_cmd(
    path: Annotated[Path, typer.Argument(
        help="Run folder (uses best.pt), checkpoint file, or pretrained directory.",
        show_default=False)],
    format: Annotated[str, typer.Option(  # shadows the builtin: it is the option's name
        "--format", "-f", help="onnx, torchscript or safetensors (a pretrained directory: "
        "config.json + model.safetensors).")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="File to write (a directory for safetensors). Default: beside the source, e.g. "
        "runs/<model>/seen-1/best.onnx.")] = None,
    batch_size: BatchSizeOpt = 2,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a trained model as ONNX, TorchScript or safetensors, checked against PyTorch.

    The written file is loaded back and run on other sample inputs (another batch size);
    if any output differs from PyTorch's by more than 1e-4 the command exits 1 and writes
    nothing. The graph is traced with --batch-size sample inputs; the batch stays dynamic in
    the file."""
    from affcli.engine import exporter

    fmt = format.strip().lower()
    if fmt not in exporter.FORMATS:
        raise AffError("--format", f"must be one of {', '.join(exporter.FORMATS)}, got {format!r}")
    if not path.exists():
        raise AffError(path, "no such run folder, checkpoint or pretrained directory")
    target = default_output(path, fmt) if out is None else out
    if target.exists() and not force and (target.is_file() or any(target.iterdir())):
        raise AffError(target, "exists; pass --force to overwrite it")
    rep = reporter(json_out, quiet)
    rep.note(f"exporting {path} as {fmt} to {target} (then checking it against PyTorch)")
    report = exporter.export_path(path, fmt, target, batch_size)
    for note in report.notes:
        rep.note(note)
    rep.facts(f"{report.model_type} exported as {fmt}", [
        ("file", str(report.path)),
        ("size", _size(report.path)),
        ("inputs", ", ".join(report.input_names)),
        ("outputs", ", ".join(report.output_names)),
        ("max |diff| vs PyTorch", f"{report.max_abs_diff:.2e} (limit {exporter.TOLERANCE:g}, "
                                  f"batch {report.check_batch_size})"),
        ("seconds", f"{report.seconds:.1f} (writing {report.export_seconds:.1f})"),
    ])
    rep.result({**report.to_dict(), "bytes": _bytes(report.path),
                "tolerance": exporter.TOLERANCE})


def _bytes(path: Path) -> int:
    """The bytes written: a file and any external-data file beside it, or a directory's."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def _size(path: Path) -> str:
    n = float(_bytes(path))
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
