"""`out=` by PyTorch's rules (`kiln.torch_namespace.write_out`), each case run in torch and in
kiln: which dtypes an op casts its result into and which it refuses, resizing (with its warning
for a non-empty `out`), the device and autograd refusals, named results, and kiln.compile."""

import math
import warnings

import numpy as np
import pytest
import torch

import kiln


def _both(build):
    """`build(lib)` in torch and in kiln: (torch's value or exception, kiln's)."""
    out = []
    for lib in (torch, kiln):
        try:
            out.append(build(lib))
        except Exception as e:          # compared below: both must raise, or neither
            out.append(e)
    return out


DTYPE_CASES = {
    # an op that promotes (sin, add, cat, rsqrt, eq) casts into any dtype `can_cast` allows
    "sin int into float": lambda t: t.sin(t.tensor([1, -2]), out=t.zeros(2)),
    "sin float into double": lambda t: t.sin(t.tensor([1.5, -2.5]),
                                             out=t.zeros(2, dtype=t.float64)),
    "sin float into long": lambda t: t.sin(t.tensor([1.5, -2.5]), out=t.zeros(2, dtype=t.int64)),
    "add int into float": lambda t: t.add(t.tensor([1, 2]), t.tensor([3, 4]), out=t.zeros(2)),
    "add float into long": lambda t: t.add(t.tensor([1.5]), 1, out=t.zeros(1, dtype=t.int64)),
    "add float into half": lambda t: t.add(t.tensor([1.5]), 1, out=t.zeros(1, dtype=t.float16)),
    "cat float into double": lambda t: t.cat([t.ones(2), t.zeros(1)],
                                             out=t.zeros(3, dtype=t.float64)),
    "eq into float": lambda t: t.eq(t.tensor([1., 2.]), 1., out=t.zeros(2)),
    "rsqrt float into double": lambda t: t.rsqrt(t.tensor([4.]), out=t.zeros(1, dtype=t.float64)),
    "erf float into complex": lambda t: t.erf(t.tensor([.5]), out=t.zeros(1, dtype=t.complex64)),
    # ... one that keeps its input's dtype (abs, neg, ceil, mm, amax) takes only that dtype
    "abs int into float": lambda t: t.abs(t.tensor([1, -2]), out=t.zeros(2)),
    "neg int into float": lambda t: t.neg(t.tensor([1, -2]), out=t.zeros(2)),
    "ceil float into double": lambda t: t.ceil(t.tensor([1.5]), out=t.zeros(1, dtype=t.float64)),
    "mm float into double": lambda t: t.mm(t.ones(2, 2), t.ones(2, 2),
                                           out=t.zeros(2, 2, dtype=t.float64)),
    "amax float into double": lambda t: t.amax(t.ones(2, 2), 0, out=t.zeros(2, dtype=t.float64)),
    # ... and some decide by the call, as PyTorch's kernels do
    "diff n=1 into double": lambda t: t.diff(t.tensor([1., 4., 9.]), out=t.zeros(
        2, dtype=t.float64)),
    "diff n=0 into double": lambda t: t.diff(t.tensor([1., 4.]), 0, out=t.zeros(
        2, dtype=t.float64)),
    "cumsum into double": lambda t: t.cumsum(t.ones(3), 0, out=t.zeros(3, dtype=t.float64)),
    "cumsum dtype= into double": lambda t: t.cumsum(t.ones(3), 0, dtype=t.float32,
                                                    out=t.zeros(3, dtype=t.float64)),
    "lerp number weight": lambda t: t.lerp(t.ones(2), t.zeros(2), .25,
                                           out=t.zeros(2, dtype=t.float64)),
    "lerp tensor weight": lambda t: t.lerp(t.ones(2), t.zeros(2), t.full((2,), .25),
                                           out=t.zeros(2, dtype=t.float64)),
    "F.linear into double": lambda t: t.nn.functional.linear(
        t.ones(2, 3), t.ones(4, 3), out=t.zeros(2, 4, dtype=t.float64)),
    "factory dtype not out's": lambda t: t.zeros(2, dtype=t.float32,
                                                 out=t.zeros(2, dtype=t.float64)),
    "linalg.det float into double": lambda t: t.linalg.det(t.eye(2), out=t.zeros(
        (), dtype=t.float64)),
    "special.ndtr float into double": lambda t: t.special.ndtr(t.tensor([.5]), out=t.zeros(
        1, dtype=t.float64)),
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_out_dtype_cast_or_refusal_as_torch(case):
    t, k = _both(DTYPE_CASES[case])
    if isinstance(t, Exception):
        assert isinstance(k, RuntimeError), f"{case}: torch raised {t}, kiln gave {k}"
        if "can't be cast" in str(t):
            assert str(t).split(" can't")[0] in str(k)       # "result type Float"
        return
    assert not isinstance(k, Exception), f"{case}: torch wrote, kiln raised {k}"
    assert k.dtype.name == str(t.dtype).replace("torch.", "")
    np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("start, warns", [((3,), True), ((2, 1), True), ((0,), False)])
def test_out_of_another_shape_is_resized_warning_unless_empty(start, warns):
    got = []
    for lib in (torch, kiln):
        o = lib.zeros(*start)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = lib.exp(lib.tensor([[0.5, -1.0]]), out=o)
        resized = [w for w in seen if "resized" in str(w.message)]
        assert r is o and tuple(o.shape) == (1, 2)
        assert bool(resized) == warns
        assert not resized or resized[0].category is UserWarning
        assert not resized or resized[0].filename == __file__     # the user's line
        got.append(o.numpy())
    np.testing.assert_allclose(got[1], got[0], rtol=1e-6)


# (base, the view of it given as out=, the result's shape): the view takes the result's shape,
# contiguous, from where it starts in its base's memory, so the base sees what is written
VIEW_OUTS = {
    "right shape": (lambda t: t.zeros(4), lambda b: b[:3], (3,)),
    "right shape, strided": (lambda t: t.zeros(6), lambda b: b[::2], (3,)),
    "right shape, transposed": (lambda t: t.zeros(2, 3), lambda b: b.t(), (3, 2)),
    "grown inside the base": (lambda t: t.zeros(4), lambda b: b[:2], (3,)),
    "shrunk": (lambda t: t.zeros(2, 3), lambda b: b[0], (2,)),
    "empty view grown": (lambda t: t.zeros(4), lambda b: b[:0], (3,)),
    "strided view made contiguous": (lambda t: t.zeros(6), lambda b: b[::2], (2,)),
    "a column grown": (lambda t: t.zeros(2, 3), lambda b: b[:, 0], (3,)),
    "transposed, other shape": (lambda t: t.zeros(2, 3), lambda b: b.t(), (2, 3)),
    "offset view grown": (lambda t: t.zeros(3, 2), lambda b: b[1, :1], (2, 2)),
}


@pytest.mark.parametrize("case", list(VIEW_OUTS))
def test_out_into_a_view_writes_its_base_as_torch(case):
    make_base, take_view, shape = VIEW_OUTS[case]
    got = []
    for lib in (torch, kiln):
        base = make_base(lib)
        v = take_view(base)
        had = v.numel()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = lib.add(lib.ones(shape), lib.arange(math.prod(shape)).reshape(shape), out=v)
        resized = [w for w in seen if "resized" in str(w.message)]
        assert r is v and bool(resized) == (tuple(shape) != tuple(take_view(base).shape)
                                            and had > 0)
        got.append((base.numpy().copy(), v.numpy().copy(), tuple(v.shape), v.stride(),
                    v.storage_offset()))
        v.mul_(10)                      # still the base's memory afterwards
        got.append(base.numpy().copy())
    for k, t in zip(got[len(got) // 2:], got[:len(got) // 2]):
        if isinstance(t, tuple):
            np.testing.assert_array_equal(k[0], t[0])
            np.testing.assert_array_equal(k[1], t[1])
            assert k[2:] == t[2:]
        else:
            np.testing.assert_array_equal(k, t)


def test_out_view_whose_base_has_no_room_is_refused():
    """torch grows the memory a view shares with its base (resizing a non-empty out=, which it
    deprecates); kiln's memory cannot grow, so it raises saying so, and the base is unchanged."""
    base = torch.zeros(4)
    torch.add(torch.ones(3), 1, out=base[2:])
    assert base.tolist() == [0.0, 0.0, 2.0, 2.0]
    base = kiln.zeros(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"add: cannot resize out=, a view of shape \[2\] "
                           r"starting at element 2 of a tensor of shape \[4\], to the result's "
                           r"shape \[3\]"):
            kiln.add(kiln.ones(3), 1, out=base[2:])
    assert base.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_resized_out_keeps_its_own_views():
    """A tensor given as out= and shrunk keeps its memory, as torch's does: its views see the
    result."""
    got = []
    for lib in (torch, kiln):
        o = lib.zeros(4)
        head = o[:2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib.add(lib.ones(3), lib.arange(3), out=o)
        got.append((o.tolist(), head.tolist()))
    assert got[1] == got[0]


def test_out_refuses_autograd_as_torch():
    for requires in ("input", "out"):
        msgs = []
        for lib in (torch, kiln):
            x = lib.ones(2, requires_grad=requires == "input")
            o = lib.zeros(2, requires_grad=requires == "out")
            with pytest.raises(RuntimeError) as e:
                lib.sin(x, out=o)
            msgs.append(str(e.value))
            with lib.no_grad():                 # no graph to record: allowed
                assert lib.sin(x, out=o) is o
        assert "functions with out=... arguments don't support automatic differentiation" \
            in msgs[1]


def test_out_on_another_device_is_refused():
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError):
            lib.sin(lib.ones(2), out=lib.empty(2, device="meta"))


def test_named_results_hold_the_out_tensors():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    results = []
    for lib in (torch, kiln):
        v, i = lib.zeros(3), lib.zeros(3, dtype=lib.int64)
        r = lib.max(lib.tensor(x), 1, out=(v, i))
        assert r.values is v and r.indices is i and r[0] is v
        results.append((v.numpy(), i.numpy()))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    with pytest.raises(TypeError, match="tuple of 2"):
        kiln.max(kiln.tensor(x), 1, out=(kiln.zeros(3),))


def test_out_may_be_an_input():
    got = []
    for lib in (torch, kiln):
        a = lib.tensor([1.0, 2.0])
        assert lib.mul(a, a, out=a) is a
        got.append(a.numpy())
    np.testing.assert_array_equal(got[1], got[0])


def test_compiled_out_equals_eager_and_a_resize_runs_eagerly():
    x = kiln.tensor(np.linspace(-1, 1, 4, dtype=np.float32))

    def scaled_sin(x, o):
        return kiln.sin(x, out=o) * 2

    def shifted_into(x, o):
        kiln.add(x, 1, out=o)
        return o.sum()

    compiled, grown = kiln.compile(scaled_sin), kiln.compile(shifted_into)
    for _ in range(3):                  # trace, then replays
        o, oe = kiln.zeros(4), kiln.zeros(4)
        np.testing.assert_allclose(compiled(x, o).numpy(), scaled_sin(x, oe).numpy())
        np.testing.assert_allclose(o.numpy(), oe.numpy())
    with pytest.warns(UserWarning, match=r"add\(out=\.\.\.\) resizes out"):
        o = kiln.zeros(0)
        grown(x, o)
    for _ in range(2):
        o, oe = kiln.zeros(0), kiln.zeros(0)
        np.testing.assert_allclose(grown(x, o).numpy(), shifted_into(x, oe).numpy())
        np.testing.assert_allclose(o.numpy(), oe.numpy())


def test_normal_draws_in_outs_dtype():
    """torch.normal into a float64 out draws float64 numbers (another stream than float32's),
    from a float32 mean as from numbers."""
    mean = np.linspace(-1, 1, 24, dtype=np.float32)
    got = []
    for lib in (torch, kiln):
        lib.manual_seed(0)
        a = lib.normal(lib.tensor(mean), 2.0, out=lib.zeros(24, dtype=lib.float64))
        b = lib.normal(0.0, 1.0, (20,), out=lib.zeros(20, dtype=lib.float64))
        got.append((a.numpy(), b.numpy()))
    np.testing.assert_allclose(got[1][0], got[0][0], rtol=1e-12)
    np.testing.assert_allclose(got[1][1], got[0][1], rtol=1e-12)
