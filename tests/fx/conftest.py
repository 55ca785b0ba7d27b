"""Every kiln.fx test leaves kiln's namespaces as it found them: no tracer still recording
(a leaked GraphAppendingTracer would leave kiln's functions wrapped for the tests after)."""

import gc

import pytest


@pytest.fixture(autouse=True)
def namespaces_restored():
    yield
    from kiln.fx.proxy import FUNCTION_PATCH
    if FUNCTION_PATCH.depth:
        gc.collect()
    assert FUNCTION_PATCH.depth == 0, "a kiln.fx tracer outlived its test"
    import kiln
    assert not hasattr(kiln.relu, "__fx_original__")
