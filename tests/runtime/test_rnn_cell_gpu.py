"""Eager LSTM and GRU cell steps on cuda (kiln/codegen/rnn_cell_triton.py,
kiln/runtime/rnn_cell_gpu.py): one launch forward and one per gradient node, the same values
and gradients as the CPU (first and second order), the composite inside a trace, and every
kernel builds for sm_90."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.codegen.rnn_cell_triton import KINDS, render_rnn_cell_kernel
from kiln.ir import dtypes as dt
from kiln.runtime.triton_launch import KernelCache, build_one_for_gpu

# per module: the kernels one time step launches (forward, then the gradient nodes)
LAUNCHES = {"LSTM": ("lstm_cell_forward", "lstm_cell_grad_c", "lstm_cell_grad_h"),
            "GRU": ("gru_cell_forward", "gru_cell_grad")}


def _pair(name, bidirectional=True, dtype=kiln.float32):
    """The module `name` on cuda and a CPU copy with its weights."""
    cuda = getattr(kiln.nn, name)(4, 6, 2, bidirectional=bidirectional).to(dtype=dtype,
                                                                          device="cuda")
    cpu = getattr(kiln.nn, name)(4, 6, 2, bidirectional=bidirectional).to(dtype)
    cpu.load_state_dict({k: v.cpu() for k, v in cuda.state_dict().items()})
    return cuda, cpu


def _last(name, state):
    return state[1] if name == "LSTM" else state        # the LSTM's c, the GRU's h


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [kiln.float32, kiln.float64])
def test_on_cuda_matches_the_cpu_with_one_launch_per_step_and_node(name, dtype, launches):
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    results = []
    for model, device in zip(_pair(name, dtype=dtype), ("cuda", "cpu")):
        launches.clear()
        inp = kiln.tensor(x, dtype=dtype, device=device, requires_grad=True)
        out, state = model(inp)
        (out.pow(2).sum() + _last(name, state).sum()).backward()
        results.append([t.detach().cpu().numpy() for t in (out, _last(name, state), inp.grad,
                                                            model.weight_hh_l1.grad,
                                                            model.bias_ih_l0_reverse.grad)])
        if device == "cuda":        # 2 layers x 2 directions x 5 steps, each kernel once
            for kernel in LAUNCHES[name]:
                assert launches.count(f"{kernel}_{dtype.name}") == 20, kernel
    tol = 1e-5 if dtype is kiln.float32 else 1e-12
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_double_backward_on_cuda_matches_the_cpu(name):
    x = np.random.default_rng(1).standard_normal((4, 2, 4))
    results = []
    for model, device in zip(_pair(name, False, kiln.float64), ("cuda", "cpu")):
        inp = kiln.tensor(x, dtype=kiln.float64, device=device, requires_grad=True)
        out, _ = model(inp)
        (g,) = kiln.autograd.grad(out.pow(2).sum(), inp, create_graph=True)
        g.pow(2).sum().backward()
        results.append([g.detach().cpu().numpy(), model.weight_hh_l0.grad.cpu().numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_a_trace_records_the_composite(name, launches):
    model, _ = _pair(name, False)
    x = kiln.randn(5, 3, 4, device="cuda")
    step = kiln.compile(lambda x: model(x)[0].sum())
    eager = model(x)[0].sum().item()
    launches.clear()
    assert step(x).item() == pytest.approx(eager, rel=1e-5)
    assert not [k for k in launches if k.startswith(("lstm_cell", "gru_cell"))]


def test_kernels_build_for_sm90(tmp_path, nvidia_backend):
    cache = KernelCache(tmp_path)
    for kind in KINDS:
        for dtype in (dt.float32, dt.float64):
            tk = render_rnn_cell_kernel(kind, 20, 128, dtype)
            b = build_one_for_gpu(tk, 90, cache)
            assert ".target sm_90" in b.ptx and f".entry {tk.name}" in b.ptx, tk.name
            assert b.cubin[:4] == b"\x7fELF", tk.name
    forward = render_rnn_cell_kernel("forward", 20, 128, dt.float32)
    assert "div.rn.f32" in build_one_for_gpu(forward, 90, cache).ptx
