"""Commands: run, status, config, logs (stubs until their issue lands)."""

from __future__ import annotations

import typer

from localmesh.errors import LocalmeshError


def register(app: typer.Typer) -> None:
    @app.command("run")
    def _run() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'run' is not implemented yet")

    @app.command("status")
    def _status() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'status' is not implemented yet")

    @app.command("config")
    def _config() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'config' is not implemented yet")

    @app.command("logs")
    def _logs() -> None:
        """Not implemented yet."""
        raise LocalmeshError("'logs' is not implemented yet")
