"""Extending torch.func with autograd.Function: Functions written with a separate
setup_context (NumpySort / NumpyTake computing in NumPy, with hand-written vmap staticmethods;
MyCube with generate_vmap_rule = True and a backward that is itself differentiable), used
under torch.func.grad, vmap, jacrev and grad-of-grad; MyExp with a jvp
staticmethod under jacfwd; then a model with the MyCube activation
trained from per-sample gradients (vmap(grad(...)) over functional_call), clipped per sample."""
import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, grad, jacfwd, jacrev, vmap


def to_numpy(tensor):
    return tensor.cpu().numpy()


class NumpySort(torch.autograd.Function):
    @staticmethod
    def forward(x, dim):
        device = x.device
        x = to_numpy(x)
        ind = np.argsort(x, axis=dim)
        ind_inv = np.argsort(ind, axis=dim)
        result = np.take_along_axis(x, ind, axis=dim)
        return (torch.tensor(result, device=device), torch.tensor(ind, device=device),
                torch.tensor(ind_inv, device=device))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim = inputs
        _, ind, ind_inv = output
        ctx.mark_non_differentiable(ind, ind_inv)
        ctx.save_for_backward(ind, ind_inv)
        ctx.dim = dim

    @staticmethod
    def backward(ctx, grad_output, _0, _1):
        ind, ind_inv = ctx.saved_tensors
        return NumpyTake.apply(grad_output, ind_inv, ind, ctx.dim), None

    @staticmethod
    def vmap(info, in_dims, x, dim):
        x_bdim, _ = in_dims
        x = x.movedim(x_bdim, 0)
        dim = dim if dim >= 0 else dim + x.dim() - 1
        result = NumpySort.apply(x, dim + 1)
        return result, (0, 0, 0)


class NumpyTake(torch.autograd.Function):
    @staticmethod
    def forward(x, ind, ind_inv, dim):
        device = x.device
        x = to_numpy(x)
        ind = to_numpy(ind)
        return torch.tensor(np.take_along_axis(x, ind, dim), device=device)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ind, ind_inv, dim = inputs
        ctx.save_for_backward(ind, ind_inv)
        ctx.dim = dim

    @staticmethod
    def backward(ctx, grad_output):
        ind, ind_inv = ctx.saved_tensors
        result = NumpyTake.apply(grad_output, ind_inv, ind, ctx.dim)
        return result, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, ind, ind_inv, dim):
        x_bdim, ind_bdim, ind_inv_bdim, _ = in_dims
        logical_dim = x.dim() if x_bdim is None else x.dim() - 1
        dim = dim if dim >= 0 else dim + logical_dim

        def maybe_expand_bdim_at_front(x, x_bdim):
            if x_bdim is None:
                return x.expand(info.batch_size, *x.shape)
            return x.movedim(x_bdim, 0)

        x = maybe_expand_bdim_at_front(x, x_bdim)
        ind = maybe_expand_bdim_at_front(ind, ind_bdim)
        ind_inv = maybe_expand_bdim_at_front(ind_inv, ind_inv_bdim)
        return NumpyTake.apply(x, ind, ind_inv, dim + 1), 0


def numpy_sort(x, dim=-1):
    result, _, _ = NumpySort.apply(x, dim)
    return result


class MyCube(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        result = x ** 3
        dx = 3 * x ** 2
        return result, dx

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, = inputs
        result, dx = output
        ctx.save_for_backward(x, dx)

    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        result = grad_output * dx + grad_dx * 6 * x
        return result


def my_cube(x):
    result, _ = MyCube.apply(x)
    return result


class MyExp(torch.autograd.Function):
    """With a jvp staticmethod, for forward-mode transforms (jacfwd)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, grad_output):
        result, = ctx.saved_tensors
        return grad_output * result

    @staticmethod
    def jvp(ctx, x_t):
        result, = ctx.saved_tensors
        return x_t * result


class CubeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(my_cube(torch.tanh(self.fc1(x))))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    x = torch.from_numpy(rng.normal(size=(3, 6)).astype(np.float32))
    values["sorted"] = numpy_sort(x)
    values["grad_sum_sorted_weighted"] = grad(
        lambda t: (numpy_sort(t) * torch.arange(6.0)).sum())(x)
    values["vmap_sort"] = vmap(numpy_sort)(x)
    values["vmap_grad_sort"] = vmap(grad(lambda t: (numpy_sort(t) ** 2 * torch.arange(6.0))
                                         .sum()))(x)
    y = torch.from_numpy(rng.normal(size=(4,)).astype(np.float32))
    values["grad_cube"] = vmap(grad(my_cube))(y)
    values["grad_grad_cube"] = vmap(grad(grad(my_cube)))(y)
    values["jacrev_cube"] = jacrev(my_cube)(y)
    values["vmap_cube"] = vmap(my_cube)(x)
    values["jacfwd_exp"] = jacfwd(MyExp.apply)(y)
    values["jacrev_exp"] = jacrev(MyExp.apply)(y)
    values["vmap_jacfwd_exp"] = vmap(jacfwd(MyExp.apply))(x)

    model = CubeNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v.detach() for k, v in model.named_parameters()}
    data = torch.from_numpy(rng.normal(size=(32, 5)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 2, 32))
    loss_fn = nn.CrossEntropyLoss()

    def compute_loss(params, sample, target):
        prediction = functional_call(model, params, (sample.unsqueeze(0),))
        return loss_fn(prediction, target.unsqueeze(0))

    per_sample_grads = vmap(grad(compute_loss), in_dims=(None, 0, 0))
    losses, max_norm, lr = [], 1.0, 0.2
    for epoch in range(3):
        for i in range(0, 32, 8):
            xb, yb = data[i:i + 8], targets[i:i + 8]
            losses.append(loss_fn(functional_call(model, params, (xb,)), yb).item())
            grads = per_sample_grads(params, xb, yb)
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
            factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
            params = {k: p - lr * (grads[k] * factor.view(-1, *[1] * (grads[k].dim() - 1)))
                      .mean(0) for k, p in params.items()}
    values["final_fc2"] = params["fc2.weight"]
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
