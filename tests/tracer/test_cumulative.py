"""cumsum and cumprod against PyTorch: float32 on the CPU equal to the bit (both accumulate
in float64 and round once), zeros, signs, infinities and NaNs as the sequential product,
gradients through zeros, and compiled replays equal to eager."""

import numpy as np
import pytest
import torch

import kiln

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_float32_running_ops_equal_torchs_to_the_bit(op, dim):
    x = np.random.default_rng(3).uniform(0.5, 1.5, (6, 700)).astype(np.float32)
    got = getattr(kiln.tensor(x), op)(dim).numpy()
    want = getattr(torch.tensor(x), op)(dim).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("values", [[INF, 0.0, 2.0], [2.0, -3.0, 0.0, NAN, 1.0],
                                    [-1.0, 2.0, -3.0, 4.0], [0.0, -0.0, 5.0], [-INF, -1.0, 0.5]])
def test_cumprod_of_special_values_is_the_sequential_product(values):
    with np.errstate(all="ignore"):
        got = kiln.tensor(values).cumprod(0).numpy()
    want = torch.tensor(values).cumprod(0).numpy()
    np.testing.assert_array_equal(got, want)            # NaN where NaN, and signed zeros
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", ["float64", "float16", "complex64", "int32", "bool"])
def test_cumprod_of_other_dtypes(dtype):
    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 1.5, (3, 40))
    if dtype == "complex64":
        x = x * np.exp(1j * rng.uniform(0, 1, x.shape))
    elif dtype in ("int32", "bool"):
        x = rng.integers(0, 3, x.shape)
    x = x.astype(dtype)
    got = kiln.tensor(x).cumprod(1)
    want = torch.tensor(x).cumprod(1)
    assert str(got.dtype).split(".")[1] == str(want.dtype).split(".")[1]
    tol = {"float16": 2e-3, "complex64": 2e-6}.get(dtype, 1e-12)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol)


def test_cumprod_gradient_through_zeros():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 9)).astype(np.float64)
    x[0, 2] = x[1, 5] = x[1, 7] = x[3, 0] = 0.0
    g = rng.standard_normal(x.shape)
    k, t = kiln.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    k.cumprod(1).backward(kiln.tensor(g))
    t.cumprod(1).backward(torch.tensor(g))
    np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_compiled_cumprod_and_cumsum_equal_eager():
    def step(x):
        return x.cumprod(1).sum(0) + x.cumsum(0).mean(1).sum()
    x = kiln.tensor(np.random.default_rng(6).uniform(0.5, 1.5, (5, 33)).astype(np.float32))
    compiled = kiln.compile(step)
    for _ in range(3):
        got = compiled(x)
    np.testing.assert_allclose(got.numpy(), step(x).numpy(), rtol=1e-6)
