"""`kiln.library` (torch.library): the user's own operators, written in Python.

    @kiln.library.custom_op("mylib::numpy_sin", mutates_args=())
    def numpy_sin(x: kiln.Tensor) -> kiln.Tensor:
        return kiln.from_numpy(np.sin(x.numpy()))
    numpy_sin.register_autograd(backward, setup_context=setup_context)
    numpy_sin.register_fake(lambda x: kiln.empty_like(x))

An operator is a name in a namespace (`kiln.ops.mylib.numpy_sin`, as torch.ops), a kernel per
device type (or one for all), an optional autograd formula and an optional fake kernel that
says the output's shape and dtype from the inputs' (run for meta tensors). `Library(ns,
"DEF").define(schema)` + `.impl(name, fn)` is the older spelling of the same.

Calling an operator runs its kernel on the caller's tensors with autograd off; when an input
needs a gradient its output gets a node (`GeneratedBackwardFor_<ns>_<name>_defaultBackward`,
as PyTorch's) whose backward calls the registered formula, or says none was registered. An
operator declared with `define` and no formula is differentiated through its kernel's own
ops (PyTorch's composite kernels).
Under `@kiln.compile` an operator is a graph break: its kernel is Python the compiled program
cannot contain; the function runs eagerly and `kiln.compiler.explain` names the operator.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import typing
from typing import Callable, Iterable

from kiln.tracer import autograd
from kiln.tracer.custom_function import Function
from kiln.tracer.tensor import STATE, Tensor

__all__ = ["custom_op", "CustomOpDef", "Library", "define", "impl", "register_fake",
           "register_autograd", "register_kernel", "opcheck", "infer_schema", "get_ctx"]

_OPS: dict[str, "CustomOpDef"] = {}          # "ns::name" -> the operator


def _split(qualname: str, what: str) -> tuple[str, str]:
    ns, sep, name = qualname.partition("::")
    if not sep or not ns.isidentifier() or not name.isidentifier():
        raise ValueError(f"{what}: expected a qualified name 'namespace::name', got "
                         f"{qualname!r}")
    return ns, name


# ---------------------------------------------------------------------------------- schemas

_TENSOR_HINTS = ("Tensor", "Optional[Tensor]", "Sequence[Tensor]", "List[Tensor]")


def _hint_name(hint) -> str:
    if hint is Tensor:
        return "Tensor"
    if hint in (int, float, bool, str):
        return hint.__name__
    if hint is type(None) or hint is None:
        return "()"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_hint_name(inner[0])}?"
    if origin in (list, tuple, collections.abc.Sequence):
        return f"{_hint_name(args[0]) if args else 'Any'}[]"
    return getattr(hint, "__name__", str(hint))


def infer_schema(fn: Callable, *, op_name: str | None = None,
                 mutates_args: Iterable[str] | str = ()) -> str:
    """The schema string of a Python function from its type hints (torch.library.infer_schema):
    every parameter needs one, as PyTorch requires; mutated arguments are marked `(a!)`."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    mutated = set(_parameter_names(fn)) if mutates_args == "unknown" else set(mutates_args)
    parts = []
    for p in sig.parameters.values():
        if p.name not in hints:
            raise ValueError(f"infer_schema(func): Parameter {p.name} must have a type "
                             f"annotation. Got func with signature {sig})")
        kind = _hint_name(hints[p.name])
        if p.name in mutated:
            kind = kind.replace("Tensor", "Tensor(a!)", 1)
        default = "" if p.default is inspect.Parameter.empty else f"={p.default!r}"
        parts.append(f"{kind} {p.name}{default}")
    if "return" not in hints:
        raise ValueError(f"infer_schema(func): No return type annotation was provided. Got "
                         f"func with signature {sig})")
    ret = _hint_name(hints["return"])
    return f"{op_name or ''}({', '.join(parts)}) -> {ret}"


def _parameter_names(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _schema_parameters(schema: str, what: str) -> tuple[str, list[str], list[str]]:
    """(name, parameter names, mutated names) of a schema like
    `foo(Tensor(a!) x, float alpha=1.0, *, bool flag=False) -> Tensor`."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)?\s*\((.*)\)\s*->\s*(.+?)\s*", schema)
    if m is None:
        raise ValueError(f"{what}: could not parse the schema {schema!r}; expected "
                         "'name(Type arg, ...) -> ReturnType'")
    names, mutated = [], []
    for part in filter(None, (p.strip() for p in m.group(2).split(","))):
        if part == "*":
            continue
        words = part.split("=")[0].split()
        if len(words) != 2:
            raise ValueError(f"{what}: could not parse the argument {part!r} of {schema!r}")
        names.append(words[1])
        if "!" in words[0]:
            mutated.append(words[1])
    return m.group(1) or "", names, mutated


# ---------------------------------------------------------------------------------- operators

class _Namespace:
    """`kiln.ops.<ns>`: the operators defined in one namespace."""

    def __init__(self, ns: str):
        self._ns = ns

    def __getattr__(self, name: str) -> "CustomOpDef":
        op = _OPS.get(f"{self._ns}::{name}")
        if op is None:
            raise AttributeError(f"'_OpNamespace' '{self._ns}' object has no attribute "
                                 f"'{name}'")
        return op


def namespace(ns: str) -> _Namespace:
    """`kiln.ops.<ns>` for a namespace where an operator was defined."""
    if not any(q.startswith(ns + "::") for q in _OPS):
        raise AttributeError(f"module 'kiln.ops' has no attribute '{ns}' (no operator was "
                             f"defined in namespace {ns!r}: kiln.library.custom_op defines one)")
    return _Namespace(ns)


class CustomOpDef:
    """One operator: its kernels, autograd formula and fake kernel (torch's CustomOpDef)."""

    def __init__(self, qualname: str, parameters: list[str], mutated: list[str],
                 kernel: Callable | None, schema: str):
        self._namespace, self._name = _split(qualname, "custom_op")
        self._qualname = qualname
        self._parameters, self._mutated, self._schema = parameters, mutated, schema
        self._kernels: dict[str | None, Callable] = {}
        self._signature: inspect.Signature | None = None      # the first kernel's
        if kernel is not None:
            self.register_kernel(None, kernel)
        self._fake: Callable | None = None
        self._backward: Callable | None = None
        self._setup_context: Callable | None = None
        # defined by `define` (Library): without a formula, the kernel's own kiln ops are
        # differentiated, as PyTorch does for a composite kernel
        self._composite = False
        self._function = self._make_function()

    # torch.ops.ns.name.default is the operator itself
    @property
    def default(self) -> "CustomOpDef":
        return self

    def __repr__(self) -> str:
        return f"<CustomOpDef({self._qualname})>"

    # ------------------------------------------------------------------ registration
    def register_kernel(self, device_types, fn: Callable | None = None):
        """The kernel for `device_types` ("cpu", "cuda", or a list); as a decorator too."""
        def register(fn):
            types = [device_types] if isinstance(device_types, str) or device_types is None \
                else list(device_types)
            for t in types:
                self._kernels[t] = fn
            if self._signature is None:     # bound once per call: read once here
                self._signature = inspect.signature(fn)
            return fn
        return register if fn is None else register(fn)

    def register_fake(self, fn: Callable | None = None, /, *, _stacklevel: int = 1):
        """The kernel that makes outputs of the right shape, dtype and device without
        computing them (run when the inputs are meta tensors)."""
        def register(fn):
            self._fake = fn
            return fn
        return register if fn is None else register(fn)

    def register_autograd(self, backward: Callable, /, *,
                          setup_context: Callable | None = None) -> None:
        """`backward(ctx, *grads)` returns one gradient per input (None for non-tensors);
        `setup_context(ctx, inputs, output)` saves what backward needs."""
        if self._mutated:
            raise RuntimeError(f"register_autograd: {self._qualname} mutates its inputs "
                               f"({', '.join(self._mutated)}); PyTorch supports autograd "
                               "only for functional operators")
        self._backward, self._setup_context = backward, setup_context

    # ------------------------------------------------------------------ calling
    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        """All the arguments in parameter order (defaults filled in), as setup_context sees
        them."""
        if self._signature is not None:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self._qualname}: {e}") from None
            bound.apply_defaults()
            return tuple(bound.arguments.values())
        if kwargs:
            extra = [k for k in kwargs if k not in self._parameters]
            if extra:
                raise TypeError(f"{self._qualname}: unexpected keyword argument {extra[0]!r}")
            args = args + tuple(kwargs[n] for n in self._parameters[len(args):] if n in kwargs)
        return args

    def _kernel_for(self, args: tuple) -> Callable:
        device = next((a.device.type for a in _tensors(args)), "cpu")
        if device == "meta":
            if self._fake is None:
                raise RuntimeError(f"{self._qualname}: there was no fake impl registered for "
                                   "it; meta tensors need one: use register_fake")
            return self._fake
        kernel = self._kernels.get(device) or self._kernels.get(None)
        if kernel is None:
            raise NotImplementedError(f"{self._qualname}: no kernel for device type "
                                      f"{device!r} (kernels for: "
                                      f"{sorted(str(k) for k in self._kernels)})")
        return kernel

    def __call__(self, *args, **kwargs):
        if STATE.tracer is not None:
            STATE.tracer.graph_break(f"custom op {self._qualname}: its kernel is Python the "
                                     "compiled program cannot contain")
        inputs = self._bind(args, kwargs)
        if self._composite and self._backward is None:
            return self._kernel_for(inputs)(*inputs)      # its own ops carry the gradient
        if not (STATE.grad_enabled and any(t.requires_grad for t in _tensors(inputs))):
            with autograd.no_grad():
                return self._kernel_for(inputs)(*inputs)
        return self._function.apply(*inputs)

    def _make_function(self) -> type:
        op = self

        def forward(*inputs):
            return op._kernel_for(inputs)(*inputs)

        def setup_context(ctx, inputs, output):
            if op._setup_context is not None:
                op._setup_context(ctx, inputs, output)

        def backward(ctx, *grads):
            if op._backward is None:
                raise RuntimeError(f"Trying to backward through {op._namespace}."
                                   f"{op._name}.default but no autograd formula was "
                                   "registered. Please use register_autograd to add one.")
            got = op._backward(ctx, *grads)
            got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
            n = len(op._parameters) or len(ctx.needs_input_grad)
            if len(got) > n:
                raise RuntimeError(f"{op._qualname}: the backward registered with "
                                   f"register_autograd returned {len(got)} gradients for "
                                   f"{n} inputs")
            return got + (None,) * (n - len(got))

        name = f"GeneratedBackwardFor_{self._namespace}_{self._name}_default"
        return type(name, (Function,), {"forward": staticmethod(forward),
                                        "setup_context": staticmethod(setup_context),
                                        "backward": staticmethod(backward)})


def _tensors(values) -> list[Tensor]:
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(_tensors(v))
    return out


def custom_op(name: str, fn: Callable | None = None, /, *, mutates_args, device_types=None,
              schema: str | None = None, tags=None):
    """Define operator `name` ("namespace::name") with `fn` as its kernel (for
    `device_types`, or every device); as a decorator too. `mutates_args` names the arguments
    the kernel writes into (required, as in PyTorch: () for none, "unknown" for any)."""
    _split(name, "custom_op")

    def define_op(fn):
        if name in _OPS:
            raise RuntimeError(f"custom_op: {name} is already defined (an operator's name is "
                               "global to the process)")
        text = schema if schema is not None else infer_schema(fn, mutates_args=mutates_args)
        _, params, mutated = _schema_parameters(text, "custom_op")
        if mutates_args == "unknown":
            mutated = list(params)
        else:
            unknown = [a for a in mutates_args if a not in params]
            if unknown:
                raise ValueError(f"custom_op {name}: mutates_args names {unknown}, which are "
                                 f"not parameters of the function ({params})")
        op = CustomOpDef(name, params, mutated, None, text)
        op.register_kernel(device_types, fn)
        _OPS[name] = op
        return op
    return define_op if fn is None else define_op(fn)


def _op(qualname, what: str) -> CustomOpDef:
    if isinstance(qualname, CustomOpDef):
        return qualname
    _split(qualname, what)
    op = _OPS.get(qualname)
    if op is None:
        raise RuntimeError(f"{what}: operator {qualname} was not defined (define it with "
                           "kiln.library.custom_op or Library.define first)")
    return op


def register_fake(op, fn: Callable | None = None, /, *, lib=None, _stacklevel: int = 1):
    return _op(op, "register_fake").register_fake(fn)


def register_autograd(op, backward: Callable, /, *, setup_context: Callable | None = None,
                      lib=None) -> None:
    _op(op, "register_autograd").register_autograd(backward, setup_context=setup_context)


def register_kernel(op, device_types, fn: Callable | None = None, /, *, lib=None):
    return _op(op, "register_kernel").register_kernel(device_types, fn)


_DEVICE_OF_KEY = {"CPU": "cpu", "CUDA": "cuda", "Meta": "meta", "": None,
                  "CompositeExplicitAutograd": None, "CompositeImplicitAutograd": None}


def define(qualname: str, schema: str, *, lib=None, tags=()) -> None:
    """Declare operator `qualname` with `schema` ("(Tensor x, float a) -> Tensor"); its
    kernels come with `impl`."""
    _, params, mutated = _schema_parameters(schema, "define")
    if qualname in _OPS:
        raise RuntimeError(f"define: {qualname} is already defined")
    op = CustomOpDef(qualname, params, mutated, None, schema)
    op._composite = True
    _OPS[qualname] = op


def impl(qualname, types, func: Callable | None = None, *, lib=None):
    """The kernel of a defined operator for `types` ("cpu", "cuda", a dispatch key such as
    "CPU" or "CompositeExplicitAutograd", or a list of them); as a decorator too. The older
    form `@impl(lib, "name", "CPU")` (a Library, the operator's name in it, a dispatch key) is
    a decorator of the same."""
    if isinstance(qualname, Library):
        library, name, key = qualname, types, func
        return impl(f"{library.ns}::{name}", key or "CompositeImplicitAutograd")
    op = _op(qualname, "impl")
    keys = [types] if isinstance(types, str) else list(types)

    def register(fn):
        for key in keys:
            device = _DEVICE_OF_KEY.get(key, key.lower() if isinstance(key, str) else key)
            if device == "meta":
                op.register_fake(fn)
            else:
                op.register_kernel(device, fn)
        return fn
    return register if func is None else register(func)


class Library:
    """`Library("mylib", "DEF")`: define operators in a namespace (`lib.define(schema)`) and
    give them kernels (`lib.impl(name, fn, dispatch_key)`); "IMPL" and "FRAGMENT" add kernels
    or definitions to a namespace defined elsewhere."""

    def __init__(self, ns: str, kind: str, dispatch_key: str = ""):
        if kind not in ("DEF", "IMPL", "FRAGMENT"):
            raise ValueError(f"Library: unsupported kind {kind!r}; expected 'DEF', 'IMPL' or "
                             "'FRAGMENT'")
        if not ns.isidentifier():
            raise ValueError(f"Library: {ns!r} is not a valid namespace")
        self.ns, self.kind, self.dispatch_key = ns, kind, dispatch_key
        self._defined: list[str] = []

    def define(self, schema: str, alias_analysis: str = "", *, tags=()) -> str:
        if self.kind == "IMPL":
            raise RuntimeError("Library.define: a Library of kind 'IMPL' cannot define "
                               "operators; use 'DEF' or 'FRAGMENT'")
        name, _, _ = _schema_parameters(schema, "Library.define")
        if not name:
            raise ValueError(f"Library.define: the schema {schema!r} has no operator name")
        define(f"{self.ns}::{name}", schema[schema.index("("):])
        self._defined.append(f"{self.ns}::{name}")
        return name

    def impl(self, op_name, fn: Callable, dispatch_key: str = "", *,
             with_keyset: bool = False) -> None:
        name = op_name if isinstance(op_name, str) else op_name._name
        qualname = name if "::" in name else f"{self.ns}::{name.split('.')[0]}"
        impl(qualname, dispatch_key or self.dispatch_key or "CompositeExplicitAutograd", fn)

    def _destroy(self) -> None:
        for q in self._defined:
            _OPS.pop(q, None)
        self._defined = []


def get_ctx():
    raise RuntimeError("kiln.library.get_ctx: kiln's fake kernels run on meta tensors with "
                       "concrete shapes; there are no dynamic sizes to allocate")


def opcheck(op, args: tuple, kwargs: dict | None = None, *, test_utils=None,
            raise_exception: bool = True, atol=None, rtol=None) -> dict:
    """Check an operator's registrations on one input (torch.library.opcheck): the fake
    kernel gives the real kernel's shapes and dtypes, and the autograd formula matches finite
    differences (float64 copies of the inputs). Returns {test: "SUCCESS" or the error}."""
    import kiln
    op = _op(op, "opcheck")
    kwargs = kwargs or {}
    results = {}

    def run(test, check):
        try:
            check()
            results[test] = "SUCCESS"
        except Exception as e:       # noqa: BLE001  (collected; raised below if asked)
            if raise_exception:
                raise
            results[test] = e

    def fake_matches():
        if op._fake is None:
            return
        real = op(*args, **kwargs)
        metas = [a.to("meta") if isinstance(a, Tensor) else a for a in args]
        fake = op._fake(*metas, **kwargs)
        for r, f in zip(_tensors([real]), _tensors([fake])):
            if tuple(r.shape) != tuple(f.shape) or r.dtype != f.dtype:
                raise RuntimeError(f"opcheck {op._qualname}: the fake kernel gives shape "
                                   f"{list(f.shape)} {f.dtype}, the kernel {list(r.shape)} "
                                   f"{r.dtype}")

    def autograd_matches():
        if op._backward is None:
            return
        inputs = tuple(a.detach().double().requires_grad_(a.dtype.is_floating_point)
                       if isinstance(a, Tensor) else a for a in args)
        if not any(isinstance(a, Tensor) and a.requires_grad for a in inputs):
            return
        kiln.autograd.gradcheck(lambda *xs: op(*xs, **kwargs), inputs,
                                atol=atol or 1e-5, rtol=rtol or 1e-3)

    run("test_faketensor", fake_matches)
    run("test_aot_dispatch_dynamic", autograd_matches)
    return results
