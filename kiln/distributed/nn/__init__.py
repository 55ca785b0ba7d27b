"""`kiln.distributed.nn.RemoteModule`: a module that lives on another worker, called through RPC
(torch.distributed.nn.RemoteModule)."""

from __future__ import annotations

from kiln.distributed.nn.remote_module import RemoteModule  # noqa: F401

__all__ = ["RemoteModule"]
