"""`kiln.distributed.rpc.functions.async_execution`: a remote function that returns a Future,
whose reply is sent once that future completes (torch.distributed.rpc.functions)."""

from __future__ import annotations

import functools


def async_execution(fn):
    """Mark `fn` as returning a `kiln.futures.Future` when run through RPC: the callee sends its
    reply when the future completes instead of when `fn` returns, so a server can hold many
    callers without blocking a thread per caller (a batching parameter server's updates).

    With @staticmethod / @classmethod, put this decorator below them (innermost), as in torch.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    # the attribute torch sets; the agent reads it on the function it runs
    wrapper._wrapped_async_rpc_function = fn
    return wrapper
