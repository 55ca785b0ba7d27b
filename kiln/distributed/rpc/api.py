"""torch.distributed.rpc's calls over kiln's MPI agent: init_rpc/shutdown, rpc_sync,
rpc_async, remote, RRef and WorkerInfo."""

from __future__ import annotations

import atexit
import enum
import itertools
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from kiln.futures import Future
from kiln.distributed.rpc.agent import Agent

DEFAULT_RPC_TIMEOUT_SEC = 60.0
UNSET_RPC_TIMEOUT = -1.0

_AGENT: Agent | None = None
_INIT_LOCK = threading.Lock()


class BackendType(enum.Enum):
    """RPC backends; torch's only one, TensorPipe, names kiln's MPI agent here."""

    TENSORPIPE = "TENSORPIPE"


@dataclass
class TensorPipeRpcBackendOptions:
    """torch's options for the agent. kiln honours `num_worker_threads` (the pool that runs
    incoming calls) and `rpc_timeout` (seconds; 0 = none); `init_method`, `device_maps` and
    `devices` are accepted and unused (MPI does the rendezvous; tensors travel as CPU arrays)."""

    num_worker_threads: int = 16
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT_SEC
    init_method: str = "env://"
    device_maps: dict | None = None
    devices: list | None = None
    _transports: list | None = None
    _channels: list | None = None

    def set_device_map(self, to: str, device_map: dict) -> None:
        self.device_maps = dict(self.device_maps or {}, **{to: device_map})

    def set_devices(self, devices: list) -> None:
        self.devices = list(devices)


RpcBackendOptions = TensorPipeRpcBackendOptions


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's name and id (its rank), as `get_worker_info` returns."""

    name: str
    id: int

    def __repr__(self) -> str:
        return f"WorkerInfo(id={self.id}, name={self.name})"


# ----------------------------------------------------------------------------- init / shutdown

def init_rpc(name: str, backend=None, rank: int = -1, world_size: int | None = None,
             rpc_backend_options: TensorPipeRpcBackendOptions | None = None) -> None:
    """Join the RPC world as `name` (torch.distributed.rpc.init_rpc).

    The workers are the processes of one MPI job (`mpiexec -n N`, `python -m
    kiln.distributed.run`); `rank` and `world_size`, when given, must match MPI's. Every worker
    calls this (it is collective): names are exchanged, and each worker starts a listener
    thread and a pool of `num_worker_threads` that run the calls it receives.
    """
    global _AGENT
    if not isinstance(name, str) or not name:
        raise ValueError(f"init_rpc: name must be a non-empty string, got {name!r}")
    if backend is not None and backend not in (BackendType.TENSORPIPE, "TENSORPIPE",
                                               "tensorpipe"):
        raise ValueError(f"init_rpc: unknown backend {backend!r}; kiln has "
                         "BackendType.TENSORPIPE (its MPI agent)")
    options = rpc_backend_options or TensorPipeRpcBackendOptions()
    from kiln.distributed.process_group import _abort_on_uncaught, mpi_module
    MPI = mpi_module()
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise RuntimeError(
            "init_rpc: MPI was initialized without MPI_THREAD_MULTIPLE, but kiln's RPC agent "
            "calls MPI from a listener thread and the caller's threads. Let mpi4py initialize "
            "MPI with its default (mpi4py.rc.thread_level = 'multiple') and use an MPI library "
            "built with thread support")
    with _INIT_LOCK:
        if _AGENT is not None:
            raise RuntimeError("init_rpc: RPC is already initialized on this process; call "
                               "rpc.shutdown() before initializing it again")
        world = MPI.COMM_WORLD
        size, me = world.Get_size(), world.Get_rank()
        if world_size not in (None, -1) and world_size != size:
            raise RuntimeError(
                f"init_rpc: world_size={world_size}, but MPI started {size} process(es) "
                f"together. kiln's RPC runs over MPI: start the workers with `mpiexec -n "
                f"{world_size} python script.py` or `python -m kiln.distributed.run "
                f"--nproc-per-node {world_size} script.py`")
        if rank not in (None, -1) and rank != me:
            raise RuntimeError(f"init_rpc: rank={rank} was asked for, but MPI gave this "
                               f"process rank {me}; pass the rank MPI gives "
                               "(kiln.distributed.rpc workers are MPI ranks)")
        comm = world.Dup()              # RPC's own context: no other traffic can match it
        names = comm.allgather(name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            comm.Free()
            raise ValueError(f"init_rpc: worker names must be unique; {repeated} were used "
                             f"by more than one rank (all names by rank: {names})")
        from kiln.distributed import autograd as dist_autograd
        _AGENT = Agent(comm, name, names, int(options.num_worker_threads),
                       float(options.rpc_timeout), dist_autograd._reduce_tensor)
        if sys.excepthook is not _abort_on_uncaught:
            _AGENT.prev_excepthook = sys.excepthook
            sys.excepthook = _abort_on_uncaught   # other workers would wait for this one
    _AGENT.barrier()    # every listener runs before anyone calls


def shutdown(graceful: bool = True, timeout: float = 0) -> None:
    """Leave the RPC world. graceful=True (the default) waits until every worker has no call
    waiting for a reply and has reached shutdown, serving others' calls meanwhile; then the
    listener and the pool stop. graceful=False stops this worker's agent at once."""
    global _AGENT
    agent = _require("shutdown")
    if graceful:
        deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
        agent.wait_idle(deadline)
        agent.barrier()
    agent.stop()
    from kiln.distributed import autograd as dist_autograd
    dist_autograd._clear()
    agent.comm.Free()
    from kiln.distributed.process_group import _abort_on_uncaught
    if sys.excepthook is _abort_on_uncaught and hasattr(agent, "prev_excepthook"):
        from kiln.distributed import process_group
        if process_group._WORLD is None:        # the process group, if any, still wants it
            sys.excepthook = agent.prev_excepthook
    _AGENT = None


@atexit.register
def _stop_at_exit() -> None:
    # a script that never called shutdown: stop polling before mpi4py finalizes MPI
    if _AGENT is not None:
        _AGENT.running = False
        _AGENT.listener.join(timeout=1.0)


def _require(what: str) -> Agent:
    if _AGENT is None:
        raise RuntimeError(f"rpc.{what}: RPC has not been initialized; call rpc.init_rpc() "
                           "first")
    return _AGENT


# ----------------------------------------------------------------------------- workers

def get_worker_info(worker_name: str | None = None) -> WorkerInfo:
    """This worker's WorkerInfo, or that of the worker called `worker_name`."""
    agent = _require("get_worker_info")
    if worker_name is None:
        return WorkerInfo(agent.name, agent.rank)
    return WorkerInfo(worker_name, _rank_of(agent, worker_name))


def _rank_of(agent: Agent, to) -> int:
    if isinstance(to, WorkerInfo):
        return to.id
    if isinstance(to, str):
        rank = agent.ranks.get(to)
        if rank is None:
            raise ValueError(f"rpc: unknown worker name {to!r}; the workers are "
                             f"{agent.names}")
        return rank
    if isinstance(to, int) and not isinstance(to, bool):
        if not 0 <= to < agent.size:
            raise ValueError(f"rpc: worker id {to} is out of range for {agent.size} workers")
        return to
    raise TypeError(f"rpc: `to` must be a worker name, a WorkerInfo or a worker id, got "
                    f"{type(to).__name__}")


def _timeout(agent: Agent, timeout: float) -> float:
    return agent.rpc_timeout if timeout is None or timeout == UNSET_RPC_TIMEOUT else timeout


# ----------------------------------------------------------------------------- calls

def rpc_async(to, func, args=None, kwargs=None, timeout: float = UNSET_RPC_TIMEOUT) -> Future:
    """Run `func(*args, **kwargs)` on worker `to`; a Future of its result. `func` and the
    classes in the arguments are pickled by reference (module-level, as in torch)."""
    agent = _require("rpc_async")
    from kiln.distributed import autograd as dist_autograd
    if not callable(func):
        raise TypeError(f"rpc: func must be callable, got {type(func).__name__}")
    return agent.call(_rank_of(agent, to), func, tuple(args or ()), dict(kwargs or {}),
                      _timeout(agent, timeout), dist_autograd._current_id())


def rpc_sync(to, func, args=None, kwargs=None, timeout: float = UNSET_RPC_TIMEOUT) -> Any:
    """Run `func(*args, **kwargs)` on worker `to` and return its result; an exception raised
    there is raised here (same type, with the remote traceback in its message)."""
    return rpc_async(to, func, args, kwargs, timeout).wait()


_RREF_IDS = itertools.count()


def remote(to, func, args=None, kwargs=None, timeout: float = UNSET_RPC_TIMEOUT) -> "RRef":
    """Run `func(*args, **kwargs)` on worker `to` and keep the result there: an RRef to it,
    returned at once (the value may not exist yet; `to_here()` waits for it)."""
    agent = _require("remote")
    owner = _rank_of(agent, to)
    rref = RRef._user(owner, (agent.rank, next(_RREF_IDS)))
    rref._created = rpc_async(owner, _rref_create, (rref._id, func, tuple(args or ()),
                                                    dict(kwargs or {})), timeout=timeout)
    return rref


# ----------------------------------------------------------------------------- RRef

class RRef:
    """A reference to a value that lives on one worker, its owner (torch's RRef).

    `RRef(value)` makes this worker the owner of `value`; `remote()` returns RRefs owned by
    another worker. RRefs pickle, so they can be passed in RPC arguments and results. kiln keeps
    every owned value until `rpc.shutdown()` (no distributed reference counting).
    """

    def __init__(self, value=None, type_hint=None):
        agent = _require("RRef")
        self._owner = agent.rank
        self._id = (agent.rank, next(_RREF_IDS))
        self._created = None
        fut = _owned_future(agent, self._id)
        fut.set_result(value)

    @classmethod
    def _user(cls, owner: int, rref_id: tuple) -> "RRef":
        rref = cls.__new__(cls)
        rref._owner, rref._id, rref._created = owner, rref_id, None
        return rref

    def __reduce__(self):
        return (_rref_from_wire, (self._owner, self._id))

    def __repr__(self) -> str:
        kind = "OwnerRRef" if self.is_owner() else "UserRRef"
        return f"{kind}(RRefId = {self._id}, owner = {self.owner()})"

    # -- where it lives
    def owner(self) -> WorkerInfo:
        agent = _require("RRef.owner")
        return WorkerInfo(agent.names[self._owner], self._owner)

    def owner_name(self) -> str:
        return _require("RRef.owner_name").names[self._owner]

    def is_owner(self) -> bool:
        return _require("RRef.is_owner").rank == self._owner

    def confirmed_by_owner(self) -> bool:
        return self.is_owner() or self._created is None or self._created.done()

    # -- the value
    def local_value(self) -> Any:
        """The value, on its owner (RuntimeError elsewhere: use to_here())."""
        agent = _require("RRef.local_value")
        if agent.rank != self._owner:
            raise RuntimeError(f"RRef.local_value: this RRef is owned by "
                               f"{agent.names[self._owner]}, not by {agent.name}; call "
                               "to_here() to copy its value here")
        return _owned_future(agent, self._id).wait()

    def to_here(self, timeout: float = UNSET_RPC_TIMEOUT) -> Any:
        """A copy of the value on this worker (the value itself on its owner)."""
        agent = _require("RRef.to_here")
        if agent.rank == self._owner:
            return _owned_future(agent, self._id).wait()
        return rpc_sync(self._owner, _rref_fetch, (self._id,), timeout=timeout)

    def backward(self, dist_autograd_ctx_id: int = -1, retain_graph: bool = False) -> None:
        """Backward from the referenced value (a scalar tensor) on its owner: a distributed
        backward in context `dist_autograd_ctx_id` (gradients in `get_gradients`), or with -1 a
        local one there (gradients in `.grad`)."""
        rpc_sync(self._owner, _rref_backward, (self, dist_autograd_ctx_id, retain_graph),
                 timeout=0)

    def __class_getitem__(cls, item):       # RRef[Tensor] in type hints, as torch's
        return cls

    # -- calling the value's methods on its owner
    def rpc_sync(self, timeout: float = UNSET_RPC_TIMEOUT) -> "_Proxy":
        """`rref.rpc_sync().method(*args)` runs `value.method(*args)` on the owner."""
        return _Proxy(self, "rpc_sync", timeout)

    def rpc_async(self, timeout: float = UNSET_RPC_TIMEOUT) -> "_Proxy":
        """`rref.rpc_async().method(*args)`: a Future of `value.method(*args)` on the owner."""
        return _Proxy(self, "rpc_async", timeout)

    def remote(self, timeout: float = UNSET_RPC_TIMEOUT) -> "_Proxy":
        """`rref.remote().method(*args)`: an RRef to `value.method(*args)`, kept on the owner."""
        return _Proxy(self, "remote", timeout)


class _Proxy:
    def __init__(self, rref: RRef, how: str, timeout: float):
        self._rref, self._how, self._timeout = rref, how, timeout

    def __getattr__(self, method: str):
        rref, how, timeout = self._rref, self._how, self._timeout
        call = {"rpc_sync": rpc_sync, "rpc_async": rpc_async, "remote": remote}[how]

        def invoke(*args, **kwargs):
            return call(rref._owner, _call_method_on_owner, (rref, method, args, kwargs),
                        timeout=timeout)
        invoke.__name__ = method
        return invoke


def _rref_from_wire(owner: int, rref_id: tuple) -> RRef:
    return RRef._user(owner, rref_id)


def _owned_future(agent: Agent, rref_id: tuple) -> Future:
    """The future of an owned value, made on first mention: a fetch or a method call may
    arrive before the `remote()` call that creates the value (they run on different threads)."""
    with agent.lock:
        fut = agent.owned.get(rref_id)
        if fut is None:
            fut = agent.owned[rref_id] = Future()
    return fut


def _is_async(fn) -> bool:
    return getattr(fn, "_wrapped_async_rpc_function", None) is not None


def _settle(target: Future, source: Future) -> None:
    try:
        target.set_result(source.wait())
    except BaseException as exc:    # noqa: BLE001
        target.set_exception(exc)


# These run on the owner, sent by reference; the async ones reply when their future completes.
def _rref_create(rref_id: tuple, func, args: tuple, kwargs: dict) -> None:
    fut = _owned_future(_require("remote"), rref_id)
    try:
        value = func(*args, **kwargs)
    except BaseException as exc:    # noqa: BLE001 - kept for to_here(), and raised to the caller
        fut.set_exception(exc)
        raise
    if _is_async(func) and isinstance(value, Future):
        value.add_done_callback(lambda done: _settle(fut, done))
    else:
        fut.set_result(value)


def _fetch_value(rref_id: tuple) -> Future:
    return _owned_future(_require("to_here"), rref_id)


def _rref_fetch(rref_id: tuple) -> Future:
    result = Future()
    _fetch_value(rref_id).add_done_callback(lambda done: _settle(result, done))
    return result


_rref_fetch._wrapped_async_rpc_function = _rref_fetch


def _call_method_on_owner(rref: RRef, method: str, args: tuple, kwargs: dict) -> Future:
    from kiln.distributed import autograd as dist_autograd
    agent = _require("RRef proxy")
    ctx_id = dist_autograd._current_id()
    result = Future()

    def run(value_fut: Future) -> None:
        try:
            bound = getattr(value_fut.wait(), method)
            with dist_autograd._running_in(ctx_id):
                out = bound(*args, **kwargs)
        except BaseException as exc:    # noqa: BLE001
            result.set_exception(exc)
            return
        if _is_async(bound) and isinstance(out, Future):
            out.add_done_callback(lambda done: _settle(result, done))
        else:
            result.set_result(out)
    _owned_future(agent, rref._id).add_done_callback(run)
    return result


_call_method_on_owner._wrapped_async_rpc_function = _call_method_on_owner


def _rref_backward(rref: RRef, ctx_id: int, retain_graph: bool) -> None:
    from kiln.distributed import autograd as dist_autograd
    value = rref.local_value()
    if ctx_id == -1:
        value.backward(retain_graph=retain_graph)
    else:
        dist_autograd.backward(ctx_id, [value], retain_graph=retain_graph)
