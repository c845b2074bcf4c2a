"""`affcli predict`: a thin wrapper over engine.predictor for users' own shape files."""

from __future__ import annotations

import functools
import glob
import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from affcli.cli.common import BatchSizeOpt, DeviceOpt, ForceOpt, QuietOpt, reporter
from affcli.errors import AffError

if TYPE_CHECKING:
    import click

    from affcli.console import Reporter
    from affcli.engine.predictor import ShapeResult

GLOB_CHARS = frozenset("*?[")
PROGRESS_FROM = 5  # shapes: fewer finish before a bar would tell anything


def build_command() -> click.Command:
    """The `predict` command with one option per conditioning input the registered models
    declare (built on first use: it imports the models, which `affcli --version`, `synth`
    or `prepare` must not pay for)."""
    sub = typer.Typer(rich_markup_mode="rich", add_completion=False)
    sub.command("predict")(with_input_options(predict_cmd))
    return typer.main.get_command(sub)


def input_options() -> dict[str, tuple[Any, list[str]]]:
    """Input name -> (its declaration, the models that take it), over every registered
    model; the first declaration of a name gives its kind and help."""
    from affcli import models

    static = set(inspect.signature(predict_cmd).parameters)
    options: dict[str, tuple[Any, list[str]]] = {}
    for name in models.available():
        for spec in models.model_class(name).inputs:
            if spec.name in static:
                warnings.warn(f"model {name!r} declares an input {spec.name!r}, a name predict "
                              "uses for its own option; it cannot be given on the command line",
                              stacklevel=2)
                continue
            first, users = options.setdefault(spec.name, (spec, []))
            if first.kind != spec.kind:
                warnings.warn(f"model {name!r} declares {spec.option} as {spec.kind}, but "
                              f"{users[0]} as {first.kind}; predict keeps the first",
                              stacklevel=2)
                continue
            users.append(name)
    return options


def option_table() -> list[dict[str, Any]]:
    """The declared inputs as plain rows (name, kind, help, example, option, users): from
    the cache when the installed models have not changed, so the command builds without
    importing them (see `affcli.cli.input_table`)."""
    from affcli.cli.input_table import declared_inputs

    def build() -> list[dict[str, Any]]:
        return [{"name": spec.name, "kind": spec.kind, "help": spec.help,
                 "example": spec.example, "option": spec.option, "users": users}
                for spec, users in input_options().values()]

    return declared_inputs(build)


def with_input_options(func: Any) -> Any:
    """`func` with its `**inputs` replaced by one keyword option per declared input, so
    Typer builds (and documents) them like any other option."""
    sig = inspect.signature(func, eval_str=True)

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        return func(**kwargs)

    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    tail = next(i for i, p in enumerate(params) if p.name == "out")
    added = []
    for row in option_table():
        spec, users = SimpleNamespace(**row), row["users"]
        example = f" E.g. {spec.example!r}." if spec.example else ""
        text = f"{', '.join(users)}: {spec.help}.{example}"
        if spec.kind != "text":
            option = typer.Option(spec.option, help=text, show_default=False)
            added.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY,
                                           default=None,
                                           annotation=Annotated[str | None, option]))
            continue
        # texts: repeatable, or a file of them; every shape is scored under each
        option = typer.Option(spec.option, help=text + " Repeat it to ask several at once "
                              "(each shape is read and encoded once).", show_default=False,
                              metavar="TEXT")
        added.append(inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[list[str] | None, option]))
        from_file = typer.Option(f"{spec.option}s", metavar="FILE", show_default=False,
                                 help=f"{', '.join(users)}: a file of {spec.option} values, "
                                 "one a line (blank lines and # comments skipped).")
        added.append(inspect.Parameter(f"{spec.name}s", inspect.Parameter.KEYWORD_ONLY,
                                       default=None,
                                       annotation=Annotated[Path | None, from_file]))
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if i >= 1 else p
              for i, p in enumerate(params)]
    command.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=params[:tail] + added + params[tail:])
    return command


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
        help="Shape files (PLY, OBJ, OFF, STL, GLB/glTF, 3MF, DAE, PCD, XYZ/TXT/PTS/CSV, PIAD "
        "text, NPY/NPZ) or globs; `-` reads paths from stdin, one a line.",
        show_default=False)],
    model: Annotated[Path | None, typer.Option(
        help="Run folder (best.pt), checkpoint file or pretrained directory. Default: the "
        "newest run under runs/<model>/ of the models the conditioning options fit.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: the next free runs/predict-N).")] = None,
    render: Annotated[bool, typer.Option(
        "--render", help="Also write a PNG of two views per shape.")] = False,
    mesh_format: Annotated[str, typer.Option(
        "--format", help="How a mesh comes back: ply (faces kept, colour and score per "
        "vertex) or glb (vertex colours; Blender and web viewers open it). Point clouds are "
        "always PLY.")] = "ply",
    face_scores: Annotated[bool, typer.Option(
        "--face-scores", help="Meshes: also a score per face (the mean of its vertices') in "
        "the PLY.")] = False,
    force: ForceOpt = False,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    json_out: Annotated[bool, typer.Option(
        "--json", help="One JSON line per shape on stdout (scores summary and output files, "
        "or the error).")] = False,
    quiet: QuietOpt = False,
    **inputs: Any,
) -> None:
    """Score every point of your own shape files: a heatmap PLY and the scores per shape."""
    # the conditioning options are the inputs of the installed models (`with_input_options`)
    from affcli.cli import allow_fast_exit
    from affcli.engine import predictor as P

    allow_fast_exit()  # every output is written to a temporary file and renamed
    from affcli.models.inputs import check_files, parse_box

    # the declared inputs from the cached table: importing every model (torchvision comes
    # with the image models) would cost more than loading the one model used
    specs = {row["name"]: SimpleNamespace(**row) for row in option_table()}
    variants = _variants(specs, inputs)
    values = {name: parse_box(v, specs[name].option) if specs[name].kind == "box" else v
              for name, v in variants[0].items() if v is not None}
    conds = [P.Conditioning(**{**values, **v}) for v in _text_values(specs, variants)]
    cond = conds[0]
    rep = reporter(json_out, quiet)
    paths, unmatched = expand_shapes(shapes)
    if not paths and not unmatched:
        raise AffError("predict", "no shape files given (stdin held no paths)")

    # cheap checks first: a bad image or missing run should not wait for the model to load
    P.check_batch_size(batch_size)
    writer = P.OutputWriter(out, render=render, force=force, mesh_format=mesh_format,
                            face_scores=face_scores)
    check_files(list(specs.values()), values)
    source, picked = P.resolve_model(model, cond)
    if picked:
        rep.note(f"using the newest run {source} (pass --model to choose)")
    pred = P.Predictor.load(source, conds, device, batch_size)
    total = len(paths) + len(unmatched)
    asked = f" x {len(conds)} {pred.title().split()[-1]}" if len(conds) > 1 else ""
    rep.note(f"predicting {total} shape{'s' if total != 1 else ''}{asked} with "
             f"{pred.model_type} ({pred.source}, {pred.n_points} points) on {pred.device}")

    results: list[P.ShapeResult] = [
        P.ShapeResult(Path(u), name=u, error=AffError(u, "no file matches this pattern"))
        for u in unmatched]
    for res in results:
        _report(rep, res, json_out, many=total > 1)
    with rep.progress("predicting") as start:
        runs = len(paths) * len(conds)
        advance = start(runs) if runs >= PROGRESS_FROM else (lambda n=1: None)
        for res in pred.run(paths, writer):
            results.append(res)
            _report(rep, res, json_out, many=total > 1)
            advance(1)

    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    if done and not json_out:
        from rich.markup import escape  # a table renders markup: "[x].ply" must stay as is

        # file names only: full paths would squeeze the figures out of a terminal's width
        rows = [[escape(Path(r.name or r.path).name
                        + (f" · {' '.join(r.condition.values())}" if r.condition else "")),
                 len(r.scores), float(r.scores.min()), float(r.scores.mean()),
                 float(r.scores.max()), float((r.scores > 0.5).mean())]
                for r in done if r.scores is not None]
        rep.table(escape(pred.title()),
                  ["shape", "points", "min", "mean", "max", "> 0.5"], rows)
    if done:
        kinds = (".ply" + (" (.glb for meshes)" if mesh_format == "glb" else "") + ", .npy"
                 + (", .png" if render else ""))
        rep.note(f"wrote {len(done)} shape{'s' if len(done) != 1 else ''} to "
                 f"{writer.directory} ({kinds} per shape)")
    if failed:
        if total == 1:
            raise failed[0].error  # type: ignore[misc]
        names = ", ".join(r.name or str(r.path) for r in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise AffError("predict", f"{len(failed)} of {total} shapes failed: {names}{more}")


def _variants(specs: dict[str, Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw option values, one dict per conditioning: texts given several times (or in a
    file) make one each; everything else is shared."""
    from affcli.fileio import read_user_bytes

    shared = {k: v for k, v in inputs.items()
              if k in specs and specs[k].kind != "text" and v is not None}
    texts: dict[str, list[str]] = {}
    for name, spec in specs.items():
        if spec.kind != "text":
            continue
        given = list(inputs.get(name) or [])
        listed = inputs.get(f"{name}s")
        if listed is not None:
            raw = read_user_bytes(listed, f"file of {spec.option} values")
            try:
                lines = raw.decode("utf-8").splitlines()
            except UnicodeDecodeError:
                raise AffError(listed, "not UTF-8 text") from None
            found = [s for line in lines if (s := line.strip()) and not s.startswith("#")]
            if not found:
                raise AffError(listed, f"no {spec.option} values in the file")
            given += found
        if given:
            texts[name] = given
    several = [n for n, v in texts.items() if len(v) > 1]
    if len(several) > 1:
        named = " and ".join(specs[n].option for n in several)
        raise AffError("predict", f"several values for {named}: give several for one text "
                       "input only")
    base = {**shared, **{n: v[0] for n, v in texts.items()}}
    if not several:
        return [base]
    return [{**base, several[0]: text} for text in texts[several[0]]]


def _text_values(specs: dict[str, Any], variants: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """Per conditioning, its text values (the shared ones are parsed once, by the caller)."""
    return [{k: v for k, v in variant.items() if specs[k].kind == "text"}
            for variant in variants]


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
