"""Utilities beside the tensor core: data loading (`kiln.utils.data`)."""

from kiln.utils import data  # noqa: F401
from kiln.utils import checkpoint  # noqa: F401  (torch.utils.checkpoint)
from kiln.utils import benchmark  # noqa: F401  (torch.utils.benchmark's Timer)
