"""Dynamic, fair batching of concurrent requests and the request ledger (asyncio, one worker).

`DynamicBatcher`: the oldest waiting job always opens the next batch (FIFO: no job waits behind a
younger one, so none starves); the batch is filled, in arrival order, with waiting jobs of the same
`Job.key`, up to ``max_batch`` images, waiting at most ``max_wait_s`` after the oldest job for more to
arrive. The batch runs in a worker thread (``run_batch(jobs) -> results``), the event loop stays free.

`Ledger`: every accepted request is entered once and finished exactly once (``completed`` or
``error``); a second finish is counted as a duplicate (and ignored), so tests and the benchmark can
assert ``lost == duplicated == 0``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any, Callable

__all__ = ["Ledger", "DynamicBatcher"]

logger = logging.getLogger(__name__)


class Ledger:
    """Outcome of every accepted request, by the server's sequence number (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[int, str] = {}
        self._reason: dict[int, str] = {}
        self.duplicated = 0
        self.rejected = 0
        self._next = 0

    def accept(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
            self._state[seq] = "pending"
            return seq

    def reject(self) -> None:
        with self._lock:
            self.rejected += 1

    def finish(self, seq: int, outcome: str, reason: str = "") -> bool:
        """Mark ``seq`` ``"completed"`` or ``"error"``; False (and counted) if it had already ended."""
        if outcome not in ("completed", "error"):
            raise ValueError(f"outcome: expected 'completed' or 'error', got {outcome!r}")
        with self._lock:
            if seq not in self._state:
                raise KeyError(f"seq: request {seq} was never accepted")
            if self._state[seq] != "pending":
                self.duplicated += 1
                logger.error("ledger: request %d ended twice (%s, then %s)", seq, self._state[seq], outcome)
                return False
            self._state[seq] = outcome
            self._reason[seq] = reason
            return True

    def state(self, seq: int) -> str:
        with self._lock:
            return self._state[seq]

    def stats(self) -> dict[str, int]:
        with self._lock:
            states = list(self._state.values())
            return {"accepted": len(states), "completed": states.count("completed"), "errors": states.count("error"),
                    "pending": states.count("pending"), "duplicated": self.duplicated, "rejected": self.rejected}

    def errors(self) -> dict[int, str]:
        with self._lock:
            return {s: self._reason[s] for s, st in self._state.items() if st == "error"}


class _Entry:
    __slots__ = ("job", "future")

    def __init__(self, job, future):
        self.job, self.future = job, future


class DynamicBatcher:
    """Collects jobs into batches (see the module docstring) and runs them with ``run_batch``.

    Args:
        run_batch: ``(jobs) -> results`` (one result per job: a value or an Exception), run in a thread.
        max_batch: most images in one batch (>= 1).
        max_wait_s: longest wait after the oldest job for more jobs to join its batch (>= 0).
    """

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch: int = 8, max_wait_s: float = 0.01):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
        if not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s <= 60:
            raise ValueError(f"max_wait_s: expected seconds in [0, 60], got {max_wait_s!r}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)
        self._pending: deque[_Entry] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(RuntimeError("server: shutting down"))
        self._pending.clear()

    def submit(self, job) -> asyncio.Future:
        """Queue ``job``; the future resolves to its result (cancel it to withdraw the job)."""
        if self._arrived is None:
            raise RuntimeError("batcher: not started")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(job, future))
        self._arrived.set()
        return future

    @property
    def waiting(self) -> int:
        return sum(1 for e in self._pending if not e.future.done())

    def _take(self) -> list[_Entry]:
        """The batch the oldest live job opens (FIFO among jobs of its key), up to max_batch images."""
        while self._pending and self._pending[0].future.done():  # withdrawn
            self._pending.popleft()
        if not self._pending:
            return []
        key = self._pending[0].job.key
        batch, rows = [], 0
        for entry in self._pending:
            if entry.future.done() or entry.job.key != key:
                continue
            if rows + entry.job.rows > self.max_batch and batch:
                break
            batch.append(entry)
            rows += entry.job.rows
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._take()
            if not batch:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = loop.time() + self.max_wait_s
            while sum(e.job.rows for e in batch) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    pass
                batch = self._take()
                if not batch:
                    break
            batch = [e for e in batch if not e.future.done()]
            if not batch:
                continue
            for e in batch:
                self._pending.remove(e)
            self.batch_sizes.append(sum(e.job.rows for e in batch))
            try:
                results = await asyncio.to_thread(self.run_batch, [e.job for e in batch])
            except Exception as exc:  # run_batch itself failed: every job gets the error
                results = [exc] * len(batch)
            for e, result in zip(batch, results):
                if e.future.done():
                    continue
                if isinstance(result, BaseException):
                    e.future.set_exception(result)
                else:
                    e.future.set_result(result)
