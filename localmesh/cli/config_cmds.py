"""Commands: init, validate, analyze (stubs until their issue lands)."""

from __future__ import annotations

import typer

from localmesh.errors import LocalmeshError


def register(app: typer.Typer) -> None:
    @app.command("init")
    def _init() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'init' is not implemented yet")

    @app.command("validate")
    def _validate() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'validate' is not implemented yet")

    @app.command("analyze")
    def _analyze() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'analyze' is not implemented yet")
