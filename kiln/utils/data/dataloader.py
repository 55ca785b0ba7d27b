"""DataLoader: batches from a dataset, in this process or in worker processes, in a fixed order.

With `num_workers > 0` each worker process gets batch jobs on its own queue, round-robin, and
puts results on one shared queue; the main process hands batches out strictly in job order,
so the batches (and their order) are the same as with `num_workers=0`. Each worker sends its
batches back on a pipe of its own, which the main process reads without blocking: a worker that
dies (even in the middle of a batch) or a batch that cannot be pickled ends in an error naming
the worker, never in a hang, and workers end when the main process does.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import queue
import random
import select
import selectors
import signal
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Iterable, Iterator

import kiln
from kiln.utils.data.collate import default_collate, default_convert
from kiln.utils.data.dataset import Dataset, IterableDataset
from kiln.utils.data.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

# how often the main process wakes while it waits for a batch (a worker's death wakes it at once)
_POLL_S = 0.5
# how often a waiting worker checks that the main process is still there and still wants batches
_WORKER_POLL_S = 0.1
# how long closing waits for a worker to end by itself, then after terminating it
_JOIN_S = 1.0


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
        base_seed = int(kiln.empty((), dtype=kiln.int64).random_(generator=self.generator)
                        .item())            # as PyTorch's iterator draws it (one 64-bit word)
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
    """An exception raised in a worker, carried back to the main process as text (the exception
    itself may not pickle: a class defined inside a function, an attribute holding a lambda)."""

    def __init__(self, worker_id: int, exc: BaseException):
        self.type_name = type(exc).__name__
        self.text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.worker_id = worker_id
        try:       # re-raised as its own type where the main process can rebuild that type
            self.exc_type = type(exc) if pickle.loads(pickle.dumps(type(exc))) is type(exc) \
                else None
        except Exception:
            self.exc_type = None

    def reraise(self):
        message = f"Caught {self.type_name} in DataLoader worker process {self.worker_id}.\n" \
                  f"Original {self.text}"
        if self.exc_type is None:
            message += f"({self.type_name} cannot be pickled, so it is raised here as " \
                       f"RuntimeError.)"
        try:
            error = self.exc_type(message) if self.exc_type is not None else None
        except Exception:
            error = None
        raise error if isinstance(error, BaseException) else RuntimeError(message)


class _SendError:
    """A batch a worker could not pickle, described in a message for the main process."""

    def __init__(self, worker_id: int, batch: Any, exc: BaseException):
        path, culprit = _find_unpicklable(batch, "batch")
        name = getattr(culprit, "__qualname__", None)
        what = type(culprit).__name__ + (f" ({name})" if isinstance(name, str) else "")
        self.message = (
            f"DataLoader worker {worker_id} (pid {os.getpid()}) could not send its batch to the "
            f"main process: {path} is a {what}, which cannot be pickled "
            f"({type(exc).__name__}: {exc}). A batch leaves a worker pickled, so the dataset and "
            f"collate_fn must return picklable values (tensors, arrays, numbers, strings and "
            f"containers of them); or use num_workers=0.")

    def reraise(self):
        raise RuntimeError(self.message)


def _find_unpicklable(obj: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """The innermost part of `obj` that fails to pickle, and where it sits (for the message)."""
    if depth < 8:
        if isinstance(obj, dict):
            parts = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple)):
            parts = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            parts = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        else:
            parts = []
        for where, part in parts:
            try:
                ForkingPickler.dumps(part)
            except Exception:
                return _find_unpicklable(part, where, depth + 1)
    return path, obj


# A batch travels from a worker as one frame on the worker's own pipe: an 8-byte little-endian
# length, then the pickled (job number, batch). A pipe per worker, unlike one shared queue, has
# no lock a killed worker can leave held, and the main process reads it without blocking, so a
# frame cut short by a dying worker is seen as incomplete rather than waited on forever.
_HEADER = struct.Struct("<Q")


class _Stopped(Exception):
    """The main process is gone or has closed the iterator: the worker ends."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent thread exits (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                    # no prctl here: the worker loop's parent check still applies


def _send_frame(fd: int, payload: bytes, should_stop: Callable[[], bool]) -> None:
    """Write one frame to the worker's non-blocking pipe, giving up if the main process goes."""
    for part in (_HEADER.pack(len(payload)), payload):
        view = memoryview(part)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [], _WORKER_POLL_S)
                if should_stop():
                    raise _Stopped from None
            except OSError:                       # BrokenPipeError: the main process is gone
                raise _Stopped from None


def _worker_loop(worker_id, dataset, iterable, auto_collation, collate_fn, batch_size,
                 drop_last, jobs_q, result_conn, stop_flag, seed, num_workers, init_fn,
                 main_pid):
    global _worker_info
    if main_pid is not None:
        _die_with_parent()
        if os.getppid() != main_pid:       # the main process died before prctl took effect
            return
    parent = os.getppid()
    # under forkserver the parent is the server, which can outlive the main process: the main
    # process's own sentinel tells (and under spawn too; under fork the parent pid does)
    main = multiprocessing.parent_process()

    def should_stop() -> bool:
        # a changed parent pid means ours died and we were adopted
        return bool(stop_flag.value) or os.getppid() != parent or \
            (main is not None and not main.is_alive())

    fd = result_conn.fileno()
    os.set_blocking(fd, False)
    try:
        kiln.manual_seed(seed)
        random.seed(seed)
        _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset)
        if init_fn is not None:
            init_fn(worker_id)
        fetcher = _Fetcher(dataset, iterable, auto_collation, collate_fn, batch_size, drop_last)
    except Exception as e:
        fetcher, init_error = None, _WorkerError(worker_id, e)
    try:
        while not should_stop():
            try:
                task = jobs_q.get(timeout=_WORKER_POLL_S)
            except queue.Empty:
                continue
            except (EOFError, OSError):
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
            try:
                payload = ForkingPickler.dumps((number, result))
            except Exception as e:
                if isinstance(result, _WorkerError):     # plain text by now; kept for safety
                    error = _WorkerError(worker_id, RuntimeError(result.text))
                    payload = ForkingPickler.dumps((number, error))
                else:
                    payload = ForkingPickler.dumps((number, _SendError(worker_id, result, e)))
            _send_frame(fd, payload, should_stop)
    except (_Stopped, KeyboardInterrupt):    # on Ctrl-C the main process raises; we just end
        return


class _ResultPipe:
    """The main process's end of one worker's pipe: reads whatever has arrived, without
    blocking, and assembles frames."""

    def __init__(self, conn):
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self.header = bytearray()
        self.body: bytearray | None = None
        self.filled = 0

    def read(self) -> list[bytes]:
        """The frames completed by the bytes available now."""
        frames = []
        while True:
            try:
                if self.body is None:
                    chunk = os.read(self.fd, _HEADER.size - len(self.header))
                    if not chunk:
                        return frames
                    self.header += chunk
                    if len(self.header) == _HEADER.size:
                        self.body = bytearray(_HEADER.unpack(self.header)[0])
                        self.filled = 0
                    continue
                n = os.readv(self.fd, [memoryview(self.body)[self.filled:]]) \
                    if self.filled < len(self.body) else 0
                if self.filled < len(self.body) and n == 0:
                    return frames             # end of file: the worker is gone
                self.filled += n
                if self.filled == len(self.body):
                    frames.append(self.body)
                    self.header, self.body = bytearray(), None
            except BlockingIOError:
                return frames

    def partial(self) -> str:
        """What is known of a frame cut short, for the error message."""
        if self.body is not None:
            return f" while sending a batch ({self.filled} of {len(self.body)} bytes arrived)"
        if self.header:
            return " while sending a batch"
        return ""


class _MultiProcessIter:
    """Hands out the workers' batches in job order, keeping a few jobs in flight per worker."""

    def __init__(self, loader: DataLoader, jobs: Iterator, base_seed: int):
        ctx = loader.multiprocessing_context
        if ctx is None:
            methods = multiprocessing.get_all_start_methods()
            ctx = "fork" if "fork" in methods and sys.platform != "darwin" else None
        if isinstance(ctx, str) or ctx is None:
            ctx = multiprocessing.get_context(ctx)
        self.closed = True                # until every resource below exists
        self.jobs = jobs
        self.timeout = loader.timeout
        self.stop_flag = ctx.RawValue("b", 0)
        # PR_SET_PDEATHSIG fires when the thread that started the worker exits, so it is only
        # asked for when that thread is the main one (an iterator made in a short-lived thread
        # would lose its workers); workers also check their parent pid at every poll
        main_pid = os.getpid() if sys.platform.startswith("linux") and \
            ctx.get_start_method() in ("fork", "spawn") and \
            threading.current_thread() is threading.main_thread() else None
        self.selector = selectors.DefaultSelector()
        self.jobs_qs, self.workers, self.pipes = [], [], []
        n = loader.num_workers
        try:
            for wid in range(n):
                jobs_q = ctx.Queue()
                reader, writer = ctx.Pipe(duplex=False)
                w = ctx.Process(target=_worker_loop, daemon=True, args=(
                    wid, loader.dataset, loader._iterable, loader._auto_collation,
                    loader.collate_fn, loader.batch_size, loader.drop_last, jobs_q, writer,
                    self.stop_flag, base_seed + wid, n, loader.worker_init_fn, main_pid))
                self.jobs_qs.append(jobs_q)
                self.pipes.append(_ResultPipe(reader))
                w.start()
                writer.close()            # the worker has its own copy; later workers need none
                self.workers.append(w)
                self.selector.register(self.pipes[wid].fd, selectors.EVENT_READ, wid)
                # readable when the worker exits, so a death is seen at once
                self.selector.register(w.sentinel, selectors.EVENT_READ, None)
        finally:
            self.closed = False
            if len(self.workers) < n:
                self.close()
        self.active = [True] * n         # iterable datasets: workers whose stream has not ended
        self.next_worker = 0
        self.sent = 0                     # jobs numbered 0, 1, ... in the order they are sent
        self.next_out = 0                 # the job whose batch is handed out next
        self.owner: dict[int, int] = {}   # job number -> worker
        self.ready: dict[int, Any] = {}
        self.jobs_done = False
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
            if self.next_out >= self.sent or self.closed:
                self.close()
                raise StopIteration
            number = self.next_out
            if number not in self.ready:
                self._receive(number)
            result = self.ready.pop(number)
            self.next_out += 1
            wid = self.owner.pop(number)
            if isinstance(result, _StreamEnd):
                # this worker's stream is over; the other workers may still have items
                self.active[wid] = False
                self._send()
                continue
            if isinstance(result, (_WorkerError, _SendError)):
                self.close()
                result.reraise()
            self._send()
            return result

    def _receive(self, number: int) -> None:
        """Read the workers' pipes until job `number`'s batch is in; raise if a worker died or
        `timeout` seconds pass first."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while number not in self.ready:
            wait = _POLL_S if deadline is None else \
                max(0.0, min(_POLL_S, deadline - time.monotonic()))
            for key, _ in self.selector.select(wait):
                if key.data is not None:
                    self._read(key.data)
            if number in self.ready:
                return
            for wid, w in enumerate(self.workers):
                if w.exitcode is not None:
                    self._read(wid)         # whatever it completed before dying
                    if number in self.ready:
                        return
                    self._worker_died(wid)
            if deadline is not None and time.monotonic() >= deadline:
                self.close()
                raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds waiting "
                                   f"for batch {number} from worker {self.owner[number]}")

    def _read(self, wid: int) -> None:
        for frame in self.pipes[wid].read():
            try:
                got, result = pickle.loads(frame)
            except Exception as e:
                if isinstance(e, (OSError, EOFError)):
                    # a tensor travels as shared memory, fetched from the worker while
                    # unpickling: a worker killed meanwhile cannot hand it over
                    self.workers[wid].join(timeout=1.0)
                    if self.workers[wid].exitcode is not None:
                        self._worker_died(wid, " while sending a batch (its tensors' shared "
                                               "memory could not be fetched)")
                pid = self.workers[wid].pid
                self.close()
                raise RuntimeError(
                    f"DataLoader worker {wid} (pid {pid}) sent a batch the main process cannot "
                    f"unpickle ({type(e).__name__}: {e}); a class the dataset returns must be "
                    f"importable in the main process") from None
            self.ready[got] = result

    def _worker_died(self, wid: int, during: str = "") -> None:
        w = self.workers[wid]
        code = w.exitcode
        how = f"exit code {code}"
        if code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        partial = self.pipes[wid].partial() or during
        self.close()
        hint = " (SIGKILL is often the out-of-memory killer: try fewer workers or smaller " \
               "batches)" if code == -signal.SIGKILL else ""
        raise RuntimeError(f"DataLoader worker {wid} (pid {w.pid}) exited unexpectedly with "
                           f"{how}{partial}{hint}")

    def __len__(self):
        return self.sent

    def close(self) -> None:
        """End the workers promptly: ask them to stop, give them a moment, then terminate."""
        if self.closed:
            return
        self.closed = True
        self.stop_flag.value = 1
        for q, w in zip(self.jobs_qs, self.workers):
            if w.exitcode is None:
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass
        # a worker notices the stop within one poll; one still inside the dataset's code is
        # not waited for long
        deadline = time.monotonic() + _JOIN_S
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers:
            if w.exitcode is None:
                w.terminate()
        for w in self.workers:
            w.join(_JOIN_S)
            if w.exitcode is None:
                w.kill()
                w.join()
        self.selector.close()
        for pipe in self.pipes:
            pipe.conn.close()
        for q in self.jobs_qs:
            q.cancel_join_thread()
            q.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
