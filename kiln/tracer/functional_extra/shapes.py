"""Shape helpers and scatters of the torch namespace: atleast_nd, column/row/dstack, h/v/dsplit,
ravel, rot90, diag_embed, *_scatter, block_diag, meshgrid, tril_indices, vander, index_put,
index_reduce, scatter_reduce, renorm, unfold."""

from __future__ import annotations

import itertools
import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.runtime.device import is_host_array
from kiln.tracer import functional as F
from kiln.tracer.creation import check_dense_layout, tensor
from kiln.tracer.errors import op_error
from kiln.tracer.provenance import composite
from kiln.tracer.storage import internal_overlap
from kiln.tracer.functional import _as_tensor, _norm_dim
from kiln.tracer.functional.shapes import _own_memory
from kiln.tracer.functional.indexing import _wrap_index, as_input, as_vectors, check_indices
from kiln.tracer.functional_extra.common import _py_abs, _py_sum
from kiln.tracer.tensor import Tensor
from kiln.tracer.unsigned import check as _check_unsigned


# ----------------------------------------------------------------------------- shapes

def atleast_1d(*tensors):
    out = [F.reshape(t, (1,)) if t.ndim == 0 else t for t in _flat_args(tensors)]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_2d(*tensors):
    out = [F.reshape(t, (1,) * (2 - t.ndim) + tuple(t.shape)) if t.ndim < 2 else t
           for t in _flat_args(tensors)]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_3d(*tensors):
    out = []
    for t in _flat_args(tensors):
        if t.ndim == 0:
            t = F.reshape(t, (1, 1, 1))
        elif t.ndim == 1:
            t = F.reshape(t, (1, t.shape[0], 1))
        elif t.ndim == 2:
            t = F.unsqueeze(t, -1)
        out.append(t)
    return out[0] if len(out) == 1 else tuple(out)


def _flat_args(tensors):
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        return list(tensors[0])
    return list(tensors)


def column_stack(tensors):
    return F.hstack([F.reshape(t, (-1, 1)) if t.ndim <= 1 else t for t in tensors])


def row_stack(tensors):
    return F.vstack(tensors)


def dstack(tensors):
    return F.cat(list(atleast_3d(*tensors)) if len(tensors) > 1 else [atleast_3d(tensors[0])],
                 2)


def _split_sections(input, sections, dim, name):
    if isinstance(sections, int):
        if input.shape[dim] % sections:
            raise op_error(name, f"torch.{name} attempted to split along dimension {dim}, but "
                           f"the size of the dimension {input.shape[dim]} is not divisible by "
                           f"the split_size {sections}!")
    return F.tensor_split(input, sections, dim)


def hsplit(input, sections):
    return _split_sections(input, sections, 1 if input.ndim > 1 else 0, "hsplit")


def vsplit(input, sections):
    return _split_sections(input, sections, 0, "vsplit")


def dsplit(input, sections):
    return _split_sections(input, sections, 2, "dsplit")


def split_with_sizes(input, split_sizes, dim=0):
    return F.split(input, list(split_sizes), dim)


unsafe_split, unsafe_chunk = F.split, F.chunk


def unsafe_split_with_sizes(input, split_sizes, dim=0):
    return split_with_sizes(input, split_sizes, dim)


def ravel(input):
    return F.reshape(input, (-1,))


def rot90(input, k=1, dims=(0, 1)):
    d0, d1 = (_norm_dim(d, input.ndim) for d in dims)
    k = k % 4
    if k == 0:
        return input.clone()
    if k == 1:
        return F.transpose(F.flip(input, (d1,)), d0, d1)
    if k == 2:
        return F.flip(input, (d0, d1))
    return F.flip(F.transpose(input, d0, d1), (d1,))


def diag_embed(input, offset=0, dim1=-2, dim2=-1):
    """out[..., i, i + offset] = input[..., i], the other entries zero."""
    m = input.shape[-1]
    n = m + _py_abs(offset)
    rows = F.unsqueeze(F.arange(n, device=input.device), 1)
    cols = F.unsqueeze(F.arange(n, device=input.device), 0)
    padded = F.pad(input, (0, n - m)) if n > m else input
    # the value of row i (offset >= 0) or of column j (offset < 0)
    values = F.unsqueeze(padded, -1) if offset >= 0 else F.unsqueeze(padded, -2)
    zero = F.zeros((), dtype=input.dtype, device=input.device)     # keeps a bool a bool
    mat = F.where(F.eq(rows + offset, cols), values, zero)
    out_ndim = input.ndim + 1
    d1, d2 = _norm_dim(dim1, out_ndim), _norm_dim(dim2, out_ndim)
    if (d1, d2) == (out_ndim - 2, out_ndim - 1):
        return mat
    return F.movedim(mat, (-2, -1), (d1, d2))


def diagflat(input, offset=0):
    return diag_embed(F.reshape(input, (-1,)), offset)


def diagonal_scatter(input, src, offset=0, dim1=0, dim2=1):
    d1, d2 = _norm_dim(dim1, input.ndim), _norm_dim(dim2, input.ndim)
    x = F.movedim(input, (d1, d2), (-2, -1))
    rows, cols = x.shape[-2], x.shape[-1]
    mask = F.eq(F.unsqueeze(F.arange(rows, device=x.device), 1) + offset,
                F.unsqueeze(F.arange(cols, device=x.device), 0))
    n = src.shape[-1]
    if offset >= 0:
        vals = F.unsqueeze(F.pad(src, (0, rows - n)) if rows > n else F.narrow(src, -1, 0, rows),
                           -1)
    else:
        vals = F.unsqueeze(F.pad(src, (0, cols - n)) if cols > n else F.narrow(src, -1, 0, cols),
                           -2)
    out = F.where(mask, vals, x)
    return F.movedim(out, (-2, -1), (d1, d2))


def select_scatter(input, src, dim, index):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    index = index % n
    mask = F.reshape(F.eq(F.arange(n, device=input.device), index),
                     (n,) + (1,) * (input.ndim - d - 1))
    return F.where(mask, F.unsqueeze(src, d), input)


def slice_scatter(input, src, dim=0, start=None, end=None, step=1):
    d = _norm_dim(dim, input.ndim)
    n = input.shape[d]
    positions = list(range(n))[slice(start, end, step)]
    out = input
    idx = _as_tensor(np.asarray(positions, dtype=np.int64), input)
    return F.index_copy(out, d, idx, src) if positions else input.clone()


def block_diag(*tensors):
    mats = [F.reshape(t, (1, -1)) if t.ndim == 1 else (F.reshape(t, (1, 1)) if t.ndim == 0
                                                       else t) for t in tensors]
    cols = _py_sum(m.shape[1] for m in mats)
    kind = mats[0].dtype
    for m in mats[1:]:
        kind = dt.promote(kind, m.dtype)
    rows, left = [], 0
    for m in mats:
        right = cols - left - m.shape[1]
        rows.append(F.pad(m.to(kind), (left, right)))
        left += m.shape[1]
    return F.cat(rows, 0)


def cartesian_prod(*tensors):
    if len(tensors) == 1:
        return tensors[0]
    grids = meshgrid(*tensors, indexing="ij")
    return F.stack([F.reshape(g, (-1,)) for g in grids], 1)


def combinations(input, r=2, with_replacement=False):
    n = input.shape[0]
    pick = itertools.combinations_with_replacement if with_replacement else \
        itertools.combinations
    combos = list(pick(range(n), r))
    idx = _as_tensor(np.asarray(combos, dtype=np.int64).reshape(-1), input)
    picked = F.index_select(input, 0, idx)          # none picked: still input's graph
    return F.reshape(picked, (0,) if r == 0 else (len(combos), r))


def meshgrid(*tensors, indexing=None):
    ts = _flat_args(tensors)
    indexing = indexing or "ij"
    shape = tuple(t.numel() for t in ts)
    if indexing == "xy" and len(ts) >= 2:
        shape = (shape[1], shape[0]) + shape[2:]
    out = []
    for i, t in enumerate(ts):
        pos = i
        if indexing == "xy" and len(ts) >= 2 and i < 2:
            pos = 1 - i
        view = [1] * len(ts)
        view[pos] = t.numel()
        out.append(F.expand(F.reshape(t, tuple(view)), shape))
    return tuple(out)


def tril_indices(row, col, offset=0, *, dtype=None, layout=None, device=None):
    check_dense_layout("tril_indices", layout)
    r, c = np.tril_indices(row, offset, col)
    return tensor(np.stack([r, c]).astype(np.int64), dtype=dtype or dt.int64, device=device)


def triu_indices(row, col, offset=0, *, dtype=None, layout=None, device=None):
    check_dense_layout("triu_indices", layout)
    r, c = np.triu_indices(row, offset, col)
    return tensor(np.stack([r, c]).astype(np.int64), dtype=dtype or dt.int64, device=device)


def unravel_index(indices, shape):
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    idx = indices if isinstance(indices, Tensor) else _as_tensor(indices)
    out, rest = [], idx
    for size in reversed(shape):
        out.append(F.remainder(rest, size))
        rest = F.floor_divide(rest, size)
    return tuple(reversed(out))


def vander(x, N=None, increasing=False):
    n = x.shape[0] if N is None else N
    powers = F.arange(n, device=x.device)
    if not increasing:
        powers = F.flip(powers, (0,))
    base = x if x.dtype.is_floating_point or x.dtype.is_complex else x.to(dt.int64)
    return F.pow(F.unsqueeze(base, -1), powers.to(base.dtype))


def index_put(input, indices, values, accumulate=False):
    _check_unsigned("index_put", input)
    return F.index_put(input, indices, values, accumulate)


def _chunk_cat(tensors, dim, num_chunks):
    """Each tensor cut into `num_chunks` equal chunks along `dim` (zero-padded at its end),
    each chunk flattened with the dims after it, and the i-th chunks of all joined: shape
    shape[:dim] + (num_chunks, total) (ATen's, behind FSDP's gradient reduce-scatter)."""
    rows = []
    for t in tensors:
        d = _norm_dim(dim, t.ndim)
        short = -t.shape[d] % num_chunks
        if short:
            pad = tuple(t.shape[:d]) + (short,) + tuple(t.shape[d + 1:])
            t = F.cat([t, F.zeros(pad, dtype=t.dtype, device=t.device)], d)
        rows.append(F.reshape(t, tuple(t.shape[:d]) + (num_chunks, -1)))
    return F.cat(rows, -1)


def _masked_indices(input, indices):
    """ATen's index list (None: a whole dim) as a getitem key, each index clamped into its
    dim: the masked ops read or write at an index only where their mask holds."""
    return tuple(slice(None) if index is None else F.clamp(index, 0, input.shape[dim] - 1)
                 for dim, index in enumerate(indices))


def _unsafe_masked_index(input, mask, indices, fill):
    """input[indices] where `mask` holds, `fill` elsewhere (ATen's, behind decompositions of
    padding and interpolation: indices outside the input are masked, not checked)."""
    return F.where(mask, input[_masked_indices(input, indices)], fill)


def _unsafe_masked_index_put_accumulate(input, mask, indices, values):
    """input with `values` added at `indices` where `mask` holds (ATen's; the backward of
    `_unsafe_masked_index`)."""
    values = F.where(mask, values, F.zeros((), dtype=values.dtype, device=values.device))
    return F.index_put(input, _masked_indices(input, indices), values, True)


def index_reduce(input, dim, index, source, reduce, *, include_self=True):
    x, d, index, source = as_vectors(input, dim, index, source)
    d = _norm_dim(d, x.ndim, "index_reduce")
    index = _wrap_index(index, x.shape[d], "index_reduce", IndexError, dim=d,
                        negative=False, what="index out of range in self")
    return as_input(scatter_reduce(x, d, _expand_index(index, source, d), source, reduce,
                                   include_self=include_self), input)


def _expand_index(index, source, dim):
    d = _norm_dim(dim, source.ndim)
    shape = [1] * source.ndim
    shape[d] = index.shape[0]
    return F.expand(F.reshape(index, tuple(shape)), tuple(source.shape))


def scatter_reduce(input, dim, index, src, reduce, *, include_self=True):
    """`reduce` (sum, prod, mean, amax, amin) of src's values into input's positions along
    `dim` named by `index`. Outside `dim` the index may be smaller than input (and src): it
    is padded with -1, which names no position, and src is read in index's shape."""
    d = _norm_dim(dim, input.ndim)
    if input.ndim <= 1 and index.ndim <= 1 and 0 in (input.ndim, index.ndim):
        # PyTorch counts a 0-d input, index or src as 1-d here too
        out = scatter_reduce(F.reshape(input, (-1,)), 0, F.reshape(index, (-1,)),
                             F.reshape(src, (-1,)), reduce, include_self=include_self)
        return F.reshape(out, tuple(input.shape))
    if index.ndim != input.ndim or index.ndim != src.ndim:
        raise op_error("scatter_reduce", f"Index tensor must have the same number of dimensions "
                       f"as self and src tensors (index {list(index.shape)}, self "
                       f"{list(input.shape)}, src {list(src.shape)})")
    for i in range(input.ndim):
        if index.shape[i] > src.shape[i] or i != d and index.shape[i] > input.shape[i]:
            raise op_error("scatter_reduce", f"Size does not match at dimension {i}: index "
                           f"{list(index.shape)} must be no larger than src {list(src.shape)}, "
                           f"nor than self {list(input.shape)} apart from dimension {d}")
    # checked here: the one-hot reduction below would skip a bad index silently
    index = _wrap_index(index, input.shape[d], "scatter_reduce", RuntimeError, dim=d,
                        negative=False)
    src = src[tuple(slice(0, k) for k in index.shape)]
    short = [0 if i == d else input.shape[i] - index.shape[i] for i in range(input.ndim)]
    if any(short):
        widths = tuple(w for k in reversed(short) for w in (0, k))
        index, src = F.pad(index, widths, value=-1), F.pad(src, widths)
    n = input.shape[d]
    hit = F.movedim(F.eq(F.unsqueeze(index, -1), F.arange(n, device=input.device)), d, -2)
    vals = F.unsqueeze(F.movedim(src, d, -1), -1)             # ..., k, 1
    base = F.movedim(input, d, -1)                            # ..., n
    count = F.sum(hit, -2)
    if reduce in ("sum", "mean"):
        total = F.sum(F.where(hit, vals, 0), -2)
        if include_self:
            total, count = total + base, count + 1
        if reduce == "mean":
            safe = F.clamp(count, min=1)
            total = total / safe.to(total.dtype) if total.dtype.is_floating_point else \
                F.floor_divide(total, safe)
        out = F.where(F.gt(count, 0), total, base)
    elif reduce == "prod":
        total = F.prod(F.where(hit, vals, 1), -2)
        out = total * base if include_self else F.where(F.gt(count, 0), total, base)
    elif reduce in ("amax", "amin"):
        if vals.dtype.is_floating_point:
            fill = -math.inf if reduce == "amax" else math.inf
        elif vals.dtype is dt.bool_:                  # bools order False < True
            fill = reduce != "amax"
        else:
            info = np.iinfo(vals.dtype.np)
            fill = int(info.min if reduce == "amax" else info.max)
        candidates = F.where(hit, vals, fill)                  # ..., k, n
        if include_self:
            # self joins src's values in one reduction, so a tie between them shares the
            # gradient evenly among all tied (PyTorch's rule), not half to self
            candidates = F.cat([candidates, F.unsqueeze(base, -2).to(candidates.dtype)], -2)
        best = (F.amax if reduce == "amax" else F.amin)(candidates, -2)
        out = F.where(F.gt(count, 0), best, base)
    else:
        raise op_error("scatter_reduce", f"reduce argument must be either sum, prod, mean, amax "
                       f"or amin, got {reduce}", ValueError)
    return F.movedim(out.to(input.dtype), -1, d)


_SEGMENT_REDUCTIONS = {"sum": ("sum", 0.0), "mean": ("sum", 0.0), "prod": ("prod", 1.0),
                       "max": ("amax", -math.inf), "min": ("amin", math.inf)}


def segment_reduce(data, reduce, *, lengths=None, indices=None, offsets=None, axis=0,
                   unsafe=False, initial=None):
    """`reduce` (sum, mean, max, min, prod) over consecutive segments of `data` along `axis`,
    batched over the dims before it: their `lengths` (..., S), or `offsets` (..., S + 1) of
    their starts and end. `initial` joins every segment's reduction, as in PyTorch (an empty
    segment's result: else 0, 1, -inf, inf, or NaN for mean). A scatter_reduce into S + 1
    slots, the last taking what no segment covers, so gradients are scatter_reduce's."""
    if indices is not None:
        raise op_error("segment_reduce", "segment_reduce(): indices based reduction is not "
                       "supported yet.", NotImplementedError)
    if (lengths is None) == (offsets is None):
        raise op_error("segment_reduce", "segment_reduce(): give exactly one of lengths or "
                       "offsets")
    if reduce not in _SEGMENT_REDUCTIONS:
        raise op_error("segment_reduce", f"reduce must be one of {list(_SEGMENT_REDUCTIONS)}, "
                       f"got {reduce!r}")
    a = _norm_dim(axis, data.ndim)
    lens = lengths._host("segment_reduce()") if lengths is not None else \
        np.diff(offsets._host("segment_reduce()"), axis=-1)
    n = data.shape[a]
    if lens.ndim != a + 1 or lens.shape[:-1] != tuple(data.shape[:a]):
        raise op_error("segment_reduce", f"segment_reduce(): lengths (shape {list(lens.shape)}) "
                       f"must match data {list(data.shape)} before axis {a} and end there")
    if not unsafe and ((lens < 0).any() or (lens.sum(-1) != n).any()):
        raise op_error("segment_reduce", f"segment_reduce(): Expected all rows of lengths "
                       f"along axis to sum to data.size({a}) = {n}, and none negative, when "
                       f"!unsafe.")
    count = lens.shape[-1]
    slots = np.full(lens.shape[:-1] + (n,), count, dtype=np.int64)
    for row in np.ndindex(lens.shape[:-1]):
        ids = np.repeat(np.arange(count), np.maximum(lens[row], 0))[:n]
        slots[row][:len(ids)] = ids
    rest = (1,) * (data.ndim - a - 1)
    index = F.expand(F.reshape(_as_tensor(slots, data), slots.shape + rest), tuple(data.shape))
    kind, identity = _SEGMENT_REDUCTIONS[reduce]
    shape = tuple(data.shape[:a]) + (count + 1,) + tuple(data.shape[a + 1:])
    base = F.full(shape, identity if initial is None else initial, dtype=data.dtype,
                  device=data.device)
    out = F.narrow(scatter_reduce(base, a, index, data, kind), a, 0, count)
    if reduce == "mean":
        sizes = F.reshape(_as_tensor(lens.astype(data.dtype.np), data), lens.shape + rest)
        empty = math.nan if initial is None else initial
        out = F.where(F.gt(sizes, 0), out / F.clamp(sizes, min=1), empty)
    return out


def masked_scatter(input, mask, source):
    if tuple(mask.shape) != tuple(input.shape):   # out of place, the two broadcast together
        input, m = F.broadcast_tensors(input, mask)
    else:
        m = mask
    flat_mask = F.reshape(m, (-1,))
    positions = F.cumsum(flat_mask.to(dt.int64), 0) - 1
    count = int(F.sum(flat_mask))
    src = F.narrow(F.reshape(source, (-1,)), 0, 0, count) if count else F.reshape(source, (-1,))
    picked = F.take(src, F.clamp(positions, min=0)) if count else F.reshape(input, (-1,))
    return F.reshape(F.where(flat_mask, picked, F.reshape(input, (-1,))), tuple(input.shape))


@composite
def put(input, index, source, accumulate=False):
    flat = F.reshape(input, (-1,))
    index = _wrap_index(F.reshape(index, (-1,)), flat.shape[0], "put", what="out of range")
    out = F.index_put(flat, (index,), F.reshape(source, (-1,)), accumulate)
    return F.reshape(out, tuple(input.shape))


def renorm(input, p, dim, maxnorm):
    d = _norm_dim(dim, input.ndim)
    others = tuple(i for i in range(input.ndim) if i != d)
    norms = F.norm(input, p, others, keepdim=True)
    scale = F.where(F.gt(norms, maxnorm), maxnorm / (norms + 1e-7), 1.0)
    return input * scale


def unfold(input, dimension, size, step):
    """Tensor.unfold: every `size`-long window along `dimension`, `step` apart, as a new last
    dim; a view of `input`, as in PyTorch (a 0-d tensor counts as one element along dim 0)."""
    size, step = int(size), int(step)
    d = _norm_dim(dimension, max(input.ndim, 1), "unfold")
    n = input.shape[d] if input.ndim else 1
    if size < 0 or step <= 0 or size > n:     # PyTorch's messages, under the op's own name
        raise op_error("unfold", f"size is {size} but must be >= 0" if size < 0 else
                       f"step is {step} but must be > 0" if step <= 0 else
                       f"maximum size for tensor at dimension {d} is {n} but size is {size}")
    if input.ndim == 0:
        return P.reshape(P.unfold_dim(P.reshape(input, shape=(1,)), axis=0, size=size,
                                      step=step), shape=(size,))
    return P.unfold_dim(input, axis=d, size=size, step=step)


def as_strided(input, size, stride, storage_offset=None):
    """Tensor.as_strided: a view whose element (i, j, ...) is the memory element
    storage_offset + i * stride[0] + j * stride[1] + ... (PyTorch's storage offset: by default
    the input's own). kiln takes it on a contiguous input whose own elements hold every
    position read; anything else is refused by name rather than read from memory the input
    does not show."""
    size, stride = tuple(int(n) for n in size), tuple(int(st) for st in stride)
    if len(size) != len(stride):
        raise op_error("as_strided", f"mismatch in length of strides and shape: size "
                       f"{list(size)}, stride {list(stride)}")
    if any(st < 0 for st in stride):
        raise op_error("as_strided", f"Negative strides are not supported at the moment, got "
                       f"strides: {list(stride)}")
    if any(n < 0 for n in size):
        raise op_error("as_strided", f"Trying to create tensor with negative dimension: "
                       f"{list(size)}")
    own = input.storage_offset() if input.device.type != "meta" else 0
    offset = own if storage_offset is None else int(storage_offset)
    if offset < 0:
        raise op_error("as_strided", f"Tensor: invalid storage offset {offset}")
    if not input.is_contiguous():
        raise op_error("as_strided", f"kiln takes as_strided on a contiguous tensor only (this "
                       f"one has shape {list(input.shape)} and strides {list(input.stride())}); "
                       "call .contiguous() first, which keeps the values but not the memory "
                       "order PyTorch would read")
    count = math.prod(size)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if count else offset
    if count and (offset < own or last >= own + input.numel()):
        raise op_error("as_strided", f"size {list(size)}, stride {list(stride)} and storage "
                       f"offset {offset} read memory positions {offset}..{last}, outside the "
                       f"input's own {own}..{own + input.numel() - 1} (shape "
                       f"{list(input.shape)}); kiln reads only the input's elements")
    out = P.as_strided(input, size=size, stride=stride, offset=offset - own)
    if internal_overlap(out._data) and is_host_array(out._data):
        # elements sharing one place (a zero stride): read-only, as NumPy's broadcast views,
        # so an in-place write takes the path that refuses it as PyTorch does (fill_ excepted)
        out._data.flags.writeable = False
    return out


# ----------------------------------------------------------------------------- *_copy forms

def _copied(out):
    """A view op's result as its *_copy form returns it: row-major memory of its own (a tuple
    of such for the ops that give several views)."""
    if isinstance(out, (tuple, list)):
        return tuple(_copied(t) for t in out)
    return _own_memory(F.clone(out))


def _copy_form(view, name: str):
    """torch.`name`: `view` (the view op, or a function giving it), its result copied."""
    def copy_form(input, *args, **kwargs):
        return _copied(view(input, *args, **kwargs))
    copy_form.__name__ = copy_form.__qualname__ = name
    copy_form.__doc__ = f"{name[:-5]}'s result in memory of its own (no view of the input)."
    return copy_form


def _slice(input, dim=0, start=None, end=None, step=1):
    d = _norm_dim(dim, input.ndim)
    return input[(slice(None),) * d + (slice(start, end, step),)]


def _view(input, size):
    """view by a dtype, or reshape (view_copy takes a size no view of a strided input gives)."""
    if isinstance(size, dt.DType):
        return input.view(size)
    return F.reshape(input, tuple(size) if isinstance(size, (tuple, list)) else (size,))


alias_copy = _copy_form(lambda x: x, "alias_copy")
as_strided_copy = _copy_form(as_strided, "as_strided_copy")
detach_copy = _copy_form(lambda x: x.detach(), "detach_copy")
diagonal_copy = _copy_form(F.diagonal, "diagonal_copy")
expand_copy = _copy_form(lambda x, size, *, implicit=False: x.expand(size), "expand_copy")
narrow_copy = _copy_form(F.narrow, "narrow_copy")
permute_copy = _copy_form(F.permute, "permute_copy")
select_copy = _copy_form(F.select, "select_copy")
slice_copy = _copy_form(_slice, "slice_copy")
split_copy = _copy_form(F.split, "split_copy")
split_with_sizes_copy = _copy_form(split_with_sizes, "split_with_sizes_copy")
squeeze_copy = _copy_form(F.squeeze, "squeeze_copy")
t_copy = _copy_form(F.t, "t_copy")
transpose_copy = _copy_form(F.transpose, "transpose_copy")
unbind_copy = _copy_form(F.unbind, "unbind_copy")
unfold_copy = _copy_form(unfold, "unfold_copy")
unsqueeze_copy = _copy_form(F.unsqueeze, "unsqueeze_copy")
view_copy = _copy_form(_view, "view_copy")


def as_strided_scatter(input, src, size, stride, storage_offset=None):
    """`input` with the elements its as_strided(size, stride, storage_offset) view shows
    replaced by `src`'s (PyTorch writes src into that view of a copy of input): on the inputs
    as_strided takes, which it checks."""
    shown = as_strided(input, size, stride, storage_offset)
    if tuple(src.shape) != tuple(shown.shape):
        raise op_error("as_strided_scatter", f"expected src to have a size equal to the slice "
                       f"of self. src size = {list(src.shape)}, slice size = {list(shown.shape)}")
    own = input.storage_offset() if input.device.type != "meta" else 0
    first = (own if storage_offset is None else int(storage_offset)) - own
    positions = np.full(tuple(shown.shape), first, dtype=np.int64)
    for axis, (n, st) in enumerate(zip(shown.shape, stride)):
        positions += np.arange(n, dtype=np.int64).reshape(
            (-1,) + (1,) * (shown.ndim - axis - 1)) * int(st)
    flat = P.index_put(F.reshape(input, (-1,)), _as_tensor(positions.reshape(-1), input),
                       F.reshape(src.to(input.dtype), (-1,)), axis=0)
    return F.reshape(flat, tuple(input.shape))


def empty_strided(size, stride, *, dtype=None, layout=None, device=None, requires_grad=False,
                  pin_memory=False) -> Tensor:
    """A new tensor of `size` whose memory is laid out with `stride` (zeros: PyTorch leaves
    the memory uninitialized), over just enough memory to hold it."""
    from kiln.tracer.creation import zeros
    check_dense_layout("empty_strided", layout)
    size, stride = tuple(int(n) for n in size), tuple(int(st) for st in stride)
    extent = 1 + sum((n - 1) * st for n, st in zip(size, stride)) if math.prod(size) else 0
    memory = zeros(extent, dtype=dtype, device=device)
    out = as_strided(memory, size, stride, 0) if extent else memory.reshape(size)
    out = out.detach()                        # a fresh tensor, not a view anyone else holds
    return out.requires_grad_(requires_grad) if requires_grad else out
