"""`affcli import-checkpoint`: an official state dict to a `from_pretrained` directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter
from affcli.errors import AffError


def register(app: typer.Typer) -> None:
    app.command("import-checkpoint")(import_checkpoint_cmd)


def import_checkpoint_cmd(
    model: Annotated[str, typer.Argument(help="pointrefer, iagnet or lmaffordance3d.")],
    file: Annotated[Path, typer.Argument(help="The official checkpoint (.pt/.pth).")],
    out: Annotated[Path, typer.Option(help="Directory to write (config.json + "
                                           "model.safetensors).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty OUT.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Map an official checkpoint's weights onto affcli's model and save it."""
    import warnings

    from affcli.models.reference import from_reference_state_dict, load_reference_checkpoint

    if out.exists() and any(out.iterdir()) and not force:
        raise AffError(out, "exists and is not empty; pass --force to overwrite")
    rep = reporter(json_out, quiet)
    state = load_reference_checkpoint(file)
    with warnings.catch_warnings():
        # the image backbone's random init is overwritten by the checkpoint at once
        warnings.simplefilter("ignore", UserWarning)
        try:
            net = from_reference_state_dict(model, state)
        except AffError as exc:
            raise AffError(file, exc.reason) from None
    net.save_pretrained(out)
    n = sum(p.numel() for p in net.parameters())
    rep.table(f"imported {model}", ["checkpoint", "tensors", "parameters", "saved to"],
              [(str(file), len(state), f"{n:,}", str(out))])
    rep.result({"model": model, "checkpoint": str(file), "tensors": len(state),
                "parameters": n, "out": str(out)})
