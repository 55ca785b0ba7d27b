"""kiln: a small, readable deep-learning framework with a compiler inside.

`import kiln as torch` should run a typical PyTorch training script. This module only
re-exports; each name is defined in the layer that owns it (see DESIGN.md).
"""

from kiln.ir.dtypes import (bool_ as bool, uint8, int8, int16, int32, int64,  # noqa: F401
                            float16, float32, float64, DType as dtype, get_default_dtype, set_default_dtype)
from kiln.runtime.device import Device as device  # noqa: F401
from kiln.ir.dtypes import promote as _promote
from kiln.tracer.tensor import Tensor, Size  # noqa: F401
from kiln.tracer.layout import (memory_format, contiguous_format, channels_last,  # noqa: F401
                                channels_last_3d, preserve_format)
from kiln.tracer import methods as _methods  # noqa: F401  (binds ops onto Tensor)
from kiln.tracer import torch_function as _torch_function  # noqa: F401  (__torch_function__)
from kiln.tracer.autograd import (no_grad, enable_grad, set_grad_enabled,  # noqa: F401
                                  inference_mode, is_grad_enabled)
from kiln.tracer.functional import (  # noqa: F401
    add, sub, rsub, mul, div, true_divide, divide, floor_divide, remainder, fmod, pow,
    float_power, neg, negative, abs, absolute, sign, reciprocal, square, exp, exp2, log, log2,
    log10, log1p, expm1, sqrt, rsqrt, sin, cos, tan, tanh, sigmoid, erf, floor, ceil, trunc, fix,
    round, frac, maximum, minimum, clamp, clip, clamp_min, clamp_max, lerp, addcmul, addcdiv,
    hypot, eq, ne, lt, le, gt, ge, less, less_equal, greater, greater_equal, not_equal,
    logical_not, logical_and, logical_or, logical_xor, bitwise_and, bitwise_or, bitwise_xor,
    bitwise_not, isnan, isinf, isposinf, isneginf, isfinite, nan_to_num, allclose, isclose,
    equal, relu, sum, nansum, mean, nanmean, amax, amin, max, min, argmax, argmin, prod, var,
    std, var_mean, std_mean, logsumexp, all, any, count_nonzero, norm, dist, cumsum, cumprod,
    reshape, flatten, unflatten, squeeze, unsqueeze, permute, transpose, swapaxes, swapdims, t,
    movedim, moveaxis, broadcast_to, broadcast_tensors, repeat_interleave, tile, cat, concat,
    concatenate, stack, hstack, vstack, narrow, split, chunk, tensor_split, unbind, select, flip,
    fliplr, flipud, roll, tril, triu, diagonal, diag, trace, index_select, gather, scatter,
    scatter_add, index_add, index_fill, index_copy, masked_fill, masked_select, take,
    take_along_dim, nonzero, argwhere, matmul, mm, bmm, mv, dot, inner, outer, ger, addmm,
    baddbmm, einsum, tensordot, softmax, log_softmax, where, result_type, clone)
from kiln.tracer.creation import (  # noqa: F401
    tensor, as_tensor, asarray, from_numpy, full, zeros, ones, empty, zeros_like, ones_like,
    full_like, empty_like, arange, linspace, logspace, eye, Generator, default_generator,
    manual_seed, seed, initial_seed, get_rng_state, set_rng_state, rand, randn, rand_like,
    randn_like, randint, randint_like, randperm, multinomial, bernoulli, normal)
from kiln import autograd  # noqa: F401
from kiln import compiler  # noqa: F401
from kiln.compiler import compile  # noqa: F401
from kiln import cuda  # noqa: F401  (torch.cuda; its amp and nccl are modules)
from kiln.runtime.threads import set_num_threads, get_num_threads  # noqa: F401
from kiln.tracer.fused_optim import _fused_adam_, _fused_adamw_, _fused_sgd_  # noqa: F401
from kiln.tracer import foreach as _foreach  # noqa: E402
globals().update(_foreach.exports())        # torch._foreach_add_ & co.
from kiln.tracer.functional.rnn_cells import lstm as _lstm_cell  # noqa: F401  (nn.LSTM)
from kiln.tracer.functional.rnn_cells import gru as _gru_cell  # noqa: F401  (nn.GRU)
from kiln.tracer.functional.rnn_sequence import sequence as _rnn_sequence  # noqa: F401  (nn.RNN)

half, float, double, long, int, short = float16, float32, float64, int64, int32, int16
uint8 = uint8
from kiln.tracer.creation import legacy_type as _legacy_type  # noqa: E402
FloatTensor = _legacy_type("FloatTensor", float32)
DoubleTensor = _legacy_type("DoubleTensor", float64)
LongTensor, BoolTensor = _legacy_type("LongTensor", int64), _legacy_type("BoolTensor", bool)
__version__ = "0.1.0"

# nn, optim, utils, metrics, distributions and serialization are written against this module
# (they `import kiln`), so it loads them on first use (PEP 562 `__getattr__` below) rather than
# here: `kiln.nn.Linear`, `torch.optim.Adam` after `import kiln as torch`, and `import kiln.nn`
# all work, and no import cycle runs through the root (tests/test_layers.py).
_ON_FIRST_USE = {"nn": "kiln.nn", "optim": "kiln.optim", "utils": "kiln.utils",
                 "metrics": "kiln.metrics", "distributions": "kiln.distributions",
                 "distributed": "kiln.distributed", "ops": "kiln.ops",
                 "serialization": "kiln.serialization", "save": "kiln.serialization",
                 "load": "kiln.serialization", "testing": "kiln.testing",
                 "profiler": "kiln.profiler", "multiprocessing": "kiln.multiprocessing",
                 "func": "kiln.func",
                 "vmap": "kiln.func"}          # torch.vmap is torch.func.vmap
_ON_FIRST_USE["fx"] = "kiln.fx"      # torch.fx: symbolic tracing, Graph, GraphModule
_ON_FIRST_USE["__config__"] = "kiln.__config__"     # torch.__config__.show()
_ON_FIRST_USE.update(hub="kiln.hub", jit="kiln.jit")     # urllib and the exporter, on use
_ON_FIRST_USE["xpu"] = "kiln.xpu"     # torch.xpu's probes, answered as a build without XPU
_ON_FIRST_USE["functional"] = "kiln.functional"   # torch.functional: einsum, meshgrid, split...
_ON_FIRST_USE["_inductor"] = "kiln._inductor"     # torch._inductor.utils.fresh_inductor_cache
_ON_FIRST_USE["_logging"] = "kiln._logging"       # torch._logging.set_logs: compile logs
_ON_FIRST_USE["library"] = "kiln.library"         # torch.library: the user's own operators
_ON_FIRST_USE["signal"] = "kiln.signal"           # torch.signal.windows
_ON_FIRST_USE["futures"] = "kiln.futures"        # torch.futures.Future, for RPC results
_ON_FIRST_USE["_C"] = "kiln._C"                   # torch._C's __torch_function__ switches
_ON_FIRST_USE["masked"] = "kiln.masked"           # torch.masked: MaskedTensor, masked reductions


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


def numel(input: Tensor) -> int:
    return input.numel()


def is_floating_point(input: Tensor) -> bool:
    return input.dtype.is_floating_point


def promote_types(type1, type2):
    return _promote(type1, type2)
from kiln import export  # noqa: F401,E402  (`kiln.export.export`, as torch.export)
from kiln import onnx  # noqa: F401,E402  (`torch.onnx.export`; imports the onnx package lazily)


# ----------------------------------------------------------------------------- api-torch
# the rest of the torch.* namespace (README, "API coverage"): process-wide switches and device
# probes, functional_extra's ops and Tensor methods, torch-level forms of in-place methods and of
# nn.functional, out= on common ops, linalg/fft/special/distributions/amp, grad_fn names
import sys as _sys  # noqa: E402
from kiln import accelerator, backends  # noqa: F401,E402
from kiln.tracer.creation import (  # noqa: F401,E402
    set_default_device, get_default_device, standard_gamma as _standard_gamma)
from kiln.settings import (  # noqa: F401,E402
    use_deterministic_algorithms, are_deterministic_algorithms_enabled,
    is_deterministic_algorithms_warn_only_enabled, set_deterministic_debug_mode,
    get_deterministic_debug_mode, set_float32_matmul_precision, get_float32_matmul_precision,
    set_warn_always, is_warn_always_enabled, set_num_interop_threads, get_num_interop_threads,
    set_flush_denormal, set_printoptions)
from kiln.tracer.custom_function import (  # noqa: F401,E402
    is_anomaly_enabled, is_anomaly_check_nan_enabled, set_anomaly_enabled)
from kiln.tracer import methods_extra as _methods_extra  # noqa: F401,E402
from kiln.tracer.functional_extra import (  # noqa: F401,E402
    asin, acos, atan, atan2, sinh, cosh, asinh, acosh, atanh, arcsin, arccos, arctan, arctan2,
    arcsinh, arccosh, arctanh, deg2rad, rad2deg, lgamma, digamma, polygamma, mvlgamma, erfc,
    erfinv, i0, logit, xlogy, sinc, logaddexp, logaddexp2, sgn, signbit, copysign, heaviside,
    ldexp, frexp, nextafter, gcd, lcm, bitwise_left_shift, bitwise_right_shift, fmax, fmin,
    positive, multiply, subtract, conj, conj_physical, resolve_conj, resolve_neg, real, angle,
    imag, view_as_real, view_as_complex, complex, polar,
    is_complex, is_conj, is_neg, isreal, is_signed, is_nonzero, is_same_size, is_inference,
    is_inference_mode_enabled, argsort, sort, msort, topk, kthvalue, median, nanmedian, mode,
    quantile, nanquantile, cummax, cummin, logcumsumexp, diff, gradient, trapezoid, trapz,
    cumulative_trapezoid, searchsorted, bucketize, histc, histogram, histogramdd, bincount,
    unique, unique_consecutive, isin, aminmax, hash_tensor, atleast_1d, atleast_2d, atleast_3d,
    column_stack, row_stack, dstack, hsplit, vsplit, dsplit, split_with_sizes, unsafe_split,
    unsafe_chunk, unsafe_split_with_sizes, ravel, rot90, diag_embed, diagflat, diagonal_scatter,
    select_scatter, slice_scatter, block_diag, cartesian_prod, combinations, meshgrid,
    tril_indices, triu_indices, unravel_index, vander, index_put, index_reduce, scatter_reduce,
    segment_reduce, _chunk_cat, _unsafe_masked_index, _unsafe_masked_index_put_accumulate,
    masked_scatter, put, renorm, as_strided, as_strided_scatter, empty_strided, alias_copy,
    as_strided_copy, detach_copy, diagonal_copy, expand_copy, narrow_copy, permute_copy,
    select_copy, slice_copy, split_copy, split_with_sizes_copy, squeeze_copy, t_copy,
    transpose_copy, unbind_copy, unfold_copy, unsqueeze_copy, view_copy, addmv, addr, addbmm,
    adjoint, chain_matmul, vdot, kron, cdist,
    cov, corrcoef, scalar_tensor, frombuffer, hann_window, hamming_window,
    blackman_window, bartlett_window, kaiser_window, poisson, binomial, fill, finfo, iinfo,
    can_cast, broadcast_shapes, typename, get_device, set_default_tensor_type, cond,
    while_loop, nonzero_static, frobenius_norm, igamma, igammac, from_dlpack,
    to_dlpack)
from kiln.tracer.functional_extra import range_ as range  # noqa: F401,E402,A001
_segment_reduce = segment_reduce                   # torch._segment_reduce, ATen's name of it
from kiln import linalg, special, fft, amp  # noqa: F401,E402
from kiln.amp import (autocast, GradScaler, is_autocast_enabled,  # noqa: F401,E402
                      set_autocast_enabled, get_autocast_dtype, set_autocast_dtype,
                      is_autocast_cache_enabled, set_autocast_cache_enabled, clear_autocast_cache,
                      get_autocast_cpu_dtype, get_autocast_gpu_dtype, set_autocast_cpu_dtype,
                      set_autocast_gpu_dtype, is_autocast_cpu_enabled, set_autocast_cpu_enabled)
from math import pi, e, inf, nan  # noqa: F401,E402  (torch.pi, torch.e, torch.inf, torch.nan)
newaxis = None                    # torch.newaxis, as NumPy's: x[:, kiln.newaxis]
from kiln.stream import Stream, Event  # noqa: F401,E402  (torch.Stream, torch.Event)
from kiln.tracer.storage import TypedStorage, UntypedStorage  # noqa: F401,E402


def is_storage(obj) -> bool:
    return isinstance(obj, UntypedStorage)
from kiln import torch_namespace as _torch_namespace  # noqa: E402
from kiln.torch_namespace import (AcceleratorError, OutOfMemoryError, FatalError,  # noqa: F401,E402
                                  layout, sparse_coo, strided)
from kiln.tracer.sparse import sparse_coo_tensor, spmm  # noqa: F401,E402
from kiln.tracer.sparse_compressed import (sparse_csr, sparse_csc, sparse_bsr,  # noqa: F401,E402
                                           sparse_bsc, sparse_csr_tensor, sparse_csc_tensor,
                                           sparse_compressed_tensor)
from kiln.tracer import sparse as _sparse_rules  # noqa: E402
from kiln import overrides  # noqa: F401,E402  (torch.overrides; installs the protocol on use)
from kiln.tracer.torch_function import (DisableTorchFunction,  # noqa: F401,E402
                                        DisableTorchFunctionSubclass)
from kiln import sparse  # noqa: F401,E402  (torch.sparse: mm, sum)
from kiln.tracer import grad_names as _grad_names  # noqa: E402
from kiln.tracer import functional as _core_functional  # noqa: E402

globals().update(linalg.TORCH_FORMS)
globals().update(_torch_namespace.exports())
_torch_namespace.wrap_each(  # out= on the root and on linalg, special and fft
    globals(), _torch_namespace.OUT_FUNCTIONS,
    lambda fn, name: _torch_namespace.with_out(fn, _torch_namespace.out_dtype_rule(name)))
for _module, _names, _exact in (
        (linalg, _torch_namespace.OUT_LINALG, _torch_namespace.OUT_LINALG_EXACT_DTYPE),
        (special, _torch_namespace.OUT_SPECIAL, ()), (fft, _torch_namespace.OUT_FFT, ())):
    _torch_namespace.wrap_each(vars(_module), _names, lambda fn, name: _torch_namespace.with_out(
        fn, _torch_namespace.out_dtype_rule(name, _exact)))
_torch_namespace.wrap_each(globals(), _torch_namespace.OUT_FACTORIES,
                           lambda fn, name: _torch_namespace.factory_with_out(fn))
_torch_namespace.wrap_each(globals(), ["normal"],
                           lambda fn, name: _torch_namespace.normal_with_out(fn))
_chunk_cat = _torch_namespace.with_out(_chunk_cat)   # (private: wrap_each rebinds public names)
_grad_names.apply_names(_sys.modules[__name__], _core_functional)  # nn.functional: its own
_torch_namespace.wrap_each(  # kiln.abs(sparse) & co.; relu checks for itself (F.relu too)
    globals(), [n for n in _sparse_rules.ZERO_PRESERVING + _sparse_rules.PATTERN_KEEPING +
                ["pow", "square", "floor_divide", "sinc", "logit"] if n != "relu"],
    lambda fn, name: _sparse_rules.with_sparse_rule(fn, fn.__name__))
_torch_namespace.wrap_each(globals(), ["add", "sub", "mul", "div"],
                           _sparse_rules.with_sparse_operand)
_torch_namespace.refuse_non_bool_keepdim(  # x.sum(0, 1) raises, as in PyTorch
    {"": globals(), "linalg.": vars(linalg), "special.": vars(special)}, Tensor)
from kiln import return_types  # noqa: E402  (torch.return_types: max(dim), sort, topk, svd...)
return_types.install(_sys.modules[__name__], Tensor, linalg)
ByteTensor, HalfTensor = _legacy_type("ByteTensor", uint8), _legacy_type("HalfTensor", float16)
from kiln.ir.dtypes import bfloat16  # noqa: E402,F401  (stored by ml_dtypes, when installed)
from kiln.ir.dtypes import complex64, complex128, complex32  # noqa: E402,F401
cfloat, cdouble, chalf = complex64, complex128, complex32
from kiln.fft import stft, istft  # noqa: E402,F401
BFloat16Tensor = _legacy_type("BFloat16Tensor", bfloat16)
IntTensor = _legacy_type("IntTensor", int32)
CharTensor, ShortTensor = _legacy_type("CharTensor", int8), _legacy_type("ShortTensor", int16)
from kiln import cpu  # noqa: F401,E402  (torch.cpu, with torch.cpu.amp.autocast)


def __getattr__(name: str):
    if name in _ON_FIRST_USE:
        import importlib
        module = importlib.import_module(_ON_FIRST_USE[name])
        value = module if module.__name__ == f"kiln.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    # torch.conv2d and friends are nn.functional's, resolved on use: nn.functional gains ops
    if name in _torch_namespace.LAZY:
        fn = _torch_namespace.nn_forward(name)
        if fn is not None:
            return fn
    if name in _NOT_IN_KILN:        # still an AttributeError: `hasattr` stays False
        raise AttributeError(f"module 'kiln' has no attribute '{name}': {_NOT_IN_KILN[name]}")
    raise AttributeError(f"module 'kiln' has no attribute '{name}'")


# PyTorch namespaces kiln does not have, and what to use instead
_NOT_IN_KILN = {
    "mps": "kiln runs on the CPU and on NVIDIA GPUs (device 'cuda') only",
}


def __dir__() -> list:
    return sorted(set(globals()) | set(_ON_FIRST_USE))
from kiln import __future__  # noqa: F401,E402  (torch.__future__: module conversion switches)
from kiln import _dynamo  # noqa: F401,E402  (torch._dynamo.reset)
from kiln import random, version  # noqa: F401,E402  (torch.random, torch.version)
# torch's quantized tensors (kiln.tracer.quantized) and torch.ao.quantization (kiln.ao)
from kiln.ir.dtypes import quint8, qint8, qint32  # noqa: E402,F401
from kiln.tracer.quantized import (  # noqa: E402,F401
    qscheme, per_tensor_affine, per_channel_affine, per_tensor_symmetric, per_channel_symmetric,
    per_channel_affine_float_qparams, quantize_per_tensor, quantize_per_channel, dequantize,
    int_repr, q_scale, q_zero_point, q_per_channel_scales, q_per_channel_zero_points,
    q_per_channel_axis, fake_quantize_per_tensor_affine, fake_quantize_per_channel_affine)
from kiln.tracer.quantized import bind_methods as _bind_quantized_methods  # noqa: E402
_bind_quantized_methods()
_ON_FIRST_USE.update(ao="kiln.ao", quantization="kiln.quantization")
from kiln.tracer.functional_extra.control_flow import (scan, associative_scan,  # noqa: F401,E402
                                                       _check, _check_with, _check_is_size)
from kiln import _higher_order_ops  # noqa: F401,E402
from kiln.ir.dtypes import uint16, uint32, uint64  # noqa: E402,F401  (PyTorch's few ops)
from kiln import nested  # noqa: F401,E402  (torch.nested: jagged nested tensors)
from kiln.nested import jagged  # noqa: F401,E402  (torch.jagged, the NJT layout)
