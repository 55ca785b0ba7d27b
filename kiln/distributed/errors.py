"""The exceptions torch.distributed raises (DistError and its kinds), so that scripts catching
them work on kiln: each is a RuntimeError, as in torch."""


class DistError(RuntimeError):
    """An error of the distributed package."""


class DistBackendError(DistError):
    """A collective backend (MPI, NCCL) failed."""


class DistNetworkError(DistError):
    """Ranks could not reach each other."""


class DistStoreError(DistError):
    """A key-value store operation failed, e.g. a key was not set before the timeout."""


class QueueEmptyError(DistStoreError):
    """A non-blocking `queue_pop` found the store's queue empty."""
