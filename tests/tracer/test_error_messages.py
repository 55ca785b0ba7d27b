"""Refusals say what went wrong: where PyTorch raises, kiln raises the same exception type, and
its message names the op, the offending index, class, value, shapes or dtypes, and the
caller's `file:line`. Covers what used to give a silent wrong value (a negative index that
wrapped to the last row, a class past num_classes, probabilities outside [0, 1], integer
division by zero) and errors that named the wrong op (`add` for batch norm, `conv2d` with a
5-d shape for conv1d, a bare broadcast message for matmul).

The error must point at the lines of the case's call.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

import kiln


def F(lib):
    return torch.nn.functional if lib is torch else kiln.nn.functional


X23 = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]

# name: (make a zero-argument call for `lib`, exception type, pieces the kiln message contains)
CASES = {
    # indices that PyTorch refuses (a negative one used to wrap to the last row)
    "gather_negative": (lambda L: lambda: L.gather(L.tensor(X23), 0, L.tensor([[-1, 0, 0]])),
                        RuntimeError, ["gather", "index -1", "dimension 0", "size 2"]),
    "gather_negative_dim1": (lambda L: lambda: L.gather(L.tensor(X23), 1, L.tensor([[-1], [0]])),
                             RuntimeError, ["gather", "index -1", "dimension 1", "size 3"]),
    "gather_first_offender": (lambda L: lambda: L.gather(L.ones(3), 0, L.tensor([1, 5, -1])),
                              RuntimeError, ["gather", "index 5", "size 3"]),
    "embedding_negative": (lambda L: lambda: F(L).embedding(L.tensor([-1]), L.tensor(X23)),
                           IndexError, ["embedding", "index out of range in self", "-1",
                                        "size 2"]),
    "embedding_too_large": (lambda L: lambda: F(L).embedding(L.tensor([[0, 3]]), L.ones(3, 2)),
                            IndexError, ["embedding", "index out of range in self", "3",
                                         "size 3"]),
    "embedding_module_negative": (lambda L: lambda: L.nn.Embedding(3, 2)(L.tensor([0, -1])),
                                  IndexError, ["embedding", "-1", "size 3"]),
    "index_select_negative": (lambda L: lambda: L.index_select(L.tensor(X23), 0, L.tensor([-1])),
                              IndexError, ["index_select", "index out of range in self", "-1",
                                           "size 2"]),
    "scatter_out_of_range": (lambda L: lambda: L.zeros(2, 3).scatter(
                                 0, L.tensor([[2, 0, 0]]), L.ones(1, 3)),
                             RuntimeError, ["scatter:", "index 2", "dimension 0", "size 2"]),
    "scatter_negative": (lambda L: lambda: L.zeros(2, 3).scatter(0, L.tensor([[-1, 0, 0]]), 1.0),
                         RuntimeError, ["scatter:", "index -1", "size 2"]),
    "scatter_add_negative": (lambda L: lambda: L.zeros(2, 3).scatter_add(
                                 0, L.tensor([[-1, 0, 0]]), L.ones(1, 3)),
                             RuntimeError, ["scatter_add", "index -1", "size 2"]),
    "scatter_add_out_of_range": (lambda L: lambda: L.scatter_add(
                                     L.zeros(2, 3), 1, L.tensor([[3]]), L.ones(1, 1)),
                                 RuntimeError, ["scatter_add", "index 3", "dimension 1",
                                                "size 3"]),
    "index_add_negative": (lambda L: lambda: L.zeros(2, 3).index_add(
                               0, L.tensor([-1]), L.ones(1, 3)),
                           RuntimeError, ["index_add", "index -1", "size 2"]),
    "index_copy_negative": (lambda L: lambda: L.zeros(2, 3).index_copy(
                                0, L.tensor([-1]), L.ones(1, 3)),
                            IndexError, ["index_copy", "index -1", "size 2"]),
    "take_out_of_range": (lambda L: lambda: L.take(L.tensor(X23), L.tensor([-7])), IndexError,
                          ["take", "index -7", "6 elements"]),
    "tensor_index_out_of_range": (lambda L: lambda: L.tensor(X23)[:, L.tensor([3])], IndexError,
                                  ["index", "index 3", "size 3"]),
    "nll_loss_target": (lambda L: lambda: F(L).nll_loss(L.zeros(2, 3), L.tensor([3, 0])),
                        IndexError, ["nll_loss", "Target 3 is out of bounds", "[0, 3)"]),
    "cross_entropy_target": (lambda L: lambda: F(L).cross_entropy(
                                 L.zeros(2, 3), L.tensor([0, 3])),
                             IndexError, ["cross_entropy", "Target 3 is out of bounds"]),
    "cross_entropy_negative_target": (lambda L: lambda: F(L).cross_entropy(
                                          L.zeros(2, 3), L.tensor([-1, 0]), weight=L.ones(3)),
                                      IndexError, ["cross_entropy", "Target -1 is out of bounds"]),
    "cross_entropy_target_beside_ignored": (lambda L: lambda: F(L).cross_entropy(
                                                L.zeros(2, 3), L.tensor([5, -100])),
                                            IndexError, ["cross_entropy", "Target 5"]),
    # one_hot: a class outside [0, num_classes) used to give a row of zeros
    "one_hot_too_large": (lambda L: lambda: F(L).one_hot(L.tensor([0, 5]), 3), RuntimeError,
                          ["one_hot", "Class values must be smaller than num_classes", "5",
                           "num_classes=3"]),
    "one_hot_negative": (lambda L: lambda: F(L).one_hot(L.tensor([0, -1]), 3), RuntimeError,
                         ["one_hot", "Class values must be non-negative", "-1"]),
    "one_hot_negative_inferred_classes": (lambda L: lambda: F(L).one_hot(L.tensor([-2, 1])),
                                          RuntimeError, ["one_hot", "non-negative", "-2"]),
    # binary_cross_entropy: probabilities outside [0, 1] used to give NaN or a wrong loss
    "bce_input_above_one": (lambda L: lambda: F(L).binary_cross_entropy(
                                L.tensor([1.5, 0.5]), L.tensor([1.0, 0.0])),
                            RuntimeError, ["binary_cross_entropy", "input should be between 0 "
                                           "and 1", "1.5"]),
    "bce_input_negative": (lambda L: lambda: F(L).binary_cross_entropy(
                               L.tensor([-0.5, 0.5]), L.tensor([1.0, 0.0])),
                           RuntimeError, ["binary_cross_entropy", "input", "-0.5"]),
    "bce_input_nan": (lambda L: lambda: F(L).binary_cross_entropy(
                          L.tensor([float("nan"), 0.5]), L.tensor([1.0, 0.0])),
                      RuntimeError, ["binary_cross_entropy", "input", "nan"]),
    "bce_target_above_one": (lambda L: lambda: F(L).binary_cross_entropy(
                                 L.tensor([0.5, 0.5]), L.tensor([2.0, 0.0])),
                             RuntimeError, ["binary_cross_entropy", "target should be between "
                                            "0 and 1", "2.0"]),
    "bce_target_negative": (lambda L: lambda: F(L).binary_cross_entropy(
                                L.tensor([0.5, 0.5]), L.tensor([-1.0, 0.0])),
                            RuntimeError, ["binary_cross_entropy", "target", "-1.0"]),
    "bce_loss_module": (lambda L: lambda: L.nn.BCELoss()(L.tensor([[1.5, 0.5]]), L.ones(1, 2)),
                        RuntimeError, ["binary_cross_entropy", "input", "1.5", "[1, 2]"]),
    # integer division by zero used to give 0
    "floordiv_tensor_zero": (lambda L: lambda: L.tensor([5, 3]) // L.tensor([0, 1]),
                             RuntimeError, ["floor_divide", "ZeroDivisionError", "int64",
                                            "[2]"]),
    "floordiv_number_zero": (lambda L: lambda: L.tensor([5, 3]) // 0, RuntimeError,
                             ["floor_divide", "ZeroDivisionError", "number 0"]),
    "remainder_tensor_zero": (lambda L: lambda: L.tensor([5, 3]) % L.tensor([1, 0]),
                              RuntimeError, ["remainder", "ZeroDivisionError"]),
    "remainder_number_zero": (lambda L: lambda: L.remainder(L.tensor([5, 3]), 0), RuntimeError,
                              ["remainder", "ZeroDivisionError"]),
    "fmod_zero": (lambda L: lambda: L.fmod(L.tensor([5, 3]), L.tensor([0, 1])), RuntimeError,
                  ["fmod", "ZeroDivisionError"]),
    "fmod_number_zero": (lambda L: lambda: L.fmod(L.tensor([5, 3]), 0), RuntimeError,
                         ["fmod", "ZeroDivisionError"]),
    "div_trunc_zero": (lambda L: lambda: L.div(
                           L.tensor([5, 3]), L.tensor([0, 1]), rounding_mode="trunc"),
                       RuntimeError, ["div", "ZeroDivisionError"]),
    "div_floor_zero": (lambda L: lambda: L.div(L.tensor([5, 3]), 0, rounding_mode="floor"),
                       RuntimeError, ["div", "ZeroDivisionError"]),
    "uint8_floordiv_zero": (lambda L: lambda: L.floor_divide(
                                L.tensor([5], dtype=L.uint8), L.tensor([0], dtype=L.uint8)),
                            RuntimeError, ["floor_divide", "ZeroDivisionError", "uint8"]),
    # errors that named the wrong op, or no shapes
    "matmul_batch_dims": (lambda L: lambda: L.matmul(L.zeros(2, 4, 5), L.zeros(3, 5, 6)),
                          RuntimeError, ["matmul", "[2, 4, 5]", "[3, 5, 6]"]),
    "matmul_batched_inner": (lambda L: lambda: L.zeros(2, 4, 5) @ L.zeros(2, 4, 6),
                             RuntimeError, ["matmul", "4x5", "4x6", "[2, 4, 5]", "[2, 4, 6]"]),
    "bmm_inner": (lambda L: lambda: L.bmm(L.zeros(2, 4, 5), L.zeros(2, 4, 6)), RuntimeError,
                  ["bmm", "[2, 4, 5]", "[2, 4, 6]"]),
    "linear_in_features": (lambda L: lambda: L.nn.Linear(4, 3)(L.zeros(2, 5)), RuntimeError,
                           ["linear", "2x5", "4x3", "in_features=4"]),
    "conv1d_4d_input": (lambda L: lambda: L.nn.Conv1d(3, 4, 3)(L.zeros(1, 3, 5, 5)),
                        RuntimeError, ["conv1d", "2D (unbatched) or 3D (batched)",
                                       "[1, 3, 5, 5]"]),
    "conv2d_5d_input": (lambda L: lambda: L.nn.Conv2d(3, 4, 3)(L.zeros(1, 1, 3, 5, 5)),
                        RuntimeError, ["conv2d", "3D (unbatched) or 4D (batched)",
                                       "[1, 1, 3, 5, 5]"]),
    "conv1d_channels": (lambda L: lambda: L.nn.Conv1d(3, 4, 3)(L.zeros(1, 2, 5)), RuntimeError,
                        ["conv1d", "[4, 3, 3]", "[1, 2, 5]", "3 channels", "got 2"]),
    "conv_transpose1d_4d_input": (lambda L: lambda: L.nn.ConvTranspose1d(3, 4, 3)(
                                      L.zeros(1, 3, 5, 5)),
                                            RuntimeError, ["conv_transpose1d", "[1, 3, 5, 5]"]),
    "batchnorm1d_features": (lambda L: lambda: L.nn.BatchNorm1d(3)(L.zeros(4, 5)), RuntimeError,
                             ["batch_norm", "running_mean should contain 5 elements not 3",
                              "[4, 5]"]),
    "batchnorm1d_features_eval": (lambda L: lambda: L.nn.BatchNorm1d(3).eval()(L.zeros(4, 5)),
                                  RuntimeError, ["batch_norm", "5 elements not 3"]),
    "batchnorm2d_features": (lambda L: lambda: L.nn.BatchNorm2d(3)(L.zeros(2, 5, 2, 2)),
                             RuntimeError, ["batch_norm", "5 elements not 3", "[2, 5, 2, 2]"]),
    "layer_norm_shape": (lambda L: lambda: L.nn.LayerNorm(4)(L.zeros(2, 5)), RuntimeError,
                         ["layer_norm", "normalized_shape=[4]", "[2, 5]"]),
    "cross_entropy_batch": (lambda L: lambda: F(L).cross_entropy(
                                L.zeros(2, 3), L.tensor([1, 0, 1])),
                            ValueError, ["cross_entropy", "batch_size (2)", "batch_size (3)",
                                         "[2, 3]"]),
    "cross_entropy_spatial": (lambda L: lambda: F(L).cross_entropy(
                                  L.zeros(2, 3, 4), L.zeros(2, 5, dtype=L.int64)),
                              RuntimeError, ["cross_entropy", "[2, 4]", "[2, 5]", "[2, 3, 4]"]),
    "cross_entropy_probabilities": (lambda L: lambda: F(L).cross_entropy(
                                        L.zeros(2, 3), L.zeros(2, 4)),
                                    RuntimeError, ["cross_entropy", "[2, 3]", "[2, 4]"]),
    "nll_loss_batch": (lambda L: lambda: F(L).nll_loss(L.zeros(2, 3), L.tensor([1, 0, 1])),
                       ValueError, ["nll_loss", "batch_size (2)", "batch_size (3)"]),
    # where takes a bool condition (uint8 too, deprecated), as PyTorch
    "where_int64_condition": (lambda L: lambda: L.where(L.tensor([1, 0]), L.ones(2), L.zeros(2)),
                              RuntimeError, ["where", "boolean", "Long", "int64"]),
    "where_float_condition": (lambda L: lambda: L.where(L.tensor([1.0, 0.0]), 1.0, L.zeros(2)),
                              RuntimeError, ["where", "boolean", "Float"]),
    # einsum's repeated labels: a diagonal needs equal sizes; an output label appears once
    "einsum_repeated_label_sizes": (lambda L: lambda: L.einsum("ii->i", L.ones(2, 3)),
                                    RuntimeError, ["einsum", "'i'", "2 != 3"]),
    "einsum_repeated_output_label": (lambda L: lambda: L.einsum("ij->ii", L.ones(2, 2)),
                                     RuntimeError, ["einsum", "'ii'", "repeats"]),
    "einsum_sublist_label_range": (lambda L: lambda: L.einsum(L.ones(2), [60]),
                                   ValueError, ["einsum", "60", "[0, 52)"]),
}

_THIS_FILE = os.path.abspath(__file__)


@pytest.mark.parametrize("name", list(CASES))
def test_refusal_matches_torch_and_says_what_went_wrong(name) -> None:
    make, kind, pieces = CASES[name]
    with pytest.raises(Exception) as torch_err:
        make(torch)()
    assert type(torch_err.value) is kind, f"torch raises {type(torch_err.value).__name__}"
    call = make(kiln)
    with pytest.raises(Exception) as err:
        call()
    assert type(err.value) is kind, f"kiln raised {type(err.value).__name__}: {err.value}"
    message = str(err.value)
    for piece in pieces:
        assert piece in message, f"{piece!r} missing from {message!r}"
    where = re.search(r"\(at (.+):(\d+)\)$", message)
    assert where, f"no (at file:line) in {message!r}"
    lines = [line for _, _, line in call.__code__.co_lines() if line is not None]
    first, last = min(lines), max(lines)
    assert os.path.abspath(where.group(1)) == _THIS_FILE and first <= int(where.group(2)) <= last, \
        f"points at {where.group(1)}:{where.group(2)}, expected lines {first}-{last} of this file"


def test_index_select_at_other_dims_is_refused_too() -> None:
    # PyTorch raises IndexError at dim 0 and RuntimeError ("INDICES element is out of DATA
    # bounds") at some other dims, depending on its kernel: kiln always gives IndexError
    with pytest.raises(RuntimeError):
        torch.zeros(2, 3).index_select(1, torch.tensor([-1]))
    with pytest.raises(IndexError, match=r"index_select: .*index -1 .*dimension 1 with size 3"):
        kiln.zeros(2, 3).index_select(1, kiln.tensor([-1]))


def test_scatter_reduces_or_refuses_never_ignores_reduce() -> None:
    # reduce="multiply" once wrote src as if no reduce had been given
    index = [[1, 0, 0], [1, 1, 0]]
    got = kiln.full((2, 3), 3.0).scatter(0, kiln.tensor(index), 2.0, reduce="multiply")
    want = torch.full((2, 3), 3.0).scatter(0, torch.tensor(index), 2.0, reduce="multiply")
    assert got.tolist() == want.tolist()
    with pytest.raises(RuntimeError, match="scatter.*add or multiply"):
        kiln.ones(2, 3).scatter(0, kiln.tensor([[1, 0, 0]]), 2.0, reduce="max")
