"""Shared output: rich consoles, JSON for machines, and how user errors are printed."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from localmesh.errors import ConfigError, Finding, LocalmeshError

# Piped output is not cut to 80 columns (tables, status lines): a terminal's width, else
# $COLUMNS, else wide enough for a log line.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine output: stable key order, one document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


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
    lines = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [exc.message]
    for line in lines:
        err_console.print(f"[bold red]error[/]: {escape(line)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[yellow]hint[/]: {escape(exc.hint)}", highlight=False, soft_wrap=True)
