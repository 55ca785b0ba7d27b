"""kiln.torch_checkpoint.load_torch_legacy: the pre-1.6 torch.save format (torchvision's older
pretrained files) read as torch.load reads it, tensors only, with no code run from the file."""

import os
import pickle

import numpy as np
import pytest
import torch

import kiln
from kiln import hub
from kiln.serialization import CheckpointError
from kiln.torch_checkpoint import is_legacy_torch_file, load_torch_legacy


def save_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def test_state_dict_values_views_dtypes_and_parameters(tmp_path):
    base = torch.arange(24, dtype=torch.float64).view(4, 6)
    state = {"view": base[1:, ::2], "row": base[2], "long": torch.arange(5),
             "half": torch.linspace(-1, 1, 7, dtype=torch.float16),
             "flag": torch.tensor([True, False]), "param": torch.nn.Parameter(torch.ones(3)),
             "scalar": torch.tensor(2.5), "steps": 7, "nested": [torch.zeros(2, 2)]}
    path = save_legacy(state, tmp_path / "legacy.pth")
    assert is_legacy_torch_file(path)
    loaded = load_torch_legacy(path)
    expected = torch.load(path, weights_only=True)
    assert list(loaded) == list(expected)
    for key in ("view", "row", "long", "half", "flag", "scalar"):
        np.testing.assert_array_equal(loaded[key].numpy(), expected[key].numpy())
        assert loaded[key].numpy().dtype == expected[key].numpy().dtype
    assert isinstance(loaded["param"], kiln.nn.Parameter) and loaded["param"].requires_grad
    np.testing.assert_array_equal(loaded["param"].detach().numpy(), np.ones(3))
    assert loaded["steps"] == 7 and loaded["nested"][0].shape == (2, 2)


def test_a_module_state_dict_loads_into_kiln(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    path = save_legacy(net.state_dict(), tmp_path / "net.pth")
    model = kiln.nn.Sequential(kiln.nn.Linear(4, 3), kiln.nn.BatchNorm1d(3))
    model.load_state_dict(load_torch_legacy(path))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    net.eval()
    model.eval()
    np.testing.assert_allclose(model(kiln.tensor(x)).detach().numpy(),
                               net(torch.tensor(x)).detach().numpy(), rtol=1e-6, atol=1e-6)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo ran > boom.txt",))


def test_other_globals_are_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = save_legacy({"w": torch.ones(2), "x": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="needs (posix|os|nt).system"):
        load_torch_legacy(path)
    assert not (tmp_path / "boom.txt").exists()
    save_legacy(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match="torch.nn.modules.linear.Linear"):
        load_torch_legacy(tmp_path / "module.pth")


def test_truncated_and_foreign_files(tmp_path):
    path = save_legacy({"w": torch.ones(100)}, tmp_path / "full.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="ends inside storage"):
        load_torch_legacy(cut)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    assert not is_legacy_torch_file(plain)
    with pytest.raises(CheckpointError, match="not a legacy torch.save file"):
        load_torch_legacy(plain)
    zipped = tmp_path / "zip.pth"
    torch.save({"w": torch.ones(1)}, zipped)
    assert not is_legacy_torch_file(zipped)


def test_hub_loads_a_cached_legacy_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    save_legacy({"w": torch.arange(3.0)}, folder / "old-0123abcd.pth")
    state = hub.load_state_dict_from_url("https://example.invalid/old-0123abcd.pth")
    np.testing.assert_array_equal(state["w"].numpy(), [0.0, 1.0, 2.0])


def test_kiln_load_reads_legacy_files_by_the_same_rules(tmp_path):
    path = save_legacy({"w": torch.arange(4.0).view(2, 2)}, tmp_path / "old.pth")
    np.testing.assert_array_equal(kiln.load(path)["w"].numpy(), [[0.0, 1.0], [2.0, 3.0]])
    with open(path, "rb") as f:
        np.testing.assert_array_equal(kiln.load(f)["w"].numpy(), [[0.0, 1.0], [2.0, 3.0]])
    save_legacy({"x": Boom()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="system"):
        kiln.load(tmp_path / "evil.pth")
