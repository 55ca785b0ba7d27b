"""Random training steps, compiled against eager against PyTorch.

`generate(seed)` draws a small model (an MLP, a CNN or an embedding model with norms,
activations, pooling), a loss, an optimizer, and whether the step clips gradients or steps a
scheduler; `check(spec)` builds it in kiln and in PyTorch with the same initial weights, runs
four steps written as users write them (`zero_grad; loss = ...; backward; step; return loss`)
eagerly in both and compiled in kiln, and lists what disagrees.

The criterion is three-way. A parameter whose gradient is zero up to rounding (a bias before
a batch norm, weights before a norm over two features) is moved by an adaptive optimizer
(Adam, RMSprop, Adagrad) by lr-sized steps in the direction of the rounding noise, so any two
correct runs differ there by ~lr. Compiled must therefore equal eager within a small tolerance
or within a few times the distance between kiln eager and PyTorch: a wrong compiled step
stands out against both; noise does not. The losses are held to the same rule (seed 20008: a
bias whose gradient is +-1e-7 of rounding moves +-lr under Adagrad, and the three losses part
by 4-7% from the third step).

`python -m tests.fuzz_steps FIRST COUNT` runs a longer sweep and prints failing seeds.
"""

from __future__ import annotations

import copy
import sys
import warnings
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ["ReLU", "GELU", "Tanh", "SiLU", "LeakyReLU", "ELU", "Sigmoid", "Softplus", "Mish",
               "Hardswish"]
OPTIMIZERS = ["sgd", "sgd_nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam", "adamax"]
LOSSES = ["cross_entropy", "label_smoothing", "mse_one_hot", "nll_log_softmax", "smooth_l1"]


@dataclass
class Spec:
    seed: int
    layers: list            # (class name, args, kwargs), built by either library
    x: np.ndarray
    y: np.ndarray
    loss: str
    optimizer: str
    lr: float
    options: dict
    clip: bool
    schedule: bool

    def __str__(self) -> str:
        layers = "\n".join(f"  {n}{tuple(a)} {k or ''}" for n, a, k in self.layers)
        return (f"seed {self.seed}: input {self.x.shape} {self.x.dtype}\n{layers}\n  loss "
                f"{self.loss}, {self.optimizer}(lr={self.lr}, {self.options}), clip "
                f"{self.clip}, StepLR {self.schedule}")


def generate(seed: int) -> Spec:
    rng = np.random.default_rng(seed)
    kind = rng.choice(["mlp", "cnn", "embedding"])
    layers = []
    act = lambda: (ACTIVATIONS[rng.integers(len(ACTIVATIONS))], (), {})
    if kind == "mlp":
        width = int(rng.integers(3, 20))
        x = rng.standard_normal((int(rng.integers(6, 12)), width)).astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):
            out, norm = int(rng.integers(3, 24)), rng.choice(["batch", "layer", "none"])
            layers.append(("Linear", (width, out), {"bias": bool(norm != "batch" and rng.integers(2))}))
            if norm == "batch":
                layers.append(("BatchNorm1d", (out,), {}))
            elif norm == "layer":
                layers.append(("LayerNorm", (out,), {}))
            layers.append(act())
            width = out
        layers.append(("Linear", (width, 3), {}))
    elif kind == "cnn":
        channels, size = int(rng.integers(1, 4)), int(rng.integers(8, 12))
        x = rng.standard_normal((int(rng.integers(6, 9)), channels, size, size)).astype(np.float32)
        for _ in range(int(rng.integers(1, 3))):
            out, kernel, norm = int(rng.integers(2, 8)), int(rng.choice([1, 3])), rng.random() < 0.4
            stride, pad = int(rng.choice([1, 2])), int(rng.integers(0, 2))
            kernel = kernel if size + 2 * pad >= kernel else 1     # a valid convolution
            layers.append(("Conv2d", (channels, out, kernel),
                           {"stride": stride, "padding": pad, "bias": bool(not norm and rng.integers(2))}))
            size = (size + 2 * pad - kernel) // stride + 1
            if norm:
                layers.append(("BatchNorm2d", (out,), {}))
            layers.append(act())
            if rng.random() < 0.3 and size >= 2:
                layers.append(("MaxPool2d", (2,), {"ceil_mode": True}))
                size = -(-size // 2)
            channels = out
        pooled = int(rng.integers(1, 3))
        layers += [("AdaptiveAvgPool2d", (pooled,), {}), ("Flatten", (), {}),
                   ("Linear", (channels * pooled * pooled, 3), {})]
    else:
        vocab, dim, length = int(rng.integers(5, 20)), int(rng.integers(2, 10)), int(rng.integers(1, 5))
        x = rng.integers(0, vocab, (int(rng.integers(6, 10)), length))
        padding = {"padding_idx": int(rng.integers(0, vocab))} if rng.random() < 0.3 else {}
        layers += [("Embedding", (vocab, dim), padding), ("Flatten", (), {}),
                   ("Linear", (dim * length, 3), {})]
    optimizer = OPTIMIZERS[rng.integers(len(OPTIMIZERS))]
    options = {"sgd": lambda: {"momentum": float(rng.choice([0, 0.9])),
                               "weight_decay": float(rng.choice([0, 1e-2]))},
               "sgd_nesterov": lambda: {"momentum": 0.9, "nesterov": True},
               "adam": lambda: {"amsgrad": bool(rng.integers(2)),
                                "weight_decay": float(rng.choice([0, 1e-2]))},
               "adamw": lambda: {"betas": (0.8, 0.95)},
               "rmsprop": lambda: {"momentum": float(rng.choice([0, 0.5])),
                                   "centered": bool(rng.integers(2))}}.get(optimizer, dict)()
    return Spec(seed, layers, x, rng.integers(0, 3, (x.shape[0],)),
                LOSSES[rng.integers(len(LOSSES))], optimizer,
                float(rng.choice([1e-3, 1e-2, 0.1])), options, bool(rng.random() < 0.3),
                bool(rng.random() < 0.3))


def _loss(lib, name):
    F = lib.nn.functional
    return {"cross_entropy": lambda out, y: F.cross_entropy(out, y),
            "label_smoothing": lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
            "mse_one_hot": lambda out, y: F.mse_loss(out, F.one_hot(y, 3).float()),
            "nll_log_softmax": lambda out, y: F.nll_loss(F.log_softmax(out, 1), y),
            "smooth_l1": lambda out, y: F.smooth_l1_loss(out.sum(1), y.float())}[name]


def _optimizer(lib, spec: Spec, params):
    optim = lib.optim
    make = {"sgd": optim.SGD, "sgd_nesterov": optim.SGD, "adam": optim.Adam,
            "adamw": optim.AdamW, "rmsprop": optim.RMSprop, "adagrad": optim.Adagrad,
            "nadam": optim.NAdam, "adamax": optim.Adamax}[spec.optimizer]
    return make(params, lr=spec.lr, **spec.options)


def _step(lib, spec: Spec, model, optimizer):
    loss_fn = _loss(lib, spec.loss)
    scheduler = lib.optim.lr_scheduler.StepLR(optimizer, 2, 0.5) if spec.schedule else None

    def step(x, y):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if spec.clip:
            lib.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss
    return step


def check(spec: Spec, steps: int = 4) -> list[str]:
    """What disagrees between kiln compiled, kiln eager and PyTorch eager (empty: nothing)."""
    import torch

    import kiln
    kiln.manual_seed(spec.seed)
    build = lambda lib: lib.nn.Sequential(*[getattr(lib.nn, name)(*args, **kwargs)
                                            for name, args, kwargs in spec.layers])
    eager = build(kiln)
    compiled, reference = copy.deepcopy(eager), build(torch)
    reference.load_state_dict({k: torch.tensor(v.numpy()) for k, v in eager.state_dict().items()})
    runs = {"eager": _step(kiln, spec, eager, _optimizer(kiln, spec, eager.parameters())),
            "compiled": kiln.compile(_step(kiln, spec, compiled,
                                           _optimizer(kiln, spec, compiled.parameters()))),
            "torch": _step(torch, spec, reference,
                           _optimizer(torch, spec, reference.parameters()))}
    problems = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for i in range(steps):
            losses = {name: run(*(lib.tensor(spec.x), lib.tensor(spec.y))).item()
                      for (name, run), lib in zip(runs.items(), (kiln, kiln, torch))}
            apart = abs(losses["compiled"] - losses["eager"])
            noise = abs(losses["torch"] - losses["eager"])
            if apart > 1e-6 + 1e-5 * abs(losses["eager"]) + 4 * noise:
                problems.append(f"step {i} loss: {losses}")
    problems += [f"warning: {w.message}" for w in seen if "kiln.compile" in str(w.message)]
    state = lambda m: {k: np.asarray(v.detach().numpy(), np.float64)
                       for k, v in m.state_dict().items()}
    mine, twin, theirs = state(eager), state(compiled), state(reference)
    for name in mine:
        apart = np.abs(twin[name] - mine[name]).max(initial=0)
        noise = np.abs(theirs[name] - mine[name]).max(initial=0)
        if apart > 2e-5 + 4 * noise:
            problems.append(f"{name}: compiled - eager {apart:.2e}, eager - torch {noise:.2e}")
    return problems


if __name__ == "__main__":
    first, count = int(sys.argv[1]), int(sys.argv[2])
    failed = 0
    for seed in range(first, first + count):
        spec = generate(seed)
        try:
            problems = check(spec)
        except Exception as e:          # noqa: BLE001 - a sweep reports and goes on
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            failed += 1
            print(f"{spec}\n  " + "\n  ".join(problems), flush=True)
    print(f"{count} seeds, {failed} failing")
