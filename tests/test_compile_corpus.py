"""Compiled equals eager on the tracer's corpus (outputs, write-backs, gradients), with the
`auto` backend, with `numpy` (no fusion), with `c` (generated C kernels) and with `triton` (generated kernels run in
Triton's interpreter), and compiled training steps match eager parameters after 10 steps."""

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from kiln.tracer.trace import flatten
from tests.tracer.test_trace_corpus import CASES


def _state(fn, args):
    """Every tensor the program can change: arguments and whatever the tracer lifted."""
    names = kiln.compiler.tracing._tensor_names(fn)
    return flatten(args)[0], names


def _compare(compiled_out, eager_out, rtol=2e-5, atol=2e-6):
    """Tensors on any device, compared on the host."""
    got, want = flatten(compiled_out)[0], flatten(eager_out)[0]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype is w.dtype and tuple(g.shape) == tuple(w.shape)
        np.testing.assert_allclose(g.detach().cpu().numpy(), w.detach().cpu().numpy(),
                                   rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", ["auto", "numpy", "c", "triton"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_compiled_equals_eager(name, backend):
    # two identical worlds: one runs eagerly, the other compiled (trace call, then replays)
    kiln.manual_seed(0)
    fn_e, args_e = CASES[name]()
    kiln.manual_seed(0)
    fn_c, args_c = CASES[name]()
    compiled = kiln.compile(fn_c, backend=backend)
    for call in range(3):
        kiln.manual_seed(100 + call)
        want = fn_e(*args_e)
        kiln.manual_seed(100 + call)
        got = compiled(*args_c)
        _compare(got, want)
        for a, b in zip(flatten(args_c)[0], flatten(args_e)[0]):   # in-place write-backs
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=2e-5,
                                       atol=2e-6)
            if b.grad is not None:
                np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=2e-5,
                                           atol=2e-6)
    _assert_really_compiled(compiled)


def _assert_really_compiled(compiled):
    """Equal results prove nothing if compiling failed and the function quietly ran eagerly."""
    for entry in compiled.entries.values():
        reason = entry.eager_reason or ""
        assert not reason.startswith(("compilation failed", "running the kernels failed")), \
            reason
        for executor in (entry.executor, entry.backward):
            for name, source, *why in getattr(executor, "kernels", []):
                assert not (why and why[0].startswith("C build failed")), why[0]


def _check_training(make, x, y, steps=10, backend="auto", rtol=1e-5, noise=None):
    """Compiled and eager training agree step by step and in the final parameters; `make`
    builds the model, optimizer and loss on the device of `x` and `y`. Returns the compiled step.

    `noise` maps a parameter name to the slice of it whose gradient is zero up to rounding:
    Adam turns that noise into steps of about lr, in directions that depend on summation
    order, so there only the size of the drift is checked.
    """
    noise = noise or {}
    (model_e, opt_e, loss_fn), (model_c, opt_c, _) = make(), make()

    def step_for(model, opt):
        def step(xb, yb):
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    eager, compiled = step_for(model_e, opt_e), kiln.compile(step_for(model_c, opt_c),
                                                            backend=backend)
    for _ in range(steps):
        np.testing.assert_allclose(compiled(x, y).cpu().numpy(), eager(x, y).cpu().numpy(),
                                   rtol=rtol, atol=1e-6)
    for (name, pe), (_, pc) in zip(model_e.named_parameters(), model_c.named_parameters()):
        got, want = pc.detach().cpu().numpy().copy(), pe.detach().cpu().numpy().copy()
        if name in noise:
            lr = opt_e.param_groups[0]["lr"]
            part = noise[name]
            np.testing.assert_allclose(got[part], want[part], atol=2 * lr * steps)
            got[part] = want[part]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6, err_msg=name)
    replays = [e for e in compiled.entries.values() if e.program is not None]
    assert sum(e.calls for e in replays) >= steps - 3     # at most 3 traces, the rest replays
    return compiled


def test_compiled_mlp_adam_matches_eager():
    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                              nn.Linear(32, 5))
        return model, kiln.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    kiln.manual_seed(1)
    _check_training(make, kiln.randn(16, 20), kiln.randint(0, 5, (16,)))


def test_compiled_cnn_sgd_momentum_matches_eager():
    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
        return (model, kiln.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                nn.CrossEntropyLoss())
    kiln.manual_seed(2)
    _check_training(make, kiln.randn(8, 1, 8, 8), kiln.randint(0, 10, (8,)))


def test_compiled_transformer_encoder_adamw_matches_eager():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.layer(x).mean(1))

    def make():
        kiln.manual_seed(0)
        model = Encoder()
        return model, kiln.optim.AdamW(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    kiln.manual_seed(3)
    # attention's key bias shifts every score of a row equally, which softmax ignores: its
    # gradient is exactly zero in exact arithmetic
    _check_training(make, kiln.randn(4, 6, 16), kiln.randint(0, 3, (4,)), rtol=2e-5,
                    noise={"layer.self_attn.in_proj_bias": slice(16, 32)})


def test_compiled_training_step_with_triton_kernels_matches_eager():
    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 3))
        return model, kiln.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()
    kiln.manual_seed(4)
    _check_training(make, kiln.randn(5, 6), kiln.randint(0, 3, (5,)), steps=4,
                    backend="triton")
