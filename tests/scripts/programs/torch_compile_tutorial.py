"""The torch.compile tutorial on CPU at small sizes: a compiled function (called and decorated),
a compiled Module (torch.compile(mod) and mod.compile()), eval and train steps compiled with
mode="reduce-overhead" after torch._dynamo.reset(), data-dependent control flow that
torch.jit.trace and torch.fx.symbolic_trace cannot follow but torch.compile can, a compiled
function calling NumPy, a custom backend that prints the FX graph, torch._dynamo.explain and
fullgraph=True. `backend` names the compiler; a test may give the reference run a quicker one."""
import contextlib
import io
import time
import warnings

import numpy as np
import torch
import torch._dynamo
import torch.nn as nn


class MyModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(20, 8)

    def forward(self, x):
        return nn.functional.relu(self.lin(x))


class SmallNet(nn.Module):
    """Stands in for the tutorial's densenet121: convolutions, batch norm, pooling, a head."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def generate_data(b, gen):
    return (torch.randn(b, 3, 16, 16, generator=gen), torch.randint(5, (b,), generator=gen))


def main(seed=0, compile=False, initial_state=None, backend="inductor"):
    torch.manual_seed(seed)
    # the tutorial's mode= spelling where the compiler is inductor (mode and backend exclude
    # each other), the given backend otherwise
    fast = {"mode": "reduce-overhead"} if backend == "inductor" else {"backend": backend}
    values = {}

    def foo(x, y):
        a = torch.sin(x)
        b = torch.cos(x)
        return a + b

    opt_foo1 = torch.compile(foo, backend=backend)
    x, y = torch.randn(10, 10), torch.randn(10, 10)
    values["foo1"] = opt_foo1(x, y)

    @torch.compile(backend=backend)
    def opt_foo2(x, y):
        a = torch.sin(x)
        b = torch.cos(x)
        return a + b

    values["foo2"] = opt_foo2(x, y)

    mod = MyModule()
    opt_mod = torch.compile(mod, backend=backend)
    inp = torch.randn(10, 20)
    values["opt_mod"] = opt_mod(inp)
    values["opt_mod_class"] = type(opt_mod).__name__
    values["orig_mod_kept"] = opt_mod._orig_mod is mod
    values["opt_mod_keys"] = ",".join(opt_mod.state_dict())
    mod.compile(backend=backend)                   # in place: mod stays a MyModule
    values["mod_compiled_in_place"] = mod(inp)
    values["mod_class"] = type(mod).__name__

    # inference, eager then compiled, on one model
    model = SmallNet()
    if initial_state is not None:
        model.load_state_dict(initial_state["eval"])
    initial = {"eval": {k: v.clone() for k, v in model.state_dict().items()}}
    model.eval()

    def evaluate(mod, inp):
        return mod(inp)

    torch._dynamo.reset()
    evaluate_opt = torch.compile(evaluate, **fast)
    gen = torch.Generator().manual_seed(seed)
    eager_out, compiled_out = [], []
    for _ in range(3):
        inp = generate_data(4, gen)[0]
        eager_out.append(timed(lambda: evaluate(model, inp))[0])
        compiled_out.append(timed(lambda: evaluate_opt(model, inp))[0])
    values["eval_eager"] = torch.stack(eager_out)
    values["eval_compiled"] = torch.stack(compiled_out)

    # training: eager on one model, compiled on a second with the same initial weights
    losses = []
    for compiled_run in (False, True):
        model = SmallNet()
        if initial_state is not None:
            model.load_state_dict(initial_state["train"])
        if not compiled_run:
            initial["train"] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(initial["train"])
        opt = torch.optim.Adam(model.parameters())

        def train(mod, data):
            opt.zero_grad(True)
            pred = mod(data[0])
            loss = torch.nn.CrossEntropyLoss()(pred, data[1])
            loss.backward()
            opt.step()
            return loss

        step = torch.compile(train, **fast) if compiled_run or compile else train
        gen = torch.Generator().manual_seed(seed + 1)
        for _ in range(4):
            data = generate_data(8, gen)
            losses.append(timed(lambda: step(model, data))[0].item())

    # data-dependent control flow
    def f1(x, y):
        if x.sum() < 0:
            return -y
        return y

    def test_fns(fn1, fn2, args):
        return bool(torch.allclose(fn1(*args), fn2(*args)))

    inp1, inp2 = torch.randn(5, 5), torch.randn(5, 5)
    try:        # PyTorch traces one path (and warns); kiln's trace exports one graph: it raises
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced_f1 = torch.jit.trace(f1, (inp1, inp2))
        values["traced_f1"] = f"{test_fns(f1, traced_f1, (inp1, inp2))}," \
                              f"{test_fns(f1, traced_f1, (-inp1, inp2))}"
    except RuntimeError:
        values["traced_f1"] = "raised"
    try:
        torch.fx.symbolic_trace(f1)
        values["fx_f1"] = "traced"
    except Exception as e:
        values["fx_f1"] = type(e).__name__
    fx_f1 = torch.fx.symbolic_trace(f1, concrete_args={"x": inp1})
    values["fx_f1_concrete"] = f"{test_fns(f1, fx_f1, (inp1, inp2))},{test_fns(f1, fx_f1, (-inp1, inp2))}"
    torch._dynamo.reset()
    compile_f1 = torch.compile(f1, backend=backend)
    values["compile_f1"] = f"{test_fns(f1, compile_f1, (inp1, inp2))},{test_fns(f1, compile_f1, (-inp1, inp2))}"

    def f2(x, y):
        return x + y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script_f2 = torch.jit.script(f2)
    try:
        script_f2(inp1, 3)
        values["script_f2"] = "ran"
    except RuntimeError:          # y is not annotated: TorchScript takes it for a Tensor
        values["script_f2"] = "raised"
    compile_f2 = torch.compile(f2, backend=backend)
    values["compile_f2"] = test_fns(f2, compile_f2, (inp1, 3))

    def f3(x):
        x = x * 2
        x = np.cumsum(x.numpy(), axis=1)
        x = torch.from_numpy(x)
        x = x * 2
        return x

    compile_f3 = torch.compile(f3, backend=backend)
    values["compile_f3"] = test_fns(f3, compile_f3, (inp2,))

    # a custom backend: shown the FX graph, it runs the graph's forward
    printed = io.StringIO()
    graph_ops = []

    def custom_backend(gm: torch.fx.GraphModule, example_inputs):
        with contextlib.redirect_stdout(printed):
            print("custom backend called with FX graph:")
            print(gm.graph)
        graph_ops.append(sum(n.op in ("call_function", "call_method", "call_module")
                             for n in gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    opt_model = torch.compile(MyModule(), backend=custom_backend)
    values["custom_model"] = tuple(opt_model(torch.ones(2, 20)).shape)
    values["custom_called"] = len(graph_ops)
    values["custom_printed"] = "custom backend called with FX graph:" in printed.getvalue()

    def bar(a, b):
        x = a / (torch.abs(a) + 1)
        if b.sum() < 0:
            b = b * -1
        return x * b

    opt_bar = torch.compile(bar, backend=custom_backend)
    a, b = torch.randn(10), torch.randn(10)
    values["bar"] = f"{test_fns(bar, opt_bar, (a, b))},{test_fns(bar, opt_bar, (a, -b))}"

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(bar)(torch.randn(10), torch.randn(10))
    values["explain_counts"] = f"{explanation.graph_count},{explanation.graph_break_count}"
    values["explain_reasons"] = len(explanation.break_reasons)
    values["explain_str"] = "Graph Count" in str(explanation) or "graphs:" in str(explanation)

    opt_bar = torch.compile(bar, fullgraph=True, backend=backend)
    try:
        opt_bar(torch.randn(10), torch.randn(10))
        values["fullgraph_bar"] = "ran"
    except Exception:
        values["fullgraph_bar"] = "raised"
    opt_model = torch.compile(SmallNet().eval(), fullgraph=True, backend=backend)
    values["fullgraph_model"] = tuple(opt_model(generate_data(2, gen)[0]).shape)
    return {"losses": losses, "values": values, "initial_state": initial}
