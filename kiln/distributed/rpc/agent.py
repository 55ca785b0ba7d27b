"""The RPC transport: requests and replies as pickled messages over a duplicated MPI
communicator, a listener thread that receives them, and a thread pool that runs requests.

kiln writes no network code: every byte goes through MPI point-to-point calls on the agent's
own communicator (`COMM_WORLD.Dup()`), so RPC traffic never matches a collective's or a user's
message. Sends are non-blocking (`Isend`) and the listener completes them, so no thread ever
blocks inside MPI: the listener polls with `Iprobe` and sleeps between empty polls (a blocking
receive would spin a core inside MPICH, and this is a framework for small shared hosts).
"""

from __future__ import annotations

import io
import itertools
import pickle
import struct
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from kiln.futures import Future

REQUEST_TAG, REPLY_TAG = 7301, 7302
# Polling: for POLL_FAST_FOR after a message arrives or leaves, the listener checks every
# POLL_MIN seconds (a conversation's next message comes soon), then the sleep doubles up to
# POLL_MAX while the line stays quiet (latency of a lone call vs. a core kept busy). A send wakes
# a sleeping listener at once: its reply is what comes next.
POLL_MIN, POLL_MAX = 2e-5, 1e-3
POLL_FAST_FOR = 2e-3     # seconds of close polling after the last message, before backing off
# Message framing: a request is (call id, autograd context id or -1) + the pickled call, a reply
# (call id, ok) + the pickled result or error.
_REQUEST_HEAD, _REPLY_HEAD = struct.Struct("<qq"), struct.Struct("<q?")


class RemoteError:
    """An exception raised by a remote function, as it travels back: its type (when it pickles)
    and the message torch gives: the worker, the exception's repr and the remote traceback."""

    def __init__(self, exc_type, message: str):
        self.exc_type = exc_type
        self.message = message

    def to_exception(self) -> BaseException:
        try:
            return self.exc_type(self.message)
        except Exception:       # an exception type whose constructor wants other arguments
            return RuntimeError(self.message)


class _Pickler(pickle.Pickler):
    """pickle with kiln's tensor rule (`kiln.distributed.autograd._reduce_tensor`): inside a
    distributed-autograd context a tensor that requires grad is recorded as sent and arrives
    with a RecvRpcBackward grad_fn; outside one, it arrives as a leaf."""

    def __init__(self, file, ctx_id: int | None, tensor_reducer):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.ctx_id = ctx_id
        self.tensor_reducer = tensor_reducer

    def reducer_override(self, obj):
        if self.tensor_reducer is not None:
            return self.tensor_reducer(obj, self.ctx_id)
        return NotImplemented


class Agent:
    """One process's end of the RPC world: names, the communicator, outstanding calls."""

    def __init__(self, comm, name: str, names: list[str], num_worker_threads: int,
                 rpc_timeout: float, tensor_reducer=None):
        from kiln.distributed.process_group import mpi_module
        self.MPI = mpi_module()
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.name, self.names = name, names
        self.ranks = {n: r for r, n in enumerate(names)}
        self.rpc_timeout = rpc_timeout
        self.tensor_reducer = tensor_reducer
        self.pool = ThreadPoolExecutor(max_workers=num_worker_threads,
                                       thread_name_prefix=f"kiln-rpc-{name}")
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[Future, float | None, int]] = {}  # id -> (fut, deadline, to)
        self.outbox: list[tuple[object, memoryview]] = []    # Isend requests and their buffers
        self.ids = itertools.count()
        self.owned: dict[tuple, Future] = {}      # RRef id -> the value's future, on its owner
        self.running = True
        self.wake = threading.Event()
        self.listener = threading.Thread(target=self._listen, name=f"kiln-rpc-listener-{name}",
                                         daemon=True)
        self.listener.start()

    # ------------------------------------------------------------------ sending
    def message(self, head: bytes, obj, ctx_id: int | None) -> memoryview:
        """`head` followed by `obj` pickled, in one buffer (no copy of a large pickle)."""
        buf = io.BytesIO()
        buf.write(head)
        _Pickler(buf, ctx_id, self.tensor_reducer).dump(obj)
        return buf.getbuffer()

    def _post(self, dest: int, tag: int, data: memoryview) -> None:
        req = self.comm.Isend([data, self.MPI.BYTE], dest=dest, tag=tag)
        with self.lock:
            self.outbox.append((req, data))     # the buffer lives until the send completes
        self.wake.set()     # an answer may follow soon: the listener polls closely again

    def call(self, dest: int, fn, args: tuple, kwargs: dict, timeout: float,
             ctx_id: int | None) -> Future:
        """Run `fn(*args, **kwargs)` on rank `dest`; the future gets its result or error."""
        if not self.running:
            raise RuntimeError("RPC has been shut down on this worker (rpc.shutdown() was "
                               "called); no more calls can be made")
        fut: Future = Future()
        fut._executor = self.pool       # its callbacks run there, never in the listener
        call_id = next(self.ids)
        # pickled here, in the caller's thread: an unpicklable argument raises at the call
        data = self.message(_REQUEST_HEAD.pack(call_id, -1 if ctx_id is None else ctx_id),
                            (fn, args, kwargs), ctx_id)
        deadline = None if timeout is None or timeout <= 0 else time.monotonic() + timeout
        with self.lock:
            self.pending[call_id] = (fut, deadline, dest)
        self._post(dest, REQUEST_TAG, data)
        return fut

    def _reply(self, dest: int, call_id: int, ctx_id: int | None, ok: bool, value) -> None:
        # the id outside the payload: a payload that fails to unpickle still finds its call
        try:
            data = self.message(_REPLY_HEAD.pack(call_id, ok), value, ctx_id)
        except Exception as exc:        # the result does not pickle: say so at the caller
            err = self._error(exc, f"pickling the result of the call ({type(value).__name__})")
            data = self.message(_REPLY_HEAD.pack(call_id, False), err, None)
        self._post(dest, REPLY_TAG, data)

    def _error(self, exc: BaseException, what: str | None = None) -> RemoteError:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        where = f"On WorkerInfo(id={self.rank}, name={self.name}):\n"
        if what:
            where += f"(while {what})\n"
        exc_type = type(exc)
        try:
            pickle.loads(pickle.dumps(exc_type))
        except Exception:
            exc_type = RuntimeError
        return RemoteError(exc_type, f"{where}{exc!r}\n{text}")

    # ------------------------------------------------------------------ serving
    def _serve(self, src: int, data: bytearray) -> None:
        from kiln.distributed import autograd as dist_autograd
        call_id, ctx_id = _REQUEST_HEAD.unpack_from(data)
        ctx_id = None if ctx_id == -1 else ctx_id
        payload = memoryview(data)[_REQUEST_HEAD.size:]
        try:
            fn, args, kwargs = pickle.loads(payload)
            with dist_autograd._running_in(ctx_id):
                result = fn(*args, **kwargs)
        except BaseException as exc:    # noqa: BLE001 - goes back to the caller
            self._reply(src, call_id, ctx_id, False, self._error(exc))
            return
        if getattr(fn, "_wrapped_async_rpc_function", None) is not None:
            if not isinstance(result, Future):
                err = TypeError(f"the @rpc.functions.async_execution function "
                                f"{getattr(fn, '__qualname__', fn)} returned "
                                f"{type(result).__name__}, not a kiln.futures.Future")
                self._reply(src, call_id, ctx_id, False, self._error(err))
                return

            def send(fut: Future) -> None:
                try:
                    value = fut.wait()
                except BaseException as exc:    # noqa: BLE001
                    self._reply(src, call_id, ctx_id, False, self._error(exc))
                else:
                    self._reply(src, call_id, ctx_id, True, value)
            result.add_done_callback(send)      # the reply leaves when the future completes
            return
        self._reply(src, call_id, ctx_id, True, result)

    def _on_reply(self, data: bytearray) -> None:
        call_id, ok = _REPLY_HEAD.unpack_from(data)
        payload = memoryview(data)[_REPLY_HEAD.size:]
        with self.lock:
            entry = self.pending.pop(call_id, None)
        if entry is None:               # it timed out already
            return
        fut = entry[0]
        try:
            value = pickle.loads(payload)
        except Exception as exc:        # e.g. the result's class does not import here
            fut.set_exception(RuntimeError(
                f"the reply from {self.names[entry[2]]} could not be unpickled on "
                f"{self.name}: {exc!r}; RPC pickles functions and classes by reference, so "
                "they must be importable (module-level) on both workers"))
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value.to_exception())

    # ------------------------------------------------------------------ the listener
    def _listen(self) -> None:
        try:
            self._poll()
        except BaseException:       # noqa: BLE001 - without its listener every worker hangs
            sys.stderr.write(f"kiln.distributed.rpc: the listener of {self.name} (rank "
                             f"{self.rank}) failed; aborting every rank of the job\n"
                             + traceback.format_exc())
            sys.stderr.flush()
            time.sleep(0.5)         # let mpiexec forward the message before Abort
            self.MPI.COMM_WORLD.Abort(1)

    def _poll(self) -> None:
        MPI = self.MPI
        status = MPI.Status()
        delay, active = POLL_MIN, time.monotonic()
        next_check = active + 0.05
        while self.running:
            busy = False
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                busy = True
                src, tag = status.Get_source(), status.Get_tag()
                buf = bytearray(status.Get_count(MPI.BYTE))
                self.comm.Recv([buf, MPI.BYTE], source=src, tag=tag)
                if tag == REQUEST_TAG:
                    self.pool.submit(self._serve_logged, src, buf)
                else:
                    self._on_reply(buf)
            if self.outbox:
                self._reap_sends()
            now = time.monotonic()
            if now >= next_check:
                self._expire(now)
                next_check = now + 0.05
            if busy or self.wake.is_set():
                self.wake.clear()
                delay, active = POLL_MIN, now
            else:
                self.wake.wait(delay)
                if now - active > POLL_FAST_FOR:
                    delay = min(delay * 2, POLL_MAX)

    def _serve_logged(self, src: int, data: bytearray) -> None:
        try:
            self._serve(src, data)
        except BaseException:       # a failure of the reply itself: nothing to send it to
            traceback.print_exc(file=sys.stderr)

    def _reap_sends(self) -> None:
        with self.lock:
            outbox = self.outbox
            self.outbox = [(req, buf) for req, buf in outbox if not req.Test()]

    def _expire(self, now: float) -> None:
        expired = []
        with self.lock:
            for call_id, (fut, deadline, dest) in list(self.pending.items()):
                if deadline is not None and now >= deadline:
                    expired.append((fut, dest))
                    del self.pending[call_id]
        for fut, dest in expired:
            fut.set_exception(RuntimeError(
                f"RPC to {self.names[dest]} (rank {dest}) ran for more than the set timeout "
                "and was marked with an error; pass a longer timeout= to the call or "
                "rpc_timeout= in TensorPipeRpcBackendOptions (0 means no timeout)"))

    # ------------------------------------------------------------------ shutdown
    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)

    def wait_idle(self, deadline: float | None) -> None:
        """Wait until this worker has no call waiting for a reply."""
        while self.outstanding():
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError("rpc.shutdown: calls were still waiting for replies when "
                                   "the timeout ran out")
            time.sleep(1e-3)

    def barrier(self) -> None:
        """Every rank reached this point; the listener keeps serving meanwhile."""
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(1e-3)

    def stop(self) -> None:
        self.running = False
        if self.listener is not threading.current_thread():
            self.listener.join()
        with self.lock:
            outbox, self.outbox = self.outbox, []
        for req, _ in outbox:
            req.Wait()
        self.pool.shutdown(wait=True)
