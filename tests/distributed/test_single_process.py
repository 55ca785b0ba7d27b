"""What needs no second rank: DataParallel as a pass-through, the errors for using
kiln.distributed before init_process_group, and what init/destroy leave in the environment."""

import importlib.util
import os

import numpy as np
import pytest
import torch

import kiln
import kiln.distributed as dist
import kiln.nn as nn
from kiln.nn.parallel import DataParallel, DistributedDataParallel
from tests.distributed import launch


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


def test_destroy_takes_back_the_environment_init_set(monkeypatch):
    """init_process_group sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE where the
    launcher did not, as torchrun would have; destroy_process_group removes those again, so a
    later job started from this process (mpiexec -n 2) is not told its world size is 1."""
    launch.mpi_or_skip()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")               # the launcher's own stays
    dist.init_process_group()
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["RANK"] == "0"
    dist.destroy_process_group()
    assert "WORLD_SIZE" not in os.environ and "RANK" not in os.environ
    assert os.environ["LOCAL_RANK"] == "0"
