"""The Module API against PyTorch's: names, traversal, state_dict, hooks, modes, repr."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import torch_to_kiln_state


def _net(nn):
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 4, 3, padding=1)), ("bn", nn.BatchNorm2d(4)), ("act", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("flat", nn.Flatten()),
        ("head", nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.2), nn.Linear(8, 3))),
    ]))


class Block:
    """The same custom module written against either library."""

    @staticmethod
    def make(nn, lib):
        class Custom(nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = nn.Parameter(lib.ones(3))
                self.register_buffer("offset", lib.zeros(3))
                self.register_buffer("scratch", lib.zeros(2), persistent=False)
                self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])
                self.extra = nn.ModuleDict({"b": nn.Linear(3, 2), "a": nn.Tanh()})
                self.shared = self.layers[0]

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x) * self.scale + self.offset
                return self.extra["a"](self.extra["b"](x))
        return Custom()


def test_names_and_traversal_match_torch():
    for make in (_net, lambda nn: Block.make(nn, kiln if nn is kiln.nn else torch),
                 lambda nn: nn.LSTM(3, 4, 2, bidirectional=True),
                 lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2)):
        k, t = make(kiln.nn), make(torch.nn)
        assert [n for n, _ in k.named_parameters()] == [n for n, _ in t.named_parameters()]
        assert [n for n, _ in k.named_buffers()] == [n for n, _ in t.named_buffers()]
        assert [n for n, _ in k.named_modules()] == [n for n, _ in t.named_modules()]
        assert [n for n, _ in k.named_children()] == [n for n, _ in t.named_children()]
        assert list(k.state_dict()) == list(t.state_dict())
        assert [tuple(p.shape) for p in k.parameters()] == [tuple(p.shape)
                                                           for p in t.parameters()]
        assert len(list(k.modules())) == len(list(t.modules()))
        assert repr(k) == repr(t).replace("torch.", "kiln.")
    k = Block.make(kiln.nn, kiln)
    assert [n for n, _ in k.named_parameters(remove_duplicate=False)] == \
        [n for n, _ in Block.make(torch.nn, torch).named_parameters(remove_duplicate=False)]
    assert [n for n, _ in k.named_parameters(prefix="m", recurse=False)] == ["m.scale"]


def test_parameter_is_a_tensor_that_requires_grad():
    p = kiln.nn.Parameter(kiln.tensor([1.0, 2.0]))
    assert isinstance(p, kiln.Tensor) and p.requires_grad and p.is_leaf
    assert repr(p) == "Parameter containing:\ntensor([1., 2.], requires_grad=True)"
    assert str(p) == repr(p)          # print(param) too, as in PyTorch
    assert not kiln.nn.Parameter(kiln.tensor([1.0]), requires_grad=False).requires_grad
    assert type(p * 2) is kiln.Tensor
    with pytest.raises(RuntimeError):
        kiln.nn.Parameter(kiln.tensor([1, 2]))
    clone = copy.deepcopy(p)
    assert isinstance(clone, kiln.nn.Parameter) and clone.requires_grad
    assert clone._data is not p._data


def test_deepcopy_of_a_parameter_leaves_its_grad_behind_as_torch():
    """copy.deepcopy(model) after a backward (DPO's frozen reference model, an EMA copy) gives
    parameters without .grad in PyTorch (Parameter.__deepcopy__ clones the data alone); a plain
    tensor keeps its copied grad. kiln copied the parameters' grads along."""
    for lib in (torch, kiln):
        model = lib.nn.Linear(2, 2)
        model(lib.ones(1, 2)).sum().backward()
        copied = copy.deepcopy(model)
        assert copied.weight.grad is None and copied.bias.grad is None, lib.__name__
        assert model.weight.grad is not None
        t = lib.ones(2, requires_grad=True)
        t.grad = lib.full((2,), 3.0)
        assert copy.deepcopy(t).grad.tolist() == [3.0, 3.0], lib.__name__


def test_parameter_shares_memory_with_its_data():
    t = kiln.zeros(3)
    p = kiln.nn.Parameter(t)
    with kiln.no_grad():
        p.add_(1.0)
    np.testing.assert_array_equal(t.numpy(), [1.0, 1.0, 1.0])


def test_setattr_registration_and_errors():
    m = kiln.nn.Module()
    m.w = kiln.nn.Parameter(kiln.ones(2))
    m.sub = kiln.nn.Linear(2, 2)
    m.plain = kiln.ones(2)              # a plain tensor is not registered
    m.register_buffer("buf", kiln.ones(1))
    assert [n for n, _ in m.named_parameters()] == ["w", "sub.weight", "sub.bias"]
    assert [n for n, _ in m.named_buffers()] == ["buf"]
    assert "plain" not in m.state_dict()
    m.w = None
    assert [n for n, _ in m.named_parameters()] == ["sub.weight", "sub.bias"]
    with pytest.raises(TypeError):
        m.w = kiln.ones(2)                  # a tensor for a parameter slot
    with pytest.raises(TypeError):
        m.buf = 3                           # a number for a buffer slot
    with pytest.raises(KeyError):
        m.register_buffer("a.b", kiln.ones(1))
    with pytest.raises(KeyError):
        m.register_parameter("plain", kiln.nn.Parameter(kiln.ones(1)))
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        m.missing
    del m.sub
    assert [n for n, _ in m.named_parameters()] == []
    m.buf = kiln.zeros(3)
    assert tuple(m.state_dict()["buf"].shape) == (3,)


def test_state_dict_round_trip_and_strict_loading():
    src, dst = _net(kiln.nn), _net(kiln.nn)
    sd = src.state_dict()
    assert all(not v.requires_grad for v in sd.values())
    assert sd["conv.weight"]._data is src.conv.weight._data     # shares memory, detached
    result = dst.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert repr(result) == "<All keys matched successfully>"
    for k in sd:
        np.testing.assert_array_equal(dst.state_dict()[k].numpy(), sd[k].numpy())
    assert dst.conv.weight.requires_grad and isinstance(dst.conv.weight, kiln.nn.Parameter)

    partial = dict(sd)
    del partial["conv.bias"]
    partial["surprise"] = kiln.ones(1)
    with pytest.raises(RuntimeError) as err:
        dst.load_state_dict(partial)
    message = str(err.value)
    assert message.startswith("Error(s) in loading state_dict for Sequential:")
    assert 'Missing key(s) in state_dict: "conv.bias".' in message
    assert 'Unexpected key(s) in state_dict: "surprise".' in message
    result = dst.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["conv.bias"] and result.unexpected_keys == ["surprise"]

    # the same missing/unexpected keys as torch reports
    t_net = _net(torch.nn)
    t_partial = {k: torch.from_numpy(v.numpy().copy()) for k, v in partial.items()}
    t_result = t_net.load_state_dict(t_partial, strict=False)
    assert (t_result.missing_keys, t_result.unexpected_keys) == (result.missing_keys,
                                                                 result.unexpected_keys)

    bad = dict(sd)
    bad["head.0.weight"] = kiln.ones(3, 3)
    with pytest.raises(RuntimeError, match="size mismatch for head.0.weight"):
        dst.load_state_dict(bad)


def test_non_persistent_buffers_are_not_saved():
    k = Block.make(kiln.nn, kiln)
    assert "scratch" not in k.state_dict()
    assert "scratch" in dict(k.named_buffers())
    assert k.load_state_dict(k.state_dict()).missing_keys == []


def test_torch_checkpoint_loads_and_outputs_match():
    t_net, k_net = _net(torch.nn).double().eval(), _net(kiln.nn).double().eval()
    k_net.load_state_dict(torch_to_kiln_state(t_net))
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 4))
    np.testing.assert_allclose(k_net(kiln.tensor(x)).detach().numpy(),
                               t_net(torch.from_numpy(x)).detach().numpy(), atol=1e-12)


def test_train_eval_propagate():
    net = _net(kiln.nn)
    assert net.training and all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.head.train()
    assert net.head[1].training and not net.bn.training
    with pytest.raises(ValueError):
        net.train("yes")


def test_hooks():
    lin = kiln.nn.Linear(2, 2)
    calls = []
    pre = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    post = lin.register_forward_hook(lambda m, args, out: calls.append(out.shape) or out + 1)
    x = kiln.ones(1, 2)
    out = lin(x)
    np.testing.assert_allclose(out.detach().numpy(), lin.bias.detach().numpy()[None] + 1)
    assert calls == [kiln.Size([1, 2])]
    pre.remove()
    post.remove()
    np.testing.assert_allclose(lin(x).detach().numpy(),
                               (x @ lin.weight.t() + lin.bias).detach().numpy())
    assert calls == [kiln.Size([1, 2])]
    seen = []
    with lin.register_forward_hook(lambda m, a, k, o: seen.append(sorted(k)), with_kwargs=True):
        lin(input=x)
    assert seen == [["input"]]


def test_zero_grad_apply_requires_grad():
    net = kiln.nn.Sequential(kiln.nn.Linear(3, 2), kiln.nn.Linear(2, 1))
    net(kiln.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(not np.any(p.grad.numpy()) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "Linear", "Sequential"]      # children first, as in torch
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_to_double_float_keeps_parameter_identity():
    net = _net(kiln.nn)
    params = list(net.parameters())
    assert net.double() is net
    assert all(p.dtype is kiln.float64 for p in net.parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert net.bn.num_batches_tracked.dtype is kiln.int64       # integer buffers untouched
    assert net.bn.running_mean.dtype is kiln.float64
    net.to(kiln.float32).cpu()
    assert all(p.dtype is kiln.float32 for p in net.parameters())
    net.to("cpu", dtype=kiln.float64)
    assert net.conv.weight.dtype is kiln.float64
    with pytest.raises(TypeError):
        net.to(kiln.int64)


def test_containers():
    nn = kiln.nn
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[-1], nn.Linear)
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is seq[0]
    seq.append(nn.Sigmoid())
    assert [n for n, _ in seq.named_children()][-1] == "3"
    assert tuple(seq(kiln.randn(5, 2)).shape) == (5, 1)
    del seq[1]
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    seq[0] = nn.Linear(2, 3)
    assert len(list(iter(seq))) == 3
    ml = nn.ModuleList([nn.Linear(1, 1)])
    ml.append(nn.Linear(1, 2))
    ml += [nn.Linear(2, 2)]
    assert len(ml) == 3 and [n for n, _ in ml.named_parameters()][-1] == "2.bias"
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.ReLU()
    assert list(md.keys()) == ["a", "b"] and "a" in md and len(md) == 2
    pl = nn.ParameterList([nn.Parameter(kiln.ones(2)), kiln.zeros(3)])
    assert len(pl) == 2 and [n for n, _ in pl.named_parameters()] == ["0", "1"]
    assert isinstance(pl[1], nn.Parameter)
    pd = nn.ParameterDict({"x": nn.Parameter(kiln.ones(1))})
    assert list(pd.keys()) == ["x"]


def test_reprs_match_torch():
    makes = [
        lambda nn: nn.Conv2d(1, 2, 3, padding="same"),
        lambda nn: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect", bias=False),
        lambda nn: nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=1, groups=1),
        lambda nn: nn.Conv1d(2, 4, 3, dilation=2, groups=2),
        lambda nn: nn.BatchNorm2d(3), lambda nn: nn.BatchNorm1d(3, affine=False),
        lambda nn: nn.LayerNorm(8), lambda nn: nn.LayerNorm(8, bias=False),
        lambda nn: nn.GroupNorm(2, 4), lambda nn: nn.Embedding(10, 3, padding_idx=0),
        lambda nn: nn.Dropout(), lambda nn: nn.MaxPool2d(2), lambda nn: nn.AvgPool2d(2),
        lambda nn: nn.AvgPool1d(3), lambda nn: nn.MaxPool1d(3),
        lambda nn: nn.AdaptiveAvgPool2d((1, 1)), lambda nn: nn.Softmax(),
        lambda nn: nn.LogSoftmax(dim=1), lambda nn: nn.GELU(approximate="tanh"),
        lambda nn: nn.ReLU(), lambda nn: nn.LeakyReLU(), lambda nn: nn.ELU(),
        lambda nn: nn.Softplus(), lambda nn: nn.SiLU(), lambda nn: nn.Tanh(),
        lambda nn: nn.Bilinear(2, 3, 4), lambda nn: nn.Unflatten(1, (2, 3)),
        lambda nn: nn.Flatten(), lambda nn: nn.Identity(), lambda nn: nn.RMSNorm(3),
        lambda nn: nn.ModuleList(), lambda nn: nn.Sequential(),
        lambda nn: nn.TransformerEncoderLayer(8, 2, 16, norm_first=True),
    ]
    for make in makes:
        assert repr(make(kiln.nn)) == repr(make(torch.nn))


def test_module_is_callable_and_forward_required():
    with pytest.raises(NotImplementedError, match="forward"):
        kiln.nn.Module()(kiln.ones(1))


def test_reassigned_child_keeps_its_place_in_state_dict_like_torch():
    def make(nn):
        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = nn.Linear(2, 3)
                self.decoder = nn.Linear(3, 2)
                self.head = nn.Linear(2, 2)
                self.encoder = nn.Linear(2, 3, bias=False)     # replaced in place
                self.decoder.weight = nn.Parameter(self.decoder.weight.detach() * 2)
        return Model()
    import torch
    assert list(make(kiln.nn).state_dict()) == list(make(torch.nn).state_dict())


@pytest.mark.parametrize("overwrite", [False, True])
def test_future_conversion_switches_decide_parameter_identity_like_torch(overwrite):
    """torch.__future__: with overwrite on, .double() makes new Parameter objects (an old
    reference keeps float32 values); by default (and with swap on) the objects stay, converted,
    with their gradients."""
    seen = {}
    for lib in (torch, kiln):
        lib.__future__.set_overwrite_module_params_on_conversion(overwrite)
        lib.__future__.set_swap_module_params_on_conversion(not overwrite)
        try:
            m = lib.nn.Linear(2, 3)
            m.weight.grad = lib.ones(3, 2)
            w = m.weight
            m.double()
            seen[lib.__name__] = (w is m.weight, str(w.dtype)[-7:], str(m.weight.dtype)[-7:],
                                  str(m.weight.grad.dtype)[-7:],
                                  type(m.weight).__name__, m.weight.requires_grad,
                                  lib.__future__.get_swap_module_params_on_conversion())
        finally:
            lib.__future__.set_overwrite_module_params_on_conversion(False)
            lib.__future__.set_swap_module_params_on_conversion(False)
    assert seen["kiln"] == seen["torch"]


def test_swap_tensors_swaps_contents_and_keeps_identity_like_torch():
    seen = {}
    for lib in (torch, kiln):
        p = lib.nn.Parameter(lib.tensor([1.0, 2.0]))
        p.grad = lib.tensor([0.5, 0.5])
        t = lib.tensor([[3.0], [4.0]], dtype=lib.float64)
        p_ref, t_ref = p, t
        lib.utils.swap_tensors(p, t)
        seen[lib.__name__] = (p is p_ref, t is t_ref, type(p).__name__, type(t).__name__,
                              p.tolist(), t.tolist(), str(p.dtype)[-7:], p.requires_grad,
                              t.requires_grad, None if p.grad is None else p.grad.tolist(),
                              t.grad.tolist())
    assert seen["kiln"] == seen["torch"]


def scaled_weight(lib):
    """The swap_tensors recipe's toy wrapper subclass: a payload and a scale; detach and
    _to_copy rebuild it around the converted payload."""
    aten = lib.ops.aten

    class ScaledWeight(lib.Tensor):
        @staticmethod
        def __new__(cls, elem, scale):
            return lib.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype,
                                                     device=elem.device)

        def __init__(self, elem, scale):
            self.elem, self.scale = elem, scale

        @classmethod
        def __torch_dispatch__(cls, func, types, args, kwargs):
            if func in (aten.detach.default, aten._to_copy.default):
                return cls(func(args[0].elem, *args[1:], **kwargs), args[0].scale)
            raise NotImplementedError(f"Unsupported function {func}")
    return ScaledWeight


@pytest.mark.parametrize("swap", [False, True])
def test_converting_a_wrapper_subclass_weight_sets_data_or_swaps_like_torch(swap):
    """.bfloat16() of a wrapper-subclass weight: setting .data changes the dtype but not the
    payload (the recipe's point); the swap path converts the payload too. kiln raised
    NotImplementedError on the .data path and ignored the swap switch."""
    seen = {}
    for lib in (torch, kiln):
        lib.__future__.set_swap_module_params_on_conversion(swap)
        try:
            m = lib.nn.Linear(3, 5)
            m.weight = lib.nn.Parameter(scaled_weight(lib)(m.weight, 0.5))
            w = m.weight
            m.bfloat16()
            seen[lib.__name__] = (w is m.weight, type(m.weight).__name__,
                                  str(m.weight.dtype)[-8:], str(m.weight.elem.dtype)[-8:],
                                  str(m.bias.dtype)[-8:], m.weight.scale,
                                  isinstance(m.weight, lib.nn.Parameter))
        finally:
            lib.__future__.set_swap_module_params_on_conversion(False)
    assert seen["kiln"] == seen["torch"]


def test_setting_data_between_a_wrapper_and_a_plain_tensor_raises():
    """PyTorch 2.13 accepts both and then crashes (a segmentation fault on the plain tensor's
    next op): kiln refuses the mix, naming both classes."""
    wrapped = scaled_weight(kiln)(kiln.ones(2), 1.0)
    with pytest.raises(RuntimeError, match="Tensor and ScaledWeight have incompatible"):
        kiln.ones(2).data = wrapped
    with pytest.raises(RuntimeError, match="ScaledWeight and Tensor have incompatible"):
        wrapped.data = kiln.ones(2)


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_with_swap_goes_through_module_load_like_torch(assign):
    """With the swap switch on, load_state_dict swaps in `param.module_load(value)`: by default
    the value (assign) or the parameter holding it, and what a subclass's __torch_function__
    returns for Tensor.module_load."""
    seen = {}
    for lib in (torch, kiln):
        lib.manual_seed(0)
        source = lib.nn.Linear(3, 2).state_dict()
        calls = []

        class Traced(lib.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                if func is lib.Tensor.module_load:
                    calls.append(type(args[1]).__name__)
                return super().__torch_function__(func, types, args, kwargs)

        lib.__future__.set_swap_module_params_on_conversion(True)
        try:
            m = lib.nn.Linear(3, 2)
            m.weight = lib.nn.Parameter(lib.zeros(2, 3).as_subclass(Traced))
            w, b = m.weight, m.bias
            m.load_state_dict(source, assign=assign)
            seen[lib.__name__] = (w is m.weight, b is m.bias, calls,
                                  m.weight.detach().as_subclass(lib.Tensor).tolist(),
                                  m.bias.tolist(), m.weight.requires_grad,
                                  isinstance(m.weight, lib.nn.Parameter))
        finally:
            lib.__future__.set_swap_module_params_on_conversion(False)
    assert seen["kiln"] == seen["torch"]


def test_module_load_returns_the_value_or_the_copied_parameter_like_torch():
    for lib in (torch, kiln):
        p = lib.zeros(2)
        v = lib.tensor([1.0, 2.0])
        assigned = p.module_load(v, assign=True)
        copied = p.module_load(v)
        assert assigned is not v and copied is not p and assigned.tolist() == [1.0, 2.0]
        assert p.tolist() == [1.0, 2.0] and copied.tolist() == [1.0, 2.0]


def test_load_state_dict_result_prints_like_torchs():
    """Scripts print what load_state_dict(strict=False) returns (the warmstarting recipe)."""
    printed = {}
    for lib in (torch, kiln):
        lib.manual_seed(0)
        net = lib.nn.Linear(2, 2)
        partial = net.load_state_dict({"weight": lib.ones(2, 2), "extra": lib.ones(1)},
                                      strict=False)
        full = net.load_state_dict(lib.nn.Linear(2, 2).state_dict())
        printed[lib.__name__] = (repr(partial), str(partial), str(full), type(partial).__name__,
                                 partial.missing_keys, partial.unexpected_keys, tuple(partial))
    assert printed["kiln"] == printed["torch"]
