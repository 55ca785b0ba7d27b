"""Known departures from PyTorch's OpInfo samples on bool tensors (every op, the bool mode).

As the other lists: `tests/test_opinfo.py` fails when an op not listed here departs from torch
in this mode, and when a listed one no longer does (then delete its line)."""

import torch


def _sorted_by(values_at: int | None):
    """A COMPARE for sort (values_at 0) and argsort (None): among equal elements, which index
    comes first is not unique unless stable=True, so without it the indices must only be a
    permutation along dim that sorts the input as torch does (values equal); with stable=True
    they must be torch's."""
    def check(k_out, t_out, args, compare, kwargs):
        if kwargs.get("stable", False):
            return compare(k_out, t_out, "output")
        k_idx, t_idx = (k_out, t_out) if values_at is None else (k_out[1], t_out[1])
        if values_at is not None:
            why = compare(k_out[0], t_out[0], "output[0]")
            if why:
                return why
        if tuple(k_idx.shape) != tuple(t_idx.shape) or k_idx.dtype.name != "int64":
            return f"indices: shape {tuple(k_idx.shape)} {k_idx.dtype.name}, torch " \
                   f"{tuple(t_idx.shape)} int64"
        x = args[0].detach()
        if x.ndim == 0:
            return None if int(k_idx) == 0 else "indices: nonzero index of a 0-d input"
        d = kwargs.get("dim", args[1] if len(args) > 1 else -1) % x.ndim
        idx = torch.from_numpy(k_idx.numpy().copy())
        if not bool((idx.sort(d).values == torch.arange(x.shape[d]).reshape(
                [-1 if i == d else 1 for i in range(x.ndim)])).all()):
            return f"indices: not a permutation along dim {d}"
        if not bool((x.gather(d, idx) == x.gather(d, t_idx)).all()):
            return "indices: the input taken at kiln's indices is not torch's sorted order"
        return None
    check.reads_kwargs = True
    return check


COMPARE = {
    "sort": _sorted_by(0),
    "argsort": _sorted_by(None),
}

KNOWN = {
    ('as_strided.partial_views', 'bool'): 'wrong: output: 3 of 4 differ, e.g. at (np.int64(0), np',
    ('chalf', 'bool'): "error: AttributeError: 'Tensor' object has no attribute 'chalf'",
    ('jiterator_2inputs_2outputs', 'bool'): 'missing',
    ('jiterator_4inputs_with_extra_args', 'bool'): 'missing',
    ('jiterator_binary', 'bool'): 'missing',
    ('jiterator_binary_return_by_ref', 'bool'): 'missing',
    ('jiterator_unary', 'bool'): 'missing',
    ('native_dropout_backward', 'bool'): 'missing',
    ('torch.ops.aten._safe_softmax.default', 'bool'): 'missing',
}
