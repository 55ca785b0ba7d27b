"""`torch.nn.modules`: PyTorch's module-file import paths over kiln's layers
(`from torch.nn.modules.loss import _Loss`, `torch.nn.modules.conv.Conv2d`, ...); each submodule
re-exports kiln's classes under the name of the PyTorch file that defines them."""

from kiln.nn import (  # noqa: F401
    AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, AdaptiveLogSoftmaxWithLoss,
    AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d, AlphaDropout, AvgPool1d,
    AvgPool2d, AvgPool3d, BCELoss, BCEWithLogitsLoss, BatchNorm1d, BatchNorm2d, BatchNorm3d,
    Bilinear, CELU, CTCLoss, ChannelShuffle, CircularPad1d, CircularPad2d, CircularPad3d,
    ConstantPad1d, ConstantPad2d, ConstantPad3d, Conv1d, Conv2d, Conv3d, ConvTranspose1d,
    ConvTranspose2d, ConvTranspose3d, CosineEmbeddingLoss, CosineSimilarity, CrossEntropyLoss,
    CrossMapLRN2d, Dropout, Dropout1d, Dropout2d, Dropout3d, ELU, Embedding, EmbeddingBag,
    FeatureAlphaDropout, Flatten, Fold, FractionalMaxPool2d, FractionalMaxPool3d, GELU, GLU,
    GRU, GRUCell, GaussianNLLLoss, GroupNorm, Hardshrink, Hardsigmoid, Hardswish, Hardtanh,
    HingeEmbeddingLoss, HuberLoss, Identity, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,
    KLDivLoss, L1Loss, LPPool1d, LPPool2d, LPPool3d, LSTM, LSTMCell, LayerNorm,
    LazyBatchNorm1d, LazyBatchNorm2d, LazyBatchNorm3d, LazyConv1d, LazyConv2d, LazyConv3d,
    LazyConvTranspose1d, LazyConvTranspose2d, LazyConvTranspose3d, LazyInstanceNorm1d,
    LazyInstanceNorm2d, LazyInstanceNorm3d, LazyLinear, LeakyReLU, Linear,
    LinearCrossEntropyLoss, LinearCrossEntropyOptions, LocalResponseNorm, LogSigmoid,
    LogSoftmax, MSELoss, MarginRankingLoss, MaxPool1d, MaxPool2d, MaxPool3d, MaxUnpool1d,
    MaxUnpool2d, MaxUnpool3d, Mish, Module, ModuleDict, ModuleList, MultiLabelMarginLoss,
    MultiLabelSoftMarginLoss, MultiMarginLoss, MultiheadAttention, NLLLoss, NLLLoss2d, PReLU,
    PairwiseDistance, ParameterDict, ParameterList, PixelShuffle, PixelUnshuffle,
    PoissonNLLLoss, RMSNorm, RNN, RNNBase, RNNCell, RNNCellBase, RReLU, ReLU, ReLU6,
    ReflectionPad1d, ReflectionPad2d, ReflectionPad3d, ReplicationPad1d, ReplicationPad2d,
    ReplicationPad3d, SELU, Sequential, SiLU, Sigmoid, SmoothL1Loss, SoftMarginLoss, Softmax,
    Softmax2d, Softmin, Softplus, Softshrink, Softsign, Tanh, Tanhshrink, Threshold,
    Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
    TransformerEncoderLayer, TripletMarginLoss, TripletMarginWithDistanceLoss, Unflatten,
    Unfold, Upsample, UpsamplingBilinear2d, UpsamplingNearest2d, ZeroPad1d, ZeroPad2d,
    ZeroPad3d)
from kiln.nn.modules import (  # noqa: F401,E402
    activation, adaptive, batchnorm, channelshuffle, container, conv, distance, dropout,
    flatten, fold, instancenorm, lazy, linear, linear_cross_entropy_options, loss, module,
    normalization, padding, pixelshuffle, pooling, rnn, sparse, transformer, upsampling, utils)
