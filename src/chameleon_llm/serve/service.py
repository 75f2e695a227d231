"""The server's parts wired together: model, engine, batcher, store, jobs, keys, edit lookup."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from ..config import FitConfig
from ..edit import EditFileError, UserEdit
from ..embeddings import Embedder
from ..fit import fit_user
from ..models import LoadedModel, load_model
from .auth import KeyRing
from .batcher import Batcher
from .engine import Engine, Row
from .jobs import FitFunction, JobRunner
from .metrics import Metrics
from .settings import ServeSettings, SettingsError
from .store import Store

log = logging.getLogger(__name__)
ModelFactory = Callable[[], LoadedModel]
EditSource = Literal["user", "group", "none"]


def import_object(dotted: str) -> Any:
    """``package.module:attribute`` → the attribute."""
    module, _, attr = dotted.partition(":")
    if not module or not attr:
        raise SettingsError(f"{dotted!r} is not of the form 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"cannot import {dotted!r}: {exc}") from exc


@dataclass(frozen=True)
class Resolved:
    """The edit serving a request and where it came from."""

    source: EditSource
    edit: UserEdit | None = None
    edit_id: str | None = None
    group: str | None = None
    note: str | None = None

    def extension(self, user: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"user": user, "edit_source": self.source, "edit_id": self.edit_id}
        if self.group is not None:
            out["group"] = self.group
        if self.note is not None:
            out["note"] = self.note
        return out


class EditResolver:
    """user id → the edit to apply: their own, else their group's, else none (decoded edits cached by id)."""

    def __init__(self, store: Store, identity: dict[str, Any], size: int) -> None:
        self.store = store
        self.identity = identity
        self.size = size
        self._cache: OrderedDict[str, UserEdit | str] = OrderedDict()  # id → edit, or why it is unusable
        self._lock = threading.Lock()

    def resolve(self, user_id: str | None) -> Resolved:
        if not user_id:
            return Resolved("none")
        ref = self.store.resolve_edit(user_id)
        if ref is None:
            return Resolved("none")
        group = ref.owner if ref.kind == "group" else None
        with self._lock:
            cached = self._cache.get(ref.edit_id)
            if cached is not None:
                self._cache.move_to_end(ref.edit_id)
        if cached is None:
            cached = self._load(ref.kind, ref.owner)
            if cached is None:  # deleted between the two reads
                return Resolved("none")
        if isinstance(cached, str):
            return Resolved(
                "none", group=group, note=f"the stored {ref.kind} edit {ref.edit_id} is unusable: {cached}"
            )
        return Resolved(ref.kind, cached, ref.edit_id, group)

    def _load(self, kind: Literal["user", "group"], owner: str) -> UserEdit | str | None:
        found = self.store.edit_bytes(kind, owner)
        if found is None:
            return None
        edit_id, data = found
        value: UserEdit | str
        try:
            value = UserEdit.from_bytes(data, source=f"{kind} edit {edit_id}")
            value.check_model(self.identity)
        except EditFileError as exc:
            log.warning("%s edit %s cannot serve: %s", kind, edit_id, type(exc).__name__)
            value = "fitted on another model or corrupt; refit the user"
        with self._lock:
            self._cache[edit_id] = value
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return value

    def forget(self, edit_id: str | None) -> None:
        if edit_id is not None:
            with self._lock:
                self._cache.pop(edit_id, None)


@dataclass
class Services:
    settings: ServeSettings
    lm: LoadedModel
    request_lm: LoadedModel  # same model, own tokenizer: only the event loop thread renders and tokenizes
    store: Store
    batcher: Batcher
    runner: JobRunner
    resolver: EditResolver
    keys: KeyRing
    metrics: Metrics
    fit_config: FitConfig
    started_at: float
    log_content: bool

    def encode(self, text: str) -> list[int]:
        tok = self.request_lm.tokenizer
        ids = tok(text, add_special_tokens=not getattr(tok, "chat_template", None))["input_ids"]
        return list(ids)


def build_services(
    settings: ServeSettings,
    *,
    metrics: Metrics | None = None,
    model_factory: ModelFactory | None = None,
    fit_function: FitFunction | None = None,
) -> Services:
    """Load the model and open the store (blocking; done once at start-up)."""
    fit_config = FitConfig.from_overrides(dict(settings.fit_overrides))
    keys = KeyRing(settings.all_keys())
    factory = model_factory or (
        cast(ModelFactory, import_object(settings.model_factory)) if settings.model_factory else None
    )
    fit = fit_function or (
        cast(FitFunction, import_object(settings.fit_function)) if settings.fit_function else fit_user
    )
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    start = time.perf_counter()
    lm = factory() if factory else load_model(settings.model, dtype=settings.dtype, device=settings.device)
    replicas = [copy.deepcopy(lm) for _ in range(settings.fit_workers)]  # before any hook is registered
    request_lm = dataclasses.replace(lm, tokenizer=copy.deepcopy(lm.tokenizer))
    log.info(
        "model %s loaded in %.1fs (%d fit replica(s))", lm.name, time.perf_counter() - start, len(replicas)
    )
    metrics = metrics or Metrics()
    store = Store(settings.store)
    engine = Engine(lm)
    engine.run(
        [Row(prompt_ids=list(request_lm.tokenizer("warm up")["input_ids"]) or [engine.pad], max_tokens=2)]
    )
    batcher = Batcher(
        engine,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        metrics=metrics,
    )
    resolver = EditResolver(store, lm.identity, settings.edit_cache_size)
    log_content = settings.log_content and settings.log_level == "debug"
    runner = JobRunner(
        store,
        [(replica, _per_worker(fit, settings.fit_workers)) for replica in replicas],
        fit_config,
        cache_root=cache_root(settings.store),
        metrics=metrics,
        max_pending=settings.max_pending_jobs,
        log_content=log_content,
    )
    return Services(
        settings,
        lm,
        request_lm,
        store,
        batcher,
        runner,
        resolver,
        keys,
        metrics,
        fit_config,
        time.time(),
        log_content,
    )


def _per_worker(fit: FitFunction, workers: int) -> FitFunction:
    """The default fit with its own sentence embedder per worker when fits run in parallel.

    The shared process-wide embedder's tokenizer must not be used by two threads at once.
    """
    if fit is not fit_user or workers == 1:
        return fit
    return cast(FitFunction, functools.partial(fit_user, embedder=Embedder()))


def cache_root(store: Path) -> Path:
    """Per-user derived files (cached pairs) live next to the database."""
    return store.parent / f"{store.name}.cache"
