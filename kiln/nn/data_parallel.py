"""`factory_kwargs`: the device/dtype keyword arguments of a layer, as torch.nn passes them
on to tensor factories."""

from __future__ import annotations


def factory_kwargs(kwargs: dict | None) -> dict:
    """The device/dtype/memory_format entries of `kwargs` (and of its nested
    `factory_kwargs`), for passing on to tensor factories; an unknown key is an error."""
    if kwargs is None:
        return {}
    simple = {"device", "dtype", "memory_format"}
    unexpected = set(kwargs) - simple - {"factory_kwargs"}
    if unexpected:
        raise TypeError(f"unexpected kwargs {unexpected}")
    out = dict(kwargs.get("factory_kwargs", {}))
    for key in simple & set(kwargs):
        if key in out:
            raise TypeError(f"{key} specified twice, in **kwargs and in factory_kwargs")
        out[key] = kwargs[key]
    return out
