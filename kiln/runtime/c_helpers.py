"""Hand-written C helper kernels of the NumPy backend (conv_cpu's unfold/fold, scatter_cpu's
index_add): one fixed source each, built with the system C compiler on first use (`c_build`,
cached on disk) and bound once; without a working compiler or cache directory they are None
and the backend runs its NumPy code."""

from __future__ import annotations

import threading
from typing import Callable

_UNSET = object()


class HelperKernels:
    """The C functions of `source`, as `bind(library)` names them (a dict), built on the first
    `functions()` call by whichever thread gets there first; `disable()` makes them None from
    then on (a forked child whose OpenMP threads are gone)."""

    def __init__(self, source: str, bind: Callable[[object], dict]):
        self.source, self.bind = source, bind
        self._lock = threading.Lock()
        self._fns = _UNSET

    def functions(self) -> dict | None:
        fns = self._fns
        if fns is not _UNSET:
            return fns
        from kiln.runtime import c_build     # on first use: it loads the code generators
        with self._lock:
            if self._fns is _UNSET:
                self._fns = self._load(c_build)
            return self._fns

    def _load(self, c_build) -> dict | None:
        try:
            if c_build.compiler_problem() is not None:
                return None
            return self.bind(c_build.load(c_build.start_build(self.source)))
        except (c_build.BuildError, OSError):
            return None         # no compiler, or no cache directory to build in: NumPy it is

    def disable(self) -> None:
        self._fns = None


__all__ = ["HelperKernels"]
