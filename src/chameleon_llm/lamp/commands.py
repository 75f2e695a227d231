"""Plain functions behind the ``lamp`` CLI commands (the CLI wires them into typer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chameleon_llm.lamp.data import LampFormatError, load_labels, load_outputs
from chameleon_llm.lamp.deepen import DeepenSummary, deepen_task_dir
from chameleon_llm.lamp.download import BASE_URL, download_task
from chameleon_llm.lamp.metrics import score
from chameleon_llm.lamp.tasks import TaskSpec, resolve_task


def _score_task(
    task: str | None, golds_task: str | None, preds_task: str | None, golds: dict[str, str]
) -> TaskSpec:
    name = task or golds_task or preds_task
    if name is None:
        raise LampFormatError(
            None, "neither the golds nor the predictions file names its task", fix="pass task=..."
        )
    spec = resolve_task(name, golds=golds.values())
    if (
        preds_task is not None
        and task is None
        and resolve_task(preds_task, golds=golds.values()).name != spec.name
    ):
        raise LampFormatError(
            None,
            f"predictions are for {preds_task!r} but the golds are for {golds_task!r}",
            fix="score predictions against the golds of the same task",
        )
    return spec


def score_command(
    preds_path: str | Path,
    golds_path: str | Path,
    task: str | None = None,
    as_json: bool = False,
    *,
    labels_path: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score a predictions file (official golds format) against a golds file; print a table or JSON.

    For classification, the label list comes from ``labels_path`` or a ``labels.json`` next to the
    golds file, else from the task. Returns ``{"task", "n", "metrics"}``.
    """
    golds_task, golds = load_outputs(golds_path)
    preds_task, preds = load_outputs(preds_path)
    spec = _score_task(task, golds_task, preds_task, golds)
    labels_file = Path(labels_path) if labels_path else Path(golds_path).parent / "labels.json"
    if spec.is_classification and labels_file.is_file():
        spec = spec.with_labels(load_labels(labels_file))
    result: dict[str, Any] = {"task": spec.name, "n": len(golds), "metrics": score(spec, preds, golds)}
    out = console or Console()
    if as_json:
        out.print_json(json.dumps(result))
    else:
        table = Table(title=f"{spec.name} — {spec.title} ({len(golds)} queries)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in result["metrics"].items():
            table.add_row(name, f"{value:.4f}")
        out.print(table)
    return result


def download_command(
    task: str,
    split: str,
    dest: str | Path,
    *,
    time_based: bool = False,
    base_url: str = BASE_URL,
    console: Console | None = None,
) -> dict[str, Path]:
    """Download one official task split into ``dest`` and print where the files went."""
    files = download_task(task, split, dest, time_based=time_based, base_url=base_url)
    out = console or Console()
    for kind, path in files.items():
        out.print(f"{kind}: {path} ({path.stat().st_size:,} bytes)")
    return files


def deepen_command(
    source: str | Path,
    dest: str | Path,
    per_user: int,
    *,
    min_profile: int = 8,
    console: Console | None = None,
) -> DeepenSummary:
    """Write the deeper split of a task folder and print what it holds."""
    summary = deepen_task_dir(source, dest, per_user, min_profile=min_profile)
    (console or Console()).print(
        f"{dest}: {summary.queries_after} queries (was {summary.queries_before}); "
        f"{summary.users_deepened} of {summary.users} users got up to {per_user} extra queries from their "
        f"newest profile items (by {summary.ordered_by}), each keeping at least {min_profile} items"
    )
    return summary
