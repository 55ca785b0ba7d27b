"""The probes and switches scripts touch before training: torch.accelerator, torch.backends,
default device/dtype, determinism flags, randint's call forms, tensor() from any sequence."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import kiln


def test_accelerator_and_backends_answer_like_a_cpu_only_torch() -> None:
    assert kiln.accelerator.is_available() == kiln.cuda.is_available()
    assert kiln.accelerator.device_count() == kiln.cuda.device_count()
    if not kiln.cuda.is_available():
        assert kiln.accelerator.current_accelerator() is None
    assert kiln.backends.mps.is_available() is False and kiln.backends.mps.is_built() is False
    assert kiln.backends.cudnn.is_available() is False
    assert kiln.backends.openmp.is_available() is True
    kiln.backends.cudnn.benchmark = True
    kiln.backends.cuda.matmul.allow_tf32 = True
    assert kiln.backends.cudnn.benchmark and kiln.backends.cuda.matmul.allow_tf32
    kiln.backends.cudnn.benchmark = False
    kiln.backends.cuda.matmul.allow_tf32 = False


def test_default_dtype_reaches_tensor_and_random_factories() -> None:
    kiln.set_default_dtype(kiln.float64)
    torch.set_default_dtype(torch.float64)
    try:
        for fn in (lambda lib: lib.tensor([1.0]), lambda lib: lib.randn(2),
                   lambda lib: lib.zeros(2), lambda lib: lib.arange(0.0, 1.0, 0.5)):
            assert fn(kiln).dtype.name == str(fn(torch).dtype).replace("torch.", "")
        assert kiln.get_default_dtype() is kiln.float64
    finally:
        kiln.set_default_dtype(kiln.float32)
        torch.set_default_dtype(torch.float32)
    assert kiln.tensor([1.0]).dtype is kiln.float32


def test_default_device_is_used_by_factories_and_restored() -> None:
    assert kiln.get_default_device() == kiln.device("cpu")
    kiln.set_default_device("cpu")
    assert kiln.zeros(2).device == kiln.device("cpu")
    kiln.set_default_device(None)
    assert kiln.get_default_device() == kiln.device("cpu")


@pytest.mark.parametrize("call", [
    lambda lib: lib.randint(10, (3,)),
    lambda lib: lib.randint(10, size=(1,)),
    lambda lib: lib.randint(3, 10, (2, 2)),
    lambda lib: lib.randint(3, 10, size=(4,)),
    lambda lib: lib.randint(low=3, high=10, size=(4,)),
    lambda lib: lib.randint(high=5, size=(2,)),
])
def test_randint_accepts_torch_forms(call) -> None:
    t, k = call(torch), call(kiln)
    assert tuple(k.shape) == tuple(t.shape) and k.dtype is kiln.int64
    low = 3 if tuple(t.shape) in ((2, 2), (4,)) else 0
    assert int(k.min()) >= low and int(k.max()) < 10


@pytest.mark.parametrize("call", [lambda lib: lib.randint(10),
                                  lambda lib: lib.randint(0, 10, 5)])
def test_randint_rejects_what_torch_rejects(call) -> None:
    with pytest.raises(TypeError):
        call(torch)
    with pytest.raises(TypeError):
        call(kiln)


@pytest.mark.parametrize("data", [collections.deque([1.0, 2.0]), range(4),
                                  [collections.deque([1, 2]), (3, 4)], (True, False)])
def test_tensor_reads_any_sequence(data) -> None:
    t, k = torch.tensor(data), kiln.tensor(data)
    assert k.dtype.name == str(t.dtype).replace("torch.", "")
    np.testing.assert_array_equal(k.numpy(), t.numpy())


def test_switches_are_stored_and_read_back() -> None:
    kiln.use_deterministic_algorithms(True)
    assert kiln.are_deterministic_algorithms_enabled()
    kiln.use_deterministic_algorithms(False)
    assert not kiln.are_deterministic_algorithms_enabled()
    kiln.set_float32_matmul_precision("high")
    assert kiln.get_float32_matmul_precision() == "high"
    kiln.set_float32_matmul_precision("highest")
    with pytest.raises(ValueError):
        kiln.set_float32_matmul_precision("fast")
    n = kiln.get_num_threads()
    assert isinstance(n, int) and n >= 1


def test_manual_seed_returns_a_generator_that_reproduces() -> None:
    g = kiln.manual_seed(3)
    assert isinstance(g, kiln.Generator)
    a = kiln.randn(4)
    kiln.manual_seed(3)
    np.testing.assert_array_equal(a.numpy(), kiln.randn(4).numpy())
    gen = kiln.Generator().manual_seed(5)
    b = kiln.rand(3, generator=gen)
    np.testing.assert_array_equal(b.numpy(), kiln.rand(3, generator=kiln.Generator()
                                                       .manual_seed(5)).numpy())


def test_device_flags_of_a_tensor_match_torch() -> None:
    t, k = torch.ones(2), kiln.ones(2)
    for flag in ("is_cpu", "is_cuda", "is_xpu", "is_mps", "is_meta", "is_quantized",
                 "is_sparse"):
        assert getattr(k, flag) == getattr(t, flag), flag


def test_layout_is_strided() -> None:
    assert kiln.ones(2).layout is kiln.strided and repr(kiln.strided) == "kiln.strided"
    assert str(torch.ones(2).layout) == "torch.strided"


def test_out_argument_writes_into_the_given_tensor() -> None:
    a, b = kiln.tensor([1.0, 2.0]), kiln.tensor([3.0, 4.0])
    out = kiln.empty(2)
    r = kiln.add(a, b, out=out)
    assert r is out
    np.testing.assert_array_equal(out.numpy(), [4.0, 6.0])
    m = kiln.empty(0)
    kiln.matmul(kiln.ones(2, 3), kiln.ones(3, 2), out=m)
    assert tuple(m.shape) == (2, 2) and float(m.sum()) == 12.0


def test_factories_write_into_out_in_its_dtype_as_torch() -> None:
    # introyt tensors tutorial: torch.rand(2, 2, out=c) fills c (kiln's rand had no out=)
    def run(lib):
        lib.manual_seed(0)
        c = lib.zeros(2, 2)
        same = lib.rand(2, 2, out=c) is c
        d = lib.zeros(3, dtype=lib.float64)            # drawn as doubles: out's dtype
        lib.randn(3, out=d)
        made = [c, d, lib.randint(0, 10, (2, 3), out=lib.zeros(2, dtype=lib.int64)),
                lib.randperm(5, out=lib.zeros(5, dtype=lib.int64)),
                lib.arange(4, out=lib.zeros(4, dtype=lib.int32)),
                lib.zeros(2, 2, out=lib.ones(4)), lib.ones(3, out=lib.zeros(3)),
                lib.full((2,), 7.5, out=lib.zeros(2, dtype=lib.float64)),
                lib.linspace(0, 1, 5, out=lib.zeros(5)), lib.eye(3, out=lib.zeros(1)),
                lib.empty(2, 3, out=lib.zeros(6)).fill_(1)]
        return same, made
    (k_same, k_made), (t_same, t_made) = run(kiln), run(torch)
    assert k_same and t_same
    for k, t in zip(k_made, t_made):
        assert k.dtype.name == str(t.dtype).removeprefix("torch.")
        np.testing.assert_array_equal(k.numpy(), t.numpy())


def test_dlpack_shares_memory_with_torch_and_numpy() -> None:
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    k = kiln.from_dlpack(t)
    t[0, 0] = 42.0
    assert float(k[0, 0]) == 42.0 and tuple(k.shape) == (2, 3) and k.dtype is kiln.float64
    back = torch.from_dlpack(kiln.to_dlpack(k))
    np.testing.assert_array_equal(back.numpy(), t.numpy())
    a = np.ones(3, dtype=np.float32)
    assert kiln.from_dlpack(a).dtype is kiln.float32
    # writes go through either way, as between torch tensors (a legacy capsule from torch's
    # to_dlpack made a read-only NumPy array, and kiln's own capsule likewise)
    k[1, 1] = -1.0
    assert t[1, 1].item() == -1.0
    shared = kiln.from_dlpack(torch.utils.dlpack.to_dlpack(t))
    shared[0, 1] = 7.0
    assert t[0, 1].item() == 7.0
    mine = kiln.arange(3.0)
    kiln.from_dlpack(kiln.to_dlpack(mine))[2] = 5.0
    torch.utils.dlpack.from_dlpack(kiln.to_dlpack(mine))[0] = 4.0
    assert mine.tolist() == [4.0, 1.0, 5.0]


@pytest.mark.parametrize("name, hint", [("mps", "'cuda'")])
def test_namespaces_kiln_does_not_have_say_what_to_use(name, hint) -> None:
    assert hasattr(torch, name)
    assert not hasattr(kiln, name)          # an AttributeError, as probes expect
    with pytest.raises(AttributeError, match=f"no attribute '{name}': .*{hint}"):
        getattr(kiln, name)


def test_xpu_probes_answer_as_a_torch_build_without_xpu() -> None:
    # profiler recipe: `elif torch.xpu.is_available():` after the CUDA check (kiln raised
    # AttributeError: no attribute 'xpu')
    for name in ("is_available", "device_count", "is_initialized", "is_bf16_supported",
                 "memory_allocated", "empty_cache"):
        assert getattr(kiln.xpu, name)() == getattr(torch.xpu, name)(), name
    assert kiln.xpu.manual_seed(0) is None and kiln.xpu.manual_seed_all(0) is None
    for name in ("current_device", "synchronize", "get_device_name"):
        with pytest.raises(AssertionError):          # torch: "Torch not compiled with XPU"
            getattr(torch.xpu, name)()
        with pytest.raises(RuntimeError, match=f"torch.xpu.{name}: Torch not compiled with XPU"):
            getattr(kiln.xpu, name)()


@pytest.mark.parametrize("make", [
    lambda lib: lib.device(type="cpu"), lambda lib: lib.device(type="cuda", index=1),
    lambda lib: lib.device("cuda:2"), lambda lib: lib.device("cpu"),
    lambda lib: lib.device("cuda", 3)], ids=range(5))
def test_device_constructor_forms_match_torch(make) -> None:
    assert repr(make(kiln)) == repr(make(torch))
    assert str(make(kiln)) == str(make(torch))


def test_tensor_class_prints_under_its_public_name_as_torchs() -> None:
    # introyt tensors tutorial: print(type(x)) shows <class 'torch.Tensor'>; kiln's showed
    # <class 'kiln.tracer.tensor.Tensor'>
    import pickle
    assert repr(type(kiln.empty(3, 4))) == repr(type(torch.empty(3, 4))).replace("torch", "kiln")
    assert kiln.Tensor.__module__ == "kiln" and kiln.Tensor.__qualname__ == "Tensor"
    back = pickle.loads(pickle.dumps(kiln.arange(3.0)))
    assert type(back) is kiln.Tensor and back.tolist() == [0.0, 1.0, 2.0]
