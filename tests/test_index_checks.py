"""Every index kiln takes from a user is checked as PyTorch checks it: one table of index-taking
ops, each called with an index too large and one too negative, eagerly on the CPU, compiled
(the default backend and `backend="c"`) and on the fake CUDA. Where torch raises, kiln raises
the same class with torch's key phrase and the user's op in its message; where torch wraps a
negative index, kiln gives torch's value. Both computed in the test from torch 2.13.

A compiled case runs bad, good, bad, good: the trace and a replay both raise, and a failed call
leaves nothing behind that changes the next good one. `python tests/test_index_checks.py`
prints the table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

import kiln

I64 = np.int64


def f32(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def ints(*values):
    return np.array(values, dtype=I64)


def F(lib):
    return lib.nn.functional


@dataclass
class Row:
    name: str
    fn: Callable                 # fn(lib, *tensors)
    bad: list                    # numpy arrays: a bad (or wrapping negative) index among them
    good: list | None = None     # same shapes and dtypes, valid: a compiled replay's next call
    op: str = ""                 # the op kiln's message must name
    key: str = ""                # a phrase torch's message and kiln's both hold
    value: str = ""              # the bad value, named by kiln's message
    compiled: bool = True
    # where PyTorch reads the bad index unchecked (memory past the tensor), kiln raises this
    stricter: type | None = None


def large_and_negative(name, fn, large, negative, good, op, key, key_negative=None,
                       value_large="", value_negative="", compiled=True):
    """The two rows of one op: an index too large and one too negative (or, where torch wraps
    negatives, one in range that must give torch's value: key_negative "")."""
    return [Row(f"{name} too large", fn, large, good, op, key, value_large, compiled),
            Row(f"{name} negative", fn, negative, good, op,
                key if key_negative is None else key_negative, value_negative, compiled)]


M34 = f32(3, 4)
CTC = [f32(5, 2, 4), np.array([[1, 2, 3], [3, 1, 2]], I64)]    # log_probs (T, N, C), targets


def _ctc(m, log_probs, targets, input_lengths, target_lengths):
    return F(m).ctc_loss(log_probs.log_softmax(2), targets, input_lengths, target_lengths)


ROWS = [
    *large_and_negative(
        "gather", lambda m, x, i: m.gather(x, 1, i),
        [M34, np.array([[0, 4]] * 3, I64)], [M34, np.array([[0, -1]] * 3, I64)],
        [M34, np.array([[0, 3]] * 3, I64)], "gather", "out of bounds for dimension 1 with size 4",
        value_large="4", value_negative="-1"),
    *large_and_negative(
        "scatter", lambda m, x, i, s: x.scatter(1, i, s),
        [M34, np.array([[0, 4]] * 3, I64), f32(3, 2)],
        [M34, np.array([[0, -1]] * 3, I64), f32(3, 2)],
        [M34, np.array([[0, 3]] * 3, I64), f32(3, 2)], "scatter",
        "out of bounds for dimension 1 with size 4", value_large="4", value_negative="-1"),
    *large_and_negative(
        "scatter_add", lambda m, x, i, s: m.scatter_add(x, 0, i, s),
        [M34, np.array([[0, 3, 1, 2]], I64), f32(1, 4)],
        [M34, np.array([[0, -4, 1, 2]], I64), f32(1, 4)],
        [M34, np.array([[0, 2, 1, 2]], I64), f32(1, 4)], "scatter_add",
        "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4"),
    *large_and_negative(
        "scatter_reduce", lambda m, x, i, s: x.scatter_reduce(0, i, s, "amax"),
        [M34, np.array([[0, 3, 1, 2]], I64), f32(1, 4)],
        [M34, np.array([[0, -4, 1, 2]], I64), f32(1, 4)],
        [M34, np.array([[0, 2, 1, 2]], I64), f32(1, 4)], "scatter_reduce",
        "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4"),
    *large_and_negative(
        "index_select", lambda m, x, i: m.index_select(x, 0, i),
        [M34, ints(0, 3)], [M34, ints(0, -1)], [M34, ints(0, 2)], "index_select",
        "index out of range in self", value_large="3", value_negative="-1"),
    *large_and_negative(
        "index_add", lambda m, x, i, s: x.index_add(0, i, s),
        [M34, ints(0, 3), f32(2, 4)], [M34, ints(0, -4), f32(2, 4)],
        [M34, ints(0, 2), f32(2, 4)], "index_add",
        "out of bounds for dimension 0 with size 3", value_large="3",
        value_negative="-4"),
    *large_and_negative(
        "index_copy", lambda m, x, i, s: x.index_copy(0, i, s),
        [M34, ints(0, 3), f32(2, 4)], [M34, ints(0, -4), f32(2, 4)],
        [M34, ints(0, 2), f32(2, 4)], "index_copy",
        "out of bounds for dimension 0 with size 3", value_large="3",
        value_negative="-4"),
    *large_and_negative(
        "index_fill", lambda m, x, i: x.index_fill(0, i, 1.5),
        [M34, ints(0, 3)], [M34, ints(0, -4)], [M34, ints(0, -3)], "index_fill",
        "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4"),
    Row("index_fill negative in range (wraps)", lambda m, x, i: x.index_fill(0, i, 1.5),
        [M34, ints(0, -3)]),
    *[row for accumulate in (False, True) for row in large_and_negative(
        f"index_put accumulate={accumulate}",
        lambda m, x, i, v, a=accumulate: x.index_put((i,), v, accumulate=a),
        [M34, ints(0, 3), f32(2, 4)], [M34, ints(0, -4), f32(2, 4)],
        [M34, ints(0, 2), f32(2, 4)], "index_put",
        "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4")],
    # (a place written twice keeps which value torch leaves undefined, unless accumulated)
    *[Row(f"index_put accumulate={accumulate} negative in range (wraps)",
          lambda m, x, i, v, a=accumulate: x.index_put((i,), v, accumulate=a),
          [M34, places, f32(3, 4)])
      for accumulate, places in ((False, ints(1, -3, -1)), (True, ints(0, -3, -3)))],
    *large_and_negative(
        "index_reduce", lambda m, x, i, s: x.index_reduce(0, i, s, "prod"),
        [M34, ints(0, 3), f32(2, 4)], [M34, ints(0, -4), f32(2, 4)],
        [M34, ints(0, 2), f32(2, 4)], "index_reduce",
        "index out of range in self", value_large="3",
        value_negative="-4"),
    *large_and_negative(
        "take", lambda m, x, i: m.take(x, i), [M34, ints(0, 12)], [M34, ints(0, -13)],
        [M34, ints(0, 11)], "take", "out of range", value_large="12", value_negative="-13"),
    Row("take negative in range (wraps)", lambda m, x, i: m.take(x, i), [M34, ints(0, -12)]),
    *large_and_negative(
        "take_along_dim flattened", lambda m, x, i: m.take_along_dim(x, i),
        [M34, ints(0, 12)], [M34, ints(0, -13)], [M34, ints(0, 11)], "take_along_dim",
        "out of bounds", value_large="12", value_negative="-13"),
    Row("take_along_dim along a dim, negative (wraps)",
        lambda m, x, i: m.take_along_dim(x, i, 1), [M34, np.array([[-1], [0], [-4]], I64)]),
    *large_and_negative(
        "put_", lambda m, x, i, s: x.clone().put_(i, s), [M34, ints(1, 12), f32(2)],
        [M34, ints(1, -13), f32(2)], [M34, ints(1, 11), f32(2)], "put", "out of range",
        value_large="12", value_negative="-13"),
    Row("put_ negative in range (wraps)", lambda m, x, i, s: x.clone().put_(i, s),
        [M34, ints(1, -12), f32(2)]),
    *large_and_negative(
        "x[idx]", lambda m, x, i: x[i], [M34, ints(0, 3)], [M34, ints(0, -4)], [M34, ints(0, 2)],
        "", "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4"),
    Row("x[idx] negative in range (wraps)", lambda m, x, i: x[i], [M34, ints(0, -3)]),
    *large_and_negative(
        "x[:, idx]", lambda m, x, i: x[:, i], [M34, ints(0, 4)], [M34, ints(0, -5)],
        [M34, ints(0, 3)], "", "is out of bounds for dimension", value_large="4",
        value_negative="-5"),
    *large_and_negative(
        "x[idx] = v", lambda m, x, i: _setitem(x.clone(), i, 1.5), [M34, ints(0, 3)],
        [M34, ints(0, -4)], [M34, ints(0, 2)], "",
        "out of bounds for dimension 0 with size 3", value_large="3", value_negative="-4"),
    Row("x[idx] = v negative in range (wraps)", lambda m, x, i: _setitem(x.clone(), i, 1.5),
        [M34, ints(0, -3)]),
    Row("x[mask of wrong shape]", lambda m, x, b: x[b], [M34, np.array([True, False])],
        op="", key="does not match the shape of the indexed tensor", compiled=False),
    Row("x[mask of wrong shape] = v", lambda m, x, b: _setitem(x.clone(), b, 1.5),
        [M34, np.array([True, False])], op="",
        key="does not match the shape of the indexed tensor", compiled=False),
    *large_and_negative(
        "embedding", lambda m, i, w: F(m).embedding(i, w), [ints(0, 3), M34],
        [ints(0, -1), M34], [ints(0, 2), M34], "embedding", "index out of range in self",
        value_large="3", value_negative="-1"),
    *large_and_negative(
        "nn.Embedding", lambda m, i: _embedding(m).to(i.device)(i), [ints(0, 3)], [ints(0, -1)], [ints(0, 2)],
        "embedding", "index out of range in self", value_large="3", value_negative="-1"),
    *large_and_negative(
        "embedding_bag", lambda m, i, o, w: F(m).embedding_bag(i, w, o),
        [ints(0, 1, 3), ints(0, 2), M34], [ints(0, 1, -1), ints(0, 2), M34],
        [ints(0, 1, 2), ints(0, 2), M34], "embedding_bag", "", value_large="3",
        value_negative="-1"),
    *large_and_negative(
        "one_hot", lambda m, t: F(m).one_hot(t, 3), [ints(0, 3)], [ints(0, -1)], [ints(0, 2)],
        "one_hot", "smaller than num_classes", key_negative="non-negative",
        value_large="3", value_negative="-1", compiled=False),
    *large_and_negative(
        "nll_loss", lambda m, x, t: F(m).nll_loss(x, t), [M34, ints(0, 4, 1)],
        [M34, ints(0, -1, 1)], [M34, ints(0, 3, 1)], "nll_loss", "out of bounds",
        value_large="4", value_negative="-1"),
    *large_and_negative(
        "cross_entropy", lambda m, x, t: F(m).cross_entropy(x, t), [M34, ints(0, 4, 1)],
        [M34, ints(0, -1, 1)], [M34, ints(0, 3, 1)], "cross_entropy", "out of bounds",
        value_large="4", value_negative="-1"),
    Row("cross_entropy ignore_index=-100 kept", lambda m, x, t: F(m).cross_entropy(x, t),
        [M34, ints(0, -100, 1)]),
    Row("cross_entropy ignore_index=7 kept", lambda m, x, t: F(m).cross_entropy(
        x, t, ignore_index=7), [M34, ints(0, 7, 1)]),
    Row("cross_entropy ignore_index=7, target 5", lambda m, x, t: F(m).cross_entropy(
        x, t, ignore_index=7), [M34, ints(0, 5, 1)], [M34, ints(0, 7, 1)], "cross_entropy",
        "out of bounds", "5"),
    *large_and_negative(
        "multi_margin_loss", lambda m, x, t: F(m).multi_margin_loss(x, t), [M34, ints(0, 4, 1)],
        [M34, ints(0, -1, 1)], [M34, ints(0, 3, 1)], "multi_margin_loss",
        "target out of range", value_large="4", value_negative="-1"),
    *large_and_negative(
        "multilabel_margin_loss", lambda m, x, t: F(m).multilabel_margin_loss(x, t),
        [M34, np.array([[0, 4, -1, 0]] * 3, I64)], [M34, np.array([[0, -2, -1, 0]] * 3, I64)],
        [M34, np.array([[0, 3, -1, 0]] * 3, I64)], "multilabel_margin_loss",
        "out of range", value_large="4", value_negative="-2"),
    *large_and_negative(
        "ctc_loss input_lengths", _ctc, [*CTC, ints(6, 4), ints(2, 2)],
        [*CTC, ints(-1, 4), ints(2, 2)], [*CTC, ints(5, 4), ints(2, 2)], "ctc_loss",
        "input_lengths", value_large="6", value_negative="-1"),
    *large_and_negative(
        "ctc_loss target_lengths", _ctc, [*CTC, ints(5, 4), ints(2, 4)],
        [*CTC, ints(5, 4), ints(2, -1)], [*CTC, ints(5, 4), ints(3, 2)], "ctc_loss",
        "target", value_large="4", value_negative="-1"),
    Row("ctc_loss target label too large", _ctc,
        [f32(5, 2, 4), np.array([[1, 4, 2], [3, 1, 0]], I64), ints(5, 4), ints(2, 2)],
        [f32(5, 2, 4), np.array([[1, 3, 2], [3, 1, 0]], I64), ints(5, 4), ints(2, 2)],
        "ctc_loss", "", "4", stricter=RuntimeError),
    *large_and_negative(
        "bincount", lambda m, x: m.bincount(x), [ints(0, 2, 2)], [ints(0, -1, 2)],
        [ints(0, 1, 2)], "bincount", "", key_negative="non-negative", value_negative="-1",
        compiled=False),
    *large_and_negative(
        "max_unpool2d", lambda m, x, i: F(m).max_unpool2d(x, i, 2),
        [f32(1, 1, 2, 2), np.array([[[[0, 3], [8, 16]]]], I64)],
        [f32(1, 1, 2, 2), np.array([[[[0, 3], [8, -1]]]], I64)],
        [f32(1, 1, 2, 2), np.array([[[[0, 3], [8, 15]]]], I64)], "max_unpool2d",
        "invalid max index", value_large="16", value_negative="-1"),
    *large_and_negative(
        "searchsorted-fed gather", lambda m, s, v: m.gather(s, 0, m.searchsorted(s, v)),
        [np.array([0., 1., 2.], np.float32), np.array([0.5, 9.], np.float32)],
        [np.array([0., 1., 2.], np.float32), np.array([0.5, -9.], np.float32)],
        [np.array([0., 1., 2.], np.float32), np.array([0.5, 1.5], np.float32)], "gather",
        "out of bounds for dimension 0 with size 3", key_negative="", value_large="3"),
    # dims and starts given as Python ints: checked the same way traced or not
    *large_and_negative(
        "select", lambda m, x: x.select(1, 4), [M34], None, None, "select",
        "out of range", compiled=False)[:1],
    Row("select negative", lambda m, x: x.select(1, -5), [M34], None, "select", "out of range",
        compiled=False),
    Row("select bad dim", lambda m, x: x.select(2, 0), [M34], None, "select",
        "Dimension out of range", compiled=False),
    Row("narrow start too large", lambda m, x: x.narrow(1, 5, 1), [M34], None, "narrow",
        "out of range", compiled=False),
    Row("narrow start+length too large", lambda m, x: x.narrow(1, 2, 3), [M34], None, "narrow",
        "exceeds dimension size", compiled=False),
    Row("narrow start too negative", lambda m, x: x.narrow(1, -5, 1), [M34], None, "narrow",
        "out of range", compiled=False),
    Row("narrow negative start (wraps)", lambda m, x: x.narrow(1, -2, 2), [M34],
        compiled=False),
    Row("narrow bad dim", lambda m, x: x.narrow(-3, 0, 1), [M34], None, "narrow",
        "Dimension out of range", compiled=False),
    Row("Tensor.unfold size too large", lambda m, x: x.unfold(1, 5, 1), [M34], None, "unfold",
        "", compiled=False),
    Row("Tensor.unfold bad dim", lambda m, x: x.unfold(2, 2, 1), [M34], None, "unfold",
        "Dimension out of range", compiled=False),
]


def _setitem(x, index, value):
    x[index] = value
    return x


_EMBEDDINGS: dict = {}


def _embedding(lib):
    """One nn.Embedding per library, its weight seeded the same (a compiled function reads the
    same module on every call)."""
    if lib not in _EMBEDDINGS:
        _EMBEDDINGS[lib] = lib.nn.Embedding(3, 4)
        with lib.no_grad():
            _EMBEDDINGS[lib].weight.copy_(lib.tensor(M34))
    return _EMBEDDINGS[lib]


# ------------------------------------------------------------------------------ running

@dataclass
class Outcome:
    exc: type | None = None
    message: str = ""
    value: object = None

    def describe(self) -> str:
        if self.exc is None:
            return "value"
        return f"{self.exc.__name__}: {self.message.splitlines()[0][:110]}"


def _numpy(value):
    if isinstance(value, tuple):
        return tuple(_numpy(v) for v in value)
    value = value.detach().cpu() if hasattr(value, "detach") else value
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def run(lib, fn, arrays, device: str = "cpu") -> Outcome:
    """fn's outcome; its result read back to the host (where a GPU's queued checks raise)."""
    args = [lib.tensor(a, device=device) for a in arrays]
    try:
        return Outcome(value=_numpy(fn(lib, *args)))
    except Exception as e:          # noqa: BLE001 - we report what either library raises
        return Outcome(type(e), str(e))


def run_torch(row: Row, arrays: list) -> Outcome:
    """torch's outcome; where it reads a bad index unchecked, not run (it may crash)."""
    if row.stricter is not None and arrays is row.bad:
        return Outcome(row.stricter, f"(not run: PyTorch does not check) {row.key}")
    return run(torch, row.fn, arrays)


def assert_like_torch(row: Row, expected: Outcome, got: Outcome) -> None:
    if expected.exc is not None:
        assert got.exc is not None, f"torch raised {expected.describe()}, kiln returned a value"
        assert issubclass(got.exc, expected.exc), \
            f"torch raised {expected.exc.__name__}, kiln {got.describe()}"
        assert row.key in expected.message, f"torch's message lacks {row.key!r}"
        for word in (row.key, row.op, row.value):
            assert re.search(re.escape(word), got.message), \
                f"kiln's message does not name {word!r}: {got.message}"
        return
    assert got.exc is None, f"torch returned a value, kiln raised {got.describe()}"
    np.testing.assert_allclose(got.value, expected.value, rtol=1e-5, atol=1e-6)


def run_compiled(row: Row, backend: str, device: str = "cpu") -> list:
    """Outcomes of one compiled function called bad, good, bad (a replay), good."""
    compiled = kiln.compile(lambda *args: row.fn(kiln, *args), backend=backend)
    calls = (row.bad, row.good, row.bad, row.good) if row.good is not None else (row.bad,) * 2
    return [run(kiln, lambda m, *args: compiled(*args), arrays, device) for arrays in calls]


def check_compiled(row: Row, backend: str, device: str = "cpu") -> None:
    outcomes = run_compiled(row, backend, device)
    bad = run_torch(row, row.bad)
    good = run_torch(row, row.good) if row.good is not None else bad
    for expected, got in zip([bad, good] * 2, outcomes):
        assert_like_torch(row, expected, got)


IDS = [r.name for r in ROWS]
COMPILED = [r for r in ROWS if r.compiled]


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_eager_like_torch(row):
    assert_like_torch(row, run_torch(row, row.bad), run(kiln, row.fn, row.bad))


@pytest.mark.parametrize("backend", ["auto", "c"])
@pytest.mark.parametrize("row", COMPILED, ids=[r.name for r in COMPILED])
def test_compiled_like_torch(row, backend):
    check_compiled(row, backend)


# compiled with Triton kernels (in the interpreter, slow): one row of each way an index reaches
# a check (a lookup, a write, a class target, a length, a loss's own check)
ON_CUDA_COMPILED = ["gather too large", "index_put accumulate=True too large",
                    "cross_entropy too large", "ctc_loss input_lengths too large",
                    "multi_margin_loss negative", "x[idx] = v too large"]


@pytest.mark.parametrize("name", ON_CUDA_COMPILED)
def test_compiled_triton_on_the_cpu_like_torch(name):
    check_compiled(next(r for r in ROWS if r.name == name), "triton")


@pytest.mark.gpu
def test_on_cuda_like_torch():
    """On a GPU a check is queued and raises at the next host read (here, reading the result
    back): every row eagerly, some compiled. CuPy's gathers and scatters wrap an index outside
    the array around where NumPy's raise, and so does the fake (`_wrapped_key`): what raises
    here is kiln's own check, with torch's class and words."""
    failures = []
    for row in ROWS:
        expected = run_torch(row, row.bad)
        got = run(kiln, row.fn, row.bad, "cuda")
        try:
            assert_like_torch(row, expected, got)
            if row.name in ON_CUDA_COMPILED:
                outcomes = run_compiled(row, "auto", "cuda")
                assert all(o.exc is not None for o in outcomes[::2]), \
                    [o.describe() for o in outcomes]
                for o in outcomes[1::2]:
                    assert_like_torch(row, run_torch(row, row.good), o)
        except AssertionError as e:
            failures.append(f"{row.name}: {str(e).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def main() -> None:
    """The audit table: torch's outcome, then kiln's eager and compiled verdicts."""
    for row in ROWS:
        expected = run_torch(row, row.bad)
        verdicts = []
        for mode in ["eager"] + (["auto", "c"] if row.compiled else []):
            try:
                if mode == "eager":
                    assert_like_torch(row, expected, run(kiln, row.fn, row.bad))
                else:
                    check_compiled(row, mode)
                verdicts.append(f"{mode} ok")
            except AssertionError as e:
                verdicts.append(f"{mode} WRONG ({str(e).splitlines()[0][:150]})")
        print(f"## {row.name}\n  torch: {expected.describe()}\n  " + "\n  ".join(verdicts))


if __name__ == "__main__":
    sys.path.insert(0, ".")
    main()
