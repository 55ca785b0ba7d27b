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
    ('__rdiv__', 'float32'): 'missing',
    ('__rdiv__', 'int64'): 'missing',
    ('__rdiv__', 'float64_grad'): 'missing',
    ('__rmatmul__', 'float32'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid for inp",
    ('__rmatmul__', 'int64'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid for input",
    ('__rmatmul__', 'float64_grad'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid fo",
    ('bfloat16', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'me",
    ('bfloat16', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memo",
    ('bfloat16', 'float64_grad'): 'error: TypeError: <lambda>() got an unexpected keyword argumen',
    ('bool', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('bool', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_f",
    ('bool', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'm",
    ('byte', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('byte', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_f",
    ('byte', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'm",
    ('cdist', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of tensors does no',
    ('cdouble', 'float32'): "error: TypeError: 'DType' object is not callable",
    ('cdouble', 'int64'): "error: TypeError: 'DType' object is not callable",
    ('cdouble', 'float64_grad'): "error: TypeError: 'DType' object is not callable",
    ('cfloat', 'float32'): "error: TypeError: 'DType' object is not callable",
    ('cfloat', 'int64'): "error: TypeError: 'DType' object is not callable",
    ('cfloat', 'float64_grad'): "error: TypeError: 'DType' object is not callable",
    ('chalf', 'float32'): "error: AttributeError: 'Tensor' object has no attribute 'chalf'",
    ('chalf', 'int64'): "error: AttributeError: 'Tensor' object has no attribute 'chalf'",
    ('chalf', 'float64_grad'): "error: AttributeError: 'Tensor' object has no attribute 'chalf'",
    ('char', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('char', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_f",
    ('char', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'm",
    ('combinations', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of tensors ',
    ('div.floor_rounding', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of te',
    ('double', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memo",
    ('double', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('double', 'float64_grad'): 'error: TypeError: <lambda>() got an unexpected keyword argument ',
    ('einsum', 'float32'): "error: RuntimeError: einsum: output subscript '...' repeats a label",
    ('einsum', 'int64'): "error: RuntimeError: einsum: output subscript '...' repeats a label",
    ('einsum', 'float64_grad'): "error: RuntimeError: einsum: output subscript '...' repeats a la",
    ('fill', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of tensors does not',
    ('float', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memor",
    ('float', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_",
    ('float', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument '",
    ('frexp', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of tensors does no',
    ('half', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('half', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_f",
    ('half', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'm",
    ('hash_tensor', 'float32'): 'missing',
    ('hash_tensor', 'int64'): 'missing',
    ('hash_tensor', 'float64_grad'): 'missing',
    ('heaviside', 'float32'): 'error: RuntimeError: expand: The expanded size of the tensor (1) m',
    ('heaviside', 'int64'): 'error: RuntimeError: expand: The expanded size of the tensor (1) mus',
    ('heaviside', 'float64_grad'): 'error: RuntimeError: expand: The expanded size of the tensor ',
    ('inner', 'float32'): 'error: RuntimeError: dot: 1D tensors expected, but got 0D and 2D tenso',
    ('inner', 'int64'): 'error: RuntimeError: dot: 1D tensors expected, but got 0D and 2D tensors',
    ('inner', 'float64_grad'): 'error: RuntimeError: dot: 1D tensors expected, but got 0D and 2D ',
    ('int', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_",
    ('int', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_fo",
    ('int', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'me",
    ('jiterator_2inputs_2outputs', 'float32'): 'missing',
    ('jiterator_2inputs_2outputs', 'int64'): 'missing',
    ('jiterator_2inputs_2outputs', 'float64_grad'): 'missing',
    ('jiterator_4inputs_with_extra_args', 'float32'): 'missing',
    ('jiterator_4inputs_with_extra_args', 'int64'): 'missing',
    ('jiterator_4inputs_with_extra_args', 'float64_grad'): 'missing',
    ('jiterator_binary', 'float32'): 'missing',
    ('jiterator_binary', 'int64'): 'missing',
    ('jiterator_binary', 'float64_grad'): 'missing',
    ('jiterator_binary_return_by_ref', 'float32'): 'missing',
    ('jiterator_binary_return_by_ref', 'int64'): 'missing',
    ('jiterator_binary_return_by_ref', 'float64_grad'): 'missing',
    ('jiterator_unary', 'float32'): 'missing',
    ('jiterator_unary', 'int64'): 'missing',
    ('jiterator_unary', 'float64_grad'): 'missing',
    ('long', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory",
    ('long', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_f",
    ('long', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument 'm",
    ('matmul', 'float32'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid for input of",
    ('matmul', 'int64'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid for input of s",
    ('matmul', 'float64_grad'): "error: RuntimeError: reshape: shape '[-1, 0]' is invalid for inp",
    ('nextafter', 'float64_grad'): 'error: grad: RuntimeError: backward: element 0 of tensors doe',
    ('short', 'float32'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memor",
    ('short', 'int64'): "error: TypeError: <lambda>() got an unexpected keyword argument 'memory_",
    ('short', 'float64_grad'): "error: TypeError: <lambda>() got an unexpected keyword argument '",
    ('sparse.sampled_addmm', 'float32'): 'missing',
    ('sparse.sampled_addmm', 'float64_grad'): 'missing',
    ('tensordot', 'float32'): "error: RuntimeError: reshape: shape '[1, 1]' is invalid for input ",
    ('tensordot', 'int64'): "error: RuntimeError: reshape: shape '[1, 1]' is invalid for input of",
    ('tensordot', 'float64_grad'): "error: RuntimeError: reshape: shape '[1, 1]' is invalid for i",
}
