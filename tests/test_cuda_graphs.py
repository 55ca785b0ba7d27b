"""CUDA graphs for eager code (kiln.cuda.CUDAGraph, graph, make_graphed_callables), written the
way PyTorch's CUDA graphs documentation has users write them: warm up on a side stream, capture
a whole training step, copy each batch into the static inputs and replay. Replays must train
exactly as eager steps do, which torch's eager CPU training is the reference for.

With a GPU these run on it; in CI they run on tests/fake_cuda.py, whose capture records the
work and replays it, leaves arrays made during the capture as garbage until a replay, and
refuses what CUDA refuses while capturing (host reads, host-to-device copies, synchronizing,
the legacy stream). It cannot see memory a real pool would hand out twice: the private pool's
job, which only a GPU run checks."""

import numpy as np
import pytest
import torch

import kiln

N, D_IN, H, D_OUT = 16, 8, 32, 4


def _data(steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((steps, N, D_IN)).astype(np.float32)
    ys = rng.integers(0, D_OUT, (steps, N))
    return xs, ys


def _models():
    """The same MLP in kiln (on cuda) and torch (CPU)."""
    kiln.manual_seed(0)
    model = kiln.nn.Sequential(kiln.nn.Linear(D_IN, H), kiln.nn.ReLU(),
                               kiln.nn.Linear(H, D_OUT))
    ref = torch.nn.Sequential(torch.nn.Linear(D_IN, H), torch.nn.ReLU(),
                              torch.nn.Linear(H, D_OUT))
    ref.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                         for k, v in model.state_dict().items()})
    return model.cuda(), ref


OPTIMIZERS = {
    "sgd-momentum": lambda lib, params: lib.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda lib, params: lib.optim.Adam(params, lr=0.01, capturable=lib is kiln),
    "adamw-amsgrad": lambda lib, params: lib.optim.AdamW(params, lr=0.01, amsgrad=True,
                                                       capturable=lib is kiln),
}


def _torch_losses(ref, make_opt, xs, ys) -> list:
    opt = make_opt(torch, ref.parameters())
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_whole_training_step_captured_and_replayed_trains_as_eager(name):
    model, ref = _models()
    loss_fn = kiln.nn.CrossEntropyLoss()
    optimizer = OPTIMIZERS[name](kiln, model.parameters())
    xs, ys = _data(10)
    warmup, replays = 3, 7
    static_input = kiln.tensor(xs[0], device="cuda")
    static_target = kiln.tensor(ys[0], device="cuda")

    # warm-up on a side stream, as PyTorch's documentation does it
    s = kiln.cuda.Stream()
    s.wait_stream(kiln.cuda.current_stream())
    losses = []
    with kiln.cuda.stream(s):
        for i in range(warmup):
            static_input.copy_(kiln.tensor(xs[i], device="cuda"))
            static_target.copy_(kiln.tensor(ys[i], device="cuda"))
            optimizer.zero_grad(set_to_none=True)
            y_pred = model(static_input)
            loss = loss_fn(y_pred, static_target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    kiln.cuda.current_stream().wait_stream(s)

    g = kiln.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with kiln.cuda.graph(g):
        static_y_pred = model(static_input)
        static_loss = loss_fn(static_y_pred, static_target)
        static_loss.backward()
        optimizer.step()

    batches = [(kiln.tensor(x, device="cuda"), kiln.tensor(y, device="cuda"))
               for x, y in zip(xs[warmup:], ys[warmup:])]
    for data, target in batches:
        static_input.copy_(data)
        static_target.copy_(target)
        g.replay()
        losses.append(static_loss.item())
    assert len(losses) == warmup + replays

    expected = _torch_losses(ref, OPTIMIZERS[name], xs, ys)
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    for (key, p), q in zip(model.named_parameters(), ref.parameters()):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=key)
        # the gradients the last replay left are the last step's, as eager leaves them
        np.testing.assert_allclose(p.grad.cpu().numpy(), q.grad.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=key)


@pytest.mark.gpu
def test_capturing_a_step_that_reads_its_step_count_on_the_host_is_refused():
    model, _ = _models()
    optimizer = kiln.optim.Adam(model.parameters(), lr=0.01)       # capturable=lib is kiln
    x = kiln.ones(N, D_IN, device="cuda")
    model(x).sum().backward()
    optimizer.step()
    g = kiln.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="Adam but param_groups' capturable is False"):
        with kiln.cuda.graph(g):
            model(x).sum().backward()
            optimizer.step()
    with pytest.raises(RuntimeError, match="nothing has been captured"):
        g.replay()
    assert not kiln.cuda.is_current_stream_capturing()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()                            # eager steps go on as before
    assert any(not kiln.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.gpu
@pytest.mark.parametrize("work", ["item", "print", "randn", "from-python"])
def test_host_work_inside_a_capture_fails_with_what_cannot_be_captured(work, capsys):
    x = kiln.arange(6.0, device="cuda")
    run = {"item": lambda: (x * 2).sum().item(),
           "print": lambda: print(x + 1),
           "randn": lambda: kiln.randn(3, device="cuda") + x[:3],
           "from-python": lambda: x + kiln.tensor([1.0] * 6, device="cuda")}[work]
    g = kiln.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph capture failed.*must not read device "
                       "memory on the host"):
        with kiln.cuda.graph(g):
            run()
    assert not kiln.cuda.is_current_stream_capturing()
    assert (x * 2).sum().item() == 30.0          # eager work goes on as before


@pytest.mark.gpu
def test_an_index_out_of_range_in_any_replay_is_reported_at_the_next_read():
    table = kiln.arange(20.0, device="cuda").reshape(10, 2)
    static_idx = kiln.tensor([1, 2, 3], device="cuda")
    g = kiln.cuda.CUDAGraph()
    with kiln.cuda.graph(g):
        static_out = kiln.nn.functional.embedding(static_idx, table).sum(1)
    good = kiln.tensor([0, 9, 4], device="cuda")
    static_idx.copy_(good)
    g.replay()
    np.testing.assert_array_equal(static_out.cpu().numpy(), [1.0, 37.0, 17.0])
    static_idx.copy_(kiln.tensor([0, 12, 4], device="cuda"))     # 12: out of range
    g.replay()
    static_idx.copy_(good)
    g.replay()                          # a good replay after the bad one hides nothing
    with pytest.raises(IndexError, match="embedding.*12"):
        static_out.cpu()
    static_idx.copy_(good)
    g.replay()
    assert static_out.cpu().numpy().tolist() == [1.0, 37.0, 17.0]


@pytest.mark.gpu
def test_make_graphed_callables_trains_as_eager():
    kiln.manual_seed(0)
    module1 = kiln.nn.Linear(D_IN, H).cuda()
    module2 = kiln.nn.Linear(H, D_OUT).cuda()
    refs = [torch.nn.Linear(D_IN, H), torch.nn.Linear(H, D_OUT)]
    for m, r in zip((module1, module2), refs):
        r.load_state_dict({k: torch.from_numpy(v.cpu().numpy().copy())
                           for k, v in m.state_dict().items()})
    params = list(module1.parameters()) + list(module2.parameters())
    optimizer = kiln.optim.SGD(params, lr=0.1)
    ref_opt = torch.optim.SGD(list(refs[0].parameters()) + list(refs[1].parameters()), lr=0.1)

    x = kiln.randn(N, D_IN, device="cuda")
    h = kiln.randn(N, H, device="cuda", requires_grad=True)
    module1, module2 = kiln.cuda.make_graphed_callables((module1, module2), ((x,), (h,)))

    xs, ys = _data(4, seed=1)
    for xb, yb in zip(xs, ys):
        optimizer.zero_grad(set_to_none=True)
        out = module2(kiln.relu(module1(kiln.tensor(xb, device="cuda"))))
        loss = kiln.nn.functional.cross_entropy(out, kiln.tensor(yb, device="cuda"))
        loss.backward()
        optimizer.step()

        ref_opt.zero_grad(set_to_none=True)
        ref_out = refs[1](torch.relu(refs[0](torch.from_numpy(xb))))
        ref_loss = torch.nn.functional.cross_entropy(ref_out, torch.from_numpy(yb))
        ref_loss.backward()
        ref_opt.step()
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    for p, q in zip(params, list(refs[0].parameters()) + list(refs[1].parameters())):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
    # eval mode was not captured: the module runs eagerly there, with the trained weights
    module1.eval()
    xe = kiln.tensor(xs[0], device="cuda")
    np.testing.assert_allclose(module1(xe).detach().cpu().numpy(),
                               refs[0](torch.from_numpy(xs[0])).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_a_graphed_function_returns_its_inputs_gradients():
    def f(a, b):
        return (a * b).sin(), a.exp().sum()

    a = kiln.randn(5, device="cuda", requires_grad=True)
    b = kiln.randn(5, device="cuda", requires_grad=True)
    graphed = kiln.cuda.make_graphed_callables(f, (a, b))
    ta = kiln.randn(5, device="cuda", requires_grad=True)
    tb = kiln.randn(5, device="cuda", requires_grad=True)
    s, e = graphed(ta, tb)
    (s.sum() * 2 + e).backward()
    ra = torch.from_numpy(ta.detach().cpu().numpy()).requires_grad_()
    rb = torch.from_numpy(tb.detach().cpu().numpy()).requires_grad_()
    rs, re = (ra * rb).sin(), ra.exp().sum()
    (rs.sum() * 2 + re).backward()
    np.testing.assert_allclose(s.detach().cpu().numpy(), rs.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ta.grad.cpu().numpy(), ra.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(tb.grad.cpu().numpy(), rb.grad.numpy(), rtol=1e-5)
    with pytest.raises(TypeError, match="expected 2 tensor arguments"):
        graphed(ta)


@pytest.mark.gpu
def test_graphs_share_a_pool_and_reset_forgets():
    x = kiln.ones(4, device="cuda")
    g1, g2 = kiln.cuda.CUDAGraph(), kiln.cuda.CUDAGraph()
    with kiln.cuda.graph(g1):
        y = x * 3
    with kiln.cuda.graph(g2, pool=g1.pool()):
        z = y + 1
    g1.replay()
    g2.replay()
    assert z.cpu().tolist() == [4.0] * 4
    x.fill_(2.0)
    g1.replay()
    g2.replay()
    assert z.cpu().tolist() == [7.0] * 4
    g1.reset()
    with pytest.raises(RuntimeError, match="nothing has been captured"):
        g1.replay()
    with pytest.raises(RuntimeError, match="default stream"):
        kiln.cuda.CUDAGraph().capture_begin()
    with pytest.raises(ValueError, match="capture_error_mode"):
        with kiln.cuda.graph(kiln.cuda.CUDAGraph(), capture_error_mode="strict"):
            pass


@pytest.mark.gpu
def test_a_compiled_step_called_inside_a_capture_runs_eagerly_into_the_graph():
    model, ref = _models()
    optimizer = kiln.optim.SGD(model.parameters(), lr=0.1)

    @kiln.compile
    def train_step(x, y):
        optimizer.zero_grad()
        loss = kiln.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    xs, ys = _data(7, seed=2)
    static_x, static_y = kiln.tensor(xs[0], device="cuda"), kiln.tensor(ys[0], device="cuda")
    losses = []
    for x, y in zip(xs[:3], ys[:3]):            # compiled, replayed by kiln.compile
        static_x.copy_(kiln.tensor(x, device="cuda"))
        static_y.copy_(kiln.tensor(y, device="cuda"))
        losses.append(train_step(static_x, static_y).item())
    g = kiln.cuda.CUDAGraph()
    with pytest.warns(UserWarning, match="CUDA graph is being captured.*runs eagerly"):
        with kiln.cuda.graph(g):
            static_loss = train_step(static_x, static_y)
    for x, y in zip(xs[3:5], ys[3:5]):
        static_x.copy_(kiln.tensor(x, device="cuda"))
        static_y.copy_(kiln.tensor(y, device="cuda"))
        g.replay()
        losses.append(static_loss.item())
    for x, y in zip(xs[5:], ys[5:]):            # compiled again after the capture
        losses.append(train_step(kiln.tensor(x, device="cuda"),
                                 kiln.tensor(y, device="cuda")).item())
    expected = _torch_losses(ref, lambda lib, p: lib.optim.SGD(p, lr=0.1), xs, ys)
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
