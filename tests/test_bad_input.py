"""Bad input to losses and index-taking ops: kiln raises (or warns, or returns) as PyTorch does,
eagerly and under kiln.compile, with a message naming the user's op and the bad value.

Each case is a function of the library (torch or kiln) and some arrays; torch's behaviour is
computed in the test and kiln must match its kind: the same exception class (or a subclass)
with `words` in the message, the same warning category, or the same value.
`python tests/test_bad_input.py` prints the table: torch's behaviour and kiln's, side by side.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

import kiln

I64 = np.int64


def f32(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def probs(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 0.9, shape).astype(np.float32)


def ints(*values):
    return np.array(values, dtype=I64)


@dataclass
class Case:
    name: str
    fn: Callable                 # fn(lib, *tensors)
    args: list                   # numpy arrays (tensors) passed to fn
    words: tuple = ()            # what kiln's message must name (op, bad value), if torch raises
    good: list | None = None     # same shapes/dtypes, valid: for the compiled replay
    compiled: bool = field(default=False)
    # where PyTorch reads the bad index unchecked (a garbage value or a crash), kiln raises this
    stricter: type | None = None


def F(lib):
    return lib.nn.functional


CASES = [
    # ------------------------------------------------------------------ class-index losses
    Case("cross_entropy target too large", lambda m, x, t: F(m).cross_entropy(x, t),
         [f32(4, 5), ints(0, 1, 7, 2)], ("cross_entropy", "7"), [f32(4, 5), ints(0, 1, 4, 2)],
         True),
    Case("cross_entropy target negative", lambda m, x, t: F(m).cross_entropy(x, t),
         [f32(4, 5), ints(0, -1, 3, 2)], ("cross_entropy", "-1")),
    Case("cross_entropy ignore_index kept", lambda m, x, t: F(m).cross_entropy(x, t),
         [f32(4, 5), ints(0, -100, 3, 2)]),
    Case("cross_entropy custom ignore_index out of range",
         lambda m, x, t: F(m).cross_entropy(x, t, ignore_index=9),
         [f32(4, 5), ints(0, 9, 3, 2)]),
    Case("cross_entropy label_smoothing target too large",
         lambda m, x, t: F(m).cross_entropy(x, t, label_smoothing=0.1),
         [f32(4, 5), ints(0, 1, 5, 2)], ("cross_entropy", "5"), [f32(4, 5), ints(0, 1, 4, 2)],
         True),
    Case("cross_entropy label_smoothing + weight target too large",
         lambda m, x, t, w: F(m).cross_entropy(x, t, weight=w, label_smoothing=0.1),
         [f32(4, 5), ints(0, 1, 5, 2), probs(5)], ("cross_entropy", "5")),
    Case("cross_entropy probability target of wrong shape",
         lambda m, x, t: F(m).cross_entropy(x, t), [f32(4, 5), probs(4, 3)],
         ("cross_entropy", "[4, 3]")),
    Case("cross_entropy target batch mismatch", lambda m, x, t: F(m).cross_entropy(x, t),
         [f32(4, 5), ints(0, 1, 2)], ("cross_entropy", "batch_size")),
    Case("cross_entropy weight of wrong length",
         lambda m, x, t, w: F(m).cross_entropy(x, t, weight=w),
         [f32(4, 5), ints(0, 1, 2, 3), probs(3)], ("cross_entropy", "weight")),
    Case("nll_loss 1-d input target too large", lambda m, x, t: F(m).nll_loss(x, t),
         [f32(5), np.array(6, dtype=I64)], ("nll_loss", "6")),
    Case("nll_loss 2-d target too large", lambda m, x, t: F(m).nll_loss(x, t),
         [f32(3, 4), ints(0, 4, 1)], ("nll_loss", "4"), [f32(3, 4), ints(0, 3, 1)], True),
    Case("nll_loss 4-d target too large", lambda m, x, t: F(m).nll_loss(x, t),
         [f32(2, 3, 2, 2), np.array([[[0, 1], [2, 3]], [[0, 0], [1, 1]]], dtype=I64)],
         ("nll_loss", "3"), [f32(2, 3, 2, 2), np.zeros((2, 2, 2), I64)], True),
    Case("nll_loss 4-d target of wrong spatial shape", lambda m, x, t: F(m).nll_loss(x, t),
         [f32(2, 3, 2, 2), np.zeros((2, 2, 3), I64)], ("nll_loss", "[2, 2, 3]")),
    Case("nll_loss float target", lambda m, x, t: F(m).nll_loss(x, t),
         [f32(3, 4), np.zeros(3, np.float32)], ("nll_loss", "float32")),
    Case("multi_margin_loss target too large", lambda m, x, t: F(m).multi_margin_loss(x, t),
         [f32(3, 4), ints(0, 7, 1)], ("multi_margin_loss", "7"),
         [f32(3, 4), ints(0, 3, 1)], True),
    Case("multi_margin_loss target negative", lambda m, x, t: F(m).multi_margin_loss(x, t),
         [f32(3, 4), ints(0, -2, 1)], ("multi_margin_loss", "-2")),
    Case("multi_margin_loss target batch mismatch",
         lambda m, x, t: F(m).multi_margin_loss(x, t), [f32(3, 4), ints(0, 1)],
         ("multi_margin_loss", "[2]")),
    Case("multilabel_margin_loss target too large",
         lambda m, x, t: F(m).multilabel_margin_loss(x, t),
         [f32(2, 4), np.array([[0, 7, -1, 0], [1, -1, 0, 0]], I64)],
         ("multilabel_margin_loss", "7"),
         [f32(2, 4), np.array([[0, 3, -1, 0], [1, -1, 0, 0]], I64)], True),
    Case("multilabel_margin_loss target shape mismatch",
         lambda m, x, t: F(m).multilabel_margin_loss(x, t),
         [f32(2, 4), np.zeros((2, 3), I64)], ("multilabel_margin_loss", "[2, 3]")),
    # ------------------------------------------------------------------ ctc
    Case("ctc_loss input_length longer than the input",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl),
         [np.log(probs(5, 2, 4)), ints(1, 2, 1, 3), ints(5, 6), ints(2, 2)],
         ("ctc_loss", "6")),
    Case("ctc_loss negative input_length",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl),
         [np.log(probs(5, 2, 4)), ints(1, 2, 1, 3), ints(5, -1), ints(2, 2)],
         ("ctc_loss", "-1")),
    Case("ctc_loss target_length beyond the targets",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl),
         [np.log(probs(5, 2, 4)), ints(1, 2, 1, 3), ints(5, 5), ints(2, 3)],
         ("ctc_loss", "target")),
    Case("ctc_loss padded target_length beyond the targets",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl),
         [np.log(probs(5, 2, 4)), np.ones((2, 3), I64), ints(5, 5), ints(2, 4)],
         ("ctc_loss", "4")),
    Case("ctc_loss target longer than the input (inf loss)",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl, reduction="none"),
         [np.log(probs(3, 2, 4)), np.array([[1, 2, 3, 1], [1, 2, 0, 0]], I64), ints(3, 3),
          ints(4, 2)]),
    Case("ctc_loss target label out of range",
         lambda m, lp, t, il, tl: F(m).ctc_loss(lp, t, il, tl),
         [np.log(probs(5, 2, 4)), np.array([[1, 9], [1, 2]], I64), ints(5, 5), ints(2, 2)],
         ("ctc_loss", "9"), stricter=RuntimeError),
    # ------------------------------------------------------------------ pairwise losses
    Case("margin_ranking_loss mismatched shapes",
         lambda m, a, b, y: F(m).margin_ranking_loss(a, b, y),
         [f32(4), f32(3), np.ones(4, np.float32)], ("margin_ranking_loss", "[3]")),
    Case("cosine_embedding_loss mismatched shapes",
         lambda m, a, b, y: F(m).cosine_embedding_loss(a, b, y),
         [f32(4, 3), f32(4, 2), np.ones(4, np.float32)], ("cosine_embedding_loss", "[4, 2]")),
    Case("cosine_embedding_loss target of wrong length",
         lambda m, a, b, y: F(m).cosine_embedding_loss(a, b, y),
         [f32(4, 3), f32(4, 3), np.ones(3, np.float32)], ("cosine_embedding_loss", "[3]")),
    Case("hinge_embedding_loss broadcasting shapes",
         lambda m, x, y: F(m).hinge_embedding_loss(x, y), [f32(4, 3), np.ones(3, np.float32)]),
    Case("triplet_margin_loss mismatched shapes",
         lambda m, a, p, n: F(m).triplet_margin_loss(a, p, n),
         [f32(4, 3), f32(4, 3), f32(4, 2)], ("triplet_margin_loss", "[4, 2]")),
    Case("triplet_margin_loss wrong ndim",
         lambda m, a, p, n: F(m).triplet_margin_loss(a, p, n),
         [f32(4, 3), f32(4, 3), f32(4, 3, 1)], ("triplet_margin_loss", "3D")),
    Case("triplet_margin_with_distance_loss mismatched shapes",
         lambda m, a, p, n: F(m).triplet_margin_with_distance_loss(a, p, n),
         [f32(4, 3), f32(4, 3), f32(5, 3)], ("triplet_margin_with_distance_loss",)),
    # ------------------------------------------------------------------ probabilities
    Case("binary_cross_entropy input above 1",
         lambda m, x, y: F(m).binary_cross_entropy(x, y),
         [np.array([0.2, 1.5], np.float32), np.array([0.0, 1.0], np.float32)],
         ("binary_cross_entropy", "input")),
    Case("binary_cross_entropy input negative",
         lambda m, x, y: F(m).binary_cross_entropy(x, y),
         [np.array([-0.2, 0.5], np.float32), np.array([0.0, 1.0], np.float32)],
         ("binary_cross_entropy", "input")),
    Case("binary_cross_entropy target above 1",
         lambda m, x, y: F(m).binary_cross_entropy(x, y),
         [np.array([0.2, 0.5], np.float32), np.array([0.0, 2.0], np.float32)],
         ("binary_cross_entropy", "target")),
    Case("binary_cross_entropy target shape mismatch",
         lambda m, x, y: F(m).binary_cross_entropy(x, y), [probs(4, 1), probs(4)],
         ("binary_cross_entropy", "[4]")),
    Case("binary_cross_entropy_with_logits target shape mismatch",
         lambda m, x, y: F(m).binary_cross_entropy_with_logits(x, y), [f32(4, 1), probs(4)],
         ("binary_cross_entropy_with_logits", "[4]")),
    # ------------------------------------------------------------------ broadcasting losses
    Case("mse_loss broadcasting", lambda m, x, y: F(m).mse_loss(x, y), [f32(4, 1), f32(4)]),
    Case("l1_loss broadcasting", lambda m, x, y: F(m).l1_loss(x, y), [f32(4, 1), f32(4)]),
    Case("smooth_l1_loss broadcasting", lambda m, x, y: F(m).smooth_l1_loss(x, y),
         [f32(4, 1), f32(4)]),
    Case("huber_loss broadcasting", lambda m, x, y: F(m).huber_loss(x, y), [f32(4, 1), f32(4)]),
    Case("mse_loss shapes that do not broadcast", lambda m, x, y: F(m).mse_loss(x, y),
         [f32(4, 3), f32(4)], ("mse_loss", "[4, 3]")),
    Case("kl_div broadcasting", lambda m, x, y: F(m).kl_div(x, y, reduction="batchmean"),
         [f32(4, 1), probs(4)]),
    Case("kl_div shapes that do not broadcast",
         lambda m, x, y: F(m).kl_div(x, y, reduction="batchmean"), [f32(4, 3), probs(4)],
         ("kl_div", "[4, 3]")),
    Case("poisson_nll_loss broadcasting", lambda m, x, y: F(m).poisson_nll_loss(x, y),
         [f32(4, 1), probs(4)]),
    Case("poisson_nll_loss shapes that do not broadcast",
         lambda m, x, y: F(m).poisson_nll_loss(x, y), [f32(4, 3), probs(4)],
         ("poisson_nll_loss", "[4, 3]")),
    Case("gaussian_nll_loss var of wrong shape",
         lambda m, x, y, v: F(m).gaussian_nll_loss(x, y, v),
         [f32(4, 3), f32(4, 3), probs(4, 2)], ("gaussian_nll_loss", "var")),
    Case("gaussian_nll_loss negative var",
         lambda m, x, y, v: F(m).gaussian_nll_loss(x, y, v),
         [f32(4, 3), f32(4, 3), -probs(4, 3)], ("gaussian_nll_loss", "var"),
         [f32(4, 3), f32(4, 3), probs(4, 3)], True),
    Case("gaussian_nll_loss target of wrong shape",
         lambda m, x, y, v: F(m).gaussian_nll_loss(x, y, v),
         [f32(4, 3), f32(4, 2), probs(4, 3)], ("gaussian_nll_loss",)),
    # ------------------------------------------------------------------ lookups
    Case("embedding index too large", lambda m, i, w: F(m).embedding(i, w),
         [ints(0, 10, 2), f32(10, 3)], ("embedding", "10"), [ints(0, 9, 2), f32(10, 3)], True),
    Case("embedding index negative", lambda m, i, w: F(m).embedding(i, w),
         [ints(0, -1, 2), f32(10, 3)], ("embedding", "-1"), [ints(0, 1, 2), f32(10, 3)], True),
    Case("nn.Embedding index too large", lambda m, i: m.nn.Embedding(4, 2)(i),
         [ints(0, 4)], ("embedding", "4")),
    Case("one_hot num_classes too small", lambda m, t: F(m).one_hot(t, 3),
         [ints(0, 1, 3)], ("one_hot", "3")),
    Case("one_hot negative class", lambda m, t: F(m).one_hot(t),
         [ints(0, -1, 2)], ("one_hot", "-1")),
    Case("embedding_bag index too large",
         lambda m, i, o, w: F(m).embedding_bag(i, w, o),
         [ints(0, 1, 12, 3), ints(0, 2), f32(10, 3)], ("embedding_bag", "12")),
    Case("embedding_bag first offset not 0",
         lambda m, i, o, w: F(m).embedding_bag(i, w, o),
         [ints(0, 1, 2, 3), ints(1, 2), f32(10, 3)], ("embedding_bag", "offset")),
    Case("embedding_bag offset beyond the input",
         lambda m, i, o, w: F(m).embedding_bag(i, w, o),
         [ints(0, 1, 2, 3), ints(0, 6), f32(10, 3)], ("embedding_bag", "6")),
    Case("embedding_bag offsets decreasing",
         lambda m, i, o, w: F(m).embedding_bag(i, w, o),
         [ints(0, 1, 2, 3), ints(0, 3, 1), f32(10, 3)], ("embedding_bag", "offsets"),
         stricter=RuntimeError),
    # ------------------------------------------------------------------ indexing ops
    Case("gather index too large", lambda m, x, i: m.gather(x, 1, i),
         [f32(2, 3), np.array([[0, 3], [1, 2]], I64)], ("gather", "3"),
         [f32(2, 3), np.array([[0, 2], [1, 2]], I64)], True),
    Case("gather index negative", lambda m, x, i: m.gather(x, 1, i),
         [f32(2, 3), np.array([[0, -1], [1, 2]], I64)], ("gather", "-1")),
    Case("scatter index too large", lambda m, x, i, s: x.scatter(1, i, s),
         [f32(2, 3), np.array([[0, 5], [1, 2]], I64), f32(2, 2)], ("scatter", "5"),
         [f32(2, 3), np.array([[0, 2], [1, 2]], I64), f32(2, 2)], True),
    Case("scatter_add index too large", lambda m, x, i, s: m.scatter_add(x, 0, i, s),
         [f32(2, 3), np.array([[0, 2, 1]], I64), f32(1, 3)], ("scatter_add", "2"),
         [f32(2, 3), np.array([[0, 1, 1]], I64), f32(1, 3)], True),
    Case("scatter_reduce index negative",
         lambda m, x, i, s: x.scatter_reduce(0, i, s, "amax"),
         [f32(2, 3), np.array([[0, -3, 1]], I64), f32(1, 3)], ("scatter_reduce", "-3")),
    Case("index_select index too large", lambda m, x, i: m.index_select(x, 0, i),
         [f32(3, 2), ints(0, 3)], ("index_select", "3"), [f32(3, 2), ints(0, 2)], True),
    Case("index_select index negative", lambda m, x, i: m.index_select(x, 0, i),
         [f32(3, 2), ints(0, -1)], ("index_select", "-1")),
    Case("index_add index too large", lambda m, x, i, s: x.index_add(0, i, s),
         [f32(3, 2), ints(0, 4), f32(2, 2)], ("index_add", "4"),
         [f32(3, 2), ints(0, 2), f32(2, 2)], True),
    Case("index_copy index too large", lambda m, x, i, s: x.index_copy(0, i, s),
         [f32(3, 2), ints(0, 4), f32(2, 2)], ("index_copy", "4"),
         [f32(3, 2), ints(0, 2), f32(2, 2)], True),
    Case("index_fill index too large", lambda m, x, i: x.index_fill(0, i, 1.5),
         [f32(3, 2), ints(0, 4)], ("index_fill", "4"), [f32(3, 2), ints(0, 2)], True),
    Case("index_fill index negative in range (wraps)", lambda m, x, i: x.index_fill(0, i, 1.5),
         [f32(3, 2), ints(0, -1)]),
    Case("take index too large", lambda m, x, i: m.take(x, i),
         [f32(2, 3), ints(0, 6)], ("take", "6"), [f32(2, 3), ints(0, 5)], True),
    Case("take index negative in range (wraps)", lambda m, x, i: m.take(x, i),
         [f32(2, 3), ints(0, -6)]),
    Case("take_along_dim along a dim wraps (PyTorch 2.13)",
         lambda m, x, i: m.take_along_dim(x, i, 1), [f32(2, 3), np.array([[0], [3]], I64)]),
    Case("take_along_dim flattened index too large", lambda m, x, i: m.take_along_dim(x, i),
         [f32(2, 3), ints(0, 6)], ("take_along_dim", "6"), [f32(2, 3), ints(0, 5)], True),
    Case("put_ index too large", lambda m, x, i, s: x.clone().put_(i, s),
         [f32(2, 3), ints(1, 7), f32(2)], ("put", "7"), [f32(2, 3), ints(1, 5), f32(2)], True),
    Case("put index too large", lambda m, x, i, s: x.put(i, s),
         [f32(2, 3), ints(1, -7), f32(2)], ("put", "-7")),
    Case("tensor[index] index too large", lambda m, x, i: x[i],
         [f32(3, 2), ints(0, 3)], ("3",), [f32(3, 2), ints(0, 2)], True),
    Case("tensor[index] = v index too large", lambda m, x, i: x.clone().index_put_((i,),
                                                                               m.tensor(1.0)),
         [f32(3, 2), ints(0, 3)], ("index_put", "3"), [f32(3, 2), ints(0, 2)], True),
    Case("bincount negative", lambda m, x: m.bincount(x), [ints(0, 2, -1)],
         ("bincount", "-1")),
    Case("bincount 2-d", lambda m, x: m.bincount(x), [np.zeros((2, 2), I64)],
         ("bincount", "1-d")),
    Case("bincount weights of wrong length", lambda m, x, w: m.bincount(x, w),
         [ints(0, 2, 1), probs(2)], ("bincount", "weights")),
    # ------------------------------------------------------------------ spatial
    Case("max_unpool2d index too large",
         lambda m, x, i: F(m).max_unpool2d(x, i, 2),
         [f32(1, 1, 2, 2), np.array([[[[0, 3], [8, 16]]]], I64)], ("max_unpool2d", "16"),
         [f32(1, 1, 2, 2), np.array([[[[0, 3], [8, 15]]]], I64)], True),
    Case("max_unpool1d index negative",
         lambda m, x, i: F(m).max_unpool1d(x, i, 2),
         [f32(1, 1, 2), np.array([[[0, -1]]], I64)], ("max_unpool1d", "-1")),
    Case("interpolate size of wrong length",
         lambda m, x: F(m).interpolate(x, size=(4, 4, 4)), [f32(1, 1, 2, 2)],
         ("interpolate", "size")),
    Case("interpolate size 0", lambda m, x: F(m).interpolate(x, size=(0, 4)),
         [f32(1, 1, 2, 2)], ("interpolate", "0")),
    Case("interpolate negative scale_factor",
         lambda m, x: F(m).interpolate(x, scale_factor=-2.0), [f32(1, 1, 2, 2)],
         ("interpolate", "-2")),
    Case("interpolate both size and scale_factor",
         lambda m, x: F(m).interpolate(x, size=4, scale_factor=2.0), [f32(1, 1, 2, 2)],
         ("interpolate",)),
    Case("interpolate neither size nor scale_factor",
         lambda m, x: F(m).interpolate(x), [f32(1, 1, 2, 2)], ("interpolate",)),
    Case("interpolate bilinear on a 3-d input",
         lambda m, x: F(m).interpolate(x, size=4, mode="bilinear"), [f32(1, 1, 2)],
         ("bilinear",)),
    Case("pad too many pads", lambda m, x: F(m).pad(x, (1, 1, 1, 1, 1, 1)), [f32(2, 2)],
         ("pad", "6")),
    Case("pad odd length", lambda m, x: F(m).pad(x, (1, 1, 1)), [f32(2, 2)], ("pad", "3")),
    Case("pad reflect too wide", lambda m, x: F(m).pad(x, (3, 3), mode="reflect"),
         [f32(1, 1, 3)], ("pad", "3")),
    Case("pad negative beyond the size", lambda m, x: F(m).pad(x, (-2, -2)), [f32(2, 3)],
         ("pad",)),
    Case("unfold kernel larger than the input",
         lambda m, x: F(m).unfold(x, kernel_size=4), [f32(1, 1, 3, 3)], ("unfold",)),
    Case("unfold 2-d input", lambda m, x: F(m).unfold(x, kernel_size=2), [f32(3, 3)],
         ("unfold",)),
    Case("fold blocks inconsistent with output_size",
         lambda m, x: F(m).fold(x, output_size=(4, 4), kernel_size=2), [f32(1, 4, 5)],
         ("fold", "5")),
    Case("fold channels not divisible by the kernel",
         lambda m, x: F(m).fold(x, output_size=(3, 3), kernel_size=2), [f32(1, 5, 4)],
         ("fold", "5")),
    Case("Tensor.unfold size larger than the dim", lambda m, x: x.unfold(0, 4, 1), [f32(3)],
         ("unfold", "4")),
]

IDS = [c.name for c in CASES]


# ------------------------------------------------------------------------------ running

@dataclass
class Outcome:
    kind: str                    # "raise", "value"
    exc: type | None = None
    message: str = ""
    value: object = None
    warns: tuple = ()            # warning categories
    warned_at: tuple = ()        # the files the warnings point at

    def describe(self) -> str:
        w = f" +warn {','.join(c.__name__ for c in self.warns)}" if self.warns else ""
        if self.kind == "raise":
            return f"{self.exc.__name__}: {self.message.splitlines()[0][:150]}{w}"
        return f"value{w}"


def _to(lib, a):
    return lib.tensor(a) if isinstance(a, np.ndarray) else a


def run(lib, fn, arrays) -> Outcome:
    args = [_to(lib, a) for a in arrays]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(lib, *args)
        except Exception as e:          # noqa: BLE001 - we report what either library raises
            return Outcome("raise", type(e), str(e), warns=_categories(caught))
    return Outcome("value", value=_numpy(value), warns=_categories(caught),
                   warned_at=tuple({w.filename for w in caught}))


def _categories(caught) -> tuple:
    # deprecations of the legacy reduction flags etc. are not what is audited
    return tuple(sorted({w.category for w in caught
                         if not issubclass(w.category, DeprecationWarning)},
                        key=lambda c: c.__name__))


def _numpy(value):
    if isinstance(value, tuple):
        return tuple(_numpy(v) for v in value)
    return value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)


def run_torch(case: Case, arrays: list) -> Outcome:
    """torch's outcome; where it reads the bad index unchecked, not run (it may crash)."""
    if case.stricter is not None and arrays is case.args:
        return Outcome("raise", case.stricter, "(not run: PyTorch does not check)")
    return run(torch, case.fn, arrays)


def assert_like_torch(case: Case, expected: Outcome, got: Outcome) -> None:
    if expected.kind == "raise":
        assert got.kind == "raise", f"torch raised {expected.describe()}, kiln returned a value"
        assert issubclass(got.exc, expected.exc), \
            f"torch raised {expected.exc.__name__}, kiln {got.describe()}"
        for word in case.words:
            assert re.search(re.escape(word), got.message), \
                f"kiln's message does not name {word!r}: {got.message}"
        return
    assert got.kind == "value", f"torch returned a value, kiln raised {got.describe()}"
    for category in expected.warns:
        assert any(issubclass(c, category) for c in got.warns), \
            f"torch warned {category.__name__}, kiln warned {got.warns}"
    if expected.warns:      # at the user's line: here, where the case's lambda is
        assert got.warned_at == (__file__,), f"kiln's warning points at {got.warned_at}"
    np.testing.assert_allclose(got.value, expected.value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eager_like_torch(case):
    expected = run_torch(case, case.args)
    assert_like_torch(case, expected, run(kiln, case.fn, case.args))


COMPILED = [c for c in CASES if c.compiled]


def run_compiled(case: Case) -> list:
    """Outcomes of a compiled function called bad, good, bad (a replay), good."""
    compiled = kiln.compile(lambda *args: case.fn(kiln, *args))
    return [run(kiln, lambda m, *args: compiled(*args), arrays)
            for arrays in (case.args, case.good, case.args, case.good)]


@pytest.mark.parametrize("case", COMPILED, ids=[c.name for c in COMPILED])
def test_compiled_like_torch(case):
    """The first call and a replay raise as torch does, and a failed call corrupts nothing:
    the good calls around it give torch's value."""
    bad, good = run_torch(case, case.args), run_torch(case, case.good)
    assert bad.kind == "raise" and good.kind == "value"
    first, after_first, replay, after_replay = run_compiled(case)
    assert_like_torch(case, bad, first)
    assert_like_torch(case, good, after_first)
    assert_like_torch(case, bad, replay)
    assert_like_torch(case, good, after_replay)


def main() -> None:
    """The audit table: torch's behaviour, then kiln's (eager, and compiled where listed)."""
    mismatches = 0
    for case in CASES:
        expected, got = run_torch(case, case.args), run(kiln, case.fn, case.args)
        try:
            assert_like_torch(case, expected, got)
            verdict = "ok"
        except AssertionError as e:
            verdict, mismatches = f"MISMATCH ({str(e).splitlines()[0][:120]})", mismatches + 1
        print(f"## {case.name}\n  torch: {expected.describe()}\n  kiln:  {got.describe()}\n"
              f"  {verdict}")
        if case.compiled:
            outcomes = run_compiled(case)
            print("  compiled (bad, good, bad, good): " +
                  " | ".join(o.describe()[:70] for o in outcomes))
    print(f"{mismatches} of {len(CASES)} cases differ from torch")


if __name__ == "__main__":
    sys.path.insert(0, ".")
    main()
