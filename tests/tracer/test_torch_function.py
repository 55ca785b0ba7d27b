"""`__torch_function__`: Tensor subclasses, tensor-likes and TorchFunctionModes, against PyTorch.

Each test writes the same user code for kiln and torch (`lib` is either) and compares what the
overrides saw (the functions' names, the types), the results' types and values, and gradients.
Defining a subclass turns kiln's protocol on for the rest of the process; the whole suite also
passes with it on from the start (checked with a plugin that activates it at import).
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch

import kiln
from kiln.overrides import BaseTorchFunctionMode, TorchFunctionMode

LIBS = pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])


def _value(t):
    return np.asarray(t.detach().numpy() if hasattr(t, "detach") else t)


def _logging_subclass(lib):
    """A subclass that records the name of every function it is handed."""
    seen = []

    class Logged(lib.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return super().__torch_function__(func, types, args, kwargs)

    return Logged, seen


def _ops(lib, y):
    """User code on a subclass instance: operators, methods, functions, nn.functional."""
    F = lib.nn.functional
    w = lib.ones(2, 3)
    return [y + 1, 1 + y, y * y, 2 - y, y / 2, -y, abs(y), y @ y, y ** 2, y > 0, y[0],
            lib.add(y, 1), y.sum(), y.mean(), y.exp(), lib.relu(y), F.relu(y),
            F.linear(y, w), lib.cat([y, y]), y.clone(), y.reshape(3, 1), y.T]


@LIBS
def test_a_subclass_sees_each_call_under_pytorchs_names(lib):
    Logged, seen = _logging_subclass(lib)
    y = lib.tensor([1.0, -2.0, 3.0]).as_subclass(Logged)
    _ops(lib, y)
    y.shape, len(y), y.dim(), y.size()
    expected = ["add", "add", "mul", "__rsub__", "div", "neg", "abs", "matmul", "pow", "gt",
                "__getitem__", "add", "sum", "mean", "exp", "relu", "relu", "linear", "cat",
                "clone", "reshape", "__get__", "__get__", "__len__", "dim", "size"]
    assert seen == expected


def test_results_are_the_subclass_with_pytorchs_values():
    results = {}
    for lib in (kiln, torch):
        class Sub(lib.Tensor):
            pass
        y = lib.tensor([1.0, -2.0, 3.0]).as_subclass(Sub)
        out = _ops(lib, y)
        results[lib] = [(type(r).__name__, _value(r)) for r in out]
    for (k_type, k_val), (t_type, t_val) in zip(results[kiln], results[torch]):
        assert k_type == t_type
        np.testing.assert_allclose(k_val, t_val, rtol=1e-6)


@LIBS
def test_tuples_and_named_tuples_hold_the_subclass(lib):
    class Sub(lib.Tensor):
        pass
    y = lib.arange(6.0).as_subclass(Sub)
    parts = lib.split(y, 2)
    assert type(parts) is tuple and all(type(p) is Sub for p in parts)
    values, indices = y.reshape(2, 3).max(1)
    assert type(values) is Sub and type(indices) is Sub
    assert type(y.reshape(2, 3).max(1)).__name__ == "max"
    assert type(y.unbind(0)[0]) is Sub


@LIBS
def test_as_subclass_keeps_the_history_and_grad_is_not_wrapped(lib):
    class Sub(lib.Tensor):
        pass
    x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x.as_subclass(Sub)
    assert y.grad_fn.name() == "AliasBackward0" and not y.is_leaf
    (y * y).sum().backward()
    np.testing.assert_allclose(_value(x.grad), [2.0, 4.0, 6.0])
    leaf = lib.Tensor._make_subclass(Sub, lib.ones(2), True)
    assert type(leaf) is Sub and leaf.is_leaf and leaf.requires_grad
    (leaf * 3).sum().backward()
    assert type(leaf.grad) is lib.Tensor        # .grad is handed back as autograd made it
    np.testing.assert_allclose(_value(leaf.grad), [3.0, 3.0])


@LIBS
def test_subclass_constructors(lib):
    class Sub(lib.Tensor):
        pass
    x = lib.tensor([1.0, 2.0], requires_grad=True)
    s = Sub(x)                                  # an alias of x, its history kept
    assert type(s) is Sub and s.grad_fn is not None
    s.sum().backward()
    np.testing.assert_allclose(_value(x.grad), [1.0, 1.0])
    t = Sub([1.0, 2.0])                         # the legacy constructor, as a Sub
    assert type(t) is Sub and t.dtype is lib.float32
    np.testing.assert_allclose(_value(t), [1.0, 2.0])

    class Tagged(lib.Tensor):                   # the __new__/__init__ pattern with metadata
        @staticmethod
        def __new__(cls, data, tag):
            return super().__new__(cls, data)

        def __init__(self, data, tag):
            self.tag = tag

    g = Tagged(lib.ones(2), "weights")
    assert type(g) is Tagged and g.tag == "weights"
    assert type(g + 1) is Tagged and not hasattr(g + 1, "tag")   # results are new objects


@LIBS
def test_repr_names_the_subclass(lib):
    class Sub(lib.Tensor):
        pass
    y = lib.tensor([[1.5, 2.0], [3.0, 4.25]]).as_subclass(Sub)
    assert repr(y) == "Sub([[1.5000, 2.0000],\n     [3.0000, 4.2500]])"
    p = lib.nn.Parameter(lib.ones(2))
    assert repr(p).startswith("Parameter containing:\ntensor(")
    assert type(p * 2) is lib.Tensor            # Parameter takes no part: results are plain


@LIBS
def test_copy_and_pickle_keep_the_subclass_and_its_attributes(lib):
    y = lib.tensor([1.0, 2.0]).as_subclass(_PicklableSub if lib is kiln else _TorchSub)
    y.note = "kept"
    # (torch's deepcopy of such a subclass asks for a new_empty that returns the subclass)
    copies = [pickle.loads(pickle.dumps(y))] + ([copy.deepcopy(y)] if lib is kiln else [])
    for other in copies:
        assert type(other) is type(y) and other.note == "kept"
        np.testing.assert_allclose(_value(other), [1.0, 2.0])


class _PicklableSub(kiln.Tensor):
    pass


class _TorchSub(torch.Tensor):
    pass


def _through_nn_layers_and_autograd(lib):
    lib.manual_seed(0)
    layer = lib.nn.Linear(4, 3)
    with lib.no_grad():
        layer.weight.copy_(lib.linspace(-1, 1, 12).reshape(3, 4))
        layer.bias.fill_(0.5)

    class Sub(lib.Tensor):
        pass
    x = lib.linspace(0, 1, 8).reshape(2, 4).as_subclass(Sub)
    out = lib.nn.functional.gelu(layer(x))
    assert type(out) is Sub
    out.pow(2).sum().backward()
    return _value(out), _value(layer.weight.grad), _value(layer.bias.grad)


def test_a_subclass_through_nn_layers_matches_torch():
    ours = _through_nn_layers_and_autograd(kiln)
    theirs = _through_nn_layers_and_autograd(torch)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@LIBS
def test_disabling_subclass_dispatch_gives_plain_tensors(lib):
    Logged, seen = _logging_subclass(lib)
    y = lib.ones(2).as_subclass(Logged)
    with lib._C.DisableTorchFunctionSubclass():
        out = y + 1
    assert seen == [] and type(out) is lib.Tensor
    assert type(y + 1) is Logged and seen == ["add"]


@LIBS
def test_a_custom_override_that_unwraps_and_rewraps(lib):
    """The pattern of PyTorch's "extending torch" notes: a subclass carrying metadata that
    handles some functions itself and passes the rest through."""
    class Meta(lib.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is lib.Tensor.add or func is lib.add:
                with lib._C.DisableTorchFunctionSubclass():
                    return (args[0] + args[1] * 10).as_subclass(lib.Tensor)
            return super().__torch_function__(func, types, args, kwargs)

    y = lib.ones(2).as_subclass(Meta)
    assert type(y + 1) is lib.Tensor
    np.testing.assert_allclose(_value(y + 1), [11.0, 11.0])
    np.testing.assert_allclose(_value(lib.add(y, 2)), [21.0, 21.0])
    assert type(y * 2) is Meta


@LIBS
def test_a_tensor_like_that_is_not_a_tensor(lib):
    """A class with `__torch_function__` that handles `mean` (and nothing else)."""
    class Diagonal:
        def __init__(self, n, value):
            self.n, self.value = n, value

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func is lib.mean:
                return float(args[0].value) / args[0].n
            return NotImplemented

    d = Diagonal(4, 2.0)
    assert lib.overrides.has_torch_function((d,))
    assert lib.mean(d) == 0.5
    assert lib.overrides.is_tensor_like(d) and lib.overrides.is_tensor_like(lib.ones(1))
    assert not lib.overrides.is_tensor_like(3)
    with pytest.raises(TypeError, match="all __torch_function__ handlers returned NotImpl"):
        lib.sum(d)


@LIBS
def test_handle_torch_function_for_the_users_own_function(lib):
    ov = lib.overrides

    def scaled(x, factor=2.0):
        if ov.has_torch_function_unary(x):
            return ov.handle_torch_function(scaled, (x,), x, factor=factor)
        return x * factor

    seen = []

    class Sub(lib.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append((func is scaled, kwargs))
            return super().__torch_function__(func, types, args, kwargs)

    out = scaled(lib.ones(2).as_subclass(Sub), factor=3.0)
    assert type(out) is Sub and seen[0] == (True, {"factor": 3.0})
    np.testing.assert_allclose(_value(out), [3.0, 3.0])
    assert not ov.has_torch_function((lib.ones(1), 1.0))


# ----------------------------------------------------------------------------- modes

@LIBS
def test_a_mode_sees_factories_ops_and_nn_calls(lib):
    seen = []

    class Logging(TorchFunctionMode if lib is kiln else torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Logging():
        a = lib.randn(2)
        b = lib.zeros(2)
        c = (a + b).sum()
        lib.nn.functional.relu(a)
        lib.manual_seed(0)                    # ignored: a setting, not a tensor function
    assert seen == ["randn", "zeros", "add", "sum", "relu"]
    assert type(c) is lib.Tensor


@LIBS
def test_nested_modes_run_innermost_first_and_call_down(lib):
    order = []
    base = BaseTorchFunctionMode if lib is kiln else torch.overrides.BaseTorchFunctionMode

    class Tag(base):
        def __init__(self, name):
            self.name = name

        def __torch_function__(self, func, types, args=(), kwargs=None):
            order.append(self.name)
            return super().__torch_function__(func, types, args, kwargs)

    with Tag("outer"), Tag("inner"):
        lib.ones(1).neg()
    assert order == ["inner", "outer", "inner", "outer"]
    assert lib.overrides._get_current_function_mode_stack() == []


def test_the_function_modes_tutorial_under_compile():
    """pytorch/tutorials' torch_compile_torch_function_modes recipe, in its form: a mode that
    turns Tensor.add into mul around a compiled function (kiln runs it eagerly, with a
    warning, while the mode is on; without the mode the compiled program runs)."""
    torch_ = kiln

    class AddToMultiplyMode(torch_.overrides.BaseTorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func == torch_.Tensor.add:
                func = torch_.mul
            return super().__torch_function__(func, types, args, kwargs)

    @torch_.compile()
    def test_fn(x, y):
        return x + y * x

    x = torch_.rand(2, 2)
    y = torch_.rand_like(x)
    assert torch_.allclose(test_fn(x, y), x + y * x)
    with pytest.warns(UserWarning, match="AddToMultiplyMode in effect; it runs eagerly"):
        with AddToMultiplyMode():
            z = test_fn(x, y)
    assert torch_.allclose(z, x * y * x)
    assert torch_.allclose(test_fn(x, y), x + y * x)       # the mode is gone: compiled again


def test_compile_runs_a_subclass_call_eagerly_and_fullgraph_refuses():
    class Sub(kiln.Tensor):
        pass

    def double(x):
        return x * 2

    compiled = kiln.compile(double)
    x = kiln.ones(3).as_subclass(Sub)
    with pytest.warns(UserWarning, match="__torch_function__ of Sub"):
        out = compiled(x)
    assert type(out) is Sub
    with pytest.raises(kiln.compiler.GraphBreak, match="__torch_function__ of Sub"):
        kiln.compile(double, fullgraph=True)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(compiled(kiln.ones(3))) is kiln.Tensor      # plain inputs still compile


def test_overridable_functions_and_names():
    ov = kiln.overrides
    table = ov.get_overridable_functions()
    assert kiln.add in table[kiln] and kiln.Tensor.add in table[kiln.Tensor]
    assert kiln.nn.functional.relu in table[kiln.nn.functional]
    assert ov.resolve_name(kiln.Tensor.add) == "kiln.Tensor.add"
    assert ov.resolve_name(kiln.add) == "kiln.add"
    assert kiln.manual_seed in ov.get_ignored_functions()
    assert kiln.Tensor.grad.__get__ in ov.get_default_nowrap_functions()
    assert ov.is_tensor_method_or_property(kiln.Tensor.add)
    assert not ov.is_tensor_method_or_property(kiln.add)


def test_only_public_functions_dispatch_under_their_public_names():
    ours = kiln.overrides.get_overridable_functions()
    names = {space: {f.__name__ for f in fns} for space, fns in ours.items()}
    assert {"op_error", "user_stacklevel"}.isdisjoint(names[kiln.linalg] | names[kiln.fft])
    assert {"is_compiling", "op_error", "lookup_rows"}.isdisjoint(names[kiln.nn.functional])
    assert {"manual_seed", "is_tensor", "compile", "set_default_dtype"}.isdisjoint(names[kiln])
    assert {"lu", "cholesky", "detach", "conv2d"} <= names[kiln] | names[kiln.nn.functional]
    for fns in ours.values():
        assert len(fns) == len(set(fns))


@LIBS
def test_a_parameter_of_a_subclass_stays_the_subclass(lib):
    class Sub(lib.Tensor):
        pass
    layer = lib.nn.Linear(2, 2)
    layer.weight = lib.nn.Parameter(lib.ones(2, 2).as_subclass(Sub))
    assert type(layer.weight) is Sub and isinstance(layer.weight, lib.nn.Parameter)
    assert layer.weight.is_leaf and layer.weight.requires_grad
    assert [type(p).__name__ for p in layer.parameters()] == ["Sub", "Parameter"]
    assert not isinstance(lib.ones(1), lib.nn.Parameter)
    out = layer(lib.ones(3, 2))
    assert type(out) is Sub
    out.sum().backward()
    np.testing.assert_allclose(_value(layer.weight.grad), np.full((2, 2), 3.0))
    lib.optim.SGD(layer.parameters(), lr=0.5).step()
    np.testing.assert_allclose(_value(layer.weight), np.full((2, 2), -0.5))


class _SavedSub(kiln.Tensor):
    pass


def test_save_and_load_keep_a_subclass_and_need_it_allowed(tmp_path):
    s = kiln.tensor([1.0, 2.0]).as_subclass(_SavedSub)
    s.note = "kept"
    path = tmp_path / "sub.pt"
    kiln.save({"s": s, "plain": kiln.ones(2)}, path)
    with pytest.raises(kiln.serialization.WeightsOnlyUnpicklingError, match="_SavedSub"):
        kiln.load(path)
    with kiln.serialization.safe_globals([_SavedSub]):
        loaded = kiln.load(path)
    assert type(loaded["s"]) is _SavedSub and loaded["s"].note == "kept"
    assert type(loaded["plain"]) is kiln.Tensor
    np.testing.assert_allclose(_value(loaded["s"]), [1.0, 2.0])
