"""pytorch/examples mnist/main.py and vae/main.py run unmodified twice: under torch with a
torch-ops stand-in for torchvision, and under kiln with kiln.vision as torchvision, on small
MNIST idx files the test writes. From torch's initial weights, kiln's per-step losses agree to
1e-5; from the same seed alone (kiln draws torch's random numbers) the scripts as published
agree too, except mnist's dropout on Intel CPUs, where torch draws from MKL."""

import builtins
import functools
import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import kiln

from tests.torch_streams import MKL_REASON, pytorch_uses_mkl_stream
from tests.vision.files import write_mnist

PROGRAMS = Path(__file__).parent / "programs"


def _import_as(lib):
    """An __import__ that resolves torch and torchvision for a run under `lib`."""
    def resolve(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "torchvision" or name.startswith("torchvision.")):
            if lib == "kiln":
                name = "kiln.vision" + name[len("torchvision"):]
            else:       # the stand-in is one module whose attributes play the submodules
                stand_in = importlib.import_module("tests.vision.reference_torchvision")
                if not fromlist:
                    return stand_in
                return functools.reduce(getattr, name.split(".")[1:], stand_in)
        elif level == 0 and lib == "kiln" and (name == "torch" or name.startswith("torch.")):
            name = "kiln" + name[len("torch"):]
        return builtins.__import__(name, globals, locals, fromlist, level)
    return resolve


def load(lib, program="mnist_main"):
    path = PROGRAMS / f"{program}.py"
    module = types.ModuleType(f"programs.{program}_{lib}")
    module.__file__ = str(path)
    module.__dict__["__builtins__"] = dict(vars(builtins), __import__=_import_as(lib))
    sys.modules[module.__name__] = module
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module.__dict__


def to_kiln(state):
    return {k: kiln.tensor(v.detach().numpy().copy()) for k, v in state.items()}


def test_mnist_main_matches_torch(tmp_path, capsys):
    write_mnist(tmp_path, n_train=48, n_test=20, seed=3)
    argv = ["--data", str(tmp_path), "--batch-size", "16", "--test-batch-size", "8",
            "--epochs", "2", "--no-accel", "--dropout", "0", "0", "--log-interval", "1",
            "--save-model"]
    t = load("torch")["main"](argv)
    k = load("kiln")["main"](argv, initial_state=to_kiln(t["initial_state"]))
    assert len(k["losses"]) == 6
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=1e-5, atol=1e-6)
    assert [c for _, c in k["tests"]] == [c for _, c in t["tests"]]
    np.testing.assert_allclose([loss for loss, _ in k["tests"]],
                               [loss for loss, _ in t["tests"]], rtol=1e-5)
    for name, value in t["final_state"].items():
        np.testing.assert_allclose(k["final_state"][name].numpy(), value.numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    # the checkpoint the script saved (kiln's format) loads back into the model
    saved = kiln.load(str(tmp_path / "mnist_cnn.pt"))
    for name, value in k["final_state"].items():
        np.testing.assert_array_equal(saved[name].numpy(), value.numpy())
    assert "Test set: Average loss" in capsys.readouterr().out


def test_mnist_main_with_dropout_and_shuffle_trains(tmp_path):
    """The script as published (dropout, shuffled batches): kiln's seeded run repeats itself
    and its training loss falls on a learnable task (labels from the image mean)."""
    written = write_mnist(tmp_path, n_train=32, n_test=8, seed=4)
    images, _ = written["train"]
    labels = (images.reshape(len(images), -1).mean(1) > images.mean()).astype(np.uint8)
    from tests.vision.files import idx_bytes
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    argv = ["--data", str(tmp_path), "--batch-size", "16", "--epochs", "3", "--no-accel",
            "--shuffle", "--lr", "1.0", "--log-interval", "100"]
    main = load("kiln")["main"]
    first, second = main(argv), main(argv)
    assert first["losses"] == second["losses"]
    assert np.mean(first["losses"][-2:]) < np.mean(first["losses"][:2])



@pytest.mark.skipif(pytorch_uses_mkl_stream(), reason=MKL_REASON)
def test_mnist_main_as_published_matches_torch(tmp_path):
    """kiln's generator gives torch's streams, so the script as published (dropout,
    shuffled batches, its own seed) gives torch's losses too: same initial weights, order and
    dropout masks, with no weights passed across."""
    write_mnist(tmp_path, n_train=48, n_test=16, seed=5)
    argv = ["--data", str(tmp_path), "--batch-size", "16", "--test-batch-size", "16",
            "--epochs", "2", "--no-accel", "--shuffle", "--log-interval", "100"]
    t = load("torch")["main"](argv)
    k = load("kiln")["main"](argv)
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=1e-5, atol=1e-6)
    assert [c for _, c in k["tests"]] == [c for _, c in t["tests"]]


def test_vae_main_matches_torch_and_saves_the_same_images(tmp_path, monkeypatch):
    """pytorch/examples vae/main.py (shuffled MNIST through ToTensor, randn_like
    reparameterization, save_image grids of reconstructions and samples): kiln's losses and
    PNGs equal torch's run with a torch-ops save_image."""
    from PIL import Image
    write_mnist(tmp_path / "data", n_train=48, n_test=16, seed=6)
    results = {}
    for lib in ("torch", "kiln"):
        work = tmp_path / lib / "work"
        (work / "results").mkdir(parents=True)
        (tmp_path / lib / "data").symlink_to(tmp_path / "data")
        monkeypatch.chdir(work)                      # the script reads ../data, writes results/
        results[lib] = load(lib, "vae_main")["main"](
            ["--batch-size", "16", "--epochs", "2", "--no-accel", "--log-interval", "100"])
    np.testing.assert_allclose(results["kiln"]["losses"], results["torch"]["losses"],
                               rtol=1e-5)
    np.testing.assert_allclose(results["kiln"]["test_losses"], results["torch"]["test_losses"],
                               rtol=1e-5)
    for name in ("reconstruction_1.png", "sample_2.png"):
        k = np.array(Image.open(tmp_path / "kiln" / "work" / "results" / name)).astype(int)
        t = np.array(Image.open(tmp_path / "torch" / "work" / "results" / name)).astype(int)
        assert k.shape == t.shape
        assert np.abs(k - t).max() <= 1            # a rounding step at most
        assert (k != t).mean() < 0.01
