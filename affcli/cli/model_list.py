"""`affcli models`: the installed models, where each comes from, and what it takes."""

from __future__ import annotations

import typer

from affcli.cli.common import JsonOpt, QuietOpt, reporter


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)


def describe(name: str) -> dict[str, object]:
    """One model's declarations, as `affcli models --json` lists them."""
    from affcli import models

    cls = models.model_class(name)
    return {
        "name": name,
        "origin": models.origin(name),
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "inputs": [{"name": i.name, "kind": i.kind, "option": i.option,
                    "required": i.required, "help": i.help} for i in cls.inputs],
        "datasets": list(cls.dataset_kinds),
        "graph_inputs": list(cls.graph_inputs),
        "graph_outputs": list(cls.graph_outputs),
        "official_checkpoints": cls.official_key_rules is not None,
        "train": cls.training_hint(),
    }


def models_cmd(json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """List the installed models (built-in and plugins): origin, inputs, datasets."""
    from affcli import models

    rep = reporter(json_out, quiet)
    rows = [describe(name) for name in models.available()]
    rep.table("models", ["model", "from", "inputs", "learns from", "official checkpoints"],
              [(r["name"], r["origin"],
                " ".join(i["option"] + ("" if i["required"] else "?")  # type: ignore[index]
                         for i in r["inputs"]),  # type: ignore[union-attr]
                ", ".join(r["datasets"]),  # type: ignore[arg-type]
                "yes" if r["official_checkpoints"] else "no") for r in rows],
              caption="? = optional input; plugins install through the entry-point group "
              "affcli.models (docs/architecture.md, 'Adding a model')")
    rep.result({"models": rows})
