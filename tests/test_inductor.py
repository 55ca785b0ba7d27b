"""kiln._inductor (torch._inductor's import path): fresh_inductor_cache gives a block an empty
kernel cache on disk, as the regional-compilation recipe uses it to time cold compiles."""

import inspect
import os
import warnings

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")


def test_fresh_inductor_cache_builds_into_an_empty_folder_and_restores_the_old_one(tmp_path):
    import torch._inductor.utils as tutils
    from kiln._inductor import utils
    assert list(inspect.signature(utils.fresh_inductor_cache).parameters) == \
        list(inspect.signature(tutils.fresh_inductor_cache).parameters)
    before = os.environ.get("KILN_CACHE_DIR")
    with kiln._inductor.utils.fresh_inductor_cache(dir=str(tmp_path)):
        fresh = os.environ["KILN_CACHE_DIR"]
        assert os.path.dirname(fresh) == str(tmp_path) and os.listdir(fresh) == []
        f = kiln.compile(lambda a: (a * 3.5).sin() + a, backend="c")
        x = kiln.tensor(np.linspace(-1, 1, 7, dtype=np.float32))
        out = f(x)
        built = [name for _, _, names in os.walk(fresh) for name in names]
    np.testing.assert_allclose(out.numpy(), (np.sin(x.numpy() * 3.5) + x.numpy()), rtol=1e-6)
    assert built                              # the kernel was built there, cold
    assert os.environ.get("KILN_CACHE_DIR") == before and not os.path.exists(fresh)
    with utils.fresh_cache(delete=False) as kept:
        kept_dir = os.environ["KILN_CACHE_DIR"]
    assert kept is None and os.path.isdir(kept_dir)
    os.rmdir(kept_dir)


def test_function_compiled_in_a_fresh_cache_runs_compiled_after_the_block(tmp_path):
    """The regional-compilation recipe times a first call inside fresh_inductor_cache(); the
    C kernels then still building were linked into the folder the block's end removed, so
    every later call warned and fell back to NumPy. They are finished and loaded first."""
    f = kiln.compile(lambda a: (a * 1.5).cos() * a, backend="c")
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    with kiln._inductor.utils.fresh_inductor_cache(dir=str(tmp_path)):
        first = f(kiln.tensor(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # a failed kernel build warns
        again = f(kiln.tensor(x))
    expected = (torch.cos(torch.tensor(x) * 1.5) * torch.tensor(x)).numpy()
    np.testing.assert_allclose(first.numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(again.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert os.listdir(tmp_path) == []
