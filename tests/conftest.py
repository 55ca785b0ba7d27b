"""Shared pytest setup: the `gpu` marker skips without a CUDA device, every kernel run in
Triton's interpreter is checked for writes outside its buffers, one kernel cache and one
bytecode cache serve the whole session, and `pytest -n` workers share the cores' threads."""

import os

import numpy as np
import pytest

from kiln.runtime import triton_launch
from kiln.runtime.device import cuda_is_available

CANARY, GUARD = 0xAB, 256       # bytes on each side of every buffer a kernel sees


def _share_the_cores() -> None:
    """Under `pytest -n N` each worker's thread pools (NumPy's BLAS, torch's and the C
    kernels' OpenMP) get the worker's share of the cores: N workers each waking one thread
    per core made small matmuls wait on each other's spinning threads (a 60 us product took
    1 ms on average, 68 ms at worst, with two workers on two cores). Explicit thread
    settings (OMP_NUM_THREADS, a test's own set_num_threads) are respected."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    share = max(1, (os.cpu_count() or 1) // workers)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(share)       # read by libraries not loaded yet (torch's OpenMP)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    global _BLAS_LIMIT
    _BLAS_LIMIT = threadpool_limits(limits=share, user_api="blas")    # NumPy's, loaded already


_BLAS_LIMIT = None
_share_the_cores()


def pytest_collection_modifyitems(config, items):
    if cuda_is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # the marker, not `"gpu" in item.keywords`: keywords hold the names of the folders
        # above a test too, so a checkout in a folder named "gpu" would skip every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _guarded_copy(array: np.ndarray, keep: list) -> np.ndarray:
    raw = np.full(array.nbytes + 2 * GUARD, CANARY, dtype=np.uint8)
    inner = raw[GUARD:GUARD + array.nbytes].view(array.dtype).reshape(array.shape)
    inner[...] = array
    keep.append(raw)
    return inner


@pytest.fixture(autouse=True)
def _guard_interpreter_writes(monkeypatch):
    """Triton's interpreter stores through raw pointers: a kernel that writes past its buffer
    corrupts the heap and crashes pytest much later, far from the cause. Run each interpreted
    kernel on copies surrounded by canary bytes and fail at the launch that touched them."""
    launch = triton_launch.launch

    def guarded(tk, inputs, outputs, backend="interpreter"):
        arrays = list(inputs) + list(outputs)
        if backend != "interpreter" or not all(isinstance(a, np.ndarray) for a in arrays):
            return launch(tk, inputs, outputs, backend)      # GPU memory: nothing to guard
        # NumPy memory: the interpreter's, or fake CUDA's arrays (np.asarray: their NumPy view)
        raws: list = []
        ins = [_guarded_copy(np.ascontiguousarray(np.asarray(a)), raws) for a in inputs]
        outs = [_guarded_copy(np.ascontiguousarray(np.asarray(a)), raws) for a in outputs]
        launch(tk, ins, outs, backend)
        for raw in raws:
            if (raw[:GUARD] != CANARY).any() or (raw[-GUARD:] != CANARY).any():
                pytest.fail(f"kernel {tk.name} wrote outside its buffers:\n{tk.source}")
        for out, result in zip(outputs, outs):
            np.asarray(out)[...] = result

    monkeypatch.setattr(triton_launch, "launch", guarded)


@pytest.fixture
def nvidia_backend():
    """For a test that builds kernels for an NVIDIA GPU ahead of time (no GPU needed): skips it
    where this Triton build cannot target CUDA."""
    try:
        import triton.backends
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as e:          # pragma: no cover - depends on the Triton build
        pytest.skip(f"this Triton cannot build for CUDA: {e!r}")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")


@pytest.fixture(autouse=True, scope="session")
def _session_kernel_cache(tmp_path_factory):
    """Compiled kernels go to one temporary cache for the session (subprocesses included):
    nothing is built twice, and nothing is written to the user's ~/.cache. An explicit
    KILN_CACHE_DIR (a CI cache) is respected."""
    if os.environ.get("KILN_CACHE_DIR"):
        yield
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):     # pytest -n: the workers share one cache
        # (builds land by atomic renames, so two workers building one kernel is harmless)
        cache = tmp_path_factory.getbasetemp().parent / "kiln_cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("kiln_cache")
    os.environ["KILN_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        os.environ.pop("KILN_CACHE_DIR", None)


@pytest.fixture(autouse=True, scope="session")
def _session_bytecode_cache(tmp_path_factory):
    """Under PYTHONDONTWRITEBYTECODE every test's subprocess compiled kiln's sources again (about
    a second of CPU per process): the subprocesses share one bytecode cache in the session's
    temporary folder instead, so still nothing is written beside the sources. Under a prefix
    the bytecode installed beside site-packages is not read: the first process to import a
    library compiles it into the cache, once a session. An explicit PYTHONPYCACHEPREFIX is
    respected."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or os.environ.get("PYTHONPYCACHEPREFIX"):
        yield
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):     # the workers share one (pyc writes are atomic)
        cache = tmp_path_factory.getbasetemp().parent / "pycache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("pycache")
    off = os.environ.pop("PYTHONDONTWRITEBYTECODE")
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    try:
        yield
    finally:
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = off
