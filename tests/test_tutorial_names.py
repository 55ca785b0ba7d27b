"""Smaller names PyTorch's tutorials call that kiln lacked (found by reading the tutorials):
each against PyTorch where PyTorch can run it here, else against what it must do."""

import numpy as np
import pytest
import torch

import kiln


def test_module_load_is_what_load_state_dict_swaps_in():
    for assign in (False, True):
        k, t = kiln.zeros(3), torch.zeros(3)
        kv, tv = kiln.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])
        kr, tr = k.module_load(kv, assign=assign), t.module_load(tv, assign=assign)
        assert kr is not k and kr is not kv and tr is not t and tr is not tv
        np.testing.assert_array_equal(kr.numpy(), tr.numpy())
        np.testing.assert_array_equal(k.numpy(), t.numpy())     # copied into self unless assign


def test_gradcheck_imports_from_its_module_path():
    from kiln.autograd.gradcheck import gradcheck, gradgradcheck
    x = kiln.tensor([0.3, -1.2], dtype=kiln.float64, requires_grad=True)
    assert gradcheck(lambda a: (a.sin() * a).sum(), (x,))
    assert gradgradcheck(lambda a: (a.sin() * a).sum(), (x,))


def test_config_and_jit_switches_answer_as_torchs():
    text = kiln.__config__.show()
    assert text.startswith(f"kiln {kiln.__version__} built with:") and "NumPy" in text
    assert f"kiln.get_num_threads() : {kiln.get_num_threads()}" in kiln.__config__.parallel_info()
    for lib in (torch, kiln):
        before = lib.jit.onednn_fusion_enabled()
        lib.jit.enable_onednn_fusion(True)
        assert lib.jit.onednn_fusion_enabled() is True
        lib.jit.enable_onednn_fusion(before)


@pytest.mark.skipif(kiln.cuda.is_available(), reason="checks the answer without a GPU")
def test_emit_nvtx_needs_a_gpu_as_torchs():
    with pytest.raises(AssertionError):
        with torch.autograd.profiler.emit_nvtx():
            pass
    with pytest.raises(RuntimeError, match="NVTX"):
        with kiln.autograd.profiler.emit_nvtx():
            pass
    with kiln.autograd.profiler.emit_nvtx(enabled=False):
        assert kiln.ones(2).sum().item() == 2.0


def test_adaptive_autorange_stops_when_the_times_are_steady():
    from kiln.utils.benchmark import Timer
    blocks = []
    m = Timer("x * 2", globals={"x": kiln.ones(8)}).adaptive_autorange(
        threshold=0.5, max_run_time=2.0, callback=lambda n, t: blocks.append((n, t)))
    assert len(m.raw_times) == len(blocks) >= 3 and m.number_per_run == blocks[0][0]
    assert m.iqr / m.median < 0.5 or sum(t for _, t in blocks) >= 2.0
    # a budget too small for steadiness still ends, after max_run_time
    spent = sum(Timer("sum(range(2000))").adaptive_autorange(
        threshold=0.0, max_run_time=0.2).raw_times)
    assert 0.2 <= spent < 1.0


def test_library_impl_takes_a_library_and_a_name():
    lib = kiln.library.Library("tutorial_names", "DEF")
    lib.define("twice(Tensor x) -> Tensor")

    @kiln.library.impl(lib, "twice", "CPU")
    def twice(x):
        return x * 2

    assert kiln.ops.tutorial_names.twice(kiln.ones(2)).tolist() == [2.0, 2.0]
