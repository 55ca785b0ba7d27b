"""The MaskedTensor "sparse semantics for Adagrad" tutorial, then the same update in training: a
hand-written Adagrad step on a sparse COO gradient (coalesce, _indices/_values, sparse_mask of
the dense state, add_ of a sparse tensor into a dense one with alpha), the MaskedTensor version
of it (a masked_tensor of the gradient, pow/sqrt/add/div, to_tensor(0)), the dense update for
comparison; then nn.Embedding(sparse=True) trained with torch.optim.Adagrad, and with
SparseAdam (its Linear with Adam), beside a dense twin trained with Adagrad."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.masked import masked_tensor


def make_sparse(grad, grad_indices, values):
    if grad_indices.numel() == 0 or values.numel() == 0:
        return torch.empty_like(grad)
    return torch.sparse_coo_tensor(grad_indices, values, grad.size())


def sparse_adagrad_step(param, grad, state_sum, clr, eps):
    grad = grad.coalesce()
    grad_indices, grad_values = grad._indices(), grad._values()
    state_sum.add_(make_sparse(grad, grad_indices, grad_values.pow(2)))
    std = state_sum.sparse_mask(grad)
    std_values = std._values().sqrt_().add_(eps)
    param.add_(make_sparse(grad, grad_indices, grad_values / std_values), alpha=-clr)
    return std


def masked_adagrad_step(param, masked_grad, state_sum, mask, clr, eps):
    state_sum = state_sum + masked_grad.pow(2).to_tensor(0)
    std = masked_tensor(state_sum, mask)
    std = std.sqrt().add(eps)
    return param.add((masked_grad / std).to_tensor(0), alpha=-clr), state_sum


def tutorial(values):
    eps, clr = 1e-10, 0.1
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    v = torch.tensor([3, 4, 5], dtype=torch.float32)
    grad = torch.sparse_coo_tensor(i, v, [2, 4])

    param = torch.arange(8).reshape(2, 4).float()
    state_sum = torch.full_like(param, 0.5)
    std = sparse_adagrad_step(param, grad, state_sum, clr, eps)
    values["std"] = std.to_dense()
    values["state_sum"] = state_sum.clone()
    values["param"] = param.clone()

    param2 = torch.arange(8).reshape(2, 4).float()
    state_sum2 = torch.full_like(param2, 0.5)
    # the masked gradient in dense storage: the same masked semantics, no sparse internals
    mask = grad.to_dense() != 0
    masked_grad = masked_tensor(grad.to_dense(), mask)
    param2, state_sum2 = masked_adagrad_step(param2, masked_grad, state_sum2, mask, clr, eps)
    values["param2"] = param2
    values["same_as_sparse"] = torch.allclose(values["param2"], param)

    dense_param = torch.arange(8).reshape(2, 4).float()
    dense_sum = torch.full_like(dense_param, 0.5)
    dense_grad = grad.to_dense()
    dense_sum.addcmul_(dense_grad, dense_grad, value=1)
    dense_std = dense_sum.sqrt().add_(eps)
    dense_param.addcdiv_(dense_grad, dense_std, value=-clr)
    values["dense_param"] = dense_param
    # eps only where the gradient is specified: the entries with no gradient stay put
    values["same_as_dense"] = torch.allclose(dense_param, param)


class Recommender(nn.Module):
    def __init__(self, n_items, dim, sparse):
        super().__init__()
        self.items = nn.Embedding(n_items, dim, sparse=sparse)
        self.out = nn.Linear(dim, 1)

    def forward(self, history):
        return self.out(self.items(history).mean(1)).squeeze(1)


def main(seed=0, compile=False, initial_state=None, steps=8):
    torch.manual_seed(seed)
    values = {}
    tutorial(values)

    models = {"sparse": Recommender(50, 8, sparse=True), "dense": Recommender(50, 8, sparse=False),
              "sparse_adam": Recommender(50, 8, sparse=True)}
    if initial_state is not None:
        for model in models.values():
            model.load_state_dict(initial_state)
    for model in list(models.values())[1:]:
        model.load_state_dict(models["sparse"].state_dict())
    initial = {k: v.clone() for k, v in models["sparse"].state_dict().items()}
    optimizers = {"sparse": torch.optim.Adagrad(models["sparse"].parameters(), lr=0.1),
                  "dense": torch.optim.Adagrad(models["dense"].parameters(), lr=0.1),
                  "sparse_adam": torch.optim.SparseAdam(
                      list(models["sparse_adam"].items.parameters()), lr=0.05)}
    dense_part = torch.optim.Adam(models["sparse_adam"].out.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(3)
    histories = torch.randint(0, 50, (steps, 16, 5), generator=g)
    targets = (histories % 7 == 0).float().mean(2) * 3

    def forward_backward(model, history, target):
        loss = F.mse_loss(model(history), target)
        loss.backward()
        return loss

    if compile:
        forward_backward = torch.compile(forward_backward)
    losses = {name: [] for name in models}
    for step in range(steps):
        for name, model in models.items():
            optimizers[name].zero_grad()
            if name == "sparse_adam":
                dense_part.zero_grad()
            loss = forward_backward(model, histories[step], targets[step])
            if step == 0 and name == "sparse":
                weight_grad = model.items.weight.grad
                values["grad_is_sparse"] = weight_grad.is_sparse
                values["grad_rows"] = weight_grad.coalesce()._indices()[0]
                values["grad_dense"] = weight_grad.to_dense()
            optimizers[name].step()
            if name == "sparse_adam":
                dense_part.step()
            losses[name].append(loss.item())
    values["sparse_equals_dense"] = torch.allclose(models["sparse"].items.weight,
                                                   models["dense"].items.weight, atol=1e-6)
    values["adam_weight"] = models["sparse_adam"].items.weight.detach().clone()
    values["dense_losses"] = torch.tensor(losses["dense"])
    values["sparse_adam_losses"] = torch.tensor(losses["sparse_adam"])
    return {"losses": losses["sparse"], "values": values, "initial_state": initial}
