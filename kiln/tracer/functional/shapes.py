"""Shapes and movement: reshape/view, squeeze/unsqueeze, permute/transpose, expand, cat/stack,
split/chunk, narrow/select, flip/roll, pad, clone, tril/triu, diagonal/diag."""

from __future__ import annotations

import builtins
import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.runtime.device import MetaArray, is_host_array
from kiln.tracer import layout
from kiln.tracer.autograd import _COUNTS_HOLD, Node, _probe_refs, _refs, set_name
from kiln.tracer.errors import op_error
from kiln.tracer.storage import element_offset
from kiln.tracer.strides import _CL_ORDERS, settle, stacked
from kiln.tracer.functional.common import (_axes, _broadcast, _norm_dim, _py_abs, _py_max, _py_min,
                                           _py_sum, arange, zeros)
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.unsigned import check as _check_unsigned


# ----------------------------------------------------------------------------- shapes, movement

def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and type(shape[0]) is int:      # reshape(-1): the common case
        return shape
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 1 and isinstance(shape[0], Tensor):
        shape = tuple(shape[0].tolist())
    return tuple(map(int, shape))


def _infer_shape(shape: tuple, numel: int, op: str = "view") -> tuple:
    if shape == (-1,):
        return (numel,)
    if -1 not in shape:
        if math.prod(shape) != numel:
            raise op_error(op, f"shape '{list(shape)}' is invalid for input of size {numel}")
        return shape
    if shape.count(-1) > 1:
        raise op_error(op, "only one dimension can be inferred")
    known = math.prod(s for s in shape if s != -1)
    if known == 0 or numel % known:
        raise op_error(op, f"shape '{list(shape)}' is invalid for input of size {numel}")
    return tuple(numel // known if s == -1 else s for s in shape)


def reshape(input, *sizes, shape=None):
    if shape is not None and sizes:
        raise op_error("reshape", "takes a shape positionally or as `shape=`, not both",
                       TypeError)
    shape = _infer_shape(_shape_arg(sizes if shape is None else (shape,)), input._data.size,
                         "reshape")
    if shape == input._data.shape:
        return input if STATE.tracer is None and not input.requires_grad else \
            P.reshape(input, shape=shape)
    return P.reshape(input, shape=shape)


def view(input, *shape, dtype=None):
    if dtype is None and len(shape) == 1 and isinstance(shape[0], dt.DType):
        dtype, shape = shape[0], ()
    if dtype is not None:
        if shape:
            raise op_error("view", "takes a shape or a dtype, not both", TypeError)
        return view_dtype(input, dtype)
    shape = _infer_shape(_shape_arg(shape), input._data.size, "view")
    if not input._data.flags.c_contiguous and not _viewable(input._data, shape) \
            and not _relayout_private(input):
        # the reshape would copy, and writes through the result would not reach `input`
        data = input._data
        raise op_error("view", f"view size is not compatible with input tensor's size and "
                       f"stride (at least one dimension spans across two contiguous "
                       f"subspaces): shape {list(data.shape)}, stride {list(input.stride())}, "
                       f"view shape {list(shape)}. Use .reshape(...) instead.")
    return P.reshape(input, shape=shape)


def view_dtype(input, dtype):
    """`x.view(dtype)`: the same memory read as another dtype, as PyTorch's view(dtype) (a
    view sharing `x`'s memory and version counter, outside autograd). Of the same element
    size any layout works; of another, the last dim must have stride 1 and is scaled by the
    ratio of the sizes (a float32 (2, 3) as uint8 is (2, 12)), with PyTorch's rules and
    messages."""
    if not isinstance(dtype, dt.DType):
        raise op_error("view", f"expected a dtype, got {type(dtype).__name__}", TypeError)
    old, new = input.dtype.itemsize, dtype.itemsize
    data = input._data
    if STATE.tracer is not None:
        # a reinterpretation of bits has no IR op: the function runs this part eagerly
        STATE.tracer.graph_break(f"Tensor.view({dtype.name}) reinterprets memory")
    if old != new:
        # PyTorch's names of the dtypes, as its view(dtype) messages spell them
        what = (f"to view {dt.SCALAR_TYPE_NAMES[input.dtype]} as "
                f"{dt.SCALAR_TYPE_NAMES[dtype]} (different element sizes)")
        if data.ndim == 0:
            raise op_error("view", f"self.dim() cannot be 0 {what}")
        strides = input.stride() if input.device.type != "meta" else None
        if strides is not None and strides[-1] != 1:
            raise op_error("view", f"self.stride(-1) must be 1 {what}, but got {strides[-1]}")
        if new > old:
            ratio = new // old
            if data.shape[-1] % ratio:
                raise op_error("view", f"self.size(-1) must be divisible by {ratio} {what}, "
                               f"but got {data.shape[-1]}")
            offset = element_offset(data)
            if offset % ratio:
                raise op_error("view", f"self.storage_offset() must be divisible by {ratio} "
                               f"{what}, but got {offset}")
            for d, st in enumerate((strides or ())[:-1]):
                if st % ratio:
                    raise op_error("view", f"self.stride({d}) must be divisible by {ratio} "
                                   f"{what}, but got {st}")
    if input.device.type == "meta":
        last = data.shape[-1] * old // new if data.ndim else None
        out = MetaArray(data.shape[:-1] + (last,) if data.ndim else (), dtype.np_dtype)
    else:
        out = data.view(dtype.np_dtype)
    result = Tensor._make(out, dtype, input.device)
    result._version = input._version       # writes through either are seen by both
    return result


# the order of dims (fastest first) of an eager convolution's result, by rank: channels-last,
# (N, L, C), (N, H, W, C), (N, D, H, W, C) in memory, where PyTorch's is contiguous
_CONV_OUTPUT_ORDERS = {3: (1, 2, 0), **_CL_ORDERS}


def _relayout_private(input) -> bool:
    """Make `input` C-contiguous in place when no other tensor or array can see its memory.

    kiln lays some fresh results out differently from PyTorch: a conv's output, and the
    elementwise and pooling results that keep its layout, are channels-last where PyTorch's are
    contiguous, so `x.view(-1, 320)` after a conv must work as it does there. Such a result owns
    its memory (no NumPy base); when nothing but `input` and its own autograd node refers to
    that array (no view, no `.data` alias), copying it to C order is invisible to the user.
    Only a result laid out as a convolution lays out its output (channels fastest) qualifies:
    any other layout is PyTorch's too (`tracer/strides.py`), so there its view() raises.
    """
    data = input._data
    if not _COUNTS_HOLD or getattr(data, "base", None) is not None:
        return False
    order = _CONV_OUTPUT_ORDERS.get(data.ndim)
    if order is None or not layout.is_dense_in(data.shape, data.strides, order, data.itemsize):
        return False
    holders = 1                                 # input._data (and `data` here)
    # the autograd node that made this memory keeps it for its backward (reading it there is
    # unchanged by the copy); after in-place ops (ReLU(inplace=True)) it sits a few nodes back
    frontier, seen = [input.grad_fn], set()
    for _ in range(4):
        frontier = [n for n in frontier if isinstance(n, Node) and id(n) not in seen]
        seen.update(map(id, frontier))
        holders += sum(n.out_data is data for n in frontier)
        frontier = [e for n in frontier for e in (n.edges or ())]
    del frontier
    if _refs(data) != _probe_refs() + holders:
        return False
    input._data = input.device.xp.ascontiguousarray(data)
    return True


def _viewable(data, shape: tuple) -> bool:
    """Whether `shape` can view `data`'s memory without a copy: each run of old dims laid out
    contiguously (stride[d-1] == size[d] * stride[d], size-1 dims aside) must split into whole
    new dims (PyTorch's computeStride)."""
    old, new = data.shape, shape
    if data.size == 0 or not old:
        return True
    strides = [st // data.itemsize for st in data.strides]
    view_d = len(new) - 1
    chunk_stride = strides[-1]
    tensor_numel = view_numel = 1
    for d in range(len(old) - 1, -1, -1):
        tensor_numel *= old[d]
        if d == 0 or (old[d - 1] != 1 and strides[d - 1] != tensor_numel * chunk_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new[view_d] == 1):
                view_numel *= new[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return False
            if d > 0:
                chunk_stride = strides[d - 1]
                tensor_numel = view_numel = 1
    return view_d == -1


def view_as(input, other):
    return view(input, tuple(other.shape))


def reshape_as(input, other):
    return reshape(input, tuple(other.shape))


def flatten(input, start_dim=0, end_dim=-1):
    if input.ndim == 0:
        return P.reshape(input, shape=(1,))
    s, e = _norm_dim(start_dim, input.ndim), _norm_dim(end_dim, input.ndim)
    if s > e:
        raise op_error("flatten", "start_dim cannot come after end_dim")
    shape = tuple(input.shape)
    new = shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]
    return P.reshape(input, shape=new) if new != shape else input


def unflatten(input, dim, sizes):
    d = _norm_dim(dim, input.ndim)
    shape = tuple(input.shape)
    sizes = _infer_shape(tuple(sizes), shape[d], "unflatten")
    return P.reshape(input, shape=shape[:d] + sizes + shape[d + 1:])


def _labelled(out, name: str):
    """`out`, its node reporting PyTorch's `name` for the op that made it (the primitive's
    node would say ViewBackward0 or PermuteBackward0): one class store, no wrapper."""
    set_name(out.grad_fn, name)
    return out


def squeeze(input, dim=None):
    shape = tuple(input.shape)
    if dim is None:
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
    elif isinstance(dim, (tuple, list)) and not dim:
        axes = ()                     # no dims named: nothing squeezed (not every dim)
    else:
        axes = tuple(a for a in _axes(dim if isinstance(dim, (tuple, list)) else (dim,),
                                      input.ndim) if input.ndim and shape[a] == 1)
    if not axes:
        if STATE.tracer is None and not input.requires_grad:
            return input
        out = P.reshape(input, shape=shape)
    else:
        out = P.reshape(input, shape=tuple(s for i, s in enumerate(shape) if i not in axes))
    return _labelled(out, "SqueezeBackward0" if dim is None else
                     "SqueezeBackward2" if isinstance(dim, (tuple, list)) else
                     "SqueezeBackward1")


def unsqueeze(input, dim):
    d = _norm_dim(dim, input.ndim + 1)
    shape = tuple(input.shape)
    out = P.reshape(input, shape=shape[:d] + (1,) + shape[d:])
    if d == len(shape) and d and out._base is not None:
        _unit_stride_last(out)
    if out.grad_fn is not None:         # inline _labelled: unsqueeze is a hot op
        _labelled(out, "UnsqueezeBackward0")
    return out


def _unit_stride_last(out) -> None:
    """Give view `out`'s new last dim (of size 1) PyTorch's stride 1, where NumPy's reshape
    repeats the stride of the dim before it (a stride of a size-1 dim never moves an element,
    but `.stride()`, and the layouts results take from it, read it)."""
    data = out._data
    if is_host_array(data) and data.strides[-1] != data.itemsize:
        out._data = np.lib.stride_tricks.as_strided(
            data, strides=data.strides[:-1] + (data.itemsize,), writeable=data.flags.writeable)


def permute(input, *dims):
    dims = _shape_arg(dims)
    if len(dims) != input.ndim:
        raise op_error("permute", f"number of dims don't match in permute: input has "
                       f"{input.ndim} dims, got {len(dims)}")
    perm = tuple(_norm_dim(d, input.ndim) for d in dims)
    if len(set(perm)) != len(perm):
        raise op_error("permute", f"repeated dim in permute: {list(dims)}")
    return P.permute(input, perm=perm)


def transpose(input, dim0, dim1):
    if input.ndim < 2 and input.ndim == 0:
        return input
    a, b = _norm_dim(dim0, input.ndim), _norm_dim(dim1, input.ndim)
    perm = list(range(input.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    out = P.permute(input, perm=tuple(perm))
    if out.grad_fn is not None:
        _labelled(out, "TransposeBackward0")
    return out


swapaxes = swapdims = transpose


def t(input):
    if input.ndim > 2:
        raise op_error("t", f"t() expects a tensor with <= 2 dimensions, but self is "
                       f"{input.ndim}D")
    return _labelled(transpose(input, 0, 1), "TBackward0") if input.ndim == 2 else input


def movedim(input, source, destination):
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src = [_norm_dim(s, input.ndim) for s in src]
    dst = [_norm_dim(d, input.ndim) for d in dst]
    rest = [i for i in range(input.ndim) if i not in src]
    perm = [None] * input.ndim
    for s, d in zip(src, dst):
        perm[d] = s
    it = iter(rest)
    perm = [p if p is not None else next(it) for p in perm]
    return P.permute(input, perm=tuple(perm))


moveaxis = movedim


def expand(input, *sizes):
    sizes = _shape_arg(sizes)
    shape = tuple(input.shape)
    lead = len(sizes) - len(shape)
    if lead < 0:
        raise op_error("expand", f"the number of sizes provided ({len(sizes)}) must be greater "
                       f"or equal to the number of dimensions in the tensor ({len(shape)})")
    target = tuple(shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(sizes))
    if target == shape:
        return input if STATE.tracer is None and not input.requires_grad else \
            P.expand(input, shape=target)
    return P.expand(input, shape=target)


def expand_as(input, other):
    return expand(input, tuple(other.shape))


def broadcast_to(input, shape):
    return expand(input, tuple(shape))


def broadcast_tensors(*tensors):
    shape = _broadcast("broadcast_tensors", *(tuple(t.shape) for t in tensors))
    return tuple(expand(t, shape) for t in tensors)


def repeat(input, *sizes):
    sizes = _shape_arg(sizes)
    if len(sizes) < input.ndim:
        raise op_error("repeat", "Number of dimensions of repeat dims can not be smaller than "
                       "number of dimensions of tensor")
    x = reshape(input, (1,) * (len(sizes) - input.ndim) + tuple(input.shape))
    shape = tuple(x.shape)
    # each dim d becomes (r, d): expand a new axis in front of it, then merge the pair
    inter = tuple(v for r, d in zip(sizes, shape) for v in (1, d))
    target = tuple(v for r, d in zip(sizes, shape) for v in (r, d))
    out = P.expand(P.reshape(x, shape=inter), shape=target)
    return _own_memory(P.reshape(out, shape=tuple(r * d for r, d in zip(sizes, shape))))


def tile(input, dims):
    dims = tuple(dims)
    if len(dims) < input.ndim:
        dims = (1,) * (input.ndim - len(dims)) + dims
    return repeat(input, dims)


def cat(tensors, dim=0):
    tensors = [t for t in tensors]
    if not tensors:
        raise op_error("cat", "expected a non-empty list of Tensors")
    # PyTorch skips legacy 1-D empty tensors and promotes dtypes
    def legacy_empty(t):
        return t.ndim == 1 and t.shape[0] == 0
    ref = next((t for t in tensors if not legacy_empty(t)), tensors[0])
    nonempty = [t for t in tensors if not legacy_empty(t) or ref.ndim == 1]
    d = _norm_dim(dim, nonempty[0].ndim)
    dtype = nonempty[0].dtype
    for t in nonempty[1:]:
        dtype = dt.promote(dtype, t.dtype)
    nonempty = [t if t.dtype is dtype else P.cast(t, dtype=dtype) for t in nonempty]
    for t in nonempty[1:]:
        if t.ndim != nonempty[0].ndim:
            raise op_error("cat", f"Tensors must have same number of dimensions: got "
                           f"{nonempty[0].ndim} and {t.ndim}")
    if len(nonempty) == 1:
        return nonempty[0].clone()
    return P.cat(*nonempty, axis=d)


concat = concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise op_error("stack", "expected a non-empty list of Tensors")
    shape = tuple(tensors[0].shape)
    for t in tensors[1:]:
        if tuple(t.shape) != shape:
            raise op_error("stack", f"stack expects each tensor to be equal size, but got "
                           f"{list(shape)} at entry 0 and {list(t.shape)} at another entry")
    d = _norm_dim(dim, len(shape) + 1)
    out = cat([unsqueeze(t, d) for t in tensors], d)
    if d < len(shape) and all(isinstance(t, Tensor) for t in tensors):
        # laid out as PyTorch's stack (a cat along `dim` split by a view) lays it out
        strides = stacked(tensors, d, out._data.itemsize)
        if strides is not None:
            settle(out, strides)
    return out


def hstack(tensors):
    tensors = list(tensors)
    return cat(tensors, 0 if tensors[0].ndim == 1 else 1)


def vstack(tensors):
    return cat([t if t.ndim >= 2 else reshape(t, (1, -1)) for t in tensors], 0)


def narrow(input, dim, start, length):
    d = _norm_dim(dim, input.ndim, "narrow")
    n, start, length = input.shape[d], int(start), int(length)
    if not -n <= start <= n:
        raise op_error("narrow", f"start out of range (expected to be in range of [{-n}, {n}], "
                       f"but got {start})", IndexError)
    if length < 0:
        raise op_error("narrow", "narrow(): length must be non-negative.")
    start += n if start < 0 else 0
    if start + length > n:
        raise op_error("narrow", f"start ({start}) + length ({length}) exceeds dimension size "
                       f"({n}).")
    return _slice_dim(input, d, start, start + length)


def _slice_dim(input, d, start, stop, step=1):
    shape = tuple(input.shape)
    if not 0 <= start <= stop <= shape[d]:
        raise op_error("narrow", f"start ({start}) + length ({stop - start}) exceeds dimension "
                       f"size ({shape[d]}).", IndexError)
    starts = tuple(start if i == d else 0 for i in range(len(shape)))
    stops = tuple(stop if i == d else s for i, s in enumerate(shape))
    steps = tuple(step if i == d else 1 for i in range(len(shape)))
    return P.slice(input, starts=starts, stops=stops, steps=steps)


def split(tensor, split_size_or_sections, dim=0):
    d = _norm_dim(dim, tensor.ndim)
    n = tensor.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0 and n:
            raise op_error("split", f"split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else []) if n else [0]
    else:
        sizes = list(split_size_or_sections)
        if _py_sum(sizes) != n:
            raise op_error("split", f"split_with_sizes expects split_sizes to sum exactly to "
                           f"{n} (input tensor's size at dimension {d}), but got split_sizes="
                           f"{sizes}")
    out, at = [], 0
    for s in sizes:
        out.append(_slice_dim(tensor, d, at, at + s))
        at += s
    return tuple(out)


def chunk(input, chunks, dim=0):
    d = _norm_dim(dim, input.ndim)
    size = -(-input.shape[d] // chunks) if input.shape[d] else 1
    return split(input, _py_max(size, 1), d)


def tensor_split(input, indices_or_sections, dim=0):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    if isinstance(indices_or_sections, Tensor):    # 0-d: a number of sections; 1-d: indices
        indices_or_sections = indices_or_sections.tolist()
    if isinstance(indices_or_sections, int):
        k = indices_or_sections
        sizes = [n // k + 1] * (n % k) + [n // k] * (k - n % k)
        return split(input, sizes, d)
    # indices: the pieces are Python's slices [0:i0], [i0:i1], ..., [ik:] (they may overlap)
    bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    pieces = []
    for a, b in zip(bounds, bounds[1:]):
        start, stop, _ = slice(a, b).indices(n)
        pieces.append(_slice_dim(input, d, start, _py_max(start, stop)))
    return tuple(pieces)


def unbind(input, dim=0):
    d = _norm_dim(dim, input.ndim)
    return tuple(squeeze(_slice_dim(input, d, i, i + 1), d) for i in range(input.shape[d]))


def select(input, dim, index):
    d = _norm_dim(dim, input.ndim, "select")
    n = input.shape[d]
    i = int(index)
    if not -n <= i < n:
        raise op_error("select", f"index {i} out of range for tensor of size "
                       f"{list(input.shape)} at dimension {d}", IndexError)
    i %= n
    return squeeze(_slice_dim(input, d, i, i + 1), d)


def _own_memory(t):
    """`t` in row-major memory of its own: the result of an op PyTorch defines as a copy
    (flip, repeat, repeat_interleave) whose NumPy form may be a view of its input, through
    which an in-place write would reach the input."""
    if t._base is None and t._data.flags.owndata and t._data.flags.c_contiguous:
        return t
    return contiguous(P.cast(t, dtype=t.dtype))     # a copy autograd and the tracer see


def flip(input, dims):
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = tuple(_norm_dim(a, input.ndim) for a in dims)
    if input.ndim - 1 in axes or not input.is_contiguous():
        # PyTorch flips these types only by copying whole rows of a contiguous tensor
        _check_unsigned("flip", input)
    if not input.ndim:
        return input.clone()
    out = P.flip(input, axes=axes)      # a copy in the input's layout (`tracer.strides`)
    return out if out._base is None else _own_memory(out)


def fliplr(input):
    return flip(input, (1,))


def flipud(input):
    return flip(input, (0,))


def roll(input, shifts, dims=None):
    if dims is None:
        return reshape(roll(reshape(input, (-1,)), shifts, 0), tuple(input.shape))
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = input
    for s, d in zip(shifts, dims):
        d = _norm_dim(d, input.ndim)
        n = input.shape[d]
        if n == 0:
            continue
        s %= n
        if s:
            out = cat([_slice_dim(out, d, n - s, n), _slice_dim(out, d, 0, n - s)], d)
    return out


def pad(input, pad, mode="constant", value=None):
    """`F.pad`: pairs of (before, after) padding from the last dim backwards."""
    if len(pad) % 2 or len(pad) // 2 > input.ndim:
        raise op_error("pad", f"Padding length must be divisible by 2 and at most twice the "
                       f"number of dims ({input.ndim}); got {len(pad)}")
    pairs = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        pairs[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    for d, (lo, hi) in enumerate(pairs):
        _check_pad_pair(input, d, lo, hi, mode)
    padded = [input.shape[d] + lo + hi
              for d, (lo, hi) in enumerate(pairs)][input.ndim - len(pad) // 2:]
    if mode in ("reflect", "replicate") and padded and _py_max(padded) < 1:
        raise op_error("pad", f"input {list(input.shape)} is too small for {mode} padding "
                       f"{tuple(pad)}: the padded dims would have sizes {padded}")
    if mode == "constant":
        return P.pad(_crop(input, pairs), pads=tuple((_py_max(0, lo), _py_max(0, hi))
                                                     for lo, hi in pairs),
                     value=0.0 if value is None else value)
    if mode in ("reflect", "replicate") and input.dtype is dt.bool_:
        raise op_error("pad", f"\"{mode}ion_pad\" not implemented for 'Bool' (as PyTorch); pad "
                       "x.to(torch.uint8) instead", NotImplementedError)
    if mode not in ("reflect", "replicate", "circular"):
        raise op_error("pad", f"unsupported padding mode {mode!r}", NotImplementedError)
    # as PyTorch: circular padding wraps around the cropped input; reflect and replicate take
    # the positive parts from the whole input (out[o] = x[f(o - lo)]) and crop the result
    x = _crop(input, pairs) if mode == "circular" else input
    for d, (lo, hi) in enumerate(pairs):
        lo, hi = _py_max(0, lo), _py_max(0, hi)
        if lo == 0 and hi == 0:
            continue
        n = x.shape[d]
        parts = []
        if mode == "reflect":
            if lo:
                parts.append(flip(_slice_dim(x, d, 1, lo + 1), (d,)))
            parts.append(x)
            if hi:
                parts.append(flip(_slice_dim(x, d, n - hi - 1, n - 1), (d,)))
        elif mode == "replicate":
            shape_lo = tuple(lo if i == d else s for i, s in enumerate(x.shape))
            shape_hi = tuple(hi if i == d else s for i, s in enumerate(x.shape))
            if lo:
                parts.append(expand(_slice_dim(x, d, 0, 1), shape_lo))
            parts.append(x)
            if hi:
                parts.append(expand(_slice_dim(x, d, n - 1, n), shape_hi))
        else:
            if lo:
                parts.append(_slice_dim(x, d, n - lo, n))
            parts.append(x)
            if hi:
                parts.append(_slice_dim(x, d, 0, hi))
        x = cat(parts, d)
    return x if mode == "circular" else _crop(x, pairs)


def _check_pad_pair(input, d: int, lo: int, hi: int, mode: str) -> None:
    """PyTorch's limits on one dim's padding (lo, hi), with messages naming pad and the dim."""
    n = input.shape[d]
    kept = n - _py_max(0, -lo) - _py_max(0, -hi)        # what a crop leaves
    if n + lo + hi < 0:
        problem = f"leaves a negative size {n + lo + hi}"
    elif mode == "constant" and kept < 0:
        problem = f"crops {-_py_min(lo, 0) - _py_min(hi, 0)} entries"
    elif mode == "reflect" and _py_max(lo, hi) >= _py_max(n, 1):
        problem = f"must be less than its size {n}"
    elif mode == "circular" and (lo > kept or hi > kept):
        # PyTorch raises past the input's size, and past the cropped size reads memory it has
        # not written (or raises); kiln raises for both
        problem = f"wraps around more than once (what is left of the dim: {_py_max(kept, 0)})"
    else:
        return
    raise op_error("pad", f"{mode} padding ({lo}, {hi}) of dimension {d} (size {n}) {problem} "
                   f"(input shape {list(input.shape)})")


def _crop(x, pairs):
    """`x` less the negative parts of `pairs` (a crop from either end of each dim)."""
    if not _py_any(lo < 0 or hi < 0 for lo, hi in pairs):
        return x
    return P.slice(x, starts=tuple(_py_max(0, -lo) for lo, hi in pairs),
                   stops=tuple(s - _py_max(0, -hi) for s, (lo, hi) in zip(x.shape, pairs)),
                   steps=(1,) * x.ndim)


def _py_any(it):
    return builtins.any(it)


def contiguous(input, memory_format=None):
    """`input` itself when its memory is row-major already (or laid out as `memory_format`
    says: `kiln.channels_last`), else such a copy (so `view`, which never copies, works on the
    result as in PyTorch)."""
    fmt = layout.contiguous_format if memory_format is None else memory_format
    layout.check(fmt, "contiguous", input.ndim)
    if fmt is layout.preserve_format:
        raise RuntimeError("contiguous: preserve memory format is unsupported by the "
                           "contiguous operator")
    if layout.is_contiguous_as(input._data.shape, input.stride(), fmt):
        return input
    return _laid_out(P.cast(input, dtype=input.dtype), fmt)   # a copy autograd and tracer see


def _laid_out(t, fmt):
    """`t` (a fresh copy) rearranged in memory as `fmt` says; a meta tensor has no memory, and
    a wrapper subclass's (kiln.tracer.dispatch_subclass) is what its class made it."""
    if not isinstance(t._data, MetaArray):
        t._data = layout.arrange(t.device.xp, t._data, fmt)
    return t


def clone(input, *, memory_format=None):
    """A copy of `input`, laid out as an explicit `memory_format` says, or under the default
    preserve_format with a dense input's strides (else dense in the input's order of dims)."""
    out = P.cast(input, dtype=input.dtype)
    if memory_format is not None and memory_format is not layout.preserve_format:
        layout.check(memory_format, "clone", input.ndim)
        return _laid_out(out, memory_format)
    return settle(out, "preserve", input)


def _tri_mask(input, diagonal, upper):
    rows, cols = input.shape[-2], input.shape[-1]
    r = P.reshape(arange(rows, device=input.device), shape=(rows, 1))
    c = P.reshape(arange(cols, device=input.device), shape=(1, cols))
    return P.ge(c - r, diagonal) if upper else P.le(c - r, diagonal)


def tril(input, diagonal=0):
    _check_unsigned("tril", input)
    return settle(P.where(_tri_mask(input, diagonal, False), input, 0), "contiguous")


def triu(input, diagonal=0):
    _check_unsigned("triu", input)
    return settle(P.where(_tri_mask(input, diagonal, True), input, 0), "contiguous")


def diagonal(input, offset=0, dim1=0, dim2=1):
    d1, d2 = _norm_dim(dim1, input.ndim), _norm_dim(dim2, input.ndim)
    x = movedim(input, (d1, d2), (-2, -1))
    rows, cols = x.shape[-2], x.shape[-1]
    n = _py_max(0, _py_min(rows, cols - offset) if offset >= 0 else _py_min(rows + offset, cols))
    start = offset if offset >= 0 else -offset * cols
    flat = reshape(x, tuple(x.shape[:-2]) + (rows * cols,))
    if n == 0:
        return _slice_dim(flat, flat.ndim - 1, 0, 0)
    return _slice_dim(flat, flat.ndim - 1, start, start + (n - 1) * (cols + 1) + 1, cols + 1)


def diag(input, diagonal_=0):
    if input.ndim == 1:
        n = input.shape[0] + _py_abs(diagonal_)
        out = zeros((n, n), dtype=input.dtype, device=input.device)
        idx = np.arange(input.shape[0])
        rows = idx + _py_max(0, -diagonal_)
        cols = idx + _py_max(0, diagonal_)
        flat = input.new_tensor(rows * n + cols, dtype=dt.int64)
        return reshape(P.index_put(reshape(out, (-1,)), flat, input, axis=0), (n, n))
    return diagonal(input, diagonal_)
