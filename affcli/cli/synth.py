"""`affcli synth`: a synthetic dataset in the original on-disk formats."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import ForceOpt, JsonOpt, QuietOpt, reporter
from affcli.errors import AffError


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_cmd)


def synth_cmd(
    dataset: Annotated[str, typer.Argument(
        help="laso, piad or agpil; or shapes: loose PLY files to try `affcli predict` on.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the raw dataset into.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    shapes_per_class: Annotated[int, typer.Option(
        "--shapes-per-class", "-k", help="Object instances per class (>= 2; the default "
        "gives about 1,000 LASO samples).")] = 22,
    classes: Annotated[str | None, typer.Option(
        help="Only these object classes, comma-separated (e.g. Mug,Knife,Chair; default: all "
        "16). Each class's shapes and labels are the same as in the full set.")] = None,
    affordances: Annotated[str | None, typer.Option(
        help="LASO only: keep the samples of these affordances, comma-separated (e.g. "
        "grasp,contain,cut,sit,move; default: every affordance of each class).")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write procedural objects with soft affordance labels as LASO, PIAD or AGPIL raw files."""
    from affcli.data.synth.run import synthesize
    from affcli.data.synth.shapes import SYNTH_CLASSES

    chosen = None
    if classes is not None:
        by_name = {c.lower(): c for c in SYNTH_CLASSES}
        names = [c.strip() for c in classes.split(",") if c.strip()]
        unknown = [c for c in names if c.lower() not in by_name]
        if unknown or not names:
            raise AffError("--classes", f"unknown or no object classes {unknown or names} "
                           f"(choose from {', '.join(SYNTH_CLASSES)})")
        chosen = list(dict.fromkeys(by_name[c.lower()] for c in names))
    rep = reporter(json_out, quiet)
    t0 = time.perf_counter()
    with rep.progress(f"synth {dataset}") as progress_factory:
        counts = synthesize(dataset.lower(), out, seed, shapes_per_class, force, progress_factory,
                            chosen, None if affordances is None else affordances.split(","))
    seconds = round(time.perf_counter() - t0, 3)
    rep.table(f"synthetic {dataset.upper()}", ["setting/split", "samples"],
              list(counts.items()), caption=f"{out} · seed {seed} · k={shapes_per_class} "
              f"· {seconds:.1f} s")
    if not json_out:
        rep.note(f"next: affcli predict '{out}/*.ply' --question '...' --model RUN"
                 if dataset.lower() == "shapes" else
                 f"next: affcli prepare {dataset.lower()} --root {out}")
    rep.result({"dataset": dataset.lower(), "out": str(out), "seed": seed,
                "shapes_per_class": shapes_per_class, "classes": chosen or list(SYNTH_CLASSES),
                "affordances": affordances and [a.strip() for a in affordances.split(",")],
                "samples": counts, "seconds": seconds})
