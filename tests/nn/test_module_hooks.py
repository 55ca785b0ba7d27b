"""Module backward hooks, state_dict hooks, extra state, set_submodule, to_empty and
Module.compile, against torch where torch defines the behaviour."""

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import torch_to_kiln_state


def _record_backward(lib, replace=False):
    lib.manual_seed(0)
    layer = lib.nn.Linear(3, 2).double()
    seen = {}

    def pre_hook(module, grad_output):
        seen["pre"] = [g.detach().numpy().copy() for g in grad_output]

    def hook(module, grad_input, grad_output):
        seen["in"] = [None if g is None else g.detach().numpy().copy() for g in grad_input]
        seen["out"] = [g.detach().numpy().copy() for g in grad_output]
        if replace:
            return tuple(g * 2 for g in grad_input)
    layer.register_full_backward_pre_hook(pre_hook)
    handle = layer.register_full_backward_hook(hook)
    return layer, seen, handle


@pytest.mark.parametrize("replace", [False, True])
def test_full_backward_hooks_see_and_replace_gradients_like_torch(replace):
    x = np.random.default_rng(0).normal(size=(4, 3))
    w = np.random.default_rng(1).normal(size=(4, 2))
    results = []
    t_layer, t_seen, _ = _record_backward(torch, replace)
    k_layer, k_seen, _ = _record_backward(kiln, replace)
    k_layer.load_state_dict(torch_to_kiln_state(t_layer))
    for lib, layer in ((torch, t_layer), (kiln, k_layer)):
        xin = lib.tensor(x, requires_grad=True)
        (layer(xin) * lib.tensor(w)).sum().backward()
        results.append(xin.grad.numpy())
    for key in ("pre", "in", "out"):
        for k, t in zip(k_seen[key], t_seen[key]):
            np.testing.assert_allclose(k, t, rtol=1e-12)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12)


def test_backward_hook_without_input_gradients_reports_none_and_can_be_removed():
    k_layer, k_seen, handle = _record_backward(kiln)
    k_layer(kiln.ones(2, 3, dtype=kiln.float64)).sum().backward()
    assert k_seen["in"] == [None] and len(k_seen["out"]) == 1
    handle.remove()
    k_seen.clear()
    k_layer(kiln.ones(2, 3, dtype=kiln.float64)).sum().backward()
    assert "in" not in k_seen


def test_state_dict_hooks_and_extra_state():
    class WithStep(kiln.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = kiln.nn.Linear(2, 2)
            self.steps = 0

        def get_extra_state(self):
            return {"steps": self.steps}

        def set_extra_state(self, state):
            self.steps = state["steps"]

    m = WithStep()
    m.steps = 7
    calls = []
    m.register_state_dict_pre_hook(lambda mod, prefix, keep: calls.append(("pre", prefix)))
    m.register_state_dict_post_hook(lambda mod, sd, prefix, meta: calls.append(("post",
                                                                                 len(sd))))
    sd = m.state_dict()
    assert sd["_extra_state"] == {"steps": 7} and calls == [("pre", ""), ("post", 3)]
    fresh = WithStep()

    def rename(mod, state_dict, prefix, meta, strict, missing, unexpected, errors):
        if "old.weight" in state_dict:
            state_dict["lin.weight"] = state_dict.pop("old.weight")
    fresh.register_load_state_dict_pre_hook(rename)
    cleared = []
    fresh.register_load_state_dict_post_hook(lambda mod, keys: cleared.append(list(
        keys.unexpected_keys)))
    renamed = {("old.weight" if k == "lin.weight" else k): v for k, v in sd.items()}
    fresh.load_state_dict(renamed)
    assert fresh.steps == 7 and cleared == [[]]
    np.testing.assert_array_equal(fresh.lin.weight.detach().numpy(),
                                  m.lin.weight.detach().numpy())


def test_set_submodule_to_empty_and_compile():
    for lib in (torch, kiln):
        net = lib.nn.Sequential(lib.nn.Linear(2, 3), lib.nn.Sequential(lib.nn.ReLU()))
        net.set_submodule("1.0", lib.nn.Tanh())
        assert type(net[1][0]).__name__ == "Tanh"
    net = kiln.nn.Linear(3, 2)
    assert net.to_empty(device="cpu") is net and tuple(net.weight.shape) == (2, 3)
    assert net.share_memory() is net
    model = kiln.nn.Sequential(kiln.nn.Linear(3, 4), kiln.nn.Tanh())
    x = kiln.randn(5, 3)
    eager = model(x).detach().numpy()
    model.compile()
    np.testing.assert_allclose(model(x).detach().numpy(), eager, rtol=1e-6)
    np.testing.assert_allclose(model(x).detach().numpy(), eager, rtol=1e-6)


def test_parameter_dict_mapping_methods_match_torch():
    results = {}
    for lib in (torch, kiln):
        d = lib.nn.ParameterDict({"a": lib.nn.Parameter(lib.ones(2)),
                                  "b": lib.nn.Parameter(lib.zeros(3))})
        got = [d.get("a") is d["a"], d.get("zz", 5)]
        popped = d.pop("a")
        got.append((tuple(popped.shape), list(d.keys())))
        d.setdefault("c", lib.nn.Parameter(lib.ones(1)))
        got.append(list(d.keys()))
        copy = d.copy()
        got.append((list(copy.keys()), copy["b"] is d["b"]))
        key, value = d.popitem()
        got.append((key, tuple(value.shape)))
        got.append(list(d.fromkeys(["x", "y"], lib.nn.Parameter(lib.ones(1))).keys()))
        d.clear()
        got.append(len(d))
        results[lib.__name__] = got
    assert results["kiln"] == results["torch"]
    norm = kiln.nn.RMSNorm(3)
    with kiln.no_grad():
        norm.weight.fill_(2.0)
    norm.reset_parameters()
    assert norm.weight.tolist() == [1.0, 1.0, 1.0]


def test_global_module_hooks_run_before_the_modules_own_like_torch():
    """nn.modules.module.register_module_{forward_pre,forward,full_backward_pre,
    full_backward}_hook: every module's call runs them, before its own hooks; their results
    replace inputs, outputs and gradients; removing the handles stops them."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    x = rng.normal(size=(5, 3))
    results = {}
    for lib in (torch, kiln):
        model = lib.nn.Sequential(lib.nn.Linear(3, 4, bias=False), lib.nn.Tanh(),
                                  lib.nn.Linear(4, 2, bias=False)).double()
        with lib.no_grad():
            model[0].weight.copy_(lib.tensor(w1))
            model[2].weight.copy_(lib.tensor(w2))
        log = []
        mm = lib.nn.modules.module
        handles = [
            mm.register_module_forward_pre_hook(
                lambda m, args: log.append("gpre:" + type(m).__name__)),
            mm.register_module_forward_hook(
                lambda m, args, kwargs, out: out * 2 if isinstance(m, lib.nn.Tanh) else None,
                with_kwargs=True),
            mm.register_module_full_backward_pre_hook(
                lambda m, g: (g[0] * 3,) if isinstance(m, lib.nn.Linear) else None),
            mm.register_module_full_backward_hook(
                lambda m, gi, go: log.append("gbwd:" + type(m).__name__)),
        ]
        model[1].register_forward_pre_hook(lambda m, args: log.append("own_pre"))
        model[1].register_full_backward_hook(lambda m, gi, go: log.append("own_bwd"))
        inp = lib.tensor(x, requires_grad=True)
        out = model(inp)
        out.sum().backward()
        for h in handles:
            h.remove()
        plain = model(lib.tensor(x)).detach().numpy()
        results[lib.__name__] = (log, out.detach().numpy(), inp.grad.numpy(),
                                 model[0].weight.grad.numpy(), plain)
    k, t = results["kiln"], results["torch"]
    assert k[0] == t[0]
    for a, b in zip(k[1:], t[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_always_call_forward_hooks_run_when_forward_raises_like_torch():
    """register_forward_hook(always_call=True), own and global: when forward raises they run
    with output None (in torch's order) and the error goes on; the other hooks do not run; a
    failing always-call hook is a warning; removed, they stop."""
    import warnings
    seen = {}
    for lib in (torch, kiln):
        class Boom(lib.nn.Module):
            def forward(self, x, fail=False):
                if fail:
                    raise ValueError("forward failed")
                return x * 2
        log = []
        m = Boom()
        g = lib.nn.modules.module.register_module_forward_hook(
            lambda mod, args, out: log.append(("global", out is None)), always_call=True)
        h1 = m.register_forward_hook(lambda mod, args, out: log.append(("plain", None)))
        h2 = m.register_forward_hook(lambda mod, args, kwargs, out: log.append(
            ("always", kwargs.get("fail"), out is None)), with_kwargs=True, always_call=True)

        def broken(mod, args, out):
            if out is None:             # fails only on the way out of a failed forward
                raise KeyError("hook failed")
        h3 = m.register_forward_hook(broken, always_call=True)
        out = m(lib.ones(2))
        log.append(("ok", out.tolist()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError, match="forward failed"):
                m(lib.ones(2), fail=True)
        log.append(("warned", sum("always_call=True" in str(w.message) for w in caught)))
        for h in (g, h1, h2, h3):
            h.remove()
        with pytest.raises(ValueError):
            m(lib.ones(2), fail=True)
        seen[lib.__name__] = log
    assert seen["kiln"] == seen["torch"]


def test_a_global_hook_registered_after_compiling_takes_effect():
    """A compiled module replays without running Python hooks: registering (and removing) a
    global forward hook must make it trace again, as torch.compile recompiles."""
    m = kiln.nn.Linear(2, 1)
    with kiln.no_grad():
        m.weight.fill_(1.0)
        m.bias.zero_()
    compiled = kiln.compile(m)
    x = kiln.ones(1, 2)
    assert [compiled(x).item() for _ in range(2)] == [2.0, 2.0]
    handle = kiln.nn.modules.module.register_module_forward_hook(lambda mod, a, out: out * 10)
    try:
        assert [compiled(x).item() for _ in range(2)] == [20.0, 20.0]
    finally:
        handle.remove()
    assert [compiled(x).item() for _ in range(2)] == [2.0, 2.0]
    pre = kiln.nn.modules.module.register_module_forward_pre_hook(lambda mod, a: (a[0] * 3,))
    try:
        assert compiled(x).item() == 6.0
    finally:
        pre.remove()
