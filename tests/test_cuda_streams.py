"""kiln.cuda's streams, NVTX ranges, legacy cuda tensor types and memory extras: without a GPU
they answer or refuse as PyTorch's CUDA-less build does; with one (a real GPU, or
tests/fake_cuda.py's stand-in, which runs every stream's work at once and so cannot see a
missing wait between streams) work queued inside `with kiln.cuda.stream(s)` goes to `s`."""

import numpy as np
import pytest
import torch

import kiln

GPU = kiln.cuda.is_available()


@pytest.mark.skipif(GPU, reason="checks the answers without a GPU")
def test_without_a_gpu_as_torch_without_cuda():
    assert kiln.cuda.is_current_stream_capturing() is False
    assert kiln.cuda.get_arch_list() == [] and kiln.cuda.memory_cached() == 0
    assert kiln.cuda.max_memory_cached() == 0
    for make in (lambda lib: lib.cuda.Stream(), lambda lib: lib.cuda.current_stream()):
        with pytest.raises((RuntimeError, AssertionError)):
            make(torch)
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            make(kiln)
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError, match="NVTX functions not installed"):
            lib.cuda.nvtx.range_push("step")
        with pytest.raises(TypeError, match="not available"):
            lib.cuda.FloatTensor(2)
        assert not isinstance(lib.ones(1), lib.cuda.FloatTensor)
        assert isinstance(lib.ones(1), lib.FloatTensor)
    kiln.cuda.ipc_collect()
    assert kiln.cuda.OutOfMemoryError is kiln.OutOfMemoryError
    for lib in (torch, kiln):               # an int is a cuda device index: none here
        with pytest.raises(RuntimeError):
            lib.ones(2).to(0)
        assert lib.ones(2).is_pinned() is False
        with pytest.raises(RuntimeError, match="Cannot access accelerator device"):
            lib.ones(2).pin_memory()


@pytest.mark.gpu
def test_work_inside_a_stream_block_is_queued_there():
    from kiln.runtime.device import cupy_module
    side = kiln.cuda.Stream()
    main = kiln.cuda.current_stream()
    assert side != main and side.cuda_stream != 0
    x = kiln.arange(12.0, device="cuda").reshape(3, 4)
    side.wait_stream(main)                      # x is made on the main stream
    with kiln.cuda.stream(side):
        assert kiln.cuda.current_stream() == side
        assert cupy_module().cuda.get_current_stream().ptr == side.cuda_stream
        y = (x * 2).sum(0)
    main.wait_stream(side)
    assert kiln.cuda.current_stream() == main
    np.testing.assert_array_equal(y.cpu().numpy(), [24.0, 30.0, 36.0, 42.0])
    event = side.record_event()
    event.wait()
    event.synchronize()
    assert event.query() and side.query()
    side.synchronize()
    assert kiln.cuda.default_stream().cuda_stream == 0
    with kiln.cuda.stream(None):                # None changes nothing, as in torch
        assert kiln.cuda.current_stream() == main


@pytest.mark.gpu
def test_nvtx_ranges_nest():
    assert kiln.cuda.nvtx.range_push("outer") == 0
    assert kiln.cuda.nvtx.range_push("inner") == 1
    assert kiln.cuda.nvtx.range_pop() == 1
    with kiln.cuda.nvtx.range("step {}", 3):
        kiln.cuda.nvtx.mark("here")
    assert kiln.cuda.nvtx.range_pop() == 0
    import sys
    fake = sys.modules.get("tests.fake_cuda")
    if fake is not None and fake.cupy.cuda.nvtx.RangePush is fake._nvtx_push:   # the stand-in
        assert fake.NVTX_LOG[-7:] == [("push", "outer"), ("push", "inner"), ("pop", None),
                                      ("push", "step 3"), ("mark", "here"), ("pop", None),
                                      ("pop", None)]


@pytest.mark.gpu
def test_legacy_cuda_types_and_memory_extras():
    t = kiln.cuda.FloatTensor(2, 3)
    assert t.device.type == "cuda" and t.dtype == kiln.float32 and tuple(t.shape) == (2, 3)
    assert isinstance(t, kiln.cuda.FloatTensor) and not isinstance(t, kiln.FloatTensor)
    assert kiln.cuda.LongTensor([1, 2]).tolist() == [1, 2]
    assert kiln.cuda.memory_cached() == kiln.cuda.memory_reserved()
    assert "Allocated memory" in kiln.cuda.memory_summary()
    kiln.cuda.set_per_process_memory_fraction(0.5)
    try:
        assert kiln.cuda.get_per_process_memory_fraction() == pytest.approx(0.5, rel=1e-3)
    finally:
        kiln.cuda.set_per_process_memory_fraction(1.0)
    with pytest.raises(ValueError, match="Invalid fraction"):
        kiln.cuda.set_per_process_memory_fraction(1.5)
    assert all(a.startswith("sm_") for a in kiln.cuda.get_arch_list())
    assert kiln.cuda.is_current_stream_capturing() is False


@pytest.mark.skipif(GPU, reason="the CPU stream is the default only without a GPU")
@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_generic_stream_and_event_on_the_cpu(lib):
    s = lib.Stream()
    assert (s.device_type, s.device_index, s.stream_id) == (0, -1, 0)
    assert s.query() and s == lib.Stream("cpu") and hash(s) == hash(lib.Stream())
    s.synchronize()
    with s:
        assert lib.ones(2).sum().item() == 2.0
    event = lib.Event()
    assert event.query()
    for record in (event.record, s.record_event):
        with pytest.raises(RuntimeError, match="cpu backend doesn't support events"):
            record()


@pytest.mark.gpu
def test_generic_stream_on_cuda_is_a_cuda_stream():
    s = kiln.Stream("cuda")
    assert s.device_type == 1 and s.stream_id != 0
    with s:
        assert kiln.cuda.current_stream().cuda_stream == s.stream_id
        y = kiln.ones(4, device="cuda") * 3
    e = s.record_event()
    kiln.Stream("cuda").wait_event(e)
    e.synchronize()
    assert e.query() and y.sum().item() == 12.0


@pytest.mark.gpu
def test_pin_memory_copies_into_page_locked_memory():
    x = kiln.arange(6.0).reshape(2, 3)
    assert not x.is_pinned()
    p = x.pin_memory()
    assert p.is_pinned() and p.device.type == "cpu" and p.tolist() == x.tolist()
    assert p.pin_memory() is p                         # pinned already: itself
    assert p[1:].is_pinned()                           # a view of pinned memory is pinned
    x.add_(1)
    assert p[0, 0].item() == 0.0                       # a copy, not a view
    np.testing.assert_array_equal(p.to("cuda").cpu().numpy(), np.arange(6.0).reshape(2, 3))
    w = kiln.ones(3, requires_grad=True)
    (w.pin_memory() * 2).sum().backward()              # differentiable, as a copy
    assert w.grad.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="only dense CPU tensors can be pinned"):
        kiln.ones(2, device="cuda").pin_memory()


@pytest.mark.gpu
def test_record_stream_keeps_the_memory_until_the_streams_work_is_done():
    from kiln.runtime import device
    side = kiln.cuda.Stream()
    x = kiln.arange(8.0, device="cuda")
    side.wait_stream(kiln.cuda.current_stream())
    with kiln.cuda.stream(side):
        y = x * 2
    x.record_stream(side)
    array = x._data
    del x
    # held after the tensor is gone, with an event recorded on the stream that uses it
    assert any(a is array for _, a in device._IN_USE)
    kiln.cuda.current_stream().wait_stream(side)
    assert y.cpu().tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
    with pytest.raises(TypeError, match="expected a kiln.cuda.Stream"):
        y.record_stream(kiln.cuda.current_stream()._stream)
    with pytest.raises(RuntimeError, match="expected a cuda tensor"):
        kiln.ones(2).record_stream(side)


@pytest.mark.skipif(GPU, reason="checks the answers without a GPU")
def test_without_a_gpu_graphs_are_refused_as_torch_without_cuda():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        kiln.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        kiln.cuda.graph_pool_handle()
    # not capturing: an optimizer step asks, and takes its usual update (equal to torch's)
    model = kiln.nn.Linear(2, 2)
    ref = torch.nn.Linear(2, 2)
    ref.load_state_dict({k: torch.tensor(v.numpy()) for k, v in model.state_dict().items()})
    for lib, m in ((kiln, model), (torch, ref)):
        opt = lib.optim.Adam(m.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            m(lib.ones(1, 2)).square().sum().backward()
            opt.step()
    np.testing.assert_allclose(model.weight.detach().numpy(), ref.weight.detach().numpy(),
                               rtol=1e-6)


@pytest.mark.skipif(GPU, reason="checks the answers without a GPU")
def test_cuda_extras_without_a_gpu_answer_as_torch_without_cuda():
    for lib in (torch, kiln):
        assert lib.cuda.is_tf32_supported() is False
        assert lib.cuda.default_generators == ()
        assert lib.cuda.has_half is True and lib.cuda.has_magma is False
        assert lib.cuda.memory_stats_as_nested_dict() == {}
        with lib.cuda.device_of(lib.ones(2)):        # a CPU tensor: nothing changes
            pass
        with pytest.raises(ModuleNotFoundError, match="nvidia-ml-py does not seem to be "
                           "installed"):
            lib.cuda.utilization()
        with pytest.raises((RuntimeError, AssertionError)):
            lib.cuda.caching_allocator_alloc(8)
        with pytest.raises((RuntimeError, AssertionError)):
            lib.cuda.can_device_access_peer(0, 0)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        kiln.cuda.MemPool()


@pytest.mark.gpu
def test_mem_pools_raw_allocations_and_the_sync_debug_mode():
    pool = kiln.cuda.MemPool()
    assert pool.used_bytes() == 0
    with kiln.cuda.use_mem_pool(pool):
        x = kiln.ones(1000, device="cuda")
    assert pool.used_bytes() >= 4000
    y = x * 2                                   # outside the block: the default pool
    assert pool.used_bytes() < 8000
    g = kiln.cuda.CUDAGraph()
    with kiln.cuda.graph(g, pool=pool):         # a capture can allocate from it too
        z = y + x
    g.replay()
    assert z.sum().item() == 3000.0 and pool.used_bytes() >= 8000
    with pytest.raises(TypeError, match="expected a kiln.cuda.MemPool"):
        with kiln.cuda.use_mem_pool(object()):
            pass

    ptr = kiln.cuda.caching_allocator_alloc(256)
    assert isinstance(ptr, int) and ptr != 0
    kiln.cuda.caching_allocator_delete(ptr)
    with pytest.raises(ValueError, match="was not allocated"):
        kiln.cuda.caching_allocator_delete(ptr)

    flat = kiln.cuda.memory_stats()
    nested = kiln.cuda.memory_stats_as_nested_dict()
    for key, value in flat.items():
        a, b, c = key.split(".")
        assert nested[a][b][c] == value
    assert kiln.cuda.get_allocator_backend() == "native"
    assert kiln.cuda.can_device_access_peer(0, 0) is False
    with kiln.cuda.device_of(x):
        assert kiln.cuda.current_device() == 0

    t = kiln.arange(4.0, device="cuda")
    assert kiln.cuda.get_sync_debug_mode() == 0
    try:
        kiln.cuda.set_sync_debug_mode("warn")
        with pytest.warns(UserWarning, match=r"synchronizing CUDA operation \(item\(\)\)"):
            assert t.sum().item() == 6.0
        kiln.cuda.set_sync_debug_mode("error")
        assert kiln.cuda.get_sync_debug_mode() == 2
        with pytest.raises(RuntimeError, match="synchronizing CUDA operation.*to the CPU"):
            t.cpu()
        with pytest.raises(RuntimeError, match="invalid value of debug_mode"):
            kiln.cuda.set_sync_debug_mode("loud")
    finally:
        kiln.cuda.set_sync_debug_mode("default")
    assert t.cpu().tolist() == [0.0, 1.0, 2.0, 3.0]
