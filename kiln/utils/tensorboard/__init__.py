"""`kiln.utils.tensorboard`: `SummaryWriter`, as `torch.utils.tensorboard` (needs the
tensorboard package)."""

from kiln.utils.tensorboard.writer import SummaryWriter  # noqa: F401

__all__ = ["SummaryWriter"]
