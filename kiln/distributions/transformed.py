"""Independent (reinterpreting batch dims as event dims), transforms and
TransformedDistribution."""

from __future__ import annotations

import math

import numpy as np

import kiln
import kiln.nn.functional as F
from kiln.distributions import constraints
from kiln.distributions.continuous import Normal as _Normal
from kiln.distributions.distribution import Distribution


def _sum_rightmost(value, dim: int):
    return value.reshape(*value.shape[:value.ndim - dim], -1).sum(-1) if dim > 0 else value


class Independent(Distribution):
    arg_constraints: dict = {}

    def __init__(self, base_distribution, reinterpreted_batch_ndims, validate_args=None):
        n = reinterpreted_batch_ndims
        if n > len(base_distribution.batch_shape):
            raise ValueError(f"Expected reinterpreted_batch_ndims <= len(base_distribution."
                             f"batch_shape), actual {n} vs {len(base_distribution.batch_shape)}")
        self.base_dist = base_distribution
        self.reinterpreted_batch_ndims = n
        shape = tuple(base_distribution.batch_shape) + tuple(base_distribution.event_shape)
        event_dim = n + len(base_distribution.event_shape)
        super().__init__(shape[:len(shape) - event_dim], shape[len(shape) - event_dim:],
                         validate_args=validate_args)

    @property
    def has_rsample(self):
        return self.base_dist.has_rsample

    @property
    def support(self):
        return self.base_dist.support

    def expand(self, batch_shape, _instance=None):
        base_shape = tuple(batch_shape) + tuple(self.event_shape[:self.reinterpreted_batch_ndims])
        return Independent(self.base_dist.expand(base_shape), self.reinterpreted_batch_ndims,
                           validate_args=False)

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def mode(self):
        return self.base_dist.mode

    @property
    def variance(self):
        return self.base_dist.variance

    def sample(self, sample_shape=()):
        return self.base_dist.sample(sample_shape)

    def rsample(self, sample_shape=()):
        return self.base_dist.rsample(sample_shape)

    def log_prob(self, value):
        return _sum_rightmost(self.base_dist.log_prob(value), self.reinterpreted_batch_ndims)

    def entropy(self):
        return _sum_rightmost(self.base_dist.entropy(), self.reinterpreted_batch_ndims)


class Transform:
    """An invertible map y = f(x) with log|det df/dx| (torch.distributions.transforms).

    With `cache_size=1` it keeps its last (x, y) pair: the inverse of the y it last produced
    is that x, not f^-1(y) (a tanh-squashed sample's log_prob stays finite where atanh(y)
    overflows, and its gradient flows through x), as PyTorch's transforms do."""

    bijective = True
    event_dim = 0
    sign = 1
    _cache_size = 0
    _cached_x_y = (None, None)

    def __init__(self, cache_size: int = 0):
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size}")
        self._cache_size = cache_size
        self._cached_x_y = (None, None)

    def __call__(self, x):
        if not self._cache_size:
            return self._call(x)
        x_old, y_old = self._cached_x_y
        if x is x_old:
            return y_old
        y = self._call(x)
        self._cached_x_y = (x, y)
        return y

    def inv(self, y):
        if not self._cache_size:
            return self._inverse(y)
        x_old, y_old = self._cached_x_y
        if y is y_old:
            return x_old
        x = self._inverse(y)
        self._cached_x_y = (x, y)
        return x

    def log_abs_det_jacobian(self, x, y):
        raise NotImplementedError

    def forward_shape(self, shape):
        """The shape of the output for an input of `shape`."""
        return tuple(shape)

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class ExpTransform(Transform):
    domain, codomain = constraints.real, constraints.positive

    def _call(self, x):
        return x.exp()

    def _inverse(self, y):
        return y.log()

    def log_abs_det_jacobian(self, x, y):
        return x


class AffineTransform(Transform):
    domain = codomain = constraints.real

    def __init__(self, loc, scale, event_dim=0, cache_size=0):
        super().__init__(cache_size)
        self.loc, self.scale, self.event_dim = loc, scale, event_dim

    def _call(self, x):
        return self.loc + self.scale * x

    def _inverse(self, y):
        return (y - self.loc) / self.scale

    def log_abs_det_jacobian(self, x, y):
        scale = self.scale if isinstance(self.scale, kiln.Tensor) else kiln.full_like(
            x, float(self.scale))
        result = scale.abs().log().expand(*x.shape) if scale.shape != x.shape else \
            scale.abs().log()
        return _sum_rightmost(result, self.event_dim)


class SigmoidTransform(Transform):
    domain, codomain = constraints.real, constraints.unit_interval

    def _call(self, x):
        return kiln.sigmoid(x)

    def _inverse(self, y):
        eps = float(kiln.finfo(y.dtype).eps)
        y = y.clamp(eps, 1 - eps)
        return y.log() - kiln.log1p(-y)

    def log_abs_det_jacobian(self, x, y):
        return -F.softplus(-x) - F.softplus(x)


class TanhTransform(Transform):
    domain, codomain = constraints.real, constraints.interval(-1.0, 1.0)

    def _call(self, x):
        return x.tanh()

    def _inverse(self, y):
        return kiln.atanh(y)

    def log_abs_det_jacobian(self, x, y):
        return 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))


class ComposeTransform(Transform):
    def __init__(self, parts, cache_size=0):
        super().__init__(cache_size)
        self.parts = list(parts)
        self.event_dim = max((p.event_dim for p in self.parts), default=0)

    def _call(self, x):
        for p in self.parts:
            x = p(x)
        return x

    def _inverse(self, y):
        for p in reversed(self.parts):
            y = p.inv(y)
        return y

    def forward_shape(self, shape):
        for p in self.parts:
            shape = p.forward_shape(shape)
        return tuple(shape)

    def log_abs_det_jacobian(self, x, y):
        total = 0
        for p in self.parts:
            nxt = p(x)
            total = total + _sum_rightmost(p.log_abs_det_jacobian(x, nxt),
                                           self.event_dim - p.event_dim)
            x = nxt
        return total


class TransformedDistribution(Distribution):
    """The distribution of y = t_n(...t_1(x)) for x from `base_distribution`."""

    arg_constraints: dict = {}

    def __init__(self, base_distribution, transforms, validate_args=None):
        self.base_dist = base_distribution
        self.transforms = [transforms] if isinstance(transforms, Transform) else \
            list(transforms)
        event_dim = max([len(base_distribution.event_shape)] +
                        [t.event_dim for t in self.transforms])
        shape = tuple(base_distribution.batch_shape) + tuple(base_distribution.event_shape)
        for t in self.transforms:
            shape = t.forward_shape(shape)      # stick-breaking adds a coordinate, ...
        super().__init__(shape[:len(shape) - event_dim], shape[len(shape) - event_dim:],
                         validate_args=validate_args)

    @property
    def has_rsample(self):
        return self.base_dist.has_rsample

    def sample(self, sample_shape=()):
        with kiln.no_grad():
            x = self.base_dist.sample(sample_shape)
            for t in self.transforms:
                x = t(x)
            return x

    def rsample(self, sample_shape=()):
        x = self.base_dist.rsample(sample_shape)
        for t in self.transforms:
            x = t(x)
        return x

    def log_prob(self, value):
        event_dim = len(self.event_shape)
        log_prob = 0.0
        y = value
        for t in reversed(self.transforms):
            x = t.inv(y)
            log_prob = log_prob - _sum_rightmost(t.log_abs_det_jacobian(x, y),
                                                 event_dim - t.event_dim)
            y = x
        base = _sum_rightmost(self.base_dist.log_prob(y),
                              event_dim - len(self.base_dist.event_shape))
        return base + log_prob


class AbsTransform(Transform):
    bijective = False
    domain, codomain = constraints.real, constraints.positive

    def _call(self, x):
        return x.abs()

    def _inverse(self, y):
        return y


class PowerTransform(Transform):
    domain = codomain = constraints.positive

    def __init__(self, exponent, cache_size=0):
        super().__init__(cache_size)
        self.exponent = exponent

    def _call(self, x):
        return x.pow(self.exponent)

    def _inverse(self, y):
        return y.pow(1 / self.exponent)

    def log_abs_det_jacobian(self, x, y):
        return (self.exponent * y / x).abs().log()


class SoftplusTransform(Transform):
    domain, codomain = constraints.real, constraints.positive

    def _call(self, x):
        return F.softplus(x)

    def _inverse(self, y):
        return y + kiln.log(-kiln.expm1(-y))

    def log_abs_det_jacobian(self, x, y):
        return -F.softplus(-x)


class SoftmaxTransform(Transform):
    """x -> softmax(x) over the last dim; not bijective, so it has no log-determinant."""

    bijective = False
    event_dim = 1
    domain, codomain = constraints.real_vector, constraints.simplex

    def _call(self, x):
        return kiln.softmax(x, -1)

    def _inverse(self, y):
        return y.log()


identity_transform = ComposeTransform([])


class StickBreakingTransform(Transform):
    """Real vectors of length K-1 to the K-simplex: each coordinate takes a sigmoid share of
    the stick left (shifted by log of the coordinates still to come, so 0 maps to uniform)."""

    event_dim = 1
    domain, codomain = constraints.real_vector, constraints.simplex

    @staticmethod
    def _offset(k, like):
        # K-1, K-2, ..., 1: the number of coordinates after each one, plus one
        return (k - kiln.arange(k, dtype=like.dtype, device=like.device)).log()

    def _call(self, x):
        z = kiln.sigmoid(x - self._offset(x.shape[-1], x))
        rest = kiln.cumprod(1 - z, -1)
        return F.pad(z, (0, 1), value=1.0) * F.pad(rest, (1, 0), value=1.0)

    def _inverse(self, y):
        head = y[..., :-1]
        left = (1 - kiln.cumsum(head, -1)).clamp(min=float(kiln.finfo(y.dtype).tiny))
        return head.log() - left.log() + self._offset(head.shape[-1], y)

    def log_abs_det_jacobian(self, x, y):
        shifted = x - self._offset(x.shape[-1], x)
        return (-shifted + F.logsigmoid(shifted) + y[..., :-1].log()).sum(-1)

    def forward_shape(self, shape):
        return tuple(shape[:-1]) + (shape[-1] + 1,)


class LowerCholeskyTransform(Transform):
    """Square matrices to lower-triangular ones with a positive (exponentiated) diagonal."""

    event_dim = 2
    domain, codomain = constraints.real, constraints.lower_cholesky

    def _call(self, x):
        return x.tril(-1) + kiln.diag_embed(kiln.diagonal(x, 0, -2, -1).exp())

    def _inverse(self, y):
        return y.tril(-1) + kiln.diag_embed(kiln.diagonal(y, 0, -2, -1).log())


class PositiveDefiniteTransform(Transform):
    """Square matrices to positive-definite ones, L L^T of their lower-Cholesky image."""

    event_dim = 2
    domain, codomain = constraints.real, constraints.positive_definite

    def _call(self, x):
        L = LowerCholeskyTransform()(x)
        return L @ L.mT

    def _inverse(self, y):
        return LowerCholeskyTransform().inv(kiln.linalg.cholesky(y))


class CumulativeDistributionTransform(Transform):
    """x -> distribution.cdf(x); its log-Jacobian is the density's log."""

    codomain = constraints.unit_interval

    def __init__(self, distribution, cache_size=0):
        super().__init__(cache_size)
        self.distribution = distribution

    @property
    def domain(self):
        return self.distribution.support

    def _call(self, x):
        return self.distribution.cdf(x)

    def _inverse(self, y):
        return self.distribution.icdf(y)

    def log_abs_det_jacobian(self, x, y):
        return self.distribution.log_prob(x)


class IndependentTransform(Transform):
    """`base_transform` with its rightmost `reinterpreted_batch_ndims` dims treated as event
    dims: the log-Jacobian is summed over them."""

    def __init__(self, base_transform, reinterpreted_batch_ndims, cache_size=0):
        super().__init__(cache_size)
        self.base_transform = base_transform
        self.reinterpreted_batch_ndims = reinterpreted_batch_ndims
        self.event_dim = base_transform.event_dim + reinterpreted_batch_ndims

    def _call(self, x):
        return self.base_transform(x)

    def _inverse(self, y):
        return self.base_transform.inv(y)

    def log_abs_det_jacobian(self, x, y):
        return _sum_rightmost(self.base_transform.log_abs_det_jacobian(x, y),
                              self.reinterpreted_batch_ndims)


class ReshapeTransform(Transform):
    """Reshapes the rightmost dims from `in_shape` to `out_shape` (a volume-preserving map)."""

    def __init__(self, in_shape, out_shape, cache_size=0):
        super().__init__(cache_size)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError("in_shape, out_shape have different numbers of elements")
        self.event_dim = len(self.in_shape)

    def _call(self, x):
        batch = tuple(x.shape[:x.ndim - len(self.in_shape)])
        return x.reshape(*batch, *self.out_shape)

    def _inverse(self, y):
        batch = tuple(y.shape[:y.ndim - len(self.out_shape)])
        return y.reshape(*batch, *self.in_shape)

    def log_abs_det_jacobian(self, x, y):
        batch = tuple(x.shape[:x.ndim - len(self.in_shape)])
        return kiln.zeros(batch, dtype=x.dtype, device=x.device)

    def forward_shape(self, shape):
        return tuple(shape[:len(shape) - len(self.in_shape)]) + self.out_shape


class CatTransform(Transform):
    """Applies `tseq[i]` to the i-th block (of `lengths[i]` along `dim`) and concatenates."""

    def __init__(self, tseq, dim=0, lengths=None, cache_size=0):
        super().__init__(cache_size)
        self.transforms = list(tseq)
        self.lengths = list(lengths) if lengths is not None else [1] * len(self.transforms)
        self.dim = dim
        self.event_dim = max((t.event_dim for t in self.transforms), default=0)

    def _blocks(self, x):
        return kiln.split(x, self.lengths, self.dim)

    def _call(self, x):
        return kiln.cat([t(b) for t, b in zip(self.transforms, self._blocks(x))], self.dim)

    def _inverse(self, y):
        return kiln.cat([t.inv(b) for t, b in zip(self.transforms, self._blocks(y))], self.dim)

    def log_abs_det_jacobian(self, x, y):
        parts = []
        for t, bx, by in zip(self.transforms, self._blocks(x), self._blocks(y)):
            ld = t.log_abs_det_jacobian(bx, by)
            if not isinstance(ld, kiln.Tensor):
                ld = kiln.full_like(bx, float(ld))
            parts.append(_sum_rightmost(ld, self.event_dim - t.event_dim))
        return kiln.cat(parts, self.dim)


class StackTransform(Transform):
    """Applies `tseq[i]` to the i-th slice along `dim` and stacks the results."""

    def __init__(self, tseq, dim=0, cache_size=0):
        super().__init__(cache_size)
        self.transforms, self.dim = list(tseq), dim

    def _call(self, x):
        return kiln.stack([t(s) for t, s in zip(self.transforms, x.unbind(self.dim))], self.dim)

    def _inverse(self, y):
        return kiln.stack([t.inv(s) for t, s in zip(self.transforms, y.unbind(self.dim))],
                          self.dim)

    def log_abs_det_jacobian(self, x, y):
        return kiln.stack([t.log_abs_det_jacobian(a, b) for t, a, b in
                           zip(self.transforms, x.unbind(self.dim), y.unbind(self.dim))],
                          self.dim)


def _to_constraint(constraint, kind):
    """The transform from unconstrained reals onto `constraint` (biject_to / transform_to)."""
    if constraint is constraints.real or constraint is constraints.real_vector:
        return identity_transform
    if constraint is constraints.positive or constraint is constraints.nonnegative:
        return ExpTransform()
    if constraint is constraints.unit_interval:
        return SigmoidTransform()
    if constraint is constraints.simplex:
        return StickBreakingTransform()
    if constraint is constraints.lower_cholesky:
        return LowerCholeskyTransform()
    if constraint is constraints.positive_definite:
        return PositiveDefiniteTransform()
    if isinstance(constraint, constraints._GreaterThan):
        return ComposeTransform([ExpTransform(), AffineTransform(constraint.lower_bound, 1.0)])
    if isinstance(constraint, constraints._Interval):
        lo, hi = constraint.lower_bound, constraint.upper_bound
        return ComposeTransform([SigmoidTransform(), AffineTransform(lo, hi - lo)])
    raise NotImplementedError(f"Cannot {kind} {constraint!r}")


def biject_to(constraint):
    return _to_constraint(constraint, "biject_to")


def transform_to(constraint):
    # onto the simplex transform_to uses softmax (not bijective), biject_to stick-breaking
    if constraint is constraints.simplex:
        return SoftmaxTransform()
    return _to_constraint(constraint, "transform_to")


class LogisticNormal(TransformedDistribution):
    """A normal vector pushed onto the simplex by stick-breaking."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        base = _Normal(loc, scale, validate_args=validate_args)
        if not base.batch_shape:
            base = base.expand((1,))
        super().__init__(Independent(base, 1), StickBreakingTransform(),
                         validate_args=validate_args)

    @property
    def loc(self):
        return self.base_dist.base_dist.loc

    @property
    def scale(self):
        return self.base_dist.base_dist.scale


def _tril_positions(n: int, diag: int):
    rows, cols = np.tril_indices(n, diag)
    return rows * n + cols                     # row-major flat positions


def _vec_to_tril(vec, n: int, diag: int):
    """(..., N) -> (..., n, n) with vec filling the triangle below `diag`, row by row."""
    pos = kiln.tensor(_tril_positions(n, diag), device=vec.device)
    flat = kiln.zeros(*vec.shape[:-1], n * n, dtype=vec.dtype, device=vec.device)
    return flat.index_copy(-1, pos, vec).reshape(*vec.shape[:-1], n, n)


def _tril_to_vec(mat, diag: int):
    n = mat.shape[-1]
    pos = kiln.tensor(_tril_positions(n, diag), device=mat.device)
    return mat.reshape(*mat.shape[:-2], n * n).index_select(-1, pos)


class CorrCholeskyTransform(Transform):
    """Real vectors of length D(D-1)/2 to Cholesky factors of D x D correlation matrices:
    tanh squashes each entry to (-1, 1), and each row is scaled by the stick left over from the
    entries before it, so every row has unit norm."""

    event_dim = 1
    domain = constraints.real_vector

    @staticmethod
    def _size(n_entries: int) -> int:
        d = int(round((1 + math.sqrt(1 + 8 * n_entries)) / 2))
        if d * (d - 1) // 2 != n_entries:
            raise ValueError(f"CorrCholeskyTransform: {n_entries} is not D(D-1)/2 for any D")
        return d

    def _call(self, x):
        eps = float(kiln.finfo(x.dtype).eps)
        r = _vec_to_tril(x.tanh().clamp(-1 + eps, 1 - eps), self._size(x.shape[-1]), -1)
        left = (1 - r * r).sqrt().cumprod(-1)          # stick left after each entry of a row
        d = r.shape[-1]
        r = r + kiln.eye(d, dtype=r.dtype, device=r.device)
        return r * F.pad(left[..., :-1], (1, 0), value=1.0)

    def _inverse(self, y):
        left = 1 - (y * y).cumsum(-1)
        left_before = F.pad(left[..., :-1], (1, 0), value=1.0)
        t = _tril_to_vec(y, -1) / _tril_to_vec(left_before, -1).sqrt()
        return kiln.atanh(t)

    def log_abs_det_jacobian(self, x, y):
        left = 1 - (y * y).cumsum(-1)
        stick = 0.5 * _tril_to_vec(left, -2).log().sum(-1)
        tanh = -2 * (x + F.softplus(-2 * x) - math.log(2.0)).sum(-1)
        return stick + tanh

    def forward_shape(self, shape):
        d = self._size(shape[-1])
        return tuple(shape[:-1]) + (d, d)
