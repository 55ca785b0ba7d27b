"""kiln.testing against torch.testing: assert_close fails exactly when PyTorch's does, with the
same exception type, the same message (its numbers parsed and compared), and make_tensor
honours its shape, dtype, bounds and flags."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.testing

import kiln
import kiln.testing

NAN, INF = float("nan"), float("inf")
NUMBER = r"-?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"


def outcome(assert_fn, actual, expected, **kwargs) -> tuple[type | None, str]:
    """(the exception type assert_fn raised or None, its message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert_fn(actual, expected, **kwargs)
    except Exception as error:      # noqa: BLE001 (which type is what the test compares)
        return type(error), str(error)
    return None, ""


def normalized(message: str) -> str:
    """A message with the library's names made neutral: torch.float32 and kiln.float32 read
    `<lib>.float32`, a tensor class `<Tensor class>`."""
    message = re.sub(r"<class '[\w.]*(Tensor|Parameter)'>", r"<\1 class>", message)
    return message.replace("torch.", "<lib>.").replace("kiln.", "<lib>.")


def numbers(message: str) -> list[float]:
    """Every number of the message (counts, differences, indices, tolerances) in order."""
    return [float(x) for x in re.findall(NUMBER, message)]


def assert_same_outcome(build, kwargs: dict, assert_torch=torch.testing.assert_close,
                        assert_kiln=kiln.testing.assert_close) -> None:
    raised_t, text_t = outcome(assert_torch, *build(torch), **kwargs)
    raised_k, text_k = outcome(assert_kiln, *build(kiln), **kwargs)
    assert raised_k is raised_t, f"kiln: {raised_k} {text_k!r}\ntorch: {raised_t} {text_t!r}"
    if raised_t is None:
        return
    text_t, text_k = normalized(text_t), normalized(text_k)
    assert text_k.splitlines()[0] == text_t.splitlines()[0]
    # the same text around the numbers, and the same numbers
    assert re.sub(NUMBER, "#", text_k) == re.sub(NUMBER, "#", text_t), (text_k, text_t)
    # exactly: the differences are computed in the same dtypes as PyTorch's
    for ours, theirs in zip(numbers(text_k), numbers(text_t), strict=True):
        assert ours == theirs or math.isnan(ours) and math.isnan(theirs), (text_k, text_t)


def tolerance_lines(message: str) -> dict:
    """The parsed "Mismatched elements" and "Greatest ... difference" lines."""
    found = {}
    m = re.search(r"Mismatched elements: (\d+) / (\d+)", message)
    if m:
        found["mismatched"] = (int(m[1]), int(m[2]))
    for kind in ("absolute", "relative"):
        m = re.search(rf"Greatest {kind} difference: ({NUMBER}) at index (\([\d, ]*\))", message)
        if m:
            found[kind] = (float(m[1]), m[2])
    return found


# Each case builds (actual, expected) from a library (`m` is torch or kiln), so both sides get
# the same inputs made natively: the same values, dtypes, strides and subclasses.
CASES = [
    ("close", lambda m: (m.tensor([1.0, 2.0, 3.0]), m.tensor([1.0, 2.0 + 1e-7, 3.0])), {}),
    ("not close by rtol", lambda m: (m.tensor([1.0, 2.0, 3.0]), m.tensor([1.0, 2.1, 3.0])), {}),
    ("not close by atol", lambda m: (m.tensor([0.0, 1e-4]), m.tensor([0.0, 0.0])), {}),
    ("within atol", lambda m: (m.tensor([0.0, 1e-6]), m.tensor([0.0, 0.0])), {}),
    ("2d, several mismatches",
     lambda m: (m.tensor([[1.0, 2.0], [4.0, 8.0]]), m.tensor([[1.3, 2.1], [4.5, 8.0]])), {}),
    ("relative wins elsewhere", lambda m: (m.tensor([1.0, -2.0, 4.0]), m.tensor([-1.0, 2.0, -4.0])),
     {}),
    ("nan without equal_nan", lambda m: (m.tensor([1.0, NAN]), m.tensor([1.0, NAN])), {}),
    ("nan with equal_nan", lambda m: (m.tensor([1.0, NAN]), m.tensor([1.0, NAN])),
     dict(equal_nan=True)),
    ("nan against a number", lambda m: (m.tensor([NAN, 1.0]), m.tensor([1.0, NAN])),
     dict(equal_nan=True)),
    ("inf equals inf", lambda m: (m.tensor([INF, -INF]), m.tensor([INF, -INF])), {}),
    ("inf against -inf", lambda m: (m.tensor([1.0, INF]), m.tensor([1.0, -INF])), {}),
    ("inf against a number", lambda m: (m.tensor([1.0, INF]), m.tensor([1.0, 1e38])),
     dict(rtol=1.0, atol=1.0)),
    ("zero expected", lambda m: (m.tensor([0.0, 1.0]), m.tensor([1e-9, 0.0])), {}),
    ("shape mismatch", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0, 3.0])), {}),
    ("shape, not broadcast", lambda m: (m.tensor([1.0, 2.0]), m.tensor([[1.0, 2.0]])), {}),
    ("dtype mismatch", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0], dtype=m.float64)),
     {}),
    ("dtype unchecked, equal",
     lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0], dtype=m.float64)),
     dict(check_dtype=False)),
    ("dtype unchecked, float16 tolerance",
     lambda m: (m.tensor([1.0, 2.0], dtype=m.float16), m.tensor([1.0, 2.001])),
     dict(check_dtype=False)),
    ("dtype unchecked, too far for float16",
     lambda m: (m.tensor([1.0, 2.0], dtype=m.float16), m.tensor([1.0, 2.01])),
     dict(check_dtype=False)),
    ("dtype unchecked, int against float",
     lambda m: (m.tensor([1, 2]), m.tensor([1.0, 2.01])), dict(check_dtype=False)),
    ("dtype unchecked, int64 against float16",
     lambda m: (m.tensor([1, 2, 3]), m.tensor([1.0, 2.01, 3.0], dtype=m.float16)),
     dict(check_dtype=False)),
    ("dtype unchecked, int32 against uint8",
     lambda m: (m.tensor([1, 2], dtype=m.int32), m.tensor([1, 3], dtype=m.uint8)),
     dict(check_dtype=False)),
    ("float16 tolerance", lambda m: (m.tensor([1.0, 2.0], dtype=m.float16),
                                     m.tensor([1.0, 2.01], dtype=m.float16)), {}),
    ("float64 tolerance", lambda m: (m.tensor([1.0, 2.0], dtype=m.float64),
                                     m.tensor([1.0, 2.0 + 1e-6], dtype=m.float64)), {}),
    ("integers exact", lambda m: (m.tensor([1, 2, 3]), m.tensor([1, 2, 4])), {}),
    ("integers equal", lambda m: (m.tensor([1, 2, 3]), m.tensor([1, 2, 3])), {}),
    ("uint8 does not wrap",
     lambda m: (m.tensor([10, 20], dtype=m.uint8), m.tensor([11, 20], dtype=m.uint8)), {}),
    ("int64 beyond float32",
     lambda m: (m.tensor([1, 2 ** 40]), m.tensor([1, 2 ** 40 + 1])), {}),
    ("integers with tolerances", lambda m: (m.tensor([10, 20]), m.tensor([11, 20])),
     dict(rtol=0.05, atol=0.0)),
    ("bool tensors", lambda m: (m.tensor([True, False]), m.tensor([True, True])), {}),
    ("0-d bool tensors", lambda m: (m.tensor(True), m.tensor(False)), {}),
    ("0-d tensors", lambda m: (m.tensor(1.0), m.tensor(2.0)), {}),
    ("0-d tensors promoted", lambda m: (m.tensor(1.0), m.tensor(2)), dict(check_dtype=False)),
    ("1-element tensors", lambda m: (m.tensor([1.0]), m.tensor([2.0])), {}),
    ("empty tensors", lambda m: (m.tensor([]), m.tensor([])), {}),
    ("large float32", lambda m: (m.tensor([1e38, -1e38]), m.tensor([-1e38, 1e38])), {}),
    ("explicit rtol and atol pass", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])),
     dict(rtol=0.0, atol=0.6)),
    ("explicit atol fails", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])),
     dict(rtol=0, atol=0.4)),
    ("explicit rtol fails", lambda m: (m.tensor([1.0, 2.0, 3.0]), m.tensor([1.1, 2.2, 3.3])),
     dict(rtol=0.05, atol=0.0)),
    ("zero tolerances say equal", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])),
     dict(rtol=0, atol=0)),
    ("only rtol", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0])), dict(rtol=1.0)),
    ("only atol", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0])), dict(atol=1.0)),
    ("only atol, msg given", lambda m: (m.tensor([1.0]), m.tensor([1.0])),
     dict(atol=1.0, msg="custom")),
    ("only rtol, nested", lambda m: ([m.tensor([1.0])], [m.tensor([1.0])]), dict(rtol=1.0)),
    ("msg string", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 3.0])), dict(msg="custom")),
    ("msg string on shape", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0])),
     dict(msg="custom")),
    ("msg callable", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 3.0])),
     dict(msg=lambda text: f"<{text}>")),
    ("msg callable, nested", lambda m: ([1, m.tensor([1.0, 2.0])], [1, m.tensor([1.0, 3.0])]),
     dict(msg=lambda text: f"<{text}>")),
    ("msg ignored for structure", lambda m: ([[1, 2]], [[1, 2, 3]]), dict(msg="custom")),
    ("requires_grad, close", lambda m: (m.tensor([1.0, 2.0], requires_grad=True),
                                        m.tensor([1.0, 2.0])), {}),
    ("requires_grad, not close", lambda m: (m.tensor([1.0, 2.0], requires_grad=True),
                                            m.tensor([1.0, 2.5], requires_grad=True)), {}),
    ("requires_grad, non-leaf", lambda m: (m.tensor([1.0, 2.0], requires_grad=True) * 2,
                                           m.tensor([2.0, 4.5])), {}),
    ("stride unchecked", lambda m: (m.tensor([[1.0, 2.0], [3.0, 4.0]]).t(),
                                    m.tensor([[1.0, 3.0], [2.0, 4.0]])), {}),
    ("stride checked", lambda m: (m.tensor([[1.0, 2.0], [3.0, 4.0]]).t(),
                                  m.tensor([[1.0, 3.0], [2.0, 4.0]])), dict(check_stride=True)),
    ("stride before dtype", lambda m: (m.tensor([[1, 2], [3, 4]], dtype=m.int32).t(),
                                       m.tensor([[1.0, 3.0], [2.0, 4.0]])),
     dict(check_stride=True)),
    ("parameter against tensor", lambda m: (m.nn.Parameter(m.tensor([1.0, 2.0])),
                                            m.tensor([1.0, 2.0])), {}),
    ("subclasses refused", lambda m: (m.nn.Parameter(m.tensor([1.0, 2.0])),
                                      m.tensor([1.0, 2.0])), dict(allow_subclasses=False)),
    # Python and NumPy scalars
    ("floats close", lambda m: (1.0, 1.0 + 1e-9), {}),
    ("floats not close", lambda m: (1.0, 1.1), {}),
    ("ints not equal", lambda m: (1, 3), {}),
    ("int against zero", lambda m: (1, 0), {}),
    ("float against zero", lambda m: (1.0, 0.0), {}),
    ("int against float", lambda m: (1, 1.0), {}),
    ("int against float unchecked", lambda m: (1, 1.5), dict(check_dtype=False)),
    ("complex", lambda m: (1 + 2j, 1 + 3j), {}),
    ("scalar nans", lambda m: (NAN, NAN), {}),
    ("scalar nans equal", lambda m: (NAN, NAN), dict(equal_nan=True)),
    ("scalar infs", lambda m: (INF, INF), {}),
    ("scalar inf against -inf", lambda m: (INF, -INF), {}),
    ("scalar with tolerances", lambda m: (1, 2), dict(rtol=0.1, atol=0.1)),
    ("numpy scalars", lambda m: (np.float32(1.0), np.float32(1.5)), {}),
    ("numpy scalars of two widths", lambda m: (np.float32(1.0), np.float64(1.0)), {}),
    ("numpy int and int", lambda m: (np.int64(1), 1), {}),
    ("booleans", lambda m: (True, False), {}),
    ("booleans equal", lambda m: (np.bool_(True), True), {}),
    ("none", lambda m: (None, None), {}),
    ("none against a number", lambda m: (None, 1), {}),
    ("tensor against a number", lambda m: (m.tensor(1.0), 1.0), {}),
    ("tensor against a list", lambda m: (m.tensor([1.0, 2.0]), [1.0, 2.0]), {}),
    ("strings", lambda m: ("a", "a"), {}),
    # NumPy arrays
    ("numpy arrays", lambda m: (np.array([1.0, 2.0]), np.array([1.0, 3.0])), {}),
    ("numpy arrays close", lambda m: (np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9])), {}),
    ("numpy int arrays", lambda m: (np.array([1, 2]), np.array([1, 3])), {}),
    ("numpy 0-d arrays", lambda m: (np.array(1.0), np.array(2.0)), {}),
    ("numpy float32 arrays", lambda m: (np.array([1.0, 2.0], dtype=np.float32),
                                        np.array([1.0, 2.1], dtype=np.float32)), {}),
    ("numpy array against a tensor", lambda m: (np.array([1.0, 2.0]), m.tensor([1.0, 2.0])), {}),
    # sequences and mappings
    ("lists", lambda m: ([m.tensor([1.0, 2.0]), m.tensor([1.0, 3.0])],
                         [m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0])]), {}),
    ("list against tuple", lambda m: ((1.0, m.tensor([2.0])), [1.0, m.tensor([2.0])]), {}),
    ("tuples of floats", lambda m: ((1.0, 2.0), (1.0, 2.5)), {}),
    ("nested lists of floats", lambda m: ([[1.0, 2.0]], [[1.0, 2.5]]), {}),
    ("dicts", lambda m: ({"a": m.tensor([1.0, 2.0])}, {"a": m.tensor([1.0, 3.0])}), {}),
    ("dict keys differ", lambda m: ({"b": 1, "a": 2, "c": 3}, {"a": 1, "d": 2, "e": 3}), {}),
    ("dict reports sorted first key", lambda m: ({"b": m.tensor([1.0]), "a": m.tensor([2.0])},
                                                 {"a": m.tensor([3.0]), "b": m.tensor([2.0])}),
     {}),
    ("deep nesting", lambda m: ([m.tensor([1.0]), [m.tensor([1.0]), {"k": m.tensor([3.0])}]],
                                [m.tensor([1.0]), [m.tensor([1.0]), {"k": m.tensor([4.0])}]]),
     {}),
    ("deep shape mismatch", lambda m: ([[m.tensor([1.0])], {"k": m.tensor([3.0])}],
                                       [[m.tensor([1.0])], {"k": m.tensor([3.0, 4.0])}]), {}),
    ("sequence lengths", lambda m: ([1, 2], [1, 2, 3]), {}),
    ("nested sequence lengths", lambda m: ([1, [1, 2]], [2, [1, 2, 3]]), {}),
    ("structure before values", lambda m: ([m.tensor([1.0]), m.tensor([1.0, 2.0])],
                                           [m.tensor([2.0]), m.tensor([1.0])]), {}),
    ("type error before values", lambda m: ([1, "a"], [2, "a"]), {}),
    ("dict against list", lambda m: ({"a": 1}, [1]), {}),
    ("first failing item reported", lambda m: ([m.tensor([1.0]), m.tensor([1.0, 2.0])],
                                               [m.tensor([2.0]), m.tensor([1.0, 3.0])]), {}),
]


@pytest.mark.parametrize("build, kwargs", [pytest.param(b, k, id=i) for i, b, k in CASES])
def test_assert_close_matches_torch(build, kwargs):
    assert_same_outcome(build, kwargs)


def test_mismatch_statistics_are_parsed_from_both():
    # the numbers the parity test compares, spelled out once for a case with known answers
    build = lambda m: (m.tensor([[1.0, 2.0], [4.0, 8.0]]), m.tensor([[1.3, 2.1], [4.5, 8.0]]))
    _, text_t = outcome(torch.testing.assert_close, *build(torch))
    _, text_k = outcome(kiln.testing.assert_close, *build(kiln))
    ours, theirs = tolerance_lines(text_k), tolerance_lines(text_t)
    assert ours == theirs
    assert ours["mismatched"] == (3, 4)
    assert ours["absolute"][1] == "(1, 0)" and ours["relative"][1] == "(0, 0)"
    assert math.isclose(ours["absolute"][0], 0.5, rel_tol=1e-6)


def test_messages_name_kiln_types():
    with pytest.raises(AssertionError) as shape:
        kiln.testing.assert_close(kiln.tensor([1.0]), kiln.tensor([1.0, 2.0]))
    assert str(shape.value) == ("The values for attribute 'shape' do not match: "
                                "kiln.Size([1]) != kiln.Size([2]).")
    with pytest.raises(AssertionError, match=r"kiln.float32 != kiln.int64\.$"):
        kiln.testing.assert_close(kiln.tensor([1.0]), kiln.tensor([1]))
    with pytest.raises(AssertionError, match=r"numpy.float32 != numpy.float64\.$"):
        kiln.testing.assert_close(np.zeros(2, np.float32), np.zeros(2))


def test_sparse_tensors_compare_by_value_and_layout():
    dense = kiln.tensor([[0.0, 1.0], [2.0, 0.0]])
    kiln.testing.assert_close(dense.to_sparse(), dense.to_sparse())
    with pytest.raises(AssertionError, match="attribute 'layout' do not match"):
        kiln.testing.assert_close(dense.to_sparse(), dense)
    kiln.testing.assert_close(dense.to_sparse(), dense, check_layout=False)
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 4"):
        kiln.testing.assert_close(dense.to_sparse(), dense * kiln.tensor([1.0, 2.0]),
                                  check_layout=False)


def test_requires_grad_inputs_are_left_alone():
    x = kiln.tensor([1.0, 2.0], requires_grad=True)
    kiln.testing.assert_close(x, kiln.tensor([1.0, 2.0]))
    assert x.grad is None and x.requires_grad and x.grad_fn is None


def test_noncontiguous_inputs_compare_their_values():
    wide = kiln.arange(12.0).reshape(3, 4)
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    kiln.testing.assert_close(strided, kiln.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]))
    with pytest.raises(AssertionError, match=r"at index \(2, 1\)"):
        kiln.testing.assert_close(strided, kiln.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 11.0]]))


@pytest.mark.gpu
def test_cuda_tensors_are_compared_on_the_host():
    on_gpu = kiln.tensor([1.0, 2.0], device="cuda")
    kiln.testing.assert_close(on_gpu, kiln.tensor([1.0, 2.0], device="cuda"))
    with pytest.raises(AssertionError, match=r"attribute 'device' do not match: cuda:0 != cpu\."):
        kiln.testing.assert_close(on_gpu, kiln.tensor([1.0, 2.0]))
    kiln.testing.assert_close(on_gpu, kiln.tensor([1.0, 2.0]), check_device=False)
    with pytest.raises(AssertionError, match="attribute 'device'"):     # before the dtype
        kiln.testing.assert_close(on_gpu, kiln.tensor([1.0, 2.0], dtype=kiln.float64))
    with pytest.raises(AssertionError, match="Greatest absolute difference: 1.0 at index"):
        kiln.testing.assert_close(on_gpu, kiln.tensor([1.0, 3.0]), check_device=False)


ALLCLOSE_CASES = [
    ("float32 loose rtol", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0001])), {}),
    ("float32 too far", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.001])), {}),
    ("float64 tighter atol", lambda m: (m.tensor([0.0], dtype=m.float64),
                                        m.tensor([2e-8], dtype=m.float64)), {}),
    ("float16", lambda m: (m.tensor([1.0, 2.0], dtype=m.float16),
                           m.tensor([1.0, 2.002], dtype=m.float16)), {}),
    ("dtypes unchecked", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.0], dtype=m.float64)),
     {}),
    ("nan equal by default", lambda m: (m.tensor([1.0, NAN]), m.tensor([1.0, NAN])), {}),
    ("nan unequal on request", lambda m: (m.tensor([1.0, NAN]), m.tensor([1.0, NAN])),
     dict(equal_nan=False)),
    ("list expected", lambda m: (m.tensor([1.0, 2.0]), [1.0, 2.001]), {}),
    ("lists both", lambda m: ([1.0, 2.0], [1.0, 2.001]), {}),
    ("int tensor, float list", lambda m: (m.tensor([1, 2]), [1, 2.5]), {}),
    ("scalars", lambda m: (2.0, 2.001), {}),
    ("scalar against a vector", lambda m: (m.tensor([1.0, 2.0]), 2.0), {}),
    ("msg", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])), dict(msg="custom")),
    ("only rtol", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])), dict(rtol=0.1)),
    ("explicit tolerances", lambda m: (m.tensor([1.0, 2.0]), m.tensor([1.0, 2.5])),
     dict(rtol=0.1, atol=0.5)),
]


@pytest.mark.parametrize("build, kwargs", [pytest.param(b, k, id=i) for i, b, k in ALLCLOSE_CASES])
def test_assert_allclose_matches_torch(build, kwargs):
    assert_same_outcome(build, kwargs, torch.testing.assert_allclose,
                        kiln.testing.assert_allclose)


def test_assert_allclose_is_deprecated():
    with pytest.warns(FutureWarning, match="assert_close"):
        kiln.testing.assert_allclose(kiln.tensor([1.0]), kiln.tensor([1.0]))


def test_kiln_testing_does_not_import_torch():
    code = "import sys, kiln.testing; assert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# ----------------------------------------------------------------------------- make_tensor
ALL_DTYPES = [kiln.bool, kiln.uint8, kiln.int32, kiln.int64, kiln.float16, kiln.float32,
              kiln.float64]
FLOAT_DTYPES = [kiln.float16, kiln.float32, kiln.float64]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_make_tensor_shape_dtype_device(dtype):
    for shape_args, shape in [((2, 3), (2, 3)), (((2, 3),), (2, 3)), (([4],), (4,)),
                              ((kiln.Size([1, 2, 3]),), (1, 2, 3)), ((), ()), ((0, 3), (0, 3))]:
        t = kiln.testing.make_tensor(*shape_args, dtype=dtype, device="cpu")
        assert isinstance(t, kiln.Tensor)
        assert t.shape == shape and t.dtype is dtype and t.device == kiln.device("cpu")
        assert t.is_contiguous() and not t.requires_grad


@pytest.mark.parametrize("dtype, low, high", [
    (kiln.uint8, 0, 10), (kiln.int32, -9, 10), (kiln.int64, -9, 10), (kiln.float16, -9, 9),
    (kiln.float32, -9, 9), (kiln.float64, -9, 9)], ids=str)
def test_make_tensor_default_bounds(dtype, low, high):
    values = kiln.testing.make_tensor(4000, dtype=dtype, device="cpu").numpy()
    assert values.min() >= low and values.max() <= high
    if dtype.is_floating_point:
        assert values.max() > high - 1 and values.min() < low + 1    # the range is used
    else:
        assert values.max() == high - 1 and values.min() == low      # high is exclusive


@pytest.mark.parametrize("dtype", [kiln.int32, kiln.int64, kiln.uint8], ids=str)
def test_make_tensor_integer_bounds(dtype):
    values = kiln.testing.make_tensor(2000, dtype=dtype, device="cpu", low=3, high=7).numpy()
    assert set(values.tolist()) == {3, 4, 5, 6}
    # a fractional low is rounded up, high stays exclusive after rounding up
    values = kiln.testing.make_tensor(2000, dtype=dtype, device="cpu", low=2.5, high=4.5).numpy()
    assert set(values.tolist()) == {3, 4}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_make_tensor_float_bounds(dtype):
    values = kiln.testing.make_tensor(2000, dtype=dtype, device="cpu", low=-0.5,
                                      high=0.25).numpy()
    assert values.min() >= -0.5 and values.max() <= 0.25
    assert values.min() < -0.4 and values.max() > 0.15
    if dtype is not kiln.float16:       # float16 may round a draw up to high itself
        assert values.max() < 0.25


def test_make_tensor_bool_and_clamping():
    values = kiln.testing.make_tensor(500, dtype=kiln.bool, device="cpu").numpy()
    assert values.dtype == np.bool_ and values.any() and not values.all()
    # bounds beyond the dtype are clamped to it
    values = kiln.testing.make_tensor(3000, dtype=kiln.uint8, device="cpu", low=-100,
                                      high=1000).numpy()
    assert values.min() == 0 and values.max() == 255
    huge = kiln.testing.make_tensor(100, dtype=kiln.float16, device="cpu", low=-1e9, high=1e9)
    assert np.isfinite(huge.numpy()).all() and np.abs(huge.numpy()).max() > 1000


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_make_tensor_exclude_zero(dtype):
    if dtype.is_floating_point:
        # draws below float64's smallest subnormal round to 0 or to it (in float16 and float32
        # always to 0): zeros are common, and each is replaced by the dtype's `tiny`
        smallest = 5e-324
        plain = kiln.testing.make_tensor(200, dtype=dtype, device="cpu", low=0.0, high=smallest)
        assert (plain.numpy() == 0).any()
        kept = kiln.testing.make_tensor(200, dtype=dtype, device="cpu", low=0.0, high=smallest,
                                        exclude_zero=True).numpy()
        tiny = kiln.finfo(dtype).tiny
        assert (kept != 0).all() and (kept == tiny).any()
        assert ((kept == tiny) | (kept == smallest)).all()
    else:
        kept = kiln.testing.make_tensor(500, dtype=dtype, device="cpu", low=0, high=2,
                                        exclude_zero=True).numpy()
        assert (kept != 0).all() and (kept == 1).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_make_tensor_requires_grad(dtype):
    t = kiln.testing.make_tensor(3, 2, dtype=dtype, device="cpu", requires_grad=True)
    assert t.requires_grad and t.is_leaf
    (t * 2).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.full((3, 2), 2, dtype.np))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_make_tensor_noncontiguous(dtype):
    t = kiln.testing.make_tensor(4, 5, dtype=dtype, device="cpu", noncontiguous=True,
                                 requires_grad=dtype.is_floating_point)
    assert t.shape == (4, 5) and t.dtype is dtype and not t.is_contiguous()
    assert t.requires_grad is dtype.is_floating_point and t.is_leaf
    assert len(np.unique(t.detach().numpy())) > 1
    assert t.contiguous().is_contiguous()
    # too few elements to be noncontiguous: PyTorch makes it contiguous too
    for shape in [(1,), (1, 1), ()]:
        small = kiln.testing.make_tensor(shape, dtype=dtype, device="cpu", noncontiguous=True)
        assert small.shape == shape and small.is_contiguous()


def test_make_tensor_is_reproducible_under_manual_seed():
    kiln.manual_seed(7)
    first = kiln.testing.make_tensor(10, dtype=kiln.float32, device="cpu")
    kiln.manual_seed(7)
    second = kiln.testing.make_tensor(10, dtype=kiln.float32, device="cpu")
    kiln.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("dtype_name, kwargs", [
    ("int32", dict(low=3, high=2)),
    ("int32", dict(low=3, high=3)),
    ("float32", dict(low=NAN)),
    ("float32", dict(high=NAN)),
    ("uint8", dict(low=-20, high=-10)),
    ("int32", dict(requires_grad=True)),
    ("bool", dict(requires_grad=True)),
])
def test_make_tensor_errors_match_torch(dtype_name, kwargs):
    with pytest.raises(ValueError) as theirs:
        torch.testing.make_tensor(3, dtype=getattr(torch, dtype_name), device="cpu", **kwargs)
    with pytest.raises(ValueError) as ours:
        kiln.testing.make_tensor(3, dtype=getattr(kiln, dtype_name), device="cpu", **kwargs)
    assert normalized(str(ours.value)) == normalized(str(theirs.value))


def test_make_tensor_lays_out_a_memory_format_as_torch():
    ours = kiln.testing.make_tensor(2, 3, 4, 5, dtype=kiln.float32, device="cpu",
                                    memory_format=kiln.channels_last)
    theirs = torch.testing.make_tensor(2, 3, 4, 5, dtype=torch.float32, device="cpu",
                                       memory_format=torch.channels_last)
    assert ours.stride() == theirs.stride()
    assert ours.is_contiguous(memory_format=kiln.channels_last)


def test_make_tensor_refusals():
    with pytest.raises(ValueError, match="mutually exclusive"):
        kiln.testing.make_tensor(3, dtype=kiln.float32, device="cpu", noncontiguous=True,
                                 memory_format="channels_last")
    with pytest.raises(RuntimeError, match="rank 4"):
        kiln.testing.make_tensor(3, dtype=kiln.float32, device="cpu",
                                 memory_format=kiln.channels_last)
    with pytest.raises(TypeError, match="kiln dtype"):
        kiln.testing.make_tensor(3, dtype=np.float32, device="cpu")
    with pytest.warns(FutureWarning, match="low==high"):
        same = kiln.testing.make_tensor(3, dtype=kiln.float32, device="cpu", low=2, high=2)
    assert (same.numpy() == 2).all()


@pytest.mark.gpu
def test_make_tensor_on_cuda():
    t = kiln.testing.make_tensor(3, 4, dtype=kiln.float32, device="cuda", low=0, high=1,
                                 noncontiguous=True, exclude_zero=True)
    assert t.device == kiln.device("cuda") and t.shape == (3, 4) and not t.is_contiguous()
    values = t.cpu().numpy()
    assert values.min() > 0 and values.max() < 1
