"""`data_parallel(module, inputs, device_ids)`: DataParallel's functional form, on one device."""

from __future__ import annotations


def data_parallel(module, inputs, device_ids=None, output_device=None, dim: int = 0,
                  module_kwargs=None):
    """`module(*inputs, **module_kwargs)`, as torch's data_parallel does for one device: kiln
    runs one device per process, so several `device_ids` are refused (use
    DistributedDataParallel with one rank per device)."""
    if device_ids is not None and len(list(device_ids)) > 1:
        raise ValueError(f"data_parallel: kiln runs one device per process, got device_ids="
                         f"{list(device_ids)}; for several use DistributedDataParallel with one "
                         "rank per device")
    if not isinstance(inputs, tuple):
        inputs = (inputs,) if inputs is not None else ()
    return module(*inputs, **(module_kwargs or {}))
