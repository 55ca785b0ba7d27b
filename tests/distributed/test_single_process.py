"""What needs no second rank: DataParallel as a pass-through, and the errors for using
kiln.distributed before init_process_group."""

import importlib.util

import numpy as np
import pytest
import torch

import kiln
import kiln.distributed as dist
import kiln.nn as nn
from kiln.nn.parallel import DataParallel, DistributedDataParallel


def test_data_parallel_is_the_module_with_prefixed_state_dict():
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    dp = DataParallel(model)
    x = kiln.randn(5, 3)
    np.testing.assert_array_equal(dp(x).detach().numpy(), model(x).detach().numpy())
    assert dp.module is model and list(dp.parameters()) == list(model.parameters())
    assert nn.DataParallel is DataParallel
    ref = torch.nn.DataParallel(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                                    torch.nn.Linear(4, 2)))
    assert list(dp.state_dict()) == list(ref.state_dict())
    with pytest.raises(ValueError, match="one device per process"):
        DataParallel(model, device_ids=[0, 1])


def test_using_the_group_before_init_says_so():
    assert not dist.is_initialized()
    for call in (dist.get_rank, dist.get_world_size, lambda: dist.all_reduce(kiln.ones(2)),
                 dist.barrier):
        with pytest.raises(RuntimeError, match="call init_process_group"):
            call()
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedDataParallel(nn.Linear(2, 2))
    assert dist.is_available() == (importlib.util.find_spec("mpi4py") is not None)
