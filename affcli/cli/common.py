"""Options several subcommands take, declared once, and the reporter built from them.

Each alias carries the typer.Option (names and help); the default stays at the parameter,
since it differs per command (`batch_size: BatchSizeOpt = 16`). BatchSizeOpt and DeviceOpt
are typed `| None` because some commands default to None, meaning "the model's recipe"; a
command with a concrete default never receives None. Validation of the values is the engine's
(one place, whatever calls it): the CLI only passes them on.
"""

from __future__ import annotations

from typing import Annotated

import typer

from affcli.console import Reporter

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Overwrite existing outputs (without it, an existing output is an error).")]
BatchSizeOpt = Annotated[int | None, typer.Option(
    "--batch-size", "-b", help="Samples per batch (where no default is shown: the model's "
    "recipe).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def reporter(json_mode: bool, quiet: bool) -> Reporter:
    return Reporter(json_mode=json_mode, quiet=quiet)
