"""torch's `_foreach_*` ops: one op over lists of tensors (custom optimizers, EMA updates and
gradient utilities call them: `torch._foreach_lerp_(ema, params, 1 - decay)`).

Each is the per-tensor op applied to every element, so it computes exactly what a loop of
that op would, differentiates like it (the out-of-place forms) and bumps each tensor's version
(the in-place forms, with a trailing `_`). The second operand is, as in PyTorch: one number, a
list of numbers, a list of tensors (`alpha=` where the op takes it) or one tensor applied to
every element. The out-of-place forms return a tuple, the in-place ones the list they were
given, as PyTorch's do. kiln does not fuse them: on a GPU each element is its own launch (PyTorch
batches them into multi-tensor kernels), and a compiled function fuses the loop anyway.
"""

from __future__ import annotations

from numbers import Number

from kiln.tracer import functional as F
from kiln.tracer.tensor import Tensor

_UNARY = """abs acos asin atan ceil cos cosh erf erfc exp expm1 floor frac lgamma log log10
log1p log2 neg reciprocal round rsqrt sigmoid sign sin sinh sqrt tan tanh trunc""".split()

# binary ops: name -> (the Tensor method, whether it takes alpha=)
_BINARY = {"add": ("add", True), "sub": ("sub", True), "mul": ("mul", False),
           "div": ("div", False), "pow": ("pow", False), "maximum": ("maximum", False),
           "minimum": ("minimum", False), "clamp_min": ("clamp_min", False),
           "clamp_max": ("clamp_max", False)}


def _list(name: str, tensors, what: str = "self") -> list:
    if not isinstance(tensors, (list, tuple)) or \
            not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"_foreach_{name}(): argument '{what}' must be a list of tensors, got "
                        f"{type(tensors).__name__}")
    return list(tensors)


def _operands(name: str, other, n: int) -> list:
    """`other` spread over n elements: a number or a tensor is every element's; a list must
    have n entries."""
    if isinstance(other, (Number, Tensor)):
        return [other] * n
    if isinstance(other, (list, tuple)):
        if len(other) != n:
            raise RuntimeError(f"_foreach_{name}: tensor lists must have the same number of "
                               f"tensors, got {n} and {len(other)}")
        return list(other)
    raise TypeError(f"_foreach_{name}(): the second argument must be a number, a tensor, or "
                    f"a list of them, got {type(other).__name__}")


_LOWER_BOUNDS = ("clamp_min", "maximum")      # the others: clamp_max, minimum


def _clamp(x: Tensor, bound, name: str) -> Tensor:
    """clamp_min/maximum (clamp_max/minimum) of `x` and a number or a tensor."""
    if isinstance(bound, Tensor):
        return F.maximum(x, bound) if name in _LOWER_BOUNDS else F.minimum(x, bound)
    return x.clamp(min=bound) if name in _LOWER_BOUNDS else x.clamp(max=bound)


def _binary(name: str, method: str, takes_alpha: bool, inplace: bool):
    def op(self, other, *, alpha=1):
        xs = _list(name, self)
        ys = _operands(name, other, len(xs))
        if alpha != 1 and not takes_alpha:
            raise TypeError(f"_foreach_{name}() got an unexpected keyword argument 'alpha'")
        out = []
        for x, y in zip(xs, ys):
            if method in ("clamp_min", "clamp_max", "maximum", "minimum"):
                r = _clamp(x, y, method)
                out.append(x.copy_(r) if inplace else r)
                continue
            fn = getattr(x, method + ("_" if inplace else ""))
            out.append(fn(y, alpha=alpha) if takes_alpha and alpha != 1 else fn(y))
        return self if inplace else tuple(out)
    op.__name__ = f"_foreach_{name}{'_' if inplace else ''}"
    return op


def _unary(name: str, inplace: bool):
    def op(self):
        xs = _list(name, self)
        out = [getattr(x, name + ("_" if inplace else ""))() for x in xs]
        return self if inplace else tuple(out)
    op.__name__ = f"_foreach_{name}{'_' if inplace else ''}"
    return op


def _pointwise3(name: str, inplace: bool):
    """addcmul / addcdiv: self + value * t1 (op) t2, value a number, a list of numbers or a 1-d
    tensor of one per element."""
    def op(self, tensor1, tensor2, value=1):
        xs = _list(name, self)
        t1s, t2s = _list(name, tensor1, "tensor1"), _list(name, tensor2, "tensor2")
        if isinstance(value, Tensor):
            value = value.tolist() if value.dim() == 1 else [value.item()] * len(xs)
        values = _operands(name, value, len(xs))
        if not len(t1s) == len(t2s) == len(xs):
            raise RuntimeError(f"_foreach_{name}: tensor lists must have the same number of "
                               f"tensors, got {len(xs)}, {len(t1s)} and {len(t2s)}")
        out = [getattr(x, name + ("_" if inplace else ""))(a, b, value=v)
               for x, a, b, v in zip(xs, t1s, t2s, values)]
        return self if inplace else tuple(out)
    op.__name__ = f"_foreach_{name}{'_' if inplace else ''}"
    return op


def _lerp(inplace: bool):
    def op(self, tensors1, weight):
        xs, ends = _list("lerp", self), _list("lerp", tensors1, "tensors1")
        if len(ends) != len(xs):
            raise RuntimeError(f"_foreach_lerp: tensor lists must have the same number of "
                               f"tensors, got {len(xs)} and {len(ends)}")
        weights = _operands("lerp", weight, len(xs))
        out = [(x.lerp_ if inplace else x.lerp)(e, w) for x, e, w in zip(xs, ends, weights)]
        return self if inplace else tuple(out)
    op.__name__ = "_foreach_lerp_" if inplace else "_foreach_lerp"
    return op


def _foreach_pow_scalar_base(base, exponent) -> tuple:
    return tuple(F.pow(base, e) for e in _list("pow", exponent, "exponent"))


def _foreach_pow(self, exponent):
    if isinstance(self, Number):            # _foreach_pow(Scalar self, Tensor[] exponent)
        return _foreach_pow_scalar_base(self, exponent)
    return _binary("pow", "pow", False, False)(self, exponent)


def _foreach_norm(self, ord=2, dtype=None) -> tuple:
    """Each tensor's vector norm, as a 0-d tensor."""
    xs = _list("norm", self)
    return tuple((x if dtype is None else x.to(dtype)).norm(ord) for x in xs)


def _foreach_max(self) -> tuple:
    return tuple(x.max() for x in _list("max", self))


def _foreach_copy_(self, src, non_blocking: bool = False):
    xs, ys = _list("copy_", self), _list("copy_", src, "src")
    if len(xs) != len(ys):
        raise RuntimeError(f"_foreach_copy_: tensor lists must have the same number of "
                           f"tensors, got {len(xs)} and {len(ys)}")
    for x, y in zip(xs, ys):
        x.copy_(y, non_blocking=non_blocking)
    return self


def _foreach_zero_(self):
    for x in _list("zero_", self):
        x.zero_()
    return self


def _foreach_clone(self) -> tuple:
    return tuple(x.clone() for x in _list("clone", self))


def _foreach_mm(self, mat2) -> tuple:
    xs, ys = _list("mm", self), _list("mm", mat2, "mat2")
    if len(xs) != len(ys):
        raise RuntimeError(f"_foreach_mm: tensor lists must have the same number of tensors, "
                           f"got {len(xs)} and {len(ys)}")
    return tuple(F.mm(x, y) for x, y in zip(xs, ys))


def _foreach_powsum(self, ord=2) -> tuple:
    """Each tensor's sum of |x| ** ord (a vector norm without the root)."""
    return tuple(x.abs().pow(ord).sum() for x in _list("powsum", self))


def exports() -> dict:
    """Every `_foreach_*` name kiln provides, for the torch namespace."""
    ops = {}
    for name in _UNARY:
        ops[f"_foreach_{name}"] = _unary(name, False)
        ops[f"_foreach_{name}_"] = _unary(name, True)
    for name, (method, alpha) in _BINARY.items():
        ops[f"_foreach_{name}"] = _binary(name, method, alpha, False)
        ops[f"_foreach_{name}_"] = _binary(name, method, alpha, True)
    for name in ("addcmul", "addcdiv"):
        ops[f"_foreach_{name}"] = _pointwise3(name, False)
        ops[f"_foreach_{name}_"] = _pointwise3(name, True)
    ops["_foreach_lerp"], ops["_foreach_lerp_"] = _lerp(False), _lerp(True)
    ops.update(_foreach_pow=_foreach_pow, _foreach_norm=_foreach_norm,
               _foreach_max=_foreach_max, _foreach_copy_=_foreach_copy_,
               _foreach_zero_=_foreach_zero_, _foreach_clone=_foreach_clone,
               _foreach_mm=_foreach_mm, _foreach_powsum=_foreach_powsum)
    return ops
