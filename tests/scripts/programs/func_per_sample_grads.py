"""The torch.func "Per-sample-gradients" tutorial: a small CNN's gradient for every sample of a
batch, once by a Python loop over torch.autograd.grad and once by vmap(grad(compute_loss),
in_dims=(None, None, 0, 0)) over functional_call with detached params and buffers; a float64
model (.to(torch.float64)) as the precise baseline for one sample; Timer from
torch.utils.benchmark around both. Weights and data come from NumPy, so both libraries see the
same numbers."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.utils.benchmark import Timer


class SimpleCNN(nn.Module):
    def __init__(self):
        super(SimpleCNN, self).__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.conv2 = nn.Conv2d(4, 6, 3, 1)
        self.fc1 = nn.Linear(24, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def loss_fn(predictions, targets):
    return F.nll_loss(predictions, targets)


def load_numpy_weights(model, rng):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.4, 0.4, tuple(p.shape)).astype(np.float32)))


def main(seed=0, compile=False, initial_state=None, batch_size=6):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = "cpu"
    data = torch.from_numpy(rng.standard_normal((batch_size, 1, 8, 8)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 10, batch_size))
    model = SimpleCNN().to(device=device)
    load_numpy_weights(model, rng)

    predictions = model(data)
    loss = loss_fn(predictions, targets)
    loss.backward()
    batch_grads = [p.grad.clone() for p in model.parameters()]

    def compute_grad(sample, target):
        sample = sample.unsqueeze(0)
        target = target.unsqueeze(0)
        prediction = model(sample)
        loss = loss_fn(prediction, target)
        return torch.autograd.grad(loss, list(model.parameters()))

    def compute_sample_grads(data, targets):
        sample_grads = [compute_grad(data[i], targets[i]) for i in range(batch_size)]
        sample_grads = zip(*sample_grads)
        sample_grads = [torch.stack(shards) for shards in sample_grads]
        return sample_grads

    per_sample_grads = compute_sample_grads(data, targets)

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def compute_loss(params, buffers, sample, target):
        batch = sample.unsqueeze(0)
        targets = target.unsqueeze(0)
        predictions = functional_call(model, (params, buffers), (batch,))
        loss = loss_fn(predictions, targets)
        return loss

    ft_compute_grad = grad(compute_loss)
    ft_compute_sample_grad = vmap(ft_compute_grad, in_dims=(None, None, 0, 0))
    ft_per_sample_grads = ft_compute_sample_grad(params, buffers, data, targets)

    close = [torch.allclose(per_sample_grad, ft_per_sample_grad, atol=3e-3, rtol=1e-5)
             for per_sample_grad, ft_per_sample_grad in
             zip(per_sample_grads, ft_per_sample_grads.values())]

    def compute_grad_fp64(sample, target):
        model_fp64 = SimpleCNN().to(device=device, dtype=torch.float64)
        with torch.no_grad():
            for param_fp32, param_fp64 in zip(model.parameters(), model_fp64.parameters()):
                param_fp64.copy_(param_fp32.to(torch.float64))
        prediction = model_fp64(sample.to(torch.float64).unsqueeze(0))
        loss = loss_fn(prediction, target.unsqueeze(0))
        return torch.autograd.grad(loss, list(model_fp64.parameters()))

    fp64_grads = compute_grad_fp64(data[2], targets[2])
    worst = max((a - b).abs().max().item() for a, b in
                zip(per_sample_grads, ft_per_sample_grads.values()))

    without_vmap = Timer(stmt="compute_sample_grads(data, targets)", globals=locals())
    with_vmap = Timer(stmt="ft_compute_sample_grad(params, buffers, data, targets)",
                      globals=locals())
    no_vmap_timing = without_vmap.timeit(2)
    with_vmap_timing = with_vmap.timeit(2)

    values = {"loss": loss, "all_close": all(close), "worst_gap_is_small": worst < 1e-5,
              "timed": no_vmap_timing.times[0] > 0 and with_vmap_timing.times[0] > 0}
    for i, (name, g) in enumerate(ft_per_sample_grads.items()):
        values[f"vmap {name}"] = g
        values[f"loop {name}"] = per_sample_grads[i]
        values[f"fp64 {name}"] = fp64_grads[i]
        values[f"batch {name}"] = batch_grads[i]
        values[f"mean of per-sample {name} is the batch grad"] = torch.allclose(
            g.mean(0), batch_grads[i], atol=1e-6)
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
