"""Tensor subclasses with their own `__torch_dispatch__` (wrapper subclasses), against PyTorch.

Each class is written once for kiln and torch (`lib` is either): a LoggingTensor holding `elem`
that records each op's name, a TwoTensor holding `a` and `b` that runs every op on both, and
a scaled int8 tensor whose values are `data * scale`. The tests compare what the classes saw,
the results and the gradients. Where kiln's primitives are not ATen's kernels (a Linear is
permute + mm + add where torch runs t + addmm; a full sum's gradient is reshaped before it is
expanded; indexing is slice + view where torch selects) the test asserts kiln's names
(kiln/op_overloads.py) next to torch's and the values.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.utils._pytree as torch_pytree

import kiln
import kiln.utils._pytree as kiln_pytree
from kiln.utils._python_dispatch import TorchDispatchMode as KilnMode
from kiln.utils._python_dispatch import is_traceable_wrapper_subclass, \
    return_and_correct_aliasing
from kiln.utils._mode_utils import no_dispatch as kiln_no_dispatch
from torch.utils._mode_utils import no_dispatch as torch_no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode as TorchMode

LIBS = pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
PYTREE = {kiln: kiln_pytree, torch: torch_pytree}
MODE = {kiln: KilnMode, torch: TorchMode}
NO_DISPATCH = {kiln: kiln_no_dispatch, torch: torch_no_dispatch}


def _value(t):
    return np.asarray(t.detach().numpy())


def logging_tensor(lib):
    """A wrapper holding `elem`; `log` lists the name of each op its class computed."""
    tree_map = PYTREE[lib].tree_map

    class LoggingTensor(lib.Tensor):
        __torch_function__ = lib._C._disabled_torch_function_impl
        log: list = []

        @staticmethod
        def __new__(cls, elem):
            out = lib.Tensor._make_wrapper_subclass(
                cls, elem.size(), strides=elem.stride(), dtype=elem.dtype, device=elem.device,
                requires_grad=elem.requires_grad)
            out.elem = elem
            return out

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            cls.log.append(str(func))

            def unwrap(e):
                return e.elem if isinstance(e, cls) else e

            def wrap(e):
                return cls(e) if isinstance(e, lib.Tensor) and not isinstance(e, cls) else e
            out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
            return tree_map(wrap, out)

        def __repr__(self):
            return super().__repr__(tensor_contents=f"{self.elem}")
    return LoggingTensor


def two_tensor(lib):
    """A wrapper holding `a` and `b` (same shape and dtype); each op runs on both."""
    tree_map = PYTREE[lib].tree_map

    class TwoTensor(lib.Tensor):
        __torch_function__ = lib._C._disabled_torch_function_impl

        @staticmethod
        def __new__(cls, a, b):
            out = lib.Tensor._make_wrapper_subclass(
                cls, a.shape, strides=a.stride(), dtype=a.dtype, device=a.device,
                requires_grad=a.requires_grad)
            out.a, out.b = a, b
            return out

        def __tensor_flatten__(self):
            return ["a", "b"], None

        @staticmethod
        def __tensor_unflatten__(inner, meta, size, stride):
            return TwoTensor(inner["a"], inner["b"])

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out_a = func(*tree_map(lambda e: e.a if isinstance(e, cls) else e, args),
                         **tree_map(lambda e: e.a if isinstance(e, cls) else e, kwargs))
            out_b = func(*tree_map(lambda e: e.b if isinstance(e, cls) else e, args),
                         **tree_map(lambda e: e.b if isinstance(e, cls) else e, kwargs))
            flat_a, spec = PYTREE[lib].tree_flatten(out_a)     # (a Python number: a's)
            flat = [cls(x, y) if isinstance(x, lib.Tensor) else x
                    for x, y in zip(flat_a, PYTREE[lib].tree_leaves(out_b))]
            out = PYTREE[lib].tree_unflatten(flat, spec)
            return return_aliasing(lib)(func, args, kwargs, out)
    return TwoTensor


def return_aliasing(lib):
    if lib is kiln:
        return return_and_correct_aliasing
    from torch.utils._python_dispatch import return_and_correct_aliasing as torch_rca
    return torch_rca


def scaled_int8(lib):
    """A float32 wrapper whose values are `data * scale`, `data` int8: inputs are dequantized,
    the op computed in float32, float results quantized again with a fresh scale."""
    tree_map = PYTREE[lib].tree_map

    class ScaledInt8(lib.Tensor):
        __torch_function__ = lib._C._disabled_torch_function_impl

        @staticmethod
        def __new__(cls, data, scale):
            out = lib.Tensor._make_wrapper_subclass(cls, data.shape, dtype=lib.float32,
                                                    device=data.device)
            out.data_int8, out.scale = data, scale
            return out

        @classmethod
        def quantize(cls, x):
            scale = float(x.abs().max()) / 127 or 1.0
            return cls((x / scale).round().clamp(-127, 127).to(lib.int8), scale)

        def dequantize(self):
            return self.data_int8.to(lib.float32) * self.scale

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            plain = tree_map(lambda e: e.dequantize() if isinstance(e, cls) else e, args)
            out = func(*plain, **tree_map(
                lambda e: e.dequantize() if isinstance(e, cls) else e, kwargs or {}))
            if isinstance(out, lib.Tensor) and out.dtype == lib.float32:
                return cls.quantize(out)
            return out
    return ScaledInt8


def _inputs(lib, requires_grad=False):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    return (lib.tensor(a, requires_grad=requires_grad), lib.tensor(b))


# ----------------------------------------------------------------------------- logging

def _logged(lib, program):
    LoggingTensor = logging_tensor(lib)
    x, y = _inputs(lib)
    program(lib, LoggingTensor, x, y)
    return LoggingTensor.log


def _elementwise_backward(lib, LT, x, y):
    x = LT(x.requires_grad_())
    ((x * LT(y)).exp() * 2).sum().backward()


def _methods(lib, LT, x, y):
    x, y = LT(x), LT(y)
    x.detach(), x.clone(), x.to(lib.float64), x.copy_(y), x.sum().item(), x.fill_(2.0)
    x.zero_(), x.new_empty((2,)), lib.empty_like(x), lib.zeros_like(x), lib.ones_like(x)
    x.add_(1), x.mul_(2), x.sub_(y, alpha=2), x.div_(3), x.data, float(x.sum()), bool(x.sum())
    x.new_zeros((3,)), x.new_ones((3,))


def _elementwise(lib, LT, x, y):
    x, y = LT(x), LT(y)
    lib.relu(x + y * 2), x.exp(), x @ y.permute(1, 0).contiguous(), lib.where(x > 0, x, y), x.sum(1)
    x.permute(1, 0), x.reshape(12), lib.cat([x, y]), x ** 3, lib.maximum(x, y), x.cumsum(1)


SAME_NAMES = {"elementwise": _elementwise, "methods": _methods}


@pytest.mark.parametrize("case", list(SAME_NAMES))
def test_a_logging_tensor_sees_atens_names_where_they_correspond(case):
    assert _logged(kiln, SAME_NAMES[case]) == _logged(torch, SAME_NAMES[case])


def test_a_backward_reaches_the_class_with_wrapper_gradients():
    # both seed the backward with aten.ones_like and store the leaf's gradient detached
    # (AccumulateGrad). torch also detaches each output autograd saves (exp's, for its
    # gradient) and a gradient on its way between nodes; kiln's nodes keep the wrapper as it
    # is. A full sum's gradient is viewed as (1, 1) before kiln expands it (torch expands the
    # 0-d one), and the gradient rules run in their own orders.
    assert _logged(torch, _elementwise_backward) == [
        "aten.mul.Tensor", "aten.exp.default", "aten.detach.default", "aten.mul.Tensor",
        "aten.sum.default", "aten.ones_like.default", "aten.expand.default", "aten.mul.Tensor",
        "aten.detach.default", "aten.mul.Tensor", "aten.mul.Tensor", "aten.detach.default"]
    assert _logged(kiln, _elementwise_backward) == [
        "aten.mul.Tensor", "aten.exp.default", "aten.mul.Tensor", "aten.sum.default",
        "aten.ones_like.default", "aten.view.default", "aten.expand.default",
        "aten.mul.Tensor", "aten.mul.Tensor", "aten.mul.Tensor", "aten.detach.default"]


@LIBS
def test_the_backward_values_through_a_logging_tensor(lib):
    results = {}
    for each in (kiln, torch):
        LT = logging_tensor(each)
        x, y = _inputs(each)
        w = LT(x.requires_grad_())
        ((w * LT(y)).exp() * 2).sum().backward()
        assert type(w.grad) is LT
        results[each] = _value(w.grad.elem)
    np.testing.assert_allclose(results[kiln], results[torch], rtol=1e-6)


def _linear_step(lib):
    """A Linear with LoggingTensor parameters and input: forward, backward, one SGD step."""
    LT = logging_tensor(lib)
    lib.manual_seed(0)
    rng = np.random.default_rng(1)
    lin = lib.nn.Linear(3, 2)
    lin.weight = lib.nn.Parameter(LT(lib.tensor(rng.standard_normal((2, 3)).astype(np.float32))))
    lin.bias = lib.nn.Parameter(LT(lib.tensor(rng.standard_normal(2).astype(np.float32))))
    x = LT(lib.tensor(rng.standard_normal((4, 3)).astype(np.float32)))
    opt = lib.optim.SGD(lin.parameters(), lr=0.1)
    logs = {}
    LT.log.clear()                  # (nn.Parameter detached each wrapper)
    out = lin(x)
    logs["forward"], LT.log[:] = list(LT.log), []
    out.sum().backward()
    logs["backward"], LT.log[:] = list(LT.log), []
    grads = (lin.weight.grad, lin.bias.grad)
    opt.step()
    logs["step"], LT.log[:] = list(LT.log), []
    opt.zero_grad()
    logs["zero_grad"] = list(LT.log)
    return logs, out, grads, lin, LT


def test_a_linear_forward_backward_and_sgd_step_through_a_logging_tensor():
    k_logs, k_out, k_grads, k_lin, KLT = _linear_step(kiln)
    t_logs, t_out, t_grads, t_lin, TLT = _linear_step(torch)
    assert t_logs["forward"] == ["aten.t.default", "aten.addmm.default"]
    assert k_logs["forward"] == ["aten.permute.default", "aten.mm.default", "aten.add.Tensor"]
    assert t_logs["backward"] == [
        "aten.sum.default", "aten.ones_like.default", "aten.expand.default", "aten.t.default", "aten.mm.default",
        "aten.t.default", "aten.sum.dim_IntList", "aten.view.default", "aten.detach.default",
        "aten.t.default", "aten.detach.default"]
    assert k_logs["backward"] == [
        "aten.sum.default", "aten.ones_like.default", "aten.view.default", "aten.expand.default",
        "aten.sum.dim_IntList", "aten.permute.default", "aten.mm.default",
        "aten.permute.default", "aten.permute.default", "aten.detach.default",
        "aten.detach.default"]
    # (kiln's mm backward is permute, mm, permute where torch's is t, mm, t; the bias's
    # gradient a sum over the batch, which torch views as (2,))
    # the step and zero_grad are the same: one add_ per parameter, and no op (set_to_none)
    assert k_logs["step"] == t_logs["step"] == ["aten.add_.Tensor", "aten.add_.Tensor"]
    assert k_logs["zero_grad"] == t_logs["zero_grad"] == []
    assert type(k_out) is KLT and type(t_out) is TLT
    for kg, tg in zip(k_grads, t_grads):
        assert type(kg).__name__ == "LoggingTensor"
        np.testing.assert_allclose(kg.elem.numpy(), tg.elem.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(k_out.elem.detach().numpy(), t_out.elem.detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    for name in ("weight", "bias"):
        assert type(getattr(k_lin, name)) is KLT
        assert isinstance(getattr(k_lin, name), kiln.nn.Parameter)
        np.testing.assert_allclose(getattr(k_lin, name).elem.numpy(),
                                   getattr(t_lin, name).elem.numpy(), rtol=1e-6, atol=1e-6)


def _indexing(lib, LT, x, y):
    x, y = LT(x), LT(y)
    v = x[0].sum().item()
    x[1] = y[2]
    x[0] = 5.0
    return v


def test_indexing_is_kilns_slice_and_view_where_torch_selects():
    t_log, k_log = _logged(torch, _indexing), _logged(kiln, _indexing)
    assert t_log == ["aten.select.int", "aten.sum.default", "aten._local_scalar_dense.default",
                     "aten.select.int", "aten.select.int", "aten.copy_.default",
                     "aten.select.int", "aten.fill_.Tensor"]
    # an int index is a slice and a view in kiln; a number written is fill_.Scalar (torch
    # wraps it in a tensor first)
    assert k_log == ["aten.slice.Tensor", "aten.view.default", "aten.sum.default",
                     "aten._local_scalar_dense.default",
                     "aten.slice.Tensor", "aten.view.default",
                     "aten.slice.Tensor", "aten.view.default", "aten.copy_.default",
                     "aten.slice.Tensor", "aten.view.default", "aten.fill_.Scalar"]


@LIBS
def test_writes_through_a_wrappers_views_reach_what_it_holds(lib):
    LT = logging_tensor(lib)
    x, y = _inputs(lib)
    w = LT(x.clone())
    w[1] = LT(y)[2]
    w[0] = 5.0
    w.add_(1)
    expected = _value(x).copy()
    expected[1], expected[0] = _value(y)[2], 5.0
    np.testing.assert_allclose(w.elem.numpy(), expected + 1, rtol=1e-6)
    assert w.sum().item() == pytest.approx(float((expected + 1).sum()), rel=1e-6)


def test_the_methods_values_match_torch():
    results = {}
    for lib in (kiln, torch):
        LT = logging_tensor(lib)
        x, y = _inputs(lib)
        w = LT(x.clone())
        out = [w.detach(), w.clone(), w.to(lib.float64), lib.ones_like(w), w.new_zeros((2,)),
               lib.full_like(w, 3.0)]
        w.copy_(LT(y))
        w.mul_(2).sub_(LT(x), alpha=3)
        out.append(w)
        results[lib] = [(o.elem.dtype, _value(o.elem)) for o in out]
        assert all(type(o) is LT for o in out)
    for (kd, kv), (td, tv) in zip(results[kiln], results[torch]):
        assert str(kd).split(".")[-1] == str(td).split(".")[-1]
        np.testing.assert_allclose(kv, tv, rtol=1e-6)


def test_metadata_is_the_wrappers_own_and_repr_shows_the_class():
    LT = logging_tensor(kiln)
    x, _ = _inputs(kiln)
    w = LT(x.t())
    assert w.shape == (3, 4) and w.dim() == 2 and w.numel() == 12
    assert w.stride() == x.t().stride() == (1, 3) and not w.is_contiguous()
    assert w.dtype is kiln.float32 and w.device == x.device and not w.requires_grad
    assert LT.log == []                        # metadata asks nothing of the class
    assert repr(w) == f"LoggingTensor({x.t()})"

    class Bare(kiln.Tensor):
        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            return NotImplemented
    bare = kiln.Tensor._make_wrapper_subclass(Bare, (2, 3), dtype=kiln.float64,
                                              requires_grad=True)
    assert repr(bare) == "Bare(..., size=(2, 3), dtype=kiln.float64, requires_grad=True)"


# ----------------------------------------------------------------------------- TwoTensor

def _two_tensor_mlp(lib):
    TT = two_tensor(lib)
    rng = np.random.default_rng(2)

    def pair(*shape, requires_grad=False):
        a = lib.tensor(rng.standard_normal(shape).astype(np.float32))
        b = lib.tensor(rng.standard_normal(shape).astype(np.float32))
        return TT(a, b).requires_grad_(requires_grad)
    w1, w2 = pair(5, 3, requires_grad=True), pair(2, 5, requires_grad=True)
    x = pair(4, 3)
    hidden = lib.tanh(x @ w1.t()) * 0.5 + 1.0
    out = lib.nn.functional.softmax(hidden @ w2.t(), dim=-1)
    loss = (out * out).sum() / 3
    loss.backward()
    return TT, loss, (w1, w2)


def test_a_two_tensor_computes_values_and_gradients_of_both_halves():
    k_tt, k_loss, k_params = _two_tensor_mlp(kiln)
    t_tt, t_loss, t_params = _two_tensor_mlp(torch)
    assert type(k_loss) is k_tt and type(k_loss.grad_fn).__name__ != ""
    for half in ("a", "b"):
        np.testing.assert_allclose(_value(getattr(k_loss, half)),
                                   _value(getattr(t_loss, half)), rtol=1e-6, atol=1e-6)
        for kp, tp in zip(k_params, t_params):
            assert type(kp.grad) is k_tt
            np.testing.assert_allclose(_value(getattr(kp.grad, half)),
                                       _value(getattr(tp.grad, half)), rtol=1e-6, atol=1e-6)
    assert is_traceable_wrapper_subclass(k_loss)
    assert not is_traceable_wrapper_subclass(k_loss.a)
    assert not is_traceable_wrapper_subclass(logging_tensor(kiln)(kiln.ones(2)))


def test_return_and_correct_aliasing_gives_back_the_written_tensor():
    for lib in (kiln, torch):
        TT = two_tensor(lib)
        t = TT(lib.zeros(3), lib.ones(3))
        assert t.add_(2) is t
        assert t.copy_(TT(lib.ones(3), lib.zeros(3))) is t
        np.testing.assert_allclose(_value(t.a), [1, 1, 1])
        np.testing.assert_allclose(_value(t.b), [0, 0, 0])


@LIBS
def test_an_sgd_step_with_momentum_on_two_tensor_parameters(lib):
    results = {}
    for each in (kiln, torch):
        TT = two_tensor(each)
        p = each.nn.Parameter(TT(each.tensor([1.0, -2.0, 3.0]), each.tensor([0.5, 0.0, -1.0])))
        opt = each.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
        for _ in range(3):
            opt.zero_grad()
            (p * p * each.tensor([1.0, 2.0, 3.0])).sum().backward()
            opt.step()
        results[each] = (_value(p.a), _value(p.b))
    for k, t in zip(results[kiln], results[torch]):
        np.testing.assert_allclose(k, t, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- scaled int8

def test_a_scaled_int8_wrapper_stores_int8_and_computes_in_float32():
    outs = {}
    for lib in (kiln, torch):
        S = scaled_int8(lib)
        x, y = _inputs(lib)
        sx, sy = S.quantize(x), S.quantize(y)
        assert sx.dtype == lib.float32 and sx.data_int8.dtype == lib.int8
        out = (sx * sy + sx).relu().sum(0)
        assert type(out) is S and out.data_int8.dtype == lib.int8
        outs[lib] = (_value(out.dequantize()), out.sum().item())
    np.testing.assert_allclose(outs[kiln][0], outs[torch][0], rtol=1e-6, atol=1e-6)
    assert outs[kiln][1] == pytest.approx(outs[torch][1], rel=1e-6)


# ----------------------------------------------------------------------------- order, modes

def _ordered_classes(lib):
    seen = []

    class Base(lib.Tensor):
        __torch_function__ = lib._C._disabled_torch_function_impl

        @staticmethod
        def __new__(cls, elem):
            out = lib.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)
            out.elem = elem
            return out

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            seen.append((cls.__name__, tuple(t.__name__ for t in types)))
            if cls.__name__ == "Refuses":
                return NotImplemented
            plain = [a.elem if isinstance(a, Base) else a for a in args]
            return Base(func(*plain, **(kwargs or {})))

    class Refuses(Base):
        pass

    class Other(Base):
        pass
    return Base, Refuses, Other, seen


@LIBS
def test_subclasses_come_before_their_bases_and_not_implemented_passes_on(lib):
    Base, Refuses, Other, seen = _ordered_classes(lib)
    x = lib.ones(2)
    out = Base(x) + Refuses(x)
    assert type(out) is Base
    # Refuses (a subclass of Base) first; its NotImplemented hands the call to Base
    assert seen == [("Refuses", ("Refuses", "Base")), ("Base", ("Refuses", "Base"))]
    seen.clear()
    Other(x) * Refuses(x)
    assert seen == [("Other", ("Other", "Refuses"))]


@LIBS
def test_all_handlers_returning_not_implemented_is_an_error(lib):
    Base, Refuses, Other, seen = _ordered_classes(lib)
    with pytest.raises(TypeError, match="Multiple dispatch failed"):
        lib.add(Refuses(lib.ones(2)), 1)


@LIBS
def test_a_mode_sees_the_op_before_the_subclass(lib):
    LT = logging_tensor(lib)
    seen = []

    class Mode(MODE[lib]):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append((str(func), tuple(t.__name__ for t in types)))
            return func(*args, **(kwargs or {}))
    x = LT(lib.ones(3))
    with Mode():
        y = x * 2
        z = y.detach()
        z.add_(1)
    assert type(y) is LT and type(z) is LT
    assert seen == [("aten.mul.Tensor", ("LoggingTensor",)),
                    ("aten.detach.default", ("LoggingTensor",)),
                    ("aten.add_.Tensor", ("LoggingTensor",))]
    assert LT.log == ["aten.mul.Tensor", "aten.detach.default", "aten.add_.Tensor"]
    np.testing.assert_allclose(_value(z.elem), [3.0, 3.0, 3.0])


# ----------------------------------------------------------------------------- real data

def test_a_subclass_with_its_own_data_and_torch_dispatch():
    results = {}
    for lib in (kiln, torch):
        tree_map = PYTREE[lib].tree_map
        no_dispatch = NO_DISPATCH[lib]
        log = []

        class Real(lib.Tensor):
            @classmethod
            def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
                log.append(str(func))
                with no_dispatch():             # computes on the tensors' own data
                    out = func(*args, **(kwargs or {}))
                return tree_map(lambda e: e.as_subclass(Real) if type(e) is lib.Tensor else e,
                                out)
        x = lib.tensor([1.0, 2.0, 3.0]).as_subclass(Real).requires_grad_()
        y = (x * x).exp()
        (y * 0.1).sum().backward()
        with no_dispatch():
            grad = x.grad.as_subclass(lib.Tensor).numpy()
        results[lib] = (type(y) is Real, type(x.grad) is Real, grad, log[:2])
    assert results[kiln][:2] == results[torch][:2] == (True, True)
    np.testing.assert_allclose(results[kiln][2], results[torch][2], rtol=1e-6)
    assert results[kiln][3] == results[torch][3] == ["aten.mul.Tensor", "aten.exp.default"]


# ----------------------------------------------------------------------------- errors

def test_a_wrapper_has_no_data_outside_its_class():
    LT = logging_tensor(kiln)
    w = LT(kiln.ones(2, 2))
    with pytest.raises(RuntimeError, match="numpy\\(\\) is not supported for tensor subclasses"):
        w.numpy()
    with pytest.raises(RuntimeError, match="tolist\\(\\) is not supported for tensor subclasses"):
        w.tolist()
    with pytest.raises(RuntimeError, match="LoggingTensor was made by Tensor._make_wrapper_sub"):
        kiln.bincount(LT(kiln.tensor([1, 2])))
    with pytest.raises(RuntimeError, match="only through LoggingTensor.__torch_dispatch__"):
        np.asarray(w)
    with pytest.raises(TypeError, match="has no memory to share"):
        w.as_subclass(kiln.Tensor)
    with pytest.raises(RuntimeError, match="indexing its memory: this LoggingTensor"):
        w._data[0]
    with pytest.raises(RuntimeError, match="data_ptr\\(\\): this LoggingTensor"):
        w.data_ptr()
    with pytest.raises(RuntimeError, match="this LoggingTensor was made by"):
        kiln.save({"w": w}, io.BytesIO())
    with pytest.raises(RuntimeError, match="numpy\\(\\) is not supported"):
        torch_w = logging_tensor(torch)(torch.ones(2, 2))
        torch_w.numpy()


def test_make_wrapper_subclass_checks_its_arguments():
    LT = logging_tensor(kiln)
    with pytest.raises(ValueError, match="2 strides for a size of 3 dimensions"):
        kiln.Tensor._make_wrapper_subclass(LT, (2, 3, 4), strides=(1, 2))
    with pytest.raises(NotImplementedError, match="dispatch_sizes_strides_policy"):
        kiln.Tensor._make_wrapper_subclass(LT, (2,), dispatch_sizes_strides_policy="sizes")
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype"):
        kiln.Tensor._make_wrapper_subclass(LT, (2,), dtype=kiln.int64, requires_grad=True)
    w = kiln.Tensor._make_wrapper_subclass(LT, [2, 3])
    assert w.dtype is kiln.get_default_dtype() and w.stride() == (3, 1)


def test_torch_dispatch_must_be_a_classmethod():
    with pytest.raises(TypeError, match="Plain.__torch_dispatch__ must be a classmethod"):
        class Plain(kiln.Tensor):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))


def test_an_in_place_op_on_a_wrapper_that_requires_grad_is_refused():
    LT = logging_tensor(kiln)
    w = LT(kiln.ones(3, requires_grad=True))
    with pytest.raises(NotImplementedError, match="add_ on a LoggingTensor .* requires grad"):
        w.add_(1)
    with kiln.no_grad():
        w.add_(1)
    np.testing.assert_allclose(w.elem.detach().numpy(), [2, 2, 2])


# ----------------------------------------------------------------------------- compile

def test_compile_runs_a_call_with_a_wrapper_eagerly_with_a_warning():
    LT = logging_tensor(kiln)
    compiled = kiln.compile(lambda x: (x * 2).exp())
    x = kiln.tensor([0.5, 1.0])
    with pytest.warns(UserWarning, match="__torch_dispatch__ of LoggingTensor"):
        out = compiled(LT(x))
    assert type(out) is LT and LT.log == ["aten.mul.Tensor", "aten.exp.default"]
    np.testing.assert_allclose(out.elem.numpy(), np.exp(2 * _value(x)), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(LT(x))                   # said once
    assert LT.log[2:] == ["aten.mul.Tensor", "aten.exp.default"]
    strict = kiln.compile(lambda x: x + 1, fullgraph=True)
    with pytest.raises(kiln.compiler.GraphBreak, match="__torch_dispatch__ of LoggingTensor"):
        strict(LT(x))


def test_compile_breaks_where_a_wrapper_is_reached_inside():
    LT = logging_tensor(kiln)
    held = LT(kiln.tensor([1.0, 2.0]))
    strict = kiln.compile(lambda x: x + held, fullgraph=True)
    with pytest.raises(kiln.compiler.GraphBreak, match="LoggingTensor"):
        strict(kiln.tensor([3.0, 4.0]))
    loose = kiln.compile(lambda x: x + held)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loose(kiln.tensor([3.0, 4.0]))
    np.testing.assert_allclose(out.elem.numpy(), [4.0, 6.0])


# ----------------------------------------------------------------------------- more ops

MORE_OPS = {
    "mask": lambda lib, x, y: x[x > 0],
    "index": lambda lib, x, y: x[lib.tensor([0, 2])],
    "max(dim)": lambda lib, x, y: x.max(1),
    "sort": lambda lib, x, y: x.sort(1),
    "topk": lambda lib, x, y: x.topk(2, 1),
    "split": lambda lib, x, y: x.split(2),
    "var": lambda lib, x, y: x.var(0),
    "cross_entropy": lambda lib, x, y: lib.nn.functional.cross_entropy(
        x, lib.tensor([0, 1, 2, 0])),
    "layer_norm": lambda lib, x, y: lib.nn.functional.layer_norm(x, (3,)),
    "masked_fill": lambda lib, x, y: x.masked_fill(x > 0, 0.5),
    "repeat": lambda lib, x, y: x.repeat(2, 1),
    "flip": lambda lib, x, y: x.flip(0),
    "nonzero": lambda lib, x, y: x.nonzero(),
    "einsum": lambda lib, x, y: lib.einsum("ij,kj->ik", x, y),
    "plain operand": lambda lib, x, y: x @ lib.ones(3, 2) + lib.ones(2),
    "new_full": lambda lib, x, y: x.new_full((2,), 3.0),
    "deepcopy": lambda lib, x, y: __import__("copy").deepcopy(x),
    "clamp_": lambda lib, x, y: x.clone().clamp_(min=0),
    "unique": lambda lib, x, y: (x * 2).round().unique(return_counts=True),
}


def _plain(out, lib):
    if isinstance(out, lib.Tensor):
        return type(out).__name__, _value(out.elem)
    return [_plain(o, lib) for o in out]


@pytest.mark.parametrize("case", list(MORE_OPS))
def test_more_ops_on_a_logging_tensor_give_torchs_values_as_wrappers(case):
    results = {}
    for lib in (kiln, torch):
        LT = logging_tensor(lib)
        x, y = _inputs(lib)
        results[lib] = _plain(MORE_OPS[case](lib, LT(x), LT(y)), lib)
    flat = [results[kiln]] if isinstance(results[kiln], tuple) else results[kiln]
    expected = [results[torch]] if isinstance(results[torch], tuple) else results[torch]
    assert len(flat) == len(expected)
    for (k_type, k_value), (t_type, t_value) in zip(flat, expected):
        assert k_type == t_type == "LoggingTensor"
        np.testing.assert_allclose(k_value, t_value, rtol=1e-6, atol=1e-6)


def test_random_fills_reach_the_class():
    for lib in (kiln, torch):
        LT = logging_tensor(lib)
        w = LT(lib.zeros(1000))
        lib.manual_seed(0)
        w.normal_()
        w.uniform_(2.0, 3.0)
        assert LT.log == ["aten.normal_.default", "aten.uniform_.default"]
        assert 2.0 <= float(w.elem.min()) and float(w.elem.max()) < 3.0


def _train_two_tensor_model(lib, optimizer: str, kind: str):
    """Two steps of `optimizer` on a model whose parameters and input are TwoTensors."""
    TT = two_tensor(lib)
    lib.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind == "mlp":
        model = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.Tanh(), lib.nn.Linear(4, 2))
        x = lib.tensor(rng.standard_normal((5, 3)).astype(np.float32))
    else:       # batch norm updates its plain running stats with the wrappers' batch stats
        model = lib.nn.Sequential(lib.nn.Conv2d(2, 3, 3), lib.nn.BatchNorm2d(3), lib.nn.ReLU(),
                                  lib.nn.Flatten(), lib.nn.Linear(12, 2))
        x = lib.tensor(rng.standard_normal((2, 2, 6, 3)).astype(np.float32))
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            a = lib.tensor(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.5)
            setattr(module, name, lib.nn.Parameter(TT(a, a * 2)))
    opt = getattr(lib.optim, optimizer)(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        (model(TT(x, x * 0.5)) ** 2).sum().backward()
        opt.step()
    return [(_value(p.a), _value(p.b)) for p in model.parameters()]


# (a conv's bias before batch norm gets a gradient of rounding noise, which Adam-like
# optimizers scale up to a step: the CNN runs with SGD only)
@pytest.mark.parametrize("optimizer,kind", [
    ("SGD", "mlp"), ("Adam", "mlp"), ("AdamW", "mlp"), ("RMSprop", "mlp"), ("Adagrad", "mlp"),
    ("SGD", "cnn")])
def test_training_a_model_of_two_tensors(optimizer, kind):
    k_params = _train_two_tensor_model(kiln, optimizer, kind)
    t_params = _train_two_tensor_model(torch, optimizer, kind)
    for (ka, kb), (ta, tb) in zip(k_params, t_params):
        np.testing.assert_allclose(ka, ta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kb, tb, rtol=1e-5, atol=1e-6)


@LIBS
def test_gradients_of_wrappers_accumulate_into_plain_grads_hooks_and_autograd_grad(lib):
    LT = logging_tensor(lib)
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    (x * 2).sum().backward()
    (x * LT(lib.tensor([3.0, 4.0]))).sum().backward()     # a wrapper gradient into x.grad
    assert type(x.grad) is lib.Tensor and LT.log[-1] == "aten.add_.Tensor"
    np.testing.assert_allclose(_value(x.grad), [5.0, 6.0])
    w = LT(lib.tensor([1.0, 2.0], requires_grad=True))
    g, = lib.autograd.grad((w * w).sum(), [w])
    assert type(g) is LT
    np.testing.assert_allclose(_value(g.elem), [2.0, 4.0])
    w.register_hook(lambda grad: grad * 10)
    (w * 3).sum().backward()
    assert type(w.grad) is LT
    np.testing.assert_allclose(_value(w.grad.elem), [30.0, 30.0])


@LIBS
def test_make_wrapper_subclass_takes_torchs_arguments(lib):
    class Meta(lib.Tensor):
        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            return NotImplemented
    w = lib.Tensor._make_wrapper_subclass(Meta, (2, 3, 4, 5), None, None,
                                          lib.channels_last, lib.float64)
    # without strides they are row-major's, whatever memory_format says
    assert w.stride() == (60, 20, 5, 1) and w.dtype == lib.float64
    v = lib.Tensor._make_wrapper_subclass(Meta, [3, 2], strides=[1, 3], dtype=lib.float32,
                                          device="cpu", requires_grad=True)
    assert v.stride() == (1, 3) and not v.is_contiguous() and v.requires_grad
    assert v.shape == (3, 2) and v.device.type == "cpu" and v.is_leaf


def test_no_dispatch_runs_ops_on_the_tensors_own_data():
    LT = logging_tensor(kiln)
    w = LT(kiln.ones(2))
    with kiln_no_dispatch():
        with pytest.raises(RuntimeError, match="this LoggingTensor was made by"):
            w + 1                   # a wrapper has no data of its own to compute on
    assert LT.log == []
    np.testing.assert_allclose(_value((w + 1).elem), [2.0, 2.0])


def test_nothing_is_routed_until_a_class_that_dispatches_is_defined():
    # a fresh interpreter: the dispatcher's counter and the methods' flag stay 0 through
    # kiln's import and an opted-out subclass, and count one once a class dispatches
    script = """
import kiln
from kiln.tracer.dispatch_mode import ACTIVE
from kiln.tracer.tensor import OBSERVED, WRAPPERS
import kiln.nn, kiln.optim, kiln.masked, kiln.nested
assert (ACTIVE[0], WRAPPERS[0]) == (0, 0)
class Opted(kiln.Tensor):
    __torch_dispatch__ = kiln._C._disabled_torch_dispatch_impl
assert (ACTIVE[0], WRAPPERS[0]) == (0, 0) and not Opted._dispatches
class Logs(kiln.Tensor):
    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))
assert (ACTIVE[0], WRAPPERS[0]) == (1, 1) and Logs._dispatches and not OBSERVED[0]
"""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
