"""Classification metrics (accuracy, precision, recall, F1, confusion matrix) as scikit-learn
defines them, on kiln tensors or array-likes."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

import kiln
from kiln import Tensor

__all__ = ["accuracy", "accuracy_score", "confusion_matrix", "precision", "precision_score",
           "recall", "recall_score", "f1_score", "precision_recall_fscore_support",
           "UndefinedMetricWarning"]

_AVERAGES = ("binary", "micro", "macro", "weighted", None)


class UndefinedMetricWarning(UserWarning):
    """A score divided by zero and `zero_division="warn"` made it 0 (scikit-learn's warning)."""


def _labels_array(y: Any, name: str) -> np.ndarray:
    # Labels may be strings as well as numbers, so counting happens in NumPy, not in tensors.
    if isinstance(y, Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array of class labels, got shape {arr.shape} "
                         "(multilabel indicator matrices are not supported)")
    if arr.dtype.kind == "f" and arr.size and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"Classification metrics can't handle continuous targets: {name} "
                         "holds non-integer values; threshold or argmax the scores first")
    return arr


def _targets(y_true, y_pred, sample_weight=None):
    t, p = _labels_array(y_true, "y_true"), _labels_array(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"Found input variables with inconsistent numbers of samples: "
                         f"[{len(t)}, {len(p)}]")
    w = None if sample_weight is None else np.asarray(
        sample_weight.detach().cpu().numpy() if isinstance(sample_weight, Tensor)
        else sample_weight, dtype=np.float64)
    if w is not None and len(w) != len(t):
        raise ValueError(f"sample_weight has {len(w)} values for {len(t)} samples")
    return t, p, w


def _present_labels(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    if t.dtype.kind in "biuf" and p.dtype.kind in "biuf":
        return np.union1d(t, p)
    return np.array(sorted(set(t.tolist()) | set(p.tolist())), dtype=object)


def accuracy(y_true, y_pred, *, normalize: bool = True, sample_weight=None) -> float:
    """The fraction (or with `normalize=False` the number) of correct predictions."""
    t, p, w = _targets(y_true, y_pred, sample_weight)
    correct = (t == p).astype(np.float64)
    if not normalize:
        return float(correct.sum() if w is None else (correct * w).sum())
    if w is None:
        return float(correct.mean()) if len(correct) else math.nan
    return float((correct * w).sum() / w.sum())


accuracy_score = accuracy


def _counts(t, p, w, labels) -> np.ndarray:
    """The confusion matrix over `labels` (rows: true label, columns: predicted)."""
    index = {label: i for i, label in enumerate(np.asarray(labels).tolist())}
    ti = np.array([index.get(v, -1) for v in t.tolist()], dtype=np.int64)
    pi = np.array([index.get(v, -1) for v in p.tolist()], dtype=np.int64)
    keep = (ti >= 0) & (pi >= 0)
    n = len(index)
    weights = np.ones(len(t)) if w is None else w
    cm = np.zeros((n, n), dtype=np.float64)
    np.add.at(cm, (ti[keep], pi[keep]), weights[keep])
    return cm


def confusion_matrix(y_true, y_pred, *, labels: Sequence | None = None, sample_weight=None,
                     normalize: str | None = None) -> Tensor:
    """`C[i, j]`: samples of true class `labels[i]` predicted as `labels[j]`.

    `labels` defaults to the sorted union of both label sets. The result is an int64 tensor, or
    a float64 one with `sample_weight` or `normalize` ("true" rows, "pred" columns, "all").
    """
    t, p, w = _targets(y_true, y_pred, sample_weight)
    if normalize not in ("true", "pred", "all", None):
        raise ValueError("normalize must be one of {'true', 'pred', 'all', None}")
    if labels is None:
        labels = _present_labels(t, p)
    else:
        labels = np.asarray(labels.tolist() if isinstance(labels, Tensor) else labels)
        if labels.size == 0:
            raise ValueError("'labels' should contains at least one label.")
        if len(t) and not np.isin(t, labels).any():
            raise ValueError("At least one label specified must be in y_true")
    cm = _counts(t, p, w, labels)
    with np.errstate(all="ignore"):
        if normalize == "true":
            cm = cm / cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            cm = cm / cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            cm = cm / cm.sum()
    cm = np.nan_to_num(cm)
    if w is None and normalize is None:
        return kiln.tensor(cm.astype(np.int64))
    return kiln.tensor(cm)


def _zero_division_value(zero_division) -> float:
    if isinstance(zero_division, str) and zero_division == "warn":
        return 0.0
    if isinstance(zero_division, (int, float)) and not isinstance(zero_division, bool) and (
            zero_division in (0, 1) or math.isnan(zero_division)):
        return float(zero_division)
    raise ValueError(f"zero_division must be 'warn', 0, 1 or nan, got {zero_division!r}")


def _divide(num, den, metric, modifier, average, zero_division, warn_for):
    mask = den == 0
    result = num / np.where(mask, 1.0, den)
    if not mask.any():
        return result
    result[mask] = _zero_division_value(zero_division)
    if isinstance(zero_division, str) and metric in warn_for:
        noun = "labels with no " + modifier + " samples" if average != "micro" and \
            len(result) > 1 else "due to no " + modifier + " samples"
        warnings.warn(f"{metric.capitalize()} is ill-defined and being set to 0.0 {noun}. Use "
                      "`zero_division` parameter to control this behavior.",
                      UndefinedMetricWarning, stacklevel=4)
    return result


def _average(values: np.ndarray, weights: np.ndarray | None) -> float:
    if values.size == 0:
        return math.nan
    keep = ~np.isnan(values)
    if not keep.any():
        return math.nan
    if weights is None:
        return float(values[keep].mean())
    values, weights = values[keep], weights[keep].astype(np.float64)
    if weights.sum() == 0:          # all classes absent from y_true: plain mean
        return float(values.mean())
    return float((values * weights).sum() / weights.sum())


def precision_recall_fscore_support(y_true, y_pred, *, beta: float = 1.0,
                                    labels: Sequence | None = None, pos_label=1,
                                    average: str | None = None, sample_weight=None,
                                    zero_division="warn",
                                    warn_for=("precision", "recall", "f-score")):
    """Precision, recall, F-beta and support, per class or averaged (scikit-learn's function).

    Returns Python floats (support None) when averaging, else float64 tensors per label and an
    int64 support tensor.
    """
    if average not in _AVERAGES:
        raise ValueError(f"average has to be one of {_AVERAGES}")
    _zero_division_value(zero_division)
    t, p, w = _targets(y_true, y_pred, sample_weight)
    present = _present_labels(t, p)
    if average == "binary":
        if len(present) > 2:
            raise ValueError("Target is multiclass but average='binary'. Please choose another "
                             "average setting, one of [None, 'micro', 'macro', 'weighted'].")
        if pos_label not in present.tolist() and len(present) >= 2:
            raise ValueError(f"pos_label={pos_label!r} is not a valid label. It should be one "
                             f"of {present.tolist()}")
        labels = [pos_label]
    elif labels is None:
        labels = present
    else:
        labels = list(labels.tolist() if isinstance(labels, Tensor) else labels)
    # the confusion matrix over the requested labels plus every other label, so that a
    # prediction outside `labels` still counts against recall
    extra = [v for v in present.tolist() if v not in set(np.asarray(labels).tolist())]
    cm = _counts(t, p, w, list(np.asarray(labels).tolist()) + extra)
    k = len(labels)
    tp = np.diag(cm)[:k]
    pred_sum = cm.sum(axis=0)[:k]
    true_sum = cm.sum(axis=1)[:k]
    if average == "micro":
        tp, pred_sum, true_sum = (np.array([v.sum()]) for v in (tp, pred_sum, true_sum))
    prec = _divide(tp, pred_sum, "precision", "predicted", average, zero_division, warn_for)
    rec = _divide(tp, true_sum, "recall", "true", average, zero_division, warn_for)
    beta2 = beta ** 2
    if math.isinf(beta):
        f = rec
    elif beta == 0:
        f = prec
    else:
        f = _divide((1 + beta2) * tp, beta2 * true_sum + pred_sum, "f-score",
                    "true nor predicted", average, zero_division, warn_for)
    if average is None:
        return (kiln.tensor(prec), kiln.tensor(rec), kiln.tensor(f),
                kiln.tensor(np.rint(true_sum).astype(np.int64)) if w is None
                else kiln.tensor(true_sum))
    weights = true_sum if average == "weighted" else None
    return _average(prec, weights), _average(rec, weights), _average(f, weights), None


def precision(y_true, y_pred, *, labels=None, pos_label=1, average: str | None = "binary",
              sample_weight=None, zero_division="warn"):
    """tp / (tp + fp): of the samples predicted as a class, the fraction that are."""
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, pos_label=pos_label, average=average,
        sample_weight=sample_weight, zero_division=zero_division, warn_for=("precision",))[0]


def recall(y_true, y_pred, *, labels=None, pos_label=1, average: str | None = "binary",
           sample_weight=None, zero_division="warn"):
    """tp / (tp + fn): of the samples of a class, the fraction predicted as it."""
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, pos_label=pos_label, average=average,
        sample_weight=sample_weight, zero_division=zero_division, warn_for=("recall",))[1]


def f1_score(y_true, y_pred, *, labels=None, pos_label=1, average: str | None = "binary",
             sample_weight=None, zero_division="warn"):
    """2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall."""
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, pos_label=pos_label, average=average,
        sample_weight=sample_weight, zero_division=zero_division, warn_for=("f-score",))[2]


precision_score, recall_score = precision, recall
