"""Known departures from PyTorch's OpInfo samples: the torch namespace and Tensor
methods: reductions, creation, random draws, conversions, arithmetic.

Each entry is (op, mode): what `tests/opinfo_sweep.py` found. `tests/test_opinfo.py` fails when
an op not listed here departs from torch, and when a listed one no longer does (then delete
its line). Modes: float32 and int64 values, float64 values and gradients.

`COMPARE` maps an op whose correct result is not unique (signs of singular vectors, indices of
ties) to `fn(kiln_out, torch_out, torch_args, compare) -> None or why`, used instead of the
element-wise comparison; `compare(k, t, what)` is that comparison."""

import numpy as np

from tests.torch_streams import pytorch_uses_mkl_stream


def _drawn_elsewhere(check):
    """A comparison for a random op whose numbers PyTorch draws from MKL's generator on Intel
    CPUs (`tests/torch_streams.py`), where kiln's (PyTorch's Mersenne Twister stream, as on
    every other CPU) cannot match them: structure, shape and dtype as torch's, and
    `check(values, torch_args)` (what any draw must satisfy) instead of equal values."""
    def compare_draws(k, t, args, compare):
        why = compare(k.detach().mul(0), t.detach().mul(0), "output")   # shape, dtype
        if why:
            return why
        return check(np.asarray(k.detach().numpy()), args)
    return compare_draws


def _exponential(values, args):
    if not (np.isfinite(values).all() and (values >= 0).all()):
        return "output: exponential draws outside [0, inf)"
    return None


def _multinomial(values, args):
    probs = args[0].detach().numpy().reshape(-1, args[0].shape[-1])
    rows = values.reshape(probs.shape[0], -1)
    if ((rows < 0) | (rows >= probs.shape[-1])).any():
        return "output: multinomial indices outside the categories"
    if (np.take_along_axis(probs, rows, -1) <= 0).any():
        return "output: multinomial picked a category of probability 0"
    return None


COMPARE = {"exponential": _drawn_elsewhere(_exponential),
           "multinomial": _drawn_elsewhere(_multinomial)} if pytorch_uses_mkl_stream() else {}

KNOWN = {
    ('chalf', 'float32'): 'n/a: no complex32, so no Tensor.chalf (tests/api_exclusions.py)',
    ('chalf', 'int64'): 'n/a: no complex32, so no Tensor.chalf (tests/api_exclusions.py)',
    ('chalf', 'float64_grad'): 'n/a: no complex32, so no Tensor.chalf (tests/api_exclusions.py)',
    ('jiterator_2inputs_2outputs', 'float32'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_2inputs_2outputs', 'int64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_2inputs_2outputs', 'float64_grad'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_4inputs_with_extra_args', 'float32'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_4inputs_with_extra_args', 'int64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_4inputs_with_extra_args', 'float64_grad'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary', 'float32'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary', 'int64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary', 'float64_grad'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary_return_by_ref', 'float32'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary_return_by_ref', 'int64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary_return_by_ref', 'float64_grad'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_unary', 'float32'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_unary', 'int64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_unary', 'float64_grad'): 'n/a: CUDA-only (torch.cuda.jiterator)',
}
