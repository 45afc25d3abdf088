"""Durable futures and per-model, seq_id-ordered execution.

Every long-running request becomes a future *row* in the catalog before its POST answers, so a
poll reaching another replica, or arriving after a restart, still finds it. ``(model_id,
seq_id)`` is unique in the catalog: a retried request (the SDK resends the same seq_id with a new
idempotency key) gets the same ``request_id`` and is not run twice.

Ordering: the SDK submits a model's requests without waiting for results, and sends the chunks
of one forward/backward concurrently with the *first chunk last*. So each model has one queue
that runs work strictly in ``seq_id`` order, one item at a time. A gap (a seq_id that never
arrives, e.g. because the client failed while building it) waits ``gap_timeout`` seconds; then
the requests queued behind it fail with a message saying which seq_id was missing, and the queue
moves on, so a lost chunk cannot hang a model forever.

Waiting: ``wait`` is what ``retrieve_future`` long-polls on. It sleeps on an in-process event
set when this process finishes the future, and re-reads the catalog every ``recheck`` seconds so
a future finished by another replica is seen too.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel

from tinkerstore.errors import FutureNotFound, TinkerstoreError
from tinkerstore.store.catalog.base import Catalog, FutureRecord, FutureState

__all__ = ["FutureEngine", "FutureResult", "FutureWork", "failure_body"]

log = logging.getLogger("tinkerstore.server.futures")

# The work behind a future: sync (run in a worker thread) or async; returns a FutureResult, a
# pydantic model or a JSON-able dict. Raising fails the future.
FutureWork = Callable[[], Any]


@dataclass(frozen=True)
class FutureResult:
    """A finished future's body exactly as retrieve_future sends it."""

    body: bytes
    content_type: str = "application/json"

    @classmethod
    def of(cls, value: Any) -> FutureResult:
        if isinstance(value, FutureResult):
            return value
        if isinstance(value, BaseModel):
            return cls(value.model_dump_json().encode())
        return cls(json.dumps(value).encode())


def failure_body(message: str, category: str) -> bytes:
    """The RequestFailedResponse the SDK turns into ``RequestFailedError``."""
    return json.dumps({"error": message, "category": category}).encode()


@dataclass
class _ModelQueue:
    next_seq: int = 1
    pending: dict[int, tuple[str, FutureWork]] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None


class FutureEngine:
    def __init__(
        self,
        catalog: Catalog,
        *,
        gap_timeout: float = 120.0,
        recheck: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._catalog = catalog
        self._gap_timeout = gap_timeout
        self._recheck = recheck
        self._now = clock
        self._models: dict[str, _ModelQueue] = {}
        self._waiters: dict[str, tuple[asyncio.Event, int]] = {}
        self._loose: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- submitting --------------------------------------------------------------------------
    def register_model(self, model_id: str, next_seq: int = 1) -> None:
        """Tell the engine which seq_id a (new or reloaded) model's next request carries."""
        queue = self._models.setdefault(model_id, _ModelQueue())
        queue.next_seq = next_seq

    async def submit(
        self,
        owner_id: str,
        model_id: str | None,
        seq_id: int | None,
        request_type: str,
        fn: FutureWork,
    ) -> FutureRecord:
        """Record a future and schedule ``fn``; a duplicate ``(model_id, seq_id)`` returns the
        existing future and does not run ``fn`` again."""
        record, created = await anyio.to_thread.run_sync(
            self._catalog.create_future,
            FutureRecord(
                request_id=f"req-{uuid.uuid4().hex}",
                owner_id=owner_id,
                model_id=model_id,
                seq_id=seq_id,
                request_type=request_type,
                state=FutureState.PENDING,
                created_at=self._now(),
            ),
        )
        if not created:
            return record
        if model_id is None or seq_id is None:
            self._spawn(self._run(record.request_id, fn))
            return record
        queue = self._models.setdefault(model_id, _ModelQueue())
        if seq_id < queue.next_seq:
            await self._finish_failed(
                record.request_id,
                f"request seq_id={seq_id} for model {model_id!r} arrived after seq_id "
                f"{queue.next_seq - 1} had already run, so it cannot run in order",
                "user",
            )
            return record
        queue.pending[seq_id] = (record.request_id, fn)
        queue.wakeup.set()
        if queue.worker is None or queue.worker.done():
            queue.worker = asyncio.create_task(self._drain(model_id, queue))
        return record

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._loose.add(task)
        task.add_done_callback(self._loose.discard)

    async def _drain(self, model_id: str, queue: _ModelQueue) -> None:
        """Run the model's queued work in seq_id order; exit when the queue is empty."""
        gap_since = time.monotonic()
        while queue.pending:
            item = queue.pending.pop(queue.next_seq, None)
            if item is not None:
                queue.next_seq += 1
                await self._run(*item)
                gap_since = time.monotonic()
                continue
            remaining = self._gap_timeout - (time.monotonic() - gap_since)
            if remaining > 0:
                queue.wakeup.clear()
                try:
                    await asyncio.wait_for(queue.wakeup.wait(), remaining)
                except TimeoutError:
                    pass
                continue
            missing, stuck = queue.next_seq, sorted(queue.pending.items())
            queue.pending.clear()
            queue.next_seq = stuck[-1][0] + 1
            for seq, (request_id, _) in stuck:
                message = (
                    f"request seq_id={seq} for model {model_id!r} was not run: seq_id={missing} "
                    f"never arrived within {self._gap_timeout:g} s, and a model's requests run "
                    "in seq_id order. Retry the operation."
                )
                await self._finish_failed(request_id, message, "user")
            gap_since = time.monotonic()

    async def _run(self, request_id: str, fn: FutureWork) -> None:
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn()
            else:
                value = await anyio.to_thread.run_sync(fn)
            result = FutureResult.of(value)
            state = FutureState.DONE
        except TinkerstoreError as exc:
            result = FutureResult(failure_body(str(exc), exc.category))
            state = FutureState.FAILED
        except Exception as exc:  # the work's bug must not kill the model's queue
            log.exception("future %s crashed", request_id)
            message = f"internal error: {type(exc).__name__}: {exc}"
            result = FutureResult(failure_body(message, "server"))
            state = FutureState.FAILED
        await self._finish(request_id, state, result)

    async def _finish_failed(self, request_id: str, message: str, category: str) -> None:
        await self._finish(
            request_id, FutureState.FAILED, FutureResult(failure_body(message, category))
        )

    async def _finish(self, request_id: str, state: FutureState, result: FutureResult) -> None:
        await anyio.to_thread.run_sync(
            self._catalog.finish_future,
            request_id,
            state,
            result.body,
            result.content_type,
            self._now(),
        )
        waiter = self._waiters.get(request_id)
        if waiter is not None:
            waiter[0].set()

    # -- waiting -----------------------------------------------------------------------------
    async def wait(self, request_id: str, owner_id: str, timeout: float) -> FutureRecord:
        """The future once finished, or still pending after ``timeout`` seconds. Another
        user's future reads as missing (``FutureNotFound``)."""
        deadline = time.monotonic() + timeout
        event, count = self._waiters.get(request_id, (asyncio.Event(), 0))
        self._waiters[request_id] = (event, count + 1)
        try:
            while True:
                record = await anyio.to_thread.run_sync(self._catalog.get_future, request_id)
                if record is None or record.owner_id != owner_id:
                    raise FutureNotFound(
                        f"future {request_id!r} not found",
                        hint="request ids come from the POST that started the operation",
                    )
                remaining = deadline - time.monotonic()
                if record.state != FutureState.PENDING or remaining <= 0:
                    return record
                try:
                    await asyncio.wait_for(event.wait(), min(self._recheck, remaining))
                except TimeoutError:
                    pass
        finally:
            event, count = self._waiters[request_id]
            if count <= 1:
                del self._waiters[request_id]
            else:
                self._waiters[request_id] = (event, count - 1)

    # -- lifecycle ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the workers; queued (not yet started) work fails as a server error, so no poll
        waits on it forever."""
        if self._closed:
            return
        self._closed = True
        tasks = [q.worker for q in self._models.values() if q.worker] + list(self._loose)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue in self._models.values():
            for request_id, _ in queue.pending.values():
                await self._finish_failed(
                    request_id, "the server shut down before this request ran; retry it", "server"
                )
            queue.pending.clear()
