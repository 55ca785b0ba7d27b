"""The FX profiling tutorial: a small residual CNN traced with torch.fx.symbolic_trace, an
Interpreter subclass that times the whole run and every node (run / run_node overrides) and
prints a sorted tabulate summary, plus pytorch/examples' fx/profiling_tracer.py pattern: a
custom Tracer that records `record_function` ranges as torch.ops.profiler calls in the graph,
so the traced module's profile still shows them."""
import statistics
import time
from typing import Any, Dict, List

import tabulate
import torch
import torch.fx
import torch.nn as nn
from torch.fx import Interpreter


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.stem(x)))
        x = self.layer1(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ProfilingInterpreter(Interpreter):
    def __init__(self, mod: torch.nn.Module):
        super().__init__(torch.fx.symbolic_trace(mod))
        self.total_runtime_sec: List[float] = []
        self.runtimes_sec: Dict[torch.fx.Node, List[float]] = {}

    def run(self, *args) -> Any:
        start = time.perf_counter()
        result = super().run(*args)
        self.total_runtime_sec.append(time.perf_counter() - start)
        return result

    def run_node(self, n: torch.fx.Node) -> Any:
        start = time.perf_counter()
        result = super().run_node(n)
        self.runtimes_sec.setdefault(n, []).append(time.perf_counter() - start)
        return result

    def summary(self, should_sort: bool = False) -> str:
        mean_total = statistics.mean(self.total_runtime_sec)
        rows = [[node.op, str(node), statistics.mean(times),
                 statistics.mean(times) / mean_total * 100]
                for node, times in self.runtimes_sec.items()]
        if should_sort:
            rows.sort(key=lambda r: r[2], reverse=True)
        return tabulate.tabulate(rows, headers=["Op type", "Op", "Average runtime (s)",
                                                "Pct total runtime"])


class Ranged(nn.Module):
    def forward(self, x):
        with torch.profiler.record_function("foo"):
            return torch.relu(x)


class ProfilerTracer(torch.fx.Tracer):
    """Records `record_function` ranges as profiler ops in the graph while tracing."""

    def trace(self, root, concrete_args=None):
        record = torch.autograd.profiler.record_function
        saved_enter, saved_exit = record.__enter__, record.__exit__
        tracer = self

        def enter(ctx):
            handle = tracer.create_proxy("call_function",
                                         torch.ops.profiler._record_function_enter,
                                         (ctx.name,), {})
            ctx._fx_profiler_ctx = handle
            return handle

        def exit_(ctx, exc_type, exc_value, traceback):
            torch.ops.profiler._record_function_exit(ctx._fx_profiler_ctx)
            ctx._fx_profiler_ctx = None

        record.__enter__, record.__exit__ = enter, exit_
        try:
            return super().trace(root, concrete_args)
        finally:
            record.__enter__, record.__exit__ = saved_enter, saved_exit


def profiled_names(fn, x):
    with torch.autograd.profiler.profile() as prof:
        fn(x)
    return {e.name for e in prof.function_events}


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    model = TinyResNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    values = {}
    traced = torch.fx.symbolic_trace(model)
    values["graph"] = str(traced.graph)
    interp = ProfilingInterpreter(model)
    with torch.no_grad():
        reference = model(x)
        for _ in range(2):
            out = interp.run(x)
    values["interpreted"] = out
    values["same_as_model"] = bool(torch.allclose(out, reference, atol=1e-6))
    values["runs"] = len(interp.total_runtime_sec)
    values["nodes_timed"] = ",".join(f"{n.op}:{n.name}:{len(t)}"
                                     for n, t in interp.runtimes_sec.items())
    table = interp.summary(True)
    values["summary_header"] = table.splitlines()[0].split()[:4] == ["Op", "type", "Op",
                                                                    "Average"]
    values["summary_rows"] = len(table.splitlines()) - 2

    ranged = Ranged()
    r = torch.randn(5, 3, 2)
    values["eager_has_range"] = "foo" in profiled_names(ranged, r)
    plain = torch.fx.symbolic_trace(ranged)
    values["plain_trace_has_range"] = "foo" in profiled_names(plain, r)
    graph = ProfilerTracer().trace(ranged)
    with_ranges = torch.fx.GraphModule(ranged, graph)
    values["ranged_code_calls"] = ",".join(
        n.target.__name__ for n in graph.nodes if n.op == "call_function")
    values["custom_trace_has_range"] = "foo" in profiled_names(with_ranges, r)
    values["custom_trace_out"] = with_ranges(r)
    return {"losses": [], "values": values, "initial_state": initial}
