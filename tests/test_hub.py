"""kiln.hub (and torch.utils.model_zoo): downloads served by a local HTTP server or file://
URLs in the test, never the network; a torch.save'd state dict comes back with torch's values
and loads into a kiln model that then computes what torch's does."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import threading
import zipfile

import numpy as np
import pytest
import torch

import kiln
import kiln.hub
from kiln.serialization import CheckpointError


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): a local HTTP server serving the folder, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _torch_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))
    model.train()
    model(torch.randn(16, 4))            # running statistics that are not the initial ones
    return model.eval()


def _kiln_model():
    return kiln.nn.Sequential(kiln.nn.Linear(4, 8), kiln.nn.BatchNorm1d(8), kiln.nn.ReLU(),
                              kiln.nn.Linear(8, 3)).eval()


def test_a_torch_saved_state_dict_downloads_and_loads_into_a_kiln_model(served, tmp_path,
                                                                        capsys):
    folder, base = served
    reference = _torch_model()
    torch.save(reference.state_dict(), folder / "mlp.pth")
    cache = tmp_path / "cache"
    state = kiln.hub.load_state_dict_from_url(f"{base}/mlp.pth", model_dir=str(cache),
                                              progress=False)
    assert f'Downloading: "{base}/mlp.pth"' in capsys.readouterr().out
    assert list(state) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert state[name].dtype.name == str(value.dtype).replace("torch.", "")
        np.testing.assert_array_equal(state[name].numpy(), value.numpy())
    model = _kiln_model()
    model.load_state_dict(state)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(model(kiln.tensor(x)).detach().numpy(),
                               reference(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    # the second call reads the cache: the file is gone from the server, nothing is fetched
    (folder / "mlp.pth").unlink()
    again = kiln.hub.load_state_dict_from_url(f"{base}/mlp.pth", model_dir=str(cache),
                                              file_name=None, progress=False)
    assert "Downloading" not in capsys.readouterr().out
    np.testing.assert_array_equal(again["0.weight"].numpy(), state["0.weight"].numpy())
    from kiln.utils import model_zoo
    assert model_zoo.load_url is kiln.hub.load_state_dict_from_url


def test_download_url_to_file_writes_what_torchs_writes_and_checks_the_hash(served, tmp_path):
    folder, base = served
    payload = np.random.default_rng(0).bytes(300_000)       # several read chunks
    (folder / "blob.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    ours, theirs = tmp_path / "ours.bin", tmp_path / "theirs.bin"
    kiln.hub.download_url_to_file(f"{base}/blob.bin", str(ours), hash_prefix=digest[:10],
                                  progress=False)
    torch.hub.download_url_to_file(f"{base}/blob.bin", str(theirs), hash_prefix=digest[:10],
                                   progress=False)
    assert ours.read_bytes() == theirs.read_bytes() == payload
    kiln.hub.download_url_to_file((folder / "blob.bin").as_uri(), str(tmp_path / "file.bin"),
                                  progress=False)
    assert (tmp_path / "file.bin").read_bytes() == payload
    bad = tmp_path / "bad.bin"
    with pytest.raises(RuntimeError, match=f'invalid hash value .*got "{digest}"'):
        kiln.hub.download_url_to_file(f"{base}/blob.bin", str(bad), hash_prefix="0000",
                                      progress=False)
    assert not bad.exists() and not list(tmp_path.glob("bad.bin*"))     # no partial file left


def test_check_hash_takes_the_prefix_from_the_file_name(served, tmp_path):
    folder, base = served
    kiln.save({"w": kiln.arange(6.0).reshape(2, 3)}, folder / "tmp.ckpt")
    digest = hashlib.sha256((folder / "tmp.ckpt").read_bytes()).hexdigest()
    data = (folder / "tmp.ckpt").read_bytes()
    (folder / f"weights-{digest[:8]}.ckpt").write_bytes(data)
    (folder / "weights-deadbeef.ckpt").write_bytes(data)         # a name the bytes don't hash to
    state = kiln.hub.load_state_dict_from_url(f"{base}/weights-{digest[:8]}.ckpt",
                                              model_dir=str(tmp_path / "c"), check_hash=True,
                                              progress=False)
    np.testing.assert_array_equal(state["w"].numpy(), np.arange(6.0).reshape(2, 3))
    with pytest.raises(RuntimeError, match="invalid hash value"):
        kiln.hub.load_state_dict_from_url(f"{base}/weights-deadbeef.ckpt",
                                          model_dir=str(tmp_path / "c"), check_hash=True,
                                          progress=False)


def test_cache_directory_follows_torch_home_and_set_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(kiln.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert kiln.hub.get_dir() == torch.hub.get_dir() == str(tmp_path / "th" / "hub")
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kiln.hub.get_dir() == str(tmp_path / "xdg" / "kiln" / "hub")
    kiln.hub.set_dir(tmp_path / "mine")
    assert kiln.hub.get_dir() == str(tmp_path / "mine")


def test_hubconf_entry_points_are_refused() -> None:
    for call in (lambda: kiln.hub.load("pytorch/vision", "resnet18"),
                 lambda: kiln.hub.list("pytorch/vision"),
                 lambda: kiln.hub.help("pytorch/vision", "resnet18")):
        with pytest.raises(RuntimeError, match="does not run a repository's hubconf.py"):
            call()


def test_torch_files_rebuild_only_tensors_and_run_no_code(tmp_path) -> None:
    values = {"t": torch.arange(12.0).reshape(3, 4).t(), "half": torch.ones(3).half(),
              "idx": torch.arange(4), "mask": torch.tensor([True, False]),
              "strided": torch.arange(10.0)[1:9:3],
              "param": torch.nn.Parameter(torch.full((2,), 3.0))}
    torch.save(values, tmp_path / "misc.pth")
    loaded = kiln.hub.load_torch_zip(tmp_path / "misc.pth")
    for name, value in values.items():
        np.testing.assert_array_equal(loaded[name].detach().numpy(), value.detach().numpy())
        assert loaded[name].dtype.name == str(value.dtype).replace("torch.", "")
    assert isinstance(loaded["param"], kiln.nn.Parameter) and loaded["param"].requires_grad

    torch.save(_torch_model(), tmp_path / "whole.pth")           # a pickled Module
    with pytest.raises(CheckpointError, match="needs torch.nn.modules.container.Sequential"):
        kiln.hub.load_torch_zip(tmp_path / "whole.pth")

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)
    _replace_pickle(tmp_path / "misc.pth", tmp_path / "evil.pth", pickle.dumps(Payload(),
                                                                                protocol=2))
    with pytest.raises(CheckpointError, match="needs (posix|os|nt).system"):
        kiln.hub.load_torch_zip(tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()


def test_a_tensor_view_outside_its_storage_is_refused(tmp_path) -> None:
    torch.save({"w": torch.arange(4.0)}, tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as z:
        name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        data = z.read(name)
    # size 4 -> 400: as_strided would read past the 4 stored floats
    forged = data.replace(b"K\x04\x85", b"M\x90\x01\x85", 1)
    assert forged != data
    _replace_pickle(tmp_path / "w.pth", tmp_path / "forged.pth", forged)
    with pytest.raises(CheckpointError, match="lies outside its storage of 4 elements"):
        kiln.hub.load_torch_zip(tmp_path / "forged.pth")


def _replace_pickle(source, target, data: bytes) -> None:
    with zipfile.ZipFile(source) as z, zipfile.ZipFile(target, "w") as out:
        for info in z.infolist():
            out.writestr(info, data if info.filename.endswith("data.pkl") else z.read(info))
