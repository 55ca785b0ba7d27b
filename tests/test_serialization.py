"""kiln.save / kiln.load: round trips, the safetensors layout, and refusing bad or hostile files."""

import io
import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch

import kiln
import kiln.optim  # noqa: F401
from kiln.serialization import CheckpointError, load, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state_dict():
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("fc.weight", kiln.tensor(rng.normal(size=(4, 3)).astype(np.float32))),
        ("fc.bias", kiln.tensor(rng.normal(size=(4,)))),                 # float64
        ("bn.num_batches_tracked", kiln.tensor(7)),                     # 0-d int64
        ("half", kiln.tensor(rng.normal(size=(2, 2)).astype(np.float16))),
        ("ids", kiln.tensor([1, -2, 3], dtype=kiln.int32)),
        ("pixels", kiln.tensor([0, 255, 17], dtype=kiln.uint8)),
        ("mask", kiln.tensor([True, False, True])),
        ("empty", kiln.zeros(0, 5)),
        ("transposed", kiln.arange(6.0).reshape(2, 3).t()),            # not contiguous
    ])


def _assert_tensors_equal(a, b):
    assert isinstance(a, kiln.Tensor) and a.dtype is b.dtype and tuple(a.shape) == tuple(b.shape)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_dict_round_trip(tmp_path):
    sd = _state_dict()
    save(sd, tmp_path / "model.kiln")
    loaded = load(tmp_path / "model.kiln")
    assert type(loaded) is OrderedDict and list(loaded) == list(sd)
    for key in sd:
        _assert_tensors_equal(loaded[key], sd[key])
    loaded["fc.weight"].add_(1)           # loaded tensors are writable and independent
    assert not np.allclose(loaded["fc.weight"].numpy(), sd["fc.weight"].numpy())


def test_nested_python_values_round_trip(tmp_path):
    w = kiln.ones(2, 2, requires_grad=True)
    obj = {"epoch": 3, "lr": 1e-3, "big": 2 ** 70, "name": "run/1", "none": None, "ok": True,
           "specials": [math.inf, -math.inf], "pair": (1, (2.5, "x")), 7: "int key",
           (1, 2): "tuple key", "w": w, "again": [w], "dtype": kiln.float16,
           "device": kiln.device("cpu"), "np": np.float32(0.5), "nested": {"a": {"b": []}}}
    save(obj, tmp_path / "x.kiln")
    out = load(tmp_path / "x.kiln")
    nan_free = {k: v for k, v in obj.items() if k not in ("w", "again", "np")}
    assert {k: out[k] for k in nan_free} == nan_free
    assert out["np"] == 0.5 and type(out["np"]) is np.float32       # NumPy scalars keep type
    assert out["w"].requires_grad and out["again"][0] is out["w"]   # one tensor, stored once
    save({"nan": math.nan}, tmp_path / "nan.kiln")
    assert math.isnan(load(tmp_path / "nan.kiln")["nan"])


def test_views_are_saved_as_separate_copies(tmp_path):
    base = kiln.arange(6.0)
    view = base.reshape(2, 3)
    save({"base": base, "view": view}, tmp_path / "v.kiln")
    out = load(tmp_path / "v.kiln")
    out["base"].add_(1)
    assert out["view"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_module_state_dict_round_trip(tmp_path):
    nn = pytest.importorskip("kiln.nn")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    save(model.state_dict(), tmp_path / "m.kiln")
    other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    other.load_state_dict(load(tmp_path / "m.kiln"))
    x = kiln.randn(5, 3)
    np.testing.assert_array_equal(other(x).detach().numpy(), model(x).detach().numpy())


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3,)).astype(np.float32) for _ in range(8)]

    def run(params, opt, gs):
        for g in gs:
            opt.zero_grad()
            params[0].grad = kiln.tensor(g)
            opt.step()

    p = [kiln.zeros(3, requires_grad=True)]
    opt = kiln.optim.Adam(p, lr=0.1, amsgrad=True)
    run(p, opt, grads)
    straight = p[0].detach().numpy().copy()

    p = [kiln.zeros(3, requires_grad=True)]
    opt = kiln.optim.Adam(p, lr=0.1, amsgrad=True)
    run(p, opt, grads[:4])
    save({"param": p[0], "optimizer": opt.state_dict()}, tmp_path / "ckpt.kiln")
    ckpt = load(tmp_path / "ckpt.kiln")
    assert ckpt["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    assert ckpt["optimizer"]["state"][0]["step"].dtype is kiln.float32
    q = [ckpt["param"]]
    opt2 = kiln.optim.Adam(q, lr=0.1, amsgrad=True)
    opt2.load_state_dict(ckpt["optimizer"])
    run(q, opt2, grads[4:])
    np.testing.assert_array_equal(q[0].detach().numpy(), straight)


def test_file_objects(tmp_path):
    buf = io.BytesIO()
    save({"a": kiln.arange(3)}, buf)
    buf.seek(0)
    assert load(buf)["a"].tolist() == [0, 1, 2]
    with open(tmp_path / "f.kiln", "wb") as f:
        save([kiln.ones(2)], f)
    with open(tmp_path / "f.kiln", "rb") as f:
        assert load(f)[0].tolist() == [1.0, 1.0]


def test_file_is_in_the_safetensors_layout(tmp_path):
    """Read the file by the safetensors spec alone, without kiln."""
    sd = _state_dict()
    save(sd, tmp_path / "m.kiln")
    raw = (tmp_path / "m.kiln").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())   # safetensors: str -> str
    assert meta["format"] == "kiln"
    np_types = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                "U8": "u1", "BOOL": "?"}
    spans = sorted(e["data_offsets"] for e in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n     # no holes, no tail
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for key, t in sd.items():
        e = header[key]
        begin, end = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + begin:8 + n + end], dtype=np_types[e["dtype"]])
        np.testing.assert_array_equal(arr.reshape(e["shape"]), t.numpy())
    nodes = json.loads(meta["kiln.structure"])          # children first, the root last
    key, value = nodes[-1]["OrderedDict"][0]
    assert nodes[key] == "fc.weight" and nodes[value] == {"tensor": "fc.weight"}


def test_plain_safetensors_file_loads_as_dict(tmp_path):
    data = np.arange(6, dtype="<f4").tobytes() + np.array([1, 2], dtype="<i8").tobytes()
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
              "__metadata__": {"format": "pt"}}
    text = json.dumps(header).encode()
    (tmp_path / "plain.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    out = load(tmp_path / "plain.safetensors")
    assert out["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and out["b"].dtype is kiln.int64


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_not_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weights": _Exploit(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match="evil.pt") as info:
        load(path)
    assert isinstance(info.value, RuntimeError)
    if protocol >= 2:
        assert "pickle" in str(info.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pt"):
        load(path, weights_only=False)      # nothing to allow: still refused
    assert not marker.exists()


def test_torch_checkpoint_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"t\.pt.*zip archive"):
        load(tmp_path / "t.pt")


@pytest.mark.parametrize("cut", [0, 3, 8, 20, "header-1", "data/2", "end-1"])
def test_truncated_file_names_the_file(tmp_path, cut):
    save(_state_dict(), tmp_path / "full.kiln")
    raw = (tmp_path / "full.kiln").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    size = {"header-1": 8 + n - 1, "data/2": 8 + n + (len(raw) - 8 - n) // 2,
            "end-1": len(raw) - 1}.get(cut, cut)
    (tmp_path / "cut.kiln").write_bytes(raw[:size])
    with pytest.raises(CheckpointError, match=r"cut\.kiln.*(truncated|header)"):
        load(tmp_path / "cut.kiln")


def test_every_flipped_header_byte_is_detected(tmp_path):
    save({"w": kiln.ones(2, 3), "step": 4, "name": "abc"}, tmp_path / "ok.kiln")
    raw = (tmp_path / "ok.kiln").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    bad = tmp_path / "bad.kiln"
    for pos in range(8 + n):
        for mask in (0x01, 0x20, 0xFF):
            data = bytearray(raw)
            data[pos] ^= mask
            bad.write_bytes(bytes(data))
            with pytest.raises(CheckpointError, match=r"bad\.kiln"):
                load(bad)


def test_corrupted_data_is_detected(tmp_path):
    save({"w": kiln.ones(64)}, tmp_path / "ok.kiln")
    data = bytearray((tmp_path / "ok.kiln").read_bytes())
    data[-7] ^= 0x04
    (tmp_path / "bad.kiln").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.kiln.*checksum"):
        load(tmp_path / "bad.kiln")


def test_unpicklable_object_fails_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.kiln"
    save({"w": kiln.ones(2)}, path)
    with pytest.raises(TypeError, match=r"kiln.save: can't save a builtins.dict: pickling"):
        save({"w": kiln.zeros(2), "bad": lambda: 1}, path)
    assert load(path)["w"].tolist() == [1.0, 1.0]
    assert os.listdir(tmp_path) == ["ckpt.kiln"]        # no temporary files left behind


def test_self_containing_list_round_trips_as_a_pickle_of_plain_types(tmp_path):
    loop = [kiln.ones(2)]
    loop.append(loop)
    save(loop, tmp_path / "loop.kiln")
    out = load(tmp_path / "loop.kiln")       # lists need no global: allowed by default
    assert out[1] is out and out[0].tolist() == [1.0, 1.0]


def test_map_location(tmp_path):
    save({"w": kiln.ones(2)}, tmp_path / "m.kiln")
    for loc in ("cpu", kiln.device("cpu"), {"cuda:0": "cpu"}):
        assert load(tmp_path / "m.kiln", map_location=loc)["w"].device.type == "cpu"
    seen = []
    out = load(tmp_path / "m.kiln", map_location=lambda t, where: seen.append(where) or t * 2)
    assert seen == ["cpu"] and out["w"].tolist() == [2.0, 2.0]
    if not kiln.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load(tmp_path / "m.kiln", map_location="cuda")


_CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import kiln
    from kiln.serialization import save
    real_fsync = os.fsync

    def slow_fsync(fd):
        # stands for a slow disk: the parent kills us while the new file is still a temp file
        print("syncing", flush=True)
        time.sleep(60)
        real_fsync(fd)

    os.fsync = slow_fsync
    big = kiln.full((4_000_000,), 2.0)
    print("saving", flush=True)
    save({{"w": big, "epoch": 2}}, {path!r})
    print("done", flush=True)
""")


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.kiln"
    save({"w": kiln.ones(3), "epoch": 1}, path)
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=ROOT, path=str(path))],
                             stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        temps = []
        while time.time() < deadline and not temps:
            temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            time.sleep(0.005)
        assert temps, "the child never started writing its temporary file"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert "done" not in child.stdout.read()
    assert path.read_bytes() == before
    ckpt = load(path)
    assert ckpt["epoch"] == 1 and ckpt["w"].tolist() == [1.0, 1.0, 1.0]
