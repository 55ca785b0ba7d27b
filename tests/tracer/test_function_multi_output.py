"""A custom autograd Function with several outputs is one autograd node, as in PyTorch: its
backward runs once per application, with every output's gradient (zeros or None for the ones
that got none), eagerly, under kiln.compile, compiled autograd, checkpointing and forward AD.
Each case runs the same program against torch and kiln and compares what backward received,
how often it ran, and the gradients."""

import warnings

import numpy as np
import pytest
import torch

import kiln
from kiln._dynamo import compiled_autograd
from kiln._dynamo.utils import counters


def _listed(grads) -> list:
    return [None if g is None else g.tolist() for g in grads]


def _clamped_split(lib, log):
    """(x * 2, x * 3) whose backward is not linear in the output gradients: one call with both
    gives clamp(2 ga + 3 gb), two calls (one per output) would give clamp(2 ga) + clamp(3 gb).
    Each call of backward appends the gradients it got to `log` (None: no log, as a compiled
    backward must have no Python effects)."""
    class Split(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, ga, gb):
            x, = ctx.saved_tensors
            if log is not None:
                log.append(_listed((ga, gb)))
            return (ga * 2 + gb * 3).clamp(-1, 1) * x.sign()
    return Split


def test_backward_runs_once_with_every_output_gradient():
    def run(lib):
        log = []
        x = lib.tensor([1.0, -2.0, 0.5], dtype=lib.float64, requires_grad=True)
        a, b = _clamped_split(lib, log).apply(x)
        (a.sum() + b.sum()).backward()
        return log, x.grad.tolist()
    log, grad = run(kiln)
    assert (log, grad) == run(torch)
    assert len(log) == 1 and grad == [1.0, -1.0, 1.0]


def test_outputs_reaching_the_loss_through_paths_of_different_depth():
    """The node waits for both outputs' gradients: b's path is twenty ops longer than a's."""
    def run(lib):
        log = []
        x = lib.tensor([0.1, -0.2, 0.05], dtype=lib.float64, requires_grad=True)
        a, b = _clamped_split(lib, log).apply(x)
        for _ in range(20):
            b = b * 1.0 + 0.0
        (a * 0.1).sum().backward(retain_graph=True)
        ((a * 0.1).sum() + (b.exp() * 0.05).sum()).backward()
        return log, x.grad.tolist()
    log, grad = run(kiln)
    assert len(log) == 2
    expected_log, expected_grad = run(torch)
    assert log == expected_log
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)


def test_one_output_unused_gets_zeros_and_side_effects_run_once():
    def run(lib):
        calls = []

        class Three(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2, x * 3, x * 4

            @staticmethod
            def backward(ctx, ga, gb, gc):
                calls.append(_listed((ga, gb, gc)))
                return ga * 2 + gb * 3 + gc * 4
        x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
        a, b, c = Three.apply(x)
        (a.sum() + (b * b).sum()).backward()        # c is not used
        return calls, x.grad.tolist()
    assert run(kiln) == run(torch)


@pytest.mark.parametrize("materialize", [True, False])
def test_what_backward_receives_as_torchs(materialize):
    """needs_input_grad, once_differentiable (grad mode off in backward), a non-differentiable
    integer output (zeros of its dtype, or None), a non-tensor output (None), an unused output
    (zeros, or None without materialized gradients)."""
    def run(lib):
        log = []

        class Split(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x, k, w):
                ctx.set_materialize_grads(materialize)
                ctx.save_for_backward(x, w)
                idx = (x > 0).long()
                ctx.mark_non_differentiable(idx)
                return x * 2, idx, "tag", x * w, x * k

            @staticmethod
            @lib.autograd.function.once_differentiable
            def backward(ctx, ga, gi, gs, gb, gc):
                x, w = ctx.saved_tensors
                log.append((ctx.needs_input_grad, lib.is_grad_enabled(),
                            _listed((ga, gi, gs, gb, gc))))
                gx = ga * 2 + gb * w
                return gx, None, gb * x if ctx.needs_input_grad[2] else None
        x = lib.tensor([1.0, -2.0, 0.5], dtype=lib.float64, requires_grad=True)
        w = lib.tensor([3.0, 4.0, 5.0], dtype=lib.float64)
        a, idx, tag, b, c = Split.apply(x, 5, w)
        log.append((tag, idx.tolist(), idx.requires_grad, c.grad_fn is not None))
        (a.sum() + 3 * b.sum()).backward()
        return log, x.grad.tolist()
    assert run(kiln) == run(torch)


def test_saved_tensors_are_freed_after_one_backward_and_kept_with_retain_graph():
    def run(lib):
        log, ctxs = [], []

        class Split(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                ctxs.append(ctx)
                return x * 2, x * 3

            @staticmethod
            def backward(ctx, ga, gb):
                x, = ctx.saved_tensors
                log.append("backward")
                return (ga * 2 + gb * 3) * x
        x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
        a, b = Split.apply(x)
        (a.sum() + b.sum()).backward(retain_graph=True)
        log.append(len(ctxs[0].saved_tensors))
        (a.sum() + b.sum()).backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            ctxs[0].saved_tensors
        return log, x.grad.tolist()
    assert run(kiln) == run(torch) == (["backward", 1, "backward"], [10.0, 20.0])


def test_mark_dirty_output_and_another_output():
    """An input written in place and returned (mark_dirty) beside a new output."""
    def run(lib):
        log = []

        class ScaleInPlace(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x, y):
                x.mul_(2)
                ctx.mark_dirty(x)
                return x, y * 3

            @staticmethod
            def backward(ctx, gx, gy):
                log.append(_listed((gx, gy)))
                return (gx * 2).clamp(-1, 1) + 0 * gy.sum(), (gx + gy * 3).clamp(-2, 2)
        x0 = lib.tensor([1.0, -2.0], dtype=lib.float64, requires_grad=True)
        y = lib.tensor([0.5, 0.25], dtype=lib.float64, requires_grad=True)
        x = x0 * 1.0
        a, b = ScaleInPlace.apply(x, y)
        log.append((a is x, type(a.grad_fn).__name__))
        (a.sum() + b.sum()).backward()
        return log, x0.grad.tolist(), y.grad.tolist(), a.tolist()
    assert run(kiln) == run(torch)


def test_node_and_tensor_hooks_see_every_output_gradient():
    """Tensor hooks on each output, then the node's pre-hooks (all outputs' gradients, None
    where one got none), backward once, then its post hooks; next_functions lists the
    inputs; a pre-hook's replacement reaches backward."""
    def run(lib):
        log = []
        x = lib.tensor([1.0, -2.0], dtype=lib.float64, requires_grad=True)
        a, b = _clamped_split(lib, log).apply(x * 0.25)
        node = a.grad_fn
        log.append((type(node).__name__, [type(n).__name__ for n, _ in node.next_functions]))
        a.register_hook(lambda g: log.append(("a", g.tolist())))
        b.register_hook(lambda g: log.append(("b", g.tolist())))
        node.register_prehook(lambda go: log.append(("pre", _listed(go))))
        b.grad_fn.register_prehook(lambda go: (go[0], go[1] * 10))
        node.register_hook(lambda gi, go: log.append(("post", _listed(gi), _listed(go))))
        (a.sum() + 0.5 * b.sum()).backward()
        return log, x.grad.tolist()
    assert run(kiln) == run(torch)


def test_double_backward_through_a_function_with_several_outputs():
    def run(lib):
        log = []

        class Square2(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * 2, x * 3

            @staticmethod
            def backward(ctx, ga, gb):
                x, = ctx.saved_tensors
                log.append("backward")
                return (ga * 2 + gb * 3) ** 2 * x
        x = lib.tensor([1.0, -2.0], dtype=lib.float64, requires_grad=True)
        a, b = Square2.apply(x)
        gx, = lib.autograd.grad((a * x).sum() + b.sum(), x, create_graph=True)
        ggx, = lib.autograd.grad(gx.sum(), x)
        return log, gx.tolist(), ggx.tolist()
    assert run(kiln) == run(torch)


def test_autograd_grad_with_inputs_and_allow_unused():
    def run(lib):
        log = []
        x = lib.tensor([0.2, -0.4], dtype=lib.float64, requires_grad=True)
        other = lib.tensor([1.0], dtype=lib.float64, requires_grad=True)
        a, b = _clamped_split(lib, log).apply(x)
        loss = a.sum() + (b * b).sum()
        gx, gother, gb = lib.autograd.grad(loss, (x, other, b), allow_unused=True,
                                           retain_graph=True)
        ga, = lib.autograd.grad(loss, a)       # ends at an output: backward does not run
        return log, gx.tolist(), gother, gb.tolist(), ga.tolist()
    assert run(kiln) == run(torch)


def test_anomaly_mode_names_the_function_once():
    def run(lib):
        log = []

        class NanSplit(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2, x * 3

            @staticmethod
            def backward(ctx, ga, gb):
                log.append(_listed((ga, gb)))
                return (ga * gb).log() - (ga * gb).log()   # nan where ga * gb <= 0
        x = lib.tensor([1.0, 2.0], dtype=lib.float64, requires_grad=True)
        a, b = NanSplit.apply(x)
        with pytest.warns(UserWarning), lib.autograd.set_detect_anomaly(True):
            with pytest.raises(RuntimeError, match="Function 'NanSplitBackward' returned nan"):
                (a.sum() - b.sum()).backward()
        return log
    assert run(kiln) == run(torch) == [[[1.0, 1.0], [-1.0, -1.0]]]


def test_forward_ad_with_a_jvp_and_derived_from_backward():
    """With a jvp staticmethod its tangents are torch's; without one kiln derives them from
    backward (PyTorch requires jvp), calling it once per tangent asked for, not per output."""
    def make(lib, log, with_jvp):
        class SinCos(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                ctx.save_for_forward(x)
                return x.sin(), x.cos()

            @staticmethod
            def backward(ctx, gs, gc):
                x, = ctx.saved_tensors
                log.append("backward")
                return gs * x.cos() - gc * x.sin()
        if with_jvp:
            def jvp(ctx, t):
                x, = ctx.saved_tensors
                log.append("jvp")
                return t * x.cos(), -t * x.sin()
            SinCos.jvp = staticmethod(jvp)
        return SinCos

    def run(lib, with_jvp):
        log = []
        x = lib.tensor([0.3, -1.2], dtype=lib.float64)
        t = lib.tensor([1.0, 2.0], dtype=lib.float64)
        with lib.autograd.forward_ad.dual_level():
            s, c = make(lib, log, with_jvp).apply(lib.autograd.forward_ad.make_dual(x, t))
            ts = lib.autograd.forward_ad.unpack_dual(s).tangent.tolist()
            tc = lib.autograd.forward_ad.unpack_dual(c).tangent.tolist()
        return log, ts, tc
    log, ts, tc = run(kiln, True)
    torch_log, torch_ts, torch_tc = run(torch, True)
    assert log == torch_log
    np.testing.assert_allclose(ts, torch_ts, rtol=1e-12)
    np.testing.assert_allclose(tc, torch_tc, rtol=1e-12)
    log, ts, tc = run(kiln, False)
    assert log == ["backward"]
    np.testing.assert_allclose(ts, torch_ts, rtol=1e-12)
    np.testing.assert_allclose(tc, torch_tc, rtol=1e-12)


def test_compiled_step_equals_eager_and_torch():
    """Under kiln.compile (no graph break) the Function is traced through and its backward
    called once on traced tensors while the backward graph is derived: the gradients of its
    first call and of the replays are torch's (two calls would clamp each part alone)."""
    split = _clamped_split(kiln, None)

    @kiln.compile(fullgraph=True)
    def step(x, w):
        a, b = split.apply(x * w)
        return (a * 0.3).sum() + (b.tanh() * 0.2).sum()

    rng = np.random.default_rng(0)
    for _ in range(3):
        x0, w0 = rng.standard_normal(4), rng.standard_normal(4)
        x, w = (kiln.tensor(v, requires_grad=True) for v in (x0, w0))
        step(x, w).backward()
        tx, tw = (torch.tensor(v, requires_grad=True) for v in (x0, w0))
        ta, tb = _clamped_split(torch, None).apply(tx * tw)
        ((ta * 0.3).sum() + (tb.tanh() * 0.2).sum()).backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-6, atol=1e-12)


def test_compiled_autograd_equals_torch():
    def run(lib, compiled):
        x = lib.tensor([0.1, -0.3, 0.2], dtype=lib.float64, requires_grad=True)
        a, b = _clamped_split(lib, None).apply(x)
        loss = (a * a).sum() + (b * 0.5).sum()
        if compiled:
            with warnings.catch_warnings():
                warnings.simplefilter("error")      # no fallback to the plain engine
                with compiled_autograd.enable(kiln.compile):
                    loss.backward()
        else:
            loss.backward()
        return x.grad.tolist()
    compiled_autograd.reset()
    counters.clear()
    try:
        grad = run(kiln, True)
        assert counters["compiled_autograd"]["captures"] == 1
    finally:
        compiled_autograd.reset()
    np.testing.assert_allclose(grad, run(torch, False), rtol=1e-12)


def test_checkpointed_segment_with_a_function_of_several_outputs():
    def run(lib):
        log = []
        split = _clamped_split(lib, log)

        def segment(x):
            a, b = split.apply(x)
            return (a * 0.2).sum() + (b.sin() * 0.1).sum()
        x = lib.tensor([0.4, -0.7, 0.1], dtype=lib.float64, requires_grad=True)
        lib.utils.checkpoint.checkpoint(segment, x, use_reentrant=False).backward()
        return len(log), x.grad.tolist()
    count, grad = run(kiln)
    torch_count, torch_grad = run(torch)
    assert count == torch_count == 1
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-12)


def test_compiled_function_returning_both_outputs_runs_its_backward_once():
    """A compiled function with several differentiable outputs gets one node: its backward
    program runs once with both outputs' gradients. Run once per output (the other's zero),
    a custom Function's clamp inside it would clamp each part alone."""
    split = _clamped_split(kiln, None)

    @kiln.compile(fullgraph=True)
    def f(x):
        return split.apply(x * 1.0)

    torch_x = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    ta, tb = _clamped_split(torch, None).apply(torch_x * 1.0)
    (ta.sum() + tb.sum() * 0.5).backward()
    for _ in range(3):          # the trace's call, then replays
        x = kiln.tensor([0.3, -0.2, 0.1], dtype=kiln.float64, requires_grad=True)
        a, b = f(x)
        (a.sum() + b.sum() * 0.5).backward()
        assert x.grad.tolist() == torch_x.grad.tolist()
    x = kiln.tensor([0.3, -0.2, 0.1], dtype=kiln.float64, requires_grad=True)
    a, b = f(x)
    assert type(a.grad_fn).__name__ == type(b.grad_fn).__name__ == "CompiledFunctionBackward"
    (b.sum() * 0.1).backward()               # one output's gradient only: zeros for the other
    torch_x.grad = None
    _, tb = _clamped_split(torch, None).apply(torch_x * 1.0)
    (tb.sum() * 0.1).backward()
    np.testing.assert_allclose(x.grad.numpy(), torch_x.grad.numpy(), rtol=1e-12)


def test_checkpoint_with_outputs_of_two_dtypes_recomputes_once():
    """kiln.utils.checkpoint's node for a segment's outputs of several dtypes is one node (it
    was one per dtype, each recomputing the segment): one recomputation, as torch's."""
    def run(lib):
        calls = []

        def segment(x):
            calls.append(1)
            return (x * x).float(), x.sin()
        x = lib.tensor([0.4, -0.7, 0.1], dtype=lib.float64, requires_grad=True)
        a, b = lib.utils.checkpoint.checkpoint(segment, x, use_reentrant=False)
        (a.double().sum() + b.sum()).backward()
        return len(calls), a.dtype == lib.float32, x.grad.tolist()
    count, is_float, grad = run(kiln)
    torch_count, torch_is_float, torch_grad = run(torch)
    assert (count, is_float) == (torch_count, torch_is_float) == (2, True)
    np.testing.assert_allclose(grad, torch_grad, rtol=1e-6)
