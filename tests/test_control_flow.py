"""Control-flow operators against torch: cond (eager, compiled, exported, with gradients),
while_loop, scan, associative_scan, map, and torch._check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch._higher_order_ops.associative_scan import associative_scan as t_associative_scan
from torch._higher_order_ops.map import map as t_map
from torch._higher_order_ops.scan import scan as t_scan

import kiln
import kiln.export
from kiln._higher_order_ops.associative_scan import associative_scan as k_associative_scan
from kiln._higher_order_ops.map import map as k_map
from kiln._higher_order_ops.scan import scan as k_scan
from kiln.tracer.errors import GraphBreak
from tests.parity import assert_close, random_array, to_kiln, to_torch

TOL = dict(atol=1e-5, rtol=1e-5)


def close(k, t, atol, rtol, what="output"):
    """kiln's and torch's results agree leaf by leaf (nested tuples, lists and dicts)."""
    if isinstance(t, dict):
        assert sorted(k) == sorted(t), f"{what}: keys {sorted(k)} != torch {sorted(t)}"
        for key in t:
            close(k[key], t[key], atol, rtol, f"{what}[{key!r}]")
    elif isinstance(t, (tuple, list)):
        assert isinstance(k, (tuple, list)) and len(k) == len(t), f"{what}: {k} vs torch {t}"
        for i, (a, b) in enumerate(zip(k, t)):
            close(a, b, atol, rtol, f"{what}[{i}]")
    else:
        assert_close(k, t, atol, rtol, what)


def branches(lib):
    """A tutorial-style pair of branches: same output structure, shapes and dtypes."""
    def true_fn(x, y):
        return (x.sin() * y, (x + y).sum(0))

    def false_fn(x, y):
        return (x.cos() - y, (x * y).sum(0))
    return true_fn, false_fn


def call_cond(lib, x, y):
    true_fn, false_fn = branches(lib)
    return lib.cond(x.sum() > 0, true_fn, false_fn, (x, y))


def inputs(sign, grad=False):
    """x with sum of sign `sign`, y; the same data for torch and kiln."""
    x = np.abs(random_array((4, 3))) * sign
    y = random_array((4, 3), rng=np.random.default_rng(1))
    return (to_torch(x, grad), to_torch(y, grad)), (to_kiln(x, grad), to_kiln(y, grad))


# ----------------------------------------------------------------------------- cond

@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_eager_cond_matches_torch_values_and_gradients(sign):
    (tx, ty), (kx, ky) = inputs(sign, grad=True)
    t_out, k_out = call_cond(torch, tx, ty), call_cond(kiln, kx, ky)
    close(k_out, t_out, **TOL)
    (t_out[0].sum() + t_out[1].pow(2).sum()).backward()
    (k_out[0].sum() + k_out[1].pow(2).sum()).backward()
    close(kx.grad, tx.grad, **TOL, what="x.grad")
    close(ky.grad, ty.grad, **TOL, what="y.grad")


def test_cond_takes_a_python_bool_and_a_list_of_operands():
    (tx, ty), (kx, ky) = inputs(1.0)
    t_true, t_false = branches(torch)
    k_true, k_false = branches(kiln)
    for pred in (True, False):
        close(kiln.cond(pred, k_true, k_false, [kx, ky]),
                     torch.cond(pred, t_true, t_false, [tx, ty]), **TOL)


@pytest.mark.parametrize("fullgraph", [True, False])
def test_compiled_cond_follows_the_predicate_on_every_call(fullgraph):
    compiled = kiln.compile(lambda x, y: call_cond(kiln, x, y), fullgraph=fullgraph)
    for sign in (1.0, -1.0, 1.0, -1.0):
        (tx, ty), (kx, ky) = inputs(sign)
        expected = call_cond(torch, tx, ty)
        close(compiled(kx, ky), expected, **TOL)
        close(call_cond(kiln, kx, ky), expected, **TOL)


def test_compiled_cond_is_one_graph():
    report = kiln.compiler.explain(lambda x, y: call_cond(kiln, x, y), *inputs(1.0)[1])
    assert report.breaks == [] and len(report.graphs) == 1


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_through_compiled_cond_match_torch(sign):
    def step(lib, w):
        def fn(x):
            return lib.cond(x.mean() > 0, lambda x: (x * w).tanh(), lambda x: x * w.exp(), (x,))
        return fn
    w_np = random_array((3,), rng=np.random.default_rng(2))
    tw, kw = to_torch(w_np, True), to_kiln(w_np, True)
    compiled = kiln.compile(step(kiln, kw), fullgraph=True)
    for s in (sign, -sign, sign):
        (tx, _), (kx, _) = inputs(s, grad=True)
        t_out, k_out = step(torch, tw)(tx), compiled(kx)
        close(k_out, t_out, **TOL)
        t_out.sum().backward()
        k_out.sum().backward()
        close(kx.grad, tx.grad, **TOL, what="x.grad")
        close(kw.grad, tw.grad, **TOL, what="w.grad (closed over)")


def test_branch_not_taken_sends_no_nan_gradient_to_the_operands():
    def fn(lib):
        return lambda x: lib.cond(x.sum() > 0, lambda x: x.sqrt(), lambda x: (-x).log(), (x,))
    compiled = kiln.compile(fn(kiln), fullgraph=True)
    for sign in (1.0, -1.0, 1.0):
        x = (np.abs(random_array((5,))) + 0.1) * sign
        tx, kx = to_torch(x, True), to_kiln(x, True)
        fn(torch)(tx).sum().backward()
        compiled(kx).sum().backward()
        close(kx.grad, tx.grad, **TOL, what="x.grad")


def test_exported_cond_runs_both_branches():
    def forward(lib, lin):
        def fn(x):
            return lib.cond(x.sum() > 0, lambda x: lin(x).relu(), lambda x: x.sin(), (x,))
        return fn
    k_lin = kiln.nn.Linear(3, 3)
    t_lin = torch.nn.Linear(3, 3)
    with torch.no_grad():
        t_lin.weight.copy_(torch.from_numpy(k_lin.weight.detach().numpy()))
        t_lin.bias.copy_(torch.from_numpy(k_lin.bias.detach().numpy()))
    ep = kiln.export.export(forward(kiln, k_lin), (inputs(1.0)[1][0],))
    for sign in (1.0, -1.0, 1.0):
        (tx, _), (kx, _) = inputs(sign)
        with torch.no_grad():
            close(ep(kx), forward(torch, t_lin)(tx), **TOL)


def test_cond_under_trace_refuses_mismatched_branches():
    (_, _), (kx, ky) = inputs(1.0)

    def run(false_fn):
        return kiln.compile(lambda x: kiln.cond(x.sum() > 0, lambda x: x + 1, false_fn, (x,)),
                            fullgraph=True)(kx)
    with pytest.raises(RuntimeError, match="torch.cond: output 0 .* float32\\[4, 3\\].*"
                                           "float32\\[2, 3\\]"):
        run(lambda x: x[:2] + 1)
    with pytest.raises(RuntimeError, match="torch.cond: output 0 .*float64"):
        run(lambda x: x.double())
    with pytest.raises(RuntimeError, match="same output structure"):
        run(lambda x: (x + 1, x + 2))
    # torch refuses the same structural mismatch: test_torch_refuses_what_kiln_refuses


def test_cond_under_trace_refuses_in_place_writes_to_operands():
    (_, _), (kx, _) = inputs(1.0)

    def mutating(x):
        x.add_(1)
        return x + 1
    fn = kiln.compile(lambda x: kiln.cond(x.sum() > 0, mutating, lambda x: x - 1, (x,)),
                      fullgraph=True)
    with pytest.raises(RuntimeError, match="true_fn writes in place to operand 0"):
        fn(kx.clone())


def test_cond_under_trace_refuses_writes_to_closed_over_state():
    steps = kiln.zeros(3)

    def counting(lib, state):
        def false_fn(x):
            state.add_(1)
            return x + 1
        return lambda x: lib.cond(x.sum() > 0, lambda x: x * 2, false_fn, (x,))
    with pytest.raises(RuntimeError, match="false_fn writes in place to a tensor it closes "
                                           "over \\(state, float32\\[3\\]\\)"):
        kiln.compile(counting(kiln, steps), fullgraph=True)(kiln.ones(3))


# torch.cond's refusals leave torch's frame-evaluation hook (dynamo) installed in the process,
# which shifts every Python reference count by one per frame from then on; kiln's gradient and
# layout ownership checks count references, so these run in a process of their own
_TORCH_REFUSALS = """
import torch
state = torch.zeros(3)

def writes_state(x):
    state.add_(1)
    return x + 1

cases = [
    lambda: torch.cond(torch.tensor(True), lambda x: x + 1, lambda x: (x + 1, x + 2),
                       (torch.ones(2),)),
    lambda: torch.cond(torch.tensor(True), lambda x: x.add_(1) + 1, lambda x: x - 1,
                       (torch.ones(2),)),
    lambda: torch.cond(torch.ones(3).sum() > 0, lambda x: x * 2, writes_state,
                       (torch.ones(3),)),
]
for case in cases:
    try:
        case()
        print("accepted")
    except Exception as e:
        print("refused", "mutation" in str(e))
"""


def test_torch_refuses_what_kiln_refuses():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _TORCH_REFUSALS], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # a structural mismatch, then in-place writes to an operand and to closed-over state
    assert out.stdout.split("\n")[:3] == ["refused False", "refused True", "refused True"], \
        out.stdout


def test_cond_keeps_in_place_ops_on_its_own_intermediates():
    def branch(x):
        y = x * 2
        y.add_(1)
        return y
    (tx, _), (kx, _) = inputs(1.0)
    compiled = kiln.compile(lambda x: kiln.cond(x.sum() > 0, branch, lambda x: x - 1, (x,)),
                            fullgraph=True)
    close(compiled(kx), torch.cond(tx.sum() > 0, branch, lambda x: x - 1, (tx,)), **TOL)


def test_cond_rejects_a_predicate_with_several_elements():
    with pytest.raises(RuntimeError, match="single element, got a tensor of shape \\[3\\]"):
        kiln.cond(kiln.ones(3) > 0, lambda x: x, lambda x: x, (kiln.ones(3),))


# ----------------------------------------------------------------------------- while_loop

def count_down(lib):
    def cond_fn(i, x):
        return i > 0

    def body_fn(i, x):
        return i - 1, x * 2 + 1
    return cond_fn, body_fn


def test_while_loop_matches_torch():
    t_out = torch.while_loop(*count_down(torch), (torch.tensor(3), torch.ones(2)))
    k_out = kiln.while_loop(*count_down(kiln), (kiln.tensor(3), kiln.ones(2)))
    close(k_out, t_out, atol=0, rtol=0)


def test_while_loop_is_a_graph_break_when_compiled_and_an_error_under_fullgraph():
    def fn(n, x):
        return kiln.while_loop(*count_down(kiln), (n, x))
    expected = torch.while_loop(*count_down(torch), (torch.tensor(4), torch.ones(2)))
    report = kiln.compiler.explain(fn, kiln.tensor(4), kiln.ones(2))
    assert "while_loop's iteration count depends on tensor values" in report.breaks[0].reason
    with pytest.warns(UserWarning, match="graph break .*while_loop's iteration count"):
        out = kiln.compile(fn)(kiln.tensor(4), kiln.ones(2))
    close(out, expected, atol=0, rtol=0)
    with pytest.raises(GraphBreak, match="while_loop's iteration count"):
        kiln.compile(fn, fullgraph=True)(kiln.tensor(4), kiln.ones(2))
    with pytest.raises(RuntimeError, match="while_loop's iteration count"):
        kiln.export.export(fn, (kiln.tensor(4), kiln.ones(2)))


# ----------------------------------------------------------------------------- scan

def running(c, x):
    """A scan body: carry (sum, product-ish) and two ys, one of them 0-d."""
    s, p = c
    s = s + x["a"]
    p = p * 0.5 + x["b"].tanh()
    return (s, p), (s * p, x["a"].sum())


@pytest.mark.parametrize("dim,reverse", [(0, False), (0, True), (1, False), (1, True)])
def test_scan_matches_torch_with_gradients(dim, reverse):
    shape = (5, 3) if dim == 0 else (3, 5)
    a, b = random_array(shape), random_array(shape, rng=np.random.default_rng(3))
    c0 = random_array((3,), rng=np.random.default_rng(4))
    ta, tb, tc = to_torch(a, True), to_torch(b, True), to_torch(c0, True)
    ka, kb, kc = to_kiln(a, True), to_kiln(b, True), to_kiln(c0, True)
    t_out = t_scan(running, (tc, tc * 0), {"a": ta, "b": tb}, dim=dim, reverse=reverse)
    k_out = k_scan(running, (kc, kc * 0), {"a": ka, "b": kb}, dim=dim, reverse=reverse)
    close(k_out, t_out, **TOL)
    t_loss = t_out[0][1].sum() + t_out[1][0].pow(2).sum() + t_out[1][1].sum()
    k_loss = k_out[0][1].sum() + k_out[1][0].pow(2).sum() + k_out[1][1].sum()
    t_loss.backward()
    k_loss.backward()
    for k, t, name in ((ka, ta, "a"), (kb, tb, "b"), (kc, tc, "init")):
        close(k.grad, t.grad, **TOL, what=f"{name}.grad")


def test_scan_compiles_unrolled_and_checks_the_carry():
    xs = random_array((6, 2))

    def cumsum(x):
        return kiln.scan(lambda c, x: (c + x, c * 1.0), kiln.zeros(2), x)
    compiled = kiln.compile(cumsum, fullgraph=True)
    tx, kx = to_torch(xs, True), to_kiln(xs, True)
    t_out = t_scan(lambda c, x: (c + x, c * 1.0), torch.zeros(2), tx)
    k_out = compiled(kx)
    close(k_out, t_out, **TOL)
    (t_out[0].sum() + t_out[1].pow(2).sum()).backward()
    (k_out[0].sum() + k_out[1].pow(2).sum()).backward()
    close(kx.grad, tx.grad, **TOL, what="xs.grad")
    with pytest.raises(RuntimeError, match="carried value 0 changes from float32\\[2\\] to "
                                           "float64\\[2\\]"):
        kiln.scan(lambda c, x: (c.double(), x), kiln.zeros(2), to_kiln(xs))


# ----------------------------------------------------------------------------- associative_scan

def affine(first, second):
    """Composition of x -> a x + b maps: associative, not commutative (so order matters)."""
    (a1, b1), (a2, b2) = first, second
    return a1 * a2, b1 * a2 + b2


@pytest.mark.parametrize("dim,reverse", [(0, False), (1, True), (2, False), (2, True)])
def test_associative_scan_matches_torch(dim, reverse):
    a, b = random_array((3, 4, 5)), random_array((3, 4, 5), rng=np.random.default_rng(7))
    ta, tb, ka, kb = to_torch(a, True), to_torch(b, True), to_kiln(a, True), to_kiln(b, True)
    t_out = t_associative_scan(affine, (ta, tb), dim, reverse=reverse, combine_mode="generic")
    k_out = k_associative_scan(affine, (ka, kb), dim, reverse=reverse, combine_mode="generic")
    close(k_out, t_out, **TOL)
    (t_out[0].sum() + t_out[1].sum()).backward()
    (k_out[0].sum() + k_out[1].sum()).backward()
    close((ka.grad, kb.grad), (ta.grad, tb.grad), atol=1e-4, rtol=1e-4, what="grads")


def test_associative_scan_of_a_tuple_and_kiln_top_level_name():
    x, y = random_array((4, 3)), random_array((4, 3), rng=np.random.default_rng(5))

    def combine(a, b):
        return a[0] + b[0], a[1].maximum(b[1])
    # torch 2.13 has it at torch._higher_order_ops only; kiln also as kiln.associative_scan
    t_out = t_associative_scan(combine, (to_torch(x), to_torch(y)), 0, combine_mode="generic")
    k_out = kiln.associative_scan(combine, (to_kiln(x), to_kiln(y)), 0)
    close(k_out, t_out, **TOL)


# ----------------------------------------------------------------------------- map

def test_map_matches_torch_with_extra_args_and_gradients():
    x, w = random_array((4, 3)), random_array((3,), rng=np.random.default_rng(6))
    tx, tw, kx, kw = to_torch(x, True), to_torch(w, True), to_kiln(x, True), to_kiln(w, True)

    def f(row, w):
        return {"dot": (row * w).sum(), "scaled": row * w}
    t_out, k_out = t_map(f, tx, tw), k_map(f, kx, kw)
    close(k_out["dot"], t_out["dot"], **TOL)
    close(k_out["scaled"], t_out["scaled"], **TOL)
    (t_out["dot"].sum() + t_out["scaled"].pow(2).sum()).backward()
    (k_out["dot"].sum() + k_out["scaled"].pow(2).sum()).backward()
    close(kx.grad, tx.grad, **TOL, what="x.grad")
    close(kw.grad, tw.grad, **TOL, what="w.grad")


# ----------------------------------------------------------------------------- foreach_map

def test_foreach_map_matches_torch_with_gradients():
    from torch._higher_order_ops import foreach_map as t_foreach_map

    from kiln._higher_order_ops import foreach_map as k_foreach_map
    arrays = [random_array((2,)), random_array((3,), rng=np.random.default_rng(11))]
    tx, kx = [to_torch(a, True) for a in arrays], [to_kiln(a, True) for a in arrays]
    ty, ky = [to_torch(a * 2) for a in arrays], [to_kiln(a * 2) for a in arrays]

    def update(x, y, scale):
        return (x * y).tanh() * scale
    with torch.no_grad():       # torch's eager foreach_map differentiates only FX graphs
        close(k_foreach_map(update, kx, ky, 0.5), t_foreach_map(update, tx, ty, 0.5), **TOL)
    # gradients: against torch running the same ops index by index
    t_out, k_out = [update(x, y, 0.5) for x, y in zip(tx, ty)], k_foreach_map(update, kx, ky, 0.5)
    sum(o.sum() for o in t_out).backward()
    sum(o.sum() for o in k_out).backward()
    close([x.grad for x in kx], [x.grad for x in tx], **TOL, what="grads")
    with torch.no_grad():
        close(k_foreach_map(update, kx[0], ky[0], 2.0),
              t_foreach_map(update, tx[0], ty[0], 2.0), **TOL)
    with pytest.raises(ValueError, match="different lengths \\[1, 2\\]"):
        k_foreach_map(update, kx, ky[:1], 1.0)


def test_foreach_map_imports_from_its_torch_submodule():
    """`from torch._higher_order_ops.foreach_map import foreach_map` (the foreach_map recipe's
    import) raised ModuleNotFoundError; it is the same function, computing torch's values."""
    from torch._higher_order_ops.foreach_map import foreach_map as t_foreach_map

    from kiln._higher_order_ops import foreach_map as package_level
    from kiln._higher_order_ops.foreach_map import foreach_map as k_foreach_map
    assert k_foreach_map is package_level
    arrays = [random_array((4,)), random_array((2, 3), rng=np.random.default_rng(3))]
    with torch.no_grad():
        close(k_foreach_map(kiln.lerp, [to_kiln(a) for a in arrays],
                            [to_kiln(a * 3) for a in arrays], 0.25),
              t_foreach_map(torch.lerp, [to_torch(a) for a in arrays],
                            [to_torch(a * 3) for a in arrays], 0.25), **TOL)


# ----------------------------------------------------------------------------- _check

def test_checks_raise_like_torch():
    for lib in (torch, kiln):
        lib._check(True)
        lib._check_is_size(3)
        lib._check_with(ValueError, True, lambda: "fine")
    cases = [lambda lib: lib._check(False, lambda: "sizes differ"),
             lambda lib: lib._check(False),
             lambda lib: lib._check_with(ValueError, 2 < 1, lambda: "too small"),
             lambda lib: lib._check_is_size(-1),
             lambda lib: lib._check(lib.tensor(False))]
    for case in cases:
        with pytest.raises(Exception) as t_err:
            with pytest.warns(FutureWarning) if case is cases[3] else _nothing():
                case(torch)
        with pytest.raises(type(t_err.value)) as k_err:
            case(kiln)
        # torch appends a request to report unclear messages to PyTorch to its default text
        assert str(t_err.value).startswith(str(k_err.value))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("positive", [True, False])
def test_cond_whose_branches_draw_random_numbers_runs_eagerly_and_draws_as_eager(positive):
    # traced, both branches would draw on every call where eager draws only the taken one's;
    # the call breaks off, undoes the trace's draws and runs as eager does, so every later
    # draw (in the function or after it) is eager's
    def f(x):
        return kiln.cond(x.sum() > 0, lambda a: a + kiln.rand(3), lambda a: a - kiln.rand(3),
                         (x,))

    x = kiln.ones(3) if positive else -kiln.ones(3)
    kiln.manual_seed(0)
    eager = [f(x).tolist() for _ in range(3)] + [kiln.rand(2).tolist()]
    compiled = kiln.compile(f)
    kiln.manual_seed(0)
    with pytest.warns(UserWarning, match="cond's branches draw random numbers"):
        got = [compiled(x).tolist() for _ in range(3)] + [kiln.rand(2).tolist()]
    assert got == eager
    with pytest.raises(kiln.compiler.GraphBreak, match="cond's branches draw random numbers"):
        kiln.compile(f, fullgraph=True)(x)


def test_cond_whose_untaken_branch_is_singular_at_a_closed_over_tensor_runs_eagerly():
    # w is closed over (not an operand), and the branch not taken takes sqrt(w) at w = 0:
    # traced, 0 * inf would make w's gradient NaN where eager's (and torch's) is finite
    def make(lib, w):
        return lambda x: lib.cond(x.sum() > 0, lambda a: a * w, lambda a: a * w.sqrt(), (x,))

    kw = kiln.tensor([0.0, 1.0, 2.0], requires_grad=True)
    tw = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    compiled = kiln.compile(make(kiln, kw))
    torch_fn = make(torch, tw)
    for sign in (1.0, 1.0, -1.0, 1.0):
        kw.grad, tw.grad = None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(kiln.ones(3) * sign).sum().backward()
        torch_fn(torch.ones(3) * sign).sum().backward()
        np.testing.assert_allclose(kw.grad.numpy(), tw.grad.numpy(), rtol=1e-6)
    with pytest.raises(kiln.compiler.GraphBreak, match="closes over through an op whose "
                       "derivative can be infinite"):
        kiln.compile(make(kiln, kw), fullgraph=True)(kiln.ones(3))
    # without gradients nothing can turn NaN: no break
    with kiln.no_grad():
        out = kiln.compile(make(kiln, kw), fullgraph=True)(-kiln.ones(3))
    np.testing.assert_allclose(out.numpy(), -np.sqrt([0.0, 1.0, 2.0]), rtol=1e-6)
