"""Commands: ca init, show, issue-client, trust, untrust (stubs until their issue lands)."""

from __future__ import annotations

import typer

from localmesh.errors import LocalmeshError

app = typer.Typer(help="The local certificate authority.", no_args_is_help=True)


@app.command("init")
def _init() -> None:
    """Not implemented yet."""
    raise LocalmeshError("'ca init' is not implemented yet")
