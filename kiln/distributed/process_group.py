"""The default process group: starting it from mpiexec (or torchrun-style env vars), its ranks,
and the backend each tensor's collectives go through (MPI for CPU tensors, NCCL for cuda ones);
sub-groups (`new_group`), each with its own MPI communicator.

kiln has no network transport of its own. Ranks are processes started by `mpiexec` (directly,
or through `python -m kiln.distributed.run` or `kiln.multiprocessing.spawn`), and MPI's
communicator says who is who; NCCL, for cuda tensors, is bootstrapped over that communicator.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

_INSTALL = ("kiln.distributed needs mpi4py and an MPI library: pip install 'kiln[distributed]' "
            "(the `mpich` wheel ships mpiexec and libmpi), or install MPICH/Open MPI and then "
            "pip install mpi4py")

# torch.distributed.default_pg_timeout: how long torch's collectives wait (kiln's MPI ones wait
# without a limit; monitored_barrier and breakpoint use it)
default_pg_timeout = timedelta(minutes=30)


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
    groups: list | None = None   # the ProcessGroups new_group made, freed with the world
    group_count: int = 1         # the default group and every new_group call (get_pg_count)
    store: object = None         # the store given to init_process_group, if any


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

    The processes must have been started together by `mpiexec -n N`, `python -m
    kiln.distributed.run` (which runs mpiexec) or `kiln.multiprocessing.spawn(fn, nprocs=N)`
    (which does too): MPI_COMM_WORLD gives the rank and world size. RANK / WORLD_SIZE from
    the environment or the arguments are checked against it; a world_size smaller than MPI's
    forms the group of the processes of ranks 0..world_size-1 (the others must not call this).
    RANK, WORLD_SIZE, LOCAL_RANK
    and LOCAL_WORLD_SIZE are set from it when missing, as torchrun would have set them.
    `init_method` and `timeout` are accepted for compatibility; MPI does the rendezvous. A
    `store` (a kiln.distributed FileStore, HashStore or PrefixStore) needs `rank` and
    `world_size`, as in torch; MPI still does the rendezvous and the store is left to the script.

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
    if store is not None:
        _check_store(store, rank, world_size)
    if name == Backend.NCCL and not is_nccl_available():
        raise RuntimeError("init_process_group: backend 'nccl' needs CuPy with NCCL "
                           "(cupy.cuda.nccl) and a GPU; use backend='mpi' for CPU tensors")
    MPI = mpi_module()
    size, me = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
    want_size = world_size if world_size not in (None, -1) else _env_int("WORLD_SIZE")
    want_rank = rank if rank not in (None, -1) else _env_int("RANK")
    if want_size is not None and want_size != size:
        if not (0 < want_size < size and me < want_size and want_rank in (None, me)):
            raise RuntimeError(_world_size_refusal(want_size, size, me))
        # the first world_size processes of a bigger MPI world form the group, while the
        # others do something else (torch's DDP + RPC pattern); only the members take part
        members = MPI.COMM_WORLD.Get_group().Range_incl([(0, want_size - 1, 1)])
        comm = MPI.COMM_WORLD.Create_group(members)
        members.Free()
        size = want_size
    else:
        comm = MPI.COMM_WORLD.Dup()      # our own context: a user's MPI traffic cannot collide
    if want_rank is not None and want_rank != me:
        comm.Free()
        raise RuntimeError(f"init_process_group: rank {want_rank} was asked for (RANK or rank=), "
                           f"but MPI gave this process rank {me}; kiln's ranks are MPI's: let "
                           "the launcher set RANK, or under mp.spawn pass the index spawn gave "
                           "your function")
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
    world.store = store
    if name == Backend.NCCL:
        from kiln.distributed.nccl_backend import NCCLBackend
        world.nccl = NCCLBackend.create(comm)
    world.prev_excepthook = sys.excepthook
    sys.excepthook = _abort_on_uncaught
    _WORLD = world


def _check_store(store, rank: int, world_size: int) -> None:
    from kiln.distributed.store import Store
    if not isinstance(store, Store):
        raise TypeError(f"init_process_group: store must be a kiln.distributed Store (FileStore, "
                        f"HashStore, PrefixStore), got {type(store).__name__}")
    if rank in (None, -1) or world_size in (None, -1):
        raise ValueError("init_process_group: with a store, give rank= and world_size= too "
                         f"(got rank={rank}, world_size={world_size})")


def _world_size_refusal(want_size: int, size: int, me: int) -> str:
    """Why `world_size=want_size` cannot be formed from an MPI world of `size` processes."""
    if want_size < size:
        return (f"init_process_group: world_size={want_size} was asked for by the process of "
                f"rank {me} in a world of {size} processes started together; a smaller group is "
                f"formed by the processes of ranks 0..{want_size - 1}, each passing its own "
                "rank (the index mp.spawn gave it): the others must not call "
                "init_process_group")
    return (f"init_process_group: world size {want_size} was asked for (WORLD_SIZE or "
            f"world_size=), but MPI started {size} process(es) together. kiln's ranks talk "
            f"through MPI, so start them together: kiln.multiprocessing.spawn(fn, args, "
            f"nprocs={want_size}) (torch's mp.spawn; with no Tensor among args), `python -m "
            f"kiln.distributed.run --nproc-per-node {want_size} script.py` or `mpiexec -n "
            f"{want_size} python script.py`; processes started separately (torchrun, a shell "
            "loop, multiprocessing.Process one by one) cannot find each other")


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
    if isinstance(group, ProcessGroup):
        group._free()
        return
    for sub in world.groups or ():
        sub._free()
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


def resolve_group(group, what: str):
    """The default group's `_World` (group None or WORLD) or `group` itself (a ProcessGroup
    this rank is a member of): both have comm, rank, size, mpi, nccl, checks."""
    world = _require(what)
    if group is None or group is GroupMember.WORLD:
        return world
    if group is GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"{what}: this rank is not a member of the group (new_group returned "
                         "GroupMember.NON_GROUP_MEMBER here); only its members may call it")
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"{what}: group must be None, group.WORLD or a ProcessGroup from "
                        f"new_group, got {type(group).__name__}")
    if group.comm is None:
        raise RuntimeError(f"{what}: the group {group!r} was destroyed")
    return group


def get_rank(group=None) -> int:
    """This process's rank in `group` (default: the world); -1 if it is not a member."""
    if group is GroupMember.NON_GROUP_MEMBER:
        _require("get_rank")
        return -1
    return resolve_group(group, "get_rank").rank


def get_world_size(group=None) -> int:
    if group is GroupMember.NON_GROUP_MEMBER:
        _require("get_world_size")
        return -1
    return resolve_group(group, "get_world_size").size


def get_backend(group=None) -> str:
    return resolve_group(group, "get_backend").backend


def is_ucc_available() -> bool:
    return False        # kiln's backends are MPI and NCCL


def is_xccl_available() -> bool:
    return False


def supports_complex(reduceOp: str) -> bool:
    """Whether the reduce op is defined on complex tensors (ordering and bit ops are not)."""
    return reduceOp not in (ReduceOp.MAX, ReduceOp.MIN, ReduceOp.PRODUCT, ReduceOp.BAND,
                            ReduceOp.BOR, ReduceOp.BXOR)


def get_pg_count() -> int:
    """How many process groups exist: the default one and one per new_group call."""
    return _require("get_pg_count").group_count


def is_backend_available(backend: str) -> bool:
    """Whether `backend` ("mpi", "gloo", "nccl") can be used here."""
    name = str(backend).lower()
    if name in (Backend.MPI, Backend.GLOO):
        return is_available()
    return name == Backend.NCCL and is_nccl_available()


def get_backend_config(group=None) -> str:
    """Which backend each device type of `group` uses, as "device:backend" pairs: CPU tensors
    go through MPI, cuda tensors through NCCL where CuPy has it."""
    world = resolve_group(group, "get_backend_config")
    pairs = [f"cpu:{Backend.MPI}"]      # CPU tensors go through MPI under either backend
    if world.backend == Backend.NCCL or is_nccl_available():
        pairs.append("cuda:nccl")
    return ",".join(pairs)


def get_node_local_rank(fallback_rank: int | None = None) -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if fallback_rank is not None:
        return fallback_rank
    raise RuntimeError("LOCAL_RANK is not in the environment: start the job with "
                       "python -m kiln.distributed.run or call init_process_group first")


class _DefaultGroup:
    """`group.WORLD`, which stands for the default group in `group=` arguments; `size()` and
    `rank()` as on torch's ProcessGroup (DDP communication hooks written for torch call
    `group.WORLD.size()`)."""

    def size(self) -> int:
        return get_world_size()

    def rank(self) -> int:
        return get_rank()

    def __repr__(self) -> str:
        return "group.WORLD"


class GroupMember:
    WORLD = _DefaultGroup()      # stands for the default group in `group=` arguments
    NON_GROUP_MEMBER = object()     # what new_group returns on ranks outside the group


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


# ----------------------------------------------------------------------------- sub-groups

class ProcessGroup:
    """Some ranks of the world with their own MPI communicator (torch's ProcessGroup), made by
    `new_group`. Collectives take it as `group=`; ranks in their arguments (`src`, `dst`) are
    global ranks, as in torch, and `group_src` / `group_dst` are ranks within the group."""

    def __init__(self, world: _World, comm, ranks: tuple[int, ...]):
        from kiln.distributed.mpi_backend import MPIBackend
        self.backend, self.comm, self.ranks = world.backend, comm, ranks
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.mpi, self.nccl, self.checks = MPIBackend(comm), None, world.checks

    def _free(self) -> None:
        if self.comm is not None:
            if self.nccl is not None:
                self.nccl.close()
            self.comm.Free()
            self.comm = None

    def __repr__(self) -> str:
        return f"ProcessGroup(ranks={list(self.ranks)})"


def new_group(ranks=None, timeout=None, backend=None, pg_options=None,
              use_local_synchronization: bool = False, group_desc: str | None = None,
              device_id=None) -> "ProcessGroup | object":
    """A group of some of the world's ranks (torch.distributed.new_group).

    As in torch, every rank of the world must call new_group for every group, members or not,
    in the same order: it is MPI_Comm_create over the world, collective on all ranks. Returns
    the ProcessGroup on its members and GroupMember.NON_GROUP_MEMBER on the others.
    """
    world = _require("new_group")
    world.group_count += 1
    if use_local_synchronization:
        raise ValueError("new_group: use_local_synchronization=True is not supported; every "
                         "rank calls new_group (MPI_Comm_create is collective on the world)")
    ranks = tuple(range(world.size)) if ranks is None else tuple(int(r) for r in ranks)
    if len(set(ranks)) != len(ranks) or any(not 0 <= r < world.size for r in ranks):
        raise ValueError(f"new_group: ranks {list(ranks)} must be distinct ranks of the world "
                         f"(0 to {world.size - 1})")
    ranks = tuple(sorted(ranks))            # torch orders a group's ranks by global rank
    if world.checks and world.size > 1:
        _check_same_group(world, ranks)
    everyone = world.comm.Get_group()
    members = everyone.Incl(list(ranks))
    comm = world.comm.Create(members)
    members.Free()
    everyone.Free()
    if world.rank not in ranks:
        return GroupMember.NON_GROUP_MEMBER
    group = ProcessGroup(world, comm, ranks)
    if world.groups is None:
        world.groups = []
    world.groups.append(group)
    return group


def new_subgroups(group_size: int | None = None, group=None, timeout=None, backend=None,
                  pg_options=None, group_desc: str | None = None) -> tuple:
    """The world cut into groups of `group_size` consecutive ranks (every rank must call):
    (this rank's group, every group, NON_GROUP_MEMBER where this rank is not in it)."""
    world = _require("new_subgroups")
    if group is not None and group is not GroupMember.WORLD:
        raise NotImplementedError("new_subgroups: kiln divides the default group only "
                                  "(group=None)")
    if group_size is None:
        raise ValueError("new_subgroups: give group_size (torch's default, the GPUs per "
                         "node, is for CUDA jobs)")
    if not 0 < group_size <= world.size or world.size % group_size:
        raise ValueError(f"new_subgroups: group_size={group_size} must be positive and divide "
                         f"the world size {world.size}")
    return new_subgroups_by_enumeration(
        [list(range(start, start + group_size)) for start in range(0, world.size, group_size)])


def new_subgroups_by_enumeration(ranks_per_subgroup_list, timeout=None, backend=None,
                                 pg_options=None, group_desc: str | None = None) -> tuple:
    """One group per list of ranks (every rank must call): (this rank's group or None, every
    group, NON_GROUP_MEMBER where this rank is not in it)."""
    world = _require("new_subgroups_by_enumeration")
    if not ranks_per_subgroup_list:
        raise ValueError("new_subgroups_by_enumeration: the list of subgroups' ranks is empty")
    seen: dict[int, int] = {}
    for i, ranks in enumerate(ranks_per_subgroup_list):
        for rank in ranks:
            if rank in seen:
                raise ValueError(f"new_subgroups_by_enumeration: rank {rank} is in subgroup "
                                 f"{seen[rank]} and subgroup {i}; a rank may be in one only")
            seen[rank] = i
    mine, groups = None, []
    for ranks in ranks_per_subgroup_list:
        groups.append(new_group(ranks))
        if world.rank in ranks:
            mine = groups[-1]
    return mine, groups


def _check_same_group(world: _World, ranks: tuple[int, ...]) -> None:
    """Every rank must be creating the same group now, or MPI would pair up different calls."""
    import numpy as np
    row = np.zeros(world.size + 1, dtype=np.int64)
    row[0] = len(ranks)
    row[1:1 + len(ranks)] = ranks
    rows = np.empty((world.size, row.size), dtype=np.int64)
    world.comm.Allgather(row, rows)
    for r in range(world.size):
        if not np.array_equal(rows[r], row):
            theirs = [int(v) for v in rows[r, 1:1 + int(rows[r, 0])]]
            raise RuntimeError(f"new_group: rank {world.rank} is creating the group of ranks "
                               f"{list(ranks)} while rank {r} is creating {theirs}; every rank "
                               "must call new_group for every group, in the same order")


def get_process_group_ranks(group) -> list[int]:
    """The global ranks of `group`, in group-rank order."""
    if group is None or group is GroupMember.WORLD:
        return list(range(_require("get_process_group_ranks").size))
    return list(resolve_group(group, "get_process_group_ranks").ranks)


def get_group_rank(group, global_rank: int) -> int:
    """`global_rank`'s rank within `group`."""
    ranks = get_process_group_ranks(group)
    if global_rank not in ranks:
        raise ValueError(f"get_group_rank: global rank {global_rank} is not in the group "
                         f"{ranks}")
    return ranks.index(global_rank)


def get_global_rank(group, group_rank: int) -> int:
    """The global rank of `group`'s rank `group_rank`."""
    ranks = get_process_group_ranks(group)
    if not 0 <= group_rank < len(ranks):
        raise ValueError(f"get_global_rank: group rank {group_rank} is out of range for a "
                         f"group of {len(ranks)} ranks")
    return ranks[group_rank]
