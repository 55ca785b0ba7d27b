"""Each matrix factorization runs its library routine once per call, eagerly, in backward and in
compiled replays, with torch's values, gradients, dtypes and strides (kiln.linalg's packed
factorization primitives, kiln.ir.ops_extra)."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

import kiln

R = np.random.default_rng(11)


def general(*shape):
    a = R.normal(size=shape) * 0.5
    return a + 2 * np.eye(shape[-1]) if shape[-1] == shape[-2] else a


def symmetric(*shape):
    """Symmetric matrices with well-separated eigenvalues (eigenvector gradients divide by
    their gaps)."""
    n = shape[-1]
    q = np.linalg.qr(R.normal(size=shape))[0]
    return (q * np.arange(1.0, n + 1) * 1.5) @ np.swapaxes(q, -1, -2)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the LAPACK drivers the factorizations call: NumPy's svd (as "svdvals" without
    the vectors), eigh, eigvalsh, eig, eigvals, qr and slogdet, and scipy's getrf (one call per
    matrix of a batch)."""
    counts = collections.Counter()

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            values_only = name == "svd" and kwargs.get("compute_uv") is False
            counts["svdvals" if values_only else name] += 1
            return fn(*args, **kwargs)
        return wrapper

    for name in ("svd", "eigh", "eigvalsh", "eig", "eigvals", "qr", "slogdet"):
        monkeypatch.setattr(np.linalg, name, counting(name, getattr(np.linalg, name)))
    real_get = scipy.linalg.get_lapack_funcs

    def get_lapack_funcs(names, arrays=(), *args, **kwargs):
        funcs = real_get(names, arrays, *args, **kwargs)
        return tuple(counting(n, f) if n == "getrf" else f for n, f in zip(names, funcs))
    monkeypatch.setattr(scipy.linalg, "get_lapack_funcs", get_lapack_funcs)
    return counts


def _loss(outputs):
    """A loss reading every floating output (|z| of complex ones), weighted unevenly."""
    total = 0.0
    for i, o in enumerate(outputs):
        if isinstance(o, kiln.Tensor) and o.requires_grad:
            o = o.abs() if o.dtype.is_complex else o
            total = total + (o * (1.0 + 0.1 * i)).sum()
    return total


# (name, function of kiln, input, {driver: calls for the whole call})
CALL_CASES = [
    ("svd", lambda a: kiln.linalg.svd(a), general(2, 5, 3), {"svd": 1}),
    ("svd wide", lambda a: kiln.linalg.svd(a), general(3, 5), {"svd": 1}),
    ("svd reduced", lambda a: kiln.linalg.svd(a, full_matrices=False), general(5, 3),
     {"svd": 1}),
    ("torch.svd", lambda a: kiln.svd(a), general(2, 3, 4), {"svd": 1}),
    ("svdvals", lambda a: (kiln.linalg.svdvals(a),), general(4, 3), {"svd": 1}),
    ("pinv", lambda a: (kiln.linalg.pinv(a),), general(4, 3), {"svd": 1}),
    ("matrix_norm 2 and nuc", lambda a: (kiln.linalg.matrix_norm(a, 2),
                                         kiln.norm(a, p="nuc")), general(4, 3), {"svd": 2}),
    ("svd_lowrank", lambda a: kiln.svd_lowrank(a, q=2, niter=1), general(6, 4),
     {"svd": 1, "qr": 3}),
    ("eigh", lambda a: kiln.linalg.eigh(a), symmetric(2, 4, 4), {"eigh": 1}),
    ("eigh upper", lambda a: kiln.linalg.eigh(a, UPLO="U"), symmetric(4, 4), {"eigh": 1}),
    ("eigvalsh", lambda a: (kiln.linalg.eigvalsh(a),), symmetric(4, 4), {"eigh": 1}),
    ("pinv hermitian", lambda a: (kiln.linalg.pinv(a, hermitian=True),), symmetric(4, 4),
     {"eigh": 1}),
    ("eig", lambda a: kiln.linalg.eig(a), general(2, 3, 3), {"eig": 1}),
    ("eigvals", lambda a: (kiln.linalg.eigvals(a),), general(3, 3), {"eig": 1}),
    ("qr", lambda a: kiln.linalg.qr(a), general(2, 5, 3), {"qr": 1}),
    ("qr wide", lambda a: kiln.linalg.qr(a), general(3, 5), {"qr": 1}),
    ("slogdet", lambda a: kiln.linalg.slogdet(a), general(2, 3, 3), {"slogdet": 1}),
    ("det logdet", lambda a: (kiln.linalg.det(a), kiln.logdet(a @ a.mT)), general(3, 3),
     {"slogdet": 2}),
    ("lu_factor", lambda a: kiln.linalg.lu_factor(a), general(2, 3, 3), {"getrf": 2}),
    ("lu", lambda a: kiln.linalg.lu(a), general(4, 3), {"getrf": 1}),
    ("torch.lu", lambda a: kiln.lu(a), general(3, 3), {"getrf": 1}),
]


@pytest.mark.parametrize("fn,a,expected", [pytest.param(f, a, e, id=n)
                                           for n, f, a, e in CALL_CASES])
def test_one_library_call_per_factorization_forward_and_backward(calls, fn, a, expected):
    """The call, then a backward through every output, run each LAPACK driver as often as the
    call factorizes: once for each of its factorizations (the gradient rules read the results
    they saved, never factorizing again)."""
    A = kiln.tensor(a, requires_grad=True)
    kiln.manual_seed(0)
    outputs = fn(A)
    assert dict(calls) == expected
    _loss(outputs).backward()
    assert dict(calls) == expected
    assert A.grad is not None and np.isfinite(A.grad.numpy()).all()


# without a gradient to compute, the values alone come from LAPACK's values-only drivers:
# (name, function of the library, input, calls eagerly, calls in a compiled replay, where
# compiling merges equal factorizations of one input into one)
VALUES_CASES = [
    ("svdvals", lambda t, a: t.linalg.svdvals(a), general(2, 4, 3), {"svdvals": 1}, None),
    ("matrix_rank cond", lambda t, a: (t.linalg.matrix_rank(a), t.linalg.cond(a)),
     general(3, 3), {"svdvals": 2}, {"svdvals": 1}),
    ("eigvalsh", lambda t, a: t.linalg.eigvalsh(a, UPLO="U"), symmetric(2, 4, 4),
     {"eigvalsh": 1}, None),
    ("matrix_rank hermitian", lambda t, a: t.linalg.matrix_rank(a, hermitian=True),
     symmetric(4, 4), {"eigvalsh": 1}, None),
    ("eigvals", lambda t, a: t.linalg.eigvals(a), general(2, 3, 3), {"eigvals": 1}, None),
]


@pytest.mark.parametrize("fn,a,eager,compiled", [pytest.param(f, a, e, c, id=n)
                                                 for n, f, a, e, c in VALUES_CASES])
@pytest.mark.parametrize("how", ["no grad", "no_grad()", "compiled"])
def test_values_without_a_gradient_take_the_values_only_driver(calls, fn, a, eager, compiled,
                                                               how):
    A = kiln.tensor(a, requires_grad=how == "no_grad()")
    want = fn(torch, torch.tensor(a))
    if how == "compiled":
        complex_result = np.iscomplexobj(want)      # runs eagerly, saying so
        step = kiln.compile(lambda x: fn(kiln, x), fullgraph=not complex_result)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(A)                      # the trace
        assert [str(w.message) for w in caught if "complex" in str(w.message)] or \
            not complex_result
        calls.clear()
        got = step(A)
    else:
        with kiln.no_grad():
            got = fn(kiln, A)
    assert dict(calls) == (compiled or eager if how == "compiled" else eager)
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)


COMPILED_CASES = [
    ("svd", lambda a: kiln.linalg.svd(a, full_matrices=False), general(2, 5, 3), "svd"),
    ("svd full", lambda a: kiln.linalg.svd(a), general(4, 3), "svd"),
    ("eigh", lambda a: kiln.linalg.eigh(a), symmetric(2, 4, 4), "eigh"),
    ("qr", lambda a: kiln.linalg.qr(a), general(5, 3), "qr"),
    ("slogdet", lambda a: kiln.linalg.slogdet(a), general(2, 3, 3), "slogdet"),
    ("lu", lambda a: kiln.linalg.lu(a), general(3, 3), "getrf"),
]


@pytest.mark.parametrize("fn,a,driver", [pytest.param(f, a, d, id=n)
                                         for n, f, a, d in COMPILED_CASES])
@pytest.mark.parametrize("grad", [False, True], ids=["values", "with backward"])
def test_compiled_replays_factorize_once_and_equal_eager(calls, fn, a, driver, grad):
    """A compiled function's graph holds one factorization node, each replay calls its driver
    once per matrix (backward included), and values and gradients equal eager's."""
    batch = int(np.prod(a.shape[:-2]))

    def step(x):
        outputs = fn(x)
        if grad:
            _loss(outputs).backward()
        return tuple(o for o in outputs if o.dtype.is_floating_point)

    compiled = kiln.compile(step, fullgraph=True)
    eager_x = kiln.tensor(a, requires_grad=grad)
    want = step(eager_x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a fallback to eager warns
        x = kiln.tensor(a, requires_grad=grad)
        compiled(x)                              # the trace
        entries = [e for e in compiled.entries.values() if e.artifact is not None]
        assert len(entries) == 1
        graph = entries[0].traced.graph
        op = {"getrf": "lu"}.get(driver, driver)
        assert [n.op for n in graph.nodes].count(f"linalg_{op}") == 1
        for _ in range(2):
            calls.clear()
            x = kiln.tensor(a, requires_grad=grad)
            got = compiled(x)
            assert dict(calls) == {driver: batch if driver == "getrf" else 1}
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
    if grad:
        np.testing.assert_allclose(x.grad.numpy(), eager_x.grad.numpy(), rtol=1e-10,
                                   atol=1e-12)


# outputs compared as torch's, gradients of `_loss`-style weighted sums of quantities that do
# not depend on the vectors' signs (or phases)
def _svd_invariants(U, S, Vh):
    k = S.shape[-1]
    U, Vh = U[..., :, :k], Vh[..., :k, :]
    return S, U.abs() ** 2, Vh.abs() ** 2, (U * S.unsqueeze(-2)) @ Vh


def _eigh_invariants(L, V):
    return L, V.abs() ** 2, (V * L.unsqueeze(-2) ** 2) @ V.mH


def _eig_invariants(L, V):
    return L, V.abs()


def _complex(*shape):
    a = (R.normal(size=shape) + 1j * R.normal(size=shape)) * 0.5
    return a + 2 * np.eye(shape[-1]) if shape[-1] == shape[-2] else a


def _hermitian(*shape):
    n = shape[-1]
    q = np.linalg.qr(R.normal(size=shape) + 1j * R.normal(size=shape))[0]
    return (q * np.arange(1.0, n + 1) * 1.5) @ np.conj(np.swapaxes(q, -1, -2))


GRAD_CASES = [
    ("svd tall", lambda t, a: _svd_invariants(*t.linalg.svd(a)), general(2, 5, 3)),
    ("svd wide reduced", lambda t, a: _svd_invariants(*t.linalg.svd(a, full_matrices=False)),
     general(2, 3, 5)),
    ("svd square", lambda t, a: _svd_invariants(*t.linalg.svd(a)), general(4, 4)),
    ("svd complex", lambda t, a: _svd_invariants(*t.linalg.svd(a, full_matrices=False)),
     _complex(2, 4, 3)),
    ("torch.svd", lambda t, a: (lambda U, S, V: _svd_invariants(U, S, V.mT))(*t.svd(a)),
     general(3, 4)),
    ("eigh", lambda t, a: _eigh_invariants(*t.linalg.eigh(a)), symmetric(2, 4, 4)),
    ("eigh upper", lambda t, a: _eigh_invariants(*t.linalg.eigh(a, UPLO="U")),
     symmetric(4, 4) + np.triu(R.normal(size=(4, 4)), 1) * 0.1),
    ("eigh complex", lambda t, a: _eigh_invariants(*t.linalg.eigh(a)), _hermitian(2, 3, 3)),
    ("eig", lambda t, a: _eig_invariants(*t.linalg.eig(a)), general(2, 3, 3)),
    ("eig complex", lambda t, a: _eig_invariants(*t.linalg.eig(a)), _complex(3, 3)),
    ("qr", lambda t, a: tuple(t.linalg.qr(a)), general(2, 5, 3)),
    ("qr wide complex", lambda t, a: tuple(t.linalg.qr(a)), _complex(3, 5)),
    ("slogdet", lambda t, a: tuple(t.linalg.slogdet(a)), general(2, 3, 3)),
    ("slogdet negative", lambda t, a: tuple(t.linalg.slogdet(a)),
     general(3, 3) @ np.diag([1.0, 1.0, -1.0])),
    ("slogdet complex", lambda t, a: tuple(t.linalg.slogdet(a)), _complex(2, 3, 3)),
    ("lu_factor", lambda t, a: t.linalg.lu_factor(a)[0], general(2, 4, 3)),
    ("lu", lambda t, a: tuple(t.linalg.lu(a))[1:], general(2, 3, 4)),
    ("lu complex", lambda t, a: tuple(t.linalg.lu(a))[1:], _complex(3, 3)),
]


def _weighted(outputs, lib):
    """sum_i (out_i * w_i), w_i fixed weights of each output's shape (real: the loss is real)."""
    total = 0.0
    rng = np.random.default_rng(5)
    for o in outputs:
        w = lib.tensor(rng.uniform(0.5, 1.5, size=tuple(o.shape)))
        o = o.real if o.dtype.is_complex else o
        total = total + (o * w.to(o.dtype)).sum()
    return total


@pytest.mark.parametrize("fn,a", [pytest.param(f, a, id=n) for n, f, a in GRAD_CASES])
def test_values_and_gradients_of_all_outputs_at_once_match_torch(fn, a):
    """One loss of every output: the packed rule sees all their gradients together, as torch's
    backward does; values and gradients as torch's (float64 / complex128)."""
    grads, values = [], []
    for lib in (torch, kiln):
        A = lib.tensor(a, requires_grad=True)
        outputs = fn(lib, A)
        values.append([o.detach().numpy() for o in outputs])
        grads.append(lib.autograd.grad(_weighted(outputs, lib), A)[0].numpy())
    for k, t in zip(values[1], values[0]):
        np.testing.assert_allclose(k, t, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name,fn,a", [pytest.param(n, f, a, id=n) for n, f, a in GRAD_CASES
                                       if not np.iscomplexobj(a)])
def test_gradients_of_all_outputs_match_finite_differences(name, fn, a):
    # eigh's gradient is that of a function of symmetric matrices (as torch's): the check
    # perturbs symmetric ones
    sym = name.startswith("eigh")
    A = kiln.tensor(a, requires_grad=True)
    assert kiln.autograd.gradcheck(
        lambda x: _weighted(fn(kiln, (x + x.mT) / 2 if sym else x), kiln), [A], eps=1e-6,
        atol=1e-6, rtol=1e-4)


# eig's results are complex: a compiled function with them runs eagerly
@pytest.mark.parametrize("fn,a", [pytest.param(f, a, id=n) for n, f, a in GRAD_CASES
                                  if not np.iscomplexobj(a) and n != "eig"])
def test_compiled_gradients_of_all_outputs_equal_eager(fn, a):
    def step(x):
        loss = _weighted(fn(kiln, x), kiln)
        loss.backward()
        return loss

    compiled = kiln.compile(step, fullgraph=True)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (step, compiled, compiled):     # eager, the trace, a replay
            x = kiln.tensor(a, requires_grad=True)
            results.append((f(x).item(), x.grad.numpy()))
    for loss, grad in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-12)
        np.testing.assert_allclose(grad, results[0][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,fn,a", [pytest.param(n, f, a, id=n) for n, f, a in GRAD_CASES
                                       if not np.iscomplexobj(a) and n != "eig"])
def test_forward_mode_tangents_of_all_outputs_match_torch(name, fn, a):
    """Forward-mode AD finds tangents from the gradient rules (differentiated in the gradient,
    at 0): the packed rules are linear in every result's gradient, as torch's jvp."""
    import torch.autograd.forward_ad as tfwd

    import kiln.autograd.forward_ad as kfwd
    direction = R.normal(size=a.shape)
    if name.startswith("eigh"):      # torch's eigh jvp reads all of a symmetric direction
        direction = direction + np.swapaxes(direction, -1, -2)
    tangents = []
    for lib, fwd in ((torch, tfwd), (kiln, kfwd)):
        with fwd.dual_level():
            outputs = fn(lib, fwd.make_dual(lib.tensor(a), lib.tensor(direction)))
            tangents.append([fwd.unpack_dual(o).tangent for o in outputs])
    tangents[0] = [t.numpy(force=True) for t in tangents[0]]      # a sign's: a ZeroTensor
    tangents[1] = [t.numpy() for t in tangents[1]]
    for k, t in zip(tangents[1], tangents[0]):
        np.testing.assert_allclose(k, t, rtol=1e-8, atol=1e-10)


def test_unused_outputs_leave_repeated_values_a_finite_gradient():
    """Singular values and eigenvalues that repeat (the identity's) divide the vectors' part of
    the gradient by zero gaps; when the loss reads only the values, that part is zero and the
    gradient is torch's finite one (U Vh; the identity)."""
    q = np.linalg.qr(R.normal(size=(4, 4)))[0]
    for lib_name in ("svd", "eigh"):
        grads = []
        for lib in (torch, kiln):
            A = lib.tensor(q * 2.0 if lib_name == "svd" else q @ q.T * 3.0, requires_grad=True)
            values = lib.linalg.svd(A)[1] if lib_name == "svd" else lib.linalg.eigh(A)[0]
            grads.append(lib.autograd.grad((values * values).sum(), A)[0].numpy())
        assert np.isfinite(grads[1]).all()
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-10, atol=1e-12)


STRIDE_CASES = [
    ("svd", lambda t, a: t.linalg.svd(a), (2, 5, 3)),
    ("svd wide", lambda t, a: t.linalg.svd(a), (2, 3, 5)),
    ("svd reduced", lambda t, a: t.linalg.svd(a, full_matrices=False), (2, 5, 3)),
    ("svd reduced wide", lambda t, a: t.linalg.svd(a, full_matrices=False), (2, 3, 5)),
    ("torch.svd", lambda t, a: t.svd(a), (2, 5, 3)),
    ("svdvals", lambda t, a: (t.linalg.svdvals(a),), (2, 5, 3)),
    ("eigh", lambda t, a: t.linalg.eigh(a + a.mT), (2, 4, 4)),
    ("eigvalsh", lambda t, a: (t.linalg.eigvalsh(a + a.mT),), (2, 4, 4)),
    ("eig", lambda t, a: t.linalg.eig(a), (2, 4, 4)),
    ("qr", lambda t, a: t.linalg.qr(a), (2, 5, 3)),
    ("qr wide", lambda t, a: t.linalg.qr(a), (2, 3, 5)),
    ("slogdet", lambda t, a: t.linalg.slogdet(a), (2, 4, 4)),
    ("slogdet one matrix", lambda t, a: t.linalg.slogdet(a), (4, 4)),
    ("lu_factor", lambda t, a: t.linalg.lu_factor(a), (2, 4, 4)),
    ("lu", lambda t, a: t.linalg.lu(a), (2, 5, 3)),
]


@pytest.mark.parametrize("fn,shape", [pytest.param(f, s, id=n) for n, f, s in STRIDE_CASES])
@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
def test_outputs_have_torchs_names_shapes_dtypes_and_strides(fn, shape, dtype):
    a = R.normal(size=shape) + (1j * R.normal(size=shape) if dtype == "complex128" else 0)
    a = a.astype(dtype)
    t_out, k_out = fn(torch, torch.tensor(a)), fn(kiln, kiln.tensor(a))
    assert type(k_out).__name__ == type(t_out).__name__ and len(k_out) == len(t_out)
    for field in getattr(k_out, "_fields", ()):
        assert getattr(k_out, field) is k_out[k_out._fields.index(field)]
        assert hasattr(t_out, field)
    for k, t in zip(k_out, t_out):
        assert tuple(k.shape) == tuple(t.shape)
        assert str(k.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
        assert k.stride() == t.stride()
        assert k.is_contiguous() == t.is_contiguous()


def test_outputs_own_their_memory():
    """Writing into one output leaves the others (and their version counters) alone, as with
    torch's separate result tensors."""
    U, S, Vh = kiln.linalg.svd(kiln.tensor(general(4, 3)))
    s0, v0 = S.numpy().copy(), Vh.numpy().copy()
    versions = S._version[0], Vh._version[0]
    U.zero_()
    assert (S._version[0], Vh._version[0]) == versions
    np.testing.assert_array_equal(S.numpy(), s0)
    np.testing.assert_array_equal(Vh.numpy(), v0)
    assert U._base is None and S._base is None
