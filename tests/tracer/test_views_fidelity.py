"""Views and memory against PyTorch 2.13: Tensor.unfold is a strided view (writes go both ways,
torch's strides, gradients, compiled == eager), Tensor.view(dtype) reinterprets memory, and
the methods that were missing (hardshrink, prelu, resize_as_)."""

import warnings

import numpy as np
import pytest
import torch

import kiln

# ----------------------------------------------------------------------------- Tensor.unfold

UNFOLDS = [((10,), 0, 3, 2), ((10,), 0, 3, 1), ((10,), 0, 2, 4), ((2, 7, 3), 1, 3, 1),
           ((2, 7, 3), -1, 2, 1), ((4, 6), 0, 4, 1), ((5,), 0, 0, 1), ((5,), 0, 5, 1)]


def _pair(shape, seed=0):
    data = np.random.default_rng(seed).standard_normal(shape)
    return torch.tensor(data), kiln.tensor(data)


@pytest.mark.parametrize("shape,dim,size,step", UNFOLDS)
def test_unfold_is_a_view_with_torchs_shape_and_strides(shape, dim, size, step):
    tx, kx = _pair(shape)
    for transposed in (False, True):
        t, k = (tx.t(), kx.t()) if transposed and len(shape) == 2 else (tx, kx)
        if transposed and len(shape) != 2:
            continue
        tw, kw = t.unfold(dim, size, step), k.unfold(dim, size, step)
        assert tuple(kw.shape) == tuple(tw.shape)
        assert kw.stride() == tw.stride()
        assert kw.is_contiguous() == tw.is_contiguous()
        np.testing.assert_array_equal(kw.numpy(), tw.numpy())


@pytest.mark.parametrize("shape,dim,size,step", [u for u in UNFOLDS if u[2] > 0])
def test_writes_reach_both_ways_as_in_torch(shape, dim, size, step):
    seen = []
    for lib in (torch, kiln):
        x = lib.tensor(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
        w = x.unfold(dim, size, step)
        x.view(-1)[1] = -7.0                      # a write to the input: the windows see it
        before = w.tolist()
        w[(0,) * (w.ndim - 1) + (size - 1,)] = 100.0     # into a window: the input sees it
        w.select(-1, 0).mul_(2)                   # an in-place op on a strided view of it
        seen.append((before, x.tolist(), w.tolist()))
    assert seen[1] == seen[0]


@pytest.mark.parametrize("shape,dim,size,step", UNFOLDS)
def test_unfold_gradients_match_torch(shape, dim, size, step):
    tx, kx = _pair(shape, 1)
    tx.requires_grad_(True)
    kx.requires_grad_(True)
    outs = []
    for lib, x in ((torch, tx), (kiln, kx)):
        w = (x * 1.5).unfold(dim, size, step)
        weights = lib.tensor(np.random.default_rng(2).standard_normal(tuple(w.shape)))
        loss = (w * weights).sum() + (w * w).sum()
        loss.backward()
        outs.append((loss.item(), x.grad.numpy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-12)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-12, atol=1e-12)


def test_windows_of_a_base_written_later_carry_the_new_history():
    data = np.random.default_rng(8).standard_normal((3, 10))
    seen = []
    for lib in (torch, kiln):
        x = lib.tensor(data, requires_grad=True)
        y = x * 2.0
        w = y.unfold(1, 4, 1)                   # overlapping windows of y
        y.add_(x.exp())                         # y written after: w sees it, and its grad
        loss = (w * w).sum()
        loss.backward()
        seen.append((loss.item(), x.grad.numpy()))
    np.testing.assert_allclose(seen[1][0], seen[0][0], rtol=1e-12)
    np.testing.assert_allclose(seen[1][1], seen[0][1], rtol=1e-12)


def test_unfold_of_a_leaf_names_torchs_node_and_double_backward():
    results = []
    for lib in (torch, kiln):
        x = lib.tensor(np.linspace(-1, 1, 7), requires_grad=True)
        w = x.unfold(0, 3, 1)
        names = (w.grad_fn.name(), [f.name() for f, _ in w.grad_fn.next_functions])
        (g,) = lib.autograd.grad((w ** 3).sum(), x, create_graph=True)
        (gg,) = lib.autograd.grad(g.sum(), x)
        results.append((names, g.detach().numpy(), gg.numpy()))
    assert results[1][0] == results[0][0]
    for a, b in zip(results[1][1:], results[0][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_unfold_of_a_0d_tensor_and_bad_arguments_as_in_torch():
    for size in (0, 1):
        t, k = torch.tensor(3.0).unfold(0, size, 1), kiln.tensor(3.0).unfold(0, size, 1)
        assert (tuple(k.shape), k.tolist()) == (tuple(t.shape), t.tolist())
    for args, kind in [((0, 11, 1), RuntimeError), ((0, 3, 0), RuntimeError),
                       ((0, -1, 1), RuntimeError), ((1, 2, 1), IndexError)]:
        with pytest.raises(kind) as te:
            torch.arange(10.0).unfold(*args)
        with pytest.raises(kind) as ke:
            kiln.arange(10.0).unfold(*args)
        assert str(te.value).split(" (expected")[0] in str(ke.value)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_compiled_unfold_equals_eager_and_torch(backend):
    data = np.random.default_rng(3).standard_normal((3, 10))
    wts = np.random.default_rng(4).standard_normal((3, 8, 3))

    def f(lib, x):
        w = (x * 1.0).unfold(1, 3, 1)
        z = w * lib.tensor(wts)
        return (z.exp() + w).sum(), w + 1, z.sum(-1), (x * 2.0).unfold(0, 2, 1).sum()

    tx = torch.tensor(data, requires_grad=True)
    want = f(torch, tx)
    want[0].backward()
    compiled = kiln.compile(lambda x: f(kiln, x), backend=backend)
    for _ in range(2):                       # the trace, then the replay
        x = kiln.tensor(data, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # no graph break, no fallback
            got = compiled(x)
        got[0].backward()
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- view(dtype)

def _dtype_cases(lib):
    z = lib.tensor(np.arange(24, dtype=np.float32).reshape(4, 6) * 1.25 - 3)
    b = lib.tensor(np.arange(16, dtype=np.uint8).reshape(2, 8))
    return [
        (z.t(), lib.int32), (z, lib.float32), (z.t(), lib.uint8), (z.t(), lib.float64),
        (z, lib.float64), (z, lib.float16), (z[:, 2:], lib.float64), (z[:, 1:5], lib.float64),
        (z.reshape(8, 3)[:, :2], lib.float64), (z[0, :5], lib.float64),
        (z.reshape(-1)[::2], lib.float16), (z[0, 0], lib.uint8), (z[0, 0], lib.int32),
        (lib.tensor([True, False, True]), lib.uint8), (b[:, 4:], lib.int32),
        (b[:, 2:6], lib.int32), (b, lib.float32), (b.t(), lib.uint8), (b, lib.bool),
        (lib.tensor([1.5, -2.0], dtype=lib.float64), lib.int64),
        (lib.tensor([1.5, -2.0], dtype=lib.float16), lib.uint8),
        (lib.tensor([[1.5, -2.0]], dtype=lib.float64), lib.float16),
    ]


@pytest.mark.parametrize("case", range(len(_dtype_cases(torch))))
def test_view_dtype_reinterprets_as_torch_does(case):
    seen = []
    for lib in (torch, kiln):
        x, dtype = _dtype_cases(lib)[case]
        try:
            y = x.view(dtype)
        except RuntimeError as e:
            seen.append(("error", str(e).split(" (at ")[0].replace("view: ", "")))
            continue
        seen.append((tuple(y.shape), y.stride(), str(y.dtype).split(".")[1], y.tolist()))
    assert seen[1] == seen[0]


def test_view_dtype_shares_memory_and_is_outside_autograd():
    seen = []
    for lib in (torch, kiln):
        x = lib.zeros(2, 3)
        y = x.view(lib.int32)
        y[0, 0] = 1065353216                # the bits of 1.0
        x[1, 1] = 2.0
        y2 = x.view(dtype=lib.uint8)
        w = lib.randn(3, requires_grad=True)
        seen.append((x.tolist(), y.tolist(), y2.tolist(), tuple(y2.shape),
                     w.view(lib.int32).requires_grad, w.view(lib.float32).requires_grad,
                     w.view(lib.float32).grad_fn is None))
    assert seen[1] == seen[0]


def test_compiled_view_dtype_runs_eagerly_with_eagers_answer():
    def f(x):
        bits = (x * 2.0).view(kiln.int32)
        return (bits & 0xFFFF).sum() + (x > 0).sum()
    data = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    want = f(kiln.tensor(data)).item()
    compiled = kiln.compile(f)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the graph break's one-time message
            assert compiled(kiln.tensor(data)).item() == want
    tx = torch.tensor(data)
    assert want == ((tx * 2.0).view(torch.int32) & 0xFFFF).sum().item() + (tx > 0).sum().item()
    with pytest.raises(Exception, match="reinterprets memory"):
        kiln.compile(f, fullgraph=True)(kiln.tensor(data))


# ----------------------------------------------------------------------------- methods

@pytest.mark.parametrize("case", ["hardshrink", "hardshrink_lambd", "prelu_one", "prelu_channels",
                                  "prelu_1d", "F_hardshrink", "F_prelu"])
def test_hardshrink_and_prelu_methods_match_torch(case):
    data = np.random.default_rng(5).standard_normal((2, 3, 4))
    data[0, 0, :2] = (0.5, -0.5)                 # at the threshold: kept as 0, gradient 0
    slopes = np.array([0.25, -0.1, 0.3])
    calls = {
        "hardshrink": lambda lib, x, w: x.hardshrink(),
        "hardshrink_lambd": lambda lib, x, w: x.hardshrink(lambd=1.0),
        "prelu_one": lambda lib, x, w: x.prelu(w[:1]),
        "prelu_channels": lambda lib, x, w: x.prelu(w),
        "prelu_1d": lambda lib, x, w: x[0, :, 0].prelu(w[1:2]),
        "F_hardshrink": lambda lib, x, w: lib.nn.functional.hardshrink(x, 0.3),
        "F_prelu": lambda lib, x, w: lib.nn.functional.prelu(x, w),
    }
    seen = []
    for lib in (torch, kiln):
        x = lib.tensor(data, requires_grad=True)
        w = lib.tensor(slopes, requires_grad=True)
        y = calls[case](lib, x, w)
        (y * lib.tensor(np.arange(y.numel(), dtype=np.float64).reshape(tuple(y.shape)))).sum() \
            .backward()
        seen.append((y.grad_fn.name(), y.detach().numpy(), x.grad.numpy(),
                     None if w.grad is None else w.grad.numpy()))
    assert seen[1][0] == seen[0][0]
    for a, b in zip(seen[1][1:], seen[0][1:]):
        if b is None:
            assert a is None or not a.any()
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_prelu_counts_channels_as_torch_does():
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError, match="Found parameter numbers = 3 and channel size = 1"):
            lib.ones(3).prelu(lib.ones(3))
        with pytest.raises(RuntimeError, match="Found parameter numbers = 2 and channel size = 3"):
            lib.nn.functional.prelu(lib.ones(2, 3, 4), lib.ones(2))


def test_resize_as_and_resize_keep_the_memory_as_torch_does():
    seen = []
    for lib in (torch, kiln):
        out = []
        a = lib.arange(6.0)
        whole = a.view(6)
        a.resize_as_(lib.zeros(2, 3))
        out.append((a.tolist(), a.stride()))
        a.resize_(3)                               # shrinks: the same memory, from the start
        a[0] = -1.0
        out.append((a.tolist(), a.stride(), whole.tolist()))
        t = lib.arange(6.0).reshape(2, 3).t()
        t.resize_as_(lib.zeros(3, 2))              # the same shape: strides kept
        out.append((t.tolist(), t.stride()))
        t.resize_(2, 3)                            # another: the memory in its order
        out.append((t.tolist(), t.stride()))
        v = lib.arange(6.0)[2:]
        v.resize_(2)
        out.append(v.tolist())
        g = lib.zeros(2, 2, requires_grad=True)
        with pytest.raises(RuntimeError, match="cannot resize variables that require grad"):
            g.resize_as_(lib.zeros(4))
        with pytest.warns(UserWarning, match="non-inplace resize_as is deprecated"):
            r = lib.arange(6.0, requires_grad=True).resize_as(lib.zeros(3, 2))
        out.append((r.tolist(), tuple(r.shape)))
        with pytest.raises(RuntimeError, match="autograd's resize can only change the shape"):
            with pytest.warns(UserWarning):
                lib.arange(6.0).resize(4)
        seen.append(out)
    assert seen[1] == seen[0]


def test_resize_past_the_memory_keeps_the_elements_it_had():
    for lib in (torch, kiln):
        v = lib.arange(6.0)[2:]
        v.resize_(7)                    # PyTorch leaves the last three uninitialized
        assert v[:4].tolist() == [2.0, 3.0, 4.0, 5.0] and tuple(v.shape) == (7,)


# ----------------------------------------------------------------------------- default device

def _in_thread(fn):
    import threading
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("v", fn()))
    thread.start()
    thread.join()
    return out["v"]


def test_the_default_device_is_per_thread_as_in_torch():
    """torch keeps set_default_device and `with torch.device(...)` in thread-local state (its
    `_GLOBAL_DEVICE_CONTEXT` is a threading.local, and modes are per thread): a thread starts
    on the CPU whatever another set, and its own setting stays its own. (Not run against torch
    here: torch aborts at interpreter exit after a thread set a default device.)"""
    try:
        kiln.set_default_device("meta")
        assert kiln.zeros(2).device.type == "meta"
        assert _in_thread(lambda: (kiln.zeros(2).device.type,
                                   str(kiln.get_default_device()))) == ("cpu", "cpu")
    finally:
        kiln.set_default_device(None)
    with kiln.device("meta"):
        assert _in_thread(lambda: kiln.ones(1).device.type) == "cpu"
        assert kiln.ones(1).device.type == "meta"

    def set_in_thread():
        kiln.set_default_device("meta")
        with kiln.device("cpu"):
            inner = kiln.zeros(1).device.type
        return inner, kiln.zeros(1).device.type
    assert _in_thread(set_in_thread) == ("cpu", "meta")
    assert kiln.zeros(1).device.type == "cpu" and str(kiln.get_default_device()) == "cpu"


def test_unfold_exports_to_onnx_and_runs_as_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Windows(kiln.nn.Module):
        def forward(self, x):
            return x.unfold(1, 3, 2).sum(-1) * 2 + x.unfold(0, 2, 1).amax(-1).sum()

    x = kiln.tensor(np.random.default_rng(6).standard_normal((4, 9)).astype(np.float32))
    model = Windows()
    kiln.onnx.export(model, (x,), str(tmp_path / "w.onnx"))
    session = ort.InferenceSession(str(tmp_path / "w.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    tx = torch.tensor(x.numpy())
    want = tx.unfold(1, 3, 2).sum(-1) * 2 + tx.unfold(0, 2, 1).amax(-1).sum()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), want.numpy(), rtol=1e-6)

    class Rows(kiln.nn.Module):
        def forward(self, x):
            return x.unfold(1, 4, 3).sum(-1)

    kiln.onnx.export(Rows(), (x[:2],), str(tmp_path / "r.onnx"), input_names=["x"],
                     dynamic_axes={"x": {0: "batch"}})
    session = ort.InferenceSession(str(tmp_path / "r.onnx"))
    (got,) = session.run(None, {"x": x.numpy()})       # a batch of 4, exported with 2
    np.testing.assert_allclose(got, tx.unfold(1, 4, 3).sum(-1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("view", ["slice", "unfold", "select"])
def test_a_compiled_write_through_a_view_with_backward_compiles_and_equals_torch(view):
    """The mask of the region a write through a view covers is computed inside the trace, so
    the backward that reads it compiles (it used to be lifted into the backward as an input
    the forward program lacked, and the function fell back to eager with a warning)."""
    takes = {"slice": lambda y: y[:, 1:3], "unfold": lambda y: y.unfold(1, 2, 2),
             "select": lambda y: y[1]}

    def f(lib, x):
        y = x * 1.0
        w = takes[view](y)
        w.mul_(3.0)
        return (y * y).sum() + (w * x.sum()).sum()

    data = np.random.default_rng(7).standard_normal((3, 6))
    tx = torch.tensor(data, requires_grad=True)
    want = f(torch, tx)
    want.backward()
    compiled = kiln.compile(lambda x: f(kiln, x))
    for _ in range(2):
        x = kiln.tensor(data, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = compiled(x)
        got.backward()
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-12)
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)


STORAGE_OFFSET_VIEWS = [
    lambda x: x, lambda x: x[1], lambda x: x[1, 2:], lambda x: x[:, 1], lambda x: x.t()[2],
    lambda x: x.reshape(4, 3)[2:], lambda x: x.narrow(1, 1, 2), lambda x: x.flatten()[5:],
    lambda x: x.select(0, 2).unsqueeze(0), lambda x: x.view(-1)[7::2], lambda x: x.clone(),
    lambda x: x[::2, 1:],
]


def test_storage_offset_of_views_matches_torch():
    # swap_tensors recipe: storage_offset=elem.storage_offset() (kiln had no storage_offset)
    t, k = _pair((3, 4))
    for view in STORAGE_OFFSET_VIEWS:
        assert view(k).storage_offset() == view(t).storage_offset()
    assert kiln.empty(2, 3, device="meta").storage_offset() == 0


def test_finfo_and_iinfo_print_as_torchs():
    for name in ("float32", "float64", "float16", "bfloat16"):
        assert repr(kiln.finfo(getattr(kiln, name))) == repr(torch.finfo(getattr(torch, name)))
    for name in ("uint8", "int8", "int16", "int32", "int64"):
        assert repr(kiln.iinfo(getattr(kiln, name))) == repr(torch.iinfo(getattr(torch, name)))


# views of a (24,) memory: as_strided's (NumPy's as_strided array views an interface object
# of its input, not the input), of views of it, and the other view ops
MEMORY_VIEWS = {
    "as_strided": lambda lib, t, m: t.as_strided((2, 2), (1, 2), 3),
    "as_strided, default offset": lambda lib, t, m: t[4:].as_strided((2, 2), (1, 2)),
    "as_strided of a view": lambda lib, t, m: t[2:].as_strided((3, 2), (2, 1), 5),
    "as_strided of a matrix": lambda lib, t, m: lib.as_strided(m, (2, 3), (6, 1), 7),
    "a view of as_strided": lambda lib, t, m: t.as_strided((4, 4), (4, 1), 2)[1:],
    "as_strided of as_strided":
        lambda lib, t, m: t.as_strided((4, 4), (4, 1), 2).as_strided((2,), (3,), 9),
    "slice of slice": lambda lib, t, m: t[2:][3:],
    "select": lambda lib, t, m: m[1],
    "column": lambda lib, t, m: m[:, 2],
    "block": lambda lib, t, m: m[1:, 2:],
    "strided block": lambda lib, t, m: m[1:, ::2],
    "narrow dim 1": lambda lib, t, m: m.narrow(1, 2, 3),
    "narrow dim 0": lambda lib, t, m: m.narrow(0, 1, 2),
    "unfold": lambda lib, t, m: m.unfold(1, 2, 2)[1],
    "unfold of a slice": lambda lib, t, m: t[3:].unfold(0, 4, 2),
    "a slice of unfold": lambda lib, t, m: t[3:].unfold(0, 4, 2)[2:],
    "diagonal above": lambda lib, t, m: m.diagonal(1),
    "diagonal below": lambda lib, t, m: m.diagonal(-2),
    "diagonal of a slice": lambda lib, t, m: m[1:].diagonal(),
    "t then select": lambda lib, t, m: m.t()[2],
    "view of a row": lambda lib, t, m: m[2].view(2, 3),
    "split": lambda lib, t, m: m.split(2, 1)[2],
    "chunk": lambda lib, t, m: m.chunk(2)[1],
    "unbind": lambda lib, t, m: m.unbind(0)[3],
    "expand": lambda lib, t, m: m[:, 3:].expand(2, 4, 3),
    "permute": lambda lib, t, m: m[1:].permute(1, 0),
    "unsqueeze": lambda lib, t, m: m[1:].unsqueeze(0),
    "detach": lambda lib, t, m: t[5:].detach(),
    "view as int32": lambda lib, t, m: t[5:].view(lib.int32),
    "reshape of a slice": lambda lib, t, m: t[5:].reshape(19),
}


def _memory_facts(lib, view) -> tuple:
    t = lib.arange(24.)
    m = t.view(4, 6)
    v = view(lib, t, m)
    return (v.storage_offset(), tuple(v.stride()), (v.data_ptr() - t.data_ptr()) // 4,
            v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr(),
            v.untyped_storage().nbytes(), v.tolist())


@pytest.mark.parametrize("view", [pytest.param(v, id=n) for n, v in MEMORY_VIEWS.items()])
def test_views_report_torchs_storage_offset_and_memory(view):
    """storage_offset(), the strides, data_ptr() relative to the base's, whether
    untyped_storage() is the base's and its size, and the values, for every kind of view."""
    assert _memory_facts(kiln, view) == _memory_facts(torch, view)


def test_as_strided_before_its_input_is_refused_by_name():
    """PyTorch's as_strided reads anywhere in the input's memory; kiln's only the input's
    own elements, and says so."""
    torch.arange(24.)[5:].as_strided((2, 2), (1, 2), 3)          # PyTorch reads 3..6
    with pytest.raises(RuntimeError, match="as_strided: .*outside the input's own 5..23"):
        kiln.arange(24.)[5:].as_strided((2, 2), (1, 2), 3)
