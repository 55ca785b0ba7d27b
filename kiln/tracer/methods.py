"""Tensor methods and operators: a table binding `kiln.tracer.functional` onto `Tensor`.

In-place variants (`add_`, `mul_`, ...) compute the out-of-place result through the same op and
then write it into the tensor's memory, bumping its version counter; autograd and tracing see
an ordinary op followed by a write-back. An in-place op on a Tensor subclass with its own
`__torch_dispatch__` (or with one as an operand) goes to that class instead, as ATen's in-place
op (kiln.tracer.dispatch_subclass).
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P, Primitive
from kiln.runtime import pending_checks
from kiln.runtime.device import Device, is_host_array, is_writeable, to_device
from kiln.tracer import autograd, creation, layout
from kiln.tracer import dispatch_subclass as _wrappers
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.handles import DroppingHandle
from kiln.tracer.functional import shapes
from kiln.tracer.functional.elementwise import scalar_first_overload
from kiln.tracer.storage import internal_overlap, memory_root, partial_overlap, writable_alias
from kiln.tracer.tensor import STATE, TRACING, Tensor, dispatches
from kiln.tracer.unsigned import LIMITED as _LIMITED_UNSIGNED
from kiln.tracer.unsigned import refusal as _unsigned_refusal


# ----------------------------------------------------------------------------- in-place

_INTERNAL_OVERLAP = ("unsupported operation: more than one element of the written-to tensor "
                     "refers to a single memory location. Please clone() the tensor before "
                     "performing the operation.")
_PARTIAL_OVERLAP = ("unsupported operation: some elements of the input tensor and the "
                    "written-to tensor refer to a single memory location. Please clone() the "
                    "tensor before performing the operation.")

# In-place ops PyTorch runs on a tensor whose elements share memory (an expand()ed one): a fill
# writes one value to each place; masked_fill_ and index_fill_ warn that this is deprecated
# (setitem checks the region it writes, not the whole tensor)
_OVERLAP_ALLOWED = {"fill_": None, "zero_": None, "tril_": None, "triu_": None, "setitem": None,
                    "masked_fill_": "masked_fill_", "index_fill_": "index_fill_"}


def _deprecated_overlap(name: str, example: str = "tensor[mask] = scalar",
                        stacklevel: int = 5) -> None:
    warnings.warn(f"Use of {name} on expanded tensors is deprecated. Please clone() the tensor "
                  f"before performing this operation. This also applies to advanced indexing "
                  f"e.g. {example}", UserWarning, stacklevel=stacklevel)


def _memory_for_write(self: Tensor, op: str):
    """The array an in-place write of `op` into `self` stores through: self's own, or, where
    NumPy made it read-only only because it views an expand()ed tensor, a writeable one over
    the same memory. Raises PyTorch's error where its elements overlap (expand()ed: several
    share one place) and `op` is not one PyTorch allows there, or the memory is read-only."""
    data = self._data
    if self.device.type == "meta":
        return data
    if internal_overlap(data):
        if op not in _OVERLAP_ALLOWED:
            raise op_error(op, _INTERNAL_OVERLAP)
        if _OVERLAP_ALLOWED[op]:
            _deprecated_overlap(_OVERLAP_ALLOWED[op])
    if is_writeable(data) or not is_host_array(data):
        return data
    alias = writable_alias(data)
    if alias is None:
        raise op_error(op, _READ_ONLY)
    return alias


def check_partial_overlap(self: Tensor, args, op: str) -> None:
    """Refuse, as PyTorch, an in-place op whose tensor input shares part of the written
    tensor's memory in another layout (`x[1:].add_(x[:-1])`, `x.add_(x.t())`): the result
    would depend on the order the elements are written in."""
    for a in args:
        if isinstance(a, Tensor) and a._data is not self._data:
            _check_overlap(self._data, a._data, op)


def _check_overlap(data, other, op: str) -> None:
    # first, in a few attribute reads, what rules out most inputs: the arrays owning the two
    # memories, each at most one view away (a parameter, a slice, a reshape), differ
    mine, theirs = getattr(data, "base", None), getattr(other, "base", None)
    mine = data if mine is None else mine if getattr(mine, "base", None) is None else None
    if mine is not None:
        if theirs is None:
            if other is not mine:
                return
        elif theirs is not mine and getattr(theirs, "base", None) is None:
            return
    if partial_overlap(data, other):
        raise op_error(op, _PARTIAL_OVERLAP)


def write_inplace(self: Tensor, result: Tensor, op: str = "in-place op") -> Tensor:
    """Store `result` into `self`'s memory, as `self.op_(...)` does."""
    data = self._data
    if (self._base is None and not result._requires_grad and result.dtype is self.dtype
            and result._data.shape == data.shape and not (self._requires_grad and
                                                          STATE.grad_enabled)
            and self._grad_fn is None and is_writeable(data)):
        # the common case, an optimizer's update or a running statistic: no autograd history
        # to link or protect, not a view, nothing to cast or broadcast; the checks below cost
        # more than the write on parameter-sized tensors
        data[...] = result._data
        self._version[0] += 1
        if TRACING[0] and STATE.tracer is not None:
            STATE.tracer.write(self, result)
        return self
    view = self._base
    if view is not None:
        if view[3] != self._version[0]:
            autograd.refresh_view(self)
        autograd.check_view_write(self, op)
    if self.requires_grad and self.grad_fn is None and STATE.grad_enabled:
        raise op_error(op, "a leaf Variable that requires grad is being used in an in-place "
                       "operation.")
    autograd.keep_saved_output(self)
    if result.dtype is not self.dtype:
        if result.dtype.category > self.dtype.category:
            raise op_error(op, f"result type {result.dtype.name} can't be cast to the desired "
                           f"output type {self.dtype.name}")
        result = P.cast(result, dtype=self.dtype)
    if tuple(result.shape) != tuple(self.shape):
        try:
            result = F.expand(result, tuple(self.shape))
        except RuntimeError:
            raise op_error(op, f"output with shape {list(self.shape)} doesn't match the "
                           f"broadcast shape {list(result.shape)}") from None
    node = result.grad_fn
    reads_self = node is not None and node.inputs is not None and any(
        isinstance(a, Tensor) and a._version is self._version for a in node.inputs)
    written = None                  # what a write that does not read self wrote, as an edge
    if self.requires_grad and STATE.grad_enabled and not reads_self:
        written = [autograd.edges_of((result,))[0]] if result.requires_grad else []
        # the new value does not depend on the old one (zero_, fill_, copy_): PyTorch still
        # links the old history, with a zero gradient, so a node that does exactly that
        keep = creation.full((), True, dtype=dt.bool_, device=self.device)
        result = P.where(keep, result, self)
        node, reads_self = result.grad_fn, True
    if reads_self:
        # the node read `self` (or a view of it) before this write; give it a snapshot of the
        # old value, which this write does not change, where its gradient rule reads the value
        # (relu_'s reads only its output: no copy)
        snaps = {}
        read = node.prim.reads_of(node.inputs) if isinstance(node.prim, Primitive) else None
        for i, a in enumerate(node.inputs):
            if (isinstance(a, Tensor) and a._version is self._version and id(a) not in snaps
                    and (read is None or i in read)):
                packed = getattr(node, "packed", None)
                if packed and i in packed:
                    # a saved_tensors_hooks pack took it, and what pack kept may share the
                    # memory this write changes: the node keeps a copy of the unpacked value
                    value = autograd.unpack_tensor(packed.pop(i), a, None, node.name())
                    snap = Tensor._make(value._data.copy(), a.dtype, a.device)
                else:
                    snap = Tensor._make(a._data.copy(), a.dtype, a.device)
                snap._requires_grad, snap._grad_fn, snap._trace = (a.requires_grad, a.grad_fn,
                                                                 a._trace)
                snaps[id(a)] = snap
        node.versions = tuple(0 if id(a) in snaps else v
                              for a, v in zip(node.inputs, node.versions))
        node.inputs = tuple(snaps.get(id(a), a) for a in node.inputs)
    data = self._data
    if 0 in data.strides or not is_writeable(data):
        data = _memory_for_write(self, op)      # an expand()ed tensor's view, or overlap
    data[...] = result._data
    self._version[0] += 1
    if view is not None:
        # the tensor owning this memory changed too: its history is rebuilt around the write
        autograd.rebase_view(self, result if STATE.grad_enabled else None, written)
    elif result.requires_grad and STATE.grad_enabled:
        autograd.set_history(self, autograd.history_of(result))
    if STATE.tracer is not None:
        STATE.tracer.write(self, result)
    return self


_WRAPPERS = _wrappers.SUBCLASSES     # read first: whether a wrapper subclass exists at all


def _inplace(fn, name):
    def method(self, *args, **kwargs):
        if _WRAPPERS[0] and _wrappers.takes(self, args, kwargs):
            return _wrappers.inplace(self, name, args, kwargs)
        if args:
            check_partial_overlap(self, args, name)
        if kwargs:
            check_partial_overlap(self, kwargs.values(), name)
        return write_inplace(self, fn(self, *args, **kwargs), name)
    method.__name__ = name
    return method


# In-place ops whose result is `self <ufunc> operand` (an optimizer's updates, mostly): on the
# fast path of write_inplace (no autograd history to link or protect, not a view, no trace,
# nothing to cast or broadcast) the operand is computed with tensor ops as the out-of-place op
# computes it, and the ufunc writes into self's memory (`out=`): no temporary result and no
# copy, one device call less per op on a GPU. The same ufunc on the same operands: same bits.
_INTO_SELF = {
    "add_": ("add", lambda self, other, *, alpha=1: other if alpha == 1 else F.mul(other, alpha)),
    "sub_": ("subtract", lambda self, other, *, alpha=1:
             other if alpha == 1 else F.mul(other, alpha)),
    "mul_": ("multiply", lambda self, other: other),
    "addcmul_": ("add", lambda self, tensor1, tensor2, *, value=1:
                 value * tensor1 * tensor2 if value != 1 else tensor1 * tensor2),
    "addcdiv_": ("add", lambda self, tensor1, tensor2, *, value=1:
                 value * (tensor1 / tensor2) if value != 1 else tensor1 / tensor2),
    "lerp_": ("add", lambda self, end, weight: _small_lerp_step(self, end, weight)),
}
_INTO_SELF_DTYPES = (dt.float32, dt.float64)


def _small_lerp_step(self: Tensor, end, weight):
    """lerp_'s `w * (end - self)` where lerp adds it to self (a Python |w| < 0.5, an
    optimizer's moving average); None otherwise, which sends lerp_ to its general path."""
    if type(weight) is not float and type(weight) is not int or abs(weight) >= 0.4999999:
        return None          # (near 0.5, rounding to float32 decides: lerp's general path)
    return weight * (end - self)


def _writes_plainly(self: Tensor) -> bool:
    """Whether an in-place write into `self` is a plain write into its memory: write_inplace's
    fast path, for a floating tensor (whose ops with Python numbers keep its dtype)."""
    return not (TRACING[0] or self.grad_fn is not None or self._base is not None
                or self.dtype not in _INTO_SELF_DTYPES
                or self.requires_grad and STATE.grad_enabled or not is_writeable(self._data))


# PyTorch's deprecated scalar-first overloads (`p.data.add_(-lr, grad)`): the number of
# positional arguments that means one, and the scalar's keyword
_SCALAR_FIRST = {"add_": (2, "alpha"), "sub_": (2, "alpha"), "addcmul_": (3, "value"),
                 "addcdiv_": (3, "value")}


def _inplace_into_self(fn, name: str, ufunc: str, operand):
    scalar_first_at, keyword = _SCALAR_FIRST.get(name, (None, None))

    def method(self, *args, **kwargs):
        if _WRAPPERS[0] and _wrappers.takes(self, args, kwargs):
            return _wrappers.inplace(self, name, args, kwargs)
        if len(args) == scalar_first_at:
            args, scalar = scalar_first_overload(name, args[0], args[1:],
                                                 kwargs.get(keyword, 1))
            kwargs = {keyword: scalar}
        if name in ("add_", "sub_") and args and getattr(args[0], "is_sparse", False) \
                and not self.is_sparse:
            # dense += sparse (a hand-written step with an embedding's sparse gradient)
            args = (args[0].to_dense(),) + args[1:]
        check_partial_overlap(self, args, name)
        if not _writes_plainly(self):
            return write_inplace(self, fn(self, *args, **kwargs), name)
        data = self._data
        x = operand(self, *args, **kwargs)
        if isinstance(x, Tensor):
            xd = x._data
            fits = (x.dtype is self.dtype and x.device is self.device and not x.requires_grad
                    and xd.ndim <= data.ndim and all(
                        n == 1 or n == m for n, m in zip(xd.shape[::-1], data.shape[::-1])))
        else:
            xd = x
            fits = type(x) is float or type(x) is int
        if not fits:                 # a cast, a broadcast, autograd: the general path
            return write_inplace(self, fn(self, *args, **kwargs), name)
        xp = np if self.device.type == "cpu" else self.device.xp
        getattr(xp, ufunc)(data, xd, out=data)
        self._version[0] += 1
        return self
    method.__name__ = name
    return method


def copy_(self: Tensor, src, non_blocking: bool = False) -> Tensor:
    # copy_ casts to self's dtype whatever the categories (float into int truncates, as
    # PyTorch's), where an in-place op's result may not move to a lower category
    if _WRAPPERS[0] and _wrappers.takes(self, (src,)):
        return _wrappers.inplace(self, "copy_", (src,), {})
    check_partial_overlap(self, (src,), "copy_")
    return write_inplace(self, src.to(self.device, self.dtype) if isinstance(src, Tensor)
                         else _fill(self, src), "copy_")


def fill_(self: Tensor, value) -> Tensor:
    if _WRAPPERS[0] and _wrappers.takes(self, (value,)):
        return _wrappers.inplace(self, "fill_", (value,), {})
    if (type(value) is float or type(value) is int) and _writes_plainly(self):
        if self.dtype.category == dt.INT:
            value = creation.int_fill_value("fill_", value, self.dtype)
        self._data.fill(value)      # what full() then a copy would write, in one call
        self._version[0] += 1
        return self
    if isinstance(value, Tensor) and internal_overlap(self._data):
        raise op_error("fill_", _INTERNAL_OVERLAP)    # a tensor's value is copied, as copy_
    return write_inplace(self, _fill(self, value), "fill_")


def zero_(self: Tensor) -> Tensor:
    if _WRAPPERS[0] and dispatches(self):
        return _wrappers.inplace(self, "zero_", (), {})
    if _writes_plainly(self):
        self._data.fill(0)
        self._version[0] += 1
        return self
    return write_inplace(self, _fill(self, 0), "zero_")


_READ_ONLY = ("unsupported operation: the tensor's memory is read-only (a read-only NumPy "
              "array's, as kiln.from_numpy shares it). Please clone() the tensor before "
              "performing the operation.")


def setitem(self: Tensor, key, value) -> None:
    if _WRAPPERS[0] and _wrappers.takes(self, (value,)):
        return _wrappers.setitem(self, key, value)
    if self.dtype in _LIMITED_UNSIGNED and _tensor_key(key):
        # a write through an index or mask tensor: PyTorch's index_put, which it lacks for them
        raise _unsigned_refusal("index_put", self.dtype)
    if key is False:    # selects nothing: PyTorch writes and records nothing (in a tuple it
        return          # records the write of nothing)
    if isinstance(value, Tensor) and value.device is not self.device and \
            (value.ndim == 0 or not _tensor_key(key)):
        # from another device as copy_ takes it (`x_cuda[1:] = cpu_rows`; a 0-d CPU tensor
        # through index tensors too), its gradient going back there
        value = value.to(self.device)
    autograd.refresh_if_stale(self)     # a view may require grad since its base was written
    if isinstance(value, Tensor) and value._data is not self._data and (
            value._data.base is not None or self._data.base is not None):
        _check_setitem_overlap(self, key, value)
    tracked = (STATE.grad_enabled and (self.requires_grad or
               (isinstance(value, Tensor) and value.requires_grad)))
    if self._base is not None and 0 in self._data.strides and internal_overlap(self._data) \
            and self.device.type != "meta":
        # an expand()ed tensor: PyTorch writes a region whose elements do not share memory
        # (`b[0] = v`), and through index tensors with a warning
        if _tensor_key(key):
            _deprecated_overlap("index_put_", "tensor[indices] = tensor", 3)
        else:
            try:
                region = self._data[_array_key(key)]
            except (IndexError, TypeError, ValueError):
                region = None               # the write itself reports the key
            if region is not None and internal_overlap(region):
                raise op_error("setitem", _INTERNAL_OVERLAP)
            if tracked or STATE.tracer is not None:
                # written as PyTorch writes it: into the view of the region, whose base's
                # history is rebuilt around the write
                copy_(F.getitem(self, key), value if isinstance(value, Tensor) else
                      creation.full((), value, dtype=self.dtype, device=self.device))
                return
    # CuPy wraps an index array's out-of-range values where NumPy raises: on a GPU a write
    # through index tensors takes the checked path below
    if not tracked and STATE.tracer is None and (self.device.type == "cpu" or
                                                 not _tensor_key(key)):
        # plain data write: NumPy's own setitem, no autograd involved
        data = value._data if isinstance(value, Tensor) else value
        if isinstance(value, Tensor) and value.dtype is not self.dtype:
            data = dt.cast_array(data, self.dtype)
        elif self.dtype is dt.bfloat16 and type(value) is float:
            data = dt.bfloat16_value(value)       # through float32, as PyTorch converts
        elif (type(value) is int or type(value) is float) and self.dtype.category == dt.INT:
            data = creation.int_fill_value("setitem", value, self.dtype)
        target = self._data
        try:
            target[_array_key(key)] = data
        except IndexError:          # NumPy's words: kiln's indexing check says it as PyTorch
            F.getitem(self.detach(), key)
            raise
        except ValueError:          # NumPy's broadcast error, said as PyTorch says it
            if not is_writeable(target):
                # a view of an expand()ed tensor (NumPy's are read-only) or read-only memory
                target = _memory_for_write(self, "setitem")
            try:
                target[_array_key(key)] = data
            except ValueError:
                into = list(self._data[_array_key(key)].shape)
                raise op_error("setitem", f"shape mismatch: value tensor of shape "
                               f"{list(np.shape(data))} cannot be broadcast to indexing result "
                               f"of shape {into}") from None
        self._version[0] += 1
        return
    old = autograd.edges_of((self,))[0]
    value = _value_as_written(self, key, value)
    write_inplace(self, F.setitem_functional(self, key, value), "setitem")
    if STATE.grad_enabled:
        _name_setitem_node(self, key, value, old)


_ONE_ELEMENT = np.zeros(1, bool)


def _check_setitem_overlap(self: Tensor, key, value: Tensor) -> None:
    """`self[key] = value` where value may share self's memory: PyTorch refuses a value that
    partly overlaps the region written (`x[1:] = x[:-1]`), or self for index tensors."""
    if memory_root(value._data) is not memory_root(self._data):
        return
    region = self._data
    if not _tensor_key(key):
        try:
            region = self._data[_array_key(key)]
        except (IndexError, TypeError, ValueError):
            return                      # the write itself reports the key
    if value._data is not region and partial_overlap(region, value._data):
        raise op_error("setitem", _PARTIAL_OVERLAP)


def _value_as_written(self: Tensor, key, value):
    """A tensor value as PyTorch's setitem writes it, so its history shows the same nodes:
    with its leading unit dimensions viewed away (through an index tensor only when it has
    some), then expanded to the region it fills (ViewBackward0 under ExpandBackward0); a value
    of the region's shape, or a 0-d one (a fill), is written as it is."""
    if not isinstance(value, Tensor) or value.ndim == 0:
        return value
    shape = tuple(value.shape)
    lead = next((i for i, n in enumerate(shape) if n != 1), len(shape))
    keys = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, list) or isinstance(k, Tensor) and not _takes_view(k, None)
           for k in keys):
        return P.reshape(value, shape=shape[lead:]) if lead else value
    try:        # the region's shape, from one element seen at every position of self's shape
        region = np.ndarray(self._data.shape, bool, _ONE_ELEMENT, 0,
                            (0,) * self._data.ndim)[_array_key(key)].shape
    except (IndexError, TypeError, ValueError):
        return value                    # the write itself reports the key
    if shape == region:
        return value
    value = P.reshape(value, shape=shape[lead:])
    return value if shape[lead:] == region else F.expand(value, region)


def _name_setitem_node(self: Tensor, key, value, old) -> None:
    """Give the node of `self[key] = value` PyTorch's name and inputs: the base's CopySlices
    where the key takes a view (an int, a None, a partial slice: PyTorch writes into that view),
    else IndexPutBackward0 for an index tensor or list, FillBackward3 for a 0-d value and
    CopyBackwards for a tensor (written into the whole of self). Its next_functions: self's old
    history and the value's (its View and Expand nodes, `_value_as_written`)."""
    written = autograd.edges_of((value,))[0] if isinstance(value, Tensor) else None
    if self._base is not None:      # the base's CopySlices, made by the write
        node = autograd.view_origin(self)[0].grad_fn
        if type(node).__name__ == "CopySlices":
            node.shown = [node.edges[0], written]
        return
    node = self.grad_fn
    if node is None or not autograd.renamable(node):
        return
    keys = key if isinstance(key, tuple) else (key,)
    if any(_takes_view(k, n) for k, n in zip(keys, _key_dims(keys, self.shape))):
        name = "CopySlices"
    elif any(_tensor_key(k) for k in keys):
        name = "IndexPutBackward0"
    elif not isinstance(value, Tensor) or value.ndim == 0:
        name = "FillBackward3"
    else:
        name = "CopyBackwards"
    autograd.set_name(node, name)
    node.shown = [old, written]


def _key_dims(keys: tuple, shape) -> list:
    """The size of the dimension each key item indexes (None where it indexes none)."""
    sizes, dim = [], 0
    for k in keys:
        if k is Ellipsis:
            dim += len(shape) - sum(1 for x in keys if x is not None and x is not Ellipsis
                                    and not isinstance(x, bool))
            sizes.append(None)
        elif k is None or isinstance(k, bool):
            sizes.append(None)
        else:
            sizes.append(shape[dim] if dim < len(shape) else None)
            dim += 1
    return sizes


def _takes_view(k, size) -> bool:
    """Whether PyTorch's indexing takes a view for this key item: an int (or 0-d integer
    tensor, or bool), a None, or a slice other than the whole dimension."""
    if k is None or isinstance(k, (bool, int, np.integer)):
        return True
    if isinstance(k, Tensor):
        return k.ndim == 0 and k.dtype.category == dt.INT
    if isinstance(k, slice):
        return size is None or k.indices(size) != (0, size, 1)
    return False


def _tensor_key(key) -> bool:
    if isinstance(key, tuple):
        return any(_tensor_key(k) for k in key)
    return isinstance(key, Tensor) or isinstance(key, list)


def _array_key(key):
    if isinstance(key, tuple):
        return tuple(_array_key(k) for k in key)
    if isinstance(key, Tensor):
        return key._data
    if isinstance(key, list) and any(isinstance(k, Tensor) for k in key):
        return [k._data if isinstance(k, Tensor) else k for k in key]
    return key


# ----------------------------------------------------------------------------- conversion

def to(self: Tensor, *args, **kwargs) -> Tensor:
    dtype, device = kwargs.get("dtype"), kwargs.get("device")
    for a in args:
        if isinstance(a, dt.DType):
            dtype = a
        elif isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        elif isinstance(a, (str, Device)):
            device = a
        elif isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            device = Device(int(a))        # an index: that cuda device, as in PyTorch
    out = self
    if dtype is not None and out.dtype is dt.bfloat16 and device is not None:
        out = P.cast(out, dtype=creation._dtype(dtype))   # first: no bfloat16 on CUDA
    if device is not None and Device(device) != self.device:
        out = _to_device(out, Device(device))
    if dtype is not None:
        dtype = creation._dtype(dtype)
        if dtype is not out.dtype:
            if out.dtype.is_complex and not dtype.is_complex:
                warnings.warn("Casting complex values to real discards the imaginary part",
                              UserWarning, stacklevel=2)
            out = P.cast(out, dtype=dtype)
    fmt = kwargs.get("memory_format")
    if fmt is not None and fmt is not layout.preserve_format:
        # as PyTorch: a copy unless the strides are those of a tensor made in that format
        layout.check(fmt, "to", out.ndim)
        if out.stride() != layout.strides_of(out._data.shape, fmt):
            out = shapes.clone(out, memory_format=fmt)
    return out


def _to_device(self: Tensor, device: Device) -> Tensor:
    if _WRAPPERS[0] and dispatches(self):
        if self.requires_grad and STATE.grad_enabled:
            raise NotImplementedError(
                f"to({device}) of a {type(self).__name__} that requires grad: kiln records no "
                "autograd history for a wrapper's copy between devices")
        return _wrappers.call("_to_copy.default", (self,), {"device": device})
    if STATE.tracer is not None:
        # a compiled program runs on one device; the copy would not be in the graph, and a
        # replay would read the tensor this call made
        STATE.tracer.graph_break(f"a copy from {self.device} to {device} (a compiled program "
                                 "runs on one device)")
    if device.type == "cpu":
        if self.device.type == "cuda":
            # the copy waits for the GPU: read its queued index checks
            pending_checks.host_read(f"a copy from {self.device} to the CPU")
    elif self.dtype is dt.bfloat16 and device.type == "cuda":
        raise op_error("to", f"copying a bfloat16 tensor of shape {list(self.shape)} to "
                       f"{device}: {dt.NO_CUDA_BFLOAT16}")
    out = Tensor._make(to_device(self._data, device), self.dtype, device)
    if self.requires_grad and STATE.grad_enabled:
        # crossing devices is differentiable: the gradient goes back the same way
        out._requires_grad = True
        out._grad_fn = ToCopyBackward0(self, out)
    return out


class ToCopyBackward0(autograd.Node):
    """grad_fn of a copy between devices (not a primitive: no kernel, just a transfer), named
    as PyTorch's node for `to(device)`."""

    __slots__ = ()

    def __init__(self, src, out):
        self.prim = Primitive("to_device", "movement", None, None,
                              lambda g, out, x: (_to_device(g, x.device),), 1)
        self.inputs, self.attrs = (src,), {}
        self.out_data, self.out_dtype, self.out_device = out._data, out.dtype, out.device
        self.versions, self.hooks, self.retained, self.out_trace = (src._version[0],), None, \
            None, None
        self.out_version = self.out_at = None
        self.edges = autograd.edges_of((src,))


def detach(self: Tensor) -> Tensor:
    if _WRAPPERS[0] and dispatches(self):
        return _wrappers.call("detach.default", (self,))
    out = Tensor._make(self._data, self.dtype, self.device)
    out._version = self._version
    out._trace = self._trace
    if STATE.tracer is not None:
        STATE.tracer.alias(out, self)
    return out


def set_(self: Tensor, source=None, storage_offset: int = 0, size=None, stride=None) -> Tensor:
    """`t.set_(other)`: t uses other's memory, shape and strides (keeping its own identity and
    version counter, moved by one); `t.set_(storage, offset, size, stride)`: those elements of
    a storage's memory (`size` None: all of it, one-dimensional); `t.set_()`: no elements."""
    if _WRAPPERS[0] and dispatches(self):
        return _wrappers.inplace(self, "set_", tuple(a for a in (source, storage_offset, size,
                                                                 stride) if a is not None), {})
    if STATE.tracer is not None:
        STATE.tracer.graph_break("set_ gives a tensor other memory (a compiled program keeps the "
                                 "buffers it writes)")
    if STATE.grad_enabled and (self.requires_grad or isinstance(source, Tensor)
                               and source.requires_grad):
        if self.requires_grad and self.grad_fn is None:
            raise op_error("set_", "a leaf Variable that requires grad is being used in an "
                           "in-place operation.")
        raise op_error("set_", "kiln records no gradient through set_ (PyTorch's grad_fn for it "
                       "is NotImplemented): call it under kiln.no_grad() on tensors whose "
                       "gradient you do not need")
    xp = np if self.device.type == "cpu" else self.device.xp
    if source is None:
        data = xp.empty((0,), dtype=self.dtype.np)
    elif isinstance(source, Tensor):
        if source.dtype is not self.dtype:
            raise op_error("set_", f"Could not set tensor of type "
                           f"{_TYPE_NAMES.get(source.dtype.name, source.dtype.name).lower()} to "
                           f"a tensor of type "
                           f"{_TYPE_NAMES.get(self.dtype.name, self.dtype.name).lower()}")
        if source.device != self.device:
            raise op_error("set_", f"Expected the source tensor on {self.device}, got one on "
                           f"{source.device}")
        data = source._data
    elif hasattr(source, "_root") and hasattr(source, "nbytes"):      # a (typed) storage
        data = _strided_in_storage(self, source, storage_offset, size, stride, xp)
    else:
        raise TypeError(f"set_(): expected a Tensor or a storage as the source, got "
                        f"{type(source).__name__}")
    self._data = data
    self._base = None
    self._version[0] += 1
    return self


def _strided_in_storage(self: Tensor, storage, offset: int, size, stride, xp):
    """The array of `self`'s dtype with `size` and `stride` at element `offset` of the
    storage's memory (PyTorch's setStorage, with its bounds check)."""
    itemsize = self.dtype.itemsize
    nbytes = storage.nbytes()
    if size is None:
        size = (nbytes // itemsize - offset,)
    size = tuple(int(n) for n in size)
    if stride is None:
        stride, step = [], 1
        for n in reversed(size):
            stride.insert(0, step)
            step *= max(n, 1)
    stride = tuple(int(s) for s in stride)
    if len(stride) != len(size) or offset < 0 or any(n < 0 for n in size) or \
            any(s < 0 for s in stride):
        raise op_error("set_", f"invalid sizes {list(size)}, strides {list(stride)} or storage "
                       f"offset {offset}")
    needed = 0 if 0 in size else (offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))) \
        * itemsize
    if needed > nbytes:
        raise op_error("set_", f"setStorage: sizes {list(size)}, strides {list(stride)}, storage "
                       f"offset {offset}, and itemsize {itemsize} requiring a storage size of "
                       f"{needed} are out of bounds for storage of size {nbytes}")
    flat = storage._root.reshape(-1).view(xp.uint8)
    flat = flat[:nbytes - nbytes % itemsize].view(self.dtype.np)
    return xp.lib.stride_tricks.as_strided(flat[offset:], size,
                                           tuple(s * itemsize for s in stride))


def detach_(self: Tensor) -> Tensor:
    self._grad_fn, self._requires_grad = None, False
    return self


def requires_grad_(self: Tensor, requires_grad: bool = True) -> Tensor:
    if requires_grad and not self.dtype.is_floating_point and not self.dtype.is_complex:
        raise op_error("requires_grad_", "only Tensors of floating point dtype can require "
                       f"gradients, got {self.dtype.name}")
    if not requires_grad and self.grad_fn is not None:
        raise RuntimeError("you can only change requires_grad flags of leaf variables.")
    self._requires_grad = requires_grad
    return self


def retain_grad(self: Tensor) -> None:
    if self.grad_fn is None:
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        return
    self.grad_fn.retained = weakref.ref(self)
    self._retains_grad = True


def register_hook(self: Tensor, hook):
    if not self.requires_grad:
        raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
    if self.grad_fn is None:
        self._hooks = (self._hooks or ()) + (hook,)
        return DroppingHandle(functools.partial(autograd.drop_hook, self, "_hooks", hook))
    node = self.grad_fn             # a tensor hook of its grad_fn, before the node's own hooks
    node.hooks = (node.hooks or ()) + (hook,)
    return DroppingHandle(functools.partial(autograd.drop_hook, node, "hooks", hook))


def share_memory_(self: Tensor) -> Tensor:
    """Move the tensor's memory to shared memory (CPU), so processes it is sent to through
    kiln.multiprocessing write into the same memory. No-op if already shared or on cuda."""
    from kiln.runtime import shared_memory
    if self.device.type == "cpu" and shared_memory.segment_of(self._data) is None:
        self._data = shared_memory.shared_copy(self._data)
    return self


def is_shared(self: Tensor) -> bool:
    from kiln.runtime import shared_memory
    return self.device.type == "cuda" or shared_memory.segment_of(self._data) is not None


def new_tensor(self: Tensor, data, dtype=None, device=None, requires_grad=False) -> Tensor:
    if isinstance(data, np.ndarray) and dtype is None:
        dtype = dt.from_numpy(data.dtype)
    return creation.tensor(data, dtype=dtype or self.dtype, device=device or self.device,
                           requires_grad=requires_grad)


def _new(fill, name):
    def method(self, *size, dtype=None, layout=None, device=None, requires_grad=False):
        if layout is not None and fill == 0:      # new_zeros/new_empty: sparse ones too
            return creation.zeros(creation._size(size), dtype=dtype or self.dtype,
                                  layout=layout, device=device or self.device,
                                  requires_grad=requires_grad)
        creation.check_dense_layout(name, layout)
        if _WRAPPERS[0] and dispatches(self):
            out = _wrappers.call(f"{name}.default", (self, creation._size(size)), {
                k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None})
            return out.requires_grad_(True) if requires_grad else out
        return creation.full(creation._size(size), fill, dtype=dtype or self.dtype,
                             device=device or self.device, requires_grad=requires_grad)
    return method


def new_full(self, size, fill_value, dtype=None, layout=None, device=None,
             requires_grad=False):
    creation.check_dense_layout("new_full", layout)
    if _WRAPPERS[0] and dispatches(self):
        out = _wrappers.call("new_full.default", (self, tuple(size), fill_value), {
            k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None})
        return out.requires_grad_(True) if requires_grad else out
    return creation.full(tuple(size), fill_value, dtype=dtype or self.dtype,
                         device=device or self.device, requires_grad=requires_grad)


def sum_to_size(self: Tensor, *size) -> Tensor:
    shape = F._shape_arg(size)
    lead = self.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and self.shape[lead + i] != 1)
    if not shape:                       # ATen's sum_to: to no dims is a whole sum, 0-d too
        return F.sum(self)
    if axes and self.dtype.category <= dt.INT:     # a sum of bools or ints is int64, as torch's
        self = self.to(dt.int64)
    if axes and len(axes) == lead:      # only leading dims go: no size-1 dims to keep
        return P.sum(self, axes=axes, keepdim=False)
    out = P.sum(self, axes=axes, keepdim=True) if axes else self
    return P.reshape(out, shape=shape) if tuple(out.shape) != shape else out


def _fill(self: Tensor, value) -> Tensor:
    if isinstance(value, Tensor):
        if value.ndim:
            raise op_error("fill_", f"fill_ only supports 0-dimension value tensor but got "
                           f"tensor with {value.ndim} dimensions.")
        # (a 0-d CPU tensor fills a cuda tensor, as a number would: PyTorch takes it so)
        return F.expand(value.to(self.device, self.dtype), tuple(self.shape))
    return creation.full(tuple(self.shape), value, dtype=self.dtype, device=self.device)


def _draw_into(self, name: str, generator, draw) -> Tensor:
    """Write `draw(stream, count)` (numbers from the generator, in PyTorch's order) into self."""
    shape, n = tuple(self.shape), self.numel()
    with autograd.no_grad():
        values = creation.random_values(generator, self.device, self.dtype,
                                        lambda stream: draw(stream, n).reshape(shape))
        return write_inplace(self, values, name)


def _drawn_by_wrappers(method):
    """`method` (uniform_, normal_, ...), whose draw a wrapper subclass's class makes: ATen's
    in-place op of that name goes to its __torch_dispatch__."""
    def drawn(self, *args, **kwargs):
        if _WRAPPERS[0] and dispatches(self):
            return _wrappers.inplace(self, method.__name__, args, kwargs)
        return method(self, *args, **kwargs)
    drawn.__name__ = drawn.__qualname__ = method.__name__
    drawn.__doc__ = method.__doc__
    return drawn


@_drawn_by_wrappers
def uniform_(self, a=0.0, b=1.0, generator=None):
    if self.dtype.is_complex:       # PyTorch draws the real view: both parts in [a, b)
        part = self.dtype.to_real().np
        return _draw_into(self, "uniform_", generator, lambda stream, n: stream.uniform(
            2 * n, part, a, b).view(self.dtype.np))
    return _draw_into(self, "uniform_", generator,
                      lambda stream, n: stream.uniform(n, self.dtype.np, a, b))


@_drawn_by_wrappers
def normal_(self, mean=0.0, std=1.0, generator=None):
    if self.dtype.is_complex:       # the real view, each part with half the variance
        part = self.dtype.to_real().np
        return _draw_into(self, "normal_", generator, lambda stream, n: stream.normal(
            2 * n, part, mean, std / math.sqrt(2)).view(self.dtype.np))
    return _draw_into(self, "normal_", generator,
                      lambda stream, n: stream.normal(n, self.dtype.np, mean, std))


@_drawn_by_wrappers
def bernoulli_(self, p=0.5, generator=None):
    with autograd.no_grad():
        drawn = creation.bernoulli(p.expand(tuple(self.shape)), generator=generator) \
            if isinstance(p, Tensor) else creation.bernoulli(self, float(p), generator=generator)
        return write_inplace(self, drawn.to(self.dtype), "bernoulli_")


@_drawn_by_wrappers
def random_(self, low=0, high=None, *, generator=None):
    """`random_()`: [0, 2^mantissa] for floats, [0, max] for integers; `random_(to)`,
    `random_(from, to)`: [from, to)."""
    if high is None and low == 0:
        return _draw_into(self, "random_", generator,
                          lambda stream, n: stream.full_range(n, self.dtype.np))
    if high is None:
        low, high = 0, low
    return _draw_into(self, "random_", generator,
                      lambda stream, n: stream.integers(n, int(low), int(high)))


@_drawn_by_wrappers
def exponential_(self, lambd=1.0, *, generator=None):
    return _draw_into(self, "exponential_", generator,
                      lambda stream, n: stream.exponential(n, self.dtype.np, lambd))


_TYPE_NAMES = {"float32": "Float", "float64": "Double", "float16": "Half", "int64": "Long",
               "int32": "Int", "bool": "Bool", "uint8": "Byte", "bfloat16": "BFloat16",
               "int8": "Char", "int16": "Short", "uint16": "UInt16", "uint32": "UInt32",
               "uint64": "UInt64"}


def _type(self, dtype=None):
    if dtype is None:
        return f"kiln.{_TYPE_NAMES[self.dtype.name]}Tensor"
    return to(self, creation._dtype(dtype))


def _cast(dtype):
    """`x.float()` and its kin: `to(dtype)`, in the memory format asked for."""
    def cast(self, memory_format=layout.preserve_format):
        return to(self, dtype, memory_format=memory_format)
    return cast


def _reflected(fn):
    return lambda self, other: fn(other, self)


def _iter(self):
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return iter(F.unbind(self, 0))


def _contains(self, element):
    return bool((self == element).any())


_METHODS = {
    # arithmetic operators
    # `2 * t` is t.mul(2), as in PyTorch: the tensor stays the first input of the node, so
    # grad_fn.next_functions lists it first (tutorials walk next_functions[0][0])
    "__add__": F.add, "__radd__": F.add, "__sub__": F.sub,
    "__rsub__": _reflected(F.sub), "__mul__": F.mul, "__rmul__": F.mul,
    "__truediv__": F.div, "__rtruediv__": _reflected(F.div), "__rdiv__": _reflected(F.div),
    "__floordiv__": F.floor_divide,
    "__rfloordiv__": _reflected(F.floor_divide), "__mod__": F.remainder,
    "__rmod__": _reflected(F.remainder), "__pow__": F.pow, "__rpow__": _reflected(F.pow),
    "__matmul__": F.matmul, "__rmatmul__": _reflected(F.matmul), "__neg__": F.neg,
    "__pos__": lambda self: self, "__abs__": F.abs, "__invert__": lambda self: (
        F.logical_not(self) if self.dtype is dt.bool_ else F.bitwise_not(self)),
    "__and__": F.bitwise_and, "__rand__": _reflected(F.bitwise_and),
    "__or__": F.bitwise_or, "__ror__": _reflected(F.bitwise_or),
    "__xor__": F.bitwise_xor, "__rxor__": _reflected(F.bitwise_xor),
    "__eq__": F.eq, "__ne__": F.ne, "__lt__": F.lt, "__le__": F.le, "__gt__": F.gt,
    "__ge__": F.ge, "__getitem__": F.getitem, "__setitem__": setitem, "__iter__": _iter,
    "__contains__": _contains,
    # conversion and autograd
    "to": to, "cpu": lambda self: to(self, "cpu"),
    "cuda": lambda self, device=None, non_blocking=False: to(
        self, f"cuda:{device}" if isinstance(device, int) else (device or "cuda")),
    "float": _cast(dt.float32), "double": _cast(dt.float64), "half": _cast(dt.float16),
    "long": _cast(dt.int64), "bfloat16": _cast(dt.bfloat16), "int": _cast(dt.int32),
    "bool": _cast(dt.bool_), "byte": _cast(dt.uint8), "char": _cast(dt.int8),
    "short": _cast(dt.int16), "cfloat": _cast(dt.complex64), "cdouble": _cast(dt.complex128),
    "type": _type,
    "type_as": lambda self, other: to(self, other.dtype),
    "detach": detach, "detach_": detach_, "set_": set_, "requires_grad_": requires_grad_,
    "retain_grad": retain_grad, "register_hook": register_hook,
    "register_post_accumulate_grad_hook": autograd.register_post_accumulate_grad_hook,
    "share_memory_": share_memory_, "is_shared": is_shared,
    "backward": autograd.backward, "new_tensor": new_tensor, "new_zeros": _new(0, "new_zeros"),
    "new_ones": _new(1, "new_ones"), "new_empty": _new(0, "new_empty"), "new_full": new_full,
    "sum_to_size": sum_to_size, "clone": F.clone, "contiguous": F.contiguous,
    # in-place
    "zero_": zero_, "fill_": fill_,
    "copy_": copy_,
    "uniform_": uniform_, "normal_": normal_, "bernoulli_": bernoulli_,
    "random_": random_, "exponential_": exponential_,
    "masked_select": F.masked_select, "item": Tensor.item,
    # the condition comes first in where(condition, input, other), the tensor in the method
    "where": lambda self, condition, other: F.where(condition, self, other),
    # the dims of x.flip and x.tile come one by one too: x.flip(0, 1)
    "flip": lambda self, *dims, **kw: F.flip(self, *([shapes._shape_arg(dims)] if dims else []),
                                             **kw),
    "tile": lambda self, *dims, **kw: F.tile(self, *([shapes._shape_arg(dims)] if dims else []),
                                             **kw),
    # the method names its sizes `split_size` (torch.split names them split_size_or_sections)
    "split": lambda self, split_size, dim=0: F.split(self, split_size, dim),
}

# functions that take the tensor first become methods under the same name
_AS_METHODS = """
add sub mul div true_divide divide floor_divide remainder fmod pow float_power neg negative
abs absolute sign reciprocal square exp exp2 log log2 log10 log1p expm1 sqrt rsqrt sin cos tan
tanh sigmoid erf floor ceil trunc fix round frac maximum minimum clamp clip clamp_min clamp_max
lerp addcmul addcdiv hypot eq ne lt le gt ge less less_equal greater greater_equal not_equal
logical_not logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not
isnan isinf isposinf isneginf isfinite nan_to_num allclose isclose equal relu sum nansum mean
nanmean amax amin max min argmax argmin prod var std logsumexp all any count_nonzero norm dist
cumsum cumprod reshape view view_as reshape_as flatten unflatten squeeze unsqueeze permute
transpose swapaxes swapdims t movedim moveaxis expand expand_as broadcast_to repeat
repeat_interleave narrow split chunk tensor_split unbind select fliplr flipud roll tril
triu diagonal diag trace index_select gather scatter scatter_add index_add index_fill index_copy
masked_fill take take_along_dim nonzero argwhere matmul mm bmm mv dot inner outer addmm baddbmm
softmax log_softmax hardtanh mish
""".split()

for _name in _AS_METHODS:
    _METHODS.setdefault(_name, getattr(F, _name))

# in-place twins: `x.add_(y)` is `x.add(y)` written back into x
_INPLACE = """
add sub mul div true_divide floor_divide remainder fmod pow neg abs sign reciprocal square exp
log log1p expm1 sqrt rsqrt sin cos tan tanh sigmoid floor ceil trunc round frac clamp clip
clamp_min clamp_max lerp addcmul addcdiv eq ne lt le gt ge logical_not logical_and logical_or
logical_xor bitwise_and bitwise_or bitwise_xor nan_to_num relu masked_fill index_fill index_copy
index_add scatter scatter_add tril triu cumsum hardtanh
""".split()

for _name in _INPLACE:
    _METHODS[_name + "_"] = _inplace(getattr(F, _name), _name + "_")
for _name, (_ufunc, _operand) in _INTO_SELF.items():
    _METHODS[_name] = _inplace_into_self(getattr(F, _name[:-1]), _name, _ufunc, _operand)

_METHODS["__iadd__"] = _METHODS["add_"]
_METHODS["__isub__"] = _METHODS["sub_"]
_METHODS["__imul__"] = _METHODS["mul_"]
_METHODS["__itruediv__"] = _METHODS["div_"]

for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)

Tensor.T = property(lambda self: P.permute(self, perm=tuple(range(self.ndim - 1, -1, -1))))
Tensor.mT = property(lambda self: F.transpose(self, -2, -1))


def _conj_transpose(self):
    """x.H: the conjugate transpose of a matrix (a 0-d tensor conjugated), as PyTorch's."""
    if self.ndim not in (0, 2):
        hint = " For batches of matrices, use tensor.mH" if self.ndim > 2 else ""
        raise op_error("H", f"tensor.H is only supported on matrices (2-D tensors). Got "
                       f"{self.ndim}-D tensor of shape {list(self.shape)}.{hint}")
    out = self.T
    return P.conj(out) if self.dtype.is_complex else out


Tensor.H = property(_conj_transpose)
Tensor.is_cpu = property(lambda self: self.device.type == "cpu")
