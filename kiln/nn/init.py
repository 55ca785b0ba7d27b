"""`kiln.nn.init`: in-place weight initializers with PyTorch's formulas and defaults."""

from __future__ import annotations

import math

import kiln
from kiln import Tensor


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, as in PyTorch's table."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d")
    if nonlinearity in linear or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    if tensor.ndim < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 "
                         "dimensions")
    receptive = math.prod(tensor.shape[2:]) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _calculate_correct_fan(tensor: Tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _write(tensor: Tensor, values: Tensor) -> Tensor:
    # initializers write into a leaf that requires grad: allowed only outside autograd
    with kiln.no_grad():
        return tensor.copy_(values.to(tensor.dtype))


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator=None) -> Tensor:
    with kiln.no_grad():
        return tensor.uniform_(a, b, generator=generator)


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> Tensor:
    with kiln.no_grad():
        return tensor.normal_(mean, std, generator=generator)


def constant_(tensor: Tensor, val: float) -> Tensor:
    with kiln.no_grad():
        return tensor.fill_(val)


def zeros_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 0.0)


def ones_(tensor: Tensor) -> Tensor:
    return constant_(tensor, 1.0)


def eye_(tensor: Tensor) -> Tensor:
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    return _write(tensor, kiln.eye(*tensor.shape, dtype=tensor.dtype, device=tensor.device))


def dirac_(tensor: Tensor, groups: int = 1) -> Tensor:
    if tensor.ndim not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    out_per_group = tensor.shape[0] // groups
    min_dim = min(out_per_group, tensor.shape[1])
    values = kiln.zeros(*tensor.shape, dtype=tensor.dtype, device=tensor.device)
    centre = tuple(s // 2 for s in tensor.shape[2:])
    with kiln.no_grad():
        for g in range(groups):
            for d in range(min_dim):
                values[(g * out_per_group + d, d) + centre] = 1.0
    return _write(tensor, values)


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return normal_(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor: Tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    if 0 in tuple(tensor.shape):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0, generator=None) -> Tensor:
    """Normal(mean, std) restricted to [a, b] by rejection, with PyTorch's draws: when [a, b]
    holds more than 30% of the mass, whole-tensor normal draws replace the entries outside;
    otherwise uniform proposals on [a, b] are accepted with the density's ratio to its peak."""
    def cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    def log_ratio(values):                  # log of the density over its peak on [a, b]
        return values.sub(mean).div_(std).pow_(2).mul_(-0.5).sub_(log_peak)
    with kiln.no_grad():
        if cdf((b - mean) / std) - cdf((a - mean) / std) > 0.3:
            low, high = (kiln.tensor(v, dtype=tensor.dtype).item() for v in (a, b))
            result = tensor.normal_(mean, std, generator=generator)
            while True:
                outside = (result < low) | (result > high)
                if not bool(outside.any()):
                    break
                result = kiln.where(outside, kiln.empty_like(result).normal_(
                    mean, std, generator=generator), result)
            return tensor if result is tensor else tensor.copy_(result)
        mode = max(a, min(mean, b))
        log_peak = -0.5 * ((mode - mean) / std) ** 2
        tensor.uniform_(a, b, generator=generator)
        pending = kiln.empty_like(tensor).uniform_(generator=generator).log_() \
            .gt(log_ratio(tensor))
        result = tensor
        while bool(pending.any()):
            proposal = kiln.empty_like(tensor).uniform_(a, b, generator=generator)
            result = kiln.where(pending, proposal, result)
            accept = kiln.empty_like(tensor).uniform_(generator=generator).log_() \
                .gt(log_ratio(proposal))
            pending = kiln.where(pending, accept, pending)
        return tensor if result is tensor else tensor.copy_(result)


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """A (semi-)orthogonal matrix from a Gaussian one by Gram-Schmidt (QR with R's diagonal
    positive, the same Q PyTorch's sign-corrected QR gives)."""
    if tensor.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")
    if tensor.numel() == 0:
        return tensor
    rows, cols = tensor.shape[0], tensor.numel() // tensor.shape[0]
    with kiln.no_grad():
        # PyTorch's draws (normal_ in the tensor's dtype); the basis is built in float64
        flat = kiln.empty((rows, cols), dtype=tensor.dtype, device=tensor.device)
        flat = flat.normal_(0, 1, generator=generator).double()
        a = flat.t() if rows < cols else flat               # tall: (n, k) with n >= k
        basis = []
        for j in range(a.shape[1]):
            v = a[:, j]
            # twice is enough (Kahan's "twice is enough") for orthogonality in float64
            for _ in range(2):
                if basis:
                    q = kiln.stack(basis, dim=1)
                    v = v - kiln.matmul(q, kiln.matmul(q.t(), v))
            basis.append(v / kiln.sqrt((v * v).sum()))
        q = kiln.stack(basis, dim=1)
        if rows < cols:
            q = q.t()
        values = (q * gain).reshape(tuple(tensor.shape))
    return _write(tensor, values)


def sparse_(tensor: Tensor, sparsity: float, std: float = 0.01, generator=None) -> Tensor:
    """Normal(0, std) values with `ceil(sparsity * rows)` zeros per column, at rows a fresh
    permutation picks (PyTorch's draws, the permutations from the global generator)."""
    if tensor.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rows, cols = tensor.shape
    zeros_per_col = int(math.ceil(sparsity * rows))
    with kiln.no_grad():
        tensor.normal_(0, std, generator=generator)
        for col in range(cols):
            tensor[kiln.randperm(rows)[:zeros_per_col], col] = 0
    return tensor


# PyTorch's deprecated spellings without the trailing underscore
uniform, normal, constant = uniform_, normal_, constant_
xavier_uniform, xavier_normal = xavier_uniform_, xavier_normal_
kaiming_uniform, kaiming_normal, orthogonal = kaiming_uniform_, kaiming_normal_, orthogonal_
dirac, eye, sparse = dirac_, eye_, sparse_
