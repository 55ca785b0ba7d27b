"""More public tensor operations (torch.* names), composed from primitives like `functional`.

Families: trigonometric/hyperbolic and special functions, rounding and bit tricks, sorting and
order statistics (sort, topk, median, quantile, ...), cumulative and histogram ops, shape
helpers (atleast_nd, block_diag, meshgrid, rot90, ...), scatters, linear-algebra shortcuts of
the torch namespace, window functions and real-tensor forms of complex helpers (kiln has no
complex dtype). Ops whose result size depends on the data (unique, bincount) read values into
Python, which a compiled function reports as a graph break.

One module per family; each imports only `common` here (and `kiln.tracer.functional`):

    common          `_f`, `_full_like`, `values_indices`
    elementwise     special functions, trigonometry, bit tricks, complex-helper forms
    sorting         sort, topk, kthvalue, median, mode, quantile
    cumulative      cummax/cummin, logcumsumexp, diff, gradient, trapezoid
    counting        searchsorted, bucketize, histc, bincount, unique, isin, aminmax, hash_tensor
    shapes          atleast_nd, splits, rot90, *_scatter, block_diag, meshgrid, index_put,
                    the view ops' *_copy forms, ...
    linear_algebra  addmv, addr, addbmm, chain_matmul, kron, cdist, cov
    creation        scalar_tensor, range, frombuffer, window functions, poisson, fill
    misc            finfo/iinfo, can_cast, typename, vmap's loop, DLPack
    control_flow    cond, while_loop, scan, associative_scan, map, _check

This module only re-exports: every public name, and `_f` (used by `kiln.special`).
"""

from kiln.tracer.functional_extra.common import values_indices, _f  # noqa: F401
from kiln.tracer.functional_extra.elementwise import (asin, acos, atan, atan2, sinh,  # noqa: F401
                                                      cosh, asinh, acosh, atanh, arcsin, arccos,
                                                      arctan, arctan2, arcsinh, arccosh, arctanh,
                                                      deg2rad, rad2deg, lgamma, digamma, psi,
                                                      polygamma, mvlgamma, multigammaln, erfc,
                                                      erfcx, erfinv, i0, i0e, i1, i1e, ndtr, ndtri,
                                                      log_ndtr, igamma, igammac, gammainc,
                                                      gammaincc, zeta, logit, expit, xlogy, xlog1py,
                                                      entr, sinc, logaddexp, logaddexp2, sgn,
                                                      signbit, copysign, heaviside, ldexp, frexp,
                                                      nextafter, gcd, lcm, bitwise_left_shift,
                                                      bitwise_right_shift, fmax, fmin, positive,
                                                      multiply, subtract, conj, conj_physical,
                                                      resolve_conj, resolve_neg, real, angle,
                                                      imag, view_as_real, view_as_complex,
                                                      complex, polar,
                                                      is_complex, is_conj, is_neg, isreal,
                                                      is_signed, is_nonzero, is_same_size,
                                                      is_inference, is_inference_mode_enabled)
from kiln.tracer.functional_extra.sorting import (SortResult, argsort, sort, msort,  # noqa: F401
                                                  topk, kthvalue, median, nanmedian, mode, quantile,
                                                  nanquantile)
from kiln.tracer.functional_extra.cumulative import (cummax, cummin, logcumsumexp,  # noqa: F401
                                                     diff, gradient, trapezoid, trapz,
                                                     cumulative_trapezoid)
from kiln.tracer.functional_extra.counting import (searchsorted, bucketize, histc,  # noqa: F401
                                                   histogram, bincount, unique, unique_consecutive,
                                                   isin, aminmax, hash_tensor)
from kiln.tracer.functional_extra.shapes import (atleast_1d, atleast_2d, atleast_3d,  # noqa: F401
                                                 column_stack, row_stack, dstack, hsplit, vsplit,
                                                 dsplit, split_with_sizes, unsafe_split,
                                                 unsafe_chunk, unsafe_split_with_sizes, ravel,
                                                 rot90, diag_embed, diagflat, diagonal_scatter,
                                                 select_scatter, slice_scatter, block_diag,
                                                 cartesian_prod, combinations, meshgrid,
                                                 tril_indices, triu_indices, unravel_index, vander,
                                                 index_put, index_reduce, scatter_reduce,
                                                 segment_reduce, _chunk_cat, _unsafe_masked_index,
                                                 _unsafe_masked_index_put_accumulate,
                                                 masked_scatter, put, renorm, unfold,
                                                 as_strided, as_strided_scatter, empty_strided,
                                                 alias_copy,
                                                 as_strided_copy, detach_copy, diagonal_copy,
                                                 expand_copy, narrow_copy, permute_copy,
                                                 select_copy, slice_copy, split_copy,
                                                 split_with_sizes_copy, squeeze_copy, t_copy,
                                                 transpose_copy, unbind_copy, unfold_copy,
                                                 unsqueeze_copy, view_copy)
from kiln.tracer.functional_extra.linear_algebra import (addmv, addr, addbmm, adjoint,  # noqa: F401
                                                         chain_matmul, vdot, kron, cdist, cov,
                                                         corrcoef)
from kiln.tracer.functional_extra.creation import (scalar_tensor, range_, frombuffer,  # noqa: F401
                                                   hann_window, hamming_window, blackman_window,
                                                   bartlett_window, kaiser_window, poisson,
                                                   binomial, fill)
from kiln.tracer.functional_extra.misc import (finfo, iinfo, can_cast,  # noqa: F401
                                               broadcast_shapes, typename, get_device,
                                               set_default_tensor_type,
                                               nonzero_static, frobenius_norm, histogramdd,
                                               from_dlpack, to_dlpack)
from kiln.tracer.functional_extra.control_flow import (cond, while_loop, scan,  # noqa: F401
                                                       associative_scan, _check, _check_with,
                                                       _check_is_size)

# autocast's policy on the ops its tables name, before Tensor's methods are bound to them
import sys as _sys  # noqa: E402
from kiln.tracer import autocast as _autocast  # noqa: E402
_autocast.install(_sys.modules[__name__])
