"""Traced fused-subgraph cases shared by the codegen and runtime tests: one table, many checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import kiln
import kiln.nn.functional as F
from kiln.compiler import trace


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable
    inputs: tuple                       # (shape, numpy dtype) per argument
    rtol: float = 1e-5
    atol: float = 1e-6
    options: dict = field(default_factory=dict)    # render_triton options

    def arrays(self, seed: int = 0) -> list:
        rng = np.random.default_rng(seed)
        out = []
        for shape, dtype in self.inputs:
            if np.dtype(dtype).kind == "f":
                out.append(rng.standard_normal(shape).astype(dtype))
            elif np.dtype(dtype).kind == "b":
                out.append(rng.random(shape) < 0.5)
            else:
                out.append(rng.integers(-20, 20, shape).astype(dtype))
        return out

    def graph(self):
        tensors = [kiln.tensor(a) for a in self.arrays()]
        return trace(self.fn, *tensors).graphs[0]


def _chain21(x):
    y = x * 1.5 + 0.25
    y = kiln.exp(-(y * y)) - 0.5
    y = kiln.tanh(y) * 2.0 + kiln.sigmoid(x)
    y = kiln.abs(y) + 1.0
    y = kiln.log(y) * kiln.sqrt(y)
    y = kiln.sin(y) + kiln.cos(x)
    y = kiln.maximum(y, x) - kiln.minimum(y, 0.1)
    return y / 3.0


F32, F64, F16, I32, I64 = np.float32, np.float64, np.float16, np.int32, np.int64

CASES = [
    Case("chain21", _chain21, (((5, 7), F32),)),
    Case("broadcast", lambda x, y, z: x + y * z, (((4, 1, 5), F32), ((3, 1), F32), ((5,), F32))),
    Case("permute_slice_flip", lambda x: (x.permute(2, 0, 1)[1:4, :, ::2].flip(0) * 2.0).exp(),
         (((3, 4, 6), F32),)),
    Case("expand_reshape", lambda x, y: (x.expand(3, 4, 5) + y).reshape(12, 5) - 1.0,
         (((4, 1), F32), ((3, 1, 5), F32))),
    Case("casts", lambda x: (x * 4.0).to(kiln.int32).to(kiln.float64) + x.to(kiln.float16)
         .to(kiln.float64), (((6, 5), F32),), rtol=1e-3, atol=1e-3),
    Case("where_compare", lambda x, y: kiln.where((x > y) & (x < 1.0), x - y, y * 2.0),
         (((4, 6), F32), ((6,), F32))),
    Case("bool_out", lambda x: (x >= 0.0) | (x < -1.0), (((5, 5), F32),)),
    Case("int_ops", lambda a, b: kiln.maximum(a * 3 + b, b - 2), (((5, 4), I32), ((4,), I32))),
    Case("int64_ops", lambda a: kiln.where(a > 0, a * a, -a), (((5, 4), I64),)),
    Case("gelu_exact", lambda x: F.gelu(x), (((4, 33), F32),)),
    Case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), (((4, 33), F32),)),
    # float64 erf is libdevice's (the scalar formula is float32-accurate)
    Case("gelu_exact_f64", lambda x: F.gelu(x), (((4, 33), F64),), rtol=1e-13, atol=1e-15),
    Case("gelu_tanh_f16", lambda x: F.gelu(x, approximate="tanh"), (((4, 33), F16),),
         rtol=2e-3, atol=2e-3),
    Case("f64_chain", lambda x: kiln.tanh(x * 0.7978845608028654) + kiln.exp(x) / 3.0,
         (((4, 9), F64),), rtol=1e-12, atol=1e-13),
    Case("sum_last", lambda x: x.sum(-1), (((6, 20), F32),)),
    Case("sum_middle", lambda x: x.sum(1, keepdim=True) * 2.0, (((3, 20, 4), F32),)),
    Case("sum_all", lambda x: x.sum(), (((5, 12), F32),)),
    Case("mean_two_axes", lambda x: x.mean((0, 2)), (((3, 4, 5), F32),)),
    Case("arange_broadcast", lambda x: x * kiln.arange(5).to(kiln.float32),
         (((4, 5), F32),)),
    Case("amax_first", lambda x: x.amax(dim=0), (((9, 5), F32),)),
    # reductions over leading dims: the C renderer walks them in memory order (columns)
    Case("softmax_first", lambda x: kiln.softmax(x, 0), (((7, 13), F32),)),
    Case("bias_grad_columns", lambda g, m, b: (kiln.where(m > 0, g, 0.0),
                                               kiln.where(m > 0, g, 0.0).sum(0) * 0.1 + b),
         (((6, 9), F32), ((6, 9), F32), ((9,), F32))),
    Case("norm_leading_two", lambda x: (x - x.mean((0, 1))) / (x.var((0, 1)) + 1e-5).sqrt(),
         (((3, 4, 5), F32),), atol=1e-5),
    Case("argmax_first", lambda x: x.argmax(0), (((6, 7), F32),)),
    # element outputs of another shape than the reduction's domain, stored in row-major order
    Case("log_softmax_flat", lambda x: F.log_softmax(x, 1).reshape(35), (((5, 7), F32),)),
    Case("sum_and_column", lambda x: ((x * 2.0).reshape(6, 1), x.sum()), (((6,), F32),)),
    Case("prod_last", lambda x: (x * 0.1 + 1.0).prod(-1), (((4, 7), F32),)),
    Case("argmax", lambda x: x.argmax(1), (((5, 11), F32),)),
    Case("sum_int", lambda x: x.sum(-1), (((4, 9), I64),)),
    Case("softmax", lambda x: kiln.softmax(x, -1), (((5, 37), F32),)),
    Case("softmax_f64", lambda x: kiln.softmax(x, -1), (((3, 19), F64),), rtol=1e-12,
         atol=1e-14),
    Case("log_softmax", lambda x: F.log_softmax(x, -1), (((5, 37), F32),)),
    Case("softmax_middle", lambda x: kiln.softmax(x, 1), (((2, 9, 3), F32),)),
    Case("layer_norm", lambda x, w, b: F.layer_norm(x, (24,), w, b),
         (((6, 24), F32), ((24,), F32), ((24,), F32)), atol=1e-5),
    Case("softmax_looped", lambda x: kiln.softmax(x, -1), (((3, 300), F32),),
         options={"persistent_limit": 64, "loop_rblock": 64}),
    Case("layer_norm_looped", lambda x, w, b: F.layer_norm(x, (200,), w, b),
         (((2, 200), F32), ((200,), F32), ((200,), F32)), atol=1e-5,
         options={"persistent_limit": 64, "loop_rblock": 64}),
    # every dim of size 1: an element output's offset folds to 0 (Triton needs a block)
    Case("pad_sum_of_slices", lambda a, b: F.pad(a, (0, 0, 2, 1)) + F.pad(b, (0, 0, 0, 3)) * 2.0,
         (((3, 4), F32), ((3, 4), F32))),
    Case("pad_both_dims_inf", lambda x: F.pad(x.exp(), (1, 2, 3, 0), value=-math.inf),
         (((2, 5, 3), F32),)),
    Case("pad_then_reduce", lambda x: F.pad(x, (2, 1)).amax(-1) + F.pad(x, (0, 3)).sum(-1),
         (((4, 6), F32),)),
    Case("pad_int", lambda x: F.pad(x, (1, 1), value=7) * 3, (((2, 3), I64),)),
    Case("size_one_dims", lambda x: ((x * 2.0).reshape(1, 1).tanh(), kiln.softmax(x, 0)),
         (((1,), F32),)),
    # batch norm's statistics per channel of NCHW (sums over N, H, W around the row)
    Case("norm_around_rows", lambda x: (x - x.mean((0, 2, 3), keepdim=True)) /
         (x.var((0, 2, 3), keepdim=True) + 1e-5).sqrt(), (((3, 4, 5, 6), F32),), atol=1e-5),
    # a max-pool's rows flattened, then dropout's mask and scale: a row output of another shape
    Case("pool_flatten_mask", lambda x, m: kiln.where(m, F.max_pool2d(x, 2).flatten(1) * 2.0,
                                                      0.0), (((2, 3, 4, 6), F32), ((2, 18), np.bool_))),
]

BY_NAME = {c.name: c for c in CASES}
