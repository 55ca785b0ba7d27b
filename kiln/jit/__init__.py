"""`kiln.jit`: torch.jit's entry points, built on kiln.export instead of TorchScript.

`script(module_or_fn)` and `trace(module_or_fn, example_inputs)` return a `ScriptModule` (or a
`ScriptFunction`) that runs the original eagerly, sharing its parameters, so it trains and
evaluates as the original does. `save(path)` exports it (`kiln.export.export`: the module traced
in eval mode into a graph and its weights) at the example inputs (trace's, or the inputs of the
scripted object's first call), with the leading dimension of the inputs left free where the
program allows; `kiln.jit.load(path)` reads such a file back into a callable that needs no
Python class and runs no code from the file (kiln's checkpoint layout: JSON and tensors, never a
pickle). `trace` exports at once and checks the program's outputs against the eager ones.

What this is not: TorchScript. There is no TorchScript IR or compiler (`script` does not parse
Python; data-dependent control flow is whatever the example call took, and code the exporter
cannot capture makes `save` raise, naming the line), and the files are kiln's: PyTorch and
libtorch cannot read them, nor can kiln read TorchScript archives.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import inspect
import os
import tempfile
import typing
import warnings
import zipfile
from typing import Callable

import numpy as np

from kiln.export import program as _program
from kiln.export.program import ExportedProgram
from kiln.nn.module import Module
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import flatten, unflatten

from kiln.jit import annotations  # noqa: F401  (torch.jit.annotations)

Final = typing.Final

__all__ = ["Final", "RecursiveScriptModule", "ScriptFunction", "ScriptModule", "TracerWarning",
           "annotations", "export", "fork", "freeze", "ignore", "interface", "is_scripting",
           "is_tracing", "load", "optimize_for_inference", "save", "script", "script_if_tracing",
           "trace", "trace_module", "unused", "wait"]

_TRACING = [False]


def _deprecated(name: str, instead: str = "`torch.compile` or `torch.export`") -> None:
    """torch 2.13 deprecates TorchScript's entry points with this warning; kiln says the same."""
    warnings.warn(f"`torch.jit.{name}` is deprecated. Please switch to {instead}.",
                  DeprecationWarning, stacklevel=3)

_isinstance = builtins.isinstance       # `isinstance` below is torch.jit.isinstance


class TracerWarning(Warning):
    """torch.jit.TracerWarning, for code that filters it."""


_ONEDNN_FUSION = [False]


def enable_onednn_fusion(enabled: bool) -> None:
    """Kept as a setting (torch.jit's oneDNN graph fuser): kiln's compiler fuses CPU ops into
    its own C kernels whatever it says."""
    _ONEDNN_FUSION[0] = bool(enabled)


def onednn_fusion_enabled() -> bool:
    return _ONEDNN_FUSION[0]


def is_scripting() -> bool:
    """False: kiln never compiles Python as TorchScript, so the Python branch always runs."""
    return False


def is_tracing() -> bool:
    """True while kiln.jit traces a module (in `trace`, or exporting one for `save`)."""
    return _TRACING[0]


# ----------------------------------------------------------------------------- decorators
# TorchScript's markers for what its compiler should skip; kiln runs Python as it is

def ignore(drop=False, **kwargs):
    """`@torch.jit.ignore` / `@torch.jit.ignore(drop=True)`: the function, unchanged."""
    if callable(drop):
        return drop
    return lambda fn: fn


def unused(fn):
    return fn


def export(fn):
    return fn


def interface(obj):
    return obj


def script_if_tracing(fn):
    return fn


def _overload_method(fn):       # used by some torchvision-style code
    return fn


def isinstance(obj, target_type) -> bool:  # noqa: A001 (torch.jit.isinstance)
    """torch.jit.isinstance for plain classes and typing containers (List[int], ...)."""
    origin = typing.get_origin(target_type)
    if origin is None:
        return _isinstance(obj, target_type)
    if origin is typing.Union:
        return any(isinstance(obj, t) for t in typing.get_args(target_type))
    if not _isinstance(obj, origin):
        return False
    args = typing.get_args(target_type)
    if origin in (list, set) and args:
        return all(isinstance(v, args[0]) for v in obj)
    if origin is dict and args:
        return all(isinstance(k, args[0]) and isinstance(v, args[1]) for k, v in obj.items())
    if origin is tuple and args:
        return len(obj) == len(args) and all(isinstance(v, t) for v, t in zip(obj, args))
    return True


class _Future:
    """What `fork` returns: the call's result, computed at once (kiln runs it synchronously)."""

    def __init__(self, value):
        self._value = value

    def wait(self):
        return self._value


def fork(fn: Callable, *args, **kwargs) -> _Future:
    return _Future(fn(*args, **kwargs))


def wait(future: _Future):
    return future.wait()


# ----------------------------------------------------------------------------- script / trace

class _Exportable:
    """What ScriptModule and ScriptFunction share: example inputs and exporting at them."""

    def _remember(self, args: tuple, kwargs: dict) -> None:
        # the first call's inputs (held, not copied) are what `save` exports at
        if self._example is None:
            self._example = (args, kwargs)

    def _export(self, what: str) -> ExportedProgram:
        if self._example is None:
            raise RuntimeError(
                f"kiln.jit: cannot {what} {self._name}: kiln saves a scripted module by "
                "exporting it at example inputs, and it has not been called yet. Call it once "
                "(or use kiln.jit.trace(module, example_inputs)) before saving")
        args, kwargs = self._example
        try:
            return _export_program(self._target, args, kwargs)
        except (RuntimeError, ValueError, TypeError) as e:
            raise RuntimeError(f"kiln.jit: cannot {what} {self._name}: kiln saves it by "
                               f"exporting one graph (kiln.export), and the export failed: "
                               f"{e}") from e

    def save(self, f, _extra_files=None) -> None:
        """Write the exported program to a path or binary file (kiln's format, see module
        docstring)."""
        self._export("save").save(f)

    @property
    def code(self) -> str:
        """The exported program's listing (kiln's IR; there is no TorchScript code)."""
        return str(self._export("print"))

    @property
    def graph(self):
        return self._export("print").graph


class ScriptModule(Module, _Exportable):
    """A scripted or traced module: the original, run eagerly, sharing its parameters, buffers
    and submodules (so `state_dict()` keys are the original's); `save` exports it."""

    def __init__(self, original: Module, example=None):
        super().__init__()
        for registry in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            object.__setattr__(self, registry, original.__dict__[registry])
        object.__setattr__(self, "training", original.training)
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "_target", original)
        object.__setattr__(self, "_example", example)
        object.__setattr__(self, "_name", type(original).__name__)

    def forward(self, *args, **kwargs):
        self._remember(args, kwargs)
        return self._original(*args, **kwargs)

    def train(self, mode: bool = True) -> "ScriptModule":
        self._original.train(mode)
        object.__setattr__(self, "training", mode)
        return self

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None:
                raise
            # the original's own attributes and methods (hidden sizes, init_hidden, ...)
            return getattr(original, name)

    def __repr__(self) -> str:
        return f"RecursiveScriptModule(original_name={self._name})"


class ScriptFunction(_Exportable):
    """A scripted or traced function: calls it; `save` exports it at its example inputs."""

    def __init__(self, fn: Callable, example=None, scripted: bool = False):
        self._target, self._example = fn, example
        self._name = getattr(fn, "__name__", type(fn).__name__)
        self.__wrapped__ = fn
        # TorchScript types an unannotated parameter (without a default) as a Tensor and
        # refuses anything else at the call; a scripted function here checks the same
        self._signature, self._inferred_tensors = None, ()
        if scripted:
            try:
                self._signature = inspect.signature(fn)
            except (TypeError, ValueError):     # a builtin: nothing to infer from
                return
            self._inferred_tensors = tuple(
                p.name for p in self._signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.annotation is p.empty and p.default is p.empty)

    def __call__(self, *args, **kwargs):
        if self._inferred_tensors:
            self._check_inferred_tensors(args, kwargs)
        self._remember(args, kwargs)
        return self._target(*args, **kwargs)

    def _check_inferred_tensors(self, args: tuple, kwargs: dict) -> None:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return                              # the call itself raises Python's error
        for name in self._inferred_tensors:
            value = bound.arguments.get(name)
            if not _isinstance(value, Tensor):
                raise RuntimeError(
                    f"{self._name}() Expected a value of type 'Tensor (inferred)' for argument "
                    f"'{name}' but instead found type '{type(value).__name__}'.\nInferred "
                    f"'{name}' to be of type 'Tensor' because it was not annotated with an "
                    "explicit type.")

    def __repr__(self) -> str:
        return f"<kiln.jit.ScriptFunction {self._name}>"


def script(obj, optimize=None, _frames_up: int = 0, _rcb=None, example_inputs=None):
    """torch.jit.script: a ScriptModule (module) or ScriptFunction (function) running `obj`
    eagerly; a class is returned unchanged. `example_inputs` (a list of argument tuples), if
    given, are what `save` exports at; otherwise the first call's inputs are."""
    _deprecated("script")
    if _isinstance(obj, (ScriptModule, ScriptFunction, RecursiveScriptModule)):
        return obj
    if _isinstance(obj, type):
        return obj
    example = None
    if example_inputs:
        first = example_inputs[0]
        example = (tuple(first) if _isinstance(first, (tuple, list)) else (first,), {})
    if _isinstance(obj, Module):
        return ScriptModule(obj, example)
    if callable(obj):
        return ScriptFunction(obj, example, scripted=True)
    raise TypeError(f"kiln.jit.script: expected a Module, a function or a class, got "
                    f"{type(obj).__name__}")


def trace(func, example_inputs=None, optimize=None, check_trace: bool = True,
          check_inputs=None, check_tolerance: float = 1e-5, strict: bool = True,
          _force_outplace: bool = False, _module_class=None, _compilation_unit=None,
          example_kwarg_inputs: dict | None = None, _store_inputs: bool = True):
    """torch.jit.trace: export `func` at `example_inputs` now (raising, naming the line, if it
    is not one graph), check the program's outputs against eager ones within
    `check_tolerance`, and return a ScriptModule/ScriptFunction running `func` eagerly whose
    `save` writes that program (with the weights current at saving)."""
    _deprecated("trace")
    if example_inputs is None and example_kwarg_inputs is None:
        raise ValueError("kiln.jit.trace: example_inputs (a tensor or a tuple of them) is "
                         "needed: tracing runs the module on them")
    args = () if example_inputs is None else _trace_args(example_inputs)
    kwargs = dict(example_kwarg_inputs or {})
    wrapped = ScriptModule(func, (args, kwargs)) if _isinstance(func, Module) else \
        ScriptFunction(func, (args, kwargs))
    program = wrapped._export("trace")
    if check_trace:
        checks = [(args, kwargs)] + [(_trace_args(c), {}) for c in (check_inputs or [])]
        for check_args, check_kwargs in checks:
            _check_outputs(func, program, check_args, check_kwargs, check_tolerance,
                           wrapped._name)
    return wrapped


def _trace_args(example_inputs) -> tuple:
    """The positional arguments trace calls with, as PyTorch reads `example_inputs`: a tensor
    (or a dict) is the one argument; a tuple, list or other iterable holds the arguments."""
    if _isinstance(example_inputs, (Tensor, dict)):
        return (example_inputs,)
    try:
        return tuple(example_inputs)
    except TypeError:
        raise TypeError(f"kiln.jit.trace: example_inputs must be a tensor or a tuple (or list) "
                        f"of the arguments, got {type(example_inputs).__name__}") from None


def trace_module(mod: Module, inputs: dict, **kwargs):
    """torch.jit.trace_module for the `forward` entry (the one kiln exports)."""
    if set(inputs) != {"forward"}:
        raise ValueError(f"kiln.jit.trace_module: kiln traces only 'forward', got "
                         f"{sorted(inputs)}")
    return trace(mod, inputs["forward"], **kwargs)


def freeze(mod, preserved_attrs=None, optimize_numerics: bool = True):
    """torch.jit.freeze: the module, which must be in eval mode, as torch requires."""
    if getattr(mod, "training", False):
        raise RuntimeError("Freezing is currently only implemented for modules in eval mode. "
                           "Please call .eval() on your module before freezing.")
    return mod


def optimize_for_inference(mod, other_methods=None):
    return freeze(mod.eval())


# ----------------------------------------------------------------------------- files

class RecursiveScriptModule:
    """What `kiln.jit.load` returns: the saved program, run by kiln's IR interpreter (NumPy, on
    the CPU; results are CPU tensors) with no Python class of the model needed.

    It is traced in eval mode: `train()`/`eval()` only set the flag. `state_dict()` gives the
    saved weights, `code` the program's listing."""

    def __init__(self, program: ExportedProgram):
        self._program, self.training = program, False

    def __call__(self, *args, **kwargs):
        _, args, kwargs = _on_cpu(None, args, kwargs)     # the program runs on the CPU
        return self._program(*args, **kwargs)

    forward = __call__

    def eval(self) -> "RecursiveScriptModule":
        return self.train(False)

    def train(self, mode: bool = True) -> "RecursiveScriptModule":
        self.training = mode
        return self

    def to(self, *args, **kwargs) -> "RecursiveScriptModule":
        return self                  # the interpreter reads any device's inputs on the CPU

    def state_dict(self) -> dict:
        return dict(self._program.state_dict)

    def parameters(self):
        return iter(self._program.state_dict.values())

    def save(self, f, _extra_files=None) -> None:
        self._program.save(f)

    @property
    def code(self) -> str:
        return str(self._program)

    @property
    def graph(self):
        return self._program.graph

    def __repr__(self) -> str:
        return f"RecursiveScriptModule(kiln program, {len(self._program.input_specs)} inputs)"


def save(m, f, _extra_files=None) -> None:
    """torch.jit.save: write a scripted, traced or loaded module to a path or binary file."""
    _deprecated("save", "`torch.export`")
    if not _isinstance(m, (ScriptModule, ScriptFunction, RecursiveScriptModule)):
        raise TypeError(f"kiln.jit.save: expected the result of kiln.jit.script, trace or load, "
                        f"got {type(m).__name__}; wrap it first: kiln.jit.trace(model, "
                        "example_inputs)")
    m.save(f)


def load(f, map_location=None, _extra_files=None, _restore_shapes: bool = False):
    """torch.jit.load: read what `kiln.jit.save` wrote (a path or binary file). Nothing in the
    file is executed: it holds a graph as JSON and tensors, no pickle. `map_location` is
    accepted and has no effect: the loaded program runs on the CPU.

    Raises:
        CheckpointError: the file is not a saved kiln program (a TorchScript archive written by
            PyTorch included: kiln cannot run TorchScript).
    """
    _deprecated("load", "`torch.export`")
    from kiln.serialization import CheckpointError
    if _is_file_object(f):
        # kiln.export.load reads a path: the bytes go through a temporary file
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "program.kiln")
            with open(path, "wb") as out:
                out.write(f.read())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)     # said once already
                return load(path, map_location)
    name = os.fspath(f)
    if not os.path.exists(name):
        raise ValueError(f"The provided filename {name} does not exist")
    if zipfile.is_zipfile(name):
        raise CheckpointError(f"kiln.jit.load: {name} is a zip archive, probably TorchScript "
                              "written by torch.jit.save; kiln cannot run TorchScript. Save the "
                              "model from kiln (kiln.jit.trace(model, x).save(path)), or load "
                              "its state_dict into the Python model")
    return RecursiveScriptModule(_program.load(name))


# ----------------------------------------------------------------------------- helpers

def _on_cpu(target, args: tuple, kwargs: dict) -> tuple:
    """(target, args, kwargs) on the CPU, where the saved program runs: a module with weights on
    a GPU is exported from a CPU copy (the user's module stays where it is)."""
    leaves, tree = flatten((args, kwargs))
    tensors = list(leaves)
    if _isinstance(target, Module):
        tensors += list(target.parameters()) + list(target.buffers())
    if not any(_isinstance(t, Tensor) and t.device.type == "cuda" for t in tensors):
        return target, args, kwargs
    args, kwargs = unflatten(tree, [t.cpu() if _isinstance(t, Tensor) else t for t in leaves])
    if _isinstance(target, Module):
        target = copy.deepcopy(target).cpu()
    return target, args, kwargs


def _export_program(target, args: tuple, kwargs: dict) -> ExportedProgram:
    """kiln.export of `target` at these inputs (on the CPU); with the inputs' shared leading
    dimension left free (a batch) where the program can follow it, else at their sizes
    exactly."""
    target, args, kwargs = _on_cpu(target, args, kwargs)
    _TRACING[0] = True
    try:
        tensors = [a for a in args if _isinstance(a, Tensor)]
        if (not kwargs and args and len(tensors) == len(args)
                and all(t.dim() >= 1 for t in tensors)
                and len({t.shape[0] for t in tensors}) == 1 and tensors[0].shape[0] >= 2):
            try:
                return _program.export(target, args,
                                       dynamic_shapes=tuple({0: "batch"} for _ in args))
            except ValueError:
                pass            # the program bakes the batch size in: export it fixed
        return _program.export(target, args, example_kwargs=kwargs)
    finally:
        _TRACING[0] = False


@contextlib.contextmanager
def _eval_mode(target):
    """The modules `target` reaches, in eval mode (as the export traced them) for the block."""
    flags = [(m, m.training) for m in _program._modules(target)]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training


def _check_outputs(func, program: ExportedProgram, args: tuple, kwargs: dict, tolerance: float,
                   name: str) -> None:
    """trace's check_trace: the exported program computes what eager code does (in eval mode,
    as exported) on these inputs, within `tolerance`."""
    from kiln.tracer.autograd import no_grad
    with _eval_mode(func), no_grad():
        expected, _ = flatten(func(*args, **kwargs))
    _, cpu_args, cpu_kwargs = _on_cpu(None, args, kwargs)
    got, _ = flatten(program(*cpu_args, **cpu_kwargs))
    if len(got) != len(expected):
        raise RuntimeError(f"kiln.jit.trace: {name}'s traced program returns {len(got)} "
                           f"outputs, the Python function {len(expected)}")
    for k, (g, e) in enumerate(zip(got, expected)):
        g, e = (np.asarray(x.detach().cpu().numpy()) if _isinstance(x, Tensor) else
                np.asarray(x) for x in (g, e))
        if g.shape != e.shape or not np.allclose(g, e, rtol=tolerance, atol=tolerance,
                                                 equal_nan=True):
            diff = np.abs(g.astype(np.float64) - e).max() if g.shape == e.shape else "shape"
            raise RuntimeError(f"kiln.jit.trace: output {k} of {name}'s traced program does not "
                               f"match the Python function's (max difference {diff}, tolerance "
                               f"{tolerance}): the trace depends on something it cannot see "
                               "(randomness, global state); check_trace=False skips this check")


def _is_file_object(f) -> bool:
    return hasattr(f, "write") or hasattr(f, "read")

