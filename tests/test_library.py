"""kiln.library against torch.library: an operator written in Python (custom_op, and
Library.define + impl) with an autograd formula, a fake kernel for meta tensors, per-device
kernels, mutation, torch.ops access and opcheck; under kiln.compile the operator is a graph
break and the function's result equals eager."""

import itertools
import warnings

import numpy as np
import pytest
import torch

import kiln

_COUNT = itertools.count()
LIBS = pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])


def _name(stem: str) -> str:
    return f"{stem}{next(_COUNT)}"          # operator names are global to the process


def _numpy_sin(lib, with_autograd=True, with_fake=True):
    name = _name("numpy_sin")

    @lib.library.custom_op(f"kilntest::{name}", mutates_args=())
    def numpy_sin(x: lib.Tensor, scale: float = 1.0) -> lib.Tensor:
        return lib.from_numpy(np.sin(x.detach().numpy()) * scale)

    def setup_context(ctx, inputs, output):
        x, scale = inputs
        ctx.save_for_backward(x)
        ctx.scale = scale

    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.cos() * ctx.scale, None

    if with_autograd:
        numpy_sin.register_autograd(backward, setup_context=setup_context)
    if with_fake:
        @numpy_sin.register_fake
        def _(x, scale=1.0):
            return lib.empty_like(x)
    return name, numpy_sin


@LIBS
def test_custom_op_values_gradients_and_ops_namespace(lib):
    name, op = _numpy_sin(lib)
    data = np.linspace(-2, 2, 7)
    x = lib.tensor(data, requires_grad=True)
    y = op(x, scale=2.0)
    assert y.grad_fn.name() == f"GeneratedBackwardFor_kilntest_{name}_defaultBackward"
    (y * lib.arange(7.0)).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), 2 * np.sin(data), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos(data) * np.arange(7.0), rtol=1e-12)
    by_name = getattr(lib.ops.kilntest, name)
    np.testing.assert_allclose(by_name(x, 3.0).detach().numpy(), 3 * np.sin(data))
    np.testing.assert_allclose(by_name.default(x).detach().numpy(), np.sin(data))
    meta = op(lib.empty(2, 3, device="meta"))
    assert meta.device.type == "meta" and tuple(meta.shape) == (2, 3)


@LIBS
def test_backward_without_a_formula_says_so(lib):
    _, op = _numpy_sin(lib, with_autograd=False)
    x = lib.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="no autograd formula was registered"):
        op(x).sum().backward()
    assert op(x.detach()).grad_fn is None


@LIBS
def test_mutating_op_and_per_device_kernels(lib):
    name = _name("add_one_")

    @lib.library.custom_op(f"kilntest::{name}", mutates_args=("x",))
    def add_one_(x: lib.Tensor) -> None:
        x.add_(1)

    z = lib.zeros(2)
    assert add_one_(z) is None
    assert z.tolist() == [1.0, 1.0]

    name = _name("scaled")

    @lib.library.custom_op(f"kilntest::{name}", mutates_args=(), device_types="cpu")
    def scaled(x: lib.Tensor) -> lib.Tensor:
        return x * 2

    assert scaled(lib.ones(2)).tolist() == [2.0, 2.0]


def test_mutates_args_must_name_parameters():
    def f(x: kiln.Tensor) -> None:
        pass
    with pytest.raises(ValueError, match="not parameters"):
        kiln.library.custom_op(f"kilntest::{_name('bad')}", f, mutates_args=("y",))


@LIBS
def test_type_annotations_are_required(lib):
    with pytest.raises(ValueError, match="must have a type annotation"):
        @lib.library.custom_op(f"kilntest::{_name('nohint')}", mutates_args=())
        def nohint(x):
            return x


@LIBS
def test_library_define_and_impl(lib):
    ns = _name("kilnlib")
    library = lib.library.Library(ns, "DEF")
    library.define("mymul(Tensor x, float a) -> Tensor")
    library.impl("mymul", lambda x, a: x * a, "CompositeImplicitAutograd")
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    y = getattr(lib.ops, ns).mymul(x, 3.0)
    y.sum().backward()                       # the kernel's own ops carry the gradient
    assert y.tolist() == [3.0, 6.0] and x.grad.tolist() == [3.0, 3.0]


@LIBS
def test_opcheck_passes_a_correct_op(lib):
    _, op = _numpy_sin(lib)
    result = lib.library.opcheck(op, (lib.randn(4, dtype=lib.float64),))
    assert all(v == "SUCCESS" for v in result.values())


def test_opcheck_catches_a_wrong_formula():
    name = _name("wrong")

    @kiln.library.custom_op(f"kilntest::{name}", mutates_args=())
    def wrong(x: kiln.Tensor) -> kiln.Tensor:
        return x.detach() * 3

    wrong.register_autograd(lambda ctx, g: g * 2)
    with pytest.raises(Exception):
        kiln.library.opcheck(wrong, (kiln.randn(3, dtype=kiln.float64),))


def test_compiled_function_with_a_custom_op_breaks_and_equals_eager():
    _, op = _numpy_sin(kiln)

    def step(x, w):
        return (op(x * w, 2.0) ** 2).sum()

    data = np.random.default_rng(0).standard_normal(5)
    got = []
    for fn in (step, kiln.compile(step)):
        w = kiln.tensor(data, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                w.grad = None
                loss = fn(kiln.ones(5), w)
                loss.backward()
        got.append((loss.item(), w.grad.numpy().copy(), [str(c.message) for c in caught]))
    assert got[0][0] == got[1][0]
    np.testing.assert_array_equal(got[0][1], got[1][1])
    assert any("custom op kilntest::numpy_sin" in m for m in got[1][2]), got[1][2]
