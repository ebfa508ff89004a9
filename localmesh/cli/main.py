"""Entry point: builds the typer app from the command-group modules and maps errors to exits.

User errors (``LocalmeshError``) print one line with a hint and exit with their code;
anything else is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

from localmesh import __version__
from localmesh.cli import ca_cmds, compose_cmds, config_cmds, runtime_cmds
from localmesh.cli.output import INTERNAL_ERROR_EXIT, err_console, print_error
from localmesh.errors import LocalmeshError

app = typer.Typer(
    name="localmesh",
    help="A service mesh for docker-compose: mTLS ingress, per-service proxies, a local CA.\n\n"
    "Examples:\n\n  localmesh up -d            # mesh the compose project here\n\n"
    "  localmesh validate         # check mesh.yaml\n\n"
    "  localmesh run --mesh mesh.yaml   # host mode, no Docker",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # docstrings are wrapped at 100 columns in the source: markdown joins a paragraph's
    # lines (rich mode kept each break, cutting help sentences in half on screen)
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

# typer's rich help prints a flag's type ("-d <bool>"), which reads as if the flag took a
# value; flags get no type column. (tests/unit/cli/test_main.py checks the help output.)
_display_type = typer.core.TyperOption.display_type_rich


def _flag_has_no_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    return None if self.is_flag else _display_type(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_has_no_type  # type: ignore[method-assign]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"localmesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log more."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for internal errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


config_cmds.register(app)
compose_cmds.register(app)
runtime_cmds.register(app)
app.add_typer(ca_cmds.app, name="ca")


def main() -> None:
    try:
        # Without standalone mode, click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except LocalmeshError as exc:
        print_error(exc)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad flag, missing argument
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except Exception as exc:
        if _state["debug"]:
            raise
        err_console.print(
            f"[bold red]internal error[/]: {type(exc).__name__}: {exc}", highlight=False
        )
        err_console.print("[yellow]hint[/]: rerun with --debug for the traceback and report it")
        sys.exit(INTERNAL_ERROR_EXIT)


if __name__ == "__main__":
    main()
