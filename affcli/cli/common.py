"""Options every subcommand takes after its name, and the reporter built from them."""

from __future__ import annotations

from typing import Annotated

import typer

from affcli.console import Reporter

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]


def reporter(json_mode: bool, quiet: bool) -> Reporter:
    return Reporter(json_mode=json_mode, quiet=quiet)
