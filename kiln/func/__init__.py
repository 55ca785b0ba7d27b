"""`kiln.func` (torch.func): function transforms (grad, vjp, jvp, jacobians, hessian, vmap)
and running a module with parameters given as arguments (functional_call, stack_module_state).

kiln builds these on its reverse-mode autograd rather than on functorch's transform levels:
each transform calls the function on copies of its inputs that require grad and asks
`kiln.autograd.grad` for the derivatives. When an input already requires grad (an outer
transform's copy, or a model's parameters), the copy stays attached to it and the derivatives
are taken with `create_graph=True`, so transforms nest (`jacfwd(jacrev(f))`,
`grad(grad(f))`) and their results can be differentiated by an ordinary backward. A tensor
requiring grad that `func` reads from a closure, rather than receiving it, does not make the
result differentiable: pass it as an argument.

kiln has no forward-mode AD: `jvp` is the transpose of a vjp (a double backward), and
`jacfwd` computes the Jacobian by reverse mode, one backward pass per output element, which
gives the same values. `vmap` (also `kiln.vmap`, as torch.vmap is torch.func.vmap) maps by
calling the function once per slice and stacking, so it transforms any function, one that
calls `grad` inside included (per-sample gradients), at the cost of one call per element.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import kiln
from kiln.func.pytree import broadcast_prefix, tree_flatten, tree_map, tree_unflatten
from kiln.tracer.functional_extra.misc import map_slices

__all__ = ["functional_call", "stack_module_state", "grad", "grad_and_value", "vjp", "jvp",
           "linearize", "jacrev", "jacfwd", "hessian", "vmap", "functionalize", "debug_unwrap",
           "replace_all_batch_norm_modules_"]


# ----------------------------------------------------------------------------- inputs

def _tracks_outer(args: tuple, kwargs: dict) -> bool:
    """Whether derivatives must stay differentiable: grad mode is on and some input tensor
    already requires grad (an enclosing transform's, or a parameter's)."""
    if not kiln.is_grad_enabled():
        return False
    leaves, _ = tree_flatten((args, kwargs))
    return any(isinstance(x, kiln.Tensor) and x.requires_grad for x in leaves)


def _as_input(x, track: bool, api: str):
    """The tensor a transform differentiates with respect to, standing for `x`."""
    if not isinstance(x, kiln.Tensor):
        raise TypeError(f"{api}: expected the differentiated arguments to hold only tensors, "
                        f"got {type(x).__name__}; pass other values in arguments that "
                        f"argnums does not name")
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{api}: only tensors of floating point dtype can be "
                           f"differentiated, got one of dtype {x.dtype.name}")
    if track and x.requires_grad:
        return x.view_as(x)           # a new node, still attached to the outer graph
    return x.detach().requires_grad_(True)


def _argnums_tuple(argnums, num_args: int, api: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums:
        raise RuntimeError(f"{api}: argnums must be non-empty")
    for n in nums:
        if not isinstance(n, int):
            raise RuntimeError(f"{api}: argnums must be int or Tuple[int, ...], got {argnums!r}")
        if not -num_args <= n < num_args:
            raise RuntimeError(f"{api}: Got argnums={n}, but only {num_args} positional "
                               f"inputs")
    return tuple(n % num_args for n in nums)


def _substitute(args: tuple, nums: tuple, track: bool, api: str):
    """`args` with the arguments at `nums` replaced by differentiable copies; also the flat
    list of copies and, per argnum, its (count, spec) to rebuild derivatives in its shape."""
    args = list(args)
    flat, layout = [], []
    for n in nums:
        leaves, spec = tree_flatten(args[n])
        copies = [_as_input(x, track, api) for x in leaves]
        args[n] = tree_unflatten(copies, spec)
        flat += copies
        layout.append((len(copies), spec))
    return tuple(args), flat, layout


def _per_argnum(values: list, layout: list, argnums):
    """Flat per-input values regrouped: the argument's shape, or a tuple of them when
    argnums is a tuple."""
    out, at = [], 0
    for count, spec in layout:
        out.append(tree_unflatten(values[at:at + count], spec))
        at += count
    return out[0] if isinstance(argnums, int) else tuple(out)


def _derivatives(outputs: list, inputs: list, seeds: list, track: bool) -> list:
    """d(outputs . seeds)/d inputs, zeros for an input the outputs do not use."""
    pairs = [(o, s) for o, s in zip(outputs, seeds) if o.requires_grad]
    grads = [None] * len(inputs)
    if pairs:
        grads = kiln.autograd.grad([o for o, _ in pairs], inputs, [s for _, s in pairs],
                                   retain_graph=True, create_graph=track, allow_unused=True)
    return [kiln.zeros_like(x) if g is None else (g if track else g.detach())
            for g, x in zip(grads, inputs)]


def _plain(tree, track: bool):
    """Tensors handed back to the caller: detached unless derivatives are being tracked."""
    if track:
        return tree
    return tree_map(lambda t: t.detach() if isinstance(t, kiln.Tensor) else t, tree)


def _split_aux(out, has_aux: bool, api: str):
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise RuntimeError(f"{api}: output of function f should be a tuple: (output, aux) if "
                           f"has_aux is True")
    return out


# ----------------------------------------------------------------------------- grad

def grad_and_value(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """A function returning (gradient of `func`'s scalar output with respect to the
    arguments at `argnums`, that output) (torch.func.grad_and_value).

    Args:
        func: returns a scalar tensor, or (scalar, aux) with has_aux.
        argnums: which positional argument (int) or arguments (tuple) to differentiate; each
            may be a tensor or a tuple/list/dict of tensors (a parameter dict).
        has_aux: `func` returns (output, aux); aux is passed back untouched.

    Returns:
        `(grads, value)`, or `(grads, (value, aux))` with has_aux; grads have the shape of
        the argument (a tuple of them when argnums is a tuple).
    """
    api = "grad_and_value(f)(*args)"

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        nums = _argnums_tuple(argnums, len(args), api)
        track = _tracks_outer(args, kwargs)
        with kiln.enable_grad():
            call_args, inputs, layout = _substitute(args, nums, track, api)
            out, aux = _split_aux(func(*call_args, **kwargs), has_aux, api)
            if not isinstance(out, kiln.Tensor):
                raise RuntimeError(f"{api}: Expected f(*args) to return a Tensor, got "
                                   f"{type(out)}")
            if out.dim() != 0:
                raise RuntimeError(f"{api}: Expected f(*args) to return a scalar Tensor, got "
                                   f"tensor with {out.dim()} dims. Maybe you wanted to use the "
                                   f"vjp or jacrev APIs instead?")
            grads = _derivatives([out], inputs, [kiln.ones_like(out)], track)
        value = _plain(out, track)
        grads = _per_argnum(grads, layout, argnums)
        if has_aux:
            return grads, (value, _plain(aux, track))
        return grads, value
    return wrapper


def grad(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """A function returning the gradient of `func`'s scalar output with respect to the
    arguments at `argnums` (torch.func.grad); `(grads, aux)` with has_aux. Arguments as in
    `grad_and_value`."""
    inner = grad_and_value(func, argnums, has_aux)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        grads, value = inner(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads
    return wrapper


# ----------------------------------------------------------------------------- vjp, jvp

def vjp(func: Callable, *primals, has_aux: bool = False):
    """`func(*primals)` and a function mapping cotangents (shaped like the output) to the
    vector-Jacobian products, one per primal (torch.func.vjp).

    Returns:
        `(output, vjp_fn)`, or `(output, vjp_fn, aux)` with has_aux. `vjp_fn(cotangents)`
        returns a tuple with one entry per primal, shaped like it; it may be called again.
    """
    api = "vjp(f, *primals)"
    track = _tracks_outer(primals, {})
    nums = tuple(range(len(primals)))
    with kiln.enable_grad():
        call_args, inputs, layout = _substitute(primals, nums, track, api)
        out, aux = _split_aux(func(*call_args), has_aux, api)
    outputs, out_spec = tree_flatten(out)
    for o in outputs:
        if not isinstance(o, kiln.Tensor):
            raise RuntimeError(f"{api}: Expected f to return a Tensor or a tuple/list/dict of "
                               f"Tensors, got {type(o).__name__}")

    def vjp_fn(cotangents, retain_graph: bool = True, create_graph: bool | None = None):
        seeds, spec = tree_flatten(cotangents)
        if spec != out_spec:
            raise RuntimeError("Expected pytree structure of cotangents to be the same as "
                               "pytree structure of outputs to the function")
        for o, s in zip(outputs, seeds):
            if tuple(s.shape) != tuple(o.shape):
                raise RuntimeError(f"Mismatch in shape: a cotangent has shape {list(s.shape)} "
                                   f"and the output it belongs to {list(o.shape)}")
        graph = track or bool(create_graph) or (
            kiln.is_grad_enabled() and any(s.requires_grad for s in seeds))
        with kiln.enable_grad():
            grads = _derivatives(outputs, inputs, seeds, graph)
        per = _per_argnum(grads, layout, nums)
        return per

    result = (_plain(out, track), vjp_fn)
    return result + (_plain(aux, track),) if has_aux else result


def jvp(func: Callable, primals, tangents, *, strict: bool = False, has_aux: bool = False):
    """`func(*primals)` and the Jacobian-vector product with `tangents` (torch.func.jvp).

    kiln has no forward mode: J v is computed as the derivative, with respect to a dummy
    cotangent u, of the vjp u^T J applied to v (two backward passes).

    Returns:
        `(output, jvp_out)`, or `(output, jvp_out, aux)` with has_aux; jvp_out is shaped like
        the output.
    """
    api = "jvp(f, primals, tangents)"
    if not isinstance(primals, tuple):
        raise RuntimeError(f"{api}: Expected primals to be a tuple. E.g. it should be valid to "
                           f"call f(*primals).")
    if not isinstance(tangents, tuple):
        raise RuntimeError(f"{api}: Expected tangents to be a tuple.")
    p_leaves, p_spec = tree_flatten(primals)
    t_leaves, t_spec = tree_flatten(tangents)
    if p_spec != t_spec:
        raise RuntimeError(f"{api}: Expected primals and tangents to have the same python "
                           f"structure.")
    for p, t in zip(p_leaves, t_leaves):
        if tuple(p.shape) != tuple(t.shape):
            raise RuntimeError(f"{api}: Expected primals and tangents to have the same shape, "
                               f"got {list(p.shape)} and {list(t.shape)}")
    track = _tracks_outer(primals, {}) or _tracks_outer(tangents, {})
    nums = tuple(range(len(primals)))
    with kiln.enable_grad():
        call_args, inputs, _ = _substitute(primals, nums, track, api)
        out, aux = _split_aux(func(*call_args), has_aux, api)
        outputs, out_spec = tree_flatten(out)
        dummies = [kiln.zeros_like(o).requires_grad_(True) for o in outputs]
        pairs = [(o, u) for o, u in zip(outputs, dummies) if o.requires_grad]
        vjps = [None] * len(inputs)
        if pairs:
            vjps = kiln.autograd.grad([o for o, _ in pairs], inputs, [u for _, u in pairs],
                                      create_graph=True, allow_unused=True)
        used = [(g, t) for g, t in zip(vjps, t_leaves) if g is not None and g.requires_grad]
        jvps = [None] * len(dummies)
        if used:
            jvps = kiln.autograd.grad([g for g, _ in used], dummies, [t for _, t in used],
                                      create_graph=track, allow_unused=True)
    tangent_out = [kiln.zeros_like(o) if j is None else (j if track else j.detach())
                   for j, o in zip(jvps, outputs)]
    result = (_plain(out, track), tree_unflatten(tangent_out, out_spec))
    return result + (_plain(aux, track),) if has_aux else result


def linearize(func: Callable, *primals):
    """`func(*primals)` and a function of tangents returning the jvp at `primals`
    (torch.func.linearize; each call of it runs `func` again)."""
    out = func(*primals)

    def jvp_fn(*tangents):
        return jvp(func, primals, tangents)[1]
    return _plain(out, _tracks_outer(primals, {})), jvp_fn


# ----------------------------------------------------------------------------- jacobians

def _jacobian(func: Callable, argnums, has_aux: bool, api: str) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        nums = _argnums_tuple(argnums, len(args), api)
        track = _tracks_outer(args, kwargs)
        with kiln.enable_grad():
            call_args, inputs, layout = _substitute(args, nums, track, api)
            out, aux = _split_aux(func(*call_args, **kwargs), has_aux, api)
            outputs, out_spec = tree_flatten(out)
            per_output = []
            for o in outputs:
                if not isinstance(o, kiln.Tensor):
                    raise RuntimeError(f"{api}: Expected f to return a Tensor or a "
                                       f"tuple/list/dict of Tensors, got {type(o).__name__}")
                per_output.append(_jacobian_of(o, inputs, track))
        jac = tree_unflatten([_per_argnum(j, layout, argnums) for j in per_output], out_spec)
        return (jac, _plain(aux, track)) if has_aux else jac
    return wrapper


def _jacobian_of(o, inputs: list, track: bool) -> list:
    """Per input, d o / d input shaped o.shape + input.shape: one backward per element of o."""
    rows: list[list] = [[] for _ in inputs]
    n = o.numel()
    for k in range(n):
        seed = kiln.zeros(n, dtype=o.dtype, device=o.device)
        seed[k] = 1.0
        for r, g in zip(rows, _derivatives([o], inputs, [seed.reshape(tuple(o.shape))], track)):
            r.append(g)
    jacs = []
    for r, x in zip(rows, inputs):
        shape = tuple(o.shape) + tuple(x.shape)
        jacs.append(kiln.stack(r, 0).reshape(shape) if r else
                    kiln.zeros(shape, dtype=x.dtype, device=x.device))
    return jacs


def jacrev(func: Callable, argnums=0, *, has_aux: bool = False, chunk_size=None,
           _preallocate_and_copy: bool = False) -> Callable:
    """A function returning the Jacobian of `func` with respect to the arguments at `argnums`
    by reverse mode (torch.func.jacrev): per output, shaped output.shape + input.shape, in the
    output's structure, each entry in the argument's structure (a tuple over a tuple
    argnums). `(jacobian, aux)` with has_aux. `chunk_size` is accepted; kiln runs one backward
    per output element."""
    return _jacobian(func, argnums, has_aux, "jacrev(f, argnums)(*args)")


def jacfwd(func: Callable, argnums=0, has_aux: bool = False, *,
           randomness: str = "error") -> Callable:
    """The Jacobian of `func` laid out as `jacrev`'s (torch.func.jacfwd). kiln has no forward
    mode: it is computed by reverse mode, which gives the same values."""
    return _jacobian(func, argnums, has_aux, "jacfwd(f, argnums)(*args)")


def hessian(func: Callable, argnums=0) -> Callable:
    """A function returning the second derivatives of `func`'s output with respect to the
    arguments at `argnums`: jacfwd(jacrev(func)) (torch.func.hessian)."""
    return jacfwd(jacrev(func, argnums), argnums)


# ----------------------------------------------------------------------------- vmap

def vmap(func: Callable, in_dims=0, out_dims=0, randomness: str = "error", *,
         chunk_size=None) -> Callable:
    """`func` mapped over a dimension of its inputs (torch.func.vmap), by calling it once per
    slice and stacking the results (a loop, not batching rules). `kiln.vmap` is this function.

    Because the function really runs per slice, anything may happen inside it: a `grad`
    (per-sample gradients: `vmap(grad(loss), in_dims=(None, None, 0, 0))`), a
    `functional_call`, data-dependent Python. Costs one call per batch element.

    Args:
        in_dims: per positional argument, the dimension to map over or None; an int applies
            to all of them; for a tuple/list/dict argument, an int, None or a container of the
            argument's structure. Keyword arguments are never mapped.
        out_dims: where the mapped dimension goes in each output (an int, or one per output).
        randomness: "error" (the default) refuses a function that draws random numbers;
            "different" gives each slice its own draws; "same" the same draws for all slices.
        chunk_size: accepted for compatibility (kiln maps one slice at a time).
    """
    if randomness not in ("error", "different", "same"):
        raise RuntimeError(f"Only allowed values for randomness are 'error', 'different', or "
                           f"'same'. Got {randomness}")

    @functools.wraps(func)
    def mapped(*args, **kwargs):
        api = f"vmap({getattr(func, '__name__', 'f')}, in_dims={in_dims}, ...)(<inputs>)"
        if isinstance(in_dims, (tuple, list)):
            if len(in_dims) != len(args):
                raise ValueError(f"{api}: in_dims is not compatible with the structure of "
                                 f"`inputs`. in_dims has structure of length {len(in_dims)} "
                                 f"but inputs has {len(args)} positional arguments")
            dims = broadcast_prefix(tuple(in_dims), args, "vmap in_dims")
        elif in_dims is None or isinstance(in_dims, int):
            dims = broadcast_prefix(in_dims, args, "vmap in_dims")
        else:
            raise ValueError(f"{api}: expected in_dims to be int or a (potentially nested) "
                             f"tuple matching the structure of inputs, got: {type(in_dims)}.")
        leaves, spec = tree_flatten(args)
        for x, d in zip(leaves, dims):
            if d is None:
                continue
            if not isinstance(x, kiln.Tensor):
                raise ValueError(f"{api}: Got in_dim={d} for an input but the input is of type "
                                 f"{type(x)}. We cannot vmap over non-Tensor arguments, please "
                                 f"use None as the respective in_dim")
            if not -x.dim() <= d < max(x.dim(), 1) or x.dim() == 0:
                raise ValueError(f"{api}: Got in_dim={d} for some input, but that input is a "
                                 f"Tensor of dimensionality {x.dim()} so expected in_dim to "
                                 f"satisfy -{x.dim()} <= in_dim < {x.dim()}.")
        if all(d is None for d in dims):
            raise ValueError(f"{api}: at least one input must be mapped: in_dims is None "
                             f"for every tensor input")
        result_spec: list = []          # the first call's output structure and out dims
        stack_dims: list = []           # out dims of the mapped outputs, read by map_slices
        unmapped: dict[int, Any] = {}   # out_dims=None outputs, from the first call
        start_state = kiln.get_rng_state() if randomness != "different" else None

        def per_slice(*flat):
            if randomness == "same":
                kiln.set_rng_state(start_state)
            out = func(*tree_unflatten(flat, spec), **kwargs)
            if randomness == "error" and not kiln.compiler.is_compiling() and \
                    kiln.get_rng_state().tolist() != start_state.tolist():
                raise RuntimeError("vmap: called random operation while in randomness error "
                                   "mode. Please either use the 'same' or 'different' "
                                   "randomness flags on vmap or perform the randomness "
                                   "operation out of vmap")
            outs, ospec = tree_flatten(out)
            if not result_spec:
                odims = _out_dims(out_dims, out, api)
                result_spec.append((ospec, odims))
                stack_dims.extend(d for d in odims if d is not None)
            odims = result_spec[0][1]
            for k, (o, d) in enumerate(zip(outs, odims)):
                if not isinstance(o, kiln.Tensor):
                    raise ValueError(f"{api}: `f` must only return Tensors, got type "
                                     f"{type(o)}. Did you mean to set out_dims= to None for "
                                     f"output?")
                if d is None:
                    unmapped.setdefault(k, o)
            return tuple(o for o, d in zip(outs, odims) if d is not None)

        stacked = map_slices(per_slice, in_dims=tuple(dims), out_dims=stack_dims,
                             randomness=randomness)(*leaves)
        out_spec, odims = result_spec[0]
        results, it = [], iter(stacked)
        for k, d in enumerate(odims):
            results.append(unmapped[k] if d is None else next(it))
        return tree_unflatten(results, out_spec)
    return mapped


def _out_dims(out_dims, out, api: str) -> list:
    """One out dim per output leaf, read from `out_dims` as in_dims are read."""
    if isinstance(out_dims, (tuple, list)):
        if isinstance(out, kiln.Tensor) and len(out_dims) == 1:
            return [out_dims[0]]
        if not isinstance(out, (tuple, list)) or len(out) != len(out_dims):
            raise ValueError(f"{api}: out_dims is not compatible with the structure of "
                             f"`outputs`. out_dims has structure of length {len(out_dims)} "
                             f"but outputs has structure {type(out).__name__}")
        return broadcast_prefix(tuple(out_dims), tuple(out), "vmap out_dims")
    if out_dims is not None and not isinstance(out_dims, int):
        raise ValueError(f"{api}: expected out_dims to be int or a tuple of int, got "
                         f"{type(out_dims)}")
    return broadcast_prefix(out_dims, out, "vmap out_dims")


def functionalize(func: Callable, *, remove: str = "mutations") -> Callable:
    """torch.func.functionalize: kiln's transforms work on functions that mutate tensors as
    they are, so `func` is returned unchanged (its results are the same)."""
    if remove not in ("mutations", "mutations_and_views"):
        raise RuntimeError(f"functionalize(f, remove='mutations'): got invalid argument for "
                           f"remove (got {remove}). Valid options are:\n"
                           f"    remove='mutations'\n    remove='mutations_and_views'")
    return func


def debug_unwrap(tensor, *, recurse: bool = True):
    """torch.func.debug_unwrap: kiln's transforms hand plain tensors to the function, so there
    is no wrapper to take off; returns `tensor`."""
    return tensor


# ----------------------------------------------------------------------------- modules

def replace_all_batch_norm_modules_(root):
    """Make every batch norm in `root` use batch statistics only: its running stats are
    removed and track_running_stats is set to False, in place (torch.func's helper for
    vmapping over a model with batch norm). Returns `root`."""
    kinds = tuple(getattr(kiln.nn, n) for n in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                               "SyncBatchNorm") if hasattr(kiln.nn, n))
    for module in root.modules():
        if isinstance(module, kinds) and module.track_running_stats:
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
            module.track_running_stats = False
    return root


def _merge_dicts(parameter_and_buffer_dicts) -> dict:
    if isinstance(parameter_and_buffer_dicts, dict):
        return parameter_and_buffer_dicts
    if isinstance(parameter_and_buffer_dicts, (tuple, list)):
        if not all(isinstance(d, dict) for d in parameter_and_buffer_dicts):
            raise ValueError("Expected all elements of parameter_and_buffer_dicts to be "
                             "dictionaries")
        seen: dict[str, int] = {}
        for d in parameter_and_buffer_dicts:
            for k in d:
                seen[k] = seen.get(k, 0) + 1
        repeated = [k for k, n in seen.items() if n > 1]
        if repeated:
            raise ValueError(f"{repeated} appeared in multiple dictionaries; behavior of "
                             f"functional call is ambiguous")
        return {k: v for d in parameter_and_buffer_dicts for k, v in d.items()}
    raise ValueError(f"Expected parameter_and_buffer_dicts to be a dict, or a list/tuple of "
                     f"dicts, but got {type(parameter_and_buffer_dicts)}")


def _module_tensor_names(module) -> dict[int, list[str]]:
    """id(tensor) -> every name it has in `module` (several when weights are tied)."""
    names: dict[int, list[str]] = {}
    for name, t in list(module.named_parameters(remove_duplicate=False)) + \
            list(module.named_buffers(remove_duplicate=False)):
        names.setdefault(id(t), []).append(name)
    return names


def _untie(module, given: dict) -> dict:
    """`given` extended to every name tied to one of its keys (tie_weights=True)."""
    tied = {}
    for group in _module_tensor_names(module).values():
        if len(group) > 1:
            for name in group:
                tied[name] = group
    out = dict(given)
    for name in [k for k in given if k in tied]:
        group = tied[name]
        values = {id(given[k]) for k in group if k in given}
        if len(values) > 1:
            raise ValueError(f"functional_call got multiple values for keys {sorted(group)}, "
                             f"which are tied. Consider using tie_weights=False")
        for other in group:
            out[other] = given[name]
    return out


def _swap(module, name: str, value):
    """Put `value` where `name` lives in `module`; returns how to undo it."""
    path, _, attr = name.rpartition(".")
    owner = module.get_submodule(path)
    for registry in ("_parameters", "_buffers"):
        entries = owner.__dict__.get(registry)
        if entries is not None and attr in entries:
            old = entries[attr]
            entries[attr] = value
            return owner, registry, attr, old
    # neither a parameter nor a buffer: a plain attribute for the call, as torch does
    had = attr in owner.__dict__
    old = owner.__dict__.get(attr)
    object.__setattr__(owner, attr, value)
    return owner, None, attr, (had, old)


def _restore(owner, registry, attr, old):
    """Undo one `_swap`; returns what the call left in that place."""
    if registry is not None:
        entries = owner.__dict__[registry]
        current = entries.get(attr)
        entries[attr] = old
        return current
    had, value = old
    current = owner.__dict__.get(attr)
    if had:
        object.__setattr__(owner, attr, value)
    else:
        owner.__dict__.pop(attr, None)
    return current


def functional_call(module, parameter_and_buffer_dicts, args=None, kwargs=None, *,
                    tie_weights: bool = True, strict: bool = False):
    """Call `module` with the given tensors in place of its parameters and buffers, and put
    its own back afterwards, also when the call raises (torch.func.functional_call).

    Args:
        module: the module to call.
        parameter_and_buffer_dicts: name -> tensor ("0.weight"), or a tuple of such dicts
            with no key in two of them. Names not given keep the module's own tensors.
        args: the positional arguments (a single non-tuple value is one argument).
        kwargs: keyword arguments.
        tie_weights: a tensor given for one name of weights the module ties is used for all
            of its names.
        strict: every parameter and buffer must be given, and nothing else.

    Returns:
        What `module(*args, **kwargs)` returns.
    """
    given = _merge_dicts(parameter_and_buffer_dicts)
    values = _untie(module, given) if tie_weights else dict(given)
    if strict:
        expected = {n for group in _module_tensor_names(module).values() for n in group}
        missing = sorted(expected - set(values))
        unexpected = sorted(set(values) - expected)
        errors = []
        if unexpected:
            errors.append(f"Unexpected key(s): {', '.join(map(repr, unexpected))}.")
        if missing:
            errors.append(f"Missing key(s): {', '.join(map(repr, missing))}.")
        if errors:
            raise RuntimeError(f"Error(s) in reparametrizing for {module._get_name()}:\n\t" +
                               "\n\t".join(errors))
    if args is None:
        args = ()
    elif not isinstance(args, tuple):
        args = (args,)
    undo = []
    try:
        for name, value in values.items():
            undo.append((name, _swap(module, name, value)))
        return module(*args, **(kwargs or {}))
    finally:
        for name, record in reversed(undo):
            current = _restore(*record)
            # a module that replaced a tensor during the call (a buffer re-assigned): the new
            # one goes back to the caller's dict, as torch writes it back
            if isinstance(parameter_and_buffer_dicts, dict) and name in parameter_and_buffer_dicts \
                    and current is not values[name]:
                parameter_and_buffer_dicts[name] = current


def _stacked(tensors: list, name: str):
    requires = [t.requires_grad for t in tensors]
    if any(requires) and not all(requires):
        raise RuntimeError(f"Expected {name} from each model to have the same .requires_grad")
    out = kiln.stack([t.detach() for t in tensors])
    return out.requires_grad_(True) if all(requires) else out


def stack_module_state(models) -> tuple[dict, dict]:
    """The parameters and the buffers of same-shaped models, each stacked along a new first
    dimension, for `vmap(functional_call)` over an ensemble (torch.func.stack_module_state).

    Returns:
        (params, buffers): name -> stacked tensor; stacked parameters are new leaves that
        require grad (when the models' do), stacked buffers do not.
    """
    models = list(models)
    if not models:
        raise RuntimeError("stack_module_state: Expected at least one model, got 0.")
    if not (all(m.training for m in models) or all(not m.training for m in models)):
        raise RuntimeError("stack_module_state: Expected all models to have the same "
                           "training/eval mode.")
    if not all(type(m) is type(models[0]) for m in models):
        raise RuntimeError("stack_module_state: Expected all models to be of the same class.")
    all_params = [dict(m.named_parameters()) for m in models]
    params = {k: _stacked([p[k] for p in all_params], k) for k in all_params[0]}
    all_buffers = [dict(m.named_buffers()) for m in models]
    buffers = {k: _stacked([b[k] for b in all_buffers], k) for k in all_buffers[0]}
    return params, buffers
