"""`kiln.nn`: PyTorch-compatible layers, losses and containers, composed from kiln tensor ops."""

from kiln.nn.parameter import Parameter, Buffer  # noqa: F401
from kiln.nn.module import Module  # noqa: F401
from kiln.nn.containers import (  # noqa: F401
    Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict)
from kiln.nn.linear import Identity, Linear, Bilinear, Flatten, Unflatten  # noqa: F401
from kiln.nn.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d  # noqa: F401
from kiln.nn.pooling import (  # noqa: F401
    MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d, AdaptiveAvgPool1d, AdaptiveAvgPool2d)
from kiln.nn.normalization import (  # noqa: F401
    BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm, GroupNorm, RMSNorm)
from kiln.nn.dropout import Dropout, Dropout1d, Dropout2d  # noqa: F401
from kiln.nn.sparse import Embedding  # noqa: F401
from kiln.nn.activation import (  # noqa: F401
    ReLU, ReLU6, LeakyReLU, ELU, SELU, GELU, SiLU, Mish, Softplus, Sigmoid, Tanh, LogSigmoid,
    Hardtanh, Hardsigmoid, Hardswish, Softsign, Softmax, LogSoftmax, Softmin, GLU)
from kiln.nn.rnn import (  # noqa: F401
    RNNBase, RNN, LSTM, GRU, RNNCellBase, RNNCell, LSTMCell, GRUCell)
from kiln.nn.transformer import (  # noqa: F401
    MultiheadAttention, TransformerEncoderLayer, TransformerEncoder)
from kiln.nn.loss import (  # noqa: F401
    MSELoss, L1Loss, SmoothL1Loss, HuberLoss, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss,
    NLLLoss, KLDivLoss, PoissonNLLLoss)
from kiln.nn import functional, grad, init, utils  # noqa: F401
from kiln.nn import parallel  # noqa: F401,E402
from kiln.nn.parallel import DataParallel  # noqa: F401,E402
from kiln.nn.sync_batchnorm import SyncBatchNorm  # noqa: F401,E402
from kiln.nn.dropout import Dropout3d, AlphaDropout, FeatureAlphaDropout  # noqa: F401,E402
from kiln.nn.pixelshuffle import PixelShuffle, PixelUnshuffle, ChannelShuffle  # noqa: F401,E402
from kiln.nn.transformer_decoder import (  # noqa: F401,E402
    Transformer, TransformerDecoder, TransformerDecoderLayer)
from kiln.nn.activation import (  # noqa: F401,E402
    CELU, Threshold, Hardshrink, Softshrink, Tanhshrink, PReLU, RReLU, Softmax2d)
from kiln.nn.loss_margin import (  # noqa: F401,E402
    NLLLoss2d, GaussianNLLLoss, MarginRankingLoss, HingeEmbeddingLoss, CosineEmbeddingLoss,
    MultiLabelMarginLoss, MultiLabelSoftMarginLoss, SoftMarginLoss, MultiMarginLoss,
    TripletMarginLoss, TripletMarginWithDistanceLoss, CTCLoss)
from kiln.nn.conv3d import Conv3d, ConvTranspose3d  # noqa: F401,E402
from kiln.nn.fold import Fold, Unfold  # noqa: F401,E402
from kiln.nn.padding import (  # noqa: F401,E402
    ConstantPad1d, ConstantPad2d, ConstantPad3d, ZeroPad1d, ZeroPad2d, ZeroPad3d,
    ReflectionPad1d, ReflectionPad2d, ReflectionPad3d, ReplicationPad1d, ReplicationPad2d,
    ReplicationPad3d, CircularPad1d, CircularPad2d, CircularPad3d)
from kiln.nn.pooling import (  # noqa: F401,E402
    MaxPool3d, AvgPool3d, AdaptiveAvgPool3d, AdaptiveMaxPool1d, AdaptiveMaxPool2d,
    AdaptiveMaxPool3d, LPPool1d, LPPool2d, LPPool3d, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d)
from kiln.nn.upsampling import Upsample, UpsamplingNearest2d, UpsamplingBilinear2d  # noqa
from kiln.nn.instancenorm import (  # noqa: F401,E402
    InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LocalResponseNorm, CrossMapLRN2d)
from kiln.nn.distance import PairwiseDistance, CosineSimilarity  # noqa: F401,E402
from kiln.nn.embedding_bag import EmbeddingBag  # noqa: F401,E402
from kiln.nn.parameter import UninitializedParameter, UninitializedBuffer  # noqa: F401,E402
from kiln.nn.lazy import (  # noqa: F401,E402
    LazyLinear, LazyConv1d, LazyConv2d, LazyConv3d, LazyConvTranspose1d, LazyConvTranspose2d,
    LazyConvTranspose3d, LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazyInstanceNorm1d,
    LazyInstanceNorm2d, LazyInstanceNorm3d)
from kiln.nn.linear_cross_entropy import (  # noqa: F401,E402
    LinearCrossEntropyLoss, LinearCrossEntropyOptions)
from kiln.nn.adaptive import AdaptiveLogSoftmaxWithLoss  # noqa: F401,E402
from kiln.nn.data_parallel import factory_kwargs  # noqa: F401,E402
from kiln.nn.pooling import FractionalMaxPool2d, FractionalMaxPool3d  # noqa: F401,E402


def __getattr__(name: str):
    # `torch.nn.modules` (PyTorch's file paths, re-exporting the names above) loads on first
    # use: it imports this package, which therefore does not import it (no import cycle)
    if name == "modules":
        import importlib
        return importlib.import_module("kiln.nn.modules")
    if name in ("quantized", "intrinsic"):     # torch.nn.quantized: torch.ao.nn's older name
        import importlib
        return importlib.import_module(f"kiln.ao.nn.{name}")
    raise AttributeError(f"module 'kiln.nn' has no attribute '{name}'")
from kiln.nn import attention  # noqa: F401,E402
