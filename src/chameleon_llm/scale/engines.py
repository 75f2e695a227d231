"""Fit workers and the engines that run them: in this process, a local process pool, or Ray actors.

A :class:`FitWorker` loads the model (and the sentence embedder) once, then fits many users. Engines
only move small things between processes: a :class:`FitTask` (user id + history as dicts) in, a
:class:`FitOutcome` (the edit's safetensors bytes, its pairs, timings or the error) out. The driver
(:mod:`chameleon_llm.scale.fit_many`) is the only writer of files, so workers need no shared disk.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chameleon_llm.config import FitConfig
from chameleon_llm.embeddings import DEFAULT_EMBEDDER, Embedder, get_embedder
from chameleon_llm.fit import _pair_cache_path, fit_user
from chameleon_llm.history import parse_history
from chameleon_llm.models import DTypeName, LoadedModel, load_model

log = logging.getLogger(__name__)

ModelSpec = str | Callable[[], LoadedModel]
EngineName = Literal["local", "ray"]


class EngineError(RuntimeError):
    """The engine cannot run (Ray missing, a worker pool died); already finished users are kept."""


def model_label(model: ModelSpec) -> str:
    """A stable name for a model spec (a name/path as is, a factory as ``module:qualname``)."""
    if isinstance(model, str):
        return model
    return f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', repr(model))}"


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds its model and fits: picklable (a model name/path or a top-level factory)."""

    model: ModelSpec
    config_json: str
    dtype: DTypeName = "float32"
    threads: int | None = None
    cache: bool | str = True  # pair cache: True = user cache dir, a folder path, False = none
    embedder: str = DEFAULT_EMBEDDER


@dataclass(frozen=True)
class FitTask:
    user: str
    history: list[dict[str, Any]]


@dataclass
class FitOutcome:
    """One user's result as it travels back to the driver."""

    user: str
    edit_bytes: bytes | None
    edit_id: str | None
    seconds: float
    worker: str
    load_seconds: float
    ready_at: float
    pairs: list[dict[str, Any]] = field(default_factory=list)
    insights: dict[str, Any] = field(default_factory=dict)
    pair_file: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    n_history: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.edit_bytes is not None


class FitWorker:
    """Loads the model once, then fits users one at a time (deterministic: greedy decoding, fixed seeds)."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        start = time.perf_counter()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.config = FitConfig.model_validate_json(spec.config_json)
        self.lm: LoadedModel = (
            load_model(spec.model, dtype=spec.dtype) if isinstance(spec.model, str) else spec.model()
        )
        self.embedder: Embedder = get_embedder(spec.embedder)
        self.load_seconds = round(time.perf_counter() - start, 3)
        self.ready_at = time.time()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def fit(self, task: FitTask) -> FitOutcome:
        """Fit one user; any error is returned (not raised) so one bad user never stops a run."""
        start = time.perf_counter()
        out = FitOutcome(
            task.user,
            None,
            None,
            0.0,
            self.name,
            self.load_seconds,
            self.ready_at,
            n_history=len(task.history),
        )
        try:
            items = parse_history(task.history, source=f"user {task.user}")
            cache: bool | Path = (
                Path(self.spec.cache) if isinstance(self.spec.cache, str) else self.spec.cache
            )
            result = fit_user(self.lm, items, self.config, embedder=self.embedder, cache=cache)
            out.edit_bytes = result.edit.to_bytes()
            out.edit_id = result.edit.id
            out.pairs = [asdict(p) for p in result.pairs]
            out.insights = asdict(result.insights)
            own = self.config.for_history(len(items))  # as fit_user keyed the pairs
            out.pair_file = _pair_cache_path(self.lm, items, own, Path(".")).name
            out.timings = dict(result.timings)
        except Exception as exc:  # one user's failure must not stop the others
            out.error = f"{type(exc).__name__}: {exc}"
            log.warning("user %s failed: %s", task.user, out.error)
        out.seconds = round(time.perf_counter() - start, 3)
        return out

    def info(self) -> dict[str, Any]:
        return {"worker": self.name, "load_seconds": self.load_seconds, "ready_at": self.ready_at}


def failed(task: FitTask, error: str) -> FitOutcome:
    """An outcome for a user whose worker died (no worker timings)."""
    return FitOutcome(task.user, None, None, 0.0, "?", 0.0, 0.0, n_history=len(task.history), error=error)


class LocalEngine:
    """``workers == 1``: this process (no start-up cost); more: a spawn-based process pool."""

    name = "local"

    def __init__(self, spec: WorkerSpec, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec, self.workers = spec, workers

    @property
    def threads(self) -> int:
        """torch threads per worker: given, else the CPUs shared evenly between workers."""
        return self.spec.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, tasks: Iterable[FitTask]) -> Iterator[FitOutcome]:
        spec = WorkerSpec(**{**self.spec.__dict__, "threads": self.threads})
        if self.workers == 1:
            yield from self._in_process(tasks, spec)
        else:
            yield from self._pool(tasks, spec)

    def _in_process(self, tasks: Iterable[FitTask], spec: WorkerSpec) -> Iterator[FitOutcome]:
        import torch

        before = torch.get_num_threads()
        worker: FitWorker | None = None
        try:
            for task in tasks:
                worker = worker or FitWorker(spec)
                yield worker.fit(task)
        finally:
            torch.set_num_threads(before)

    def _pool(self, tasks: Iterable[FitTask], spec: WorkerSpec) -> Iterator[FitOutcome]:
        ctx = multiprocessing.get_context("spawn")
        pending = iter(tasks)
        with ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=_init_child, initargs=(spec,)
        ) as pool:
            inflight: dict[Future[FitOutcome], FitTask] = {}

            def submit() -> None:
                task = next(pending, None)
                if task is not None:
                    inflight[pool.submit(_fit_in_child, task)] = task

            for _ in range(2 * self.workers):
                submit()
            while inflight:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    task = inflight.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool as exc:
                        yield failed(task, f"worker process died: {exc}")
                        for other in inflight.values():
                            yield failed(other, "worker pool broke while this user was running")
                        raise EngineError("a worker process died (out of memory?); rerun to resume") from exc
                    submit()


_CHILD: FitWorker | None = None


def _init_child(spec: WorkerSpec) -> None:
    global _CHILD
    logging.basicConfig(level=logging.WARNING)
    _CHILD = FitWorker(spec)


def _fit_in_child(task: FitTask) -> FitOutcome:
    assert _CHILD is not None, "worker not initialised"
    return _CHILD.fit(task)


class RayEngine:
    """A pool of Ray actors, each holding one loaded model; two users queued per actor.

    ``address``: an existing cluster (``"auto"`` or ``"ray://head:10001"``); ``None`` starts a local
    one with ``workers * cpus_per_worker`` CPUs (shut down afterwards). A Ray session that is already
    initialised in this process is used as it is and left running.
    """

    name = "ray"

    def __init__(
        self, spec: WorkerSpec, workers: int = 2, *, address: str | None = None, cpus_per_worker: float = 1.0
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec, self.workers, self.address, self.cpus = spec, workers, address, cpus_per_worker

    @property
    def threads(self) -> int:
        """torch threads per actor: given, else its reserved CPUs."""
        return self.spec.threads or max(1, int(self.cpus))

    def _start(self) -> bool:
        ray = import_ray()
        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=max(1, round(self.workers * self.cpus)),
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
            )
        return True

    def run(self, tasks: Iterable[FitTask]) -> Iterator[FitOutcome]:
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError

        started = self._start()
        spec = WorkerSpec(**{**self.spec.__dict__, "threads": self.threads})
        actor_cls = ray.remote(num_cpus=self.cpus)(FitWorker)
        actors: list[Any] = []
        generation = [0] * self.workers  # bumped when a dead actor is replaced
        pending = iter(tasks)
        inflight: dict[Any, tuple[int, int, FitTask]] = {}

        def submit(slot: int) -> None:
            task = next(pending, None)
            if task is not None:
                inflight[actors[slot].fit.remote(task)] = (slot, generation[slot], task)

        try:
            actors += [actor_cls.remote(spec) for _ in range(self.workers)]
            for _ in range(2):  # one user per actor, then a second one queued behind it
                for slot in range(self.workers):
                    submit(slot)
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                slot, gen, task = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError as exc:
                    outcome = failed(task, f"Ray actor died: {exc}")
                    if gen == generation[slot]:  # replace it once, not once per lost user
                        actors[slot] = actor_cls.remote(spec)
                        generation[slot] += 1
                except RayTaskError as exc:
                    outcome = failed(task, f"Ray task failed: {exc}")
                yield outcome
                submit(slot)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()


def import_ray() -> Any:
    """``ray``, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(
            "--engine ray needs Ray: pip install 'chameleon-llm[scale]' (or pip install 'ray==2.60.0')"
        ) from exc
    return ray


def make_engine(
    name: EngineName,
    spec: WorkerSpec,
    workers: int = 1,
    *,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
) -> LocalEngine | RayEngine:
    if name == "local":
        if address:
            raise ValueError("--address is only for --engine ray")
        return LocalEngine(spec, workers)
    if name == "ray":
        return RayEngine(spec, workers, address=address, cpus_per_worker=cpus_per_worker)
    raise ValueError(f"unknown engine {name!r}; use local or ray")
