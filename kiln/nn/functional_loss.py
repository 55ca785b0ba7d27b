"""Losses of `kiln.nn.functional` beyond the core set: margin and ranking losses, Gaussian NLL,
multi-label losses, triplet losses, CTC, and the distances they use.

Each follows PyTorch's formula and reduction, in kiln tensor ops; integer targets build masks
with tensor ops too (never read into Python), so the losses trace whole under kiln.compile.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

import kiln
from kiln import Tensor
from kiln.ops import check_indices, check_values, op_error

__all__ = ["gaussian_nll_loss", "margin_ranking_loss", "hinge_embedding_loss",
           "multilabel_margin_loss", "multilabel_soft_margin_loss", "soft_margin_loss",
           "multi_margin_loss", "cosine_embedding_loss", "pairwise_distance", "pdist",
           "triplet_margin_loss", "triplet_margin_with_distance_loss", "ctc_loss",
           "linear_cross_entropy"]
# the public hook that names a composite's traced nodes (`# ctc_loss @ model.py:12` in listings)
_composite = kiln.compiler.composite


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _legacy(size_average, reduce, reduction: str) -> str:
    if size_average is None and reduce is None:
        return reduction
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


@_composite
def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor | float, full: bool = False,
                      eps: float = 1e-6, reduction: str = "mean") -> Tensor:
    """0.5 * (log(var) + (input - target)^2 / var), var clamped below at eps (the clamp is
    invisible to autograd, as in PyTorch)."""
    if not isinstance(var, Tensor):
        var = kiln.full_like(input, float(var))
    if var.shape != input.shape:
        if tuple(input.shape[:-1]) == tuple(var.shape):
            var = var.unsqueeze(-1)
        elif not (tuple(input.shape[:-1]) == tuple(var.shape[:-1]) and var.shape[-1] == 1):
            raise op_error("gaussian_nll_loss", f"var is of incorrect size: "
                           f"{list(var.shape)} for input of size {list(input.shape)}",
                           ValueError)
    # (NaN passes, as PyTorch's `torch.any(var < 0)` lets it; traced, a graph check)
    var = check_values(var, ~(var < 0), "gaussian_nll_loss", "var has negative entry/entries")
    var = var + (var.clamp_min(eps) - var).detach()
    loss = 0.5 * (kiln.log(var) + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)


@_composite
def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                        size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    """max(0, -target * (input1 - input2) + margin)."""
    loss = (-target * (input1 - input2) + margin).clamp_min(0)
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0, size_average=None,
                         reduce=None, reduction: str = "mean") -> Tensor:
    """input where target == 1, max(0, margin - input) where target == -1."""
    zeros = kiln.zeros_like(input)
    margin_part = kiln.where(target != 1, (margin - input).clamp_min(0), zeros)
    self_part = kiln.where(target != -1, input, zeros)
    return _reduce(margin_part + self_part, _legacy(size_average, reduce, reduction))


@_composite
def multilabel_margin_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                           reduction: str = "mean") -> Tensor:
    """Per sample, sum over target entries j and non-target classes i of
    max(0, 1 - (x_j - x_i)), divided by the number of classes; a target row lists classes up
    to its first -1, and a class listed twice counts twice (as in PyTorch)."""
    if tuple(target.shape) != tuple(input.shape):
        raise op_error("multilabel_margin_loss", f"inconsistent target size: "
                       f"{list(target.shape)} for input of size: {list(input.shape)}")
    x = input.reshape(1, -1) if input.ndim < 2 else input
    classes = x.shape[1]
    # every entry a class or -1 (the end of the row's list)
    labels = check_indices(target.reshape(x.shape), classes, "multilabel_margin_loss",
                           "target out of range: target", ignore=-1)
    listed = kiln.cumsum(labels < 0, 1) == 0                  # the entries before the first -1
    named = (labels.unsqueeze(2) == kiln.arange(classes, device=x.device)) & listed.unsqueeze(2)
    times = named.sum(1).to(x.dtype)                          # how often each class is listed
    pair = times.unsqueeze(2) * (times == 0).unsqueeze(1)
    hinge = (1 - (x.unsqueeze(2) - x.unsqueeze(1))).clamp_min(0)
    loss = kiln.where(pair > 0, hinge * pair, 0.0).sum((1, 2)) / classes
    if input.ndim < 2:
        loss = loss.squeeze(0)
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                size_average=None, reduce=None,
                                reduction: str = "mean") -> Tensor:
    """Binary cross entropy with logits per class, averaged over the classes."""
    logsig = _logsigmoid
    loss = -(target * logsig(input) + (1 - target) * logsig(-input))
    if weight is not None:
        loss = loss * weight
    loss = loss.sum(-1) / input.shape[-1]
    return _reduce(loss, _legacy(size_average, reduce, reduction))


def _logsigmoid(x: Tensor) -> Tensor:
    from kiln.nn.functional import logsigmoid
    return logsigmoid(x)


@_composite
def soft_margin_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                     reduction: str = "mean") -> Tensor:
    """log(1 + exp(-target * input)), spelled as PyTorch computes it: exp overflows to inf
    (past 88 in float32, past 11 in float16), and so does the loss, as in PyTorch."""
    loss = kiln.log1p(kiln.exp(-input * target))
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0,
                      weight: Tensor | None = None, size_average=None, reduce=None,
                      reduction: str = "mean") -> Tensor:
    """Per sample, sum over classes i != y of max(0, margin - x_y + x_i)^p (times weight[y]),
    divided by the number of classes."""
    if p not in (1, 2):
        raise ValueError("only p == 1 and p == 2 supported")
    x = input.reshape(1, -1) if input.ndim < 2 else input
    if target.ndim > 1 or target.numel() != x.shape[0]:
        raise op_error("multi_margin_loss", f"target should be 1-D with one class index per "
                       f"input sample: expected size [{x.shape[0]}], got {list(target.shape)} "
                       f"(input shape {list(input.shape)})")
    # checked here, so that a bad class is reported as the target's, not as the gather's
    y = check_indices(target.reshape(-1), x.shape[1], "multi_margin_loss",
                      "target out of range: target")
    picked = kiln.gather(x, 1, y.unsqueeze(1))
    hinge = (margin - picked + x).clamp_min(0)
    if p == 2:
        hinge = hinge * hinge
    if weight is not None:
        hinge = hinge * kiln.index_select(weight, 0, y).unsqueeze(1)
    others = kiln.arange(x.shape[1], device=x.device) != y.unsqueeze(1)
    loss = kiln.where(others, hinge, kiln.zeros_like(hinge)).sum(1) / x.shape[1]
    if input.ndim < 2:
        loss = loss.squeeze(0)
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                          size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    """1 - cos(x1, x2) where target == 1, max(0, cos(x1, x2) - margin) where target == -1."""
    eps = 1e-12
    dot = (input1 * input2).sum(-1)
    mag1 = (input1 * input1).sum(-1) + eps
    mag2 = (input2 * input2).sum(-1) + eps
    cos = dot / (mag1 * mag2).sqrt()
    zeros = kiln.zeros_like(cos)
    loss = kiln.where(target == 1, 1 - cos, zeros) + \
        kiln.where(target == -1, (cos - margin).clamp_min(0), zeros)
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """||x1 - x2 + eps||_p over the last dim."""
    diff = x1 - x2 + eps
    if p == math.inf:
        return diff.abs().amax(-1, keepdim=keepdim)
    if p == 0:
        return (diff != 0).to(diff.dtype).sum(-1, keepdim=keepdim)
    return (diff.abs() ** p).sum(-1, keepdim=keepdim) ** (1.0 / p)


@_composite
def pdist(input: Tensor, p: float = 2) -> Tensor:
    """The p-norm distances between the rows of an (N, M) input, upper triangle, row-major.

    As PyTorch's, p = 0 counts the differing entries, and the gradient is 0 where a distance
    (or, for p < 1, a difference) is 0 rather than the NaN of differentiating the power."""
    if input.ndim != 2:
        raise RuntimeError(f"pdist only supports 2D tensors, got: {input.ndim}D")
    if p < 0:
        raise RuntimeError("pdist only supports non-negative p values")
    rows, cols = np.triu_indices(input.shape[0], 1)
    a = kiln.index_select(input, 0, kiln.tensor(rows, dtype=kiln.int64, device=input.device))
    b = kiln.index_select(input, 0, kiln.tensor(cols, dtype=kiln.int64, device=input.device))
    diff = (a - b).abs()
    if p == math.inf:
        return diff.amax(-1) if diff.shape[-1] else diff.sum(-1)
    if p == 0:
        return diff.sign().sum(-1)
    if p == 1:
        return diff.sum(-1)
    powers = _power_or_zero(diff, p).sum(-1)
    return _power_or_zero(powers, 1.0 / p)


def _power_or_zero(x: Tensor, p: float) -> Tensor:
    """x ** p for x >= 0, with value and gradient 0 where x is 0."""
    zero = x == 0
    return kiln.where(zero, 0.0, kiln.where(zero, 1.0, x) ** p)


@_composite
def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                        margin: float = 1.0, p: float = 2, eps: float = 1e-6,
                        swap: bool = False, size_average=None, reduce=None,
                        reduction: str = "mean") -> Tensor:
    """max(0, margin + d(anchor, positive) - d(anchor, negative)), d the p-norm distance."""
    if not anchor.ndim == positive.ndim == negative.ndim:
        raise op_error("triplet_margin_loss", f"The anchor, positive, and negative tensors are "
                       f"expected to have the same number of dimensions, but got: anchor "
                       f"{anchor.ndim}D, positive {positive.ndim}D, and negative "
                       f"{negative.ndim}D inputs")
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = kiln.minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    loss = (margin + d_pos - d_neg).clamp_min(0)
    return _reduce(loss, _legacy(size_average, reduce, reduction))


@_composite
def triplet_margin_with_distance_loss(anchor: Tensor, positive: Tensor, negative: Tensor, *,
                                      distance_function: Callable | None = None,
                                      margin: float = 1.0, swap: bool = False,
                                      reduction: str = "mean") -> Tensor:
    if margin <= 0:
        raise ValueError(f"TripletMarginWithDistanceLoss: expected margin to be greater than "
                         f"0, got {margin} instead")
    dist = distance_function if distance_function is not None else pairwise_distance
    d_pos = dist(anchor, positive)
    d_neg = dist(anchor, negative)
    if swap:
        d_neg = kiln.minimum(d_neg, dist(positive, negative))
    loss = (margin + d_pos - d_neg).clamp_min(0)
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------- CTC

def _lengths(lengths, device) -> Tensor:
    """CTC's lengths (a tensor or a sequence of ints) as an int64 vector."""
    if isinstance(lengths, Tensor):
        return lengths.to(device=device, dtype=kiln.int64).reshape(-1)
    return kiln.tensor(np.asarray(lengths, dtype=np.int64).reshape(-1), device=device)


def _ctc_labels(targets: Tensor, lengths: Tensor, batch: int, padded: bool) -> Tensor:
    """The targets as a (batch, longest) matrix, each row's labels first (the rest unused).

    Padded (N, S) targets are that already. Concatenated 1-D ones are gathered from each
    sample's offset; the row width is their total length, except eagerly, where the longest
    target is read (a trace cannot read it: a wider row gives the same loss)."""
    if padded:
        return targets.to(kiln.int64)
    flat = targets.reshape(-1).to(kiln.int64)
    if batch == 1 or flat.numel() == 0:
        return flat.reshape(1, -1).expand(batch, flat.numel())
    longest = flat.numel()
    if not kiln.compiler.is_compiling():
        longest = min(longest, int(lengths.max()))
    offsets = kiln.cumsum(lengths, 0) - lengths
    where = offsets.unsqueeze(1) + kiln.arange(longest, device=flat.device)
    where = kiln.where(kiln.arange(longest, device=flat.device) < lengths.unsqueeze(1), where, 0)
    return kiln.gather(flat, 0, where.reshape(-1)).reshape(batch, longest)


def _check_ctc_lengths(in_lengths: Tensor, tgt_lengths: Tensor, targets: Tensor, steps: int,
                       batch: int, padded: bool) -> tuple:
    """CTC's lengths checked as PyTorch checks them, so that a bad one is reported by name
    rather than as an index inside the recursion: one per sample, input lengths at most the
    input's steps, target lengths within the targets (summing to their count when they are
    concatenated)."""
    for name, lengths in (("input_lengths", in_lengths), ("target_lengths", tgt_lengths)):
        if lengths.numel() != batch:
            raise op_error("ctc_loss", f"{name} must have one length per sample: expected "
                           f"{batch}, got {lengths.numel()}")
    in_lengths = check_indices(in_lengths, steps + 1, "ctc_loss", "input_lengths")
    labels = targets.shape[1] if padded else targets.numel()
    tgt_lengths = check_indices(tgt_lengths, labels + 1, "ctc_loss", "target_lengths")
    if not padded and batch > 1:
        # traced, a check node (the compiled program keeps it though nothing reads it)
        total = tgt_lengths.sum()
        check_values(total, total == labels, "ctc_loss", "target_lengths sum to {}, but the "
                     f"concatenated targets hold {labels} labels (shape "
                     f"{list(targets.shape)})", RuntimeError)
    return in_lengths, tgt_lengths


_NEG = -1e30     # log(0) stand-in: -inf would make logsumexp of all-impossible paths NaN


@_composite
def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths, target_lengths,
             blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """Connectionist temporal classification: -log of the summed probability of every
    alignment of each target, by the forward (alpha) recursion over the blank-extended target.

    log_probs: (T, N, C) or (T, C) log-probabilities; targets: (N, S) padded or 1-D
    concatenated; the lengths as tensors or sequences of ints.
    """
    unbatched = log_probs.ndim == 2
    lp = log_probs.unsqueeze(1) if unbatched else log_probs
    steps, batch, _ = lp.shape
    device = lp.device
    in_lengths, tgt_lengths = (_lengths(v, device) for v in (input_lengths, target_lengths))
    padded = not unbatched and targets.ndim > 1
    in_lengths, tgt_lengths = _check_ctc_lengths(in_lengths, tgt_lengths, targets, steps, batch,
                                                 padded)
    labels = _ctc_labels(targets, tgt_lengths, batch, padded)
    longest = labels.shape[1]
    labels = kiln.where(kiln.arange(longest, device=device) < tgt_lengths.unsqueeze(1), labels,
                        blank)
    # PyTorch reads a label past the classes unchecked; kiln refuses it
    labels = check_indices(labels, lp.shape[2], "ctc_loss", "target label")
    # the blank-extended targets: blank, y1, blank, y2, ..., blank
    blanks = kiln.full((batch, longest), blank, dtype=kiln.int64, device=device)
    ext = kiln.cat([kiln.stack([blanks, labels], 2).reshape(batch, 2 * longest),
                    blanks[:, :1] if longest else kiln.full((batch, 1), blank, dtype=kiln.int64,
                                                            device=device)], 1)
    width = 2 * longest + 1
    # a path may skip a blank between two different labels
    skip_t = kiln.cat([kiln.zeros((batch, min(2, width)), dtype=kiln.bool, device=device),
                       ext[:, 2:] != ext[:, :-2]], 1)
    neg = kiln.full((batch, width), _NEG, dtype=lp.dtype, device=device)
    position = kiln.arange(width, device=device)
    start = (position == 0) | ((position == 1) & (tgt_lengths > 0).unsqueeze(1))
    emit = kiln.gather(lp[0], 1, ext)
    alpha = kiln.where(start, emit, neg)
    pad1 = kiln.full((batch, 1), _NEG, dtype=lp.dtype, device=device)
    pad2 = kiln.full((batch, 2), _NEG, dtype=lp.dtype, device=device)
    for t in range(1, steps):
        prev1 = kiln.cat([pad1, alpha[:, :-1]], 1)
        prev2 = kiln.where(skip_t, kiln.cat([pad2, alpha[:, :-2]], 1), neg)
        new = kiln.logsumexp(kiln.stack([alpha, prev1, prev2]), 0) + kiln.gather(lp[t], 1, ext)
        alpha = kiln.where((in_lengths > t).unsqueeze(1), new, alpha)
    last = 2 * tgt_lengths
    end1 = kiln.gather(alpha, 1, last.unsqueeze(1)).squeeze(1)
    end2 = kiln.gather(alpha, 1, (last - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    end2 = kiln.where(last > 0, end2, kiln.full_like(end2, _NEG))
    loss = -kiln.logsumexp(kiln.stack([end1, end2]), 0)
    impossible = loss > -_NEG / 2
    # PyTorch's gradient for log_probs is exp(log_probs) - posterior, the gradient for the
    # logits under a log_softmax (the same through one): add exp(lp) over each sample's steps,
    # as a term of value 0
    running = (kiln.arange(steps, device=device).unsqueeze(1) < in_lengths).to(lp.dtype)
    mass = (kiln.exp(lp).sum(-1) * running).sum(0)
    loss = loss + (mass - mass.detach())
    if zero_infinity:
        loss = kiln.where(impossible, kiln.zeros_like(loss), loss)
    else:
        loss = kiln.where(impossible, kiln.full_like(loss, math.inf), loss)
    if reduction == "mean":
        return (loss / tgt_lengths.clamp_min(1).to(loss.dtype)).mean()
    if unbatched and reduction == "none":
        return loss.squeeze(0)
    return _reduce(loss, reduction)


@_composite
def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Tensor | None = None, weight: Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None,
                         label_smoothing: float = 0.0,
                         options=None) -> Tensor:
    """cross_entropy(input @ W^T + b, target), W of shape (C, d1, ..., dK, in_features)."""
    classes_shape = tuple(linear_weight.shape[:-1])
    flat = linear_weight.reshape(-1, linear_weight.shape[-1])
    from kiln.nn import functional as F
    logits = F.linear(input, flat)
    logits = logits.reshape(*input.shape[:-1], *classes_shape)
    if linear_bias is not None:
        logits = logits + linear_bias
    return F.cross_entropy(logits, target, weight=weight,
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)
