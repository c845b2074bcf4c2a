"""`affcli predict`: a thin wrapper over engine.predictor for users' own shape files."""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from affcli.cli.common import QuietOpt, reporter
from affcli.errors import AffError

if TYPE_CHECKING:
    from affcli.console import Reporter
    from affcli.engine.predictor import ShapeResult

GLOB_CHARS = frozenset("*?[")
PROGRESS_FROM = 5  # shapes: fewer finish before a bar would tell anything


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)


def expand_shapes(args: list[str], stdin: TextIO | None = None
                  ) -> tuple[list[str], list[str]]:
    """(paths in order, patterns that matched nothing). `-` reads paths from stdin, one a
    line (blank lines skipped); a glob the shell left alone (quoted, or no match there) is
    expanded here; anything else is taken as it is."""
    paths: list[str] = []
    unmatched: list[str] = []
    for arg in args:
        if arg == "-":
            stream = sys.stdin if stdin is None else stdin
            paths.extend(s for line in stream if (s := line.strip()))
            continue
        arg = os.path.expanduser(arg)
        if GLOB_CHARS & set(arg) and not os.path.exists(arg):
            found = sorted(glob.glob(arg, recursive=True))
            if found:
                paths.extend(found)
            else:
                unmatched.append(arg)
            continue
        paths.append(arg)
    return paths, unmatched


def predict_cmd(
    shapes: Annotated[list[str], typer.Argument(
        help="Shape files (PLY, OBJ, OFF, STL, XYZ/TXT/PTS/CSV, PIAD text, NPY/NPZ) or globs; "
        "`-` reads paths from stdin, one a line.", show_default=False)],
    model: Annotated[Path | None, typer.Option(
        help="Run folder (best.pt), checkpoint file or pretrained directory. Default: the "
        "newest run under runs/<model>/ for the model the other options imply.")] = None,
    question: Annotated[str | None, typer.Option(
        help="PointRefer: the question, e.g. 'Where would you grasp this mug?'.")] = None,
    image: Annotated[Path | None, typer.Option(
        help="IAGNet / LMAffordance3D: the interaction image (JPEG or PNG).")] = None,
    boxes: Annotated[Path | None, typer.Option(
        help="IAGNet: LabelMe JSON with rectangles labelled subject and object.")] = None,
    subject_box: Annotated[str | None, typer.Option(
        "--subject-box", help="IAGNet: the subject's box x1,y1,x2,y2 in image pixels.")] = None,
    object_box: Annotated[str | None, typer.Option(
        "--object-box", help="IAGNet: the object's box x1,y1,x2,y2 in image pixels.")] = None,
    instruction: Annotated[str | None, typer.Option(
        help="LMAffordance3D: the instruction, e.g. 'Pick up the mug.'.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: the next free runs/predict-N).")] = None,
    render: Annotated[bool, typer.Option(
        "--render", help="Also write a PNG of two views per shape.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite files of the same name already in --out.")] = False,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", "-b", help="Shapes per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON line per shape on stdout (scores summary and output files, "
        "or the error).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every point of your own shape files: a heatmap PLY and the scores per shape."""
    from affcli.engine import predictor as P

    if batch_size < 1:
        raise AffError("--batch-size", f"must be at least 1, got {batch_size}")
    cond = P.Conditioning(
        question=question, instruction=instruction, image=image, boxes=boxes,
        subject_box=P.parse_box(subject_box, "--subject-box") if subject_box else None,
        object_box=P.parse_box(object_box, "--object-box") if object_box else None)
    rep = reporter(json_out, quiet)
    paths, unmatched = expand_shapes(shapes)
    if not paths and not unmatched:
        raise AffError("predict", "no shape files given (stdin held no paths)")

    # cheap checks first: a bad image or missing run should not wait for the model to load
    source, picked = P.resolve_model(model, cond)
    if picked:
        rep.note(f"using the newest run {source} (pass --model to choose)")
    image_input = P.load_image_input(cond)
    pred = P.Predictor.load(source, cond, device, batch_size, image=image_input)
    writer = P.OutputWriter(out, render=render, force=force)
    total = len(paths) + len(unmatched)
    rep.note(f"predicting {total} shape{'s' if total != 1 else ''} with {pred.model_type} "
             f"({pred.source}, {pred.n_points} points) on {pred.device}")

    results: list[P.ShapeResult] = [
        P.ShapeResult(Path(u), name=u, error=AffError(u, "no file matches this pattern"))
        for u in unmatched]
    for res in results:
        _report(rep, res, json_out, many=total > 1)
    with rep.progress("predicting") as start:
        advance = start(len(paths)) if len(paths) >= PROGRESS_FROM else (lambda n=1: None)
        for res in pred.run(paths, writer):
            results.append(res)
            _report(rep, res, json_out, many=total > 1)
            advance(1)

    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    if done and not json_out:
        from rich.markup import escape  # a table renders markup: "[x].ply" must stay as is

        # file names only: full paths would squeeze the figures out of a terminal's width
        rows = [[escape(Path(r.name or r.path).name), len(r.scores), float(r.scores.min()),
                 float(r.scores.mean()), float(r.scores.max()), float((r.scores > 0.5).mean())]
                for r in done if r.scores is not None]
        rep.table(escape(pred.title()),
                  ["shape", "points", "min", "mean", "max", "> 0.5"], rows)
    if done:
        kinds = ".ply, .npy" + (", .png" if render else "")
        rep.note(f"wrote {len(done)} shape{'s' if len(done) != 1 else ''} to "
                 f"{writer.directory} ({kinds} per shape)")
    if failed:
        if total == 1:
            raise failed[0].error  # type: ignore[misc]
        names = ", ".join(r.name or str(r.path) for r in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise AffError("predict", f"{len(failed)} of {total} shapes failed: {names}{more}")


def _report(rep: Reporter, res: ShapeResult, json_out: bool, many: bool) -> None:
    """One shape's outcome as it comes: a JSON line, and a warning for a failed file (a
    lone file's error is the command's error line instead)."""
    if json_out:
        sys.stdout.write(json.dumps(res.summary()) + "\n")
        sys.stdout.flush()
    if res.error is not None and many:
        # one unwrapped line per file (Reporter.warn wraps at the terminal's width), so batch
        # logs can be grepped for the file names
        rep.err.print(f"warning: {res.error.one_line()}", markup=False, style="yellow",
                      soft_wrap=True)
