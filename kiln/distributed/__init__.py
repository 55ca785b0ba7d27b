"""`kiln.distributed`: process groups and tensor collectives (torch.distributed), riding MPI
(mpi4py) for CPU tensors and NCCL (CuPy) for cuda tensors. Start ranks with
`python -m kiln.distributed.run --nproc-per-node N script.py` or `mpiexec -n N python script.py`.
"""

from kiln.distributed.process_group import (  # noqa: F401
    Backend, GroupMember, ReduceOp, destroy_process_group, get_backend, get_node_local_rank,
    get_rank, get_world_size, group, init_process_group, is_available, is_gloo_available,
    is_initialized, is_mpi_available, is_nccl_available, is_torchelastic_launched)
from kiln.distributed.collectives import (  # noqa: F401
    Work, all_gather, all_gather_into_tensor, all_gather_object, all_reduce, all_to_all_single,
    barrier, broadcast, broadcast_object_list, gather, irecv, isend, recv, reduce,
    reduce_scatter, reduce_scatter_tensor, scatter, send)
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh  # noqa: F401,E402
from kiln.distributed.process_group import get_default_backend_for_device  # noqa: F401,E402
from kiln.distributed.process_group import (  # noqa: F401,E402
    ProcessGroup, get_global_rank, get_group_rank, get_process_group_ranks, new_group)


def __getattr__(name: str):
    """`torch.distributed.rpc` (and .autograd, .optim, .nn, .checkpoint, .fsdp, ...) after
    `import torch.distributed`, as in torch: loaded on first use."""
    if name in ("rpc", "autograd", "optim", "nn", "checkpoint", "fsdp", "elastic",
                "algorithms", "device_mesh", "pipelining"):
        import importlib
        return importlib.import_module(f"kiln.distributed.{name}")
    raise AttributeError(f"module 'kiln.distributed' has no attribute '{name}'")
from kiln.distributed.reducer import GradBucket  # noqa: F401,E402
from kiln.distributed.collectives import (  # noqa: F401,E402
    P2POp, all_gather_coalesced, all_reduce_coalesced, all_to_all, batch_isend_irecv,
    gather_object, monitored_barrier, recv_object_list, scatter_object_list, send_object_list)
from kiln.distributed.process_group import (  # noqa: F401,E402
    default_pg_timeout, get_backend_config, get_pg_count, is_backend_available)
from kiln.distributed.errors import (  # noqa: F401,E402
    DistBackendError, DistError, DistNetworkError, DistStoreError, QueueEmptyError)
from kiln.distributed.store import (  # noqa: F401,E402
    FileStore, HashStore, PrefixStore, Store, TCPStore)
from kiln.distributed.debug import (  # noqa: F401,E402
    DebugLevel, breakpoint, get_debug_level, set_debug_level, set_debug_level_from_env)
from kiln.distributed.process_group import (  # noqa: F401,E402
    is_ucc_available, is_xccl_available, new_subgroups, new_subgroups_by_enumeration,
    supports_complex)
