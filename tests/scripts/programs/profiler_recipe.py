"""The PyTorch profiler recipe: profile a small CNN's inference with record_function labels
and record_shapes, key_averages tables sorted by CPU time and grouped by input shape, memory
profiling, export_chrome_trace, with_stack grouped by stack, and a long-running loop profiled on a
schedule (wait/warmup/active/repeat) with on_trace_ready and prof.step()."""
import json
import os
import tempfile

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    model = SmallNet()
    if initial_state is not None:
        model.load_state_dict(initial_state)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    inputs = torch.randn(2, 3, 12, 12)
    values = {}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with record_function("model_inference"):
            out = model(inputs)
    values["out"] = out
    counts = {e.key: e.count for e in prof.key_averages()}
    values["label_calls"] = counts.get("model_inference")
    # (the op rows are the framework's own: aten::conv2d in PyTorch, kiln's primitives in kiln)
    values["op_rows"] = len(counts) > 3
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=5)
    values["table_has_columns"] = all(c in table for c in ("Name", "Self CPU", "CPU total",
                                                           "# of Calls"))
    values["table_rows"] = sum(1 for line in table.splitlines()
                               if line.strip() and not line.startswith(("-", "Self CPU")))
    by_shape = prof.key_averages(group_by_input_shape=True)
    values["label_shapes"] = ";".join(str(e.input_shapes) for e in by_shape
                                      if e.key == "model_inference")
    values["shape_table_column"] = "Input Shapes" in by_shape.table(
        sort_by="cpu_time_total", row_limit=5)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=True) as prof:
        model(inputs)
    memory_table = prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=5)
    values["memory_columns"] = "CPU Mem" in memory_table and "Self CPU Mem" in memory_table
    values["some_memory"] = any(e.cpu_memory_usage > 0 for e in prof.key_averages())

    with tempfile.TemporaryDirectory() as tmp:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("traced_inference"):
                model(inputs)
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
        names = {e.get("name") for e in trace["traceEvents"]}
        values["trace_events"] = len(names) > 3 and "traced_inference" in names

    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        model(inputs)
    # (whether rows carry stacks depends on PyTorch's build: only the call is compared)
    prof.key_averages(group_by_stack_n=5).table(sort_by="self_cpu_time_total", row_limit=2)

    ready = []

    def trace_handler(p):
        ready.append(p.step_num)
        p.key_averages().table(sort_by="self_cpu_time_total", row_limit=3)

    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    targets = torch.randint(0, 4, (2,))
    losses = []

    def train_step(x, y):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    step_fn = torch.compile(train_step) if compile else train_step
    with profile(activities=[ProfilerActivity.CPU],
                 schedule=torch.profiler.schedule(wait=1, warmup=1, active=2, repeat=1),
                 on_trace_ready=trace_handler) as p:
        for idx in range(8):
            losses.append(step_fn(inputs, targets).item())
            p.step()
    values["ready_at"] = ",".join(map(str, ready))
    return {"losses": losses, "values": values, "initial_state": initial}
