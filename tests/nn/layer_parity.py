"""Layer parity helper: one torch layer and one kiln layer, same weights, same data; compare.

    check_layer(lambda nn: nn.Linear(3, 4), [(2, 3)])

`make(nn)` builds the layer with `nn` = torch.nn and with `nn` = kiln.nn. The torch layer's
state_dict is copied into the kiln one through NumPy (so the two have the same weights), both
run the same inputs, and outputs, input gradients and parameter gradients must agree.
"""

from __future__ import annotations

import numpy as np
import torch

import kiln
from tests.parity import TOL, assert_close, random_array, to_kiln, to_torch


def torch_to_kiln_state(module: torch.nn.Module) -> dict:
    return {k: kiln.tensor(v.detach().numpy().copy()) for k, v in module.state_dict().items()}


def kiln_to_torch_state(module) -> dict:
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in module.state_dict().items()}


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in _flat(x)]
    return [out]


def build_pair(make, dtype=np.float64, seed: int = 0, train: bool = False):
    """The torch and kiln layers, with the torch weights loaded into kiln."""
    torch.manual_seed(seed)
    t_layer = make(torch.nn)
    k_layer = make(kiln.nn)
    if dtype == np.float64:
        t_layer, k_layer = t_layer.double(), k_layer.double()
    assert list(k_layer.state_dict()) == list(t_layer.state_dict()), "state_dict keys differ"
    assert [n for n, _ in k_layer.named_parameters()] == \
        [n for n, _ in t_layer.named_parameters()], "named_parameters differ"
    result = k_layer.load_state_dict(torch_to_kiln_state(t_layer))
    assert not result.missing_keys and not result.unexpected_keys
    t_layer.train(train)
    k_layer.train(train)
    return t_layer, k_layer


def check_layer(make, inputs, *, dtype=np.float64, call=None, train: bool = False,
                atol: float | None = None, rtol: float | None = None, seed: int = 0,
                grad: bool = True, low: float = -2.0, high: float = 2.0):
    """Compare forward outputs and gradients (inputs and parameters) of torch and kiln layers.

    Args:
        make: `make(nn)` builds the layer from torch.nn or kiln.nn.
        inputs: per input, a shape (random data of `dtype`) or a ready NumPy array.
        call: `call(layer, *inputs)`; defaults to `layer(*inputs)`.
    """
    rng = np.random.default_rng(seed)
    arrays = [random_array(x, dtype, low, high, rng) if isinstance(x, tuple) else np.asarray(x)
              for x in inputs]
    floats = [np.issubdtype(a.dtype, np.floating) for a in arrays]
    t_layer, k_layer = build_pair(make, dtype, seed, train)
    tt = [to_torch(a, grad and f) for a, f in zip(arrays, floats)]
    kt = [to_kiln(a, grad and f) for a, f in zip(arrays, floats)]
    call = call or (lambda layer, *xs: layer(*xs))
    t_out, k_out = _flat(call(t_layer, *tt)), _flat(call(k_layer, *kt))
    a_tol, r_tol = TOL[dtype]
    atol = a_tol * 10 if atol is None else atol
    rtol = r_tol * 10 if rtol is None else rtol
    assert len(k_out) == len(t_out)
    for i, (k, t) in enumerate(zip(k_out, t_out)):
        if t is None:
            assert k is None, f"output {i}: torch gives None"
            continue
        assert_close(k, t, atol, rtol, f"output {i}")
    if not grad:
        return t_layer, k_layer
    t_loss, k_loss = 0, 0
    for j, (k, t) in enumerate(zip(k_out, t_out)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            w = random_array(tuple(t.shape), dtype, -1, 1, np.random.default_rng(seed + j + 1))
            t_loss = t_loss + (t * to_torch(w)).sum()
            k_loss = k_loss + (k * to_kiln(w)).sum()
    t_loss.backward()
    k_loss.backward()
    for i, (k, t) in enumerate(zip(kt, tt)):
        if t.requires_grad:
            assert_close(k.grad, t.grad, atol * 10, rtol * 10, f"grad of input {i}")
    k_params = dict(k_layer.named_parameters())
    for name, t_param in t_layer.named_parameters():
        k_param = k_params[name]
        if t_param.grad is None:
            assert k_param.grad is None or not np.any(k_param.grad.numpy()), name
            continue
        assert k_param.grad is not None, f"no gradient for {name}"
        assert_close(k_param.grad, t_param.grad, atol * 10, rtol * 10, f"grad of {name}")
    return t_layer, k_layer
