"""kiln.load on random input: random bytes, random but valid-looking headers (random tensors,
offsets, dtypes, shapes, structures and pickles, usually with a correct checksum so the checks
after it are reached), and damaged copies of real checkpoints. Every outcome is either a
CheckpointError or a correct load."""

import base64
import dataclasses
import functools
import io
import json
import math
import pickle
import struct
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kiln
import kiln.serialization
from kiln.serialization import CheckpointError, load, save

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

# safetensors codes and the NumPy types they mean (kiln tensors have the first eleven)
_CODES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1",
          "BOOL": "?", "I16": "<i2", "I8": "i1", "C64": "<c8", "C128": "<c16", "U64": "<u8",
          "U32": "<u4", "U16": "<u2"}


@dataclasses.dataclass
class Box:
    """A user class, so that some checkpoints carry a pickle section."""
    label: str
    payload: object


def _same(a, b) -> bool:
    """Equal values of equal types, NaN equal to NaN, tensors and arrays by dtype and bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, kiln.Tensor):
        return (a.dtype is b.dtype and a.requires_grad == b.requires_grad and
                _same_array(a.detach().numpy(), b.detach().numpy()))
    if isinstance(a, np.ndarray):
        return _same_array(a, b)
    if isinstance(a, (float, np.floating)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Box):
        return a.label == b.label and _same(a.payload, b.payload)
    return a == b


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------- random headers

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=3),
                  st.lists(st.integers(0, 2), max_size=2), st.just(2 ** 64))


@st.composite
def _tensor_entries(draw):
    """A header's tensor entries and data section: mostly valid, sometimes subtly not."""
    names = draw(st.lists(st.sampled_from(["a", "b", "w", "x.y", "0", "__metadata__x"]),
                          max_size=4, unique=True))
    header, offset = {}, 0
    for name in names:
        # at most one flaw per tensor, and most tensors have none
        flaw = draw(st.sampled_from(["none"] * 24 + ["dtype", "shape", "shift", "grow", "back",
                                                     "offsets"]))
        code = draw(st.sampled_from(list(_CODES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = math.prod(shape) * np.dtype(_CODES[code]).itemsize
        if flaw == "dtype":
            code = draw(st.sampled_from(["F8_E5M2", "f32", "", 7, None]))
        if flaw == "shape":
            shape = draw(st.sampled_from([[-1], [2 ** 63, 0], [2 ** 62, 4, 0], [2.0], "3",
                                          [1] * 70, None, [True]]))
        begin = offset + {"shift": 1, "back": -1}.get(flaw, 0)
        end = begin + nbytes + (1 if flaw == "grow" else 0)
        entry = {"dtype": code, "shape": shape, "data_offsets": [begin, end]}
        if flaw == "offsets":
            entry["data_offsets"] = draw(_JUNK)
        header[name] = entry
        offset = max(offset, end)
    size = offset + draw(st.sampled_from([0] * 16 + [-1, 1, 3]))
    return header, draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))


@functools.lru_cache(maxsize=None)
def _node(i: int, names: tuple) -> st.SearchStrategy:
    """Node number i of a random table: it refers (mostly) to earlier nodes and to the header's
    tensor names. Cached: building the strategy costs more than drawing from it."""
    ref = st.integers(0, i - 1) if i else st.integers(-1, 1)
    ref = ref | st.integers(-2, i + 1) | _JUNK
    name = st.sampled_from(list(names) or ["a"]) | _JUNK
    return st.one_of(
        st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
        st.text(max_size=4), _JUNK,
        st.builds(lambda kind, r: {kind: r},
                  st.sampled_from(["list", "tuple", "set", "frozenset"]),
                  st.lists(ref, max_size=3) | _JUNK),
        st.builds(lambda kind, r: {kind: r}, st.sampled_from(["dict", "OrderedDict"]),
                  st.lists(st.lists(ref, min_size=1, max_size=3), max_size=2) | _JUNK),
        st.builds(lambda n, extra: dict({"tensor": n}, **extra), name, st.fixed_dictionaries(
            {}, optional={"class": st.sampled_from(["Tensor", "Parameter", "Module"]),
                          "requires_grad": st.booleans() | _JUNK,
                          "device": st.sampled_from(["cpu", "cuda:0", "tpu", "cuda:x"])})),
        st.builds(lambda n: {"ndarray": n}, name),
        st.builds(lambda t, v: {"numpy": t, "value": v},
                  st.sampled_from(["float32", "int8", "uint64", "bool", "float16",
                                   "complex64", "object"]) | _JUNK,
                  st.integers(-2 ** 65, 2 ** 65) | st.floats() | st.booleans() |
                  st.sampled_from(["nan", "-inf", "x"])),
        st.builds(lambda v: {"float": v}, st.sampled_from(["nan", "inf", "-inf", "1"]) | _JUNK),
        st.builds(lambda v: {"complex": v}, st.lists(st.floats() | st.sampled_from(
            ["nan", "inf", "q"]), max_size=3)),
        st.builds(lambda kind, v: {kind: v}, st.sampled_from(["bytes", "bytearray"]),
                  st.binary(max_size=6).map(lambda b: base64.b64encode(b).decode()) |
                  st.text(max_size=4) | _JUNK),
        st.builds(lambda v: {"dtype": v}, st.sampled_from(["float32", "int64", "bool",
                                                          "Tensor", "nope"]) | _JUNK),
        st.builds(lambda v: {"device": v}, st.sampled_from(["cpu", "cuda:1", "gpu"]) | _JUNK),
        st.builds(lambda v: {"Size": v}, st.lists(st.integers(-1, 4), max_size=3) | _JUNK),
        st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
    )


@st.composite
def _structures(draw, names):
    """A random node table of one to six nodes."""
    return [draw(_node(i, tuple(names))) for i in range(draw(st.integers(1, 6)))]


_PLAIN_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8)


# valid pickles of plain data, random bytes, and pickles of a global that is not allowed
_PICKLES = (st.tuples(_PLAIN_VALUES, st.integers(0, 5)).map(lambda vp: pickle.dumps(*vp)) |
            st.binary(max_size=40) |
            st.sampled_from([b"\x80\x05\x8c\x02os\x8c\x06system\x93.",
                             b"\x80\x04\x8c\x01a\x94Q."]))


def _metadata(draw, names) -> dict | None:
    kind = draw(st.sampled_from(["none", "plain", "structure", "structure", "structure",
                                 "pickle", "pickle"]))
    if kind == "none":
        return None
    if kind == "plain":
        return {"format": "pt"}
    meta = {"format": "kiln", "kiln.version": draw(st.sampled_from(["2"] * 6 + ["1", "3"]))}
    if kind == "structure":
        nodes = draw(_structures(names))
        meta["kiln.structure"] = json.dumps(nodes) if draw(st.integers(0, 9)) else "[[[[0"
    else:
        meta["kiln.pickle"] = base64.b64encode(draw(_PICKLES)).decode()
    return meta


def _file(header: dict, meta: dict | None, data: bytes, checksum: str) -> bytes:
    header = dict(header)
    if meta is not None:
        meta = dict(meta)
        if checksum == "right":
            canonical = json.dumps(dict(header, __metadata__=meta), sort_keys=True,
                                   separators=(",", ":")).encode()
            meta["kiln.crc32"] = f"{zlib.crc32(data, zlib.crc32(canonical)):08x}"
        elif checksum == "wrong":
            meta["kiln.crc32"] = "0badf00d"
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _check_correct(out, raw_header: dict, data: bytes) -> None:
    """A load that succeeded returned what the file says."""
    tensors = {k: v for k, v in raw_header.items() if k != "__metadata__"}
    meta = raw_header.get("__metadata__") or {}
    if "kiln.structure" not in meta and "kiln.pickle" not in meta:
        assert list(out) == list(tensors)
        for key, entry in tensors.items():
            begin, end = entry["data_offsets"]
            expect = np.frombuffer(data[begin:end], dtype=_CODES[entry["dtype"]])
            assert isinstance(out[key], kiln.Tensor)
            assert out[key].numpy().tobytes() == expect.astype(expect.dtype.newbyteorder("="))\
                .reshape(entry["shape"]).tobytes()
        return
    if "kiln.structure" in meta and meta.get("kiln.version") == "2":
        root = json.loads(meta["kiln.structure"])[-1]
        if isinstance(root, dict):
            kind = next(iter(root))
            expect = {"list": list, "tuple": tuple, "dict": dict, "OrderedDict": OrderedDict,
                      "set": set, "frozenset": frozenset, "ndarray": np.ndarray,
                      "bytes": bytes, "bytearray": bytearray, "complex": complex,
                      "float": float, "Size": kiln.Size, "dtype": kiln.dtype,
                      "device": kiln.device}.get(kind)
            if expect is not None:
                assert type(out) is expect
            if kind in ("tensor", "ndarray"):
                entry = tensors[root[kind]]
                begin, end = entry["data_offsets"]
                got = out if kind == "ndarray" else out.detach().numpy()
                assert got.tobytes() == np.frombuffer(
                    data[begin:end], dtype=_CODES[entry["dtype"]]).tobytes()
        else:
            assert _same(out, root)
    # and what loaded saves and loads back the same
    buf = io.BytesIO()
    save(out, buf)
    assert _same(load(io.BytesIO(buf.getvalue()), weights_only=False), out)


@pytest.mark.parametrize("raw", [b"PK\x03\x04", b"PK\x03\x04" + bytes(60),
                                 b"PK\x03\x04junk" + b"PK\x05\x06" + bytes(4)])
def test_a_file_starting_like_a_zip_but_not_one_raises_checkpoint_error(raw):
    # (hypothesis drew `PK\x03\x04` alone in one CI run: zipfile's BadZipFile escaped)
    with pytest.raises(CheckpointError, match="cannot read .* as a torch.save state dict"):
        load(io.BytesIO(raw))


@FUZZ
@given(st.data())
def test_random_files_load_correctly_or_raise_checkpoint_error(data):
    if data.draw(st.integers(0, 4)) == 0:
        raw = data.draw(st.binary(max_size=64) | st.binary(max_size=64).map(
            lambda b: struct.pack("<Q", len(b)) + b))
        header, body = None, b""
    else:
        entries, body = data.draw(_tensor_entries())
        meta = _metadata(data.draw, list(entries))
        checksum = data.draw(st.sampled_from(["right"] * 8 + ["wrong", "missing"]))
        raw = _file(entries, meta, body, checksum)
        header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    try:
        out = load(io.BytesIO(raw))
    except CheckpointError:
        return
    if header is not None:
        _check_correct(out, header, body)


# ----------------------------------------------------------------------------- real files, damaged

_TENSORS = st.builds(
    lambda arr, grad: kiln.tensor(arr, requires_grad=grad and arr.dtype.kind == "f"),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]),
               hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)),
    st.booleans())
_ARRAYS = hnp.arrays(st.sampled_from([np.float16, np.int16, np.uint64, np.int8, np.bool_]),
                     hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4) |
           st.binary(max_size=4) | st.complex_numbers() | _TENSORS | _ARRAYS |
           st.sampled_from([np.float32(1.5), np.int8(-3), np.bool_(False), kiln.float16,
                            kiln.device("cpu"), kiln.Size([2, 0])]))
_OBJECTS = st.recursive(
    _LEAVES,
    lambda inner: (st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple) |
                   st.dictionaries(st.integers(-3, 3) | st.text(max_size=3), inner, max_size=3) |
                   st.dictionaries(st.text(max_size=3), inner, max_size=3).map(OrderedDict) |
                   st.builds(Box, st.text(max_size=3), inner)),
    max_leaves=10)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(_OBJECTS, st.sampled_from(["none", "flip", "flip", "cut", "append"]), st.data())
def test_damaged_checkpoints_load_correctly_or_raise_checkpoint_error(obj, damage, data):
    buf = io.BytesIO()
    save(obj, buf)
    raw = bytearray(buf.getvalue())
    if damage == "flip":
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif damage == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    elif damage == "append":
        raw += data.draw(st.binary(min_size=1, max_size=9))
    with kiln.serialization.safe_globals([Box]):
        try:
            out = load(io.BytesIO(bytes(raw)))
        except CheckpointError:
            assert damage != "none"
            return
    # the only damage a checksum cannot see is JSON whitespace: the load must be exact
    assert _same(out, obj)


def test_numpy_complex_scalars_round_trip():
    # (kiln.save raised TypeError on np.complex64: its value went into the JSON as a complex;
    # the fuzz drew a file holding one and saved what it loaded)
    values = {"a": np.complex64(1 + 2j), "b": np.complex128(complex(-0.0, math.inf)),
              "c": [np.complex64(0)]}
    buf = io.BytesIO()
    save(values, buf)
    out = load(io.BytesIO(buf.getvalue()), weights_only=False)
    for got, want in ((out["a"], values["a"]), (out["b"], values["b"]),
                      (out["c"][0], values["c"][0])):
        assert type(got) is type(want) and got.real == want.real and got.imag == want.imag
        assert math.copysign(1, got.real) == math.copysign(1, want.real)
