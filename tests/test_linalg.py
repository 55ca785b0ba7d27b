"""kiln.linalg against torch.linalg: values and gradients in float64 on well-conditioned random
matrices (symmetric positive-definite where the op needs it, distinct eigenvalues and singular
values where gradients divide by their gaps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.parity import check_op

R = np.random.default_rng(7)


def general(*shape):
    """Random matrices shifted towards the identity: comfortably invertible."""
    a = R.normal(size=shape) * 0.5
    return a + 2 * np.eye(shape[-1]) if shape[-1] == shape[-2] else a


def spd_of(lib, b):
    """A symmetric positive-definite matrix made differentiably from `b`."""
    n = b.shape[-1]
    return b @ b.transpose(-2, -1) + n * lib.eye(n, dtype=b.dtype)


def sym_of(b):
    return b + b.transpose(-2, -1)


def _distinct_sym():
    q, _ = np.linalg.qr(R.normal(size=(4, 4)))
    return q @ np.diag([1.0, 2.5, 4.0, 6.0]) @ q.T


DISTINCT = _distinct_sym()


def svd_invariants(U, S, Vh):
    """Singular vectors are defined up to sign (LAPACK builds differ): compare what is not."""
    return S, U * U, Vh * Vh, (U * S.unsqueeze(-2)) @ Vh


CASES = [
    ("inv", lambda t, a: t.linalg.inv(a), [general(2, 3, 3)]),
    ("det", lambda t, a: t.linalg.det(a), [general(2, 3, 3)]),
    ("slogdet", lambda t, a: tuple(t.linalg.slogdet(a)), [general(3, 3)]),
    ("solve", lambda t, a, b: t.linalg.solve(a, b), [general(3, 3), general(3, 2)]),
    ("solve vector", lambda t, a, b: t.linalg.solve(a, b), [general(3, 3), R.normal(size=3)]),
    ("solve right", lambda t, a, b: t.linalg.solve(a, b, left=False),
     [general(3, 3), general(2, 3)]),
    ("cholesky", lambda t, b: t.linalg.cholesky(spd_of(t, b)), [general(3, 3)]),
    ("cholesky upper", lambda t, b: t.linalg.cholesky(spd_of(t, b), upper=True),
     [general(2, 3, 3)]),
    ("qr", lambda t, a: tuple(t.linalg.qr(a)), [general(4, 3)]),
    ("eigh", lambda t, d: [v ** p for v, p in zip(
        t.linalg.eigh(t.tensor(DISTINCT) + 0.05 * sym_of(d)), (1, 2))],
     [R.normal(size=(4, 4))]),
    ("eigvalsh", lambda t, b: t.linalg.eigvalsh(sym_of(b)), [general(3, 3)]),
    ("svd", lambda t, a: svd_invariants(*t.linalg.svd(a, full_matrices=False)),
     [general(4, 3)]),
    ("svd wide", lambda t, a: svd_invariants(*t.linalg.svd(a, full_matrices=False)),
     [general(2, 4)]),
    # full_matrices: the added columns' signs are LAPACK's choice; U U^T = I is not
    ("svd full", lambda t, a: (lambda U, S, Vh: (svd_invariants(U[:, :3], S, Vh),
                                                 U @ U.mT))(*t.linalg.svd(a)), [general(5, 3)]),
    ("svd full wide", lambda t, a: (lambda U, S, Vh: (Vh.mT @ Vh, S))(*t.linalg.svd(a)),
     [general(2, 4)]),
    ("svdvals", lambda t, a: t.linalg.svdvals(a), [general(2, 3, 5)]),
    ("pinv", lambda t, a: t.linalg.pinv(a), [general(4, 3)]),
    ("lstsq", lambda t, a, b: t.linalg.lstsq(a, b).solution, [general(5, 3), general(5, 2)]),
    ("matrix_rank", lambda t, a: t.linalg.matrix_rank(a), [general(4, 3) @ general(3, 5)]),
    ("matrix_power", lambda t, a: [t.linalg.matrix_power(a, n) for n in (-2, 0, 1, 5)],
     [general(3, 3)]),
    ("matrix_exp", lambda t, a: t.linalg.matrix_exp(a), [R.normal(size=(2, 3, 3))]),
    ("householder_product", lambda t, a, tau: t.linalg.householder_product(a, tau),
     [R.normal(size=(5, 3)), R.normal(size=3)]),
    ("householder_product batched, fewer reflectors",
     lambda t, a, tau: t.linalg.householder_product(a, tau),
     [R.normal(size=(2, 4, 4)), R.normal(size=(2, 2))]),
    ("vector_norm", lambda t, x: [t.linalg.vector_norm(x, o, dim=1) for o in
                                  (1, 2, 3.5, float("inf"), -float("inf"))], [general(3, 4)]),
    ("matrix_norm", lambda t, a: [t.linalg.matrix_norm(a, o) for o in
                                  ("fro", "nuc", 2, -2, 1, -1, float("inf"))], [general(2, 3, 4)]),
    ("norm", lambda t, x, a: (t.linalg.norm(x), t.linalg.norm(a), t.linalg.norm(a, 2)),
     [R.normal(size=5), general(3, 3)]),
    ("cond", lambda t, a: t.linalg.cond(a), [general(3, 3)]),
    ("cross", lambda t, a, b: t.linalg.cross(a, b), [R.normal(size=(4, 3)),
                                                     R.normal(size=(1, 3))]),
    ("vecdot multi_dot", lambda t, a, b, c: (t.linalg.vecdot(a, a), t.linalg.multi_dot([a, b, c])),
     [R.normal(size=(2, 3)), R.normal(size=(3, 4)), R.normal(size=(4,))]),
    ("solve_triangular", lambda t, a, b: t.linalg.solve_triangular(a, b, upper=False),
     [general(3, 3), general(3, 2)]),
    ("tensorinv", lambda t, a: t.linalg.tensorinv(a.reshape(4, 2, 2), ind=1), [general(4, 4)]),
    ("diagonal vander", lambda t, a, x: (t.linalg.diagonal(a), t.linalg.vander(x)),
     [general(2, 3, 3), R.normal(size=3)]),
    ("lu_factor", lambda t, a: tuple(t.linalg.lu_factor(a)), [general(2, 3, 3)]),
    ("lu_factor wide values", lambda t, a: tuple(t.linalg.lu_factor(a.detach())),
     [general(3, 4)]),
    ("lu", lambda t, a: tuple(t.linalg.lu(a)), [general(3, 3)]),
    ("lu tall values", lambda t, a: tuple(t.linalg.lu(a.detach())), [general(4, 2)]),
    ("lu_solve", lambda t, a, b: t.linalg.lu_solve(*t.linalg.lu_factor(a), b),
     [general(3, 3), general(3, 2)]),
    ("lu_solve adjoint right", lambda t, a, b: t.linalg.lu_solve(*t.linalg.lu_factor(a), b,
                                                                 left=False, adjoint=True),
     [general(3, 3), general(2, 3)]),
    ("torch lu forms", lambda t, a, b: (tuple(t.lu(a)), tuple(t.lu_unpack(*t.lu(a))),
                                        t.lu_solve(b, *t.lu(a)), a.lu_solve(*t.lu(a))),
     [general(3, 3), general(3, 2)]),
    # torch-level forms
    ("torch forms", lambda t, a, b: (t.inverse(a), t.det(a), t.logdet(spd_of(t, a)),
                                     t.cholesky_solve(b, t.linalg.cholesky(spd_of(t, a))),
                                     t.cholesky_inverse(t.linalg.cholesky(spd_of(t, a))),
                                     t.pinverse(a), a.slogdet().logabsdet),
     [general(3, 3), general(3, 2)]),
    ("torch svd qr", lambda t, a: (svd_invariants(t.svd(a).U, t.svd(a).S, t.svd(a).V.mT),
                                   tuple(t.qr(a))), [general(4, 3)]),
    ("triangular_solve", lambda t, b, a: tuple(t.triangular_solve(b, a, upper=True)),
     [general(3, 2), general(3, 3)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in CASES])
def test_linalg_matches_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.float64, atol=1e-8, rtol=1e-8)


def complex_general(*shape):
    """Random complex matrices, shifted towards the identity when square."""
    a = (R.normal(size=shape) + 1j * R.normal(size=shape)) * 0.5
    return a + 2 * np.eye(shape[-1]) if shape[-1] == shape[-2] else a


def hpd_of(lib, b):
    """A Hermitian positive-definite matrix made differentiably from `b`."""
    n = b.shape[-1]
    return b @ b.mH + n * lib.eye(n, dtype=b.dtype)


def _distinct_hermitian():
    q, _ = np.linalg.qr(R.normal(size=(4, 4)) + 1j * R.normal(size=(4, 4)))
    return q @ np.diag([1.0, 2.5, 4.0, 6.0]) @ q.conj().T


DISTINCT_HERMITIAN = _distinct_hermitian()


def unitary_invariants(U, S, Vh):
    """What a complex SVD fixes: each pair of singular vectors is defined up to one unit complex
    factor (U @ Vh depends on U's phases as against Vh's)."""
    return S, U.abs() ** 2, Vh.abs() ** 2, (U * S.unsqueeze(-2)) @ Vh, U @ Vh


# complex128 values and gradients of a real loss of the outputs (check_op weighs both parts of a
# complex output); for eigenvectors and singular vectors, of quantities that do not depend on
# their phases (the loss PyTorch's backward asks for)
COMPLEX_CASES = [
    ("det slogdet logdet", lambda t, a: (t.linalg.det(a), *t.linalg.slogdet(a), t.logdet(a)),
     [complex_general(2, 3, 3)]),
    ("cholesky", lambda t, b: t.linalg.cholesky(hpd_of(t, b)), [complex_general(3, 3)]),
    ("cholesky upper", lambda t, b: (t.linalg.cholesky(hpd_of(t, b), upper=True),
                                     t.cholesky(hpd_of(t, b), upper=True)),
     [complex_general(2, 3, 3)]),
    ("qr", lambda t, a: tuple(t.linalg.qr(a)), [complex_general(4, 3)]),
    ("qr wide", lambda t, a: tuple(t.linalg.qr(a)), [complex_general(2, 3, 5)]),
    ("eigh", lambda t, d: (lambda L, V: (L, V.abs() ** 2, (V * L.unsqueeze(-2) ** 2) @ V.mH))(
        *t.linalg.eigh(t.tensor(DISTINCT_HERMITIAN) + 0.05 * (d + d.mH))),
     [complex_general(4, 4)]),
    ("eigh upper eigvalsh", lambda t, b: (t.linalg.eigvalsh(hpd_of(t, b), UPLO="U"),
                                          t.linalg.eigvalsh(b + b.mH)),
     [complex_general(3, 3)]),
    ("svd", lambda t, a: unitary_invariants(*t.linalg.svd(a, full_matrices=False)),
     [complex_general(4, 3)]),
    ("svd wide", lambda t, a: unitary_invariants(*t.linalg.svd(a, full_matrices=False)),
     [complex_general(2, 3, 5)]),
    ("svd full", lambda t, a: (lambda U, S, Vh: (unitary_invariants(U[:, :3], S, Vh),
                                                 U @ U.mH))(*t.linalg.svd(a)),
     [complex_general(5, 3)]),
    ("torch svd", lambda t, a: (lambda U, S, V: unitary_invariants(U, S, V.mH))(*t.svd(a)),
     [complex_general(3, 4)]),
    ("svdvals pinv", lambda t, a: (t.linalg.svdvals(a), t.linalg.pinv(a)),
     [complex_general(4, 3)]),
    ("pinv hermitian", lambda t, b: (t.linalg.pinv(b + b.mH, hermitian=True),
                                     t.linalg.matrix_rank(b + b.mH, hermitian=True)),
     [complex_general(3, 3)]),
    ("matrix_exp", lambda t, a: t.linalg.matrix_exp(a), [complex_general(2, 3, 3) - 2 * np.eye(3)]),
    ("lu_factor lu", lambda t, a: (*t.linalg.lu_factor(a), *t.linalg.lu(a)),
     [complex_general(2, 3, 3)]),
    ("lu wide", lambda t, a: tuple(t.linalg.lu(a)), [complex_general(3, 5)]),
    ("lu tall", lambda t, a: tuple(t.linalg.lu(a)), [complex_general(5, 3)]),
    ("householder_product ormqr",
     lambda t, a, tau, c: (t.linalg.householder_product(a, tau),
                           t.ormqr(a, tau, c, transpose=True), t.ormqr(a, tau, c, left=False)),
     [complex_general(4, 3), R.normal(size=3) + 0.5j, complex_general(4, 4)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in COMPLEX_CASES])
def test_complex_linalg_matches_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.complex128, atol=1e-8, rtol=1e-8)


def test_cond_of_other_norms_matches_torch_values() -> None:
    # values only: torch's own backward of cond(A, "fro") fails (an in-place write)
    check_op(lambda t, a: [t.linalg.cond(a, p) for p in ("fro", "nuc", 1, float("inf"))],
             [general(3, 3)], dtype=np.float64, grad=False, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (2, 3, 5), (2, 5, 3)])
@pytest.mark.parametrize("op", ["lu_factor", "lu", "qr"])
def test_gradients_of_rectangular_factorizations_match_torch(op, shape) -> None:
    """LU of wide and tall matrices, QR of wide ones: each factor's gradient as torch's."""
    import kiln
    a = general(*shape)
    w = np.random.default_rng(3)
    grads = []
    for lib in (torch, kiln):
        A = lib.tensor(a, requires_grad=True)
        outs = [o for o in getattr(lib.linalg, op)(A) if o.dtype == A.dtype and o.requires_grad]
        weights = [lib.tensor(w.normal(size=tuple(o.shape))) for o in outs]
        grads.append(lib.autograd.grad(sum((o * g).sum() for o, g in zip(outs, weights)), A)[0])
        w = np.random.default_rng(3)
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), rtol=1e-9, atol=1e-10)


def test_singular_cholesky_is_a_clear_error() -> None:
    import kiln
    with pytest.raises(ValueError, match="positive-definite"):
        kiln.linalg.cholesky(kiln.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(RuntimeError, match="square"):
        kiln.linalg.inv(kiln.ones(2, 3))
    _ = torch


def test_compiled_linear_algebra_matches_eager_with_gradients() -> None:
    import kiln

    def loss(a, b):
        spd = a @ a.mT + 3 * kiln.eye(3, dtype=a.dtype)
        L = kiln.linalg.cholesky(spd)
        s = kiln.linalg.svdvals(b)
        w = kiln.linalg.eigvalsh(spd)
        return (kiln.linalg.inv(spd).sum() + kiln.linalg.slogdet(spd).logabsdet + L.sum()
                + s.sum() + w.sum() + kiln.lgamma(a.abs() + 1).sum() + a.sort(1).values[:, 0]
                .sum() + kiln.linalg.matrix_exp(a - a.mT).trace())

    compiled = kiln.compile(loss, fullgraph=True)
    a0, b0 = general(3, 3), general(4, 3)
    results = []
    for fn in (loss, compiled, compiled):      # eager, the tracing call, a replay
        a = kiln.tensor(a0, requires_grad=True)
        b = kiln.tensor(b0, requires_grad=True)
        out = fn(a, b)
        out.backward()
        results.append((out.item(), a.grad.numpy().copy(), b.grad.numpy().copy()))
    for got in results[1:]:
        np.testing.assert_allclose(got[0], results[0][0], rtol=1e-10)
        np.testing.assert_allclose(got[1], results[0][1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got[2], results[0][2], rtol=1e-9, atol=1e-12)



def test_compiled_lu_unpack_and_lu_solve_trace_their_pivots() -> None:
    """lu_unpack's permutation comes from the pivots by tensor ops (torch's is a tensor op
    too): reading them into Python was a graph break, so a step with lu_unpack or lu_solve ran
    eagerly. Batched, with row swaps in every matrix, a second batch of other pivots replayed."""
    import kiln

    def fn(a, b):
        LU, piv = kiln.linalg.lu_factor(a)
        P, L, U = kiln.lu_unpack(LU, piv)
        x = kiln.linalg.lu_solve(LU, piv, b)
        return P, L, U, x, (P @ L @ U - a).abs().max()

    compiled = kiln.compile(fn, fullgraph=True)
    rng = np.random.default_rng(3)
    for _ in range(2):                      # the tracing call, then a replay
        a0, b0 = rng.standard_normal((3, 5, 5)), rng.standard_normal((3, 5, 2))
        got = compiled(kiln.tensor(a0), kiln.tensor(b0))
        ta = torch.tensor(a0)
        want = torch.lu_unpack(*torch.linalg.lu_factor(ta))
        for g, w in zip(got[:3], want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[3].numpy(), np.linalg.solve(a0, b0), rtol=1e-9)
        assert float(got[4]) < 1e-12
        assert not (want[0] == torch.eye(5)).all()      # the pivots did swap rows
    unpack = kiln.compile(lambda a: tuple(kiln.lu_unpack(*kiln.linalg.lu_factor(a))),
                          fullgraph=True)
    for shape in [(2, 6, 4), (4, 7)]:                   # fewer swaps than rows: tall, wide
        a0 = rng.standard_normal(shape)
        want = torch.lu_unpack(*torch.linalg.lu_factor(torch.tensor(a0)))
        for g, w in zip(unpack(kiln.tensor(a0)), want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)

def test_compiled_complex_factorizations_run_eagerly_and_equal_eager() -> None:
    """A compiled function on complex matrices falls back to eager (no complex kernels), saying
    so once: values and gradients are eager's."""
    import warnings

    import kiln

    def loss(a):
        h = a @ a.mH + 3 * kiln.eye(3, dtype=a.dtype)
        L, V = kiln.linalg.eigh(h)
        U, S, Vh = kiln.linalg.svd(a)
        Q, R_ = kiln.linalg.qr(a)
        return (L.sum() + (V.abs() ** 2)[0].sum() + S.sum() + (U @ Vh).real.sum()
                + kiln.linalg.cholesky(h).imag.sum() + kiln.linalg.det(a).real + R_.abs().sum()
                + kiln.linalg.slogdet(a).logabsdet + kiln.linalg.matrix_exp(a).real.sum())

    a0 = complex_general(3, 3)
    compiled = kiln.compile(loss)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fn in (loss, compiled, compiled):
            a = kiln.tensor(a0, requires_grad=True)
            out = fn(a)
            out.backward()
            results.append((out.item(), a.grad.numpy().copy()))
    messages = [str(c.message) for c in caught]
    assert len(messages) == 1 and "complex" in messages[0]
    for got in results[1:]:
        assert got[0] == results[0][0]
        np.testing.assert_array_equal(got[1], results[0][1])


def test_torch_cross_without_dim_warns_once_as_torch_at_the_callers_line():
    # introyt tensors tutorial: torch.cross(v2, v1) warns that the implicit dim is deprecated
    import warnings

    import kiln
    import kiln.linalg as klinalg
    klinalg._CROSS_WARNED.clear()
    v1, v2 = kiln.tensor([1.0, 0.0, 0.0]), kiln.tensor([0.0, 1.0, 0.0])
    with pytest.warns(UserWarning, match="Using torch.cross without specifying the dim arg is "
                      "deprecated") as caught:
        out = kiln.cross(v2, v1)
    assert caught[0].filename == __file__
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v2.cross(v1)                        # once per process, as torch's
        kiln.cross(v2, v1, dim=0)


@pytest.mark.parametrize("case", ["svd_lowrank", "svd_lowrank M", "svd_lowrank wide",
                                  "pca_lowrank", "pca_lowrank uncentered"])
def test_lowrank_matches_torch_from_the_same_seed(case) -> None:
    """The randomized SVDs draw their test matrix from the generator: from one seed kiln's
    approximation is torch's (A - M has full rank 5 > q, so it depends on that draw). Singular
    vectors are compared through U S V^T (their signs are LAPACK's choice)."""
    import kiln
    a = R.normal(size=(2, 7, 5) if case != "svd_lowrank wide" else (5, 8))
    m = R.normal(size=a.shape[-2:])
    results = []
    for lib in (torch, kiln):
        lib.manual_seed(11)
        A = lib.tensor(a)
        if case.startswith("pca"):
            U, S, V = lib.pca_lowrank(A, q=3, center=case == "pca_lowrank")
        else:
            U, S, V = lib.svd_lowrank(A, q=3, niter=1, M=lib.tensor(m) if "M" in case else None)
        U, S, V = U.numpy(), S.numpy(), V.numpy()
        eye = np.broadcast_to(np.eye(3), U.shape[:-2] + (3, 3))
        np.testing.assert_allclose(U.swapaxes(-1, -2) @ U, eye, atol=1e-12)
        results.append((S, (U * S[..., None, :]) @ V.swapaxes(-1, -2)))
    for k, t in zip(results[1], results[0]):
        np.testing.assert_allclose(k, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["svd_lowrank", "svd_lowrank M wide", "pca_lowrank"])
def test_complex_lowrank_matches_torch_from_the_same_seed(case) -> None:
    """Complex matrices: the test matrix is complex Gaussian (as torch's), U and V unitary
    columns, and U S V^H torch's approximation (A - M of full rank 5 > q)."""
    import kiln
    shape = (5, 8) if "wide" in case else (2, 7, 5)
    a, m = complex_general(*shape), complex_general(*shape[-2:])
    results = []
    for lib in (torch, kiln):
        lib.manual_seed(11)
        A = lib.tensor(a)
        if case.startswith("pca"):
            U, S, V = lib.pca_lowrank(A, q=3)
        else:
            U, S, V = lib.svd_lowrank(A, q=3, niter=1, M=lib.tensor(m) if "M" in case else None)
        U, S, V = (x.resolve_conj().numpy() for x in (U, S, V))    # torch's V: a conj view
        assert S.dtype == np.float64 and U.dtype == V.dtype == np.complex128
        eye = np.broadcast_to(np.eye(3), U.shape[:-2] + (3, 3))
        np.testing.assert_allclose(U.swapaxes(-1, -2).conj() @ U, eye, atol=1e-12)
        results.append((S, (U * S[..., None, :]) @ V.swapaxes(-1, -2).conj()))
    for k, t in zip(results[1], results[0]):
        np.testing.assert_allclose(k, t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", ["svd", "eigh"])
def test_complex_vectors_refuse_a_loss_that_depends_on_their_phases_as_torch(op) -> None:
    """Each complex eigenvector, and each pair of singular vectors, is defined up to e^(i phi):
    a loss that changes with it has no gradient, and both libraries refuse it in backward."""
    import kiln
    a = complex_general(3, 3)
    for lib in (torch, kiln):
        A = lib.tensor(a + a.conj().T, requires_grad=True)
        V = lib.linalg.svd(A)[0] if op == "svd" else lib.linalg.eigh(A)[1]
        with pytest.raises(RuntimeError, match="e\\^[{(]i phi[})]"):
            (V[0, 0].real + V[1, 2].imag).backward()


@pytest.mark.parametrize("hermitian", [False, True])
def test_complex_ldl_factor_and_solve_match_torch(hermitian) -> None:
    """Complex symmetric matrices (LAPACK's sytrf) and, with hermitian=True, Hermitian ones
    (hetrf): the same packed factors and pivots as torch's, and solutions of A X = B."""
    import kiln
    a = complex_general(2, 4, 4)
    a = a + (a.conj() if hermitian else a).swapaxes(-1, -2)
    b = complex_general(2, 4, 2)
    results = []
    for lib in (torch, kiln):
        LD, pivots = lib.linalg.ldl_factor(lib.tensor(a), hermitian=hermitian)
        X = lib.linalg.ldl_solve(LD, pivots, lib.tensor(b), hermitian=hermitian)
        results.append((LD.numpy(), pivots.numpy(), X.numpy()))
    for k, t in zip(results[1], results[0]):
        np.testing.assert_allclose(k, t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a @ results[1][2], b, atol=1e-12)
