"""The torch.func "Model ensembling" tutorial: several MLPs of one architecture, predictions
in a Python loop (a different minibatch per model, or the same one), then stack_module_state,
a stateless copy of one model moved to the meta device (copy.deepcopy(...).to('meta')), and
vmap over functional_call with in_dims=(0, 0, 0) and (0, 0, None); Timer around both ways.
Weights and data come from NumPy, so both libraries see the same numbers."""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import vmap
from torch.func import functional_call, stack_module_state
from torch.utils.benchmark import Timer


class SimpleMLP(nn.Module):
    def __init__(self):
        super(SimpleMLP, self).__init__()
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 4)

    def forward(self, x):
        x = x.flatten(1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        x = F.relu(x)
        x = self.fc3(x)
        return x


def load_numpy_weights(model, rng):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, tuple(p.shape)).astype(np.float32)))


def main(seed=0, compile=False, initial_state=None, num_models=5):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = "cpu"
    data = torch.from_numpy(rng.standard_normal((8, 6, 1, 4, 4)).astype(np.float32))
    models = [SimpleMLP().to(device) for _ in range(num_models)]
    for model in models:
        load_numpy_weights(model, rng)

    minibatches = data[:num_models]
    predictions_diff_minibatch_loop = [model(minibatch) for model, minibatch in
                                       zip(models, minibatches)]
    minibatch = data[0]
    predictions2 = [model(minibatch) for model in models]

    params, buffers = stack_module_state(models)
    base_model = copy.deepcopy(models[0])
    base_model = base_model.to("meta")

    def fmodel(params, buffers, x):
        return functional_call(base_model, (params, buffers), (x,))

    leading = [p.size(0) for p in params.values()]
    assert minibatches.shape == (num_models, 6, 1, 4, 4)
    predictions1_vmap = vmap(fmodel)(params, buffers, minibatches)
    close1 = torch.allclose(predictions1_vmap, torch.stack(predictions_diff_minibatch_loop),
                            atol=1e-3, rtol=1e-5)
    predictions2_vmap = vmap(fmodel, in_dims=(0, 0, None))(params, buffers, minibatch)
    close2 = torch.allclose(predictions2_vmap, torch.stack(predictions2), atol=1e-3, rtol=1e-5)

    without_vmap = Timer(stmt="[model(minibatch) for model, minibatch in zip(models, "
                         "minibatches)]", globals=locals())
    with_vmap = Timer(stmt="vmap(fmodel)(params, buffers, minibatches)",
                      globals=dict(locals(), vmap=vmap))
    timed = without_vmap.timeit(3).times[0] > 0 and with_vmap.timeit(3).times[0] > 0

    # the stacked parameters are leaves that require grad: the ensemble trains through vmap
    predictions1_vmap.pow(2).mean().backward()
    values = {"leading": torch.tensor(leading), "close1": close1, "close2": close2,
              "timed": timed, "template_is_meta": base_model.fc1.weight.is_meta,
              "predictions1_vmap": predictions1_vmap, "predictions2_vmap": predictions2_vmap,
              "loop1": torch.stack(predictions_diff_minibatch_loop),
              "loop2": torch.stack(predictions2)}
    for name, p in params.items():
        values[f"grad {name}"] = p.grad
    return {"losses": [], "values": values}


if __name__ == "__main__":
    print(main())
