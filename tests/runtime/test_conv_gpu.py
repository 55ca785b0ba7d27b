"""Convolutions in compiled Triton programs run as implicit-GEMM kernels (kiln/codegen/conv.py):
the forward, weight-gradient and input-gradient products replace unfold + matmul, the result
equals eager (and eager equals PyTorch), and `conv_route` decides per shape (KILN_CONV_ROUTE, a
measured table kept on disk, else implicit GEMM). The CPU tests run the kernels in Triton's
interpreter (backend="triton"); the GPU-marked ones take the cuda path (run on the CPU under the
strict fake CUDA by tests/test_fake_cuda.py)."""

import json

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as nn
from kiln.codegen import conv
from kiln.codegen.conv_triton import ConvGeometry
from kiln.ir import dtypes as dt
from kiln.ir.interpreter import interpret
from kiln.runtime import triton_launch

KERNELS = {"conv2d_igemm", "conv2d_igemm_weight_grad", "conv2d_igemm_input_grad"}


pytestmark = pytest.mark.usefixtures("fresh_conv_routes")


def _net(lib, dtype=None):
    """Two convolutions (padding, stride 2, dilation), ReLU between, a linear head."""
    lib.manual_seed(0)
    model = lib.nn.Sequential(
        lib.nn.Conv2d(2, 4, 3, padding=1), lib.nn.ReLU(),
        lib.nn.Conv2d(4, 3, (3, 2), stride=2, dilation=(1, 2)), lib.nn.Flatten(),
        lib.nn.Linear(3 * 3 * 3, 3))
    return model if dtype is None else model.to(dtype)


def _copy_into_torch(k_model, t_model):
    with torch.no_grad():
        for (_, pk), (_, pt) in zip(k_model.named_parameters(), t_model.named_parameters()):
            pt.copy_(torch.tensor(pk.detach().cpu().numpy()))


def _step_for(model):
    def step(x, y):
        model.zero_grad()
        loss = kiln.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), x.grad
    return step


def _data(device="cpu", dtype=np.float32):
    rng = np.random.default_rng(1)
    x = kiln.tensor(rng.standard_normal((3, 2, 7, 8)).astype(dtype), device=device,
                    requires_grad=True)
    return x, kiln.tensor(rng.integers(0, 3, 3), device=device)


def _steps(compiled):
    """(name, why) per step of the compiled programs (forward, and backward when separate)."""
    out = []
    for entry in compiled.entries.values():
        for executor in (entry.executor, entry.backward):     # the backward's executor
            if executor is not None:
                out += [(s.name, s.why) for s in executor.program.steps]
    return out


def _run_and_compare(step_model, device="cpu", calls=3, rtol=1e-5):
    """Compiled (backend triton) vs eager on the same model: loss, input and parameter grads."""
    model = step_model
    compiled = kiln.compile(_step_for(model), backend="triton")
    eager = _step_for(model)
    x, y = _data(device)
    for _ in range(calls):
        x.grad = None
        loss_c, gx_c = compiled(x, y)
        grads_c = [p.grad.cpu().numpy().copy() for p in model.parameters()]
        x.grad = None
        loss_e, gx_e = eager(x, y)
        grads_e = [p.grad.cpu().numpy().copy() for p in model.parameters()]
        np.testing.assert_allclose(loss_c.cpu().numpy(), loss_e.cpu().numpy(), rtol=rtol)
        np.testing.assert_allclose(gx_c.cpu().numpy(), gx_e.cpu().numpy(), rtol=rtol,
                                   atol=1e-6)
        for gc, ge in zip(grads_c, grads_e):
            np.testing.assert_allclose(gc, ge, rtol=rtol, atol=1e-6)
    return compiled, (loss_e, gx_e, grads_e)


def test_compiled_convolutions_run_implicit_gemm_kernels_and_match_eager_and_torch():
    model = _net(kiln)
    compiled, (loss, gx, grads) = _run_and_compare(model)
    names = [name for name, _ in _steps(compiled)]
    assert KERNELS <= set(names), names
    # the windows are never made: no unfold or fold, no pad before the padded convolution
    assert not {"unfold", "fold", "fused_pad"} & set(names), names
    whys = [why for name, why in _steps(compiled) if name in KERNELS]
    assert all("implicit GEMM" in w and "default on the GPU" in w for w in whys), whys
    # each kernel step's graph is the unfold route it replaced: the IR interpreter running it
    # gives the kernel's numbers
    rng = np.random.default_rng(5)
    for entry in compiled.entries.values():
        for st in entry.executor.program.steps:
            if st.name in KERNELS:
                st.graph.verify()
                ins = [rng.standard_normal(v.shape).astype(np.float32) for v in st.graph.inputs]
                (want,), _ = interpret(st.graph, ins)
                got = np.full(want.shape, np.nan, np.float32)
                triton_launch.launch(st.kernel, ins, [got])    # guarded (conftest)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=st.name)
    # explain (and kiln dump, from the same artifact) says which route each product took
    x, y = _data()
    text = str(kiln.compiler.explain(compiled, x, y))
    assert "triton kernel (implicit GEMM, conv2d x[3,2,7,8] w[4,2,3,3] -> [3,4,7,8], stride " \
           "[1, 1], padding [1, 1], dilation [1, 1]: the default on the GPU" in text
    assert "def conv2d_igemm_input_grad(" in text
    # eager (the unfold route) against PyTorch
    t_model = _net(torch)
    _copy_into_torch(model, t_model)
    x, y = _data()
    tx = torch.tensor(x.detach().numpy(), requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_model(tx), torch.tensor(y.numpy()))
    t_loss.backward()
    np.testing.assert_allclose(loss.numpy(), t_loss.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    for g, p in zip(grads, t_model.parameters()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_forced_and_measured_routes_keep_the_unfold_route_and_say_why(monkeypatch):
    monkeypatch.setenv("KILN_CONV_ROUTE", "unfold")
    compiled, _ = _run_and_compare(_net(kiln), calls=1)
    steps = _steps(compiled)
    assert not KERNELS & {name for name, _ in steps}
    assert {"unfold", "fold"} <= {name for name, _ in steps}
    # each convolution's three products (x requires grad: both input gradients are made)
    forced = [why.split(" on ")[0] for _, why in steps if "route: KILN_CONV_ROUTE=unfold" in why]
    x, y = _data()
    assert "(conv2d weight grad on the unfold route: KILN_CONV_ROUTE=unfold)" in str(
        kiln.compiler.explain(compiled, x, y))
    assert sorted(forced) == ["conv2d forward", "conv2d forward", "conv2d input grad",
                              "conv2d input grad", "conv2d weight grad", "conv2d weight grad"]
    # a measured choice for one product: that one stays on the unfold route, the others not
    monkeypatch.delenv("KILN_CONV_ROUTE")
    first = ConvGeometry(3, 2, 7, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1))
    conv.record_route("forward", first, dt.float32, "unfold")
    compiled, _ = _run_and_compare(_net(kiln), calls=1)
    steps = _steps(compiled)
    assert [why for _, why in steps if "unfold route" in why] == [
        f"conv2d forward on the unfold route: measured on this GPU ({conv.routes_path()})"]
    assert KERNELS <= {name for name, _ in steps}


def test_measured_routes_are_kept_on_disk_and_a_bad_file_is_ignored(monkeypatch):
    g = ConvGeometry(2, 3, 9, 9, 4, 3, 3)
    conv.record_route("weight_grad", g, dt.float32, "unfold")
    conv.record_route("forward", g, dt.float32, "implicit_gemm", blocks=(128, 64, 32))
    saved = json.loads(conv.routes_path().read_text())
    assert saved == {conv.route_key("weight_grad", g, dt.float32): {"route": "unfold",
                                                                    "blocks": None},
                     conv.route_key("forward", g, dt.float32): {"route": "implicit_gemm",
                                                                "blocks": [128, 64, 32]}}
    # an entry a reader cannot trust is skipped, the others kept
    saved["bad"] = {"route": "implicit_gemm", "blocks": [100, 64, 32]}
    conv.routes_path().write_text(json.dumps(saved))
    monkeypatch.setattr(conv, "MEASURED_ROUTES", {})
    monkeypatch.setattr(conv, "_loaded", [False])
    assert conv.conv_route("weight_grad", g, dt.float32)[0] == "unfold"     # read back
    assert conv.conv_route("forward", g, dt.float32)[0] == "implicit_gemm"
    assert conv.conv_blocks("forward", g, dt.float32) == (128, 64, 32)
    assert conv.conv_blocks("weight_grad", g, dt.float32) is None and "bad" not in \
        conv.MEASURED_ROUTES
    conv.routes_path().write_text("{not json")
    monkeypatch.setattr(conv, "MEASURED_ROUTES", {})
    monkeypatch.setattr(conv, "_loaded", [False])
    assert conv.conv_route("weight_grad", g, dt.float32) == (
        "implicit_gemm", "the default on the GPU (not measured for this shape)")
    with pytest.raises(ValueError, match="conv2d route 'cudnn'"):
        conv.record_route("forward", g, dt.float32, "cudnn")
    monkeypatch.setenv("KILN_CONV_ROUTE", "fast")
    with pytest.raises(ValueError, match="KILN_CONV_ROUTE='fast': expected one of"):
        conv.conv_route("forward", g, dt.float32)


def test_float64_convolutions_stay_on_the_unfold_route():
    g = ConvGeometry(2, 3, 9, 9, 4, 3, 3)
    assert conv.conv_route("forward", g, dt.float64) == (
        "unfold", "no implicit-GEMM kernel for kiln.float64")
    model = _net(kiln).double()
    compiled = kiln.compile(_step_for(model), backend="triton")
    rng = np.random.default_rng(2)
    x = kiln.tensor(rng.standard_normal((3, 2, 7, 8)), requires_grad=True)
    y = kiln.tensor(rng.integers(0, 3, 3))
    loss_c, _ = compiled(x, y)
    loss_e, _ = _step_for(model)(x, y)
    np.testing.assert_allclose(loss_c.numpy(), loss_e.numpy(), rtol=1e-12)
    steps = _steps(compiled)
    assert not KERNELS & {name for name, _ in steps}
    assert any("no implicit-GEMM kernel for kiln.float64" in why for _, why in steps)


def test_a_compiled_forward_whose_windows_are_saved_for_the_backward_keeps_its_matmul():
    """A compiled module with backward() outside: the forward program returns the windows for
    the backward program's weight gradients, so its products read them (no second pass over
    the image); the backward's input gradients still run as kernels."""
    model = _net(kiln)
    compiled = kiln.compile(model, backend="triton")
    x, _ = _data()
    for _ in range(2):
        for p in model.parameters():
            p.grad = None
        x.grad = None
        compiled(x).square().sum().backward()
        got = [t.grad.numpy().copy() for t in [x] + list(model.parameters())]
        for p in model.parameters():
            p.grad = None
        x.grad = None
        model(x).square().sum().backward()
        want = [t.grad.numpy().copy() for t in [x] + list(model.parameters())]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    steps = _steps(compiled)
    assert [why for _, why in steps if "saved" in why] == [
        "conv2d forward on the unfold route: its windows are made anyway, saved for the "
        "backward"] * 2
    assert [name for name, _ in steps if name in KERNELS] == ["conv2d_igemm_input_grad"] * 2


def test_grouped_and_depthwise_convolutions_keep_their_own_routes():
    """groups > 1 runs batched products (depthwise: a multiply-sum), no plain matrix product
    of windows: nothing is rewritten and the result stays eager's."""
    kiln.manual_seed(0)
    model = kiln.nn.Sequential(kiln.nn.Conv2d(4, 6, 3, groups=2),
                               kiln.nn.Conv2d(6, 6, 3, groups=6, padding=1))
    rng = np.random.default_rng(3)
    x = kiln.tensor(rng.standard_normal((2, 4, 6, 6)).astype(np.float32), requires_grad=True)

    def step(x):
        model.zero_grad()
        out = model(x).square().sum()
        out.backward()
        return out.detach(), x.grad
    compiled = kiln.compile(step, backend="triton")
    for _ in range(2):
        x.grad = None
        got = [t.numpy().copy() for t in compiled(x)]
        x.grad = None
        want = [t.numpy().copy() for t in step(x)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert not KERNELS & {name for name, _ in _steps(compiled)}


@pytest.mark.gpu
def test_compiled_convolutions_on_cuda_launch_the_implicit_gemm_kernels(monkeypatch):
    from kiln.codegen import conv_triton
    from kiln.runtime.triton_launch import CudaKernelLauncher
    # the first convolution's weight gradient split in parts added into zeroed memory, as
    # for a real batch (replays: CUDA graphs, which must capture the zeroing too)
    monkeypatch.setattr(conv_triton, "MIN_SPLIT_ROWS", 16)
    model = _net(kiln).cuda()
    compiled, _ = _run_and_compare(model, device="cuda", calls=4)
    launched, split = set(), 0
    for entry in compiled.entries.values():
        for i, step in entry.executor.triton_steps.items():
            assert isinstance(step.launcher, CudaKernelLauncher)
            launched.add(step.tk.name)
            split += step.launcher.zero_outputs
    assert KERNELS <= launched and split == 1
    graphs = [e.executor.cuda_graph for e in compiled.entries.values()]
    assert any(g.graph is not None and g.replays for g in graphs), \
        [g.describe() for g in graphs]


@pytest.mark.gpu
def test_measuring_records_the_faster_route_and_tiles_after_checking_they_agree():
    from kiln.runtime.conv_gpu import measure_conv_routes
    # the first convolution of _net, as its compiled program sees it (the pad folded in)
    g = ConvGeometry(3, 2, 7, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1))
    tiles = {"forward": ((64, 16, 16), (16, 16, 32)), "weight_grad": ((16, 16, 64),),
             "input_grad": ((32, 16, 16),)}
    products = [(kind, g, dt.float32) for kind in ("forward", "weight_grad", "input_grad")]
    timings = measure_conv_routes(products, repeat=2, candidates=tiles)
    assert [t.kind for t in timings] == ["forward", "weight_grad", "input_grad"]
    for t in timings:
        assert t.implicit_gemm_ms > 0 and t.unfold_ms > 0
        assert [b for b, _ in t.tiles_ms] == list(tiles[t.kind])
        assert (t.blocks, t.implicit_gemm_ms) == min(t.tiles_ms, key=lambda bt: bt[1])
        assert t.route == ("implicit_gemm" if t.implicit_gemm_ms <= t.unfold_ms else "unfold")
        route, why = conv.conv_route(t.kind, g, dt.float32)
        assert route == t.route and why.startswith("measured on this GPU")
        assert conv.conv_blocks(t.kind, g, dt.float32) == t.blocks
    assert len(json.loads(conv.routes_path().read_text())) == 3
    # a program compiled now takes the measured route, with the measured tiles
    conv.record_route("forward", g, dt.float32, "implicit_gemm", blocks=timings[0].blocks)
    compiled, _ = _run_and_compare(_net(kiln).cuda(), device="cuda", calls=1)
    (entry,) = compiled.entries.values()
    (tk,) = [st.kernel for st in entry.executor.program.steps if st.name == "conv2d_igemm" and
             st.kernel.constexprs["C"] == 2]
    assert (tk.constexprs["BLOCK_M"], tk.constexprs["BLOCK_N"], tk.constexprs["BLOCK_K"]) == \
        timings[0].blocks
