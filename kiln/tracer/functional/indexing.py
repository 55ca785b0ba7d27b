"""Indexing and selection: `where`, index_select, gather/scatter, index_add/fill/copy, masked
ops, take, one_hot, nonzero, repeat_interleave, and `getitem`/`index_put` behind `Tensor[...]`."""

from __future__ import annotations

import contextlib
import math
import threading
import warnings

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P, defer_device_index_checks
from kiln.runtime import pending_checks
from kiln.runtime.device import MetaArray
from kiln.tracer import creation
from kiln.tracer.errors import op_error, user_location, user_stacklevel
from kiln.tracer.functional.common import (_as_tensor, _broadcast, _norm_dim, _promoted, _py_max,
                                           _py_sum, arange, full, result_type, zeros)
from kiln.tracer.functional.shapes import _own_memory, broadcast_tensors, expand, reshape, unsqueeze
from kiln.tracer.provenance import composite
from kiln.tracer.strides import settle
from kiln.tracer.tensor import STATE, WRAPPERS, Tensor, dispatches
from kiln.tracer.unsigned import LIMITED as _LIMITED_UNSIGNED
from kiln.tracer.unsigned import check as _check_unsigned
from kiln.tracer.unsigned import refusal as _unsigned_refusal


# ----------------------------------------------------------------------------- indexing

def where(condition, input=None, other=None):
    if input is None and other is None:
        return _nonzero(condition, True, "nonzero() in torch.where(condition)")
    if not isinstance(condition, Tensor):
        condition = _as_tensor(condition)
    if condition.dtype is not dt.bool_:
        if condition.dtype is not dt.uint8:     # PyTorch still takes uint8 masks (deprecated)
            raise op_error("where", f"where expected condition to be a boolean tensor, but got "
                           f"a tensor with dtype {dt.SCALAR_TYPE_NAMES[condition.dtype]} "
                           f"({condition.dtype.name}, shape {list(condition.shape)}); pass a "
                           f"comparison such as `condition != 0`")
        condition = P.ne(condition, 0)
    if isinstance(input, Tensor) and isinstance(other, Tensor) and input.dtype is other.dtype:
        x, y = input, other          # what _promoted would give, found quicker
    elif not isinstance(input, Tensor) and not isinstance(other, Tensor):
        # two Python numbers (where(mask, 1.0, -1.0)): their common dtype, on the mask's device
        kind = result_type(input, other)
        x, y = (full((), v, dtype=kind, device=condition.device) for v in (input, other))
    else:
        x, y = _promoted(input, other, fill_op="where")
    return P.where(condition, x, y)


def _uint8_mask(k: Tensor) -> Tensor:
    """A uint8 index tensor as PyTorch still reads it: a mask (deprecated, with its warning)."""
    warnings.warn("indexing with dtype torch.uint8 is now deprecated, please use a dtype "
                  "torch.bool instead.", UserWarning, stacklevel=user_stacklevel())
    return P.ne(k, 0)


def repeat_interleave(input, repeats=None, dim=None, *, output_size=None):
    """Each element (or slice along `dim`) repeated; `output_size`, PyTorch's hint of the
    total length, is checked against it. Given only repeats (a vector), the positions of
    its elements, each repeated so."""
    if repeats is None:
        return repeat_interleave(arange(input.shape[0], device=input.device), input,
                                 output_size=output_size)
    if dim is None:
        input, dim = reshape(input, (-1,)), 0
    d = _norm_dim(dim, input.ndim)
    if isinstance(repeats, Tensor):
        counts = repeats.tolist()
        total = _py_sum(counts) if isinstance(counts, list) else counts * input.shape[d]
        if output_size is not None and output_size != total:
            raise op_error("repeat_interleave", f"allocated size does not match required size: "
                           f"output_size={output_size}, repeats sum to {total}")
        idx = np.repeat(np.arange(input.shape[d]), counts)
        return index_select(input, d, input.new_tensor(idx, dtype=dt.int64))
    shape = tuple(input.shape)
    x = unsqueeze(input, d + 1)
    x = expand(x, shape[:d + 1] + (repeats,) + shape[d + 1:])
    return _own_memory(reshape(x, shape[:d] + (shape[d] * repeats,) + shape[d + 1:]))



def index_select(input, dim, index):
    if input.dtype in _LIMITED_UNSIGNED and input.ndim <= 1:
        # PyTorch selects rows of these types (copies), but has no 1-d kernel for them
        raise _unsigned_refusal("index_select", input.dtype)
    if input.ndim == 0:
        if index.numel() != 1:
            raise op_error("index_select", f"index_select(): Index to scalar can have only 1 "
                           f"value, got {index.numel()} value(s)", IndexError)
        _norm_dim(dim, 0)
        return reshape(select_rows(reshape(input, (1,)), 0, reshape(index, (1,)),
                                   "index_select"), ())
    if index.ndim == 0:               # one index, the dim kept (embedding's 0-d index drops it)
        index = reshape(index, (1,))
    return select_rows(input, dim, index, "index_select")


def as_vectors(input, dim, index, source=None):
    """(input, d, index, source) as the index_* ops read them: PyTorch counts a 0-d index as
    a vector of one, and a 0-d input (with its 0-d source) as a vector of one element, along
    dim 0 or -1; `as_input` gives a 0-d input's result back its shape ()."""
    d = _norm_dim(dim, input.ndim)
    if index.ndim == 0:
        index = reshape(index, (1,))
    if input.ndim == 0:
        input = reshape(input, (1,))
        if isinstance(source, Tensor) and source.ndim == 0:
            source = reshape(source, (1,))
    return input, d, index, source


def as_input(out, input):
    return out if input.ndim else reshape(out, ())


def select_rows(input, dim, index, op: str):
    """index_select under the name of the op the user called (`embedding` looks rows up this
    way): a negative or too large index is PyTorch's IndexError "index out of range in self"
    (index_select does not count negative indices from the end)."""
    d = _norm_dim(dim, input.ndim)
    if index.ndim > 1:
        raise op_error(op, "index_select(): Index is supposed to be a vector", IndexError)
    index = _wrap_index(index, input.shape[d], op, IndexError, dim=d, negative=False,
                        what="index out of range in self")
    return _take_checked(input, index, d)


def _wrap_index(index: Tensor, n: int, op: str = "index", kind: type = IndexError, *,
                dim: int | None = None, negative: bool = True, what: str = "") -> Tensor:
    """`index` checked against a dim of size `n`: out-of-range values raise `kind`, naming
    `op`, the first offending value and the size. With `negative`, indices in [-n, 0) count
    from the end, as in Python (tensor indexing, take, index_fill); without, they are out of
    range (gather, scatter, index_select, embedding), as in PyTorch. Eager, one min and one
    max per call: read at once on the CPU, queued on a GPU (`check_bounds_later`). Traced, the
    check is a graph node (`check_index`, which the executors run on every replay), since a
    trace cannot read index values into Python."""
    if index.dtype is not dt.int64 and index.dtype is not dt.int32:
        raise op_error(op, f"tensors used as indices must be long, int or bool tensors, "
                       f"got {index.dtype.name}", IndexError)
    where = f"a tensor of {n} elements" if dim is None else f"dimension {dim} with size {n}"
    message = (f"{what}: " if what else "") + f"index {{}} is out of bounds for {where}"
    if STATE.tracer is None:
        data = index._data
        if not data.size:
            return index
        lowest = -n if negative else 0
        if isinstance(data, MetaArray):       # no values to check: a meta or wrapper index
            return P.where(P.lt(index, 0), index + n, index) if negative else index
        if index.device.type != "cpu":
            # on a GPU the check stays on the device until the host next reads its memory;
            # whether any index is negative is not known here, so all are wrapped
            check_bounds_later(index, lowest, n, op, kind, message)
            return P.mod(index, n) if negative else index
        low, high = data.min(), data.max()
        if low < lowest or high >= n:
            flat = data.reshape(-1)
            bad = int(flat[((flat < lowest) | (flat >= n)).argmax()])   # the first, as torch
            raise op_error(op, message.format(bad), kind)
        if low >= 0:
            return index
    else:                             # a replay checks the indices it is given, as eager does
        index = P.check_index(index, size=n, op=_replay_name(op), kind=kind.__name__,
                              negative=negative, ignore=None, message=message)
    if not negative:
        return index
    return P.where(P.lt(index, 0), index + n, index)


def _replay_name(op: str) -> str:
    """How a traced bounds check names its op: inside a composite (put's index_put), after the
    outermost one, the op the user called, as eager's error does (`errors.in_composite`)."""
    scopes = STATE.tracer.scopes
    outer = scopes[0] if scopes else None
    if not isinstance(outer, str) or outer.startswith("grad of") or op.startswith(outer):
        return op
    return f"{outer}: {op}"


def check_indices(values: Tensor, size: int, op: str, what: str, kind: type = RuntimeError,
                  ignore: int | None = None) -> Tensor:
    """`values` that `op` reads as indices into `size` places (a loss's class targets,
    embedding_bag's input), checked to lie in [0, size) or equal `ignore` before `op` hands
    them to a gather, so that a bad one is reported as `op`'s `what` with its value: at once
    on the CPU, at the next host read on a GPU, and on every compiled replay (a check_index
    node). Returns the values to use."""
    expected = f"expected values in [0, {size})" + ("" if ignore is None else
                                                    f" or {ignore}")
    if STATE.tracer is not None:
        return P.check_index(values, size=size, op=_replay_name(op), kind=kind.__name__,
                             negative=False, ignore=ignore,
                             message=f"{what} {{}} is out of bounds ({expected})")
    data = values._data
    if not data.size or isinstance(data, MetaArray):
        return values
    if values.device.type != "cpu":
        kept = values if ignore is None else P.where(P.eq(values, ignore), 0, values)
        check_bounds_later(kept, 0, size, op, kind, f"{what} {{}} is out of bounds ({expected})")
        return values
    if ignore is not None:
        data = data[data != ignore]
    if data.size:
        low, high = int(data.min()), int(data.max())
        if low < 0 or high >= size:
            raise op_error(op, f"{what} {low if low < 0 else high} is out of bounds "
                           f"({expected})", kind)
    return values


def check_values(values: Tensor, ok: Tensor, op: str, message: str,
                 kind: type = ValueError) -> Tensor:
    """`values` that `op` needs `ok` (a bool tensor of their shape) of everywhere, as eager
    code checks by reading them (gaussian_nll_loss's `var >= 0`). Traced, a check_values node
    whose output is the values to use, so that every compiled replay checks what eager mode
    checks instead of the call breaking the graph; eagerly it is checked at once. `message`
    follows `op: ` in the error, the first failing value at its `{}`."""
    if STATE.tracer is not None:
        return P.check_values(values, ok, op=_replay_name(op), kind=kind.__name__,
                              message=message)
    if ok.numel() and not bool(ok.all()):
        bad = values.detach()[~ok].reshape(-1)[0].item()
        raise op_error(op, message.format(bad), kind)
    return values


def check_bounds_later(index: Tensor, lowest, size, op: str, kind: type, message: str,
                       inclusive: bool = False) -> None:
    """Check that every value of `index` (on a GPU) lies in [lowest, size) without making the
    host wait: its minimum and maximum are queued on the device (`kiln.runtime.pending_checks`)
    and read at the next host read of device memory, which then raises `kind` naming `op`, the
    caller's line and `message` (with `{}` where the offending value goes). `inclusive`: the
    values may equal `size` too (a closed range, such as probabilities in [0, 1])."""
    data = index._data
    if data.size and index.device.type != "meta":         # a meta index has no values
        outer = getattr(_QUEUED_AS, "op", None)
        if outer is not None and not op.startswith(outer):
            op = f"{outer}: {op}"
        pending_checks.defer(data.min(), data.max(), lowest, size, op, kind, message,
                             user_location(), inclusive)


# The op a composite's queued checks name first (index_put's, whose indices tensor indexing
# checks): on the CPU its error is renamed as it is raised (`errors.in_composite`), but a
# queued check raises later, outside the composite.
_QUEUED_AS = threading.local()


@contextlib.contextmanager
def _queued_as(op: str):
    _QUEUED_AS.op = op
    try:
        yield
    finally:
        _QUEUED_AS.op = None


# Set while `_take_checked` runs take on indices its caller has checked already.
_CALLER_CHECKED = threading.local()


def _queue_device_check(idx, lowest: int, size: int, op: str, kind: type, message: str) -> None:
    if not getattr(_CALLER_CHECKED, "on", False):
        pending_checks.defer(idx.min(), idx.max(), lowest, size, op, kind, message,
                             user_location())


# the primitives' own checks on device arrays (take's) are queued the same way
defer_device_index_checks(_queue_device_check)


def _take_checked(input: Tensor, index: Tensor, axis: int) -> Tensor:
    """P.take of indices whose bounds the caller checked (with `_wrap_index`, or nll_loss its
    targets): on a GPU, take's own check of them would be two more reductions."""
    if index.device.type == "cpu":
        return P.take(input, index, axis=axis)
    _CALLER_CHECKED.on = True
    try:
        return P.take(input, index, axis=axis)
    finally:
        _CALLER_CHECKED.on = False


def _gather_positions(input_shape, dim, index, op="gather", checked=False):
    """Flat positions into `input` for gather/scatter: index along `dim`, arange elsewhere.
    `checked`: the caller has bounds-checked `index` already."""
    strides = [math.prod(input_shape[i + 1:]) for i in range(len(input_shape))]
    if not checked:
        index = _wrap_index(index, input_shape[dim], op, RuntimeError, dim=dim, negative=False)
    # (fewer ops for the eager path on a GPU, where each costs a launch: no multiplication by
    # a stride of 1, and the other dims' positions made as a strided arange)
    lin = index * strides[dim] if strides[dim] != 1 else index
    for i, n in enumerate(index.shape):
        if i == dim:
            continue
        if n > input_shape[i]:
            raise op_error(op, f"Size does not match at dimension {i} expected index "
                           f"{list(index.shape)} to be smaller than self {list(input_shape)} "
                           f"apart from dimension {dim}", RuntimeError)
        shape = [1] * index.ndim
        shape[i] = n
        step = strides[i]
        positions = arange(0, n * step, step, device=index.device) if step else \
            arange(n, device=index.device) * 0
        lin = lin + P.reshape(positions, shape=tuple(shape))
    return lin


def gather(input, dim, index, *, sparse_grad=False):
    if input.dtype in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("gather", input.dtype)
    return _gather(input, dim, index, "gather")


def _gather(input, dim, index, op, checked=False):
    """gather under the name of the op the user called; `checked`: `index` is known to be in
    [0, size) already (nll_loss checked its targets)."""
    d = _norm_dim(dim, input.ndim)
    if not index.numel():       # PyTorch checks neither the dtype nor the rank of no indices
        return reshape(reshape(input, (-1,))[:0], tuple(index.shape))
    if index.ndim == 0 and input.ndim <= 1:     # PyTorch counts a 0-d index as 1-d
        return reshape(_gather(input, dim, reshape(index, (1,)), op, checked), ())
    if input.ndim == 0 and index.ndim == 1:
        return _gather(reshape(input, (1,)), dim, index, op, checked)
    if index.ndim != input.ndim:
        raise op_error(op, f"Index tensor must have the same number of dimensions as "
                       f"input tensor ({index.ndim} vs {input.ndim})")
    lin = _gather_positions(tuple(input.shape), d, index, op, checked=checked)
    return _take_checked(reshape(input, (-1,)), lin, 0)


def _scatter(input, dim, index, src, prim, op):
    d = _norm_dim(dim, input.ndim)
    if input.ndim <= 1 and index.ndim <= 1 and 0 in (input.ndim, index.ndim):
        # PyTorch counts a 0-d input or index as 1-d (the transforms tutorial's one-hot
        # `zeros(10).scatter_(0, torch.tensor(y), value=1)`)
        if isinstance(src, Tensor) and src.ndim == 0:
            src = reshape(src, (1,))
        flat = _scatter(reshape(input, (-1,)), dim, reshape(index, (-1,)), src, prim, op)
        return reshape(flat, tuple(input.shape))
    if isinstance(src, Tensor) and src.dtype is not input.dtype:
        src = src.to(input.dtype)
    if not isinstance(src, Tensor):
        src = full(tuple(index.shape), src, dtype=input.dtype, device=input.device)
    elif tuple(src.shape) != tuple(index.shape):
        src = P.slice(src, starts=(0,) * src.ndim, stops=tuple(index.shape),
                      steps=(1,) * src.ndim)
    if index.ndim != input.ndim:
        raise op_error(op, f"Index tensor must have the same number of dimensions as "
                       f"self tensor ({index.ndim} vs {input.ndim})")
    lin = _gather_positions(tuple(input.shape), d, index, op)
    flat = prim(reshape(input, (-1,)), reshape(lin, (-1,)), reshape(src, (-1,)), axis=0)
    return reshape(flat, tuple(input.shape))


def scatter(input, dim, index, src=None, *, value=None, reduce=None):
    _check_unsigned("scatter", input)
    if reduce not in (None, "add", "multiply"):
        raise op_error("scatter", f"reduce argument must be either add or multiply, got "
                       f"{reduce!r}", RuntimeError)
    if reduce == "multiply":
        # scatter_reduce's product, which lives with the torch namespace's other scatters
        from kiln.tracer.functional_extra.shapes import scatter_reduce
        src = src if src is not None else value
        if not isinstance(src, Tensor):
            src = full(tuple(index.shape), src, dtype=input.dtype, device=input.device)
        return scatter_reduce(input, dim, index, src.to(input.dtype), "prod")
    if reduce == "add":
        return _scatter(input, dim, index, src if src is not None else value, P.index_add,
                        "scatter")
    return _scatter(input, dim, index, src if src is not None else value, P.index_put,
                    "scatter")


def scatter_add(input, dim, index, src):
    _check_unsigned("scatter_add", input)
    return _scatter(input, dim, index, src, P.index_add, "scatter_add")


def index_add(input, dim, index, source, *, alpha=1):
    x, d, index, source = as_vectors(input, dim, index, source)
    src = source * alpha if alpha != 1 else source
    index = _wrap_index(index, x.shape[d], "index_add", RuntimeError, dim=d, negative=False)
    return as_input(P.index_add(x, index, src.to(x.dtype), axis=d), input)


def index_fill(input, dim, index, value):
    """`value` where the positions along `dim` are named by `index` (once each, however
    often named: so the gradient of a tensor `value` counts each filled element once)."""
    x, d, index, _ = as_vectors(input, dim, index)
    n = x.shape[d]
    if isinstance(value, Tensor):
        if value.ndim:
            raise op_error("index_fill", f"index_fill_ only supports a 0-dimensional value "
                           f"tensor, but got tensor with {value.ndim} dimension(s).")
        value = value.to(x.dtype)
    else:
        value = full((), value, dtype=x.dtype, device=x.device)
    index = _wrap_index(index, n, "index_fill", dim=d)
    hit = P.index_put(zeros(n, dtype=dt.bool_, device=x.device), index,
                      full(tuple(index.shape), True, dtype=dt.bool_, device=x.device), axis=0)
    hit = reshape(hit, (n,) + (1,) * (x.ndim - d - 1))
    return as_input(P.where(hit, value, x), input)


def index_copy(input, dim, index, source):
    x, d, index, source = as_vectors(input, dim, index, source)
    if source.ndim == 0 and x.ndim == 1:
        source = reshape(source, (1,))
    index = _wrap_index(index, x.shape[d], "index_copy", dim=d, negative=False)
    return as_input(P.index_put(x, index, source.to(x.dtype), axis=d), input)


def masked_fill(input, mask, value):
    if input.dtype in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("masked_fill", input.dtype)
    if isinstance(value, Tensor):
        value = value.to(input.dtype)
    elif input.dtype.category == dt.INT and (type(value) is int or type(value) is float):
        value = creation.int_fill_value("masked_fill", value, input.dtype)
    elif input.dtype.category != dt.FLOAT and isinstance(value, float):
        value = int(value)
    if mask.dtype is not dt.bool_:
        raise op_error("masked_fill", f"masked_fill_ only supports boolean masks, but got mask "
                       f"with dtype {mask.dtype.name}")
    # PyTorch fills a row-major clone, whatever the input's layout
    return settle(P.where(mask, value, input), "contiguous")


def masked_select(input, mask):
    _check_unsigned("masked_select", input)
    input, mask = broadcast_tensors(input, mask)
    return getitem(input, mask)


def take(input, index):
    return _take_checked(reshape(input, (-1,)),
                         _wrap_index(index, input.numel(), "take", what="out of range"), 0)


def take_along_dim(input, indices, dim=None):
    """gather with broadcasting. Along `dim`, PyTorch takes every index modulo the dim's size
    (-1 is the last, n + 1 the second; none is out of range but on an empty dim); without
    `dim` both tensors are read flattened and indices outside [0, numel) are refused."""
    if dim is None:
        return _gather(reshape(input, (-1,)), 0, reshape(indices, (-1,)), "take_along_dim")
    if indices.dtype is not dt.int64:           # as PyTorch's, only along a dim
        raise op_error("take_along_dim", f"dtype of indices should be int64 (Long) but got "
                       f"{indices.dtype.name}")
    d = _norm_dim(dim, input.ndim)
    # every dim but `dim` broadcasts between input and indices
    a, b = list(input.shape), list(indices.shape)
    a[d] = b[d] = 1
    common = _broadcast("take_along_dim", tuple(a), tuple(b))
    input = expand(input, common[:d] + (input.shape[d],) + common[d + 1:])
    indices = expand(indices, common[:d] + (indices.shape[d],) + common[d + 1:])
    n = input.shape[d]
    if n == 0 and indices.numel():
        raise op_error("take_along_dim", f"cannot take indices along dimension {d} of size 0 "
                       f"(input shape {list(input.shape)}); PyTorch raises ZeroDivisionError")
    return _gather(input, d, P.mod(indices, n) if n else indices, "take_along_dim",
                   checked=True)


@composite
def one_hot(tensor, num_classes=-1):
    if tensor.dtype is not dt.int64:
        raise op_error("one_hot", "one_hot is only applicable to index tensor of type int64",
                       RuntimeError)
    if STATE.tracer is None and tensor._data.size and tensor.device.type != "cpu" and \
            num_classes != -1:
        # on a GPU the check waits on the device for the next host read
        check_bounds_later(tensor, 0, num_classes, "one_hot", RuntimeError, "Class values must "
                           f"be non-negative and smaller than num_classes={num_classes}. Got "
                           "class {}")
    elif STATE.tracer is None and tensor._data.size:
        # a class outside [0, num_classes) would give a row of zeros: PyTorch refuses it
        low, high = int(tensor._data.min()), int(tensor._data.max())
        if low < 0:
            raise op_error("one_hot", f"Class values must be non-negative. Got {low} in a "
                           f"tensor of shape {list(tensor.shape)}")
        if num_classes != -1 and high >= num_classes:
            raise op_error("one_hot", f"Class values must be smaller than num_classes. Got "
                           f"class {high} with num_classes={num_classes}")
    if num_classes == -1:
        num_classes = int(tensor.max().item()) + 1 if tensor.numel() else 0
    classes = arange(num_classes, device=tensor.device)
    return P.cast(P.eq(unsqueeze(tensor, -1), classes), dtype=dt.int64)


def nonzero(input, *, as_tuple=False):
    return _nonzero(input, as_tuple, "nonzero()")


def _nonzero(input, as_tuple, what):
    """nonzero, naming in a graph break `what` the user called (`torch.where(condition)`, a
    boolean mask index) rather than the nonzero inside it."""
    _check_unsigned("nonzero", input)
    if WRAPPERS[0] and dispatches(input):      # its class computes the positions
        from kiln.tracer.dispatch_subclass import call
        out = call("nonzero.default", (input,))
        return tuple(out[:, i] for i in range(out.shape[1])) if as_tuple else out
    data = input._read(what)
    xp = input.device.xp
    idx = xp.stack(xp.nonzero(data), axis=1) if data.ndim else xp.zeros(
        (int(bool(data)), 0), dtype=np.int64)
    out = Tensor._make(idx.astype(np.int64), dt.int64, input.device)
    if as_tuple:
        if not data.ndim:      # a 0-d input has one position, index 0, when it is nonzero
            return (zeros(out.shape[0], dtype=dt.int64, device=out.device),)
        return tuple(out[:, i] for i in range(out.shape[1]))
    return out


def argwhere(input):
    return nonzero(input)


def bool_masks(key, device):
    """`key` with each Python bool as a 0-d boolean mask (a new dim of size 1 or 0: `x[True]`
    is `x[None]`, `x[False]` selects nothing), as PyTorch and NumPy read it."""
    if key is True or key is False:
        return creation.tensor(key, dtype=dt.bool_, device=device)
    if type(key) is tuple and any(k is True or k is False for k in key):
        return tuple(bool_masks(k, device) if k is True or k is False else k for k in key)
    return key


def _has_advanced(key) -> bool:
    """Whether a key holds an index tensor, list or array (NumPy's advanced indexing)."""
    items = key if type(key) is tuple else (key,)
    return any(isinstance(k, (Tensor, list, range, np.ndarray)) for k in items)


def _normalize_key(key, ndim):
    """Split an index into per-dim items, expanding `...`; None stays as 'new axis'."""
    if not isinstance(key, tuple):
        key = (key,)
    items = []
    for k in key:
        if isinstance(k, (list, np.ndarray)) or (isinstance(k, Tensor)):
            items.append(k)
        else:
            items.append(k)
    consumed = 0
    for k in items:
        if k is None or k is Ellipsis or k is True or k is False:
            continue
        if isinstance(k, Tensor) and k.dtype is dt.bool_:
            consumed += k.ndim
        elif isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype == np.bool_:
            consumed += np.asarray(k).ndim
        else:
            consumed += 1
    if consumed > ndim:
        raise op_error("index", f"too many indices for tensor of dimension {ndim}", IndexError)
    if _py_sum(1 for k in items if k is Ellipsis) > 1:
        raise op_error("index", "an index can only have a single ellipsis ('...')", IndexError)
    if Ellipsis in [k for k in items if not isinstance(k, (Tensor, list, np.ndarray))]:
        at = next(i for i, k in enumerate(items) if k is Ellipsis)
        items = items[:at] + [slice(None)] * (ndim - consumed) + items[at + 1:]
    else:
        items = items + [slice(None)] * (ndim - consumed)
    return items


def _basic_getitem(input, key):
    """`input[key]` for the common keys, made of in-range ints and slices with positive int
    steps (at most one per dim), as one slice (and, for int items, one reshape); None for any
    other key, which `getitem` then handles (and reports errors for) in general."""
    shape = input._data.shape
    if type(key) is slice and shape and (key.step is None or type(key.step) is int
                                         and key.step > 0):
        # x[a:b:s], the most common key: one slice of dim 0
        a, b, step = key.indices(shape[0])
        b = _py_max(a, b)
        if a == 0 and b == shape[0] and step == 1:
            return input
        rest = len(shape) - 1
        return P.slice(input, starts=(a,) + (0,) * rest, stops=(b,) + shape[1:],
                       steps=(step,) + (1,) * rest)
    items = key if type(key) is tuple else (key,)
    if len(items) > len(shape):
        return None
    starts, stops, steps, out_shape = [], [], [], []
    whole = True                # every item so far takes its whole dim
    for k, n in zip(items, shape):
        if type(k) is slice:
            step = k.step
            if step is not None and (type(step) is not int or step <= 0):
                return None
            a, b, step = k.indices(n)
            b = _py_max(a, b)
            out_shape.append((b - a + step - 1) // step)
        elif type(k) is int and -n <= k < n:
            a = k % n
            b, step = a + 1, 1          # the dim is dropped: nothing goes into out_shape
        else:
            return None
        if a != 0 or b != n or step != 1:
            whole = False
        starts.append(a)
        stops.append(b)
        steps.append(step)
    rest = shape[len(items):]       # dims the key does not name are taken whole
    x = input
    if not whole:
        x = P.slice(x, starts=tuple(starts) + (0,) * len(rest), stops=tuple(stops) + rest,
                    steps=tuple(steps) + (1,) * len(rest))
    if len(out_shape) != len(items):
        x = P.reshape(x, shape=tuple(out_shape) + rest)
    return x


def getitem(input, key):
    """`tensor[key]`: ints, slices with steps, None, ..., integer tensors and boolean masks."""
    x = _basic_getitem(input, key)
    if x is not None:
        return x
    if _has_advanced(key):          # a bool among index tensors broadcasts with them
        key = bool_masks(key, input.device)
    items = _normalize_key(key, input.ndim)
    x = input
    shape = tuple(input.shape)
    starts, stops, steps, out_shape = [], [], [], []
    advanced = []          # (position in the sliced result, index tensor)
    empty = []             # positions of new dims of size 0 (`False`)
    dim = 0
    for k in items:
        if k is None or k is True or k is False:    # (a bool: a new dim of size 1 or 0)
            if k is False:
                empty.append(len(out_shape))
            out_shape.append(1)
            continue
        if isinstance(k, (list, range, np.ndarray)):     # x[range(n), y], as in PyTorch
            k = input.new_tensor(np.asarray(k))
            if k.dtype.is_floating_point and k.numel() == 0:
                k = k.to(dt.int64)
        if isinstance(k, Tensor):
            if k.device is not input.device and k.device.type == "cpu":
                k = k.to(input.device)   # as PyTorch: indices on the CPU for a tensor anywhere
            if k.dtype is dt.uint8:
                k = _uint8_mask(k)
            if k.dtype is dt.bool_ and k.ndim == 0:
                # a 0-d mask adds a dim of size 1 and keeps it (True) or empties it (False)
                out_shape.append(1)
                advanced.append((len(out_shape) - 1, zeros(int(bool(k)), dtype=dt.int64,
                                                           device=input.device)))
                continue
            if k.dtype is dt.bool_:
                if tuple(k.shape) != shape[dim:dim + k.ndim]:
                    raise op_error("index", f"The shape of the mask {list(k.shape)} at index "
                                   f"{dim} does not match the shape of the indexed tensor "
                                   f"{list(shape[dim:dim + k.ndim])}", IndexError)
                nz = _nonzero(k, False, "nonzero() in indexing by a boolean mask")
                for j in range(k.ndim):
                    starts.append(0)
                    stops.append(shape[dim])
                    steps.append(1)
                    advanced.append((len(out_shape), nz[:, j] if k.ndim else nz[:, 0]))
                    out_shape.append(shape[dim])
                    dim += 1
                continue
            if k.dtype.is_floating_point:
                raise op_error("index", "tensors used as indices must be long, int or bool "
                               "tensors", IndexError)
            starts.append(0)
            stops.append(shape[dim])
            steps.append(1)
            advanced.append((len(out_shape), k))
            out_shape.append(shape[dim])
            dim += 1
            continue
        if isinstance(k, slice):
            n = shape[dim]
            step = 1 if k.step is None else int(k.step)
            if step <= 0:
                raise op_error("index", "step must be greater than zero", ValueError)
            a, b, _ = slice(k.start, k.stop, step).indices(n)
            b = _py_max(a, b)
            starts.append(a)
            stops.append(b)
            steps.append(step)
            out_shape.append((b - a + step - 1) // step)
            dim += 1
            continue
        try:
            i = int(k.__index__() if isinstance(k, Tensor) else k)
        except (TypeError, AttributeError):
            raise op_error("index", f"only integers, slices (`:`), ellipsis (`...`), None and "
                           f"long or byte Variables are valid indices (got "
                           f"{type(k).__name__})", IndexError) from None
        n = shape[dim]
        if not -n <= i < n:
            raise op_error("index", f"index {i} is out of bounds for dimension {dim} with size "
                           f"{n}", IndexError)
        i %= n
        starts.append(i)
        stops.append(i + 1)
        steps.append(1)
        out_shape.append(None)      # dropped after slicing
        dim += 1
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * len(shape), shape,
                                                      (1,) * len(shape)):
        x = P.slice(x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    # the shape with ints dropped and None added; advanced positions refer into it
    keep = [s for s in out_shape if s is not None]
    positions = {}
    at = 0
    for i, s in enumerate(out_shape):
        if s is not None:
            positions[i] = at
            at += 1
    if tuple(keep) != tuple(x.shape):
        x = P.reshape(x, shape=tuple(keep))
    if empty:
        sizes = list(x.shape)
        for p in empty:
            sizes[positions[p]] = 0
        x = P.slice(x, starts=(0,) * x.ndim, stops=tuple(sizes), steps=(1,) * x.ndim)
    if not advanced:
        return x
    return _advanced_index(x, [(positions[p], idx) for p, idx in advanced])


def _advanced_index(x, advanced):
    """Integer-tensor indexing (NumPy rules) over the dims named in `advanced`."""
    dims = [d for d, _ in advanced]
    shape = tuple(x.shape)
    if len(advanced) == 1:
        d, idx = advanced[0]
        return _take_checked(x, _wrap_index(idx, shape[d], dim=d), d)
    idx_shape = _broadcast("index", *(tuple(i.shape) for _, i in advanced))
    # move the indexed dims to the front, flatten them into one, and take by linear position
    rest = [i for i in range(len(shape)) if i not in dims]
    moved = P.permute(x, perm=tuple(dims + rest)) if dims + rest != list(range(len(shape))) else x
    lin = None
    stride = 1
    for d, idx in reversed(advanced):
        term = _wrap_index(idx, shape[d], dim=d)
        term = term * stride if stride != 1 else term
        lin = term if lin is None else lin + term
        stride *= shape[d]
    lin = expand(lin, idx_shape)
    flat = P.reshape(moved, shape=(stride,) + tuple(shape[i] for i in rest))
    out = _take_checked(flat, lin, 0)
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if adjacent and dims[0] != 0:
        # NumPy keeps the result dims where the (adjacent) indexed dims were
        k = len(idx_shape)
        before = list(range(k, k + dims[0]))
        perm = before + list(range(k)) + list(range(k + dims[0], out.ndim))
        out = P.permute(out, perm=tuple(perm))
    return out


def _flat_positions(input, key):
    """Flat element positions that `input[key]` selects, shaped like `input[key]`."""
    positions = P.reshape(arange(input.numel(), device=input.device), shape=tuple(input.shape))
    return getitem(positions, key)


@composite        # a bad index is reported as index_put's (put's), not tensor indexing's
def index_put(input, indices, values, accumulate=False):
    if input.device.type == "cpu":
        pos = _flat_positions(input, tuple(indices))
    else:
        with _queued_as("index_put"):
            pos = _flat_positions(input, tuple(indices))
    return _put_at(input, pos, values, P.index_add if accumulate else P.index_put)


def _put_at(input, pos, values, prim):
    if not isinstance(values, Tensor):
        values = full((), values, dtype=input.dtype, device=input.device)
    elif values.dtype is not input.dtype:
        values = values.to(input.dtype)
    values = expand(values, tuple(pos.shape))
    flat = prim(reshape(input, (-1,)), reshape(pos, (-1,)), reshape(values, (-1,)), axis=0)
    return reshape(flat, tuple(input.shape))


def setitem_functional(input, key, value):
    """The value of `input` after `input[key] = value`, as a new tensor (for autograd/tracing)."""
    mask = _leading_mask(input, key, value)
    if mask is not None:
        return _write_where(input, mask, value)
    return _put_at(input, _flat_positions(input, key), value, P.index_put)


def _leading_mask(input, key, value):
    """The boolean mask of `input[mask] = value` where it covers input's leading dimensions and
    the value broadcasts over the others (a number, a 0-d tensor, a row): such a write is
    `where(mask, value, input)`, with no shape that depends on the data (`labels[mask == 0] = 0`
    compiles; through nonzero's positions it was a graph break). None for any other key."""
    if isinstance(key, tuple) and len(key) == 1:
        key = key[0]
    if not isinstance(key, Tensor) or key.dtype is not dt.bool_ or key.ndim == 0:
        return None
    if key.device != input.device or tuple(key.shape) != tuple(input.shape[:key.ndim]):
        return None
    if isinstance(value, Tensor) and value.ndim > input.ndim - key.ndim:
        return None
    return key


def _write_where(input, mask, value):
    mask = reshape(mask, tuple(mask.shape) + (1,) * (input.ndim - mask.ndim))
    if not isinstance(value, Tensor):
        value = full((), value, dtype=input.dtype, device=input.device)
    elif value.dtype is not input.dtype:
        value = value.to(input.dtype)
    return where(mask, value, input)
