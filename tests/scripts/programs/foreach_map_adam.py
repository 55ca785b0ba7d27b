"""The foreach_map recipe: Adam written with `torch._higher_order_ops.foreach_map.foreach_map`
(any pointwise function mapped over lists of tensors) and `torch._foreach_copy_`, compiled,
stepping a copy of a model beside `torch.optim.Adam(lr=torch.tensor(0.01))` on the first; the
parameters and the optimizer states agree. Then both drive a short training of their models.
Small CPU sizes; `backend` names the compiler (a test may give the reference run a quicker one)."""
import numpy as np
import torch
import torch.utils.benchmark as benchmark
from torch._higher_order_ops.foreach_map import foreach_map


def get_inputs(optim):
    steps, params, exp_avgs, exp_avg_sqs = [], [], [], []
    for group in optim.param_groups:
        for p in group["params"]:
            params.append(p)
            state = optim.state[p]
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
    return steps, params, exp_avgs, exp_avg_sqs


def update_exp_avg_sq(exp_avg_sq, grad, beta2):
    return exp_avg_sq.mul(beta2).addcmul(grad, grad, value=1 - beta2)


def update_param(param, step, exp_avg, exp_avg_sq, beta1, beta2, lr, eps):
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2 = (1 - torch.pow(beta2, step)).sqrt()
    step_size = (lr / bias_correction1).neg()
    denom = (exp_avg_sq.sqrt() / (bias_correction2 * step_size)).add(eps / step_size)
    return torch.add(param, torch.div(exp_avg, denom))


def foreach_map_adam(steps, params, exp_avgs, exp_avg_sqs, weight_decay=0, beta1=0.9,
                     beta2=0.999, lr=1e-3, eps=1e-8):
    with torch.no_grad():
        grads = [param.grad for param in params]
        updated_steps = foreach_map(lambda x: x + 1, steps)
        torch._foreach_copy_(steps, updated_steps)
        if weight_decay != 0:
            foreach_map(torch.add, (grads,), alpha=weight_decay)
        exp_avgs_updated = foreach_map(torch.lerp, exp_avgs, grads, 1 - beta1)
        exp_avgs_sq_updated = foreach_map(update_exp_avg_sq, exp_avg_sqs, grads, beta2)
        params_updated = foreach_map(update_param, params, steps, exp_avgs_updated,
                                     exp_avgs_sq_updated, beta1, beta2, lr, eps)
        torch._foreach_copy_(exp_avgs, exp_avgs_updated)
        torch._foreach_copy_(exp_avg_sqs, exp_avgs_sq_updated)
        torch._foreach_copy_(params, params_updated)


def main(seed=0, compile=False, initial_state=None, backend="inductor"):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16, False) for _ in range(4)])
    model_copy = torch.nn.Sequential(*[torch.nn.Linear(16, 16, False) for _ in range(4)])
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model_copy.load_state_dict(initial)          # the same weights, so the two can agree
    input = torch.rand(16)
    model(input).sum().backward()
    model_copy(input).sum().backward()

    opt_eager = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    opt_eager_copy = torch.optim.Adam(model_copy.parameters(), lr=torch.tensor(0.01))
    opt_eager.step()
    opt_eager_copy.step()
    inputs = get_inputs(opt_eager_copy)
    compiled_adam = torch.compile(foreach_map_adam, backend=backend)
    for _ in range(5):
        opt_eager.step()
        compiled_adam(*inputs, lr=0.01)
    values = {"max_param_gap": max((a - b).abs().max().item() for a, b in zip(
        opt_eager.param_groups[0]["params"], opt_eager_copy.param_groups[0]["params"])),
        "steps": torch.stack(inputs[0]), "exp_avg_sq": inputs[3][0].clone()}

    # both optimizers then train their models on the same batches
    rng = np.random.default_rng(seed)
    xs = torch.from_numpy(rng.normal(size=(5, 8, 16)).astype(np.float32))
    losses = []
    for x in xs:
        for net, step in ((model, opt_eager.step),
                          (model_copy, lambda: compiled_adam(*inputs, lr=0.01))):
            for p in net.parameters():
                p.grad = None
            loss = net(x).pow(2).mean()
            loss.backward()
            step()
            losses.append(loss.item())
    values["final_weight"] = model_copy[0].weight.detach().clone()

    # the recipe's timing, last: each timed call steps the optimizer again
    def timed(f, *args, **kwargs):
        t0 = benchmark.Timer(stmt="f(*args, **kwargs)",
                             globals={"args": args, "kwargs": kwargs, "f": f})
        return t0.blocked_autorange(min_run_time=0.01).mean * 1e6

    values["timed"] = timed(opt_eager.step) > 0 and timed(compiled_adam, *inputs) > 0
    return {"losses": losses, "values": values, "initial_state": initial}
