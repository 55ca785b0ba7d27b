"""`torch.nn.modules.distance` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.distance import PairwiseDistance, CosineSimilarity  # noqa: F401
