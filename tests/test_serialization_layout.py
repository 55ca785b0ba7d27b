"""kiln.save / kiln.load keep a dense tensor's layout (channels_last, a transpose's strides) as
torch.save / torch.load do, while the data section stays row-major for safetensors readers."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors.numpy import load as safetensors_load

import kiln
import kiln.nn as nn
from kiln.serialization import CheckpointError

LAYOUTS = {
    "channels_last": lambda lib, x: x.to(memory_format=lib.channels_last),
    "channels_last_batch_1": lambda lib, x: x[:1].to(memory_format=lib.channels_last),
    "channels_last_one_channel": lambda lib, x: x[:, :1].to(memory_format=lib.channels_last),
    "channels_last_3d": lambda lib, x: x.reshape(2, 3, 2, 2, 5).to(
        memory_format=lib.channels_last_3d),
    "permuted": lambda lib, x: x.permute(0, 2, 1, 3),
    "transposed": lambda lib, x: x[0, 0].t(),
    "row_major": lambda lib, x: x * 1.0,
}


def _round_trip(lib, obj):
    buf = io.BytesIO()
    lib.save(obj, buf)
    buf.seek(0)
    return lib.load(buf, weights_only=False), buf.getvalue()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_saved_layout_loads_back_as_torch_gives_it_back(name):
    data = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    seen = []
    for lib in (torch, kiln):
        t = LAYOUTS[name](lib, lib.tensor(data))
        loaded, _ = _round_trip(lib, {"w": t, "again": [t]})
        r = loaded["w"]
        formats = [f for f in ("channels_last", "channels_last_3d")
                   if r.ndim == len(f.split("_")) + 2 and
                   r.is_contiguous(memory_format=getattr(lib, f))]
        seen.append((r.stride(), r.is_contiguous(), formats, r.numpy().tolist()))
        assert loaded["again"][0] is r
    assert seen[1] == seen[0]


def test_the_data_section_stays_row_major_for_safetensors_readers():
    data = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    t = kiln.tensor(data).to(memory_format=kiln.channels_last)
    loaded, raw = _round_trip(kiln, {"w": t})
    assert loaded["w"].is_contiguous(memory_format=kiln.channels_last)
    np.testing.assert_array_equal(safetensors_load(raw)["w"], data)


def test_a_pickled_module_keeps_its_channels_last_weights():
    torch_model = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    model = nn.Conv2d(3, 4, 3).to(memory_format=kiln.channels_last)
    model.weight.data = kiln.tensor(torch_model.weight.detach().numpy()).to(
        memory_format=kiln.channels_last)
    loaded, _ = _round_trip(kiln, model)           # the whole module: the pickle route
    torch_loaded, _ = _round_trip(torch, torch_model)
    assert loaded.weight.stride() == torch_loaded.weight.stride() == (27, 1, 9, 3)
    assert isinstance(loaded.weight, nn.Parameter) and loaded.weight.requires_grad
    np.testing.assert_array_equal(loaded.weight.detach().numpy(),
                                  torch_loaded.weight.detach().numpy())


def test_a_state_dict_loads_into_a_channels_last_model_with_its_values():
    src = nn.Conv2d(2, 3, 3).to(memory_format=kiln.channels_last)
    loaded, _ = _round_trip(kiln, src.state_dict())
    assert loaded["weight"].is_contiguous(memory_format=kiln.channels_last)
    dst = nn.Conv2d(2, 3, 3)
    dst.load_state_dict(loaded)
    x = kiln.randn(1, 2, 5, 5)
    np.testing.assert_array_equal(dst(x).detach().numpy(), src(x).detach().numpy())


def test_a_bad_dim_order_is_refused_naming_the_tensor():
    t = kiln.randn(2, 3, 4, 5).to(memory_format=kiln.channels_last)
    _, raw = _round_trip(kiln, {"w": t})
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    meta = header.pop("__metadata__")
    nodes = json.loads(meta["kiln.structure"])
    assert {"tensor": "w", "dim_order": [0, 2, 3, 1]} in nodes
    for bad in ([0, 2, 3, 3], [0, 1], "0231", [0.0, 2, 3, 1]):
        nodes_bad = [dict(n, dim_order=bad) if isinstance(n, dict) and "tensor" in n else n
                     for n in nodes]
        forged = {"format": "kiln", "kiln.version": "2",
                  "kiln.structure": json.dumps(nodes_bad)}
        canonical = json.dumps(dict(header, __metadata__=forged), sort_keys=True,
                               separators=(",", ":")).encode()
        forged["kiln.crc32"] = f"{zlib.crc32(data, zlib.crc32(canonical)):08x}"
        text = json.dumps(dict(header, __metadata__=forged)).encode()
        text += b" " * (-len(text) % 8)
        with pytest.raises(CheckpointError, match="tensor 'w' has a dim_order"):
            kiln.load(io.BytesIO(struct.pack("<Q", len(text)) + text + data))
