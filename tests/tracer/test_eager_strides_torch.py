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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tt = OPS[op](torch, a_t)
    kt = OPS[op](kiln, a_k)
    _check(kt, tt, f"{op} of {layout}")
