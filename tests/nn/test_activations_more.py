"""The activations beyond the core set, and the functional spellings with inplace=, against
torch: values and gradients (float64)."""

import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import check_layer
from tests.parity import check_op

LAYERS = [
    (lambda nn: nn.CELU(0.7), [(3, 5)]),
    (lambda nn: nn.Threshold(0.1, -2.0), [(3, 5)]),
    (lambda nn: nn.Hardshrink(0.6), [(3, 5)]),
    (lambda nn: nn.Softshrink(0.6), [(3, 5)]),
    (lambda nn: nn.Tanhshrink(), [(3, 5)]),
    (lambda nn: nn.PReLU(), [(3, 4, 2)]),
    (lambda nn: nn.PReLU(4, init=0.1), [(3, 4, 2)]),
    (lambda nn: nn.RReLU(0.1, 0.3), [(3, 5)]),          # eval: the mean slope
    (lambda nn: nn.Softmax2d(), [(2, 3, 4, 4)]),
    (lambda nn: nn.Softmax2d(), [(3, 4, 4)]),
    (lambda nn: nn.ReLU6(), [(3, 5)]),
    (lambda nn: nn.SELU(), [(3, 5)]),
    (lambda nn: nn.Mish(), [(3, 5)]),
]


@pytest.mark.parametrize("make,inputs", LAYERS, ids=range(len(LAYERS)))
def test_layer_matches_torch(make, inputs):
    check_layer(make, inputs, low=-3, high=3)


INPLACE = [("relu_", ()), ("elu_", (0.5,)), ("selu_", ()), ("celu_", (0.5,)),
           ("leaky_relu_", (0.2,)), ("hardtanh_", (-0.5, 0.5)), ("threshold_", (0.2, 9.0)),
           ("rrelu_", (0.1, 0.3, False))]


@pytest.mark.parametrize("name,args", INPLACE)
def test_inplace_functional_changes_its_input_like_torch(name, args):
    x = np.random.default_rng(0).uniform(-2, 2, (4, 5))
    t, k = torch.tensor(x), kiln.tensor(x)
    t_out = getattr(torch.nn.functional, name)(t, *args)
    k_out = getattr(kiln.nn.functional, name)(k, *args)
    np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=1e-12)
    np.testing.assert_allclose(k_out.numpy(), t_out.numpy(), rtol=1e-12)


INPLACE_MODULES = [("ReLU", ()), ("ReLU6", ()), ("LeakyReLU", (0.2,)), ("ELU", (0.5,)),
                   ("SELU", ()), ("CELU", (0.5,)), ("SiLU", ()), ("Mish", ()),
                   ("Hardtanh", (-0.5, 0.5)), ("Hardsigmoid", ()), ("Hardswish", ()),
                   ("Threshold", (0.2, 9.0)), ("RReLU", (0.1, 0.3))]


@pytest.mark.parametrize("name,args", INPLACE_MODULES)
def test_inplace_module_writes_its_input_and_backpropagates_like_torch(name, args):
    # the module's result is its input, so code reading the input afterwards sees the
    # activation, as in PyTorch (kiln used to ignore `inplace` in the modules)
    x = np.random.default_rng(0).uniform(-2, 2, (4, 5))
    seen = []
    for lib in (torch, kiln):
        w = lib.tensor(x, requires_grad=True)
        h = w * 1.5
        m = getattr(lib.nn, name)(*args, inplace=True).eval()
        y = m(h)
        assert y is h
        (y * h).sum().backward()        # h is y: the square of the activation
        seen.append((h.detach().numpy(), w.grad.numpy()))
    for k, t in zip(seen[1], seen[0]):     # (PyTorch's hardsigmoid divides by 6 as a float32
        np.testing.assert_allclose(k, t, rtol=1e-7, atol=1e-12)     # constant, in float64 too)


@pytest.mark.parametrize("name", ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                  "AlphaDropout", "FeatureAlphaDropout"])
def test_inplace_dropout_modules_return_their_input(name):
    shape = {"Dropout1d": (2, 3, 4), "Dropout3d": (2, 3, 4, 4, 2)}.get(name, (2, 3, 4, 4))
    x = kiln.randn(*shape)
    kept = x.clone()
    y = getattr(kiln.nn, name)(0.5, inplace=True).train()(x)
    assert y is x and not np.array_equal(x.numpy(), kept.numpy())


def test_functional_relu_accepts_inplace_keyword():
    x = kiln.tensor([-1.0, 2.0])
    assert kiln.nn.functional.relu(x, inplace=False).tolist() == [0.0, 2.0]
    assert x.tolist() == [-1.0, 2.0]
    kiln.nn.functional.relu(x, inplace=True)
    assert x.tolist() == [0.0, 2.0]


def test_rrelu_training_slopes_lie_in_range():
    x = -kiln.ones(1000)
    y = kiln.nn.functional.rrelu(x, 0.1, 0.3, training=True).numpy()
    assert np.all((-y >= 0.1) & (-y <= 0.3)) and abs(-y.mean() - 0.2) < 0.01


def test_gumbel_softmax_soft_and_hard():
    kiln.manual_seed(0)
    logits = kiln.tensor(np.log([[0.7, 0.2, 0.1]] * 4000))
    soft = kiln.nn.functional.gumbel_softmax(logits, tau=0.5)
    np.testing.assert_allclose(soft.numpy().sum(-1), 1.0, rtol=1e-9)
    logits.requires_grad_(True)
    hard = kiln.nn.functional.gumbel_softmax(logits, tau=1.0, hard=True)
    counts = hard.detach().numpy().mean(0)
    # Gumbel-max sampling: the one-hot frequencies are the softmax probabilities
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
    (hard * kiln.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert logits.grad is not None and np.abs(logits.grad.numpy()).sum() > 0


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4), (2, 3, 4, 5)], ids=str)
def test_softmax_family_implicit_dim_matches_torch(name, shape):
    """`F.log_softmax(x)` with no dim (the spatial transformer tutorial's last line): PyTorch's
    legacy choice, dim 0 for 0-, 1- and 3-d inputs and 1 otherwise; softmin took the last."""
    check_op(lambda lib, x: getattr(lib.nn.functional, name)(x), [shape], dtype=np.float64)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
def test_softmax_family_implicit_dim_warns_as_torch_at_the_callers_line(name):
    # introyt Building Models tutorial: torch.nn.Softmax() warns that the implicit dim is
    # deprecated (kiln chose the dim silently); kiln's warning names the caller's line
    for lib in (torch, kiln):
        x = lib.ones(2, 3)
        with pytest.warns(UserWarning, match=f"Implicit dimension choice for {name} has been "
                          "deprecated. Change the call to include dim=X") as caught:
            getattr(lib.nn.functional, name)(x)
        assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax") as caught:
        kiln.nn.Softmax()(kiln.ones(2, 3))
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kiln.nn.functional.softmax(kiln.ones(2, 3), dim=1)
        kiln.nn.Softmax(dim=0)(kiln.ones(2, 3))
