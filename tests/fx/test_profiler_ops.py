"""torch.ops.profiler's range calls: a tracer that records a `record_function` block as two
graph nodes gives a GraphModule whose runs show the range in the profile, as in torch."""

import numpy as np
import pytest
import torch

import kiln


def _traced_with_ranges(lib):
    class Net(lib.nn.Module):
        def forward(self, x):
            with lib.profiler.record_function("block"):
                return lib.relu(x) * 2

    class RangeTracer(lib.fx.Tracer):
        def trace(self, root, concrete_args=None):
            rf = lib.autograd.profiler.record_function
            enter, leave = rf.__enter__, rf.__exit__
            tracer = self

            def traced_enter(ctx):
                ctx._handle = tracer.create_proxy(
                    "call_function", lib.ops.profiler._record_function_enter, (ctx.name,), {})
                return ctx._handle

            def traced_exit(ctx, *exc):
                lib.ops.profiler._record_function_exit(ctx._handle)

            rf.__enter__, rf.__exit__ = traced_enter, traced_exit
            try:
                return super().trace(root, concrete_args)
            finally:
                rf.__enter__, rf.__exit__ = enter, leave

    tracer = RangeTracer()
    net = Net()
    graph = tracer.trace(net)
    return lib.fx.GraphModule(tracer.root, graph)


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_range_nodes_run_as_a_profiled_range(lib):
    gm = _traced_with_ranges(lib)
    targets = [str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes
               if n.op == "call_function"]
    assert targets[0].endswith("_record_function_enter")
    assert targets[-1].endswith("_record_function_exit")
    x = lib.tensor([-1.0, 2.0])
    with lib.profiler.profile() as prof:
        y = gm(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 4.0])
    names = [e.key for e in prof.key_averages()]
    assert "block" in names


def test_exit_refuses_what_enter_did_not_return():
    with pytest.raises(TypeError, match="_record_function_exit"):
        kiln.ops.profiler._record_function_exit(kiln.zeros(1))
