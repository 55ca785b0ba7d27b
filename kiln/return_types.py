"""`torch.return_types`: the named tuples ops such as `max(dim)`, `sort`, `topk` and `svd`
return, one type per op, printed as PyTorch prints them (`kiln.return_types.max(` then a
`field=value` line per field). They are namedtuples: indexing, unpacking and `.values` work as
on any tuple; `install` re-types the results of kiln's ops and Tensor methods."""

from __future__ import annotations

import collections
import functools

_TYPES: dict[str, type] = {}


def _repr(self) -> str:
    body = ",\n".join(f"{name}={value!r}" for name, value in zip(self._fields, self))
    return f"kiln.return_types.{type(self).__name__}(\n{body})"


def return_type(name: str, fields: tuple) -> type:
    """The result type named `name` (one per name and fields, made on first use)."""
    key = f"{name}:{','.join(fields)}"
    kind = _TYPES.get(key)
    if kind is None:
        base = collections.namedtuple(name, fields)
        kind = type(name, (base,), {"__slots__": (), "__repr__": _repr, "__str__": _repr,
                                    "__module__": __name__})
        _TYPES[key] = kind
        globals().setdefault(name, kind)
    return kind


def _retyped(fn, name: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        fields = getattr(out, "_fields", None)
        if fields is None or type(out).__module__ == __name__:
            return out
        return return_type(name, fields)(*out)
    return wrapper


# the ops (kiln.X and Tensor.X) whose named-tuple results PyTorch types as return_types.X
OPS = ("max", "min", "sort", "topk", "kthvalue", "mode", "median", "nanmedian", "cummax",
       "cummin", "aminmax", "svd", "slogdet", "frexp", "histogram", "geqrf", "lu_unpack")
# torch.linalg's, typed return_types.linalg_X
LINALG_OPS = ("qr", "svd", "eig", "eigh", "slogdet", "inv_ex", "cholesky_ex", "lu_factor",
              "lu_factor_ex", "lu", "ldl_factor", "ldl_factor_ex", "lstsq", "solve_ex")


def install(kiln_module, tensor_class, linalg_module) -> None:
    for name in OPS:
        for owner in (kiln_module, tensor_class):
            fn = getattr(owner, name, None)
            if fn is not None:
                setattr(owner, name, _retyped(fn, name))
    for name in LINALG_OPS:
        fn = getattr(linalg_module, name, None)
        if fn is not None:
            setattr(linalg_module, name, _retyped(fn, f"linalg_{name}"))
