"""The small torch modules scripts reach for: torch.cuda (and its amp and nccl), torch.random,
torch.version, torch.accelerator's device index, torch.distributed's default backend and
torch.nn.parallel.data_parallel, answered as PyTorch 2.13 answers them.

Without a GPU, kiln is compared with the CPU build of torch; the memory counters are checked
under tests/fake_cuda.py (`pytest -p tests.fake_cuda`) or a real GPU, against the bytes the
tensors hold."""

from __future__ import annotations

import importlib
import sys
import warnings

import numpy as np
import pytest
import torch

import kiln
from kiln.runtime.device import cuda_is_available, cupy_module

no_gpu = pytest.mark.skipif(cuda_is_available(), reason="checks the answers without a GPU")


def _future_warnings(make) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if w.category is FutureWarning]


def test_kiln_cuda_is_one_importable_module_with_amp_and_nccl_submodules() -> None:
    for name in ("kiln.cuda", "kiln.cuda.amp", "kiln.cuda.nccl", "kiln.random", "kiln.version",
                 "kiln.cpu", "kiln.cpu.amp", "kiln.jit", "kiln.jit.annotations", "kiln.hub",
                 "kiln.utils.model_zoo"):
        module = importlib.import_module(name)
        assert sys.modules[name] is module
    assert kiln.cuda is sys.modules["kiln.cuda"] and kiln.cuda.amp is sys.modules["kiln.cuda.amp"]
    from kiln.cuda.amp import GradScaler, autocast, custom_bwd, custom_fwd  # noqa: F401
    assert kiln.accelerator.device_count() == kiln.cuda.device_count()
    for name in ("is_available", "device_count", "current_device", "synchronize"):
        assert getattr(kiln.cpu, name)() == getattr(torch.cpu, name)(), name
    from kiln.cpu.amp import GradScaler as CpuScaler, autocast as cpu_autocast  # noqa: F401


def test_older_cuda_amp_spellings_warn_with_torchs_messages() -> None:
    calls = {
        "GradScaler": lambda lib: lib.cuda.amp.GradScaler(init_scale=1024.0),
        "autocast": lambda lib: lib.cuda.amp.autocast(enabled=False),
        "custom_fwd": lambda lib: lib.cuda.amp.custom_fwd(lambda ctx, x: x),
        "custom_fwd(cast_inputs=)": lambda lib: lib.cuda.amp.custom_fwd(cast_inputs=lib.float32),
        "custom_bwd": lambda lib: lib.cuda.amp.custom_bwd(lambda ctx, g: g),
    }
    for name, call in calls.items():
        ours, theirs = _future_warnings(lambda: call(kiln)), _future_warnings(lambda: call(torch))
        assert ours == theirs and len(ours) == 1, name


@no_gpu
def test_cuda_amp_grad_scaler_takes_init_scale_first_and_disables_itself_as_torch() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = kiln.cuda.amp.GradScaler(512.0), torch.cuda.amp.GradScaler(512.0)
    assert isinstance(ours, kiln.amp.GradScaler)
    assert ours.is_enabled() == theirs.is_enabled() is False
    assert ours.get_scale() == theirs.get_scale()
    enabled = kiln.cuda.amp.GradScaler.__mro__[1]("cpu", 512.0)     # the same class, enabled
    assert enabled.get_scale() == 512.0


@no_gpu
def test_cuda_probes_without_a_gpu_answer_as_torch() -> None:
    for name, args in (("device_count", ()), ("is_available", ()), ("memory_allocated", ()),
                       ("max_memory_allocated", ()), ("memory_reserved", ()),
                       ("max_memory_reserved", ()), ("empty_cache", ()),
                       ("is_bf16_supported", ()), ("is_bf16_supported", (False,)),
                       ("memory_stats", ()), ("is_initialized", ())):
        assert getattr(kiln.cuda, name)(*args) == getattr(torch.cuda, name)(*args), name
    for name, args in (("current_device", ()), ("set_device", (0,)), ("get_device_name", ()),
                       ("get_device_properties", (0,)), ("get_device_capability", ()),
                       ("synchronize", ()), ("reset_peak_memory_stats", ()),
                       ("get_rng_state", ()), ("mem_get_info", ()), ("Event", ())):
        with pytest.raises(RuntimeError, match=f"torch.cuda.{name}: no CUDA GPU"):
            getattr(kiln.cuda, name)(*args)
        with pytest.raises(Exception):              # torch's CPU build: its own error types
            getattr(torch.cuda, name)(*args)
    for lib in (kiln, torch):
        with pytest.raises(ValueError, match="Expected a cuda device, but got: cpu"):
            lib.cuda.set_device("cpu")
        assert lib.cuda.set_device(-1) is None          # a negative index: nothing to do
    with pytest.raises(RuntimeError, match="NCCL is not available"):
        kiln.cuda.nccl.version()
    assert kiln.cuda.nccl.is_available() is False
    with pytest.raises(Exception):
        torch.cuda.nccl.version()


def test_cuda_seeding_seeds_the_one_generator_every_device_draws_from() -> None:
    kiln.cuda.manual_seed_all(7)
    ours = kiln.rand(5).numpy()
    kiln.cuda.manual_seed(7)
    again = kiln.randn(3).numpy()
    torch.manual_seed(7)
    np.testing.assert_array_equal(ours, torch.rand(5).numpy())
    torch.manual_seed(7)
    np.testing.assert_allclose(again, torch.randn(3).numpy(), rtol=1e-6)
    assert kiln.cuda.initial_seed() == 7


def test_nccl_version_decodes_nccls_version_code(monkeypatch) -> None:
    """torch.cuda.nccl.version() is (major, minor, patch); NCCL's code packs them in decimal,
    wider from 2.9 on."""
    import types
    for code, want in ((21805, (2, 18, 5)), (22703, (2, 27, 3)), (2708, (2, 7, 8))):
        fake = types.SimpleNamespace(get_version=lambda code=code: code)
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", fake)
        assert kiln.cuda.nccl.version() == want


def test_random_module_forks_and_seeds_as_torch_random() -> None:
    for lib in (kiln, torch):
        assert lib.random.manual_seed(3) is not None
    with kiln.random.fork_rng(), torch.random.fork_rng():
        inside = kiln.rand(4).numpy(), torch.rand(4).numpy()
    after = kiln.rand(4).numpy(), torch.rand(4).numpy()
    np.testing.assert_array_equal(inside[0], inside[1])
    np.testing.assert_array_equal(after[0], after[1])
    np.testing.assert_array_equal(inside[0], after[0])      # the state was put back
    with kiln.random.fork_rng(enabled=False):
        kiln.rand(2)
    kiln.random.manual_seed(3)
    kiln.rand(4)
    state = kiln.random.get_rng_state()
    a = kiln.rand(3).numpy()
    kiln.random.set_rng_state(state)
    np.testing.assert_array_equal(kiln.rand(3).numpy(), a)
    assert kiln.random.initial_seed() == 3
    with pytest.raises(RuntimeError, match="no device type 'xla'"):
        with kiln.random.fork_rng(device_type="xla"):
            pass


def test_version_module_answers_as_torch_version() -> None:
    assert kiln.version.__version__ == kiln.__version__
    assert kiln.version.debug is torch.version.debug is False
    assert kiln.version.hip is torch.version.hip is None
    if not cuda_is_available():
        assert kiln.version.cuda is torch.version.cuda is None


@no_gpu
def test_accelerator_device_index_without_an_accelerator_raises_as_torch() -> None:
    for lib in (kiln, torch):
        with lib.accelerator.device_index(None):            # None: nothing to switch
            pass
        for call in (lambda: lib.accelerator.current_device_index(),
                     lambda: lib.accelerator.set_device_index(0),
                     lambda: lib.accelerator.synchronize(),
                     lambda: lib.accelerator.device_index(0).__enter__()):
            with pytest.raises(RuntimeError, match="Cannot access accelerator device when "
                                                   "none is available"):
                call()


def test_default_backend_for_device_is_torchs() -> None:
    for device in ("cpu", "cuda", "cuda:1"):
        assert kiln.distributed.get_default_backend_for_device(device) == \
            torch.distributed.get_default_backend_for_device(device)
    assert kiln.distributed.get_default_backend_for_device(kiln.device("cuda")) == "nccl"
    for lib in (kiln, torch):
        with pytest.raises(ValueError, match="Default backend not registered for device : meta"):
            lib.distributed.get_default_backend_for_device("meta")


def test_data_parallel_on_one_device_calls_the_module() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    model = kiln.nn.Sequential(kiln.nn.Linear(4, 3), kiln.nn.Tanh())
    model.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = kiln.nn.parallel.data_parallel(model, kiln.tensor(x), device_ids=[0])
    np.testing.assert_allclose(out.detach().numpy(), ref(torch.tensor(x)).detach().numpy(),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one device per process"):
        kiln.nn.parallel.data_parallel(model, kiln.tensor(x), device_ids=[0, 1])


# ----------------------------------------------------------------------------- with a GPU
# (a real one, or tests/fake_cuda.py's stand-in)

@pytest.mark.gpu
def test_memory_counters_follow_the_bytes_tensors_hold() -> None:
    kiln.cuda.synchronize()
    before = kiln.cuda.memory_allocated()
    kiln.cuda.reset_peak_memory_stats()
    assert kiln.cuda.max_memory_allocated() == before
    a = kiln.zeros(1000, 250, device="cuda")                  # 1,000,000 bytes
    assert kiln.cuda.memory_allocated() - before == pytest.approx(1_000_000, rel=0.01)
    b = kiln.ones(500, 250, device="cuda")                    # 500,000 more
    peak = kiln.cuda.memory_allocated()
    assert peak - before == pytest.approx(1_500_000, rel=0.01)
    del a, b
    assert kiln.cuda.memory_allocated() == pytest.approx(before, abs=10_000)
    assert kiln.cuda.max_memory_allocated() == peak           # the high-water mark stays
    assert kiln.cuda.memory_reserved() >= kiln.cuda.memory_allocated()
    assert kiln.cuda.max_memory_reserved() >= peak
    kiln.cuda.reset_peak_memory_stats()
    assert kiln.cuda.max_memory_allocated() == kiln.cuda.memory_allocated()
    stats = kiln.cuda.memory_stats()
    assert stats["allocated_bytes.all.current"] == kiln.cuda.memory_allocated()
    kiln.cuda.empty_cache()


@pytest.mark.gpu
def test_device_selection_on_a_gpu() -> None:
    count = kiln.cuda.device_count()
    assert count >= 1 and kiln.accelerator.device_count() == count
    kiln.cuda.set_device(0)
    kiln.cuda.set_device("cuda:0")
    assert kiln.cuda.current_device() == 0 == kiln.accelerator.current_device_index()
    with kiln.cuda.device(0), kiln.accelerator.device_index(0):
        assert kiln.cuda.current_device() == 0
    with pytest.raises(RuntimeError, match=f"device {count} does not exist"):
        kiln.cuda.set_device(count)
    assert kiln.cuda.is_bf16_supported() is False             # kiln has no CUDA bfloat16
    state = kiln.cuda.get_rng_state()
    a = kiln.rand(3, device="cuda").cpu().numpy()
    kiln.cuda.set_rng_state(state)
    np.testing.assert_array_equal(kiln.rand(3, device="cuda").cpu().numpy(), a)
    kiln.cuda.synchronize()
    kiln.accelerator.synchronize()


@pytest.mark.gpu
def test_device_properties_are_read_from_cupys_runtime(monkeypatch) -> None:
    """CuPy's getDeviceProperties dict (CUDA's cudaDeviceProp field names) becomes torch's
    fields; the fake GPU has no properties, so it is given a dict shaped as CuPy's."""
    runtime = cupy_module().cuda.runtime
    if not hasattr(runtime, "getDeviceProperties"):
        props = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0,
                 "totalGlobalMem": 85_000_000_000, "multiProcessorCount": 132,
                 "warpSize": 32, "l2CacheSize": 52_428_800}
        monkeypatch.setattr(runtime, "getDeviceProperties", lambda i: props, raising=False)
        p = kiln.cuda.get_device_properties(0)
        assert (p.name, p.major, p.minor, p.total_memory, p.multi_processor_count) == (
            "NVIDIA H100 80GB HBM3", 9, 0, 85_000_000_000, 132)
    name = kiln.cuda.get_device_name()
    assert isinstance(name, str) and name == kiln.cuda.get_device_properties().name
    assert kiln.cuda.get_device_capability() == (kiln.cuda.get_device_properties(0).major,
                                                 kiln.cuda.get_device_properties(0).minor)
    runtime_has = hasattr(runtime, "memGetInfo")
    if not runtime_has:          # the fake GPU: CuPy's (free, total) pair
        monkeypatch.setattr(runtime, "memGetInfo", lambda: (1_000, 85_000_000_000), raising=False)
    free, total = kiln.cuda.mem_get_info()
    assert 0 <= free <= total and (runtime_has or (free, total) == (1_000, 85_000_000_000))


# ----------------------------------------------------------------------------- under kiln run

def test_the_amp_and_jit_pattern_script_runs_under_kiln_run_as_under_torch(tmp_path) -> None:
    """tests/scripts/standalone/amp_jit_pattern.py: `from torch.cuda.amp import GradScaler,
    autocast`, `Tensor | None` annotations, training, then torch.jit.trace + save + load. From
    the same seed kiln prints torch's losses (it draws PyTorch's random numbers), and its
    loaded program computes what the model does."""
    from tests.test_kiln_run import ROOT, kiln_run, printed_losses, torch_run
    script = ROOT / "tests" / "scripts" / "standalone" / "amp_jit_pattern.py"
    reference = torch_run(script, "--out", str(tmp_path / "torch.pt"), cwd=tmp_path)
    done = kiln_run(script, "--out", str(tmp_path / "kiln.pt"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(printed_losses(done.stdout)) == 3
    np.testing.assert_allclose(printed_losses(done.stdout), printed_losses(reference),
                               rtol=1e-4, atol=1e-5)
    diff = float(done.stdout.split("Loaded model max difference: ")[1].split()[0])
    assert diff <= 1e-5
    assert "FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated" in done.stderr
    assert (tmp_path / "kiln.pt").exists()


def test_kiln_run_puts_the_scripts_folder_first_for_its_sibling_modules(tmp_path) -> None:
    """pytorch/examples word_language_model's main.py imports `data` and `model` from its own
    folder, under `if __name__ == "__main__":`; run from another working directory, as
    `python main.py` would be."""
    from tests.test_kiln_run import kiln_run
    folder = tmp_path / "word_language_model"
    folder.mkdir()
    (folder / "model.py").write_text(
        "import torch.nn as nn\n"
        "from torch import Tensor\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embed = nn.Embedding(10, 4)\n"
        "    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:\n"
        "        return self.embed(x).sum() if h is None else h\n")
    (folder / "data.py").write_text("WORDS = [1, 2, 3]\n")
    (folder / "main.py").write_text(
        "import os, sys\n"
        "import torch, torch.random, torch.version, torch.cuda.nccl, torch.hub\n"
        "import data\n"
        "import model\n"
        "def main():\n"
        "    torch.random.manual_seed(0)\n"
        "    net = model.Tiny()\n"
        "    out = net(torch.tensor(data.WORDS))\n"
        "    print(sys.path[0] == os.path.dirname(os.path.abspath(__file__)), type(out).__name__,\n"
        "          torch.version.cuda, torch.jit.is_scripting(), callable(torch.hub.get_dir))\n"
        "if __name__ == '__main__':\n"
        "    main()\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = kiln_run(folder / "main.py", cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    first_dir, kind, cuda, scripting, hub = done.stdout.split()
    assert (first_dir, kind, scripting, hub) == ("True", "Tensor", "False", "True")
    assert cuda == "None" or cuda.replace(".", "").isdigit()      # CuPy's CUDA runtime, if any


@pytest.mark.gpu
def test_events_time_the_work_between_them() -> None:
    start, end = kiln.cuda.Event(enable_timing=True), kiln.cuda.Event(enable_timing=True)
    start.record()
    x = kiln.ones(256, 256, device="cuda")
    for _ in range(3):
        x = x @ x / 256
    end.record()
    end.synchronize()
    assert end.query() and 0.0 <= start.elapsed_time(end) < 60_000
    np.testing.assert_allclose(x.cpu().numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="enable_timing=True"):
        kiln.cuda.Event().elapsed_time(end)


def test_torch_functional_module_holds_kilns_functions_with_torchs_values():
    # introyt modelsyt tutorial: `import torch.functional as F` (kiln run: no 'torch.functional')
    import kiln.functional as kF
    import torch.functional as tF
    assert set(kF.__all__) == set(tF.__all__) - {"pca_lowrank", "svd_lowrank"}
    assert kiln.functional is kF and kF.einsum is kiln.einsum and kF.split is kiln.split
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for fn in (lambda F, lib: F.einsum("ij,kj->ik", lib.tensor(a), lib.tensor(a)),
               lambda F, lib: F.meshgrid(lib.tensor(a[0]), lib.tensor(a[1]), indexing="ij")[1],
               lambda F, lib: F.split(lib.tensor(a), [1, 2])[1],
               lambda F, lib: F.norm(lib.tensor(a), dim=1),
               lambda F, lib: F.cdist(lib.tensor(a), lib.tensor(a[:2])),
               lambda F, lib: F.unique(lib.tensor([3, 1, 3, 2]))):
        np.testing.assert_allclose(fn(kF, kiln).numpy(), fn(tF, torch).numpy(), rtol=1e-6)


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_elastic_record_writes_the_error_file_and_raises(lib, tmp_path, monkeypatch):
    import importlib
    errors = importlib.import_module(f"{lib.__name__}.distributed.elastic.multiprocessing.errors")
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    @errors.record
    def main(fail):
        if fail == "exit0":
            raise SystemExit(0)
        if fail:
            raise ValueError("bad batch")
        return 7

    assert main(None) == 7 and main("exit0") is None and not path.exists()
    with pytest.raises(ValueError, match="bad batch"):
        main("boom")
    import json
    message = json.loads(path.read_text())["message"]
    assert "bad batch" in message["message"]
    assert "ValueError" in message["extraInfo"]["py_callstack"]


def test_small_utility_modules_answer_as_torchs():
    import kiln.autograd.profiler
    import kiln.utils.deterministic
    import kiln.utils.dlpack
    import torch.utils.deterministic
    import torch.utils.dlpack
    assert kiln.autograd.profiler.record_function is kiln.profiler.record_function
    assert kiln.utils.deterministic.fill_uninitialized_memory is \
        torch.utils.deterministic.fill_uninitialized_memory is True
    for name in ("kDLCPU", "kDLCUDA"):
        assert int(getattr(kiln.utils.dlpack.DLDeviceType, name)) == \
            int(getattr(torch.utils.dlpack.DLDeviceType, name))
    x = kiln.arange(4.0)
    y = kiln.utils.dlpack.from_dlpack(kiln.utils.dlpack.to_dlpack(x))
    y[0] = 9.0
    assert x.tolist() == [9.0, 1.0, 2.0, 3.0]         # shared memory, as torch's
