"""Downloading and checking dataset files: md5 checks, urllib downloads, archive extraction
(torchvision.datasets.utils' names for what kiln.vision's datasets need)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile


def calculate_md5(fpath: str, chunk_size: int = 1024 * 1024) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(fpath, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            md5.update(chunk)
    return md5.hexdigest()


def check_md5(fpath: str, md5: str) -> bool:
    return md5 == calculate_md5(fpath)


def check_integrity(fpath: str, md5: str | None = None) -> bool:
    """Whether `fpath` is a file, with the given md5 when one is given."""
    if not os.path.isfile(fpath):
        return False
    return md5 is None or check_md5(fpath, md5)


def download_url(url: str, root: str, filename: str | None = None,
                 md5: str | None = None) -> str:
    """Download `url` into `root` (skipped when a file with the md5 is there); returns the path.
    RuntimeError when the downloaded file's md5 differs."""
    root = os.path.expanduser(root)
    filename = filename or os.path.basename(url)
    fpath = os.path.join(root, filename)
    os.makedirs(root, exist_ok=True)
    if check_integrity(fpath, md5):
        return fpath
    partial = fpath + ".part"
    request = urllib.request.Request(url, headers={"User-Agent": "kiln.vision"})
    with urllib.request.urlopen(request) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(partial, fpath)
    if not check_integrity(fpath, md5):
        raise RuntimeError(f"downloaded {url} to {fpath}, but its md5 is not {md5}: the file "
                           f"is corrupt or the mirror changed; delete it and retry")
    return fpath


def _safe_members(archive: tarfile.TarFile, to_path: str):
    """The archive's members, refusing any that would land outside `to_path`."""
    base = os.path.realpath(to_path)
    for member in archive.getmembers():
        target = os.path.realpath(os.path.join(to_path, member.name))
        if os.path.commonpath([base, target]) != base or member.issym() or member.islnk():
            raise RuntimeError(f"archive member {member.name!r} would be written outside "
                               f"{to_path}; refusing to extract it")
        yield member


def extract_archive(from_path: str, to_path: str | None = None,
                    remove_finished: bool = False) -> str:
    """Extract a .tar(.gz), .tgz, .zip or single-file .gz archive; returns the folder."""
    to_path = to_path or os.path.dirname(from_path)
    if from_path.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        with tarfile.open(from_path) as archive:
            members = list(_safe_members(archive, to_path))
            # Python's own "data" filter too, where it has one (it also drops odd permissions)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(to_path, members=members, **extra)
    elif from_path.endswith(".zip"):
        with zipfile.ZipFile(from_path) as archive:
            for name in archive.namelist():
                target = os.path.realpath(os.path.join(to_path, name))
                if not target.startswith(os.path.realpath(to_path) + os.sep):
                    raise RuntimeError(f"zip member {name!r} would be written outside "
                                       f"{to_path}; refusing to extract it")
            archive.extractall(to_path)
    elif from_path.endswith(".gz"):
        out = os.path.join(to_path, os.path.basename(from_path)[:-3])
        with gzip.open(from_path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        raise ValueError(f"extract_archive: cannot tell the archive type of {from_path}")
    if remove_finished:
        os.remove(from_path)
    return to_path


def download_and_extract_archive(url: str, download_root: str,
                                 extract_root: str | None = None,
                                 filename: str | None = None, md5: str | None = None,
                                 remove_finished: bool = False) -> None:
    download_root = os.path.expanduser(download_root)
    path = download_url(url, download_root, filename, md5)
    extract_archive(path, extract_root or download_root, remove_finished)
