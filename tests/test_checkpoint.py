"""kiln.utils.checkpoint against torch.utils.checkpoint: gradients of inputs and parameters
equal PyTorch's and a non-checkpointed kiln run's; intermediates are not kept; the segment runs
again in backward; dropout recomputes its mask; a compiled step equals eager."""

from __future__ import annotations

import functools
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.utils.checkpoint as tcp

import kiln
import kiln.utils
import kiln.utils.checkpoint as kcp
from tests.parity import assert_close, random_array, to_kiln, to_torch

TOL = dict(atol=1e-5, rtol=1e-5)


def mlp(lib, sizes=(4, 8, 8, 3), dropout=None, seed=0):
    """An MLP with the same weights in either library."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(lib.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(lib.nn.Tanh())
            if dropout is not None:
                layers.append(lib.nn.Dropout(dropout))
    model = lib.nn.Sequential(*layers)
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(random_array(tuple(p.shape), np.float32, -0.7, 0.7, rng)))
    return model


def grads(model) -> list:
    return [p.grad for p in model.parameters()]


def assert_grads_match(kiln_tensors, torch_tensors, what="grad"):
    assert len(kiln_tensors) == len(torch_tensors)
    for i, (k, t) in enumerate(zip(kiln_tensors, torch_tensors)):
        if t is None:
            assert k is None, f"{what} {i}: torch has None, kiln {k}"
            continue
        assert k is not None, f"{what} {i}: kiln has None"
        assert_close(k, t, what=f"{what} {i}", **TOL)


X = random_array((5, 4), np.float32, rng=np.random.default_rng(1))
W = random_array((5, 3), np.float32, rng=np.random.default_rng(2))   # the upstream gradient


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_mlp_segment_gradients_match_torch_and_plain_kiln(use_reentrant):
    tm, km, km_plain = mlp(torch), mlp(kiln), mlp(kiln)
    tx, kx, kx_plain = to_torch(X, True), to_kiln(X, True), to_kiln(X, True)
    ty = tcp.checkpoint(tm, tx, use_reentrant=use_reentrant)
    ky = kcp.checkpoint(km, kx, use_reentrant=use_reentrant)
    assert_close(ky, ty, what="output", **TOL)
    (ty * to_torch(W)).sum().backward()
    (ky * to_kiln(W)).sum().backward()
    (km_plain(kx_plain) * to_kiln(W)).sum().backward()
    assert_grads_match([kx.grad] + grads(km), [tx.grad] + grads(tm))
    for a, b in zip([kx.grad] + grads(km), [kx_plain.grad] + grads(km_plain)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_autograd_grad_and_backward_inputs_through_a_checkpoint():
    tm, km = mlp(torch), mlp(kiln)
    tx, kx = to_torch(X, True), to_kiln(X, True)
    t_out = (tcp.checkpoint(tm, tx, use_reentrant=False) * to_torch(W)).sum()
    k_out = (kcp.checkpoint(km, kx, use_reentrant=False) * to_kiln(W)).sum()
    t_g = torch.autograd.grad(t_out, [tx, tm[0].weight], retain_graph=True)
    k_g = kiln.autograd.grad(k_out, [kx, km[0].weight], retain_graph=True)
    assert_grads_match(list(k_g), list(t_g))
    assert km[0].weight.grad is None                  # grad() writes no .grad
    k_out.backward(inputs=[km[2].weight])
    t_out.backward(inputs=[tm[2].weight])
    assert_grads_match(grads(km), grads(tm))


def test_dropout_recomputes_the_same_mask():
    def run(checkpointed):
        model = mlp(kiln, dropout=0.5)
        x = to_kiln(X, True)
        kiln.manual_seed(123)
        y = kcp.checkpoint(model, x, use_reentrant=False) if checkpointed else model(x)
        (y * to_kiln(W)).sum().backward()
        after = kiln.rand(3)              # the random stream after backward goes on unchanged
        model.eval()
        assert not np.allclose(model(x).detach().numpy(), y.detach().numpy())  # dropout acted
        return y, [x.grad] + grads(model), after
    y_c, g_c, after_c = run(True)
    y_p, g_p, after_p = run(False)
    np.testing.assert_array_equal(y_c.detach().numpy(), y_p.detach().numpy())
    for a, b in zip(g_c, g_p):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(after_c.numpy(), after_p.numpy())


def test_without_preserved_rng_state_the_recomputed_mask_differs():
    model = mlp(kiln, sizes=(4, 64, 3), dropout=0.5)
    x = to_kiln(X, True)
    kiln.manual_seed(5)
    y = kcp.checkpoint(model, x, use_reentrant=False, preserve_rng_state=False)
    (y * to_kiln(W)).sum().backward()
    got = [x.grad] + grads(model)
    plain, xp = mlp(kiln, sizes=(4, 64, 3), dropout=0.5), to_kiln(X, True)
    kiln.manual_seed(5)
    (plain(xp) * to_kiln(W)).sum().backward()
    assert not np.allclose(got[0].numpy(), xp.grad.numpy())


@pytest.mark.parametrize("segments", [2, 3])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpoint_sequential_matches_torch(segments, use_reentrant):
    sizes = (4, 8, 8, 8, 3)
    tm, km = mlp(torch, sizes), mlp(kiln, sizes)
    tx, kx = to_torch(X, True), to_kiln(X, True)
    ty = tcp.checkpoint_sequential(tm, segments, tx, use_reentrant=use_reentrant)
    ky = kcp.checkpoint_sequential(km, segments, kx, use_reentrant=use_reentrant)
    assert_close(ky, ty, what="output", **TOL)
    (ty * to_torch(W)).sum().backward()
    (ky * to_kiln(W)).sum().backward()
    assert_grads_match([kx.grad] + grads(km), [tx.grad] + grads(tm))


def test_checkpoint_sequential_segments_each_run_twice():
    km = mlp(kiln, (4, 8, 8, 8, 3))
    calls = {i: 0 for i in range(len(km))}
    for i, layer in enumerate(km):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    y = kcp.checkpoint_sequential(km, 3, to_kiln(X, True), use_reentrant=False)
    assert all(n == 1 for n in calls.values())
    y.sum().backward()
    # 7 layers in 3 segments of 2: the first two segments run again, the last does not
    assert [calls[i] for i in range(len(km))] == [2, 2, 2, 2, 1, 1, 1]


def segment_with_tuple_output(lib, model):
    def f(x, scale, bias):
        h = model(x)
        return h * scale, lib.tanh(h).sum(1) + bias, "label", h.argmax(1)
    return f


def test_tuple_outputs_non_tensor_arg_and_input_without_grad():
    tm, km = mlp(torch), mlp(kiln)
    tx, kx = to_torch(X, True), to_kiln(X, True)
    tb, kb = to_torch(np.ones(5, np.float32)), to_kiln(np.ones(5, np.float32))   # no grad
    t_out = tcp.checkpoint(segment_with_tuple_output(torch, tm), tx, 2.5, tb,
                           use_reentrant=False)
    k_out = kcp.checkpoint(segment_with_tuple_output(kiln, km), kx, 2.5, kb,
                           use_reentrant=False)
    assert k_out[2] == "label"
    assert not k_out[3].requires_grad and k_out[3].dtype is kiln.int64
    np.testing.assert_array_equal(k_out[3].numpy(), t_out[3].numpy())
    for k, t in zip(k_out[:2], t_out[:2]):
        assert_close(k, t, **TOL)
    w2 = np.linspace(-1, 1, 5).astype(np.float32)
    ((t_out[0] * to_torch(W)).sum() + (t_out[1] * to_torch(w2)).sum()).backward()
    ((k_out[0] * to_kiln(W)).sum() + (k_out[1] * to_kiln(w2)).sum()).backward()
    assert_grads_match([kx.grad] + grads(km), [tx.grad] + grads(tm))
    assert kb.grad is None


def test_only_one_of_two_outputs_used():
    tm, km = mlp(torch), mlp(kiln)
    tx, kx = to_torch(X, True), to_kiln(X, True)
    t_out = tcp.checkpoint(segment_with_tuple_output(torch, tm), tx, 2.5, 0.0,
                           use_reentrant=False)
    k_out = kcp.checkpoint(segment_with_tuple_output(kiln, km), kx, 2.5, 0.0,
                           use_reentrant=False)
    t_out[1].sum().backward()
    k_out[1].sum().backward()
    assert_grads_match([kx.grad] + grads(km), [tx.grad] + grads(tm))


def test_namedtuple_and_dict_outputs():
    from collections import namedtuple
    Pair = namedtuple("Pair", "a b")

    def run(lib, cp):
        model = mlp(lib)
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        out = cp(lambda t: Pair(model(t), {"s": t.sum(1)}), x, use_reentrant=False)
        assert type(out).__name__ == "Pair" and set(out.b) == {"s"}
        ((out.a * out.a).sum() + (out.b["s"] ** 2).sum()).backward()
        return [x.grad] + grads(model)
    assert_grads_match(run(kiln, kcp.checkpoint), run(torch, tcp.checkpoint))


def test_outputs_of_two_dtypes():
    def f(lib):
        return lambda x, y: (x.sin() * 2, (y * y).sum())
    xa, ya = X, random_array((3,), np.float64)
    tx, ty, kx, ky = to_torch(xa, True), to_torch(ya, True), to_kiln(xa, True), to_kiln(ya, True)
    t_out = tcp.checkpoint(f(torch), tx, ty, use_reentrant=False)
    k_out = kcp.checkpoint(f(kiln), kx, ky, use_reentrant=False)
    assert k_out[1].dtype is kiln.float64
    (t_out[0].sum() + t_out[1]).backward()
    (k_out[0].sum() + k_out[1]).backward()
    assert_grads_match([kx.grad, ky.grad], [tx.grad, ty.grad])


def test_parameters_get_gradients_when_no_input_requires_grad():
    tm, km = mlp(torch), mlp(kiln)
    tx, kx = to_torch(X), to_kiln(X)
    ty = tcp.checkpoint(tm, tx, use_reentrant=False)
    ky = kcp.checkpoint(km, kx, use_reentrant=False)
    assert ky.requires_grad
    (ty * to_torch(W)).sum().backward()
    (ky * to_kiln(W)).sum().backward()
    assert_grads_match(grads(km), grads(tm))
    assert kx.grad is None


@pytest.mark.parametrize("compiled", [False, True])
def test_reentrant_with_no_input_requiring_grad_warns_and_gives_no_gradients(compiled):
    # PyTorch's reentrant variant records nothing then: a frozen first block's parameters
    # stay without gradients, the later ones get theirs
    def run(lib, cp):
        first, head = mlp(lib, seed=0), mlp(lib, sizes=(3, 2), seed=1)
        x = to_torch(X) if lib is torch else to_kiln(X)

        def loss_fn(x):
            return head(cp(first, x, use_reentrant=True)).pow(2).sum()
        if compiled and lib is kiln:
            loss_fn = kiln.compile(loss_fn)
        with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
            loss = loss_fn(x)
        loss.backward()
        return loss.item(), grads(first), grads(head)
    k_loss, k_first, k_head = run(kiln, kcp.checkpoint)
    t_loss, t_first, t_head = run(torch, tcp.checkpoint)
    assert k_loss == pytest.approx(t_loss, rel=1e-6)
    assert all(g is None for g in t_first) and all(g is None for g in k_first)
    assert_grads_match(k_head, t_head)


def test_recomputation_runs_under_the_forwards_cpu_autocast():
    # chained segments under CPU autocast: each takes the previous one's bfloat16 output, so
    # its recomputation must cast the float32 weights again, as the forward did
    def run(lib, cp):
        blocks = [mlp(lib, sizes=(4, 8, 4), seed=s) for s in range(3)]
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        with lib.autocast("cpu", dtype=lib.bfloat16):
            h = x
            for block in blocks:
                h = cp(block, h, use_reentrant=False)
            loss = h.float().pow(2).sum()
        loss.backward()
        return h.dtype, [x.grad] + [g for b in blocks for g in grads(b)]
    k_dtype, k_grads = run(kiln, kcp.checkpoint)
    t_dtype, t_grads = run(torch, tcp.checkpoint)
    assert str(k_dtype).split(".")[-1] == str(t_dtype).split(".")[-1] == "bfloat16"
    for i, (k, t) in enumerate(zip(k_grads, t_grads)):
        assert_close(k, t, what=f"grad {i}", atol=2e-2, rtol=2e-2)


def test_keyword_arguments_and_nested_tensor_arguments():
    tm, km = mlp(torch), mlp(kiln)

    def f(lib, model):
        def run(pair, *, shift):
            return model(pair[0] + pair[1]) + shift
        return run
    tx, tz = to_torch(X, True), to_torch(X * 2, True)
    kx, kz = to_kiln(X, True), to_kiln(X * 2, True)
    ts, ks = to_torch(W, True), to_kiln(W, True)
    ty = tcp.checkpoint(f(torch, tm), [tx, tz], shift=ts, use_reentrant=False)
    ky = kcp.checkpoint(f(kiln, km), [kx, kz], shift=ks, use_reentrant=False)
    (ty * ty).sum().backward()
    (ky * ky).sum().backward()
    assert_grads_match([kx.grad, kz.grad, ks.grad] + grads(km),
                       [tx.grad, tz.grad, ts.grad] + grads(tm))


def test_intermediates_are_not_kept_and_the_segment_runs_again_in_backward():
    model = mlp(kiln)
    kept, calls = [], [0]

    def segment(x):
        calls[0] += 1
        h = model[0](x)
        kept.append(weakref.ref(h))
        return model[2](model[1](h))
    x = to_kiln(X, True)
    y = kcp.checkpoint(segment, x, use_reentrant=False)
    gc.collect()
    assert calls[0] == 1
    assert kept[0]() is None                       # the first layer's output is gone
    # the graph holds one node, whose inputs are the argument and the four parameters
    assert y.grad_fn.name() == "CheckpointFunctionBackward"
    assert [type(f).__name__ for f, _ in y.grad_fn.next_functions] == ["AccumulateGrad"] * 5
    assert y.grad_fn.next_functions[0][0].variable is x
    y.sum().backward()
    assert calls[0] == 2
    gc.collect()
    assert kept[1]() is None                       # the recomputed graph is freed too

    # without checkpoint the same intermediate stays alive as long as the output does
    kept.clear()
    y_plain = segment(to_kiln(X, True))
    gc.collect()
    assert kept[0]() is not None
    del y_plain


def test_retain_graph_backward_twice_recomputes_twice():
    km, tm = mlp(kiln), mlp(torch)
    kx, tx = to_kiln(X, True), to_torch(X, True)
    ky = kcp.checkpoint(km, kx, use_reentrant=False)
    ty = tcp.checkpoint(tm, tx, use_reentrant=False)
    ky.sum().backward(retain_graph=True)
    ky.sum().backward()
    ty.sum().backward(retain_graph=True)
    ty.sum().backward()
    assert_grads_match([kx.grad] + grads(km), [tx.grad] + grads(tm))


def test_tensor_with_history_read_from_a_closure_gets_its_gradient():
    # a tensor with history that the function closes over (not an argument): its own graph
    # must still be intact for the caller's backward
    def run(lib, cp):
        model = mlp(lib)
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        h = x * 3.0                                  # a non-leaf, read from the closure
        y = cp(lambda a: model(a + h), x, use_reentrant=False)
        ((y * y).sum() + h.sum()).backward()
        return [x.grad] + grads(model)
    assert_grads_match(run(kiln, kcp.checkpoint), run(torch, tcp.checkpoint))


def test_in_place_op_on_the_outputs_as_torch():
    def run(lib, cp):
        model = mlp(lib)
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        y = cp(model, x, use_reentrant=False)
        y.relu_()
        a, b = cp(lambda t: (t * 2, t - 1), x, use_reentrant=False)
        b.mul_(3)
        ((y * y).sum() + (a * b).sum()).backward()
        return [x.grad] + grads(model)
    assert_grads_match(run(kiln, kcp.checkpoint), run(torch, tcp.checkpoint))


def test_under_no_grad_it_is_a_plain_call():
    km = mlp(kiln)
    with kiln.no_grad():
        y = kcp.checkpoint(km, to_kiln(X, True), use_reentrant=False)
    assert not y.requires_grad and y.grad_fn is None


def test_reentrant_argument_checks_as_torch():
    km = mlp(kiln)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: scale"):
        kcp.checkpoint(lambda x, scale: km(x) * scale, to_kiln(X), scale=2.0,
                       use_reentrant=True)
    with pytest.raises(ValueError, match="only supported when use_reentrant=False"):
        kcp.checkpoint(km, to_kiln(X), use_reentrant=True, debug=True)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: foo"):
        kcp.checkpoint_sequential(km, 2, to_kiln(X), use_reentrant=False, foo=1)
    with pytest.raises(ValueError, match="determinism_check"):
        kcp.checkpoint(km, to_kiln(X), use_reentrant=False, determinism_check="strict")


def test_use_reentrant_none_does_not_warn(recwarn):
    kcp.checkpoint(mlp(kiln), to_kiln(X, True), use_reentrant=None).sum().backward()
    kcp.checkpoint_sequential(mlp(kiln), 2, to_kiln(X, True)).sum().backward()
    assert not [w for w in recwarn if "checkpoint" in str(w.message)]


def test_determinism_check_reports_a_changed_recomputation():
    state = {"n": 3}
    x = to_kiln(X, True)
    y = kcp.checkpoint(lambda a: a[:, :state["n"]] * 2, x, use_reentrant=False)
    state["n"] = 2
    with pytest.raises(kcp.CheckpointError, match="different shapes"):
        y.sum().backward()


def test_context_fn_is_entered_around_both_runs():
    import contextlib
    log = []

    @contextlib.contextmanager
    def note(what):
        log.append(what)
        yield

    def context_fn():
        return note("forward"), note("recompute")
    y = kcp.checkpoint(mlp(kiln), to_kiln(X, True), use_reentrant=False, context_fn=context_fn)
    y.sum().backward()
    assert log == ["forward", "recompute"]


@pytest.mark.parametrize("leaf", [True, False])
def test_double_backward_through_a_checkpoint(leaf):
    def run(lib, cp):
        model = mlp(lib)
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        a = x if leaf else x * 1.5
        y = model(a) if cp is None else cp(model, a, use_reentrant=False)
        (g,) = lib.autograd.grad((y ** 2).sum(), x, create_graph=True)
        (g * g).sum().backward()
        return [x.grad] + grads(model)
    assert_grads_match(run(kiln, kcp.checkpoint), run(torch, None))
    assert_grads_match(run(kiln, kcp.checkpoint), run(torch, tcp.checkpoint))


def test_reachable_as_kiln_utils_checkpoint():
    assert kiln.utils.checkpoint.checkpoint is kcp.checkpoint
    assert callable(kiln.utils.checkpoint.checkpoint_sequential)


# ----------------------------------------------------------------------------- compile

def train_steps(compiled: bool, steps: int = 3):
    kiln.manual_seed(0)
    model = mlp(kiln, sizes=(4, 16, 16, 3), dropout=0.25)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    x, target = to_kiln(X), to_kiln(W)

    def step(x, target):
        h = kcp.checkpoint(model[:3], x, use_reentrant=False)
        y = kcp.checkpoint(model[3:], h, use_reentrant=False)
        loss = ((y - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    fn = kiln.compile(step) if compiled else step
    losses = [float(fn(x, target)) for _ in range(steps)]
    return losses, [p.detach().numpy().copy() for p in model.parameters()], fn


def test_compiled_training_step_with_checkpoint_equals_eager():
    eager_losses, eager_params, _ = train_steps(False)
    losses, params, fn = train_steps(True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(params, eager_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # traced through as a plain call: no graph break, the step replays compiled
    entries = list(fn.entries.values())
    assert entries and all(e.eager_reason is None for e in entries)
    assert any(e.calls > 0 for e in entries)


def test_traced_checkpoint_is_a_plain_call_in_the_graph():
    model = mlp(kiln)
    x = to_kiln(X)

    def f(x):
        return kcp.checkpoint(model, x, use_reentrant=False).sum()
    traced = kiln.compiler.trace(f, x)
    assert not traced.breaks
    assert len(traced.graphs) == 1


def test_selective_checkpoint_context_fn_gives_the_same_gradients():
    def policy(ctx, op, *args, **kwargs):
        return kcp.CheckpointPolicy.PREFER_RECOMPUTE

    def run(lib, cp):
        model = mlp(lib)
        x = to_torch(X, True) if lib is torch else to_kiln(X, True)
        context_fn = functools.partial(cp.create_selective_checkpoint_contexts, policy)
        cp.checkpoint(model, x, use_reentrant=False, context_fn=context_fn).sum().backward()
        return [x.grad] + grads(model)
    assert_grads_match(run(kiln, kcp), run(torch, tcp))


def test_detach_variable_and_check_backward_validity():
    x = to_kiln(X, True)
    d = kcp.detach_variable((x, 3))
    assert d[0] is not x and d[0].requires_grad and d[0].grad_fn is None and d[1] == 3
    with pytest.raises(RuntimeError, match="Only tuple of tensors"):
        kcp.detach_variable([x])
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        kcp.check_backward_validity((to_kiln(X),))
