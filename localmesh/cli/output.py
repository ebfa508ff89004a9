"""Shared output: rich consoles, JSON for machines, and how user errors are printed."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape

from localmesh.errors import ConfigError, Finding, LocalmeshError, Problem, RuntimeStartError

# Piped output is not cut to 80 columns (tables, status lines): a terminal's width, else
# $COLUMNS, else wide enough for a log line.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine output: stable key order, one document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def errors_as_json(enabled: bool) -> Iterator[None]:
    """With ``--json``, a failure is a JSON document on stdout too, so a script reading
    stdout always gets one: ``{"ok": false, "exit_code", "hint", "problems": [...]}``, the
    problems shaped as ``validate --json``'s. A user error exits with its code and prints
    nothing else; an internal error is still reported by ``main`` (exit 70)."""
    if not enabled:
        yield
        return
    try:
        yield
    except LocalmeshError as exc:
        print_json(_error_document(exc, exc.exit_code, exc.hint))
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        print_json(_error_document(exc, INTERNAL_ERROR_EXIT, None))
        raise


#: ``main``'s exit code for a bug (EX_SOFTWARE).
INTERNAL_ERROR_EXIT = 70


def _error_document(exc: Exception, code: int, hint: str | None) -> dict[str, object]:
    if isinstance(exc, ConfigError):
        problems = exc.problems
    elif isinstance(exc, LocalmeshError):
        problems = [Problem(exc.message)]
    else:
        problems = [Problem(f"internal error: {type(exc).__name__}: {exc}")]
    return {
        "ok": False,
        "exit_code": code,
        "hint": hint,
        "problems": [p.as_dict() for p in problems],
    }


def print_warning(finding: Finding) -> None:
    """One line on stderr, never wrapped: a warning never fails a command."""
    err_console.print(
        f"[yellow]warning[/]: {escape(str(finding))}", highlight=False, soft_wrap=True
    )


def print_error(exc: LocalmeshError) -> None:
    """One line per problem in red, the hint after it; never a traceback.

    User text is escaped (a key like ``[/x]`` must not be read as markup) and never
    wrapped, so each problem stays one greppable line in CI logs.
    """
    if isinstance(exc, ConfigError):
        lines = [str(p) for p in exc.problems]
    elif isinstance(exc, RuntimeStartError) and exc.position is not None:
        lines = [f"{exc.position}: {exc.message}"]  # a bind failure at its mesh.yaml line
    else:
        lines = [exc.message]
    for line in lines:
        err_console.print(f"[bold red]error[/]: {escape(line)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]hint[/]: {escape(exc.hint)}", highlight=False, soft_wrap=True)
