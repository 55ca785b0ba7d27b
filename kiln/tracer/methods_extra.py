"""More Tensor methods: `functional_extra`'s ops as methods, more in-place twins, device flags
and the small metadata helpers PyTorch tensors have."""

from __future__ import annotations

import warnings
import weakref

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime.mt19937 import TorchStream
from kiln.runtime.device import (MetaArray, cuda_is_available, is_host_array, is_pinned_array,
                                 pinned_copy, record_stream)
from kiln.tracer import creation
from kiln.tracer import functional as F
from kiln.tracer import functional_extra as FX
from kiln.tracer import sparse
from kiln.tracer import storage
from kiln.tracer.sparse import layout, sparse_coo, strided  # noqa: F401  (re-exported)
from kiln.tracer.sparse_compressed import (sparse_bsc, sparse_bsr, sparse_csc,  # noqa: F401
                                           sparse_csr, to_layout)
from kiln.tracer.grad_names import named
from kiln.tracer import layout as memory_layout
from kiln.tracer import dispatch_subclass as _wrappers
from kiln.tracer.errors import op_error
from kiln.tracer.methods import ToCopyBackward0, _draw_into, write_inplace
from kiln.tracer.tensor import STATE, Tensor

def _record_stream(tensor: Tensor, stream) -> None:
    """`tensor.record_stream(stream)`: work queued on `stream` (a kiln.cuda.Stream) uses
    `tensor`, whose memory then outlives it until that work is done (runtime.device)."""
    if not tensor.is_cuda:
        raise RuntimeError(f"record_stream: expected a cuda tensor, got one on {tensor.device}")
    handle = getattr(stream, "_stream", None)
    if handle is None or not hasattr(handle, "ptr"):
        raise TypeError(f"record_stream: expected a kiln.cuda.Stream, got "
                        f"{type(stream).__name__}")
    weakref.finalize(tensor, record_stream, tensor._data, handle)


_WRAPPERS = _wrappers.SUBCLASSES


def _inplace(fn, name):
    """`x.name(...)` = `fn(x, ...)` written back into x. A composite reads x in several nodes,
    and write_inplace keeps only the last node's inputs intact, so the op reads a snapshot of
    x that carries x's history."""
    def method(self, *args, **kwargs):
        if _WRAPPERS[0] and _wrappers.takes(self, args, kwargs):
            return _wrappers.inplace(self, name, args, kwargs)
        src = self
        if self.requires_grad and STATE.grad_enabled and self.grad_fn is not None:
            src = Tensor._make(self._data.copy(), self.dtype, self.device)
            src._requires_grad, src._grad_fn, src._trace = True, self.grad_fn, self._trace
        return write_inplace(self, fn(src, *args, **kwargs), name)
    method.__name__ = name
    return method


_AS_METHODS = """
asin acos atan atan2 sinh cosh asinh acosh atanh arcsin arccos arctan arctan2 arcsinh arccosh
arctanh deg2rad rad2deg lgamma digamma mvlgamma erfc erfinv i0 logit xlogy sinc logaddexp
logaddexp2 sgn signbit copysign heaviside ldexp frexp nextafter gcd lcm bitwise_left_shift
bitwise_right_shift fmax fmin positive multiply subtract conj conj_physical resolve_conj
resolve_neg angle is_complex is_conj is_neg isreal is_signed is_nonzero is_same_size is_inference
argsort sort msort topk kthvalue median nanmedian mode quantile nanquantile cummax cummin
logcumsumexp diff histc histogram bincount unique unique_consecutive isin aminmax hash_tensor
hsplit vsplit
dsplit split_with_sizes unsafe_split unsafe_chunk unsafe_split_with_sizes ravel rot90 diag_embed
diagflat diagonal_scatter select_scatter slice_scatter index_put index_reduce scatter_reduce
masked_scatter put renorm unfold as_strided addmv addr addbmm adjoint vdot kron cov corrcoef
nonzero_static igamma igammac narrow_copy as_strided_scatter
""".split()


_METHODS = {name: getattr(FX, name) for name in _AS_METHODS}
_METHODS["layout"] = property(lambda self: strided)
_METHODS["is_nested"] = property(lambda self: False)     # kiln.nested.NestedTensor: True
_METHODS["pin_memory"] = lambda self, device=None: _pin_memory(self)
_METHODS["is_pinned"] = lambda self, device=None: is_pinned_array(self._data)
_METHODS["record_stream"] = lambda self, stream: _record_stream(self, stream)
# how load_state_dict turns a state-dict value into this parameter's or buffer's new value when
# tensors are swapped in (torch.__future__.set_swap_module_params_on_conversion), as PyTorch's
_METHODS["module_load"] = lambda self, other, assign=False: \
    other.detach() if assign else self.copy_(other).detach()
_METHODS["untyped_storage"] = storage.untyped_storage
_METHODS["storage"] = storage.storage
_METHODS["storage_type"] = lambda self: storage.TypedStorage
_METHODS["new_empty_strided"] = lambda self, size, stride, dtype=None, device=None, \
    requires_grad=False, **_: FX.empty_strided(size, stride, dtype=dtype or self.dtype,
                                               device=device or self.device,
                                               requires_grad=requires_grad)


def _pin_memory(self):
    """Tensor.pin_memory(): a copy in page-locked host memory (itself if pinned already),
    differentiable as a copy; as in PyTorch, only with an accelerator and for CPU tensors."""
    if self.device.type != "cpu":
        raise RuntimeError(f"cannot pin '{self.type()}' only dense CPU tensors can be pinned")
    if not cuda_is_available():
        raise RuntimeError("Cannot access accelerator device when none is available.")
    if is_pinned_array(self._data):
        return self
    out = Tensor._make(pinned_copy(self._data), self.dtype, self.device)
    if self.requires_grad and STATE.grad_enabled:
        out._requires_grad = True
        out._grad_fn = ToCopyBackward0(self, out)     # the gradient goes back as for a copy
    return out


def _set_part(part):
    def setter(self, value):        # x.real = v writes the parts in place, as PyTorch
        getattr(FX, part)(self).copy_(value)
    return setter


# attributes in PyTorch, not methods: views of a complex tensor's parts; a real tensor's real
# part is itself, and it has no imag
_METHODS["real"] = property(FX.real, _set_part("real"))
_METHODS["imag"] = property(FX.imag, _set_part("imag"))
_METHODS["polygamma"] = lambda self, n: FX.polygamma(n, self)
_METHODS["ger"] = F.outer
_METHODS["divide_"] = _inplace(F.div, "divide_")
_METHODS["ndimension"] = lambda self: self.ndim
_METHODS["nbytes"] = property(lambda self: self.numel() * self.element_size())
_METHODS["itemsize"] = property(lambda self: self.element_size())
_METHODS["mH"] = property(lambda self: FX.conj(F.transpose(self, -2, -1)))
_METHODS["retains_grad"] = property(lambda self: bool(self._retains_grad))
_METHODS["bernoulli"] = lambda self, p=None, *, generator=None: creation.bernoulli(
    self, p, generator=generator)
_METHODS["multinomial"] = lambda self, num_samples, replacement=False, *, generator=None: \
    creation.multinomial(self, num_samples, replacement, generator=generator)
_METHODS["new"] = lambda self, *args: (creation.tensor(args[0], dtype=self.dtype,
                                                       device=self.device)
                                       if len(args) == 1 and not isinstance(args[0], int)
                                       else creation.empty(*args, dtype=self.dtype,
                                                           device=self.device))
_METHODS["to_dense"] = lambda self, dtype=None, *, masked_grad=None: \
    self if dtype is None else self.to(dtype)
_METHODS["to_sparse"] = sparse.to_sparse
_METHODS["to_sparse_coo"] = sparse.to_sparse
_METHODS["to_sparse_csr"] = lambda self, dense_dim=None: to_layout(self, sparse_csr)
_METHODS["to_sparse_csc"] = lambda self, dense_dim=None: to_layout(self, sparse_csc)
_METHODS["is_sparse_csr"] = property(lambda self: False)
_METHODS["sparse_mask"] = sparse.sparse_mask


def _no_compressed_indices(name: str, kind: str):
    def fn(self):
        raise RuntimeError(f"{name} expected sparse {kind} compressed tensor layout but got "
                           f"Strided")
    return fn


for _name, _kind in (("crow_indices", "row"), ("col_indices", "row"),
                     ("ccol_indices", "column"), ("row_indices", "column")):
    _METHODS[_name] = _no_compressed_indices(_name, _kind)

for _flag in ("is_xpu", "is_mps", "is_quantized", "is_sparse", "is_mkldnn_",
              "is_ipu", "is_mtia", "is_maia", "is_xla", "is_vulkan"):
    _METHODS[_flag.rstrip("_")] = property(lambda self: False)




# ----------------------------------------------------------------------------- activations
# Tensor.hardshrink and Tensor.prelu; nn.functional's hardshrink and prelu call these.

def _hardshrink(self, lambd=0.5):
    """x where |x| > lambd, else 0."""
    return F.where(F.gt(F.abs(self), lambd), self, F.zeros_like(self))


def _prelu(self, weight):
    """Leaky ReLU with a learned slope: one, or one per channel (dim 1), as PyTorch's."""
    if weight.numel() == 1:
        weight = F.reshape(weight, ())           # a 0-d input keeps its shape
    else:
        channels = self.shape[1] if self.ndim >= 2 else 1
        if weight.numel() != channels:
            raise RuntimeError(f"Mismatch of parameter numbers and input channel size. Found "
                               f"parameter numbers = {weight.numel()} and channel size = "
                               f"{channels}.")
        shape = [1] * self.ndim
        shape[1] = channels
        weight = F.reshape(weight, tuple(shape))
    return F.where(F.gt(self, 0), self, F.mul(self, weight))


_METHODS["hardshrink"] = named(_hardshrink, "HardshrinkBackward0")
_METHODS["prelu"] = named(_prelu, "PreluKernelBackward0")


# ----------------------------------------------------------------------------- resize

def _sizes(sizes) -> tuple:
    one = len(sizes) == 1 and not isinstance(sizes[0], int)
    return tuple(int(n) for n in (sizes[0] if one else sizes))


def _resize_(self, *sizes, memory_format=None):
    """PyTorch's resize_: the tensor takes the new shape in place. Its elements are the first
    ones of its memory in row-major order (the memory of the array owning them, from the
    tensor's first element, as PyTorch's storage); past the end of that memory the tensor gets
    new memory, the old elements copied to its start and the rest zeros (PyTorch leaves them
    uninitialized and grows the storage, which other views of it then share too)."""
    shape = _sizes(sizes)
    if self.requires_grad:
        raise RuntimeError("cannot resize variables that require grad")
    if any(n < 0 for n in shape):
        raise RuntimeError(f"Trying to create tensor with negative dimension: {list(shape)}")
    if STATE.tracer is not None:
        STATE.tracer.graph_break("resize_ changes a tensor's shape in place")
    data = self._data
    fmt = memory_format if memory_format is not None else memory_layout.contiguous_format
    memory_layout.check(fmt, "resize_", len(shape))
    if tuple(shape) == data.shape and memory_format is None:
        return self                           # as PyTorch: the strides stay
    n = int(np.prod(shape))
    if self.device.type == "meta":
        new = MetaArray(shape, data.dtype)
    else:
        new = _resized(data, shape, n, self.device)
        if fmt in (memory_layout.channels_last, memory_layout.channels_last_3d):
            xp = np if self.device.type == "cpu" else self.device.xp
            new = memory_layout.arrange(xp, new, fmt)
    self._data = new
    self._base = None         # the steps from a base no longer give this shape
    self._version[0] += 1
    return self


def _resized(data, shape: tuple, n: int, device):
    """`n` elements of `data`'s memory from its first, in row-major order, at `shape`."""
    xp = np if device.type == "cpu" else device.xp
    root, offset = data, 0
    if is_host_array(data):
        root, offset = storage.memory_root(data), storage.element_offset(data)
    elif hasattr(data, "data"):                   # CuPy: the pointer's offset in its allocation
        while getattr(root, "base", None) is not None:
            root = root.base
        offset = (data.data.ptr - root.data.ptr) // data.itemsize
    if root.flags.c_contiguous:
        memory = root.reshape(-1)[offset:]
    elif data.flags.c_contiguous:
        memory = data.reshape(-1)
    else:
        memory = xp.ascontiguousarray(data).reshape(-1)
    if n <= memory.size:
        return memory[:n].reshape(shape)
    new = xp.zeros(n, data.dtype)
    new[:memory.size] = memory
    return new.reshape(shape)


def _resize_as_(self, the_template, memory_format=None):
    return _resize_(self, tuple(the_template.shape), memory_format=memory_format)


def _resize(self, *sizes):
    """The deprecated out-of-place resize: a reshape that keeps the number of elements."""
    warnings.warn("non-inplace resize is deprecated", UserWarning, stacklevel=2)
    return _autograd_resize(self, _sizes(sizes))


def _resize_as(self, tensor):
    """The deprecated out-of-place resize_as: a reshape that keeps the number of elements."""
    warnings.warn("non-inplace resize_as is deprecated", UserWarning, stacklevel=2)
    return _autograd_resize(self, tuple(tensor.shape))


def _autograd_resize(self, shape: tuple):
    n = int(np.prod(shape))
    if self.numel() != n:
        raise RuntimeError(
            f"requested resize to {'x'.join(map(str, shape))} ({n} elements in total), but the "
            f"given tensor has a size of {'x'.join(map(str, self.shape))} ({self.numel()} "
            "elements). autograd's resize can only change the shape of a given tensor, while "
            "preserving the number of elements. ")
    return F.reshape(F.clone(self), shape)


_METHODS["resize_"] = _resize_
_METHODS["resize_as_"] = _resize_as_
_METHODS["resize"] = _resize
_METHODS["resize_as"] = _resize_as


def fill_diagonal_(self, fill_value, wrap=False):
    """Fill the main diagonal; a tall matrix with wrap=True restarts it every cols+1 rows."""
    if self.ndim == 2:
        rows, cols = self.shape
        end = rows * cols if wrap and rows > cols else min(rows, cols) * (cols + 1)
        positions = list(range(0, end, cols + 1))
    else:
        step = sum(int(np.prod(self.shape[i + 1:])) for i in range(self.ndim))
        positions = [i * step for i in range(min(self.shape))]
    flat = F.reshape(self, (-1,))
    idx = creation.tensor(np.asarray(positions, dtype=np.int64), device=self.device)
    filled = F.index_fill(flat, 0, idx, fill_value)
    return write_inplace(self, F.reshape(filled, tuple(self.shape)), "fill_diagonal_")


_METHODS["fill_diagonal_"] = fill_diagonal_


def _drawn(name, draw, check, floating=True):
    """An in-place random fill whose numbers are PyTorch's CPU stream's (`draw(stream, n,
    dtype, *args)`), after `check(*args)` refuses the parameters PyTorch refuses."""
    def method(self, *args, generator=None, **kwargs):
        if floating and not self.dtype.is_floating_point:
            raise op_error(name, f"{name} draws from a continuous distribution: the tensor "
                           f"must be floating point, got {self.dtype.name}", NotImplementedError)
        check(*args, **kwargs)
        return _draw_into(self, name, generator,
                          lambda stream, n: draw(stream, n, self.dtype.np, *args, **kwargs))
    method.__name__ = name
    return method


def _geometric_p(p):
    if not 0 < p < 1:
        raise op_error("geometric_", f"geometric_ expects p to be in (0, 1), but got p={p}")


def _cauchy_sigma(median=0.0, sigma=1.0):
    if not sigma > 0:
        raise op_error("cauchy_", f"cauchy_ expects sigma > 0.0, but found sigma={sigma}")


def _log_normal_std(mean=1.0, std=2.0):
    if not std > 0:
        raise op_error("log_normal_", f"log_normal_ expects std > 0.0, but found std={std}")


_METHODS["geometric_"] = _drawn("geometric_", TorchStream.geometric, _geometric_p,
                                floating=False)
_METHODS["cauchy_"] = _drawn("cauchy_", TorchStream.cauchy, _cauchy_sigma)
_METHODS["log_normal_"] = _drawn("log_normal_", TorchStream.log_normal, _log_normal_std)


def _python_map(self, name: str, fn, other=None):
    """`fn` applied in Python to each element (and `other`'s, broadcast to self), written into
    self: PyTorch's apply_/map_, for CPU tensors only as there."""
    if self.device.type != "cpu" or (other is not None and other.device.type != "cpu"):
        raise TypeError(f"{name} is only implemented on CPU tensors")
    if STATE.tracer is not None:
        STATE.tracer.graph_break(f"{name} calls a Python function on each element")
    values = self._data.ravel().tolist()
    if other is None:
        out = [fn(v) for v in values]
    else:
        theirs = np.broadcast_to(other._data, self._data.shape).ravel().tolist()
        out = [fn(v, w) for v, w in zip(values, theirs)]
    result = np.asarray(out, dtype=self.dtype.np).reshape(self._data.shape)
    return write_inplace(self, creation.tensor(result), name)


_METHODS["apply_"] = lambda self, callable: _python_map(self, "apply_", callable)
_METHODS["map_"] = lambda self, tensor, callable: _python_map(self, "map_", callable, tensor)


def _reshaping_inplace(fn, name):
    """In-place ops that change the shape (t_, squeeze_, ...): the tensor becomes the view."""
    def method(self, *args, **kwargs):
        if STATE.tracer is not None:
            STATE.tracer.graph_break(f"{name} changes a tensor's shape in place")
        # the op reads an alias with the old shape: the tensor object itself changes shape
        src = Tensor._make(self._data, self.dtype, self.device)
        src._requires_grad, src._grad_fn, src._version = (self.requires_grad, self.grad_fn,
                                                        self._version)
        result = fn(src, *args, **kwargs)
        if self.requires_grad and self.grad_fn is None and STATE.grad_enabled:
            raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used in "
                               "an in-place operation.")
        self._data = result._data
        if result.requires_grad:
            self._grad_fn = result.grad_fn
        self._version[0] += 1
        return self
    method.__name__ = name
    return method


for _name, _fn in (("t_", F.t), ("transpose_", F.transpose), ("swapaxes_", F.swapaxes),
                   ("swapdims_", F.swapdims), ("squeeze_", F.squeeze),
                   ("unsqueeze_", F.unsqueeze)):
    _METHODS[_name] = _reshaping_inplace(_fn, _name)

# in-place twins of the ops that have a method but no `_` form yet
_INPLACE_F = """
absolute addmm baddbmm bitwise_not cumprod erf exp2 fix float_power hypot log10 log2 negative
""".split()
_INPLACE_COMPARE = {"greater_": F.gt, "greater_equal_": F.ge, "less_": F.lt,
                    "less_equal_": F.le, "not_equal_": F.ne}
_INPLACE_FX = """
asin acos atan atan2 sinh cosh asinh acosh atanh arcsin arccos arctan arctan2 arcsinh arccosh
arctanh deg2rad rad2deg lgamma digamma erfc erfinv i0 logit xlogy sinc sgn copysign heaviside
ldexp nextafter gcd lcm bitwise_left_shift bitwise_right_shift conj_physical index_put
index_reduce scatter_reduce masked_scatter put renorm addmv addr addbmm mvlgamma multiply
subtract diagonal_scatter igamma igammac
""".split()

for _name in _INPLACE_F:
    _METHODS.setdefault(_name + "_", _inplace(getattr(F, _name), _name + "_"))
for _name, _fn in _INPLACE_COMPARE.items():
    _METHODS.setdefault(_name, _inplace(_fn, _name))
for _name in _INPLACE_FX:
    _METHODS.setdefault(_name + "_", _inplace(getattr(FX, _name), _name + "_"))
_METHODS["polygamma_"] = _inplace(lambda self, n: FX.polygamma(n, self), "polygamma_")


def _reversed(self):
    """`reversed(t)`: the tensor flipped along its first dimension (a 0-d tensor as it is)."""
    return self if self.ndim == 0 else F.flip(self, (0,))


def _dlpack(self, *args, **kwargs):
    """The DLPack capsule of the tensor's array (`np.from_dlpack(t)`, `cupy.from_dlpack(t)`)."""
    if self.requires_grad:
        raise BufferError("Can't export tensors that require gradient, use tensor.detach()")
    return self._data.__dlpack__(*args, **kwargs)


def _cuda_array_interface(self):
    if self.device.type != "cuda":
        raise AttributeError(f"Can't get __cuda_array_interface__ on non-CUDA tensor type: "
                             f"{self.type()} If CUDA data is required use tensor.cuda() to copy "
                             "tensor to device memory.")
    if self.requires_grad:
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                           "If gradients aren't required, use var.detach() to get Variable "
                           "that doesn't require grad.")
    return self._data.__cuda_array_interface__


def _delitem(self, key):
    raise TypeError("Tensor does not support deleting items")


Tensor.__cuda_array_interface__ = property(_cuda_array_interface)
_METHODS.update({"__dlpack__": _dlpack,
                 "__dlpack_device__": lambda self: self._data.__dlpack_device__(),
                 "__delitem__": _delitem})

# the shift operators, and the augmented assignments that write into the tensor (`mask &= m`
# on a view changes its base, as in PyTorch; without these Python would rebind a new tensor)
_METHODS.update({
    "__lshift__": FX.bitwise_left_shift, "__rshift__": FX.bitwise_right_shift,
    "__rlshift__": lambda self, other: FX.bitwise_left_shift(other, self),
    "__rrshift__": lambda self, other: FX.bitwise_right_shift(other, self),
    "__reversed__": _reversed})
for _op, _method in (("and", "bitwise_and_"), ("or", "bitwise_or_"), ("xor", "bitwise_xor_"),
                     ("mod", "remainder_"), ("pow", "pow_"), ("floordiv", "floor_divide_"),
                     ("lshift", "bitwise_left_shift_"), ("rshift", "bitwise_right_shift_")):
    _METHODS[f"__i{_op}__"] = getattr(Tensor, _method, None) or _METHODS[_method]


def _to_padded_tensor(self, padding, output_size=None):
    raise NotImplementedError(f"to_padded_tensor: only nested tensors pad; got a dense "
                              f"tensor of shape {tuple(self.shape)} (build one with "
                              "kiln.nested.nested_tensor(...))")


_METHODS["to_padded_tensor"] = _to_padded_tensor

for _name, _fn in _METHODS.items():
    if not hasattr(Tensor, _name):
        setattr(Tensor, _name, _fn)
