"""What a compiled replay hands back as eager mode did: outputs that eager returned as (views
of) arguments, state, `.grad`s or one another taken again from them (`_returned_views`, and
with autograd `_returned_grad_view`), outputs eager gave memory of their own kept apart where
the passes merged them (`output_roots`, `_outputs_apart`), and each output's eager layout
(`_eager_layouts`). Used by `kiln.compiler`'s trace (to record) and replay (to rebuild)."""

from __future__ import annotations

import numpy as np

from kiln.ir.ops import PRIMITIVES
from kiln.ir.schedule import STRIDED_VIEWS
from kiln.runtime.device import is_host_array
from kiln.runtime.layouts import layout_recipe
from kiln.tracer import dispatch as _dispatch
from kiln.tracer.autograd import no_grad as _no_grad
from kiln.tracer.storage import address, element_offset, memory_root
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import TracedProgram

def output_roots(graph) -> tuple:
    """Where each output of an optimized graph gets its memory, past the strided views taken
    of it: ("constant",) a folded constant, ("input",) an input or what a write-back computes
    in an input's memory, ("own", k) a value computed first for output k (k < i: output i
    is output k again, or a view of it; cse computes `return EMA * 1, EMA * 1` once)."""
    made = {n.out: n for n in graph.nodes}
    written = {new for _, new in graph.mutations}   # (maybe computed in the input's memory)
    constants = set(graph.constants)
    first, roots = {}, []
    for i, v in enumerate(graph.outputs):
        while v in made and made[v].op in STRIDED_VIEWS:
            v = made[v].inputs[0]
        if v in constants:
            roots.append(("constant",))
        elif v in graph.inputs or v in written:
            roots.append(("input",))
        else:
            roots.append(("own", first.setdefault(v, i)))
    return tuple(roots)

def _outputs_apart(roots: tuple, outputs: list, held: list) -> tuple:
    """The outputs a replay must copy: those eager mode gave memory of their own that the
    optimized graph takes as (a view of) an input, an earlier output or a constant (which
    every replay would return again, with the caller's writes in it). Simplification
    makes `x[:, 1] * 1` the view `x[:, 1]`, and cse computes `return EMA * 1, EMA * 1` once:
    a caller's write to such a result would change the input or the other result. `roots`:
    the graph's `output_roots`; `outputs`: the traced call's results; `held`: the tensors it
    was given or read."""
    copied = []
    for i, (root, t) in enumerate(zip(roots, outputs)):
        if root[0] == "constant":   # folded (`x.zero_(); return x.amax()`): the program's own
            copied.append(i)
        elif root[0] == "input":
            if not any(_shares_memory(t, h) for h in held):
                copied.append(i)
        elif root[1] != i and not _same_memory(outputs[root[1]], t):
            copied.append(i)
    return tuple(copied)

def _same_memory(a: Tensor, b: Tensor) -> bool:
    """Whether `a` and `b` overlap or are views of one allocation (`h[0]` and `h[1:]` are: a
    caller's write through `h` reaches both)."""
    return _shares_memory(a, b) or a.device is b.device and a.device.type != "meta" and \
        memory_root(a._data) is memory_root(b._data)

def _shares_memory(a: Tensor, b: Tensor) -> bool:
    if a is b:
        return True
    if a.device is not b.device or a.device.type == "meta":
        return False
    return bool(a.device.xp.may_share_memory(a._data, b._data))

def _returned_views(program: TracedProgram, outputs: list, skip: list, leaves: list) -> dict:
    """The outputs (not requiring grad, not in `skip`) that use the memory of a tensor the call
    was given or read (`x`, `p.data`), of a `.grad` it wrote, or of an earlier output, as eager
    mode returned them: output index -> (where that tensor is: `_source`'s key, how to take
    the output from it again: `_view_again`'s recipe). The graph computes such an output as a
    value of its own, in new memory wherever the call wrote that tensor in place
    (`x.t().add_(1); return x`), or a `.grad` (`return p.grad`), or where the passes made two
    values of one (`y, y.t()` after `y.add_(1)`); eager mode's output is that tensor or a view
    of it, and a caller's write through it must reach the tensor. An output is taken again
    from an earlier output, or from a later one that holds more of their memory (`h[0]` from
    `h` in `return h[0], h`); the dict lists each source before the views taken of it."""
    graph = program.graph
    made = {n.out: n for n in graph.nodes}
    inputs = {v: i for i, v in enumerate(graph.inputs)}
    written = {new: src for src, new in graph.mutations}
    sources = [(i, _bound_tensor(program, i, leaves)) for i, b in enumerate(program.bindings)
               if b.kind == "lifted" or b.kind == "arg" and b.path is not None]
    sources += [(("grad", k), gw.tensor.grad) for k, gw in enumerate(program.grad_writes)
                if gw.output is not None and gw.tensor.grad is not None]
    found = {}
    for i, t in enumerate(outputs):
        if i in skip or not _plain(t):
            continue
        if t.requires_grad:
            found.update(_returned_grad_view(graph, outputs, i))
            continue
        # the view primitives the graph took the output with, from an input or its new value
        v, chain = _view_chain(graph, made, graph.outputs[i])
        start = inputs.get(written.get(v, v))
        span = _bytes(t._data) if t._data.size else None
        larger = [k for k in range(i + 1, len(outputs)) if span is not None and
                  _plain(outputs[k]) and outputs[k].device is t.device and
                  outputs[k]._data.size and _within(t._data, outputs[k]._data) and
                  _bytes(outputs[k]._data) != span]
        for where, source in sources + [(("out", k), outputs[k]) for k in range(i)] + \
                [(("out", k), outputs[k]) for k in larger]:
            if not _plain(source) or not _shares_memory(source, t):
                continue
            if source is t:
                recipe = ("same",)
            elif _same_layout(source, t):
                # `x.data` has a version counter of its own (its value when returned), where
                # `x.detach()` shares x's
                recipe = ("views", ()) if t._version is source._version else \
                    ("data", t._version[0])
            else:
                # (of a tensor requiring grad, as `p.data[1:]`: by place, outside autograd)
                recipe = None if source.requires_grad else \
                    ("views", tuple((op, attrs) for op, attrs, _ in reversed(chain)))
                if recipe is None or where != start or \
                        not _same_layout(_view_again(source, recipe), t):
                    recipe = _strided_recipe(source._data, t._data)
            if recipe is not None:
                found[i] = (where, recipe)
                break
    # each output taken from another comes after that one's own remaking (acyclic: a later
    # source holds strictly more memory, an earlier one at least as much)
    ordered = {}

    def place(i):
        where = found[i][0]
        if type(where) is tuple and where[0] == "out" and where[1] in found and \
                where[1] not in ordered:
            place(where[1])
        ordered[i] = found[i]

    for i in found:
        if i not in ordered:
            place(i)
    return ordered

def _view_chain(graph, made: dict, v) -> tuple:
    """The value graph value `v` is a view of (itself where it is no view), and the view
    primitives (op, attrs, their input value) from `v` back to it, the last taken first."""
    chain = []
    while v in made and made[v].op in STRIDED_VIEWS:
        chain.append((made[v].op, made[v].attrs, made[v].inputs[0]))
        v = made[v].inputs[0]
    return v, chain

def _returned_grad_view(graph, outputs: list, i: int) -> dict:
    """{i: (where, recipe)} where output `i`, which requires grad, is a view of another output
    requiring grad as eager returned them (`return h, h[1:]`, or `h.t(), h.unsqueeze(0)` of
    one `h`), else {}. A replay takes it again from that output through view primitives
    recorded by autograd, so that a caller's in-place write through one reaches the other's
    values and gradient (CopySlices), as in eager mode; the compiled backward then gets no
    gradient for output `i` of its own, which the view passes on to the source's. Only an
    output no later than `i` or a later one holding more of its memory is a source."""
    t = outputs[i]
    made = {n.out: n for n in graph.nodes}
    root, chain = _view_chain(graph, made, graph.outputs[i])
    span = _bytes(t._data) if t._data.size else None
    for k, source in enumerate(outputs):
        if k == i or not source.requires_grad or not _plain(source) or \
                not _shares_memory(source, t):
            continue
        if k > i and (span is None or not source._data.size or
                      not _within(t._data, source._data) or _bytes(source._data) == span):
            continue
        if source is t:
            return {i: (("out", k), ("same",))}
        source_root, source_chain = _view_chain(graph, made, graph.outputs[k])
        back = _undo_views(source_chain) if source_root is root else None
        if back is None:
            continue
        recipe = ("views", back + tuple((op, attrs) for op, attrs, _ in reversed(chain)))
        with _no_grad():
            again = _view_again(source, recipe)
        if _same_layout(again, t):
            return {i: (("out", k), recipe)}
    return {}

def _undo_views(chain: list) -> tuple | None:
    """View primitives taking the end of `chain` (`_view_chain`'s) back to its start, or None
    where a step cannot be undone by a view (a slice, an expand)."""
    back = []
    for op, attrs, before in chain:
        if op == "reshape":
            back.append(("reshape", {"shape": tuple(before.shape)}))
        elif op == "permute":
            perm = dict(attrs)["perm"]
            back.append(("permute", {"perm": tuple(int(a) for a in np.argsort(perm))}))
        else:
            return None
    return tuple(back)

def _source(program: TracedProgram, where, leaves: list, user: list) -> Tensor | None:
    """The tensor a returned view is taken from in this call (`_returned_views`)."""
    if type(where) is int:
        return _bound_tensor(program, where, leaves)
    if where[0] == "grad":
        return _bound_tensor(program, program.grad_writes[where[1]].input, leaves).grad
    return user[where[1]]

def _eager_layouts(program: TracedProgram, outputs: list) -> tuple:
    """(output index, byte strides, `layout_recipe`, storage offset) of each traced output a
    replay computes, as eager laid it out: its layout follows from the inputs' (TensorIterator's
    rule: `x.t() * 2` is transposed as `x.t()` is), which the guard key fixes, while the passes
    and kernels write C order. A returned input or view of one is taken again from its source
    (`_returned_views`)."""
    taken = set(program.returned_inputs) | set(program.returned_views)
    layouts = []
    for i, t in enumerate(outputs[:program.num_user_outputs]):
        a = t._data
        # (a storage offset on the host only: CuPy's is unverified here, and a wrong one would
        # copy on every replay)
        offset = element_offset(a) if is_host_array(a) else 0
        recipe = None if i in taken or not a.ndim else \
            layout_recipe(a.shape, a.strides, a.itemsize, offset)
        if recipe is not None:
            layouts.append((i, a.strides, recipe, offset))
    return tuple(layouts)

def _plain(t: Tensor) -> bool:
    """Whether `t` holds a plain array of its device (NumPy's, CuPy's), whose memory a replay
    can take views of (not a meta tensor's, not a wrapper subclass's)."""
    return t.device.type in ("cpu", "cuda") and type(t._data) is t.device.xp.ndarray

def _same_layout(a: Tensor | None, b: Tensor) -> bool:
    """Whether `a` and `b` are the same elements of the same memory."""
    return a is not None and a._data.shape == b._data.shape and \
        a._data.strides == b._data.strides and address(a._data) == address(b._data)

def _strided_recipe(source: np.ndarray, view: np.ndarray):
    """`view`'s place in `source`'s memory, as `_view_again` takes it (for `source`'s strides
    only), or None where it reaches outside `source` or starts between two elements."""
    offset = address(view) - address(source)
    if offset < 0 or offset % source.itemsize or view.size and not _within(view, source):
        return None
    return ("strided", source.strides, offset // source.itemsize, view.shape, view.strides)

def _view_again(source: Tensor, recipe: tuple) -> Tensor | None:
    """`source` seen as a returned view of it was (`_returned_views`), sharing its memory and
    version counter: through the view primitives the graph took it with, or at the place in
    memory it had (only while `source` has the strides it had then; else None)."""
    if recipe[0] == "same":
        return source
    if recipe[0] == "data":
        out = Tensor._make(source._data, source.dtype, source.device)
        out._version = [recipe[1]]
        return out
    if recipe[0] == "views":
        if not recipe[1]:
            out = Tensor._make(source._data, source.dtype, source.device)
            out._version = source._version
            return out
        for op, attrs in recipe[1]:
            source = _dispatch.apply(PRIMITIVES[op], (source,), dict(attrs))
        return source
    _, strides, offset, shape, view_strides = recipe
    data = source._data
    if not _plain(source) or data.strides != strides:
        return None
    as_strided = source.device.xp.lib.stride_tricks.as_strided
    flat = as_strided(data, (offset + 1,), (data.itemsize,))
    # (within `source`: `_strided_recipe` takes no view reaching outside it, and `source` has
    # the shape and strides it had then)
    out = Tensor._make(as_strided(flat[offset:], shape, view_strides), source.dtype,
                       source.device)
    out._version = source._version
    return out

def _bytes(a: np.ndarray) -> tuple:
    """The first and one past the last byte address `a`'s elements use (`a` not empty)."""
    start = stop = address(a)
    for n, step in zip(a.shape, a.strides):
        if step < 0:
            start += (n - 1) * step
        else:
            stop += (n - 1) * step
    return start, stop + a.itemsize

def _within(view: np.ndarray, owner: np.ndarray) -> bool:
    (low, high), (start, stop) = _bytes(view), _bytes(owner)
    return start <= low and high <= stop

def _bound_tensor(program: TracedProgram, index: int, leaves: list) -> Tensor:
    """The tensor graph input `index` stands for in this call."""
    b = program.bindings[index]
    if b.kind == "arg":
        return leaves[b.path]
    if b.kind == "grad":
        owner = b.tensor if b.path is None else _bound_tensor(program, b.path, leaves)
        return owner.grad
    return b.tensor
