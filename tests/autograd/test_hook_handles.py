"""What every register_*hook returns is torch.utils.hooks.RemovableHandle's kind: remove (twice
too), `with`, removal from inside a hook, extra_dict and pickling, each against PyTorch's."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch

import kiln

REGISTRATIONS = {
    "Tensor.register_hook": lambda t, s: s["x"].register_hook(lambda g: None),
    "non-leaf Tensor.register_hook": lambda t, s: (s["x"] * 2).register_hook(lambda g: None),
    "Node.register_hook": lambda t, s: s["y"].grad_fn.register_hook(lambda gi, go: None),
    "Node.register_prehook": lambda t, s: s["y"].grad_fn.register_prehook(lambda go: None),
    "AccumulateGrad.register_hook": lambda t, s: s["y"].grad_fn.next_functions[0][0]
    .register_hook(lambda gi, go: None),
    "register_post_accumulate_grad_hook": lambda t, s: s["x"].register_post_accumulate_grad_hook(
        lambda p: None),
    "Module.register_forward_pre_hook": lambda t, s: s["m"].register_forward_pre_hook(
        lambda *a: None),
    "Module.register_forward_hook": lambda t, s: s["m"].register_forward_hook(
        lambda *a: None, with_kwargs=True, always_call=True),
    "Module.register_full_backward_hook": lambda t, s: s["m"].register_full_backward_hook(
        lambda *a: None),
    "Module.register_full_backward_pre_hook": lambda t, s: s["m"]
    .register_full_backward_pre_hook(lambda *a: None),
    "Module.register_state_dict_pre_hook": lambda t, s: s["m"].register_state_dict_pre_hook(
        lambda *a: None),
    "Module.register_load_state_dict_post_hook": lambda t, s: s["m"]
    .register_load_state_dict_post_hook(lambda *a: None),
    "Optimizer.register_step_pre_hook": lambda t, s: s["opt"].register_step_pre_hook(
        lambda *a: None),
    "Optimizer.register_step_post_hook": lambda t, s: s["opt"].register_step_post_hook(
        lambda *a: None),
    "register_module_forward_hook": lambda t, s: t.nn.modules.module
    .register_module_forward_hook(lambda *a: None),
}


def _subjects(lib) -> dict:
    x = lib.ones(3, requires_grad=True)
    m = lib.nn.Linear(3, 2)
    return {"x": x, "y": x * 3, "m": m, "opt": lib.optim.SGD(m.parameters(), lr=0.1)}


@pytest.mark.parametrize("register", [pytest.param(r, id=n) for n, r in REGISTRATIONS.items()])
def test_register_functions_return_removable_handles(register):
    for lib in (torch, kiln):
        handle = register(lib, _subjects(lib))
        assert isinstance(handle, lib.utils.hooks.RemovableHandle)
        assert isinstance(handle.id, int)
        with handle as same:
            assert same is handle
        handle.remove()             # a second remove does nothing
    assert kiln.autograd.graph.RemovableHandle is kiln.utils.hooks.RemovableHandle


def _removals(lib) -> list:
    """Hooks that remove themselves or a later one while running, for tensors, nodes and a
    module: the pass running sees the hooks it started with, the next one what is left."""
    log, handles = [], {}
    x = lib.ones(3, requires_grad=True)

    def first(g):
        log.append("first")
        handles["second"].remove()
        handles["first"].remove()
    handles["first"] = x.register_hook(first)
    handles["second"] = x.register_hook(lambda g: log.append("second"))
    for _ in range(2):
        (x * 2).sum().backward()
    y = x * 3

    def post(gi, go):
        log.append("post")
        handles["other"].remove()
    handles["post"] = y.grad_fn.register_hook(post)
    handles["other"] = y.grad_fn.register_hook(lambda gi, go: log.append("other"))
    for _ in range(2):
        y.sum().backward(retain_graph=True)
    m = lib.nn.Linear(2, 2)

    def forward_hook(module, args, out):
        log.append("forward")
        handles["later"].remove()
    handles["forward"] = m.register_forward_hook(forward_hook)
    handles["later"] = m.register_forward_hook(lambda *a: log.append("later"))
    for _ in range(2):
        m(lib.ones(1, 2))
    return log


def test_hooks_removed_from_inside_a_hook_as_torchs():
    assert _removals(kiln) == _removals(torch)


def _extra_dicts(lib) -> list:
    m = lib.nn.Linear(2, 2)
    h = m.register_forward_hook(lambda *a: None, with_kwargs=True, always_call=True)
    seen = [h.id in m._forward_hooks_with_kwargs, h.id in m._forward_hooks_always_called]
    with h:
        pass
    seen += [h.id in m._forward_hooks, h.id in m._forward_hooks_with_kwargs,
             h.id in m._forward_hooks_always_called]
    hooks, flags, more = OrderedDict(), OrderedDict(), OrderedDict()
    handle = lib.utils.hooks.RemovableHandle(hooks, extra_dict=[flags, more])
    hooks[handle.id] = flags[handle.id] = more[handle.id] = True
    copy = pickle.loads(pickle.dumps((hooks, flags, handle)))
    seen += [copy[2].id == handle.id, copy[2].hooks_dict_ref() is copy[0],
             [r() is copy[1] for r in copy[2].extra_dict_ref],
             lib.utils.hooks.RemovableHandle.next_id > handle.id]
    copy[2].remove()
    seen += [len(copy[0]), len(copy[1]), len(hooks), len(flags), len(more)]
    handle.remove()
    return seen + [len(hooks), len(flags), len(more)]


def test_extra_dict_and_pickling_as_torchs():
    assert _extra_dicts(kiln) == _extra_dicts(torch)
