"""The eager LSTM and GRU cell steps (kiln/tracer/functional/rnn_cells.py) against the
composites they stand for (bitwise: values and gradients) and against PyTorch (nn.LSTM,
LSTMCell, nn.GRU, GRUCell, double backward); an in-place write to the cell state before
backward is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.tracer.functional import rnn_cells


def composite(gates, c):
    i, f, g, o = kiln.chunk(gates, 4, -1)
    c = kiln.sigmoid(f) * c + kiln.sigmoid(i) * kiln.tanh(g)
    return kiln.sigmoid(o) * kiln.tanh(c), c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_and_gradients_are_bitwise_the_composites(dtype):
    rng = np.random.default_rng(0)
    gates0 = (rng.standard_normal((5, 12)) * 3).astype(dtype)
    c0 = rng.standard_normal((5, 3)).astype(dtype)
    dh, dc = rng.standard_normal((2, 5, 3)).astype(dtype)

    def run(step):
        gates = kiln.tensor(gates0, requires_grad=True)
        c = kiln.tensor(c0, requires_grad=True)
        h, c_new = step(gates, c)
        (h * kiln.tensor(dh)).sum().add((c_new * kiln.tensor(dc)).sum()).backward()
        return [t.detach().numpy() for t in (h, c_new, gates.grad, c.grad)]
    fused = run(rnn_cells.lstm)
    for a, b in zip(fused, run(composite)):
        np.testing.assert_array_equal(a, b)
    assert rnn_cells.lstm(kiln.tensor(gates0), kiln.tensor(c0)) is not None


def test_the_composite_runs_where_the_step_does_not_apply():
    assert rnn_cells.lstm(kiln.ones(2, 8, dtype=kiln.float16), kiln.ones(2, 2,
                                                                     dtype=kiln.float16)) is None
    assert rnn_cells.lstm(kiln.ones(2, 8), kiln.ones(2, 3)) is None        # not 4H
    seen = []
    kiln.compile(lambda g, c: seen.append(rnn_cells.lstm(g, c)) or g.sum())(
        kiln.ones(2, 8), kiln.ones(2, 2))
    assert seen == [None]                                                   # in a trace


def _twins(name, *args, **kwargs):
    """torch's and kiln's module `name` with the same weights."""
    torch.manual_seed(0)
    ref, mine = getattr(torch.nn, name)(*args, **kwargs), getattr(kiln.nn, name)(*args, **kwargs)
    mine.load_state_dict({k: kiln.tensor(v.detach().numpy()) for k, v in
                          ref.state_dict().items()})
    return ref, mine


@pytest.mark.parametrize("name, bidirectional", [("LSTM", False), ("LSTM", True),
                                                 ("GRU", True)])
def test_nn_rnn_and_its_double_backward_match_torch(name, bidirectional):
    ref, mine = _twins(name, 4, 5, num_layers=2, bidirectional=bidirectional)
    ref, mine = ref.double(), mine.double()
    x = np.random.default_rng(1).standard_normal((6, 3, 4))

    def run(lib, model):
        inp = lib.tensor(x, requires_grad=True)
        out, state = model(inp)
        last = state[1] if name == "LSTM" else state            # c, or the GRU's h
        loss = (out ** 2).sum() + (last ** 3).sum()
        params = list(model.parameters())
        grads = lib.autograd.grad(loss, [inp] + params, create_graph=True)
        penalty = sum((g ** 2).sum() for g in grads)     # a gradient penalty: second order
        second = lib.autograd.grad(penalty, [inp] + params)
        return [t.detach().numpy() for t in (out, last, *grads, *second)]
    for a, b in zip(run(kiln, mine), run(torch, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_cell_modules_match_torch(name):
    ref, mine = _twins(name, 3, 4)
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)

    def run(lib, cell):
        inp = lib.tensor(x, requires_grad=True)
        state, total = None, 0
        for t in range(5):
            state = cell(inp[t]) if state is None else cell(inp[t], state)
            states = list(state) if name == "LSTMCell" else [state]     # (h, c) or h
            total = total + states[0].sum() * (t + 1)
        total.backward()
        return [a.detach().numpy() for a in (*states, inp.grad, cell.weight_hh.grad)]
    for a, b in zip(run(kiln, mine), run(torch, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_writing_the_cell_state_before_backward_is_refused():
    gates = kiln.randn(2, 8, requires_grad=True)
    c = kiln.randn(2, 2) * 1          # not a leaf: may be written in place
    h, c_new = rnn_cells.lstm(gates, c)
    c.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c_new.sum().backward()


# ----------------------------------------------------------------------------- GRU

def gru_composite(xw, hw, h):
    x_r, x_z, x_n = kiln.chunk(xw, 3, -1)
    h_r, h_z, h_n = kiln.chunk(hw, 3, -1)
    r, z = kiln.sigmoid(x_r + h_r), kiln.sigmoid(x_z + h_z)
    return (1 - z) * kiln.tanh(x_n + r * h_n) + z * h


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_values_and_gradients_are_bitwise_the_composites(dtype):
    rng = np.random.default_rng(4)
    xw0, hw0 = (rng.standard_normal((2, 5, 9)) * 2).astype(dtype)
    h0, dh = rng.standard_normal((2, 5, 3)).astype(dtype)

    def run(step):
        xw, hw, h = (kiln.tensor(a, requires_grad=True) for a in (xw0, hw0, h0))
        out = step(xw, hw, h)
        (out * kiln.tensor(dh)).sum().backward()
        return [t.detach().numpy() for t in (out, xw.grad, hw.grad, h.grad)]
    for a, b in zip(run(rnn_cells.gru), run(gru_composite)):
        np.testing.assert_array_equal(a, b)
    assert rnn_cells.gru(kiln.tensor(xw0), kiln.tensor(hw0), kiln.tensor(h0)) is not None
