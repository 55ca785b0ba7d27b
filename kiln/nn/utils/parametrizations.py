"""Ready-made parametrizations: orthogonal, weight_norm and spectral_norm (PyTorch's
parametrizations)."""

from __future__ import annotations

import kiln
from kiln import Tensor
from kiln.nn import functional as F
from kiln.nn.conv import _ConvTransposeNd
from kiln.nn.module import Module
from kiln.nn.utils import parametrize

__all__ = ["orthogonal", "weight_norm", "spectral_norm"]


def _norm_except_dim(v: Tensor, dim: int) -> Tensor:
    """The 2-norm over every dim but `dim` (all dims for dim=None), kept broadcastable."""
    if dim is None:
        return (v * v).sum().sqrt()
    dim = dim % v.ndim
    axes = tuple(a for a in range(v.ndim) if a != dim)
    return (v * v).sum(axes, keepdim=True).sqrt() if axes else v.abs()


class _WeightNorm(Module):
    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        dim = None if self.dim == -1 else self.dim
        return weight_v * (weight_g / _norm_except_dim(weight_v, dim))

    def right_inverse(self, weight: Tensor):
        dim = None if self.dim == -1 else self.dim
        return _norm_except_dim(weight, dim), weight


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """w = g * v / ||v||: magnitude `original0` and direction `original1` learned apart."""
    parametrize.register_parametrization(module, name, _WeightNorm(dim), unsafe=True)
    return module


class _SpectralNorm(Module):
    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"Dimension out of range (expected to be in range of "
                             f"[-{ndim}, {ndim - 1}] but got {dim})")
        if n_power_iterations <= 0:
            raise ValueError(f"Expected n_power_iterations to be positive, but got "
                             f"n_power_iterations={n_power_iterations}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            matrix = self._matrix(weight)
            h, w = matrix.shape
            with kiln.no_grad():
                u = F.normalize(kiln.randn(h, dtype=weight.dtype, device=weight.device), dim=0,
                                eps=eps)
                v = F.normalize(kiln.randn(w, dtype=weight.dtype, device=weight.device), dim=0,
                                eps=eps)
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)
            self._power_method(matrix, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.ndim) if d != self.dim))
        return weight.flatten(1)

    def _power_method(self, matrix: Tensor, iterations: int) -> None:
        with kiln.no_grad():
            for _ in range(iterations):
                self._u.copy_(F.normalize(kiln.mv(matrix, self._v), dim=0, eps=self.eps))
                self._v.copy_(F.normalize(kiln.mv(matrix.t(), self._u), dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        matrix = self._matrix(weight)
        if self.training:
            self._power_method(matrix.detach(), self.n_power_iterations)
        u, v = self._u.clone(), self._v.clone()
        sigma = kiln.dot(u, kiln.mv(matrix, v))
        return weight / sigma

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """w / sigma(w), sigma the largest singular value estimated by power iteration (one step
    per training-mode forward; the vectors are buffers `_u`, `_v`)."""
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if dim is None:
        dim = 1 if isinstance(module, _ConvTransposeNd) else 0
    parametrize.register_parametrization(
        module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


# ----------------------------------------------------------------------------- orthogonal

_ORTHOGONAL_MAPS = ("matrix_exp", "cayley", "householder")


def _q_with_positive_r(A: Tensor) -> Tensor:
    """The Q of A = QR (A tall) for the R whose diagonal is >= 0: the unique orthonormal basis
    of A's columns that keeps each column on the side of A's column."""
    Q, R = kiln.linalg.qr(A)
    return Q * kiln.sign(R.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)


def _is_orthogonal(Q: Tensor) -> bool:
    n, k = Q.shape[-2], Q.shape[-1]
    eye = kiln.eye(k, dtype=Q.dtype, device=Q.device)
    return bool(kiln.allclose(Q.mT @ Q, eye, atol=10.0 * n * kiln.finfo(Q.dtype).eps))


def _householder_qr(A: Tensor) -> tuple[Tensor, Tensor]:
    """LAPACK's geqrf of a tall A, by Householder reflections: R on and above the diagonal,
    each reflector's vector (below its implicit leading 1) under it, and the taus."""
    A = A.clone()
    k = A.shape[-1]
    taus = []
    for j in range(k):
        alpha = A[..., j, j]
        below = A[..., j + 1:, j]
        xnorm = (below * below).sum(-1).sqrt()
        beta = -kiln.where(alpha >= 0, 1.0, -1.0) * (alpha * alpha + xnorm * xnorm).sqrt()
        reflect = xnorm > 0                       # no reflection where the column is done
        tau = kiln.where(reflect, (beta - alpha) / kiln.where(reflect, beta, 1.0), 0.0)
        scale = kiln.where(reflect, 1.0 / kiln.where(reflect, alpha - beta, 1.0), 0.0)
        v = kiln.cat([kiln.ones_like(alpha).unsqueeze(-1), below * scale.unsqueeze(-1)], -1)
        rest = A[..., j:, j + 1:]
        update = tau[..., None, None] * v.unsqueeze(-1) * (v.unsqueeze(-2) @ rest)
        A[..., j:, j + 1:] = rest - update
        A[..., j, j] = kiln.where(reflect, beta, alpha)
        A[..., j + 1:, j] = v[..., 1:]
        taus.append(tau)
    return A, kiln.stack(taus, -1)


class _Orthogonal(Module):
    """Maps a matrix (or a batch) to an orthogonal one: a skew-symmetric matrix built from its
    lower triangle through the matrix exponential or the Cayley map, or the product of the
    Householder reflectors stored below its diagonal. With `use_trivialization` the result is
    multiplied on the left by the buffer `base`, the orthogonal matrix last assigned, and the
    stored original starts at -I (the map's point that gives the identity)."""

    def __init__(self, weight: Tensor, orthogonal_map: str, *,
                 use_trivialization: bool = True) -> None:
        super().__init__()
        self.shape = tuple(weight.shape)
        self.orthogonal_map = orthogonal_map
        if use_trivialization:
            self.register_buffer("base", None)

    def forward(self, X: Tensor) -> Tensor:
        n, k = X.shape[-2], X.shape[-1]
        transposed = n < k
        if transposed:                     # work with a tall matrix
            X = X.mT
            n, k = k, n
        if self.orthogonal_map in ("matrix_exp", "cayley"):
            X = X.tril()
            if n != k:                     # n x n, so that A below is square
                X = kiln.cat([X, X.new_zeros(n, n - k).expand(*X.shape[:-2], -1, -1)], -1)
            A = X - X.mT                   # skew-symmetric
            if self.orthogonal_map == "matrix_exp":
                Q = kiln.linalg.matrix_exp(A)
            else:                          # (I - A/2)^-1 (I + A/2)
                eye = kiln.eye(n, dtype=A.dtype, device=A.device)
                Q = kiln.linalg.solve(eye - 0.5 * A, eye + 0.5 * A)
            if n != k:
                Q = Q[..., :k]
        else:
            V = X.tril(-1)
            tau = 2.0 / (1.0 + (V * V).sum(-2))
            Q = kiln.linalg.householder_product(V, tau)
            # X's diagonal holds the sign (+-1) of each column; it is not trained
            Q = Q * X.diagonal(dim1=-2, dim2=-1).detach().int().unsqueeze(-2)
        if hasattr(self, "base"):
            Q = self.base @ Q
        return Q.mT if transposed else Q

    def right_inverse(self, Q: Tensor) -> Tensor:
        if tuple(Q.shape) != self.shape:
            raise ValueError(f"Expected a matrix or batch of matrices of shape {self.shape}. "
                             f"Got a tensor of shape {tuple(Q.shape)}.")
        with kiln.no_grad():
            given = Q
            n, k = Q.shape[-2], Q.shape[-1]
            transposed = n < k
            if transposed:
                Q = Q.mT
                n, k = k, n
            if not hasattr(self, "base"):
                if self.orthogonal_map != "householder":
                    raise NotImplementedError(
                        "It is not possible to assign to the matrix exponential or the Cayley "
                        "parametrizations when use_trivialization=False.")
                A, tau = _householder_qr(Q)
                # the diagonal keeps R's signs (+-1), with a column that needed no reflection
                # flipped, so that forward() gives back Q's own orthonormal basis
                signs = kiln.sign(A.diagonal(dim1=-2, dim2=-1))
                signs = kiln.where(tau == 0, -signs, signs)
                on_diagonal = kiln.eye(n, k, dtype=kiln.bool, device=A.device)
                A = kiln.where(on_diagonal, signs.unsqueeze(-2), A)
                return A.mT if transposed else A
            if n == k:
                Q = Q.clone() if _is_orthogonal(Q) else _q_with_positive_r(Q)
            else:                          # complete Q's columns to an n x n orthogonal basis
                extra = kiln.randn(*Q.shape[:-2], n, n - k, dtype=Q.dtype, device=Q.device)
                Q = _q_with_positive_r(kiln.cat([Q, extra], -1))
            self.base = Q
            # -I: the point each map takes to the identity (householder reads the -1s as signs)
            return kiln.zeros_like(given) - kiln.eye(given.shape[-2], given.shape[-1],
                                                     dtype=given.dtype, device=given.device)


def orthogonal(module: Module, name: str = "weight", orthogonal_map: str | None = None, *,
               use_trivialization: bool = True) -> Module:
    """Make `module.<name>` (a matrix or batch of matrices) orthogonal: Q^T Q = I for a tall
    one, Q Q^T = I for a wide one (torch.nn.utils.parametrizations.orthogonal).

    Args:
        orthogonal_map: "matrix_exp" (the default for square matrices), "cayley" or
            "householder" (the default for the others).
        use_trivialization: keep the orthogonal matrix last assigned in a buffer `base` and
            parametrize the change from it (the original starts at -I); without it, the
            stored original is the map's own argument, and only "householder" can be assigned.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    if weight.ndim < 2:
        raise ValueError(f"Expected a matrix or batch of matrices. Got a tensor of "
                         f"{weight.ndim} dimensions.")
    if orthogonal_map is None:
        orthogonal_map = "matrix_exp" if weight.shape[-2] == weight.shape[-1] else "householder"
    if orthogonal_map not in _ORTHOGONAL_MAPS:
        raise ValueError(f'orthogonal_map has to be one of "matrix_exp", "cayley", '
                         f'"householder". Got: {orthogonal_map}')
    parametrization = _Orthogonal(weight, orthogonal_map, use_trivialization=use_trivialization)
    parametrize.register_parametrization(module, name, parametrization, unsafe=True)
    return module
