"""Background fits: worker threads, each with its own model replica, driven by the jobs table.

A job snapshots the user's history when it starts, reports progress at every pipeline stage, and
installs its edit in the same transaction that marks it succeeded. Deleting the user (or stopping
the server) makes the next progress report fail, which ends the fit without writing anything.
At start-up, jobs left ``running`` by a crash are marked ``interrupted`` and queued ones resume.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from ..config import FitConfig
from ..fit import FitResult, Progress
from ..history import HistoryItem
from ..models import LoadedModel
from .metrics import Metrics
from .store import JobRecord, Store

log = logging.getLogger(__name__)

STAGE_PROGRESS = {
    "starting": 0.0,
    "select": 0.05,
    "insights": 0.15,
    "pairs": 0.4,
    "activations": 0.8,
    "directions": 0.9,
    "calibrate": 0.92,
    "saving": 0.98,
}
INTERRUPTED = "the server stopped during this fit; the previous edit (if any) kept serving"


class FitFunction(Protocol):
    def __call__(
        self,
        lm: LoadedModel,
        history: Sequence[HistoryItem],
        config: FitConfig | None = None,
        *,
        cache: bool | Path = True,
        progress: Progress | None = None,
    ) -> FitResult: ...


class JobCancelled(Exception):
    """The job was deleted or the server is stopping."""


class JobRunner:
    """Queues fit jobs; one daemon thread per worker, each a (model replica, fit function) pair."""

    def __init__(
        self,
        store: Store,
        workers: Sequence[tuple[LoadedModel, FitFunction]],
        config: FitConfig,
        *,
        cache_root: Path,
        metrics: Metrics,
        max_pending: int,
        log_content: bool = False,
    ) -> None:
        self.store = store
        self.workers = list(workers)
        self.config = config
        self.cache_root = cache_root
        self.metrics = metrics
        self.max_pending = max_pending
        self.log_content = log_content
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy: set[str] = set()  # users with a fit running
        self._busy_changed = threading.Condition()

    def start(self, *, resume_interrupted: bool = False) -> list[JobRecord]:
        """Mark crashed jobs interrupted, resume queued ones, start the workers; return the interrupted."""
        interrupted = self.store.interrupt_running(INTERRUPTED)
        for job in interrupted:
            log.warning("fit job %s for user %s was interrupted by a restart", job.id, job.user_id)
            self.metrics.fits.labels("interrupted").inc()
        for job in self.store.jobs_with_status("queued"):
            self._queue.put(job.id)
        for i, worker in enumerate(self.workers):
            t = threading.Thread(target=self._worker, args=worker, name=f"chameleon-fit-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if resume_interrupted:
            for job in interrupted:
                try:
                    self.request_fit(job.user_id)
                except OverflowError:
                    break
        return interrupted

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; running fits end at their next stage and are recorded as interrupted."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        self.store.interrupt_running(INTERRUPTED)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def request_fit(self, user_id: str) -> JobRecord:
        """The user's queued job (new or existing); ``OverflowError`` when too many fits are pending."""
        job, created = self.store.create_job(user_id, max_pending=self.max_pending)
        if created:
            self._queue.put(job.id)
        return job

    def user_cache(self, user_id: str) -> Path:
        """Where this user's generated pairs are cached (removed with the user)."""
        return self.cache_root / hashlib.sha256(user_id.encode()).hexdigest()[:32]

    def forget(self, user_id: str) -> None:
        shutil.rmtree(self.user_cache(user_id), ignore_errors=True)

    @contextmanager
    def _exclusive(self, user_id: str) -> Iterator[None]:
        """One fit per user at a time (waits for the user's running fit)."""
        with self._busy_changed:
            self._busy_changed.wait_for(lambda: user_id not in self._busy)
            self._busy.add(user_id)
        try:
            yield
        finally:
            with self._busy_changed:
                self._busy.discard(user_id)
                self._busy_changed.notify_all()

    def _worker(self, lm: LoadedModel, fit: FitFunction) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id, lm, fit)
            except Exception:  # never let a worker die
                log.exception("fit worker error on job %s", job_id)

    def _run(self, job_id: str, lm: LoadedModel, fit: FitFunction) -> None:
        job = self.store.job(job_id)
        if job is None or job.status != "queued" or self._stopping.is_set():
            return
        with self._exclusive(job.user_id):
            claimed = self.store.claim_job(job_id)
            if claimed is None:
                return
            user_id, history = claimed
            self.metrics.jobs_running.inc()
            start = time.perf_counter()
            try:
                status = self._fit(job_id, user_id, history, lm, fit)
            finally:
                self.metrics.jobs_running.dec()
            self.metrics.fits.labels(status).inc()
            self.metrics.fit_seconds.observe(time.perf_counter() - start)

    def _fit(
        self, job_id: str, user_id: str, history: list[HistoryItem], lm: LoadedModel, fit: FitFunction
    ) -> str:
        def progress(stage: str) -> None:
            if self._stopping.is_set() or not self.store.job_progress(
                job_id, stage, STAGE_PROGRESS.get(stage, 0.0)
            ):
                raise JobCancelled(stage)

        log.info("fit job %s for user %s started on %d history items", job_id, user_id, len(history))
        try:
            result = fit(lm, history, self.config, cache=self.user_cache(user_id), progress=progress)
            progress("saving")
            if not self.store.finish_job(job_id, result.edit, timings=result.timings):
                raise JobCancelled("saving")
        except JobCancelled:
            if self.store.job(job_id) is None:  # the user was deleted meanwhile: drop what the fit cached
                self.forget(user_id)
            log.info("fit job %s for user %s cancelled", job_id, user_id)
            return "cancelled"
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"[:2000]
            self.store.fail_job(job_id, message)
            if self.log_content:
                log.warning("fit job %s for user %s failed: %s", job_id, user_id, message)
            else:
                log.warning("fit job %s for user %s failed (%s)", job_id, user_id, type(exc).__name__)
            return "failed"
        log.info("fit job %s for user %s succeeded: edit %s", job_id, user_id, result.edit.id)
        return "succeeded"
