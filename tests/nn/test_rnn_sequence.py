"""nn.LSTM / GRU / RNN whose (layer, direction)s run eagerly on the CPU as one autograd node
over the whole sequence (kiln/tracer/functional/rnn_sequence.py): outputs, final states and
every gradient against PyTorch (layers, directions, batch_first, packed sequences, a given
h0/c0), double backward, forward-mode AD, saved-tensor hooks, a compiled training step against
eager, and an in-place write to a saved input refused at backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln.nn.utils.rnn import pack_padded_sequence
from kiln.tracer.functional import rnn_sequence

MODES = {"LSTM": ("LSTM", {}), "GRU": ("GRU", {}), "RNN_TANH": ("RNN", {}),
         "RNN_RELU": ("RNN", {"nonlinearity": "relu"})}
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def _twins(mode, dtype, *args, **kwargs):
    """torch's and kiln's module with the same weights, in `dtype`."""
    name, extra = MODES[mode]
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **extra, **kwargs)
    ref = ref.double() if dtype == np.float64 else ref
    mine = getattr(kiln.nn, name)(*args, **extra, **kwargs)
    mine = mine.double() if dtype == np.float64 else mine
    mine.load_state_dict({k: kiln.tensor(v.detach().numpy()) for k, v in
                          ref.state_dict().items()})
    return ref, mine


def _sequence_nodes(out) -> int:
    """How many whole-sequence nodes the graph of `out` holds."""
    seen, stack, found = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or not hasattr(node, "prim"):
            continue
        seen.add(id(node))
        found += node.prim.name.endswith("_sequence")
        stack.extend(e for e in node.edges if e is not None and not isinstance(e, kiln.Tensor))
    return found


def _run(lib, model, mode, x, h0, lengths, batch_first, *, nodes=None, enforce_sorted=False):
    """Outputs, final state(s) and the gradients of x, h0 (c0) and every parameter."""
    inp = lib.tensor(x, requires_grad=True)
    states = [lib.tensor(a, requires_grad=True) for a in h0] if h0 is not None else None
    hx = None if states is None else (tuple(states) if mode == "LSTM" else states[0])
    if lengths is not None:
        packed = (torch.nn.utils.rnn.pack_padded_sequence if lib is torch else
                  pack_padded_sequence)(inp, lengths, batch_first=batch_first,
                                        enforce_sorted=enforce_sorted)
        out, state = model(packed, hx)
        out = out.data
    else:
        out, state = model(inp, hx)
    finals = list(state) if mode == "LSTM" else [state]
    if nodes is not None:
        nodes.append(_sequence_nodes(out))
    rng = np.random.default_rng(7)
    weight = lambda t: lib.tensor(rng.standard_normal(tuple(t.shape)).astype(x.dtype))
    loss = (out * weight(out)).sum()
    for f in finals:
        loss = loss + (f ** 2 * weight(f)).sum()
    loss.backward()
    grads = [inp.grad] + [s.grad for s in states or ()] + [p.grad for p in model.parameters()]
    return [t.detach().numpy() for t in [out] + finals + grads]


CASES = {
    "1 layer": dict(),
    "2 layers, bidirectional": dict(num_layers=2, bidirectional=True),
    "batch_first, h0 given": dict(batch_first=True, h0=True),
    "packed, unequal lengths, bidirectional": dict(bidirectional=True, lengths=[5, 2, 6, 3]),
    "packed, 2 layers, h0 given, batch_first": dict(num_layers=2, batch_first=True, h0=True,
                                                    lengths=[6, 6, 1, 4]),
    "packed, sorted": dict(lengths=[6, 5, 3, 1], enforce_sorted=True),
    "no bias, bidirectional": dict(bias=False, bidirectional=True),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_outputs_states_and_all_gradients_match_torch(mode, case, dtype):
    spec = dict(CASES[case])
    given_h0, lengths = spec.pop("h0", False), spec.pop("lengths", None)
    enforce_sorted = spec.pop("enforce_sorted", False)
    layers = spec.get("num_layers", 1) * (2 if spec.get("bidirectional") else 1)
    ref, mine = _twins(mode, dtype, 3, 5, **spec)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 3) if spec.get("batch_first") else (6, 4, 3)).astype(dtype)
    h0 = None
    if given_h0:
        h0 = [rng.standard_normal((layers, 4, 5)).astype(dtype)
              for _ in range(2 if mode == "LSTM" else 1)]
    nodes = []
    batch_first = spec.get("batch_first", False)
    got = _run(kiln, mine, mode, x, h0, lengths, batch_first, nodes=nodes,
               enforce_sorted=enforce_sorted)
    want = _run(torch, ref, mode, x, h0, lengths, batch_first, enforce_sorted=enforce_sorted)
    assert nodes == [layers]            # every (layer, direction) ran as one node
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_unbatched_input_and_no_grad_match_torch(mode):
    ref, mine = _twins(mode, np.float64, 3, 4, num_layers=2)
    x = np.random.default_rng(2).standard_normal((5, 3))
    out, state = mine(kiln.tensor(x, requires_grad=True))
    want, want_state = ref(torch.tensor(x, requires_grad=True))
    assert _sequence_nodes(out) == 2
    np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), rtol=1e-10)
    with kiln.no_grad():
        plain, _ = mine(kiln.tensor(x))
    assert plain.grad_fn is None
    np.testing.assert_allclose(plain.numpy(), want.detach().numpy(), rtol=1e-10)


def test_dropout_between_layers_equals_the_per_step_path(monkeypatch):
    """The same dropout masks (the node draws no random numbers): the same values and grads."""
    x = np.random.default_rng(9).standard_normal((6, 3, 4)).astype(np.float32)

    def run():
        kiln.manual_seed(0)
        model = kiln.nn.GRU(4, 5, num_layers=3, dropout=0.5, bidirectional=True)
        inp = kiln.tensor(x, requires_grad=True)
        out, h = model(inp)
        (out.sum() + (h ** 2).sum()).backward()
        return _sequence_nodes(out), [t.detach().numpy() for t in
                                      (out, h, inp.grad, *(p.grad for p in model.parameters()))]
    nodes, fused = run()
    monkeypatch.setattr(kiln, "_rnn_sequence", lambda *args: None)
    none, per_step = run()
    assert (nodes, none) == (6, 0)
    for a, b in zip(fused, per_step):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_double_backward_matches_torch():
    """A gradient penalty through an LSTM and a GRU: the node's rule, differentiated."""
    for mode in ("LSTM", "GRU", "RNN_TANH"):
        ref, mine = _twins(mode, np.float64, 3, 4, bidirectional=True)
        x = np.random.default_rng(3).standard_normal((5, 2, 3))

        def run(lib, model):
            inp = lib.tensor(x, requires_grad=True)
            h0 = lib.tensor(np.full((2, 2, 4), 0.3), requires_grad=True)
            out, state = model(inp, (h0, h0 * 2) if mode == "LSTM" else h0)
            last = state[1] if mode == "LSTM" else state
            loss = (out ** 3).sum() + (last ** 2).sum()
            wrt = [inp, h0] + list(model.parameters())
            grads = lib.autograd.grad(loss, wrt, create_graph=True)
            penalty = sum((g ** 2).sum() for g in grads)
            second = lib.autograd.grad(penalty, wrt)
            return [t.detach().numpy() for t in (*grads, *second)]
        for a, b in zip(run(kiln, mine), run(torch, ref)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_forward_mode_ad_through_an_lstm_matches_torch():
    ref, mine = _twins("LSTM", np.float64, 3, 4)
    x = np.random.default_rng(4).standard_normal((5, 2, 3))
    v = np.random.default_rng(5).standard_normal((5, 2, 3))
    import kiln.autograd.forward_ad as kfwd
    import torch.autograd.forward_ad as tfwd
    with kfwd.dual_level():
        out, _ = mine(kfwd.make_dual(kiln.tensor(x), kiln.tensor(v)))
        got = kfwd.unpack_dual(out).tangent.numpy()
    with tfwd.dual_level():
        out, _ = ref(tfwd.make_dual(torch.tensor(x), torch.tensor(v)))
        want = tfwd.unpack_dual(out).tangent.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_saved_tensor_hooks_see_the_per_step_tensors_and_gradients_match():
    """Under saved_tensors_hooks the per-step ops run, so every tensor they save is packed."""
    ref, mine = _twins("LSTM", np.float64, 3, 4)
    x = np.random.default_rng(6).standard_normal((5, 2, 3))
    packed = []

    def pack(t):
        packed.append(tuple(t.shape))
        return t * 1
    inp = kiln.tensor(x, requires_grad=True)
    with kiln.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = mine(inp)
    assert _sequence_nodes(out) == 0
    assert packed.count((2, 4)) >= 6 * 5    # each step's cell activations were packed
    out.sum().backward()
    tin = torch.tensor(x, requires_grad=True)
    ref(tin)[0].sum().backward()
    np.testing.assert_allclose(inp.grad.numpy(), tin.grad.numpy(), rtol=1e-10)


def test_a_trace_records_the_per_step_ops():
    xw, h0, w_hh = kiln.ones(5, 2, 12), kiln.zeros(2, 4), kiln.ones(12, 4)
    assert rnn_sequence.sequence("GRU", False, xw, h0, None, w_hh, None, None) is not None
    seen = []
    kiln.compile(lambda a, h: seen.append(rnn_sequence.sequence(
        "GRU", False, a, h, None, w_hh, None, None)) or a.sum())(xw, h0)
    assert seen == [None]


def test_compiled_training_step_equals_eager():
    def make():
        kiln.manual_seed(0)
        return kiln.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    x = kiln.tensor(np.random.default_rng(8).standard_normal((5, 2, 3)).astype(np.float32))
    results = []
    for compiled in (False, True):
        model = make()
        opt = kiln.optim.SGD(model.parameters(), lr=0.1)

        def step(inp):
            opt.zero_grad()
            out, (h, c) = model(inp)
            loss = (out ** 2).mean() + c.sum()
            loss.backward()
            opt.step()
            return loss
        run = kiln.compile(step) if compiled else step
        losses = [run(x).item() for _ in range(3)]
        results.append((losses, [p.detach().numpy().copy() for p in model.parameters()]))
    (eager_losses, eager_params), (comp_losses, comp_params) = results
    np.testing.assert_allclose(comp_losses, eager_losses, rtol=1e-5)
    for a, b in zip(comp_params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_in_place_write_to_a_saved_input_is_refused_at_backward():
    lstm = kiln.nn.LSTM(3, 4)
    h0 = kiln.zeros(1, 2, 4, requires_grad=True)
    start = h0 * 1
    out, _ = lstm(kiln.ones(5, 2, 3), (start, start))
    assert _sequence_nodes(out) == 1
    with kiln.no_grad():
        start.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_node_matches_finite_differences_reverse_and_forward_mode(mode):
    """The op itself, reversed, over sequences of unequal lengths (float64 gradcheck)."""
    rng = np.random.default_rng(10)
    gates = rnn_sequence.GATES[mode] * 2
    c0 = kiln.tensor(rng.standard_normal((3, 2)), requires_grad=True) if mode == "LSTM" \
        else None
    b_hh = kiln.tensor(rng.standard_normal(gates), requires_grad=True) if mode == "GRU" \
        else None
    inputs = [kiln.tensor(rng.standard_normal((4, 3, gates)), requires_grad=True),
              kiln.tensor(rng.standard_normal((3, 2)), requires_grad=True), c0,
              kiln.tensor(rng.standard_normal((gates, 2)), requires_grad=True), b_hh]
    running = np.array([[[t < n] for n in (4, 1, 3)] for t in range(4)])
    given = [i for i, a in enumerate(inputs) if a is not None]

    def f(*args):
        full = list(inputs)
        for i, a in zip(given, args):
            full[i] = a
        out = rnn_sequence.sequence(mode, True, *full, running)
        assert out is not None
        return tuple(o for o in out if o is not None)
    assert kiln.autograd.gradcheck(f, [inputs[i] for i in given], check_forward_ad=True)
