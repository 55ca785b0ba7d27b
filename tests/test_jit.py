"""kiln.jit: script/trace run the module, save/load move an exported program (kiln's format, no
pickle, no Python class needed), compared with torch.jit on the same weights and inputs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import kiln
import kiln.jit
from kiln.serialization import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _pair():
    """The same small conv net in torch and in kiln, with torch's weights."""
    torch.manual_seed(0)

    def build(nn):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.LogSoftmax(dim=1))
    reference = build(torch.nn)
    reference.train()
    reference(torch.randn(8, 3, 6, 6))            # running statistics of their own
    model = build(kiln.nn)
    model.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in
                           reference.state_dict().items()})
    return model.eval(), reference.eval()


def _inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)


def test_a_traced_module_saves_and_loads_computing_what_torch_jit_computes(tmp_path) -> None:
    model, reference = _pair()
    x = _inputs(4)
    traced = kiln.jit.trace(model, kiln.tensor(x))
    torch_traced = torch.jit.trace(reference, torch.tensor(x))
    np.testing.assert_allclose(traced(kiln.tensor(x)).detach().numpy(),
                               torch_traced(torch.tensor(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    assert list(traced.state_dict()) == list(torch_traced.state_dict())
    kiln.jit.save(traced, tmp_path / "net.pt")
    loaded = kiln.jit.load(tmp_path / "net.pt")
    for n in (4, 7):                    # the batch dimension was left free
        xs = _inputs(n, seed=n)
        np.testing.assert_allclose(loaded(kiln.tensor(xs)).numpy(),
                                   torch_traced(torch.tensor(xs)).detach().numpy(), rtol=1e-5,
                                   atol=1e-5)
    assert "f32[batch, 3, 6, 6]" in loaded.code
    # the file is data only: kiln.load with weights_only=True (no pickle allowed) reads it
    assert set(kiln.load(tmp_path / "net.pt")) >= {"format", "program", "state_dict"}
    buffer = io.BytesIO()
    kiln.jit.save(loaded, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(kiln.jit.load(buffer)(kiln.tensor(x)).numpy(),
                                  loaded(kiln.tensor(x)).numpy())


def test_a_saved_program_loads_in_a_process_without_the_models_class(tmp_path) -> None:
    class Private(kiln.nn.Module):        # a class the loading process cannot import
        def __init__(self):
            super().__init__()
            self.proj = kiln.nn.Linear(3, 2)

        def forward(self, x):
            return kiln.tanh(self.proj(x)) * 2.0

    kiln.manual_seed(0)
    model = Private()
    x = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    kiln.jit.trace(model, kiln.tensor(x)).save(tmp_path / "private.pt")
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, kiln, kiln.jit\n"
            f"m = kiln.jit.load({str(tmp_path / 'private.pt')!r})\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, m(kiln.tensor(np.load("
            f"{str(tmp_path / 'x.npy')!r}))).numpy())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                               model(kiln.tensor(x)).detach().numpy(), rtol=1e-6)


def test_a_scripted_module_trains_as_the_original_and_saves_its_current_weights(tmp_path):
    model, reference = _pair()
    scripted = kiln.jit.script(model)
    torch_scripted = torch.jit.script(reference)
    assert isinstance(scripted, kiln.nn.Module) and kiln.jit.script(scripted) is scripted
    assert [n for n, _ in scripted.named_parameters()] == \
        [n for n, _ in torch_scripted.named_parameters()]
    x, y = _inputs(6), np.array([0, 1, 2, 3, 4, 0])
    for lib, net in ((kiln, scripted), (torch, torch_scripted)):
        net.train()
        opt = lib.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            loss = lib.nn.functional.nll_loss(net(lib.tensor(x)), lib.tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
    assert model.training is False
    np.testing.assert_allclose(model[0].weight.detach().numpy(),       # the original trained
                               reference[0].weight.detach().numpy(), rtol=1e-4, atol=1e-6)
    scripted.save(tmp_path / "trained.pt")
    torch_scripted.save(str(tmp_path / "torch.pt"))
    np.testing.assert_allclose(kiln.jit.load(tmp_path / "trained.pt")(kiln.tensor(x)).numpy(),
                               torch.jit.load(tmp_path / "torch.pt")(torch.tensor(x)).detach()
                               .numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="TorchScript"):
        kiln.jit.load(tmp_path / "torch.pt")


def test_python_the_exporter_cannot_capture_runs_eagerly_and_save_says_why(tmp_path) -> None:
    def clipped(x):
        if x.sum() > 0:                  # a tensor's value read into Python
            return x * 2
        return x - 1
    scripted = kiln.jit.script(clipped)
    x = kiln.tensor([1.0, 2.0])
    np.testing.assert_array_equal(scripted(x).numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(scripted(-x).numpy(), [-2.0, -3.0])
    with pytest.raises(RuntimeError, match=r"cannot save clipped: .*reads a tensor's value into "
                                           r"Python .* at .*test_jit.py:\d+"):
        kiln.jit.save(scripted, tmp_path / "clipped.pt")
    with pytest.raises(RuntimeError, match="has not been called yet"):
        kiln.jit.script(kiln.nn.Linear(2, 2)).save(tmp_path / "never.pt")
    with pytest.raises(TypeError, match="expected the result of kiln.jit.script"):
        kiln.jit.save(kiln.nn.Linear(2, 2), tmp_path / "plain.pt")
    with pytest.raises(RuntimeError, match="draws random numbers"):
        kiln.jit.trace(lambda x: x + kiln.rand(2), x)


def test_entry_points_warn_as_torch_2_13_does(tmp_path) -> None:
    def messages(call) -> list:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [str(w.message) for w in caught if w.category is DeprecationWarning]
    for lib in (kiln, torch):
        lib.manual_seed(0)
    kiln_net, torch_net = kiln.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    kiln_traced = kiln.jit.trace(kiln_net, kiln.ones(3, 2))
    torch_traced = torch.jit.trace(torch_net, torch.ones(3, 2))
    for make in (lambda lib, net: lib.jit.script(net),
                 lambda lib, net: lib.jit.trace(net, lib.ones(3, 2))):
        ours, theirs = messages(lambda: make(kiln, kiln_net)), messages(lambda: make(torch,
                                                                                    torch_net))
        assert len(ours) == 1 and ours[0] == theirs[0]    # torch's trace adds trace_method's
    assert messages(lambda: kiln.jit.save(kiln_traced, tmp_path / "k.pt")) == \
        messages(lambda: torch.jit.save(torch_traced, str(tmp_path / "t.pt")))
    assert messages(lambda: kiln.jit.load(tmp_path / "k.pt")) == \
        messages(lambda: torch.jit.load(str(tmp_path / "t.pt")))


def test_markers_and_probes_answer_as_torch_jit() -> None:
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.setdefault("torch", []).append(torch.jit.is_tracing())
            return x + 1

    class KilnProbe(kiln.nn.Module):
        def forward(self, x):
            seen.setdefault("kiln", []).append(kiln.jit.is_tracing())
            return x + 1

    torch.jit.trace(Probe(), torch.ones(2))
    kiln.jit.trace(KilnProbe(), kiln.ones(2))
    assert seen["torch"][0] is True and seen["kiln"][0] is True     # then check_trace's eager run
    assert seen["torch"][-1] is False and seen["kiln"][-1] is False
    assert kiln.jit.is_tracing() is torch.jit.is_tracing() is False
    assert kiln.jit.is_scripting() is torch.jit.is_scripting() is False

    def fn(x):
        return x * 3
    for lib in (kiln, torch):
        assert lib.jit.ignore(fn) is fn and lib.jit.unused(fn) is fn
        assert lib.jit.ignore(drop=True)(fn) is fn
        assert lib.jit.export(fn) is fn
        assert lib.jit.wait(lib.jit.fork(fn, lib.tensor(2.0))).item() == 6.0
        assert lib.jit.isinstance([1, 2], list[int]) and not lib.jit.isinstance([1.0], list[int])
    from kiln.jit.annotations import BroadcastingList2, Optional  # noqa: F401

    class WithFinal(kiln.nn.Module):
        size: kiln.jit.Final[int] = 3
    assert WithFinal.size == 3
    with pytest.raises(RuntimeError, match="only implemented for modules in eval mode"):
        kiln.jit.freeze(kiln.jit.script(kiln.nn.Linear(2, 2)))


@pytest.mark.gpu
def test_a_module_on_the_gpu_is_traced_and_saved_from_a_cpu_copy(tmp_path) -> None:
    """The saved program runs on the CPU: a GPU module is exported from a CPU copy, and stays
    on its GPU; the loaded program takes GPU inputs and returns CPU tensors."""
    model, _ = _pair()
    model = model.to("cuda")
    x = kiln.tensor(_inputs(3), device="cuda")
    traced = kiln.jit.trace(model, x)
    assert all(p.device.type == "cuda" for p in model.parameters())
    traced.save(tmp_path / "gpu.pt")
    loaded = kiln.jit.load(tmp_path / "gpu.pt")
    out = loaded(x)
    assert out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), model(x).detach().cpu().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_trace_reads_example_inputs_as_torch_does() -> None:
    """A list of example inputs holds the arguments (the tuning guide's
    `torch.jit.trace(model, [x])`, which kiln passed as one list argument); a tensor is the one
    argument; something that is neither raises saying what trace takes."""
    model, reference = _pair()
    x = _inputs(3)
    traced = kiln.jit.trace(model, [kiln.tensor(x)], check_inputs=[[kiln.tensor(_inputs(2))]])
    expected = torch.jit.trace(reference, [torch.tensor(x)])(torch.tensor(x))
    np.testing.assert_allclose(traced(kiln.tensor(x)).detach().numpy(),
                               expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    pair = kiln.jit.trace(lambda a, b: a * b + 1, [kiln.tensor(x), kiln.tensor(x)])
    np.testing.assert_allclose(pair(kiln.tensor(x), kiln.tensor(x)).numpy(), x * x + 1,
                               rtol=1e-6)
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple"):
        kiln.jit.trace(model, 3)


def test_scripted_function_refuses_a_non_tensor_for_an_unannotated_parameter() -> None:
    """TorchScript types an unannotated parameter as a Tensor: the torch.compile tutorial's
    `torch.jit.script(f2)(x, 3)` raises in PyTorch, and kiln's scripted function (which ran
    it eagerly) now raises the same message; annotated or defaulted parameters take numbers."""
    def f2(x, y):
        return x + y

    def scaled(x, k: int, shift: float = 1.0):
        return x * k + shift

    x = np.arange(4, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(RuntimeError) as theirs:
            torch.jit.script(f2)(torch.tensor(x), 3)
        with pytest.raises(RuntimeError) as ours:
            kiln.jit.script(f2)(kiln.tensor(x), 3)
        # torch goes on with the argument's position, value and the function's declaration
        assert str(theirs.value).startswith(str(ours.value))
        np.testing.assert_array_equal(kiln.jit.script(f2)(kiln.tensor(x), kiln.tensor(x)).numpy(),
                                      2 * x)
        np.testing.assert_array_equal(
            kiln.jit.script(scaled)(kiln.tensor(x), 3, shift=0.5).numpy(),
            torch.jit.script(scaled)(torch.tensor(x), 3, shift=0.5).numpy())
        traced = kiln.jit.trace(f2, (kiln.tensor(x), kiln.tensor(x)))
        assert traced(kiln.tensor(x), kiln.tensor(x)).shape == (4,)
