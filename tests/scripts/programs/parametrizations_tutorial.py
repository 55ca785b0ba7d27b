"""The "Parametrizations" tutorial: a symmetric linear layer by hand, then
parametrize.register_parametrization with Symmetric and Skew modules (on Linear and Conv2d),
what a parametrized module looks like (its printout, named_parameters,
parametrizations.weight.original), parametrize.cached(), two parametrizations stacked (Skew
then a Cayley map with torch.linalg.solve, Skew or Symmetric then torch.matrix_exp),
right_inverse for assignment, a pruning parametrization whose right_inverse is not an inverse,
remove_parametrizations with leave_parametrized True and False; then the ready-made
torch.nn.utils.parametrizations.orthogonal trained for a few steps, and
torch.nn.utils.stateless.functional_call on a parametrized layer. Weights and data come from
NumPy (float64), so both libraries see the same numbers; where the tutorial draws random
values (orthogonal_ init, a Bernoulli mask), the values kept are the properties it checks."""
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils import stateless
from torch.nn.utils.parametrizations import orthogonal


def symmetric(X):
    return X.triu() + X.triu(1).transpose(-1, -2)


class LinearSymmetric(nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n_features, n_features))

    def forward(self, x):
        A = symmetric(self.weight)
        return x @ A


class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


class Skew(nn.Module):
    def forward(self, X):
        A = X.triu(1)
        return A - A.transpose(-1, -2)

    def right_inverse(self, A):
        # A is assumed skew-symmetric: its upper triangle is what forward reads
        return A.triu(1)


class NoisyParametrization(nn.Module):
    calls = 0

    def forward(self, X):
        NoisyParametrization.calls += 1          # the tutorial prints here
        return X


class CayleyMap(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("Id", torch.eye(n, dtype=torch.float64))

    def forward(self, X):
        # (I - X)^{-1} (I + X), X skew-symmetric
        return torch.linalg.solve(self.Id - X, self.Id + X)

    def right_inverse(self, A):
        # (A + I)^{-1} (A - I), A orthogonal
        return torch.linalg.solve(A + self.Id, A - self.Id)


class MatrixExponential(nn.Module):
    def forward(self, X):
        return torch.matrix_exp(X)


class PruningParametrization(nn.Module):
    def __init__(self, X, p_drop=0.2):
        super().__init__()
        mask = torch.full_like(X, 1.0 - p_drop)
        self.mask = torch.bernoulli(mask)

    def forward(self, X):
        return X * self.mask

    def right_inverse(self, A):
        return A


def main(seed=0, compile=False, initial_state=None, steps=4):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_default_dtype(torch.float64)
    try:
        return _tutorial(rng, steps)
    finally:
        torch.set_default_dtype(torch.float32)


def _tutorial(rng, steps):
    def rand(*shape):
        return torch.from_numpy(rng.random(shape))

    def numpy_linear(n_in, n_out):
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(rand(n_out, n_in) - 0.5)
            layer.bias.copy_(rand(n_out) - 0.5)
        return layer

    values = {}
    X = rand(3, 3)
    A = symmetric(X)
    values["symmetric_fn"] = A
    values["symmetric_fn_is_symmetric"] = torch.allclose(A, A.T)
    layer = LinearSymmetric(3)
    with torch.no_grad():
        layer.weight.copy_(rand(3, 3))
    x8 = rand(8, 3)
    values["linear_symmetric_out"] = layer(x8)

    layer = numpy_linear(3, 3)
    parametrize.register_parametrization(layer, "weight", Symmetric())
    A = layer.weight
    values["param_symmetric"] = A
    values["param_symmetric_is_symmetric"] = torch.allclose(A, A.T)
    values["param_symmetric_out"] = layer(x8)

    cnn = nn.Conv2d(in_channels=5, out_channels=8, kernel_size=3)
    with torch.no_grad():
        cnn.weight.copy_(rand(8, 5, 3, 3))
    parametrize.register_parametrization(cnn, "weight", Skew())
    values["skew_kernel_0_1"] = cnn.weight[0, 1]
    values["skew_kernel_2_2"] = cnn.weight[2, 2]

    layer = numpy_linear(3, 3)
    values["print_unparametrized"] = str(layer)
    parametrize.register_parametrization(layer, "weight", Symmetric())
    values["print_parametrized"] = str(layer).replace("torch.", "")
    values["print_parametrizations"] = str(layer.parametrizations)
    values["print_parametrization_list"] = str(layer.parametrizations.weight)
    values["print_first"] = str(layer.parametrizations.weight[0])
    values["parameter_names"] = " ".join(dict(layer.named_parameters()))
    values["original"] = layer.parametrizations.weight.original.clone()
    weight_orig = layer.parametrizations.weight.original
    values["dist_to_manual"] = torch.dist(layer.weight, Symmetric()(weight_orig))

    layer = numpy_linear(4, 4)
    parametrize.register_parametrization(layer, "weight", NoisyParametrization())
    NoisyParametrization.calls = 0
    foo = layer.weight + layer.weight.T
    bar = layer.weight.sum()
    values["computed_without_cache"] = torch.tensor(NoisyParametrization.calls)
    NoisyParametrization.calls = 0
    with parametrize.cached():
        foo = layer.weight + layer.weight.T
        bar = layer.weight.sum()
    values["computed_with_cache"] = torch.tensor(NoisyParametrization.calls)
    values["cached_foo_bar"] = foo.sum() + bar

    layer = numpy_linear(3, 3)
    parametrize.register_parametrization(layer, "weight", Skew())
    parametrize.register_parametrization(layer, "weight", CayleyMap(3))
    X = layer.weight
    values["cayley_weight"] = X
    values["cayley_orthogonality_error"] = torch.dist(X.T @ X, torch.eye(3))

    layer_orthogonal = numpy_linear(3, 3)
    parametrize.register_parametrization(layer_orthogonal, "weight", Skew())
    parametrize.register_parametrization(layer_orthogonal, "weight", MatrixExponential())
    X = layer_orthogonal.weight
    values["expm_skew_weight"] = X
    values["expm_orthogonality_error"] = torch.dist(X.T @ X, torch.eye(3))

    layer_spd = numpy_linear(3, 3)
    parametrize.register_parametrization(layer_spd, "weight", Symmetric())
    parametrize.register_parametrization(layer_spd, "weight", MatrixExponential())
    X = layer_spd.weight
    values["spd_weight"] = X
    values["spd_symmetry_error"] = torch.dist(X, X.T)
    values["spd_positive_definite"] = bool((torch.linalg.eigvalsh(X) > 0.).all())

    layer = numpy_linear(3, 3)
    parametrize.register_parametrization(layer, "weight", Skew())
    X = rand(3, 3)
    X = X - X.T
    layer.weight = X
    values["skew_assigned_dist"] = torch.dist(layer.weight, X)
    values["skew_assigned_original"] = layer.parametrizations.weight.original.clone()

    layer_orthogonal = numpy_linear(3, 3)
    parametrize.register_parametrization(layer_orthogonal, "weight", Skew())
    parametrize.register_parametrization(layer_orthogonal, "weight", CayleyMap(3))
    X = torch.from_numpy(np.linalg.qr(rng.standard_normal((3, 3)))[0].copy())
    if X.det() < 0.:
        X[0].neg_()
    layer_orthogonal.weight = X
    values["cayley_assigned_dist"] = torch.dist(layer_orthogonal.weight, X)
    values["cayley_assigned_original"] = (
        layer_orthogonal.parametrizations.weight.original.clone())
    X = torch.empty(3, 3)                      # the same from a random orthogonal matrix
    nn.init.orthogonal_(X)
    if X.det() < 0.:
        X[0].neg_()
    layer_orthogonal.weight = X
    values["orthogonal_init_assigned"] = bool(torch.dist(layer_orthogonal.weight, X) < 1e-8)

    layer = numpy_linear(3, 4)
    X = torch.rand_like(layer.weight)
    pruning = PruningParametrization(layer.weight)
    parametrize.register_parametrization(layer, "weight", pruning)
    layer.weight = X
    values["pruned_assignment"] = bool(torch.equal(layer.weight, X * pruning.mask))

    for leave_parametrized in (True, False):
        layer = numpy_linear(3, 3)
        before = layer.weight.detach().clone()
        parametrize.register_parametrization(layer, "weight", Skew())
        skewed = layer.weight.detach().clone()
        parametrize.remove_parametrizations(layer, "weight",
                                            leave_parametrized=leave_parametrized)
        key = f"removed_leave_parametrized_{leave_parametrized}"
        values[key] = layer.weight
        values[key + "_print"] = str(layer)
        values[key + "_is_parameter"] = isinstance(layer.weight, nn.Parameter)
        # Skew's right_inverse ran at registration: the original is the upper triangle
        expected = skewed if leave_parametrized else before.triu(1)
        values[key + "_as_expected"] = bool(torch.equal(layer.weight.detach(), expected))

    # the ready-made orthogonal parametrization, trained: the weight stays orthogonal
    model = nn.Sequential(numpy_linear(4, 4), nn.Tanh(), numpy_linear(4, 2))
    orthogonal(model[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    inputs, targets = rand(16, 4), rand(16, 2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    W = model[0].weight
    values["orthogonal_losses"] = torch.tensor(losses)
    values["orthogonal_trained_weight"] = W
    values["orthogonal_still_orthogonal"] = bool(torch.dist(W.T @ W, torch.eye(4)) < 1e-10)
    values["orthogonal_state_keys"] = " ".join(model.state_dict())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)       # it moved to torch.func
        swapped = {"parametrizations.weight.original": rand(4, 4)}
        values["stateless_call"] = stateless.functional_call(model[0], swapped, (inputs,))
    values["stateless_restores"] = torch.allclose(model[0].weight, W)
    return {"losses": losses, "values": values}


if __name__ == "__main__":
    print(main())
