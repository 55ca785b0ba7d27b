"""Reading a `torch.save` file (a zip holding a pickle and the tensors' bytes) without running
code from it: the pickle may name only the storage types, `_rebuild_tensor_v2`,
`_rebuild_parameter` and `OrderedDict`, so a state dict, or a checkpoint dict of state dicts and
numbers, loads; a tensor or parameter carrying attributes of its own (`p.no_weight_decay`)
loads with them (`_rebuild_from_type_v2`, `_rebuild_parameter_with_state`: set as data, never
through a class's code); anything else (a pickled model, a `torch.device`, a user class) is
refused by name. Used by `kiln.load` and `kiln.hub`. `load_torch_legacy` reads the pre-1.6
format (bare pickles followed by the storages' bytes) under the same rules: torchvision's older
pretrained files (VGG, DenseNet, SqueezeNet, ...) are in it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

import kiln

_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64",
                   "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
                   "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
                   "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
                   "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128"}


class _StorageType:
    """What a `torch.FloatStorage` global stands for in the pickle: its dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, getattr(kiln, _STORAGE_DTYPES[name])


# torch.save keeps a tensor of a type with no typed storage class (uint16, uint32, uint64) as
# bytes (`UntypedStorage`) and names the dtype in `_rebuild_tensor_v3`'s arguments
_UNTYPED = _StorageType("ByteStorage")
_V3_DTYPES = {"uint16", "uint32", "uint64"}


class _TensorType:
    """What the global `torch.Tensor` stands for in the pickle: the type `_rebuild_from_type_v2`
    accepts, nothing the pickle can call."""


_TENSOR_TYPE = _TensorType()


def _rebuild_parameter(data, requires_grad, hooks=None, *state):
    return kiln.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, hooks, state):
    """torch._utils._rebuild_parameter_with_state: a parameter with attributes of its own."""
    return _set_attributes(_rebuild_parameter(data, requires_grad), state)


def _set_attributes(t, state):
    """Put a pickled tensor's state, its own attributes ({name: value}, or (that, slots) as
    torch writes it), in its `__dict__`: data only, never a class's `__setstate__` or
    property setters. Names of the tensor's own attributes and methods are refused."""
    if isinstance(state, tuple) and len(state) == 2 and not state[1]:
        state = state[0]
    if state is None:
        return t
    if not isinstance(state, dict) or any(type(k) is not str for k in state):
        raise pickle.UnpicklingError(f"kiln: a tensor's pickled state must be a dict of "
                                     f"attributes by name, not a {type(state).__name__}")
    hidden = [k for k in state if hasattr(type(t), k)]
    if hidden:
        raise pickle.UnpicklingError(f"kiln: a tensor's pickled attributes are named like the "
                                     f"tensor's own ({', '.join(hidden[:3])})")
    t.__dict__.update(state)
    return t


def _get_layout(name):
    layouts = {"torch.sparse_coo": kiln.sparse_coo, "torch.sparse_csr": kiln.sparse_csr,
               "torch.sparse_csc": kiln.sparse_csc}
    if name not in layouts:
        raise pickle.UnpicklingError(f"kiln reads sparse tensors of the layouts "
                                     f"{', '.join(layouts)} from torch files, not {name!r}")
    return layouts[name]


def _rebuild_sparse_tensor(layout, data):
    """torch._utils._rebuild_sparse_tensor, through kiln's constructors, which check the
    indices (PyTorch checks them after loading)."""
    if layout is kiln.sparse_coo:
        indices, values, size = data[:3]
        coalesced = bool(data[3]) if len(data) > 3 and data[3] is not None else False
        return kiln.sparse_coo_tensor(indices, values, tuple(size), is_coalesced=coalesced)
    compressed, plain, values, size = data
    return kiln.sparse_compressed_tensor(compressed, plain, values, tuple(size), layout=layout)


# the only globals a torch state dict's pickle may name besides the storage types and
# _rebuild_tensor_v2 (the unpickler's own method): nothing else can be called while loading
_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
            ("torch._utils", "_rebuild_sparse_tensor"): _rebuild_sparse_tensor,
            ("torch.serialization", "_get_layout"): _get_layout,
            ("torch", "Size"): tuple}


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles a torch.save file's data.pkl: storages are read from the archive's
    `data/<key>` entries, tensors rebuilt from them, and no other global is found."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, name: str, map_location):
        super().__init__(file)
        self.archive, self.prefix, self.name = archive, prefix, name
        self.map_location = map_location
        self.storages: dict = {}                    # key -> (NumPy array, saved location)
        big = f"{prefix}byteorder" in archive.namelist() and \
            archive.read(f"{prefix}byteorder").strip() == b"big"
        self.byteorder = ">" if big else "<"

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_tensor_v3"):
            return self.rebuild_tensor_v3
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return self.rebuild_from_type_v2
        if (module, name) == ("torch", "Tensor"):
            return _TENSOR_TYPE
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return _UNTYPED
        if module == "torch" and name in _V3_DTYPES:
            return getattr(kiln, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"kiln: {self.name} is a torch.save file that needs {module}.{name} to load; "
            "kiln reads only tensors, parameters and containers (a state dict) from torch "
            "files, and runs no code from them. Save the model's state_dict() instead")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"kiln: {self.name}: unknown persistent id "
                                         f"{saved_id!r}")
        _, storage_type, key, location, numel = saved_id
        if key not in self.storages:
            dtype = storage_type.dtype
            raw = self.archive.read(f"{self.prefix}data/{key}")
            array = np.frombuffer(raw, dtype=np.dtype(dtype.np).newbyteorder(self.byteorder),
                                  count=int(numel))
            self.storages[key] = (array.astype(dtype.np, copy=False), str(location))
        return self.storages[key]

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
        """torch._utils._rebuild_tensor_v2: a view of a storage, copied into a kiln tensor on
        the device map_location names."""
        array, location = storage
        size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), \
            int(offset)
        last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else offset
        if (len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0
                or (all(size) and last >= len(array))):
            # as_strided reads wherever it is told: a view past the storage is refused
            raise pickle.UnpicklingError(f"kiln: {self.name}: a tensor of size {[*size]}"
                                         f", stride {[*stride]} at offset {offset} lies "
                                         f"outside its storage of {len(array)} elements")
        view = np.lib.stride_tricks.as_strided(
            array[offset:], shape=tuple(size), strides=tuple(s * array.itemsize for s in stride))
        out = kiln.from_numpy(np.array(view))      # a copy: the file's bytes stay the file's
        if callable(self.map_location) and not isinstance(self.map_location, kiln.device):
            placed = self.map_location(out, location)
            out = placed if placed is not None else out
            return out.requires_grad_(True) if requires_grad else out
        device = _target(self.map_location, location)
        if device != "cpu":
            out = out.to(device)
        return out.requires_grad_(True) if requires_grad else out

    def rebuild_from_type_v2(self, func, new_type, args, state):
        """torch._tensor._rebuild_from_type_v2, as torch.save writes a tensor with attributes of
        its own: `func` one of the tensor rebuilds above, `new_type` torch.Tensor."""
        if func not in (self.rebuild_tensor, self.rebuild_tensor_v3) or \
                new_type is not _TENSOR_TYPE or not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"kiln: {self.name}: a tensor rebuilt by "
                                         f"{func!r} as a {new_type!r}; kiln reads plain "
                                         "tensors with attributes, not tensor subclasses")
        return _set_attributes(func(*args), state)

    def rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype,
                          metadata=None):
        """torch._utils._rebuild_tensor_v3: as v2, on a storage of bytes read as `dtype`."""
        raw, location = storage
        if not isinstance(dtype, kiln.dtype) or len(raw) % dtype.itemsize:
            raise pickle.UnpicklingError(f"kiln: {self.name}: a storage of {len(raw)} bytes "
                                         f"cannot hold {dtype!r} elements")
        array = raw.view(np.dtype(dtype.np).newbyteorder(self.byteorder)).astype(dtype.np,
                                                                                copy=False)
        return self.rebuild_tensor((array, location), offset, size, stride, requires_grad,
                                   hooks, metadata)


def load_torch_zip(path, map_location=None, name: str | None = None) -> Any:
    """Read a `torch.save` zip holding tensors in containers (a state dict, or a dict of them
    with numbers and strings), without running code from it: its pickle may name only
    OrderedDict, tensors and parameters.

    Args:
        path: the file's path, or a seekable binary file object (then `name` names it).
        map_location: None or "cpu" (tensors stay on the CPU), a device or device string to
            move every tensor to, a dict mapping the saved location ("cuda:0") to one, or a
            callable `fn(tensor_on_cpu, saved_location)` returning a tensor (None: the default).

    Raises:
        CheckpointError: the file is not a torch.save zip, or names another global.
    """
    from kiln.serialization import CheckpointError
    if name is None:
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"kiln: {name} is a zip archive but not a torch.save "
                                      "file (it has no single data.pkl)")
            prefix = pickles[0][:-len("data.pkl")]
            with archive.open(pickles[0]) as f:
                return _WeightsUnpickler(f, archive, prefix, name, map_location).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError, TypeError,
            EOFError) as e:
        raise CheckpointError(f"kiln: cannot read {name} as a torch.save state dict: "
                              f"{e}") from None


def _target(map_location, location: str) -> str:
    """Where a tensor saved from `location` goes: map_location's choice; without one, its own
    device when kiln can use it, else the CPU."""
    if map_location is None:
        wanted = location
    elif isinstance(map_location, dict):
        wanted = map_location.get(location, location)
    elif isinstance(map_location, (str, kiln.device)):
        wanted = str(map_location)
    else:
        raise TypeError("kiln: map_location must be None, a device, a device string or a "
                        f"dict of them, got {type(map_location).__name__}")
    if wanted.startswith("cuda") and not kiln.cuda.is_available() and map_location is None:
        return "cpu"
    return wanted


# ----------------------------------------------------------------------------- legacy format

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C       # the first pickle of a pre-1.6 torch.save file


class _PlainUnpickler(pickle.Unpickler):
    """The legacy header's pickles (magic number, protocol, sys_info, storage keys): plain
    values only."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"kiln: a legacy torch.save header names {module}.{name}")


class _PendingTensor:
    """A tensor (or, with `parameter`, a Parameter around one) of the legacy main pickle,
    rebuilt once its storage's bytes (which follow the pickle in the file) are read."""

    def __init__(self, *args, parameter: bool = False):
        self.args, self.parameter = args, parameter


class _LegacyUnpickler(_WeightsUnpickler):
    """The main pickle of a legacy file: storages are allocated when first named and filled
    from the bytes after the pickle; tensors wait for them."""

    def __init__(self, file, name: str, map_location):
        pickle.Unpickler.__init__(self, file)
        self.name, self.map_location = name, map_location
        self.storages = {}
        self.byteorder = "<"

    def find_class(self, module: str, name: str):
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                              ("torch._utils", "_rebuild_tensor")):      # torch < 0.4.1
            return lambda *args: _PendingTensor(*args)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda *args: _PendingTensor(*args, parameter=True)
        return super().find_class(module, name)

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] == "storage"
                and isinstance(saved_id[1], _StorageType)):
            raise pickle.UnpicklingError(f"kiln: {self.name}: unknown persistent id "
                                         f"{saved_id!r}")
        _, storage_type, key, location, numel, view_metadata = saved_id
        if view_metadata is not None:
            raise pickle.UnpicklingError(f"kiln: {self.name}: storage views (torch < 0.4) are "
                                         "not supported")
        if key not in self.storages:
            self.storages[key] = (np.zeros(int(numel), storage_type.dtype.np), str(location))
        return self.storages[key]

    def finish(self, value: Any) -> Any:
        """`value` with every pending tensor rebuilt (the storages are filled by now)."""
        if isinstance(value, _PendingTensor) and value.parameter:
            return _rebuild_parameter(self.finish(value.args[0]), *value.args[1:])
        if isinstance(value, _PendingTensor):
            return self.rebuild_tensor(*value.args)
        if isinstance(value, dict):
            out = type(value)((k, self.finish(v)) for k, v in value.items())
            if hasattr(value, "_metadata"):
                out._metadata = value._metadata
            return out
        if isinstance(value, (list, tuple)):
            return type(value)(self.finish(v) for v in value)
        return value


def is_legacy_torch_file(path) -> bool:
    """Whether `path` starts with the legacy torch.save magic number (read as a plain pickle,
    nothing else unpickled)."""
    try:
        with open(path, "rb") as f:
            return is_legacy_torch_header(f.read(64))
    except OSError:
        return False


def is_legacy_torch_header(head: bytes) -> bool:
    """Whether a file's first bytes are the legacy torch.save magic number's pickle."""
    try:
        return _PlainUnpickler(io.BytesIO(head)).load() == _LEGACY_MAGIC
    except Exception:       # any other bytes: not one
        return False


def load_torch_legacy(path, map_location=None, name: str | None = None) -> Any:
    """Read a pre-1.6 `torch.save` file (`_use_new_zipfile_serialization=False`, and every file
    torchvision published before 2020) holding tensors in containers, by the same rules as
    `load_torch_zip` (its arguments are the same: a path, or a binary file object).

    Raises:
        CheckpointError: not such a file, or it names another global.
    """
    from kiln.serialization import CheckpointError
    if name is None:
        name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else repr(path)
    try:
        with (open(path, "rb") if isinstance(path, (str, os.PathLike))
              else contextlib.nullcontext(path)) as f:
            if _PlainUnpickler(f).load() != _LEGACY_MAGIC:
                raise CheckpointError(f"kiln: {name} is not a legacy torch.save file")
            protocol = _PlainUnpickler(f).load()
            if protocol != 1001:
                raise CheckpointError(f"kiln: {name}: legacy torch.save protocol {protocol} "
                                      "is not supported (1001 is)")
            sys_info = _PlainUnpickler(f).load()
            if not sys_info.get("little_endian", True):
                raise CheckpointError(f"kiln: {name} was saved on a big-endian machine")
            unpickler = _LegacyUnpickler(f, name, map_location)
            result = unpickler.load()
            for key in _PlainUnpickler(f).load():
                array = unpickler.storages[key][0]
                numel = int.from_bytes(f.read(8), "little")
                if numel != array.size:
                    raise CheckpointError(f"kiln: {name}: storage {key} holds {numel} "
                                          f"elements where the pickle said {array.size}")
                raw = f.read(numel * array.itemsize)
                if len(raw) != numel * array.itemsize:
                    raise CheckpointError(f"kiln: {name} ends inside storage {key}")
                array[:] = np.frombuffer(raw, dtype=array.dtype.newbyteorder("<"))
            return unpickler.finish(result)
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError,
            AttributeError) as e:
        raise CheckpointError(f"kiln: cannot read {name} as a torch.save state dict: "
                              f"{e}") from None
