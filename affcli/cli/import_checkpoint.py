"""`affcli import-checkpoint`: an official state dict to a `from_pretrained` directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affcli.cli.common import ForceOpt, JsonOpt, QuietOpt, reporter
from affcli.errors import AffError


def register(app: typer.Typer) -> None:
    app.command("import-checkpoint")(import_checkpoint_cmd)


def import_checkpoint_cmd(
    model: Annotated[str, typer.Argument(help="Model name (`affcli models` lists them).")],
    file: Annotated[Path, typer.Argument(help="The official checkpoint (.pt/.pth).")],
    out: Annotated[Path, typer.Option(help="Directory to write (config.json + "
                                           "model.safetensors).")],
    force: ForceOpt = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Config override KEY=VALUE (repeatable; VALUE is JSON or a string), "
        "e.g. --set language_model=/models/llava-v1.6-vicuna-7b.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Map an official checkpoint's weights onto affcli's model and save it."""
    import warnings

    from affcli.models.official import (
        import_reference_state_dict,
        load_reference_checkpoint,
        require_mapping,
    )

    if out.exists() and any(out.iterdir()) and not force:
        raise AffError(out, "exists and is not empty; pass --force to overwrite")
    rep = reporter(json_out, quiet)
    overrides = parse_overrides(set_ or [])
    require_mapping(model)  # before reading a file that could not be used anyway
    state = load_reference_checkpoint(file)
    with warnings.catch_warnings():
        # the image backbone's random init is overwritten by the checkpoint at once
        warnings.simplefilter("ignore", UserWarning)
        try:
            net, notes = import_reference_state_dict(model, state, **overrides)
        except AffError as exc:
            raise AffError(file, exc.reason) from None
    for note in notes:
        rep.note(f"note: {note}")
    net.save_pretrained(out)
    n = sum(p.numel() for p in net.parameters())
    rep.table(f"imported {model}", ["checkpoint", "tensors", "parameters", "saved to"],
              [(str(file), len(state), f"{n:,}", str(out))])
    doc = {"model": model, "checkpoint": str(file), "tensors": len(state),
           "parameters": n, "out": str(out), "notes": notes}
    if notes:  # weights the checkpoint lacked, kept from where the config points
        doc["weights_from"] = {field: getattr(net.config, field, None)
                               for field in type(net).official_optional_prefixes.values()}
    rep.result(doc)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; VALUE parsed as JSON when it is JSON (numbers, true, null, lists)."""
    import json

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AffError("--set", f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
