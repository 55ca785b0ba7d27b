"""torch.autograd.graph.register_multi_grad_hook against torch: "all" gives one call per
backward pass with every tensor's gradient (None where the pass computed none), "any" one
call with the first; remove() stops both."""

import pytest
import torch

import kiln


def _run(lib):
    a = lib.tensor([1.0, 2.0], requires_grad=True)
    b = lib.tensor([3.0], requires_grad=True)
    c = lib.tensor([5.0], requires_grad=True)
    seen, firsts = [], []
    handle = lib.autograd.graph.register_multi_grad_hook(
        (a, b, c), lambda grads: seen.append([None if g is None else g.tolist() for g in grads]))
    (a * 2).sum().backward()
    ((a ** 2).sum() + (b * 3).sum()).backward()
    (c * b).sum().backward()
    handle.remove()
    (a.sum() + b.sum()).backward()
    with lib.autograd.graph.register_multi_grad_hook(
            (a, b), lambda g: firsts.append(g.tolist()), mode="any"):
        (b * 7).sum().backward()
        (a * 4).sum().backward()
    (a * 5).sum().backward()
    return seen, firsts


def test_multi_grad_hook_matches_torch():
    assert _run(kiln) == _run(torch)


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_bad_mode_and_tensor_without_grad(lib):
    with pytest.raises(ValueError, match="mode"):
        lib.autograd.graph.register_multi_grad_hook((lib.ones(1, requires_grad=True),),
                                                    print, mode="some")
    with pytest.raises((RuntimeError, AssertionError)):    # torch: an internal assertion
        lib.autograd.graph.register_multi_grad_hook((lib.ones(1),), print)
    assert lib.autograd.graph.RemovableHandle.__name__ == "RemovableHandle"
