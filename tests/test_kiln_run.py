"""`python -m kiln run script.py [args]`: an unmodified PyTorch script runs on kiln, its torch
imports resolved to kiln's modules (`kiln/as_torch.py`)."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
from tests.torch_streams import pytorch_uses_mkl_stream

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "standalone" / "mnist_pattern.py"


def kiln_run(script, *args, cwd, extra_env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "kiln", "run", str(script), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def torch_run(script, *args, cwd) -> str:
    """The script under real PyTorch, in this process (torch is imported here already)."""
    pytest.importorskip("torch")
    out, argv, here = io.StringIO(), sys.argv, os.getcwd()
    sys.argv = [str(script), *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)
    return out.getvalue()


def final_losses(text):
    return [float(v) for v in re.findall(r"Test set: Average loss: ([0-9.]+)", text)]


def printed_losses(text):
    return [float(v) for v in re.findall(r"Loss: ([0-9.]+)", text)]


def test_an_unmodified_mnist_style_script_trains_under_kiln_run(tmp_path):
    """pytorch/examples mnist/main.py's pattern (argparse, torch.accelerator, dropout, a
    shuffled DataLoader, Adadelta + StepLR, `.item()` logging, torch.save). kiln draws
    PyTorch's random numbers, so from `--seed 1` the printed losses are PyTorch's (initial
    weights, batch order and dropout masks alike); where PyTorch takes MKL's dropout stream
    (Intel CPUs) kiln's final test loss must lie within PyTorch's range over three seeds. The
    checkpoint holds torch's keys."""
    pytest.importorskip("torch")
    import torch
    args = ("--epochs", "2", "--save-model")
    reference = torch_run(SCRIPT, *args, "--seed", "1", cwd=tmp_path)
    torch_keys = sorted(torch.load(tmp_path / "mnist_cnn.pt"))
    (tmp_path / "mnist_cnn.pt").unlink()

    done = kiln_run(SCRIPT, *args, "--seed", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(final_losses(done.stdout)) == 2
    if not pytorch_uses_mkl_stream():
        np.testing.assert_allclose(printed_losses(done.stdout), printed_losses(reference),
                                   rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(final_losses(done.stdout), final_losses(reference),
                                   atol=1e-4)
    else:
        others = [torch_run(SCRIPT, *args, "--seed", str(s), cwd=tmp_path) for s in (2, 3)]
        torch_final = [final_losses(log)[-1] for log in [reference] + others]
        low, high = min(torch_final), max(torch_final)
        slack = 0.5 * (high - low) + 0.02 * high
        assert low - slack <= final_losses(done.stdout)[-1] <= high + slack, torch_final
    state = kiln.load(tmp_path / "mnist_cnn.pt")
    assert sorted(state) == torch_keys
    assert all(np.isfinite(v.numpy()).all() for v in state.values())


def test_kiln_run_names_a_missing_torch_module_and_passes_arguments_and_exit_codes(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, argparse\n"
        "import torch, torch.nn as nn\n"
        "from torch.utils.data import DataLoader\n"
        "import torch.cuda\n"
        "p = argparse.ArgumentParser(); p.add_argument('--out'); a = p.parse_args()\n"
        "print(torch is sys.modules['kiln'], nn.Linear is torch.nn.Linear, a.out,\n"
        "      torch.cuda.is_available(), torch.__spec__.name, nn.__spec__.name)\n"
        "if a.out == 'missing':\n"
        "    import torch.no_such_module\n"
        "sys.exit(3)\n")
    done = kiln_run(script, "--out", "x", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["True", "True", "x", "False", "kiln", "kiln.nn"]
    done = kiln_run(script, "--out", "missing", cwd=tmp_path)
    assert done.returncode == 1
    assert "No module named 'torch.no_such_module'" in done.stderr
    assert "kiln.no_such_module" in done.stderr and "probe.py\", line 9" in done.stderr
    done = kiln_run(script, "--help", cwd=tmp_path)          # the script's own --help
    assert done.returncode == 0 and "--out OUT" in done.stdout


def test_kiln_run_resolves_torchvision_to_kiln_vision(tmp_path):
    """mnist/main.py's torchvision imports (`datasets.MNIST`, `transforms`) resolve to
    kiln.vision under `kiln run`; the script reads MNIST idx files and trains."""
    from tests.vision.files import write_mnist
    write_mnist(tmp_path, n_train=32, n_test=16, seed=1)
    script = ROOT / "tests" / "vision" / "programs" / "mnist_main.py"
    done = kiln_run(script, "--data", str(tmp_path), "--epochs", "1", "--batch-size", "16",
                    "--test-batch-size", "16", "--no-accel", "--log-interval", "1",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(printed_losses(done.stdout)) == 2 and len(final_losses(done.stdout)) == 1


def test_kiln_dump_of_a_torch_script_through_kiln_run(tmp_path):
    """`KILN_DUMP=dir python -m kiln run script.py`: a PyTorch script's `@torch.compile` step
    is kiln's compiled function, and its listing (the script's own lines) is written."""
    script = tmp_path / "step.py"
    script.write_text(
        "import torch\n"
        "import torch.nn as nn\n"
        "import torch.nn.functional as F\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "@torch.compile\n"
        "def train_step(x, y):\n"
        "    loss = F.cross_entropy(model(x), y)\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
        "    return loss\n"
        "x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))\n"
        "for _ in range(5):\n"
        "    print(train_step(x, y).item())\n")
    done = kiln_run(script, cwd=tmp_path, extra_env={"KILN_DUMP": str(tmp_path / "dump")})
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(v) for v in done.stdout.split()]
    assert len(losses) == 5 and losses[-1] < losses[0]
    listing = (tmp_path / "dump" / "train_step.txt").read_text()
    assert "graph train_step(%x: f32[32,8], %y: i64[32]" in listing
    assert "# step.py:9" in listing                       # the script's own line


SPAWNED = '''
import multiprocessing as std_mp
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset


def report(queue):
    queue.put(torch.__name__)


def worker_module(_):
    return torch.tensor([0]) if torch.__name__ == "kiln" else torch.tensor([1])


if __name__ == "__main__":
    ctx = std_mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=report, args=(queue,))
    p.start()
    print("process", queue.get())
    p.join()
    loader = DataLoader(TensorDataset(torch.arange(2)), batch_size=1, num_workers=1,
                        multiprocessing_context="spawn", collate_fn=worker_module)
    print("workers", sorted(int(b) for b in loader))
'''


def test_spawned_children_import_kiln_as_torch_too(tmp_path):
    """A process started by "spawn" re-imports the script in a fresh interpreter; under kiln
    run it must get kiln for `torch` as its parent does (it imported the real torch)."""
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    done = kiln_run(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process kiln" in done.stdout and "workers [0, 0]" in done.stdout, done.stdout
