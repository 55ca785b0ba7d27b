"""What the RPC rank scripts run (module-level, so RPC can pickle it by reference), and the
single-process references the tests compare them with."""

from __future__ import annotations

import threading
import time

import numpy as np

import kiln
import kiln.distributed.rpc as rpc
import kiln.nn as nn

# ----------------------------------------------------------------------------- basics


def add(a, b):
    return a + b


def affine(t, scale, shift):
    return t * scale + shift


def grad_info(t) -> tuple:
    """How a tensor arrived: (requires_grad, is a leaf, class name, grad_fn's name)."""
    return (t.requires_grad, t.grad_fn is None, type(t).__name__,
            "" if t.grad_fn is None else t.grad_fn.name())


def square_sum(x):
    return (x * x).sum()


def echo(x):
    return x


def slow(seconds, value):
    time.sleep(seconds)
    return value


def fail(value):
    raise ValueError(f"bad value {value}")


def fetch_and_scale(rref, k):
    """On a third worker: copy the RRef's value here, and call its method on its owner."""
    return [v * k for v in rref.to_here().values], rref.rpc_sync().total(), rref.owner_name()


@rpc.functions.async_execution
def add_chained(to, x, y, z):
    """torch's async_execution pattern: the reply waits for a call to a third worker."""
    return rpc.rpc_async(to, add, args=(x, y)).then(lambda fut: fut.wait() + z)


class Accumulator:
    def __init__(self, start):
        self.values = [start]

    def push(self, x):
        self.values.append(x)
        return len(self.values)

    def total(self):
        return sum(self.values)

    @rpc.functions.async_execution
    def total_later(self, extra):
        """An async method: its result is set by another thread, 50 ms later."""
        fut = kiln.futures.Future()
        threading.Timer(0.05, lambda: fut.set_result(self.total() + extra)).start()
        return fut

    def boom(self):
        raise KeyError("no such entry")


def arrivals(lib, rpc, dist_autograd, grad_info) -> list:
    """What the master sees of tensors that travel with or without a distributed autograd
    context, in kiln or in torch (`lib`): the same code run by both rank scripts."""
    leaf = lib.ones(2, dtype=lib.float64, requires_grad=True)
    param = lib.nn.Parameter(lib.ones(2, dtype=lib.float64))
    seen = [rpc.rpc_sync("worker1", grad_info, args=(t,)) for t in (leaf, leaf * 2, param)]
    seen.append(grad_info(rpc.rpc_sync("worker1", echo, args=(leaf * 2,))))
    with dist_autograd.context():
        seen += [rpc.rpc_sync("worker1", grad_info, args=(t,))
                 for t in (leaf, leaf * 2, param, lib.ones(2))]
        seen.append(grad_info(rpc.rpc_sync("worker1", echo, args=(leaf * 2,))))
    return seen


# ----------------------------------------------------------------------------- batching server

TRAINERS, ROUNDS, LR, DIM = 2, 4, 0.125, 5


def target(trainer: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, DIM) * (trainer + 1)


def fake_grad(params: np.ndarray, trainer: int, step: int) -> np.ndarray:
    """A trainer's update: a gradient of a quadratic pulling toward its own target."""
    return (params - target(trainer)) * (1.0 + 0.25 * step) + 0.01 * trainer


class BatchServer:
    """The batch example's pattern: each trainer's call adds its gradient and waits (an
    async_execution Future) until the round has all TRAINERS updates; then one SGD step on
    the mean, and every waiting trainer gets the new parameters."""

    def __init__(self):
        self.param = nn.Parameter(kiln.zeros(DIM, dtype=kiln.float64))
        self.param.grad = kiln.zeros_like(self.param)
        self.opt = kiln.optim.SGD([self.param], lr=LR)
        self.lock = threading.Lock()
        self.future = kiln.futures.Future()
        self.count = 0

    def get(self):
        return self.param.detach().clone()

    @staticmethod
    @rpc.functions.async_execution
    def update_and_fetch(server_rref, grad):
        self = server_rref.local_value()
        with self.lock:
            self.param.grad += grad
            self.count += 1
            fut = self.future
            if self.count == TRAINERS:
                self.param.grad /= TRAINERS
                self.opt.step()
                self.opt.zero_grad(set_to_none=False)
                self.count = 0
                self.future = kiln.futures.Future()
                fut.set_result(self.param.detach().clone())
        return fut


def run_trainer(server_rref, trainer: int) -> list:
    """One trainer: ROUNDS updates, each answered by the batched step's parameters."""
    params = server_rref.rpc_sync().get()
    seen = []
    for step in range(ROUNDS):
        grad = kiln.tensor(fake_grad(params.numpy(), trainer, step))
        params = rpc.rpc_sync(server_rref.owner(), BatchServer.update_and_fetch,
                              args=(server_rref, grad))
        seen.append(params.numpy().copy())
    return seen


def batch_reference() -> np.ndarray:
    """The same updates in one process: every trainer sees the same parameters each round."""
    param = nn.Parameter(kiln.zeros(DIM, dtype=kiln.float64))
    param.grad = kiln.zeros_like(param)
    opt = kiln.optim.SGD([param], lr=LR)
    history = []
    for step in range(ROUNDS):
        now = param.detach().numpy().copy()
        for trainer in range(TRAINERS):
            param.grad += kiln.tensor(fake_grad(now, trainer, step))
        param.grad /= TRAINERS
        opt.step()
        opt.zero_grad(set_to_none=False)
        history.append(param.detach().numpy().copy())
    return np.array(history)


# ----------------------------------------------------------------------------- split model

STEPS, SPLIT_LR, BATCH = 3, 0.1, 6


def split_weights() -> dict[str, np.ndarray]:
    """Initial weights of the split model: first/last on the caller, middle on the worker."""
    rng = np.random.RandomState(0)
    return {"first.weight": rng.randn(4, 5) * 0.5, "first.bias": rng.randn(4) * 0.1,
            "middle.weight": rng.randn(3, 4) * 0.5, "middle.bias": rng.randn(3) * 0.1,
            "last.weight": rng.randn(1, 3) * 0.5, "last.bias": rng.randn(1) * 0.1}


def split_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.RandomState(1)
    return [(rng.randn(BATCH, 5), rng.randn(BATCH, 1)) for _ in range(STEPS)]


def linear(prefix: str, weights: dict) -> nn.Linear:
    w = weights[prefix + ".weight"]
    layer = nn.Linear(w.shape[1], w.shape[0], dtype=kiln.float64)
    with kiln.no_grad():
        layer.weight.copy_(kiln.tensor(w))
        layer.bias.copy_(kiln.tensor(weights[prefix + ".bias"]))
    return layer


def skip_reference() -> tuple[float, dict]:
    """One backward of `skip_loss` in one process: the loss and every gradient."""
    weights = split_weights()
    layers = {name: linear(name, weights) for name in ("first", "middle", "last")}
    x, y = split_batches()[0]
    middle = layers["middle"]
    loss = skip_loss(layers["first"], lambda h: kiln.tanh(middle(h)), layers["last"], x, y)
    loss.backward()
    return loss.item(), {f"{n}.{k}": p.grad.numpy().copy() for n, layer in layers.items()
                         for k, p in layer.named_parameters()}


class MiddleShard(nn.Module):
    """The part of the model that lives on the worker: a linear and a tanh."""

    def __init__(self):
        super().__init__()
        self.middle = linear("middle", split_weights())

    def forward(self, h):
        return kiln.tanh(self.middle(h))

    def parameter_rrefs(self):
        return [rpc.RRef(p) for p in self.parameters()]

    def state(self):
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}


def context_grads(module_rref, ctx_id: int) -> dict:
    """On the module's owner: its parameters' gradients in a distributed autograd context."""
    import kiln.distributed.autograd as dist_autograd
    grads = dist_autograd.get_gradients(ctx_id)
    return {k: grads[p].numpy().copy() for k, p in module_rref.local_value().named_parameters()}


def grads_against(shared, seed: int, rounds: int = 3) -> list:
    """A trainer's rounds of dist autograd through a module other trainers use at the same
    time: per round the loss, the module's gradients in this trainer's context (read on its
    owner) and the input's gradient here."""
    import kiln.distributed.autograd as dist_autograd
    rng = np.random.RandomState(seed)
    seen = []
    for _ in range(rounds):
        x = kiln.tensor(rng.randn(BATCH, 4), requires_grad=True)
        with dist_autograd.context() as ctx:
            loss = shared.rpc_sync().forward(x).pow(2).sum()
            dist_autograd.backward(ctx, [loss])
            grads = rpc.rpc_sync(shared.owner(), context_grads, args=(shared, ctx))
            seen.append((loss.item(), grads, dist_autograd.get_gradients(ctx)[x].numpy()))
    return seen


def grads_reference(seed: int, rounds: int = 3) -> list:
    """The same rounds in one process."""
    middle = linear("middle", split_weights())
    rng = np.random.RandomState(seed)
    seen = []
    for _ in range(rounds):
        x = kiln.tensor(rng.randn(BATCH, 4), requires_grad=True)
        middle.zero_grad()
        loss = kiln.tanh(middle(x)).pow(2).sum()
        loss.backward()
        seen.append((loss.item(), {k: p.grad.numpy().copy()
                                   for k, p in middle.named_parameters()}, x.grad.numpy()))
    return seen


def skip_loss(first, middle, last, x, y):
    """The split model with a skip connection around the middle: h feeds both."""
    h = first(kiln.tensor(x))
    return nn.functional.mse_loss(last(middle(h)) + h[:, :1], kiln.tensor(y))


def split_reference() -> tuple[list[float], dict, dict]:
    """(losses, first step's gradients, final weights) of the same model in one process."""
    weights = split_weights()
    layers = {name: linear(name, weights) for name in ("first", "middle", "last")}
    params = [p for layer in layers.values() for p in layer.parameters()]
    opt = kiln.optim.SGD(params, lr=SPLIT_LR)
    losses, first_grads = [], {}
    for step, (x, y) in enumerate(split_batches()):
        out = layers["last"](kiln.tanh(layers["middle"](layers["first"](kiln.tensor(x)))))
        loss = nn.functional.mse_loss(out, kiln.tensor(y))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            first_grads = {f"{n}.{k}": p.grad.numpy().copy() for n, layer in layers.items()
                           for k, p in layer.named_parameters()}
        opt.step()
        losses.append(loss.item())
    final = {f"{n}.{k}": p.detach().numpy().copy() for n, layer in layers.items()
             for k, p in layer.named_parameters()}
    return losses, first_grads, final


# ----------------------------------------------------------------------------- RemoteModule

def remote_module_batches() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.RandomState(2)
    return [(rng.randn(BATCH, 4), rng.randn(BATCH, 2)) for _ in range(STEPS)]


def forward_elsewhere(remote_module, x):
    """On another worker: the RemoteModule arrived pickled and still runs on its owner."""
    return remote_module(kiln.tensor(x)).detach().numpy(), remote_module.on.name


def remote_module_reference(weight: np.ndarray, bias: np.ndarray) -> tuple[list, dict]:
    """(losses, final weights) of the same Linear trained in one process."""
    layer = linear("l", {"l.weight": weight, "l.bias": bias})
    opt = kiln.optim.SGD(layer.parameters(), lr=SPLIT_LR)
    losses = []
    for x, y in remote_module_batches():
        loss = nn.functional.mse_loss(layer(kiln.tensor(x)), kiln.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy().copy() for k, v in layer.state_dict().items()}


class Pair(nn.Module):
    """Two parameters; the second is used only when asked (a step that gives it no gradient)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(kiln.tensor([1.0, 2.0], dtype=kiln.float64))
        self.b = nn.Parameter(kiln.tensor([3.0], dtype=kiln.float64))

    def forward(self, use_b: bool):
        loss = (self.a * self.a).sum()
        return loss + (self.b * self.b).sum() if use_b else loss

    def parameter_rrefs(self):
        return [rpc.RRef(p) for p in self.parameters()]

    def values(self):
        return self.a.detach().numpy().copy(), self.b.detach().numpy().copy()
