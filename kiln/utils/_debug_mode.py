"""`kiln.utils._debug_mode.DebugMode` (torch.utils._debug_mode): a log of the ops a block ran.

A TorchDispatchMode that records every primitive kiln runs inside it, with its tensors'
dtypes and shapes, and prints them in PyTorch's format:

    with DebugMode() as debug_mode:
        out = torch.mm(torch.relu(x), y)
    print(debug_mode.debug_string())
        aten::relu(t: f32[8, 8])  ->  t: f32[8, 8]
        aten::mm(t: f32[8, 8], t: f32[8, 8])  ->  t: f32[8, 8]

The ops are kiln's primitives under their ATen names (kiln.op_overloads), and the keyword
arguments are the primitive's attributes (`aten::sum.dim_IntList(t: f32[2, 3], axes=(1,),
keepdim=True)` where torch prints `[1], True`); composites appear as what they decompose to.
`record_stack_trace` groups the ops under the user's line that ran them;
`record_nn_module` nests them under the modules that ran them; `log_tensor_hashes` and
`dispatch_hooks` annotate each op with the hooks' dictionaries.
"""

from __future__ import annotations

import contextlib
import os
import traceback

import kiln
from kiln.nn.modules.module import (register_module_forward_hook,
                                    register_module_forward_pre_hook)
from kiln.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

__all__ = ["DebugMode", "get_active_debug_mode"]

_DTYPE_ABBREVIATIONS = {
    "bool": "b8", "uint8": "u8", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint16": "u16", "uint32": "u32", "uint64": "u64", "float16": "f16", "bfloat16": "bf16",
    "float32": "f32", "float64": "f64", "complex64": "c64", "complex128": "c128"}
_KILN_DIR = os.path.dirname(os.path.abspath(kiln.__file__)) + os.sep
# (record_hook, log_hook, pre_log_hook) triples installed by `dispatch_hooks`, innermost last
_HOOKS: list = []
_UNSUPPORTED = {"record_torchfunction": False, "record_faketensor": False,
                "record_localtensor": True, "run_compile_with_interpreter": False}


def _tensor_string(t, memo) -> str:
    dtype = _DTYPE_ABBREVIATIONS.get(t.dtype.name, t.dtype.name)
    ident = f"${memo.setdefault(id(t), (len(memo), t))[0]}" if memo is not None else ""
    return f"t{ident}: {dtype}[{', '.join(str(d) for d in t.shape)}]"


def _arg_string(arg, memo) -> str:
    """A tensor as `t: f32[2, 3]`; in a list as that string's repr, as torch prints it."""
    if isinstance(arg, kiln.Tensor):
        return _tensor_string(arg, memo)
    if isinstance(arg, (list, tuple)) and any(isinstance(a, kiln.Tensor) for a in arg):
        return str(type(arg)(_tensor_string(a, memo) if isinstance(a, kiln.Tensor) else a
                             for a in arg))
    return str(arg)


def _tree_map(fn, obj):
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    return fn(obj)


def _user_line() -> str | None:
    """The innermost frame outside kiln, as DebugMode's stack summary."""
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(_KILN_DIR):
            return (f"File: {frame.filename}:{frame.lineno} in {frame.name}, code: "
                    f"{frame.line}")
    return None


class _OpCall:
    """One op as DebugMode logged it: the call, its output, hooks' notes, the user's line."""

    def __init__(self, op, args: tuple, kwargs: dict, call_depth: int, stack: str | None):
        self.op, self.args, self.kwargs, self.call_depth = op, args, kwargs, call_depth
        self.stack_trace = stack
        self.output = self.log = self.record = None
        self.has_output = False

    def render(self, memo=None) -> str:
        parts = [_arg_string(a, memo) for a in self.args]
        parts += [f"{k}={_arg_string(v, memo)}" for k, v in self.kwargs.items()]
        line = f"{self.op.__qualname__}({', '.join(parts)})"
        if self.has_output and self.output is not None:
            line += f"  ->  {_arg_string(self.output, memo)}"
        if self.log:
            line += f"  # {self.log}"
        return line

    def __repr__(self) -> str:
        return self.render()


class _ModuleCall:
    """Entering an nn.Module's forward (`record_nn_module=True`)."""

    def __init__(self, name: str, call_depth: int):
        self.name, self.call_depth, self.stack_trace = name, call_depth, None

    def render(self, memo=None) -> str:
        return f"[nn.Mod] {self.name}"

    def __repr__(self) -> str:
        return self.render()


class DebugMode(TorchDispatchMode):
    """Record the ops run inside `with DebugMode() as m:`; `m.debug_string()` prints them."""

    def __init__(self, *, record_torchfunction: bool = False, record_faketensor: bool = False,
                 record_realtensor: bool = True, record_tensor_attributes=None,
                 record_nn_module: bool = False, store_original_args: bool = False,
                 record_stack_trace: bool = False, record_output: bool = True,
                 record_ids: bool = False, record_profiler_context: bool = True,
                 record_localtensor: bool = True, run_compile_with_interpreter: bool = False):
        super().__init__()
        asked = {"record_torchfunction": record_torchfunction,
                 "record_faketensor": record_faketensor, "record_localtensor":
                 record_localtensor, "run_compile_with_interpreter": run_compile_with_interpreter}
        for name, value in asked.items():
            if value != _UNSUPPORTED[name]:
                raise NotImplementedError(f"DebugMode({name}={value}): kiln records dispatched "
                                          "ops of real tensors only (no __torch_function__ "
                                          "calls, fake or local tensors, or compile internals)")
        if record_tensor_attributes:
            raise NotImplementedError("DebugMode(record_tensor_attributes=...): kiln prints "
                                      "dtype and shape only")
        self.record_realtensor = record_realtensor
        self.record_tensor_attributes = []
        self.record_nn_module = record_nn_module
        self.store_original_args = store_original_args
        self.record_stack_trace = record_stack_trace
        self.record_output = record_output
        self.record_ids = record_ids
        self.operators: list = []
        self.call_depth = 0
        self._memo = {} if record_ids else None
        self._module_handles: list = []
        self._module_names: dict = {}

    # ------------------------------------------------------------------ recording

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.record_realtensor:
            return func(*args, **kwargs)
        call = _OpCall(func, args, kwargs, self.call_depth + 1,
                       _user_line() if self.record_stack_trace else None)
        self.operators.append(call)
        log = {}
        for _, _, pre_log_hook in _HOOKS:
            if pre_log_hook is not None:
                log.update(pre_log_hook(func, types, args, kwargs, call) or {})
        result = func(*args, **kwargs)
        if self.record_output:
            call.output, call.has_output = result, True
        for record_hook, log_hook, _ in _HOOKS:
            if record_hook is not None:
                call.record = {**(call.record or {}),
                               **(record_hook(func, types, args, kwargs, result) or {})}
            if log_hook is not None:
                log.update(log_hook(func, types, args, kwargs, result) or {})
        call.log = log or None
        return result

    def __enter__(self):
        super().__enter__()
        if self.record_nn_module:
            self._module_handles = [register_module_forward_pre_hook(self._enter_module),
                                    register_module_forward_hook(self._exit_module)]
        return self

    def __exit__(self, *exc):
        for handle in self._module_handles:
            handle.remove()
        self._module_handles = []
        super().__exit__(*exc)

    def _enter_module(self, module, args):
        name = self._module_names.get(id(module))
        if name is None:       # the first module called names its submodules by their paths
            name = type(module).__name__
            for path, sub in module.named_modules():
                self._module_names.setdefault(id(sub), f"{name}.{path}" if path else name)
        self.operators.append(_ModuleCall(name, self.call_depth + 1))
        self.call_depth += 1

    def _exit_module(self, module, args, output):
        self.call_depth -= 1

    # ------------------------------------------------------------------ printing

    def debug_string(self, show_stack_trace: bool | None = None) -> str:
        """The ops, one a line, indented by module depth; with `show_stack_trace` each group
        of ops from one user line is headed by `# File: ...:line in fn, code: ...`."""
        if show_stack_trace is None:
            show_stack_trace = self.record_stack_trace
        lines, previous = [], None
        for op in self.operators:
            if show_stack_trace and op.stack_trace and op.stack_trace != previous:
                if lines:
                    lines.append("")
                lines.append("  " * (op.call_depth + 1) + "# " + op.stack_trace)
                previous = op.stack_trace
            lines.append("  " + "  " * op.call_depth + op.render(self._memo))
        return "\n".join(lines)

    def reset(self) -> None:
        self.operators = []
        self.call_depth = 0

    # ------------------------------------------------------------------ hooks

    @staticmethod
    @contextlib.contextmanager
    def dispatch_hooks(record_hook=None, log_hook=None, pre_log_hook=None):
        """Call `hook(func, types, args, kwargs, result)` after each op (`pre_log_hook`: with
        the op's record instead of the result, before it runs); `log_hook`'s dictionary
        annotates the op's line in debug_string, `record_hook`'s is kept in `call.record`."""
        _HOOKS.append((record_hook, log_hook, pre_log_hook))
        try:
            yield
        finally:
            _HOOKS.remove((record_hook, log_hook, pre_log_hook))

    @staticmethod
    @contextlib.contextmanager
    def log_tensor_hashes(hash_fn="norm", hash_inputs: bool = False):
        """Annotate each op with a hash of its output tensors (and of its inputs, before the
        op runs, with `hash_inputs`): `"norm"` is the L1 norm in float64, a list of names
        gives a tuple, a function is called on each tensor."""
        fn = _hash_function(hash_fn)

        def tree_hash(obj):
            return _tree_map(lambda x: fn(x) if isinstance(x, kiln.Tensor) else None, obj)

        def pre(func, types, args, kwargs, call):
            return {"input_hash": tree_hash((args, kwargs))} if hash_inputs else None

        def post(func, types, args, kwargs, result):
            return {"hash": tree_hash(result)}

        with DebugMode.dispatch_hooks(log_hook=post, pre_log_hook=pre):
            yield


def _norm_hash(t) -> float:
    """A tensor's L1 norm in float64 (complex128), as a Python number."""
    if t.is_complex():
        return t.to(kiln.complex128).abs().sum().item()
    return t.to(kiln.float64).abs().sum().item()


def _xor_hash(t) -> int:
    """`hash_tensor` of the values in float64 (a complex tensor's parts) or int64, as a Python
    int; 0 for an empty tensor."""
    if t.is_complex():
        t = kiln.view_as_real(t.to(kiln.complex128))
    t = t.to(kiln.float64 if t.is_floating_point() else kiln.int64)
    return kiln.hash_tensor(t).item() if t.numel() else 0


def _hash_function(hash_fn):
    def named(name):
        if name == "norm":
            return _norm_hash
        if name == "hash_tensor":
            return _xor_hash
        raise AssertionError(f"hash_type must be 'norm' or 'hash_tensor', got {name!r}")
    if callable(hash_fn):
        return hash_fn
    if isinstance(hash_fn, str):
        return named(hash_fn)
    if isinstance(hash_fn, list):
        fns = [named(name) for name in hash_fn]
        return lambda t: tuple(f(t) for f in fns)
    raise NotImplementedError(f"log_tensor_hashes() expected hash_fn to be callable, str, or "
                              f"list[str], but found {type(hash_fn)}")


def get_active_debug_mode():
    """The innermost active DebugMode of this thread, or None."""
    modes = [m for m in _get_current_dispatch_mode_stack() if isinstance(m, DebugMode)]
    return modes[-1] if modes else None
