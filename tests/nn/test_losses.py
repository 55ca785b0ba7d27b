"""Every loss, with every reduction and option, against PyTorch (values and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from tests.parity import check_op

REDUCTIONS = ["none", "mean", "sum"]
RNG = np.random.default_rng(0)


def _probs(*shape):
    return RNG.uniform(0.02, 0.98, shape)


def _labels(shape, classes, ignore=None):
    labels = RNG.integers(0, classes, shape)
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return labels


def _softmax_targets(*shape, dim=1):
    x = np.exp(RNG.normal(size=shape))
    return x / x.sum(axis=dim, keepdims=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_losses(reduction):
    f = lambda name, **kw: (lambda lib, x, y: getattr(lib.nn.functional, name)(
        x, y, reduction=reduction, **kw))
    for fn in (f("mse_loss"), f("l1_loss"), f("smooth_l1_loss"), f("smooth_l1_loss", beta=0.5),
               f("smooth_l1_loss", beta=0.0), f("huber_loss"), f("huber_loss", delta=0.3)):
        check_op(fn, [(4, 5), (4, 5)], dtype=np.float64)
    check_op(f("mse_loss"), [(3, 4), (3, 4)], dtype=np.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy(reduction):
    bce = lambda lib, p, t, *w: lib.nn.functional.binary_cross_entropy(
        p, t, *[a.detach() for a in w], reduction=reduction)
    check_op(bce, [_probs(4, 3), _probs(4, 3)], dtype=np.float64)
    check_op(bce, [_probs(4, 3), _probs(4, 3), RNG.uniform(0, 2, (3,))], dtype=np.float64)
    hard = RNG.integers(0, 2, (6,)).astype(np.float64)
    check_op(bce, [_probs(6), hard], dtype=np.float64)


def test_binary_cross_entropy_clamps_log_at_minus_100():
    p = kiln.tensor([0.0, 1.0, 0.5], dtype=kiln.float64)
    t = kiln.tensor([1.0, 0.0, 1.0], dtype=kiln.float64)
    expected = torch.nn.functional.binary_cross_entropy(
        torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64),
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), reduction="none")
    got = kiln.nn.functional.binary_cross_entropy(p, t, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected.numpy())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits(reduction):
    fn = lambda lib, x, t, *extra, **kw: lib.nn.functional.binary_cross_entropy_with_logits(
        x, t, reduction=reduction, **kw)
    check_op(fn, [RNG.normal(0, 5, (4, 3)), _probs(4, 3)], dtype=np.float64)
    check_op(lambda lib, x, t, w: lib.nn.functional.binary_cross_entropy_with_logits(
        x, t, weight=w.detach(), reduction=reduction), [(4, 3), _probs(4, 3), (4, 1)],
        dtype=np.float64)
    check_op(lambda lib, x, t, pw: lib.nn.functional.binary_cross_entropy_with_logits(
        x, t, pos_weight=pw.detach(), reduction=reduction),
        [(4, 3), _probs(4, 3), RNG.uniform(0.5, 3, (3,))], dtype=np.float64)
    check_op(lambda lib, x, t, w, pw: lib.nn.functional.binary_cross_entropy_with_logits(
        x, t, weight=w.detach(), pos_weight=pw.detach(), reduction=reduction),
        [(4, 3), _probs(4, 3), RNG.uniform(0, 2, (3,)), RNG.uniform(0.5, 3, (3,))],
        dtype=np.float64)
    # large logits stay finite
    check_op(fn, [np.array([-200.0, -30.0, 30.0, 200.0]), np.array([1.0, 0.0, 1.0, 0.0])],
             dtype=np.float64)


CE_OPTIONS = [{}, {"label_smoothing": 0.2}, {"ignore_index": 1}, {"ignore_index": -100}]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS, ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_cross_entropy_class_indices(reduction, options, weighted):
    ignore = options.get("ignore_index")
    weight = [RNG.uniform(0.2, 2, (5,))] if weighted else []

    def fn(lib, x, y, *w):
        w = [a.detach() for a in w]     # class weights are constants, not differentiated
        return lib.nn.functional.cross_entropy(x, y, *w, reduction=reduction, **options)
    check_op(fn, [(6, 5), _labels((6,), 5, ignore if ignore != 1 else None)] + weight,
             dtype=np.float64)
    # K-dimensional inputs (N, C, d1, d2) and ignored targets marked with ignore_index
    labels = _labels((3, 4, 2), 5, ignore if ignore is not None else None)
    check_op(fn, [(3, 5, 4, 2), labels] + weight, dtype=np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(reduction):
    fn = lambda lib, x, p, **kw: lib.nn.functional.cross_entropy(x, p, reduction=reduction, **kw)
    check_op(fn, [(4, 5), _softmax_targets(4, 5)], dtype=np.float64)
    check_op(lambda lib, x, p: lib.nn.functional.cross_entropy(
        x, p, reduction=reduction, label_smoothing=0.1), [(3, 5, 2), _softmax_targets(3, 5, 2)],
        dtype=np.float64)
    check_op(lambda lib, x, p, w: lib.nn.functional.cross_entropy(
        x, p, w.detach(), reduction=reduction),
        [(4, 5), _softmax_targets(4, 5), RNG.uniform(0, 2, 5)],
        dtype=np.float64)


def test_cross_entropy_unbatched_and_float32():
    check_op(lambda lib, x, y: lib.nn.functional.cross_entropy(x, y), [(5,), np.array(3)],
             dtype=np.float64)
    check_op(lambda lib, x, y: lib.nn.functional.cross_entropy(x, y, label_smoothing=0.1),
             [(8, 10), _labels((8,), 10)], dtype=np.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(reduction):
    fn = lambda lib, x, y, *w: lib.nn.functional.nll_loss(
        x, y, *[a.detach() for a in w], reduction=reduction, ignore_index=2)
    check_op(fn, [(6, 4), _labels((6,), 4)], dtype=np.float64)
    check_op(fn, [(6, 4), _labels((6,), 4), RNG.uniform(0.1, 2, 4)], dtype=np.float64)
    check_op(fn, [(2, 4, 3), _labels((2, 3), 4)], dtype=np.float64)


def test_nll_loss_out_of_range_target_raises():
    with pytest.raises(IndexError):
        kiln.nn.functional.nll_loss(kiln.randn(3, 4), kiln.tensor([0, 4, 1]))


@pytest.mark.parametrize("reduction", REDUCTIONS + ["batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(reduction, log_target):
    target = np.log(_softmax_targets(4, 5)) if log_target else _softmax_targets(4, 5)
    check_op(lambda lib, x, t: lib.nn.functional.kl_div(x, t, reduction=reduction,
                                                        log_target=log_target),
             [np.log(_softmax_targets(4, 5)), target], dtype=np.float64)


def test_kl_div_zero_target_contributes_zero():
    # PyTorch's target gradient at a zero target is nan (d/dt of t log t); kiln's is finite,
    # so only the input gradient is compared here
    target = _softmax_targets(4, 5)
    target[0, 0] = 0.0
    check_op(lambda lib, x, t: lib.nn.functional.kl_div(x, t.detach(), reduction="sum"),
             [np.log(_softmax_targets(4, 5)), target], dtype=np.float64)


LOSS_MODULES = [
    ("MSELoss", {}, "regress"), ("L1Loss", {"reduction": "sum"}, "regress"),
    ("SmoothL1Loss", {"beta": 0.5}, "regress"), ("HuberLoss", {"delta": 0.5}, "regress"),
    ("BCELoss", {"reduction": "none"}, "prob"), ("BCEWithLogitsLoss", {}, "logit"),
    ("CrossEntropyLoss", {"label_smoothing": 0.1, "ignore_index": 0}, "class"),
    ("NLLLoss", {"reduction": "sum"}, "class"), ("KLDivLoss", {"reduction": "batchmean"}, "kl"),
]


@pytest.mark.parametrize("name,kwargs,kind", LOSS_MODULES, ids=[c[0] for c in LOSS_MODULES])
def test_loss_modules(name, kwargs, kind):
    inputs = {"regress": [(4, 3), (4, 3)], "prob": [_probs(4, 3), _probs(4, 3)],
              "logit": [(4, 3), _probs(4, 3)], "class": [(5, 4), _labels((5,), 4)],
              "kl": [np.log(_softmax_targets(4, 3)), _softmax_targets(4, 3)]}[kind]
    check_op(lambda lib, x, y: getattr(lib.nn, name)(**kwargs)(x, y), inputs, dtype=np.float64)
    assert repr(getattr(kiln.nn, name)(**kwargs)) == repr(getattr(torch.nn, name)(**kwargs))


def test_weighted_loss_modules_keep_weight_as_buffer():
    w = np.array([0.5, 1.0, 2.0])
    k_loss = kiln.nn.CrossEntropyLoss(weight=kiln.tensor(w))
    t_loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))
    assert list(k_loss.state_dict()) == list(t_loss.state_dict()) == ["weight"]
    pos = kiln.nn.BCEWithLogitsLoss(pos_weight=kiln.tensor(w))
    assert list(pos.state_dict()) == list(torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor(w)).state_dict())
    check_op(lambda lib, x, y: lib.nn.CrossEntropyLoss(weight=lib.tensor(w))(x, y),
             [(6, 3), _labels((6,), 3)], dtype=np.float64)


# each with the reduction PyTorch maps it to (the test's id)
LEGACY_FLAGS = [({"size_average": False}, "sum"), ({"size_average": True}, "mean"),
                ({"reduce": False}, "none"), ({"size_average": False, "reduce": True}, "sum")]
LEGACY_LOSSES = [("nll_loss", "class"), ("cross_entropy", "class"), ("mse_loss", "regress"),
                 ("l1_loss", "regress"), ("smooth_l1_loss", "regress"),
                 ("binary_cross_entropy", "prob"), ("binary_cross_entropy_with_logits", "logit"),
                 ("kl_div", "kl"), ("poisson_nll_loss", "regress")]


@pytest.mark.filterwarnings("ignore::UserWarning")       # PyTorch's deprecation warnings
@pytest.mark.parametrize("flags", [f for f, _ in LEGACY_FLAGS], ids=[r for _, r in LEGACY_FLAGS])
@pytest.mark.parametrize("name,kind", LEGACY_LOSSES, ids=[n for n, _ in LEGACY_LOSSES])
def test_functional_losses_honour_legacy_size_average_and_reduce(name, kind, flags):
    """`F.nll_loss(output, target, size_average=False)` (the spatial transformer tutorial's
    summed test loss) is reduction='sum', as in PyTorch; the flags were ignored before."""
    inputs = {"regress": [(4, 3), (4, 3)], "prob": [_probs(4, 3), _probs(4, 3)],
              "logit": [(4, 3), _probs(4, 3)], "class": [(5, 4), _labels((5,), 4)],
              "kl": [np.log(_softmax_targets(4, 3)), _softmax_targets(4, 3)]}[kind]
    check_op(lambda lib, x, y: getattr(lib.nn.functional, name)(x, y, **flags), inputs,
             dtype=np.float64)


def test_invalid_reduction_raises():
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        kiln.nn.functional.mse_loss(kiln.randn(2), kiln.randn(2), reduction="avg")
