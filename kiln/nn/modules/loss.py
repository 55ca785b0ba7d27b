"""`torch.nn.modules.loss` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.linear_cross_entropy import LinearCrossEntropyLoss  # noqa: F401
from kiln.nn.loss import (  # noqa: F401
    _Loss, _WeightedLoss, L1Loss, NLLLoss, PoissonNLLLoss, KLDivLoss, MSELoss, BCELoss,
    BCEWithLogitsLoss, SmoothL1Loss, HuberLoss, CrossEntropyLoss)
from kiln.nn.loss_margin import (  # noqa: F401
    NLLLoss2d, GaussianNLLLoss, HingeEmbeddingLoss, MultiLabelMarginLoss, SoftMarginLoss,
    MultiLabelSoftMarginLoss, CosineEmbeddingLoss, MarginRankingLoss, MultiMarginLoss,
    TripletMarginLoss, TripletMarginWithDistanceLoss, CTCLoss)
