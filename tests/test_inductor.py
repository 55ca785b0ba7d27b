"""kiln._inductor (torch._inductor's import path): fresh_inductor_cache gives a block an empty
kernel cache on disk, as the regional-compilation recipe uses it to time cold compiles."""

import inspect
import os

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
