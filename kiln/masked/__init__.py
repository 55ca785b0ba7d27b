"""`torch.masked`: MaskedTensor, and reductions and normalizations that skip masked-out elements.

A `MaskedTensor` is a tensor whose elements where `mask` is False do not take part: elementwise
ops keep the mask, reductions see only the elements kept (a reduction over nothing is masked
out itself), softmax spreads over the kept elements. It is a `kiln.Tensor` subclass whose own
values are the data (so autograd, `.backward()` and optimizers work on them) and whose
`__torch_function__` (kiln/tracer/torch_function.py) routes each call: elementwise ops compute
on the data, shape ops move data and mask alike, reductions go to the functions below, and
anything else is refused by name.

The functions (`kiln.masked.sum(input, dim, mask=...)` and the rest) work on plain tensors:
masked-out elements are replaced by the reduction's identity (0 for sums, -inf for a maximum
or a softmax) before reducing, as in PyTorch.
"""

from __future__ import annotations

import math

import kiln
from kiln import Tensor

__all__ = ["MaskedTensor", "masked_tensor", "as_masked_tensor", "sum", "prod", "cumsum",
           "cumprod", "amax", "amin", "argmax", "argmin", "mean", "median", "logsumexp",
           "logaddexp", "norm", "var", "std", "softmax", "log_softmax", "softmin", "normalize"]

# ----------------------------------------------------------------------------- functions

def _mask_of(input: Tensor, mask) -> Tensor:
    if mask is None:
        return kiln.ones_like(input, dtype=kiln.bool)
    if not isinstance(mask, Tensor) or mask.dtype is not kiln.bool:
        raise TypeError(f"kiln.masked: mask must be a bool tensor, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    return mask.expand(input.shape) if tuple(mask.shape) != tuple(input.shape) else mask


def _filled(input: Tensor, mask, value) -> Tensor:
    return kiln.where(_mask_of(input, mask), input, value)


def _extreme(dtype, high: bool):
    if dtype.is_floating_point or dtype.is_complex:
        return math.inf if high else -math.inf
    info = kiln.iinfo(dtype)
    return info.max if high else info.min


def _dims(dim):
    return () if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)


def _reduce(fn, input, dim, keepdim, **kwargs):
    dims = _dims(dim) or (tuple(range(input.dim())) if keepdim else ())
    return fn(input, dim=dims, keepdim=keepdim, **kwargs) if dims else fn(input, **kwargs)


def sum(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    return _reduce(kiln.sum, _filled(input, mask, 0), dim, keepdim, dtype=dtype)


def prod(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    filled = _filled(input, mask, 1)
    if dim is None:
        return kiln.prod(filled, dtype=dtype)
    return kiln.prod(filled, dim, keepdim=keepdim, dtype=dtype)


def cumsum(input, dim, *, dtype=None, mask=None):
    return kiln.cumsum(_filled(input, mask, 0), dim, dtype=dtype)


def cumprod(input, dim, *, dtype=None, mask=None):
    return kiln.cumprod(_filled(input, mask, 1), dim, dtype=dtype)


def amax(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    return _reduce(kiln.amax, _filled(x, mask, _extreme(x.dtype, False)), dim, keepdim)


def amin(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    return _reduce(kiln.amin, _filled(x, mask, _extreme(x.dtype, True)), dim, keepdim)


def argmax(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    """Index of the largest kept element, in `dtype` (default: input's dtype, as PyTorch)."""
    found = kiln.argmax(_filled(input, mask, _extreme(input.dtype, False)), dim, keepdim)
    return found.to(dtype or input.dtype)


def argmin(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    found = kiln.argmin(_filled(input, mask, _extreme(input.dtype, True)), dim, keepdim)
    return found.to(dtype or input.dtype)


def _all(input, dim=None, *, keepdim=False, mask=None):
    return _reduce(kiln.all, _filled(input.to(kiln.bool), mask, True), dim, keepdim)


def _any(input, dim=None, *, keepdim=False, mask=None):
    return _reduce(kiln.any, _filled(input.to(kiln.bool), mask, False), dim, keepdim)


def _count(input, mask, dim, keepdim):
    return _reduce(kiln.sum, _mask_of(input, mask), dim, keepdim)


def mean(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    return sum(x, dim, keepdim=keepdim, mask=mask) / _count(x, mask, dim, keepdim)


def median(input, dim=-1, *, keepdim=False, dtype=None, mask=None):
    """Median of the kept elements along one dim (NaN where none is kept); integer input is
    taken as float32 and the result converted back, which needs a kept element in each row."""
    x = input if input.dtype.is_floating_point else input.to(kiln.float32)
    out = kiln.nanmedian(_filled(x, mask, math.nan), _dims(dim)[0] if dim is not None else -1,
                         keepdim).values
    if input.dtype.is_floating_point:
        return out
    if bool(out.isnan().any()):
        raise ValueError("kiln.masked.median: an integer input needs a kept element in every "
                         "row it reduces")
    return out.to(dtype or input.dtype)


def logsumexp(input, dim=None, *, keepdim=False, dtype=None, mask=None):
    """log(sum(exp)) of the kept elements, converted to `dtype` (default: input's dtype)."""
    fill = _extreme(input.dtype, False)
    out = kiln.logsumexp(_filled(input, mask, fill), _dims(dim) or tuple(range(input.dim())),
                         keepdim=keepdim)
    return out.to(dtype or input.dtype)


def logaddexp(input, other, *, dtype=None, input_mask=None, other_mask=None):
    """logaddexp of the two inputs, each with its masked-out elements taken as -inf."""
    a = _filled(input, input_mask, _extreme(input.dtype, False))
    b = _filled(other, other_mask, _extreme(other.dtype, False))
    return kiln.logaddexp(a, b).to(dtype or input.dtype)


def norm(input, ord=2.0, dim=None, *, keepdim=False, dtype=None, mask=None):
    """Vector norm of the kept elements: masked-out ones count as 0 (as +inf for ord=-inf,
    where they must not be the minimum)."""
    fill = math.inf if ord == -math.inf else 0
    return kiln.linalg.vector_norm(_filled(input, mask, fill), ord, _dims(dim) or None,
                                   keepdim=keepdim, dtype=dtype or input.dtype)


def var(input, dim=None, unbiased=None, *, correction=None, keepdim=False, dtype=None,
        mask=None):
    """Variance of the kept elements; `correction` (or `unbiased`, default 1) as Tensor.var,
    with the divisor clamped at 0. Integer input gives float32."""
    if unbiased is not None and correction is not None:
        raise ValueError("kiln.masked.var: pass unbiased or correction, not both")
    ddof = correction if correction is not None else (0 if unbiased is False else 1)
    if dtype is None:
        dtype = input.dtype if input.dtype.is_floating_point or input.dtype.is_complex \
            else kiln.float32
    x = input.to(dtype)
    count = _count(x, mask, dim, True)
    centred = x - sum(x, dim, keepdim=True, mask=mask) / count
    # complex: the mean of |x - mean|^2 (PyTorch keeps the complex dtype, imaginary part 0)
    squares = sum(centred * centred.conj(), dim, keepdim=keepdim, mask=mask)
    count = count.reshape(squares.shape)
    if ddof:
        count = kiln.clamp_min(count - ddof, 0)
    return squares / count.to(squares.dtype)


def std(input, dim=None, unbiased=None, *, correction=None, keepdim=False, dtype=None,
        mask=None):
    return var(input, dim, unbiased, correction=correction, keepdim=keepdim, dtype=dtype,
               mask=mask).sqrt()


def softmax(input, dim, *, dtype=None, mask=None):
    """Softmax over the kept elements: masked-out ones get 0, a row with none kept NaN."""
    x = input if dtype is None else input.to(dtype)
    return kiln.softmax(_filled(x, mask, -math.inf), dim)


def log_softmax(input, dim, *, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    return kiln.log_softmax(_filled(x, mask, -math.inf), dim)


def softmin(input, dim, *, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    return kiln.softmax(-_filled(x, mask, math.inf), dim)


def normalize(input, ord, dim, *, eps=1e-12, dtype=None, mask=None):
    x = input if dtype is None else input.to(dtype)
    scale = norm(x, ord, dim, keepdim=True, mask=mask).clamp_min(eps)
    return _filled(x, mask, 0) / scale


# ----------------------------------------------------------------------------- MaskedTensor

def masked_tensor(data: Tensor, mask: Tensor, requires_grad: bool = False) -> "MaskedTensor":
    """A new leaf MaskedTensor holding `data`'s values (detached) where `mask` is True."""
    _check(data, mask)
    leaf = Tensor._make_subclass(MaskedTensor, data.detach(), requires_grad)
    leaf._masked_mask = mask
    return leaf


def as_masked_tensor(data: Tensor, mask: Tensor) -> "MaskedTensor":
    """`data` seen through `mask`, differentiable: gradients flow back to `data`."""
    _check(data, mask)
    return _wrap(data, mask)


def _check(data, mask) -> None:
    if not isinstance(data, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("masked_tensor: data and mask must be tensors")
    if mask.dtype is not kiln.bool:
        raise TypeError(f"masked_tensor: mask must have dtype bool, got {mask.dtype}")
    for name, t in (("data", data), ("mask", mask)):
        if t.layout is not kiln.strided:
            # a kiln MaskedTensor's own values are its data: there is no sparse storage for it
            raise NotImplementedError(f"masked_tensor: {name} is a {t.layout} tensor; kiln's "
                                      "MaskedTensor holds dense (strided) data and mask only: "
                                      "pass data.to_dense() and mask.to_dense()")
    if tuple(data.shape) != tuple(mask.shape):
        raise ValueError(f"masked_tensor: data and mask must have the same shape, got "
                         f"{list(data.shape)} and {list(mask.shape)}")


def _wrap(data: Tensor, mask: Tensor) -> "MaskedTensor":
    with kiln._C.DisableTorchFunctionSubclass():
        out = data.as_subclass(MaskedTensor)
    out._masked_mask = mask
    return out


def _plain(x):
    """A MaskedTensor's data as a plain tensor (its history kept); anything else as it is."""
    if isinstance(x, MaskedTensor):
        with kiln._C.DisableTorchFunctionSubclass():
            return x.as_subclass(Tensor)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(e) for e in x)
    return x


def _masks(x, found: list) -> None:
    if isinstance(x, MaskedTensor):
        found.append(x._masked_mask)
    elif isinstance(x, (list, tuple)):
        for e in x:
            _masks(e, found)


def _common_mask(args, kwargs) -> Tensor:
    found: list = []
    for a in (*args, *kwargs.values()):
        _masks(a, found)
    first = found[0]
    for other in found[1:]:
        if other is not first and not kiln.equal(other, first):
            raise ValueError("Input masks must match. If you need support for this, please "
                             "open an issue on Github.")
    return first


def _with_mask(x, mask):
    """`x` with each MaskedTensor replaced by `mask` (to move the mask as the data moves)."""
    if isinstance(x, MaskedTensor):
        return mask
    if isinstance(x, (list, tuple)):
        return type(x)(_with_mask(e, mask) for e in x)
    return x


_ELEMENTWISE = frozenset("""
abs absolute neg negative sign sgn exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sin cos tan
asin acos atan sinh cosh tanh asinh acosh atanh sigmoid relu gelu silu elu selu leaky_relu
mish softplus hardtanh floor ceil round trunc frac reciprocal square erf erfc erfinv lgamma
digamma logit nan_to_num clamp clip clamp_min clamp_max pow float_power add sub rsub mul div
true_divide divide floor_divide remainder fmod atan2 maximum minimum fmax fmin hypot lerp
eq ne lt le gt ge logical_not logical_and logical_or logical_xor bitwise_not bitwise_and
bitwise_or bitwise_xor isnan isinf isfinite where __rsub__ __rtruediv__ __rdiv__ __rpow__
__floordiv__ __rfloordiv__ __rmod__ __eq__ __invert__ __and__ __or__ __xor__ positive
""".split())
_ELEMENTWISE = _ELEMENTWISE | {name + "_" for name in _ELEMENTWISE if name.isalpha()}

_SHAPE = frozenset("""
transpose permute reshape view flatten unflatten unsqueeze squeeze t __getitem__ expand
expand_as contiguous clone detach to cpu cuda float double half narrow select movedim
swapaxes swapdims flip roll repeat chunk split unbind
""".split())

_REDUCTIONS = {"sum": sum, "mean": mean, "amax": amax, "amin": amin, "prod": prod,
               "argmax": argmax, "argmin": argmin, "logsumexp": logsumexp, "var": var,
               "std": std, "nansum": sum, "all": _all, "any": _any}
_NORMALIZATIONS = {"softmax": softmax, "log_softmax": log_softmax, "softmin": softmin}
# metadata and autograd calls that need no mask: answered from the data
_PLAIN_CALLS = frozenset("""
size dim numel nelement element_size __len__ is_contiguous stride requires_grad_
retain_grad register_hook backward is_floating_point is_complex get_device data_ptr item
__float__ __int__ __bool__ __index__
""".split())


class MaskedTensor(Tensor):
    """Data with a mask: the elements where the mask is False are left out of every op."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":
            return _property(func, args[0])
        if name in _PLAIN_CALLS:
            with kiln._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        mask = _common_mask(args, kwargs)
        if name in _REDUCTIONS:
            return _reduction(name, _plain(args[0]), mask, args[1:], kwargs)
        if name in _NORMALIZATIONS:
            dim = args[1] if len(args) > 1 else kwargs.pop("dim")
            return _wrap(_NORMALIZATIONS[name](_plain(args[0]), dim, mask=mask, **{
                k: v for k, v in kwargs.items() if k == "dtype"}), mask)
        if name in _ELEMENTWISE:
            with kiln._C.DisableTorchFunctionSubclass():
                out = func(*_plain(args), **kwargs)
            if name.endswith("_") and isinstance(args[0], MaskedTensor):
                return args[0]
            return _wrap(out, mask)
        if name in _SHAPE:
            with kiln._C.DisableTorchFunctionSubclass():
                data = func(*_plain(args), **kwargs)
                moved = func(*_with_mask(args, mask), **_mask_kwargs(kwargs))
            if isinstance(data, (tuple, list)):
                return type(data)(_wrap(d, m) for d, m in zip(data, moved))
            return _wrap(data, moved)
        raise NotImplementedError(f"kiln.masked: {name} is not supported on a MaskedTensor "
                                  "(elementwise ops, shape ops, reductions and softmax are)")

    def get_data(self) -> Tensor:
        """The data, masked-out elements included (as PyTorch's, detached)."""
        with kiln._C.DisableTorchFunctionSubclass():
            return self.as_subclass(Tensor).detach()

    def get_mask(self) -> Tensor:
        return self._masked_mask

    def to_tensor(self, value) -> Tensor:
        """A plain tensor: the data where kept, `value` elsewhere (differentiable)."""
        return kiln.where(self._masked_mask, _plain(self), value)

    def __repr__(self) -> str:
        data, mask = self.get_data(), self._masked_mask
        if data.dim() == 0:
            item = _element(data, mask, pad=False)
            return f"MaskedTensor({item}, {bool(mask)})"
        return "MaskedTensor(\n" + _nested(data, mask, "  ") + "\n)"

    __str__ = __repr__


def _mask_kwargs(kwargs: dict) -> dict:
    """A shape op's keyword arguments for the mask: no dtype change."""
    return {k: v for k, v in kwargs.items() if k not in ("dtype",)}


def _reduction(name: str, data, mask, args, kwargs):
    """A reduction of the kept data, masked where it reduced over nothing kept."""
    positional = ("dim", "unbiased", "keepdim") if name in ("var", "std") else ("dim", "keepdim")
    kwargs = dict(kwargs)
    kwargs.update(zip(positional, args))
    dim, keepdim = kwargs.pop("dim", None), kwargs.pop("keepdim", False)
    value = _REDUCTIONS[name](data, dim, keepdim=keepdim, mask=mask, **kwargs)
    kept = _reduce(kiln.any, mask, dim, keepdim)
    return _wrap(value, kept)


def _property(getter, self):
    prop = getter.__self__
    with kiln._C.DisableTorchFunctionSubclass():
        value = getter(self)
    if prop is vars(Tensor).get("grad"):
        return None if value is None else _wrap(value, self._masked_mask)
    if prop in (vars(Tensor).get("T"), vars(Tensor).get("mT"), vars(Tensor).get("data")):
        with kiln._C.DisableTorchFunctionSubclass():
            moved = getter(self._masked_mask) if prop is not vars(Tensor).get("data") else \
                self._masked_mask
        return _wrap(value, moved)
    return value


def _element(value: Tensor, kept: Tensor, pad: bool = True) -> str:
    if not bool(kept):
        return "      --" if pad else "--"
    item = value.item()
    if isinstance(item, float):
        return f"{item:8.4f}"
    return str(item)


def _nested(data: Tensor, mask: Tensor, indent: str) -> str:
    if data.dim() == 1:
        return indent + "[" + ", ".join(_element(d, m) for d, m in zip(data, mask)) + "]"
    rows = [_nested(d, m, indent + "  ") for d, m in zip(data, mask)]
    return indent + "[\n" + ",\n".join(rows) + "\n" + indent + "]"
