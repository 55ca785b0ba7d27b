"""`kiln.hub`: download weights by URL into a cache and load them, as torch.hub does.

`download_url_to_file` and `load_state_dict_from_url` (`kiln.utils.model_zoo.load_url`) fetch
with urllib into `get_dir()/checkpoints` (`$TORCH_HOME/hub` when TORCH_HOME is set, else
`~/.cache/kiln/hub`, or what `set_dir` chose) and load the file: a kiln checkpoint through
`kiln.load`, and a `torch.save` zip through a reader that rebuilds only tensors, parameters and
containers (its pickle may name nothing else, so it runs no code from the file, as torch's
`weights_only=True`). `hub.load`/`hub.list`/`hub.help` run a repository's hubconf.py, downloaded
code, and are refused.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import re
import shutil
import sys
import uuid
import zipfile
from typing import Any
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import numpy as np

import kiln

READ_DATA_CHUNK = 128 * 1024
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")     # torch's: `name-<sha256 prefix>.ext`
_hub_dir: str | None = None


def get_dir() -> str:
    """The cache directory: set_dir's, else `$TORCH_HOME/hub`, else `$XDG_CACHE_HOME/kiln/hub`
    (`~/.cache/kiln/hub`)."""
    if _hub_dir is not None:
        return _hub_dir
    if os.getenv("TORCH_HOME"):
        return os.path.join(os.path.expanduser(os.environ["TORCH_HOME"]), "hub")
    cache = os.path.expanduser(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")))
    return os.path.join(cache, "kiln", "hub")


def set_dir(d: str | os.PathLike) -> None:
    global _hub_dir
    _hub_dir = os.path.expanduser(os.fspath(d))


def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None,
                         progress: bool = True) -> None:
    """Download `url` to the path `dst`, through a temporary file beside it, so that a broken
    download never leaves a partial `dst`.

    Raises:
        RuntimeError: the file's SHA-256 does not start with `hash_prefix`.
        urllib.error.URLError: the URL cannot be read.
    """
    dst = os.path.expanduser(os.fspath(dst))
    partial = f"{dst}.{uuid.uuid4().hex}.partial"
    request = Request(url, headers={"User-Agent": "kiln.hub"})
    try:
        with urlopen(request) as response, open(partial, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            digest = hashlib.sha256() if hash_prefix is not None else None
            done = 0
            while True:
                chunk = response.read(READ_DATA_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if digest is not None:
                    digest.update(chunk)
                if progress:
                    of = f" of {total}" if total else ""
                    sys.stderr.write(f"\r{os.path.basename(dst)}: {done}{of} bytes")
            if progress:
                sys.stderr.write("\n")
        if digest is not None and not digest.hexdigest().startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got '
                               f'"{digest.hexdigest()}")')
        shutil.move(partial, dst)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def load_state_dict_from_url(url: str, model_dir: str | None = None, map_location=None,
                             progress: bool = True, check_hash: bool = False,
                             file_name: str | None = None, weights_only: bool = True) -> Any:
    """Download `url` into `model_dir` (default `get_dir()/checkpoints`) unless a file of that
    name is there already, and load it.

    Args:
        check_hash: the file name must be `name-<sha256 prefix>.ext`, and the download must
            hash to that prefix.
        weights_only: for a kiln checkpoint, as `kiln.load`'s (True by default, where torch
            2.13 defaults to False: a downloaded file rebuilds no arbitrary objects unless you
            say so). A torch.save file is always read as weights only.
    """
    if model_dir is None:
        model_dir = os.path.join(get_dir(), "checkpoints")
    os.makedirs(model_dir, exist_ok=True)
    filename = file_name if file_name is not None else os.path.basename(urlparse(url).path)
    cached = os.path.join(model_dir, filename)
    if not os.path.exists(cached):
        sys.stdout.write(f'Downloading: "{url}" to {cached}\n')
        hash_prefix = None
        if check_hash:
            found = HASH_REGEX.search(filename)
            hash_prefix = found.group(1) if found else None
        download_url_to_file(url, cached, hash_prefix, progress=progress)
    if zipfile.is_zipfile(cached):
        return load_torch_zip(cached, map_location)
    return kiln.load(cached, map_location=map_location, weights_only=weights_only)


# ----------------------------------------------------------------------------- torch.save zips

_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64",
                   "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
                   "LongStorage": "int64", "IntStorage": "int32", "ByteStorage": "uint8",
                   "BoolStorage": "bool"}


class _StorageType:
    """What a `torch.FloatStorage` global stands for in the pickle: its dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, getattr(kiln, _STORAGE_DTYPES[name])


def _rebuild_parameter(data, requires_grad, hooks=None, *state):
    return kiln.nn.Parameter(data, requires_grad=bool(requires_grad))


# the only globals a torch state dict's pickle may name besides the storage types and
# _rebuild_tensor_v2 (the unpickler's own method): nothing else can be called while loading
_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}


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
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"kiln.hub: {self.name} is a torch.save file that needs {module}.{name} to load; "
            "kiln reads only tensors, parameters and containers (a state dict) from torch "
            "files, and runs no code from them. Save the model's state_dict() instead")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"kiln.hub: {self.name}: unknown persistent id "
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
            raise pickle.UnpicklingError(f"kiln.hub: {self.name}: a tensor of size {[*size]}"
                                         f", stride {[*stride]} at offset {offset} lies "
                                         f"outside its storage of {len(array)} elements")
        view = np.lib.stride_tricks.as_strided(
            array[offset:], shape=tuple(size), strides=tuple(s * array.itemsize for s in stride))
        out = kiln.from_numpy(np.array(view))      # a copy: the file's bytes stay the file's
        device = _target(self.map_location, location)
        if device != "cpu":
            out = out.to(device)
        return out.requires_grad_(True) if requires_grad else out


def load_torch_zip(path: str | os.PathLike, map_location=None) -> Any:
    """Read a `torch.save` zip holding tensors in containers (a state dict), without running
    code from it: its pickle may name only OrderedDict, tensors and parameters.

    Args:
        map_location: None or "cpu" (tensors stay on the CPU), a device or device string to
            move every tensor to, or a dict mapping the saved location ("cuda:0") to one.

    Raises:
        CheckpointError: the file is not a torch.save zip, or names another global.
    """
    from kiln.serialization import CheckpointError
    name = os.fspath(path)
    try:
        with zipfile.ZipFile(name) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"kiln.hub: {name} is a zip archive but not a torch.save "
                                      "file (it has no single data.pkl)")
            prefix = pickles[0][:-len("data.pkl")]
            with archive.open(pickles[0]) as f:
                return _WeightsUnpickler(f, archive, prefix, name, map_location).load()
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
        raise CheckpointError(f"kiln.hub: cannot read {name} as a torch.save state dict: "
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
        raise TypeError("kiln.hub: map_location must be None, a device, a device string or a "
                        f"dict of them, got {type(map_location).__name__}")
    if wanted.startswith("cuda") and not kiln.cuda.is_available() and map_location is None:
        return "cpu"
    return wanted


# ----------------------------------------------------------------------------- hubconf

def _refuse(what: str):
    raise RuntimeError(f"kiln.hub.{what}: kiln does not run a repository's hubconf.py (it is "
                       "downloaded code, run with your permissions). Build the model in Python "
                       "and load its weights with model.load_state_dict("
                       "kiln.hub.load_state_dict_from_url(url))")


def load(repo_or_dir, model, *args, **kwargs):
    _refuse("load")


def list(github, force_reload=False, skip_validation=False, trust_repo=None,  # noqa: A001
         verbose=True):
    _refuse("list")


def help(github, model, force_reload=False, skip_validation=False,  # noqa: A001
         trust_repo=None):
    _refuse("help")
