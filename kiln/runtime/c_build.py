"""Compiling generated C with the system C compiler, caching the shared objects, calling them.

The compiler is `$CC` (default `cc`; split as a shell splits it, so `CC='gcc -O2'` or
`CC='ccache gcc'` work as they do under make), run with `FLAGS`: `-O3 -march=native -fopenmp`, plus
flags that keep NumPy's results: no `-ffast-math` (it would break NaN and inf), no contraction
of `a * b + c` into one rounding, and wrapping signed integers. A built object lives in the
cache (`KILN_CACHE_DIR`, default `~/.cache/kiln`, under `c/`) keyed by the source, the
compiler's identity, the flags and the CPU (`-march=native` code may not run elsewhere). An
entry is written atomically with a checksum beside it and checked before it is loaded, so a
corrupt or half-written entry is rebuilt, never trusted. Builds run in the background: creating
a `CModule` starts the compiler, its first use waits for it.

Kernels run on `kiln.set_num_threads(n)` threads when that was called, otherwise as OpenMP
decides (`OMP_NUM_THREADS`, else one per core). Idle OpenMP threads spin only briefly
(`GOMP_SPINCOUNT`, unless the user set it or `OMP_WAIT_POLICY`), so they leave the cores to the
BLAS threads of the matmuls between kernels. In a forked child (a DataLoader worker) kernels run
on one thread: GNU OpenMP cannot start a team there once the parent has started its threads.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from kiln.runtime.triton_launch import write_atomic

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=off", "-fwrapv", "-std=gnu11", "-shared", "-fPIC")

_LOCK = threading.Lock()
_LIBS: dict = {}              # cache key -> loaded ctypes.CDLL
_PROBES: dict = {}            # (compiler command, cache dir) -> None (works) or why not
_threads: int | None = None   # set by kiln.set_num_threads


class BuildError(RuntimeError):
    """The C compiler failed on generated source, or the result could not be loaded."""


def cache_root() -> Path:
    """Where kiln keeps what it builds across processes: `KILN_CACHE_DIR`, or ~/.cache/kiln."""
    return Path(os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kiln"))


def cache_dir() -> Path:
    return cache_root() / "c"


def compiler_command() -> str:
    return os.environ.get("CC") or "cc"


def compiler_argv(cc: str | None = None) -> list[str]:
    """`$CC` as the words a shell would make of it (a compiler and its own arguments); an
    empty list when it cannot be split (an unclosed quote)."""
    try:
        return shlex.split(cc or compiler_command())
    except ValueError:
        return []


@functools.lru_cache(maxsize=None)
def _cpu_identity() -> str:
    """What `-march=native` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [x for x in f if x.startswith(("model name", "flags"))]
        return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()[:16]
    except OSError:
        import platform
        return platform.machine() + platform.processor()


def compiler_identity(cc: str | None = None) -> str | None:
    """The compiler binary's path, size and mtime, and the arguments `$CC` gives it (None when
    it is not found): a new compiler gets new cache entries without running it to ask its
    version."""
    argv = compiler_argv(cc)
    path = shutil.which(argv[0]) if argv else None
    if path is None:
        return None
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}:{st.st_size}:{st.st_mtime_ns}:{_cpu_identity()}" + \
        "".join(f" {a}" for a in argv[1:])


def cache_key(source: str, cc: str | None = None) -> str:
    ident = compiler_identity(cc)
    return hashlib.sha256(json.dumps([source, ident, FLAGS]).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- the probe

PROBE_SOURCE = """\
#include <omp.h>
int kiln_probe(void) { int n = 0;
#pragma omp parallel reduction(+:n)
    n += 1;
    return n; }
"""


def compiler_problem() -> str | None:
    """None when the C compiler builds and loads an OpenMP kernel; else why not.

    The answer is kept in memory per compiler and cache directory and, when positive, on disk, so a new process
    does not pay for the probe again.
    """
    cc = compiler_command()
    # the answer depends on where builds go too: an unusable cache directory fails the probe
    where = (cc, str(cache_dir()))
    with _LOCK:
        if where in _PROBES:
            return _PROBES[where]
    ident = compiler_identity(cc)
    if ident is None:
        problem = f"the C compiler {cc!r} was not found (set CC to a working compiler)"
    else:
        marker = cache_dir() / "probe" / cache_key(PROBE_SOURCE, cc)
        problem = None
        if not marker.exists():
            try:
                lib = _load(build(PROBE_SOURCE))
                fn = lib.kiln_probe
                fn.restype = ctypes.c_int
                if fn() < 1:
                    problem = "the OpenMP probe kernel returned no threads"
            except (BuildError, OSError) as e:
                problem = f"{cc!r} cannot build OpenMP code: {e}"
            if problem is None:
                write_atomic(marker, b"ok\n")
    with _LOCK:
        _PROBES[where] = problem
    return problem


# ----------------------------------------------------------------------------- building

def _paths(key: str) -> tuple[Path, Path, Path]:
    root = cache_dir() / key[:2]
    return root / f"{key}.so", root / f"{key}.json", root / f"{key}.c"


def cached(key: str) -> Path | None:
    """The entry's shared object when it is whole (its checksum matches), else None."""
    so, meta_path, _ = _paths(key)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("sha256") != hashlib.sha256(
                so.read_bytes()).hexdigest():
            return None
        return so
    except (OSError, ValueError):
        return None


def _compile_command(cc: str, src: Path, out: Path) -> list:
    return [*compiler_argv(cc), *FLAGS, str(src), "-o", str(out), "-lm"]


def start_build(source: str) -> "Build":
    """Begin building `source` (a cache hit finishes at once); `.wait()` gives the path."""
    return Build(source)


def build(source: str) -> Path:
    """The path of the shared object built from `source`, from the cache when it is there."""
    return Build(source).wait()


class Build:
    """One compiler run in the background, committed to the cache when it succeeds."""

    def __init__(self, source: str):
        self.source = source
        self.cc = compiler_command()
        self.key = cache_key(source, self.cc)
        self.path = cached(self.key)
        self.proc = None
        self.lock = threading.Lock()
        self.error: str | None = None
        if self.path is not None:
            return
        if compiler_identity(self.cc) is None:
            self.error = f"the C compiler {self.cc!r} was not found"
            return
        # the paths are fixed now: KILN_CACHE_DIR may change before the build is waited for
        so, self.meta_path, c_path = _paths(self.key)
        self.so = so
        so.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(c_path, source.encode())        # kept for reading, and for the compiler
        fd, tmp = tempfile.mkstemp(dir=so.parent, prefix=f".{self.key}.", suffix=".so.tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self.proc = subprocess.Popen(_compile_command(self.cc, c_path, self.tmp),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as e:
            self.error = f"could not run {self.cc!r}: {e}"
            self.tmp.unlink(missing_ok=True)
        else:
            _PENDING.add(self)

    def wait(self) -> Path:
        with self.lock:
            _PENDING.discard(self)
            if self.path is not None:
                return self.path
            if self.error is None:
                output, _ = self.proc.communicate()
                if self.proc.returncode == 0 and self.tmp.exists():
                    so, meta_path = self.so, self.meta_path
                    payload = self.tmp.read_bytes()
                    os.replace(self.tmp, so)
                    write_atomic(meta_path, json.dumps({
                        "key": self.key, "sha256": hashlib.sha256(payload).hexdigest(),
                        "compiler": compiler_identity(self.cc), "flags": FLAGS}).encode())
                    self.path = so
                    return so
                text = output.decode(errors="replace").strip()
                self.error = f"{self.cc} exited with status {self.proc.returncode}: " + (
                    text[-2000:] if text else "no output")
                self.tmp.unlink(missing_ok=True)
            raise BuildError(self.error)


# Builds started and not yet waited for (a function compiled and called once exits before its
# kernels are needed): finished when the process exits, so their shared objects reach the cache
# and no compiler process or temporary file is left behind.
_PENDING: set = set()


def load_builds_in(folder: Path) -> None:
    """Finish and load every pending build that writes into `folder`, before the folder goes
    away (a fresh cache's block ends while kernels compiled inside it are still building;
    they are loaded at their first run, after the block). A failed one fails at that run."""
    folder = Path(folder).resolve()
    for build in list(_PENDING):
        if folder in build.so.resolve().parents:
            try:
                load(build)
            except (BuildError, OSError):
                pass


@atexit.register
def _finish_pending_builds() -> None:
    for build in list(_PENDING):
        try:
            build.wait()
        except (BuildError, OSError):
            pass


# ----------------------------------------------------------------------------- loading

# How long an idle OpenMP thread spins before it sleeps, when the user has not said (GCC's
# default, 300000, keeps both cores of a small machine busy between kernels, and BLAS's own
# threads then wait behind them: a 1 ms matmul took 30 ms). About 10-40 microseconds: enough
# to bridge the Python between two kernels of a compiled function.
GOMP_SPINCOUNT = "1000"


def _load(path: Path) -> ctypes.CDLL:
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT     # read when libgomp first loads
    lib = ctypes.CDLL(str(path))
    if _threads is not None or _forked:
        _apply_threads(lib)
    return lib


def load(build: Build) -> ctypes.CDLL:
    """The loaded library of a finished build (one per cache key per process)."""
    with _LOCK:
        lib = _LIBS.get(build.key)
    if lib is not None:
        return lib
    path = build.wait()
    try:
        lib = _load(path)
    except OSError as e:
        raise BuildError(f"loading {path} failed: {e}") from e
    with _LOCK:
        _LIBS[build.key] = lib
    return lib


def kernel_function(lib: ctypes.CDLL, name: str, nargs: int):
    """The C kernel `name`, taking `nargs` pointers (addresses as Python ints)."""
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p] * nargs
    fn.restype = None
    return fn


def data_pointer(array: np.ndarray) -> int:
    """The address of a C-contiguous array's first element, as cheaply as ctypes allows."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):         # read-only or empty memory
        return array.ctypes.data


# ----------------------------------------------------------------------------- threads

def set_num_threads(n: int) -> None:
    """Run kernels on `n` OpenMP threads (`kiln.set_num_threads` calls this)."""
    global _threads
    _threads = int(n)
    with _LOCK:
        libs = list(_LIBS.values())
    for lib in libs[:1]:            # one OpenMP runtime serves every kernel library
        _apply_threads(lib)


_forked = False               # this process is a fork of one that may have started OpenMP


def _after_fork_in_child() -> None:
    # GNU OpenMP cannot start a team in a process forked after its threads started (the child
    # waits forever for threads it does not have): a forked child (a DataLoader worker calling
    # a compiled model) runs every kernel on one thread, which needs no team
    global _forked
    _forked = True
    with _LOCK:
        libs = list(_LIBS.values())
    for lib in libs[:1]:
        _apply_threads(lib)


def threads_setting() -> int | None:
    """The thread count `kiln.set_num_threads` asked for, or None (OpenMP's default)."""
    return _threads


def _apply_threads(lib: ctypes.CDLL) -> None:
    try:
        lib.omp_set_num_threads(ctypes.c_int(1 if _forked else _threads))
    except AttributeError:
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def clear_memory_cache() -> None:
    """Forget loaded libraries and probe answers (the disk cache stays)."""
    with _LOCK:
        _LIBS.clear()
        _PROBES.clear()
