"""`kiln.distributed.rpc`: torch.distributed.rpc over MPI: remote calls (`rpc_sync`,
`rpc_async`, `remote`), remote references (`RRef`) and `functions.async_execution`.

Workers are the ranks of one MPI job (`mpiexec -n N python script.py`); each calls `init_rpc`.
"""

from kiln.distributed.rpc import functions  # noqa: F401
from kiln.distributed.rpc.api import (  # noqa: F401
    DEFAULT_RPC_TIMEOUT_SEC, UNSET_RPC_TIMEOUT, BackendType, RpcBackendOptions, RRef,
    TensorPipeRpcBackendOptions, WorkerInfo, get_worker_info, init_rpc, remote, rpc_async,
    rpc_sync, shutdown)
from kiln.distributed.rpc.agent import RemoteError  # noqa: F401


def is_available() -> bool:
    from kiln.distributed.process_group import is_available as mpi_available
    return mpi_available()
