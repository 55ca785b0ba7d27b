"""Process-wide switches torch scripts flip: determinism, matmul precision, warnings, printing.

kiln's eager ops are deterministic (NumPy), so the determinism switches are stored and read
back; `set_printoptions` sets the options kiln's tensor repr reads (not NumPy's).
"""

from __future__ import annotations

from kiln.tracer.tensor import PRINT_OPTS

_STATE = {"deterministic": False, "warn_only": False, "matmul_precision": "highest",
          "warn_always": False,
          "interop_threads": 1}


def use_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    _STATE["deterministic"], _STATE["warn_only"] = bool(mode), bool(warn_only)


def are_deterministic_algorithms_enabled() -> bool:
    return _STATE["deterministic"]


def is_deterministic_algorithms_warn_only_enabled() -> bool:
    return _STATE["warn_only"]


def set_deterministic_debug_mode(mode) -> None:
    level = {"default": 0, "warn": 1, "error": 2}.get(mode, mode)
    use_deterministic_algorithms(level > 0, warn_only=level == 1)


def get_deterministic_debug_mode() -> int:
    if not _STATE["deterministic"]:
        return 0
    return 1 if _STATE["warn_only"] else 2


def set_float32_matmul_precision(precision: str) -> None:
    if precision not in ("highest", "high", "medium"):
        raise ValueError(f"set_float32_matmul_precision: expected 'highest', 'high' or "
                         f"'medium', got {precision!r}")
    _STATE["matmul_precision"] = precision


def get_float32_matmul_precision() -> str:
    return _STATE["matmul_precision"]


def set_warn_always(b: bool) -> None:
    _STATE["warn_always"] = bool(b)


def is_warn_always_enabled() -> bool:
    return _STATE["warn_always"]


def set_num_interop_threads(n: int) -> None:
    _STATE["interop_threads"] = int(n)


def get_num_interop_threads() -> int:
    return _STATE["interop_threads"]


def set_flush_denormal(mode: bool) -> bool:
    """torch returns False where the CPU cannot flush denormals; NumPy never does."""
    return False


_PROFILES = {"default": (4, 1000, 3, 80), "short": (2, 1000, 2, 80),
             "full": (4, float("inf"), 3, 80)}


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None,
                     profile=None, sci_mode=None) -> None:
    """How tensors print, as torch.set_printoptions: a profile resets the four counts, the
    options given change, the others stay; `sci_mode` None is automatic. NumPy's own print
    options are left alone."""
    opts = PRINT_OPTS
    if profile is not None:
        if profile not in _PROFILES:
            raise ValueError(f"set_printoptions: unknown profile {profile!r}; expected one of "
                             f"{sorted(_PROFILES)}")
        opts.precision, opts.threshold, opts.edgeitems, opts.linewidth = _PROFILES[profile]
    for key, value in (("precision", precision), ("threshold", threshold),
                       ("edgeitems", edgeitems), ("linewidth", linewidth)):
        if value is not None:
            setattr(opts, key, value)
    opts.sci_mode = sci_mode
