"""`torch.nn.modules.sparse` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.embedding_bag import EmbeddingBag  # noqa: F401
from kiln.nn.sparse import Embedding  # noqa: F401
