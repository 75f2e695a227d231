"""The per-user evaluation loop: resumable, one checkpoint file per (method, user), lock-free.

Layout of a run folder::

    RUN_DIR/
      checkpoints/<method>/<settings-hash>/<user>.json   answers of one user (written atomically)
      edits/<user>-<hash>.safetensors|.json                 fitted Chameleon edits + their pairs
      predictions/<method>.json                             official LaMP format
      results.json  results.md  plots/*.png                 the report (see report.py)

Two processes running different methods into the same folder never write the same file; a rerun
skips every (method, user) whose checkpoint exists for the same settings. A checkpoint's folder is
named by a hash of everything that changes its answers (model, data, prompt settings, and the
FitConfig for fitted methods), so changed settings never reuse stale answers.

Fit-profile rule: Chameleon (and the peers) fit ONE edit per user from the profile of the user's
earliest query, computed as the items common to all of the user's query profiles. In time-based
LaMP data a query's profile holds only that user's older items, so this set is the earliest query's
profile: no later query, and no gold, can leak into the fit used for an earlier query.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from chameleon_llm.config import FitConfig
from chameleon_llm.edit import atomic_write_text
from chameleon_llm.lamp.data import (
    FRAMINGS,
    LampDataset,
    LampQuery,
    load_task_dir,
    profile_to_history,
)
from chameleon_llm.lamp.data import common_profile as fit_profile
from chameleon_llm.lamp.tasks import TaskSpec, is_valid, parse_answer, scored_prediction
from chameleon_llm.models import DEFAULT_MODEL, LoadedModel
from chameleon_llm.progress import item_progress

from .methods import (
    METHODS,
    FitStore,
    Method,
    MethodContext,
    MethodUnavailable,
    create_method,
    safe_name,
)
from .prompting import EvalSettings, ResolvedSettings, rag_message

log = logging.getLogger(__name__)

# How fitted methods see the fit profile: the core framings, or "rag": the task framing with each
# item's k most relevant other profile items retrieved into it (the prompt rag and chameleon_rag
# answer with), so the edit is fitted and calibrated in the context it is applied in.
EvalFraming = Literal["raw", "task", "rag"]
EVAL_FRAMINGS: tuple[str, ...] = (*FRAMINGS, "rag")
RAG_MAX_ITEM_CHARS = 8000

DEFAULT_METHODS = ("base", "rag", "prior", "chameleon")
CHECKPOINT_FORMAT = "chameleon-eval-checkpoint/1"


@dataclass
class EvalConfig:
    """Everything a run needs besides the data: methods, model, settings, FitConfig, statistics."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    settings: EvalSettings = field(default_factory=EvalSettings)
    fit_config: FitConfig = field(default_factory=FitConfig)
    limit_users: int | None = None
    skip_users: int = 0  # skip the first N users (e.g. evaluate users no ablation has seen)
    bootstrap: int = 1000
    seed: int = 0
    pair_cache: bool = True
    history_framing: EvalFraming = "task"  # how fitted methods see the profile (see fit_history)


@dataclass
class RunState:
    """What the loop did (for callers and tests)."""

    done: dict[str, list[str]] = field(default_factory=dict)  # method -> users answered in this call
    skipped: dict[str, list[str]] = field(default_factory=dict)  # method -> users already checkpointed
    unsupported: dict[str, str] = field(default_factory=dict)
    fits_run: int = 0
    model_identity: dict[str, Any] | None = None  # set when the model was loaded


def select_users(dataset: LampDataset, limit: int | None, skip: int = 0) -> dict[str, list[LampQuery]]:
    """Users in file order (first appearance): after the first ``skip``, the next ``limit`` of them."""
    if skip < 0:
        raise ValueError(f"skip_users must be >= 0, got {skip}")
    users = dataset.users()
    names = list(users)[skip:]
    names = names[:limit] if limit is not None else names
    return {u: users[u] for u in names}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def data_fingerprint(dataset: LampDataset) -> str:
    """A hash of the queries (ids, inputs, profiles) and the label list; golds are not included."""
    return _digest(
        [
            dataset.task.name,
            list(dataset.task.labels),
            [(q.id, q.user_id, q.input, q.profile) for q in dataset.queries],
        ]
    )


def settings_hash(
    method: Method | str,
    uses_fit: bool,
    base: Mapping[str, Any],
    fit_config: FitConfig,
    history_framing: str = "raw",
) -> str:
    """The checkpoint folder name of ``method`` under ``base`` settings (+ what the fit depends on).

    The FitConfig enters as its cache keys do (:meth:`FitConfig.keyed`): options added later change
    the folder only when set, so answers checkpointed before they existed stay valid."""
    name = method if isinstance(method, str) else method.name
    payload: dict[str, Any] = {"method": name, **base}
    if uses_fit:
        payload["fit_config"] = fit_config.keyed()
        if history_framing != "raw":  # "raw" keeps the hashes of runs made before framing existed
            payload["history_framing"] = history_framing
    return _digest(payload)


def checkpoint_path(run_dir: Path, method: str, digest: str, user: str) -> Path:
    return run_dir / "checkpoints" / method / digest / f"{safe_name(user)}.json"


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """A finished checkpoint, or ``None`` if absent or unreadable (then the user is redone)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("format") == CHECKPOINT_FORMAT else None


class _LazyModel:
    def __init__(self, name: str, dtype: str, lm: LoadedModel | None) -> None:
        self.name, self.dtype, self.lm = name, dtype, lm

    def __call__(self) -> LoadedModel:
        if self.lm is None:
            from chameleon_llm.models import load_model

            self.lm = load_model(self.name, dtype=self.dtype)  # type: ignore[arg-type]
        return self.lm


@dataclass
class Run:
    """A prepared run: dataset, selected users, settings and the per-method checkpoint hashes."""

    data_dir: Path
    run_dir: Path
    config: EvalConfig
    dataset: LampDataset
    users: dict[str, list[LampQuery]]
    resolved: ResolvedSettings
    base_settings: dict[str, Any]

    def digest(self, method: str) -> str:
        factory = METHODS.get(method)
        uses_fit = bool(getattr(factory, "uses_fit", False))
        return settings_hash(
            method, uses_fit, self.base_settings, self.config.fit_config, self.config.history_framing
        )

    def checkpoint(self, method: str, user: str) -> Path:
        return checkpoint_path(self.run_dir, method, self.digest(method), user)

    def complete(self, method: str) -> bool:
        return all(read_checkpoint(self.checkpoint(method, u)) is not None for u in self.users)

    def checkpoints(self, method: str) -> dict[str, dict[str, Any]]:
        out = {}
        for u in self.users:
            data = read_checkpoint(self.checkpoint(method, u))
            if data is not None:
                out[u] = data
        return out


def with_task_context(config: EvalConfig, resolved: ResolvedSettings, spec: TaskSpec) -> EvalConfig:
    """With task (or rag) framing, fit edits after the task's answer prefix (unless the FitConfig sets one);
    with the ``answers`` calibration objective or label-neutral pairs, give them the task's labels (unless
    set), and the objective the label rule the task is answered with."""
    if config.history_framing not in ("task", "rag"):
        return config
    fit = config.fit_config
    if not fit.pairs.answer_prefix and resolved.answer_prefix:
        fit = fit.model_copy(
            update={"pairs": fit.pairs.model_copy(update={"answer_prefix": resolved.answer_prefix})}
        )
    labels = spec.labels if spec.kind != "generation" else ()
    edit = fit.edit
    answers = edit.calibration_objective == "answers"
    if answers and not edit.calibration_labels and labels:
        edit = edit.model_copy(update={"calibration_labels": labels})
    if answers and edit.calibration_label_rule == "argmax" and resolved.label_rule != "argmax":
        edit = edit.model_copy(update={"calibration_label_rule": resolved.label_rule})
    if edit is not fit.edit:
        fit = fit.model_copy(update={"edit": edit})
    pairs = fit.pairs
    if pairs.neutral == "labels" and not pairs.labels and labels:
        fit = fit.model_copy(update={"pairs": pairs.model_copy(update={"labels": labels})})
    return config if fit is config.fit_config else replace(config, fit_config=fit)


def prepare_run(data_dir: str | Path, run_dir: str | Path, config: EvalConfig) -> Run:
    """Load the task folder (golds required) and fix the users and settings of a run."""
    dataset = load_task_dir(data_dir)
    if dataset.golds is None:
        raise FileNotFoundError(f"{data_dir} has no outputs.json: golds are needed to evaluate")
    users = select_users(dataset, config.limit_users, config.skip_users)
    resolved = config.settings.resolve(dataset.task)
    config = with_task_context(config, resolved, dataset.task)
    base_settings = {
        "model": config.model,
        "dtype": config.dtype,
        "task": dataset.task.name,
        "data": data_fingerprint(dataset),
        "settings": resolved.answer_key(),
    }
    return Run(Path(data_dir), Path(run_dir), config, dataset, users, resolved, base_settings)


def run_methods(
    run: Run,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
    fit_fn: Callable[..., Any] | None = None,
) -> RunState:
    """Answer every pending (method, user); methods of one user run back to back (one fit each)."""
    cfg = run.config
    state = RunState()
    load_lm = _LazyModel(cfg.model, cfg.dtype, lm)
    fits_kwargs: dict[str, Any] = {"pair_cache": cfg.pair_cache}
    if cfg.history_framing == "rag":  # the query comes last: keep it, retrieved items and all
        fits_kwargs["max_item_chars"] = RAG_MAX_ITEM_CHARS
    if fit_fn is not None:
        fits_kwargs["fit_fn"] = fit_fn
    fits = FitStore(load_lm, cfg.fit_config, run.run_dir / "edits", **fits_kwargs)
    fits_kwargs["max_item_chars"] = RAG_MAX_ITEM_CHARS
    rag_fits = FitStore(load_lm, cfg.fit_config, run.run_dir / "edits", **fits_kwargs)

    framed: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def frame(user: str, framing: str) -> list[dict[str, Any]]:
        """The user's fit history in ``framing``, built once per user (rag framing retrieves per item)."""
        if (user, framing) not in framed:
            if any(u != user for u, _ in framed):
                framed.clear()  # methods of one user run back to back: keep one user
            framed[user, framing] = fit_history(run, run.users[user], load_lm, framing)  # type: ignore[arg-type]
        return [dict(item) for item in framed[user, framing]]  # copies: a method cannot alter the memo

    ctx = MethodContext(
        run.dataset.task, run.resolved, cfg.fit_config, load_lm, fits, rag_fits=rag_fits, frame=frame
    )
    methods: dict[str, Method] = {}
    for name in cfg.methods:
        try:
            methods[name] = create_method(name, ctx)
        except MethodUnavailable as exc:
            state.unsupported[name] = str(exc)
            log.warning("method %s unsupported: %s", name, exc)
    pending = [(m, u) for u in run.users for m in methods if read_checkpoint(run.checkpoint(m, u)) is None]
    todo = set(pending)
    for m in methods:
        state.done[m] = []
        state.skipped[m] = [u for u in run.users if (m, u) not in todo]
    label = f"{run.dataset.task.name} eval"
    with item_progress(len(pending), label, enabled=progress and bool(pending)) as advance:
        for method_name, user in pending:
            _run_one(run, methods[method_name], user, frame)
            state.done[method_name].append(user)
            advance(1)
    state.fits_run = fits.fits_run + rag_fits.fits_run
    if load_lm.lm is not None:
        state.model_identity = dict(load_lm.lm.identity)
    return state


def fit_history(
    run: Run,
    queries: Sequence[LampQuery],
    load_lm: Callable[[], LoadedModel] | None = None,
    framing: EvalFraming | None = None,
) -> list[dict[str, Any]]:
    """The user's fit profile (:func:`fit_profile`) as core history items, in ``framing`` (default:
    the run's), one per profile item, in profile order.

    ``rag`` framing (needs ``load_lm``): each item is task-framed, then the run's rag prompt is built
    around it from the other fit-profile items (tasks whose items cannot be framed stay as ``task``).
    """
    spec = run.dataset.task
    profile = fit_profile(queries)
    framing = framing or run.config.history_framing
    if framing != "rag":
        return profile_to_history(spec, profile, framing)
    history = profile_to_history(spec, profile, "task")
    if spec.name in ("LaMP_1", "LaMP_7") or load_lm is None:
        return history
    lm = load_lm()
    for i, item in enumerate(history):
        others = profile[:i] + profile[i + 1 :]
        item["input"] = rag_message(lm, spec, item["input"], others, run.resolved)
    return history


def _run_one(run: Run, method: Method, user: str, frame: Callable[[str, str], list[dict[str, Any]]]) -> None:
    queries = run.users[user]
    # fitted methods share the run's framing (built once per user); the others get the cheap task one
    history = frame(user, run.config.history_framing) if method.uses_fit else fit_history(run, queries)
    start = time.perf_counter()
    user_state = method.prepare_user(user, history)
    prepared = time.perf_counter()
    raw = method.answer(list(queries), user_state)
    answered = time.perf_counter()
    if len(raw) != len(queries):
        raise RuntimeError(f"method {method.name} returned {len(raw)} answers for {len(queries)} queries")
    spec = run.dataset.task
    answers = {}
    for q, text in zip(queries, raw, strict=True):
        parsed = parse_answer(spec, text)
        answers[q.id] = {
            "raw": text,
            "prediction": scored_prediction(spec, text),
            "valid": is_valid(spec.kind, parsed),
        }
    payload = {
        "format": CHECKPOINT_FORMAT,
        "method": method.name,
        "user": user,
        "settings_hash": run.digest(method.name),
        "n_history": len(history),
        "answers": answers,
        "fit_seconds": round(user_state.fit_seconds, 3),
        "prepare_seconds": round(prepared - start, 3),
        "generation_seconds": round(answered - prepared, 3),
        "info": user_state.info,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(run.checkpoint(method.name, user), json.dumps(payload, indent=1, ensure_ascii=False))


def evaluate(
    data_dir: str | Path,
    run_dir: str | Path,
    config: EvalConfig,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
    report_only: bool = False,
    fit_fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the methods on a task folder, then write the report; return results.json's content."""
    from .report import write_report

    run = prepare_run(data_dir, run_dir, config)
    state = RunState() if report_only else run_methods(run, lm=lm, progress=progress, fit_fn=fit_fn)
    model_identity = dict(lm.identity) if lm is not None else state.model_identity
    return write_report(run, state, model_identity=model_identity)


def config_dict(config: EvalConfig) -> dict[str, Any]:
    """The run configuration as JSON-ready data."""
    return {
        "methods": list(config.methods),
        "model": config.model,
        "dtype": config.dtype,
        "settings": asdict(config.settings),
        "fit_config": config.fit_config.model_dump(mode="json"),
        "history_framing": config.history_framing,
        "limit_users": config.limit_users,
        "skip_users": config.skip_users,
        "bootstrap": config.bootstrap,
        "seed": config.seed,
        "pair_cache": config.pair_cache,
    }
