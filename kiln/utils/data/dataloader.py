"""DataLoader: batches from a dataset, in this process or in worker processes, in a fixed order.

With `num_workers > 0` each worker process gets batch jobs on its own queue, round-robin, and
puts results on one shared queue; the main process hands batches out strictly in job order,
so the batches (and their order) are the same as with `num_workers=0`.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import kiln
from kiln.utils.data.collate import default_collate, default_convert
from kiln.utils.data.dataset import Dataset, IterableDataset
from kiln.utils.data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

# how often the main process checks that its workers are alive while it waits for a batch
_POLL_S = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    """What `get_worker_info()` returns inside a worker process."""

    id: int
    num_workers: int
    seed: int
    dataset: Any


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """This worker's id, the worker count, its seed and its dataset copy; None in the main
    process."""
    return _worker_info


class DataLoader:
    """Iterate over a dataset in batches (`torch.utils.data.DataLoader`).

    `pin_memory` is accepted for compatibility and has no effect (kiln copies to the GPU from
    ordinary host memory). Worker processes start with fork where the platform has it.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1,
                 shuffle: bool | None = None, sampler: Sampler | Iterable | None = None,
                 batch_sampler: Sampler | Iterable | None = None, num_workers: int = 0,
                 collate_fn: Callable[[list], Any] | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context=None, generator: kiln.Generator | None = None, *,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True):
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             "disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing."
                             " let num_workers > 0 to enable multiprocessing, otherwise set "
                             "prefetch_factor to None.")
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers > 0 \
            else prefetch_factor
        self.pin_memory, self.timeout = pin_memory, timeout
        self.worker_init_fn, self.generator = worker_init_fn, generator
        self.multiprocessing_context = multiprocessing_context
        self.persistent_workers = persistent_workers
        self._iterable = isinstance(dataset, IterableDataset)

        if self._iterable:
            if shuffle not in (None, False):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle "
                                 f"option, but got shuffle={shuffle}")
            if sampler is not None or batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 "and batch_sampler options")
        elif shuffle and sampler is not None:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually "
                             "exclusive with drop_last")
        if sampler is None and not self._iterable:
            sampler = RandomSampler(dataset, generator=generator) if shuffle \
                else SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None and not self._iterable:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.sampler, self.batch_sampler = sampler, batch_sampler
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None or (self._iterable and self.batch_size is not None)

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)     # TypeError if the stream has no length, as in PyTorch
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return len(self.batch_sampler if self.batch_sampler is not None else self.sampler)

    def __iter__(self) -> Iterator:
        # drawn in both modes, so a seeded generator gives the same order with or without workers
        base_seed = int(kiln.randint(0, 2 ** 31, (), generator=self.generator).item())
        jobs = self._jobs()
        if self.num_workers == 0:
            fetcher = _Fetcher(self.dataset, self._iterable, self._auto_collation,
                               self.collate_fn, self.batch_size, self.drop_last)
            return _single_process(fetcher, jobs)
        return _MultiProcessIter(self, jobs, base_seed)

    def _jobs(self) -> Iterator:
        """What each batch is made of: a list of indices, one index, or None (the next item
        of an iterable dataset)."""
        if self._iterable:
            while True:
                yield None
        yield from (self.batch_sampler if self.batch_sampler is not None else self.sampler)


class _StreamEnd:
    """Sent by a worker whose iterable dataset has run out."""


class _Fetcher:
    """Turns one job into one batch (runs in the main process or in a worker)."""

    def __init__(self, dataset, iterable, auto_collation, collate_fn, batch_size, drop_last):
        self.dataset, self.iterable, self.auto_collation = dataset, iterable, auto_collation
        self.collate_fn, self.batch_size, self.drop_last = collate_fn, batch_size, drop_last
        self.stream = iter(dataset) if iterable else None

    def fetch(self, job):
        if self.iterable:
            if not self.auto_collation:
                try:
                    return self.collate_fn(next(self.stream))
                except StopIteration:
                    return _StreamEnd()
            items = []
            for item in self.stream:
                items.append(item)
                if len(items) == self.batch_size:
                    break
            if not items or (self.drop_last and len(items) < self.batch_size):
                return _StreamEnd()
            return self.collate_fn(items)
        if self.auto_collation:
            return self.collate_fn([self.dataset[i] for i in job])
        return self.collate_fn(self.dataset[job])


def _single_process(fetcher: _Fetcher, jobs: Iterator) -> Iterator:
    for job in jobs:
        batch = fetcher.fetch(job)
        if isinstance(batch, _StreamEnd):
            return
        yield batch


class _WorkerError:
    """An exception raised in a worker, carried back to the main process as text."""

    def __init__(self, worker_id: int, exc: BaseException):
        self.type_name = type(exc).__name__
        self.exc_type = type(exc)
        self.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.worker_id = worker_id

    def reraise(self):
        message = f"Caught {self.type_name} in DataLoader worker process {self.worker_id}.\n" \
                  f"Original {self.text}"
        try:
            error = self.exc_type(message)
        except Exception:
            error = RuntimeError(message)
        raise error


def _worker_loop(worker_id, dataset, iterable, auto_collation, collate_fn, batch_size,
                 drop_last, jobs_q, results_q, seed, num_workers, init_fn):
    global _worker_info
    try:
        kiln.manual_seed(seed)
        random.seed(seed)
        _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset)
        if init_fn is not None:
            init_fn(worker_id)
        fetcher = _Fetcher(dataset, iterable, auto_collation, collate_fn, batch_size, drop_last)
    except Exception as e:
        fetcher, init_error = None, _WorkerError(worker_id, e)
    while True:
        try:
            task = jobs_q.get()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:                 # the main process is done with us
            return
        number, job = task
        if fetcher is None:
            result = init_error
        else:
            try:
                result = fetcher.fetch(job)
            except Exception as e:
                result = _WorkerError(worker_id, e)
        results_q.put((number, result))


class _MultiProcessIter:
    """Hands out the workers' batches in job order, keeping a few jobs in flight per worker."""

    def __init__(self, loader: DataLoader, jobs: Iterator, base_seed: int):
        ctx = loader.multiprocessing_context
        if ctx is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = "fork" if "fork" in methods and sys.platform != "darwin" else None
        if isinstance(ctx, str) or ctx is None:
            ctx = multiprocessing.get_context(ctx)
        self.jobs = jobs
        self.timeout = loader.timeout
        self.results_q = ctx.Queue()
        self.jobs_qs, self.workers = [], []
        n = loader.num_workers
        for wid in range(n):
            jobs_q = ctx.Queue()
            w = ctx.Process(target=_worker_loop, daemon=True, args=(
                wid, loader.dataset, loader._iterable, loader._auto_collation, loader.collate_fn,
                loader.batch_size, loader.drop_last, jobs_q, self.results_q, base_seed + wid, n,
                loader.worker_init_fn))
            w.start()
            self.jobs_qs.append(jobs_q)
            self.workers.append(w)
        self.active = [True] * n         # iterable datasets: workers whose stream has not ended
        self.next_worker = 0
        self.sent = 0                     # jobs numbered 0, 1, ... in the order they are sent
        self.next_out = 0                 # the job whose batch is handed out next
        self.owner: dict[int, int] = {}   # job number -> worker
        self.ready: dict[int, Any] = {}
        self.jobs_done = False
        self.closed = False
        for _ in range(loader.prefetch_factor * n):
            self._send()

    def _send(self) -> None:
        if self.jobs_done or not any(self.active):
            return
        try:
            job = next(self.jobs)
        except StopIteration:
            self.jobs_done = True
            return
        while not self.active[self.next_worker]:
            self.next_worker = (self.next_worker + 1) % len(self.workers)
        wid = self.next_worker
        self.next_worker = (wid + 1) % len(self.workers)
        self.jobs_qs[wid].put((self.sent, job))
        self.owner[self.sent] = wid
        self.sent += 1

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.next_out >= self.sent:
                self.close()
                raise StopIteration
            number = self.next_out
            while number not in self.ready:
                got, result = self._receive()
                self.ready[got] = result
            result = self.ready.pop(number)
            self.next_out += 1
            wid = self.owner.pop(number)
            if isinstance(result, _StreamEnd):
                # this worker's stream is over; the other workers may still have items
                self.active[wid] = False
                self._send()
                continue
            if isinstance(result, _WorkerError):
                self.close()
                result.reraise()
            self._send()
            return result

    def _receive(self):
        waited = 0.0
        while True:
            try:
                return self.results_q.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
            dead = [w for w in self.workers if not w.is_alive()]
            if dead:
                self.close()
                pids = ", ".join(str(w.pid) for w in dead)
                raise RuntimeError(f"DataLoader worker (pid(s) {pids}) exited unexpectedly")
            if self.timeout and waited >= self.timeout:
                self.close()
                raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds")

    def __len__(self):
        return self.sent

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for q, w in zip(self.jobs_qs, self.workers):
            if w.is_alive():
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass
        for w in self.workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
                w.join(timeout=1)
        for q in self.jobs_qs + [self.results_q]:
            q.cancel_join_thread()
            q.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
