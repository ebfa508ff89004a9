"""Commands: generate, up, down (stubs until their issue lands)."""

from __future__ import annotations

import typer

from localmesh.errors import LocalmeshError


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def _generate() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'generate' is not implemented yet")

    @app.command("up")
    def _up() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'up' is not implemented yet")

    @app.command("down")
    def _down() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'down' is not implemented yet")
