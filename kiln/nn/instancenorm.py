"""Instance normalization (per sample and channel over the spatial dims) and local response
normalization (across neighbouring channels)."""

from __future__ import annotations

import kiln
from kiln import Tensor
from kiln.nn import functional as F
from kiln.nn.module import Module
from kiln.nn.normalization import _affine_parameters


class _InstanceNorm(Module):
    batched_ndim = 3

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        kw = {"dtype": dtype, "device": device}
        # PyTorch 2.13's `bias=False` keeps an affine weight without a bias
        _affine_parameters(self, (num_features,), affine, bias, device, dtype)
        if track_running_stats:
            self.register_buffer("running_mean", kiln.zeros(num_features, **kw))
            self.register_buffer("running_var", kiln.ones(num_features, **kw))
            self.register_buffer("num_batches_tracked", kiln.tensor(0, dtype=kiln.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            with kiln.no_grad():
                self.weight.fill_(1)
                if self.bias is not None:
                    self.bias.zero_()

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim not in (self.batched_ndim - 1, self.batched_ndim):
            raise ValueError(f"{type(self).__name__}: expected {self.batched_ndim - 1}D or "
                             f"{self.batched_ndim}D input (got {input.ndim}D input)")
        unbatched = input.ndim == self.batched_ndim - 1
        x = input.unsqueeze(0) if unbatched else input
        use_input_stats = self.training or not self.track_running_stats
        out = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              use_input_stats, self.momentum if self.momentum is not None
                              else 0.1, self.eps)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class InstanceNorm1d(_InstanceNorm):
    batched_ndim = 3


class InstanceNorm2d(_InstanceNorm):
    batched_ndim = 4


class InstanceNorm3d(_InstanceNorm):
    batched_ndim = 5


class LocalResponseNorm(Module):
    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Tensor) -> Tensor:
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class CrossMapLRN2d(LocalResponseNorm):
    """The legacy cross-channel LRN of (N, C, H, W) inputs: x * (k + alpha/size * S)^-beta.

    S sums squares over PyTorch's legacy running window, which differs from
    LocalResponseNorm's: channel c sees channels up to c + (size - 1)//2 + ... as PyTorch's
    running add/remove loop leaves them, channel 0 included in every window.
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim != 4:
            raise ValueError(f"CrossMapLRN2d: Expected input to be 4D, got {input.ndim}D "
                             f"instead.")
        channels = input.shape[1]
        window = _legacy_lrn_window(channels, self.size)
        squares = (input * input).movedim(1, -1)
        total = kiln.matmul(squares, kiln.tensor(window.T.astype(input.dtype.np),
                                                  device=input.device)).movedim(-1, 1)
        return input * (total * (self.alpha / self.size) + self.k) ** (-self.beta)


def _legacy_lrn_window(channels: int, size: int):
    """(C, C) 0/1 matrix: row c marks the channels PyTorch's legacy loop sums for channel c."""
    import numpy as np
    pre_pad = int((size - 1) / 2 + 1)
    window = np.zeros((channels, channels))
    window[0, :min(pre_pad, channels)] = 1
    for c in range(1, channels):
        window[c] = window[c - 1]
        if c < channels - pre_pad + 1:
            window[c, c + pre_pad - 1] += 1
        if c > pre_pad:
            window[c, c - pre_pad] -= 1
    return window
