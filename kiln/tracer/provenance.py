"""Provenance scopes: which composite (or which forward node's gradient) a traced node is from.

A composite tensor function (`gelu`, `layer_norm`, `cross_entropy`: several primitives) is
marked `@composite`; while a trace is active, the nodes it records carry its name in their
`scope` (nested composites give nested scopes), and listings print them under a header
`# gelu @ model.py:12`. The backward engine opens `grad of %7 mul` around each gradient rule it
traces (inside `grad of gelu` when %7 came from gelu), located at the forward node's line
(`kiln.tracer.autograd`). Outside a trace a composite costs one check (about 0.1 us).
"""

from __future__ import annotations

import functools

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer.errors import in_composite
from kiln.tracer.tensor import STATE, TRACING, Tensor

# Composites that PyTorch's CPU build computes as one kernel, in float32 for float16 and
# bfloat16 input, rounding the result once: on such CPU tensors (every floating tensor argument
# of the first one's dtype) kiln runs them on float32 copies and rounds each floating output
# once, instead of rounding after each of their primitives. (The reductions, the softmax family
# and the normalizations widen in their own code.)
WIDEN_HALF = frozenset("""
gelu silu mish softplus logsigmoid hardsigmoid hardswish softsign tanhshrink elu selu celu
leaky_relu glu logit sinh cosh asinh acosh atanh sinc logaddexp logaddexp2 xlogy hypot lerp
addcmul addcdiv logcumsumexp linear bilinear conv1d conv2d conv3d conv_transpose1d
conv_transpose2d conv_transpose3d einsum tensordot scaled_dot_product_attention avg_pool1d
avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d addmm
baddbmm addmv
""".split())


# Of those, the composites that compute float16 in their own code: conv2d's backward rounds
# as PyTorch's slow_conv2d (kiln.nn.functional._HalfConv2d).
OWN_FLOAT16 = frozenset({"conv2d"})


def composite(fn=None, *, name: str | None = None):
    """Mark `fn` as a composite: the nodes it traces are in scope `name` (its own name by
    default). Use as `@composite` or `@composite(name="...")`."""
    def mark(fn):
        label = name or fn.__name__

        @functools.wraps(fn)
        def traced_in_scope(*args, **kwargs):
            try:                # free unless raised: then the user's op is named first
                tracer = STATE.tracer if TRACING[0] else None
                if tracer is None:
                    return fn(*args, **kwargs)
                with tracer.scope(label):
                    return fn(*args, **kwargs)
            except Exception as error:
                in_composite(error, label)
                raise
        traced_in_scope.composite = label
        if label not in WIDEN_HALF:
            return traced_in_scope

        @functools.wraps(fn)
        def in_float32(*args, **kwargs):
            if not args or getattr(args[0], "dtype", None) not in dt.HALF or \
                    args[0].dtype is dt.float16 and label in OWN_FLOAT16:
                return traced_in_scope(*args, **kwargs)     # the common case: one check
            return _widened_call(traced_in_scope, args, kwargs)
        in_float32.composite = label
        return in_float32
    return mark if fn is None else mark(fn)


def _widened_call(fn, args: tuple, kwargs: dict):
    """fn on float32 copies of its float16 (bfloat16) tensor arguments, its floating outputs
    rounded to that dtype once; as it is where another floating dtype is mixed in, a dtype is
    asked for (the result's dtype is then not the input's) or the tensors are not on the CPU
    (kiln's GPU kernels take float16 as it is)."""
    half = args[0].dtype
    values = list(args) + list(kwargs.values())
    if kwargs.get("dtype") is not None or any(
            isinstance(v, Tensor) and (v.dtype.is_floating_point and v.dtype is not half
                                       or v.device.type != "cpu") for v in values):
        return fn(*args, **kwargs)

    def wide(v):
        return P.cast(v, dtype=dt.float32) if isinstance(v, Tensor) and v.dtype is half else v

    out = fn(*[wide(a) for a in args], **{k: wide(v) for k, v in kwargs.items()})

    def narrow(v):
        if isinstance(v, Tensor) and v.dtype is dt.float32:
            return P.cast(v, dtype=half)
        if type(v) is tuple:
            return tuple(narrow(x) for x in v)
        return v
    return narrow(out)


def scope(name: str, loc: str | None = None):
    """A context in which traced nodes are in provenance scope `name` (`loc`: the source line
    they point at); does nothing outside a trace."""
    tracer = STATE.tracer if TRACING[0] else None
    return tracer.scope(name, loc) if tracer is not None else _NOTHING


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> bool:
        return False


_NOTHING = _Nothing()
