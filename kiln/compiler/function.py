"""`CompiledFunction`: the guard key, its entries (trace, compile, replay) and the fall back
to eager; `CompiledEntry`, one traced and compiled call."""

from __future__ import annotations

import collections
import functools
import os
import random
import re
import types
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from kiln.compiler import guards
from kiln.compiler.arguments import (_alias_pattern, _argument_roots, _base, _grad_candidates,
                                     _grad_presence, _has_record, _keyed_scalars, _object_arguments,
                                     _own_attributes, _parameter_names, _put_back_numbers,
                                     _type_reads, _typed_tree, _unread_as_none, _unread_item,
                                     _unread_parameters)
from kiln.compiler.backward import (_attach_backward, _binding_of, _differentiable, _fetched_tensor,
                                    _grad_arrays, _grad_state_matches, _grad_writes_forward,
                                    _mark_consumed, _outputs_eager_saves, _saved_inputs)
from kiln.compiler.counters import count_graph
from kiln.compiler.effects import EffectWatch, random_draws, random_states
from kiln.compiler.numbers import (_STATE_NUMBERS, _group_number_writes, _holds_proxy,
                                   _lifted_as_types, _number_arguments, _proxies_in,
                                   _replay_counters, _stored_proxies, _without_proxies,
                                   _write_numbers)
from kiln.compiler.outputs import (_bound_tensor, _eager_layouts, _outputs_apart, _returned_views,
                                   _source, _view_again)
from kiln.compiler.pipeline import compile_program, kernel_target
from kiln.compiler.refusals import (_BFLOAT16_BACKENDS, _complex_node, _computes_in_bfloat16,
                                    _eager_autograd_mode, _not_traceable,
                                    _number_rounded_to_bfloat16, _reached_complex,
                                    _reaches_bfloat16, _unreplayable_return)
from kiln.compiler.stance import current_stance
from kiln.compiler.traced import (_ARG, _LIFTED, _NUMBER, _PLACE, _SCALAR, _SEED, _carried,
                                  _computed, _detached_result, _fetch_plan, _history_written,
                                  _lifted_bases, _made_by, _shares_memory_with_others,
                                  _stored_argument, _written_argument_shared)
from kiln.compiler.tracing import (_batch_objects, _collector_paused, _flatten_args, _function_name,
                                   _tensor_names, _trace_call, _where)
from kiln.ir.dtypes import get_default_dtype
from kiln.ir.ops import BOUNDS_ERRORS, as_user_error
from kiln.runtime import pending_checks
from kiln.runtime.device import CPU, to_device
from kiln.runtime.layouts import grad_array, in_layout
from kiln.tracer import dispatch_subclass as _dispatch_subclass, torch_function as _torch_function
from kiln.tracer.autocast import key as _autocast_key
from kiln.tracer.creation import default_generator, get_default_device
from kiln.tracer.errors import GraphBreak, user_stacklevel
from kiln.tracer.joint import trace_backward
from kiln.tracer.storage import element_offset
from kiln.tracer.symbolic_number import SymbolicNumber, describe, evaluate, operand_array
from kiln.tracer.tensor import INFERENCE, STATE, InferenceVersion, Tensor
from kiln.tracer.trace import TracedProgram, flatten, unflatten


# entries (traced keys) a compiled function keeps before it runs eagerly, with a message;
# torch._dynamo.config.recompile_limit sets it
RECOMPILE_LIMIT = 8


@dataclass
class CompiledEntry:
    """One guard key's outcome: a replayable program, or the reason it runs eagerly."""

    program: TracedProgram | None
    executor: object = None             # ArrayExecutor or ScheduleExecutor: .run(inputs)
    eager_reason: str | None = None
    calls: int = 0
    graph: object = None                # the optimized graph the executor runs
    pass_stats: list = field(default_factory=list)
    schedule: object = None             # the fusion schedule, when kernels are generated
    writebacks: list = field(default_factory=list)   # binding index per graph.mutations entry
    backward: object = None             # executor of the compiled backward program
    joint: object = None                # JointInfo: which outputs and inputs have gradients
    arg_requires_grad: tuple = ()       # (argument tensor's index, flag) the call set
    copied_outputs: tuple = ()          # outputs eager mode gave memory of their own (a copy)
    out_strides: tuple = ()             # eager's layout per output: `_eager_layouts`
    saved_inputs: tuple = ((), ())      # inputs the backward reads: `_saved_inputs`
    saved_outputs: frozenset = frozenset()  # outputs eager's backward reads (their versions)
    quiet_writes: tuple = ()            # writebacks moving no version counter (`t.data = `)
    partition: object = None            # PartitionReport: what the forward saves
    fetch: list = field(default_factory=list)        # (kind, where) per executor input
    out_dtypes: list = field(default_factory=list)   # dtype per user output
    guards: list = field(default_factory=list)       # Guard: the Python state it assumes
    lifted_bases: frozenset = frozenset()            # buffers of the state it reads
    _check: object = None                            # guards.checker(guards), made once
    _grad_reads: tuple | None = None                 # the inputs bound to a `.grad`, made once
    _artifact_at: tuple = ()                         # the kernel choices it was read at
    traced: object = None               # the TracedProgram compiled (kept if replays fail)
    compiled: object = None             # CompiledProgram: what the passes made of it
    target: str = ""                    # "c", "triton" or "numpy"
    _artifact: object = None

    @property
    def artifact(self):
        """The CompiledArtifact: what was traced, compiled and runs (None when eager). Read
        off the executors once, on first use (after their C build: a failed build shows)."""
        if self.compiled is None:
            return None
        executors = {"forward": self.executor, "backward": self.backward}
        # the kernel trials (schedule_executor) may move a group to NumPy after a few replays:
        # what runs then is read again
        decided = tuple(id(getattr(ex, "choices", None)) for ex in executors.values())
        if self._artifact is None or self._artifact_at != decided:
            from kiln.compiler.artifact import build_artifact
            self._artifact = build_artifact(self.traced, self.compiled, executors, self.target)
            self._artifact_at = decided
        return self._artifact

    def valid(self, leaves) -> bool:
        """Whether this entry may run for a call with tensors `leaves`: every guard holds, each
        written `.grad` is None exactly as when traced, and no argument shares memory with the
        state the program writes."""
        check = self._check
        if check is None:
            check = self._check = guards.checker(self.guards)
        if not check():
            return False
        program = self.program
        if program is None:
            return True
        if program.grad_writes and not _grad_state_matches(program, leaves):
            return False
        reads = self._grad_reads
        if reads is None:
            # inputs that are some tensor's `.grad` of the moment: (index, shape, dtype)
            reads = self._grad_reads = tuple(
                (i, program.graph.inputs[i].shape, program.graph.inputs[i].dtype)
                for i, b in enumerate(program.bindings) if b.kind == "grad")
        for i, shape, dtype in reads:
            grad = _bound_tensor(program, i, leaves)
            if grad is None or tuple(grad.shape) != shape or grad.dtype is not dtype:
                return False
        if self.writebacks and self.lifted_bases:
            for t in leaves:
                if id(_base(t._data)) in self.lifted_bases:
                    return False
        return True
    device: object = None               # where the program runs (a 0-d CPU input is moved there)


@dataclass
class CompiledFunction:
    fn: object
    backend: str = "auto"
    fullgraph: bool = False
    # torch.compile's `dynamic`: None lifts a number argument at its second value, True at its
    # first, False never (each value traces)
    dynamic: bool | None = None
    entries: dict = field(default_factory=dict)      # full key -> CompiledEntry, in trace order
    warned: set = field(default_factory=set)
    retraces: int = 0
    _chains: dict = field(default_factory=dict)      # guard key -> full keys of its entries
    _effect_keys: set = field(default_factory=set)   # keys whose trace changed Python state
    _flags_set: dict = field(default_factory=dict)   # (key, place) -> value a trace set there
    # numbers in Python state that an entry's trace set (place -> (the guard on what that call
    # found there, the value it set)); those since seen holding another value, lifted (place
    # -> that guard: traced as a SymbolicNumber, read by the program at run time and written
    # back by each replay: `_lift_counters`); those whose lifted trace read them into Python
    # (place -> what read it), guarded by value as before
    _flag_places: dict = field(default_factory=dict)
    _state_lifted: dict = field(default_factory=dict)
    _state_specialised: dict = field(default_factory=dict)
    # the attribute names the call can read (`guards.code_reads`), the only non-tensor fields
    # of a batch object the key holds; None: every field (it reads by computed name)
    _record_fields: frozenset | None = frozenset()
    # int/float arguments, (position, None) or (None, keyword): the guard value each had at
    # its first trace; those since seen with another value, lifted to graph inputs (their
    # type: the key holds only that); those whose lifted trace read the value into Python
    _numbers_seen: dict = field(default_factory=dict)
    _lifted: dict = field(default_factory=dict)
    _specialised: dict = field(default_factory=dict)    # argument -> what read it
    _numbers_now: tuple | None = None   # (args, kwargs) while a call's entry is looked up

    def __post_init__(self):
        # a function's name and doc; for a Module (or other object) not its __dict__, whose
        # copies would go stale (`training`, the parameter registry) as the module changes
        plain = isinstance(self.fn, (types.FunctionType, types.MethodType))
        functools.update_wrapper(self, self.fn, updated=functools.WRAPPER_UPDATES if plain
                                 else ())
        self._not_traceable = _not_traceable(self.fn)
        self._unread = _unread_parameters(self.fn)
        if len(_LIVE) >= 1024:      # drop the references of collected functions now and then
            _LIVE[:] = [ref for ref in _LIVE if ref() is not None]
        _LIVE.append(weakref.ref(self))

    @property
    def _orig_mod(self):
        """The compiled module (or function) itself, as torch's OptimizedModule names it."""
        return self.fn

    def forget(self) -> None:
        """Drop every traced entry: the next call traces again (`reset()`)."""
        self.entries.clear()
        self._chains.clear()
        self._effect_keys.clear()
        self._flags_set.clear()
        self._flag_places.clear()
        self._state_lifted.clear()
        self._state_specialised.clear()
        self._record_fields = frozenset()
        self._numbers_seen.clear()
        self._lifted.clear()
        self._specialised.clear()
        self.warned.clear()
        self.retraces = 0

    def __getattr__(self, name: str):
        """Everything else is the wrapped object's: `torch.compile(model)` keeps
        `model.parameters()`, `.train()`, `.state_dict()` working, as PyTorch's wrapper does."""
        if name.startswith("_") or name in ("fn", "entries", "warned"):
            raise AttributeError(name)
        return getattr(self.__dict__["fn"], name)

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self.__call__, obj)

    def _guard_key(self, args, kwargs) -> tuple:
        """(key, leaves): what an entry is specialized to, and the tensors of this call.

        The key holds each tensor's shape, strides, dtype, device and requires_grad (strides:
        eager's outputs take their layout from the inputs', and a replay gives eager's, as
        recorded by the trace: `CompiledEntry.out_strides`), which of them share memory, the
        grad mode, the autocast state (a trace records autocast's casts), the non-tensor
        arguments by type and value (of a batch object, only the fields named in
        `_record_fields`), and the default dtype and device. What the function reads from
        Python (globals, closures, modules, optimizers) is checked by each entry's guards
        (`kiln.compiler.guards`).
        """
        if not kwargs and all(type(a) is Tensor for a in args):
            leaves, tree = args, len(args)            # the common call: tensors only
        else:
            if self._unread is not None:
                args, kwargs = _unread_as_none(self._unread, args, kwargs)
            if self._lifted:
                args, kwargs = _lifted_as_types(self._lifted, args, kwargs)
            leaves, tree = _flatten_args((args, kwargs))
            tree = _typed_tree(tree, self._record_fields)
        tensors = tuple((t._data.shape, t._data.strides, t.dtype, t.device, t.requires_grad)
                        for t in leaves)
        # the default dtype and device decide what `kiln.ones(3)` in the function makes
        return (tensors, _alias_pattern(leaves), STATE.grad_enabled, _autocast_key(), tree,
                get_default_dtype(), get_default_device(), _own_attributes(leaves)), leaves

    def __call__(self, *args, **kwargs):
        if STATE.tracer is not None:            # compiled code called inside a trace: inline
            return self.fn(*args, **kwargs)
        stance = current_stance()
        if stance == "force_eager":
            return self.fn(*args, **kwargs)
        eager_mode = _eager_autograd_mode()
        if eager_mode is not None:
            # a replay would neither pack saved tensors nor carry tangents
            if self.fullgraph:
                raise GraphBreak(f"called inside {eager_mode}", _where(self.fn))
            self._note(eager_mode, f"{_function_name(self.fn)} is called inside {eager_mode}; "
                       "it runs eagerly while that is active")
            return self.fn(*args, **kwargs)
        if pending_checks.capturing():
            self._note("cuda graph capture", f"{_function_name(self.fn)} is called while a "
                       "CUDA graph is being captured (kiln.cuda.graph); it runs eagerly there, "
                       "its kernels captured into that graph (kiln.compile replays its own "
                       "programs as CUDA graphs: no capture of yours is needed)")
            return self.fn(*args, **kwargs)
        if STATE.dispatch_modes:
            # a replay runs no primitives one by one: the mode would see none of them
            mode = type(STATE.dispatch_modes[-1]).__name__
            if self.fullgraph:
                raise GraphBreak(f"the TorchDispatchMode {mode} is active", _where(self.fn))
            self._note("torch_dispatch", f"{_function_name(self.fn)} is called with the "
                       f"TorchDispatchMode {mode} active; it runs eagerly, so the mode sees "
                       "each op")
            return self.fn(*args, **kwargs)
        overridden = _torch_function.untraceable(args, kwargs) or \
            _dispatch_subclass.untraceable(args, kwargs)
        if overridden is not None:
            if self.fullgraph:
                raise GraphBreak(f"{overridden} would run on every call", _where(self.fn))
            tag = "torch_dispatch" if "__torch_dispatch__" in overridden else "torch_function"
            self._note(tag, f"{_function_name(self.fn)} is called with "
                       f"{overridden} in effect; it runs eagerly, so that runs on every call")
            return self.fn(*args, **kwargs)
        if self._not_traceable is not None:
            if self.fullgraph:
                raise GraphBreak(self._not_traceable, _where(self.fn))
            self._note("generator", f"{_function_name(self.fn)} {self._not_traceable}; it "
                       "runs eagerly")
            return self.fn(*args, **kwargs)
        if self._lifted or self._state_lifted:     # (what the entries' comparisons read)
            self._numbers_now = (args, kwargs)
        key, leaves = self._guard_key(args, kwargs)
        chain = self._chains.get(key)
        entry = self.entries[chain[0]] if chain is not None else None
        if entry is not None and not entry.valid(leaves):       # (most calls: the first holds)
            entry = self._valid_entry(key, leaves, first=1)
        if entry is None and self._record_fields_grew(key, args, kwargs):
            key, leaves = self._guard_key(args, kwargs)
            entry = self._valid_entry(key, leaves)
        if entry is None and len(self.entries) < RECOMPILE_LIMIT and \
                self._numbers_changed(args, kwargs):
            self._numbers_now = (args, kwargs)
            key, leaves = self._guard_key(args, kwargs)
            entry = self._valid_entry(key, leaves)
        self._numbers_now = None
        if entry is not None:
            entry.calls += 1
            if entry.program is None:
                return self.fn(*args, **kwargs)
            if entry.calls == 1:
                with _collector_paused():
                    return self._replay(entry, leaves, args, kwargs)
            return self._replay(entry, leaves, args, kwargs)
        if stance == "eager_on_recompile":
            return self.fn(*args, **kwargs)
        if stance == "fail_on_recompile":
            raise RuntimeError(f"Detected recompile when torch.compile stance is "
                               f"'fail_on_recompile': {_function_name(self.fn)} has no "
                               f"compiled entry valid for this call ({_where(self.fn)})")
        if len(self.entries) >= RECOMPILE_LIMIT:
            if "recompile" not in self.warned:      # what changed is worked out once
                self._numbers_now = (args, kwargs)
                self._note("recompile", f"{_function_name(self.fn)} hit the recompile limit "
                           f"({RECOMPILE_LIMIT} traced entries); running it eagerly from now "
                           f"on{_last_failure(self, key)}")
                self._numbers_now = None
            return self.fn(*args, **kwargs)
        with _collector_paused():
            return self._trace_and_run(key, args, kwargs)

    def _valid_entry(self, key, leaves, first: int = 0) -> CompiledEntry | None:
        """The first entry of `key` from the `first` on whose guards hold, moved to the front
        of its chain: checked first next call (a training step's first entry, traced before the
        optimizer had state, would fail its guards every call)."""
        chain = self._chains.get(key)
        if chain is None:
            return None
        for i in range(first, len(chain)):
            entry = self.entries[chain[i]]
            if entry.valid(leaves):
                if i:
                    chain.insert(0, chain.pop(i))
                return entry
        return None

    def _record_fields_grew(self, key, args, kwargs) -> bool:
        """Before a trace of a call with batch objects: add the attribute names the call can
        read now (`guards.code_reads`) to `_record_fields`. True when they grew (the key is
        made again): a field the call does not read (a growing `history`, a step counter)
        stays out of the key, so changing it traces nothing again, while every entry's key
        holds the fields its trace could read."""
        if not _has_record(key[4]) or self._record_fields is None:
            return False
        records = _batch_objects(args, kwargs)
        reads = guards.code_reads(self.fn, _object_arguments(args, kwargs))
        if reads.everything or any(id(r) in reads.whole for r in records):
            self._record_fields = None
            return True
        if reads.names <= self._record_fields:
            return False
        self._record_fields |= reads.names
        return True

    def _numbers_changed(self, args, kwargs) -> bool:
        """Before a trace: whether an int/float argument now has another value than at its
        first trace (then it is lifted: traced as a `SymbolicNumber`, keyed by type alone, and
        the key is made again). One whose lifted trace read it into Python stays keyed."""
        grew = False
        if self.dynamic is False:
            return False
        if self._lifted:
            # the code it reaches may have changed since (a global rebound to a function
            # calling type()): lifted numbers go back to their keys
            unseen = _type_reads(self.fn)
            if unseen is not None:
                self._specialised.update(dict.fromkeys(self._lifted, unseen))
                self._lifted.clear()
                return True
        for where, value in _number_arguments(args, kwargs):
            if where in self._lifted or where in self._specialised or self._unread is not None \
                    and (where[0] in self._unread[0] or where[1] in self._unread[1]):
                continue
            seen = self._numbers_seen.setdefault(where, guards.scalar_key(value))
            if seen != guards.scalar_key(value) or self.dynamic:
                unseen = _type_reads(self.fn)
                if unseen is not None:
                    self._specialised[where] = unseen
                    continue
                self._lifted[where] = True
                grew = True
        return grew

    def _symbolic_arguments(self, args, kwargs) -> tuple:
        """(args, kwargs, proxies): the call's arguments with each lifted number as a
        SymbolicNumber, for the traced call."""
        proxies = []
        if not self._lifted:
            return args, kwargs, proxies
        names = _parameter_names(self.fn)
        args, kwargs = list(args), dict(kwargs)
        for where, value in _number_arguments(args, kwargs):
            if where in self._lifted:
                i, k = where
                name = k if k is not None else names[i] if i < len(names) else f"arg{i}"
                proxy = SymbolicNumber(value, where, name)
                proxies.append(proxy)
                if k is None:
                    args[i] = proxy
                else:
                    kwargs[k] = proxy
        return tuple(args), kwargs, proxies

    def _condition_now(self, expression: tuple) -> bool:
        """A comparison a trace took into Python (`symbolic_number._condition`), of the
        arguments of the call being looked up."""
        args, kwargs = self._numbers_now
        try:
            return bool(evaluate(expression, args, kwargs))
        except (ArithmeticError, ValueError):     # (`computes`: eager raises there: trace)
            return None

    def _read_lifted(self, proxies: list, result) -> tuple:
        """After a trace with lifted numbers: (result, whether any was read into Python). Such
        a number is keyed by value from now on (the proxy answered every use with the
        number, so the call's result stands). A proxy in the result is returned as its
        number, and counts as read (a replay would return a stale one)."""
        returned = _without_proxies(result)
        escaped = returned is not result or _holds_proxy(returned)
        for proxy in proxies:
            if escaped:
                proxy.specialise("returned")
            if proxy.specialised is not None:
                self._lifted.pop(proxy.where, None)
                self._specialised[proxy.where] = proxy.specialised
        read = any(p.specialised is not None for p in proxies)
        return returned, read

    def _lift_counters(self) -> None:
        """Before a trace: lift each number in Python state that an entry's trace set
        (`_flag_places`) and that now holds another value than that trace found there (a
        counter: `self.n += 1`, a hand-written Adam's `state["step"] += 1`), as
        `_numbers_changed` lifts an argument seen with a second value: traces read it as a
        `SymbolicNumber` from now on (`_state_proxies`). One read into Python by a lifted
        trace stays guarded by value (`_state_specialised`)."""
        if self.dynamic is False or not self._flag_places:
            return
        for at, (g, after) in list(self._flag_places.items()):
            if at in self._state_lifted or at in self._state_specialised or \
                    ".param_groups[" in g.source:
                # (an optimizer's hyperparameter, which a scheduler the call steps sets, and
                # each replay steps again: `replay_after`)
                continue
            now = g.read()
            if type(now) not in _STATE_NUMBERS or g.expected[0] is not type(now) or \
                    type(after) is not type(now) or guards.scalar_key(now) == g.expected:
                continue
            unseen = _type_reads(self.fn)
            if unseen is not None:
                self._state_specialised[at] = unseen
                continue
            self._state_lifted[at] = g

    def _state_proxies(self) -> list:
        """For a trace: each lifted number in Python state replaced there by its proxy, whose
        `where` ("state", read) a replay reads afresh. Returns [(guard, proxy)]."""
        found = []
        for g in self._state_lifted.values():
            value = g.read()
            if type(value) not in _STATE_NUMBERS:       # removed or replaced since
                continue
            names = re.findall(r"[A-Za-z_]\w*", g.source)
            proxy = SymbolicNumber(value, ("state", g.read), names[-1] if names else "number")
            g.read.write(proxy)
            found.append((g, proxy))
        return found

    def _state_traced(self, placed: list, finals: dict, result) -> tuple:
        """After a trace with lifted numbers in state (`placed`: [(guard, proxy)], `finals`:
        place -> what the call left there, proxies already put back as numbers): (result with
        no proxy in it, {place: (guard, type)} for the places the program reads at run time,
        the writes a replay makes there (`TracedProgram.number_writes`)). A proxy the call
        read into Python, returned or stored elsewhere keeps its place guarded by value from
        now on; the call's change there is then an effect, as without lifting."""
        returned = _proxies_in(result)
        for proxy in returned:
            proxy.specialise("returned")
        if returned:
            result = _without_proxies(result)
        lifted, writes = {}, []
        for g, proxy in placed:
            final = finals.get(g.read.at, proxy)
            if proxy.specialised is not None:
                continue
            if type(final) is SymbolicNumber and final.specialised is not None:
                proxy.specialise(final.specialised)
            elif type(final) is not SymbolicNumber and type(final) not in _STATE_NUMBERS:
                proxy.specialise("replaced")            # deleted, or no number any more
        for g, proxy in placed:
            at = g.read.at
            if proxy.specialised is not None:
                self._state_lifted.pop(at, None)
                self._state_specialised[at] = proxy.specialised
                continue
            lifted[at] = (g, type(proxy.value))
            final = finals[at]
            if final is proxy:
                continue                                # read, not changed
            if type(final) is SymbolicNumber:
                writes.append((g.source, g.read.write, final.where, None))
            else:
                writes.append((g.source, g.read.write, None, final))
        return result, lifted, writes

    def _trace_again_or_eagerly(self, key, result, reason: str):
        """The traced call changed Python state a replay would not (`reason`): the first time
        for this key it may be lazy initialization, so the next call traces again; a second
        time it is an effect of every call, and this key runs eagerly with a warning (or
        raises, with fullgraph). Returns the traced call's result."""
        if key not in self._effect_keys and self.retraces < RECOMPILE_LIMIT:
            self._effect_keys.add(key)
            self.retraces += 1
            return result
        if self.fullgraph:
            raise GraphBreak(reason, _where(self.fn))
        self._add_entry(key, CompiledEntry(None, eager_reason=reason))
        self._note("effect", f"{reason}; this function runs eagerly")
        return result

    def _note(self, tag: str, message: str) -> None:
        if tag not in self.warned:
            self.warned.add(tag)
            warnings.warn(f"kiln.compile: {message}", stacklevel=user_stacklevel())

    def _run_bfloat16_eagerly(self, key, args, kwargs, run: bool = True, kind: str = "bfloat16",
                              what: str = ""):
        """A function that computes with bfloat16 tensors for the Triton backend (or with
        complex tensors) runs eagerly from now on (for this guard key), with a warning: kiln's
        Triton kernels have no bfloat16 (nor has kiln on CUDA), its kernels and passes no
        complex numbers, and eager computes them as PyTorch's CPU kernels do
        (kiln.tracer.dispatch). Checked before tracing, as a traced optimizer step takes other
        branches (tensor hyperparameters) than eager's. `what` names the tensor found.
        The C kernels and the NumPy executor compute bfloat16 (`kiln.codegen.c`)."""
        if kind == "bfloat16" and what:
            reason = (f"{_function_name(self.fn)} reads {what} as a tensor rounded to "
                      "bfloat16, where eager computes with the number itself (as float32); "
                      "compiled code would compute another value")
        elif kind == "bfloat16":
            reason = (f"{_function_name(self.fn)} computes with bfloat16 tensors (kiln's "
                      f"{self.backend!r} backend has no bfloat16; 'auto', 'c' and 'numpy' "
                      "compile it on the CPU)")
        else:
            reason = (f"{_function_name(self.fn)} computes with {kind} tensors{what} (compiled "
                      f"code has no {kind})")
        if self.fullgraph:
            raise GraphBreak(reason, _where(self.fn))
        self._add_entry(key, CompiledEntry(None, eager_reason=reason))
        self._note(kind, f"{reason}; this function runs eagerly")
        return self.fn(*args, **kwargs) if run else None

    def _add_entry(self, key, entry: CompiledEntry) -> None:
        full = (key, len(self.entries))
        self.entries[full] = entry
        self._chains.setdefault(key, []).append(full)

    def _trace_and_run(self, key, args, kwargs):
        mode = "raise" if self.fullgraph else "abandon"
        reachable: dict = {}
        names_before = _tensor_names(self.fn, tensors=reachable)
        # whether each `.grad` is None now, before the function's own code (zero_grad) runs;
        # arguments are lifted before it runs, so their GradWrite.was_none says it already
        none_at_call = {i: t.grad is None for i, t in reachable.items()}
        # and each requires_grad, of what it reaches and of its arguments (a replay sets again
        # what the call flips: `x.requires_grad_()`, WGAN's `p.requires_grad = False`)
        leaves = self._guard_key(args, kwargs)[1]
        rg_at_call = ({i: t.requires_grad for i, t in reachable.items()},
                      leaves, [t.requires_grad for t in leaves],
                      {id(t): t.grad_fn for t in [*leaves, *reachable.values()]
                       if isinstance(t, Tensor)})
        try:
            grad_candidates = _grad_candidates(self.fn, args, kwargs, reachable)
            # (with attribute counts: an attribute the call adds to a plain object it reaches,
            # `s.count = getattr(s, "count", 0) + 1`, is a change a replay would not make)
            before = guards.collect(self.fn, _object_arguments(args, kwargs),
                                    attribute_counts=True)
            arg_state = guards.collect(None, _argument_roots(args, kwargs),
                                       attribute_counts=True)
        except Exception as e:        # cannot say what a replay would assume: run eagerly
            reason = f"reading what it can reach failed ({e!r})"
            self._add_entry(key, CompiledEntry(None, eager_reason=reason))
            self._note("guards", f"{_function_name(self.fn)}: {reason}; it runs eagerly")
            return self.fn(*args, **kwargs)
        if self.backend not in _BFLOAT16_BACKENDS and _reaches_bfloat16(args, kwargs, reachable):
            return self._run_bfloat16_eagerly(key, args, kwargs)
        found = _reached_complex(args, kwargs, reachable, names_before)
        if found is not None:
            return self._run_bfloat16_eagerly(key, args, kwargs, kind="complex", what=found)
        rng = random_states((g.source, g.expected) for g in before.guards if g.kind == "id")
        grad_state = _grad_presence(grad_candidates)
        # what custom Functions' forward and backward can reach, as they were before each ran
        function_guards: list = []

        def on_function(cls) -> None:
            try:
                function_guards.extend(guards.custom_function(cls).guards)
            except Exception as e:      # cannot say what a replay would assume: a break
                STATE.tracer.graph_break(f"reading what {cls.__name__} can reach failed "
                                         f"({e!r})")
        call_args, call_kwargs, proxies = self._symbolic_arguments(args, kwargs)
        self._lift_counters()
        placed = self._state_proxies()
        read = False
        try:
            tracer, result = _trace_call(
                self.fn, args, kwargs, mode, names=names_before, watch=True,
                grad_holders={id(t.grad): t for t in grad_candidates if t.grad is not None},
                grad_state=(grad_candidates, grad_state), on_function=on_function,
                call=(call_args, call_kwargs), numbers=bool(proxies or placed))
        except BaseException as error:
            # the user's error, or one a proxy caused where the number would not have (C code
            # checking for a real float: json.dumps): either way its numbers are keyed by
            # value from now on, as without lifting; the error says so
            _put_back_numbers(placed, self.fn, args, kwargs)
            for proxy in proxies + [p for _, p in placed]:
                proxy.specialise("the traced call raised")
            self._read_lifted(proxies, None)
            self._state_traced(placed, {}, None)
            if (proxies or placed) and isinstance(error, Exception):
                lifted = [p.name for p in proxies] + [g.source for g, _ in placed]
                error.add_note(
                    f"(kiln.compile traced this call with the number(s) {', '.join(lifted)} "
                    "as graph inputs, since they changed between calls; code that needs a "
                    "real int or float (json.dumps, a C extension) can raise here where eager "
                    "would not. Later calls read them by value; kiln.compile(..., "
                    "dynamic=False) never lifts numbers.)")
            raise
        counted, number_writes = {}, []
        if placed:
            # numbers in state the trace read as proxies: each place gets its number back
            finals = _put_back_numbers(placed, self.fn, args, kwargs)
            result, counted, number_writes = self._state_traced(placed, finals, result)
        if proxies:
            result, read = self._read_lifted(proxies, result)
            if any(p.specialised == "returned" for p in proxies):
                tracer.release()        # the program would return the proxy: trace again
                return result
            if read:
                # the trace holds the value where the call read it into Python: an entry for
                # this value (its lifted operands still read the argument, which is the same)
                key = self._guard_key(args, kwargs)[0]
        # the lifted numbers whose comparisons the call took into Python: guards of its entry
        tracer.number_proxies = ([] if read else proxies) + \
            [p for _, p in placed if p.specialised is None]
        draws = random_draws(rng)
        if draws and not tracer.breaks:
            tracer.release()
            tracer.breaks.append(GraphBreak(f"a random draw from {draws[0]}, which a replay "
                                            "would skip", _where(self.fn)))
            if self.fullgraph:
                raise tracer.breaks[0]
        if tracer.breaks:
            b = tracer.breaks[0]
            self._add_entry(key, CompiledEntry(None, eager_reason=str(b)))
            self._note("break:" + b.location, f"graph break in {_function_name(self.fn)}: "
                       f"{b.reason} at {b.location}; this function runs eagerly")
            _dump_if_requested(self, tracer.programs)
            return result
        if self.backend not in _BFLOAT16_BACKENDS and _computes_in_bfloat16(tracer.graph):
            # bfloat16 made inside the function: the traced call ran eagerly, its result stands
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False)
            return result
        read = _number_rounded_to_bfloat16(tracer)
        if read is not None:
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False, what=read)
            return result
        made = _complex_node(tracer.graph)
        if made is not None:
            # complex made inside (an rfft of a real input): likewise
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False, kind="complex", what=made)
            return result
        # (an optimizer's state filled in by its first step is not an effect; a number already
        # there that the step changes, a hand-written Adam's `state["step"] += 1`, is one)
        effects = [g for g in guards.changed(before.guards) + guards.changed(arg_state.guards)
                   + guards.changed(function_guards) if not g.lazy or g.kind == "value"]
        if counted:
            # numbers in state the program reads and each replay writes (`_lift_counters`)
            effects = [g for g in effects if getattr(g.read, "at", None) not in counted]
        if proxies or placed:
            # a learning rate computed from the step number and set in the group: each replay
            # sets it again
            group_writes, effects = _group_number_writes(effects)
            number_writes = number_writes + group_writes
        if (proxies or placed) and _stored_proxies(effects):
            self._read_lifted(proxies, result)
            for g, proxy in placed:         # (stored where `_put_back_numbers` did not look)
                if proxy.specialised is not None:
                    self._state_lifted.pop(g.read.at, None)
                    self._state_specialised[g.read.at] = proxy.specialised
            tracer.release()
            return result
        run_time = {(c, k) for c, k, _, _ in tracer.scalars}
        if tracer.after_replay:
            # numbers the program reads on every call (a learning rate) that a Python step it
            # repeats after each replay (the scheduler's) changed: the replay changes them too
            read = run_time - tracer.python_reads
            effects = [g for g in effects if g.place not in read]
        # flags the call set (`model.train()`): a replay sets them again, and runs only when
        # each held what the trace found there. A place set to another value than an earlier
        # trace of this key set it to is a counter, which stays an effect.
        flags, effects = guards.flag_writes(effects, run_time)
        counters = [g for at, (g, value) in flags.items()
                    if self._flags_set.get((key, at), value) != value]
        if counters:
            effects, flags = effects + counters, {}
        # tensors the call computed and stored (a pruning hook's `module.weight`, an output
        # kept on the module), or was given and stored: outputs of the program, written there
        # by each replay
        held = collections.Counter(id(g.expected) for g in before.guards + arg_state.guards
                                   if g.kind == "id" and isinstance(g.expected, Tensor))
        writes, effects = guards.tensor_writes(
            effects, lambda t: (_computed(tracer, t) or _detached_result(tracer, t)
                                or _stored_argument(tracer, t)),
            lambda t: id(t) in tracer.input_of and not (_carried(tracer, t) and held[id(t)] == 1))
        # a stored `h.detach()` is replayed as a copy of its own: only sound where nothing
        # else the caller gets shares that memory
        shared = _shares_memory_with_others(tracer, writes, flatten(result,
                                                                    tracer.returned_items)[0])
        shared = [writes.pop(at)[0] for at in shared]
        effects += shared
        if effects:
            # the call changed Python state a replay would leave alone: once may be lazy
            # initialization (trace again), twice is an effect of every call (run eagerly)
            tracer.release()
            what = ", ".join(dict.fromkeys(g.source for g in effects[:3]))
            # a counter the trace read into Python (`math.sqrt(1 - b ** step)`) stays keyed
            reads = dict.fromkeys(self._state_specialised.get(getattr(g.read, "at", None))
                                  for g in effects)
            reads.pop(None, None)
            if reads:
                what += (f"; a counter the trace read into Python ({', '.join(reads)}) is "
                         "keyed by value, so each call's change is an effect")
            if shared:
                what += ("; a tensor stored there shares memory with another the call returns "
                         "or stores, which a replay's stored copy would not: store a .clone()")
            return self._trace_again_or_eagerly(key, result, (
                f"{_function_name(self.fn)} changes Python state a replay would not change "
                f"({what})"))
        # places past the walk's limits, where a change the call made would not be seen
        unseen = [g for g in before.guards + arg_state.guards if g.kind == "unguarded"]
        try:
            added = len(self.entries)
            result = self._compile_traced(key, tracer, result, reachable, names_before,
                                          none_at_call, args, kwargs, flags, writes, unseen,
                                          rg_at_call, (counted, number_writes))
            if proxies and not read and any(p.specialised is not None for p in proxies):
                # read while the backward was derived (a custom Function's backward branching
                # on a number its ctx holds): the entry holds that value, not any value
                self._read_lifted(proxies, None)
                for full in list(self.entries)[added:]:
                    self.entries[full].program = None
                    self.entries[full].eager_reason = "it read a lifted number in its backward"
            return result
        except _StageFailed as failure:
            # the traced call already ran the function eagerly: its result stands, and its
            # side effects are not repeated; this key runs eagerly from now on
            tracer.release()
            if self.fullgraph:
                raise failure.error
            reason = f"{failure.stage} failed ({failure.error!r})"
            self._add_entry(key, CompiledEntry(None, eager_reason=reason))
            self._note("build", f"compiling {_function_name(self.fn)}: {reason}; it runs "
                       "eagerly")
            return result

    def _compile_traced(self, key, tracer, result, reachable, names_before, none_at_call,
                        args, kwargs, flags=None, writes=None, unseen=(), rg_at_call=None,
                        counters=({}, [])):
        leaves_in = _flatten_args((args, kwargs))[0]     # (as the bindings count them)
        num_ops = len(tracer.graph.nodes)        # the function's own, before its backward
        # what the program returns: the function's value, then each tensor it stored that the
        # value does not hold
        items = tracer.returned_items       # `return loss.item()`: the tensor is the output
        returned = flatten(result, items)[0]
        extra = [t for _, t in (writes or {}).values() if all(t is not r for r in returned)]
        traced = (result, extra) if writes else result
        outputs, tree = flatten(traced, items)
        consumed = [i for i, t in enumerate(outputs)
                    if t.requires_grad and t.grad_fn is not None and not _differentiable(t)]
        # a tensor the call was given (or read) and returns unchanged, or written in place
        # outside autograd (a parameter an optimizer stepped), is returned itself once the
        # replay's writes are in it: it needs no backward of its own (its gradient
        # accumulates into it, as in eager)
        given = {i: tracer.input_of[id(t)][1] for i, t in enumerate(outputs)
                 if id(t) in tracer.input_of and tracer.input_of[id(t)][0] is t
                 and (t._trace is tracer.input_of[id(t)][1] or t.grad_fn is None)
                 and _binding_of(tracer, tracer.input_of[id(t)][1]).kind in ("arg", "lifted")}
        joint = None
        with _stage("deriving the backward"):
            if STATE.grad_enabled and any(t.requires_grad and t.dtype.is_floating_point
                                          for i, t in enumerate(outputs)
                                          if i not in consumed and i not in given):
                joint = self._derive_backward(tracer, outputs, [*consumed, *given], args,
                                              kwargs)
        if tracer.breaks:       # in a custom Function's backward: the call's result stands
            b = tracer.breaks[0]
            tracer.release()
            self._add_entry(key, CompiledEntry(None, eager_reason=str(b)))
            self._note("break:" + b.location, f"graph break in {_function_name(self.fn)}: "
                       f"{b.reason} at {b.location}; this function runs eagerly")
            return result
        with _stage("finishing the trace"):
            (program,) = tracer.finish(traced if joint is None
                                       else list(outputs) + joint.grads, items)
        # (an output slot's node is the one of its several outputs: its owner)
        program.consumed = {i: getattr(outputs[i].grad_fn, "owner", outputs[i].grad_fn).prim
                            for i in consumed}
        program.returned_inputs = {i: program.graph.inputs.index(v) for i, v in given.items()}
        program.returned_views = _returned_views(
            program, outputs[:len(returned)], [*consumed, *given], leaves_in)
        for gw in program.grad_writes:
            gw.none_at_call = none_at_call.get(id(gw.tensor))
        reachable_after: dict = {}
        names_after = _tensor_names(self.fn, tensors=reachable_after)
        for b, v in zip(program.bindings, program.graph.inputs):
            if b.kind == "lifted" and id(b.tensor) not in names_before:
                v.name = names_after.get(id(b.tensor), v.name)   # state the call made
        stored = {id(t) for _, t in (writes or {}).values()}
        if any(t._trace is not None for i, t in reachable_after.items()
               if i not in reachable and i not in stored):
            # the graph made tensors that outlive the call (SGD's momentum buffer, cloned from
            # the first gradient): a replay would make them afresh each time, so trace again
            # once they exist. State made `untraced` (Adam's moments) is an input already.
            self.retraces += 1
            if self.retraces <= RECOMPILE_LIMIT:
                return result
        entry = CompiledEntry(program)
        # state the call read and replaced (a running average): read from its place each replay
        carried = {at: g for at, (g, _) in (writes or {}).items()
                   if isinstance(g.expected, Tensor) and id(g.expected) in tracer.input_of}
        if any(any(m is g.expected for m in program.mutated) for g in carried.values()):
            entry.program, entry.eager_reason = None, ("it writes in place into state it also "
                                                       "replaces")
            self._note("effect", f"{_function_name(self.fn)} {entry.eager_reason}; it runs "
                       "eagerly")
            self._add_entry(key, entry)
            return result
        # requires_grad flags the call flipped (WGAN's `p.requires_grad = False` on the critic
        # before each generator step) and what each was when the call began
        reached_rg, leaves, leaves_rg, grad_fns = rg_at_call or ({}, (), (), {})
        flipped = {i: was for i, was in reached_rg.items() if reachable[i].requires_grad != was}
        entry.arg_requires_grad = tuple((i, t.requires_grad) for i, (t, was)
                                        in enumerate(zip(leaves, leaves_rg))
                                        if t.requires_grad != was)
        olds = {id(g.expected) for g in carried.values()}
        lifted = [b.tensor for b in program.bindings
                  if b.kind == "lifted" and id(b.tensor) not in olds]
        # (a number user code also read into Python keeps its value guard: it may be baked in)
        inputs = {(id(b.path[0]), b.path[1]) for b in program.bindings
                  if b.kind == "scalar"} - tracer.python_reads
        # a batch object's tensors are inputs, keyed by shape: not guarded by identity
        fields = {id(t) for t in _flatten_args((args, kwargs))[0]}
        roots = _object_arguments(args, kwargs)
        with _stage("guarding what the call reads"):
            replay_guards = guards.collect(self.fn, roots, by_name=True,
                                           flag_reads=tracer.flag_reads)
        kept = list(dict.fromkeys(
            g.source for g in replay_guards.guards
            if g.kind == "id" and isinstance(g.expected, Tensor) and
            id(g.expected) not in stored and _made_by(tracer, g.expected)))
        if kept:
            # a tensor the graph made is held where the guards reach (an optimizer's state
            # made lazily, reached through an argument or a container the name walks above
            # missed): a replay would make it afresh and leave the held one stale
            return self._trace_again_or_eagerly(key, result, (
                f"{_function_name(self.fn)} keeps tensors it computes in Python state a "
                f"replay would not update ({', '.join(kept[:3])})"))
        keyed = _keyed_scalars(replay_guards.guards, roots, _batch_objects(args, kwargs),
                               self._record_fields, flags or {})
        entry.guards = ([g for g in replay_guards.guards
                         if not (g.kind == "id" and id(g.expected) in fields
                                 and g.source.startswith("argument ")) and id(g) not in keyed] +
                        guards.tensor_guards(lifted, names_after, flipped))
        _replay_requires_grad(entry, program, flipped, reachable, lifted, names_after)
        with _stage("guarding custom Functions"):
            for cls in tracer.functions:
                entry.guards += guards.custom_function(cls).guards
        entry.guards = guards.read_at_run_time(entry.guards, inputs) + [
            guards.Guard(f"{type(obj).__name__}.{attr} (read into Python by the call)",
                         functools.partial(getattr, obj, attr, guards.MISSING), "id", value)
            for obj, attr, value in tracer.object_reads]
        # comparisons of lifted arguments the call took into Python (its forward, or a custom
        # Function's backward, run by now): the entry holds while they give the same bool
        proxies = getattr(tracer, "number_proxies", [])
        names = {p.where: p.name for p in proxies}
        entry.guards += [guards.Guard(f"{describe(c, names)} (a comparison the call took into "
                                      "Python, of its arguments)",
                                      functools.partial(self._condition_now, c), "eq", v)
                         for c, v in {c: v for p in proxies
                                      for c, v in p.conditions.items()}.items()]
        # an item of a container that tells every read of it (a parameter group's learning rate)
        # that no code of the call read, in a branch that did not step the optimizer: no guard,
        # so a scheduler changing it between calls traces nothing again
        entry.guards = [g for g in entry.guards if not _unread_item(g, tracer.item_reads)]
        # which reachable tensors had a `.grad` when the call began, for those whose presence
        # an optimizer step or a clipping branched on while it still was the call's start
        # state (not after a zero_grad() or a backward in the call decided it): a forward
        # whose backward runs outside, or a full training step, needs no such guard
        candidates, state = tracer.grad_state
        kept = sorted(i for i in tracer.grads_depended if id(candidates[i]) not in tracer.cleared)
        if kept:
            tensors = [candidates[i] for i in kept]
            entry.guards.append(guards.Guard(
                f"which of {len(tensors)} tensors requiring grad have a .grad",
                functools.partial(_grad_presence, tensors), "eq",
                tuple(state[i] for i in kept)))
        unguarded = self._unguarded(entry, unseen)
        if unguarded is not None:
            entry.program, entry.eager_reason = None, unguarded
            self._add_entry(key, entry)
            return result
        if flags:
            _replay_flags(self, key, entry, program, flags)
        if counters[0] or counters[1]:
            _replay_counters(entry, program, *counters)
        if writes:      # the program never reads the old tensors there: no guard on them
            entry.guards = [g for g in entry.guards if getattr(g.read, "at", None) not in writes]
            position = {id(t): i for i, t in enumerate(returned + extra)}
            program.attribute_writes = [(g.source, g.read.write, position[id(t)],
                                         id(t) in tracer.alias_of)
                                        for g, t in writes.values()]
            entry.guards += [guards.carried_state_guard(g) for g in carried.values()]
        entry.lifted_bases = _lifted_bases(program)
        refusal = _unreplayable(program, tree, grad_fns, key[1], leaves_in, entry.lifted_bases)
        if refusal is not None:
            tag, entry.eager_reason = refusal
            entry.program = None
            self._note(tag, f"{_function_name(self.fn)}: {entry.eager_reason}; calls like this "
                       "one run eagerly")
            self._add_entry(key, entry)
            return result
        if joint is not None:
            program.output_tree = tree
            program.num_user_outputs = len(outputs)
            _grad_writes_forward(program, joint.info, len(joint.grads))
        _build(entry, program, joint, outputs, len(returned), carried, leaves_in,
               _device_of(outputs, args), self.backend)
        self._add_entry(key, entry)
        count_graph(num_ops)
        _dump_if_requested(self, [program])
        return result

    def _unguarded(self, entry: CompiledEntry, unseen: list) -> str | None:
        """Why the entry runs eagerly when the call can reach places past the guards' limits
        (`guards._OBJECT_DEPTH`, `_GUARD_BUDGET`), else None. A replay would not see a change
        there, and a compiled result must equal eager's: such calls run eagerly, with one
        warning naming the place (pass a value read there as an argument, or keep it nearer the
        function), and `explain` and `kiln dump` list the places with the entry's guards."""
        listed = {g.source for g in entry.guards if g.kind == "unguarded"}
        entry.guards += [g for g in unseen if g.source not in listed]
        found = [g for g in entry.guards if g.kind == "unguarded"]
        if not found:
            return None
        more = f" (and {len(found) - 1} more places)" if len(found) > 1 else ""
        reason = f"{found[0].describe()}{more}"
        self._note("unguarded", f"{_function_name(self.fn)}: {reason}; it runs eagerly (pass a "
                   "value read there as an argument, or keep it nearer the function, to have "
                   "it compiled)")
        return reason

    def _derive_backward(self, tracer, outputs: list, skip: list, args, kwargs):
        """`trace_backward`, after the call returned. The backward of a custom Function the
        call applied is the user's Python, run here once more than eager will run it (the
        caller's `backward()` runs the eager graph of this first call): what it prints is
        swallowed, what it changes in reachable places and random generators is put back
        (`guards.undo_writes`), and either is a graph break, as is anything else a trace
        cannot hold there."""
        if not tracer.functions:
            return trace_backward(tracer, outputs, skip)
        before = guards.collect(self.fn, _object_arguments(args, kwargs)).guards
        for cls in tracer.functions:
            before += guards.custom_function(cls).guards
        undo = guards.undo_writes(before)
        streams = random_states(())
        states = random.getstate(), np.random.get_state(), default_generator.get_state()

        def effect(what: str, where: str) -> None:
            if STATE.tracer is tracer:
                tracer.graph_break(f"{what}, which a replay would skip", where)
        try:
            with EffectWatch(effect, swallow=True):
                joint = trace_backward(tracer, outputs, skip)
        finally:
            changed = undo()
            drawn = random_draws(streams)
            random.setstate(states[0])
            np.random.set_state(states[1])
            default_generator.set_state(states[2])  # (a draw from it there is a break)
        if (changed or drawn) and not tracer.breaks:
            what = changed[0].source if changed else f"the state of {drawn[0]}"
            tracer.graph_break(f"the backward of a custom autograd.Function changes {what}, "
                               "which a replay would not change", _where(self.fn))
        return joint

    def _replay(self, entry: CompiledEntry, leaves, args, kwargs):
        program = entry.program
        device = entry.device
        inputs = []
        for kind, where in entry.fetch:
            if kind == _ARG:
                t = leaves[where]
            elif kind == _LIFTED:
                t = where
            elif kind == _PLACE:            # state the last call stored there
                t = where()
            elif kind == _SEED:
                generator, draw, seed_device = where
                inputs.append(to_device(draw(generator), seed_device))
                continue
            elif kind == _SCALAR:
                container, key, index, xp = where
                value = container[key] if index is None else container[key][index]
                inputs.append(xp.asarray(float(value), dtype=np.float64))
                continue
            elif kind == _NUMBER:           # a lifted number argument, as an op takes it
                path, dtype, xp = where
                inputs.append(operand_array(evaluate(path, args, kwargs), dtype, xp))
                continue
            else:
                t = _bound_tensor(program, where, leaves)
            # a 0-d CPU tensor goes along with a cuda program, as in eager mode
            inputs.append(t._data if t.device is device else to_device(t._data, device))
        try:
            if entry.schedule is not None and program.grad_writes:
                # each existing .grad computed straight into its array: the copy below is a no-op
                outs, new_values = entry.executor.run(inputs, _grad_arrays(program, leaves, device))
            else:
                outs, new_values = entry.executor.run(inputs)
        except BOUNDS_ERRORS as e:          # a bounds check's: raised as eager raises it,
            where = getattr(e, "user_location", "")     # at the line that traced the check
            raise as_user_error(e, f" (at {where})" if where else "") from None
        except IndexError:                  # a bounds check in a kernel: the user's error
            raise
        except Exception as e:            # nothing was written back yet: eager is still safe
            entry.program, entry.eager_reason = None, f"running the kernels failed: {e!r}"
            self._note("launch", f"running compiled {_function_name(self.fn)} failed ({e!r}); "
                       "it runs eagerly from now on")
            return self.fn(*args, **kwargs)
        if new_values:
            targets = [(_bound_tensor(program, i, leaves), new)
                       for i, new in zip(entry.writebacks, new_values)]
            for tensor, new in targets:
                if new is not tensor._data:     # else a CUDA graph wrote it in place
                    tensor._data[...] = new if tensor.device is device else \
                        to_device(new, tensor.device)
                tensor._version[0] += 1
            for i in entry.quiet_writes:        # `t.data = ...`: no version of its own
                targets[i][0]._version[0] -= 1
        for tensor in program.grad_clears:
            tensor.grad = None
        for gw in program.grad_writes:
            tensor = _bound_tensor(program, gw.input, leaves)
            if gw.output is None:
                tensor.grad = None
                continue
            value = outs[gw.output]
            if tensor.device is not device:
                value = to_device(value, tensor.device)
            if tensor.grad is not None and tensor.grad.shape == value.shape:
                tensor.grad._data[...] = value
            else:
                # (the parameter's layout, as eager's AccumulateGrad gives it)
                value = grad_array(tensor._data, value, tensor.device.xp, False)
                tensor.grad = Tensor._make(value, tensor.dtype, tensor.device)
        make = Tensor._make
        for i in entry.copied_outputs:
            outs[i] = outs[i].copy()
        for i, strides, recipe, offset in entry.out_strides:   # eager's layout, where the
            if outs[i].strides != strides or offset and element_offset(outs[i]) != offset:
                outs[i] = in_layout(outs[i], recipe, device.xp)     # program's differs
        user = [make(o, d, device) for o, d in zip(outs[:program.num_user_outputs],
                                                     entry.out_dtypes)]
        if INFERENCE[0] and STATE.inference:        # made under inference_mode, as eager's
            for t in user:
                t._version = InferenceVersion(t._version)
        for i, flag in entry.arg_requires_grad:     # `x.requires_grad_()` in the call
            leaves[i]._requires_grad = flag
        if entry.joint is not None:
            wrt = [_bound_tensor(program, i, leaves) for i in entry.joint.grad_inputs]
            saved = outs[program.num_user_outputs + program.num_grad_outputs:]
            checked, copied = entry.saved_inputs
            for k in copied:
                saved[k] = saved[k].copy()
            _attach_backward(entry, user, saved, wrt,
                             [_fetched_tensor(entry, program, j, leaves) for j in checked])
        for i, prim in program.consumed.items():
            _mark_consumed(user[i], prim)
        for i, index in program.returned_inputs.items():
            user[i] = _bound_tensor(program, index, leaves)
        for i, (where, recipe) in program.returned_views.items():
            source = _source(program, where, leaves, user)
            again = None if source is None else _view_again(source, recipe)
            if again is not None:       # else the source's strides changed: a copy, as before
                user[i] = again
        if program.number_writes:       # a step counter the traced call changed
            _write_numbers(program.number_writes, args, kwargs)
        for _, call in program.after_replay:     # the Python steps the traced call made
            call()
        tree = program.output_tree
        if tree == _ONE_TENSOR:
            return user[0]
        if not program.attribute_writes:
            return unflatten(tree, user)
        for _, write, i, copy in program.attribute_writes:
            write(make(outs[i].copy(), entry.out_dtypes[i], device) if copy else user[i])
        return unflatten(tree, user)[0]

    def programs(self) -> list:
        return [e.program for e in self.entries.values() if e.program is not None]

    def guards(self) -> list:
        """Per traced entry, the guards a replay checks (`Guard.describe()` says each)."""
        return [e.guards for e in self.entries.values()]


class _StageFailed(Exception):
    def __init__(self, stage: str, error: Exception):
        super().__init__(f"{stage}: {error!r}")
        self.stage, self.error = stage, error


class _stage:
    """`with _stage("deriving the backward"):` turns a failure into a _StageFailed."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and isinstance(error, Exception) and \
                not isinstance(error, _StageFailed):
            raise _StageFailed(self.name, error) from error
        return False


def _replay_flags(compiled: CompiledFunction, key, entry: CompiledEntry,
                  program: TracedProgram, flags: list) -> None:
    """Make `entry` replay the flags its traced call set: it runs only while each holds what the
    call found there (reads before the assignment saw that), and sets each afterwards, as the
    call did, next to the scheduler steps a replay repeats."""
    entry.guards = [flags[g.read.at][0] if getattr(g.read, "at", None) in flags else g
                    for g in entry.guards]
    for at, (g, value) in flags.items():
        compiled._flags_set[(key, at)] = value
        compiled._flag_places[at] = (g, value)
        program.after_replay.append((f"{g.source} = {value!r}",
                                     functools.partial(g.read.write, value)))


def _replay_requires_grad(entry: CompiledEntry, program: TracedProgram, flipped: dict,
                          reachable: dict, lifted: list, names: dict) -> None:
    """Make `entry` replay the `requires_grad` flags its traced call flipped (`flipped`: id ->
    the value the call found): it runs only while each holds what the call found (the guards of
    the lifted ones say so already), and sets each afterwards as the call left it. Guarded on
    the value the call left instead, two steps that flip it in turn would trace every call."""
    lifted_ids = {id(t) for t in lifted}
    for i, was in flipped.items():
        t = reachable[i]
        name = names.get(i, "a tensor the function reaches")
        if i not in lifted_ids:
            entry.guards.append(guards.Guard(f"{name}.requires_grad",
                                             lambda t=t: t.requires_grad, "value",
                                             guards.scalar_key(was)))
        program.after_replay.append((f"{name}.requires_grad = {t.requires_grad}",
                                     functools.partial(setattr, t, "requires_grad",
                                                       t.requires_grad)))


def _unreplayable(program: TracedProgram, tree: tuple, grad_fns: dict, alias_pattern: tuple,
                  leaves_in: list, lifted_bases: set) -> tuple | None:
    """(note tag, reason) when a replay of `program` could not do what its traced call did, so
    calls like it run eagerly: a return value (of flatten's `tree`) it cannot rebuild, autograd
    history written in place into a tensor (a replay would leave its grad_fn), or in-place
    writes where arguments share memory with each other or with state it reads."""
    not_rebuilt = _unreplayable_return(tree)
    if not_rebuilt is not None:
        return "return", not_rebuilt
    rewired = _history_written(program, grad_fns)
    if rewired is not None:
        return "alias", (f"it writes in place to {rewired}, recording autograd history there: "
                         "a replay would leave that tensor's grad_fn as it was")
    if (program.graph.mutations or program.grad_writes) and (
            _written_argument_shared(program, alias_pattern) or
            any(id(_base(t._data)) in lifted_bases for t in leaves_in)):
        return "alias", ("an argument it writes in place shares memory with another, or its "
                         "arguments share memory with state it reads, and it writes some in "
                         "place")
    return None


def _build(entry: CompiledEntry, program: TracedProgram, joint, outputs: list, n_returned: int,
           carried: dict, leaves_in: list, device, backend: str) -> None:
    """Compile `program` (and the backward `joint` derived for it, if any) for `device` and
    fill in what `entry` needs to replay it: the executors, the inputs' fetch plan, the
    write-backs, the outputs' layouts. Raises _StageFailed naming the stage that failed (a
    compiler bug must never cost the user a result: the call's result stands)."""
    stage = ["optimizing the graph"]
    try:
        entry.device = device
        target = kernel_target(backend, device)
        compiled, entry.executor, entry.backward = compile_program(
            program.graph, None if joint is None else joint.info, target, device.xp, stage)
        if compiled.backward is not None:
            entry.joint, entry.partition = joint.info, compiled.partition
        entry.traced, entry.compiled, entry.target = program, compiled, target
        forward = compiled.forward
        entry.graph, entry.pass_stats = forward.graph, forward.stats
        entry.schedule = forward.schedule
        index = {v: i for i, v in enumerate(entry.graph.inputs)}
        entry.writebacks = [index[src] for src, _ in entry.graph.mutations]
        quiet = {program.graph.inputs.index(program.graph.mutations[i][0])
                 for i in program.quiet_writes}
        entry.quiet_writes = tuple(i for i, b in enumerate(entry.writebacks) if b in quiet)
        entry.fetch = _fetch_plan(program, len(entry.graph.inputs), device)
        readers = {id(g.expected): g.read for g in carried.values()}
        for i, b in enumerate(program.bindings[:len(entry.fetch)]):
            if b.kind == "lifted" and id(b.tensor) in readers:
                entry.fetch[i] = (_PLACE, readers[id(b.tensor)])
        entry.out_dtypes = [v.dtype for v in entry.graph.outputs]
        if entry.joint is not None:
            entry.saved_inputs = _saved_inputs(entry, program)
            entry.saved_outputs = _outputs_eager_saves(outputs[:n_returned])
        entry.copied_outputs = _outputs_apart(
            forward.output_roots, outputs[:n_returned],
            [_bound_tensor(program, i, leaves_in) for i, b in enumerate(program.bindings)
             if b.kind == "lifted" or b.kind == "arg" and b.path is not None])
        entry.out_strides = _eager_layouts(program, outputs)
    except Exception as e:
        raise _StageFailed(stage[0], e) from e


def _last_failure(compiled: CompiledFunction, key) -> str:
    """`; last change: <guard>` for the newest entry of `key` whose guards failed, or the
    input whose shape is new when `key` differs from a traced one in shapes only."""
    for full in reversed(compiled._chains.get(key, [])):
        failed = guards.first_failure(compiled.entries[full].guards)
        if failed is not None:
            return f" (last change: {failed.source})"
    for old in reversed(list(compiled._chains)):
        if old[1:] == key[1:] and len(old[0]) == len(key[0]):
            for i, (was, now) in enumerate(zip(old[0], key[0])):
                if was[2:] == now[2:] and was[0] != now[0]:
                    return (f" (last change: tensor input {i} has shape {list(now[0])}, traced "
                            f"at {list(was[0])}: each new shape is traced and compiled again, "
                            "as kiln specializes to shapes; pad inputs to a few sizes, or raise "
                            "kiln._dynamo.config.recompile_limit)")
                if was[2:] == now[2:] and was[1] != now[1]:
                    return (f" (last change: tensor input {i} has another memory layout, byte "
                            f"strides {list(now[1])}, traced at {list(was[1])}: each layout is "
                            "traced again, as eager's results take their layout from the "
                            "inputs'; pass inputs laid out alike, e.g. with .contiguous())")
    return _keyed_number(compiled)


def _keyed_number(compiled: CompiledFunction) -> str:
    """` (last change: ...)` naming a number argument of the call that a trace read into
    Python (`float(step)`, stored in `group["lr"]`), so that each of its values is traced."""
    if not compiled._specialised or compiled._numbers_now is None:
        return ""
    args, kwargs = compiled._numbers_now
    names = _parameter_names(compiled.fn)
    for (i, k), value in _number_arguments(args, kwargs):
        why = compiled._specialised.get((i, k))
        if why is None or not isinstance(why, str):
            continue
        name = k if k is not None else names[i] if i < len(names) else f"argument {i}"
        if why in ("stored", "returned"):
            why = f"a trace {why} it"
        elif not why.startswith("the code"):
            why = f"a trace read it into Python ({why})"
        return (f" (last change: the number argument {name} is {value!r}, keyed by value as "
                f"{why}: each new value is traced again; compute with it by arithmetic and "
                "comparisons only, or pass it as a tensor)")
    return ""


_ONE_TENSOR = ("T",)          # flatten's tree for a function returning one tensor


def _cpu():
    return CPU


def _device_of(outputs, args):
    for t in list(outputs) + flatten(args)[0]:
        return t.device
    return _cpu()


_LIVE: list = []     # weak references to every CompiledFunction made, for reset()


_DUMP_SINKS: list = []


def _dump_if_requested(compiled: CompiledFunction, programs: list) -> None:
    """Hand newly captured programs to `kiln dump` / KILN_DUMP, when one is listening."""
    directory = os.environ.get("KILN_DUMP")
    if not directory and not _DUMP_SINKS:
        return
    from kiln import dump
    for sink in _DUMP_SINKS:
        sink(compiled, programs)
    if directory and not _DUMP_SINKS:
        dump.write_programs(directory, _function_name(compiled.fn), programs,
                            notes=dump.compiled_notes(compiled), compiled=compiled)
