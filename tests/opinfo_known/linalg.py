"""Known departures from PyTorch's OpInfo samples: torch.linalg, the
decompositions in the torch namespace, and torch.masked.

Each entry is (op, mode): what `tests/opinfo_sweep.py` found. `tests/test_opinfo.py` fails when
an op not listed here departs from torch, and when a listed one no longer does (then delete
its line). Modes: float32 and int64 values, float64 values and gradients.

`COMPARE` maps an op whose correct result is not unique (signs of singular vectors, indices of
ties) to `fn(kiln_out, torch_out, torch_args, compare) -> None or why`, used instead of the
element-wise comparison; `compare(k, t, what)` is that comparison. One with
`.compare_grads = True` keeps the sweep's element-wise comparison of gradients."""

import numpy as np


def _values(x):
    """A kiln or torch tensor's values as a float64/complex128 array."""
    a = np.asarray(x.detach().numpy())
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


def _mH(a):
    return np.swapaxes(a, -1, -2).conj()


def _near(got, want, dtype, what):
    """None when `got` is within the sweep's tolerance of `want` relative to each matrix's
    largest entry (a normwise bound: what a matrix computation promises), else why not."""
    from tests.opinfo_sweep import tolerance
    atol, rtol = tolerance(dtype)
    if got.size == 0:
        return None
    scale = np.abs(want).max(axis=(-2, -1), keepdims=True) if want.ndim >= 2 else \
        np.abs(want).max()
    err = np.abs(got - want)
    if np.isnan(err).any() or (err > 4 * (atol + rtol * np.maximum(scale, 1.0))).any():
        return f"{what}: off by {np.nanmax(err) if not np.isnan(err).all() else 'NaN'}"
    return None


def _same_layout(ks, ts, names):
    for k, t, name in zip(ks, ts, names):
        if tuple(k.shape) != tuple(t.shape) or k.dtype.name != str(t.dtype)[6:]:
            return f"{name}: {tuple(k.shape)} {k.dtype.name}, torch {tuple(t.shape)} {t.dtype}"
    return None


def _orthonormal(Q, dtype, what):
    """Q^H Q = I (Q's columns orthonormal; unitary where complex)."""
    eye = np.broadcast_to(np.eye(Q.shape[-1]), Q.shape[:-2] + (Q.shape[-1],) * 2)
    return _near(_mH(Q) @ Q, eye, dtype, f"{what} not orthonormal")


def _svd(v_transposed):
    """An SVD is unique but for the signs of the singular vectors (their phases where complex,
    and the completion of U or V with full matrices): S as torch's, U and V orthonormal, U S Vh
    reconstructing the input (torch.svd's V is Vh^H)."""
    def check(k, t, args, compare):
        why = _same_layout(k, t, ("U", "S", "V" if v_transposed else "Vh")) or \
            compare(k[1], t[1], "S")
        if why:
            return why
        U, S, Vh = (_values(x) for x in k)
        Vh = _mH(Vh) if v_transposed else Vh
        n = S.shape[-1]
        dtype = t[1].dtype
        return (_orthonormal(U, dtype, "U") or _orthonormal(_mH(Vh), dtype, "V") or
                _near((U[..., :, :n] * S[..., None, :]) @ Vh[..., :n, :], _values(args[0]),
                      dtype, "U S Vh != A"))
    return check


def _lowrank(k, t, args, compare):
    """A rank-q SVD (U, S, V), unique but for signs (phases): S as torch's, U and V orthonormal,
    and U S V^H the approximation torch's gives (the sample's matrix is a product made inside
    the OpInfo's lambda, so torch's own reconstruction stands for it)."""
    why = _same_layout(k, t, ("U", "S", "V")) or compare(k[1], t[1], "S")
    if why:
        return why
    (U, S, V), (tU, tS, tV) = (_values(x) for x in k), (_values(x) for x in t)
    dtype = t[1].dtype
    return (_orthonormal(U, dtype, "U") or _orthonormal(V, dtype, "V") or
            _near((U * S[..., None, :]) @ _mH(V), (tU * tS[..., None, :]) @ _mH(tV), dtype,
                  "U S V^H != torch's"))


def _eigh(k, t, args, compare):
    """Eigenvalues as torch's; eigenvectors (unique up to sign, or phase) orthonormal and
    V diag(L) V^H the matrix torch's decomposition gives (the Hermitian matrix eigh read)."""
    why = _same_layout(k, t, ("eigenvalues", "eigenvectors")) or compare(k[0], t[0], "L")
    if why:
        return why
    (L, V), (tL, tV) = (_values(x) for x in k), (_values(x) for x in t)
    dtype = t[0].dtype
    return _orthonormal(V, dtype, "V") or _near(
        (V * L[..., None, :]) @ _mH(V), (tV * tL[..., None, :]) @ _mH(tV), dtype,
        "V diag(L) V^H != torch's")


def _eig(k, t, args, compare):
    """Eigenvalues as torch's (LAPACK's order); eigenvectors (unique up to a complex phase)
    of unit norm with A V = V diag(L)."""
    why = _same_layout(k, t, ("eigenvalues", "eigenvectors")) or compare(k[0], t[0], "L")
    if why:
        return why
    L, V = (_values(x) for x in k)
    dtype = t[0].dtype
    norms = np.linalg.norm(V, axis=-2)
    return _near(norms[..., None, :], np.ones_like(norms)[..., None, :], dtype,
                 "eigenvector norms") or \
        _near(_values(args[0]) @ V, V * L[..., None, :], dtype, "A V != V diag(L)")


def _matrix_exp(k, t, args, compare):
    """exp(A) to within the tolerance of each matrix's largest entry: in float32 a small entry
    of a large result is cancellation, its digits differ between algorithms."""
    return _same_layout([k], [t], ["output"]) or _near(_values(k), _values(t), t.dtype,
                                                       "output")


_matrix_exp.compare_grads = True     # the gradients (float64) are compared element-wise as usual

COMPARE = {"svd": _svd(True), "linalg.svd": _svd(False), "linalg.eigh": _eigh,
           "linalg.eig": _eig, "matrix_exp": _matrix_exp, "svd_lowrank": _lowrank,
           "pca_lowrank": _lowrank}

KNOWN = {}
