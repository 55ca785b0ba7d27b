"""Turning a list of samples into a batch: `default_collate` and `default_convert` (PyTorch's)."""

from __future__ import annotations

import collections.abc
from typing import Any

import numpy as np

import kiln
from kiln import Tensor


def default_convert(data: Any) -> Any:
    """NumPy arrays and scalars inside `data` become tensors; everything else is kept."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return data if data.dtype.kind in "SUO" else kiln.as_tensor(data)
    if isinstance(data, np.generic) and data.dtype.kind not in "SUO":
        return kiln.as_tensor(data)
    if isinstance(data, collections.abc.Mapping):
        return _same_mapping(data, {k: default_convert(v) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        return _same_sequence(data, [default_convert(d) for d in data])
    return data


def default_collate(batch: list) -> Any:
    """Stack a list of samples into a batch, recursing into dicts, tuples and lists.

    Tensors are stacked along a new first dimension, NumPy arrays become stacked tensors,
    Python floats a float64 tensor, ints an int64 tensor (bools a bool tensor), strings stay a
    list; a dict of samples becomes a dict of batches and a tuple of samples a list of batches.
    """
    elem = batch[0]
    if isinstance(elem, Tensor):
        return kiln.stack(batch, 0)
    if isinstance(elem, np.ndarray) and elem.dtype.kind not in "SUO":
        return kiln.stack([kiln.as_tensor(b) for b in batch], 0)
    if isinstance(elem, np.generic) and elem.dtype.kind not in "SUO":
        return kiln.tensor(np.array(batch))
    if isinstance(elem, float):
        return kiln.tensor(batch, dtype=kiln.float64)
    if isinstance(elem, (bool, int)):
        return kiln.tensor(batch)
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return _same_mapping(elem, {key: default_collate([d[key] for d in batch])
                                    for key in elem})
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):
        return type(elem)(*(default_collate(samples) for samples in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        if any(len(e) != size for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        columns = [default_collate(list(samples)) for samples in zip(*batch)]
        return columns if isinstance(elem, tuple) else _same_sequence(elem, columns)
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts "
                    f"or lists; found {type(elem)}")


def _same_mapping(like, items: dict):
    """`items` in `like`'s mapping type when it can be built from a dict, else a plain dict."""
    try:
        return type(like)(items)
    except TypeError:
        return items


def _same_sequence(like, items: list):
    try:
        return type(like)(items)
    except TypeError:
        return items
