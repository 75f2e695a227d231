"""`chameleon score`, `chameleon data download` and `chameleon data deepen`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .commands import deepen_command, download_command, score_command


def register(app: typer.Typer) -> None:
    """Add the LaMP commands to the main CLI."""
    data = typer.Typer(help="LaMP benchmark data", no_args_is_help=True)

    @app.command()
    def score(
        preds: Annotated[Path, typer.Argument(help="predictions in the official golds format")],
        golds: Annotated[Path, typer.Argument(help="official outputs file")],
        task: Annotated[str | None, typer.Option(help="task name when the files do not say")] = None,
        labels: Annotated[Path | None, typer.Option(help="labels.json (default: beside GOLDS)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
    ) -> None:
        """Score a predictions file exactly as the official LaMP evaluator does."""
        score_command(preds, golds, task=task, as_json=as_json, labels_path=labels)

    @data.command("download")
    def download(
        task: Annotated[str, typer.Argument(help="LaMP_1 … LaMP_7 (LaMP_2N news, LaMP_2M movies)")],
        split: Annotated[str, typer.Option(help="train | dev | test")] = "dev",
        dest: Annotated[Path, typer.Option(help="destination folder")] = Path("data/lamp"),
        time_based: Annotated[bool, typer.Option("--time-based", help="the time-based split")] = False,
    ) -> None:
        """Fetch official LaMP files (resumable, JSON-verified)."""
        download_command(task, split, dest, time_based=time_based)

    @data.command("deepen")
    def deepen(
        source: Annotated[
            Path, typer.Argument(help="LaMP-format task folder (time-based: queries carry user_id)")
        ],
        dest: Annotated[Path, typer.Argument(help="folder for the deeper split")],
        per_user: Annotated[
            int, typer.Option(help="extra queries per user, from the newest profile items")
        ] = 6,
        min_profile: Annotated[int, typer.Option(help="profile items every user keeps")] = 8,
    ) -> None:
        """More queries per user: each user's newest profile items become queries (leak-free)."""
        try:
            deepen_command(source, dest, per_user, min_profile=min_profile)
        except (ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc

    app.add_typer(data, name="data")
