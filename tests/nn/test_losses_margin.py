"""The margin, ranking, multi-label, triplet, Gaussian-NLL and CTC losses against PyTorch:
values and gradients, every reduction (float64), through the functional and the module."""

import numpy as np
import pytest
import torch

import kiln
from tests.parity import check_op

REDUCTIONS = ["none", "mean", "sum"]
RNG = np.random.default_rng(0)
SIGNS = RNG.choice([-1.0, 1.0], 6)


def _f(name, n_grad=None, **kw):
    """The functional `name`; inputs after the first `n_grad` (the targets) are detached."""
    def call(lib, *xs):
        n = len(xs) if n_grad is None else n_grad
        return getattr(lib.nn.functional, name)(*xs[:n], *[x.detach() for x in xs[n:]], **kw)
    return call


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pairwise_losses(reduction):
    r = dict(reduction=reduction)
    check_op(_f("margin_ranking_loss", 2, margin=0.3, **r), [(6,), (6,), SIGNS],
             dtype=np.float64)
    check_op(_f("hinge_embedding_loss", 1, margin=0.7, **r), [(6,), SIGNS], dtype=np.float64)
    check_op(_f("soft_margin_loss", 1, **r), [(6,), SIGNS], dtype=np.float64)
    check_op(_f("cosine_embedding_loss", 2, margin=0.2, **r), [(6, 4), (6, 4), SIGNS],
             dtype=np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multiclass_margin_losses(reduction):
    r = dict(reduction=reduction)
    labels = RNG.integers(0, 5, 4)
    check_op(_f("multi_margin_loss", **r), [(4, 5), labels], dtype=np.float64)
    check_op(_f("multi_margin_loss", p=2, margin=0.5, **r), [(4, 5), labels],
             dtype=np.float64)
    weight = RNG.uniform(0.5, 2, 5)
    check_op(lambda lib, x, y, w: lib.nn.functional.multi_margin_loss(x, y, weight=w.detach(),
                                                                       **r),
             [(4, 5), labels, weight], dtype=np.float64)
    multi = np.array([[3, 0, -1, 1, 2], [1, 2, 4, -1, 0], [0, 1, 2, 3, 4], [-1, 0, 0, 0, 0]])
    check_op(_f("multilabel_margin_loss", **r), [(4, 5), multi], dtype=np.float64)
    soft = RNG.integers(0, 2, (4, 5)).astype(np.float64)
    check_op(_f("multilabel_soft_margin_loss", 1, **r), [(4, 5), soft], dtype=np.float64)
    check_op(lambda lib, x, y, w: lib.nn.functional.multilabel_soft_margin_loss(
        x, y.detach(), weight=w.detach(), **r), [(4, 5), soft, weight], dtype=np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_and_gaussian_losses(reduction):
    r = dict(reduction=reduction)
    check_op(_f("triplet_margin_loss", **r), [(5, 4)] * 3, dtype=np.float64)
    check_op(_f("triplet_margin_loss", margin=2.0, p=1, swap=True, **r), [(5, 4)] * 3,
             dtype=np.float64)
    check_op(lambda lib, a, p, n: lib.nn.functional.triplet_margin_with_distance_loss(
        a, p, n, distance_function=lambda x, y: 1 - lib.nn.functional.cosine_similarity(x, y),
        margin=0.5, swap=True, **r), [(5, 4)] * 3, dtype=np.float64)
    var = RNG.uniform(0.1, 2, (5, 4))
    check_op(_f("gaussian_nll_loss", **r), [(5, 4), (5, 4), var], dtype=np.float64)
    check_op(_f("gaussian_nll_loss", full=True, eps=0.5, **r), [(5, 4), (5, 4), var[:, 0]],
             dtype=np.float64)


def test_distances():
    check_op(_f("pairwise_distance"), [(5, 4), (5, 4)], dtype=np.float64)
    check_op(_f("pairwise_distance", p=1.5, keepdim=True), [(5, 4), (5, 4)], dtype=np.float64)
    check_op(_f("pdist"), [(5, 4)], dtype=np.float64)
    check_op(_f("pdist", p=3), [(5, 4)], dtype=np.float64)


def _ctc_case(lib, logits, reduction, targets, in_lens, tgt_lens, **kw):
    log_probs = logits.log_softmax(2)
    return lib.nn.functional.ctc_loss(log_probs, lib.tensor(targets), in_lens, tgt_lens,
                                      reduction=reduction, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_loss_padded_and_concatenated_targets(reduction):
    logits = RNG.normal(size=(8, 3, 5))
    padded = np.array([[1, 2, 2, 3], [4, 1, 0, 0], [3, 3, 3, 0]])
    in_lens, tgt_lens = [8, 6, 8], [4, 2, 3]
    check_op(lambda lib, x: _ctc_case(lib, x, reduction, padded, in_lens, tgt_lens),
             [logits], dtype=np.float64)
    flat = np.concatenate([padded[0, :4], padded[1, :2], padded[2, :3]])
    check_op(lambda lib, x: _ctc_case(lib, x, reduction, flat, in_lens, tgt_lens, blank=0),
             [logits], dtype=np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_loss_gradient_for_log_probs_is_torchs(reduction):
    """The log-probabilities themselves are the leaf: PyTorch's gradient is exp(lp) minus the
    alignment posterior (the logits' gradient), also where a sample's input is shorter."""
    log_probs = torch.tensor(RNG.normal(size=(8, 3, 5))).log_softmax(2).numpy()
    padded = np.array([[1, 2, 2, 3], [4, 1, 0, 0], [3, 3, 3, 0]])
    check_op(lambda lib, lp: lib.nn.functional.ctc_loss(lp, lib.tensor(padded), [8, 6, 8],
                                                        [4, 2, 3], reduction=reduction),
             [log_probs], dtype=np.float64)


def test_ctc_loss_impossible_alignment_is_inf_or_zero():
    logits = RNG.normal(size=(2, 1, 4))
    targets = np.array([[1, 1, 1]])            # needs 5 frames (blanks between repeats)
    for zero_infinity, expected in [(False, np.inf), (True, 0.0)]:
        k = kiln.nn.CTCLoss(zero_infinity=zero_infinity, reduction="sum")(
            kiln.tensor(logits).log_softmax(2), kiln.tensor(targets), [2], [3])
        assert float(k) == expected


MODULES = [
    ("MarginRankingLoss", dict(margin=0.1), [(6,), (6,), SIGNS]),
    ("HingeEmbeddingLoss", dict(), [(6,), SIGNS]),
    ("SoftMarginLoss", dict(reduction="sum"), [(6,), SIGNS]),
    ("CosineEmbeddingLoss", dict(margin=0.1), [(6, 3), (6, 3), SIGNS]),
    ("MultiMarginLoss", dict(p=2), [(4, 5), RNG.integers(0, 5, 4)]),
    ("MultiLabelMarginLoss", dict(), [(2, 3), np.array([[2, -1, 0], [0, 1, 2]])]),
    ("MultiLabelSoftMarginLoss", dict(), [(2, 3), np.array([[1.0, 0, 1], [0, 0, 1]])]),
    ("TripletMarginLoss", dict(margin=0.5), [(3, 4)] * 3),
    ("TripletMarginWithDistanceLoss", dict(margin=0.5), [(3, 4)] * 3),
    ("GaussianNLLLoss", dict(full=True), [(3, 4), (3, 4), RNG.uniform(0.5, 1, (3, 4))]),
    ("NLLLoss2d", dict(), [(2, 3, 2, 2), RNG.integers(0, 3, (2, 2, 2))]),
]


@pytest.mark.parametrize("name,kwargs,inputs", MODULES, ids=[m[0] for m in MODULES])
def test_loss_module_matches_torch(name, kwargs, inputs):
    grads = {"MarginRankingLoss": 2, "CosineEmbeddingLoss": 2, "TripletMarginLoss": 3,
             "TripletMarginWithDistanceLoss": 3, "GaussianNLLLoss": 3}.get(name, 1)
    check_op(lambda lib, *xs: getattr(lib.nn, name)(**kwargs)(
        *xs[:grads], *[x.detach() for x in xs[grads:]]), inputs, dtype=np.float64)


def test_ctc_module_matches_torch():
    logits = RNG.normal(size=(6, 2, 4))
    targets = np.array([[1, 2], [3, 0]])
    check_op(lambda lib, x: lib.nn.CTCLoss(blank=0)(x.log_softmax(2), lib.tensor(targets),
                                                    lib.tensor([6, 5]), lib.tensor([2, 1])),
             [logits], dtype=np.float64)
    assert torch is not None


def test_gaussian_nll_loss_compiles_whole_and_a_replay_still_rejects_a_negative_var():
    """The check for a negative variance read `(var < 0).any()` into Python: a training step
    with GaussianNLLLoss broke its graph there and ran eagerly. Traced, the check is a graph
    node: the step compiles whole, equals eager, and a replay given a negative variance raises
    eager's ValueError."""
    import warnings
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 6, 3)).astype(np.float32)
    raw = np.abs(rng.standard_normal((6, 3))).astype(np.float32)
    model = kiln.nn.Linear(3, 6)
    loss_fn = kiln.nn.GaussianNLLLoss()

    def step(x, y, raw):
        out = model(x)
        mean, var = out[:, :3], kiln.nn.functional.softplus(out[:, 3:]) + raw
        loss = loss_fn(mean, y, var)
        loss.backward()
        return loss

    compiled = kiln.compile(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # no graph break, no eager fallback
        for i in range(3):
            args = [kiln.tensor(a * (1 + i)) for a in (x, y, raw)]
            got = compiled(*args)
            grad = model.weight.grad.clone()
            model.zero_grad()
            want = step(*args)
            assert kiln.allclose(got, want, rtol=1e-6, atol=1e-6)
            assert kiln.allclose(grad, model.weight.grad, rtol=1e-5, atol=1e-6)
            model.zero_grad()
    negative = [kiln.tensor(x), kiln.tensor(y), kiln.tensor(-raw - 10)]
    with pytest.raises(ValueError, match="gaussian_nll_loss: var has negative entry"):
        step(*negative)
    with pytest.raises(ValueError, match="gaussian_nll_loss: var has negative entry"):
        compiled(*negative)
    assert len(compiled.entries) == 1
