"""Automatic mixed precision: the autocast state of each device type and the cast policy of ops.

Inside `kiln.autocast(device_type)` an op named in this module's tables casts its floating
inputs on that device before it runs, as PyTorch's autocast does:

    LOWER     to the autocast dtype (float16 or bfloat16): matmuls, linear, convolutions
    FP32      to float32: ops that lose too much in half precision (losses, exp/log on CUDA)
    FP32_OPT  float32 through the op's own `dtype=` argument, unless the caller gave one
              (softmax, sum, cumsum on CUDA)
    PROMOTE   to the widest floating dtype among the inputs (cat, addcmul, ...)
    KEEP      no cast; the op's own internals are not autocast (kiln composes `mv` from
              `matmul`, where PyTorch's mv is one op that autocast leaves alone)
    BANNED    refused (binary_cross_entropy on CUDA)

float64 tensors, integer tensors and tensors on another device type are never cast. An op runs
with autocast suspended, so the ops it is composed of are not cast again; an op in no table
runs as it is, and its parts meet the policy (kiln's composites match PyTorch's decompositions
where PyTorch's are composites too: einsum, tensordot, multi-head attention). The casts are
ordinary differentiable `cast` ops, so gradients come back in the inputs' dtypes and a compiled
function records them in its graph; `key()` is the state a compiled entry is specialized to.
The state is per thread, as PyTorch's.

The wrappers are installed by table (`install`) on the namespaces that export the ops (the
functional packages before Tensor's methods are bound to them, and nn.functional): the
dispatcher's hot path is untouched, and an op outside the tables pays nothing.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer.tensor import STATE, TRACING, Tensor

DEVICE_TYPES = ("cpu", "cuda")
DEFAULT_DTYPE = {"cpu": "bfloat16", "cuda": "float16"}


class _ThreadState(threading.local):
    """Autocast's state, one per thread as PyTorch's: a new thread starts with autocast off."""

    def __init__(self):
        self.enabled = {"cpu": False, "cuda": False}
        self.dtype = dict(DEFAULT_DTYPE)   # by name: bfloat16 may not exist until it is used
        self.cache_enabled = True
        self.nesting = 0
        self.suspended = False             # an autocast op is running: its parts are not cast
        self.key = None                    # ((device_type, dtype name), ...) of the enabled
        self.cast_cache = {}               # id(weight) -> (weakref, version, cast copy)


_local = _ThreadState()
# How many threads have some device autocasting. The wrappers read this plain counter first
# and their thread's state only when it is not zero, so an op pays next to nothing while no
# thread autocasts. Changed only by `_refresh`, under the lock.
ACTIVE = [0]
_ACTIVE_LOCK = threading.Lock()

LOWER, FP32, FP32_OPT, PROMOTE, KEEP, BANNED = ("lower", "fp32", "fp32_opt", "promote", "keep",
                                                "banned")


# ----------------------------------------------------------------------------- state

def check_device_type(device_type) -> str:
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if device_type not in DEVICE_TYPES:
        raise RuntimeError(f"User specified an unsupported autocast device_type "
                           f"'{device_type}': kiln autocasts on 'cpu' and 'cuda'")
    return device_type


def resolve_dtype(name: str, device_type: str) -> dt.DType:
    """The kiln dtype called `name`; a clear error where this kiln has none (bfloat16), or has
    its name but not the package that stores it."""
    try:
        dtype = dt.from_name(name)
        dtype.np_dtype          # a dtype without its storage type raises its install hint here
    except KeyError:
        raise RuntimeError(f"autocast('{device_type}'): kiln has no {name} dtype, the default "
                           f"for this device; pass dtype=torch.float16 (kiln.float16) to "
                           f"autocast in float16") from None
    except RuntimeError as e:
        raise RuntimeError(f"autocast('{device_type}') in {name}: {e}; or pass "
                           f"dtype=torch.float16 (kiln.float16)") from None
    return dtype


def _refresh() -> None:
    state = _local
    key = tuple((d, state.dtype[d]) for d in DEVICE_TYPES if state.enabled[d]) or None
    if (key is None) != (state.key is None):
        with _ACTIVE_LOCK:
            ACTIVE[0] += (key is not None) - (state.key is not None)
    state.key = key


def key():
    """This thread's autocast state as a compiled entry's key: None while nothing autocasts."""
    return _local.key if ACTIVE[0] else None


def is_enabled(device_type: str) -> bool:
    return _local.enabled[check_device_type(device_type)]


def set_enabled(device_type: str, enabled: bool) -> None:
    _local.enabled[check_device_type(device_type)] = bool(enabled)
    _refresh()


def dtype_name(device_type: str) -> str:
    return _local.dtype[check_device_type(device_type)]


def set_dtype(device_type: str, dtype) -> None:
    _local.dtype[check_device_type(device_type)] = dtype if isinstance(dtype, str) else dtype.name
    _refresh()


def is_cache_enabled() -> bool:
    return _local.cache_enabled


def set_cache_enabled(enabled: bool) -> None:
    _local.cache_enabled = bool(enabled)


def increment_nesting() -> int:
    _local.nesting += 1
    return _local.nesting


def decrement_nesting() -> int:
    _local.nesting -= 1
    return _local.nesting


def clear_cache() -> None:
    _local.cast_cache.clear()


# ----------------------------------------------------------------------------- policies

def _names(text: str) -> frozenset:
    return frozenset(text.split())


# PyTorch's lists (aten/src/ATen/autocast_mode.{h,cpp}), by the Python names kiln exports.
# CPU: einsum, tensordot, inner and chain_matmul are composites that reach bmm/mm there, so they
# come out in the low dtype too (checked against torch's CPU autocast).
_CPU = {
    LOWER: _names("""conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
        bmm mm baddbmm addmm addbmm linear matmul prelu scaled_dot_product_attention einsum
        tensordot inner chain_matmul multi_dot vecdot"""),
    FP32: _names("""avg_pool3d max_pool3d adaptive_avg_pool3d adaptive_max_pool3d
        fractional_max_pool2d fractional_max_pool3d max_unpool2d max_unpool3d
        binary_cross_entropy grid_sample prod quantile nanquantile cdist trace mse_loss
        cosine_embedding_loss nll_loss hinge_embedding_loss poisson_nll_loss smooth_l1_loss
        cross_entropy l1_loss huber_loss margin_ranking_loss soft_margin_loss triplet_margin_loss
        multi_margin_loss ctc_loss kl_div multilabel_margin_loss binary_cross_entropy_with_logits
        cholesky cholesky_inverse cholesky_solve inverse pinverse lu_solve triangular_solve qr svd
        inv inv_ex solve cholesky_ex svdvals eigvals eigh eigvalsh lstsq cond matrix_rank
        householder_product tensorinv tensorsolve"""),
    PROMOTE: _names("stack cat concat concatenate index_copy"),
    KEEP: _names("mv dot vdot outer ger addmv addr kron"),
}
_CUDA = {
    LOWER: _names("""conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
        prelu addmm addmv addr matmul einsum mm mv vecdot linear addbmm baddbmm bmm chain_matmul
        multi_dot scaled_dot_product_attention"""),
    FP32: _names("""acos arccos asin arcsin cosh erfinv exp expm1 log log10 log2 log1p
        reciprocal rsqrt sinh tan pow softplus layer_norm group_norm cosine_similarity
        poisson_nll_loss cosine_embedding_loss nll_loss cross_entropy hinge_embedding_loss kl_div
        l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss
        soft_margin_loss triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits
        dist pdist cdist renorm logsumexp interpolate upsample upsample_nearest upsample_bilinear
        norm nuclear_norm cumprod"""),
    FP32_OPT: _names("prod softmax log_softmax softmin cumsum sum vector_norm matrix_norm"),
    PROMOTE: _names("""addcdiv addcmul atan2 arctan2 bilinear cross dot vdot grid_sample index_put
        tensordot scatter_add"""),
    KEEP: _names("outer ger kron"),
    BANNED: _names("binary_cross_entropy"),
}


def _cpu_pad(args: tuple, kwargs: dict):
    """F.pad on the CPU: reflection (1-d, 2-d) and replication padding run in float32."""
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    width = kwargs.get("pad", args[1] if len(args) > 1 else ())
    if mode == "replicate" or (mode == "reflect" and len(width) <= 4):
        return FP32
    return None


POLICIES = {device: {name: policy for policy, names in table.items() for name in names}
            for device, table in (("cpu", _CPU), ("cuda", _CUDA))}
POLICIES["cpu"]["pad"] = _cpu_pad

_BANNED_MESSAGE = {
    "binary_cross_entropy":
        "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
        "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
        "In this case, combine the two layers using "
        "torch.nn.functional.binary_cross_entropy_with_logits\n"
        "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are "
        "safe to autocast."}


def policy_names() -> frozenset:
    """Every op name some device's table names (what `install` wraps)."""
    return frozenset(POLICIES["cpu"]) | frozenset(POLICIES["cuda"])


# ----------------------------------------------------------------------------- casting

def _eligible(t, device_type: str) -> bool:
    return (isinstance(t, Tensor) and t.dtype.is_floating_point and t.dtype is not dt.float64
            and t.device.type == device_type)


def _cast_tensor(t: Tensor, dtype: dt.DType, lower: bool) -> Tensor:
    if t.dtype is dtype:
        return t
    # PyTorch's heuristic: a float32 weight (a leaf that requires grad) used by several low
    # precision ops in one region is cast once. Not while tracing: a copy made before the trace
    # would enter the graph as a constant and go stale when the weight changes.
    # Nor under no_grad: a cast with no history would cut the weight's gradient off later.
    cache = _local.cast_cache
    cacheable = (lower and _local.cache_enabled and t.dtype is dt.float32 and t.requires_grad
                 and t.grad_fn is None and t._base is None and STATE.grad_enabled
                 and not (TRACING[0] and STATE.tracer is not None))
    if cacheable:
        # a hit must still be the weight's (same object, unchanged since), and its cast node
        # alive: a backward inside the region frees it, and the next op casts afresh
        hit = cache.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version[0] and \
                hit[2].dtype is dtype and getattr(hit[2].grad_fn, "inputs", None) is not None:
            return hit[2]
    out = P.cast(t, dtype=dtype)
    if cacheable:
        cache[id(t)] = (weakref.ref(t), t._version[0], out)
    return out


def _cast_all(value, dtype: dt.DType, device_type: str, lower: bool):
    if isinstance(value, Tensor):
        return _cast_tensor(value, dtype, lower) if _eligible(
            value, device_type) else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_cast_all(v, dtype, device_type, lower) for v in value)
    return value


def _tensors(args: tuple, kwargs: dict):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, Tensor):
                    yield b


def _widest(args: tuple, kwargs: dict, device_type: str, low: dt.DType) -> dt.DType:
    for t in _tensors(args, kwargs):
        if _eligible(t, device_type) and t.dtype is dt.float32:
            return dt.float32
    return low


def _dtype_position(fn) -> int | None:
    """Where `fn` takes `dtype` positionally (None: keyword only, or no such parameter)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    for i, p in enumerate(params):
        if p.name == "dtype":
            return i if p.kind is p.POSITIONAL_OR_KEYWORD else None
    return None


def _run(fn, name: str, dtype_at, args: tuple, kwargs: dict):
    """One call of op `name` while some thread autocasts (the wrappers' slow path)."""
    state = _local
    if state.suspended or state.key is None:
        return fn(*args, **kwargs)
    # the op's device: a GPU tensor's, where a 0-d CPU tensor rides along with GPU ones
    device_type = None
    for t in _tensors(args, kwargs):
        device_type = t.device.type
        if device_type != "cpu":
            break
    if device_type is None or not state.enabled.get(device_type, False):
        return fn(*args, **kwargs)
    policy = POLICIES[device_type].get(name)
    if callable(policy):
        policy = policy(args, kwargs)
    if policy is None:
        return fn(*args, **kwargs)
    if policy is BANNED:
        raise RuntimeError(_BANNED_MESSAGE[name])
    if policy is FP32_OPT:
        given = kwargs.get("dtype") is not None or (
            dtype_at is not None and len(args) > dtype_at and args[dtype_at] is not None)
        if args and _eligible(args[0], device_type) and not given:
            kwargs = dict(kwargs, dtype=dt.float32)
    elif policy is not KEEP:
        low = resolve_dtype(state.dtype[device_type], device_type)
        to = {LOWER: low, FP32: dt.float32}.get(policy)
        if to is None:                                    # PROMOTE
            to = _widest(args, kwargs, device_type, low)
        lower = to is low
        args = tuple(_cast_all(a, to, device_type, lower) for a in args)
        kwargs = {k: _cast_all(v, to, device_type, lower) for k, v in kwargs.items()}
    state.suspended = True
    try:
        return fn(*args, **kwargs)
    finally:
        state.suspended = False


def autocast_op(fn, name: str):
    """`fn` (the op `name`) applying the autocast policy of its inputs' device type."""
    if getattr(fn, "_autocast_name", None) is not None:
        return fn
    dtype_at = _dtype_position(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not ACTIVE[0]:
            return fn(*args, **kwargs)
        return _run(fn, name, dtype_at, args, kwargs)
    wrapper._autocast_name = name
    return wrapper


def install(namespace, names=None) -> None:
    """Wrap every op of the tables that `namespace` (a module) defines, in place."""
    for name in sorted(policy_names() if names is None else names):
        fn = getattr(namespace, name, None)
        if callable(fn) and not isinstance(fn, type):
            setattr(namespace, name, autocast_op(fn, name))
