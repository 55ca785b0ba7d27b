"""DataParallel on one device: the wrapped module runs on the whole batch. (PyTorch splits
the batch over several GPUs; kiln's multi-device training is DistributedDataParallel.)"""

from __future__ import annotations

from kiln.nn.module import Module


class DataParallel(Module):
    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        if device_ids is not None and len(list(device_ids)) > 1:
            raise NotImplementedError("kiln's DataParallel runs on one device; for several "
                                      "devices use kiln.nn.parallel.DistributedDataParallel")
        self.module, self.dim = module, dim
        self.device_ids = list(device_ids) if device_ids is not None else []
        self.output_device = output_device

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)


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
