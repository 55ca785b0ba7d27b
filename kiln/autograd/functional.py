"""`kiln.autograd.functional`: Jacobians, Hessians and vector products of a function, built on
reverse mode (one backward pass per output element; second derivatives by double backward)."""

from __future__ import annotations

from kiln.tracer.autograd import enable_grad, grad
from kiln.tracer.tensor import Tensor


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _prepare(inputs, create_graph):
    return tuple(x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
                 for x in _tuple(inputs))


def _grads(out, xs, seed, create_graph):
    gs = grad([out], list(xs), [seed], retain_graph=True, create_graph=create_graph,
              allow_unused=True)
    import kiln
    return tuple(kiln.zeros_like(x) if g is None else (g if create_graph else g.detach())
                 for g, x in zip(gs, xs))


def jacobian(func, inputs, create_graph: bool = False, strict: bool = False,
             vectorize: bool = False, strategy: str = "reverse-mode"):
    """d func(inputs) / d inputs, shaped output.shape + input.shape (tuples of these when
    inputs or outputs are tuples), as torch.autograd.functional.jacobian."""
    import kiln
    single_in = isinstance(inputs, Tensor)
    xs = _prepare(inputs, create_graph)
    with enable_grad():
        out = func(*xs)
    single_out = isinstance(out, Tensor)
    outs = _tuple(out)
    rows = []
    for o in outs:
        per_input = [[] for _ in xs]
        flat = o.reshape(-1)
        for k in range(flat.numel()):
            seed = kiln.zeros(flat.numel(), dtype=o.dtype, device=o.device)
            seed[k] = 1.0
            if o.requires_grad:
                gs = _grads(o, xs, seed.reshape(tuple(o.shape)), create_graph)
            else:
                gs = tuple(kiln.zeros_like(x) for x in xs)
            for j, g in enumerate(gs):
                per_input[j].append(g)
        row = tuple(kiln.stack(p, 0).reshape(tuple(o.shape) + tuple(x.shape)) if p else
                    kiln.zeros(tuple(o.shape) + tuple(x.shape), dtype=x.dtype)
                    for p, x in zip(per_input, xs))
        rows.append(row[0] if single_in else row)
    return rows[0] if single_out else tuple(rows)


def hessian(func, inputs, create_graph: bool = False, strict: bool = False,
            vectorize: bool = False, outer_jacobian_strategy: str = "reverse-mode"):
    """Second derivatives of a scalar function, by differentiating its gradient again."""
    single_in = isinstance(inputs, Tensor)

    def gradient(*xs):
        with enable_grad():
            out = func(*xs)
            gs = grad([out], list(xs), create_graph=True, allow_unused=True)
        import kiln
        gs = tuple(kiln.zeros_like(x) if g is None else g for g, x in zip(gs, xs))
        return gs[0] if single_in else gs
    return jacobian(gradient, inputs, create_graph=create_graph)


def vjp(func, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """(func(inputs), v^T J)."""
    import kiln
    single_in = isinstance(inputs, Tensor)
    xs = _prepare(inputs, create_graph)
    with enable_grad():
        out = func(*xs)
    outs = _tuple(out)
    vs = _tuple(v) if v is not None else tuple(kiln.ones_like(o) for o in outs)
    gs = grad(list(outs), list(xs), list(vs), create_graph=create_graph, allow_unused=True)
    gs = tuple(kiln.zeros_like(x) if g is None else (g if create_graph else g.detach())
               for g, x in zip(gs, xs))
    detached = out.detach() if isinstance(out, Tensor) else tuple(o.detach() for o in out)
    return detached, (gs[0] if single_in else gs)


def jvp(func, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """(func(inputs), J v), from the Jacobian (reverse mode, one pass per output element)."""
    import kiln
    single_in = isinstance(inputs, Tensor)
    xs = tuple(x.detach() for x in _tuple(inputs))
    vs = _tuple(v) if v is not None else tuple(kiln.ones_like(x) for x in xs)
    out = func(*xs)
    jac = jacobian(func, xs if not single_in else xs[0], create_graph=create_graph)
    outs = _tuple(out)
    results = []
    for i, o in enumerate(outs):
        row = jac if (isinstance(out, Tensor) and single_in) else (
            jac[i] if single_in else (jac if isinstance(out, Tensor) else jac[i]))
        row = (row,) if single_in else row
        total = 0
        for J, vv in zip(row, vs):
            total = total + (J.reshape(o.numel(), vv.numel()) @ vv.reshape(-1)).reshape(
                tuple(o.shape))
        results.append(total)
    detached = out.detach() if isinstance(out, Tensor) else tuple(o.detach() for o in out)
    return detached, (results[0] if isinstance(out, Tensor) else tuple(results))


def hvp(func, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """(func(inputs), H v) of a scalar function."""
    single_in = isinstance(inputs, Tensor)
    H = hessian(func, inputs)
    xs = _tuple(inputs)
    vs = _tuple(v)
    out = func(*[x.detach() for x in xs])
    if single_in:
        n = xs[0].numel()
        return out.detach(), (H.reshape(n, n) @ vs[0].reshape(-1)).reshape(tuple(xs[0].shape))
    results = []
    for i, xi in enumerate(xs):
        total = 0
        for j, xj in enumerate(xs):
            total = total + (H[i][j].reshape(xi.numel(), xj.numel()) @ vs[j].reshape(-1))
        results.append(total.reshape(tuple(xi.shape)))
    return out.detach(), tuple(results)


vhp = hvp    # the Hessian is symmetric: v^T H = (H v)^T
