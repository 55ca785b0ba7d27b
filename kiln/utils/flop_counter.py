"""`kiln.utils.flop_counter`: count the FLOPs a model's matrix products and convolutions run,
per module, as `torch.utils.flop_counter.FlopCounterMode` does.

    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counter.get_total_flops()            # forward and backward together
    counter.get_flop_counts()            # {"Global": {"kiln.matmul": n}, "MLP.fc1": {...}}

What is counted: every primitive kiln dispatches eagerly while the counter is active and that
has a FLOP formula. kiln lowers every product to four primitives, so those are the keys where
torch has aten's ops:

- `kiln.matmul`: mm, bmm, addmm, baddbmm, matmul, linear, bilinear, einsum's products and
  scaled_dot_product_attention's two products (torch's aten.mm / addmm / bmm): 2*M*N*K per
  product, times the batch size;
- `kiln.unfold_matmul`: a convolution's forward (torch's aten.convolution);
- `kiln.matmul_fold` and `kiln.matmul_unfold`: its input gradient and weight gradient (together
  torch's aten.convolution_backward).

A backward counts what autograd runs: a matmul's backward is two matmuls, a convolution's its
two gradient products, each only when that gradient is needed; kiln's backward rules run
through the same dispatcher, so the counter sees them as it sees the forward. Each primitive
is counted once, where it is dispatched: a composite (linear, conv2d, attention) adds nothing of
its own.

Module attribution follows torch's ModuleTracker: a module's forward ops are counted under its
name and every enclosing module's ("Global" holds everything); names are the class name of the
first module called and its submodules' attribute paths ("MLP.fc1"); in backward, a module
counts from the moment its output's gradient is ready until its inputs' gradients all are (or,
for inputs that need no gradient, until the backward pass ends).

Eager execution only: a `kiln.compile`d function's replay runs its compiled program without
dispatching ops, so it adds nothing, and the first call's trace is not counted either (the
trace also derives the backward graph, which would count work that never runs). Count a model
eagerly, or run its forward on the meta device to count without computing (torch likewise
counts what its dispatcher runs: eager ops, or ops on FakeTensors).

Where kiln's counts differ from torch's (the numbers follow what kiln computes): a matrix-vector
product, a dot or a bilinear (mv, dot, bilinear) is a matmul here and uncounted in torch;
torch counts a grouped convolution's weight gradient `groups` times over, kiln what it runs; a
depthwise convolution is a multiply-sum here (uncounted); a transposed convolution runs as a
convolution of the zero-dilated input (counted as such); torch's GPU attention kernels count
five products in backward (they recompute the scores), where the math path (kiln's, and
torch's SDPBackend.MATH) counts four; torch 2.13's CPU fused attention kernel counts nothing.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import defaultdict
from functools import wraps
from math import prod
from typing import Any, Callable

import kiln
from kiln import Tensor
from kiln.ops import op_hooks
from kiln.utils._pytree import tree_flatten

__all__ = ["FlopCounterMode", "register_flop_formula"]

_KEY_PREFIX = "kiln."
flop_registry: dict[str, Callable] = {}      # primitive name -> formula on shapes


def _primitive_name(target) -> str:
    """A primitive's name from "matmul", "kiln.matmul" or the op itself (`P.matmul`)."""
    if isinstance(target, str):
        name = target[len(_KEY_PREFIX):] if target.startswith(_KEY_PREFIX) else target
    else:
        name = getattr(target, "name", None) or getattr(target, "__name__", None)
    if name not in op_hooks.primitive_names():
        raise ValueError(f"FLOP formula target {target!r}: expected the name of a kiln "
                         f"primitive (such as 'matmul' or 'kiln.matmul'); a composite op "
                         f"(linear, conv2d) is counted through the primitives it runs")
    return name


def shape_wrapper(formula: Callable) -> Callable:
    """`formula(*input_shapes, out_shape=..., **attrs)` as a function of the op's values
    (tensor arguments become their shapes, as in torch)."""
    if getattr(formula, "_on_values", False):
        return formula

    @wraps(formula)
    def on_values(*args, out_val=None, **attrs):
        shapes = [op_hooks.shape_of(a) for a in args]
        return formula(*shapes, out_shape=op_hooks.shape_of(out_val), **attrs)
    on_values._on_values = True
    return on_values


def register_flop_formula(targets, get_raw: bool = False) -> Callable:
    """Decorator: use the function as the FLOP formula of kiln primitive(s) `targets` (a name,
    "kiln.<name>" or `P.<name>`, or a list of them). The formula gets the op's input shapes
    (Python numbers as they are), `out_shape=` and the op's attributes as keywords; with
    `get_raw=True` the tensors themselves and `out_val=` instead."""
    def register_fun(formula: Callable) -> Callable:
        counted = formula if get_raw else shape_wrapper(formula)
        counted._on_values = True
        for target in targets if isinstance(targets, (list, tuple)) else (targets,):
            name = _primitive_name(target)
            if name in flop_registry:
                raise RuntimeError(f"duplicate registrations for {_KEY_PREFIX}{name}")
            flop_registry[name] = counted
        return counted
    return register_fun


@register_flop_formula("matmul")
def matmul_flop(a_shape, b_shape, out_shape=None, **attrs) -> int:
    """A (batched) matrix product: 2*M*N*K per matrix (torch's mm/bmm formula)."""
    return 2 * prod(out_shape) * a_shape[-1]


@register_flop_formula("unfold_matmul")
def unfold_matmul_flop(x_shape, w_shape, out_shape=None, **attrs) -> int:
    """A convolution's forward, windows (N*oh*ow, kh*kw*C) @ weight (kh*kw*C, O): torch's
    2 * N * O * C * kh*kw * oh*ow."""
    return 2 * prod(out_shape) * w_shape[0]


@register_flop_formula("matmul_unfold")
def matmul_unfold_flop(a_shape, x_shape, out_shape=None, **attrs) -> int:
    """A convolution's weight gradient, g^T (O, N*oh*ow) @ windows (N*oh*ow, kh*kw*C)."""
    return 2 * prod(out_shape) * a_shape[1]


@register_flop_formula("matmul_fold")
def matmul_fold_flop(a_shape, b_shape, out_shape=None, **attrs) -> int:
    """A convolution's input gradient, fold(g (N*oh*ow, O) @ weight^T (O, kh*kw*C))."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


# ----------------------------------------------------------------------------- table

_SUFFIXES = ["", "K", "M", "B", "T"]


def get_suffix_str(number: int) -> str:
    """The unit a table shows `number` in: "" , K, M, B or T, by its digits (1001M, not
    1.001B, as torch prints it)."""
    index = max(0, min(len(_SUFFIXES) - 1, (len(str(number)) - 2) // 3))
    return _SUFFIXES[index]


def convert_num_with_suffix(number: int, suffix: str) -> str:
    index = _SUFFIXES.index(suffix)
    return f"{number / 1000 ** index:.3f}" + _SUFFIXES[index]


def convert_to_percent_str(num: int, denom: int) -> str:
    if denom == 0:
        return "0%"
    return f"{num / denom:.2%}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _simple_table(rows: list, headers: list) -> str:
    """rows under headers as tabulate's "simple" format lays them out (the first column
    left-aligned, the others right-aligned, leading spaces kept), which torch's table uses."""
    rows = [list(r) for r in rows]
    for i in range(1, len(headers)):
        # a column of numbers only (FLOPs under a thousand, which get no K/M suffix) is
        # printed as tabulate prints numbers: "160", not "160.000"
        if all(_is_number(r[i]) for r in rows):
            for r in rows:
                r[i] = format(float(r[i]), "g")
    widths = [max([len(h) + 2] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in rows])


# ----------------------------------------------------------------------------- modules

class _ModuleTracker:
    """Which modules' forward (or backward) is running: `parents` holds their names and
    always "Global" (torch.utils.module_tracker.ModuleTracker, through kiln's global module
    hooks and tensor gradient hooks)."""

    def __init__(self) -> None:
        self.parents = {"Global"}
        self._known_modules: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._seen_modules: weakref.WeakSet = weakref.WeakSet()
        self._handles: list = []

    def _get_mod_name(self, mod) -> str:
        if mod not in self._known_modules:
            self._known_modules[mod] = type(mod).__name__
        mod_name = self._known_modules[mod]
        if mod not in self._seen_modules:
            for name, submod in mod.named_children():
                self._known_modules[submod] = f"{mod_name}.{name}"
                self._get_mod_name(submod)
            self._seen_modules.add(mod)
        return mod_name

    def _on_gradients(self, tensors: list, fn: Callable, wait_for_all: bool) -> None:
        """Call `fn()` during each backward pass when the first (or, `wait_for_all`, the last)
        of `tensors` gets its gradient; at the pass's end forget which did and put `parents`
        back to {"Global"} (torch resets it when its engine finishes)."""
        distinct = list({id(t): t for t in tensors}.values())
        seen: set = set()

        def hook_for(i: int):
            def hook(grad):
                if i not in seen:
                    first = not seen
                    seen.add(i)
                    if (first and not wait_for_all) or len(seen) == len(distinct):
                        fn()
                return None
            return hook

        def pass_ended(grads) -> None:
            seen.clear()
            self.parents = {"Global"}

        for i, t in enumerate(distinct):
            self._handles.append(t.register_hook(hook_for(i)))
        # kiln runs an "all" multi-grad hook when the backward pass that reached them ends
        self._handles.append(kiln.autograd.graph.register_multi_grad_hook(
            distinct, pass_ended, mode="all"))

    def _fw_pre_hook(self, mod, args) -> None:
        name = self._get_mod_name(mod)
        self.parents.add(name)
        tensors = [a for a in tree_flatten(args)[0] if isinstance(a, Tensor) and a.requires_grad]
        if tensors:                       # its backward ends once its inputs' gradients are in
            self._on_gradients(tensors, lambda: self.parents.discard(name), wait_for_all=True)

    def _fw_post_hook(self, mod, args, output) -> None:
        name = self._get_mod_name(mod)
        self.parents.discard(name)
        tensors = [a for a in tree_flatten(output)[0]
                   if isinstance(a, Tensor) and a.requires_grad]
        if tensors:                       # and begins when its output's gradient is ready
            self._on_gradients(tensors, lambda: self.parents.add(name), wait_for_all=False)

    def __enter__(self) -> _ModuleTracker:
        self._pre = kiln.nn.module.register_module_forward_pre_hook(self._fw_pre_hook)
        self._post = kiln.nn.module.register_module_forward_hook(self._fw_post_hook)
        return self

    def __exit__(self, *exc) -> None:
        self._pre.remove()
        self._post.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# ----------------------------------------------------------------------------- the counter

class FlopCounterMode:
    """Count the FLOPs of the matrix products and convolutions run inside the `with` block,
    per module (torch.utils.flop_counter.FlopCounterMode); see the module docstring for what
    is counted and under which keys ("kiln.matmul", "kiln.unfold_matmul",
    "kiln.matmul_unfold", "kiln.matmul_fold" where torch has aten.mm, aten.convolution, ...).

    Args:
        mods: not needed (torch's deprecated argument; modules are tracked as they run).
        depth: how many levels of the module tree `get_table` shows by default.
        display: print the table when the block ends.
        custom_mapping: {primitive name or "kiln.<name>": formula} to count more ops or count
            one differently; a formula takes the input shapes, `out_shape=` and the op's
            attributes (one made by `register_flop_formula(..., get_raw=True)` the values).
    """

    def __init__(self, mods=None, depth: int = 2, display: bool = True,
                 custom_mapping: dict[Any, Callable] | None = None) -> None:
        self.flop_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.depth = depth
        self.display = display
        if mods is not None:
            warnings.warn("mods argument is not needed anymore, you can stop passing it",
                          stacklevel=2)
        self.flop_registry = dict(flop_registry)
        for target, formula in (custom_mapping or {}).items():
            self.flop_registry[_primitive_name(target)] = shape_wrapper(formula)
        self.mod_tracker = _ModuleTracker()
        self._active = False
        self._thread = threading.get_ident()

    def get_total_flops(self) -> int:
        """All FLOPs counted (the "Global" entry)."""
        return sum(self.flop_counts["Global"].values())

    def get_flop_counts(self) -> dict[str, dict[str, int]]:
        """{module name: {op key: FLOPs}}; "Global" holds every op, module names are the root
        module's class name and its submodules' paths ("MLP.fc1")."""
        return {k: dict(v) for k, v in self.flop_counts.items()}

    def get_table(self, depth: int | None = None) -> str:
        """torch's table: a row per module down to `depth` levels (indented one space per
        level) with its total, and under it a row per op, each with FLOPs and % of the total;
        a "Global" row on top only where some FLOPs ran outside every module."""
        if depth is None:
            depth = self.depth
        if depth is None:
            depth = 999999
        global_flops = self.get_total_flops()
        suffix = get_suffix_str(global_flops)
        global_subsumed = False

        def process_mod(mod_name: str, level: int) -> list:
            nonlocal global_subsumed
            counts = self.flop_counts.get(mod_name, {})
            total = sum(counts.values())
            global_subsumed |= total >= global_flops
            padding = " " * level
            rows = [[padding + mod_name, convert_num_with_suffix(total, suffix),
                     convert_to_percent_str(total, global_flops)]]
            for op, n in counts.items():
                rows.append([padding + " - " + str(op), convert_num_with_suffix(n, suffix),
                             convert_to_percent_str(n, global_flops)])
            return rows

        values: list = []
        for mod in sorted(self.flop_counts):
            if mod == "Global":
                continue
            mod_depth = mod.count(".") + 1
            if mod_depth > depth:
                continue
            values.extend(process_mod(mod, mod_depth - 1))
        if "Global" in self.flop_counts and not global_subsumed:
            for row in values:
                row[0] = " " + row[0]
            values = process_mod("Global", 0) + values
        if not values:
            values = [["Global", "0", "0%"]]
        return _simple_table(values, ["Module", "FLOP", "% Total"])

    def _count(self, name: str, args: tuple, attrs: dict, out) -> None:
        formula = self.flop_registry.get(name)
        # ops of other threads are theirs (torch's modes are per thread too); kiln's autograd
        # runs a backward on the thread that called it
        if formula is None or threading.get_ident() != self._thread or \
                kiln.compiler.is_compiling():
            return
        flops = formula(*args, out_val=out, **attrs)
        key = _KEY_PREFIX + name
        for parent in set(self.mod_tracker.parents):
            self.flop_counts[parent][key] += flops

    # (not reentrant, as torch's)
    def __enter__(self) -> FlopCounterMode:
        self.flop_counts.clear()
        self._thread = threading.get_ident()
        self.mod_tracker.__enter__()
        op_hooks.add_op_observer(self._count)
        self._active = True
        return self

    def __exit__(self, *exc) -> bool:
        if not self._active:
            raise RuntimeError("FlopCounterMode.__exit__ called without a matching __enter__")
        self._active = False
        op_hooks.remove_op_observer(self._count)
        self.mod_tracker.__exit__()
        if self.display:
            print(self.get_table(self.depth))
        return False
