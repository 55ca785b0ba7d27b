"""`torch.fx.experimental`: the parts training scripts import (`optimization.fuse`)."""

from kiln.fx.experimental import optimization  # noqa: F401
