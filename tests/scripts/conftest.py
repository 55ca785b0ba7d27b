"""The script tests run torch single-threaded: on a shared 2-core machine its thread pool only
adds contention, and the reference runs are tiny."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
