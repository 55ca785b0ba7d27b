"""The rest of the `torch.*` namespace that is a thin form of something kiln already has.

`torch.abs_(x)` is `x.abs_()`; `torch.conv2d` is `nn.functional.conv2d` (with the ATen
signature where it differs: `torch.embedding(weight, indices)`, integer `reduction` enums of
the torch-level losses, batch/instance norm's argument order); `out=` on the functions PyTorch
takes it for (`with_out`, `write_out`: one set of rules for all of them).
`kiln/__init__.py` adds `EXPORTS` to the package and resolves `NN_FORWARD` lazily (nn is
imported after the tensor API).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings

from kiln.ir.dtypes import SCALAR_TYPE_NAMES
from kiln.tracer.autograd import no_grad, view_origin
from kiln.tracer.errors import op_error, user_stacklevel
from kiln.tracer.methods import check_partial_overlap, write_inplace
from kiln.tracer.methods_extra import layout, sparse_coo, strided  # noqa: F401  (torch.layout)
from kiln.tracer.tensor import STATE, Tensor

# torch.X_(t, ...) is t.X_(...)
INPLACE_FUNCTIONS = """
abs_ acos_ acosh_ arccos_ arccosh_ arcsin_ arcsinh_ arctan_ arctanh_ asin_ asinh_ atan_ atanh_
ceil_ clamp_ clamp_max_ clamp_min_ clip_ cos_ cosh_ deg2rad_ erf_ erfc_ exp2_ exp_ expm1_ fix_
floor_ frac_ gcd_ i0_ lcm_ ldexp_ log10_ log1p_ log2_ log_ logit_ nan_to_num_ neg_ negative_
rad2deg_ reciprocal_ round_ rsqrt_ sigmoid_ sin_ sinc_ sinh_ sqrt_ square_ tan_ tanh_ trunc_
xlogy_ index_put_ zero_ fill_ detach_ conj_physical_ resize_as_ relu_ addmv_
""".split()


def _method_form(name):
    def fn(input, *args, **kwargs):
        return getattr(input, name)(*args, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"torch.{name}(t, ...) is t.{name}(...)"
    return fn


def _resize_as_(input, other):
    if tuple(input.shape) != tuple(other.shape):
        raise op_error("resize_as_", "kiln tensors cannot change size in place; got "
                       f"{list(input.shape)} and {list(other.shape)}")
    return input


def with_out(fn, exact_dtype=False):
    """`fn(..., out=t)`: the result written into `t` by `write_out`'s rules (a tuple of tensors
    for an op of several results), and `t` returned; `exact_dtype` for the ops whose `out` must
    have the result's dtype (PyTorch's matmul family, abs, amax, ...) rather than one it casts to,
    or a predicate of the call saying so (`out_dtype_rule`)."""
    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        if out is None:
            return fn(*args, **kwargs)
        name = fn.__name__
        exact = exact_dtype(*args, **kwargs) if callable(exact_dtype) else exact_dtype
        if isinstance(out, Tensor):
            _check_out_overlap((out,), args, kwargs, name)
            return write_out(out, fn(*args, **kwargs), name, exact)
        if not isinstance(out, (tuple, list)) or not all(isinstance(o, Tensor) for o in out):
            raise op_error(name, f"argument 'out' must be a Tensor or a tuple of Tensors, not "
                           f"{type(out).__name__}", TypeError)
        _check_out_overlap(out, args, kwargs, name)
        result = fn(*args, **kwargs)
        if not isinstance(result, (tuple, list)) or len(result) != len(out):
            raise op_error(name, f"expected out= to be {_result_count(result)}, got a "
                           f"{type(out).__name__} of {len(out)}", TypeError)
        for o, r in zip(out, result):
            write_out(o, r, name, exact)
        # a named result (values, indices) comes back named, holding the out tensors
        return type(result)(*out) if hasattr(result, "_fields") else out
    return wrapper


def _check_out_overlap(outs, args, kwargs, name: str) -> None:
    """Refuse, as PyTorch, an `out=` sharing part of an input's memory in another layout
    (`torch.add(x[:-1], 1, out=x[1:])`, `torch.cat([x[:2], x[2:4]], out=x[1:5])`): the result
    would depend on the order the elements are written in. The same elements in the same
    layout (`torch.add(x, 1, out=x)`) are allowed."""
    inputs = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (tuple, list)):
            inputs.extend(a)
        else:
            inputs.append(a)
    for o in outs:
        if o.device.type != "meta":
            check_partial_overlap(o, inputs, name)


def _result_count(result) -> str:
    if isinstance(result, (tuple, list)):
        return f"a tuple of {len(result)} tensors"
    return "one tensor"


def factory_with_out(fn):
    """A factory (`rand`, `zeros`, ...) taking `out=t`: made in `t`'s dtype and on its device
    unless the call names them (so `rand(2, 2, out=double_t)` draws doubles, as PyTorch's
    does), then written into `t` as `with_out` writes; a named dtype must be `t`'s."""
    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        if out is None:
            return fn(*args, **kwargs)
        dtype = kwargs.get("dtype")
        if dtype is not None and dtype is not out.dtype:
            raise op_error(fn.__name__, f"dtype {SCALAR_TYPE_NAMES.get(dtype, dtype)} does not "
                           f"match dtype of out parameter "
                           f"({SCALAR_TYPE_NAMES.get(out.dtype, out.dtype)})")
        kwargs.setdefault("dtype", out.dtype)
        kwargs.setdefault("device", out.device)
        return write_out(out, fn(*args, **kwargs), fn.__name__)
    return wrapper


def normal_with_out(fn):
    """`normal(..., out=t)`: a factory's rules when `mean` and `std` are numbers (drawn in `t`'s
    dtype; a named dtype must be `t`'s), an op's when either is a tensor."""
    factory, op = factory_with_out(fn), with_out(fn)

    @functools.wraps(fn)
    def wrapper(mean=0.0, std=1.0, *args, out=None, **kwargs):
        if not isinstance(mean, Tensor) and not isinstance(std, Tensor):
            return factory(mean, std, *args, out=out, **kwargs)
        if isinstance(out, Tensor) and out.dtype.is_floating_point:
            # PyTorch draws in out's dtype (float64 draws are another stream than float32's)
            mean, std = (x.to(out.dtype) if isinstance(x, Tensor) else x for x in (mean, std))
        return op(mean, std, *args, out=out, **kwargs)
    return wrapper


def wrap_each(namespace: dict, names, make) -> None:
    """`namespace[name] = make(fn, name)` for each of `names`, one wrapper per function: every
    public name bound to that function gets the same wrapper, so aliases stay one object
    (`multiply` is `mul`, `arctan` is `atan`) and fx prints them by a public name."""
    made: dict = {}
    for name in names:
        fn = namespace[name]
        if id(fn) not in made:
            made[id(fn)] = make(fn, name)
    for name, fn in list(namespace.items()):
        if not name.startswith("_") and id(fn) in made:
            namespace[name] = made[id(fn)]


def _keepdim_index(fn) -> int | None:
    """The position of `fn`'s keepdim parameter (None: keyword-only), or -1 without one."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None or "keepdim" not in code.co_varnames[:code.co_argcount +
                                                          code.co_kwonlyargcount]:
        return -1
    index = code.co_varnames.index("keepdim")
    return index if index < code.co_argcount else None


def bool_keepdim(fn, name: str, index: int | None, method: bool):
    """`fn` refusing a `keepdim` that is not a bool, as PyTorch's argument parser does: Python
    would take `x.sum(0, 1)` as keepdim=True where PyTorch raises. `index`: keepdim's place
    among the positional arguments (self or input first)."""
    shown = None if index is None else index if method else index + 1
    code = getattr(inspect.unwrap(fn), "__code__", None)
    has_dim = code is not None and "dim" in code.co_varnames[:code.co_argcount +
                                                            code.co_kwonlyargcount]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs and ("keepdims" in kwargs or "axis" in kwargs):
            kwargs = _numpy_keywords(kwargs, name, has_dim)
        if index is not None and len(args) > index:
            keepdim, where = args[index], f" (position {shown})"
        elif kwargs:
            keepdim, where = kwargs.get("keepdim", False), ""
        else:
            return fn(*args)
        if keepdim is not True and keepdim is not False:
            kind = type(keepdim)
            kind = f"numpy.{kind.__name__}" if kind.__module__ == "numpy" else kind.__name__
            raise op_error(name, f"argument 'keepdim'{where} must be bool, not {kind}",
                           TypeError)
        return fn(*args, **kwargs)
    return wrapper


def _numpy_keywords(kwargs: dict, name: str, has_dim: bool) -> dict:
    """NumPy's spellings `keepdims=` and `axis=` as `keepdim=` and `dim=`, which PyTorch's
    argument parser accepts for every reduction (`P.sum(1, keepdims=True)` in makemore); both
    spellings at once is an unexpected keyword, as there."""
    renamed = dict(kwargs)
    for numpy_name, torch_name in (("keepdims", "keepdim"), ("axis", "dim")):
        if numpy_name not in renamed or (torch_name == "dim" and not has_dim):
            continue
        if torch_name in renamed:
            raise op_error(name, f"{name}() got an unexpected keyword argument "
                           f"'{numpy_name}'", TypeError)
        renamed[torch_name] = renamed.pop(numpy_name)
    return renamed


def refuse_non_bool_keepdim(modules: dict, tensor_class) -> None:
    """Install `bool_keepdim` on every public function with a keepdim parameter: the
    reductions of the modules in `modules` (prefix -> module namespace, "" for the root) and
    the methods of `tensor_class`. One place for all of them, method and function forms."""
    for prefix, namespace in modules.items():
        names = [n for n, fn in namespace.items() if not n.startswith("_") and callable(fn)
                 and not isinstance(fn, type) and _keepdim_index(fn) != -1]
        wrap_each(namespace, names, lambda fn, name: bool_keepdim(
            fn, prefix + name, _keepdim_index(fn), method=False))
    for name, fn in list(vars(tensor_class).items()):
        if not name.startswith("_") and inspect.isfunction(fn) and _keepdim_index(fn) != -1:
            setattr(tensor_class, name, bool_keepdim(fn, name, _keepdim_index(fn), True))


def write_out(out: Tensor, result: Tensor, name: str, exact_dtype: bool = False) -> Tensor:
    """Store `result` into the user's `out=` tensor by PyTorch's rules: no autograd through
    `out`, the same device, a dtype the result casts to safely (`can_cast`: same kind or wider,
    so an integer result into a float `out` but not the reverse), and a shape that differs
    resized (with a warning unless `out` was empty: PyTorch deprecates resizing a full one)."""
    if not isinstance(result, Tensor):
        raise op_error(name, f"kiln does not support out= here: the result is a "
                       f"{type(result).__name__}, not a tensor")
    if STATE.grad_enabled and (out.requires_grad or result.requires_grad):
        raise op_error(name, f"{name}(): functions with out=... arguments don't support "
                       "automatic differentiation, but one of the arguments requires grad.")
    if out.device != result.device:
        raise op_error(name, f"Expected out tensor to have device {result.device}, but got "
                       f"{out.device} instead")
    if out.dtype is not result.dtype:
        have, want = SCALAR_TYPE_NAMES.get(out.dtype), SCALAR_TYPE_NAMES.get(result.dtype)
        if exact_dtype:
            raise op_error(name, f"Expected out tensor to have dtype {want}, but got {have} "
                           "instead")
        if result.dtype.category > out.dtype.category:
            raise op_error(name, f"result type {want} can't be cast to the desired output "
                           f"type {have}")
    if tuple(out.shape) != tuple(result.shape):
        if out.numel():
            warnings.warn(f"{name}: An output with one or more elements was resized since it "
                          f"had shape {list(out.shape)}, which does not match the required "
                          f"output shape {list(result.shape)}. This behavior is deprecated "
                          "(as in PyTorch): pass an out tensor of the result's shape, or "
                          "resize it to zero elements first with t.resize_(0).", UserWarning,
                          stacklevel=user_stacklevel())
        if STATE.tracer is not None:    # a replay could not give `out` its new size
            STATE.tracer.graph_break(f"{name}(out=...) resizes out from {list(out.shape)} to "
                                     f"{list(result.shape)}")
        _resize_out(out, tuple(result.shape), name)
    return write_inplace(out, result, name)


def _resize_out(out: Tensor, shape: tuple, name: str) -> None:
    """Give `out` the shape `shape` as PyTorch's resize does: contiguous, from where `out`
    starts in the memory it shares, so that a view's base (and a tensor's own views) see what
    is then written. A tensor owning too little memory gets new memory; a view whose base has
    too little room from the view's start is refused (PyTorch grows the memory both share)."""
    count = math.prod(shape)
    data = out._data
    if out._base is None:
        if getattr(data, "flags", None) is not None and data.flags.c_contiguous and \
                count <= data.size:
            out._data = data.reshape(-1)[:count].reshape(shape)
        else:
            out._data = out.device.xp.empty(shape, dtype=out.dtype.np)
        return
    root = view_origin(out)[0]
    offset = (out.data_ptr() - root.data_ptr()) // data.itemsize
    if root.dtype is not out.dtype or not root.is_contiguous() or \
            not 0 <= offset <= root.numel() - count:
        raise op_error(name, f"cannot resize out=, a view of shape {list(out.shape)} starting "
                       f"at element {offset} of a tensor of shape {list(root.shape)}, to the "
                       f"result's shape {list(shape)}: the base has no room for it there "
                       "(PyTorch would grow the memory both share, a deprecated resize); pass "
                       f"an out= of shape {list(shape)}")
    with no_grad():         # the view's new place in its base's memory, contiguous
        view = root.reshape(-1)[offset:offset + count].view(shape)
    out._data, out._base = view._data, view._base


# PyTorch's functions that take out= (2.13's Python signatures), by namespace
OUT_FUNCTIONS = """
abs absolute acos acosh add addbmm addcdiv addcmul addmm addmv addr alias_copy all amax amin
aminmax angle any arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argsort
as_strided_copy asin asinh atan atan2 atanh baddbmm bernoulli bitwise_and bitwise_left_shift
bitwise_not bitwise_or bitwise_right_shift bitwise_xor bmm bucketize cat ceil chain_matmul
cholesky cholesky_inverse cholesky_solve clamp clamp_max clamp_min clip column_stack complex
concat concatenate conj_physical copysign cos cosh cross cummax cummin cumprod cumsum deg2rad
detach_copy diag diag_embed diagonal_copy diff digamma div divide dot dstack eq erf
erfc erfinv exp exp2 expand_copy expm1 fix float_power floor floor_divide fmax fmin fmod frac
frexp frobenius_norm full_like gather gcd ge geqrf ger greater greater_equal gt
hash_tensor heaviside histc histogram hstack hypot i0 igamma igammac index_add index_copy
index_reduce index_select inner inverse isin isneginf isposinf kron kthvalue lcm ldexp le lerp
less less_equal lgamma log log10 log1p log2 log_softmax logaddexp logaddexp2 logcumsumexp
logical_and logical_not logical_or logical_xor logit logsumexp lt lu lu_solve lu_unpack
masked_select matmul matrix_power max maximum mean median min minimum mm mode msort mul
multinomial multiply mv mvlgamma nan_to_num nanmean nanmedian nanquantile nansum narrow_copy ne
neg negative nextafter nonzero nonzero_static norm not_equal nuclear_norm orgqr ormqr
outer permute_copy polar polygamma pow prod qr quantile rad2deg reciprocal remainder renorm
round row_stack rsqrt scatter scatter_add scatter_reduce searchsorted select_copy sgn sigmoid
sign signbit sin sinc sinh slice_copy slice_scatter slogdet softmax sort split_copy
split_with_sizes_copy sqrt square squeeze_copy stack std sub subtract sum svd t_copy take
take_along_dim tan tanh tensordot topk transpose_copy triangular_solve tril triu
true_divide trunc unbind_copy unfold_copy unsqueeze_copy var vdot view_copy vstack where xlogy
""".split()
OUT_LINALG = """
cholesky cholesky_ex cond cross det eig eigh eigvals eigvalsh householder_product inv inv_ex
ldl_factor ldl_factor_ex ldl_solve lstsq lu lu_factor lu_factor_ex lu_solve matmul matrix_norm
matrix_power matrix_rank multi_dot norm pinv qr slogdet solve solve_ex solve_triangular svd
svdvals tensorinv tensorsolve vecdot vector_norm
""".split()
OUT_SPECIAL = """
airy_ai bessel_j0 bessel_j1 bessel_y0 bessel_y1 chebyshev_polynomial_t chebyshev_polynomial_u
chebyshev_polynomial_v chebyshev_polynomial_w digamma entr erf erfc erfcx erfinv exp2 expit
expm1 gammainc gammaincc gammaln hermite_polynomial_h hermite_polynomial_he i0 i0e i1 i1e
laguerre_polynomial_l legendre_polynomial_p log1p log_ndtr logit logsumexp modified_bessel_i0
modified_bessel_i1 modified_bessel_k0 modified_bessel_k1 multigammaln ndtr ndtri polygamma psi
round scaled_modified_bessel_k0 scaled_modified_bessel_k1 shifted_chebyshev_polynomial_t
shifted_chebyshev_polynomial_u shifted_chebyshev_polynomial_v shifted_chebyshev_polynomial_w
sinc spherical_bessel_j0 xlog1py xlogy zeta
""".split()
OUT_FFT = """
fft fft2 fftfreq fftn hfft hfft2 hfftn ifft ifft2 ifftn ihfft ihfft2 ihfftn irfft irfft2 irfftn
rfft rfft2 rfftfreq rfftn
""".split()
OUT_NN_FORWARD = ("threshold",)    # resolved on use (`nn_forward`); nn.functional.hardshrink
# takes out= itself
# ... whose out must have the result's dtype exactly (PyTorch refuses a wider one there)
OUT_EXACT_DTYPE = set("""
abs absolute addbmm addmm addmv aminmax alias_copy amax amin as_strided_copy baddbmm bmm ceil
conj_physical cross diag diagonal_copy dot expand_copy fix floor frac gather heaviside
histc histogram index_add index_copy index_reduce index_select log_softmax logcumsumexp
lu_solve lu_unpack masked_select matmul mm msort mv nan_to_num nanquantile narrow_copy neg
negative norm ormqr permute_copy qr quantile renorm round scatter scatter_add
scatter_reduce sgn sign slice_scatter softmax squeeze_copy svd t_copy take take_along_dim
tensordot transpose_copy triangular_solve tril triu trunc unfold_copy unsqueeze_copy vdot
view_copy where
""".split())
# ... and those where it depends on the call, as in PyTorch's kernels (a call given to the
# predicate as made: True when out must have the result's dtype)
OUT_EXACT_DTYPE_WHEN = {
    "diff": lambda input, n=1, *rest, **kwargs: n == 0,           # n = 0: a copy of the input
    "cumsum": lambda *args, dtype=None, **kwargs: dtype is not None,
    "cumprod": lambda *args, dtype=None, **kwargs: dtype is not None,
    "lerp": lambda input, end, weight, **kwargs: isinstance(weight, Tensor),
    "inner": lambda input, other: not (isinstance(input, Tensor) and input.ndim == 0 or
                                       isinstance(other, Tensor) and other.ndim == 0),
    "matrix_power": lambda input, n: n not in (0, 1),             # 0 and 1: a copy
}
OUT_LINALG_EXACT_DTYPE = set("""
cholesky cross det eigh eigvalsh inv ldl_solve lu lu_solve matrix_norm multi_dot norm qr slogdet
solve solve_triangular svd svdvals vecdot vector_norm
""".split())


def out_dtype_rule(name: str, exact_names=OUT_EXACT_DTYPE):
    """`with_out`'s `exact_dtype` for the function `name`: a predicate of the call, or whether
    `name` is among `exact_names`."""
    return OUT_EXACT_DTYPE_WHEN.get(name, name in exact_names)

# factories that take out= (torch.rand(2, 2, out=c) in the introyt tensors tutorial)
OUT_FACTORIES = """zeros ones empty full rand randn randint randperm arange range linspace logspace
eye""".split()

# torch.X that is nn.functional.X with the same leading arguments
NN_FORWARD = """
conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d alpha_dropout
feature_alpha_dropout layer_norm group_norm rms_norm max_pool1d max_pool2d max_pool3d avg_pool1d
adaptive_avg_pool1d adaptive_max_pool1d max_pool1d_with_indices celu selu prelu rrelu threshold
hardshrink pixel_shuffle pixel_unshuffle channel_shuffle bilinear cosine_similarity
pairwise_distance pdist
""".split()
NN_INPLACE = "celu_ selu_ rrelu_ threshold_ dropout_".split()
# torch-level losses take `reduction` as an enum: 0 none, 1 mean, 2 sum; its positional index
LOSS_REDUCTION_POSITION = {"kl_div": 2, "binary_cross_entropy_with_logits": 4,
                           "cosine_embedding_loss": 4, "hinge_embedding_loss": 3,
                           "margin_ranking_loss": 4, "triplet_margin_loss": 7,
                           "poisson_nll_loss": 5, "ctc_loss": 5}
_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
# ... and these default to no reduction at the torch level (PyTorch 2.13), unlike nn.functional
LOSS_UNREDUCED_BY_DEFAULT = {"kl_div", "binary_cross_entropy_with_logits",
                             "cosine_embedding_loss", "hinge_embedding_loss",
                             "margin_ranking_loss", "triplet_margin_loss"}


def nn_forward(name: str):
    """The torch-level form of nn.functional's `name`, or None when kiln lacks it."""
    from kiln.nn import functional as nnF
    if name in NN_FORWARD:
        fn = getattr(nnF, name, None)
        return with_out(fn) if fn is not None and name in OUT_NN_FORWARD else fn
    if name in NN_INPLACE:
        base = getattr(nnF, name[:-1], None)
        if base is None:
            return None

        def inplace(input, *args, **kwargs):
            return write_inplace(input, base(input, *args, **kwargs), name)
        return inplace
    if name in LOSS_REDUCTION_POSITION:
        base = getattr(nnF, name, None)
        if base is None:
            return None
        pos = LOSS_REDUCTION_POSITION[name]

        def loss(*args, **kwargs):
            args = list(args)
            if len(args) > pos:
                kwargs["reduction"] = args.pop(pos)
                args = args[:pos]
            if name in LOSS_UNREDUCED_BY_DEFAULT:
                kwargs.setdefault("reduction", 0)
            if isinstance(kwargs.get("reduction"), int):
                kwargs["reduction"] = _REDUCTIONS[kwargs["reduction"]]
            return base(*args, **kwargs)
        return loss
    if name == "embedding":
        base = getattr(nnF, "embedding", None)
        return None if base is None else (
            lambda weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False:
            base(indices, weight, None if padding_idx == -1 else padding_idx))
    if name == "dropout":
        base = getattr(nnF, "dropout", None)
        return None if base is None else (lambda input, p, train: base(input, p, train))
    if name == "batch_norm":
        base = getattr(nnF, "batch_norm", None)
        return None if base is None else (
            lambda input, weight, bias, running_mean, running_var, training, momentum, eps,
            cudnn_enabled=True: base(input, running_mean, running_var, weight, bias, training,
                                     momentum, eps))
    if name == "instance_norm":
        base = getattr(nnF, "instance_norm", None)
        return None if base is None else (
            lambda input, weight, bias, running_mean, running_var, use_input_stats, momentum,
            eps, cudnn_enabled=True: base(input, running_mean, running_var, weight, bias,
                                          use_input_stats, momentum, eps))
    if name == "constant_pad_nd":
        return lambda input, pad, value=0: nnF.pad(input, list(pad), "constant", value)
    if name in GRID_SAMPLERS:
        return functools.partial(_grid_sampler, nnF.grid_sample, name)
    if name in NN_CONTAINERS:
        import kiln.nn
        return getattr(kiln.nn, name, None)
    return None


GRID_SAMPLERS = {"grid_sampler": None, "grid_sampler_2d": 4, "grid_sampler_3d": 5}


def _grid_sampler(grid_sample, name: str, input, grid, interpolation_mode: int,
                  padding_mode: int, align_corners: bool):
    """ATen's grid_sampler: F.grid_sample with its modes as enums (0, 1, 2)."""
    dims = GRID_SAMPLERS[name]
    if dims is not None and input.ndim != dims:
        raise op_error(name, f"expected {dims}-D input, got {list(input.shape)}")
    return grid_sample(input, grid, ("bilinear", "nearest", "bicubic")[interpolation_mode],
                       ("zeros", "border", "reflection")[padding_mode], align_corners)


NN_CONTAINERS = ("ModuleDict", "ParameterDict", "BufferDict")    # torch re-exports these
LAZY = set(NN_CONTAINERS) | set(NN_FORWARD) | set(NN_INPLACE) | set(LOSS_REDUCTION_POSITION) | {
    "embedding", "dropout", "batch_norm", "instance_norm", "constant_pad_nd", *GRID_SAMPLERS}


def exports() -> dict:
    out = {name: _method_form(name) for name in INPLACE_FUNCTIONS}
    out["resize_as_"] = _resize_as_
    out["detach"] = lambda input: input.detach()
    return out


class AcceleratorError(RuntimeError):
    """An error reported by the accelerator (CUDA) runtime."""


class OutOfMemoryError(RuntimeError):
    """A device ran out of memory."""


class FatalError(Exception):
    """An unrecoverable error of the runtime."""


