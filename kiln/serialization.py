"""`kiln.save` / `kiln.load`: checkpoints in the safetensors layout, written atomically, with
pickle only for objects that cannot be stored as data, and loaded only when the user allows it.

A file is an 8-byte little-endian header length N, N bytes of JSON header, then the tensors'
bytes. The header maps tensor names to `{"dtype", "shape", "data_offsets"}` as safetensors does;
its `__metadata__` holds `kiln.structure`, a JSON table describing the saved Python object (a
node per value, children before parents, tensors by name), or `kiln.pickle` for objects only
pickle can describe (a model, an optimizer, a user class; its tensors still live in the data
section), and `kiln.crc32`, a checksum over the header and the data. README.md ("Checkpoint
format") documents it in full.

Like `torch.load` since PyTorch 2.6, `load(..., weights_only=True)` (the default) unpickles only
kiln's own value types and the globals the user allow-lists with `add_safe_globals` or
`safe_globals`; anything else needs `weights_only=False`, which can run code from the file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import json
import math
import os
import pickle
import pickletools
import reprlib
import stat
import struct
import sys
import tempfile
import warnings
import zlib
from collections import OrderedDict, defaultdict
from typing import Any, BinaryIO, Iterator

import numpy as np

import kiln
from kiln import Tensor
from kiln.ir import dtypes as _dtypes
from kiln.ir.dtypes import from_name
from kiln.runtime.device import Device, cuda_is_available
from kiln.tracer import quantized as _quantized
from kiln.tracer.errors import user_stacklevel
from kiln.tracer.tensor import Size
from kiln.tracer.torch_function import rebuild_subclass, takes_part

__all__ = ["save", "load", "CheckpointError", "WeightsOnlyUnpicklingError", "add_safe_globals",
           "get_safe_globals", "clear_safe_globals", "safe_globals"]

FORMAT_VERSION = "2"
# safetensors dtype codes kiln tensors can hold, and the extra ones a NumPy array may have
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
           # complex64 is safetensors' C64; complex128 has no safetensors code, and kiln's
           # C128 follows the same pattern (pairs of float64, real part first)
           "C64": np.complex64, "C128": np.complex128,
           # kiln.uint16/32/64 tensors (PyTorch's limited-support unsigned types)
           "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}
_CODE = {np.dtype(v): k for k, v in _DTYPES.items()}      # native byte order
# NumPy scalar types stored as data (a long double or a complex scalar goes to the pickle)
_NUMPY_SCALARS = {np.dtype(v).name for v in _DTYPES.values()}
# safetensors' BF16 is stored by ml_dtypes (optional), imported only when a file holds one
# (`_storage`; kiln.ir.dtypes says why)
_CODES = list(_DTYPES) + ["BF16"] * _dtypes.HAS_BFLOAT16        # the codes kiln reads
if _dtypes.HAS_BFLOAT16:
    _NUMPY_SCALARS.add("bfloat16")


def _storage(code: str) -> np.dtype:
    """The NumPy dtype (native byte order) of a safetensors code in `_CODES`."""
    return _dtypes.bfloat16.np_dtype if code == "BF16" else np.dtype(_DTYPES[code])
# the longest header we accept: a real one is far smaller, a garbage length is usually huge
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIMS = 64                      # NumPy's limit on an array's rank
_INTP_MAX = np.iinfo(np.intp).max
_SPECIAL_FLOATS = ("nan", "inf", "-inf")
_PICKLE_PROTOCOL = 5
# how deep a pickled object may nest while saving; pickle recurses once or twice a level
_PICKLE_RECURSION = 20_000
_VERSION_1_RECURSION = 5_000


class CheckpointError(RuntimeError):
    """A file that is not a readable kiln checkpoint: truncated, corrupt or foreign."""


class WeightsOnlyUnpicklingError(CheckpointError, pickle.UnpicklingError):
    """`load(weights_only=True)` met a pickled object it is not allowed to rebuild."""


class _NeedsPickle(Exception):
    """Raised inside the data encoder: this object can only be saved as a pickle."""


# ----------------------------------------------------------------------------- safe globals

_USER_SAFE_GLOBALS: list = []


def add_safe_globals(safe_globals: list) -> None:
    """Allow `load(weights_only=True)` to rebuild these classes and functions from a pickle.

    Entries are the objects themselves or `(obj, "module.name")` pairs, as in
    `torch.serialization.add_safe_globals`. Only list types whose constructors and
    `__setstate__` cannot do harm with attacker-chosen arguments.
    """
    for entry in safe_globals:
        _global_name(entry)                 # fails early on a malformed entry
        _USER_SAFE_GLOBALS.append(entry)


def get_safe_globals() -> list:
    """The user's allow-list for `load(weights_only=True)` (kiln's own types not included)."""
    return list(_USER_SAFE_GLOBALS)


def clear_safe_globals() -> None:
    """Forget every global added with `add_safe_globals`."""
    _USER_SAFE_GLOBALS.clear()


@contextlib.contextmanager
def safe_globals(safe_globals: list) -> Iterator[None]:
    """`with safe_globals([MyConfig]):` allow-lists them for the loads inside the block only."""
    before = list(_USER_SAFE_GLOBALS)
    add_safe_globals(safe_globals)
    try:
        yield
    finally:
        _USER_SAFE_GLOBALS[:] = before


def _global_name(entry) -> tuple[str, Any]:
    if isinstance(entry, tuple):
        if len(entry) != 2 or not isinstance(entry[1], str):
            raise TypeError(f"add_safe_globals: expected an object or (object, 'module.name'), "
                            f"got {entry!r}")
        return entry[1], entry[0]
    module, name = getattr(entry, "__module__", None), getattr(entry, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(name, str)):
        raise TypeError(f"add_safe_globals: {entry!r} has no __module__/__qualname__; pass "
                        "(object, 'module.name') instead")
    return f"{module}.{name}", entry


def _kiln_safe_globals() -> dict[str, Any]:
    """The globals a kiln pickle may need that are safe with any arguments."""
    return {"collections.OrderedDict": OrderedDict, "kiln.tracer.tensor.Size": Size,
            # an optimizer's state is a defaultdict(dict)
            "collections.defaultdict": defaultdict, "builtins.dict": dict,
            "kiln.ir.dtypes.from_name": from_name, "kiln.runtime.device.Device": Device,
            "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
            "builtins.slice": slice,
            # a tensor subclass (whose class itself must be allowed by the user)
            "kiln.tracer.torch_function.rebuild_subclass": rebuild_subclass}


# ----------------------------------------------------------------------------- save

class _Encoder:
    """Turns the object to save into JSON nodes plus named arrays, without recursion.

    Nodes are numbered children first, so a node only refers to lower numbers; the root is the
    last. An object reached twice (a tensor, a shared list) becomes one node and loads as one
    object. A type the node table cannot describe, or a container that contains itself, raises
    `_NeedsPickle`.
    """

    def __init__(self):
        self.nodes: list[Any] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.array_names: dict[int, str] = {}    # id(tensor or ndarray) -> its name
        self.memo: dict[int, int] = {}          # id(container or tensor) -> node number
        self.keep: list[Any] = []               # keeps the ids above valid while saving

    def encode(self, root: Any) -> list:
        frames: list[list] = []                 # [obj, kind, children, refs] being walked
        active: set[int] = set()
        index = self._visit(root, [], frames, active)
        while frames:
            top = frames[-1]
            obj, kind, children, refs = top
            if len(refs) < len(children):
                child, path = children[len(refs)]
                index = self._visit(child, path, frames, active)
                if index is not None:
                    refs.append(index)
                continue
            frames.pop()
            active.discard(id(obj))
            index = self._add(_container_node(kind, refs), obj)
            if frames:
                frames[-1][3].append(index)
        return self.nodes

    def _visit(self, obj: Any, path: list[str], frames: list, active: set) -> int | None:
        """The node number of a leaf (or of an object seen before); None after pushing a
        container whose children are walked next."""
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        kind = type(obj)
        if obj is None or kind in (bool, int, str):
            return self._add(obj)
        if kind is float:
            return self._add(obj if math.isfinite(obj) else {"float": repr(obj)})
        if kind is complex:
            return self._add({"complex": [_float_json(obj.real), _float_json(obj.imag)]})
        if kind in (bytes, bytearray):
            return self._add({kind.__name__: base64.b64encode(obj).decode("ascii")})
        if isinstance(obj, Tensor):
            if takes_part(kind):
                raise _NeedsPickle(f"a tensor subclass {kind.__qualname__} at {_where(path)}")
            if kind is _quantized.QuantizedTensor:
                return self._add(self._quantized(obj, path), obj)
            if obj.layout is not kiln.strided:
                return self._add(self._sparse(obj, path), obj)
            return self._add(self._tensor(obj, path), obj)
        if kind is np.ndarray and _code_of(obj.dtype) is not None:
            return self._add({"ndarray": self._array(obj, path)}, obj)
        if isinstance(obj, np.generic) and obj.dtype.name in _NUMPY_SCALARS:
            value = obj.item()
            if isinstance(value, complex):
                value = [_float_json(value.real), _float_json(value.imag)]
            elif isinstance(value, float):
                value = _float_json(value)
            return self._add({"numpy": obj.dtype.name, "value": value})
        if isinstance(obj, kiln.dtype):
            return self._add({"dtype": obj.name})
        if isinstance(obj, kiln.device):
            return self._add({"device": str(obj)})
        if kind is kiln.Size and all(type(s) is int for s in obj):
            return self._add({"Size": list(obj)}, obj)
        if kind in (dict, OrderedDict):
            children = []
            for k, v in obj.items():
                children += [(k, path + [f"<key {k!r}>"]), (v, path + [str(k)])]
        elif kind in (list, tuple):
            children = [(v, path + [str(i)]) for i, v in enumerate(obj)]
        elif kind in (set, frozenset):
            children = [(v, path + ["<item>"]) for v in obj]
        else:
            raise _NeedsPickle(f"a {kind.__module__}.{kind.__qualname__} at {_where(path)}")
        if id(obj) in active:
            raise _NeedsPickle(f"the object contains itself at {_where(path)}")
        active.add(id(obj))
        frames.append([obj, kind.__name__, children, []])
        return None

    def _add(self, node: Any, obj: Any = None) -> int:
        self.nodes.append(node)
        if obj is not None:
            self.memo[id(obj)] = len(self.nodes) - 1
            self.keep.append(obj)
        return len(self.nodes) - 1

    def _tensor(self, t: Tensor, path: list[str]) -> dict:
        node: dict[str, Any] = {"tensor": self.tensor_name(t, path)}
        from kiln.nn.parameter import Parameter     # on use: saving tensors loads no kiln.nn
        if type(t) is Parameter:
            node["class"] = "Parameter"
        if t.requires_grad:
            node["requires_grad"] = True
        if t.device.type != "cpu":
            node["device"] = str(t.device)
        order = dim_order_of(t)
        if order is not None:
            node["dim_order"] = list(order)
        own = _saved_attributes(t, path)
        if own:
            node["attributes"] = own
        return node

    def _sparse(self, t: Tensor, path: list[str]) -> dict:
        """A sparse tensor's node: its layout, size and arrays (COO: indices, values;
        compressed: compressed indices, plain indices, values)."""
        if t.layout is kiln.sparse_coo:
            parts = {"indices": t._indices(), "values": t._values()}
        else:
            first, second = (("crow_indices", "col_indices") if t.layout is kiln.sparse_csr
                             else ("ccol_indices", "row_indices"))
            parts = {first: getattr(t, first)(), second: getattr(t, second)(),
                     "values": t.values()}
        node: dict[str, Any] = {       # requires_grad is not kept, as in torch.save
            "sparse": t.layout.name, "size": list(t.shape),
            "tensors": [self.tensor_name(v, path + [k]) for k, v in parts.items()]}
        if t.layout is kiln.sparse_coo:
            node["coalesced"] = t.is_coalesced()
        if t.device.type != "cpu":
            node["device"] = str(t.device)
        return node

    def _quantized(self, q: Tensor, path: list[str]) -> dict:
        """A quantized tensor's node: its dtype, its integers, and its scale and zero point
        (numbers) or per-channel scales and zero points (arrays) along `axis`."""
        node: dict[str, Any] = {"quantized": q.dtype.name,
                                "ints": self._array(q._ints, path + ["int_repr"]),
                                "qscheme": q.qscheme().name, "axis": q._axis}
        if q._axis is None:
            node["scales"], node["zero_points"] = float(q._scales), int(q._zero_points)
        else:
            node["scales"] = self._array(q._scales, path + ["scales"])
            node["zero_points"] = self._array(q._zero_points, path + ["zero_points"])
        return node

    def tensor_name(self, t: Tensor, path: list[str]) -> str:
        if id(t) not in self.array_names:
            self._array(t.detach().cpu().numpy(force=True), path, key=t)
        return self.array_names[id(t)]

    def _array(self, arr: np.ndarray, path: list[str], key: Any = None) -> str:
        key = arr if key is None else key
        if id(key) in self.array_names:
            return self.array_names[id(key)]
        name = ".".join(path) or "tensor"
        base, n = name, 1
        while name in self.arrays or name == "__metadata__":
            name, n = f"{base}#{n}", n + 1
        # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
        self.arrays[name] = arr if arr.flags.c_contiguous else arr.copy(order="C")
        self.array_names[id(key)] = name
        self.keep.append(key)
        return name


def _container_node(kind: str, refs: list[int]) -> dict:
    if kind in ("dict", "OrderedDict"):
        return {kind: [refs[i:i + 2] for i in range(0, len(refs), 2)]}
    return {kind: refs}


def _code_of(dtype: np.dtype) -> str | None:
    """The safetensors code of a NumPy dtype in either byte order, or None."""
    dtype = dtype.newbyteorder("=")
    found = _CODE.get(dtype)
    if found is None and dtype.name == "bfloat16" and _dtypes.HAS_BFLOAT16 and \
            dtype == _dtypes.bfloat16.np_dtype:
        return "BF16"
    return found


def _float_json(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _where(path: list[str]) -> str:
    return "obj" + "".join(f"[{p!r}]" for p in path)


_DATA_DEPTH = 64        # how deep a saved attribute's lists and dicts may nest


def _saved_attributes(t: Tensor, path: list[str]) -> dict:
    """A tensor's own attributes (`p.no_weight_decay = True`) that kiln.save keeps: those that
    are plain data, JSON's (None, bools, ints, finite floats, strings, lists and str-keyed dicts
    of them), which load back as they were. The file never holds code, so any other value (a
    tensor, a tuple, an object, a function), which torch.save would pickle, is left out, with
    a warning naming it."""
    own = getattr(t, "__dict__", None)
    if not own:
        return {}
    kept, left = {}, []
    for name, value in own.items():
        if _plain_data(value, 0) and not hasattr(type(t), name):
            kept[name] = value
        else:
            left.append(f"{name} ({type(value).__name__})")
    if left:
        warnings.warn(f"kiln.save: the tensor at {_where(path)} has attributes that are not "
                      f"plain data, which kiln's format does not store: {', '.join(left)}; "
                      "they are not saved (numbers, strings, bools, None and lists and "
                      "str-keyed dicts of them are)", stacklevel=user_stacklevel())
    return kept


def _plain_data(value: Any, depth: int) -> bool:
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= _DATA_DEPTH:
        return False
    if kind is list:
        return all(_plain_data(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain_data(v, depth + 1) for k, v in value.items())
    return False


class _Pickler(pickle.Pickler):
    """Pickles an object with its tensors and NumPy arrays left out, as references to arrays in
    the data section: the pickle holds no tensor bytes."""

    def __init__(self, file: BinaryIO, encoder: _Encoder):
        super().__init__(file, protocol=_PICKLE_PROTOCOL)
        self.encoder = encoder

    def persistent_id(self, obj: Any) -> tuple | None:
        if isinstance(obj, Tensor) and obj.layout is not kiln.strided:
            path = [str(len(self.encoder.arrays))]
            return ("kiln.sparse", json.dumps(self.encoder._sparse(obj, path)))
        if type(obj) is _quantized.QuantizedTensor:
            path = [str(len(self.encoder.arrays))]
            return ("kiln.quantized", json.dumps(self.encoder._quantized(obj, path)))
        if isinstance(obj, Tensor) and not takes_part(type(obj)):
            from kiln.nn.parameter import Parameter
            name = self.encoder.tensor_name(obj, [str(len(self.encoder.arrays))])
            kind = "Parameter" if type(obj) is Parameter else "Tensor"
            pid = ("kiln.tensor", name, kind, bool(obj.requires_grad), str(obj.device))
            order = dim_order_of(obj)
            own = _saved_attributes(obj, [name])
            if own:
                return pid + (order, json.dumps(own, allow_nan=False))
            return pid if order is None else pid + (order,)
        if type(obj) is np.ndarray and _code_of(obj.dtype) is not None:
            return ("kiln.ndarray", self.encoder._array(obj, [str(len(self.encoder.arrays))]))
        if isinstance(obj, np.generic) and obj.dtype.name in _NUMPY_SCALARS:
            return ("kiln.numpy", obj.dtype.name, obj.item())
        return None


def _pickle(obj: Any, encoder: _Encoder) -> bytes:
    buf = io.BytesIO()
    limit = sys.getrecursionlimit()
    # pickle recurses per nesting level; PyTorch saves 400-deep objects, kiln goes well past
    sys.setrecursionlimit(max(limit, _PICKLE_RECURSION))
    try:
        _Pickler(buf, encoder).dump(obj)
    except RecursionError:
        raise ValueError("kiln.save: the object is nested too deeply to pickle (past a "
                         f"recursion limit of {_PICKLE_RECURSION}; a few thousand levels)") \
            from None
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"kiln.save: can't save a {type(obj).__module__}."
                        f"{type(obj).__qualname__}: pickling it failed ({e})") from e
    finally:
        sys.setrecursionlimit(limit)
    return buf.getvalue()


def _header(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> tuple[dict, list[str]]:
    """The safetensors header (without checksum) and the order the arrays are written in."""
    # widest dtypes first, so every tensor starts at a multiple of its own item size
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        arr = arrays[name]
        header[name] = {"dtype": _code_of(arr.dtype), "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    header["__metadata__"] = dict({"format": "kiln", "kiln.version": FORMAT_VERSION}, **meta)
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
    try:
        nodes = enc.encode(obj)
        meta = {"kiln.structure": json.dumps(nodes, separators=(",", ":"), allow_nan=False)}
    except _NeedsPickle:
        enc = _Encoder()                        # start over: the pickle names its own arrays
        meta = {"kiln.pickle": base64.b64encode(_pickle(obj, enc)).decode("ascii")}
    header, order = _header(enc.arrays, meta)
    crc = _checksum_start(header)
    for name in order:
        crc = zlib.crc32(_raw(_little_endian(enc.arrays[name])), crc)
    header["__metadata__"]["kiln.crc32"] = f"{crc:08x}"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)      # pad with spaces so the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name in order:
        arr = _little_endian(enc.arrays[name])
        if arr.nbytes:
            f.write(_raw(arr))


def save(obj: Any, f: str | os.PathLike | BinaryIO) -> None:
    """Save `obj` to a path or a binary file object.

    Tensors, NumPy arrays and scalars, Python numbers, strings, bytes and None, and any nesting
    of dicts (`OrderedDict` kept), lists, tuples, sets and `kiln.Size` are stored as data, in
    the safetensors layout. Anything else (a whole model, an optimizer, a user class) is
    pickled, its tensors still stored as data; `load` rebuilds it only with `weights_only=False`
    or when its classes are allow-listed.

    A path is written atomically: to a temporary file in the directory of the file it names
    (through any symlinks), flushed and fsync'd, then renamed over it, so a crash mid-save
    leaves any previous file intact (and may leave a stale `.NAME.*.tmp` beside it). An
    existing file keeps its permission bits; a file or directory the caller may not write to
    raises PermissionError (a file with no write bit at all is refused even for root).
    """
    if not isinstance(f, (str, os.PathLike)):
        _write(f, obj)
        return
    path = _resolve(os.fspath(f))
    directory = os.path.dirname(path)
    old = _check_writable(path, directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _write(out, obj)
            out.flush()
            os.fsync(out.fileno())
        _copy_permissions(tmp, old)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _resolve(path: str) -> str:
    """The file a path names, through any symlinks (a dangling link names its target)."""
    target = os.path.realpath(path)
    if os.path.islink(target):              # realpath gives up inside a symlink loop
        raise OSError(errno.ELOOP, f"kiln.save: too many levels of symbolic links in {path}",
                      path)
    return target


def _check_writable(path: str, directory: str) -> os.stat_result | None:
    """Refuse what the caller may not overwrite; returns the existing file's stat, if any."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None:
        if stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"kiln.save: {path} is a directory", path)
        if not _may_write(path, old):
            raise PermissionError(errno.EACCES, f"kiln.save: {path} is read-only "
                                  f"(mode {stat.filemode(old.st_mode)}); kiln does not replace "
                                  "a file you may not write. chmod u+w it, or save elsewhere",
                                  path)
    try:
        dir_stat = os.stat(directory)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"kiln.save: the directory {directory} does not "
                                "exist", directory) from None
    if not _may_write(directory, dir_stat):
        raise PermissionError(errno.EACCES, f"kiln.save: the directory {directory} is not "
                              f"writable (mode {stat.filemode(dir_stat.st_mode)}), and kiln "
                              "saves through a temporary file beside the checkpoint", directory)
    return old


def _may_write(path: str, st: os.stat_result) -> bool:
    """os.access's answer, except that root too is refused a file with no write bit at all:
    root may write anything, but a chmod 444 checkpoint says "keep this"."""
    effective = os.access in os.supports_effective_ids
    if not os.access(path, os.W_OK, effective_ids=effective):
        return False
    return os.geteuid() != 0 or bool(st.st_mode & 0o222)


def _copy_permissions(tmp: str, old: os.stat_result | None) -> None:
    """Keep an existing file's mode (and owner, when we may); a new file gets the usual
    umask-based mode rather than mkstemp's 0600."""
    if old is None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        return
    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(tmp, old.st_uid, old.st_gid)
        except OSError:
            pass                                # only root may give a file away
    os.chmod(tmp, stat.S_IMODE(old.st_mode))


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

def load(f: str | os.PathLike | BinaryIO, map_location=None, pickle_module=None, *,
         weights_only: bool | None = True, **kwargs) -> Any:
    """Load what `kiln.save` wrote (or any safetensors file, as a dict of tensors).

    Data comes back with the types it was saved with. A pickled object (a model, an
    optimizer, a user class) is rebuilt only from kiln's own types and the globals allowed
    with `add_safe_globals` / `safe_globals`, unless `weights_only=False`: then any class
    is rebuilt, which can run code from the file, so only use it for files you trust. A
    `torch.save` zip is read as PyTorch's `weights_only=True` reads it: tensors, parameters,
    containers and numbers (a state dict, a checkpoint dict); one needing any other global is
    refused by name and nothing in it runs. A bare pickle is refused, naming the file, as is
    a truncated or corrupted one.

    Args:
        map_location: where tensors go: None (the device they were saved from), a device or
            string ("cpu", "cuda:0", or anything whose str() is one, like a torch.device), a
            dict mapping saved device strings to devices, or a callable
            `fn(tensor_on_cpu, saved_device_str)` returning a tensor (or None for the default).
        pickle_module, **kwargs: accepted for `torch.load` compatibility and ignored.
    """
    weights_only = True if weights_only is None else weights_only
    name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as stream:
            return _read(stream, str(name), map_location, weights_only)
    stream = f if _seekable(f) else io.BytesIO(f.read())
    return _read(stream, str(name), map_location, weights_only)


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except AttributeError:
        return False


def _fail(name: str, why: str) -> CheckpointError:
    return CheckpointError(f"kiln.load: {name} is not a readable kiln checkpoint: {why}")


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _read(stream: BinaryIO, name: str, map_location, weights_only: bool) -> Any:
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)
    head = stream.read(min(size, 4096))
    if head[:4] == b"PK\x03\x04":      # a torch.save zip: tensors and containers only
        from kiln.torch_checkpoint import load_torch_zip
        stream.seek(start)
        return load_torch_zip(stream, map_location, name)
    from kiln.torch_checkpoint import is_legacy_torch_header, load_torch_legacy
    if is_legacy_torch_header(head):   # torch.save before 1.6: by the same rules
        stream.seek(start)
        return load_torch_legacy(stream, map_location, name)
    stream.seek(start + 8)
    if size < 8:
        _refuse_foreign(head, size, name)
        raise _fail(name, f"the file is truncated ({size} bytes, shorter than the 8-byte "
                    "header length)")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER:
        _refuse_foreign(head, size, name)
        raise _fail(name, f"the header length field says {n} bytes, more than the "
                    f"{_MAX_HEADER // 2 ** 20} MiB kiln accepts (corrupt, or not a checkpoint)")
    if n > size - 8:
        _refuse_foreign(head, size, name)
        raise _fail(name, f"the header length field says {n} bytes but the file has only "
                    f"{size - 8} after it (truncated or corrupt)")
    raw = stream.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise _fail(name, "the JSON header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        _refuse_foreign(head, size, name)
        raise _fail(name, f"the JSON header is corrupt ({e})") from None
    if not isinstance(header, dict):
        _refuse_foreign(head, size, name)
        raise _fail(name, "the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _fail(name, "__metadata__ is not a JSON object of strings")
    data_size = size - 8 - n
    entries = _check_entries(header, data_size, name)
    expected = meta.pop("kiln.crc32", None)
    if expected is None and (meta.get("format") == "kiln" or any(
            k.startswith("kiln.") for k in meta)):
        raise _fail(name, "the kiln.crc32 checksum is missing from __metadata__ (corrupt header)")
    crc = _checksum_start(dict(header, __metadata__=meta)) if expected is not None else None
    arrays: dict[str, np.ndarray] = {}
    base = start + 8 + n
    for key, (code, shape, begin, end) in entries.items():
        arr = np.empty(shape, dtype=_storage(code).newbyteorder("<"))
        stream.seek(base + begin)
        view = _raw(arr)
        got = stream.readinto(view) if arr.nbytes else 0
        if got != end - begin:
            raise _fail(name, f"the file is truncated inside tensor {key!r}")
        if crc is not None:
            crc = zlib.crc32(view, crc)
        arrays[key] = arr.astype(_storage(code), copy=False)
    if expected is not None and f"{crc:08x}" != expected:
        raise _fail(name, "the checksum does not match: the header or the data was modified "
                    "or damaged")
    placer = _Placer(map_location, name)
    codes = {key: entry[0] for key, entry in entries.items()}
    if "kiln.pickle" in meta:
        return _unpickle(meta["kiln.pickle"], _Arrays(arrays, codes, placer, name), name,
                         weights_only)
    if "kiln.structure" not in meta:
        # a plain safetensors file: its tensors by name, in the header's order
        tensors = _Arrays(arrays, codes, placer, name)
        return {key: tensors.tensor(key, {}) for key in header}
    version = meta.get("kiln.version", FORMAT_VERSION)
    if version not in ("1", "2"):
        raise _fail(name, f"it was written by a newer kiln (format version {version!r}; this "
                    f"kiln reads 1 and 2)")
    limit = sys.getrecursionlimit()
    if version == "1":
        # format 1 nested its structure as deep as the object (json recurses per level)
        sys.setrecursionlimit(max(limit, _VERSION_1_RECURSION))
    try:
        structure = json.loads(meta["kiln.structure"])
    except RecursionError:
        raise _fail(name, "kiln.structure is nested too deeply") from None
    except ValueError as e:
        raise _fail(name, f"kiln.structure is not valid JSON ({e})") from None
    finally:
        sys.setrecursionlimit(limit)
    if version == "1":
        structure = _nodes_from_version_1(structure, name)
    return _decode(structure, _Arrays(arrays, codes, placer, name), name)


def _refuse_foreign(head: bytes, size: int, name: str) -> None:
    """Name the kind of file this is when it is not a checkpoint at all."""
    if head[:6] == b"\x93NUMPY":
        raise _fail(name, "it is a NumPy .npy file; read it with numpy.load")
    protocol = _pickle_protocol(head, size)
    if protocol is not None:
        raise _fail(name, f"it is a Python pickle ({protocol}), perhaps a legacy torch.save "
                    "file; kiln does not read bare pickles (loading a pickle can run "
                    "arbitrary code). Load it in the program that wrote it and save the "
                    "tensors with kiln.save")


def _pickle_protocol(head: bytes, size: int) -> str | None:
    """Which pickle protocol a file of `size` bytes starting with `head` is written in, or None
    when it does not parse as a pickle. Only reads opcodes (pickletools); nothing is unpickled."""
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return f"protocol {head[1]}"
    newest, count = 0, 0
    try:
        for opcode, _, pos in pickletools.genops(head):
            newest, count = max(newest, opcode.proto), count + 1
            if opcode.name == "STOP":
                # a pickle ends with its STOP; bytes that merely start like one rarely do
                if pos + 1 != size or count < 2:
                    return None
                break
        else:
            return None
    except Exception:           # genops raises ValueError, or others on garbage arguments
        # a pickle longer than `head` runs off its end: trust it if many opcodes parsed first
        if len(head) == size or count < 16:
            return None
    if newest >= 2:
        return None             # binary protocols begin with PROTO, handled above
    return f"protocol {newest}, the {'text' if newest == 0 else 'old binary'} format"


def _check_entries(header: dict, data_size: int, name: str) -> dict:
    """Validate every tensor entry by the safetensors rules: a known dtype, a shape of
    non-negative ints, offsets whose span is the tensor's size, and spans that tile the data
    section in order, with no overlap, hole or tail."""
    entries = {}
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise _fail(name, f"header entry {key!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype == "BF16" and not _dtypes.HAS_BFLOAT16:
            raise _fail(name, f"tensor {key!r} is bfloat16: {_dtypes.NO_ML_DTYPES}")
        if not isinstance(dtype, str) or dtype not in _CODES:
            raise _fail(name, f"tensor {key!r} has unknown dtype {dtype!r} (kiln reads "
                        f"{', '.join(_CODES)})")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise _fail(name, f"tensor {key!r} has an invalid shape {shape!r}")
        itemsize = _storage(dtype).itemsize
        if len(shape) > _MAX_DIMS or any(s > _INTP_MAX for s in shape) or \
                math.prod(s for s in shape if s) * itemsize > _INTP_MAX:
            raise _fail(name, f"tensor {key!r} has an impossible shape {shape!r} (more than "
                        f"{_MAX_DIMS} dimensions or more than 2**63 bytes)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and
                all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise _fail(name, f"tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * itemsize
        if end - begin != nbytes:
            raise _fail(name, f"tensor {key!r}: data_offsets {offsets} span {end - begin} bytes "
                        f"but {dtype}{shape} needs {nbytes}")
        if end > data_size:
            raise _fail(name, f"the file is truncated: tensor {key!r} ends at byte {end} of the "
                        f"data section, which has only {data_size} bytes")
        entries[key] = (dtype, tuple(shape), begin, end)
    position = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else \
                f"leaves a hole of {begin - position} bytes before it"
            raise _fail(name, f"tensor {key!r} (data_offsets [{begin}, {end}]) {what}; "
                        "safetensors tensors tile the data section exactly")
        position = end
    if position != data_size:
        raise _fail(name, f"the data section has {data_size - position} bytes after its last "
                    "tensor (corrupt, or a file with something appended)")
    return entries


# ----------------------------------------------------------------------------- layouts
#
# The data section holds every tensor's elements in row-major order (what safetensors readers
# expect). A tensor laid out densely in another order of its dims (channels_last, a
# transpose's result) also records that order, PyTorch's `dim_order()` (outermost dim first),
# and loads with the same strides, as torch.load gives back the strides torch.save saw.

def dim_order_of(t: Tensor) -> tuple | None:
    """The order of `t`'s dims, outermost first, when its elements lie densely in that order
    and it is not row-major (a channels_last tensor: (0, 2, 3, 1)); else None."""
    data = t._data
    if t.device.type == "meta" or data.ndim < 2:
        return None
    strides = t.stride()
    if data.flags.c_contiguous and strides == _dense_strides(data.shape, range(data.ndim)):
        return None
    # ties (dims of size 1) put the later dim inside, as PyTorch's channels_last strides have
    order = tuple(sorted(range(data.ndim), key=lambda d: (-strides[d], -d)))
    return order if _dense_strides(data.shape, order) == strides else None


def _dense_strides(shape: tuple, order) -> tuple:
    strides, step = [0] * len(shape), 1
    for d in reversed(tuple(order)):
        strides[d] = step
        step *= max(shape[d], 1)
    return tuple(strides)


def in_dim_order(arr: np.ndarray, order: tuple) -> np.ndarray:
    """A copy of `arr` whose elements lie densely in `order` (outermost dim first)."""
    dense = np.empty(tuple(arr.shape[d] for d in order), arr.dtype)
    dense[...] = arr.transpose(order)
    back = [0] * arr.ndim
    for position, d in enumerate(order):
        back[d] = position
    return dense.transpose(back)


class _Placer:
    """Turns loaded arrays into tensors on the device `map_location` asks for."""

    def __init__(self, map_location, name: str):
        self.map_location, self.name = map_location, name

    def place(self, arr: np.ndarray, saved: str, requires_grad: bool) -> Tensor:
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
        if target is not None:
            try:
                device = kiln.device(target if isinstance(target, (str, kiln.device))
                                     else str(target))     # a torch.device, say
            except (TypeError, ValueError, RuntimeError) as e:
                raise _fail(self.name, f"a tensor's device {target!r} is not a device ({e})") \
                    from None
            if device.type != "cpu":
                if not cuda_is_available():
                    raise _fail(self.name, f"it holds a tensor saved on {saved} that would be "
                                f"loaded onto {device}, but CUDA is not available; pass "
                                "map_location='cpu'")
            if t.device != device:
                t = t.to(device)
        if requires_grad and t.is_floating_point():
            t.requires_grad_(True)
        return t


class _Arrays:
    """The file's arrays, handed out as tensors (placed by map_location) or NumPy arrays; each
    is built once, so an object saved twice loads as one."""

    def __init__(self, arrays: dict[str, np.ndarray], codes: dict[str, str], placer: _Placer,
                 name: str):
        self.arrays, self.codes, self.placer, self.name = arrays, codes, placer, name
        self.built: dict[tuple, Any] = {}

    def _get(self, key: Any) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise _fail(self.name, f"it refers to tensor {key!r}, which the header does not "
                        "list")
        return self.arrays[key]

    def tensor(self, key: Any, attrs: dict, parameter: bool = False) -> Tensor:
        arr = self._get(key)
        if self.codes[key] not in _CODES:
            raise _fail(self.name, f"tensor {key!r} has dtype {self.codes[key]}, which kiln "
                        f"tensors do not have (they have {', '.join(_CODES)})")
        saved, grad = attrs.get("device", "cpu"), attrs.get("requires_grad", False)
        if not isinstance(saved, str) or type(grad) is not bool:
            raise _fail(self.name, f"tensor {key!r} has a malformed device or requires_grad")
        order = attrs.get("dim_order")
        if order is not None:
            if not isinstance(order, (list, tuple)) or \
                    sorted(order) != list(range(arr.ndim)) or \
                    any(type(d) is not int for d in order):
                raise _fail(self.name, f"tensor {key!r} has a dim_order {reprlib.repr(order)} "
                            f"that is not an order of its {arr.ndim} dims")
            order = tuple(order)
        own = attrs.get("attributes", {})
        if not isinstance(own, dict) or any(type(k) is not str for k in own):
            raise _fail(self.name, f"tensor {key!r} has attributes that are not a dict by name")
        cache = (key, saved, grad, parameter, order)
        if own:                 # (a tensor of its own: these attributes are its)
            cache += (json.dumps(own, sort_keys=True),)
        if cache not in self.built:
            t = self.placer.place(arr if order is None else in_dim_order(arr, order), saved,
                                  grad)
            if parameter:
                from kiln.nn.parameter import Parameter
                if grad and not t.is_floating_point():
                    raise _fail(self.name, f"tensor {key!r} is an integer Parameter that "
                                "requires grad")
                t = Parameter(t, requires_grad=grad)
            hidden = [k for k in own if hasattr(type(t), k)]
            if hidden:
                raise _fail(self.name, f"tensor {key!r} has attributes named like the "
                            f"tensor's own ({', '.join(hidden[:3])})")
            t.__dict__.update(own)
            self.built[cache] = t
        return self.built[cache]

    def ndarray(self, key: Any) -> np.ndarray:
        arr = self._get(key)
        if (key, "ndarray") not in self.built:
            self.built[(key, "ndarray")] = arr
        return self.built[(key, "ndarray")]


# the node kinds a structure may contain, with the keys each may carry besides its kind
_NODE_KEYS = {"list": (), "tuple": (), "set": (), "frozenset": (), "dict": (), "OrderedDict": (),
              "tensor": ("class", "requires_grad", "device", "dim_order", "attributes"),
              "ndarray": (),
              "numpy": ("value",), "float": (), "complex": (), "bytes": (), "bytearray": (),
              "dtype": (), "device": (), "Size": (),
              "sparse": ("size", "tensors", "coalesced", "device"),
              "quantized": ("ints", "qscheme", "axis", "scales", "zero_points")}


def _decode(nodes: Any, arrays: _Arrays, name: str) -> Any:
    """Rebuild the saved object from its node table, first node to last, without recursion."""
    if not isinstance(nodes, list) or not nodes:
        raise _fail(name, "kiln.structure is not a non-empty list of nodes")
    built: list[Any] = []
    for i, node in enumerate(nodes):
        try:
            built.append(_decode_node(node, i, built, arrays))
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise _fail(name, f"node {i} of kiln.structure is invalid: {reprlib.repr(node)} "
                        f"({type(e).__name__}: {e})") from None
    return built[-1]


def _decode_node(node: Any, i: int, built: list, arrays: _Arrays) -> Any:
    if node is None or type(node) in (bool, int, float, str):
        return node
    if not isinstance(node, dict) or not node:
        raise TypeError(f"a {type(node).__name__} is not a node")
    kind = next(iter(node))                     # a node's first key says what it is
    if kind not in _NODE_KEYS or set(node) - {kind, *_NODE_KEYS[kind]}:
        raise ValueError(f"unknown node keys {sorted(node)}")
    body = node[kind]

    def ref(j: Any) -> Any:
        if type(j) is not int or not 0 <= j < i:
            raise ValueError(f"reference {j!r} is not a number of an earlier node")
        return built[j]

    def refs(items: Any) -> list:
        if not isinstance(items, list):
            raise TypeError(f"{kind} holds a {type(items).__name__}, not a list of node numbers")
        return [ref(j) for j in items]

    if kind in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](
            refs(body))
    if kind in ("dict", "OrderedDict"):
        if not isinstance(body, list) or not all(
                isinstance(kv, list) and len(kv) == 2 for kv in body):
            raise TypeError(f"{kind} must hold a list of [key, value] node-number pairs")
        return (dict if kind == "dict" else OrderedDict)((ref(k), ref(v)) for k, v in body)
    if kind == "tensor":
        cls = node.get("class", "Tensor")
        if cls not in ("Tensor", "Parameter"):
            raise ValueError(f"unknown tensor class {cls!r}")
        return arrays.tensor(body, node, parameter=cls == "Parameter")
    if kind == "sparse":
        return _sparse_node(body, node, arrays)
    if kind == "quantized":
        return _quantized_node(body, node, arrays)
    if kind == "ndarray":
        return arrays.ndarray(body)
    if kind == "numpy":
        if body not in _NUMPY_SCALARS:
            raise ValueError(f"unknown NumPy scalar type {body!r}")
        value = node.get("value")
        if body.startswith("complex") and isinstance(value, list) and len(value) == 2:
            value = complex(_float_value(value[0]), _float_value(value[1]))
        elif body.startswith("float"):
            value = _float_value(value)
        if type(value) not in (bool, int, float, complex):
            raise TypeError(f"a NumPy scalar's value {value!r} is not a number")
        return _numpy_scalar(body, value)
    if kind == "float":
        return _float_value(body)
    if kind == "complex":
        if not (isinstance(body, list) and len(body) == 2):
            raise TypeError("complex must be [real, imag]")
        return complex(_float_value(body[0]), _float_value(body[1]))
    if kind in ("bytes", "bytearray"):
        if not isinstance(body, str):
            raise TypeError(f"{kind} must be base64 text")
        data = base64.b64decode(body.encode("ascii"), validate=True)
        return data if kind == "bytes" else bytearray(data)
    if kind == "dtype":
        dtype = getattr(kiln, body, None) if isinstance(body, str) else None
        if not isinstance(dtype, kiln.dtype):
            raise ValueError(f"unknown dtype {body!r}")
        return dtype
    if kind == "device":
        if not isinstance(body, str):
            raise TypeError("device must be a string")
        try:
            return kiln.device(body)
        except RuntimeError as e:
            raise ValueError(str(e)) from None
    # kind == "Size"
    if not (isinstance(body, list) and all(type(s) is int for s in body)):
        raise TypeError("Size must be a list of ints")
    return kiln.Size(body)


def _sparse_node(layout: Any, node: dict, arrays: _Arrays) -> Tensor:
    """A sparse tensor rebuilt through its constructor, whose checks refuse corrupt indices."""
    size, names = node.get("size"), node.get("tensors")
    counts = {"sparse_coo": 2, "sparse_csr": 3, "sparse_csc": 3}
    if layout not in counts:
        raise ValueError(f"unknown sparse layout {layout!r}")
    if not (isinstance(size, list) and all(type(s) is int and s >= 0 for s in size)):
        raise TypeError("a sparse tensor's size must be a list of non-negative ints")
    if not (isinstance(names, list) and len(names) == counts[layout]):
        raise TypeError(f"a {layout} tensor needs {counts[layout]} tensors")
    coalesced, device = node.get("coalesced", False), node.get("device", "cpu")
    if type(coalesced) is not bool or not isinstance(device, str):
        raise TypeError("a sparse tensor's coalesced or device is malformed")
    parts = [arrays.tensor(n, {"device": device}) for n in names]
    try:
        if layout == "sparse_coo":
            t = kiln.sparse_coo_tensor(*parts, size, is_coalesced=coalesced)
        else:
            t = kiln.sparse_compressed_tensor(*parts, size, layout=getattr(kiln, layout))
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"its arrays do not make a {layout} tensor: {e}") from None
    return t


def _quantized_node(dtype_name: Any, node: dict, arrays: _Arrays) -> Tensor:
    """A quantized tensor rebuilt from its integers and parameters, each checked against the
    others (the integers' type, one scale and zero point per channel along the axis)."""
    dtype = getattr(kiln, dtype_name, None) if isinstance(dtype_name, str) else None
    if dtype not in _quantized.QUANTIZED_DTYPES:
        raise ValueError(f"unknown quantized dtype {dtype_name!r}")
    ints = np.array(arrays.ndarray(node.get("ints")))
    if ints.dtype != dtype.np:
        raise TypeError(f"a {dtype.name} tensor's integers are {ints.dtype}, not {dtype.np}")
    scheme = node.get("qscheme")
    if scheme not in _quantized._QSCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}")
    axis, scales, zero_points = node.get("axis"), node.get("scales"), node.get("zero_points")
    if axis is None:
        if type(scales) not in (int, float) or type(zero_points) is not int:
            raise TypeError("a per-tensor quantized tensor needs a number scale and an int "
                            "zero point")
        scales = float(scales)
    else:
        if type(axis) is not int or not 0 <= axis < ints.ndim:
            raise ValueError(f"axis {axis!r} is not a dimension of a {ints.ndim}-d tensor")
        scales = np.array(arrays.ndarray(scales), dtype=np.float64)
        zero_points = np.array(arrays.ndarray(zero_points), dtype=np.int64)
        if scales.shape != (ints.shape[axis],) or zero_points.shape != scales.shape:
            raise ValueError(f"per-channel scales {scales.shape} and zero points "
                             f"{zero_points.shape} do not match axis {axis} of {ints.shape}")
    return _quantized._rebuild(ints, dtype, scales, zero_points, axis,
                               _quantized._qscheme_named(scheme))


def _float_value(value: Any) -> float:
    if type(value) in (int, float):
        return float(value)
    if value in _SPECIAL_FLOATS:
        return float(value)
    raise ValueError(f"{value!r} is not a float")


def _numpy_scalar(type_name: str, value: Any) -> np.generic:
    """np.dtype(type_name).type(value), refusing a value the type cannot hold."""
    dtype = _dtypes.bfloat16.np_dtype if type_name == "bfloat16" else np.dtype(type_name)
    scalar_type = dtype.type
    if dtype.kind in "iu":
        info = np.iinfo(scalar_type)
        if type(value) is not int or not info.min <= value <= info.max:
            raise ValueError(f"{value!r} is not a {type_name}")
    return scalar_type(value)


def _nodes_from_version_1(structure: Any, name: str) -> list:
    """Convert a version-1 structure (nested JSON: `{"__tensor__": name}`, `{"__dict__":
    [[k, v], ...], "type": ...}`, `{"__tuple__": [...]}`, ...) into version 2's node table,
    without recursion."""
    nodes: list[Any] = []
    frames: list[list] = []                   # [kind, children, refs]

    def open_or_add(value: Any) -> int | None:
        if not isinstance(value, (list, dict)):
            nodes.append(value)
            return len(nodes) - 1
        if isinstance(value, list):
            frames.append(["list", value, []])
            return None
        for old, new in (("__tensor__", "tensor"), ("__float__", "float"),
                         ("__dtype__", "dtype"), ("__device__", "device")):
            if old in value:
                node = {new: value[old]}
                if old == "__tensor__":
                    node.update({k: value[k] for k in ("requires_grad", "device") if k in value})
                nodes.append(node)
                return len(nodes) - 1
        if "__tuple__" in value and isinstance(value["__tuple__"], list):
            frames.append(["tuple", value["__tuple__"], []])
            return None
        items = value.get("__dict__")
        if isinstance(items, list) and all(isinstance(kv, list) and len(kv) == 2
                                           for kv in items):
            kind = "OrderedDict" if value.get("type") == "OrderedDict" else "dict"
            frames.append([kind, [x for kv in items for x in kv], []])
            return None
        raise _fail(name, f"unknown entry {reprlib.repr(value)} in kiln.structure")

    open_or_add(structure)
    while frames:
        kind, children, refs = frames[-1]
        if len(refs) < len(children):
            index = open_or_add(children[len(refs)])
            if index is not None:
                refs.append(index)
            continue
        frames.pop()
        nodes.append(_container_node(kind, refs))
        if frames:
            frames[-1][2].append(len(nodes) - 1)
    return nodes


# ----------------------------------------------------------------------------- unpickling

class _RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that rebuilds only kiln's safe types and the user's allowed globals.

    It is Python's own pure-Python unpickler with the opcodes that call code checked: a global
    is looked up only in the allow-list, a call (REDUCE, NEWOBJ) may only call an allowed
    global, BUILD (which runs `__setstate__` or sets attributes) only applies to instances of
    user-allowed classes, and the old instance opcodes (INST, OBJ) and extension codes are
    refused. Nothing is imported.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, arrays: _Arrays, name: str):
        super().__init__(file)
        self.arrays, self.name = arrays, name
        self.allowed = _kiln_safe_globals()
        self.allowed.update(_global_name(entry) for entry in _USER_SAFE_GLOBALS)
        objects = [e[0] if isinstance(e, tuple) else e for e in _USER_SAFE_GLOBALS]
        self.user_classes = tuple(obj for obj in objects if isinstance(obj, type))
        self.callables = {id(obj) for obj in self.allowed.values()}

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key not in self.allowed:
            raise WeightsOnlyUnpicklingError(_weights_only_message(self.name, key))
        return self.allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        return _persistent_load(pid, self.arrays, self.name)

    def _refuse(self, what: str):
        raise WeightsOnlyUnpicklingError(_weights_only_message(self.name, what))

    def load_reduce(self):
        if id(self.stack[-2]) not in self.callables:
            self._refuse("a call of a value that is not an allowed global")
        super().load_reduce()

    def load_newobj(self):
        if id(self.stack[-2]) not in self.callables or not isinstance(self.stack[-2], type):
            self._refuse("the construction of a class that is not an allowed global")
        super().load_newobj()

    def load_newobj_ex(self):
        if id(self.stack[-3]) not in self.callables or not isinstance(self.stack[-3], type):
            self._refuse("the construction of a class that is not an allowed global")
        super().load_newobj_ex()

    def load_build(self):
        if not isinstance(self.stack[-2], self.user_classes):
            self._refuse(f"setting the state of a {type(self.stack[-2]).__qualname__}, which is "
                         "not a class allowed with add_safe_globals")
        super().load_build()

    def load_refused(self):
        self._refuse("an instance, extension or out-of-band buffer opcode that kiln never "
                     "writes")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    for _opcode in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4,
                    pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_opcode[0]] = load_refused
    del _opcode


class _TrustingUnpickler(pickle.Unpickler):
    """`weights_only=False`: any global, as pickle does; tensors come from the data section."""

    def __init__(self, file: BinaryIO, arrays: _Arrays, name: str):
        super().__init__(file)
        self.arrays, self.name = arrays, name

    def persistent_load(self, pid: Any) -> Any:
        return _persistent_load(pid, self.arrays, self.name)


def _persistent_load(pid: Any, arrays: _Arrays, name: str) -> Any:
    if isinstance(pid, tuple) and len(pid) in (5, 6, 7) and pid[0] == "kiln.tensor" and \
            pid[2] in ("Tensor", "Parameter"):
        _, key, kind, grad, device = pid[:5]
        attrs = {"requires_grad": grad, "device": device}
        if len(pid) >= 6 and pid[5] is not None:
            attrs["dim_order"] = pid[5]
        if len(pid) == 7:           # the tensor's own attributes, JSON text (plain data)
            try:
                attrs["attributes"] = json.loads(pid[6]) if isinstance(pid[6], str) else None
            except ValueError:
                attrs["attributes"] = None
        return arrays.tensor(key, attrs, parameter=kind == "Parameter")
    if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "kiln.sparse" and \
            isinstance(pid[1], str):
        try:
            node = json.loads(pid[1])
            if not isinstance(node, dict) or set(node) - {"sparse", *_NODE_KEYS["sparse"]}:
                raise ValueError(f"unknown keys in {reprlib.repr(node)}")
            return _sparse_node(node.get("sparse"), node, arrays)
        except (TypeError, ValueError) as e:
            raise _fail(name, f"the pickle holds an invalid sparse tensor ({e})") from None
    if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "kiln.quantized" and \
            isinstance(pid[1], str):
        try:
            node = json.loads(pid[1])
            if not isinstance(node, dict) or \
                    set(node) - {"quantized", *_NODE_KEYS["quantized"]}:
                raise ValueError(f"unknown keys in {reprlib.repr(node)}")
            return _quantized_node(node.get("quantized"), node, arrays)
        except (TypeError, ValueError) as e:
            raise _fail(name, f"the pickle holds an invalid quantized tensor ({e})") from None
    if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "kiln.ndarray":
        return arrays.ndarray(pid[1])
    if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == "kiln.numpy" and \
            pid[1] in _NUMPY_SCALARS and type(pid[2]) in (bool, int, float):
        try:
            return _numpy_scalar(pid[1], pid[2])
        except (ValueError, OverflowError) as e:
            raise _fail(name, f"the pickle holds an invalid NumPy scalar ({e})") from None
    raise _fail(name, f"the pickle refers to an unknown object {reprlib.repr(pid)}")


def _weights_only_message(name: str, what: str) -> str:
    allow = what.rsplit(".", 1)[-1] if " " not in what else "MyClass"
    return (f"kiln.load: {name} contains pickled Python objects, and weights_only=True "
            f"(the default) does not allow {what}. Loading pickled objects can execute "
            "arbitrary code. If you trust the source of this file, load it with "
            "kiln.load(..., weights_only=False). Otherwise allow just the classes it needs with "
            f"kiln.serialization.add_safe_globals([{allow}]), or for one load with "
            f"`with kiln.serialization.safe_globals([{allow}]): kiln.load(...)`")


def _unpickle(text: str, arrays: _Arrays, name: str, weights_only: bool) -> Any:
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise _fail(name, f"kiln.pickle is not base64 ({e})") from None
    cls = _RestrictedUnpickler if weights_only else _TrustingUnpickler
    unpickler = cls(io.BytesIO(data), arrays, name)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as e:      # a corrupt pickle can fail in any way: say which file
        raise _fail(name, f"its pickled object could not be rebuilt ({type(e).__name__}: "
                    f"{e})") from e
    return obj
