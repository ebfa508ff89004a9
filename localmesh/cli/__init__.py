"""The ``localmesh`` command: typer app, one module per command group, rich output."""
