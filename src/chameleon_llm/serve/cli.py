"""`chameleon serve` (registered into the main CLI by ``chameleon_llm.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the main CLI."""

    @app.command("serve")
    def serve(
        host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
        store: Annotated[Path | None, typer.Option(help="SQLite store file (default: user data dir)")] = None,
        config: Annotated[
            Path | None, typer.Option(help="TOML/JSON settings file (also CHAMELEON_CONFIG)")
        ] = None,
    ) -> None:
        """Serve personalized chat over an OpenAI-compatible API (settings: docs/serve.md)."""
        from .app import run_server
        from .settings import ServeSettings, SettingsError

        try:
            settings = ServeSettings.load(config, host=host, port=port, store=store)
        except SettingsError as exc:
            raise typer.BadParameter(str(exc)) from None
        run_server(settings)
