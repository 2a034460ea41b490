"""The edge's threads: a sample's edge work runs beside the server's passes, not before them.

The edge's work (reading and decoding a document's images, framing, encoding, counting bytes,
the original's size for ``bytes_original``) is CPU work in PIL, whose decoders, resamplers and
encoders release the GIL; the server's passes run on the caller's thread. ``EdgePool`` runs
edge tasks on a few threads, most urgent first:

- ``CROP``: a retransmitted sample's crop(s), which the current batch's stage 2 waits for;
- ``GLOBAL``: the next batch's documents and global images, which its stage 1 will wait for;
- ``ORIGINAL``: the original's encoded size, which only the record needs (never the server).

A task that no thread has started when someone waits for it runs on the waiting thread, so a
caller never idles while its work sits in the queue, and ``EdgePool(0)`` runs every task on the
thread that waits for it (the edge's work in line, as before the pool). An exception raised by a
task is raised again to whoever waits for it.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

CROP, GLOBAL, ORIGINAL = 0, 1, 2  # priorities: lower runs first
_STOP = float("inf")


def default_workers(model_threads: int) -> int:
    """The CPUs this process may use less the model's own torch threads (``model_threads``; 0:
    torch's default, one per CPU), at least 1 and at most 4: a few threads keep up with a GPU's
    passes; more would take the cores the model's threads run on (on 2 CPUs with 1 model thread,
    2 edge threads slowed the model's passes by 38% and the main job ran 1.50x llava_hf)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus - (model_threads or cpus)))


class Task:
    """One piece of edge work: run once, by a pool thread or by the first thread that waits for it."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._claimed = threading.Lock()
        self._finished = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        """Run the task here unless some thread already took it."""
        if not self._claimed.acquire(blocking=False):
            return
        try:
            self._value = self._fn(*self._args, **self._kwargs)
        except BaseException as err:  # noqa: BLE001  -- raised again to whoever waits
            self._error = err
        finally:
            self._fn = self._args = self._kwargs = None  # the task's images are freed once it is done
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self) -> Any:
        """The task's value (its exception raised); run here if no thread has started it."""
        self.run()
        self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._value


class EdgePool:
    """``workers`` threads taking tasks by priority, then in submission order; 0: none (every
    task runs when waited for). Use it as a context manager, or ``close()`` it."""

    def __init__(self, workers: int):
        if workers < 0:
            raise ValueError(f"edge_workers must be an integer >= 0, got {workers}")
        self.workers = workers
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads = [threading.Thread(target=self._work, name=f"collab-edge-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def inline(self) -> bool:
        """No threads: a task runs only when waited for."""
        return not self._threads

    def submit(self, priority: int, fn: Callable, *args, **kwargs) -> Task:
        task = Task(fn, args, kwargs)
        if self._threads:
            self._queue.put((priority, next(self._order), task))
        return task

    def _work(self) -> None:
        while True:
            priority, _, task = self._queue.get()
            if priority == _STOP:
                return
            task.run()

    def close(self) -> None:
        """Stop the threads once they finish what they run now; tasks still queued are dropped
        (whoever waits for one runs it)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put((_STOP, next(self._order), None))
        for thread in self._threads:
            thread.join()
        self._threads = []

    def __enter__(self) -> "EdgePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
