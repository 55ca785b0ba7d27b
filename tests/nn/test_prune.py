"""kiln.nn.utils.prune against torch.nn.utils.prune: the same layers with the same weights,
pruned the same way, must end with the same masks, pruned weights, parameter and buffer names,
forward outputs and gradients of `<name>_orig`."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.utils.prune  # noqa: F401  (not loaded by `import torch`)

import kiln
from tests.nn.layer_parity import build_pair, torch_to_kiln_state

K_PRUNE = kiln.nn.utils.prune
T_PRUNE = torch.nn.utils.prune


def _net(nn):
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


def _pair(make=_net, seed=0):
    return build_pair(make, dtype=np.float32, seed=seed)


def _np(t):
    return t.detach().cpu().numpy()


def _assert_same_structure(k_module, t_module):
    assert [n for n, _ in k_module.named_parameters()] == \
        [n for n, _ in t_module.named_parameters()]
    assert [n for n, _ in k_module.named_buffers()] == [n for n, _ in t_module.named_buffers()]
    assert list(k_module.state_dict()) == list(t_module.state_dict())
    for key, value in t_module.state_dict().items():
        np.testing.assert_array_equal(_np(k_module.state_dict()[key]), _np(value), err_msg=key)


def _assert_same_run(k_module, t_module, input_shape, seed=1):
    """Forward outputs agree, and so do the gradients of every parameter after a backward."""
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    k_out, t_out = k_module(kiln.tensor(x)), t_module(torch.from_numpy(x))
    np.testing.assert_allclose(_np(k_out), _np(t_out), rtol=1e-5, atol=1e-6)
    (k_out ** 2).sum().backward()
    (t_out ** 2).sum().backward()
    k_grads = dict(k_module.named_parameters())
    for name, param in t_module.named_parameters():
        np.testing.assert_allclose(_np(k_grads[name].grad), _np(param.grad), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def _on_both(pair, fn):
    """fn(prune_module, root_module) on the torch and the kiln side."""
    t_net, k_net = pair
    fn(T_PRUNE, t_net)
    fn(K_PRUNE, k_net)


PRUNINGS = {
    "l1-int": lambda p, m: p.l1_unstructured(m[0], "weight", amount=40),
    "l1-float": lambda p, m: p.l1_unstructured(m[3], "weight", amount=0.33),
    "l1-bias": lambda p, m: p.l1_unstructured(m[3], "bias", amount=2),
    "l1-all": lambda p, m: p.l1_unstructured(m[3], "weight", amount=1.0),
    "l1-none": lambda p, m: p.l1_unstructured(m[3], "weight", amount=0),
    "ln2-dim0": lambda p, m: p.ln_structured(m[0], "weight", amount=0.5, n=2, dim=0),
    "ln1-dim1": lambda p, m: p.ln_structured(m[0], "weight", amount=1, n=1, dim=1),
    "lninf-dim-1": lambda p, m: p.ln_structured(m[0], "weight", amount=2, n=float("inf"),
                                                dim=-1),
    "ln-fro-linear": lambda p, m: p.ln_structured(m[3], "weight", amount=0.4, n="fro", dim=0),
    "ln-none": lambda p, m: p.ln_structured(m[3], "weight", amount=0, n=2, dim=0),
    "identity": lambda p, m: p.identity(m[3], "weight"),
    "l1-then-ln": lambda p, m: (p.l1_unstructured(m[0], "weight", amount=0.3),
                                p.ln_structured(m[0], "weight", amount=2, n=2, dim=0)),
    "ln-then-l1-then-ln": lambda p, m: (p.ln_structured(m[0], "weight", amount=1, n=1, dim=0),
                                        p.l1_unstructured(m[0], "weight", amount=0.25),
                                        p.ln_structured(m[0], "weight", amount=0.4, n=2,
                                                        dim=1)),
    "l1-twice": lambda p, m: (p.l1_unstructured(m[3], "weight", amount=0.2),
                              p.l1_unstructured(m[3], "weight", amount=0.2)),
    "two-tensors": lambda p, m: (p.l1_unstructured(m[3], "weight", amount=0.5),
                                 p.l1_unstructured(m[3], "bias", amount=0.5),
                                 p.ln_structured(m[0], "weight", amount=1, n=2, dim=0)),
}


@pytest.mark.parametrize("name", PRUNINGS)
def test_pruning_matches_torch(name):
    t_net, k_net = _pair()
    _on_both((t_net, k_net), PRUNINGS[name])
    _assert_same_structure(k_net, t_net)
    for t_layer, k_layer in zip(t_net, k_net):
        for attr in ("weight", "bias"):
            if hasattr(t_layer, attr + "_mask"):
                np.testing.assert_array_equal(_np(getattr(k_layer, attr)),
                                              _np(getattr(t_layer, attr)), err_msg=attr)
    _assert_same_run(k_net, t_net, (2, 3, 6, 6))


def test_orig_gradient_is_zero_where_pruned_and_training_matches_torch():
    t_net, k_net = _pair()
    _on_both((t_net, k_net), PRUNINGS["l1-then-ln"])
    t_opt = torch.optim.SGD(t_net.parameters(), lr=0.1, momentum=0.9)
    k_opt = kiln.optim.SGD(k_net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
        for lib, net, opt in ((torch, t_net, t_opt), (kiln, k_net, k_opt)):
            opt.zero_grad()
            (net(lib.tensor(x)) ** 2).mean().backward()
            opt.step()
    mask = _np(k_net[0].weight_mask)
    assert (mask == 0).any()
    assert (_np(k_net[0].weight_orig.grad)[mask == 0] == 0).all()
    for key, value in t_net.state_dict().items():
        np.testing.assert_allclose(_np(k_net.state_dict()[key]), _np(value), rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    # the hook recomputed the weight from the trained orig before the last forward
    np.testing.assert_allclose(_np(k_net[0].weight), _np(t_net[0].weight), rtol=1e-5,
                               atol=1e-6)


def test_importance_scores_choose_the_mask():
    t_net, k_net = _pair()
    scores = np.random.default_rng(5).standard_normal((5, 96)).astype(np.float32)
    T_PRUNE.l1_unstructured(t_net[3], "weight", 0.5, importance_scores=torch.tensor(scores))
    K_PRUNE.l1_unstructured(k_net[3], "weight", 0.5, importance_scores=kiln.tensor(scores))
    T_PRUNE.ln_structured(t_net[3], "weight", 1, n=1, dim=0,
                          importance_scores=torch.tensor(scores))
    K_PRUNE.ln_structured(k_net[3], "weight", 1, n=1, dim=0,
                          importance_scores=kiln.tensor(scores))
    _assert_same_structure(k_net, t_net)
    with pytest.raises(ValueError, match="same shape"):
        K_PRUNE.l1_unstructured(k_net[0], "weight", 0.5, importance_scores=kiln.ones(3))


@pytest.mark.parametrize("amount", [0.45, 300])
def test_global_unstructured_across_two_layers(amount):
    t_net, k_net = _pair()

    def prune_globally(p, m):
        p.global_unstructured([(m[0], "weight"), (m[3], "weight"), (m[3], "bias")],
                              pruning_method=p.L1Unstructured, amount=amount)
    _on_both((t_net, k_net), prune_globally)
    _assert_same_structure(k_net, t_net)
    # once more on top (each layer's earlier mask joins the global one); kiln also takes a
    # generator (torch's reads it three times, so only a list works there)
    def again(p, m):
        pairs = ((layer, "weight") for layer in (m[0], m[3]))
        p.global_unstructured(list(pairs) if p is T_PRUNE else pairs,
                              pruning_method=p.L1Unstructured, amount=0.2)
    _on_both((t_net, k_net), again)
    _assert_same_structure(k_net, t_net)
    assert isinstance(k_net[0]._forward_pre_hooks[max(k_net[0]._forward_pre_hooks)],
                      K_PRUNE.PruningContainer)
    _assert_same_run(k_net, t_net, (2, 3, 6, 6))


def test_global_unstructured_rejects_structured_methods():
    layer = kiln.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="unstructured"):
        K_PRUNE.global_unstructured([(layer, "weight")], pruning_method=K_PRUNE.LnStructured,
                                    amount=1, n=2, dim=0)


def test_custom_from_mask_composes_with_earlier_masks():
    t_net, k_net = _pair()
    mask = (np.random.default_rng(2).random((5, 96)) > 0.3).astype(np.float32)

    def prune(p, m):
        p.l1_unstructured(m[3], "weight", 0.2)
        p.custom_from_mask(m[3], "weight", mask=(torch if p is T_PRUNE else kiln).tensor(mask))
    _on_both((t_net, k_net), prune)
    _assert_same_structure(k_net, t_net)


def test_remove_makes_pruning_permanent():
    t_net, k_net = _pair()
    _on_both((t_net, k_net), PRUNINGS["two-tensors"])
    weight_orig = k_net[3].weight_orig
    _on_both((t_net, k_net), lambda p, m: (p.remove(m[3], "weight"), p.remove(m[0], "weight")))
    _assert_same_structure(k_net, t_net)
    assert k_net[3].weight is weight_orig      # the same Parameter, now holding orig * mask
    assert isinstance(k_net[3].weight, kiln.nn.Parameter)
    assert "weight" in k_net[3]._parameters and "weight" not in k_net[3].__dict__
    assert K_PRUNE.is_pruned(k_net) == T_PRUNE.is_pruned(t_net) is True     # bias still pruned
    _on_both((t_net, k_net), lambda p, m: p.remove(m[3], "bias"))
    assert K_PRUNE.is_pruned(k_net) is False and not k_net[3]._forward_pre_hooks
    _assert_same_structure(k_net, t_net)
    _assert_same_run(k_net, t_net, (2, 3, 6, 6))
    with pytest.raises(ValueError, match="has to be pruned"):
        K_PRUNE.remove(k_net[3], "weight")


def test_pruned_state_dict_loads_from_torch():
    t_net, k_net = _pair()
    T_PRUNE.l1_unstructured(t_net[3], "weight", 0.5)
    K_PRUNE.identity(k_net[3], "weight")
    k_net.load_state_dict(torch_to_kiln_state(t_net))
    x = np.ones((1, 3, 6, 6), np.float32)
    # the mask is a buffer: loaded, and the hook applies it on the next call
    np.testing.assert_allclose(_np(k_net(kiln.tensor(x))), _np(t_net(torch.tensor(x))),
                               rtol=1e-5, atol=1e-6)


def test_method_objects_and_container():
    t = np.random.default_rng(4).standard_normal((4, 6)).astype(np.float32)
    for k_method, t_method in [(K_PRUNE.L1Unstructured(0.5), T_PRUNE.L1Unstructured(0.5)),
                               (K_PRUNE.LnStructured(2, n=1, dim=1),
                                T_PRUNE.LnStructured(2, n=1, dim=1))]:
        np.testing.assert_array_equal(_np(k_method.prune(kiln.tensor(t))),
                                      _np(t_method.prune(torch.tensor(t))))
    layer = kiln.nn.Linear(4, 3)
    first = K_PRUNE.L1Unstructured.apply(layer, "weight", amount=2)
    container = K_PRUNE.LnStructured.apply(layer, "weight", amount=1, n=2, dim=0)
    assert isinstance(container, K_PRUNE.PruningContainer) and len(container) == 2
    assert container[0] is first and list(container)[1].n == 2
    assert K_PRUNE.L1Unstructured.apply(layer, "weight", amount=1) is container
    assert len(container) == 3 and list(layer._forward_pre_hooks.values()) == [container]
    with pytest.raises(ValueError, match="acting on the parameter named 'weight'"):
        other = K_PRUNE.Identity()
        other._tensor_name = "bias"
        container.add_pruning_method(other)
    with pytest.raises(TypeError, match="not a BasePruningMethod"):
        container.add_pruning_method(object())


def test_ties_prune_the_lowest_indices_first():
    layer = kiln.nn.Linear(3, 2)
    with kiln.no_grad():
        layer.weight.copy_(kiln.tensor([[1.0, 0.5, 0.5], [0.5, 2.0, 0.5]]))
    K_PRUNE.l1_unstructured(layer, "weight", amount=2)
    np.testing.assert_array_equal(_np(layer.weight_mask), [[1, 0, 0], [1, 1, 1]])
    conv = kiln.nn.Linear(2, 3)
    with kiln.no_grad():
        conv.weight.copy_(kiln.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 3.0]]))
    K_PRUNE.ln_structured(conv, "weight", amount=1, n=2, dim=0)      # rows 0 and 1 tie: keep 0
    np.testing.assert_array_equal(_np(conv.weight_mask), [[1, 1], [0, 0], [1, 1]])


def test_random_unstructured_prunes_the_count_and_composes():
    kiln.manual_seed(0)
    layer = kiln.nn.Linear(10, 10)
    K_PRUNE.random_unstructured(layer, "weight", amount=0.3)
    mask = _np(layer.weight_mask)
    assert (mask == 0).sum() == 30
    np.testing.assert_array_equal(_np(layer.weight), _np(layer.weight_orig) * mask)
    K_PRUNE.random_unstructured(layer, "weight", amount=7)      # 7 of the 70 left
    second = _np(layer.weight_mask)
    assert (second == 0).sum() == 37 and (second[mask == 0] == 0).all()


def test_random_structured_prunes_whole_channels():
    kiln.manual_seed(0)
    conv = kiln.nn.Conv2d(3, 8, 3)
    K_PRUNE.random_structured(conv, "weight", amount=0.25, dim=0)
    mask = _np(conv.weight_mask)
    per_channel = mask.reshape(8, -1)
    assert sorted(per_channel.min(1) == per_channel.max(1)) == [True] * 8
    assert (per_channel.sum(1) == 0).sum() == 2
    K_PRUNE.random_structured(conv, "weight", amount=2, dim=0)     # 2 of the 6 channels left
    assert (_np(conv.weight_mask).reshape(8, -1).sum(1) == 0).sum() == 4


@pytest.mark.parametrize("call,error,match", [
    (lambda m: K_PRUNE.l1_unstructured(m, "weight", amount=1.5), ValueError, "in the range"),
    (lambda m: K_PRUNE.l1_unstructured(m, "weight", amount=-1), ValueError, "non-negative"),
    (lambda m: K_PRUNE.l1_unstructured(m, "weight", amount="0.5"), TypeError, "int or float"),
    (lambda m: K_PRUNE.l1_unstructured(m, "weight", amount=13), ValueError, "smaller than"),
    (lambda m: K_PRUNE.ln_structured(m, "bias", amount=1, n=2, dim=0), ValueError,
     "multidimensional"),
    (lambda m: K_PRUNE.ln_structured(m, "weight", amount=1, n=2, dim=2), IndexError,
     "Invalid index 2"),
])
def test_bad_arguments_raise_and_leave_the_module_unpruned(call, error, match):
    layer = kiln.nn.Linear(4, 3)
    names = [n for n, _ in layer.named_parameters()]
    with pytest.raises(error, match=match):
        call(layer)
    assert [n for n, _ in layer.named_parameters()] == names
    assert not layer._buffers and not layer._forward_pre_hooks
    assert isinstance(layer.weight, kiln.nn.Parameter)


def test_failed_second_pruning_keeps_the_first():
    layer = kiln.nn.Linear(4, 3)
    K_PRUNE.l1_unstructured(layer, "weight", amount=3)
    mask = layer.weight_mask
    hooks = dict(layer._forward_pre_hooks)
    with pytest.raises(IndexError):
        K_PRUNE.ln_structured(layer, "weight", amount=1, n=2, dim=5)
    assert layer.weight_mask is mask and dict(layer._forward_pre_hooks) == hooks
    assert not isinstance(hooks[next(iter(hooks))], K_PRUNE.PruningContainer)


def test_compiled_training_step_on_a_pruned_model_matches_eager():
    def run(compiled):
        kiln.manual_seed(0)
        net = kiln.nn.Sequential(kiln.nn.Linear(6, 8), kiln.nn.Tanh(), kiln.nn.Linear(8, 3))
        K_PRUNE.l1_unstructured(net[0], "weight", 0.5)
        K_PRUNE.ln_structured(net[2], "weight", 1, n=2, dim=0)
        opt = kiln.optim.SGD(net.parameters(), lr=0.1)

        def step(x, y):
            loss = kiln.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        fn = kiln.compile(step) if compiled else step
        x, y = kiln.randn(10, 6), kiln.randint(0, 3, (10,))
        losses = [fn(x, y).item() for _ in range(5)]
        return losses, {k: _np(v) for k, v in net.state_dict().items()}
    eager_losses, eager_state = run(False)
    with warnings.catch_warnings():
        # (today the hook's write of `net[i].weight` makes kiln.compile run the step eagerly)
        warnings.simplefilter("ignore")
        losses, state = run(True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-6)
    for key, value in eager_state.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-6, err_msg=key)


def test_random_pruning_draws_torchs_masks():
    """random_unstructured (top-k of uniform draws) and random_structured (channels above the
    k-th smallest draw) pick PyTorch's entries for the same seed."""
    def masks(lib):
        lib.manual_seed(0)
        linear, conv = lib.nn.Linear(6, 5), lib.nn.Conv2d(3, 6, 2)
        lib.nn.utils.prune.random_unstructured(linear, "weight", amount=0.4)
        lib.nn.utils.prune.random_structured(conv, "weight", amount=0.5, dim=0)
        return linear.weight_mask.numpy(), conv.weight_mask.numpy()
    for k, t in zip(masks(kiln), masks(torch)):
        np.testing.assert_array_equal(k, t)
