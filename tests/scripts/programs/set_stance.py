"""The torch.compiler.set_stance recipe: "force_eager" as a decorator, a context manager and a
plain call, the error when a stance changes inside a compiled region, "fail_on_recompile" and
"eager_on_recompile" on a new input shape, eager-vs-compiled timing without a second model,
an eager first iteration that catches a bad call before compiling, then a training loop whose
first step runs under "force_eager" and the rest compiled. `backend` names the compiler; a test
may give the reference run a quicker one."""
import time

import numpy as np
import torch
import torch.nn as nn


def main(seed=0, compile=False, initial_state=None, backend="inductor"):
    torch.manual_seed(seed)
    values = {}
    inp = torch.zeros(3)

    @torch.compile(backend=backend)
    def foo(x):
        if torch.compiler.is_compiling():
            return x + 1
        else:
            return x - 1

    @torch.compiler.set_stance("force_eager")
    def bar(x):
        return foo(x)

    seen = [foo(inp), bar(inp)]
    with torch.compiler.set_stance("force_eager"):
        seen.append(foo(inp))
    torch.compiler.set_stance("force_eager")
    seen.append(foo(inp))
    torch.compiler.set_stance("default")
    seen.append(foo(inp))
    values["foo_stances"] = torch.stack(seen)

    @torch.compile(backend=backend)
    def baz(x):
        with torch.compiler.set_stance("force_eager"):
            return x + 1

    try:
        baz(inp)
        values["stance_inside_compiled"] = "ran"
    except Exception:
        values["stance_inside_compiled"] = "raised"

    @torch.compiler.set_stance("force_eager")
    def inner(x):
        return x + 1

    @torch.compile(backend=backend)
    def outer(x):
        return inner(x)

    try:
        outer(inp)
        values["decorated_inside_compiled"] = "ran"
    except Exception:
        values["decorated_inside_compiled"] = "raised"

    @torch.compile(backend=backend)
    def my_big_model(x):
        return torch.relu(x)

    my_big_model(torch.randn(3))
    with torch.compiler.set_stance("fail_on_recompile"):
        values["same_shape_ok"] = my_big_model(torch.ones(3))
        try:
            my_big_model(torch.randn(4))
            values["recompile"] = "ran"
        except Exception:
            values["recompile"] = "raised"

    @torch.compile(backend=backend)
    def my_huge_model(x):
        if torch.compiler.is_compiling():
            return x + 1
        else:
            return x - 1

    first = my_huge_model(torch.zeros(3))
    with torch.compiler.set_stance("eager_on_recompile"):
        values["eager_on_recompile"] = torch.cat([first, my_huge_model(torch.zeros(3)),
                                                  my_huge_model(torch.zeros(4)),
                                                  my_huge_model(torch.zeros(3))])

    @torch.compile(backend=backend)
    def my_gigantic_model(x, y):
        x = x @ y
        x = x @ y
        x = x @ y
        return x

    inps = torch.randn(5, 5), torch.randn(5, 5)
    with torch.compiler.set_stance("force_eager"):
        start = time.perf_counter()
        eager = my_gigantic_model(*inps)
        eager_time = time.perf_counter() - start
    for _ in range(3):
        my_gigantic_model(*inps)
    values["gigantic_same"] = bool(torch.allclose(my_gigantic_model(*inps), eager, rtol=1e-5))
    values["timed"] = eager_time >= 0

    @torch.compile(backend=backend)
    def my_humongous_model(x):
        return torch.sin(x, x)

    reached = []
    try:
        with torch.compiler.set_stance("force_eager"):
            reached.append(my_humongous_model(torch.randn(3)))
        reached.append(my_humongous_model(torch.randn(3)))
    except Exception as e:
        values["humongous_error"] = type(e).__name__
    values["humongous_reached"] = len(reached)

    # a training loop: the first step eagerly (a quick check before compiling), then compiled
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(rng.normal(size=(6, 8, 6)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 3, size=(6, 8)))

    def train_step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = torch.compile(train_step, backend=backend)
    losses = []
    for i in range(len(data)):
        if i == 0:
            with torch.compiler.set_stance("force_eager"):
                losses.append(step(data[i], target[i]).item())
        else:
            losses.append(step(data[i], target[i]).item())
    return {"losses": losses, "values": values, "initial_state": initial}
