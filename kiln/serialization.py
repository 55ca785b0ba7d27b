"""`kiln.save` / `kiln.load`: checkpoints in the safetensors layout, never pickled, written
atomically.

A file is an 8-byte little-endian header length N, N bytes of JSON header, then the tensors'
bytes. The header maps tensor names to `{"dtype", "shape", "data_offsets"}` as safetensors does;
its `__metadata__` holds `kiln.structure`, a JSON text describing the saved Python object with
`{"__tensor__": name}` where each tensor goes, and `kiln.crc32`, a checksum over the header and
the data. README.md ("Checkpoint format") documents it in full.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tempfile
import zlib
from collections import OrderedDict
from typing import Any, BinaryIO

import numpy as np

import kiln
from kiln import Tensor

__all__ = ["save", "load", "CheckpointError"]

FORMAT_VERSION = "1"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}
_CODE = {np.dtype(v): k for k, v in _DTYPES.items()}
# the longest header we accept: a real one is far smaller, a garbage length is usually huge
_MAX_HEADER = 100 * 1024 * 1024
_NUMBERS = (bool, int, float)


class CheckpointError(RuntimeError):
    """A file that is not a readable kiln checkpoint: truncated, corrupt or foreign."""


# ----------------------------------------------------------------------------- save

class _Encoder:
    """Walks the object to save: returns its JSON structure and collects the tensors."""

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {}          # id(tensor) -> name: one copy per object
        self.keep: list[Tensor] = []             # keeps ids valid while encoding
        self.active: set[int] = set()

    def encode(self, obj: Any, path: list[str]) -> Any:
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, Tensor):
            return self._tensor(obj, path)
        if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
            return self.encode(obj.item(), path)
        if isinstance(obj, kiln.dtype):
            return {"__dtype__": obj.name}
        if isinstance(obj, kiln.device):
            return {"__device__": str(obj)}
        if isinstance(obj, (dict, list, tuple)):
            if id(obj) in self.active:
                raise ValueError(f"kiln.save: the object contains itself at {_where(path)}")
            self.active.add(id(obj))
            try:
                return self._container(obj, path)
            finally:
                self.active.discard(id(obj))
        raise TypeError(f"kiln.save: can't save a {type(obj).__module__}.{type(obj).__name__} "
                        f"at {_where(path)}; checkpoints hold tensors, dicts, lists, tuples, "
                        "numbers, strings, bools and None (kiln never pickles)")

    def _container(self, obj, path):
        if isinstance(obj, dict):
            items = [[self.encode(k, path + [f"<key {k!r}>"]), self.encode(v, path + [str(k)])]
                     for k, v in obj.items()]
            kind = "OrderedDict" if isinstance(obj, OrderedDict) else "dict"
            return {"__dict__": items, "type": kind}
        values = [self.encode(v, path + [str(i)]) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": values}
        return values

    def _tensor(self, t: Tensor, path: list[str]) -> dict:
        ref = {"__tensor__": None}
        if t.requires_grad:
            ref["requires_grad"] = True
        if t.device.type != "cpu":
            ref["device"] = str(t.device)
        if id(t) in self.names:                  # the same tensor object twice: saved once
            ref["__tensor__"] = self.names[id(t)]
            return ref
        name = ".".join(path) or "tensor"
        base, n = name, 1
        while name in self.tensors or name == "__metadata__":
            name, n = f"{base}#{n}", n + 1
        arr = t.detach().cpu().numpy()
        # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
        self.tensors[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
        self.names[id(t)] = name
        self.keep.append(t)
        ref["__tensor__"] = name
        return ref


def _where(path: list[str]) -> str:
    return "obj" + "".join(f"[{p!r}]" for p in path)


def _header(tensors: dict[str, np.ndarray], structure: str) -> tuple[dict, list[str]]:
    """The safetensors header (without checksum) and the order the tensors are written in."""
    # widest dtypes first, so every tensor starts at a multiple of its own item size
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        arr = tensors[name]
        header[name] = {"dtype": _CODE[np.dtype(arr.dtype)], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    header["__metadata__"] = {"format": "kiln", "kiln.version": FORMAT_VERSION,
                              "kiln.structure": structure}
    return header, order


def _checksum_start(header: dict) -> int:
    """CRC32 of the header's canonical JSON; the data's bytes are folded in after it."""
    return zlib.crc32(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())


def _little_endian(arr: np.ndarray) -> np.ndarray:
    little = arr.dtype.byteorder in "<|" or (arr.dtype.byteorder == "=" and np.little_endian)
    return arr if little else arr.astype(arr.dtype.newbyteorder("<"))


def _raw(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a flat uint8 view (shares its memory)."""
    return arr.reshape(-1).view(np.uint8)


def _write(f: BinaryIO, obj: Any) -> None:
    enc = _Encoder()
    structure = json.dumps(enc.encode(obj, []), separators=(",", ":"), allow_nan=False)
    header, order = _header(enc.tensors, structure)
    crc = _checksum_start(header)
    for name in order:
        crc = zlib.crc32(_raw(_little_endian(enc.tensors[name])), crc)
    header["__metadata__"]["kiln.crc32"] = f"{crc:08x}"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)      # pad with spaces so the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name in order:
        arr = _little_endian(enc.tensors[name])
        if arr.nbytes:
            f.write(_raw(arr))


def save(obj: Any, f: str | os.PathLike | BinaryIO) -> None:
    """Save tensors and nested dicts/lists/tuples of them, numbers, strings, bools and None.

    A path is written atomically: to a temporary file in the same directory, flushed and
    fsync'd, then renamed over `f`, so a crash mid-save leaves any previous file intact (and
    may leave a stale `.NAME.*.tmp` beside it). Each tensor object is stored once; distinct
    tensors that share memory (views) are stored as separate copies and load as such.
    """
    if not isinstance(f, (str, os.PathLike)):
        _write(f, obj)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _write(out, obj)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _file_mode(path: str) -> int:
    """Keep an existing file's permissions; a new file gets the usual umask-based ones."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    # makes the rename itself durable; not every platform can open a directory
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- load

def load(f: str | os.PathLike | BinaryIO, map_location=None, weights_only: bool = True,
         **kwargs) -> Any:
    """Load what `kiln.save` wrote (or any safetensors file, as a dict of tensors).

    Nothing in the file is ever executed: a pickle or a `torch.save` zip is refused with an
    error naming the file, as is a truncated or corrupted one. `weights_only` is accepted for
    PyTorch compatibility; kiln files hold only data, so both values behave the same.

    Args:
        map_location: where tensors go: None (the device they were saved from), a device or
            string ("cpu", "cuda:0"), a dict mapping saved device strings to devices, or a
            callable `fn(tensor_on_cpu, saved_device_str)` returning a tensor (or None for the
            default).
    """
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as stream:
            return _read(stream, str(name), map_location)
    stream = f if _seekable(f) else io.BytesIO(f.read())
    return _read(stream, str(name), map_location)


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except AttributeError:
        return False


def _fail(name: str, why: str) -> CheckpointError:
    return CheckpointError(f"kiln.load: {name} is not a readable kiln checkpoint: {why}")


def _read(stream: BinaryIO, name: str, map_location) -> Any:
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)
    head = stream.read(8)
    _refuse_foreign(head, name)
    if len(head) < 8:
        raise _fail(name, f"the file is truncated ({size} bytes, shorter than the 8-byte "
                    "header length)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, _MAX_HEADER):
        raise _fail(name, f"the header length field says {n} bytes but the file has only "
                    f"{size - 8} after it (truncated or corrupt)")
    raw = stream.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(name, f"the JSON header is corrupt ({e})") from None
    if not isinstance(header, dict):
        raise _fail(name, "the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise _fail(name, "__metadata__ is not a JSON object")
    data_size = size - 8 - n
    entries = _check_entries(header, data_size, name)
    expected = meta.pop("kiln.crc32", None)
    if expected is None and (meta.get("format") == "kiln" or any(
            isinstance(k, str) and k.startswith("kiln.") for k in meta)):
        raise _fail(name, "the kiln.crc32 checksum is missing from __metadata__ (corrupt header)")
    crc = _checksum_start(dict(header, __metadata__=meta)) if expected is not None else None
    arrays: dict[str, np.ndarray] = {}
    base = start + 8 + n
    for key, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda e: e[1][2]):
        arr = np.empty(shape, dtype=np.dtype(dtype).newbyteorder("<"))
        stream.seek(base + begin)
        view = _raw(arr)
        got = stream.readinto(view) if arr.nbytes else 0
        if got != end - begin:
            raise _fail(name, f"the file is truncated inside tensor {key!r}")
        if crc is not None:
            crc = zlib.crc32(view, crc)
        arrays[key] = arr.astype(np.dtype(dtype), copy=False)
    if expected is not None and f"{crc:08x}" != expected:
        raise _fail(name, "the checksum does not match: the header or the data was modified "
                    "or damaged")
    tensors = _Placer(map_location, name)
    if "kiln.structure" not in meta:
        # a plain safetensors file: its tensors by name
        return {k: tensors.place(v, {}) for k, v in arrays.items()}
    try:
        structure = json.loads(meta["kiln.structure"])
    except (TypeError, json.JSONDecodeError) as e:
        raise _fail(name, f"kiln.structure is not valid JSON ({e})") from None
    return _Decoder(arrays, tensors, name).decode(structure)


def _refuse_foreign(head: bytes, name: str) -> None:
    if head[:4] == b"PK\x03\x04":
        raise _fail(name, "it is a zip archive, probably a torch.save checkpoint; kiln does "
                    "not read those (they contain pickles, which can run code). Convert it in "
                    "PyTorch with safetensors, or load it there and re-save the tensors")
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in b"\x02\x03\x04\x05":
        raise _fail(name, "it is a Python pickle; kiln never unpickles (loading a pickle can "
                    "run arbitrary code)")


def _check_entries(header: dict, data_size: int, name: str) -> dict:
    entries = {}
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise _fail(name, f"header entry {key!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise _fail(name, f"tensor {key!r} has unknown dtype {dtype!r} (kiln reads "
                        f"{', '.join(_DTYPES)})")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise _fail(name, f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise _fail(name, f"tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise _fail(name, f"tensor {key!r}: data_offsets {offsets} span {end - begin} bytes "
                        f"but {dtype}{shape} needs {nbytes}")
        if end > data_size:
            raise _fail(name, f"the file is truncated: tensor {key!r} ends at byte {end} of the "
                        f"data section, which has only {data_size} bytes")
        entries[key] = (_DTYPES[dtype], tuple(shape), begin, end)
    return entries


class _Placer:
    """Turns loaded arrays into tensors on the device `map_location` asks for."""

    def __init__(self, map_location, name: str):
        self.map_location, self.name = map_location, name

    def place(self, arr: np.ndarray, ref: dict) -> Tensor:
        saved = ref.get("device", "cpu")
        t = kiln.from_numpy(arr)
        loc = self.map_location
        if callable(loc) and not isinstance(loc, (str, kiln.device)):
            out = loc(t, saved)
            target = None if out is not None else saved
            t = out if out is not None else t
        elif isinstance(loc, dict):
            target = loc.get(saved, saved)
        elif loc is not None:
            target = loc
        else:
            target = saved
        if target is not None and str(kiln.device(target)) != "cpu":
            from kiln.runtime.device import cuda_is_available
            if not cuda_is_available():
                raise RuntimeError(f"kiln.load: {self.name} holds a tensor saved on {saved} "
                                   f"and it would be loaded onto {target}, but CUDA is not "
                                   "available; pass map_location='cpu'")
            t = t.to(target)
        if ref.get("requires_grad") and t.is_floating_point():
            t.requires_grad_(True)
        return t


class _Decoder:
    """Rebuilds the saved Python object from its JSON structure."""

    def __init__(self, arrays: dict[str, np.ndarray], placer: _Placer, name: str):
        self.arrays, self.placer, self.name = arrays, placer, name
        self.loaded: dict[str, Tensor] = {}

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise _fail(self.name, f"unexpected {type(node).__name__} in kiln.structure")
        if "__tensor__" in node:
            key = node["__tensor__"]
            if key not in self.arrays:
                raise _fail(self.name, f"kiln.structure refers to tensor {key!r}, which the "
                            "header does not list")
            if key not in self.loaded:
                self.loaded[key] = self.placer.place(self.arrays[key], node)
            return self.loaded[key]
        if "__dict__" in node:
            items = node["__dict__"]
            if not isinstance(items, list) or not all(
                    isinstance(kv, list) and len(kv) == 2 for kv in items):
                raise _fail(self.name, "a dict in kiln.structure is malformed")
            cls = OrderedDict if node.get("type") == "OrderedDict" else dict
            try:
                return cls((self.decode(k), self.decode(v)) for k, v in items)
            except TypeError as e:              # an unhashable key: only a corrupt file
                raise _fail(self.name, f"a dict key in kiln.structure is invalid ({e})") from None
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__float__" in node:
            text = node["__float__"]
            if text not in ("nan", "inf", "-inf"):
                raise _fail(self.name, f"invalid special float {text!r}")
            return float(text)
        if "__dtype__" in node:
            dtype = getattr(kiln, str(node["__dtype__"]), None)
            if not isinstance(dtype, kiln.dtype):
                raise _fail(self.name, f"unknown dtype {node['__dtype__']!r}")
            return dtype
        if "__device__" in node:
            return kiln.device(node["__device__"])
        raise _fail(self.name, f"unknown entry {sorted(node)!r} in kiln.structure")

