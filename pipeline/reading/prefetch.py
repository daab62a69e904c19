"""Background prefetching of an iterator (double buffering): reading and converting the next batches
overlaps the model's step instead of running between steps.

The reader's work (Parquet decode, id mapping, KJT build) is numpy/Arrow code that mostly releases the GIL,
so one producer thread runs beside the training step; a bounded queue keeps at most ``depth`` items
ahead, so memory stays bounded. An exception in the producer is raised in the consumer, at the position
where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has gone


@dataclass
class _Raised:
    """An exception of the producer, carried to the consumer."""

    error: BaseException


_END = object()


def _put(q: queue.Queue[object], stop: threading.Event, item: object) -> bool:
    """Queue ``item`` unless the consumer closed; returns whether it was queued."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator[object], q: queue.Queue[object], stop: threading.Event) -> None:
    """The producer thread: every item of ``source``, then the end mark (or the exception raised)."""
    try:
        for item in source:
            if not _put(q, stop, item):
                return
    except BaseException as e:  # carried to the consumer, raised there
        _put(q, stop, _Raised(e))
        return
    _put(q, stop, _END)


class Prefetcher(Generic[T], Iterator[T]):
    """Iterates ``source`` in a background thread, ``depth`` items ahead.

    Args:
        source: any iterable (e.g. ``ParquetBatchReader.batches(...)``); iterated in the producer thread only.
        depth: items held ready (2 = double buffering).

    Use it as a context manager (or call :meth:`close`) when the consumer may stop early: the producer then
    stops at its next item and the thread ends.

    Example::

        with Prefetcher(reader.batches(epoch=0, num_batches=steps)) as batches:
            for batch in batches:
                ...
    """

    def __init__(self, source: Iterable[T], depth: int = 2) -> None:
        self._stop = threading.Event()  # first: __del__ runs even when __init__ raises
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._done = False
        # The thread holds the queue and the flag, not this object: a prefetcher dropped without close()
        # (an exception in the consumer) is collected, and its __del__ stops the thread.
        self._thread = threading.Thread(
            target=_produce, args=(iter(source), self._queue, self._stop), daemon=True
        )
        self._thread.start()

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            self._thread.join()
            raise item.error
        return item  # type: ignore[return-value]

    def __iter__(self) -> Prefetcher[T]:
        return self

    def close(self) -> None:
        """Stop the producer (items it holds are dropped) and wait for its thread."""
        self._done = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
