"""int8 and int16 tensors (torch.int8/char, torch.int16/short) against PyTorch: creation,
arithmetic that wraps around as PyTorch's does, reductions that widen to int64, casts,
indexing, checkpoints, and compiled (C and Triton) equal to eager."""

import warnings

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")

SMALL = ["int8", "int16"]


def both(fn):
    return fn(kiln), fn(torch)


def same(got, expected):
    assert str(got.dtype).replace("kiln.", "") == str(expected.dtype).replace("torch.", "")
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def data(lib, name, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(name)
    values = rng.integers(info.min, info.max + 1, size=(3, 5)).astype(name)
    return lib.tensor(values.tolist(), dtype=getattr(lib, name))


OPS = {
    "add_wraps": lambda lib, x, y: x + y,
    "sub": lambda lib, x, y: x - y,
    "mul_wraps": lambda lib, x, y: x * y,
    "neg": lambda lib, x, y: -x,
    "abs": lambda lib, x, y: x.abs(),
    "true_div": lambda lib, x, y: x / lib.where(y == 0, lib.ones_like(y), y),
    "floor_divide": lambda lib, x, y: lib.floor_divide(x, lib.where(y == 0, lib.ones_like(y), y)),
    "remainder": lambda lib, x, y: lib.remainder(x, lib.where(y == 0, lib.ones_like(y), y)),
    "bitwise": lambda lib, x, y: (x & y) | (x ^ ~y),
    "shift": lambda lib, x, y: (x >> 2) + (x << 1),
    "compare": lambda lib, x, y: (x < y) & (x != 0),
    "maximum": lambda lib, x, y: lib.maximum(x, y),
    "clamp": lambda lib, x, y: x.clamp(-20, 30),
    "add_scalar_stays": lambda lib, x, y: x + 3,
    "mul_float_scalar": lambda lib, x, y: x * 0.5,
    "sum_widens": lambda lib, x, y: x.sum(1),
    "prod_widens": lambda lib, x, y: (x % 3).prod(0),
    "cumsum_widens": lambda lib, x, y: x.cumsum(1),
    "max_argmax": lambda lib, x, y: x.max(1).values + x.argmax(1).to(x.dtype),
    "sort": lambda lib, x, y: x.sort(1).values,
    "to_float": lambda lib, x, y: x.float() * 0.25,
    "from_float": lambda lib, x, y: (x.double() / 3).to(x.dtype),
    "where_mix": lambda lib, x, y: lib.where(x > 0, x, y.long()),
    "index": lambda lib, x, y: x[:, lib.tensor([4, 0, 2])],
    "index_put": lambda lib, x, y: x.index_put((lib.tensor([0, 2]),), lib.tensor(7, dtype=x.dtype)),
    "cat_int32": lambda lib, x, y: lib.cat([x, y.int()]),
}


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("op", sorted(OPS))
def test_ops_match_torch(op, name):
    k, t = both(lambda lib: OPS[op](lib, data(lib, name, 0), data(lib, name, 1)))
    same(k, t)


@pytest.mark.parametrize("name", SMALL)
def test_names_casts_and_info(name):
    k, t = getattr(kiln, name), getattr(torch, name)
    assert kiln.iinfo(k).min == torch.iinfo(t).min and kiln.iinfo(k).max == torch.iinfo(t).max
    assert kiln.short is kiln.int16 and str(torch.short) == "torch.int16"
    method = {"int8": "char", "int16": "short"}[name]
    same(getattr(kiln.tensor([1.7, -2.2, 300.0]), method)(),
         getattr(torch.tensor([1.7, -2.2, 300.0]), method)())
    legacy = {"int8": "CharTensor", "int16": "ShortTensor"}[name]
    same(getattr(kiln, legacy)([1, -2]), getattr(torch, legacy)([1, -2]))
    x = kiln.from_numpy(np.array([1, -3], dtype=name))
    assert x.dtype is k and x.is_signed()
    assert kiln.can_cast(k, kiln.uint8) == torch.can_cast(t, torch.uint8)
    assert kiln.can_cast(k, kiln.float16) == torch.can_cast(t, torch.float16)
    assert kiln.can_cast(kiln.float32, k) == torch.can_cast(torch.float32, t)


@pytest.mark.parametrize("name", SMALL)
def test_a_small_int_cannot_index(name):
    """PyTorch indexes with long, int, byte or bool tensors only."""
    for lib in (torch, kiln):
        with pytest.raises(IndexError):
            lib.arange(5)[lib.tensor([1, 2], dtype=getattr(lib, name))]


@pytest.mark.parametrize("name", SMALL)
def test_checkpoint_round_trip(name, tmp_path):
    x = data(kiln, name)
    kiln.save({"x": x}, tmp_path / "k.pt")
    back = kiln.load(tmp_path / "k.pt")["x"]
    assert back.dtype is x.dtype
    np.testing.assert_array_equal(back.numpy(), x.numpy())


@pytest.mark.parametrize("backend", ["c", "triton"])
@pytest.mark.parametrize("name", SMALL)
def test_compiled_equals_eager(name, backend, monkeypatch):
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")

    def f(x, y):
        s = (x * y + 3) >> 1                      # wraps in the small type
        return s, (s.abs() - y).sum(), (x.float() * 0.5).sum(1), x.maximum(y) % 7

    x, y = data(kiln, name, 0), data(kiln, name, 1)
    compiled = kiln.compile(f, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no fallback to eager
        for _ in range(2):
            got = compiled(x, y)
    for g, e in zip(got, f(x, y)):
        assert g.dtype is e.dtype
        np.testing.assert_array_equal(g.numpy(), e.numpy())
    t = f(*(torch.tensor(v.numpy()) for v in (x, y)))
    for g, e in zip(got, t):
        same(g, e)
