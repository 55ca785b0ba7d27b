"""The rest of the `torch.*` namespace that is a thin form of something kiln already has.

`torch.abs_(x)` is `x.abs_()`; `torch.conv2d` is `nn.functional.conv2d` (with the ATen
signature where it differs: `torch.embedding(weight, indices)`, integer `reduction` enums of
the torch-level losses, batch/instance norm's argument order); a few common ops take `out=`.
`kiln/__init__.py` adds `EXPORTS` to the package and resolves `NN_FORWARD` lazily (nn is
imported after the tensor API).
"""

from __future__ import annotations

import functools

from kiln.tracer.errors import op_error
from kiln.tracer.methods import write_inplace
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


def with_out(fn):
    """`fn(..., out=t)`: the result written into `t` (resized when its shape differs, as
    PyTorch does); `out` tensors take no part in autograd, as in PyTorch."""
    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        result = fn(*args, **kwargs)
        if out is None:
            return result
        if isinstance(out, (tuple, list)):
            for o, r in zip(out, result):
                _write_out(o, r, fn.__name__)
            return out
        return _write_out(out, result, fn.__name__)
    return wrapper


def factory_with_out(fn):
    """A factory (`rand`, `zeros`, ...) taking `out=t`: made in `t`'s dtype and on its device
    unless the call names them (so `rand(2, 2, out=double_t)` draws doubles, as PyTorch's
    does), then written into `t` as `with_out` writes."""
    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        if out is None:
            return fn(*args, **kwargs)
        kwargs.setdefault("dtype", out.dtype)
        kwargs.setdefault("device", out.device)
        return _write_out(out, fn(*args, **kwargs), fn.__name__)
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


def _write_out(out: Tensor, result: Tensor, name: str) -> Tensor:
    if STATE.grad_enabled and (out.requires_grad or result.requires_grad):
        raise op_error(name, f"{name}(): functions with out=... arguments don't support "
                       "automatic differentiation, but one of the arguments requires grad.")
    if tuple(out.shape) != tuple(result.shape):
        out._data = out.device.xp.empty(tuple(result.shape), dtype=out.dtype.np)
    return write_inplace(out, result, name)


OUT_FUNCTIONS = """
add sub mul div matmul mm bmm mv cat stack sum mean prod exp log sqrt abs neg pow clamp clip
maximum minimum where sin cos tanh sigmoid amax amin cumsum addmm sort topk argmax argmin
""".split()

# factories that take out= (torch.rand(2, 2, out=c) in the introyt tensors tutorial)
OUT_FACTORIES = "zeros ones empty full rand randn randint randperm arange linspace eye".split()

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
        return getattr(nnF, name, None)
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


