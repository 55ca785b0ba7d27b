"""What kiln.compile has compiled, counted as torch._dynamo.utils.counters counts it.

`counters` is a `defaultdict(Counter)`: `counters["stats"]["unique_graphs"]` grows by one per
graph compiled (a traced entry of a compiled function, a graph handed to a backend callable,
a backward compiled by compiled autograd) and `counters["stats"]["calls_captured"]` by the
operations in it; `counters["compiled_autograd"]["captures"]` by one per backward structure
compiled autograd captures. kiln does not split a function at a graph break (it runs such a
function eagerly), so a function with a break adds no graph where TorchDynamo adds one per
piece.
"""

from __future__ import annotations

import collections

counters: collections.defaultdict = collections.defaultdict(collections.Counter)


def count_graph(num_ops: int) -> None:
    """One more graph compiled, of `num_ops` operations."""
    counters["stats"]["unique_graphs"] += 1
    counters["stats"]["calls_captured"] += num_ops
