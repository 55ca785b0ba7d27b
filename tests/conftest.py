"""Shared pytest setup: the `gpu` marker skips without a CUDA device."""

import pytest

from kiln.runtime.device import cuda_is_available


def pytest_collection_modifyitems(config, items):
    if cuda_is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
