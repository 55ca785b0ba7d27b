"""kiln.metrics against scikit-learn: random labels, every average, zero_division edge cases."""

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

import kiln
import kiln.metrics as km


def _same(k, s):
    if isinstance(k, kiln.Tensor):
        np.testing.assert_allclose(k.numpy(), np.asarray(s, dtype=np.float64), rtol=1e-12,
                                   equal_nan=True)
    elif isinstance(s, float) and math.isnan(s):
        assert math.isnan(k)
    else:
        assert k == pytest.approx(s, rel=1e-12, abs=0)


def _compare(y_true, y_pred, **kwargs):
    """Every score, kiln (on tensors) vs scikit-learn (on arrays), with the same arguments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, sk in (("precision", skm.precision_score), ("recall", skm.recall_score),
                         ("f1_score", skm.f1_score)):
            k = getattr(km, name)(kiln.tensor(y_true), kiln.tensor(y_pred), **kwargs)
            _same(k, sk(np.asarray(y_true), np.asarray(y_pred), **kwargs))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_multiclass_random_labels(seed, average):
    rng = np.random.default_rng(seed)
    classes = 2 + seed
    y_true, y_pred = rng.integers(0, classes, 40), rng.integers(0, classes, 40)
    _compare(y_true, y_pred, average=average)
    _compare(y_true, y_pred, average=average, labels=[0, 1, classes + 1])
    _compare(y_true, y_pred, average=average, zero_division=1)


@pytest.mark.parametrize("seed", range(6))
def test_binary_random_labels_and_pos_label(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 2, 25), rng.integers(0, 2, 25)
    _compare(y_true, y_pred)
    _compare(y_true, y_pred, pos_label=0)
    _compare(y_true * 5 + 2, y_pred * 5 + 2, pos_label=7)


def test_accuracy_and_confusion_matrix():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    w = rng.uniform(0, 2, 50)
    kt, kp = kiln.tensor(y_true), kiln.tensor(y_pred)
    assert km.accuracy(kt, kp) == skm.accuracy_score(y_true, y_pred)
    assert km.accuracy(kt, kp, normalize=False) == skm.accuracy_score(y_true, y_pred,
                                                                       normalize=False)
    _same(km.accuracy(y_true.tolist(), y_pred.tolist(), sample_weight=w),
          skm.accuracy_score(y_true, y_pred, sample_weight=w))
    cm = km.confusion_matrix(kt, kp)
    assert cm.dtype is kiln.int64
    np.testing.assert_array_equal(cm.numpy(), skm.confusion_matrix(y_true, y_pred))
    for normalize in ("true", "pred", "all"):
        _same(km.confusion_matrix(kt, kp, normalize=normalize),
              skm.confusion_matrix(y_true, y_pred, normalize=normalize))
    _same(km.confusion_matrix(kt, kp, labels=[3, 1, 7], sample_weight=w),
          skm.confusion_matrix(y_true, y_pred, labels=[3, 1, 7], sample_weight=w))
    _same(km.confusion_matrix([0, 0], [1, 1], labels=[0, 1, 2], normalize="pred"),
          skm.confusion_matrix([0, 0], [1, 1], labels=[0, 1, 2], normalize="pred"))
    with pytest.raises(ValueError, match="At least one label"):
        km.confusion_matrix([0, 1], [0, 1], labels=[5])


def test_string_labels_and_sample_weight():
    y_true = ["cat", "dog", "dog", "bird", "cat", "dog"]
    y_pred = ["cat", "cat", "dog", "dog", "cat", "bird"]
    w = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    for average in ("micro", "macro", "weighted"):
        for sk, k in ((skm.precision_score, km.precision), (skm.recall_score, km.recall),
                      (skm.f1_score, km.f1_score)):
            _same(k(y_true, y_pred, average=average, sample_weight=w),
                  sk(y_true, y_pred, average=average, sample_weight=w))
    np.testing.assert_array_equal(km.confusion_matrix(y_true, y_pred).numpy(),
                                  skm.confusion_matrix(y_true, y_pred))
    _same(km.f1_score(["a", "b", "b"], ["a", "a", "b"], pos_label="b"),
          skm.f1_score(["a", "b", "b"], ["a", "a", "b"], pos_label="b"))


EDGE_CASES = [
    ([0, 0, 0, 0], [0, 0, 0, 0]),       # no positives anywhere
    ([0, 0, 1, 1], [0, 0, 0, 0]),       # nothing predicted positive
    ([0, 0, 0, 0], [0, 1, 1, 0]),       # no true positives in y_true
    ([1, 1, 1], [1, 1, 1]),
    ([2, 2, 3], [2, 2, 2]),             # labels without pos_label=1 (binary not applicable)
    ([0, 1, 2, 2], [0, 0, 0, 0]),       # classes never predicted (macro / weighted)
    ([0, 1, 2, 3], [4, 4, 4, 4]),       # class never true: weighted weights all zero
]


@pytest.mark.parametrize("y_true,y_pred", EDGE_CASES)
@pytest.mark.parametrize("zero_division", ["warn", 0, 1, np.nan])
def test_zero_division_edge_cases(y_true, y_pred, zero_division):
    averages = ["micro", "macro", "weighted", None]
    if len(set(y_true) | set(y_pred)) <= 2 and (1 in y_true + y_pred or
                                                 len(set(y_true) | set(y_pred)) < 2):
        averages.append("binary")
    for average in averages:
        _compare(y_true, y_pred, average=average, zero_division=zero_division)


def test_zero_division_warns_like_sklearn():
    with pytest.warns(km.UndefinedMetricWarning, match="Precision is ill-defined"):
        km.precision([0, 1], [0, 0])
    with pytest.warns(UndefinedMetricWarning):
        skm.precision_score([0, 1], [0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert km.precision([0, 1], [0, 0], zero_division=1) == 1.0


def test_errors():
    with pytest.raises(ValueError, match="multiclass but average='binary'"):
        km.f1_score([0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="pos_label=3 is not a valid label"):
        km.precision([0, 1], [1, 0], pos_label=3)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        km.accuracy([0, 1], [1])
    with pytest.raises(ValueError, match="continuous"):
        km.accuracy(kiln.tensor([0.5, 1.0]), kiln.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="average has to be one of"):
        km.recall([0, 1], [0, 1], average="samplewise")
