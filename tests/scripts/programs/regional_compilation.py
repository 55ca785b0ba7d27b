"""The regional compilation recipe: a model of repeated layers compiled whole
(torch.compile(model)) and region by region (each repeated Layer compiled, the first Linear
left eager), first calls timed after torch.compiler.reset() inside
torch._inductor.utils.fresh_inductor_cache(); then both trained from the same weights, whose
losses are the eager model's. `backend` names the compiler; a test may give the reference run a
quicker one."""
from time import perf_counter

import numpy as np
import torch
import torch.nn as nn


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = torch.nn.Linear(10, 10)
        self.relu1 = torch.nn.ReLU()
        self.linear2 = torch.nn.Linear(10, 10)
        self.relu2 = torch.nn.ReLU()

    def forward(self, x):
        a = self.linear1(x)
        a = self.relu1(a)
        a = torch.sigmoid(a)
        b = self.linear2(a)
        b = self.relu2(b)
        return b


class Model(torch.nn.Module):
    def __init__(self, apply_regional_compilation, backend="inductor", n_layers=4):
        super().__init__()
        self.linear = torch.nn.Linear(10, 10)
        if apply_regional_compilation:
            self.layers = torch.nn.ModuleList([torch.compile(Layer(), backend=backend)
                                               for _ in range(n_layers)])
        else:
            self.layers = torch.nn.ModuleList([Layer() for _ in range(n_layers)])

    def forward(self, x):
        x = self.linear(x)
        for layer in self.layers:
            x = layer(x)
        return x


def measure_latency(fn, input):
    torch.compiler.reset()
    with torch._inductor.utils.fresh_inductor_cache():
        start = perf_counter()
        out = fn(input)
        end = perf_counter()
        return out, end - start


def main(seed=0, compile=False, initial_state=None, backend="inductor"):
    torch.manual_seed(seed)
    values = {}
    model = Model(apply_regional_compilation=False)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    full_compiled_model = torch.compile(model, backend=backend)
    regional_compiled_model = Model(apply_regional_compilation=True, backend=backend)
    # the compiled layers' keys carry _orig_mod: load the eager model's weights by position
    with torch.no_grad():
        for p, q in zip(regional_compiled_model.parameters(), model.parameters()):
            p.copy_(q)
    values["regional_keys"] = ",".join(list(regional_compiled_model.state_dict())[2:4])

    input = torch.randn(10, 10)
    full_out, full_latency = measure_latency(full_compiled_model, input)
    regional_out, regional_latency = measure_latency(regional_compiled_model, input)
    values["full_out"] = full_out
    values["regional_out"] = regional_out
    values["eager_out"] = model(input)
    values["latencies_measured"] = full_latency > 0 and regional_latency > 0

    rng = np.random.default_rng(seed)
    xs = torch.from_numpy(rng.normal(size=(5, 16, 10)).astype(np.float32))
    ys = torch.from_numpy(rng.normal(size=(5, 16, 10)).astype(np.float32))
    losses = []
    for net, params in ((full_compiled_model, model.parameters()),
                        (regional_compiled_model, regional_compiled_model.parameters())):
        opt = torch.optim.Adam(params, lr=1e-2)
        for x, y in zip(xs, ys):
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return {"losses": losses, "values": values, "initial_state": initial}
