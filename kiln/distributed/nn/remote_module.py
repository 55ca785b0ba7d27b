"""RemoteModule: `module_cls(*args, **kwargs)` made on a remote worker; `forward` runs there
through RPC (inside a distributed autograd context, gradients flow back to it)."""

from __future__ import annotations

import kiln.nn as nn
from kiln.distributed import rpc


def _create(module_cls, args: tuple, kwargs: dict, device: str):
    module = module_cls(*args, **kwargs)
    return module.to(device) if device not in ("", "cpu") else module


def _forward(module_rref, args: tuple, kwargs: dict):
    return module_rref.local_value()(*args, **kwargs)


def _parameter_rrefs(module_rref, recurse: bool) -> list:
    return [rpc.RRef(p) for p in module_rref.local_value().parameters(recurse)]


def _split_device(remote_device: str) -> tuple[str, str]:
    """"worker1/cpu" -> ("worker1", "cpu"); "worker1" -> ("worker1", "cpu")."""
    if not isinstance(remote_device, str) or not remote_device:
        raise ValueError(f"RemoteModule: remote_device must be '<worker name>/<device>' (or "
                         f"'<worker name>'), got {remote_device!r}")
    name, _, device = remote_device.partition("/")
    return name, device or "cpu"


class RemoteModule(nn.Module):
    """`RemoteModule("ps/cpu", nn.EmbeddingBag, args=(100, 16), kwargs={"mode": "sum"})`
    makes the module on worker "ps"; `forward(...)` (and calling it) runs it there and returns
    the result, `forward_async(...)` a Future of it; `remote_parameters()` gives RRefs of its
    parameters for DistributedOptimizer. It pickles, so it can be passed to other workers."""

    def __init__(self, remote_device: str, module_cls, args=None, kwargs=None):
        super().__init__()
        name, device = _split_device(remote_device)
        if name.startswith("rank:"):            # "rank:1/cpu"
            rank = int(name[len("rank:"):])
            name = rpc.api._require("RemoteModule").names[rank]
        self.on = rpc.get_worker_info(name)
        self.device = device
        self.module_rref = rpc.remote(self.on, _create, (module_cls, tuple(args or ()),
                                                         dict(kwargs or {}), device))

    @classmethod
    def _rebuild(cls, on, device: str, module_rref) -> "RemoteModule":
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.on, self.device, self.module_rref = on, device, module_rref
        return self

    def __reduce__(self):
        return (RemoteModule._rebuild, (self.on, self.device, self.module_rref))

    def forward(self, *args, **kwargs):
        return rpc.rpc_sync(self.on, _forward, (self.module_rref, args, kwargs))

    def forward_async(self, *args, **kwargs):
        return rpc.rpc_async(self.on, _forward, (self.module_rref, args, kwargs))

    def remote_parameters(self, recurse: bool = True) -> list:
        """RRefs of the remote module's parameters (owned by its worker)."""
        return rpc.rpc_sync(self.on, _parameter_rrefs, (self.module_rref, recurse))

    def get_module_rref(self):
        return self.module_rref

    def __repr__(self) -> str:
        return f"RemoteModule(on={self.on.name}, device={self.device})"
