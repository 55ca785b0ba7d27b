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

import hashlib
import os
import re
import shutil
import sys
import uuid
import zipfile
from typing import Any
from urllib.parse import urlparse
from urllib.request import Request, urlopen


import kiln
from kiln.torch_checkpoint import load_torch_zip  # noqa: F401  (kiln.hub.load_torch_zip)
from kiln.torch_checkpoint import is_legacy_torch_file, load_torch_legacy

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
    if is_legacy_torch_file(cached):          # torch.save before 1.6 (older torchvision files)
        return load_torch_legacy(cached, map_location)
    return kiln.load(cached, map_location=map_location, weights_only=weights_only)


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
