"""Compiled code on a CUDA GPU (Triton kernels on CuPy memory) equals eager: the tracer's corpus
with every tensor moved to the GPU, an MLP trained with Adam for 10 steps, and the batch-norm
primitives' CuPy path against their NumPy one. All skipped without a GPU (tests/conftest.py)."""

import contextlib
import warnings

import numpy as np
import pytest

import kiln
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.runtime.schedule_executor import ScheduleExecutor
from kiln.tracer.trace import flatten
from tests.test_compile_corpus import _assert_really_compiled, _check_training, _compare
from tests.tracer.test_trace_corpus import CASES

# Triton kernels contract multiply-adds into FMAs and reduce in other orders than CuPy's
# kernels, so compiled and eager results on the GPU differ by a little more than on the CPU.
RTOL, ATOL = 1e-4, 1e-5

# Cases that make tensors inside the function (kiln.tensor, kiln.zeros, kiln.rand): those land
# on the CPU, as they would in PyTorch, and meet the moved ones in an op; or that keep their
# module in a plain object, which `_move_case` does not look into. Moving them needs a rewrite
# of the case, not a generic move.
MAKE_CPU_TENSORS = {
    "creation_inside", "random_dropout_like", "indexing_tensor", "gather_scatter",
    "loss_bce_family", "nn_dropout_embedding", "nn_multihead_attention",
}


def _move_case(fn, args, device: str):
    """Move every tensor a corpus case holds to `device`, in place: its arguments and what `fn`
    reaches (closed-over tensors, module parameters and buffers, optimizer state), each keeping
    its identity, requires_grad and `.grad`, as Module.to moves parameters."""
    reachable: dict = {}
    kiln.compiler.tracing._tensor_names(fn, tensors=reachable)
    tensors = {id(t): t for t in list(reachable.values()) + flatten(args)[0]}
    with kiln.no_grad():
        for t in tensors.values():
            t.data = t.to(device)
            if t.grad is not None:
                t.grad = t.grad.to(device)
    return fn, args


def _build(name: str, device: str):
    kiln.manual_seed(0)
    return _move_case(*CASES[name](), device)


def _assert_runs_triton_on_cuda(compiled):
    """The compiled entries run generated kernels on CuPy memory, not the Triton interpreter."""
    cuda_xp = kiln.device("cuda").xp
    for entry in compiled.entries.values():
        if entry.program is None:
            continue
        for executor in (entry.executor, entry.backward):
            if executor is not None:
                assert isinstance(executor, ScheduleExecutor) and executor.target == "triton"
                assert executor.xp is cuda_xp


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(set(CASES) - MAKE_CPU_TENSORS))
def test_corpus_compiled_on_cuda_equals_eager(name):
    # three identical worlds: eager on the GPU, compiled on the GPU, and eager on the CPU
    fn_e, args_e = _build(name, "cuda")
    fn_c, args_c = _build(name, "cuda")
    fn_h, args_h = _build(name, "cpu")
    compiled = kiln.compile(fn_c)            # backend "auto": Triton kernels on CUDA tensors
    for call in range(3):                    # the trace (an eager run), then replays
        results = []
        for fn, args in ((fn_e, args_e), (fn_c, args_c), (fn_h, args_h)):
            kiln.manual_seed(100 + call)     # random numbers come from the host's generator
            results.append(fn(*args))
        want, got, host = results
        assert all(t.device.type == "cuda" for t in flatten(got)[0])
        _compare(got, want, RTOL, ATOL)
        _compare(want, host, RTOL, ATOL)
        for c, e, h in zip(*(flatten(args)[0] for args in (args_c, args_e, args_h))):
            _compare(c, e, RTOL, ATOL)       # in-place write-backs
            _compare(e, h, RTOL, ATOL)
            assert (c.grad is None) == (e.grad is None) == (h.grad is None)
            if e.grad is not None:
                _compare(c.grad, e.grad, RTOL, ATOL)
                _compare(e.grad, h.grad, RTOL, ATOL)
    _assert_really_compiled(compiled)
    _assert_runs_triton_on_cuda(compiled)


@pytest.mark.gpu
def test_compiled_mlp_adam_on_cuda_matches_eager():
    def make():
        kiln.manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                              nn.Linear(32, 5)).cuda()
        # the optimizer after the move, so that its state is made on the GPU
        return model, kiln.optim.Adam(model.parameters(), lr=1e-3), nn.CrossEntropyLoss()
    kiln.manual_seed(1)
    x, y = kiln.randn(64, 20).cuda(), kiln.randint(0, 5, (64,)).cuda()
    compiled = _check_training(make, x, y, steps=10, rtol=RTOL)
    _assert_really_compiled(compiled)
    _assert_runs_triton_on_cuda(compiled)


def _small_cnn(lib):
    """conv 1->4 k3, ReLU, conv 4->8 k3 (padding 1), ReLU, max-pool 2, fc 72->10: the CNN
    step's layers (issue 16) at shapes Triton's interpreter runs quickly under the fake."""
    nn_ = lib.nn
    return nn_.Sequential(nn_.Conv2d(1, 4, 3), nn_.ReLU(), nn_.Conv2d(4, 8, 3, padding=1),
                          nn_.ReLU(), nn_.MaxPool2d(2), nn_.Flatten(), nn_.Linear(72, 10))


@pytest.mark.gpu
def test_cnn_adam_ten_steps_on_cuda_eager_matches_torch_and_compiled_matches_eager():
    import torch
    kiln.manual_seed(0)
    initial = _small_cnn(kiln).state_dict()
    rng = np.random.default_rng(5)
    x_np = rng.standard_normal((6, 1, 8, 8), dtype=np.float32)
    y_np = rng.integers(0, 10, 6)

    def make(lib, device):
        model = _small_cnn(lib)
        state = {k: lib.tensor(v.cpu().numpy()) for k, v in initial.items()}
        model.load_state_dict(state)
        model.to(device)
        # optimizer after the move, with a scheduler stepping every step, as users write it
        opt = lib.optim.Adam(model.parameters(), lr=1e-2)
        sched = lib.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

        def step(xb, yb):
            opt.zero_grad()
            loss = lib.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            return loss
        return model, step
    (model_e, eager), (model_c, step_c), (model_t, step_t) = (
        make(kiln, "cuda"), make(kiln, "cuda"), make(torch, "cpu"))
    compiled = kiln.compile(step_c)
    x, y = kiln.from_numpy(x_np).cuda(), kiln.from_numpy(y_np).cuda()
    xt, yt = torch.from_numpy(x_np), torch.from_numpy(y_np)
    losses = [(compiled(x, y).item(), eager(x, y).item(), step_t(xt, yt).item())
              for _ in range(10)]
    got, want, ref = (np.array(v) for v in zip(*losses))
    np.testing.assert_allclose(got, want, rtol=1e-4)         # compiled == eager on the GPU
    np.testing.assert_allclose(want, ref, rtol=1e-4)         # eager on the GPU == PyTorch
    assert ref[-1] < ref[0]                                  # it trains
    for (name, pe), (_, pc), (_, pt) in zip(model_e.named_parameters(),
                                            model_c.named_parameters(),
                                            model_t.named_parameters()):
        e = pe.detach().cpu().numpy()
        np.testing.assert_allclose(pc.detach().cpu().numpy(), e, rtol=1e-3, atol=1e-5,
                                   err_msg=name)
        np.testing.assert_allclose(e, pt.detach().numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    _assert_really_compiled(compiled)
    _assert_runs_triton_on_cuda(compiled)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5)], ids=["NC", "NCHW"])
def test_batch_norm_primitives_on_cuda_match_cpu(shape):
    """Training-mode F.batch_norm runs batch_stats (the running averages), batch_norm forward
    and batch_norm_backward: each once on CuPy, compared with the same calls on NumPy."""
    rng = np.random.default_rng(0)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    weight, bias = rng.standard_normal((2, channels)).astype(np.float32)
    grad_out = rng.standard_normal(shape).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        xt = kiln.tensor(x, device=device, requires_grad=True)
        wt = kiln.tensor(weight, device=device, requires_grad=True)
        bt = kiln.tensor(bias, device=device, requires_grad=True)
        mean, var = kiln.zeros(channels, device=device), kiln.ones(channels, device=device)
        out = F.batch_norm(xt, mean, var, wt, bt, training=True, momentum=0.1, eps=1e-5)
        out.backward(kiln.tensor(grad_out, device=device))
        assert out.device.type == xt.grad.device.type == mean.device.type == device
        results[device] = [t.detach().cpu().numpy() for t in
                           (out, xt.grad, wt.grad, bt.grad, mean, var)]
    names = ["output", "input grad", "weight grad", "bias grad", "running mean", "running var"]
    for name, got, want in zip(names, results["cuda"], results["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    # and the running statistics moved off their initial values
    assert not np.allclose(results["cuda"][4], 0) and not np.allclose(results["cuda"][5], 1)


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _moves_to_cuda(x):
    return (x * 2).cuda() + 1  # BREAK


@pytest.mark.gpu
def test_a_copy_between_devices_is_a_graph_break_naming_its_line():
    from kiln.tracer.trace import GraphBreak
    from tests.tracer.test_graph_breaks import _line_of
    line = f"test_compile_gpu.py:{_line_of(_moves_to_cuda, '# BREAK')}"
    compiled = kiln.compile(_moves_to_cuda)
    for call in range(2):                 # eagerly, both times: no replay of a stale copy
        x = kiln.tensor([1.0, -2.0]) * (call + 1)
        with pytest.warns(UserWarning, match=line) if call == 0 else _no_warning():
            out = compiled(x)
        assert out.device.type == "cuda"
        np.testing.assert_allclose(out.cpu().numpy(), x.numpy() * 2 + 1)
    with pytest.raises(GraphBreak, match=line):
        kiln.compile(_moves_to_cuda, fullgraph=True)(kiln.tensor([1.0]))


# results eager returns as views of the argument or of one another (tests/test_compile_alias.py
# has these on the CPU)
RETURNED_VIEWS = ["x.add_(1)\n    return x[1:]", "x.t().add_(1)\n    return x",
                  "y = x * 2\n    return y, y[0], y.t()", "y = x * 2\n    return y[1], y",
                  "return x[1:], x.t()"]


@pytest.mark.gpu
@pytest.mark.parametrize("body", RETURNED_VIEWS)
def test_compiled_results_on_cuda_are_views_where_eagers_are(body):
    # a replay takes such results again from their sources; on cuda it once handed back
    # copies, so a caller's write through one reached neither the argument nor the others
    ns = {}
    exec(f"def f(x):\n    {body}\n", ns)

    def run(fn):
        seen = []
        for i in range(4):
            x = (kiln.arange(12.0).reshape(3, 4) - i).cuda()
            out = fn(x)
            out = out if isinstance(out, tuple) else (out,)
            with kiln.no_grad():
                for k, o in enumerate(out):
                    o.add_(10.0 ** k)
            seen.append([x.cpu().numpy()] + [o.cpu().numpy() for o in out])
        return seen

    fn = kiln.compile(ns["f"])
    for got, want in zip(run(fn), run(ns["f"])):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert sum(e.calls for e in fn.entries.values() if e.program is not None) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["a result and its rows", "a row before its result",
                                  "transpose and unsqueeze of one result"])
def test_results_requiring_grad_on_cuda_stay_views_of_one_another(name):
    from tests.test_compile_alias import GRAD_VIEWS
    body, write, loss = GRAD_VIEWS[name]

    def run(compiled):
        ns = {"W": kiln.full((4,), 0.7, device="cuda", requires_grad=True)}
        exec(f"def f(x):\n    {body}\n", ns)
        fn = kiln.compile(ns["f"]) if compiled else ns["f"]
        seen = []
        for i in range(4):
            o = fn((kiln.arange(16.0).reshape(4, 4) / 8 - i).cuda())
            exec(write, {"o": o})
            eval(loss, {"o": o}).backward()
            seen.append([t.detach().cpu().numpy() for t in o] + [ns["W"].grad.cpu().numpy()])
            ns["W"].grad = None
        return seen

    for got, want in zip(run(True), run(False)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
