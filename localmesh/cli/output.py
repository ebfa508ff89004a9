"""Shared output: rich consoles, JSON for machines, and how user errors are printed."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from localmesh.errors import ConfigError, LocalmeshError

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine output: stable key order, one document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_error(exc: LocalmeshError) -> None:
    """One line per problem in red, the hint after it; never a traceback."""
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            err_console.print(f"[bold red]error[/]: {problem}", highlight=False, markup=True)
    else:
        err_console.print(f"[bold red]error[/]: {exc.message}", highlight=False)
    if exc.hint:
        err_console.print(f"[yellow]hint[/]: {exc.hint}", highlight=False)
