"""Bad input fails as in PyTorch (same exception type), with a message naming the op, the
offending shapes or dtypes, and the caller's `file:line` (this file's line that made the call).

Each case's lambda sits on one line, so that line is where the error must point.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

import kiln


def _functional(lib):
    return torch.nn.functional if lib is torch else kiln.tracer.functional


def _freed(lib):
    x = lib.ones(3, requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    return lambda: y.backward()


def _saved_changed(lib):
    x = lib.ones(3, requires_grad=True)
    y = x * 2
    z = y * y
    y.add_(1)
    return lambda: z.sum().backward()


# name: (make a zero-argument call for `lib` (the call itself is on the case's line, or in the
#        returned lambda), exception type, pieces the kiln message must contain)
CASES = {
    "add_shapes": (lambda lib: lambda: lib.ones(2, 3) + lib.ones(4), RuntimeError,
                   ["add", "[2, 3]", "[4]"]),
    "mul_shapes": (lambda lib: lambda: lib.mul(lib.ones(2, 3), lib.ones(2, 1, 2)), RuntimeError,
                   ["mul", "[2, 3]", "[2, 1, 2]"]),
    "matmul_shapes": (lambda lib: lambda: lib.ones(2, 3) @ lib.ones(4, 5), RuntimeError,
                      ["matmul", "2x3", "4x5"]),
    "matmul_batched_shapes": (lambda lib: lambda: lib.ones(2, 2, 3) @ lib.ones(3, 4, 5),
                              RuntimeError, ["matmul"]),
    "mm_not_matrix": (lambda lib: lambda: lib.mm(lib.ones(2, 3, 1), lib.ones(1, 2)),
                      RuntimeError, ["mm", "3-D"]),
    "matmul_dtypes": (lambda lib: lambda: lib.ones(2, 2) @ lib.ones(2, 2, dtype=lib.float64),
                      RuntimeError, ["matmul", "float32", "float64"]),
    "reshape_size": (lambda lib: lambda: lib.ones(2, 3).reshape(4), RuntimeError,
                     ["reshape", "[4]", "6"]),
    "view_size": (lambda lib: lambda: lib.ones(2, 3).view(5, -1), RuntimeError, ["view", "6"]),
    "expand_size": (lambda lib: lambda: lib.ones(2, 3).expand(4, 3), RuntimeError,
                    ["expand", "[4, 3]", "[2, 3]"]),
    "cat_shapes": (lambda lib: lambda: lib.cat([lib.ones(2, 3), lib.ones(2, 4)]), RuntimeError,
                   ["cat", "[2, 3]", "[2, 4]"]),
    "stack_shapes": (lambda lib: lambda: lib.stack([lib.ones(2), lib.ones(3)]), RuntimeError,
                     ["stack", "[2]", "[3]"]),
    "dim_out_of_range": (lambda lib: lambda: lib.ones(2, 3).sum(2), IndexError,
                         ["Dimension out of range", "2"]),
    "index_out_of_range": (lambda lib: lambda: lib.ones(3)[5], IndexError,
                           ["index", "5", "size 3"]),
    "index_negative_out_of_range": (lambda lib: lambda: lib.ones(2, 3)[:, -4], IndexError,
                                    ["index", "-4", "size 3"]),
    "tensor_index_out_of_range": (lambda lib: lambda: lib.ones(3)[lib.tensor([0, 7])],
                                  IndexError, ["index", "7", "size 3"]),
    "too_many_indices": (lambda lib: lambda: lib.ones(3)[0, 0], IndexError,
                         ["index", "too many indices"]),
    "float_index": (lambda lib: lambda: lib.ones(3)[lib.tensor([0.0])], IndexError,
                    ["index", "long, int or bool"]),
    "mask_shape": (lambda lib: lambda: lib.ones(3)[lib.tensor([True, False])], IndexError,
                   ["index", "[2]", "[3]"]),
    "index_select_range": (lambda lib: lambda: lib.index_select(lib.ones(3), 0, lib.tensor([3])),
                           IndexError, ["index_select", "3"]),
    "gather_range": (lambda lib: lambda: lib.gather(lib.ones(2, 2), 1, lib.tensor([[0, 2]])),
                     RuntimeError, ["2"]),
    "ragged_list": (lambda lib: lambda: lib.tensor([[1, 2], [3]]), ValueError,
                    ["tensor", "length 2", "got 1"]),
    "neg_bool": (lambda lib: lambda: -lib.tensor([True]), RuntimeError, ["neg", "bool"]),
    "sub_bool": (lambda lib: lambda: lib.tensor([True]) - lib.tensor([False]), RuntimeError,
                 ["sub", "bool"]),
    "int_requires_grad": (lambda lib: lambda: lib.ones(2, dtype=lib.int64).requires_grad_(),
                          RuntimeError, ["requires_grad_", "floating point", "int64"]),
    "leaf_inplace": (lambda lib: lambda: lib.ones(2, requires_grad=True).add_(1), RuntimeError,
                     ["add_", "leaf Variable"]),
    "inplace_broadcast": (lambda lib: lambda: lib.ones(3).add_(lib.ones(2, 3)), RuntimeError,
                          ["add_", "[3]", "[2, 3]"]),
    "inplace_float_into_int": (lambda lib: lambda: lib.ones(2, dtype=lib.int64).mul_(1.5),
                               RuntimeError, ["mul_", "float32", "int64"]),
    "backward_non_scalar": (lambda lib: lambda: (lib.ones(3, requires_grad=True) * 2).backward(),
                            RuntimeError, ["backward", "scalar outputs", "[3]"]),
    "backward_no_grad": (lambda lib: lambda: lib.ones(3).sum().backward(), RuntimeError,
                         ["backward", "does not require grad"]),
    "backward_freed_graph": (_freed, RuntimeError, ["backward", "second time"]),
    "backward_saved_changed": (_saved_changed, RuntimeError,
                               ["backward", "modified by an inplace operation", "[3]",
                                "MulBackward0", "version 1"]),
    "item_of_many": (lambda lib: lambda: lib.ones(2).item(), RuntimeError, ["item", "2 elements"]),
    "one_hot_float": (lambda lib: lambda: _functional(lib).one_hot(lib.ones(2)), RuntimeError,
                      ["one_hot", "int64"]),
    # an int keepdim is refused by PyTorch's argument parser (Python would take 1 as True)
    "keepdim_int_method": (lambda lib: lambda: lib.ones(2, 3).sum(0, 1), TypeError,
                           ["sum", "argument 'keepdim' (position 2) must be bool, not int"]),
    "keepdim_int_function": (lambda lib: lambda: lib.mean(lib.ones(2, 3), 0, 1), TypeError,
                             ["mean", "argument 'keepdim' (position 3) must be bool, not int"]),
    "keepdim_int_keyword": (lambda lib: lambda: lib.ones(2, 3).amax(0, keepdim=1), TypeError,
                            ["amax", "argument 'keepdim' must be bool, not int"]),
    "keepdim_none": (lambda lib: lambda: lib.logsumexp(lib.ones(2), 0, keepdim=None), TypeError,
                     ["logsumexp", "argument 'keepdim' must be bool, not NoneType"]),
    "keepdim_int_max": (lambda lib: lambda: lib.ones(2, 3).max(1, 0), TypeError,
                        ["max", "argument 'keepdim' (position 2) must be bool, not int"]),
    "keepdim_int_any": (lambda lib: lambda: (lib.ones(2, 3) > 0).any(1, 1), TypeError,
                        ["any", "argument 'keepdim'", "must be bool, not int"]),
    "keepdim_int_std": (lambda lib: lambda: lib.ones(2, 3).std(1, keepdim=1), TypeError,
                        ["std", "argument 'keepdim'", "must be bool, not int"]),
    "keepdim_int_vector_norm": (lambda lib: lambda: lib.linalg.vector_norm(lib.ones(2), 2, 0, 1),
                                TypeError, ["vector_norm", "argument 'keepdim' (position 4)",
                                            "must be bool, not int"]),
}

_THIS_FILE = os.path.abspath(__file__)


def _call_line(make) -> tuple:
    """The line in this file that the error should point to: the case's own lambda line,
    or the line of the returned lambda for the helper-built cases."""
    call = make(kiln)
    return call.__code__.co_firstlineno, call


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_like_torch_and_points_at_the_caller(name) -> None:
    make, kind, pieces = CASES[name]
    with pytest.raises(kind):
        make(torch)()
    line, call = _call_line(make)
    with pytest.raises(kind) as err:
        call()
    message = str(err.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} missing from {message!r}"
    where = re.search(r"\(at (.+):(\d+)\)$", message)
    assert where, f"no (at file:line) in {message!r}"
    assert os.path.abspath(where.group(1)) == _THIS_FILE and int(where.group(2)) == line, \
        f"points at {where.group(1)}:{where.group(2)}, expected line {line} of this file"


def test_bool_keepdim_still_passes_in_every_form() -> None:
    """The keepdim check lets bools through, by position and by keyword, to the same values."""
    import numpy as np
    data = np.arange(6.0).reshape(2, 3)
    calls = [lambda lib, x: x.sum(0, True), lambda lib, x: lib.sum(x, 1, False),
             lambda lib, x: x.max(1, True).values, lambda lib, x: lib.std(x, 1, keepdim=True),
             lambda lib, x: lib.linalg.vector_norm(x, 2, 0, True), lambda lib, x: x.mean()]
    for call in calls:
        want = call(torch, torch.tensor(data)).numpy()
        got = call(kiln, kiln.tensor(data)).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_numpy_spellings_keepdims_and_axis_give_torchs_values() -> None:
    """PyTorch's argument parser takes NumPy's `keepdims=` and `axis=` for a reduction's
    keepdim and dim (makemore's `P /= P.sum(1, keepdims=True)`); both spellings of one
    argument at once is refused, as there."""
    import numpy as np
    data = np.arange(24.0).reshape(2, 3, 4)
    calls = [lambda lib, x: x.sum(1, keepdims=True), lambda lib, x: lib.sum(x, axis=2),
             lambda lib, x: x.mean(axis=(0, 2), keepdims=True),
             lambda lib, x: x.max(axis=1, keepdims=True).values,
             lambda lib, x: lib.amax(x, axis=0, keepdims=False),
             lambda lib, x: lib.std(x, axis=1, keepdims=True),
             lambda lib, x: x.logsumexp(axis=-1, keepdims=True),
             lambda lib, x: (x > 3).any(axis=2, keepdims=True),
             lambda lib, x: x.argmax(axis=1, keepdims=True)]
    for call in calls:
        want = call(torch, torch.tensor(data)).numpy()
        got = call(kiln, kiln.tensor(data)).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12)
    for lib in (torch, kiln):
        with pytest.raises(TypeError, match="unexpected keyword argument 'keepdims'"):
            lib.ones(2, 3).sum(1, keepdim=True, keepdims=True)
