"""torch._dynamo.utils.counters and torch._dynamo.backends (aot_autograd, get_nop_func) on kiln:
the counts compared with PyTorch's for the same functions, the aot_autograd backend's values
and gradients with eager's and PyTorch's, and its refusals."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters as torch_counters

import kiln
from kiln._dynamo.backends.common import aot_autograd
from kiln._dynamo.backends.debugging import get_nop_func
from kiln._dynamo.utils import counters


def add_one_sum(lib, x):
    return (x + 1).sum()


def scaled_relu_sum(lib, x):
    return (x * 2).relu().sum()


def two_outputs(lib, x, y):
    return x @ y, (x - 1).tanh()


def run_counted(lib, fn, shapes_list, backend):
    """Counters after compiling `fn` with `lib` and calling it once per shapes in the list."""
    lib._dynamo.reset()
    found = counters if lib is kiln else torch_counters
    found.clear()
    compiled = lib.compile(lambda *xs: fn(lib, *xs), backend=backend)
    rng = np.random.default_rng(0)
    for shapes in shapes_list:
        compiled(*[lib.tensor(rng.standard_normal(s).astype(np.float32)) for s in shapes])
    return dict(found["stats"])


@pytest.mark.parametrize("fn,shapes_list", [
    (add_one_sum, [[(3,)], [(3,)], [(4,)]]),            # a new shape: a second graph
    (scaled_relu_sum, [[(2, 5)], [(2, 5)]]),            # replays: one graph
    (two_outputs, [[(3, 4), (4, 2)]]),
])
def test_unique_graphs_and_calls_captured_match_torch(fn, shapes_list):
    theirs = run_counted(torch, fn, shapes_list, "aot_eager")
    ours = run_counted(kiln, fn, shapes_list, "aot_eager")
    assert ours["unique_graphs"] == theirs["unique_graphs"]
    # calls_captured counts kiln's primitives: equal where each torch op is one primitive
    assert ours["calls_captured"] == theirs["calls_captured"]


def test_a_graph_break_compiles_no_graph_in_kiln():
    def fn(x):
        temp = x + 10
        kiln._dynamo.graph_break()
        return temp.sum()

    counters.clear()
    with pytest.warns(UserWarning, match="graph break"):
        out = kiln.compile(fn, backend="aot_eager")(kiln.ones(3))
    assert out.item() == 33.0
    # PyTorch compiles the two pieces around the break (2 graphs); kiln runs fn eagerly
    assert counters["stats"]["unique_graphs"] == 0


def test_counters_clear_and_count_backend_callables():
    counters.clear()
    seen = []

    def backend(gm, example_inputs):
        seen.append(len(example_inputs))
        return gm.forward

    f = kiln.compile(lambda x: x.sin() + x, backend=backend)
    np.testing.assert_allclose(f(kiln.ones(2)).numpy(), np.sin(1.0) + 1.0, rtol=1e-6)
    assert seen == [1] and counters["stats"]["unique_graphs"] == 1
    counters.clear()
    assert counters["stats"]["unique_graphs"] == 0 and dict(counters) == {"stats": {}}


def loss_of(lib, x, w):
    return (lib.cos(x @ w) * x.sum()).sum()


@pytest.mark.parametrize("backend", ["nop", "aot_eager", "eager", "inductor"])
def test_aot_autograd_nop_and_named_backends_give_eagers_values_and_grads(backend):
    rng = np.random.default_rng(1)
    x0, w0 = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    if backend == "nop":
        backend = aot_autograd(fw_compiler=get_nop_func(), bw_compiler=get_nop_func())
    x, w = (kiln.tensor(a, requires_grad=True) for a in (x0, w0))
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x0, w0))
    f = kiln.compile(lambda x, w: loss_of(kiln, x, w), backend=backend)
    for _ in range(2):                      # the capture, then the compiled function again
        x.grad = w.grad = None
        out = f(x, w)
        out.backward()
    expected = loss_of(torch, tx, tw)
    expected.backward()
    np.testing.assert_allclose(out.item(), expected.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_aot_autograd_calls_its_forward_compiler_with_the_graph_and_examples():
    handed = []

    def fw_compiler(gm, example_inputs):
        handed.append((gm, [tuple(t.shape) for t in example_inputs]))
        return gm

    f = kiln.compile(lambda x: x.exp() * 3, backend=aot_autograd(fw_compiler=fw_compiler))
    x0 = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(f(kiln.tensor(x0)).numpy(),
                               (torch.tensor(x0).exp() * 3).numpy(), rtol=1e-12)
    f(kiln.tensor(x0))
    assert len(handed) == 1 and handed[0][1] == [(5,)]
    assert isinstance(handed[0][0], kiln.fx.GraphModule)


def test_aot_autograd_refuses_what_kiln_cannot_honour():
    with pytest.raises(NotImplementedError, match="no aten operator table"):
        aot_autograd(fw_compiler=get_nop_func(), bw_compiler=get_nop_func(),
                     decompositions={"aten.cos.default": kiln.sin})
    with pytest.raises(NotImplementedError, match="no backward graph to hand a compiler"):
        aot_autograd(fw_compiler=get_nop_func(), bw_compiler=lambda gm, ex: gm)


def test_compiled_autograd_config_flag_is_accepted_and_read_back():
    assert kiln._dynamo.config.compiled_autograd is False
    kiln._dynamo.config.compiled_autograd = True
    try:
        assert kiln._dynamo.config.compiled_autograd is True
    finally:
        kiln._dynamo.config.compiled_autograd = False
