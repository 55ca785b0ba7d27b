"""Compiling-the-optimizer recipes: a model's forward/backward run eagerly and only the
optimizer step compiled (`@torch.compile(fullgraph=False) def fn(): opt.step()`), first Adam
with a float learning rate, then Adam with the rate as a tensor (lr=torch.tensor(0.01)) and a
LinearLR scheduler stepped inside the compiled function; the rates and the weights follow
torch's step by step."""
import numpy as np
import torch


def make_model(initial_state):
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
    if initial_state is not None:
        model.load_state_dict(initial_state)
    return model


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = [torch.from_numpy(rng.normal(size=(8, 16)).astype(np.float32)) for _ in range(6)]
    model = make_model(None if initial_state is None else initial_state["model"])
    initial = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
    losses, rates = [], []

    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def fn():
        opt.step()

    if compile:
        fn = torch.compile(fn, fullgraph=False)
    for x in data:
        loss = model(x).pow(2).mean()
        loss.backward()
        fn()
        opt.zero_grad()
        losses.append(loss.item())

    # the learning rate as a tensor, so that the scheduler's new rates need no recompile
    model2 = make_model(None if initial_state is None else initial_state["model2"])
    initial["model2"] = {k: v.clone() for k, v in model2.state_dict().items()}
    opt2 = torch.optim.Adam(model2.parameters(), lr=torch.tensor(0.01))
    sched = torch.optim.lr_scheduler.LinearLR(opt2, total_iters=5)

    def fn2():
        opt2.step()
        sched.step()

    if compile:
        fn2 = torch.compile(fn2, fullgraph=False)
    for x in data:
        loss = model2(x).pow(2).mean()
        loss.backward()
        fn2()
        opt2.zero_grad()
        losses.append(loss.item())
        rates.append(float(opt2.param_groups[0]["lr"]))
    return {"losses": losses, "rates": rates, "initial_state": initial,
            "values": {"lr_is_tensor": isinstance(opt2.param_groups[0]["lr"], torch.Tensor),
                       "last_lr": sched.get_last_lr()[0],
                       "weight": model2[3].weight}}


if __name__ == "__main__":
    print(main())
