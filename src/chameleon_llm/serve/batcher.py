"""Micro-batching: an asyncio queue feeding one generation thread.

A batch starts with the oldest waiting request and takes whatever else arrives within ``max_wait``
(up to ``max_batch_size`` rows); rows keep their own edits and options. Results and streamed text
go back to the event loop through per-request queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .engine import Engine, Row
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    """A queued row and its events: ``("delta", text)``, ``("done", None)`` or ``("error", exc)``."""

    row: Row
    events: asyncio.Queue[tuple[str, object]] = field(default_factory=asyncio.Queue)

    async def stream(self) -> AsyncIterator[str]:
        """Yield text pieces until the row is done (raises the row's error, if any)."""
        while True:
            kind, value = await self.events.get()
            if kind == "delta":
                yield str(value)
            elif kind == "done":
                return
            else:
                assert isinstance(value, BaseException)
                raise value

    async def result(self) -> Row:
        async for _ in self.stream():
            pass
        return self.row


class Batcher:
    def __init__(
        self, engine: Engine, *, max_batch_size: int, max_wait_s: float, max_queue: int, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[Ticket] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chameleon-generate")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="chameleon-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, row: Row, *, stream: bool = False) -> Ticket:
        """Queue a row (429 when the queue is full); with ``stream`` its text arrives piece by piece."""
        assert self._queue is not None and self._loop is not None, "batcher not started"
        if self._queue.qsize() >= self.max_queue:
            raise ApiError(
                429,
                f"the server is busy ({self.max_queue} requests waiting); retry shortly",
                code="queue_full",
            )
        ticket = Ticket(row)
        if stream:
            loop, events = self._loop, ticket.events

            def on_delta(text: str) -> None:
                loop.call_soon_threadsafe(events.put_nowait, ("delta", text))

            row.on_delta = on_delta
        self._queue.put_nowait(ticket)
        self.metrics.queue_depth.set(self._queue.qsize())
        return ticket

    async def _collect(self) -> list[Ticket]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self.metrics.queue_depth.set(self._queue.qsize())
        return [t for t in batch if not t.row.cancelled]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._generate, batch)
            except Exception as exc:  # a row's edit or the model failed: retry rows alone to isolate it
                log.warning(
                    "batch of %d failed (%s); retrying its rows one by one", len(batch), type(exc).__name__
                )
                for t in batch:
                    if t.row.tokens or len(batch) == 1:
                        t.events.put_nowait(("error", exc))
                        continue
                    try:
                        await loop.run_in_executor(self._executor, self._generate, [t])
                    except Exception as row_exc:
                        t.events.put_nowait(("error", row_exc))
                    else:
                        t.events.put_nowait(("done", None))
                continue
            self.metrics.batch_seconds.observe(time.perf_counter() - start)
            for t in batch:
                t.events.put_nowait(("done", None))

    def _generate(self, batch: Sequence[Ticket]) -> None:
        rows = [t.row for t in batch]
        self.metrics.batch_size.observe(len(rows))
        self.metrics.batch_personalized.observe(sum(r.edit is not None for r in rows))
        self.engine.run(rows)
        self.metrics.generated_tokens.inc(sum(len(r.tokens) for r in rows))
        self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in rows))
