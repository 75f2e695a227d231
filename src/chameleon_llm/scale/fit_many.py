"""Fit every user of a LaMP file or a folder of histories: resumable, failure-tolerant, any engine.

Output folder::

    OUT/manifest.json            user -> edit file, edit id, config hash, status, seconds, error
    OUT/edits/<user>.safetensors one edit per fitted user (written atomically)
    OUT/pairs/<key>.json         the pairs each edit was fitted on (the core pair-cache format/key,
                                 so ``fit-groups --store OUT`` pools them without regenerating)
    OUT/last_run.json            the summary of the last run

The manifest is rewritten atomically after every user. A user is skipped when its entry has the same
config hash (model, dtype, FitConfig and history fingerprint) and its edit file loads with the
recorded id.

Users of a LaMP questions file get ONE history each: the profile of their earliest query (the items
common to all of their queries' profiles; :func:`chameleon_llm.evaluation.runner.fit_profile`). In
time-based files a query's profile holds only older items, so no later query can leak into the fit.
Profile items are framed as the harness frames them (``framing="task"``, its default: each input
wrapped in the task's own instruction, see :func:`chameleon_llm.lamp.profile_to_history`; ``"raw"``:
the bare text), so with equal framing the histories are exactly those ``chameleon eval`` fits and the
pair cache is shared. The framing changes the history, hence the config hash: switching it refits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chameleon_llm.config import FitConfig
from chameleon_llm.edit import EditFileError, UserEdit, atomic_write_bytes, atomic_write_text
from chameleon_llm.history import HistoryError, HistoryItem, history_fingerprint, load_history
from chameleon_llm.lamp.data import FRAMINGS, HistoryFraming
from chameleon_llm.progress import item_progress

from .engines import FitOutcome, FitTask, LocalEngine, RayEngine

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "chameleon-fit-many/1"


@dataclass
class UserSet:
    """Histories per user, plus users whose history could not be read (with the reason)."""

    histories: dict[str, list[HistoryItem]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    framing: str | None = None  # how LaMP profile items were framed ("task" | "raw"); None: history files
    task: str | None = None  # the LaMP task, for LaMP sources

    def __len__(self) -> int:
        return len(self.histories) + len(self.errors)


def users_from_lamp(
    questions: str | Path,
    *,
    task: str | None = None,
    limit: int | None = None,
    framing: HistoryFraming = "task",
) -> UserSet:
    """One history per user of a LaMP questions file (the earliest query's profile), file order.

    ``framing`` is that of :func:`chameleon_llm.lamp.profile_to_history`; use the harness's
    (``EvalConfig.history_framing``, default ``"task"``) so that fits and pairs are shared with it.
    """
    from chameleon_llm.evaluation.methods import history_items
    from chameleon_llm.evaluation.runner import fit_profile
    from chameleon_llm.lamp import load_lamp_files, profile_to_history

    if framing not in FRAMINGS:
        raise ValueError(f"unknown history framing {framing!r}: use one of {', '.join(FRAMINGS)}")
    dataset = load_lamp_files(questions, task=task)
    out = UserSet(framing=framing, task=dataset.task.name)
    for user, queries in list(dataset.users().items())[:limit]:
        items = history_items(profile_to_history(dataset.task, fit_profile(queries), framing))
        if items:
            out.histories[user] = items
        else:
            out.errors[user] = "HistoryError: the earliest query's profile has no usable item"
    return out


def users_from_dir(folder: str | Path, *, limit: int | None = None) -> UserSet:
    """Histories from ``*.json`` / ``*.jsonl`` files (user = file stem), sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"history folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root} has no .json or .jsonl history files")
    out = UserSet()
    for path in files[:limit]:
        try:
            out.histories[path.stem] = load_history(path)
        except HistoryError as exc:
            out.errors[path.stem] = f"HistoryError: {exc}"
    return out


def file_name(user: str) -> str:
    """A file-name-safe form of a user id (a short hash is added when characters were replaced)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in user)[:80]
    if cleaned.startswith("."):  # no hidden files, no "." or ".."
        cleaned = "_" + cleaned[1:]
    if cleaned != user:
        cleaned += "-" + hashlib.sha256(user.encode()).hexdigest()[:8]
    return cleaned


def config_hash(model: str, dtype: str, config: FitConfig, history: Sequence[HistoryItem]) -> str:
    """What decides a user's edit: model, dtype, the whole FitConfig and the history."""
    payload = json.dumps(
        [model, dtype, config.for_history(len(history)).to_json(), history_fingerprint(history)]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Manifest:
    """``OUT/manifest.json``: one entry per user, rewritten atomically after every change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "manifest.json"
        self.users: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"{self.path} is not a fit-many manifest ({data.get('format')!r})")
            self.users = data["users"]

    def save(self) -> None:
        data = {"format": MANIFEST_FORMAT, "users": self.users}
        atomic_write_text(self.path, json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True))

    def put(self, user: str, entry: dict[str, Any]) -> None:
        self.users[user] = entry
        self.save()

    def is_done(self, user: str, digest: str) -> bool:
        """Fitted with this config hash, and the edit file loads with the recorded id."""
        entry = self.users.get(user)
        if not entry or entry.get("status") != "ok" or entry.get("config_hash") != digest:
            return False
        try:
            return UserEdit.load(self.root / entry["edit"]).id == entry.get("edit_id")
        except (EditFileError, KeyError) as exc:
            log.warning("refitting %s: %s", user, exc)
            return False

    def edit_path(self, user: str) -> Path | None:
        entry = self.users.get(user)
        return self.root / entry["edit"] if entry and entry.get("status") == "ok" else None


@dataclass
class FitManySummary:
    """What a run did, and how fast: model load (per worker) is kept apart from per-user fit time."""

    engine: str
    workers: int
    users: int
    fitted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    startup_seconds: float = 0.0  # driver start -> last worker ready (process start + model load)
    workers_info: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model_load_seconds(self) -> float:
        """Mean model (+ embedder) load time per worker, measured inside the worker."""
        loads = [w["load_seconds"] for w in self.workers_info.values()]
        return round(statistics.fmean(loads), 3) if loads else 0.0

    @property
    def per_user_seconds(self) -> float:
        """Mean fit time per fitted user, measured inside the worker (no model load)."""
        secs = [self.fit_seconds[u] for u in self.fitted]
        return round(statistics.fmean(secs), 3) if secs else 0.0

    @property
    def users_per_hour(self) -> float:
        """End to end: fitted users / wall time (start-up and model loads included)."""
        return round(len(self.fitted) * 3600 / self.wall_seconds, 1) if self.wall_seconds > 0 else 0.0

    @property
    def users_per_hour_steady(self) -> float:
        """After start-up: fitted users / (wall time − time until the last worker was ready)."""
        busy = self.wall_seconds - self.startup_seconds
        return round(len(self.fitted) * 3600 / busy, 1) if busy > 0 and self.fitted else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            model_load_seconds=self.model_load_seconds,
            per_user_seconds=self.per_user_seconds,
            users_per_hour=self.users_per_hour,
            users_per_hour_steady=self.users_per_hour_steady,
        )
        return out


def fit_many(
    users: UserSet,
    out: str | Path,
    engine: LocalEngine | RayEngine,
    *,
    config: FitConfig,
    model_name: str,
    dtype: str = "float32",
    retry_failed: bool = True,
    progress: bool = True,
    on_fitted: Callable[[str, FitOutcome], None] | None = None,
) -> FitManySummary:
    """Fit every user not already fitted with this configuration; write edits and the manifest.

    ``on_fitted(user, outcome)`` runs after each successful fit is written (e.g. to publish it).
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root)
    summary = FitManySummary(engine.name, engine.workers, len(users))
    digests = {u: config_hash(model_name, dtype, config, h) for u, h in users.histories.items()}
    for user, error in users.errors.items():
        summary.failed[user] = error
        manifest.put(user, _entry("failed", None, None, None, 0.0, error, 0))
    tasks: list[FitTask] = []
    for user, items in users.histories.items():
        entry = manifest.users.get(user, {})
        if manifest.is_done(user, digests[user]):
            summary.skipped.append(user)
        elif (
            not retry_failed and entry.get("status") == "failed" and entry.get("config_hash") == digests[user]
        ):
            summary.skipped.append(user)
            summary.failed[user] = str(entry.get("error"))
        else:
            tasks.append(FitTask(user, [it.to_dict() for it in items]))
    start_wall, start = time.time(), time.perf_counter()
    if tasks:
        with item_progress(
            len(tasks), f"fit-many ({engine.name} ×{engine.workers})", enabled=progress
        ) as advance:
            for outcome in engine.run(tasks):
                _record(root, manifest, summary, outcome, digests[outcome.user], users.framing)
                if on_fitted is not None and outcome.ok:
                    on_fitted(outcome.user, outcome)
                advance(1)
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    if summary.workers_info:
        last_ready = max(w["ready_at"] for w in summary.workers_info.values())
        summary.startup_seconds = round(max(0.0, last_ready - start_wall), 3)
    atomic_write_text(
        root / "last_run.json",
        json.dumps(
            {
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "model": model_name,
                "dtype": dtype,
                "config": config.model_dump(mode="json"),
                "history_framing": users.framing,
                "task": users.task,
                **summary.to_dict(),
            },
            indent=1,
            ensure_ascii=False,
        ),
    )
    return summary


def _entry(
    status: str,
    edit: str | None,
    edit_id: str | None,
    digest: str | None,
    seconds: float,
    error: str | None,
    n_history: int,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "status": status,
        "edit": edit,
        "edit_id": edit_id,
        "config_hash": digest,
        "seconds": seconds,
        "error": error,
        "n_history": n_history,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def _record(
    root: Path,
    manifest: Manifest,
    summary: FitManySummary,
    outcome: FitOutcome,
    digest: str,
    framing: str | None = None,
) -> None:
    user = outcome.user
    if outcome.worker != "?":
        info = summary.workers_info.setdefault(
            outcome.worker, {"load_seconds": outcome.load_seconds, "ready_at": outcome.ready_at, "users": 0}
        )
        info["users"] += 1
    if outcome.ok:
        assert outcome.edit_bytes is not None
        rel = f"edits/{file_name(user)}.safetensors"
        atomic_write_bytes(root / rel, outcome.edit_bytes)
        pairs_rel = None
        if outcome.pair_file:
            pairs_rel = f"pairs/{outcome.pair_file}"
            atomic_write_text(
                root / pairs_rel,
                json.dumps(
                    {"insights": outcome.insights, "pairs": outcome.pairs}, indent=1, ensure_ascii=False
                ),
            )
        summary.fitted.append(user)
        summary.fit_seconds[user] = outcome.seconds
        summary.failed.pop(user, None)
        manifest.put(
            user,
            _entry(
                "ok",
                rel,
                outcome.edit_id,
                digest,
                outcome.seconds,
                None,
                outcome.n_history,
                n_pairs=len(outcome.pairs),
                pairs=pairs_rel,
                history_framing=framing,
                worker=outcome.worker,
                timings=outcome.timings,
            ),
        )
    else:
        summary.failed[user] = str(outcome.error)
        log.warning("fit-many: user %s failed: %s", user, outcome.error)
        manifest.put(
            user,
            _entry(
                "failed",
                None,
                None,
                digest,
                outcome.seconds,
                outcome.error,
                outcome.n_history,
                worker=outcome.worker,
            ),
        )
