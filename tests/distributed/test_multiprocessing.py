"""kiln.multiprocessing: tensors cross processes as shared-memory handles (writes on one side
are seen on the other; the pickle holds no tensor bytes), spawn reports a failing process, and
the Hogwild example trains one shared model from several processes."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.multiprocessing as mp
import kiln.nn as nn
from kiln.multiprocessing.reductions import ForkingPickler
from tests.distributed import launch


def _child(q, out):
    t, p, view = q.get()
    t.mul_(2)                 # in place, in the shared memory
    with kiln.no_grad():
        p.add_(1)
    view.fill_(-1)
    out.put((t.is_shared(), type(p).__name__, p.requires_grad, t.sum().item()))


def test_queue_passes_tensors_through_shared_memory():
    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    t = kiln.arange(6, dtype=kiln.float64).reshape(2, 3)
    p = nn.Parameter(kiln.zeros(4))
    base = kiln.zeros(10, dtype=kiln.int64)
    view = base[2:5]
    proc = ctx.Process(target=_child, args=(q, out))
    proc.start()
    q.put((t, p, view))
    shared, kind, requires_grad, seen = out.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert shared and kind == "Parameter" and requires_grad and seen == 30.0
    np.testing.assert_array_equal(t.numpy(), np.arange(6.0).reshape(2, 3) * 2)
    np.testing.assert_array_equal(p.detach().numpy(), np.ones(4))
    # kiln has no storage object shared by views: sending a view moves the view (not the
    # tensor it views, as PyTorch would) to shared memory
    np.testing.assert_array_equal(view.numpy(), [-1, -1, -1])
    np.testing.assert_array_equal(base.numpy(), np.zeros(10))
    assert t.is_shared() and p.is_shared() and view.is_shared() and not base.is_shared()


def test_pickle_holds_a_handle_not_the_bytes():
    t = kiln.zeros(256, 256)                  # 256 KiB of float32
    assert not t.is_shared()
    size = len(ForkingPickler.dumps(t))
    assert size < 1000, size
    assert t.is_shared()
    np.testing.assert_array_equal(t.numpy(), np.zeros((256, 256), np.float32))


def test_share_memory_keeps_values_and_views_are_shared():
    m = nn.Linear(3, 2)
    w = m.weight.detach().numpy().copy()
    m.share_memory()
    assert all(p.is_shared() for p in m.parameters())
    np.testing.assert_array_equal(m.weight.detach().numpy(), w)
    assert m.weight[0].is_shared() and not kiln.ones(2).is_shared()


def _fails(i, what):
    if i == 1:
        if what == "raise":
            raise ValueError("process one failed")
        os._exit(7)


def test_spawn_reports_the_failing_process():
    with pytest.raises(mp.ProcessRaisedException, match="process one failed") as info:
        mp.spawn(_fails, args=("raise",), nprocs=2, start_method="fork")
    assert info.value.error_index == 1
    with pytest.raises(mp.ProcessExitedException, match="process 1 terminated with exit code 7"):
        mp.spawn(_fails, args=("exit",), nprocs=2, start_method="fork")


def test_drop_in_names():
    for name in ("Process", "Queue", "Pool", "get_context", "cpu_count", "Manager", "Lock"):
        assert getattr(mp, name) is getattr(multiprocessing, name)


def test_hogwild_example_trains_the_shared_model():
    env = dict(launch.env(), KILN_EXAMPLE_QUICK="1")
    proc = subprocess.run([sys.executable, os.path.join(launch.ROOT, "examples", "hogwild.py")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=launch.ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = float(re.search(r"loss before ([0-9.]+)", proc.stdout).group(1))
    after = float(re.search(r"loss after ([0-9.]+)", proc.stdout).group(1))
    # the parent never trains: its loss falls only if the processes wrote into its memory
    assert after < 0.5 * before, proc.stdout
