"""Progress display for long stages (rich), usable as a plain callback by library code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

FIT_STAGES = ("select", "insights", "pairs", "activations", "directions", "calibrate")


@contextmanager
def stage_progress(
    enabled: bool = True, stages: tuple[str, ...] = FIT_STAGES, label: str = "fit"
) -> Iterator[Callable[[str], None] | None]:
    """Yield a callback ``progress(stage_name)`` that advances a bar over ``stages``."""
    if not enabled:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=len(stages))
        seen: list[str] = []

        def advance(stage: str) -> None:
            if seen:
                bar.advance(task)
            seen.append(stage)
            bar.update(task, description=f"{label}: {stage}")

        yield advance
        bar.update(task, completed=len(stages))


@contextmanager
def item_progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a bar over ``total`` items (users, queries, …) with an ETA."""

    def noop(n: int = 1) -> None:
        return None

    if not enabled:
        yield noop
        return
    from rich.progress import TimeRemainingColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
