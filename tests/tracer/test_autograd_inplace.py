"""In-place writes and autograd against PyTorch: saved outputs, writes through views, view().

Each case runs the same code on torch and on kiln: values and gradients must agree, or both
must refuse with a RuntimeError (kiln's message naming the op).
"""

import dis

import numpy as np
import pytest
import torch

import kiln
from kiln.ir.ops import PRIMITIVES
from tests.parity import check_op, random_array, to_kiln, to_torch

INPLACE_ERROR = "modified by an inplace operation"


def both_refuse(fn, shapes, match: str, names: str | None = None) -> None:
    """`fn(lib, *leaves)` raises RuntimeError on torch and on kiln (forward or backward);
    kiln's message matches `match` and contains `names` (the op)."""
    rng = np.random.default_rng(0)
    arrays = [random_array(s, np.float32, 0.5, 2.0, rng) for s in shapes]
    with pytest.raises(RuntimeError):
        fn(torch, *[to_torch(a, True) for a in arrays])
    with pytest.raises(RuntimeError, match=match) as info:
        fn(kiln, *[to_kiln(a, True) for a in arrays])
    if names is not None:
        assert names in str(info.value), str(info.value)


def _backward(out):
    out.sum().backward()
    return out


# ----------------------------------------------------------------------------- saved outputs

def _output_readers() -> set:
    """Primitives whose gradient rule reads its `out` argument (from the rule's bytecode)."""
    found = set()
    for name, prim in PRIMITIVES.items():
        if prim.grad is None or not hasattr(prim.grad, "__code__"):
            continue
        loads = {i.argval for i in dis.get_instructions(prim.grad)
                 if i.opname.startswith("LOAD_FAST")}
        if "out" in loads:
            found.add(name)
    return found


def test_every_rule_that_reads_its_output_is_version_checked_or_copied():
    readers = _output_readers()
    assert readers, "no rule reads its output: the bytecode scan is broken"
    # the primitive says how its rule reads the output (`output`): version-checked or copied
    unlisted = {name for name in readers if PRIMITIVES[name].output is None}
    assert not unlisted, unlisted


def test_inputs_a_rule_never_reads_are_not_version_checked():
    """An input the gradient rule never names cannot be read: writing it in place must not
    raise (x.exp() then x.mul_(2) is fine in PyTorch, whose exp saves only its output)."""
    for name, prim in PRIMITIVES.items():
        if prim.grad is None or not hasattr(prim.grad, "__code__") or not prim.arity:
            continue
        code = prim.grad.__code__
        inputs = code.co_varnames[2:2 + prim.arity]       # after (g, out)
        loads = {i.argval for i in dis.get_instructions(code)
                 if i.opname.startswith(("LOAD_FAST", "LOAD_DEREF"))}
        listed = prim.reads
        if callable(listed):
            continue                    # depends on the call's inputs (mul)
        for i, arg in enumerate(inputs):
            if arg not in loads:
                assert listed is not None and i not in listed, (name, arg)


SAVED_OUTPUT_OPS = {
    "exp": ("ExpBackward0", lambda lib, x: x.exp()),
    "sigmoid": ("SigmoidBackward0", lambda lib, x: x.sigmoid()),
    "tanh": ("TanhBackward0", lambda lib, x: lib.tanh(x)),
    "sqrt": ("SqrtBackward0", lambda lib, x: x.sqrt()),
    "relu": ("ReluBackward0", lambda lib, x: lib.relu(x - 1)),
    "expm1": ("Expm1Backward0", lambda lib, x: x.expm1()),
    # torch names tensor ** tensor PowBackward1 (kiln did not tell the forms apart before)
    "pow_tensor_exponent": ("PowBackward1", lambda lib, x: lib.pow(x, x * 1)),
}


@pytest.mark.parametrize("name", sorted(SAVED_OUTPUT_OPS))
@pytest.mark.parametrize("write", ["mul_", "add_", "view", "no_grad"])
def test_modified_saved_output_refuses_backward(name, write):
    node, op = SAVED_OUTPUT_OPS[name]

    def fn(lib, x):
        y = op(lib, x)
        if write == "mul_":
            y.mul_(2)
        elif write == "add_":
            y += 1
        elif write == "view":
            y[1:].mul_(3)
        else:
            with lib.no_grad():
                y.mul_(2)
        return _backward(y)
    both_refuse(fn, [(5,)], INPLACE_ERROR, node)


@pytest.mark.parametrize("fn", [
    lambda lib, x, y: ((x / y).mul_(2)),                     # div: PyTorch saves x, y
    lambda lib, x, y: ((x / y)[1:].mul_(2)),
    lambda lib, x, y: (lib.maximum(x, y).add_(1)),
    lambda lib, x, y: (lib.minimum(x, y).mul_(x)),
    lambda lib, x, y: (lib.pow(x, 2).mul_(3)),               # x ** 2 saves only x
    lambda lib, x, y: (lib.nn.functional.batch_norm(
        x.reshape(2, 3, 2), None, None, training=True).mul_(y[0, 0])),
], ids=["div", "div_view", "maximum", "minimum", "pow_scalar", "batch_norm"])
def test_output_written_in_place_where_pytorch_allows_it(fn):
    check_op(fn, [(4, 3), (4, 3)], dtype=np.float64, low=0.5, high=2.0)


@pytest.mark.parametrize("op", [lambda lib, x: lib.amax(x, 1), lambda lib, x: lib.softmax(x, 1)],
                         ids=["amax", "softmax"])
def test_composites_whose_kiln_rule_keeps_its_own_copy(op):
    """PyTorch refuses these (its amax and softmax save their output); kiln's rules read an
    output that keeps its own copy, so the gradient is the one of the code with a clone()
    before the write: the mathematical one."""
    def fn(lib, x, y):
        out = op(lib, x)
        if lib is torch:
            out = out.clone()
        return out.mul_(y[0, 0])
    check_op(fn, [(4, 3), (4, 1)], dtype=np.float64, low=0.5, high=2.0)


def test_div_output_written_under_no_grad_keeps_its_gradient():
    def fn(lib, x, y):
        z = x / y
        with lib.no_grad():
            z.mul_(2)
        return z
    check_op(fn, [(4,), (4,)], dtype=np.float64, low=0.5, high=2.0)


@pytest.mark.parametrize("fn", [
    lambda lib, x: ((x * 1).relu_()),
    lambda lib, x: ((x * 2).relu_().mul(x)),
    lambda lib, x: ((x * 1).sigmoid_()),
    lambda lib, x: ((x * 1).exp_().mul(3)),
    lambda lib, x: (x.exp().clone().mul_(2)),
    lambda lib, x: (lib.tanh(x) * x.exp().mul(2)),
], ids=["relu_", "relu_then_read", "sigmoid_", "exp_", "clone_then_write", "no_write"])
def test_in_place_ops_pytorch_allows_keep_working(fn):
    check_op(fn, [(3, 4)], dtype=np.float64)


def test_optimizer_updates_between_steps_keep_working():
    """In-place parameter updates (SGD with momentum, Adam) between forward/backward passes
    raise nothing and follow PyTorch step for step."""
    rng = np.random.default_rng(0)
    w0, x0 = rng.standard_normal((3, 4)), rng.standard_normal((5, 3))
    results = []
    for lib in (torch, kiln):
        w = lib.tensor(w0, requires_grad=True)
        x = lib.tensor(x0)
        opts = [lib.optim.SGD([w], lr=0.1, momentum=0.9), lib.optim.Adam([w], lr=0.01)]
        for step in range(6):
            opt = opts[step % 2]
            opt.zero_grad()
            (x @ w).exp().sigmoid().sum().backward()
            opt.step()
        results.append(w.detach().numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- writes through views

def _sibling_views(lib, x):
    a = x * 1
    first, second = a[0:2], a[1:3]         # overlapping views of one base
    first.mul_(2)
    return a, second * 1


def _chained(lib, x):
    a = x * 1
    rows = a[1:]
    block = rows[:, 1:3]
    block.mul_(5)
    return a, rows, block


def _successive(lib, x):
    a = x * 1
    v = a[1:]
    v.mul_(2)
    v.add_(x[1:] * 3)
    v.exp_()
    return a, v


def _base_then_view(lib, x):
    a = x * 1
    v = a[0]
    a.mul_(2)                              # the view's memory changes through its base
    return v * 1


def _copy_leaf_into_view(lib, x):
    a = lib.zeros(3, 4, dtype=x.dtype)
    a[1].copy_(x[0])
    return a


def _copy_leaf_into_base(lib, x):
    a = lib.zeros(3, 4, dtype=x.dtype)
    a.copy_(x)
    return a * 2


def _setitem_on_view(lib, x):
    a = x * 3
    a[1][1:3] = x[0, :2] * 4
    return a


def _no_grad_write_through_view(lib, x):
    a = x * 2
    with lib.no_grad():
        a[1:3].mul_(10)                    # not recorded: the gradient ignores the write
    return a


def _leaf_view_under_no_grad(lib, x):
    w = x.detach().clone().requires_grad_(True)
    with lib.no_grad():
        w[0].fill_(0.5)                    # initialisation style: allowed without grad mode
    return w * x


VIEW_WRITES = {
    "slice": lambda lib, x: _write(x * 1, lambda a: a[1:3].mul_(10)),
    "row": lambda lib, x: _write(x * 1, lambda a: a[1].mul_(x[0])),
    "column": lambda lib, x: _write(x * 1, lambda a: a[:, 0].mul_(0)),
    "strided": lambda lib, x: _write(x * 1, lambda a: a[:, ::2].mul_(3)),
    "transposed": lambda lib, x: _write(x * 2, lambda a: a.t()[1:3].add_(x[0, :3])),
    "reshaped": lambda lib, x: _write(x * 1, lambda a: a.view(2, 6)[1].mul_(x[2, 1])),
    "element": lambda lib, x: _write(x * 1, lambda a: a[2, 3].mul_(7)),
    "zero_": lambda lib, x: _write(x * 1, lambda a: a[1:3].zero_()),
    "in_place_unary": lambda lib, x: _write(x * 1, lambda a: a[0][1:].exp_()),
    "chained": _chained,
    "siblings": _sibling_views,
    "successive": _successive,
    "base_then_view": _base_then_view,
    "copy_leaf_into_view": _copy_leaf_into_view,
    "copy_leaf_into_base": _copy_leaf_into_base,
    "setitem_on_view": _setitem_on_view,
    "no_grad_write": _no_grad_write_through_view,
    "leaf_view_no_grad": _leaf_view_under_no_grad,
}


def _write(base, write):
    """Write through a view of `base`; return the base and the written view's values."""
    view = write(base)
    return base, view


@pytest.mark.parametrize("name", sorted(VIEW_WRITES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_write_through_view_matches_torch(name, dtype):
    check_op(VIEW_WRITES[name], [(3, 4)], dtype=dtype)


def test_write_through_view_then_backward_through_base_alone():
    """The issue's case: only the base reaches backward."""
    for key in (lambda a: a[1:3], lambda a: a[1], lambda a: a[:, 0], lambda a: a[::2, 1:]):
        check_op(lambda lib, x: _write(x * 1, lambda a: key(a).mul_(10))[0], [(3, 4)],
                 dtype=np.float64)


def test_write_through_view_of_leaf_is_refused():
    both_refuse(lambda lib, x: x[0].mul_(2), [(3, 4)],
                "a view of a leaf Variable that requires grad", "mul_")
    both_refuse(lambda lib, x: x.t()[1:].zero_(), [(3, 4)],
                "a view of a leaf Variable that requires grad", "zero_")


def test_write_through_view_taken_under_no_grad_is_refused():
    def fn(lib, x):
        a = x * 1
        with lib.no_grad():
            v = a[1:]
        v.mul_(2)
    both_refuse(fn, [(3, 4)], "created in no_grad mode", "mul_")


def test_saved_base_written_through_view_is_refused():
    def fn(lib, x):
        a = x * 1
        y = a * a                  # saves a
        a[0].mul_(2)
        y.sum().backward()
    both_refuse(fn, [(3, 4)], INPLACE_ERROR, "MulBackward0")


def test_write_through_view_composes_with_higher_order_grad():
    def fn(lib, x):
        a = x * x
        a[1:].mul_(x[1:])
        g, = lib.autograd.grad(a.sum(), x, create_graph=True)
        return g
    check_op(fn, [(3, 4)], dtype=np.float64)


# ----------------------------------------------------------------------------- norms at zero

def _with_zero_rows(shape, dtype=np.float64):
    x = random_array(shape, dtype, -2.0, 2.0, np.random.default_rng(1))
    x[0] = 0.0
    return x


@pytest.mark.parametrize("fn", [
    lambda lib, x: x.norm(),
    lambda lib, x: x[0].norm(),
    lambda lib, x: lib.norm(x, p=2, dim=1),
    lambda lib, x: lib.norm(x, p="fro", dim=(0, 1)) * 0 + x[0].norm(p=2, dim=0, keepdim=True),
    lambda lib, x: lib.norm(x, p=3, dim=1),
    lambda lib, x: lib.norm(x, p=1, dim=1),
    lambda lib, x: lib.dist(x[0], x[0] * 1),
    lambda lib, x: lib.nn.functional.normalize(x, dim=1),
    lambda lib, x: lib.nn.functional.normalize(x, p=3.0, dim=1),
], ids=["whole", "zero_vector", "p2_dim", "keepdim", "p3_dim", "p1_dim", "dist_equal",
        "normalize", "normalize_p3"])
def test_norm_gradient_at_zero_is_zero_not_nan(fn):
    check_op(fn, [_with_zero_rows((3, 4))], dtype=np.float64)


# ----------------------------------------------------------------------------- view()

VIEW_CASES = [
    ("transposed_flat", lambda t: t.t(), (6,)),
    ("transposed_same", lambda t: t.t(), (3, 2)),
    ("transposed_split_dim", lambda t: t.t(), (3, 2, 1)),
    ("permuted_merge_ok", lambda t: t.reshape(2, 3, 4).permute(2, 0, 1), (4, 6)),
    ("permuted_merge_bad", lambda t: t.reshape(2, 3, 4).permute(1, 0, 2), (6, 4)),
    ("permuted_split_inner", lambda t: t.reshape(2, 3, 4).permute(2, 0, 1), (2, 2, 2, 3)),
    ("sliced_cols_flat", lambda t: t.reshape(4, 6)[:, 1:4], (12,)),
    ("sliced_cols_split", lambda t: t.reshape(4, 6)[:, 1:5], (4, 2, 2)),
    ("sliced_rows_flat", lambda t: t.reshape(4, 6)[1:3], (12,)),
    ("strided_rows_merge", lambda t: t.reshape(4, 6)[::2], (12,)),
    ("strided_rows_split", lambda t: t.reshape(4, 6)[::2], (2, 2, 3)),
    ("expanded", lambda t: t[:1].expand(3, 6), (18,)),
    ("unit_dims", lambda t: t.reshape(1, 2, 3).permute(2, 0, 1), (3, 1, 2, 1)),
]


@pytest.mark.parametrize("name,make,shape", VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_view_of_non_contiguous_is_a_view_or_refused(name, make, shape):
    """view() either shares memory (a write through it reaches the base) or raises, as torch
    decides; reshape() always works."""
    n = 24 if name.startswith(("permuted", "sliced", "strided")) else 6
    if name in ("expanded",):
        n = 12
    data = np.arange(n, dtype=np.float64).reshape(2, -1)
    outcomes = []
    for lib in (torch, kiln):
        base = lib.tensor(data.copy())
        source = make(base)
        try:
            v = source.view(shape)
        except RuntimeError as e:
            outcomes.append(("refused", str(e)))
            np.testing.assert_array_equal(np.asarray(source.reshape(shape)),
                                          np.asarray(make(lib.tensor(data))).reshape(shape))
            continue
        v.add_(100)
        outcomes.append(("view", np.asarray(base).copy()))
    (t_kind, t_val), (k_kind, k_val) = outcomes
    assert k_kind == t_kind, (k_kind, t_kind, t_val, k_val)
    if k_kind == "view":
        np.testing.assert_array_equal(k_val, t_val)       # the write reached the base
    else:
        assert "view" in k_val and "Use .reshape(...) instead" in k_val, k_val


def test_view_of_non_contiguous_keeps_gradients():
    check_op(lambda lib, x: x.reshape(2, 3, 4).permute(2, 0, 1).view(4, 6) * x[0, 0],
             [(4, 6)], dtype=np.float64)
    check_op(lambda lib, x: x[:, 1:5].view(4, 2, 2).sum(2), [(4, 6)], dtype=np.float64)


def _conv_features(lib, x, w, inplace=False):
    """A conv, pool and ReLU: kiln's result is laid out channels-last, PyTorch's contiguous."""
    F = lib.nn.functional
    y = F.max_pool2d(F.conv2d(x, w, lib.ones(w.shape[0], dtype=x.dtype)), 2)
    return F.relu(y, inplace=inplace)


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu_inplace"])
def test_view_of_conv_features_flattens_as_in_torch(inplace):
    """`x.view(-1, C*H*W)` after a conv (the LeNet/STN tutorials' flatten) is a view in
    PyTorch; kiln relays its channels-last result out in place so it is one here too: values,
    gradients, and a write through the view reaching the features."""
    check_op(lambda lib, x, w: _conv_features(lib, x, w, inplace).view(-1, 36) * 2,
             [(2, 1, 8, 8), (4, 1, 3, 3)], dtype=np.float64)
    with torch.no_grad():
        written = []
        for lib in (torch, kiln):
            feats = _conv_features(lib, lib.ones(2, 1, 8, 8), lib.ones(4, 1, 3, 3))
            feats.view(2, -1)[0, 1] = -5.0
            written.append(np.asarray(feats))
    np.testing.assert_array_equal(written[1], written[0])


def test_view_of_conv_features_seen_through_another_view_is_refused():
    """A view taken earlier shares the channels-last memory: relaying out would cut it off, so
    view() refuses (pointing to reshape) rather than lose writes."""
    feats = _conv_features(kiln, kiln.ones(2, 1, 8, 8), kiln.ones(4, 1, 3, 3))
    channel = feats[:, 0]
    with pytest.raises(RuntimeError, match=r"Use \.reshape"):
        feats.view(2, -1)
    feats.reshape(2, -1)
    assert channel.shape == (2, 3, 3)


def test_setitem_on_view_whose_base_gained_history():
    """The view was taken before its base required grad; the write must still reach the
    base's new history."""
    def fn(lib, x):
        a = lib.zeros(3, 4, dtype=x.dtype)
        v = a[1]
        a.copy_(x * 2)
        v[0] = 5.0
        return a
    check_op(fn, [(3, 4)], dtype=np.float64)


def test_view_read_after_its_base_is_written_compiles_like_eager():
    """A trace reads a view through its base's current value, so the compiled function returns
    what eager does (it returned the view's value from before the write)."""
    def fn(x, w):
        v = x[0]
        x.mul_(2)
        return (v + 1) * w

    results = []
    for run in (fn, kiln.compile(fn, backend="numpy")):
        for _ in range(3):                 # trace, then replays
            x = kiln.tensor(np.arange(6.0).reshape(2, 3))
            w = kiln.tensor([1.0, 2.0, 3.0], requires_grad=True)
            out = run(x, w)
            out.sum().backward()
            results.append((out.detach().numpy(), x.numpy().copy(), w.grad.numpy()))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(results[0][0], [1.0, 6.0, 15.0])


@pytest.mark.parametrize("write", [lambda a: a.mul_(2), lambda a: a[1:3].mul_(2),
                                   lambda a: a.t()[0].add_(1)], ids=["base", "slice", "column"])
def test_retained_grad_follows_in_place_writes(write):
    grads = []
    for lib in (torch, kiln):
        x = lib.tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
        a = x * 1
        a.retain_grad()
        write(a)
        (a * a).sum().backward()
        grads.append((a.grad.numpy(), x.grad.numpy()))
    for k, t in zip(grads[1], grads[0]):
        np.testing.assert_allclose(k, t, rtol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda lib, x: _then_write((x * 1.5), lambda a: a * 2),           # a literal factor
    lambda lib, x: _then_write((x * 1.5), lambda a: a * x.detach()),  # a factor without grad
    lambda lib, x: _then_write((x * 1.5), lambda a: a / x.detach()),  # div reads its divisor
    lambda lib, x: _then_write((x * 1.5), lambda a: a.exp()),         # exp reads its output
    lambda lib, x: _then_write((x * 1.5), lambda a: a[:, 1:3].sigmoid()),
    lambda lib, x: _then_write((x * 1.5), lambda a: a.sqrt() + a.tanh()),
], ids=["mul_literal", "mul_constant", "div_numerator", "exp", "sigmoid_of_view", "sqrt_tanh"])
def test_writing_an_input_the_rule_does_not_read_is_allowed(fn):
    """Before backward, a tensor is written after an op used it in a way whose gradient
    does not need its old value."""
    check_op(fn, [(3, 4)], dtype=np.float64, low=0.5, high=2.0)


def _then_write(a, use):
    used = use(a)
    a.mul_(3)
    return used, a


def _random_view_program(lib, x, seed: int):
    """Views of views of one base, in-place writes through any of them, reads in between."""
    rnd = np.random.default_rng(seed)
    flat = x.reshape(-1)
    tensors, total = [x * 1.5], 0
    for step in range(8):
        t = tensors[rnd.integers(len(tensors))]
        kind = rnd.random()
        if kind < 0.35 and t.ndim >= 1 and t.shape[0] > 1:
            pick = rnd.integers(5)
            if pick == 0:
                v = t[1:]
            elif pick == 1:
                v = t[0]
            elif pick == 2 and t.ndim == 2:
                v = t[:, 1:3] if t.shape[1] >= 3 else t[:, :1]
            elif pick == 3 and t.ndim == 2:
                v = t.t()
            else:
                v = t[::2]
            tensors.append(v)
        elif kind < 0.75:
            k = int(rnd.integers(1, 4))
            op = rnd.integers(7)
            if op == 0:
                t.mul_(flat[k])
            elif op == 1:
                t.add_(flat[k] * 2)
            elif op == 2:
                t.mul_(k)
            elif op == 3:
                t.sub_(flat[k + 1])
            elif op == 4:
                t.sigmoid_()
            elif op == 5:
                t.relu_()
            else:
                tensors.append(t.exp())        # saves its output, which a later write may hit
        else:
            total = total + (t * (step + 1)).sum()
    return total + sum((u * (i + 1)).sum() for i, u in enumerate(tensors))


def test_random_programs_writing_through_views_match_torch():
    """Where torch computes a gradient kiln computes the same; where torch refuses (a saved
    value was overwritten) kiln refuses too or, its rule not needing that value, computes the
    gradient central differences give."""
    compared = 0
    for seed in range(80):
        x0 = random_array((3, 4), np.float64, 0.5, 1.5, np.random.default_rng(seed))
        try:
            _random_view_program(torch, to_torch(x0, True), seed).backward()
        except RuntimeError:
            _refused_or_exact(x0, seed)
            continue
        check_op(lambda lib, x: _random_view_program(lib, x, seed), [x0], dtype=np.float64,
                 seed=seed)
        compared += 1
    assert compared > 30          # about half the seeds (the rest check the refusals)


def _refused_or_exact(x0, seed, eps=1e-6):
    x = to_kiln(x0, True)
    try:
        _random_view_program(kiln, x, seed).backward()
    except RuntimeError as e:
        assert INPLACE_ERROR in str(e), e
        return
    numeric = np.zeros_like(x0)
    for i in range(x0.size):
        for sign in (1, -1):
            shifted = x0.copy()
            shifted.flat[i] += sign * eps
            with kiln.no_grad():
                numeric.flat[i] += sign * float(_random_view_program(kiln, to_kiln(shifted), seed))
    np.testing.assert_allclose(x.grad.numpy(), numeric / (2 * eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", [lambda x: x ** x, lambda x: x / 2.0, lambda x: x.exp()])
def test_writing_an_output_after_its_graph_is_freed(op):
    """After backward frees the graph, writing the output in place is allowed, as in PyTorch."""
    results = []
    for lib in (torch, kiln):
        x = lib.tensor([0.5, 1.5, 2.0], dtype=lib.float64, requires_grad=True)
        y = op(x)
        y.sum().backward()
        with lib.no_grad():
            y.mul_(3)
        results.append((y.detach().numpy().copy(), x.grad.numpy().copy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12)


@pytest.mark.parametrize("key", [(0, 1), (0, slice(0, 2)), (slice(None), 0)])
def test_setitem_of_a_value_that_does_not_broadcast_raises_what_pytorch_raises(key):
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError, match="shape mismatch|expand|must match|number of "):
            lib.ones(3, 4)[key] = lib.arange(4.0)
    with pytest.raises(RuntimeError, match=r"setitem: shape mismatch: value tensor of shape "
                                           r"\[4\] cannot be broadcast"):
        kiln.ones(3, 4)[key] = kiln.arange(4.0)


@pytest.mark.parametrize("dst", ["int64", "int32", "uint8", "bool", "float16", "float64"])
def test_copy_casts_into_any_dtype_as_pytorch_does(dst):
    src = np.array([1.7, 0.0, 3.2, -2.9, 200.5], dtype=np.float32)
    if dst == "uint8":
        src = np.abs(src)           # negative floats into uint8 are undefined in C
    out = []
    for lib in (torch, kiln):
        t = lib.zeros(5, dtype=getattr(lib, dst))
        t.copy_(lib.tensor(src))
        out.append(t.numpy())
    assert out[0].dtype == out[1].dtype
    np.testing.assert_array_equal(out[1], out[0])


def test_copy_from_another_float_dtype_passes_the_gradient_back_in_its_dtype():
    src = np.array([0.5, -1.5, 2.0])
    grads = []
    for lib in (torch, kiln):
        s = lib.tensor(src, dtype=lib.float64, requires_grad=True)
        w = lib.ones(3, requires_grad=True)
        y = (w * 2).clone()
        y.copy_(s * 3)
        (y * lib.tensor([1.0, 2.0, 3.0])).sum().backward()
        grads.append((s.grad.dtype, s.grad.numpy(), w.grad.numpy()))
    assert str(grads[1][0]).split(".")[-1] == str(grads[0][0]).split(".")[-1]
    np.testing.assert_allclose(grads[1][1], grads[0][1])
    np.testing.assert_allclose(grads[1][2], grads[0][2])


def _graph_of(lib, write):
    """(the written tensor's node: class name, name(), next_functions' names; the gradients of
    the original producer's leaf and of the written value) for `write(lib, c, v, s)`."""
    x = lib.tensor([[1., 2., 3.], [4., 5., 6.]], requires_grad=True)
    v = lib.tensor([7., 8., 9.], requires_grad=True)
    s = lib.tensor(3., requires_grad=True)
    c = x * 1
    write(lib, c, v, s)
    node = c.grad_fn
    shown = (type(node).__name__, node.name(),
             [None if n is None else n.name() for n, _ in node.next_functions])
    (c * lib.tensor([[1., -2., 3.], [4., 5., -6.]])).sum().backward()
    return shown, [None if t.grad is None else t.grad.tolist() for t in (x, v, s)]


SETITEM_NODES = {
    "c[0] = 5": lambda t, c, v, s: c.__setitem__(0, 5.),
    "c[0] = v": lambda t, c, v, s: c.__setitem__(0, v),
    "c[0, 1] = s": lambda t, c, v, s: c.__setitem__((0, 1), s),
    "c[:, 1] = s": lambda t, c, v, s: c.__setitem__((slice(None), 1), s),
    "c[-1, 1:] = v[1:]": lambda t, c, v, s: c.__setitem__((-1, slice(1, None)), v[1:]),
    "c[0:1] = 5": lambda t, c, v, s: c.__setitem__(slice(0, 1), 5.),
    "c[tensor(0)] = v": lambda t, c, v, s: c.__setitem__(t.tensor(0), v),
    "c[mask] = 0": lambda t, c, v, s: c.__setitem__(c > 4, 0.),
    "c[mask] = s": lambda t, c, v, s: c.__setitem__(c > 4, s),
    "c[idx] = v": lambda t, c, v, s: c.__setitem__(t.tensor([1]), v),
    "c[[1, 0]] = 5": lambda t, c, v, s: c.__setitem__([1, 0], 5.),
    "c[:, idx] = v[:2]": lambda t, c, v, s: c.__setitem__((slice(None), t.tensor([0, 2])),
                                                          v[:2]),
    "c[idx, 1] = v[:2]": lambda t, c, v, s: c.__setitem__((t.tensor([0, 1]), 1), v[:2]),
    "c[0, idx] = v[:2]": lambda t, c, v, s: c.__setitem__((0, t.tensor([0, 2])), v[:2]),
    "c[:] = 5": lambda t, c, v, s: c.__setitem__(slice(None), 5.),
    "c[...] = s": lambda t, c, v, s: c.__setitem__(Ellipsis, s),
    "c[...] = v * 2": lambda t, c, v, s: c.__setitem__(Ellipsis, v.expand(2, 3) * 2),
    "c[0] = v; c[1] = v": lambda t, c, v, s: (c.__setitem__(0, v), c.__setitem__(1, v)),
    "c[:, 1].mul_(2)": lambda t, c, v, s: c[:, 1].mul_(2),
    "c[0].add_(v)": lambda t, c, v, s: c[0].add_(v),
    "c[0].mul_(v)": lambda t, c, v, s: c[0].mul_(v),
    "c[0].relu_()": lambda t, c, v, s: c[0].relu_(),
    "c[0].zero_()": lambda t, c, v, s: c[0].zero_(),
    "c[0].fill_(5)": lambda t, c, v, s: c[0].fill_(5),
    "c[0].copy_(v)": lambda t, c, v, s: c[0].copy_(v),
    "c[0][1] = 5": lambda t, c, v, s: c[0].__setitem__(1, 5.),
    "c.t()[1] = v[:2]": lambda t, c, v, s: c.t().__setitem__(1, v[:2]),
    "c.mul_(2)": lambda t, c, v, s: c.mul_(2),
}


@pytest.mark.parametrize("write", [pytest.param(w, id=n) for n, w in SETITEM_NODES.items()])
def test_writes_into_part_of_a_tensor_have_torchs_nodes(write):
    """`c[key] = value` and in-place ops on a view of a non-leaf: PyTorch's CopySlices (or
    IndexPutBackward0 for an index tensor alone, FillBackward3 / CopyBackwards for the whole
    tensor), its name(), next_functions (the old history, then the value's), and the
    gradients reaching the original producer and the written value."""
    (k_node, k_grads), (t_node, t_grads) = _graph_of(kiln, write), _graph_of(torch, write)
    assert k_node == t_node
    assert k_grads == t_grads


def test_setitem_into_a_constant_tensor_has_torchs_node():
    for key, name in ((0, "torch::autograd::CopySlices"),
                      ((slice(None), [0, 2]), "IndexPutBackward0")):
        seen = []
        for lib in (torch, kiln):
            v = lib.tensor([7., 8.] if name.startswith("Index") else [7., 8., 9.],
                           requires_grad=True)
            c = lib.zeros(2, 3)
            c[key] = v
            c.sum().backward()
            seen.append((c.grad_fn.name(), [None if n is None else n.name()
                                            for n, _ in c.grad_fn.next_functions],
                         v.grad.tolist()))
        assert seen[1] == seen[0] and seen[0][0] == name


def _node_tree(node, depth: int = 4):
    if node is None:
        return None
    return (node.name(), tuple(_node_tree(n, depth - 1) for n, _ in node.next_functions)
            if depth else ())


BROADCAST_WRITES = {    # value shape -> the key whose region it is broadcast over
    "row = (1,)": ((1,), 0), "row = (1, 4)": ((1, 4), 0), "row = (1, 1, 4)": ((1, 1, 4), 0),
    "rows = (4,)": ((4,), slice(0, 2)), "rows, column = (1,)": ((1,), (slice(1, 3), 0)),
    "element = (1,)": ((1,), (0, 0)), "columns = ()": ((), (slice(None), slice(1, 3))),
    "row = (4,), same shape": ((4,), 0), "x[None, 0] = (1, 4)": ((1, 4), (None, 0)),
    "whole = (1,)": ((1,), Ellipsis), "whole = (4,)": ((4,), slice(None)),
    "mask = (1,)": ((1,), "mask"), "index = (1, 4)": ((1, 4), [0, 2]),
    "index = (4,)": ((4,), [0, 2]), "view's part = (1,)": ((1,), "view"),
    "float32 value = (1,)": ((1,), "float32"),
}


@pytest.mark.parametrize("shape,key", [pytest.param(*c, id=n) for n, c in
                                       BROADCAST_WRITES.items()])
def test_a_broadcast_value_written_into_part_of_a_tensor_is_expanded_as_torchs(shape, key):
    """`x[key] = v` with v smaller than the region: PyTorch views v without its leading unit
    dimensions and expands it (ViewBackward0 under ExpandBackward0, or neither when the shapes
    match); the same trees, and the gradients summed back to v's shape (float64, 1e-12)."""
    data = np.random.default_rng(7).normal(size=(3, 4))
    value = np.random.default_rng(8).normal(size=shape)
    seen = []
    for lib in (torch, kiln):
        base = lib.tensor(data, requires_grad=True)
        v = lib.tensor(value, dtype=lib.float32 if key == "float32" else lib.float64,
                       requires_grad=True)
        x = base * 1
        if key == "mask":
            x[x > 0] = v
        elif key == "view":
            x[1][1:3] = v
        else:
            x[0 if key == "float32" else key] = v
        weights = lib.tensor(np.linspace(-1, 2, 12).reshape(3, 4))
        (x * weights).sum().backward()
        seen.append((_node_tree(x.grad_fn), base.grad.numpy(), v.grad.numpy()))
    (k_tree, *k_grads), (t_tree, *t_grads) = seen[1], seen[0]
    assert k_tree == t_tree
    for k, t in zip(k_grads, t_grads):
        assert k.shape == t.shape and k.dtype == t.dtype
        np.testing.assert_allclose(k, t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make,shape", [
    (lambda lib: lib.arange(12.0).reshape(3, 4).t() + 1, (-1,)),
    (lambda lib: lib.arange(24.0).reshape(2, 3, 4).permute(1, 0, 2) * 2, (3, -1)),
    (lambda lib: lib.arange(24.0).reshape(2, 3, 4).transpose(0, 2).exp(), (4, 6)),
], ids=["transposed_sum", "permuted_product", "transposed_exp"])
def test_view_of_a_fresh_result_laid_out_as_its_input_is_refused_as_in_torch(make, shape):
    """A fresh elementwise result keeps its input's layout in PyTorch as in kiln: where that
    layout cannot be viewed, view() raises in both (kiln relays out only a convolution's
    channels-last result, whose PyTorch layout is contiguous)."""
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError, match=r"view size is not compatible.*reshape"):
            make(lib).view(shape)
    np.testing.assert_allclose(make(kiln).reshape(shape).numpy(),
                               make(torch).reshape(shape).numpy(), rtol=1e-6)
