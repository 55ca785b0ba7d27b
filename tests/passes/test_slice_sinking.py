"""sink_slices: an elementwise result read only in disjoint slices is computed slice by slice
(an LSTM step's gate pre-activations), so the step fuses into one kernel; same results."""

import kiln
import kiln.nn.functional as F
from kiln.passes.fusion import STRIDED_VIEWS, FusedKernel, fuse
from kiln.passes.slice_sinking import sink_slices
from tests.passes.helpers import assert_same_results, traced_optimized


def _lstm_cell(x, h, c, w, b):
    i, f, g, o = kiln.chunk(x + F.linear(h, w, b), 4, -1)
    c = kiln.sigmoid(f) * c + kiln.sigmoid(i) * kiln.tanh(g)
    return kiln.sigmoid(o) * kiln.tanh(c), c


def _computing_kernels(graph) -> int:
    """Fused kernels that compute something (a transposed weight alone is a view)."""
    return sum(1 for s in fuse(graph).steps if isinstance(s, FusedKernel) and
               any(n.op not in STRIDED_VIEWS for n in s.nodes))


def test_an_lstm_step_fuses_into_one_kernel_beside_its_matmul():
    args = (kiln.randn(5, 32), kiln.randn(5, 8), kiln.randn(5, 8), kiln.randn(32, 8),
            kiln.randn(32))
    graph, inputs = traced_optimized(_lstm_cell, *args)
    assert _computing_kernels(graph) == 2      # the (5, 32) sum, then the (5, 8) gate math
    after = sink_slices(graph)
    after.verify()
    assert not any(n.op == "add" and n.out.shape == (5, 32) for n in after.nodes)
    assert _computing_kernels(after) == 1
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_broadcast_inputs_are_sliced_only_where_they_vary():
    x, b = kiln.randn(3, 4, 6), kiln.randn(4, 1)
    graph, inputs = traced_optimized(lambda x, b: ((x * b)[:, :, :2].exp(), (x * b)[:, :, 3:] + 1),
                            x, b)
    after = sink_slices(graph)
    after.verify()
    muls = [n for n in after.nodes if n.op == "mul"]
    assert [m.out.shape for m in muls] == [(3, 4, 2), (3, 4, 3)]
    assert all(m.inputs[1] is graph.inputs[1] for m in muls)      # b itself, not a slice
    assert_same_results(graph, after, inputs, rtol=1e-6)


def test_overlapping_slices_or_other_readers_keep_the_whole_result():
    x = kiln.randn(4, 6)
    # overlapping: computing each slice would compute columns 2..3 twice
    graph, _ = traced_optimized(lambda x: (x.exp()[:, :4], x.exp()[:, 2:]), x)
    assert sink_slices(graph) is graph
    # read whole elsewhere too
    graph, _ = traced_optimized(lambda x: (x.exp()[:, :3], x.exp().sum()), x)
    assert sink_slices(graph) is graph



def test_slices_pass_through_a_reshape_of_unit_axes():
    # an RNN's step x[t] + b is a (1, batch, 4h) sum reshaped to (batch, 4h) before `chunk`:
    # the slices move above the reshape, then take the sum with them
    x, b = kiln.randn(3, 5, 8), kiln.randn(8)
    graph, inputs = traced_optimized(
        lambda x, b: [c.sigmoid() for c in kiln.chunk((x[1:2] + b).reshape(5, 8), 2, -1)], x, b)
    after = sink_slices(graph)
    after.verify()
    assert sorted(n.out.shape for n in after.nodes if n.op == "add") == [(1, 5, 4), (1, 5, 4)]
    assert not any(n.op == "reshape" and n.inputs[0].shape == (1, 5, 8) for n in after.nodes)
    assert_same_results(graph, after, inputs, rtol=1e-6)
    # a reshape adding a unit axis, the same way round
    graph, inputs = traced_optimized(lambda x: ((x + 1).reshape(1, 3, 5, 8)[:, :, :2].exp(),
                                                (x + 1).reshape(1, 3, 5, 8)[:, :, 3:].exp()), x)
    after = sink_slices(graph)
    after.verify()
    assert sorted(n.out.shape for n in after.nodes if n.op == "add") == [(3, 2, 8), (3, 2, 8)]
    assert_same_results(graph, after, inputs, rtol=1e-6)
