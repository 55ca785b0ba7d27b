"""Known departures from PyTorch's OpInfo samples: indexing, scatter and gather,
sorting and selection, views and their _copy forms.

Each entry is (op, mode): what `tests/opinfo_sweep.py` found. `tests/test_opinfo.py` fails when
an op not listed here departs from torch, and when a listed one no longer does (then delete
its line). Modes: float32 and int64 values, float64 values and gradients.

`COMPARE` maps an op whose correct result is not unique (signs of singular vectors, indices of
ties) to `fn(kiln_out, torch_out, torch_args, compare) -> None or why`, used instead of the
element-wise comparison; `compare(k, t, what)` is that comparison."""

import numpy as np
import torch

import kiln


def _picks(dim_at: int, keepdim_at: int | None, distinct: bool = False):
    """A COMPARE for (values, indices) results whose indices are not unique among ties
    (topk, kthvalue, mode): the values compared as they are; the indices must have torch's
    shape and dtype, lie in range, and point at elements equal to torch's values (and at
    different elements, for topk). `dim_at`/`keepdim_at`: where dim and keepdim sit in the
    torch arguments (positional in these ops' samples), dim -1 and keepdim False if absent."""
    def check(k_out, t_out, args, compare):
        why = compare(k_out[0], t_out[0], "output[0]")
        if why:
            return why
        k_idx, t_idx = k_out[1], t_out[1]
        if tuple(k_idx.shape) != tuple(t_idx.shape) or k_idx.dtype.name != "int64":
            return f"output[1]: shape {tuple(k_idx.shape)} {k_idx.dtype.name}, torch " \
                   f"{tuple(t_idx.shape)} int64"
        x = args[0].detach()
        idx = torch.from_numpy(np.array(k_idx.numpy()))
        if x.ndim == 0:
            return None if bool((idx == 0).all()) else f"output[1]: {idx.tolist()} of a 0-d input"
        d = (args[dim_at] if len(args) > dim_at else -1) % x.ndim
        keep = keepdim_at is None or (len(args) > keepdim_at and bool(args[keepdim_at]))
        at = idx if keep else idx.unsqueeze(d)
        if bool(((at < 0) | (at >= x.shape[d])).any()):
            return f"output[1]: an index outside [0, {x.shape[d]}) along dim {d}"
        if distinct and at.shape[d] > 1 and bool((at.sort(d).values.diff(dim=d) == 0).any()):
            return "output[1]: an element picked twice"
        picked = x.gather(d, at) if keep else x.gather(d, at).squeeze(d)
        return compare(kiln.tensor(picked.numpy()), t_out[0], "input at output[1]")
    # the gradients follow the indices: compared too, as the float samples have no ties
    check.compare_grads = True
    return check


COMPARE = {
    "topk": _picks(2, None, distinct=True),      # topk(input, k, dim, largest, sorted)
    "kthvalue": _picks(2, 3),                    # kthvalue(input, k, dim, keepdim)
    "mode": _picks(1, 2),                        # mode(input, dim, keepdim)
}

# a sample whose reference is not what kiln can be compared with
_PARTIAL_VIEW = ("n/a: the sample is a view at storage offset 10 of a larger tensor, read by "
                 "absolute storage offsets; to_kiln copies only the view's elements")
_TORCH_GRAD_WRONG = ("n/a: torch's gradient wrt input is wrong (torch's own gradcheck fails; "
                     "its OpInfo xfails test_fn_grad); kiln's passes gradcheck")

KNOWN = {
    ('as_strided.partial_views', 'float32'): _PARTIAL_VIEW,
    ('as_strided.partial_views', 'int64'): _PARTIAL_VIEW,
    ('as_strided.partial_views', 'float64_grad'): _PARTIAL_VIEW,
    ('as_strided_scatter', 'float64_grad'): _TORCH_GRAD_WRONG,
}
