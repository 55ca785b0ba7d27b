"""kiln's eager results have PyTorch's strides: each op over inputs in each layout (row-major,
transposed, permuted, sliced, expanded, channels-last, with size-1 dims) gives the strides and
values torch 2.13 gives; compiled calls return eager's strides; a `.grad` has its parameter's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

RNG = np.random.default_rng(0)
BASE3 = RNG.random((3, 4, 5)).astype(np.float32)
BASE4 = RNG.random((2, 3, 4, 5)).astype(np.float32)

# name -> the input, made the same way from the same numbers in kiln (T = kiln) and in torch
LAYOUTS = {
    "contiguous": lambda T: T.tensor(BASE3),
    "transposed": lambda T: T.tensor(BASE3)[0].t(),
    "permuted 3-D": lambda T: T.tensor(BASE3).permute(2, 0, 1),
    "permuted 4-D": lambda T: T.tensor(BASE4).permute(0, 2, 3, 1),
    "sliced": lambda T: T.tensor(BASE3)[:, 1:3],
    "expanded": lambda T: T.tensor(BASE3)[0, :1].expand(4, 5),
    "channels_last": lambda T: T.tensor(BASE4).contiguous(memory_format=T.channels_last),
    "size-1 dims": lambda T: T.tensor(BASE3)[0].t().unsqueeze(1),
}


def _last(a):
    return a.shape[-1:]


def _spatial_pad(a):
    """A padding torch's reflect and replicate modes take for `a`'s rank."""
    return (1, 1) if a.dim() < 4 else (1, 1, 1, 1)


# name -> op(T, a): one torch op (or a short chain) on input `a` of any layout, ndim >= 2
OPS = {
    "sum": lambda T, a: a.sum(1),
    "sum keepdim": lambda T, a: a.sum(1, keepdim=True),
    "sum of two dims keepdim": lambda T, a: a.sum((0, a.dim() - 1), keepdim=True),
    "sum all": lambda T, a: a.sum(),
    "mean keepdim": lambda T, a: a.mean(0, keepdim=True),
    "amax keepdim": lambda T, a: a.amax(1, keepdim=True),
    "amin": lambda T, a: a.amin(-1),
    "max values": lambda T, a: a.max(1, keepdim=True)[0],
    "max indices": lambda T, a: a.max(1, keepdim=True)[1],
    "min indices": lambda T, a: a.min(0)[1],
    "argmax keepdim": lambda T, a: a.argmax(1, keepdim=True),
    "argmin": lambda T, a: a.argmin(-1),
    "var keepdim": lambda T, a: a.var(1, keepdim=True),
    "std": lambda T, a: a.std(0),
    "prod keepdim": lambda T, a: a.prod(1, keepdim=True),
    "any keepdim": lambda T, a: (a > 0.5).any(1, keepdim=True),
    "all": lambda T, a: (a > 0.1).all(0),
    "norm keepdim": lambda T, a: a.norm(dim=1, keepdim=True),
    "logsumexp keepdim": lambda T, a: a.logsumexp(1, keepdim=True),
    "cumsum": lambda T, a: a.cumsum(1),
    "cumsum dim 0": lambda T, a: a.cumsum(0),
    "cumprod": lambda T, a: a.cumprod(1),
    "cummax": lambda T, a: a.cummax(1)[0],
    "logcumsumexp": lambda T, a: a.logcumsumexp(1),
    "softmax": lambda T, a: a.softmax(1),
    "log_softmax": lambda T, a: a.log_softmax(0),
    "layer_norm": lambda T, a: T.nn.functional.layer_norm(a, _last(a)),
    "batch_norm": lambda T, a: T.nn.functional.batch_norm(a, None, None, training=True),
    "group_norm": lambda T, a: T.nn.functional.group_norm(a, 1),
    "instance_norm": lambda T, a: T.nn.functional.instance_norm(a),
    "rms_norm": lambda T, a: T.nn.functional.rms_norm(a, _last(a)),
    "max_pool2d": lambda T, a: T.nn.functional.max_pool2d(a, 2),
    "max_pool2d indices": lambda T, a: T.nn.functional.max_pool2d(a, 2, return_indices=True)[1],
    "max_pool2d overlapping": lambda T, a: T.nn.functional.max_pool2d(a, 2, 1),
    "avg_pool2d": lambda T, a: T.nn.functional.avg_pool2d(a, 2),
    "cat": lambda T, a: T.cat([a, a], 1),
    "cat dim 0": lambda T, a: T.cat([a, a]),
    "cat with contiguous": lambda T, a: T.cat([a, a.contiguous()], 0),
    "stack": lambda T, a: T.stack([a, a]),
    "stack dim 1": lambda T, a: T.stack([a, a], 1),
    "stack last": lambda T, a: T.stack([a, a], -1),
    "hstack": lambda T, a: T.hstack([a, a]),
    "vstack": lambda T, a: T.vstack([a, a]),
    "pad": lambda T, a: T.nn.functional.pad(a, (1, 1)),
    "roll": lambda T, a: a.roll(1, 0),
    "roll two dims": lambda T, a: a.roll((1, 2), (0, 1)),
    "roll flattened": lambda T, a: a.roll(3),
    "reflection pad": lambda T, a: T.nn.functional.pad(a, _spatial_pad(a), mode="reflect"),
    "replication pad": lambda T, a: T.nn.functional.pad(a, _spatial_pad(a), mode="replicate"),
    "fliplr": lambda T, a: a.fliplr(),
    "flip": lambda T, a: a.flip(0),
    "sort values": lambda T, a: a.sort(1)[0],
    "sort indices": lambda T, a: a.sort(1)[1],
    "argsort": lambda T, a: a.argsort(-1),
    "topk": lambda T, a: a.topk(1, 1)[0],
    "topk indices": lambda T, a: a.topk(1, 1)[1],
    "kthvalue keepdim": lambda T, a: a.kthvalue(1, 1, keepdim=True)[0],
    "kthvalue": lambda T, a: a.kthvalue(1, 0)[0],
    "median keepdim": lambda T, a: a.median(1, keepdim=True)[0],
    "nanmedian": lambda T, a: a.nanmedian(1)[0],
    "mode": lambda T, a: a.mode(1)[0],
    "cummin indices": lambda T, a: a.cummin(0)[1],
    "aminmax": lambda T, a: T.aminmax(a, dim=1)[1],
    "nansum": lambda T, a: a.nansum(1),
    "count_nonzero": lambda T, a: T.count_nonzero(a > 0.5, 1),
    "where": lambda T, a: T.where(a > 0.5, a, 0.0),
    "where contiguous first": lambda T, a: T.where(a.contiguous() > 0.5, a, a),
    "masked_fill": lambda T, a: a.masked_fill(a > 0.5, 0),
    "clamp": lambda T, a: a.clamp(0.2, 0.8),
    "tril": lambda T, a: a.tril(),
    "triu": lambda T, a: a.triu(1),
    "times 2": lambda T, a: a * 2,
    "plus its contiguous copy": lambda T, a: a + a.contiguous(),
    "contiguous copy plus it": lambda T, a: a.contiguous() + a,
    "plus a broadcast row": lambda T, a: a + a.contiguous()[(0,) * (a.dim() - 1)],
    "times a broadcast column": lambda T, a: a * a.sum(-1, keepdim=True),
    "exp": lambda T, a: a.exp(),
    "atan2 with its transpose-free copy": lambda T, a: T.atan2(a, a.contiguous() + 1),
    "lerp": lambda T, a: T.lerp(a, a.contiguous(), 0.3),
    "addcmul": lambda T, a: T.addcmul(a, a, a.contiguous(), value=0.5),
    "sigmoid": lambda T, a: T.sigmoid(a),
    "dropout off": lambda T, a: T.nn.functional.dropout(a, 0.0) * 1,
    "type promotion": lambda T, a: (a > 0.5).int() + a.double(),
    "gelu": lambda T, a: T.nn.functional.gelu(a),
    "relu": lambda T, a: T.relu(a),
    "comparison": lambda T, a: a > 0.5,
    "double": lambda T, a: a.double(),
    "clone": lambda T, a: a.clone(),
    "clone contiguous": lambda T, a: a.clone(memory_format=T.contiguous_format),
    "contiguous": lambda T, a: a.contiguous(),
    "zeros_like": lambda T, a: T.zeros_like(a),
    "ones_like": lambda T, a: T.ones_like(a),
    "full_like": lambda T, a: T.full_like(a, 2.0),
    "zeros_like contiguous": lambda T, a: T.zeros_like(a, memory_format=T.contiguous_format),
    "ones_like channels_last": lambda T, a: T.ones_like(a, memory_format=T.channels_last),
    "empty_like preserve": lambda T, a: T.empty_like(a, memory_format=T.preserve_format)
    .fill_(1.0),
    "randn_like": lambda T, a: T.randn_like(a) * 0,
    "clone channels_last": lambda T, a: a.clone(memory_format=T.channels_last),
    "to channels_last": lambda T, a: a.to(memory_format=T.channels_last),
    "empty_like": lambda T, a: T.empty_like(a).fill_(3.0),
    "rand_like": lambda T, a: T.rand_like(a) * 0,
    "repeat": lambda T, a: a.repeat(2, *([1] * (a.dim() - 1))),
}


def _check(kt, tt, what: str) -> None:
    assert tuple(kt.shape) == tuple(tt.shape), what
    assert kt.stride() == tt.stride(), f"{what}: kiln {kt.stride()} torch {tt.stride()}"
    np.testing.assert_allclose(kt.numpy().astype(np.float64), tt.numpy().astype(np.float64),
                               rtol=1e-6, atol=1e-6, err_msg=what)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("op", list(OPS))
def test_strides_follow_torch(op, layout):
    a_k, a_t = LAYOUTS[layout](kiln), LAYOUTS[layout](torch)
    assert a_k.stride() == a_t.stride()
    if op == "instance_norm" and a_t.dim() < 3:
        pytest.skip("instance_norm needs spatial dims")
    if "pool" in op and (a_t.dim() < 3 or min(a_t.shape[-2:]) < 2):
        pytest.skip("pooling needs an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tt = OPS[op](torch, a_t)
        except RuntimeError:                    # channels_last of a tensor not 4-D
            with pytest.raises(RuntimeError):
                OPS[op](kiln, a_k)
            return
    kt = OPS[op](kiln, a_k)
    _check(kt, tt, f"{op} of {layout}")


# the ops a compiled call replays (no graph break), over the layouts that differ from row-major
COMPILED_OPS = ["sum keepdim", "sum of two dims keepdim", "amax keepdim", "var keepdim",
                "logsumexp keepdim", "softmax", "log_softmax", "cumsum", "cat", "stack dim 1",
                "masked_fill", "where", "clamp", "times 2", "plus its contiguous copy",
                "contiguous copy plus it", "times a broadcast column", "layer_norm", "pad",
                "roll", "tril", "gelu"]
COMPILED_LAYOUTS = ["transposed", "permuted 3-D", "channels_last", "size-1 dims"]


@pytest.mark.parametrize("target", ["c", "numpy"])
@pytest.mark.parametrize("layout", COMPILED_LAYOUTS)
@pytest.mark.parametrize("op", COMPILED_OPS)
def test_compiled_results_have_eager_strides(op, layout, target):
    a = LAYOUTS[layout](kiln)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # torch's var of one element: NaN, warned
        expected = OPS[op](torch, LAYOUTS[layout](torch))
    eager = OPS[op](kiln, a)
    _check(eager, expected, f"eager {op} of {layout}")
    compiled = kiln.compile(lambda x: OPS[op](kiln, x), backend=target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # replayed, not run eagerly
        for call in range(3):                       # the trace, then two replays
            _check(compiled(a), expected, f"compiled {op} of {layout}, call {call}")


# parameter layouts: a float64 leaf whose strides are not row-major (float64, so that the
# gradients' roundings stay far below the tolerance)
PARAMETERS = {
    "transposed": lambda T: T.tensor(BASE3[0], dtype=T.float64).t().detach().requires_grad_(),
    "permuted 3-D": lambda T: T.tensor(BASE3, dtype=T.float64).permute(2, 0, 1).detach()
    .requires_grad_(),
    "channels_last": lambda T: T.tensor(BASE4, dtype=T.float64).contiguous(
        memory_format=T.channels_last).detach().requires_grad_(),
}
GRAD_OPS = ["sum keepdim", "amax keepdim", "var keepdim", "softmax", "log_softmax", "cumsum",
            "cumprod", "cat", "stack", "masked_fill", "where", "layer_norm", "pad", "roll",
            "flip", "sort values", "topk", "kthvalue keepdim", "times a broadcast column",
            "clone", "tril", "logsumexp keepdim"]


@pytest.mark.parametrize("layout", list(PARAMETERS))
@pytest.mark.parametrize("op", GRAD_OPS)
def test_grad_has_its_parameters_strides(op, layout):
    """AccumulateGrad's contract: a dense parameter's .grad has its strides, after a backward
    through ops whose results are laid out otherwise."""
    grads = []
    for T in (kiln, torch):
        w = PARAMETERS[layout](T)
        out = OPS[op](T, w)
        weights = T.tensor(np.linspace(0.5, 1.5, out.numel()).reshape(tuple(out.shape)),
                           dtype=out.dtype)
        (out * weights).sum().backward()
        grads.append(w.grad)
    _check(grads[0], grads[1], f"grad through {op} of {layout}")


def _random_operand(T, rng: np.random.Generator, shape: tuple, values: np.ndarray):
    """`values` (of `shape`) as a tensor in a random layout: its dims permuted in memory, and
    possibly every other element of one dim taken (a strided slice)."""
    order = rng.permutation(len(shape))
    step = 2 if rng.random() < 0.3 and len(shape) else 1
    sliced_dim = int(rng.integers(len(shape))) if len(shape) else 0
    stored = list(shape)
    if step == 2:
        stored[sliced_dim] *= 2
    memory = np.repeat(values, step, axis=sliced_dim) if step == 2 else values
    t = T.tensor(np.ascontiguousarray(memory.transpose(order)))
    t = t.permute(*np.argsort(order).tolist())
    if step == 2:
        index = [slice(None)] * len(shape)
        index[sliced_dim] = slice(None, None, 2)
        t = t[tuple(index)]
    return t


@pytest.mark.parametrize("seed", range(60))
def test_elementwise_strides_over_random_layouts(seed):
    """TensorIterator's rule over random layouts, size-1 dims and broadcasts: binary ops, a
    where and a comparison give torch's strides."""
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(n) for n in rng.choice([1, 2, 3, 4], size=ndim))
    other = tuple(n if rng.random() < 0.6 else 1 for n in shape)[int(rng.integers(ndim)):]
    a_values = rng.standard_normal(shape).astype(np.float32)
    b_values = rng.standard_normal(other).astype(np.float32)
    made = {}
    for T in (kiln, torch):
        layout_rng = np.random.default_rng(seed + 1000)    # the same layouts in both
        a = _random_operand(T, layout_rng, shape, a_values)
        b = _random_operand(T, layout_rng, other, b_values)
        made[T] = (a + b, b * a, a * 2, T.where(a > 0, a, b), b < a, a.exp())
    for k, t in zip(*made.values()):
        _check(k, t, f"seed {seed}, shapes {shape} and {other}")
