"""The default process group: starting it from mpiexec (or torchrun-style env vars), its ranks,
and the backend each tensor's collectives go through (MPI for CPU tensors, NCCL for cuda ones).

kiln has no network transport of its own. Ranks are processes started by `mpiexec` (directly,
or through `python -m kiln.distributed.run`), and MPI's communicator says who is who; NCCL, for
cuda tensors, is bootstrapped over that communicator.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass

_INSTALL = ("kiln.distributed needs mpi4py and an MPI library: pip install 'kiln[distributed]' "
            "(the `mpich` wheel ships mpiexec and libmpi), or install MPICH/Open MPI and then "
            "pip install mpi4py")


class ReduceOp:
    """How a reduction combines values across ranks (torch.distributed.ReduceOp)."""

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"

    ALL = (SUM, AVG, PRODUCT, MIN, MAX, BAND, BOR, BXOR)


class Backend:
    """Backend names accepted by `init_process_group` ("gloo" is an alias of "mpi")."""

    MPI = "mpi"
    NCCL = "nccl"
    GLOO = "gloo"


@dataclass
class _World:
    backend: str
    comm: object                 # the MPI communicator every rank of the group is in
    rank: int
    size: int
    local_rank: int
    mpi: object = None           # the MPI backend (CPU tensors)
    nccl: object = None          # the NCCL backend (cuda tensors), made on first use
    checks: bool = True          # exchange shape/dtype before each collective
    prev_excepthook: object = None
    env_set: dict | None = None  # the RANK/WORLD_SIZE/... variables init set, for destroy


_WORLD: _World | None = None


def mpi_module():
    """mpi4py's MPI module (initializes MPI), or a RuntimeError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(_INSTALL + f" ({exc})") from None
    return MPI


def is_available() -> bool:
    """Whether kiln.distributed can run here: mpi4py imports (without initializing MPI)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def is_mpi_available() -> bool:
    return is_available()


def is_nccl_available() -> bool:
    try:
        from cupy.cuda import nccl  # noqa: F401
    except Exception:       # ImportError, or CUDA missing underneath
        return False
    return True


def is_gloo_available() -> bool:
    return is_available()


def is_initialized() -> bool:
    return _WORLD is not None


def is_torchelastic_launched() -> bool:
    return "KILN_DISTRIBUTED_LAUNCHER" in os.environ


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"init_process_group: environment variable {name}={value!r} is not an "
                         "integer") from None


def init_process_group(backend: str | None = None, init_method: str | None = None,
                       timeout=None, world_size: int = -1, rank: int = -1, store=None,
                       group_name: str = "", pg_options=None, device_id=None) -> None:
    """Join the default process group (torch.distributed.init_process_group).

    The processes must have been started by `mpiexec -n N` or `python -m kiln.distributed.run`
    (which runs mpiexec): MPI_COMM_WORLD gives the rank and world size. RANK / WORLD_SIZE from
    the environment or the arguments are checked against it, and RANK, WORLD_SIZE, LOCAL_RANK
    and LOCAL_WORLD_SIZE are set from it when missing, as torchrun would have set them.
    `init_method`, `store` and `timeout` are accepted for compatibility; MPI does the rendezvous.

    backend: "mpi" (or its alias "gloo"): MPI for CPU tensors, and NCCL for cuda tensors if
    CuPy has it; "nccl": the same, but NCCL must be available; None: "mpi".
    """
    global _WORLD
    name = (backend or "mpi").lower()
    if ":" in name:                       # "cpu:gloo,cuda:nccl"
        name = "nccl" if "nccl" in name else "mpi"
    if name == Backend.GLOO:
        name = Backend.MPI
    if name not in (Backend.MPI, Backend.NCCL):
        raise ValueError(f"init_process_group: unknown backend {backend!r}; kiln has 'mpi' "
                         "(alias 'gloo') for CPU tensors and 'nccl' for cuda tensors")
    if _WORLD is not None:
        raise RuntimeError("trying to initialize the default process group twice!")
    if name == Backend.NCCL and not is_nccl_available():
        raise RuntimeError("init_process_group: backend 'nccl' needs CuPy with NCCL "
                           "(cupy.cuda.nccl) and a GPU; use backend='mpi' for CPU tensors")
    MPI = mpi_module()
    comm = MPI.COMM_WORLD.Dup()          # our own context: a user's MPI traffic cannot collide
    size, me = comm.Get_size(), comm.Get_rank()
    want_size = world_size if world_size not in (None, -1) else _env_int("WORLD_SIZE")
    want_rank = rank if rank not in (None, -1) else _env_int("RANK")
    if want_size is not None and want_size != size:
        comm.Free()
        raise RuntimeError(
            f"init_process_group: world size {want_size} was asked for (WORLD_SIZE or "
            f"world_size=), but MPI started {size} process(es) together. kiln's ranks talk "
            f"through MPI, so start them with `python -m kiln.distributed.run --nproc-per-node "
            f"{want_size} script.py` or `mpiexec -n {want_size} python script.py`; processes "
            "started separately (torchrun, a shell loop) cannot find each other")
    if want_rank is not None and want_rank != me:
        comm.Free()
        raise RuntimeError(f"init_process_group: rank {want_rank} was asked for (RANK or rank=), "
                           f"but MPI gave this process rank {me}; let the launcher set RANK")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = local.Get_rank(), local.Get_size()
    local.Free()
    set_here = {}                   # what destroy_process_group takes back
    for key, value in (("RANK", me), ("WORLD_SIZE", size), ("LOCAL_RANK", local_rank),
                       ("LOCAL_WORLD_SIZE", local_size)):
        if key not in os.environ:
            os.environ[key] = set_here[key] = str(value)
    from kiln.distributed.mpi_backend import MPIBackend
    checks = os.environ.get("KILN_DISTRIBUTED_CHECKS", "1") not in ("0", "false", "off")
    world = _World(name, comm, me, size, local_rank, checks=checks)
    world.mpi = MPIBackend(comm)
    world.env_set = set_here
    if name == Backend.NCCL:
        from kiln.distributed.nccl_backend import NCCLBackend
        world.nccl = NCCLBackend.create(comm)
    world.prev_excepthook = sys.excepthook
    sys.excepthook = _abort_on_uncaught
    _WORLD = world


def _abort_on_uncaught(exc_type, exc, tb) -> None:
    """An exception on one rank ends the whole job: the others would wait for it forever."""
    world = _WORLD
    # without a process group (an RPC-only job) MPI_COMM_WORLD's rank is the worker's
    rank = world.rank if world is not None else mpi_module().COMM_WORLD.Get_rank()
    sys.stderr.write(f"kiln.distributed: rank {rank} raised an uncaught exception; aborting "
                     "every rank of the job\n" + "".join(traceback.format_exception(
                         exc_type, exc, tb)))
    sys.stderr.flush()
    time.sleep(0.5)         # let mpiexec forward the message before Abort tears the job down
    mpi_module().COMM_WORLD.Abort(1)


def destroy_process_group(group=None) -> None:
    global _WORLD
    world = _require("destroy_process_group")
    if world.nccl is not None:
        world.nccl.close()
    world.comm.Free()
    if sys.excepthook is _abort_on_uncaught:
        sys.excepthook = world.prev_excepthook
    for key, value in (world.env_set or {}).items():    # a later init starts afresh
        if os.environ.get(key) == value:
            del os.environ[key]
    _WORLD = None


def _require(what: str) -> _World:
    if _WORLD is None:
        raise RuntimeError(f"{what}: the default process group has not been initialized, "
                           "please make sure to call init_process_group.")
    return _WORLD


def _check_group(group, what: str) -> None:
    if group is not None and group is not GroupMember.WORLD:
        raise ValueError(f"{what}: kiln supports only the default group (group=None)")


def get_rank(group=None) -> int:
    _check_group(group, "get_rank")
    return _require("get_rank").rank


def get_world_size(group=None) -> int:
    _check_group(group, "get_world_size")
    return _require("get_world_size").size


def get_backend(group=None) -> str:
    _check_group(group, "get_backend")
    return _require("get_backend").backend


def get_node_local_rank(fallback_rank: int | None = None) -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if fallback_rank is not None:
        return fallback_rank
    raise RuntimeError("LOCAL_RANK is not in the environment: start the job with "
                       "python -m kiln.distributed.run or call init_process_group first")


class GroupMember:
    WORLD = object()      # stands for the default group in `group=` arguments


group = GroupMember       # torch.distributed.group.WORLD


def get_default_backend_for_device(device) -> str:
    """torch's default backend name for a device type: "gloo" for cpu (kiln's MPI), "nccl" for
    cuda; both are names `init_process_group` takes."""
    from kiln.runtime.device import Device
    kind = device.type if isinstance(device, Device) else Device(device).type
    backend = {"cpu": Backend.GLOO, "cuda": Backend.NCCL}.get(kind)
    if backend is None:
        raise ValueError(f"Default backend not registered for device : {device}")
    return backend
