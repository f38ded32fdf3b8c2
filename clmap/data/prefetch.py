"""A background thread that prepares the next training steps' batches while the device computes.

The training thread only waits here when data is the bottleneck, and that wait is what the trainer
reports as its data-time share. The producer runs ahead by at most ``depth`` items; whatever it has
drawn but the trainer has not taken is simply dropped at the end (the trainer counts consumed rows,
so a checkpoint never skips the rows that were prepared but not trained on).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """``next(prefetcher)`` returns ``make()``'s items in order, produced ``depth`` ahead on a daemon thread.

    An exception in ``make`` (including ``StopIteration``) is raised by the ``next`` call that would
    have returned that item.
    """

    def __init__(self, make: Callable[[], T], depth: int = 2, name: str = "clmap-prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be ≥ 1, got {depth}")
        self._make = make
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = self._make()
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
                item = _Failure(error)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise RuntimeError("the prefetcher was closed")
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer (it finishes the item it is making) and drop what it prepared."""
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
