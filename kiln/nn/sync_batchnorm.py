"""SyncBatchNorm: batch normalization whose training statistics span every rank's batch.

Each rank sums its batch per channel (sum, sum of squares, count), one all-reduce makes the
global sums, and the layer normalizes with the global mean and variance, so the forward pass
and the gradients equal BatchNorm's on the concatenation of all ranks' batches. The gradient
that reaches the global sums is all-reduced in backward (a hook), because every rank's loss
depends on every rank's inputs through them.
"""

from __future__ import annotations

import kiln
import kiln.distributed as dist
from kiln import Tensor
from kiln.nn.module import Module
from kiln.nn.normalization import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm over kiln's default process group (N, C, *) inputs."""

    _expected_dims = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        if process_group is not None and process_group is not dist.GroupMember.WORLD:
            raise ValueError("SyncBatchNorm: kiln supports only the default process group")
        self.process_group = None

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            with kiln.no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        dims = [0] + list(range(2, input.ndim))
        local_count = input.numel() // c
        stats = kiln.cat([input.sum(dims), (input * input).sum(dims),
                          input.new_full((1,), float(local_count))])
        with kiln.no_grad():
            total = stats.detach().clone()
            dist.all_reduce(total)
        # forward value: the global sums; gradient: reaches the local sums, summed over ranks
        stats = stats + (total - stats.detach())
        if stats.requires_grad:
            stats.register_hook(_all_reduce_gradient)
        count = float(total[2 * c])
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{count:.0f} over all ranks")
        mean = stats[:c] / count
        var = stats[c:2 * c] / count - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with kiln.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach(),
                                                       alpha=factor * count / (count - 1))
        shape = (1, c) + (1,) * (input.ndim - 2)
        out = (input - mean.reshape(shape)) * kiln.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.reshape(shape)
        if self.bias is not None:
            out = out + self.bias.reshape(shape)
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """`module` with every BatchNorm*d replaced by a SyncBatchNorm sharing its parameters
        and buffers (the module itself if it is one)."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                with kiln.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


def _all_reduce_gradient(grad: Tensor) -> Tensor:
    summed = grad.clone()
    dist.all_reduce(summed)
    return summed


__all__ = ["SyncBatchNorm"]
