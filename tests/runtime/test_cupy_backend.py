"""Eager convolutions on cuda tensors (kiln/runtime/cupy_backend.py): each of a conv2d's three
products (forward, weight gradient, input gradient) runs as one implicit-GEMM kernel launch
where `conv_route` says so, equal to PyTorch; float64, grouped convolutions and the "unfold"
route run the primitives' own impls, also equal to PyTorch, with a fold of one in-place add per
window position; compiled programs are unchanged. GPU-marked: on a GPU they run on CuPy;
tests/test_fake_cuda.py runs them under the strict fake CUDA, the kernels in Triton's
interpreter (so the shapes stay small)."""

import collections
import threading

import numpy as np
import pytest
import torch

import kiln
from kiln.codegen import conv
from kiln.codegen.conv_triton import ConvGeometry, render_fold_kernel
from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES
from kiln.runtime import cupy_backend
from kiln.runtime.device import cupy_module
from kiln.runtime.numpy_backend import numpy_impl
from kiln.runtime.triton_launch import KernelCache, build_one_for_gpu
from kiln.tracer import dispatch

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_conv_routes")]

FORWARD, WEIGHT_GRAD, INPUT_GRAD = \
    "conv2d_igemm", "conv2d_igemm_weight_grad", "conv2d_igemm_input_grad"


def _fake_cuda():
    """tests/fake_cuda.py when it stands in for CuPy (device calls are counted there), else
    None (a real GPU)."""
    from tests import fake_cuda
    return fake_cuda if cupy_module() is fake_cuda.cupy else None


def _conv_both(x_shape, w_shape, bias, dtype=np.float32, seed=0, **kwargs):
    """conv2d forward and backward on kiln cuda tensors and on torch CPU tensors, from the same
    data: [(kiln value, torch value)] for the output, and the input, weight and bias grads."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape)
              .astype(dtype)] + ([rng.standard_normal(w_shape[0]).astype(dtype)] if bias else [])
    ks = [kiln.tensor(a, device="cuda", requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    ko = kiln.nn.functional.conv2d(*ks, **kwargs)
    to = torch.nn.functional.conv2d(*ts, **kwargs)
    g = rng.standard_normal(tuple(to.shape)).astype(dtype)
    ko.backward(kiln.tensor(g, device="cuda"))
    to.backward(torch.tensor(g))
    assert ko.device.type == "cuda" and all(k.grad.device.type == "cuda" for k in ks)
    return [(ko.detach().cpu().numpy(), to.detach().numpy())] + [
        (k.grad.cpu().numpy(), t.grad.numpy()) for k, t in zip(ks, ts)]


def _assert_match(pairs, rtol, atol):
    for what, (k, t) in zip(("output", "input grad", "weight grad", "bias grad"), pairs):
        assert k.shape == t.shape and k.dtype == t.dtype, (what, k.shape, t.shape)
        # float32 sums in another order than PyTorch's: an error of the terms' size, not of
        # the (possibly cancelling) result's
        np.testing.assert_allclose(k, t, rtol=rtol, atol=atol * max(1.0, np.abs(t).max()),
                                   err_msg=what)


CASES = {   # x shape, weight shape, bias, conv2d's keyword arguments
    "padding, stride and dilation": ((2, 3, 9, 8), (4, 3, 3, 2), True,
                                     dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    "plain": ((3, 2, 7, 7), (5, 2, 3, 3), False, {}),
    "1x1, stride 2": ((2, 4, 6, 5), (3, 4, 1, 1), True, dict(stride=2)),
    "5x5, stride 3, padding 2": ((2, 1, 11, 9), (2, 1, 5, 5), True,
                                 dict(stride=3, padding=2)),
    # 2*32*32 = 2048 rows: the weight gradient's sum is split over programs that add into it
    "split weight gradient": ((2, 1, 34, 34), (3, 1, 3, 3), True, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_eager_conv2d_on_cuda_runs_one_kernel_per_product_and_matches_torch(case, launches):
    x_shape, w_shape, bias, kwargs = CASES[case]
    for seed in range(2):       # the second call reuses the kernels (and zeroes a split's sum)
        launches.clear()
        _assert_match(_conv_both(x_shape, w_shape, bias, seed=seed, **kwargs),
                      rtol=1e-4, atol=1e-5)
        assert sorted(launches) == sorted([FORWARD, WEIGHT_GRAD, INPUT_GRAD]), launches
    split = [launcher.tk.constexprs["SPLITS"] for launcher in cupy_backend._LAUNCHERS.values()
             if launcher is not None and launcher.tk.name == WEIGHT_GRAD]
    assert split == [2] if case == "split weight gradient" else split == [1]


def test_repeated_eager_convolutions_render_and_prepare_their_kernels_once(monkeypatch,
                                                                           launches):
    rendered = []
    render = cupy_backend.render_conv_kernel
    monkeypatch.setattr(cupy_backend, "render_conv_kernel",
                        lambda *a, **k: rendered.append(a[0]) or render(*a, **k))
    x_shape, w_shape, bias, kwargs = CASES["plain"]
    for seed in range(3):
        _assert_match(_conv_both(x_shape, w_shape, bias, seed=seed, **kwargs),
                      rtol=1e-4, atol=1e-5)
    assert sorted(rendered) == ["forward", "input_grad", "weight_grad"]
    assert len(launches) == 9 and len(cupy_backend._LAUNCHERS) == 3
    # an image in another layout (channels-last) is read in place by another kernel: its
    # strides are constants of the source
    n, c, h, w = x_shape
    x = kiln.tensor(np.arange(n * h * w * c, dtype=np.float32).reshape(n, h, w, c),
                    device="cuda").permute(0, 3, 1, 2)
    weight = kiln.tensor(np.ones(w_shape, np.float32), device="cuda")
    out = kiln.nn.functional.conv2d(x, weight)
    want = torch.nn.functional.conv2d(torch.tensor(x.cpu().numpy()), torch.ones(w_shape))
    np.testing.assert_allclose(out.cpu().numpy(), want.numpy(), rtol=1e-6)
    assert rendered[3:] == ["forward"] and launches[9:] == [FORWARD]


def test_each_thread_launches_its_own_prepared_kernels(launches):
    """A launcher keeps its last call's arguments: threads convolving the same shapes each get
    their own. (The threads take turns: Triton's interpreter, which runs the fake's kernels,
    cannot run two kernels at once; all stay alive to the end, so none reuses another's id.)"""
    x_shape, w_shape, bias, kwargs = CASES["plain"]
    results, turn, end = {}, threading.Lock(), threading.Barrier(3)

    def run(seed):
        with turn:
            results[seed] = _conv_both(x_shape, w_shape, bias, seed=seed, **kwargs)
        end.wait(timeout=60)
    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    for seed in range(3):
        _assert_match(results[seed], rtol=1e-4, atol=1e-5)
    assert len(cupy_backend._LAUNCHERS) == 3 * 3 and len(launches) == 3 * 3


ROUTED_ELSEWHERE = {    # why a convolution stays on unfold + matmul
    "float64": ((2, 3, 8, 7), (4, 3, 3, 3), True, np.float64, dict(padding=1)),
    "groups": ((2, 4, 7, 6), (6, 2, 3, 2), True, np.float32, dict(groups=2, stride=(1, 2))),
    "forced unfold route": ((2, 3, 8, 7), (4, 3, 3, 3), False, np.float32, dict(dilation=2)),
    "measured unfold route": ((2, 3, 8, 7), (4, 3, 3, 3), False, np.float32, {}),
}


@pytest.mark.parametrize("case", list(ROUTED_ELSEWHERE))
def test_convolutions_off_the_kernel_route_fold_in_one_launch_and_match_torch(
        case, launches, monkeypatch):
    """Unfold + matmul, and the input gradient's windows folded by one kernel launch."""
    x_shape, w_shape, bias, dtype, kwargs = ROUTED_ELSEWHERE[case]
    if case == "forced unfold route":
        monkeypatch.setenv("KILN_CONV_ROUTE", "unfold")
    if case == "measured unfold route":
        for kind in ("forward", "weight_grad", "input_grad"):
            conv.record_route(kind, ConvGeometry(2, 3, 8, 7, 4, 3, 3), dt.float32, "unfold",
                              save=False)
    pairs = _conv_both(x_shape, w_shape, bias, dtype=dtype, **kwargs)
    assert launches == ["fold_windows"]
    if dtype == np.float64:
        _assert_match(pairs, rtol=1e-10, atol=1e-12)
    else:
        _assert_match(pairs, rtol=1e-4, atol=1e-5)
    # the route is read per call: back on the kernels once it is no longer forced
    monkeypatch.delenv("KILN_CONV_ROUTE", raising=False)
    if case == "forced unfold route":
        launches.clear()
        _assert_match(_conv_both(x_shape, w_shape, bias, dtype=dtype, **kwargs), 1e-4, 1e-5)
        assert sorted(launches) == sorted([FORWARD, WEIGHT_GRAD, INPUT_GRAD])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_products_take_any_dense_layout_and_a_channels_last_fold(dtype, launches):
    """The three primitives called directly, on transposed and sliced operands, against the
    NumPy backend's results: a transposed (dense) operand is read through its strides, a
    sliced one (gaps in its memory) copied first; `channels_last` folds into (N, H, W, C)."""
    xp = cupy_module()
    rng = np.random.default_rng(3)
    kernel, stride, dilation = (2, 3), (1, 2), (2, 1)
    n, c, h, w, o = 2, 3, 8, 9, 4
    oh, ow = (h - 2 - 1) // 1 + 1, (w - 2 - 1) // 2 + 1
    k = 6 * c
    arrays = {"x": rng.standard_normal((n, c, h, w + 2)), "wt": rng.standard_normal((o, k)),
              "a": rng.standard_normal((o, n * oh * ow)),
              "g": rng.standard_normal((n * oh * ow, o))}
    arrays = {name: a.astype(dtype) for name, a in arrays.items()}
    on = {name: xp.asarray(a) for name, a in arrays.items()}
    x, x_gpu = arrays["x"][..., 1:-1], on["x"][..., 1:-1]         # sliced: not dense
    calls = [("unfold_matmul", (x, arrays["wt"].T), (x_gpu, on["wt"].T), {}),
             ("matmul_unfold", (arrays["a"], x), (on["a"], x_gpu), {}),
             ("matmul_unfold", (arrays["g"].T, x), (on["g"].T, x_gpu), {}),
             ("matmul_fold", (arrays["g"], arrays["wt"]), (on["g"], on["wt"]),
              dict(size=(h, w))),
             ("matmul_fold", (arrays["a"].T, arrays["wt"]), (on["a"].T, on["wt"]),
              dict(size=(h, w), channels_last=True))]
    tol = 1e-5 if dtype == np.float32 else 2e-2
    for name, cpu_args, gpu_args, attrs in calls:
        launches.clear()
        attrs = dict(attrs, kernel=kernel, stride=stride, dilation=dilation)
        want = numpy_impl(PRIMITIVES[name])(
            np, *[a.astype(np.float32) for a in cpu_args], **attrs)
        got = cupy_backend.cupy_impl(PRIMITIVES[name])(xp, *gpu_args, **attrs)
        assert isinstance(got, xp.ndarray) and got.dtype == dtype and len(launches) == 1
        np.testing.assert_allclose(got.get().astype(np.float32), want, rtol=tol,
                                   atol=tol * np.abs(want).max(), err_msg=name)


def test_the_fold_on_cuda_adds_each_window_position_in_place_and_keeps_the_bits():
    """Where the kernels do not apply, a fold costs one in-place add per window position (no
    copy back), and sums in the NumPy backend's order: the same bits."""
    xp = cupy_module()
    rng = np.random.default_rng(4)
    cols = rng.standard_normal((2, 4, 3, 3, 2, 5))
    attrs = dict(size=(9, 5), kernel=(3, 2), stride=(2, 1), dilation=(1, 2))
    fake = _fake_cuda()
    counted = collections.Counter()
    if fake is not None:
        real = fake._on_device

        def on_device(run, args=(), writes=(), stream=None):
            if not getattr(fake._CURRENT, "inside", False):
                counted["writes" if writes else "other"] += 1
            return real(run, args, writes, stream)
        fake._on_device = on_device
    try:
        got = PRIMITIVES["fold"].impl(xp, xp.asarray(cols), **attrs)
    finally:
        if fake is not None:
            fake._on_device = real
    np.testing.assert_array_equal(got.get(), numpy_impl(PRIMITIVES["fold"])(np, cols, **attrs))
    if fake is not None:
        # the zeros, then per position: the add (into a view of the image), the two views
        assert counted["writes"] == 6 and counted["other"] <= 1 + 3 * 6, counted


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_fold_kernel_sums_as_the_primitive_does_in_one_launch(dtype, channels_last,
                                                                  launches):
    """The fold on cuda (an input gradient off the kernel route, a grouped convolution's
    backward): one launch, each pixel summing its windows in the primitive's order, so the
    bits are those of the NumPy backend; windows in another layout are copied first."""
    xp = cupy_module()
    rng = np.random.default_rng(6)
    attrs = dict(size=(10, 7), kernel=(3, 2), stride=(2, 3), dilation=(2, 1))
    fold = cupy_backend.cupy_impl(PRIMITIVES["fold"])
    for cols in (rng.standard_normal((2, 3, 2, 3, 2, 4)),
                 rng.standard_normal((4, 3, 2, 3, 2, 2)).transpose(5, 1, 2, 3, 4, 0)):
        cols = cols.astype(dtype)
        launches.clear()
        got = fold(xp, xp.asarray(cols), channels_last=channels_last, **attrs)
        want = PRIMITIVES["fold"].impl(np, cols, channels_last=channels_last, **attrs)
        assert launches == ["fold_windows"] and got.dtype == dtype
        np.testing.assert_array_equal(got.get(), want)
        if not channels_last:
            np.testing.assert_array_equal(
                got.get(), numpy_impl(PRIMITIVES["fold"])(np, cols, **attrs))


def test_compiled_programs_are_unchanged_by_the_eager_kernels(monkeypatch):
    """The compiled conv step on cuda lowers, routes and explains the same with the eager
    kernels as without them (tracing runs the unfold + matmul spelling either way)."""
    def program():
        kiln.manual_seed(0)
        model = kiln.nn.Sequential(kiln.nn.Conv2d(2, 3, 3, padding=1), kiln.nn.ReLU(),
                                   kiln.nn.Flatten(), kiln.nn.Linear(3 * 5 * 4, 2)).cuda()

        def step(x, y):
            model.zero_grad()
            loss = kiln.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss.detach()
        compiled = kiln.compile(step, backend="triton")
        rng = np.random.default_rng(1)
        x = kiln.tensor(rng.standard_normal((2, 2, 5, 4)).astype(np.float32), device="cuda")
        y = kiln.tensor(rng.integers(0, 2, 2), device="cuda")
        losses = [compiled(x, y).cpu().numpy() for _ in range(2)]
        steps = [(s.name, s.why, getattr(s.kernel, "source", None))
                 for entry in compiled.entries.values()
                 for ex in (entry.executor, entry.backward) if ex is not None
                 for s in ex.program.steps]
        return losses, steps, str(kiln.compiler.explain(compiled, x, y))

    with_kernels = program()
    assert any(name == WEIGHT_GRAD for name, _, _ in with_kernels[1])
    monkeypatch.setattr(dispatch, "_INFER_CACHE", {})       # cached impls: found again
    for name in list(cupy_backend.CUPY_PATHS):
        monkeypatch.delitem(cupy_backend.CUPY_PATHS, name)
    without = program()
    np.testing.assert_allclose(with_kernels[0], without[0], rtol=1e-6)
    assert with_kernels[1] == without[1]
    if _fake_cuda() is not None:    # (on a GPU, explain also reports launch settings timed)
        assert with_kernels[2] == without[2]


def test_the_eager_kernels_build_ahead_of_time_for_sm90(tmp_path):
    """The kernels eager mode renders (its own operand layouts: a transposed weight matrix, a
    transposed output gradient) build for a GPU, the products on tensor cores; so does the
    fold kernel."""
    x_shape, w_shape, bias, kwargs = CASES["split weight gradient"]
    _conv_both(x_shape, w_shape, bias, **kwargs)
    kernels = [launcher.tk for launcher in cupy_backend._LAUNCHERS.values()]
    assert sorted(tk.name for tk in kernels) == sorted([FORWARD, WEIGHT_GRAD, INPUT_GRAD])
    kernels += [render_fold_kernel((2, 8, 8, 3, 3, 4), (10, 10), (1, 1), (1, 1), dtype)
                for dtype in (dt.float32, dt.float64)]
    cache = KernelCache(tmp_path)
    for tk in kernels:
        build = build_one_for_gpu(tk, 90, cache)
        assert build.cubin and f".entry {tk.name}" in build.ptx, tk.name
        assert tk.name == "fold_windows" or "wgmma" in build.ptx or "mma.sync" in build.ptx
