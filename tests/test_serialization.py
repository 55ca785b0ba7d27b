"""kiln.save / kiln.load: round trips, the safetensors layout, pickled objects under
weights_only, saving safely, and refusing bad or hostile files."""

import base64
import dataclasses
import io
import json
import math
import os
import pickle
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch

import kiln
import kiln.nn as nn
import kiln.optim  # noqa: F401
import kiln.serialization
from kiln.serialization import CheckpointError, load, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _own_safe_globals():
    """Each test starts with an empty allow-list and leaves none behind."""
    before = kiln.serialization.get_safe_globals()
    kiln.serialization.clear_safe_globals()
    yield
    kiln.serialization.clear_safe_globals()
    kiln.serialization.add_safe_globals(before)


@dataclasses.dataclass
class RunConfig:
    """A user class saved inside a checkpoint (module level, so pickle can find it)."""
    lr: float
    sizes: tuple
    weights: kiln.Tensor


class Node:
    def __init__(self, child):
        self.child = child


def _craft(header: dict, data: bytes = b"", meta: dict | None = None) -> bytes:
    """A file in the documented layout, with a correct kiln.crc32 when `meta` is given: the
    tests reach the checks after the checksum with it."""
    header = dict(header)
    if meta is not None:
        meta = dict({"format": "kiln", "kiln.version": "2"}, **meta)
        canonical = json.dumps(dict(header, __metadata__=meta), sort_keys=True,
                               separators=(",", ":")).encode()
        meta["kiln.crc32"] = f"{zlib.crc32(data, zlib.crc32(canonical)):08x}"
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _header_of(raw: bytes) -> dict:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


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


def test_data_types_round_trip_with_their_types(tmp_path):
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3),
              "i16": np.array([-3, 7], dtype=np.int16), "u64": np.array([2 ** 64 - 1], np.uint64),
              "scalar": np.array(2.5), "strided": np.arange(10.0)[::3],
              "big_endian": np.arange(3, dtype=">i4"), "empty": np.zeros((0, 4), np.bool_)}
    obj = OrderedDict(
        arrays=arrays, size=kiln.Size([2, 3]), complex=complex(1.5, -math.inf),
        bytes=b"\x00\xffkiln", bytearray=bytearray(b"ab"), set={1, "a", (2, 3)},
        frozen=frozenset({4.5}), np_int=np.int16(-7), np_bool=np.bool_(True),
        np_nan=np.float16("nan"), u64=np.uint64(2 ** 64 - 1), tensor=kiln.arange(4))
    save(obj, tmp_path / "data.kiln")
    meta = _header_of((tmp_path / "data.kiln").read_bytes())["__metadata__"]
    assert "kiln.structure" in meta and "kiln.pickle" not in meta      # stored as data
    out = load(tmp_path / "data.kiln")
    assert type(out) is OrderedDict and list(out) == list(obj)
    for key, arr in arrays.items():
        got = out["arrays"][key]
        assert type(got) is np.ndarray and got.dtype == arr.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got, arr)
        assert got.flags.writeable
    assert type(out["size"]) is kiln.Size and out["size"] == (2, 3)
    for key in ("complex", "bytes", "bytearray", "set", "frozen", "np_int", "np_bool", "u64"):
        assert type(out[key]) is type(obj[key]) and out[key] == obj[key], key
    assert type(out["np_nan"]) is np.float16 and np.isnan(out["np_nan"])
    _assert_tensors_equal(out["tensor"], obj["tensor"])


def test_numpy_array_saved_alone_comes_back_as_numpy():
    arr = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    buf = io.BytesIO()
    save(arr, buf)
    out = load(io.BytesIO(buf.getvalue()))
    assert type(out) is np.ndarray and out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


def test_shared_objects_load_as_one_object(tmp_path):
    shared, w = [1, 2], kiln.ones(2)
    save({"a": shared, "b": shared, "t": (w, w)}, tmp_path / "s.kiln")
    out = load(tmp_path / "s.kiln")
    assert out["a"] == [1, 2] and out["a"] is out["b"] and out["t"][0] is out["t"][1]


def test_objects_nested_1000_deep_save_and_load(tmp_path):
    data = kiln.ones(1)
    for i in range(1000):
        data = {"level": i, "next": [data]} if i % 2 else (data,)
    save(data, tmp_path / "deep.kiln")
    out, depth = load(tmp_path / "deep.kiln"), 0
    while not isinstance(out, kiln.Tensor):
        out, depth = (out["next"][0] if isinstance(out, dict) else out[0]), depth + 1
    assert depth == 1000 and out.tolist() == [1.0]

    chain = Node(kiln.full((2,), 3.0))           # user objects go through pickle
    for _ in range(999):
        chain = Node(chain)
    save(chain, tmp_path / "chain.kiln")
    with kiln.serialization.safe_globals([Node]):
        out = load(tmp_path / "chain.kiln")
    depth = 0
    while isinstance(out, Node):
        out, depth = out.child, depth + 1
    assert depth == 1000 and out.tolist() == [3.0, 3.0]


def test_format_1_files_still_load(tmp_path):
    """Format 1 nested its structure; a file written by it (here 900 tuples deep, deeper than
    format 1 itself could save) loads."""
    inner = {"__dict__": [["w", {"__tensor__": "w", "requires_grad": True}],
                          [7, {"__tuple__": [{"__float__": "nan"}, {"__dtype__": "float16"},
                                             {"__device__": "cpu"}]}]], "type": "OrderedDict"}
    text = '{"__tuple__": [' * 900 + json.dumps(inner) + "]}" * 900
    raw = _craft({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                 np.array([1, 2], "<f4").tobytes(), {"kiln.version": "1", "kiln.structure": text})
    (tmp_path / "v1.kiln").write_bytes(raw)
    out = load(tmp_path / "v1.kiln")
    for _ in range(900):
        (out,) = out
    assert type(out) is OrderedDict and out["w"].tolist() == [1.0, 2.0] and out["w"].requires_grad
    nan, dtype, device = out[7]
    assert math.isnan(nan) and dtype is kiln.float16 and device == kiln.device("cpu")


# ----------------------------------------------------------------------------- safetensors

def test_kiln_files_load_with_the_safetensors_package(tmp_path):
    sd = _state_dict()
    sd["numpy"] = np.array([[1, -2]], dtype=np.int16)
    save(sd, tmp_path / "m.kiln")
    theirs = safetensors.numpy.load_file(str(tmp_path / "m.kiln"))
    assert sorted(theirs) == sorted(sd)
    for key, value in sd.items():
        mine = value if isinstance(value, np.ndarray) else value.numpy()
        assert theirs[key].dtype == mine.dtype
        np.testing.assert_array_equal(theirs[key], mine)


def test_safetensors_package_files_load_with_kiln(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"w": rng.normal(size=(3, 2)).astype(np.float16), "ids": np.arange(5),
              "mask": np.array([True, False]), "empty": np.zeros((2, 0), np.float32),
              "scalar": np.array(3.5)}
    safetensors.numpy.save_file(arrays, str(tmp_path / "st.safetensors"),
                                metadata={"format": "np"})
    out = load(tmp_path / "st.safetensors")
    assert sorted(out) == sorted(arrays)
    for key, arr in arrays.items():
        assert isinstance(out[key], kiln.Tensor) and out[key].dtype.np_dtype == arr.dtype
        np.testing.assert_array_equal(out[key].numpy(), arr)


_U8 = {"dtype": "U8", "shape": [4]}


@pytest.mark.parametrize("case", [
    ("overlap", {"a": dict(_U8, data_offsets=[0, 4]), "b": dict(_U8, data_offsets=[2, 6])}, 6),
    ("hole before the first", {"a": dict(_U8, data_offsets=[2, 6])}, 6),
    ("hole between", {"a": dict(_U8, data_offsets=[0, 4]), "b": dict(_U8, data_offsets=[5, 9])},
     9),
    ("tail after the last", {"a": dict(_U8, data_offsets=[0, 4])}, 6),
    ("same span twice", {"a": dict(_U8, data_offsets=[0, 4]), "b": dict(_U8, data_offsets=[0, 4])},
     4),
    ("span not the size", {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 4]}}, 4),
], ids=lambda c: c[0])
def test_invalid_offsets_are_refused_as_safetensors_refuses_them(tmp_path, case):
    _, header, size = case
    raw = _craft(header, bytes(range(size)))
    with pytest.raises(safetensors.SafetensorError):       # the reference parser agrees
        safetensors.numpy.load(raw)
    (tmp_path / "bad.safetensors").write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*(data_offsets|after its last)"):
        load(tmp_path / "bad.safetensors")


def test_out_of_order_header_with_contiguous_offsets_loads():
    raw = _craft({"b": dict(_U8, data_offsets=[4, 8]), "a": dict(_U8, data_offsets=[0, 4])},
                 bytes(range(8)))
    out = load(io.BytesIO(raw))
    assert list(out) == ["b", "a"] and out["b"].tolist() == [4, 5, 6, 7]
    assert safetensors.numpy.load(raw)["b"].tolist() == [4, 5, 6, 7]


def test_valid_file_whose_length_field_starts_like_a_pickle_loads():
    """A 640-byte header makes the file start with b"\\x80\\x02", a pickle's first bytes."""
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    text = json.dumps(header).encode()
    text += b" " * (640 - len(text))
    raw = struct.pack("<Q", 640) + text + np.array([1.5], "<f4").tobytes()
    assert raw[:2] == b"\x80\x02"
    assert load(io.BytesIO(raw))["a"].tolist() == [1.5]


# ----------------------------------------------------------------------------- pickled objects

def _trained_model_and_optimizer():
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = kiln.optim.Adam(model.parameters(), lr=0.05)
    x, y = kiln.randn(16, 3), kiln.randn(16, 2)
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt, x, y


def _step(model, opt, x, y):
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


def test_whole_model_optimizer_and_user_class_round_trip(tmp_path):
    model, opt, x, y = _trained_model_and_optimizer()
    cfg = RunConfig(lr=0.05, sizes=(3, 8, 2), weights=kiln.arange(3.0))
    save({"model": model, "opt": opt, "cfg": cfg}, tmp_path / "whole.kiln")
    out = load(tmp_path / "whole.kiln", weights_only=False)
    m2, opt2 = out["model"], out["opt"]
    assert type(m2) is nn.Sequential and type(opt2) is kiln.optim.Adam
    assert out["cfg"].sizes == (3, 8, 2) and out["cfg"].weights.tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(m2(x).detach().numpy(), model(x).detach().numpy())
    assert opt2.param_groups[0]["params"][0] is next(m2.parameters())    # shared, not copied
    for _ in range(2):              # the loaded pair trains on exactly as the original does
        _step(model, opt, x, y)
        _step(m2, opt2, x, y)
    for p, q in zip(model.parameters(), m2.parameters()):
        assert type(q) is nn.Parameter and q.requires_grad
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_default_load_refuses_pickled_objects_and_says_how_to_opt_in(tmp_path):
    model, _, _, _ = _trained_model_and_optimizer()
    save(model, tmp_path / "model.kiln")
    with pytest.raises(pickle.UnpicklingError) as info:
        load(tmp_path / "model.kiln")
    text = str(info.value)
    assert isinstance(info.value, CheckpointError) and "model.kiln" in text
    for phrase in ("contains pickled Python objects", "kiln.nn.containers.Sequential",
                   "execute arbitrary code", "weights_only=False",
                   "kiln.serialization.add_safe_globals([Sequential])",
                   "kiln.serialization.safe_globals"):
        assert phrase in text, phrase


def test_allow_listed_globals_load_with_weights_only(tmp_path):
    model, opt, x, _ = _trained_model_and_optimizer()
    cfg = RunConfig(lr=0.1, sizes=(1,), weights=kiln.ones(2))
    save(cfg, tmp_path / "cfg.kiln")
    save({"model": model, "opt": opt}, tmp_path / "whole.kiln")
    kiln.serialization.add_safe_globals([RunConfig])
    assert kiln.serialization.get_safe_globals() == [RunConfig]
    out = load(tmp_path / "cfg.kiln")
    assert out == RunConfig(0.1, (1,), out.weights) and out.weights.tolist() == [1.0, 1.0]
    with pytest.raises(pickle.UnpicklingError, match="Sequential"):
        load(tmp_path / "whole.kiln")
    with kiln.serialization.safe_globals([nn.Sequential, nn.Linear, nn.ReLU, kiln.optim.Adam]):
        out = load(tmp_path / "whole.kiln")
    np.testing.assert_array_equal(out["model"](x).detach().numpy(), model(x).detach().numpy())
    assert kiln.serialization.get_safe_globals() == [RunConfig]       # the block's are gone
    kiln.serialization.clear_safe_globals()
    with pytest.raises(pickle.UnpicklingError, match="RunConfig"):
        load(tmp_path / "cfg.kiln")


def test_pickle_section_holds_no_tensor_bytes(tmp_path):
    big = kiln.tensor(np.random.default_rng(0).normal(size=4096).astype(np.float32))
    save(RunConfig(lr=1.0, sizes=(), weights=big), tmp_path / "cfg.kiln")
    raw = (tmp_path / "cfg.kiln").read_bytes()
    header = _header_of(raw)
    pickled = base64.b64decode(header["__metadata__"]["kiln.pickle"])
    assert len(pickled) < 1000 and big.numpy().tobytes()[:64] not in pickled
    (entry,) = [v for k, v in header.items() if k != "__metadata__"]
    assert entry["dtype"] == "F32" and entry["shape"] == [4096]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_object_in_a_checkpoint_never_runs_under_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    save({"w": kiln.ones(2), "x": _Exploit(marker)}, tmp_path / "evil.kiln")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.kiln.*posix\.system"):
        load(tmp_path / "evil.kiln")
    with kiln.serialization.safe_globals([RunConfig, Node]):
        with pytest.raises(pickle.UnpicklingError, match="posix.system"):
            load(tmp_path / "evil.kiln")
    assert not marker.exists()
    load(tmp_path / "evil.kiln", weights_only=False)    # the opt-in really trusts the file
    assert marker.exists()


class _Mutator:
    """Pickles as "take kiln's interned cpu device and set its type to cuda"."""

    def __reduce__(self):
        return (kiln.device, ("cpu",), (None, {"type": "cuda"}))


def test_allowed_types_cannot_have_their_state_set(tmp_path):
    save([_Mutator()], tmp_path / "mutate.kiln")
    with pytest.raises(pickle.UnpicklingError, match="setting the state of a Device"):
        load(tmp_path / "mutate.kiln")
    assert kiln.device("cpu").type == "cpu"
    cpu = kiln.device("cpu")
    try:                                    # without the check the singleton is corrupted
        load(tmp_path / "mutate.kiln", weights_only=False)
        assert cpu.type == "cuda"
    finally:
        object.__setattr__(cpu, "type", "cpu")


def test_kiln_serialization_is_usable_as_torch_serialization(tmp_path):
    """`import kiln as torch` scripts reach torch.serialization.* without importing it."""
    script = textwrap.dedent(f"""
        import dataclasses, sys
        sys.path.insert(0, {ROOT!r})
        import kiln as torch

        @dataclasses.dataclass
        class Config:
            lr: float

        torch.save({{"cfg": Config(0.5), "w": torch.ones(1)}}, {str(tmp_path / "c.kiln")!r})
        with torch.serialization.safe_globals([Config]):
            first = torch.load({str(tmp_path / "c.kiln")!r})
        torch.serialization.add_safe_globals([(Config, "__main__.Config")])
        again = torch.load({str(tmp_path / "c.kiln")!r})
        print(first["cfg"].lr, again["w"].tolist(), len(torch.serialization.get_safe_globals()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.5", "[1.0]", "1"]


# ----------------------------------------------------------------------------- foreign files

@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_bare_pickles_are_recognised_and_never_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weights": _Exploit(marker)}, protocol=protocol))
    for weights_only in (True, False):          # nothing to allow: refused either way
        with pytest.raises(CheckpointError, match=rf"evil\.pt.*pickle \(protocol {protocol}"):
            load(path, weights_only=weights_only)
    assert not marker.exists()


def test_tiny_text_pickle_is_recognised(tmp_path):
    (tmp_path / "none.pkl").write_bytes(pickle.dumps(None, protocol=0))    # b"N."
    with pytest.raises(CheckpointError, match=r"none\.pkl.*pickle \(protocol 0"):
        load(tmp_path / "none.pkl")


def test_a_torch_checkpoint_loads_its_tensors_and_numbers(tmp_path):
    """`torch.save` of a training checkpoint (state dicts, numbers, strings) loads as PyTorch's
    weights_only load reads it; a model and optimizer built in kiln take its state dicts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    opt.step()
    extra = {"int8": torch.arange(-2, 2, dtype=torch.int8), "c": torch.tensor([1 + 2j]),
             "view": torch.arange(10.0)[2:8:2], "param": torch.nn.Parameter(torch.ones(2))}
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 3,
                "tag": "run-1", **extra}, tmp_path / "ck.pt")
    ck = load(tmp_path / "ck.pt")
    assert ck["epoch"] == 3 and ck["tag"] == "run-1"
    for key, value in extra.items():
        assert str(ck[key].dtype).split(".")[-1] == str(value.dtype).split(".")[-1]
        np.testing.assert_array_equal(ck[key].detach().numpy(), value.detach().numpy())
    assert isinstance(ck["param"], kiln.nn.Parameter) and ck["param"].requires_grad
    kmodel = kiln.nn.Sequential(kiln.nn.Linear(3, 4), kiln.nn.ReLU(), kiln.nn.BatchNorm1d(4),
                                kiln.nn.Linear(4, 2))
    kmodel.load_state_dict(ck["model"])
    kopt = kiln.optim.Adam(kmodel.parameters(), lr=0.01)
    kopt.load_state_dict(ck["opt"])
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    for lib, m, o in ((torch, model, opt), (kiln, kmodel, kopt)):     # one more step each
        o.zero_grad()
        m(lib.tensor(x)).pow(2).sum().backward()
        o.step()
    for a, b in zip(kmodel.state_dict().values(), model.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)   # lr 0.01
    moved = load(tmp_path / "ck.pt", map_location=lambda t, where: t.double())
    assert moved["model"]["0.weight"].dtype is kiln.float64


def test_torch_files_that_need_code_are_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")       # a pickled module
    with pytest.raises(CheckpointError, match=r"whole\.pt.*torch\.nn\.modules.*Linear"):
        load(tmp_path / "whole.pt")
    # the pre-1.6 format is read by the same rules (tests/test_torch_checkpoint_legacy.py)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy\.pt.*torch\.nn\.modules.*Linear"):
        load(tmp_path / "legacy.pt")


# ----------------------------------------------------------------------------- corrupt files

def _saved(kind: str) -> object:
    if kind == "state_dict":
        return _state_dict()
    if kind == "numpy":
        return {"a": np.arange(12.0).reshape(3, 4), "b": [np.int8(3), np.array([True])]}
    return {"cfg": RunConfig(lr=0.5, sizes=(1, 2), weights=kiln.arange(8.0)), "n": 3}


@pytest.mark.parametrize("kind", ["state_dict", "numpy", "pickled"])
@pytest.mark.parametrize("cut", [0, 3, 8, 20, "header-1", "data/2", "end-1"])
def test_truncated_file_names_the_file(tmp_path, cut, kind):
    kiln.serialization.add_safe_globals([RunConfig])
    save(_saved(kind), tmp_path / "full.kiln")
    assert load(tmp_path / "full.kiln") is not None
    raw = (tmp_path / "full.kiln").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    size = {"header-1": 8 + n - 1, "data/2": 8 + n + (len(raw) - 8 - n) // 2,
            "end-1": len(raw) - 1}.get(cut, cut)
    (tmp_path / "cut.kiln").write_bytes(raw[:size])
    with pytest.raises(CheckpointError, match=r"cut\.kiln.*(truncated|header)"):
        load(tmp_path / "cut.kiln")


@pytest.mark.parametrize("kind", ["state_dict", "numpy", "pickled"])
def test_every_flipped_header_byte_is_detected(kind):
    kiln.serialization.add_safe_globals([RunConfig])
    obj = {"w": kiln.ones(2, 3), "step": 4, "name": "abc"} if kind == "state_dict" else \
        _saved(kind)
    buf = io.BytesIO()
    save(obj, buf)
    raw = buf.getvalue()
    load(io.BytesIO(raw))
    (n,) = struct.unpack("<Q", raw[:8])
    for pos in range(8 + n):
        for mask in (0x01, 0x20, 0xFF):
            data = bytearray(raw)
            data[pos] ^= mask
            bad = io.BytesIO(bytes(data))
            bad.name = "bad.kiln"
            with pytest.raises(CheckpointError, match=r"bad\.kiln"):
                load(bad)


def test_corrupted_data_is_detected(tmp_path):
    save({"w": kiln.ones(64)}, tmp_path / "ok.kiln")
    data = bytearray((tmp_path / "ok.kiln").read_bytes())
    data[-7] ^= 0x04
    (tmp_path / "bad.kiln").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.kiln.*checksum"):
        load(tmp_path / "bad.kiln")


_W = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
_W_DATA = np.array([1, 2], "<f4").tobytes()


def _text_header(text: str, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(text)) + text.encode() + data


def _structure(nodes) -> bytes:
    return _craft(_W, _W_DATA, {"kiln.structure": nodes if isinstance(nodes, str)
                                else json.dumps(nodes)})


_HOSTILE = {
    "header nested 100000 deep": (
        struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "structure nested 100000 deep": (
        _structure("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "structure node nested 900 deep": (_structure("[" + "[" * 900 + "]" * 900 + "]"),
                                       "(not a node|nested too deeply)"),
    "format 1 structure nested 100000 deep": (
        _craft(_W, _W_DATA, {"kiln.version": "1", "kiln.structure": "[" * 100_000 + "]" * 100_000}),
        "nested too deeply"),
    "shape [2**63, 0]": (_craft({"a": {"dtype": "F32", "shape": [2 ** 63, 0],
                                       "data_offsets": [0, 0]}}), "impossible shape"),
    "shape [2**62, 4, 0]": (_craft({"a": {"dtype": "F64", "shape": [2 ** 62, 4, 0],
                                          "data_offsets": [0, 0]}}), "impossible shape"),
    "shape of 65 dims": (_craft({"a": {"dtype": "U8", "shape": [1] * 65,
                                       "data_offsets": [0, 1]}}, b"x"), "impossible shape"),
    "negative shape": (_craft({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
                       "invalid shape"),
    "unknown dtype": (_craft({"a": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [0, 8]}},
                             bytes(8)), "unknown dtype 'F8_E5M2'"),
    "duplicate tensor name": (_text_header('{"a": {"dtype": "U8", "shape": [1], "data_offsets": '
                                           '[0, 1]}, "a": {"dtype": "U8", "shape": [1], '
                                           '"data_offsets": [0, 1]}}', b"x"),
                              "duplicate key 'a'"),
    "metadata not strings": (_text_header('{"__metadata__": {"a": [1, 2, 3]}}'), "__metadata__"),
    "tuple of a number": (_structure([5, {"tuple": 5}]), "node 1 .*not a list"),
    "format 1 tuple of a number": (
        _craft(_W, _W_DATA, {"kiln.version": "1", "kiln.structure": '{"__tuple__": 5}'}),
        "unknown entry"),
    "list as a tensor name": (_structure([{"tensor": ["w"]}]), r"tensor \['w'\]"),
    "format 1 list as a tensor name": (
        _craft(_W, _W_DATA, {"kiln.version": "1", "kiln.structure": '{"__tensor__": ["w"]}'}),
        r"tensor \['w'\]"),
    "unknown tensor": (_structure([{"tensor": "v"}]), "tensor 'v', which the header"),
    "unknown tensor device": (_structure([{"tensor": "w", "device": "tpu:0"}]),
                              "device 'tpu:0' is not a device"),
    "unknown device value": (_structure([{"device": "quantum"}]), "node 0 .*quantum"),
    "forward reference": (_structure([{"list": [1]}, 3]), "node 0 .*earlier node"),
    "self reference": (_structure([{"list": [0]}]), "node 0 .*earlier node"),
    "unhashable key": (_structure([{"list": []}, {"dict": [[0, 0]]}]), "node 1 .*unhashable"),
    "unknown node": (_structure([{"eval": "os.system('x')"}]), "unknown node keys"),
    "integer parameter requiring grad": (
        _craft({"i": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8),
               {"kiln.structure": json.dumps([{"tensor": "i", "class": "Parameter",
                                               "requires_grad": True}])}),
        "integer Parameter"),
    "newer format": (_craft(_W, _W_DATA, {"kiln.version": "9", "kiln.structure": "[0]"}),
                     "newer kiln"),
    "pickle not base64": (_craft(_W, _W_DATA, {"kiln.pickle": "!!"}), "not base64"),
    "pickle garbage": (_craft(_W, _W_DATA, {"kiln.pickle": base64.b64encode(
        b"\x80\x05garbage").decode()}), "could not be rebuilt"),
    "pickle of an unknown persistent id": (_craft(_W, _W_DATA, {"kiln.pickle": base64.b64encode(
        b"\x80\x04\x8c\x04evilQ.").decode()}), "unknown object 'evil'"),
}


@pytest.mark.parametrize("name", list(_HOSTILE))
def test_hostile_headers_raise_checkpoint_error_naming_the_file(tmp_path, name):
    raw, why = _HOSTILE[name]
    (tmp_path / "hostile.kiln").write_bytes(raw)
    with pytest.raises(CheckpointError, match=rf"hostile\.kiln.*{why}"):
        load(tmp_path / "hostile.kiln")


def test_header_length_over_the_limit_says_so(tmp_path):
    path = tmp_path / "big.kiln"
    with open(path, "wb") as f:            # a sparse 300 MiB file: longer than its header
        f.write(struct.pack("<Q", 200 * 2 ** 20) + b"{")
        f.truncate(300 * 2 ** 20)
    with pytest.raises(CheckpointError) as info:
        load(path)
    text = str(info.value)
    assert "big.kiln" in text and "209715200 bytes, more than the 100 MiB" in text
    assert "only" not in text               # the file is not shorter than the header


# ----------------------------------------------------------------------------- saving safely

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


def test_read_only_checkpoint_is_not_replaced(tmp_path):
    """As root, os.access() calls a chmod 444 file writable (open() would succeed); kiln refuses
    a file with no write bit at all even for root, so this test means the same for anyone."""
    path = tmp_path / "keep.kiln"
    save({"w": kiln.ones(2)}, path)
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match=r"keep\.kiln is read-only"):
        save({"w": kiln.zeros(2)}, path)
    assert path.read_bytes() == before and stat.S_IMODE(os.stat(path).st_mode) == 0o444
    os.symlink("keep.kiln", tmp_path / "link.kiln")
    with pytest.raises(PermissionError, match=r"keep\.kiln is read-only"):
        save({"w": kiln.zeros(2)}, tmp_path / "link.kiln")     # through a link, the same
    assert sorted(os.listdir(tmp_path)) == ["keep.kiln", "link.kiln"]


def test_unwritable_directory_is_refused(tmp_path):
    """As root a chmod 555 directory is still writable; kiln's rule (no write bit at all)
    refuses it for root too, so the test is meaningful whoever runs it."""
    folder = tmp_path / "locked"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(PermissionError, match=r"directory .*locked is not writable"):
            save({"w": kiln.ones(2)}, folder / "new.kiln")
        assert os.listdir(folder) == []
    finally:
        os.chmod(folder, 0o755)


def test_save_writes_through_symlinks_and_keeps_the_mode(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "epoch3.kiln"
    save({"epoch": 3}, target)
    os.chmod(target, 0o640)
    os.symlink("runs/epoch3.kiln", tmp_path / "latest.kiln")
    os.symlink("latest.kiln", tmp_path / "best.kiln")               # a chain of links
    save({"epoch": 4}, tmp_path / "best.kiln")
    assert os.readlink(tmp_path / "best.kiln") == "latest.kiln"
    assert os.readlink(tmp_path / "latest.kiln") == "runs/epoch3.kiln"
    assert load(target) == {"epoch": 4} and load(tmp_path / "latest.kiln") == {"epoch": 4}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path / "runs")) == ["epoch3.kiln"]   # no temporary left
    os.symlink("runs/new.kiln", tmp_path / "dangling.kiln")
    save({"epoch": 5}, tmp_path / "dangling.kiln")                   # creates the target
    assert os.path.islink(tmp_path / "dangling.kiln")
    assert load(tmp_path / "runs" / "new.kiln") == {"epoch": 5}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "runs" / "new.kiln").st_mode) == 0o666 & ~umask


def test_map_location(tmp_path):
    save({"w": kiln.ones(2)}, tmp_path / "m.kiln")
    for loc in ("cpu", kiln.device("cpu"), {"cuda:0": "cpu"}, torch.device("cpu"),
                {"cpu": torch.device("cpu")}, lambda storage, loc: storage):
        out = load(tmp_path / "m.kiln", map_location=loc)["w"]
        assert out.device.type == "cpu" and out.tolist() == [1.0, 1.0]
    seen = []
    out = load(tmp_path / "m.kiln", map_location=lambda t, where: seen.append(where) or t * 2)
    assert seen == ["cpu"] and out["w"].tolist() == [2.0, 2.0]
    if not kiln.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load(tmp_path / "m.kiln", map_location="cuda")


def test_pickled_objects_through_file_objects_with_map_location():
    model, _, x, _ = _trained_model_and_optimizer()
    buf = io.BytesIO()
    save(model, buf)
    for loc in (torch.device("cpu"), "cpu", lambda storage, loc: storage):
        out = load(io.BytesIO(buf.getvalue()), map_location=loc, weights_only=False)
        np.testing.assert_array_equal(out(x).detach().numpy(), model(x).detach().numpy())


@pytest.mark.gpu
def test_cuda_tensors_round_trip_and_map_location(tmp_path):
    """Runs on a GPU, and under fake CUDA in CI (tests/test_fake_cuda.py)."""
    w = kiln.arange(4.0).cuda().requires_grad_()
    model = nn.Linear(2, 3).cuda()
    save({"w": w, "model": model, "arr": np.ones(2)}, tmp_path / "gpu.kiln")
    save({"w": w}, tmp_path / "data.kiln")
    out = load(tmp_path / "data.kiln")
    assert out["w"].device == kiln.device("cuda:0") and out["w"].requires_grad
    assert out["w"].cpu().tolist() == [0.0, 1.0, 2.0, 3.0]
    for loc in ("cpu", {"cuda:0": "cpu"}, torch.device("cpu"), lambda storage, loc: storage):
        out = load(tmp_path / "gpu.kiln", map_location=loc, weights_only=False)
        assert out["w"].device.type == "cpu" and out["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
        assert next(out["model"].parameters()).device.type == "cpu"
        assert type(out["arr"]) is np.ndarray
    out = load(tmp_path / "gpu.kiln", weights_only=False)
    assert all(p.device == kiln.device("cuda:0") for p in out["model"].parameters())
    x = kiln.randn(5, 2).cuda()
    np.testing.assert_array_equal(out["model"](x).detach().cpu().numpy(),
                                  model(x).detach().cpu().numpy())


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

    class Run:                      # a user object: the checkpoint gets a pickle section
        epoch = 2

    os.fsync = slow_fsync
    big = kiln.full((4_000_000,), 2.0)
    print("saving", flush=True)
    save({{"w": big, "epoch": 2, "run": Run() if {pickled} else None}}, {path!r})
    print("done", flush=True)
""")


@pytest.mark.parametrize("how", ["path", "symlink", "pickled"])
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, how):
    (tmp_path / "real").mkdir()
    path = tmp_path / "real" / "ckpt.kiln"
    save({"w": kiln.ones(3), "epoch": 1}, path)
    before = path.read_bytes()
    given = path
    if how == "symlink":
        given = tmp_path / "latest.kiln"
        os.symlink(path, given)
    script = _CHILD.format(root=ROOT, path=str(given), pickled=how == "pickled")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        temps = []
        while time.time() < deadline and not temps:     # beside the target, not the link
            temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
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
    if how == "symlink":
        assert os.path.islink(given) and os.readlink(given) == str(path)
    ckpt = load(given)
    assert ckpt["epoch"] == 1 and ckpt["w"].tolist() == [1.0, 1.0, 1.0]
