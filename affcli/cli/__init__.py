"""The `affcli` command line: a Typer app whose subcommands are thin wrappers over the engine.

`main()` owns the exit codes: 0 success, 2 bad input or usage, 1 internal failure, and prints
errors as one line `error: <file>[:<record>]: <what is wrong>` (a traceback only with --debug).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

import typer
import typer.main
from typer._click import exceptions as click_exc  # typer vendors its own click
from typer.core import TyperGroup

from affcli import __version__
from affcli.console import print_error
from affcli.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, AffError


class AffcliGroup(TyperGroup):
    """The root command group. Commands whose options come from the registered models
    (`predict`: one option per declared input) are built when first asked for, so that
    `affcli --version`, `synth` and `prepare` never import the models."""

    lazy = {"predict": "affcli.cli.predict"}  # name -> module with build_command()
    after = {"predict": "train"}  # where each appears in the help's command list

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        names = list(super().list_commands(ctx))
        for name, neighbour in self.after.items():
            if name not in names:
                names.insert(names.index(neighbour) + 1 if neighbour in names else len(names),
                             name)
        return names

    def get_command(self, ctx: typer.Context, cmd_name: str):  # type: ignore[override]
        if cmd_name in self.lazy and cmd_name not in self.commands:
            import importlib

            self.commands[cmd_name] = importlib.import_module(self.lazy[cmd_name]
                                                              ).build_command()
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="affcli",
    cls=AffcliGroup,
    help="3D object affordance grounding: prepare datasets, train, evaluate, predict, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"affcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks on errors (also AFFCLI_DEBUG=1; may follow any "
        "subcommand)."
    ),
) -> None:
    """affcli: one fast format, three reference models, shell-friendly commands."""


def _register() -> None:
    # Imported here so that `affcli --version` stays cheap and modules stay independent.
    from affcli.cli import (
        bench,
        compare,
        doctor,
        export,
        import_checkpoint,
        model_list,
        plot,
        prepare,
        synth,
        train,
    )

    synth.register(app)
    prepare.register(app)
    train.register(app)
    export.register(app)
    import_checkpoint.register(app)
    model_list.register(app)
    bench.register(app)
    compare.register(app)
    plot.register(app)
    doctor.register(app)


_register()
_ARGS: list[str] = []


def current_args() -> list[str]:
    """The arguments of the running command line (for commands that relaunch themselves,
    e.g. `train --nproc K` under torchrun)."""
    return list(_ARGS)


def main(argv: list[str] | None = None) -> int:
    from affcli.memory import keep_freed_memory

    keep_freed_memory()
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line; the root callback documents it.
    debug = "--debug" in args or os.environ.get("AFFCLI_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    _ARGS[:] = args + (["--debug"] if debug and "--debug" in (argv or sys.argv) else [])
    try:
        # The click command itself rather than app(...): Typer's own main turns a Ctrl-C
        # inside a command into a silent exit 130; here it reaches the handler below.
        command = typer.main.get_command(app)
        with command.make_context("affcli", args) as ctx:
            rv = command.invoke(ctx)
        return int(rv) if isinstance(rv, int) else 0
    except AffError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc.one_line())
        if exc.hint:
            sys.stderr.write(exc.hint.rstrip() + "\n")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print_error("aborted")
        return 130
    except click_exc.NoArgsIsHelpError as exc:
        # `affcli` or `affcli bench` alone: show the help, as a user expects
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            typer.echo(ctx.get_help())
        return 0
    except click_exc.ClickException as exc:
        if debug:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        print_error(f"{where}{exc.format_message()} (see --help)")
        return exc.exit_code if exc.exit_code else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except BrokenPipeError:
        # A closed pipe (e.g. `| head`) is the reader's choice, not our failure.
        return 0
    except Exception as exc:  # the last line of defence
        if debug:
            traceback.print_exc()
        print_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)")
        return EXIT_INTERNAL


_fast_exit: list[bool] = []


def allow_fast_exit() -> None:
    """Called by a command whose every output is complete (closed, renamed into place) when
    it returns: `run` may then end the process without the interpreter's teardown."""
    _fast_exit.append(True)


def run() -> NoReturn:
    """The `affcli` console script and `python -m affcli`: `main`, then exit with its code.

    Tearing the interpreter down after torch, numba and a loaded model takes 0.5-0.8 s on a
    2-core machine, a quarter of a one-shape `predict`, paid on every call of a shell loop.
    A command that allows it (`allow_fast_exit`) ends instead with the exit handlers run and
    the standard streams flushed, then `os._exit`: what it wrote is already complete on disk.
    Tests call `main`, which never exits."""
    code = main()
    if _fast_exit:
        import atexit

        atexit._run_exitfuncs()  # logging, temporary folders, multiprocessing: as at exit
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)
