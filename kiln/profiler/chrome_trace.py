"""Chrome trace files of a finished trace (chrome://tracing, Perfetto, TensorBoard's viewer).

Each event is a complete ("ph": "X") event with its start ("ts") and duration ("dur") in
microseconds from the start of the trace; ranges on one thread nest in time, which is how the
viewers draw children under their parents.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from kiln.profiler.events import EventList


def chrome_trace(events: EventList) -> dict:
    """The Chrome trace JSON object of `events`."""
    pid = os.getpid()
    trace = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
              "args": {"name": "kiln"}}]
    for e in events:
        entry = {"ph": "X", "cat": e.category, "name": e.name, "pid": pid, "tid": e.thread,
                 "ts": round(e.start_us, 3), "dur": round(e.cpu_time_total, 3)}
        if e.input_shapes:
            entry["args"] = {"Input Dims": e.input_shapes}
        trace.append(entry)
    return {"traceEvents": trace, "displayTimeUnit": "ms",
            "otherData": {"profiler": "kiln.profiler: CPU-side times; device kernel times "
                                      "are not measured"}}


def write_chrome_trace(events: EventList, path: str) -> None:
    """Write `events` to `path` as Chrome trace JSON (gzip-compressed if it ends in .gz)."""
    text = json.dumps(chrome_trace(events))
    if str(path).endswith(".gz"):
        import gzip
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def tensorboard_trace_handler(dir_name: str, worker_name: str | None = None,
                              use_gzip: bool = False) -> Callable:
    """An `on_trace_ready` handler that writes each finished trace into `dir_name` as
    `<worker_name>.<milliseconds>.pt.trace.json` (`.gz` with `use_gzip`), the file names
    TensorBoard's profiler plugin reads. `worker_name` defaults to `<host>_<pid>`."""
    def handler(prof) -> None:
        import socket
        os.makedirs(dir_name, exist_ok=True)
        worker = worker_name or f"{socket.gethostname()}_{os.getpid()}"
        stamp, suffix = time.time_ns() // 1_000_000, ".gz" if use_gzip else ""
        path = os.path.join(dir_name, f"{worker}.{stamp}.pt.trace.json{suffix}")
        while os.path.exists(path):     # two traces in one millisecond: keep both
            stamp += 1
            path = os.path.join(dir_name, f"{worker}.{stamp}.pt.trace.json{suffix}")
        prof.export_chrome_trace(path)
    return handler
