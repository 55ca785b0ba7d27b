"""`kiln.ops.aten`: ATen's operator objects (`aten.add.Tensor`), and the names modes see.

PyTorch names every kernel call by an `OpOverload`: a packet (`torch.ops.aten.add`) and an
overload of it (`.Tensor`, `.Scalar`, `.default`, `.dim_IntList`). A TorchDispatchMode is
handed one per call, and code calls them directly with ATen's argument convention
(`aten.add.Tensor(a, b, alpha=2)`, `aten._to_copy.default(x, dtype=torch.float64)`).

kiln runs its primitives where PyTorch runs ATen kernels, so each primitive call is named by
the ATen overload PyTorch's dispatch mode would show for the same user code where one
corresponds (`overload_of`: add -> aten.add.Tensor, matmul -> aten.mm.default or
aten.bmm.default by rank, reshape -> aten.view.default, cast -> aten._to_copy.default, a full
sum -> aten.sum.default, ...). A primitive with no ATen counterpart is `kiln.<prim>.default`
(kiln.take.default, kiln.batch_norm.default). ATen ops kiln builds from primitives
(aten.t.default, aten.addmm.default, aten.detach.default, aten._softmax.default) exist as
objects to call but a mode is not handed them for plain tensors: it sees their primitives.

An OpOverload is called two ways: with the primitive's inputs and attributes (what a mode got
as `args` and `kwargs`: `func(*args, **kwargs)` runs the primitive), or with ATen's arguments
(`ATEN`'s functions, which call kiln's public ops). A call whose keywords are exactly the
primitive's attributes and whose positional arguments are its tensors is the first kind.
`aten.<op>.default` for an op not in the table calls the kiln function of that name, whose
signature is torch's public one, as ATen's default overloads mostly are. The ops a Tensor
method hands a wrapper subclass (`aten.add_.Tensor`, `aten.copy_.default`, `aten.detach.default`,
`aten._local_scalar_dense.default`, ...) are made on first use by `aten_method_op`: called
with ATen's arguments they call the Tensor method.
"""

from __future__ import annotations

import inspect
from typing import Callable

import kiln
from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES
from kiln.tracer import dispatch_mode, dispatch_subclass
from kiln.tracer.tensor import Tensor
from kiln.tracer.unsigned import LIMITED as _LIMITED_UNSIGNED


class OpOverload:
    """One overload of an operator: `aten.add.Tensor` (torch._ops.OpOverload)."""

    def __init__(self, packet: "OpOverloadPacket", overload: str, prim=None,
                 aten_fn: Callable | None = None):
        self.overloadpacket = packet
        self._overloadname = overload
        self._opname = packet._opname
        self.namespace = packet.namespace
        self._prim = prim
        self._aten_fn = aten_fn
        self.__name__ = f"{packet._opname}.{overload}"
        self.__qualname__ = self.name()        # DebugMode prints it, as torch's

    def name(self) -> str:
        """'aten::add.Tensor' ('aten::cos' for a default overload), as torch's."""
        base = f"{self.namespace}::{self._opname}"
        return base if self._overloadname == "default" else f"{base}.{self._overloadname}"

    def __str__(self) -> str:
        return f"{self.namespace}.{self._opname}.{self._overloadname}"

    def __repr__(self) -> str:
        return (f"<OpOverload(op='{self.namespace}.{self._opname}', "
                f"overload='{self._overloadname}')>")

    def __getattr__(self, name: str):
        if name == "_schema":
            raise AttributeError(f"{self}._schema: kiln's OpOverloads carry no FunctionSchema "
                                 "(ATen's typed signature); call the op, or read its name()")
        raise AttributeError(f"'OpOverload' object has no attribute '{name}'")

    def __call__(self, *args, **kwargs):
        if self._prim is not None and (self._aten_fn is None or
                                       _is_primitive_call(self._prim, args, kwargs)):
            device = kwargs.pop("device", None)
            return dispatch_mode.run_primitive(self._prim, args, kwargs, device)
        return self._aten_fn(*args, **kwargs)


class OpOverloadPacket:
    """An operator with its overloads: `aten.add` (torch._ops.OpOverloadPacket)."""

    def __init__(self, namespace: str, opname: str):
        self.namespace, self._opname, self.__name__ = namespace, opname, opname
        self._overloads: dict[str, OpOverload] = {}

    def overloads(self) -> list[str]:
        return list(self._overloads)

    def __getattr__(self, overload: str) -> OpOverload:
        if overload.startswith("__"):
            raise AttributeError(overload)
        found = self._overloads.get(overload)
        if found is None:
            raise AttributeError(f"The underlying op of '{self}' has no overload name "
                                 f"'{overload}' in kiln (kiln has: {', '.join(self._overloads)})")
        return found

    def __call__(self, *args, **kwargs):
        """Calls the first overload whose ATen arguments fit (`aten.mean(x, [0])` is
        `aten.mean.dim`), as torch picks one by its schemas."""
        for op in self._overloads.values():
            if op._aten_fn is None or _binds(op._aten_fn, args, kwargs):
                return op(*args, **kwargs)
        raise TypeError(f"{self}: no overload of kiln's ({', '.join(self._overloads)}) takes "
                        f"{len(args)} positional arguments and keywords {sorted(kwargs)}")

    def __str__(self) -> str:
        return f"{self.namespace}.{self._opname}"

    def __repr__(self) -> str:
        return f"<OpOverloadPacket(op='{self}')>"


class _AtenNamespace:
    """`kiln.ops.aten`: the packets, made on first use."""

    def __init__(self):
        self._packets: dict[str, OpOverloadPacket] = {}

    def __getattr__(self, opname: str) -> OpOverloadPacket:
        if opname.startswith("__"):
            raise AttributeError(opname)
        packet = self._packets.get(opname)
        if packet is None:
            fn = getattr(kiln, opname, None)
            if opname.startswith("_") or not callable(fn) or isinstance(fn, type):
                raise AttributeError(f"'_OpNamespace' 'aten' object has no attribute "
                                     f"'{opname}' (kiln has no ATen operator of that name)")
            packet = _packet("aten", opname)
            _add(packet, "default", None, fn)
        return packet

    def __repr__(self) -> str:
        return "<module 'kiln.ops.aten'>"


aten = _AtenNamespace()
_KILN_PACKETS: dict[str, OpOverloadPacket] = {}


def _packet(namespace: str, opname: str) -> OpOverloadPacket:
    table = aten._packets if namespace == "aten" else _KILN_PACKETS
    if opname not in table:
        table[opname] = OpOverloadPacket(namespace, opname)
    return table[opname]


def _add(packet: OpOverloadPacket, overload: str, prim_name: str | None,
         aten_fn: Callable | None) -> OpOverload:
    op = OpOverload(packet, overload, PRIMITIVES[prim_name] if prim_name else None, aten_fn)
    packet._overloads[overload] = op
    return op


# ----------------------------------------------------------------------------- calls

_ATTRS: dict = {}


def _attr_names(prim) -> frozenset:
    """The keyword attributes the primitive takes (its rule's parameters after the inputs')."""
    names = _ATTRS.get(prim)
    if names is None:
        params = list(inspect.signature(prim.infer).parameters.values())[2:]
        names = frozenset(p.name for p in params if p.kind is not p.VAR_KEYWORD)
        _ATTRS[prim] = names
    return names


def _is_primitive_call(prim, args: tuple, kwargs: dict) -> bool:
    names = _attr_names(prim)
    if set(kwargs) - {"device"} != names:
        return False
    if names:
        return prim.arity is None or len(args) == prim.arity
    return len(args) == prim.arity and all(isinstance(a, Tensor) for a in args)


def _binds(fn: Callable, args: tuple, kwargs: dict) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _dims(dim) -> list:
    return [dim] if isinstance(dim, int) else list(dim)


def _to_copy(x, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False,
             memory_format=None):
    return x.to(device=device if device is not None else x.device,
                dtype=dtype if dtype is not None else x.dtype, copy=True)


def _slice(x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def _unique2(self, sorted=True, return_inverse=False, return_counts=False):
    """ATen's unique: (values, inverse, counts), the last two empty unless asked for."""
    values, inverse, counts = kiln.unique(self, sorted, True, True)
    none = kiln.empty(0, dtype=kiln.int64, device=self.device)
    return values, inverse if return_inverse else none, counts if return_counts else none


def _full(size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    return kiln.full(tuple(size), fill_value, dtype=dtype, device=device)


def _arange(start, end=None, step=1, dtype=None, layout=None, device=None, pin_memory=None):
    if end is None:
        return kiln.arange(start, dtype=dtype, device=device)
    return kiln.arange(start, end, step, dtype=dtype, device=device)


def _rand(size, generator=None, dtype=None, layout=None, device=None, pin_memory=None):
    return kiln.rand(*size, generator=generator, dtype=dtype, device=device)


# ATen overloads kiln can call with ATen's arguments: "op.overload" -> (the primitive that it
# names in a mode, or None; the function with ATen's convention)
def _binary(op, alpha=False):
    fn = getattr(kiln, op)
    if alpha:
        return lambda self, other, alpha=1: fn(self, other, alpha=alpha)
    return lambda self, other: fn(self, other)


ATEN: dict[str, tuple] = {
    "add.Tensor": ("add", _binary("add", True)), "add.Scalar": ("add", _binary("add", True)),
    "sub.Tensor": ("sub", _binary("sub", True)), "sub.Scalar": ("sub", _binary("sub", True)),
    "mul.Tensor": ("mul", _binary("mul")), "mul.Scalar": ("mul", _binary("mul")),
    "div.Tensor": ("div", _binary("div")), "div.Scalar": ("div", _binary("div")),
    "div.Tensor_mode": (None, lambda self, other, *, rounding_mode=None:
                        kiln.div(self, other, rounding_mode=rounding_mode)),
    "pow.Tensor_Tensor": ("pow", _binary("pow")), "pow.Tensor_Scalar": ("pow", _binary("pow")),
    "pow.Scalar": ("pow", _binary("pow")),
    "remainder.Tensor": ("mod", _binary("remainder")),
    "remainder.Scalar": ("mod", _binary("remainder")),
    "floor_divide.default": ("floordiv", _binary("floor_divide")),
    "floor_divide.Scalar": ("floordiv", _binary("floor_divide")),
    "where.self": ("where", lambda condition, self, other: kiln.where(condition, self, other)),
    "mm.default": ("matmul", lambda self, mat2: kiln.mm(self, mat2)),
    "bmm.default": ("matmul", lambda self, mat2: kiln.bmm(self, mat2)),
    "addmm.default": (None, lambda self, mat1, mat2, *, beta=1, alpha=1:
                      kiln.addmm(self, mat1, mat2, beta=beta, alpha=alpha)),
    "t.default": (None, lambda self: kiln.t(self)),
    "detach.default": (None, lambda self: self.detach()),
    "clone.default": ("cast", lambda self, *, memory_format=None:
                      kiln.clone(self, memory_format=memory_format)),
    "_to_copy.default": ("cast", _to_copy),
    "sum.default": ("sum", lambda self, *, dtype=None: kiln.sum(self, dtype=dtype)),
    "sum.dim_IntList": ("sum", lambda self, dim, keepdim=False, *, dtype=None:
                        kiln.sum(self, _dims(dim), keepdim, dtype=dtype)),
    "mean.default": (None, lambda self, *, dtype=None: kiln.mean(self, dtype=dtype)),
    "mean.dim": (None, lambda self, dim, keepdim=False, *, dtype=None:
                 kiln.mean(self, _dims(dim), keepdim, dtype=dtype)),
    "amax.default": ("max", lambda self, dim=(), keepdim=False:
                     kiln.amax(self, _dims(dim) if _dims(dim) else None, keepdim)),
    "prod.default": ("prod", lambda self, *, dtype=None: kiln.prod(self, dtype=dtype)),
    "prod.dim_int": ("prod", lambda self, dim, keepdim=False, *, dtype=None:
                     kiln.prod(self, dim, keepdim, dtype=dtype)),
    "argmax.default": ("argmax", lambda self, dim=None, keepdim=False:
                       kiln.argmax(self, dim, keepdim)),
    "cumsum.default": ("cumsum", lambda self, dim, *, dtype=None:
                       kiln.cumsum(self, dim, dtype=dtype)),
    "_softmax.default": (None, lambda self, dim, half_to_float:
                         kiln.softmax(self, dim, dtype=kiln.float32 if half_to_float else None)),
    "view.default": ("reshape", lambda self, size: self.view(list(size))),
    "_unsafe_view.default": (None, lambda self, size: self.reshape(list(size))),
    "permute.default": ("permute", lambda self, dims: self.permute(list(dims))),
    "expand.default": ("expand", lambda self, size, *, implicit=False: self.expand(list(size))),
    "slice.Tensor": ("slice", _slice),
    "flip.default": ("flip", lambda self, dims: kiln.flip(self, list(dims))),
    "as_strided.default": ("as_strided", lambda self, size, stride, storage_offset=None:
                           kiln.as_strided(self, size, stride, storage_offset)),
    "unfold.default": ("unfold_dim", lambda self, dimension, size, step:
                       self.unfold(dimension, size, step)),
    "constant_pad_nd.default": ("pad", lambda self, pad, value=0:
                                kiln.nn.functional.pad(self, list(pad), value=value)),
    "cat.default": ("cat", lambda tensors, dim=0: kiln.cat(list(tensors), dim)),
    "index_add.default": ("index_add", lambda self, dim, index, source, *, alpha=1:
                          kiln.index_add(self, dim, index, source, alpha=alpha)),
    "index_put.default": ("index_put", lambda self, indices, values, accumulate=False:
                          kiln.index_put(self, tuple(indices), values, accumulate)),
    "full.default": ("full", _full),
    "_unique2.default": (None, _unique2),
    "arange.default": (None, _arange),
    "arange.start_step": ("arange", _arange),
    "rand.default": ("rand", _rand),
    "ones_like.default": (None, lambda self, *, dtype=None, layout=None, device=None,
                          pin_memory=None, memory_format=None:
                          kiln.ones_like(self, dtype=dtype, device=device)),
    "zeros_like.default": (None, lambda self, *, dtype=None, layout=None, device=None,
                           pin_memory=None, memory_format=None:
                           kiln.zeros_like(self, dtype=dtype, device=device)),
}
# ops whose ATen name is kiln's and whose only overload here is `default`, one tensor in
_SAME_DEFAULT = """neg abs sign relu exp log log1p expm1 sqrt sin cos tanh sigmoid erf floor ceil
trunc round bitwise_not atan asin asinh acosh atanh lgamma digamma erfc erfinv i0 signbit atan2
maximum minimum nextafter gcd lcm""".split()
# comparisons and bitwise ops: `.Tensor` with a tensor second operand, `.Scalar` with a number
_TENSOR_OR_SCALAR = "eq ne lt le gt ge bitwise_and bitwise_or bitwise_xor copysign".split()
for _name in _SAME_DEFAULT:
    _fn = getattr(kiln, _name)
    ATEN[f"{_name}.default"] = (_name, lambda *a, _fn=_fn: _fn(*a))
for _name in _TENSOR_OR_SCALAR:
    ATEN[f"{_name}.Tensor"] = ATEN[f"{_name}.Scalar"] = (_name, _binary(_name))



def _on_numbers(name: str, overload: str, fn: Callable) -> Callable:
    """ATen's Python-number overloads (`aten.add.default(2, 3.5)`, `aten.floordiv.int`):
    Scalar, int or float operands only, as their schemas, with Python's arithmetic."""
    kind = {"int": int, "float": (int, float)}.get(overload, (int, float, complex, bool))

    def call(*args):
        for a in args:
            if isinstance(a, bool) and overload != "default" or not isinstance(a, kind):
                wanted = "number" if overload == "default" else overload
                raise RuntimeError(f"aten::{name}.{overload}: expected a value of type "
                                   f"'{wanted}', got {type(a).__name__} ({a!r})")
        return fn(*args)
    return call


_NUMBER_OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
               "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
               "floordiv": lambda a, b: a // b, "remainder": lambda a, b: a % b,
               "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
               "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
               "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}
for _name, _fn in _NUMBER_OPS.items():
    for _overload in ("default", "int", "float"):
        ATEN[f"{_name}.{_overload}"] = (None, _on_numbers(_name, _overload, _fn))
for _overload in ("int", "float"):
    ATEN[f"neg.{_overload}"] = (None, _on_numbers("neg", _overload, lambda a: -a))

for _key, (_prim, _fn) in ATEN.items():
    _op, _overload = _key.split(".")
    _add(_packet("aten", _op), _overload, _prim, _fn)


# ----------------------------------------------------------------------------- naming

def _aten(key: str) -> OpOverload:
    op, overload = key.split(".")
    return aten._packets[op]._overloads[overload]


def _kiln_default(prim) -> OpOverload:
    packet = _packet("kiln", prim.name)
    return packet._overloads.get("default") or _add(packet, "default", prim.name, None)


def _second_is_tensor(args: tuple) -> bool:
    return len(args) > 1 and isinstance(args[1], Tensor)


def _all_axes(args: tuple, attrs: dict) -> bool:
    return not attrs.get("keepdim") and len(attrs.get("axes", ())) == args[0].dim()


def _name_matmul(args, attrs):
    ranks = (args[0].dim(), args[1].dim())
    return "mm.default" if ranks == (2, 2) else "bmm.default" if ranks == (3, 3) else None


def _name_pow(args, attrs):
    if not isinstance(args[0], Tensor):
        return "pow.Scalar"
    return "pow.Tensor_Tensor" if _second_is_tensor(args) else "pow.Tensor_Scalar"


def _name_prod(args, attrs):
    if _all_axes(args, attrs):
        return "prod.default"
    return "prod.dim_int" if len(attrs["axes"]) == 1 else None


# primitive -> its ATen overload's key, or a function of (args, attrs) giving it (None: none)
_NAMES: dict = {
    "add": "add.Tensor", "sub": "sub.Tensor", "mul": "mul.Tensor", "div": "div.Tensor",
    "where": "where.self", "max": "amax.default",
    "argmax": "argmax.default", "cumsum": "cumsum.default",
    "cast": lambda args, attrs: "clone.default" if attrs["dtype"] is args[0].dtype
    else "_to_copy.default", "reshape": "view.default",
    "permute": "permute.default", "expand": "expand.default", "slice": "slice.Tensor",
    "flip": "flip.default", "as_strided": "as_strided.default", "unfold_dim": "unfold.default",
    "pad": "constant_pad_nd.default", "cat": "cat.default", "index_add": "index_add.default",
    "index_put": "index_put.default", "full": "full.default", "arange": "arange.start_step",
    "rand": "rand.default",
    "sum": lambda args, attrs: "sum.default" if _all_axes(args, attrs) else "sum.dim_IntList",
    "mod": lambda args, attrs: "remainder.Tensor" if _second_is_tensor(args)
    else "remainder.Scalar",
    "floordiv": lambda args, attrs: "floor_divide.default" if _second_is_tensor(args)
    else "floor_divide.Scalar",
    "matmul": _name_matmul, "pow": _name_pow, "prod": _name_prod,
}
for _name in _SAME_DEFAULT:
    _NAMES[_name] = f"{_name}.default"
for _name in _TENSOR_OR_SCALAR:
    _NAMES[_name] = (lambda args, attrs, _n=_name:
                     f"{_n}.Tensor" if _second_is_tensor(args) else f"{_n}.Scalar")


def _keepdim(keepdim: bool) -> list:
    return [True] if keepdim else []      # torch's schema default, left out as torch does


def _is_float(t) -> bool:
    return isinstance(t, Tensor) and t.dtype.is_floating_point


# primitive -> (args, attrs) -> ATen's arguments for the overload `overload_of` names, or None
# (the primitive's own attributes are handed as keywords). Only where ATen's function computes
# exactly the primitive and refuses nothing the primitive takes (reductions of floats only, as
# kiln's int sums widen first; no argmax of bools, which max(dim) of bools runs), so
# `func(*args, **kwargs)` in a handler gives its result.
_ARGUMENTS: dict = {
    "reshape": lambda args, attrs: (args[0], list(attrs["shape"]))
    if args[0]._data.flags.c_contiguous else None,     # (else a copy: no view in ATen's sense)
    "permute": lambda args, attrs: (args[0], list(attrs["perm"])),
    "expand": lambda args, attrs: (args[0], list(attrs["shape"])),
    "flip": lambda args, attrs: (args[0], list(attrs["axes"]))
    if args[0].dtype not in _LIMITED_UNSIGNED else None,      # (kiln.flip refuses some)
    "cat": lambda args, attrs: (list(args), attrs["axis"]),
    "cumsum": lambda args, attrs: (args[0], attrs["axis"]) if _is_float(args[0]) else None,
    "argmax": lambda args, attrs: (args[0], attrs["axis"], *_keepdim(attrs["keepdim"]))
    if attrs["axis"] is not None and args[0].dtype is not dt.bool_ else None,  # max(dim) of bools

    "max": lambda args, attrs: (args[0], list(attrs["axes"]), *_keepdim(attrs["keepdim"]))
    if _is_float(args[0]) else None,
    "sum": lambda args, attrs: None if not _is_float(args[0]) or _all_axes(args, attrs)
    else (args[0], list(attrs["axes"]), *_keepdim(attrs["keepdim"])),
}


def aten_arguments(prim, args: tuple, attrs: dict) -> tuple:
    """(args, kwargs) a mode or a subclass's `__torch_dispatch__` is handed for
    `prim(*args, **attrs)`: ATen's positional arguments where they compute the same (`aten.
    view.default(x, [3, 2])`, `aten.sum.dim_IntList(x, [0])`), else the primitive's inputs
    and its attributes as keywords, which the OpOverload runs as that primitive."""
    translate = _ARGUMENTS.get(prim.name)
    aten_args = translate(args, attrs) if translate is not None else None
    return (args, dict(attrs)) if aten_args is None else (tuple(aten_args), {})


def overload_of(prim, args: tuple, attrs: dict) -> OpOverload:
    """The OpOverload a dispatch mode is handed for `prim(*args, **attrs)`."""
    key = _NAMES.get(prim.name)
    if callable(key):
        key = key(args, attrs)
    return _aten(key) if key is not None else _kiln_default(prim)


# ATen ops a Tensor method hands a wrapper subclass's __torch_dispatch__ (dispatch_subclass):
# their ATen convention is the method's (`aten.add_.Tensor(x, y, alpha=2)` is x.add_(y, alpha=2))
_METHOD_OPS = {"_local_scalar_dense.default": "item", "new_empty.default": "new_empty",
               "new_zeros.default": "new_zeros", "new_ones.default": "new_ones",
               "new_full.default": "new_full"}
_LIKE_OPS = {"empty_like.default": kiln.empty_like, "full_like.default": kiln.full_like}


def aten_method_op(key: str) -> OpOverload:
    """The OpOverload named `key` ("copy_.default", "add_.Tensor"), made on first use for the
    in-place ops and the others whose ATen arguments are the Tensor method's."""
    op, overload = key.split(".")
    packet = _packet("aten", op)
    found = packet._overloads.get(overload)
    if found is not None:
        return found
    if key in _LIKE_OPS:
        return _add(packet, overload, None, _LIKE_OPS[key])
    method = _METHOD_OPS.get(key, op)

    def call_method(self, *args, **kwargs):
        return getattr(self, method)(*args, **kwargs)
    call_method.__name__ = method
    return _add(packet, overload, None, call_method)


dispatch_mode.OVERLOAD_OF[0] = overload_of
dispatch_mode.ARGUMENTS_OF[0] = aten_arguments
dispatch_subclass.ATEN[0] = aten_method_op
