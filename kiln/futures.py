"""`kiln.futures`: a thread-safe Future for results that arrive later (torch.futures), as
returned by `kiln.distributed.rpc.rpc_async` and completed by RPC replies or by user code."""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Future", "collect_all", "wait_all"]


class Future(Generic[T]):
    """A value (or an exception) that some thread sets once; others wait for it or chain
    callbacks onto it (torch.futures.Future).

    Callbacks added with `then` / `add_done_callback` run in the thread that completes the
    future (or on its `_executor`, when one is set: an RPC future's run on the RPC worker
    pool, as PyTorch's do, so a callback may itself wait for another RPC, whose reply the
    completing listener thread must be free to receive), or at once in the adding thread when
    it is already complete.
    """

    _executor = None     # runs the callbacks a completion triggers (see above); None: inline

    def __init__(self, *, devices=None):
        self._cond = threading.Condition(threading.Lock())
        self._done = False
        self._value: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[["Future"], None]] = []
        # what completes this future when nobody else will (a started collective's wait:
        # MPI moves it only inside MPI calls), run by wait() and by chained futures' wait()
        self._driver: Callable[[], None] | None = None

    # -- state
    def done(self) -> bool:
        """Whether a result or an exception has been set."""
        with self._cond:
            return self._done

    def wait(self, timeout: float | None = None) -> T:
        """Block until complete; returns the value or raises the exception it was completed
        with. `timeout` (seconds, kiln's addition) raises TimeoutError when it runs out."""
        self._drive()
        with self._cond:
            if not self._done and not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"Future.wait: no result within {timeout} s")
        if self._exception is not None:
            raise self._exception
        return self._value

    def value(self) -> T:
        """The value of a completed future (raises its exception); RuntimeError if not done."""
        with self._cond:
            if not self._done:
                raise RuntimeError("Future.value: the future is not completed yet; call "
                                   "wait() to block until it is")
        if self._exception is not None:
            raise self._exception
        return self._value

    def _drive(self) -> None:
        """Run the driver of a pending future (or of the future it was chained from)."""
        if self._driver is not None and not self.done():
            self._driver()

    # -- completing
    def set_result(self, result: T) -> None:
        """Complete the future with `result`, waking waiters and running callbacks."""
        self._complete(result, None)

    def set_exception(self, result: BaseException) -> None:
        """Complete the future with an exception: wait()/value() raise it."""
        if not isinstance(result, BaseException):
            raise TypeError(f"Future.set_exception: expected an exception, got "
                            f"{type(result).__name__}")
        self._complete(None, result)

    def _complete(self, value, exception) -> None:
        with self._cond:
            if self._done:
                raise RuntimeError("Future can only be marked completed once: it already has "
                                   "a result or an exception")
            self._value, self._exception, self._done = value, exception, True
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for callback in callbacks:
            if self._executor is not None:
                self._executor.submit(_run_callback, callback, self)
            else:
                _run_callback(callback, self)

    # -- chaining
    def add_done_callback(self, callback: Callable[["Future"], None]) -> None:
        """Run `callback(self)` once complete; its result is ignored."""
        with self._cond:
            if not self._done:
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    def then(self, callback: Callable[["Future"], Any]) -> "Future":
        """A new future completed with `callback(self)` once this one completes (or with the
        exception the callback raises)."""
        chained = Future()
        if self._driver is not None:
            chained._driver = self._drive

        def run(fut: Future) -> None:
            try:
                result = callback(fut)
            except BaseException as exc:    # noqa: BLE001 - handed to the chained future
                chained.set_exception(exc)
            else:
                chained.set_result(result)
        self.add_done_callback(run)
        return chained

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<kiln.futures.Future ({state})>"


def _run_callback(callback, fut: Future) -> None:
    try:
        callback(fut)
    except Exception:       # a failing callback must not stop the others (torch logs it)
        import traceback
        traceback.print_exc()


def collect_all(futures: list[Future]) -> Future:
    """A future completed with the list of `futures` once every one of them is complete (it
    never holds an exception of theirs: read each one's value)."""
    futures = list(futures)
    combined: Future = Future()
    if not futures:
        combined.set_result([])
        return combined
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            combined.set_result(futures)
    for fut in futures:
        fut.add_done_callback(one_done)
    if any(fut._driver is not None for fut in futures):
        combined._driver = lambda: [fut._drive() for fut in futures]
    return combined


def wait_all(futures: list[Future]) -> list:
    """Their values in order, once every future is complete; as in torch, the first exception
    one of them gets is raised at once, without waiting for the others."""
    futures = list(futures)
    settled: Future = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(fut: Future) -> None:
        with lock:
            if settled._done:
                return
            remaining[0] -= 1
            failed = fut._exception is not None
            if failed or remaining[0] == 0:
                # under `lock`, so exactly one callback completes `settled`
                settled._complete(None, fut._exception if failed else None)
    if not futures:
        return []
    for fut in futures:
        fut.add_done_callback(one_done)
    for fut in futures:         # futures of started collectives complete when waited
        fut._drive()
    settled.wait()
    return [fut.value() for fut in futures]
