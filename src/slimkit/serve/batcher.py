"""Dynamic batching: concurrent requests merged into one model call.

Every model call has a fixed cost (a thread handoff, the runtime's dispatch), and many models
run 32 rows faster per row than one (the digits CNN in int8 on ONNX Runtime: 2x; in fp32 hardly
at all), so a server that runs each request alone wastes the machine under load. Requests wait
in a bounded queue; one worker takes the oldest with what queued beside it and runs up to
`max_batch` rows in a thread (the event loop keeps accepting and refusing requests meanwhile).
Requests that arrive while a batch runs form the next one, so under load batches grow by
themselves. Waiting for more is optional (`max_delay`, default none): on the digits CNN (Zen 4,
2 cores) a 5 ms wait cut one client's throughput to a seventh and eight clients' to a half,
since closed-loop clients send nothing while they wait for their answers; at 32 clients it
helped int8 (+35 %) and hurt fp32 (-23 %). A positive delay is only spent after a batch that
merged requests, so a lone client is never kept waiting for company that is not coming.

Text requests are padded to the longest member of their batch. On a CPU a short text costs
little more alone than in a batch, so padding it to a long neighbour's length loses more than
batching gains (MiniLM at 32 concurrent paragraphs of 20 to 420 tokens: half the unbatched
throughput). A text batch therefore takes the queued texts closest in length to the oldest one,
as long as padding stays under a fifth of its tokens, and within a token budget.

Only requests whose rows have the same shape (or, for text, the same inputs) are merged; the
rest wait for a batch of their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from slimkit.serve.errors import InferenceFailed, Overloaded
from slimkit.serve.metrics import Metrics

TEXT = "text"  # the merge key of tokenised requests: padded, not required to match in width
PAD_SHARE = 0.2  # most of a text batch's tokens that may be padding


@dataclass
class BatchOptions:
    max_batch: int = 32
    max_delay: float = 0.0  # seconds to wait for more once batches merge
    max_queue: int = 256  # requests waiting, not counting the batch running
    max_tokens: int = 8192  # rows x padded width of a text batch


@dataclass(eq=False)  # identity: the queue removes jobs by `is`, never by comparing arrays
class Job:
    feeds: dict[str, np.ndarray]
    rows: int
    key: Hashable
    future: asyncio.Future[list[np.ndarray]]
    queued: float = field(default_factory=time.perf_counter)

    @property
    def width(self) -> int:
        return max((a.shape[1] for a in self.feeds.values() if a.ndim > 1), default=0)


class Batcher:
    """The queue and its one worker. `run` is the session's `run`; `pads` gives the value
    each text input is padded with (token id of padding, 0 for masks)."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                 options: BatchOptions, metrics: Metrics,
                 pads: dict[str, int] | None = None) -> None:
        self._run, self.options, self.metrics = run, options, metrics
        self.pads = pads or {}
        self._pending: collections.deque[Job] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._merged = False  # whether the last batch held more than one request
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slimkit-infer")
        self._worker: asyncio.Task[None] | None = None
        self.admitted = 0  # requests accepted into the queue
        self.answered = 0  # of those, answered (result or error)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        """Refuse new requests, answer every queued one, then stop."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._pool.shutdown(wait=True)

    async def submit(self, feeds: dict[str, np.ndarray], rows: int, key: Hashable
                     ) -> list[np.ndarray]:
        """The outputs for this request's rows; Overloaded at once when the queue is full."""
        if self._closing:
            raise Overloaded("the server is stopping")
        if len(self._pending) >= self.options.max_queue:
            raise Overloaded(f"the queue is full ({self.options.max_queue} requests waiting)")
        job = Job(feeds, rows, key, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self.admitted += 1
        self._arrived.set()
        return await job.future

    def _select(self) -> tuple[list[Job], bool]:
        """The oldest job and the queued ones that fit with it; and whether the batch is full
        (a compatible job had to be left out for size), so waiting longer would not grow it."""
        o = self.options
        first = self._pending[0]
        text = first.key == TEXT
        others = [j for j in list(self._pending)[1:] if j.key == first.key]
        if text:  # nearest in length first; sorted() keeps age order among equals
            others = sorted(others, key=lambda j: abs(j.width - first.width))
        chosen, rows, width, full = [first], first.rows, first.width, False
        tokens = first.rows * first.width  # the texts' own tokens, each request padded alone
        for job in others:
            w = max(width, job.width) if text else width
            if rows + job.rows > o.max_batch or (text and (rows + job.rows) * w > o.max_tokens):
                full = True
                continue
            if text and (rows + job.rows) * w * (1 - PAD_SHARE) > tokens + job.rows * job.width:
                continue
            chosen.append(job)
            rows, width, tokens = rows + job.rows, w, tokens + job.rows * job.width
        return chosen, full or rows >= o.max_batch

    async def _work(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            wait = self.options.max_delay if self._merged else 0.0
            deadline = self._pending[0].queued + wait
            while True:
                batch, full = self._select()
                left = deadline - time.perf_counter()
                if full or left <= 0 or self._closing:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            for job in batch:
                self._pending.remove(job)
            self._merged = len(batch) > 1
            try:
                await self._answer(batch)
            except Exception as e:  # a bug here must not leave the batch's clients waiting
                for job in batch:
                    if not job.future.done():
                        self._settle(job, exc=InferenceFailed(f"internal error: {_line(e)}"))

    async def _answer(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            feeds = merge(batch, self.pads)
            outs = await loop.run_in_executor(self._pool, self._run, feeds)
        except Exception as e:
            if len(batch) > 1:  # let the request that broke it fail alone
                for job in batch:
                    await self._answer([job])
                return
            self._settle(batch[0], exc=InferenceFailed(f"the runtime failed: {_line(e)}"))
            return
        took = time.perf_counter() - start
        rows = sum(j.rows for j in batch)
        self.metrics.observe_batch(rows, [start - j.queued for j in batch], took)
        at = 0
        for job in batch:
            self._settle(job, [o[at:at + job.rows] if o.ndim and len(o) == rows else o
                               for o in outs])
            at += job.rows

    def _settle(self, job: Job, result: list[np.ndarray] | None = None,
                exc: Exception | None = None) -> None:
        self.answered += 1
        if job.future.done():  # the client went away
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result or [])


def merge(batch: list[Job], pads: dict[str, int]) -> dict[str, np.ndarray]:
    """One feed per input: rows stacked; text inputs first padded on the right to the
    batch's longest member."""
    if len(batch) == 1 and batch[0].key != TEXT:
        return batch[0].feeds
    names = list(batch[0].feeds)
    if batch[0].key != TEXT:
        return {n: np.concatenate([j.feeds[n] for j in batch]) for n in names}
    width = max(j.width for j in batch)
    out = {}
    for n in names:
        parts = [np.pad(j.feeds[n], ((0, 0), (0, width - j.feeds[n].shape[1])),
                        constant_values=pads.get(n, 0)) for j in batch]
        out[n] = np.concatenate(parts)
    return out


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]
