"""The "Introduction to PyTorch" autograd tutorial (introyt): the graph of d = 2 * sin(a) + 1
walked through grad_fn.next_functions down to AccumulateGrad, a TinyModel's weights and
gradients through one SGD step and five accumulating backwards, requires_grad toggled, no_grad
and enable_grad as decorators, detach, the autograd profiler, y.backward(v) with a vector, and
the functional API (jacobian, hessian, vjp, jvp, hvp)."""
import math

import numpy as np
import torch


class TinyModel(torch.nn.Module):
    def __init__(self):
        super(TinyModel, self).__init__()
        self.layer1 = torch.nn.Linear(40, 12)
        self.relu = torch.nn.ReLU()
        self.layer2 = torch.nn.Linear(12, 10)

    def forward(self, x):
        x = self.layer1(x)
        x = self.relu(x)
        x = self.layer2(x)
        return x


def node_name(fn):
    return None if fn is None else fn.name().replace("torch::autograd::", "")


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = {}
    a = torch.linspace(0., 2. * math.pi, steps=25, requires_grad=True)
    b = torch.sin(a)
    c = 2 * b
    d = c + 1
    out = d.sum()
    chain, node = [], d.grad_fn
    while node is not None:
        chain.append(node_name(node) + ":" + ",".join(str(node_name(f))
                                                      for f, _ in node.next_functions))
        node = node.next_functions[0][0] if node.next_functions else None
    values["chain"] = " / ".join(chain)
    values["leaf_is_a"] = d.grad_fn.next_functions[0][0].next_functions[0][0] \
        .next_functions[0][0].variable is a
    out.backward()
    values["a_grad"] = a.grad
    values["c_grad_is_none"] = c.grad is None

    some_input = torch.from_numpy(rng.normal(size=(16, 40)).astype(np.float32))
    ideal_output = torch.from_numpy(rng.normal(size=(16, 10)).astype(np.float32))
    model = TinyModel()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    values["grad_before"] = model.layer2.weight.grad is None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    prediction = model(some_input)
    loss = (ideal_output - prediction).pow(2).sum()
    losses = [loss.item()]
    loss.backward()
    values["grad_after_backward"] = model.layer2.weight.grad[0][0:10].clone()
    optimizer.step()
    values["weight_after_step"] = model.layer2.weight[0][0:10].detach().clone()
    for i in range(0, 5):
        prediction = model(some_input)
        loss = (ideal_output - prediction).pow(2).sum()
        loss.backward()
        losses.append(loss.item())
    values["accumulated"] = model.layer2.weight.grad[0][0:10].clone()
    optimizer.zero_grad()
    values["zeroed_is_none"] = model.layer2.weight.grad is None

    t = torch.ones(2, 3, requires_grad=True)
    b1 = 2 * t
    t.requires_grad = False
    b2 = 2 * t
    values["b1_tracks"], values["b2_tracks"] = b1.requires_grad, b2.requires_grad

    @torch.no_grad()
    def add_tensors2(x, y):
        return x + y

    @torch.enable_grad()
    def add_tensors3(x, y):
        return x + y

    p = torch.ones(2, 3, requires_grad=True) * 2
    q = torch.ones(2, 3, requires_grad=True) * 3
    with torch.no_grad():
        inside = add_tensors3(p, q)
    values["no_grad_decorated"] = add_tensors2(p, q).requires_grad
    values["enable_grad_inside_no_grad"] = inside.requires_grad
    x = torch.from_numpy(rng.random(5).astype(np.float32)).requires_grad_()
    y = x.detach()
    values["detached"] = (y.requires_grad, bool(torch.equal(x, y)))

    x = torch.from_numpy(rng.normal(size=(2, 3)).astype(np.float32)).requires_grad_()
    y = torch.from_numpy(rng.random((2, 3)).astype(np.float32) + 0.5).requires_grad_()
    z = torch.ones(2, 3, requires_grad=True)
    with torch.autograd.profiler.profile(use_cuda=False) as prf:
        for _ in range(20):
            z = (z / x) * y
    values["profiled"] = isinstance(prf.key_averages().table(sort_by="self_cpu_time_total"), str)
    values["z_after_profile"] = z

    x = torch.tensor([0.31, -0.12, 0.57], requires_grad=True)
    y = x * 2
    while y.data.norm() < 1000:
        y = y * 2
    v = torch.tensor([0.1, 1.0, 0.0001], dtype=torch.float)
    y.backward(v)
    values["vector_backward"] = x.grad

    def exp_adder(x, y):
        return 2 * x.exp() + 3 * y

    inputs = (torch.tensor([0.2, 0.7, 0.4]), torch.tensor([0.9, 0.1, 0.5]))
    jac = torch.autograd.functional.jacobian(exp_adder, inputs)
    values["jacobian_x"], values["jacobian_y"] = jac

    def do_some_doubling(x):
        y = x * 2
        while y.data.norm() < 1000:
            y = y * 2
        return y

    out, vjp = torch.autograd.functional.vjp(do_some_doubling, torch.tensor([0.5, -0.3, 0.8]),
                                             v=torch.tensor([0.1, 1.0, 0.0001]))
    values["vjp_out"], values["vjp"] = out, vjp
    values["hessian"] = torch.autograd.functional.hessian(
        lambda t: (t ** 3).sum() + t.prod(), torch.tensor([1.0, 2.0, 0.5]))
    _, values["jvp"] = torch.autograd.functional.jvp(
        exp_adder, inputs, v=(torch.ones(3), torch.ones(3)))
    _, values["hvp"] = torch.autograd.functional.hvp(
        lambda t: (t ** 3).sum(), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.5]))
    return {"losses": losses, "values": values, "initial_state": initial}


if __name__ == "__main__":
    print(main())
